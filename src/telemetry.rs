//! Metrics: what the worker counts, under which names, and the Prometheus
//! recorder that renders them for `/metrics`.
//!
//! Every outcome the worker logs is also counted here, with the same words:
//! received, deleted, discarded, released, committed, dead-lettered, retried.

use std::sync::OnceLock;
use std::time::Duration;

use crate::emf::EmfRecorder;
use crate::error::ErrorKind;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::layers::FanoutBuilder;

const MESSAGES_RECEIVED: &str = "s3_ingest_messages_received_total";
const MESSAGES_DELETED: &str = "s3_ingest_messages_deleted_total";
const MESSAGES_DISCARDED: &str = "s3_ingest_messages_discarded_total";
const MESSAGES_RELEASED: &str = "s3_ingest_messages_released_total";
const MESSAGES_LEFT_FOR_RETRY: &str = "s3_ingest_messages_left_for_retry_total";
const OBJECTS_COMMITTED: &str = "s3_ingest_objects_committed_total";
const OBJECTS_DEAD_LETTERED: &str = "s3_ingest_objects_dead_lettered_total";
const OBJECTS_RETRIED: &str = "s3_ingest_objects_retried_total";
const OBJECTS_UNMATCHED: &str = "s3_ingest_objects_unmatched_total";
const OBJECTS_SKIPPED: &str = "s3_ingest_objects_skipped_total";
const OBJECTS_RECONCILED: &str = "s3_ingest_objects_reconciled_total";
const BYTES_INGESTED: &str = "s3_ingest_ingested_bytes_total";
const ROWS_INGESTED: &str = "s3_ingest_rows_ingested_total";
const BATCHES_INGESTED: &str = "s3_ingest_batches_ingested_total";
const OBJECT_DURATION: &str = "s3_ingest_object_duration_seconds";
const END_TO_END_LAG: &str = "s3_ingest_end_to_end_lag_seconds";
const VISIBILITY_EXTENSIONS: &str = "s3_ingest_visibility_extensions_total";
const OBJECTS_IN_FLIGHT: &str = "s3_ingest_objects_in_flight";
const RECEIVE_ERRORS: &str = "s3_ingest_receive_errors_total";
const MESSAGES_HELD: &str = "s3_ingest_messages_held";
const PREFETCH_LIMIT: &str = "s3_ingest_prefetch_limit";
const DEPLOYMENT_ERRORS: &str = "s3_ingest_deployment_errors_total";
const DEPLOYMENT_PROBLEMS: &str = "s3_ingest_deployment_problems";
const RECEIVE_PAUSED: &str = "s3_ingest_receive_paused";
const MESSAGES_HANDED_BACK: &str = "s3_ingest_messages_handed_back_total";
const BUILD_INFO: &str = "s3_ingest_build_info";
const GROUPS_COMMITTED: &str = "s3_ingest_groups_committed_total";
const GROUPS_FAILED: &str = "s3_ingest_groups_failed_total";
const GROUPED_OBJECTS: &str = "s3_ingest_grouped_objects_total";
const OBJECTS_PARKED: &str = "s3_ingest_objects_parked";
const DELETE_FAILURES: &str = "s3_ingest_delete_failures_total";
const DEAD_LETTER_SEND_FAILURES: &str = "s3_ingest_dead_letter_send_failures_total";
const CONTRACT_FILES: &str = "s3_ingest_contract_files_total";
const CONTRACT_ROWS: &str = "s3_ingest_contract_rows_total";
const CONTRACT_DRIFT: &str = "s3_ingest_contract_drifted_files_total";

/// Seconds: from a 10 KiB file's tens of milliseconds to a large file's
/// half hour.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// The process-wide recorders, installed on first use: Prometheus (for
/// `/metrics`) and, beside it, the store that CloudWatch EMF lines are
/// written from (`emf.rs`).
struct Recorders {
    prometheus: PrometheusHandle,
    emf: EmfRecorder,
}

fn recorders() -> &'static Recorders {
    static RECORDERS: OnceLock<Recorders> = OnceLock::new();
    RECORDERS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
            .expect("static, non-empty buckets")
            .build_recorder();
        let prometheus = recorder.handle();
        let emf = EmfRecorder::default();
        let fanout = FanoutBuilder::default()
            .add_recorder(recorder)
            .add_recorder(emf.clone())
            .build();
        // Fails only if another recorder is installed (an embedding
        // program's); then ours still render, just without global data.
        let _ = metrics::set_global_recorder(fanout);
        describe();
        Recorders { prometheus, emf }
    })
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    &recorders().prometheus
}

/// The process-wide store the EMF lines are written from.
pub fn emf_recorder() -> EmfRecorder {
    recorders().emf.clone()
}

/// Renders the current metrics in Prometheus' text format.
pub fn render() -> String {
    let handle = prometheus();
    handle.run_upkeep();
    handle.render()
}

fn describe() {
    describe_counter!(MESSAGES_RECEIVED, "SQS messages received");
    describe_counter!(
        MESSAGES_DELETED,
        "SQS messages deleted after every object they name was committed or dead-lettered"
    );
    describe_counter!(
        MESSAGES_DISCARDED,
        "messages deleted without ingesting anything, by reason"
    );
    describe_counter!(
        MESSAGES_RELEASED,
        "messages released back to the queue (visibility 0) at shutdown"
    );
    describe_counter!(
        MESSAGES_LEFT_FOR_RETRY,
        "messages left on the queue for SQS to redeliver"
    );
    describe_counter!(
        OBJECTS_COMMITTED,
        "objects committed by their sink, by route and sink"
    );
    describe_counter!(
        OBJECTS_DEAD_LETTERED,
        "objects sent to the dead-letter queue, by route and error kind"
    );
    describe_counter!(
        OBJECTS_RETRIED,
        "objects that failed transiently and will be retried, by route, error kind and failing sink (\"\" when not a sink)"
    );
    describe_counter!(OBJECTS_UNMATCHED, "objects whose key matches no route");
    describe_counter!(
        OBJECTS_RECONCILED,
        "objects reconciliation enqueued because no notification of them arrived, by route"
    );
    describe_counter!(
        OBJECTS_SKIPPED,
        "objects not downloaded, by route and reason: already_committed (a redelivery, replay or backfill every sink already holds), gone (a replay of an object deleted since)"
    );
    describe_counter!(
        BYTES_INGESTED,
        "source object bytes committed, by route and sink"
    );
    describe_counter!(ROWS_INGESTED, "rows committed, by route and sink");
    describe_counter!(
        CONTRACT_FILES,
        "files held to a route's contract, by route and verdict (accepted, quarantined, rejected)"
    );
    describe_counter!(
        CONTRACT_ROWS,
        "rows of files held to a route's contract, by route and outcome (accepted, quarantined, rescued)"
    );
    describe_counter!(
        CONTRACT_DRIFT,
        "files whose columns differ from their route's schema, by route and drift (columns_added, columns_rescued, columns_missing)"
    );
    describe_counter!(
        BATCHES_INGESTED,
        "Arrow record batches committed, by route and sink"
    );
    describe_histogram!(
        OBJECT_DURATION,
        metrics::Unit::Seconds,
        "time from starting an object to its sink commit, by route"
    );
    describe_histogram!(
        END_TO_END_LAG,
        metrics::Unit::Seconds,
        "time from the S3 event to the sink commit, by route"
    );
    describe_counter!(
        VISIBILITY_EXTENSIONS,
        "visibility timeout extensions by the heartbeat"
    );
    describe_gauge!(OBJECTS_IN_FLIGHT, "objects being processed now");
    describe_counter!(RECEIVE_ERRORS, "failed ReceiveMessage calls, by class");
    describe_gauge!(
        MESSAGES_HELD,
        "messages received and not yet finished: being worked on or waiting for a slot"
    );
    describe_counter!(
        DEPLOYMENT_ERRORS,
        "failures caused by the deployment (credentials, grants, secrets) or a sink outage, not the file, by component and code"
    );
    describe_gauge!(
        DEPLOYMENT_PROBLEMS,
        "components refusing the deployment now (cleared by their next success); /readyz fails while > 0"
    );
    describe_gauge!(
        RECEIVE_PAUSED,
        "1 while receiving is paused because of a deployment problem"
    );
    describe_counter!(
        MESSAGES_HANDED_BACK,
        "messages handed back uncounted as a fresh copy (SendMessage, then delete), by reason"
    );
    describe_counter!(
        DELETE_FAILURES,
        "DeleteMessage calls SQS refused or that failed (the message is delivered again)"
    );
    describe_counter!(
        DEAD_LETTER_SEND_FAILURES,
        "envelopes the dead-letter queue did not accept (the message stays on the source queue)"
    );
    describe_gauge!(
        BUILD_INFO,
        "always 1; the labels name the running build's version and commit"
    );
    describe_counter!(
        GROUPS_COMMITTED,
        "small-file groups committed (every sink of the route), by route"
    );
    describe_counter!(
        GROUPS_FAILED,
        "small-file groups that failed (each of their objects is retried), by route"
    );
    describe_counter!(
        GROUPED_OBJECTS,
        "objects a committed group added (not those its sinks already held), by route"
    );
    describe_gauge!(
        OBJECTS_PARKED,
        "objects whose rows wait in an open group for its commit (their messages stay leased)"
    );
    describe_gauge!(
        PREFETCH_LIMIT,
        "messages the worker may hold beyond its object slots now (from recent object times)"
    );
}

/// `s3_ingest_build_info{version,commit} 1`, the Prometheus convention
/// for telling which build a series comes from.
pub fn build_info() {
    gauge!(BUILD_INFO, "version" => crate::VERSION, "commit" => crate::COMMIT).set(1.0);
}

pub fn delete_failed() {
    counter!(DELETE_FAILURES).increment(1);
}

pub fn dead_letter_send_failed() {
    counter!(DEAD_LETTER_SEND_FAILURES).increment(1);
}

pub fn message_received() {
    counter!(MESSAGES_RECEIVED).increment(1);
}

pub fn message_deleted() {
    counter!(MESSAGES_DELETED).increment(1);
}

pub fn message_discarded(reason: &'static str) {
    counter!(MESSAGES_DISCARDED, "reason" => reason).increment(1);
}

pub fn message_released() {
    counter!(MESSAGES_RELEASED).increment(1);
}

pub fn message_left_for_retry() {
    counter!(MESSAGES_LEFT_FOR_RETRY).increment(1);
}

/// What a committed object contributes to the metrics.
pub struct CommittedObject<'a> {
    pub route: &'a str,
    /// Every sink the object landed in (a route may fan out).
    pub sinks: &'a [String],
    pub bytes: u64,
    pub rows: u64,
    pub batches: u64,
    pub duration: Duration,
    /// From the S3 event time, when the notification carried one.
    pub lag: Option<Duration>,
}

pub fn object_committed(object: CommittedObject<'_>) {
    for sink in object.sinks {
        let labels = [
            ("route", object.route.to_owned()),
            ("sink", sink.to_owned()),
        ];
        counter!(OBJECTS_COMMITTED, &labels).increment(1);
        counter!(BYTES_INGESTED, &labels).increment(object.bytes);
        counter!(ROWS_INGESTED, &labels).increment(object.rows);
        counter!(BATCHES_INGESTED, &labels).increment(object.batches);
    }
    histogram!(OBJECT_DURATION, "route" => object.route.to_owned())
        .record(object.duration.as_secs_f64());
    if let Some(lag) = object.lag {
        histogram!(END_TO_END_LAG, "route" => object.route.to_owned()).record(lag.as_secs_f64());
    }
}

/// One file's outcome under its route's contract, counted once: when the
/// file is committed (not for a redelivery the sinks already held) or
/// rejected. Labels are the route and fixed words, never the file.
pub fn contract_file(route: &str, outcome: &crate::contract::ContractOutcome) {
    let route = route.to_owned();
    counter!(CONTRACT_FILES, "route" => route.clone(), "verdict" => outcome.verdict.as_str())
        .increment(1);
    for (name, rows) in [
        ("accepted", outcome.accepted_rows),
        ("quarantined", outcome.quarantined_rows),
        ("rescued", outcome.rescued_rows),
    ] {
        counter!(CONTRACT_ROWS, "route" => route.clone(), "outcome" => name).increment(rows);
    }
    for (drift, columns) in [
        ("columns_added", &outcome.columns_added),
        ("columns_rescued", &outcome.columns_rescued),
        ("columns_missing", &outcome.columns_missing),
    ] {
        if !columns.is_empty() {
            counter!(CONTRACT_DRIFT, "route" => route.clone(), "drift" => drift).increment(1);
        }
    }
}

pub fn object_dead_lettered(route: Option<&str>, error_kind: ErrorKind) {
    counter!(
        OBJECTS_DEAD_LETTERED,
        "route" => route.unwrap_or("").to_owned(),
        "error_kind" => error_kind.as_str()
    )
    .increment(1);
}

/// `sink`: the sink that failed, or `None` (label `""`) when the object
/// failed before a sink (S3, decoding), so a retry rate can be watched per
/// sink.
pub fn object_retried(route: &str, error_kind: ErrorKind, sink: Option<&str>) {
    counter!(
        OBJECTS_RETRIED,
        "route" => route.to_owned(),
        "error_kind" => error_kind.as_str(),
        "sink" => sink.unwrap_or_default().to_owned()
    )
    .increment(1);
}

pub fn object_skipped(route: &str, reason: &'static str) {
    counter!(OBJECTS_SKIPPED, "route" => route.to_owned(), "reason" => reason).increment(1);
}

/// A small-file group committed, with `objects` objects added by it.
pub fn group_committed(route: &str, objects: usize) {
    counter!(GROUPS_COMMITTED, "route" => route.to_owned()).increment(1);
    counter!(GROUPED_OBJECTS, "route" => route.to_owned()).increment(objects as u64);
}

pub fn group_failed(route: &str) {
    counter!(GROUPS_FAILED, "route" => route.to_owned()).increment(1);
}

pub fn objects_parked(parked: usize) {
    gauge!(OBJECTS_PARKED).set(parked as f64);
}

pub fn object_reconciled(route: &str) {
    counter!(OBJECTS_RECONCILED, "route" => route.to_owned()).increment(1);
}

pub fn object_unmatched() {
    counter!(OBJECTS_UNMATCHED).increment(1);
}

pub fn visibility_extended(count: u64) {
    counter!(VISIBILITY_EXTENSIONS).increment(count);
}

pub fn objects_in_flight(delta: f64) {
    gauge!(OBJECTS_IN_FLIGHT).increment(delta);
}

pub fn messages_held(held: usize, prefetch_limit: usize) {
    gauge!(MESSAGES_HELD).set(held as f64);
    gauge!(PREFETCH_LIMIT).set(prefetch_limit as f64);
}

pub fn deployment_error(component: &str, code: &str) {
    counter!(
        DEPLOYMENT_ERRORS,
        "component" => component.to_owned(),
        "code" => code.to_owned()
    )
    .increment(1);
}

pub fn deployment_problems(count: usize) {
    gauge!(DEPLOYMENT_PROBLEMS).set(count as f64);
}

pub fn receive_paused(paused: bool) {
    gauge!(RECEIVE_PAUSED).set(if paused { 1.0 } else { 0.0 });
}

pub fn message_handed_back(reason: &'static str) {
    counter!(MESSAGES_HANDED_BACK, "reason" => reason).increment(1);
}

pub fn receive_error(class: &'static str) {
    counter!(RECEIVE_ERRORS, "class" => class).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_outcomes_render_in_prometheus_format() {
        prometheus();
        object_committed(CommittedObject {
            route: "orders",
            sinks: &["lake".to_owned()],
            bytes: 1234,
            rows: 10,
            batches: 1,
            duration: Duration::from_millis(40),
            lag: Some(Duration::from_secs(2)),
        });
        object_dead_lettered(Some("orders"), ErrorKind::CsvError);
        object_retried("orders", ErrorKind::Unavailable, Some("warehouse"));
        object_retried("orders", ErrorKind::S3Error, None);
        group_committed("small", 600);
        group_failed("small");
        build_info();
        let text = render();
        assert!(
            text.contains("s3_ingest_objects_committed_total{route=\"orders\",sink=\"lake\"}"),
            "{text}"
        );
        assert!(
            text.contains("s3_ingest_end_to_end_lag_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("error_kind=\"csv_error\""), "{text}");
        for retried in [
            "s3_ingest_objects_retried_total{route=\"orders\",error_kind=\"unavailable\",sink=\"warehouse\"} 1",
            "s3_ingest_objects_retried_total{route=\"orders\",error_kind=\"s3_error\",sink=\"\"} 1",
        ] {
            assert!(text.contains(retried), "{retried} missing from {text}");
        }
        for grouped in [
            "s3_ingest_groups_committed_total{route=\"small\"} 1",
            "s3_ingest_grouped_objects_total{route=\"small\"} 600",
            "s3_ingest_groups_failed_total{route=\"small\"} 1",
        ] {
            assert!(text.contains(grouped), "{grouped} missing from {text}");
        }
        let build = format!(
            "s3_ingest_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            crate::VERSION,
            crate::COMMIT
        );
        assert!(text.contains(&build), "{build} missing from {text}");
    }
}
