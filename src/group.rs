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
        let join = Join {
            member,
            batches,
            answer,
        };
        self.send(&key, sinks, settings, join).await;
        ticket
    }

    /// Sends `join` to the open group for `key`.
    async fn send(
        self: &Arc<Self>,
        key: &GroupKey,
        sinks: &[Arc<dyn Sink>],
        settings: GroupConfig,
        mut join: Join,
    ) {
        loop {
            let joins = self.open_group(key, sinks, settings);
            match joins.send(join).await {
                Ok(()) => return,
                // The group closed in between: the next one takes it.
                Err(mpsc::error::SendError(returned)) => join = returned,
            }
        }
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
            culprit: None,
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
    contract: Option<crate::contract::ContractOutcome>,
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
    /// The member whose adding failed, if one did (not the commit, nor
    /// opening the writers): it gets the failure as it is.
    culprit: Option<usize>,
}

impl GroupTask {
    async fn run(mut self, mut joins: mpsc::Receiver<Join>) {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.settings.max_age_secs);
        let flushing = self.groups.flushing.clone();
        // The object that opened the group is on its way (`Groups::send`
        // sends right after opening): take it before anything can close
        // the group, or a group opened during shutdown could close empty
        // again and again.
        // (Bounded by the age all the same: a joiner dropped before its
        // send, its lease lost, must not leave the group open forever.)
        tokio::select! {
            join = joins.recv() => match join {
                Some(join) => self.add(join).await,
                None => return,
            },
            _ = tokio::time::sleep_until(deadline) => {}
        }
        while self.failed.is_none() && self.output_bytes() < self.settings.max_bytes.get() {
            tokio::select! {
                biased;
                _ = flushing.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                join = joins.recv() => match join {
                    Some(join) => self.add(join).await,
                    None => break,
                },
            }
        }
        // No new object joins from here. Those already queued go to the
        // next group, so outputs stay near `max_bytes` (and a failed
        // group fails no more objects); at shutdown they are committed
        // with this one.
        self.groups.close(&self.key, self.id);
        joins.close();
        let mut for_next_group = Vec::new();
        while let Some(join) = joins.recv().await {
            if flushing.is_cancelled() {
                self.add(join).await;
            } else {
                for_next_group.push(join);
            }
        }
        // Committed before handing the rest on: the next group may need
        // what this one holds until it commits (a pooled connection, a
        // table's creation lock), and its queue may be full.
        let (groups, key, sinks, settings) = (
            self.groups.clone(),
            self.key.clone(),
            self.sinks.clone(),
            self.settings,
        );
        self.commit().await;
        for join in for_next_group {
            groups.send(&key, &sinks, settings, join).await;
        }
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
        if self.failed.is_none()
            && let Err(failure) = self.open_writers().await
        {
            self.failed = Some(failure);
        }
        if self.failed.is_none() {
            let writers = self.writers.as_mut().expect("opened above");
            for (sink, writer) in self.sinks.iter().zip(writers.iter_mut()) {
                match writer.add(&join.member).await {
                    // Refused by one sink: dead-lettered, so the later
                    // sinks must not commit its rows either.
                    Ok(refused @ Joined::Refused(_)) => {
                        joined.push(refused);
                        break;
                    }
                    Ok(answer) => joined.push(answer),
                    Err(err) => {
                        self.failed = Some((sink.name().to_owned(), err));
                        self.culprit = Some(self.members.len());
                        break;
                    }
                }
            }
        }
        self.members.push(Waiting {
            member_lineage: join.member.lineage,
            contract: join.member.contract.clone(),
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
            crate::telemetry::group_failed(&self.key.route);
            tracing::warn!(route = %self.key.route, bucket = %self.key.bucket, sink = %sink,
                objects = self.members.len(), error = %err,
                "group failed: none of its objects committed; each will be retried");
        } else if !self.members.is_empty() {
            let added = self
                .members
                .iter()
                .filter(|member| member.joined.contains(&Joined::Added))
                .count();
            crate::telemetry::group_committed(&self.key.route, added);
            tracing::info!(route = %self.key.route, bucket = %self.key.bucket,
                objects = self.members.len(), rows = group_rows,
                locations = %receipts.iter().map(|(_, r)| r.location.as_str()).collect::<Vec<_>>().join(", "),
                "group committed");
        }
        for (index, member) in self.members.into_iter().enumerate() {
            let uri = format!(
                "s3://{}/{}",
                member.member_lineage.bucket, member.member_lineage.key
            );
            let outcome = match &self.failed {
                // Its own rows failed: its own error (a permanent one
                // dead-letters it at once, so it fails no second group).
                Some((sink, err)) if self.culprit == Some(index) => {
                    Err(IngestError::from_sink(&uri, sink, copy_error(err)))
                }
                Some((sink, err)) => Err(IngestError::from_sink(&uri, sink, group_failure(err))),
                None => member_outcome(&self.sinks, &receipts, member.joined, {
                    Committed {
                        lineage: member.member_lineage,
                        rows: member.rows,
                        batches: member.batches,
                        receipts: Vec::new(),
                        contract: member.contract.map(Box::new),
                    }
                }),
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
) -> Result<GroupOutcome, IngestError> {
    let uri = format!(
        "s3://{}/{}",
        committed.lineage.bucket, committed.lineage.key
    );
    for ((sink, answer), (_, receipt)) in sinks.iter().zip(&joined).zip(receipts) {
        match answer {
            Joined::ClaimedElsewhere => {
                return Ok(GroupOutcome::ClaimedElsewhere {
                    sink: sink.name().to_owned(),
                });
            }
            Joined::Refused(detail) => {
                return Err(IngestError::from_sink(
                    &uri,
                    sink.name(),
                    SinkError::permanent(detail.clone()),
                ));
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
    Ok(GroupOutcome::Committed(committed))
}

fn copy_error(err: &SinkError) -> SinkError {
    SinkError {
        detail: err.detail.clone(),
        class: err.class.clone(),
    }
}

/// The group's failure as seen by one member: the sink's class, so an
/// outage is an outage for each, but never permanent. A permanent failure
/// is the data of one member or the group's own; the others' rows are
/// fine, and a retry lands them in another group.
fn group_failure(err: &SinkError) -> SinkError {
    let detail = format!("the group this object joined failed: {}", err.detail);
    match &err.class {
        crate::sink::SinkFailure::Permanent | crate::sink::SinkFailure::Schema => {
            SinkError::transient(detail)
        }
        class => SinkError {
            detail,
            class: class.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::parquet_dir::ParquetDirSink;
    use crate::sink::{CommitState, Lineage};
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use std::num::NonZeroU64;
    use std::sync::Mutex;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]))
    }

    fn member(key: &str, values: &[i64]) -> GroupMember {
        let batch =
            RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values.to_vec()))])
                .unwrap();
        GroupMember {
            lineage: Lineage {
                bucket: "vendor".into(),
                key: key.into(),
                version_id: None,
                etag: Some(format!("etag-{key}")),
                size: 10,
                event_time: None,
                route: "small".into(),
            },
            batches: vec![batch],
            rows: values.len() as u64,
            contract: None,
        }
    }

    fn settings(max_bytes: u64) -> GroupConfig {
        GroupConfig {
            max_bytes: NonZeroU64::new(max_bytes).unwrap(),
            max_age_secs: 900,
            max_object_bytes: NonZeroU64::new(1).unwrap(),
        }
    }

    /// Every row of every Parquet file directly in `dir`, and the files.
    fn rows_in(dir: &std::path::Path) -> (Vec<i64>, Vec<String>) {
        let mut rows = Vec::new();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".parquet") {
                continue;
            }
            files.push(name);
            let file = std::fs::File::open(entry.path()).unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024)
                    .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let column = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                rows.extend(column.values().iter().copied());
            }
        }
        rows.sort_unstable();
        (rows, files)
    }

    async fn committed(ticket: GroupTicket) -> Committed {
        match ticket.outcome().await.unwrap() {
            GroupOutcome::Committed(committed) => committed,
            other => panic!("not committed: {other:?}"),
        }
    }

    #[tokio::test]
    async fn small_objects_land_in_one_file_once_and_each_reads_as_committed() {
        let dir = tempfile::tempdir().unwrap();
        let sink: Arc<dyn Sink> = Arc::new(ParquetDirSink::new("lake", dir.path().to_owned()));
        let sinks = [sink.clone()];
        let groups = Arc::new(Groups::new());
        let mut tickets = Vec::new();
        for (key, values) in [("a.csv", [1, 2]), ("b.csv", [3, 4]), ("c.csv", [5, 6])] {
            tickets.push(
                groups
                    .join(
                        &sinks,
                        settings(128 << 20),
                        member(key, &values),
                        1,
                        schema(),
                    )
                    .await,
            );
        }
        // A redelivery of `a` while its group is open: the group holds
        // the claim, so it adds nothing.
        let duplicate = groups
            .join(
                &sinks,
                settings(128 << 20),
                member("a.csv", &[1, 2]),
                1,
                schema(),
            )
            .await;
        groups.flush_all();
        for ticket in tickets {
            let committed = committed(ticket).await;
            let (_, receipt) = &committed.receipts[0];
            assert!(!receipt.already_committed);
            assert!(
                receipt.location.contains("/vendor/group-"),
                "{}",
                receipt.location
            );
        }
        let duplicate = committed(duplicate).await;
        assert!(duplicate.receipts[0].1.already_committed);

        let (rows, files) = rows_in(&dir.path().join("vendor"));
        assert_eq!(rows, [1, 2, 3, 4, 5, 6]);
        assert_eq!(files.len(), 1, "{files:?}");
        for key in ["a.csv", "b.csv", "c.csv"] {
            let lineage = member(key, &[]).lineage;
            assert_eq!(
                sink.is_committed(&lineage).await.unwrap(),
                CommitState::Committed
            );
            let details = sink.commit_details(&lineage).await.unwrap().unwrap();
            assert!(details.location.ends_with(&files[0]));
            assert_eq!(details.rows, Some(2));
        }
        let other = member("d.csv", &[]).lineage;
        assert_eq!(
            sink.is_committed(&other).await.unwrap(),
            CommitState::NotCommitted
        );

        // Delivered again later, into a new group: found committed, and
        // the new group writes no file.
        let again = groups
            .join(
                &sinks,
                settings(128 << 20),
                member("b.csv", &[3, 4]),
                1,
                schema(),
            )
            .await;
        assert!(committed(again).await.receipts[0].1.already_committed);
        assert_eq!(
            rows_in(&dir.path().join("vendor")),
            (vec![1, 2, 3, 4, 5, 6], files)
        );
    }

    #[tokio::test]
    async fn a_group_closes_at_its_size_and_the_next_object_opens_another() {
        let dir = tempfile::tempdir().unwrap();
        let sink: Arc<dyn Sink> = Arc::new(ParquetDirSink::new("lake", dir.path().to_owned()));
        let sinks = [sink];
        let groups = Arc::new(Groups::new());
        // Each object encodes to about 2 MiB (random-looking values),
        // so with 3 MiB groups every second object closes one.
        let values = |start: i64| {
            (start..start + 250_000)
                .map(|n| n.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as i64))
                .collect::<Vec<_>>()
        };
        let mut tickets = Vec::new();
        for (n, key) in ["a.csv", "b.csv", "c.csv", "d.csv"].iter().enumerate() {
            let member = member(key, &values(n as i64 * 1_000_000));
            // Closed by size, not age (the age is a backstop here).
            let settings = GroupConfig {
                max_age_secs: 60,
                ..settings(3 << 20)
            };
            tickets.push(groups.join(&sinks, settings, member, 1, schema()).await);
        }
        for ticket in tickets {
            committed(ticket).await;
        }
        let (rows, files) = rows_in(&dir.path().join("vendor"));
        assert_eq!(rows.len(), 1_000_000);
        assert_eq!(files.len(), 2, "{files:?}");
    }

    #[tokio::test]
    async fn objects_of_a_failed_group_are_retried_and_land_in_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let sink: Arc<dyn Sink> = Arc::new(ParquetDirSink::new("lake", dir.path().to_owned()));
        let sinks = [sink.clone()];
        // A group whose writer is dropped uncommitted (a failure, or a
        // worker killed: the lock goes either way) leaves its claims dead.
        {
            let mut writer = sink.open_group("vendor", "small", schema()).await.unwrap();
            assert_eq!(
                writer.add(&member("a.csv", &[1])).await.unwrap(),
                Joined::Added
            );
        }
        let lineage = member("a.csv", &[]).lineage;
        assert_eq!(
            sink.is_committed(&lineage).await.unwrap(),
            CommitState::NotCommitted
        );
        let groups = Arc::new(Groups::new());
        let ticket = groups
            .join(&sinks, settings(1), member("a.csv", &[1]), 1, schema())
            .await;
        assert!(!committed(ticket).await.receipts[0].1.already_committed);
        assert_eq!(rows_in(&dir.path().join("vendor")).0, [1]);
        assert_eq!(
            sink.is_committed(&lineage).await.unwrap(),
            CommitState::Committed
        );
    }

    #[tokio::test]
    async fn an_object_a_live_group_holds_is_claimed_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let sink: Arc<dyn Sink> = Arc::new(ParquetDirSink::new("lake", dir.path().to_owned()));
        let mut other_worker = sink.open_group("vendor", "small", schema()).await.unwrap();
        assert_eq!(
            other_worker.add(&member("a.csv", &[1])).await.unwrap(),
            Joined::Added
        );

        let groups = Arc::new(Groups::new());
        let ticket = groups
            .join(
                std::slice::from_ref(&sink),
                settings(1),
                member("a.csv", &[1]),
                1,
                schema(),
            )
            .await;
        groups.flush_all();
        assert!(matches!(
            ticket.outcome().await.unwrap(),
            GroupOutcome::ClaimedElsewhere { sink } if sink == "lake"
        ));
        other_worker.commit().await.unwrap();
        assert_eq!(rows_in(&dir.path().join("vendor")).0, [1]);
    }

    #[tokio::test]
    async fn once_shutdown_began_a_new_group_commits_its_first_object_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let sink: Arc<dyn Sink> = Arc::new(ParquetDirSink::new("lake", dir.path().to_owned()));
        let groups = Arc::new(Groups::new());
        groups.flush_all();
        // The age is 15 minutes: only the flush can commit it in time.
        let ticket = groups
            .join(
                &[sink],
                settings(128 << 20),
                member("late.csv", &[9]),
                1,
                schema(),
            )
            .await;
        let answered = tokio::time::timeout(Duration::from_secs(30), committed(ticket)).await;
        assert!(answered.is_ok(), "the group waited for its age");
        assert_eq!(rows_in(&dir.path().join("vendor")).0, [9]);
    }

    /// A sink whose groups refuse or fail on given keys, and record what
    /// they added.
    struct ScriptedSink {
        name: &'static str,
        refuse: &'static str,
        fail: &'static str,
        added: Arc<Mutex<Vec<String>>>,
    }

    struct ScriptedGroup {
        refuse: &'static str,
        fail: &'static str,
        added: Arc<Mutex<Vec<String>>>,
    }

    #[async_trait::async_trait]
    impl Sink for ScriptedSink {
        fn name(&self) -> &str {
            self.name
        }
        async fn open(
            &self,
            _: &Lineage,
            _: SchemaRef,
        ) -> Result<Box<dyn crate::sink::SinkWriter>, SinkError> {
            unreachable!("groups only")
        }
        async fn open_group(
            &self,
            _: &str,
            _: &str,
            _: SchemaRef,
        ) -> Result<Box<dyn GroupWriter>, SinkError> {
            Ok(Box::new(ScriptedGroup {
                refuse: self.refuse,
                fail: self.fail,
                added: self.added.clone(),
            }))
        }
    }

    #[async_trait::async_trait]
    impl GroupWriter for ScriptedGroup {
        async fn add(&mut self, member: &GroupMember) -> Result<Joined, SinkError> {
            let key = member.lineage.key.as_str();
            if key == self.refuse {
                return Ok(Joined::Refused("23505: duplicate key".into()));
            }
            if key == self.fail {
                return Err(SinkError::permanent("encode: a value no column takes"));
            }
            self.added.lock().unwrap().push(key.to_owned());
            Ok(Joined::Added)
        }
        fn output_bytes(&self) -> u64 {
            0
        }
        async fn commit(self: Box<Self>) -> Result<CommitReceipt, SinkError> {
            Ok(CommitReceipt {
                location: "scripted".into(),
                rows: 0,
                already_committed: false,
            })
        }
    }

    fn scripted(
        name: &'static str,
        refuse: &'static str,
        fail: &'static str,
    ) -> (Arc<dyn Sink>, Arc<Mutex<Vec<String>>>) {
        let added = Arc::new(Mutex::new(Vec::new()));
        let sink = ScriptedSink {
            name,
            refuse,
            fail,
            added: added.clone(),
        };
        (Arc::new(sink), added)
    }

    #[tokio::test]
    async fn a_refused_object_is_dead_lettered_alone_and_no_later_sink_takes_it() {
        let (first, _) = scripted("warehouse", "bad.csv", "");
        let (second, second_added) = scripted("lake", "", "");
        let groups = Arc::new(Groups::new());
        let sinks = [first, second];
        let good = groups
            .join(
                &sinks,
                settings(1 << 30),
                member("good.csv", &[1]),
                1,
                schema(),
            )
            .await;
        let bad = groups
            .join(
                &sinks,
                settings(1 << 30),
                member("bad.csv", &[2]),
                1,
                schema(),
            )
            .await;
        groups.flush_all();
        assert_eq!(committed(good).await.receipts.len(), 2);
        let err = bad.outcome().await.unwrap_err();
        assert!(
            !err.is_retryable() && err.to_string().contains("23505"),
            "{err}"
        );
        assert_eq!(*second_added.lock().unwrap(), ["good.csv"]);
    }

    #[tokio::test]
    async fn the_object_that_failed_a_group_gets_its_error_the_others_a_retry() {
        let (sink, _) = scripted("lake", "", "poison.csv");
        let groups = Arc::new(Groups::new());
        let sinks = [sink];
        let before = groups
            .join(
                &sinks,
                settings(1 << 30),
                member("before.csv", &[1]),
                1,
                schema(),
            )
            .await;
        let poison = groups
            .join(
                &sinks,
                settings(1 << 30),
                member("poison.csv", &[2]),
                1,
                schema(),
            )
            .await;
        groups.flush_all();
        // Its own failure, permanent: dead-lettered now, so it fails no
        // second group.
        let err = poison.outcome().await.unwrap_err();
        assert!(!err.is_retryable(), "{err}");
        // The others' rows were fine: retried.
        let err = before.outcome().await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(
            err.to_string()
                .contains("the group this object joined failed"),
            "{err}"
        );
    }

    #[test]
    fn a_group_failure_is_never_permanent_for_its_members() {
        let err = group_failure(&SinkError::permanent("encode: bad"));
        assert!(err.is_retryable());
        let err = group_failure(&SinkError::unavailable("StorageFull", "disk full"));
        assert_eq!(
            err.class,
            crate::sink::SinkFailure::Unavailable("StorageFull".into())
        );
        assert!(err.detail.contains("disk full"));
    }
}
