//! The binary's command line: config validation and graceful shutdown.

use std::process::Stdio;
use std::time::Duration;

use crate::util;

const VALID: &str = r#"
[queue]
url = "http://127.0.0.1:4566/queue/us-east-1/000000000000/q"

[[routes]]
name = "orders"
bucket = "vendor"
key_glob = "orders/**/*.csv"
sink = "lake"

[sinks.lake]
type = "parquet_dir"
path = "/tmp/lake"
"#;

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    file
}

#[test]
fn check_config_prints_the_resolved_config_and_routes() {
    let _suite = crate::shared_blocking();
    let config = write_config(VALID);
    let output = util::worker_command()
        .args(["check-config", "--config"])
        .arg(config.path())
        .env("S3_INGEST__QUEUE__WAIT_TIME_SECS", "7")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("wait_time_secs = 7"), "{stdout}");
    assert!(
        stdout.contains("orders: bucket vendor, key orders/**/*.csv"),
        "{stdout}"
    );
}

/// `--config s3://…`, `--config ssm://…` and `S3_INGEST_CONFIG_TOML`: the
/// config delivered without a file in the image, read with the SDK's
/// default chain (here: LocalStack through `AWS_ENDPOINT_URL`).
#[tokio::test]
async fn the_config_is_read_from_s3_from_ssm_or_from_one_variable() {
    let _suite = crate::shared().await;
    let endpoint = util::endpoint();
    let clients = util::clients();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let bucket = format!("config-{}", &run[..12]);
    clients
        .s3
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let config_for =
        |wait: u32| VALID.replace("[queue]\n", &format!("[queue]\nwait_time_secs = {wait}\n"));
    clients
        .s3
        .put_object()
        .bucket(&bucket)
        .key("s3-ingest/prod.toml")
        .body(config_for(11).into_bytes().into())
        .send()
        .await
        .unwrap();
    let ssm = aws_sdk_ssm::Client::new(&util::sdk_config_at(&endpoint));
    let parameter = format!("/s3-ingest/{run}/config");
    ssm.put_parameter()
        .name(&parameter)
        .value(config_for(12))
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();

    let check_config = |args: Vec<String>, inline: Option<String>| {
        let mut command = util::worker_command();
        command
            .arg("check-config")
            .args(args)
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1");
        if let Some(text) = inline {
            command.env("S3_INGEST_CONFIG_TOML", text);
        }
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let s3_location = format!("s3://{bucket}/s3-ingest/prod.toml");
    let (code, stdout, stderr) = check_config(vec!["--config".into(), s3_location], None);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("wait_time_secs = 11"), "{stdout}");

    let (code, stdout, stderr) =
        check_config(vec!["--config".into(), format!("ssm://{parameter}")], None);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("wait_time_secs = 12"), "{stdout}");

    let (code, stdout, stderr) = check_config(vec![], Some(config_for(13)));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("wait_time_secs = 13"), "{stdout}");

    // Failures name the location and exit 2, as an invalid file does.
    let missing = format!("s3://{bucket}/s3-ingest/missing.toml");
    let (code, _, stderr) = check_config(vec!["--config".into(), missing.clone()], None);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&missing), "{stderr}");
    let (code, _, stderr) = check_config(
        vec!["--config".into(), format!("ssm:///s3-ingest/{run}/none")],
        None,
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("SSM parameter"), "{stderr}");
    // Two ways at once is ambiguous.
    let (code, _, stderr) = check_config(
        vec![
            "--config".into(),
            format!("s3://{bucket}/s3-ingest/prod.toml"),
        ],
        Some(config_for(13)),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("S3_INGEST_CONFIG_TOML"), "{stderr}");
    // A TOML error in a fetched config names where it came from.
    let (code, _, stderr) = check_config(vec![], Some("[queue".into()));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("S3_INGEST_CONFIG_TOML") && stderr.contains("not valid TOML"),
        "{stderr}"
    );
}

#[test]
fn check_config_builds_the_sinks_and_names_a_missing_secret_variable() {
    let _suite = crate::shared_blocking();
    let text = format!(
        "{VALID}\n[sinks.api]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/insert\"\nformat = \"ndjson\"\nheaders_from_env = {{ Authorization = {{ env = \"S3I_CLI_TEST_UNSET_TOKEN\" }} }}\n"
    );
    let config = write_config(&text);
    let output = util::worker_command()
        .args(["check-config", "--config"])
        .arg(config.path())
        .env_remove("S3I_CLI_TEST_UNSET_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("sink `api`"), "{stderr}");
    assert!(stderr.contains("S3I_CLI_TEST_UNSET_TOKEN"), "{stderr}");
}

#[test]
fn check_config_redacts_secrets_set_by_environment_overrides() {
    let _suite = crate::shared_blocking();
    let config = write_config(VALID);
    let output = util::worker_command()
        .args(["check-config", "--config"])
        .arg(config.path())
        .env(
            "S3_INGEST__AWS__ENDPOINT_URL",
            "http://admin:hunter2-aws@127.0.0.1:4566",
        )
        .env("S3_INGEST__SINKS__CH__TYPE", "http")
        .env(
            "S3_INGEST__SINKS__CH__URL",
            "http://127.0.0.1:9/?query=INSERT%20INTO%20t&password=hunter2-query",
        )
        .env("S3_INGEST__SINKS__CH__FORMAT", "ndjson")
        .env(
            "S3_INGEST__SINKS__CH__HEADERS__X_API_TOKEN",
            "hunter2-header",
        )
        .env("S3_INGEST__SINKS__CH__HEADERS__X_TEAM", "data")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "{stdout}\n{stderr}"
    );
    for shown in [
        "endpoint_url = \"http://***@127.0.0.1:4566\"",
        "url = \"http://127.0.0.1:9/?query=***&password=***\"",
        "x_api_token = \"***\"",
        "x_team = \"data\"",
        "format = \"ndjson\"",
        "url = \"http://127.0.0.1:4566/queue/us-east-1/000000000000/q\"",
        "orders: bucket vendor, key orders/**/*.csv",
    ] {
        assert!(stdout.contains(shown), "{shown} missing from:\n{stdout}");
    }

    // A password in a PostgreSQL url is refused, and not echoed.
    let output = util::worker_command()
        .args(["check-config", "--config"])
        .arg(config.path())
        .env("S3_INGEST__SINKS__PG__TYPE", "postgres")
        .env("S3_INGEST__SINKS__PG__TABLE", "orders")
        .env(
            "S3_INGEST__SINKS__PG__URL",
            "postgres://ingest:hunter2-pg@db/w",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("sinks.pg.url"), "{stderr}");
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn invalid_config_exits_2_naming_the_key() {
    let _suite = crate::shared_blocking();
    let config = write_config(&VALID.replace("[queue]", "[queue]\nmax_messages = 50"));
    let output = util::worker_command()
        .args(["check-config", "--config"])
        .arg(config.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("queue.max_messages"), "{stderr}");
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let _suite = crate::shared_blocking();
    let output = util::worker_command()
        .args(["run", "--config", "/nonexistent/s3-ingest.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/s3-ingest.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_that_does_not_exist_stops_the_worker_at_start_up() {
    let _suite = crate::shared().await;
    let config = write_config(&format!(
        "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nforce_path_style = true\n{}",
        util::endpoint(),
        VALID.replace("/q\"", "/s3i-no-such-queue\"")
    ));
    let output = util::worker_command()
        .args(["--config"])
        .arg(config.path())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("s3i-no-such-queue"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_receiving_and_releases_what_the_last_long_poll_returns() {
    let _suite = crate::alone().await;
    let fixture = util::Fixture::new("sigterm").await;
    let mut config = fixture.config(None);
    // The full 20 s long poll, and a long visibility timeout: a message the
    // last poll returns must be released, not hidden for a minute.
    config.queue.wait_time_secs = 20;
    config.queue.visibility_timeout_secs = 60;
    let text = toml::to_string(&config).unwrap();
    let config_file = write_config(&text);
    let mut child = util::worker_command()
        .arg("--config")
        .arg(config_file.path())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once a file has landed the worker is running and long-polling.
    fixture.put("in/a.csv", util::csv_rows(2)).await;
    fixture.wait_for_files_and_empty_queue(1).await;

    let sent = std::time::Instant::now();
    util::signal(&child, "-TERM");
    // Arrives while the last long poll is still open.
    fixture.put("in/late.csv", util::csv_rows(3)).await;
    let exit = tokio::task::spawn_blocking(move || {
        let exit = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (exit, stderr)
    })
    .await
    .unwrap();
    assert_eq!(exit.0.code(), Some(0), "{}", exit.1);
    // Bounded by the long poll (20 s), never by the visibility timeout.
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "{:?}",
        sent.elapsed()
    );

    // The next worker gets the late file at once, not after 60 s.
    let worker = fixture.start_worker(config);
    util::wait_until(
        "late file ingested by the next worker",
        Duration::from_secs(30),
        || async { fixture.sink_files().len() == 2 && fixture.queue_is_empty().await },
    )
    .await;
    worker.stop().await;
}

/// With `status.emf_namespace` the key metrics reach CloudWatch as EMF
/// lines on stderr (what awslogs ships on ECS): committed and dead-lettered
/// objects as increases, with the Service dimension and each label's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_metrics_are_written_to_stderr_as_cloudwatch_emf_lines() {
    let _suite = crate::shared().await;
    let fixture = util::Fixture::new("emf").await;
    let mut config = fixture.config(None);
    config.status.listen_addr = String::new();
    config.status.emf_namespace = Some("s3-ingest-test".into());
    config.status.emf_service = "ingest-emf".into();
    config.status.emf_interval_secs = 1;
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("worker.log");
    let child = fixture.spawn_worker_process(&config, &stderr_path);
    fixture.put("in/a.csv", util::csv_rows(7)).await;
    fixture.put("in/bad.json", "{}").await;
    fixture.wait_for_files_and_empty_queue(1).await;

    let emf_lines = || {
        std::fs::read_to_string(&stderr_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| line.get("_aws").is_some())
            .collect::<Vec<_>>()
    };
    let sum = |lines: &[serde_json::Value], metric: &str| -> u64 {
        lines.iter().filter_map(|line| line[metric].as_u64()).sum()
    };
    util::wait_until(
        "EMF lines for the committed and the dead-lettered object",
        Duration::from_secs(30),
        || {
            let lines = emf_lines();
            async move {
                sum(&lines, "ObjectsCommitted") == 1 && sum(&lines, "ObjectsDeadLettered") == 1
            }
        },
    )
    .await;
    util::signal(&child, "-TERM");
    util::wait_for_exit(child).await;

    let lines = emf_lines();
    let committed = lines
        .iter()
        .find(|line| line.get("ObjectsCommitted").is_some())
        .unwrap();
    assert_eq!(committed["Service"], "ingest-emf");
    assert_eq!(committed["route"], "all");
    assert_eq!(committed["sink"], "lake");
    let directive = &committed["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "s3-ingest-test");
    assert_eq!(
        directive["Dimensions"],
        serde_json::json!([["Service"], ["Service", "route"], ["Service", "sink"]])
    );
    assert!(committed["_aws"]["Timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    let dead = lines
        .iter()
        .find(|line| line.get("ObjectsDeadLettered").is_some())
        .unwrap();
    assert_eq!(dead["error_kind"], "unsupported_format");
    // Increases, not running totals: the sums stay at one each however
    // many intervals passed.
    assert_eq!(sum(&lines, "ObjectsCommitted"), 1);
    assert_eq!(sum(&lines, "RowsIngested"), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_are_served_and_probed() {
    let _suite = crate::shared().await;
    let fixture = util::Fixture::new("status").await;
    let mut config = fixture.config(None);
    // A port the kernel just handed out as free: one derived from the pid
    // could be an ephemeral port in use, and the worker would not start.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    config.status.listen_addr = format!("127.0.0.1:{port}");
    let config_file = write_config(&toml::to_string(&config).unwrap());
    let child = util::worker_command()
        .arg("--config")
        .arg(config_file.path())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    fixture.put("in/a.csv", util::csv_rows(7)).await;
    fixture.put("in/bad.json", "{}").await;
    fixture.wait_for_files_and_empty_queue(1).await;
    let addr = format!("127.0.0.1:{port}");

    let (status, body) = util::http_get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "s3_ingest_messages_received_total",
        "s3_ingest_objects_committed_total{route=\"all\",sink=\"lake\"} 1",
        "s3_ingest_rows_ingested_total{route=\"all\",sink=\"lake\"} 7",
        "s3_ingest_objects_dead_lettered_total{route=\"all\",error_kind=\"unsupported_format\"} 1",
        "s3_ingest_messages_discarded_total{reason=\"test_event\"} 1",
        "s3_ingest_end_to_end_lag_seconds_bucket",
        "s3_ingest_object_duration_seconds_bucket",
    ] {
        assert!(body.contains(needle), "{needle} missing from:\n{body}");
    }
    assert_eq!(util::http_get(&addr, "/healthz").await.0, 200);
    assert_eq!(util::http_get(&addr, "/readyz").await.0, 200);

    // The container health check: the binary's own subcommand.
    let healthcheck = util::worker_command()
        .args(["healthcheck", "--config"])
        .arg(config_file.path())
        .output()
        .unwrap();
    assert!(
        healthcheck.status.success(),
        "{}",
        String::from_utf8_lossy(&healthcheck.stderr)
    );
    // As a container runs it: no config at all (no queue URL, no routes),
    // only the status address from the environment.
    let healthcheck = util::worker_command()
        .arg("healthcheck")
        .env("S3_INGEST__STATUS__LISTEN_ADDR", &addr)
        .output()
        .unwrap();
    assert!(
        healthcheck.status.success(),
        "{}",
        String::from_utf8_lossy(&healthcheck.stderr)
    );

    // Readiness follows the queue: delete it and /readyz turns 503.
    fixture
        .clients
        .sqs
        .delete_queue()
        .queue_url(&fixture.queue_url)
        .send()
        .await
        .unwrap();
    util::wait_until(
        "readyz reports the missing queue",
        Duration::from_secs(30),
        || async { util::http_get(&addr, "/readyz").await.0 == 503 },
    )
    .await;

    util::signal(&child, "-TERM");
    util::wait_for_exit(child).await;
    let after = util::worker_command()
        .args(["healthcheck", "--url", &format!("http://{addr}/healthz")])
        .output()
        .unwrap();
    assert!(
        !after.status.success(),
        "healthcheck passes with no worker running"
    );
}

/// The `stdout` sink writes on the blocking pool: a reader that stops
/// reading fills the pipe and blocks those writes, but the runtime (and so
/// the status endpoints, heartbeats and other sinks) keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_reader_does_not_stall_the_worker() {
    let _suite = crate::alone().await;
    use std::io::BufRead;
    let fixture = util::Fixture::new("stdout-stall").await;
    let mut config = fixture.config_with_sinks(
        Some(
            r#"
            [[routes]]
            name = "all"
            key_glob = "**"
            sink = "console"
            "#,
        ),
        "",
        r#"
        [sinks.console]
        type = "stdout"
        "#,
    );
    let port = 20_000 + ((std::process::id() + 1) % 20_000) as u16;
    let addr = format!("127.0.0.1:{port}");
    config.status.listen_addr = addr.clone();
    let config_file = write_config(&toml::to_string(&config).unwrap());
    let mut child = util::worker_command()
        .arg("--config")
        .arg(config_file.path())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Four objects (the worker's concurrency) of about 1 MiB of NDJSON
    // each, with nobody reading: a pipe holds 64 KiB.
    let rows = 20_000;
    for index in 0..4 {
        fixture
            .put(&format!("in/{index}.csv"), util::csv_rows(rows))
            .await;
    }
    let get = |path: &'static str| {
        let addr = addr.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), util::http_get(&addr, path))
                .await
                .unwrap_or_else(|_| panic!("{path} did not answer in 10 s: the runtime is stalled"))
        }
    };
    util::wait_until(
        "four objects in flight, blocked on stdout",
        Duration::from_secs(60),
        || async {
            get("/metrics")
                .await
                .1
                .contains("s3_ingest_objects_in_flight 4")
        },
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get("/healthz").await.0, 200);
        assert_eq!(get("/readyz").await.0, 200);
    }

    // Read now: every row arrives, and the messages are deleted.
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::BufReader::new(stdout).lines().count());
    fixture.wait_for_empty_queue().await;
    util::signal(&child, "-TERM");
    util::wait_for_exit(child).await;
    assert_eq!(reader.join().unwrap(), 4 * rows);
}
