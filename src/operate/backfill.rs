//! `s3-ingest backfill s3://bucket/prefix`: ingests objects that are
//! already in a bucket (dropped before its notification existed, or whose
//! notification was lost).
//!
//! Lists the prefix in key order; for every object a route claims (and
//! `--since`/`--until` admit), looks up its current version (HeadObject,
//! so a versioned bucket's version id is known), asks the route's sinks
//! whether they hold it already, and either enqueues a synthetic
//! `ObjectCreated:Backfill` event (the fleet ingests it; its event time is
//! the object's LastModified) or, with `--now`, ingests it here. Stopped at
//! any point, it resumes with `--start-after` the last key it reported.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::ingest::Ingestor;
use crate::notification::{self, BACKFILL_EVENT_NAME, Origin};
use crate::object::S3Objects;
use crate::queue::sqs::SqsQueue;
use crate::route::Router;
use crate::sink::CommitState;

/// What to backfill.
#[derive(Debug, Clone)]
pub struct BackfillRequest {
    pub bucket: String,
    pub prefix: String,
    /// Only objects last modified at or after / before these.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only objects this route claims (it must also be the route that
    /// matches first, as for a notification).
    pub route: Option<String>,
    /// Resume after this key.
    pub start_after: Option<String>,
    /// Ingest in this process instead of enqueueing.
    pub now: bool,
    pub dry_run: bool,
}

/// The counts a backfill reports as it goes and at the end.
#[derive(Debug, Default, Clone, Serialize)]
pub struct BackfillSummary {
    /// Objects the listing returned.
    pub listed: u64,
    pub listed_bytes: u64,
    /// Outside `--since`/`--until`, or of another route than `--route`.
    pub filtered: u64,
    /// No route matches the key.
    pub unmatched: u64,
    /// Every sink of the route holds the object already.
    pub already_committed: u64,
    /// Enqueued, or ingested with `--now` (with `--dry-run`: would be).
    pub enqueued: u64,
    pub ingested: u64,
    pub bytes: u64,
    /// Of the enqueued or ingested: objects whose sinks cannot say
    /// whether they hold them (http, stdout); the receiver's idempotency
    /// keys absorb a duplicate.
    pub unknown_commit_state: u64,
    /// Failed (looked up, enqueued or ingested); each is printed.
    pub failed: u64,
    /// The last key fully handled: resume with `--start-after` it.
    pub last_key: Option<String>,
    /// Stopped early (a signal, or the listing failed).
    pub interrupted: bool,
}

impl BackfillSummary {
    fn line(&self) -> String {
        format!(
            "listed {} ({}), enqueued {}, ingested {}, already committed {}, unmatched {}, filtered {}, failed {}",
            self.listed,
            human_bytes(self.listed_bytes),
            self.enqueued,
            self.ingested,
            self.already_committed,
            self.unmatched,
            self.filtered,
            self.failed
        )
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Progress on stderr: one line rewritten in place on a terminal, a plain
/// line every few seconds otherwise (logs).
struct Progress {
    terminal: bool,
    last: Instant,
    every: Duration,
}

impl Progress {
    fn new() -> Progress {
        let terminal = std::io::stderr().is_terminal();
        Progress {
            terminal,
            last: Instant::now(),
            every: if terminal {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(10)
            },
        }
    }

    fn update(&mut self, summary: &BackfillSummary) {
        if self.last.elapsed() < self.every {
            return;
        }
        self.last = Instant::now();
        let mut err = std::io::stderr();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{}", summary.line());
        } else {
            let _ = writeln!(err, "backfill: {}", summary.line());
        }
    }

    fn done(&self) {
        if self.terminal {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

/// What a backfill uses.
pub struct Backfiller<'a> {
    pub objects: &'a S3Objects,
    pub router: &'a Router,
    pub ingestor: &'a Ingestor,
    /// Where synthetic events go (the worker's source queue).
    pub queue: &'a SqsQueue,
}

impl Backfiller<'_> {
    /// Runs a backfill to the end of the prefix or until `stop`; each
    /// failed object is printed to stderr and counted, and the run goes
    /// on. Returns the summary.
    pub async fn run(
        &self,
        request: &BackfillRequest,
        stop: &CancellationToken,
    ) -> BackfillSummary {
        let mut summary = BackfillSummary::default();
        let mut progress = Progress::new();
        let mut continuation: Option<String> = None;
        loop {
            let page = self
                .objects
                .list_page(
                    &request.bucket,
                    &request.prefix,
                    request.start_after.as_deref(),
                    continuation.as_deref(),
                )
                .await;
            let page = match page {
                Ok(page) => page,
                Err(err) => {
                    eprintln!("error: {err}");
                    summary.interrupted = true;
                    break;
                }
            };
            for listed in &page.objects {
                if stop.is_cancelled() {
                    summary.interrupted = true;
                    break;
                }
                summary.listed += 1;
                summary.listed_bytes += listed.size.unwrap_or(0);
                self.one(request, &listed.key, listed.last_modified, &mut summary)
                    .await;
                summary.last_key = Some(listed.key.clone());
                progress.update(&summary);
            }
            if summary.interrupted {
                break;
            }
            match page.next {
                Some(token) => continuation = Some(token),
                None => break,
            }
        }
        progress.done();
        summary
    }

    async fn one(
        &self,
        request: &BackfillRequest,
        key: &str,
        last_modified: Option<DateTime<Utc>>,
        summary: &mut BackfillSummary,
    ) {
        let in_window = request
            .since
            .is_none_or(|since| last_modified.is_some_and(|t| t >= since))
            && request
                .until
                .is_none_or(|until| last_modified.is_some_and(|t| t < until));
        if !in_window {
            summary.filtered += 1;
            return;
        }
        let Some(route) = self.router.route(&request.bucket, key) else {
            summary.unmatched += 1;
            return;
        };
        if request.route.as_ref().is_some_and(|r| r != &route.name) {
            summary.filtered += 1;
            return;
        }
        let uri = format!("s3://{}/{key}", request.bucket);
        let plan = match route.plan(key) {
            Ok(plan) => plan,
            Err(detail) => {
                eprintln!("error: {uri}: {detail}");
                summary.failed += 1;
                return;
            }
        };
        // The version the listing saw may be gone by now; the current one
        // is what a notification would name.
        let current = match self.objects.current_version(&request.bucket, key).await {
            Ok(Some(current)) => current,
            Ok(None) => {
                // Deleted since it was listed: nothing to ingest.
                summary.filtered += 1;
                return;
            }
            Err(err) => {
                eprintln!("error: {uri}: {err}");
                summary.failed += 1;
                return;
            }
        };
        let object = current.to_object(
            &request.bucket,
            key,
            last_modified,
            Origin::Backfill,
            BACKFILL_EVENT_NAME,
        );
        match self.ingestor.commit_state(&object, &plan).await {
            Ok(CommitState::Committed) => {
                summary.already_committed += 1;
                return;
            }
            Ok(CommitState::Unknown) => summary.unknown_commit_state += 1,
            Ok(CommitState::NotCommitted) => {}
            // Enqueued anyway: the sinks' commit is idempotent.
            Err(err) => {
                eprintln!("warning: {uri}: cannot tell whether the sinks hold it: {err}");
                summary.unknown_commit_state += 1;
            }
        }
        let bytes = object.size.unwrap_or(0);
        if request.dry_run {
            summary.enqueued += 1;
            summary.bytes += bytes;
            return;
        }
        if request.now {
            match self.ingestor.ingest_object(&object, &plan).await {
                Ok(_) => {
                    summary.ingested += 1;
                    summary.bytes += bytes;
                }
                Err(err) => {
                    eprintln!("error: {uri}: {} ({})", err, err.kind());
                    summary.failed += 1;
                }
            }
            return;
        }
        match self
            .queue
            .send(&notification::synthetic_event(&object, BACKFILL_EVENT_NAME))
            .await
        {
            Ok(()) => {
                summary.enqueued += 1;
                summary.bytes += bytes;
            }
            Err(err) => {
                eprintln!("error: {uri}: could not enqueue: {err}");
                summary.failed += 1;
            }
        }
    }
}

/// The summary as printed at the end.
pub fn print_summary(
    request: &BackfillRequest,
    summary: &BackfillSummary,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let verb = match (request.dry_run, request.now) {
        (true, _) => "would ingest",
        (false, true) => "ingested",
        (false, false) => "enqueued",
    };
    let done = if request.now {
        summary.ingested
    } else {
        summary.enqueued
    };
    writeln!(
        out,
        "backfill s3://{}/{}: listed {} objects ({}); {verb} {done} ({}); skipped {} already committed, {} matching no route, {} outside the selection; {} failed",
        request.bucket,
        request.prefix,
        summary.listed,
        human_bytes(summary.listed_bytes),
        human_bytes(summary.bytes),
        summary.already_committed,
        summary.unmatched,
        summary.filtered,
        summary.failed,
    )?;
    if summary.unknown_commit_state > 0 {
        writeln!(
            out,
            "note: for {} of them a sink cannot tell whether it holds the object already (http, stdout): a duplicate is absorbed by the receiver's idempotency key",
            summary.unknown_commit_state
        )?;
    }
    if (summary.interrupted || summary.failed > 0)
        && let Some(last) = &summary.last_key
    {
        writeln!(
            out,
            "to resume after the last key handled: --start-after '{}'",
            last.replace('\'', "'\\''")
        )?;
    }
    Ok(())
}

/// Splits `s3://bucket/prefix` (the prefix may be empty).
pub fn parse_location(uri: &str) -> Result<(String, String), String> {
    let (bucket, prefix) = crate::config::parse_s3_location(uri)?;
    if bucket.is_empty() {
        return Err(format!("`{uri}` names no bucket"));
    }
    Ok((bucket, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_split_into_bucket_and_prefix() {
        assert_eq!(
            parse_location("s3://b/in/2026/").unwrap(),
            ("b".into(), "in/2026/".into())
        );
        assert_eq!(parse_location("s3://b").unwrap(), ("b".into(), "".into()));
        assert!(parse_location("b/in").is_err());
        assert!(parse_location("s3:///in").is_err());
    }

    #[test]
    fn the_summary_says_how_to_resume_after_a_failure() {
        let request = BackfillRequest {
            bucket: "b".into(),
            prefix: "in/".into(),
            since: None,
            until: None,
            route: None,
            start_after: None,
            now: false,
            dry_run: false,
        };
        let summary = BackfillSummary {
            listed: 3,
            enqueued: 1,
            already_committed: 1,
            failed: 1,
            last_key: Some("in/it's.csv".into()),
            ..BackfillSummary::default()
        };
        let mut out = Vec::new();
        print_summary(&request, &summary, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("enqueued 1"), "{text}");
        assert!(text.contains("skipped 1 already committed"), "{text}");
        assert!(text.contains("--start-after 'in/it'\\''s.csv'"), "{text}");
    }
}
