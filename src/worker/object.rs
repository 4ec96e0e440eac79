//! One object of a message: the bucket check, its route, a slot, the
//! ingest through the `Ingest` seam, and what its outcome means for the
//! message (see `combine` in `message.rs`).

use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Worker, bump};
use crate::dead_letter::DeadLetter;
use crate::error::{ErrorKind, IngestError};
use crate::group::GroupOutcome;
use crate::ingest::{Ingested, Precheck};
use crate::notification::ObjectRef;
use crate::queue::ReceivedMessage;
use crate::telemetry;
use crate::text::{LOG_ERROR_BYTES, excerpt};

/// What happened to one object of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ObjectOutcome {
    Committed,
    /// Nothing to do: already committed, or a replay of an object gone.
    Skipped,
    DeadLettered,
    Unmatched,
    Retry,
    /// The deployment refused it (credentials, grants): not the file's
    /// failure, and not counted as an attempt.
    Deployment,
    /// Shutdown began while it waited for a slot.
    NotStarted,
    /// It waited for a slot longer than receive-ahead allows.
    Unstarted,
    /// Another live writer holds it in a sink's ledger, uncommitted (a
    /// duplicate delivery being grouped elsewhere): hand it back for later.
    ClaimedElsewhere,
}

impl Worker {
    pub(super) async fn process_object(
        &self,
        message: &ReceivedMessage,
        object: &ObjectRef,
        shutdown: &CancellationToken,
    ) -> ObjectOutcome {
        let bucket = object.bucket.as_str();
        let key = object.key.as_str();
        if !self.router.bucket_allowed(bucket) {
            // Never fetch from a bucket the config does not name: a forged or
            // misrouted notification must not make us read someone's data.
            return self
                .dead_letter_object(
                    message,
                    object,
                    None,
                    ErrorKind::BucketNotAllowed,
                    format!("{}: no route allows bucket `{bucket}`", object.s3_uri()),
                )
                .await;
        }
        let Some(route) = self.router.route(bucket, key) else {
            self.stats.unmatched();
            info!(bucket, key, "no route matches the key; object skipped");
            return ObjectOutcome::Unmatched;
        };
        let plan = match route.plan(key) {
            Ok(plan) => plan,
            Err(detail) => {
                let err = IngestError::UnsupportedFormat {
                    uri: object.s3_uri(),
                    detail,
                };
                return self
                    .dead_letter_object(
                        message,
                        object,
                        Some(&route.name),
                        err.kind(),
                        err.to_string(),
                    )
                    .await;
            }
        };
        // Once shutdown has begun nothing new starts: a message still
        // waiting here goes back to the queue for another worker.
        // A message received ahead waits a bounded time (admission.rs):
        // past it, it goes back to the queue instead of hiding there.
        let slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return ObjectOutcome::NotStarted,
            slot = self.admission.slot() => match slot {
                Some(slot) => slot,
                None => {
                    info!(bucket, key, "waited too long for a slot; handing the message back");
                    return ObjectOutcome::Unstarted;
                }
            },
        };
        let _in_flight = InFlightGauge::new();
        let started = Instant::now();
        // A redelivery (or replay, or backfill) may be in the sinks
        // already, and a replayed version may be stale: ask before
        // downloading. A first delivery of a notification asks nothing.
        let redelivered = message.receive_count > 1 || message.earlier_attempts > 0;
        let ingested = match self.ingestor.precheck(object, &plan, redelivered).await {
            Ok(Precheck::Ingest {
                object: target,
                superseded,
            }) => {
                if let Some(failed) = &superseded {
                    info!(bucket, key, route = %route.name, failed_version = %failed,
                        version = target.version_id.as_deref().or(target.etag.as_deref()),
                        "replay of a version that is no longer current: ingesting the current version");
                }
                self.ingestor.ingest(&target, &plan).await
            }
            Ok(skip) => {
                self.admission.object_finished(started.elapsed());
                self.skip_object(object, &route.name, &skip);
                return ObjectOutcome::Skipped;
            }
            Err(err) => Err(err),
        };
        self.admission.object_finished(started.elapsed());
        let ingested = match ingested {
            Ok(Ingested::Committed(committed)) => Ok(committed),
            Ok(Ingested::Grouped(ticket)) => {
                // The rows wait in a group: the slot goes to the next
                // object, while this message stays leased until the group
                // commits (its lease's heartbeat runs in the message task).
                drop(slot);
                let _parked = self.admission.park();
                match ticket.outcome().await {
                    Ok(GroupOutcome::Committed(committed)) => Ok(committed),
                    Ok(GroupOutcome::ClaimedElsewhere { sink }) => {
                        info!(bucket, key, route = %route.name, sink = %sink,
                            "another group holds this object uncommitted in the sink's ledger (a duplicate delivery); handing the message back for later");
                        return ObjectOutcome::ClaimedElsewhere;
                    }
                    Err(err) => Err(err),
                }
            }
            Err(err) => Err(err),
        };
        match &ingested {
            Ok(_) => {
                self.deployment.object_read(bucket);
                let components: Vec<String> = std::iter::once("s3".to_owned())
                    .chain(route.sinks.iter().map(|sink| format!("sink:{sink}")))
                    .collect();
                self.deployment
                    .succeeded(components.iter().map(String::as_str));
            }
            Err(err) if err.object_was_read() => {
                self.deployment.object_read(bucket);
                self.deployment.succeeded(["s3"]);
            }
            Err(_) => {}
        }
        match ingested {
            Ok(committed) => {
                bump(&self.stats.objects_committed);
                let duration = started.elapsed();
                let lag = object
                    .event_time
                    .and_then(|t| (chrono::Utc::now() - t).to_std().ok());
                telemetry::object_committed(telemetry::CommittedObject {
                    route: &route.name,
                    sinks: &route.sinks,
                    bytes: committed.lineage.size,
                    rows: committed.rows,
                    batches: committed.batches,
                    duration,
                    lag,
                });
                if let Some(outcome) = &committed.contract
                    && !committed.already_committed()
                {
                    telemetry::contract_file(&route.name, outcome);
                    // A vendor's drift is news the day it starts.
                    if outcome.quarantined_rows > 0 || outcome.drifted() {
                        warn!(
                            bucket,
                            key,
                            route = %route.name,
                            quarantined_rows = outcome.quarantined_rows,
                            columns_added = ?outcome.columns_added,
                            columns_rescued = ?outcome.columns_rescued,
                            columns_missing = ?outcome.columns_missing,
                            "the file does not keep its route's contract; it landed as the contract says"
                        );
                    }
                }
                info!(
                    bucket,
                    key,
                    route = %route.name,
                    sinks = %route.sinks.join(","),
                    rows = committed.rows,
                    contract = committed.contract.as_ref().map(|o| o.verdict.as_str()),
                    quarantined_rows = committed.contract.as_ref().map(|o| o.quarantined_rows),
                    contract_outcome = committed.contract.as_ref().map(|o| o.to_json()),
                    bytes = committed.lineage.size,
                    location = %committed.locations(),
                    already_committed = committed.already_committed(),
                    elapsed_ms = duration.as_millis() as u64,
                    lag_ms = lag.map(|l| l.as_millis() as u64),
                    "object committed"
                );
                ObjectOutcome::Committed
            }
            Err(IngestError::Deployment {
                component,
                code,
                detail,
                ..
            }) => self.deployment_problem(
                object,
                &route.name,
                ErrorKind::DeploymentError,
                &component,
                &code,
                &detail,
            ),
            Err(IngestError::Unavailable {
                component,
                code,
                detail,
                ..
            }) if self.deployment.unavailable_is_outage(&component) => {
                // Judged in deployment.rs: nothing committed to the sink
                // since it began failing, so it is an outage, not the file.
                let detail = format!(
                    "{detail}; {component} is unavailable: the message is handed back uncounted until it works again"
                );
                self.deployment_problem(
                    object,
                    &route.name,
                    ErrorKind::Unavailable,
                    &component,
                    &code,
                    &detail,
                )
            }
            Err(IngestError::AccessDenied { detail, .. })
                if self.deployment.access_denied_is_deployment(bucket) =>
            {
                // Judged in deployment.rs: nothing of this bucket was read
                // since it began refusing, so the role is the suspect.
                let detail = format!(
                    "{detail}; check the worker role's s3:GetObject (and kms:Decrypt) on bucket `{bucket}`; if other objects of the bucket read fine, this object is dead-lettered as access_denied on its next attempt"
                );
                self.deployment_problem(
                    object,
                    &route.name,
                    ErrorKind::DeploymentError,
                    "s3",
                    "AccessDenied",
                    &detail,
                )
            }
            Err(err @ IngestError::Unavailable { .. }) => {
                telemetry::object_retried(&route.name, err.kind(), err.sink());
                warn!(bucket, key, route = %route.name, error_kind = %err.kind(),
                    error = %excerpt(&err.to_string(), LOG_ERROR_BYTES),
                    "object failed on a sink that works for other objects; this attempt counts against the file");
                ObjectOutcome::Retry
            }
            Err(err) if err.is_retryable() => {
                telemetry::object_retried(&route.name, err.kind(), err.sink());
                warn!(bucket, key, route = %route.name, error_kind = %err.kind(),
                    error = %excerpt(&err.to_string(), LOG_ERROR_BYTES), "object failed; will retry");
                ObjectOutcome::Retry
            }
            Err(err) => {
                self.dead_letter_object(
                    message,
                    object,
                    Some(&route.name),
                    err.kind(),
                    err.to_string(),
                )
                .await
            }
        }
    }

    /// Logs and counts an object that needs no download (see [`Precheck`]).
    fn skip_object(&self, object: &ObjectRef, route: &str, skip: &Precheck) {
        let reason = skip.skip_reason().unwrap_or("ingest");
        self.stats.skipped(route, reason);
        let (bucket, key) = (object.bucket.as_str(), object.key.as_str());
        let version = object.version_id.as_deref().or(object.etag.as_deref());
        let origin = object.origin.label();
        match skip {
            Precheck::Gone => warn!(
                bucket,
                key, route, version, origin, "replay skipped: the object no longer exists"
            ),
            Precheck::AlreadyCommitted {
                superseded: Some(failed),
            } => info!(bucket, key, route, failed_version = %failed, origin,
                "replay skipped: the object has a newer version, and every sink of its route already holds it"),
            _ => info!(
                bucket,
                key,
                route,
                version,
                origin,
                "object skipped: every sink of its route already holds this version"
            ),
        }
    }

    /// Records a problem of the deployment or an outage for an object
    /// (`kind`: `deployment_error` or `unavailable`): logged as an error
    /// that says what to fix, counted, and the worker pauses receiving.
    fn deployment_problem(
        &self,
        object: &ObjectRef,
        route: &str,
        kind: ErrorKind,
        component: &str,
        code: &str,
        detail: &str,
    ) -> ObjectOutcome {
        let pause = self.deployment.report(component, code, detail);
        telemetry::object_retried(route, kind, component.strip_prefix("sink:"));
        error!(
            bucket = %object.bucket,
            key = %object.key,
            route,
            error_kind = %kind,
            component,
            code,
            error = %detail,
            pause_ms = pause.as_millis() as u64,
            "the deployment or a sink is failing, not the file: the message stays queued uncounted and receiving pauses"
        );
        ObjectOutcome::Deployment
    }

    pub(super) async fn dead_letter_object(
        &self,
        message: &ReceivedMessage,
        object: &ObjectRef,
        route: Option<&str>,
        error_kind: ErrorKind,
        error: String,
    ) -> ObjectOutcome {
        let envelope = DeadLetter::for_object(
            object,
            route,
            error_kind,
            error,
            &message.message_id,
            message.attempt(),
            &message.body,
        );
        if self.send_dead_letter(&envelope).await {
            bump(&self.stats.objects_dead_lettered);
            telemetry::object_dead_lettered(route, error_kind);
            ObjectOutcome::DeadLettered
        } else {
            ObjectOutcome::Retry
        }
    }
}

/// Counts an object in the in-flight gauge for as long as it lives.
struct InFlightGauge;

impl InFlightGauge {
    fn new() -> InFlightGauge {
        telemetry::objects_in_flight(1.0);
        InFlightGauge
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        telemetry::objects_in_flight(-1.0);
    }
}
