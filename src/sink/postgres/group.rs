//! A group of small objects (a route's `group`, see `group.rs` at the
//! crate root) in one transaction: one COMMIT, and one fsync of the
//! server's log, for many objects instead of one each.
//!
//! ```text
//! open    BEGIN
//! add     SAVEPOINT object; INSERT ledger row ON CONFLICT DO NOTHING,
//!           waiting at most CLAIM_LOCK_TIMEOUT for a concurrent holder
//!           0 rows      → RELEASE: already committed
//!           lock timeout, deadlock → ROLLBACK TO SAVEPOINT: claimed elsewhere
//!         COPY the object's rows; UPDATE its ledger row (rows, committed_at)
//!           the server refuses the rows (a constraint, a type) →
//!           ROLLBACK TO SAVEPOINT: refused, the group goes on without them
//!         RELEASE SAVEPOINT
//! commit  COMMIT
//! ```
//!
//! Each object's ledger row is written in the group's transaction, so its
//! rows and its row in the ledger commit together, as for one object. A
//! concurrent duplicate waits on the ledger key only briefly: another
//! group may hold it for up to its age, and the message is better handed
//! back than holding this group. `committed_at` is when the group's
//! transaction began, the same for all its objects.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_postgres::error::SqlState;

use super::errors::classify;
use super::ledger::LedgerKey;
use super::table::{CopyPlan, Target};
use super::writer::{Copy, Session};
use crate::sink::{CommitReceipt, GroupMember, GroupWriter, Joined, SinkError, SinkFailure};

/// How long a group waits for another transaction holding an object's
/// ledger key before it hands the object back.
/// Below PostgreSQL's default `deadlock_timeout` (1 s): two groups
/// claiming two duplicates in opposite orders time out here, each handing
/// its object back, before the server picks one to fail as a deadlock.
const CLAIM_LOCK_TIMEOUT: &str = "500ms";

pub(super) struct PostgresGroup {
    /// Dropped without `commit`: the connection closes, the server rolls
    /// back.
    pub(super) session: Session,
    pub(super) target: Arc<Target>,
    pub(super) ledger: String,
    pub(super) sink: String,
    /// The table's plan for the group's schema, made (and checked) in this
    /// transaction by the first object, and whether to cache it after the
    /// commit.
    pub(super) plan: Option<(Arc<CopyPlan>, Option<String>)>,
    pub(super) rows: u64,
    pub(super) bytes: u64,
    /// New columns of the group's schema are added to the table
    /// (`add_columns`).
    pub(super) add_columns: bool,
}

impl PostgresGroup {
    async fn execute(&self, sql: &str) -> Result<(), SinkError> {
        self.session
            .client()
            .batch_execute(sql)
            .await
            .map_err(|err| classify(sql, &err))
    }

    /// COPYs one object's batches and records its commit in the ledger.
    async fn copy_member(
        &mut self,
        member: &GroupMember,
        key: &LedgerKey,
    ) -> Result<u64, SinkError> {
        let mut rows = 0u64;
        let mut bytes = 0u64;
        if let Some(first) = member.batches.first() {
            let mut copy = match &self.plan {
                Some((plan, _)) => Copy::begin(&self.session, plan.clone(), None).await?,
                None => {
                    let copy = Copy::start(
                        &self.session,
                        &self.target,
                        &first.schema(),
                        self.add_columns,
                    )
                    .await?;
                    self.plan = Some((copy.plan.clone(), copy.plan_to_remember.clone()));
                    copy
                }
            };
            for batch in &member.batches {
                bytes += copy.send(batch, rows).await? as u64;
                rows += batch.num_rows() as u64;
            }
            copy.finish(rows).await?;
        }
        let recorded = i64::try_from(rows).unwrap_or(i64::MAX);
        let contract = member.contract.as_ref().map(|outcome| outcome.to_json());
        key.record_group_commit(
            self.session.client(),
            &self.ledger,
            recorded,
            contract.as_deref(),
        )
        .await?;
        self.bytes += bytes;
        Ok(rows)
    }
}

#[async_trait]
impl GroupWriter for PostgresGroup {
    async fn add(&mut self, member: &GroupMember) -> Result<Joined, SinkError> {
        let lineage = &member.lineage;
        let key = LedgerKey::new(&self.target.configured, lineage);
        self.execute(&format!(
            "SAVEPOINT object; SET LOCAL lock_timeout = '{CLAIM_LOCK_TIMEOUT}'"
        ))
        .await?;
        let claimed = key
            .try_claim(self.session.client(), &self.ledger, lineage, &self.sink)
            .await;
        let inserted = match claimed {
            Ok(inserted) => inserted,
            Err(err)
                if err.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
                    || err.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) =>
            {
                self.execute("ROLLBACK TO SAVEPOINT object; RELEASE SAVEPOINT object")
                    .await?;
                return Ok(Joined::ClaimedElsewhere);
            }
            Err(err) => {
                return Err(classify(
                    &format!("insert into ledger {}", self.ledger),
                    &err,
                ));
            }
        };
        self.execute("SET LOCAL lock_timeout TO DEFAULT").await?;
        if inserted == 0 {
            self.execute("RELEASE SAVEPOINT object").await?;
            return Ok(Joined::AlreadyCommitted);
        }
        // A plan made by this object's COPY was checked (and the table
        // perhaps created) inside its savepoint: kept only if it stays.
        let had_plan = self.plan.is_some();
        match self.copy_member(member, &key).await {
            Ok(rows) => {
                self.execute("RELEASE SAVEPOINT object").await?;
                self.rows += rows;
                Ok(Joined::Added)
            }
            // The server refused these rows: undo them (and their ledger
            // row) and go on with the group.
            Err(err) if err.class == SinkFailure::Permanent => {
                self.execute("ROLLBACK TO SAVEPOINT object; RELEASE SAVEPOINT object")
                    .await?;
                if !had_plan {
                    self.plan = None;
                }
                Ok(Joined::Refused(err.detail))
            }
            Err(err) => Err(err),
        }
    }

    fn output_bytes(&self) -> u64 {
        self.bytes
    }

    async fn commit(self: Box<Self>) -> Result<CommitReceipt, SinkError> {
        let location = match &self.plan {
            Some((plan, _)) => plan.table.clone(),
            None => self.target.configured.clone(),
        };
        // A connection lost during COMMIT leaves the outcome unknown; that
        // is transient, and each redelivery asks the ledger.
        self.execute("COMMIT").await?;
        tracing::debug!(
            sink = self.sink,
            table = location,
            rows = self.rows,
            "postgres group committed"
        );
        let PostgresGroup {
            session,
            target,
            plan,
            rows,
            ..
        } = *self;
        if let Some((plan, Some(cache_key))) = plan {
            target.remember(cache_key, plan);
        }
        session.release();
        Ok(CommitReceipt {
            location,
            rows,
            already_committed: false,
        })
    }
}
