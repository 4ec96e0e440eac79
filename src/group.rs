//! Small-file groups: the rows of many small objects of one route (from
//! one bucket, with one schema) written as one output per sink and
//! committed together.
//!
//! ```text
//! object task: decode whole ──join──► group task (one per route, bucket, schema)
//!    │ slot freed, message           add(member) to each sink's GroupWriter
//!    │ still leased                  … until max_bytes, max_age or shutdown
//!    ▼                               commit each writer in the route's order
//! GroupTicket ◄──────────────────── one answer per member
//! ```
//!
//! Exactly once rests on the sinks' ledgers, not on the group: each
//! writer claims every member in its ledger as it adds it, and a member
//! the sink already holds, or another live writer has claimed, adds no
//! rows. A crash at any point leaves either the whole group committed or
//! claims that lead nowhere (see `sink/parquet_dir/group.rs`).
//!
//! A group that fails fails all its members (each message is retried);
//! nothing of it is visible.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::GroupConfig;
use crate::error::IngestError;
use crate::ingest::Committed;
use crate::sink::{CommitReceipt, GroupMember, GroupWriter, Joined, Sink, SinkError};

/// Objects handed to a group task and not yet added: their rows are in
/// memory, so the queue is short (joiners wait, holding their slots).
const JOIN_QUEUE: usize = 4;

/// What became of one object offered to a group.
#[derive(Debug)]
pub enum GroupOutcome {
    /// Every sink of the route holds it now (or held it already).
    Committed(Committed),
    /// A sink's ledger shows another live writer holding it, uncommitted:
    /// a duplicate delivery is being written elsewhere. The message should
    /// come back after a while, when that writer has committed or died.
    ClaimedElsewhere { sink: String },
}

/// Waits for the group an object joined.
pub struct GroupTicket {
    uri: String,
    answer: oneshot::Receiver<Result<GroupOutcome, IngestError>>,
}

/// Where a group answers one member.
pub type GroupAnswer = oneshot::Sender<Result<GroupOutcome, IngestError>>;

impl GroupTicket {
    /// A ticket and the sender that answers it (the worker's tests script
    /// groups with it).
    pub fn channel(uri: &str) -> (GroupAnswer, GroupTicket) {
        let (answer, answered) = oneshot::channel();
        (
            answer,
            GroupTicket {
                uri: uri.to_owned(),
                answer: answered,
            },
        )
    }

    pub async fn outcome(self) -> Result<GroupOutcome, IngestError> {
        // A group task that vanished (the runtime shutting down) committed
        // nothing it could still answer for: retry the object.
        self.answer
            .await
            .unwrap_or(Err(IngestError::Abandoned { uri: self.uri }))
    }
}

/// The open groups of every route.
pub struct Groups {
    open: Mutex<HashMap<GroupKey, OpenGroup>>,
    /// Cancelled at shutdown: open groups commit now, new ones at once.
    flushing: CancellationToken,
    next_id: AtomicU64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    route: String,
    bucket: String,
    schema: SchemaRef,
}

struct OpenGroup {
    id: u64,
    joins: mpsc::Sender<Join>,
}

/// One object joining: its rows and where to answer.
struct Join {
    member: GroupMember,
    batches: u64,
    answer: GroupAnswer,
}

impl Default for Groups {
    fn default() -> Self {
        Groups::new()
    }
}

impl Groups {
    pub fn new() -> Groups {
        Groups {
            open: Mutex::new(HashMap::new()),
            flushing: CancellationToken::new(),
            next_id: AtomicU64::new(0),
        }
    }

    /// Shutdown: commit every open group now, and any group opened from
    /// here on as soon as its first object is in.
    pub fn flush_all(&self) {
        self.flushing.cancel();
    }

    /// Hands `member` (decoded whole, `batches` batches) to the open group
    /// of its route, bucket and schema, opening one if there is none.
    /// `sinks` are the route's, in commit order. Waits while the group's
    /// queue is full.
    pub async fn join(
        self: &Arc<Self>,
        sinks: &[Arc<dyn Sink>],
        settings: GroupConfig,
        member: GroupMember,
        batches: u64,
        schema: SchemaRef,
    ) -> GroupTicket {
        let uri = format!("s3://{}/{}", member.lineage.bucket, member.lineage.key);
        let key = GroupKey {
            route: member.lineage.route.clone(),
            bucket: member.lineage.bucket.clone(),
            schema,
        };
        let (answer, ticket) = GroupTicket::channel(&uri);
        let mut join = Join {
            member,
            batches,
            answer,
        };
        loop {
            let joins = self.open_group(&key, sinks, settings);
            match joins.send(join).await {
                Ok(()) => break,
                // The group closed in between: the next one takes it.
                Err(mpsc::error::SendError(returned)) => join = returned,
            }
        }
        ticket
    }

    /// The open group for `key`, started if there is none (or it closed).
    fn open_group(
        self: &Arc<Self>,
        key: &GroupKey,
        sinks: &[Arc<dyn Sink>],
        settings: GroupConfig,
    ) -> mpsc::Sender<Join> {
        let mut open = self.open.lock().expect("groups lock is never poisoned");
        if let Some(group) = open.get(key)
            && !group.joins.is_closed()
        {
            return group.joins.clone();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (joins, receiver) = mpsc::channel(JOIN_QUEUE);
        open.insert(
            key.clone(),
            OpenGroup {
                id,
                joins: joins.clone(),
            },
        );
        let task = GroupTask {
            groups: self.clone(),
            id,
            key: key.clone(),
            sinks: sinks.to_vec(),
            settings,
            writers: None,
            members: Vec::new(),
            failed: None,
        };
        tokio::spawn(task.run(receiver));
        joins
    }

    /// Takes group `id` out of the open ones, so new objects start another.
    fn close(&self, key: &GroupKey, id: u64) {
        let mut open = self.open.lock().expect("groups lock is never poisoned");
        if open.get(key).is_some_and(|group| group.id == id) {
            open.remove(key);
        }
    }
}

/// A member waiting for its group's commit.
struct Waiting {
    member_lineage: crate::sink::Lineage,
    rows: u64,
    batches: u64,
    /// What each sink's writer said when it was offered, in sink order.
    joined: Vec<Joined>,
    answer: GroupAnswer,
}

/// One group, from its first object to its commit.
struct GroupTask {
    groups: Arc<Groups>,
    id: u64,
    key: GroupKey,
    sinks: Vec<Arc<dyn Sink>>,
    settings: GroupConfig,
    /// One per sink, opened with the first object.
    writers: Option<Vec<Box<dyn GroupWriter>>>,
    members: Vec<Waiting>,
    /// The first failure: the group then adds nothing more and commits
    /// nothing; every member gets an error.
    failed: Option<(String, SinkError)>,
}

impl GroupTask {
    async fn run(mut self, mut joins: mpsc::Receiver<Join>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.settings.max_age_secs);
        let flushing = self.groups.flushing.clone();
        loop {
            tokio::select! {
                biased;
                _ = flushing.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                join = joins.recv() => match join {
                    Some(join) => {
                        self.add(join).await;
                        if self.failed.is_some() || self.output_bytes() >= self.settings.max_bytes.get() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        // No new object joins from here; those already queued are in.
        self.groups.close(&self.key, self.id);
        joins.close();
        while let Some(join) = joins.recv().await {
            self.add(join).await;
        }
        self.commit().await;
    }

    fn output_bytes(&self) -> u64 {
        self.writers.as_ref().map_or(0, |writers| {
            writers
                .iter()
                .map(|writer| writer.output_bytes())
                .max()
                .unwrap_or(0)
        })
    }

    /// Offers one object to every sink's writer.
    async fn add(&mut self, join: Join) {
        let mut joined = Vec::with_capacity(self.sinks.len());
        if self.failed.is_none() {
            if let Err(failure) = self.open_writers().await {
                self.failed = Some(failure);
            }
        }
        if self.failed.is_none() {
            let writers = self.writers.as_mut().expect("opened above");
            for (sink, writer) in self.sinks.iter().zip(writers.iter_mut()) {
                match writer.add(&join.member).await {
                    Ok(answer) => joined.push(answer),
                    Err(err) => {
                        self.failed = Some((sink.name().to_owned(), err));
                        break;
                    }
                }
            }
        }
        self.members.push(Waiting {
            member_lineage: join.member.lineage,
            rows: join.member.rows,
            batches: join.batches,
            joined,
            answer: join.answer,
        });
    }

    async fn open_writers(&mut self) -> Result<(), (String, SinkError)> {
        if self.writers.is_some() {
            return Ok(());
        }
        let mut writers = Vec::with_capacity(self.sinks.len());
        for sink in &self.sinks {
            let writer = sink
                .open_group(&self.key.bucket, &self.key.route, self.key.schema.clone())
                .await
                .map_err(|err| (sink.name().to_owned(), err))?;
            writers.push(writer);
        }
        self.writers = Some(writers);
        Ok(())
    }

    /// Commits each sink's writer in the route's order, then answers
    /// every member.
    async fn commit(mut self) {
        let mut receipts: Vec<(String, CommitReceipt)> = Vec::new();
        if self.failed.is_none()
            && let Some(writers) = self.writers.take()
        {
            for (sink, writer) in self.sinks.iter().zip(writers) {
                match writer.commit().await {
                    Ok(receipt) => receipts.push((sink.name().to_owned(), receipt)),
                    Err(err) => {
                        self.failed = Some((sink.name().to_owned(), err));
                        break;
                    }
                }
            }
        }
        let group_rows: u64 = self
            .members
            .iter()
            .filter(|member| member.joined.contains(&Joined::Added))
            .map(|member| member.rows)
            .sum();
        if let Some((sink, err)) = &self.failed {
            tracing::warn!(route = %self.key.route, bucket = %self.key.bucket, sink = %sink,
                objects = self.members.len(), error = %err,
                "group failed: none of its objects committed; each will be retried");
        } else if !self.members.is_empty() {
            tracing::info!(route = %self.key.route, bucket = %self.key.bucket,
                objects = self.members.len(), rows = group_rows,
                locations = %receipts.iter().map(|(_, r)| r.location.as_str()).collect::<Vec<_>>().join(", "),
                "group committed");
        }
        for member in self.members {
            let uri = format!(
                "s3://{}/{}",
                member.member_lineage.bucket, member.member_lineage.key
            );
            let outcome = match &self.failed {
                Some((sink, err)) => Err(IngestError::from_sink(&uri, sink, group_failure(err))),
                None => Ok(member_outcome(&self.sinks, &receipts, member.joined, {
                    Committed {
                        lineage: member.member_lineage,
                        rows: member.rows,
                        batches: member.batches,
                        receipts: Vec::new(),
                    }
                })),
            };
            // The object's task may be gone (its lease lost, shutdown's
            // grace over): its message is redelivered and found committed.
            let _ = member.answer.send(outcome);
        }
    }
}

/// A member's outcome from what each sink said when it was offered.
fn member_outcome(
    sinks: &[Arc<dyn Sink>],
    receipts: &[(String, CommitReceipt)],
    joined: Vec<Joined>,
    mut committed: Committed,
) -> GroupOutcome {
    for ((sink, answer), (_, receipt)) in sinks.iter().zip(&joined).zip(receipts) {
        match answer {
            Joined::ClaimedElsewhere => {
                return GroupOutcome::ClaimedElsewhere {
                    sink: sink.name().to_owned(),
                };
            }
            Joined::Added | Joined::AlreadyCommitted => committed.receipts.push((
                sink.name().to_owned(),
                CommitReceipt {
                    location: receipt.location.clone(),
                    rows: committed.rows,
                    already_committed: *answer == Joined::AlreadyCommitted,
                },
            )),
        }
    }
    GroupOutcome::Committed(committed)
}

/// The group's failure as seen by one member: the sink's class, so an
/// outage is an outage for each, but never permanent. A permanent failure
/// is the data of one member or the group's own; the others' rows are
/// fine, and a retry lands them in another group.
fn group_failure(err: &SinkError) -> SinkError {
    let detail = format!("the group this object joined failed: {}", err.detail);
    match &err.class {
        crate::sink::SinkFailure::Permanent => SinkError::transient(detail),
        class => SinkError {
            detail,
            class: class.clone(),
        },
    }
}
