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

mod encode;
mod tls;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::SinkExt;
use serde::{Deserialize, Serialize};
use tokio_postgres::CopyInSink;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::Type;

use super::{CommitReceipt, Lineage, Sink, SinkContext, SinkError, SinkWriter};
use crate::text::{ERROR_EXCERPT_BYTES, excerpt};
use encode::PgType;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Name of an environment variable holding the connection string (a
    /// libpq URL or `key=value` list, password included). Exactly one of
    /// `url_env` and `url` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// A connection string without a password, for servers that need none
    /// or with `password_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Name of an environment variable holding the password for `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Target table, `name` or `schema.name`, used exactly as written
    /// (quoted, so case-sensitive).
    pub table: String,
    /// Creates the table from the first file's schema when it is missing.
    #[serde(default)]
    pub create_table: bool,
    /// The ingest ledger table, created when missing.
    #[serde(default = "default_ledger_table")]
    pub ledger_table: String,
    /// Connections kept at most; objects beyond it wait for one.
    #[serde(default = "default_pool_size")]
    pub pool_size: NonZeroUsize,
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// A PEM bundle of CA certificates trusted for the server's TLS
    /// certificate (such as the RDS CA bundle), in addition to the
    /// system's store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_ledger_table() -> String {
    "s3_ingest_ledger".into()
}

fn default_pool_size() -> NonZeroUsize {
    NonZeroUsize::new(4).unwrap()
}

fn default_connect_timeout_secs() -> u64 {
    10
}

impl PostgresSinkConfig {
    /// Errors are (field relative to `sinks.NAME.`, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |field: &str, message: &str| Err((field.to_owned(), message.to_owned()));
        match (&self.url_env, &self.url) {
            (Some(_), Some(_)) => return err("url", "set either url or url_env, not both"),
            (None, None) => {
                return err(
                    "url_env",
                    "name the environment variable holding the connection string (or set url without a password)",
                );
            }
            (Some(name), None) if !is_env_var_name(name) => {
                return err("url_env", "must be an environment variable name");
            }
            (Some(_), None) if self.password_env.is_some() => {
                return err(
                    "password_env",
                    "only with url; put the password in url_env's URL",
                );
            }
            (None, Some(url)) => match tls::parse_connection_string(url) {
                // The parser's messages name the option, never the value.
                Err(parse_err) => {
                    return Err((
                        "url".into(),
                        format!(
                            "not a connection string: {}",
                            crate::error::with_causes(&parse_err)
                        ),
                    ));
                }
                Ok(parsed) if parsed.get_password().is_some() => {
                    return err(
                        "url",
                        "must not contain a password: use password_env or url_env",
                    );
                }
                Ok(_) => {}
            },
            _ => {}
        }
        if let Some(name) = &self.password_env
            && !is_env_var_name(name)
        {
            return err("password_env", "must be an environment variable name");
        }
        if let Err(message) = QualifiedName::parse(&self.table) {
            return Err(("table".into(), message));
        }
        if let Err(message) = QualifiedName::parse(&self.ledger_table) {
            return Err(("ledger_table".into(), message));
        }
        if self.connect_timeout_secs == 0 {
            return err("connect_timeout_secs", "must be at least 1");
        }
        if self
            .ca_file
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return err("ca_file", "must be a path to a PEM file");
        }
        Ok(())
    }

    /// The connection settings, with the secret read from the environment.
    fn connection_config(&self, sink: &str) -> Result<tokio_postgres::Config, SinkError> {
        let read_env = |field: &str, name: &str| {
            std::env::var(name).map_err(|_| {
                SinkError::permanent(format!(
                    "sink `{sink}`: environment variable {name} (named by {field}) is not set"
                ))
            })
        };
        let mut config = match (&self.url_env, &self.url) {
            (Some(name), _) => {
                let url = read_env("url_env", name)?;
                // Never echo the string: it holds the password.
                tls::parse_connection_string(&url).map_err(|err| {
                    SinkError::permanent(format!(
                        "sink `{sink}`: environment variable {name} is not a connection string: {}",
                        crate::error::with_causes(&err)
                    ))
                })?
            }
            (None, Some(url)) => tls::parse_connection_string(url).map_err(|err| {
                SinkError::permanent(format!(
                    "sink `{sink}`: url is not a connection string: {}",
                    crate::error::with_causes(&err)
                ))
            })?,
            (None, None) => {
                return Err(SinkError::permanent(format!(
                    "sink `{sink}`: no url or url_env"
                )));
            }
        };
        if let Some(name) = &self.password_env {
            config.password(read_env("password_env", name)?);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(self.connect_timeout_secs));
        }
        if config.get_application_name().is_none() {
            config.application_name("s3-ingest");
        }
        Ok(config)
    }
}

fn is_env_var_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A table name, optionally schema-qualified, quoted for SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct QualifiedName {
    schema: Option<String>,
    name: String,
}

impl QualifiedName {
    fn parse(text: &str) -> Result<QualifiedName, String> {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.iter().any(|part| part.is_empty()) || parts.len() > 2 {
            return Err(format!("`{text}` is not `table` or `schema.table`"));
        }
        Ok(match parts.as_slice() {
            [name] => QualifiedName {
                schema: None,
                name: (*name).to_owned(),
            },
            [schema, name] => QualifiedName {
                schema: Some((*schema).to_owned()),
                name: (*name).to_owned(),
            },
            _ => unreachable!("one or two parts"),
        })
    }

    /// `"schema"."name"`, safe to splice into SQL.
    fn sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!(
                "{}.{}",
                quote_identifier(schema),
                quote_identifier(&self.name)
            ),
            None => quote_identifier(&self.name),
        }
    }
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Turns a driver error into retry-or-dead-letter, keeping the server's
/// message, SQLSTATE and COPY line (the row) for the operator.
fn classify(action: &str, err: &tokio_postgres::Error) -> SinkError {
    let Some(db) = err.as_db_error() else {
        // Refused, reset, closed, timed out, a TLS handshake that failed
        // (the certificate may be renewed, the CA bundle fixed): the
        // server is out, whatever the file holds. (The driver's other
        // errors, encoding a parameter, cannot come from our statements.)
        return SinkError::unavailable(
            "connection",
            format!("{action}: {}", crate::error::with_causes(err)),
        );
    };
    let code = db.code().code();
    // The server's texts quote the offending value (a key in a constraint
    // violation, the COPY row in the context): bounded.
    let bounded = |text: &str| excerpt(text, ERROR_EXCERPT_BYTES);
    let mut detail = format!("{action}: {} (SQLSTATE {code})", bounded(db.message()));
    if let Some(extra) = db.detail() {
        detail.push_str(&format!("; {}", bounded(extra)));
    }
    if let Some(context) = db.where_() {
        detail.push_str(&format!("; at {}", bounded(&context.replace('\n', " / "))));
    }
    if crate::error::is_deployment_sqlstate(code, false) {
        let hint = deployment_hint(code);
        SinkError::deployment(code, format!("{detail}; {hint}"))
    } else if is_unavailable_sqlstate(code) {
        SinkError::unavailable(code, detail)
    } else if is_transient_sqlstate(code) {
        SinkError::transient(detail)
    } else {
        SinkError::permanent(detail)
    }
}

/// What to fix for a SQLSTATE that refuses the sink's role.
fn deployment_hint(code: &str) -> &'static str {
    match code {
        "28P01" => "the password is wrong: check the secret in the sink's url_env / password_env",
        "28000" => {
            "the role may not connect: check pg_hba.conf and the role (LOGIN, CONNECT on the database)"
        }
        "42501" => {
            "the role lacks a privilege: GRANT it INSERT on the table, USAGE on its schema and SELECT, INSERT on the ledger table"
        }
        _ => "the table does not exist: create it, or set create_table = true",
    }
}

/// The server is out whatever the file holds: a connection exception
/// (08), an administrator or crash shutdown, a server starting up (57P0x),
/// insufficient resources: disk full, out of memory, too many connections
/// (53), a system or I/O error (58).
fn is_unavailable_sqlstate(code: &str) -> bool {
    matches!(code, "57P01" | "57P02" | "57P03")
        || ["08", "53", "58"]
            .iter()
            .any(|class| code.starts_with(class))
}

/// Worth another try, and the try counts: serialization failures,
/// deadlocks, lock timeouts, a cancelled statement, a database that does
/// not exist (yet).
fn is_transient_sqlstate(code: &str) -> bool {
    matches!(
        code,
        "40001" | "40P01" | "55P03" | "57014" | "3D000"
            // In a failed transaction: the connection's state, not the
            // object's; the session is discarded and a retry starts clean.
            | "25P02"
    ) || code.starts_with("28")
}

fn pool_error(err: deadpool_postgres::PoolError) -> SinkError {
    match err {
        deadpool_postgres::PoolError::Backend(err) => classify("connect to PostgreSQL", &err),
        // Waiting for a connection timed out, or the pool is closing.
        other => SinkError::unavailable("pool", format!("get a PostgreSQL connection: {other}")),
    }
}

/// A pooled connection that goes back to the pool only through
/// [`Session::release`], after a COMMIT or ROLLBACK succeeded. Dropped
/// otherwise, it is detached from the pool and closed, which makes the
/// server roll back whatever transaction it had open.
struct Session {
    client: Option<Object>,
}

impl Session {
    fn client(&self) -> &tokio_postgres::Client {
        self.client.as_ref().expect("session in use")
    }

    fn release(mut self) {
        drop(self.client.take());
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Detached from the pool; dropping it closes the connection.
            drop(Object::take(client));
        }
    }
}

/// How one Arrow schema is written into the table: the COPY statement and
/// each file column's target type.
struct CopyPlan {
    /// `schema.table` as the server names it, for messages.
    table: String,
    /// `None` when the file has no columns: only the ledger row is written.
    copy_statement: Option<String>,
    targets: Vec<PgType>,
    column_names: Vec<String>,
}

/// Plans are cached per Arrow schema; a worker sees few distinct schemas,
/// and the cap keeps a stream of odd files from growing the cache forever.
const MAX_CACHED_PLANS: usize = 64;

/// The target table, shared by the sink and its writers: the schema check
/// and creation run in the writer's transaction when its first batch
/// arrives, so a header-only file (no batches, every column inferred as
/// text) never creates or checks anything and commits only its ledger row.
struct Target {
    table: QualifiedName,
    /// The table as configured; the ledger's `target_table`.
    configured: String,
    create_table: bool,
    plans: Mutex<HashMap<String, Arc<CopyPlan>>>,
}

impl Target {
    fn cache_key(schema: &SchemaRef) -> String {
        schema
            .fields()
            .iter()
            .map(|f| format!("{}\0{}\0{}", f.name(), f.data_type(), f.is_nullable()))
            .collect::<Vec<_>>()
            .join("\0\0")
    }

    fn cached(&self, cache_key: &str) -> Option<Arc<CopyPlan>> {
        self.plans.lock().unwrap().get(cache_key).cloned()
    }

    /// Called after a commit: a plan made in a transaction that rolled back
    /// may name a table whose creation rolled back with it.
    fn remember(&self, cache_key: String, plan: Arc<CopyPlan>) {
        let mut plans = self.plans.lock().unwrap();
        if plans.len() >= MAX_CACHED_PLANS {
            plans.clear();
        }
        plans.insert(cache_key, plan);
    }

    /// Creates the table if asked, then checks it, inside the writer's
    /// open transaction (DDL is transactional in PostgreSQL).
    async fn plan(&self, session: &Session, schema: &SchemaRef) -> Result<CopyPlan, SinkError> {
        if self.create_table && !schema.fields().is_empty() {
            self.create(session, schema).await?;
        }
        self.check(session, schema).await
    }

    /// `CREATE TABLE IF NOT EXISTS` under a transaction-level advisory
    /// lock: alone it can still fail with a unique violation when two
    /// workers create the same table at once. The lock is held until this
    /// writer commits, so racing first loads wait for each other.
    async fn create(&self, session: &Session, schema: &SchemaRef) -> Result<(), SinkError> {
        let table = self.table.sql();
        let mut columns = Vec::new();
        for field in schema.fields() {
            // The driver refuses a statement holding a NUL before the
            // server sees it; that is the file's column name, not an outage.
            if field.name().contains('\0') {
                return Err(SinkError::permanent(format!(
                    "column `{}`: a PostgreSQL identifier cannot hold a NUL byte, so table {table} cannot be created",
                    field.name().escape_debug()
                )));
            }
            let pg_type = encode::create_table_type(field.data_type()).ok_or_else(|| {
                SinkError::permanent(format!(
                    "column `{}`: Arrow type {} has no PostgreSQL mapping, so table {table} cannot be created",
                    field.name(),
                    field.data_type()
                ))
            })?;
            let not_null = if field.is_nullable() { "" } else { " NOT NULL" };
            columns.push(format!(
                "{} {pg_type}{not_null}",
                quote_identifier(field.name())
            ));
        }
        let ddl = format!(
            "SELECT pg_advisory_xact_lock(hashtext('s3-ingest ddl ' || {name}));
             CREATE TABLE IF NOT EXISTS {table} ({columns});",
            name = sql_literal(&table),
            columns = columns.join(", "),
        );
        session
            .client()
            .batch_execute(&ddl)
            .await
            .map_err(|err| classify(&format!("create table {table}"), &err))
    }

    /// Reads the table's columns and matches the file's against them.
    async fn check(&self, session: &Session, schema: &SchemaRef) -> Result<CopyPlan, SinkError> {
        let table = self.table.sql();
        let client = session.client();
        let found = client
            .query_opt(
                "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.oid = to_regclass($1)",
                &[&table],
            )
            .await
            .map_err(|err| classify(&format!("look up table {table}"), &err))?;
        let Some(found) = found else {
            let detail =
                format!("table {table} does not exist (create it, or set create_table = true)");
            // Not the file's fault when the sink does not create tables.
            return Err(
                if crate::error::is_deployment_sqlstate("42P01", self.create_table) {
                    SinkError::deployment("42P01", detail)
                } else {
                    SinkError::permanent(detail)
                },
            );
        };
        let (table_oid, canonical): (u32, String) = (found.get(0), found.get(1));
        let rows = client
            .query(
                "SELECT attname::text, atttypid, format_type(atttypid, atttypmod), attnotnull,
                        atthasdef OR attidentity <> '' OR attgenerated <> '', attgenerated <> ''
                 FROM pg_attribute
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
                 ORDER BY attnum",
                &[&table_oid],
            )
            .await
            .map_err(|err| classify(&format!("read the columns of {canonical}"), &err))?;
        let columns: Vec<TableColumn> = rows
            .iter()
            .map(|row| TableColumn {
                name: row.get(0),
                pg_type: Type::from_oid(row.get(1))
                    .as_ref()
                    .and_then(PgType::from_type),
                type_name: row.get(2),
                not_null: row.get(3),
                has_default: row.get(4),
                generated: row.get(5),
            })
            .collect();
        plan_copy(canonical, schema, &columns).map_err(SinkError::permanent)
    }
}

pub struct PostgresSink {
    name: String,
    ledger: QualifiedName,
    pool: Pool,
    ledger_ready: tokio::sync::OnceCell<()>,
    target: Arc<Target>,
}

impl PostgresSink {
    /// Reads the secret and builds the pool; connects lazily, so an
    /// unreachable database is a per-object transient error, not a start-up
    /// failure.
    pub fn new(
        name: &str,
        config: &PostgresSinkConfig,
        _context: &SinkContext,
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

    /// Creates the ledger once per process, in its own transaction, under
    /// the same kind of advisory lock as [`Target::create`].
    async fn ensure_ledger(&self, session: &Session) -> Result<(), SinkError> {
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

fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[derive(Clone)]
struct TableColumn {
    name: String,
    /// `None` for a type the sink cannot write.
    pg_type: Option<PgType>,
    type_name: String,
    not_null: bool,
    has_default: bool,
    generated: bool,
}

/// Matches file columns to table columns; errors name the column.
fn plan_copy(
    table: String,
    schema: &SchemaRef,
    columns: &[TableColumn],
) -> Result<CopyPlan, String> {
    if schema.fields().is_empty() {
        return Ok(CopyPlan {
            table,
            copy_statement: None,
            targets: Vec::new(),
            column_names: Vec::new(),
        });
    }
    let mut matched: Vec<&TableColumn> = Vec::new();
    for field in schema.fields() {
        let name = field.name();
        let exact = columns.iter().find(|c| &c.name == name);
        let column = match exact {
            Some(column) => column,
            None => {
                let folded: Vec<_> = columns
                    .iter()
                    .filter(|c| c.name.eq_ignore_ascii_case(name))
                    .collect();
                match folded.as_slice() {
                    [only] => *only,
                    [] => {
                        return Err(format!(
                            "table {table} has no column `{name}` for the file's column `{name}`"
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "the file's column `{name}` matches several columns of table {table} when case is ignored; rename it to one exactly"
                        ));
                    }
                }
            }
        };
        if column.generated {
            return Err(format!(
                "column `{}` of table {table} is generated and cannot be loaded",
                column.name
            ));
        }
        if matched.iter().any(|m| m.name == column.name) {
            return Err(format!(
                "the file has two columns for column `{}` of table {table}",
                column.name
            ));
        }
        let compatible = column
            .pg_type
            .is_some_and(|pg_type| encode::is_compatible(field.data_type(), pg_type));
        if !compatible {
            return Err(format!(
                "column `{}`: the file's Arrow {} values cannot be written to table {table}'s {} column",
                column.name,
                field.data_type(),
                column.type_name
            ));
        }
        matched.push(column);
    }
    if let Some(missing) = columns
        .iter()
        .find(|c| c.not_null && !c.has_default && !matched.iter().any(|m| m.name == c.name))
    {
        return Err(format!(
            "column `{}` of table {table} is NOT NULL without a default and the file has no such column",
            missing.name
        ));
    }
    let column_list: Vec<String> = matched.iter().map(|c| quote_identifier(&c.name)).collect();
    Ok(CopyPlan {
        copy_statement: Some(format!(
            "COPY {table} ({}) FROM STDIN (FORMAT binary)",
            column_list.join(", ")
        )),
        targets: matched
            .iter()
            .map(|c| c.pg_type.expect("checked compatible"))
            .collect(),
        column_names: matched.iter().map(|c| c.name.clone()).collect(),
        table,
    })
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
        let size = i64::try_from(lineage.size).unwrap_or(i64::MAX);
        // Blocks while a concurrent delivery of the same version holds the
        // key uncommitted; 0 rows once that one committed.
        let inserted = client
            .execute(
                &format!(
                    "INSERT INTO {ledger}
                       (target_table, bucket, key, version_identity, version_id, etag, size, route, sink)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT DO NOTHING"
                ),
                &[
                    &key.table, &key.bucket, &key.key, &key.version_identity,
                    &lineage.version_id, &lineage.etag, &size, &lineage.route, &self.name,
                ],
            )
            .await
            .map_err(|err| classify(&format!("insert into ledger {ledger}"), &err))?;
        if inserted == 0 {
            client
                .batch_execute("ROLLBACK")
                .await
                .map_err(|err| classify("rollback", &err))?;
            let rows: Option<i64> = client
                .query_one(
                    &format!("SELECT rows FROM {ledger} WHERE {}", LedgerKey::WHERE),
                    &key.params(),
                )
                .await
                .map_err(|err| classify(&format!("read ledger {ledger}"), &err))?
                .get(0);
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
            },
        ))))
    }
}

/// The ledger's primary key for one object version and target table.
struct LedgerKey {
    table: String,
    bucket: String,
    key: String,
    version_identity: String,
}

impl LedgerKey {
    const WHERE: &str = "target_table = $1 AND bucket = $2 AND key = $3 AND version_identity = $4";

    fn new(table: &str, lineage: &Lineage) -> LedgerKey {
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
}

enum PostgresWriter {
    /// The ledger already holds this version: batches are discarded and
    /// the commit reports what the first delivery committed.
    AlreadyCommitted { table: String, rows: u64 },
    /// The ledger row is claimed in an open transaction.
    InTransaction(Box<InTransaction>),
}

/// A COPY started on the first batch.
struct Copy {
    plan: Arc<CopyPlan>,
    /// Cache key of a plan to remember once the transaction commits.
    plan_to_remember: Option<String>,
    /// `None` when the file has no columns.
    sink: Option<Pin<Box<CopyInSink<Bytes>>>>,
}

struct InTransaction {
    /// Dropped without `commit`: the connection closes, the server rolls
    /// back.
    session: Session,
    target: Arc<Target>,
    /// `None` until the first batch.
    copy: Option<Copy>,
    ledger: String,
    key: LedgerKey,
    sink: String,
    rows: u64,
}

impl InTransaction {
    /// Plans (cached, or checked/created in this transaction) and starts
    /// the COPY for the first batch's schema.
    async fn start_copy(&mut self, schema: &SchemaRef) -> Result<(), SinkError> {
        let cache_key = Target::cache_key(schema);
        let (plan, plan_to_remember) = match self.target.cached(&cache_key) {
            Some(plan) => (plan, None),
            None => (
                Arc::new(self.target.plan(&self.session, schema).await?),
                Some(cache_key),
            ),
        };
        let sink = match &plan.copy_statement {
            Some(statement) => {
                let action = || format!("COPY into {}", plan.table);
                let mut sink: Pin<Box<CopyInSink<Bytes>>> = Box::pin(
                    self.session
                        .client()
                        .copy_in(statement.as_str())
                        .await
                        .map_err(|err| classify(&action(), &err))?,
                );
                sink.send(encode::copy_header().freeze())
                    .await
                    .map_err(|err| classify(&action(), &err))?;
                Some(sink)
            }
            None => None,
        };
        self.copy = Some(Copy {
            plan,
            plan_to_remember,
            sink,
        });
        Ok(())
    }
}

#[async_trait]
impl SinkWriter for PostgresWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError> {
        let PostgresWriter::InTransaction(writer) = self else {
            return Ok(());
        };
        if writer.copy.is_none() {
            writer.start_copy(&batch.schema()).await?;
        }
        let copy = writer.copy.as_mut().expect("started above");
        let Some(sink) = copy.sink.as_mut() else {
            return Ok(());
        };
        let plan = &copy.plan;
        // Encoding is a tight loop over one batch, small next to decoding,
        // so it stays on the runtime thread. One batch at a time is in
        // memory; `send` waits for the server to take it.
        let encoded = encode::encode_batch(&batch, &plan.targets, &plan.column_names, writer.rows)
            .map_err(|reason| {
                SinkError::permanent(format!("COPY into {}: {reason}", plan.table))
            })?;
        sink.send(encoded.freeze())
            .await
            .map_err(|err| classify(&format!("COPY into {}", plan.table), &err))?;
        writer.rows += batch.num_rows() as u64;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<CommitReceipt, SinkError> {
        let mut writer = match *self {
            PostgresWriter::AlreadyCommitted { table, rows } => {
                return Ok(CommitReceipt {
                    location: table,
                    rows,
                    already_committed: true,
                });
            }
            PostgresWriter::InTransaction(writer) => writer,
        };
        let mut location = writer.key.table.clone();
        let mut plan_to_remember = None;
        if let Some(copy) = writer.copy.take() {
            location = copy.plan.table.clone();
            if let Some(mut sink) = copy.sink {
                let action = || format!("COPY into {location}");
                sink.send(encode::copy_trailer().freeze())
                    .await
                    .map_err(|err| classify(&action(), &err))?;
                let copied = sink
                    .as_mut()
                    .finish()
                    .await
                    .map_err(|err| classify(&action(), &err))?;
                debug_assert_eq!(copied, writer.rows);
            }
            plan_to_remember = copy.plan_to_remember.map(|key| (key, copy.plan));
        }
        let client = writer.session.client();
        let ledger = &writer.ledger;
        let rows = i64::try_from(writer.rows).unwrap_or(i64::MAX);
        let mut params = writer.key.params().to_vec();
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
        // A connection lost during COMMIT leaves the outcome unknown; that
        // is transient, and the redelivery asks the ledger.
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|err| classify(&format!("commit into {location}"), &err))?;
        tracing::debug!(
            sink = writer.sink,
            table = location,
            rows,
            "postgres transaction committed"
        );
        if let Some((cache_key, plan)) = plan_to_remember {
            writer.target.remember(cache_key, plan);
        }
        let rows = writer.rows;
        writer.session.release();
        Ok(CommitReceipt {
            location,
            rows,
            already_committed: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    fn config(extra: &str) -> Result<PostgresSinkConfig, String> {
        let text = format!("table = \"public.orders\"\n{extra}");
        let config: PostgresSinkConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        config
            .validate()
            .map_err(|(field, message)| format!("{field}: {message}"))?;
        Ok(config)
    }

    #[test]
    fn config_needs_exactly_one_secret_free_connection_source() {
        let ok = config("url_env = \"PG_URL\"").unwrap();
        assert_eq!(ok.ledger_table, "s3_ingest_ledger");
        assert_eq!(ok.pool_size.get(), 4);
        assert!(!ok.create_table);
        assert!(config("").unwrap_err().starts_with("url_env:"));
        assert!(
            config("url = \"postgres://u:secret@h/db\"")
                .unwrap_err()
                .contains("password")
        );
        assert!(config("url = \"postgres://u@h/db\"\npassword_env = \"PGPASS\"").is_ok());
        assert!(
            config("url_env = \"A\"\nurl = \"postgres://h\"")
                .unwrap_err()
                .starts_with("url:")
        );
        assert!(
            config("url_env = \"not a name\"")
                .unwrap_err()
                .starts_with("url_env:")
        );
        assert!(config("url_env = \"A\"\npool_size = 0").is_err());
        assert!(
            config("url_env = \"A\"\nledger_table = \"a.b.c\"")
                .unwrap_err()
                .starts_with("ledger_table:")
        );
        assert!(
            config("url_env = \"A\"\nschema = \"x\"").is_err(),
            "unknown keys are rejected"
        );
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../../examples/sink-postgres.toml");
        let config = crate::config::Config::from_toml_str(text).unwrap();
        match &config.sinks["warehouse"] {
            crate::config::SinkConfig::Postgres(sink) => {
                assert_eq!(sink.url_env.as_deref(), Some("ORDERS_PG_URL"));
            }
            other => panic!("unexpected sink {other:?}"),
        }
    }

    #[test]
    fn a_missing_environment_variable_is_a_clear_start_up_error() {
        let config = config("url_env = \"S3I_TEST_SURELY_UNSET_PG_URL\"").unwrap();
        let err = config.connection_config("warehouse").unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.detail.contains("S3I_TEST_SURELY_UNSET_PG_URL") && err.detail.contains("warehouse"),
            "{}",
            err.detail
        );
    }

    #[test]
    fn verifying_sslmodes_are_accepted_as_require() {
        assert!(
            config("url_env = \"A\"\nca_file = \"\"")
                .unwrap_err()
                .starts_with("ca_file:")
        );
        let sink = config("url = \"postgres://u@h/db?sslmode=verify-full\"").unwrap();
        let connection = sink.connection_config("warehouse").unwrap();
        assert_eq!(connection.get_ssl_mode(), SslMode::Require);
        // libpq's sslrootcert is not understood: the message names it.
        assert!(
            config("url = \"postgres://h/db?sslrootcert=/etc/rds.pem\"")
                .unwrap_err()
                .contains("unknown option `sslrootcert`")
        );
    }

    #[test]
    fn names_are_quoted_exactly_as_written() {
        assert_eq!(QualifiedName::parse("Orders").unwrap().sql(), "\"Orders\"");
        assert_eq!(
            QualifiedName::parse("raw.a\"b").unwrap().sql(),
            "\"raw\".\"a\"\"b\""
        );
        assert!(QualifiedName::parse("a..b").is_err());
    }

    #[test]
    fn sqlstates_split_into_outage_retry_and_dead_letter() {
        // The server is out: not counted against the file while it lasts.
        for code in [
            "08006", "08001", "57P01", "57P02", "57P03", "53100", "53300", "58030",
        ] {
            assert!(is_unavailable_sqlstate(code), "{code}");
            assert!(!is_transient_sqlstate(code), "{code}");
        }
        // Worth another try, which counts.
        for code in ["40001", "40P01", "55P03", "57014", "25P02", "28P01"] {
            assert!(is_transient_sqlstate(code), "{code}");
            assert!(!is_unavailable_sqlstate(code), "{code}");
        }
        // The data: dead-lettered.
        for code in [
            "23505", "23502", "22003", "42P01", "42703", "42501", "22P03",
        ] {
            assert!(!is_transient_sqlstate(code), "{code}");
            assert!(!is_unavailable_sqlstate(code), "{code}");
        }
    }

    fn column(
        name: &str,
        pg_type: Option<PgType>,
        not_null: bool,
        has_default: bool,
    ) -> TableColumn {
        TableColumn {
            name: name.into(),
            pg_type,
            type_name: format!("{pg_type:?}"),
            not_null,
            has_default,
            generated: false,
        }
    }

    #[test]
    fn plans_name_the_mismatched_column() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let table = || "public.t".to_owned();
        let columns = [
            column("id", Some(PgType::Int4), true, false),
            column("name", Some(PgType::Text), false, false),
            column("loaded_at", Some(PgType::Timestamptz), true, true),
        ];
        let plan = plan_copy(table(), &schema, &columns).unwrap();
        assert_eq!(
            plan.copy_statement.as_deref(),
            Some("COPY public.t (\"id\", \"name\") FROM STDIN (FORMAT binary)")
        );

        let err = plan_copy(table(), &schema, &columns[..1]).err().unwrap();
        assert!(err.contains("no column `name`"), "{err}");
        let wrong_type = [
            column("id", Some(PgType::Int8), true, false),
            column("name", Some(PgType::Date), false, false),
        ];
        let err = plan_copy(table(), &schema, &wrong_type).err().unwrap();
        assert!(
            err.contains("column `name`") && err.contains("Utf8"),
            "{err}"
        );
        let mut required = columns.to_vec();
        required.push(column("tenant", Some(PgType::Text), true, false));
        let err = plan_copy(table(), &schema, &required).err().unwrap();
        assert!(
            err.contains("`tenant`") && err.contains("NOT NULL"),
            "{err}"
        );
    }
}
