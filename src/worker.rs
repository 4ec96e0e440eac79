//! The worker: receives messages and drives each through its life.
//!
//! ```text
//! received ──parse──► Discard (test event, not ObjectCreated) ─────────► delete
//!    │──parse error / attempt > max ──► dead-letter ── sent? ──► delete
//!    ▼                                                └─ failed ──► leave
//! objects ── each, concurrently (bounded by worker.concurrency; a message
//!            may wait for a slot, see `receive_ahead.rs`):
//!    shutdown before a slot   → NotStarted
//!    waited too long for one  → NotStarted
//!    no route matches     → Unmatched (logged, counted)
//!    ingest + commit ok   → Committed
//!    deployment problem   → Deployment (receiving pauses, see deployment.rs)
//!    sink outage          → Deployment (the same; judged in deployment.rs)
//!    permanent error      → dead-letter; sent → DeadLettered, failed → Retry
//!    transient error      → Retry
//! all Committed / DeadLettered / Unmatched → delete the message
//! any Retry                                → leave it; SQS redelivers
//! any Deployment (and no Retry)            → hand it back, delayed by the pause
//! any NotStarted (and no Retry)            → hand it back at once
//! shutdown past the grace period           → hand it back at once
//! ```
//! "Hand back" sends a copy of the message carrying the attempts counted
//! so far (`queue::ATTEMPTS_ATTRIBUTE`), then deletes the original: the
//! receive does not count towards `max_receive_count`, while a receive
//! that ends any other way (a failure, a crash, a lost lease) does. If the
//! copy cannot be sent, the message is released (visibility 0) as before,
//! and that receive counts.
//!
//! Invariant: a message is deleted only after everything it named is
//! durable in the sink, accepted by the dead-letter queue, or handed back
//! as a copy that SQS accepted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::join_all;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::Config;
use crate::dead_letter::DeadLetter;
use crate::deployment::DeploymentHealth;
use crate::error::IngestError;
use crate::ingest::Ingestor;
use crate::lease::{Lease, LeaseEnd, LeaseTiming};
use crate::notification::{self, Notification, ObjectRef};
use crate::queue::batcher::{BatchOperation, Batcher};
use crate::queue::{MAX_DELAY_SECS, Queue, QueueError, ReceivedMessage};
use crate::receive_ahead::{HeldMessage, ReceiveAhead};
use crate::route::Router;
use crate::status::Liveness;
use crate::telemetry;
use crate::text::{LOG_ERROR_BYTES, excerpt};

/// While every object slot is busy, the receive loop still goes round this
/// often, so `/healthz` can tell "busy" from "stuck".
const LIVENESS_TICK: Duration = Duration::from_secs(5);

/// How long a finished message waits for others to share its delete (or
/// release) request. Its data is already committed, so this delays only
/// when the message leaves the queue, not when the data can be read; long
/// enough that a busy worker fills batches of ten.
const BATCH_LINGER: Duration = Duration::from_millis(20);

/// The batched acknowledgements of one `run`: deletes of finished messages
/// and releases (visibility 0) of abandoned ones. Visibility extensions
/// stay single requests: each is a per-message timer (see `lease.rs`).
struct Acknowledgements {
    deletes: Batcher,
    releases: Batcher,
}

impl Acknowledgements {
    fn start(queue: &Arc<dyn Queue>) -> Acknowledgements {
        Acknowledgements {
            deletes: Batcher::start(queue.clone(), BatchOperation::Delete, BATCH_LINGER),
            releases: Batcher::start(
                queue.clone(),
                BatchOperation::SetVisibility { timeout_secs: 0 },
                BATCH_LINGER,
            ),
        }
    }

    /// Sends what is still waiting; called once every message is finished.
    async fn close(&self) {
        self.deletes.close().await;
        self.releases.close().await;
    }
}

/// How a message task learns where shutdown stands.
#[derive(Clone)]
struct ShutdownSignals {
    /// Shutdown began: nothing new starts.
    begun: CancellationToken,
    /// The grace period is over: in-flight messages are released.
    abandon: CancellationToken,
    /// No ReceiveMessage of ours is open any more. A message is released
    /// only after this, or the long poll still open at shutdown could
    /// receive it again (and bump its receive count for nothing).
    receiving_done: CancellationToken,
}

/// What happened to one object of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjectOutcome {
    Committed,
    DeadLettered,
    Unmatched,
    Retry,
    /// The deployment refused it (credentials, grants): not the file's
    /// failure, and not counted as an attempt.
    Deployment,
    /// Shutdown began while it waited for a slot.
    NotStarted,
    /// It waited for a slot longer than receive-ahead allows.
    Unstarted,
}

/// What happens to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageOutcome {
    /// Everything is durable somewhere: delete.
    Done,
    /// Something must be tried again: leave it for SQS to redeliver.
    Retry,
    /// Shutdown came first: hand it back at once for another worker.
    Release,
    /// Waited too long for a slot: hand it back at once.
    Unstarted,
    /// The deployment refused it: hand it back, hidden for the pause.
    Deployment,
}

/// Outcome counters, for logs and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub messages_received: AtomicU64,
    pub messages_deleted: AtomicU64,
    pub messages_discarded: AtomicU64,
    pub messages_left_for_retry: AtomicU64,
    pub messages_released: AtomicU64,
    pub objects_committed: AtomicU64,
    pub objects_dead_lettered: AtomicU64,
    pub objects_unmatched: AtomicU64,
    pub receive_errors: AtomicU64,
    pub visibility_extensions: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Each outcome is counted twice: in `Stats` for this worker (tests, the
/// shutdown summary) and in the process's Prometheus metrics.
impl Stats {
    fn received(&self) {
        bump(&self.messages_received);
        telemetry::message_received();
    }
    fn deleted(&self) {
        bump(&self.messages_deleted);
        telemetry::message_deleted();
    }
    fn discarded(&self, reason: &'static str) {
        bump(&self.messages_discarded);
        telemetry::message_discarded(reason);
    }
    fn left_for_retry(&self) {
        bump(&self.messages_left_for_retry);
        telemetry::message_left_for_retry();
    }
    fn released(&self) {
        bump(&self.messages_released);
        telemetry::message_released();
    }
    fn unmatched(&self) {
        bump(&self.objects_unmatched);
        telemetry::object_unmatched();
    }
    fn receive_error(&self, class: &'static str) {
        bump(&self.receive_errors);
        telemetry::receive_error(class);
    }
    fn extended(&self, lease: &Lease) {
        let count = lease.extensions();
        self.visibility_extensions
            .fetch_add(count, Ordering::Relaxed);
        telemetry::visibility_extended(count);
    }
}

/// Queue settings the worker needs, copied out of the config.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub wait_time_secs: u64,
    pub max_messages: u64,
    pub visibility_timeout_secs: u64,
    pub max_receive_count: u64,
    pub concurrency: usize,
    pub shutdown_grace: Duration,
    pub max_lease: Duration,
    pub max_prefetch: usize,
}

impl WorkerSettings {
    pub fn from_config(config: &Config) -> WorkerSettings {
        WorkerSettings {
            wait_time_secs: config.queue.wait_time_secs,
            max_messages: config.queue.max_messages,
            visibility_timeout_secs: config.queue.visibility_timeout_secs,
            max_receive_count: config.queue.max_receive_count,
            concurrency: config.worker.concurrency.get(),
            shutdown_grace: Duration::from_secs(config.worker.shutdown_grace_secs),
            max_lease: Duration::from_secs(config.worker.max_lease_secs),
            max_prefetch: config.worker.max_prefetch,
        }
    }

    fn lease_timing(&self) -> LeaseTiming {
        LeaseTiming {
            visibility_timeout: Duration::from_secs(self.visibility_timeout_secs),
            max_lease: self.max_lease,
        }
    }
}

pub struct Worker {
    queue: Arc<dyn Queue>,
    liveness: Arc<Liveness>,
    router: Router,
    ingestor: Ingestor,
    settings: WorkerSettings,
    objects_in_flight: Arc<Semaphore>,
    receive_ahead: Arc<ReceiveAhead>,
    deployment: Arc<DeploymentHealth>,
    stats: Arc<Stats>,
}

impl Worker {
    pub fn new(
        queue: Arc<dyn Queue>,
        router: Router,
        ingestor: Ingestor,
        settings: WorkerSettings,
    ) -> Worker {
        // A receive returns within its long poll plus the SDK's bounded
        // attempts; far longer than that means the loop is stuck.
        let stuck_after = Duration::from_secs(settings.wait_time_secs + 180);
        Worker {
            queue,
            liveness: Arc::new(Liveness::new(stuck_after)),
            router,
            ingestor,
            objects_in_flight: Arc::new(Semaphore::new(settings.concurrency)),
            receive_ahead: Arc::new(ReceiveAhead::new(
                settings.concurrency,
                settings.max_messages as usize,
                settings.max_prefetch,
            )),
            settings,
            deployment: Arc::default(),
            stats: Arc::default(),
        }
    }

    /// Deployment problems seen now: for `/readyz` and tests.
    pub fn deployment(&self) -> Arc<DeploymentHealth> {
        self.deployment.clone()
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    pub fn liveness(&self) -> Arc<Liveness> {
        self.liveness.clone()
    }

    pub fn queue(&self) -> Arc<dyn Queue> {
        self.queue.clone()
    }

    /// Receives and processes messages until `shutdown` fires, then lets
    /// in-flight work finish within the grace period and releases the rest.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let signals = ShutdownSignals {
            begun: shutdown.clone(),
            abandon: CancellationToken::new(),
            receiving_done: CancellationToken::new(),
        };
        let mut late_receive = false;
        let backoff_builder = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .without_max_times();
        let mut backoff = backoff_builder.build();
        let acknowledgements = Arc::new(Acknowledgements::start(&self.queue));
        info!(concurrency = self.settings.concurrency, "worker started");

        loop {
            // Receive when there is room for what a receive should bring:
            // free slots, plus a few messages ahead when objects are quick.
            self.liveness.tick();
            // A deployment problem (credentials, a sink refusing us) pauses
            // receiving: whatever arrived now would fail alike.
            if let Some(pause) = self.deployment.pause_remaining() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause.min(LIVENESS_TICK)) => continue,
                }
            }
            telemetry::receive_paused(false);
            let max_messages = tokio::select! {
                _ = shutdown.cancelled() => break,
                count = self.receive_ahead.wait_for_room() => count as u64,
                // Busy, not stuck: every slot is working on an object.
                _ = tokio::time::sleep(LIVENESS_TICK) => continue,
            };
            let queue = self.queue.clone();
            let (wait_time_secs, visibility_timeout_secs) = (
                self.settings.wait_time_secs,
                self.settings.visibility_timeout_secs,
            );
            let mut receive = Box::pin(async move {
                queue
                    .receive(max_messages, wait_time_secs, visibility_timeout_secs)
                    .await
            });
            let received = tokio::select! {
                _ = shutdown.cancelled() => {
                    // Keep the long poll alive: SQS answers it anyway, and
                    // messages it hands to a dropped request stay hidden
                    // for a whole visibility timeout. Release them instead.
                    let worker = self.clone();
                    let acknowledgements = acknowledgements.clone();
                    let receiving_done = signals.receiving_done.clone();
                    tracker.spawn(async move {
                        worker.release_late_receive(receive, &acknowledgements).await;
                        receiving_done.cancel();
                    });
                    late_receive = true;
                    break;
                }
                received = &mut receive => received,
            };
            match received {
                Ok(messages) => {
                    backoff = backoff_builder.build();
                    self.deployment.succeeded(["sqs"]);
                    let places = self.receive_ahead.hold(messages.len());
                    for (message, place) in messages.into_iter().zip(places) {
                        self.stats.received();
                        let worker = self.clone();
                        let signals = signals.clone();
                        let acknowledgements = acknowledgements.clone();
                        let span = info_span!("message", message_id = %message.message_id, receive_count = message.receive_count);
                        tracker.spawn(
                            async move {
                                worker
                                    .handle_message(message, place, &signals, &acknowledgements)
                                    .await
                            }
                            .instrument(span),
                        );
                    }
                }
                Err(err) if !err.is_retryable() => {
                    // Credentials, permissions, a queue gone: the
                    // deployment's problem. Pause, and say what to fix.
                    self.stats.receive_error("permanent");
                    let code = err.code.as_deref().unwrap_or("refused");
                    let pause =
                        self.deployment
                            .report("sqs", code, &format!("{err} ({})", err.hint()));
                    error!(error = %err, hint = err.hint(), pause_ms = pause.as_millis() as u64, "receive refused; receiving paused");
                }
                Err(err) => {
                    self.stats.receive_error(if err.is_retryable() {
                        "transient"
                    } else {
                        "permanent"
                    });
                    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                    let retry_in_ms = delay.as_millis() as u64;
                    if err.is_retryable() {
                        warn!(error = %err, hint = err.hint(), retry_in_ms, "receive failed; backing off");
                    } else {
                        error!(error = %err, hint = err.hint(), retry_in_ms, "receive refused; backing off");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }

        if !late_receive {
            signals.receiving_done.cancel();
        }
        info!(
            in_flight_messages = tracker.len(),
            grace_secs = self.settings.shutdown_grace.as_secs(),
            "shutting down: receiving stopped"
        );
        tracker.close();
        if tokio::time::timeout(self.settings.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                in_flight_messages = tracker.len(),
                "grace period over; releasing unfinished messages"
            );
            signals.abandon.cancel();
            tracker.wait().await;
        }
        // Every message task has had its answer, so nothing is waiting;
        // closing stops the batchers (and would send any stragglers).
        acknowledgements.close().await;
        info!(stats = ?self.stats, "worker stopped");
    }

    /// Waits for a long poll that was running when shutdown began and
    /// releases whatever it returns, so no message stays hidden for a
    /// visibility timeout because of a worker that is going away. The poll
    /// ends within `wait_time_secs` whatever the grace period, so this is
    /// waited for even when in-flight work is abandoned.
    async fn release_late_receive(
        &self,
        receive: impl Future<Output = Result<Vec<ReceivedMessage>, QueueError>>,
        acknowledgements: &Acknowledgements,
    ) {
        let Ok(messages) = receive.await else {
            return;
        };
        let releases = messages.iter().map(|message| async move {
            self.stats.received();
            self.stats.released();
            if self
                .hand_back(message, Duration::ZERO, "shutdown", acknowledgements)
                .await
            {
                info!(message_id = %message.message_id, "message received during shutdown released")
            }
        });
        join_all(releases).await;
    }

    /// `place` is the message's place among those the worker holds; it
    /// is given back once the work is done, before the acknowledgement.
    async fn handle_message(
        self: Arc<Self>,
        message: ReceivedMessage,
        place: HeldMessage,
        signals: &ShutdownSignals,
        acknowledgements: &Acknowledgements,
    ) {
        let mut lease = Lease::start(
            self.queue.clone(),
            message.receipt_handle.clone(),
            message.message_id.clone(),
            self.settings.lease_timing(),
        );
        let outcome = tokio::select! {
            outcome = self.process(&message, &signals.begun) => outcome,
            end = lease.ended() => {
                // Dropping `process` stops the object pipelines; nothing
                // uncommitted becomes visible. The message is not ours to
                // delete any more (lost) or is left to come back (expired).
                self.stats.left_for_retry();
                self.stats.extended(&lease);
                match end {
                    LeaseEnd::Lost(reason) => warn!(reason, "lease lost; work abandoned and not acknowledged"),
                    LeaseEnd::Expired => warn!(max_lease_secs = self.settings.max_lease.as_secs(), "maximum lease reached; work abandoned, the message comes back after its visibility timeout"),
                }
                return;
            }
            _ = signals.abandon.cancelled() => {
                // Hand back now so another worker picks it up at once;
                // never delete unfinished work without a copy queued.
                self.stats.extended(&lease);
                drop(lease);
                self.stats.released();
                if self.hand_back(&message, Duration::ZERO, "shutdown", acknowledgements).await {
                    info!("message released");
                }
                return;
            }
        };
        self.stats.extended(&lease);
        drop(lease);
        drop(place);
        match outcome {
            MessageOutcome::Done => match acknowledgements
                .deletes
                .submit(&message.message_id, &message.receipt_handle)
                .await
            {
                Ok(()) => self.stats.deleted(),
                // Not retried: redelivery is the retry, and the sinks are
                // idempotent. The batcher logged the SQS code and message.
                Err(err) => {
                    warn!(
                        hint = err.hint(),
                        "delete failed; the message will be redelivered"
                    )
                }
            },
            MessageOutcome::Retry => {
                self.stats.left_for_retry();
                info!("message left on the queue for a retry");
            }
            MessageOutcome::Release => {
                signals.receiving_done.cancelled().await;
                self.stats.released();
                if self
                    .hand_back(&message, Duration::ZERO, "shutdown", acknowledgements)
                    .await
                {
                    info!("message waiting for a slot at shutdown released");
                }
            }
            MessageOutcome::Unstarted => {
                self.stats.released();
                if self
                    .hand_back(
                        &message,
                        Duration::ZERO,
                        "waited_for_slot",
                        acknowledgements,
                    )
                    .await
                {
                    info!("message that waited too long for a slot released for other workers");
                }
            }
            MessageOutcome::Deployment => {
                self.stats.left_for_retry();
                let pause = self.deployment.pause_remaining().unwrap_or_default();
                if self
                    .hand_back(&message, pause, "deployment", acknowledgements)
                    .await
                {
                    info!(
                        delay_secs = pause.as_secs(),
                        "message handed back uncounted until the deployment is fixed"
                    );
                }
            }
        }
    }

    /// Hands `message` back without counting this receive: sends a copy
    /// carrying the attempts before it, hidden for `delay`, then deletes
    /// the original. If the copy cannot be sent, the original is released
    /// (made visible after `delay`) instead, and this receive counts.
    /// Returns whether the message is queued for another receive soon
    /// (failures are logged here or by the batcher).
    async fn hand_back(
        &self,
        message: &ReceivedMessage,
        delay: Duration,
        reason: &'static str,
        acknowledgements: &Acknowledgements,
    ) -> bool {
        let delay_secs =
            (delay.as_secs() + u64::from(delay.subsec_nanos() > 0)).min(MAX_DELAY_SECS);
        let attempts = message.attempts_before();
        match self.queue.requeue(message, attempts, delay_secs).await {
            Ok(()) => {
                telemetry::message_handed_back(reason);
                if acknowledgements
                    .deletes
                    .submit(&message.message_id, &message.receipt_handle)
                    .await
                    .is_err()
                {
                    // The batcher logged the SQS code and message.
                    warn!(
                        reason,
                        "message handed back as a copy, but the original could not be deleted; both will be received (the sinks absorb the duplicate)"
                    );
                }
                true
            }
            Err(err) => {
                warn!(reason, error = %err, hint = err.hint(),
                    "could not hand the message back as a copy (does the role have sqs:SendMessage on the queue?); releasing it instead, and this receive counts as an attempt");
                let released = if delay_secs == 0 {
                    acknowledgements
                        .releases
                        .submit(&message.message_id, &message.receipt_handle)
                        .await
                } else {
                    self.queue
                        .set_visibility(&message.receipt_handle, delay_secs)
                        .await
                };
                match released {
                    Ok(()) => true,
                    Err(_) => {
                        warn!("could not release message; it returns after its visibility timeout");
                        false
                    }
                }
            }
        }
    }

    async fn process(
        &self,
        message: &ReceivedMessage,
        shutdown: &CancellationToken,
    ) -> MessageOutcome {
        let parsed = notification::parse(&message.body);
        // Attempts, not receives: hand-backs (shutdown, receive-ahead,
        // deployment problems) do not count; failures and crashes do.
        if message.attempt() > self.settings.max_receive_count {
            let error = format!(
                "attempted {} times, more than max_receive_count {}",
                message.attempt(),
                self.settings.max_receive_count
            );
            return match parsed {
                Ok(Notification::Objects(objects)) => {
                    let mut outcomes = Vec::with_capacity(objects.len());
                    for object in &objects {
                        let route = self.router.route(&object.bucket, &object.key);
                        outcomes.push(
                            self.dead_letter_object(
                                message,
                                object,
                                route.as_ref().map(|r| r.name.as_str()),
                                "max_receive_count_exceeded",
                                error.clone(),
                            )
                            .await,
                        );
                    }
                    combine(outcomes)
                }
                _ => {
                    self.dead_letter_message(message, "max_receive_count_exceeded", error)
                        .await
                }
            };
        }
        match parsed {
            Err(err) => {
                self.dead_letter_message(message, "invalid_message", err.to_string())
                    .await
            }
            Ok(Notification::Discard(reason)) => {
                self.stats.discarded(reason.label());
                info!(reason = reason.label(), "message discarded");
                MessageOutcome::Done
            }
            Ok(Notification::Objects(objects)) => {
                let outcomes = join_all(
                    objects
                        .iter()
                        .map(|object| self.process_object(message, object, shutdown)),
                )
                .await;
                combine(outcomes)
            }
        }
    }

    async fn process_object(
        &self,
        message: &ReceivedMessage,
        object: &ObjectRef,
        shutdown: &CancellationToken,
    ) -> ObjectOutcome {
        let bucket = object.bucket.as_str();
        let key = object.key.as_str();
        if !self.router.bucket_allowed(bucket) {
            // Never fetch from a bucket the config does not name: a forged or
            // misrouted notification must not make us read someone's data.
            return self
                .dead_letter_object(
                    message,
                    object,
                    None,
                    "bucket_not_allowed",
                    format!("{}: no route allows bucket `{bucket}`", object.s3_uri()),
                )
                .await;
        }
        let Some(route) = self.router.route(bucket, key) else {
            self.stats.unmatched();
            info!(bucket, key, "no route matches the key; object skipped");
            return ObjectOutcome::Unmatched;
        };
        // Once shutdown has begun nothing new starts: a message still
        // waiting here goes back to the queue for another worker.
        // A message received ahead waits a bounded time (receive_ahead.rs):
        // past it, it goes back to the queue instead of hiding there.
        let _slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return ObjectOutcome::NotStarted,
            slot = self.receive_ahead.slot(&self.objects_in_flight) => match slot {
                Some(slot) => slot,
                None => {
                    info!(bucket, key, "waited too long for a slot; handing the message back");
                    return ObjectOutcome::Unstarted;
                }
            },
        };
        let _in_flight = InFlightGauge::new();
        let started = Instant::now();
        let ingested = self.ingestor.ingest(object, &route).await;
        self.receive_ahead.object_finished(started.elapsed());
        match &ingested {
            Ok(_) => {
                self.deployment.object_read(bucket);
                let components: Vec<String> = std::iter::once("s3".to_owned())
                    .chain(route.sinks.iter().map(|sink| format!("sink:{sink}")))
                    .collect();
                self.deployment
                    .succeeded(components.iter().map(String::as_str));
            }
            Err(err) if err.object_was_read() => {
                self.deployment.object_read(bucket);
                self.deployment.succeeded(["s3"]);
            }
            Err(_) => {}
        }
        match ingested {
            Ok(committed) => {
                bump(&self.stats.objects_committed);
                let duration = started.elapsed();
                let lag = object
                    .event_time
                    .and_then(|t| (chrono::Utc::now() - t).to_std().ok());
                telemetry::object_committed(telemetry::CommittedObject {
                    route: &route.name,
                    sinks: &route.sinks,
                    bytes: committed.lineage.size,
                    rows: committed.rows,
                    batches: committed.batches,
                    duration,
                    lag,
                });
                info!(
                    bucket,
                    key,
                    route = %route.name,
                    sinks = %route.sinks.join(","),
                    rows = committed.rows,
                    bytes = committed.lineage.size,
                    location = %committed.locations(),
                    already_committed = committed.already_committed(),
                    elapsed_ms = duration.as_millis() as u64,
                    lag_ms = lag.map(|l| l.as_millis() as u64),
                    "object committed"
                );
                ObjectOutcome::Committed
            }
            Err(IngestError::Deployment {
                component,
                code,
                detail,
                ..
            }) => self.deployment_problem(
                object,
                &route.name,
                "deployment_error",
                &component,
                &code,
                &detail,
            ),
            Err(IngestError::Unavailable {
                component,
                code,
                detail,
                ..
            }) if self.deployment.unavailable_is_outage(&component) => {
                // Judged in deployment.rs: nothing committed to the sink
                // since it began failing, so it is an outage, not the file.
                let detail = format!(
                    "{detail}; {component} is unavailable: the message is handed back uncounted until it works again"
                );
                self.deployment_problem(
                    object,
                    &route.name,
                    "unavailable",
                    &component,
                    &code,
                    &detail,
                )
            }
            Err(IngestError::AccessDenied { detail, .. })
                if self.deployment.access_denied_is_deployment(bucket) =>
            {
                // Judged in deployment.rs: nothing of this bucket was read
                // since it began refusing, so the role is the suspect.
                let detail = format!(
                    "{detail}; check the worker role's s3:GetObject (and kms:Decrypt) on bucket `{bucket}`; if other objects of the bucket read fine, this object is dead-lettered as access_denied on its next attempt"
                );
                self.deployment_problem(
                    object,
                    &route.name,
                    "deployment_error",
                    "s3",
                    "AccessDenied",
                    &detail,
                )
            }
            Err(err @ IngestError::Unavailable { .. }) => {
                telemetry::object_retried(&route.name, err.kind());
                warn!(bucket, key, route = %route.name, error_kind = err.kind(),
                    error = %excerpt(&err.to_string(), LOG_ERROR_BYTES),
                    "object failed on a sink that works for other objects; this attempt counts against the file");
                ObjectOutcome::Retry
            }
            Err(err) if err.is_retryable() => {
                telemetry::object_retried(&route.name, err.kind());
                warn!(bucket, key, route = %route.name, error_kind = err.kind(),
                    error = %excerpt(&err.to_string(), LOG_ERROR_BYTES), "object failed; will retry");
                ObjectOutcome::Retry
            }
            Err(err) => {
                self.dead_letter_object(
                    message,
                    object,
                    Some(&route.name),
                    err.kind(),
                    err.to_string(),
                )
                .await
            }
        }
    }

    /// Records a problem of the deployment or an outage for an object
    /// (`kind`: `deployment_error` or `unavailable`): logged as an error
    /// that says what to fix, counted, and the worker pauses receiving.
    fn deployment_problem(
        &self,
        object: &ObjectRef,
        route: &str,
        kind: &'static str,
        component: &str,
        code: &str,
        detail: &str,
    ) -> ObjectOutcome {
        let pause = self.deployment.report(component, code, detail);
        telemetry::object_retried(route, kind);
        error!(
            bucket = %object.bucket,
            key = %object.key,
            route,
            error_kind = kind,
            component,
            code,
            error = %detail,
            pause_ms = pause.as_millis() as u64,
            "the deployment or a sink is failing, not the file: the message stays queued uncounted and receiving pauses"
        );
        ObjectOutcome::Deployment
    }

    async fn dead_letter_object(
        &self,
        message: &ReceivedMessage,
        object: &ObjectRef,
        route: Option<&str>,
        error_kind: &str,
        error: String,
    ) -> ObjectOutcome {
        let envelope = DeadLetter::for_object(
            object,
            route,
            error_kind,
            error,
            &message.message_id,
            message.attempt(),
            &message.body,
        );
        if self.send_dead_letter(&envelope).await {
            bump(&self.stats.objects_dead_lettered);
            telemetry::object_dead_lettered(route, error_kind);
            ObjectOutcome::DeadLettered
        } else {
            ObjectOutcome::Retry
        }
    }

    async fn dead_letter_message(
        &self,
        message: &ReceivedMessage,
        error_kind: &str,
        error: String,
    ) -> MessageOutcome {
        let envelope = DeadLetter::for_message(
            error_kind,
            error,
            &message.message_id,
            message.attempt(),
            &message.body,
        );
        if self.send_dead_letter(&envelope).await {
            MessageOutcome::Done
        } else {
            MessageOutcome::Retry
        }
    }

    /// True only when the dead-letter queue accepted the envelope.
    async fn send_dead_letter(&self, envelope: &DeadLetter) -> bool {
        let bucket = envelope.bucket.as_deref().unwrap_or("");
        let key = envelope.key.as_deref().unwrap_or("");
        let route = envelope.route.as_deref().unwrap_or("");
        if !self.queue.has_dead_letter_queue() {
            error!(bucket, key, route, error_kind = %envelope.error_kind,
                error = %excerpt(&envelope.error, LOG_ERROR_BYTES),
                "poison, but no dlq_url is configured; leaving the message to the queue's redrive policy");
            return false;
        }
        match self.queue.dead_letter(&envelope.to_json()).await {
            Ok(()) => {
                error!(bucket, key, route, error_kind = %envelope.error_kind,
                    error = %excerpt(&envelope.error, LOG_ERROR_BYTES), "dead-lettered");
                true
            }
            Err(err) => {
                error!(bucket, key, route, error_kind = %envelope.error_kind,
                    dlq_error = %excerpt(&err.to_string(), LOG_ERROR_BYTES),
                    "dead-letter send failed; the message stays on the queue");
                false
            }
        }
    }
}

/// Counts an object in the in-flight gauge for as long as it lives.
struct InFlightGauge;

impl InFlightGauge {
    fn new() -> InFlightGauge {
        telemetry::objects_in_flight(1.0);
        InFlightGauge
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        telemetry::objects_in_flight(-1.0);
    }
}

/// A transient failure waits for SQS to redeliver (a back-off of one
/// visibility timeout, and the receive counts); a deployment problem hands
/// the message back uncounted, delayed by the pause; an object that never
/// started is handed back at once.
fn combine(outcomes: Vec<ObjectOutcome>) -> MessageOutcome {
    if outcomes.contains(&ObjectOutcome::Retry) {
        MessageOutcome::Retry
    } else if outcomes.contains(&ObjectOutcome::Deployment) {
        MessageOutcome::Deployment
    } else if outcomes.contains(&ObjectOutcome::NotStarted) {
        MessageOutcome::Release
    } else if outcomes.contains(&ObjectOutcome::Unstarted) {
        MessageOutcome::Unstarted
    } else {
        MessageOutcome::Done
    }
}

#[cfg(test)]
mod tests {
    //! The message state machine against the in-memory queue. Paths that
    //! need S3 (ingesting a matched object) are covered by the LocalStack
    //! integration tests.

    use super::*;
    use crate::config::{CsvOptions, FileFormat, RouteConfig};
    use crate::queue::memory::MemoryQueue;
    use std::collections::HashMap;

    fn worker(queue: Arc<MemoryQueue>, max_receive_count: u64) -> Arc<Worker> {
        worker_with(queue, max_receive_count, "in/*.csv", 2)
    }

    fn worker_with(
        queue: Arc<MemoryQueue>,
        max_receive_count: u64,
        key_glob: &str,
        concurrency: usize,
    ) -> Arc<Worker> {
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version_latest()
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .build(),
        );
        let router = Router::new(&[RouteConfig {
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
        }])
        .unwrap();
        Arc::new(Worker::new(
            queue,
            router,
            Ingestor::new(crate::object::S3Objects::new(s3, None), HashMap::new()),
            WorkerSettings {
                wait_time_secs: 1,
                max_messages: 10,
                visibility_timeout_secs: 30,
                max_receive_count,
                concurrency,
                shutdown_grace: Duration::from_secs(5),
                max_lease: Duration::from_secs(3600),
                max_prefetch: 20,
            },
        ))
    }

    const UNMATCHED: &str = r#"{"Records":[{"eventName":"ObjectCreated:Put","eventTime":"2026-11-27T12:00:00.000Z",
        "s3":{"bucket":{"name":"b"},"object":{"key":"other/x.json","size":1,"eTag":"e"}}}]}"#;

    async fn run_until(worker: Arc<Worker>, done: impl Fn() -> bool) {
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(worker.run(shutdown.clone()));
        // Paused time: a long virtual deadline costs nothing.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not reached"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
        assert_eq!(letter.error_kind, "invalid_message");
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
        assert_eq!(letter.error_kind, "max_receive_count_exceeded");
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
        let slot = worker.objects_in_flight.clone().acquire_owned().await;
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
        assert_eq!(letter.error_kind, "max_receive_count_exceeded");
        assert_eq!(letter.receive_count, 3, "the third attempt");
    }

    #[tokio::test(start_paused = true)]
    async fn without_send_permission_a_hand_back_falls_back_to_a_counted_release() {
        let queue = Arc::new(MemoryQueue::new(true));
        queue.fail_requeues(true);
        queue.send(MATCHED);
        let worker = worker_with(queue.clone(), 5, "in/*.csv", 1);
        let stats = worker.stats();
        let slot = worker.objects_in_flight.clone().acquire_owned().await;
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
        use ObjectOutcome::*;
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
}
