//! Parquet encoding that uses every core for one file.
//!
//! `ArrowWriter` encodes the columns of a row group one after another on
//! the thread that calls it, so one large object keeps one core busy
//! while the others idle. [`ParquetEncoder`] writes the same files with
//! the same row groups, but hands each column chunk of a batch (and the
//! closing of each column chunk, where the last pages are compressed) to
//! the process's CPU pool (`crate::parallel`), as parquet's own
//! `ArrowColumnWriter` example describes. Memory is what `ArrowWriter`
//! holds: one row group's encoded pages per column, bounded the same way.
//!
//! Small batches are encoded on the calling thread: handing a few rows to
//! the pool costs more than it saves.

use std::io::Write;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory,
    compute_leaves,
};
use parquet::errors::{ParquetError, Result};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use rayon::prelude::*;

/// A batch with at least this many bytes of Arrow arrays is encoded on
/// the pool; smaller ones on the calling thread.
const PARALLEL_MIN_BATCH_BYTES: usize = 256 << 10;

/// Writes record batches as one Parquet file into `W`, in row groups of at
/// most `max_row_group_row_count` rows (from the properties) and about
/// `row_group_bytes` encoded bytes, whichever comes first.
pub struct ParquetEncoder<W: Write + Send> {
    file: SerializedFileWriter<W>,
    column_writers: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// The row group being encoded, if any rows are buffered.
    in_progress: Option<RowGroup>,
    row_groups: usize,
    max_rows: usize,
    row_group_bytes: usize,
}

struct RowGroup {
    /// One per leaf column, in the schema's order.
    columns: Vec<ArrowColumnWriter>,
    rows: usize,
}

impl RowGroup {
    fn encoded_bytes(&self) -> usize {
        self.columns
            .iter()
            .map(ArrowColumnWriter::get_estimated_total_bytes)
            .sum()
    }
}

impl<W: Write + Send> ParquetEncoder<W> {
    pub fn try_new(
        out: W,
        schema: SchemaRef,
        properties: WriterProperties,
        row_group_bytes: usize,
    ) -> Result<ParquetEncoder<W>> {
        let max_rows = properties
            .max_row_group_row_count()
            .unwrap_or(usize::MAX)
            .max(1);
        // `ArrowWriter` sets up the file as it would write it itself (the
        // Arrow schema in the footer, the properties' metadata), then
        // hands over its lower-level parts.
        let (file, column_writers) = ArrowWriter::try_new(out, schema.clone(), Some(properties))?
            .into_serialized_writer()?;
        Ok(ParquetEncoder {
            file,
            column_writers,
            schema,
            in_progress: None,
            row_groups: 0,
            max_rows,
            row_group_bytes,
        })
    }

    /// Encodes `batch`, closing row groups as they fill.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut rest = batch.clone();
        while rest.num_rows() > 0 {
            let buffered = self.in_progress.as_ref().map_or(0, |group| group.rows);
            let take = rest.num_rows().min(self.max_rows - buffered);
            let part = rest.slice(0, take);
            rest = rest.slice(take, rest.num_rows() - take);
            self.write_part(&part)?;
            let group = self.in_progress.as_ref().expect("just written");
            if group.rows >= self.max_rows || group.encoded_bytes() >= self.row_group_bytes {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Rows of a batch that fit in the row group in progress.
    fn write_part(&mut self, part: &RecordBatch) -> Result<()> {
        if self.in_progress.is_none() {
            self.in_progress = Some(RowGroup {
                columns: self.column_writers.create_column_writers(self.row_groups)?,
                rows: 0,
            });
        }
        let group = self.in_progress.as_mut().expect("just set");
        let mut leaves: Vec<ArrowLeafColumn> = Vec::with_capacity(group.columns.len());
        for (field, column) in self.schema.fields().iter().zip(part.columns()) {
            leaves.extend(compute_leaves(field, column)?);
        }
        if leaves.len() != group.columns.len() {
            return Err(ParquetError::General(format!(
                "batch has {} leaf columns, the file {}",
                leaves.len(),
                group.columns.len()
            )));
        }
        if part.get_array_memory_size() >= PARALLEL_MIN_BATCH_BYTES && leaves.len() > 1 {
            group
                .columns
                .par_iter_mut()
                .zip(leaves.par_iter())
                .try_for_each(|(writer, leaf)| writer.write(leaf))?;
        } else {
            for (writer, leaf) in group.columns.iter_mut().zip(&leaves) {
                writer.write(leaf)?;
            }
        }
        group.rows += part.num_rows();
        Ok(())
    }

    /// Closes the row group in progress (if any) and writes it out.
    pub fn flush(&mut self) -> Result<()> {
        let Some(group) = self.in_progress.take() else {
            return Ok(());
        };
        // Closing a column compresses its last page: worth the pool for
        // a full row group.
        let chunks: Vec<ArrowColumnChunk> = group
            .columns
            .into_par_iter()
            .map(ArrowColumnWriter::close)
            .collect::<Result<_>>()?;
        let mut row_group = self.file.next_row_group()?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        self.row_groups += 1;
        // Out of parquet's write buffer, so a draining caller sees the
        // whole row group.
        self.file.flush()?;
        Ok(())
    }

    /// Encoded size of the row group in progress (an estimate until it is
    /// flushed).
    pub fn in_progress_size(&self) -> usize {
        self.in_progress.as_ref().map_or(0, RowGroup::encoded_bytes)
    }

    /// Bytes written to the output so far (closed row groups), plus the
    /// estimated size of the row group in progress.
    pub fn output_size(&self) -> u64 {
        self.file.bytes_written() as u64 + self.in_progress_size() as u64
    }

    /// Adds a key-value pair to the footer (written at the end).
    pub fn append_key_value_metadata(&mut self, key_value: parquet::file::metadata::KeyValue) {
        self.file.append_key_value_metadata(key_value);
    }

    /// The output so far, for a caller that drains it as it goes (an
    /// upload): only bytes of closed row groups are ever in it, and the
    /// footer after [`ParquetEncoder::into_inner`].
    pub fn inner_mut(&mut self) -> &mut W {
        self.file.inner_mut()
    }

    /// Writes the last row group and the footer; returns the output.
    pub fn into_inner(mut self) -> Result<W> {
        self.flush()?;
        self.file.into_inner()
    }

    /// As [`ParquetEncoder::into_inner`], for a caller that keeps
    /// draining [`ParquetEncoder::inner_mut`].
    pub fn finish(&mut self) -> Result<()> {
        self.flush()?;
        self.file.finish()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, StringArray, StructArray};
    use arrow::datatypes::{DataType, Field, Fields, Schema};
    use bytes::Bytes;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    fn schema() -> SchemaRef {
        let nested = Fields::from(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]);
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("pair", DataType::Struct(nested), true),
        ]))
    }

    fn batch(start: i64, rows: usize) -> RecordBatch {
        let ids: Vec<i64> = (start..start + rows as i64).collect();
        let names: Vec<Option<String>> = ids
            .iter()
            .map(|id| (id % 7 != 0).then(|| format!("name-{id}-{}", "x".repeat(40))))
            .collect();
        let a: ArrayRef = Arc::new(Int64Array::from(ids.clone()));
        let b: ArrayRef = Arc::new(StringArray::from(names.clone()));
        let schema = schema();
        let DataType::Struct(fields) = schema.field(2).data_type().clone() else {
            unreachable!()
        };
        let pair = StructArray::new(fields, vec![a, b], None);
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
                Arc::new(pair),
            ],
        )
        .unwrap()
    }

    fn properties(max_rows: usize) -> WriterProperties {
        WriterProperties::builder()
            .set_max_row_group_row_count(Some(max_rows))
            .build()
    }

    fn encode(batches: &[RecordBatch], max_rows: usize, row_group_bytes: usize) -> Bytes {
        let mut encoder =
            ParquetEncoder::try_new(Vec::new(), schema(), properties(max_rows), row_group_bytes)
                .unwrap();
        for batch in batches {
            encoder.write(batch).unwrap();
        }
        Bytes::from(encoder.into_inner().unwrap())
    }

    fn read(file: Bytes) -> Vec<RecordBatch> {
        ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap()
    }

    fn row_group_rows(file: Bytes) -> Vec<i64> {
        let reader = SerializedFileReader::new(file).unwrap();
        reader
            .metadata()
            .row_groups()
            .iter()
            .map(|group| group.num_rows())
            .collect()
    }

    #[test]
    fn large_and_small_batches_read_back_as_written() {
        // 40 000 rows is several MiB of arrays: encoded on the pool; the
        // 10-row batch on the calling thread.
        let batches = vec![batch(0, 40_000), batch(40_000, 10), batch(40_010, 25_000)];
        let file = encode(&batches, 1 << 20, usize::MAX);
        let expected = arrow::compute::concat_batches(&schema(), &batches).unwrap();
        let read = read(file);
        let got = arrow::compute::concat_batches(&schema(), &read).unwrap();
        assert_eq!(got, expected);
    }

    #[test]
    fn row_groups_are_cut_at_the_row_limit_as_arrow_writer_cuts_them() {
        let batches = vec![batch(0, 700), batch(700, 700), batch(1_400, 100)];
        let ours = row_group_rows(encode(&batches, 500, usize::MAX));
        let mut theirs = ArrowWriter::try_new(Vec::new(), schema(), Some(properties(500))).unwrap();
        for batch in &batches {
            theirs.write(batch).unwrap();
        }
        let theirs = row_group_rows(Bytes::from(theirs.into_inner().unwrap()));
        assert_eq!(ours, vec![500, 500, 500]);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn row_groups_are_cut_by_encoded_bytes() {
        let batches: Vec<_> = (0..8).map(|i| batch(i * 5_000, 5_000)).collect();
        let rows = row_group_rows(encode(&batches, 1 << 20, 64 << 10));
        assert!(rows.len() > 1, "one row group despite the byte limit");
        assert_eq!(rows.iter().sum::<i64>(), 40_000);
    }

    #[test]
    fn a_file_without_rows_has_a_footer_and_no_row_group() {
        let file = encode(&[], 100, usize::MAX);
        assert!(row_group_rows(file.clone()).is_empty());
        assert!(read(file).is_empty());
    }

    #[test]
    fn a_drained_output_holds_the_whole_file() {
        // The s3_parquet upload takes the bytes after every row group.
        let mut encoder =
            ParquetEncoder::try_new(Vec::new(), schema(), properties(1_000), usize::MAX).unwrap();
        let mut drained = Vec::new();
        for i in 0..5 {
            encoder.write(&batch(i * 700, 700)).unwrap();
            drained.append(encoder.inner_mut());
        }
        encoder.finish().unwrap();
        drained.append(encoder.inner_mut());
        let read = read(Bytes::from(drained));
        assert_eq!(read.iter().map(RecordBatch::num_rows).sum::<usize>(), 3_500);
    }
}
