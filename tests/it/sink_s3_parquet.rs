//! The `s3_parquet` sink against LocalStack's S3: deterministic keys,
//! multipart uploads, partition templates, replays, and the failure paths
//! (a decode error late in a large file, a missing destination bucket),
//! and the commit marker `is_committed` reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::{FileReader, SerializedFileReader};
use s3_ingest::sink::s3_parquet::{
    CommitMarker, S3ParquetSink, S3ParquetSinkConfig, marker_key, object_key,
};
use s3_ingest::sink::{CommitState, Lineage, Sink, SinkContext};
use sha2::{Digest, Sha256};

use crate::util::*;

/// A destination bucket of its own (never the source bucket).
fn destination_name(fixture: &Fixture) -> String {
    format!("{}-lake", fixture.bucket)
}

async fn create_bucket(fixture: &Fixture, bucket: &str) {
    fixture
        .clients
        .s3
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .unwrap_or_else(|err| {
            panic!(
                "cannot create bucket {bucket} on LocalStack (is it running? `localstack/localstack.sh start`): {}",
                aws_sdk_s3::error::DisplayErrorContext(err)
            )
        });
}

/// A config whose every route goes to an `s3_parquet` sink named `s3lake`
/// with the given extra settings.
fn s3_config(fixture: &Fixture, destination: &str, sink_extra: &str) -> s3_ingest::config::Config {
    let routes = r#"
        [[routes]]
        name = "sales"
        key_glob = "**"
        sink = "s3lake"
    "#;
    let sinks = format!(
        r#"
        [sinks.s3lake]
        type = "s3_parquet"
        bucket = "{destination}"
        prefix = "lake/v1/"
        {sink_extra}
        "#
    );
    fixture.config_with_sinks(Some(routes), "", &sinks)
}

/// Every key in `bucket`, with its size.
async fn list_objects(fixture: &Fixture, bucket: &str) -> BTreeMap<String, i64> {
    let output = fixture
        .clients
        .s3
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    output
        .contents()
        .iter()
        .map(|object| (object.key().unwrap().to_owned(), object.size().unwrap_or(0)))
        .collect()
}

async fn open_multipart_uploads(fixture: &Fixture, bucket: &str) -> usize {
    fixture
        .clients
        .s3
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .uploads()
        .len()
}

async fn get_bytes(fixture: &Fixture, bucket: &str, key: &str) -> Bytes {
    fixture
        .clients
        .s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes()
}

/// Rows and the lineage key-value metadata of one Parquet object.
struct ParquetObject {
    batches: Vec<RecordBatch>,
    rows: usize,
    metadata: BTreeMap<String, String>,
}

async fn read_parquet(fixture: &Fixture, bucket: &str, key: &str) -> ParquetObject {
    let bytes = get_bytes(fixture, bucket, key).await;
    let reader = SerializedFileReader::new(bytes.clone()).unwrap();
    let metadata = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|entries| {
            entries
                .iter()
                .map(|entry| (entry.key.clone(), entry.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    ParquetObject {
        batches,
        rows,
        metadata,
    }
}

async fn read_marker(fixture: &Fixture, bucket: &str, key: &str) -> CommitMarker {
    let bytes = get_bytes(fixture, bucket, key).await;
    serde_json::from_slice(&bytes).unwrap_or_else(|err| {
        panic!(
            "commit marker {key} is not a marker ({err}): {}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// An `s3_parquet` sink driven through its own API, writing under
/// `lake/v1` with the given extra settings.
fn sink_at(s3: &aws_sdk_s3::Client, destination: &str, extra: &str) -> S3ParquetSink {
    let config: S3ParquetSinkConfig = toml::from_str(&format!(
        "bucket = \"{destination}\"\nprefix = \"lake/v1/\"\n{extra}"
    ))
    .unwrap();
    config.validate().unwrap();
    let context = SinkContext {
        s3: s3.clone(),
        expected_bucket_owner: None,
        aws: Default::default(),
        add_columns_routes: Default::default(),
    };
    S3ParquetSink::new("s3lake", &config, &context).unwrap()
}

/// Fails, while `failing` is set, every PUT of a commit marker before it
/// leaves the client: a worker that dies between publishing the Parquet
/// objects and writing the marker, against the real LocalStack otherwise.
#[derive(Debug)]
struct FailMarkerPuts {
    failing: Arc<AtomicBool>,
}

impl aws_sdk_s3::config::Intercept for FailMarkerPuts {
    fn name(&self) -> &'static str {
        "FailMarkerPuts"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_s3::config::RuntimeComponents,
        _cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let request = context.request();
        if self.failing.load(Ordering::SeqCst)
            && request.method() == "PUT"
            && request.uri().contains("/_s3_ingest/commits/")
        {
            return Err("injected: the worker stopped before writing the commit marker".into());
        }
        Ok(())
    }
}

/// A CSV that Parquet cannot compress much (two hashes per row), so its
/// Parquet output is about 2/3 of its size and spans several parts.
fn incompressible_csv(rows: usize) -> String {
    let mut text = String::with_capacity(rows * 140);
    text.push_str("id,first,second\n");
    for i in 0..rows {
        let first = hex::encode(Sha256::digest(i.to_le_bytes()));
        let second = hex::encode(Sha256::digest((i as u64 + (1 << 40)).to_le_bytes()));
        text.push_str(&format!("{i},{first},{second}\n"));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_lands_as_one_parquet_object_at_its_deterministic_key_with_lineage() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("s3pq-csv").await;
    let destination = destination_name(&fixture);
    create_bucket(&fixture, &destination).await;
    let worker = fixture.start_worker(s3_config(&fixture, &destination, ""));
    let key = "vendor/orders 2026.csv";
    let etag = fixture.put(key, csv_rows(1000)).await;

    let expected_key = object_key(
        "lake/v1",
        "",
        &lineage(&fixture.bucket, key, &etag, "sales"),
    );
    assert!(expected_key.starts_with("lake/v1/vendor_orders_2026.csv-"));
    wait_until("the Parquet object is written", WAIT, || async {
        list_objects(&fixture, &destination)
            .await
            .contains_key(&expected_key)
    })
    .await;
    fixture.wait_for_empty_queue().await;

    // The object and, written after it, the version's commit marker.
    let file = lineage(&fixture.bucket, key, &etag, "sales");
    let marker = marker_key("lake/v1", &file);
    assert!(marker.starts_with("lake/v1/_s3_ingest/commits/vendor_orders_2026.csv-"));
    assert_eq!(
        list_objects(&fixture, &destination)
            .await
            .into_keys()
            .collect::<Vec<_>>(),
        [marker.clone(), expected_key.clone()]
    );
    let body = read_marker(&fixture, &destination, &marker).await;
    assert_eq!(
        body.objects
            .iter()
            .map(|object| (object.key.as_str(), object.rows))
            .collect::<Vec<_>>(),
        [(expected_key.as_str(), 1000)]
    );
    assert_eq!(body.rows, 1000);
    assert_eq!(body.sink, "s3lake");
    assert_eq!(body.bucket, destination);
    assert_eq!(
        (
            body.source.bucket.as_str(),
            body.source.key.as_str(),
            body.source.etag.as_deref()
        ),
        (fixture.bucket.as_str(), key, Some(etag.as_str()))
    );
    assert_eq!(body.source.route, "sales");
    assert!(body.source.event_time.is_some());
    assert_eq!(body.worker_version, env!("CARGO_PKG_VERSION"));
    let sink = sink_at(&fixture.clients.s3, &destination, "");
    assert_eq!(
        sink.is_committed(&file).await.unwrap(),
        CommitState::Committed
    );

    let object = read_parquet(&fixture, &destination, &expected_key).await;
    assert_eq!(object.rows, 1000);
    assert_eq!(object.metadata["s3_ingest.source_bucket"], fixture.bucket);
    assert_eq!(object.metadata["s3_ingest.source_key"], key);
    assert_eq!(object.metadata["s3_ingest.source_etag"], etag);
    assert_eq!(object.metadata["s3_ingest.route"], "sales");
    assert!(object.metadata.contains_key("s3_ingest.source_event_time"));
    let ids = object.batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(ids.value(0), 0);
    assert!(fixture.take_dead_letters().await.is_empty());
    assert!(
        list_objects(&fixture, &fixture.bucket).await.len() == 1,
        "nothing written into the source bucket"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_only_csv_commits_a_zero_row_object() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("s3pq-empty").await;
    let destination = destination_name(&fixture);
    create_bucket(&fixture, &destination).await;
    let worker = fixture.start_worker(s3_config(
        &fixture,
        &destination,
        "partition = \"route={route}\"",
    ));
    let key = "in/header-only.csv";
    let etag = fixture.put(key, "id,name\n").await;

    let expected_key = object_key(
        "lake/v1",
        "route=sales",
        &lineage(&fixture.bucket, key, &etag, "sales"),
    );
    wait_until("the zero-row object is written", WAIT, || async {
        list_objects(&fixture, &destination)
            .await
            .contains_key(&expected_key)
    })
    .await;
    let object = read_parquet(&fixture, &destination, &expected_key).await;
    assert_eq!(object.rows, 0);
    assert_eq!(object.metadata["s3_ingest.source_key"], key);
    fixture.wait_for_empty_queue().await;
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_csv_streams_through_a_multipart_upload_with_several_parts() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("s3pq-large").await;
    let destination = destination_name(&fixture);
    create_bucket(&fixture, &destination).await;
    let config = s3_config(
        &fixture,
        &destination,
        "part_size_bytes = 5242880\nrow_group_bytes = 4194304",
    );
    let worker = fixture.start_worker(config);
    let rows = 300_000;
    let csv = incompressible_csv(rows);
    assert!(csv.len() > 35 << 20, "input is {} bytes", csv.len());
    let key = "big/sales.csv";
    let etag = fixture.put(key, csv).await;

    let expected_key = object_key(
        "lake/v1",
        "",
        &lineage(&fixture.bucket, key, &etag, "sales"),
    );
    wait_until(
        "the large object is written",
        Duration::from_secs(180),
        || async {
            list_objects(&fixture, &destination)
                .await
                .contains_key(&expected_key)
        },
    )
    .await;

    let head = fixture
        .clients
        .s3
        .head_object()
        .bucket(&destination)
        .key(&expected_key)
        .part_number(1)
        .send()
        .await
        .unwrap();
    let parts = head.parts_count().unwrap_or(0);
    let etag_parts: i32 = head
        .e_tag()
        .unwrap()
        .trim_matches('"')
        .rsplit_once('-')
        .map_or(1, |(_, count)| count.parse().unwrap());
    assert!(
        parts >= 3 && etag_parts == parts,
        "expected a multipart object of several parts, got parts_count {parts:?}, ETag {:?}",
        head.e_tag()
    );

    let object = read_parquet(&fixture, &destination, &expected_key).await;
    assert_eq!(object.rows, rows);
    let last = object.batches.last().unwrap();
    let ids = last
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(ids.value(ids.len() - 1), rows as i64 - 1);
    let seconds = last
        .column(2)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!(
        seconds.value(seconds.len() - 1),
        hex::encode(Sha256::digest(
            ((rows - 1) as u64 + (1 << 40)).to_le_bytes()
        ))
    );
    assert_eq!(open_multipart_uploads(&fixture, &destination).await, 0);
    fixture.wait_for_empty_queue().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_templates_split_rows_by_column_and_a_replay_overwrites_them() {
    let _suite = crate::shared().await;
    let fixture = Fixture::with_options(
        "s3pq-part",
        FixtureOptions {
            notifications: false,
            ..FixtureOptions::default()
        },
    )
    .await;
    let destination = destination_name(&fixture);
    create_bucket(&fixture, &destination).await;
    let config = s3_config(
        &fixture,
        &destination,
        r#"partition = "route={route}/src={bucket}/dt={event_date}/hr={event_hour}/country={column:country}""#,
    );
    let (worker, stats) = fixture.start_worker_with_stats(config).await;
    let key = "in/by-country.csv";
    let csv = "id,country\n1,fr\n2,us/ca\n3,\n4,fr\n5,us/ca\n6,fr\n";
    let etag = fixture.put(key, csv).await;
    // Hand-sent notifications carry a fixed event time (2026-11-27T12:00Z),
    // so the first delivery and the replay name the same partitions.
    let event = s3_event(&fixture.bucket, &[(key, &etag, csv.len() as u64)]).to_string();
    fixture.send_raw(&event).await;

    let base = format!(
        "lake/v1/route=sales/src={}/dt=2026-11-27/hr=12",
        fixture.bucket
    );
    let file = lineage(&fixture.bucket, key, &etag, "sales");
    let expected: BTreeMap<String, Vec<i64>> = [
        ("country=fr", vec![1, 4, 6]),
        ("country=us%2Fca", vec![2, 5]),
        ("country=__HIVE_DEFAULT_PARTITION__", vec![3]),
    ]
    .into_iter()
    .map(|(partition, ids)| {
        (
            object_key(
                "lake/v1",
                &format!(
                    "route=sales/src={}/dt=2026-11-27/hr=12/{partition}",
                    fixture.bucket
                ),
                &file,
            ),
            ids,
        )
    })
    .collect();
    assert!(expected.keys().all(|key| key.starts_with(&base)));

    let marker = marker_key("lake/v1", &file);
    let check = || async {
        let mut listed = list_objects(&fixture, &destination).await;
        assert!(
            listed.remove(&marker).is_some(),
            "one commit marker, whatever the partitions"
        );
        assert_eq!(
            listed.keys().cloned().collect::<Vec<_>>(),
            expected.keys().cloned().collect::<Vec<_>>()
        );
        let mut published: Vec<String> = read_marker(&fixture, &destination, &marker)
            .await
            .objects
            .into_iter()
            .map(|object| object.key)
            .collect();
        published.sort();
        assert_eq!(published, expected.keys().cloned().collect::<Vec<_>>());
        for (key, ids) in &expected {
            let object = read_parquet(&fixture, &destination, key).await;
            let got: Vec<i64> = object
                .batches
                .iter()
                .flat_map(|batch| {
                    batch
                        .column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                })
                .collect();
            assert_eq!(&got, ids, "rows of {key}");
            assert_eq!(object.metadata["s3_ingest.source_key"], "in/by-country.csv");
        }
    };

    wait_until("first delivery committed", WAIT, || async {
        stats.objects_committed.load(Ordering::Relaxed) == 1 && fixture.queue_is_empty().await
    })
    .await;
    check().await;

    fixture.send_raw(&event).await;
    wait_until("replay committed", WAIT, || async {
        stats.objects_committed.load(Ordering::Relaxed) == 2 && fixture.queue_is_empty().await
    })
    .await;
    // Exactly one object per partition: the replay overwrote them.
    check().await;
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_partition_values_dead_letter_the_file_and_publish_nothing() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("s3pq-toomany").await;
    let destination = destination_name(&fixture);
    create_bucket(&fixture, &destination).await;
    let config = s3_config(
        &fixture,
        &destination,
        "partition = \"id={column:id}\"\nmax_open_partitions = 3",
    );
    let worker = fixture.start_worker(config);
    fixture.put("in/ids.csv", csv_rows(10)).await;

    let letters = fixture.wait_for_dead_letters(1).await;
    assert_eq!(letters[0].error_kind.as_str(), "sink_error");
    assert!(
        letters[0]
            .error
            .contains("more than 3 partitions (max_open_partitions)"),
        "{}",
        letters[0].error
    );
    fixture.wait_for_empty_queue().await;
    assert!(list_objects(&fixture, &destination).await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_failure_late_in_a_large_file_leaves_no_object_and_no_open_upload() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("s3pq-late").await;
    let destination = destination_name(&fixture);
    create_bucket(&fixture, &destination).await;
    let config = s3_config(
        &fixture,
        &destination,
        "part_size_bytes = 5242880\nrow_group_bytes = 1048576",
    );
    let worker = fixture.start_worker(config);
    // About 20 MiB of Parquet (several parts uploaded) before the bad row.
    let mut csv = incompressible_csv(200_000);
    csv.push_str("not-a-number,x,y\n");
    // Watches the destination while the file is processed, so the test
    // proves a multipart upload really was open when the decoder failed.
    let saw_open_upload = Arc::new(AtomicBool::new(false));
    let watcher = {
        let s3 = fixture.clients.s3.clone();
        let destination = destination.clone();
        let saw_open_upload = Arc::clone(&saw_open_upload);
        tokio::spawn(async move {
            loop {
                let uploads = s3
                    .list_multipart_uploads()
                    .bucket(&destination)
                    .send()
                    .await
                    .map(|output| output.uploads().len())
                    .unwrap_or(0);
                if uploads > 0 {
                    saw_open_upload.store(true, Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    fixture.put("in/late-bad.csv", csv).await;

    let letters = fixture.wait_for_dead_letters(1).await;
    watcher.abort();
    assert!(
        saw_open_upload.load(Ordering::Relaxed),
        "no multipart upload was seen open before the failure"
    );
    assert!(
        letters[0].error.contains("data rows"),
        "the decoder's reason is kept: {}",
        letters[0].error
    );
    assert_eq!(letters[0].error_kind.as_str(), "csv_error");
    assert_eq!(letters[0].key.as_deref(), Some("in/late-bad.csv"));
    wait_until("the aborted upload is gone", WAIT, || async {
        open_multipart_uploads(&fixture, &destination).await == 0
    })
    .await;
    assert!(list_objects(&fixture, &destination).await.is_empty());
    fixture.wait_for_empty_queue().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_writer_aborts_its_multipart_upload() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("s3pq-drop").await;
    let destination = destination_name(&fixture);
    create_bucket(&fixture, &destination).await;
    let config: S3ParquetSinkConfig = toml::from_str(&format!(
        "bucket = \"{destination}\"\npart_size_bytes = 5242880\nrow_group_bytes = 1048576"
    ))
    .unwrap();
    config.validate().unwrap();
    let context = SinkContext {
        s3: fixture.clients.s3.clone(),
        expected_bucket_owner: None,
        aws: Default::default(),
        add_columns_routes: Default::default(),
    };
    let sink = S3ParquetSink::new("s3lake", &config, &context).unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("hash", DataType::Utf8, false)]));
    let mut writer = sink
        .open(
            &lineage(&fixture.bucket, "in/x.csv", "etag", "sales"),
            schema.clone(),
        )
        .await
        .unwrap();
    // Incompressible rows until a part has certainly been uploaded.
    for batch_number in 0..40u64 {
        let hashes: Vec<String> = (0..8192u64)
            .map(|i| hex::encode(Sha256::digest((batch_number << 32 | i).to_le_bytes())))
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(hashes))])
            .unwrap();
        writer.write(batch).await.unwrap();
    }
    assert_eq!(
        open_multipart_uploads(&fixture, &destination).await,
        1,
        "a part should be uploaded by now"
    );
    drop(writer);
    wait_until("the dropped writer's upload is aborted", WAIT, || async {
        open_multipart_uploads(&fixture, &destination).await == 0
    })
    .await;
    assert!(list_objects(&fixture, &destination).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_destination_bucket_keeps_the_file_queued_until_it_exists() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("s3pq-nobucket").await;
    let destination = destination_name(&fixture);
    let mut config = s3_config(&fixture, &destination, "");
    // Short visibility so retries come quickly; max_receive_count (10)
    // leaves room for the bucket to appear.
    config.queue.visibility_timeout_secs = 2;
    let (worker, stats) = fixture.start_worker_with_stats(config).await;
    let key = "in/waiting.csv";
    let etag = fixture.put(key, csv_rows(5)).await;

    wait_until("the message is retried twice", WAIT, || async {
        stats.messages_left_for_retry.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert!(fixture.take_dead_letters().await.is_empty());
    assert_eq!(stats.objects_dead_lettered.load(Ordering::Relaxed), 0);

    create_bucket(&fixture, &destination).await;
    let expected_key = object_key(
        "lake/v1",
        "",
        &lineage(&fixture.bucket, key, &etag, "sales"),
    );
    wait_until("the object lands once the bucket exists", WAIT, || async {
        list_objects(&fixture, &destination)
            .await
            .contains_key(&expected_key)
    })
    .await;
    fixture.wait_for_empty_queue().await;
    assert_eq!(
        read_parquet(&fixture, &destination, &expected_key)
            .await
            .rows,
        5
    );
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[test]
fn the_example_config_is_valid_and_template_errors_name_the_sink_field() {
    let _suite = crate::shared_blocking();
    let example = include_str!("../../examples/sink-s3-parquet.toml");
    s3_ingest::config::Config::from_toml_str(example)
        .expect("examples/sink-s3-parquet.toml is valid");
    let broken = example.replace("dt={event_date}", "dt={event_day}");
    let error = s3_ingest::config::Config::from_toml_str(&broken)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("sinks.lake.partition") && error.contains("`{event_day}`"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_committed_follows_the_commit_marker_written_after_every_partition() {
    let _suite = crate::shared().await;
    let fixture = Fixture::with_options(
        "s3pq-marker",
        FixtureOptions {
            notifications: false,
            ..FixtureOptions::default()
        },
    )
    .await;
    let destination = destination_name(&fixture);
    create_bucket(&fixture, &destination).await;
    let failing = Arc::new(AtomicBool::new(false));
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk_config_at(&endpoint()))
            .force_path_style(true)
            .interceptor(FailMarkerPuts {
                failing: Arc::clone(&failing),
            })
            .build(),
    );
    let sink = sink_at(
        &s3,
        &destination,
        "partition = \"country={column:country}\"",
    );
    let file = Lineage {
        version_id: Some("v1".into()),
        size: 42,
        ..lineage(&fixture.bucket, "in/by-country.csv", "etag-1", "sales")
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("country", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            Arc::new(StringArray::from(vec!["fr", "us", "de", "fr"])),
        ],
    )
    .unwrap();
    let partition_keys: Vec<String> = ["country=fr", "country=us", "country=de"]
        .iter()
        .map(|partition| object_key("lake/v1", partition, &file))
        .collect();
    let marker = marker_key("lake/v1", &file);

    assert_eq!(
        sink.is_committed(&file).await.unwrap(),
        CommitState::NotCommitted,
        "nothing written yet"
    );

    // Every partition published, then the marker's PUT fails: the commit
    // fails, and objects being visible does not make the version committed.
    failing.store(true, Ordering::SeqCst);
    let mut writer = sink.open(&file, schema.clone()).await.unwrap();
    writer.write(batch.clone()).await.unwrap();
    let error = writer.commit().await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(error.detail.contains("commit marker"), "{}", error.detail);
    let mut sorted_partition_keys = partition_keys.clone();
    sorted_partition_keys.sort();
    assert_eq!(
        list_objects(&fixture, &destination)
            .await
            .into_keys()
            .collect::<Vec<_>>(),
        sorted_partition_keys,
        "the partitions are visible, the marker is not"
    );
    assert_eq!(
        sink.is_committed(&file).await.unwrap(),
        CommitState::NotCommitted
    );

    // The redelivery commits whole: the marker names every object.
    failing.store(false, Ordering::SeqCst);
    let mut writer = sink.open(&file, schema.clone()).await.unwrap();
    writer.write(batch).await.unwrap();
    let receipt = writer.commit().await.unwrap();
    assert_eq!(receipt.rows, 4);
    assert_eq!(
        sink.is_committed(&file).await.unwrap(),
        CommitState::Committed
    );
    let body = read_marker(&fixture, &destination, &marker).await;
    assert_eq!(
        body.objects
            .iter()
            .map(|object| (object.key.clone(), object.rows))
            .collect::<Vec<_>>(),
        partition_keys
            .iter()
            .cloned()
            .zip([2, 1, 1])
            .collect::<Vec<_>>(),
        "in the order they were published"
    );
    assert_eq!(body.rows, 4);
    assert_eq!(body.source.version_id.as_deref(), Some("v1"));
    assert_eq!(body.source.version_identity, "v1");
    assert_eq!(body.source.size, 42);
    assert!(body.committed_at <= chrono::Utc::now());
    let head = fixture
        .clients
        .s3
        .head_object()
        .bucket(&destination)
        .key(&marker)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("application/json"));

    // Only bucket, key and version identity are asked about.
    let asked = Lineage {
        size: 0,
        event_time: Some(chrono::Utc::now()),
        route: String::new(),
        etag: None,
        ..file.clone()
    };
    assert_eq!(
        sink.is_committed(&asked).await.unwrap(),
        CommitState::Committed
    );
    let other_version = Lineage {
        version_id: Some("v2".into()),
        ..file.clone()
    };
    assert_eq!(
        sink.is_committed(&other_version).await.unwrap(),
        CommitState::NotCommitted
    );
    // A sink with another prefix has its own markers.
    let elsewhere: S3ParquetSinkConfig =
        toml::from_str(&format!("bucket = \"{destination}\"\nprefix = \"other\"")).unwrap();
    let elsewhere = S3ParquetSink::new(
        "other",
        &elsewhere,
        &SinkContext {
            s3: s3.clone(),
            expected_bucket_owner: None,
            aws: Default::default(),
            add_columns_routes: Default::default(),
        },
    )
    .unwrap();
    assert_eq!(
        elsewhere.is_committed(&file).await.unwrap(),
        CommitState::NotCommitted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_without_rows_under_column_partitions_still_gets_its_marker() {
    let _suite = crate::shared().await;
    let fixture = Fixture::with_options(
        "s3pq-marker0",
        FixtureOptions {
            notifications: false,
            ..FixtureOptions::default()
        },
    )
    .await;
    let destination = destination_name(&fixture);
    create_bucket(&fixture, &destination).await;
    let sink = sink_at(
        &fixture.clients.s3,
        &destination,
        "partition = \"country={column:country}\"",
    );
    let file = lineage(&fixture.bucket, "in/empty.csv", "etag-0", "sales");
    let schema = Arc::new(Schema::new(vec![Field::new(
        "country",
        DataType::Utf8,
        true,
    )]));
    let writer = sink.open(&file, schema).await.unwrap();
    writer.commit().await.unwrap();
    let marker = marker_key("lake/v1", &file);
    assert_eq!(
        list_objects(&fixture, &destination)
            .await
            .into_keys()
            .collect::<Vec<_>>(),
        std::slice::from_ref(&marker),
        "no partition has rows, so no Parquet object; the marker records the version"
    );
    let body = read_marker(&fixture, &destination, &marker).await;
    assert!(body.objects.is_empty());
    assert_eq!(body.rows, 0);
    assert_eq!(
        sink.is_committed(&file).await.unwrap(),
        CommitState::Committed
    );
}
