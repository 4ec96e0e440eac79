//! The work queue: receive, delete, change visibility, dead-letter.
//!
//! `sqs.rs` is the only file that talks to SQS; `memory.rs` is an
//! in-process fake with real visibility timeouts for unit tests of the
//! worker's state machine.

pub mod memory;
pub mod sqs;

use async_trait::async_trait;

use crate::error::AwsFailure;

/// A message as received, before its body is understood.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// SQS's `ApproximateReceiveCount`: 1 on first delivery.
    pub receive_count: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{operation} on {queue} failed: {detail}")]
pub struct QueueError {
    pub operation: &'static str,
    pub queue: String,
    pub class: AwsFailure,
    pub detail: String,
}

impl QueueError {
    pub fn is_retryable(&self) -> bool {
        self.class == AwsFailure::Transient
    }
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Long-polls for up to `max_messages`, hiding them for `visibility_timeout_secs`.
    async fn receive(
        &self,
        max_messages: u64,
        wait_time_secs: u64,
        visibility_timeout_secs: u64,
    ) -> Result<Vec<ReceivedMessage>, QueueError>;

    /// Removes a message for good: only after its work is durable.
    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError>;

    /// Hides the message for `timeout_secs` from now; 0 releases it at once.
    async fn set_visibility(
        &self,
        receipt_handle: &str,
        timeout_secs: u64,
    ) -> Result<(), QueueError>;

    /// Whether a dead-letter queue is configured.
    fn has_dead_letter_queue(&self) -> bool;

    /// Sends a dead-letter envelope; Ok means the DLQ accepted it.
    async fn dead_letter(&self, envelope_json: &str) -> Result<(), QueueError>;
}
