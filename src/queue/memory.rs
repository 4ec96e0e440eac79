//! An in-process queue with SQS's delivery rules: a received message is
//! hidden for its visibility timeout and comes back when that expires;
//! only the latest receipt handle of a message is valid. Time is tokio's,
//! so tests can pause and advance it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    BatchEntryFailure, MAX_BATCH_ENTRIES, MAX_DELAY_SECS, Queue, QueueError, Reachable,
    ReceivedMessage,
};
use crate::dead_letter::DeadLetterQueue;
use crate::error::AwsFailure;

#[derive(Debug)]
struct StoredMessage {
    message_id: String,
    body: String,
    receive_count: u64,
    /// The [`ATTEMPTS_ATTRIBUTE`] it was sent with, if any.
    attempts_attribute: Option<u64>,
    visible_at: Instant,
    receipt_handle: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    messages: Vec<StoredMessage>,
    dead_letters: Vec<String>,
    next_id: u64,
    fail_dead_letter: bool,
    /// Every batch request made, as (operation, entries), in order.
    batch_calls: Vec<(&'static str, usize)>,
    fail_batches: bool,
    fail_requeue: bool,
    fail_visibility_changes: bool,
}

#[derive(Debug, Default)]
pub struct MemoryQueue {
    state: Mutex<State>,
    with_dead_letter_queue: bool,
    /// ReceiveMessage calls not yet answered.
    open_receives: AtomicUsize,
}

impl MemoryQueue {
    /// Deletes one message, as another worker would: for tests.
    pub async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        let failures = self.delete_batch(&[receipt_handle.to_owned()]).await?;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Self::invalid_receipt("DeleteMessage"))
        }
    }

    pub fn new(with_dead_letter_queue: bool) -> MemoryQueue {
        MemoryQueue {
            state: Mutex::default(),
            with_dead_letter_queue,
            open_receives: AtomicUsize::new(0),
        }
    }

    pub fn send(&self, body: impl Into<String>) -> String {
        self.send_with(body.into(), None, 0)
    }

    /// SendMessage with an optional [`ATTEMPTS_ATTRIBUTE`] and a delay, as
    /// SQS: a new message id, receive count 0, hidden for `delay_secs`.
    fn send_with(&self, body: String, attempts: Option<u64>, delay_secs: u64) -> String {
        let mut state = self.state.lock().unwrap();
        state.next_id += 1;
        let message_id = format!("msg-{}", state.next_id);
        state.messages.push(StoredMessage {
            message_id: message_id.clone(),
            body,
            receive_count: 0,
            attempts_attribute: attempts,
            visible_at: Instant::now() + Duration::from_secs(delay_secs),
            receipt_handle: None,
        });
        message_id
    }

    /// Makes every SendMessage to the queue itself (a hand-back) fail, as
    /// a role without `sqs:SendMessage` on it would.
    pub fn fail_requeues(&self, fail: bool) {
        self.state.lock().unwrap().fail_requeue = fail;
    }

    /// Makes every single ChangeMessageVisibility fail as for a stale
    /// receipt handle: a lease that can no longer be extended.
    pub fn fail_visibility_changes(&self, fail: bool) {
        self.state.lock().unwrap().fail_visibility_changes = fail;
    }

    /// ReceiveMessage calls in progress (long polls waiting), for tests
    /// that act while one is open.
    pub fn open_receives(&self) -> usize {
        self.open_receives.load(Ordering::SeqCst)
    }

    /// Messages not yet deleted, visible or in flight.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap().messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages currently hidden by a receive.
    pub fn in_flight(&self) -> usize {
        let now = Instant::now();
        let state = self.state.lock().unwrap();
        state.messages.iter().filter(|m| m.visible_at > now).count()
    }

    /// This queue as the worker's dead-letter queue, when it was made with
    /// one (`MemoryQueue::new(true)`).
    pub fn dead_letter_queue(
        self: &std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn DeadLetterQueue>> {
        self.with_dead_letter_queue
            .then(|| self.clone() as std::sync::Arc<dyn DeadLetterQueue>)
    }

    pub fn dead_letters(&self) -> Vec<String> {
        self.state.lock().unwrap().dead_letters.clone()
    }

    /// Makes every dead-letter send fail, as an unreachable DLQ would.
    pub fn fail_dead_letters(&self, fail: bool) {
        self.state.lock().unwrap().fail_dead_letter = fail;
    }

    /// The batch requests made so far, as (operation, number of entries).
    pub fn batch_calls(&self) -> Vec<(&'static str, usize)> {
        self.state.lock().unwrap().batch_calls.clone()
    }

    /// Makes every batch request fail as a whole, as an SQS outage would.
    pub fn fail_batches(&self, fail: bool) {
        self.state.lock().unwrap().fail_batches = fail;
    }

    /// Records a batch request and applies `apply` to each receipt handle,
    /// turning `false` into a per-entry `ReceiptHandleIsInvalid` failure,
    /// as SQS answers for a stale handle.
    fn batch(
        &self,
        operation: &'static str,
        receipt_handles: &[String],
        mut apply: impl FnMut(&mut State, &str) -> bool,
    ) -> Result<Vec<BatchEntryFailure>, QueueError> {
        let mut state = self.state.lock().unwrap();
        state.batch_calls.push((operation, receipt_handles.len()));
        if receipt_handles.is_empty() || receipt_handles.len() > MAX_BATCH_ENTRIES {
            // SQS's EmptyBatchRequest / TooManyEntriesInBatchRequest.
            return Err(QueueError {
                operation,
                queue: "memory".into(),
                class: AwsFailure::Permanent,
                code: Some("TooManyEntriesInBatchRequest".into()),
                detail: format!("{} entries in one batch", receipt_handles.len()),
            });
        }
        if state.fail_batches {
            return Err(QueueError {
                operation,
                queue: "memory".into(),
                class: AwsFailure::Transient,
                code: None,
                detail: "queue unavailable".into(),
            });
        }
        let mut failures = Vec::new();
        for (index, receipt_handle) in receipt_handles.iter().enumerate() {
            if !apply(&mut state, receipt_handle) {
                failures.push(BatchEntryFailure {
                    index,
                    code: "ReceiptHandleIsInvalid".into(),
                    message: format!("receipt handle {receipt_handle} is not valid"),
                    sender_fault: true,
                });
            }
        }
        Ok(failures)
    }

    fn take_visible(
        &self,
        max_messages: u64,
        visibility_timeout_secs: u64,
    ) -> Vec<ReceivedMessage> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        state.next_id += 1;
        let batch = state.next_id;
        let mut received = Vec::new();
        for message in state.messages.iter_mut() {
            if received.len() as u64 >= max_messages {
                break;
            }
            if message.visible_at > now {
                continue;
            }
            message.receive_count += 1;
            message.visible_at = now + Duration::from_secs(visibility_timeout_secs);
            let receipt = format!("{}-r{batch}", message.message_id);
            message.receipt_handle = Some(receipt.clone());
            received.push(ReceivedMessage {
                message_id: message.message_id.clone(),
                receipt_handle: receipt,
                body: message.body.clone(),
                receive_count: message.receive_count,
                earlier_attempts: message.attempts_attribute.unwrap_or(0),
            });
        }
        received
    }

    fn invalid_receipt(operation: &'static str) -> QueueError {
        QueueError {
            operation,
            queue: "memory".into(),
            class: AwsFailure::Permanent,
            code: Some("ReceiptHandleIsInvalid".into()),
            detail: "ReceiptHandleIsInvalid".into(),
        }
    }
}

/// Counts one ReceiveMessage call as open until it ends, also when the
/// call is dropped.
struct OpenReceive<'a>(&'a AtomicUsize);

impl<'a> OpenReceive<'a> {
    fn new(open: &'a AtomicUsize) -> OpenReceive<'a> {
        open.fetch_add(1, Ordering::SeqCst);
        OpenReceive(open)
    }
}

impl Drop for OpenReceive<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn receive(
        &self,
        max_messages: u64,
        wait_time_secs: u64,
        visibility_timeout_secs: u64,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let deadline = Instant::now() + Duration::from_secs(wait_time_secs);
        let _open = OpenReceive::new(&self.open_receives);
        loop {
            let received = self.take_visible(max_messages, visibility_timeout_secs);
            if !received.is_empty() || Instant::now() >= deadline {
                return Ok(received);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn set_visibility(
        &self,
        receipt_handle: &str,
        timeout_secs: u64,
    ) -> Result<(), QueueError> {
        let mut state = self.state.lock().unwrap();
        if state.fail_visibility_changes {
            return Err(Self::invalid_receipt("ChangeMessageVisibility"));
        }
        let message = state
            .messages
            .iter_mut()
            .find(|m| m.receipt_handle.as_deref() == Some(receipt_handle))
            .ok_or_else(|| Self::invalid_receipt("ChangeMessageVisibility"))?;
        message.visible_at = Instant::now() + Duration::from_secs(timeout_secs);
        Ok(())
    }

    async fn delete_batch(
        &self,
        receipt_handles: &[String],
    ) -> Result<Vec<BatchEntryFailure>, QueueError> {
        self.batch("DeleteMessageBatch", receipt_handles, |state, handle| {
            let before = state.messages.len();
            state
                .messages
                .retain(|m| m.receipt_handle.as_deref() != Some(handle));
            state.messages.len() < before
        })
    }

    async fn set_visibility_batch(
        &self,
        receipt_handles: &[String],
        timeout_secs: u64,
    ) -> Result<Vec<BatchEntryFailure>, QueueError> {
        let visible_at = Instant::now() + Duration::from_secs(timeout_secs);
        self.batch(
            "ChangeMessageVisibilityBatch",
            receipt_handles,
            |state, handle| match state
                .messages
                .iter_mut()
                .find(|m| m.receipt_handle.as_deref() == Some(handle))
            {
                Some(message) => {
                    message.visible_at = visible_at;
                    true
                }
                None => false,
            },
        )
    }

    async fn requeue(
        &self,
        message: &ReceivedMessage,
        attempts: u64,
        delay_secs: u64,
    ) -> Result<(), QueueError> {
        if self.state.lock().unwrap().fail_requeue {
            return Err(QueueError {
                operation: "SendMessage",
                queue: "memory".into(),
                class: AwsFailure::AccessDenied,
                code: Some("AccessDenied".into()),
                detail: "not authorized to perform sqs:SendMessage".into(),
            });
        }
        if delay_secs > MAX_DELAY_SECS {
            return Err(QueueError {
                operation: "SendMessage",
                queue: "memory".into(),
                class: AwsFailure::Permanent,
                code: Some("InvalidParameterValue".into()),
                detail: format!("DelaySeconds {delay_secs} is above {MAX_DELAY_SECS}"),
            });
        }
        self.send_with(message.body.clone(), Some(attempts), delay_secs);
        Ok(())
    }
}

#[async_trait]
impl Reachable for MemoryQueue {
    async fn check_reachable(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

#[async_trait]
impl DeadLetterQueue for MemoryQueue {
    async fn send(&self, envelope_json: &str) -> Result<(), QueueError> {
        let mut state = self.state.lock().unwrap();
        if !self.with_dead_letter_queue || state.fail_dead_letter {
            return Err(QueueError {
                operation: "SendMessage",
                queue: "memory-dlq".into(),
                class: AwsFailure::Transient,
                code: None,
                detail: "dead-letter queue unavailable".into(),
            });
        }
        state.dead_letters.push(envelope_json.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unacknowledged_message_comes_back_after_its_visibility_timeout() {
        let queue = MemoryQueue::new(false);
        queue.send("hello");
        let first = queue.receive(10, 0, 30).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].receive_count, 1);
        assert!(queue.receive(10, 0, 30).await.unwrap().is_empty());
        assert_eq!(queue.in_flight(), 1);

        tokio::time::advance(Duration::from_secs(31)).await;
        let second = queue.receive(10, 0, 30).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].receive_count, 2);
        // The first receipt handle is stale now.
        assert!(queue.delete(&first[0].receipt_handle).await.is_err());
        queue.delete(&second[0].receipt_handle).await.unwrap();
        assert!(queue.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn visibility_zero_releases_at_once() {
        let queue = MemoryQueue::new(false);
        queue.send("x");
        let first = queue.receive(1, 0, 300).await.unwrap();
        queue
            .set_visibility(&first[0].receipt_handle, 0)
            .await
            .unwrap();
        assert_eq!(queue.receive(1, 0, 300).await.unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn batch_calls_act_per_entry_and_report_stale_handles() {
        let queue = MemoryQueue::new(false);
        queue.send("a");
        queue.send("b");
        queue.send("c");
        let received = queue.receive(10, 0, 300).await.unwrap();
        let handles: Vec<String> = received.iter().map(|m| m.receipt_handle.clone()).collect();
        let failures = queue.set_visibility_batch(&handles[..1], 0).await.unwrap();
        assert!(failures.is_empty());
        // "a" is visible again; receiving it makes its first handle stale.
        assert_eq!(queue.receive(10, 0, 300).await.unwrap().len(), 1);
        let failures = queue.delete_batch(&handles).await.unwrap();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].index, 0);
        assert_eq!(failures[0].code, "ReceiptHandleIsInvalid");
        assert_eq!(queue.len(), 1, "b and c deleted, a still held");
        assert_eq!(
            queue.batch_calls(),
            vec![
                ("ChangeMessageVisibilityBatch", 1),
                ("DeleteMessageBatch", 3)
            ]
        );
        let eleven = vec!["x".to_string(); 11];
        assert!(queue.delete_batch(&eleven).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_requeued_copy_is_a_new_message_with_its_attempts_and_delay() {
        let queue = MemoryQueue::new(false);
        queue.send("x");
        let first = queue.receive(1, 0, 300).await.unwrap().remove(0);
        assert_eq!((first.receive_count, first.earlier_attempts), (1, 0));
        queue.requeue(&first, 3, 5).await.unwrap();
        queue.delete(&first.receipt_handle).await.unwrap();
        assert_eq!(queue.len(), 1);
        assert!(
            queue.receive(1, 0, 300).await.unwrap().is_empty(),
            "delayed"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        let copy = queue.receive(1, 0, 300).await.unwrap().remove(0);
        assert_ne!(copy.message_id, first.message_id);
        assert_eq!(copy.body, "x");
        assert_eq!((copy.receive_count, copy.earlier_attempts), (1, 3));
        assert_eq!(copy.attempt(), 4);
        assert!(queue.requeue(&copy, 0, 901).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn long_poll_waits_for_a_message_until_its_deadline() {
        let queue = MemoryQueue::new(false);
        let started = Instant::now();
        assert!(queue.receive(1, 5, 30).await.unwrap().is_empty());
        assert!(started.elapsed() >= Duration::from_secs(5));
    }
}
