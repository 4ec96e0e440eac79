//! One message's life: leased while its objects are worked on, then
//! deleted (everything durable), left for SQS to redeliver (a counted
//! failure), handed back as an uncounted copy (shutdown, a slot not found
//! in time, a deployment problem or outage), or dead-lettered.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Worker;
use super::admission::HeldMessage;
use super::object::ObjectOutcome;
use super::run::{Acknowledgements, ShutdownSignals};
use crate::dead_letter::DeadLetter;
use crate::error::ErrorKind;
use crate::lease::{Lease, LeaseEnd};
use crate::notification::{self, Notification};
use crate::queue::{MAX_DELAY_SECS, ReceivedMessage};
use crate::telemetry;
use crate::text::{LOG_ERROR_BYTES, excerpt};

/// What happens to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MessageOutcome {
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
    /// Another writer is committing one of its objects: hand it back,
    /// hidden for [`CLAIMED_ELSEWHERE_DELAY`].
    ClaimedElsewhere,
}

/// How long a message waits when another writer holds one of its objects
/// uncommitted: that writer's group commits within its age, and a dead
/// writer's claim is taken over at once (after an hour where the
/// filesystem has no locks).
const CLAIMED_ELSEWHERE_DELAY: Duration = Duration::from_secs(10);

/// A received message, holding its place among the messages the worker
/// holds (receive-ahead counts places); dropping it frees the place.
pub(super) struct Received {
    message: ReceivedMessage,
    place: HeldMessage,
}

/// A message being worked on: its visibility is extended for as long as
/// this value lives (the lease's heartbeat is stopped when it is dropped).
struct Leased {
    received: Received,
    lease: Lease,
}

impl Received {
    pub(super) fn new(message: ReceivedMessage, place: HeldMessage) -> Received {
        Received { message, place }
    }

    fn lease(self, worker: &Worker) -> Leased {
        let lease = Lease::start(
            worker.queue.clone(),
            self.message.receipt_handle.clone(),
            self.message.message_id.clone(),
            worker.settings.lease_timing(),
        );
        Leased {
            received: self,
            lease,
        }
    }

    /// Frees the message's place, keeping the message to acknowledge:
    /// another can be received while this one's acknowledgement waits
    /// in the batcher.
    fn free_place(self) -> ReceivedMessage {
        let Received { message, place } = self;
        drop(place);
        message
    }
}

impl Leased {
    /// The work is over: stops the heartbeat (counting its extensions)
    /// and gives back the message, still holding its place.
    fn end_lease(self, worker: &Worker) -> Received {
        worker.stats.extended(&self.lease);
        self.received
    }
}

impl Worker {
    /// Received → leased → outcome: the message value owns its place and,
    /// while it is worked on, its lease; each stage ends by giving the
    /// next one what it needs.
    pub(super) async fn handle_message(
        self: Arc<Self>,
        received: Received,
        signals: &ShutdownSignals,
        acknowledgements: &Acknowledgements,
    ) {
        let mut leased = received.lease(&self);
        let outcome = tokio::select! {
            outcome = self.process(&leased.received.message, &signals.begun) => outcome,
            end = leased.lease.ended() => {
                // Dropping `process` stops the object pipelines; nothing
                // uncommitted becomes visible. The message is not ours to
                // delete any more (lost) or is left to come back (expired).
                self.stats.left_for_retry();
                drop(leased.end_lease(&self));
                match end {
                    LeaseEnd::Lost(reason) => warn!(reason, "lease lost; work abandoned and not acknowledged"),
                    LeaseEnd::Expired => warn!(max_lease_secs = self.settings.max_lease.as_secs(), "maximum lease reached; work abandoned, the message comes back after its visibility timeout"),
                }
                return;
            }
            _ = signals.abandon.cancelled() => {
                // Hand back now so another worker picks it up at once;
                // never delete unfinished work without a copy queued. The
                // place stays held until the copy is queued.
                let received = leased.end_lease(&self);
                self.stats.released();
                if self.hand_back(&received.message, Duration::ZERO, "shutdown", acknowledgements).await {
                    info!("message released");
                }
                return;
            }
        };
        let message = leased.end_lease(&self).free_place();
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
                    telemetry::delete_failed();
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
            MessageOutcome::ClaimedElsewhere => {
                self.stats.released();
                if self
                    .hand_back(
                        &message,
                        CLAIMED_ELSEWHERE_DELAY,
                        "claimed_elsewhere",
                        acknowledgements,
                    )
                    .await
                {
                    info!(
                        delay_secs = CLAIMED_ELSEWHERE_DELAY.as_secs(),
                        "message handed back uncounted: another writer is committing its object"
                    );
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
                    )
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
    pub(super) async fn hand_back(
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
                    telemetry::delete_failed();
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
                                ErrorKind::MaxReceiveCountExceeded,
                                error.clone(),
                            )
                            .await,
                        );
                    }
                    combine(outcomes)
                }
                _ => {
                    self.dead_letter_message(message, ErrorKind::MaxReceiveCountExceeded, error)
                        .await
                }
            };
        }
        match parsed {
            Err(err) => {
                self.dead_letter_message(message, ErrorKind::InvalidMessage, err.to_string())
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

    async fn dead_letter_message(
        &self,
        message: &ReceivedMessage,
        error_kind: ErrorKind,
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
    pub(super) async fn send_dead_letter(&self, envelope: &DeadLetter) -> bool {
        // Absent for a message that names no object: left out of the line.
        let bucket = envelope.bucket.as_deref();
        let key = envelope.key.as_deref();
        let route = envelope.route.as_deref();
        let Some(dead_letters) = &self.dead_letters else {
            error!(bucket, key, route, error_kind = %envelope.error_kind,
                error = %excerpt(&envelope.error, LOG_ERROR_BYTES),
                "poison, but no dlq_url is configured; leaving the message to the queue's redrive policy");
            return false;
        };
        match dead_letters.send(&envelope.to_json()).await {
            Ok(()) => {
                error!(bucket, key, route, error_kind = %envelope.error_kind,
                    error = %excerpt(&envelope.error, LOG_ERROR_BYTES), "dead-lettered");
                true
            }
            Err(err) => {
                telemetry::dead_letter_send_failed();
                error!(bucket, key, route, error_kind = %envelope.error_kind,
                    dlq_error = %excerpt(&err.to_string(), LOG_ERROR_BYTES),
                    "dead-letter send failed; the message stays on the queue");
                false
            }
        }
    }
}

/// A transient failure waits for SQS to redeliver (a back-off of one
/// visibility timeout, and the receive counts); a deployment problem hands
/// the message back uncounted, delayed by the pause; an object that never
/// started is handed back at once.
pub(super) fn combine(outcomes: Vec<ObjectOutcome>) -> MessageOutcome {
    if outcomes.contains(&ObjectOutcome::Retry) {
        MessageOutcome::Retry
    } else if outcomes.contains(&ObjectOutcome::Deployment) {
        MessageOutcome::Deployment
    } else if outcomes.contains(&ObjectOutcome::ClaimedElsewhere) {
        MessageOutcome::ClaimedElsewhere
    } else if outcomes.contains(&ObjectOutcome::NotStarted) {
        MessageOutcome::Release
    } else if outcomes.contains(&ObjectOutcome::Unstarted) {
        MessageOutcome::Unstarted
    } else {
        MessageOutcome::Done
    }
}
