//! `parquet_dir`: one Parquet file per source object version under a
//! directory.
//!
//! Atomic and idempotent: rows are written to a hidden temporary file in
//! the target directory, fsynced, then renamed to a name derived only from
//! (bucket, key, version id or ETag). A partial file is never visible under
//! a final name, and a redelivered object replaces its own file instead of
//! adding a second one.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use super::{CommitReceipt, Lineage, Sink, SinkError, SinkWriter};

/// Key-value metadata keys written into every file.
pub const META_SOURCE_BUCKET: &str = "s3_ingest.source_bucket";
pub const META_SOURCE_KEY: &str = "s3_ingest.source_key";
pub const META_SOURCE_ETAG: &str = "s3_ingest.source_etag";
pub const META_SOURCE_VERSION_ID: &str = "s3_ingest.source_version_id";

/// A hidden temporary file untouched for this long was left by a worker
/// that was killed mid-write: no live writer pauses that long (a message's
/// lease ends after `max_lease_secs`, 2 h by default).
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Rows per output row group: bounds the writer's buffer (see `create`).
/// Public so the benchmarks encode their floor the same way.
pub const MAX_ROW_GROUP_ROWS: usize = 128 * 1024;

pub struct ParquetDirSink {
    name: String,
    root: PathBuf,
    /// Bucket directories already swept of stale temporary files by this
    /// process (once each is enough).
    swept: Arc<Mutex<HashSet<PathBuf>>>,
}

impl ParquetDirSink {
    pub fn new(name: &str, root: PathBuf) -> ParquetDirSink {
        ParquetDirSink {
            name: name.to_owned(),
            root,
            swept: Arc::default(),
        }
    }
}

/// Removes hidden `.*.tmp` files in `dir` not modified for `older_than`;
/// returns how many. Best effort: a file another worker removes first, or
/// one that cannot be read, is skipped.
fn sweep_stale_temp_files(dir: &Path, older_than: std::time::Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with('.') && name.ends_with(".tmp")) {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age >= older_than);
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// `<root>/<bucket>/<readable key>-<16 hex of sha256(bucket, key, version)>.parquet`.
/// The readable part is for people; the hash makes it unique and stable.
pub fn output_path(root: &Path, lineage: &Lineage) -> PathBuf {
    let mut hasher = Sha256::new();
    for part in [
        lineage.bucket.as_str(),
        lineage.key.as_str(),
        lineage.version_identity(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hex::encode(&hasher.finalize()[..8]);
    let readable: String = lineage
        .key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    root.join(&lineage.bucket).join(format!(
        "{}-{digest}.parquet",
        readable.trim_start_matches('.')
    ))
}

fn io_error(action: &str, path: &Path, err: std::io::Error) -> SinkError {
    // Disk full, permissions, a missing mount: all may clear, so retry.
    SinkError::transient(format!("{action} {}: {err}", path.display()))
}

/// The lineage as Parquet key-value metadata; every Parquet-writing sink
/// records the same keys.
pub(crate) fn lineage_metadata(lineage: &Lineage) -> Vec<KeyValue> {
    let mut metadata = vec![
        KeyValue::new(META_SOURCE_BUCKET.into(), lineage.bucket.clone()),
        KeyValue::new(META_SOURCE_KEY.into(), lineage.key.clone()),
        KeyValue::new("s3_ingest.source_size".into(), lineage.size.to_string()),
        KeyValue::new("s3_ingest.route".into(), lineage.route.clone()),
        KeyValue::new(
            "s3_ingest.worker_version".into(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ];
    if let Some(etag) = &lineage.etag {
        metadata.push(KeyValue::new(META_SOURCE_ETAG.into(), etag.clone()));
    }
    if let Some(version_id) = &lineage.version_id {
        metadata.push(KeyValue::new(
            META_SOURCE_VERSION_ID.into(),
            version_id.clone(),
        ));
    }
    if let Some(event_time) = &lineage.event_time {
        metadata.push(KeyValue::new(
            "s3_ingest.source_event_time".into(),
            event_time.to_rfc3339(),
        ));
    }
    metadata
}

#[async_trait]
impl Sink for ParquetDirSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn open(
        &self,
        lineage: &Lineage,
        schema: SchemaRef,
    ) -> Result<Box<dyn SinkWriter>, SinkError> {
        let final_path = output_path(&self.root, lineage);
        let metadata = lineage_metadata(lineage);
        let swept = self.swept.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let dir = final_path.parent().expect("output path has a directory");
            let first_visit = swept
                .lock()
                .expect("sweep set is never poisoned")
                .insert(dir.to_path_buf());
            if first_visit {
                let removed = sweep_stale_temp_files(dir, STALE_TEMP_AGE);
                if removed > 0 {
                    tracing::info!(dir = %dir.display(), removed, "removed stale temporary files left by killed workers");
                }
            }
            ParquetDirWriter::create(final_path, schema, metadata)
        })
        .await
        .map_err(|err| SinkError::transient(format!("writer task failed: {err}")))??;
        Ok(Box::new(writer))
    }
}

struct ParquetDirWriter {
    /// `None` once committed, or while a blocking task holds it.
    writer: Option<ArrowWriter<File>>,
    temp_path: PathBuf,
    final_path: PathBuf,
    rows: u64,
}

impl ParquetDirWriter {
    fn create(
        final_path: PathBuf,
        schema: SchemaRef,
        metadata: Vec<KeyValue>,
    ) -> Result<ParquetDirWriter, SinkError> {
        let dir = final_path.parent().expect("output path has a directory");
        std::fs::create_dir_all(dir).map_err(|err| io_error("create directory", dir, err))?;
        // Hidden and unique per attempt, in the same directory so the final
        // rename is atomic (same filesystem).
        let temp_path = dir.join(format!(
            ".{}.{}-{}.tmp",
            final_path.file_name().unwrap().to_string_lossy(),
            std::process::id(),
            uuid_like()
        ));
        let file = File::create(&temp_path).map_err(|err| io_error("create", &temp_path, err))?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            // The writer holds a whole row group in memory before writing
            // it; the default (1M rows) can be ~100 MiB for wide rows.
            .set_max_row_group_row_count(Some(MAX_ROW_GROUP_ROWS))
            .set_key_value_metadata(Some(metadata))
            .build();
        let writer = ArrowWriter::try_new(file, schema, Some(properties))
            .map_err(|err| SinkError::permanent(format!("parquet writer: {err}")))?;
        Ok(ParquetDirWriter {
            writer: Some(writer),
            temp_path,
            final_path,
            rows: 0,
        })
    }

    /// Runs `work` with the Arrow writer on a blocking thread: encoding and
    /// file I/O stay off the async runtime.
    async fn with_writer<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut ArrowWriter<File>) -> Result<T, SinkError> + Send + 'static,
    ) -> Result<T, SinkError> {
        let mut writer = self
            .writer
            .take()
            .ok_or_else(|| SinkError::permanent("writer already closed"))?;
        let (writer, result) = tokio::task::spawn_blocking(move || {
            let result = work(&mut writer);
            (writer, result)
        })
        .await
        .map_err(|err| SinkError::transient(format!("writer task failed: {err}")))?;
        self.writer = Some(writer);
        result
    }
}

/// A per-attempt suffix; only needs to differ between concurrent writers.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn parquet_error(path: &Path, err: parquet::errors::ParquetError) -> SinkError {
    match err {
        parquet::errors::ParquetError::External(inner) => {
            SinkError::transient(format!("write {}: {inner}", path.display()))
        }
        other => SinkError::permanent(format!("encode {}: {other}", path.display())),
    }
}

#[async_trait]
impl SinkWriter for ParquetDirWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError> {
        let rows = batch.num_rows() as u64;
        let path = self.temp_path.clone();
        self.with_writer(move |writer| {
            writer
                .write(&batch)
                .map_err(|err| parquet_error(&path, err))
        })
        .await?;
        self.rows += rows;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<CommitReceipt, SinkError> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| SinkError::permanent("writer already closed"))?;
        let temp_path = self.temp_path.clone();
        let final_path = self.final_path.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<bool, SinkError> {
            let file = writer
                .into_inner()
                .map_err(|err| parquet_error(&temp_path, err))?;
            file.sync_all()
                .map_err(|err| io_error("fsync", &temp_path, err))?;
            drop(file);
            // Same version, same name: a replay replaces identical content.
            let already_committed = final_path.exists();
            std::fs::rename(&temp_path, &final_path)
                .map_err(|err| io_error("rename into", &final_path, err))?;
            // The rename itself is durable only once the directory is synced.
            let dir = final_path.parent().expect("output path has a directory");
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|err| io_error("fsync directory", dir, err))?;
            Ok(already_committed)
        })
        .await
        .map_err(|err| SinkError::transient(format!("commit task failed: {err}")))?;
        let already_committed = match result {
            Ok(already_committed) => already_committed,
            Err(err) => {
                let _ = std::fs::remove_file(&self.temp_path);
                return Err(err);
            }
        };
        Ok(CommitReceipt {
            location: self.final_path.display().to_string(),
            rows: self.rows,
            already_committed,
        })
    }
}

impl Drop for ParquetDirWriter {
    /// An uncommitted writer removes its temporary file: abandoned attempts
    /// leave nothing behind.
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use std::sync::Arc;

    fn lineage(version: Option<&str>) -> Lineage {
        Lineage {
            bucket: "vendor".into(),
            key: "in/a b+c é.csv".into(),
            version_id: version.map(Into::into),
            etag: Some("abc123".into()),
            size: 42,
            event_time: None,
            route: "r".into(),
        }
    }

    fn batch(values: Vec<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values))]).unwrap()
    }

    #[test]
    fn output_path_is_deterministic_and_safe() {
        let root = Path::new("/out");
        let a = output_path(root, &lineage(None));
        assert_eq!(a, output_path(root, &lineage(None)));
        assert_ne!(a, output_path(root, &lineage(Some("v2"))));
        assert!(a.starts_with("/out/vendor"));
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("in_a_b_c__.csv-"), "{name}");
        let evil = Lineage {
            key: "../../etc/passwd".into(),
            ..lineage(None)
        };
        assert!(output_path(root, &evil).starts_with("/out/vendor"));
    }

    #[tokio::test]
    async fn commit_is_atomic_and_carries_lineage() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetDirSink::new("lake", dir.path().to_owned());
        let lineage = lineage(Some("v1"));
        let mut writer = sink.open(&lineage, batch(vec![]).schema()).await.unwrap();
        writer.write(batch(vec![1, 2, 3])).await.unwrap();
        let final_path = output_path(dir.path(), &lineage);
        assert!(!final_path.exists(), "nothing visible before commit");
        let receipt = writer.commit().await.unwrap();
        assert_eq!(receipt.rows, 3);

        let reader = SerializedFileReader::new(File::open(&final_path).unwrap()).unwrap();
        let kv = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap();
        let get = |k: &str| kv.iter().find(|e| e.key == k).and_then(|e| e.value.clone());
        assert_eq!(get(META_SOURCE_KEY).as_deref(), Some("in/a b+c é.csv"));
        assert_eq!(get(META_SOURCE_ETAG).as_deref(), Some("abc123"));
        assert_eq!(get(META_SOURCE_VERSION_ID).as_deref(), Some("v1"));
        assert_eq!(reader.metadata().file_metadata().num_rows(), 3);
    }

    #[tokio::test]
    async fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetDirSink::new("lake", dir.path().to_owned());
        let mut writer = sink
            .open(&lineage(None), batch(vec![]).schema())
            .await
            .unwrap();
        writer.write(batch(vec![1])).await.unwrap();
        drop(writer);
        let bucket_dir = dir.path().join("vendor");
        assert_eq!(std::fs::read_dir(bucket_dir).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn redelivery_replaces_instead_of_duplicating() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetDirSink::new("lake", dir.path().to_owned());
        for _ in 0..2 {
            let mut writer = sink
                .open(&lineage(None), batch(vec![]).schema())
                .await
                .unwrap();
            writer.write(batch(vec![1, 2])).await.unwrap();
            writer.commit().await.unwrap();
        }
        assert_eq!(
            std::fs::read_dir(dir.path().join("vendor"))
                .unwrap()
                .count(),
            1
        );
    }
}

#[cfg(test)]
mod sweep_tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn only_old_hidden_temporary_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let day_ago = SystemTime::now() - Duration::from_secs(25 * 3600);
        let old_temp = dir.path().join(".a.parquet.1-x.tmp");
        let fresh_temp = dir.path().join(".b.parquet.2-y.tmp");
        let old_data = dir.path().join("c.parquet");
        for path in [&old_temp, &fresh_temp, &old_data] {
            std::fs::write(path, b"x").unwrap();
        }
        for path in [&old_temp, &old_data] {
            File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(day_ago)
                .unwrap();
        }
        assert_eq!(sweep_stale_temp_files(dir.path(), STALE_TEMP_AGE), 1);
        assert!(!old_temp.exists());
        assert!(fresh_temp.exists(), "a live writer's file is kept");
        assert!(old_data.exists(), "committed files are never touched");
    }
}

#[cfg(test)]
mod empty_tests {
    use super::*;
    use arrow::datatypes::Schema;
    use std::sync::Arc;

    #[tokio::test]
    async fn an_empty_source_commits_a_zero_row_file() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetDirSink::new("lake", dir.path().to_owned());
        let lineage = Lineage {
            bucket: "b".into(),
            key: "empty.csv".into(),
            version_id: None,
            etag: Some("e".into()),
            size: 0,
            event_time: None,
            route: "r".into(),
        };
        let writer = sink
            .open(&lineage, Arc::new(Schema::empty()))
            .await
            .unwrap();
        let receipt = writer.commit().await.unwrap();
        assert_eq!(receipt.rows, 0);
        assert!(output_path(dir.path(), &lineage).exists());
    }
}
