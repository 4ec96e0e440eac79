//! End-to-end tests against LocalStack: real S3 and SQS through the SDK,
//! the worker in-process, assertions on sink files and queue state.

use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use s3_ingest::text;

use crate::util;
use crate::util::*;

fn parquet_bytes(rows: i64, row_group_rows: usize) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group_rows))
        .build();
    let mut buffer = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut buffer, schema.clone(), Some(props)).unwrap();
    let ids: Vec<i64> = (0..rows).collect();
    let names: Vec<String> = ids.iter().map(|i| format!("n{i}")).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(names)),
        ],
    )
    .unwrap();
    writer.write(&batch).unwrap();
    let metadata = writer.close().unwrap();
    assert!(metadata.num_row_groups() > 1 || row_group_rows as i64 >= rows);
    buffer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_file_lands_in_the_sink_with_lineage_and_the_message_is_deleted() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("csv").await;
    let worker = fixture.start_worker(fixture.config(None));
    let etag = fixture.put("vendor/orders.csv", csv_rows(1000)).await;

    fixture.wait_for_files_and_empty_queue(1).await;
    let file = sink_file_for(&fixture.sink_files(), "vendor/orders.csv");
    assert_eq!(file.rows, 1000);
    assert_eq!(file.metadata["s3_ingest.source_bucket"], fixture.bucket);
    assert_eq!(file.metadata["s3_ingest.source_etag"], etag);
    assert!(!file.metadata.contains_key("s3_ingest.source_version_id"));
    let schema = file.batches[0].schema();
    assert_eq!(schema.field(0).data_type(), &DataType::Int64);
    assert_eq!(schema.field(2).data_type(), &DataType::Float64);
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_with_several_members_and_zstd_csv_are_decompressed() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("compressed").await;
    let worker = fixture.start_worker(fixture.config(None));
    // Two gzip members concatenated, as `cat a.gz b.gz` makes.
    let mut two_members = gzip(csv_rows(300).as_bytes());
    two_members.extend(gzip(b"300,last,1.5\n"));
    fixture.put("in/a.csv.gz", two_members).await;
    fixture
        .put(
            "in/b.csv.zst",
            zstd::encode_all(csv_rows(500).as_bytes(), 3).unwrap(),
        )
        .await;

    fixture.wait_for_files_and_empty_queue(2).await;
    let files = fixture.sink_files();
    assert_eq!(sink_file_for(&files, "in/a.csv.gz").rows, 301);
    assert_eq!(sink_file_for(&files, "in/b.csv.zst").rows, 500);
    worker.stop().await;
}

/// A file with `columns` int64 columns of `rows` rows, in row groups of
/// 100 rows: its footer (one entry per column chunk) grows with both.
fn wide_parquet_bytes(columns: usize, rows: i64) -> Vec<u8> {
    let fields: Vec<Field> = (0..columns)
        .map(|c| Field::new(format!("column_{c:04}"), DataType::Int64, false))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let arrays: Vec<arrow::array::ArrayRef> = (0..columns)
        .map(|c| {
            Arc::new(Int64Array::from_iter_values(
                (0..rows).map(|r| r * c as i64),
            )) as arrow::array::ArrayRef
        })
        .collect();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(100))
        .build();
    let mut buffer = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut buffer, schema.clone(), Some(props)).unwrap();
    writer
        .write(&RecordBatch::try_new(schema, arrays).unwrap())
        .unwrap();
    writer.close().unwrap();
    buffer
}

/// The worker opens a Parquet object by reading its last 64 KiB; these
/// files need reads beyond that: row groups before the tail, and a footer
/// larger than the tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_with_several_row_groups_is_read_whole() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("parquet").await;
    let worker = fixture.start_worker(fixture.config(None));
    let long = parquet_bytes(300_000, 30_000);
    assert!(long.len() > 4 * 64 * 1024, "{} bytes", long.len());
    fixture.put("in/data.parquet", long).await;
    let wide = wide_parquet_bytes(300, 500);
    let footer_len = u32::from_le_bytes(wide[wide.len() - 8..wide.len() - 4].try_into().unwrap());
    assert!(footer_len > 64 * 1024, "footer of {footer_len} bytes");
    fixture.put("in/wide.parquet", wide).await;
    fixture.put("in/small.parquet", parquet_bytes(10, 10)).await;

    fixture.wait_for_files_and_empty_queue(3).await;
    let files = fixture.sink_files();
    let long = sink_file_for(&files, "in/data.parquet");
    assert_eq!(long.rows, 300_000);
    assert_eq!(int64_column(&long, 0), (0..300_000).collect::<Vec<_>>());
    let wide = sink_file_for(&files, "in/wide.parquet");
    assert_eq!(wide.rows, 500);
    assert_eq!(wide.batches[0].num_columns(), 300);
    assert_eq!(
        int64_column(&wide, 299),
        (0..500).map(|r| r * 299).collect::<Vec<_>>()
    );
    let small = sink_file_for(&files, "in/small.parquet");
    assert_eq!(int64_column(&small, 0), (0..10).collect::<Vec<_>>());
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_spaces_plus_and_non_ascii_are_decoded() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("keys").await;
    let worker = fixture.start_worker(fixture.config(None));
    let keys = ["in/a b.csv", "in/a+b.csv", "in/café ü.csv"];
    for key in keys {
        fixture.put(key, csv_rows(3)).await;
    }
    fixture.wait_for_files_and_empty_queue(3).await;
    let files = fixture.sink_files();
    for key in keys {
        assert_eq!(sink_file_for(&files, key).rows, 3, "{key}");
    }
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_with_several_records_ingests_each_object() {
    let _suite = crate::shared().await;
    let fixture = Fixture::with_options(
        "records",
        FixtureOptions {
            notifications: false,
            ..Default::default()
        },
    )
    .await;
    let etag_a = fixture.put("x/a b.csv", csv_rows(2)).await;
    let etag_b = fixture.put("x/b+c.csv", csv_rows(4)).await;
    let body = s3_event(
        &fixture.bucket,
        &[("x/a b.csv", &etag_a, 0), ("x/b+c.csv", &etag_b, 0)],
    );
    fixture.send_raw(&body.to_string()).await;

    let worker = fixture.start_worker(fixture.config(None));
    fixture.wait_for_files_and_empty_queue(2).await;
    let files = fixture.sink_files();
    assert_eq!(sink_file_for(&files, "x/a b.csv").rows, 2);
    assert_eq!(sink_file_for(&files, "x/b+c.csv").rows, 4);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_wrapped_and_eventbridge_messages_are_understood() {
    let _suite = crate::shared().await;
    let fixture = Fixture::with_options(
        "shapes",
        FixtureOptions {
            notifications: false,
            ..Default::default()
        },
    )
    .await;
    let etag_sns = fixture.put("sns/one.csv", csv_rows(5)).await;
    let etag_raw = fixture.put("sns/raw.csv", csv_rows(6)).await;
    let etag_eb = fixture.put("eb/two.csv", csv_rows(7)).await;

    let inner = s3_event(&fixture.bucket, &[("sns/one.csv", &etag_sns, 0)]);
    let sns = serde_json::json!({
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-east-1:000000000000:vendor-drops",
        "Subject": "Amazon S3 Notification",
        "Message": inner.to_string(),
        "Timestamp": "2026-11-27T12:00:00.000Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLE",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/cert.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe"
    });
    fixture.send_raw(&sns.to_string()).await;
    // SNS raw message delivery: the S3 event itself.
    fixture
        .send_raw(&s3_event(&fixture.bucket, &[("sns/raw.csv", &etag_raw, 0)]).to_string())
        .await;
    let eventbridge = serde_json::json!({
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "000000000000",
        "time": "2026-11-27T12:00:00Z",
        "region": "us-east-1",
        "resources": [format!("arn:aws:s3:::{}", fixture.bucket)],
        "detail": {
            "version": "0",
            "bucket": {"name": fixture.bucket},
            "object": {"key": "eb/two.csv", "size": 0, "etag": etag_eb, "sequencer": "00617F08299329D189"},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "reason": "PutObject"
        }
    });
    fixture.send_raw(&eventbridge.to_string()).await;

    let worker = fixture.start_worker(fixture.config(None));
    fixture.wait_for_files_and_empty_queue(3).await;
    let files = fixture.sink_files();
    assert_eq!(sink_file_for(&files, "sns/one.csv").rows, 5);
    assert_eq!(sink_file_for(&files, "sns/raw.csv").rows, 6);
    assert_eq!(sink_file_for(&files, "eb/two.csv").rows, 7);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_event_removed_event_and_unmatched_key_are_deleted_without_output() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("discard").await;
    let routes = r#"
        [[routes]]
        name = "only-csv-under-in"
        key_glob = "in/*.csv"
        sink = "lake"
    "#;
    // LocalStack already queued an s3:TestEvent when the notification was set.
    fixture
        .send_raw(&format!(
            r#"{{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2026-11-27T12:00:00.000Z","Bucket":"{}","RequestId":"X","HostId":"Y"}}"#,
            fixture.bucket
        ))
        .await;
    let mut removed = s3_event(&fixture.bucket, &[("in/gone.csv", "abc", 1)]);
    removed["Records"][0]["eventName"] = "ObjectRemoved:Delete".into();
    fixture.send_raw(&removed.to_string()).await;
    let worker = fixture.start_worker(fixture.config(Some(routes)));
    fixture.put("elsewhere/file.csv", csv_rows(3)).await;
    fixture.put("in/deeper/file.csv", csv_rows(3)).await;

    fixture.wait_for_empty_queue().await;
    // The two unmatched keys' messages are gone: make sure they were processed
    // (not merely not yet delivered) by ingesting one matching file after them.
    fixture.put("in/last.csv", csv_rows(1)).await;
    fixture.wait_for_files_and_empty_queue(1).await;
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_files_go_to_the_dlq_with_their_error_kind() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("poison").await;
    let routes = r#"
        [[routes]]
        name = "typed"
        key_glob = "typed/*.csv"
        sink = "lake"
        schema = [{ name = "id", type = "int64" }, { name = "name", type = "utf8" }]

        [[routes]]
        name = "all"
        key_glob = "**"
        sink = "lake"
    "#;
    let worker = fixture.start_worker(fixture.config(Some(routes)));
    fixture
        .put("typed/bad-row.csv", "id,name\n1,a\n2,b\nthree,c\n")
        .await;
    fixture
        .put("plain/wrong-fields.csv", "a,b\n1,2\n3,4,5\n")
        .await;
    let mut truncated = gzip(csv_rows(5000).as_bytes());
    truncated.truncate(truncated.len() / 2);
    fixture.put("gz/truncated.csv.gz", truncated).await;
    fixture
        .put(
            "pq/corrupt.parquet",
            b"PAR1 this is not parquet PAR1".to_vec(),
        )
        .await;
    fixture.put("pq/empty.parquet", Vec::new()).await;
    fixture.put("other/readme.json", "{}").await;
    fixture.put("good/ok.csv", csv_rows(2)).await;

    let letters = fixture.wait_for_dead_letters(6).await;
    let kind_of = |key: &str| {
        letters
            .iter()
            .find(|l| l.key.as_deref() == Some(key))
            .unwrap_or_else(|| panic!("no dead letter for {key}: {letters:?}"))
    };
    let bad_row = kind_of("typed/bad-row.csv");
    assert_eq!(bad_row.error_kind.as_str(), "csv_error");
    assert!(bad_row.error.contains("rows 1..=3"), "{}", bad_row.error);
    assert!(bad_row.error.contains("three"), "{}", bad_row.error);
    assert_eq!(bad_row.route.as_deref(), Some("typed"));
    assert_eq!(bad_row.bucket.as_deref(), Some(fixture.bucket.as_str()));
    assert!(bad_row.etag.is_some());
    assert!(bad_row.original_message.contains("typed/bad-row.csv"));
    assert_eq!(bad_row.receive_count, 1);
    assert_eq!(
        kind_of("plain/wrong-fields.csv").error_kind.as_str(),
        "csv_error"
    );
    assert_eq!(
        kind_of("gz/truncated.csv.gz").error_kind.as_str(),
        "decompression_error"
    );
    assert_eq!(
        kind_of("pq/corrupt.parquet").error_kind.as_str(),
        "parquet_error"
    );
    let empty = kind_of("pq/empty.parquet");
    assert_eq!(empty.error_kind.as_str(), "parquet_error");
    assert!(empty.error.contains("empty"), "{}", empty.error);
    assert_eq!(
        kind_of("other/readme.json").error_kind.as_str(),
        "unsupported_format"
    );

    // The good file still lands, and every message is gone from the queue.
    fixture.wait_for_files_and_empty_queue(1).await;
    sink_file_for(&fixture.sink_files(), "good/ok.csv");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_changed_and_unparseable_messages_go_to_the_dlq() {
    let _suite = crate::shared().await;
    let fixture = Fixture::with_options(
        "gone",
        FixtureOptions {
            notifications: false,
            ..Default::default()
        },
    )
    .await;
    fixture.put("in/changed.csv", csv_rows(2)).await;
    fixture
        .send_raw(&s3_event(&fixture.bucket, &[("in/never-existed.csv", "0123", 5)]).to_string())
        .await;
    // The notification names an older ETag than the object now has.
    fixture
        .send_raw(
            &s3_event(
                &fixture.bucket,
                &[("in/changed.csv", "00000000000000000000000000000000", 5)],
            )
            .to_string(),
        )
        .await;
    fixture.send_raw("this is not a notification").await;

    let worker = fixture.start_worker(fixture.config(None));
    let letters = fixture.wait_for_dead_letters(3).await;
    let kinds: std::collections::BTreeSet<_> =
        letters.iter().map(|l| l.error_kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["invalid_message", "object_changed", "object_missing"]
            .into_iter()
            .collect()
    );
    let invalid = letters
        .iter()
        .find(|l| l.error_kind.as_str() == "invalid_message")
        .unwrap();
    assert_eq!(invalid.original_message, "this is not a notification");
    assert!(invalid.key.is_none());
    fixture.wait_for_empty_queue().await;
    assert!(fixture.sink_files().is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_object_is_read_at_the_notified_version() {
    let _suite = crate::shared().await;
    let fixture = Fixture::with_options(
        "versions",
        FixtureOptions {
            notifications: false,
            versioned: true,
        },
    )
    .await;
    let first = fixture
        .clients
        .s3
        .put_object()
        .bucket(&fixture.bucket)
        .key("in/v.csv")
        .body(csv_rows(3).into_bytes().into())
        .send()
        .await
        .unwrap();
    // Overwritten before the worker gets to it: the notification still
    // names version 1, which must be what lands.
    fixture.put("in/v.csv", csv_rows(9)).await;
    let mut body = s3_event(
        &fixture.bucket,
        &[("in/v.csv", first.e_tag().unwrap().trim_matches('"'), 0)],
    );
    body["Records"][0]["s3"]["object"]["versionId"] = first.version_id().unwrap().into();
    fixture.send_raw(&body.to_string()).await;

    let worker = fixture.start_worker(fixture.config(None));
    fixture.wait_for_files_and_empty_queue(1).await;
    let file = sink_file_for(&fixture.sink_files(), "in/v.csv");
    assert_eq!(file.rows, 3);
    assert_eq!(
        file.metadata["s3_ingest.source_version_id"],
        first.version_id().unwrap()
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_object_delivered_twice_leaves_one_copy() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("twice").await;
    let worker = fixture.start_worker(fixture.config(None));
    let etag = fixture.put("in/dup.csv", csv_rows(10)).await;
    fixture.wait_for_files_and_empty_queue(1).await;
    // A redelivery of the same version, as SQS's at-least-once allows.
    let body = s3_event(&fixture.bucket, &[("in/dup.csv", &etag, 0)]).to_string();
    fixture.send_raw(&body).await;
    fixture.send_raw(&body).await;
    fixture.wait_for_empty_queue().await;
    let files = fixture.sink_files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(read_sink_file(&files[0]).rows, 10);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_failure_keeps_the_message_until_the_sink_recovers() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("sinkdown").await;
    // The sink directory's parent is a file: every write fails, transiently.
    let blocker = fixture.output_dir().join("blocked");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let routes = r#"
        [[routes]]
        name = "all"
        key_glob = "**"
        sink = "broken"

        [sinks.broken]
        type = "parquet_dir"
        path = "BLOCKER/lake"
    "#
    .replace("BLOCKER", &blocker.display().to_string());
    let config = fixture.config_with(Some(&routes), "");
    let worker = fixture.start_worker(config);
    fixture.put("in/wait.csv", csv_rows(4)).await;

    // The message is received and kept (in flight or visible again), never
    // deleted and never dead-lettered while the sink is down.
    wait_until(
        "message received and failed at least once",
        WAIT,
        || async {
            let (visible, in_flight) = fixture.queue_counts().await;
            visible + in_flight >= 1
        },
    )
    .await;
    let probe_until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::time::Instant::now() < probe_until {
        let (visible, in_flight) = fixture.queue_counts().await;
        assert!(
            visible + in_flight >= 1,
            "message deleted while the sink was down"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(fixture.take_dead_letters().await.is_empty());

    // Repair the sink: the message comes back and lands.
    std::fs::remove_file(&blocker).unwrap();
    wait_until(
        "file landed after sink recovery",
        std::time::Duration::from_secs(90),
        || async {
            let mut files = Vec::new();
            if let Ok(entries) = std::fs::read_dir(blocker.join("lake").join(&fixture.bucket)) {
                files = entries
                    .flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .collect();
            }
            files.len() == 1 && fixture.queue_is_empty().await
        },
    )
    .await;
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_not_deleted_when_the_dlq_send_fails() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("dlqdown").await;
    let worker = fixture.start_worker(fixture.config(None));
    // Once a first file has landed the worker is past its start-up checks;
    // then the DLQ disappears, and dead-lettering fails.
    fixture.put("in/first.csv", csv_rows(1)).await;
    fixture.wait_for_files_and_empty_queue(1).await;
    fixture
        .clients
        .sqs
        .delete_queue()
        .queue_url(&fixture.dlq_url)
        .send()
        .await
        .unwrap();
    fixture.put("in/poison.json", "{}").await;
    wait_until("poison message received", WAIT, || async {
        let (_, in_flight) = fixture.queue_counts().await;
        in_flight >= 1
    })
    .await;
    let probe_until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::time::Instant::now() < probe_until {
        let (visible, in_flight) = fixture.queue_counts().await;
        assert!(
            visible + in_flight >= 1,
            "poison message deleted although the DLQ send failed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    worker.stop().await;
    let (visible, in_flight) = fixture.queue_counts().await;
    assert!(visible + in_flight >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_received_too_often_is_dead_lettered() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("maxrecv").await;
    // An endpoint that answers 500 to everything: a failure that may be
    // the payload's, so each try counts (an outage would not).
    let server = util::http_server::HttpTestServer::start().await;
    server.fail_always(500, "internal error");
    let routes = r#"
        [[routes]]
        name = "all"
        key_glob = "**"
        sink = "broken"
    "#;
    let sinks = format!(
        "[sinks.broken]\ntype = \"http\"\nurl = \"{}\"\nformat = \"ndjson\"\nmax_retries = 0",
        server.url("/insert")
    );
    // A short visibility so the failing message comes back quickly.
    let mut config = fixture.config_with_sinks(Some(routes), "", &sinks);
    config.queue.visibility_timeout_secs = 2;
    config.queue.max_receive_count = 2;
    let worker = fixture.start_worker(config);
    fixture.put("in/stuck.csv", csv_rows(1)).await;

    let letters = fixture.wait_for_dead_letters(1).await;
    assert_eq!(letters[0].error_kind.as_str(), "max_receive_count_exceeded");
    assert_eq!(letters[0].key.as_deref(), Some("in/stuck.csv"));
    assert_eq!(letters[0].receive_count, 3);
    fixture.wait_for_empty_queue().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_header_only_files_commit_zero_rows() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("empty").await;
    let worker = fixture.start_worker(fixture.config(None));
    fixture.put("in/empty.csv", Vec::new()).await;
    fixture.put("in/header-only.csv", "id,name\n").await;
    fixture.wait_for_files_and_empty_queue(2).await;
    let files = fixture.sink_files();
    assert_eq!(sink_file_for(&files, "in/empty.csv").rows, 0);
    assert_eq!(sink_file_for(&files, "in/header-only.csv").rows, 0);
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_no_route_allows_is_dead_lettered_without_fetching() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("stranger").await;
    let routes = r#"
        [[routes]]
        name = "vendor-only"
        bucket = "some-other-vendor-bucket"
        key_glob = "**"
        sink = "lake"
    "#;
    let worker = fixture.start_worker(fixture.config(Some(routes)));
    fixture.put("in/file.csv", csv_rows(2)).await;
    let letters = fixture.wait_for_dead_letters(1).await;
    assert_eq!(letters[0].error_kind.as_str(), "bucket_not_allowed");
    assert_eq!(letters[0].key.as_deref(), Some("in/file.csv"));
    fixture.wait_for_empty_queue().await;
    assert!(fixture.sink_files().is_empty());
    worker.stop().await;
}

/// A 300 KB value in a CSV row that does not fit the schema: arrow-csv
/// quotes the value and the whole row in its error (600 KB of backslashes,
/// twice that escaped as JSON). The envelope used to exceed SQS's limit, so
/// the send failed and the object was downloaded and retried forever. Now
/// it arrives bounded on a DLQ with SQS's classic 256 KiB limit, the
/// message is deleted, and the worker's log lines stay short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_kb_bad_row_is_dead_lettered_with_a_bounded_envelope() {
    let _suite = crate::shared().await;
    const SQS_LIMIT: usize = 256 * 1024;
    let fixture = Fixture::new("huge-row").await;
    // AWS and LocalStack now default to 1 MiB; queues made with the
    // classic limit (or a lower one) keep it.
    fixture
        .clients
        .sqs
        .set_queue_attributes()
        .queue_url(&fixture.dlq_url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize,
            SQS_LIMIT.to_string(),
        )
        .send()
        .await
        .unwrap();
    let routes = r#"
        [[routes]]
        name = "typed"
        key_glob = "**"
        sink = "lake"
        schema = [{ name = "id", type = "int64" }, { name = "note", type = "utf8" }]
    "#;
    let config = fixture.config(Some(routes));
    let log = fixture.output_dir().join("worker.log");
    let mut worker = fixture.spawn_worker_process(&config, &log);
    let value = "\\".repeat(300 * 1024);
    fixture
        .put("in/huge.csv", format!("id,note\n1,fine\n{value},bad\n"))
        .await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let body = loop {
        if let Some(body) = fixture.take_dead_letter_bodies().await.pop() {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no envelope on the DLQ; worker log:\n{}",
            text::excerpt(&std::fs::read_to_string(&log).unwrap_or_default(), 20_000)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(body.len() < SQS_LIMIT, "{} bytes", body.len());
    let letter: s3_ingest::dead_letter::DeadLetter = serde_json::from_str(&body).unwrap();
    assert_eq!(letter.error_kind.as_str(), "csv_error");
    assert_eq!(letter.key.as_deref(), Some("in/huge.csv"));
    assert!(
        letter.error.contains("Error while parsing value"),
        "{}",
        &letter.error[..200]
    );
    assert!(letter.error.ends_with(" more bytes]"), "the cut is marked");
    fixture.wait_for_empty_queue().await;

    // The log line is written after the DLQ accepted the envelope.
    wait_for_log(&log, "dead-lettered").await;
    let _ = worker.kill();
    let _ = worker.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    for line in text.lines() {
        assert!(
            line.len() < 4 * 1024,
            "a log line of {} bytes: {}",
            line.len(),
            text::excerpt(line, 300)
        );
    }
}

/// A fixture whose queue holds only what the test sends (no S3 test event).
async fn quiet_fixture(name: &str) -> Fixture {
    Fixture::with_options(
        name,
        FixtureOptions {
            notifications: false,
            ..Default::default()
        },
    )
    .await
}

/// Puts a small CSV at `key` and sends its ObjectCreated event.
async fn notify(fixture: &Fixture, key: &str) {
    let etag = fixture.put(key, csv_rows(3)).await;
    let body = s3_event(&fixture.bucket, &[(key, &etag, 0)]);
    fixture.send_raw(&body.to_string()).await;
}

/// Hands the one message on the fixture's queue back `times` times the
/// way the worker does (a copy carrying the attempts so far, then delete
/// the original), through SQS itself; returns the last copy's attempts.
async fn hand_back_on_sqs(fixture: &Fixture, times: usize) -> u64 {
    use s3_ingest::queue::Queue;
    let queue = s3_ingest::queue::sqs::SqsQueue::new(
        fixture.clients.sqs.clone(),
        fixture.queue_url.clone(),
    );
    let mut attempts = 0;
    for round in 0..times {
        let deadline = tokio::time::Instant::now() + WAIT;
        let received = loop {
            let received = queue.receive(1, 1, 30).await.unwrap();
            if !received.is_empty() {
                break received;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the message (or its copy) never arrived"
            );
        };
        let message = &received[0];
        if round > 0 {
            assert_eq!(message.receive_count, 1, "every copy starts afresh");
        }
        assert_eq!(message.earlier_attempts, attempts, "the count travels");
        queue
            .requeue(message, message.attempts_before(), 0)
            .await
            .unwrap();
        let failures = queue
            .delete_batch(std::slice::from_ref(&message.receipt_handle))
            .await
            .unwrap();
        assert!(failures.is_empty(), "{failures:?}");
        attempts = message.attempts_before();
    }
    attempts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_handed_back_six_times_on_sqs_still_commits() {
    let _suite = crate::shared().await;
    let fixture = quiet_fixture("handback").await;
    let mut config = fixture.config(None);
    config.queue.max_receive_count = 1;
    notify(&fixture, "in/moved.csv").await;
    // Six shutdowns, receive-ahead waits or deployment pauses: seven
    // receives in all, and none of them a failure.
    assert_eq!(hand_back_on_sqs(&fixture, 6).await, 0);

    let (worker, stats) = fixture.start_worker_with_stats(config).await;
    fixture.wait_for_files_and_empty_queue(1).await;
    assert_eq!(sink_file_for(&fixture.sink_files(), "in/moved.csv").rows, 3);
    assert_eq!(
        stats
            .objects_dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_carried_by_a_copy_still_counts_on_sqs() {
    let _suite = crate::shared().await;
    let fixture = quiet_fixture("handback-count").await;
    let mut config = fixture.config(None);
    config.queue.max_receive_count = 1;
    notify(&fixture, "in/crashed.csv").await;
    // A worker died holding the message (its receive counts), then the
    // next one handed it back: the copy carries that attempt.
    wait_until("the message received and left", WAIT, || async {
        !fixture
            .clients
            .sqs
            .receive_message()
            .queue_url(&fixture.queue_url)
            .visibility_timeout(1)
            .send()
            .await
            .unwrap()
            .messages()
            .is_empty()
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(hand_back_on_sqs(&fixture, 1).await, 1);

    let worker = fixture.start_worker(config);
    let letters = fixture.wait_for_dead_letters(1).await;
    assert_eq!(letters[0].error_kind.as_str(), "max_receive_count_exceeded");
    assert_eq!(letters[0].key.as_deref(), Some("in/crashed.csv"));
    assert_eq!(letters[0].receive_count, 2, "the second attempt");
    worker.stop().await;
}
