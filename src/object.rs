//! Reading source objects from S3: the only file that talks to S3.
//!
//! Every read is pinned to the version the notification named: its
//! `versionId` when the bucket is versioned, otherwise its ETag through
//! `If-Match`. An object overwritten or deleted since then fails with
//! `ObjectChanged` / `ObjectMissing` instead of being read half old, half new.
//!
//! There is no HeadObject: the first GET pins the version (its response
//! carries the ETag, version id and size), so a small object costs one
//! request. A CSV object is opened with a GET of the whole object; a
//! Parquet object with a GET of its last [`PARQUET_TAIL_BYTES`], which
//! holds the footer (and, for a small file, everything).

use std::ops::Range;
use std::sync::Arc;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::get_object::{GetObjectError, GetObjectOutput};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use tokio::sync::mpsc;
use tracing::warn;

use crate::error::{IngestError, s3_error};
use crate::notification::ObjectRef;

/// How many breaks in a row, without a byte of progress in between, a
/// download survives before the object is given up for this delivery (its
/// message then comes back later).
const MAX_RESUMES: u32 = 5;

/// The first read of a Parquet object: its last 64 KiB. That is usually
/// the whole footer, and for a small file the whole file.
pub const PARQUET_TAIL_BYTES: u64 = 64 * 1024;

/// An object version that has been looked up and can be read consistently.
#[derive(Debug, Clone)]
pub struct PinnedObject {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
    /// Without quotes.
    pub etag: Option<String>,
    pub size: u64,
    pub content_encoding: Option<String>,
}

impl PinnedObject {
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// The end of an object, read when it was opened.
#[derive(Debug, Clone)]
pub struct ObjectTail {
    /// Where `bytes` start in the object.
    pub offset: u64,
    pub bytes: Bytes,
}

/// S3 access for the worker.
#[derive(Clone)]
pub struct S3Objects {
    client: Client,
    expected_bucket_owner: Option<String>,
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

/// The total size from a `Content-Range: bytes 0-9/10` header.
fn total_from_content_range(content_range: &str) -> Option<u64> {
    content_range.rsplit_once('/')?.1.trim().parse().ok()
}

impl S3Objects {
    pub fn new(client: Client, expected_bucket_owner: Option<String>) -> S3Objects {
        S3Objects {
            client,
            expected_bucket_owner,
        }
    }

    /// Opens the notified version with a GET of the whole object: the
    /// pinned version and its body, to be read with [`Self::stream_into`].
    pub async fn open(
        &self,
        object: &ObjectRef,
    ) -> Result<(PinnedObject, ByteStream), IngestError> {
        let output = self
            .get_notified(object, None)
            .await
            .map_err(|err| s3_error(&object.s3_uri(), "GetObject", &err))?;
        let size = output.content_length().unwrap_or(0).max(0) as u64;
        let pinned = pinned_from(object, &output, size)?;
        Ok((pinned, output.body))
    }

    /// Opens the notified version with a GET of its last `tail_bytes`
    /// (the whole object when it is smaller): the pinned version and the
    /// bytes read, for [`S3ParquetReader`].
    pub async fn open_tail(
        &self,
        object: &ObjectRef,
        tail_bytes: u64,
    ) -> Result<(PinnedObject, ObjectTail), IngestError> {
        let uri = object.s3_uri();
        let output = match self
            .get_notified(object, Some(format!("bytes=-{tail_bytes}")))
            .await
        {
            Ok(output) => output,
            // A suffix range of an empty object cannot be satisfied.
            Err(err) if err.raw_response().map(|raw| raw.status().as_u16()) == Some(416) => {
                return Err(IngestError::Parquet {
                    uri,
                    detail: "the object is empty (0 bytes)".into(),
                });
            }
            Err(err) => return Err(s3_error(&uri, "GetObject", &err)),
        };
        let length = output.content_length().unwrap_or(0).max(0) as u64;
        // A 206 names the total in Content-Range; a 200 (the whole object,
        // as some servers answer for an empty one) has none.
        let size = output
            .content_range()
            .and_then(total_from_content_range)
            .unwrap_or(length);
        let pinned = pinned_from(object, &output, size)?;
        let bytes = collect(&pinned, output.body, length, "the tail").await?;
        let tail = ObjectTail {
            offset: size - bytes.len() as u64,
            bytes,
        };
        Ok((pinned, tail))
    }

    /// A GET of the version the notification named, optionally a range.
    async fn get_notified(
        &self,
        object: &ObjectRef,
        range: Option<String>,
    ) -> Result<GetObjectOutput, SdkError<GetObjectError, HttpResponse>> {
        let mut request = self
            .client
            .get_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .set_expected_bucket_owner(self.expected_bucket_owner.clone())
            .set_range(range);
        if let Some(version_id) = &object.version_id {
            request = request.version_id(version_id);
        } else if let Some(etag) = &object.etag {
            request = request.if_match(format!("\"{etag}\""));
        }
        request.send().await
    }

    /// A GET of `pinned` (the version it names), optionally a byte range.
    async fn get_pinned(
        &self,
        pinned: &PinnedObject,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, IngestError> {
        let mut request = self
            .client
            .get_object()
            .bucket(&pinned.bucket)
            .key(&pinned.key)
            .set_expected_bucket_owner(self.expected_bucket_owner.clone());
        if let Some(version_id) = &pinned.version_id {
            request = request.version_id(version_id);
        }
        if let Some(etag) = &pinned.etag {
            request = request.if_match(format!("\"{etag}\""));
        }
        if let Some(range) = range {
            request = request.range(format!("bytes={}-{}", range.start, range.end - 1));
        }
        let output = request
            .send()
            .await
            .map_err(|err| s3_error(&pinned.uri(), "GetObject", &err))?;
        Ok(output.body)
    }

    /// Streams the whole object into `chunks`, starting with `body` (from
    /// [`Self::open`]) and resuming a broken download with a ranged GET
    /// from the last byte received (never from zero, so nothing downstream
    /// sees a byte twice or misses one). Gives up after `MAX_RESUMES`
    /// breaks in a row without progress. Returns the byte count; stops
    /// quietly if the receiver goes away, because then a later stage has
    /// failed and reports why.
    pub async fn stream_into(
        &self,
        pinned: &PinnedObject,
        body: ByteStream,
        chunks: mpsc::Sender<Bytes>,
    ) -> Result<u64, IngestError> {
        let mut offset = 0u64;
        let mut breaks_without_progress = 0u32;
        let mut resumes = 0u64;
        let mut next_body = Some(body);
        while offset < pinned.size {
            let started_at = offset;
            let mut body = match next_body.take() {
                Some(body) => body,
                None => self.get_pinned(pinned, Some(offset..pinned.size)).await?,
            };
            let failure = loop {
                match body.next().await {
                    Some(Ok(chunk)) => {
                        offset += chunk.len() as u64;
                        if chunks.send(chunk).await.is_err() {
                            return Ok(offset);
                        }
                    }
                    Some(Err(err)) => break err.to_string(),
                    None if offset < pinned.size => {
                        break format!("body ended at byte {offset} of {}", pinned.size);
                    }
                    None => break String::new(),
                }
            };
            if offset >= pinned.size {
                break;
            }
            breaks_without_progress = if offset > started_at {
                1
            } else {
                breaks_without_progress + 1
            };
            if breaks_without_progress > MAX_RESUMES {
                return Err(IngestError::S3 {
                    uri: pinned.uri(),
                    operation: "GetObject",
                    detail: format!(
                        "download broke {breaks_without_progress} times in a row at byte {offset}: {failure}"
                    ),
                    retryable: true,
                });
            }
            resumes += 1;
            warn!(uri = %pinned.uri(), offset, resumes, error = %failure, "object download broke; resuming from the last byte");
        }
        if offset != pinned.size {
            return Err(IngestError::S3 {
                uri: pinned.uri(),
                operation: "GetObject",
                detail: format!("read {offset} bytes, expected {}", pinned.size),
                retryable: true,
            });
        }
        Ok(offset)
    }

    /// Reads one byte range of `pinned` fully.
    async fn read_range(
        &self,
        pinned: &PinnedObject,
        range: Range<u64>,
    ) -> Result<Bytes, IngestError> {
        let body = self.get_pinned(pinned, Some(range.clone())).await?;
        let what = format!("range {}..{}", range.start, range.end);
        collect(pinned, body, range.end - range.start, &what).await
    }
}

/// The pinned version as a GET response describes it. The ETag is
/// checked against the notification's too, in case a server ignored
/// `If-Match`.
fn pinned_from(
    object: &ObjectRef,
    output: &GetObjectOutput,
    size: u64,
) -> Result<PinnedObject, IngestError> {
    let etag = output.e_tag().map(unquote);
    if let (Some(expected), Some(actual)) = (&object.etag, &etag)
        && object.version_id.is_none()
        && expected != actual
    {
        return Err(IngestError::ObjectChanged {
            uri: object.s3_uri(),
            detail: format!("notification named ETag {expected}, S3 now has {actual}"),
        });
    }
    Ok(PinnedObject {
        bucket: object.bucket.clone(),
        key: object.key.clone(),
        version_id: object.version_id.clone().or_else(|| {
            output
                .version_id()
                .filter(|v| *v != "null")
                .map(str::to_owned)
        }),
        etag,
        size,
        content_encoding: output.content_encoding().map(str::to_owned),
    })
}

/// Reads a body of `expected` bytes fully into one buffer sized up front:
/// collecting the chunks and then joining them would hold a column chunk
/// twice. The size is capped at the object's, so a corrupt footer cannot
/// ask for a huge allocation.
async fn collect(
    pinned: &PinnedObject,
    mut body: ByteStream,
    expected: u64,
    what: &str,
) -> Result<Bytes, IngestError> {
    let mut buffer = bytes::BytesMut::with_capacity(expected.min(pinned.size) as usize);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|err| IngestError::S3 {
            uri: pinned.uri(),
            operation: "GetObject",
            detail: format!("{what}: {err}"),
            retryable: true,
        })?;
        buffer.extend_from_slice(&chunk);
    }
    if buffer.len() as u64 != expected {
        return Err(IngestError::S3 {
            uri: pinned.uri(),
            operation: "GetObject",
            detail: format!(
                "{what} returned {} bytes, expected {expected}",
                buffer.len()
            ),
            retryable: true,
        });
    }
    Ok(buffer.freeze())
}

/// Parquet's view of an S3 object: ranged GETs, so only the footer and
/// the row group being decoded are ever in memory. Ranges within the tail
/// read at open are served from it.
#[derive(Clone)]
pub struct S3ParquetReader {
    objects: S3Objects,
    pinned: Arc<PinnedObject>,
    tail: ObjectTail,
}

impl S3ParquetReader {
    pub fn new(objects: S3Objects, pinned: Arc<PinnedObject>, tail: ObjectTail) -> S3ParquetReader {
        S3ParquetReader {
            objects,
            pinned,
            tail,
        }
    }
}

impl AsyncFileReader for S3ParquetReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            let tail_end = self.tail.offset + self.tail.bytes.len() as u64;
            if range.start >= self.tail.offset && range.end <= tail_end {
                let start = (range.start - self.tail.offset) as usize;
                let end = (range.end - self.tail.offset) as usize;
                return Ok(self.tail.bytes.slice(start..end));
            }
            self.objects
                .read_range(&self.pinned, range)
                .await
                .map_err(|err| ParquetError::External(Box::new(err)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.pinned.size;
            // The hint makes the first read the tail we already hold; the
            // options say which page indexes to load.
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .with_prefetch_hint(Some(PARQUET_TAIL_BYTES as usize))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_names_the_total_size() {
        assert_eq!(total_from_content_range("bytes 0-9/10"), Some(10));
        assert_eq!(
            total_from_content_range("bytes 65536-131071/131072"),
            Some(131072)
        );
        assert_eq!(total_from_content_range("bytes */10"), Some(10));
        assert_eq!(total_from_content_range("bytes 0-9/*"), None);
        assert_eq!(total_from_content_range("garbage"), None);
    }
}
