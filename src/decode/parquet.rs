//! Parquet decoding through ranged reads: the footer first, then one row
//! group at a time, so memory follows the row group size, not the file's.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use tokio::sync::mpsc;

use super::DecodeSummary;
use crate::error::IngestError;

/// Decodes every row group of the object into `batches`. When the route
/// has an explicit schema, each of its columns must be in the file with
/// the same type.
///
/// `reader` is `object::S3ParquetReader` in the worker; generic so the
/// benchmarks can decode the same way from memory.
pub async fn decode_parquet<R: AsyncFileReader + Unpin + Send + 'static>(
    reader: R,
    uri: &str,
    expected_schema: Option<SchemaRef>,
    batch_rows: usize,
    batches: &mpsc::Sender<RecordBatch>,
) -> Result<DecodeSummary, IngestError> {
    let parquet_error = |err: ParquetError| match err {
        // Our own S3 errors travel through the reader as `External`.
        ParquetError::External(inner) => match inner.downcast::<IngestError>() {
            Ok(ingest) => *ingest,
            Err(other) => IngestError::Parquet {
                uri: uri.to_owned(),
                detail: other.to_string(),
            },
        },
        other => IngestError::Parquet {
            uri: uri.to_owned(),
            detail: other.to_string(),
        },
    };
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(parquet_error)?
        .with_batch_size(batch_rows);
    let schema = builder.schema().clone();
    if let Some(expected) = &expected_schema {
        check_schema(expected, &schema).map_err(|detail| IngestError::Schema {
            uri: uri.to_owned(),
            detail,
        })?;
    }
    let mut stream = builder.build().map_err(parquet_error)?;
    let mut summary = DecodeSummary::empty(schema);
    while let Some(batch) = stream.try_next().await.map_err(parquet_error)? {
        summary.rows += batch.num_rows() as u64;
        summary.batches += 1;
        if batches.send(batch).await.is_err() {
            return Err(IngestError::Abandoned {
                uri: uri.to_owned(),
            });
        }
    }
    Ok(summary)
}

fn check_schema(expected: &SchemaRef, actual: &SchemaRef) -> Result<(), String> {
    for field in expected.fields() {
        let found = actual
            .field_with_name(field.name())
            .map_err(|_| format!("column `{}` is not in the file", field.name()))?;
        if found.data_type() != field.data_type() {
            return Err(format!(
                "column `{}` is {} in the file, the route expects {}",
                field.name(),
                found.data_type(),
                field.data_type()
            ));
        }
    }
    Ok(())
}
