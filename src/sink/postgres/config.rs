//! `[sinks.NAME]` of `type = "postgres"`: the settings, their defaults and
//! validation, and the connection string with its secret read from the
//! environment.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::table::QualifiedName;
use super::tls;
use crate::sink::SinkError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Name of an environment variable holding the connection string (a
    /// libpq URL or `key=value` list, password included). Exactly one of
    /// `url_env` and `url` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// A connection string without a password, for servers that need none
    /// or with `password_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Name of an environment variable holding the password for `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Target table, `name` or `schema.name`, used exactly as written
    /// (quoted, so case-sensitive).
    pub table: String,
    /// Creates the table from the first file's schema when it is missing.
    #[serde(default)]
    pub create_table: bool,
    /// The ingest ledger table, created when missing.
    #[serde(default = "default_ledger_table")]
    pub ledger_table: String,
    /// Connections kept at most; objects beyond it wait for one.
    #[serde(default = "default_pool_size")]
    pub pool_size: NonZeroUsize,
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// A PEM bundle of CA certificates trusted for the server's TLS
    /// certificate (such as the RDS CA bundle), in addition to the
    /// system's store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_ledger_table() -> String {
    "s3_ingest_ledger".into()
}

fn default_pool_size() -> NonZeroUsize {
    NonZeroUsize::new(4).unwrap()
}

fn default_connect_timeout_secs() -> u64 {
    10
}

impl PostgresSinkConfig {
    /// Errors are (field relative to `sinks.NAME.`, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |field: &str, message: &str| Err((field.to_owned(), message.to_owned()));
        match (&self.url_env, &self.url) {
            (Some(_), Some(_)) => return err("url", "set either url or url_env, not both"),
            (None, None) => {
                return err(
                    "url_env",
                    "name the environment variable holding the connection string (or set url without a password)",
                );
            }
            (Some(name), None) if !is_env_var_name(name) => {
                return err("url_env", "must be an environment variable name");
            }
            (Some(_), None) if self.password_env.is_some() => {
                return err(
                    "password_env",
                    "only with url; put the password in url_env's URL",
                );
            }
            (None, Some(url)) => match tls::parse_connection_string(url) {
                // The parser's messages name the option, never the value.
                Err(parse_err) => {
                    return Err((
                        "url".into(),
                        format!(
                            "not a connection string: {}",
                            crate::error::with_causes(&parse_err)
                        ),
                    ));
                }
                Ok(parsed) if parsed.get_password().is_some() => {
                    return err(
                        "url",
                        "must not contain a password: use password_env or url_env",
                    );
                }
                Ok(_) => {}
            },
            _ => {}
        }
        if let Some(name) = &self.password_env
            && !is_env_var_name(name)
        {
            return err("password_env", "must be an environment variable name");
        }
        if let Err(message) = QualifiedName::parse(&self.table) {
            return Err(("table".into(), message));
        }
        if let Err(message) = QualifiedName::parse(&self.ledger_table) {
            return Err(("ledger_table".into(), message));
        }
        if self.connect_timeout_secs == 0 {
            return err("connect_timeout_secs", "must be at least 1");
        }
        if self
            .ca_file
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return err("ca_file", "must be a path to a PEM file");
        }
        Ok(())
    }

    /// The connection settings, with the secret read from the environment.
    pub(super) fn connection_config(
        &self,
        sink: &str,
    ) -> Result<tokio_postgres::Config, SinkError> {
        let read_env = |field: &str, name: &str| {
            std::env::var(name).map_err(|_| {
                SinkError::permanent(format!(
                    "sink `{sink}`: environment variable {name} (named by {field}) is not set"
                ))
            })
        };
        let mut config = match (&self.url_env, &self.url) {
            (Some(name), _) => {
                let url = read_env("url_env", name)?;
                // Never echo the string: it holds the password.
                tls::parse_connection_string(&url).map_err(|err| {
                    SinkError::permanent(format!(
                        "sink `{sink}`: environment variable {name} is not a connection string: {}",
                        crate::error::with_causes(&err)
                    ))
                })?
            }
            (None, Some(url)) => tls::parse_connection_string(url).map_err(|err| {
                SinkError::permanent(format!(
                    "sink `{sink}`: url is not a connection string: {}",
                    crate::error::with_causes(&err)
                ))
            })?,
            (None, None) => {
                return Err(SinkError::permanent(format!(
                    "sink `{sink}`: no url or url_env"
                )));
            }
        };
        if let Some(name) = &self.password_env {
            config.password(read_env("password_env", name)?);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(self.connect_timeout_secs));
        }
        if config.get_application_name().is_none() {
            config.application_name("s3-ingest");
        }
        Ok(config)
    }
}

fn is_env_var_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::SslMode;

    fn config(extra: &str) -> Result<PostgresSinkConfig, String> {
        let text = format!("table = \"public.orders\"\n{extra}");
        let config: PostgresSinkConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        config
            .validate()
            .map_err(|(field, message)| format!("{field}: {message}"))?;
        Ok(config)
    }

    #[test]
    fn config_needs_exactly_one_secret_free_connection_source() {
        let ok = config("url_env = \"PG_URL\"").unwrap();
        assert_eq!(ok.ledger_table, "s3_ingest_ledger");
        assert_eq!(ok.pool_size.get(), 4);
        assert!(!ok.create_table);
        assert!(config("").unwrap_err().starts_with("url_env:"));
        assert!(
            config("url = \"postgres://u:secret@h/db\"")
                .unwrap_err()
                .contains("password")
        );
        assert!(config("url = \"postgres://u@h/db\"\npassword_env = \"PGPASS\"").is_ok());
        assert!(
            config("url_env = \"A\"\nurl = \"postgres://h\"")
                .unwrap_err()
                .starts_with("url:")
        );
        assert!(
            config("url_env = \"not a name\"")
                .unwrap_err()
                .starts_with("url_env:")
        );
        assert!(config("url_env = \"A\"\npool_size = 0").is_err());
        assert!(
            config("url_env = \"A\"\nledger_table = \"a.b.c\"")
                .unwrap_err()
                .starts_with("ledger_table:")
        );
        assert!(
            config("url_env = \"A\"\nschema = \"x\"").is_err(),
            "unknown keys are rejected"
        );
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../../examples/sink-postgres.toml");
        let config = crate::config::Config::from_toml_str(text).unwrap();
        match &config.sinks["warehouse"] {
            crate::config::SinkConfig::Postgres(sink) => {
                assert_eq!(sink.url_env.as_deref(), Some("ORDERS_PG_URL"));
            }
            other => panic!("unexpected sink {other:?}"),
        }
    }

    #[test]
    fn a_missing_environment_variable_is_a_clear_start_up_error() {
        let config = config("url_env = \"S3I_TEST_SURELY_UNSET_PG_URL\"").unwrap();
        let err = config.connection_config("warehouse").unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.detail.contains("S3I_TEST_SURELY_UNSET_PG_URL") && err.detail.contains("warehouse"),
            "{}",
            err.detail
        );
    }

    #[test]
    fn verifying_sslmodes_are_accepted_as_require() {
        assert!(
            config("url_env = \"A\"\nca_file = \"\"")
                .unwrap_err()
                .starts_with("ca_file:")
        );
        let sink = config("url = \"postgres://u@h/db?sslmode=verify-full\"").unwrap();
        let connection = sink.connection_config("warehouse").unwrap();
        assert_eq!(connection.get_ssl_mode(), SslMode::Require);
        // libpq's sslrootcert is not understood: the message names it.
        assert!(
            config("url = \"postgres://h/db?sslrootcert=/etc/rds.pem\"")
                .unwrap_err()
                .contains("unknown option `sslrootcert`")
        );
    }
}
