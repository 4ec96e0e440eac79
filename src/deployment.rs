//! Deployment problems: failures that no file causes and no file can fix.
//!
//! Expired or invalid AWS credentials, an `http` sink answering 401/403, a
//! PostgreSQL role whose password or grant is gone: every object fails
//! alike until an operator fixes the deployment. Dead-lettering those
//! objects (or counting the failure against them) would empty the backlog
//! into the DLQ on a rotated token. Instead the worker:
//!
//! - hands the message back uncounted (a fresh copy, delayed by the pause;
//!   see `worker/message.rs`),
//! - pauses receiving for an exponentially growing time (1 s doubling to
//!   5 min, with jitter), reset when the component works again,
//! - fails `/readyz` with the reason while any component is refusing,
//! - counts `s3_ingest_deployment_errors_total{component,code}` and shows
//!   `s3_ingest_deployment_problems` / `s3_ingest_receive_paused`.
//!
//! Which failures are the deployment's is decided in `error.rs`
//! (`is_credential_error_code`, `is_deployment_http_status`,
//! `is_deployment_sqlstate`). Two cases need history, and are judged here
//! by one rule: a failure is the deployment's unless the same thing has
//! worked for another object since it began failing.
//!
//! - S3 `AccessDenied` on one object is the deployment's (a role that lost
//!   `s3:GetObject`, a bucket policy) unless another object of the same
//!   bucket has been read since this bucket started refusing; then it is
//!   that object's own (its KMS key, an ACL) and it is dead-lettered as
//!   `access_denied`. A deleted object reads as 404 (`object_missing`)
//!   because the role holds `s3:ListBucket` (see infra/).
//! - A sink that is unavailable (`IngestError::Unavailable`: refused
//!   connections, timeouts, 502/503/504/429, a database restarting or
//!   full, a directory that cannot be written) is an outage, handed back
//!   uncounted however long it lasts, unless another object has committed
//!   to that sink since it began failing; then the failure is this
//!   object's own (a payload the receiver chokes on) and counts as a
//!   failed attempt, so a file that always times out still reaches the
//!   DLQ. On a quiet queue such a file keeps the pause going (up to
//!   `MAX_PAUSE` between tries) until another object shows the sink works.

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
    /// Orders successes and failures (time would do, but paused test
    /// clocks make equal instants common).
    sequence: u64,
    /// Per bucket (`s3://NAME`) and per sink (`sink:NAME`).
    history: HashMap<String, History>,
}

/// What a bucket or sink did lately, for judging its next failure.
#[derive(Debug, Default)]
struct History {
    /// Sequence number of the last time it worked for an object.
    last_worked: u64,
    /// Sequence number of the first failure not yet explained.
    failing_since: Option<u64>,
}

impl State {
    fn worked(&mut self, subject: &str) {
        self.sequence += 1;
        let sequence = self.sequence;
        self.history
            .entry(subject.to_owned())
            .or_default()
            .last_worked = sequence;
    }

    /// `true` when `subject`'s failure is the deployment's: it has not
    /// worked for any object since it began failing. `false` when it has;
    /// the failure is then the object's own.
    fn failure_is_deployment(&mut self, subject: &str) -> bool {
        self.sequence += 1;
        let sequence = self.sequence;
        let history = self.history.entry(subject.to_owned()).or_default();
        match history.failing_since {
            // It worked for another object since: this failure is the
            // object's own. Judging starts again from here, so the next
            // failure is the object's own too if it works again meanwhile.
            Some(since) if history.last_worked > since => {
                history.failing_since = Some(sequence);
                false
            }
            Some(_) => true,
            None => {
                history.failing_since = Some(sequence);
                true
            }
        }
    }
}

fn bucket_subject(bucket: &str) -> String {
    format!("s3://{bucket}")
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
                history: HashMap::new(),
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

    /// `components` worked for an object: their problems are over. When
    /// none is left, the pause ends and the next problem starts from the
    /// shortest pause.
    pub fn succeeded<'a>(&self, components: impl IntoIterator<Item = &'a str>) {
        let mut state = self.state.lock().unwrap();
        for component in components {
            state.worked(component);
            state.problems.remove(component);
        }
        if state.problems.is_empty() && state.paused_until.is_some() {
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
        self.state.lock().unwrap().worked(&bucket_subject(bucket));
    }

    /// Judges an S3 `AccessDenied` on an object of `bucket`: `true` for the
    /// deployment's (nothing of the bucket was read since it began
    /// refusing), `false` for the object's own (another object was read
    /// since; the refusal is then explained and the next one starts anew).
    pub fn access_denied_is_deployment(&self, bucket: &str) -> bool {
        self.state
            .lock()
            .unwrap()
            .failure_is_deployment(&bucket_subject(bucket))
    }

    /// Judges a sink's unavailability (`component` is `sink:NAME`) for
    /// one object: `true` for an outage (nothing committed to the sink
    /// since it began failing), `false` for the object's own failure.
    pub fn unavailable_is_outage(&self, component: &str) -> bool {
        self.state.lock().unwrap().failure_is_deployment(component)
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

    #[test]
    fn an_unavailable_sink_is_an_outage_until_it_works_for_another_object() {
        let health = DeploymentHealth::new();
        // The sink is down: every object fails, however often.
        for _ in 0..10 {
            assert!(health.unavailable_is_outage("sink:events"));
        }
        // It works again for another object: the next failure is the
        // object's own (it counts), and the one after starts anew.
        health.succeeded(["s3", "sink:events"]);
        assert!(!health.unavailable_is_outage("sink:events"));
        // While others keep landing, each failure is the object's own.
        health.succeeded(["s3", "sink:events"]);
        assert!(!health.unavailable_is_outage("sink:events"));
        // Nothing landed since the last failure: an outage again.
        assert!(health.unavailable_is_outage("sink:events"));
        // A success of another sink says nothing about this one.
        health.succeeded(["sink:lake"]);
        assert!(health.unavailable_is_outage("sink:events"));
        // Nor does a read of a bucket of the same name.
        health.object_read("sink:events");
        assert!(health.unavailable_is_outage("sink:events"));
    }
}
