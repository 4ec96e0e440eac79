//! `s3-ingest trace s3://bucket/key` on LocalStack, through the binary:
//! an object committed by a worker, one dead-lettered, one never
//! notified (then waiting on the queue), one that does not exist. The
//! trace consumes nothing: the DLQ and the source queue hold the same
//! messages, visible, afterwards.

use std::path::Path;
use std::process::Output;

use s3_ingest::config::Config;

use crate::util::{
    self, Fixture, FixtureOptions, WAIT, describe_output as describe, queue_counts, run_cli,
    stdout_of, wait_until,
};

/// As `operate.rs`: `id` is an integer, so `id` = "three" is poison.
const TYPED_ROUTE: &str = r#"
    [[routes]]
    name = "typed"
    key_glob = "in/**"
    sink = "lake"
    schema = [{ name = "id", type = "int64" }, { name = "name", type = "utf8" }]
"#;

/// Runs `s3-ingest --config <config> trace ARGS`.
fn trace(config: &Config, dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["trace"];
    all.extend(args);
    run_cli(config, dir, &all)
}

/// Runs `trace ARGS --format json`, which must succeed, and parses it.
fn trace_json(config: &Config, dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.extend(["--format", "json"]);
    let output = trace(config, dir, &args);
    assert!(output.status.success(), "{}", describe(&output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("{err}: {}", describe(&output)))
}

async fn wait_for_counts(fixture: &Fixture, url: &str, visible: u64) {
    wait_until(
        &format!("{visible} visible message(s) on {url} and none in flight"),
        WAIT,
        || async { queue_counts(&fixture.clients, url).await == (visible, 0) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_a_worker_committed_is_traced_to_its_file() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("trace-committed").await;
    let config = fixture.config(None);
    let worker = fixture.start_worker(config.clone());
    fixture.put("in/orders.csv", util::csv_rows(3)).await;
    fixture.wait_for_files_and_empty_queue(1).await;
    worker.stop().await;
    let file = fixture.sink_files().remove(0);
    let uri = format!("s3://{}/in/orders.csv", fixture.bucket);

    let text = trace(&config, fixture.output_dir(), &[&uri]);
    assert!(text.status.success(), "{}", describe(&text));
    let out = stdout_of(&text);
    let first = out.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("{uri}: committed (etag ")) && first.ends_with(", 1 sink)"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}, 3 rows, at ", file.display())),
        "{out}"
    );
    assert!(out.contains("dead letters  none"), "{out}");

    let json = trace_json(&config, fixture.output_dir(), &[&uri]);
    assert_eq!(json["outcome"], "committed", "{json}");
    assert_eq!(json["route"]["name"], "all", "{json}");
    let sink = &json["sinks"][0];
    assert_eq!(sink["sink"], "lake");
    assert_eq!(sink["state"], "committed");
    assert_eq!(sink["details"]["location"], file.display().to_string());
    assert_eq!(sink["details"]["rows"], 3);
    assert!(sink["details"]["committed_at"].is_string(), "{json}");
    assert_eq!(json["current"]["size"], util::csv_rows(3).len());
    assert_eq!(json["traced_version"], json["current"]["etag"], "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_object_is_traced_to_the_dlq_and_stays_there() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("trace-poison").await;
    let config = fixture.config(Some(TYPED_ROUTE));
    let worker = fixture.start_worker(config.clone());
    fixture.put("in/bad.csv", "id,name\nthree,c\n").await;
    // Another poison object: the trace lists only its own key's envelope.
    fixture.put("in/bad-too.csv", "id,name\nfour,d\n").await;
    wait_for_counts(&fixture, &fixture.dlq_url, 2).await;
    worker.stop().await;
    let uri = format!("s3://{}/in/bad.csv", fixture.bucket);

    let text = trace(&config, fixture.output_dir(), &[&uri]);
    assert!(text.status.success(), "{}", describe(&text));
    let out = stdout_of(&text);
    assert!(
        out.starts_with(&format!("{uri}: dead-lettered (csv_error at ")),
        "{out}"
    );
    assert!(out.contains("lake  not committed"), "{out}");
    // Released at the end, not hidden for --dlq-hide-secs.
    wait_for_counts(&fixture, &fixture.dlq_url, 2).await;

    let json = trace_json(&config, fixture.output_dir(), &[&uri]);
    assert_eq!(json["outcome"], "dead_lettered", "{json}");
    let letters = json["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{json}");
    assert_eq!(letters[0]["error_kind"], "csv_error");
    assert!(
        letters[0]["error"].as_str().unwrap().contains("three"),
        "{json}"
    );
    assert!(letters[0]["failed_at"].is_string(), "{json}");
    assert_eq!(letters[0]["etag"], json["current"]["etag"], "{json}");
    assert_eq!(letters[0]["for_traced_version"], true);
    assert!(letters[0]["attempts"].as_u64().unwrap() >= 1, "{json}");
    assert_eq!(json["sinks"][0]["state"], "not_committed");
    wait_for_counts(&fixture, &fixture.dlq_url, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_never_notified_is_never_seen_then_found_waiting() {
    let _suite = crate::shared().await;
    let fixture = Fixture::with_options(
        "trace-quiet",
        FixtureOptions {
            notifications: false,
            ..FixtureOptions::default()
        },
    )
    .await;
    let config = fixture.config(None);
    let body = util::csv_rows(2);
    let etag = fixture.put("in/quiet.csv", body.clone()).await;
    let uri = format!("s3://{}/in/quiet.csv", fixture.bucket);

    let text = trace(&config, fixture.output_dir(), &[&uri]);
    assert!(text.status.success(), "{}", describe(&text));
    let out = stdout_of(&text);
    assert!(
        out.starts_with(&format!(
            "{uri}: not committed and not dead-lettered: never seen? (try: s3-ingest backfill {uri})\n"
        )),
        "{out}"
    );

    // Its event arrives while no worker runs, behind another object's.
    let other = util::s3_event(&fixture.bucket, &[("in/other.csv", "e0", 1)]);
    fixture.send_raw(&other.to_string()).await;
    let event = util::s3_event(
        &fixture.bucket,
        &[("in/quiet.csv", &etag, body.len() as u64)],
    );
    fixture.send_raw(&event.to_string()).await;
    wait_for_counts(&fixture, &fixture.queue_url, 2).await;

    // Without a peek: only the counts, and a hint.
    let json = trace_json(&config, fixture.output_dir(), &[&uri]);
    assert_eq!(json["outcome"], "never_seen", "{json}");
    assert_eq!(json["queue"]["visible"], 2, "{json}");
    assert!(json["queue"]["peek"].is_null(), "{json}");
    assert!(
        json["verdict"].as_str().unwrap().contains("--peek-queue"),
        "{json}"
    );

    let json = trace_json(&config, fixture.output_dir(), &[&uri, "--peek-queue"]);
    assert_eq!(json["outcome"], "waiting", "{json}");
    assert!(
        json["verdict"]
            .as_str()
            .unwrap()
            .starts_with("waiting on the queue (1 message"),
        "{json}"
    );
    let peek = &json["queue"]["peek"];
    assert_eq!(peek["seen"], 2, "{json}");
    assert_eq!(peek["stopped_early"], false);
    let messages = peek["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{json}");
    assert_eq!(messages[0]["etag"], etag.as_str());
    assert_eq!(messages[0]["for_traced_version"], true);
    // Both messages are released for the workers at once, not after
    // --peek-hide-secs.
    wait_for_counts(&fixture, &fixture.queue_url, 2).await;

    // And a worker then ingests it as if nothing happened.
    let worker = fixture.start_worker(config.clone());
    wait_until("the quiet object committed", WAIT, || async {
        fixture
            .sink_files()
            .iter()
            .any(|path| path.to_string_lossy().contains("quiet.csv"))
    })
    .await;
    worker.stop().await;
    let json = trace_json(&config, fixture.output_dir(), &[&uri]);
    assert_eq!(json["outcome"], "committed", "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_does_not_exist() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("trace-missing").await;
    let config = fixture.config(None);
    let uri = format!("s3://{}/in/nothing-here.csv", fixture.bucket);

    let text = trace(&config, fixture.output_dir(), &[&uri]);
    assert!(text.status.success(), "{}", describe(&text));
    assert!(
        stdout_of(&text).starts_with(&format!("{uri}: does not exist\n")),
        "{}",
        describe(&text)
    );

    let json = trace_json(&config, fixture.output_dir(), &[&uri]);
    assert_eq!(json["object"], uri.as_str());
    assert_eq!(json["outcome"], "does_not_exist");
    assert_eq!(json["verdict"], "does not exist");
    assert!(json["current"].is_null(), "{json}");
    assert!(json["traced_version"].is_null(), "{json}");
    assert_eq!(json["route"]["status"], "matched", "{json}");
    assert_eq!(json["sinks"], serde_json::json!([]));
    assert_eq!(json["dead_letters"], serde_json::json!([]));
    for field in ["visible", "in_flight", "delayed"] {
        assert!(json["queue"][field].is_u64(), "{json}");
    }
    assert!(json["notes"].is_array(), "{json}");

    // A location without a key is a usage error: exit 2.
    let bad = trace(
        &config,
        fixture.output_dir(),
        &[&format!("s3://{}", fixture.bucket)],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_is_traced_per_sink_with_the_s3_commit_marker() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("trace-fanout").await;
    let destination = format!("{}-lake", fixture.bucket);
    fixture
        .clients
        .s3
        .create_bucket()
        .bucket(&destination)
        .send()
        .await
        .expect("create the destination bucket");
    let routes = r#"
        [[routes]]
        name = "both"
        key_glob = "in/**"
        sinks = ["lake", "s3lake"]
    "#;
    let sinks = format!(
        r#"
        [sinks.s3lake]
        type = "s3_parquet"
        bucket = "{destination}"
        prefix = "lake/v1/"
        "#
    );
    let config = fixture.config_with_sinks(Some(routes), "", &sinks);
    let worker = fixture.start_worker(config.clone());
    fixture.put("in/sales.csv", util::csv_rows(4)).await;
    fixture.wait_for_files_and_empty_queue(1).await;
    let uri = format!("s3://{}/in/sales.csv", fixture.bucket);
    // The s3_parquet sink commits after parquet_dir: wait for its marker.
    wait_until("both sinks committed", WAIT, || async {
        trace_json(&config, fixture.output_dir(), &[&uri])["outcome"] == "committed"
    })
    .await;
    worker.stop().await;

    let json = trace_json(&config, fixture.output_dir(), &[&uri]);
    assert_eq!(
        json["verdict"].as_str().unwrap().split(", ").nth(1),
        Some("2 sinks)"),
        "{json}"
    );
    let s3 = &json["sinks"][1];
    assert_eq!(s3["sink"], "s3lake");
    assert_eq!(s3["state"], "committed");
    let location = s3["details"]["location"].as_str().unwrap();
    assert!(
        location.starts_with(&format!("s3://{destination}/lake/v1/"))
            && location.ends_with(".parquet"),
        "{json}"
    );
    assert_eq!(s3["details"]["rows"], 4, "{json}");
    assert!(s3["details"]["committed_at"].is_string(), "{json}");
    assert_eq!(json["sinks"][0]["details"]["rows"], 4, "{json}");

    // Without its marker the s3_parquet sink does not hold the version:
    // a fan-out that stopped between its sinks.
    let markers = fixture
        .clients
        .s3
        .list_objects_v2()
        .bucket(&destination)
        .prefix("lake/v1/_s3_ingest/commits/")
        .send()
        .await
        .unwrap();
    for marker in markers.contents() {
        fixture
            .clients
            .s3
            .delete_object()
            .bucket(&destination)
            .key(marker.key().unwrap())
            .send()
            .await
            .unwrap();
    }
    let json = trace_json(&config, fixture.output_dir(), &[&uri]);
    assert_eq!(json["outcome"], "partly_committed", "{json}");
    assert!(
        json["verdict"]
            .as_str()
            .unwrap()
            .contains("in lake; not in s3lake"),
        "{json}"
    );
}

/// Needs the test PostgreSQL (`tests/services/with-postgres.sh`), as the
/// `sink_postgres` tests do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_commit_is_traced_to_its_ledger_row() {
    let _suite = crate::shared().await;
    let url = std::env::var("S3I_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:55432/postgres".into());
    let ca = std::env::var("S3I_POSTGRES_CA").unwrap_or_else(|_| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/services/postgres.sh");
        let output = std::process::Command::new(script)
            .arg("ca")
            .output()
            .expect("run tests/services/postgres.sh ca");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    });
    let fixture = Fixture::new("trace-pg").await;
    let table = format!("s3i_trace_{}", util::unique_id());
    let routes = r#"
        [[routes]]
        name = "all"
        key_glob = "**"
        sink = "pg"
    "#;
    let sinks = format!(
        r#"
        [sinks.pg]
        type = "postgres"
        url = "{url}"
        table = "{table}"
        ledger_table = "{table}_ledger"
        create_table = true
        ca_file = "{ca}"
        "#
    );
    let config = fixture.config_with_sinks(Some(routes), "", &sinks);
    let uri = format!("s3://{}/in/pg.csv", fixture.bucket);
    fixture.put("in/pg.csv", util::csv_rows(5)).await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(60);

    let worker = fixture.start_worker(config.clone());
    wait_until("the postgres sink committed", WAIT, || async {
        trace_json(&config, fixture.output_dir(), &[&uri])["outcome"] == "committed"
    })
    .await;
    worker.stop().await;

    let json = trace_json(&config, fixture.output_dir(), &[&uri]);
    let sink = &json["sinks"][0];
    assert_eq!(sink["sink"], "pg", "{json}");
    assert_eq!(sink["details"]["location"], table.as_str(), "{json}");
    assert_eq!(sink["details"]["rows"], 5, "{json}");
    let committed_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(sink["details"]["committed_at"].clone()).unwrap();
    assert!(committed_at > before, "{json}");

    // Another version of the key: its ledger row does not exist.
    let json = trace_json(
        &config,
        fixture.output_dir(),
        &[&uri, "--version-id", "not-a-version"],
    );
    assert_eq!(json["sinks"][0]["state"], "not_committed", "{json}");
    assert!(json["sinks"][0]["details"].is_null(), "{json}");
}
