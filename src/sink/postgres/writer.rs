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
    plan: Arc<CopyPlan>,
    /// Cache key of a plan to remember once the transaction commits.
    plan_to_remember: Option<String>,
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
        writer.key.record_commit(client, ledger, rows).await?;
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
