//! The `s3-ingest` binary: CLI, config, logging and signals. Everything
//! else lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use s3_ingest::config::{CONFIG_TOML_VAR, Config, ConfigSource};
use s3_ingest::operate::{Operator, backfill, dlq, trace};
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
    /// Look at, replay or purge the dead-letter queue (queue.dlq_url).
    /// Reading never consumes: messages are hidden while a command walks
    /// the queue and released when it ends.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Ingest the objects already under s3://BUCKET/PREFIX that a route
    /// claims: enqueue a synthetic event per object for the fleet (or
    /// ingest here with --now), skipping those the sinks hold already.
    Backfill(BackfillArgs),
    /// What happened to one object: its current version and route, whether
    /// each sink of the route holds it, its dead-letter envelopes (the DLQ
    /// is read, never consumed) and the source queue, summed up in one
    /// line. Exit 0 when the trace could be made, whatever it found.
    Trace(TraceArgs),
}

#[derive(Subcommand)]
enum DlqCommand {
    /// The selected envelopes grouped by error kind, route and bucket,
    /// with counts, oldest/newest and samples.
    List {
        #[command(flatten)]
        select: SelectArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// The selected envelopes in full.
    Inspect {
        #[command(flatten)]
        select: SelectArgs,
        /// Print at most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Send the selected objects back to the source queue (or ingest them
    /// here with --now), deleting each envelope once that succeeded. The
    /// object's current version is replayed: when it has a newer version
    /// since, that one (usually already committed by its own
    /// notification, then reported so); one deleted since is reported as
    /// gone.
    Replay {
        #[command(flatten)]
        select: SelectArgs,
        /// Ingest in this process instead of sending to the source queue.
        #[arg(long)]
        now: bool,
        /// Print what would happen; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Delete the selected envelopes for good.
    Purge {
        #[command(flatten)]
        select: SelectArgs,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(clap::Args)]
struct SelectArgs {
    /// Only this error kind (repeatable), e.g. csv_error; not_an_envelope
    /// selects messages SQS's own redrive policy moved.
    #[arg(long = "error-kind")]
    error_kinds: Vec<String>,
    /// Only this route (repeatable).
    #[arg(long = "route")]
    routes: Vec<String>,
    /// Only this source bucket (repeatable).
    #[arg(long = "bucket")]
    buckets: Vec<String>,
    /// Only keys matching this glob (as a route's key_glob).
    #[arg(long = "key")]
    key_glob: Option<String>,
    /// Only envelopes that failed at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only envelopes that failed before this time (RFC 3339).
    #[arg(long)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// How long messages stay hidden from others while the command walks
    /// the DLQ (it releases them when it ends).
    #[arg(long, default_value_t = 900)]
    hide_secs: u64,
}

impl SelectArgs {
    fn selector(&self) -> Result<dlq::Selector, String> {
        let key_glob = match &self.key_glob {
            Some(glob) => Some(
                globset::GlobBuilder::new(glob)
                    .literal_separator(true)
                    .build()
                    .map_err(|err| format!("--key {glob}: {err}"))?
                    .compile_matcher(),
            ),
            None => None,
        };
        Ok(dlq::Selector {
            error_kinds: self.error_kinds.clone(),
            routes: self.routes.clone(),
            buckets: self.buckets.clone(),
            key_glob,
            since: self.since,
            until: self.until,
        })
    }
}

#[derive(clap::Args)]
struct BackfillArgs {
    /// s3://BUCKET/PREFIX to list.
    location: String,
    /// Only objects last modified at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only objects last modified before this time (RFC 3339).
    #[arg(long)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only objects of this route.
    #[arg(long)]
    route: Option<String>,
    /// Resume after this key (the summary of an interrupted run names it).
    #[arg(long)]
    start_after: Option<String>,
    /// Ingest in this process instead of enqueueing events.
    #[arg(long)]
    now: bool,
    /// Count what would be enqueued; change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
struct TraceArgs {
    /// s3://BUCKET/KEY of the object (the key verbatim, not URL-encoded).
    object: String,
    /// Ask the sinks about this version instead of the current one.
    #[arg(long)]
    version_id: Option<String>,
    /// Also look for messages naming the object on the source queue.
    /// Careful: this receives every message it can see there and hides it
    /// from the workers for up to --peek-hide-secs (released at the end),
    /// and each such receive counts toward queue.max_receive_count, as a
    /// worker's receive does.
    #[arg(long)]
    peek_queue: bool,
    /// How long --peek-queue hides each source message from the workers.
    #[arg(long, default_value_t = 30, requires = "peek_queue")]
    peek_hide_secs: u64,
    /// --peek-queue stops after this many messages.
    #[arg(long, default_value_t = 1000, requires = "peek_queue")]
    peek_max: usize,
    /// How long the DLQ walk hides each envelope (released at the end).
    #[arg(long, default_value_t = 900)]
    dlq_hide_secs: u64,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
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
    // Validation compiled every contract already; this prints them.
    let router = s3_ingest::route::Router::new(&config.routes);
    for route in router.iter().flat_map(|router| router.routes()) {
        if let Some(contract) = &route.contract {
            println!("\n# contract of route {}", route.name);
            for line in contract.describe() {
                println!("  {line}");
            }
        }
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

/// Builds what the operator's commands need and runs one.
async fn operate<F, Fut>(config: &Config, command: F) -> ExitCode
where
    F: FnOnce(Operator) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, String>>,
{
    let clients = s3_ingest::AwsClients::from_config(&config.aws).await;
    let operator = match Operator::build(config, clients).await {
        Ok(operator) => operator,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    match command(operator).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn dlq_command(operator: Operator, command: DlqCommand) -> Result<ExitCode, String> {
    let Some(dlq_queue) = &operator.dlq else {
        return Err(
            "queue.dlq_url is not configured: there is no dead-letter queue to read".into(),
        );
    };
    let mut out = std::io::stdout().lock();
    let io = |err: std::io::Error| err.to_string();
    match command {
        DlqCommand::List { select, format } => {
            let mut grouper = dlq::Grouper::default();
            dlq::for_each_selected(dlq_queue, select.hide_secs, &select.selector()?, |entry| {
                grouper.add(&entry)
            })
            .await
            .map_err(|err| err.to_string())?;
            let groups = grouper.finish();
            match format {
                OutputFormat::Text => dlq::print_groups(&groups, &mut out).map_err(io)?,
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&groups).map_err(|e| e.to_string())?
                ),
            }
        }
        DlqCommand::Inspect {
            select,
            limit,
            format,
        } => {
            // Printed as they are read: nothing is held in memory.
            let mut printed = 0;
            let mut more = 0;
            let mut failure = None;
            dlq::for_each_selected(dlq_queue, select.hide_secs, &select.selector()?, |entry| {
                if printed >= limit {
                    more += 1;
                    return;
                }
                printed += 1;
                let written = match format {
                    OutputFormat::Text => dlq::print_inspected(&entry, &mut out),
                    OutputFormat::Json => serde_json::to_string(&dlq::Inspected::of(&entry))
                        .map_err(std::io::Error::other)
                        .and_then(|line| {
                            std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes())
                        }),
                };
                if let Err(err) = written {
                    failure.get_or_insert(err);
                }
            })
            .await
            .map_err(|err| err.to_string())?;
            if let Some(err) = failure {
                return Err(io(err));
            }
            if more > 0 {
                eprintln!("{more} more selected; raise --limit or narrow the selection");
            }
        }
        DlqCommand::Replay {
            select,
            now,
            dry_run,
            format,
        } => {
            let replayer = dlq::Replayer {
                source: &operator.source,
                router: &operator.router,
                ingestor: &operator.ingestor,
                now,
                dry_run,
            };
            let prefix = if dry_run { "would be " } else { "" };
            let tally = dlq::replay(
                dlq_queue,
                select.hide_secs,
                &select.selector()?,
                &replayer,
                |entry, action| {
                    let object = entry
                        .bucket()
                        .zip(entry.key())
                        .map(|(b, k)| format!("s3://{b}/{k}"))
                        .unwrap_or_else(|| format!("message {}", entry.message.message_id));
                    let detail = match (action, action.superseded()) {
                        (dlq::ReplayAction::Kept { reason }, _) => format!(": {reason}"),
                        (_, Some(failed)) => format!(
                            " (version {failed} is superseded: the current version instead)"
                        ),
                        _ => String::new(),
                    };
                    if format == OutputFormat::Text {
                        println!("{object}: {prefix}{}{detail}", action.label());
                    }
                },
            )
            .await
            .map_err(|err| err.to_string())?;
            match format {
                OutputFormat::Text => println!(
                    "{} selected; {}{}",
                    tally.selected,
                    prefix,
                    tally
                        .by_action
                        .iter()
                        .map(|(action, count)| format!("{action} {count}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&tally).map_err(|e| e.to_string())?
                ),
            }
            if tally.delete_failures > 0 || tally.by_action.contains_key("kept") {
                return Ok(ExitCode::FAILURE);
            }
        }
        DlqCommand::Purge { select, yes } => {
            let tally = dlq::purge(dlq_queue, select.hide_secs, &select.selector()?, |groups| {
                let _ = dlq::print_groups(groups, &mut std::io::stdout());
                yes || confirm("delete these messages from the DLQ for good?")
            })
            .await
            .map_err(|err| err.to_string())?;
            let purged = tally.by_action.get("purged").copied().unwrap_or(0);
            println!("{} selected; purged {purged}", tally.selected);
            if tally.delete_failures > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal; anything but "yes" is no (and so is no terminal).
fn confirm(question: &str) -> bool {
    use std::io::{BufRead, Write};
    if !std::io::stdin().is_terminal() {
        eprintln!("not a terminal: pass --yes to confirm");
        return false;
    }
    eprint!("{question} type yes: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    answer.trim() == "yes"
}

async fn backfill_command(operator: Operator, args: BackfillArgs) -> Result<ExitCode, String> {
    let (bucket, prefix) = backfill::parse_location(&args.location)?;
    if let Some(route) = &args.route
        && !operator.router.routes().iter().any(|r| &r.name == route)
    {
        return Err(format!("--route {route}: no such route"));
    }
    let request = backfill::BackfillRequest {
        bucket,
        prefix,
        since: args.since,
        until: args.until,
        route: args.route,
        start_after: args.start_after,
        now: args.now,
        dry_run: args.dry_run,
    };
    // A first signal stops after the object at hand, with a summary that
    // says where to resume.
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    let backfiller = backfill::Backfiller {
        objects: &operator.objects,
        router: &operator.router,
        ingestor: &operator.ingestor,
        queue: &operator.source,
    };
    let summary = backfiller.run(&request, &stop).await;
    backfill::print_summary(&request, &summary, &mut std::io::stdout())
        .map_err(|e| e.to_string())?;
    Ok(if summary.failed > 0 || summary.interrupted {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn trace_command(
    operator: Operator,
    args: TraceArgs,
    (bucket, key): (String, String),
) -> Result<ExitCode, String> {
    let request = trace::TraceRequest {
        bucket,
        key,
        version_id: args.version_id,
        dlq_hide_secs: args.dlq_hide_secs,
        peek_queue: args.peek_queue,
        peek_hide_secs: args.peek_hide_secs,
        peek_max: args.peek_max,
    };
    let found = trace::trace(&operator, &request)
        .await
        .map_err(|err| err.to_string())?;
    match args.format {
        OutputFormat::Text => {
            trace::print(&found, &mut std::io::stdout().lock()).map_err(|e| e.to_string())?
        }
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&found).map_err(|e| e.to_string())?
        ),
    }
    Ok(ExitCode::SUCCESS)
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
        Command::Dlq { command } => {
            operate(&config, |operator| dlq_command(operator, command)).await
        }
        Command::Backfill(args) => {
            operate(&config, |operator| backfill_command(operator, args)).await
        }
        Command::Trace(args) => match trace::parse_object(&args.object) {
            Ok(object) => operate(&config, |operator| trace_command(operator, args, object)).await,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(2)
            }
        },
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
