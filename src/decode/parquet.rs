//! Parquet decoding through ranged reads: the footer first, then one row
//! group at a time, so memory follows the row group size, not the file's.
//!
//! The footer is checked and repaired before anything else is read (see
//! [`prepare`]): row counts must add up, every column chunk must lie
//! inside the object, and a `dictionary_page_offset` of 0 (old parquet-mr
//! and Impala) is read as absent, as Arrow C++ and parquet-mr read it.
//!
//! A row group is fetched column chunk by column chunk, whole, unless it
//! has an offset index (page locations; parquet-rs, Spark and parquet-mr
//! write one): then a large row group is read in slices of rows, and only
//! the pages a slice covers are fetched, so memory follows
//! [`SLICE_BYTES`]. A large row group without one (pyarrow's default) gets
//! an offset index made from its page headers, read with small ranged
//! reads, when every column is flat. A row group that still has to be read
//! whole must fit in the route's `max_row_group_bytes`, and no page may
//! declare more than that uncompressed ([`PageGuard`]), so a footer or a
//! page header cannot make the worker allocate what it merely claims.
//!
//! Each row group, or slice, is fetched and decoded on a blocking thread
//! of its own while the one before it is handed on, so a large object
//! does not wait on each of its reads in turn; the reads of one row group
//! or slice are merged where close and made at once (`byte_ranges`).
//!
//! Every row group must decode to exactly the rows its footer declares,
//! and the file to its total; anything else is a `parquet_error`, never a
//! commit.

use std::ops::Range;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::{
    ColumnChunkMetaData, OffsetIndexBuilder, PageIndexPolicy, ParquetMetaData, ParquetOffsetIndex,
    RowGroupMetaData,
};
use parquet::file::page_index::offset_index::OffsetIndexMetaData;
use tokio::sync::mpsc;
use tracing::warn;

use super::DecodeSummary;
use super::page_header::{self, Parsed};
use crate::error::IngestError;

/// Compressed bytes of a row group read at once, at most (about: a slice
/// also fetches the pages its edges fall in, and each column's dictionary).
pub const SLICE_BYTES: u64 = 16 << 20;

/// The default of a route's `max_row_group_bytes`.
pub const DEFAULT_MAX_ROW_GROUP_BYTES: u64 = 256 << 20;

/// The first read of a page header when an offset index is made from
/// them; a header with large statistics is read again, up to
/// [`MAX_HEADER_BYTES`].
const HEADER_PROBE_BYTES: u64 = 1024;
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// Column chunks whose page headers are read at the same time.
const HEADER_WALKS_IN_FLIGHT: usize = 8;

/// What the decoder needs to know besides the bytes.
#[derive(Debug, Clone, Copy)]
pub struct ParquetLimits {
    /// The object's size: every range the footer names must lie within it.
    pub file_size: u64,
    /// The most compressed bytes of a row group read whole (one that
    /// cannot be read in slices), and the most bytes a page may declare
    /// uncompressed.
    pub max_row_group_bytes: u64,
}

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
    limits: ParquetLimits,
    batches: &mpsc::Sender<RecordBatch>,
) -> Result<DecodeSummary, IngestError> {
    let parquet_error = |err: ParquetError| into_ingest_error(uri, err);
    let invalid = |detail: String| IngestError::Parquet {
        uri: uri.to_owned(),
        detail,
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
    let metadata = prepare(&mut reader, metadata, uri, limits).await?;
    let schema = metadata.schema().clone();
    if let Some(expected) = &expected_schema {
        check_schema(expected, &schema).map_err(|detail| IngestError::Schema {
            uri: uri.to_owned(),
            detail,
        })?;
    }
    let reader = PageGuard::new(reader, metadata.metadata(), uri, limits.max_row_group_bytes);
    let declared_rows = metadata.metadata().file_metadata().num_rows() as u64;
    let units = plan_units(metadata.metadata(), limits.max_row_group_bytes).map_err(invalid)?;
    let mut summary = DecodeSummary::empty(schema);
    summary.expected_rows = Some(declared_rows);
    let mut decoded_by_group = vec![0u64; metadata.metadata().num_row_groups()];
    let read_unit =
        |unit: &Unit| UnitDecode::start(reader.clone(), metadata.clone(), unit, batch_rows, uri);
    // One unit is decoded while the next is fetched (and its first
    // batches decoded) on another thread, so the object does not wait on
    // each GET in turn. Only units of at most `SLICE_BYTES` are read ahead:
    // a large row group read whole keeps the memory bound it had.
    let mut ahead: Option<UnitDecode> = None;
    for (index, unit) in units.iter().enumerate() {
        let mut current = ahead.take().unwrap_or_else(|| read_unit(unit));
        ahead = units
            .get(index + 1)
            .filter(|next| next.compressed <= SLICE_BYTES)
            .map(read_unit);
        while let Some(batch) = current.next_batch(uri).await? {
            decoded_by_group[unit.row_group] += batch.num_rows() as u64;
            summary.batches += 1;
            if batches.send(batch).await.is_err() {
                return Err(IngestError::Abandoned {
                    uri: uri.to_owned(),
                });
            }
        }
    }
    for (row_group, (group, decoded)) in metadata
        .metadata()
        .row_groups()
        .iter()
        .zip(decoded_by_group)
        .enumerate()
    {
        // Checked non-negative by `prepare`.
        let declared = group.num_rows() as u64;
        if decoded != declared {
            return Err(invalid(format!(
                "row group {row_group} decoded to {decoded} rows, its footer declares {declared}"
            )));
        }
        summary.rows += decoded;
    }
    if summary.rows != declared_rows {
        return Err(invalid(format!(
            "the file decoded to {} rows, its footer declares {declared_rows}",
            summary.rows
        )));
    }
    Ok(summary)
}

/// One read of the decoder: a row group whole, or a slice of its rows.
struct Unit {
    row_group: usize,
    selection: Option<RowSelection>,
    /// About the compressed bytes it fetches.
    compressed: u64,
}

/// Every row group's units, in file order; an error names a row group too
/// large to read whole that cannot be read in slices.
fn plan_units(metadata: &ParquetMetaData, max_row_group_bytes: u64) -> Result<Vec<Unit>, String> {
    let mut units = Vec::new();
    for (row_group, group) in metadata.row_groups().iter().enumerate() {
        // Both checked non-negative by `prepare`.
        let declared = group.num_rows() as usize;
        let compressed = group.compressed_size() as u64;
        let indexed = has_offset_index(metadata, row_group);
        if !indexed && compressed > max_row_group_bytes {
            return Err(format!(
                "row group {row_group} is {compressed} bytes compressed and has no offset index \
                 to read it in slices (nor flat columns to make one from its page headers); \
                 the route's max_row_group_bytes is {max_row_group_bytes}"
            ));
        }
        let selections = slices(declared, compressed, indexed);
        let per_unit = compressed.div_ceil(selections.len() as u64);
        units.extend(selections.into_iter().map(|selection| Unit {
            row_group,
            selection,
            compressed: per_unit,
        }));
    }
    Ok(units)
}

/// Batches a unit decodes ahead of the consumer, at most.
const UNIT_BATCHES_AHEAD: usize = 2;

/// A unit being fetched and decoded on a blocking thread of its own,
/// its batches (or its error) coming through a small channel.
struct UnitDecode {
    batches: mpsc::Receiver<Result<RecordBatch, IngestError>>,
    task: tokio::task::JoinHandle<()>,
}

impl UnitDecode {
    fn start<R: AsyncFileReader + Clone + Unpin + Send + 'static>(
        reader: PageGuard<R>,
        metadata: ArrowReaderMetadata,
        unit: &Unit,
        batch_rows: usize,
        uri: &str,
    ) -> UnitDecode {
        let (sender, receiver) = mpsc::channel(UNIT_BATCHES_AHEAD);
        let runtime = tokio::runtime::Handle::current();
        let row_group = unit.row_group;
        let selection = unit.selection.clone();
        let uri = uri.to_owned();
        let task = tokio::task::spawn_blocking(move || {
            runtime.block_on(async move {
                let decoded = decode_unit(
                    reader, metadata, row_group, selection, batch_rows, &uri, &sender,
                )
                .await;
                if let Err(err) = decoded {
                    let _ = sender.send(Err(err)).await;
                }
            })
        });
        UnitDecode {
            batches: receiver,
            task,
        }
    }

    /// The unit's next batch; `None` once it is done.
    async fn next_batch(&mut self, uri: &str) -> Result<Option<RecordBatch>, IngestError> {
        match self.batches.recv().await {
            Some(batch) => batch.map(Some),
            // The channel closes when the task ends: a panic is an error,
            // not an early end of data.
            None => match (&mut self.task).await {
                Ok(()) => Ok(None),
                Err(err) if err.is_panic() => Err(IngestError::Parquet {
                    uri: uri.to_owned(),
                    detail: format!("decoding a row group failed: {err}"),
                }),
                // Cancelled: the runtime is shutting down.
                Err(_) => Err(IngestError::Abandoned {
                    uri: uri.to_owned(),
                }),
            },
        }
    }
}

/// Fetches and decodes one unit into `batches`; stops quietly when the
/// receiver is gone (the object failed or was abandoned elsewhere).
async fn decode_unit<R: AsyncFileReader + Clone + Unpin + Send + 'static>(
    reader: PageGuard<R>,
    metadata: ArrowReaderMetadata,
    row_group: usize,
    selection: Option<RowSelection>,
    batch_rows: usize,
    uri: &str,
    batches: &mpsc::Sender<Result<RecordBatch, IngestError>>,
) -> Result<(), IngestError> {
    let parquet_error = |err: ParquetError| into_ingest_error(uri, err);
    let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata)
        .with_batch_size(batch_rows)
        .with_row_groups(vec![row_group]);
    if let Some(selection) = selection {
        builder = builder.with_row_selection(selection);
    }
    let mut stream = builder.build().map_err(parquet_error)?;
    while let Some(batch) = stream.try_next().await.map_err(parquet_error)? {
        if batches.send(Ok(batch)).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// A reader error as the object's error: our own S3 errors travel through
/// the reader as `External` and come out as they went in.
fn into_ingest_error(uri: &str, err: ParquetError) -> IngestError {
    match err {
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
    }
}

/// Checks the footer before any data is read, repairs what mainstream
/// readers repair, and adds offset indexes made from page headers where
/// that lets a large row group be read in slices:
///
/// - the row counts must be non-negative and the row groups' add up to
///   the file's;
/// - a `dictionary_page_offset` that is not between 0 and the first data
///   page (exclusive of 0) is dropped: old parquet-mr and Impala wrote 0
///   for "none", with `data_page_offset` at the chunk's start (where the
///   dictionary page, if any, is); Arrow C++ and parquet-mr read it so,
///   while parquet-rs would read the column from the file's first byte;
/// - parquet-mr before 1.2.9 left its dictionary page's header out of the
///   column chunk's length (PARQUET-816), so the chunk ends before its
///   last page does; for files it wrote, the header's length is added
///   back (exactly: Arrow C++ pads up to 100 bytes, but parquet-rs would
///   read the padding as pages);
/// - every column chunk must lie inside the object (parquet-rs panics on
///   a negative offset and asks for ranges past the end);
/// - an offset index whose pages are not inside their column chunks is
///   dropped, like one that does not parse.
async fn prepare<R: AsyncFileReader + Clone + Send>(
    reader: &mut R,
    loaded: ArrowReaderMetadata,
    uri: &str,
    limits: ParquetLimits,
) -> Result<ArrowReaderMetadata, IngestError> {
    let invalid = |detail: String| IngestError::Parquet {
        uri: uri.to_owned(),
        detail,
    };
    let footer = loaded.metadata();
    let declared = footer.file_metadata().num_rows();
    let mut row_group_rows = 0i64;
    for (index, group) in footer.row_groups().iter().enumerate() {
        if group.num_rows() < 0 {
            return Err(invalid(format!(
                "row group {index} declares {} rows",
                group.num_rows()
            )));
        }
        row_group_rows = row_group_rows.saturating_add(group.num_rows());
    }
    if declared < 0 || row_group_rows != declared {
        return Err(invalid(format!(
            "the footer declares {declared} rows, its row groups {row_group_rows}"
        )));
    }

    let mut changed = false;
    let mut row_groups = footer.row_groups().to_vec();
    let uncounted_dictionary_headers =
        writes_uncounted_dictionary_headers(footer.file_metadata().created_by());
    for (index, group) in row_groups.iter_mut().enumerate() {
        for column in group.columns_mut() {
            if let Some(repaired) = without_bogus_dictionary_offset(column) {
                *column = repaired;
                changed = true;
            }
            if uncounted_dictionary_headers
                && let Some(repaired) =
                    with_dictionary_header_counted(reader, column, limits.file_size, uri).await?
            {
                *column = repaired;
                changed = true;
            }
            check_column_range(column, limits.file_size)
                .map_err(|detail| invalid(format!("row group {index}: {detail}")))?;
        }
    }
    // Per row group, one offset index per column, or none (an empty list).
    let mut offset_index: Option<ParquetOffsetIndex> = footer.offset_index().cloned();
    if offset_index.is_some()
        && let Err(detail) = check_offset_indexes(footer, &row_groups)
    {
        warn!(uri, reason = %detail, "Parquet offset index ignored; row groups are read whole");
        offset_index = None;
        changed = true;
    }
    let file_has_offset_index = offset_index
        .as_ref()
        .is_some_and(|index| index.iter().any(|columns| !columns.is_empty()));
    if !file_has_offset_index {
        let made = offset_indexes_from_page_headers(reader, &row_groups, uri, limits).await?;
        if !made.is_empty() {
            let mut index: ParquetOffsetIndex = vec![Vec::new(); row_groups.len()];
            for (row_group, indexes) in made {
                index[row_group] = indexes;
            }
            offset_index = Some(index);
            changed = true;
        }
    }
    if !changed {
        return Ok(loaded);
    }
    let mut builder = footer.as_ref().clone().into_builder();
    builder = builder.set_row_groups(row_groups);
    builder = builder.set_offset_index(offset_index);
    ArrowReaderMetadata::try_new(Arc::new(builder.build()), ArrowReaderOptions::new())
        .map_err(|err| into_ingest_error(uri, err))
}

/// `column` without its `dictionary_page_offset`, when that offset cannot
/// be where the dictionary is (see [`prepare`]); `None` when it is fine.
fn without_bogus_dictionary_offset(column: &ColumnChunkMetaData) -> Option<ColumnChunkMetaData> {
    let dictionary = column.dictionary_page_offset()?;
    if dictionary > 0 && dictionary <= column.data_page_offset() {
        return None;
    }
    column
        .clone()
        .into_builder()
        .set_dictionary_page_offset(None)
        .build()
        .ok()
}

/// Whether `created_by` names parquet-mr before 1.2.9, which left the
/// dictionary page's header out of a column chunk's length (PARQUET-816).
/// As in Arrow C++, a parquet-mr without a readable version counts as
/// old; any other writer never needs the repair.
fn writes_uncounted_dictionary_headers(created_by: Option<&str>) -> bool {
    let Some(created_by) = created_by else {
        return false;
    };
    let (application, rest) = created_by
        .split_once(" version")
        .unwrap_or((created_by, ""));
    if application.trim() != "parquet-mr" {
        return false;
    }
    // "1.2.8", "1.2.8-SNAPSHOT", "1.2.8-cdh5 (build abc)": the leading
    // numbers count, a missing one is 0.
    let version = rest.split_whitespace().next().unwrap_or("");
    let mut numbers = version.split('.').map(|part| {
        part.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u64>()
            .unwrap_or(0)
    });
    let mut next = || numbers.next().unwrap_or(0);
    (next(), next(), next()) < (1, 2, 9)
}

/// `column` with its dictionary page's header counted in its length, when
/// its chunk starts with a dictionary page (see [`prepare`]); `None` when
/// there is none.
async fn with_dictionary_header_counted<R: AsyncFileReader>(
    reader: &mut R,
    column: &ColumnChunkMetaData,
    file_size: u64,
    uri: &str,
) -> Result<Option<ColumnChunkMetaData>, IngestError> {
    let Some(start) = column
        .dictionary_page_offset()
        .and_then(|offset| u64::try_from(offset).ok())
    else {
        return Ok(None);
    };
    if start >= file_size {
        return Ok(None); // check_column_range says what is wrong
    }
    let Some(header) = read_page_header(reader, start..file_size, uri).await? else {
        return Ok(None);
    };
    if header.page_type != page_header::DICTIONARY_PAGE {
        return Ok(None);
    }
    let header_len = header.header_len as i64;
    Ok(column
        .clone()
        .into_builder()
        .set_total_compressed_size(column.compressed_size().saturating_add(header_len))
        .set_total_uncompressed_size(column.uncompressed_size().saturating_add(header_len))
        .build()
        .ok())
}

/// The column chunk's bytes must be inside the object.
fn check_column_range(column: &ColumnChunkMetaData, file_size: u64) -> Result<(), String> {
    let name = column.column_path().string();
    let start = column
        .dictionary_page_offset()
        .unwrap_or(column.data_page_offset());
    let len = column.compressed_size();
    let end = start.checked_add(len);
    match (
        u64::try_from(start),
        u64::try_from(len),
        end.map(u64::try_from),
    ) {
        (Ok(_), Ok(_), Some(Ok(end))) if end <= file_size => Ok(()),
        _ => Err(format!(
            "column `{name}` is at byte {start}, {len} bytes long, outside the {file_size}-byte object"
        )),
    }
}

/// Every page an offset index names must be inside its column chunk, in
/// order, starting at row 0.
fn check_offset_indexes(
    footer: &ParquetMetaData,
    row_groups: &[RowGroupMetaData],
) -> Result<(), String> {
    let Some(offset_index) = footer.offset_index() else {
        return Ok(());
    };
    for (index, group) in row_groups.iter().enumerate() {
        let Some(columns) = offset_index.get(index) else {
            continue;
        };
        for (column_index, column) in group.columns().iter().enumerate() {
            let Some(offsets) = columns.get(column_index) else {
                continue;
            };
            let (start, len) = column.byte_range();
            let end = start + len;
            let mut previous: Option<(u64, i64)> = None;
            for page in offsets.page_locations() {
                let page_start = u64::try_from(page.offset).unwrap_or(u64::MAX);
                let page_end = u64::try_from(page.compressed_page_size)
                    .ok()
                    .and_then(|size| page_start.checked_add(size));
                let in_chunk = page_start >= start
                    && page.compressed_page_size > 0
                    && page_end.is_some_and(|page_end| page_end <= end);
                let in_order = match previous {
                    None => page.first_row_index == 0,
                    Some((previous_end, previous_row)) => {
                        page_start >= previous_end && page.first_row_index > previous_row
                    }
                };
                if !in_chunk || !in_order || page.first_row_index >= group.num_rows().max(1) {
                    return Err(format!(
                        "row group {index}, column `{}`: page at {} ({} bytes, row {}) is not inside \
                         the column chunk at {start}..{end} in order",
                        column.column_path().string(),
                        page.offset,
                        page.compressed_page_size,
                        page.first_row_index
                    ));
                }
                previous = page_end.map(|page_end| (page_end, page.first_row_index));
            }
        }
    }
    Ok(())
}

/// Whether every column of the row group has an offset index.
fn has_offset_index(metadata: &ParquetMetaData, row_group: usize) -> bool {
    let columns = metadata.row_group(row_group).num_columns();
    metadata
        .offset_index()
        .and_then(|index| index.get(row_group))
        .is_some_and(|indexes| indexes.len() == columns)
}

/// Offset indexes for the row groups over [`SLICE_BYTES`] whose columns
/// are all flat (not repeated: a V1 data page's value count is then its
/// row count), from their page headers, read with small ranged GETs. A row
/// group whose pages do not add up (or hold an index page) gets none and
/// is read whole, within `max_row_group_bytes`.
async fn offset_indexes_from_page_headers<R: AsyncFileReader + Clone + Send>(
    reader: &R,
    row_groups: &[RowGroupMetaData],
    uri: &str,
    limits: ParquetLimits,
) -> Result<Vec<(usize, Vec<OffsetIndexMetaData>)>, IngestError> {
    let mut made = Vec::new();
    for (index, group) in row_groups.iter().enumerate() {
        let flat = group
            .columns()
            .iter()
            .all(|column| column.column_descr().max_rep_level() == 0);
        if !flat || group.compressed_size() as u64 <= SLICE_BYTES {
            continue;
        }
        let rows = group.num_rows();
        // Boxed and collected first: a lazy `map` of borrowing futures
        // makes the decode future's `Send` bound unprovable.
        let walks: Vec<BoxFuture<'_, Result<Option<OffsetIndexMetaData>, IngestError>>> = group
            .columns()
            .iter()
            .map(|column| {
                let mut reader = reader.clone();
                async move { page_locations(&mut reader, column, rows, uri, limits).await }.boxed()
            })
            .collect();
        let indexes: Vec<Option<OffsetIndexMetaData>> = futures::stream::iter(walks)
            .buffered(HEADER_WALKS_IN_FLIGHT)
            .try_collect()
            .await?;
        if let Some(indexes) = indexes.into_iter().collect::<Option<Vec<_>>>() {
            made.push((index, indexes));
        }
    }
    Ok(made)
}

/// The page locations of one flat column chunk, from its page headers;
/// `None` when they do not describe exactly `rows` rows in the chunk's
/// bytes (a dictionary page first, then data pages).
async fn page_locations<R: AsyncFileReader>(
    reader: &mut R,
    column: &ColumnChunkMetaData,
    rows: i64,
    uri: &str,
    limits: ParquetLimits,
) -> Result<Option<OffsetIndexMetaData>, IngestError> {
    let (start, len) = column.byte_range();
    let end = start + len;
    let mut builder = OffsetIndexBuilder::new();
    let (mut position, mut row) = (start, 0i64);
    while position < end {
        let Some(header) = read_page_header(reader, position..end, uri).await? else {
            return Ok(None);
        };
        check_page(&header, column, position, uri, limits.max_row_group_bytes)?;
        let Ok(compressed) = u64::try_from(header.compressed_size) else {
            return Ok(None);
        };
        let page_len = header.header_len as u64 + compressed;
        let Ok(page_len_i32) = i32::try_from(page_len) else {
            return Ok(None);
        };
        match (header.page_type, header.rows) {
            (page_header::DICTIONARY_PAGE, _) if position == start => {}
            (page_header::DATA_PAGE | page_header::DATA_PAGE_V2, Some(page_rows))
                if page_rows >= 0 =>
            {
                builder.append_offset_and_size(position as i64, page_len_i32);
                builder.append_row_count(page_rows);
                row += page_rows;
            }
            _ => return Ok(None),
        }
        position += page_len;
    }
    if position != end || row != rows {
        return Ok(None);
    }
    Ok(Some(builder.build()))
}

/// The page header at the start of `range`, read with as small a GET as
/// will hold it; `None` when there is none to be read there.
async fn read_page_header<R: AsyncFileReader>(
    reader: &mut R,
    range: Range<u64>,
    uri: &str,
) -> Result<Option<page_header::PageHeader>, IngestError> {
    let mut probe = HEADER_PROBE_BYTES;
    loop {
        let end = range.end.min(range.start + probe);
        let bytes = reader
            .get_bytes(range.start..end)
            .await
            .map_err(|err| into_ingest_error(uri, err))?;
        match page_header::parse(&bytes) {
            Parsed::Header(header) => return Ok(Some(header)),
            Parsed::Incomplete if end < range.end && probe < MAX_HEADER_BYTES => probe *= 4,
            Parsed::Incomplete | Parsed::Invalid => return Ok(None),
        }
    }
}

/// A page may not declare more uncompressed bytes than
/// `max_row_group_bytes`: the reader allocates what the header says
/// before it decompresses.
fn check_page(
    header: &page_header::PageHeader,
    column: &ColumnChunkMetaData,
    position: u64,
    uri: &str,
    max_bytes: u64,
) -> Result<(), IngestError> {
    // A negative size is for parquet-rs to refuse.
    if u64::try_from(header.uncompressed_size).is_ok_and(|size| size <= max_bytes)
        || header.uncompressed_size < 0
    {
        return Ok(());
    }
    Err(IngestError::Parquet {
        uri: uri.to_owned(),
        detail: format!(
            "column `{}`: the page at byte {position} declares {} bytes uncompressed, \
             more than the route's max_row_group_bytes ({max_bytes})",
            column.column_path().string(),
            header.uncompressed_size
        ),
    })
}

/// Wraps the reader of row-group data: every range fetched starts at a
/// page (the whole column chunk, its dictionary page, or data pages from
/// its offset index), so each page header in it is checked with
/// [`check_page`] before parquet-rs sees it.
#[derive(Clone)]
struct PageGuard<R> {
    inner: R,
    /// Column chunks by start: (start, end, column).
    chunks: Arc<Vec<(u64, u64, ColumnChunkMetaData)>>,
    uri: Arc<str>,
    max_page_bytes: u64,
}

impl<R> PageGuard<R> {
    fn new(inner: R, metadata: &ParquetMetaData, uri: &str, max_page_bytes: u64) -> PageGuard<R> {
        let mut chunks: Vec<(u64, u64, ColumnChunkMetaData)> = metadata
            .row_groups()
            .iter()
            .flat_map(|group| group.columns())
            .map(|column| {
                let (start, len) = column.byte_range();
                (start, start + len, column.clone())
            })
            .collect();
        chunks.sort_by_key(|(start, _, _)| *start);
        PageGuard {
            inner,
            chunks: Arc::new(chunks),
            uri: Arc::from(uri),
            max_page_bytes,
        }
    }

    /// Checks the pages in `bytes`, read from `offset`, as far as their
    /// headers parse (a broken one is for parquet-rs to report).
    fn check(&self, offset: u64, bytes: &Bytes) -> parquet::errors::Result<()> {
        let at = self
            .chunks
            .partition_point(|(start, _, _)| *start <= offset);
        let Some((_, end, column)) = at.checked_sub(1).map(|at| &self.chunks[at]) else {
            return Ok(());
        };
        if offset >= *end {
            return Ok(());
        }
        let mut position = 0usize;
        while position < bytes.len() {
            let Parsed::Header(header) = page_header::parse(&bytes[position..]) else {
                break;
            };
            check_page(
                &header,
                column,
                offset + position as u64,
                &self.uri,
                self.max_page_bytes,
            )
            .map_err(|err| ParquetError::External(Box::new(err)))?;
            let Ok(compressed) = usize::try_from(header.compressed_size) else {
                break;
            };
            position += header.header_len + compressed;
        }
        Ok(())
    }
}

impl<R: AsyncFileReader> AsyncFileReader for PageGuard<R> {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            let offset = range.start;
            let bytes = self.inner.get_bytes(range).await?;
            self.check(offset, &bytes)?;
            Ok(bytes)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            let offsets: Vec<u64> = ranges.iter().map(|range| range.start).collect();
            let parts = self.inner.get_byte_ranges(ranges).await?;
            for (offset, bytes) in offsets.into_iter().zip(&parts) {
                self.check(offset, bytes)?;
            }
            Ok(parts)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        self.inner.get_metadata(options)
    }
}

/// How one row group of `rows` rows and `compressed` bytes is read: whole
/// (`None`), or, when it is larger than [`SLICE_BYTES`] and has an offset
/// index, as consecutive row selections of about that size.
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
    use parquet::file::metadata::{
        ColumnChunkMetaDataBuilder, ParquetMetaData, ParquetMetaDataReader, ParquetMetaDataWriter,
    };
    use parquet::file::properties::WriterProperties;

    /// An in-memory file that remembers the most bytes fetched in one call
    /// and where each fetch started.
    #[derive(Clone)]
    struct CountingReader {
        file: Bytes,
        largest_fetch: Arc<AtomicU64>,
        fetch_starts: Arc<std::sync::Mutex<Vec<u64>>>,
    }

    impl CountingReader {
        fn new(file: Bytes) -> CountingReader {
            CountingReader {
                file,
                largest_fetch: Arc::default(),
                fetch_starts: Arc::default(),
            }
        }
    }

    impl AsyncFileReader for CountingReader {
        fn get_bytes(
            &mut self,
            range: Range<u64>,
        ) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
            self.largest_fetch
                .fetch_max(range.end - range.start, Ordering::Relaxed);
            self.fetch_starts.lock().unwrap().push(range.start);
            let bytes = self.file.slice(range.start as usize..range.end as usize);
            async move { Ok(bytes) }.boxed()
        }

        fn get_byte_ranges(
            &mut self,
            ranges: Vec<Range<u64>>,
        ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
            let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
            self.largest_fetch.fetch_max(total, Ordering::Relaxed);
            (self.fetch_starts.lock().unwrap()).extend(ranges.iter().map(|range| range.start));
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
        file_in_row_groups(rows, rows, offset_index)
    }

    /// `rows` incompressible rows (about 36 bytes each), `group_rows` to a
    /// row group.
    fn file_in_row_groups(rows: usize, group_rows: usize, offset_index: bool) -> Bytes {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("amount", DataType::Float64, false),
            Field::new("note", DataType::Utf8, false),
        ]));
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group_rows))
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
        let limits = limits_for(&file);
        let (result, batches, largest_fetch) = try_decode(file, limits).await;
        let summary = result.unwrap();
        let mut ids = Vec::new();
        for batch in batches {
            ids.extend(batch.column(0).as_primitive::<Int64Type>().values().iter());
        }
        assert_eq!(summary.rows, ids.len() as u64);
        (ids, largest_fetch)
    }

    fn limits_for(file: &Bytes) -> ParquetLimits {
        ParquetLimits {
            file_size: file.len() as u64,
            max_row_group_bytes: DEFAULT_MAX_ROW_GROUP_BYTES,
        }
    }

    /// Decodes `file`: the outcome, every batch, the largest fetch.
    async fn try_decode(
        file: Bytes,
        limits: ParquetLimits,
    ) -> (Result<DecodeSummary, IngestError>, Vec<RecordBatch>, u64) {
        let reader = CountingReader::new(file);
        let largest_fetch = reader.largest_fetch.clone();
        let (sender, mut receiver) = mpsc::channel(4);
        let decoder = tokio::spawn(async move {
            decode_parquet(reader, "s3://b/k.parquet", None, 8192, limits, &sender).await
        });
        let mut batches = Vec::new();
        while let Some(batch) = receiver.recv().await {
            batches.push(batch);
        }
        let result = decoder.await.unwrap();
        (result, batches, largest_fetch.load(Ordering::Relaxed))
    }

    /// `file` with its footer rewritten after `edit` changed its row groups
    /// (the data and any page index stay where they are).
    fn rewrite_footer(file: &[u8], edit: impl FnOnce(&mut Vec<RowGroupMetaData>)) -> Bytes {
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&Bytes::copy_from_slice(file))
            .unwrap();
        let len = file.len();
        let footer_len = u32::from_le_bytes(file[len - 8..len - 4].try_into().unwrap()) as usize;
        let mut builder = metadata.into_builder();
        let mut groups = builder.take_row_groups();
        edit(&mut groups);
        let metadata = builder.set_row_groups(groups).build();
        let mut out = file[..len - 8 - footer_len].to_vec();
        ParquetMetaDataWriter::new(&mut out, &metadata)
            .finish()
            .unwrap();
        Bytes::from(out)
    }

    fn edit_column(
        column: &mut ColumnChunkMetaData,
        edit: impl FnOnce(ColumnChunkMetaDataBuilder) -> ColumnChunkMetaDataBuilder,
    ) {
        *column = edit(column.clone().into_builder()).build().unwrap();
    }

    fn parquet_error(result: Result<DecodeSummary, IngestError>) -> String {
        match result {
            Err(err @ IngestError::Parquet { .. }) => err.to_string(),
            other => panic!("expected a parquet_error, got {other:?}"),
        }
    }

    /// `rows` ids and names; dictionary-encoded names when `dictionary`.
    fn small_file(rows: i64, dictionary: bool) -> Bytes {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("name {}", i % 3)),
                )),
            ],
        )
        .unwrap();
        // Never for `id`: one column with a dictionary, one without.
        let properties = WriterProperties::builder()
            .set_dictionary_enabled(dictionary)
            .set_column_dictionary_enabled(parquet::schema::types::ColumnPath::from("id"), false)
            .build();
        let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        Bytes::from(writer.into_inner().unwrap())
    }

    fn names(batches: &[RecordBatch]) -> Vec<String> {
        batches
            .iter()
            .flat_map(|batch| {
                batch
                    .column(1)
                    .as_string::<i32>()
                    .iter()
                    .map(|name| name.unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_dictionary_page_offset_of_zero_is_read_as_absent() {
        let file = small_file(100, true);
        let original = ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .unwrap();
        assert!(
            original
                .row_group(0)
                .column(1)
                .dictionary_page_offset()
                .is_some(),
            "`name` has a dictionary page, or this test proves little"
        );
        let expected = names(&try_decode(file.clone(), limits_for(&file)).await.1);
        // What old parquet-mr wrote: `dictionary_page_offset` 0, and
        // `data_page_offset` at the chunk's start, where the dictionary is;
        // and 0 for a column that has no dictionary at all.
        let rewritten = rewrite_footer(&file, |groups| {
            for column in groups[0].columns_mut() {
                let start = column.byte_range().0 as i64;
                let dictionary = column.dictionary_page_offset().is_some();
                edit_column(column, |c| {
                    let c = c.set_dictionary_page_offset(Some(0));
                    if dictionary {
                        c.set_data_page_offset(start)
                    } else {
                        c
                    }
                });
            }
        });
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&rewritten)
            .unwrap();
        let columns = metadata.row_group(0).columns();
        assert!(
            columns
                .iter()
                .all(|c| c.dictionary_page_offset() == Some(0))
        );
        let (result, batches, _) = try_decode(rewritten.clone(), limits_for(&rewritten)).await;
        assert_eq!(result.unwrap().rows, 100);
        assert_eq!(names(&batches), expected);
    }

    /// `small_file(100, true)` as parquet-mr before 1.2.9 wrote it: the
    /// dictionary page's header left out of the column chunk's length
    /// (PARQUET-816, as in parquet-testing's nation.dict-malformed.parquet).
    fn dictionary_header_uncounted(created_by: &str) -> Bytes {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..100)),
                Arc::new(StringArray::from_iter_values(
                    (0..100).map(|i| format!("name {}", i % 3)),
                )),
            ],
        )
        .unwrap();
        let properties = WriterProperties::builder()
            .set_created_by(created_by.to_owned())
            // Old parquet-mr wrote no page index.
            .set_offset_index_disabled(true)
            .set_statistics_enabled(parquet::file::properties::EnabledStatistics::None)
            .build();
        let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        let good = Bytes::from(writer.into_inner().unwrap());
        let mut shortened = 0;
        let bad = rewrite_footer(&good, |groups| {
            for column in groups[0].columns_mut() {
                let Some(dictionary) = column.dictionary_page_offset() else {
                    continue;
                };
                let Parsed::Header(header) = page_header::parse(&good[dictionary as usize..])
                else {
                    panic!("no page header at the dictionary offset");
                };
                assert_eq!(header.page_type, page_header::DICTIONARY_PAGE);
                let (compressed, uncompressed) =
                    (column.compressed_size(), column.uncompressed_size());
                let header_len = header.header_len as i64;
                edit_column(column, |c| {
                    c.set_total_compressed_size(compressed - header_len)
                        .set_total_uncompressed_size(uncompressed - header_len)
                });
                shortened += 1;
            }
        });
        assert!(
            shortened > 0,
            "no dictionary page, or this test proves little"
        );
        bad
    }

    #[tokio::test]
    async fn old_parquet_mr_chunks_that_leave_out_the_dictionary_header_are_read() {
        let expected: Vec<String> = (0..100).map(|i| format!("name {}", i % 3)).collect();
        let old = dictionary_header_uncounted("parquet-mr version 1.2.8 (build 12345)");
        let (result, batches, _) = try_decode(old.clone(), limits_for(&old)).await;
        assert_eq!(result.unwrap().rows, 100);
        assert_eq!(names(&batches), expected);

        // A writer after the fix gets no repair: the same bytes are a
        // parquet_error (pyarrow refuses them too).
        let fixed = dictionary_header_uncounted("parquet-mr version 1.2.9 (build 12345)");
        parquet_error(try_decode(fixed.clone(), limits_for(&fixed)).await.0);
    }

    #[test]
    fn parquet_mr_before_1_2_9_is_recognised_by_created_by() {
        for old in [
            "parquet-mr version 1.2.8 (build 7c8d2f5)",
            "parquet-mr version 1.2.8-SNAPSHOT",
            "parquet-mr version 1.1.0",
            "parquet-mr version 1.2",
            "parquet-mr",
        ] {
            assert!(writes_uncounted_dictionary_headers(Some(old)), "{old}");
        }
        for new in [
            "parquet-mr version 1.2.9 (build abc)",
            "parquet-mr version 1.10.0",
            "parquet-mr version 2.0.0",
            "parquet-cpp-arrow version 15.0.0",
            "impala version 1.2.8",
            "parquet-rs version 60.1.0",
        ] {
            assert!(!writes_uncounted_dictionary_headers(Some(new)), "{new}");
        }
        assert!(!writes_uncounted_dictionary_headers(None));
    }

    #[tokio::test]
    async fn rows_must_add_up_to_what_the_footer_declares() {
        let file = small_file(3, false);
        let claims_five = rewrite_footer(&file, |groups| {
            let group = groups.remove(0);
            groups.push(group.into_builder().set_num_rows(5).build().unwrap());
        });
        let message = parquet_error(
            try_decode(claims_five.clone(), limits_for(&claims_five))
                .await
                .0,
        );
        assert!(message.contains("declares 5"), "{message}");
    }

    #[tokio::test]
    async fn column_offsets_outside_the_file_are_parquet_errors_not_panics() {
        let file = small_file(3, false);
        let len = file.len() as i64;
        type Edit = Box<dyn Fn(ColumnChunkMetaDataBuilder) -> ColumnChunkMetaDataBuilder>;
        let edits: [(&str, Edit); 3] = [
            ("negative", Box::new(|c| c.set_data_page_offset(-100))),
            (
                "past the end",
                Box::new(move |c| c.set_data_page_offset(len - 10)),
            ),
            (
                "negative length",
                Box::new(|c| c.set_total_compressed_size(-1)),
            ),
        ];
        for (what, edit) in edits {
            let broken = rewrite_footer(&file, |groups| {
                edit_column(&mut groups[0].columns_mut()[0], |c| {
                    edit(c.set_dictionary_page_offset(None))
                })
            });
            let message = parquet_error(try_decode(broken.clone(), limits_for(&broken)).await.0);
            assert!(message.contains("column `id`"), "{what}: {message}");
        }
    }

    /// One required int64 column, one Snappy page whose header says it
    /// holds `uncompressed` bytes once decompressed.
    fn file_with_page_claiming(uncompressed: i32) -> Bytes {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..1000))],
        )
        .unwrap();
        let properties = WriterProperties::builder()
            .set_dictionary_enabled(false)
            .set_compression(parquet::basic::Compression::SNAPPY)
            .set_statistics_enabled(parquet::file::properties::EnabledStatistics::None)
            .build();
        let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        let file = Bytes::from(writer.into_inner().unwrap());
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .unwrap();
        let (start, len) = metadata.row_group(0).column(0).byte_range();
        let chunk = &file[start as usize..(start + len) as usize];
        let Parsed::Header(header) = page_header::parse(chunk) else {
            panic!("no page header");
        };
        assert_eq!(header.page_type, page_header::DATA_PAGE);
        let data = &chunk[header.header_len..];
        // PageHeader { 1: type, 2: uncompressed, 3: compressed,
        //   5: DataPageHeader { 1: num_values, 2: PLAIN, 3: RLE, 4: RLE } }
        let mut body = b"PAR1".to_vec();
        let field = |out: &mut Vec<u8>, value: i32| {
            out.push(0x15); // field id + 1, i32
            let mut zigzag = ((value << 1) ^ (value >> 31)) as u32;
            while zigzag >= 0x80 {
                out.push((zigzag as u8) | 0x80);
                zigzag >>= 7;
            }
            out.push(zigzag as u8);
        };
        field(&mut body, 0);
        field(&mut body, uncompressed);
        field(&mut body, data.len() as i32);
        body.push(0x2c); // field 5, struct
        for value in [1000, 0, 3, 3] {
            field(&mut body, value);
        }
        body.extend([0, 0]);
        body.extend_from_slice(data);
        let chunk_len = body.len() as i64 - 4;
        // The old footer, with the column at byte 4 and its new length.
        let mut builder = metadata.into_builder();
        let mut groups = builder.take_row_groups();
        edit_column(&mut groups[0].columns_mut()[0], |c| {
            c.set_data_page_offset(4)
                .set_total_compressed_size(chunk_len)
                .set_offset_index_offset(None)
                .set_offset_index_length(None)
                .set_column_index_offset(None)
                .set_column_index_length(None)
        });
        let metadata = builder.set_row_groups(groups).build();
        ParquetMetaDataWriter::new(&mut body, &metadata)
            .finish()
            .unwrap();
        Bytes::from(body)
    }

    #[tokio::test]
    async fn a_page_declaring_2_gib_is_refused_before_it_is_decompressed() {
        // The same file with an honest header decodes: the crafting is sound.
        let honest = file_with_page_claiming(8000);
        let (result, _, _) = try_decode(honest.clone(), limits_for(&honest)).await;
        assert_eq!(result.unwrap().rows, 1000);

        let file = file_with_page_claiming(i32::MAX);
        let message = parquet_error(try_decode(file.clone(), limits_for(&file)).await.0);
        assert!(
            message.contains("column `id`") && message.contains("declares 2147483647 bytes"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_row_group_read_whole_must_fit_the_bound() {
        // Without its offset index.
        let file = rewrite_footer(&small_file(10_000, false), |groups| {
            for column in groups[0].columns_mut() {
                edit_column(column, |c| {
                    c.set_offset_index_offset(None)
                        .set_offset_index_length(None)
                });
            }
        });
        let limits = ParquetLimits {
            file_size: file.len() as u64,
            max_row_group_bytes: 1024,
        };
        let message = parquet_error(try_decode(file, limits).await.0);
        assert!(message.contains("max_row_group_bytes is 1024"), "{message}");
    }

    /// `repeated int32 x` with no LIST annotation (the legacy two-level
    /// form), after `required int32 id` when `with_id`: six rows, two of
    /// them empty lists.
    fn bare_repeated_file(with_id: bool) -> Bytes {
        use parquet::file::writer::SerializedFileWriter;
        use parquet::schema::parser::parse_message_type;

        let schema = if with_id {
            "message legacy { required int32 id; repeated int32 x; }"
        } else {
            "message legacy { repeated int32 x; }"
        };
        let schema = Arc::new(parse_message_type(schema).unwrap());
        let mut buffer = Vec::new();
        let mut writer =
            SerializedFileWriter::new(&mut buffer, schema, Arc::new(WriterProperties::default()))
                .unwrap();
        let mut group = writer.next_row_group().unwrap();
        if with_id {
            let mut id = group.next_column().unwrap().unwrap();
            id.typed::<parquet::data_type::Int32Type>()
                .write_batch(&[1, 2, 3, 4, 5, 6], None, None)
                .unwrap();
            id.close().unwrap();
        }
        // [1, 2], [], [3], [4, 5, 6], [], [7]
        let mut x = group.next_column().unwrap().unwrap();
        x.typed::<parquet::data_type::Int32Type>()
            .write_batch(
                &[1, 2, 3, 4, 5, 6, 7],
                Some(&[1, 1, 0, 1, 1, 1, 1, 0, 1]),
                Some(&[0, 1, 0, 0, 0, 1, 1, 0, 0]),
            )
            .unwrap();
        x.close().unwrap();
        group.close().unwrap();
        writer.close().unwrap();
        Bytes::from(buffer)
    }

    #[tokio::test]
    async fn a_repeated_field_without_a_list_annotation_lands_every_row() {
        for with_id in [true, false] {
            let file = bare_repeated_file(with_id);
            let (result, batches, _) = try_decode(file.clone(), limits_for(&file)).await;
            assert_eq!(result.unwrap().rows, 6, "with id: {with_id}");
            let lists: Vec<Vec<i32>> = batches
                .iter()
                .flat_map(|batch| {
                    let x = batch.column(batch.num_columns() - 1).as_list::<i32>();
                    x.iter()
                        .map(|list| {
                            let list = list.unwrap();
                            list.as_primitive::<arrow::datatypes::Int32Type>()
                                .values()
                                .to_vec()
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            let expected: Vec<Vec<i32>> =
                vec![vec![1, 2], vec![], vec![3], vec![4, 5, 6], vec![], vec![7]];
            assert_eq!(lists, expected, "with id: {with_id}");
        }
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
    async fn a_large_row_group_without_an_offset_index_is_sliced_by_its_page_headers() {
        let file = one_row_group_file(ROWS, false);
        let file_bytes = file.len() as u64;
        assert!(file_bytes > 2 * SLICE_BYTES + (4 << 20), "{file_bytes}");
        let (ids, largest_fetch) = decode(file).await;
        assert_eq!(ids, (0..ROWS as i64).collect::<Vec<_>>());
        assert!(
            largest_fetch <= SLICE_BYTES + (6 << 20),
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_row_group_is_fetched_while_the_current_one_is_handed_on() {
        const GROUP_ROWS: usize = 20_000;
        let file = file_in_row_groups(4 * GROUP_ROWS, GROUP_ROWS, true);
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .unwrap();
        let group_start = |group: usize| metadata.row_group(group).column(0).byte_range().0;
        let second_group = group_start(1)..group_start(2);
        let limits = limits_for(&file);
        let reader = CountingReader::new(file);
        let fetch_starts = reader.fetch_starts.clone();
        let (sender, mut receiver) = mpsc::channel(1);
        // 20 batches a row group: more than the channels between hold.
        let decoder = tokio::spawn(async move {
            decode_parquet(reader, "s3://b/k.parquet", None, 1000, limits, &sender).await
        });
        let first = receiver.recv().await.expect("a first batch");
        // The consumer holds back, so the first row group cannot be done,
        // yet the second is read.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let second_group_read = || {
            let starts = fetch_starts.lock().unwrap();
            starts.iter().any(|start| second_group.contains(start))
        };
        while !second_group_read() {
            assert!(
                std::time::Instant::now() < deadline,
                "the second row group was not read ahead"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut ids: Vec<i64> = first
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        while let Some(batch) = receiver.recv().await {
            ids.extend(batch.column(0).as_primitive::<Int64Type>().values().iter());
        }
        let summary = decoder.await.unwrap().unwrap();
        assert_eq!(summary.rows, 4 * GROUP_ROWS as u64);
        assert_eq!(
            ids,
            (0..4 * GROUP_ROWS as i64).collect::<Vec<_>>(),
            "in order"
        );
    }

    #[tokio::test]
    async fn a_broken_offset_index_is_ignored_and_the_data_read_whole() {
        let file = one_row_group_file(ROWS, true);
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .unwrap();
        let mut broken = file.to_vec();
        for column in metadata.row_group(0).columns() {
            let start = column
                .offset_index_offset()
                .expect("written with an offset index") as usize;
            let length = column.offset_index_length().unwrap() as usize;
            broken[start..start + length].fill(0xff);
        }
        let broken = Bytes::from(broken);
        // `Required`: the `Optional` policy the decoder uses drops an
        // unreadable index by itself.
        let with_index =
            ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Required);
        assert!(
            ArrowReaderMetadata::load(&broken, with_index).is_err(),
            "the index should be unreadable, or this test proves nothing"
        );
        let (ids, _) = decode(broken).await;
        assert_eq!(ids, (0..ROWS as i64).collect::<Vec<_>>());
    }
}
