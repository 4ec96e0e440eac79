//! `parquet_dir` groups: many small objects' rows in one file,
//! `<root>/<bucket>/group-<time>-<random>.parquet`.
//!
//! The commit, in order:
//! 1. while the group is open, each object is claimed in the ledger
//!    (`ledger.rs`) before its rows are encoded into the group's hidden,
//!    locked temporary file;
//! 2. the footer is written and the file fsynced; the claims and their
//!    directory are fsynced;
//! 3. the file is renamed to its final name, and the directory fsynced:
//!    the commit point. Every claim naming it now reads as committed.
//!
//! A crash before 3 leaves claims naming an output that never appears and
//! a temporary file nobody locks: the claims read as dead, the redelivered
//! objects claim again in another group, and the next writer's sweep
//! removes the file.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use chrono::Utc;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use tempfile::NamedTempFile;

use super::ledger::{self, Claim, Claimed};
use super::{MAX_ROW_GROUP_ROWS, io_error, output_path, parquet_error};
use crate::sink::parquet_encoder::ParquetEncoder;
use crate::sink::parquet_settings::ParquetWriterSettings;
use crate::sink::{CommitReceipt, GroupMember, GroupWriter, Joined, SinkError};

/// Where file locks are not supported, a claim is live for this long (a
/// group's age is at most 15 minutes; its commit takes seconds).
const UNLOCKED_CLAIM_LIFETIME: chrono::Duration = chrono::Duration::hours(1);

/// The most bytes of source names listed in a group file's footer
/// (`s3_ingest.sources`); past it, only the count is written (the ledger
/// still names every object's group).
const MAX_SOURCES_LIST_BYTES: usize = 256 << 10;

pub(super) struct ParquetDirGroup {
    /// `None` while a blocking task holds it. Dropping it removes the
    /// temporary file.
    encoder: Option<ParquetEncoder<NamedTempFile>>,
    bucket_dir: PathBuf,
    temp_name: String,
    output_name: String,
    /// The claims this group made (none: it has nothing to write).
    claims: Vec<PathBuf>,
    /// `s3://bucket/key#version` of each added object, for the footer.
    sources: Vec<String>,
    /// Each added object's contract outcome (routes with a contract), by
    /// its entry in `sources`, for the footer (`s3_ingest.contracts`).
    contracts: serde_json::Map<String, serde_json::Value>,
    rows: u64,
    output_bytes: u64,
}

impl ParquetDirGroup {
    /// Creates the group's temporary file (locked) in `bucket_dir`.
    pub(super) fn create(
        bucket_dir: PathBuf,
        route: &str,
        schema: SchemaRef,
        writer_settings: ParquetWriterSettings,
        row_group_bytes: usize,
    ) -> Result<ParquetDirGroup, SinkError> {
        ledger::create_ledger_dir(&bucket_dir)
            .map_err(|err| io_error("create directory", &bucket_dir, err))?;
        // The temporary file's name is unique in the directory (created
        // exclusively, 12 random characters); the output's is the same
        // without the dot and `.tmp`.
        let file = tempfile::Builder::new()
            .prefix(&format!(".group-{}-", Utc::now().format("%Y%m%dT%H%M%SZ")))
            .rand_bytes(12)
            .suffix(".parquet.tmp")
            .tempfile_in(&bucket_dir)
            .map_err(|err| io_error("create a temporary file in", &bucket_dir, err))?;
        let temp_name = file
            .path()
            .file_name()
            .expect("a temporary file has a name")
            .to_string_lossy()
            .into_owned();
        let output_name = temp_name
            .trim_start_matches('.')
            .trim_end_matches(".tmp")
            .to_owned();
        // The claims' liveness rests on this lock (see ledger.rs): a group
        // that cannot hold it must not claim anything. Where locks are not
        // supported at all, claims expire instead.
        match file.as_file().lock() {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::Unsupported => {
                tracing::debug!(path = %file.path().display(), error = %err, "cannot lock the group's temporary file; its claims expire instead");
            }
            Err(err) => return Err(io_error("lock", file.path(), err)),
        }
        let properties = writer_settings
            .apply(WriterProperties::builder(), &schema)
            .set_max_row_group_row_count(Some(MAX_ROW_GROUP_ROWS))
            .set_key_value_metadata(Some(vec![
                KeyValue::new("s3_ingest.route".into(), route.to_owned()),
                KeyValue::new(
                    "s3_ingest.worker_version".into(),
                    env!("CARGO_PKG_VERSION").to_string(),
                ),
            ]))
            .build();
        let encoder = ParquetEncoder::try_new(file, schema, properties, row_group_bytes)
            .map_err(|err| SinkError::permanent(format!("parquet writer: {err}")))?;
        Ok(ParquetDirGroup {
            encoder: Some(encoder),
            bucket_dir,
            temp_name,
            output_name,
            claims: Vec::new(),
            sources: Vec::new(),
            contracts: serde_json::Map::new(),
            rows: 0,
            output_bytes: 0,
        })
    }

    fn output_path(&self) -> PathBuf {
        self.bucket_dir.join(&self.output_name)
    }

    /// Claims `member` and encodes its rows (on a blocking thread).
    fn add_blocking(
        &mut self,
        encoder: &mut ParquetEncoder<NamedTempFile>,
        member: &GroupMember,
        root: &Path,
    ) -> Result<Joined, SinkError> {
        let lineage = &member.lineage;
        // Committed on its own before grouping was turned on.
        let own_file = output_path(root, lineage);
        if own_file.exists() {
            return Ok(Joined::AlreadyCommitted);
        }
        let now = Utc::now();
        let claim = Claim {
            output: self.output_name.clone(),
            temp: self.temp_name.clone(),
            bucket: lineage.bucket.clone(),
            key: lineage.key.clone(),
            version_id: lineage.version_id.clone(),
            etag: lineage.etag.clone(),
            rows: member.rows,
            claimed_at: now,
            expires_at: now + UNLOCKED_CLAIM_LIFETIME,
        };
        let ledger_dir = ledger::ledger_dir(&self.bucket_dir);
        match ledger::claim(&self.bucket_dir, lineage, &claim)
            .map_err(|err| io_error("claim an object in", &ledger_dir, err))?
        {
            Claimed::Ours(path) => self.claims.push(path),
            // Its first copy in this group commits it.
            Claimed::Committed(_) | Claimed::ThisGroup => return Ok(Joined::AlreadyCommitted),
            Claimed::Elsewhere => return Ok(Joined::ClaimedElsewhere),
        }
        let temp_path = self.bucket_dir.join(&self.temp_name);
        for batch in &member.batches {
            encoder
                .write(batch)
                .map_err(|err| parquet_error(&temp_path, err))?;
        }
        self.rows += member.rows;
        self.output_bytes = encoder.output_size();
        let source = format!(
            "s3://{}/{}#{}",
            lineage.bucket,
            lineage.key,
            lineage.version_identity()
        );
        if let Some(outcome) = &member.contract {
            self.contracts.insert(
                source.clone(),
                serde_json::to_value(outcome).expect("plain data"),
            );
        }
        self.sources.push(source);
        Ok(Joined::Added)
    }
}

/// The group writer as the pipeline sees it; `root` finds objects that
/// were committed one file each.
pub(super) struct GroupHandle {
    pub(super) group: Option<ParquetDirGroup>,
    pub(super) root: PathBuf,
}

#[async_trait]
impl GroupWriter for GroupHandle {
    async fn add(&mut self, member: &GroupMember) -> Result<Joined, SinkError> {
        let mut group = self
            .group
            .take()
            .ok_or_else(|| SinkError::permanent("group already closed"))?;
        let member = GroupMember {
            lineage: member.lineage.clone(),
            batches: member.batches.clone(),
            rows: member.rows,
            contract: member.contract.clone(),
        };
        let root = self.root.clone();
        let (group, joined) = tokio::task::spawn_blocking(move || {
            let mut encoder = group.encoder.take().expect("the encoder is home");
            let joined = group.add_blocking(&mut encoder, &member, &root);
            group.encoder = Some(encoder);
            (group, joined)
        })
        .await
        .map_err(|err| SinkError::transient(format!("group task failed: {err}")))?;
        self.group = Some(group);
        joined
    }

    fn output_bytes(&self) -> u64 {
        self.group.as_ref().map_or(0, |group| group.output_bytes)
    }

    async fn commit(mut self: Box<Self>) -> Result<CommitReceipt, SinkError> {
        let group = self
            .group
            .take()
            .ok_or_else(|| SinkError::permanent("group already closed"))?;
        tokio::task::spawn_blocking(move || commit_blocking(group))
            .await
            .map_err(|err| SinkError::transient(format!("commit task failed: {err}")))?
    }
}

fn commit_blocking(mut group: ParquetDirGroup) -> Result<CommitReceipt, SinkError> {
    let output = group.output_path();
    let mut encoder = group.encoder.take().expect("the encoder is home");
    if group.claims.is_empty() {
        // Every object was held already: nothing to write (dropping the
        // encoder removes the temporary file).
        return Ok(CommitReceipt {
            location: String::new(),
            rows: 0,
            already_committed: true,
        });
    }
    encoder.append_key_value_metadata(KeyValue::new(
        "s3_ingest.source_objects".into(),
        group.sources.len().to_string(),
    ));
    let sources = serde_json::to_string(&group.sources).expect("strings serialize");
    if sources.len() <= MAX_SOURCES_LIST_BYTES {
        encoder.append_key_value_metadata(KeyValue::new("s3_ingest.sources".into(), sources));
    }
    if !group.contracts.is_empty() {
        let contracts = serde_json::Value::Object(std::mem::take(&mut group.contracts)).to_string();
        if contracts.len() <= MAX_SOURCES_LIST_BYTES {
            encoder
                .append_key_value_metadata(KeyValue::new("s3_ingest.contracts".into(), contracts));
        }
    }
    let temp_path = group.bucket_dir.join(&group.temp_name);
    let file = encoder
        .into_inner()
        .map_err(|err| parquet_error(&temp_path, err))?;
    file.as_file()
        .sync_all()
        .map_err(|err| io_error("fsync", &temp_path, err))?;
    let ledger_dir = ledger::ledger_dir(&group.bucket_dir);
    ledger::sync_claims(&group.bucket_dir)
        .map_err(|err| io_error("fsync claims in", &ledger_dir, err))?;
    // The commit point. The lock on the file is held until `file` (now
    // the output) is closed, after the rename: a claim is never live and
    // committed at once, nor dead while it can still commit.
    let persisted = file
        .persist_noclobber(&output)
        .map_err(|err| io_error("rename into", &output, err.error))?;
    File::open(&group.bucket_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|err| io_error("fsync directory", &group.bucket_dir, err))?;
    drop(persisted);
    Ok(CommitReceipt {
        location: output.display().to_string(),
        rows: group.rows,
        already_committed: false,
    })
}
