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
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use tokio::sync::mpsc;
use tracing::warn;

use crate::byte_ranges;
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
    /// The object's size: its Content-Length, else the size its
    /// notification announced (see [`object_size`]); 0 when neither is known.
    pub size: u64,
    /// Whether `size` is known. When it is not, the body is read to its end.
    pub size_known: bool,
    pub content_encoding: Option<String>,
}

impl PinnedObject {
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct ListedPage {
    pub objects: Vec<ListedObject>,
    /// The continuation token of the next page; `None` on the last.
    pub next: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ListedObject {
    pub key: String,
    pub size: Option<u64>,
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// What HeadObject says about an object's current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentVersion {
    pub version_id: Option<String>,
    /// Without quotes.
    pub etag: Option<String>,
    pub size: Option<u64>,
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
}

impl CurrentVersion {
    /// Whether this is the version `object` names: by version id when
    /// the object names one, else by ETag; an object that names neither
    /// means whatever is current.
    pub fn is(&self, object: &ObjectRef) -> bool {
        match (&object.version_id, &object.etag) {
            (Some(version_id), _) => self.version_id.as_ref() == Some(version_id),
            (None, Some(etag)) => self.etag.as_ref() == Some(etag),
            (None, None) => true,
        }
    }

    /// This version as an object to ingest, announced by `origin` (a
    /// backfill or reconciliation listing): pinned as a notification would
    /// pin it, with its LastModified (else `listed_at`) as the event time.
    pub fn to_object(
        &self,
        bucket: &str,
        key: &str,
        listed_at: Option<chrono::DateTime<chrono::Utc>>,
        origin: crate::notification::Origin,
        event_name: &str,
    ) -> ObjectRef {
        ObjectRef {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            version_id: self.version_id.clone(),
            etag: self.etag.clone(),
            size: self.size,
            sequencer: None,
            event_time: self.last_modified.or(listed_at),
            event_name: event_name.to_owned(),
            origin,
        }
    }

    /// How this version is named in reports: its version id, else its ETag.
    pub fn identity(&self) -> &str {
        self.version_id
            .as_deref()
            .or(self.etag.as_deref())
            .unwrap_or("unversioned")
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

/// The size of an object read with a GET of the whole of it: the
/// response's Content-Length when it has one (S3 always sends it; a proxy
/// or an S3-compatible server may not), else the size the notification
/// announced, else unknown (`None`: read the body to its end). A missing
/// header is never read as 0 bytes: that would commit an empty object.
pub fn object_size(content_length: Option<i64>, notified: Option<u64>) -> Option<u64> {
    content_length
        .and_then(|length| u64::try_from(length).ok())
        .or(notified)
}

/// The `Range` header for `start..end`, or from `start` to the object's
/// end when `end` is `None`. `None` for an empty range, which has no
/// header (`bytes=0--1` is what `end - 1` made of `0..0`).
fn range_header(start: u64, end: Option<u64>) -> Option<String> {
    match end {
        None => Some(format!("bytes={start}-")),
        Some(end) if end > start => Some(format!("bytes={start}-{}", end - 1)),
        Some(_) => None,
    }
}

/// The HTTP status of a failed GET, when there was a response.
fn status_of(err: &SdkError<GetObjectError, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|raw| raw.status().as_u16())
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

    /// One page (up to 1000 keys, in key order) of the objects under
    /// `prefix`, for `backfill`: after `start_after`, or where
    /// `continuation` (the previous page's) says.
    pub async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        continuation: Option<&str>,
    ) -> Result<ListedPage, IngestError> {
        self.list(bucket, prefix, start_after, continuation, None)
            .await
    }

    /// [`Self::list_page`] from `start_after`, at most `max_keys` keys:
    /// reconciliation's bounded step.
    pub async fn list_page_limited(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: u32,
    ) -> Result<ListedPage, IngestError> {
        self.list(bucket, prefix, start_after, None, Some(max_keys))
            .await
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        continuation: Option<&str>,
        max_keys: Option<u32>,
    ) -> Result<ListedPage, IngestError> {
        let output = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_max_keys(max_keys.map(|keys| keys as i32))
            .set_start_after(start_after.map(str::to_owned))
            .set_continuation_token(continuation.map(str::to_owned))
            .set_expected_bucket_owner(self.expected_bucket_owner.clone())
            .send()
            .await
            .map_err(|err| s3_error(&format!("s3://{bucket}/{prefix}"), "ListObjectsV2", &err))?;
        let objects = output
            .contents()
            .iter()
            .filter_map(|object| {
                Some(ListedObject {
                    key: object.key()?.to_owned(),
                    size: object.size().and_then(|s| u64::try_from(s).ok()),
                    last_modified: object
                        .last_modified()
                        .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                })
            })
            .collect();
        let next = match output.is_truncated() {
            Some(true) => output.next_continuation_token().map(str::to_owned),
            _ => None,
        };
        Ok(ListedPage { objects, next })
    }

    /// The object's current version (a HeadObject without a version):
    /// `None` when no current version exists (deleted, or never there).
    pub async fn current_version(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<CurrentVersion>, IngestError> {
        let uri = format!("s3://{bucket}/{key}");
        let head = self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .set_expected_bucket_owner(self.expected_bucket_owner.clone())
            .send()
            .await;
        match head {
            Ok(output) => Ok(Some(CurrentVersion {
                version_id: output
                    .version_id()
                    .filter(|v| !v.is_empty() && *v != "null")
                    .map(str::to_owned),
                etag: output.e_tag().map(unquote),
                size: output.content_length().and_then(|l| u64::try_from(l).ok()),
                last_modified: output
                    .last_modified()
                    .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
            })),
            Err(err) => match s3_error(&uri, "HeadObject", &err) {
                IngestError::ObjectMissing { .. } => Ok(None),
                err => Err(err),
            },
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
        let size = object_size(output.content_length(), object.size);
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
        let mut output = match self
            .get_notified(object, Some(format!("bytes=-{tail_bytes}")))
            .await
        {
            Ok(output) => output,
            // A suffix range of an empty object cannot be satisfied.
            Err(err) if status_of(&err) == Some(416) => {
                return Err(IngestError::Parquet {
                    uri,
                    detail: "the object is empty (0 bytes)".into(),
                });
            }
            Err(err) => return Err(s3_error(&uri, "GetObject", &err)),
        };
        let length = output
            .content_length()
            .and_then(|length| u64::try_from(length).ok());
        // A 206 names the total in Content-Range; a 200 (the whole object,
        // as some servers answer for an empty one) has none.
        let total = output.content_range().and_then(total_from_content_range);
        let body = std::mem::take(&mut output.body);
        let bytes = match length {
            Some(length) => collect(&uri, body, BodyLength::Exactly(length), "the tail").await?,
            // No Content-Length: the body's own end says how long it is.
            None => collect(&uri, body, BodyLength::AtMost(tail_bytes), "the tail").await?,
        };
        let size = total.or(object.size).unwrap_or(bytes.len() as u64);
        let pinned = pinned_from(object, &output, Some(size))?;
        let offset = size
            .checked_sub(bytes.len() as u64)
            .ok_or_else(|| IngestError::S3 {
                uri: uri.clone(),
                operation: "GetObject",
                detail: format!(
                    "the response holds {} bytes of an object it says is {size} bytes",
                    bytes.len()
                ),
                retryable: false,
            })?;
        Ok((pinned, ObjectTail { offset, bytes }))
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

    /// A GET of `pinned` (the version it names), optionally a byte range
    /// (a `Range` header from [`range_header`]).
    async fn get_pinned(
        &self,
        pinned: &PinnedObject,
        range: Option<String>,
    ) -> Result<ByteStream, IngestError> {
        self.get_pinned_raw(pinned, range)
            .await
            .map_err(|err| s3_error(&pinned.uri(), "GetObject", &err))
    }

    /// [`Self::get_pinned`] with the SDK's error, for callers that look at
    /// its status.
    async fn get_pinned_raw(
        &self,
        pinned: &PinnedObject,
        range: Option<String>,
    ) -> Result<ByteStream, SdkError<GetObjectError, HttpResponse>> {
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
            request = request.range(range);
        }
        Ok(request.send().await?.body)
    }

    /// Streams the whole object into `chunks`, starting with `body` (from
    /// [`Self::open`]) and resuming a broken download with a ranged GET
    /// from the last byte received (never from zero, so nothing downstream
    /// sees a byte twice or misses one). Gives up after `MAX_RESUMES`
    /// breaks in a row without progress. Each body is read to its end;
    /// when the size is known, the bytes read must match it. Returns the
    /// byte count; stops quietly if the receiver goes away, because then a
    /// later stage has failed and reports why.
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
        let size = pinned.size_known.then_some(pinned.size);
        loop {
            if size.is_some_and(|size| offset >= size) {
                break;
            }
            let started_at = offset;
            let mut body = match next_body.take() {
                Some(body) => body,
                None => match self
                    .get_pinned_raw(pinned, range_header(offset, size))
                    .await
                {
                    Ok(body) => body,
                    // Of unknown size, and it broke after its last byte:
                    // there is nothing from here on.
                    Err(err) if size.is_none() && status_of(&err) == Some(416) => break,
                    Err(err) => return Err(s3_error(&pinned.uri(), "GetObject", &err)),
                },
            };
            let failure = loop {
                match body.next().await {
                    Some(Ok(chunk)) => {
                        offset += chunk.len() as u64;
                        if chunks.send(chunk).await.is_err() {
                            return Ok(offset);
                        }
                    }
                    Some(Err(err)) => break Some(err.to_string()),
                    None => match size {
                        Some(size) if offset < size => {
                            break Some(format!("body ended at byte {offset} of {size}"));
                        }
                        _ => break None,
                    },
                }
            };
            let Some(failure) = failure else {
                break;
            };
            if size.is_some_and(|size| offset >= size) {
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
        if let Some(size) = size
            && offset != size
        {
            return Err(IngestError::S3 {
                uri: pinned.uri(),
                operation: "GetObject",
                detail: format!("read {offset} bytes, expected {size}"),
                retryable: true,
            });
        }
        Ok(offset)
    }

    /// Reads one byte range of `pinned` fully. The ranges come from the
    /// Parquet footer, so one that is reversed or reaches past the object
    /// is the file's fault (`parquet_error`), not a short read to retry;
    /// an empty one needs no request.
    async fn read_range(
        &self,
        pinned: &PinnedObject,
        range: Range<u64>,
    ) -> Result<Bytes, IngestError> {
        check_range(pinned, &range)?;
        let what = format!("range {}..{}", range.start, range.end);
        let Some(header) = range_header(range.start, Some(range.end)) else {
            return Ok(Bytes::new());
        };
        let body = self.get_pinned(pinned, Some(header)).await?;
        collect(
            &pinned.uri(),
            body,
            BodyLength::Exactly(range.end - range.start),
            &what,
        )
        .await
    }
}

/// A range Parquet asks for must lie within the object: one that is
/// reversed or reaches past the end is the footer's fault.
fn check_range(pinned: &PinnedObject, range: &Range<u64>) -> Result<(), IngestError> {
    if range.end < range.start || (pinned.size_known && range.end > pinned.size) {
        return Err(IngestError::Parquet {
            uri: pinned.uri(),
            detail: format!(
                "the footer points at bytes range {}..{}, outside the object's {} bytes",
                range.start, range.end, pinned.size
            ),
        });
    }
    Ok(())
}

/// The pinned version as a GET response describes it. The ETag is
/// checked against the notification's too, in case a server ignored
/// `If-Match`.
fn pinned_from(
    object: &ObjectRef,
    output: &GetObjectOutput,
    size: Option<u64>,
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
        size: size.unwrap_or(0),
        size_known: size.is_some(),
        content_encoding: output.content_encoding().map(str::to_owned),
    })
}

/// How long a body is: its Content-Length, or, without one, only a bound
/// (the bytes asked for), its own end saying the rest.
#[derive(Debug, Clone, Copy)]
enum BodyLength {
    Exactly(u64),
    AtMost(u64),
}

/// Reads a body fully into one buffer, sized up front when its length is
/// known: collecting the chunks and then joining them would hold a column
/// chunk twice. Callers check the length against the object's size first,
/// so a corrupt footer cannot ask for a huge allocation.
async fn collect(
    uri: &str,
    mut body: ByteStream,
    length: BodyLength,
    what: &str,
) -> Result<Bytes, IngestError> {
    let (capacity, limit) = match length {
        BodyLength::Exactly(expected) => (expected, expected),
        BodyLength::AtMost(limit) => (0, limit),
    };
    let mut buffer = bytes::BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|err| IngestError::S3 {
            uri: uri.to_owned(),
            operation: "GetObject",
            detail: format!("{what}: {err}"),
            retryable: true,
        })?;
        buffer.extend_from_slice(&chunk);
        if buffer.len() as u64 > limit {
            break;
        }
    }
    let received = buffer.len() as u64;
    match length {
        // A short or long body for a stated length: a broken response.
        BodyLength::Exactly(expected) if received != expected => Err(IngestError::S3 {
            uri: uri.to_owned(),
            operation: "GetObject",
            detail: format!("{what} returned {received} bytes, expected {expected}"),
            retryable: true,
        }),
        BodyLength::AtMost(limit) if received > limit => Err(IngestError::S3 {
            uri: uri.to_owned(),
            operation: "GetObject",
            detail: format!("{what}: more than the {limit} bytes asked for"),
            retryable: false,
        }),
        _ => Ok(buffer.freeze()),
    }
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

    /// One range: from the tail read at open when it lies within it, else
    /// a ranged GET.
    async fn fetch(&self, range: Range<u64>) -> parquet::errors::Result<Bytes> {
        let tail_end = self.tail.offset + self.tail.bytes.len() as u64;
        if range.start <= range.end && range.start >= self.tail.offset && range.end <= tail_end {
            let start = (range.start - self.tail.offset) as usize;
            let end = (range.end - self.tail.offset) as usize;
            return Ok(self.tail.bytes.slice(start..end));
        }
        self.objects
            .read_range(&self.pinned, range)
            .await
            .map_err(|err| ParquetError::External(Box::new(err)))
    }
}

impl AsyncFileReader for S3ParquetReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.fetch(range).boxed()
    }

    /// A row group's (or slice's) ranges: close ones merged into one GET,
    /// the GETs made at once (see [`crate::byte_ranges`]).
    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            // Checked one by one: merging must not hide a bad range.
            for range in &ranges {
                check_range(&self.pinned, range)
                    .map_err(|err| ParquetError::External(Box::new(err)))?;
            }
            let (reads, pieces) = byte_ranges::coalesce(&ranges, byte_ranges::MAX_GAP_BYTES);
            let read: Vec<Bytes> = futures::stream::iter(reads)
                .map(|range| self.fetch(range))
                .buffered(byte_ranges::READS_IN_FLIGHT)
                .try_collect()
                .await?;
            Ok(pieces
                .into_iter()
                .map(|piece| match read.get(piece.read) {
                    Some(bytes) => bytes.slice(piece.within),
                    None => Bytes::new(),
                })
                .collect())
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
    fn a_missing_content_length_falls_back_to_the_notified_size() {
        assert_eq!(object_size(Some(10), Some(99)), Some(10));
        assert_eq!(object_size(Some(0), Some(99)), Some(0), "an empty object");
        assert_eq!(object_size(None, Some(99)), Some(99));
        assert_eq!(object_size(Some(-1), Some(99)), Some(99));
        // Neither: unknown, read to the end of the body; never 0.
        assert_eq!(object_size(None, None), None);
    }

    #[test]
    fn range_headers_never_underflow() {
        assert_eq!(range_header(0, Some(10)).as_deref(), Some("bytes=0-9"));
        assert_eq!(range_header(5, None).as_deref(), Some("bytes=5-"));
        assert_eq!(range_header(0, Some(0)), None);
        assert_eq!(range_header(7, Some(3)), None);
    }

    /// A stand-in for S3 that answers every GET with `DATA`, chunked and
    /// without Content-Length (as a proxy or an S3-compatible server may),
    /// from the start of its `Range` header (416 past the end); the first
    /// answer breaks off after `break_first_after` chunks of 100 bytes, if
    /// given. Records each `Range`.
    async fn server_without_content_length(
        break_first_after: Option<usize>,
    ) -> (String, Arc<std::sync::Mutex<Vec<Option<String>>>>) {
        use axum::body::Body;
        use axum::http::{HeaderMap, Response};

        let ranges: Arc<std::sync::Mutex<Vec<Option<String>>>> = Arc::default();
        let seen = ranges.clone();
        let handler = move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                let range = headers
                    .get("range")
                    .map(|value| value.to_str().unwrap().to_owned());
                let first = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(range.clone());
                    seen.len() == 1
                };
                let start: usize = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
                    .unwrap_or(0);
                if start >= DATA.len() {
                    return Response::builder()
                        .status(416)
                        .body(Body::from("<Error><Code>InvalidRange</Code></Error>"))
                        .unwrap();
                }
                let rest = Bytes::from_static(DATA).slice(start..);
                let mut chunks: Vec<Result<Bytes, std::io::Error>> = rest
                    .chunks(100)
                    .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
                    .collect();
                if let Some(after) = break_first_after.filter(|_| first) {
                    chunks.truncate(after);
                    chunks.push(Err(std::io::Error::other("connection reset")));
                }
                // The break comes a moment after the first chunk, so that
                // the response has started when it does.
                let body = futures::StreamExt::then(futures::stream::iter(chunks), |chunk| async {
                    if chunk.is_err() {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    chunk
                });
                Response::builder()
                    .status(if start > 0 { 206 } else { 200 })
                    .header("etag", "\"abc\"")
                    .body(Body::from_stream(body))
                    .unwrap()
            }
        };
        let endpoint = serve(axum::Router::new().fallback(handler)).await;
        (endpoint, ranges)
    }

    const DATA: &[u8] = &[b'x'; 1000];

    /// Serves `app` on a free local port; its `http://` address.
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        endpoint
    }

    /// A stand-in for S3 that honours `Range` (`bytes=a-b`, `bytes=a-`,
    /// `bytes=-n`) on `size` bytes where byte `i` is `i % 251`, with
    /// Content-Length and Content-Range, and records each `Range` and the
    /// most requests it served at once.
    async fn server_with_ranges(size: usize) -> (String, Arc<std::sync::Mutex<RangeLog>>) {
        use axum::body::Body;
        use axum::http::{HeaderMap, Response};

        let log: Arc<std::sync::Mutex<RangeLog>> = Arc::default();
        let seen = log.clone();
        let handler = move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                let range = headers["range"].to_str().unwrap().to_owned();
                {
                    let mut log = seen.lock().unwrap();
                    log.ranges.push(range.clone());
                    log.in_flight += 1;
                    log.most_in_flight = log.most_in_flight.max(log.in_flight);
                }
                let spec = range.strip_prefix("bytes=").unwrap();
                let (first, last) = spec.split_once('-').unwrap();
                let (start, end) = match (first.parse::<usize>(), last.parse::<usize>()) {
                    (Ok(start), Ok(last)) => (start, last + 1),
                    (Ok(start), Err(_)) => (start, size),
                    (Err(_), Ok(suffix)) => (size - suffix.min(size), size),
                    _ => panic!("range {range}"),
                };
                // A latency long enough for the other requests of a batch
                // to arrive meanwhile, even on a loaded machine.
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                seen.lock().unwrap().in_flight -= 1;
                let body: Vec<u8> = (start..end).map(|i| (i % 251) as u8).collect();
                Response::builder()
                    .status(206)
                    .header("etag", "\"abc\"")
                    .header("content-length", body.len())
                    .header("content-range", format!("bytes {start}-{}/{size}", end - 1))
                    .body(Body::from(body))
                    .unwrap()
            }
        };
        let endpoint = serve(axum::Router::new().fallback(handler)).await;
        (endpoint, log)
    }

    #[derive(Default)]
    struct RangeLog {
        ranges: Vec<String>,
        in_flight: usize,
        most_in_flight: usize,
    }

    /// A Parquet reader of a `size`-byte object behind
    /// [`server_with_ranges`], opened with a tail of `tail_bytes`.
    async fn parquet_reader_of(
        size: usize,
        tail_bytes: u64,
    ) -> (S3ParquetReader, Arc<std::sync::Mutex<RangeLog>>) {
        let (endpoint, log) = server_with_ranges(size).await;
        let objects = objects_at(&endpoint);
        let (pinned, tail) = objects
            .open_tail(&notified(Some(size as u64)), tail_bytes)
            .await
            .unwrap();
        (S3ParquetReader::new(objects, Arc::new(pinned), tail), log)
    }

    #[tokio::test]
    async fn parquet_reads_merge_close_ranges_and_run_at_once() {
        const SIZE: usize = 8 << 20;
        let (mut reader, log) = parquet_reader_of(SIZE, 100).await;
        let far = 3u64 << 20;
        let ranges = vec![
            10..20,
            far..far + 5,
            30..40,
            15..25,
            (6 << 20)..(6 << 20) + 1,
            (SIZE as u64 - 50)..SIZE as u64,
        ];
        let bytes = reader.get_byte_ranges(ranges.clone()).await.unwrap();
        for (range, bytes) in ranges.iter().zip(&bytes) {
            let expected: Vec<u8> = range.clone().map(|i| (i % 251) as u8).collect();
            assert_eq!(bytes.as_ref(), expected.as_slice(), "{range:?}");
        }
        let log = log.lock().unwrap();
        // The tail at open, then one GET per cluster; the last range came
        // from the tail.
        let mut reads = log.ranges[1..].to_vec();
        reads.sort();
        assert_eq!(
            reads,
            [
                "bytes=10-39",
                "bytes=3145728-3145732",
                "bytes=6291456-6291456"
            ]
        );
        assert_eq!(log.most_in_flight, 3, "the reads ran at once");
    }

    #[tokio::test]
    async fn a_range_past_the_object_is_refused_before_any_read() {
        const SIZE: usize = 1000;
        let (mut reader, log) = parquet_reader_of(SIZE, 10).await;
        let err = reader
            .get_byte_ranges(vec![0..10, 900..1001])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("outside the object"), "{err}");
        assert_eq!(
            log.lock().unwrap().ranges.len(),
            1,
            "only the tail was read"
        );
    }

    fn objects_at(endpoint: &str) -> S3Objects {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .build();
        S3Objects::new(Client::from_conf(config), None)
    }

    fn notified(size: Option<u64>) -> ObjectRef {
        ObjectRef {
            bucket: "b".into(),
            key: "k.csv".into(),
            version_id: None,
            etag: Some("abc".into()),
            size,
            sequencer: None,
            event_time: None,
            event_name: "ObjectCreated:Put".into(),
            origin: crate::notification::Origin::Notification,
        }
    }

    /// Opens and streams the object; the bytes and the pinned object.
    async fn read_all(objects: &S3Objects, object: &ObjectRef) -> (Vec<u8>, PinnedObject) {
        let (pinned, body) = objects.open(object).await.unwrap();
        let (sender, mut receiver) = mpsc::channel(1000);
        let read = objects.stream_into(&pinned, body, sender).await.unwrap();
        let mut bytes = Vec::new();
        while let Some(chunk) = receiver.recv().await {
            bytes.extend_from_slice(&chunk);
        }
        assert_eq!(read, bytes.len() as u64);
        (bytes, pinned)
    }

    #[tokio::test]
    async fn without_content_length_the_whole_body_is_read() {
        let (endpoint, _) = server_without_content_length(None).await;
        let objects = objects_at(&endpoint);
        for size in [Some(DATA.len() as u64), None] {
            let (bytes, pinned) = read_all(&objects, &notified(size)).await;
            assert_eq!(bytes, DATA, "notified size {size:?}");
            assert_eq!(pinned.size_known, size.is_some());
        }
    }

    #[tokio::test]
    async fn without_content_length_a_broken_download_resumes_where_it_broke() {
        for size in [Some(DATA.len() as u64), None] {
            let (endpoint, ranges) = server_without_content_length(Some(1)).await;
            let objects = objects_at(&endpoint);
            let (bytes, _) = read_all(&objects, &notified(size)).await;
            assert_eq!(bytes, DATA, "notified size {size:?}");
            let ranges = ranges.lock().unwrap().clone();
            assert_eq!(ranges.len(), 2, "{ranges:?}");
            assert_eq!(ranges[0], None);
            let resumed = ranges[1].as_deref().expect("a ranged GET resumed it");
            assert!(resumed.starts_with("bytes=100-"), "{resumed}");
            match size {
                Some(size) => assert!(resumed.ends_with(&format!("-{}", size - 1)), "{resumed}"),
                None => assert!(resumed.ends_with('-'), "{resumed}"),
            }
        }
    }

    #[tokio::test]
    async fn without_content_length_a_break_after_the_last_byte_is_the_end() {
        for size in [Some(DATA.len() as u64), None] {
            let (endpoint, ranges) = server_without_content_length(Some(10)).await;
            let objects = objects_at(&endpoint);
            let (bytes, _) = read_all(&objects, &notified(size)).await;
            assert_eq!(bytes, DATA, "notified size {size:?}");
            let ranges = ranges.lock().unwrap().clone();
            match size {
                // Known: every byte is in, nothing more to ask for.
                Some(_) => assert_eq!(ranges, [None]),
                // Unknown: asked for more, and was told there is none.
                None => assert_eq!(ranges, [None, Some("bytes=1000-".to_owned())]),
            }
        }
    }

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
