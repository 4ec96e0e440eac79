//! `s3-ingest trace s3://bucket/key`: what happened to one object, the
//! first question a vendor asks. It looks, in this order, at the object
//! now (HeadObject) and the route that claims it, at each sink of that
//! route (does it hold this version, and where), at the dead-letter queue
//! (walked without consuming, as `dlq list` does) and at the source
//! queue (its counts; with `--peek-queue`, its messages), then sums it
//! all up in one line, the verdict ([`decide`]).
//!
//! Nothing is changed: the DLQ walk releases what it received, and so
//! does the peek at the source queue, whose messages are hidden from the
//! workers meanwhile for a short time (`--peek-hide-secs`).

use std::io::Write;

use aws_sdk_sqs::types::QueueAttributeName;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Operator;
use super::dlq::{DlqEntry, DlqWalk, NOT_AN_ENVELOPE, Selector};
use crate::error::IngestError;
use crate::notification::{self, Notification, ObjectRef, Origin};
use crate::queue::QueueError;
use crate::sink::{CommitDetails, CommitState, Lineage};

/// Errors in the trace are cut to this many characters.
const ERROR_CHARS: usize = 300;

/// What to trace and how far to look.
#[derive(Debug, Clone)]
pub struct TraceRequest {
    pub bucket: String,
    pub key: String,
    /// Ask the sinks about this version instead of the current one.
    pub version_id: Option<String>,
    /// How long the DLQ walk hides each envelope (released at the end).
    pub dlq_hide_secs: u64,
    /// Walk the source queue too.
    pub peek_queue: bool,
    /// How long the peek hides each source message (released at the end).
    pub peek_hide_secs: u64,
    /// The peek stops after this many messages.
    pub peek_max: usize,
}

/// Parses `s3://bucket/key`; the key must not be empty.
pub fn parse_object(uri: &str) -> Result<(String, String), String> {
    let (bucket, key) = super::backfill::parse_location(uri)?;
    if key.is_empty() {
        return Err(format!("`{uri}` names no key: s3://bucket/key"));
    }
    Ok((bucket, key))
}

/// The sum of it, machine-readable; [`Trace::verdict`] says it in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every sink of the route holds the traced version.
    Committed,
    /// A message on the source queue names it (found by the peek).
    Waiting,
    /// An envelope on the DLQ is about it.
    DeadLettered,
    /// Some sinks hold it, some do not: a fan-out that stopped midway.
    PartlyCommitted,
    /// The sinks cannot tell (`http`, `stdout`) or could not be asked.
    CannotTell,
    /// Not committed, not dead-lettered, not (seen) waiting.
    NeverSeen,
    /// No route claims it: the worker skips it.
    NotRouted,
    /// No current version (and none was asked for).
    DoesNotExist,
}

/// What one `trace` found.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    /// `s3://bucket/key`.
    pub object: String,
    pub outcome: Outcome,
    pub verdict: String,
    /// The object now; `None`: it does not exist.
    pub current: Option<CurrentObject>,
    pub route: RouteMatch,
    /// The version the sinks were asked about (`--version-id`, else the
    /// current version's id, else its ETag); `None` when there is none.
    pub traced_version: Option<String>,
    /// The route's sinks, in its order (empty without a route or version).
    pub sinks: Vec<SinkTrace>,
    /// Every envelope for this key; `None` when no DLQ is configured.
    pub dead_letters: Option<Vec<DeadLetterTrace>>,
    pub queue: QueueTrace,
    /// Anything else worth knowing (a release that failed, ...).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CurrentObject {
    pub version_id: Option<String>,
    pub etag: Option<String>,
    pub size: Option<u64>,
    pub last_modified: Option<DateTime<Utc>>,
}

/// Which route claims the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RouteMatch {
    Matched {
        name: String,
        sinks: Vec<String>,
        /// Why the route cannot read this key (`format = "auto"` and an
        /// extension it does not know), if so.
        #[serde(skip_serializing_if = "Option::is_none")]
        cannot_read: Option<String>,
    },
    /// The bucket is allowed, but no route's key_glob matches.
    NoRouteMatches,
    /// No route takes objects from this bucket.
    BucketNotAllowed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    Committed,
    NotCommitted,
    /// The sink keeps no record (`http`, `stdout`).
    CannotTell,
    /// The sink could not be asked (see `error`).
    Error,
}

impl SinkState {
    fn label(self) -> &'static str {
        match self {
            SinkState::Committed => "committed",
            SinkState::NotCommitted => "not committed",
            SinkState::CannotTell => "cannot tell",
            SinkState::Error => "could not ask",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkTrace {
    pub sink: String,
    pub state: SinkState,
    /// Where, how many rows and when, where the sink can say.
    pub details: Option<CommitDetails>,
    /// Why the sink could not be asked (or could not say more).
    pub error: Option<String>,
}

/// One DLQ message about this key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterTrace {
    pub message_id: String,
    /// `not_an_envelope` for a message SQS's own redrive moved there.
    pub error_kind: String,
    pub error: Option<String>,
    pub failed_at: Option<DateTime<Utc>>,
    pub version_id: Option<String>,
    pub etag: Option<String>,
    pub attempts: Option<u64>,
    pub route: Option<String>,
    /// About the traced version (or names no version).
    pub for_traced_version: bool,
}

/// The source queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueTrace {
    /// ApproximateNumberOfMessages.
    pub visible: u64,
    /// ApproximateNumberOfMessagesNotVisible: being processed, or hidden.
    pub in_flight: u64,
    /// ApproximateNumberOfMessagesDelayed (handed back with a delay).
    pub delayed: u64,
    /// `None` without `--peek-queue`.
    pub peek: Option<Peek>,
}

/// What the walk of the source queue saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peek {
    /// Messages received (each once).
    pub seen: u64,
    /// Stopped at `--peek-max` before the queue showed nothing more.
    pub stopped_early: bool,
    /// The messages that name this object.
    pub messages: Vec<QueuedMessage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueuedMessage {
    pub message_id: String,
    /// `ObjectCreated:Put`, `ObjectCreated:Replay`, ...
    pub event_name: String,
    pub origin: &'static str,
    pub version_id: Option<String>,
    pub etag: Option<String>,
    pub event_time: Option<DateTime<Utc>>,
    /// SQS's ApproximateReceiveCount, this peek's receive included.
    pub receive_count: u64,
    pub for_traced_version: bool,
}

/// Why a trace could not be made: S3 or SQS could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{0}")]
    Object(#[from] IngestError),
    #[error("{0}")]
    Queue(#[from] QueueError),
    #[error("GetQueueAttributes on {url} failed: {detail}")]
    Counts { url: String, detail: String },
}

/// Whether a version named by (`version_id`, `etag`) is `traced`: by
/// version id when both have one, else by ETag when both have one; a
/// side that names neither could be any version, so yes.
fn same_version(traced: &Lineage, version_id: Option<&str>, etag: Option<&str>) -> bool {
    if let (Some(a), Some(b)) = (traced.version_id.as_deref(), version_id) {
        return a == b;
    }
    match (traced.etag.as_deref(), etag) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// Runs the trace. Errors only when S3 or SQS could not be asked; a sink
/// that cannot be asked is reported in its line.
pub async fn trace(operator: &Operator, request: &TraceRequest) -> Result<Trace, TraceError> {
    let object = format!("s3://{}/{}", request.bucket, request.key);
    let mut notes = Vec::new();

    let current = operator
        .objects
        .current_version(&request.bucket, &request.key)
        .await?
        .map(|current| CurrentObject {
            version_id: current.version_id,
            etag: current.etag,
            size: current.size,
            last_modified: current.last_modified,
        });

    let route = match operator.router.route(&request.bucket, &request.key) {
        Some(route) => RouteMatch::Matched {
            name: route.name.clone(),
            sinks: route.sinks.clone(),
            cannot_read: route.plan(&request.key).err(),
        },
        None if operator.router.bucket_allowed(&request.bucket) => RouteMatch::NoRouteMatches,
        None => RouteMatch::BucketNotAllowed,
    };

    // The version to ask about: the one asked for, else the current one.
    let traced = match (&request.version_id, &current) {
        (Some(version_id), _) => Some((Some(version_id.clone()), None)),
        (None, Some(current)) if current.version_id.is_some() || current.etag.is_some() => {
            Some((current.version_id.clone(), current.etag.clone()))
        }
        _ => None,
    };
    let lineage = Lineage {
        bucket: request.bucket.clone(),
        key: request.key.clone(),
        version_id: traced.as_ref().and_then(|(v, _)| v.clone()),
        etag: traced.as_ref().and_then(|(_, e)| e.clone()),
        size: current.as_ref().and_then(|c| c.size).unwrap_or(0),
        event_time: None,
        route: match &route {
            RouteMatch::Matched { name, .. } => name.clone(),
            _ => String::new(),
        },
    };
    let traced_version = traced
        .is_some()
        .then(|| lineage.version_identity().to_owned());

    let mut sinks = Vec::new();
    if let (RouteMatch::Matched { sinks: names, .. }, Some(_)) = (&route, &traced) {
        for name in names {
            sinks.push(ask_sink(operator, name, &lineage).await);
        }
    }

    let dead_letters = match &operator.dlq {
        Some(dlq_queue) => {
            let (letters, unreleased) = walk_dlq(dlq_queue, request, &lineage).await?;
            if unreleased > 0 {
                notes.push(format!(
                    "{unreleased} DLQ messages could not be released; they are visible again within {} s",
                    request.dlq_hide_secs
                ));
            }
            Some(letters)
        }
        None => None,
    };

    let (visible, in_flight, delayed) = queue_counts(&operator.sqs, operator.source.url()).await?;
    let peek = if request.peek_queue {
        let (peek, unreleased) = peek_queue(operator, request, &lineage).await?;
        if unreleased > 0 {
            notes.push(format!(
                "{unreleased} source messages could not be released; the workers see them again within {} s",
                request.peek_hide_secs
            ));
        }
        Some(peek)
    } else {
        None
    };

    let mut trace = Trace {
        object,
        outcome: Outcome::NeverSeen,
        verdict: String::new(),
        current,
        route,
        traced_version,
        sinks,
        dead_letters,
        queue: QueueTrace {
            visible,
            in_flight,
            delayed,
            peek,
        },
        notes,
    };
    let (outcome, verdict) = decide(&trace, request.version_id.is_some());
    trace.outcome = outcome;
    trace.verdict = verdict;
    Ok(trace)
}

/// A selector of exactly this bucket and key.
fn selector(bucket: &str, key: &str) -> Selector {
    // Backslashes stay literal: `escape` leaves them, and they escape in
    // globset's default syntax.
    let key_glob = globset::GlobBuilder::new(&globset::escape(key))
        .literal_separator(true)
        .backslash_escape(false)
        .build()
        .map(|glob| glob.compile_matcher())
        .ok();
    Selector {
        buckets: vec![bucket.to_owned()],
        key_glob,
        ..Selector::default()
    }
}

/// Walks the whole DLQ as `dlq list` does (every message hidden for
/// `dlq_hide_secs` until the end, then released) and keeps the envelopes
/// of this bucket and key. Returns them and how many messages could not
/// be released.
async fn walk_dlq(
    dlq_queue: &crate::queue::sqs::SqsQueue,
    request: &TraceRequest,
    traced: &Lineage,
) -> Result<(Vec<DeadLetterTrace>, usize), QueueError> {
    let selector = selector(&request.bucket, &request.key);
    let mut walk = DlqWalk::new(dlq_queue, request.dlq_hide_secs);
    let mut letters = Vec::new();
    let result = loop {
        match walk.next_batch().await {
            Ok(batch) if batch.is_empty() => break Ok(()),
            Ok(batch) => letters.extend(
                batch
                    .iter()
                    // The glob is exact; the key check keeps it so
                    // whatever globset makes of a key.
                    .filter(|entry| {
                        selector.matches(entry) && entry.key() == Some(request.key.as_str())
                    })
                    .map(|entry| dead_letter_trace(entry, traced)),
            ),
            Err(err) => break Err(err),
        }
    };
    let unreleased = walk.finish().await;
    result.map(|()| (letters, unreleased))
}

async fn ask_sink(operator: &Operator, name: &str, lineage: &Lineage) -> SinkTrace {
    let Some(sink) = operator.sinks.get(name) else {
        return SinkTrace {
            sink: name.to_owned(),
            state: SinkState::Error,
            details: None,
            error: Some("no such sink".into()),
        };
    };
    let (state, error) = match sink.is_committed(lineage).await {
        Ok(CommitState::Committed) => (SinkState::Committed, None),
        Ok(CommitState::NotCommitted) => (SinkState::NotCommitted, None),
        Ok(CommitState::Unknown) => (SinkState::CannotTell, None),
        Err(err) => (SinkState::Error, Some(cut(&err.to_string()))),
    };
    let (details, error) = if state == SinkState::Committed {
        match sink.commit_details(lineage).await {
            Ok(details) => (details, error),
            Err(err) => (
                None,
                Some(cut(&format!("committed, but no details: {err}"))),
            ),
        }
    } else {
        (None, error)
    };
    SinkTrace {
        sink: name.to_owned(),
        state,
        details,
        error,
    }
}

fn cut(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(ERROR_CHARS).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

fn dead_letter_trace(entry: &DlqEntry, traced: &Lineage) -> DeadLetterTrace {
    match &entry.letter {
        Some(letter) => DeadLetterTrace {
            message_id: entry.message.message_id.clone(),
            error_kind: letter.error_kind.as_str().to_owned(),
            error: Some(cut(&letter.error)),
            failed_at: Some(letter.failed_at),
            version_id: letter.version_id.clone(),
            etag: letter.etag.clone(),
            attempts: Some(letter.receive_count),
            route: letter.route.clone(),
            for_traced_version: same_version(
                traced,
                letter.version_id.as_deref(),
                letter.etag.as_deref(),
            ),
        },
        None => DeadLetterTrace {
            message_id: entry.message.message_id.clone(),
            error_kind: NOT_AN_ENVELOPE.to_owned(),
            error: None,
            failed_at: None,
            version_id: None,
            etag: None,
            attempts: None,
            route: None,
            for_traced_version: true,
        },
    }
}

/// The source queue's visible, in-flight and delayed counts.
async fn queue_counts(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<(u64, u64, u64), TraceError> {
    let output = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .map_err(|err| TraceError::Counts {
            url: url.to_owned(),
            detail: crate::error::classify_aws(&err).1,
        })?;
    let attributes = output.attributes.unwrap_or_default();
    let get = |name: QueueAttributeName| {
        attributes
            .get(&name)
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    Ok((
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    ))
}

/// Walks the source queue as the DLQ is walked (every message hidden for
/// `peek_hide_secs` until the end, then released), keeping the messages
/// that name this object. Returns the peek and how many messages could
/// not be released.
async fn peek_queue(
    operator: &Operator,
    request: &TraceRequest,
    traced: &Lineage,
) -> Result<(Peek, usize), QueueError> {
    let mut walk = DlqWalk::new(&operator.source, request.peek_hide_secs);
    let mut peek = Peek {
        seen: 0,
        stopped_early: false,
        messages: Vec::new(),
    };
    let result = loop {
        if peek.seen as usize >= request.peek_max {
            peek.stopped_early = true;
            break Ok(());
        }
        let batch = match walk.next_batch().await {
            Ok(batch) if batch.is_empty() => break Ok(()),
            Ok(batch) => batch,
            Err(err) => break Err(err),
        };
        for entry in batch {
            peek.seen += 1;
            peek.messages.extend(
                naming(&entry, &request.bucket, &request.key)
                    .into_iter()
                    .map(|object| queued_message(&entry, &object, traced, request)),
            );
        }
    };
    let unreleased = walk.finish().await;
    result.map(|()| (peek, unreleased))
}

/// The objects a message names that are this bucket and key.
fn naming(entry: &DlqEntry, bucket: &str, key: &str) -> Vec<ObjectRef> {
    match notification::parse(&entry.message.body) {
        Ok(Notification::Objects(objects)) => objects
            .into_iter()
            .filter(|object| object.bucket == bucket && object.key == key)
            .collect(),
        _ => Vec::new(),
    }
}

fn queued_message(
    entry: &DlqEntry,
    object: &ObjectRef,
    traced: &Lineage,
    request: &TraceRequest,
) -> QueuedMessage {
    // A replay ingests the current version whatever it names.
    let replays_current = object.origin == Origin::Replay && request.version_id.is_none();
    QueuedMessage {
        message_id: entry.message.message_id.clone(),
        event_name: object.event_name.clone(),
        origin: object.origin.label(),
        version_id: object.version_id.clone(),
        etag: object.etag.clone(),
        event_time: object.event_time,
        receive_count: entry.message.receive_count,
        for_traced_version: replays_current
            || same_version(traced, object.version_id.as_deref(), object.etag.as_deref()),
    }
}

fn plural(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// How the traced version is named: `version V` by its version id (the
/// current one's, or the one asked for), `etag E` in an unversioned
/// bucket.
fn version_label(trace: &Trace) -> String {
    let Some(traced) = &trace.traced_version else {
        return "no version".into();
    };
    let by_etag = trace
        .current
        .as_ref()
        .is_some_and(|c| c.version_id.is_none() && c.etag.as_ref() == Some(traced));
    if by_etag {
        format!("etag {traced}")
    } else {
        format!("version {traced}")
    }
}

/// The verdict: one outcome and one line. `version_asked`: the trace is
/// of a version named with `--version-id`, which may exist while the
/// object does not.
pub fn decide(trace: &Trace, version_asked: bool) -> (Outcome, String) {
    let letters: Vec<&DeadLetterTrace> = trace.dead_letters.iter().flatten().collect();
    let letters_for_it: Vec<&DeadLetterTrace> = letters
        .iter()
        .copied()
        .filter(|letter| letter.for_traced_version)
        .collect();
    let waiting: Vec<&QueuedMessage> = trace
        .queue
        .peek
        .iter()
        .flat_map(|peek| &peek.messages)
        .filter(|message| message.for_traced_version)
        .collect();
    let on_dlq_too = if letters.is_empty() {
        String::new()
    } else {
        format!(
            "; {} still on the DLQ",
            plural(letters.len(), "envelope", "envelopes")
        )
    };

    if trace.current.is_none() && !version_asked {
        return (Outcome::DoesNotExist, format!("does not exist{on_dlq_too}"));
    }
    match &trace.route {
        RouteMatch::Matched { .. } => {}
        RouteMatch::NoRouteMatches => {
            return (
                Outcome::NotRouted,
                format!("not routed: no route matches the key, the worker skips it{on_dlq_too}"),
            );
        }
        RouteMatch::BucketNotAllowed => {
            return (
                Outcome::NotRouted,
                format!(
                    "not routed: no route takes objects from this bucket, the worker skips it{on_dlq_too}"
                ),
            );
        }
    }
    let version = version_label(trace);
    let count = |state: SinkState| trace.sinks.iter().filter(|s| s.state == state).count();
    let names = |state: SinkState| {
        trace
            .sinks
            .iter()
            .filter(|s| s.state == state)
            .map(|s| s.sink.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let committed = count(SinkState::Committed);
    let not_committed = count(SinkState::NotCommitted);
    let cannot_tell = count(SinkState::CannotTell);
    let errors = count(SinkState::Error);

    if !trace.sinks.is_empty() && committed == trace.sinks.len() {
        return (
            Outcome::Committed,
            format!(
                "committed ({version}, {}){on_dlq_too}",
                plural(committed, "sink", "sinks")
            ),
        );
    }
    if !waiting.is_empty() {
        let receives = waiting.iter().map(|m| m.receive_count).max().unwrap_or(0);
        return (
            Outcome::Waiting,
            format!(
                "waiting on the queue ({}, received up to {receives} times, this trace's peek included){on_dlq_too}",
                plural(waiting.len(), "message", "messages")
            ),
        );
    }
    if let Some(newest) = letters_for_it.iter().max_by_key(|letter| letter.failed_at) {
        let partly = if committed > 0 {
            format!("; committed in {} only", names(SinkState::Committed))
        } else {
            String::new()
        };
        let at = newest
            .failed_at
            .map_or_else(|| "unknown time".to_owned(), |t| t.to_rfc3339());
        let more = if letters_for_it.len() > 1 {
            format!(
                ", {} in all",
                plural(letters_for_it.len(), "envelope", "envelopes")
            )
        } else {
            String::new()
        };
        return (
            Outcome::DeadLettered,
            format!(
                "dead-lettered ({} at {at}{more}){partly}",
                newest.error_kind
            ),
        );
    }
    if committed > 0 && not_committed > 0 {
        return (
            Outcome::PartlyCommitted,
            format!(
                "partly committed ({version}: in {}; not in {}): a fan-out stopped midway, its retry or a replay finishes it",
                names(SinkState::Committed),
                names(SinkState::NotCommitted)
            ),
        );
    }
    if errors > 0 {
        return (
            Outcome::CannotTell,
            format!(
                "cannot tell: could not ask {}{on_dlq_too}",
                names(SinkState::Error)
            ),
        );
    }
    if not_committed == 0 && cannot_tell > 0 {
        let also = if committed > 0 {
            format!(" (committed in {})", names(SinkState::Committed))
        } else {
            String::new()
        };
        return (
            Outcome::CannotTell,
            format!(
                "cannot tell whether committed: {} keep no record{also}; not dead-lettered",
                names(SinkState::CannotTell)
            ),
        );
    }
    // Not committed (or nothing to ask), not dead-lettered, not seen waiting.
    let where_looked = if trace.dead_letters.is_none() {
        "not committed, no DLQ configured to look in"
    } else {
        "not committed and not dead-lettered"
    };
    let queued = trace.queue.visible + trace.queue.in_flight + trace.queue.delayed;
    let queue_hint = match &trace.queue.peek {
        None if queued > 0 => format!(
            "; or still queued ({} on the source queue: --peek-queue looks)",
            plural(queued as usize, "message", "messages")
        ),
        Some(peek) if peek.stopped_early => {
            format!(
                "; the peek stopped after {} messages (--peek-max)",
                peek.seen
            )
        }
        Some(_) if trace.queue.in_flight > 0 => format!(
            "; {} in flight could not be peeked at",
            plural(trace.queue.in_flight as usize, "message", "messages")
        ),
        _ => String::new(),
    };
    let other_versions = if letters.is_empty() {
        String::new()
    } else {
        format!(
            "; the DLQ holds {} of other versions",
            plural(letters.len(), "envelope", "envelopes")
        )
    };
    (
        Outcome::NeverSeen,
        format!(
            "{where_looked}: never seen? (try: s3-ingest backfill {}){queue_hint}{other_versions}",
            trace.object
        ),
    )
}

/// The trace as text for a terminal.
pub fn print(trace: &Trace, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{}: {}", trace.object, trace.verdict)?;
    writeln!(out)?;
    match &trace.current {
        Some(current) => writeln!(
            out,
            "object now    version {}, etag {}, {} bytes, last modified {}",
            current.version_id.as_deref().unwrap_or("- (unversioned)"),
            current.etag.as_deref().unwrap_or("-"),
            current
                .size
                .map_or_else(|| "?".to_owned(), |s| s.to_string()),
            current
                .last_modified
                .map_or_else(|| "?".to_owned(), |t| t.to_rfc3339()),
        )?,
        None => writeln!(out, "object now    does not exist")?,
    }
    match &trace.route {
        RouteMatch::Matched {
            name,
            sinks,
            cannot_read,
        } => {
            writeln!(out, "route         {name} (sinks {})", sinks.join(", "))?;
            if let Some(why) = cannot_read {
                writeln!(out, "              but it cannot read this key: {why}")?;
            }
        }
        RouteMatch::NoRouteMatches => writeln!(out, "route         no route matches")?,
        RouteMatch::BucketNotAllowed => writeln!(out, "route         bucket not allowed")?,
    }
    match (&trace.traced_version, trace.sinks.is_empty()) {
        (Some(_), false) => {
            writeln!(out, "committed?    {}", version_label(trace))?;
            let width = trace.sinks.iter().map(|s| s.sink.len()).max().unwrap_or(0);
            for sink in &trace.sinks {
                let mut line = format!("  {:width$}  {}", sink.sink, sink.state.label());
                if sink.state == SinkState::CannotTell {
                    line.push_str(" (this sink keeps no record)");
                }
                if let Some(details) = &sink.details {
                    line.push_str(&format!(": {}", details.location));
                    if let Some(rows) = details.rows {
                        line.push_str(&format!(", {rows} rows"));
                    }
                    if let Some(at) = details.committed_at {
                        line.push_str(&format!(", at {}", at.to_rfc3339()));
                    }
                    if let Some(contract) = &details.contract {
                        line.push_str(&format!(", contract {}", contract_summary(contract)));
                    }
                }
                if let Some(error) = &sink.error {
                    line.push_str(&format!(": {error}"));
                }
                writeln!(out, "{line}")?;
            }
        }
        _ => writeln!(out, "committed?    not asked (no route or no version)")?,
    }
    match &trace.dead_letters {
        None => writeln!(out, "dead letters  no DLQ configured (queue.dlq_url)")?,
        Some(letters) if letters.is_empty() => writeln!(out, "dead letters  none")?,
        Some(letters) => {
            writeln!(
                out,
                "dead letters  {} (left on the DLQ)",
                plural(letters.len(), "envelope", "envelopes")
            )?;
            for letter in letters {
                let at = letter
                    .failed_at
                    .map_or_else(|| "-".to_owned(), |t| t.to_rfc3339());
                let other = if letter.for_traced_version {
                    ""
                } else {
                    " (another version)"
                };
                writeln!(
                    out,
                    "  {} at {at}: version {}, etag {}, {}, route {}{other}",
                    letter.error_kind,
                    letter.version_id.as_deref().unwrap_or("-"),
                    letter.etag.as_deref().unwrap_or("-"),
                    letter.attempts.map_or_else(
                        || "? attempts".to_owned(),
                        |a| plural(a as usize, "attempt", "attempts")
                    ),
                    letter.route.as_deref().unwrap_or("-"),
                )?;
                if let Some(error) = &letter.error {
                    writeln!(out, "    {error}")?;
                }
            }
        }
    }
    let queue = &trace.queue;
    writeln!(
        out,
        "source queue  {} visible, {} in flight, {} delayed",
        queue.visible, queue.in_flight, queue.delayed
    )?;
    match &queue.peek {
        None => writeln!(
            out,
            "              (--peek-queue looks for messages naming this object; it delays the \
             messages it sees by up to --peek-hide-secs)"
        )?,
        Some(peek) => {
            let early = if peek.stopped_early {
                " (stopped at --peek-max)"
            } else {
                ""
            };
            writeln!(
                out,
                "  peeked at {}{early}; {} name this object",
                plural(peek.seen as usize, "message", "messages"),
                peek.messages.len()
            )?;
            for message in &peek.messages {
                let other = if message.for_traced_version {
                    ""
                } else {
                    " (another version)"
                };
                writeln!(
                    out,
                    "  {} ({}): version {}, etag {}, received {} times (this peek included){other}",
                    message.event_name,
                    message.origin,
                    message.version_id.as_deref().unwrap_or("-"),
                    message.etag.as_deref().unwrap_or("-"),
                    message.receive_count,
                )?;
            }
        }
    }
    for note in &trace.notes {
        writeln!(out, "note: {note}")?;
    }
    Ok(())
}

/// A contract outcome (`ContractOutcome` as a sink recorded it) in a few
/// words: `quarantined (2 of 10 rows quarantined; columns added: colour)`.
fn contract_summary(outcome: &serde_json::Value) -> String {
    let verdict = outcome["verdict"].as_str().unwrap_or("?");
    let mut notes = Vec::new();
    if let (Some(quarantined), Some(rows)) = (
        outcome["quarantined_rows"].as_u64(),
        outcome["rows"].as_u64(),
    ) && quarantined > 0
    {
        notes.push(format!("{quarantined} of {rows} rows quarantined"));
    }
    if let Some(rescued) = outcome["rescued_rows"].as_u64()
        && rescued > 0
    {
        notes.push(format!("{rescued} rows with rescued values"));
    }
    for (field, label) in [
        ("columns_added", "columns added"),
        ("columns_rescued", "columns rescued"),
        ("columns_missing", "columns missing"),
    ] {
        if let Some(columns) = outcome[field].as_array() {
            let names: Vec<&str> = columns.iter().filter_map(|c| c.as_str()).collect();
            notes.push(format!("{label}: {}", names.join(", ")));
        }
    }
    if notes.is_empty() {
        verdict.to_owned()
    } else {
        format!("{verdict} ({})", notes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Trace {
        Trace {
            object: "s3://vendor/in/a.csv".into(),
            outcome: Outcome::NeverSeen,
            verdict: String::new(),
            current: Some(CurrentObject {
                version_id: Some("v2".into()),
                etag: Some("e2".into()),
                size: Some(10),
                last_modified: None,
            }),
            route: RouteMatch::Matched {
                name: "orders".into(),
                sinks: vec!["lake".into()],
                cannot_read: None,
            },
            traced_version: Some("v2".into()),
            sinks: vec![sink("lake", SinkState::NotCommitted)],
            dead_letters: Some(Vec::new()),
            queue: QueueTrace {
                visible: 0,
                in_flight: 0,
                delayed: 0,
                peek: None,
            },
            notes: Vec::new(),
        }
    }

    fn sink(name: &str, state: SinkState) -> SinkTrace {
        SinkTrace {
            sink: name.into(),
            state,
            details: None,
            error: None,
        }
    }

    fn letter(kind: &str, for_traced_version: bool, minute: u32) -> DeadLetterTrace {
        DeadLetterTrace {
            message_id: format!("m{minute}"),
            error_kind: kind.into(),
            error: Some("bad row".into()),
            failed_at: Some(
                DateTime::parse_from_rfc3339(&format!("2026-03-01T10:{minute:02}:00Z"))
                    .unwrap()
                    .with_timezone(&Utc),
            ),
            version_id: None,
            etag: None,
            attempts: Some(1),
            route: Some("orders".into()),
            for_traced_version,
        }
    }

    fn queued(for_traced_version: bool) -> QueuedMessage {
        QueuedMessage {
            message_id: "q".into(),
            event_name: "ObjectCreated:Put".into(),
            origin: "notification",
            version_id: Some("v2".into()),
            etag: None,
            event_time: None,
            receive_count: 2,
            for_traced_version,
        }
    }

    fn verdict(trace: &Trace) -> (Outcome, String) {
        decide(trace, false)
    }

    #[test]
    fn committed_in_every_sink_wins() {
        let mut trace = base();
        trace.sinks = vec![
            sink("lake", SinkState::Committed),
            sink("warehouse", SinkState::Committed),
        ];
        trace.dead_letters = Some(vec![letter("csv_error", false, 1)]);
        let (outcome, text) = verdict(&trace);
        assert_eq!(outcome, Outcome::Committed);
        assert_eq!(
            text,
            "committed (version v2, 2 sinks); 1 envelope still on the DLQ"
        );
        // An unversioned bucket's object is named by its ETag.
        trace.current.as_mut().unwrap().version_id = None;
        trace.traced_version = Some("e2".into());
        assert!(
            verdict(&trace)
                .1
                .starts_with("committed (etag e2, 2 sinks)")
        );
    }

    #[test]
    fn a_missing_object_does_not_exist_unless_a_version_is_asked() {
        let mut trace = base();
        trace.current = None;
        trace.traced_version = None;
        trace.sinks = Vec::new();
        assert_eq!(
            verdict(&trace),
            (Outcome::DoesNotExist, "does not exist".into())
        );
        trace.traced_version = Some("v1".into());
        trace.sinks = vec![sink("lake", SinkState::Committed)];
        assert_eq!(decide(&trace, true).0, Outcome::Committed);
    }

    #[test]
    fn unrouted_objects_say_why() {
        let mut trace = base();
        trace.route = RouteMatch::NoRouteMatches;
        trace.sinks = Vec::new();
        let (outcome, text) = verdict(&trace);
        assert_eq!(outcome, Outcome::NotRouted);
        assert!(text.contains("no route matches"), "{text}");
        trace.route = RouteMatch::BucketNotAllowed;
        assert!(verdict(&trace).1.contains("bucket"));
    }

    #[test]
    fn the_newest_envelope_of_the_version_names_the_failure() {
        let mut trace = base();
        trace.dead_letters = Some(vec![
            letter("schema_error", true, 1),
            letter("csv_error", true, 7),
            letter("object_changed", false, 9),
        ]);
        let (outcome, text) = verdict(&trace);
        assert_eq!(outcome, Outcome::DeadLettered);
        assert_eq!(
            text,
            "dead-lettered (csv_error at 2026-03-01T10:07:00+00:00, 2 envelopes in all)"
        );
    }

    #[test]
    fn a_waiting_message_comes_before_an_old_envelope() {
        let mut trace = base();
        trace.dead_letters = Some(vec![letter("csv_error", true, 1)]);
        trace.queue.peek = Some(Peek {
            seen: 3,
            stopped_early: false,
            messages: vec![queued(true)],
        });
        let (outcome, text) = verdict(&trace);
        assert_eq!(outcome, Outcome::Waiting);
        assert!(
            text.starts_with("waiting on the queue (1 message"),
            "{text}"
        );
        // A message about another version is not this one waiting.
        trace.queue.peek.as_mut().unwrap().messages = vec![queued(false)];
        assert_eq!(verdict(&trace).0, Outcome::DeadLettered);
    }

    #[test]
    fn nothing_anywhere_is_never_seen_with_the_backfill_hint() {
        let mut trace = base();
        let (outcome, text) = verdict(&trace);
        assert_eq!(outcome, Outcome::NeverSeen);
        assert_eq!(
            text,
            "not committed and not dead-lettered: never seen? (try: s3-ingest backfill s3://vendor/in/a.csv)"
        );
        // Messages on the queue without a peek: it may be among them.
        trace.queue.visible = 4;
        assert!(verdict(&trace).1.contains("--peek-queue looks"));
        // After a peek that found nothing, no such hint.
        trace.queue.peek = Some(Peek {
            seen: 4,
            stopped_early: false,
            messages: Vec::new(),
        });
        assert!(!verdict(&trace).1.contains("--peek-queue"));
        // Envelopes of other versions are mentioned.
        trace.dead_letters = Some(vec![letter("csv_error", false, 1)]);
        assert!(
            verdict(&trace)
                .1
                .ends_with("the DLQ holds 1 envelope of other versions")
        );
        trace.dead_letters = None;
        assert!(
            verdict(&trace)
                .1
                .starts_with("not committed, no DLQ configured")
        );
    }

    #[test]
    fn sinks_that_disagree_or_cannot_tell() {
        let mut trace = base();
        trace.sinks = vec![
            sink("lake", SinkState::Committed),
            sink("warehouse", SinkState::NotCommitted),
        ];
        let (outcome, text) = verdict(&trace);
        assert_eq!(outcome, Outcome::PartlyCommitted);
        assert!(text.contains("in lake; not in warehouse"), "{text}");

        trace.sinks = vec![
            sink("lake", SinkState::Committed),
            sink("hook", SinkState::CannotTell),
        ];
        let (outcome, text) = verdict(&trace);
        assert_eq!(outcome, Outcome::CannotTell);
        assert!(
            text.contains("hook keep no record (committed in lake)"),
            "{text}"
        );

        trace.sinks = vec![
            sink("lake", SinkState::Error),
            sink("hook", SinkState::CannotTell),
        ];
        assert_eq!(
            verdict(&trace),
            (
                Outcome::CannotTell,
                "cannot tell: could not ask lake".into()
            )
        );

        // One sink not committed is enough to say so, whatever the others.
        trace.sinks = vec![
            sink("lake", SinkState::NotCommitted),
            sink("hook", SinkState::CannotTell),
        ];
        assert_eq!(verdict(&trace).0, Outcome::NeverSeen);
    }

    #[test]
    fn versions_compare_by_id_then_etag_and_unknown_matches() {
        let traced = Lineage {
            bucket: "b".into(),
            key: "k".into(),
            version_id: Some("v2".into()),
            etag: Some("e2".into()),
            size: 0,
            event_time: None,
            route: String::new(),
        };
        assert!(same_version(&traced, Some("v2"), Some("other")));
        assert!(!same_version(&traced, Some("v1"), Some("e2")));
        assert!(same_version(&traced, None, Some("e2")));
        assert!(!same_version(&traced, None, Some("e1")));
        assert!(same_version(&traced, None, None));
    }

    #[test]
    fn the_selector_matches_exactly_the_key_whatever_its_characters() {
        for key in [
            "in/a.csv",
            "in/odd [1] {x}*?.csv",
            r"in\windows\path.csv",
            "in/**",
        ] {
            let selector = selector("vendor", key);
            let glob = selector.key_glob.as_ref().expect("a glob for every key");
            assert!(glob.is_match(key), "{key}");
            assert!(!glob.is_match(format!("{key}x")), "{key}");
        }
        let glob = selector("vendor", "in/*.csv").key_glob.unwrap();
        assert!(!glob.is_match("in/a.csv"));
    }

    #[test]
    fn object_locations_need_a_key() {
        assert_eq!(
            parse_object("s3://b/in/a b.csv").unwrap(),
            ("b".into(), "in/a b.csv".into())
        );
        assert!(parse_object("s3://b").is_err());
        assert!(parse_object("s3://b/").is_err());
        assert!(parse_object("b/k").is_err());
    }

    #[test]
    fn text_output_shows_every_section() {
        let mut trace = base();
        trace.sinks = vec![SinkTrace {
            sink: "lake".into(),
            state: SinkState::Committed,
            details: Some(CommitDetails {
                location: "/data/vendor/a.parquet".into(),
                rows: Some(3),
                committed_at: None,
                contract: Some(serde_json::json!({
                    "verdict": "quarantined", "rows": 5, "quarantined_rows": 2,
                    "rescued_rows": 0, "columns_added": ["colour"],
                })),
            }),
            error: None,
        }];
        trace.dead_letters = Some(vec![letter("csv_error", false, 1)]);
        let (outcome, verdict) = verdict(&trace);
        trace.outcome = outcome;
        trace.verdict = verdict;
        let mut text = Vec::new();
        print(&trace, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.starts_with("s3://vendor/in/a.csv: committed (version v2, 1 sink)"),
            "{text}"
        );
        assert!(
            text.contains("lake  committed: /data/vendor/a.parquet, 3 rows, contract quarantined (2 of 5 rows quarantined; columns added: colour)"),
            "{text}"
        );
        assert!(
            text.contains("csv_error at 2026-03-01T10:01:00+00:00"),
            "{text}"
        );
        assert!(text.contains("(another version)"), "{text}");
        assert!(text.contains("--peek-queue"), "{text}");
        let json = serde_json::to_value(&trace).unwrap();
        assert_eq!(json["outcome"], "committed");
        assert_eq!(json["route"]["status"], "matched");
        assert_eq!(json["sinks"][0]["details"]["rows"], 3);
    }
}
