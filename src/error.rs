//! One error type for everything that can go wrong with an object, and the
//! one place that decides retry (leave the message) versus dead-letter.

use std::error::Error as StdError;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use serde::{Deserialize, Serialize};

/// What went wrong, by name: the dead-letter envelope's `error_kind` and the
/// metrics' `error_kind` label. Every such string comes from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    // A message's own failures, before any object is read.
    /// The body is not a notification the worker understands.
    InvalidMessage,
    /// Attempted more than `max_receive_count` times.
    MaxReceiveCountExceeded,
    /// The notification names a bucket outside `allowed_buckets`.
    BucketNotAllowed,
    // An object's failures: one per [`IngestError`] variant.
    ObjectMissing,
    ObjectChanged,
    AccessDenied,
    S3Error,
    UnsupportedFormat,
    DecompressionError,
    SchemaError,
    /// Rows break the route's contract and its `bad_rows` is `reject`.
    ContractViolation,
    CsvError,
    ParquetError,
    SinkError,
    Abandoned,
    DeploymentError,
    Unavailable,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 17] = [
        ErrorKind::InvalidMessage,
        ErrorKind::MaxReceiveCountExceeded,
        ErrorKind::BucketNotAllowed,
        ErrorKind::ObjectMissing,
        ErrorKind::ObjectChanged,
        ErrorKind::AccessDenied,
        ErrorKind::S3Error,
        ErrorKind::UnsupportedFormat,
        ErrorKind::DecompressionError,
        ErrorKind::SchemaError,
        ErrorKind::ContractViolation,
        ErrorKind::CsvError,
        ErrorKind::ParquetError,
        ErrorKind::SinkError,
        ErrorKind::Abandoned,
        ErrorKind::DeploymentError,
        ErrorKind::Unavailable,
    ];

    /// The name, as serialized (a unit test holds the two equal).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidMessage => "invalid_message",
            ErrorKind::MaxReceiveCountExceeded => "max_receive_count_exceeded",
            ErrorKind::BucketNotAllowed => "bucket_not_allowed",
            ErrorKind::ObjectMissing => "object_missing",
            ErrorKind::ObjectChanged => "object_changed",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::S3Error => "s3_error",
            ErrorKind::UnsupportedFormat => "unsupported_format",
            ErrorKind::DecompressionError => "decompression_error",
            ErrorKind::SchemaError => "schema_error",
            ErrorKind::ContractViolation => "contract_violation",
            ErrorKind::CsvError => "csv_error",
            ErrorKind::ParquetError => "parquet_error",
            ErrorKind::SinkError => "sink_error",
            ErrorKind::Abandoned => "abandoned",
            ErrorKind::DeploymentError => "deployment_error",
            ErrorKind::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an object could not be ingested. Every variant names the object.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{uri}: object no longer exists: {detail}")]
    ObjectMissing { uri: String, detail: String },
    #[error("{uri}: object changed since its notification: {detail}")]
    ObjectChanged { uri: String, detail: String },
    #[error("{uri}: access denied: {detail}")]
    AccessDenied { uri: String, detail: String },
    #[error("{uri}: S3 {operation} failed: {detail}")]
    S3 {
        uri: String,
        operation: &'static str,
        detail: String,
        retryable: bool,
    },
    #[error("{uri}: unsupported format: {detail}")]
    UnsupportedFormat { uri: String, detail: String },
    #[error("{uri}: cannot decompress ({codec}) at decompressed byte {offset}: {detail}")]
    Decompress {
        uri: String,
        codec: &'static str,
        offset: u64,
        detail: String,
    },
    /// The file's columns cannot be used: CSV inference failed, the header
    /// repeats a name, or a Parquet file does not match the route's schema.
    #[error("{uri}: unusable schema: {detail}")]
    Schema { uri: String, detail: String },
    /// Rows break the route's contract (`[routes.contract]`, `bad_rows =
    /// "reject"`): the detail quotes the first of them.
    #[error("{uri}: contract violated: {detail}")]
    Contract { uri: String, detail: String },
    /// `first_row` 0: the rows are not known (the decoder panicked).
    #[error("{uri}: CSV {}: {detail}", csv_rows(*first_row, *last_row))]
    Csv {
        uri: String,
        first_row: u64,
        last_row: u64,
        detail: String,
    },
    #[error("{uri}: invalid Parquet: {detail}")]
    Parquet { uri: String, detail: String },
    #[error("{uri}: sink `{sink}` failed: {detail}")]
    Sink {
        uri: String,
        sink: String,
        detail: String,
        retryable: bool,
    },
    /// The object was given up part-way (shutdown, or a later stage of its
    /// pipeline failed and reports its own error); its message comes back.
    #[error("{uri}: abandoned before commit")]
    Abandoned { uri: String },
    /// A problem of the deployment, not of the file: credentials expired or
    /// invalid, a sink refusing our identity or privileges. Nothing about
    /// the file is wrong, so it is neither dead-lettered nor counted as a
    /// failed attempt; the worker backs off until the deployment is fixed.
    #[error("{uri}: {component} refuses the deployment ({code}): {detail}")]
    Deployment {
        uri: String,
        /// `s3`, `sqs` or `sink:NAME`.
        component: String,
        /// The AWS error code, HTTP status or SQLSTATE.
        code: String,
        /// What happened and what to fix.
        detail: String,
    },
    /// A component the object needs is out: a sink unreachable, timing
    /// out, overloaded or failing its storage. Counted against the file
    /// only when the component works for other objects meanwhile (see
    /// `deployment.rs`); otherwise it is the outage's, and the worker
    /// backs off as for a deployment problem.
    #[error("{uri}: {component} is unavailable ({code}): {detail}")]
    Unavailable {
        uri: String,
        /// `sink:NAME`.
        component: String,
        /// How it failed: `connect`, `timeout`, an HTTP status, SQLSTATE,
        /// AWS error code or I/O error kind.
        code: String,
        detail: String,
    },
}

/// An error and its causes, `a: b: c`: the one way errors with sources
/// are shown. Drivers often print only their own layer ("error sending
/// request", "error performing TLS handshake"); the reason (connection
/// refused, `invalid peer certificate: UnknownIssuer`) is in the sources.
/// A layer that repeats its source's text (an `io::Error` wrapping an
/// error) is not printed twice.
pub fn with_causes(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn csv_rows(first_row: u64, last_row: u64) -> String {
    if first_row == 0 {
        "data".to_owned()
    } else {
        format!("data rows {first_row}..={last_row}")
    }
}

impl IngestError {
    /// Transient errors leave the message on the queue for another try;
    /// everything else is poison and goes to the dead-letter queue.
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::S3 { retryable, .. } | IngestError::Sink { retryable, .. } => *retryable,
            IngestError::Abandoned { .. }
            | IngestError::Deployment { .. }
            | IngestError::Unavailable { .. } => true,
            IngestError::ObjectMissing { .. }
            | IngestError::ObjectChanged { .. }
            | IngestError::AccessDenied { .. }
            | IngestError::UnsupportedFormat { .. }
            | IngestError::Decompress { .. }
            | IngestError::Schema { .. }
            | IngestError::Contract { .. }
            | IngestError::Csv { .. }
            | IngestError::Parquet { .. } => false,
        }
    }

    /// The `error_kind` written to the dead-letter envelope and to metrics.
    pub fn kind(&self) -> ErrorKind {
        match self {
            IngestError::ObjectMissing { .. } => ErrorKind::ObjectMissing,
            IngestError::ObjectChanged { .. } => ErrorKind::ObjectChanged,
            IngestError::AccessDenied { .. } => ErrorKind::AccessDenied,
            IngestError::S3 { .. } => ErrorKind::S3Error,
            IngestError::UnsupportedFormat { .. } => ErrorKind::UnsupportedFormat,
            IngestError::Decompress { .. } => ErrorKind::DecompressionError,
            IngestError::Schema { .. } => ErrorKind::SchemaError,
            IngestError::Contract { .. } => ErrorKind::ContractViolation,
            IngestError::Csv { .. } => ErrorKind::CsvError,
            IngestError::Parquet { .. } => ErrorKind::ParquetError,
            IngestError::Sink { .. } => ErrorKind::SinkError,
            IngestError::Abandoned { .. } => ErrorKind::Abandoned,
            IngestError::Deployment { .. } => ErrorKind::DeploymentError,
            IngestError::Unavailable { .. } => ErrorKind::Unavailable,
        }
    }

    /// The sink that failed, for a sink's failure.
    pub fn sink(&self) -> Option<&str> {
        match self {
            IngestError::Sink { sink, .. } => Some(sink),
            IngestError::Deployment { component, .. }
            | IngestError::Unavailable { component, .. } => component.strip_prefix("sink:"),
            _ => None,
        }
    }

    /// A sink's failure for `uri`, in the sink's own class.
    pub fn from_sink(uri: &str, sink: &str, err: crate::sink::SinkError) -> IngestError {
        use crate::sink::SinkFailure;
        let uri = uri.to_owned();
        let detail = err.detail;
        match err.class {
            SinkFailure::Deployment(code) => IngestError::Deployment {
                uri,
                component: format!("sink:{sink}"),
                code,
                detail,
            },
            SinkFailure::Unavailable(code) => IngestError::Unavailable {
                uri,
                component: format!("sink:{sink}"),
                code,
                detail,
            },
            SinkFailure::Schema => IngestError::Schema {
                uri,
                detail: format!("sink `{sink}`: {detail}"),
            },
            SinkFailure::Transient | SinkFailure::Permanent => IngestError::Sink {
                uri,
                sink: sink.to_owned(),
                detail,
                retryable: err.class == SinkFailure::Transient,
            },
        }
    }

    /// Whether the object's bytes were read before it failed: a sign that
    /// its bucket is readable, which `AccessDenied` on another object of
    /// the same bucket is judged against (see `deployment.rs`).
    pub fn object_was_read(&self) -> bool {
        match self {
            IngestError::Decompress { .. }
            | IngestError::Schema { .. }
            | IngestError::Contract { .. }
            | IngestError::Csv { .. }
            | IngestError::Parquet { .. }
            | IngestError::Sink { .. } => true,
            // A sink refused it: the object itself was opened first.
            IngestError::Deployment { component, .. }
            | IngestError::Unavailable { component, .. } => component.starts_with("sink:"),
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------
// Deployment problems: the one place that says which failures are the
// deployment's (credentials, grants, secrets) rather than the file's.
// ---------------------------------------------------------------------------

/// AWS error codes (S3, SQS, STS) meaning the credentials themselves are
/// expired, unknown or badly signed: every request fails alike until the
/// deployment is fixed.
pub fn is_credential_error_code(code: &str) -> bool {
    matches!(
        code,
        "ExpiredToken"
            | "ExpiredTokenException"
            | "InvalidToken"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "InvalidClientTokenId"
            | "UnrecognizedClientException"
            | "MissingAuthenticationToken"
            | "InvalidSecurity"
    )
}

/// HTTP statuses from an `http` sink's endpoint that refuse our identity:
/// the Authorization header or its secret (401), or what that identity
/// may do (403), or a proxy's credentials (407).
pub fn is_deployment_http_status(status: u16) -> bool {
    matches!(status, 401 | 403 | 407)
}

/// PostgreSQL SQLSTATEs that refuse the sink's role rather than the data:
/// a wrong password (28P01), a role that may not log in (28000), a missing
/// grant (42501), and a table that does not exist when the sink is not
/// the one that creates it (42P01).
pub fn is_deployment_sqlstate(code: &str, sink_creates_tables: bool) -> bool {
    match code {
        "28P01" | "28000" | "42501" => true,
        "42P01" => !sink_creates_tables,
        _ => false,
    }
}

/// What an operator should fix for a credential error of `component`.
pub fn credential_hint(component: &str, code: &str) -> String {
    format!(
        "{component} answers {code}: the worker's AWS credentials are missing, expired or invalid; \
         check the task role (or AWS_* variables / profile) and the clock"
    )
}

/// What an AWS SDK failure means for us, decided from its kind, HTTP
/// status and error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsFailure {
    /// Throttling, 5xx, timeouts, connection trouble: try again later.
    Transient,
    NotFound,
    AccessDenied,
    PreconditionFailed,
    /// The credentials are expired or invalid: a deployment problem.
    Credentials,
    /// A request the service will refuse however often it is sent.
    Permanent,
}

/// Classifies any SDK error (S3 or SQS) and renders it with its full
/// chain of causes, which the SDK's `Display` alone leaves out.
pub fn classify_aws<E>(err: &SdkError<E, HttpResponse>) -> (AwsFailure, String)
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let detail = DisplayErrorContext(err).to_string();
    if no_credentials(err) {
        return (AwsFailure::Credentials, detail);
    }
    let class = match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            AwsFailure::Transient
        }
        // Building the request failed locally: transient keeps the file,
        // and the attempt count makes it poison if it never clears.
        SdkError::ConstructionFailure(_) => AwsFailure::Transient,
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            classify_service(status, service.err().code())
        }
        _ => AwsFailure::Transient,
    };
    (class, detail)
}

/// Whether the request never left because no credentials could be had:
/// none configured, a provider misconfigured, or the task role's
/// credential endpoint failing. Every request fails alike until that is
/// fixed, so it is the deployment's problem, as an expired token is.
fn no_credentials<E: StdError + 'static>(err: &SdkError<E, HttpResponse>) -> bool {
    let mut cause = err.source();
    while let Some(current) = cause {
        if current
            .downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
            .is_some()
        {
            return true;
        }
        cause = current.source();
    }
    false
}

/// The code that names the failure for metrics and `/readyz`: the AWS
/// error code of a service error (`NoSuchKey`, `QueueDoesNotExist`, ...),
/// or `NoCredentials` when none could be loaded.
pub fn aws_error_code<E>(err: &SdkError<E, HttpResponse>) -> Option<String>
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    match err {
        SdkError::ServiceError(service) => service.err().code().map(str::to_owned),
        _ if no_credentials(err) => Some("NoCredentials".to_owned()),
        _ => None,
    }
}

/// Decides from an HTTP status and AWS error code.
pub fn classify_service(status: u16, code: Option<&str>) -> AwsFailure {
    if code.is_some_and(is_credential_error_code) {
        return AwsFailure::Credentials;
    }
    match code {
        Some("NoSuchKey" | "NoSuchVersion" | "NoSuchBucket" | "NotFound") => {
            return AwsFailure::NotFound;
        }
        Some("AccessDenied" | "AllAccessDisabled" | "InvalidObjectState") => {
            return AwsFailure::AccessDenied;
        }
        Some("PreconditionFailed") => return AwsFailure::PreconditionFailed,
        Some(
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestThrottled"
            | "RequestTimeout"
            | "InternalError"
            | "ServiceUnavailable"
            | "RequestLimitExceeded",
        ) => return AwsFailure::Transient,
        _ => {}
    }
    match status {
        404 => AwsFailure::NotFound,
        403 => AwsFailure::AccessDenied,
        412 => AwsFailure::PreconditionFailed,
        408 | 429 => AwsFailure::Transient,
        500..=599 => AwsFailure::Transient,
        400..=499 => AwsFailure::Permanent,
        _ => AwsFailure::Transient,
    }
}

/// Turns an S3 failure for `uri` during `operation` into an `IngestError`.
pub fn s3_error<E>(
    uri: &str,
    operation: &'static str,
    err: &SdkError<E, HttpResponse>,
) -> IngestError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let (class, detail) = classify_aws(err);
    let uri = uri.to_owned();
    match class {
        AwsFailure::Credentials => {
            let code = aws_error_code(err).unwrap_or_else(|| "credentials".into());
            IngestError::Deployment {
                uri,
                detail: format!("{}; S3 {operation}: {detail}", credential_hint("S3", &code)),
                component: "s3".into(),
                code,
            }
        }
        AwsFailure::NotFound => IngestError::ObjectMissing { uri, detail },
        AwsFailure::AccessDenied => IngestError::AccessDenied { uri, detail },
        AwsFailure::PreconditionFailed => IngestError::ObjectChanged { uri, detail },
        AwsFailure::Transient => IngestError::S3 {
            uri,
            operation,
            detail,
            retryable: true,
        },
        AwsFailure::Permanent => IngestError::S3 {
            uri,
            operation,
            detail,
            retryable: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_failure_names_its_sink() {
        let unavailable = IngestError::Unavailable {
            uri: "s3://b/k".into(),
            component: "sink:warehouse".into(),
            code: "timeout".into(),
            detail: String::new(),
        };
        assert_eq!(unavailable.sink(), Some("warehouse"));
        let s3 = IngestError::S3 {
            uri: "s3://b/k".into(),
            operation: "GetObject",
            detail: String::new(),
            retryable: true,
        };
        assert_eq!(s3.sink(), None);
        let denied = IngestError::Deployment {
            uri: "s3://b/k".into(),
            component: "s3".into(),
            code: "AccessDenied".into(),
            detail: String::new(),
        };
        assert_eq!(denied.sink(), None);
    }

    #[test]
    fn error_kind_names_are_their_serialized_form_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let back: ErrorKind = serde_json::from_str(&json).unwrap();
            assert_eq!(back, kind);
            assert!(seen.insert(kind.as_str()), "{kind} twice");
        }
    }

    #[test]
    fn service_errors_are_classified_by_code_then_status() {
        assert_eq!(
            classify_service(404, Some("NoSuchKey")),
            AwsFailure::NotFound
        );
        assert_eq!(classify_service(404, None), AwsFailure::NotFound);
        assert_eq!(
            classify_service(400, Some("NoSuchVersion")),
            AwsFailure::NotFound
        );
        assert_eq!(classify_service(403, None), AwsFailure::AccessDenied);
        assert_eq!(classify_service(412, None), AwsFailure::PreconditionFailed);
        assert_eq!(
            classify_service(503, Some("SlowDown")),
            AwsFailure::Transient
        );
        assert_eq!(
            classify_service(400, Some("ThrottlingException")),
            AwsFailure::Transient
        );
        assert_eq!(classify_service(500, None), AwsFailure::Transient);
        assert_eq!(classify_service(429, None), AwsFailure::Transient);
        assert_eq!(
            classify_service(400, Some("InvalidArgument")),
            AwsFailure::Permanent
        );
    }

    #[test]
    fn credential_codes_are_deployment_problems_whatever_the_status() {
        for (status, code) in [
            (400, "ExpiredToken"),
            (400, "ExpiredTokenException"),
            (400, "InvalidToken"),
            (403, "InvalidAccessKeyId"),
            (403, "SignatureDoesNotMatch"),
            (403, "InvalidClientTokenId"),
            (400, "UnrecognizedClientException"),
        ] {
            assert_eq!(
                classify_service(status, Some(code)),
                AwsFailure::Credentials,
                "{code}"
            );
        }
        // A plain AccessDenied is about what the identity may read, which
        // can be one object's own; the worker judges it (deployment.rs).
        assert_eq!(
            classify_service(403, Some("AccessDenied")),
            AwsFailure::AccessDenied
        );
    }

    #[test]
    fn causes_are_shown_once_each() {
        #[derive(Debug, thiserror::Error)]
        #[error("error sending request")]
        struct Outer(#[source] std::io::Error);
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(
            with_causes(&Outer(refused)),
            "error sending request: connection refused"
        );
        // An io::Error wrapping an error shows its text, and is its source.
        let wrapped = std::io::Error::other(Outer(std::io::Error::other("reset")));
        assert_eq!(with_causes(&wrapped), "error sending request: reset");
    }

    #[test]
    fn connection_errors_keep_their_causes() {
        let io = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        #[derive(Debug)]
        struct Handshake(std::io::Error);
        impl std::fmt::Display for Handshake {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error performing TLS handshake")
            }
        }
        impl std::error::Error for Handshake {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(
            with_causes(&Handshake(io)),
            "error performing TLS handshake: invalid peer certificate: UnknownIssuer"
        );
    }

    /// What aws-config's default chain answers when it finds nothing.
    #[derive(Debug)]
    struct NoCredentialsFound;

    impl aws_credential_types::provider::ProvideCredentials for NoCredentialsFound {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            aws_credential_types::provider::future::ProvideCredentials::ready(Err(
                aws_credential_types::provider::error::CredentialsError::not_loaded(
                    "no providers in chain provided credentials",
                ),
            ))
        }
    }

    #[tokio::test]
    async fn credentials_that_cannot_be_loaded_are_a_deployment_problem() {
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version_latest()
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                // Never reached: the request fails before it is sent.
                .endpoint_url("http://127.0.0.1:1")
                .credentials_provider(NoCredentialsFound)
                .build(),
        );
        let err = s3
            .get_object()
            .bucket("b")
            .key("k")
            .send()
            .await
            .unwrap_err();
        let (class, detail) = classify_aws(&err);
        assert_eq!(class, AwsFailure::Credentials, "{detail}");
        assert_eq!(aws_error_code(&err).as_deref(), Some("NoCredentials"));
        let ingest = s3_error("s3://b/k", "GetObject", &err);
        assert!(
            matches!(&ingest, IngestError::Deployment { component, code, .. } if component == "s3" && code == "NoCredentials"),
            "{ingest:?}"
        );
    }

    #[test]
    fn http_statuses_and_sqlstates_of_the_deployment() {
        for status in [401, 403, 407] {
            assert!(is_deployment_http_status(status), "{status}");
        }
        for status in [400, 404, 409, 413, 422, 429, 500, 503] {
            assert!(!is_deployment_http_status(status), "{status}");
        }
        for code in ["28P01", "28000", "42501"] {
            assert!(is_deployment_sqlstate(code, false), "{code}");
            assert!(is_deployment_sqlstate(code, true), "{code}");
        }
        assert!(is_deployment_sqlstate("42P01", false));
        assert!(!is_deployment_sqlstate("42P01", true));
        for code in ["23505", "22P02", "42703", "40001", "08006"] {
            assert!(!is_deployment_sqlstate(code, false), "{code}");
        }
    }

    #[test]
    fn a_deployment_error_is_retried_under_its_own_kind() {
        let deployment = IngestError::from_sink(
            "s3://b/k",
            "events",
            crate::sink::SinkError::deployment("401", "answers 401"),
        );
        assert!(deployment.is_retryable());
        assert_eq!(deployment.kind(), ErrorKind::DeploymentError);
        assert!(
            matches!(&deployment, IngestError::Deployment { component, code, .. } if component == "sink:events" && code == "401"),
            "{deployment:?}"
        );
        let ordinary = IngestError::from_sink(
            "s3://b/k",
            "events",
            crate::sink::SinkError::permanent("answers 400"),
        );
        assert_eq!(ordinary.kind(), ErrorKind::SinkError);
        assert!(!ordinary.is_retryable());
    }

    #[test]
    fn retry_decision_follows_the_error_class() {
        let uri = "s3://b/k".to_string();
        let poison = [
            IngestError::ObjectMissing {
                uri: uri.clone(),
                detail: String::new(),
            },
            IngestError::ObjectChanged {
                uri: uri.clone(),
                detail: String::new(),
            },
            IngestError::AccessDenied {
                uri: uri.clone(),
                detail: String::new(),
            },
            IngestError::UnsupportedFormat {
                uri: uri.clone(),
                detail: String::new(),
            },
            IngestError::Csv {
                uri: uri.clone(),
                first_row: 1,
                last_row: 2,
                detail: String::new(),
            },
            IngestError::Parquet {
                uri: uri.clone(),
                detail: String::new(),
            },
        ];
        for err in &poison {
            assert!(!err.is_retryable(), "{err}");
        }
        let transient = [
            IngestError::S3 {
                uri: uri.clone(),
                operation: "GetObject",
                detail: String::new(),
                retryable: true,
            },
            IngestError::Sink {
                uri: uri.clone(),
                sink: "lake".into(),
                detail: String::new(),
                retryable: true,
            },
            IngestError::Abandoned { uri },
        ];
        for err in &transient {
            assert!(err.is_retryable(), "{err}");
        }
    }
}
