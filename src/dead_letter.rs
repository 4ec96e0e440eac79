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
//!
//! An envelope can be ingested again: moved back to the source queue by
//! SQS's redrive, the worker recognises it ([`is_envelope`]) and ingests
//! the object it names ([`DeadLetter::replay_objects`]); `s3-ingest dlq
//! replay` rebuilds an S3 event from the same fields. `envelope_version`
//! says which layout an envelope has, so a newer worker replays older
//! envelopes: 0 (the field absent) is the layout before it existed, which
//! lacks `event_time` and `size`; 1 adds them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::ErrorKind;
use crate::notification::{self, Notification, NotificationError, ObjectRef, Origin};
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

/// The envelope layout this worker writes; it reads every one up to it.
pub const ENVELOPE_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct DeadLetter {
    /// The layout: [`ENVELOPE_VERSION`] when written by this worker; 0
    /// when absent (envelopes written before the field existed).
    #[serde(default)]
    pub envelope_version: u32,
    pub bucket: Option<String>,
    pub key: Option<String>,
    pub version_id: Option<String>,
    pub etag: Option<String>,
    /// The object's size and event time as its notification said (since
    /// version 1), so a replay derives the same partitions and lag.
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub event_time: Option<DateTime<Utc>>,
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
            size: object.size,
            event_time: object.event_time,
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
            envelope_version: ENVELOPE_VERSION,
            bucket: None,
            key: None,
            version_id: None,
            etag: None,
            size: None,
            event_time: None,
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

/// Whether a message body's top-level object is one of our envelopes:
/// the fields every version has and no notification has.
pub fn is_envelope(body: &Map<String, Value>) -> bool {
    [
        "error_kind",
        "original_message",
        "failed_at",
        "worker_version",
    ]
    .iter()
    .all(|field| body.contains_key(*field))
}

/// Reads an envelope from a message body; `None` for anything else (a
/// message SQS's own redrive policy moved, or a foreign one).
pub fn from_body(body: &str) -> Option<DeadLetter> {
    let value: Value = serde_json::from_str(body).ok()?;
    if !is_envelope(value.as_object()?) {
        return None;
    }
    serde_json::from_value(value).ok()
}

impl DeadLetter {
    /// Whether `original_message` was cut to fit and no longer parses.
    pub fn original_is_cut(&self) -> bool {
        self.original_message.ends_with(" more bytes]")
            && serde_json::from_str::<Value>(&self.original_message).is_err()
    }

    /// The object(s) to ingest again when this envelope comes back:
    /// the one it names, pinned to the version that failed, with the
    /// size and event time of its notification; for an envelope of a
    /// whole message (one that named no usable object), the objects its
    /// original message names, if this worker can read it now.
    pub fn replay_objects(&self) -> Result<Vec<ObjectRef>, NotificationError> {
        const AT: &str = "dead-letter envelope";
        if self.envelope_version > ENVELOPE_VERSION {
            return Err(NotificationError::Malformed {
                at: AT.to_owned(),
                detail: format!(
                    "envelope version {} is newer than this worker reads ({ENVELOPE_VERSION}): upgrade s3-ingest to replay it",
                    self.envelope_version
                ),
            });
        }
        if let (Some(bucket), Some(key)) = (&self.bucket, &self.key) {
            // Version 0 lacks the event time and size: take them from the
            // original message when it still names the object.
            let original = self.original_objects().into_iter().find(|object| {
                &object.bucket == bucket
                    && &object.key == key
                    && object.version_id == self.version_id
            });
            return Ok(vec![ObjectRef {
                bucket: bucket.clone(),
                key: key.clone(),
                version_id: self.version_id.clone(),
                etag: self.etag.clone(),
                size: self.size.or(original.as_ref().and_then(|o| o.size)),
                sequencer: original.as_ref().and_then(|o| o.sequencer.clone()),
                event_time: self
                    .event_time
                    .or(original.as_ref().and_then(|o| o.event_time)),
                event_name: notification::REPLAY_EVENT_NAME.to_owned(),
                origin: Origin::Replay,
            }]);
        }
        if self.original_is_cut() {
            return Err(NotificationError::Malformed {
                at: AT.to_owned(),
                detail: format!(
                    "names no object and its original message was cut to fit the envelope ({} was: {})",
                    self.error_kind, self.error
                ),
            });
        }
        match notification::parse(&self.original_message) {
            Ok(Notification::Objects(objects)) => Ok(objects
                .into_iter()
                .map(|object| ObjectRef {
                    event_name: notification::REPLAY_EVENT_NAME.to_owned(),
                    origin: Origin::Replay,
                    ..object
                })
                .collect()),
            Ok(Notification::Discard(reason)) => Err(NotificationError::Malformed {
                at: AT.to_owned(),
                detail: format!(
                    "its original message announces nothing to ingest ({})",
                    reason.label()
                ),
            }),
            Err(err) => Err(NotificationError::Malformed {
                at: AT.to_owned(),
                detail: format!("its original message still cannot be read: {err}"),
            }),
        }
    }

    /// The objects the original message names, if it still parses.
    fn original_objects(&self) -> Vec<ObjectRef> {
        match notification::parse(&self.original_message) {
            Ok(Notification::Objects(objects)) => objects,
            _ => Vec::new(),
        }
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
            origin: crate::notification::Origin::Notification,
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
            origin: crate::notification::Origin::Notification,
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

    fn versioned_object() -> ObjectRef {
        ObjectRef {
            version_id: Some("v1".into()),
            event_time: Some("2026-11-30T10:00:00Z".parse().unwrap()),
            ..object()
        }
    }

    #[test]
    fn a_redriven_envelope_names_its_object_pinned_to_the_failed_version() {
        let original =
            crate::notification::synthetic_event(&versioned_object(), "ObjectCreated:Put");
        let json = DeadLetter::for_object(
            &versioned_object(),
            Some("r"),
            ErrorKind::CsvError,
            "bad".into(),
            "m",
            3,
            &original,
        )
        .to_json();
        assert!(json.contains("\"envelope_version\":1"), "{json}");
        match notification::parse(&json).unwrap() {
            Notification::Objects(objects) => {
                assert_eq!(objects.len(), 1);
                let object = &objects[0];
                assert_eq!(object.origin, Origin::Replay);
                assert_eq!(object.key, "k.csv");
                assert_eq!(object.version_id.as_deref(), Some("v1"));
                assert_eq!(object.etag.as_deref(), Some("e"));
                assert_eq!(object.size, Some(3));
                assert_eq!(object.event_time, versioned_object().event_time);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_envelope_without_a_version_field_still_replays() {
        // Version 0: written before envelope_version, event_time and size
        // existed; those come from the original message.
        let original =
            crate::notification::synthetic_event(&versioned_object(), "ObjectCreated:Put");
        let letter = DeadLetter::for_object(
            &versioned_object(),
            Some("r"),
            ErrorKind::CsvError,
            "bad".into(),
            "m",
            3,
            &original,
        );
        let mut value: Value = serde_json::from_str(&letter.to_json()).unwrap();
        let fields = value.as_object_mut().unwrap();
        for field in ["envelope_version", "event_time", "size"] {
            fields.remove(field);
        }
        let old = serde_json::to_string(&value).unwrap();
        let parsed = from_body(&old).expect("an envelope");
        assert_eq!(parsed.envelope_version, 0);
        let objects = parsed.replay_objects().unwrap();
        assert_eq!(objects[0].event_time, versioned_object().event_time);
        assert_eq!(objects[0].size, Some(3));
    }

    #[test]
    fn an_envelope_from_a_newer_worker_or_without_object_says_why_it_cannot_replay() {
        let mut letter = DeadLetter::for_object(
            &object(),
            None,
            ErrorKind::CsvError,
            "bad".into(),
            "m",
            1,
            "{}",
        );
        letter.envelope_version = ENVELOPE_VERSION + 1;
        let err = letter.replay_objects().unwrap_err().to_string();
        assert!(err.contains("upgrade s3-ingest"), "{err}");

        // A whole message that was not understood: replayed only if its
        // original body reads now; this one still does not.
        let message =
            DeadLetter::for_message(ErrorKind::InvalidMessage, "x".into(), "m", 1, "hello");
        let err = message.replay_objects().unwrap_err().to_string();
        assert!(err.contains("still cannot be read"), "{err}");
        // One whose original was a good event (e.g. max_receive_count).
        let event = crate::notification::synthetic_event(&object(), "ObjectCreated:Put");
        let message = DeadLetter::for_message(
            ErrorKind::MaxReceiveCountExceeded,
            "x".into(),
            "m",
            9,
            &event,
        );
        let objects = message.replay_objects().unwrap();
        assert_eq!(objects[0].key, "k.csv");
        assert_eq!(objects[0].origin, Origin::Replay);
    }
}
