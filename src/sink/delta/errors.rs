//! What a delta-rs error means for the object being written: the data's
//! fault (dead-lettered), the storage being out (retried without counting
//! against the file), a refusal of the deployment, or worth another try.

use deltalake::kernel::transaction::{CommitConflictError, TransactionError};
use deltalake::{DeltaTableError, ObjectStoreError};
use url::Url;

use crate::sink::SinkError;

/// `err`, from trying to `action` the table at `url`, in the sink's classes.
pub fn delta_error(url: &Url, action: &str, err: DeltaTableError) -> SinkError {
    let detail = format!(
        "delta table {url}: cannot {action} it: {}",
        with_sources(&err)
    );
    match &err {
        DeltaTableError::ObjectStore { source } => storage_error(source, detail),
        DeltaTableError::Transaction {
            source: TransactionError::ObjectStore { source },
        } => storage_error(source, detail),
        DeltaTableError::Io { .. } => SinkError::unavailable("io", detail),
        // The rows do not fit the table: a cast that fails, a null in a
        // non-nullable column, a partition value that cannot be written.
        DeltaTableError::Arrow { .. }
        | DeltaTableError::SchemaMismatch { .. }
        | DeltaTableError::InvalidData { .. }
        | DeltaTableError::PartitionError { .. } => SinkError::permanent(detail),
        _ => SinkError::transient(detail),
    }
}

fn storage_error(err: &ObjectStoreError, detail: String) -> SinkError {
    match err {
        ObjectStoreError::PermissionDenied { .. } => SinkError::deployment("AccessDenied", detail),
        ObjectStoreError::Unauthenticated { .. } => {
            SinkError::deployment("Unauthenticated", detail)
        }
        _ => SinkError::unavailable("storage", detail),
    }
}

/// Another commit holding one of this commit's application transactions
/// won the race: the object (or one of the group's) is in the table.
pub fn is_concurrent_transaction(err: &DeltaTableError) -> bool {
    matches!(
        err,
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction)
        }
    )
}

/// The error and its sources, `: `-joined: delta-rs wraps object_store,
/// which wraps the HTTP client, and the cause is at the bottom.
fn with_sources(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SinkFailure;

    fn url() -> Url {
        Url::parse("s3://lake/t/").unwrap()
    }

    #[test]
    fn storage_outages_and_refusals_are_told_apart() {
        let outage = DeltaTableError::ObjectStore {
            source: ObjectStoreError::Generic {
                store: "S3",
                source: "connection refused".into(),
            },
        };
        let err = delta_error(&url(), "read", outage);
        assert_eq!(err.class, SinkFailure::Unavailable("storage".into()));
        assert!(err.detail.contains("connection refused"), "{}", err.detail);

        let denied = DeltaTableError::ObjectStore {
            source: ObjectStoreError::PermissionDenied {
                path: "t/_delta_log".into(),
                source: "403".into(),
            },
        };
        assert_eq!(
            delta_error(&url(), "read", denied).class,
            SinkFailure::Deployment("AccessDenied".into())
        );
    }

    #[test]
    fn rows_that_do_not_fit_are_permanent() {
        let err = DeltaTableError::InvalidData {
            message: "null in a non-nullable column".into(),
        };
        assert_eq!(
            delta_error(&url(), "write", err).class,
            SinkFailure::Permanent
        );
    }

    #[test]
    fn a_concurrent_transaction_is_recognised() {
        let err = DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction),
        };
        assert!(is_concurrent_transaction(&err));
        assert!(!is_concurrent_transaction(&DeltaTableError::NotInitialized));
    }
}
