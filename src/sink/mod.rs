//! Sinks: where decoded batches land. A sink receives one source object's
//! batches plus its lineage and commits them as a unit; `commit` returning
//! Ok means the data is durable, and only then is the message deleted.

pub mod delta;
pub mod http;
pub mod parquet_dir;
pub mod parquet_encoder;
pub mod parquet_settings;
pub mod postgres;
pub mod s3_parquet;
pub mod stdout;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::SinkConfig;
use crate::contract::ContractOutcome;

/// Where an object's rows came from; every sink records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
    pub etag: Option<String>,
    pub size: u64,
    pub event_time: Option<DateTime<Utc>>,
    pub route: String,
}

impl Lineage {
    /// What identifies this exact object version: its version id, else its
    /// ETag. Sinks key their idempotency on (bucket, key, this).
    pub fn version_identity(&self) -> &str {
        self.version_id
            .as_deref()
            .or(self.etag.as_deref())
            .unwrap_or("unversioned")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct SinkError {
    pub detail: String,
    pub class: SinkFailure,
}

/// What will fix a sink's failure, which decides what happens to the
/// object's message (see `error.rs` and `deployment.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkFailure {
    /// Something about this data: the object is dead-lettered.
    Permanent,
    /// The file's columns do not fit the destination's (a column the
    /// table lacks, a type it cannot take): dead-lettered as
    /// `schema_error`, the detail naming the columns.
    Schema,
    /// May clear on another try; the try counts as a failed attempt.
    Transient,
    /// The sink is out: unreachable, timing out, overloaded, its storage
    /// failing. The code says how (`connect`, `timeout`, `503`, an
    /// SQLSTATE, an AWS error code, an I/O error kind). While no other
    /// object commits to the sink, the failure is the outage's and is not
    /// counted against the file.
    Unavailable(String),
    /// The sink refuses the deployment rather than the data (a rejected
    /// secret, a missing grant): the code (HTTP status, SQLSTATE, AWS
    /// error code). Decided by `error::is_deployment_*`.
    Deployment(String),
}

impl SinkError {
    pub fn transient(detail: impl Into<String>) -> SinkError {
        SinkError {
            detail: detail.into(),
            class: SinkFailure::Transient,
        }
    }

    /// The sink is out: see [`SinkFailure::Unavailable`].
    pub fn unavailable(code: impl Into<String>, detail: impl Into<String>) -> SinkError {
        SinkError {
            detail: detail.into(),
            class: SinkFailure::Unavailable(code.into()),
        }
    }

    /// The deployment's problem, not the file's: see [`SinkFailure::Deployment`].
    pub fn deployment(code: impl Into<String>, detail: impl Into<String>) -> SinkError {
        SinkError {
            detail: detail.into(),
            class: SinkFailure::Deployment(code.into()),
        }
    }

    pub fn permanent(detail: impl Into<String>) -> SinkError {
        SinkError {
            detail: detail.into(),
            class: SinkFailure::Permanent,
        }
    }

    /// The file's columns do not fit: see [`SinkFailure::Schema`].
    pub fn schema(detail: impl Into<String>) -> SinkError {
        SinkError {
            detail: detail.into(),
            class: SinkFailure::Schema,
        }
    }

    /// Whether another try may succeed (everything but `Permanent` and
    /// `Schema`).
    pub fn is_retryable(&self) -> bool {
        !matches!(self.class, SinkFailure::Permanent | SinkFailure::Schema)
    }
}

/// What a commit produced, for logs.
#[derive(Debug, Clone)]
pub struct CommitReceipt {
    /// Where the data is now (a path, a table, ...).
    pub location: String,
    pub rows: u64,
    /// The sink already held this object version (a redelivery or a
    /// concurrent delivery) and committed nothing new.
    pub already_committed: bool,
}

/// What a sink knows about one object version (see [`Sink::is_committed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitState {
    /// The sink holds this version, committed whole.
    Committed,
    /// The sink does not hold this version (or holds only a part of it
    /// that a commit never finished): ingest it.
    NotCommitted,
    /// The sink cannot tell (`http`, `stdout`).
    Unknown,
}

/// Where and when a sink committed one object version, for `s3-ingest
/// trace` (see [`Sink::commit_details`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CommitDetails {
    /// Where the rows are: a file, a table, the published objects.
    pub location: String,
    pub rows: Option<u64>,
    pub committed_at: Option<DateTime<Utc>>,
    /// What the route's contract made of the file, as the sink recorded it
    /// (`ContractOutcome` as JSON), for a route with a contract.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract: Option<serde_json::Value>,
}

/// What sinks may need from the rest of the worker when they are built.
#[derive(Clone)]
pub struct SinkContext {
    pub s3: aws_sdk_s3::Client,
    /// Sent on every S3 call a sink makes, as on reads.
    pub expected_bucket_owner: Option<String>,
    /// The `[aws]` settings, for sinks that reach S3 through another
    /// client than the SDK (`delta`, through object_store).
    pub aws: crate::config::AwsConfig,
    /// The routes whose contract has `schema_mode = "add_columns"`: a sink
    /// with a table (postgres, delta) adds a new column of their files to
    /// it instead of refusing the file.
    pub add_columns_routes: std::collections::BTreeSet<String>,
}

impl SinkContext {
    /// Whether files of `route` may add columns to the sink's table.
    pub fn adds_columns(&self, route: &str) -> bool {
        self.add_columns_routes.contains(route)
    }
}

#[async_trait]
pub trait Sink: Send + Sync {
    fn name(&self) -> &str;

    /// Starts writing one object version. Dropping the writer without
    /// committing leaves nothing visible.
    async fn open(
        &self,
        lineage: &Lineage,
        schema: SchemaRef,
    ) -> Result<Box<dyn SinkWriter>, SinkError>;

    /// Whether this object version (bucket, key, `lineage.version_identity()`) is already
    /// committed to this sink, asked before downloading a redelivered, replayed or backfilled
    /// object. Only bucket, key, version_id and etag of `lineage` are meaningful here (size,
    /// event_time and route may be placeholders). `Unknown` where the sink cannot tell
    /// (http, stdout). Must stay true when many objects share one output later (small-file grouping).
    ///
    /// Errors are classified as `open` and `commit` classify theirs (an
    /// outage, a missing grant, ...); a sink that has nothing yet (no
    /// ledger table, no output) answers `NotCommitted`, not an error.
    async fn is_committed(&self, lineage: &Lineage) -> Result<CommitState, SinkError> {
        let _ = lineage;
        Ok(CommitState::Unknown)
    }

    /// Where, how many rows and when this object version was committed,
    /// for the operator (`s3-ingest trace`), from what the sink keeps
    /// anyway: `None` when it is not committed or the sink keeps nothing
    /// to say (the default). Reads only; errors as [`Sink::is_committed`].
    async fn commit_details(&self, lineage: &Lineage) -> Result<Option<CommitDetails>, SinkError> {
        let _ = lineage;
        Ok(None)
    }

    /// Starts a group of small objects from `bucket` with `schema`, for
    /// the route `route` (see [`GroupWriter`]). Only sinks that keep a
    /// ledger per object can: config validation allows `group` on a route
    /// only when every sink of it does.
    async fn open_group(
        &self,
        bucket: &str,
        route: &str,
        schema: SchemaRef,
    ) -> Result<Box<dyn GroupWriter>, SinkError> {
        let _ = (bucket, route, schema);
        Err(SinkError::permanent(format!(
            "sink `{}` cannot commit groups of objects",
            self.name()
        )))
    }
}

/// One object's rows, whole, offered to a group (see `group.rs`): its
/// decode succeeded, so none of its rows are missing.
pub struct GroupMember {
    pub lineage: Lineage,
    pub batches: Vec<RecordBatch>,
    /// The rows in `batches` (a route's contract may have quarantined
    /// others of the file).
    pub rows: u64,
    /// What the route's contract made of the file, for the sink's lineage.
    pub contract: Option<ContractOutcome>,
}

/// What a group writer did with an object offered to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// Its rows are in the group and it is claimed in the sink's ledger:
    /// the group's commit commits it.
    Added,
    /// The sink already holds this version (a redelivery): nothing added.
    AlreadyCommitted,
    /// Another live writer has claimed this version and has not committed
    /// it yet (a duplicate delivery in flight elsewhere): nothing added.
    /// The message should come back later, when that writer is done.
    ClaimedElsewhere,
    /// The sink refused this object's rows (a constraint, a type): they
    /// are not in the group, which goes on without them. Permanent: the
    /// object is dead-lettered with this reason.
    Refused(String),
}

/// A group of small objects being written as one output. Dropping it
/// without committing leaves nothing visible, and releases its claims.
#[async_trait]
pub trait GroupWriter: Send {
    /// Claims `member` in the sink's ledger and adds its rows, unless the
    /// sink already holds it or another writer has claimed it. An error
    /// leaves the group unusable: drop it.
    async fn add(&mut self, member: &GroupMember) -> Result<Joined, SinkError>;

    /// The group's output so far in bytes (encoded, including the part
    /// not yet flushed), for its size threshold.
    fn output_bytes(&self) -> u64;

    /// Makes every added member durable and visible, atomically; each
    /// then reads as committed (`Sink::is_committed`). `rows` of the
    /// receipt is the group's.
    async fn commit(self: Box<Self>) -> Result<CommitReceipt, SinkError>;
}

#[async_trait]
pub trait SinkWriter: Send {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError>;

    /// What the route's contract made of the file, given before `commit`
    /// for the sink to record with its lineage (a Parquet file's key-value
    /// metadata, the ledger row, the Delta commit). Sinks that keep no
    /// lineage ignore it.
    fn record_contract(&mut self, outcome: &ContractOutcome) {
        let _ = outcome;
    }

    /// Makes everything written durable and visible, atomically.
    async fn commit(self: Box<Self>) -> Result<CommitReceipt, SinkError>;
}

/// The configured sinks by name.
pub type SinksByName = std::collections::HashMap<String, Arc<dyn Sink>>;

/// Builds the sink a `[sinks.NAME]` table describes. Fails when the sink
/// cannot be set up at all (a secret's environment variable is missing, a
/// URL does not parse): a start-up error, not a per-object one.
pub fn build(
    name: &str,
    config: &SinkConfig,
    context: &SinkContext,
) -> Result<Arc<dyn Sink>, SinkError> {
    Ok(match config {
        SinkConfig::ParquetDir {
            path,
            row_group_bytes,
            writer,
        } => Arc::new(
            parquet_dir::ParquetDirSink::new(name, path.clone())
                .with_row_group_bytes(*row_group_bytes)
                .with_writer_settings(*writer),
        ),
        SinkConfig::Stdout {} => Arc::new(stdout::StdoutSink::new(name)),
        SinkConfig::Postgres(config) => {
            Arc::new(postgres::PostgresSink::new(name, config, context)?)
        }
        SinkConfig::S3Parquet(config) => {
            Arc::new(s3_parquet::S3ParquetSink::new(name, config, context)?)
        }
        SinkConfig::Http(config) => Arc::new(http::HttpSink::new(name, config, context)?),
        SinkConfig::Delta(config) => Arc::new(delta::DeltaSink::new(name, config, context)?),
    })
}
