//! One destination S3 object, written through parquet's [`AsyncFileWriter`]
//! and made visible only by an explicit [`ObjectUpload::publish`].
//!
//! Bytes are buffered up to `part_size`; once a full part is buffered a
//! multipart upload is started and each full part is uploaded as it fills,
//! so memory stays at about one part per object however large the output.
//! An output that never fills one part is sent with a single PutObject at
//! publish time instead (no upload to clean up).
//!
//! A multipart upload's parts are invisible until CompleteMultipartUpload.
//! Any failure aborts the upload, and so does dropping an unpublished
//! `ObjectUpload` (the abort is spawned on the current tokio runtime, since
//! `Drop` cannot await). A worker killed outright leaves its upload open:
//! a bucket lifecycle rule `AbortIncompleteMultipartUpload` cleans those up.

use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::BoxFuture;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::errors::ParquetError;

use crate::error::{AwsFailure, classify_aws};
use crate::sink::SinkError;

/// S3 refuses more parts than this in one upload.
const MAX_PARTS: i32 = 10_000;

/// Where objects go, shared by every upload of one sink.
#[derive(Clone)]
pub struct Destination {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
    pub expected_bucket_owner: Option<String>,
}

/// A multipart upload in progress.
struct OpenUpload {
    upload_id: String,
    parts: Vec<CompletedPart>,
}

pub struct ObjectUpload {
    destination: Arc<Destination>,
    key: String,
    part_size: usize,
    /// Bytes not yet uploaded; always shorter than `part_size` between
    /// calls.
    buffer: BytesMut,
    upload: Option<OpenUpload>,
    /// Set once the object is visible: nothing to abort any more.
    published: bool,
}

impl ObjectUpload {
    pub fn new(destination: Arc<Destination>, key: String, part_size: usize) -> ObjectUpload {
        ObjectUpload {
            destination,
            key,
            part_size,
            buffer: BytesMut::new(),
            upload: None,
            published: false,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// `s3://bucket/key`, for messages.
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.destination.bucket, self.key)
    }

    /// How many parts were uploaded (0: the object goes out as one PutObject).
    pub fn parts_uploaded(&self) -> usize {
        self.upload.as_ref().map_or(0, |upload| upload.parts.len())
    }

    /// Makes the object visible: CompleteMultipartUpload, or PutObject for
    /// an output smaller than one part. Call after the Parquet writer has
    /// finished (its `complete` uploaded the last part).
    pub async fn publish(&mut self) -> Result<(), SinkError> {
        let destination = Arc::clone(&self.destination);
        match self.upload.take() {
            Some(upload) => {
                let result = destination
                    .client
                    .complete_multipart_upload()
                    .bucket(&destination.bucket)
                    .key(&self.key)
                    .upload_id(&upload.upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(upload.parts.clone()))
                            .build(),
                    )
                    .set_expected_bucket_owner(destination.expected_bucket_owner.clone())
                    .send()
                    .await;
                if let Err(err) = result {
                    let error = s3_sink_error("CompleteMultipartUpload", &self.uri(), &err);
                    // The upload may or may not have completed (a lost
                    // response): aborting is harmless either way, and the
                    // redelivery writes identical content again.
                    abort(&destination, &self.key, &upload.upload_id).await;
                    return Err(error);
                }
            }
            None => {
                let body = std::mem::take(&mut self.buffer).freeze();
                destination
                    .client
                    .put_object()
                    .bucket(&destination.bucket)
                    .key(&self.key)
                    .content_type("application/vnd.apache.parquet")
                    .body(ByteStream::from(body))
                    .set_expected_bucket_owner(destination.expected_bucket_owner.clone())
                    .send()
                    .await
                    .map_err(|err| s3_sink_error("PutObject", &self.uri(), &err))?;
            }
        }
        self.published = true;
        Ok(())
    }

    /// Uploads one part, starting the multipart upload first if needed.
    /// On failure the upload is aborted before the error is returned.
    async fn upload_part(&mut self, body: Bytes) -> Result<(), SinkError> {
        let destination = Arc::clone(&self.destination);
        if self.upload.is_none() {
            let created = destination
                .client
                .create_multipart_upload()
                .bucket(&destination.bucket)
                .key(&self.key)
                .content_type("application/vnd.apache.parquet")
                // Declared up front so every part carries a CRC32 that S3
                // checks, and the completion lists them (S3 refuses parts
                // whose checksums the upload did not announce).
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .set_expected_bucket_owner(destination.expected_bucket_owner.clone())
                .send()
                .await
                .map_err(|err| s3_sink_error("CreateMultipartUpload", &self.uri(), &err))?;
            let upload_id = created.upload_id().ok_or_else(|| {
                SinkError::transient(format!(
                    "CreateMultipartUpload for {} returned no upload id",
                    self.uri()
                ))
            })?;
            self.upload = Some(OpenUpload {
                upload_id: upload_id.to_owned(),
                parts: Vec::new(),
            });
        }
        let upload = self.upload.as_mut().expect("started above");
        let part_number = upload.parts.len() as i32 + 1;
        if part_number > MAX_PARTS {
            let error = SinkError::permanent(format!(
                "{} needs more than {MAX_PARTS} parts of {} bytes; raise part_size_bytes",
                self.uri(),
                self.part_size
            ));
            self.abort_now().await;
            return Err(error);
        }
        let result = destination
            .client
            .upload_part()
            .bucket(&destination.bucket)
            .key(&self.key)
            .upload_id(&upload.upload_id)
            .part_number(part_number)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(body))
            .set_expected_bucket_owner(destination.expected_bucket_owner.clone())
            .send()
            .await;
        match result {
            Ok(output) => {
                upload.parts.push(
                    CompletedPart::builder()
                        .part_number(part_number)
                        .set_e_tag(output.e_tag().map(str::to_owned))
                        .set_checksum_crc32(output.checksum_crc32().map(str::to_owned))
                        .build(),
                );
                Ok(())
            }
            Err(err) => {
                let error = s3_sink_error("UploadPart", &self.uri(), &err);
                self.abort_now().await;
                Err(error)
            }
        }
    }

    async fn abort_now(&mut self) {
        if let Some(upload) = self.upload.take() {
            abort(&self.destination, &self.key, &upload.upload_id).await;
        }
    }
}

/// Best effort: a failed abort is logged, and the bucket's lifecycle rule
/// is the backstop. The parts were never visible either way.
async fn abort(destination: &Destination, key: &str, upload_id: &str) {
    let result = destination
        .client
        .abort_multipart_upload()
        .bucket(&destination.bucket)
        .key(key)
        .upload_id(upload_id)
        .set_expected_bucket_owner(destination.expected_bucket_owner.clone())
        .send()
        .await;
    match result {
        Ok(_) => tracing::debug!(bucket = %destination.bucket, key, "multipart upload aborted"),
        Err(err) => tracing::warn!(
            bucket = %destination.bucket,
            key,
            error = %aws_sdk_s3::error::DisplayErrorContext(err),
            "cannot abort multipart upload; the bucket's lifecycle rule must clean it up"
        ),
    }
}

impl AsyncFileWriter for ObjectUpload {
    fn write(&mut self, bytes: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        async move {
            self.buffer.extend_from_slice(&bytes);
            while self.buffer.len() >= self.part_size {
                let part = self.buffer.split_to(self.part_size).freeze();
                self.upload_part(part)
                    .await
                    .map_err(|err| ParquetError::External(Box::new(err)))?;
            }
            Ok(())
        }
        .boxed()
    }

    /// Called when the Parquet footer is written: uploads the last part of
    /// a multipart upload, but publishes nothing (see `publish`).
    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        async move {
            if self.upload.is_some() && !self.buffer.is_empty() {
                let last_part = std::mem::take(&mut self.buffer).freeze();
                self.upload_part(last_part)
                    .await
                    .map_err(|err| ParquetError::External(Box::new(err)))?;
            }
            Ok(())
        }
        .boxed()
    }
}

impl Drop for ObjectUpload {
    /// An unpublished upload is aborted so its parts do not linger (and
    /// cost storage) until the lifecycle rule runs.
    fn drop(&mut self) {
        if self.published {
            return;
        }
        let Some(upload) = self.upload.take() else {
            return;
        };
        let destination = Arc::clone(&self.destination);
        let key = std::mem::take(&mut self.key);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { abort(&destination, &key, &upload.upload_id).await });
            }
            Err(_) => tracing::warn!(
                bucket = %destination.bucket,
                key,
                "no tokio runtime to abort an abandoned multipart upload; the bucket's lifecycle rule must clean it up"
            ),
        }
    }
}

/// Classifies a failed call on the destination bucket.
///
/// Throttling, 5xx and timeouts say the destination is unavailable (an
/// outage, not counted against the file while it lasts); NoSuchBucket and
/// NoSuchUpload are transient. AccessDenied and expired or invalid credentials are
/// deployment problems (`error::IngestError::Deployment`): they say
/// nothing about the source file, so the file stays queued without being
/// counted as a failed attempt, and the worker backs off until they are
/// fixed. Other 4xx errors are refusals that repeat for this output, so
/// they dead-letter.
pub fn s3_sink_error<E>(
    operation: &str,
    uri: &str,
    err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> SinkError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (class, detail) = classify_aws(err);
    let message = format!("S3 {operation} on {uri} failed: {detail}");
    match class {
        // Expired or invalid credentials, or a destination the role may
        // not write: the deployment's problem, not the file's.
        AwsFailure::Credentials | AwsFailure::AccessDenied => SinkError::deployment(
            crate::error::aws_error_code(err).unwrap_or_else(|| "AccessDenied".into()),
            format!(
                "{message}; check the worker's credentials and its grants on the destination bucket"
            ),
        ),
        // Throttling, 5xx, timeouts, no connection: the destination is
        // out or overloaded, whatever this object holds.
        AwsFailure::Transient => {
            let code = crate::error::aws_error_code(err).unwrap_or_else(|| match err {
                aws_sdk_s3::error::SdkError::TimeoutError(_) => "timeout".into(),
                _ => "unreachable".into(),
            });
            SinkError::unavailable(code, message)
        }
        // A missing bucket or upload, a failed precondition: another try
        // may do, and it counts.
        AwsFailure::NotFound | AwsFailure::PreconditionFailed => SinkError::transient(message),
        AwsFailure::Permanent => SinkError::permanent(message),
    }
}
