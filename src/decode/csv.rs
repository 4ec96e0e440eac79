//! CSV decoding: a byte stream in, Arrow record batches out, through
//! arrow-csv's push `Decoder`. Runs on a blocking thread: it reads with
//! `std::io::Read` and does CPU work.
//!
//! Memory is bounded by the read buffer, the schema-inference sample and one
//! batch, however large the file.

mod parallel;

use std::io::{BufRead, BufReader, Cursor, Read};
use std::sync::Arc;

use arrow::csv::reader::{Format, ReaderBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use regex::Regex;
use tokio::sync::mpsc;

use super::compression::{self, Codec, OutputLimit};
use super::quotes::QuoteTracker;
use super::{DecodeSummary, send_batch};
use crate::config::{CsvOptions, RouteLimits};
use crate::error::IngestError;
use crate::text::{ERROR_EXCERPT_BYTES, excerpt};

/// Read buffer handed to the decoder.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// What the CSV decoder needs to know about one object.
pub struct CsvJob {
    pub uri: String,
    pub options: CsvOptions,
    /// The route's explicit schema; inferred from the file when `None`.
    pub schema: Option<SchemaRef>,
    /// Columns read as text whatever inference says (ASCII case ignored):
    /// the declared columns of a route with a contract, which parses them
    /// itself so that one bad value is one bad row (`contract/`).
    pub text_columns: Vec<String>,
    pub batch_rows: usize,
    /// Compression named by Content-Encoding or the key's extension.
    pub declared_codec: Option<Codec>,
    /// The object's stored size: sizes the head buffer up front, so reading
    /// a small object does not grow it step by step, and is what the
    /// decompression ratio is measured against.
    pub object_bytes: u64,
    pub limits: RouteLimits,
    /// Whether an object larger than the head is cut into chunks that the
    /// CPU pool decodes side by side (`parallel.rs`); the worker asks for
    /// it when the pool has more than one thread.
    pub in_parallel: bool,
}

/// Decodes `input` (raw object bytes, possibly compressed) and sends each
/// batch to `batches`. Blocks: call it from `spawn_blocking`.
pub fn decode_csv(
    input: impl Read + Send + 'static,
    job: &CsvJob,
    batches: &mpsc::Sender<RecordBatch>,
) -> Result<DecodeSummary, IngestError> {
    let limits = &job.limits;
    let output_limit = OutputLimit {
        max_bytes: limits.max_decompressed_bytes,
        max_ratio: limits.max_decompression_ratio,
        stored_bytes: job.object_bytes,
    };
    let decompressed = compression::open(input, job.declared_codec, output_limit, &job.uri)?;
    let codec = decompressed.codec;
    let decompress_error = |offset: u64, err: std::io::Error| IngestError::Decompress {
        uri: job.uri.clone(),
        codec: codec.name(),
        offset,
        detail: err.to_string(),
    };
    let max_record_bytes = limits.max_record_bytes.get();
    // Blank lines (and whitespace-only lines) before the first record are
    // skipped while streaming, however many: otherwise a long blank head
    // fills the inference sample and the file would read as empty.
    let (blank_head_bytes, mut reader) =
        skip_blank_lines(decompressed.reader, max_record_bytes as u64)
            .map_err(|(offset, err)| decompress_error(offset, err))?;

    let format = csv_format(&job.options);
    // The head of the (decompressed) stream is read first: schema inference
    // needs it, and a small object is then decoded from it without a
    // streaming buffer.
    let head_limit = match &job.schema {
        Some(_) => READ_BUFFER_BYTES,
        None => job.options.infer_max_bytes.get(),
    };
    let head = read_head(&mut reader, head_limit, job.object_bytes)
        .map_err(|(offset, err)| decompress_error(blank_head_bytes + offset, err))?;
    let whole_input_in_head = head.len() < head_limit;
    let schema = match &job.schema {
        Some(schema) => schema.clone(),
        None => infer_schema(&head, head_limit, &format, job)?,
    };
    if schema.fields().is_empty() {
        // Nothing but blank lines: an empty file is not poison. (Whatever
        // the blank lines were, they were skipped above, so `head` is empty.)
        let mut summary = DecodeSummary::empty(schema);
        summary.decoded_bytes = blank_head_bytes;
        return Ok(summary);
    }
    let columns = schema.fields().len();
    if columns > limits.max_columns.get() {
        return Err(IngestError::Schema {
            uri: job.uri.clone(),
            detail: format!(
                "the file has {columns} columns, more than limits.max_columns ({})",
                limits.max_columns
            ),
        });
    }

    // Rows per batch: the route's count, cut so that a batch of wide rows
    // stays near `max_batch_bytes`. arrow-csv zero-fills offsets and values
    // for a whole batch when a decoder starts, so for a small object the
    // batch is also capped at the most rows the object can hold.
    let mut batch_rows =
        job.batch_rows
            .min(rows_within(limits.max_batch_bytes.get(), columns, &head));
    if whole_input_in_head {
        batch_rows = batch_rows.min(most_rows(head.len(), columns));
    }
    let options = &job.options;
    let mut quotes = QuoteTracker::new(
        options.delimiter.unwrap_or(',') as u8,
        options.quote as u8,
        options.escape.map(|c| c as u8),
        options.comment.map(|c| c as u8),
    );

    // An object larger than the head is cut into chunks of whole records
    // that the CPU pool decodes side by side (see `parallel.rs`).
    if !whole_input_in_head && job.in_parallel {
        let chunks = parallel::Chunks {
            job,
            schema: schema.clone(),
            format: format.clone(),
            batch_rows,
            blank_head_bytes,
            decompress_error: &decompress_error,
        };
        return chunks.decode(Cursor::new(head).chain(reader), quotes, batches);
    }
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_format(format)
        .with_batch_size(batch_rows)
        .build_decoder();
    // A streaming buffer is zero-filled once when first read into; only
    // objects larger than the head need one.
    let mut input: Box<dyn BufRead> = if whole_input_in_head {
        Box::new(Cursor::new(head))
    } else {
        Box::new(BufReader::with_capacity(
            READ_BUFFER_BYTES,
            Cursor::new(head).chain(reader),
        ))
    };
    let mut summary = DecodeSummary::empty(schema);
    // Offsets in messages count from the start of the decompressed file.
    let mut offset = blank_head_bytes;
    let csv_error = |summary: &DecodeSummary, buffered: usize, detail: String| IngestError::Csv {
        uri: job.uri.clone(),
        first_row: summary.rows + 1,
        last_row: summary.rows + buffered.max(1) as u64,
        detail: bounded_detail(&detail),
    };
    loop {
        let buf = input
            .fill_buf()
            .map_err(|err| decompress_error(offset, err))?;
        let at_end = buf.is_empty();
        // `decode(&[])` at the end finishes a last record without a newline.
        let consumed = decoder.decode(buf).map_err(|err| {
            let buffered = batch_rows - decoder.capacity();
            csv_error(&summary, buffered + 1, err.to_string())
        })?;
        quotes.feed(&buf[..consumed]);
        input.consume(consumed);
        offset += consumed as u64;
        // The decoder holds an unfinished record whole: stop one that has
        // grown past the limit now, not when memory runs out.
        if quotes.open_record_bytes() > max_record_bytes as u64 {
            let row = summary.rows + (batch_rows - decoder.capacity()) as u64 + 1;
            return Err(record_too_long(job, &quotes, blank_head_bytes, row));
        }
        if at_end && let Some(opened_at) = quotes.unterminated_quote() {
            // Checked before the last flush: those rows hold the swallowed
            // rest of the file.
            let buffered = batch_rows - decoder.capacity();
            return Err(csv_error(
                &summary,
                buffered,
                never_closed(blank_head_bytes + opened_at),
            ));
        }
        if at_end || decoder.capacity() == 0 {
            let buffered = batch_rows - decoder.capacity();
            if let Some(batch) = decoder
                .flush()
                .map_err(|err| csv_error(&summary, buffered, err.to_string()))?
            {
                summary.rows += batch.num_rows() as u64;
                summary.batches += 1;
                send_batch(batches, batch, &job.uri)?;
            }
        }
        if at_end {
            break;
        }
    }
    summary.decoded_bytes = offset;
    Ok(summary)
}

/// The record being read has grown past `limits.max_record_bytes`
/// without ending: `row` is its data row.
fn record_too_long(
    job: &CsvJob,
    quotes: &QuoteTracker,
    blank_head_bytes: u64,
    row: u64,
) -> IngestError {
    let max_record_bytes = job.limits.max_record_bytes.get();
    let start = blank_head_bytes + quotes.record_start();
    let detail = match quotes.unterminated_quote() {
        Some(opened_at) => format!(
            "the quoted field opened at byte {} is still open {} bytes into its record, \
             past limits.max_record_bytes ({max_record_bytes}): its closing quote is missing",
            blank_head_bytes + opened_at,
            quotes.open_record_bytes()
        ),
        None => format!(
            "the record starting at byte {start} has no line end within \
             limits.max_record_bytes ({max_record_bytes} bytes)"
        ),
    };
    IngestError::Csv {
        uri: job.uri.clone(),
        first_row: row,
        last_row: row,
        detail,
    }
}

/// The file ended inside the quoted field opened at byte `opened_at`.
fn never_closed(opened_at: u64) -> String {
    format!(
        "the quoted field opened at byte {opened_at} is never closed (the file is truncated or its quoting is broken)"
    )
}

fn csv_format(options: &CsvOptions) -> Format {
    let mut format = Format::default()
        .with_header(options.header)
        .with_delimiter(options.delimiter.unwrap_or(',') as u8)
        .with_quote(options.quote as u8);
    if let Some(escape) = options.escape {
        format = format.with_escape(escape as u8);
    }
    if let Some(comment) = options.comment {
        format = format.with_comment(comment as u8);
    }
    if let Some(regex) = null_regex(&options.null_values) {
        format = format.with_null_regex(regex);
    }
    format
}

/// The empty field plus every configured null spelling, matched whole.
fn null_regex(null_values: &[String]) -> Option<Regex> {
    if null_values.is_empty() {
        return None;
    }
    let alternatives: Vec<String> = std::iter::once(String::new())
        .chain(null_values.iter().map(|v| regex::escape(v)))
        .collect();
    Some(Regex::new(&format!("^(?:{})$", alternatives.join("|"))).expect("escaped regex"))
}

/// Reads up to `limit` bytes from the start of the stream. Fewer means the
/// stream ended: the head is the whole input. An error comes with the
/// offset it happened at.
fn read_head(
    reader: &mut Box<dyn Read + Send>,
    limit: usize,
    object_bytes: u64,
) -> Result<Vec<u8>, (u64, std::io::Error)> {
    // Capacity is only reserved, not zero-filled: `read_to_end` initialises
    // what it reads into. A compressed object's head may outgrow the hint.
    let expected = usize::try_from(object_bytes.saturating_add(1)).unwrap_or(usize::MAX);
    let mut head = Vec::with_capacity(limit.min(expected));
    reader
        .take(limit as u64)
        .read_to_end(&mut head)
        .map_err(|err| (head.len() as u64, err))?;
    Ok(head)
}

/// Skips whitespace-only lines at the start of the stream, reading in
/// small chunks (memory stays flat however long the blank head). Returns
/// how many bytes were skipped and a reader that starts at the first
/// line holding anything else, with that line's leading whitespace kept.
/// Whitespace after the last line end is held until something else comes;
/// past `max_pending` of it, skipping stops and the decoder's record limit
/// takes over.
fn skip_blank_lines(
    mut reader: Box<dyn Read + Send>,
    max_pending: u64,
) -> Result<(u64, Box<dyn Read + Send>), (u64, std::io::Error)> {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut skipped = 0u64;
    // Whitespace since the last line end: part of the first record if one
    // follows on this line.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let read = loop {
            match reader.read(&mut chunk) {
                Ok(read) => break read,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err((skipped + pending.len() as u64, err)),
            }
        };
        let data = &chunk[..read];
        if read == 0 {
            // Only whitespace: nothing is left but the pending spaces.
            return Ok((skipped, Box::new(Cursor::new(pending))));
        }
        let content = data.iter().position(|b| !b.is_ascii_whitespace());
        let blank = &data[..content.unwrap_or(read)];
        match memchr::memrchr2(b'\n', b'\r', blank) {
            Some(last_line_end) => {
                skipped += (pending.len() + last_line_end + 1) as u64;
                pending.clear();
                pending.extend_from_slice(&blank[last_line_end + 1..]);
            }
            None => pending.extend_from_slice(blank),
        }
        if let Some(content) = content {
            pending.extend_from_slice(&data[content..]);
            return Ok((skipped, Box::new(Cursor::new(pending).chain(reader))));
        }
        if pending.len() as u64 > max_pending {
            // Whitespace with no line end for longer than a record may be:
            // the decoder reports it as the record too long it is.
            return Ok((skipped, Box::new(Cursor::new(pending).chain(reader))));
        }
    }
}

/// Rows of `columns` columns that fit in about `max_bytes` of decoded
/// batch, judged from the head's record width. arrow-csv keeps an offset
/// per field (8 bytes) and the output arrays one value or offset per field
/// (about 8 more); the record's bytes are held by the decoder and again by
/// the arrays. At least one row.
fn rows_within(max_bytes: usize, columns: usize, head: &[u8]) -> usize {
    let line_ends = memchr::memchr_iter(b'\n', head).count().max(1);
    let record_bytes = head.len() / line_ends;
    let row_bytes = columns.saturating_mul(16).saturating_add(record_bytes * 2);
    (max_bytes / row_bytes.max(1)).max(1)
}

/// The most records `bytes` of CSV with `columns` columns can hold: every
/// record but the last spends at least one byte per column on delimiters
/// and its line end.
fn most_rows(bytes: usize, columns: usize) -> usize {
    bytes / columns.max(1) + 1
}

/// Infers a schema from the complete lines of `sample`, the head of the
/// stream read with `limit`.
fn infer_schema(
    sample: &[u8],
    limit: usize,
    format: &Format,
    job: &CsvJob,
) -> Result<SchemaRef, IngestError> {
    let (options, uri) = (&job.options, job.uri.as_str());
    if sample.iter().all(u8::is_ascii_whitespace) {
        return Ok(Arc::new(Schema::empty()));
    }
    // A full sample may end in the middle of a line: infer from whole lines.
    let complete = if sample.len() == limit {
        match sample.iter().rposition(|b| *b == b'\n') {
            Some(last_newline) => &sample[..=last_newline],
            None => {
                return Err(IngestError::Schema {
                    uri: uri.to_owned(),
                    detail: format!(
                        "CSV schema inference: no line ends within the first {limit} bytes"
                    ),
                });
            }
        }
    } else {
        sample
    };
    let (schema, _records) = format
        .infer_schema(Cursor::new(complete), Some(options.infer_rows.get()))
        .map_err(|err| {
            let detail = err.to_string();
            // arrow-csv names the record ("at line N", the header counted)
            // when it can; otherwise the fault is somewhere in the sample.
            let (first_row, last_row) = match inference_error_row(&detail, options.header) {
                Some(row) => (row, row),
                None => (1, options.infer_rows.get() as u64),
            };
            IngestError::Csv {
                uri: uri.to_owned(),
                first_row,
                last_row,
                detail: bounded_detail(&format!("while inferring the schema: {detail}")),
            }
        })?;
    // Two columns with one name land as a table no engine can address
    // (and that Parquet readers and databases reject): poison.
    let names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
    for (index, name) in names.iter().enumerate() {
        if let Some(first) = names[..index].iter().position(|n| n == name) {
            return Err(IngestError::Schema {
                uri: uri.to_owned(),
                detail: format!(
                    "the header names column `{name}` twice (columns {} and {})",
                    first + 1,
                    index + 1
                ),
            });
        }
    }
    // A column empty throughout the sample is inferred as Null, and
    // arrow-csv decodes a Null column as all nulls whatever it later holds:
    // read such columns as text instead, so no value is silently dropped.
    let as_text = |name: &str| {
        job.text_columns
            .iter()
            .any(|text| text.eq_ignore_ascii_case(name))
    };
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| match field.data_type() {
            DataType::Null => Field::new(field.name(), DataType::Utf8, true),
            _ if as_text(field.name()) => Field::new(field.name(), DataType::Utf8, true),
            _ => field.as_ref().clone(),
        })
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

/// arrow-csv's errors quote the bad value and then the whole row
/// (`… value 'X' as type 'Int64' for column 0 at line 7. Row data: '[…]'`),
/// and a vendor's value or row can be megabytes. Every quoted span is cut
/// to a few hundred bytes, so the words after it (type, column, line)
/// survive, and then the whole text is capped: errors go into logs and DLQ
/// envelopes.
fn bounded_detail(detail: &str) -> String {
    const QUOTED_BYTES: usize = 200;
    let mut out = String::with_capacity(detail.len().min(2 * ERROR_EXCERPT_BYTES));
    let mut rest = detail;
    while let Some(open) = rest.find('\'') {
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        // The quoted span ends at the last quote before the next `' ` or
        // `'.` (values may hold quotes themselves), else at the end.
        let close = after
            .match_indices('\'')
            .map(|(index, _)| index)
            .find(|&index| {
                matches!(
                    after.as_bytes().get(index + 1),
                    None | Some(b' ' | b'.' | b',')
                )
            })
            .unwrap_or(after.len());
        out.push_str(&excerpt(&after[..close], QUOTED_BYTES));
        rest = &after[close..];
        if let Some(stripped) = rest.strip_prefix('\'') {
            out.push('\'');
            rest = stripped;
        }
    }
    out.push_str(rest);
    excerpt(&out, ERROR_EXCERPT_BYTES)
}

/// The data row an inference error names: arrow-csv reports "at line N"
/// counting records from 1 with the header as record 1.
fn inference_error_row(detail: &str, header: bool) -> Option<u64> {
    let (_, after) = detail.rsplit_once("at line ")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    let record: u64 = digits.parse().ok()?;
    let row = if header {
        record.checked_sub(1)?
    } else {
        record
    };
    (row > 0).then_some(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::Int64Type;
    use std::io::Write;

    fn job(schema: Option<SchemaRef>) -> CsvJob {
        CsvJob {
            text_columns: Vec::new(),
            uri: "s3://b/k.csv".into(),
            options: CsvOptions::default(),
            schema,
            batch_rows: 2,
            declared_codec: None,
            object_bytes: 0,
            limits: RouteLimits::default(),
            in_parallel: false,
        }
    }

    /// Runs the decoder on a separate thread, as the worker does.
    pub(super) fn run(
        data: Vec<u8>,
        job: CsvJob,
    ) -> (Result<DecodeSummary, IngestError>, Vec<RecordBatch>) {
        let (tx, mut rx) = mpsc::channel(2);
        let decoder = std::thread::spawn(move || decode_csv(Cursor::new(data), &job, &tx));
        let mut batches = Vec::new();
        while let Some(batch) = rx.blocking_recv() {
            batches.push(batch);
        }
        (decoder.join().unwrap(), batches)
    }

    fn id_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn inferred_schema_and_batches_of_the_route_size() {
        let (result, batches) = run(b"id,name\n1,a\n2,b\n3,c".to_vec(), job(None));
        let summary = result.unwrap();
        assert_eq!(summary.rows, 3);
        assert_eq!(batches.len(), 2);
        assert_eq!(summary.schema.field(0).data_type(), &DataType::Int64);
        let ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[test]
    fn gzip_with_several_members_is_read_whole() {
        let mut data = Vec::new();
        for part in ["id,name\n1,a\n", "2,b\n"] {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(part.as_bytes()).unwrap();
            data.extend(gz.finish().unwrap());
        }
        let (result, _) = run(data, job(Some(id_schema())));
        assert_eq!(result.unwrap().rows, 2);
    }

    #[test]
    fn zstd_is_detected_by_magic_bytes() {
        let data = zstd::encode_all(&b"id,name\n1,a\n2,b\n3,c\n"[..], 3).unwrap();
        let (result, _) = run(data, job(Some(id_schema())));
        assert_eq!(result.unwrap().rows, 3);
    }

    #[test]
    fn declared_gzip_that_is_not_gzip_is_a_decompression_error() {
        let mut job = job(None);
        job.declared_codec = Some(Codec::Gzip);
        let (result, _) = run(b"id\n1\n".to_vec(), job);
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DecompressionError, "{err}");
    }

    #[test]
    fn truncated_gzip_is_a_decompression_error() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"id,name\n").unwrap();
        gz.write_all(&b"1,a\n".repeat(10_000)).unwrap();
        let mut data = gz.finish().unwrap();
        data.truncate(data.len() / 2);
        let (result, _) = run(data, job(Some(id_schema())));
        assert_eq!(result.unwrap_err().kind(), ErrorKind::DecompressionError);
    }

    #[test]
    fn a_value_that_does_not_fit_names_its_rows() {
        let (result, _) = run(
            b"id,name\n1,a\n2,b\n3,c\nfour,d\n".to_vec(),
            job(Some(id_schema())),
        );
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CsvError);
        let text = err.to_string();
        // Rows 1-2 were a full batch; the bad value is in the second batch.
        assert!(text.contains("rows 3..=4"), "{text}");
        assert!(text.contains("four"), "{text}");
    }

    #[test]
    fn a_row_with_too_many_fields_is_an_error() {
        let (result, _) = run(
            b"id,name\n1,a\n2,b,extra\n".to_vec(),
            job(Some(id_schema())),
        );
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CsvError);
        assert!(err.to_string().contains("fields"), "{err}");
    }

    #[test]
    fn configured_null_values_become_nulls() {
        let mut job = job(Some(id_schema()));
        job.options.null_values = vec!["NA".into()];
        let (result, batches) = run(b"id,name\n1,NA\n2,\n".to_vec(), job);
        assert_eq!(result.unwrap().rows, 2);
        assert_eq!(batches[0].column(1).null_count(), 2);
    }

    #[test]
    fn header_only_file_has_zero_rows() {
        let (result, batches) = run(b"id,name\n".to_vec(), job(Some(id_schema())));
        assert_eq!(result.unwrap().rows, 0);
        assert!(batches.is_empty());
    }

    #[test]
    fn a_column_empty_in_the_sample_keeps_its_later_values() {
        let mut job = job(None);
        job.options.infer_rows = std::num::NonZeroUsize::new(2).unwrap();
        let (result, batches) = run(b"id,note\n1,\n2,\n3,late\n".to_vec(), job);
        let summary = result.unwrap();
        assert_eq!(summary.schema.field(1).data_type(), &DataType::Utf8);
        let notes = batches[1].column(1).as_string::<i32>();
        assert_eq!(notes.value(0), "late");
    }

    #[test]
    fn empty_file_without_schema_has_zero_rows() {
        let (result, _) = run(Vec::new(), job(None));
        assert_eq!(result.unwrap().rows, 0);
    }

    #[test]
    fn custom_delimiter_without_header() {
        let mut job = job(Some(id_schema()));
        job.options.delimiter = Some(';');
        job.options.header = false;
        let (result, batches) = run(b"7;x\n8;y\n".to_vec(), job);
        assert_eq!(result.unwrap().rows, 2);
        let ids: &Int64Array = batches[0].column(0).as_primitive();
        assert_eq!(ids.values().to_vec(), vec![7, 8]);
    }

    #[test]
    fn an_inference_error_names_the_data_row() {
        let (result, _) = run(b"a,b\n1,2\n3,4,5\n6,7\n".to_vec(), job(None));
        match result.unwrap_err() {
            IngestError::Csv {
                first_row,
                last_row,
                ..
            } => assert_eq!((first_row, last_row), (2, 2)),
            other => panic!("{other}"),
        }
        assert_eq!(inference_error_row("x at line 7", false), Some(7));
        assert_eq!(inference_error_row("no position", true), None);
    }

    #[test]
    fn a_small_object_is_one_batch_of_the_rows_it_holds() {
        let mut job = job(None);
        job.batch_rows = 8192;
        let (result, batches) = run(b"id,name\n1,a\n2,b\n3,c\n".to_vec(), job);
        assert_eq!(result.unwrap().rows, 3);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].num_rows(), 3);
    }

    #[test]
    fn an_object_larger_than_the_head_streams_in_full_batches() {
        // About 3 MiB: the head (1 MiB with an explicit schema) plus two
        // more buffers' worth, with records cut at every buffer boundary.
        let rows = 300_000u64;
        let mut data = b"id,name\n".to_vec();
        for id in 0..rows {
            writeln!(data, "{id},n{id}").unwrap();
        }
        assert!(data.len() > 2 * READ_BUFFER_BYTES);
        let mut job = job(Some(id_schema()));
        job.batch_rows = 8192;
        let (result, batches) = run(data, job);
        assert_eq!(result.unwrap().rows, rows);
        assert!(
            batches[..batches.len() - 1]
                .iter()
                .all(|b| b.num_rows() == 8192)
        );
        let ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(ids, (0..rows as i64).collect::<Vec<_>>());
    }

    #[test]
    fn a_blank_head_longer_than_the_inference_sample_is_skipped() {
        // More blank and whitespace-only lines than `infer_max_bytes`
        // holds, then a header whose first name keeps its leading space.
        let mut job = job(None);
        job.options.infer_max_bytes = std::num::NonZeroUsize::new(64 * 1024).unwrap();
        job.batch_rows = 8192;
        let mut data = b"\n \r\n\t\n".repeat(40_000);
        data.extend_from_slice(b" id,name\n");
        for id in 0..1000 {
            writeln!(data, "{id},n{id}").unwrap();
        }
        let (result, batches) = run(data, job);
        let summary = result.unwrap();
        assert_eq!(summary.rows, 1000);
        assert_eq!(summary.schema.field(0).name(), " id");
        assert_eq!(
            batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
            1000
        );
    }

    #[test]
    fn a_row_error_after_a_blank_head_counts_offsets_from_the_file_start() {
        let mut job = job(Some(id_schema()));
        job.limits.max_record_bytes = std::num::NonZeroUsize::new(100).unwrap();
        let mut data = b"\n".repeat(1000);
        data.extend_from_slice(b"id,name\n1,\"open");
        data.extend_from_slice(&b"x".repeat(200));
        let (result, _) = run(data, job);
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CsvError);
        assert!(err.to_string().contains("opened at byte 1010"), "{err}");
    }

    #[test]
    fn whitespace_only_files_are_empty() {
        for data in [&b"\n\n  \n\t"[..], b"   ", b"\r\n"] {
            let (result, batches) = run(data.to_vec(), job(None));
            assert_eq!(result.unwrap().rows, 0);
            assert!(batches.is_empty());
        }
    }

    #[test]
    fn more_columns_than_max_columns_is_a_schema_error() {
        let header = |columns: usize| {
            let names: Vec<String> = (0..columns).map(|c| format!("c{c}")).collect();
            let values = vec!["1"; columns];
            format!("{}\n{}\n", names.join(","), values.join(",")).into_bytes()
        };
        let mut at_limit = job(None);
        at_limit.limits.max_columns = std::num::NonZeroUsize::new(300).unwrap();
        let (result, _) = run(header(300), at_limit);
        assert_eq!(result.unwrap().rows, 1);
        let mut over = job(None);
        over.limits.max_columns = std::num::NonZeroUsize::new(300).unwrap();
        let err = run(header(301), over).0.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SchemaError);
        assert!(
            err.to_string()
                .contains("301 columns, more than limits.max_columns (300)"),
            "{err}"
        );
    }

    #[test]
    fn wide_rows_get_fewer_rows_per_batch() {
        // 2,000 columns of one digit: 16 bytes a field estimated, so a
        // 1 MiB batch holds about 30 rows, not the route's 8192.
        let columns = 2000;
        let names: Vec<String> = (0..columns).map(|c| format!("c{c}")).collect();
        let row = vec!["7"; columns].join(",");
        let mut data = format!("{}\n", names.join(",")).into_bytes();
        for _ in 0..200 {
            writeln!(data, "{row}").unwrap();
        }
        let mut job = job(None);
        job.batch_rows = 8192;
        job.limits.max_batch_bytes = std::num::NonZeroUsize::new(1 << 20).unwrap();
        let (result, batches) = run(data, job);
        assert_eq!(result.unwrap().rows, 200);
        let largest = batches.iter().map(RecordBatch::num_rows).max().unwrap();
        assert!((20..=40).contains(&largest), "{largest} rows per batch");
    }

    /// A reader that yields `byte` forever (after `prefix`), counting reads:
    /// a record that never ends must be stopped without reading on.
    struct Endless {
        prefix: Cursor<Vec<u8>>,
        byte: u8,
        served: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.prefix.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            buf.fill(self.byte);
            self.served
                .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(buf.len())
        }
    }

    fn endless(prefix: &[u8], byte: u8, job: CsvJob) -> (IngestError, u64) {
        let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let input = Endless {
            prefix: Cursor::new(prefix.to_vec()),
            byte,
            served: served.clone(),
        };
        let (tx, mut rx) = mpsc::channel(2);
        let decoder = std::thread::spawn(move || decode_csv(input, &job, &tx));
        while rx.blocking_recv().is_some() {}
        let err = decoder.join().unwrap().unwrap_err();
        (err, served.load(std::sync::atomic::Ordering::Relaxed))
    }

    #[test]
    fn a_record_without_a_line_end_stops_at_max_record_bytes() {
        let mut job = job(Some(id_schema()));
        job.limits.max_record_bytes = std::num::NonZeroUsize::new(4 << 20).unwrap();
        let (err, served) = endless(b"id,name\n1,a\n2,", b'x', job);
        assert_eq!(err.kind(), ErrorKind::CsvError);
        let text = err.to_string();
        assert!(text.contains("rows 2..=2"), "{text}");
        assert!(
            text.contains("the record starting at byte 12 has no line end within limits.max_record_bytes (4194304 bytes)"),
            "{text}"
        );
        // Stopped within a read buffer or two of the limit.
        assert!(
            served < (4 << 20) + 3 * READ_BUFFER_BYTES as u64,
            "{served}"
        );
    }

    #[test]
    fn whitespace_without_a_line_end_is_a_record_too_long() {
        let mut job = job(Some(id_schema()));
        job.limits.max_record_bytes = std::num::NonZeroUsize::new(1 << 20).unwrap();
        let (err, served) = endless(b"\n\n", b' ', job);
        assert_eq!(err.kind(), ErrorKind::CsvError, "{err}");
        assert!(err.to_string().contains("starting at byte 2"), "{err}");
        assert!(
            served < (1 << 20) + 4 * READ_BUFFER_BYTES as u64,
            "{served}"
        );
    }

    #[test]
    fn a_quote_never_closed_stops_at_max_record_bytes() {
        let mut job = job(Some(id_schema()));
        job.limits.max_record_bytes = std::num::NonZeroUsize::new(2 << 20).unwrap();
        let (err, served) = endless(b"id,name\n1,\"a\n\n", b'\n', job);
        assert_eq!(err.kind(), ErrorKind::CsvError);
        let text = err.to_string();
        assert!(text.contains("rows 1..=1"), "{text}");
        assert!(
            text.contains("quoted field opened at byte 10 is still open"),
            "{text}"
        );
        assert!(
            served < (2 << 20) + 3 * READ_BUFFER_BYTES as u64,
            "{served}"
        );
    }

    #[test]
    fn a_gzip_bomb_is_a_decompression_error() {
        // 80 MiB of valid rows from a small gzip object: above the ratio's
        // 64 MiB floor and far above 250 times its stored size.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(b"id,name\n").unwrap();
        let rows = b"1,a\n".repeat(1 << 20);
        for _ in 0..20 {
            gz.write_all(&rows).unwrap();
        }
        let data = gz.finish().unwrap();
        let mut job = job(Some(id_schema()));
        job.batch_rows = 8192;
        job.object_bytes = data.len() as u64;
        let (result, _) = run(data, job);
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DecompressionError);
        assert!(err.to_string().contains("decompression bomb"), "{err}");
    }

    #[test]
    fn a_huge_bad_value_is_cut_but_its_type_and_column_are_kept() {
        let value = "9".repeat(300_000) + "x";
        let data = format!("id,name\n1,a\n{value},b\n");
        let (result, _) = run(data.into_bytes(), job(Some(id_schema())));
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CsvError);
        let text = err.to_string();
        assert!(text.len() < 1024, "{} bytes: {text}", text.len());
        assert!(text.contains("more bytes]"), "{text}");
        assert!(text.contains("Int64"), "{text}");
        assert!(bounded_detail("plain text").eq("plain text"));
        assert_eq!(
            bounded_detail("value 'it''s' as type 'Int64'"),
            "value 'it''s' as type 'Int64'"
        );
    }

    #[test]
    fn most_rows_bounds_the_records_in_the_densest_csv() {
        // One byte per column per record: empty fields and line ends only.
        for columns in 1..5usize {
            for records in 0..20usize {
                let line = format!("{}\n", ",".repeat(columns - 1));
                let mut bytes = line.repeat(records);
                assert!(records <= most_rows(bytes.len(), columns));
                // The last record may lack its line end.
                bytes.pop();
                assert!(records <= most_rows(bytes.len(), columns));
            }
        }
    }
}
