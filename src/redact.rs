//! Keeping secrets out of what the worker shows: log lines, error texts,
//! commit receipts, DLQ envelopes, `Debug` output and `check-config`.
//!
//! - A URL is shown with its user info and every query *value* replaced by
//!   `***` (parameter names kept) and its fragment dropped: ClickHouse and
//!   Tinybird accept credentials in the query string (`password=`,
//!   `token=`), and the worker cannot tell those from settings.
//! - A header, query parameter or key=value option whose name suggests a
//!   secret ([`is_sensitive_name`]) has its value replaced.
//! - [`config`] applies both to a whole resolved config, for
//!   `check-config`.

use std::sync::LazyLock;

use crate::config::Config;

/// What a secret is replaced with.
pub const REDACTED: &str = "***";

/// Whether a header, query parameter or option named `name` may carry a
/// secret: `Authorization`, `Proxy-Authorization`, `Cookie`, and any name
/// containing `token`, `key`, `secret`, `password`, `passwd`, `auth`,
/// `credential` or `session` (case-insensitive). Errs on the side of
/// hiding: `X-Key-Space` is hidden too.
pub fn is_sensitive_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "auth",
        "cookie",
        "token",
        "key",
        "secret",
        "password",
        "passwd",
        "credential",
        "session",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// `value`, or [`REDACTED`] when the header `name` is sensitive.
pub fn header_value<'a>(name: &str, value: &'a str) -> &'a str {
    if is_sensitive_name(name) {
        REDACTED
    } else {
        value
    }
}

/// A URL as it may be shown: `scheme://***@host/path?name=***&flag#***`.
/// Works on the text, so it also serves strings that do not parse.
pub fn url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    if let Some(index) = rest.find("://") {
        out.push_str(&rest[..index + 3]);
        rest = &rest[index + 3..];
        // User info cannot contain a raw '/', so the authority ends at the
        // first one; a '?' or '#' inside a malformed password is still
        // before the last '@'.
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            out.push_str(REDACTED);
            rest = &rest[at..];
        }
    }
    let (rest, fragment) = match rest.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (rest, None),
    };
    match rest.split_once('?') {
        Some((before, query)) => {
            out.push_str(before);
            out.push('?');
            out.push_str(&query_values(query));
        }
        None => out.push_str(rest),
    }
    if let Some(fragment) = fragment {
        out.push('#');
        if !fragment.is_empty() {
            out.push_str(REDACTED);
        }
    }
    out
}

/// `a=1&b&c=2` → `a=***&b&c=***`.
fn query_values(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() => format!("{name}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A PostgreSQL connection string as it may be shown: a URL as [`url`]
/// shows it; a `key=value` list with the values of sensitive keys
/// (`password`, `sslpassword`, ...) replaced.
pub fn connection_string(text: &str) -> String {
    if text.contains("://") {
        return url(text);
    }
    // libpq's form: key = value, the value bare or in single quotes with
    // backslash escapes.
    static OPTION: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"([A-Za-z_][A-Za-z0-9_]*)(\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)")
            .expect("valid regex")
    });
    OPTION
        .replace_all(text, |captures: &regex::Captures<'_>| {
            if is_sensitive_name(&captures[1]) {
                format!("{}{}{REDACTED}", &captures[1], &captures[2])
            } else {
                captures[0].to_owned()
            }
        })
        .into_owned()
}

/// Whether a config key (not a header name) holds a secret itself. Keys
/// ending in `_env` name an environment variable and are shown.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if key.ends_with("_env") {
        return false;
    }
    let words: Vec<&str> = key.split(['_', '-']).collect();
    words.iter().any(|word| {
        matches!(
            *word,
            "password" | "passwd" | "secret" | "token" | "credential" | "credentials" | "apikey"
        )
    }) || words
        .windows(2)
        .any(|pair| pair[1] == "key" && matches!(pair[0], "api" | "access" | "private" | "secret"))
}

/// The prefix of a header read from the environment, as it may be shown:
/// for a sensitive header only a bare authentication scheme (`"Bearer "`,
/// `"Basic "`) is shown, anything longer may hold part of the secret.
pub fn env_header_prefix<'a>(name: &str, prefix: &'a str) -> &'a str {
    let word = prefix.trim_end();
    let bare_scheme = word.len() <= 16 && word.chars().all(|c| c.is_ascii_alphabetic() || c == '-');
    if is_sensitive_name(name) && !bare_scheme {
        REDACTED
    } else {
        prefix
    }
}

/// The resolved config as `check-config` prints it: URLs and connection
/// strings as [`url`] and [`connection_string`] show them, sensitive
/// header values, secret keys and suspicious env header prefixes replaced
/// by [`REDACTED`]. Everything else is as resolved.
pub fn config(config: &Config) -> toml::Value {
    let mut value = toml::Value::try_from(config)
        .unwrap_or_else(|err| toml::Value::String(format!("<cannot render: {err}>")));
    redact_value(&mut value, "");
    value
}

fn redact_value(value: &mut toml::Value, key: &str) {
    match value {
        toml::Value::String(text) => {
            if is_secret_key(key) {
                *text = REDACTED.to_owned();
            } else if key == "url" || key.ends_with("_url") || text.contains("://") {
                *text = connection_string(text);
            }
        }
        toml::Value::Table(table) => {
            for (name, entry) in table.iter_mut() {
                match (key, entry) {
                    ("headers", toml::Value::String(text)) => {
                        if is_sensitive_name(name) {
                            *text = REDACTED.to_owned();
                        }
                    }
                    ("headers_from_env", toml::Value::Table(source)) => {
                        if let Some(toml::Value::String(prefix)) = source.get_mut("prefix") {
                            *prefix = env_header_prefix(name, prefix).to_owned();
                        }
                    }
                    (_, entry) => redact_value(entry, name),
                }
            }
        }
        toml::Value::Array(items) => {
            for item in items {
                redact_value(item, key);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_header_names() {
        for name in [
            "Authorization",
            "proxy-authorization",
            "Cookie",
            "X-ClickHouse-Key",
            "X-API-TOKEN",
            "x-secret-thing",
            "X-Password",
            "X-Auth",
        ] {
            assert!(is_sensitive_name(name), "{name}");
        }
        for name in [
            "X-Team",
            "Content-Type",
            "X-ClickHouse-User",
            "X-ClickHouse-Format",
        ] {
            assert!(!is_sensitive_name(name), "{name}");
        }
        assert_eq!(header_value("Authorization", "Bearer x"), REDACTED);
        assert_eq!(header_value("X-Team", "data"), "data");
    }

    #[test]
    fn urls_lose_user_info_query_values_and_fragment() {
        for (text, shown) in [
            (
                "https://user:pw@ch.example.com:8443/?query=INSERT%20INTO%20t&password=pw",
                "https://***@ch.example.com:8443/?query=***&password=***",
            ),
            ("http://127.0.0.1:9/insert", "http://127.0.0.1:9/insert"),
            ("http://u@h", "http://***@h"),
            ("http://h?token=abc", "http://h?token=***"),
            (
                "http://h/p?flag&a=&b=2#frag",
                "http://h/p?flag&a=&b=***#***",
            ),
            // A malformed password with '?' and '#' in it stays hidden.
            ("http://u:p?x#y@h/path", "http://***@h/path"),
            // An '@' in the path or query is not user info.
            ("http://h/a@b?c=d@e", "http://h/a@b?c=***"),
            (
                "postgres://ingest:pw@db/warehouse?sslmode=require",
                "postgres://***@db/warehouse?sslmode=***",
            ),
            ("not a url", "not a url"),
        ] {
            assert_eq!(url(text), shown, "{text}");
        }
    }

    #[test]
    fn key_value_connection_strings_lose_passwords() {
        assert_eq!(
            connection_string("host=db user=ingest password=s3cr3t dbname=w"),
            "host=db user=ingest password=*** dbname=w"
        );
        assert_eq!(
            connection_string("host=db password = 'a b\\' c' sslpassword=x"),
            "host=db password = *** sslpassword=***"
        );
        assert_eq!(
            connection_string("postgres://u:pw@h/db"),
            "postgres://***@h/db"
        );
    }

    #[test]
    fn config_keys_that_hold_secrets() {
        for key in [
            "password",
            "api_key",
            "client_secret",
            "token",
            "access_key",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in [
            "password_env",
            "url_env",
            "key_glob",
            "partition_key",
            "idempotency_header",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn a_resolved_config_is_printed_without_its_secrets() {
        let config = Config::from_toml_str(
            r#"
            [aws]
            endpoint_url = "http://admin:awspw@127.0.0.1:4566"

            [queue]
            url = "http://127.0.0.1:4566/queue/us-east-1/000000000000/q"

            [[routes]]
            name = "orders"
            key_glob = "orders/**"
            sinks = ["ch", "pg"]

            [sinks.ch]
            type = "http"
            url = "http://127.0.0.1:8123/?query=INSERT&password=chpw"
            format = "ndjson"
            headers = { X-Team = "data", X-Api-Token = "inline-token" }
            headers_from_env = { Authorization = { env = "TB_TOKEN", prefix = "Bearer " }, X-Session = { env = "S", prefix = "sessionpw:" } }

            [sinks.pg]
            type = "postgres"
            url = "host=db user=ingest"
            password_env = "PG_PASSWORD"
            table = "orders"
            "#,
        )
        .unwrap();
        let text = toml::to_string_pretty(&super::config(&config)).unwrap();
        for secret in ["awspw", "chpw", "inline-token", "sessionpw", "INSERT"] {
            assert!(!text.contains(secret), "{secret} in:\n{text}");
        }
        for shown in [
            "http://***@127.0.0.1:4566",
            "/queue/us-east-1/000000000000/q",
            "http://127.0.0.1:8123/?query=***&password=***",
            "X-Team = \"data\"",
            "X-Api-Token = \"***\"",
            "prefix = \"Bearer \"",
            "env = \"TB_TOKEN\"",
            "password_env = \"PG_PASSWORD\"",
            "url = \"host=db user=ingest\"",
            "key_glob = \"orders/**\"",
        ] {
            assert!(text.contains(shown), "{shown} missing from:\n{text}");
        }
    }
}
