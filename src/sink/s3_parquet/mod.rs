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
use parquet::arrow::AsyncArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::parquet_dir::{lineage_metadata, output_path};
use super::{CommitReceipt, Lineage, Sink, SinkContext, SinkError, SinkWriter};
pub use partition::{DEFAULT_PARTITION, PartitionTemplate};
use upload::{Destination, ObjectUpload};

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
    /// Errors are (field relative to `sinks.NAME.`, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
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

/// Settings shared by every writer of one sink.
struct Settings {
    destination: Arc<Destination>,
    prefix: String,
    template: PartitionTemplate,
    part_size_bytes: usize,
    row_group_bytes: usize,
    max_open_partitions: usize,
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
        let properties = crate::sink::parquet_dir::for_width(WriterProperties::builder(), &schema)
            .set_key_value_metadata(Some(lineage_metadata(lineage)))
            .build();
        let mut outputs = PartitionOutputs {
            settings: Arc::clone(&self.settings),
            partitions: self.settings.template.bind(lineage),
            lineage: lineage.clone(),
            schema,
            properties,
            open: Vec::new(),
            index_of_path: HashMap::new(),
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
}

/// One destination object being written.
struct PartitionOutput {
    writer: AsyncArrowWriter<ObjectUpload>,
    /// `s3://bucket/key` of the object, for messages.
    uri: String,
    rows: u64,
}

/// Every destination object of one source object version.
struct PartitionOutputs {
    settings: Arc<Settings>,
    partitions: partition::BoundTemplate,
    lineage: Lineage,
    schema: SchemaRef,
    properties: WriterProperties,
    /// In first-seen order; dropping them aborts their uploads.
    open: Vec<PartitionOutput>,
    index_of_path: HashMap<String, usize>,
    rows: u64,
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
        let writer = AsyncArrowWriter::try_new(
            upload,
            Arc::clone(&self.schema),
            Some(self.properties.clone()),
        )
        .map_err(|err| SinkError::permanent(format!("cannot start a Parquet writer: {err}")))?;
        self.open.push(PartitionOutput {
            writer,
            uri,
            rows: 0,
        });
        self.index_of_path.insert(path, self.open.len() - 1);
        Ok(self.open.last_mut().expect("just pushed"))
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
        let row_group_bytes = self.settings.row_group_bytes;
        for (path, rows) in self.partitions.split(batch)? {
            let output = self.partition(path)?;
            let uri = output.uri.clone();
            output
                .writer
                .write(&rows)
                .await
                .map_err(|err| parquet_sink_error(&uri, err))?;
            // Flushing by encoded size bounds the writer's buffer even for
            // wide rows; the flushed row group goes into the upload buffer.
            if output.writer.in_progress_size() >= row_group_bytes {
                output
                    .writer
                    .flush()
                    .await
                    .map_err(|err| parquet_sink_error(&uri, err))?;
            }
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
            let uri = output.uri.clone();
            output
                .writer
                .finish()
                .await
                .map_err(|err| parquet_sink_error(&uri, err))?;
            uploads.push((output.writer.into_inner(), output.rows));
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

/// The sink's writer. Parquet encoding (and zstd) is CPU work that happens
/// inside `AsyncArrowWriter::write`, so each call runs on a blocking
/// thread that drives the future with the runtime's handle, as the
/// Parquet decoder does; the S3 calls still use the runtime's I/O driver.
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
    fn upload_errors_keep_their_class_through_parquets_error() {
        // AsyncArrowWriter wraps our writer's error once more on row-group
        // writes: External(External(SinkError)).
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
        ] {
            assert_eq!(config(extra).validate().unwrap_err().0, field, "{extra}");
        }
        let path_as_bucket: S3ParquetSinkConfig = toml::from_str("bucket = \"lake/x\"").unwrap();
        assert_eq!(path_as_bucket.validate().unwrap_err().0, "bucket");
    }
}
