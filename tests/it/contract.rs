//! Vendor data contracts through the worker on LocalStack, into
//! `parquet_dir` sinks: each schema mode with a drifted file, the column
//! checks with both bad-row policies, and the file's outcome in the sink's
//! lineage, the dead letter and the metrics. The same on PostgreSQL and
//! Delta is in `sink_postgres` and `sink_delta`.

use std::path::PathBuf;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use s3_ingest::error::ErrorKind;

use crate::util::*;

/// The vendor's declared columns.
const SCHEMA: &str = r#"schema = [
    { name = "id", type = "int64", nullable = false },
    { name = "status", type = "string" },
    { name = "price", type = "float64" },
]"#;

/// One route per schema mode (`<mode>/**`), named `<prefix>-<mode>`, into
/// `lake`.
fn mode_routes(prefix: &str) -> String {
    ["strict", "add_columns", "rescue"]
        .iter()
        .map(|mode| {
            format!(
                r#"
                [[routes]]
                name = "{prefix}-{mode}"
                key_glob = "{mode}/**"
                sink = "lake"
                {SCHEMA}
                [routes.contract]
                schema_mode = "{mode}"
                "#
            )
        })
        .collect()
}

fn contract_of(file: &SinkFile) -> serde_json::Value {
    let text = file
        .metadata
        .get("s3_ingest.contract")
        .unwrap_or_else(|| panic!("no contract outcome in {:?}", file.metadata));
    serde_json::from_str(text).unwrap()
}

fn column_names(file: &SinkFile) -> Vec<String> {
    file.batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

fn texts(file: &SinkFile, column: &str) -> Vec<Option<String>> {
    file.batches
        .iter()
        .flat_map(|batch| {
            let values = batch.column_by_name(column).unwrap().as_string::<i32>();
            values
                .iter()
                .map(|v| v.map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn ids(file: &SinkFile) -> Vec<i64> {
    file.batches
        .iter()
        .flat_map(|batch| {
            let values = batch
                .column_by_name("id")
                .unwrap()
                .as_primitive::<Int64Type>();
            values.values().to_vec()
        })
        .collect()
}

/// The value of `metric{labels}` in a Prometheus text page, 0 if absent.
fn metric(page: &str, metric: &str, labels: &str) -> u64 {
    let prefix = format!("{metric}{{{labels}}} ");
    page.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |value| value.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_schema_mode_lands_a_drifted_file_as_its_route_says() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("contract-modes").await;
    let prefix = unique("modes");
    let (running, _, addr) = fixture
        .start_worker_with_status(fixture.config(Some(&mode_routes(&prefix))))
        .await;
    // The same drift for each route: a new column `colour`; for rescue a
    // price that is not a number too.
    fixture
        .put("strict/a.csv", "id,status,price,colour\n1,new,2.5,red\n")
        .await;
    fixture
        .put("add_columns/a.csv", "id,Status,colour\n1,new,red\n2,old,\n")
        .await;
    fixture
        .put(
            "rescue/a.csv",
            "id,status,price,colour\n1,new,n/a,red\n2,new,3,\n",
        )
        .await;
    // A header alone is held to the contract too.
    fixture
        .put("strict/header.csv", "id,status,price,colour\n")
        .await;
    // And a file that keeps the contract, columns reordered.
    fixture
        .put("strict/b.csv", "price,id,status\n1.5,7,new\n")
        .await;

    let mut letters = fixture.wait_for_dead_letters(2).await;
    letters.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(letters[0].key.as_deref(), Some("strict/a.csv"));
    assert_eq!(letters[1].key.as_deref(), Some("strict/header.csv"));
    for letter in &letters {
        assert_eq!(letter.error_kind, ErrorKind::SchemaError);
        assert!(
            letter.error.contains("strict schema")
                && letter
                    .error
                    .contains("columns the route does not declare: `colour`"),
            "{}",
            letter.error
        );
    }
    fixture.wait_for_files_and_empty_queue(3).await;
    let files = fixture.sink_files();

    let strict = sink_file_for(&files, "strict/b.csv");
    assert_eq!(column_names(&strict), ["id", "status", "price"]);
    assert_eq!(ids(&strict), [7]);
    assert_eq!(contract_of(&strict)["verdict"], "accepted");

    let added = sink_file_for(&files, "add_columns/a.csv");
    assert_eq!(column_names(&added), ["id", "status", "price", "colour"]);
    assert_eq!(texts(&added, "colour"), [Some("red".into()), None]);
    assert_eq!(
        texts(&added, "status"),
        [Some("new".into()), Some("old".into())]
    );
    assert_eq!(
        added.batches[0].column(2).null_count(),
        2,
        "price filled with nulls"
    );
    let outcome = contract_of(&added);
    assert_eq!(outcome["schema_mode"], "add_columns");
    assert_eq!(outcome["columns_added"], serde_json::json!(["colour"]));
    assert_eq!(outcome["columns_missing"], serde_json::json!(["price"]));

    let rescued = sink_file_for(&files, "rescue/a.csv");
    assert_eq!(
        column_names(&rescued),
        ["id", "status", "price", "_rescued"]
    );
    assert_eq!(
        texts(&rescued, "_rescued"),
        [Some(r#"{"colour":"red","price":"n/a"}"#.into()), None]
    );
    let outcome = contract_of(&rescued);
    assert_eq!(outcome["rescued_rows"], 1);
    assert_eq!(outcome["columns_rescued"], serde_json::json!(["colour"]));

    let (_, page) = http_get(&addr, "/metrics").await;
    let route = |mode: &str| format!("route=\"{prefix}-{mode}\"");
    let files_total = "s3_ingest_contract_files_total";
    assert_eq!(
        metric(
            &page,
            files_total,
            &format!("{},verdict=\"rejected\"", route("strict"))
        ),
        2,
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            files_total,
            &format!("{},verdict=\"accepted\"", route("strict"))
        ),
        1
    );
    assert_eq!(
        metric(
            &page,
            files_total,
            &format!("{},verdict=\"accepted\"", route("add_columns"))
        ),
        1
    );
    let drift = "s3_ingest_contract_drifted_files_total";
    assert_eq!(
        metric(
            &page,
            drift,
            &format!("{},drift=\"columns_added\"", route("add_columns"))
        ),
        1
    );
    assert_eq!(
        metric(
            &page,
            drift,
            &format!("{},drift=\"columns_rescued\"", route("rescue"))
        ),
        1
    );
    let rows = "s3_ingest_contract_rows_total";
    assert_eq!(
        metric(
            &page,
            rows,
            &format!("{},outcome=\"rescued\"", route("rescue"))
        ),
        1
    );
    assert_eq!(
        metric(
            &page,
            rows,
            &format!("{},outcome=\"accepted\"", route("rescue"))
        ),
        2
    );
    running.stop().await;
}

/// Routes `reject/**` and `quarantine/**` with the same checks; the
/// second quarantines into sink `bad` (another `parquet_dir`).
fn checked_routes(prefix: &str) -> String {
    let checks = r#"checks = [
        { column = "id", unique = true },
        { column = "status", not_null = true, one_of = ["new", "shipped"] },
        { column = "price", min = 0, max = 1000 },
    ]"#;
    format!(
        r#"
        [[routes]]
        name = "{prefix}-reject"
        key_glob = "reject/**"
        sink = "lake"
        {SCHEMA}
        [routes.contract]
        reported_rows = 2
        {checks}

        [[routes]]
        name = "{prefix}-quarantine"
        key_glob = "quarantine/**"
        sink = "lake"
        {SCHEMA}
        [routes.contract]
        bad_rows = "quarantine"
        quarantine_sink = "bad"
        {checks}
        "#
    )
}

/// 1 000 rows, ids 1..=1000; rows 10, 20, … break one rule each in turn.
fn rows_with_bad_ones() -> (String, usize) {
    let mut csv = String::from("id,status,price\n");
    let mut bad = 0;
    for id in 1..=1000 {
        let (id_text, status, price) = match id % 40 {
            10 => (id.to_string(), "lost", "5"),
            20 => (id.to_string(), "new", "-5"),
            30 => (id.to_string(), "", "5"),
            0 => ("1".to_owned(), "new", "5"),
            _ => (id.to_string(), "new", if id % 7 == 0 { "abc" } else { "5" }),
        };
        // Every tenth row breaks a rule, and so does every seventh.
        if id % 10 == 0 || id % 7 == 0 {
            bad += 1;
        }
        csv.push_str(&format!("{id_text},{status},{price}\n"));
    }
    (csv, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_reject_the_file_or_go_to_quarantine_and_none_is_lost() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("contract-rows").await;
    let prefix = unique("rows");
    let bad_dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        "[sinks.bad]\ntype = \"parquet_dir\"\npath = \"{}\"\n",
        bad_dir.path().display()
    );
    let config = fixture.config_with_sinks(Some(&checked_routes(&prefix)), "", &sinks);
    let (running, _, addr) = fixture.start_worker_with_status(config).await;
    let (csv, bad) = rows_with_bad_ones();
    fixture.put("reject/a.csv", csv.clone()).await;
    fixture.put("quarantine/a.csv", csv).await;
    // Every row bad: the route's sink still records the file, with 0 rows.
    fixture
        .put(
            "quarantine/all-bad.csv",
            "id,status,price\n1,lost,1\n2,new,-1\n",
        )
        .await;

    let letters = fixture.wait_for_dead_letters(1).await;
    assert_eq!(letters[0].key.as_deref(), Some("reject/a.csv"));
    assert_eq!(letters[0].error_kind, ErrorKind::ContractViolation);
    let error = &letters[0].error;
    assert!(
        error.contains(r#"row 7: `price`: "abc" is not a Float64 value {"id":"7","price":"abc","status":"new"}"#)
            && error.contains(r#"row 10: `status`: "lost" is not one of ["new", "shipped"]"#)
            && !error.contains("row 14:"),
        "the first two bad rows, with their values: {error}"
    );
    fixture.wait_for_files_and_empty_queue(2).await;

    let all_bad = sink_file_for(&fixture.sink_files(), "quarantine/all-bad.csv");
    assert_eq!(all_bad.rows, 0);
    assert_eq!(contract_of(&all_bad)["quarantined_rows"], 2);
    assert_eq!(
        sink_file_for(&parquet_files(bad_dir.path()), "quarantine/all-bad.csv").rows,
        2
    );

    let good = sink_file_for(&fixture.sink_files(), "quarantine/a.csv");
    let bad_files: Vec<PathBuf> = parquet_files(bad_dir.path());
    let quarantined = sink_file_for(&bad_files, "quarantine/a.csv");
    assert_eq!(good.rows + quarantined.rows, 1000, "no row lost");
    assert_eq!(quarantined.rows, bad);
    let outcome = contract_of(&good);
    assert_eq!(outcome["verdict"], "quarantined");
    assert_eq!(outcome["quarantined_rows"], bad as u64);
    assert_eq!(contract_of(&quarantined), outcome, "both sinks record it");
    // Each quarantined row: its row number, why, and the values as sent.
    let source_rows: Vec<i64> = quarantined
        .batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("source_row")
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        })
        .collect();
    assert!(
        source_rows.contains(&7) && source_rows.contains(&40),
        "{source_rows:?}"
    );
    let reasons = texts(&quarantined, "reason");
    let records = texts(&quarantined, "record");
    let row_40 = source_rows.iter().position(|r| *r == 40).unwrap();
    assert_eq!(
        reasons[row_40].as_deref(),
        Some(r#"`id`: "1" repeats row 1; the column is unique"#)
    );
    assert_eq!(
        records[row_40].as_deref(),
        Some(r#"{"id":"1","price":"5","status":"new"}"#)
    );
    let row_30 = source_rows.iter().position(|r| *r == 30).unwrap();
    assert_eq!(reasons[row_30].as_deref(), Some("`status` is null"));
    let mut kept = ids(&good);
    kept.sort_unstable();
    assert!(!kept.contains(&7) && !kept.contains(&10) && kept.contains(&1));

    let (_, page) = http_get(&addr, "/metrics").await;
    let route = format!("route=\"{prefix}-quarantine\"");
    assert_eq!(
        metric(
            &page,
            "s3_ingest_contract_files_total",
            &format!("{route},verdict=\"quarantined\"")
        ),
        2
    );
    assert_eq!(
        metric(
            &page,
            "s3_ingest_contract_rows_total",
            &format!("{route},outcome=\"quarantined\"")
        ),
        bad as u64 + 2
    );
    assert_eq!(
        metric(
            &page,
            "s3_ingest_contract_files_total",
            &format!("route=\"{prefix}-reject\",verdict=\"rejected\"")
        ),
        1
    );
    running.stop().await;
}

#[test]
fn check_config_prints_each_routes_contract() {
    let _suite = crate::shared_blocking();
    let config = format!(
        r#"
        [queue]
        url = "http://127.0.0.1:4566/000000000000/events"
        {routes}
        [sinks.lake]
        type = "parquet_dir"
        path = "/tmp/lake"
        [sinks.bad]
        type = "parquet_dir"
        path = "/tmp/bad"
        "#,
        routes = checked_routes("vendor")
    );
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, config.as_bytes()).unwrap();
    let output = worker_command()
        .args(["check-config", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "# contract of route vendor-quarantine",
        "schema_mode strict, bad rows: quarantined to sink `bad`",
        "column id Int64: not null, unique in the file",
        r#"column status Utf8: not null, one of ["new", "shipped"]"#,
        "column price Float64: >= 0, <= 1000",
        "bad rows: the file is rejected (dead letter quotes up to 2 rows)",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
}

/// The worker process's own log: the committed line of a file under a
/// contract carries its outcome, and drift or quarantined rows add a
/// warning that names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outcome_is_in_the_files_log_lines() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("contract-log").await;
    let prefix = unique("log");
    let bad_dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        "[sinks.bad]\ntype = \"parquet_dir\"\npath = \"{}\"\n",
        bad_dir.path().display()
    );
    let routes = format!(
        r#"
        [[routes]]
        name = "{prefix}"
        key_glob = "**"
        sink = "lake"
        {SCHEMA}
        [routes.contract]
        schema_mode = "add_columns"
        bad_rows = "quarantine"
        quarantine_sink = "bad"
        checks = [{{ column = "price", min = 0 }}]
        "#
    );
    let config = fixture.config_with_sinks(Some(&routes), "", &sinks);
    let log = fixture.output_dir().join("worker.log");
    let child = fixture.spawn_worker_process(&config, &log);
    fixture
        .put(
            "in/a.csv",
            "id,status,price,colour\n1,new,2,red\n2,new,-1,blue\n",
        )
        .await;
    wait_for_log(&log, "the file does not keep its route's contract").await;
    wait_for_log(&log, "object committed").await;
    signal(&child, "-TERM");
    assert_eq!(wait_for_exit(child).await.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let line = |needle: &str| {
        text.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in {text}"))
            .to_owned()
    };
    let warning = line("the file does not keep its route's contract");
    assert!(
        warning.contains("quarantined_rows=1") && warning.contains(r#"columns_added=["colour"]"#),
        "{warning}"
    );
    let committed = line("object committed");
    assert!(
        committed.contains("contract=\"quarantined\"")
            || committed.contains("contract=quarantined"),
        "{committed}"
    );
    assert!(committed.contains("quarantined_rows=1"), "{committed}");
    assert!(
        committed.contains("accepted_rows"),
        "the outcome as JSON: {committed}"
    );
}
