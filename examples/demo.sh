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

worker_pid=""
cleanup() {
  if [[ -n "$worker_pid" ]] && kill -0 "$worker_pid" 2>/dev/null; then
    kill -TERM "$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
  fi
  if ((started_localstack)); then
    localstack/localstack.sh stop || true
  fi
}
trap cleanup EXIT

echo "==> creating bucket, queue, DLQ and bucket notification"
eval "$("$venv/bin/python" localstack/init.py --bucket vendor-drops --queue s3-ingest-events --dlq s3-ingest-dlq --max-receive-count 5)"

rm -rf "$out"
mkdir -p "$out"
echo "==> starting the worker (log: $out/worker.log)"
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

echo "==> stopping the worker (SIGTERM)"
kill -TERM "$worker_pid"
status=0
wait "$worker_pid" || status=$?
worker_pid=""
echo "worker exited with status $status; its last log lines:"
tail -n 4 "$out/worker.log"
exit "$status"
