//! The dead-letter envelope: a JSON document that tells an operator which
//! file failed, how, and what the original message was, so it can be
//! fixed and replayed.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::notification::ObjectRef;

/// SQS's message size limit is 256 KiB; leave room for the envelope itself.
const MAX_ORIGINAL_MESSAGE_BYTES: usize = 200 * 1024;

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct DeadLetter {
    pub bucket: Option<String>,
    pub key: Option<String>,
    pub version_id: Option<String>,
    pub etag: Option<String>,
    pub error_kind: String,
    pub error: String,
    pub receive_count: u64,
    pub route: Option<String>,
    pub message_id: String,
    pub worker_version: String,
    pub failed_at: DateTime<Utc>,
    /// The SQS body as received (truncated past 200 KiB, marked so).
    pub original_message: String,
}

impl DeadLetter {
    /// An envelope for one object of a message.
    pub fn for_object(
        object: &ObjectRef,
        route: Option<&str>,
        error_kind: &str,
        error: String,
        message_id: &str,
        receive_count: u64,
        original_message: &str,
    ) -> DeadLetter {
        DeadLetter {
            bucket: Some(object.bucket.clone()),
            key: Some(object.key.clone()),
            version_id: object.version_id.clone(),
            etag: object.etag.clone(),
            route: route.map(str::to_owned),
            ..DeadLetter::for_message(
                error_kind,
                error,
                message_id,
                receive_count,
                original_message,
            )
        }
    }

    /// An envelope for a whole message that names no usable object.
    pub fn for_message(
        error_kind: &str,
        error: String,
        message_id: &str,
        receive_count: u64,
        original_message: &str,
    ) -> DeadLetter {
        DeadLetter {
            bucket: None,
            key: None,
            version_id: None,
            etag: None,
            error_kind: error_kind.to_owned(),
            error,
            receive_count,
            route: None,
            message_id: message_id.to_owned(),
            worker_version: env!("CARGO_PKG_VERSION").to_owned(),
            failed_at: Utc::now(),
            original_message: truncate(original_message),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("envelope serializes")
    }
}

fn truncate(body: &str) -> String {
    if body.len() <= MAX_ORIGINAL_MESSAGE_BYTES {
        return body.to_owned();
    }
    let mut end = MAX_ORIGINAL_MESSAGE_BYTES;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[truncated, {} bytes in all]", &body[..end], body.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_every_field_operators_need() {
        let object = ObjectRef {
            bucket: "b".into(),
            key: "k.csv".into(),
            version_id: Some("v1".into()),
            etag: Some("e".into()),
            size: Some(3),
            sequencer: None,
            event_time: None,
            event_name: "ObjectCreated:Put".into(),
        };
        let json =
            DeadLetter::for_object(&object, Some("r"), "csv_error", "bad".into(), "m1", 2, "{}")
                .to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        for field in [
            "bucket",
            "key",
            "version_id",
            "etag",
            "error_kind",
            "error",
            "receive_count",
            "route",
            "worker_version",
            "failed_at",
            "original_message",
        ] {
            assert!(!value[field].is_null(), "{field} missing in {json}");
        }
    }

    #[test]
    fn huge_original_message_is_truncated_to_fit_sqs() {
        let body = "é".repeat(300 * 1024);
        let json = DeadLetter::for_message("invalid_message", "x".into(), "m", 1, &body).to_json();
        assert!(json.len() < 256 * 1024);
        assert!(json.contains("truncated"));
    }
}
