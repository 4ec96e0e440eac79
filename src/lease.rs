//! The visibility heartbeat: while a message is being worked on, its
//! visibility timeout is pushed forward at about half the timeout, so a
//! large file is not redelivered to another worker mid-way. The heartbeat
//! is a task owned by a `Lease`; dropping the lease stops it.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::queue::Queue;

pub struct Lease {
    heartbeat: JoinHandle<()>,
}

impl Lease {
    pub fn start(
        queue: Arc<dyn Queue>,
        receipt_handle: String,
        message_id: String,
        visibility_timeout_secs: u64,
    ) -> Lease {
        // Half the timeout leaves the other half for the request itself.
        let period =
            Duration::from_millis(visibility_timeout_secs * 500).max(Duration::from_millis(500));
        let heartbeat = tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                ticker.tick().await;
                match queue
                    .set_visibility(&receipt_handle, visibility_timeout_secs)
                    .await
                {
                    Ok(()) => debug!(message_id, visibility_timeout_secs, "visibility extended"),
                    Err(err) if err.is_retryable() => {
                        warn!(message_id, error = %err, "visibility extension failed; will try again")
                    }
                    Err(err) => {
                        warn!(message_id, error = %err, "visibility extension failed for good; the message may be redelivered");
                        return;
                    }
                }
            }
        });
        Lease { heartbeat }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}
