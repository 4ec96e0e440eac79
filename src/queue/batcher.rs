//! Gathers deletes (or visibility changes) of concurrent messages into SQS
//! batch requests: one request per ten messages instead of one each.
//!
//! A [`Batcher`] owns a background task. [`Batcher::submit`] queues one
//! receipt handle and waits for the outcome of the batch that carried it.
//! The task sends a batch when ten entries are waiting or when the first
//! of them has waited `linger` (a few milliseconds: the added latency of
//! a lone message), whichever comes first. [`Batcher::close`] sends what
//! is still waiting and stops the task, so nothing is held past shutdown.
//!
//! Nothing is retried here: a failed delete means a redelivery that the
//! idempotent sinks absorb, and a failed release means the message comes
//! back after its visibility timeout. Each failure is logged with the
//! message id, the SQS error code and message, and returned to its caller.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{MAX_BATCH_ENTRIES, Queue, QueueError};
use crate::error::AwsFailure;

/// What a batcher does to each message it is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOperation {
    Delete,
    /// Visibility 0 releases a message for another worker at once.
    SetVisibility {
        timeout_secs: u64,
    },
}

impl BatchOperation {
    fn name(self) -> &'static str {
        match self {
            BatchOperation::Delete => "DeleteMessageBatch",
            BatchOperation::SetVisibility { .. } => "ChangeMessageVisibilityBatch",
        }
    }
}

/// One message waiting for the next batch.
struct Entry {
    message_id: String,
    receipt_handle: String,
    outcome: oneshot::Sender<Result<(), QueueError>>,
}

pub struct Batcher {
    operation: BatchOperation,
    // Unbounded is bounded in practice: at most one entry per message in
    // flight, and those are bounded by the worker's concurrency.
    entries: mpsc::UnboundedSender<Entry>,
    closing: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Batcher {
    /// Starts the batching task; needs a tokio runtime.
    pub fn start(queue: Arc<dyn Queue>, operation: BatchOperation, linger: Duration) -> Batcher {
        let (entries, receiver) = mpsc::unbounded_channel();
        let closing = CancellationToken::new();
        let task = tokio::spawn(run(queue, operation, linger, receiver, closing.clone()));
        Batcher {
            operation,
            entries,
            closing,
            task: Mutex::new(Some(task)),
        }
    }

    /// Queues one message and waits until the batch carrying it has been
    /// answered. `Err` means this message was not deleted (or its
    /// visibility not changed); the failure is already logged.
    pub async fn submit(&self, message_id: &str, receipt_handle: &str) -> Result<(), QueueError> {
        let (outcome, answer) = oneshot::channel();
        let entry = Entry {
            message_id: message_id.to_owned(),
            receipt_handle: receipt_handle.to_owned(),
            outcome,
        };
        if self.entries.send(entry).is_err() {
            return Err(self.closed_error());
        }
        // The task answers every entry it took, even while closing.
        answer.await.unwrap_or_else(|_| Err(self.closed_error()))
    }

    /// Sends whatever is waiting and stops the task. Entries submitted
    /// afterwards fail at once (the worker submits none after its drain).
    pub async fn close(&self) {
        self.closing.cancel();
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn closed_error(&self) -> QueueError {
        QueueError {
            operation: self.operation.name(),
            queue: "<batcher>".into(),
            class: AwsFailure::Permanent,
            code: None,
            detail: "the worker is shutting down; the request was not sent".into(),
        }
    }
}

impl Drop for Batcher {
    /// A dropped batcher still sends what it holds: the task flushes and ends.
    fn drop(&mut self) {
        self.closing.cancel();
    }
}

async fn run(
    queue: Arc<dyn Queue>,
    operation: BatchOperation,
    linger: Duration,
    mut entries: mpsc::UnboundedReceiver<Entry>,
    closing: CancellationToken,
) {
    loop {
        // Wait for the first entry of the next batch.
        let first = tokio::select! {
            biased;
            entry = entries.recv() => entry,
            _ = closing.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        let linger_ends = Instant::now() + linger;
        while batch.len() < MAX_BATCH_ENTRIES {
            tokio::select! {
                biased;
                entry = entries.recv() => match entry {
                    Some(entry) => batch.push(entry),
                    None => break,
                },
                _ = tokio::time::sleep_until(linger_ends) => break,
                // Shutting down: send now, don't linger.
                _ = closing.cancelled() => break,
            }
        }
        send(&*queue, operation, batch).await;
    }
    // Closed: refuse new entries, then send those that raced in.
    entries.close();
    let mut rest = Vec::new();
    while let Ok(entry) = entries.try_recv() {
        rest.push(entry);
    }
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(MAX_BATCH_ENTRIES));
        send(&*queue, operation, std::mem::replace(&mut rest, tail)).await;
    }
}

/// Sends one batch and answers each entry with its own outcome.
async fn send(queue: &dyn Queue, operation: BatchOperation, batch: Vec<Entry>) {
    let receipt_handles: Vec<String> = batch.iter().map(|e| e.receipt_handle.clone()).collect();
    let result = match operation {
        BatchOperation::Delete => queue.delete_batch(&receipt_handles).await,
        BatchOperation::SetVisibility { timeout_secs } => {
            queue
                .set_visibility_batch(&receipt_handles, timeout_secs)
                .await
        }
    };
    let failures = match result {
        Ok(failures) => failures,
        Err(err) => {
            for entry in batch {
                warn!(operation = operation.name(), message_id = %entry.message_id, error = %err, hint = err.hint(), "batch request failed; entry not acknowledged");
                let _ = entry.outcome.send(Err(err.clone()));
            }
            return;
        }
    };
    let mut outcomes: Vec<Result<(), QueueError>> = vec![Ok(()); batch.len()];
    for failure in failures {
        let Some(outcome) = outcomes.get_mut(failure.index) else {
            continue;
        };
        let entry = &batch[failure.index];
        warn!(
            operation = operation.name(),
            message_id = %entry.message_id,
            code = %failure.code,
            error = %failure.message,
            "batch entry failed"
        );
        *outcome = Err(QueueError {
            operation: operation.name(),
            queue: "<batch entry>".into(),
            // SQS blames the entry (stale handle...): trying again won't help.
            class: if failure.sender_fault {
                AwsFailure::Permanent
            } else {
                AwsFailure::Transient
            },
            code: Some(failure.code),
            detail: failure.message,
        });
    }
    for (entry, outcome) in batch.into_iter().zip(outcomes) {
        let _ = entry.outcome.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::memory::MemoryQueue;
    use futures::future::join_all;

    /// Sends `count` messages and receives them all: (message id, receipt handle).
    async fn in_flight(queue: &MemoryQueue, count: usize) -> Vec<(String, String)> {
        for n in 0..count {
            queue.send(format!("body {n}"));
        }
        let mut received = Vec::new();
        while received.len() < count {
            for message in queue.receive(10, 0, 300).await.unwrap() {
                received.push((message.message_id, message.receipt_handle));
            }
        }
        received
    }

    /// Captures this thread's log output (the test runtime has one thread).
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_deletes_become_one_call_per_ten() {
        let queue = Arc::new(MemoryQueue::new(false));
        let messages = in_flight(&queue, 25).await;
        let batcher = Batcher::start(
            queue.clone(),
            BatchOperation::Delete,
            Duration::from_millis(5),
        );
        let outcomes = join_all(
            messages
                .iter()
                .map(|(id, handle)| batcher.submit(id, handle)),
        )
        .await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert!(queue.is_empty());
        // ⌈25 / 10⌉ = 3 requests.
        assert_eq!(
            queue.batch_calls(),
            vec![
                ("DeleteMessageBatch", 10),
                ("DeleteMessageBatch", 10),
                ("DeleteMessageBatch", 5)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_delete_waits_only_for_the_linger() {
        let queue = Arc::new(MemoryQueue::new(false));
        let messages = in_flight(&queue, 1).await;
        let batcher = Batcher::start(
            queue.clone(),
            BatchOperation::Delete,
            Duration::from_millis(5),
        );
        let started = Instant::now();
        batcher
            .submit(&messages[0].0, &messages[0].1)
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(5));
        assert!(queue.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_entry_is_logged_and_does_not_affect_the_others() {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let logs = logs.clone();
                move || logs.clone()
            })
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let queue = Arc::new(MemoryQueue::new(false));
        let mut messages = in_flight(&queue, 3).await;
        // A handle SQS no longer knows: e.g. the message was received again.
        messages[1].1 = "stale-receipt".into();
        let batcher = Batcher::start(
            queue.clone(),
            BatchOperation::Delete,
            Duration::from_millis(5),
        );
        let outcomes = join_all(
            messages
                .iter()
                .map(|(id, handle)| batcher.submit(id, handle)),
        )
        .await;
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        let failure = outcomes[1].as_ref().unwrap_err();
        assert_eq!(failure.code.as_deref(), Some("ReceiptHandleIsInvalid"));
        assert!(failure.is_receipt_gone());
        assert_eq!(queue.len(), 1, "only the stale one is left");
        assert_eq!(queue.batch_calls(), vec![("DeleteMessageBatch", 3)]);

        let logged = logs.text();
        let line = logged
            .lines()
            .find(|line| line.contains("batch entry failed"))
            .unwrap_or_else(|| panic!("no failure logged in:\n{logged}"));
        assert!(
            line.contains(&format!("message_id={}", messages[1].0)),
            "{line}"
        );
        assert!(line.contains("code=ReceiptHandleIsInvalid"), "{line}");
        assert!(line.contains("stale-receipt is not valid"), "{line}");
        assert_eq!(logged.matches("batch entry failed").count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_request_fails_every_entry() {
        let queue = Arc::new(MemoryQueue::new(false));
        let messages = in_flight(&queue, 2).await;
        queue.fail_batches(true);
        let batcher = Batcher::start(
            queue.clone(),
            BatchOperation::Delete,
            Duration::from_millis(5),
        );
        let outcomes = join_all(
            messages
                .iter()
                .map(|(id, handle)| batcher.submit(id, handle)),
        )
        .await;
        assert!(
            outcomes
                .iter()
                .all(|o| o.as_ref().is_err_and(QueueError::is_retryable)),
            "{outcomes:?}"
        );
        assert_eq!(queue.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn close_sends_what_is_waiting_without_lingering() {
        let queue = Arc::new(MemoryQueue::new(false));
        let messages = in_flight(&queue, 3).await;
        // A linger far longer than the test: only closing can send these.
        let batcher = Arc::new(Batcher::start(
            queue.clone(),
            BatchOperation::SetVisibility { timeout_secs: 0 },
            Duration::from_secs(3600),
        ));
        let submitted: Vec<_> = messages
            .into_iter()
            .map(|(id, handle)| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(&id, &handle).await })
            })
            .collect();
        // Let the submissions reach the batcher.
        tokio::task::yield_now().await;
        let started = Instant::now();
        batcher.close().await;
        assert!(started.elapsed() < Duration::from_secs(1));
        for outcome in join_all(submitted).await {
            outcome.unwrap().unwrap();
        }
        assert_eq!(
            queue.batch_calls(),
            vec![("ChangeMessageVisibilityBatch", 3)]
        );
        assert_eq!(queue.in_flight(), 0, "all released");
        // After close nothing is accepted.
        assert!(batcher.submit("late", "late-receipt").await.is_err());
    }
}
