//! Deployment problems: failures that no file causes and no file can fix.
//!
//! Expired or invalid AWS credentials, an `http` sink answering 401/403, a
//! PostgreSQL role whose password or grant is gone: every object fails
//! alike until an operator fixes the deployment. Dead-lettering those
//! objects (or counting the failure against them) would empty the backlog
//! into the DLQ on a rotated token. Instead the worker:
//!
//! - hands the message back uncounted (a fresh copy, delayed by the pause;
//!   see `worker.rs`),
//! - pauses receiving for an exponentially growing time (1 s doubling to
//!   5 min, with jitter), reset when the component works again,
//! - fails `/readyz` with the reason while any component is refusing,
//! - counts `s3_ingest_deployment_errors_total{component,code}` and shows
//!   `s3_ingest_deployment_problems` / `s3_ingest_receive_paused`.
//!
//! Which failures are the deployment's is decided in `error.rs`
//! (`is_credential_error_code`, `is_deployment_http_status`,
//! `is_deployment_sqlstate`). One case needs history, and is judged here:
//! S3 `AccessDenied` on one object. It is the deployment's (a role that
//! lost `s3:GetObject`, a bucket policy) unless another object of the same
//! bucket has been read since this bucket started refusing; then it is
//! that object's own (its KMS key, an ACL) and it is dead-lettered as
//! `access_denied`. A deleted object reads as 404 (`object_missing`)
//! because the role holds `s3:ListBucket` (see infra/).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

use crate::telemetry;

/// The first pause after a deployment problem.
pub const MIN_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause: a fixed deployment is noticed within this.
pub const MAX_PAUSE: Duration = Duration::from_secs(300);

/// One component refusing the deployment, as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `s3`, `sqs` or `sink:NAME`.
    pub component: String,
    /// AWS error code, HTTP status or SQLSTATE.
    pub code: String,
    /// What happened and what to fix.
    pub detail: String,
    /// Failures seen since the problem began.
    pub errors: u64,
}

pub struct DeploymentHealth {
    state: Mutex<State>,
}

struct State {
    problems: BTreeMap<String, Problem>,
    backoff: ExponentialBackoff,
    paused_until: Option<Instant>,
    /// Orders reads and denials per bucket (time would do, but paused
    /// test clocks make equal instants common).
    sequence: u64,
    buckets: HashMap<String, BucketAccess>,
}

#[derive(Debug, Default)]
struct BucketAccess {
    /// Sequence number of the last object of the bucket that was read.
    last_read: u64,
    /// Sequence number of the first `AccessDenied` not yet explained.
    denied_since: Option<u64>,
}

fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(MIN_PAUSE)
        .with_max_delay(MAX_PAUSE)
        .without_max_times()
        .build()
}

impl Default for DeploymentHealth {
    fn default() -> Self {
        DeploymentHealth::new()
    }
}

impl DeploymentHealth {
    pub fn new() -> DeploymentHealth {
        DeploymentHealth {
            state: Mutex::new(State {
                problems: BTreeMap::new(),
                backoff: backoff(),
                paused_until: None,
                sequence: 0,
                buckets: HashMap::new(),
            }),
        }
    }

    /// Records a deployment failure of `component` and returns how long
    /// receiving pauses from now. Failures that arrive while a pause runs
    /// (the other objects in flight) do not lengthen it: the pause grows
    /// once per round, not once per object.
    pub fn report(&self, component: &str, code: &str, detail: &str) -> Duration {
        telemetry::deployment_error(component, code);
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        let problem = state
            .problems
            .entry(component.to_owned())
            .or_insert_with(|| Problem {
                component: component.to_owned(),
                code: code.to_owned(),
                detail: String::new(),
                errors: 0,
            });
        problem.code = code.to_owned();
        problem.detail = detail.to_owned();
        problem.errors += 1;
        let remaining = match state.paused_until {
            Some(until) if until > now => until - now,
            _ => {
                let pause = state.backoff.next().unwrap_or(MAX_PAUSE);
                state.paused_until = Some(now + pause);
                pause
            }
        };
        telemetry::deployment_problems(state.problems.len());
        telemetry::receive_paused(true);
        remaining
    }

    /// `components` worked: their problems are over. When none is left,
    /// the pause ends and the next problem starts from the shortest pause.
    pub fn succeeded<'a>(&self, components: impl IntoIterator<Item = &'a str>) {
        let mut state = self.state.lock().unwrap();
        if state.problems.is_empty() && state.paused_until.is_none() {
            return;
        }
        for component in components {
            state.problems.remove(component);
        }
        if state.problems.is_empty() {
            state.backoff = backoff();
            state.paused_until = None;
            telemetry::receive_paused(false);
        }
        telemetry::deployment_problems(state.problems.len());
    }

    /// How long receiving should still wait, if a pause is running.
    pub fn pause_remaining(&self) -> Option<Duration> {
        let now = Instant::now();
        let until = self.state.lock().unwrap().paused_until?;
        (until > now).then(|| until - now)
    }

    /// The components refusing the deployment now.
    pub fn problems(&self) -> Vec<Problem> {
        self.state
            .lock()
            .unwrap()
            .problems
            .values()
            .cloned()
            .collect()
    }

    /// `Err` with the reasons while any component refuses: for `/readyz`.
    pub fn readiness(&self) -> Result<(), String> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        Err(problems
            .iter()
            .map(|p| {
                format!(
                    "deployment problem: {} answers {} ({} failure(s)): {}",
                    p.component, p.code, p.errors, p.detail
                )
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// An object of `bucket` was read (committed, or failed on its content).
    pub fn object_read(&self, bucket: &str) {
        let mut state = self.state.lock().unwrap();
        state.sequence += 1;
        let sequence = state.sequence;
        state
            .buckets
            .entry(bucket.to_owned())
            .or_default()
            .last_read = sequence;
    }

    /// Judges an S3 `AccessDenied` on an object of `bucket`: `true` for the
    /// deployment's (nothing of the bucket was read since it began
    /// refusing), `false` for the object's own (another object was read
    /// since; the refusal is then explained and the next one starts anew).
    pub fn access_denied_is_deployment(&self, bucket: &str) -> bool {
        let mut state = self.state.lock().unwrap();
        state.sequence += 1;
        let sequence = state.sequence;
        let access = state.buckets.entry(bucket.to_owned()).or_default();
        match access.denied_since {
            Some(since) if access.last_read > since => {
                access.denied_since = None;
                false
            }
            Some(_) => true,
            None => {
                access.denied_since = Some(sequence);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_pause_grows_per_round_and_resets_on_success() {
        let health = DeploymentHealth::new();
        assert!(health.readiness().is_ok());
        let first = health.report("sink:events", "401", "answers 401");
        assert!(first >= MIN_PAUSE && first <= MIN_PAUSE * 2, "{first:?}");
        // Other objects failing in the same round do not lengthen it.
        let same_round = health.report("sink:events", "401", "answers 401");
        assert!(same_round <= first);
        let reason = health.readiness().unwrap_err();
        assert!(reason.contains("sink:events answers 401"), "{reason}");
        tokio::time::advance(first).await;
        assert_eq!(health.pause_remaining(), None);
        let second = health.report("sink:events", "401", "answers 401");
        assert!(second >= MIN_PAUSE * 2, "{second:?}");
        // Another component's success does not clear this one.
        health.succeeded(["s3"]);
        assert!(health.readiness().is_err());
        assert!(health.pause_remaining().is_some());
        health.succeeded(["s3", "sink:events"]);
        assert!(health.readiness().is_ok());
        assert_eq!(health.pause_remaining(), None);
        let after_reset = health.report("sqs", "ExpiredToken", "expired");
        assert!(after_reset <= MIN_PAUSE * 2, "{after_reset:?}");
    }

    #[test]
    fn access_denied_is_the_objects_own_only_once_its_bucket_was_read_since() {
        let health = DeploymentHealth::new();
        // A role that lost access: nothing of the bucket reads any more.
        assert!(health.access_denied_is_deployment("b"));
        assert!(health.access_denied_is_deployment("b"));
        // Another object of the bucket reads fine: the refusal is this
        // object's own (its KMS key).
        health.object_read("b");
        assert!(!health.access_denied_is_deployment("b"));
        // The next refusal starts anew: deployment until a read follows.
        assert!(health.access_denied_is_deployment("b"));
        // Buckets are judged apart.
        health.object_read("other");
        assert!(health.access_denied_is_deployment("b"));
    }
}
