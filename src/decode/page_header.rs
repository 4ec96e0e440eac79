//! Just enough of a Parquet page header (Thrift compact protocol) to know a
//! page's type, sizes and rows before the reader decodes it. parquet-rs
//! keeps its own header type private.
//!
//! ```text
//! struct PageHeader {
//!   1: required PageType type            (0 data, 1 index, 2 dictionary, 3 data v2)
//!   2: required i32 uncompressed_page_size
//!   3: required i32 compressed_page_size
//!   5: optional DataPageHeader data_page_header       { 1: required i32 num_values … }
//!   8: optional DataPageHeaderV2 data_page_header_v2  { 1: num_values, 2: num_nulls, 3: num_rows … }
//!   (other fields skipped)
//! }
//! ```

pub const DATA_PAGE: i32 = 0;
pub const DICTIONARY_PAGE: i32 = 2;
pub const DATA_PAGE_V2: i32 = 3;

/// What a page header says about its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub page_type: i32,
    pub uncompressed_size: i32,
    pub compressed_size: i32,
    /// `num_values` of a V1 data page (its rows, in a column that is not
    /// repeated), `num_rows` of a V2 data page; `None` for other pages.
    pub rows: Option<i64>,
    /// Bytes of the header itself; the page's data follows it.
    pub header_len: usize,
}

/// The result of parsing the start of a buffer as a page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Header(PageHeader),
    /// The buffer ends inside the header: read more.
    Incomplete,
    /// Not a page header.
    Invalid,
}

#[derive(Debug)]
enum Stop {
    Eof,
    Invalid,
}

// Compact protocol type ids.
const BOOL_TRUE: u8 = 1;
const BOOL_FALSE: u8 = 2;
const BYTE: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const DOUBLE: u8 = 7;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const SET: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;

/// Nesting deeper than this is not a page header (statistics are two deep).
const MAX_DEPTH: usize = 16;

/// Parses the page header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut input = Input { buf, pos: 0 };
    match input.page_header() {
        Ok(header) => Parsed::Header(header),
        Err(Stop::Eof) => Parsed::Incomplete,
        Err(Stop::Invalid) => Parsed::Invalid,
    }
}

struct Input<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> Result<u8, Stop> {
        let byte = *self.buf.get(self.pos).ok_or(Stop::Eof)?;
        self.pos += 1;
        Ok(byte)
    }

    fn skip_bytes(&mut self, n: u64) -> Result<(), Stop> {
        let remaining = (self.buf.len() - self.pos) as u64;
        if n > remaining {
            return Err(Stop::Eof);
        }
        self.pos += n as usize;
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, Stop> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Stop::Invalid)
    }

    fn zigzag(&mut self) -> Result<i64, Stop> {
        let n = self.varint()?;
        Ok((n >> 1) as i64 ^ -((n & 1) as i64))
    }

    fn i32(&mut self, field_type: u8) -> Result<i32, Stop> {
        if field_type != I32 {
            return Err(Stop::Invalid);
        }
        i32::try_from(self.zigzag()?).map_err(|_| Stop::Invalid)
    }

    /// The next field's (id, type), or `None` at the struct's end.
    fn field(&mut self, last_id: i16) -> Result<Option<(i16, u8)>, Stop> {
        let byte = self.byte()?;
        if byte == 0 {
            return Ok(None);
        }
        let field_type = byte & 0x0f;
        let delta = byte >> 4;
        let id = if delta == 0 {
            i16::try_from(self.zigzag()?).map_err(|_| Stop::Invalid)?
        } else {
            last_id.checked_add(i16::from(delta)).ok_or(Stop::Invalid)?
        };
        Ok(Some((id, field_type)))
    }

    fn skip(&mut self, value_type: u8, depth: usize) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop::Invalid);
        }
        match value_type {
            // A boolean field's value is in its type id.
            BOOL_TRUE | BOOL_FALSE => Ok(()),
            BYTE => self.byte().map(drop),
            I16 | I32 | I64 => self.varint().map(drop),
            DOUBLE => self.skip_bytes(8),
            BINARY => {
                let len = self.varint()?;
                self.skip_bytes(len)
            }
            LIST | SET => {
                let header = self.byte()?;
                let element_type = header & 0x0f;
                let mut size = u64::from(header >> 4);
                if size == 15 {
                    size = self.varint()?;
                }
                for _ in 0..size {
                    self.element(element_type, depth + 1)?;
                }
                Ok(())
            }
            MAP => {
                let size = self.varint()?;
                if size == 0 {
                    return Ok(());
                }
                let types = self.byte()?;
                for _ in 0..size {
                    self.element(types >> 4, depth + 1)?;
                    self.element(types & 0x0f, depth + 1)?;
                }
                Ok(())
            }
            STRUCT => {
                let mut last_id = 0;
                while let Some((id, field_type)) = self.field(last_id)? {
                    self.skip(field_type, depth + 1)?;
                    last_id = id;
                }
                Ok(())
            }
            _ => Err(Stop::Invalid),
        }
    }

    /// A collection element: booleans take a byte each there.
    fn element(&mut self, element_type: u8, depth: usize) -> Result<(), Stop> {
        match element_type {
            BOOL_TRUE | BOOL_FALSE => self.byte().map(drop),
            other => self.skip(other, depth),
        }
    }

    /// Reads field `rows_field` (an i32) of a nested header struct, skipping the rest.
    fn rows_in(&mut self, rows_field: i16) -> Result<Option<i64>, Stop> {
        let mut rows = None;
        let mut last_id = 0;
        while let Some((id, field_type)) = self.field(last_id)? {
            if id == rows_field {
                rows = Some(i64::from(self.i32(field_type)?));
            } else {
                self.skip(field_type, 1)?;
            }
            last_id = id;
        }
        Ok(rows)
    }

    fn page_header(&mut self) -> Result<PageHeader, Stop> {
        let (mut page_type, mut uncompressed, mut compressed) = (None, None, None);
        let mut rows = None;
        let mut last_id = 0;
        while let Some((id, field_type)) = self.field(last_id)? {
            match id {
                1 => page_type = Some(self.i32(field_type)?),
                2 => uncompressed = Some(self.i32(field_type)?),
                3 => compressed = Some(self.i32(field_type)?),
                5 if field_type == STRUCT => rows = self.rows_in(1)?,
                8 if field_type == STRUCT => rows = self.rows_in(3)?,
                _ => self.skip(field_type, 0)?,
            }
            last_id = id;
        }
        match (page_type, uncompressed, compressed) {
            (Some(page_type), Some(uncompressed_size), Some(compressed_size)) => Ok(PageHeader {
                page_type,
                uncompressed_size,
                compressed_size,
                rows,
                header_len: self.pos,
            }),
            _ => Err(Stop::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use parquet::file::properties::{WriterProperties, WriterVersion};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    /// A file of one optional int32 column, 1000 rows (every third null),
    /// pages of at most 100 rows, dictionary-encoded; its column chunk.
    fn column_chunk(version: WriterVersion) -> (Vec<u8>, std::ops::Range<usize>) {
        let schema = Arc::new(parse_message_type("message m { optional int32 x; }").unwrap());
        let properties = WriterProperties::builder()
            .set_writer_version(version)
            .set_data_page_row_count_limit(100)
            .set_write_batch_size(10)
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let mut buffer = Vec::new();
        let mut writer =
            SerializedFileWriter::new(&mut buffer, schema, Arc::new(properties)).unwrap();
        let mut group = writer.next_row_group().unwrap();
        let mut column = group.next_column().unwrap().unwrap();
        let values: Vec<i32> = (0..1000).filter(|i| i % 3 != 0).map(|i| i % 7).collect();
        let levels: Vec<i16> = (0..1000).map(|i| i16::from(i % 3 != 0)).collect();
        column
            .typed::<parquet::data_type::Int32Type>()
            .write_batch(&values, Some(&levels), None)
            .unwrap();
        column.close().unwrap();
        group.close().unwrap();
        writer.close().unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(buffer.clone())).unwrap();
        let (start, len) = reader.metadata().row_group(0).column(0).byte_range();
        (buffer, start as usize..(start + len) as usize)
    }

    fn walk(chunk: &[u8]) -> Vec<PageHeader> {
        let mut pages = Vec::new();
        let mut pos = 0;
        while pos < chunk.len() {
            match parse(&chunk[pos..]) {
                Parsed::Header(header) => {
                    pos += header.header_len + header.compressed_size as usize;
                    pages.push(header);
                }
                other => panic!("at {pos} of {}: {other:?}", chunk.len()),
            }
        }
        assert_eq!(pos, chunk.len());
        pages
    }

    #[test]
    fn reads_the_pages_parquet_rs_writes() {
        for version in [WriterVersion::PARQUET_1_0, WriterVersion::PARQUET_2_0] {
            let (file, range) = column_chunk(version);
            let pages = walk(&file[range]);
            assert_eq!(pages[0].page_type, DICTIONARY_PAGE, "{version:?}");
            assert_eq!(pages[0].rows, None);
            let data_type = match version {
                WriterVersion::PARQUET_1_0 => DATA_PAGE,
                WriterVersion::PARQUET_2_0 => DATA_PAGE_V2,
            };
            assert!(pages[1..].iter().all(|p| p.page_type == data_type));
            assert!(pages.len() > 5, "{version:?}: {} pages", pages.len());
            let rows: i64 = pages[1..].iter().map(|p| p.rows.unwrap()).sum();
            assert_eq!(rows, 1000, "{version:?}");
        }
    }

    #[test]
    fn a_cut_header_is_incomplete_and_garbage_invalid() {
        let (file, range) = column_chunk(WriterVersion::PARQUET_1_0);
        let chunk = &file[range];
        let Parsed::Header(first) = parse(chunk) else {
            panic!("no header");
        };
        for cut in 0..first.header_len {
            assert_eq!(parse(&chunk[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        assert_eq!(parse(&[0xff; 64]), Parsed::Invalid);
        assert_eq!(parse(b"PAR1\x00\x00\x00\x00"), Parsed::Invalid);
    }
}
