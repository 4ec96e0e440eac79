//! `delta`: rows appended to a Delta Lake table, on a local path or on S3,
//! exactly once per object version, with the table's own log as the
//! ledger (see `commit.rs`).
//!
//! The table is created from the first file's columns when it does not
//! exist (partitioned by `partition_by`); every later file's columns are
//! checked against the table's before anything is written, and a mismatch
//! is dead-lettered as `schema_error` naming the columns. `key_columns`
//! adds columns whose value comes from the object's key (a date in the
//! vendor's path), which can partition the table too.
//!
//! On S3 the commit protocol is S3's conditional write: each log version
//! is written only if absent (`If-None-Match: *`), so concurrent workers
//! need no lock table.

mod commit;
mod errors;
mod key_columns;
mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::TryStreamExt;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

pub use commit::app_id;
use commit::{Committed, FileSettings, PendingCommit, find_source, holds};
use errors::delta_error;
use key_columns::{KeyColumns, KeyValues};
use table::{TableHandle, fill_missing_columns};
pub use table::{storage_options, table_url};

use crate::contract::ContractOutcome;
use crate::sink::parquet_settings::ParquetWriterSettings;
use crate::sink::{
    CommitDetails, CommitReceipt, CommitState, GroupMember, GroupWriter, Joined, Lineage, Sink,
    SinkContext, SinkError, SinkWriter,
};

/// `[sinks.NAME]` with `type = "delta"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaSinkConfig {
    /// Where the table is: a local directory, or `s3://bucket/prefix`.
    pub table: String,
    /// The columns a new table is partitioned by, in order: file columns
    /// or `key_columns`. An existing table keeps its own partitioning.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Columns taken from the source key: column name → a regular
    /// expression whose one capture group is the value (null when the key
    /// does not match), e.g. `dt = 'dt=(\d{4}-\d{2}-\d{2})/'`.
    #[serde(default)]
    pub key_columns: BTreeMap<String, String>,
    /// A data file is finished, and the next one started, once it reaches
    /// about this many encoded bytes.
    #[serde(default = "default_target_file_bytes")]
    pub target_file_bytes: u64,
    /// Codec (`zstd`, `snappy`, `lz4`, `gzip`, `none`), its level,
    /// `dictionary` and `statistics`, as for the Parquet sinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<crate::sink::parquet_settings::Codec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    #[serde(default)]
    pub dictionary: crate::sink::parquet_settings::Dictionary,
    #[serde(default)]
    pub statistics: crate::sink::parquet_settings::Statistics,
}

fn default_target_file_bytes() -> u64 {
    128 << 20
}

/// The smallest `target_file_bytes`: below it a table fills with files
/// too small for readers to scan efficiently.
const MIN_TARGET_FILE_BYTES: u64 = 1 << 20;

impl DeltaSinkConfig {
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
        if self.table.trim().is_empty() {
            return Err(("table".into(), "must not be empty".into()));
        }
        table_url(&self.table).map_err(|message| ("table".to_owned(), message))?;
        KeyColumns::parse(&self.key_columns)
            .map_err(|(column, message)| (format!("key_columns.{column}"), message))?;
        let mut seen = BTreeSet::new();
        for column in &self.partition_by {
            if column.trim().is_empty() {
                return Err(("partition_by".into(), "names an empty column".into()));
            }
            if !seen.insert(column) {
                return Err(("partition_by".into(), format!("names `{column}` twice")));
            }
        }
        if self.target_file_bytes < MIN_TARGET_FILE_BYTES {
            return Err((
                "target_file_bytes".into(),
                format!(
                    "{} is below the minimum of {MIN_TARGET_FILE_BYTES} (1 MiB)",
                    self.target_file_bytes
                ),
            ));
        }
        Ok(())
    }
}

pub struct DeltaSink {
    name: String,
    /// Shared with the writers, which commit through it.
    table: Arc<TableHandle>,
    key_columns: KeyColumns,
    writer_settings: ParquetWriterSettings,
    target_file_bytes: u64,
    /// Routes whose new columns are added to the table (`add_columns`).
    add_columns_routes: BTreeSet<String>,
}

impl DeltaSink {
    pub fn new(
        name: &str,
        config: &DeltaSinkConfig,
        context: &SinkContext,
    ) -> Result<DeltaSink, SinkError> {
        let url = table_url(&config.table)
            .map_err(|message| SinkError::permanent(format!("sink `{name}`: table {message}")))?;
        let key_columns = KeyColumns::parse(&config.key_columns).map_err(|(column, message)| {
            SinkError::permanent(format!("sink `{name}`: key_columns.{column}: {message}"))
        })?;
        Ok(DeltaSink {
            name: name.to_owned(),
            table: Arc::new(TableHandle::new(
                url,
                storage_options(&context.aws),
                config.partition_by.clone(),
            )),
            key_columns,
            writer_settings: config.writer_settings(),
            target_file_bytes: config.target_file_bytes,
            add_columns_routes: context.add_columns_routes.clone(),
        })
    }

    /// The table's URL, for tests and logs.
    pub fn table_url(&self) -> &url::Url {
        self.table.url()
    }

    fn file_settings(&self, schema: &SchemaRef) -> FileSettings {
        FileSettings {
            writer_properties: self
                .writer_settings
                .apply(WriterProperties::builder(), schema)
                .build(),
            target_file_bytes: self.target_file_bytes,
        }
    }

    /// The table, ready for rows of `schema` (with the key columns): created
    /// when missing, checked when not; for a route that adds columns,
    /// given the file's new columns. Returns the schema rows are written
    /// with, and for a route that adds columns the table's, which each
    /// batch is filled up to.
    async fn table_for(
        &self,
        schema: &SchemaRef,
        route: &str,
    ) -> Result<(deltalake::DeltaTable, SchemaRef, Option<SchemaRef>), SinkError> {
        let schema = self.key_columns.extend_schema(schema)?;
        if self.add_columns_routes.contains(route) {
            let (table, table_schema) = self.table.for_schema_adding_columns(&schema).await?;
            return Ok((table, schema, Some(table_schema)));
        }
        let table = self.table.for_schema(&schema).await?;
        Ok((table, schema, None))
    }
}

#[async_trait]
impl Sink for DeltaSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn open(
        &self,
        lineage: &Lineage,
        schema: SchemaRef,
    ) -> Result<Box<dyn SinkWriter>, SinkError> {
        let (table, schema, fill_to) = self.table_for(&schema, &lineage.route).await?;
        let url = self.table.url().clone();
        if holds(&table, &url, lineage).await? {
            return Ok(Box::new(AlreadyCommittedWriter {
                location: url.to_string(),
            }));
        }
        let pending =
            PendingCommit::new(&table, &url, &lineage.route, &self.file_settings(&schema))?;
        Ok(Box::new(DeltaObjectWriter {
            table: self.table.clone(),
            lineage: lineage.clone(),
            key_values: self.key_columns.values_for(&lineage.key),
            schema,
            fill_to,
            pending,
            contract: None,
        }))
    }

    async fn is_committed(&self, lineage: &Lineage) -> Result<CommitState, SinkError> {
        let Some(table) = self.table.latest().await? else {
            return Ok(CommitState::NotCommitted);
        };
        Ok(if holds(&table, self.table.url(), lineage).await? {
            CommitState::Committed
        } else {
            CommitState::NotCommitted
        })
    }

    /// From the commit whose info lists the object, among the most recent
    /// [`DETAILS_SEARCH_COMMITS`]; past those, only that it is committed.
    async fn commit_details(&self, lineage: &Lineage) -> Result<Option<CommitDetails>, SinkError> {
        let Some(table) = self.table.latest().await? else {
            return Ok(None);
        };
        let url = self.table.url();
        if !holds(&table, url, lineage).await? {
            return Ok(None);
        }
        let history: Vec<_> = table
            .history(Some(DETAILS_SEARCH_COMMITS))
            .try_collect()
            .await
            .map_err(|err| delta_error(url, "read the history of", err))?;
        // Newest first, one per version.
        let latest_version = table.version().unwrap_or_default();
        let found = history.iter().enumerate().find_map(|(newer, info)| {
            let source = find_source(info.info.get("s3_ingest")?, lineage)?;
            Some((latest_version.saturating_sub(newer as u64), info, source))
        });
        Ok(Some(match found {
            Some((version, info, source)) => CommitDetails {
                location: format!("{url} version {version}"),
                rows: source.get("rows").and_then(|rows| rows.as_u64()),
                committed_at: info
                    .timestamp
                    .and_then(chrono::DateTime::from_timestamp_millis),
                contract: source.get("contract").cloned(),
            },
            None => CommitDetails {
                location: url.to_string(),
                rows: None,
                committed_at: None,
                contract: None,
            },
        }))
    }

    async fn open_group(
        &self,
        _bucket: &str,
        route: &str,
        schema: SchemaRef,
    ) -> Result<Box<dyn GroupWriter>, SinkError> {
        let (table, schema, fill_to) = self.table_for(&schema, route).await?;
        let url = self.table.url().clone();
        let pending = PendingCommit::new(&table, &url, route, &self.file_settings(&schema))?;
        Ok(Box::new(DeltaGroupWriter {
            table: self.table.clone(),
            snapshot: table,
            key_columns: self.key_columns.clone(),
            schema,
            fill_to,
            pending,
        }))
    }
}

/// How many of the latest commits `commit_details` searches for an
/// object's commit info.
const DETAILS_SEARCH_COMMITS: usize = 1000;

/// Commits `pending` and says what it did: the table version its rows
/// are in, or that every object was in the table already.
async fn commit_receipt(
    table: &TableHandle,
    pending: PendingCommit,
) -> Result<CommitReceipt, SinkError> {
    let rows = pending.rows();
    let location = table.url().to_string();
    Ok(match pending.commit(table).await? {
        Committed::Version(version) => CommitReceipt {
            location: format!("{location} version {version}"),
            rows,
            already_committed: false,
        },
        Committed::AlreadyCommitted => CommitReceipt {
            location,
            rows: 0,
            already_committed: true,
        },
    })
}

/// One object's rows on their way to one commit.
struct DeltaObjectWriter {
    table: Arc<TableHandle>,
    lineage: Lineage,
    key_values: KeyValues,
    /// The batches' schema with the key columns.
    schema: SchemaRef,
    /// The table's columns, which each batch is filled up to (a route
    /// that adds columns: see `TableHandle::for_schema_adding_columns`).
    fill_to: Option<SchemaRef>,
    pending: PendingCommit,
    contract: Option<ContractOutcome>,
}

/// `batch` with the key columns, filled up to `fill_to` when given.
fn table_batch(
    batch: RecordBatch,
    key_values: &KeyValues,
    schema: &SchemaRef,
    fill_to: Option<&SchemaRef>,
) -> Result<RecordBatch, SinkError> {
    let batch = key_values.append_to(batch, schema)?;
    match fill_to {
        Some(table) => fill_missing_columns(batch, table),
        None => Ok(batch),
    }
}

#[async_trait]
impl SinkWriter for DeltaObjectWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError> {
        let batch = table_batch(batch, &self.key_values, &self.schema, self.fill_to.as_ref())?;
        self.pending.write(self.table.url(), batch).await
    }

    fn record_contract(&mut self, outcome: &ContractOutcome) {
        self.contract = Some(outcome.clone());
    }

    async fn commit(self: Box<Self>) -> Result<CommitReceipt, SinkError> {
        let DeltaObjectWriter {
            table,
            lineage,
            mut pending,
            contract,
            ..
        } = *self;
        let rows = pending.rows();
        pending.add_member(lineage, rows, contract);
        commit_receipt(&table, pending).await
    }
}

/// An object the table already holds (a redelivery): its rows are
/// dropped and its commit commits nothing.
struct AlreadyCommittedWriter {
    location: String,
}

#[async_trait]
impl SinkWriter for AlreadyCommittedWriter {
    async fn write(&mut self, _batch: RecordBatch) -> Result<(), SinkError> {
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<CommitReceipt, SinkError> {
        Ok(CommitReceipt {
            location: self.location,
            rows: 0,
            already_committed: true,
        })
    }
}

/// Many small objects' rows on their way to one commit (one set of
/// right-sized files, one `txn` per object).
struct DeltaGroupWriter {
    table: Arc<TableHandle>,
    /// The table as of the group's start: objects it holds are refused
    /// as already committed; later commits are checked at commit.
    snapshot: deltalake::DeltaTable,
    key_columns: KeyColumns,
    schema: SchemaRef,
    fill_to: Option<SchemaRef>,
    pending: PendingCommit,
}

#[async_trait]
impl GroupWriter for DeltaGroupWriter {
    async fn add(&mut self, member: &GroupMember) -> Result<Joined, SinkError> {
        if holds(&self.snapshot, self.table.url(), &member.lineage).await? {
            return Ok(Joined::AlreadyCommitted);
        }
        let key_values = self.key_columns.values_for(&member.lineage.key);
        for (index, batch) in member.batches.iter().enumerate() {
            let batch = table_batch(
                batch.clone(),
                &key_values,
                &self.schema,
                self.fill_to.as_ref(),
            )?;
            match self.pending.write(self.table.url(), batch).await {
                Ok(()) => {}
                // Rows that do not fit are refused before they are
                // written: while none of this object's are in the group,
                // the group goes on without it.
                Err(err) if index == 0 && !err.is_retryable() => {
                    return Ok(Joined::Refused(err.detail));
                }
                Err(err) => return Err(err),
            }
        }
        self.pending
            .add_member(member.lineage.clone(), member.rows, member.contract.clone());
        Ok(Joined::Added)
    }

    fn output_bytes(&self) -> u64 {
        self.pending.output_bytes()
    }

    async fn commit(self: Box<Self>) -> Result<CommitReceipt, SinkError> {
        let DeltaGroupWriter { table, pending, .. } = *self;
        commit_receipt(&table, pending).await
    }
}

#[cfg(test)]
mod tests;
