//! `postgres`: each source object version is COPYed into a table, exactly
//! once, in one transaction with a row in an ingest ledger.
//!
//! ## How one object is written
//!
//! ```text
//! open          BEGIN
//!               INSERT INTO ledger (table, bucket, key, version identity, ...)
//!                   ON CONFLICT DO NOTHING
//!                 0 rows → ROLLBACK: already committed (a redelivery, or a
//!                          concurrent delivery that committed first); the
//!                          writer discards the object's batches
//! first write   check the table against the batch's schema (create it
//!               first with create_table), COPY table (file columns)
//!               FROM STDIN (FORMAT binary)
//! write         each batch encoded and sent as it arrives (bounded memory)
//! commit        end of COPY, UPDATE ledger SET rows, committed_at; COMMIT
//! ```
//!
//! The ledger row is claimed *first*: a concurrent duplicate blocks on its
//! unique index until the first transaction ends, then sees the conflict
//! (committed) or proceeds (rolled back). Table rows and ledger row commit
//! together or not at all, so a crash at any point leaves either nothing
//! (the redelivery loads the file) or everything (the redelivery finds the
//! ledger row). The ledger key is (table as configured, bucket, key,
//! version id or ETag), so several sinks or routes can share one ledger;
//! spell one table the same way in every sink. A new version of a key is
//! a new load: its rows are added, the old version's stay.
//!
//! A writer dropped without `commit` closes its connection instead of
//! returning it to the pool: the server rolls back, and no connection with
//! an open or aborted transaction is ever reused. (A server backend that is
//! waiting on a lock notices a vanished client only when the wait ends;
//! `options=-c client_connection_check_interval=10s` in the connection
//! string makes it notice sooner.)
//!
//! A route with `group` writes many small objects in one transaction,
//! each with its own ledger row (`group.rs`).
//!
//! ## Schema
//!
//! The table is checked when the first batch arrives, inside the
//! transaction, before any row is sent; a file without batches (empty, or
//! a CSV header whose columns all infer as text) checks nothing and commits
//! only its ledger row with 0 rows. With `create_table = true` the table is
//! first created from that batch's Arrow schema (`CREATE TABLE IF NOT
//! EXISTS` under a transaction-level advisory lock, so racing workers do
//! not collide; the creation commits with the first load). A mismatch
//! dead-letters the object naming the column: a file column the table
//! lacks (matched by exact name, else a unique case-insensitive match), a
//! type that cannot be written, or a `NOT NULL` column without a default
//! that the file lacks. Extra table columns that are nullable or have
//! defaults (identity, `DEFAULT now()`, ...) are allowed and get their
//! defaults. The check is cached per Arrow schema after a commit; it goes
//! stale if the table is altered while the worker runs, and the COPY then
//! fails with the server's error.
//!
//! | Arrow type | PostgreSQL column types accepted | `create_table` |
//! |---|---|---|
//! | Int8, Int16, UInt8 | smallint, integer, bigint, numeric | smallint |
//! | Int32, UInt16 | same (values range-checked) | integer |
//! | Int64, UInt32 | same (values range-checked) | bigint |
//! | UInt64 | same (values range-checked) | numeric(20, 0) |
//! | Float32 | real, double precision, numeric | real |
//! | Float64 | double precision, numeric (shortest decimal form) | double precision |
//! | Decimal128(p, s) | numeric | numeric(p, s) |
//! | Boolean | boolean | boolean |
//! | Utf8, LargeUtf8 | text, varchar, char(n) | text |
//! | Binary, LargeBinary | bytea | bytea |
//! | Date32 | date | date |
//! | Timestamp(any unit, no zone) | timestamp, timestamptz (as UTC) | timestamp |
//! | Timestamp(any unit, zone) | timestamptz, timestamp (UTC wall clock) | timestamptz |
//! | Null | any | text |
//!
//! Nulls are written as NULL for every type; non-nullable Arrow fields
//! become `NOT NULL` columns when the sink creates the table. Nanoseconds
//! are truncated to microseconds.
//!
//! ## TLS
//!
//! `sslmode` in the connection string decides whether to encrypt:
//! `disable` never; `prefer` (the default, as in libpq) when the server
//! offers TLS, else in the clear; `require`, `verify-ca` and `verify-full`
//! always, and a server without TLS is a connection error. Whenever TLS is
//! used, the server's certificate chain *and* host name are verified
//! (rustls), against the system's CA store plus the certificates in
//! `ca_file` (a PEM bundle, such as the RDS CA bundle). This is stricter
//! than libpq, whose `prefer` and `require` encrypt without checking the
//! certificate: here `require` means what libpq calls `verify-full`, and a
//! server offering TLS with an untrusted certificate fails even under
//! `prefer` (set `ca_file`, or `sslmode=disable` on a trusted network).
//! Certificate checks are never turned off. libpq's `sslrootcert`,
//! `sslcert` and `sslkey` are not understood (use `ca_file`; client
//! certificates are not supported). An unreadable or invalid `ca_file`,
//! or `sslmode=require` with no trusted CA at all, is a start-up error; a
//! failed handshake (untrusted or expired certificate, wrong host name) is
//! a transient connection error, logged with the reason
//! ("invalid peer certificate: UnknownIssuer"), and the object waits on
//! the queue until the certificate or the configuration is fixed.
//!
//! ## Errors
//!
//! Transient (the message stays queued and is redelivered): connection
//! refused or lost, TLS handshake failures, pool timeouts, SQLSTATE class 08 (connection), 40001
//! serialization failure, 40P01 deadlock, 53xxx (too many connections, disk
//! full), 55P03 lock not available, 57014 query canceled, 57P01-57P03 admin
//! shutdown / cannot connect now, 58xxx system errors, and the connection
//! set-up errors that affect every object alike (28xxx authentication,
//! 3D000 unknown database). Everything else the server rejects is
//! permanent (dead-lettered) with its message and SQLSTATE: 23xxx
//! constraint violations, 22xxx data errors, 42xxx undefined table or
//! column and insufficient privilege, ...

mod config;
mod encode;
mod errors;
mod group;
mod ledger;
mod table;
mod tls;
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;

use super::{
    CommitDetails, CommitState, GroupWriter, Lineage, Sink, SinkContext, SinkError, SinkWriter,
};
use errors::{classify, pool_error};
use ledger::LedgerKey;
use table::{QualifiedName, Target};
use writer::{InTransaction, PostgresWriter, Session};

pub use config::PostgresSinkConfig;

pub struct PostgresSink {
    name: String,
    ledger: QualifiedName,
    pool: Pool,
    ledger_ready: tokio::sync::OnceCell<()>,
    target: Arc<Target>,
    /// Routes whose new columns are added to the table (`add_columns`).
    add_columns_routes: std::collections::BTreeSet<String>,
}

impl PostgresSink {
    /// Reads the secret and builds the pool; connects lazily, so an
    /// unreachable database is a per-object transient error, not a start-up
    /// failure.
    pub fn new(
        name: &str,
        config: &PostgresSinkConfig,
        context: &SinkContext,
    ) -> Result<PostgresSink, SinkError> {
        let connection = config.connection_config(name)?;
        let tls = tls::connector(
            name,
            config.ca_file.as_deref(),
            connection.get_ssl_mode() == SslMode::Require,
        )?;
        let manager = Manager::from_config(
            connection,
            tls,
            ManagerConfig {
                // Checks `is_closed` only: connections with a transaction
                // left open never reach the pool (see `Session`).
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.get())
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(config.connect_timeout_secs)))
            .build()
            .map_err(|err| {
                SinkError::permanent(format!("sink `{name}`: connection pool: {err}"))
            })?;
        let parse = |text: &str| {
            QualifiedName::parse(text)
                .map_err(|err| SinkError::permanent(format!("sink `{name}`: {err}")))
        };
        Ok(PostgresSink {
            name: name.to_owned(),
            ledger: parse(&config.ledger_table)?,
            pool,
            ledger_ready: tokio::sync::OnceCell::new(),
            add_columns_routes: context.add_columns_routes.clone(),
            target: Arc::new(Target {
                table: parse(&config.table)?,
                configured: config.table.clone(),
                create_table: config.create_table,
                plans: Mutex::new(HashMap::new()),
            }),
        })
    }

    async fn session(&self) -> Result<Session, SinkError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        Ok(Session {
            client: Some(client),
        })
    }
}

#[async_trait]
impl Sink for PostgresSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// Begins the transaction and claims the ledger row; the table is
    /// checked (or created) when the first batch arrives.
    async fn open(
        &self,
        lineage: &Lineage,
        _schema: SchemaRef,
    ) -> Result<Box<dyn SinkWriter>, SinkError> {
        let session = self.session().await?;
        self.ensure_ledger(&session).await?;
        let ledger = self.ledger.sql();
        let client = session.client();
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|err| classify("begin", &err))?;
        let key = LedgerKey::new(&self.target.configured, lineage);
        let inserted = key.claim(client, &ledger, lineage, &self.name).await?;
        if inserted == 0 {
            client
                .batch_execute("ROLLBACK")
                .await
                .map_err(|err| classify("rollback", &err))?;
            let rows = key.committed_rows(client, &ledger).await?;
            session.release();
            return Ok(Box::new(PostgresWriter::AlreadyCommitted {
                table: key.table,
                rows: rows.unwrap_or(0) as u64,
            }));
        }
        Ok(Box::new(PostgresWriter::InTransaction(Box::new(
            InTransaction {
                session,
                target: self.target.clone(),
                copy: None,
                ledger,
                key,
                sink: self.name.clone(),
                rows: 0,
                contract: None,
                add_columns: self.add_columns_routes.contains(&lineage.route),
            },
        ))))
    }

    /// Begins the group's transaction; see `group.rs`.
    async fn open_group(
        &self,
        _bucket: &str,
        route: &str,
        _schema: SchemaRef,
    ) -> Result<Box<dyn GroupWriter>, SinkError> {
        let session = self.session().await?;
        self.ensure_ledger(&session).await?;
        session
            .client()
            .batch_execute("BEGIN")
            .await
            .map_err(|err| classify("begin", &err))?;
        Ok(Box::new(group::PostgresGroup {
            session,
            target: self.target.clone(),
            ledger: self.ledger.sql(),
            sink: self.name.clone(),
            plan: None,
            rows: 0,
            bytes: 0,
            add_columns: self.add_columns_routes.contains(route),
        }))
    }

    /// Asks the ledger for this sink's table and the version's key: a row
    /// whose commit is recorded. Reads only (no ledger is created); a
    /// missing ledger table is `NotCommitted`.
    async fn is_committed(&self, lineage: &Lineage) -> Result<CommitState, SinkError> {
        let session = self.session().await?;
        let key = LedgerKey::new(&self.target.configured, lineage);
        // On an error the session is dropped, closing its connection.
        let committed = key
            .is_committed(session.client(), &self.ledger.sql())
            .await?;
        session.release();
        Ok(if committed {
            CommitState::Committed
        } else {
            CommitState::NotCommitted
        })
    }

    /// The ledger row's rows and `committed_at`; the location is the
    /// target table.
    async fn commit_details(&self, lineage: &Lineage) -> Result<Option<CommitDetails>, SinkError> {
        let session = self.session().await?;
        let key = LedgerKey::new(&self.target.configured, lineage);
        let details = key
            .commit_details(session.client(), &self.ledger.sql())
            .await?;
        session.release();
        Ok(details.map(|details| CommitDetails {
            location: key.table,
            rows: details.rows.and_then(|rows| u64::try_from(rows).ok()),
            committed_at: details.committed_at,
            contract: details.contract,
        }))
    }
}
