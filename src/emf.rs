//! The worker's key metrics as CloudWatch embedded metric format (EMF)
//! lines on stderr, for ECS tasks that nobody scrapes: the awslogs driver
//! ships stderr to CloudWatch Logs, which turns each EMF line into metric
//! data points. No sidecar, no agent, no PutMetricData permission. Off
//! unless `status.emf_namespace` is set.
//!
//! [`EmfRecorder`] sits beside the Prometheus recorder (a fanout, see
//! `telemetry.rs`) and keeps every counter and gauge; [`EmfEmitter`]
//! writes, every `status.emf_interval_secs`, one JSON line per exported
//! series that changed: a counter's increase since the last line, a
//! gauge's value. Each line is published under the dimension `Service`
//! alone (for alarms over the whole service) and under `Service` with
//! each of its labels (`route`, `sink`, `error_kind`, a contract's
//! `verdict`), so cardinality stays that of the labels, never per file.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use serde_json::{Map, Value, json};

/// What is exported, as (Prometheus name, CloudWatch name, unit). Everything
/// else stays on `/metrics` only.
const EXPORTED_COUNTERS: &[(&str, &str, &str)] = &[
    (
        "s3_ingest_messages_received_total",
        "MessagesReceived",
        "Count",
    ),
    (
        "s3_ingest_objects_committed_total",
        "ObjectsCommitted",
        "Count",
    ),
    (
        "s3_ingest_objects_dead_lettered_total",
        "ObjectsDeadLettered",
        "Count",
    ),
    ("s3_ingest_objects_retried_total", "ObjectsRetried", "Count"),
    ("s3_ingest_rows_ingested_total", "RowsIngested", "Count"),
    ("s3_ingest_ingested_bytes_total", "IngestedBytes", "Bytes"),
    ("s3_ingest_delete_failures_total", "DeleteFailures", "Count"),
    (
        "s3_ingest_dead_letter_send_failures_total",
        "DeadLetterSendFailures",
        "Count",
    ),
    ("s3_ingest_receive_errors_total", "ReceiveErrors", "Count"),
    // Vendor data contracts: a vendor's drift and bad rows, per route.
    ("s3_ingest_contract_files_total", "ContractFiles", "Count"),
    ("s3_ingest_contract_rows_total", "ContractRows", "Count"),
    (
        "s3_ingest_contract_drifted_files_total",
        "ContractDriftedFiles",
        "Count",
    ),
];
const EXPORTED_GAUGES: &[(&str, &str, &str)] = &[
    (
        "s3_ingest_deployment_problems",
        "DeploymentProblems",
        "Count",
    ),
    ("s3_ingest_objects_in_flight", "ObjectsInFlight", "Count"),
];

/// Keeps every counter and gauge the process records (histograms are not
/// exported: `/metrics` has them).
#[derive(Clone)]
pub struct EmfRecorder {
    registry: Arc<Registry<Key, AtomicStorage>>,
}

impl Default for EmfRecorder {
    fn default() -> Self {
        EmfRecorder {
            registry: Arc::new(Registry::atomic()),
        }
    }
}

impl Recorder for EmfRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |counter| Counter::from_arc(counter.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |gauge| Gauge::from_arc(gauge.clone()))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Renders the recorder's exported series as EMF lines.
pub struct EmfEmitter {
    recorder: EmfRecorder,
    namespace: String,
    service: String,
    /// Each counter's value when it was last written.
    written: HashMap<Key, u64>,
}

impl EmfEmitter {
    pub fn new(recorder: EmfRecorder, namespace: &str, service: &str) -> EmfEmitter {
        EmfEmitter {
            recorder,
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            written: HashMap::new(),
        }
    }

    /// The lines for now: counters that grew since the last call, with
    /// their increase; exported gauges with their value.
    pub fn lines(&mut self, timestamp_ms: u64) -> Vec<String> {
        let mut lines = Vec::new();
        let mut counters = Vec::new();
        self.recorder.registry.visit_counters(|key, counter| {
            counters.push((key.clone(), counter.load(Ordering::Relaxed)));
        });
        counters.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in counters {
            let Some((_, name, unit)) = EXPORTED_COUNTERS
                .iter()
                .find(|(exported, _, _)| *exported == key.name())
            else {
                continue;
            };
            let previous = self.written.insert(key.clone(), value).unwrap_or(0);
            let increase = value.saturating_sub(previous);
            if increase > 0 {
                lines.push(self.line(timestamp_ms, &key, name, unit, json!(increase)));
            }
        }
        let mut gauges = Vec::new();
        self.recorder.registry.visit_gauges(|key, gauge| {
            gauges.push((key.clone(), f64::from_bits(gauge.load(Ordering::Relaxed))));
        });
        gauges.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in gauges {
            if let Some((_, name, unit)) = EXPORTED_GAUGES
                .iter()
                .find(|(exported, _, _)| *exported == key.name())
            {
                lines.push(self.line(timestamp_ms, &key, name, unit, json!(value)));
            }
        }
        lines
    }

    fn line(&self, timestamp_ms: u64, key: &Key, name: &str, unit: &str, value: Value) -> String {
        let mut dimensions = vec![json!(["Service"])];
        let mut document = Map::new();
        document.insert("Service".into(), json!(self.service));
        for label in key.labels() {
            // An empty label (e.g. `sink` of a failure before any sink)
            // is no dimension value; it stays out of the line.
            if label.value().is_empty() {
                continue;
            }
            dimensions.push(json!(["Service", label.key()]));
            document.insert(label.key().to_owned(), json!(label.value()));
        }
        document.insert(name.to_owned(), value);
        document.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": dimensions,
                    "Metrics": [{ "Name": name, "Unit": unit }],
                }],
            }),
        );
        Value::Object(document).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> (EmfRecorder, Counter, Counter, Gauge) {
        let recorder = EmfRecorder::default();
        let metadata = Metadata::new("test", metrics::Level::INFO, None);
        let retried = recorder.register_counter(
            &Key::from_parts(
                "s3_ingest_objects_retried_total",
                vec![
                    metrics::Label::new("route", "orders"),
                    metrics::Label::new("error_kind", "unavailable"),
                    metrics::Label::new("sink", "warehouse"),
                ],
            ),
            &metadata,
        );
        let unexported = recorder.register_counter(
            &Key::from_name("s3_ingest_visibility_extensions_total"),
            &metadata,
        );
        let problems =
            recorder.register_gauge(&Key::from_name("s3_ingest_deployment_problems"), &metadata);
        (recorder, retried, unexported, problems)
    }

    #[test]
    fn a_counter_is_written_as_its_increase_under_each_label() {
        let (recorder, retried, unexported, problems) = recorded();
        let mut emitter = EmfEmitter::new(recorder, "s3-ingest", "ingest-prod");
        retried.increment(3);
        unexported.increment(5);
        problems.set(1.0);
        let lines = emitter.lines(1_700_000_000_000);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let retried_line: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(retried_line["ObjectsRetried"], 3);
        assert_eq!(retried_line["Service"], "ingest-prod");
        assert_eq!(retried_line["sink"], "warehouse");
        let directive = &retried_line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "s3-ingest");
        assert_eq!(
            directive["Dimensions"],
            json!([
                ["Service"],
                ["Service", "route"],
                ["Service", "error_kind"],
                ["Service", "sink"]
            ])
        );
        assert_eq!(
            directive["Metrics"],
            json!([{ "Name": "ObjectsRetried", "Unit": "Count" }])
        );
        assert_eq!(retried_line["_aws"]["Timestamp"], 1_700_000_000_000_u64);
        let gauge_line: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(gauge_line["DeploymentProblems"], 1.0);

        // Nothing new: only the gauge again. Then the increase, not the total.
        let lines = emitter.lines(1_700_000_060_000);
        assert_eq!(lines.len(), 1, "{lines:?}");
        retried.increment(2);
        let lines = emitter.lines(1_700_000_120_000);
        let retried_line: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(retried_line["ObjectsRetried"], 2);
    }

    #[test]
    fn an_empty_label_is_no_dimension() {
        let recorder = EmfRecorder::default();
        let metadata = Metadata::new("test", metrics::Level::INFO, None);
        let retried = recorder.register_counter(
            &Key::from_parts(
                "s3_ingest_objects_retried_total",
                vec![
                    metrics::Label::new("route", "orders"),
                    metrics::Label::new("sink", ""),
                ],
            ),
            &metadata,
        );
        retried.increment(1);
        let mut emitter = EmfEmitter::new(recorder, "ns", "svc");
        let line: Value = serde_json::from_str(&emitter.lines(0)[0]).unwrap();
        assert!(line.get("sink").is_none(), "{line}");
        assert_eq!(
            line["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Service"], ["Service", "route"]])
        );
    }
}
