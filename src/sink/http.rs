//! `http`: batches POSTed to an HTTP endpoint as an Arrow IPC stream
//! (ClickHouse `INSERT INTO t FORMAT ArrowStream`) or as NDJSON (Tinybird
//! Events API, ClickHouse `FORMAT JSONEachRow`).
//!
//! # Parts
//!
//! An object's rows are cut into *parts*, each sent as one POST whose body
//! (before gzip) is at most `max_request_bytes`. Batches are encoded one by
//! one; a batch that alone exceeds the bound is halved by rows
//! (`RecordBatch::slice`) until each piece fits. Pieces fill a part in order,
//! and a part is sent as soon as the next piece would overflow it; the last
//! part is sent at `commit`. Memory stays bounded by one part plus one batch.
//! The cut points depend only on the batches and the config, and the
//! decoders cut an object into the same batches every time, so a replay of
//! the same object version produces the same parts.
//!
//! # Delivery guarantee: at-least-once with idempotency tokens
//!
//! Every part carries a token derived from (sink name, bucket, key, version
//! id or ETag, format, `max_request_bytes`, part number): the same on every
//! redelivery. It is sent in a header (`idempotency_header`) and, when
//! configured, in a query parameter (`idempotency_query_param`, e.g.
//! ClickHouse's `insert_deduplication_token`).
//!
//! An object that fits in one part is sent only at `commit`: all or nothing.
//! A larger object sends its parts while it is still being read, so if it
//! is abandoned half-way (a crash, a later decode error, shutdown) its first
//! parts have been delivered; the message comes back and the replay sends
//! those parts again with the same tokens. The receiver must deduplicate on
//! the token; the sink cannot take a part back. Likewise an object
//! dead-lettered part-way (a 400 on its third part, a bad row further down
//! the file) leaves its earlier parts at the receiver.
//!
//! Changing `format` or `max_request_bytes` moves the cut points and so
//! changes the tokens: a replay after such a change may duplicate rows, but
//! one token never names two different contents (which would lose rows).
//!
//! # Errors
//!
//! 429, 408, 5xx, timeouts and connection errors are retried with
//! exponential backoff (honouring a `Retry-After` in seconds), at most
//! `max_retries` times; then the object goes back to the queue (transient).
//! 401, 403 and 407 refuse the sink's credentials: a deployment problem,
//! so the object stays queued uncounted and the worker backs off. Any
//! other status is permanent: the object is dead-lettered with the status
//! and the first KiB of the response body.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::{
    DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions, write_message,
};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use backon::BackoffBuilder;
use bytes::Bytes;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::{CommitReceipt, Lineage, Sink, SinkContext, SinkError, SinkWriter};

/// Bodies are cut below this by default: under the usual 10 MiB limits of
/// event APIs, large enough for few requests per object.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Smaller bounds would mostly measure IPC framing.
const MIN_MAX_REQUEST_BYTES: usize = 1024;
/// How much of an error response ends up in the dead-letter reason.
const RESPONSE_BODY_EXCERPT_BYTES: usize = 1024;
/// A `Retry-After` longer than this is capped: the lease keeps the message,
/// but a worker should not sit on one object for minutes.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The end-of-stream marker of the Arrow IPC stream format: a continuation
/// marker followed by a zero message length.
const ARROW_STREAM_END: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpFormat {
    /// Arrow IPC stream (`application/vnd.apache.arrow.stream`).
    ArrowStream,
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
}

impl HttpFormat {
    fn name(self) -> &'static str {
        match self {
            HttpFormat::ArrowStream => "arrow_stream",
            HttpFormat::Ndjson => "ndjson",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            HttpFormat::ArrowStream => "application/vnd.apache.arrow.stream",
            HttpFormat::Ndjson => "application/x-ndjson",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpCompression {
    #[default]
    None,
    /// The body is gzipped and sent with `Content-Encoding: gzip`.
    Gzip,
}

/// A header whose value is read from an environment variable at start-up,
/// so secrets stay out of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvHeader {
    /// The variable holding the value (or the part after `prefix`).
    pub env: String,
    /// Put before the variable's value, e.g. `"Bearer "`.
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Where parts are POSTed; its query string is kept (ClickHouse puts
    /// the INSERT statement there).
    pub url: String,
    pub format: HttpFormat,
    /// Static headers. Credentials belong in `headers_from_env`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Header name → environment variable (and optional prefix).
    #[serde(default)]
    pub headers_from_env: BTreeMap<String, EnvHeader>,
    /// Upper bound of one request body before compression.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    #[serde(default)]
    pub compression: HttpCompression,
    /// Retries of one part after its first attempt.
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
    /// First backoff delay; it doubles up to `max_backoff_ms`.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Whole-request timeout (connect, send, response).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Header carrying the part's idempotency token.
    #[serde(default = "default_idempotency_header")]
    pub idempotency_header: String,
    /// Query parameter carrying the token too, e.g.
    /// `insert_deduplication_token` for ClickHouse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_query_param: Option<String>,
}

fn default_max_request_bytes() -> usize {
    DEFAULT_MAX_REQUEST_BYTES
}
fn default_max_retries() -> usize {
    5
}
fn default_initial_backoff_ms() -> u64 {
    500
}
fn default_max_backoff_ms() -> u64 {
    30_000
}
fn default_timeout_secs() -> u64 {
    30
}
fn default_idempotency_header() -> String {
    "Idempotency-Key".into()
}

/// Headers that carry credentials: never accepted in plain text.
const CREDENTIAL_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "x-clickhouse-key",
];

impl HttpSinkConfig {
    /// Errors are (field relative to `sinks.NAME.`, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |field: &str, message: String| Err((field.to_owned(), message));
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(url) => {
                return err(
                    "url",
                    format!("scheme `{}` is not http or https", url.scheme()),
                );
            }
            Err(parse) => return err("url", format!("not a URL: {parse}")),
        }
        for (name, value) in &self.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return err("headers", format!("`{name}` is not a valid header name"));
            }
            if CREDENTIAL_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return err(
                    "headers",
                    format!("`{name}` holds a credential: set it with headers_from_env"),
                );
            }
            if HeaderValue::from_str(value).is_err() {
                return err(
                    "headers",
                    format!("the value of `{name}` is not a valid header value"),
                );
            }
        }
        for (name, source) in &self.headers_from_env {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return err(
                    "headers_from_env",
                    format!("`{name}` is not a valid header name"),
                );
            }
            if source.env.is_empty() {
                return err(
                    "headers_from_env",
                    format!("`{name}` names no environment variable"),
                );
            }
        }
        if self.max_request_bytes < MIN_MAX_REQUEST_BYTES {
            return err(
                "max_request_bytes",
                format!(
                    "must be at least {MIN_MAX_REQUEST_BYTES}, got {}",
                    self.max_request_bytes
                ),
            );
        }
        if self.timeout_secs == 0 {
            return err("timeout_secs", "must be at least 1".into());
        }
        if self.initial_backoff_ms == 0 || self.max_backoff_ms < self.initial_backoff_ms {
            return err(
                "max_backoff_ms",
                "backoff delays must satisfy 0 < initial_backoff_ms <= max_backoff_ms".into(),
            );
        }
        if HeaderName::from_bytes(self.idempotency_header.as_bytes()).is_err() {
            return err(
                "idempotency_header",
                format!("`{}` is not a valid header name", self.idempotency_header),
            );
        }
        if self.idempotency_query_param.as_deref() == Some("") {
            return err("idempotency_query_param", "must not be empty".into());
        }
        Ok(())
    }
}

pub struct HttpSink {
    name: String,
    config: Arc<HttpSinkConfig>,
    url: reqwest::Url,
    /// Static and environment headers, resolved once.
    headers: HeaderMap,
    client: reqwest::Client,
}

impl HttpSink {
    pub fn new(
        name: &str,
        config: &HttpSinkConfig,
        _context: &SinkContext,
    ) -> Result<HttpSink, SinkError> {
        // The caller names the sink: "cannot set up sink `NAME`: ...".
        let startup = SinkError::permanent;
        config
            .validate()
            .map_err(|(field, message)| startup(format!("{field}: {message}")))?;
        let url = reqwest::Url::parse(&config.url).map_err(|err| startup(err.to_string()))?;
        let headers = resolve_headers(config, |var| std::env::var(var).ok()).map_err(startup)?;
        let timeout = Duration::from_secs(config.timeout_secs);
        // reqwest with rustls verifies certificates; nothing here turns that off.
        let client = reqwest::Client::builder()
            .user_agent(concat!("s3-ingest/", env!("CARGO_PKG_VERSION")))
            // A 301/302 would turn the POST into a GET whose 200 looks like
            // success with nothing inserted: a redirect is an error instead.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|err| startup(format!("cannot build the HTTP client: {err}")))?;
        Ok(HttpSink {
            name: name.to_owned(),
            config: Arc::new(config.clone()),
            url,
            headers,
            client,
        })
    }
}

/// Static headers plus those read from the environment (`lookup`), whose
/// values are marked sensitive so they never show in debug output.
fn resolve_headers(
    config: &HttpSinkConfig,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in &config.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|err| err.to_string())?;
        let value = HeaderValue::from_str(value).map_err(|err| err.to_string())?;
        headers.insert(name, value);
    }
    for (name, source) in &config.headers_from_env {
        let value = lookup(&source.env).ok_or_else(|| {
            format!(
                "environment variable {} (for header {name}) is not set",
                source.env
            )
        })?;
        // The error names the variable, never its content.
        let mut value =
            HeaderValue::from_str(&format!("{}{value}", source.prefix)).map_err(|_| {
                format!(
                    "environment variable {} (for header {name}) is not a valid header value",
                    source.env
                )
            })?;
        value.set_sensitive(true);
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|err| err.to_string())?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// The token of one part: stable across redeliveries of the same object
/// version with the same config, different for every other part.
pub fn idempotency_token(
    sink_name: &str,
    lineage: &Lineage,
    format: HttpFormat,
    max_request_bytes: usize,
    part: u64,
) -> String {
    let mut hasher = Sha256::new();
    for field in [
        sink_name,
        lineage.bucket.as_str(),
        lineage.key.as_str(),
        lineage.version_identity(),
        format.name(),
        &max_request_bytes.to_string(),
        &part.to_string(),
    ] {
        hasher.update(field.as_bytes());
        // A separator no field contains keeps ("a","bc") apart from ("ab","c").
        hasher.update([0u8]);
    }
    hex::encode(&hasher.finalize()[..16])
}

#[async_trait]
impl Sink for HttpSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn open(
        &self,
        lineage: &Lineage,
        schema: SchemaRef,
    ) -> Result<Box<dyn SinkWriter>, SinkError> {
        let encoder = Arc::new(PartEncoder::new(self.config.format, schema)?);
        let budget = self.config.max_request_bytes;
        Ok(Box::new(HttpWriter {
            sender: PartSender {
                sink_name: self.name.clone(),
                client: self.client.clone(),
                url: self.url.clone(),
                headers: self.headers.clone(),
                config: self.config.clone(),
                lineage: lineage.clone(),
            },
            encoder,
            part: Vec::with_capacity(budget.min(1024 * 1024)),
            part_rows: 0,
            parts_sent: 0,
            rows_sent: 0,
        }))
    }
}

/// Encodes batches into self-contained pieces that concatenate into a
/// valid body: `header + piece + piece + ... + footer`.
struct PartEncoder {
    format: HttpFormat,
    schema: SchemaRef,
    /// Arrow: the schema message. NDJSON: empty.
    header: Vec<u8>,
    /// Arrow: the end-of-stream marker. NDJSON: empty.
    footer: &'static [u8],
}

/// One encoded slice of a batch.
struct Piece {
    bytes: Vec<u8>,
    rows: usize,
}

impl PartEncoder {
    fn new(format: HttpFormat, schema: SchemaRef) -> Result<PartEncoder, SinkError> {
        let (header, footer): (Vec<u8>, &'static [u8]) = match format {
            HttpFormat::Ndjson => (Vec::new(), &[]),
            HttpFormat::ArrowStream => {
                let options = IpcWriteOptions::default();
                let message = IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
                    &schema,
                    &mut DictionaryTracker::new(false),
                    &options,
                );
                let mut header = Vec::new();
                write_message(&mut header, message, &options).map_err(|err| {
                    SinkError::permanent(format!("cannot encode the schema as Arrow IPC: {err}"))
                })?;
                (header, &ARROW_STREAM_END)
            }
        };
        Ok(PartEncoder {
            format,
            schema,
            header,
            footer,
        })
    }

    /// Bytes a part may spend on pieces.
    fn piece_budget(&self, max_request_bytes: usize) -> usize {
        max_request_bytes.saturating_sub(self.header.len() + self.footer.len())
    }

    /// Encodes `batch` into pieces of at most `budget` bytes each, halving
    /// it by rows as often as needed. Deterministic: the same batch gives
    /// the same pieces.
    fn pieces(&self, batch: &RecordBatch, budget: usize) -> Result<Vec<Piece>, SinkError> {
        let mut pieces = Vec::new();
        // Depth-first over halves, so pieces come out in row order.
        let mut pending = vec![batch.clone()];
        while let Some(slice) = pending.pop() {
            let bytes = self.encode(&slice)?;
            if bytes.len() <= budget {
                if slice.num_rows() > 0 {
                    pieces.push(Piece {
                        bytes,
                        rows: slice.num_rows(),
                    });
                }
                continue;
            }
            if slice.num_rows() <= 1 {
                return Err(SinkError::permanent(format!(
                    "one row encodes to {} bytes as {}, more than max_request_bytes allows ({budget} bytes after framing)",
                    bytes.len(),
                    self.format.name()
                )));
            }
            let half = slice.num_rows() / 2;
            pending.push(slice.slice(half, slice.num_rows() - half));
            pending.push(slice.slice(0, half));
        }
        Ok(pieces)
    }

    fn encode(&self, batch: &RecordBatch) -> Result<Vec<u8>, SinkError> {
        let encode_error = |err: arrow::error::ArrowError| {
            SinkError::permanent(format!(
                "cannot encode a batch as {}: {err}",
                self.format.name()
            ))
        };
        let mut bytes = Vec::new();
        match self.format {
            HttpFormat::Ndjson => {
                let mut writer = arrow::json::LineDelimitedWriter::new(&mut bytes);
                writer.write(batch).map_err(encode_error)?;
                writer.finish().map_err(encode_error)?;
            }
            HttpFormat::ArrowStream => {
                // A fresh dictionary tracker per piece: each piece carries
                // its own dictionaries, so pieces stay independent of the
                // part they land in (a later one replaces the earlier one, as
                // the stream format allows).
                let generator = IpcDataGenerator::default();
                let options = IpcWriteOptions::default();
                let mut tracker = DictionaryTracker::new(false);
                generator.schema_to_bytes_with_dictionary_tracker(
                    &self.schema,
                    &mut tracker,
                    &options,
                );
                let (dictionaries, message) = generator
                    .encode(
                        batch,
                        &mut tracker,
                        &options,
                        &mut IpcWriteContext::default(),
                    )
                    .map_err(encode_error)?;
                for encoded in dictionaries.into_iter().chain([message]) {
                    write_message(&mut bytes, encoded, &options).map_err(encode_error)?;
                }
            }
        }
        Ok(bytes)
    }
}

/// Everything needed to POST one part, with retries.
struct PartSender {
    sink_name: String,
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    config: Arc<HttpSinkConfig>,
    lineage: Lineage,
}

/// What one attempt came to.
enum Attempt {
    Accepted,
    /// Worth another try; `retry_after` is the server's own hint.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
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
    /// The URL without its query string: the query may hold settings or
    /// credentials and is no use in an error message.
    fn display_url(&self) -> String {
        let mut url = self.url.clone();
        url.set_query(None);
        url.to_string()
    }

    async fn send(&self, part_number: u64, body: Vec<u8>, rows: usize) -> Result<(), SinkError> {
        let token = idempotency_token(
            &self.sink_name,
            &self.lineage,
            self.config.format,
            self.config.max_request_bytes,
            part_number,
        );
        let uncompressed = body.len();
        let body: Bytes = match self.config.compression {
            HttpCompression::None => body.into(),
            HttpCompression::Gzip => tokio::task::spawn_blocking(move || gzip(&body))
                .await
                .map_err(|err| SinkError::transient(format!("gzip task failed: {err}")))??
                .into(),
        };
        let mut url = self.url.clone();
        if let Some(param) = &self.config.idempotency_query_param {
            url.query_pairs_mut().append_pair(param, &token);
        }
        // The worker prefixes errors with the object's s3:// URI already.
        let request_label = format!("POST {} (part {part_number})", self.display_url());
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.config.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(self.config.max_backoff_ms))
            .with_max_times(self.config.max_retries)
            .with_jitter()
            .build();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let attempt = self.attempt(url.clone(), &token, body.clone()).await;
            let (reason, retry_after) = match attempt {
                Attempt::Accepted => {
                    debug!(%token, rows, uncompressed, sent = body.len(), "{request_label} accepted");
                    return Ok(());
                }
                Attempt::Rejected(reason) => {
                    return Err(SinkError::permanent(format!("{request_label} {reason}")));
                }
                Attempt::Refused { status, reason } => {
                    return Err(SinkError::deployment(
                        status.to_string(),
                        format!(
                            "{request_label} {reason}; {}",
                            refusal_hint(&self.sink_name, status, &self.config)
                        ),
                    ));
                }
                Attempt::Retry {
                    reason,
                    retry_after,
                } => (reason, retry_after),
            };
            let Some(backoff) = delays.next() else {
                return Err(SinkError::transient(format!(
                    "{request_label} failed after {attempts} attempt(s); last: {reason}"
                )));
            };
            let delay = retry_after.map_or(backoff, |hint| hint.min(MAX_RETRY_AFTER));
            warn!(
                attempt = attempts,
                ?delay,
                "{request_label} {reason}; retrying"
            );
            tokio::time::sleep(delay).await;
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
            Err(err) if err.is_builder() => {
                return Attempt::Rejected(format!("could not be built: {err}"));
            }
            // Timeouts, refused or reset connections, TLS hiccups: all may
            // clear. A bad certificate also lands here and is retried until
            // the message goes back; it shows in the logs every time.
            Err(err) => {
                return Attempt::Retry {
                    reason: format!("failed: {}", error_chain(&err)),
                    retry_after: None,
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
        let body = body_start(response).await;
        let reason = format!("returned {status}: {}", excerpt(&body));
        if crate::error::is_deployment_http_status(status.as_u16()) {
            Attempt::Refused {
                status: status.as_u16(),
                reason,
            }
        } else if is_retryable_status(status.as_u16()) {
            Attempt::Retry {
                reason,
                retry_after,
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

/// `Retry-After` in seconds; the HTTP-date form is rare in APIs and falls
/// back to our own backoff.
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Reads a little more than the excerpt needs and no more: an error page
/// can be large.
async fn body_start(mut response: reqwest::Response) -> Vec<u8> {
    let mut start = Vec::new();
    while start.len() <= RESPONSE_BODY_EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => start.extend_from_slice(&chunk),
            // The status already says what matters; a body cut short by a
            // network error is still worth showing.
            Ok(None) | Err(_) => break,
        }
    }
    start
}

/// The start of a response body on one line, for a dead-letter reason.
fn excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(RESPONSE_BODY_EXCERPT_BYTES)];
    let mut text: String = String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    text = text.trim().to_owned();
    if body.len() > RESPONSE_BODY_EXCERPT_BYTES {
        text.push_str(" [truncated]");
    }
    if text.is_empty() {
        text.push_str("(empty body)");
    }
    text
}

/// reqwest's top-level message is vague ("error sending request"); the
/// sources say what happened (connection refused, timed out).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, SinkError> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    encoder
        .write_all(data)
        .and_then(|()| encoder.finish())
        .map_err(|err| SinkError::transient(format!("gzip failed: {err}")))
}

struct HttpWriter {
    sender: PartSender,
    /// Shared with the blocking encoder task.
    encoder: Arc<PartEncoder>,
    /// Pieces of the part being filled (header and footer added on send).
    part: Vec<u8>,
    part_rows: usize,
    parts_sent: u64,
    rows_sent: u64,
}

impl HttpWriter {
    async fn send_part(&mut self) -> Result<(), SinkError> {
        let encoder = &self.encoder;
        let mut body =
            Vec::with_capacity(encoder.header.len() + self.part.len() + encoder.footer.len());
        body.extend_from_slice(&encoder.header);
        body.append(&mut self.part);
        body.extend_from_slice(encoder.footer);
        self.sender
            .send(self.parts_sent, body, self.part_rows)
            .await?;
        self.parts_sent += 1;
        self.rows_sent += self.part_rows as u64;
        self.part_rows = 0;
        Ok(())
    }
}

#[async_trait]
impl SinkWriter for HttpWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError> {
        let budget = self
            .encoder
            .piece_budget(self.sender.config.max_request_bytes);
        let encoder = self.encoder.clone();
        // JSON and IPC encoding are CPU work: off the async runtime.
        let pieces = tokio::task::spawn_blocking(move || encoder.pieces(&batch, budget))
            .await
            .map_err(|err| SinkError::transient(format!("encoder task failed: {err}")))??;
        for piece in pieces {
            if self.part.len() + piece.bytes.len() > budget {
                self.send_part().await?;
            }
            self.part.extend_from_slice(&piece.bytes);
            self.part_rows += piece.rows;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<CommitReceipt, SinkError> {
        // An object without rows sends nothing: there is nothing to insert,
        // and some endpoints reject an empty body.
        if self.part_rows > 0 {
            self.send_part().await?;
        }
        Ok(CommitReceipt {
            location: format!(
                "{} ({} part(s))",
                self.sender.display_url(),
                self.parts_sent
            ),
            rows: self.rows_sent,
            // The receiver dedups on the tokens; the sink cannot tell.
            already_committed: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn lineage(version: Option<&str>) -> Lineage {
        Lineage {
            bucket: "vendor".into(),
            key: "in/a.csv".into(),
            version_id: version.map(Into::into),
            etag: Some("etag1".into()),
            size: 10,
            event_time: None,
            route: "r".into(),
        }
    }

    fn batch(rows: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let ids: Vec<i64> = (0..rows).collect();
        let names: Vec<String> = ids.iter().map(|i| format!("name {i}")).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    fn config(text: &str) -> HttpSinkConfig {
        toml::from_str(text).unwrap()
    }

    const MINIMAL: &str = "url = \"http://127.0.0.1:8123/?query=INSERT\"\nformat = \"ndjson\"\n";

    #[test]
    fn defaults_and_validation() {
        let minimal = config(MINIMAL);
        assert_eq!(minimal.max_request_bytes, DEFAULT_MAX_REQUEST_BYTES);
        assert_eq!(minimal.idempotency_header, "Idempotency-Key");
        assert_eq!(minimal.compression, HttpCompression::None);
        assert!(minimal.validate().is_ok());

        let field = |text: &str| config(text).validate().unwrap_err().0;
        assert_eq!(field("url = \"ftp://x\"\nformat = \"ndjson\""), "url");
        assert_eq!(
            field(&format!("{MINIMAL}max_request_bytes = 10")),
            "max_request_bytes"
        );
        assert_eq!(
            field(&format!(
                "{MINIMAL}headers = {{ Authorization = \"Bearer x\" }}"
            )),
            "headers"
        );
        assert!(
            toml::from_str::<HttpSinkConfig>(&format!("{MINIMAL}gzip = true")).is_err(),
            "unknown keys are rejected"
        );
    }

    #[test]
    fn env_headers_are_resolved_and_a_missing_variable_is_named() {
        let config = config(&format!(
            "{MINIMAL}headers = {{ X-Team = \"data\" }}\nheaders_from_env = {{ Authorization = {{ env = \"TB_TOKEN\", prefix = \"Bearer \" }} }}"
        ));
        let headers =
            resolve_headers(&config, |var| (var == "TB_TOKEN").then(|| "s3cr3t".into())).unwrap();
        assert_eq!(headers["authorization"], "Bearer s3cr3t");
        assert!(headers["authorization"].is_sensitive());
        assert_eq!(headers["x-team"], "data");
        assert!(!format!("{headers:?}").contains("s3cr3t"));

        let missing = resolve_headers(&config, |_| None).unwrap_err();
        assert!(
            missing.contains("TB_TOKEN") && missing.contains("Authorization"),
            "{missing}"
        );
    }

    #[test]
    fn tokens_are_stable_per_part_and_version() {
        let token = |lineage: &Lineage, part| {
            idempotency_token(
                "tb",
                lineage,
                HttpFormat::Ndjson,
                DEFAULT_MAX_REQUEST_BYTES,
                part,
            )
        };
        let v1 = lineage(Some("v1"));
        assert_eq!(token(&v1, 0), token(&v1.clone(), 0));
        assert_ne!(token(&v1, 0), token(&v1, 1));
        assert_ne!(token(&v1, 0), token(&lineage(Some("v2")), 0));
        assert_ne!(token(&v1, 0), token(&lineage(None), 0));
        assert_ne!(
            token(&v1, 0),
            idempotency_token(
                "tb",
                &v1,
                HttpFormat::ArrowStream,
                DEFAULT_MAX_REQUEST_BYTES,
                0
            )
        );
        assert_ne!(
            token(&v1, 0),
            idempotency_token(
                "other",
                &v1,
                HttpFormat::Ndjson,
                DEFAULT_MAX_REQUEST_BYTES,
                0
            )
        );
        assert_eq!(token(&v1, 0).len(), 32);
    }

    #[test]
    fn a_large_batch_is_split_into_pieces_within_budget_in_row_order() {
        for format in [HttpFormat::Ndjson, HttpFormat::ArrowStream] {
            let big = batch(5000);
            let encoder = PartEncoder::new(format, big.schema()).unwrap();
            let budget = encoder.piece_budget(16 * 1024);
            let pieces = encoder.pieces(&big, budget).unwrap();
            assert!(pieces.len() > 1, "{format:?}");
            assert!(pieces.iter().all(|p| p.bytes.len() <= budget));
            assert_eq!(pieces.iter().map(|p| p.rows).sum::<usize>(), 5000);
            let again = encoder.pieces(&big, budget).unwrap();
            assert!(
                pieces.iter().zip(&again).all(|(a, b)| a.bytes == b.bytes),
                "pieces are deterministic"
            );
        }
    }

    #[test]
    fn arrow_pieces_concatenate_into_a_readable_stream() {
        let encoder = PartEncoder::new(HttpFormat::ArrowStream, batch(0).schema()).unwrap();
        let mut body = encoder.header.clone();
        for piece in encoder.pieces(&batch(300), 4096).unwrap() {
            body.extend(piece.bytes);
        }
        body.extend_from_slice(encoder.footer);
        let reader = arrow::ipc::reader::StreamReader::try_new(&body[..], None).unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        let ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(ids, (0..300).collect::<Vec<_>>());
    }

    #[test]
    fn dictionary_columns_survive_being_cut_into_pieces() {
        use arrow::array::{Array, DictionaryArray};
        use arrow::datatypes::Int32Type;
        let values: DictionaryArray<Int32Type> =
            (0..400).map(|i| ["red", "green", "blue"][i % 3]).collect();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "colour",
            values.data_type().clone(),
            false,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).unwrap();
        let encoder = PartEncoder::new(HttpFormat::ArrowStream, schema).unwrap();
        let pieces = encoder.pieces(&batch, 1024).unwrap();
        assert!(pieces.len() > 1);
        let mut body = encoder.header.clone();
        for piece in pieces {
            body.extend(piece.bytes);
        }
        body.extend_from_slice(encoder.footer);
        let reader = arrow::ipc::reader::StreamReader::try_new(&body[..], None).unwrap();
        let mut colours = Vec::new();
        for batch in reader {
            let batch = arrow::compute::cast(batch.unwrap().column(0), &DataType::Utf8).unwrap();
            let strings = batch.as_any().downcast_ref::<StringArray>().unwrap();
            colours.extend(strings.iter().map(|s| s.unwrap().to_owned()));
        }
        let expected: Vec<&str> = (0..400).map(|i| ["red", "green", "blue"][i % 3]).collect();
        assert_eq!(colours, expected);
    }

    #[test]
    fn a_row_larger_than_the_bound_is_a_permanent_error() {
        let encoder = PartEncoder::new(HttpFormat::Ndjson, batch(0).schema()).unwrap();
        let err = encoder.pieces(&batch(3), 5).err().unwrap();
        assert!(!err.retryable);
        assert!(err.detail.contains("one row encodes to"), "{}", err.detail);
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
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(excerpt(b"bad\nrow\r\n"), "bad row");
        assert_eq!(excerpt(b""), "(empty body)");
        let long = excerpt(&vec![b'x'; 5000]);
        assert!(long.ends_with("[truncated]") && long.len() < 1100);
    }
}
