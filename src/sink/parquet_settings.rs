//! The Parquet writer settings a sink's config may choose (`parquet_dir`,
//! `s3_parquet`): codec and level, dictionary encoding, statistics. The
//! defaults (zstd level 1, dictionaries on string columns, page
//! statistics) are chosen from BENCHMARKS.md's codec table, which has
//! what each choice costs.

use arrow::datatypes::{DataType, SchemaRef};
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

/// Above this many columns, the default settings write without dictionary
/// encoding and with LZ4 instead of zstd: each column writer keeps a
/// dictionary interner (about 20 KiB) and a zstd context (about 16 KiB)
/// from its first row on, which for a 9,999-column file was 376 MiB of
/// writer state for 10 rows. Without both a column costs under 1 KiB.
pub const WIDE_SCHEMA_COLUMNS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    Zstd,
    Snappy,
    Lz4,
    Gzip,
    None,
}

/// Dictionary encoding. `auto`: for string and binary columns, on
/// schemas up to [`WIDE_SCHEMA_COLUMNS`] columns. Vendor files' numbers
/// and times (order ids, prices, timestamps) rarely repeat within a row
/// group: a dictionary there is built for up to its 1 MiB page limit and
/// then abandoned, costing CPU and bytes for nothing (BENCHMARKS.md, the
/// codec table), while codes and names in strings do repeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dictionary {
    #[default]
    Auto,
    /// Every column.
    On,
    Off,
}

/// Column statistics: per page (min/max in each page header and the
/// column index, what lets readers skip pages), per column chunk only, or
/// none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistics {
    #[default]
    Page,
    Chunk,
    None,
}

/// A sink's choice; every field has the sinks' long-standing default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParquetWriterSettings {
    /// `None`: zstd, or LZ4 on schemas wider than [`WIDE_SCHEMA_COLUMNS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Codec>,
    /// zstd 1..=22 (default 1), gzip 0..=10 (default 6); other codecs
    /// have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    #[serde(default)]
    pub dictionary: Dictionary,
    #[serde(default)]
    pub statistics: Statistics,
}

impl ParquetWriterSettings {
    /// Errors are (field relative to `sinks.NAME.`, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let Some(level) = self.compression_level else {
            return Ok(());
        };
        let invalid = |message: String| Err(("compression_level".to_owned(), message));
        match self.compression {
            Some(Codec::Zstd) | None if ZstdLevel::try_new(level).is_err() || level < 1 => {
                invalid(format!("{level} is out of zstd's range 1..=22"))
            }
            Some(Codec::Gzip) if GzipLevel::try_new(level as u32).is_err() || level < 0 => {
                invalid(format!("{level} is out of gzip's range 0..=10"))
            }
            Some(codec @ (Codec::Snappy | Codec::Lz4 | Codec::None)) => invalid(format!(
                "{codec:?} has no level; leave compression_level out"
            )),
            _ => Ok(()),
        }
    }

    /// The codec for a schema of `columns` columns.
    pub fn compression_for(&self, columns: usize) -> Compression {
        let wide = columns > WIDE_SCHEMA_COLUMNS;
        match (self.compression, wide) {
            (None, true) => Compression::LZ4_RAW,
            (None, false) | (Some(Codec::Zstd), _) => Compression::ZSTD(
                self.compression_level
                    .and_then(|level| ZstdLevel::try_new(level).ok())
                    .unwrap_or_default(),
            ),
            (Some(Codec::Snappy), _) => Compression::SNAPPY,
            (Some(Codec::Lz4), _) => Compression::LZ4_RAW,
            (Some(Codec::Gzip), _) => Compression::GZIP(
                self.compression_level
                    .and_then(|level| GzipLevel::try_new(level as u32).ok())
                    .unwrap_or_default(),
            ),
            (Some(Codec::None), _) => Compression::UNCOMPRESSED,
        }
    }

    /// `builder` with these settings for `schema`.
    pub fn apply(
        &self,
        builder: WriterPropertiesBuilder,
        schema: &SchemaRef,
    ) -> WriterPropertiesBuilder {
        let columns = schema.fields().len();
        let statistics = match self.statistics {
            Statistics::Page => EnabledStatistics::Page,
            Statistics::Chunk => EnabledStatistics::Chunk,
            Statistics::None => EnabledStatistics::None,
        };
        let builder = builder
            .set_compression(self.compression_for(columns))
            .set_statistics_enabled(statistics);
        match self.dictionary {
            Dictionary::On => builder.set_dictionary_enabled(true),
            Dictionary::Off => builder.set_dictionary_enabled(false),
            Dictionary::Auto if columns > WIDE_SCHEMA_COLUMNS => {
                builder.set_dictionary_enabled(false)
            }
            // Top-level string and binary columns; nested ones go without.
            Dictionary::Auto => schema
                .fields()
                .iter()
                .filter(|field| is_string_or_binary(field.data_type()))
                .fold(builder.set_dictionary_enabled(false), |builder, field| {
                    builder.set_column_dictionary_enabled(
                        ColumnPath::from(field.name().as_str()),
                        true,
                    )
                }),
        }
    }
}

fn is_string_or_binary(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::file::properties::WriterProperties;

    use super::*;

    /// `c0` is a string, the rest numbers.
    fn schema(columns: usize) -> SchemaRef {
        Arc::new(Schema::new(
            (0..columns)
                .map(|i| {
                    let data_type = if i == 0 {
                        DataType::Utf8
                    } else {
                        DataType::Int64
                    };
                    Field::new(format!("c{i}"), data_type, true)
                })
                .collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn defaults_are_zstd_with_dictionaries_and_lz4_without_them_when_wide() {
        let settings = ParquetWriterSettings::default();
        let column = ColumnPath::from("c0");
        let narrow = settings
            .apply(WriterProperties::builder(), &schema(WIDE_SCHEMA_COLUMNS))
            .build();
        assert!(matches!(narrow.compression(&column), Compression::ZSTD(_)));
        assert!(
            narrow.dictionary_enabled(&column),
            "strings get a dictionary"
        );
        assert!(
            !narrow.dictionary_enabled(&ColumnPath::from("c1")),
            "numbers do not"
        );
        assert_eq!(narrow.statistics_enabled(&column), EnabledStatistics::Page);
        let wide = settings
            .apply(
                WriterProperties::builder(),
                &schema(WIDE_SCHEMA_COLUMNS + 1),
            )
            .build();
        assert_eq!(wide.compression(&column), Compression::LZ4_RAW);
        assert!(!wide.dictionary_enabled(&column));
    }

    #[test]
    fn a_chosen_codec_level_dictionary_and_statistics_apply_at_any_width() {
        let settings = ParquetWriterSettings {
            compression: Some(Codec::Zstd),
            compression_level: Some(1),
            dictionary: Dictionary::Off,
            statistics: Statistics::Chunk,
        };
        let column = ColumnPath::from("c0");
        let wide = settings
            .apply(
                WriterProperties::builder(),
                &schema(WIDE_SCHEMA_COLUMNS + 1),
            )
            .build();
        assert_eq!(
            wide.compression(&column),
            Compression::ZSTD(ZstdLevel::try_new(1).unwrap())
        );
        assert!(!wide.dictionary_enabled(&column));
        assert_eq!(wide.statistics_enabled(&column), EnabledStatistics::Chunk);
        for (codec, expected) in [
            (Codec::Snappy, Compression::SNAPPY),
            (Codec::Lz4, Compression::LZ4_RAW),
            (Codec::None, Compression::UNCOMPRESSED),
            (Codec::Gzip, Compression::GZIP(GzipLevel::default())),
        ] {
            let settings = ParquetWriterSettings {
                compression: Some(codec),
                ..ParquetWriterSettings::default()
            };
            assert_eq!(settings.compression_for(3), expected, "{codec:?}");
        }
    }

    #[test]
    fn dictionary_on_and_off_apply_to_every_column() {
        for (dictionary, enabled) in [(Dictionary::On, true), (Dictionary::Off, false)] {
            let settings = ParquetWriterSettings {
                dictionary,
                ..ParquetWriterSettings::default()
            };
            let properties = settings
                .apply(WriterProperties::builder(), &schema(3))
                .build();
            for column in ["c0", "c1", "c2"] {
                assert_eq!(
                    properties.dictionary_enabled(&ColumnPath::from(column)),
                    enabled,
                    "{dictionary:?} {column}"
                );
            }
        }
    }

    #[test]
    fn levels_are_checked_against_the_codec() {
        let with = |compression, level| ParquetWriterSettings {
            compression,
            compression_level: Some(level),
            ..ParquetWriterSettings::default()
        };
        assert!(with(None, 3).validate().is_ok());
        assert!(with(Some(Codec::Zstd), 22).validate().is_ok());
        assert!(with(Some(Codec::Gzip), 9).validate().is_ok());
        for (settings, needle) in [
            (with(Some(Codec::Zstd), 0), "zstd"),
            (with(None, 23), "zstd"),
            (with(Some(Codec::Gzip), 11), "gzip"),
            (with(Some(Codec::Snappy), 1), "no level"),
            (with(Some(Codec::None), 1), "no level"),
        ] {
            let (field, message) = settings.validate().unwrap_err();
            assert_eq!(field, "compression_level");
            assert!(message.contains(needle), "{message}");
        }
    }
}
