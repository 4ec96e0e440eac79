//! Decode stage, in memory: the pipeline's CSV and Parquet decoders against
//! bare arrow-csv and the bare parquet Arrow reader on the same bytes, with
//! criterion; then a table of MB/s, rows/s and pipeline ÷ bare from this
//! run's criterion estimates.
//!
//! `cargo bench --bench decode` (size: `BENCH_DECODE_SIZE`, default 32MiB).
//! Under `cargo test` (no `--bench` argument) criterion runs each benchmark
//! once, on 256 KiB, so the code cannot rot.

#[path = "support/data.rs"]
mod data;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use s3_ingest::config::CsvOptions;
use s3_ingest::decode::compression::Codec;
use s3_ingest::decode::csv::{CsvJob, decode_csv};
use s3_ingest::decode::parquet::decode_parquet;
use tokio::sync::mpsc;

const GROUP: &str = "decode";

fn main() {
    let bench_mode = std::env::args().any(|arg| arg == "--bench");
    let size = match std::env::var("BENCH_DECODE_SIZE") {
        Ok(text) => data::parse_size(&text),
        Err(_) if bench_mode => 32 << 20,
        Err(_) => 256 << 10,
    };
    let output = criterion_dir();
    let mut criterion = Criterion::default()
        .output_directory(&output)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();

    // `Bytes`: the pipeline cases clone a handle, not the data, per run.
    let csv = Bytes::from(data::csv_bytes(size, 42));
    let gz = Bytes::from(data::gzip(&csv));
    let parquet = Bytes::from(data::parquet_bytes(&csv));
    let rows = data::bare_csv_batches(&csv[..], |_| {});
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let mut group = criterion.benchmark_group(GROUP);
    // Throughput in the bytes of the decoded CSV for every case, so MB/s
    // compares like with like (Parquet and gzip are smaller on the wire).
    group.throughput(Throughput::Bytes(csv.len() as u64));
    group.bench_function(BenchmarkId::new("csv", "bare"), |b| {
        b.iter(|| data::bare_csv_batches(&csv[..], drop))
    });
    group.bench_function(BenchmarkId::new("csv", "pipeline"), |b| {
        b.iter(|| pipeline_csv(&runtime, csv.clone(), None))
    });
    group.bench_function(BenchmarkId::new("csv-gzip", "bare"), |b| {
        b.iter(|| {
            let plain = flate2::read::GzDecoder::new(&gz[..]);
            data::bare_csv_batches(std::io::BufReader::with_capacity(1 << 20, plain), drop)
        })
    });
    group.bench_function(BenchmarkId::new("csv-gzip", "pipeline"), |b| {
        b.iter(|| pipeline_csv(&runtime, gz.clone(), Some(Codec::Gzip)))
    });
    group.bench_function(BenchmarkId::new("parquet", "bare"), |b| {
        b.iter(|| bare_parquet(parquet.clone()))
    });
    group.bench_function(BenchmarkId::new("parquet", "pipeline"), |b| {
        b.iter(|| pipeline_parquet(&runtime, parquet.clone()))
    });
    group.finish();
    criterion.final_summary();

    if bench_mode {
        print_table(&output, csv.len() as u64, rows);
    }
}

/// The worker's CSV path: `decode_csv` on a blocking thread, batches drained
/// from its channel by an async task, as `ingest.rs` does.
fn pipeline_csv(runtime: &tokio::runtime::Runtime, input: Bytes, codec: Option<Codec>) -> u64 {
    runtime.block_on(async move {
        let (sender, mut receiver) = mpsc::channel(2);
        let decoder = tokio::task::spawn_blocking(move || {
            let job = CsvJob {
                uri: "s3://bench/orders.csv".into(),
                options: CsvOptions::default(),
                schema: Some(data::schema()),
                batch_rows: data::BATCH_ROWS,
                declared_codec: codec,
                object_bytes: input.len() as u64,
            };
            decode_csv(Cursor::new(input), &job, &sender)
        });
        let mut rows = 0u64;
        while let Some(batch) = receiver.recv().await {
            rows += batch.num_rows() as u64;
        }
        let summary = decoder
            .await
            .expect("decoder thread")
            .expect("bench CSV decodes");
        assert_eq!(rows, summary.rows);
        rows
    })
}

fn bare_parquet(file: Bytes) -> u64 {
    ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("bench Parquet opens")
        .with_batch_size(data::BATCH_ROWS)
        .build()
        .expect("bench Parquet reader")
        .map(|batch| batch.expect("bench Parquet decodes").num_rows() as u64)
        .sum()
}

/// The worker's Parquet path: `decode_parquet` over an in-memory reader,
/// batches drained from its channel.
fn pipeline_parquet(runtime: &tokio::runtime::Runtime, file: Bytes) -> u64 {
    runtime.block_on(async move {
        let (sender, mut receiver) = mpsc::channel(2);
        let decoder = tokio::spawn(async move {
            decode_parquet(
                Cursor::new(file),
                "s3://bench/prices.parquet",
                Some(data::schema()),
                data::BATCH_ROWS,
                &sender,
            )
            .await
        });
        let mut rows = 0u64;
        while let Some(batch) = receiver.recv().await {
            rows += batch.num_rows() as u64;
        }
        decoder
            .await
            .expect("decoder task")
            .expect("bench Parquet decodes");
        rows
    })
}

/// Where criterion writes: as criterion itself picks it, made explicit so
/// the table below reads the same directory.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    target.join("criterion")
}

/// Criterion's point estimate of the mean time per iteration, in seconds.
fn mean_seconds(output: &Path, function: &str, case: &str) -> f64 {
    let path = output
        .join(GROUP)
        .join(function)
        .join(case)
        .join("new/estimates.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let estimates: serde_json::Value = serde_json::from_str(&text).expect("criterion JSON");
    estimates["mean"]["point_estimate"]
        .as_f64()
        .expect("mean.point_estimate")
        / 1e9
}

fn print_table(output: &Path, csv_bytes: u64, rows: u64) {
    println!();
    println!(
        "decode stage, in memory ({} of CSV, {rows} rows; MB = 10^6 bytes of CSV):",
        data::format_size(csv_bytes as usize)
    );
    println!(
        "{:<10} {:>12} {:>12} {:>14} {:>14} {:>16}",
        "input", "bare MB/s", "pipe MB/s", "bare rows/s", "pipe rows/s", "pipeline÷bare"
    );
    for function in ["csv", "csv-gzip", "parquet"] {
        let bare = mean_seconds(output, function, "bare");
        let pipeline = mean_seconds(output, function, "pipeline");
        println!(
            "{:<10} {:>12.1} {:>12.1} {:>14.0} {:>14.0} {:>16.3}",
            function,
            csv_bytes as f64 / bare / 1e6,
            csv_bytes as f64 / pipeline / 1e6,
            rows as f64 / bare,
            rows as f64 / pipeline,
            bare / pipeline,
        );
    }
}
