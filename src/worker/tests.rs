//! The message state machine against the in-memory queue, with objects
//! ingested through a scripted `Ingest` in paused time: every outcome and
//! every shutdown path runs here in milliseconds. The real pipeline is
//! covered by the LocalStack integration tests.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::*;
use crate::config::{CsvOptions, FileFormat, RouteConfig};
use crate::dead_letter::DeadLetter;
use crate::error::{ErrorKind, IngestError};
use crate::group::{GroupOutcome, GroupTicket};
use crate::ingest::{Committed, Ingested, Precheck};
use crate::notification::ObjectRef;
use crate::queue::ReceivedMessage;
use crate::queue::memory::MemoryQueue;
use crate::route::ObjectPlan;
use crate::sink::{CommitReceipt, Lineage};
use tokio_util::sync::CancellationToken;

/// What the scripted pipeline does with one ingest of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Commit,
    /// A transient failure that counts (a sink's 500).
    Transient,
    /// The file's content is bad: `csv_error`.
    Poison,
    /// The sink `lake` refuses the deployment (a 401).
    Refused,
    /// The sink `lake` is unreachable.
    Unavailable,
    /// Takes this long, then commits.
    Slow(Duration),
    /// Never finishes.
    Hang,
    /// Joins a group that commits this long after.
    Grouped(Duration),
    /// Joins a group, where another writer holds the object uncommitted.
    ClaimedElsewhere,
}

/// An `Ingest` that plays a script per key (then commits), counting calls.
#[derive(Default)]
struct ScriptedIngest {
    script: Mutex<HashMap<String, VecDeque<Step>>>,
    calls: Mutex<Vec<String>>,
    /// Keys the sinks hold already, as `precheck` would find them.
    held: Mutex<std::collections::HashSet<String>>,
    /// Each precheck: the key and whether it was asked as a redelivery.
    prechecks: Mutex<Vec<(String, bool)>>,
}

impl ScriptedIngest {
    fn then(&self, key: &str, steps: &[Step]) -> &Self {
        self.script
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_default()
            .extend(steps.iter().copied());
        self
    }

    fn calls(&self, key: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|k| *k == key)
            .count()
    }
}

#[async_trait::async_trait]
impl Ingest for ScriptedIngest {
    /// As `Ingestor::precheck` asks the sinks: only for redeliveries and
    /// for objects that are not first notifications.
    async fn precheck(
        &self,
        object: &ObjectRef,
        _plan: &ObjectPlan,
        redelivered: bool,
    ) -> Result<Precheck, IngestError> {
        self.prechecks
            .lock()
            .unwrap()
            .push((object.key.clone(), redelivered));
        let asks = redelivered || object.origin != crate::notification::Origin::Notification;
        if asks && self.held.lock().unwrap().contains(&object.key) {
            return Ok(Precheck::AlreadyCommitted { superseded: None });
        }
        Ok(Precheck::ingest(object))
    }

    async fn ingest(&self, object: &ObjectRef, plan: &ObjectPlan) -> Result<Ingested, IngestError> {
        self.calls.lock().unwrap().push(object.key.clone());
        let step = self
            .script
            .lock()
            .unwrap()
            .get_mut(&object.key)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Step::Commit);
        let uri = object.s3_uri();
        match step {
            Step::Commit | Step::Grouped(_) | Step::ClaimedElsewhere => {}
            Step::Slow(duration) => tokio::time::sleep(duration).await,
            Step::Hang => std::future::pending::<()>().await,
            Step::Transient => {
                return Err(IngestError::Sink {
                    uri,
                    sink: "lake".into(),
                    detail: "500 Internal Server Error".into(),
                    retryable: true,
                });
            }
            Step::Poison => {
                return Err(IngestError::Csv {
                    uri,
                    first_row: 3,
                    last_row: 3,
                    detail: "unterminated quote".into(),
                });
            }
            Step::Refused => {
                return Err(IngestError::Deployment {
                    uri,
                    component: "sink:lake".into(),
                    code: "401".into(),
                    detail: "answers 401".into(),
                });
            }
            Step::Unavailable => {
                return Err(IngestError::Unavailable {
                    uri,
                    component: "sink:lake".into(),
                    code: "connect".into(),
                    detail: "connection refused".into(),
                });
            }
        }
        let committed = Committed {
            lineage: Lineage {
                bucket: object.bucket.clone(),
                key: object.key.clone(),
                version_id: None,
                etag: object.etag.clone(),
                size: 1,
                event_time: None,
                route: plan.route.clone(),
            },
            rows: 1,
            batches: 1,
            contract: None,
            receipts: vec![(
                "lake".into(),
                CommitReceipt {
                    location: format!("memory://{}", object.key),
                    rows: 1,
                    already_committed: false,
                },
            )],
        };
        let (answer, ticket) = GroupTicket::channel(&uri);
        match step {
            Step::Grouped(after) => {
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = answer.send(Ok(GroupOutcome::Committed(committed)));
                });
                Ok(Ingested::Grouped(ticket))
            }
            Step::ClaimedElsewhere => {
                let _ = answer.send(Ok(GroupOutcome::ClaimedElsewhere {
                    sink: "lake".into(),
                }));
                Ok(Ingested::Grouped(ticket))
            }
            _ => Ok(Ingested::Committed(committed)),
        }
    }
}

fn settings(max_receive_count: u64, concurrency: usize) -> WorkerSettings {
    WorkerSettings {
        wait_time_secs: 1,
        max_messages: 10,
        visibility_timeout_secs: 30,
        max_receive_count,
        concurrency,
        shutdown_grace: Duration::from_secs(5),
        max_lease: Duration::from_secs(3600),
        max_prefetch: 20,
    }
}

fn router(key_glob: &str) -> Router {
    Router::new(&[RouteConfig {
        name: "csv".into(),
        bucket: None,
        key_glob: key_glob.into(),
        format: FileFormat::Auto,
        sink: Some("lake".into()),
        sinks: Vec::new(),
        csv: CsvOptions::default(),
        schema: None,
        batch_rows: std::num::NonZeroUsize::new(100).unwrap(),
        limits: Default::default(),
        group: None,
        contract: None,
    }])
    .unwrap()
}

fn worker(queue: Arc<MemoryQueue>, max_receive_count: u64) -> Arc<Worker> {
    worker_with(queue, max_receive_count, "in/*.csv", 2)
}

fn worker_with(
    queue: Arc<MemoryQueue>,
    max_receive_count: u64,
    key_glob: &str,
    concurrency: usize,
) -> Arc<Worker> {
    Arc::new(Worker::new(
        queue.clone(),
        queue.dead_letter_queue(),
        router(key_glob),
        Arc::new(ScriptedIngest::default()),
        settings(max_receive_count, concurrency),
    ))
}

/// A worker over `queue` whose objects follow `ingest`'s script.
fn scripted_worker(
    queue: &Arc<MemoryQueue>,
    ingest: &Arc<ScriptedIngest>,
    settings: WorkerSettings,
) -> Arc<Worker> {
    Arc::new(Worker::new(
        queue.clone(),
        queue.dead_letter_queue(),
        router("in/*.csv"),
        ingest.clone(),
        settings,
    ))
}

/// An S3 notification for `key` in bucket `b`.
fn created(key: &str) -> String {
    format!(
        r#"{{"Records":[{{"eventName":"ObjectCreated:Put","eventTime":"2026-11-27T12:00:00.000Z",
        "s3":{{"bucket":{{"name":"b"}},"object":{{"key":"{key}","size":1,"eTag":"e"}}}}}}]}}"#
    )
}

const UNMATCHED: &str = r#"{"Records":[{"eventName":"ObjectCreated:Put","eventTime":"2026-11-27T12:00:00.000Z",
    "s3":{"bucket":{"name":"b"},"object":{"key":"other/x.json","size":1,"eTag":"e"}}}]}"#;

/// Runs `worker` until `done`, then shuts it down and waits for it.
async fn run_until(worker: Arc<Worker>, done: impl Fn() -> bool) {
    let (shutdown, running) = start(&worker);
    wait_for("the condition", done).await;
    shutdown.cancel();
    running.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn unparseable_message_is_dead_lettered_then_deleted() {
    let queue = Arc::new(MemoryQueue::new(true));
    queue.send("not json");
    let q = queue.clone();
    run_until(worker(queue.clone(), 5), move || q.is_empty()).await;
    let letters = queue.dead_letters();
    assert_eq!(letters.len(), 1);
    let letter: DeadLetter = serde_json::from_str(&letters[0]).unwrap();
    assert_eq!(letter.error_kind, ErrorKind::InvalidMessage);
    assert_eq!(letter.original_message, "not json");
}

#[tokio::test(start_paused = true)]
async fn failed_dead_letter_send_keeps_the_message() {
    let queue = Arc::new(MemoryQueue::new(true));
    queue.fail_dead_letters(true);
    queue.send("not json");
    let worker = worker(queue.clone(), 5);
    let stats = worker.stats();
    run_until(worker, move || {
        stats.messages_left_for_retry.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(queue.len(), 1, "message must not be deleted");
    assert!(queue.dead_letters().is_empty());
}

#[tokio::test(start_paused = true)]
async fn without_a_dlq_poison_is_left_to_the_redrive_policy() {
    let queue = Arc::new(MemoryQueue::new(false));
    queue.send("not json");
    let worker = worker(queue.clone(), 5);
    let stats = worker.stats();
    run_until(worker, move || {
        stats.messages_left_for_retry.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(queue.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn test_events_and_unmatched_keys_are_deleted() {
    let queue = Arc::new(MemoryQueue::new(true));
    queue.send(r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2026-11-27T12:00:00.000Z","Bucket":"b","RequestId":"r","HostId":"h"}"#);
    queue.send(UNMATCHED);
    let worker = worker(queue.clone(), 5);
    let stats = worker.stats();
    let q = queue.clone();
    run_until(worker, move || q.is_empty()).await;
    assert_eq!(stats.messages_discarded.load(Ordering::Relaxed), 1);
    assert_eq!(stats.objects_unmatched.load(Ordering::Relaxed), 1);
    assert!(queue.dead_letters().is_empty());
}

#[tokio::test(start_paused = true)]
async fn finished_messages_are_deleted_in_batches() {
    let queue = Arc::new(MemoryQueue::new(true));
    for _ in 0..20 {
        queue.send(UNMATCHED);
    }
    let worker = worker(queue.clone(), 5);
    let stats = worker.stats();
    let q = queue.clone();
    run_until(worker, move || q.is_empty()).await;
    assert_eq!(stats.messages_deleted.load(Ordering::Relaxed), 20);
    let calls = queue.batch_calls();
    assert!(
        calls.iter().all(|(op, _)| *op == "DeleteMessageBatch"),
        "{calls:?}"
    );
    assert_eq!(calls.iter().map(|(_, n)| n).sum::<usize>(), 20);
    assert!(calls.len() < 20, "deletes were not batched: {calls:?}");
}

#[tokio::test(start_paused = true)]
async fn message_over_max_receive_count_is_dead_lettered_whatever_it_is() {
    let queue = Arc::new(MemoryQueue::new(true));
    queue.send(UNMATCHED);
    // Two deliveries that were never acknowledged.
    for _ in 0..2 {
        let received = queue.receive(10, 0, 1).await.unwrap();
        assert_eq!(received.len(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
    }
    let q = queue.clone();
    run_until(worker(queue.clone(), 2), move || q.is_empty()).await;
    let letters = queue.dead_letters();
    assert_eq!(letters.len(), 1);
    let letter: DeadLetter = serde_json::from_str(&letters[0]).unwrap();
    assert_eq!(letter.error_kind, ErrorKind::MaxReceiveCountExceeded);
    assert_eq!(letter.receive_count, 3);
    assert_eq!(letter.key.as_deref(), Some("other/x.json"));
}

const MATCHED: &str = r#"{"Records":[{"eventName":"ObjectCreated:Put","eventTime":"2026-11-27T12:00:00.000Z",
    "s3":{"bucket":{"name":"b"},"object":{"key":"in/a.csv","size":1,"eTag":"e"}}}]}"#;

/// Runs a worker whose only object slot the test holds, so the matched
/// message waits for a slot and is handed back each time its wait runs
/// out, until it has been handed back `times` times.
async fn hand_back_repeatedly(queue: &Arc<MemoryQueue>, times: u64) {
    let worker = worker_with(queue.clone(), 2, "in/*.csv", 1);
    let stats = worker.stats();
    let admission = worker.admission.clone();
    let slot = admission.slot().await;
    run_until(worker, move || {
        stats.messages_released.load(Ordering::Relaxed) >= times
    })
    .await;
    drop(slot);
    assert!(
        queue.dead_letters().is_empty(),
        "{:?}",
        queue.dead_letters()
    );
    assert_eq!(queue.len(), 1, "one copy of the message is queued");
}

#[tokio::test(start_paused = true)]
async fn a_message_handed_back_six_times_is_not_dead_lettered_for_it() {
    let queue = Arc::new(MemoryQueue::new(true));
    queue.send(MATCHED);
    hand_back_repeatedly(&queue, 6).await;
    assert!(
        queue
            .batch_calls()
            .iter()
            .all(|(op, _)| *op == "DeleteMessageBatch"),
        "handed back as copies, never by visibility: {:?}",
        queue.batch_calls()
    );
    // A worker whose routes leave the key unmatched finishes it: seven
    // receives, but no failed attempt, so with max_receive_count 2 it
    // is deleted, not dead-lettered.
    let finisher = worker_with(queue.clone(), 2, "elsewhere/*.csv", 1);
    let stats = finisher.stats();
    let q = queue.clone();
    run_until(finisher, move || q.is_empty()).await;
    assert_eq!(stats.objects_unmatched.load(Ordering::Relaxed), 1);
    assert!(
        queue.dead_letters().is_empty(),
        "{:?}",
        queue.dead_letters()
    );
}

#[tokio::test(start_paused = true)]
async fn a_message_whose_worker_dies_each_time_still_reaches_the_dlq() {
    let queue = Arc::new(MemoryQueue::new(true));
    queue.send(MATCHED);
    hand_back_repeatedly(&queue, 3).await;
    // Two workers die holding it (SIGKILL, OOM): nothing is recorded,
    // so both receives count.
    for _ in 0..2 {
        let received = queue.receive(10, 0, 1).await.unwrap();
        assert_eq!(received.len(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
    }
    let q = queue.clone();
    run_until(
        worker_with(queue.clone(), 2, "elsewhere/*.csv", 1),
        move || q.is_empty(),
    )
    .await;
    let letters = queue.dead_letters();
    assert_eq!(letters.len(), 1);
    let letter: DeadLetter = serde_json::from_str(&letters[0]).unwrap();
    assert_eq!(letter.error_kind, ErrorKind::MaxReceiveCountExceeded);
    assert_eq!(letter.receive_count, 3, "the third attempt");
}

#[tokio::test(start_paused = true)]
async fn without_send_permission_a_hand_back_falls_back_to_a_counted_release() {
    let queue = Arc::new(MemoryQueue::new(true));
    queue.fail_requeues(true);
    queue.send(MATCHED);
    let worker = worker_with(queue.clone(), 5, "in/*.csv", 1);
    let stats = worker.stats();
    let admission = worker.admission.clone();
    let slot = admission.slot().await;
    run_until(worker, move || {
        stats.messages_released.load(Ordering::Relaxed) >= 1
    })
    .await;
    drop(slot);
    assert!(
        queue
            .batch_calls()
            .contains(&("ChangeMessageVisibilityBatch", 1)),
        "{:?}",
        queue.batch_calls()
    );
    let again = queue.receive(1, 0, 30).await.unwrap();
    assert_eq!(again[0].earlier_attempts, 0);
    assert!(again[0].attempt() >= 2, "the release counted");
}

#[test]
fn a_failure_outranks_a_deployment_problem_which_outranks_a_hand_back() {
    use super::message::{MessageOutcome, combine};
    use super::object::ObjectOutcome::*;
    assert_eq!(
        combine(vec![Committed, Deployment, Retry]),
        MessageOutcome::Retry
    );
    assert_eq!(
        combine(vec![Committed, Deployment, NotStarted]),
        MessageOutcome::Deployment
    );
    assert_eq!(
        combine(vec![Unstarted, NotStarted]),
        MessageOutcome::Release
    );
    assert_eq!(
        combine(vec![Committed, Unstarted]),
        MessageOutcome::Unstarted
    );
    assert_eq!(
        combine(vec![Committed, DeadLettered, Unmatched]),
        MessageOutcome::Done
    );
}

// ---------------------------------------------------------------------------
// Objects through the `Ingest` seam, and every shutdown path, in paused time.
// ---------------------------------------------------------------------------

/// Polls `done` in paused time; virtual minutes cost nothing.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn start(worker: &Arc<Worker>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(shutdown.clone()));
    (shutdown, running)
}

/// Takes every visible message off `queue` (hidden for a minute) and says
/// which attempt each receive would be.
async fn attempts_now(queue: &MemoryQueue) -> Vec<u64> {
    queue
        .receive(10, 0, 60)
        .await
        .unwrap()
        .iter()
        .map(ReceivedMessage::attempt)
        .collect()
}

fn dead_letter_kinds(queue: &MemoryQueue) -> Vec<ErrorKind> {
    queue
        .dead_letters()
        .iter()
        .map(|letter| {
            serde_json::from_str::<DeadLetter>(letter)
                .unwrap()
                .error_kind
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn committed_retried_and_poison_objects_end_as_they_should() {
    let queue = Arc::new(MemoryQueue::new(true));
    let ingest = Arc::new(ScriptedIngest::default());
    ingest
        .then("in/retried.csv", &[Step::Transient])
        .then("in/poison.csv", &[Step::Poison]);
    for key in ["in/fine.csv", "in/retried.csv", "in/poison.csv"] {
        queue.send(created(key));
    }
    let worker = scripted_worker(&queue, &ingest, settings(5, 2));
    let drained = queue.clone();
    run_until(worker.clone(), move || drained.is_empty()).await;

    assert_eq!(ingest.calls("in/fine.csv"), 1);
    // Left for the visibility timeout, then committed.
    assert_eq!(ingest.calls("in/retried.csv"), 2);
    assert_eq!(ingest.calls("in/poison.csv"), 1);
    assert_eq!(dead_letter_kinds(&queue), [ErrorKind::CsvError]);
    let stats = worker.stats();
    assert_eq!(stats.objects_committed.load(Ordering::Relaxed), 2);
    assert_eq!(stats.messages_left_for_retry.load(Ordering::Relaxed), 1);
    assert_eq!(stats.messages_deleted.load(Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn a_redelivery_the_sinks_hold_is_skipped_before_download() {
    let queue = Arc::new(MemoryQueue::new(true));
    let ingest = Arc::new(ScriptedIngest::default());
    // The first attempt fails after a sink committed (a fan-out route's
    // second sink failing): the redelivery finds it held.
    ingest.then("in/a.csv", &[Step::Transient]);
    ingest.held.lock().unwrap().insert("in/a.csv".into());
    queue.send(created("in/a.csv"));
    let worker = scripted_worker(&queue, &ingest, settings(5, 2));
    let drained = queue.clone();
    run_until(worker.clone(), move || drained.is_empty()).await;

    assert_eq!(ingest.calls("in/a.csv"), 1, "not downloaded again");
    assert_eq!(
        *ingest.prechecks.lock().unwrap(),
        [
            ("in/a.csv".to_owned(), false),
            ("in/a.csv".to_owned(), true)
        ],
        "a first delivery is not asked about; the redelivery is"
    );
    let stats = worker.stats();
    assert_eq!(stats.objects_skipped.load(Ordering::Relaxed), 1);
    assert_eq!(stats.messages_deleted.load(Ordering::Relaxed), 1);
    assert!(queue.dead_letters().is_empty());
}

#[tokio::test(start_paused = true)]
async fn refusals_and_outages_outlast_max_receive_count_uncounted() {
    let queue = Arc::new(MemoryQueue::new(true));
    let ingest = Arc::new(ScriptedIngest::default());
    ingest
        .then("in/refused.csv", &[Step::Refused; 4])
        .then("in/outage.csv", &[Step::Unavailable; 4]);
    queue.send(created("in/refused.csv"));
    queue.send(created("in/outage.csv"));
    // One attempt allowed: any counted try would dead-letter them.
    let worker = scripted_worker(&queue, &ingest, settings(1, 2));
    let drained = queue.clone();
    run_until(worker.clone(), move || drained.is_empty()).await;

    assert_eq!(ingest.calls("in/refused.csv"), 5);
    assert_eq!(ingest.calls("in/outage.csv"), 5);
    assert!(
        queue.dead_letters().is_empty(),
        "{:?}",
        queue.dead_letters()
    );
    assert!(worker.deployment().readiness().is_ok(), "ready again");
}

#[tokio::test(start_paused = true)]
async fn at_grace_expiry_in_flight_messages_are_handed_back_uncounted() {
    let queue = Arc::new(MemoryQueue::new(true));
    let ingest = Arc::new(ScriptedIngest::default());
    ingest.then("in/endless.csv", &[Step::Hang]);
    queue.send(created("in/endless.csv"));
    let worker = scripted_worker(&queue, &ingest, settings(5, 2));
    let (shutdown, running) = start(&worker);
    wait_for("the object started", || ingest.calls("in/endless.csv") == 1).await;
    let begun = tokio::time::Instant::now();
    shutdown.cancel();
    running.await.unwrap();

    // It waited for the grace period, no longer.
    let waited = begun.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(7),
        "{waited:?}"
    );
    assert!(queue.dead_letters().is_empty());
    assert_eq!(worker.stats().messages_released.load(Ordering::Relaxed), 1);
    // The copy is visible at once, and its next receive is a first attempt.
    assert_eq!(attempts_now(&queue).await, [1]);
}

#[tokio::test(start_paused = true)]
async fn messages_waiting_for_a_slot_are_handed_back_at_shutdown() {
    let queue = Arc::new(MemoryQueue::new(true));
    let ingest = Arc::new(ScriptedIngest::default());
    ingest.then("in/long.csv", &[Step::Slow(Duration::from_secs(3))]);
    // One slot. A quick object first: only then does the worker receive
    // ahead, so that a second message can wait for the slot.
    let worker = scripted_worker(&queue, &ingest, settings(5, 1));
    let (shutdown, running) = start(&worker);
    let stats = worker.stats();
    queue.send(created("in/quick.csv"));
    wait_for("the quick object committed", || {
        stats.objects_committed.load(Ordering::Relaxed) == 1
    })
    .await;
    queue.send(created("in/long.csv"));
    queue.send(created("in/waiting.csv"));
    wait_for("both received, one started", || {
        stats.messages_received.load(Ordering::Relaxed) == 3 && ingest.calls("in/long.csv") == 1
    })
    .await;
    assert_eq!(ingest.calls("in/waiting.csv"), 0, "it waits for the slot");
    shutdown.cancel();
    running.await.unwrap();

    // The running object finished within the grace period and was
    // deleted; the waiting one never started and went back uncounted.
    assert_eq!(ingest.calls("in/long.csv"), 1);
    assert_eq!(ingest.calls("in/waiting.csv"), 0);
    assert_eq!(stats.objects_committed.load(Ordering::Relaxed), 2);
    assert_eq!(stats.messages_released.load(Ordering::Relaxed), 1);
    assert_eq!(queue.len(), 1);
    assert_eq!(attempts_now(&queue).await, [1]);
}

#[tokio::test(start_paused = true)]
async fn what_the_last_long_poll_brings_after_shutdown_is_handed_back() {
    let queue = Arc::new(MemoryQueue::new(true));
    let ingest = Arc::new(ScriptedIngest::default());
    let mut long_polls = settings(5, 2);
    long_polls.wait_time_secs = 20;
    let worker = scripted_worker(&queue, &ingest, long_polls);
    let (shutdown, running) = start(&worker);
    // A long poll is open on the empty queue when shutdown begins; the
    // message arrives after. (The poll checks the queue every 50 ms, so the
    // worker sees the shutdown before the poll can answer.)
    wait_for("a long poll open", || queue.open_receives() == 1).await;
    shutdown.cancel();
    queue.send(created("in/late.csv"));
    running.await.unwrap();

    assert_eq!(
        ingest.calls("in/late.csv"),
        0,
        "nothing starts after shutdown"
    );
    assert_eq!(worker.stats().messages_released.load(Ordering::Relaxed), 1);
    assert_eq!(queue.in_flight(), 0, "not hidden for a visibility timeout");
    assert_eq!(attempts_now(&queue).await, [1]);
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_abandons_the_work_and_its_receive_counts() {
    let queue = Arc::new(MemoryQueue::new(true));
    let ingest = Arc::new(ScriptedIngest::default());
    ingest.then("in/held.csv", &[Step::Hang]);
    queue.send(created("in/held.csv"));
    queue.fail_visibility_changes(true);
    // One attempt allowed: the lost lease's receive counts, so the next
    // receive is over the limit and goes to the DLQ (as a crash would).
    let worker = scripted_worker(&queue, &ingest, settings(1, 2));
    let (shutdown, running) = start(&worker);
    let stats = worker.stats();
    wait_for("the lease lost", || {
        stats.messages_left_for_retry.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(queue.len(), 1, "not deleted: it is no longer ours");
    queue.fail_visibility_changes(false);
    wait_for("dead-lettered on its next receive", || queue.is_empty()).await;
    shutdown.cancel();
    running.await.unwrap();
    assert_eq!(ingest.calls("in/held.csv"), 1);
    assert_eq!(
        dead_letter_kinds(&queue),
        [ErrorKind::MaxReceiveCountExceeded]
    );
}

#[tokio::test(start_paused = true)]
async fn at_the_maximum_lease_the_work_is_abandoned_and_the_message_comes_back() {
    let queue = Arc::new(MemoryQueue::new(true));
    let ingest = Arc::new(ScriptedIngest::default());
    ingest.then("in/huge.csv", &[Step::Hang]);
    queue.send(created("in/huge.csv"));
    let mut short_lease = settings(5, 2);
    short_lease.max_lease = Duration::from_secs(120);
    let worker = scripted_worker(&queue, &ingest, short_lease);
    let started = tokio::time::Instant::now();
    let drained = queue.clone();
    run_until(worker.clone(), move || drained.is_empty()).await;

    // Held for the maximum lease, then back after its visibility timeout.
    assert!(
        started.elapsed() >= Duration::from_secs(120),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ingest.calls("in/huge.csv"), 2);
    let stats = worker.stats();
    assert_eq!(stats.messages_left_for_retry.load(Ordering::Relaxed), 1);
    assert!(stats.visibility_extensions.load(Ordering::Relaxed) >= 3);
    assert_eq!(stats.objects_committed.load(Ordering::Relaxed), 1);
    assert!(queue.dead_letters().is_empty());
}

#[tokio::test(start_paused = true)]
async fn objects_waiting_in_a_group_free_their_slot_and_are_deleted_after_its_commit() {
    let queue = Arc::new(MemoryQueue::new(true));
    let ingest = Arc::new(ScriptedIngest::default());
    for name in ["a", "b", "c"] {
        ingest.then(
            &format!("in/{name}.csv"),
            &[Step::Grouped(Duration::from_secs(4))],
        );
    }
    // One slot: without parking, the three would run one after another.
    let worker = scripted_worker(&queue, &ingest, settings(5, 1));
    let (shutdown, running) = start(&worker);
    let stats = worker.stats();
    for name in ["a", "b", "c"] {
        queue.send(created(&format!("in/{name}.csv")));
    }
    wait_for("all three in the group", || {
        ["a", "b", "c"]
            .iter()
            .all(|name| ingest.calls(&format!("in/{name}.csv")) == 1)
    })
    .await;
    // They wait for the group's commit, leased: nothing deleted yet.
    assert_eq!(stats.objects_committed.load(Ordering::Relaxed), 0);
    assert_eq!(queue.in_flight(), 3);
    wait_for("the group committed", || {
        stats.objects_committed.load(Ordering::Relaxed) == 3
    })
    .await;
    wait_for("every message deleted", || queue.is_empty()).await;
    shutdown.cancel();
    running.await.unwrap();
    assert_eq!(stats.messages_deleted.load(Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn an_object_another_writer_holds_uncommitted_is_handed_back_uncounted_for_later() {
    let queue = Arc::new(MemoryQueue::new(true));
    let ingest = Arc::new(ScriptedIngest::default());
    ingest.then("in/dup.csv", &[Step::ClaimedElsewhere]);
    let worker = scripted_worker(&queue, &ingest, settings(5, 1));
    let (shutdown, running) = start(&worker);
    let stats = worker.stats();
    queue.send(created("in/dup.csv"));
    wait_for("handed back", || {
        stats.messages_released.load(Ordering::Relaxed) == 1
    })
    .await;
    let handed_back = tokio::time::Instant::now();
    assert_eq!(ingest.calls("in/dup.csv"), 1);
    // Hidden for a while, then received again as a first attempt (the
    // hand-back did not count) and, the other writer done, committed.
    wait_for("committed on the next receive", || {
        stats.objects_committed.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(
        handed_back.elapsed() >= Duration::from_secs(9),
        "{:?}",
        handed_back.elapsed()
    );
    assert_eq!(ingest.calls("in/dup.csv"), 2);
    assert_eq!(
        *ingest.prechecks.lock().unwrap(),
        [
            ("in/dup.csv".to_owned(), false),
            ("in/dup.csv".to_owned(), false)
        ],
        "the copy is a first attempt again"
    );
    wait_for("deleted", || queue.is_empty()).await;
    shutdown.cancel();
    running.await.unwrap();
    assert!(queue.dead_letters().is_empty());
}
