//! Batches → request bodies: Arrow IPC stream or NDJSON pieces, each
//! within the part's budget, that concatenate into one valid body between
//! a header and a footer; and gzip for the wire.

use std::io::Write;

use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::{
    DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions, write_message,
};
use arrow::record_batch::RecordBatch;

use super::HttpFormat;
use crate::sink::SinkError;

/// The end-of-stream marker of the Arrow IPC stream format: a continuation
/// marker followed by a zero message length.
const ARROW_STREAM_END: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

/// Encodes batches into self-contained pieces that concatenate into a
/// valid body: `header + piece + piece + ... + footer`.
pub(super) struct PartEncoder {
    format: HttpFormat,
    schema: SchemaRef,
    /// Arrow: the schema message. NDJSON: empty.
    pub(super) header: Vec<u8>,
    /// Arrow: the end-of-stream marker. NDJSON: empty.
    pub(super) footer: &'static [u8],
}

/// One encoded slice of a batch.
pub(super) struct Piece {
    pub(super) bytes: Vec<u8>,
    pub(super) rows: usize,
}

impl PartEncoder {
    pub(super) fn new(format: HttpFormat, schema: SchemaRef) -> Result<PartEncoder, SinkError> {
        let (header, footer): (Vec<u8>, &'static [u8]) = match format {
            HttpFormat::Ndjson => (Vec::new(), &[]),
            HttpFormat::ArrowStream => {
                let options = IpcWriteOptions::default();
                let message = IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
                    &schema,
                    &mut DictionaryTracker::new(false),
                    &options,
                );
                let mut header = Vec::new();
                write_message(&mut header, message, &options).map_err(|err| {
                    SinkError::permanent(format!("cannot encode the schema as Arrow IPC: {err}"))
                })?;
                (header, &ARROW_STREAM_END)
            }
        };
        Ok(PartEncoder {
            format,
            schema,
            header,
            footer,
        })
    }

    /// Bytes a part may spend on pieces.
    pub(super) fn piece_budget(&self, max_request_bytes: usize) -> usize {
        max_request_bytes.saturating_sub(self.header.len() + self.footer.len())
    }

    /// Encodes `batch` into pieces of at most `budget` bytes each, halving
    /// it by rows as often as needed. Deterministic: the same batch gives
    /// the same pieces.
    pub(super) fn pieces(
        &self,
        batch: &RecordBatch,
        budget: usize,
    ) -> Result<Vec<Piece>, SinkError> {
        let mut pieces = Vec::new();
        // Depth-first over halves, so pieces come out in row order.
        let mut pending = vec![batch.clone()];
        while let Some(slice) = pending.pop() {
            let bytes = self.encode(&slice)?;
            if bytes.len() <= budget {
                if slice.num_rows() > 0 {
                    pieces.push(Piece {
                        bytes,
                        rows: slice.num_rows(),
                    });
                }
                continue;
            }
            if slice.num_rows() <= 1 {
                return Err(SinkError::permanent(format!(
                    "one row encodes to {} bytes as {}, more than max_request_bytes allows ({budget} bytes after framing)",
                    bytes.len(),
                    self.format.name()
                )));
            }
            let half = slice.num_rows() / 2;
            pending.push(slice.slice(half, slice.num_rows() - half));
            pending.push(slice.slice(0, half));
        }
        Ok(pieces)
    }

    fn encode(&self, batch: &RecordBatch) -> Result<Vec<u8>, SinkError> {
        let encode_error = |err: arrow::error::ArrowError| {
            SinkError::permanent(format!(
                "cannot encode a batch as {}: {err}",
                self.format.name()
            ))
        };
        let mut bytes = Vec::new();
        match self.format {
            HttpFormat::Ndjson => {
                let mut writer = arrow::json::LineDelimitedWriter::new(&mut bytes);
                writer.write(batch).map_err(encode_error)?;
                writer.finish().map_err(encode_error)?;
            }
            HttpFormat::ArrowStream => {
                // A fresh dictionary tracker per piece: each piece carries
                // its own dictionaries, so pieces stay independent of the
                // part they land in (a later one replaces the earlier one, as
                // the stream format allows).
                let generator = IpcDataGenerator::default();
                let options = IpcWriteOptions::default();
                let mut tracker = DictionaryTracker::new(false);
                generator.schema_to_bytes_with_dictionary_tracker(
                    &self.schema,
                    &mut tracker,
                    &options,
                );
                let (dictionaries, message) = generator
                    .encode(
                        batch,
                        &mut tracker,
                        &options,
                        &mut IpcWriteContext::default(),
                    )
                    .map_err(encode_error)?;
                for encoded in dictionaries.into_iter().chain([message]) {
                    write_message(&mut bytes, encoded, &options).map_err(encode_error)?;
                }
            }
        }
        Ok(bytes)
    }
}

pub(super) fn gzip(data: &[u8]) -> Result<Vec<u8>, SinkError> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    encoder
        .write_all(data)
        .and_then(|()| encoder.finish())
        .map_err(|err| SinkError::transient(format!("gzip failed: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::http::tests::batch;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn a_large_batch_is_split_into_pieces_within_budget_in_row_order() {
        for format in [HttpFormat::Ndjson, HttpFormat::ArrowStream] {
            let big = batch(5000);
            let encoder = PartEncoder::new(format, big.schema()).unwrap();
            let budget = encoder.piece_budget(16 * 1024);
            let pieces = encoder.pieces(&big, budget).unwrap();
            assert!(pieces.len() > 1, "{format:?}");
            assert!(pieces.iter().all(|p| p.bytes.len() <= budget));
            assert_eq!(pieces.iter().map(|p| p.rows).sum::<usize>(), 5000);
            let again = encoder.pieces(&big, budget).unwrap();
            assert!(
                pieces.iter().zip(&again).all(|(a, b)| a.bytes == b.bytes),
                "pieces are deterministic"
            );
        }
    }

    #[test]
    fn arrow_pieces_concatenate_into_a_readable_stream() {
        let encoder = PartEncoder::new(HttpFormat::ArrowStream, batch(0).schema()).unwrap();
        let mut body = encoder.header.clone();
        for piece in encoder.pieces(&batch(300), 4096).unwrap() {
            body.extend(piece.bytes);
        }
        body.extend_from_slice(encoder.footer);
        let reader = arrow::ipc::reader::StreamReader::try_new(&body[..], None).unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        let ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(ids, (0..300).collect::<Vec<_>>());
    }

    #[test]
    fn dictionary_columns_survive_being_cut_into_pieces() {
        use arrow::array::{Array, DictionaryArray};
        use arrow::datatypes::Int32Type;
        let values: DictionaryArray<Int32Type> =
            (0..400).map(|i| ["red", "green", "blue"][i % 3]).collect();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "colour",
            values.data_type().clone(),
            false,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).unwrap();
        let encoder = PartEncoder::new(HttpFormat::ArrowStream, schema).unwrap();
        let pieces = encoder.pieces(&batch, 1024).unwrap();
        assert!(pieces.len() > 1);
        let mut body = encoder.header.clone();
        for piece in pieces {
            body.extend(piece.bytes);
        }
        body.extend_from_slice(encoder.footer);
        let reader = arrow::ipc::reader::StreamReader::try_new(&body[..], None).unwrap();
        let mut colours = Vec::new();
        for batch in reader {
            let batch = arrow::compute::cast(batch.unwrap().column(0), &DataType::Utf8).unwrap();
            let strings = batch.as_any().downcast_ref::<StringArray>().unwrap();
            colours.extend(strings.iter().map(|s| s.unwrap().to_owned()));
        }
        let expected: Vec<&str> = (0..400).map(|i| ["red", "green", "blue"][i % 3]).collect();
        assert_eq!(colours, expected);
    }

    #[test]
    fn a_row_larger_than_the_bound_is_a_permanent_error() {
        let encoder = PartEncoder::new(HttpFormat::Ndjson, batch(0).schema()).unwrap();
        let err = encoder.pieces(&batch(3), 5).err().unwrap();
        assert!(!err.is_retryable());
        assert!(err.detail.contains("one row encodes to"), "{}", err.detail);
    }
}
