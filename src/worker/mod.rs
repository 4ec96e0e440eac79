//! The worker: receives messages and drives each through its life.
//!
//! ```text
//! received ──parse──► Discard (test event, not ObjectCreated) ─────────► delete
//!    │──parse error / attempt > max ──► dead-letter ── sent? ──► delete
//!    ▼                                                └─ failed ──► leave
//! objects ── each, concurrently (bounded by worker.concurrency; a message
//!            may wait for a slot, see `admission.rs`):
//!    no route matches     → Unmatched (logged, counted)
//!    no format fits       → dead-letter (unsupported_format)
//!    shutdown before a slot   → NotStarted
//!    waited too long for one  → Unstarted
//!    ingest + commit ok   → Committed
//!    joined a group       → slot freed, message leased until the group
//!                           commits → Committed (`group.rs`)
//!    held uncommitted by another writer's group → ClaimedElsewhere
//!    deployment problem   → Deployment (receiving pauses, see deployment.rs)
//!    sink outage          → Deployment (the same; judged in deployment.rs)
//!    permanent error      → dead-letter; sent → DeadLettered, failed → Retry
//!    transient error      → Retry
//! all Committed / DeadLettered / Unmatched → delete the message
//! any Retry                                → leave it; SQS redelivers
//! any Deployment (and no Retry)            → hand it back, delayed by the pause
//! any ClaimedElsewhere (and no Retry)     → hand it back, hidden 10 s
//! any NotStarted / Unstarted (and no Retry) → hand it back at once
//! shutdown past the grace period           → hand it back at once
//! ```
//! "Hand back" sends a copy of the message carrying the attempts counted
//! so far (`queue::ATTEMPTS_ATTRIBUTE`), then deletes the original: the
//! receive does not count towards `max_receive_count`, while a receive
//! that ends any other way (a failure, a crash, a lost lease) does. If the
//! copy cannot be sent, the message is released (visibility 0) as before,
//! and that receive counts.
//!
//! Invariant: a message is deleted only after everything it named is
//! durable in the sink, accepted by the dead-letter queue, or handed back
//!
//! The worker's rooms:
//!
//! - `run.rs`: the receive loop, its back-off and pauses, and shutdown;
//! - `message.rs`: one message's life, from lease to delete, hand-back or
//!   dead letter;
//! - `object.rs`: one object of a message: route, slot, ingest, outcome;
//! - `admission.rs`: how many messages to receive, and when an object may
//!   start (the slots and the receive-ahead buffer, in one unit).

mod admission;
mod message;
mod object;
mod run;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::Config;
use crate::dead_letter::DeadLetterQueue;
use crate::deployment::DeploymentHealth;
use crate::ingest::Ingest;
use crate::lease::{Lease, LeaseTiming};
use crate::queue::{Queue, Reachable};
use crate::route::Router;
use crate::status::Liveness;
use crate::telemetry;

use admission::Admission;

/// Outcome counters, for logs and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub messages_received: AtomicU64,
    pub messages_deleted: AtomicU64,
    pub messages_discarded: AtomicU64,
    pub messages_left_for_retry: AtomicU64,
    pub messages_released: AtomicU64,
    pub objects_committed: AtomicU64,
    pub objects_dead_lettered: AtomicU64,
    pub objects_unmatched: AtomicU64,
    /// Not downloaded: already committed, or a replay of an object gone.
    pub objects_skipped: AtomicU64,
    pub receive_errors: AtomicU64,
    pub visibility_extensions: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Each outcome is counted twice: in `Stats` for this worker (tests, the
/// shutdown summary) and in the process's Prometheus metrics.
impl Stats {
    fn received(&self) {
        bump(&self.messages_received);
        telemetry::message_received();
    }
    fn deleted(&self) {
        bump(&self.messages_deleted);
        telemetry::message_deleted();
    }
    fn discarded(&self, reason: &'static str) {
        bump(&self.messages_discarded);
        telemetry::message_discarded(reason);
    }
    fn left_for_retry(&self) {
        bump(&self.messages_left_for_retry);
        telemetry::message_left_for_retry();
    }
    fn released(&self) {
        bump(&self.messages_released);
        telemetry::message_released();
    }
    fn skipped(&self, route: &str, reason: &'static str) {
        bump(&self.objects_skipped);
        telemetry::object_skipped(route, reason);
    }
    fn unmatched(&self) {
        bump(&self.objects_unmatched);
        telemetry::object_unmatched();
    }
    fn receive_error(&self, class: &'static str) {
        bump(&self.receive_errors);
        telemetry::receive_error(class);
    }
    fn extended(&self, lease: &Lease) {
        let count = lease.extensions();
        self.visibility_extensions
            .fetch_add(count, Ordering::Relaxed);
        telemetry::visibility_extended(count);
    }
}

/// Queue settings the worker needs, copied out of the config.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub wait_time_secs: u64,
    pub max_messages: u64,
    pub visibility_timeout_secs: u64,
    pub max_receive_count: u64,
    pub concurrency: usize,
    pub shutdown_grace: Duration,
    pub max_lease: Duration,
    pub max_prefetch: usize,
}

impl WorkerSettings {
    pub fn from_config(config: &Config) -> WorkerSettings {
        WorkerSettings {
            wait_time_secs: config.queue.wait_time_secs,
            max_messages: config.queue.max_messages,
            visibility_timeout_secs: config.queue.visibility_timeout_secs,
            max_receive_count: config.queue.max_receive_count,
            concurrency: config.worker.concurrency.get(),
            shutdown_grace: Duration::from_secs(config.worker.shutdown_grace_secs),
            max_lease: Duration::from_secs(config.worker.max_lease_secs),
            max_prefetch: config.worker.max_prefetch,
        }
    }

    fn lease_timing(&self) -> LeaseTiming {
        LeaseTiming {
            visibility_timeout: Duration::from_secs(self.visibility_timeout_secs),
            max_lease: self.max_lease,
        }
    }
}

pub struct Worker {
    queue: Arc<dyn Queue>,
    /// `None`: poison is left to the source queue's redrive policy.
    dead_letters: Option<Arc<dyn DeadLetterQueue>>,
    liveness: Arc<Liveness>,
    router: Router,
    ingestor: Arc<dyn Ingest>,
    settings: WorkerSettings,
    admission: Arc<Admission>,
    deployment: Arc<DeploymentHealth>,
    stats: Arc<Stats>,
}

impl Worker {
    pub fn new(
        queue: Arc<dyn Queue>,
        dead_letters: Option<Arc<dyn DeadLetterQueue>>,
        router: Router,
        ingestor: Arc<dyn Ingest>,
        settings: WorkerSettings,
    ) -> Worker {
        // A receive returns within its long poll plus the SDK's bounded
        // attempts; far longer than that means the loop is stuck.
        let stuck_after = Duration::from_secs(settings.wait_time_secs + 180);
        Worker {
            queue,
            dead_letters,
            liveness: Arc::new(Liveness::new(stuck_after)),
            router,
            ingestor,
            admission: Arc::new(Admission::new(
                settings.concurrency,
                settings.max_messages as usize,
                settings.max_prefetch,
            )),
            settings,
            deployment: Arc::default(),
            stats: Arc::default(),
        }
    }

    /// Deployment problems seen now: for `/readyz` and tests.
    pub fn deployment(&self) -> Arc<DeploymentHealth> {
        self.deployment.clone()
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    pub fn liveness(&self) -> Arc<Liveness> {
        self.liveness.clone()
    }

    pub fn queue(&self) -> Arc<dyn Queue> {
        self.queue.clone()
    }

    /// The queues `/readyz` checks: the source queue and the DLQ.
    pub fn queues(&self) -> Vec<Arc<dyn Reachable>> {
        let mut queues: Vec<Arc<dyn Reachable>> = vec![self.queue.clone()];
        if let Some(dead_letters) = &self.dead_letters {
            queues.push(dead_letters.clone());
        }
        queues
    }
}
