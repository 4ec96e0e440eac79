//! Parquet decoding through ranged reads: the footer first, then one row
//! group at a time, so memory follows the row group size, not the file's.
//!
//! A row group is fetched column chunk by column chunk, whole: a 128 MiB
//! row group costs 128 MiB while it decodes. When the file has an offset
//! index (page locations; parquet-rs, Spark and parquet-mr write one), a
//! large row group is instead read in slices of rows, and only the pages
//! a slice covers are fetched, so memory follows [`SLICE_BYTES`].

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::PageIndexPolicy;
use tokio::sync::mpsc;

use super::DecodeSummary;
use crate::error::IngestError;

/// Compressed bytes of a row group read at once, at most (about: a slice
/// also fetches the pages its edges fall in, and each column's dictionary).
pub const SLICE_BYTES: u64 = 16 << 20;

/// Decodes every row group of the object into `batches`. When the route
/// has an explicit schema, each of its columns must be in the file with
/// the same type.
///
/// `reader` is `object::S3ParquetReader` in the worker; generic so the
/// benchmarks can decode the same way from memory. Each slice of a row
/// group reads through its own clone.
pub async fn decode_parquet<R: AsyncFileReader + Clone + Unpin + Send + 'static>(
    mut reader: R,
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
    // The offset index (page locations) is what lets a slice fetch only its
    // pages; the column index (page statistics) is not needed.
    let with_offset_index = ArrowReaderOptions::new()
        .with_offset_index_policy(PageIndexPolicy::Optional)
        .with_column_index_policy(PageIndexPolicy::Skip);
    let metadata = match ArrowReaderMetadata::load_async(&mut reader, with_offset_index).await {
        Ok(metadata) => metadata,
        // Our own S3 errors (transient or not) are what they are.
        Err(err @ ParquetError::External(_)) => return Err(parquet_error(err)),
        // The index is optional: a file whose index is broken but whose
        // data is sound is read the way readers without index support do.
        Err(_) => ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
            .await
            .map_err(parquet_error)?,
    };
    let schema = metadata.schema().clone();
    if let Some(expected) = &expected_schema {
        check_schema(expected, &schema).map_err(|detail| IngestError::Schema {
            uri: uri.to_owned(),
            detail,
        })?;
    }
    let has_offset_index = metadata
        .metadata()
        .page_index()
        .is_some_and(|index| index.has_offset_indexes());
    let mut summary = DecodeSummary::empty(schema);
    for (row_group, group) in metadata.metadata().row_groups().iter().enumerate() {
        let rows = usize::try_from(group.num_rows()).unwrap_or(0);
        let compressed = u64::try_from(group.compressed_size()).unwrap_or(0);
        for selection in slices(rows, compressed, has_offset_index) {
            let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(
                reader.clone(),
                metadata.clone(),
            )
            .with_batch_size(batch_rows)
            .with_row_groups(vec![row_group]);
            if let Some(selection) = selection {
                builder = builder.with_row_selection(selection);
            }
            let mut stream = builder.build().map_err(parquet_error)?;
            while let Some(batch) = stream.try_next().await.map_err(parquet_error)? {
                summary.rows += batch.num_rows() as u64;
                summary.batches += 1;
                if batches.send(batch).await.is_err() {
                    return Err(IngestError::Abandoned {
                        uri: uri.to_owned(),
                    });
                }
            }
        }
    }
    Ok(summary)
}

/// How one row group of `rows` rows and `compressed` bytes is read: whole
/// (`None`), or, when it is larger than [`SLICE_BYTES`] and the file has
/// an offset index, as consecutive row selections of about that size.
fn slices(rows: usize, compressed: u64, has_offset_index: bool) -> Vec<Option<RowSelection>> {
    let count = compressed.div_ceil(SLICE_BYTES).max(1) as usize;
    if !has_offset_index || count == 1 || rows < count {
        return vec![None];
    }
    let rows_per_slice = rows.div_ceil(count);
    (0..rows)
        .step_by(rows_per_slice)
        .map(|start| {
            let end = (start + rows_per_slice).min(rows);
            let selectors = [
                RowSelector::skip(start),
                RowSelector::select(end - start),
                RowSelector::skip(rows - end),
            ];
            let selectors: Vec<RowSelector> =
                selectors.into_iter().filter(|s| s.row_count > 0).collect();
            Some(RowSelection::from(selectors))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Range;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use arrow::array::{AsArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use bytes::Bytes;
    use futures::FutureExt;
    use futures::future::BoxFuture;
    use parquet::arrow::ArrowWriter;
    use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
    use parquet::file::properties::WriterProperties;

    /// An in-memory file that remembers the most bytes fetched in one call.
    #[derive(Clone)]
    struct CountingReader {
        file: Bytes,
        largest_fetch: Arc<AtomicU64>,
    }

    impl AsyncFileReader for CountingReader {
        fn get_bytes(
            &mut self,
            range: Range<u64>,
        ) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
            self.largest_fetch
                .fetch_max(range.end - range.start, Ordering::Relaxed);
            let bytes = self.file.slice(range.start as usize..range.end as usize);
            async move { Ok(bytes) }.boxed()
        }

        fn get_byte_ranges(
            &mut self,
            ranges: Vec<Range<u64>>,
        ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
            let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
            self.largest_fetch.fetch_max(total, Ordering::Relaxed);
            let parts = ranges
                .into_iter()
                .map(|r| self.file.slice(r.start as usize..r.end as usize))
                .collect();
            async move { Ok(parts) }.boxed()
        }

        fn get_metadata<'a>(
            &'a mut self,
            options: Option<&'a ArrowReaderOptions>,
        ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
            async move {
                let size = self.file.len() as u64;
                let metadata = ParquetMetaDataReader::new()
                    .with_arrow_reader_options(options)
                    .load_and_finish(self, size)
                    .await?;
                Ok(Arc::new(metadata))
            }
            .boxed()
        }
    }

    /// One row group of `rows` incompressible rows (about 36 bytes each).
    fn one_row_group_file(rows: usize, offset_index: bool) -> Bytes {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("amount", DataType::Float64, false),
            Field::new("note", DataType::Utf8, false),
        ]));
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(rows))
            .set_dictionary_enabled(false)
            .set_offset_index_disabled(!offset_index)
            .build();
        let mut writer =
            ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties)).unwrap();
        let mut noise = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            noise ^= noise << 13;
            noise ^= noise >> 7;
            noise ^= noise << 17;
            noise
        };
        for start in (0..rows).step_by(65_536) {
            let end = (start + 65_536).min(rows);
            let ids = Int64Array::from_iter_values((start..end).map(|i| i as i64));
            let amounts = Float64Array::from_iter_values((start..end).map(|_| next() as f64));
            let notes =
                StringArray::from_iter_values((start..end).map(|_| format!("{:016x}", next())));
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(ids), Arc::new(amounts), Arc::new(notes)],
            )
            .unwrap();
            writer.write(&batch).unwrap();
        }
        Bytes::from(writer.into_inner().unwrap())
    }

    /// Decodes `file`; returns the ids in order and the largest fetch.
    async fn decode(file: Bytes) -> (Vec<i64>, u64) {
        let reader = CountingReader {
            file,
            largest_fetch: Arc::new(AtomicU64::new(0)),
        };
        let largest_fetch = reader.largest_fetch.clone();
        let (sender, mut receiver) = mpsc::channel(4);
        let decoder = tokio::spawn(async move {
            decode_parquet(reader, "s3://b/k.parquet", None, 8192, &sender).await
        });
        let mut ids = Vec::new();
        while let Some(batch) = receiver.recv().await {
            ids.extend(batch.column(0).as_primitive::<Int64Type>().values().iter());
        }
        let summary = decoder.await.unwrap().unwrap();
        assert_eq!(summary.rows, ids.len() as u64);
        (ids, largest_fetch.load(Ordering::Relaxed))
    }

    const ROWS: usize = 1_200_000;

    #[tokio::test]
    async fn a_large_row_group_with_an_offset_index_is_fetched_in_slices() {
        let file = one_row_group_file(ROWS, true);
        // Three slices or more: the test means something.
        assert!(
            file.len() as u64 > 2 * SLICE_BYTES + (4 << 20),
            "{}",
            file.len()
        );
        let (ids, largest_fetch) = decode(file).await;
        assert_eq!(ids, (0..ROWS as i64).collect::<Vec<_>>());
        // A slice, plus the pages its edges fall in (1 MiB pages).
        assert!(
            largest_fetch <= SLICE_BYTES + (6 << 20),
            "largest fetch {largest_fetch} bytes"
        );
    }

    #[tokio::test]
    async fn a_large_row_group_without_an_offset_index_is_fetched_whole() {
        let file = one_row_group_file(ROWS, false);
        let file_bytes = file.len() as u64;
        let (ids, largest_fetch) = decode(file).await;
        assert_eq!(ids, (0..ROWS as i64).collect::<Vec<_>>());
        assert!(
            largest_fetch > file_bytes * 9 / 10,
            "largest fetch {largest_fetch} of {file_bytes} bytes"
        );
    }

    #[test]
    fn slices_cover_every_row_once() {
        assert!(slices(1000, SLICE_BYTES, true)[0].is_none());
        assert!(slices(1000, 10 * SLICE_BYTES, false)[0].is_none());
        assert!(slices(3, 10 * SLICE_BYTES, true)[0].is_none());
        let rows = 1_000_003;
        let parts = slices(rows, 5 * SLICE_BYTES + 1, true);
        assert_eq!(parts.len(), 6);
        let mut covered = 0;
        for part in parts {
            let selectors: Vec<RowSelector> = part.unwrap().into();
            assert!(selectors.iter().all(|s| s.row_count > 0));
            assert_eq!(selectors.iter().map(|s| s.row_count).sum::<usize>(), rows);
            let selected: Vec<&RowSelector> = selectors.iter().filter(|s| !s.skip).collect();
            assert_eq!(selected.len(), 1);
            let before: usize = selectors
                .iter()
                .take_while(|s| s.skip)
                .map(|s| s.row_count)
                .sum();
            assert_eq!(before, covered, "slices are consecutive");
            covered += selected[0].row_count;
        }
        assert_eq!(covered, rows);
    }

    #[tokio::test]
    async fn a_broken_offset_index_is_ignored_and_the_data_read_whole() {
        let file = one_row_group_file(ROWS, true);
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .unwrap();
        let mut broken = file.to_vec();
        for column in metadata.row_group(0).columns() {
            let range = column
                .offset_index_range()
                .expect("written with an offset index");
            broken[range.start as usize..range.end as usize].fill(0xff);
        }
        let broken = Bytes::from(broken);
        let with_index =
            ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
        assert!(
            ArrowReaderMetadata::load(&broken, with_index).is_err(),
            "the index should be unreadable, or this test proves nothing"
        );
        let (ids, _) = decode(broken).await;
        assert_eq!(ids, (0..ROWS as i64).collect::<Vec<_>>());
    }
}
