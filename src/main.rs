//! The `s3-ingest` binary: CLI, config, logging and signals. Everything
//! else lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use s3_ingest::config::{CONFIG_TOML_VAR, Config, ConfigSource};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("S3_INGEST_COMMIT"), ")"),
    about = "Ingests CSV and Parquet files the moment they land in S3"
)]
struct Cli {
    /// The TOML config: a local path, s3://BUCKET/KEY or ssm://NAME (read
    /// with the SDK's default region and credentials), or else the whole
    /// TOML in S3_INGEST_CONFIG_TOML. Every key can also be set with
    /// S3_INGEST__SECTION__KEY.
    #[arg(long, short, global = true, env = "S3_INGEST_CONFIG")]
    config: Option<String>,

    /// Log line format: human-readable text or JSON (for CloudWatch).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "S3_INGEST_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker until SIGTERM or SIGINT (the default).
    Run,
    /// Validate the config and print it resolved (secrets redacted), with
    /// its routes.
    CheckConfig,
    /// Exit 0 if the running worker's /healthz answers 200 (for container
    /// health checks; no curl needed). Needs no config: only where the
    /// status endpoints listen.
    Healthcheck {
        /// The URL to probe; overrides everything below.
        #[arg(long)]
        url: Option<String>,
        /// The worker's status.listen_addr (the port is what counts). When
        /// unset: the config file's `[status] listen_addr` if a file is
        /// given (nothing else in it is read), else 0.0.0.0:9090.
        #[arg(long, env = "S3_INGEST__STATUS__LISTEN_ADDR")]
        listen_addr: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout belongs to the stdout sink.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn load_config(flag: Option<&str>) -> Result<Config, s3_ingest::config::ConfigError> {
    let inline = std::env::var(CONFIG_TOML_VAR).ok();
    let source = ConfigSource::choose(flag, inline.as_deref())?;
    let text = match &source {
        Some(source) => Some(source.read(inline.as_deref()).await?),
        None => None,
    };
    let file = source.as_ref().zip(text.as_deref());
    Config::from_source(file, std::env::vars())
}

async fn check_config(config: &Config) -> ExitCode {
    // Environment overrides are resolved in: secrets are redacted.
    println!("# resolved configuration (secrets shown as ***)\n");
    println!(
        "{}",
        toml::to_string_pretty(&s3_ingest::redact::config(config))
            .unwrap_or_else(|err| format!("<cannot render: {err}>"))
    );
    println!("# routes, first match wins");
    for (index, route) in config.routes.iter().enumerate() {
        println!(
            "{index}: {name}: bucket {bucket}, key {glob} -> format {format:?}, sink {sink}",
            name = route.name,
            bucket = route.bucket.as_deref().unwrap_or("*"),
            glob = route.key_glob,
            format = route.format,
            sink = route.sink_names().join(" + "),
        );
    }
    let failures = s3_ingest::check_sinks(config).await;
    for (name, err) in &failures {
        eprintln!("error: cannot set up sink `{name}`: {err}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

/// The first SIGTERM/SIGINT starts a graceful drain; a second one exits
/// at once.
fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("install SIGTERM handler");
        let mut signals = 0;
        loop {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            signals += 1;
            if signals == 1 {
                info!("shutdown requested; finishing in-flight work (signal again to exit now)");
                shutdown.cancel();
            } else {
                warn!("second signal; exiting now without waiting for in-flight work");
                std::process::exit(130);
            }
        }
    });
}

async fn healthcheck(
    url: Option<&str>,
    listen_addr: Option<&str>,
    config_file: Option<&std::path::Path>,
) -> ExitCode {
    let url = match (url, listen_addr, config_file) {
        (Some(url), _, _) => url.to_owned(),
        (None, Some(addr), _) => s3_ingest::status::local_healthz_url(addr),
        (None, None, Some(path)) => match s3_ingest::config::status_listen_addr(path) {
            Ok(addr) => s3_ingest::status::local_healthz_url(&addr),
            Err(err) => {
                eprintln!("unhealthy: {err}");
                return ExitCode::FAILURE;
            }
        },
        (None, None, None) => s3_ingest::status::local_healthz_url(
            &s3_ingest::config::StatusConfig::default().listen_addr,
        ),
    };
    match s3_ingest::status::probe(&url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("unhealthy: {err}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    // The container health check runs every few seconds in the worker's
    // environment: it must not fail on (or even read) the rest of the
    // config, nor fetch it from elsewhere.
    if let Some(Command::Healthcheck { url, listen_addr }) = &cli.command {
        return healthcheck(
            url.as_deref(),
            listen_addr.as_deref(),
            // Only a local file is read (for its status address); an S3
            // object or SSM parameter is not fetched every few seconds.
            cli.config
                .as_deref()
                .and_then(|flag| match ConfigSource::parse(flag) {
                    Ok(ConfigSource::File(path)) => Some(path),
                    _ => None,
                })
                .as_deref(),
        )
        .await;
    }
    let config = match load_config(cli.config.as_deref()).await {
        Ok(config) => config,
        Err(err) => {
            error!("invalid configuration: {err}");
            eprintln!("error: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => check_config(&config).await,
        Command::Healthcheck { .. } => unreachable!("handled before the config is loaded"),
        Command::Run => {
            let shutdown = CancellationToken::new();
            spawn_signal_handler(shutdown.clone());
            match s3_ingest::run(config, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    error!("{err}");
                    eprintln!("error: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
