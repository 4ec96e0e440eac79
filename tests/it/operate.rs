//! The operator's loop on LocalStack: `dlq list` / `inspect` / `replay` /
//! `purge` through the binary, SQS's native redrive of the worker's own
//! envelopes, `backfill`, and plain object requests.

use crate::util::{
    self, Fixture, FixtureOptions, WAIT, describe_output as describe, queue_counts, run_cli,
    stdout_of, wait_until,
};

/// A route whose schema makes `id` an integer: a file with `id` = "three"
/// is poison for it until the route is fixed (`id` as text).
fn typed_routes(id_type: &str) -> String {
    format!(
        r#"
        [[routes]]
        name = "typed"
        key_glob = "in/**"
        sink = "lake"
        schema = [{{ name = "id", type = "{id_type}" }}, {{ name = "name", type = "utf8" }}]
        "#
    )
}

async fn dlq_counts(fixture: &Fixture) -> (u64, u64) {
    queue_counts(&fixture.clients, &fixture.dlq_url).await
}

async fn wait_for_dlq(fixture: &Fixture, visible: u64) {
    wait_until(
        &format!("{visible} visible message(s) on the DLQ and none in flight"),
        WAIT,
        || async { dlq_counts(fixture).await == (visible, 0) },
    )
    .await;
}

/// Sends an S3 event for `key` as it is now (the ETag pins it).
async fn notify(fixture: &Fixture, key: &str, etag: &str, size: u64) {
    let event = util::s3_event(&fixture.bucket, &[(key, etag, size)]);
    fixture.send_raw(&event.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_and_inspect_show_every_envelope_without_consuming_it() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("dlq-list").await;
    let config = fixture.config(Some(&typed_routes("int64")));
    let worker = fixture.start_worker(config.clone());
    // 12 poison files: more than one receive (10) shows.
    for i in 0..12 {
        fixture
            .put(&format!("in/bad-{i:02}.csv"), "id,name\nthree,c\n")
            .await;
    }
    wait_for_dlq(&fixture, 12).await;
    worker.stop().await;

    let listed = run_cli(
        &config,
        fixture.output_dir(),
        &["dlq", "list", "--format", "json"],
    );
    assert!(listed.status.success(), "{}", describe(&listed));
    let groups: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0]["error_kind"], "csv_error");
    assert_eq!(groups[0]["route"], "typed");
    assert_eq!(groups[0]["bucket"], fixture.bucket.as_str());
    assert_eq!(groups[0]["count"], 12);
    assert!(groups[0]["oldest"].is_string() && groups[0]["newest"].is_string());
    assert_eq!(groups[0]["samples"].as_array().unwrap().len(), 3);
    // Released at the end: all 12 are visible again at once, not after
    // the walk's 900 s hiding.
    wait_for_dlq(&fixture, 12).await;

    let inspected = run_cli(
        &config,
        fixture.output_dir(),
        &[
            "dlq",
            "inspect",
            "--key",
            "in/bad-0[0-4].csv",
            "--error-kind",
            "csv_error",
            "--format",
            "json",
        ],
    );
    assert!(inspected.status.success(), "{}", describe(&inspected));
    let lines: Vec<serde_json::Value> = stdout_of(&inspected)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    for line in &lines {
        assert!(line["key"].as_str().unwrap().starts_with("in/bad-0"));
        assert!(line["error"].as_str().unwrap().contains("three"), "{line}");
        assert_eq!(line["envelope_version"], 1);
    }
    wait_for_dlq(&fixture, 12).await;

    // A selector that matches nothing lists nothing, and still consumes nothing.
    let none = run_cli(
        &config,
        fixture.output_dir(),
        &["dlq", "list", "--route", "elsewhere"],
    );
    assert!(none.status.success(), "{}", describe(&none));
    assert!(
        stdout_of(&none).starts_with("0 messages selected"),
        "{}",
        describe(&none)
    );
    wait_for_dlq(&fixture, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_file_fixed_in_s3_is_replayed_and_lands_once() {
    let _suite = crate::shared().await;
    // No bucket notifications: events are sent by hand, so the fixed
    // version has no notification of its own, and only the replay can
    // bring it in.
    let fixture = Fixture::with_options(
        "dlq-replay-fix",
        FixtureOptions {
            notifications: false,
            ..FixtureOptions::default()
        },
    )
    .await;
    let config = fixture.config(Some(&typed_routes("int64")));
    let (worker, stats) = fixture.start_worker_with_stats(config.clone()).await;
    let bad = "id,name\n1,a\nthree,c\n";
    let etag = fixture.put("in/orders.csv", bad).await;
    notify(&fixture, "in/orders.csv", &etag, bad.len() as u64).await;
    wait_for_dlq(&fixture, 1).await;
    assert!(fixture.sink_files().is_empty());

    // The vendor fixes the file: a new version, whose notification is lost.
    let fixed = "id,name\n1,a\n3,c\n";
    fixture.put("in/orders.csv", fixed).await;

    let dry = run_cli(
        &config,
        fixture.output_dir(),
        &["dlq", "replay", "--dry-run"],
    );
    assert!(dry.status.success(), "{}", describe(&dry));
    assert!(
        stdout_of(&dry).contains("would be requeued"),
        "{}",
        describe(&dry)
    );
    wait_for_dlq(&fixture, 1).await;

    let replayed = run_cli(&config, fixture.output_dir(), &["dlq", "replay"]);
    assert!(replayed.status.success(), "{}", describe(&replayed));
    let out = stdout_of(&replayed);
    assert!(out.contains("requeued"), "{out}");
    assert!(out.contains("is superseded"), "{out}");
    fixture.wait_for_files_and_empty_queue(1).await;
    assert_eq!(dlq_counts(&fixture).await, (0, 0));
    let file = util::sink_file_for(&fixture.sink_files(), "in/orders.csv");
    assert_eq!(file.rows, 2);

    // Replaying again finds nothing; the object stays in the sink once.
    let again = run_cli(&config, fixture.output_dir(), &["dlq", "replay"]);
    assert!(again.status.success(), "{}", describe(&again));
    assert!(
        stdout_of(&again).starts_with("0 selected"),
        "{}",
        describe(&again)
    );
    assert_eq!(fixture.sink_copies_by_key().get("in/orders.csv"), Some(&1));
    assert_eq!(
        stats
            .objects_dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_a_version_its_own_notification_brought_reports_it_committed() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("dlq-replay-notified").await;
    let config = fixture.config(Some(&typed_routes("int64")));
    let worker = fixture.start_worker(config.clone());
    fixture.put("in/a.csv", "id,name\nthree,c\n").await;
    wait_for_dlq(&fixture, 1).await;
    // Fixed; this time S3 notifies, and the fix lands by itself.
    fixture.put("in/a.csv", "id,name\n3,c\n").await;
    fixture.wait_for_files_and_empty_queue(1).await;

    let replayed = run_cli(
        &config,
        fixture.output_dir(),
        &["dlq", "replay", "--format", "json"],
    );
    assert!(replayed.status.success(), "{}", describe(&replayed));
    let tally: serde_json::Value = serde_json::from_slice(&replayed.stdout).unwrap();
    assert_eq!(tally["selected"], 1, "{tally}");
    assert_eq!(tally["by_action"]["already_committed"], 1, "{tally}");
    assert_eq!(dlq_counts(&fixture).await, (0, 0));
    fixture.wait_for_empty_queue().await;
    assert_eq!(fixture.sink_copies_by_key().get("in/a.csv"), Some(&1));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_redriven_by_sqs_land_once_after_the_route_is_fixed() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("dlq-redrive").await;
    let broken = fixture.config(Some(&typed_routes("int64")));
    let worker = fixture.start_worker(broken);
    for key in ["in/a.csv", "in/b.csv"] {
        fixture.put(key, "id,name\nthree,c\n").await;
    }
    wait_for_dlq(&fixture, 2).await;
    worker.stop().await;

    // The route is fixed; SQS's own redrive moves the envelopes back.
    let fixed = fixture.config(Some(&typed_routes("utf8")));
    let (worker, stats) = fixture.start_worker_with_stats(fixed).await;
    // As the Terraform module sets it: the DLQ is the queue's
    // dead-letter target, which is what lets SQS redrive from it.
    let dlq_arn = util::queue_arn(&fixture.clients, &fixture.dlq_url).await;
    fixture
        .clients
        .sqs
        .set_queue_attributes()
        .queue_url(&fixture.queue_url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 10}).to_string(),
        )
        .send()
        .await
        .unwrap();
    // The console's "start DLQ redrive": back to the source queue.
    fixture
        .clients
        .sqs
        .start_message_move_task()
        .source_arn(&dlq_arn)
        .destination_arn(&fixture.queue_arn)
        .send()
        .await
        .expect("StartMessageMoveTask");
    fixture.wait_for_files_and_empty_queue(2).await;
    wait_for_dlq(&fixture, 0).await;
    for key in ["in/a.csv", "in/b.csv"] {
        let file = util::sink_file_for(&fixture.sink_files(), key);
        assert_eq!(file.rows, 1);
    }

    // The same envelope once more (an operator redrives twice): found
    // committed before any download, nothing lands twice.
    let envelope = s3_ingest::dead_letter::DeadLetter::for_object(
        &s3_ingest::notification::ObjectRef {
            bucket: fixture.bucket.clone(),
            key: "in/a.csv".into(),
            version_id: None,
            etag: Some(head_etag(&fixture, "in/a.csv").await),
            size: None,
            sequencer: None,
            event_time: None,
            event_name: "ObjectCreated:Put".into(),
            origin: s3_ingest::notification::Origin::Notification,
        },
        Some("typed"),
        s3_ingest::error::ErrorKind::CsvError,
        "was broken".into(),
        "m",
        1,
        "{}",
    );
    fixture.send_raw(&envelope.to_json()).await;
    wait_until("the second redrive skipped", WAIT, || async {
        stats
            .objects_skipped
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    })
    .await;
    fixture.wait_for_empty_queue().await;
    assert_eq!(fixture.sink_copies_by_key().get("in/a.csv"), Some(&1));
    worker.stop().await;
}

async fn head_etag(fixture: &Fixture, key: &str) -> String {
    fixture
        .clients
        .s3
        .head_object()
        .bucket(&fixture.bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .trim_matches('"')
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_now_ingests_the_selection_in_process() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("dlq-replay-now").await;
    let broken = fixture.config(Some(&typed_routes("int64")));
    let worker = fixture.start_worker(broken);
    for key in ["in/a.csv", "in/b.csv"] {
        fixture.put(key, "id,name\nthree,c\n").await;
    }
    wait_for_dlq(&fixture, 2).await;
    worker.stop().await;

    // The route is fixed; no worker runs: --now ingests here.
    let fixed = fixture.config(Some(&typed_routes("utf8")));
    let dry = run_cli(
        &fixed,
        fixture.output_dir(),
        &["dlq", "replay", "--now", "--dry-run", "--key", "in/a.csv"],
    );
    assert!(dry.status.success(), "{}", describe(&dry));
    assert!(
        stdout_of(&dry).contains("would be ingested"),
        "{}",
        describe(&dry)
    );
    assert!(fixture.sink_files().is_empty());
    wait_for_dlq(&fixture, 2).await;

    let replayed = run_cli(
        &fixed,
        fixture.output_dir(),
        &["dlq", "replay", "--now", "--key", "in/a.csv"],
    );
    assert!(replayed.status.success(), "{}", describe(&replayed));
    assert!(
        stdout_of(&replayed).contains("1 selected; ingested 1"),
        "{}",
        describe(&replayed)
    );
    assert_eq!(
        util::sink_file_for(&fixture.sink_files(), "in/a.csv").rows,
        1
    );
    // The other envelope was not selected: it is back on the DLQ.
    wait_for_dlq(&fixture, 1).await;
    let left = fixture.take_dead_letters().await;
    assert_eq!(left[0].key.as_deref(), Some("in/b.csv"));
    assert_eq!(fixture.queue_counts().await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_purge_deletes_only_the_selection_and_only_when_confirmed() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("dlq-purge").await;
    let config = fixture.config(Some(&typed_routes("int64")));
    let worker = fixture.start_worker(config.clone());
    for key in ["in/keep-1.csv", "in/keep-2.csv", "in/drop-1.csv"] {
        fixture.put(key, "id,name\nthree,c\n").await;
    }
    wait_for_dlq(&fixture, 3).await;
    worker.stop().await;

    // Without --yes and without a terminal: nothing is deleted.
    let refused = run_cli(
        &config,
        fixture.output_dir(),
        &["dlq", "purge", "--key", "in/drop-*"],
    );
    assert!(refused.status.success(), "{}", describe(&refused));
    assert!(
        stdout_of(&refused).contains("purged 0"),
        "{}",
        describe(&refused)
    );
    wait_for_dlq(&fixture, 3).await;

    let purged = run_cli(
        &config,
        fixture.output_dir(),
        &["dlq", "purge", "--key", "in/drop-*", "--yes"],
    );
    assert!(purged.status.success(), "{}", describe(&purged));
    assert!(
        stdout_of(&purged).contains("1 selected; purged 1"),
        "{}",
        describe(&purged)
    );
    wait_for_dlq(&fixture, 2).await;
    let left: Vec<String> = fixture
        .take_dead_letters()
        .await
        .into_iter()
        .filter_map(|letter| letter.key)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(
        left.iter().all(|key| key.starts_with("in/keep-")),
        "{left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_lands_every_object_once_and_skips_what_is_committed() {
    let _suite = crate::shared().await;
    let fixture = Fixture::with_options(
        "backfill",
        FixtureOptions {
            notifications: false,
            versioned: true,
        },
    )
    .await;
    let routes = r#"
        [[routes]]
        name = "orders"
        key_glob = "in/**"
        sink = "lake"
    "#;
    let config = fixture.config(Some(routes));
    for i in 0..5 {
        fixture
            .put(&format!("in/2026/orders-{i}.csv"), util::csv_rows(i + 1))
            .await;
    }
    fixture.put("other/ignored.csv", util::csv_rows(1)).await;

    // Two of them were ingested before (their notifications arrived).
    let (worker, _stats) = fixture.start_worker_with_stats(config.clone()).await;
    for i in 0..2 {
        fixture
            .send_raw(&format!("s3://{}/in/2026/orders-{i}.csv", fixture.bucket))
            .await;
    }
    fixture.wait_for_files_and_empty_queue(2).await;

    let dry = run_cli(
        &config,
        fixture.output_dir(),
        &[
            "backfill",
            &format!("s3://{}/in/", fixture.bucket),
            "--dry-run",
        ],
    );
    assert!(dry.status.success(), "{}", describe(&dry));
    assert!(
        stdout_of(&dry).contains("would ingest 3"),
        "{}",
        describe(&dry)
    );
    // Selections: nothing modified before 2000; a route that does not exist.
    let old = run_cli(
        &config,
        fixture.output_dir(),
        &[
            "backfill",
            &format!("s3://{}/in/", fixture.bucket),
            "--until",
            "2000-01-01T00:00:00Z",
        ],
    );
    assert!(old.status.success(), "{}", describe(&old));
    assert!(
        stdout_of(&old).contains("enqueued 0")
            && stdout_of(&old).contains("5 outside the selection"),
        "{}",
        describe(&old)
    );
    let no_route = run_cli(
        &config,
        fixture.output_dir(),
        &[
            "backfill",
            &format!("s3://{}/in/", fixture.bucket),
            "--route",
            "nope",
        ],
    );
    assert!(!no_route.status.success());
    assert!(
        String::from_utf8_lossy(&no_route.stderr).contains("no such route"),
        "{}",
        describe(&no_route)
    );
    assert_eq!(fixture.queue_counts().await, (0, 0));

    let backfilled = run_cli(
        &config,
        fixture.output_dir(),
        &["backfill", &format!("s3://{}/in/", fixture.bucket)],
    );
    assert!(backfilled.status.success(), "{}", describe(&backfilled));
    let out = stdout_of(&backfilled);
    assert!(out.contains("listed 5 objects"), "{out}");
    assert!(out.contains("enqueued 3"), "{out}");
    assert!(out.contains("skipped 2 already committed"), "{out}");
    fixture.wait_for_files_and_empty_queue(5).await;
    let copies = fixture.sink_copies_by_key();
    for i in 0..5 {
        assert_eq!(
            copies.get(&format!("in/2026/orders-{i}.csv")),
            Some(&1),
            "{copies:?}"
        );
    }
    // The synthetic event carries the object's LastModified as its event time.
    let file = util::sink_file_for(&fixture.sink_files(), "in/2026/orders-4.csv");
    let event_time = file
        .metadata
        .get("s3_ingest.source_event_time")
        .expect("event time recorded");
    let head = fixture
        .clients
        .s3
        .head_object()
        .bucket(&fixture.bucket)
        .key("in/2026/orders-4.csv")
        .send()
        .await
        .unwrap();
    let last_modified = head.last_modified().unwrap().secs();
    let recorded = chrono::DateTime::parse_from_rfc3339(event_time)
        .unwrap()
        .timestamp();
    assert_eq!(recorded, last_modified);
    assert_eq!(file.rows, 5);
    worker.stop().await;

    // Run again, now in-process: everything is committed already.
    let again = run_cli(
        &config,
        fixture.output_dir(),
        &["backfill", &format!("s3://{}/in/", fixture.bucket), "--now"],
    );
    assert!(again.status.success(), "{}", describe(&again));
    assert!(
        stdout_of(&again).contains("ingested 0"),
        "{}",
        describe(&again)
    );
    assert!(
        stdout_of(&again).contains("skipped 5 already committed"),
        "{}",
        describe(&again)
    );

    // --now ingests without any worker; --start-after resumes past a key.
    fixture.put("in/2026/orders-5.csv", util::csv_rows(6)).await;
    fixture.put("in/2026/orders-6.csv", util::csv_rows(7)).await;
    let resumed = run_cli(
        &config,
        fixture.output_dir(),
        &[
            "backfill",
            &format!("s3://{}/in/", fixture.bucket),
            "--now",
            "--start-after",
            "in/2026/orders-5.csv",
        ],
    );
    assert!(resumed.status.success(), "{}", describe(&resumed));
    assert!(
        stdout_of(&resumed).contains("listed 1 objects"),
        "{}",
        describe(&resumed)
    );
    assert!(
        stdout_of(&resumed).contains("ingested 1"),
        "{}",
        describe(&resumed)
    );
    let copies = fixture.sink_copies_by_key();
    assert_eq!(copies.get("in/2026/orders-6.csv"), Some(&1), "{copies:?}");
    assert_eq!(copies.get("in/2026/orders-5.csv"), None, "{copies:?}");
    assert_eq!(fixture.queue_counts().await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_ingest_one_object() {
    let _suite = crate::shared().await;
    let fixture = Fixture::with_options(
        "request",
        FixtureOptions {
            notifications: false,
            versioned: true,
        },
    )
    .await;
    let worker = fixture.start_worker(fixture.config(None));
    fixture.put("in/by uri.csv", util::csv_rows(2)).await;
    fixture.put("in/by-json.csv", util::csv_rows(3)).await;
    let first = fixture
        .clients
        .s3
        .head_object()
        .bucket(&fixture.bucket)
        .key("in/by-json.csv")
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_owned();
    // A newer version: the request names the first one.
    fixture.put("in/by-json.csv", util::csv_rows(9)).await;
    fixture
        .send_raw(&format!("s3://{}/in/by uri.csv", fixture.bucket))
        .await;
    fixture
        .send_raw(
            &serde_json::json!({"bucket": fixture.bucket, "key": "in/by-json.csv", "version_id": first})
                .to_string(),
        )
        .await;
    fixture.wait_for_files_and_empty_queue(2).await;
    let files = fixture.sink_files();
    assert_eq!(util::sink_file_for(&files, "in/by uri.csv").rows, 2);
    let pinned = util::sink_file_for(&files, "in/by-json.csv");
    assert_eq!(pinned.rows, 3);
    assert_eq!(
        pinned.metadata.get("s3_ingest.source_version_id"),
        Some(&first)
    );
    worker.stop().await;
}
