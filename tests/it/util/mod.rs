//! Shared helpers for the LocalStack integration tests: each test makes its
//! own uniquely named bucket, queue and DLQ through the SDK, runs the worker
//! in-process, and waits by polling with a deadline.

#![allow(dead_code)]

pub mod http_server;
pub mod proxy;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
use aws_sdk_sqs::types::QueueAttributeName;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use s3_ingest::config::Config;
use s3_ingest::dead_letter::DeadLetter;
use s3_ingest::worker::Stats;
use s3_ingest::{AwsClients, build_worker, run_with_clients};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub fn endpoint() -> String {
    std::env::var("S3I_TEST_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

/// Clients with LocalStack's static credentials, so tests never depend on
/// the developer's AWS setup.
pub fn clients() -> AwsClients {
    clients_at(&endpoint())
}

/// Clients for another endpoint (e.g. a fault-injecting proxy).
pub fn clients_at(endpoint: &str) -> AwsClients {
    AwsClients::from_sdk_config(&sdk_config_at(endpoint), true)
}

/// LocalStack's SDK config, for clients of other services (SSM).
pub fn sdk_config_at(endpoint: &str) -> aws_config::SdkConfig {
    let credentials = aws_sdk_s3::config::Credentials::new("test", "test", None, None, "tests");
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
            credentials,
        ))
        .build()
}

/// Worker logs in the test output (shown for failing tests); `RUST_LOG`
/// picks the level.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("s3_ingest=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Polls `condition` until it holds or `timeout` passes; panics with
/// `what` on timeout. Never a fixed sleep.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub const WAIT: Duration = Duration::from_secs(60);

/// One test's private resources.
pub struct Fixture {
    pub clients: AwsClients,
    pub bucket: String,
    pub queue_url: String,
    pub queue_arn: String,
    pub dlq_url: String,
    pub output: tempfile::TempDir,
}

pub struct FixtureOptions {
    /// Whether the bucket notifies the queue (off for hand-sent messages).
    pub notifications: bool,
    pub versioned: bool,
}

impl Default for FixtureOptions {
    fn default() -> Self {
        FixtureOptions {
            notifications: true,
            versioned: false,
        }
    }
}

/// Ten random hex digits: what makes a test's bucket, queue, table or
/// Terraform root its own on a shared LocalStack or server.
pub fn unique_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// `s3i-PREFIX-ID`, lower case (valid as a bucket and a queue name).
pub fn unique(prefix: &str) -> String {
    format!("s3i-{prefix}-{}", unique_id()).to_ascii_lowercase()
}

impl Fixture {
    pub async fn new(name: &str) -> Fixture {
        Fixture::with_options(name, FixtureOptions::default()).await
    }

    pub async fn with_options(name: &str, options: FixtureOptions) -> Fixture {
        init_logging();
        let clients = clients();
        let bucket = unique(name);
        clients
            .s3
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "cannot create bucket on LocalStack at {} (is it running? `make test` starts it): {}",
                    endpoint(),
                    aws_sdk_s3::error::DisplayErrorContext(err)
                )
            });
        if options.versioned {
            clients
                .s3
                .put_bucket_versioning()
                .bucket(&bucket)
                .versioning_configuration(
                    aws_sdk_s3::types::VersioningConfiguration::builder()
                        .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send()
                .await
                .unwrap();
        }
        let dlq_url = create_queue(&clients, &unique(&format!("{name}-dlq"))).await;
        let queue_url = create_queue(&clients, &bucket).await;
        let queue_arn = queue_arn(&clients, &queue_url).await;
        if options.notifications {
            clients
                .s3
                .put_bucket_notification_configuration()
                .bucket(&bucket)
                .notification_configuration(
                    NotificationConfiguration::builder()
                        .queue_configurations(
                            QueueConfiguration::builder()
                                .queue_arn(&queue_arn)
                                .events(Event::S3ObjectCreated)
                                .build()
                                .unwrap(),
                        )
                        .build(),
                )
                .send()
                .await
                .unwrap();
        }
        Fixture {
            clients,
            bucket,
            queue_url,
            queue_arn,
            dlq_url,
            output: tempfile::tempdir().unwrap(),
        }
    }

    pub fn output_dir(&self) -> &Path {
        self.output.path()
    }

    /// A config for this fixture: one route for every key to `parquet_dir`,
    /// unless `routes_toml` gives others (they may use sink "lake").
    pub fn config(&self, routes_toml: Option<&str>) -> Config {
        self.config_with(routes_toml, "")
    }

    pub fn config_with(&self, routes_toml: Option<&str>, queue_extra: &str) -> Config {
        self.config_with_sinks(routes_toml, queue_extra, "")
    }

    /// [`Fixture::config_with`] plus more `[sinks.NAME]` tables
    /// (`sinks_toml`) beside the `lake` parquet_dir sink.
    pub fn config_with_sinks(
        &self,
        routes_toml: Option<&str>,
        queue_extra: &str,
        sinks_toml: &str,
    ) -> Config {
        let routes = routes_toml.unwrap_or(
            r#"
            [[routes]]
            name = "all"
            key_glob = "**"
            sink = "lake"
            "#,
        );
        let text = format!(
            r#"
            [aws]
            region = "us-east-1"
            endpoint_url = "{endpoint}"
            force_path_style = true

            [queue]
            url = "{queue}"
            dlq_url = "{dlq}"
            wait_time_secs = 1
            visibility_timeout_secs = 20
            max_receive_count = 10
            {queue_extra}

            [worker]
            concurrency = 4
            shutdown_grace_secs = 10

            [status]
            listen_addr = "127.0.0.1:0"

            {routes}

            [sinks.lake]
            type = "parquet_dir"
            path = "{output}"

            {sinks_toml}
            "#,
            endpoint = endpoint(),
            queue = self.queue_url,
            dlq = self.dlq_url,
            output = self.output_dir().display(),
        );
        Config::from_toml_str(&text).expect("test config is valid")
    }

    pub async fn put(&self, key: &str, body: impl Into<Vec<u8>>) -> String {
        let output = self
            .clients
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body.into()))
            .send()
            .await
            .unwrap();
        output
            .e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .to_owned()
    }

    pub async fn send_raw(&self, body: &str) {
        self.clients
            .sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    /// (visible, hidden) message counts; hidden = in flight or delayed (a
    /// message handed back during a pause is delayed, not gone).
    pub async fn queue_counts(&self) -> (u64, u64) {
        queue_counts(&self.clients, &self.queue_url).await
    }

    pub async fn queue_is_empty(&self) -> bool {
        self.queue_counts().await == (0, 0)
    }

    /// Receives every envelope now on the DLQ, removing them.
    pub async fn take_dead_letters(&self) -> Vec<DeadLetter> {
        self.take_dead_letter_bodies()
            .await
            .into_iter()
            .map(|body| {
                serde_json::from_str(&body)
                    .unwrap_or_else(|err| panic!("DLQ message is not an envelope ({err}): {body}"))
            })
            .collect()
    }

    /// Receives every message body now on the DLQ, as sent, removing them.
    pub async fn take_dead_letter_bodies(&self) -> Vec<String> {
        let mut bodies = Vec::new();
        loop {
            let output = self
                .clients
                .sqs
                .receive_message()
                .queue_url(&self.dlq_url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .send()
                .await
                .unwrap();
            let messages = output.messages.unwrap_or_default();
            if messages.is_empty() {
                return bodies;
            }
            for message in messages {
                bodies.push(message.body.unwrap_or_default());
                self.clients
                    .sqs
                    .delete_message()
                    .queue_url(&self.dlq_url)
                    .receipt_handle(message.receipt_handle.unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    /// Waits until `count` envelopes have arrived on the DLQ and returns them.
    pub async fn wait_for_dead_letters(&self, count: usize) -> Vec<DeadLetter> {
        let mut letters = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while letters.len() < count {
            letters.extend(self.take_dead_letters().await);
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "expected {count} dead letters, got {}: {letters:?}",
                    letters.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        letters
    }

    /// Parquet files the sink has committed (temp files excluded).
    pub fn sink_files(&self) -> Vec<PathBuf> {
        parquet_files(self.output_dir())
    }

    /// The clients the worker uses: the config's endpoint (LocalStack or a
    /// proxy in front of it), LocalStack's static credentials.
    fn worker_clients(config: &Config) -> AwsClients {
        clients_at(config.aws.endpoint_url.as_deref().unwrap_or(&endpoint()))
    }

    pub fn start_worker(&self, config: Config) -> RunningWorker {
        let shutdown = CancellationToken::new();
        let clients = Self::worker_clients(&config);
        let handle = tokio::spawn(run_with_clients(config, clients, shutdown.clone()));
        RunningWorker { shutdown, handle }
    }

    /// Starts the worker in-process and returns its outcome counters too.
    pub async fn start_worker_with_stats(&self, config: Config) -> (RunningWorker, Arc<Stats>) {
        let worker = build_worker(&config, Self::worker_clients(&config))
            .await
            .expect("worker starts");
        let stats = worker.stats();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            Arc::new(worker).run(token).await;
            Ok(())
        });
        (RunningWorker { shutdown, handle }, stats)
    }

    /// Starts the worker in-process with its status endpoints on a free
    /// loopback port: the running worker, the worker itself (stats,
    /// deployment problems) and the endpoints' address.
    pub async fn start_worker_with_status(
        &self,
        config: Config,
    ) -> (RunningWorker, Arc<s3_ingest::worker::Worker>, String) {
        let worker = Arc::new(
            build_worker(&config, Self::worker_clients(&config))
                .await
                .expect("worker starts"),
        );
        let shutdown = CancellationToken::new();
        let addr = s3_ingest::status::serve(
            "127.0.0.1:0",
            worker.liveness(),
            worker.queues(),
            worker.deployment(),
            shutdown.clone(),
        )
        .await
        .expect("status endpoints bind");
        let running = worker.clone();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            running.run(token).await;
            Ok(())
        });
        (RunningWorker { shutdown, handle }, worker, addr.to_string())
    }

    /// Starts the `s3-ingest` binary with `config`, logging to `log`.
    pub fn spawn_worker_process(&self, config: &Config, log: &Path) -> std::process::Child {
        let config_path = log.with_extension("toml");
        std::fs::write(&config_path, toml::to_string(config).unwrap()).unwrap();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        worker_command()
            .arg("--config")
            .arg(&config_path)
            // As the image sets it (Dockerfile): what tests/it/memory.rs measures.
            .env("MALLOC_ARENA_MAX", "2")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("RUST_LOG", "s3_ingest=info")
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start the s3-ingest binary")
    }

    /// Uploads many objects with bounded concurrency.
    /// Deletes one object: tests and benches that write GiBs free
    /// LocalStack's disk as they go (it keeps objects until it stops).
    pub async fn delete(&self, key: &str) {
        self.clients
            .s3
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .expect("DeleteObject");
    }

    pub async fn put_many(&self, objects: Vec<(String, Vec<u8>)>) {
        use futures::StreamExt;
        futures::stream::iter(objects)
            .map(|(key, body)| async move { self.put(&key, body).await })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
    }

    /// How many committed sink files name each source key.
    pub fn sink_copies_by_key(&self) -> std::collections::BTreeMap<String, usize> {
        let mut copies = std::collections::BTreeMap::new();
        for path in self.sink_files() {
            let reader = parquet::file::reader::SerializedFileReader::new(
                std::fs::File::open(&path).unwrap(),
            )
            .unwrap();
            use parquet::file::reader::FileReader;
            let key = reader
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .and_then(|kv| kv.iter().find(|e| e.key == "s3_ingest.source_key").cloned())
                .and_then(|e| e.value)
                .unwrap_or_default();
            *copies.entry(key).or_insert(0) += 1;
        }
        copies
    }

    /// Waits until the source queue holds nothing, visible or in flight.
    pub async fn wait_for_empty_queue(&self) {
        wait_until("an empty queue", WAIT, || self.queue_is_empty()).await;
    }

    /// Waits for `files` sink files and an empty source queue.
    pub async fn wait_for_files_and_empty_queue(&self, files: usize) {
        wait_until(
            &format!("{files} sink file(s) and an empty queue"),
            WAIT,
            || async { self.sink_files().len() >= files && self.queue_is_empty().await },
        )
        .await;
        assert_eq!(self.sink_files().len(), files, "{:?}", self.sink_files());
    }
}

/// Parquet files under `dir`, sorted; hidden (temporary) files excluded.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    collect_parquet(dir, &mut files);
    files.sort();
    files
}

fn collect_parquet(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_parquet(&path, files);
        } else if path.extension().is_some_and(|e| e == "parquet")
            && !path.file_name().unwrap().to_string_lossy().starts_with('.')
        {
            files.push(path);
        }
    }
}

pub async fn create_queue(clients: &AwsClients, name: &str) -> String {
    clients
        .sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap_or_else(|err| {
            panic!(
                "create queue {name}: {}",
                aws_sdk_sqs::error::DisplayErrorContext(err)
            )
        })
        .queue_url
        .unwrap()
}

pub async fn queue_arn(clients: &AwsClients, url: &str) -> String {
    clients
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap()
}

pub async fn queue_counts(clients: &AwsClients, url: &str) -> (u64, u64) {
    let attributes = clients
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default();
    let get = |name: &QueueAttributeName| {
        attributes
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        get(&QueueAttributeName::ApproximateNumberOfMessages),
        get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            + get(&QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    )
}

pub struct RunningWorker {
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), s3_ingest::RunError>>,
}

impl RunningWorker {
    /// Stops the worker, tolerating any start-up error (for fault tests).
    pub async fn abort(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(60), self.handle).await;
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("worker stops within a minute")
            .expect("worker task did not panic")
            .expect("worker ran without a start-up error");
    }
}

/// A plain HTTP GET on loopback: (status code, body).
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// Rows and key-value metadata of one sink file.
pub struct SinkFile {
    pub rows: usize,
    pub metadata: std::collections::HashMap<String, String>,
    pub batches: Vec<arrow::record_batch::RecordBatch>,
}

pub fn read_sink_file(path: &Path) -> SinkFile {
    let file = std::fs::File::open(path).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let batches: Vec<_> = builder.build().unwrap().map(|b| b.unwrap()).collect();
    SinkFile {
        rows: batches.iter().map(|b| b.num_rows()).sum(),
        metadata,
        batches,
    }
}

/// A sink file whose lineage names `key`.
pub fn sink_file_for(files: &[PathBuf], key: &str) -> SinkFile {
    files
        .iter()
        .map(|path| read_sink_file(path))
        .find(|file| {
            file.metadata
                .get("s3_ingest.source_key")
                .map(String::as_str)
                == Some(key)
        })
        .unwrap_or_else(|| panic!("no sink file for key {key:?} among {files:?}"))
}

/// An S3 event notification body for `key`, as AWS would encode it.
pub fn s3_event(bucket: &str, records: &[(&str, &str, u64)]) -> serde_json::Value {
    let records: Vec<_> = records
        .iter()
        .map(|(key, etag, size)| {
            serde_json::json!({
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2026-11-27T12:00:00.000Z",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
                    "object": {"key": aws_encode_key(key), "size": size, "eTag": etag, "sequencer": "0055AED6DCD90281E5"}
                }
            })
        })
        .collect();
    serde_json::json!({ "Records": records })
}

/// Encodes a key the way S3 event notifications do (`+` for space).
pub fn aws_encode_key(key: &str) -> String {
    let mut out = String::new();
    for byte in key.bytes() {
        match byte {
            b' ' => out.push('+'),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

pub fn csv_rows(rows: usize) -> String {
    let mut text = String::from("id,name,price\n");
    for i in 0..rows {
        text.push_str(&format!("{i},item {i},{}.5\n", i * 2));
    }
    text
}

/// The `s3-ingest` binary, with the developer's `S3_INGEST*` variables
/// kept out of its config.
pub fn worker_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_s3-ingest"));
    for (name, _) in std::env::vars() {
        if name.starts_with("S3_INGEST") {
            command.env_remove(name);
        }
    }
    command
}

/// Sends `signal` (as `kill` spells it: `-TERM`, `-KILL`) to a worker
/// process, which must still be running.
pub fn signal(child: &std::process::Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {}", child.id());
}

/// Waits for a worker process to exit, off the runtime's threads.
pub async fn wait_for_exit(mut child: std::process::Child) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

/// Waits until the log file at `log` holds `needle` (a worker process
/// logging "worker started", "dead-lettered", ...).
pub async fn wait_for_log(log: &Path, needle: &str) {
    wait_until(
        &format!("{needle:?} in {}", log.display()),
        WAIT,
        || async { std::fs::read_to_string(log).is_ok_and(|text| text.contains(needle)) },
    )
    .await;
}

/// gzip at the default level.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    gzip_with(data, flate2::Compression::default())
}

/// gzip at `level` (`fast` where only the format matters and the input is
/// large, `best` for a decompression bomb).
pub fn gzip_with(data: &[u8], level: flate2::Compression) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// A CSV header of `columns` names (`c0`, `c1`, ...) and `rows` rows of ones.
pub fn wide_csv(columns: usize, rows: usize) -> Vec<u8> {
    let names: Vec<String> = (0..columns).map(|c| format!("c{c}")).collect();
    let mut csv = names.join(",").into_bytes();
    csv.push(b'\n');
    let row = vec!["1"; columns].join(",");
    for _ in 0..rows {
        csv.extend_from_slice(row.as_bytes());
        csv.push(b'\n');
    }
    csv
}

/// The values of an int64 column across a sink file's batches.
pub fn int64_column(file: &SinkFile, column: usize) -> Vec<i64> {
    file.batches
        .iter()
        .flat_map(|b| {
            b.column(column)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect()
}

/// The lineage of one object version, for tests that drive a sink through
/// its own API (no event time, no version id, size 0).
pub fn lineage(bucket: &str, key: &str, etag: &str, route: &str) -> s3_ingest::sink::Lineage {
    s3_ingest::sink::Lineage {
        bucket: bucket.into(),
        key: key.into(),
        version_id: None,
        etag: Some(etag.into()),
        size: 0,
        event_time: None,
        route: route.into(),
    }
}

/// Runs `s3-ingest --config <config> ARGS` to the end (the operator's
/// commands), with LocalStack's credentials; the config is written to
/// `dir`.
pub fn run_cli(config: &Config, dir: &Path, args: &[&str]) -> std::process::Output {
    let path = dir.join(format!("cli-{}.toml", unique_id()));
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    worker_command()
        .arg("--config")
        .arg(&path)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the s3-ingest binary")
}

pub fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command's status and both outputs, for assertion messages.
pub fn describe_output(output: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
