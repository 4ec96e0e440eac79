//! Configuration: a TOML file, overridden key by key from the environment,
//! deserialized into typed structs and validated in one place.
//!
//! Environment overrides: `S3_INGEST__<SECTION>__<KEY>` sets `section.key`.
//! Routes and sinks are addressed by name (`S3_INGEST__ROUTES__ORDERS__KEY_GLOB`,
//! `S3_INGEST__SINKS__LAKE__PATH`), a route name written lowercase or
//! uppercase with `_` for `-`; `S3_INGEST__ROUTE_ORDER=orders,rest` gives
//! the routes' match order. A value is read as its field's type: a number,
//! `true`/`false`, a list (`a,b` or `["a", "b"]`), or the text as it is for
//! a string (an account id `012345678901` stays that string). The layering
//! is in `config/layers.rs`.

use std::collections::BTreeMap;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::schema::ColumnSpec;

mod layers;
mod source;

pub use source::{CONFIG_TOML_VAR, ConfigSource};

/// The prefix of every environment variable that overrides a config key.
pub const ENV_PREFIX: &str = "S3_INGEST__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    /// The config's location is malformed or cannot be read (S3, SSM).
    #[error("cannot read {source_name}: {message}")]
    Source {
        source_name: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// `context` names the route and the variable behind the key, where
    /// there are: ` (route `orders`, set by S3_INGEST__ROUTES__ORDERS__SINK)`.
    #[error("config key `{key}`{context}: {message}")]
    Invalid {
        key: String,
        context: String,
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        context: String::new(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub aws: AwsConfig,
    pub queue: QueueConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub status: StatusConfig,
    /// Finding objects whose notification never arrived; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<ReconcileConfig>,
    pub routes: Vec<RouteConfig>,
    pub sinks: BTreeMap<String, SinkConfig>,
}

/// Reconciliation (`reconcile/`): list the prefixes a page at a time and
/// enqueue the objects no sink holds, older than the grace period, that
/// S3 never announced (or the worker never saw).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// `s3://BUCKET/KEY` of the JSON object holding the listing position,
    /// the watermark and the lease (one task at a time across the fleet).
    pub state: String,
    /// `s3://BUCKET/PREFIX` locations to list.
    pub prefixes: Vec<String>,
    /// Seconds between ticks; each tick lists at most one page per prefix.
    #[serde(default = "default_reconcile_interval_secs")]
    pub interval_secs: u64,
    /// Objects modified more recently than this are left to their
    /// notification, which may still be on its way.
    #[serde(default = "default_reconcile_grace_secs")]
    pub grace_secs: u64,
    /// Keys per listing page (S3 returns at most 1000).
    #[serde(default = "default_reconcile_page_size")]
    pub page_size: u32,
    /// Only objects modified at or after this time (RFC 3339); unset: the
    /// time reconciliation first ran against `state` (older objects are a
    /// job for `s3-ingest backfill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

fn default_reconcile_interval_secs() -> u64 {
    60
}

fn default_reconcile_grace_secs() -> u64 {
    900
}

fn default_reconcile_page_size() -> u32 {
    1000
}

impl ReconcileConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let (bucket, key) = parse_s3_location(&self.state)
            .map_err(|message| invalid("reconcile.state", message))?;
        if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
            return Err(invalid(
                "reconcile.state",
                format!("`{}` must name an object: s3://BUCKET/KEY", self.state),
            ));
        }
        if self.prefixes.is_empty() {
            return Err(invalid(
                "reconcile.prefixes",
                "at least one s3://BUCKET/PREFIX is needed",
            ));
        }
        for (index, prefix) in self.prefixes.iter().enumerate() {
            let (bucket, _) = parse_s3_location(prefix)
                .map_err(|message| invalid(format!("reconcile.prefixes[{index}]"), message))?;
            if bucket.is_empty() {
                return Err(invalid(
                    format!("reconcile.prefixes[{index}]"),
                    format!("`{prefix}` names no bucket"),
                ));
            }
        }
        if !(1..=86_400).contains(&self.interval_secs) {
            return Err(invalid(
                "reconcile.interval_secs",
                format!("{} is out of range 1..=86400", self.interval_secs),
            ));
        }
        if !(1..=1000).contains(&self.page_size) {
            return Err(invalid(
                "reconcile.page_size",
                format!("{} is out of range 1..=1000", self.page_size),
            ));
        }
        Ok(())
    }

    /// The prefixes as (bucket, prefix).
    pub fn locations(&self) -> Vec<(String, String)> {
        self.prefixes
            .iter()
            .filter_map(|p| parse_s3_location(p).ok())
            .collect()
    }

    /// The state object as (bucket, key).
    pub fn state_location(&self) -> (String, String) {
        parse_s3_location(&self.state).unwrap_or_default()
    }
}

/// Splits `s3://bucket/rest` (`rest` may be empty).
pub fn parse_s3_location(uri: &str) -> Result<(String, String), String> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| format!("`{uri}` is not an s3://BUCKET/... location"))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    Ok((bucket.to_owned(), key.to_owned()))
}

/// The HTTP endpoints for operators: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// `host:port` to serve on; an empty string turns the endpoints off.
    #[serde(default = "default_status_listen_addr")]
    pub listen_addr: String,
    /// CloudWatch namespace for the key metrics as embedded metric format
    /// lines on stderr (`emf.rs`); unset: none are written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emf_namespace: Option<String>,
    /// The `Service` dimension of every EMF metric.
    #[serde(default = "default_emf_service")]
    pub emf_service: String,
    /// Seconds between EMF lines (CloudWatch keeps one-minute resolution).
    #[serde(default = "default_emf_interval_secs")]
    pub emf_interval_secs: u64,
}

fn default_emf_service() -> String {
    "s3-ingest".into()
}

fn default_emf_interval_secs() -> u64 {
    60
}

fn default_status_listen_addr() -> String {
    "0.0.0.0:9090".into()
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            listen_addr: default_status_listen_addr(),
            emf_namespace: None,
            emf_service: default_emf_service(),
            emf_interval_secs: default_emf_interval_secs(),
        }
    }
}

impl StatusConfig {
    pub fn enabled(&self) -> bool {
        !self.listen_addr.trim().is_empty()
    }
}

/// `[status] listen_addr` from a config file, reading nothing else: the
/// container health check must not depend on the rest of the config.
pub fn status_listen_addr(path: &Path) -> Result<String, ConfigError> {
    #[derive(Deserialize)]
    struct StatusOnly {
        #[serde(default)]
        status: StatusAddr,
    }
    #[derive(Deserialize, Default)]
    struct StatusAddr {
        listen_addr: Option<String>,
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file: StatusOnly = toml::from_str(&text).map_err(|err| ConfigError::Toml {
        path: path.to_owned(),
        message: err.to_string(),
    })?;
    Ok(file
        .status
        .listen_addr
        .unwrap_or_else(default_status_listen_addr))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Falls back to the SDK's default chain (`AWS_REGION`, profile) when unset.
    pub region: Option<String>,
    /// Points S3 and SQS at an emulator such as LocalStack.
    pub endpoint_url: Option<String>,
    /// Path-style S3 addressing (`http://host/bucket/key`), needed by LocalStack.
    #[serde(default)]
    pub force_path_style: bool,
    /// When set, sent as `ExpectedBucketOwner` on every S3 call, so a bucket
    /// that changed hands is refused by S3 instead of read.
    pub expected_bucket_owner: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub url: String,
    /// Where poison objects and messages go; without it they are left to the
    /// queue's own redrive policy.
    pub dlq_url: Option<String>,
    #[serde(default = "default_wait_time_secs")]
    pub wait_time_secs: u64,
    #[serde(default = "default_max_messages")]
    pub max_messages: u64,
    #[serde(default = "default_visibility_timeout_secs")]
    pub visibility_timeout_secs: u64,
    /// A message received more often than this is poison, whatever the error.
    #[serde(default = "default_max_receive_count")]
    pub max_receive_count: u64,
}

fn default_wait_time_secs() -> u64 {
    20
}
fn default_max_messages() -> u64 {
    10
}
fn default_visibility_timeout_secs() -> u64 {
    300
}
fn default_max_receive_count() -> u64 {
    5
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Objects processed at the same time.
    #[serde(default = "default_concurrency")]
    pub concurrency: NonZeroUsize,
    /// On shutdown, how long in-flight objects may take to finish before
    /// their messages are released back to the queue. Below ECS's default
    /// 30 s stop timeout.
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// The longest one message is kept invisible by the heartbeat; a file
    /// still not done by then is given up and its message comes back (and
    /// after `max_receive_count` deliveries, goes to the DLQ).
    #[serde(default = "default_max_lease_secs")]
    pub max_lease_secs: u64,
    /// The most messages received ahead of free object slots. The worker
    /// holds only as many as its slots would start within about a second,
    /// judged from recent object times: many for small files, none for
    /// files that take minutes. 0 receives only for free slots.
    #[serde(default = "default_max_prefetch")]
    pub max_prefetch: usize,
    /// Threads that share the CPU work of objects (Parquet column
    /// encoding, ...), so one large object can use every core. Unset: the
    /// cores the task has (its cgroup's CPU quota on ECS). 1 keeps each
    /// object's encoding on one thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_threads: Option<NonZeroUsize>,
}

fn default_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(4).expect("non-zero")
}
fn default_shutdown_grace_secs() -> u64 {
    20
}
fn default_max_lease_secs() -> u64 {
    2 * 3600
}
fn default_max_prefetch() -> usize {
    20
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: default_concurrency(),
            shutdown_grace_secs: default_shutdown_grace_secs(),
            max_lease_secs: default_max_lease_secs(),
            max_prefetch: default_max_prefetch(),
            cpu_threads: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    Csv,
    Parquet,
    /// Decided per object from the key's extension (after `.gz` / `.zst`).
    Auto,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// Matches any bucket when unset.
    pub bucket: Option<String>,
    /// Glob over the whole key: `*` stays within one `/` segment, `**` crosses them.
    pub key_glob: String,
    #[serde(default = "default_format")]
    pub format: FileFormat,
    /// The sink this route lands in. Give `sinks` instead to fan out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    /// Several sinks: each object lands in all of them, and its message is
    /// deleted only after every one committed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<String>,
    #[serde(default)]
    pub csv: CsvOptions,
    /// Explicit column list; without it the schema is inferred from a
    /// bounded sample at the head of each file (CSV) or read from the footer
    /// (Parquet).
    pub schema: Option<Vec<ColumnSpec>>,
    /// Rows per Arrow record batch (fewer when rows are wide: see
    /// `limits.max_batch_bytes`).
    #[serde(default = "default_batch_rows")]
    pub batch_rows: NonZeroUsize,
    /// Bounds on what one file may cost: a file over any of them is
    /// dead-lettered with a reason that names the limit.
    #[serde(default)]
    pub limits: RouteLimits,
    /// Small objects collected into one output per group instead of one
    /// each (see [`GroupConfig`]); unset: every object is its own output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupConfig>,
    /// The vendor's data contract (`[routes.contract]`): how files must
    /// fit `schema`, checks on their values, what happens to bad rows.
    /// Unset: the schema, if any, is applied as the decoders always did
    /// (CSV by position, Parquet by name and type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<crate::contract::ContractConfig>,
}

impl RouteConfig {
    /// The sinks this route lands in, in the order they commit.
    pub fn sink_names(&self) -> Vec<String> {
        self.sink.iter().chain(&self.sinks).cloned().collect()
    }
}

fn default_format() -> FileFormat {
    FileFormat::Auto
}
fn default_batch_rows() -> NonZeroUsize {
    NonZeroUsize::new(8192).expect("non-zero")
}
fn default_max_row_group_bytes() -> NonZeroU64 {
    NonZeroU64::new(crate::decode::parquet::DEFAULT_MAX_ROW_GROUP_BYTES).expect("non-zero")
}

/// Small-file grouping for a route: the rows of many small objects (of the
/// same source bucket and schema) go into one output, committed together,
/// and their messages are deleted only after that commit. Each object is
/// still recorded one by one in the sink's ledger, so a redelivered object
/// is found as committed whatever group it landed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// A group is committed once its output reaches this many bytes
    /// (encoded, as the sink writes it).
    #[serde(default = "default_group_max_bytes")]
    pub max_bytes: NonZeroU64,
    /// ... or once its first object joined this many seconds ago. Each
    /// object's message stays leased (hidden) while it waits, so this must
    /// stay well inside `worker.max_lease_secs`.
    #[serde(default = "default_group_max_age_secs")]
    pub max_age_secs: u64,
    /// Objects stored larger than this are written one output each, as
    /// without grouping: a grouped object is held in memory whole until it
    /// has decoded without error, so a file failing halfway never puts
    /// rows into a group.
    #[serde(default = "default_group_max_object_bytes")]
    pub max_object_bytes: NonZeroU64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            max_bytes: default_group_max_bytes(),
            max_age_secs: default_group_max_age_secs(),
            max_object_bytes: default_group_max_object_bytes(),
        }
    }
}

fn default_group_max_bytes() -> NonZeroU64 {
    NonZeroU64::new(128 << 20).expect("non-zero")
}
fn default_group_max_age_secs() -> u64 {
    30
}
fn default_group_max_object_bytes() -> NonZeroU64 {
    NonZeroU64::new(8 << 20).expect("non-zero")
}

/// The most `group.max_age_secs` may be: SQS's longest message delay, so a
/// message handed back behind a group is never hidden for longer.
pub const MAX_GROUP_AGE_SECS: u64 = 900;

/// Per-route bounds on hostile or broken files. Memory per object is
/// bounded by these in bytes, whatever the file claims or holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimits {
    /// Most columns a CSV file may have (its header or first record).
    #[serde(default = "default_max_columns")]
    pub max_columns: NonZeroUsize,
    /// Longest CSV record, in bytes (a quoted field never closed, or a file
    /// without line ends, is caught at this size while streaming).
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: NonZeroUsize,
    /// Target size of one decoded batch: rows per batch are cut to what
    /// fits, estimated from the column count and the record width.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: NonZeroUsize,
    /// Most bytes a gzip / zstd object may decompress to.
    #[serde(default = "default_max_decompressed_bytes")]
    pub max_decompressed_bytes: u64,
    /// Most decompressed bytes per stored byte (objects decompressing to
    /// under 64 MiB are never stopped by the ratio).
    #[serde(default = "default_max_decompression_ratio")]
    pub max_decompression_ratio: u64,
    /// Parquet: the most compressed bytes of a row group read whole (one
    /// without an offset index that none can be made for), and the most a
    /// page may declare uncompressed. Larger is dead-lettered.
    #[serde(default = "default_max_row_group_bytes")]
    pub max_row_group_bytes: NonZeroU64,
}

fn default_max_columns() -> NonZeroUsize {
    NonZeroUsize::new(10_000).expect("non-zero")
}
fn default_max_record_bytes() -> NonZeroUsize {
    NonZeroUsize::new(16 << 20).expect("non-zero")
}
fn default_max_batch_bytes() -> NonZeroUsize {
    NonZeroUsize::new(16 << 20).expect("non-zero")
}
fn default_max_decompressed_bytes() -> u64 {
    64 << 30
}
fn default_max_decompression_ratio() -> u64 {
    250
}

impl Default for RouteLimits {
    fn default() -> Self {
        Self {
            max_columns: default_max_columns(),
            max_record_bytes: default_max_record_bytes(),
            max_batch_bytes: default_max_batch_bytes(),
            max_decompressed_bytes: default_max_decompressed_bytes(),
            max_decompression_ratio: default_max_decompression_ratio(),
            max_row_group_bytes: default_max_row_group_bytes(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// Field separator. Unset: a tab for `.tsv` keys (before any `.gz` /
    /// `.zst`), a comma for every other key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<char>,
    #[serde(default = "default_quote")]
    pub quote: char,
    pub escape: Option<char>,
    /// Lines starting with this character are skipped.
    pub comment: Option<char>,
    /// Whether the first line holds column names.
    #[serde(default = "default_true")]
    pub header: bool,
    /// Field values read as null. The empty field is always null.
    #[serde(default)]
    pub null_values: Vec<String>,
    /// Rows read to infer a schema when the route has none.
    #[serde(default = "default_infer_rows")]
    pub infer_rows: NonZeroUsize,
    /// Upper bound on the bytes buffered for schema inference.
    #[serde(default = "default_infer_max_bytes")]
    pub infer_max_bytes: NonZeroUsize,
}

fn default_quote() -> char {
    '"'
}
fn default_true() -> bool {
    true
}
fn default_infer_rows() -> NonZeroUsize {
    NonZeroUsize::new(1000).expect("non-zero")
}
fn default_infer_max_bytes() -> NonZeroUsize {
    NonZeroUsize::new(4 << 20).expect("non-zero")
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            delimiter: None,
            quote: default_quote(),
            escape: None,
            comment: None,
            header: true,
            null_values: Vec::new(),
            infer_rows: default_infer_rows(),
            infer_max_bytes: default_infer_max_bytes(),
        }
    }
}

/// A sink's table: `type` picks the variant, the other keys are its fields.
/// Deserialized by hand (below), serialized as serde's internally tagged
/// enum.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkConfig {
    /// Parquet files under `path`, one per source object version.
    ParquetDir {
        path: PathBuf,
        /// A row group is written out once its encoded size reaches this
        /// (or 128 Ki rows): bounds the writer's buffer for wide rows.
        #[serde(default = "default_parquet_dir_row_group_bytes")]
        row_group_bytes: usize,
        /// `compression`, `compression_level`, `dictionary`, `statistics`.
        #[serde(flatten)]
        writer: crate::sink::parquet_settings::ParquetWriterSettings,
    },
    /// Newline-delimited JSON rows on standard output, for debugging.
    Stdout {},
    /// Rows COPYed into a PostgreSQL table, exactly once per object version.
    Postgres(crate::sink::postgres::PostgresSinkConfig),
    /// Parquet objects under an S3 prefix, written by multipart upload.
    S3Parquet(crate::sink::s3_parquet::S3ParquetSinkConfig),
    /// Batches POSTed to an HTTP endpoint (ClickHouse, Tinybird, ...).
    Http(crate::sink::http::HttpSinkConfig),
    /// Rows appended to a Delta Lake table, exactly once per object version.
    Delta(crate::sink::delta::DeltaSinkConfig),
}

fn default_parquet_dir_row_group_bytes() -> usize {
    32 << 20
}

/// Not serde's internally tagged enum: that one buffers the table before
/// it knows the variant, and the buffer no longer passes on the type each
/// field asks for, which is how environment values are typed (`true` for
/// `create_table` would stay a string). The config loader hands `type` over
/// first, so the rest of the table is read straight into the variant; from
/// any other deserializer the table is buffered as TOML values.
impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(SinkVisitor)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum SinkType {
    ParquetDir,
    Stdout,
    Postgres,
    S3Parquet,
    Http,
    Delta,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParquetDirFields {
    path: PathBuf,
    #[serde(default = "default_parquet_dir_row_group_bytes")]
    row_group_bytes: usize,
    // ParquetWriterSettings' fields, spelled out: serde's flatten does not
    // work with deny_unknown_fields.
    #[serde(default)]
    compression: Option<crate::sink::parquet_settings::Codec>,
    #[serde(default)]
    compression_level: Option<i32>,
    #[serde(default)]
    dictionary: crate::sink::parquet_settings::Dictionary,
    #[serde(default)]
    statistics: crate::sink::parquet_settings::Statistics,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StdoutFields {}

impl SinkType {
    /// Reads the sink's other keys (`type` already taken) as this variant.
    fn read<'de, D: serde::Deserializer<'de>>(self, fields: D) -> Result<SinkConfig, D::Error> {
        Ok(match self {
            SinkType::ParquetDir => {
                let ParquetDirFields {
                    path,
                    row_group_bytes,
                    compression,
                    compression_level,
                    dictionary,
                    statistics,
                } = ParquetDirFields::deserialize(fields)?;
                SinkConfig::ParquetDir {
                    path,
                    row_group_bytes,
                    writer: crate::sink::parquet_settings::ParquetWriterSettings {
                        compression,
                        compression_level,
                        dictionary,
                        statistics,
                    },
                }
            }
            SinkType::Stdout => {
                StdoutFields::deserialize(fields)?;
                SinkConfig::Stdout {}
            }
            SinkType::Postgres => SinkConfig::Postgres(Deserialize::deserialize(fields)?),
            SinkType::S3Parquet => SinkConfig::S3Parquet(Deserialize::deserialize(fields)?),
            SinkType::Http => SinkConfig::Http(Deserialize::deserialize(fields)?),
            SinkType::Delta => SinkConfig::Delta(Deserialize::deserialize(fields)?),
        })
    }
}

struct SinkVisitor;

impl<'de> serde::de::Visitor<'de> for SinkVisitor {
    type Value = SinkConfig;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a sink table with a `type`")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SinkConfig, A::Error> {
        use serde::de::Error;
        let first: Option<String> = map.next_key()?;
        if first.as_deref() == Some("type") {
            let kind: SinkType = map.next_value()?;
            return kind.read(serde::de::value::MapAccessDeserializer::new(map));
        }
        let mut table = toml::Table::new();
        if let Some(key) = first {
            table.insert(key, map.next_value()?);
        }
        while let Some((key, value)) = map.next_entry::<String, toml::Value>()? {
            table.insert(key, value);
        }
        let kind = table
            .remove("type")
            .ok_or_else(|| A::Error::missing_field("type"))?;
        let kind = SinkType::deserialize(kind).map_err(A::Error::custom)?;
        kind.read(toml::Value::Table(table))
            .map_err(A::Error::custom)
    }
}

impl SinkConfig {
    /// The sink's `type`, as the config spells it.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkConfig::ParquetDir { .. } => "parquet_dir",
            SinkConfig::Stdout {} => "stdout",
            SinkConfig::Postgres(_) => "postgres",
            SinkConfig::S3Parquet(_) => "s3_parquet",
            SinkConfig::Http(_) => "http",
            SinkConfig::Delta(_) => "delta",
        }
    }

    /// Checks the sink's own settings; errors name the field (relative to
    /// `sinks.NAME.`).
    fn validate(&self) -> Result<(), (String, String)> {
        match self {
            SinkConfig::ParquetDir { path, .. } if path.as_os_str().is_empty() => {
                Err(("path".into(), "must not be empty".into()))
            }
            SinkConfig::ParquetDir {
                row_group_bytes, ..
            } if *row_group_bytes < 1024 => Err((
                "row_group_bytes".into(),
                format!("{row_group_bytes} is below the minimum of 1024"),
            )),
            SinkConfig::ParquetDir { writer, .. } => writer.validate(),
            SinkConfig::Stdout {} => Ok(()),
            SinkConfig::Postgres(config) => config.validate(),
            SinkConfig::S3Parquet(config) => config.validate(),
            SinkConfig::Http(config) => config.validate(),
            SinkConfig::Delta(config) => config.validate(),
        }
    }
}

impl Config {
    /// Reads `path` (if any), applies `S3_INGEST__*` overrides from `env`,
    /// and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let source = ConfigSource::File(path.to_owned());
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Config::from_source(Some((&source, text.as_str())), env)
            }
            None => Config::from_source(None, env),
        }
    }

    /// The config from `file` (its source and its TOML text, already
    /// read: see [`ConfigSource::read`]), if any, with the `S3_INGEST__*`
    /// overrides from `env` applied, validated.
    pub fn from_source(
        file: Option<(&ConfigSource, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let table = match file {
            Some((source, text)) => text.parse::<toml::Table>().map_err(|err| match source {
                ConfigSource::File(path) => ConfigError::Toml {
                    path: path.clone(),
                    message: err.to_string(),
                },
                other => ConfigError::Source {
                    source_name: other.to_string(),
                    message: format!("not valid TOML: {err}"),
                },
            })?,
            None => toml::Table::new(),
        };
        layers::load(file.map(|(source, _)| source), table, env)
    }

    /// Parses and validates a config given as TOML text (no environment).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let table = text
            .parse::<toml::Table>()
            .map_err(|err| ConfigError::Toml {
                path: PathBuf::from("<string>"),
                message: err.to_string(),
            })?;
        layers::load(None, table, std::iter::empty())
    }

    /// Cross-field and range checks that serde cannot express.
    fn validate(&self) -> Result<(), ConfigError> {
        let queue = &self.queue;
        if queue.url.trim().is_empty() {
            return Err(invalid("queue.url", "must not be empty"));
        }
        if queue.wait_time_secs > 20 {
            return Err(invalid(
                "queue.wait_time_secs",
                format!("{} is out of range 0..=20", queue.wait_time_secs),
            ));
        }
        if !(1..=10).contains(&queue.max_messages) {
            return Err(invalid(
                "queue.max_messages",
                format!("{} is out of range 1..=10", queue.max_messages),
            ));
        }
        // SQS accepts 0..=43200; zero would hand every message to every poller.
        if !(1..=43_200).contains(&queue.visibility_timeout_secs) {
            return Err(invalid(
                "queue.visibility_timeout_secs",
                format!(
                    "{} is out of range 1..=43200",
                    queue.visibility_timeout_secs
                ),
            ));
        }
        if !(1..=1000).contains(&queue.max_receive_count) {
            return Err(invalid(
                "queue.max_receive_count",
                format!("{} is out of range 1..=1000", queue.max_receive_count),
            ));
        }
        if self
            .status
            .emf_namespace
            .as_ref()
            .is_some_and(|namespace| namespace.trim().is_empty())
        {
            return Err(invalid(
                "status.emf_namespace",
                "must not be empty (leave it out to write no EMF lines)",
            ));
        }
        if !(1..=3600).contains(&self.status.emf_interval_secs) {
            return Err(invalid(
                "status.emf_interval_secs",
                format!("{} is out of range 1..=3600", self.status.emf_interval_secs),
            ));
        }
        if self.worker.shutdown_grace_secs > 3600 {
            return Err(invalid(
                "worker.shutdown_grace_secs",
                format!(
                    "{} is out of range 0..=3600",
                    self.worker.shutdown_grace_secs
                ),
            ));
        }
        if self.worker.max_lease_secs < queue.visibility_timeout_secs {
            return Err(invalid(
                "worker.max_lease_secs",
                format!(
                    "{} must be at least queue.visibility_timeout_secs ({})",
                    self.worker.max_lease_secs, queue.visibility_timeout_secs
                ),
            ));
        }
        // SQS keeps a message invisible for at most 12 hours from its
        // receive, extensions included.
        if self.worker.max_lease_secs > 43_200 {
            return Err(invalid(
                "worker.max_lease_secs",
                format!(
                    "{} is above SQS's 12-hour visibility ceiling (43200)",
                    self.worker.max_lease_secs
                ),
            ));
        }
        if let Some(threads) = self.worker.cpu_threads
            && threads.get() > 256
        {
            return Err(invalid(
                "worker.cpu_threads",
                format!("{threads} is out of range 1..=256"),
            ));
        }
        if self.worker.max_prefetch > 1000 {
            return Err(invalid(
                "worker.max_prefetch",
                format!("{} is out of range 0..=1000", self.worker.max_prefetch),
            ));
        }
        if self.status.enabled()
            && self
                .status
                .listen_addr
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(invalid(
                "status.listen_addr",
                format!(
                    "`{}` is not host:port (e.g. 0.0.0.0:9090), or \"\" to turn off",
                    self.status.listen_addr
                ),
            ));
        }
        if let Some(reconcile) = &self.reconcile {
            reconcile.validate()?;
        }
        if self.routes.is_empty() {
            return Err(invalid("routes", "at least one [[routes]] entry is needed"));
        }
        for (name, sink) in &self.sinks {
            sink.validate()
                .map_err(|(field, message)| invalid(format!("sinks.{name}.{field}"), message))?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for (index, route) in self.routes.iter().enumerate() {
            let key = |field: &str| format!("routes[{index}].{field}");
            if route.name.trim().is_empty() {
                return Err(invalid(key("name"), "must not be empty"));
            }
            if !seen.insert(route.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("route name `{}` is used twice", route.name),
                ));
            }
            let field = if route.sink.is_some() {
                "sink"
            } else {
                "sinks"
            };
            match (&route.sink, route.sinks.is_empty()) {
                (Some(_), false) => {
                    return Err(invalid(
                        key("sinks"),
                        "give either `sink` or `sinks`, not both",
                    ));
                }
                (None, true) => {
                    return Err(invalid(
                        key("sink"),
                        "missing: name the sink this route lands in (or `sinks = [...]` for several)",
                    ));
                }
                _ => {}
            }
            let names = route.sink_names();
            for (position, name) in names.iter().enumerate() {
                if !self.sinks.contains_key(name) {
                    let known: Vec<&str> = self.sinks.keys().map(String::as_str).collect();
                    return Err(invalid(
                        key(field),
                        format!(
                            "sink `{name}` is not defined under [sinks] (defined: {})",
                            known.join(", ")
                        ),
                    ));
                }
                if names[..position].contains(name) {
                    return Err(invalid(
                        key(field),
                        format!("sink `{name}` is listed twice"),
                    ));
                }
            }
            globset::Glob::new(&route.key_glob)
                .map_err(|err| invalid(key("key_glob"), err.to_string()))?;
            let csv = &route.csv;
            for (field, value) in [
                ("delimiter", csv.delimiter),
                ("quote", Some(csv.quote)),
                ("escape", csv.escape),
                ("comment", csv.comment),
            ] {
                if let Some(c) = value
                    && !c.is_ascii()
                {
                    return Err(invalid(
                        key(&format!("csv.{field}")),
                        format!("`{c}` must be a single ASCII character"),
                    ));
                }
            }
            let limits = &route.limits;
            if limits.max_decompressed_bytes == 0 {
                return Err(invalid(
                    key("limits.max_decompressed_bytes"),
                    "must be at least 1",
                ));
            }
            if limits.max_decompression_ratio == 0 {
                return Err(invalid(
                    key("limits.max_decompression_ratio"),
                    "must be at least 1",
                ));
            }
            if let Some(columns) = &route.schema {
                if columns.is_empty() {
                    return Err(invalid(key("schema"), "must list at least one column"));
                }
                if columns.len() > limits.max_columns.get() {
                    return Err(invalid(
                        key("schema"),
                        format!(
                            "lists {} columns, more than limits.max_columns ({})",
                            columns.len(),
                            limits.max_columns
                        ),
                    ));
                }
                crate::schema::arrow_schema(columns)
                    .map_err(|message| invalid(key("schema"), message))?;
            }
            if let Some(group) = &route.group {
                self.validate_group(group, &names, &key)?;
            }
            if let Some(contract) = &route.contract {
                self.validate_contract(route, contract, &names, &key)?;
            }
        }
        Ok(())
    }

    /// A route's `contract`: it compiles against the route's schema (every
    /// checked column declared, every literal of its column's type), CSV
    /// files have a header to match columns by, and bad rows have
    /// somewhere to go.
    fn validate_contract(
        &self,
        route: &RouteConfig,
        contract: &crate::contract::ContractConfig,
        sinks: &[String],
        key: &dyn Fn(&str) -> String,
    ) -> Result<(), ConfigError> {
        use crate::contract::{BadRows, Contract};
        let name = &route.name;
        let field = |sub: &str| {
            if sub.is_empty() {
                key("contract")
            } else {
                key(&format!("contract.{sub}"))
            }
        };
        let declared = route
            .schema
            .as_deref()
            .map(crate::schema::arrow_schema)
            .transpose()
            .map_err(|message| invalid(key("schema"), message))?;
        Contract::compile(name, declared.as_ref(), contract)
            .map_err(|err| invalid(field(&err.field), err.message))?;
        if route.format != FileFormat::Parquet && !route.csv.header {
            return Err(invalid(
                key("csv.header"),
                format!(
                    "route `{name}`: a contract matches a CSV file's columns by its header; set csv.header = true (or format = \"parquet\")"
                ),
            ));
        }
        match (contract.bad_rows, &contract.quarantine_sink) {
            (BadRows::Quarantine, None) => Err(invalid(
                field("quarantine_sink"),
                format!(
                    "route `{name}`: bad_rows = \"quarantine\" needs the sink that quarantined rows land in"
                ),
            )),
            (BadRows::Reject, Some(_)) => Err(invalid(
                field("quarantine_sink"),
                format!("route `{name}`: only used with bad_rows = \"quarantine\""),
            )),
            (BadRows::Quarantine, Some(sink)) if !self.sinks.contains_key(sink) => Err(invalid(
                field("quarantine_sink"),
                format!("route `{name}`: sink `{sink}` is not defined under [sinks]"),
            )),
            (BadRows::Quarantine, Some(sink)) if sinks.contains(sink) => Err(invalid(
                field("quarantine_sink"),
                format!(
                    "route `{name}`: sink `{sink}` is one of the route's own sinks; quarantined rows need a sink of their own"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// A route's `group`: its age well inside the lease, and every sink of
    /// the route able to commit groups.
    fn validate_group(
        &self,
        group: &GroupConfig,
        sinks: &[String],
        key: &dyn Fn(&str) -> String,
    ) -> Result<(), ConfigError> {
        let lease_bound = self.worker.max_lease_secs / 4;
        if group.max_age_secs == 0 || group.max_age_secs > MAX_GROUP_AGE_SECS.min(lease_bound) {
            return Err(invalid(
                key("group.max_age_secs"),
                format!(
                    "{} is out of range 1..={} (at most {MAX_GROUP_AGE_SECS}, and at most a quarter of worker.max_lease_secs, {}: a grouped object's message stays leased while its group waits)",
                    group.max_age_secs,
                    MAX_GROUP_AGE_SECS.min(lease_bound),
                    self.worker.max_lease_secs
                ),
            ));
        }
        if group.max_object_bytes > group.max_bytes {
            return Err(invalid(
                key("group.max_object_bytes"),
                format!(
                    "{} is larger than group.max_bytes ({})",
                    group.max_object_bytes, group.max_bytes
                ),
            ));
        }
        for name in sinks {
            let sink = &self.sinks[name];
            if !matches!(
                sink,
                SinkConfig::ParquetDir { .. } | SinkConfig::Postgres(_) | SinkConfig::Delta(_)
            ) {
                return Err(invalid(
                    key("group"),
                    format!(
                        "sink `{name}` ({}) cannot commit groups; grouping is supported by parquet_dir, postgres and delta sinks",
                        sink.type_name()
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_check_reads_only_the_status_address_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        // Not a valid config (no queue, no routes): only `status` is read.
        let with_status = dir.path().join("with.toml");
        std::fs::write(
            &with_status,
            "[status]\nlisten_addr = \"127.0.0.1:9443\"\n[worker]\nconcurrency = \"many\"\n",
        )
        .unwrap();
        assert_eq!(status_listen_addr(&with_status).unwrap(), "127.0.0.1:9443");
        let without = dir.path().join("without.toml");
        std::fs::write(&without, "[queue]\nurl = \"x\"\n").unwrap();
        assert_eq!(status_listen_addr(&without).unwrap(), "0.0.0.0:9090");
        let missing = dir.path().join("missing.toml");
        let err = status_listen_addr(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.toml"), "{err}");
        let broken = dir.path().join("broken.toml");
        std::fs::write(&broken, "[status\n").unwrap();
        let err = status_listen_addr(&broken).unwrap_err().to_string();
        assert!(err.contains("not valid TOML"), "{err}");
    }

    const MINIMAL: &str = r#"
        [queue]
        url = "http://127.0.0.1:4566/queue/us-east-1/000000000000/events"

        [[routes]]
        name = "vendors"
        key_glob = "**"
        sink = "lake"

        [sinks.lake]
        type = "parquet_dir"
        path = "/tmp/lake"
    "#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_with(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        layers::load(None, text.parse().unwrap(), env(vars))
    }

    fn load_err(text: &str, vars: &[(&str, &str)]) -> String {
        load_with(text, vars).unwrap_err().to_string()
    }

    fn route_names(config: &Config) -> Vec<&str> {
        config.routes.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn a_reconcile_section_is_checked_and_takes_environment_overrides() {
        let section = r#"
            [reconcile]
            state = "s3://ops/s3-ingest/reconcile.json"
            prefixes = ["s3://vendor/in/", "s3://other"]
        "#;
        let config = Config::from_toml_str(&format!("{MINIMAL}{section}")).unwrap();
        let reconcile = config.reconcile.as_ref().unwrap();
        assert_eq!(reconcile.interval_secs, 60);
        assert_eq!(reconcile.grace_secs, 900);
        assert_eq!(
            reconcile.locations(),
            vec![
                ("vendor".to_owned(), "in/".to_owned()),
                ("other".to_owned(), String::new())
            ]
        );
        assert_eq!(
            reconcile.state_location(),
            ("ops".to_owned(), "s3-ingest/reconcile.json".to_owned())
        );
        let config = load_with(
            &format!("{MINIMAL}{section}"),
            &[("S3_INGEST__RECONCILE__INTERVAL_SECS", "300")],
        )
        .unwrap();
        assert_eq!(config.reconcile.unwrap().interval_secs, 300);
        // As the Terraform service module sets it: the section from the
        // environment alone, the prefixes as a TOML (JSON) array.
        let config = load_with(
            MINIMAL,
            &[
                ("S3_INGEST__RECONCILE__STATE", "s3://ops/state.json"),
                ("S3_INGEST__RECONCILE__PREFIXES", r#"["s3://vendor/in/"]"#),
                ("S3_INGEST__RECONCILE__INTERVAL_SECS", "60"),
                ("S3_INGEST__RECONCILE__GRACE_SECS", "900"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.reconcile.unwrap().locations(),
            vec![("vendor".to_owned(), "in/".to_owned())]
        );
        assert!(Config::from_toml_str(MINIMAL).unwrap().reconcile.is_none());

        for (bad, field) in [
            ("state = \"s3://ops/\"", "reconcile.state"),
            ("state = \"ops/state.json\"", "reconcile.state"),
            ("prefixes = []", "reconcile.prefixes"),
            ("prefixes = [\"vendor/in/\"]", "reconcile.prefixes[0]"),
            ("interval_secs = 0", "reconcile.interval_secs"),
            ("page_size = 5000", "reconcile.page_size"),
        ] {
            let key = bad.split(' ').next().unwrap();
            let edited: String = section
                .lines()
                .filter(|line| !line.trim_start().starts_with(key))
                .chain([bad])
                .collect::<Vec<_>>()
                .join("\n");
            let err = Config::from_toml_str(&format!("{MINIMAL}{edited}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn parquet_writer_settings_are_read_and_checked_per_sink() {
        let text = MINIMAL.replace(
            "path = \"/tmp/lake\"",
            "path = \"/tmp/lake\"\ncompression = \"zstd\"\ncompression_level = 1\ndictionary = \"off\"\nstatistics = \"chunk\"",
        );
        let config = Config::from_toml_str(&text).unwrap();
        match &config.sinks["lake"] {
            SinkConfig::ParquetDir { writer, .. } => {
                assert_eq!(
                    writer.compression,
                    Some(crate::sink::parquet_settings::Codec::Zstd)
                );
                assert_eq!(writer.compression_level, Some(1));
                assert_eq!(
                    writer.dictionary,
                    crate::sink::parquet_settings::Dictionary::Off
                );
                assert_eq!(
                    writer.statistics,
                    crate::sink::parquet_settings::Statistics::Chunk
                );
            }
            other => panic!("{other:?}"),
        }
        let err = load_err(&text, &[("S3_INGEST__SINKS__LAKE__COMPRESSION", "snappy")]);
        assert!(err.contains("sinks.lake.compression_level"), "{err}");
        let err = load_err(
            MINIMAL,
            &[("S3_INGEST__SINKS__LAKE__COMPRESSION", "brotli")],
        );
        assert!(err.contains("brotli"), "{err}");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(config.queue.wait_time_secs, 20);
        assert_eq!(config.queue.max_messages, 10);
        assert_eq!(config.worker.concurrency.get(), 4);
        assert_eq!(config.routes[0].format, FileFormat::Auto);
        assert!(config.routes[0].csv.header);
        assert!(!config.aws.force_path_style);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_path() {
        let text = MINIMAL.replace("[queue]", "[queue]\nurll = \"x\"");
        let err = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("queue"), "{err}");
        assert!(err.contains("urll"), "{err}");
    }

    #[test]
    fn a_route_group_is_read_with_defaults_and_checked() {
        let grouped = |group: &str| {
            MINIMAL.replace(
                "sink = \"lake\"\n",
                &format!("sink = \"lake\"\ngroup = {group}\n"),
            )
        };
        let config = Config::from_toml_str(&grouped("{ max_age_secs = 5 }")).unwrap();
        let group = config.routes[0].group.unwrap();
        assert_eq!(group.max_age_secs, 5);
        assert_eq!(group.max_bytes.get(), 128 << 20);
        assert_eq!(group.max_object_bytes.get(), 8 << 20);
        assert!(
            Config::from_toml_str(MINIMAL).unwrap().routes[0]
                .group
                .is_none()
        );

        for (group, needle) in [
            ("{ max_age_secs = 0 }", "routes[0].group.max_age_secs"),
            ("{ max_age_secs = 901 }", "at most 900"),
            (
                "{ max_bytes = 1048576, max_object_bytes = 2097152 }",
                "routes[0].group.max_object_bytes",
            ),
            ("{ max_age = 5 }", "max_age"),
        ] {
            let err = Config::from_toml_str(&grouped(group))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{group}: {err}");
        }
        // The age stays well inside the lease.
        let short_lease = grouped("{ max_age_secs = 60 }")
            .replace("[queue]", "[worker]\nmax_lease_secs = 200\n[queue]")
            .replace("url = ", "visibility_timeout_secs = 30\nurl = ");
        let err = Config::from_toml_str(&short_lease).unwrap_err().to_string();
        assert!(err.contains("quarter of worker.max_lease_secs"), "{err}");
        // Only sinks with a per-object ledger commit groups.
        let to_stdout = grouped("{}").replace(
            "type = \"parquet_dir\"\n        path = \"/tmp/lake\"",
            "type = \"stdout\"",
        );
        let err = Config::from_toml_str(&to_stdout).unwrap_err().to_string();
        assert!(
            err.contains("routes[0].group")
                && err.contains("sink `lake` (stdout) cannot commit groups"),
            "{err}"
        );
    }

    #[test]
    fn unknown_sink_key_is_rejected() {
        let text = MINIMAL.replace("path = \"/tmp/lake\"", "path = \"/tmp/lake\"\ncolour = 1");
        let err = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let text = MINIMAL.replace(
            "url = \"http://127.0.0.1:4566/queue/us-east-1/000000000000/events\"",
            "",
        );
        let err = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("queue") && err.contains("url"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        for (key, line, needle) in [
            ("wait", "wait_time_secs = 21", "queue.wait_time_secs"),
            ("max", "max_messages = 0", "queue.max_messages"),
            ("max", "max_messages = 11", "queue.max_messages"),
            (
                "vis",
                "visibility_timeout_secs = 0",
                "queue.visibility_timeout_secs",
            ),
            ("recv", "max_receive_count = 0", "queue.max_receive_count"),
        ] {
            let text = MINIMAL.replace("[queue]", &format!("[queue]\n{line}"));
            let err = Config::from_toml_str(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{key}: {err}");
        }
        let text = format!("{MINIMAL}\n[worker]\nconcurrency = 0\n");
        let err = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("worker.concurrency"), "{err}");
        let text = format!("{MINIMAL}\n[worker]\nmax_prefetch = 1001\n");
        let err = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("worker.max_prefetch"), "{err}");
        let text = format!("{MINIMAL}\n[worker]\ncpu_threads = 0\n");
        assert!(Config::from_toml_str(&text).is_err());
        let text = format!("{MINIMAL}\n[worker]\ncpu_threads = 257\n");
        let err = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("worker.cpu_threads"), "{err}");
        let text = format!("{MINIMAL}\n[worker]\ncpu_threads = 2\n");
        let threads = Config::from_toml_str(&text).unwrap().worker.cpu_threads;
        assert_eq!(threads.map(NonZeroUsize::get), Some(2));
        let text = format!("{MINIMAL}\n[worker]\nmax_prefetch = 0\n");
        assert_eq!(Config::from_toml_str(&text).unwrap().worker.max_prefetch, 0);
    }

    #[test]
    fn route_naming_an_undefined_sink_is_rejected() {
        let text = MINIMAL.replace("sink = \"lake\"", "sink = \"nowhere\"");
        let err = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(
            err.contains("routes[0].sink") && err.contains("nowhere"),
            "{err}"
        );
    }

    #[test]
    fn route_may_fan_out_to_several_sinks() {
        let text = format!(
            "{}\n[sinks.copy]\ntype = \"stdout\"\n",
            MINIMAL.replace("sink = \"lake\"", "sinks = [\"lake\", \"copy\"]")
        );
        let config = Config::from_toml_str(&text).unwrap();
        assert_eq!(config.routes[0].sink_names(), ["lake", "copy"]);
    }

    #[test]
    fn fan_out_mistakes_are_rejected_naming_the_field() {
        for (replacement, expected) in [
            ("sinks = [\"lake\", \"lake\"]", "listed twice"),
            ("sinks = [\"lake\", \"gone\"]", "`gone` is not defined"),
            ("sinks = []", "missing"),
            ("sink = \"lake\"\nsinks = [\"lake\"]", "not both"),
        ] {
            let text = MINIMAL.replace("sink = \"lake\"", replacement);
            let err = Config::from_toml_str(&text).unwrap_err().to_string();
            assert!(
                err.contains("routes[0].sink") && err.contains(expected),
                "{replacement}: {err}"
            );
        }
    }

    #[test]
    fn bad_glob_and_bad_schema_type_are_rejected() {
        let text = MINIMAL.replace("key_glob = \"**\"", "key_glob = \"a[\"");
        let err = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("routes[0].key_glob"), "{err}");

        let text = MINIMAL.replace(
            "sink = \"lake\"",
            "sink = \"lake\"\nschema = [{ name = \"a\", type = \"int65\" }]",
        );
        let err = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(
            err.contains("routes[0].schema") && err.contains("int65"),
            "{err}"
        );
    }

    /// MINIMAL with a schema on the route, `contract` as its contract
    /// table, and a second sink `bad`.
    fn with_contract(contract: &str) -> Result<Config, ConfigError> {
        let text = MINIMAL.replace(
            "sink = \"lake\"\n",
            "sink = \"lake\"\nschema = [{ name = \"id\", type = \"int64\", nullable = false }, { name = \"status\", type = \"string\" }]\n",
        );
        let text = format!("{text}\n[sinks.bad]\ntype = \"parquet_dir\"\npath = \"/tmp/bad\"\n");
        let text = text.replace(
            "[sinks.lake]",
            &format!("[routes.contract]\n{contract}\n\n[sinks.lake]"),
        );
        Config::from_toml_str(&text)
    }

    #[test]
    fn contracts_are_validated_naming_the_route_the_key_and_the_column() {
        let config = with_contract(
            r#"schema_mode = "rescue"
               bad_rows = "quarantine"
               quarantine_sink = "bad"
               checks = [{ column = "status", one_of = ["new", "shipped"] }, { column = "id", min = 1, unique = true }]"#,
        )
        .unwrap();
        let contract = config.routes[0].contract.as_ref().unwrap();
        assert_eq!(contract.schema_mode, crate::contract::SchemaMode::Rescue);
        assert_eq!(contract.checks.len(), 2);

        let cases = [
            (
                r#"checks = [{ column = "colour", not_null = true }]"#,
                "routes[0].contract.checks[0]",
                "route `vendors`: column `colour` is not in the route's schema",
            ),
            (
                r#"checks = [{ column = "id", max = "lots" }]"#,
                "routes[0].contract.checks[0]",
                "column `id`: max: \"lots\" is not a Int64 value",
            ),
            (
                r#"bad_rows = "quarantine""#,
                "routes[0].contract.quarantine_sink",
                "needs the sink",
            ),
            (
                r#"bad_rows = "quarantine"
                   quarantine_sink = "lake""#,
                "routes[0].contract.quarantine_sink",
                "one of the route's own sinks",
            ),
            (
                r#"bad_rows = "quarantine"
                   quarantine_sink = "nowhere""#,
                "routes[0].contract.quarantine_sink",
                "`nowhere` is not defined",
            ),
            (
                r#"quarantine_sink = "bad""#,
                "routes[0].contract.quarantine_sink",
                "only used with bad_rows",
            ),
            (r#"schema_mode = "loose""#, "schema_mode", "loose"),
        ];
        for (contract, key, message) in cases {
            let err = with_contract(contract).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains(message),
                "{contract}: {err}"
            );
        }

        let no_schema = MINIMAL.replace(
            "[sinks.lake]",
            "[routes.contract]\nschema_mode = \"strict\"\n\n[sinks.lake]",
        );
        let err = Config::from_toml_str(&no_schema).unwrap_err().to_string();
        assert!(
            err.contains("routes[0].contract") && err.contains("declare the columns"),
            "{err}"
        );
        let headerless = with_contract("")
            .map(|_| ())
            .and_then(|()| {
                let text = MINIMAL.replace(
                    "sink = \"lake\"\n",
                    "sink = \"lake\"\nschema = [{ name = \"id\", type = \"int64\" }]\ncsv = { header = false }\n",
                );
                Config::from_toml_str(&text.replace(
                    "[sinks.lake]",
                    "[routes.contract]\n\n[sinks.lake]",
                ))
            })
            .unwrap_err()
            .to_string();
        assert!(headerless.contains("routes[0].csv.header"), "{headerless}");
    }

    #[test]
    fn non_ascii_delimiter_is_rejected() {
        let text = format!("{MINIMAL}\n[routes.csv]\ndelimiter = \"é\"\n");
        let err = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("routes[0].csv.delimiter"), "{err}");
    }

    #[test]
    fn environment_overrides_scalars_tables_and_arrays() {
        let config = load_with(
            MINIMAL,
            &[
                ("S3_INGEST__QUEUE__WAIT_TIME_SECS", "5"),
                ("S3_INGEST__QUEUE__DLQ_URL", "http://dlq"),
                ("S3_INGEST__AWS__FORCE_PATH_STYLE", "true"),
                ("S3_INGEST__ROUTES__VENDORS__KEY_GLOB", "in/*.csv"),
                (
                    "S3_INGEST__ROUTES__VENDORS__CSV__NULL_VALUES",
                    r#"["NA", "-"]"#,
                ),
                ("S3_INGEST__SINKS__LAKE__PATH", "/data/out"),
                ("S3_INGEST__WORKER__CONCURRENCY", "8"),
                ("UNRELATED", "1"),
            ],
        )
        .unwrap();
        assert_eq!(config.queue.wait_time_secs, 5);
        assert_eq!(config.queue.dlq_url.as_deref(), Some("http://dlq"));
        assert!(config.aws.force_path_style);
        assert_eq!(config.routes[0].key_glob, "in/*.csv");
        assert_eq!(config.routes[0].csv.null_values, vec!["NA", "-"]);
        assert_eq!(config.worker.concurrency.get(), 8);
        match &config.sinks["lake"] {
            SinkConfig::ParquetDir { path, .. } => assert_eq!(path, Path::new("/data/out")),
            other => panic!("unexpected sink {other:?}"),
        }
    }

    #[test]
    fn environment_alone_can_build_a_config() {
        let config = load_with(
            "",
            &[
                ("S3_INGEST__QUEUE__URL", "http://q"),
                ("S3_INGEST__ROUTES__ALL__KEY_GLOB", "**"),
                ("S3_INGEST__ROUTES__ALL__SINK", "out"),
                ("S3_INGEST__SINKS__OUT__TYPE", "stdout"),
            ],
        )
        .unwrap();
        assert_eq!(config.routes[0].name, "all");
        assert!(matches!(config.sinks["out"], SinkConfig::Stdout {}));
    }

    #[test]
    fn environment_value_of_wrong_type_names_the_key() {
        let err = load_err(MINIMAL, &[("S3_INGEST__QUEUE__MAX_MESSAGES", "many")]);
        assert!(err.contains("queue.max_messages"), "{err}");
        assert!(err.contains("S3_INGEST__QUEUE__MAX_MESSAGES"), "{err}");
    }

    #[test]
    fn environment_route_index_is_rejected_naming_the_variable() {
        // Routes are addressed by name: an index would silently point at
        // another route once the file's routes are reordered.
        for var in [
            "S3_INGEST__ROUTES__3__NAME",
            "S3_INGEST__ROUTES__0__KEY_GLOB",
        ] {
            let err = load_err(MINIMAL, &[(var, "x")]);
            assert!(err.contains(var), "{err}");
            assert!(err.contains("addressed by name"), "{err}");
        }
    }

    #[test]
    fn environment_account_id_stays_a_string() {
        for id in ["123456789012", "012345678901"] {
            let config = load_with(
                MINIMAL,
                &[
                    ("S3_INGEST__AWS__EXPECTED_BUCKET_OWNER", id),
                    ("S3_INGEST__ROUTES__VENDORS__BUCKET", "2024"),
                ],
            )
            .unwrap();
            assert_eq!(config.aws.expected_bucket_owner.as_deref(), Some(id));
            assert_eq!(config.routes[0].bucket.as_deref(), Some("2024"));
        }
    }

    #[test]
    fn environment_values_take_their_field_types() {
        let text = format!(
            "{MINIMAL}\n[sinks.pg]\ntype = \"postgres\"\nurl_env = \"PG_URL\"\ntable = \"t\"\n"
        );
        let config = load_with(
            &text.replace("sink = \"lake\"\n", ""),
            &[
                ("S3_INGEST__QUEUE__WAIT_TIME_SECS", "0"),
                ("S3_INGEST__AWS__FORCE_PATH_STYLE", "true"),
                ("S3_INGEST__ROUTES__VENDORS__CSV__HEADER", "false"),
                ("S3_INGEST__ROUTES__VENDORS__CSV__DELIMITER", "|"),
                ("S3_INGEST__ROUTES__VENDORS__CSV__NULL_VALUES", "NA, -"),
                ("S3_INGEST__ROUTES__VENDORS__KEY_GLOB", "[ab]*.csv"),
                ("S3_INGEST__ROUTES__VENDORS__SINKS", "lake,pg"),
                ("S3_INGEST__ROUTES__VENDORS__LIMITS__MAX_COLUMNS", "12"),
                ("S3_INGEST__ROUTES__VENDORS__GROUP__MAX_AGE_SECS", "7"),
                // Inside a sink, whose fields depend on its `type`.
                ("S3_INGEST__SINKS__PG__CREATE_TABLE", "true"),
                ("S3_INGEST__SINKS__PG__POOL_SIZE", "3"),
                ("S3_INGEST__SINKS__PG__TABLE", "2024"),
                ("S3_INGEST__SINKS__LAKE__ROW_GROUP_BYTES", "65536"),
            ],
        )
        .unwrap();
        assert_eq!(config.queue.wait_time_secs, 0);
        assert!(config.aws.force_path_style);
        let route = &config.routes[0];
        assert!(!route.csv.header);
        assert_eq!(route.csv.delimiter, Some('|'));
        assert_eq!(route.csv.null_values, ["NA", "-"]);
        assert_eq!(route.key_glob, "[ab]*.csv");
        assert_eq!(route.sink_names(), ["lake", "pg"]);
        assert_eq!(route.limits.max_columns.get(), 12);
        // A table the file does not have, made from one variable; the
        // rest of it takes its defaults.
        let group = route.group.expect("group from the environment");
        assert_eq!(group.max_age_secs, 7);
        assert_eq!(group.max_bytes.get(), 128 << 20);
        match &config.sinks["pg"] {
            SinkConfig::Postgres(pg) => {
                assert!(pg.create_table);
                assert_eq!(pg.pool_size.get(), 3);
                assert_eq!(pg.table, "2024");
            }
            other => panic!("unexpected sink {other:?}"),
        }
        match &config.sinks["lake"] {
            SinkConfig::ParquetDir {
                row_group_bytes, ..
            } => assert_eq!(*row_group_bytes, 65536),
            other => panic!("unexpected sink {other:?}"),
        }

        // Arrays of tables, and tables, as TOML.
        let config = load_with(
            MINIMAL,
            &[
                (
                    "S3_INGEST__ROUTES__VENDORS__SCHEMA",
                    r#"[{ name = "id", type = "int64", nullable = false }]"#,
                ),
                ("S3_INGEST__SINKS__CH__TYPE", "http"),
                ("S3_INGEST__SINKS__CH__URL", "http://127.0.0.1:9/"),
                ("S3_INGEST__SINKS__CH__FORMAT", "ndjson"),
                ("S3_INGEST__SINKS__CH__HEADERS", r#"{ "X-Team" = "data" }"#),
                ("S3_INGEST__SINKS__CH__MAX_RETRIES", "2"),
            ],
        )
        .unwrap();
        let schema = config.routes[0].schema.as_ref().unwrap();
        assert_eq!(schema[0].name, "id");
        assert!(!schema[0].nullable);
        match &config.sinks["ch"] {
            SinkConfig::Http(http) => {
                assert_eq!(http.headers["X-Team"], "data");
                assert_eq!(http.max_retries, 2);
            }
            other => panic!("unexpected sink {other:?}"),
        }
    }

    #[test]
    fn environment_rejections_name_the_variable() {
        let pg = format!(
            "{MINIMAL}\n[sinks.pg]\ntype = \"postgres\"\nurl_env = \"PG_URL\"\ntable = \"t\"\n"
        );
        for (text, var, value, key) in [
            (
                MINIMAL,
                "S3_INGEST__AWS__FORCE_PATH_STYLE",
                "yes",
                "aws.force_path_style",
            ),
            (
                MINIMAL,
                "S3_INGEST__QUEUE__WAIT_TIME_SECS",
                "21",
                "queue.wait_time_secs",
            ),
            (MINIMAL, "S3_INGEST__QUEUE__URLL", "x", "queue"),
            (
                MINIMAL,
                "S3_INGEST__ROUTES__VENDORS__KEY_GLOB",
                "a[",
                "routes[0].key_glob",
            ),
            (
                MINIMAL,
                "S3_INGEST__ROUTES__VENDORS__SINK",
                "nowhere",
                "routes[0].sink",
            ),
            (
                MINIMAL,
                "S3_INGEST__ROUTES__VENDORS__CSV__NULL_VALUES",
                "[\"NA\"",
                "routes[0].csv.null_values",
            ),
            (
                &pg,
                "S3_INGEST__SINKS__PG__POOL_SIZE",
                "many",
                "sinks.pg.pool_size",
            ),
            (
                &pg,
                "S3_INGEST__SINKS__PG__CREATE_TABLE",
                "1",
                "sinks.pg.create_table",
            ),
            (
                &pg,
                "S3_INGEST__SINKS__PG__URL",
                "postgres://u:pw@db/w",
                "sinks.pg.url",
            ),
        ] {
            let err = load_err(text, &[(var, value)]);
            assert!(err.contains(var) && err.contains(key), "{var}: {err}");
        }
        // Route errors also name the route.
        let err = load_err(MINIMAL, &[("S3_INGEST__ROUTES__VENDORS__KEY_GLOB", "a[")]);
        assert!(err.contains("route `vendors`"), "{err}");

        for (var, needle) in [
            ("S3_INGEST__QUEUE____URL", "empty key segment"),
            ("S3_INGEST__ROUTES__VENDORS", "one key of a route"),
            ("S3_INGEST__ROUTES", "one key of a route"),
            ("S3_INGEST__ROUTES__VENDORS__NAME", "not the route"),
        ] {
            let err = load_err(MINIMAL, &[(var, "other")]);
            assert!(err.contains(var) && err.contains(needle), "{var}: {err}");
        }
    }

    #[test]
    fn environment_two_variables_for_one_key_are_rejected() {
        let err = load_err(
            MINIMAL,
            &[
                ("S3_INGEST__QUEUE__URL", "http://a"),
                ("S3_INGEST__queue__url", "http://b"),
            ],
        );
        assert!(
            err.contains("S3_INGEST__QUEUE__URL") && err.contains("S3_INGEST__queue__url"),
            "{err}"
        );
        let err = load_err(
            MINIMAL,
            &[
                ("S3_INGEST__SINKS__LAKE", "x"),
                ("S3_INGEST__SINKS__LAKE__PATH", "/data"),
            ],
        );
        assert!(
            err.contains("S3_INGEST__SINKS__LAKE__PATH") && err.contains("S3_INGEST__SINKS__LAKE"),
            "{err}"
        );
    }

    const THREE_ROUTES: &str = r#"
        [queue]
        url = "http://q"

        [[routes]]
        name = "orders"
        key_glob = "orders/**"
        sink = "Lake"

        [[routes]]
        name = "vendor-prices"
        key_glob = "prices/**"
        sink = "Lake"

        [[routes]]
        name = "rest"
        key_glob = "**"
        sink = "Lake"

        [sinks.Lake]
        type = "parquet_dir"
        path = "/tmp/lake"
    "#;

    #[test]
    fn environment_route_by_name_overrides_only_that_route() {
        let file = Config::from_toml_str(THREE_ROUTES).unwrap();
        let config = load_with(
            THREE_ROUTES,
            &[
                // `-` is written `_`; case does not matter.
                ("S3_INGEST__ROUTES__VENDOR_PRICES__KEY_GLOB", "p/*.csv"),
                ("S3_INGEST__ROUTES__vendor_prices__FORMAT", "csv"),
                // The sink keeps the file's spelling.
                ("S3_INGEST__SINKS__LAKE__PATH", "/data"),
            ],
        )
        .unwrap();
        assert_eq!(route_names(&config), ["orders", "vendor-prices", "rest"]);
        assert_eq!(config.routes[1].key_glob, "p/*.csv");
        assert_eq!(config.routes[1].format, FileFormat::Csv);
        for index in [0, 2] {
            assert_eq!(config.routes[index].key_glob, file.routes[index].key_glob);
            assert_eq!(config.routes[index].format, FileFormat::Auto);
        }
        assert_eq!(config.sinks.keys().collect::<Vec<_>>(), ["Lake"]);
        match &config.sinks["Lake"] {
            SinkConfig::ParquetDir { path, .. } => assert_eq!(path, Path::new("/data")),
            other => panic!("unexpected sink {other:?}"),
        }
    }

    #[test]
    fn environment_route_unknown_to_the_file_is_created_where_route_order_says() {
        let vars = [
            ("S3_INGEST__ROUTES__HOT_ORDERS__NAME", "hot-orders"),
            ("S3_INGEST__ROUTES__HOT_ORDERS__KEY_GLOB", "orders/hot/**"),
            ("S3_INGEST__ROUTES__HOT_ORDERS__SINK", "Lake"),
        ];
        // Without an order it could go anywhere: rejected, naming the key.
        let err = load_err(THREE_ROUTES, &vars);
        assert!(
            err.contains("route_order")
                && err.contains("S3_INGEST__ROUTE_ORDER")
                && err.contains("hot_orders"),
            "{err}"
        );

        let mut with_order = vars.to_vec();
        with_order.push((
            "S3_INGEST__ROUTE_ORDER",
            "hot-orders, orders, vendor_prices, rest",
        ));
        let config = load_with(THREE_ROUTES, &with_order).unwrap();
        assert_eq!(
            route_names(&config),
            ["hot-orders", "orders", "vendor-prices", "rest"]
        );
        assert_eq!(config.routes[0].key_glob, "orders/hot/**");
        assert_eq!(config.routes[1].key_glob, "orders/**");
    }

    #[test]
    fn environment_route_order_reorders_and_must_list_every_route_once() {
        let config = load_with(
            THREE_ROUTES,
            &[("S3_INGEST__ROUTE_ORDER", "rest,vendor-prices,orders")],
        )
        .unwrap();
        assert_eq!(route_names(&config), ["rest", "vendor-prices", "orders"]);
        let config = load_with(
            THREE_ROUTES,
            &[(
                "S3_INGEST__ROUTE_ORDER",
                r#"["REST", "orders", "VENDOR_PRICES"]"#,
            )],
        )
        .unwrap();
        assert_eq!(route_names(&config), ["rest", "orders", "vendor-prices"]);

        for (order, needle) in [
            ("rest,orders", "does not list route `vendor_prices`"),
            ("rest,orders,vendor-prices,orders", "lists `orders` twice"),
            (
                "rest,orders,vendor-prices,gone",
                "`gone`, which is no route",
            ),
        ] {
            let err = load_err(THREE_ROUTES, &[("S3_INGEST__ROUTE_ORDER", order)]);
            assert!(
                err.contains("config key `route_order`")
                    && err.contains("S3_INGEST__ROUTE_ORDER")
                    && err.contains(needle),
                "{order}: {err}"
            );
        }
        // In the file too.
        let text = format!("route_order = [\"rest\"]\n{THREE_ROUTES}");
        let err = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(
            err.contains("route_order") && err.contains("does not list"),
            "{err}"
        );
    }

    #[test]
    fn environment_sets_more_than_ten_routes_in_route_order() {
        let mut vars: Vec<(String, String)> = vec![
            ("S3_INGEST__QUEUE__URL".into(), "http://q".into()),
            ("S3_INGEST__SINKS__OUT__TYPE".into(), "stdout".into()),
        ];
        let names: Vec<String> = (0..12).map(|i| format!("r{i}")).collect();
        for name in &names {
            let upper = name.to_ascii_uppercase();
            vars.push((
                format!("S3_INGEST__ROUTES__{upper}__KEY_GLOB"),
                format!("{name}/**"),
            ));
            vars.push((format!("S3_INGEST__ROUTES__{upper}__SINK"), "out".into()));
        }
        vars.push(("S3_INGEST__ROUTE_ORDER".into(), names.join(",")));
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let config = load_with("", &pairs).unwrap();
        assert_eq!(route_names(&config), names);
        assert_eq!(config.routes[10].key_glob, "r10/**");
        assert_eq!(config.routes[2].key_glob, "r2/**");
    }

    #[test]
    fn file_route_names_one_route_to_the_environment_are_rejected() {
        let text = THREE_ROUTES.replace("name = \"rest\"", "name = \"Vendor_Prices\"");
        let err = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(
            err.contains("routes[2].name") && err.contains("`vendor-prices`"),
            "{err}"
        );
        let text = THREE_ROUTES.replace("name = \"rest\"", "name = \"orders\"");
        let err = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(
            err.contains("routes[2].name") && err.contains("used twice"),
            "{err}"
        );
    }
}
