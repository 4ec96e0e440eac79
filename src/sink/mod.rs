//! Sinks: where decoded batches land. A sink receives one source object's
//! batches plus its lineage and commits them as a unit; `commit` returning
//! Ok means the data is durable, and only then is the message deleted.

pub mod parquet_dir;
pub mod stdout;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::SinkConfig;

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
    /// Transient (disk full, permission, unreachable): keep the message.
    pub retryable: bool,
}

impl SinkError {
    pub fn transient(detail: impl Into<String>) -> SinkError {
        SinkError {
            detail: detail.into(),
            retryable: true,
        }
    }

    pub fn permanent(detail: impl Into<String>) -> SinkError {
        SinkError {
            detail: detail.into(),
            retryable: false,
        }
    }
}

/// What a commit produced, for logs.
#[derive(Debug, Clone)]
pub struct CommitReceipt {
    /// Where the data is now (a path, a table, ...).
    pub location: String,
    pub rows: u64,
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
}

#[async_trait]
pub trait SinkWriter: Send {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError>;

    /// Makes everything written durable and visible, atomically.
    async fn commit(self: Box<Self>) -> Result<CommitReceipt, SinkError>;
}

/// Builds the sink a `[sinks.NAME]` table describes.
pub fn build(name: &str, config: &SinkConfig) -> Arc<dyn Sink> {
    match config {
        SinkConfig::ParquetDir { path } => {
            Arc::new(parquet_dir::ParquetDirSink::new(name, path.clone()))
        }
        SinkConfig::Stdout {} => Arc::new(stdout::StdoutSink::new(name)),
    }
}
