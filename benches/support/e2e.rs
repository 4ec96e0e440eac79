#![allow(dead_code)] // shared by several targets, each using a part
//! End to end on LocalStack: the `s3-ingest` binary as its own process,
//! measured from outside (its JSON log, `/proc/<pid>/stat` and `status`),
//! beside the emulator's own GetObject ceiling and the bare in-process
//! decode + encode floor, all in the same run.
//!
//! Used by `benches/e2e.rs` (`make bench`) and, with tiny sizes, by
//! `tests/bench_smoke.rs` so this code runs under `cargo test`.
//! Needs `crate::util` (tests/it/util/mod.rs), `crate::data` and
//! `crate::callgrind`.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::ColumnPath;
use s3_ingest::config::{Config, SinkConfig};
use s3_ingest::sink::parquet_settings::{Codec, Dictionary, ParquetWriterSettings, Statistics};

use crate::callgrind;
use crate::data;
use crate::util::{Fixture, wait_until};

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;
/// Callgrind runs code about 50 times slower: a profiled worker's deadline
/// allows that much more time per byte, plus a fixed [`PROFILED_START_UP`].
const PROFILED_DEADLINE_FACTOR: u32 = 50;
const PROFILED_START_UP: Duration = Duration::from_secs(300);
/// GetObject requests in flight when measuring the emulator's ceiling.
const EMULATOR_GET_CONCURRENCY: usize = 8;

pub struct Settings {
    pub worker_binary: PathBuf,
    /// File sizes for the throughput table.
    pub sizes: Vec<usize>,
    /// Bytes uploaded per size: files = total / size, within 1..=max_files.
    pub total_bytes_per_size: usize,
    pub max_files: usize,
    /// The worker's `concurrency` for the throughput table.
    pub concurrency: usize,
    pub scaling_levels: Vec<usize>,
    pub scaling_file_size: usize,
    pub scaling_files: usize,
    pub latency_samples: usize,
    /// CSV bytes for the bare decode + encode CPU baseline.
    pub bare_sample_bytes: usize,
    /// Sizes for the instruction count (worker and floor under callgrind).
    pub instruction_sizes: Vec<usize>,
    /// Runs the bare floor as its own process (`--bare-floor FILE COUNT`,
    /// see [`bare_floor_main`]), so callgrind counts only that.
    pub bare_floor_binary: PathBuf,
    /// A command the worker runs under (`BENCH_WORKER_PREFIX`, e.g. a
    /// profiler); empty for none.
    pub worker_prefix: Vec<String>,
    /// The codec table's Parquet writer settings (`BENCH_CODECS`); empty
    /// skips the table.
    pub codecs: Vec<CodecSpec>,
    /// The codec table's one object (`BENCH_CODEC_SIZE`).
    pub codec_size: usize,
    /// The lone large object (`BENCH_LONE_SIZE`), ingested with one CPU
    /// thread and with all; 0 skips it.
    pub lone_size: usize,
    /// Runs of each (`BENCH_LONE_REPEATS`), alternating the two settings.
    pub lone_repeats: usize,
    /// 1: the CSV object only; 2: also the same rows as Parquet
    /// (`BENCH_LONE_PARQUET=0` leaves it out).
    pub lone_sources: usize,
    /// Small objects for the grouping rows (0 skips them), their size and
    /// the group's `max_age_secs`.
    pub small_files: usize,
    pub small_size: usize,
    pub small_group_age_secs: u64,
    /// Objects per second for the steady-rate lag run; empty skips it.
    pub lag_rates: Vec<f64>,
    /// How long each rate uploads.
    pub lag_seconds: f64,
}

/// A codec as `BENCH_CODECS` names it: `snappy`, `lz4`, `zstd(3)`, ...
#[derive(Clone)]
pub struct CodecSpec {
    pub label: String,
    pub settings: ParquetWriterSettings,
}

impl CodecSpec {
    /// `snappy`, `lz4`, `none`, `zstd`, `zstd(N)`, `gzip`, `gzip(N)`: the
    /// sink's `compression` and `compression_level`, checked as the config
    /// checks them. Panics on anything else.
    pub fn parse(text: &str) -> CodecSpec {
        let text = text.trim();
        let (name, level) = match text.strip_suffix(')').and_then(|t| t.split_once('(')) {
            Some((name, level)) => {
                let level = level.trim().parse::<i32>().unwrap_or_else(|_| {
                    panic!("BENCH_CODECS `{text}`: the level must be a number")
                });
                (name.trim(), Some(level))
            }
            None => (text, None),
        };
        let codec = match name.to_ascii_lowercase().as_str() {
            "zstd" => Codec::Zstd,
            "snappy" => Codec::Snappy,
            "lz4" => Codec::Lz4,
            "gzip" => Codec::Gzip,
            "none" => Codec::None,
            other => panic!(
                "BENCH_CODECS: unknown codec `{other}` (snappy, lz4, zstd, zstd(N), gzip, gzip(N), none)"
            ),
        };
        let settings = ParquetWriterSettings {
            compression: Some(codec),
            compression_level: level,
            ..ParquetWriterSettings::default()
        };
        if let Err((field, message)) = settings.validate() {
            panic!("BENCH_CODECS `{text}`: {field}: {message}");
        }
        CodecSpec {
            label: text.to_owned(),
            settings,
        }
    }

    /// zstd level 1, the sink's default codec.
    fn is_sink_default_codec(&self) -> bool {
        self.settings.compression_for(data::schema().fields().len())
            == Compression::ZSTD(ZstdLevel::try_new(1).expect("zstd level 1"))
    }
}

/// The rows of the codec table: each codec with the sink's other defaults,
/// and after zstd(1) (the sink's default codec; the first codec when the
/// list has no zstd(1)) the same codec with dictionaries on every column,
/// on none, and with statistics per column chunk only.
fn codec_variants(codecs: &[CodecSpec]) -> Vec<(CodecSpec, &'static str)> {
    let extra_at = codecs
        .iter()
        .position(CodecSpec::is_sink_default_codec)
        .unwrap_or(0);
    let mut variants = Vec::new();
    for (at, spec) in codecs.iter().enumerate() {
        variants.push((spec.clone(), "defaults"));
        if at == extra_at {
            let mut every_dictionary = spec.clone();
            every_dictionary.settings.dictionary = Dictionary::On;
            variants.push((every_dictionary, "dictionary=on"));
            let mut no_dictionary = spec.clone();
            no_dictionary.settings.dictionary = Dictionary::Off;
            variants.push((no_dictionary, "dictionary=off"));
            let mut chunk_statistics = spec.clone();
            chunk_statistics.settings.statistics = Statistics::Chunk;
            variants.push((chunk_statistics, "statistics=chunk"));
        }
    }
    variants
}

impl Settings {
    /// `make bench`: what issue 6 asks for, every knob overridable by env.
    pub fn from_env(worker_binary: PathBuf) -> Settings {
        let env = |name: &str| std::env::var(name).ok();
        // Empty entries (and an empty list) are skipped.
        let list = |text: String| -> Vec<usize> {
            text.split(',')
                .filter(|size| !size.trim().is_empty())
                .map(data::parse_size)
                .collect()
        };
        Settings {
            worker_binary,
            sizes: list(env("BENCH_SIZES").unwrap_or("10KiB,1MiB,64MiB,1GiB".into())),
            total_bytes_per_size: data::parse_size(&env("BENCH_TOTAL").unwrap_or("64MiB".into())),
            max_files: env("BENCH_MAX_FILES").map_or(200, |n| n.parse().expect("BENCH_MAX_FILES")),
            concurrency: env("BENCH_CONCURRENCY")
                .map_or(4, |n| n.parse().expect("BENCH_CONCURRENCY")),
            scaling_levels: env("BENCH_SCALING").map_or(vec![1, 2, 4, 8], |text| {
                // Empty: skip the scaling runs.
                let levels = text.split(',').filter(|n| !n.trim().is_empty());
                levels
                    .map(|n| n.trim().parse().expect("BENCH_SCALING"))
                    .collect()
            }),
            scaling_file_size: data::parse_size(
                &env("BENCH_SCALING_SIZE").unwrap_or("1MiB".into()),
            ),
            scaling_files: env("BENCH_SCALING_FILES")
                .map_or(32, |n| n.parse().expect("BENCH_SCALING_FILES")),
            latency_samples: env("BENCH_LATENCY_SAMPLES")
                .map_or(100, |n| n.parse().expect("BENCH_LATENCY_SAMPLES")),
            bare_sample_bytes: data::parse_size(&env("BENCH_BARE_SIZE").unwrap_or("64MiB".into())),
            instruction_sizes: list(env("BENCH_INSTRUCTIONS").unwrap_or("10KiB,1MiB,64MiB".into())),
            bare_floor_binary: std::env::current_exe().expect("the bench's own path"),
            // E.g. `valgrind --tool=callgrind`: the table's CPU and RSS are
            // then the profiler's, but its output shows where time goes.
            worker_prefix: env("BENCH_WORKER_PREFIX")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            // Empty: skip the codec table.
            codecs: env("BENCH_CODECS")
                .unwrap_or("snappy,lz4,zstd(1),zstd(3),none".into())
                .split(',')
                .filter(|codec| !codec.trim().is_empty())
                .map(CodecSpec::parse)
                .collect(),
            codec_size: data::parse_size(&env("BENCH_CODEC_SIZE").unwrap_or("256MiB".into())),
            // Empty or 0: skip the lone object.
            lone_size: match env("BENCH_LONE_SIZE") {
                None => 1 << 30,
                Some(text) if text.trim().is_empty() => 0,
                Some(text) => data::parse_size(&text),
            },
            lone_repeats: env("BENCH_LONE_REPEATS")
                .map_or(2, |n| n.parse().expect("BENCH_LONE_REPEATS")),
            lone_sources: match env("BENCH_LONE_PARQUET").as_deref() {
                Some("0") => 1,
                _ => 2,
            },
            lag_rates: env("BENCH_LAG_RATES")
                .unwrap_or("20,40,60,80".into())
                .split(',')
                .filter(|rate| !rate.trim().is_empty())
                .map(|rate| rate.trim().parse().expect("BENCH_LAG_RATES"))
                .collect(),
            lag_seconds: env("BENCH_LAG_SECONDS")
                .map_or(20.0, |n| n.parse().expect("BENCH_LAG_SECONDS")),
            small_files: env("BENCH_SMALL_FILES").map_or(3000, |n| n.trim().parse().unwrap_or(0)),
            small_size: data::parse_size(&env("BENCH_SMALL_SIZE").unwrap_or("11KiB".into())),
            small_group_age_secs: env("BENCH_SMALL_GROUP_AGE")
                .map_or(5, |n| n.parse().expect("BENCH_SMALL_GROUP_AGE")),
        }
    }

    /// The smoke run under `cargo test`: two small files per step.
    pub fn smoke(worker_binary: PathBuf) -> Settings {
        Settings {
            worker_binary,
            sizes: vec![10 << 10, 64 << 10],
            total_bytes_per_size: 128 << 10,
            max_files: 2,
            concurrency: 2,
            scaling_levels: vec![1, 2],
            scaling_file_size: 10 << 10,
            scaling_files: 2,
            latency_samples: 3,
            bare_sample_bytes: 4 << 20,
            instruction_sizes: vec![10 << 10],
            bare_floor_binary: std::env::current_exe().expect("the test's own path"),
            worker_prefix: Vec::new(),
            // One codec, plus its dictionary=on/off and statistics=chunk rows.
            codecs: vec![CodecSpec::parse("zstd(1)")],
            codec_size: 64 << 10,
            lone_size: 64 << 10,
            lone_repeats: 1,
            lone_sources: 2,
            lag_rates: vec![10.0],
            lag_seconds: 2.0,
            small_files: 20,
            small_size: 11 << 10,
            small_group_age_secs: 1,
        }
    }

    fn files_for(&self, size: usize) -> usize {
        (self.total_bytes_per_size / size).clamp(1, self.max_files)
    }
}

/// One size: the worker's figures and the emulator's, same objects.
pub struct SizeRow {
    pub size: usize,
    pub files: usize,
    pub worker: IngestRun,
    pub emulator_files_per_s: f64,
    pub emulator_mb_per_s: f64,
    /// Bare decode + encode of `bare_sample_bytes` of CSV into one Parquet
    /// file, measured just before this row's worker run.
    pub bare_cpu_seconds_per_gib: f64,
    /// Bare decode + encode of this size's object, one Parquet file per
    /// object as the sink writes them: the floor for this size.
    pub bare_per_file_cpu_seconds_per_gib: f64,
}

pub struct IngestRun {
    pub files: usize,
    pub bytes: u64,
    /// From the worker's "worker started" log line to its last commit.
    pub wall_seconds: f64,
    /// The worker's utime + stime over the same span.
    pub cpu_seconds: f64,
    /// The system (kernel) part of `cpu_seconds`: sockets, files, fsync.
    pub system_seconds: f64,
    pub peak_rss_kib: u64,
    /// `elapsed_ms` of each "object committed" line.
    pub elapsed_ms: Vec<f64>,
    /// The emulator's CPU seconds (utime + stime of its processes) over
    /// the span `cpu_seconds` covers, when asked for.
    pub emulator_cpu_seconds: Option<f64>,
    /// The worker's threads that used the most CPU over the same span:
    /// (name, seconds), most first. One near `wall_seconds` is the limit.
    pub busiest_threads: Vec<(String, f64)>,
}

impl IngestRun {
    pub fn files_per_second(&self) -> f64 {
        self.files as f64 / self.wall_seconds
    }
    pub fn mb_per_second(&self) -> f64 {
        self.bytes as f64 / self.wall_seconds / 1e6
    }
    /// The kernel's part of the CPU time (0 when too short to tick).
    pub fn system_share(&self) -> f64 {
        if self.cpu_seconds > 0.0 {
            self.system_seconds / self.cpu_seconds
        } else {
            0.0
        }
    }
    pub fn cpu_seconds_per_gib(&self) -> f64 {
        self.cpu_seconds / (self.bytes as f64 / GIB)
    }
    /// Cores the worker used on average: its CPU seconds ÷ wall seconds.
    pub fn cores_used(&self) -> f64 {
        self.cpu_seconds / self.wall_seconds
    }
    /// How busy the worker's object slots were: the sum of the objects'
    /// ingest times over wall time × concurrency. Low means the time went
    /// outside ingest (receiving, deleting, waiting for a slot to refill).
    pub fn slot_utilisation(&self, concurrency: usize) -> f64 {
        let busy_seconds: f64 = self.elapsed_ms.iter().sum::<f64>() / 1e3;
        busy_seconds / (self.wall_seconds * concurrency as f64)
    }
}

/// One size counted in instructions (callgrind's `Ir`): the worker process
/// from start to stop, and the bare floor's process, same objects.
/// Instruction counts do not drift with the machine's load the way CPU
/// time does, so this is where the CPU target can be read reliably.
pub struct InstructionRow {
    pub size: usize,
    pub files: usize,
    pub bytes: u64,
    /// The route without a schema (inferred per object), as in the
    /// throughput table.
    pub worker_inferred_schema_instructions: u64,
    /// The route declaring the schema, as the bare floor does.
    pub worker_declared_schema_instructions: u64,
    pub bare_instructions: u64,
}

impl InstructionRow {
    pub fn per_mib(&self, instructions: u64) -> f64 {
        instructions as f64 / (self.bytes as f64 / MIB)
    }
    /// Worker ÷ bare, schema inferred.
    pub fn inferred_schema_ratio(&self) -> f64 {
        self.worker_inferred_schema_instructions as f64 / self.bare_instructions as f64
    }
    /// Worker ÷ bare, schema declared.
    pub fn declared_schema_ratio(&self) -> f64 {
        self.worker_declared_schema_instructions as f64 / self.bare_instructions as f64
    }
}

/// One row of the codec table: a codec and writer settings, the bare
/// encoder and the worker on the same object.
pub struct CodecRow {
    /// As `BENCH_CODECS` names it.
    pub codec: String,
    /// "defaults", or the one setting changed from them.
    pub variant: &'static str,
    pub settings: ParquetWriterSettings,
    /// CSV bytes each bare measurement covers (the object, repeated for
    /// small ones so the CPU clock's 10 ms ticks do not dominate).
    pub bare_input_bytes: u64,
    /// Parquet encode only (the CSV decoded beforehand), thread CPU.
    pub bare_encode_cpu_seconds: f64,
    /// Decode + encode, thread CPU.
    pub bare_decode_encode_cpu_seconds: f64,
    /// The bare encoder's Parquet bytes for the object (once).
    pub bare_output_bytes: u64,
    /// The worker on one object of the same bytes.
    pub worker: IngestRun,
    /// The Parquet file the worker wrote.
    pub worker_output_bytes: u64,
}

impl CodecRow {
    fn per_gib(&self, seconds: f64) -> f64 {
        seconds / (self.bare_input_bytes as f64 / GIB)
    }
    pub fn bare_encode_cpu_seconds_per_gib(&self) -> f64 {
        self.per_gib(self.bare_encode_cpu_seconds)
    }
    pub fn bare_decode_encode_cpu_seconds_per_gib(&self) -> f64 {
        self.per_gib(self.bare_decode_encode_cpu_seconds)
    }
    /// The worker's CPU s/GiB ÷ bare decode + encode's.
    pub fn worker_over_bare(&self) -> f64 {
        self.worker.cpu_seconds_per_gib() / self.bare_decode_encode_cpu_seconds_per_gib()
    }
    /// Output MiB per GiB of CSV input.
    pub fn output_mib_per_gib(&self, output_bytes: u64) -> f64 {
        (output_bytes as f64 / MIB) / (self.worker.bytes as f64 / GIB)
    }
    /// The worker's output ÷ its CSV input.
    pub fn output_ratio(&self) -> f64 {
        self.worker_output_bytes as f64 / self.worker.bytes as f64
    }
}

/// Many small objects, grouping off or on (see `[routes.group]`).
pub struct SmallFilesRun {
    /// The group's `max_age_secs`, or `None` without grouping.
    pub group_age_secs: Option<u64>,
    pub run: IngestRun,
    /// Parquet files the sink wrote, and their bytes.
    pub output_files: usize,
    pub output_bytes: u64,
    /// Plain GetObject of the same objects (the emulator's ceiling).
    pub emulator_files_per_s: f64,
}

impl SmallFilesRun {
    pub fn cpu_ms_per_object(&self) -> f64 {
        self.run.cpu_seconds * 1e3 / self.run.files as f64
    }
}

/// The lone large object, with `cpu_threads` as set.
pub struct LoneRun {
    /// What the object is: CSV, or the same rows as Parquet.
    pub source: Source,
    /// `[worker] cpu_threads`; `None` is unset (every core).
    pub cpu_threads: Option<NonZeroUsize>,
    pub run: IngestRun,
}

impl LoneRun {
    pub fn emulator_cpu_seconds(&self) -> f64 {
        self.run
            .emulator_cpu_seconds
            .expect("the lone runs measure the emulator")
    }
    /// Cores the emulator used on average over the worker's span.
    pub fn emulator_cores(&self) -> f64 {
        self.emulator_cpu_seconds() / self.run.wall_seconds
    }
    /// The worker's cores ÷ the cores the emulator left it (`nproc` − the
    /// emulator's cores): the target is ≥ 0.9. `None` when the emulator
    /// took every core over the span (a tiny object).
    pub fn share_of_free_cores(&self, nproc: usize) -> Option<f64> {
        let free = nproc as f64 - self.emulator_cores();
        (free > 0.0).then(|| self.run.cores_used() / free)
    }
}

pub struct Report {
    pub sizes: Vec<SizeRow>,
    pub scaling: Vec<(usize, IngestRun)>,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Upload returned → commit seen in the log: adds S3 → SQS delivery
    /// and the long poll, which the worker does not control.
    pub put_to_commit_p50_ms: f64,
    pub latency_samples: usize,
    pub instructions: Vec<InstructionRow>,
    pub concurrency: usize,
    pub bare_sample_bytes: usize,
    pub codecs: Vec<CodecRow>,
    pub codec_size: usize,
    pub lone: Vec<LoneRun>,
    pub lone_size: usize,
    /// The cores this process may use (`available_parallelism`: affinity
    /// and the cgroup's quota), as `nproc` counts them.
    pub nproc: usize,
    /// Which processes the emulator CPU column sums, for the table.
    pub emulator_processes: String,
    /// The steady-rate lag run, one row per rate.
    pub lag: Vec<LagRow>,
    pub lag_seconds: f64,
    /// Small objects, grouping off then on, alternated.
    pub small_files: Vec<SmallFilesRun>,
    pub small_size: usize,
}

pub async fn run(settings: &Settings) -> Report {
    if !settings.instruction_sizes.is_empty() {
        callgrind::require_valgrind();
    }
    let bare_sample = if settings.sizes.is_empty() {
        Vec::new()
    } else {
        data::csv_bytes(settings.bare_sample_bytes, 42)
    };
    let mut sizes = Vec::new();
    for &size in &settings.sizes {
        let files = settings.files_for(size);
        // The floors are measured right before the worker run: on a shared
        // machine the CPU cost of the same work drifts by half within
        // minutes, and the ratio should compare like with like.
        let bare_cpu_seconds_per_gib = bare_decode_encode_cpu_seconds_per_gib(&bare_sample, 1);
        let bare_per_file_cpu_seconds_per_gib = if size < settings.bare_sample_bytes {
            let body = data::csv_bytes(size, 42);
            bare_decode_encode_cpu_seconds_per_gib(&body, settings.bare_sample_bytes / body.len())
        } else {
            bare_cpu_seconds_per_gib
        };
        eprintln!("bench e2e: {files} × {} ...", data::format_size(size));
        let setup = WorkerSetup::measured(settings, settings.concurrency);
        let (fixture, keys, worker) = ingest_run(settings, size, files, &setup).await;
        let (emulator_seconds, emulator_bytes) = emulator_ceiling(&fixture, &keys).await;
        sizes.push(SizeRow {
            size,
            files,
            worker,
            emulator_files_per_s: keys.len() as f64 / emulator_seconds,
            emulator_mb_per_s: emulator_bytes as f64 / emulator_seconds / 1e6,
            bare_cpu_seconds_per_gib,
            bare_per_file_cpu_seconds_per_gib,
        });
    }
    let mut scaling = Vec::new();
    for &level in &settings.scaling_levels {
        eprintln!("bench e2e: scaling, concurrency {level} ...");
        let setup = WorkerSetup::measured(settings, level);
        let (_, _, run) = ingest_run(
            settings,
            settings.scaling_file_size,
            settings.scaling_files,
            &setup,
        )
        .await;
        scaling.push((level, run));
    }
    let (mut elapsed, mut put_to_commit) = if settings.latency_samples > 0 {
        eprintln!(
            "bench e2e: latency, {} × 10KiB one at a time ...",
            settings.latency_samples
        );
        latency(settings).await
    } else {
        (Vec::new(), Vec::new())
    };
    let codec_variants = codec_variants(&settings.codecs);
    let mut codecs = Vec::new();
    if !codec_variants.is_empty() {
        // The bare measurements' input, the same bytes the worker gets.
        let body = data::csv_bytes(settings.codec_size, 42);
        let batches = data::csv_batches(&body);
        for (spec, variant) in codec_variants {
            eprintln!(
                "bench e2e: codec {} ({variant}), 1 × {} ...",
                spec.label,
                data::format_size(settings.codec_size)
            );
            codecs.push(codec_row(settings, &spec, variant, &body, &batches).await);
        }
    }
    let mut lone = Vec::new();
    let mut emulator_processes = String::new();
    if settings.lone_size > 0 {
        let emulator = EmulatorProcesses::find();
        emulator_processes = emulator.describe();
        // Alternated, and repeated: one run each is at the mercy of what
        // else the machine does in those seconds.
        let sources = [Source::Csv, Source::Parquet];
        for source in &sources[..settings.lone_sources] {
            for _ in 0..settings.lone_repeats {
                for cpu_threads in [NonZeroUsize::new(1), None] {
                    eprintln!(
                        "bench e2e: lone object, 1 × {} of {}, cpu_threads {} ...",
                        data::format_size(settings.lone_size),
                        source.name(),
                        cpu_threads.map_or("unset".into(), |n| n.to_string())
                    );
                    let mut setup = WorkerSetup::measured(settings, settings.concurrency);
                    setup.source = *source;
                    setup.declared_schema = true;
                    setup.cpu_threads = cpu_threads;
                    setup.emulator = Some(&emulator);
                    let (fixture, keys, run) =
                        ingest_run(settings, settings.lone_size, 1, &setup).await;
                    delete_objects(&fixture, &keys).await;
                    lone.push(LoneRun {
                        source: *source,
                        cpu_threads,
                        run,
                    });
                }
            }
        }
    }
    let mut instructions = Vec::new();
    for &size in &settings.instruction_sizes {
        let files = settings.files_for(size);
        eprintln!(
            "bench e2e: instructions (callgrind), {files} × {} ...",
            data::format_size(size)
        );
        instructions.push(instruction_row(settings, size, files).await);
    }
    let mut small_files = Vec::new();
    if settings.small_files > 0 {
        for group_age_secs in [None, Some(settings.small_group_age_secs)] {
            eprintln!(
                "bench e2e: small files, {} × {}, grouping {} ...",
                settings.small_files,
                data::format_size(settings.small_size),
                group_age_secs.map_or("off".into(), |age| format!("on (max_age_secs {age})"))
            );
            let mut setup = WorkerSetup::measured(settings, settings.concurrency);
            setup.group_age_secs = group_age_secs;
            let (fixture, keys, run) =
                ingest_run(settings, settings.small_size, settings.small_files, &setup).await;
            let outputs = crate::util::parquet_files(fixture.output_dir());
            let output_bytes = outputs
                .iter()
                .map(|path| std::fs::metadata(path).map_or(0, |m| m.len()))
                .sum();
            let (emulator_seconds, _) = emulator_ceiling(&fixture, &keys).await;
            small_files.push(SmallFilesRun {
                group_age_secs,
                run,
                output_files: outputs.len(),
                output_bytes,
                emulator_files_per_s: keys.len() as f64 / emulator_seconds,
            });
        }
    }
    let mut lag = Vec::new();
    for &rate in &settings.lag_rates {
        eprintln!(
            "bench e2e: steady-rate lag, {rate}/s × {} s ...",
            settings.lag_seconds
        );
        lag.push(lag_row(settings, rate).await);
    }
    Report {
        sizes,
        scaling,
        latency_p50_ms: data::percentile(&mut elapsed, 0.50),
        latency_p99_ms: data::percentile(&mut elapsed, 0.99),
        put_to_commit_p50_ms: data::percentile(&mut put_to_commit, 0.50),
        latency_samples: settings.latency_samples,
        instructions,
        concurrency: settings.concurrency,
        bare_sample_bytes: settings.bare_sample_bytes,
        codecs,
        codec_size: settings.codec_size,
        lone,
        lone_size: settings.lone_size,
        nproc: std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        emulator_processes,
        lag,
        lag_seconds: settings.lag_seconds,
        small_files,
        small_size: settings.small_size,
    }
}

/// One row of the codec table: bare encode and decode + encode of `body`
/// with the sink's properties for `spec`, then the worker ingesting the
/// same bytes as one object with the sink configured so, and the size of
/// the file it wrote (checked to carry the chosen codec, dictionary and
/// statistics).
async fn codec_row(
    settings: &Settings,
    spec: &CodecSpec,
    variant: &'static str,
    body: &[u8],
    batches: &[arrow::record_batch::RecordBatch],
) -> CodecRow {
    // Small objects are encoded several times over (a writer each time,
    // as the sink writes a file per object), so each sample is enough CPU
    // to measure with the clock's 10 ms ticks.
    let repeats = (settings.bare_sample_bytes / body.len().max(1)).max(1);
    let bare_output_bytes = data::bare_encode(batches, data::writer_properties(&spec.settings));
    let bare_encode_cpu_seconds = median_thread_cpu_seconds(3, || {
        for _ in 0..repeats {
            let bytes = data::bare_encode(batches, data::writer_properties(&spec.settings));
            assert_eq!(bytes, bare_output_bytes, "the same batches encode the same");
        }
    });
    let bare_decode_encode_cpu_seconds = median_thread_cpu_seconds(3, || {
        for _ in 0..repeats {
            let (rows, _) =
                data::bare_csv_to_parquet_with(body, data::writer_properties(&spec.settings));
            assert!(rows > 0);
        }
    });

    let mut setup = WorkerSetup::measured(settings, settings.concurrency);
    setup.declared_schema = true;
    setup.writer = spec.settings;
    let (fixture, keys, worker) = ingest_run(settings, settings.codec_size, 1, &setup).await;
    delete_objects(&fixture, &keys).await;
    let files = crate::util::parquet_files(fixture.output_dir());
    assert_eq!(files.len(), 1, "one object, one Parquet file: {files:?}");
    check_written_with(&files[0], &data::writer_properties(&spec.settings));
    let worker_output_bytes = std::fs::metadata(&files[0])
        .expect("the worker's Parquet file")
        .len();
    CodecRow {
        codec: spec.label.clone(),
        variant,
        settings: spec.settings,
        bare_input_bytes: (body.len() * repeats) as u64,
        bare_encode_cpu_seconds,
        bare_decode_encode_cpu_seconds,
        bare_output_bytes,
        worker,
        worker_output_bytes,
    }
}

/// Panics unless every column chunk of the Parquet file at `path` has the
/// codec, dictionary (a dictionary page or none) and statistics level (a
/// column index only with page statistics) `expected` asks for: the
/// worker's figures must be for the settings the row names. A file does
/// not record the codec's level (the reader reports zstd as level 1), so
/// only the codec itself is compared.
fn check_written_with(path: &Path, expected: &WriterProperties) {
    let file = std::fs::File::open(path).expect("the worker's Parquet file");
    let reader = SerializedFileReader::new(file).expect("the worker's file is Parquet");
    for row_group in reader.metadata().row_groups() {
        for column in row_group.columns() {
            let name = ColumnPath::new(column.column_path().parts().to_vec());
            assert_eq!(
                std::mem::discriminant(&column.compression()),
                std::mem::discriminant(&expected.compression(&name)),
                "{}: codec of {name}: {:?}, expected {:?}",
                path.display(),
                column.compression(),
                expected.compression(&name)
            );
            assert_eq!(
                column.dictionary_page_offset().is_some(),
                expected.dictionary_enabled(&name),
                "{}: dictionary page of {name}",
                path.display()
            );
            assert_eq!(
                column.column_index_offset().is_some(),
                expected.statistics_enabled(&name)
                    == parquet::file::properties::EnabledStatistics::Page,
                "{}: column index (page statistics) of {name}",
                path.display()
            );
        }
    }
}

/// Deletes the run's source objects: the codec and lone objects are large
/// and LocalStack keeps every bucket until it stops.
async fn delete_objects(fixture: &Fixture, keys: &[String]) {
    for key in keys {
        fixture.delete(key).await;
    }
}

/// How the worker under measurement runs.
/// The objects a run ingests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Csv,
    /// The same rows as Parquet, written with the sink's default
    /// properties (row groups of 128 Ki rows).
    Parquet,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Csv => "csv",
            Source::Parquet => "parquet",
        }
    }
}

struct WorkerSetup<'a> {
    /// CSV, or the same rows as Parquet.
    source: Source,
    concurrency: usize,
    /// A command it runs under (a profiler), or empty.
    prefix: Vec<String>,
    /// Whether the route declares the bench data's schema. Without one,
    /// as in the throughput table, the worker infers it for every object.
    declared_schema: bool,
    /// Whether it runs under callgrind for the instruction count.
    counted: bool,
    /// The `parquet_dir` sink's writer settings.
    writer: ParquetWriterSettings,
    /// `[worker] cpu_threads`.
    cpu_threads: Option<NonZeroUsize>,
    /// The emulator's processes, when its CPU is measured too.
    emulator: Option<&'a EmulatorProcesses>,
    /// The route's `group.max_age_secs`; `None`: no grouping.
    group_age_secs: Option<u64>,
}

impl WorkerSetup<'_> {
    /// As the throughput table runs it: `BENCH_WORKER_PREFIX`, no schema,
    /// the sink's default writer settings and CPU threads.
    fn measured(settings: &Settings, concurrency: usize) -> WorkerSetup<'static> {
        WorkerSetup {
            source: Source::Csv,
            concurrency,
            prefix: settings.worker_prefix.clone(),
            declared_schema: false,
            counted: false,
            writer: ParquetWriterSettings::default(),
            cpu_threads: None,
            emulator: None,
            group_age_secs: None,
        }
    }
}

/// Uploads `files` CSV objects of `size` (the queue fills through the bucket
/// notification), then starts the worker and measures it until the last
/// commit.
async fn ingest_run(
    settings: &Settings,
    size: usize,
    files: usize,
    setup: &WorkerSetup<'_>,
) -> (Fixture, Vec<String>, IngestRun) {
    let fixture = Fixture::new("bench").await;
    let body = match setup.source {
        Source::Csv => data::csv_bytes(size, 42),
        Source::Parquet => data::parquet_bytes(&data::csv_bytes(size, 42)),
    };
    let bytes = body.len() as u64 * files as u64;
    let extension = setup.source.name();
    let keys: Vec<String> = (0..files)
        .map(|i| format!("orders/{i:05}.{extension}"))
        .collect();
    fixture
        .put_many(keys.iter().map(|key| (key.clone(), body.clone())).collect())
        .await;
    drop(body);
    wait_until(
        "every notification on the queue",
        Duration::from_secs(120),
        || async { fixture.queue_counts().await.0 >= files as u64 },
    )
    .await;

    let routes = setup.declared_schema.then(data::route_with_schema_toml);
    let mut config = fixture.config(routes.as_deref());
    config.worker.concurrency = NonZeroUsize::new(setup.concurrency).expect("concurrency ≥ 1");
    config.worker.cpu_threads = setup.cpu_threads;
    if let Some(max_age_secs) = setup.group_age_secs {
        config.routes[0].group = Some(s3_ingest::config::GroupConfig {
            max_age_secs,
            ..Default::default()
        });
    }
    match config.sinks.get_mut("lake") {
        Some(SinkConfig::ParquetDir { writer, .. }) => *writer = setup.writer,
        _ => panic!("the fixture's config has the `lake` parquet_dir sink"),
    }
    if setup.counted {
        // Idle receives are timer-driven: a run 50 times slower would
        // count 50 times as many. The longest long poll makes them rare.
        config.queue.wait_time_secs = 20;
    }
    let log = fixture.output_dir().join("worker.log");
    let mut worker = WorkerProcess::spawn(&settings.worker_binary, &setup.prefix, &config, &log);
    // Generous: a 1 GiB file on a shared 2-core machine.
    let per_byte = Duration::from_secs(bytes / 2_000_000);
    let deadline = if setup.prefix.is_empty() {
        Duration::from_secs(120) + per_byte
    } else {
        PROFILED_START_UP + per_byte * PROFILED_DEADLINE_FACTOR
    };
    let started = worker.wait_for_lines("worker started", 1, deadline);
    let cpu_before = worker.cpu_seconds();
    let threads_before = worker.thread_cpu_seconds();
    let emulator_before = setup.emulator.map(EmulatorProcesses::cpu_seconds);
    let committed = worker.wait_for_lines("object committed", files, deadline);
    let cpu_after = worker.cpu_seconds();
    let threads_after = worker.thread_cpu_seconds();
    let emulator_after = setup.emulator.map(EmulatorProcesses::cpu_seconds);
    let peak_rss_kib = worker.peak_rss_kib();
    worker.stop();

    let last = committed.last().expect("at least one commit");
    let wall_seconds = (last.timestamp - started[0].timestamp).as_seconds_f64();
    let run = IngestRun {
        files,
        bytes,
        wall_seconds,
        cpu_seconds: (cpu_after.0 + cpu_after.1) - (cpu_before.0 + cpu_before.1),
        system_seconds: cpu_after.1 - cpu_before.1,
        peak_rss_kib,
        elapsed_ms: committed.iter().map(|line| line.elapsed_ms).collect(),
        emulator_cpu_seconds: emulator_before.zip(emulator_after).map(|(b, a)| a - b),
        busiest_threads: busiest_threads(&threads_before, &threads_after, 3),
    };
    (fixture, keys, run)
}

/// Plain concurrent GetObject of the same objects, bodies drained: what
/// the emulator can serve. Returns (seconds, bytes).
async fn emulator_ceiling(fixture: &Fixture, keys: &[String]) -> (f64, u64) {
    let started = Instant::now();
    let bytes: u64 = futures::stream::iter(keys)
        .map(|key| async move {
            let mut body = fixture
                .clients
                .s3
                .get_object()
                .bucket(&fixture.bucket)
                .key(key)
                .send()
                .await
                .expect("GetObject")
                .body;
            let mut bytes = 0u64;
            while let Some(chunk) = body.next().await {
                bytes += chunk.expect("GetObject body").len() as u64;
            }
            bytes
        })
        .buffer_unordered(EMULATOR_GET_CONCURRENCY)
        .fold(0, |total, bytes| async move { total + bytes })
        .await;
    (started.elapsed().as_secs_f64(), bytes)
}

/// 10 KiB files one at a time: each one's `elapsed_ms` (ingest start →
/// sink commit) and the bench's own upload → commit-seen time.
async fn latency(settings: &Settings) -> (Vec<f64>, Vec<f64>) {
    let fixture = Fixture::new("bench-latency").await;
    let mut config = fixture.config(None);
    config.worker.concurrency = NonZeroUsize::new(settings.concurrency).expect("≥ 1");
    let log = fixture.output_dir().join("worker.log");
    let mut worker = WorkerProcess::spawn(
        &settings.worker_binary,
        &settings.worker_prefix,
        &config,
        &log,
    );
    worker.wait_for_lines("worker started", 1, Duration::from_secs(60));
    let body = data::csv_bytes(10 << 10, 7);
    let mut put_to_commit = Vec::new();
    for sample in 0..settings.latency_samples {
        let uploaded = Instant::now();
        fixture
            .put(&format!("small/{sample:05}.csv"), body.clone())
            .await;
        worker.wait_for_lines("object committed", sample + 1, Duration::from_secs(60));
        put_to_commit.push(uploaded.elapsed().as_secs_f64() * 1e3);
    }
    let committed =
        worker.wait_for_lines("object committed", settings.latency_samples, Duration::ZERO);
    worker.stop();
    (
        committed.iter().map(|line| line.elapsed_ms).collect(),
        put_to_commit,
    )
}

/// CPU seconds per GiB of CSV for bare arrow-csv decode + Parquet encode
/// (the sink's properties) of `body`, `files` times over, each into its
/// own writer as the sink writes one file per object; on this thread, the
/// median of five runs (the best of a few would pick the one quiet moment
/// of a shared machine, which the worker's longer run does not get).
fn bare_decode_encode_cpu_seconds_per_gib(body: &[u8], files: usize) -> f64 {
    let files = files.max(1);
    let seconds = median_thread_cpu_seconds(5, || {
        for _ in 0..files {
            let rows = data::bare_csv_to_parquet(body);
            assert!(rows > 0);
        }
    });
    seconds / ((body.len() * files) as f64 / GIB)
}

/// The median over `runs` runs of `work`'s CPU seconds, on a thread of its
/// own (its CPU clock counts only `work`).
fn median_thread_cpu_seconds(runs: usize, work: impl Fn() + Sync) -> f64 {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut seconds: Vec<f64> = (0..runs)
                    .map(|_| {
                        let before = thread_cpu_seconds();
                        work();
                        thread_cpu_seconds() - before
                    })
                    .collect();
                data::percentile(&mut seconds, 0.5)
            })
            .join()
            .expect("bare baseline thread")
    })
}

/// The worker ingesting `files` × `size` under callgrind, from its start
/// to its graceful stop, then the bare floor (decode + encode, one Parquet
/// file per object) over the same bytes in its own process under callgrind.
/// Both counts include their process's start-up; the worker's also its
/// receives, deletes, logs and shutdown, so its side is the conservative one.
async fn instruction_row(settings: &Settings, size: usize, files: usize) -> InstructionRow {
    let profiles = tempfile::tempdir().expect("temp dir");
    let mut worker_instructions = [0; 2];
    let mut bytes = 0;
    for (declared_schema, counted) in [false, true].into_iter().zip(&mut worker_instructions) {
        let profile = profiles
            .path()
            .join(format!("worker-declared-{declared_schema}.callgrind"));
        let setup = WorkerSetup {
            prefix: callgrind::command(&profile),
            declared_schema,
            counted: true,
            ..WorkerSetup::measured(settings, settings.concurrency)
        };
        let (_fixture, _keys, run) = ingest_run(settings, size, files, &setup).await;
        *counted = callgrind::total_instructions(&profile);
        bytes = run.bytes;
    }

    let object = profiles.path().join("object.csv");
    std::fs::write(&object, data::csv_bytes(size, 42)).expect("write the bench object");
    let bare_profile = profiles.path().join("bare.callgrind");
    let mut command = callgrind::command(&bare_profile);
    command.push(settings.bare_floor_binary.display().to_string());
    command.extend([
        "--bare-floor".into(),
        object.display().to_string(),
        files.to_string(),
    ]);
    let status = Command::new(&command[0])
        .args(&command[1..])
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|err| panic!("run {command:?}: {err}"));
    assert!(status.success(), "{command:?}: {status}");
    InstructionRow {
        size,
        files,
        bytes,
        worker_inferred_schema_instructions: worker_instructions[0],
        worker_declared_schema_instructions: worker_instructions[1],
        bare_instructions: callgrind::total_instructions(&bare_profile),
    }
}

/// `--bare-floor FILE COUNT`: the bare floor as a process of its own, for
/// callgrind to count: decodes and encodes FILE's CSV, COUNT times, a
/// Parquet writer each time. Returns false when the arguments are not that.
pub fn bare_floor_main(args: &[String]) -> bool {
    let [_, flag, file, count] = args else {
        return false;
    };
    if flag != "--bare-floor" {
        return false;
    }
    let body = std::fs::read(file).unwrap_or_else(|err| panic!("{file}: {err}"));
    let count: usize = count.parse().expect("--bare-floor FILE COUNT");
    for _ in 0..count {
        assert!(data::bare_csv_to_parquet(&body) > 0);
    }
    true
}

/// The lag run's object size, worker concurrency and PUTs in flight at most.
const LAG_OBJECT_BYTES: usize = 10 << 10;
const LAG_CONCURRENCY: usize = 8;
const LAG_MAX_PUTS_IN_FLIGHT: usize = 32;
/// Plain ReceiveMessage loops in parallel when timing the emulator alone.
const LAG_RECEIVERS: usize = 4;
/// How long the lag run waits for the last object after the last PUT.
const LAG_DRAIN: Duration = Duration::from_secs(120);

/// One rate of the steady-rate lag run: the emulator's own notification
/// delay (no worker), then the worker on a fresh bucket and queue.
pub struct LagRow {
    pub rate: f64,
    pub emulator: EmulatorDelivery,
    pub worker: WorkerLag,
}

/// CPU used over a run's window: LocalStack's process, the worker's
/// process (none in the emulator-only run), and the whole machine.
#[derive(Clone, Copy, Default)]
pub struct CpuWindow {
    /// LocalStack's utime + stime ÷ wall, in cores; `None` when its process
    /// is not visible here (e.g. in a container).
    pub localstack_cores: Option<f64>,
    pub worker_cores: Option<f64>,
    /// Busy share of every core of the machine (other jobs included).
    pub machine_busy: f64,
}

/// PUTs at a fixed rate, with no worker: [`LAG_RECEIVERS`] plain
/// ReceiveMessage loops take each notification as soon as SQS shows it
/// (deleting as they go). What the emulator adds before any worker can
/// receive.
pub struct EmulatorDelivery {
    pub objects: usize,
    /// PUTs that returned per second.
    pub put_rate: f64,
    /// PUT returned → first received, per object.
    pub delay_ms: Vec<f64>,
    /// PUT returned → the notification's `SentTimestamp` (when the
    /// emulator's S3 put it on the queue).
    pub to_queue_ms: Vec<f64>,
    /// Messages in each receive that returned any.
    pub messages_per_receive: Vec<f64>,
    pub cpu: CpuWindow,
}

/// PUTs at a fixed rate with the worker running: for each object, from its
/// PUT's return to on the queue (the message's `SentTimestamp`), to
/// received (the worker's `messages received` debug line), to ingest
/// started (`object committed` timestamp − `elapsed_ms`) and to committed
/// (that line's timestamp).
pub struct WorkerLag {
    pub objects: usize,
    pub put_rate: f64,
    /// PUT returned → committed, in PUT order.
    pub put_to_commit_ms: Vec<f64>,
    /// PUT returned → on the queue (the emulator's notification delay).
    pub to_queue_ms: Vec<f64>,
    /// On the queue → received by the worker.
    pub queue_wait_ms: Vec<f64>,
    /// Received → ingest started (waiting for a slot).
    pub slot_wait_ms: Vec<f64>,
    /// Ingest started → committed (`elapsed_ms`).
    pub ingest_ms: Vec<f64>,
    /// The worker's own `lag_ms`: commit − the S3 event's `eventTime`.
    pub lag_ms: Vec<f64>,
    /// Messages in each receive that returned any, and how many returned
    /// none, between the first PUT and the last commit.
    pub messages_per_receive: Vec<f64>,
    pub empty_receives: usize,
    /// Each receive's request time, and the receive loop's time between
    /// one receive's answer and the next request (waiting for room).
    pub request_ms: Vec<f64>,
    pub loop_gap_ms: Vec<f64>,
    /// Entries in each DeleteMessageBatch.
    pub deletes_per_batch: Vec<f64>,
    /// From the first PUT to the last commit.
    pub wall_seconds: f64,
    pub cpu: CpuWindow,
}

impl WorkerLag {
    /// p50 of PUT → commit over the first and the last quarter of the
    /// objects (PUT order): a lag that grows over the run shows here.
    pub fn quarters_p50_ms(&self) -> (f64, f64) {
        let quarter = (self.put_to_commit_ms.len() / 4).max(1);
        let mut first = self.put_to_commit_ms[..quarter.min(self.put_to_commit_ms.len())].to_vec();
        let mut last =
            self.put_to_commit_ms[self.put_to_commit_ms.len().saturating_sub(quarter)..].to_vec();
        (
            data::percentile(&mut first, 0.5),
            data::percentile(&mut last, 0.5),
        )
    }

    pub fn receives_per_second(&self) -> f64 {
        (self.messages_per_receive.len() + self.empty_receives) as f64 / self.wall_seconds
    }
}

/// p50 and p99 of `values` (sorted in place).
pub fn p50_p99(values: &[f64]) -> (f64, f64) {
    let mut values = values.to_vec();
    (
        data::percentile(&mut values, 0.50),
        data::percentile(&mut values, 0.99),
    )
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

async fn lag_row(settings: &Settings, rate: f64) -> LagRow {
    let objects = ((rate * settings.lag_seconds).round() as usize).max(1);
    LagRow {
        rate,
        emulator: emulator_delivery(rate, objects).await,
        worker: worker_lag(settings, rate, objects).await,
    }
}

/// The PUTs of one lag run: each key and when its PUT returned.
struct PacedUploads {
    keys: Vec<String>,
    returned: HashMap<String, DateTime<Utc>>,
    first_sent: DateTime<Utc>,
    last_returned: DateTime<Utc>,
}

impl PacedUploads {
    fn put_rate(&self) -> f64 {
        self.keys.len() as f64 / (self.last_returned - self.first_sent).as_seconds_f64()
    }
}

/// PUTs `objects` 10 KiB CSV objects under `prefix`, one every 1/`rate` s
/// (a tokio interval; each PUT its own task, at most
/// [`LAG_MAX_PUTS_IN_FLIGHT`] at once, so a slow PUT does not hold back the
/// next), recording when each returned.
async fn paced_puts(fixture: &Fixture, prefix: &str, rate: f64, objects: usize) -> PacedUploads {
    let body = bytes::Bytes::from(data::csv_bytes(LAG_OBJECT_BYTES, 11));
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(LAG_MAX_PUTS_IN_FLIGHT));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut puts = tokio::task::JoinSet::new();
    let first_sent = Utc::now();
    for index in 0..objects {
        ticks.tick().await;
        let permit = in_flight.clone().acquire_owned().await.expect("open");
        let key = format!("{prefix}/{index:06}.csv");
        let (s3, bucket, body) = (
            fixture.clients.s3.clone(),
            fixture.bucket.clone(),
            body.clone(),
        );
        puts.spawn(async move {
            s3.put_object()
                .bucket(bucket)
                .key(&key)
                .body(aws_sdk_s3::primitives::ByteStream::from(body))
                .send()
                .await
                .expect("PutObject");
            let returned = Utc::now();
            drop(permit);
            (key, returned)
        });
    }
    let mut keys = Vec::with_capacity(objects);
    let mut returned = HashMap::with_capacity(objects);
    while let Some(put) = puts.join_next().await {
        let (key, at) = put.expect("PUT task");
        keys.push(key.clone());
        returned.insert(key, at);
    }
    keys.sort();
    let last_returned = *returned.values().max().expect("at least one PUT");
    PacedUploads {
        keys,
        returned,
        first_sent,
        last_returned,
    }
}

/// The emulator alone: PUTs at `rate` with plain receivers taking every
/// notification as soon as it is visible.
async fn emulator_delivery(rate: f64, objects: usize) -> EmulatorDelivery {
    use std::sync::{Arc, Mutex};
    let fixture = Fixture::new("bench-lag-emu").await;
    // Key → (on the queue, first received).
    type Seen = HashMap<String, (DateTime<Utc>, DateTime<Utc>)>;
    let first_received: Arc<Mutex<Seen>> = Arc::default();
    let per_receive: Arc<Mutex<Vec<f64>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut receivers = tokio::task::JoinSet::new();
    for _ in 0..LAG_RECEIVERS {
        let sqs = fixture.clients.sqs.clone();
        let url = fixture.queue_url.clone();
        let (first_received, per_receive, stop) =
            (first_received.clone(), per_receive.clone(), stop.clone());
        receivers.spawn(async move {
            let mut deletes = tokio::task::JoinSet::new();
            loop {
                let receive = sqs
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .visibility_timeout(60)
                    .message_system_attribute_names(
                        aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp,
                    )
                    .send();
                let output = tokio::select! {
                    _ = stop.cancelled() => break,
                    output = receive => output.expect("ReceiveMessage"),
                };
                let now = Utc::now();
                let messages = output.messages.unwrap_or_default();
                if messages.is_empty() {
                    continue;
                }
                per_receive.lock().unwrap().push(messages.len() as f64);
                let mut entries = Vec::new();
                for (index, message) in messages.into_iter().enumerate() {
                    let queued = sent_timestamp(
                        message
                            .attributes()
                            .and_then(|a| {
                                a.get(
                                    &aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp,
                                )
                            })
                            .map_or("", String::as_str),
                    );
                    if let Ok(s3_ingest::notification::Notification::Objects(objects)) =
                        s3_ingest::notification::parse(message.body().unwrap_or_default())
                    {
                        let mut seen = first_received.lock().unwrap();
                        for object in objects {
                            seen.entry(object.key).or_insert((queued, now));
                        }
                    }
                    entries.push(
                        aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                            .id(index.to_string())
                            .receipt_handle(message.receipt_handle.unwrap_or_default())
                            .build()
                            .expect("delete entry"),
                    );
                }
                let delete = sqs
                    .delete_message_batch()
                    .queue_url(&url)
                    .set_entries(Some(entries));
                deletes.spawn(async move { delete.send().await.expect("DeleteMessageBatch") });
            }
            while deletes.join_next().await.is_some() {}
        });
    }
    let before = CpuSample::take(None);
    let uploads = paced_puts(&fixture, "lag", rate, objects).await;
    let deadline = Instant::now() + LAG_DRAIN;
    while first_received.lock().unwrap().len() < objects {
        assert!(
            Instant::now() < deadline,
            "the emulator delivered {} of {objects} notifications",
            first_received.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = CpuSample::take(None).since(&before);
    stop.cancel();
    while let Some(receiver) = receivers.join_next().await {
        receiver.expect("receiver task");
    }
    let first_received = first_received.lock().unwrap();
    let ms = |delta: chrono::TimeDelta| delta.as_seconds_f64() * 1e3;
    let (mut delay_ms, mut to_queue_ms) = (Vec::new(), Vec::new());
    for key in &uploads.keys {
        let (queued, received) = first_received[key];
        delay_ms.push(ms(received - uploads.returned[key]));
        to_queue_ms.push(ms(queued - uploads.returned[key]));
    }
    let messages_per_receive = per_receive.lock().unwrap().clone();
    EmulatorDelivery {
        objects,
        put_rate: uploads.put_rate(),
        delay_ms,
        to_queue_ms,
        messages_per_receive,
        cpu,
    }
}

/// The worker process (concurrency [`LAG_CONCURRENCY`], the schema
/// declared) receiving while objects are PUT at `rate`.
async fn worker_lag(settings: &Settings, rate: f64, objects: usize) -> WorkerLag {
    let fixture = Fixture::new("bench-lag").await;
    let routes = data::route_with_schema_toml();
    let mut config = fixture.config(Some(&routes));
    config.worker.concurrency = NonZeroUsize::new(LAG_CONCURRENCY).expect("≥ 1");
    let log = fixture.output_dir().join("worker.log");
    let mut worker = WorkerProcess::spawn_logging(
        &settings.worker_binary,
        &settings.worker_prefix,
        &config,
        &log,
        // `messages received` and `delete batch sent` are debug lines.
        "s3_ingest=info,s3_ingest::queue::sqs=debug",
    );
    worker.wait_for_lines("worker started", 1, Duration::from_secs(60));
    let before = CpuSample::take(Some(worker.child.id()));
    let uploads = paced_puts(&fixture, "lag", rate, objects).await;
    // The bucket's test event is a message too, but not committed.
    let committed = worker.wait_for_lines("object committed", objects, LAG_DRAIN);
    let cpu = CpuSample::take(Some(worker.child.id())).since(&before);
    let received = worker.lines("messages received");

    let deletes = worker.lines("delete batch sent");
    worker.stop();

    let first_put = uploads.first_sent;
    let last_commit = committed
        .iter()
        .map(|line| line.timestamp)
        .max()
        .expect("commits");
    let in_window = |line: &LogLine| line.timestamp >= first_put && line.timestamp <= last_commit;
    let ms = |delta: chrono::TimeDelta| delta.as_seconds_f64() * 1e3;
    // Message id → (on the queue, received), from every receive.
    let mut received_at: HashMap<String, (DateTime<Utc>, DateTime<Utc>)> = HashMap::new();
    let (mut messages_per_receive, mut empty_receives) = (Vec::new(), 0);
    let (mut request_ms, mut loop_gap_ms) = (Vec::new(), Vec::new());
    let mut previous_answer: Option<DateTime<Utc>> = None;
    for line in &received {
        let count = line.json["messages"].as_u64().unwrap_or(0);
        let request = line.json["request_ms"].as_f64().unwrap_or(0.0);
        if in_window(line) {
            if count == 0 {
                empty_receives += 1;
            } else {
                messages_per_receive.push(count as f64);
            }
            request_ms.push(request);
            if let Some(previous) = previous_answer {
                let requested =
                    line.timestamp - chrono::TimeDelta::microseconds((request * 1e3) as i64);
                loop_gap_ms.push(ms(requested - previous).max(0.0));
            }
        }
        previous_answer = Some(line.timestamp);
        let ids = line.json["message_ids"]
            .as_str()
            .unwrap_or_default()
            .split(',');
        let sent = line.json["sent_timestamps"]
            .as_str()
            .unwrap_or_default()
            .split(',');
        for (id, sent) in ids.zip(sent) {
            received_at
                .entry(id.to_owned())
                .or_insert((sent_timestamp(sent), line.timestamp));
        }
    }
    let deletes_per_batch = deletes
        .iter()
        .filter(|line| in_window(line))
        .map(|line| line.json["entries"].as_f64().unwrap_or(0.0))
        .collect();
    let by_key: HashMap<&str, &LogLine> = committed
        .iter()
        .filter_map(|line| Some((line.json["key"].as_str()?, line)))
        .collect();
    let mut lag = WorkerLag {
        objects,
        put_rate: uploads.put_rate(),
        put_to_commit_ms: Vec::new(),
        to_queue_ms: Vec::new(),
        queue_wait_ms: Vec::new(),
        slot_wait_ms: Vec::new(),
        ingest_ms: Vec::new(),
        lag_ms: Vec::new(),
        messages_per_receive,
        empty_receives,
        request_ms,
        loop_gap_ms,
        deletes_per_batch,
        wall_seconds: (last_commit - first_put).as_seconds_f64(),
        cpu,
    };
    for key in &uploads.keys {
        let line = by_key
            .get(key.as_str())
            .unwrap_or_else(|| panic!("no `object committed` line for {key}"));
        let put = uploads.returned[key];
        let committed_at = line.timestamp;
        let started = committed_at - chrono::TimeDelta::milliseconds(line.elapsed_ms as i64);
        let message_id = message_id_of(&line.json)
            .unwrap_or_else(|| panic!("no message_id span on the commit of {key}"));
        let (queued, received) = *received_at
            .get(message_id)
            .unwrap_or_else(|| panic!("no `messages received` line names {message_id}"));
        lag.put_to_commit_ms.push(ms(committed_at - put));
        lag.to_queue_ms.push(ms(queued - put));
        lag.queue_wait_ms.push(ms(received - queued));
        lag.slot_wait_ms.push(ms(started - received));
        lag.ingest_ms.push(line.elapsed_ms);
        lag.lag_ms
            .push(line.json["lag_ms"].as_f64().unwrap_or(f64::NAN));
    }
    lag
}

/// An SQS `SentTimestamp` (ms since the epoch) as a time.
fn sent_timestamp(text: &str) -> DateTime<Utc> {
    let millis: i64 = text
        .parse()
        .unwrap_or_else(|_| panic!("SentTimestamp `{text}` is not ms since the epoch"));
    DateTime::from_timestamp_millis(millis).expect("a SentTimestamp in range")
}

/// The `message_id` of the `message` span a JSON log line was written in.
fn message_id_of(json: &serde_json::Value) -> Option<&str> {
    json["span"]["message_id"].as_str().or_else(|| {
        json["spans"]
            .as_array()?
            .iter()
            .find_map(|span| span["message_id"].as_str())
    })
}

/// CPU counters at one moment: LocalStack's process, optionally another
/// process (the worker), and the machine (`/proc/stat`).
struct CpuSample {
    at: Instant,
    localstack: Option<f64>,
    process: Option<(u32, f64)>,
    /// (busy, total) jiffies over every core.
    machine: (u64, u64),
}

impl CpuSample {
    fn take(process: Option<u32>) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            localstack: localstack_pid()
                .map(|pid| stat_cpu_seconds(Path::new(&format!("/proc/{pid}/stat")))),
            process: process.map(|pid| {
                (
                    pid,
                    stat_cpu_seconds(Path::new(&format!("/proc/{pid}/stat"))),
                )
            }),
            machine: machine_jiffies(),
        }
    }

    fn since(&self, before: &CpuSample) -> CpuWindow {
        let wall = (self.at - before.at).as_secs_f64();
        let busy = (self.machine.0 - before.machine.0) as f64;
        let total = (self.machine.1 - before.machine.1) as f64;
        CpuWindow {
            localstack_cores: self
                .localstack
                .zip(before.localstack)
                .map(|(after, before)| (after - before) / wall),
            worker_cores: self
                .process
                .zip(before.process)
                .map(|((_, after), (_, before))| (after - before) / wall),
            machine_busy: if total > 0.0 { busy / total } else { 0.0 },
        }
    }
}

/// The LocalStack server run on this host (`localstack.runtime.main`),
/// found in `/proc`; `None` when it is elsewhere (a container).
fn localstack_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.contains("localstack.runtime.main") && cmdline.contains("python")).then_some(pid)
    })
}

/// (busy, total) jiffies of every core, from `/proc/stat`'s `cpu` line;
/// idle and iowait are not busy.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .expect("a cpu line")
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest counted in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime from a `/proc/.../stat` file, in seconds.
fn stat_cpu_seconds(path: &Path) -> f64 {
    let (user, system) = stat_user_system_seconds(path);
    user + system
}

/// utime and stime from a `/proc/.../stat` file, in seconds.
fn stat_user_system_seconds(path: &Path) -> (f64, f64) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    // The command name (field 2) may hold spaces: count from after its ')'.
    let after_name = &text[text.rfind(')').expect("stat has (comm)") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime); `fields[0]` is field 3.
    let seconds = |field: &str| field.parse::<f64>().unwrap() / ticks_per_second();
    (seconds(fields[11]), seconds(fields[12]))
}

fn thread_cpu_seconds() -> f64 {
    stat_cpu_seconds(Path::new("/proc/thread-self/stat"))
}

/// The fields of a `/proc/.../stat` file from field 3 (state) on, or
/// `None` when the process is gone.
fn stat_fields(path: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces: count from after its ')'.
    let after_name = text.get(text.rfind(')')? + 2..)?;
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

/// The emulator's processes, so its CPU can be read beside the worker's:
/// the process(es) listening on the endpoint's TCP port (the listening
/// socket's inode from `/proc/net/tcp` and `tcp6`, found among the links in
/// `/proc/*/fd`), else the pid in `localstack/localstack.sh`'s pid file;
/// and, each time the CPU is read, every process descended from them.
pub struct EmulatorProcesses {
    roots: Vec<u32>,
    how: String,
}

impl EmulatorProcesses {
    /// Panics, saying what it looked at, when neither way finds a process.
    pub fn find() -> EmulatorProcesses {
        let port = endpoint_port(&crate::util::endpoint());
        let roots = listening_pids(port);
        if !roots.is_empty() {
            return EmulatorProcesses {
                roots,
                how: format!("listening on port {port}"),
            };
        }
        let state_dir = std::env::var("S3I_STATE_DIR").unwrap_or_else(|_| {
            format!(
                "{}/.cache/s3-ingest",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        let pid_file = PathBuf::from(state_dir).join("localstack.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .filter(|pid| Path::new(&format!("/proc/{pid}/stat")).exists());
        match pid {
            Some(pid) => EmulatorProcesses {
                roots: vec![pid],
                how: format!("from {}", pid_file.display()),
            },
            None => panic!(
                "cannot find the emulator's process to measure its CPU: no process this user can see listens on port {port} (/proc/net/tcp{{,6}}, /proc/*/fd) and {} names no live process",
                pid_file.display()
            ),
        }
    }

    /// The roots and every process descended from them, now.
    fn pids(&self) -> Vec<u32> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for (pid, _) in proc_pids() {
            if let Some(ppid) = stat_fields(&PathBuf::from(format!("/proc/{pid}/stat")))
                .and_then(|fields| fields.get(1)?.parse::<u32>().ok())
            {
                children.entry(ppid).or_default().push(pid);
            }
        }
        let mut pids = self.roots.clone();
        let mut at = 0;
        while at < pids.len() {
            for &child in children.get(&pids[at]).map_or(&[][..], Vec::as_slice) {
                if !pids.contains(&child) {
                    pids.push(child);
                }
            }
            at += 1;
        }
        pids
    }

    /// utime + stime of the processes (every thread, live or ended) and of
    /// their ended children that were waited for (cutime + cstime).
    pub fn cpu_seconds(&self) -> f64 {
        self.pids()
            .into_iter()
            .filter_map(|pid| stat_fields(&PathBuf::from(format!("/proc/{pid}/stat"))))
            .map(|fields| {
                // Fields 14-17: utime, stime, cutime, cstime.
                fields[11..15]
                    .iter()
                    .map(|ticks| ticks.parse::<f64>().unwrap_or(0.0))
                    .sum::<f64>()
                    / ticks_per_second()
            })
            .sum()
    }

    /// For the table: which processes, and how they were found.
    pub fn describe(&self) -> String {
        let roots: Vec<String> = self
            .roots
            .iter()
            .map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                // The program's file name and its arguments.
                let mut words: Vec<String> = String::from_utf8_lossy(&cmdline)
                    .split('\0')
                    .filter(|word| !word.is_empty())
                    .map(str::to_owned)
                    .collect();
                if let Some(program) = words.first_mut() {
                    *program = program.rsplit('/').next().unwrap_or_default().to_owned();
                }
                let mut cmdline = words.join(" ");
                if cmdline.chars().count() > 80 {
                    cmdline = cmdline.chars().take(77).collect::<String>() + "...";
                }
                format!("pid {pid} `{cmdline}`")
            })
            .collect();
        let descendants = self.pids().len() - self.roots.len();
        format!(
            "{} ({}) and {descendants} descendant process(es)",
            roots.join(", "),
            self.how
        )
    }
}

/// The port of an `http://host:port/...` endpoint (80 or 443 when none).
fn endpoint_port(endpoint: &str) -> u16 {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("http", endpoint));
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.rsplit_once(':') {
        Some((_, port)) if !port.ends_with(']') => port
            .parse()
            .unwrap_or_else(|_| panic!("endpoint {endpoint}: port `{port}`")),
        _ if scheme == "https" => 443,
        _ => 80,
    }
}

/// Every process's pid and its `/proc` directory.
fn proc_pids() -> Vec<(u32, PathBuf)> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((pid, entry.path()))
        })
        .collect()
}

/// The processes holding a socket that listens on TCP `port` (IPv4 or
/// IPv6, any address).
fn listening_pids(port: u16) -> Vec<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st ... uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(local_port) = fields
                .get(1)
                .and_then(|address| address.rsplit_once(':'))
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
            else {
                continue;
            };
            // State 0A is LISTEN.
            if local_port == port && fields.get(3) == Some(&"0A") {
                inodes.extend(fields.get(9).map(|inode| format!("socket:[{inode}]")));
            }
        }
    }
    if inodes.is_empty() {
        return Vec::new();
    }
    let own = std::process::id();
    proc_pids()
        .into_iter()
        .filter(|(pid, _)| *pid != own)
        .filter(|(_, dir)| {
            std::fs::read_dir(dir.join("fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|target| {
                        inodes
                            .iter()
                            .any(|inode| target.as_os_str() == inode.as_str())
                    })
                })
            })
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// A log line the bench reads (kept under its message): when, a
/// commit's `elapsed_ms`, and the whole line for the lag run's fields.
#[derive(Clone)]
struct LogLine {
    timestamp: DateTime<Utc>,
    elapsed_ms: f64,
    json: std::sync::Arc<serde_json::Value>,
}

/// The worker binary, logging JSON to a file the bench tails.
struct WorkerProcess {
    child: Child,
    log: PathBuf,
    /// The log is read incrementally: re-reading it whole on every poll
    /// costs the bench O(lines²) CPU, taken from the two cores the worker
    /// and the emulator are being measured on.
    read_to: u64,
    unfinished_line: Vec<u8>,
    /// The lines read so far, by message, so a poll costs only the new ones.
    lines: HashMap<String, Vec<LogLine>>,
}

impl WorkerProcess {
    /// Starts `binary` (under `prefix`, a command such as a profiler, when
    /// not empty) with `config`, logging JSON to `log` at `RUST_LOG=s3_ingest=info`.
    fn spawn(binary: &Path, prefix: &[String], config: &Config, log: &Path) -> WorkerProcess {
        WorkerProcess::spawn_logging(binary, prefix, config, log, "s3_ingest=info")
    }

    /// [`WorkerProcess::spawn`] with another `RUST_LOG` filter.
    fn spawn_logging(
        binary: &Path,
        prefix: &[String],
        config: &Config,
        log: &Path,
        filter: &str,
    ) -> WorkerProcess {
        let config_path = log.with_extension("toml");
        std::fs::write(
            &config_path,
            toml::to_string(config).expect("config renders"),
        )
        .unwrap();
        let log_file = std::fs::File::create(log).unwrap();
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        for (name, _) in std::env::vars() {
            if name.starts_with("S3_INGEST") {
                command.env_remove(name);
            }
        }
        let child = command
            .arg("--config")
            .arg(&config_path)
            .arg("--log-format")
            .arg("json")
            .arg("run")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|err| panic!("start {:?}: {err}", command.get_program()));
        WorkerProcess {
            child,
            log: log.to_owned(),
            read_to: 0,
            unfinished_line: Vec::new(),
            lines: HashMap::new(),
        }
    }

    /// Polls the log until it holds `count` lines with `message`; panics
    /// with the log's tail at the deadline (or if the worker exits).
    fn wait_for_lines(&mut self, message: &str, count: usize, timeout: Duration) -> Vec<LogLine> {
        let deadline = Instant::now() + timeout;
        loop {
            self.read_appended_lines();
            let seen = self.lines.get(message).map_or(0, Vec::len);
            if seen >= count {
                return self.lines[message].clone();
            }
            let exited = self.child.try_wait().expect("worker status");
            if exited.is_some() || Instant::now() >= deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                panic!(
                    "waited for {count} `{message}` log line(s), saw {seen} (worker {}); last log lines, newest first:\n{}",
                    exited.map_or("running".into(), |status| status.to_string()),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Every line with `message` logged so far.
    fn lines(&mut self, message: &str) -> Vec<LogLine> {
        self.read_appended_lines();
        self.lines.get(message).cloned().unwrap_or_default()
    }

    /// Reads the lines the worker has appended since the last call.
    fn read_appended_lines(&mut self) {
        let mut file = std::fs::File::open(&self.log).expect("worker log");
        file.seek(SeekFrom::Start(self.read_to))
            .expect("seek in log");
        let mut appended = Vec::new();
        file.read_to_end(&mut appended).expect("read worker log");
        self.read_to += appended.len() as u64;
        self.unfinished_line.extend(appended);
        let Some(last_newline) = self.unfinished_line.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.unfinished_line.drain(..=last_newline).collect();
        for line in complete.split(|b| *b == b'\n') {
            let Ok(json) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            let message = json["message"].as_str().unwrap_or_default().to_owned();
            self.lines.entry(message).or_default().push(LogLine {
                timestamp: json["timestamp"]
                    .as_str()
                    .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                    .expect("JSON log lines carry an RFC 3339 timestamp")
                    .to_utc(),
                elapsed_ms: json["elapsed_ms"].as_f64().unwrap_or(0.0),
                json: std::sync::Arc::new(json),
            });
        }
    }

    /// User and system CPU seconds so far.
    fn cpu_seconds(&self) -> (f64, f64) {
        stat_user_system_seconds(&PathBuf::from(format!("/proc/{}/stat", self.child.id())))
    }

    /// Each thread's utime + stime by thread id: (name, seconds).
    fn thread_cpu_seconds(&self) -> HashMap<u64, (String, f64)> {
        let tasks = format!("/proc/{}/task", self.child.id());
        let Ok(entries) = std::fs::read_dir(&tasks) else {
            return HashMap::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let tid: u64 = entry.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                let name = stat[stat.find('(')? + 1..stat.rfind(')')?].to_owned();
                let (user, system) = stat_user_system_seconds(&entry.path().join("stat"));
                Some((tid, (name, user + system)))
            })
            .collect()
    }

    /// `VmHWM`: the process's peak resident set, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    /// SIGTERM (graceful) and wait; the queue is empty by now.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // A panicking bench must not leave a worker behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Report {
    /// The steady-rate lag run's tables.
    fn lag_table(&self, line: &mut impl FnMut(String)) {
        let cores = |cores: Option<f64>| cores.map_or("n/a".to_owned(), |c| format!("{c:.2}"));
        let pair = |values: &[f64]| {
            let (p50, p99) = p50_p99(values);
            format!("{p50:.0}/{p99:.0}")
        };
        line(String::new());
        line(format!(
            "steady-rate lag: {} CSV objects PUT at a fixed rate for {} s each; ms from each PUT's return, p50/p99; CPU in cores (machine: busy share of all its cores)",
            data::format_size(LAG_OBJECT_BYTES),
            self.lag_seconds
        ));
        line(format!(
            "emulator alone, no worker ({LAG_RECEIVERS} plain ReceiveMessage loops in parallel): PUT → first received, PUT → on the queue (SentTimestamp)"
        ));
        line(format!(
            "{:>6} {:>7} {:>7} {:>11} {:>11} {:>11} {:>10} {:>8} {:>8}",
            "rate",
            "objects",
            "put/s",
            "notify p50",
            "notify p99",
            "to SQS",
            "msgs/recv",
            "LS CPU",
            "machine"
        ));
        for row in &self.lag {
            let emulator = &row.emulator;
            let (p50, p99) = p50_p99(&emulator.delay_ms);
            line(format!(
                "{:>6.0} {:>7} {:>7.1} {:>11.1} {:>11.1} {:>11} {:>10.2} {:>8} {:>7.0}%",
                row.rate,
                emulator.objects,
                emulator.put_rate,
                p50,
                p99,
                pair(&emulator.to_queue_ms),
                mean(&emulator.messages_per_receive),
                cores(emulator.cpu.localstack_cores),
                emulator.cpu.machine_busy * 100.0
            ));
        }
        line(format!(
            "worker (concurrency {LAG_CONCURRENCY}, schema declared): PUT → commit, split into PUT → on the queue (emulator), → received (receive loop), → ingest start (slot wait), → commit (elapsed_ms)"
        ));
        line(format!(
            "{:>6} {:>7} {:>7} {:>11} {:>11} {:>13} {:>11} {:>11} {:>11} {:>11} {:>8}",
            "rate",
            "objects",
            "put/s",
            "commit p50",
            "commit p99",
            "first¼/last¼",
            "to SQS",
            "SQS wait",
            "slot wait",
            "ingest",
            "lag_ms"
        ));
        for row in &self.lag {
            let worker = &row.worker;
            let (p50, p99) = p50_p99(&worker.put_to_commit_ms);
            let (first, last) = worker.quarters_p50_ms();
            line(format!(
                "{:>6.0} {:>7} {:>7.1} {:>11.1} {:>11.1} {:>13} {:>11} {:>11} {:>11} {:>11} {:>8.0}",
                row.rate,
                worker.objects,
                worker.put_rate,
                p50,
                p99,
                format!("{first:.0}/{last:.0}"),
                pair(&worker.to_queue_ms),
                pair(&worker.queue_wait_ms),
                pair(&worker.slot_wait_ms),
                pair(&worker.ingest_ms),
                p50_p99(&worker.lag_ms).0
            ));
        }
        line("the worker's requests (first PUT → last commit): receives/s, messages per receive (of those with any), empty receives, receive request ms, receive loop gap ms (answer → next request), entries per DeleteMessageBatch; CPU".into());
        line(format!(
            "{:>6} {:>10} {:>10} {:>6} {:>11} {:>9} {:>12} {:>8} {:>8} {:>8}",
            "rate",
            "receives/s",
            "msgs/recv",
            "empty",
            "request",
            "loop gap",
            "del/batch",
            "LS CPU",
            "worker",
            "machine"
        ));
        for row in &self.lag {
            let worker = &row.worker;
            line(format!(
                "{:>6.0} {:>10.1} {:>10.2} {:>6} {:>11} {:>9} {:>12.2} {:>8} {:>8} {:>7.0}%",
                row.rate,
                worker.receives_per_second(),
                mean(&worker.messages_per_receive),
                worker.empty_receives,
                pair(&worker.request_ms),
                pair(&worker.loop_gap_ms),
                mean(&worker.deletes_per_batch),
                cores(worker.cpu.localstack_cores),
                cores(worker.cpu.worker_cores),
                worker.cpu.machine_busy * 100.0
            ));
        }
        line("lag_ms (p50): the worker's own figure, commit − the S3 event's eventTime, which the emulator sets while it handles the PUT".into());
    }

    /// The tables `make bench` prints (and BENCHMARKS.md quotes).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        // Empty `BENCH_SIZES`: no throughput table.
        if !self.sizes.is_empty() {
            line(format!(
                "end to end on LocalStack: worker process, concurrency {}, CSV into parquet_dir (MB = 10^6 bytes):",
                self.concurrency
            ));
            line(format!(
                "{:>7} {:>6} {:>10} {:>9} {:>11} {:>5} {:>9} {:>10} {:>9} {:>10} {:>9} {:>9} {:>6}",
                "size",
                "files",
                "files/s",
                "MB/s",
                "CPU s/GiB",
                "sys",
                "peak RSS",
                "emu files/s",
                "emu MB/s",
                "÷emu files",
                "CPU÷bare",
                "CPU÷file",
                "slots"
            ));
            for row in &self.sizes {
                let worker = &row.worker;
                line(format!(
                    "{:>7} {:>6} {:>10.2} {:>9.1} {:>11.2} {:>4.0}% {:>6} MiB {:>10.2} {:>9.1} {:>10.2} {:>9.2} {:>9.2} {:>5.0}%",
                    data::format_size(row.size),
                    row.files,
                    worker.files_per_second(),
                    worker.mb_per_second(),
                    worker.cpu_seconds_per_gib(),
                    worker.system_share() * 100.0,
                    worker.peak_rss_kib / 1024,
                    row.emulator_files_per_s,
                    row.emulator_mb_per_s,
                    worker.files_per_second() / row.emulator_files_per_s,
                    worker.cpu_seconds_per_gib() / row.bare_cpu_seconds_per_gib,
                    worker.cpu_seconds_per_gib() / row.bare_per_file_cpu_seconds_per_gib,
                    worker.slot_utilisation(self.concurrency) * 100.0,
                ));
            }
            line(format!(
                "bare arrow-csv decode + Parquet encode (zstd, in process, median of 5, measured before each row), CPU s/GiB: {}",
                self.sizes
                    .iter()
                    .map(|row| format!(
                        "{} {:.2} (one file of {}) / {:.2} (a file per object)",
                        data::format_size(row.size),
                        row.bare_cpu_seconds_per_gib,
                        data::format_size(self.bare_sample_bytes),
                        row.bare_per_file_cpu_seconds_per_gib
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
            line("CPU÷bare: against the one-file floor".into());
            line("CPU÷file: against bare decode + encode of the same objects, one Parquet file each, as the sink writes them".into());
            line("slots: sum of per-object ingest time ÷ (wall × concurrency); sys: the kernel's share of the worker's CPU".into());
        }
        if !self.scaling.is_empty() {
            line(String::new());
            line("scaling (objects/s by worker concurrency):".into());
            line(format!(
                "{:>11} {:>6} {:>10} {:>9} {:>11} {:>6}",
                "concurrency", "files", "files/s", "MB/s", "CPU s/GiB", "slots"
            ));
        }
        for (level, run) in &self.scaling {
            line(format!(
                "{:>11} {:>6} {:>10.1} {:>9.1} {:>11.2} {:>5.0}%",
                level,
                run.files,
                run.files_per_second(),
                run.mb_per_second(),
                run.cpu_seconds_per_gib(),
                run.slot_utilisation(*level) * 100.0
            ));
        }
        if self.latency_samples > 0 {
            line(String::new());
            line(format!(
                "latency, 10KiB files one at a time ({} samples): worker elapsed_ms (ingest start → sink commit) p50 {:.1} ms, p99 {:.1} ms; upload → commit seen p50 {:.1} ms",
                self.latency_samples,
                self.latency_p50_ms,
                self.latency_p99_ms,
                self.put_to_commit_p50_ms
            ));
        }
        if !self.instructions.is_empty() {
            line(String::new());
            line("instructions (callgrind Ir, millions per MiB of CSV): the worker process, start to stop, ÷ bare decode + encode of the same objects (a Parquet file each)".into());
            line(format!(
                "{:>7} {:>6} {:>9} {:>9} {:>9} {:>13} {:>13}",
                "size", "files", "inferred", "declared", "bare", "inferred÷bare", "declared÷bare"
            ));
            for row in &self.instructions {
                line(format!(
                    "{:>7} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>13.2} {:>13.2}",
                    data::format_size(row.size),
                    row.files,
                    row.per_mib(row.worker_inferred_schema_instructions) / 1e6,
                    row.per_mib(row.worker_declared_schema_instructions) / 1e6,
                    row.per_mib(row.bare_instructions) / 1e6,
                    row.inferred_schema_ratio(),
                    row.declared_schema_ratio()
                ));
            }
            line("inferred: the route has no schema, so the worker infers one per object (as above); declared: the route lists the columns, as the bare floor knows them".into());
        }
        if !self.codecs.is_empty() {
            line(String::new());
            line(format!(
                "Parquet codecs: one {} CSV object into parquet_dir (route schema declared), CPU s per GiB of CSV, output MiB per GiB of CSV:",
                data::format_size(self.codec_size)
            ));
            line(format!(
                "{:<8} {:<16} {:>17} {:>24} {:>12} {:>11} {:>14} {:>12} {:>7}",
                "codec",
                "settings",
                "bare-encode s/GiB",
                "bare decode+encode s/GiB",
                "worker s/GiB",
                "worker÷bare",
                "worker MiB/GiB",
                "bare MiB/GiB",
                "out÷in"
            ));
            for row in &self.codecs {
                line(format!(
                    "{:<8} {:<16} {:>17.2} {:>24.2} {:>12.2} {:>11.2} {:>14.1} {:>12.1} {:>7.3}",
                    row.codec,
                    row.variant,
                    row.bare_encode_cpu_seconds_per_gib(),
                    row.bare_decode_encode_cpu_seconds_per_gib(),
                    row.worker.cpu_seconds_per_gib(),
                    row.worker_over_bare(),
                    row.output_mib_per_gib(row.worker_output_bytes),
                    row.output_mib_per_gib(row.bare_output_bytes),
                    row.output_ratio()
                ));
            }
            line("bare: in process with the sink's writer properties for the row (ParquetWriterSettings::apply, 128 Ki-row row groups), thread CPU, median of 3; bare-encode: Parquet encode of the already decoded batches; bare decode+encode: arrow-csv decode + encode".into());
            line("worker: the s3-ingest binary, its CPU (utime+stime) from \"worker started\" to the commit; worker÷bare: worker ÷ bare decode+encode; MiB/GiB: the worker's Parquet file and the bare encoder's output per GiB of CSV; out÷in: the worker's file ÷ the CSV".into());
            line("defaults: dictionary auto (on for the 2 string columns of 6), statistics page; dictionary=on (every column), dictionary=off and statistics=chunk change only that setting".into());
        }
        if !self.lone.is_empty() {
            line(String::new());
            line(format!(
                "one large object on all cores: one {} CSV object (or the same rows as Parquet) alone into parquet_dir (route schema declared), nproc {}, runs alternated (MB = 10^6 bytes of the object):",
                data::format_size(self.lone_size),
                self.nproc
            ));
            line(format!(
                "{:>8} {:>11} {:>8} {:>8} {:>12} {:>10} {:>9} {:>16} {:>16} {:>26}",
                "source",
                "cpu_threads",
                "wall s",
                "MB/s",
                "worker CPU s",
                "cores used",
                "peak RSS",
                "LocalStack CPU s",
                "LocalStack cores",
                "worker÷(nproc−LocalStack)"
            ));
            for lone in &self.lone {
                let run = &lone.run;
                line(format!(
                    "{:>8} {:>11} {:>8.2} {:>8.1} {:>12.2} {:>10.2} {:>5} MiB {:>16.2} {:>16.2} {:>26}",
                    lone.source.name(),
                    lone.cpu_threads
                        .map_or("unset".into(), |threads| threads.to_string()),
                    run.wall_seconds,
                    run.mb_per_second(),
                    run.cpu_seconds,
                    run.cores_used(),
                    run.peak_rss_kib / 1024,
                    lone.emulator_cpu_seconds(),
                    lone.emulator_cores(),
                    lone.share_of_free_cores(self.nproc)
                        .map_or("- (no core left)".into(), |share| format!("{share:.2}"))
                ));
                let busiest: Vec<String> = run
                    .busiest_threads
                    .iter()
                    .map(|(name, seconds)| format!("{name} {seconds:.2}"))
                    .collect();
                line(format!(
                    "{:>20} busiest threads, CPU s: {}",
                    "",
                    busiest.join(", ")
                ));
            }
            for source in [Source::Csv, Source::Parquet] {
                let median_mb_per_s = |threads: Option<usize>| {
                    median(
                        self.lone
                            .iter()
                            .filter(|lone| {
                                lone.source == source
                                    && lone.cpu_threads.map(NonZeroUsize::get) == threads
                            })
                            .map(|lone| lone.run.mb_per_second())
                            .collect(),
                    )
                };
                if let (Some(one), Some(all)) = (median_mb_per_s(Some(1)), median_mb_per_s(None)) {
                    line(format!(
                        "{}: MB/s, cpu_threads unset ÷ cpu_threads 1 (medians): {:.2}",
                        source.name(),
                        all / one
                    ));
                }
            }
            line("wall: \"worker started\" → \"object committed\" (the worker's log); cores used: worker CPU ÷ wall; peak RSS: VmHWM".into());
            line(format!(
                "LocalStack CPU: utime+stime over the same span of {}; worker÷(nproc−LocalStack): cores used ÷ the cores LocalStack left (target ≥ 0.9)",
                self.emulator_processes
            ));
        }
        if !self.small_files.is_empty() {
            self.small_files_table(&mut line);
        }
        if !self.lag.is_empty() {
            self.lag_table(&mut line);
        }
        out
    }

    /// The small-file rows: grouping off and on, same object stream.
    fn small_files_table(&self, line: &mut impl FnMut(String)) {
        let first = &self.small_files[0];
        line(String::new());
        line(format!(
            "small files: {} CSV objects of {} queued, then one worker process (concurrency {}) into parquet_dir",
            first.run.files,
            data::format_size(self.small_size),
            self.concurrency
        ));
        line(format!(
            "{:>10} {:>10} {:>12} {:>8} {:>12} {:>10} {:>11} {:>10}",
            "grouping",
            "objects/s",
            "CPU ms/obj",
            "cores",
            "output files",
            "MiB/file",
            "emu GETs/s",
            "÷emu GETs"
        ));
        for row in &self.small_files {
            line(format!(
                "{:>10} {:>10.1} {:>12.2} {:>8.2} {:>12} {:>10.2} {:>11.1} {:>10.2}",
                row.group_age_secs
                    .map_or("off".to_owned(), |age| format!("{age} s")),
                row.run.files_per_second(),
                row.cpu_ms_per_object(),
                row.run.cores_used(),
                row.output_files,
                row.output_bytes as f64 / MIB / row.output_files.max(1) as f64,
                row.emulator_files_per_s,
                row.run.files_per_second() / row.emulator_files_per_s
            ));
        }
        line("objects/s: \"worker started\" → last \"object committed\" (a grouped object logs it after its group's commit, before its message is deleted); emu GETs/s: plain GetObject of the same objects, 8 in flight".into());
    }
}

/// The `count` threads that used the most CPU between two snapshots.
fn busiest_threads(
    before: &HashMap<u64, (String, f64)>,
    after: &HashMap<u64, (String, f64)>,
    count: usize,
) -> Vec<(String, f64)> {
    let mut used: Vec<(String, f64)> = after
        .iter()
        .map(|(tid, (name, seconds))| {
            let earlier = before.get(tid).map_or(0.0, |(_, seconds)| *seconds);
            (name.clone(), seconds - earlier)
        })
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used.truncate(count);
    used
}

/// The median of `values`; `None` when there are none.
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    })
}
