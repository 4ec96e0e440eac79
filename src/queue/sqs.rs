//! The SQS implementation of [`Queue`]: the only file that talks to SQS.

use std::time::Instant;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
};
use tracing::debug;

use super::{ATTEMPTS_ATTRIBUTE, BatchEntryFailure, Queue, QueueError, Reachable, ReceivedMessage};
use crate::dead_letter::DeadLetterQueue;
use crate::error::{aws_error_code, classify_aws};

pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: Client, url: String) -> SqsQueue {
        SqsQueue { client, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends a new message with `body` (the operator's commands: a
    /// replayed or backfilled event).
    pub async fn send(&self, body: &str) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|err| queue_error("SendMessage", &self.url, &err))?;
        Ok(())
    }
}

/// The dead-letter queue at `queue.dlq_url`.
pub struct SqsDeadLetterQueue {
    client: Client,
    url: String,
}

impl SqsDeadLetterQueue {
    pub fn new(client: Client, url: String) -> SqsDeadLetterQueue {
        SqsDeadLetterQueue { client, url }
    }
}

/// Fails fast when the queue at `url` does not exist or cannot be
/// reached, so a typo is a clear error at start-up and not a retry loop.
async fn check_queue(client: &Client, url: &str) -> Result<(), QueueError> {
    client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|err| queue_error("GetQueueAttributes", url, &err))?;
    Ok(())
}

#[async_trait]
impl Reachable for SqsQueue {
    async fn check_reachable(&self) -> Result<(), QueueError> {
        check_queue(&self.client, &self.url).await
    }
}

#[async_trait]
impl Reachable for SqsDeadLetterQueue {
    async fn check_reachable(&self) -> Result<(), QueueError> {
        check_queue(&self.client, &self.url).await
    }
}

#[async_trait]
impl DeadLetterQueue for SqsDeadLetterQueue {
    async fn send(&self, envelope_json: &str) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(envelope_json)
            .send()
            .await
            .map_err(|err| queue_error("SendMessage", &self.url, &err))?;
        Ok(())
    }
}

fn queue_error<E>(
    operation: &'static str,
    url: &str,
    err: &aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
) -> QueueError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (class, detail) = classify_aws(err);
    QueueError {
        operation,
        queue: url.to_owned(),
        class,
        code: aws_error_code(err),
        detail,
    }
}

/// A batch entry's id must be unique within the request: its index in
/// the slice serves, and maps a failure back to its receipt handle.
fn entry_id(index: usize) -> String {
    index.to_string()
}

fn entry_failures(failed: &[BatchResultErrorEntry]) -> Vec<BatchEntryFailure> {
    failed
        .iter()
        .filter_map(|entry| {
            Some(BatchEntryFailure {
                // Ids are ours; one SQS did not get from us cannot name an entry.
                index: entry.id().parse().ok()?,
                code: entry.code().to_owned(),
                message: entry.message().unwrap_or_default().to_owned(),
                sender_fault: entry.sender_fault(),
            })
        })
        .collect()
}

/// An entry builder fails only when a required field is missing, which
/// our code always sets; still, no panic on the acknowledgement path.
fn entry_build_error(
    operation: &'static str,
    url: &str,
    err: aws_sdk_sqs::error::BuildError,
) -> QueueError {
    QueueError {
        operation,
        queue: url.to_owned(),
        class: crate::error::AwsFailure::Permanent,
        code: None,
        detail: format!("could not build the batch entry: {err}"),
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn receive(
        &self,
        max_messages: u64,
        wait_time_secs: u64,
        visibility_timeout_secs: u64,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let sent = Instant::now();
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max_messages as i32)
            .wait_time_seconds(wait_time_secs as i32)
            .visibility_timeout(visibility_timeout_secs as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names(ATTEMPTS_ATTRIBUTE)
            .send()
            .await
            .map_err(|err| queue_error("ReceiveMessage", &self.url, &err))?;
        // For the steady-rate lag bench (benches/support/e2e.rs): when each
        // message entered the queue (SentTimestamp, ms since the epoch) and
        // when it was received (this line's timestamp).
        debug!(
            messages = output.messages().len(),
            asked = max_messages,
            request_ms = sent.elapsed().as_millis() as u64,
            message_ids = %output.messages().iter().map(|m| m.message_id().unwrap_or_default()).collect::<Vec<_>>().join(","),
            sent_timestamps = %output
                .messages()
                .iter()
                .map(|m| m.attributes().and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp)).map_or("", String::as_str))
                .collect::<Vec<_>>()
                .join(","),
            "messages received"
        );
        let messages = output
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|message| {
                let receive_count = message
                    .attributes()
                    .and_then(|attrs| {
                        attrs.get(&MessageSystemAttributeName::ApproximateReceiveCount)
                    })
                    .and_then(|count| count.parse().ok())
                    .unwrap_or(1);
                // Ours, so well-formed; anything else counts as none.
                let earlier_attempts = message
                    .message_attributes()
                    .and_then(|attrs| attrs.get(ATTEMPTS_ATTRIBUTE))
                    .and_then(|value| value.string_value())
                    .and_then(|count| count.parse().ok())
                    .unwrap_or(0);
                Some(ReceivedMessage {
                    message_id: message.message_id?,
                    receipt_handle: message.receipt_handle?,
                    body: message.body.unwrap_or_default(),
                    receive_count,
                    earlier_attempts,
                })
            })
            .collect();
        Ok(messages)
    }

    async fn set_visibility(
        &self,
        receipt_handle: &str,
        timeout_secs: u64,
    ) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(timeout_secs as i32)
            .send()
            .await
            .map_err(|err| queue_error("ChangeMessageVisibility", &self.url, &err))?;
        Ok(())
    }

    async fn delete_batch(
        &self,
        receipt_handles: &[String],
    ) -> Result<Vec<BatchEntryFailure>, QueueError> {
        const OPERATION: &str = "DeleteMessageBatch";
        let entries = receipt_handles
            .iter()
            .enumerate()
            .map(|(index, receipt_handle)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(entry_id(index))
                    .receipt_handle(receipt_handle)
                    .build()
                    .map_err(|err| entry_build_error(OPERATION, &self.url, err))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sent = Instant::now();
        let output = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|err| queue_error(OPERATION, &self.url, &err))?;
        debug!(
            entries = receipt_handles.len(),
            request_ms = sent.elapsed().as_millis() as u64,
            "delete batch sent"
        );
        Ok(entry_failures(output.failed()))
    }

    async fn set_visibility_batch(
        &self,
        receipt_handles: &[String],
        timeout_secs: u64,
    ) -> Result<Vec<BatchEntryFailure>, QueueError> {
        const OPERATION: &str = "ChangeMessageVisibilityBatch";
        let entries = receipt_handles
            .iter()
            .enumerate()
            .map(|(index, receipt_handle)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(entry_id(index))
                    .receipt_handle(receipt_handle)
                    .visibility_timeout(timeout_secs as i32)
                    .build()
                    .map_err(|err| entry_build_error(OPERATION, &self.url, err))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|err| queue_error(OPERATION, &self.url, &err))?;
        Ok(entry_failures(output.failed()))
    }

    async fn requeue(
        &self,
        message: &ReceivedMessage,
        attempts: u64,
        delay_secs: u64,
    ) -> Result<(), QueueError> {
        const OPERATION: &str = "SendMessage";
        let attribute = MessageAttributeValue::builder()
            .data_type("Number")
            .string_value(attempts.to_string())
            .build()
            .map_err(|err| entry_build_error(OPERATION, &self.url, err))?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(&message.body)
            .delay_seconds(delay_secs.min(super::MAX_DELAY_SECS) as i32)
            .message_attributes(ATTEMPTS_ATTRIBUTE, attribute)
            .send()
            .await
            .map_err(|err| queue_error(OPERATION, &self.url, &err))?;
        Ok(())
    }
}
