//! Sending one part: its idempotency token, the POST with retries and
//! backoff (honouring `Retry-After`), and what each response means:
//! accepted, worth another try, refused credentials, or rejected.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use bytes::Bytes;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::encode::gzip;
use super::{HttpCompression, HttpSinkConfig};
use crate::sink::{Lineage, SinkError};
use crate::{redact, text};

/// How much of an error response ends up in the dead-letter reason.
const RESPONSE_BODY_EXCERPT_BYTES: usize = 1024;
/// Bodies up to this size are hashed on the async runtime (tens of
/// microseconds); larger ones on a blocking thread.
const INLINE_HASH_BYTES: usize = 64 * 1024;
/// A `Retry-After` longer than this is capped: the lease keeps the message,
/// but a worker should not sit on one object for minutes.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The token of one part: a hash of the part's lineage (sink, bucket, key,
/// version id or ETag), its number, and a hash of its exact content (the
/// request body before compression). A redelivery that cuts the same parts
/// sends the same tokens; a part whose rows differ in any way (another
/// route config, another encoding) gets another token, so one token never
/// names two contents and the receiver never drops rows it has not seen.
/// The lineage keeps two objects (or two parts of one object) with equal
/// content apart.
pub fn idempotency_token(sink_name: &str, lineage: &Lineage, part: u64, content: &[u8]) -> String {
    let content_hash = Sha256::digest(content);
    let mut hasher = Sha256::new();
    for field in [
        sink_name.as_bytes(),
        lineage.bucket.as_bytes(),
        lineage.key.as_bytes(),
        lineage.version_identity().as_bytes(),
        &part.to_be_bytes(),
        &content_hash[..],
    ] {
        // Length-prefixed, so ("a", "bc") and ("ab", "c") differ.
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field);
    }
    hex::encode(&hasher.finalize()[..16])
}

/// Everything needed to POST one part, with retries.
pub(super) struct PartSender {
    pub(super) sink_name: String,
    pub(super) client: reqwest::Client,
    pub(super) url: reqwest::Url,
    pub(super) headers: HeaderMap,
    pub(super) config: Arc<HttpSinkConfig>,
    pub(super) lineage: Lineage,
}

/// What one attempt came to.
enum Attempt {
    Accepted,
    /// Worth another try; `retry_after` is the server's own hint.
    /// `unavailable` names how the endpoint is out (`connect`, `timeout`,
    /// `502`, `503`, `504`, `429`) when it says nothing about this part.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
        unavailable: Option<String>,
    },
    Rejected(String),
    /// The endpoint refuses our identity (401, 403, 407): the deployment's
    /// problem, not the file's; see `error::is_deployment_http_status`.
    Refused {
        status: u16,
        reason: String,
    },
}

impl PartSender {
    /// The URL as logs, errors and receipts show it: user info and query
    /// values redacted (the query may hold credentials).
    pub(super) fn display_url(&self) -> String {
        redact::url(self.url.as_str())
    }

    /// The part's token (from its content) and the body to send (gzipped
    /// if configured); hashing and gzip run off the async runtime unless
    /// the body is small.
    async fn prepare(&self, part_number: u64, body: Vec<u8>) -> Result<(String, Bytes), SinkError> {
        let sink_name = self.sink_name.clone();
        let lineage = self.lineage.clone();
        let compression = self.config.compression;
        let inline = compression == HttpCompression::None && body.len() <= INLINE_HASH_BYTES;
        let work = move || -> Result<(String, Bytes), SinkError> {
            let token = idempotency_token(&sink_name, &lineage, part_number, &body);
            let body = match compression {
                HttpCompression::None => body.into(),
                HttpCompression::Gzip => gzip(&body)?.into(),
            };
            Ok((token, body))
        };
        if inline {
            return work();
        }
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|err| SinkError::transient(format!("encoder task failed: {err}")))?
    }

    pub(super) async fn send(
        &self,
        part_number: u64,
        body: Vec<u8>,
        rows: usize,
    ) -> Result<(), SinkError> {
        let uncompressed = body.len();
        let (token, body) = self.prepare(part_number, body).await?;
        let mut url = self.url.clone();
        if let Some(param) = &self.config.idempotency_query_param {
            url.query_pairs_mut().append_pair(param, &token);
        }
        // The worker prefixes errors with the object's s3:// URI already.
        let request_label = format!("POST {} (part {part_number})", self.display_url());
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.config.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(self.config.max_backoff_ms))
            .with_max_times(self.config.max_retries)
            .with_jitter();
        // Counted for the messages; the closures share it, and the future must be Send.
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let sent = (|| async {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match self.attempt(url.clone(), &token, body.clone()).await {
                Attempt::Accepted => Ok(()),
                failed => Err(failed),
            }
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|failed| matches!(failed, Attempt::Retry { .. }))
        // The server's Retry-After (bounded) replaces our own delay, but
        // never revives a back-off whose tries are used up (`None`).
        .adjust(|failed, delay| match (failed, delay) {
            (
                Attempt::Retry {
                    retry_after: Some(hint),
                    ..
                },
                Some(_),
            ) => Some((*hint).min(MAX_RETRY_AFTER)),
            (_, delay) => delay,
        })
        .notify(|failed, delay| {
            if let Attempt::Retry { reason, .. } = failed {
                warn!(
                    attempt = attempts.load(std::sync::atomic::Ordering::Relaxed),
                    ?delay,
                    "{request_label} {reason}; retrying"
                );
            }
        })
        .await;
        match sent {
            Ok(()) => {
                debug!(%token, rows, uncompressed, sent = body.len(), "{request_label} accepted");
                Ok(())
            }
            Err(Attempt::Accepted) => unreachable!("an accepted attempt is Ok"),
            Err(Attempt::Rejected(reason)) => {
                Err(SinkError::permanent(format!("{request_label} {reason}")))
            }
            Err(Attempt::Refused { status, reason }) => Err(SinkError::deployment(
                status.to_string(),
                format!(
                    "{request_label} {reason}; {}",
                    refusal_hint(&self.sink_name, status, &self.config)
                ),
            )),
            Err(Attempt::Retry {
                reason,
                unavailable,
                ..
            }) => {
                let detail = format!(
                    "{request_label} failed after {} attempt(s); last: {reason}",
                    attempts.load(std::sync::atomic::Ordering::Relaxed)
                );
                Err(match unavailable {
                    Some(code) => SinkError::unavailable(code, detail),
                    None => SinkError::transient(detail),
                })
            }
        }
    }

    async fn attempt(&self, url: reqwest::Url, token: &str, body: Bytes) -> Attempt {
        let mut request = self
            .client
            .post(url)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, self.config.format.content_type())
            .header(self.config.idempotency_header.as_str(), token)
            .body(body);
        if self.config.compression == HttpCompression::Gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        let response = match request.send().await {
            Ok(response) => response,
            // reqwest's message would print the whole URL, query values
            // (credentials, the token) included: the label shows it redacted.
            Err(err) if err.is_builder() => {
                let err = err.without_url();
                return Attempt::Rejected(format!(
                    "could not be built: {}",
                    crate::error::with_causes(&err)
                ));
            }
            // Timeouts, refused or reset connections, TLS hiccups: all may
            // clear. A bad certificate also lands here and is retried until
            // the message goes back; it shows in the logs every time.
            Err(err) => {
                // A connection that never opens or an answer that never
                // comes says the endpoint is out; a reset mid-body may be
                // about this part, and counts against it.
                let unavailable = if err.is_connect() {
                    Some("connect".to_owned())
                } else if err.is_timeout() {
                    Some("timeout".to_owned())
                } else {
                    None
                };
                return Attempt::Retry {
                    reason: format!("failed: {}", crate::error::with_causes(&err.without_url())),
                    retry_after: None,
                    unavailable,
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Accepted;
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        let total = response.content_length();
        let body = body_start(response).await;
        let reason = format!("returned {status}: {}", excerpt(&body, total));
        if crate::error::is_deployment_http_status(status.as_u16()) {
            Attempt::Refused {
                status: status.as_u16(),
                reason,
            }
        } else if is_retryable_status(status.as_u16()) {
            Attempt::Retry {
                reason,
                retry_after,
                unavailable: is_unavailable_status(status.as_u16())
                    .then(|| status.as_u16().to_string()),
            }
        } else {
            Attempt::Rejected(reason)
        }
    }
}

/// What to fix when the endpoint refuses the sink's identity, naming the
/// variables the credentials come from (never their values).
fn refusal_hint(sink: &str, status: u16, config: &HttpSinkConfig) -> String {
    let sources: Vec<String> = config
        .headers_from_env
        .iter()
        .map(|(header, source)| format!("{header} from ${}", source.env))
        .collect();
    let credentials = if sources.is_empty() {
        "no credential headers are configured (headers_from_env)".to_owned()
    } else {
        format!("credentials sent: {}", sources.join(", "))
    };
    let what = match status {
        401 => "check its Authorization header / secret",
        403 => "check what its credentials may do (grants, token scope)",
        _ => "check the proxy's credentials",
    };
    format!("the http sink `{sink}` answers {status}: {what}; {credentials}")
}

/// Throttling, request timeout and server errors may clear on their own.
fn is_retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

/// Statuses that say the endpoint (or the proxy before it) is out or
/// overloaded, whatever was sent: a sink outage, not the file's failure.
/// A plain 500 may be this payload's doing, and counts against it.
fn is_unavailable_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// `Retry-After` in seconds; the HTTP-date form is rare in APIs and falls
/// back to our own backoff.
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Reads a little more than the excerpt needs and no more: an error page
/// can be large.
async fn body_start(mut response: reqwest::Response) -> Vec<u8> {
    let mut start = Vec::new();
    while start.len() <= RESPONSE_BODY_EXCERPT_BYTES + 4 {
        match response.chunk().await {
            Ok(Some(chunk)) => start.extend_from_slice(&chunk),
            // The status already says what matters; a body cut short by a
            // network error is still worth showing.
            Ok(None) | Err(_) => break,
        }
    }
    start
}

/// The start of a response body (`total` bytes long when the response
/// said so) on one line, bounded, for a dead-letter reason.
fn excerpt(start: &[u8], total: Option<u64>) -> String {
    // Lossy decoding may turn the last, cut character into U+FFFD; the
    // marker says how much is missing either way.
    let text: String = String::from_utf8_lossy(start)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let body_bytes = total.map_or(start.len(), |total| total as usize);
    let text = text::excerpt_of(text.trim(), body_bytes, RESPONSE_BODY_EXCERPT_BYTES);
    if text.trim().is_empty() {
        return "(empty body)".into();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::http::tests::lineage;

    #[test]
    fn tokens_follow_lineage_part_number_and_content() {
        let rows_a = b"{\"id\":1}\n{\"id\":2}\n";
        let rows_b = b"{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n";
        let token = |lineage: &Lineage, part, content: &[u8]| {
            idempotency_token("tb", lineage, part, content)
        };
        let v1 = lineage(Some("v1"));
        // The same part of the same version with the same rows: a replay.
        assert_eq!(token(&v1, 0, rows_a), token(&v1.clone(), 0, rows_a));
        // Same part number, other rows (a route change moved the cut):
        // another token, so the receiver does not drop them.
        assert_ne!(token(&v1, 0, rows_a), token(&v1, 0, rows_b));
        // Same rows elsewhere: another part, version, object or sink.
        assert_ne!(token(&v1, 0, rows_a), token(&v1, 1, rows_a));
        assert_ne!(
            token(&v1, 0, rows_a),
            token(&lineage(Some("v2")), 0, rows_a)
        );
        assert_ne!(token(&v1, 0, rows_a), token(&lineage(None), 0, rows_a));
        let mut other_key = v1.clone();
        other_key.key = "in/b.csv".into();
        assert_ne!(token(&v1, 0, rows_a), token(&other_key, 0, rows_a));
        assert_ne!(
            token(&v1, 0, rows_a),
            idempotency_token("other", &v1, 0, rows_a)
        );
        // Fields cannot bleed into each other.
        let mut shifted = v1.clone();
        shifted.bucket = "vendori".into();
        shifted.key = "n/a.csv".into();
        assert_ne!(token(&v1, 0, rows_a), token(&shifted, 0, rows_a));
        assert_eq!(token(&v1, 0, rows_a).len(), 32);
    }

    #[test]
    fn statuses_retry_after_and_excerpts() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(status), "{status}");
        }
        // A redirect is not followed (a 302 would turn the POST into a GET).
        for status in [302, 307, 400, 401, 403, 404, 413, 422] {
            assert!(!is_retryable_status(status), "{status}");
        }
        // Out or overloaded whatever was sent; a 500 or 408 may be the
        // payload's doing.
        for status in [429, 502, 503, 504] {
            assert!(is_unavailable_status(status), "{status}");
        }
        for status in [408, 500, 501] {
            assert!(!is_unavailable_status(status), "{status}");
        }
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(excerpt(b"bad\nrow\r\n", None), "bad row");
        assert_eq!(excerpt(b"", Some(0)), "(empty body)");
        let long = excerpt(&vec![b'x'; 5000], None);
        assert!(long.ends_with("…[3976 more bytes]"), "{long}");
        assert!(long.len() < 1100);
        // Read in part: the marker counts what was never read.
        let long = excerpt(&vec![b'x'; 2000], Some(1_000_000));
        assert!(long.ends_with("…[998976 more bytes]"), "{long}");
    }
}
