//! Compression detection and streaming decompression.
//!
//! The codec is taken from the data's magic bytes; Content-Encoding and the
//! key's extension only declare what to expect, so a `.gz` that is not gzip
//! is reported as corrupt rather than decoded as text.
//!
//! Decompressed output is capped (see `OutputLimit`): a small object that
//! inflates to gigabytes is a decompression bomb, stopped with a
//! `decompression_error` instead of streamed until the lease runs out.

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

/// How many bytes a compressed object may decompress to: the absolute cap,
/// and the ratio to its stored size. The ratio never stops an object below
/// `RATIO_FLOOR_BYTES`, so small, very repetitive files (a 2 KiB gzip of a
/// 1 MiB sample) are not mistaken for bombs.
#[derive(Debug, Clone, Copy)]
pub struct OutputLimit {
    pub max_bytes: u64,
    pub max_ratio: u64,
    pub stored_bytes: u64,
}

/// Below this output size the ratio is not checked.
pub const RATIO_FLOOR_BYTES: u64 = 64 << 20;

impl OutputLimit {
    /// The most bytes the object may decompress to.
    pub fn bytes(&self) -> u64 {
        let by_ratio = self
            .max_ratio
            .saturating_mul(self.stored_bytes)
            .max(RATIO_FLOOR_BYTES);
        self.max_bytes.min(by_ratio)
    }

    fn exceeded(&self) -> String {
        format!(
            "decompressed output exceeds {} bytes, the limit for this object \
             (limits.max_decompressed_bytes = {}, limits.max_decompression_ratio = {} \
             × {} stored bytes, never below {} bytes): a decompression bomb, or a file \
             that needs higher limits on its route",
            self.bytes(),
            self.max_bytes,
            self.max_ratio,
            self.stored_bytes,
            RATIO_FLOOR_BYTES
        )
    }
}

/// Counts decompressed bytes and fails the read once they pass the limit.
struct LimitedOutput<R> {
    inner: R,
    limit: OutputLimit,
    remaining: u64,
}

impl<R: Read> Read for LimitedOutput<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Ask for one byte more than allowed, so reaching the limit exactly
        // is fine and passing it is seen.
        let want = buf
            .len()
            .min(usize::try_from(self.remaining.saturating_add(1)).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..want])?;
        if read as u64 > self.remaining {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                self.limit.exceeded(),
            ));
        }
        self.remaining -= read as u64;
        Ok(read)
    }
}

pub struct Decompressed {
    pub codec: Codec,
    pub reader: Box<dyn Read + Send>,
}

/// Wraps `input` in the decoder its first bytes call for, its output
/// capped by `limit`.
pub fn open(
    mut input: impl Read + Send + 'static,
    declared: Option<Codec>,
    limit: OutputLimit,
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
    let limited = |inner: Box<dyn Read + Send>| -> Box<dyn Read + Send> {
        Box::new(LimitedOutput {
            inner,
            limit,
            remaining: limit.bytes(),
        })
    };
    let reader: Box<dyn Read + Send> = match codec {
        Codec::Plain => Box::new(whole),
        // Multi-member: `cat a.gz b.gz` is a valid gzip stream.
        Codec::Gzip => limited(Box::new(flate2::read::MultiGzDecoder::new(whole))),
        // zstd's streaming decoder reads concatenated frames too.
        Codec::Zstd => limited(Box::new(
            zstd::stream::read::Decoder::new(whole)
                .map_err(|err| decompress_error(Codec::Zstd, err.to_string()))?,
        )),
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

    fn decompress_all(data: Vec<u8>, limit: OutputLimit) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        open(Cursor::new(data), None, limit, "s3://b/k")
            .map_err(|err| std::io::Error::other(err.to_string()))?
            .reader
            .read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn output_is_capped_by_the_absolute_limit_and_the_ratio() {
        let plain = vec![b'a'; 100_000];
        let gzip = {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(&plain).unwrap();
            gz.finish().unwrap()
        };
        let limit = |max_bytes, max_ratio| OutputLimit {
            max_bytes,
            max_ratio,
            stored_bytes: gzip.len() as u64,
        };
        // Exactly at the limit is fine; one byte under it is not.
        assert_eq!(
            decompress_all(gzip.clone(), limit(100_000, 1)).unwrap(),
            plain
        );
        let err = decompress_all(gzip.clone(), limit(99_999, 1)).unwrap_err();
        assert!(err.to_string().contains("exceeds 99999 bytes"), "{err}");
        assert!(
            err.to_string().contains("limits.max_decompressed_bytes"),
            "{err}"
        );
        // The ratio counts only above the floor.
        let ratio = OutputLimit {
            max_bytes: u64::MAX,
            max_ratio: 10,
            stored_bytes: 1 << 30,
        };
        assert_eq!(ratio.bytes(), 10 << 30);
        let tiny = OutputLimit {
            stored_bytes: 100,
            ..ratio
        };
        assert_eq!(tiny.bytes(), RATIO_FLOOR_BYTES);
        // A zstd bomb: 64 MiB + 1 of zeros from a few KiB, at ratio 1.
        let zeros = vec![0u8; (RATIO_FLOOR_BYTES + 1) as usize];
        let bomb = zstd::encode_all(&zeros[..], 3).unwrap();
        drop(zeros);
        let stored_bytes = bomb.len() as u64;
        let err = decompress_all(
            bomb,
            OutputLimit {
                max_bytes: u64::MAX,
                max_ratio: 1,
                stored_bytes,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("decompression bomb"), "{err}");
        // Plain objects are not capped here (their size is the stored size).
        assert_eq!(
            decompress_all(plain.clone(), limit(1, 1)).unwrap().len(),
            plain.len()
        );
    }

    #[test]
    fn sniffing_recognises_magic_bytes() {
        assert_eq!(Codec::sniff(&[0x1f, 0x8b, 8, 0]), Codec::Gzip);
        assert_eq!(Codec::sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Codec::Zstd);
        assert_eq!(Codec::sniff(b"id,n"), Codec::Plain);
        assert_eq!(Codec::sniff(b""), Codec::Plain);
    }
}
