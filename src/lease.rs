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

impl LeaseTiming {
    /// Extends at half the timeout: the other half is the margin for the
    /// extension request itself and its retries.
    fn period(&self) -> Duration {
        (self.visibility_timeout / 2).max(Duration::from_millis(500))
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
            let visibility_secs = timing.visibility_timeout.as_secs().max(1);
            let mut next_extension = started + timing.period();
            loop {
                tokio::time::sleep_until(next_extension).await;
                if started.elapsed() + timing.visibility_timeout > timing.max_lease {
                    warn!(
                        message_id,
                        max_lease_secs = timing.max_lease.as_secs(),
                        "maximum lease reached; giving the message up"
                    );
                    let _ = ended_tx.send(Some(LeaseEnd::Expired));
                    return;
                }
                // The current visibility runs out one period after this tick.
                let visibility_ends = next_extension + timing.period();
                loop {
                    match queue.set_visibility(&receipt_handle, visibility_secs).await {
                        Ok(()) => {
                            extension_count.fetch_add(1, Ordering::Relaxed);
                            debug!(message_id, visibility_secs, "visibility extended");
                            break;
                        }
                        Err(err)
                            if err.is_retryable()
                                && Instant::now() + timing.retry_delay() < visibility_ends =>
                        {
                            warn!(message_id, error = %err, "visibility extension failed; retrying");
                            tokio::time::sleep(timing.retry_delay()).await;
                        }
                        Err(err) => {
                            warn!(message_id, error = %err, hint = err.hint(), "visibility extension failed for good; the message may be redelivered");
                            let _ = ended_tx.send(Some(LeaseEnd::Lost(err.to_string())));
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
