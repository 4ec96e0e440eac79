//! `s3_parquet`: a Parquet lake on S3, one object per source object version
//! and partition, streamed by multipart upload.
//!
//! Object names are deterministic, so a redelivery overwrites instead of
//! duplicating:
//! `<prefix>/<partition path>/<readable source key>-<16 hex of sha256(bucket, key, version)>.parquet`
//! (the file name is [`parquet_dir`](super::parquet_dir)'s).
//!
//! Nothing is visible before `commit`: each partition's bytes go through an
//! [`upload::ObjectUpload`], whose parts stay invisible until the commit
//! completes the upload; a failed or dropped writer aborts its uploads.
//!
//! With `{column:NAME}` placeholders one source object may produce several
//! destination objects. They are completed one after the other at commit,
//! so a crash between two completes leaves some partitions visible; the
//! message was not deleted, and its redelivery overwrites them with
//! identical content and publishes the rest.
//!
//! ## Commit markers
//!
//! Because a crash can leave some partitions of an object visible, the
//! visible objects cannot say whether a version is committed. The commit
//! therefore writes one more object *last*, after every partition's object
//! is published: a commit marker,
//! `<prefix>/_s3_ingest/commits/<readable source key>-<16 hex>.json`
//! ([`marker_key`]: the same name as the Parquet objects' with `.json`,
//! depending only on bucket, key and version identity, never on partitions
//! or event time). Its JSON body ([`CommitMarker`]) records the lineage,
//! the published keys, the rows, the commit time and the worker version.
//! [`Sink::is_committed`] is a HeadObject of the marker: present means
//! every object of the version was published; absent (404) means not
//! committed, even when some partitions are visible. The marker belongs to
//! the source object version, not to an output, so it stays true when
//! several sources share one output object. Hive, Spark, Athena and Trino
//! skip paths whose name starts with `_` (or `.`), so `_s3_ingest/` does not
//! show up as data under a table located at the prefix.
//!
//! Memory per source object is about `max_open_partitions ×
//! (row_group_bytes + part_size_bytes)` at worst, one partition's worth
//! without column placeholders.

mod partition;
mod upload;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

use crate::sink::parquet_encoder::ParquetEncoder;
use crate::sink::parquet_settings::ParquetWriterSettings;
use serde::{Deserialize, Serialize};

use super::parquet_dir::{lineage_metadata, output_path};
use super::{
    CommitDetails, CommitReceipt, CommitState, Lineage, Sink, SinkContext, SinkError, SinkWriter,
};
pub use partition::{DEFAULT_PARTITION, PartitionTemplate};
use upload::{Destination, ObjectUpload, s3_sink_error};

/// S3's smallest allowed part (except the last one).
pub const MIN_PART_SIZE_BYTES: usize = 5 * 1024 * 1024;
/// S3's largest allowed part.
pub const MAX_PART_SIZE_BYTES: usize = 5 * 1024 * 1024 * 1024;
/// S3's longest object key, in UTF-8 bytes.
const MAX_KEY_BYTES: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3ParquetSinkConfig {
    /// Destination bucket (not the source bucket, usually).
    pub bucket: String,
    /// Key prefix under which everything is written; slashes at either
    /// end are ignored.
    #[serde(default)]
    pub prefix: String,
    /// Hive-style partition path template, e.g.
    /// `route={route}/dt={event_date}/country={column:country}`; empty
    /// for none.
    #[serde(default)]
    pub partition: String,
    /// Multipart part size: the upload buffer per destination object.
    #[serde(default = "default_part_size_bytes")]
    pub part_size_bytes: usize,
    /// A row group is flushed once its encoded size reaches this, which
    /// bounds the Parquet writer's own buffer.
    #[serde(default = "default_row_group_bytes")]
    pub row_group_bytes: usize,
    /// Most destination objects (partition values) one source object may
    /// write; more is a permanent error for that object.
    #[serde(default = "default_max_open_partitions")]
    pub max_open_partitions: usize,
    /// Codec (`zstd`, `snappy`, `lz4`, `gzip`, `none`; default zstd, LZ4
    /// on very wide schemas), its level, `dictionary` (`auto`, `on`,
    /// `off`) and `statistics` (`page`, `chunk`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<crate::sink::parquet_settings::Codec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    #[serde(default)]
    pub dictionary: crate::sink::parquet_settings::Dictionary,
    #[serde(default)]
    pub statistics: crate::sink::parquet_settings::Statistics,
}

fn default_part_size_bytes() -> usize {
    8 * 1024 * 1024
}

fn default_row_group_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_max_open_partitions() -> usize {
    32
}

impl S3ParquetSinkConfig {
    /// The Parquet writer settings this sink chose.
    pub fn writer_settings(&self) -> ParquetWriterSettings {
        ParquetWriterSettings {
            compression: self.compression,
            compression_level: self.compression_level,
            dictionary: self.dictionary,
            statistics: self.statistics,
        }
    }

    /// Errors are (field relative to `sinks.NAME.`, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.writer_settings().validate()?;
        let invalid = |field: &str, message: String| Err((field.to_owned(), message));
        if self.bucket.is_empty() {
            return invalid("bucket", "must not be empty".into());
        }
        if self.bucket.contains('/') {
            return invalid(
                "bucket",
                "is a bucket name, not a path: put the key part in `prefix`".into(),
            );
        }
        if let Err(message) = PartitionTemplate::parse(&self.partition) {
            return invalid("partition", message);
        }
        if !(MIN_PART_SIZE_BYTES..=MAX_PART_SIZE_BYTES).contains(&self.part_size_bytes) {
            return invalid(
                "part_size_bytes",
                format!(
                    "must be between {MIN_PART_SIZE_BYTES} (5 MiB) and {MAX_PART_SIZE_BYTES} (5 GiB), S3's part size limits"
                ),
            );
        }
        if self.row_group_bytes == 0 {
            return invalid("row_group_bytes", "must be greater than 0".into());
        }
        if self.max_open_partitions == 0 {
            return invalid("max_open_partitions", "must be greater than 0".into());
        }
        Ok(())
    }
}

/// Where commit markers go, under the sink's prefix (see the module
/// documentation).
pub const MARKER_DIRECTORY: &str = "_s3_ingest/commits";

/// The layout of a [`CommitMarker`]'s JSON; raised when a field changes
/// meaning or disappears (adding one does not).
pub const MARKER_FORMAT_VERSION: u32 = 1;

/// Settings shared by every writer of one sink.
struct Settings {
    /// The sink's name, recorded in commit markers.
    name: String,
    destination: Arc<Destination>,
    prefix: String,
    template: PartitionTemplate,
    part_size_bytes: usize,
    row_group_bytes: usize,
    max_open_partitions: usize,
    writer: ParquetWriterSettings,
}

pub struct S3ParquetSink {
    name: String,
    settings: Arc<Settings>,
}

impl S3ParquetSink {
    pub fn new(
        name: &str,
        config: &S3ParquetSinkConfig,
        context: &SinkContext,
    ) -> Result<S3ParquetSink, SinkError> {
        let template = PartitionTemplate::parse(&config.partition).map_err(|message| {
            SinkError::permanent(format!("sinks.{name}.partition: {message}"))
        })?;
        Ok(S3ParquetSink {
            name: name.to_owned(),
            settings: Arc::new(Settings {
                name: name.to_owned(),
                destination: Arc::new(Destination {
                    client: context.s3.clone(),
                    bucket: config.bucket.clone(),
                    expected_bucket_owner: context.expected_bucket_owner.clone(),
                }),
                prefix: config.prefix.trim_matches('/').to_owned(),
                template,
                part_size_bytes: config.part_size_bytes,
                row_group_bytes: config.row_group_bytes,
                max_open_partitions: config.max_open_partitions,
                writer: config.writer_settings(),
            }),
        })
    }
}

/// The destination key for one partition of one source object version:
/// `<prefix>/<partition path>/<parquet_dir's file name>`.
pub fn object_key(prefix: &str, partition_path: &str, lineage: &Lineage) -> String {
    let file_name = output_path(Path::new(""), lineage)
        .file_name()
        .expect("parquet_dir's output path ends in a file name")
        .to_string_lossy()
        .into_owned();
    [prefix, partition_path, &file_name]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

/// The key of one source object version's commit marker:
/// `<prefix>/_s3_ingest/commits/<parquet_dir's file name, .json>`. Depends
/// on bucket, key and version identity only.
pub fn marker_key(prefix: &str, lineage: &Lineage) -> String {
    let file_name = output_path(Path::new(""), lineage)
        .with_extension("json")
        .file_name()
        .expect("parquet_dir's output path ends in a file name")
        .to_string_lossy()
        .into_owned();
    [prefix, MARKER_DIRECTORY, &file_name]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

/// The body of a commit marker (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMarker {
    /// [`MARKER_FORMAT_VERSION`].
    pub format_version: u32,
    /// The source object version.
    pub source: MarkerSource,
    /// The sink that wrote it.
    pub sink: String,
    /// The destination bucket of `objects`.
    pub bucket: String,
    /// Every object the commit published, in order, with its rows (none
    /// for a file without rows under a `{column:NAME}` partition).
    pub objects: Vec<MarkerObject>,
    /// All rows of the source object version.
    pub rows: u64,
    /// When the marker was written: the last objects were published just
    /// before.
    pub committed_at: chrono::DateTime<chrono::Utc>,
    /// The s3-ingest version that wrote it.
    pub worker_version: String,
    /// The route's contract outcome for the source (`contract/`), when the
    /// route has a contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<serde_json::Value>,
}

/// The source object version a commit marker is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerSource {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
    pub etag: Option<String>,
    /// What the marker's name is derived from, with bucket and key:
    /// [`Lineage::version_identity`].
    pub version_identity: String,
    pub size: u64,
    pub event_time: Option<chrono::DateTime<chrono::Utc>>,
    pub route: String,
}

/// One published destination object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerObject {
    pub key: String,
    pub rows: u64,
}

impl MarkerSource {
    fn new(lineage: &Lineage) -> MarkerSource {
        MarkerSource {
            bucket: lineage.bucket.clone(),
            key: lineage.key.clone(),
            version_id: lineage.version_id.clone(),
            etag: lineage.etag.clone(),
            version_identity: lineage.version_identity().to_owned(),
            size: lineage.size,
            event_time: lineage.event_time,
            route: lineage.route.clone(),
        }
    }
}

impl Settings {
    /// Writes the marker of a commit whose objects are all published: the
    /// last write of `commit`, so that its presence means the whole
    /// version is visible. Sent with the same expected bucket owner as
    /// every destination write; encryption is the bucket's default, as
    /// for the Parquet objects.
    async fn put_marker(&self, marker_key: &str, marker: &CommitMarker) -> Result<(), SinkError> {
        let destination = &self.destination;
        let uri = format!("s3://{}/{marker_key}", destination.bucket);
        let body = serde_json::to_vec_pretty(marker).map_err(|err| {
            SinkError::permanent(format!("cannot encode the commit marker {uri}: {err}"))
        })?;
        destination
            .client
            .put_object()
            .bucket(&destination.bucket)
            .key(marker_key)
            .content_type("application/json")
            .body(aws_sdk_s3::primitives::ByteStream::from(body))
            .set_expected_bucket_owner(destination.expected_bucket_owner.clone())
            .send()
            .await
            .map_err(|err| s3_sink_error("PutObject (commit marker)", &uri, &err))?;
        Ok(())
    }
}

#[async_trait]
impl Sink for S3ParquetSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn open(
        &self,
        lineage: &Lineage,
        schema: SchemaRef,
    ) -> Result<Box<dyn SinkWriter>, SinkError> {
        // A column the template needs but the file lacks can never be
        // partitioned: say so before writing anything.
        for column in self.settings.template.column_names() {
            if schema.field_with_name(column).is_err() {
                return Err(SinkError::permanent(format!(
                    "partition column `{column}` is not among the columns of s3://{}/{}",
                    lineage.bucket, lineage.key
                )));
            }
        }
        let marker_key = marker_key(&self.settings.prefix, lineage);
        if marker_key.len() > MAX_KEY_BYTES {
            return Err(SinkError::permanent(format!(
                "commit marker key `{marker_key}` is {} bytes, longer than S3's {MAX_KEY_BYTES}; shorten the sink's prefix",
                marker_key.len()
            )));
        }
        let properties = self
            .settings
            .writer
            .apply(WriterProperties::builder(), &schema)
            .set_key_value_metadata(Some(lineage_metadata(lineage)))
            .build();
        let mut outputs = PartitionOutputs {
            settings: Arc::clone(&self.settings),
            partitions: self.settings.template.bind(lineage),
            marker_key,
            lineage: lineage.clone(),
            schema,
            properties,
            open: Vec::new(),
            index_of_path: HashMap::new(),
            contract: None,
            rows: 0,
        };
        // Without column placeholders there is exactly one output, even for
        // a source without rows (a zero-row file records the ingestion).
        if let Some(path) = outputs.partitions.fixed_path() {
            outputs.partition(path)?;
        }
        Ok(Box::new(S3ParquetWriter {
            outputs: Some(outputs),
        }))
    }

    /// HeadObject of the version's commit marker: 200 → committed, 404 →
    /// not (whatever partitions are visible). Other failures are
    /// classified as every destination call is; a 403 here usually means
    /// the role lacks `s3:GetObject` on the marker or `s3:ListBucket` on
    /// the bucket (without which S3 answers 403 for a missing key).
    async fn is_committed(&self, lineage: &Lineage) -> Result<CommitState, SinkError> {
        let destination = &self.settings.destination;
        let key = marker_key(&self.settings.prefix, lineage);
        let result = destination
            .client
            .head_object()
            .bucket(&destination.bucket)
            .key(&key)
            .set_expected_bucket_owner(destination.expected_bucket_owner.clone())
            .send()
            .await;
        match result {
            Ok(_) => Ok(CommitState::Committed),
            Err(err) if is_not_found(&err) => Ok(CommitState::NotCommitted),
            Err(err) => {
                let mut error = s3_sink_error(
                    "HeadObject (commit marker)",
                    &format!("s3://{}/{key}", destination.bucket),
                    &err,
                );
                let forbidden = matches!(
                    &err,
                    aws_sdk_s3::error::SdkError::ServiceError(service)
                        if service.raw().status().as_u16() == 403
                );
                if forbidden {
                    let marker_prefix = key.rsplit_once('/').map_or("", |(directory, _)| directory);
                    error.detail.push_str(&format!(
                        "; asking needs s3:GetObject on {marker_prefix}/* and s3:ListBucket on the bucket \
                         for that prefix (without it S3 answers 403 for a marker not written yet)"
                    ));
                }
                Err(error)
            }
        }
    }

    /// The commit marker's body: the published objects, the rows and the
    /// commit time.
    async fn commit_details(&self, lineage: &Lineage) -> Result<Option<CommitDetails>, SinkError> {
        let destination = &self.settings.destination;
        let key = marker_key(&self.settings.prefix, lineage);
        let uri = format!("s3://{}/{key}", destination.bucket);
        let result = destination
            .client
            .get_object()
            .bucket(&destination.bucket)
            .key(&key)
            .set_expected_bucket_owner(destination.expected_bucket_owner.clone())
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(aws_sdk_s3::error::SdkError::ServiceError(service))
                if service.err().is_no_such_key() || service.raw().status().as_u16() == 404 =>
            {
                return Ok(None);
            }
            Err(err) => return Err(s3_sink_error("GetObject (commit marker)", &uri, &err)),
        };
        let body = output.body.collect().await.map_err(|err| {
            SinkError::transient(format!("reading the commit marker {uri} failed: {err}"))
        })?;
        let marker: CommitMarker = serde_json::from_slice(&body.into_bytes()).map_err(|err| {
            SinkError::permanent(format!("the commit marker {uri} does not parse: {err}"))
        })?;
        Ok(Some(CommitDetails {
            location: marker_location(&marker, &uri),
            rows: Some(marker.rows),
            committed_at: Some(marker.committed_at),
            contract: marker.contract,
        }))
    }
}

/// The objects a marker names, as `s3://` URIs (the first few), else the
/// marker itself.
fn marker_location(marker: &CommitMarker, marker_uri: &str) -> String {
    const SHOWN: usize = 5;
    let mut shown: Vec<String> = marker
        .objects
        .iter()
        .take(SHOWN)
        .map(|object| format!("s3://{}/{}", marker.bucket, object.key))
        .collect();
    if shown.is_empty() {
        return format!("{marker_uri} (no objects)");
    }
    if marker.objects.len() > SHOWN {
        shown.push(format!("and {} more", marker.objects.len() - SHOWN));
    }
    shown.join(", ")
}

/// A HeadObject answered 404: a HEAD response has no body, so no error
/// code tells a missing key from a missing bucket; either way nothing of
/// this version was committed there.
fn is_not_found(
    err: &aws_sdk_s3::error::SdkError<
        aws_sdk_s3::operation::head_object::HeadObjectError,
        aws_sdk_s3::config::http::HttpResponse,
    >,
) -> bool {
    match err {
        aws_sdk_s3::error::SdkError::ServiceError(service) => {
            service.err().is_not_found() || service.raw().status().as_u16() == 404
        }
        _ => false,
    }
}

/// One destination object being written.
struct PartitionOutput {
    /// Encodes into memory; each closed row group moves on to `upload`.
    encoder: ParquetEncoder<Vec<u8>>,
    upload: ObjectUpload,
    /// `s3://bucket/key` of the object, for messages.
    uri: String,
    rows: u64,
}

/// Every destination object of one source object version.
struct PartitionOutputs {
    settings: Arc<Settings>,
    partitions: partition::BoundTemplate,
    /// Written last at commit (see [`marker_key`]).
    marker_key: String,
    lineage: Lineage,
    schema: SchemaRef,
    properties: WriterProperties,
    /// In first-seen order; dropping them aborts their uploads.
    open: Vec<PartitionOutput>,
    index_of_path: HashMap<String, usize>,
    rows: u64,
    /// The route's contract outcome, as JSON, for every object's footer.
    contract: Option<String>,
}

impl PartitionOutputs {
    /// The output for `path`, opened on first use.
    fn partition(&mut self, path: String) -> Result<&mut PartitionOutput, SinkError> {
        if let Some(&index) = self.index_of_path.get(&path) {
            return Ok(&mut self.open[index]);
        }
        if self.open.len() >= self.settings.max_open_partitions {
            return Err(SinkError::permanent(format!(
                "s3://{}/{} has rows for more than {} partitions (max_open_partitions); \
                 the next would be `{path}`",
                self.lineage.bucket, self.lineage.key, self.settings.max_open_partitions
            )));
        }
        let key = object_key(&self.settings.prefix, &path, &self.lineage);
        if key.len() > MAX_KEY_BYTES {
            return Err(SinkError::permanent(format!(
                "destination key for partition `{path}` is {} bytes, longer than S3's {MAX_KEY_BYTES}",
                key.len()
            )));
        }
        let uri = format!("s3://{}/{key}", self.settings.destination.bucket);
        let upload = ObjectUpload::new(
            Arc::clone(&self.settings.destination),
            key,
            self.settings.part_size_bytes,
        );
        let encoder = ParquetEncoder::try_new(
            Vec::new(),
            Arc::clone(&self.schema),
            self.properties.clone(),
            self.settings.row_group_bytes,
        )
        .map_err(|err| SinkError::permanent(format!("cannot start a Parquet writer: {err}")))?;
        self.open.push(PartitionOutput {
            encoder,
            upload,
            uri,
            rows: 0,
        });
        self.index_of_path.insert(path, self.open.len() - 1);
        Ok(self.open.last_mut().expect("just pushed"))
    }
}

impl PartitionOutput {
    /// Moves what the encoder has written (closed row groups, the footer)
    /// into the upload, which sends it in parts as they fill.
    async fn upload_encoded(&mut self) -> Result<(), SinkError> {
        let encoded = std::mem::take(self.encoder.inner_mut());
        if encoded.is_empty() {
            return Ok(());
        }
        self.upload
            .write(bytes::Bytes::from(encoded))
            .await
            .map_err(|err| parquet_sink_error(&self.uri, err))
    }
}

/// Recovers the [`SinkError`] our upload returned through parquet's error
/// (it keeps its transient/permanent class); any other Parquet error is an
/// encoding failure about this data, hence permanent.
fn parquet_sink_error(uri: &str, err: ParquetError) -> SinkError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(current) = cause {
        if let Some(sink_error) = current.downcast_ref::<SinkError>() {
            return SinkError {
                detail: sink_error.detail.clone(),
                class: sink_error.class.clone(),
            };
        }
        cause = current.source();
    }
    SinkError::permanent(format!("cannot encode Parquet for {uri}: {err}"))
}

impl PartitionOutputs {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError> {
        for (path, rows) in self.partitions.split(batch)? {
            let output = self.partition(path)?;
            output
                .encoder
                .write(&rows)
                .map_err(|err| parquet_sink_error(&output.uri, err))?;
            output.upload_encoded().await?;
            output.rows += rows.num_rows() as u64;
            self.rows += rows.num_rows() as u64;
        }
        Ok(())
    }

    async fn commit(mut self) -> Result<CommitReceipt, SinkError> {
        // First write every footer and last part, then make the objects
        // visible: a failure in the first phase publishes nothing.
        let mut uploads = Vec::with_capacity(self.open.len());
        for mut output in std::mem::take(&mut self.open) {
            if let Some(contract) = &self.contract {
                output
                    .encoder
                    .append_key_value_metadata(parquet::file::metadata::KeyValue::new(
                        super::parquet_dir::META_CONTRACT.into(),
                        contract.clone(),
                    ));
            }
            output
                .encoder
                .finish()
                .map_err(|err| parquet_sink_error(&output.uri, err))?;
            output.upload_encoded().await?;
            output
                .upload
                .complete()
                .await
                .map_err(|err| parquet_sink_error(&output.uri, err))?;
            uploads.push((output.upload, output.rows));
        }
        let mut location = String::new();
        for (upload, rows) in &mut uploads {
            let parts = upload.parts_uploaded();
            upload.publish().await?;
            tracing::debug!(
                key = upload.key(),
                rows = *rows,
                parts,
                "s3_parquet object published"
            );
        }
        // Last: every object is visible now, and the marker says so.
        let marker = CommitMarker {
            format_version: MARKER_FORMAT_VERSION,
            source: MarkerSource::new(&self.lineage),
            sink: self.settings.name.clone(),
            bucket: self.settings.destination.bucket.clone(),
            objects: uploads
                .iter()
                .map(|(upload, rows)| MarkerObject {
                    key: upload.key().to_owned(),
                    rows: *rows,
                })
                .collect(),
            rows: self.rows,
            committed_at: chrono::Utc::now(),
            worker_version: env!("CARGO_PKG_VERSION").to_owned(),
            contract: self
                .contract
                .as_deref()
                .and_then(|json| serde_json::from_str(json).ok()),
        };
        self.settings.put_marker(&self.marker_key, &marker).await?;
        if let Some((first, _)) = uploads.first() {
            location = first.uri();
            if uploads.len() > 1 {
                location.push_str(&format!(" and {} more objects", uploads.len() - 1));
            }
        }
        Ok(CommitReceipt {
            location,
            rows: self.rows,
            already_committed: false,
        })
    }
}

/// The sink's writer. Parquet encoding (and compression) is CPU work
/// (spread over the CPU pool by [`ParquetEncoder`]), so each call runs on
/// a blocking thread that drives the future with the runtime's handle, as
/// the Parquet decoder does; the S3 calls still use the runtime's I/O
/// driver.
struct S3ParquetWriter {
    /// `None` while a blocking task holds the outputs, or after a failed
    /// task (the outputs were dropped there, aborting their uploads).
    outputs: Option<PartitionOutputs>,
}

/// Runs `work` to completion on a blocking thread.
async fn off_runtime<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, SinkError> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(work))
        .await
        .map_err(|err| SinkError::transient(format!("s3_parquet writer task failed: {err}")))
}

#[async_trait]
impl SinkWriter for S3ParquetWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError> {
        let mut outputs = self
            .outputs
            .take()
            .ok_or_else(|| SinkError::transient("s3_parquet writer failed earlier"))?;
        let (outputs, result) = off_runtime(async move {
            let result = outputs.write(batch).await;
            (outputs, result)
        })
        .await?;
        self.outputs = Some(outputs);
        result
    }

    fn record_contract(&mut self, outcome: &crate::contract::ContractOutcome) {
        if let Some(outputs) = self.outputs.as_mut() {
            outputs.contract = Some(outcome.to_json());
        }
    }

    async fn commit(mut self: Box<Self>) -> Result<CommitReceipt, SinkError> {
        let outputs = self
            .outputs
            .take()
            .ok_or_else(|| SinkError::transient("s3_parquet writer failed earlier"))?;
        off_runtime(outputs.commit()).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lineage() -> Lineage {
        Lineage {
            bucket: "vendor".into(),
            key: "in/a b.csv".into(),
            version_id: Some("v1".into()),
            etag: Some("e".into()),
            size: 3,
            event_time: None,
            route: "r".into(),
        }
    }

    #[test]
    fn object_keys_join_prefix_partition_and_parquet_dirs_file_name() {
        let key = object_key("lake", "dt=2026-11-27", &lineage());
        let file_name = output_path(Path::new(""), &lineage())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(key, format!("lake/dt=2026-11-27/{file_name}"));
        assert!(file_name.starts_with("in_a_b.csv-") && file_name.ends_with(".parquet"));
        assert_eq!(object_key("", "", &lineage()), file_name);
        let other_version = Lineage {
            version_id: Some("v2".into()),
            ..lineage()
        };
        assert_ne!(object_key("", "", &other_version), file_name);
    }

    #[test]
    fn marker_keys_depend_on_the_version_only_and_sit_under_the_prefix() {
        let key = marker_key("lake/v1", &lineage());
        let parquet_name = object_key("", "", &lineage());
        let stem = parquet_name.strip_suffix(".parquet").unwrap();
        assert_eq!(key, format!("lake/v1/_s3_ingest/commits/{stem}.json"));
        assert_eq!(
            marker_key("", &lineage()),
            format!("_s3_ingest/commits/{stem}.json")
        );
        // Size, event time and route are not part of it.
        let asked = Lineage {
            size: 0,
            event_time: Some(chrono::Utc::now()),
            route: "other".into(),
            ..lineage()
        };
        assert_eq!(marker_key("lake/v1", &asked), key);
        let other_version = Lineage {
            version_id: Some("v2".into()),
            ..lineage()
        };
        assert_ne!(marker_key("lake/v1", &other_version), key);
        // A readable key ending in something like an extension keeps it.
        let dotted = Lineage {
            key: "in/file.csv.gz".into(),
            ..lineage()
        };
        assert!(
            marker_key("p", &dotted).starts_with("p/_s3_ingest/commits/in_file.csv.gz-"),
            "{}",
            marker_key("p", &dotted)
        );
    }

    #[test]
    fn marker_bodies_round_trip_as_json() {
        let marker = CommitMarker {
            format_version: MARKER_FORMAT_VERSION,
            source: MarkerSource::new(&lineage()),
            sink: "lake".into(),
            bucket: "dest".into(),
            objects: vec![MarkerObject {
                key: "lake/v1/x.parquet".into(),
                rows: 3,
            }],
            rows: 3,
            committed_at: chrono::Utc::now(),
            worker_version: "0.1.0".into(),
            contract: None,
        };
        let json: serde_json::Value = serde_json::to_value(&marker).unwrap();
        assert_eq!(json["source"]["version_identity"], "v1");
        assert_eq!(json["objects"][0]["key"], "lake/v1/x.parquet");
        assert_eq!(
            serde_json::from_value::<CommitMarker>(json).unwrap(),
            marker
        );
    }

    #[test]
    fn upload_errors_keep_their_class_through_parquets_error() {
        // Parquet's writers may wrap our upload's error more than once:
        // External(External(SinkError)).
        let wrapped = ParquetError::External(Box::new(ParquetError::External(Box::new(
            SinkError::unavailable("SlowDown", "S3 UploadPart on s3://lake/k failed: SlowDown"),
        ))));
        let error = parquet_sink_error("s3://lake/k", wrapped);
        assert_eq!(
            error.class,
            crate::sink::SinkFailure::Unavailable("SlowDown".into())
        );
        assert_eq!(
            error.detail,
            "S3 UploadPart on s3://lake/k failed: SlowDown"
        );

        let encoding = parquet_sink_error("s3://lake/k", ParquetError::General("bad".into()));
        assert!(!encoding.is_retryable());
        assert!(
            encoding
                .detail
                .contains("cannot encode Parquet for s3://lake/k")
        );
    }

    #[test]
    fn config_validation_names_the_field() {
        let config = |extra: &str| -> S3ParquetSinkConfig {
            toml::from_str(&format!("bucket = \"lake\"\n{extra}")).unwrap()
        };
        assert!(config("").validate().is_ok());
        for (extra, field) in [
            ("partition = \"x={nope}\"", "partition"),
            ("part_size_bytes = 1024", "part_size_bytes"),
            ("row_group_bytes = 0", "row_group_bytes"),
            ("max_open_partitions = 0", "max_open_partitions"),
            (
                "compression = \"lz4\"\ncompression_level = 3",
                "compression_level",
            ),
        ] {
            assert_eq!(config(extra).validate().unwrap_err().0, field, "{extra}");
        }
        let snappy = config("compression = \"snappy\"\nstatistics = \"none\"");
        assert_eq!(
            snappy.writer_settings().compression_for(3),
            parquet::basic::Compression::SNAPPY
        );
        let path_as_bucket: S3ParquetSinkConfig = toml::from_str("bucket = \"lake/x\"").unwrap();
        assert_eq!(path_as_bucket.validate().unwrap_err().0, "bucket");
    }
}
