//! Reconciliation's durable state: one JSON object in S3 holding each
//! prefix's listing position and watermark, and the lease that lets one
//! task of the fleet work at a time.
//!
//! Every write is conditional on what was read (`If-Match` the ETag read,
//! or `If-None-Match: *` when there was nothing), so two tasks never both
//! believe they hold the lease, and progress is never overwritten by a
//! task that lost it. S3 (and LocalStack) answer 412 to the loser.

use std::collections::BTreeMap;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The layout this worker writes; it refuses a newer one.
pub const STATE_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconcileState {
    pub format_version: u32,
    /// When reconciliation first ran against this state: objects older
    /// than this are not its business unless `reconcile.since` says so.
    pub started_at: Option<DateTime<Utc>>,
    /// By location (`s3://bucket/prefix`).
    pub prefixes: BTreeMap<String, PrefixProgress>,
    pub lease: Option<LeaseRecord>,
}

/// Where a prefix's listing stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrefixProgress {
    /// The last key listed in the cycle under way; `None` at a cycle's start.
    pub after: Option<String>,
    /// When the cycle under way listed its first page.
    pub cycle_started_at: Option<DateTime<Utc>>,
    /// Objects modified before this were checked by a complete cycle:
    /// the previous cycle's start less the grace period.
    pub checked_until: Option<DateTime<Utc>>,
    pub cycles_completed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: String,
    pub until: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
#[error("reconcile state s3://{bucket}/{key}: {detail}")]
pub struct StateError {
    pub bucket: String,
    pub key: String,
    pub detail: String,
}

/// What a conditional write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Written; the object's new ETag.
    Written(String),
    /// Someone wrote it since it was read: nothing was written.
    Conflict,
}

/// The state object at `bucket`/`key`.
pub struct StateStore {
    client: Client,
    bucket: String,
    key: String,
    expected_bucket_owner: Option<String>,
}

impl StateStore {
    pub fn new(
        client: Client,
        bucket: String,
        key: String,
        expected_bucket_owner: Option<String>,
    ) -> StateStore {
        StateStore {
            client,
            bucket,
            key,
            expected_bucket_owner,
        }
    }

    fn error(&self, detail: impl Into<String>) -> StateError {
        StateError {
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            detail: detail.into(),
        }
    }

    /// The state and its ETag; a default state and `None` when there is
    /// no object yet.
    pub async fn load(&self) -> Result<(ReconcileState, Option<String>), StateError> {
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .set_expected_bucket_owner(self.expected_bucket_owner.clone())
            .send()
            .await;
        let output = match got {
            Ok(output) => output,
            Err(err) if err.code() == Some("NoSuchKey") => {
                return Ok((ReconcileState::default(), None));
            }
            Err(err) => {
                return Err(self.error(format!("GetObject: {}", DisplayErrorContext(&err))));
            }
        };
        let etag = output.e_tag().map(str::to_owned);
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|err| self.error(format!("reading the body: {err}")))?
            .into_bytes();
        let state: ReconcileState = serde_json::from_slice(&bytes)
            .map_err(|err| self.error(format!("not a reconcile state: {err}")))?;
        if state.format_version > STATE_FORMAT_VERSION {
            return Err(self.error(format!(
                "format version {} was written by a newer s3-ingest (this one knows {STATE_FORMAT_VERSION})",
                state.format_version
            )));
        }
        Ok((state, etag))
    }

    /// Writes `state` if the object is still at `read_etag` (absent when
    /// `None`).
    pub async fn store(
        &self,
        state: &ReconcileState,
        read_etag: Option<&str>,
    ) -> Result<Stored, StateError> {
        let mut state = state.clone();
        state.format_version = STATE_FORMAT_VERSION;
        let body = serde_json::to_vec_pretty(&state).expect("state serializes");
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .content_type("application/json")
            .set_expected_bucket_owner(self.expected_bucket_owner.clone())
            .body(ByteStream::from(body));
        request = match read_etag {
            Some(etag) => request.if_match(etag),
            None => request.if_none_match("*"),
        };
        match request.send().await {
            Ok(output) => Ok(Stored::Written(
                output.e_tag().unwrap_or_default().to_owned(),
            )),
            // 409 ConditionalRequestConflict: a concurrent conditional write.
            Err(err)
                if matches!(
                    err.code(),
                    Some("PreconditionFailed" | "ConditionalRequestConflict")
                ) || err
                    .raw_response()
                    .is_some_and(|raw| matches!(raw.status().as_u16(), 409 | 412)) =>
            {
                Ok(Stored::Conflict)
            }
            Err(err) => Err(self.error(format!("PutObject: {}", DisplayErrorContext(&err)))),
        }
    }
}
