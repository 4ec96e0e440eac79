//! TLS for the `postgres` sink: a rustls connector that always verifies
//! the server's certificate chain and host name, and the `sslmode` values
//! libpq knows but tokio-postgres does not parse.
//!
//! tokio-postgres decides whether to use TLS from `sslmode` (`disable`:
//! never; `prefer`: when the server offers it; `require`: always, failing
//! when the server refuses); this module decides *how*. Unlike libpq, whose
//! `prefer` and `require` encrypt without checking the certificate, every
//! TLS connection here is verified against the trusted roots (the system's
//! store plus `ca_file`), so `require`, `verify-ca` and `verify-full` all
//! mean the same: encrypted, chain and host name checked.

use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use regex::Regex;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::SinkError;

/// libpq's `sslmode=verify-ca` and `verify-full`, in a URL query
/// (`?sslmode=verify-full&...`) or a `key=value` list (`sslmode =
/// 'verify-full'`).
static VERIFYING_SSLMODE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(^|[?&\s])sslmode\s*=\s*'?verify-(?:ca|full)'?").expect("valid regex")
});

/// Parses a libpq connection string (URL or `key=value` list), accepting
/// `sslmode=verify-ca` and `verify-full` as `require`: with this connector
/// `require` already verifies the chain and the host name.
pub(super) fn parse_connection_string(
    text: &str,
) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let text: Cow<str> = VERIFYING_SSLMODE.replace_all(text, "${1}sslmode=require");
    text.parse()
}

/// The connector for every connection of one sink. Roots are the system's
/// certificate store plus every certificate in `ca_file`; a `ca_file` that
/// cannot be read or holds no valid certificate is a start-up error, and
/// so is `sslmode=require` with no trusted root at all (every connection
/// would fail).
pub(super) fn connector(
    sink: &str,
    ca_file: Option<&Path>,
    tls_required: bool,
) -> Result<MakeRustlsConnect, SinkError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        // A broken file in the system store should not stop the worker;
        // the certificates that did load still count.
        tracing::warn!(sink, error = %err, "some system CA certificates could not be loaded");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        for cert in read_ca_file(path).map_err(|reason| {
            SinkError::permanent(format!(
                "sink `{sink}`: ca_file {}: {reason}",
                path.display()
            ))
        })? {
            roots.add(cert).map_err(|err| {
                SinkError::permanent(format!(
                    "sink `{sink}`: ca_file {}: not a usable CA certificate: {err}",
                    path.display()
                ))
            })?;
        }
    }
    if roots.is_empty() && tls_required {
        return Err(SinkError::permanent(format!(
            "sink `{sink}`: sslmode requires TLS but no CA certificate is trusted: the system store is empty and ca_file is not set"
        )));
    }
    // aws-lc-rs is the provider rustls is already built with (for S3 and
    // SQS); naming it avoids depending on a process-wide default.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| SinkError::permanent(format!("sink `{sink}`: TLS set-up: {err}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // PostgreSQL 17's direct TLS negotiation (`sslnegotiation=direct`)
    // requires this ALPN protocol; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeRustlsConnect::new(config))
}

/// Every certificate of a PEM bundle (such as the RDS CA bundle).
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|err| format!("cannot be read: {err}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("not a PEM certificate bundle: {err}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::SslMode;

    #[test]
    fn verifying_sslmodes_parse_as_require() {
        for text in [
            "postgres://u@db.example/app?sslmode=verify-full",
            "postgres://u@db.example/app?connect_timeout=5&sslmode=verify-ca",
            "host=db.example user=u sslmode=verify-full",
            "host=db.example sslmode = 'verify-ca' user=u",
            "sslmode=verify-full host=db.example",
        ] {
            let config = parse_connection_string(text).unwrap();
            assert_eq!(config.get_ssl_mode(), SslMode::Require, "{text}");
        }
        let config = parse_connection_string("host=h sslmode=disable").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Disable);
        let config = parse_connection_string("postgres://h/db").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Prefer);
        // Only a whole `sslmode` option is rewritten.
        assert!(parse_connection_string("host=h xsslmode=verify-full").is_err());
        assert!(parse_connection_string("host=h sslmode=allow-me").is_err());
    }

    #[test]
    fn an_unusable_ca_file_is_a_start_up_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = connector("pg", Some(&missing), true).err().unwrap();
        assert!(!err.is_retryable());
        assert!(
            err.detail.contains("missing.pem") && err.detail.contains("cannot be read"),
            "{}",
            err.detail
        );

        let not_pem = dir.path().join("not-pem.pem");
        std::fs::write(&not_pem, "just text\n").unwrap();
        let err = connector("pg", Some(&not_pem), true).err().unwrap();
        assert!(
            err.detail.contains("holds no PEM certificate"),
            "{}",
            err.detail
        );

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = connector("pg", Some(&garbage), true).err().unwrap();
        assert!(
            err.detail.contains("garbage.pem") && err.detail.contains("not a usable CA"),
            "{}",
            err.detail
        );
    }
}
