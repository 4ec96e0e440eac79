//! One error type for everything that can go wrong with an object, and the
//! one place that decides retry (leave the message) versus dead-letter.

use std::error::Error as StdError;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

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
            IngestError::Abandoned { .. } => true,
            IngestError::ObjectMissing { .. }
            | IngestError::ObjectChanged { .. }
            | IngestError::AccessDenied { .. }
            | IngestError::UnsupportedFormat { .. }
            | IngestError::Decompress { .. }
            | IngestError::Schema { .. }
            | IngestError::Csv { .. }
            | IngestError::Parquet { .. } => false,
        }
    }

    /// The `error_kind` written to the dead-letter envelope and to metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            IngestError::ObjectMissing { .. } => "object_missing",
            IngestError::ObjectChanged { .. } => "object_changed",
            IngestError::AccessDenied { .. } => "access_denied",
            IngestError::S3 { .. } => "s3_error",
            IngestError::UnsupportedFormat { .. } => "unsupported_format",
            IngestError::Decompress { .. } => "decompression_error",
            IngestError::Schema { .. } => "schema_error",
            IngestError::Csv { .. } => "csv_error",
            IngestError::Parquet { .. } => "parquet_error",
            IngestError::Sink { .. } => "sink_error",
            IngestError::Abandoned { .. } => "abandoned",
        }
    }
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
    let class = match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            AwsFailure::Transient
        }
        // Building the request failed locally (e.g. no credentials could be
        // loaded); treating it as transient keeps the file, and the receive
        // count eventually makes it poison if it never clears.
        SdkError::ConstructionFailure(_) => AwsFailure::Transient,
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            classify_service(status, service.err().code())
        }
        _ => AwsFailure::Transient,
    };
    (class, detail)
}

/// The AWS error code of a service error (`NoSuchKey`, `QueueDoesNotExist`, ...).
pub fn aws_error_code<E>(err: &SdkError<E, HttpResponse>) -> Option<String>
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(service) => service.err().code().map(str::to_owned),
        _ => None,
    }
}

/// Decides from an HTTP status and AWS error code.
pub fn classify_service(status: u16, code: Option<&str>) -> AwsFailure {
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
