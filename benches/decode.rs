//! Decode stage, in memory: the pipeline's CSV and Parquet decoders against
//! bare arrow-csv and the bare parquet Arrow reader on the same bytes, with
//! criterion; then a table of MB/s, rows/s and pipeline ÷ bare from this
//! run's criterion estimates. A third case runs the pipeline with a route
//! contract (`contract/`: CSV columns read as text and cast, three checks),
//! reported as contract ÷ pipeline.
//!
//! Then the same cases counted in instructions: each case runs once in a
//! process of its own under callgrind, less a process that only loads the
//! inputs. Instruction counts do not move with the machine's load, which
//! on a shared 2-core machine moves the MB/s ratio by ±15 %.
//!
//! `cargo bench --bench decode` (size: `BENCH_DECODE_SIZE`, default 32MiB;
//! `BENCH_DECODE_INSTRUCTIONS=0` skips the count). Under `cargo test` (no
//! `--bench` argument) criterion runs each benchmark once, on 256 KiB, and
//! the count runs on the same, so the code cannot rot.

#[path = "support/callgrind.rs"]
mod callgrind;
#[path = "support/data.rs"]
mod data;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::sync::Arc;

use s3_ingest::config::CsvOptions;
use s3_ingest::contract::{Contract, ContractConfig, FileContract};
use s3_ingest::decode::compression::Codec;
use s3_ingest::decode::csv::{CsvJob, decode_csv};
use s3_ingest::decode::parquet::{DEFAULT_MAX_ROW_GROUP_BYTES, ParquetLimits, decode_parquet};
use tokio::sync::mpsc;

const GROUP: &str = "decode";
/// The inputs and cases, as criterion names them.
const FUNCTIONS: [&str; 3] = ["csv", "csv-gzip", "parquet"];
const CASES: [&str; 3] = ["bare", "pipeline", "contract"];

/// The bench's inputs, all decoding to the same rows.
struct Inputs {
    csv: Bytes,
    gz: Bytes,
    parquet: Bytes,
}

impl Inputs {
    fn generate(size: usize) -> Inputs {
        let csv = Bytes::from(data::csv_bytes(size, 42));
        Inputs {
            gz: Bytes::from(data::gzip(&csv)),
            parquet: Bytes::from(data::parquet_bytes(&csv)),
            csv,
        }
    }

    fn write(&self, dir: &Path) {
        for (name, bytes) in [
            ("csv", &self.csv),
            ("gz", &self.gz),
            ("parquet", &self.parquet),
        ] {
            std::fs::write(dir.join(name), bytes).expect("write a bench input");
        }
    }

    fn read(dir: &Path) -> Inputs {
        let read = |name: &str| Bytes::from(std::fs::read(dir.join(name)).expect("bench input"));
        Inputs {
            csv: read("csv"),
            gz: read("gz"),
            parquet: read("parquet"),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs one case once: what criterion times, and what callgrind counts.
fn run_case(function: &str, case: &str, inputs: &Inputs, runtime: &tokio::runtime::Runtime) -> u64 {
    match (function, case) {
        ("csv", "bare") => data::bare_csv_batches(&inputs.csv[..], drop),
        ("csv", "pipeline") => pipeline_csv(runtime, inputs.csv.clone(), None, None),
        ("csv", "contract") => {
            pipeline_csv(runtime, inputs.csv.clone(), None, Some(bench_contract()))
        }
        ("csv-gzip", "bare") => {
            let plain = flate2::read::GzDecoder::new(&inputs.gz[..]);
            data::bare_csv_batches(std::io::BufReader::with_capacity(1 << 20, plain), drop)
        }
        ("csv-gzip", "pipeline") => {
            pipeline_csv(runtime, inputs.gz.clone(), Some(Codec::Gzip), None)
        }
        ("csv-gzip", "contract") => pipeline_csv(
            runtime,
            inputs.gz.clone(),
            Some(Codec::Gzip),
            Some(bench_contract()),
        ),
        ("parquet", "bare") => bare_parquet(inputs.parquet.clone()),
        ("parquet", "pipeline") => pipeline_parquet(runtime, inputs.parquet.clone(), None),
        ("parquet", "contract") => {
            pipeline_parquet(runtime, inputs.parquet.clone(), Some(bench_contract()))
        }
        _ => panic!("no decode case {function}/{case}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // A child of the instruction count: `--count-case DIR FUNCTION CASE`.
    if let [_, flag, dir, function, case] = &args[..]
        && flag == "--count-case"
    {
        let inputs = Inputs::read(Path::new(dir));
        let runtime = runtime();
        if case != "none" {
            assert!(run_case(function, case, &inputs, &runtime) > 0);
        }
        return;
    }
    let bench_mode = args.iter().any(|arg| arg == "--bench");
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
    let inputs = Inputs::generate(size);
    let csv_len = inputs.csv.len() as u64;
    let rows = data::bare_csv_batches(&inputs.csv[..], |_| {});
    let runtime = runtime();

    let mut group = criterion.benchmark_group(GROUP);
    // Throughput in the bytes of the decoded CSV for every case, so MB/s
    // compares like with like (Parquet and gzip are smaller on the wire).
    group.throughput(Throughput::Bytes(csv_len));
    for function in FUNCTIONS {
        for case in CASES {
            group.bench_function(BenchmarkId::new(function, case), |b| {
                b.iter(|| run_case(function, case, &inputs, &runtime))
            });
        }
    }
    group.finish();
    criterion.final_summary();

    if bench_mode {
        print_table(&output, csv_len, rows);
    }
    if std::env::var("BENCH_DECODE_INSTRUCTIONS").as_deref() != Ok("0") {
        print_instructions(&inputs, csv_len);
    }
}

/// Each case once under callgrind, in a child process (`--count-case`),
/// less a child that only reads the inputs: instructions per byte of CSV,
/// and bare ÷ pipeline (the same way round as the MB/s table: 1 means the
/// pipeline adds nothing, below 1 is what it adds).
fn print_instructions(inputs: &Inputs, csv_bytes: u64) {
    callgrind::require_valgrind();
    let dir = tempfile::tempdir().expect("temp dir");
    inputs.write(dir.path());
    let count = |function: &str, case: &str| -> u64 {
        let profile = dir.path().join(format!("{function}-{case}.callgrind"));
        let command = callgrind::command(&profile);
        let status = Command::new(&command[0])
            .args(&command[1..])
            .arg(std::env::current_exe().expect("the bench's own path"))
            .args([
                "--count-case",
                &dir.path().display().to_string(),
                function,
                case,
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|err| panic!("run {command:?}: {err}"));
        assert!(status.success(), "callgrind {function}/{case}: {status}");
        callgrind::total_instructions(&profile)
    };
    let loading = count("csv", "none");
    println!();
    println!(
        "decode stage in instructions (callgrind Ir per byte of CSV, one run each, less {:.1} M to load the inputs):",
        loading as f64 / 1e6
    );
    println!(
        "{:<10} {:>12} {:>12} {:>16} {:>14} {:>18}",
        "input", "bare Ir/B", "pipe Ir/B", "bare÷pipeline", "contract Ir/B", "pipeline÷contract"
    );
    for function in FUNCTIONS {
        let [bare, pipeline, contract] =
            CASES.map(|case| count(function, case).saturating_sub(loading));
        println!(
            "{:<10} {:>12.2} {:>12.2} {:>16.3} {:>14.2} {:>18.3}",
            function,
            bare as f64 / csv_bytes as f64,
            pipeline as f64 / csv_bytes as f64,
            bare as f64 / pipeline as f64,
            contract as f64 / csv_bytes as f64,
            pipeline as f64 / contract as f64,
        );
    }
}

/// A route contract every bench row keeps: the bench schema, strict, a
/// uniqueness check and two ranges.
fn bench_contract() -> Arc<Contract> {
    let config: ContractConfig = toml::from_str(
        r#"checks = [
            { column = "order_id", unique = true },
            { column = "quantity", min = 0, max = 1000 },
            { column = "unit_price", min = 0 },
        ]"#,
    )
    .expect("bench contract");
    Arc::new(Contract::compile("bench", Some(&data::schema()), &config).expect("it compiles"))
}

/// Drains the decoder's batches as the sink stage would, through the
/// route's contract when there is one; returns the rows.
async fn drain(
    receiver: &mut mpsc::Receiver<arrow::record_batch::RecordBatch>,
    contract: Option<Arc<Contract>>,
    uri: &str,
) -> u64 {
    let mut file = contract.map(|contract| FileContract::new(contract, uri));
    let mut rows = 0u64;
    while let Some(batch) = receiver.recv().await {
        rows += match &mut file {
            Some(file) => {
                let applied = file.apply(&batch).expect("bench rows keep the contract");
                assert!(applied.bad.is_none());
                applied.good.map_or(0, |good| good.num_rows() as u64)
            }
            None => batch.num_rows() as u64,
        };
    }
    rows
}

/// The worker's CSV path: `decode_csv` on a blocking thread, batches drained
/// from its channel by an async task, as `ingest.rs` does; with a contract,
/// its columns decoded as text and held to it, as for a route with one.
fn pipeline_csv(
    runtime: &tokio::runtime::Runtime,
    input: Bytes,
    codec: Option<Codec>,
    contract: Option<Arc<Contract>>,
) -> u64 {
    runtime.block_on(async move {
        let (sender, mut receiver) = mpsc::channel(2);
        let (schema, text_columns) = match &contract {
            Some(contract) => (None, contract.declared_names()),
            None => (Some(data::schema()), Vec::new()),
        };
        let decoder = tokio::task::spawn_blocking(move || {
            let job = CsvJob {
                text_columns,
                uri: "s3://bench/orders.csv".into(),
                options: CsvOptions::default(),
                schema,
                batch_rows: data::BATCH_ROWS,
                declared_codec: codec,
                object_bytes: input.len() as u64,
                limits: Default::default(),
                // One stream, as bare arrow-csv decodes it.
                in_parallel: false,
            };
            decode_csv(Cursor::new(input), &job, &sender)
        });
        let rows = drain(&mut receiver, contract, "s3://bench/orders.csv").await;
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
fn pipeline_parquet(
    runtime: &tokio::runtime::Runtime,
    file: Bytes,
    contract: Option<Arc<Contract>>,
) -> u64 {
    runtime.block_on(async move {
        // A contract casts the file's columns itself.
        let schema = contract.is_none().then(data::schema);
        let (sender, mut receiver) = mpsc::channel(2);
        let limits = ParquetLimits {
            file_size: file.len() as u64,
            max_row_group_bytes: DEFAULT_MAX_ROW_GROUP_BYTES,
        };
        let decoder = tokio::spawn(async move {
            decode_parquet(
                Cursor::new(file),
                "s3://bench/prices.parquet",
                schema,
                data::BATCH_ROWS,
                limits,
                &sender,
            )
            .await
        });
        let rows = drain(&mut receiver, contract, "s3://bench/prices.parquet").await;
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
        "{:<10} {:>12} {:>12} {:>14} {:>14} {:>16} {:>15} {:>18}",
        "input",
        "bare MB/s",
        "pipe MB/s",
        "bare rows/s",
        "pipe rows/s",
        "pipeline÷bare",
        "contract MB/s",
        "contract÷pipeline"
    );
    for function in FUNCTIONS {
        let bare = mean_seconds(output, function, "bare");
        let pipeline = mean_seconds(output, function, "pipeline");
        let contract = mean_seconds(output, function, "contract");
        println!(
            "{:<10} {:>12.1} {:>12.1} {:>14.0} {:>14.0} {:>16.3} {:>15.1} {:>18.3}",
            function,
            csv_bytes as f64 / bare / 1e6,
            csv_bytes as f64 / pipeline / 1e6,
            rows as f64 / bare,
            rows as f64 / pipeline,
            bare / pipeline,
            csv_bytes as f64 / contract / 1e6,
            pipeline / contract,
        );
    }
}
