//! A large CSV object decoded in chunks on the CPU pool.
//!
//! Decoding (csv-core's tokenizer and arrow-csv's value parsing) is most
//! of a CSV object's CPU time, and one stream of it keeps one core busy.
//! Here the reading thread cuts the decompressed stream into chunks of
//! whole records, just after the last line end outside quotes (which the
//! quote tracker already follows), and the pool decodes chunks side by
//! side, each with its own arrow-csv decoder. Batches leave in the file's
//! order: a chunk's batches wait until every earlier chunk's have left.
//!
//! Memory: at most [`IN_FLIGHT_PER_THREAD`] chunks per pool thread are
//! being decoded or waiting their turn, each about [`CHUNK_BYTES`] of CSV
//! plus its batches.
//!
//! Errors read as the one-stream path's: rows count from the file's start
//! (arrow-csv's "line N" inside a chunk is shifted by the rows before
//! it), the first error in the file's order wins, and a record past
//! `max_record_bytes` or a quote never closed is found by the reading
//! thread, as before, once the records before it are decoded.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::sync::LazyLock;
use std::sync::mpsc as std_mpsc;

use arrow::csv::reader::{Format, ReaderBuilder};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use regex::Regex;
use tokio::sync::mpsc;

use super::super::{DecodeSummary, send_batch};
use super::{CsvJob, READ_BUFFER_BYTES, bounded_detail, never_closed, record_too_long};
use crate::decode::quotes::QuoteTracker;
use crate::error::IngestError;

/// CSV bytes per chunk: large enough that a chunk's decoder start-up and
/// hand-offs cost little, small enough to keep memory near the one-stream
/// path's.
const CHUNK_BYTES: usize = 1 << 20;

/// Chunks in flight per pool thread: one being decoded, one ready.
const IN_FLIGHT_PER_THREAD: usize = 2;

/// How one object's chunks are decoded.
pub(super) struct Chunks<'a> {
    pub job: &'a CsvJob,
    pub schema: SchemaRef,
    /// The route's format; chunks after the first have no header.
    pub format: Format,
    pub batch_rows: usize,
    /// Blank lines skipped before the stream: offsets in messages count
    /// from the start of the decompressed file.
    pub blank_head_bytes: u64,
    pub decompress_error: &'a dyn Fn(u64, std::io::Error) -> IngestError,
}

/// What the pool made of one chunk; a panic is carried back to the
/// reading thread and raised there, as the one-stream decoder's would be.
type ChunkResult = std::thread::Result<DecodedChunk>;

struct DecodedChunk {
    batches: Vec<RecordBatch>,
    /// Where decoding stopped, if it did: the batches before it are kept
    /// (they leave before the error, as in the one-stream path).
    error: Option<ChunkError>,
}

struct ChunkError {
    /// Rows of the failing batch, counted as the one-stream path counts
    /// them for its message.
    rows_in_batch: u64,
    /// arrow-csv's message, with line numbers local to the chunk.
    detail: String,
}

impl Chunks<'_> {
    /// Reads `input` (the decompressed stream after the blank head, the
    /// schema inference sample included) to its end.
    pub fn decode(
        self,
        mut input: impl Read,
        mut quotes: QuoteTracker,
        batches: &mpsc::Sender<RecordBatch>,
    ) -> Result<DecodeSummary, IngestError> {
        let (done_tx, done_rx) = std_mpsc::channel::<(u64, ChunkResult)>();
        let mut in_order = InOrder {
            uri: &self.job.uri,
            header: self.job.options.header,
            batches,
            summary: DecodeSummary::empty(self.schema.clone()),
            next: 0,
            waiting: BTreeMap::new(),
        };
        let max_in_flight = crate::parallel::threads() * IN_FLIGHT_PER_THREAD;
        let max_record_bytes = self.job.limits.max_record_bytes.get() as u64;
        let mut read_buffer = vec![0u8; READ_BUFFER_BYTES];
        // Bytes read but not yet in a chunk, from stream offset `pending_start`.
        let mut pending: Vec<u8> = Vec::with_capacity(CHUNK_BYTES + READ_BUFFER_BYTES);
        let mut pending_start: u64 = 0;
        let mut offset: u64 = 0;
        let mut dispatched: u64 = 0;
        // Cuts `pending` at stream offset `end` and hands the part before
        // it to the pool.
        let dispatch =
            |pending: &mut Vec<u8>, pending_start: &mut u64, dispatched: &mut u64, end: u64| {
                let cut = usize::try_from(end - *pending_start).expect("a chunk fits in memory");
                let rest = pending.split_off(cut);
                let chunk = std::mem::replace(pending, rest);
                *pending_start = end;
                let index = *dispatched;
                *dispatched += 1;
                let format = match index {
                    0 => self.format.clone(),
                    _ => self.format.clone().with_header(false),
                };
                let (schema, batch_rows, done) =
                    (self.schema.clone(), self.batch_rows, done_tx.clone());
                rayon::spawn(move || {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        decode_chunk(&chunk, format, schema, batch_rows)
                    }));
                    // The receiver is gone only when the object already failed.
                    let _ = done.send((index, result));
                });
            };
        loop {
            let read = match input.read(&mut read_buffer) {
                Ok(read) => read,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => {
                    let error = (self.decompress_error)(self.blank_head_bytes + offset, err);
                    in_order.finish(&done_rx, dispatched)?;
                    return Err(error);
                }
            };
            let bytes = &read_buffer[..read];
            quotes.feed(bytes);
            pending.extend_from_slice(bytes);
            offset += read as u64;
            // A record that does not end: the records before it go first,
            // so that its row number is known and earlier errors win.
            if quotes.open_record_bytes() > max_record_bytes {
                dispatch(
                    &mut pending,
                    &mut pending_start,
                    &mut dispatched,
                    quotes.record_start(),
                );
                in_order.finish(&done_rx, dispatched)?;
                let row = in_order.summary.rows + 1;
                return Err(record_too_long(
                    self.job,
                    &quotes,
                    self.blank_head_bytes,
                    row,
                ));
            }
            if read == 0 {
                if let Some(opened_at) = quotes.unterminated_quote() {
                    dispatch(
                        &mut pending,
                        &mut pending_start,
                        &mut dispatched,
                        quotes.record_start(),
                    );
                    in_order.finish(&done_rx, dispatched)?;
                    let row = in_order.summary.rows + 1;
                    return Err(IngestError::Csv {
                        uri: self.job.uri.clone(),
                        first_row: row,
                        last_row: row,
                        detail: never_closed(self.blank_head_bytes + opened_at),
                    });
                }
                // The last chunk may end without a line end.
                dispatch(&mut pending, &mut pending_start, &mut dispatched, offset);
                in_order.finish(&done_rx, dispatched)?;
                break;
            }
            // A single record longer than a chunk keeps growing `pending`
            // until it ends (or passes `max_record_bytes`, above).
            if pending.len() >= CHUNK_BYTES && quotes.record_start() > pending_start {
                dispatch(
                    &mut pending,
                    &mut pending_start,
                    &mut dispatched,
                    quotes.record_start(),
                );
            }
            while dispatched - in_order.next >= max_in_flight as u64 {
                in_order.wait_for_one(&done_rx)?;
            }
        }
        let mut summary = in_order.summary;
        summary.decoded_bytes = self.blank_head_bytes + offset;
        Ok(summary)
    }
}

/// Sends decoded chunks' batches in the file's order.
struct InOrder<'a> {
    uri: &'a str,
    /// Whether the first chunk began with a header (arrow-csv counts it
    /// in its record numbers).
    header: bool,
    batches: &'a mpsc::Sender<RecordBatch>,
    summary: DecodeSummary,
    /// The chunk whose batches leave next.
    next: u64,
    /// Decoded chunks waiting for an earlier one.
    waiting: BTreeMap<u64, ChunkResult>,
}

impl InOrder<'_> {
    /// Waits for one more chunk from the pool and sends whatever is now
    /// in order.
    fn wait_for_one(
        &mut self,
        done: &std_mpsc::Receiver<(u64, ChunkResult)>,
    ) -> Result<(), IngestError> {
        let (index, result) = done.recv().expect("the decoder holds a sender");
        self.waiting.insert(index, result);
        while let Some(result) = self.waiting.remove(&self.next) {
            let index = self.next;
            self.next += 1;
            self.send(index, result)?;
        }
        Ok(())
    }

    /// Sends every chunk up to `dispatched`.
    fn finish(
        &mut self,
        done: &std_mpsc::Receiver<(u64, ChunkResult)>,
        dispatched: u64,
    ) -> Result<(), IngestError> {
        while self.next < dispatched {
            self.wait_for_one(done)?;
        }
        Ok(())
    }

    fn send(&mut self, index: u64, result: ChunkResult) -> Result<(), IngestError> {
        let decoded = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let rows_before_chunk = self.summary.rows;
        for batch in decoded.batches {
            self.summary.rows += batch.num_rows() as u64;
            self.summary.batches += 1;
            send_batch(self.batches, batch, self.uri)?;
        }
        let Some(error) = decoded.error else {
            return Ok(());
        };
        // The first chunk's decoder counted the header too.
        let records_before_chunk = match index {
            0 => 0,
            _ => rows_before_chunk + u64::from(self.header),
        };
        let detail = shift_line_number(&error.detail, records_before_chunk);
        Err(IngestError::Csv {
            uri: self.uri.to_owned(),
            first_row: self.summary.rows + 1,
            last_row: self.summary.rows + error.rows_in_batch.max(1),
            detail: bounded_detail(&detail),
        })
    }
}

/// Decodes one chunk of whole records with its own decoder.
fn decode_chunk(
    chunk: &[u8],
    format: Format,
    schema: SchemaRef,
    batch_rows: usize,
) -> DecodedChunk {
    let mut decoder = ReaderBuilder::new(schema)
        .with_format(format)
        .with_batch_size(batch_rows)
        .build_decoder();
    let mut decoded = DecodedChunk {
        batches: Vec::new(),
        error: None,
    };
    let mut rest = chunk;
    // `decode(&[])` once at the end finishes a last record without a
    // line end (only the file's last chunk can have one).
    let mut ending = false;
    loop {
        let finishing = ending;
        let consumed = match decoder.decode(rest) {
            Ok(consumed) => consumed,
            Err(err) => {
                let buffered = (batch_rows - decoder.capacity()) as u64;
                decoded.error = Some(ChunkError {
                    rows_in_batch: buffered + 1,
                    detail: err.to_string(),
                });
                return decoded;
            }
        };
        rest = &rest[consumed..];
        ending = rest.is_empty();
        if finishing || decoder.capacity() == 0 {
            let buffered = (batch_rows - decoder.capacity()) as u64;
            match decoder.flush() {
                Ok(Some(batch)) => decoded.batches.push(batch),
                Ok(None) => {}
                Err(err) => {
                    decoded.error = Some(ChunkError {
                        rows_in_batch: buffered,
                        detail: err.to_string(),
                    });
                    return decoded;
                }
            }
        }
        if finishing {
            return decoded;
        }
    }
}

/// arrow-csv numbers records from its decoder's start, a header
/// included ("at line N", "for line N"). A chunk's decoder starts
/// mid-file, so the number is shifted by the records before it.
fn shift_line_number(detail: &str, records_before: u64) -> String {
    static LINE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\b(at|for) line (\d+)").expect("valid regex"));
    // The first match only: the row data quoted after it is the file's.
    LINE.replacen(detail, 1, |captures: &regex::Captures| {
        let line: u64 = captures[2].parse().unwrap_or(0);
        format!("{} line {}", &captures[1], line + records_before)
    })
    .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};

    use crate::config::{CsvOptions, RouteLimits};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
            Field::new("amount", DataType::Float64, true),
        ]))
    }

    fn job(in_parallel: bool) -> CsvJob {
        CsvJob {
            text_columns: Vec::new(),
            uri: "s3://b/big.csv".into(),
            options: CsvOptions::default(),
            schema: Some(schema()),
            batch_rows: 8192,
            declared_codec: None,
            object_bytes: 0,
            limits: RouteLimits::default(),
            in_parallel,
        }
    }

    /// Several MiB: quoted fields holding delimiters, doubled quotes and
    /// line ends (CRLF and LF) that cross chunk boundaries somewhere.
    fn orders(rows: u64, header: bool) -> Vec<u8> {
        let mut data = Vec::new();
        if header {
            data.extend_from_slice(b"id,note,amount\r\n");
        }
        for id in 0..rows {
            match id % 5 {
                0 => write!(
                    data,
                    "{id},\"multi\nline, \"\"quoted\"\"\r\nnote {id}\",{id}.5\r\n"
                ),
                1 => writeln!(data, "{id},,"),
                _ => writeln!(data, "{id},plain note {id},{}", id as f64 / 4.0),
            }
            .unwrap();
        }
        data
    }

    type Outcome = (Result<DecodeSummary, IngestError>, Vec<RecordBatch>);

    /// The one-stream tests' runner: the decoder on its own thread.
    fn run(data: Vec<u8>, job: CsvJob) -> Outcome {
        super::super::tests::run(data, job)
    }

    /// The same input through one stream and through chunks.
    fn both(data: Vec<u8>, configure: impl Fn(&mut CsvJob)) -> (Outcome, Outcome) {
        let (mut one, mut chunked) = (job(false), job(true));
        configure(&mut one);
        configure(&mut chunked);
        (run(data.clone(), one), run(data, chunked))
    }

    fn rows_of(batches: &[RecordBatch]) -> RecordBatch {
        arrow::compute::concat_batches(&schema(), batches).unwrap()
    }

    fn error_of(outcome: &Outcome) -> (u64, u64, String) {
        match &outcome.0 {
            Err(IngestError::Csv {
                first_row,
                last_row,
                detail,
                ..
            }) => (*first_row, *last_row, detail.clone()),
            other => panic!("expected a CSV error, got {other:?}"),
        }
    }

    #[test]
    fn chunks_decode_to_the_rows_one_stream_decodes_in_the_same_order() {
        let data = orders(200_000, true);
        assert!(data.len() > 4 * CHUNK_BYTES, "{} bytes", data.len());
        let (one, chunked) = both(data, |_| {});
        let (one_summary, chunked_summary) = (one.0.unwrap(), chunked.0.unwrap());
        assert_eq!(chunked_summary.rows, 200_000);
        assert_eq!(chunked_summary.rows, one_summary.rows);
        assert_eq!(chunked_summary.decoded_bytes, one_summary.decoded_bytes);
        assert_eq!(
            chunked_summary.batches,
            chunked.1.len() as u64,
            "every batch counted"
        );
        assert!(chunked.1.iter().all(|batch| batch.num_rows() <= 8192));
        assert_eq!(rows_of(&chunked.1), rows_of(&one.1));
    }

    #[test]
    fn a_file_without_header_or_final_line_end_decodes_whole() {
        let mut data = orders(60_000, false);
        data.extend_from_slice(b"60000,last,1.0");
        let (one, chunked) = both(data, |job| job.options.header = false);
        assert_eq!(chunked.0.unwrap().rows, 60_001);
        assert_eq!(rows_of(&chunked.1), rows_of(&one.1));
    }

    #[test]
    fn a_bad_value_late_in_the_file_names_the_same_rows_and_line() {
        let mut data = orders(100_000, true);
        data.extend_from_slice(b"100000,note,not-a-number\n");
        data.extend_from_slice(&orders(10, false));
        let (one, chunked) = both(data, |_| {});
        let (first_row, last_row, detail) = error_of(&chunked);
        let (_, one_last_row, one_detail) = error_of(&one);
        // The line counts the header: data row 100 001.
        assert!(detail.contains("at line 100001"), "{detail}");
        assert_eq!(detail, one_detail);
        // The range is the failing batch's, whose start differs: batches
        // begin at chunk boundaries here.
        assert!(
            first_row <= 100_001 && 100_001 <= last_row,
            "{first_row}..{last_row}"
        );
        assert_eq!(last_row, one_last_row);
    }

    #[test]
    fn a_row_with_too_many_fields_late_in_the_file_names_the_same_record() {
        let mut data = orders(100_000, true);
        data.extend_from_slice(b"100000,note,1.0,extra\n");
        let (one, chunked) = both(data, |_| {});
        let (first_row, last_row, detail) = error_of(&chunked);
        let (_, _, one_detail) = error_of(&one);
        assert_eq!(detail, one_detail);
        assert!(detail.contains("line 100002"), "{detail}");
        assert!(
            first_row <= 100_001 && 100_001 <= last_row,
            "{first_row}..{last_row}"
        );
    }

    #[test]
    fn a_record_without_end_mid_file_stops_at_the_limit_with_its_row() {
        let mut data = orders(50_000, true);
        data.extend_from_slice(b"50000,\"never closed ");
        data.extend(std::iter::repeat_n(b'x', 3 << 20));
        let (one, chunked) = both(data, |job| {
            job.limits.max_record_bytes = std::num::NonZeroUsize::new(2 << 20).unwrap();
        });
        let (first_row, _, detail) = error_of(&chunked);
        assert_eq!(first_row, 50_001);
        assert!(detail.contains("closing quote is missing"), "{detail}");
        assert_eq!((first_row, detail), {
            let (row, _, detail) = error_of(&one);
            (row, detail)
        });
    }

    #[test]
    fn a_quote_never_closed_at_the_end_is_an_error_naming_where_it_opened() {
        let mut data = orders(50_000, true);
        let opened_at = data.len() + "50000,".len();
        data.extend_from_slice(b"50000,\"truncated here\n50001,b,1.0\n");
        // One stream decodes the swallowed rest as one record first and
        // names its field count; chunks decode the records before the
        // quote, then name the quote.
        let chunked = run(data, job(true));
        let (first_row, _, detail) = error_of(&chunked);
        assert_eq!(first_row, 50_001);
        assert!(
            detail.contains(&format!("opened at byte {opened_at} is never closed")),
            "{detail}"
        );
        assert_eq!(
            chunked.1.iter().map(RecordBatch::num_rows).sum::<usize>(),
            50_000
        );
    }

    #[test]
    fn line_numbers_are_shifted_by_what_came_before_the_chunk() {
        assert_eq!(
            shift_line_number(
                "Error while parsing value 'x' as type 'Int64' for column 0 at line 3. Row data: '[at line 3]'",
                101
            ),
            "Error while parsing value 'x' as type 'Int64' for column 0 at line 104. Row data: '[at line 3]'"
        );
        assert_eq!(
            shift_line_number(
                "incorrect number of fields for line 2, expected 6 got 7",
                101
            ),
            "incorrect number of fields for line 103, expected 6 got 7"
        );
    }
}
