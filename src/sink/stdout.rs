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

#[async_trait]
impl SinkWriter for StdoutWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError> {
        // Render first, then write the whole batch under one lock, so rows
        // of objects processed concurrently do not interleave mid-line.
        let mut rendered = LineDelimitedWriter::new(Vec::new());
        rendered
            .write(&batch)
            .map_err(|err| SinkError::permanent(format!("render JSON: {err}")))?;
        rendered
            .finish()
            .map_err(|err| SinkError::permanent(format!("render JSON: {err}")))?;
        let bytes = rendered.into_inner();
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)
            .map_err(|err| SinkError::transient(format!("write stdout: {err}")))?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<CommitReceipt, SinkError> {
        std::io::stdout()
            .flush()
            .map_err(|err| SinkError::transient(format!("flush stdout: {err}")))?;
        Ok(CommitReceipt {
            location: "stdout".into(),
            rows: self.rows,
            already_committed: false,
        })
    }
}
