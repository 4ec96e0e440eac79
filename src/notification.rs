//! Turns the body of an SQS message that announces S3 objects into [`ObjectRef`]s.
//!
//! These body shapes are recognised:
//!
//! 1. An S3 event notification (`{"Records":[...]}`), as S3 sends it to SQS
//!    directly or through SNS with raw message delivery. `s3-ingest dlq
//!    replay`, `s3-ingest backfill` and reconciliation send the same shape
//!    with the event names `ObjectCreated:Replay`, `ObjectCreated:Backfill`
//!    and `ObjectCreated:Reconcile` ([`synthetic_event`]).
//! 2. The `s3:TestEvent` that S3 sends when a notification configuration is saved.
//! 3. An SNS envelope (`"Type":"Notification"`) whose `Message` string holds
//!    shape 1, 2, 4 or 6; SNS subscription control messages are discarded.
//! 4. An EventBridge event with `"source":"aws.s3"`.
//! 5. One of the worker's own dead-letter envelopes (`dead_letter.rs`),
//!    moved back by SQS's redrive: the object it names is ingested again.
//! 6. A request for one object, from a person or another system: the text
//!    `s3://bucket/key`, or `{"bucket": ..., "key": ..., "version_id": ...}`.
//!
//! Object keys are percent-decoded only for shapes 1 and 3, because only the S3
//! event notification format is documented as URL-encoding the key. EventBridge
//! keys and requested keys are taken verbatim.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

/// One S3 object version named by a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub bucket: String,
    /// The real object key, already URL-decoded where the source encodes it.
    pub key: String,
    /// `None` when the field is absent, empty or `"null"` (unversioned bucket).
    pub version_id: Option<String>,
    /// The ETag without surrounding quotes; `None` when absent or empty.
    pub etag: Option<String>,
    pub size: Option<u64>,
    pub sequencer: Option<String>,
    pub event_time: Option<DateTime<Utc>>,
    /// `"ObjectCreated:Put"` and the like for S3 notifications, `"Object Created"` for EventBridge.
    pub event_name: String,
    pub origin: Origin,
}

/// Who asked for an object to be ingested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// S3 announced it (directly, through SNS or through EventBridge).
    Notification,
    /// It failed before and is tried again: a dead-letter envelope moved
    /// back by SQS's redrive, or an event `s3-ingest dlq replay` rebuilt.
    /// If the object has a newer version or is gone by now, nothing is
    /// ingested (the worker reports it as superseded or gone).
    Replay,
    /// `s3-ingest backfill` listed it.
    Backfill,
    /// Reconciliation found it without a notification (`reconcile/`).
    Reconcile,
    /// A plain request: `s3://bucket/key` or a small JSON object.
    Request,
}

impl Origin {
    /// A short, stable name for logs and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Origin::Notification => "notification",
            Origin::Replay => "replay",
            Origin::Backfill => "backfill",
            Origin::Reconcile => "reconcile",
            Origin::Request => "request",
        }
    }
}

/// The event names of the synthetic S3 events the operator's commands send.
pub const REPLAY_EVENT_NAME: &str = "ObjectCreated:Replay";
pub const BACKFILL_EVENT_NAME: &str = "ObjectCreated:Backfill";
pub const RECONCILE_EVENT_NAME: &str = "ObjectCreated:Reconcile";

fn origin_of_event(event_name: &str) -> Origin {
    match event_name {
        REPLAY_EVENT_NAME => Origin::Replay,
        BACKFILL_EVENT_NAME => Origin::Backfill,
        RECONCILE_EVENT_NAME => Origin::Reconcile,
        _ => Origin::Notification,
    }
}

impl ObjectRef {
    /// Returns the object's location as `s3://bucket/key`, with the key unescaped.
    pub fn s3_uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// What one SQS message asks the worker to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// ObjectCreated records (possibly several), in message order; never empty.
    /// Non-create records mixed into the same message are dropped from this list.
    Objects(Vec<ObjectRef>),
    /// Nothing to ingest; the message should be deleted and counted.
    Discard(DiscardReason),
}

/// Why a well-formed message carries nothing to ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscardReason {
    /// `s3:TestEvent`, sent directly or inside SNS.
    TestEvent,
    /// Only non-create events, e.g. `ObjectRemoved:Delete` or EventBridge `Object Deleted`.
    /// Empty when an S3 notification has an empty `Records` array.
    NotObjectCreated { event_names: Vec<String> },
    /// SNS control messages (`SubscriptionConfirmation`, `UnsubscribeConfirmation`).
    SnsSubscriptionConfirmation,
}

impl DiscardReason {
    /// Returns a short, stable name for use as a metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            DiscardReason::TestEvent => "test_event",
            DiscardReason::NotObjectCreated { .. } => "not_object_created",
            DiscardReason::SnsSubscriptionConfirmation => "sns_control",
        }
    }
}

/// Why a message body could not be understood. Such a message is poison:
/// retrying it cannot succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotificationError {
    #[error("body is not json: {0}")]
    NotJson(String),
    #[error("unrecognized message shape: {0}")]
    UnknownShape(String),
    /// A required field is absent, null or empty. `at` names the part of the
    /// message (`"record 2"` counts from 1, or `"eventbridge event"`).
    #[error("{at}: missing {field}")]
    MissingField { at: String, field: &'static str },
    /// A field has the wrong JSON type or an unparseable value.
    #[error("{at}: malformed: {detail}")]
    Malformed { at: String, detail: String },
    #[error("{at}: bad key encoding: {detail}")]
    BadKeyEncoding { at: String, detail: String },
    /// The SNS envelope was fine but the message inside it was not.
    #[error("sns message: {0}")]
    Sns(Box<NotificationError>),
}

/// Parses an SQS message body into the objects it announces, or the reason it
/// announces none.
pub fn parse(body: &str) -> Result<Notification, NotificationError> {
    if let Some(uri) = body.trim().strip_prefix("s3://") {
        return parse_uri_request(uri);
    }
    let value = parse_json(body)?;
    if is_sns_envelope(as_object(&value)?) {
        parse_sns(&value)
    } else {
        parse_payload(&value)
    }
}

fn parse_json(text: &str) -> Result<Value, NotificationError> {
    serde_json::from_str(text).map_err(|e| NotificationError::NotJson(e.to_string()))
}

fn as_object(value: &Value) -> Result<&Map<String, Value>, NotificationError> {
    let kind = match value {
        Value::Object(map) => return Ok(map),
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
    };
    Err(NotificationError::UnknownShape(format!(
        "expected a json object, got {kind}"
    )))
}

/// Dispatches on the field that tells the non-SNS shapes apart. SNS envelopes
/// are not accepted here, so an envelope nested in an envelope is rejected.
fn parse_payload(value: &Value) -> Result<Notification, NotificationError> {
    let obj = as_object(value)?;
    if let Some(records) = obj.get("Records") {
        parse_s3_event(records)
    } else if obj.contains_key("Event") {
        parse_test_event(obj)
    } else if obj.contains_key("detail-type") {
        parse_eventbridge(value)
    } else if crate::dead_letter::is_envelope(obj) {
        parse_dead_letter(value)
    } else if obj.contains_key("bucket") && obj.contains_key("key") {
        parse_json_request(value)
    } else {
        Err(unknown_shape(obj))
    }
}

fn unknown_shape(obj: &Map<String, Value>) -> NotificationError {
    // A few field names are enough to identify what was sent without letting a
    // huge foreign message flood the logs.
    const MAX_FIELDS: usize = 8;
    let mut names: Vec<String> = obj
        .keys()
        .take(MAX_FIELDS)
        .map(|k| k.chars().take(64).collect())
        .collect();
    if obj.len() > MAX_FIELDS {
        names.push("...".to_owned());
    }
    NotificationError::UnknownShape(format!("top-level fields: {}", names.join(", ")))
}

// ---------------------------------------------------------------------------
// Shape 1: S3 event notification

/// Just enough of a record to decide whether it matters, so that oddities in
/// records we drop anyway cannot make the whole message poison.
#[derive(Deserialize)]
struct S3RecordHead {
    #[serde(rename = "eventName")]
    event_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct S3Record {
    event_time: Option<DateTime<Utc>>,
    s3: Option<S3Entity>,
}

#[derive(Deserialize, Default)]
struct S3Entity {
    bucket: Option<BucketEntity>,
    object: Option<S3ObjectEntity>,
}

#[derive(Deserialize)]
struct BucketEntity {
    name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct S3ObjectEntity {
    key: Option<String>,
    size: Option<u64>,
    e_tag: Option<String>,
    version_id: Option<String>,
    sequencer: Option<String>,
}

fn parse_s3_event(records: &Value) -> Result<Notification, NotificationError> {
    let records = records
        .as_array()
        .ok_or_else(|| NotificationError::Malformed {
            at: "s3 event".to_owned(),
            detail: "Records is not an array".to_owned(),
        })?;

    let mut objects = Vec::new();
    let mut skipped = Vec::new();
    for (index, raw) in records.iter().enumerate() {
        let at = format!("record {}", index + 1);
        if !raw.is_object() {
            return Err(malformed(&at, "not a json object"));
        }
        let head = S3RecordHead::deserialize(raw).map_err(|e| malformed(&at, e))?;
        let event_name = non_empty(head.event_name).ok_or_else(|| missing(&at, "eventName"))?;
        if !event_name.starts_with("ObjectCreated:") {
            skipped.push(event_name);
            continue;
        }
        let record = S3Record::deserialize(raw).map_err(|e| malformed(&at, e))?;
        objects.push(s3_record_to_ref(record, event_name, &at)?);
    }

    if objects.is_empty() {
        Ok(Notification::Discard(DiscardReason::NotObjectCreated {
            event_names: skipped,
        }))
    } else {
        Ok(Notification::Objects(objects))
    }
}

fn s3_record_to_ref(
    record: S3Record,
    event_name: String,
    at: &str,
) -> Result<ObjectRef, NotificationError> {
    let s3 = record.s3.unwrap_or_default();
    let bucket =
        non_empty(s3.bucket.and_then(|b| b.name)).ok_or_else(|| missing(at, "s3.bucket.name"))?;
    let object = s3.object.unwrap_or_default();
    let raw_key = non_empty(object.key).ok_or_else(|| missing(at, "s3.object.key"))?;
    let key = decode_form_key(&raw_key).map_err(|detail| NotificationError::BadKeyEncoding {
        at: at.to_owned(),
        detail,
    })?;
    Ok(ObjectRef {
        bucket,
        key,
        version_id: clean_version_id(object.version_id),
        etag: clean_etag(object.e_tag),
        size: object.size,
        sequencer: non_empty(object.sequencer),
        event_time: record.event_time,
        origin: origin_of_event(&event_name),
        event_name,
    })
}

/// Decodes a key from the `application/x-www-form-urlencoded` form that S3 uses
/// in event notifications.
///
/// AWS sends a space as `+` and a literal plus as `%2B`, so turning every `+`
/// into a space before percent-decoding cannot corrupt a real plus. LocalStack
/// sends spaces as `%20`, which the same pass handles.
fn decode_form_key(raw: &str) -> Result<String, String> {
    // percent_decode passes malformed escapes through unchanged; that would
    // silently name a different object, so they are rejected instead.
    let bytes = raw.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' {
            let valid = bytes.len() > i + 2
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !valid {
                return Err(format!("invalid percent-escape at byte {i}"));
            }
        }
    }
    let spaced = raw.replace('+', " ");
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(&spaced).collect();
    String::from_utf8(decoded).map_err(|_| "not valid utf-8 after percent-decoding".to_owned())
}

// ---------------------------------------------------------------------------
// Shape 2: s3:TestEvent

fn parse_test_event(obj: &Map<String, Value>) -> Result<Notification, NotificationError> {
    match obj.get("Event").and_then(Value::as_str) {
        Some("s3:TestEvent") => Ok(Notification::Discard(DiscardReason::TestEvent)),
        Some(other) => Err(NotificationError::UnknownShape(format!(
            "unsupported Event {other:?}"
        ))),
        None => Err(NotificationError::UnknownShape(
            "Event is not a string".to_owned(),
        )),
    }
}

// ---------------------------------------------------------------------------
// Shape 3: SNS envelope

#[derive(Deserialize)]
struct SnsEnvelope {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "Message")]
    message: Option<String>,
}

fn is_sns_envelope(obj: &Map<String, Value>) -> bool {
    // Every SNS message carries TopicArn; none of the other shapes has it or Type.
    obj.get("Type").is_some_and(Value::is_string) && obj.contains_key("TopicArn")
}

fn parse_sns(value: &Value) -> Result<Notification, NotificationError> {
    const AT: &str = "sns envelope";
    let envelope = SnsEnvelope::deserialize(value).map_err(|e| malformed(AT, e))?;
    match envelope.kind.as_str() {
        "Notification" => {
            let message = envelope.message.ok_or_else(|| missing(AT, "Message"))?;
            parse_json(&message)
                .and_then(|inner| parse_payload(&inner))
                .map_err(|e| NotificationError::Sns(Box::new(e)))
        }
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => Ok(Notification::Discard(
            DiscardReason::SnsSubscriptionConfirmation,
        )),
        other => Err(malformed(AT, format!("unsupported Type {other:?}"))),
    }
}

// ---------------------------------------------------------------------------
// Shape 4: EventBridge

#[derive(Deserialize)]
struct EventBridgeHead {
    source: Option<String>,
    #[serde(rename = "detail-type")]
    detail_type: Option<String>,
}

#[derive(Deserialize)]
struct EventBridgeCreated {
    time: Option<DateTime<Utc>>,
    detail: Option<EventBridgeDetail>,
}

#[derive(Deserialize, Default)]
struct EventBridgeDetail {
    bucket: Option<BucketEntity>,
    object: Option<EventBridgeObject>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct EventBridgeObject {
    key: Option<String>,
    size: Option<u64>,
    etag: Option<String>,
    version_id: Option<String>,
    sequencer: Option<String>,
}

fn parse_eventbridge(value: &Value) -> Result<Notification, NotificationError> {
    const AT: &str = "eventbridge event";
    let head = EventBridgeHead::deserialize(value).map_err(|e| malformed(AT, e))?;
    match head.source.as_deref() {
        Some("aws.s3") => {}
        Some(other) => {
            return Err(NotificationError::UnknownShape(format!(
                "eventbridge event from source {other:?}"
            )));
        }
        None => return Err(missing(AT, "source")),
    }
    let detail_type = non_empty(head.detail_type).ok_or_else(|| missing(AT, "detail-type"))?;
    if detail_type != "Object Created" {
        return Ok(Notification::Discard(DiscardReason::NotObjectCreated {
            event_names: vec![detail_type],
        }));
    }

    let event = EventBridgeCreated::deserialize(value).map_err(|e| malformed(AT, e))?;
    let detail = event.detail.unwrap_or_default();
    let bucket = non_empty(detail.bucket.and_then(|b| b.name))
        .ok_or_else(|| missing(AT, "detail.bucket.name"))?;
    let object = detail.object.unwrap_or_default();
    // Not decoded: the EventBridge format carries the key as-is, and decoding a
    // key that merely contains '+' or '%' would name the wrong object.
    let key = non_empty(object.key).ok_or_else(|| missing(AT, "detail.object.key"))?;
    Ok(Notification::Objects(vec![ObjectRef {
        bucket,
        key,
        version_id: clean_version_id(object.version_id),
        etag: clean_etag(object.etag),
        size: object.size,
        sequencer: non_empty(object.sequencer),
        event_time: event.time,
        event_name: detail_type,
        origin: Origin::Notification,
    }]))
}

// ---------------------------------------------------------------------------
// Shape 5: a dead-letter envelope, redriven

fn parse_dead_letter(value: &Value) -> Result<Notification, NotificationError> {
    const AT: &str = "dead-letter envelope";
    let envelope =
        crate::dead_letter::DeadLetter::deserialize(value).map_err(|e| malformed(AT, e))?;
    envelope.replay_objects().map(Notification::Objects)
}

// ---------------------------------------------------------------------------
// Shape 6: a request for one object

fn parse_uri_request(uri: &str) -> Result<Notification, NotificationError> {
    const AT: &str = "s3 uri";
    let (bucket, key) = uri.split_once('/').ok_or_else(|| missing(AT, "key"))?;
    if bucket.is_empty() {
        return Err(missing(AT, "bucket"));
    }
    if key.is_empty() {
        return Err(missing(AT, "key"));
    }
    Ok(Notification::Objects(vec![ObjectRef::requested(
        bucket, key, None,
    )]))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    bucket: String,
    key: String,
    version_id: Option<String>,
}

fn parse_json_request(value: &Value) -> Result<Notification, NotificationError> {
    const AT: &str = "object request";
    let request = JsonRequest::deserialize(value).map_err(|e| malformed(AT, e))?;
    let bucket = non_empty(Some(request.bucket)).ok_or_else(|| missing(AT, "bucket"))?;
    let key = non_empty(Some(request.key)).ok_or_else(|| missing(AT, "key"))?;
    Ok(Notification::Objects(vec![ObjectRef::requested(
        &bucket,
        &key,
        clean_version_id(request.version_id),
    )]))
}

impl ObjectRef {
    /// An object a plain request names: the version given, else whatever
    /// version is current when it is read.
    fn requested(bucket: &str, key: &str, version_id: Option<String>) -> ObjectRef {
        ObjectRef {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            version_id,
            etag: None,
            size: None,
            sequencer: None,
            event_time: None,
            event_name: "Request".to_owned(),
            origin: Origin::Request,
        }
    }
}

/// A one-record S3 event for `object`, as S3 would send it (the key
/// form-encoded), named `event_name` (usually [`REPLAY_EVENT_NAME`] or
/// [`BACKFILL_EVENT_NAME`]): what `dlq replay` and `backfill` enqueue.
/// A worker of any version understands it as an ObjectCreated event.
pub fn synthetic_event(object: &ObjectRef, event_name: &str) -> String {
    // Everything but unreserved characters and `/` is escaped; the decoder
    // turns `%20` (and `+`) back into a space.
    const KEY_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    let key = percent_encoding::utf8_percent_encode(&object.key, KEY_ESCAPES).to_string();
    let mut entity = serde_json::json!({ "key": key });
    let fields = entity.as_object_mut().expect("an object");
    if let Some(size) = object.size {
        fields.insert("size".into(), size.into());
    }
    if let Some(etag) = &object.etag {
        fields.insert("eTag".into(), etag.clone().into());
    }
    if let Some(version_id) = &object.version_id {
        fields.insert("versionId".into(), version_id.clone().into());
    }
    if let Some(sequencer) = &object.sequencer {
        fields.insert("sequencer".into(), sequencer.clone().into());
    }
    let mut record = serde_json::json!({
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": event_name,
        "userIdentity": { "principalId": "s3-ingest" },
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": { "name": object.bucket },
            "object": entity,
        },
    });
    if let Some(time) = object.event_time {
        record["eventTime"] = time
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            .into();
    }
    serde_json::json!({ "Records": [record] }).to_string()
}

// ---------------------------------------------------------------------------
// Helpers

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|s| !s.is_empty())
}

/// Treats `"null"` as absent: S3 reports that literal for objects stored while
/// versioning was off or suspended, so callers can rely on `is_some()` meaning
/// a real version id.
fn clean_version_id(value: Option<String>) -> Option<String> {
    non_empty(value).filter(|v| v != "null")
}

/// Strips the quotes that HTTP-style ETags carry so that values compare equal
/// whichever source they came from.
fn clean_etag(value: Option<String>) -> Option<String> {
    non_empty(value.map(|e| e.trim_matches('"').to_owned()))
}

fn missing(at: &str, field: &'static str) -> NotificationError {
    NotificationError::MissingField {
        at: at.to_owned(),
        field,
    }
}

fn malformed(at: &str, detail: impl ToString) -> NotificationError {
    NotificationError::Malformed {
        at: at.to_owned(),
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message body from `tests/fixtures/notifications/` (its README says
    /// where each comes from).
    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../tests/fixtures/notifications/", $name, ".json"))
        };
    }

    /// The "Example message" from the S3 event message structure docs.
    const S3_PUT: &str = fixture!("s3_put");
    const S3_MULTI: &str = fixture!("s3_multi");
    /// A Put followed by a Delete on a versioned bucket in one message.
    const S3_MIXED: &str = fixture!("s3_mixed");
    const S3_ONLY_NON_CREATED: &str = fixture!("s3_only_non_created");
    const S3_TEST_EVENT: &str = fixture!("s3_test_event");
    /// Non-raw SNS delivery of [`S3_PUT`]-like content, as SQS receives it.
    const SNS_S3_EVENT: &str = fixture!("sns_s3_event");
    const SNS_TEST_EVENT: &str = fixture!("sns_test_event");
    const SNS_SUBSCRIPTION_CONFIRMATION: &str = fixture!("sns_subscription_confirmation");
    /// The "Object created" example from the S3 EventBridge docs.
    const EVENTBRIDGE_CREATED: &str = fixture!("eventbridge_created");
    /// An unversioned bucket: EventBridge omits version-id altogether.
    const EVENTBRIDGE_CREATED_UNVERSIONED: &str = fixture!("eventbridge_created_unversioned");
    /// The "Object deleted (using DeleteObject)" example from the S3 EventBridge docs.
    const EVENTBRIDGE_DELETED: &str = fixture!("eventbridge_deleted");

    /// Replaces `from` in a fixture, failing loudly if it is absent so that a
    /// test can never pass on an unedited fixture.
    fn edit(fixture: &str, from: &str, to: &str) -> String {
        assert!(fixture.contains(from), "fixture lacks {from:?}");
        fixture.replace(from, to)
    }

    fn objects(body: &str) -> Vec<ObjectRef> {
        match parse(body) {
            Ok(Notification::Objects(objects)) => objects,
            other => panic!("expected objects, got {other:?}"),
        }
    }

    fn discard(body: &str) -> DiscardReason {
        match parse(body) {
            Ok(Notification::Discard(reason)) => reason,
            other => panic!("expected discard, got {other:?}"),
        }
    }

    fn error(body: &str) -> NotificationError {
        match parse(body) {
            Err(e) => e,
            Ok(n) => panic!("expected error, got {n:?}"),
        }
    }

    fn time(rfc3339: &str) -> Option<DateTime<Utc>> {
        Some(DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc())
    }

    /// Builds a one-record ObjectCreated:Put message whose key field is `raw_key` as sent.
    fn s3_put_with_key(raw_key: &str) -> String {
        edit(
            S3_PUT,
            r#""key":"HappyFace.jpg""#,
            &format!(r#""key":"{raw_key}""#),
        )
    }

    #[test]
    fn single_record() {
        assert_eq!(
            objects(S3_PUT),
            vec![ObjectRef {
                bucket: "amzn-s3-demo-bucket".into(),
                key: "HappyFace.jpg".into(),
                version_id: Some("096fKKXTRTtl3on89fVO.nfljtsv6qko".into()),
                etag: Some("d41d8cd98f00b204e9800998ecf8427e".into()),
                size: Some(1024),
                sequencer: Some("0055AED6DCD90281E5".into()),
                event_time: time("1970-01-01T00:00:00Z"),
                event_name: "ObjectCreated:Put".into(),
                origin: Origin::Notification,
            }]
        );
    }

    #[test]
    fn multiple_records_keep_message_order() {
        let objs = objects(S3_MULTI);
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].key, "events/2024/05/01/part-0001.parquet");
        assert_eq!(objs[0].event_name, "ObjectCreated:CompleteMultipartUpload");
        assert_eq!(objs[0].size, Some(73_400_320));
        assert_eq!(
            objs[0].etag.as_deref(),
            Some("5f363e0e58a95f06cbe9bbc662c5dfb6-14")
        );
        assert_eq!(objs[0].event_time, time("2024-05-01T12:00:00.123Z"));
        assert_eq!(objs[1].key, "events/2024/05/01/part-0002.parquet");
        assert_eq!(objs[1].event_name, "ObjectCreated:Copy");
        assert_eq!(objs[1].version_id, None, "absent versionId");
    }

    #[test]
    fn mixed_records_keep_only_created() {
        let objs = objects(S3_MIXED);
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0].s3_uri(), "s3://reports/daily/2024-06-10.csv");
        assert_eq!(objs[0].event_name, "ObjectCreated:Put");
    }

    #[test]
    fn version_id_null_is_none() {
        // S3_MIXED's Put record carries "versionId":"null".
        assert_eq!(objects(S3_MIXED)[0].version_id, None);
        assert_eq!(
            objects(&edit(S3_PUT, "096fKKXTRTtl3on89fVO.nfljtsv6qko", ""))[0].version_id,
            None
        );
    }

    #[test]
    fn only_non_created_records_are_discarded_with_their_names() {
        let reason = discard(S3_ONLY_NON_CREATED);
        assert_eq!(
            reason,
            DiscardReason::NotObjectCreated {
                event_names: vec![
                    "ObjectRemoved:Delete".into(),
                    "ObjectRemoved:DeleteMarkerCreated".into(),
                    "ObjectRestore:Completed".into(),
                ]
            }
        );
        assert_eq!(reason.label(), "not_object_created");
    }

    #[test]
    fn empty_records_are_discarded() {
        assert_eq!(
            discard(r#"{"Records":[]}"#),
            DiscardReason::NotObjectCreated {
                event_names: vec![]
            }
        );
    }

    #[test]
    fn test_event_is_discarded() {
        let reason = discard(S3_TEST_EVENT);
        assert_eq!(reason, DiscardReason::TestEvent);
        assert_eq!(reason.label(), "test_event");
    }

    #[test]
    fn sns_wrapping_s3_event_is_unwrapped_and_key_decoded() {
        let objs = objects(SNS_S3_EVENT);
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0].bucket, "raw-landing");
        assert_eq!(objs[0].key, "inbox/Q1 report (2024).csv");
        assert_eq!(objs[0].size, Some(512));
        assert_eq!(objs[0].event_time, time("2024-05-01T12:00:00.123Z"));
    }

    #[test]
    fn sns_wrapping_test_event_is_discarded() {
        assert_eq!(discard(SNS_TEST_EVENT), DiscardReason::TestEvent);
    }

    #[test]
    fn sns_raw_delivery_is_a_plain_s3_event() {
        // With raw message delivery SQS receives the S3 event itself, no envelope.
        assert_eq!(objects(S3_PUT)[0].key, "HappyFace.jpg");
    }

    #[test]
    fn sns_subscription_confirmation_is_discarded() {
        let reason = discard(SNS_SUBSCRIPTION_CONFIRMATION);
        assert_eq!(reason, DiscardReason::SnsSubscriptionConfirmation);
        assert_eq!(reason.label(), "sns_control");
        let unsubscribe = edit(
            SNS_SUBSCRIPTION_CONFIRMATION,
            "SubscriptionConfirmation",
            "UnsubscribeConfirmation",
        );
        assert_eq!(
            discard(&unsubscribe),
            DiscardReason::SnsSubscriptionConfirmation
        );
    }

    #[test]
    fn sns_wrapping_eventbridge_is_unwrapped() {
        // An EventBridge rule may target an SNS topic that feeds the queue.
        let body = serde_json::json!({
            "Type": "Notification",
            "MessageId": "4f1a2b3c-5d6e-5f70-8a9b-0c1d2e3f4a5b",
            "TopicArn": "arn:aws:sns:ca-central-1:111122223333:s3-ingest-events",
            "Message": EVENTBRIDGE_CREATED,
            "Timestamp": "2021-11-12T00:00:01.000Z",
        })
        .to_string();
        assert_eq!(objects(&body), objects(EVENTBRIDGE_CREATED));
    }

    #[test]
    fn sns_with_unknown_type_is_an_error() {
        let body = edit(
            SNS_SUBSCRIPTION_CONFIRMATION,
            "SubscriptionConfirmation",
            "Mystery",
        );
        assert_eq!(
            error(&body).to_string(),
            r#"sns envelope: malformed: unsupported Type "Mystery""#
        );
    }

    #[test]
    fn sns_with_non_json_message_is_an_error() {
        let body = edit(
            SNS_TEST_EVENT,
            r#""Message" : "{\"Service\":\"Amazon S3\","#,
            r#""Message" : "hello there {\"Service\":\"Amazon S3\","#,
        );
        let err = error(&body);
        assert!(
            matches!(&err, NotificationError::Sns(inner) if matches!(**inner, NotificationError::NotJson(_))),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("sns message: body is not json: "),
            "{err}"
        );
    }

    #[test]
    fn sns_inner_errors_say_they_come_from_the_message() {
        let body = edit(
            SNS_S3_EVENT,
            r#"\"key\":\"inbox/Q1+report+%282024%29.csv\","#,
            "",
        );
        assert_eq!(
            error(&body).to_string(),
            "sns message: record 1: missing s3.object.key"
        );
    }

    #[test]
    fn eventbridge_object_created() {
        assert_eq!(
            objects(EVENTBRIDGE_CREATED),
            vec![ObjectRef {
                bucket: "amzn-s3-demo-bucket1".into(),
                key: "example-key".into(),
                version_id: Some("IYV3p45BT0ac8hjHg1houSdS1a.Mro8e".into()),
                etag: Some("b1946ac92492d2347c6235b4d2611184".into()),
                size: Some(5),
                sequencer: Some("617f08299329d189".into()),
                event_time: time("2021-11-12T00:00:00Z"),
                event_name: "Object Created".into(),
                origin: Origin::Notification,
            }]
        );
    }

    #[test]
    fn eventbridge_object_created_without_version_keeps_key_verbatim() {
        let objs = objects(EVENTBRIDGE_CREATED_UNVERSIONED);
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0].version_id, None);
        assert_eq!(objs[0].bucket, "raw-landing");
        // '+' and '%' are literal here; form-decoding would name another object.
        assert_eq!(objs[0].key, "uploads/Q1 report+final%.csv");
        assert_eq!(objs[0].event_time, time("2022-02-19T01:36:58Z"));
    }

    #[test]
    fn eventbridge_object_deleted_is_discarded() {
        assert_eq!(
            discard(EVENTBRIDGE_DELETED),
            DiscardReason::NotObjectCreated {
                event_names: vec!["Object Deleted".into()]
            }
        );
    }

    #[test]
    fn eventbridge_from_another_source_is_unknown() {
        let body = edit(
            EVENTBRIDGE_CREATED,
            r#""source": "aws.s3""#,
            r#""source": "aws.ec2""#,
        );
        assert_eq!(
            error(&body).to_string(),
            r#"unrecognized message shape: eventbridge event from source "aws.ec2""#
        );
    }

    #[test]
    fn eventbridge_missing_key_is_an_error() {
        let body = edit(EVENTBRIDGE_CREATED, r#""key": "example-key","#, "");
        assert_eq!(
            error(&body).to_string(),
            "eventbridge event: missing detail.object.key"
        );
    }

    #[test]
    fn s3_keys_are_form_decoded() {
        let cases = [
            ("a+b", "a b"),
            ("a%2Bb", "a+b"),
            ("a%20b", "a b"),
            ("caf%C3%A9.csv", "café.csv"),
            ("dir%2Fx", "dir/x"),
            ("dir/x%3Dy/file+name%2B1.csv", "dir/x=y/file name+1.csv"),
        ];
        for (raw, want) in cases {
            assert_eq!(
                objects(&s3_put_with_key(raw))[0].key,
                want,
                "raw key {raw:?}"
            );
        }
    }

    #[test]
    fn s3_key_invalid_utf8_is_an_error() {
        assert_eq!(
            error(&s3_put_with_key("bad%C3%28.csv")).to_string(),
            "record 1: bad key encoding: not valid utf-8 after percent-decoding"
        );
    }

    #[test]
    fn s3_key_malformed_escape_is_an_error() {
        for raw in ["100%", "a%zzb", "a%2"] {
            let err = error(&s3_put_with_key(raw));
            assert!(
                matches!(err, NotificationError::BadKeyEncoding { .. }),
                "raw key {raw:?}: {err}"
            );
        }
        assert_eq!(
            error(&s3_put_with_key("a%zzb")).to_string(),
            "record 1: bad key encoding: invalid percent-escape at byte 1"
        );
    }

    #[test]
    fn etag_quotes_are_stripped() {
        let body = edit(
            S3_PUT,
            r#""eTag":"d41d8cd98f00b204e9800998ecf8427e""#,
            r#""eTag":"\"d41d8cd98f00b204e9800998ecf8427e\"""#,
        );
        assert_eq!(
            objects(&body)[0].etag.as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        let empty = edit(
            S3_PUT,
            r#""eTag":"d41d8cd98f00b204e9800998ecf8427e""#,
            r#""eTag":"""#,
        );
        assert_eq!(objects(&empty)[0].etag, None);
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let body = r#"{"Records":[{"eventName":"ObjectCreated:Post","s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}]}"#;
        assert_eq!(
            objects(body),
            vec![ObjectRef {
                bucket: "b".into(),
                key: "k".into(),
                version_id: None,
                etag: None,
                size: None,
                sequencer: None,
                event_time: None,
                event_name: "ObjectCreated:Post".into(),
                origin: Origin::Notification,
            }]
        );
    }

    #[test]
    fn record_missing_key_is_an_error() {
        // The second record of S3_MULTI loses its key.
        let body = edit(
            S3_MULTI,
            r#""key": "events/2024/05/01/part-0002.parquet","#,
            "",
        );
        let err = error(&body);
        assert_eq!(
            err,
            NotificationError::MissingField {
                at: "record 2".into(),
                field: "s3.object.key"
            }
        );
        assert_eq!(err.to_string(), "record 2: missing s3.object.key");
    }

    #[test]
    fn record_missing_bucket_name_is_an_error() {
        let body = edit(S3_PUT, r#""name":"amzn-s3-demo-bucket","#, "");
        assert_eq!(error(&body).to_string(), "record 1: missing s3.bucket.name");
    }

    #[test]
    fn dropped_records_are_not_validated() {
        // Records we drop cannot poison the message, whatever else they hold.
        let no_key = edit(S3_MIXED, r#""key": "daily/2024-06-09.csv","#, "");
        assert_eq!(objects(&no_key).len(), 1);
        let bad_time = edit(
            S3_MIXED,
            r#""eventTime": "2024-06-10T08:15:31.000Z""#,
            r#""eventTime": "yesterday""#,
        );
        assert_eq!(objects(&bad_time).len(), 1);
    }

    #[test]
    fn record_missing_event_name_is_an_error() {
        let body = edit(S3_PUT, r#""eventName":"ObjectCreated:Put","#, "");
        assert_eq!(error(&body).to_string(), "record 1: missing eventName");
    }

    #[test]
    fn wrongly_typed_field_is_an_error() {
        let body = edit(S3_PUT, r#""size":1024"#, r#""size":"big""#);
        let err = error(&body);
        assert!(
            matches!(&err, NotificationError::Malformed { at, .. } if at == "record 1"),
            "{err}"
        );
    }

    #[test]
    fn not_json_is_an_error() {
        let err = error("this is not json");
        assert!(matches!(err, NotificationError::NotJson(_)));
        assert!(err.to_string().starts_with("body is not json: "), "{err}");
    }

    #[test]
    fn unknown_json_shape_is_an_error() {
        assert_eq!(
            error(r#"{"hello":1}"#).to_string(),
            "unrecognized message shape: top-level fields: hello"
        );
        assert_eq!(
            error("[1,2]").to_string(),
            "unrecognized message shape: expected a json object, got an array"
        );
        assert!(matches!(
            error(r#"{"Service":"Amazon S3","Event":"s3:Mystery"}"#),
            NotificationError::UnknownShape(_)
        ));
    }

    #[test]
    fn s3_uri_uses_the_decoded_key() {
        assert_eq!(
            objects(&s3_put_with_key("my+dir/caf%C3%A9.csv"))[0].s3_uri(),
            "s3://amzn-s3-demo-bucket/my dir/café.csv"
        );
    }

    #[test]
    fn a_plain_s3_uri_requests_the_current_version() {
        let objects = objects("s3://vendor/in/2026/a b+c.csv\n");
        assert_eq!(objects.len(), 1);
        let object = &objects[0];
        assert_eq!(object.bucket, "vendor");
        // Taken verbatim: a person typed it, nothing encoded it.
        assert_eq!(object.key, "in/2026/a b+c.csv");
        assert_eq!(object.version_id, None);
        assert_eq!(object.etag, None);
        assert_eq!(object.origin, Origin::Request);
        assert!(matches!(
            error("s3://vendor"),
            NotificationError::MissingField { field: "key", .. }
        ));
        assert!(matches!(
            error("s3:///k"),
            NotificationError::MissingField {
                field: "bucket",
                ..
            }
        ));
    }

    #[test]
    fn a_json_request_names_bucket_key_and_optional_version() {
        let objects = objects(r#"{"bucket":"vendor","key":"in/a%20b.csv","version_id":"v2"}"#);
        assert_eq!(objects[0].key, "in/a%20b.csv");
        assert_eq!(objects[0].version_id.as_deref(), Some("v2"));
        assert_eq!(objects[0].origin, Origin::Request);
        let unversioned = objects_of(r#"{"bucket":"vendor","key":"k","version_id":"null"}"#);
        assert_eq!(unversioned[0].version_id, None);
        // A typo is an error, not a silently ignored field.
        assert!(matches!(
            error(r#"{"bucket":"vendor","key":"k","versionid":"v2"}"#),
            NotificationError::Malformed { .. }
        ));
    }

    fn objects_of(body: &str) -> Vec<ObjectRef> {
        objects(body)
    }

    #[test]
    fn synthetic_events_round_trip_through_the_parser() {
        let object = ObjectRef {
            bucket: "vendor".into(),
            key: "in/2026 11/ä+%&?.csv".into(),
            version_id: Some("v1".into()),
            etag: Some("e1".into()),
            size: Some(42),
            sequencer: None,
            event_time: time("2026-11-30T10:00:00Z"),
            event_name: String::new(),
            origin: Origin::Notification,
        };
        for (name, origin) in [
            (REPLAY_EVENT_NAME, Origin::Replay),
            (BACKFILL_EVENT_NAME, Origin::Backfill),
            (RECONCILE_EVENT_NAME, Origin::Reconcile),
        ] {
            let parsed = objects(&synthetic_event(&object, name));
            assert_eq!(
                parsed,
                vec![ObjectRef {
                    event_name: name.into(),
                    origin,
                    ..object.clone()
                }]
            );
        }
    }
}
