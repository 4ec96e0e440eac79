#!/usr/bin/env bash
# `make demo`: LocalStack + the worker + sample vendor files, end to end.
#
# 1. starts LocalStack (unless one is already running) and creates the
#    bucket, queue, DLQ and bucket notification (localstack/init.py),
# 2. builds and starts the worker with examples/demo.toml,
# 3. uploads sample files (CSV, gzipped CSV, Parquet, a poison CSV, a file
#    no route wants) and waits until the queue is drained (examples/demo.rs),
# 4. prints what landed in the sink and what went to the DLQ,
# 5. stops the worker (SIGTERM, graceful) and what it started.
#
# DEMO_SINK=postgres|s3_parquet|http|delta also lands the order files in that sink
# (a fan-out beside the parquet_dir lake), configured through
# S3_INGEST__* variables as on ECS, and prints what arrived there:
#   postgres    a local PostgreSQL (tests/services/postgres.sh), a new table
#   s3_parquet  Parquet objects in the LocalStack bucket vendor-lake
#   http        NDJSON into a local ClickHouse (tests/services/clickhouse.sh)
#   delta       a Delta table in the LocalStack bucket vendor-lake, partitioned
#               by the date in the order file's key; read back with delta-rs'
#               Python binding (tests/services/need-delta-reader.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

out="${DEMO_OUTPUT:-demo-output}"
venv="${S3I_LOCALSTACK_VENV:-$HOME/.cache/s3-ingest/localstack-venv}"
target="${CARGO_TARGET_DIR:-$HOME/.cache/s3-ingest/target}"
export CARGO_TARGET_DIR="$target"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1

echo "==> building"
cargo build --quiet --bin s3-ingest --example demo

started_localstack=0
localstack/localstack.sh status >/dev/null 2>&1 || started_localstack=1
localstack/localstack.sh start

sink="${DEMO_SINK:-parquet_dir}"
started_service=""
worker_pid=""
cleanup() {
  if [[ -n "$worker_pid" ]] && kill -0 "$worker_pid" 2>/dev/null; then
    kill -TERM "$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
  fi
  if [[ -n "$started_service" ]]; then
    "$started_service" stop || true
  fi
  if ((started_localstack)); then
    localstack/localstack.sh stop || true
  fi
}
trap cleanup EXIT

# Starts a test service unless it runs already; stops it at exit if so.
use_service() {
  if ! "$1" status >/dev/null 2>&1; then
    started_service="$1"
  fi
  "$1" start
}

# The second sink for the orders route, as environment overrides.
run_id="$(date +%s)"
extra_env=()
case "$sink" in
  parquet_dir) ;;
  postgres)
    use_service tests/services/postgres.sh
    export DEMO_PG_URL="$(tests/services/postgres.sh url)"
    table="demo_orders_$run_id"
    extra_env=(
      S3_INGEST__SINKS__EXTRA__TYPE=postgres
      S3_INGEST__SINKS__EXTRA__URL_ENV=DEMO_PG_URL
      S3_INGEST__SINKS__EXTRA__TABLE="$table"
      S3_INGEST__SINKS__EXTRA__CREATE_TABLE=true
      # The local server offers TLS with a throwaway CA; the sink verifies
      # every certificate, so it is told to trust that CA.
      S3_INGEST__SINKS__EXTRA__CA_FILE="$(tests/services/postgres.sh ca)"
    )
    ;;
  s3_parquet)
    lake_bucket="vendor-lake"
    extra_env=(
      S3_INGEST__SINKS__EXTRA__TYPE=s3_parquet
      S3_INGEST__SINKS__EXTRA__BUCKET="$lake_bucket"
      S3_INGEST__SINKS__EXTRA__PREFIX="demo-$run_id"
      S3_INGEST__SINKS__EXTRA__PARTITION='route={route}/dt={event_date}'
    )
    ;;
  http)
    use_service tests/services/clickhouse.sh
    clickhouse="http://127.0.0.1:${S3I_CLICKHOUSE_HTTP_PORT:-18123}/"
    table="demo_orders_$run_id"
    # ClickHouse 18.16 (Debian's) reads the timestamps as text.
    curl -fsS "$clickhouse" --data-binary "CREATE TABLE $table (order_id Int64, customer Nullable(String), quantity Nullable(Int32), unit_price Nullable(Float64), ordered_at Nullable(String)) ENGINE = Log"
    extra_env=(
      S3_INGEST__SINKS__EXTRA__TYPE=http
      S3_INGEST__SINKS__EXTRA__URL="${clickhouse}?query=INSERT%20INTO%20$table%20FORMAT%20JSONEachRow"
      S3_INGEST__SINKS__EXTRA__FORMAT=ndjson
      S3_INGEST__SINKS__EXTRA__COMPRESSION=gzip
    )
    ;;
  delta)
    lake_bucket="vendor-lake"
    delta_table="s3://$lake_bucket/demo-$run_id/orders"
    tests/services/need-delta-reader.sh
    extra_env=(
      S3_INGEST__SINKS__EXTRA__TYPE=delta
      S3_INGEST__SINKS__EXTRA__TABLE="$delta_table"
      S3_INGEST__SINKS__EXTRA__PARTITION_BY=order_date
      S3_INGEST__SINKS__EXTRA__KEY_COLUMNS='{ order_date = "^orders/([^/]+)/", source_key = "^(.*)$" }'
    )
    ;;
  *)
    echo "DEMO_SINK must be parquet_dir, postgres, s3_parquet, http or delta (got '$sink')" >&2
    exit 2
    ;;
esac
if ((${#extra_env[@]})); then
  extra_env+=('S3_INGEST__ROUTES__ORDERS__SINKS=lake,extra')
  echo "==> order files also land in the $sink sink"
fi

echo "==> creating bucket, queue, DLQ and bucket notification"
eval "$("$venv/bin/python" localstack/init.py --bucket vendor-drops --queue s3-ingest-events --dlq s3-ingest-dlq --max-receive-count 5)"
if [[ "$sink" == s3_parquet || "$sink" == delta ]]; then
  "$venv/bin/python" - "$lake_bucket" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:4566", region_name="us-east-1")
try:
    s3.create_bucket(Bucket=sys.argv[1])
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
PY
fi

rm -rf "$out"
mkdir -p "$out"
echo "==> starting the worker (log: $out/worker.log)"
env "${extra_env[@]}" \
S3_INGEST__QUEUE__URL="$QUEUE_URL" \
S3_INGEST__QUEUE__DLQ_URL="$DLQ_URL" \
S3_INGEST__SINKS__LAKE__PATH="$out/lake" \
  "$target/debug/s3-ingest" --config examples/demo.toml run >"$out/worker.log" 2>&1 &
worker_pid=$!

"$target/debug/examples/demo" \
  --bucket vendor-drops \
  --queue-url "$QUEUE_URL" \
  --dlq-url "$DLQ_URL" \
  --sink-dir "$out/lake" \
  --samples-dir "$out/samples"

case "$sink" in
  postgres)
    echo
    echo "==> landed in PostgreSQL: table $table, and the ledger"
    psql "$DEMO_PG_URL" -X -q -c "SELECT count(*) AS rows, sum(quantity) AS quantity FROM $table" \
      -c "SELECT key, rows, committed_at FROM s3_ingest_ledger WHERE target_table = '$table' ORDER BY key"
    ;;
  s3_parquet)
    echo
    echo "==> landed in s3://$lake_bucket/demo-$run_id/"
    "$venv/bin/python" - "$lake_bucket" "demo-$run_id/" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:4566", region_name="us-east-1")
listing = s3.list_objects_v2(Bucket=sys.argv[1], Prefix=sys.argv[2])
for item in listing.get("Contents", []):
    print(f"    {item['Size']:>8} bytes  {item['Key']}")
PY
    ;;
  http)
    echo
    echo "==> landed in ClickHouse: table $table"
    curl -fsS "$clickhouse" --data-binary "SELECT count() AS rows, sum(quantity) AS quantity FROM $table FORMAT PrettyCompactNoEscapes"
    ;;
  delta)
    echo
    echo "==> landed in the Delta table $delta_table (read with delta-rs' Python binding)"
    "${S3I_DELTA_READER_VENV:-$HOME/.cache/s3-ingest/delta-reader-venv}/bin/python" - "$delta_table" <<'PY'
import json, sys
from deltalake import DeltaTable
table = DeltaTable(sys.argv[1], storage_options={
    "AWS_ENDPOINT_URL": "http://127.0.0.1:4566", "AWS_ALLOW_HTTP": "true",
    "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
data = table.to_pyarrow_table()
print(f"    version {table.version()}, {data.num_rows} rows, partitioned by {table.metadata().partition_columns}")
for uri in sorted(table.file_uris()):
    print(f"    {uri.split('/orders/', 1)[-1]}")
print("    history:")
for commit in table.history():
    lineage = commit.get("s3_ingest")
    lineage = json.loads(lineage) if isinstance(lineage, str) else lineage
    sources = ", ".join(f"{s['key']} ({s['rows']} rows)" for s in (lineage or {}).get("sources", []))
    print(f"    v{commit.get('version')}  {commit.get('operation'):<12} {sources}")
# delta-rs' runtime threads abort the interpreter's normal shutdown.
sys.stdout.flush()
import os; os._exit(0)
PY
    ;;
esac

echo "==> stopping the worker (SIGTERM)"
kill -TERM "$worker_pid"
status=0
wait "$worker_pid" || status=$?
worker_pid=""
echo "worker exited with status $status; its last log lines:"
tail -n 4 "$out/worker.log"
exit "$status"
