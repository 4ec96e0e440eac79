//! One object's open transaction: [`PostgresWriter`] COPYs the batches as
//! they arrive and commits them together with the ledger row; [`Session`]
//! lets a connection back into the pool only after COMMIT or ROLLBACK.

use std::pin::Pin;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::Object;
use futures::SinkExt;
use tokio_postgres::CopyInSink;

use super::encode;
use super::errors::classify;
use super::ledger::LedgerKey;
use super::table::{CopyPlan, Target};
use crate::sink::{CommitReceipt, SinkError, SinkWriter};

/// A pooled connection that goes back to the pool only through
/// [`Session::release`], after a COMMIT or ROLLBACK succeeded. Dropped
/// otherwise, it is detached from the pool and closed, which makes the
/// server roll back whatever transaction it had open.
pub(super) struct Session {
    pub(super) client: Option<Object>,
}

impl Session {
    pub(super) fn client(&self) -> &tokio_postgres::Client {
        self.client.as_ref().expect("session in use")
    }

    pub(super) fn release(mut self) {
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

pub(super) enum PostgresWriter {
    /// The ledger already holds this version: batches are discarded and
    /// the commit reports what the first delivery committed.
    AlreadyCommitted { table: String, rows: u64 },
    /// The ledger row is claimed in an open transaction.
    InTransaction(Box<InTransaction>),
}

/// A COPY started on the first batch.
pub(super) struct Copy {
    pub(super) plan: Arc<CopyPlan>,
    /// Cache key of a plan to remember once the transaction commits.
    pub(super) plan_to_remember: Option<String>,
    /// `None` when the file has no columns.
    sink: Option<Pin<Box<CopyInSink<Bytes>>>>,
}

pub(super) struct InTransaction {
    /// Dropped without `commit`: the connection closes, the server rolls
    /// back.
    pub(super) session: Session,
    pub(super) target: Arc<Target>,
    /// `None` until the first batch.
    pub(super) copy: Option<Copy>,
    pub(super) ledger: String,
    pub(super) key: LedgerKey,
    pub(super) sink: String,
    pub(super) rows: u64,
    /// The route's contract outcome for the file, as JSON.
    pub(super) contract: Option<String>,
    /// The file's new columns are added to the table (`add_columns`).
    pub(super) add_columns: bool,
}

impl InTransaction {
    /// Plans (cached, or checked/created in this transaction) and starts
    /// the COPY for the first batch's schema.
    async fn start_copy(&mut self, schema: &SchemaRef) -> Result<(), SinkError> {
        self.copy = Some(Copy::start(&self.session, &self.target, schema, self.add_columns).await?);
        Ok(())
    }
}

impl Copy {
    /// Plans the COPY for `schema` (cached, or checked/created in the
    /// session's open transaction) and starts it.
    pub(super) async fn start(
        session: &Session,
        target: &Target,
        schema: &SchemaRef,
        add_columns: bool,
    ) -> Result<Copy, SinkError> {
        let cache_key = Target::cache_key(schema);
        let (plan, plan_to_remember) = match target.cached(&cache_key) {
            Some(plan) => (plan, None),
            None => (
                Arc::new(target.plan(session, schema, add_columns).await?),
                Some(cache_key),
            ),
        };
        Copy::begin(session, plan, plan_to_remember).await
    }

    /// Starts a COPY by `plan` (already checked in this transaction, or
    /// cached). `plan_to_remember`: the cache key, for a plan made in it.
    pub(super) async fn begin(
        session: &Session,
        plan: Arc<CopyPlan>,
        plan_to_remember: Option<String>,
    ) -> Result<Copy, SinkError> {
        let sink = match &plan.copy_statement {
            Some(statement) => {
                let action = || format!("COPY into {}", plan.table);
                let mut sink: Pin<Box<CopyInSink<Bytes>>> = Box::pin(
                    session
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
        Ok(Copy {
            plan,
            plan_to_remember,
            sink,
        })
    }

    /// Encodes and sends one batch; `rows_before` numbers its rows in
    /// errors. Returns the bytes sent.
    pub(super) async fn send(
        &mut self,
        batch: &RecordBatch,
        rows_before: u64,
    ) -> Result<usize, SinkError> {
        let Some(sink) = self.sink.as_mut() else {
            return Ok(0);
        };
        let plan = &self.plan;
        // Encoding is a tight loop over one batch, small next to decoding,
        // so it stays on the runtime thread. One batch at a time is in
        // memory; `send` waits for the server to take it.
        let encoded = encode::encode_batch(batch, &plan.targets, &plan.column_names, rows_before)
            .map_err(|reason| {
            SinkError::permanent(format!("COPY into {}: {reason}", plan.table))
        })?;
        let bytes = encoded.len();
        sink.send(encoded.freeze())
            .await
            .map_err(|err| classify(&format!("COPY into {}", plan.table), &err))?;
        Ok(bytes)
    }

    /// Ends the COPY; returns the table and the plan to remember once the
    /// transaction commits.
    pub(super) async fn finish(
        self,
        rows: u64,
    ) -> Result<(String, Option<(String, Arc<CopyPlan>)>), SinkError> {
        let location = self.plan.table.clone();
        if let Some(mut sink) = self.sink {
            let action = || format!("COPY into {location}");
            sink.send(encode::copy_trailer().freeze())
                .await
                .map_err(|err| classify(&action(), &err))?;
            let copied = sink
                .as_mut()
                .finish()
                .await
                .map_err(|err| classify(&action(), &err))?;
            debug_assert_eq!(copied, rows);
        }
        Ok((location, self.plan_to_remember.map(|key| (key, self.plan))))
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
        copy.send(&batch, writer.rows).await?;
        writer.rows += batch.num_rows() as u64;
        Ok(())
    }

    fn record_contract(&mut self, outcome: &crate::contract::ContractOutcome) {
        if let PostgresWriter::InTransaction(writer) = self {
            writer.contract = Some(outcome.to_json());
        }
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
            (location, plan_to_remember) = copy.finish(writer.rows).await?;
        }
        let client = writer.session.client();
        let ledger = &writer.ledger;
        let rows = i64::try_from(writer.rows).unwrap_or(i64::MAX);
        writer
            .key
            .record_commit(client, ledger, rows, writer.contract.as_deref())
            .await?;
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
