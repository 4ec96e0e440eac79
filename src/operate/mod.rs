//! The operator's commands beside the worker: `dlq` (list, inspect,
//! replay, purge the dead-letter queue), `backfill` (ingest what is
//! already in a bucket) and `trace` (what happened to one object). They
//! use the worker's config, clients, routes and pipeline, so what they do
//! is what the worker would do.

pub mod backfill;
pub mod dlq;
pub mod trace;

use crate::config::Config;
use crate::ingest::Ingestor;
use crate::object::S3Objects;
use crate::queue::Reachable;
use crate::queue::sqs::SqsQueue;
use crate::route::Router;
use crate::sink::SinksByName;
use crate::{AwsClients, RunError};

/// What the operator's commands work with, built from the worker's config.
pub struct Operator {
    pub router: Router,
    pub objects: S3Objects,
    pub ingestor: Ingestor,
    /// The worker's source queue (`queue.url`).
    pub source: SqsQueue,
    /// `queue.dlq_url`, when configured.
    pub dlq: Option<SqsQueue>,
    /// The sinks the ingestor writes to, by name (`trace` asks each).
    pub sinks: SinksByName,
    /// For what [`SqsQueue`] does not ask (`trace`: the queue's counts).
    pub sqs: aws_sdk_sqs::Client,
}

impl Operator {
    /// Builds the clients, routes and sinks as the worker does, and checks
    /// that the queues exist.
    pub async fn build(config: &Config, clients: AwsClients) -> Result<Operator, RunError> {
        let source = SqsQueue::new(clients.sqs.clone(), config.queue.url.clone());
        source.check_reachable().await?;
        let dlq = config
            .queue
            .dlq_url
            .clone()
            .map(|url| SqsQueue::new(clients.sqs.clone(), url));
        if let Some(dlq) = &dlq {
            dlq.check_reachable().await?;
        }
        let router = Router::new(&config.routes).map_err(RunError::Routes)?;
        let sinks = crate::build_sinks(config, &clients.s3).map_err(|mut failures| {
            let (name, err) = failures.swap_remove(0);
            RunError::Sink(name, err)
        })?;
        let objects = S3Objects::new(clients.s3.clone(), config.aws.expected_bucket_owner.clone());
        Ok(Operator {
            ingestor: Ingestor::new(objects.clone(), sinks.clone()),
            objects,
            router,
            source,
            dlq,
            sinks,
            sqs: clients.sqs,
        })
    }
}
