//! Fan-out: a route naming several sinks lands each object in all of them,
//! and its message is deleted only after every sink committed.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::util;
use crate::util::*;

const WAIT: Duration = Duration::from_secs(60);

/// Rows per source key in the parquet files under `dir`.
fn rows_by_key(dir: &Path) -> std::collections::BTreeMap<String, Vec<usize>> {
    let mut found = std::collections::BTreeMap::<String, Vec<usize>>::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            let hidden = path.file_name().unwrap().to_string_lossy().starts_with('.');
            if path.is_dir() {
                stack.push(path);
            } else if !hidden && path.extension().is_some_and(|e| e == "parquet") {
                let file = read_sink_file(&path);
                let key = file.metadata["s3_ingest.source_key"].clone();
                found.entry(key).or_default().push(file.rows);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sink_commits_before_the_delete_and_a_failed_sink_is_retried_safely() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("fanout").await;
    let mirror_root = tempfile::tempdir().unwrap();
    let mirror = mirror_root.path().join("mirror");
    let routes = r#"
        [[routes]]
        name = "both"
        key_glob = "**"
        sinks = ["lake", "mirror"]
    "#;
    let sinks = format!(
        r#"
        [sinks.mirror]
        type = "parquet_dir"
        path = "{}"
        "#,
        mirror.display()
    );
    let mut config = fixture.config_with_sinks(Some(routes), "", &sinks);
    // Short, so the retried message comes back quickly.
    config.queue.visibility_timeout_secs = 3;
    let (worker, stats) = fixture.start_worker_with_stats(config).await;

    fixture.put("in/a.csv", csv_rows(5)).await;
    wait_until("a.csv in both sinks", WAIT, || async {
        rows_by_key(fixture.output_dir()).contains_key("in/a.csv")
            && rows_by_key(&mirror).contains_key("in/a.csv")
            && fixture.queue_is_empty().await
    })
    .await;

    // The second sink goes down: a file stands where its directory was.
    // Whatever the first sink did, the message must stay on the queue.
    let saved = mirror_root.path().join("mirror.saved");
    std::fs::rename(&mirror, &saved).unwrap();
    std::fs::write(&mirror, b"not a directory").unwrap();
    fixture.put("in/b.csv", csv_rows(7)).await;
    wait_until("b.csv retried while the mirror is down", WAIT, || async {
        stats.messages_left_for_retry.load(Ordering::Relaxed) >= 2
    })
    .await;
    let (visible, in_flight) = fixture.queue_counts().await;
    assert!(
        visible + in_flight >= 1,
        "the message was deleted before every sink committed"
    );
    assert!(fixture.take_dead_letters().await.is_empty());

    // The mirror recovers: b.csv lands there, and the retries left exactly
    // one copy in the first sink (its commits are idempotent per version).
    std::fs::remove_file(&mirror).unwrap();
    std::fs::rename(&saved, &mirror).unwrap();
    wait_until("b.csv in the mirror after recovery", WAIT, || async {
        rows_by_key(&mirror).contains_key("in/b.csv") && fixture.queue_is_empty().await
    })
    .await;
    let lake = rows_by_key(fixture.output_dir());
    let mirrored = rows_by_key(&mirror);
    for key in ["in/a.csv", "in/b.csv"] {
        assert_eq!(lake[key].len(), 1, "{key} in the lake: {lake:?}");
        assert_eq!(mirrored[key].len(), 1, "{key} in the mirror: {mirrored:?}");
    }
    assert_eq!(lake["in/b.csv"], mirrored["in/b.csv"]);
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_rejects_the_object_dead_letters_it_naming_that_sink() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("fanout-reject").await;
    let server = util::http_server::HttpTestServer::start().await;
    server.fail_always(400, "table events does not exist");
    let routes = r#"
        [[routes]]
        name = "both"
        key_glob = "**"
        sinks = ["lake", "events_api"]
    "#;
    let sinks = format!(
        r#"
        [sinks.events_api]
        type = "http"
        url = "{}"
        format = "ndjson"
        "#,
        server.url("/insert")
    );
    let config = fixture.config_with_sinks(Some(routes), "", &sinks);
    let worker = fixture.start_worker(config);
    fixture.put("in/c.csv", csv_rows(3)).await;

    let letters = fixture.wait_for_dead_letters(1).await;
    assert_eq!(letters[0].error_kind.as_str(), "sink_error");
    assert_eq!(letters[0].route.as_deref(), Some("both"));
    let reason = &letters[0].error;
    assert!(reason.contains("sink `events_api`"), "{reason}");
    assert!(reason.contains("table events does not exist"), "{reason}");
    fixture.wait_for_empty_queue().await;
    // The sink before it in the route's order committed; that copy stays,
    // and a replay after the fix would overwrite it, not add to it.
    assert_eq!(rows_by_key(fixture.output_dir())["in/c.csv"], vec![3]);
    worker.stop().await;
}
