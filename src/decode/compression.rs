//! Compression detection and streaming decompression.
//!
//! The codec is taken from the data's magic bytes; Content-Encoding and the
//! key's extension only declare what to expect, so a `.gz` that is not gzip
//! is reported as corrupt rather than decoded as text.

use std::io::{Cursor, Read};

use crate::error::IngestError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Plain,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Plain => "none",
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    /// The codec named by a Content-Encoding header or, failing that, by
    /// the key's extension.
    pub fn declared(content_encoding: Option<&str>, key: &str) -> Option<Codec> {
        let from_header = content_encoding.and_then(|encoding| {
            match encoding.trim().to_ascii_lowercase().as_str() {
                "gzip" | "x-gzip" => Some(Codec::Gzip),
                "zstd" => Some(Codec::Zstd),
                _ => None,
            }
        });
        let lower = key.to_ascii_lowercase();
        let from_extension = if lower.ends_with(".gz") || lower.ends_with(".gzip") {
            Some(Codec::Gzip)
        } else if lower.ends_with(".zst") || lower.ends_with(".zstd") {
            Some(Codec::Zstd)
        } else {
            None
        };
        from_header.or(from_extension)
    }

    fn sniff(prefix: &[u8]) -> Codec {
        if prefix.starts_with(GZIP_MAGIC) {
            Codec::Gzip
        } else if prefix.starts_with(ZSTD_MAGIC) {
            Codec::Zstd
        } else {
            Codec::Plain
        }
    }
}

pub struct Decompressed {
    pub codec: Codec,
    pub reader: Box<dyn Read + Send>,
}

/// Wraps `input` in the decoder its first bytes call for.
pub fn open(
    mut input: impl Read + Send + 'static,
    declared: Option<Codec>,
    uri: &str,
) -> Result<Decompressed, IngestError> {
    let decompress_error = |codec: Codec, detail: String| IngestError::Decompress {
        uri: uri.to_owned(),
        codec: codec.name(),
        offset: 0,
        detail,
    };
    // Read the magic bytes without losing them: a single read may return
    // fewer bytes than asked for.
    let mut prefix = Vec::with_capacity(ZSTD_MAGIC.len());
    (&mut input)
        .take(ZSTD_MAGIC.len() as u64)
        .read_to_end(&mut prefix)
        .map_err(|err| decompress_error(declared.unwrap_or(Codec::Plain), err.to_string()))?;
    let codec = Codec::sniff(&prefix);
    if let Some(expected) = declared
        && expected != codec
        && !prefix.is_empty()
    {
        return Err(decompress_error(
            expected,
            format!(
                "declared {} but the data starts with {:02x?}",
                expected.name(),
                prefix
            ),
        ));
    }
    let whole = Cursor::new(prefix).chain(input);
    let reader: Box<dyn Read + Send> = match codec {
        Codec::Plain => Box::new(whole),
        // Multi-member: `cat a.gz b.gz` is a valid gzip stream.
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        // zstd's streaming decoder reads concatenated frames too.
        Codec::Zstd => Box::new(
            zstd::stream::read::Decoder::new(whole)
                .map_err(|err| decompress_error(Codec::Zstd, err.to_string()))?,
        ),
    };
    Ok(Decompressed { codec, reader })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_codec_from_header_then_extension() {
        assert_eq!(Codec::declared(Some("gzip"), "a.csv"), Some(Codec::Gzip));
        assert_eq!(Codec::declared(None, "a.csv.GZ"), Some(Codec::Gzip));
        assert_eq!(Codec::declared(None, "a.csv.zst"), Some(Codec::Zstd));
        assert_eq!(Codec::declared(Some("identity"), "a.csv"), None);
        assert_eq!(Codec::declared(None, "a.csv"), None);
    }

    #[test]
    fn sniffing_recognises_magic_bytes() {
        assert_eq!(Codec::sniff(&[0x1f, 0x8b, 8, 0]), Codec::Gzip);
        assert_eq!(Codec::sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Codec::Zstd);
        assert_eq!(Codec::sniff(b"id,n"), Codec::Plain);
        assert_eq!(Codec::sniff(b""), Codec::Plain);
    }
}
