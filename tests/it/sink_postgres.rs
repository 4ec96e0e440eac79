//! The `postgres` sink against a real PostgreSQL server and LocalStack:
//! values and types that land, schema checks, constraint violations,
//! duplicate and racing deliveries, small-file groups (one transaction,
//! a refused object alone, a key another transaction holds), a worker
//! killed in the middle of a COPY,
//! a backend terminated mid-COPY, an unreachable database, and TLS
//! (verified with the test CA; an untrusted certificate or a wrong host
//! name left for retry).
//!
//! The server: `make test` starts it (tests/services/with-postgres.sh), or
//! run `tests/services/postgres.sh start`. `S3I_POSTGRES_URL` points
//! elsewhere, `S3I_POSTGRES_CA` at the CA certificate its TLS certificate
//! chains to (default: `tests/services/postgres.sh ca`). The sinks under
//! test trust that CA, so with the default `sslmode=prefer` every test
//! below talks TLS to the server; the assertion client does not. Each test
//! uses its own uniquely named table and ledger.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::{
    BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array, StringArray,
    TimestampMicrosecondArray, UInt16Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use s3_ingest::config::Config;

use crate::util::*;

pub(crate) fn postgres_url() -> String {
    std::env::var("S3I_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:55432/postgres".into())
}

/// The CA certificate of the test server's TLS certificate.
pub(crate) fn postgres_ca() -> String {
    let path = std::env::var("S3I_POSTGRES_CA").unwrap_or_else(|_| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/services/postgres.sh");
        let output = std::process::Command::new(script)
            .arg("ca")
            .output()
            .expect("run tests/services/postgres.sh ca");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    });
    assert!(
        std::path::Path::new(&path).is_file(),
        "no test CA certificate at {path}: `tests/services/postgres.sh start` makes it \
         (or set S3I_POSTGRES_CA)"
    );
    path
}

/// `url` with one more query parameter.
fn with_param(url: &str, param: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{param}")
}

/// A server message may quote a value whole (here a trigger's RAISE, with
/// the value in message and detail): a 100 KB value must not make a
/// 100 KB reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_quoting_a_huge_value_is_dead_lettered_with_a_bounded_reason() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-huge").await;
    let client = connect().await;
    let table = unique_table("huge");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint, name text, price float8);
             CREATE FUNCTION {table}_reject() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 RAISE EXCEPTION 'name rejected: %', NEW.name USING DETAIL = 'value ' || NEW.name;
             END $$;
             CREATE TRIGGER {table}_reject BEFORE INSERT ON {table}
                 FOR EACH ROW EXECUTE FUNCTION {table}_reject();"
        ))
        .await
        .unwrap();
    let worker = fixture.start_worker(config(&fixture, &table, None, ""));
    let name = "y".repeat(100 * 1024);
    fixture
        .put("in/huge.csv", format!("id,name,price\n1,{name},2.5\n"))
        .await;

    let letters = fixture.wait_for_dead_letters(1).await;
    let reason = &letters[0].error;
    assert!(
        reason.contains("P0001") && reason.contains("name rejected: yyy"),
        "{}",
        &reason[..300.min(reason.len())]
    );
    assert!(reason.contains(" more bytes]"), "the cut is marked");
    assert!(
        reason.len() < 3 * 1024,
        "a reason of {} bytes",
        reason.len()
    );
    fixture.wait_for_empty_queue().await;
    assert_eq!(count(&client, &table).await, 0);
    worker.stop().await;
}

/// A client for assertions; fails loudly with a hint when the server is
/// not there (tests never skip).
pub(crate) async fn connect() -> tokio_postgres::Client {
    let url = postgres_url();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|err| {
            panic!(
                "cannot connect to PostgreSQL at {url}: {err} \
                 (`make test` starts it; or run tests/services/postgres.sh start)"
            )
        });
    tokio::spawn(connection);
    client
}

fn unique_table(prefix: &str) -> String {
    format!("s3i_{prefix}_{}", unique_id())
}

/// One route for every key into sink `pg`, with an optional explicit schema.
fn routes(schema: Option<&str>) -> String {
    let schema = schema.map(|s| format!("schema = {s}")).unwrap_or_default();
    format!(
        r#"
        [[routes]]
        name = "all"
        key_glob = "**"
        sink = "pg"
        {schema}
        "#
    )
}

/// The `postgres` sink for `table`, with its own ledger `<table>_ledger`,
/// trusting the test CA.
fn sink_toml(url: &str, table: &str, extra: &str) -> String {
    sink_toml_without_ca(
        url,
        table,
        &format!("ca_file = \"{}\"\n{extra}", postgres_ca()),
    )
}

fn sink_toml_without_ca(url: &str, table: &str, extra: &str) -> String {
    format!(
        r#"
        [sinks.pg]
        type = "postgres"
        url = "{url}"
        table = "{table}"
        ledger_table = "{table}_ledger"
        {extra}
        "#
    )
}

fn config(fixture: &Fixture, table: &str, schema: Option<&str>, extra: &str) -> Config {
    fixture.config_with_sinks(
        Some(&routes(schema)),
        "",
        &sink_toml(&postgres_url(), table, extra),
    )
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// (key, rows, committed) for every ledger row, by key.
async fn ledger(client: &tokio_postgres::Client, table: &str) -> Vec<(String, Option<i64>, bool)> {
    client
        .query(
            &format!("SELECT key, rows, committed_at IS NOT NULL FROM {table}_ledger ORDER BY key"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

async fn ledger_count(client: &tokio_postgres::Client, table: &str) -> i64 {
    // The ledger exists once the sink opened its first writer.
    match client
        .query_one(&format!("SELECT count(*) FROM {table}_ledger"), &[])
        .await
    {
        Ok(row) => row.get(0),
        Err(_) => 0,
    }
}

/// Every row as text, in `columns` order, sorted by the first column.
async fn rows_as_text(
    client: &tokio_postgres::Client,
    table: &str,
    columns: &[&str],
) -> Vec<Vec<Option<String>>> {
    let select: Vec<String> = columns.iter().map(|c| format!("{c}::text")).collect();
    client
        .query(
            &format!(
                "SELECT {} FROM {table} ORDER BY {}",
                select.join(", "),
                columns[0]
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (0..columns.len()).map(|i| row.get(i)).collect())
        .collect()
}

fn text(values: &[Option<&str>]) -> Vec<Option<String>> {
    values.iter().map(|v| v.map(str::to_owned)).collect()
}

/// The backend whose COPY into `table` waits on a lock (see
/// [`block_copy_at_id`]), if any.
async fn blocked_copy_backend(client: &tokio_postgres::Client, table: &str) -> Option<i32> {
    client
        .query_opt(
            "SELECT pid FROM pg_stat_activity
             WHERE pid <> pg_backend_pid() AND state = 'active' AND wait_event_type = 'Lock'
               AND query LIKE 'COPY %' || $1 || '%'",
            &[&table],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

/// How many backends run a COPY into `table`, in any state.
async fn copy_backend_count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE pid <> pg_backend_pid() AND query LIKE 'COPY %' || $1 || '%'",
            &[&table],
        )
        .await
        .unwrap()
        .get(0)
}

/// Creates `table` with a primary key and holds an uncommitted row with
/// `id` in another connection: the worker's COPY, when it reaches its own
/// row `id`, waits on that transaction. The worker is then reliably in the
/// middle of a COPY (earlier rows sent, no COMMIT) however fast it is.
/// Rolling back the returned connection's transaction lets it go.
async fn block_copy_at_id(
    client: &tokio_postgres::Client,
    table: &str,
    id: i64,
) -> tokio_postgres::Client {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, price float8)"
        ))
        .await
        .unwrap();
    let blocker = connect().await;
    blocker
        .batch_execute(&format!(
            "BEGIN; INSERT INTO {table} VALUES ({id}, 'blocker', 0)"
        ))
        .await
        .unwrap();
    blocker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_rows_land_with_their_types_nulls_decimals_and_timestamps() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-csv").await;
    let client = connect().await;
    let table = unique_table("csv");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (
                id bigint PRIMARY KEY, name text, price numeric(12, 2),
                ordered_at timestamp, day date, paid boolean,
                loaded_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await
        .unwrap();
    let schema = r#"[
        { name = "id", type = "int64", nullable = false },
        { name = "name", type = "utf8" },
        { name = "price", type = "Decimal128(12, 2)" },
        { name = "ordered_at", type = "timestamp_ms" },
        { name = "day", type = "date" },
        { name = "paid", type = "bool" },
    ]"#;
    let (worker, _) = fixture
        .start_worker_with_stats(config(&fixture, &table, Some(schema), ""))
        .await;
    let etag = fixture
        .put(
            "in/orders.csv",
            "id,name,price,ordered_at,day,paid\n\
             1,apple,12.34,2026-11-27T10:00:00.123,2026-11-27,true\n\
             2,,,,,\n\
             3,pear,-0.05,1999-12-31T23:59:59,1970-01-01,false\n",
        )
        .await;

    wait_until("the ledger row and an empty queue", WAIT, || async {
        ledger_count(&client, &table).await == 1 && fixture.queue_is_empty().await
    })
    .await;
    let columns = ["id", "name", "price", "ordered_at", "day", "paid"];
    assert_eq!(
        rows_as_text(&client, &table, &columns).await,
        vec![
            text(&[
                Some("1"),
                Some("apple"),
                Some("12.34"),
                Some("2026-11-27 10:00:00.123"),
                Some("2026-11-27"),
                Some("true")
            ]),
            text(&[Some("2"), None, None, None, None, None]),
            text(&[
                Some("3"),
                Some("pear"),
                Some("-0.05"),
                Some("1999-12-31 23:59:59"),
                Some("1970-01-01"),
                Some("false")
            ]),
        ]
    );
    // The extra column with a default was filled by the server.
    let defaults: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE loaded_at IS NOT NULL"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(defaults, 3);
    let row = client
        .query_one(
            &format!(
                "SELECT target_table, bucket, key, version_identity, etag, rows, route, sink,
                        committed_at >= started_at
                 FROM {table}_ledger"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), table, "the table as configured");
    assert_eq!(row.get::<_, String>(1), fixture.bucket);
    assert_eq!(row.get::<_, String>(2), "in/orders.csv");
    assert_eq!(row.get::<_, String>(3), etag);
    assert_eq!(
        row.get::<_, Option<String>>(4).as_deref(),
        Some(etag.as_str())
    );
    assert_eq!(row.get::<_, Option<i64>>(5), Some(3));
    assert_eq!(row.get::<_, String>(6), "all");
    assert_eq!(row.get::<_, String>(7), "pg");
    assert!(row.get::<_, bool>(8));
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inferred_csv_columns_fit_narrower_integer_and_numeric_columns() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-infer").await;
    let client = connect().await;
    let table = unique_table("infer");
    // CSV inference says Int64 and Float64; the table is narrower/exact.
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id integer, name varchar(40), price numeric)"
        ))
        .await
        .unwrap();
    let (worker, _) = fixture
        .start_worker_with_stats(config(&fixture, &table, None, ""))
        .await;
    fixture.put("in/items.csv", csv_rows(1000)).await;

    wait_until("1000 rows and an empty queue", WAIT, || async {
        count(&client, &table).await == 1000 && fixture.queue_is_empty().await
    })
    .await;
    let last = client
        .query_one(
            &format!("SELECT id, name, price::text FROM {table} WHERE id = 999"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(last.get::<_, String>(1), "item 999");
    assert_eq!(last.get::<_, String>(2), "1998.5");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_only_csv_records_its_ledger_row_without_touching_the_table() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-empty").await;
    let client = connect().await;
    let table = unique_table("empty");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint NOT NULL, price numeric)"
        ))
        .await
        .unwrap();
    let (worker, _) = fixture
        .start_worker_with_stats(config(&fixture, &table, None, ""))
        .await;
    // Its columns infer as text, which a bigint column would refuse; with
    // no rows there is nothing to check.
    fixture.put("in/header-only.csv", "id,price\n").await;

    wait_until("the ledger row and an empty queue", WAIT, || async {
        ledger_count(&client, &table).await == 1 && fixture.queue_is_empty().await
    })
    .await;
    assert_eq!(
        ledger(&client, &table).await,
        vec![("in/header-only.csv".to_owned(), Some(0), true)]
    );
    assert_eq!(count(&client, &table).await, 0);
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

fn parquet_file() -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("score", DataType::Float64, true),
        Field::new("label", DataType::Utf8, true),
        Field::new(
            "seen_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("amount", DataType::Decimal128(10, 3), true),
        Field::new("blob", DataType::Binary, true),
        Field::new("flag", DataType::Boolean, true),
        Field::new("day", DataType::Date32, true),
        Field::new("small", DataType::UInt16, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int32Array::from(vec![1, 2, 3])),
            Arc::new(Float64Array::from(vec![Some(0.25), None, Some(-1e10)])),
            Arc::new(StringArray::from(vec![Some("héllo"), None, Some("")])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![Some(1_764_237_600_000_001), None, Some(0)])
                    .with_timezone("UTC"),
            ),
            Arc::new(
                Decimal128Array::from(vec![Some(1_234_567), None, Some(-1)])
                    .with_precision_and_scale(10, 3)
                    .unwrap(),
            ),
            Arc::new(BinaryArray::from(vec![
                Some(&b"\x00\xff"[..]),
                None,
                Some(&b""[..]),
            ])),
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
            Arc::new(Date32Array::from(vec![Some(20_419), None, Some(-1)])),
            Arc::new(UInt16Array::from(vec![Some(65_535), None, Some(0)])),
        ],
    )
    .unwrap();
    let mut buffer = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut buffer, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    buffer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_file_creates_the_table_when_create_table_is_set() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-parquet").await;
    let client = connect().await;
    let table = unique_table("parquet");
    let (worker, _) = fixture
        .start_worker_with_stats(config(&fixture, &table, None, "create_table = true"))
        .await;
    fixture.put("in/data.parquet", parquet_file()).await;

    wait_until("3 rows and an empty queue", WAIT, || async {
        ledger_count(&client, &table).await == 1 && fixture.queue_is_empty().await
    })
    .await;
    let types: Vec<(String, String, String)> = client
        .query(
            "SELECT column_name::text, data_type::text, is_nullable::text
             FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let expected = [
        ("id", "integer", "NO"),
        ("score", "double precision", "YES"),
        ("label", "text", "YES"),
        ("seen_at", "timestamp with time zone", "YES"),
        ("amount", "numeric", "YES"),
        ("blob", "bytea", "YES"),
        ("flag", "boolean", "YES"),
        ("day", "date", "YES"),
        ("small", "integer", "YES"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(types, expected);

    client.batch_execute("SET TIME ZONE 'UTC'").await.unwrap();
    let columns = [
        "id", "score", "label", "seen_at", "amount", "blob", "flag", "day", "small",
    ];
    assert_eq!(
        rows_as_text(&client, &table, &columns).await,
        vec![
            text(&[
                Some("1"),
                Some("0.25"),
                Some("héllo"),
                Some("2025-11-27 10:00:00.000001+00"),
                Some("1234.567"),
                Some("\\x00ff"),
                Some("true"),
                Some("2025-11-27"),
                Some("65535"),
            ]),
            text(&[Some("2"), None, None, None, None, None, None, None, None]),
            text(&[
                Some("3"),
                Some("-10000000000"),
                Some(""),
                Some("1970-01-01 00:00:00+00"),
                Some("-0.001"),
                Some("\\x"),
                Some("false"),
                Some("1969-12-31"),
                Some("0"),
            ]),
        ]
    );
    let precision: (i32, i32) = client
        .query_one(
            "SELECT numeric_precision, numeric_scale FROM information_schema.columns
             WHERE table_name = $1 AND column_name = 'amount'",
            &[&table],
        )
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!(precision, (10, 3));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_mismatches_are_dead_lettered_naming_the_column() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-mismatch").await;
    let client = connect().await;
    let table = unique_table("mismatch");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint NOT NULL, name text, price date)"
        ))
        .await
        .unwrap();
    let (worker, _) = fixture
        .start_worker_with_stats(config(&fixture, &table, None, ""))
        .await;
    fixture
        .put("in/extra.csv", "id,name,colour\n1,a,red\n")
        .await;
    fixture.put("in/no-id.csv", "name\na\n").await;
    fixture.put("in/wrong-type.csv", "id,price\n1,2.5\n").await;

    let mut letters = fixture.wait_for_dead_letters(3).await;
    letters.sort_by(|a, b| a.key.cmp(&b.key));
    for letter in &letters {
        assert_eq!(letter.error_kind.as_str(), "schema_error", "{letter:?}");
    }
    let reasons: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
    assert!(reasons[0].contains("no column `colour`"), "{}", reasons[0]);
    assert!(
        reasons[1].contains("column `id`") && reasons[1].contains("NOT NULL"),
        "{}",
        reasons[1]
    );
    assert!(
        reasons[2].contains("column `price`") && reasons[2].contains("Float64"),
        "{}",
        reasons[2]
    );
    fixture.wait_for_empty_queue().await;
    assert_eq!(count(&client, &table).await, 0);
    assert_eq!(ledger_count(&client, &table).await, 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_header_is_dead_lettered_when_the_table_is_created() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-nul-header").await;
    let table = unique_table("nul");
    let (worker, _) = fixture
        .start_worker_with_stats(config(&fixture, &table, None, "create_table = true"))
        .await;
    fixture.put("in/nul.csv", "id,na\0me\n1,a\n").await;
    let letters = fixture.wait_for_dead_letters(1).await;
    assert_eq!(letters[0].error_kind.as_str(), "sink_error", "{letters:?}");
    assert!(
        letters[0].error.contains("NUL byte"),
        "{}",
        letters[0].error
    );
    fixture.wait_for_empty_queue().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_key_conflict_is_dead_lettered_and_nothing_is_committed() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-pk").await;
    let client = connect().await;
    let table = unique_table("pk");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, price float8);
             INSERT INTO {table} VALUES (5, 'already here', 1);"
        ))
        .await
        .unwrap();
    let (worker, _) = fixture
        // One connection: the failed load's must not come back aborted.
        .start_worker_with_stats(config(&fixture, &table, None, "pool_size = 1"))
        .await;
    fixture.put("in/conflict.csv", csv_rows(10)).await;

    let letters = fixture.wait_for_dead_letters(1).await;
    assert_eq!(letters[0].error_kind.as_str(), "sink_error");
    assert!(
        letters[0].error.contains("23505") && letters[0].error.contains(&table),
        "{}",
        letters[0].error
    );
    fixture.wait_for_empty_queue().await;
    assert_eq!(
        count(&client, &table).await,
        1,
        "only the row that was there"
    );
    assert_eq!(ledger_count(&client, &table).await, 0);

    fixture
        .put("in/fine.csv", "id,name,price\n100,new,2.5\n")
        .await;
    wait_until("the next file committed", WAIT, || async {
        ledger_count(&client, &table).await == 1 && fixture.queue_is_empty().await
    })
    .await;
    assert_eq!(count(&client, &table).await, 2);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_keeps_the_file_queued_until_it_is_restored() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-grant").await;
    let client = connect().await;
    let table = unique_table("grant");
    // The sink logs in as its own role, which may create its ledger and
    // read and insert into the table, until its INSERT is revoked.
    let role = format!("{table}_role");
    client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             GRANT USAGE, CREATE ON SCHEMA public TO {role};
             CREATE TABLE {table} (id bigint, name text, price float8);
             GRANT SELECT, INSERT ON {table} TO {role};
             REVOKE INSERT ON {table} FROM {role};"
        ))
        .await
        .unwrap();
    let mut url = reqwest::Url::parse(&postgres_url()).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(None).unwrap();
    let config = fixture.config_with_sinks(
        Some(&routes(None)),
        "",
        &sink_toml(url.as_str(), &table, ""),
    );
    let (running, worker, addr) = fixture.start_worker_with_status(config).await;
    let stats = worker.stats();
    fixture.put("in/orders.csv", csv_rows(10)).await;

    wait_until("the refusal seen as a deployment problem", WAIT, || async {
        worker
            .deployment()
            .problems()
            .iter()
            .any(|p| p.component == "sink:pg" && p.code == "42501")
    })
    .await;
    let (status, reason) = http_get(&addr, "/readyz").await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("GRANT"), "says what to fix: {reason}");
    assert!(fixture.take_dead_letters().await.is_empty());

    client
        .batch_execute(&format!("GRANT INSERT ON {table} TO {role};"))
        .await
        .unwrap();
    wait_until(
        "the file committed once the grant is back",
        WAIT,
        || async { ledger_count(&client, &table).await == 1 && fixture.queue_is_empty().await },
    )
    .await;
    assert_eq!(count(&client, &table).await, 10);
    assert!(fixture.take_dead_letters().await.is_empty());
    assert_eq!(stats.objects_dead_lettered.load(Ordering::Relaxed), 0);
    assert_eq!(http_get(&addr, "/readyz").await.0, 200, "ready again");
    running.stop().await;
}

/// The ledger's layout version lives in its table comment: a ledger
/// written by a newer s3-ingest is refused (the file waits, uncounted), and
/// one from before versions were kept is taken as version 1 and labelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_schema_version_is_checked_and_labelled() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-ledger-version").await;
    let client = connect().await;
    let table = unique_table("ledgerv");
    let ledger = format!("{table}_ledger");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint, name text, price float8);
             CREATE TABLE {ledger} (
                 target_table text NOT NULL, bucket text NOT NULL, key text NOT NULL,
                 version_identity text NOT NULL, version_id text, etag text,
                 size bigint NOT NULL, route text NOT NULL, sink text NOT NULL, rows bigint,
                 started_at timestamptz NOT NULL DEFAULT now(), committed_at timestamptz,
                 PRIMARY KEY (target_table, bucket, key, version_identity));
             COMMENT ON TABLE {ledger} IS 's3-ingest ledger schema 99';"
        ))
        .await
        .unwrap();
    let (running, worker, addr) = fixture
        .start_worker_with_status(config(&fixture, &table, None, ""))
        .await;
    let stats = worker.stats();
    fixture.put("in/orders.csv", csv_rows(10)).await;

    wait_until(
        "the newer ledger refused as a deployment problem",
        WAIT,
        || async {
            worker
                .deployment()
                .problems()
                .iter()
                .any(|p| p.component == "sink:pg" && p.code == "ledger_schema")
        },
    )
    .await;
    let (status, reason) = http_get(&addr, "/readyz").await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("schema version 99"), "{reason}");
    assert_eq!(count(&client, &table).await, 0);
    assert!(fixture.take_dead_letters().await.is_empty());

    // A ledger from before versions were kept: no comment.
    client
        .batch_execute(&format!("COMMENT ON TABLE {ledger} IS NULL;"))
        .await
        .unwrap();
    wait_until(
        "the file committed into the unversioned ledger",
        WAIT,
        || async { ledger_count(&client, &table).await == 1 && fixture.queue_is_empty().await },
    )
    .await;
    assert_eq!(count(&client, &table).await, 10);
    let comment: Option<String> = client
        .query_one(
            &format!("SELECT obj_description('{ledger}'::regclass, 'pg_class')"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(comment.as_deref(), Some("s3-ingest ledger schema 2"));
    // Migrated from version 1: the contract outcome's column was added.
    let contract_column: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns
             WHERE table_name = $1 AND column_name = 'contract'",
            &[&ledger],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(contract_column, 1);
    assert_eq!(stats.objects_dead_lettered.load(Ordering::Relaxed), 0);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_again_commits_its_rows_once() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-dup").await;
    let client = connect().await;
    let table = unique_table("dup");
    let (worker, stats) = fixture
        .start_worker_with_stats(config(&fixture, &table, None, "create_table = true"))
        .await;
    let body = csv_rows(500);
    let size = body.len() as u64;
    let etag = fixture.put("in/once.csv", body).await;
    wait_until("the first delivery committed", WAIT, || async {
        stats.objects_committed.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(count(&client, &table).await, 500);

    let event = s3_event(&fixture.bucket, &[("in/once.csv", etag.as_str(), size)]).to_string();
    fixture.send_raw(&event).await;
    fixture.send_raw(&event).await;
    wait_until(
        "both redeliveries handled and an empty queue",
        WAIT,
        || async {
            stats.objects_committed.load(Ordering::Relaxed) >= 3 && fixture.queue_is_empty().await
        },
    )
    .await;
    assert_eq!(count(&client, &table).await, 500);
    assert_eq!(
        ledger(&client, &table).await,
        vec![("in/once.csv".to_owned(), Some(500), true)]
    );
    assert_eq!(stats.objects_committed.load(Ordering::Relaxed), 3);
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_racing_on_the_same_object_commit_it_once() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-race").await;
    let client = connect().await;
    let table = unique_table("race");
    let config = config(&fixture, &table, None, "create_table = true");
    let (first, first_stats) = fixture.start_worker_with_stats(config.clone()).await;
    let (second, second_stats) = fixture.start_worker_with_stats(config).await;
    let body = csv_rows(50_000);
    let size = body.len() as u64;
    let etag = fixture.put("in/raced.csv", body).await;
    // The notification plus three copies: both workers take some at once.
    let event = s3_event(&fixture.bucket, &[("in/raced.csv", etag.as_str(), size)]).to_string();
    for _ in 0..3 {
        fixture.send_raw(&event).await;
    }
    let committed = || {
        first_stats.objects_committed.load(Ordering::Relaxed)
            + second_stats.objects_committed.load(Ordering::Relaxed)
    };
    wait_until(
        "all four deliveries handled and an empty queue",
        WAIT,
        || async { committed() >= 4 && fixture.queue_is_empty().await },
    )
    .await;
    assert_eq!(count(&client, &table).await, 50_000);
    assert_eq!(
        ledger(&client, &table).await,
        vec![("in/raced.csv".to_owned(), Some(50_000), true)]
    );
    assert!(fixture.take_dead_letters().await.is_empty());
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_first_loads_of_different_files_create_the_table_once() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-create-race").await;
    let client = connect().await;
    let table = unique_table("createrace");
    let config = config(&fixture, &table, None, "create_table = true");
    let (first, first_stats) = fixture.start_worker_with_stats(config.clone()).await;
    let (second, second_stats) = fixture.start_worker_with_stats(config).await;
    let files: Vec<_> = (0..8)
        .map(|i| (format!("in/part-{i}.csv"), csv_rows(100).into_bytes()))
        .collect();
    fixture.put_many(files).await;
    wait_until("eight files committed and an empty queue", WAIT, || async {
        first_stats.objects_committed.load(Ordering::Relaxed)
            + second_stats.objects_committed.load(Ordering::Relaxed)
            >= 8
            && fixture.queue_is_empty().await
    })
    .await;
    assert_eq!(count(&client, &table).await, 800);
    assert_eq!(ledger(&client, &table).await.len(), 8);
    assert!(fixture.take_dead_letters().await.is_empty());
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_copy_and_commit_loads_the_file_once_after_redelivery() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-crash").await;
    let client = connect().await;
    let table = unique_table("crash");
    let rows = 100_000;
    let blocker = block_copy_at_id(&client, &table, rows as i64 - 1).await;
    let mut config = config(&fixture, &table, None, "");
    config.queue.visibility_timeout_secs = 5;
    let log = fixture.output_dir().join("worker.log");
    let mut child = fixture.spawn_worker_process(&config, &log);
    fixture.put("in/big.csv", csv_rows(rows)).await;

    wait_until(
        "the worker's COPY blocked on its last row",
        WAIT,
        || async { blocked_copy_backend(&client, &table).await.is_some() },
    )
    .await;
    // Mid-COPY, before COMMIT: nothing is visible yet.
    assert_eq!(count(&client, &table).await, 0);
    child.kill().unwrap(); // SIGKILL
    wait_for_exit(child).await;
    // A backend waiting on a lock does not notice its client is gone; once
    // the lock is released it reads EOF and rolls back.
    blocker.batch_execute("ROLLBACK").await.unwrap();
    wait_until("the killed worker's backend gone", WAIT, || async {
        copy_backend_count(&client, &table).await == 0
    })
    .await;
    assert_eq!(
        count(&client, &table).await,
        0,
        "the open transaction rolled back"
    );
    assert_eq!(ledger_count(&client, &table).await, 0);

    let mut child = fixture.spawn_worker_process(&config, &log);
    wait_until(
        "the file committed after redelivery and an empty queue",
        WAIT,
        || async {
            ledger(&client, &table)
                .await
                .iter()
                .any(|(_, _, committed)| *committed)
                && fixture.queue_is_empty().await
        },
    )
    .await;
    assert_eq!(count(&client, &table).await, rows as i64);
    assert_eq!(
        ledger(&client, &table).await,
        vec![("in/big.csv".to_owned(), Some(rows as i64), true)]
    );
    assert!(fixture.take_dead_letters().await.is_empty());
    child.kill().unwrap();
    wait_for_exit(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_terminated_mid_copy_is_retried_and_lands_once() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-terminate").await;
    let client = connect().await;
    let table = unique_table("terminate");
    let rows = 100_000;
    let blocker = block_copy_at_id(&client, &table, rows as i64 - 1).await;
    let mut config = config(&fixture, &table, None, "");
    config.queue.visibility_timeout_secs = 5;
    let (worker, stats) = fixture.start_worker_with_stats(config).await;
    fixture.put("in/big.csv", csv_rows(rows)).await;

    let copying = std::sync::Mutex::new(None);
    wait_until(
        "the worker's COPY blocked on its last row",
        WAIT,
        || async {
            let pid = blocked_copy_backend(&client, &table).await;
            *copying.lock().unwrap() = pid;
            pid.is_some()
        },
    )
    .await;
    let pid = copying.lock().unwrap().expect("a COPY backend");
    let terminated: bool = client
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    blocker.batch_execute("ROLLBACK").await.unwrap();

    wait_until(
        "the file committed after the retry and an empty queue",
        WAIT,
        || async {
            ledger(&client, &table)
                .await
                .iter()
                .any(|(_, _, committed)| *committed)
                && fixture.queue_is_empty().await
        },
    )
    .await;
    assert!(stats.messages_left_for_retry.load(Ordering::Relaxed) >= 1);
    assert_eq!(stats.objects_dead_lettered.load(Ordering::Relaxed), 0);
    assert_eq!(count(&client, &table).await, rows as i64);
    assert_eq!(ledger(&client, &table).await.len(), 1);
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_outlasting_max_receive_count_dead_letters_nothing() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-down").await;
    let client = connect().await;
    let table = unique_table("down");
    // Nothing listens on port 1: every connection is refused.
    let mut down = fixture.config_with_sinks(
        Some(&routes(None)),
        "",
        &sink_toml(
            "postgres://postgres@127.0.0.1:1/postgres",
            &table,
            "create_table = true\nconnect_timeout_secs = 2",
        ),
    );
    down.queue.visibility_timeout_secs = 3;
    // An outage is not the file's: more tries than this must not count.
    down.queue.max_receive_count = 2;
    let (worker, stats) = fixture.start_worker_with_stats(down).await;
    fixture.put("in/waiting.csv", csv_rows(20)).await;
    wait_until("four tries handed back", WAIT, || async {
        stats.messages_left_for_retry.load(Ordering::Relaxed) >= 4
    })
    .await;
    assert_eq!(stats.objects_dead_lettered.load(Ordering::Relaxed), 0);
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;

    // The database is back (the right address): the same message lands.
    let mut up = config(&fixture, &table, None, "create_table = true");
    up.queue.visibility_timeout_secs = 3;
    up.queue.max_receive_count = 2;
    let (worker, _) = fixture.start_worker_with_stats(up).await;
    wait_until("the rows and an empty queue", WAIT, || async {
        ledger_count(&client, &table).await == 1 && fixture.queue_is_empty().await
    })
    .await;
    assert_eq!(count(&client, &table).await, 20);
    worker.stop().await;
}

/// The sink's contract through its own API, with a pool of one connection:
/// a writer dropped mid-COPY leaves nothing (not even the table it
/// created) and its connection is not reused with the transaction open; a
/// committed version is reported as already committed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_writer_leaves_nothing_and_a_committed_version_is_not_loaded_twice() {
    let _suite = crate::shared().await;
    use s3_ingest::sink::postgres::{PostgresSink, PostgresSinkConfig};
    use s3_ingest::sink::{Lineage, Sink, SinkContext};

    let client = connect().await;
    let table = unique_table("contract");
    let config: PostgresSinkConfig = toml::from_str(&format!(
        r#"
        url = "{url}"
        table = "{table}"
        ledger_table = "{table}_ledger"
        create_table = true
        pool_size = 1
        ca_file = "{ca}"
        "#,
        url = postgres_url(),
        ca = postgres_ca(),
    ))
    .unwrap();
    let context = SinkContext {
        s3: clients().s3,
        expected_bucket_owner: None,
        aws: Default::default(),
        add_columns_routes: Default::default(),
    };
    let sink = PostgresSink::new("pg", &config, &context).unwrap();
    let lineage = Lineage {
        size: 10,
        ..lineage("vendor", "in/a.csv", "etag-1", "all")
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![Some("a"), None])),
        ],
    )
    .unwrap();
    let table_exists = || async {
        client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .unwrap()
            .get::<_, bool>(0)
    };

    let mut writer = sink.open(&lineage, schema.clone()).await.unwrap();
    writer.write(batch.clone()).await.unwrap();
    assert!(
        !table_exists().await,
        "created in the open transaction only"
    );
    drop(writer);
    assert!(!table_exists().await);
    assert_eq!(ledger_count(&client, &table).await, 0);

    // The only pooled connection: had it come back with the dropped
    // transaction open, this open would see its own uncommitted ledger row.
    let mut writer = sink.open(&lineage, schema.clone()).await.unwrap();
    writer.write(batch.clone()).await.unwrap();
    let receipt = writer.commit().await.unwrap();
    assert!(!receipt.already_committed);
    assert_eq!(receipt.rows, 2);
    assert_eq!(receipt.location, format!("public.{table}"));

    let mut writer = sink.open(&lineage, schema.clone()).await.unwrap();
    writer.write(batch).await.unwrap();
    let receipt = writer.commit().await.unwrap();
    assert!(receipt.already_committed);
    assert_eq!(receipt.rows, 2);
    assert_eq!(count(&client, &table).await, 2);
    assert_eq!(
        ledger(&client, &table).await,
        vec![("in/a.csv".to_owned(), Some(2), true)]
    );
}

/// (backends, of which on TLS) of the server connections whose
/// `application_name` is `name`.
async fn backends_on_tls(client: &tokio_postgres::Client, name: &str) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = $1",
            &[&name],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_with_the_test_ca_loads_over_a_verified_connection() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-tls").await;
    let client = connect().await;
    let table = unique_table("tls");
    // Names the sink's connections, so the server can tell which are its.
    let application = table.clone();
    let url = with_param(
        &with_param(&postgres_url(), "sslmode=require"),
        &format!("application_name={application}"),
    );
    let config = fixture.config_with_sinks(
        Some(&routes(None)),
        "",
        &sink_toml(&url, &table, "create_table = true"),
    );
    let (worker, _) = fixture.start_worker_with_stats(config).await;
    fixture.put("in/secure.csv", csv_rows(25)).await;
    wait_until("the rows and an empty queue", WAIT, || async {
        ledger_count(&client, &table).await == 1 && fixture.queue_is_empty().await
    })
    .await;
    assert_eq!(count(&client, &table).await, 25);
    assert!(fixture.take_dead_letters().await.is_empty());
    // The connection that loaded the file is back in the sink's pool.
    let (backends, on_tls) = backends_on_tls(&client, &application).await;
    assert!(backends >= 1, "the sink keeps its connection open");
    assert_eq!(on_tls, backends, "every sink connection is TLS");
    worker.stop().await;
}

/// The server's certificate is not trusted (no `ca_file`, and the test CA
/// is not in the system store): every attempt fails in the TLS handshake,
/// which is a connection error, so the object is left for retry, never
/// dead-lettered, and the log names the certificate problem. Trusted, the
/// same message lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_leaves_the_object_for_retry() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-untrusted").await;
    let client = connect().await;
    let table = unique_table("untrusted");
    let url = with_param(&postgres_url(), "sslmode=require");
    let mut untrusted = fixture.config_with_sinks(
        Some(&routes(None)),
        "",
        &sink_toml_without_ca(
            &url,
            &table,
            "create_table = true\nconnect_timeout_secs = 2",
        ),
    );
    untrusted.queue.visibility_timeout_secs = 3;
    let log = fixture.output_dir().join("untrusted-worker.log");
    let mut process = fixture.spawn_worker_process(&untrusted, &log);
    fixture.put("in/waiting.csv", csv_rows(20)).await;
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("two tries logged", WAIT, || async {
        read_log()
            .lines()
            .filter(|line| line.contains("not the file"))
            .count()
            >= 2
    })
    .await;
    process.kill().unwrap();
    process.wait().unwrap();
    let failures: Vec<String> = read_log()
        .lines()
        .filter(|line| line.contains("not the file"))
        .map(str::to_owned)
        .collect();
    assert!(
        failures
            .iter()
            .all(|line| line.contains("invalid peer certificate") && line.contains("UnknownIssuer")),
        "{failures:#?}"
    );
    assert!(fixture.take_dead_letters().await.is_empty());
    assert_eq!(ledger_count(&client, &table).await, 0);

    let mut trusted = config(&fixture, &table, None, "create_table = true");
    trusted.queue.visibility_timeout_secs = 3;
    let (worker, _) = fixture.start_worker_with_stats(trusted).await;
    wait_until("the rows and an empty queue", WAIT, || async {
        ledger_count(&client, &table).await == 1 && fixture.queue_is_empty().await
    })
    .await;
    assert_eq!(count(&client, &table).await, 20);
    worker.stop().await;
}

/// The CA is trusted but the certificate names 127.0.0.1 and localhost,
/// not the host the sink was told to connect to: the host name check
/// refuses it (libpq's `sslmode=require` would not), as a retryable error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_name_is_refused_even_from_a_trusted_ca() {
    let _suite = crate::shared().await;
    use s3_ingest::sink::postgres::{PostgresSink, PostgresSinkConfig};
    use s3_ingest::sink::{Lineage, Sink, SinkContext};

    let table = unique_table("hostname");
    // `hostaddr` is where to connect, `host` the name the certificate
    // must carry.
    let server = tokio_postgres::Config::from_str(&postgres_url()).unwrap();
    let port = server.get_ports().first().copied().unwrap_or(5432);
    let config: PostgresSinkConfig = toml::from_str(&format!(
        r#"
        url = "host=db.invalid hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=verify-full"
        table = "{table}"
        ledger_table = "{table}_ledger"
        ca_file = "{ca}"
        connect_timeout_secs = 5
        "#,
        ca = postgres_ca(),
    ))
    .unwrap();
    config.validate().unwrap();
    let context = SinkContext {
        s3: clients().s3,
        expected_bucket_owner: None,
        aws: Default::default(),
        add_columns_routes: Default::default(),
    };
    let sink = PostgresSink::new("pg", &config, &context).unwrap();
    let lineage = Lineage {
        size: 10,
        ..lineage("vendor", "in/a.csv", "etag-1", "all")
    };
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let err = sink.open(&lineage, schema).await.err().expect("refused");
    assert!(err.is_retryable(), "{}", err.detail);
    assert!(
        err.detail.contains("invalid peer certificate") && err.detail.contains("db.invalid"),
        "{}",
        err.detail
    );
}

/// `is_committed` asks the ledger: nothing before the first load (the
/// ledger table not even created yet), nothing while a load's transaction
/// is open, committed once it commits; scoped to the sink's table and the
/// exact version; a ledger row without its commit recorded does not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_committed_reads_the_ledger_for_this_table_and_version() {
    let _suite = crate::shared().await;
    use s3_ingest::sink::postgres::{PostgresSink, PostgresSinkConfig};
    use s3_ingest::sink::{CommitState, Lineage, Sink, SinkContext};

    let client = connect().await;
    let table = unique_table("ledgerq");
    let sink_config = |table: &str, ledger: &str| -> PostgresSinkConfig {
        toml::from_str(&format!(
            r#"
            url = "{url}"
            table = "{table}"
            ledger_table = "{ledger}"
            create_table = true
            pool_size = 2
            ca_file = "{ca}"
            "#,
            url = postgres_url(),
            ca = postgres_ca(),
        ))
        .unwrap()
    };
    let context = SinkContext {
        s3: clients().s3,
        expected_bucket_owner: None,
        aws: Default::default(),
        add_columns_routes: Default::default(),
    };
    let ledger_table = format!("{table}_ledger");
    let sink = PostgresSink::new("pg", &sink_config(&table, &ledger_table), &context).unwrap();
    let lineage = Lineage {
        size: 10,
        version_id: Some("v1".into()),
        ..lineage("vendor", "in/a.csv", "etag-1", "all")
    };
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(arrow::array::Int64Array::from(vec![1, 2, 3]))],
    )
    .unwrap();

    assert_eq!(
        sink.is_committed(&lineage).await.unwrap(),
        CommitState::NotCommitted,
        "no ledger table yet: not committed, not an error"
    );
    assert_eq!(ledger_count(&client, &table).await, 0);
    let ledger_exists = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&ledger_table])
        .await
        .unwrap()
        .get::<_, bool>(0);
    assert!(!ledger_exists, "asking creates nothing");

    let mut writer = sink.open(&lineage, schema.clone()).await.unwrap();
    writer.write(batch.clone()).await.unwrap();
    assert_eq!(
        sink.is_committed(&lineage).await.unwrap(),
        CommitState::NotCommitted,
        "a load in progress is not committed"
    );
    writer.commit().await.unwrap();
    assert_eq!(
        sink.is_committed(&lineage).await.unwrap(),
        CommitState::Committed
    );

    // Asked with placeholders for everything but bucket, key and version.
    let asked = Lineage {
        size: 0,
        event_time: Some(chrono::Utc::now()),
        route: String::new(),
        etag: None,
        ..lineage.clone()
    };
    assert_eq!(
        sink.is_committed(&asked).await.unwrap(),
        CommitState::Committed
    );
    for other in [
        Lineage {
            version_id: Some("v2".into()),
            ..lineage.clone()
        },
        Lineage {
            key: "in/b.csv".into(),
            ..lineage.clone()
        },
        Lineage {
            bucket: "other-vendor".into(),
            ..lineage.clone()
        },
    ] {
        assert_eq!(
            sink.is_committed(&other).await.unwrap(),
            CommitState::NotCommitted,
            "{other:?}"
        );
    }

    // Another sink sharing the ledger for another table: its own rows only.
    let other_table = format!("{table}_other");
    let other_sink =
        PostgresSink::new("pg2", &sink_config(&other_table, &ledger_table), &context).unwrap();
    assert_eq!(
        other_sink.is_committed(&lineage).await.unwrap(),
        CommitState::NotCommitted
    );

    // A row whose commit was never recorded does not count.
    let pending = Lineage {
        version_id: Some("v3".into()),
        ..lineage.clone()
    };
    client
        .execute(
            &format!(
                "INSERT INTO {ledger_table} (target_table, bucket, key, version_identity, size, route, sink)
                 VALUES ($1, $2, $3, 'v3', 0, 'all', 'pg')"
            ),
            &[&table, &pending.bucket, &pending.key],
        )
        .await
        .unwrap();
    assert_eq!(
        sink.is_committed(&pending).await.unwrap(),
        CommitState::NotCommitted
    );

    // A ledger in a schema that does not exist: nothing committed there.
    let nowhere = PostgresSink::new(
        "pg3",
        &sink_config(&table, &format!("{table}_no_schema.ledger")),
        &context,
    )
    .unwrap();
    assert_eq!(
        nowhere.is_committed(&lineage).await.unwrap(),
        CommitState::NotCommitted
    );
}

/// `[routes.group]` on a postgres route: many small objects in one
/// transaction each group, every object's rows once through duplicate
/// notifications, and one object whose rows the table refuses
/// dead-lettered alone while its group commits the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_small_files_commit_together_once_each_and_a_refused_one_alone() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-group").await;
    let client = connect().await;
    let table = unique_table("group");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, price float8);
             INSERT INTO {table} VALUES (-1, 'already here', 1);"
        ))
        .await
        .unwrap();
    let routes = r#"
        [[routes]]
        name = "all"
        key_glob = "**"
        sink = "pg"
        group = { max_age_secs = 2 }
        "#;
    let config =
        fixture.config_with_sinks(Some(routes), "", &sink_toml(&postgres_url(), &table, ""));
    let (worker, stats) = fixture.start_worker_with_stats(config).await;
    let objects = 60;
    let body = |n: i64| format!("id,name,price\n{},a,1.5\n{},b,2.5\n", n * 10, n * 10 + 1);
    fixture
        .put_many(
            (0..objects)
                .filter(|&n| n != 7)
                .map(|n| (format!("in/g-{n:03}.csv"), body(n).into_bytes()))
                .collect(),
        )
        .await;
    // Notified twice.
    let etag = fixture.put("in/g-007.csv", body(7)).await;
    let event = s3_event(
        &fixture.bucket,
        &[("in/g-007.csv", &etag, body(7).len() as u64)],
    );
    fixture.send_raw(&event.to_string()).await;
    // Same schema (so the same group); its id collides with the row
    // already there: refused by the table at its COPY.
    fixture
        .put("in/refused.csv", "id,name,price\n-1,again,3.5\n")
        .await;

    let letters = fixture.wait_for_dead_letters(1).await;
    assert!(
        letters[0].key.as_deref() == Some("in/refused.csv") && letters[0].error.contains("23505"),
        "{:?}",
        letters[0]
    );
    wait_until(
        "every object in the ledger and the queue empty",
        WAIT,
        || async {
            ledger_count(&client, &table).await == objects && fixture.queue_is_empty().await
        },
    )
    .await;
    assert_eq!(count(&client, &table).await, 2 * objects + 1);
    let ledger = ledger(&client, &table).await;
    assert!(
        ledger
            .iter()
            .all(|(_, rows, committed)| *rows == Some(2) && *committed)
    );
    // Many objects per transaction: a group's ledger rows carry its
    // transaction's start as `committed_at`.
    let transactions: i64 = client
        .query_one(
            &format!("SELECT count(DISTINCT committed_at) FROM {table}_ledger"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        transactions < objects / 4,
        "{transactions} transactions for {objects} objects"
    );
    assert_eq!(
        stats.objects_committed.load(Ordering::Relaxed)
            + stats.objects_skipped.load(Ordering::Relaxed),
        objects as u64 + 1
    );
    assert_eq!(stats.objects_dead_lettered.load(Ordering::Relaxed), 1);
    worker.stop().await;
}

/// A grouped object whose ledger key another transaction holds (another
/// worker's group, open for its age) is handed back uncounted, not waited
/// for, and lands once that transaction is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouped_object_another_transaction_holds_is_handed_back_then_lands() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-group-held").await;
    let client = connect().await;
    let table = unique_table("held");
    let routes = r#"
        [[routes]]
        name = "all"
        key_glob = "**"
        sink = "pg"
        group = { max_age_secs = 1 }
        "#;
    let sinks = sink_toml(&postgres_url(), &table, "create_table = true");
    let config = fixture.config_with_sinks(Some(routes), "", &sinks);
    // A first object creates the table and the ledger.
    let (worker, _) = fixture.start_worker_with_stats(config.clone()).await;
    fixture.put("in/first.csv", csv_rows(2)).await;
    wait_until("the first object committed", WAIT, || async {
        ledger_count(&client, &table).await == 1 && fixture.queue_is_empty().await
    })
    .await;
    worker.stop().await;
    // The next object is queued; another transaction claims its version
    // in the ledger and stays open.
    let etag = fixture.put("in/held.csv", csv_rows(3)).await;
    let (holder, holder_connection) =
        tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(holder_connection);
    holder
        .batch_execute(&format!(
            "BEGIN; INSERT INTO {table}_ledger
               (target_table, bucket, key, version_identity, size, route, sink)
             VALUES ('{table}', '{}', 'in/held.csv', '{etag}', 1, 'all', 'pg')",
            fixture.bucket
        ))
        .await
        .unwrap();
    let (worker, stats) = fixture.start_worker_with_stats(config).await;
    wait_until("the held object handed back", WAIT, || async {
        stats.messages_released.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(ledger_count(&client, &table).await, 1);
    assert_eq!(stats.objects_committed.load(Ordering::Relaxed), 0);
    // The other transaction goes away without committing: the object
    // lands when its message comes back (10 s later).
    holder.batch_execute("ROLLBACK").await.unwrap();
    wait_until("the held object committed", WAIT, || async {
        ledger_count(&client, &table).await == 2 && fixture.queue_is_empty().await
    })
    .await;
    assert_eq!(count(&client, &table).await, 5);
    assert!(fixture.take_dead_letters().await.is_empty());
    worker.stop().await;
}

/// A route with a contract into PostgreSQL: `add_columns` adds a vendor's
/// new column to the table, missing columns land as NULL, bad rows go to
/// a quarantine table (another postgres sink) with their reasons, and
/// each file's outcome is in its ledger row. A second route rejects the
/// file on its first bad row: nothing lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_adds_columns_quarantines_bad_rows_and_records_its_outcome() {
    let _suite = crate::shared().await;
    let fixture = Fixture::new("pg-contract").await;
    let client = connect().await;
    let table = unique_table("contract");
    let strict_table = unique_table("contract_strict");
    let schema = r#"schema = [
        { name = "id", type = "int64", nullable = false },
        { name = "name", type = "string" },
        { name = "price", type = "float64" },
    ]"#;
    let routes = format!(
        r#"
        [[routes]]
        name = "evolving"
        key_glob = "evolving/**"
        sink = "pg"
        {schema}
        [routes.contract]
        schema_mode = "add_columns"
        bad_rows = "quarantine"
        quarantine_sink = "pg_bad"
        checks = [{{ column = "price", min = 0 }}]

        [[routes]]
        name = "strict"
        key_glob = "strict/**"
        sink = "pg_strict"
        {schema}
        [routes.contract]
        checks = [{{ column = "price", min = 0 }}]
        "#
    );
    let url = postgres_url();
    let sinks = format!(
        "{}\n{}\n{}",
        sink_toml(&url, &table, "create_table = true"),
        sink_toml(&url, &format!("{table}_bad"), "create_table = true")
            .replace("[sinks.pg]", "[sinks.pg_bad]"),
        sink_toml(&url, &strict_table, "create_table = true")
            .replace("[sinks.pg]", "[sinks.pg_strict]"),
    );
    let config = fixture.config_with_sinks(Some(&routes), "", &sinks);
    let (worker, _) = fixture.start_worker_with_stats(config).await;

    fixture
        .put("evolving/1.csv", "id,name,price\n1,a,1.5\n2,b,-1\n")
        .await;
    wait_until("the first file committed", WAIT, || async {
        ledger_count(&client, &table).await == 1
    })
    .await;
    fixture
        .put("evolving/2.csv", "id,name,price,colour\n3,c,2,red\n")
        .await;
    wait_until("the second file committed", WAIT, || async {
        ledger_count(&client, &table).await == 2
    })
    .await;
    fixture.put("evolving/3.csv", "ID,colour\n4,blue\n").await;
    fixture
        .put("strict/1.csv", "id,name,price\n1,a,1.5\n2,b,-1\n")
        .await;
    let letters = fixture.wait_for_dead_letters(1).await;
    assert_eq!(letters[0].key.as_deref(), Some("strict/1.csv"));
    assert_eq!(letters[0].error_kind.as_str(), "contract_violation");
    assert!(
        letters[0]
            .error
            .contains(r#"row 2: `price`: "-1" is below min 0"#),
        "{}",
        letters[0].error
    );
    wait_until("every file done", WAIT, || async {
        ledger_count(&client, &table).await == 3 && fixture.queue_is_empty().await
    })
    .await;

    assert_eq!(
        rows_as_text(&client, &table, &["id", "name", "price", "colour"]).await,
        vec![
            text(&[Some("1"), Some("a"), Some("1.5"), None]),
            text(&[Some("3"), Some("c"), Some("2"), Some("red")]),
            text(&[Some("4"), None, None, Some("blue")]),
        ],
        "row 2 quarantined; colour added by the second file"
    );
    let quarantined = rows_as_text(
        &client,
        &format!("{table}_bad"),
        &["source_row", "reason", "record"],
    )
    .await;
    assert_eq!(
        quarantined,
        vec![text(&[
            Some("2"),
            Some(r#"`price`: "-1" is below min 0"#),
            Some(r#"{"id":"2","name":"b","price":"-1"}"#),
        ])]
    );
    let outcomes: Vec<(String, serde_json::Value)> = client
        .query(
            &format!("SELECT key, contract::text FROM {table}_ledger ORDER BY key"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let text: String = row.get(1);
            (row.get(0), serde_json::from_str(&text).unwrap())
        })
        .collect();
    assert_eq!(outcomes[0].1["verdict"], "quarantined");
    assert_eq!(outcomes[0].1["quarantined_rows"], 1);
    assert_eq!(outcomes[0].1["accepted_rows"], 1);
    assert_eq!(
        outcomes[1].1["columns_added"],
        serde_json::json!(["colour"])
    );
    assert_eq!(
        outcomes[2].1["columns_missing"],
        serde_json::json!(["name", "price"])
    );
    // The quarantine table's ledger names the file too.
    assert_eq!(ledger(&client, &format!("{table}_bad")).await.len(), 1);
    // The rejected file left nothing.
    assert_eq!(ledger_count(&client, &strict_table).await, 0);
    worker.stop().await;
}
