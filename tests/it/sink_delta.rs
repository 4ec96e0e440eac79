//! The `delta` sink on LocalStack's S3: the conditional write its commit
//! protocol rests on, a worker landing files once through duplicate
//! deliveries, concurrent writers, a crash loop, a drifted file, small-file
//! groups, and the table read back by another engine (delta-rs' Python
//! binding with pyarrow, `tests/services/read-delta.py`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use deltalake::DeltaTableBuilder;
use deltalake::logstore::object_store::ObjectStoreExt;
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::RngExt;
use s3_ingest::config::AwsConfig;
use s3_ingest::error::ErrorKind;
use s3_ingest::sink::delta::{DeltaSink, DeltaSinkConfig, storage_options};
use s3_ingest::sink::{CommitState, Sink, SinkContext};

use crate::util::*;

/// Where the fixture's table is: a bucket of its own.
pub(crate) async fn create_lake(fixture: &Fixture) -> String {
    let bucket = format!("{}-lake", fixture.bucket);
    fixture
        .clients
        .s3
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    format!("s3://{bucket}/tables/sales")
}

pub(crate) fn aws() -> AwsConfig {
    AwsConfig {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint()),
        force_path_style: true,
        expected_bucket_owner: None,
    }
}

/// A config routing every key to a `delta` sink named `table` at `table`.
/// Each row gets the key it came from (`source_key`), so tests can count
/// rows per object.
fn delta_config(fixture: &Fixture, table: &str, routes: Option<&str>) -> s3_ingest::config::Config {
    let routes = routes.unwrap_or(
        r#"
        [[routes]]
        name = "sales"
        key_glob = "**"
        sink = "table"
        "#,
    );
    let sinks = format!(
        r#"
        [sinks.table]
        type = "delta"
        table = "{table}"
        key_columns = {{ source_key = '^(.*)$' }}
        "#
    );
    fixture.config_with_sinks(Some(routes), "", &sinks)
}

/// What a reader of the table sees through delta-rs (Rust).
pub(crate) struct Table {
    pub(crate) version: u64,
    pub(crate) rows_by_key: BTreeMap<String, usize>,
    pub(crate) rows: usize,
    /// Every file's rows, file by file.
    pub(crate) batches: Vec<RecordBatch>,
    pub(crate) commit_infos: Vec<serde_json::Value>,
}

/// The table at `table` (`s3://…`) on LocalStack, `None` before it exists.
pub(crate) async fn read_table(table: &str) -> Option<Table> {
    let url = url::Url::parse(&format!("{table}/")).unwrap();
    let mut delta = DeltaTableBuilder::from_url(url)
        .unwrap()
        .with_storage_options(storage_options(&aws()))
        .build()
        .unwrap();
    match delta.load().await {
        Ok(()) => {}
        Err(deltalake::DeltaTableError::NotATable(_)) => return None,
        Err(err) => panic!("cannot load {table}: {err}"),
    }
    let store = delta.object_store();
    let mut rows_by_key = BTreeMap::new();
    let mut rows = 0;
    let mut batches = Vec::new();
    let views: Vec<_> = delta.snapshot().unwrap().log_data().iter().collect();
    for view in views {
        let bytes: Bytes = store
            .get(&view.object_store_path())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            rows += batch.num_rows();
            if let Some(keys) = batch.column_by_name("source_key") {
                let keys = keys.as_any().downcast_ref::<StringArray>().unwrap();
                for key in keys.iter() {
                    *rows_by_key.entry(key.unwrap_or("").to_owned()).or_default() += 1;
                }
            }
            batches.push(batch);
        }
    }
    let commit_infos = delta
        .history(None)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|info| serde_json::to_value(info).unwrap())
        .collect();
    Some(Table {
        version: delta.version().unwrap(),
        rows_by_key,
        rows,
        batches,
        commit_infos,
    })
}

/// What delta-rs' Python binding reads (see tests/services/read-delta.py).
fn read_with_python(table: &str) -> serde_json::Value {
    let venv = std::env::var("S3I_DELTA_READER_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/s3-ingest/delta-reader-venv",
            std::env::var("HOME").unwrap()
        )
    });
    let python = format!("{venv}/bin/python");
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} is missing: `make test` installs it (tests/services/need-delta-reader.sh)"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/services/read-delta.py");
    let output = std::process::Command::new(&python)
        .args([script, table, &endpoint()])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe_output(&output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "read-delta.py printed no JSON ({err}): {}",
            describe_output(&output)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localstack_refuses_a_second_conditional_put_of_the_same_key() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("delta-ifnone").await;
    let put = || {
        fixture
            .clients
            .s3
            .put_object()
            .bucket(&fixture.bucket)
            .key("_delta_log/00000000000000000001.json")
            .if_none_match("*")
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"{}"))
            .send()
    };
    put().await.expect("the first conditional PUT is accepted");
    let err = put()
        .await
        .expect_err("a second conditional PUT must be refused");
    let status = err
        .raw_response()
        .map(|response| response.status().as_u16());
    assert_eq!(
        status,
        Some(412),
        "{}",
        aws_sdk_s3::error::DisplayErrorContext(&err)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_land_once_through_duplicate_deliveries_and_another_engine_reads_them() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("delta-e2e").await;
    let table = create_lake(&fixture).await;
    let worker = fixture.start_worker(delta_config(&fixture, &table, None));
    let mut expected = BTreeMap::new();
    let mut etags = BTreeMap::new();
    for n in 0..5 {
        let key = format!("vendor/day {n}.csv");
        etags.insert(key.clone(), fixture.put(&key, csv_rows(100 + n)).await);
        expected.insert(key, 100 + n);
    }
    // The same events again: S3 delivers at least once.
    for key in ["vendor/day 0.csv", "vendor/day 3.csv"] {
        let event = s3_event(&fixture.bucket, &[(key, &etags[key], 1)]);
        fixture.send_raw(&event.to_string()).await;
    }
    let total: usize = expected.values().sum();
    wait_until("every file in the table", WAIT, || async {
        read_table(&table).await.is_some_and(|t| t.rows >= total)
    })
    .await;
    fixture.wait_for_empty_queue().await;
    let seen = read_table(&table).await.unwrap();
    assert_eq!(seen.rows_by_key, expected, "each file's rows exactly once");
    assert_eq!(seen.version, 5, "the create, then one commit per file");
    // Every commit names its object in the commit info.
    let mut sources: Vec<String> = seen
        .commit_infos
        .iter()
        .flat_map(|info| {
            info["s3_ingest"]["sources"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|source| source["key"].as_str().unwrap().to_owned())
        .collect();
    sources.sort();
    assert_eq!(sources, expected.keys().cloned().collect::<Vec<_>>());
    assert!(fixture.take_dead_letters().await.is_empty());

    // Another engine sees exactly the committed rows and the lineage.
    let python = read_with_python(&table);
    assert_eq!(python["version"], 5);
    assert_eq!(python["rows"], total);
    let ids = python["ids"].as_array().unwrap();
    assert_eq!(ids.len(), total);
    assert_eq!(python["sources"].as_array().unwrap().len(), 5);
    let columns: Vec<&str> = python["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(columns, ["id", "name", "price", "source_key"]);
    worker.stop().await;
}

fn id_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]))
}

fn sink(table: &str) -> DeltaSink {
    let config: DeltaSinkConfig = toml::from_str(&format!("table = \"{table}\"")).unwrap();
    let context = SinkContext {
        s3: clients().s3,
        expected_bucket_owner: None,
        aws: aws(),
        add_columns_routes: Default::default(),
    };
    DeltaSink::new("table", &config, &context).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_s3_commit_every_object_exactly_once() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("delta-race").await;
    let table = create_lake(&fixture).await;
    // Four workers, each with its own view of the table; every object is
    // delivered to two of them at once.
    let workers: Vec<Arc<DeltaSink>> = (0..4).map(|_| Arc::new(sink(&table))).collect();
    let objects = 12usize;
    let mut tasks = tokio::task::JoinSet::new();
    for delivery in 0..2 {
        for n in 0..objects {
            let worker = workers[(n + delivery) % workers.len()].clone();
            tasks.spawn(async move {
                let object = lineage("vendor", &format!("in/{n:02}.csv"), "1", "sales");
                let ids = Int64Array::from_iter_values((0..10).map(|i| (n * 100 + i) as i64));
                let batch = RecordBatch::try_new(id_schema(), vec![Arc::new(ids)]).unwrap();
                let mut writer = worker.open(&object, id_schema()).await.unwrap();
                writer.write(batch).await.unwrap();
                writer.commit().await.unwrap()
            });
        }
    }
    let mut new_commits = 0;
    while let Some(receipt) = tasks.join_next().await {
        if !receipt.unwrap().already_committed {
            new_commits += 1;
        }
    }
    assert_eq!(new_commits, objects, "one new commit per object");
    let seen = read_table(&table).await.unwrap();
    assert_eq!(
        seen.version, objects as u64,
        "no lost and no doubled commit"
    );
    assert_eq!(seen.rows, objects * 10);
    for n in 0..objects {
        let object = lineage("vendor", &format!("in/{n:02}.csv"), "1", "sales");
        assert_eq!(
            workers[3].is_committed(&object).await.unwrap(),
            CommitState::Committed
        );
    }
    let python = read_with_python(&table);
    assert_eq!(python["rows"], objects * 10);
    let mut ids: Vec<i64> = python["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), objects * 10, "no row twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_drifts_from_the_table_is_dead_lettered_as_a_schema_error() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("delta-drift").await;
    let table = create_lake(&fixture).await;
    let worker = fixture.start_worker(delta_config(&fixture, &table, None));
    fixture.put("vendor/first.csv", csv_rows(10)).await;
    wait_until("the first file in the table", WAIT, || async {
        read_table(&table).await.is_some_and(|t| t.rows == 10)
    })
    .await;
    fixture
        .put("vendor/drifted.csv", "id,name,discount\n1,a,0.5\n")
        .await;
    let dead = fixture.wait_for_dead_letters(1).await;
    assert_eq!(dead[0].key.as_deref(), Some("vendor/drifted.csv"));
    assert_eq!(dead[0].error_kind, ErrorKind::SchemaError);
    assert!(
        dead[0].error.contains("columns not in the table: discount"),
        "{}",
        dead[0].error
    );
    assert!(
        dead[0].error.contains("missing from the file: price"),
        "{}",
        dead[0].error
    );
    fixture.wait_for_empty_queue().await;
    assert_eq!(read_table(&table).await.unwrap().rows, 10);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_in_a_group_land_in_one_commit_each_once() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("delta-group").await;
    let table = create_lake(&fixture).await;
    let routes = r#"
        [[routes]]
        name = "small"
        key_glob = "in/**"
        sink = "table"
        group = { max_age_secs = 2 }
    "#;
    let worker = fixture.start_worker(delta_config(&fixture, &table, Some(routes)));
    let objects = 30;
    fixture
        .put_many(
            (0..objects)
                .map(|n| (format!("in/s-{n:03}.csv"), csv_rows(5 + n % 4).into_bytes()))
                .collect(),
        )
        .await;
    let total: usize = (0..objects).map(|n| 5 + n % 4).sum();
    wait_until("every small file in the table", WAIT, || async {
        read_table(&table).await.is_some_and(|t| t.rows >= total)
    })
    .await;
    fixture.wait_for_empty_queue().await;
    let seen = read_table(&table).await.unwrap();
    assert_eq!(seen.rows, total);
    assert_eq!(seen.rows_by_key.len(), objects);
    assert!(
        (seen.version as usize) < objects,
        "{objects} files in {} commits: grouped",
        seen.version
    );
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_into_a_delta_table_loses_and_doubles_nothing() {
    let _suite = crate::alone().await;
    let fixture = Fixture::new("delta-crash").await;
    let table = create_lake(&fixture).await;
    let mut config = delta_config(&fixture, &table, None);
    // Short, so work a killed worker held comes back quickly.
    config.queue.visibility_timeout_secs = 4;
    config.worker.max_lease_secs = 600;
    let log = fixture.output_dir().join("worker.log");
    let mut rng = rand::rng();
    let files = 60;
    let rounds = 10;
    let per_round = files / rounds;
    let mut expected = BTreeMap::new();
    for round in 0..rounds {
        let child = fixture.spawn_worker_process(&config, &log);
        let objects: Vec<(String, Vec<u8>)> = (0..per_round)
            .map(|i| {
                let n = round * per_round + i;
                (
                    format!("in/file-{n:03}.csv"),
                    csv_rows(20 + n % 30).into_bytes(),
                )
            })
            .collect();
        for (key, body) in &objects {
            expected.insert(key.clone(), csv_rows_count(body));
        }
        fixture.put_many(objects).await;
        // Kill at a random moment: while decoding, writing files, or
        // committing.
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..2500))).await;
        signal(&child, "-KILL");
        wait_for_exit(child).await;
    }
    let child = fixture.spawn_worker_process(&config, &log);
    let total: usize = expected.values().sum();
    wait_until(
        "every file in the table and the queue empty",
        Duration::from_secs(240),
        || async {
            read_table(&table).await.is_some_and(|t| t.rows >= total)
                && fixture.queue_is_empty().await
        },
    )
    .await;
    let seen = read_table(&table).await.unwrap();
    assert_eq!(seen.rows_by_key, expected, "each file's rows exactly once");
    assert_eq!(read_with_python(&table)["rows"], total);
    assert!(fixture.take_dead_letters().await.is_empty());
    signal(&child, "-TERM");
    assert_eq!(wait_for_exit(child).await.code(), Some(0));
}

fn csv_rows_count(body: &[u8]) -> usize {
    body.iter().filter(|&&b| b == b'\n').count() - 1
}

/// Routes with contracts into Delta tables on S3: `add_columns` evolves
/// the table's schema (another engine reads the new column), bad rows go
/// to a quarantine table, `rescue` keeps what does not fit in `_rescued`,
/// and each file's outcome is in its commit's info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contracts_evolve_the_table_quarantine_bad_rows_and_rescue_values() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("delta-contract").await;
    let table = create_lake(&fixture).await;
    let bad_table = format!("{table}_bad");
    let rescued_table = format!("{table}_rescued");
    let schema = r#"schema = [
        { name = "id", type = "int64", nullable = false },
        { name = "country", type = "string" },
    ]"#;
    let routes = format!(
        r#"
        [[routes]]
        name = "evolving"
        key_glob = "evolving/**"
        sink = "table"
        {schema}
        [routes.contract]
        schema_mode = "add_columns"
        bad_rows = "quarantine"
        quarantine_sink = "bad"
        checks = [{{ column = "country", one_of = ["fr", "de"] }}]

        [[routes]]
        name = "rescuing"
        key_glob = "rescuing/**"
        sink = "rescued"
        {schema}
        [routes.contract]
        schema_mode = "rescue"
        "#
    );
    let sinks = format!(
        r#"
        [sinks.table]
        type = "delta"
        table = "{table}"
        key_columns = {{ source_key = '^(.*)$' }}

        [sinks.bad]
        type = "delta"
        table = "{bad_table}"

        [sinks.rescued]
        type = "delta"
        table = "{rescued_table}"
        "#
    );
    let config = fixture.config_with_sinks(Some(&routes), "", &sinks);
    let worker = fixture.start_worker(config);
    fixture
        .put("evolving/1.csv", "id,country\n1,fr\n2,xx\n")
        .await;
    wait_until("the first file committed", WAIT, || async {
        read_table(&table).await.is_some_and(|t| t.rows == 1)
    })
    .await;
    fixture
        .put("evolving/2.csv", "id,country,discount\n3,de,5\n")
        .await;
    wait_until("the second file committed", WAIT, || async {
        read_table(&table).await.is_some_and(|t| t.rows == 2)
    })
    .await;
    fixture.put("evolving/3.csv", "id\n4\n").await;
    fixture
        .put("rescuing/1.csv", "id,country,colour\n1,fr,red\n2,de,\n")
        .await;
    wait_until("every file in", WAIT, || async {
        read_table(&table).await.is_some_and(|t| t.rows == 3)
            && read_table(&rescued_table)
                .await
                .is_some_and(|t| t.rows == 2)
    })
    .await;
    fixture.wait_for_empty_queue().await;

    let python = read_with_python(&table);
    assert_eq!(python["ids"], serde_json::json!([1, 3, 4]));
    assert_eq!(
        python["columns"],
        serde_json::json!(["id", "country", "source_key", "discount"])
    );
    let outcome_of = |sources: &serde_json::Value, key: &str| {
        sources
            .as_array()
            .unwrap()
            .iter()
            .find(|source| source["key"] == key)
            .unwrap_or_else(|| panic!("no source {key} in {sources}"))["contract"]
            .clone()
    };
    let first = outcome_of(&python["sources"], "evolving/1.csv");
    assert_eq!(first["verdict"], "quarantined");
    assert_eq!(first["quarantined_rows"], 1);
    let second = outcome_of(&python["sources"], "evolving/2.csv");
    assert_eq!(second["columns_added"], serde_json::json!(["discount"]));
    let third = outcome_of(&python["sources"], "evolving/3.csv");
    assert_eq!(third["columns_missing"], serde_json::json!(["country"]));

    let quarantined = read_with_python(&bad_table);
    assert_eq!(quarantined["rows"], 1);
    assert_eq!(
        quarantined["columns"],
        serde_json::json!(["source_row", "reason", "record"])
    );

    let rescued = read_with_python(&rescued_table);
    assert_eq!(rescued["rows"], 2);
    assert_eq!(
        rescued["columns"],
        serde_json::json!(["id", "country", "_rescued"])
    );
    let outcome = outcome_of(&rescued["sources"], "rescuing/1.csv");
    assert_eq!(outcome["rescued_rows"], 1);
    assert_eq!(outcome["columns_rescued"], serde_json::json!(["colour"]));
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}
