//! Writing one object, or a group of small ones, as one Delta commit.
//!
//! The rows stream into Parquet files under the table (delta-rs'
//! `RecordBatchWriter`, which uploads as it goes); nothing is visible until
//! the commit adds those files to the log. The commit carries one
//! application transaction (`txn`) per source object, `s3-ingest:` + its
//! `s3://bucket/key#version`, and the objects' lineage in its commit info.
//! The log is then the ledger:
//!
//! - an object whose `txn` is already in the table is committed: its
//!   rows are not written again (checked before writing and again just
//!   before committing);
//! - two workers committing the same object race for the same next log
//!   version (written only if absent); the loser's conflict check finds the
//!   winner's `txn` for an object it also holds and fails with
//!   `ConcurrentTransaction`, so the object lands once. Appends of
//!   different objects do not conflict and are rebased onto each other.
//!
//! Files written for a commit that never happens (a crash, a lost race)
//! are referenced by no version: readers never see them and VACUUM
//! removes them.

use arrow::record_batch::RecordBatch;
use chrono::Utc;
use deltalake::DeltaTable;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use parquet::file::properties::WriterProperties;
use serde_json::json;
use url::Url;

use super::errors::{delta_error, is_concurrent_transaction};
use super::table::TableHandle;
use crate::contract::ContractOutcome;
use crate::sink::{Lineage, SinkError};

/// The most bytes of source lineage written into one commit's info; past
/// it only the count is (each object's `txn` is always written).
const MAX_SOURCES_BYTES: usize = 256 << 10;

/// The application transaction id that marks `lineage` as committed.
pub fn app_id(lineage: &Lineage) -> String {
    format!(
        "s3-ingest:s3://{}/{}#{}",
        lineage.bucket,
        lineage.key,
        lineage.version_identity()
    )
}

/// Whether `table`, at the version it was read at, holds `lineage`'s
/// transaction: the object version is committed.
pub async fn holds(table: &DeltaTable, url: &Url, lineage: &Lineage) -> Result<bool, SinkError> {
    let snapshot = table
        .snapshot()
        .map_err(|err| delta_error(url, "read", err))?;
    let version = snapshot
        .transaction_version(table.log_store().as_ref(), app_id(lineage))
        .await
        .map_err(|err| delta_error(url, "read the transactions of", err))?;
    Ok(version.is_some())
}

/// How the rows are encoded.
#[derive(Clone)]
pub struct FileSettings {
    pub writer_properties: WriterProperties,
    pub target_file_bytes: u64,
}

/// Rows being written towards one commit, and the objects they are from.
pub struct PendingCommit {
    writer: RecordBatchWriter,
    route: String,
    partition_by: Vec<String>,
    members: Vec<Member>,
    rows: u64,
}

/// One source object of a commit.
struct Member {
    lineage: Lineage,
    rows: u64,
    contract: Option<ContractOutcome>,
}

/// What a commit did.
pub enum Committed {
    /// A new table version holding every member.
    Version(u64),
    /// Every member was already in the table: nothing new was committed.
    AlreadyCommitted,
}

impl PendingCommit {
    pub fn new(
        table: &DeltaTable,
        url: &Url,
        route: &str,
        settings: &FileSettings,
    ) -> Result<PendingCommit, SinkError> {
        let writer = RecordBatchWriter::for_table(table)
            .map_err(|err| delta_error(url, "write to", err))?
            .with_writer_properties(settings.writer_properties.clone())
            .with_target_file_size(settings.target_file_bytes);
        let partition_by = table
            .snapshot()
            .map_err(|err| delta_error(url, "read", err))?
            .metadata()
            .partition_columns()
            .to_vec();
        Ok(PendingCommit {
            writer,
            route: route.to_owned(),
            partition_by,
            members: Vec::new(),
            rows: 0,
        })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Encoded bytes written so far (approximate), for a group's size
    /// threshold.
    pub fn output_bytes(&self) -> u64 {
        self.writer.buffer_len() as u64
    }

    pub async fn write(&mut self, url: &Url, batch: RecordBatch) -> Result<(), SinkError> {
        let rows = batch.num_rows() as u64;
        self.writer
            .write(batch)
            .await
            .map_err(|err| delta_error(url, "write rows to", err))?;
        self.rows += rows;
        Ok(())
    }

    /// Records that `lineage`'s `rows` are among the rows written, and
    /// what its route's contract made of it.
    pub fn add_member(&mut self, lineage: Lineage, rows: u64, contract: Option<ContractOutcome>) {
        self.members.push(Member {
            lineage,
            rows,
            contract,
        });
    }

    /// Finishes the files and commits them with every member's `txn`.
    pub async fn commit(mut self, table: &TableHandle) -> Result<Committed, SinkError> {
        let url = table.url().clone();
        let adds = self
            .writer
            .flush()
            .await
            .map_err(|err| delta_error(&url, "finish the files of", err))?;
        let latest = table.latest().await?.ok_or_else(|| {
            SinkError::transient(format!("delta table {url}: gone before the commit"))
        })?;
        // Committed by someone else since the rows were written: the
        // files just written stay unreferenced.
        let mut already = 0;
        for member in &self.members {
            if holds(&latest, &url, &member.lineage).await? {
                already += 1;
            }
        }
        if already > 0 {
            return self.raced(&url, already);
        }
        let now = Utc::now().timestamp_millis();
        let transactions = self
            .members
            .iter()
            .map(|member| Transaction::new_with_last_update(app_id(&member.lineage), 1, Some(now)))
            .collect();
        let properties = CommitProperties::default()
            .with_application_transactions(transactions)
            .with_metadata([("s3_ingest".to_owned(), self.lineage_info())]);
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: (!self.partition_by.is_empty()).then(|| self.partition_by.clone()),
            predicate: None,
        };
        let snapshot = latest
            .snapshot()
            .map_err(|err| delta_error(&url, "read", err))?;
        let committed = CommitBuilder::from(properties)
            .with_actions(adds.into_iter().map(Action::Add).collect())
            .build(Some(snapshot), latest.log_store(), operation)
            .await;
        match committed {
            Ok(finalized) => Ok(Committed::Version(finalized.version())),
            Err(err) if is_concurrent_transaction(&err) => self.raced(&url, 1),
            Err(err) => Err(delta_error(&url, "commit to", err)),
        }
    }

    /// Another commit holds `already` of the members. One object: it is
    /// in the table, done. A group: its files hold the others' rows too,
    /// so it cannot commit without them; its objects go back to the queue
    /// and their next delivery finds which are in.
    fn raced(self, url: &Url, already: usize) -> Result<Committed, SinkError> {
        if self.members.len() == 1 {
            return Ok(Committed::AlreadyCommitted);
        }
        Err(SinkError::transient(format!(
            "delta table {url}: {already} of the group's {} objects were committed by another writer meanwhile; the group is not committed and its objects are retried",
            self.members.len()
        )))
    }

    /// What the commit info says about where the rows came from.
    fn lineage_info(&self) -> serde_json::Value {
        let mut sources = Vec::new();
        let mut bytes = 0;
        for Member {
            lineage,
            rows,
            contract,
        } in &self.members
        {
            let mut source = json!({
                "bucket": lineage.bucket,
                "key": lineage.key,
                "version_id": lineage.version_id,
                "etag": lineage.etag,
                "rows": rows,
            });
            if let Some(contract) = contract {
                source["contract"] = serde_json::to_value(contract).expect("plain data");
            }
            bytes += source.to_string().len();
            if bytes > MAX_SOURCES_BYTES {
                break;
            }
            sources.push(source);
        }
        json!({
            "worker_version": env!("CARGO_PKG_VERSION"),
            "route": self.route,
            "rows": self.rows,
            "objects": self.members.len(),
            "sources": sources,
        })
    }
}

/// `lineage`'s entry in a commit info's `s3_ingest` sources (its rows,
/// its contract outcome), when the commit lists it.
pub fn find_source<'a>(
    info: &'a serde_json::Value,
    lineage: &Lineage,
) -> Option<&'a serde_json::Value> {
    info.get("sources")?.as_array()?.iter().find(|source| {
        source.get("bucket").and_then(|v| v.as_str()) == Some(lineage.bucket.as_str())
            && source.get("key").and_then(|v| v.as_str()) == Some(lineage.key.as_str())
            && source.get("version_id").and_then(|v| v.as_str()) == lineage.version_id.as_deref()
            && source.get("etag").and_then(|v| v.as_str()) == lineage.etag.as_deref()
            && source.get("rows").and_then(|v| v.as_u64()).is_some()
    })
}
