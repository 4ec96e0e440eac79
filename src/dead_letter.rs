//! The dead-letter envelope: a JSON document that tells an operator which
//! file failed, how, and what the original message was, so it can be
//! fixed and replayed.
//!
//! The serialized envelope always fits in one SQS message, whatever the
//! error and the original message contain: an envelope SQS refuses would
//! leave the object to be downloaded and retried forever. `error` is cut to
//! [`MAX_ERROR_BYTES`], the identifying fields to [`MAX_FIELD_BYTES`] each,
//! and `original_message` to what is left of [`MAX_ENVELOPE_BYTES`], all
//! measured as JSON-escaped text (a quote or a backslash takes two bytes,
//! a control character up to six). A cut field ends in `…[N more bytes]`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::ErrorKind;
use crate::notification::ObjectRef;
use crate::queue::{QueueError, Reachable};

/// Where envelopes go: `queue.dlq_url` (`queue::sqs::SqsDeadLetterQueue`),
/// or the in-memory fake in tests. A worker without one leaves poison to
/// the source queue's redrive policy.
#[async_trait]
pub trait DeadLetterQueue: Reachable {
    /// Sends an envelope (JSON); Ok means the DLQ accepted it.
    async fn send(&self, envelope_json: &str) -> Result<(), QueueError>;
}

/// SQS's limit for a message, body and attributes together.
pub const SQS_MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The most a serialized envelope takes: SQS's limit less 8 KiB of margin
/// (no message attributes are sent with it today).
pub const MAX_ENVELOPE_BYTES: usize = SQS_MAX_MESSAGE_BYTES - 8 * 1024;
/// The most `error` takes, escaped: the reason and enough of any quoted
/// data to see what was wrong.
pub const MAX_ERROR_BYTES: usize = 8 * 1024;
/// The most each of bucket, key, version id, ETag, route and message id
/// takes, escaped. Real values are far shorter (an S3 key is at most
/// 1024 bytes); only a forged message could reach it.
pub const MAX_FIELD_BYTES: usize = 2 * 1024;

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct DeadLetter {
    pub bucket: Option<String>,
    pub key: Option<String>,
    pub version_id: Option<String>,
    pub etag: Option<String>,
    pub error_kind: ErrorKind,
    pub error: String,
    pub receive_count: u64,
    pub route: Option<String>,
    pub message_id: String,
    pub worker_version: String,
    pub failed_at: DateTime<Utc>,
    /// The SQS body as received, cut (and marked so) where the envelope
    /// would not fit in an SQS message.
    pub original_message: String,
}

impl DeadLetter {
    /// An envelope for one object of a message.
    pub fn for_object(
        object: &ObjectRef,
        route: Option<&str>,
        error_kind: ErrorKind,
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
            ..DeadLetter::unbounded(
                error_kind,
                error,
                message_id,
                receive_count,
                original_message,
            )
        }
        .bounded()
    }

    /// An envelope for a whole message that names no usable object.
    pub fn for_message(
        error_kind: ErrorKind,
        error: String,
        message_id: &str,
        receive_count: u64,
        original_message: &str,
    ) -> DeadLetter {
        DeadLetter::unbounded(
            error_kind,
            error,
            message_id,
            receive_count,
            original_message,
        )
        .bounded()
    }

    fn unbounded(
        error_kind: ErrorKind,
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
            error_kind,
            error,
            receive_count,
            route: None,
            message_id: message_id.to_owned(),
            worker_version: env!("CARGO_PKG_VERSION").to_owned(),
            failed_at: Utc::now(),
            original_message: original_message.to_owned(),
        }
    }

    /// The envelope cut to fit [`MAX_ENVELOPE_BYTES`] when serialized.
    fn bounded(mut self) -> DeadLetter {
        self.error = fit_escaped(&self.error, MAX_ERROR_BYTES);
        self.message_id = fit_escaped(&self.message_id, MAX_FIELD_BYTES);
        for field in [
            &mut self.bucket,
            &mut self.key,
            &mut self.version_id,
            &mut self.etag,
            &mut self.route,
        ]
        .into_iter()
        .flatten()
        {
            *field = fit_escaped(field, MAX_FIELD_BYTES);
        }
        let original = std::mem::take(&mut self.original_message);
        // Everything but the original message, as serialized.
        let rest = serde_json::to_string(&self)
            .expect("envelope serializes")
            .len();
        self.original_message = fit_escaped(&original, MAX_ENVELOPE_BYTES.saturating_sub(rest));
        self
    }

    /// The envelope as sent: at most [`MAX_ENVELOPE_BYTES`], whatever its
    /// fields were set to.
    pub fn to_json(&self) -> String {
        let json = serde_json::to_string(self).expect("envelope serializes");
        if json.len() <= MAX_ENVELOPE_BYTES {
            return json;
        }
        serde_json::to_string(&self.clone().bounded()).expect("envelope serializes")
    }
}

/// How many bytes `c` takes inside a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        '\0'..='\u{1f}' => 6,
        _ => c.len_utf8(),
    }
}

/// `text` unchanged if its escaped form takes at most `max_escaped` bytes;
/// otherwise its longest prefix that fits together with the marker
/// `…[N more bytes]` (N counts the bytes of `text` left out).
fn fit_escaped(text: &str, max_escaped: usize) -> String {
    if text.chars().map(escaped_len).sum::<usize>() <= max_escaped {
        return text.to_owned();
    }
    // The marker with the largest N it can show; N only shrinks as the
    // kept prefix grows, so this reserves enough.
    let reserve = marker(text.len()).len();
    let budget = max_escaped.saturating_sub(reserve);
    let mut used = 0;
    let mut end = 0;
    for (index, c) in text.char_indices() {
        let cost = escaped_len(c);
        if used + cost > budget {
            break;
        }
        used += cost;
        end = index + c.len_utf8();
    }
    format!("{}{}", &text[..end], marker(text.len() - end))
}

fn marker(more_bytes: usize) -> String {
    format!("…[{more_bytes} more bytes]")
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
        let json = DeadLetter::for_object(
            &object,
            Some("r"),
            ErrorKind::CsvError,
            "bad".into(),
            "m1",
            2,
            "{}",
        )
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

    fn object() -> ObjectRef {
        ObjectRef {
            bucket: "b".into(),
            key: "k.csv".into(),
            version_id: None,
            etag: Some("e".into()),
            size: Some(3),
            sequencer: None,
            event_time: None,
            event_name: "ObjectCreated:Put".into(),
        }
    }

    #[test]
    fn huge_original_message_is_truncated_to_fit_sqs() {
        let body = "é".repeat(300 * 1024);
        let json =
            DeadLetter::for_message(ErrorKind::InvalidMessage, "x".into(), "m", 1, &body).to_json();
        assert!(json.len() <= MAX_ENVELOPE_BYTES);
        assert!(json.contains(" more bytes]"));
    }

    #[test]
    fn escaped_lengths_match_serde_json() {
        for c in (0u32..0x80)
            .filter_map(char::from_u32)
            .chain(['é', '€', '🦀', '\u{7f}'])
        {
            let serialized = serde_json::to_string(&c.to_string()).unwrap();
            assert_eq!(escaped_len(c), serialized.len() - 2, "{c:?}");
        }
    }

    /// Bodies whose escaped form is up to six times their size, and a
    /// 300 KB error: the envelope stays under SQS's limit, and each cut
    /// field says so.
    #[test]
    fn the_serialized_envelope_fits_sqs_whatever_it_holds() {
        let big = 300 * 1024;
        for (name, body) in [
            ("quotes", "\"".repeat(big)),
            ("backslashes", "\\".repeat(big)),
            ("control characters", "\u{1}".repeat(big)),
            ("newlines", "\n".repeat(big)),
            ("mixed", "a\"\\\u{1f}é🦀".repeat(big / 10)),
        ] {
            let error = format!("CSV data rows 1..=1: Row data: '{body}'");
            let letter = DeadLetter::for_object(
                &object(),
                Some("r"),
                ErrorKind::CsvError,
                error.clone(),
                "m1",
                1,
                &body,
            );
            let json = letter.to_json();
            assert!(
                json.len() <= MAX_ENVELOPE_BYTES,
                "{name}: {} bytes",
                json.len()
            );
            let parsed: DeadLetter = serde_json::from_str(&json).unwrap();
            assert!(parsed.error.starts_with("CSV data rows 1..=1"), "{name}");
            assert!(parsed.error.ends_with(" more bytes]"), "{name}");
            let error_escaped = serde_json::to_string(&parsed.error).unwrap().len() - 2;
            assert!(error_escaped <= MAX_ERROR_BYTES, "{name}: {error_escaped}");
            assert!(parsed.original_message.ends_with(" more bytes]"), "{name}");
            // The cut text is a prefix of the original, and the count adds up.
            let kept = parsed.original_message.rsplit_once('…').unwrap().0;
            assert!(body.starts_with(kept), "{name}");
            assert!(
                parsed
                    .original_message
                    .ends_with(&format!("…[{} more bytes]", body.len() - kept.len())),
                "{name}"
            );
            // The original message gets what the rest leaves: most of it.
            assert!(
                json.len() > MAX_ENVELOPE_BYTES - 1024,
                "{name}: {}",
                json.len()
            );
        }
    }

    #[test]
    fn a_forged_key_cannot_push_the_envelope_over_the_limit() {
        let mut object = object();
        object.key = "\"".repeat(200 * 1024);
        object.version_id = Some("\\".repeat(200 * 1024));
        let letter = DeadLetter::for_object(
            &object,
            None,
            ErrorKind::ObjectMissing,
            "x".repeat(300 * 1024),
            "m",
            1,
            &"\u{0}".repeat(200 * 1024),
        );
        assert!(letter.to_json().len() <= MAX_ENVELOPE_BYTES);
        // Fields set after construction are bounded when serialized too.
        let mut letter = letter;
        letter.error = "\"".repeat(400 * 1024);
        assert!(letter.to_json().len() <= MAX_ENVELOPE_BYTES);
    }

    #[test]
    fn a_small_envelope_is_unchanged() {
        let letter = DeadLetter::for_object(
            &object(),
            Some("r"),
            ErrorKind::CsvError,
            "bad \"row\"".into(),
            "m",
            1,
            "{}",
        );
        assert_eq!(letter.error, "bad \"row\"");
        assert_eq!(letter.original_message, "{}");
        assert_eq!(letter.key.as_deref(), Some("k.csv"));
    }
}
