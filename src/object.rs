//! Reading source objects from S3: the only file that talks to S3.
//!
//! Every read is pinned to the version the notification named: its
//! `versionId` when the bucket is versioned, otherwise its ETag through
//! `If-Match`. An object overwritten or deleted since then fails with
//! `ObjectChanged` / `ObjectMissing` instead of being read half old, half new.

use std::ops::Range;
use std::sync::Arc;

use aws_sdk_s3::Client;
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

/// S3 access for the worker.
#[derive(Clone)]
pub struct S3Objects {
    client: Client,
    expected_bucket_owner: Option<String>,
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

impl S3Objects {
    pub fn new(client: Client, expected_bucket_owner: Option<String>) -> S3Objects {
        S3Objects {
            client,
            expected_bucket_owner,
        }
    }

    /// Looks up the notified version: fails if it is gone or has changed.
    pub async fn pin(&self, object: &ObjectRef) -> Result<PinnedObject, IngestError> {
        let uri = object.s3_uri();
        let mut request = self
            .client
            .head_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .set_expected_bucket_owner(self.expected_bucket_owner.clone());
        if let Some(version_id) = &object.version_id {
            request = request.version_id(version_id);
        } else if let Some(etag) = &object.etag {
            request = request.if_match(format!("\"{etag}\""));
        }
        let head = request
            .send()
            .await
            .map_err(|err| s3_error(&uri, "HeadObject", &err))?;
        let etag = head.e_tag().map(unquote);
        // A HEAD without If-Match support would still let us notice the change.
        if let (Some(expected), Some(actual)) = (&object.etag, &etag)
            && object.version_id.is_none()
            && expected != actual
        {
            return Err(IngestError::ObjectChanged {
                uri,
                detail: format!("notification named ETag {expected}, S3 now has {actual}"),
            });
        }
        Ok(PinnedObject {
            bucket: object.bucket.clone(),
            key: object.key.clone(),
            version_id: object.version_id.clone().or_else(|| {
                head.version_id()
                    .filter(|v| *v != "null")
                    .map(str::to_owned)
            }),
            etag,
            size: head.content_length().unwrap_or(0).max(0) as u64,
            content_encoding: head.content_encoding().map(str::to_owned),
        })
    }

    /// Starts a GET of `pinned` from byte `offset` to the end.
    async fn get_from(
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

    /// Streams the whole object into `chunks`, resuming a broken download
    /// with a ranged GET from the last byte received (never from zero, so
    /// nothing downstream sees a byte twice or misses one). Gives up after
    /// `MAX_RESUMES` breaks in a row without progress. Returns the byte
    /// count; stops quietly if the receiver goes away, because then a later
    /// stage has failed and reports why.
    pub async fn stream_into(
        &self,
        pinned: &PinnedObject,
        chunks: mpsc::Sender<Bytes>,
    ) -> Result<u64, IngestError> {
        let mut offset = 0u64;
        let mut breaks_without_progress = 0u32;
        let mut resumes = 0u64;
        while offset < pinned.size {
            let range = (offset > 0).then_some(offset..pinned.size);
            let started_at = offset;
            let mut body = self.get_from(pinned, range).await?;
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

    /// Reads one byte range fully.
    async fn read_range(
        &self,
        pinned: &PinnedObject,
        range: Range<u64>,
    ) -> Result<Bytes, IngestError> {
        let expected = range.end - range.start;
        let mut body = self.get_from(pinned, Some(range.clone())).await?;
        // Filled chunk by chunk into one buffer sized up front: collecting
        // the body and then joining it would hold a column chunk twice.
        // Capped at the object's size, so a corrupt footer cannot ask for
        // a huge allocation.
        let mut buffer = bytes::BytesMut::with_capacity(expected.min(pinned.size) as usize);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| IngestError::S3 {
                uri: pinned.uri(),
                operation: "GetObject",
                detail: format!("range {}..{}: {err}", range.start, range.end),
                retryable: true,
            })?;
            buffer.extend_from_slice(&chunk);
        }
        let bytes = buffer.freeze();
        if bytes.len() as u64 != expected {
            return Err(IngestError::S3 {
                uri: pinned.uri(),
                operation: "GetObject",
                detail: format!(
                    "range {}..{} returned {} bytes",
                    range.start,
                    range.end,
                    bytes.len()
                ),
                retryable: true,
            });
        }
        Ok(bytes)
    }
}

/// Parquet's view of an S3 object: ranged GETs, so only the footer and
/// the row group being decoded are ever in memory.
pub struct S3ParquetReader {
    objects: S3Objects,
    pinned: Arc<PinnedObject>,
}

impl S3ParquetReader {
    pub fn new(objects: S3Objects, pinned: Arc<PinnedObject>) -> S3ParquetReader {
        S3ParquetReader { objects, pinned }
    }
}

impl AsyncFileReader for S3ParquetReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.objects
                .read_range(&self.pinned, range)
                .await
                .map_err(|err| ParquetError::External(Box::new(err)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.pinned.size;
            // One request usually fetches the footer and the metadata together.
            let metadata = ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(64 * 1024))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}
