//! The visibility heartbeat: while a message is being worked on, its
//! visibility timeout is pushed forward at about half the timeout, so a
//! large file is not redelivered to another worker mid-way.
//!
//! The heartbeat is a task owned by a [`Lease`]; dropping the lease stops
//! it. The lease ends on its own when the message is lost (its receipt
//! handle no longer valid: another worker may hold it now) or when the
//! configured maximum lease is reached (a runaway file); [`Lease::ended`]
//! resolves then, and the worker stops working on the message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::queue::Queue;

/// Why a lease ended before its work did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEnd {
    /// The message can no longer be extended; another worker may have it.
    Lost(String),
    /// The message has been held for the maximum lease.
    Expired,
}

pub struct Lease {
    heartbeat: JoinHandle<()>,
    ended: watch::Receiver<Option<LeaseEnd>>,
    extensions: Arc<AtomicU64>,
}

/// Heartbeat timing, separate so tests can reason about it.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    pub visibility_timeout: Duration,
    pub max_lease: Duration,
}

/// SQS keeps a message invisible for at most 12 hours from its receive,
/// extensions included.
pub const SQS_MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

impl LeaseTiming {
    /// Extends at half the timeout: the other half is the margin for the
    /// extension request itself and its retries.
    fn period(&self) -> Duration {
        (self.visibility_timeout / 2).max(Duration::from_millis(500))
    }

    /// How long before the visibility runs out an extension must have been
    /// answered: a tenth of the timeout, between 100 ms and 5 s.
    fn margin(&self) -> Duration {
        (self.visibility_timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The configured maximum, within SQS's 12 hours.
    fn max_lease(&self) -> Duration {
        self.max_lease.min(SQS_MAX_VISIBILITY)
    }

    /// A failed extension is retried quickly, but only while the current
    /// visibility still has a margin left.
    fn retry_delay(&self) -> Duration {
        (self.visibility_timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }
}

impl Lease {
    pub fn start(
        queue: Arc<dyn Queue>,
        receipt_handle: String,
        message_id: String,
        timing: LeaseTiming,
    ) -> Lease {
        let (ended_tx, ended) = watch::channel(None);
        let extensions = Arc::new(AtomicU64::new(0));
        let extension_count = extensions.clone();
        let heartbeat = tokio::spawn(async move {
            let started = Instant::now();
            let mut next_extension = started + timing.period();
            loop {
                tokio::time::sleep_until(next_extension).await;
                if started.elapsed() + timing.visibility_timeout > timing.max_lease() {
                    warn!(
                        message_id,
                        max_lease_secs = timing.max_lease().as_secs(),
                        "maximum lease reached; giving the message up"
                    );
                    let _ = ended_tx.send(Some(LeaseEnd::Expired));
                    return;
                }
                // SQS counts the 12 hours from the receive: never ask past them.
                let visibility_secs = timing
                    .visibility_timeout
                    .min(SQS_MAX_VISIBILITY.saturating_sub(started.elapsed()))
                    .as_secs()
                    .max(1);
                // The current visibility runs out one period after this tick.
                // Every call must be answered before then (less a margin for
                // the clock and the request's flight): an extension that
                // lands later may come after another worker received the
                // message, and two workers would ingest it at once.
                let visibility_ends = next_extension + timing.period();
                let answer_by = visibility_ends - timing.margin();
                loop {
                    if Instant::now() >= answer_by {
                        warn!(
                            message_id,
                            "no time left to extend the visibility; the message may be redelivered"
                        );
                        let _ = ended_tx.send(Some(LeaseEnd::Lost(
                            "the visibility ran out before it could be extended".into(),
                        )));
                        return;
                    }
                    let extended = tokio::time::timeout_at(
                        answer_by,
                        queue.set_visibility(&receipt_handle, visibility_secs),
                    )
                    .await;
                    match extended {
                        Ok(Ok(())) => {
                            extension_count.fetch_add(1, Ordering::Relaxed);
                            debug!(message_id, visibility_secs, "visibility extended");
                            break;
                        }
                        Ok(Err(err))
                            if err.is_retryable()
                                && Instant::now() + timing.retry_delay() < answer_by =>
                        {
                            warn!(message_id, error = %err, "visibility extension failed; retrying");
                            tokio::time::sleep(timing.retry_delay()).await;
                        }
                        Ok(Err(err)) => {
                            warn!(message_id, error = %err, hint = err.hint(), "visibility extension failed for good; the message may be redelivered");
                            let _ = ended_tx.send(Some(LeaseEnd::Lost(err.to_string())));
                            return;
                        }
                        Err(_elapsed) => {
                            warn!(
                                message_id,
                                "visibility extension not answered before the visibility ran out; the message may be redelivered"
                            );
                            let _ = ended_tx.send(Some(LeaseEnd::Lost(
                                "the visibility extension was not answered in time".into(),
                            )));
                            return;
                        }
                    }
                }
                next_extension = Instant::now() + timing.period();
            }
        });
        Lease {
            heartbeat,
            ended,
            extensions,
        }
    }

    /// Successful visibility extensions so far.
    pub fn extensions(&self) -> u64 {
        self.extensions.load(Ordering::Relaxed)
    }

    /// Resolves when the lease ends before the work: lost or expired.
    /// Pending for as long as the lease is held.
    pub async fn ended(&mut self) -> LeaseEnd {
        loop {
            if let Some(end) = self.ended.borrow_and_update().clone() {
                return end;
            }
            if self.ended.changed().await.is_err() {
                // The heartbeat is gone without a verdict: never resolve.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::memory::MemoryQueue;

    fn timing(visibility_secs: u64, max_lease_secs: u64) -> LeaseTiming {
        LeaseTiming {
            visibility_timeout: Duration::from_secs(visibility_secs),
            max_lease: Duration::from_secs(max_lease_secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_keeps_a_long_job_invisible() {
        let queue = Arc::new(MemoryQueue::new(false));
        queue.send("big file");
        let message = queue.receive(1, 0, 10).await.unwrap().remove(0);
        let lease = Lease::start(
            queue.clone(),
            message.receipt_handle.clone(),
            message.message_id,
            timing(10, 3600),
        );
        // Ten visibility timeouts later the message is still ours.
        for _ in 0..100 {
            tokio::time::advance(Duration::from_secs(1)).await;
            tokio::task::yield_now().await;
            assert!(
                queue.receive(1, 0, 10).await.unwrap().is_empty(),
                "redelivered mid-job"
            );
        }
        drop(lease);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            queue.receive(1, 0, 10).await.unwrap().len(),
            1,
            "returns once the lease is dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn lost_message_ends_the_lease() {
        let queue = Arc::new(MemoryQueue::new(false));
        queue.send("x");
        let message = queue.receive(1, 0, 10).await.unwrap().remove(0);
        let mut lease = Lease::start(
            queue.clone(),
            message.receipt_handle.clone(),
            message.message_id,
            timing(10, 3600),
        );
        // Someone else deletes it (or it was received again elsewhere).
        queue.delete(&message.receipt_handle).await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(30), lease.ended())
            .await
            .unwrap();
        assert!(matches!(end, LeaseEnd::Lost(_)), "{end:?}");
    }

    /// Extensions that never answer: the lease must end before the
    /// visibility runs out, not whenever the call gives up.
    struct UnansweredExtensions(MemoryQueue);

    #[async_trait::async_trait]
    impl crate::queue::Reachable for UnansweredExtensions {
        async fn check_reachable(&self) -> Result<(), crate::queue::QueueError> {
            self.0.check_reachable().await
        }
    }

    #[async_trait::async_trait]
    impl Queue for UnansweredExtensions {
        async fn receive(
            &self,
            max_messages: u64,
            wait_time_secs: u64,
            visibility_timeout_secs: u64,
        ) -> Result<Vec<crate::queue::ReceivedMessage>, crate::queue::QueueError> {
            self.0
                .receive(max_messages, wait_time_secs, visibility_timeout_secs)
                .await
        }
        async fn set_visibility(&self, _: &str, _: u64) -> Result<(), crate::queue::QueueError> {
            std::future::pending().await
        }
        async fn delete_batch(
            &self,
            handles: &[String],
        ) -> Result<Vec<crate::queue::BatchEntryFailure>, crate::queue::QueueError> {
            self.0.delete_batch(handles).await
        }
        async fn set_visibility_batch(
            &self,
            handles: &[String],
            timeout_secs: u64,
        ) -> Result<Vec<crate::queue::BatchEntryFailure>, crate::queue::QueueError> {
            self.0.set_visibility_batch(handles, timeout_secs).await
        }
        async fn requeue(
            &self,
            message: &crate::queue::ReceivedMessage,
            attempts: u64,
            delay_secs: u64,
        ) -> Result<(), crate::queue::QueueError> {
            self.0.requeue(message, attempts, delay_secs).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_extension_not_answered_in_time_ends_the_lease_before_the_visibility() {
        let queue = Arc::new(UnansweredExtensions(MemoryQueue::new(false)));
        queue.0.send("x");
        let message = queue.receive(1, 0, 10).await.unwrap().remove(0);
        let received = Instant::now();
        let mut lease = Lease::start(
            queue.clone(),
            message.receipt_handle,
            message.message_id,
            timing(10, 3600),
        );
        let end = tokio::time::timeout(Duration::from_secs(60), lease.ended())
            .await
            .unwrap();
        assert!(matches!(end, LeaseEnd::Lost(_)), "{end:?}");
        // Ended a margin (1 s at 10 s) before the 10 s visibility ran out.
        assert_eq!(received.elapsed(), Duration::from_secs(9));
    }

    #[test]
    fn the_lease_stays_within_sqs_twelve_hours() {
        assert_eq!(timing(60, 24 * 3600).max_lease(), SQS_MAX_VISIBILITY);
        assert_eq!(timing(60, 7200).max_lease(), Duration::from_secs(7200));
        assert_eq!(timing(10, 3600).margin(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn maximum_lease_ends_a_runaway_job() {
        let queue = Arc::new(MemoryQueue::new(false));
        queue.send("x");
        let message = queue.receive(1, 0, 10).await.unwrap().remove(0);
        let mut lease = Lease::start(
            queue,
            message.receipt_handle,
            message.message_id,
            timing(10, 60),
        );
        let started = Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(120), lease.ended())
            .await
            .unwrap();
        assert_eq!(end, LeaseEnd::Expired);
        assert!(started.elapsed() <= Duration::from_secs(60));
    }
}
