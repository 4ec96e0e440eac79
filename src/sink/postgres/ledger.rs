//! The ingest ledger: its table, created once per process, and the key and
//! statements of one object version's row (claimed first, completed with
//! the rows at commit).

use super::PostgresSink;
use super::errors::classify;
use super::table::sql_literal;
use super::writer::Session;
use crate::sink::{Lineage, SinkError};

impl PostgresSink {
    /// Creates the ledger once per process, in its own transaction, under
    /// the same kind of advisory lock as
    /// [`Target::create`](super::table::Target::create).
    pub(super) async fn ensure_ledger(&self, session: &Session) -> Result<(), SinkError> {
        self.ledger_ready
            .get_or_try_init(|| async {
                let ledger = self.ledger.sql();
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
                         PRIMARY KEY (target_table, bucket, key, version_identity)
                     );
                     COMMIT;",
                    name = sql_literal(&ledger),
                );
                // On error the caller drops the session, closing the
                // connection and with it the aborted transaction.
                session
                    .client()
                    .batch_execute(&ddl)
                    .await
                    .map_err(|err| classify(&format!("create ledger table {ledger}"), &err))
            })
            .await
            .map(|_| ())
    }
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
            .map_err(|err| classify(&format!("insert into ledger {ledger}"), &err))
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

    /// Records the rows and the commit time, in the transaction that is
    /// about to commit.
    pub(super) async fn record_commit(
        &self,
        client: &tokio_postgres::Client,
        ledger: &str,
        rows: i64,
    ) -> Result<(), SinkError> {
        let mut params = self.params().to_vec();
        params.push(&rows);
        client
            .execute(
                &format!(
                    "UPDATE {ledger} SET rows = $5, committed_at = clock_timestamp() WHERE {}",
                    LedgerKey::WHERE
                ),
                &params,
            )
            .await
            .map_err(|err| classify(&format!("update ledger {ledger}"), &err))?;
        Ok(())
    }
}
