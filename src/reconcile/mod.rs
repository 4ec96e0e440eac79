//! Reconciliation: finds objects whose notification never arrived (S3's
//! event delivery is at-least-once "usually"; a filter or a policy
//! mistake loses events silently) and enqueues them like `backfill` does.
//!
//! Every `interval_secs`, the task of the fleet that holds the lease (in
//! the state object, `state.rs`) lists one page of each configured prefix
//! after the key where the previous page ended, so the listing cost is
//! bounded whatever the bucket's size; at the end of a prefix, the next
//! cycle starts over. An object is enqueued (an `ObjectCreated:Reconcile`
//! event) when it is
//! - older than `grace_secs` (its notification may still be on its way),
//! - not older than the watermark: the start of the last complete cycle
//!   less the grace period checked everything before it (and nothing
//!   before `since`, or before reconciliation first ran, is looked at),
//! - claimed by a route whose sinks all answer the ledger question (a
//!   route with an `http` or `stdout` sink is excluded: nothing could tell
//!   a lost notification from a delivered one),
//! - and held by none of its sinks.
//!
//! Each one found is logged and counted
//! (`s3_ingest_objects_reconciled_total{route}`): a notification S3 did
//! not deliver, or the worker never saw.

pub mod state;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, ReconcileConfig, SinkConfig};
use crate::ingest::Ingestor;
use crate::notification::{self, Origin, RECONCILE_EVENT_NAME};
use crate::object::S3Objects;
use crate::queue::sqs::SqsQueue;
use crate::route::Router;
use crate::sink::CommitState;
use crate::telemetry;
use state::{LeaseRecord, PrefixProgress, StateStore, Stored};

/// What one tick did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    /// Whether this task held the lease (else it did nothing).
    pub leased: bool,
    pub listed: u64,
    /// Enqueued: no sink holds them.
    pub found: u64,
    /// Prefixes whose cycle ended with this tick.
    pub cycles_completed: u64,
}

/// What checking one listed object came to.
enum Checked {
    /// Enqueued: no sink holds it.
    Enqueued,
    /// Not reconciliation's business, or already held.
    Nothing,
    /// Could not be looked up, asked about or enqueued: try again.
    Failed,
}

/// Counts since start, for tests and the shutdown summary.
#[derive(Debug, Default)]
pub struct ReconcileStats {
    pub ticks_leased: AtomicU64,
    pub listed: AtomicU64,
    pub found: AtomicU64,
}

pub struct Reconciler {
    config: ReconcileConfig,
    store: StateStore,
    objects: S3Objects,
    router: Arc<Router>,
    ingestor: Arc<Ingestor>,
    queue: SqsQueue,
    /// Who this task is, in the lease.
    holder: String,
    /// Routes with a sink that cannot say what it holds.
    excluded_routes: HashSet<String>,
    stats: Arc<ReconcileStats>,
}

impl Reconciler {
    pub fn new(
        config: &Config,
        reconcile: &ReconcileConfig,
        s3: aws_sdk_s3::Client,
        router: Arc<Router>,
        ingestor: Arc<Ingestor>,
        queue: SqsQueue,
    ) -> Reconciler {
        let (bucket, key) = reconcile.state_location();
        let excluded_routes: HashSet<String> = config
            .routes
            .iter()
            .filter(|route| {
                route.sink_names().iter().any(|name| {
                    matches!(
                        config.sinks.get(name.as_str()),
                        Some(SinkConfig::Http(_) | SinkConfig::Stdout {}) | None
                    )
                })
            })
            .map(|route| route.name.clone())
            .collect();
        if !excluded_routes.is_empty() {
            let mut names: Vec<&str> = excluded_routes.iter().map(String::as_str).collect();
            names.sort_unstable();
            warn!(
                routes = %names.join(","),
                "reconciliation skips these routes: an http or stdout sink cannot tell whether it holds an object"
            );
        }
        Reconciler {
            store: StateStore::new(
                s3.clone(),
                bucket,
                key,
                config.aws.expected_bucket_owner.clone(),
            ),
            objects: S3Objects::new(s3, config.aws.expected_bucket_owner.clone()),
            config: reconcile.clone(),
            router,
            ingestor,
            queue,
            // Host and process, and the start time to tell two reconcilers
            // of one process (tests) apart.
            holder: format!(
                "{}-{}-{:x}",
                hostname(),
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_nanos())
            ),
            excluded_routes,
            stats: Arc::new(ReconcileStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<ReconcileStats> {
        self.stats.clone()
    }

    /// Ticks every `interval_secs` until `stop`. A tick cut short by
    /// `stop` saves nothing: the next holder lists that page again, and
    /// what was enqueued twice lands once.
    pub async fn run(self, stop: CancellationToken) {
        let interval = Duration::from_secs(self.config.interval_secs);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                result = self.tick(Utc::now()) => match result {
                    Ok(report) if report.found > 0 => info!(
                        listed = report.listed, found = report.found,
                        "reconciliation enqueued objects whose notification never arrived"),
                    Ok(report) => debug!(?report, "reconciliation tick"),
                    Err(err) => warn!(error = %err, "reconciliation tick failed; trying again next interval"),
                },
            }
        }
    }

    /// One tick at `now`: take (or keep) the lease, list a page of each
    /// prefix, enqueue what is missing, save the progress.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<TickReport, state::StateError> {
        let mut report = TickReport::default();
        let (mut state, etag) = self.store.load().await?;
        if let Some(lease) = &state.lease
            && lease.holder != self.holder
            && lease.until > now
        {
            return Ok(report);
        }
        // Held for a few intervals: a holder that dies is replaced soon,
        // one that lives renews it every tick.
        let lease_for = chrono::Duration::seconds((self.config.interval_secs * 3).max(30) as i64);
        state.lease = Some(LeaseRecord {
            holder: self.holder.clone(),
            until: now + lease_for,
        });
        let started_at = *state.started_at.get_or_insert(now);
        let etag = match self.store.store(&state, etag.as_deref()).await? {
            Stored::Written(etag) => etag,
            Stored::Conflict => return Ok(report),
        };
        report.leased = true;
        self.stats.ticks_leased.fetch_add(1, Ordering::Relaxed);
        let since = self.config.since.unwrap_or(started_at);
        for (bucket, prefix) in self.config.locations() {
            let location = format!("s3://{bucket}/{prefix}");
            let progress = state.prefixes.entry(location.clone()).or_default();
            match self
                .page(&bucket, &prefix, progress, since, now, &mut report)
                .await
            {
                Ok(()) => {}
                Err(err) => {
                    warn!(location = %location, error = %err, "reconciliation could not list; next interval")
                }
            }
        }
        match self.store.store(&state, Some(&etag)).await? {
            Stored::Written(_) => {}
            Stored::Conflict => {
                info!(
                    "reconciliation state changed under this tick (another task took the lease); its page is listed again"
                )
            }
        }
        Ok(report)
    }

    async fn page(
        &self,
        bucket: &str,
        prefix: &str,
        progress: &mut PrefixProgress,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<(), crate::error::IngestError> {
        if progress.after.is_none() {
            progress.cycle_started_at = Some(now);
        }
        let page = self
            .objects
            .list_page_limited(
                bucket,
                prefix,
                progress.after.as_deref(),
                self.config.page_size,
            )
            .await?;
        let grace = chrono::Duration::seconds(self.config.grace_secs as i64);
        let checked_until = progress.checked_until.unwrap_or(since).max(since);
        let mut failed = false;
        for listed in &page.objects {
            report.listed += 1;
            self.stats.listed.fetch_add(1, Ordering::Relaxed);
            let Some(modified) = listed.last_modified else {
                continue;
            };
            if modified > now - grace || modified < checked_until {
                continue;
            }
            match self.enqueue_if_missing(bucket, &listed.key, modified).await {
                Checked::Enqueued => {
                    report.found += 1;
                    self.stats.found.fetch_add(1, Ordering::Relaxed);
                }
                Checked::Failed => failed = true,
                Checked::Nothing => {}
            }
        }
        // A page with an object that could not be checked or enqueued is
        // listed again next tick: moving on would let the watermark pass
        // it, and it would never be looked at again. What this page did
        // enqueue is enqueued again then, and lands once.
        if failed {
            return Ok(());
        }
        match (page.next.is_some(), page.objects.last()) {
            (true, Some(last)) => progress.after = Some(last.key.clone()),
            _ => {
                // The end of the prefix: everything modified before this
                // cycle began, less the grace period, has been checked.
                progress.after = None;
                progress.checked_until = progress.cycle_started_at.map(|start| start - grace);
                progress.cycles_completed += 1;
                report.cycles_completed += 1;
            }
        }
        Ok(())
    }

    /// Enqueues the object if a route claims it and no sink of the route
    /// holds its current version.
    async fn enqueue_if_missing(
        &self,
        bucket: &str,
        key: &str,
        modified: DateTime<Utc>,
    ) -> Checked {
        let Some(route) = self.router.route(bucket, key) else {
            return Checked::Nothing;
        };
        if self.excluded_routes.contains(&route.name) {
            return Checked::Nothing;
        }
        let Ok(plan) = route.plan(key) else {
            return Checked::Nothing;
        };
        let uri = format!("s3://{bucket}/{key}");
        let current = match self.objects.current_version(bucket, key).await {
            Ok(Some(current)) => current,
            Ok(None) => return Checked::Nothing,
            Err(err) => {
                warn!(uri = %uri, error = %err, "reconciliation could not look the object up");
                return Checked::Failed;
            }
        };
        let object = current.to_object(
            bucket,
            key,
            Some(modified),
            Origin::Reconcile,
            RECONCILE_EVENT_NAME,
        );
        match self.ingestor.commit_state(&object, &plan).await {
            Ok(CommitState::NotCommitted) => {}
            Ok(_) => return Checked::Nothing,
            Err(err) => {
                warn!(uri = %uri, error = %err, "reconciliation could not ask the sinks");
                return Checked::Failed;
            }
        }
        match self
            .queue
            .send(&notification::synthetic_event(
                &object,
                RECONCILE_EVENT_NAME,
            ))
            .await
        {
            Ok(()) => {
                telemetry::object_reconciled(&route.name);
                warn!(uri = %uri, route = %route.name, version = current.identity(),
                    "no notification of this object arrived; enqueued by reconciliation");
                Checked::Enqueued
            }
            Err(err) => {
                warn!(uri = %uri, error = %err, "reconciliation could not enqueue the object");
                Checked::Failed
            }
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "s3-ingest".to_owned())
}
