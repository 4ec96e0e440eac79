//! One contract scenario on each sink that keeps rows: every schema mode,
//! every column check and both bad-row policies, through the worker on
//! LocalStack into `parquet_dir` files, PostgreSQL tables, Delta tables on
//! S3 and `s3_parquet` objects. The rows are read back from each, and each
//! file's outcome from each sink's own lineage (the Parquet footer, the
//! ledger row, the Delta commit info).

use std::collections::BTreeMap;

use arrow::record_batch::RecordBatch;
use s3_ingest::error::ErrorKind;
use serde_json::Value;

use crate::util::*;

/// A row as text by column; nulls left out.
type Row = BTreeMap<String, String>;

fn row(values: &[(&str, &str)]) -> Row {
    values
        .iter()
        .map(|(column, value)| (column.to_string(), value.to_string()))
        .collect()
}

/// A JSON object as a [`Row`]: numbers as their shortest text (so `10`
/// and `10.0` read alike), nulls left out.
fn as_row(object: &serde_json::Map<String, Value>) -> Row {
    object
        .iter()
        .filter_map(|(column, value)| {
            let text = match value {
                Value::Null => return None,
                Value::String(text) => text.clone(),
                Value::Number(number) => number.as_f64().unwrap().to_string(),
                other => other.to_string(),
            };
            Some((column.clone(), text))
        })
        .collect()
}

fn batches_as_rows(batches: &[RecordBatch]) -> Vec<Row> {
    let mut rows = Vec::new();
    for batch in batches {
        let mut writer = arrow::json::ArrayWriter::new(Vec::new());
        writer.write(batch).unwrap();
        writer.finish().unwrap();
        let json: Value = serde_json::from_slice(&writer.into_inner()).unwrap_or(Value::Null);
        for object in json.as_array().into_iter().flatten() {
            rows.push(as_row(object.as_object().unwrap()));
        }
    }
    rows
}

/// Where the scenario's four sinks keep their rows.
enum Destination {
    /// One directory per sink under this root.
    ParquetDir(tempfile::TempDir),
    /// One table per sink, `<prefix>_<sink>`, each with its ledger.
    Postgres {
        prefix: String,
        client: tokio_postgres::Client,
    },
    /// One table per sink under this `s3://` location.
    Delta(String),
    /// One prefix per sink in this bucket.
    S3Parquet {
        bucket: String,
        s3: aws_sdk_s3::Client,
    },
}

/// The scenario's sinks: the three routes' own, and the quarantine.
const SINKS: [&str; 4] = ["strict", "added", "rescued", "quarantine"];

impl Destination {
    fn sinks_toml(&self) -> String {
        SINKS
            .iter()
            .map(|sink| match self {
                Destination::ParquetDir(root) => format!(
                    "[sinks.{sink}]\ntype = \"parquet_dir\"\npath = \"{}\"\n",
                    root.path().join(sink).display()
                ),
                Destination::Postgres { prefix, .. } => format!(
                    "[sinks.{sink}]\ntype = \"postgres\"\nurl = \"{url}\"\nca_file = \"{ca}\"\n\
                     table = \"{prefix}_{sink}\"\nledger_table = \"{prefix}_{sink}_ledger\"\n\
                     create_table = true\n",
                    url = crate::sink_postgres::postgres_url(),
                    ca = crate::sink_postgres::postgres_ca(),
                ),
                Destination::Delta(root) => {
                    format!("[sinks.{sink}]\ntype = \"delta\"\ntable = \"{root}/{sink}\"\n")
                }
                Destination::S3Parquet { bucket, .. } => format!(
                    "[sinks.{sink}]\ntype = \"s3_parquet\"\nbucket = \"{bucket}\"\nprefix = \"{sink}\"\n"
                ),
            })
            .collect()
    }

    /// Every row `sink` holds, sorted.
    async fn rows(&self, sink: &str) -> Vec<Row> {
        let mut rows = match self {
            Destination::ParquetDir(root) => {
                let batches: Vec<RecordBatch> = parquet_files(&root.path().join(sink))
                    .iter()
                    .flat_map(|path| read_sink_file(path).batches)
                    .collect();
                batches_as_rows(&batches)
            }
            Destination::Postgres { prefix, client } => client
                .query(
                    &format!("SELECT row_to_json(t)::text FROM {prefix}_{sink} t"),
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|found| {
                    let text: String = found.get(0);
                    let json: Value = serde_json::from_str(&text).unwrap();
                    as_row(json.as_object().unwrap())
                })
                .collect(),
            Destination::Delta(root) => {
                batches_as_rows(&delta_table(&format!("{root}/{sink}")).await.0)
            }
            Destination::S3Parquet { bucket, s3 } => {
                let batches: Vec<RecordBatch> = s3_parquet_files(s3, bucket, sink)
                    .await
                    .into_iter()
                    .flat_map(|(_, file)| file.batches)
                    .collect();
                batches_as_rows(&batches)
            }
        };
        rows.sort();
        rows
    }

    /// What `sink`'s lineage says the route's contract made of `key`.
    async fn outcome(&self, sink: &str, key: &str) -> Value {
        match self {
            Destination::ParquetDir(root) => {
                let file = sink_file_for(&parquet_files(&root.path().join(sink)), key);
                serde_json::from_str(&file.metadata["s3_ingest.contract"]).unwrap()
            }
            Destination::Postgres { prefix, client } => {
                let text: String = client
                    .query_one(
                        &format!(
                            "SELECT contract::text FROM {prefix}_{sink}_ledger WHERE key = $1"
                        ),
                        &[&key],
                    )
                    .await
                    .unwrap()
                    .get(0);
                serde_json::from_str(&text).unwrap()
            }
            Destination::Delta(root) => {
                let (_, infos) = delta_table(&format!("{root}/{sink}")).await;
                infos
                    .iter()
                    .filter_map(|info| info["s3_ingest"]["sources"].as_array())
                    .flatten()
                    .find(|source| source["key"] == key)
                    .unwrap_or_else(|| panic!("no commit of {key} in {sink}"))["contract"]
                    .clone()
            }
            Destination::S3Parquet { bucket, s3 } => {
                let files = s3_parquet_files(s3, bucket, sink).await;
                let (_, file) = files
                    .iter()
                    .find(|(_, file)| {
                        file.metadata
                            .get("s3_ingest.source_key")
                            .map(String::as_str)
                            == Some(key)
                    })
                    .unwrap_or_else(|| panic!("no object of {key} under {sink}/"));
                serde_json::from_str(&file.metadata["s3_ingest.contract"]).unwrap()
            }
        }
    }
}

/// Every Parquet object under `prefix/` of `bucket`, read.
async fn s3_parquet_files(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Vec<(String, SinkFile)> {
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(format!("{prefix}/"))
        .send()
        .await
        .unwrap();
    let mut files = Vec::new();
    for object in listed.contents() {
        let key = object.key().unwrap();
        if !key.ends_with(".parquet") {
            continue;
        }
        let body = s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        let bytes = body.body.collect().await.unwrap().into_bytes();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object.parquet");
        std::fs::write(&path, &bytes).unwrap();
        files.push((key.to_owned(), read_sink_file(&path)));
    }
    files
}

/// Every row of a Delta table, file by file, and its commit infos.
async fn delta_table(table: &str) -> (Vec<RecordBatch>, Vec<Value>) {
    let read = crate::sink_delta::read_table(table)
        .await
        .unwrap_or_else(|| panic!("no Delta table at {table}"));
    (read.batches, read.commit_infos)
}

/// The vendor's columns and the checks on them, shared by every route.
const SCHEMA_AND_CHECKS: &str = r#"schema = [
    { name = "id", type = "int64", nullable = false },
    { name = "status", type = "string" },
    { name = "price", type = "float64" },
    { name = "sku", type = "string" },
]
[routes.contract]
checks = [
    { column = "id", unique = true },
    { column = "status", not_null = true, one_of = ["new", "shipped"] },
    { column = "price", min = 0, max = 100 },
    { column = "sku", regex = "[A-Z]{3}-[0-9]+" },
]"#;

/// `strict` rejects, `add` and `rescue` quarantine into one sink.
fn routes(prefix: &str) -> String {
    let route = |name: &str, sink: &str, contract: &str| {
        format!(
            "[[routes]]\nname = \"{prefix}-{name}\"\nkey_glob = \"{name}/**\"\nsink = \"{sink}\"\n\
             {SCHEMA_AND_CHECKS}\n{contract}\n\n"
        )
    };
    let quarantine = "bad_rows = \"quarantine\"\nquarantine_sink = \"quarantine\"";
    [
        route("strict", "strict", ""),
        route(
            "add",
            "added",
            &format!("schema_mode = \"add_columns\"\n{quarantine}"),
        ),
        route(
            "rescue",
            "rescued",
            &format!("schema_mode = \"rescue\"\n{quarantine}"),
        ),
    ]
    .concat()
}

/// One row that keeps the contract, then one breaking each rule in turn.
const ADD_FILE: &str = "id,status,price,sku,colour\n\
    1,new,10,ABC-1,red\n\
    1,new,10,ABC-2,red\n\
    2,lost,10,ABC-3,red\n\
    3,new,500,ABC-4,red\n\
    4,new,-1,ABC-5,red\n\
    5,new,10,abc,red\n\
    6,,10,ABC-6,red\n\
    7,new,x,ABC-7,red\n";

async fn run_scenario(fixture: &Fixture, destination: Destination) {
    let prefix = unique("matrix");
    let config = fixture.config_with_sinks(Some(&routes(&prefix)), "", &destination.sinks_toml());
    let worker = fixture.start_worker(config.clone());
    fixture
        .put(
            "strict/ok.csv",
            "id,status,price,sku\n1,new,10,ABC-1\n2,shipped,20.5,XYZ-2\n",
        )
        .await;
    fixture
        .put(
            "strict/drift.csv",
            "id,status,price,sku,colour\n3,new,1,ABC-3,red\n",
        )
        .await;
    fixture
        .put(
            "strict/bad.csv",
            "id,status,price,sku\n4,new,1,ABC-4\n5,new,101,ABC-5\n",
        )
        .await;
    let add_etag = fixture.put("add/a.csv", ADD_FILE).await;
    fixture
        .put(
            "rescue/a.csv",
            "id,status,price,sku,colour\n1,new,n/a,ABC-1,red\n2,new,5,bad-sku,\n",
        )
        .await;

    let mut letters = fixture.wait_for_dead_letters(2).await;
    letters.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(letters[0].key.as_deref(), Some("strict/bad.csv"));
    assert_eq!(letters[0].error_kind, ErrorKind::ContractViolation);
    assert!(
        letters[0]
            .error
            .contains(r#"row 2: `price`: "101" is above max 100"#),
        "{}",
        letters[0].error
    );
    assert_eq!(letters[1].key.as_deref(), Some("strict/drift.csv"));
    assert_eq!(letters[1].error_kind, ErrorKind::SchemaError);
    assert!(
        letters[1].error.contains("`colour`"),
        "{}",
        letters[1].error
    );
    fixture.wait_for_empty_queue().await;

    assert_eq!(
        destination.rows("strict").await,
        [
            row(&[
                ("id", "1"),
                ("status", "new"),
                ("price", "10"),
                ("sku", "ABC-1")
            ]),
            row(&[
                ("id", "2"),
                ("status", "shipped"),
                ("price", "20.5"),
                ("sku", "XYZ-2")
            ]),
        ],
        "the strict route: the good file only"
    );
    assert_eq!(
        destination.rows("added").await,
        [row(&[
            ("id", "1"),
            ("status", "new"),
            ("price", "10"),
            ("sku", "ABC-1"),
            ("colour", "red"),
        ])],
        "add_columns: the new column landed"
    );
    assert_eq!(
        destination.rows("rescued").await,
        [row(&[
            ("id", "1"),
            ("status", "new"),
            ("sku", "ABC-1"),
            ("_rescued", r#"{"colour":"red","price":"n/a"}"#),
        ])],
        "rescue: the unparsable price and the new column in _rescued"
    );

    // Every bad row, once, with its reason: none is lost.
    let quarantined: Vec<(String, String)> = destination
        .rows("quarantine")
        .await
        .into_iter()
        .map(|r| (r["source_row"].clone(), r["reason"].clone()))
        .collect();
    let mut expected: Vec<(String, String)> = [
        ("2", r#"`id`: "1" repeats row 1; the column is unique"#),
        ("3", r#"`status`: "lost" is not one of ["new", "shipped"]"#),
        ("4", r#"`price`: "500" is above max 100"#),
        ("5", r#"`price`: "-1" is below min 0"#),
        ("6", r#"`sku`: "abc" does not match /[A-Z]{3}-[0-9]+/"#),
        ("7", "`status` is null"),
        ("8", r#"`price`: "x" is not a Float64 value"#),
        ("2", r#"`sku`: "bad-sku" does not match /[A-Z]{3}-[0-9]+/"#),
    ]
    .iter()
    .map(|(row, reason)| (row.to_string(), reason.to_string()))
    .collect();
    let mut sorted = quarantined.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected);

    let added = destination.outcome("added", "add/a.csv").await;
    assert_eq!(added["verdict"], "quarantined", "{added}");
    assert_eq!(
        (
            added["rows"].as_u64(),
            added["accepted_rows"].as_u64(),
            added["quarantined_rows"].as_u64()
        ),
        (Some(8), Some(1), Some(7))
    );
    assert_eq!(added["columns_added"], serde_json::json!(["colour"]));
    assert_eq!(destination.outcome("quarantine", "add/a.csv").await, added);
    let rescued = destination.outcome("rescued", "rescue/a.csv").await;
    assert_eq!(rescued["rescued_rows"], 1, "{rescued}");
    assert_eq!(rescued["quarantined_rows"], 1);
    assert_eq!(rescued["columns_rescued"], serde_json::json!(["colour"]));
    assert_eq!(
        destination.outcome("strict", "strict/ok.csv").await["verdict"],
        "accepted"
    );

    // What `s3-ingest trace` shows: each sink's commit details carry it.
    let context = s3_ingest::sink::SinkContext {
        s3: fixture.clients.s3.clone(),
        expected_bucket_owner: None,
        aws: config.aws.clone(),
        add_columns_routes: Default::default(),
    };
    let lineage = s3_ingest::sink::Lineage {
        bucket: fixture.bucket.clone(),
        key: "add/a.csv".into(),
        version_id: None,
        etag: Some(add_etag),
        size: 0,
        event_time: None,
        route: String::new(),
    };
    for name in ["added", "quarantine"] {
        let sink = s3_ingest::sink::build(name, &config.sinks[name], &context).unwrap();
        let details = sink.commit_details(&lineage).await.unwrap().unwrap();
        assert_eq!(
            details.contract.as_ref(),
            Some(&added),
            "{name}: {details:?}"
        );
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_check_and_policy_on_parquet_dir() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("matrix-files").await;
    let root = tempfile::tempdir().unwrap();
    run_scenario(&fixture, Destination::ParquetDir(root)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_check_and_policy_on_postgres() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("matrix-pg").await;
    let destination = Destination::Postgres {
        prefix: format!("s3i_matrix_{}", unique_id()),
        client: crate::sink_postgres::connect().await,
    };
    run_scenario(&fixture, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_check_and_policy_on_delta() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("matrix-delta").await;
    let lake = crate::sink_delta::create_lake(&fixture).await;
    run_scenario(&fixture, Destination::Delta(lake)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_check_and_policy_on_s3_parquet() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("matrix-s3pq").await;
    let bucket = format!("{}-out", fixture.bucket);
    fixture
        .clients
        .s3
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let s3 = fixture.clients.s3.clone();
    run_scenario(&fixture, Destination::S3Parquet { bucket, s3 }).await;
}
