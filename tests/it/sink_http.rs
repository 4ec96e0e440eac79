//! The `http` sink end to end: LocalStack S3/SQS, the worker in-process,
//! an in-process HTTP endpoint that decodes and deduplicates what arrives
//! (`util::http_server`), and a real ClickHouse for NDJSON.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use serde_json::json;

use crate::util;
use crate::util::http_server::{HttpTestServer, TOKEN_HEADER, TOKEN_QUERY_PARAM};
use crate::util::*;

/// Every key goes to the `events` http sink.
const ROUTES: &str = r#"
    [[routes]]
    name = "all"
    key_glob = "**"
    sink = "events"
"#;

/// A config whose `events` sink is `type = "http"` plus `sink_keys`, with
/// short backoffs so retry tests stay quick.
fn http_config(fixture: &Fixture, sink_keys: &str) -> s3_ingest::config::Config {
    let sinks = format!(
        "[sinks.events]\ntype = \"http\"\ninitial_backoff_ms = 50\nmax_backoff_ms = 400\n{sink_keys}"
    );
    fixture.config_with_sinks(Some(ROUTES), "", &sinks)
}

async fn wait_for_rows_and_empty_queue(fixture: &Fixture, server: &HttpTestServer, rows: usize) {
    wait_until(
        &format!("{rows} rows at the HTTP endpoint and an empty queue"),
        WAIT,
        || async { server.row_count() >= rows && fixture.queue_is_empty().await },
    )
    .await;
    assert_eq!(server.row_count(), rows);
}

fn header(request: &util::http_server::ReceivedRequest, name: &str) -> String {
    request
        .headers
        .get(name)
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_lands_as_arrow_stream_with_values_static_headers_and_auth_from_env() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("http-arrow").await;
    let server = HttpTestServer::start().await;
    let variable = format!("S3I_TEST_HTTP_TOKEN_{}", fixture.bucket.replace('-', "_"));
    // SAFETY: set once, before the worker (the only reader) starts; the name
    // is unique to this test, so no other thread reads or writes it.
    unsafe { std::env::set_var(&variable, "tb-secret-1") };
    let config = http_config(
        &fixture,
        &format!(
            r#"
            url = "{url}"
            format = "arrow_stream"
            headers = {{ X-Team = "data" }}
            headers_from_env = {{ Authorization = {{ env = "{variable}", prefix = "Bearer " }} }}
            idempotency_query_param = "{TOKEN_QUERY_PARAM}"
            "#,
            url = server.url("/?query=INSERT%20INTO%20orders%20FORMAT%20ArrowStream"),
        ),
    );
    let worker = fixture.start_worker(config);
    fixture.put("in/orders.csv", csv_rows(100)).await;

    wait_for_rows_and_empty_queue(&fixture, &server, 100).await;
    let rows = server.rows();
    assert_eq!(
        json!(rows[0]),
        json!({"id": 0, "name": "item 0", "price": 0.5})
    );
    assert_eq!(
        json!(rows[99]),
        json!({"id": 99, "name": "item 99", "price": 198.5})
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(header(request, "authorization"), "Bearer tb-secret-1");
    assert_eq!(header(request, "x-team"), "data");
    assert_eq!(
        header(request, "content-type"),
        "application/vnd.apache.arrow.stream"
    );
    assert!(
        request
            .uri
            .starts_with("/?query=INSERT%20INTO%20orders%20FORMAT%20ArrowStream&"),
        "the configured query string is kept: {}",
        request.uri
    );
    // The same token in the header and in the query parameter.
    assert_eq!(
        request.token.as_deref(),
        Some(header(request, TOKEN_HEADER).as_str())
    );
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_header_variable_stops_the_worker_at_start_up_naming_it() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("http-noenv").await;
    let variable = format!("S3I_TEST_HTTP_UNSET_{}", fixture.bucket.replace('-', "_"));
    let config = http_config(
        &fixture,
        &format!(
            r#"
            url = "http://127.0.0.1:9/insert"
            format = "ndjson"
            headers_from_env = {{ Authorization = {{ env = "{variable}", prefix = "Bearer " }} }}
            "#
        ),
    );
    let error = match s3_ingest::build_worker(&config, clients()).await {
        Ok(_) => panic!("the worker started without {variable}"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("sink `events`"), "{error}");
    assert!(
        error.contains(&format!(
            "environment variable {variable} (for header Authorization) is not set"
        )),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_with_gzip_arrives_decoded() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("http-ndjson").await;
    let server = HttpTestServer::start().await;
    let config = http_config(
        &fixture,
        &format!(
            "url = \"{}\"\nformat = \"ndjson\"\ncompression = \"gzip\"",
            server.url("/v0/events?name=orders")
        ),
    );
    let worker = fixture.start_worker(config);
    fixture.put("in/orders.csv", csv_rows(500)).await;
    // A header-only file has no rows to insert: nothing is sent for it.
    fixture.put("in/empty.csv", csv_rows(0)).await;

    wait_for_rows_and_empty_queue(&fixture, &server, 500).await;
    let rows = server.rows();
    assert_eq!(
        json!(rows[499]),
        json!({"id": 499, "name": "item 499", "price": 998.5})
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(header(&requests[0], "content-encoding"), "gzip");
    assert_eq!(header(&requests[0], "content-type"), "application/x-ndjson");
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_object_is_split_into_bounded_parts_with_distinct_tokens() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("http-parts").await;
    let server = HttpTestServer::start().await;
    let max_request_bytes = 64 * 1024;
    let config = http_config(
        &fixture,
        &format!(
            "url = \"{}\"\nformat = \"arrow_stream\"\nmax_request_bytes = {max_request_bytes}",
            server.url("/insert")
        ),
    );
    let worker = fixture.start_worker(config);
    // 20 000 rows come as batches of 8192 rows, each larger than the bound:
    // the sink has to cut batches by rows, not only between batches.
    fixture.put("in/big.csv", csv_rows(20_000)).await;

    wait_for_rows_and_empty_queue(&fixture, &server, 20_000).await;
    let requests = server.requests();
    assert!(requests.len() >= 4, "{} requests", requests.len());
    for request in &requests {
        assert_eq!(request.status, 200);
        assert!(
            request.decoded_bytes <= max_request_bytes,
            "a body of {} bytes",
            request.decoded_bytes
        );
    }
    let tokens: HashSet<_> = requests.iter().map(|r| r.token.clone().unwrap()).collect();
    assert_eq!(tokens.len(), requests.len(), "one distinct token per part");
    // Parts are sent one after another, so rows arrive in file order.
    let ids: Vec<i64> = server
        .rows()
        .iter()
        .map(|row| row["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (0..20_000).collect::<Vec<_>>());
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_unavailability_are_retried_and_the_rows_land_once() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("http-retry").await;
    let server = HttpTestServer::start().await;
    server.fail_next(2, 503, None);
    server.fail_next(1, 429, Some(1));
    let config = http_config(
        &fixture,
        &format!("url = \"{}\"\nformat = \"ndjson\"", server.url("/insert")),
    );
    let (worker, stats) = fixture.start_worker_with_stats(config).await;
    fixture.put("in/orders.csv", csv_rows(10)).await;

    wait_for_rows_and_empty_queue(&fixture, &server, 10).await;
    let requests = server.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 429, 200]);
    assert!(
        requests.iter().all(|r| r.token == requests[0].token),
        "every attempt of a part carries the same token"
    );
    assert_eq!(stats.objects_committed.load(Ordering::Relaxed), 1);
    // Retried inside the sink: the message never had to come back.
    assert_eq!(stats.messages_left_for_retry.load(Ordering::Relaxed), 0);
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_request_is_dead_lettered_with_its_status_and_body() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("http-reject").await;
    let server = HttpTestServer::start().await;
    server.fail_always(
        400,
        "Code: 27. DB::Exception: Cannot parse input: expected ',' before: 'abc'",
    );
    let config = http_config(
        &fixture,
        &format!(
            "url = \"{}\"\nformat = \"ndjson\"",
            server.url("/insert?query=x&password=hunter2")
        ),
    );
    let worker = fixture.start_worker(config);
    fixture.put("in/orders.csv", csv_rows(10)).await;

    let letters = fixture.wait_for_dead_letters(1).await;
    assert_eq!(letters[0].error_kind.as_str(), "sink_error");
    assert_eq!(letters[0].key.as_deref(), Some("in/orders.csv"));
    let reason = &letters[0].error;
    assert!(reason.contains("400 Bad Request"), "{reason}");
    assert!(
        reason.contains("Cannot parse input: expected ','"),
        "{reason}"
    );
    assert!(reason.contains("/insert"), "{reason}");
    assert!(
        reason.contains("/insert?query=***&password=***"),
        "query values are redacted: {reason}"
    );
    assert!(
        !reason.contains("query=x") && !reason.contains("hunter2"),
        "query values stay out: {reason}"
    );
    fixture.wait_for_empty_queue().await;
    assert_eq!(server.requests().len(), 1, "a 400 is not retried");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_keeps_the_file_queued_and_fails_readiness_until_fixed() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("http-401").await;
    let server = HttpTestServer::start().await;
    // The token was rotated: refused twice, then the new secret is in place.
    server.fail_next(2, 401, None);
    let config = http_config(
        &fixture,
        &format!("url = \"{}\"\nformat = \"ndjson\"", server.url("/insert")),
    );
    let (running, worker, addr) = fixture.start_worker_with_status(config).await;
    let stats = worker.stats();
    fixture.put("in/orders.csv", csv_rows(10)).await;

    wait_until("/readyz reporting the refusal", WAIT, || async {
        let (status, body) = http_get(&addr, "/readyz").await;
        status == 503 && body.contains("sink:events answers 401")
    })
    .await;
    let (_, reason) = http_get(&addr, "/readyz").await;
    assert!(
        reason.contains("check its Authorization header"),
        "{reason}"
    );
    wait_for_rows_and_empty_queue(&fixture, &server, 10).await;
    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 401, 200]);
    assert!(fixture.take_dead_letters().await.is_empty());
    assert_eq!(stats.objects_dead_lettered.load(Ordering::Relaxed), 0);
    assert_eq!(stats.objects_committed.load(Ordering::Relaxed), 1);
    assert_eq!(http_get(&addr, "/readyz").await.0, 200, "ready again");
    let (_, metrics) = http_get(&addr, "/metrics").await;
    assert!(
        metrics
            .contains("s3_ingest_deployment_errors_total{component=\"sink:events\",code=\"401\"}"),
        "{metrics}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_max_receive_count_dead_letters_nothing() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("http-down").await;
    // A free port with nothing listening yet: connections are refused.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = http_config(
        &fixture,
        &format!("url = \"http://{addr}/insert\"\nformat = \"ndjson\"\nmax_retries = 1"),
    );
    config.queue.max_receive_count = 2;
    let (running, worker, status_addr) = fixture.start_worker_with_status(config).await;
    let stats = worker.stats();
    fixture.put("in/orders.csv", csv_rows(5)).await;

    // More tries than max_receive_count: an outage is not the file's.
    wait_until("the message handed back four times", WAIT, || async {
        stats.messages_left_for_retry.load(Ordering::Relaxed) >= 4
    })
    .await;
    let (status, reason) = http_get(&status_addr, "/readyz").await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("sink:events answers connect"), "{reason}");
    assert!(fixture.take_dead_letters().await.is_empty());

    // The endpoint comes up: the handed-back message lands.
    let server = HttpTestServer::start_on(addr).await;
    wait_for_rows_and_empty_queue(&fixture, &server, 5).await;
    assert!(fixture.take_dead_letters().await.is_empty());
    assert_eq!(stats.objects_dead_lettered.load(Ordering::Relaxed), 0);
    assert_eq!(
        http_get(&status_addr, "/readyz").await.0,
        200,
        "ready again"
    );
    let (_, metrics) = http_get(&status_addr, "/metrics").await;
    assert!(
        metrics.contains(
            "s3_ingest_deployment_errors_total{component=\"sink:events\",code=\"connect\"}"
        ),
        "{metrics}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_endpoint_chokes_on_while_others_land_is_dead_lettered() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("http-choke").await;
    let server = HttpTestServer::start().await;
    // A proxy answers 503 for this one payload only: the endpoint works
    // for every other file, so the failures are the file's own.
    server.choke_on("choke me", 503);
    let mut config = http_config(
        &fixture,
        &format!(
            "url = \"{}\"\nformat = \"ndjson\"\nmax_retries = 0",
            server.url("/insert")
        ),
    );
    config.queue.max_receive_count = 2;
    config.queue.visibility_timeout_secs = 2;
    let (worker, stats) = fixture.start_worker_with_stats(config).await;
    fixture
        .put(
            "in/poison.csv",
            "id,name,price\n1,choke me,1.5\n".to_owned(),
        )
        .await;

    // Other files keep landing while the poison file is retried: one
    // more whenever the last has landed.
    let others = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let letters = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    wait_until("the poison file dead-lettered", WAIT, || {
        let (others, letters, fixture, server) =
            (others.clone(), letters.clone(), &fixture, &server);
        async move {
            if server.row_count() >= 2 * others.load(Ordering::Relaxed) {
                let n = others.fetch_add(1, Ordering::Relaxed) + 1;
                fixture.put(&format!("in/other-{n}.csv"), csv_rows(2)).await;
            }
            let mut taken = fixture.take_dead_letters().await;
            let mut letters = letters.lock().unwrap();
            letters.append(&mut taken);
            !letters.is_empty()
        }
    })
    .await;
    let letters = letters.lock().unwrap().clone();
    let others = others.load(Ordering::Relaxed);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].key.as_deref(), Some("in/poison.csv"));
    assert_eq!(letters[0].error_kind.as_str(), "max_receive_count_exceeded");
    // Every other file landed.
    wait_for_rows_and_empty_queue(&fixture, &server, 2 * others).await;
    assert_eq!(stats.objects_dead_lettered.load(Ordering::Relaxed), 1);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_times_out_and_is_retried_not_dead_lettered() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("http-silent").await;
    // Accepts connections and reads nothing, answers nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let silent = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                held.push(socket);
            }
        }
    });
    let config = http_config(
        &fixture,
        &format!(
            "url = \"http://{addr}/insert\"\nformat = \"ndjson\"\ntimeout_secs = 1\nmax_retries = 1"
        ),
    );
    let (worker, stats) = fixture.start_worker_with_stats(config).await;
    fixture.put("in/orders.csv", csv_rows(5)).await;

    wait_until("the message left for a retry", WAIT, || async {
        stats.messages_left_for_retry.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert!(
        accepted.load(Ordering::Relaxed) >= 2,
        "one attempt and one retry"
    );
    assert!(fixture.take_dead_letters().await.is_empty());
    assert_eq!(stats.objects_dead_lettered.load(Ordering::Relaxed), 0);
    worker.stop().await;
    silent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_object_sends_the_same_tokens_and_the_receiver_dedups() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("http-replay").await;
    let server = HttpTestServer::start().await;
    let config = http_config(
        &fixture,
        &format!(
            "url = \"{}\"\nformat = \"ndjson\"\nmax_request_bytes = 65536",
            server.url("/insert")
        ),
    );
    let worker = fixture.start_worker(config);
    let body = csv_rows(5_000);
    let size = body.len() as u64;
    let etag = fixture.put("in/orders.csv", body).await;
    wait_for_rows_and_empty_queue(&fixture, &server, 5_000).await;
    let first: Vec<_> = server.requests().iter().map(|r| r.token.clone()).collect();
    assert!(first.len() >= 3, "{} parts", first.len());

    // The same notification again, as S3 or SQS may deliver it.
    fixture
        .send_raw(&s3_event(&fixture.bucket, &[("in/orders.csv", &etag, size)]).to_string())
        .await;
    wait_until("the replay's requests and an empty queue", WAIT, || async {
        server.requests().len() >= 2 * first.len() && fixture.queue_is_empty().await
    })
    .await;
    let requests = server.requests();
    let replay: Vec<_> = requests[first.len()..]
        .iter()
        .map(|r| r.token.clone())
        .collect();
    assert_eq!(replay, first, "same parts, same tokens, same order");
    assert!(requests[first.len()..].iter().all(|r| r.duplicate));
    assert_eq!(
        server.row_count(),
        5_000,
        "the receiver dropped the duplicates"
    );
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

/// A first attempt delivers three parts and is dead-lettered on the fourth;
/// the route is then changed (smaller batches, so each part holds other
/// rows) and the same object version replayed. Tokens that named only the
/// part number made the receiver drop the replay's first parts as
/// duplicates although they held rows it had never seen; with the content
/// in the token every row arrives (some twice: at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_a_route_change_loses_no_rows() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("http-rechange").await;
    let server = HttpTestServer::start().await;
    let routes = |batch_rows: usize| {
        format!(
            "[[routes]]\nname = \"all\"\nkey_glob = \"**\"\nsink = \"events\"\nbatch_rows = {batch_rows}\n"
        )
    };
    let sinks = format!(
        "[sinks.events]\ntype = \"http\"\nurl = \"{}\"\nformat = \"ndjson\"\nmax_request_bytes = 65536\n",
        server.url("/insert")
    );
    let rows = 6_000;
    let body = csv_rows(rows);
    let size = body.len() as u64;

    // One 6000-row batch, halved into pieces of 750 rows, one per part.
    server.pass_next(3);
    server.fail_next(1, 400, None);
    let worker = fixture.start_worker(fixture.config_with_sinks(Some(&routes(8192)), "", &sinks));
    let etag = fixture.put("in/orders.csv", body).await;
    let letters = fixture.wait_for_dead_letters(1).await;
    assert!(letters[0].error.contains("400"), "{}", letters[0].error);
    fixture.wait_for_empty_queue().await;
    worker.stop().await;
    let delivered = server.row_count();
    assert!(0 < delivered && delivered < rows, "{delivered} rows");

    // 100-row batches fill each 64 KiB part with about 1400 rows.
    let (worker, stats) = fixture
        .start_worker_with_stats(fixture.config_with_sinks(Some(&routes(100)), "", &sinks))
        .await;
    fixture
        .send_raw(&s3_event(&fixture.bucket, &[("in/orders.csv", &etag, size)]).to_string())
        .await;
    wait_until("the replay committed and an empty queue", WAIT, || async {
        stats.objects_committed.load(Ordering::Relaxed) >= 1 && fixture.queue_is_empty().await
    })
    .await;
    let ids: HashSet<i64> = server
        .rows()
        .iter()
        .map(|row| row["id"].as_i64().unwrap())
        .collect();
    let missing: Vec<i64> = (0..rows as i64).filter(|id| !ids.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} rows lost, from id {:?}",
        missing.len(),
        missing.first()
    );
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

/// ClickHouse's HTTP interface, started by `tests/services/clickhouse.sh`.
fn clickhouse_url() -> String {
    std::env::var("S3I_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

async fn clickhouse(query: &str) -> String {
    let response = reqwest::Client::new()
        .post(clickhouse_url())
        .body(query.to_owned())
        .send()
        .await
        .unwrap_or_else(|err| {
            panic!(
                "ClickHouse is not reachable at {} (start it with `tests/services/clickhouse.sh start`): {err}",
                clickhouse_url()
            )
        });
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(
        status.is_success(),
        "ClickHouse answered {status} to {query:?}: {text}"
    );
    text.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_lands_in_a_real_clickhouse_and_an_unknown_table_is_dead_lettered() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("http-clickhouse").await;
    let table = fixture.bucket.replace('-', "_");
    clickhouse(&format!(
        "CREATE TABLE {table} (id Int64, name String, price Float64) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    let insert = |table: &str| {
        format!(
            "{}/?query=INSERT%20INTO%20{table}%20FORMAT%20JSONEachRow",
            clickhouse_url()
        )
    };
    // The Debian ClickHouse (18.16) predates insert_deduplication_token, so
    // no query parameter here; the header is ignored by it.
    let routes = r#"
        [[routes]]
        name = "missing"
        key_glob = "missing/**"
        sink = "nowhere"

        [[routes]]
        name = "all"
        key_glob = "**"
        sink = "events"
    "#;
    let sinks = format!(
        r#"
        [sinks.events]
        type = "http"
        url = "{good}"
        format = "ndjson"
        compression = "gzip"
        max_request_bytes = 65536

        [sinks.nowhere]
        type = "http"
        url = "{bad}"
        format = "ndjson"
        "#,
        good = insert(&table),
        bad = insert(&format!("{table}_missing")),
    );
    let worker = fixture.start_worker(fixture.config_with_sinks(Some(routes), "", &sinks));
    fixture.put("in/orders.csv", csv_rows(3_000)).await;
    fixture.put("missing/orders.csv", csv_rows(3)).await;

    wait_until("3000 rows in ClickHouse", WAIT, || async {
        clickhouse(&format!("SELECT count() FROM {table}")).await == "3000"
    })
    .await;
    assert_eq!(
        clickhouse(&format!("SELECT sum(id), max(price) FROM {table}")).await,
        "4498500\t5998.5"
    );
    assert_eq!(
        clickhouse(&format!("SELECT name FROM {table} WHERE id = 42")).await,
        "item 42"
    );
    let letters = fixture.wait_for_dead_letters(1).await;
    assert_eq!(letters[0].key.as_deref(), Some("missing/orders.csv"));
    assert!(letters[0].error.contains("404"), "{}", letters[0].error);
    assert!(
        letters[0].error.contains("doesn't exist"),
        "{}",
        letters[0].error
    );
    fixture.wait_for_empty_queue().await;
    clickhouse(&format!("DROP TABLE {table}")).await;
    worker.stop().await;
}
