//! Where the config file comes from: a local path, an S3 object, an SSM
//! parameter, or the whole TOML in one environment variable. On ECS the
//! file is then delivered without baking it into the image or spelling
//! routes and schemas as dozens of `S3_INGEST__…` variables.
//!
//! The S3 and SSM reads happen before the config exists, so they use the
//! SDK's default chain for region, credentials and endpoint (`AWS_REGION`,
//! the task role, `AWS_ENDPOINT_URL`), not the config's `[aws]` section.

use std::fmt;
use std::path::PathBuf;

use aws_config::BehaviorVersion;

use super::ConfigError;
use crate::error::with_causes;

/// The variable that carries the whole config as TOML text (set from a
/// file by Terraform, for instance).
pub const CONFIG_TOML_VAR: &str = "S3_INGEST_CONFIG_TOML";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    /// `s3://bucket/key`
    S3 {
        bucket: String,
        key: String,
    },
    /// `ssm://NAME`: a parameter name (`ssm:///s3-ingest/prod` for
    /// `/s3-ingest/prod`) or ARN, String or SecureString.
    Ssm {
        name: String,
    },
    /// [`CONFIG_TOML_VAR`].
    Env,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(path) => write!(f, "config file {}", path.display()),
            ConfigSource::S3 { bucket, key } => write!(f, "config s3://{bucket}/{key}"),
            ConfigSource::Ssm { name } => write!(f, "config SSM parameter {name}"),
            ConfigSource::Env => write!(f, "config in {CONFIG_TOML_VAR}"),
        }
    }
}

impl ConfigSource {
    /// `--config`'s value: `s3://…`, `ssm://…`, else a local path.
    pub fn parse(value: &str) -> Result<ConfigSource, ConfigError> {
        let refuse = |message: &str| ConfigError::Source {
            source_name: format!("config {value}"),
            message: message.to_owned(),
        };
        if let Some(rest) = value.strip_prefix("s3://") {
            let (bucket, key) = rest
                .split_once('/')
                .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty())
                .ok_or_else(|| refuse("expected s3://BUCKET/KEY"))?;
            return Ok(ConfigSource::S3 {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            });
        }
        if let Some(name) = value.strip_prefix("ssm://") {
            if name.is_empty() {
                return Err(refuse(
                    "expected ssm://NAME (ssm:///path/name for a name starting with /)",
                ));
            }
            return Ok(ConfigSource::Ssm {
                name: name.to_owned(),
            });
        }
        if value.contains("://") {
            return Err(refuse(
                "only s3:// and ssm:// locations are read; anything else is a local path",
            ));
        }
        Ok(ConfigSource::File(PathBuf::from(value)))
    }

    /// The source named by `--config` (or `S3_INGEST_CONFIG`) and by
    /// [`CONFIG_TOML_VAR`]: at most one of them.
    pub fn choose(
        flag: Option<&str>,
        inline: Option<&str>,
    ) -> Result<Option<ConfigSource>, ConfigError> {
        match (flag, inline) {
            (Some(flag), Some(_)) => Err(ConfigError::Source {
                source_name: format!("config {flag}"),
                message: format!("{CONFIG_TOML_VAR} is set too; give the config one way, not two"),
            }),
            (Some(flag), None) => ConfigSource::parse(flag).map(Some),
            (None, Some(_)) => Ok(Some(ConfigSource::Env)),
            (None, None) => Ok(None),
        }
    }

    /// The TOML text. `inline` is [`CONFIG_TOML_VAR`]'s value.
    pub async fn read(&self, inline: Option<&str>) -> Result<String, ConfigError> {
        let fail = |message: String| ConfigError::Source {
            source_name: self.to_string(),
            message,
        };
        match self {
            ConfigSource::File(path) => {
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })
            }
            ConfigSource::Env => Ok(inline.unwrap_or_default().to_owned()),
            ConfigSource::S3 { bucket, key } => {
                let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
                let object = aws_sdk_s3::Client::new(&sdk)
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|err| fail(with_causes(&err)))?;
                let bytes = object
                    .body
                    .collect()
                    .await
                    .map_err(|err| fail(with_causes(&err)))?
                    .into_bytes();
                String::from_utf8(bytes.to_vec()).map_err(|_| fail("not UTF-8 text".into()))
            }
            ConfigSource::Ssm { name } => {
                let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
                let parameter = aws_sdk_ssm::Client::new(&sdk)
                    .get_parameter()
                    .name(name)
                    .with_decryption(true)
                    .send()
                    .await
                    .map_err(|err| fail(with_causes(&err)))?;
                parameter
                    .parameter
                    .and_then(|parameter| parameter.value)
                    .ok_or_else(|| fail("the parameter has no value".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_by_scheme() {
        assert_eq!(
            ConfigSource::parse("s3://configs/s3-ingest/prod.toml").unwrap(),
            ConfigSource::S3 {
                bucket: "configs".into(),
                key: "s3-ingest/prod.toml".into()
            }
        );
        assert_eq!(
            ConfigSource::parse("ssm:///s3-ingest/prod").unwrap(),
            ConfigSource::Ssm {
                name: "/s3-ingest/prod".into()
            }
        );
        assert_eq!(
            ConfigSource::parse("/etc/s3-ingest.toml").unwrap(),
            ConfigSource::File("/etc/s3-ingest.toml".into())
        );
        for bad in [
            "s3://bucket-only",
            "s3:///key",
            "ssm://",
            "https://example.com/x.toml",
        ] {
            let err = ConfigSource::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn one_source_at_most() {
        assert_eq!(ConfigSource::choose(None, None).unwrap(), None);
        assert_eq!(
            ConfigSource::choose(None, Some("[queue]")).unwrap(),
            Some(ConfigSource::Env)
        );
        let err = ConfigSource::choose(Some("a.toml"), Some("[queue]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(CONFIG_TOML_VAR), "{err}");
    }
}
