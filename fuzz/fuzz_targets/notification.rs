//! Fuzzes the SQS body parser: whatever arrives on the queue, `parse` must
//! return (never panic, never hang) and what it returns must keep the
//! promises `ObjectRef` documents.

#![no_main]

// The parser's own source file, compiled here alone: it depends on nothing
// else in the crate, and building the whole worker with sanitizers is slow.
#[path = "../../src/notification.rs"]
#[allow(dead_code)]
mod notification;

use libfuzzer_sys::fuzz_target;
use notification::{Notification, parse};

fuzz_target!(|body: &str| {
    let parsed = parse(body);
    // Deterministic: a redelivered message must be judged the same way.
    assert_eq!(parsed, parse(body));
    match &parsed {
        Ok(Notification::Objects(objects)) => {
            assert!(!objects.is_empty(), "Objects is never empty");
            for object in objects {
                assert!(!object.bucket.is_empty());
                assert!(!object.key.is_empty());
                assert!(
                    object.event_name.starts_with("ObjectCreated:")
                        || object.event_name == "Object Created"
                );
                if let Some(version) = &object.version_id {
                    assert!(!version.is_empty() && version != "null");
                }
                if let Some(etag) = &object.etag {
                    assert!(!etag.is_empty());
                    assert!(!etag.starts_with('"') && !etag.ends_with('"'));
                }
                if let Some(sequencer) = &object.sequencer {
                    assert!(!sequencer.is_empty());
                }
                let _ = object.s3_uri();
            }
        }
        Ok(Notification::Discard(reason)) => {
            let _ = reason.label();
        }
        // The error goes into logs and dead letters: rendering it must work.
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
