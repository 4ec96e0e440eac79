//! The end-to-end benchmark's code path (benches/support/e2e.rs) with tiny
//! sizes, so `cargo test --all-targets` keeps `make bench` from rotting.
//! Needs LocalStack, like the other integration tests.

#[path = "../benches/support/callgrind.rs"]
mod callgrind;
#[path = "../benches/support/data.rs"]
mod data;
#[path = "../benches/support/e2e.rs"]
mod e2e;
#[path = "it/util/mod.rs"]
mod util;

/// `harness = false` (Cargo.toml): the instruction count runs this binary
/// again as the bare floor (`--bare-floor FILE COUNT`), which a libtest
/// `main` would not understand.
const TEST_NAME: &str = "e2e_bench_smoke_run_prints_a_table_with_numbers";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if e2e::bare_floor_main(&args) {
        return;
    }
    // Behave like a libtest binary where tools rely on it: `--list`, and a
    // name filter (`cargo test some_other_test`) that skips this test.
    if args.iter().any(|arg| arg == "--list") {
        println!("{TEST_NAME}: test");
        return;
    }
    let filters: Vec<&String> = args[1..]
        .iter()
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    if !filters.is_empty()
        && !filters
            .iter()
            .any(|filter| TEST_NAME.contains(filter.as_str()))
    {
        println!("e2e bench smoke: filtered out");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(e2e_bench_smoke_run_prints_a_table_with_numbers());
    println!("e2e bench smoke: ok");
}

async fn e2e_bench_smoke_run_prints_a_table_with_numbers() {
    let settings = e2e::Settings::smoke(env!("CARGO_BIN_EXE_s3-ingest").into());
    let report = e2e::run(&settings).await;

    assert_eq!(report.sizes.len(), 2);
    for row in &report.sizes {
        assert_eq!(row.files, 2);
        assert_eq!(row.worker.elapsed_ms.len(), 2);
        assert!(row.worker.files_per_second().is_finite() && row.worker.files_per_second() > 0.0);
        assert!(row.emulator_files_per_s.is_finite() && row.emulator_files_per_s > 0.0);
        assert!(row.worker.peak_rss_kib > 0);
        assert!(row.bare_cpu_seconds_per_gib.is_finite());
        assert!(row.bare_per_file_cpu_seconds_per_gib.is_finite());
    }
    assert_eq!(report.scaling.len(), 2);
    assert!(
        report
            .scaling
            .iter()
            .all(|(_, run)| run.files_per_second() > 0.0)
    );
    assert!(report.latency_p50_ms.is_finite() && report.latency_p99_ms >= report.latency_p50_ms);
    // Both sides counted by callgrind, and the worker does more than the
    // bare floor (it also receives, fetches, logs and writes files).
    assert_eq!(report.instructions.len(), 1);
    let counted = &report.instructions[0];
    assert_eq!(counted.files, 2);
    assert!(counted.bare_instructions > 0);
    for ratio in [
        counted.inferred_schema_ratio(),
        counted.declared_schema_ratio(),
    ] {
        assert!(ratio.is_finite() && ratio > 1.0, "{ratio}");
    }

    // The codec table: zstd(1), then with dictionaries on every column,
    // on none, and with chunk statistics; every figure a number, every file non-empty.
    let variants: Vec<(&str, &str)> = report
        .codecs
        .iter()
        .map(|row| (row.codec.as_str(), row.variant))
        .collect();
    assert_eq!(
        variants,
        [
            ("zstd(1)", "defaults"),
            ("zstd(1)", "dictionary=on"),
            ("zstd(1)", "dictionary=off"),
            ("zstd(1)", "statistics=chunk")
        ]
    );
    for row in &report.codecs {
        assert_eq!(row.worker.files, 1);
        assert!(row.bare_input_bytes >= row.worker.bytes);
        for figure in [
            row.bare_encode_cpu_seconds_per_gib(),
            row.bare_decode_encode_cpu_seconds_per_gib(),
            row.worker.cpu_seconds_per_gib(),
            row.output_mib_per_gib(row.worker_output_bytes),
            row.output_mib_per_gib(row.bare_output_bytes),
            row.output_ratio(),
        ] {
            assert!(figure.is_finite() && figure >= 0.0, "{figure}");
        }
        // Repeated to at least 4 MiB a sample: enough to tick the clock.
        assert!(row.bare_decode_encode_cpu_seconds > 0.0);
        assert!(row.worker_over_bare().is_finite());
        assert!(row.worker_output_bytes > 0 && row.bare_output_bytes > 0);
    }

    // Small files without and with grouping: every object committed;
    // grouped, fewer files than objects.
    let grouping: Vec<Option<u64>> = report
        .small_files
        .iter()
        .map(|row| row.group_age_secs)
        .collect();
    assert_eq!(grouping, [None, Some(1)]);
    for row in &report.small_files {
        assert_eq!(row.run.files, 20);
        assert!(row.run.files_per_second() > 0.0 && row.cpu_ms_per_object().is_finite());
        assert!(row.emulator_files_per_s > 0.0 && row.output_bytes > 0);
    }
    assert_eq!(report.small_files[0].output_files, 20);
    assert!(report.small_files[1].output_files < 20);

    // The lone object, CSV and then Parquet, each with one CPU thread and
    // then unset.
    let runs: Vec<(&str, Option<usize>)> = report
        .lone
        .iter()
        .map(|lone| (lone.source.name(), lone.cpu_threads.map(|n| n.get())))
        .collect();
    assert_eq!(
        runs,
        [
            ("csv", Some(1)),
            ("csv", None),
            ("parquet", Some(1)),
            ("parquet", None)
        ]
    );
    assert!(report.nproc >= 1 && !report.emulator_processes.is_empty());
    for lone in &report.lone {
        // The Parquet object holds the same rows in fewer bytes.
        let least_bytes = match lone.source.name() {
            "csv" => 64 << 10,
            _ => 1,
        };
        assert_eq!(
            (lone.run.files, lone.run.bytes as usize >= least_bytes),
            (1, true)
        );
        assert!(lone.run.wall_seconds > 0.0 && lone.run.peak_rss_kib > 0);
        for figure in [
            lone.run.mb_per_second(),
            lone.run.cores_used(),
            lone.emulator_cpu_seconds(),
            lone.emulator_cores(),
        ] {
            assert!(figure.is_finite() && figure >= 0.0, "{figure}");
        }
        // None only when LocalStack took every core over the span.
        if let Some(share) = lone.share_of_free_cores(report.nproc) {
            assert!(share.is_finite() && share >= 0.0, "{share}");
        }
    }

    // The steady-rate lag run: one rate for two seconds, every object
    // followed from its PUT to its commit, with the emulator's own delay.
    assert_eq!(report.lag.len(), 1);
    let lag = &report.lag[0];
    let emulator = &lag.emulator;
    assert!(emulator.objects >= 10, "{}", emulator.objects);
    assert_eq!(emulator.delay_ms.len(), emulator.objects);
    assert_eq!(emulator.to_queue_ms.len(), emulator.objects);
    assert!(emulator.put_rate > 0.0 && !emulator.messages_per_receive.is_empty());
    let worker = &lag.worker;
    assert_eq!(worker.put_to_commit_ms.len(), worker.objects);
    for values in [
        &worker.put_to_commit_ms,
        &worker.to_queue_ms,
        &worker.queue_wait_ms,
        &worker.slot_wait_ms,
        &worker.ingest_ms,
    ] {
        assert_eq!(values.len(), worker.objects);
        assert!(values.iter().all(|ms| ms.is_finite()), "{values:?}");
    }
    // The split adds up to PUT → commit (to a millisecond of rounding each).
    for index in 0..worker.objects {
        let split = worker.to_queue_ms[index]
            + worker.queue_wait_ms[index]
            + worker.slot_wait_ms[index]
            + worker.ingest_ms[index];
        assert!(
            (split - worker.put_to_commit_ms[index]).abs() < 3.0,
            "{split} vs {}",
            worker.put_to_commit_ms[index]
        );
    }
    assert!(!worker.messages_per_receive.is_empty() && worker.receives_per_second() > 0.0);
    assert!(!worker.deletes_per_batch.is_empty());

    let table = report.table();
    println!("{table}");
    assert!(table.contains("Parquet codecs") && table.contains("statistics=chunk"));
    assert!(table.contains("one large object on all cores") && table.contains("unset ÷"));
    // Every number printed is finite ("inf" and "NaN" parse as floats).
    assert!(
        table
            .split_whitespace()
            .all(|word| word.parse::<f64>().map_or(true, f64::is_finite)),
        "{table}"
    );
    assert!(
        table.contains("10KiB") && table.contains("64KiB"),
        "{table}"
    );
    assert!(table.contains("p50") && !table.contains("NaN"), "{table}");
    assert!(table.contains("declared÷bare"), "{table}");
    assert!(
        table.contains("steady-rate lag") && table.contains("notify p50"),
        "{table}"
    );
}
