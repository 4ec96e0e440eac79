//! The work queue: receive, delete, change visibility, dead-letter.
//!
//! `sqs.rs` is the only file that talks to SQS; `memory.rs` is an
//! in-process fake with real visibility timeouts for unit tests of the
//! worker's state machine. `batcher.rs` gathers deletes and releases from
//! concurrent messages into SQS batch requests of up to ten entries.

pub mod batcher;
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
    /// SQS's `ApproximateReceiveCount` of this copy: 1 on first delivery.
    pub receive_count: u64,
    /// Failed attempts recorded on earlier copies of the message (the
    /// [`ATTEMPTS_ATTRIBUTE`] the worker set when it handed one back);
    /// 0 for a message as S3 sent it.
    pub earlier_attempts: u64,
}

/// The message attribute a handed-back copy carries: how many attempts
/// of the message have counted so far.
pub const ATTEMPTS_ATTRIBUTE: &str = "s3_ingest.attempts";

/// SQS's largest `DelaySeconds`.
pub const MAX_DELAY_SECS: u64 = 900;

impl ReceivedMessage {
    /// Which attempt this receive is: the attempts counted on earlier
    /// copies plus every receive of this copy. A receive that ended in a
    /// hand-back never counts (the copy starts again at 1); one that ended
    /// any other way (a failure left to the visibility timeout, a crash,
    /// a lost lease) does, because nothing else can be recorded for it.
    pub fn attempt(&self) -> u64 {
        self.earlier_attempts + self.receive_count
    }

    /// What a copy handed back now carries: every attempt before this
    /// receive, which itself does not count.
    pub fn attempts_before(&self) -> u64 {
        self.attempt().saturating_sub(1)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} on {queue} failed: {detail}")]
pub struct QueueError {
    pub operation: &'static str,
    pub queue: String,
    pub class: AwsFailure,
    /// The AWS error code, when the service answered.
    pub code: Option<String>,
    pub detail: String,
}

impl QueueError {
    pub fn is_retryable(&self) -> bool {
        self.class == AwsFailure::Transient
    }

    /// What an operator should check, in words, for the usual causes.
    pub fn hint(&self) -> &'static str {
        match self.code.as_deref() {
            Some(
                "AWS.SimpleQueueService.NonExistentQueue"
                | "QueueDoesNotExist"
                | "AWS.SimpleQueueService.QueueDeletedRecently",
            ) => "the queue does not exist: check queue.url / queue.dlq_url",
            Some(
                "InvalidClientTokenId"
                | "UnrecognizedClientException"
                | "SignatureDoesNotMatch"
                | "InvalidAccessKeyId"
                | "ExpiredToken"
                | "MissingAuthenticationToken",
            ) => "the credentials are invalid or expired",
            Some("AccessDenied" | "AccessDeniedException" | "KMS.AccessDeniedException") => {
                "the credentials are not allowed to use this queue (IAM or queue policy)"
            }
            Some("ReceiptHandleIsInvalid" | "InvalidParameterValue") => {
                "the message is gone or was received again elsewhere"
            }
            _ if self.class == AwsFailure::Transient => {
                "SQS is unreachable, throttling or failing; retrying with backoff"
            }
            _ => "SQS refused the request",
        }
    }

    /// Whether the receipt handle no longer names a message we hold.
    pub fn is_receipt_gone(&self) -> bool {
        matches!(
            self.code.as_deref(),
            Some("ReceiptHandleIsInvalid" | "InvalidParameterValue" | "MessageNotInflight")
        ) || self.detail.contains("ReceiptHandleIsInvalid")
    }
}

/// SQS accepts at most this many entries in one batch request.
pub const MAX_BATCH_ENTRIES: usize = 10;

/// One entry of a batch request that SQS refused while it may have
/// accepted the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEntryFailure {
    /// Position of the entry in the request's slice of receipt handles.
    pub index: usize,
    /// The SQS error code, e.g. `ReceiptHandleIsInvalid`.
    pub code: String,
    pub message: String,
    /// Whether SQS blames the request (retrying it unchanged won't help).
    pub sender_fault: bool,
}

/// A queue the readiness probe checks.
#[async_trait]
pub trait Reachable: Send + Sync {
    /// Checks that the queue exists and may be used: at start-up and for
    /// the readiness probe.
    async fn check_reachable(&self) -> Result<(), QueueError>;
}

/// The queue the worker receives from: receive, delete, change visibility,
/// and send a copy back (a hand-back). The dead-letter queue is apart
/// (`dead_letter::DeadLetterQueue`).
#[async_trait]
pub trait Queue: Reachable + 'static {
    /// Long-polls for up to `max_messages`, hiding them for `visibility_timeout_secs`.
    async fn receive(
        &self,
        max_messages: u64,
        wait_time_secs: u64,
        visibility_timeout_secs: u64,
    ) -> Result<Vec<ReceivedMessage>, QueueError>;

    /// Hides the message for `timeout_secs` from now; 0 releases it at once.
    async fn set_visibility(
        &self,
        receipt_handle: &str,
        timeout_secs: u64,
    ) -> Result<(), QueueError>;

    /// Removes up to [`MAX_BATCH_ENTRIES`] messages for good (only after
    /// their work is durable) in one request. `Err`
    /// means the request as a whole failed (no entry is known deleted);
    /// `Ok` lists the entries that failed, by index; the others are deleted.
    async fn delete_batch(
        &self,
        receipt_handles: &[String],
    ) -> Result<Vec<BatchEntryFailure>, QueueError>;

    /// Sets the visibility of up to [`MAX_BATCH_ENTRIES`] messages to
    /// `timeout_secs` from now in one request; results as for `delete_batch`.
    async fn set_visibility_batch(
        &self,
        receipt_handles: &[String],
        timeout_secs: u64,
    ) -> Result<Vec<BatchEntryFailure>, QueueError>;

    /// Sends a copy of `message` to the queue it came from, carrying
    /// `attempts` in [`ATTEMPTS_ATTRIBUTE`] and hidden for `delay_secs`
    /// (at most [`MAX_DELAY_SECS`]). The original is not touched: the
    /// caller deletes it once this succeeded. This is how a message is
    /// handed back without its receive counting: SQS cannot reset a
    /// message's `ApproximateReceiveCount`, but a copy starts at 0.
    async fn requeue(
        &self,
        message: &ReceivedMessage,
        attempts: u64,
        delay_secs: u64,
    ) -> Result<(), QueueError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(class: AwsFailure, code: Option<&str>) -> QueueError {
        QueueError {
            operation: "ReceiveMessage",
            queue: "q".into(),
            class,
            code: code.map(Into::into),
            detail: String::new(),
        }
    }

    #[test]
    fn hints_name_the_usual_causes() {
        let missing = error(
            AwsFailure::Permanent,
            Some("AWS.SimpleQueueService.NonExistentQueue"),
        );
        assert!(missing.hint().contains("does not exist"));
        assert!(!missing.is_retryable());
        let credentials = error(AwsFailure::Permanent, Some("InvalidClientTokenId"));
        assert!(credentials.hint().contains("credentials"));
        let denied = error(AwsFailure::AccessDenied, Some("AccessDenied"));
        assert!(denied.hint().contains("not allowed"));
        let outage = error(AwsFailure::Transient, None);
        assert!(outage.is_retryable());
        assert!(outage.hint().contains("unreachable"));
        assert!(error(AwsFailure::Permanent, Some("ReceiptHandleIsInvalid")).is_receipt_gone());
    }
}
