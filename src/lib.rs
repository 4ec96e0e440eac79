//! s3-ingest: ingests files the moment they land in S3.
//!
//! S3 → (SNS / EventBridge) → SQS → [`worker`] → [`ingest`] (S3 stream →
//! [`decode`] → Arrow batches) → [`sink`] → delete the message. See
//! `docs/design.md` for the message state machine and its invariants.

pub mod byte_ranges;
pub mod config;
pub mod contract;
pub mod dead_letter;
pub mod decode;
pub mod deployment;
pub mod emf;
pub mod error;
pub mod group;
pub mod ingest;
pub mod lease;
pub mod notification;
pub mod object;
pub mod operate;
pub mod parallel;
pub mod queue;
pub mod reconcile;
pub mod redact;
pub mod route;
pub mod schema;
pub mod sink;
pub mod status;
pub mod telemetry;
pub mod text;
pub mod worker;

use std::sync::Arc;

/// This build's version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this binary was built from (see `build.rs`), or `unknown`.
pub const COMMIT: &str = env!("S3_INGEST_COMMIT");

use aws_config::{BehaviorVersion, Region};
use tokio_util::sync::CancellationToken;

use crate::config::{AwsConfig, Config};
use crate::dead_letter::DeadLetterQueue;
use crate::ingest::Ingestor;
use crate::object::S3Objects;
use crate::queue::sqs::{SqsDeadLetterQueue, SqsQueue};
use crate::queue::{QueueError, Reachable};
use crate::route::Router;
use crate::worker::{Worker, WorkerSettings};

/// Errors that stop the process at start-up.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("queue is not usable: {0}")]
    Queue(#[from] QueueError),
    #[error("invalid routes: {0}")]
    Routes(String),
    #[error("cannot serve status endpoints on {0}: {1}")]
    Status(String, std::io::Error),
    #[error("cannot set up sink `{0}`: {1}")]
    Sink(String, sink::SinkError),
}

/// The AWS clients the worker uses.
#[derive(Clone)]
pub struct AwsClients {
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
}

impl AwsClients {
    /// Builds clients from the `[aws]` section and the SDK's default
    /// credential chain (env, profile, ECS task role).
    pub async fn from_config(aws: &AwsConfig) -> AwsClients {
        // Bounded attempts: a hung connection must fail (and be retried)
        // rather than stall the receive loop. 45 s covers a 20 s long poll.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .operation_attempt_timeout(std::time::Duration::from_secs(45))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
        if let Some(region) = &aws.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint_url) = &aws.endpoint_url {
            loader = loader.endpoint_url(endpoint_url);
        }
        AwsClients::from_sdk_config(&loader.load().await, aws.force_path_style)
    }

    pub fn from_sdk_config(sdk: &aws_config::SdkConfig, force_path_style: bool) -> AwsClients {
        let s3_config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(force_path_style)
            .build();
        AwsClients {
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            sqs: aws_sdk_sqs::Client::new(sdk),
        }
    }
}

/// Runs the worker until `shutdown` is cancelled and in-flight work is
/// finished or released.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let clients = AwsClients::from_config(&config.aws).await;
    run_with_clients(config, clients, shutdown).await
}

/// [`run`] with ready-made clients (tests pass emulator credentials).
pub async fn run_with_clients(
    config: Config,
    clients: AwsClients,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    // Installs the recorders before anything records.
    telemetry::prometheus();
    let (worker, reconciler) = build_worker_and_reconciler(&config, clients).await?;
    let worker = Arc::new(worker);
    // Reconciliation stops as soon as shutdown begins: it only enqueues.
    let reconciling = reconciler.map(|reconciler| {
        let stop = shutdown.child_token();
        tokio::spawn(reconciler.run(stop.clone()));
        stop
    });
    let emf = config.status.emf_namespace.as_ref().map(|namespace| {
        let stop = CancellationToken::new();
        let task = tokio::spawn(write_emf_lines(
            emf::EmfEmitter::new(
                telemetry::emf_recorder(),
                namespace,
                &config.status.emf_service,
            ),
            std::time::Duration::from_secs(config.status.emf_interval_secs),
            stop.clone(),
        ));
        (stop, task)
    });
    let result = serve_and_run(&config, worker, shutdown).await;
    if let Some(stop) = reconciling {
        stop.cancel();
    }
    if let Some((stop, task)) = emf {
        // One last line with what happened since the previous one.
        stop.cancel();
        let _ = task.await;
    }
    result
}

async fn serve_and_run(
    config: &Config,
    worker: Arc<Worker>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    if config.status.enabled() {
        let stop_serving = CancellationToken::new();
        status::serve(
            &config.status.listen_addr,
            worker.liveness(),
            worker.queues(),
            worker.deployment(),
            stop_serving.clone(),
        )
        .await
        .map_err(|err| RunError::Status(config.status.listen_addr.clone(), err))?;
        worker.run(shutdown).await;
        stop_serving.cancel();
    } else {
        worker.run(shutdown).await;
    }
    Ok(())
}

/// Writes EMF lines to stderr every `interval`, and once more when `stop`
/// is cancelled. stderr, like the logs: stdout belongs to the stdout sink.
async fn write_emf_lines(
    mut emitter: emf::EmfEmitter,
    interval: std::time::Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        let stopping = tokio::select! {
            _ = ticks.tick() => false,
            _ = stop.cancelled() => true,
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let lines = emitter.lines(now_ms);
        if !lines.is_empty() {
            // One write per batch of whole lines, so log lines written
            // meanwhile do not land inside one.
            let text = lines.join("\n") + "\n";
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), text.as_bytes());
        }
        if stopping {
            return;
        }
    }
}

/// Builds every sink without using it, as `run` would at start-up: catches
/// what only shows then (a secret's environment variable missing, a URL
/// that does not parse). Returns the failures by sink name.
pub async fn check_sinks(config: &Config) -> Vec<(String, sink::SinkError)> {
    let clients = AwsClients::from_config(&config.aws).await;
    build_sinks(config, &clients.s3).err().unwrap_or_default()
}

/// Every `[sinks.NAME]`, built; or every one that could not be, by name.
pub(crate) fn build_sinks(
    config: &Config,
    s3: &aws_sdk_s3::Client,
) -> Result<sink::SinksByName, Vec<(String, sink::SinkError)>> {
    let context = sink::SinkContext {
        s3: s3.clone(),
        expected_bucket_owner: config.aws.expected_bucket_owner.clone(),
        aws: config.aws.clone(),
        add_columns_routes: config
            .routes
            .iter()
            .filter(|route| {
                route.contract.as_ref().is_some_and(|contract| {
                    contract.schema_mode == contract::SchemaMode::AddColumns
                })
            })
            .map(|route| route.name.clone())
            .collect(),
    };
    let mut sinks = sink::SinksByName::new();
    let mut failures = Vec::new();
    for (name, sink_config) in &config.sinks {
        match sink::build(name, sink_config, &context) {
            Ok(sink) => {
                sinks.insert(name.clone(), sink);
            }
            Err(err) => failures.push((name.clone(), err)),
        }
    }
    if failures.is_empty() {
        Ok(sinks)
    } else {
        Err(failures)
    }
}

/// Checks the queue and wires the worker's parts together.
pub async fn build_worker(config: &Config, clients: AwsClients) -> Result<Worker, RunError> {
    Ok(build_worker_and_reconciler(config, clients).await?.0)
}

/// The worker and, with a `[reconcile]` section, the reconciler that
/// shares its routes and sinks.
pub async fn build_worker_and_reconciler(
    config: &Config,
    clients: AwsClients,
) -> Result<(Worker, Option<reconcile::Reconciler>), RunError> {
    parallel::init_pool(config.worker.cpu_threads);
    let queue = SqsQueue::new(clients.sqs.clone(), config.queue.url.clone());
    let dead_letters = config
        .queue
        .dlq_url
        .clone()
        .map(|url| SqsDeadLetterQueue::new(clients.sqs.clone(), url));
    // A missing queue is a configuration error: say so and stop, rather
    // than retrying forever.
    queue.check_reachable().await?;
    if let Some(dead_letters) = &dead_letters {
        dead_letters.check_reachable().await?;
    }
    let router = Router::new(&config.routes).map_err(RunError::Routes)?;
    let sinks = build_sinks(config, &clients.s3).map_err(|mut failures| {
        let (name, err) = failures.swap_remove(0);
        RunError::Sink(name, err)
    })?;
    let ingestor = Arc::new(Ingestor::new(
        S3Objects::new(clients.s3.clone(), config.aws.expected_bucket_owner.clone()),
        sinks,
    ));
    let reconciler = config.reconcile.as_ref().map(|reconcile| {
        reconcile::Reconciler::new(
            config,
            reconcile,
            clients.s3.clone(),
            Arc::new(router.clone()),
            ingestor.clone(),
            SqsQueue::new(clients.sqs.clone(), config.queue.url.clone()),
        )
    });
    let worker = Worker::new(
        Arc::new(queue),
        dead_letters.map(|dlq| Arc::new(dlq) as Arc<dyn DeadLetterQueue>),
        router,
        ingestor,
        WorkerSettings::from_config(config),
    );
    Ok((worker, reconciler))
}
