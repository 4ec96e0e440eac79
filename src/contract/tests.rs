use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::*;
use crate::error::ErrorKind;

/// The route's schema: id int64 not null, status text, price float64.
fn declared() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("status", DataType::Utf8, true),
        Field::new("price", DataType::Float64, true),
    ]))
}

fn contract(config: &str) -> Arc<Contract> {
    let config: ContractConfig = toml::from_str(config).unwrap();
    Arc::new(Contract::compile("orders", Some(&declared()), &config).unwrap())
}

fn compile_error(config: &str) -> ContractError {
    let config: ContractConfig = toml::from_str(config).unwrap();
    Contract::compile("orders", Some(&declared()), &config).unwrap_err()
}

/// A batch of text columns, as the CSV decoder gives a contract: `None`
/// is an empty field.
fn text_batch(columns: &[(&str, Vec<Option<&str>>)]) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, _)| Field::new(*name, DataType::Utf8, true))
        .collect();
    let arrays: Vec<ArrayRef> = columns
        .iter()
        .map(|(_, values)| Arc::new(StringArray::from(values.clone())) as ArrayRef)
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
}

fn ids(batch: &RecordBatch) -> Vec<i64> {
    batch
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec()
}

fn strings(batch: &RecordBatch, column: &str) -> Vec<Option<String>> {
    batch
        .column_by_name(column)
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect()
}

#[test]
fn strict_casts_declared_columns_matched_by_name_in_any_order_and_case() {
    let mut file = FileContract::new(contract(""), "s3://b/k.csv");
    let batch = text_batch(&[
        ("Price", vec![Some("1.5"), None]),
        ("ID", vec![Some("1"), Some("2")]),
        ("status", vec![Some("new"), Some("shipped")]),
    ]);
    let applied = file.apply(&batch).unwrap();
    assert!(applied.bad.is_none());
    let good = applied.good.unwrap();
    assert_eq!(good.schema(), declared());
    assert_eq!(ids(&good), [1, 2]);
    let prices = good.column(2).as_primitive::<Float64Type>();
    assert_eq!(prices.value(0), 1.5);
    assert!(prices.is_null(1));
    let outcome = file.outcome();
    assert_eq!(outcome.verdict, Verdict::Accepted);
    assert_eq!((outcome.rows, outcome.accepted_rows), (2, 2));
    assert!(!outcome.drifted());
}

#[test]
fn strict_names_every_extra_and_missing_column() {
    let mut file = FileContract::new(contract(""), "s3://b/k.csv");
    let batch = text_batch(&[
        ("id", vec![Some("1")]),
        ("colour", vec![Some("red")]),
        ("size", vec![Some("L")]),
    ]);
    let err = file.apply(&batch).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::SchemaError);
    let message = err.to_string();
    assert!(
        message.contains("route `orders` (strict schema)")
            && message.contains("`colour`, `size`")
            && message.contains("lacks declared columns: `status`, `price`"),
        "{message}"
    );
    assert_eq!(file.outcome().verdict, Verdict::Rejected);
}

#[test]
fn add_columns_keeps_new_columns_and_fills_missing_ones_with_nulls() {
    let mut file = FileContract::new(contract("schema_mode = \"add_columns\""), "s3://b/k");
    let batch = text_batch(&[
        ("id", vec![Some("1"), Some("2")]),
        ("discount", vec![Some("5"), None]),
    ]);
    let good = file.apply(&batch).unwrap().good.unwrap();
    let schema = good.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["id", "status", "price", "discount"]);
    assert!(good.schema().field(3).is_nullable());
    assert_eq!(good.column(1).null_count(), 2);
    assert_eq!(
        strings(&good, "discount"),
        [Some("5".to_owned()), None],
        "new columns keep their values"
    );
    let outcome = file.outcome();
    assert_eq!(outcome.columns_added, ["discount"]);
    assert_eq!(outcome.columns_missing, ["status", "price"]);
    assert_eq!(file.output_schema(), good.schema());
}

#[test]
fn a_missing_not_null_column_is_a_schema_error_in_every_mode() {
    for mode in ["add_columns", "rescue"] {
        let mut file =
            FileContract::new(contract(&format!("schema_mode = \"{mode}\"")), "s3://b/k");
        let err = file
            .apply(&text_batch(&[("status", vec![Some("new")])]))
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::SchemaError, "{mode}");
        assert!(err.to_string().contains("`id`"), "{err}");
    }
}

#[test]
fn rescue_keeps_new_columns_and_unparsable_values_as_json() {
    let mut file = FileContract::new(contract("schema_mode = \"rescue\""), "s3://b/k");
    let batch = text_batch(&[
        ("id", vec![Some("1"), Some("2"), Some("3")]),
        ("status", vec![Some("new"), Some("new"), None]),
        ("price", vec![Some("9.5"), Some("n/a"), None]),
        ("colour", vec![Some("red"), None, None]),
    ]);
    let applied = file.apply(&batch).unwrap();
    assert!(applied.bad.is_none(), "rescued values are not bad rows");
    let good = applied.good.unwrap();
    assert_eq!(good.schema().field(3).name(), RESCUED_COLUMN);
    let rescued = strings(&good, RESCUED_COLUMN);
    assert_eq!(rescued[0].as_deref(), Some(r#"{"colour":"red"}"#));
    assert_eq!(rescued[1].as_deref(), Some(r#"{"price":"n/a"}"#));
    assert_eq!(rescued[2], None);
    assert!(good.column(2).is_null(1), "the unparsable value is null");
    let outcome = file.outcome();
    assert_eq!(outcome.rescued_rows, 2);
    assert_eq!(outcome.columns_rescued, ["colour"]);
    assert_eq!(outcome.verdict, Verdict::Accepted);
}

#[test]
fn reject_quotes_the_first_bad_rows_with_their_values() {
    let mut file = FileContract::new(contract("reported_rows = 2"), "s3://b/k.csv");
    let ok = text_batch(&[
        ("id", vec![Some("1")]),
        ("status", vec![Some("new")]),
        ("price", vec![Some("1")]),
    ]);
    file.apply(&ok).unwrap();
    let bad = text_batch(&[
        ("id", vec![Some("2"), None, Some("x"), Some("y")]),
        ("status", vec![Some("new"); 4]),
        ("price", vec![Some("abc"), Some("2"), Some("3"), Some("4")]),
    ]);
    let err = file.apply(&bad).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::ContractViolation);
    assert!(!err.is_retryable());
    let message = err.to_string();
    assert!(
        message.contains(r#"row 2: `price`: "abc" is not a Float64 value"#)
            && message.contains("row 3: `id` is null")
            && message.contains(r#""status":"new""#)
            && message.contains("(and 2 more in the same batch)")
            && !message.contains("row 4"),
        "{message}"
    );
    assert_eq!(file.outcome().verdict, Verdict::Rejected);
}

#[test]
fn quarantine_splits_rows_and_keeps_every_one() {
    let contract = contract(
        r#"
        bad_rows = "quarantine"
        quarantine_sink = "bad"
        checks = [
            { column = "status", one_of = ["new", "shipped"] },
            { column = "price", min = 0, max = 100 },
        ]
        "#,
    );
    let mut file = FileContract::new(contract, "s3://b/k.csv");
    let batch = text_batch(&[
        (
            "id",
            vec![Some("1"), Some("2"), Some("3"), Some("4"), Some("5")],
        ),
        (
            "status",
            vec![
                Some("new"),
                Some("lost"),
                Some("shipped"),
                None,
                Some("new"),
            ],
        ),
        (
            "price",
            vec![Some("10"), Some("10"), Some("-1"), Some("100"), Some("abc")],
        ),
    ]);
    let applied = file.apply(&batch).unwrap();
    let good = applied.good.unwrap();
    assert_eq!(ids(&good), [1, 4], "a null passes one_of unless not_null");
    let bad = applied.bad.unwrap();
    assert_eq!(bad.schema(), quarantine_schema());
    let rows: Vec<i64> = bad
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .values()
        .to_vec();
    assert_eq!(rows, [2, 3, 5]);
    let reasons = strings(&bad, "reason");
    assert!(
        reasons[0]
            .as_deref()
            .unwrap()
            .contains(r#""lost" is not one of ["new", "shipped"]"#),
        "{reasons:?}"
    );
    assert!(
        reasons[1].as_deref().unwrap().contains("below min 0"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].as_deref().unwrap().contains("not a Float64"),
        "{reasons:?}"
    );
    let records = strings(&bad, "record");
    assert_eq!(
        records[2].as_deref(),
        Some(r#"{"id":"5","price":"abc","status":"new"}"#)
    );
    let outcome = file.outcome();
    assert_eq!(outcome.verdict, Verdict::Quarantined);
    assert_eq!(
        (
            outcome.rows,
            outcome.accepted_rows,
            outcome.quarantined_rows
        ),
        (5, 2, 3)
    );
}

#[test]
fn not_null_and_regex_checks_flag_each_row_once_per_rule() {
    let contract = contract(
        r#"
        bad_rows = "quarantine"
        quarantine_sink = "bad"
        checks = [{ column = "status", not_null = true, regex = "[a-z]+" }]
        "#,
    );
    let mut file = FileContract::new(contract, "s3://b/k.csv");
    let batch = text_batch(&[
        ("id", vec![Some("1"), Some("2"), Some("3")]),
        ("status", vec![Some("new"), None, Some("new2")]),
        ("price", vec![None, None, None]),
    ]);
    let applied = file.apply(&batch).unwrap();
    assert_eq!(ids(&applied.good.unwrap()), [1]);
    let reasons = strings(&applied.bad.unwrap(), "reason");
    assert_eq!(reasons[0].as_deref(), Some("`status` is null"));
    assert_eq!(
        reasons[1].as_deref(),
        Some(r#"`status`: "new2" does not match /[a-z]+/"#),
        "the whole value must match"
    );
}

#[test]
fn unique_holds_across_batches_among_accepted_rows_only() {
    let contract = contract(
        r#"
        bad_rows = "quarantine"
        quarantine_sink = "bad"
        checks = [{ column = "id", unique = true }, { column = "price", max = 10 }]
        "#,
    );
    let mut file = FileContract::new(contract, "s3://b/k.csv");
    let batch = |ids: Vec<Option<&str>>, prices: Vec<Option<&str>>| {
        let statuses = vec![None; ids.len()];
        text_batch(&[("id", ids), ("status", statuses), ("price", prices)])
    };
    // Row 2 breaks `max`, so its id is not taken; row 3 repeats row 1.
    let first = file
        .apply(&batch(
            vec![Some("1"), Some("2"), Some("1")],
            vec![None, Some("99"), None],
        ))
        .unwrap();
    assert_eq!(ids(&first.good.unwrap()), [1]);
    let reasons = strings(&first.bad.unwrap(), "reason");
    assert_eq!(
        reasons[1].as_deref(),
        Some(r#"`id`: "1" repeats row 1; the column is unique"#)
    );
    let second = file
        .apply(&batch(vec![Some("2"), Some("1")], vec![None, None]))
        .unwrap();
    assert_eq!(
        ids(&second.good.unwrap()),
        [2],
        "2 was never accepted before"
    );
    let reasons = strings(&second.bad.unwrap(), "reason");
    assert!(reasons[0].as_deref().unwrap().contains("repeats row 1"));
    let outcome = file.outcome();
    assert_eq!(
        outcome.rows,
        outcome.accepted_rows + outcome.quarantined_rows
    );
}

#[test]
fn parquet_columns_of_another_type_are_cast_or_flagged() {
    let mut file = FileContract::new(contract(""), "s3://b/k.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("status", DataType::Utf8, true),
        Field::new("price", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(arrow::array::Int32Array::from(vec![7])),
            Arc::new(StringArray::from(vec!["new"])),
            Arc::new(Int64Array::from(vec![3])),
        ],
    )
    .unwrap();
    let good = file.apply(&batch).unwrap().good.unwrap();
    assert_eq!(ids(&good), [7]);
    assert_eq!(good.column(2).as_primitive::<Float64Type>().value(0), 3.0);
}

#[test]
fn compile_errors_name_the_route_the_check_and_the_column() {
    let err = compile_error(r#"checks = [{ column = "colour", not_null = true }]"#);
    assert_eq!(err.field, "checks[0]");
    assert!(
        err.message.contains("route `orders`")
            && err
                .message
                .contains("`colour` is not in the route's schema (id, status, price)"),
        "{}",
        err.message
    );
    let err = compile_error(r#"checks = [{ column = "id", min = "ten" }]"#);
    assert!(
        err.message
            .contains("column `id`: min: \"ten\" is not a Int64 value"),
        "{}",
        err.message
    );
    let err = compile_error(r#"checks = [{ column = "id", one_of = [1, 2.5] }]"#);
    assert!(err.message.contains("one_of: 2.5"), "{}", err.message);
    let err = compile_error(r#"checks = [{ column = "price", min = 5, max = 1 }]"#);
    assert!(
        err.message.contains("min 5 is above max 1"),
        "{}",
        err.message
    );
    let err = compile_error(r#"checks = [{ column = "id", regex = "\\d+" }]"#);
    assert!(
        err.message.contains("a regex checks text"),
        "{}",
        err.message
    );
    let err = compile_error(r#"checks = [{ column = "status", regex = "(" }]"#);
    assert!(
        err.message.contains("column `status`: regex:"),
        "{}",
        err.message
    );
    let err = compile_error(r#"checks = [{ column = "status", min = "a" }]"#);
    assert!(err.message.contains("has no order"), "{}", err.message);
    let err = compile_error(r#"checks = [{ column = "status" }]"#);
    assert!(err.message.contains("names no rule"), "{}", err.message);
    let err = compile_error(
        r#"checks = [{ column = "id", unique = true }, { column = "id", not_null = true }]"#,
    );
    assert_eq!(err.field, "checks[1]");
    assert!(err.message.contains("two checks"), "{}", err.message);
    let err = compile_error("reported_rows = 0");
    assert_eq!(err.field, "reported_rows");

    let config: ContractConfig = toml::from_str("").unwrap();
    let err = Contract::compile("orders", None, &config).unwrap_err();
    assert!(
        err.message.contains("declare the columns"),
        "{}",
        err.message
    );
}

#[test]
fn describe_lists_every_column_with_its_rules() {
    let contract = contract(
        r#"
        schema_mode = "rescue"
        bad_rows = "quarantine"
        quarantine_sink = "bad"
        checks = [{ column = "status", one_of = ["new"], unique = true }]
        "#,
    );
    let lines = contract.describe();
    assert_eq!(
        lines,
        [
            "schema_mode rescue, bad rows: quarantined to sink `bad`",
            "column id Int64: not null",
            r#"column status Utf8: one of ["new"], unique in the file"#,
            "column price Float64",
            "column _rescued Utf8: JSON of new columns and values that do not parse",
        ]
    );
}

#[test]
fn an_outcome_serializes_without_empty_lists() {
    let mut outcome = ContractOutcome::new(SchemaMode::AddColumns);
    outcome.rows = 3;
    outcome.accepted_rows = 3;
    outcome.columns_added = vec!["discount".into()];
    assert_eq!(
        outcome.to_json(),
        r#"{"verdict":"accepted","schema_mode":"add_columns","rows":3,"accepted_rows":3,"quarantined_rows":0,"rescued_rows":0,"columns_added":["discount"]}"#
    );
}

#[test]
fn the_example_config_is_valid_and_prints_its_contracts() {
    let example = include_str!("../../examples/contracts.toml");
    let config = crate::config::Config::from_toml_str(example).expect("examples/contracts.toml");
    let router = crate::route::Router::new(&config.routes).unwrap();
    let described: Vec<Vec<String>> = router
        .routes()
        .iter()
        .map(|route| route.contract.as_ref().unwrap().describe())
        .collect();
    assert_eq!(described.len(), 3);
    assert!(
        described[0].contains(&"column sku Utf8: matches /[A-Z]{3}-[0-9]+/".to_owned()),
        "{described:?}"
    );
}

#[test]
fn a_header_only_file_still_has_its_columns_checked() {
    let header = Schema::new(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("colour", DataType::Utf8, true),
    ]);
    let mut file = FileContract::new(contract(""), "s3://b/k.csv");
    let err = file.finish(&header).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaError);
    assert!(err.to_string().contains("`colour`"), "{err}");

    // add_columns: the new column is in the (empty) output's schema.
    let mut file = FileContract::new(contract("schema_mode = \"add_columns\""), "s3://b/k.csv");
    file.finish(&header).unwrap();
    assert_eq!(file.output_schema().fields().len(), 4);
    assert_eq!(file.outcome().columns_added, ["colour"]);

    // A file without even a header passes, with the declared columns.
    let mut file = FileContract::new(contract(""), "s3://b/k.csv");
    file.finish(&Schema::empty()).unwrap();
    assert_eq!(file.output_schema(), declared());
    assert_eq!(file.outcome().verdict, Verdict::Accepted);
}

#[test]
fn with_two_unique_columns_a_row_takes_its_values_only_if_it_repeats_neither() {
    let contract = contract(
        r#"
        bad_rows = "quarantine"
        quarantine_sink = "bad"
        checks = [{ column = "id", unique = true }, { column = "status", unique = true }]
        "#,
    );
    let mut file = FileContract::new(contract, "s3://b/k.csv");
    let batch = text_batch(&[
        ("id", vec![Some("1"), Some("2"), Some("3"), Some("2")]),
        ("status", vec![Some("a"), Some("a"), Some("b"), Some("c")]),
        ("price", vec![None; 4]),
    ]);
    let applied = file.apply(&batch).unwrap();
    // Row 2 repeats `a`, so its id 2 is not taken: row 4's id 2 is new.
    assert_eq!(ids(&applied.good.unwrap()), [1, 3, 2]);
    let reasons = strings(&applied.bad.unwrap(), "reason");
    assert_eq!(
        reasons,
        [Some(
            r#"`status`: "a" repeats row 1; the column is unique"#.to_owned()
        )]
    );
}
