//! Fault tests: broken downloads, an outage of the AWS endpoint, a broken
//! sink, a worker killed again and again, several workers on one queue, a
//! shutdown in the middle of a large file, and a file that outlives its
//! visibility timeout. Each proves nothing is lost and nothing doubled.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::RngExt;

use crate::util::proxy::{ChaosProxy, Mode};
use crate::util::*;

fn upstream() -> String {
    endpoint().trim_start_matches("http://").to_owned()
}

/// A zstd-compressed CSV of about `bytes` decompressed bytes; `rows` tells
/// how many data rows it holds. Streams into the encoder, so the
/// decompressed text is never in memory.
fn big_csv_zstd(bytes: u64) -> (Vec<u8>, u64) {
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    encoder.write_all(b"id,name,price\n").unwrap();
    let mut written = 0u64;
    let mut rows = 0u64;
    let mut line = String::new();
    while written < bytes {
        line.clear();
        use std::fmt::Write as _;
        writeln!(
            line,
            "{rows},vendor-item-with-a-longish-name,{}.25",
            rows % 1000
        )
        .unwrap();
        encoder.write_all(line.as_bytes()).unwrap();
        written += line.len() as u64;
        rows += 1;
    }
    (encoder.finish().unwrap(), rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_downloads_resume_without_gaps_or_repeats() {
    let _suite = crate::alone().await;
    let fixture = Fixture::new("resume").await;
    let proxy = ChaosProxy::start(&upstream()).await;
    let mut config = fixture.config(None);
    config.aws.endpoint_url = Some(proxy.endpoint());
    // Every connection is cut after 256 KiB of response: each object needs
    // many resumed ranged GETs. Any gap or repeat breaks gzip's CRC or the
    // row sequence.
    proxy.set_mode(Mode::CutAfter(256 * 1024));
    let worker = fixture.start_worker(config);
    let plain = csv_rows(60_000);
    let compressed = gzip_with(csv_rows(200_000).as_bytes(), flate2::Compression::fast());
    assert!(plain.len() > 1 << 20 && compressed.len() > 1 << 20);
    fixture.put("in/plain.csv", plain).await;
    fixture.put("in/compressed.csv.gz", compressed).await;

    fixture.wait_for_files_and_empty_queue(2).await;
    let files = fixture.sink_files();
    let plain = sink_file_for(&files, "in/plain.csv");
    assert_eq!(plain.rows, 60_000);
    assert_eq!(int64_column(&plain, 0), (0..60_000).collect::<Vec<_>>());
    assert_eq!(sink_file_for(&files, "in/compressed.csv.gz").rows, 200_000);
    assert!(proxy.cuts() >= 8, "only {} cuts", proxy.cuts());
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_outage_backs_off_logs_and_recovers() {
    let _suite = crate::alone().await;
    let fixture = Fixture::new("outage").await;
    let proxy = ChaosProxy::start(&upstream()).await;
    let mut config = fixture.config(None);
    config.aws.endpoint_url = Some(proxy.endpoint());
    let log = fixture.output_dir().join("worker.log");
    let child = fixture.spawn_worker_process(&config, &log);

    fixture.put("in/before.csv", csv_rows(5)).await;
    fixture.wait_for_files_and_empty_queue(1).await;

    // Outage: every connection to S3 and SQS is refused.
    proxy.set_mode(Mode::Down);
    let outage_started = Instant::now();
    for i in 0..5 {
        fixture
            .put(&format!("in/during-{i}.csv"), csv_rows(5))
            .await;
    }
    // Long enough for the backoff to grow: at least 6 refused attempts.
    wait_until("worker retries during the outage", WAIT, || async {
        proxy.refused() >= 6 && outage_started.elapsed() >= Duration::from_secs(8)
    })
    .await;
    let attempts_per_second = proxy.refused() as f64 / outage_started.elapsed().as_secs_f64();
    // A hot loop makes hundreds per second; backoff (and the SDK's own
    // retries) keep it to a handful.
    assert!(
        attempts_per_second < 5.0,
        "{attempts_per_second:.1} connection attempts per second during the outage"
    );
    proxy.set_mode(Mode::Pass);

    wait_until("files after the outage landed", WAIT, || async {
        fixture.sink_files().len() >= 6 && fixture.queue_is_empty().await
    })
    .await;
    let copies = fixture.sink_copies_by_key();
    assert_eq!(copies.len(), 6, "{copies:?}");
    assert!(copies.values().all(|&n| n == 1), "{copies:?}");
    assert!(fixture.take_dead_letters().await.is_empty());

    signal(&child, "-TERM");
    assert_eq!(wait_for_exit(child).await.code(), Some(0));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("receive failed; backing off"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_outage_mid_run_retries_and_never_dead_letters() {
    let _suite = crate::alone().await;
    let fixture = Fixture::new("sinkout").await;
    let lake = fixture.output_dir().join("lake");
    let routes = r#"
        [[routes]]
        name = "all"
        key_glob = "**"
        sink = "disk"

        [sinks.disk]
        type = "parquet_dir"
        path = "LAKE"
    "#
    .replace("LAKE", &lake.display().to_string());
    let mut config = fixture.config_with(Some(&routes), "");
    config.queue.visibility_timeout_secs = 3;
    // The outage outlasts this many tries; it must not count against files.
    config.queue.max_receive_count = 2;
    let (worker, stats) = fixture.start_worker_with_stats(config).await;
    fixture.put("in/first.csv", csv_rows(3)).await;
    fixture.wait_for_files_and_empty_queue(1).await;

    // The sink's directory becomes unwritable: a file stands where it was.
    let moved = fixture.output_dir().join("lake.saved");
    std::fs::rename(&lake, &moved).unwrap();
    std::fs::write(&lake, b"not a directory").unwrap();
    for i in 0..4 {
        fixture
            .put(&format!("in/during-{i}.csv"), csv_rows(3))
            .await;
    }
    wait_until("objects retried while the sink is down", WAIT, || async {
        stats.messages_left_for_retry.load(Ordering::Relaxed) >= 8
    })
    .await;
    assert!(fixture.take_dead_letters().await.is_empty());
    let (visible, in_flight) = fixture.queue_counts().await;
    assert!(
        visible + in_flight >= 4,
        "messages were deleted while the sink was down"
    );

    // The sink recovers; everything lands once.
    std::fs::remove_file(&lake).unwrap();
    std::fs::rename(&moved, &lake).unwrap();
    fixture.wait_for_files_and_empty_queue(5).await;
    let copies = fixture.sink_copies_by_key();
    assert!(copies.values().all(|&n| n == 1), "{copies:?}");
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_loses_and_doubles_nothing() {
    let _suite = crate::alone().await;
    let fixture = Fixture::new("crash").await;
    let mut config = fixture.config(None);
    // Short, so work a killed worker held comes back quickly.
    config.queue.visibility_timeout_secs = 4;
    config.worker.max_lease_secs = 600;
    let log = fixture.output_dir().join("worker.log");
    let mut rng = rand::rng();
    let files_total = 200;
    let per_round = files_total / 20;
    for round in 0..20 {
        let child = fixture.spawn_worker_process(&config, &log);
        let objects = (0..per_round)
            .map(|i| {
                let n = round * per_round + i;
                (
                    format!("in/file-{n:04}.csv"),
                    csv_rows(20 + n % 50).into_bytes(),
                )
            })
            .collect();
        fixture.put_many(objects).await;
        // Kill at a random moment while it works.
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
        signal(&child, "-KILL");
        wait_for_exit(child).await;
    }
    let child = fixture.spawn_worker_process(&config, &log);
    wait_until(
        "every file in the sink and the queue empty",
        Duration::from_secs(180),
        || async { fixture.sink_files().len() >= files_total && fixture.queue_is_empty().await },
    )
    .await;
    let copies = fixture.sink_copies_by_key();
    assert_eq!(copies.len(), files_total, "missing files");
    assert!(copies.values().all(|&n| n == 1), "duplicates: {copies:?}");
    for n in [0, 77, 199] {
        let key = format!("in/file-{n:04}.csv");
        assert_eq!(sink_file_for(&fixture.sink_files(), &key).rows, 20 + n % 50);
    }
    assert_eq!(fixture.queue_counts().await, (0, 0));
    assert!(fixture.take_dead_letters().await.is_empty());
    signal(&child, "-TERM");
    assert_eq!(wait_for_exit(child).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_one_queue_without_loss_or_duplicates() {
    let _suite = crate::alone().await;
    let fixture = Fixture::new("multi").await;
    let config = fixture.config(None);
    let workers: Vec<_> = (0..3)
        .map(|i| {
            fixture.spawn_worker_process(
                &config,
                &fixture.output_dir().join(format!("worker-{i}.log")),
            )
        })
        .collect();
    let files_total = 1000;
    let objects = (0..files_total)
        .map(|n| {
            (
                format!("in/small-{n:04}.csv"),
                format!("id,v\n{n},{}\n", n * 2).into_bytes(),
            )
        })
        .collect();
    fixture.put_many(objects).await;
    wait_until(
        "1000 files in the sink",
        Duration::from_secs(300),
        || async { fixture.sink_files().len() >= files_total && fixture.queue_is_empty().await },
    )
    .await;
    let copies = fixture.sink_copies_by_key();
    assert_eq!(copies.len(), files_total);
    assert!(copies.values().all(|&n| n == 1));
    // Every worker took part.
    for i in 0..3 {
        let log =
            std::fs::read_to_string(fixture.output_dir().join(format!("worker-{i}.log"))).unwrap();
        assert!(
            log.contains("object committed"),
            "worker {i} committed nothing"
        );
    }
    for child in workers {
        signal(&child, "-TERM");
        assert_eq!(wait_for_exit(child).await.code(), Some(0));
    }
    assert!(fixture.take_dead_letters().await.is_empty());
}

/// Waits until the sink has started writing a file (a hidden temporary
/// file exists in the output directory).
async fn wait_for_sink_writing(fixture: &Fixture) {
    wait_until("sink writing the large file", WAIT, || async {
        let dir = fixture.output_dir().join(&fixture.bucket);
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            })
            .unwrap_or(false)
    })
    .await;
}

/// Starts a worker process with `grace_secs`, uploads a 200 MiB file, and
/// sends SIGTERM once the sink has started writing it (a hidden temporary
/// file exists). Returns the config, the worker's log, and the file's rows.
async fn sigterm_during_large_file(
    fixture: &Fixture,
    grace_secs: u64,
) -> (s3_ingest::config::Config, std::path::PathBuf, u64) {
    let mut config = fixture.config(None);
    config.worker.shutdown_grace_secs = grace_secs;
    let (body, rows) = big_csv_zstd(200 << 20);
    let log = fixture.output_dir().join("worker.log");
    let child = fixture.spawn_worker_process(&config, &log);
    fixture.put("in/large.csv.zst", body).await;
    wait_for_sink_writing(fixture).await;
    signal(&child, "-TERM");
    assert_eq!(wait_for_exit(child).await.code(), Some(0));
    (config, log, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_file_commits_within_the_grace_period() {
    let _suite = crate::alone().await;
    let fixture = Fixture::new("drainok").await;
    let (_, _, rows) = sigterm_during_large_file(&fixture, 120).await;
    // It finished the file before exiting, and deleted its message.
    assert_eq!(fixture.sink_files().len(), 1);
    assert_eq!(
        sink_file_for(&fixture.sink_files(), "in/large.csv.zst").rows,
        rows as usize
    );
    fixture.wait_for_empty_queue().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_file_past_the_grace_period_releases_it_to_the_next_worker() {
    let _suite = crate::alone().await;
    let fixture = Fixture::new("drainrel").await;
    let (config, log, rows) = sigterm_during_large_file(&fixture, 0).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("message released"), "{text}");
    assert!(
        fixture.sink_files().is_empty(),
        "nothing half-written is visible"
    );
    // Released at once (visibility 0), well before its 20 s timeout ends.
    // (Peek with a zero visibility timeout: LocalStack's message counters
    // lag behind a visibility change.)
    wait_until(
        "the released message is visible again",
        Duration::from_secs(8),
        || async {
            let received = fixture
                .clients
                .sqs
                .receive_message()
                .queue_url(&fixture.queue_url)
                .visibility_timeout(0)
                .wait_time_seconds(0)
                .send()
                .await
                .unwrap();
            received.messages.is_some_and(|m| !m.is_empty())
        },
    )
    .await;

    let next = fixture.spawn_worker_process(&config, &fixture.output_dir().join("next.log"));
    fixture.wait_for_files_and_empty_queue(1).await;
    assert_eq!(
        sink_file_for(&fixture.sink_files(), "in/large.csv.zst").rows,
        rows as usize
    );
    signal(&next, "-TERM");
    assert_eq!(wait_for_exit(next).await.code(), Some(0));
}

/// With quick objects the worker receives messages ahead of its slots. At
/// shutdown, the ones still waiting for a slot go back to the queue at
/// once, while the object in progress finishes within the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_received_ahead_are_released_at_shutdown_while_work_in_progress_finishes() {
    let _suite = crate::alone().await;
    let fixture = Fixture::new("ahead").await;
    let mut config = fixture.config(None);
    config.worker.concurrency = std::num::NonZeroUsize::new(1).unwrap();
    config.worker.shutdown_grace_secs = 120;
    let (worker, stats) = fixture.start_worker_with_stats(config.clone()).await;
    let committed = || stats.objects_committed.load(Ordering::Relaxed);
    let small_files = |prefix: &str, count: usize| {
        (0..count)
            .map(|n| (format!("in/{prefix}-{n}.csv"), csv_rows(10).into_bytes()))
            .collect::<Vec<_>>()
    };
    // Quick objects first: the worker learns that objects are quick.
    fixture.put_many(small_files("warm", 5)).await;
    wait_until("warm-up files committed", WAIT, || async {
        committed() >= 5
    })
    .await;

    // Large enough to outlast the long poll that shutdown waits for
    // after the put, the receives and the stop below (~4 s per 400 MiB in
    // a debug build with parallel encoding).
    let (body, rows) = big_csv_zstd(1 << 30);
    fixture.put("in/large.csv.zst", body).await;
    wait_for_sink_writing(&fixture).await;
    fixture.put_many(small_files("waiting", 10)).await;
    wait_until("the small files received ahead", WAIT, || async {
        stats.messages_received.load(Ordering::Relaxed) >= 16
    })
    .await;
    assert_eq!(committed(), 5, "the one slot is busy with the large file");

    let stopping = tokio::spawn(worker.stop());
    wait_until(
        "the waiting messages released",
        Duration::from_secs(10),
        || async { stats.messages_released.load(Ordering::Relaxed) >= 10 },
    )
    .await;
    assert_eq!(
        committed(),
        5,
        "released without waiting for the large file"
    );
    stopping.await.unwrap();
    assert_eq!(
        committed(),
        6,
        "the large file finished within the grace period"
    );
    assert_eq!(stats.messages_released.load(Ordering::Relaxed), 10);
    assert_eq!(
        sink_file_for(&fixture.sink_files(), "in/large.csv.zst").rows,
        rows as usize
    );

    // The released messages are visible again: the next worker takes them.
    let next = fixture.start_worker(config);
    fixture.wait_for_files_and_empty_queue(16).await;
    let copies = fixture.sink_copies_by_key();
    assert_eq!(copies.len(), 16);
    assert!(copies.values().all(|&n| n == 1), "{copies:?}");
    next.stop().await;
    assert!(fixture.take_dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_file_outlives_its_visibility_timeout_and_is_ingested_once() {
    let _suite = crate::alone().await;
    let fixture = Fixture::new("onegib").await;
    let mut config = fixture.config(None);
    config.queue.visibility_timeout_secs = 10;
    let (body, rows) = big_csv_zstd(1 << 30);
    let (worker, stats) = fixture.start_worker_with_stats(config).await;
    let started = Instant::now();
    fixture.put("in/one-gib.csv.zst", body).await;
    wait_until("1 GiB file ingested", Duration::from_secs(600), || async {
        fixture.sink_files().len() == 1 && fixture.queue_is_empty().await
    })
    .await;
    let elapsed = started.elapsed();
    let path = &fixture.sink_files()[0];
    let reader =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(path).unwrap())
            .unwrap();
    use parquet::file::reader::FileReader;
    assert_eq!(reader.metadata().file_metadata().num_rows() as u64, rows);
    // No redelivery: the test event and the object, each received once.
    assert_eq!(stats.messages_received.load(Ordering::Relaxed), 2);
    assert_eq!(stats.objects_committed.load(Ordering::Relaxed), 1);
    if elapsed > Duration::from_secs(12) {
        assert!(
            stats.visibility_extensions.load(Ordering::Relaxed) >= 1,
            "took {elapsed:?} without extending visibility"
        );
    }
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}
