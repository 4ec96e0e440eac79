//! `s3-ingest dlq list | inspect | replay | purge`: the operator's view of
//! the dead-letter queue.
//!
//! Every command walks the DLQ the same way ([`DlqWalk`]): it receives
//! messages and keeps each one hidden (`--hide-secs`) until the walk ends,
//! so it sees every message once instead of the same ten again; at the
//! end it releases (makes visible again) every message it did not delete.
//! Reading never consumes. A walk that is interrupted leaves its messages
//! hidden until `--hide-secs` pass; nothing is lost.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use chrono::{DateTime, Utc};
use globset::GlobMatcher;
use serde::Serialize;

use crate::dead_letter::{self, DeadLetter};
use crate::ingest::{Ingestor, Precheck};
use crate::notification::{self, Notification, ObjectRef, Origin, REPLAY_EVENT_NAME};
use crate::queue::sqs::SqsQueue;
use crate::queue::{MAX_BATCH_ENTRIES, Queue, QueueError, ReceivedMessage};
use crate::route::Router;

/// The error kind shown (and selected) for a DLQ message that is not one
/// of our envelopes: one SQS's own redrive policy moved there (the worker
/// could not even handle it), or a foreign one. Its body is the original
/// message.
pub const NOT_AN_ENVELOPE: &str = "not_an_envelope";

/// How many empty long polls in a row end a walk.
const EMPTY_RECEIVES_TO_END: u32 = 2;

/// Which DLQ messages a command acts on; every given criterion must hold.
#[derive(Debug, Default, Clone)]
pub struct Selector {
    /// `error_kind` names, or [`NOT_AN_ENVELOPE`].
    pub error_kinds: Vec<String>,
    pub routes: Vec<String>,
    pub buckets: Vec<String>,
    pub key_glob: Option<GlobMatcher>,
    /// On `failed_at`: since (inclusive) and until (exclusive).
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl Selector {
    pub fn matches(&self, entry: &DlqEntry) -> bool {
        let letter = entry.letter.as_ref();
        let kind = entry.kind();
        if !self.error_kinds.is_empty() && !self.error_kinds.iter().any(|k| k == kind) {
            return false;
        }
        let route = letter.and_then(|l| l.route.as_deref());
        if !self.routes.is_empty() && !route.is_some_and(|r| self.routes.iter().any(|x| x == r)) {
            return false;
        }
        let bucket = entry.bucket();
        if !self.buckets.is_empty() && !bucket.is_some_and(|b| self.buckets.iter().any(|x| x == b))
        {
            return false;
        }
        if let Some(glob) = &self.key_glob
            && !entry.key().is_some_and(|key| glob.is_match(key))
        {
            return false;
        }
        // A message that is not an envelope has no failure time: a time
        // window never selects it.
        let failed_at = letter.map(|l| l.failed_at);
        let after_since = match self.since {
            Some(since) => failed_at.is_some_and(|t| t >= since),
            None => true,
        };
        let before_until = match self.until {
            Some(until) => failed_at.is_some_and(|t| t < until),
            None => true,
        };
        after_since && before_until
    }
}

/// One message on the DLQ.
#[derive(Debug, Clone)]
pub struct DlqEntry {
    pub message: ReceivedMessage,
    /// `None`: not one of our envelopes (see [`NOT_AN_ENVELOPE`]).
    pub letter: Option<DeadLetter>,
    /// For a message that is not an envelope: the first object its body
    /// names, when it parses as a notification.
    first_object: Option<ObjectRef>,
}

impl DlqEntry {
    fn new(message: ReceivedMessage) -> DlqEntry {
        let letter = dead_letter::from_body(&message.body);
        let first_object = match &letter {
            Some(_) => None,
            None => match notification::parse(&message.body) {
                Ok(Notification::Objects(objects)) => objects.into_iter().next(),
                _ => None,
            },
        };
        DlqEntry {
            message,
            letter,
            first_object,
        }
    }

    pub fn kind(&self) -> &str {
        self.letter
            .as_ref()
            .map_or(NOT_AN_ENVELOPE, |l| l.error_kind.as_str())
    }

    pub fn bucket(&self) -> Option<&str> {
        match &self.letter {
            Some(letter) => letter.bucket.as_deref(),
            None => self.first_object.as_ref().map(|o| o.bucket.as_str()),
        }
    }

    pub fn key(&self) -> Option<&str> {
        match &self.letter {
            Some(letter) => letter.key.as_deref(),
            None => self.first_object.as_ref().map(|o| o.key.as_str()),
        }
    }

    fn route(&self) -> Option<&str> {
        self.letter.as_ref().and_then(|l| l.route.as_deref())
    }
}

/// Walks a DLQ once, keeping what it received hidden until [`Self::finish`].
pub struct DlqWalk<'a> {
    dlq: &'a SqsQueue,
    hide_secs: u64,
    seen: HashSet<String>,
    /// Receipt handles of messages received and not deleted: released at
    /// the end.
    held: HashSet<String>,
    empty_receives: u32,
}

impl<'a> DlqWalk<'a> {
    pub fn new(dlq: &'a SqsQueue, hide_secs: u64) -> DlqWalk<'a> {
        DlqWalk {
            dlq,
            hide_secs,
            seen: HashSet::new(),
            held: HashSet::new(),
            empty_receives: 0,
        }
    }

    /// The next messages not seen before in this walk; empty when the
    /// queue has nothing more to show.
    pub async fn next_batch(&mut self) -> Result<Vec<DlqEntry>, QueueError> {
        while self.empty_receives < EMPTY_RECEIVES_TO_END {
            // A long poll asks every SQS server, so an empty answer means
            // the queue has no visible message (short polls sample).
            let received = self
                .dlq
                .receive(MAX_BATCH_ENTRIES as u64, 1, self.hide_secs)
                .await?;
            if received.is_empty() {
                self.empty_receives += 1;
                continue;
            }
            self.empty_receives = 0;
            let mut fresh = Vec::new();
            for message in received {
                // Seen again (its hiding ran out during a long walk):
                // hold it, but act on it once.
                let new = self.seen.insert(message.message_id.clone());
                self.held.insert(message.receipt_handle.clone());
                if new {
                    fresh.push(DlqEntry::new(message));
                }
            }
            if !fresh.is_empty() {
                return Ok(fresh);
            }
        }
        Ok(Vec::new())
    }

    /// Deletes `entries` from the DLQ; returns how many SQS refused.
    pub async fn delete(&mut self, entries: &[&DlqEntry]) -> usize {
        let handles: Vec<String> = entries
            .iter()
            .map(|e| e.message.receipt_handle.clone())
            .collect();
        let mut failed = 0;
        for chunk in handles.chunks(MAX_BATCH_ENTRIES) {
            match self.dlq.delete_batch(chunk).await {
                Ok(failures) => {
                    let refused: HashSet<usize> = failures.iter().map(|f| f.index).collect();
                    failed += refused.len();
                    for (index, handle) in chunk.iter().enumerate() {
                        if !refused.contains(&index) {
                            self.held.remove(handle);
                        }
                    }
                }
                Err(err) => {
                    eprintln!("warning: could not delete from the DLQ: {err}");
                    failed += chunk.len();
                }
            }
        }
        failed
    }

    /// Makes every message still held visible again. Returns how many
    /// could not be released (they come back after `--hide-secs`).
    pub async fn finish(self) -> usize {
        let mut failed = 0;
        let held: Vec<String> = self.held.into_iter().collect();
        for chunk in held.chunks(MAX_BATCH_ENTRIES) {
            match self.dlq.set_visibility_batch(chunk, 0).await {
                Ok(failures) => failed += failures.len(),
                Err(_) => failed += chunk.len(),
            }
        }
        failed
    }
}

/// Walks the whole DLQ, handing each selected message to `each` (nothing
/// is kept: a DLQ of 100,000 envelopes is not held in memory), then
/// releases it.
pub async fn for_each_selected(
    dlq: &SqsQueue,
    hide_secs: u64,
    selector: &Selector,
    mut each: impl FnMut(DlqEntry),
) -> Result<(), QueueError> {
    let mut walk = DlqWalk::new(dlq, hide_secs);
    let result = loop {
        match walk.next_batch().await {
            Ok(batch) if batch.is_empty() => break Ok(()),
            Ok(batch) => batch
                .into_iter()
                .filter(|e| selector.matches(e))
                .for_each(&mut each),
            Err(err) => break Err(err),
        }
    };
    release(walk).await;
    result
}

async fn release(walk: DlqWalk<'_>) {
    let hide_secs = walk.hide_secs;
    let unreleased = walk.finish().await;
    if unreleased > 0 {
        eprintln!(
            "warning: {unreleased} messages could not be released; they are visible again within {hide_secs} s"
        );
    }
}

/// One line of `dlq list`: the envelopes of one error kind, route and bucket.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Group {
    pub error_kind: String,
    pub route: Option<String>,
    pub bucket: Option<String>,
    pub count: u64,
    pub oldest: Option<DateTime<Utc>>,
    pub newest: Option<DateTime<Utc>>,
    /// A few keys (`s3://bucket/key`) and errors, to see what failed.
    pub samples: Vec<Sample>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Sample {
    pub object: Option<String>,
    pub error: String,
}

const SAMPLES_PER_GROUP: usize = 3;
const SAMPLE_ERROR_CHARS: usize = 200;

/// Builds the groups of `dlq list`, one entry at a time.
#[derive(Default)]
pub struct Grouper {
    groups: BTreeMap<(String, Option<String>, Option<String>), Group>,
}

impl Grouper {
    pub fn add(&mut self, entry: &DlqEntry) {
        let id = (
            entry.kind().to_owned(),
            entry.route().map(str::to_owned),
            entry.bucket().map(str::to_owned),
        );
        let group = self.groups.entry(id.clone()).or_insert_with(|| Group {
            error_kind: id.0,
            route: id.1,
            bucket: id.2,
            count: 0,
            oldest: None,
            newest: None,
            samples: Vec::new(),
        });
        group.count += 1;
        if let Some(letter) = &entry.letter {
            let t = letter.failed_at;
            group.oldest = Some(group.oldest.map_or(t, |o| o.min(t)));
            group.newest = Some(group.newest.map_or(t, |n| n.max(t)));
        }
        if group.samples.len() < SAMPLES_PER_GROUP {
            let object = entry
                .bucket()
                .zip(entry.key())
                .map(|(b, k)| format!("s3://{b}/{k}"));
            let error = entry.letter.as_ref().map_or_else(
                || {
                    "not an envelope: moved by SQS's redrive policy, or sent by something else"
                        .to_owned()
                },
                |l| l.error.chars().take(SAMPLE_ERROR_CHARS).collect(),
            );
            group.samples.push(Sample { object, error });
        }
    }

    /// The groups, largest first.
    pub fn finish(self) -> Vec<Group> {
        let mut groups: Vec<Group> = self.groups.into_values().collect();
        groups.sort_by_key(|group| std::cmp::Reverse(group.count));
        groups
    }
}

/// Groups entries by error kind, route and bucket, largest group first.
pub fn group(entries: &[DlqEntry]) -> Vec<Group> {
    let mut grouper = Grouper::default();
    entries.iter().for_each(|entry| grouper.add(entry));
    grouper.finish()
}

pub fn print_groups(groups: &[Group], out: &mut impl Write) -> std::io::Result<()> {
    let total: u64 = groups.iter().map(|g| g.count).sum();
    writeln!(out, "{total} messages selected, in {} groups", groups.len())?;
    for group in groups {
        writeln!(
            out,
            "\n{count} × {kind}  route {route}  bucket {bucket}",
            count = group.count,
            kind = group.error_kind,
            route = group.route.as_deref().unwrap_or("-"),
            bucket = group.bucket.as_deref().unwrap_or("-"),
        )?;
        if let (Some(oldest), Some(newest)) = (group.oldest, group.newest) {
            writeln!(out, "  failed between {oldest} and {newest}")?;
        }
        for sample in &group.samples {
            writeln!(
                out,
                "  e.g. {}: {}",
                sample.object.as_deref().unwrap_or("(no object)"),
                sample.error
            )?;
        }
    }
    Ok(())
}

/// One envelope in full, for `dlq inspect`.
#[derive(Debug, Serialize)]
pub struct Inspected<'a> {
    pub message_id: &'a str,
    pub error_kind: &'a str,
    /// The envelope as sent; for a message that is not one, its body.
    #[serde(flatten)]
    pub letter: Option<&'a DeadLetter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<&'a str>,
}

impl<'a> Inspected<'a> {
    pub fn of(entry: &'a DlqEntry) -> Inspected<'a> {
        Inspected {
            message_id: &entry.message.message_id,
            error_kind: entry.kind(),
            letter: entry.letter.as_ref(),
            body: entry
                .letter
                .is_none()
                .then_some(entry.message.body.as_str()),
        }
    }
}

pub fn print_inspected(entry: &DlqEntry, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "message {}", entry.message.message_id)?;
    match &entry.letter {
        Some(letter) => {
            writeln!(out, "  error_kind   {}", letter.error_kind)?;
            if let (Some(bucket), Some(key)) = (&letter.bucket, &letter.key) {
                writeln!(out, "  object       s3://{bucket}/{key}")?;
            }
            if let Some(version_id) = &letter.version_id {
                writeln!(out, "  version_id   {version_id}")?;
            }
            if let Some(etag) = &letter.etag {
                writeln!(out, "  etag         {etag}")?;
            }
            writeln!(
                out,
                "  route        {}",
                letter.route.as_deref().unwrap_or("-")
            )?;
            writeln!(out, "  failed_at    {}", letter.failed_at)?;
            writeln!(out, "  attempts     {}", letter.receive_count)?;
            writeln!(
                out,
                "  worker       {} (envelope version {})",
                letter.worker_version, letter.envelope_version
            )?;
            writeln!(out, "  error        {}", letter.error)?;
            writeln!(out, "  original     {}", letter.original_message)?;
        }
        None => {
            writeln!(out, "  error_kind   {NOT_AN_ENVELOPE}")?;
            writeln!(out, "  body         {}", entry.message.body)?;
        }
    }
    writeln!(out)
}

/// What `dlq replay` did (or, with `--dry-run`, would do) with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayAction {
    /// Sent back to the source queue (as a rebuilt event, or the original
    /// body of a message that is not an envelope), then deleted here.
    Requeued { superseded: Option<String> },
    /// Ingested in this process (`--now`), then deleted here.
    Ingested { superseded: Option<String> },
    /// Already in every sink of its route: deleted here.
    AlreadyCommitted { superseded: Option<String> },
    /// The object no longer exists: deleted here.
    Gone,
    /// Cannot be replayed (names no object, no route matches it now, or
    /// the send or ingest failed): left on the DLQ.
    Kept { reason: String },
}

impl ReplayAction {
    pub fn label(&self) -> &'static str {
        match self {
            ReplayAction::Requeued { .. } => "requeued",
            ReplayAction::Ingested { .. } => "ingested",
            ReplayAction::AlreadyCommitted { .. } => "already_committed",
            ReplayAction::Gone => "gone",
            ReplayAction::Kept { .. } => "kept",
        }
    }

    /// The version that failed, when a newer one was replayed instead.
    pub fn superseded(&self) -> Option<&str> {
        match self {
            ReplayAction::Requeued { superseded }
            | ReplayAction::Ingested { superseded }
            | ReplayAction::AlreadyCommitted { superseded } => superseded.as_deref(),
            _ => None,
        }
    }

    fn deletes(&self) -> bool {
        !matches!(self, ReplayAction::Kept { .. })
    }
}

/// What a replay needs besides the DLQ.
pub struct Replayer<'a> {
    pub source: &'a SqsQueue,
    pub router: &'a Router,
    pub ingestor: &'a Ingestor,
    /// Ingest here (`--now`) instead of requeueing.
    pub now: bool,
    pub dry_run: bool,
}

impl Replayer<'_> {
    /// Decides (and unless dry-run, does) what to do with one message.
    pub async fn replay(&self, entry: &DlqEntry) -> ReplayAction {
        let objects = match &entry.letter {
            Some(letter) => match letter.replay_objects() {
                Ok(objects) => objects,
                Err(err) => {
                    return ReplayAction::Kept {
                        reason: err.to_string(),
                    };
                }
            },
            // A message SQS's own redrive moved here: its body is the
            // original message, requeued as is (or ingested with --now).
            None if !self.now => return self.requeue_raw(entry).await,
            None => match notification::parse(&entry.message.body) {
                Ok(Notification::Objects(objects)) => objects
                    .into_iter()
                    .map(|object| ObjectRef {
                        origin: Origin::Replay,
                        ..object
                    })
                    .collect(),
                Ok(Notification::Discard(reason)) => {
                    return ReplayAction::Kept {
                        reason: format!("announces nothing to ingest ({})", reason.label()),
                    };
                }
                Err(err) => {
                    return ReplayAction::Kept {
                        reason: format!("not a notification: {err}"),
                    };
                }
            },
        };
        // One message, one action: the first that keeps it on the DLQ,
        // else the first object's (several objects per message are rare).
        let mut first = None;
        for object in &objects {
            let action = self.replay_object(object).await;
            if !action.deletes() {
                return action;
            }
            first.get_or_insert(action);
        }
        first.unwrap_or(ReplayAction::Kept {
            reason: "names no object".into(),
        })
    }

    async fn replay_object(&self, object: &ObjectRef) -> ReplayAction {
        let Some(route) = self.router.route(&object.bucket, &object.key) else {
            return ReplayAction::Kept {
                reason: "no route matches the object now".into(),
            };
        };
        let plan = match route.plan(&object.key) {
            Ok(plan) => plan,
            Err(detail) => return ReplayAction::Kept { reason: detail },
        };
        // The current version (or gone), and whether the sinks hold it.
        let (target, superseded) = match self.ingestor.precheck(object, &plan, true).await {
            Ok(Precheck::Ingest { object, superseded }) => (object, superseded),
            Ok(Precheck::AlreadyCommitted { superseded }) => {
                return ReplayAction::AlreadyCommitted { superseded };
            }
            Ok(Precheck::Gone) => return ReplayAction::Gone,
            Err(err) => {
                return ReplayAction::Kept {
                    reason: format!("cannot look the object up: {err}"),
                };
            }
        };
        if self.now {
            if self.dry_run {
                return ReplayAction::Ingested { superseded };
            }
            return match self.ingestor.ingest_object(&target, &plan).await {
                Ok(_) => ReplayAction::Ingested { superseded },
                Err(err) => ReplayAction::Kept {
                    reason: format!("{}: {err}", err.kind()),
                },
            };
        }
        if self.dry_run {
            return ReplayAction::Requeued { superseded };
        }
        let event = notification::synthetic_event(
            &ObjectRef {
                event_name: REPLAY_EVENT_NAME.to_owned(),
                ..target
            },
            REPLAY_EVENT_NAME,
        );
        match self.source.send(&event).await {
            Ok(()) => ReplayAction::Requeued { superseded },
            Err(err) => ReplayAction::Kept {
                reason: format!("could not send to the source queue: {err}"),
            },
        }
    }

    async fn requeue_raw(&self, entry: &DlqEntry) -> ReplayAction {
        if self.dry_run {
            return ReplayAction::Requeued { superseded: None };
        }
        match self.source.send(&entry.message.body).await {
            Ok(()) => ReplayAction::Requeued { superseded: None },
            Err(err) => ReplayAction::Kept {
                reason: format!("could not send to the source queue: {err}"),
            },
        }
    }
}

/// Counts of what a replay or purge did, by action.
#[derive(Debug, Default, Serialize)]
pub struct Tally {
    pub selected: u64,
    pub by_action: BTreeMap<String, u64>,
    /// Deleted actions SQS refused (the message stays on the DLQ; a
    /// second run finds it again and does the same, idempotently).
    pub delete_failures: u64,
}

/// Replays the selected messages; the others are released untouched.
/// Each message is deleted from the DLQ only after its replay succeeded
/// (sent, or ingested); run again after an interruption, it finds what is
/// left and does the same (a message sent but not yet deleted is sent
/// twice, which the sinks absorb).
pub async fn replay(
    dlq: &SqsQueue,
    hide_secs: u64,
    selector: &Selector,
    replayer: &Replayer<'_>,
    mut report: impl FnMut(&DlqEntry, &ReplayAction),
) -> Result<Tally, QueueError> {
    let mut walk = DlqWalk::new(dlq, hide_secs);
    let mut tally = Tally::default();
    // An object replayed here may fail again and come back to the DLQ
    // while the walk goes on: such an envelope is left for the next run,
    // or a poison file would be replayed round and round.
    let started = Utc::now();
    let mut replayed: HashSet<(String, String)> = HashSet::new();
    let result = loop {
        let batch = match walk.next_batch().await {
            Ok(batch) if batch.is_empty() => break Ok(()),
            Ok(batch) => batch,
            Err(err) => break Err(err),
        };
        for entry in batch.iter().filter(|e| selector.matches(e)) {
            let failed_during_run = entry
                .letter
                .as_ref()
                .is_some_and(|l| l.failed_at >= started);
            let object = entry
                .bucket()
                .zip(entry.key())
                .map(|(b, k)| (b.to_owned(), k.to_owned()));
            if failed_during_run || object.as_ref().is_some_and(|o| replayed.contains(o)) {
                continue;
            }
            replayed.extend(object);
            tally.selected += 1;
            let action = replayer.replay(entry).await;
            report(entry, &action);
            *tally
                .by_action
                .entry(action.label().to_owned())
                .or_default() += 1;
            if action.deletes() && !replayer.dry_run {
                tally.delete_failures += walk.delete(&[entry]).await as u64;
            }
        }
    };
    release(walk).await;
    result.map(|()| tally)
}

/// Deletes the selected messages (`dlq purge`): reads them all first and
/// asks `confirm` with their count, then deletes them, still hidden from
/// the walk. Returns the tally (nothing deleted when not confirmed).
pub async fn purge(
    dlq: &SqsQueue,
    hide_secs: u64,
    selector: &Selector,
    confirm: impl FnOnce(&[Group]) -> bool,
) -> Result<Tally, QueueError> {
    let mut walk = DlqWalk::new(dlq, hide_secs);
    let mut selected: Vec<DlqEntry> = Vec::new();
    let mut grouper = Grouper::default();
    let result = loop {
        match walk.next_batch().await {
            Ok(batch) if batch.is_empty() => break Ok(()),
            Ok(batch) => {
                for entry in batch.into_iter().filter(|e| selector.matches(e)) {
                    grouper.add(&entry);
                    // Only what deleting needs is kept.
                    selected.push(DlqEntry {
                        message: ReceivedMessage {
                            body: String::new(),
                            ..entry.message
                        },
                        letter: None,
                        first_object: None,
                    });
                }
            }
            Err(err) => break Err(err),
        }
    };
    let mut tally = Tally {
        selected: selected.len() as u64,
        ..Tally::default()
    };
    if result.is_ok() && !selected.is_empty() && confirm(&grouper.finish()) {
        let entries: Vec<&DlqEntry> = selected.iter().collect();
        let failed = walk.delete(&entries).await as u64;
        tally.delete_failures = failed;
        tally
            .by_action
            .insert("purged".into(), selected.len() as u64 - failed);
    }
    release(walk).await;
    result.map(|()| tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn envelope(kind: ErrorKind, route: &str, key: &str) -> DlqEntry {
        let object = ObjectRef {
            bucket: "vendor".into(),
            key: key.into(),
            version_id: None,
            etag: Some("e1".into()),
            size: Some(10),
            sequencer: None,
            event_time: None,
            event_name: "ObjectCreated:Put".into(),
            origin: notification::Origin::Notification,
        };
        let letter =
            DeadLetter::for_object(&object, Some(route), kind, "bad row".into(), "m", 1, "{}");
        DlqEntry::new(ReceivedMessage {
            message_id: format!("{key}-{route}"),
            receipt_handle: "r".into(),
            body: letter.to_json(),
            receive_count: 1,
            earlier_attempts: 0,
        })
    }

    #[test]
    fn selectors_combine_kind_route_and_key_glob() {
        let csv = envelope(ErrorKind::CsvError, "orders", "in/a.csv");
        let schema = envelope(ErrorKind::SchemaError, "orders", "in/b.csv");
        let other_route = envelope(ErrorKind::CsvError, "prices", "px/c.csv");
        let selector = Selector {
            error_kinds: vec!["csv_error".into()],
            key_glob: Some(globset::Glob::new("in/**").unwrap().compile_matcher()),
            ..Selector::default()
        };
        assert!(selector.matches(&csv));
        assert!(!selector.matches(&schema));
        assert!(!selector.matches(&other_route));
        let by_route = Selector {
            routes: vec!["prices".into()],
            ..Selector::default()
        };
        assert!(by_route.matches(&other_route));
        assert!(!by_route.matches(&csv));
        let future = Selector {
            since: Some(Utc::now() + chrono::Duration::hours(1)),
            ..Selector::default()
        };
        assert!(!future.matches(&csv));
    }

    #[test]
    fn a_raw_s3_event_is_shown_as_not_an_envelope_with_its_object() {
        let body = notification::synthetic_event(
            &ObjectRef {
                bucket: "vendor".into(),
                key: "in/x y.csv".into(),
                version_id: None,
                etag: None,
                size: None,
                sequencer: None,
                event_time: None,
                event_name: String::new(),
                origin: notification::Origin::Notification,
            },
            "ObjectCreated:Put",
        );
        let entry = DlqEntry::new(ReceivedMessage {
            message_id: "m".into(),
            receipt_handle: "r".into(),
            body,
            receive_count: 1,
            earlier_attempts: 0,
        });
        assert_eq!(entry.kind(), NOT_AN_ENVELOPE);
        assert_eq!(entry.key(), Some("in/x y.csv"));
        let selector = Selector {
            error_kinds: vec![NOT_AN_ENVELOPE.into()],
            ..Selector::default()
        };
        assert!(selector.matches(&entry));
    }

    #[test]
    fn groups_count_by_kind_route_and_bucket_with_samples() {
        let entries = vec![
            envelope(ErrorKind::CsvError, "orders", "a.csv"),
            envelope(ErrorKind::CsvError, "orders", "b.csv"),
            envelope(ErrorKind::SchemaError, "orders", "c.csv"),
        ];
        let groups = group(&entries);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].error_kind, "csv_error");
        assert_eq!(groups[0].count, 2);
        assert_eq!(groups[0].samples.len(), 2);
        assert_eq!(
            groups[0].samples[0].object.as_deref(),
            Some("s3://vendor/a.csv")
        );
        assert!(groups[0].oldest <= groups[0].newest);
        let mut text = Vec::new();
        print_groups(&groups, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.starts_with("3 messages selected, in 2 groups"),
            "{text}"
        );
    }
}
