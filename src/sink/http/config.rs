//! `[sinks.NAME]` of `type = "http"`: the settings, their defaults and
//! validation (no credentials in the URL or in static headers), how the
//! config is shown, and the headers resolved from it at start-up.

use std::collections::BTreeMap;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::redact;

/// Bodies are cut below this by default: under the usual 10 MiB limits of
/// event APIs, large enough for few requests per object.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Smaller bounds would mostly measure IPC framing.
const MIN_MAX_REQUEST_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpFormat {
    /// Arrow IPC stream (`application/vnd.apache.arrow.stream`).
    ArrowStream,
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
}

impl HttpFormat {
    pub(super) fn name(self) -> &'static str {
        match self {
            HttpFormat::ArrowStream => "arrow_stream",
            HttpFormat::Ndjson => "ndjson",
        }
    }

    pub(super) fn content_type(self) -> &'static str {
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

/// Static headers plus those read from the environment (`lookup`). Values
/// read from the environment, and static ones whose names suggest a secret,
/// are marked sensitive so they never show in debug output.
pub(super) fn resolve_headers(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::http::tests::config;

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
}
