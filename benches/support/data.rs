#![allow(dead_code)] // shared by several targets, each using a part
//! Deterministic benchmark inputs: CSV rows from a fixed-seed generator, so
//! every run (and every machine) measures the same bytes.

use std::io::{BufRead, Write};
use std::sync::Arc;

use arrow::csv::reader::ReaderBuilder;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use flate2::Compression as GzLevel;
use flate2::write::GzEncoder;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use s3_ingest::sink::parquet_settings::ParquetWriterSettings;

/// Rows per batch, as the worker's default `batch_rows`.
pub const BATCH_ROWS: usize = 8192;

/// The columns of the generated CSV: a typical vendor order file.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Int64, false),
        Field::new("customer", DataType::Utf8, true),
        Field::new("quantity", DataType::Int64, true),
        Field::new("unit_price", DataType::Float64, true),
        Field::new(
            "ordered_at",
            DataType::Timestamp(TimeUnit::Second, None),
            true,
        ),
        Field::new("note", DataType::Utf8, true),
    ]))
}

/// A `parquet_dir` route (`**` into the fixture's `lake` sink) that
/// declares [`schema`], in Arrow's own type syntax, so the worker does not
/// infer it.
pub fn route_with_schema_toml() -> String {
    let columns: Vec<String> = schema()
        .fields()
        .iter()
        .map(|field| {
            format!(
                "{{ name = \"{}\", type = \"{}\", nullable = {} }}",
                field.name(),
                field.data_type(),
                field.is_nullable()
            )
        })
        .collect();
    format!(
        "[[routes]]\nname = \"all\"\nkey_glob = \"**\"\nsink = \"lake\"\nschema = [{}]\n",
        columns.join(", ")
    )
}

/// xorshift64*: tiny, fast and fully determined by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const CUSTOMERS: [&str; 6] = [
    "acme",
    "globex",
    "initech",
    "umbrella",
    "stark industries",
    "wayne, \"enterprises\"",
];

/// A CSV file with a header, `target_bytes` long give or take one row.
pub fn csv_bytes(target_bytes: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::with_capacity(target_bytes + 256);
    out.extend_from_slice(b"order_id,customer,quantity,unit_price,ordered_at,note\n");
    let mut order_id = 0u64;
    while out.len() < target_bytes {
        order_id += 1;
        let r = rng.next();
        let customer = CUSTOMERS[(r % CUSTOMERS.len() as u64) as usize];
        let customer = if customer.contains(',') {
            // Quoted field with escaped quotes: real files have some.
            format!("\"{}\"", customer.replace('"', "\"\""))
        } else {
            customer.to_owned()
        };
        let quantity = (r >> 8) % 1000;
        let cents = (r >> 20) % 100_000;
        let second = (r >> 40) % 86_400;
        let note = if r.is_multiple_of(7) { "" } else { "ok" };
        writeln!(
            out,
            "{order_id},{customer},{quantity},{}.{:02},2026-03-{:02}T{:02}:{:02}:{:02},{note}",
            cents / 100,
            cents % 100,
            1 + (r >> 56) % 28,
            second / 3600,
            second / 60 % 60,
            second % 60
        )
        .expect("writing to a Vec cannot fail");
    }
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), GzLevel::fast());
    encoder.write_all(bytes).expect("in memory");
    encoder.finish().expect("in memory")
}

/// Bare arrow-csv: the push decoder fed straight from `input` (a slice is
/// a `BufRead` too), no pipeline. Returns the rows decoded.
pub fn bare_csv_batches(mut input: impl BufRead, mut each: impl FnMut(RecordBatch)) -> u64 {
    let mut decoder = ReaderBuilder::new(schema())
        .with_header(true)
        .with_batch_size(BATCH_ROWS)
        .build_decoder();
    let mut rows = 0u64;
    loop {
        let buf = input.fill_buf().expect("bench input reads");
        let at_end = buf.is_empty();
        let consumed = decoder.decode(buf).expect("generated CSV decodes");
        input.consume(consumed);
        if (at_end || decoder.capacity() == 0)
            && let Some(batch) = decoder.flush().expect("generated CSV decodes")
        {
            rows += batch.num_rows() as u64;
            each(batch);
        }
        if at_end {
            return rows;
        }
    }
}

/// The Parquet properties the `parquet_dir` sink writes with by default
/// (zstd level 1, dictionaries, page statistics), and its bounded row
/// groups (smaller row groups mean more dictionaries and more pages, so the
/// floor must use the same bound).
pub fn sink_writer_properties() -> WriterProperties {
    writer_properties(&ParquetWriterSettings::default())
}

/// The properties the `parquet_dir` sink writes [`schema`] with when
/// configured with `settings`: the sink's own `apply` and row bound.
pub fn writer_properties(settings: &ParquetWriterSettings) -> WriterProperties {
    settings
        .apply(WriterProperties::builder(), &schema())
        .set_max_row_group_row_count(Some(s3_ingest::sink::parquet_dir::MAX_ROW_GROUP_ROWS))
        .build()
}

/// The CSV as a Parquet file, as the `parquet_dir` sink would write it.
pub fn parquet_bytes(csv: &[u8]) -> Vec<u8> {
    let mut writer = ArrowWriter::try_new(Vec::new(), schema(), Some(sink_writer_properties()))
        .expect("writer for the bench schema");
    bare_csv_batches(csv, |batch| writer.write(&batch).expect("in memory"));
    writer.into_inner().expect("in memory")
}

/// Bare decode + Parquet encode, the floor the pipeline is measured against:
/// returns the rows written.
pub fn bare_csv_to_parquet(csv: &[u8]) -> u64 {
    bare_csv_to_parquet_with(csv, sink_writer_properties()).0
}

/// Bare decode + Parquet encode with `properties`, the output counted and
/// dropped: returns (rows, Parquet bytes).
pub fn bare_csv_to_parquet_with(csv: &[u8], properties: WriterProperties) -> (u64, u64) {
    let mut writer = ArrowWriter::try_new(CountingSink(0), schema(), Some(properties))
        .expect("writer for the bench schema");
    let rows = bare_csv_batches(csv, |batch| writer.write(&batch).expect("to a sink"));
    (rows, writer.into_inner().expect("to a sink").0)
}

/// The CSV decoded into batches, to encode without decoding.
pub fn csv_batches(csv: &[u8]) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    bare_csv_batches(csv, |batch| batches.push(batch));
    batches
}

/// Bare Parquet encode of already decoded `batches` with `properties`, the
/// output counted and dropped: returns the Parquet bytes.
pub fn bare_encode(batches: &[RecordBatch], properties: WriterProperties) -> u64 {
    let mut writer = ArrowWriter::try_new(CountingSink(0), schema(), Some(properties))
        .expect("writer for the bench schema");
    for batch in batches {
        writer.write(batch).expect("to a sink");
    }
    writer.into_inner().expect("to a sink").0
}

/// A writer that only counts the bytes written to it.
pub struct CountingSink(pub u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// "10KiB", "1MiB", "64MiB", "1GiB" or plain bytes.
pub fn parse_size(text: &str) -> usize {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let number: usize = number
        .parse()
        .unwrap_or_else(|_| panic!("size `{text}`: expected e.g. 10KiB, 1MiB, 1GiB"));
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        other => panic!("size `{text}`: unknown unit `{other}`"),
    };
    number * scale
}

pub fn format_size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b if b >= 1 << 20 => format!("{:.1}MiB", b as f64 / (1 << 20) as f64),
        b => format!("{b}B"),
    }
}

/// The `fraction` percentile of `values` (sorted in place; nearest rank);
/// 0 when empty.
pub fn percentile(values: &mut [f64], fraction: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() - 1) as f64 * fraction).round() as usize;
    values[rank]
}
