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
//! Every part carries a token: a hash of its lineage (sink name, bucket,
//! key, version id or ETag), its part number and a hash of its exact
//! content (the body before compression). A redelivery that cuts the same
//! parts sends the same tokens. It is sent in a header
//! (`idempotency_header`) and, when configured, in a query parameter
//! (`idempotency_query_param`, e.g. ClickHouse's
//! `insert_deduplication_token`).
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
//! The cut points depend on the route too (`batch_rows`, the schema, CSV
//! options) and on `format` and `max_request_bytes`. After any such change
//! a replay cuts other parts, and because the content is in the token,
//! they get other tokens: the replay may duplicate rows the first attempt
//! delivered, but one token never names two different contents, so the
//! receiver never drops a part it has not seen (which would lose rows).
//! Content alone is not enough: the lineage and the part number keep two
//! objects, or two parts of one object, with equal rows apart.
//!
//! # What is shown
//!
//! The URL appears in logs, errors and commit receipts with its query
//! values redacted (`?query=***`); a user or password in it is refused at
//! start-up. Header values from the environment, and static ones whose
//! names suggest a secret (`redact::is_sensitive_name`), never appear in
//! logs or `Debug` output.
//!
//! # Errors
//!
//! 429, 408, 5xx, timeouts and connection errors are retried with
//! exponential backoff (honouring a `Retry-After` in seconds), at most
//! `max_retries` times; then the object goes back to the queue (transient).
//! 401, 403 and 407 refuse the sink's credentials: a deployment problem,
//! so the object stays queued uncounted and the worker backs off. Any
//! other status is permanent: the object is dead-lettered with the status
//! and the first KiB of the response body (`text::excerpt_of`).

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
use backon::Retryable;
use bytes::Bytes;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::{CommitReceipt, Lineage, Sink, SinkContext, SinkError, SinkWriter};
use crate::{redact, text};

/// Bodies are cut below this by default: under the usual 10 MiB limits of
/// event APIs, large enough for few requests per object.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Smaller bounds would mostly measure IPC framing.
const MIN_MAX_REQUEST_BYTES: usize = 1024;
/// How much of an error response ends up in the dead-letter reason.
const RESPONSE_BODY_EXCERPT_BYTES: usize = 1024;
/// Bodies up to this size are hashed on the async runtime (tens of
/// microseconds); larger ones on a blocking thread.
const INLINE_HASH_BYTES: usize = 64 * 1024;
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

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Where parts are POSTed; its query string is kept (ClickHouse puts
    /// the INSERT statement there). A user or password in it is refused:
    /// credentials go in `headers_from_env`. Wherever the URL is shown,
    /// its query values are redacted.
    pub url: String,
    pub format: HttpFormat,
    /// Static headers. Credentials belong in `headers_from_env`; values of
    /// headers whose names suggest a secret are never shown either way.
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

/// Hides the URL's user info and query values and the values of sensitive
/// headers: a config is printed with `{:?}` in panics and logs.
impl std::fmt::Debug for HttpSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so that a new field has to be added here too.
        let HttpSinkConfig {
            url,
            format,
            headers,
            headers_from_env,
            max_request_bytes,
            compression,
            max_retries,
            initial_backoff_ms,
            max_backoff_ms,
            timeout_secs,
            idempotency_header,
            idempotency_query_param,
        } = self;
        let headers: BTreeMap<&str, &str> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), redact::header_value(name, value)))
            .collect();
        let headers_from_env: BTreeMap<&str, (&str, &str)> = headers_from_env
            .iter()
            .map(|(name, source)| {
                let prefix = redact::env_header_prefix(name, &source.prefix);
                (name.as_str(), (source.env.as_str(), prefix))
            })
            .collect();
        f.debug_struct("HttpSinkConfig")
            .field("url", &redact::url(url))
            .field("format", format)
            .field("headers", &headers)
            .field("headers_from_env", &headers_from_env)
            .field("max_request_bytes", max_request_bytes)
            .field("compression", compression)
            .field("max_retries", max_retries)
            .field("initial_backoff_ms", initial_backoff_ms)
            .field("max_backoff_ms", max_backoff_ms)
            .field("timeout_secs", timeout_secs)
            .field("idempotency_header", idempotency_header)
            .field("idempotency_query_param", idempotency_query_param)
            .finish()
    }
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

/// Headers that carry credentials: never accepted in plain text. Other
/// headers whose names suggest a secret (`redact::is_sensitive_name`) are
/// accepted but never shown.
const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-clickhouse-key",
];

impl HttpSinkConfig {
    /// Errors are (field relative to `sinks.NAME.`, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |field: &str, message: String| Err((field.to_owned(), message));
        match reqwest::Url::parse(&self.url) {
            // The message never echoes the URL: it holds the secret.
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                return err(
                    "url",
                    "must not contain a user or password: send credentials in a header read \
                     from the environment, e.g. headers_from_env = { Authorization = { env = \
                     \"CH_BASIC_AUTH\", prefix = \"Basic \" } } with the variable holding \
                     base64(user:password), or for ClickHouse headers = { X-ClickHouse-User = \
                     \"NAME\" } and headers_from_env = { X-ClickHouse-Key = { env = \"CH_PASSWORD\" } }"
                        .into(),
                );
            }
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

/// Static headers plus those read from the environment (`lookup`). Values
/// read from the environment, and static ones whose names suggest a secret,
/// are marked sensitive so they never show in debug output.
fn resolve_headers(
    config: &HttpSinkConfig,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in &config.headers {
        let sensitive = redact::is_sensitive_name(name);
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|err| err.to_string())?;
        // The error names the header, never its value.
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header {name} is not a valid header value"))?;
        value.set_sensitive(sensitive);
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
    fn display_url(&self) -> String {
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

    async fn send(&self, part_number: u64, body: Vec<u8>, rows: usize) -> Result<(), SinkError> {
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
    fn credentials_in_the_url_are_refused_without_echoing_them() {
        for url in [
            "http://ingest:s3cr3t@127.0.0.1:8123/?query=INSERT",
            "http://ingest@127.0.0.1:8123/",
        ] {
            let (field, message) = config(&format!("url = \"{url}\"\nformat = \"ndjson\""))
                .validate()
                .unwrap_err();
            assert_eq!(field, "url");
            assert!(message.contains("headers_from_env"), "{message}");
            assert!(
                !message.contains("s3cr3t") && !message.contains("ingest"),
                "{message}"
            );
        }
    }

    #[test]
    fn debug_output_and_the_shown_url_hide_secrets() {
        let config = config(
            "url = \"http://127.0.0.1:8123/?query=INSERT&password=qpw\"\nformat = \"ndjson\"\n\
             headers = { X-Team = \"data\", X-Api-Token = \"inline-secret\" }\n\
             headers_from_env = { Authorization = { env = \"TB_TOKEN\", prefix = \"Bearer \" } }",
        );
        let debug = format!("{config:?}");
        for secret in ["qpw", "inline-secret", "INSERT"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        for shown in ["data", "TB_TOKEN", "Bearer ", "password=***"] {
            assert!(debug.contains(shown), "{shown} missing from {debug}");
        }
        let headers = resolve_headers(&config, |_| Some("env-secret".into())).unwrap();
        assert!(headers["x-api-token"].is_sensitive());
        assert!(!headers["x-team"].is_sensitive());
        let debug = format!("{headers:?}");
        assert!(
            !debug.contains("inline-secret") && !debug.contains("env-secret"),
            "{debug}"
        );
    }

    fn context() -> SinkContext {
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version_latest()
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .build(),
        );
        SinkContext {
            s3,
            expected_bucket_owner: None,
        }
    }

    /// reqwest's error message carries the whole URL; the receipt used
    /// the URL too. Neither may show a query value.
    #[tokio::test]
    async fn errors_and_receipts_show_no_query_values() {
        // A port nobody listens on: the connection is refused.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = config(&format!(
            "url = \"http://{addr}/insert?password=hunter2\"\nformat = \"ndjson\"\n\
             max_retries = 0\nidempotency_query_param = \"insert_deduplication_token\""
        ));
        let sink = HttpSink::new("ch", &config, &context()).unwrap();
        let writer = sink.open(&lineage(None), batch(0).schema()).await.unwrap();
        let receipt = writer.commit().await.unwrap();
        assert_eq!(
            receipt.location,
            format!("http://{addr}/insert?password=*** (0 part(s))")
        );

        let mut writer = sink.open(&lineage(None), batch(0).schema()).await.unwrap();
        writer.write(batch(3)).await.unwrap();
        let err = writer.commit().await.err().unwrap();
        // Refused connections: the endpoint is out, not the file.
        assert_eq!(
            err.class,
            crate::sink::SinkFailure::Unavailable("connect".into()),
            "{}",
            err.detail
        );
        assert!(err.detail.contains("password=***"), "{}", err.detail);
        assert!(
            !err.detail.contains("hunter2") && !err.detail.contains("insert_deduplication_token"),
            "{}",
            err.detail
        );
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
        assert!(!err.is_retryable());
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
