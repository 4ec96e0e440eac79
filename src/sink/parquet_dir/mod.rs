//! `parquet_dir`: one Parquet file per source object version under a
//! directory, or, for a route with `group`, one per group of small objects
//! (`group.rs`, with its per-object ledger in `ledger.rs`).
//!
//! Atomic and idempotent: rows are written to a hidden temporary file in
//! the target directory, fsynced, then renamed to a name derived only from
//! (bucket, key, version id or ETag). A partial file is never visible under
//! a final name, and a redelivered object replaces its own file instead of
//! adding a second one.
//!
//! Temporary files: a `tempfile::NamedTempFile` owned by the Arrow writer,
//! so it is removed whenever the writer is dropped uncommitted, wherever
//! the writing future stopped (a lost lease, an expired grace, a sibling
//! sink failing), even while a blocking task holds the writer. Each live
//! writer holds an exclusive lock on its file; the sweep at a directory's
//! first use removes only unlocked ones (their process is gone: the kernel
//! drops a dead process's locks), so workers sharing a directory (EFS)
//! never remove each other's files in progress.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

mod group;
mod ledger;

use super::parquet_encoder::ParquetEncoder;
use super::parquet_settings::ParquetWriterSettings;
use super::{
    CommitDetails, CommitReceipt, CommitState, GroupWriter, Lineage, Sink, SinkError, SinkWriter,
};

/// Key-value metadata keys written into every file.
pub const META_SOURCE_BUCKET: &str = "s3_ingest.source_bucket";
pub const META_SOURCE_KEY: &str = "s3_ingest.source_key";
pub const META_SOURCE_ETAG: &str = "s3_ingest.source_etag";
pub const META_SOURCE_VERSION_ID: &str = "s3_ingest.source_version_id";
/// The route's contract outcome for the file, as JSON (`contract/`).
pub const META_CONTRACT: &str = "s3_ingest.contract";

/// An unlocked temporary file younger than this may belong to a writer
/// between creating its file and locking it: left alone.
const UNLOCKED_TEMP_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Where file locks are not supported, a temporary file untouched for this
/// long was left by a killed worker: no live writer pauses that long (a
/// message's lease ends after `max_lease_secs`, 2 h by default).
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Rows per output row group: bounds the writer's buffer (see `create`).
/// Public so the benchmarks encode their floor the same way.
pub const MAX_ROW_GROUP_ROWS: usize = 128 * 1024;

/// Encoded bytes per output row group unless the sink's `row_group_bytes`
/// says otherwise: rows alone do not bound the buffer when rows are wide.
pub const DEFAULT_ROW_GROUP_BYTES: usize = 32 << 20;

pub struct ParquetDirSink {
    name: String,
    root: PathBuf,
    /// Codec, dictionary and statistics (`sinks.NAME.compression`, ...).
    writer_settings: ParquetWriterSettings,
    /// A row group is flushed once its encoded size reaches this.
    row_group_bytes: usize,
    /// Bucket directories already swept of stale temporary files by this
    /// process (once each is enough).
    swept: Arc<Mutex<HashSet<PathBuf>>>,
}

impl ParquetDirSink {
    pub fn new(name: &str, root: PathBuf) -> ParquetDirSink {
        ParquetDirSink {
            name: name.to_owned(),
            root,
            writer_settings: ParquetWriterSettings::default(),
            row_group_bytes: DEFAULT_ROW_GROUP_BYTES,
            swept: Arc::default(),
        }
    }

    pub fn with_writer_settings(mut self, settings: ParquetWriterSettings) -> ParquetDirSink {
        self.writer_settings = settings;
        self
    }

    pub fn with_row_group_bytes(mut self, row_group_bytes: usize) -> ParquetDirSink {
        self.row_group_bytes = row_group_bytes;
        self
    }
}

/// Removes hidden `.*.tmp` files in `dir` that no live writer holds:
/// unlocked and older than `min_age`, or, where locks are not supported,
/// untouched for `stale_age`. Returns how many. Best effort: a file
/// another worker removes first, or one that cannot be read, is skipped.
fn sweep_abandoned_temp_files(
    dir: &Path,
    min_age: std::time::Duration,
    stale_age: std::time::Duration,
) -> usize {
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
        let Some(age) = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
        else {
            continue;
        };
        if age < min_age {
            continue;
        }
        let Ok(file) = File::open(entry.path()) else {
            continue;
        };
        let abandoned = match file.try_lock() {
            Ok(()) => true,
            Err(std::fs::TryLockError::WouldBlock) => false,
            Err(std::fs::TryLockError::Error(_)) => age >= stale_age,
        };
        if abandoned && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// 16 hex of sha256(bucket, key, version): names an object version's own
/// file and its claims in a group's ledger.
fn version_digest(lineage: &Lineage) -> String {
    let mut hasher = Sha256::new();
    for part in [
        lineage.bucket.as_str(),
        lineage.key.as_str(),
        lineage.version_identity(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// The directory of one source bucket's files.
fn bucket_dir(root: &Path, bucket: &str) -> PathBuf {
    root.join(bucket)
}

/// Sweeps `dir` of abandoned temporary files the first time this process
/// writes there.
fn sweep_once(swept: &Mutex<HashSet<PathBuf>>, dir: &Path) {
    let first_visit = swept
        .lock()
        .expect("sweep set is never poisoned")
        .insert(dir.to_path_buf());
    if first_visit {
        let removed = sweep_abandoned_temp_files(dir, UNLOCKED_TEMP_MIN_AGE, STALE_TEMP_AGE);
        if removed > 0 {
            tracing::info!(dir = %dir.display(), removed, "removed temporary files left by killed workers");
        }
    }
}

/// `<root>/<bucket>/<readable key>-<16 hex of sha256(bucket, key, version)>.parquet`.
/// The readable part is for people; the hash makes it unique and stable.
pub fn output_path(root: &Path, lineage: &Lineage) -> PathBuf {
    let digest = version_digest(lineage);
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
    bucket_dir(root, &lineage.bucket).join(format!(
        "{}-{digest}.parquet",
        readable.trim_start_matches('.')
    ))
}

fn io_error(action: &str, path: &Path, err: std::io::Error) -> SinkError {
    // Disk full, permissions, a missing mount: the directory is out, not
    // the file (one that fails while others land still counts; see
    // deployment.rs). The code is the I/O error's kind.
    SinkError::unavailable(
        format!("{:?}", err.kind()),
        format!("{action} {}: {err}", path.display()),
    )
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
        let lineage = lineage.clone();
        let swept = self.swept.clone();
        let row_group_bytes = self.row_group_bytes;
        let writer_settings = self.writer_settings;
        let writer = tokio::task::spawn_blocking(move || {
            let dir = final_path.parent().expect("output path has a directory");
            sweep_once(&swept, dir);
            ParquetDirWriter::create(
                final_path,
                lineage,
                schema,
                metadata,
                writer_settings,
                row_group_bytes,
            )
        })
        .await
        .map_err(|err| SinkError::transient(format!("writer task failed: {err}")))??;
        Ok(Box::new(writer))
    }

    /// The version's own file exists, or a group's claim of it names a
    /// file that exists: files appear under their final names only by a
    /// commit's rename, so existing means committed whole.
    async fn is_committed(&self, lineage: &Lineage) -> Result<CommitState, SinkError> {
        let path = output_path(&self.root, lineage);
        match tokio::fs::try_exists(&path).await {
            Ok(true) => return Ok(CommitState::Committed),
            Ok(false) => {}
            Err(err) => return Err(io_error("look for", &path, err)),
        }
        let bucket_dir = bucket_dir(&self.root, &lineage.bucket);
        let lineage = lineage.clone();
        let claim = tokio::task::spawn_blocking(move || {
            ledger::committed_claim(&bucket_dir, &lineage)
                .map_err(|err| io_error("read the ledger of", &bucket_dir, err))
        })
        .await
        .map_err(|err| SinkError::transient(format!("ledger task failed: {err}")))??;
        Ok(match claim {
            Some(_) => CommitState::Committed,
            None => CommitState::NotCommitted,
        })
    }

    async fn open_group(
        &self,
        bucket: &str,
        route: &str,
        schema: SchemaRef,
    ) -> Result<Box<dyn GroupWriter>, SinkError> {
        let dir = bucket_dir(&self.root, bucket);
        let route = route.to_owned();
        let swept = self.swept.clone();
        let (settings, row_group_bytes) = (self.writer_settings, self.row_group_bytes);
        let group = tokio::task::spawn_blocking(move || {
            sweep_once(&swept, &dir);
            group::ParquetDirGroup::create(dir, &route, schema, settings, row_group_bytes)
        })
        .await
        .map_err(|err| SinkError::transient(format!("writer task failed: {err}")))??;
        Ok(Box::new(group::GroupHandle {
            group: Some(group),
            root: self.root.clone(),
        }))
    }

    /// The version's file, its rows from the Parquet footer and its
    /// modification time (the commit's rename keeps the time the writer
    /// last wrote it, moments before).
    async fn commit_details(&self, lineage: &Lineage) -> Result<Option<CommitDetails>, SinkError> {
        let path = output_path(&self.root, lineage);
        let bucket_dir = bucket_dir(&self.root, &lineage.bucket);
        let lineage = lineage.clone();
        tokio::task::spawn_blocking(move || {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    // In a group: the group's file, the object's rows from
                    // its claim.
                    let claim = ledger::committed_claim(&bucket_dir, &lineage)
                        .map_err(|err| io_error("read the ledger of", &bucket_dir, err))?;
                    return Ok(claim.map(|claim| {
                        let output = bucket_dir.join(&claim.output);
                        let committed_at = std::fs::metadata(&output)
                            .and_then(|metadata| metadata.modified())
                            .ok()
                            .map(chrono::DateTime::<chrono::Utc>::from);
                        // A group file maps each source to its outcome.
                        let source = format!(
                            "s3://{}/{}#{}",
                            lineage.bucket,
                            lineage.key,
                            lineage.version_identity()
                        );
                        let contract = footer_value(&output, "s3_ingest.contracts")
                            .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
                            .and_then(|contracts| contracts.get(&source).cloned());
                        CommitDetails {
                            location: output.display().to_string(),
                            rows: Some(claim.rows),
                            committed_at,
                            contract,
                        }
                    }));
                }
                Err(err) => return Err(io_error("open", &path, err)),
            };
            let committed_at = file
                .metadata()
                .and_then(|metadata| metadata.modified())
                .ok()
                .map(chrono::DateTime::<chrono::Utc>::from);
            // A footer that cannot be read leaves the rows unknown; the
            // file's presence alone says committed.
            let rows = parquet::file::reader::SerializedFileReader::new(file)
                .ok()
                .map(|reader| {
                    use parquet::file::reader::FileReader;
                    reader.metadata().file_metadata().num_rows()
                })
                .and_then(|rows| u64::try_from(rows).ok());
            let contract = footer_value(&path, META_CONTRACT)
                .and_then(|json| serde_json::from_str(&json).ok());
            Ok(Some(CommitDetails {
                location: path.display().to_string(),
                rows,
                committed_at,
                contract,
            }))
        })
        .await
        .map_err(|err| SinkError::transient(format!("reading a footer failed: {err}")))?
    }
}

/// One key-value entry of a Parquet file's footer, if the file and the
/// entry are there.
fn footer_value(path: &Path, key: &str) -> Option<String> {
    use parquet::file::reader::FileReader;
    let reader = parquet::file::reader::SerializedFileReader::new(File::open(path).ok()?).ok()?;
    reader
        .metadata()
        .file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|entry| entry.key == key)?
        .value
        .clone()
}

struct ParquetDirWriter {
    /// `None` once committed, or while a blocking task holds it. Dropping
    /// it removes the temporary file.
    writer: Option<ParquetEncoder<NamedTempFile>>,
    /// For messages only: the file belongs to the writer.
    temp_path: PathBuf,
    final_path: PathBuf,
    /// Looked up in the groups' ledger before the commit.
    lineage: Lineage,
    rows: u64,
}

impl ParquetDirWriter {
    fn create(
        final_path: PathBuf,
        lineage: Lineage,
        schema: SchemaRef,
        metadata: Vec<KeyValue>,
        writer_settings: ParquetWriterSettings,
        row_group_bytes: usize,
    ) -> Result<ParquetDirWriter, SinkError> {
        let dir = final_path.parent().expect("output path has a directory");
        std::fs::create_dir_all(dir).map_err(|err| io_error("create directory", dir, err))?;
        // Hidden and unique per attempt, in the same directory so the final
        // rename is atomic (same filesystem).
        let prefix = format!(".{}.", final_path.file_name().unwrap().to_string_lossy());
        let file = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|err| io_error("create a temporary file in", dir, err))?;
        let temp_path = file.path().to_owned();
        // Held until the writer is committed or dropped: the sweep of a
        // later worker tells a live writer's file from a dead one's by it.
        // Filesystems without locks fall back to the sweep's age rule.
        if let Err(err) = file.as_file().lock() {
            tracing::debug!(path = %temp_path.display(), error = %err, "cannot lock the temporary file");
        }
        let properties = writer_settings
            .apply(WriterProperties::builder(), &schema)
            // The writer holds a whole row group in memory before writing
            // it; the default (1M rows) can be ~100 MiB for wide rows. Rows
            // bound narrow data; `row_group_bytes` bounds wide rows.
            .set_max_row_group_row_count(Some(MAX_ROW_GROUP_ROWS))
            .set_key_value_metadata(Some(metadata))
            .build();
        let writer = ParquetEncoder::try_new(file, schema, properties, row_group_bytes)
            .map_err(|err| SinkError::permanent(format!("parquet writer: {err}")))?;
        Ok(ParquetDirWriter {
            writer: Some(writer),
            temp_path,
            final_path,
            lineage,
            rows: 0,
        })
    }

    /// Runs `work` with the encoder on a blocking thread: encoding and
    /// file I/O stay off the async runtime.
    async fn with_writer<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut ParquetEncoder<NamedTempFile>) -> Result<T, SinkError> + Send + 'static,
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

fn parquet_error(path: &Path, err: parquet::errors::ParquetError) -> SinkError {
    match err {
        // Our file's write failed: the directory's trouble, as above.
        parquet::errors::ParquetError::External(inner) => {
            let kind = inner
                .downcast_ref::<std::io::Error>()
                .map_or_else(|| "io".to_owned(), |err| format!("{:?}", err.kind()));
            SinkError::unavailable(kind, format!("write {}: {inner}", path.display()))
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

    fn record_contract(&mut self, outcome: &crate::contract::ContractOutcome) {
        if let Some(writer) = self.writer.as_mut() {
            writer
                .append_key_value_metadata(KeyValue::new(META_CONTRACT.into(), outcome.to_json()));
        }
    }

    async fn commit(mut self: Box<Self>) -> Result<CommitReceipt, SinkError> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| SinkError::permanent("writer already closed"))?;
        let temp_path = self.temp_path.clone();
        let final_path = self.final_path.clone();
        let lineage = self.lineage.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<(PathBuf, bool), SinkError> {
            let dir = final_path.parent().expect("output path has a directory");
            // Committed in a group already (it came before, to a worker
            // grouping its route): a second copy must not appear. The
            // temporary file is removed with the dropped writer.
            match ledger::holder(dir, &lineage)
                .map_err(|err| io_error("read the ledger of", dir, err))?
            {
                ledger::Holder::Committed(claim) => return Ok((dir.join(claim.output), true)),
                // A group being written holds it: whichever commits second
                // would add its rows again. Wait for that group.
                ledger::Holder::Live => {
                    return Err(SinkError::transient(format!(
                        "a group being written in {} holds this object; retrying once it has committed",
                        dir.display()
                    )));
                }
                ledger::Holder::Nobody => {}
            }
            let file = writer
                .into_inner()
                .map_err(|err| parquet_error(&temp_path, err))?;
            file.as_file()
                .sync_all()
                .map_err(|err| io_error("fsync", &temp_path, err))?;
            // Same version, same name: a replay replaces identical content.
            let already_committed = final_path.exists();
            file.persist(&final_path)
                .map_err(|err| io_error("rename into", &final_path, err.error))?;
            // The rename itself is durable only once the directory is synced.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|err| io_error("fsync directory", dir, err))?;
            Ok((final_path, already_committed))
        })
        .await
        .map_err(|err| SinkError::transient(format!("commit task failed: {err}")))?;
        // On an error the temporary file was dropped, and so removed.
        let (location, already_committed) = result?;
        Ok(CommitReceipt {
            location: location.display().to_string(),
            rows: self.rows,
            already_committed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use std::sync::Arc;

    pub(super) fn lineage(version: Option<&str>) -> Lineage {
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
    async fn row_groups_are_cut_by_encoded_bytes_as_well_as_rows() {
        // 8 batches of 10,000 random-ish i64 (about 80 KB each encoded):
        // far below 128 Ki rows, but each reaches the 64 KiB byte bound.
        let dir = tempfile::tempdir().unwrap();
        let sink =
            ParquetDirSink::new("lake", dir.path().to_owned()).with_row_group_bytes(64 * 1024);
        let lineage = lineage(Some("wide"));
        let mut writer = sink.open(&lineage, batch(vec![]).schema()).await.unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..8 {
            let values = (0..10_000)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as i64
                })
                .collect();
            writer.write(batch(values)).await.unwrap();
        }
        writer.commit().await.unwrap();
        let reader =
            SerializedFileReader::new(File::open(output_path(dir.path(), &lineage)).unwrap())
                .unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 80_000);
        assert_eq!(reader.metadata().num_row_groups(), 8);
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
    async fn the_configured_codec_and_statistics_reach_the_file() {
        use crate::sink::parquet_settings::{Codec, Statistics};
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetDirSink::new("lake", dir.path().to_owned()).with_writer_settings(
            ParquetWriterSettings {
                compression: Some(Codec::Snappy),
                statistics: Statistics::None,
                ..ParquetWriterSettings::default()
            },
        );
        let lineage = lineage(Some("v1"));
        let mut writer = sink.open(&lineage, batch(vec![]).schema()).await.unwrap();
        writer.write(batch(vec![1, 2, 3])).await.unwrap();
        writer.commit().await.unwrap();
        let reader =
            SerializedFileReader::new(File::open(output_path(dir.path(), &lineage)).unwrap())
                .unwrap();
        let column = reader.metadata().row_group(0).column(0);
        assert_eq!(column.compression(), parquet::basic::Compression::SNAPPY);
        assert!(column.statistics().is_none());
    }

    #[tokio::test]
    async fn is_committed_once_the_versions_file_is_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetDirSink::new("lake", dir.path().to_owned());
        let v1 = lineage(Some("v1"));
        assert_eq!(
            sink.is_committed(&v1).await.unwrap(),
            CommitState::NotCommitted,
            "nothing before the first write, not even the bucket directory"
        );
        let mut writer = sink.open(&v1, batch(vec![]).schema()).await.unwrap();
        writer.write(batch(vec![1, 2])).await.unwrap();
        assert_eq!(
            sink.is_committed(&v1).await.unwrap(),
            CommitState::NotCommitted,
            "a temporary file is not a commit"
        );
        writer.commit().await.unwrap();
        assert_eq!(
            sink.is_committed(&v1).await.unwrap(),
            CommitState::Committed
        );

        // Only bucket, key and version identity count: the rest may be
        // placeholders.
        let asked = Lineage {
            size: 0,
            event_time: Some(chrono::Utc::now()),
            route: String::new(),
            ..lineage(Some("v1"))
        };
        assert_eq!(
            sink.is_committed(&asked).await.unwrap(),
            CommitState::Committed
        );
        // Another version of the same key, or the same ETag without the
        // version id, is another object version.
        for other in [lineage(Some("v2")), lineage(None)] {
            assert_eq!(
                sink.is_committed(&other).await.unwrap(),
                CommitState::NotCommitted,
                "{other:?}"
            );
        }
    }

    #[tokio::test]
    async fn commit_details_name_the_file_its_rows_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetDirSink::new("lake", dir.path().to_owned());
        let v1 = lineage(Some("v1"));
        assert_eq!(sink.commit_details(&v1).await.unwrap(), None);
        let before = chrono::Utc::now() - chrono::Duration::seconds(5);
        let mut writer = sink.open(&v1, batch(vec![]).schema()).await.unwrap();
        writer.write(batch(vec![1, 2, 3])).await.unwrap();
        assert_eq!(sink.commit_details(&v1).await.unwrap(), None);
        writer.commit().await.unwrap();
        let details = sink.commit_details(&v1).await.unwrap().expect("committed");
        assert_eq!(
            details.location,
            output_path(dir.path(), &v1).display().to_string()
        );
        assert_eq!(details.rows, Some(3));
        assert!(details.committed_at.is_some_and(|t| t >= before));
    }

    #[tokio::test]
    async fn a_dropped_writer_is_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetDirSink::new("lake", dir.path().to_owned());
        let mut writer = sink
            .open(&lineage(None), batch(vec![]).schema())
            .await
            .unwrap();
        writer.write(batch(vec![1])).await.unwrap();
        drop(writer);
        assert_eq!(
            sink.is_committed(&lineage(None)).await.unwrap(),
            CommitState::NotCommitted
        );
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

    fn age(path: &Path, by: Duration) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::now() - by)
            .unwrap();
    }

    #[tokio::test]
    async fn only_temporary_files_no_live_writer_holds_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        // A live writer (this process) in the shared directory, its file
        // made to look old: the lock, not the age, keeps it.
        let live = ParquetDirWriter::create(
            dir.path().join("live.parquet"),
            tests::lineage(None),
            Arc::new(arrow::datatypes::Schema::empty()),
            Vec::new(),
            ParquetWriterSettings::default(),
            DEFAULT_ROW_GROUP_BYTES,
        )
        .unwrap();
        age(&live.temp_path, Duration::from_secs(25 * 3600));
        // Left by a killed worker: nobody holds a lock on it.
        let dead = dir.path().join(".a.parquet.x1y2.tmp");
        let just_created = dir.path().join(".b.parquet.z3w4.tmp");
        let committed = dir.path().join("c.parquet");
        for path in [&dead, &just_created, &committed] {
            std::fs::write(path, b"x").unwrap();
        }
        for path in [&dead, &committed] {
            age(path, Duration::from_secs(120));
        }
        let removed = sweep_abandoned_temp_files(dir.path(), UNLOCKED_TEMP_MIN_AGE, STALE_TEMP_AGE);
        assert_eq!(removed, 1);
        assert!(!dead.exists());
        assert!(live.temp_path.exists(), "a live writer's file is kept");
        assert!(
            just_created.exists(),
            "a file too young to be locked yet is kept"
        );
        assert!(committed.exists(), "committed files are never touched");
    }

    #[tokio::test]
    async fn a_write_dropped_mid_way_leaves_no_temporary_file() {
        use arrow::array::Int64Array;
        use arrow::datatypes::{DataType, Field, Schema};
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetDirSink::new("lake", dir.path().to_owned());
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let lineage = Lineage {
            bucket: "b".into(),
            key: "k.csv".into(),
            version_id: None,
            etag: Some("e".into()),
            size: 1,
            event_time: None,
            route: "r".into(),
        };
        let mut writer = sink.open(&lineage, schema.clone()).await.unwrap();
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(0..2_000_000))],
        )
        .unwrap();
        // Start the write (its blocking task takes the Arrow writer), then
        // give it up, as a lost lease or a failing sibling sink does.
        {
            let write = writer.write(batch);
            tokio::pin!(write);
            let polled = futures::poll!(write.as_mut());
            assert!(polled.is_pending(), "the write finished at its first poll");
        }
        drop(writer);
        let temp_files = || {
            std::fs::read_dir(dir.path().join("b"))
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                .count()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while temp_files() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the temporary file outlived its writer"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
