//! The ingest ledger: its table, created once per process, and the key and
//! statements of one object version's row (claimed first, completed with
//! the rows at commit).

use super::PostgresSink;
use super::errors::classify;
use super::table::sql_literal;
use super::writer::Session;
use crate::sink::{Lineage, SinkError};

/// The ledger table's layout version, kept in the table's comment
/// (`s3-ingest ledger schema 1`). A worker reads it before its first
/// write: an older layout is migrated in place ([`migrate`]), a newer one
/// (written by a later s3-ingest) is refused as a deployment problem
/// instead of being written in a layout this worker does not know.
pub(super) const LEDGER_SCHEMA_VERSION: u32 = 2;
const SCHEMA_COMMENT_PREFIX: &str = "s3-ingest ledger schema ";

impl PostgresSink {
    /// Creates the ledger once per process, in its own transaction, under
    /// the same kind of advisory lock as
    /// [`Target::create`](super::table::Target::create), and checks or
    /// migrates its schema version under that lock.
    pub(super) async fn ensure_ledger(&self, session: &Session) -> Result<(), SinkError> {
        self.ledger_ready
            .get_or_try_init(|| async {
                let ledger = self.ledger.sql();
                let action = format!("prepare ledger table {ledger}");
                let client = session.client();
                let ddl = format!(
                    "BEGIN;
                     SELECT pg_advisory_xact_lock(hashtext('s3-ingest ddl ' || {name}));
                     CREATE TABLE IF NOT EXISTS {ledger} (
                         target_table text NOT NULL,
                         bucket text NOT NULL,
                         key text NOT NULL,
                         version_identity text NOT NULL,
                         version_id text,
                         etag text,
                         size bigint NOT NULL,
                         route text NOT NULL,
                         sink text NOT NULL,
                         rows bigint,
                         started_at timestamptz NOT NULL DEFAULT now(),
                         committed_at timestamptz,
                         contract jsonb,
                         PRIMARY KEY (target_table, bucket, key, version_identity)
                     );",
                    name = sql_literal(&ledger),
                );
                // On error the caller drops the session, closing the
                // connection and with it the aborted transaction.
                client
                    .batch_execute(&ddl)
                    .await
                    .map_err(|err| classify(&action, &err))?;
                let comment: Option<String> = client
                    .query_one(
                        &format!("SELECT obj_description({}::regclass, 'pg_class')", sql_literal(&ledger)),
                        &[],
                    )
                    .await
                    .map_err(|err| classify(&action, &err))?
                    .get(0);
                let found = schema_version(comment.as_deref());
                if found > LEDGER_SCHEMA_VERSION {
                    return Err(SinkError::deployment(
                        "ledger_schema",
                        format!(
                            "ledger table {ledger} has schema version {found}, written by a newer s3-ingest; this worker knows up to {LEDGER_SCHEMA_VERSION}: upgrade it (or point ledger_table elsewhere)"
                        ),
                    ));
                }
                let mut steps = migrate(found, &ledger);
                steps.push(format!(
                    "COMMENT ON TABLE {ledger} IS {}; COMMIT;",
                    sql_literal(&format!("{SCHEMA_COMMENT_PREFIX}{LEDGER_SCHEMA_VERSION}"))
                ));
                client
                    .batch_execute(&steps.join("\n"))
                    .await
                    .map_err(|err| classify(&action, &err))
            })
            .await
            .map(|_| ())
    }
}

/// The version a ledger's table comment names. A table without the
/// comment was created before versions were kept: its layout is version 1.
fn schema_version(comment: Option<&str>) -> u32 {
    comment
        .and_then(|comment| comment.strip_prefix(SCHEMA_COMMENT_PREFIX))
        .and_then(|version| version.trim().parse().ok())
        .unwrap_or(1)
}

/// The statements that bring a ledger from version `from` to
/// [`LEDGER_SCHEMA_VERSION`], run in the transaction that holds the DDL
/// lock. Each layout change adds its step here (and raises the version);
/// steps must be idempotent (`ADD COLUMN IF NOT EXISTS`), since a worker
/// of the old version may keep writing until it is replaced, so a new
/// column must be nullable or have a default.
fn migrate(from: u32, ledger: &str) -> Vec<String> {
    let mut steps: Vec<String> = Vec::new();
    debug_assert!(from <= LEDGER_SCHEMA_VERSION);
    if from < 2 {
        // Version 2: the route's contract outcome for the file.
        steps.push(format!(
            "ALTER TABLE {ledger} ADD COLUMN IF NOT EXISTS contract jsonb;"
        ));
    }
    steps
}

/// What a committed ledger row says (`s3-ingest trace`).
pub(super) struct LedgerDetails {
    pub(super) rows: Option<i64>,
    pub(super) committed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The route's contract outcome, when the route had a contract.
    pub(super) contract: Option<serde_json::Value>,
}

/// The ledger's primary key for one object version and target table.
pub(super) struct LedgerKey {
    pub(super) table: String,
    bucket: String,
    key: String,
    version_identity: String,
}

impl LedgerKey {
    const WHERE: &str = "target_table = $1 AND bucket = $2 AND key = $3 AND version_identity = $4";

    pub(super) fn new(table: &str, lineage: &Lineage) -> LedgerKey {
        LedgerKey {
            table: table.to_owned(),
            bucket: lineage.bucket.clone(),
            key: lineage.key.clone(),
            version_identity: lineage.version_identity().to_owned(),
        }
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 4] {
        [&self.table, &self.bucket, &self.key, &self.version_identity]
    }

    /// Inserts the row into `ledger` in the open transaction; 0 rows
    /// inserted when this version is already committed.
    pub(super) async fn claim(
        &self,
        client: &tokio_postgres::Client,
        ledger: &str,
        lineage: &Lineage,
        sink: &str,
    ) -> Result<u64, SinkError> {
        self.try_claim(client, ledger, lineage, sink)
            .await
            .map_err(|err| classify(&format!("insert into ledger {ledger}"), &err))
    }

    /// [`Self::claim`] with the server's error as it is (a group tells a
    /// lock timeout apart).
    pub(super) async fn try_claim(
        &self,
        client: &tokio_postgres::Client,
        ledger: &str,
        lineage: &Lineage,
        sink: &str,
    ) -> Result<u64, tokio_postgres::Error> {
        let size = i64::try_from(lineage.size).unwrap_or(i64::MAX);
        // Blocks while a concurrent delivery of the same version holds the
        // key uncommitted; 0 rows once that one committed.
        client
            .execute(
                &format!(
                    "INSERT INTO {ledger}
                       (target_table, bucket, key, version_identity, version_id, etag, size, route, sink)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT DO NOTHING"
                ),
                &[
                    &self.table, &self.bucket, &self.key, &self.version_identity,
                    &lineage.version_id, &lineage.etag, &size, &lineage.route, &sink,
                ],
            )
            .await
    }

    /// The rows the committed load of this version wrote.
    pub(super) async fn committed_rows(
        &self,
        client: &tokio_postgres::Client,
        ledger: &str,
    ) -> Result<Option<i64>, SinkError> {
        Ok(client
            .query_one(
                &format!("SELECT rows FROM {ledger} WHERE {}", LedgerKey::WHERE),
                &self.params(),
            )
            .await
            .map_err(|err| classify(&format!("read ledger {ledger}"), &err))?
            .get(0))
    }

    /// Whether `ledger` holds this version's row with its commit recorded,
    /// read outside any transaction. A ledger table (or its schema) that
    /// does not exist yet means nothing was ever committed through it: not
    /// committed, not an error. The row is inserted and completed in the
    /// load's transaction, so another worker's load in progress is not
    /// seen; `committed_at IS NOT NULL` also keeps a row that a future
    /// layout might leave half-done from counting.
    pub(super) async fn is_committed(
        &self,
        client: &tokio_postgres::Client,
        ledger: &str,
    ) -> Result<bool, SinkError> {
        let result = client
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {ledger} WHERE {} AND committed_at IS NOT NULL)",
                    LedgerKey::WHERE
                ),
                &self.params(),
            )
            .await;
        match result {
            Ok(row) => Ok(row.get(0)),
            Err(err) if is_missing_relation(&err) => Ok(false),
            Err(err) => Err(classify(&format!("read ledger {ledger}"), &err)),
        }
    }

    /// The rows and commit time of this version's committed row, if any
    /// (`s3-ingest trace`); a missing ledger table is none, as in
    /// [`Self::is_committed`].
    pub(super) async fn commit_details(
        &self,
        client: &tokio_postgres::Client,
        ledger: &str,
    ) -> Result<Option<LedgerDetails>, SinkError> {
        // Microseconds since the epoch: no chrono feature in tokio-postgres.
        let result = client
            .query_opt(
                &format!(
                    "SELECT rows, (extract(epoch FROM committed_at) * 1000000)::bigint, contract::text
                     FROM {ledger} WHERE {} AND committed_at IS NOT NULL",
                    LedgerKey::WHERE
                ),
                &self.params(),
            )
            .await;
        match result {
            Ok(row) => Ok(row.map(|row| {
                let micros: Option<i64> = row.get(1);
                let contract: Option<String> = row.get(2);
                LedgerDetails {
                    rows: row.get(0),
                    committed_at: micros.and_then(chrono::DateTime::from_timestamp_micros),
                    contract: contract.and_then(|text| serde_json::from_str(&text).ok()),
                }
            })),
            Err(err) if is_missing_relation(&err) => Ok(None),
            Err(err) => Err(classify(&format!("read ledger {ledger}"), &err)),
        }
    }

    /// Records the rows and the commit time, in the transaction that is
    /// about to commit.
    pub(super) async fn record_commit(
        &self,
        client: &tokio_postgres::Client,
        ledger: &str,
        rows: i64,
        contract: Option<&str>,
    ) -> Result<(), SinkError> {
        self.record(client, ledger, rows, contract, "clock_timestamp()")
            .await
    }

    /// [`Self::record_commit`] for an object of a group: `committed_at` is
    /// when the group's transaction began (`now()`), the same for every
    /// object it commits, moments to `max_age_secs` before its COMMIT.
    pub(super) async fn record_group_commit(
        &self,
        client: &tokio_postgres::Client,
        ledger: &str,
        rows: i64,
        contract: Option<&str>,
    ) -> Result<(), SinkError> {
        self.record(client, ledger, rows, contract, "now()").await
    }

    /// `contract`: the route's contract outcome for the file, as JSON.
    async fn record(
        &self,
        client: &tokio_postgres::Client,
        ledger: &str,
        rows: i64,
        contract: Option<&str>,
        committed_at: &str,
    ) -> Result<(), SinkError> {
        let mut params = self.params().to_vec();
        params.push(&rows);
        params.push(&contract);
        client
            .execute(
                &format!(
                    "UPDATE {ledger} SET rows = $5, contract = $6::text::jsonb, committed_at = {committed_at} WHERE {}",
                    LedgerKey::WHERE
                ),
                &params,
            )
            .await
            .map_err(|err| classify(&format!("update ledger {ledger}"), &err))?;
        Ok(())
    }
}

/// 42P01 undefined_table, 3F000 invalid_schema_name: the ledger table is
/// not there (yet).
fn is_missing_relation(err: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    err.code().is_some_and(|code| {
        *code == SqlState::UNDEFINED_TABLE || *code == SqlState::INVALID_SCHEMA_NAME
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_version_is_read_from_the_table_comment() {
        assert_eq!(schema_version(None), 1, "a ledger from before versions");
        assert_eq!(schema_version(Some("hand-written note")), 1);
        assert_eq!(schema_version(Some("s3-ingest ledger schema 1")), 1);
        assert_eq!(schema_version(Some("s3-ingest ledger schema 7")), 7);
        assert_eq!(
            migrate(1, "ledger"),
            ["ALTER TABLE ledger ADD COLUMN IF NOT EXISTS contract jsonb;"]
        );
        assert!(migrate(2, "ledger").is_empty());
    }
}
