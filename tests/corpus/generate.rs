//! Inputs of the bad-input corpus that are too big or too binary to commit:
//! `manifest.toml` names them with `generate = "NAME"`, and the runner
//! (`tests/it/corpus.rs`) includes this file with `#[path]` and calls
//! [`generate`]. Every generator is deterministic.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Date32Array, Decimal128Array, DictionaryArray, Float64Array, Int32Array,
    Int64Array, LargeStringArray, ListArray, MapBuilder, StringArray, StringBuilder, StructArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use arrow::record_batch::RecordBatch;

use crate::util::{gzip, wide_csv};

const MIB: usize = 1 << 20;

/// The bytes of the generated input `name`; panics on an unknown name so
/// that a typo in the manifest fails loudly.
pub fn generate(name: &str) -> Vec<u8> {
    match name {
        // --- compression -------------------------------------------------
        "gzip_csv" => gzip(&csv_rows(2)),
        "gzip_of_empty" => gzip(b""),
        "truncated_gzip" => {
            let mut data = gzip(&csv_rows(5000));
            data.truncate(data.len() / 2);
            data
        }
        // `cat a.gz b.gz c.gz d.gz`, one of them an empty member: 2 + 1 + 0 + 2 rows.
        "concatenated_gzip" => [
            gzip(b"id,name\n1,a\n2,b\n"),
            gzip(b"3,c\n"),
            gzip(b""),
            gzip(b"4,d\n5,e\n"),
        ]
        .concat(),
        // What some tools leave behind: a valid member, then zero padding.
        "gzip_trailing_zeros" => [gzip(&csv_rows(2)), vec![0u8; 512]].concat(),
        // A complete member whose CRC32 trailer is wrong: every byte
        // inflates, only the final check fails.
        "gzip_bad_crc" => {
            let mut data = gzip(&csv_rows(100));
            let crc_at = data.len() - 8;
            data[crc_at] ^= 0xff;
            data
        }
        "double_gzip" => gzip(&gzip(&csv_rows(2))),
        "truncated_zstd" => {
            let mut data = zstd::encode_all(&csv_rows(5000)[..], 3).unwrap();
            data.truncate(data.len() / 2);
            data
        }
        "zstd_csv" => zstd::encode_all(&csv_rows(2)[..], 3).unwrap(),

        // --- CSV ------------------------------------------------------------
        // Latin-1 "café" in a data field: not UTF-8.
        "latin1_field" => b"id,name\n1,caf\xe9\n2,ok\n".to_vec(),
        // Latin-1 in the header itself.
        "latin1_header" => b"id,n\xe4me\n1,a\n".to_vec(),
        // UTF-16LE with its BOM, as Excel's "Unicode text" export writes.
        "utf16le_csv" => {
            let mut data = vec![0xff, 0xfe];
            for unit in "id,name\r\n1,a\r\n".encode_utf16() {
                data.extend(unit.to_le_bytes());
            }
            data
        }
        // 10 MiB and not a single line end.
        "single_line_10mib" => vec![b'x'; 10 * MIB],
        "columns_50" => wide_csv(50, 2),
        "columns_51" => wide_csv(51, 2),
        "line_without_end_128kib" => [&b"id,name\n1,"[..], &vec![b'x'; 128 * 1024]].concat(),
        "open_quote_128kib" => [&b"id,name\n1,\""[..], &b"inside quotes\n".repeat(10_000)].concat(),
        "field_60kib" => [&b"id,name\n1,"[..], &vec![b'x'; 60 * 1024], b"\n"].concat(),
        "gzip_2mib_of_rows" => gzip(&[&b"id,name\n"[..], &b"1,a\n".repeat(512 * 1024)].concat()),
        "blank_head_5mib" => {
            let mut data = b"\n".repeat(5 * MIB);
            data.extend_from_slice(&csv_rows(1000));
            data
        }
        // A header, then one 10 MiB field, then a short row: the first data
        // row does not fit in the 4 MiB inference sample.
        "long_field_10mib" => {
            let mut data = b"id,name\n1,".to_vec();
            data.resize(data.len() + 10 * MIB, b'x');
            data.extend(b"\n2,b\n");
            data
        }
        // Integers for well past the 1000 inferred rows, then a word.
        "type_drift_after_sample" => {
            let mut text = String::from("id,qty\n");
            for i in 0..1500 {
                text.push_str(&format!("{i},{i}\n"));
            }
            text.push_str("1500,many\n");
            text.into_bytes()
        }
        // A column that is empty in every sampled row and filled later.
        "null_column_in_sample" => {
            let mut text = String::from("id,note\n");
            for i in 0..1500 {
                if i < 1200 {
                    text.push_str(&format!("{i},\n"));
                } else {
                    text.push_str(&format!("{i},note {i}\n"));
                }
            }
            text.into_bytes()
        }

        // --- Parquet ----------------------------------------------------------
        "parquet_valid" => parquet_id_name(3),
        "parquet_zero_rows" => parquet_id_name(0),
        // The thrift FileMetaData overwritten with 0xff.
        "parquet_corrupt_footer" => {
            let mut data = parquet_id_name(3);
            let (start, end) = footer_metadata_range(&data);
            data[start..end].fill(0xff);
            data
        }
        "parquet_wrong_magic" => {
            let mut data = parquet_id_name(3);
            let len = data.len();
            data[len - 4..].copy_from_slice(b"PARX");
            data
        }
        "parquet_truncated" => {
            let mut data = parquet_id_name(1000);
            data.truncate(data.len() / 2);
            data
        }
        // The footer length says the metadata is bigger than the file.
        "parquet_footer_length_too_big" => {
            let mut data = parquet_id_name(3);
            let len = data.len();
            data[len - 8..len - 4].copy_from_slice(&(u32::MAX / 2).to_le_bytes());
            data
        }
        "parquet_gzipped" => gzip(&parquet_id_name(3)),
        "parquet_int96" => parquet_int96(),
        "parquet_nested" => parquet_nested(),
        "parquet_many_types" => parquet_many_types(),
        "parquet_invalid_utf8_string" => parquet_invalid_utf8_string(),
        "parquet_exotic_types" => parquet_exotic_types(),
        "parquet_corrupt_arrow_schema" => parquet_corrupt_arrow_schema(),
        "parquet_bare_repeated" => parquet_bare_repeated(),
        // What old parquet-mr and Impala wrote: `dictionary_page_offset` 0,
        // with `data_page_offset` at the chunk's start (where the dictionary
        // page is) for `name`, and for `id`, which has no dictionary.
        "parquet_dictionary_offset_zero" => {
            rewrite_footer(&parquet_id_name_dictionary(1000), |groups| {
                for column in groups[0].columns_mut() {
                    let start = column.byte_range().0 as i64;
                    edit_column(column, |c| {
                        c.set_dictionary_page_offset(Some(0))
                            .set_data_page_offset(start)
                    });
                }
            })
        }
        // The footer says 5 rows, the pages hold 3.
        "parquet_rows_short_of_footer" => rewrite_footer(&parquet_id_name(3), |groups| {
            let group = groups.remove(0);
            groups.push(group.into_builder().set_num_rows(5).build().unwrap());
        }),
        "parquet_negative_column_offset" => rewrite_footer(&parquet_id_name(3), |groups| {
            edit_column(&mut groups[0].columns_mut()[0], |c| {
                c.set_dictionary_page_offset(None)
                    .set_data_page_offset(-100)
            })
        }),
        // A chunk that starts 10 bytes before the old footer (inside the
        // rewritten file) and runs far past the end: S3 answers the range
        // with the bytes it has, a short read.
        "parquet_column_past_the_end" => {
            let file = parquet_id_name(3);
            let (footer_start, _) = footer_metadata_range(&file);
            rewrite_footer(&file, |groups| {
                edit_column(&mut groups[0].columns_mut()[0], |c| {
                    c.set_dictionary_page_offset(None)
                        .set_data_page_offset(footer_start as i64 - 10)
                        .set_total_compressed_size(10_000)
                })
            })
        }
        // A chunk at byte 0 of length 0 (the range 0..0, whose end is 0), in
        // a file bigger than the 64 KiB tail read at open, without an offset
        // index, so that the reader asks for exactly that range.
        "parquet_column_range_end_zero" => rewrite_footer(&parquet_id_name(20_000), |groups| {
            for column in groups[0].columns_mut() {
                edit_column(column, |c| {
                    c.set_offset_index_offset(None)
                        .set_offset_index_length(None)
                });
            }
            edit_column(&mut groups[0].columns_mut()[0], |c| {
                c.set_dictionary_page_offset(None)
                    .set_data_page_offset(0)
                    .set_total_compressed_size(0)
            })
        }),
        "parquet_page_claims_2gib" => parquet_page_claiming(i32::MAX),

        // --- message bodies ---------------------------------------------------
        // Far past serde_json's recursion limit of 128.
        "deeply_nested_json" => "[".repeat(10_000).into_bytes(),
        // Not JSON, and bigger than the 200 KiB of it a dead letter keeps.
        "oversized_garbage" => "not json; ".repeat(25_000).into_bytes(),

        other => panic!("corpus/generate.rs has no generator named {other:?}"),
    }
}

/// `id,name` plus `rows` data rows.
fn csv_rows(rows: usize) -> Vec<u8> {
    let mut text = String::from("id,name\n");
    for i in 0..rows {
        text.push_str(&format!("{i},name {i}\n"));
    }
    text.into_bytes()
}

fn write_parquet(batch: RecordBatch) -> Vec<u8> {
    let mut buffer = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut buffer, batch.schema(), None)
        .expect("arrow writer");
    if batch.num_rows() > 0 {
        writer.write(&batch).expect("write batch");
    }
    writer.close().expect("close parquet");
    buffer
}

fn parquet_id_name(rows: i64) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    let ids: Vec<i64> = (0..rows).collect();
    let names: Vec<String> = ids.iter().map(|i| format!("name {i}")).collect();
    write_parquet(
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap(),
    )
}

/// `rows` ids and names, `name` dictionary-encoded, `id` not.
fn parquet_id_name_dictionary(rows: i64) -> Vec<u8> {
    use parquet::file::properties::WriterProperties;
    use parquet::schema::types::ColumnPath;

    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    let names: Vec<String> = (0..rows).map(|i| format!("name {}", i % 7)).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from((0..rows).collect::<Vec<_>>())),
            Arc::new(StringArray::from(names)),
        ],
    )
    .unwrap();
    let properties = WriterProperties::builder()
        .set_column_dictionary_enabled(ColumnPath::from("id"), false)
        .build();
    let mut buffer = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut buffer, schema, Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    buffer
}

/// `file` with its footer rewritten after `edit` changed its row groups;
/// the data (and any page index) stays where it is.
fn rewrite_footer(
    file: &[u8],
    edit: impl FnOnce(&mut Vec<parquet::file::metadata::RowGroupMetaData>),
) -> Vec<u8> {
    use parquet::file::metadata::{ParquetMetaDataReader, ParquetMetaDataWriter};

    let metadata = ParquetMetaDataReader::new()
        .parse_and_finish(&bytes::Bytes::copy_from_slice(file))
        .unwrap();
    let (start, _) = footer_metadata_range(file);
    let mut builder = metadata.into_builder();
    let mut groups = builder.take_row_groups();
    edit(&mut groups);
    let metadata = builder.set_row_groups(groups).build();
    let mut out = file[..start].to_vec();
    ParquetMetaDataWriter::new(&mut out, &metadata)
        .finish()
        .unwrap();
    out
}

fn edit_column(
    column: &mut parquet::file::metadata::ColumnChunkMetaData,
    edit: impl FnOnce(
        parquet::file::metadata::ColumnChunkMetaDataBuilder,
    ) -> parquet::file::metadata::ColumnChunkMetaDataBuilder,
) {
    *column = edit(column.clone().into_builder()).build().unwrap();
}

/// `repeated int32 x` without a LIST annotation (the legacy two-level
/// list), beside `required int32 id`: six rows, two of them empty lists.
fn parquet_bare_repeated() -> Vec<u8> {
    use parquet::data_type::Int32Type as PqInt32;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let schema = Arc::new(
        parse_message_type("message legacy { required int32 id; repeated int32 x; }").unwrap(),
    );
    let mut buffer = Vec::new();
    let mut writer =
        SerializedFileWriter::new(&mut buffer, schema, Arc::new(WriterProperties::default()))
            .unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut id = group.next_column().unwrap().unwrap();
    id.typed::<PqInt32>()
        .write_batch(&[1, 2, 3, 4, 5, 6], None, None)
        .unwrap();
    id.close().unwrap();
    // [1, 2], [], [3], [4, 5, 6], [], [7]
    let mut x = group.next_column().unwrap().unwrap();
    x.typed::<PqInt32>()
        .write_batch(
            &[1, 2, 3, 4, 5, 6, 7],
            Some(&[1, 1, 0, 1, 1, 1, 1, 0, 1]),
            Some(&[0, 1, 0, 0, 0, 1, 1, 0, 0]),
        )
        .unwrap();
    x.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
    buffer
}

/// One Snappy page of 1000 int64 ids whose header says it decompresses
/// to `uncompressed` bytes: the file is rebuilt around a re-encoded page
/// header (Thrift compact protocol), with a footer to match.
fn parquet_page_claiming(uncompressed: i32) -> Vec<u8> {
    use parquet::file::metadata::{ParquetMetaDataReader, ParquetMetaDataWriter};
    use parquet::file::properties::{EnabledStatistics, WriterProperties};

    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from((0..1000).collect::<Vec<i64>>()))],
    )
    .unwrap();
    let properties = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_statistics_enabled(EnabledStatistics::None)
        .build();
    let mut file = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut file, schema, Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let metadata = ParquetMetaDataReader::new()
        .parse_and_finish(&bytes::Bytes::from(file.clone()))
        .unwrap();
    let (start, len) = metadata.row_group(0).column(0).byte_range();
    let chunk = &file[start as usize..(start + len) as usize];
    // The old header: fields 1-3 (type, sizes) and 5 (DataPageHeader), in
    // that order; what follows its end is the compressed data.
    let data = &chunk[chunk.len() - compressed_size_of_first_page(chunk)..];
    let mut out = b"PAR1".to_vec();
    let field = |out: &mut Vec<u8>, value: i32| {
        out.push(0x15); // next field id, i32
        let mut zigzag = ((value << 1) ^ (value >> 31)) as u32;
        while zigzag >= 0x80 {
            out.push((zigzag as u8) | 0x80);
            zigzag >>= 7;
        }
        out.push(zigzag as u8);
    };
    field(&mut out, 0); // DATA_PAGE
    field(&mut out, uncompressed);
    field(&mut out, data.len() as i32);
    out.push(0x2c); // field 5: DataPageHeader
    for value in [1000, 0, 3, 3] {
        // num_values, PLAIN, RLE, RLE
        field(&mut out, value);
    }
    out.extend([0, 0]);
    out.extend_from_slice(data);
    let chunk_len = out.len() as i64 - 4;
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
    ParquetMetaDataWriter::new(&mut out, &metadata)
        .finish()
        .unwrap();
    out
}

/// The compressed size in a one-page chunk's header: field 3, the third
/// zigzag varint after the first three field headers.
fn compressed_size_of_first_page(chunk: &[u8]) -> usize {
    let mut pos = 0;
    let mut values = Vec::new();
    for _ in 0..3 {
        assert_eq!(chunk[pos] & 0x0f, 5, "an i32 field");
        pos += 1;
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let byte = chunk[pos];
            pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        values.push(((value >> 1) as i64) ^ -((value & 1) as i64));
    }
    values[2] as usize
}

/// Where the thrift-encoded FileMetaData sits: just before the 4-byte
/// length and the trailing magic.
fn footer_metadata_range(data: &[u8]) -> (usize, usize) {
    let len = data.len();
    let metadata_len = u32::from_le_bytes(data[len - 8..len - 4].try_into().unwrap()) as usize;
    (len - 8 - metadata_len, len - 8)
}

/// Written with the low-level writer, since Arrow never writes INT96
/// itself: the legacy Impala/Spark timestamp type.
fn parquet_int96() -> Vec<u8> {
    use parquet::data_type::{Int64Type as PqInt64, Int96, Int96Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let schema = Arc::new(
        parse_message_type("message spark { required int64 id; required int96 ts; }").unwrap(),
    );
    let mut buffer = Vec::new();
    let mut writer = SerializedFileWriter::new(
        &mut buffer,
        schema,
        Arc::new(WriterProperties::builder().build()),
    )
    .unwrap();
    let mut row_group = writer.next_row_group().unwrap();
    let mut id = row_group.next_column().unwrap().unwrap();
    id.typed::<PqInt64>()
        .write_batch(&[1, 2, 3], None, None)
        .unwrap();
    id.close().unwrap();
    let mut ts = row_group.next_column().unwrap().unwrap();
    // Julian day 2_460_000 is 2023-02-24; the first two words are nanoseconds in the day.
    let values: Vec<Int96> = [0u32, 1_000_000_000, 7]
        .iter()
        .map(|nanos| {
            let mut value = Int96::new();
            value.set_data(*nanos, 0, 2_460_000);
            value
        })
        .collect();
    ts.typed::<Int96Type>()
        .write_batch(&values, None, None)
        .unwrap();
    ts.close().unwrap();
    row_group.close().unwrap();
    writer.close().unwrap();
    buffer
}

/// A struct, a list and a map column.
fn parquet_nested() -> Vec<u8> {
    let point = StructArray::from(vec![
        (
            Arc::new(Field::new("x", DataType::Float64, true)),
            Arc::new(Float64Array::from(vec![1.0, 2.5, -3.0])) as ArrayRef,
        ),
        (
            Arc::new(Field::new("label", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])) as ArrayRef,
        ),
    ]);
    let tags = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
        Some(vec![Some(1), Some(2)]),
        None,
        Some(vec![]),
    ]);
    let mut attrs = MapBuilder::new(None, StringBuilder::new(), Int32Array::builder(4));
    attrs.keys().append_value("k1");
    attrs.values().append_value(1);
    attrs.append(true).unwrap();
    attrs.append(true).unwrap();
    attrs.keys().append_value("k2");
    attrs.values().append_value(2);
    attrs.keys().append_value("k3");
    attrs.values().append_null();
    attrs.append(true).unwrap();
    let attrs = attrs.finish();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("point", point.data_type().clone(), true),
        Field::new("tags", tags.data_type().clone(), true),
        Field::new("attrs", attrs.data_type().clone(), true),
    ]));
    write_parquet(
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(point),
                Arc::new(tags),
                Arc::new(attrs),
            ],
        )
        .unwrap(),
    )
}

/// Types a CSV never produces: dictionary, large strings, decimal, dates,
/// zoned timestamps.
fn parquet_many_types() -> Vec<u8> {
    let dict: DictionaryArray<Int32Type> = vec!["red", "green", "red"].into_iter().collect();
    let decimal = Decimal128Array::from(vec![12345, -1, 0])
        .with_precision_and_scale(10, 2)
        .unwrap();
    let ts = TimestampMillisecondArray::from(vec![0, 1_700_000_000_000, -1])
        .with_timezone("Europe/Paris");
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(Int64Array::from(vec![1, 2, 3]))),
        ("colour", Arc::new(dict)),
        (
            "big_text",
            Arc::new(LargeStringArray::from(vec!["a", "b", "c"])),
        ),
        ("price", Arc::new(decimal)),
        ("day", Arc::new(Date32Array::from(vec![0, 19_000, -1]))),
        ("at", Arc::new(ts)),
    ];
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    write_parquet(
        RecordBatch::try_new(schema, columns.into_iter().map(|(_, a)| a).collect()).unwrap(),
    )
}

/// A `BYTE_ARRAY (STRING)` column holding bytes that are not UTF-8, as
/// writers that skip validation (or a bit flip) produce.
fn parquet_invalid_utf8_string() -> Vec<u8> {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let schema =
        Arc::new(parse_message_type("message latin1 { required binary name (STRING); }").unwrap());
    let mut buffer = Vec::new();
    // Plain encoding, so the bad bytes reach the string decoder as they are.
    let properties = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .build();
    let mut writer = SerializedFileWriter::new(&mut buffer, schema, Arc::new(properties)).unwrap();
    let mut row_group = writer.next_row_group().unwrap();
    let mut column = row_group.next_column().unwrap().unwrap();
    let values = vec![
        ByteArray::from(&b"ok"[..]),
        ByteArray::from(&b"caf\xe9"[..]),
    ];
    column
        .typed::<ByteArrayType>()
        .write_batch(&values, None, None)
        .unwrap();
    column.close().unwrap();
    row_group.close().unwrap();
    writer.close().unwrap();
    buffer
}

/// Arrow types at the edge of what Parquet maps: half floats, durations,
/// day-time intervals (arrow-rs cannot write month-day-nano ones at all), times, view and large types, fixed-size lists, 256-bit
/// decimals, small and unsigned integers.
fn parquet_exotic_types() -> Vec<u8> {
    use arrow::array::{
        BinaryViewArray, Decimal256Array, DurationSecondArray, FixedSizeBinaryArray,
        FixedSizeListArray, Int8Array, IntervalDayTimeArray, LargeBinaryArray, LargeListArray,
        StringViewArray, Time64MicrosecondArray, UInt64Array,
    };
    use arrow::datatypes::{IntervalDayTime, i256};

    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "half",
            arrow::compute::cast(
                &arrow::array::Float32Array::from(vec![1.5, -0.0, 65504.0]),
                &DataType::Float16,
            )
            .unwrap(),
        ),
        ("wait", Arc::new(DurationSecondArray::from(vec![0, 60, -1]))),
        (
            "span",
            Arc::new(IntervalDayTimeArray::from(vec![
                IntervalDayTime::new(1, 2),
                IntervalDayTime::new(0, 0),
                IntervalDayTime::new(-1, 86_399_999),
            ])),
        ),
        (
            "clock",
            Arc::new(Time64MicrosecondArray::from(vec![
                0,
                1_000_000,
                86_399_999_999,
            ])),
        ),
        (
            "text_view",
            Arc::new(StringViewArray::from(vec![
                "short",
                "a string longer than twelve bytes",
                "",
            ])),
        ),
        (
            "bytes_view",
            Arc::new(BinaryViewArray::from(vec![&b"\x00\xff"[..], b"", b"x"])),
        ),
        (
            "big_bytes",
            Arc::new(LargeBinaryArray::from(vec![&b"a"[..], b"", b"\xfe"])),
        ),
        (
            "uuid",
            Arc::new(
                FixedSizeBinaryArray::try_from_iter([[0u8; 16], [1u8; 16], [255u8; 16]].iter())
                    .unwrap(),
            ),
        ),
        (
            "big_list",
            Arc::new(LargeListArray::from_iter_primitive::<Int32Type, _, _>(
                vec![Some(vec![Some(1)]), Some(vec![]), None],
            )),
        ),
        (
            "triple",
            Arc::new(FixedSizeListArray::from_iter_primitive::<Int32Type, _, _>(
                vec![
                    Some(vec![Some(1), Some(2), Some(3)]),
                    None,
                    Some(vec![None, Some(5), Some(6)]),
                ],
                3,
            )),
        ),
        (
            "huge_decimal",
            Arc::new(
                Decimal256Array::from(vec![i256::from_i128(1), i256::MAX, i256::from_i128(-5)])
                    .with_precision_and_scale(76, 10)
                    .unwrap(),
            ),
        ),
        ("tiny", Arc::new(Int8Array::from(vec![i8::MIN, 0, i8::MAX]))),
        (
            "unsigned",
            Arc::new(UInt64Array::from(vec![0, 1, u64::MAX])),
        ),
    ];
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    write_parquet(
        RecordBatch::try_new(schema, columns.into_iter().map(|(_, a)| a).collect()).unwrap(),
    )
}

/// A valid file whose `ARROW:schema` metadata (the Arrow schema hint every
/// Arrow writer stores) is not a schema at all.
fn parquet_corrupt_arrow_schema() -> Vec<u8> {
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_writer::ArrowWriterOptions;
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::WriterProperties;

    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
    let properties = WriterProperties::builder()
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "ARROW:schema".to_owned(),
            // base64 of "not an arrow schema"
            "bm90IGFuIGFycm93IHNjaGVtYQ==".to_owned(),
        )]))
        .build();
    let options = ArrowWriterOptions::new()
        .with_properties(properties)
        .with_skip_arrow_metadata(true);
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new_with_options(&mut buffer, schema, options).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    buffer
}
