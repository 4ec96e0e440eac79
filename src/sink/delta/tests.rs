//! The `delta` sink on a local path: real delta-rs, a real table on disk,
//! read back through the table's log.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use deltalake::DeltaTableBuilder;
use deltalake::logstore::object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;
use crate::sink::SinkFailure;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("country", DataType::Utf8, true),
    ]))
}

fn batch(ids: std::ops::Range<i64>, country: &str) -> RecordBatch {
    let countries: Vec<&str> = ids.clone().map(|_| country).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(ids)),
            Arc::new(StringArray::from(countries)),
        ],
    )
    .unwrap()
}

pub(super) fn lineage(key: &str, etag: &str) -> Lineage {
    Lineage {
        bucket: "vendor".into(),
        key: key.into(),
        version_id: None,
        etag: Some(etag.into()),
        size: 1,
        event_time: None,
        route: "sales".into(),
    }
}

fn config(dir: &std::path::Path, extra: &str) -> DeltaSinkConfig {
    let text = format!(
        "table = {:?}\n{extra}",
        dir.join("table").display().to_string()
    );
    toml::from_str(&text).unwrap()
}

fn sink(config: &DeltaSinkConfig) -> DeltaSink {
    sink_adding_columns_for(config, &[])
}

/// A sink that adds new columns for `routes` (`schema_mode = "add_columns"`).
fn sink_adding_columns_for(config: &DeltaSinkConfig, routes: &[&str]) -> DeltaSink {
    config.validate().unwrap();
    let context = SinkContext {
        s3: aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version_latest()
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .build(),
        ),
        expected_bucket_owner: None,
        aws: Default::default(),
        add_columns_routes: routes.iter().map(|route| route.to_string()).collect(),
    };
    DeltaSink::new("lake", config, &context).unwrap()
}

async fn land(sink: &DeltaSink, lineage: &Lineage, batches: Vec<RecordBatch>) -> CommitReceipt {
    let mut writer = sink.open(lineage, schema()).await.unwrap();
    for batch in batches {
        writer.write(batch).await.unwrap();
    }
    writer.commit().await.unwrap()
}

/// What a reader of the table sees: its version, and every row of every
/// file its log holds, with the file's partition path.
pub(super) struct TableContents {
    pub version: u64,
    pub files: Vec<String>,
    pub batches: Vec<RecordBatch>,
    pub commit_infos: Vec<serde_json::Value>,
}

impl TableContents {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .batches
            .iter()
            .flat_map(|batch| {
                let column = batch.column_by_name("id").unwrap();
                let ids = column.as_any().downcast_ref::<Int64Array>().unwrap();
                ids.values().to_vec()
            })
            .collect();
        ids.sort_unstable();
        ids
    }
}

pub(super) async fn read_table(url: &url::Url, options: HashMap<String, String>) -> TableContents {
    let table = DeltaTableBuilder::from_url(url.clone())
        .unwrap()
        .with_storage_options(options)
        .load()
        .await
        .unwrap();
    let store = table.object_store();
    let mut files = Vec::new();
    let mut batches = Vec::new();
    let views: Vec<_> = table.snapshot().unwrap().log_data().iter().collect();
    for view in views {
        files.push(view.path().to_string());
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
        batches.extend(reader.map(Result::unwrap));
    }
    let commit_infos = table
        .history(None)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|info| serde_json::to_value(info).unwrap())
        .collect();
    TableContents {
        version: table.version().unwrap(),
        files,
        batches,
        commit_infos,
    }
}

#[tokio::test]
async fn an_object_lands_once_and_its_redelivery_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&config(dir.path(), ""));
    let object = lineage("in/a.csv", "etag-1");
    assert_eq!(
        sink.is_committed(&object).await.unwrap(),
        CommitState::NotCommitted
    );

    let receipt = land(
        &sink,
        &object,
        vec![batch(0..100, "fr"), batch(100..150, "de")],
    )
    .await;
    assert!(!receipt.already_committed);
    assert_eq!(receipt.rows, 150);
    assert!(
        receipt.location.ends_with("version 1"),
        "{}",
        receipt.location
    );
    assert_eq!(
        sink.is_committed(&object).await.unwrap(),
        CommitState::Committed
    );

    let again = land(&sink, &object, vec![batch(0..100, "fr")]).await;
    assert!(again.already_committed);
    // A new version of the same key is another object version.
    let overwritten = lineage("in/a.csv", "etag-2");
    assert_eq!(
        sink.is_committed(&overwritten).await.unwrap(),
        CommitState::NotCommitted
    );
    land(&sink, &overwritten, vec![batch(1000..1010, "fr")]).await;

    let contents = read_table(sink.table_url(), HashMap::new()).await;
    assert_eq!(
        contents.version, 2,
        "create, then one commit per object version"
    );
    assert_eq!(contents.rows(), 160);
    // The commit info names the object, its route and its rows.
    let info = contents
        .commit_infos
        .iter()
        .find(|info| info["s3_ingest"]["sources"][0]["etag"] == "etag-1")
        .expect("the first object's commit info");
    assert_eq!(info["s3_ingest"]["route"], "sales");
    assert_eq!(info["s3_ingest"]["sources"][0]["key"], "in/a.csv");
    assert_eq!(info["s3_ingest"]["sources"][0]["rows"], 150);

    let details = sink.commit_details(&object).await.unwrap().unwrap();
    assert_eq!(details.rows, Some(150));
    assert!(
        details.location.ends_with("version 1"),
        "{}",
        details.location
    );
    assert!(details.committed_at.is_some());
    assert_eq!(
        sink.commit_details(&lineage("in/none.csv", "x"))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_dropped_writer_leaves_the_table_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&config(dir.path(), ""));
    land(
        &sink,
        &lineage("in/first.csv", "1"),
        vec![batch(0..10, "fr")],
    )
    .await;
    let object = lineage("in/b.csv", "1");
    let mut writer = sink.open(&object, schema()).await.unwrap();
    writer.write(batch(0..1000, "fr")).await.unwrap();
    drop(writer);
    assert_eq!(
        sink.is_committed(&object).await.unwrap(),
        CommitState::NotCommitted
    );
    let contents = read_table(sink.table_url(), HashMap::new()).await;
    assert_eq!(contents.rows(), 10);
}

#[tokio::test]
async fn concurrent_workers_commit_every_object_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    // Four workers, each its own sink (its own cached table), every object
    // delivered twice to different workers at once.
    let workers: Vec<Arc<DeltaSink>> = (0..4).map(|_| Arc::new(sink(&config))).collect();
    let objects = 12;
    let mut tasks = tokio::task::JoinSet::new();
    for delivery in 0..2 {
        for n in 0..objects {
            let worker = workers[(n + delivery) % workers.len()].clone();
            tasks.spawn(async move {
                let object = lineage(&format!("in/{n:02}.csv"), "1");
                let start = n as i64 * 100;
                land(
                    &worker,
                    &object,
                    vec![batch(start..start + 10 + n as i64, "fr")],
                )
                .await
            });
        }
    }
    let mut new_commits = 0;
    while let Some(receipt) = tasks.join_next().await {
        if !receipt.unwrap().already_committed {
            new_commits += 1;
        }
    }
    assert_eq!(new_commits, objects);
    let contents = read_table(workers[0].table_url(), HashMap::new()).await;
    assert_eq!(
        contents.version, objects as u64,
        "one commit per object after the create"
    );
    let expected: usize = (0..objects).map(|n| 10 + n).sum();
    assert_eq!(contents.rows(), expected, "no object lost or doubled");
    let mut ids = contents.ids();
    ids.dedup();
    assert_eq!(ids.len(), expected);
}

#[tokio::test]
async fn a_file_whose_columns_differ_from_the_table_is_a_schema_error_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&config(dir.path(), ""));
    land(
        &sink,
        &lineage("in/first.csv", "1"),
        vec![batch(0..10, "fr")],
    )
    .await;
    let drifted = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, true),
    ]));
    let err = match sink.open(&lineage("in/drift.csv", "1"), drifted).await {
        Ok(_) => panic!("a drifted file was accepted"),
        Err(err) => err,
    };
    assert_eq!(err.class, SinkFailure::Schema);
    assert!(
        err.detail.contains("columns not in the table: region"),
        "{}",
        err.detail
    );
    assert!(
        err.detail.contains("missing from the file: country"),
        "{}",
        err.detail
    );
    assert!(
        err.detail.contains("id (table long, file string)"),
        "{}",
        err.detail
    );
}

#[tokio::test]
async fn partitions_come_from_columns_and_from_the_key_hive_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&config(
        dir.path(),
        r#"
        partition_by = ["dt", "country"]
        key_columns = { dt = 'dt=([^/]+)/' }
        "#,
    ));
    land(
        &sink,
        &lineage("vendor/dt=2026-12-01/part-0.csv", "1"),
        vec![batch(0..5, "fr"), batch(5..7, "a/b c")],
    )
    .await;
    land(
        &sink,
        &lineage("vendor/undated/part-1.csv", "1"),
        vec![batch(7..9, "fr")],
    )
    .await;

    let contents = read_table(sink.table_url(), HashMap::new()).await;
    assert_eq!(contents.rows(), 9);
    let mut files = contents.files.clone();
    files.sort();
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("dt=2026-12-01/country=fr/")),
        "{files:?}"
    );
    // A `/` in a value is escaped, never another directory level.
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("dt=2026-12-01/country=a%2Fb%20c/")),
        "{files:?}"
    );
    // A key without a date has a null partition value.
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("dt=__HIVE_DEFAULT_PARTITION__/country=fr/")),
        "{files:?}"
    );
    // The values round-trip through the log, as readers see them.
    let table = DeltaTableBuilder::from_url(sink.table_url().clone())
        .unwrap()
        .load()
        .await
        .unwrap();
    let mut values: Vec<String> = table
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|view| format!("{:?}", view.partition_values()))
        .collect();
    values.sort();
    assert!(values.iter().any(|v| v.contains("a/b c")), "{values:?}");
}

#[tokio::test]
async fn a_group_commits_its_objects_in_one_version_and_skips_those_in_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&config(dir.path(), ""));
    let landed = lineage("in/landed.csv", "1");
    land(&sink, &landed, vec![batch(0..3, "fr")]).await;

    let mut group = sink.open_group("vendor", "sales", schema()).await.unwrap();
    let member = |key: &str, ids: std::ops::Range<i64>| GroupMember {
        lineage: lineage(key, "1"),
        rows: (ids.end - ids.start) as u64,
        batches: vec![batch(ids, "fr")],
        contract: None,
    };
    assert_eq!(
        group.add(&member("in/landed.csv", 0..3)).await.unwrap(),
        Joined::AlreadyCommitted
    );
    for (n, key) in ["in/g0.csv", "in/g1.csv", "in/g2.csv"].iter().enumerate() {
        let start = 100 * (n as i64 + 1);
        assert_eq!(
            group.add(&member(key, start..start + 4)).await.unwrap(),
            Joined::Added
        );
    }
    assert!(group.output_bytes() > 0);
    let receipt = group.commit().await.unwrap();
    assert_eq!(receipt.rows, 12);
    assert!(
        receipt.location.ends_with("version 2"),
        "{}",
        receipt.location
    );
    for key in ["in/g0.csv", "in/g1.csv", "in/g2.csv"] {
        assert_eq!(
            sink.is_committed(&lineage(key, "1")).await.unwrap(),
            CommitState::Committed
        );
        let details = sink
            .commit_details(&lineage(key, "1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(details.rows, Some(4));
    }
    let contents = read_table(sink.table_url(), HashMap::new()).await;
    assert_eq!(contents.rows(), 15);
    assert_eq!(
        contents.files.len(),
        2,
        "one file per commit: {:?}",
        contents.files
    );
}

#[tokio::test]
async fn a_group_raced_by_another_commit_of_one_of_its_objects_is_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&config(dir.path(), ""));
    land(
        &sink,
        &lineage("in/first.csv", "1"),
        vec![batch(0..1, "fr")],
    )
    .await;
    let mut group = sink.open_group("vendor", "sales", schema()).await.unwrap();
    for key in ["in/r0.csv", "in/r1.csv"] {
        let member = GroupMember {
            lineage: lineage(key, "1"),
            rows: 2,
            batches: vec![batch(10..12, "fr")],
            contract: None,
        };
        assert_eq!(group.add(&member).await.unwrap(), Joined::Added);
    }
    // Another worker commits r1 on its own meanwhile.
    land(&sink, &lineage("in/r1.csv", "1"), vec![batch(10..12, "fr")]).await;
    let err = group.commit().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.detail.contains("1 of the group's 2 objects"),
        "{}",
        err.detail
    );
    assert_eq!(
        sink.is_committed(&lineage("in/r0.csv", "1")).await.unwrap(),
        CommitState::NotCommitted
    );
    assert_eq!(read_table(sink.table_url(), HashMap::new()).await.rows(), 3);
}

#[tokio::test]
async fn an_empty_file_is_recorded_as_committed() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&config(dir.path(), ""));
    let object = lineage("in/empty.csv", "1");
    let receipt = land(&sink, &object, vec![]).await;
    assert_eq!(receipt.rows, 0);
    assert!(!receipt.already_committed);
    assert_eq!(
        sink.is_committed(&object).await.unwrap(),
        CommitState::Committed
    );
}

#[test]
fn config_errors_name_the_field() {
    let check = |extra: &str| {
        let config: DeltaSinkConfig = toml::from_str(&format!("table = \"t\"\n{extra}")).unwrap();
        config.validate().unwrap_err()
    };
    assert_eq!(
        check("key_columns = { dt = 'no group' }").0,
        "key_columns.dt"
    );
    assert_eq!(check("partition_by = ['a', 'a']").0, "partition_by");
    assert_eq!(check("target_file_bytes = 10").0, "target_file_bytes");
    let config: DeltaSinkConfig = toml::from_str("table = \"gs://x/y\"").unwrap();
    assert_eq!(config.validate().unwrap_err().0, "table");
    assert!(toml::from_str::<DeltaSinkConfig>("table = \"t\"\nunknown = 1").is_err());
}

#[test]
fn the_example_config_is_valid_and_a_bad_key_column_names_its_field() {
    let example = include_str!("../../../examples/sink-delta.toml");
    let config = crate::config::Config::from_toml_str(example).expect("examples/sink-delta.toml");
    let crate::config::SinkConfig::Delta(delta) = &config.sinks["orders_table"] else {
        panic!("the example's sink is not a delta sink");
    };
    assert_eq!(delta.partition_by, ["order_date"]);
    assert_eq!(delta.key_columns.len(), 2);
    let broken = example.replace(r"^orders/(\d{4}-\d{2}-\d{2})/", r"^orders/\d{4}/");
    let error = crate::config::Config::from_toml_str(&broken)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("sinks.orders_table.key_columns.order_date")
            && error.contains("capture group"),
        "{error}"
    );
}

#[tokio::test]
async fn a_route_that_adds_columns_evolves_the_table_and_fills_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    let sink = sink_adding_columns_for(&config, &["sales"]);
    land(&sink, &lineage("in/a.csv", "1"), vec![batch(0..2, "fr")]).await;

    // A file with a new column, then one lacking `country` and the new one.
    let wider = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("country", DataType::Utf8, true),
        Field::new("discount", DataType::Int64, true),
    ]));
    let rows = RecordBatch::try_new(
        wider.clone(),
        vec![
            Arc::new(Int64Array::from(vec![10])),
            Arc::new(StringArray::from(vec!["de"])),
            Arc::new(Int64Array::from(vec![5])),
        ],
    )
    .unwrap();
    let mut writer = sink.open(&lineage("in/b.csv", "1"), wider).await.unwrap();
    writer.write(rows).await.unwrap();
    let mut outcome =
        crate::contract::ContractOutcome::new(crate::contract::SchemaMode::AddColumns);
    outcome.rows = 1;
    outcome.accepted_rows = 1;
    outcome.columns_added = vec!["discount".into()];
    writer.record_contract(&outcome);
    writer.commit().await.unwrap();

    let narrow = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let ids =
        RecordBatch::try_new(narrow.clone(), vec![Arc::new(Int64Array::from(vec![20]))]).unwrap();
    let mut writer = sink.open(&lineage("in/c.csv", "1"), narrow).await.unwrap();
    writer.write(ids).await.unwrap();
    writer.commit().await.unwrap();

    let contents = read_table(sink.table_url(), HashMap::new()).await;
    assert_eq!(contents.ids(), [0, 1, 10, 20]);
    let table = DeltaTableBuilder::from_url(sink.table_url().clone())
        .unwrap()
        .load()
        .await
        .unwrap();
    let schema = table.snapshot().unwrap().schema();
    let names: Vec<&str> = schema.fields().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["id", "country", "discount"]);
    // The commit of b.csv says what its route's contract made of it.
    let sources: Vec<&serde_json::Value> = contents
        .commit_infos
        .iter()
        .filter_map(|info| info.get("s3_ingest")?.get("sources")?.as_array())
        .flatten()
        .collect();
    let b = sources
        .iter()
        .find(|source| source["key"] == "in/b.csv")
        .unwrap();
    assert_eq!(b["contract"]["columns_added"][0], "discount", "{b}");
    assert_eq!(b["contract"]["verdict"], "accepted");

    // Without `add_columns` the same drift is a schema error.
    let strict = self::sink(&config);
    let err = match strict
        .open(
            &lineage("in/d.csv", "1"),
            Arc::new(Schema::new(vec![Field::new("extra", DataType::Utf8, true)])),
        )
        .await
    {
        Err(err) => err,
        Ok(_) => panic!("a strict route's drift must not open"),
    };
    assert_eq!(err.class, SinkFailure::Schema, "{err}");
}
