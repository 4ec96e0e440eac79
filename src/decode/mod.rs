//! Decoders: object bytes in, Arrow record batches out.

pub mod compression;
pub mod csv;
mod page_header;
pub mod parquet;
mod quotes;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

use crate::error::IngestError;

/// What a decoder produced from one object.
#[derive(Debug, Clone)]
pub struct DecodeSummary {
    pub schema: SchemaRef,
    pub rows: u64,
    pub batches: u64,
    /// Bytes after decompression (CSV only; zero for Parquet).
    pub decoded_bytes: u64,
    /// The rows the file declares it holds (a Parquet footer's `num_rows`),
    /// which `rows` must equal before anything commits; `None` for CSV.
    pub expected_rows: Option<u64>,
}

impl DecodeSummary {
    pub fn empty(schema: SchemaRef) -> DecodeSummary {
        DecodeSummary {
            schema,
            rows: 0,
            batches: 0,
            decoded_bytes: 0,
            expected_rows: None,
        }
    }
}

/// Hands a batch to the sink stage from a blocking thread. The receiver is
/// gone only when a later stage failed or the object was abandoned; that
/// stage reports the real error.
fn send_batch(
    batches: &mpsc::Sender<RecordBatch>,
    batch: RecordBatch,
    uri: &str,
) -> Result<(), IngestError> {
    batches
        .blocking_send(batch)
        .map_err(|_| IngestError::Abandoned {
            uri: uri.to_owned(),
        })
}
