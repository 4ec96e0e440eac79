//! Small-file groups (`[routes.group]`) on LocalStack: many small objects
//! in few `parquet_dir` files, every object's rows exactly once through
//! duplicate notifications and a worker killed at random moments.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, Int64Array};
use rand::RngExt;

use crate::util::*;

const GROUPED_ROUTE: &str = r#"
    [[routes]]
    name = "small"
    key_glob = "in/**"
    sink = "lake"
    group = { max_age_secs = 2 }
"#;

/// Object `n`: `5 + n % 7` rows, each naming the object in `file`.
fn small_csv(n: usize) -> Vec<u8> {
    let mut text = String::from("file,row,name\n");
    for row in 0..rows_of(n) {
        text.push_str(&format!("{n},{row},vendor row {row} of file {n}\n"));
    }
    text.into_bytes()
}

fn rows_of(n: usize) -> usize {
    5 + n % 7
}

/// Rows per `file` value over every committed Parquet file under `dir`.
fn rows_by_object(dir: &Path) -> BTreeMap<i64, usize> {
    let mut rows = BTreeMap::new();
    for path in parquet_files(dir) {
        let file = std::fs::File::open(&path).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 8192).unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let column = batch
                .column_by_name("file")
                .expect("a `file` column")
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("`file` read as Int64");
            for i in 0..column.len() {
                *rows.entry(column.value(i)).or_insert(0) += 1;
            }
        }
    }
    rows
}

/// The footer's `s3_ingest.source_objects` of every group file.
fn objects_per_group_file(dir: &Path) -> Vec<usize> {
    use parquet::file::reader::FileReader;
    parquet_files(dir)
        .iter()
        .map(|path| {
            let reader = parquet::file::reader::SerializedFileReader::new(
                std::fs::File::open(path).unwrap(),
            )
            .unwrap();
            reader
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .and_then(|kv| {
                    kv.iter()
                        .find(|entry| entry.key == "s3_ingest.source_objects")
                        .cloned()
                })
                .and_then(|entry| entry.value)
                .unwrap_or_else(|| panic!("{} is not a group file", path.display()))
                .parse()
                .unwrap()
        })
        .collect()
}

/// Every object's rows exactly once: none missing, none doubled.
fn assert_exactly_once(dir: &Path, objects: usize) {
    let rows = rows_by_object(dir);
    let wrong: Vec<_> = (0..objects)
        .filter(|&n| rows.get(&(n as i64)).copied() != Some(rows_of(n)))
        .map(|n| (n, rows.get(&(n as i64)).copied(), rows_of(n)))
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "(object, rows found, rows expected): {wrong:?}"
    );
    assert_eq!(rows.len(), objects, "rows of unknown objects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_land_in_few_files_exactly_once_through_duplicate_notifications() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("group").await;
    let (worker, stats) = fixture
        .start_worker_with_stats(fixture.config(Some(GROUPED_ROUTE)))
        .await;
    let objects = 300;
    let keys: Vec<String> = (0..objects).map(|n| format!("in/v-{n:04}.csv")).collect();
    // S3 may notify twice: every 10th object is notified again, some
    // while the first is still in its group, some after it committed.
    let notified_twice: Vec<usize> = (0..objects).step_by(10).collect();
    fixture
        .put_many(
            (0..objects)
                .filter(|n| !notified_twice.contains(n))
                .map(|n| (keys[n].clone(), small_csv(n)))
                .collect(),
        )
        .await;
    for &n in &notified_twice {
        let etag = fixture.put(&keys[n], small_csv(n)).await;
        let body = s3_event(
            &fixture.bucket,
            &[(&keys[n], &etag, small_csv(n).len() as u64)],
        );
        fixture.send_raw(&body.to_string()).await;
    }
    let output = fixture.output_dir().join(&fixture.bucket);
    wait_until(
        "every object's rows in the sink and the queue empty",
        Duration::from_secs(180),
        || async { rows_by_object(&output).len() >= objects && fixture.queue_is_empty().await },
    )
    .await;
    assert_exactly_once(&output, objects);
    // Few files, each holding many objects (a group closes every 2 s).
    let per_file = objects_per_group_file(&output);
    assert_eq!(per_file.iter().sum::<usize>(), objects, "{per_file:?}");
    assert!(
        per_file.len() <= 30,
        "{} files for {objects} objects",
        per_file.len()
    );
    // Every delivery ended committed: the duplicates were found held.
    assert_eq!(
        stats
            .objects_committed
            .load(std::sync::atomic::Ordering::Relaxed)
            + stats
                .objects_skipped
                .load(std::sync::atomic::Ordering::Relaxed),
        (objects + objects / 10) as u64
    );
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_with_groups_loses_and_doubles_nothing() {
    let _suite = crate::alone().await;
    let fixture = Fixture::new("group-crash").await;
    let mut config = fixture.config(Some(GROUPED_ROUTE));
    // Short, so the messages a killed worker held come back quickly.
    config.queue.visibility_timeout_secs = 4;
    config.worker.max_lease_secs = 600;
    let log = fixture.output_dir().join("worker.log");
    let mut rng = rand::rng();
    let objects = 200;
    let rounds = 10;
    let per_round = objects / rounds;
    for round in 0..rounds {
        let child = fixture.spawn_worker_process(&config, &log);
        fixture
            .put_many(
                (0..per_round)
                    .map(|i| {
                        let n = round * per_round + i;
                        (format!("in/v-{n:04}.csv"), small_csv(n))
                    })
                    .collect(),
            )
            .await;
        // Kill at a random moment: while objects decode, wait in their
        // group, or while the group commits (it does every 2 s).
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..3000))).await;
        signal(&child, "-KILL");
        wait_for_exit(child).await;
    }
    let child = fixture.spawn_worker_process(&config, &log);
    let output = fixture.output_dir().join(&fixture.bucket);
    wait_until(
        "every object's rows in the sink and the queue empty",
        Duration::from_secs(240),
        || async { rows_by_object(&output).len() >= objects && fixture.queue_is_empty().await },
    )
    .await;
    assert_exactly_once(&output, objects);
    assert!(fixture.take_dead_letters().await.is_empty());
    signal(&child, "-TERM");
    assert_eq!(wait_for_exit(child).await.code(), Some(0));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("group committed"), "no group committed");
}
