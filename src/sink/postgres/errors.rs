//! What a PostgreSQL failure means for the object: driver and pool errors
//! mapped to [`SinkError`] classes (outage, retry, deployment problem or
//! dead letter), mostly by SQLSTATE.

use crate::sink::SinkError;
use crate::text::{ERROR_EXCERPT_BYTES, excerpt};

/// Turns a driver error into retry-or-dead-letter, keeping the server's
/// message, SQLSTATE and COPY line (the row) for the operator.
pub(super) fn classify(action: &str, err: &tokio_postgres::Error) -> SinkError {
    let Some(db) = err.as_db_error() else {
        // Refused, reset, closed, timed out, a TLS handshake that failed
        // (the certificate may be renewed, the CA bundle fixed): the
        // server is out, whatever the file holds. (The driver's other
        // errors, encoding a parameter, cannot come from our statements.)
        return SinkError::unavailable(
            "connection",
            format!("{action}: {}", crate::error::with_causes(err)),
        );
    };
    let code = db.code().code();
    // The server's texts quote the offending value (a key in a constraint
    // violation, the COPY row in the context): bounded.
    let bounded = |text: &str| excerpt(text, ERROR_EXCERPT_BYTES);
    let mut detail = format!("{action}: {} (SQLSTATE {code})", bounded(db.message()));
    if let Some(extra) = db.detail() {
        detail.push_str(&format!("; {}", bounded(extra)));
    }
    if let Some(context) = db.where_() {
        detail.push_str(&format!("; at {}", bounded(&context.replace('\n', " / "))));
    }
    if crate::error::is_deployment_sqlstate(code, false) {
        let hint = deployment_hint(code);
        SinkError::deployment(code, format!("{detail}; {hint}"))
    } else if is_unavailable_sqlstate(code) {
        SinkError::unavailable(code, detail)
    } else if is_transient_sqlstate(code) {
        SinkError::transient(detail)
    } else {
        SinkError::permanent(detail)
    }
}

/// What to fix for a SQLSTATE that refuses the sink's role.
fn deployment_hint(code: &str) -> &'static str {
    match code {
        "28P01" => "the password is wrong: check the secret in the sink's url_env / password_env",
        "28000" => {
            "the role may not connect: check pg_hba.conf and the role (LOGIN, CONNECT on the database)"
        }
        "42501" => {
            "the role lacks a privilege: GRANT it INSERT on the table, USAGE on its schema and SELECT, INSERT on the ledger table"
        }
        _ => "the table does not exist: create it, or set create_table = true",
    }
}

/// The server is out whatever the file holds: a connection exception
/// (08), an administrator or crash shutdown, a server starting up (57P0x),
/// insufficient resources: disk full, out of memory, too many connections
/// (53), a system or I/O error (58).
fn is_unavailable_sqlstate(code: &str) -> bool {
    matches!(code, "57P01" | "57P02" | "57P03")
        || ["08", "53", "58"]
            .iter()
            .any(|class| code.starts_with(class))
}

/// Worth another try, and the try counts: serialization failures,
/// deadlocks, lock timeouts, a cancelled statement, a database that does
/// not exist (yet).
fn is_transient_sqlstate(code: &str) -> bool {
    matches!(
        code,
        "40001" | "40P01" | "55P03" | "57014" | "3D000"
            // In a failed transaction: the connection's state, not the
            // object's; the session is discarded and a retry starts clean.
            | "25P02"
    ) || code.starts_with("28")
}

pub(super) fn pool_error(err: deadpool_postgres::PoolError) -> SinkError {
    match err {
        deadpool_postgres::PoolError::Backend(err) => classify("connect to PostgreSQL", &err),
        // Waiting for a connection timed out, or the pool is closing.
        other => SinkError::unavailable("pool", format!("get a PostgreSQL connection: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_split_into_outage_retry_and_dead_letter() {
        // The server is out: not counted against the file while it lasts.
        for code in [
            "08006", "08001", "57P01", "57P02", "57P03", "53100", "53300", "58030",
        ] {
            assert!(is_unavailable_sqlstate(code), "{code}");
            assert!(!is_transient_sqlstate(code), "{code}");
        }
        // Worth another try, which counts.
        for code in ["40001", "40P01", "55P03", "57014", "25P02", "28P01"] {
            assert!(is_transient_sqlstate(code), "{code}");
            assert!(!is_unavailable_sqlstate(code), "{code}");
        }
        // The data: dead-lettered.
        for code in [
            "23505", "23502", "22003", "42P01", "42703", "42501", "22P03",
        ] {
            assert!(!is_transient_sqlstate(code), "{code}");
            assert!(!is_unavailable_sqlstate(code), "{code}");
        }
    }
}
