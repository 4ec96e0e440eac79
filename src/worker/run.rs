//! The receive loop and shutdown: receive when admission has room, pause
//! while the deployment refuses, back off on errors; at shutdown, stop
//! receiving, let in-flight messages finish within the grace period and
//! hand back the rest, and the late long poll's messages too.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use super::Worker;
use super::message::Received;
use crate::queue::batcher::{BatchOperation, Batcher};
use crate::queue::{Queue, QueueError, ReceivedMessage};
use crate::telemetry;

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
pub(super) struct Acknowledgements {
    pub(super) deletes: Batcher,
    pub(super) releases: Batcher,
}

impl Acknowledgements {
    pub(super) fn start(queue: &Arc<dyn Queue>) -> Acknowledgements {
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
    pub(super) async fn close(&self) {
        self.deletes.close().await;
        self.releases.close().await;
    }
}

/// How a message task learns where shutdown stands.
#[derive(Clone)]
pub(super) struct ShutdownSignals {
    /// Shutdown began: nothing new starts.
    pub(super) begun: CancellationToken,
    /// The grace period is over: in-flight messages are released.
    pub(super) abandon: CancellationToken,
    /// No ReceiveMessage of ours is open any more. A message is released
    /// only after this, or the long poll still open at shutdown could
    /// receive it again (and bump its receive count for nothing).
    pub(super) receiving_done: CancellationToken,
}

impl Worker {
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
        telemetry::build_info();
        info!(
            version = crate::VERSION,
            commit = crate::COMMIT,
            concurrency = self.settings.concurrency,
            "worker started"
        );

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
                count = self.admission.wait_for_room() => count as u64,
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
                    let places = self.admission.hold(messages.len());
                    for (message, place) in messages.into_iter().zip(places) {
                        self.stats.received();
                        let worker = self.clone();
                        let signals = signals.clone();
                        let acknowledgements = acknowledgements.clone();
                        let span = info_span!("message", message_id = %message.message_id, receive_count = message.receive_count);
                        tracker.spawn(
                            async move {
                                worker
                                    .handle_message(
                                        Received::new(message, place),
                                        &signals,
                                        &acknowledgements,
                                    )
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
        // Objects waiting in groups commit now, within the grace period.
        self.ingestor.flush_groups();
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
}
