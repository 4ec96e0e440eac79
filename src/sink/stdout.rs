//! `stdout`: rows as newline-delimited JSON on standard output, for
//! debugging a route. Nothing is durable, so "commit" means "flushed".

use std::io::Write;

use arrow::datatypes::SchemaRef;
use arrow::json::LineDelimitedWriter;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use super::{CommitReceipt, Lineage, Sink, SinkError, SinkWriter};

pub struct StdoutSink {
    name: String,
}

impl StdoutSink {
    pub fn new(name: &str) -> StdoutSink {
        StdoutSink {
            name: name.to_owned(),
        }
    }
}

#[async_trait]
impl Sink for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn open(
        &self,
        _lineage: &Lineage,
        _schema: SchemaRef,
    ) -> Result<Box<dyn SinkWriter>, SinkError> {
        Ok(Box::new(StdoutWriter { rows: 0 }))
    }
}

struct StdoutWriter {
    rows: u64,
}

/// Renders `batch` as NDJSON, then writes it whole under one lock, so rows
/// of objects processed concurrently do not interleave mid-line. Blocks.
fn write_batch(batch: &RecordBatch) -> Result<(), SinkError> {
    let mut rendered = LineDelimitedWriter::new(Vec::new());
    rendered
        .write(batch)
        .map_err(|err| SinkError::permanent(format!("render JSON: {err}")))?;
    rendered
        .finish()
        .map_err(|err| SinkError::permanent(format!("render JSON: {err}")))?;
    let bytes = rendered.into_inner();
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)
        .map_err(|err| SinkError::transient(format!("write stdout: {err}")))
}

#[async_trait]
impl SinkWriter for StdoutWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError> {
        let rows = batch.num_rows() as u64;
        // Rendering is CPU work and a pipe reader can block the write for
        // as long as it likes: both run on the blocking pool, never on the
        // async runtime's threads.
        tokio::task::spawn_blocking(move || write_batch(&batch))
            .await
            .map_err(|err| SinkError::transient(format!("stdout writer task failed: {err}")))??;
        self.rows += rows;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<CommitReceipt, SinkError> {
        tokio::task::spawn_blocking(|| std::io::stdout().flush())
            .await
            .map_err(|err| SinkError::transient(format!("stdout flush task failed: {err}")))?
            .map_err(|err| SinkError::transient(format!("flush stdout: {err}")))?;
        Ok(CommitReceipt {
            location: "stdout".into(),
            rows: self.rows,
            already_committed: false,
        })
    }
}
