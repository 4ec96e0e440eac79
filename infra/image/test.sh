#!/usr/bin/env bash
# `make image-test`: runs the built image's binary against LocalStack and
# ingests a file end to end, as ECS would run the container.
#
#   infra/image/test.sh            # tests localhost/s3-ingest:dev (make image)
#
# `buildah run --isolation chroot` runs commands in a working container of
# the image (`podman run` does not work on these machines). The container
# shares the host's network, so the worker reaches LocalStack on
# 127.0.0.1:4566 and its status port on the host. Checks, in order:
#   1. `s3-ingest --version` names the commit of the image's revision label;
#   2. `s3-ingest healthcheck` fails while no worker runs;
#   3. the worker, as the image's non-root user, configured only through
#      S3_INGEST__* variables and a config file on a mounted volume,
#      starts, and `healthcheck` in the image (no config, only the status
#      address from the environment) passes;
#   4. a CSV uploaded to a fresh bucket lands in the parquet_dir sink on
#      the volume with all its rows, the queue drains, the DLQ stays empty;
#   5. SIGTERM stops the worker cleanly (exit status 0).
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE="${IMAGE:-localhost/s3-ingest:dev}"
venv="${S3I_LOCALSTACK_VENV:-$HOME/.cache/s3-ingest/localstack-venv}"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1

say() { printf '==> %s\n' "$*" >&2; }
fail() {
  printf 'image-test FAILED: %s\n' "$*" >&2
  exit 1
}

buildah inspect --type image "$IMAGE" >/dev/null 2>&1 ||
  fail "no image $IMAGE: run \`make image\` first"

run_id="$(date +%s)-$$"
work="$(mktemp -d)"
chmod 0777 "$work" # the image's user (uid 65532) writes the sink here
container=""
worker_pid=""
started_localstack=0
cleanup() {
  if [[ -n "$worker_pid" ]] && kill -0 "$worker_pid" 2>/dev/null; then
    kill -KILL "$worker_pid" 2>/dev/null || true
  fi
  [[ -z "$container" ]] || buildah rm "$container" >/dev/null 2>&1 || true
  if ((started_localstack)); then
    localstack/localstack.sh stop || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

in_image() {
  buildah run --isolation chroot --volume "$work:/data" "$@"
}

container="$(buildah from --quiet "$IMAGE")"

say "1. --version"
revision="$(buildah inspect --type image --format '{{index .ImageAnnotations "org.opencontainers.image.revision"}}' "$IMAGE" 2>/dev/null || true)"
[[ -n "$revision" && "$revision" != "<no value>" ]] ||
  revision="$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "org.opencontainers.image.revision"}}' "$IMAGE")"
version_line="$(in_image "$container" -- /usr/local/bin/s3-ingest --version)"
echo "    $version_line"
[[ "$version_line" == *"(commit $revision)"* ]] ||
  fail "--version says '$version_line', the image's revision label says '$revision'"

say "2. healthcheck without a worker fails"
if in_image --env S3_INGEST__STATUS__LISTEN_ADDR=127.0.0.1:1 "$container" -- \
  /usr/local/bin/s3-ingest healthcheck 2>/dev/null; then
  fail "healthcheck passed with no worker running"
fi

localstack/localstack.sh status >/dev/null 2>&1 || started_localstack=1
localstack/localstack.sh start
bucket="image-test-$run_id"
eval "$("$venv/bin/python" localstack/init.py --bucket "$bucket" \
  --queue "image-test-$run_id" --dlq "image-test-dlq-$run_id" --max-receive-count 3)"

# A free port on the host for the status endpoints.
status_port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat >"$work/s3-ingest.toml" <<EOF
[aws]
region = "us-east-1"
endpoint_url = "http://127.0.0.1:4566"
force_path_style = true

[queue]
url = "set by S3_INGEST__QUEUE__URL"
wait_time_secs = 2
visibility_timeout_secs = 30
max_receive_count = 3

[[routes]]
name = "orders"
bucket = "$bucket"
key_glob = "orders/*.csv"
format = "csv"
sinks = ["lake"]

[sinks.lake]
type = "parquet_dir"
path = "/data/lake"
EOF
chmod 0644 "$work/s3-ingest.toml"

say "3. the worker starts in the image, and healthcheck passes"
in_image \
  --env AWS_ACCESS_KEY_ID=test --env AWS_SECRET_ACCESS_KEY=test \
  --env S3_INGEST__QUEUE__URL="$QUEUE_URL" \
  --env S3_INGEST__QUEUE__DLQ_URL="$DLQ_URL" \
  --env S3_INGEST__STATUS__LISTEN_ADDR="127.0.0.1:$status_port" \
  "$container" -- /usr/local/bin/s3-ingest --config /data/s3-ingest.toml run --log-format json \
  >"$work/worker.log" 2>&1 &
worker_pid=$!

deadline=$((SECONDS + 60))
until in_image --env S3_INGEST__STATUS__LISTEN_ADDR="127.0.0.1:$status_port" "$container" -- \
  /usr/local/bin/s3-ingest healthcheck >/dev/null 2>&1; do
  if ! kill -0 "$worker_pid" 2>/dev/null; then
    cat "$work/worker.log" >&2
    fail "the worker exited at start"
  fi
  ((SECONDS < deadline)) || {
    cat "$work/worker.log" >&2
    fail "healthcheck did not pass within 60 s"
  }
  sleep 1
done

say "4. a CSV lands in the sink"
rows=250
"$venv/bin/python" - "$bucket" "$rows" <<'PY'
import sys, boto3
bucket, rows = sys.argv[1], int(sys.argv[2])
body = "order_id,customer,quantity\n" + "".join(f"{i},c{i % 7},{i % 5}\n" for i in range(rows))
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:4566", region_name="us-east-1")
s3.put_object(Bucket=bucket, Key="orders/2026-12-01.csv", Body=body.encode())
PY
deadline=$((SECONDS + 120))
until grep -q '"object committed"' "$work/worker.log" 2>/dev/null; do
  ((SECONDS < deadline)) || {
    cat "$work/worker.log" >&2
    fail "the object was not committed within 120 s"
  }
  kill -0 "$worker_pid" 2>/dev/null || {
    cat "$work/worker.log" >&2
    fail "the worker exited"
  }
  sleep 1
done
committed="$(grep '"object committed"' "$work/worker.log" | head -1)"
echo "    $committed"
[[ "$committed" == *"\"rows\":$rows"* ]] || fail "committed rows differ from the $rows uploaded"
shopt -s globstar nullglob
parquet=("$work"/lake/**/*.parquet)
((${#parquet[@]} == 1)) || fail "expected one Parquet file under the sink, found ${#parquet[@]}"
[[ "$(head -c 4 "${parquet[0]}")" == PAR1 ]] || fail "${parquet[0]} is not a Parquet file"
echo "    landed: ${parquet[0]#"$work"/}"
"$venv/bin/python" - "$QUEUE_URL" "$DLQ_URL" <<'PY'
import sys, time, boto3
sqs = boto3.client("sqs", endpoint_url="http://127.0.0.1:4566", region_name="us-east-1")
names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
def count(url):
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(attrs[n]) for n in names)
deadline = time.time() + 30
while count(sys.argv[1]) and time.time() < deadline:
    time.sleep(0.5)
left, dead = count(sys.argv[1]), count(sys.argv[2])
if left or dead:
    sys.exit(f"image-test FAILED: {left} message(s) left on the queue, {dead} on the DLQ")
print("    queue drained, DLQ empty")
PY

say "5. SIGTERM stops the worker"
# chroot isolation shares the host's process table: signal the worker
# itself, as ECS's stop signal would.
# (`buildah run` and its buildah-chroot-exec helper have the same command
# line; the worker is the process running the image's binary.)
worker=""
for pid in $(pgrep -f "s3-ingest --config /data/s3-ingest.toml run" || true); do
  if [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == */usr/local/bin/s3-ingest ]]; then
    worker="$pid"
    break
  fi
done
[[ -n "$worker" ]] || fail "cannot find the worker process"
kill -TERM "$worker"
deadline=$((SECONDS + 60))
while kill -0 "$worker" 2>/dev/null; do
  ((SECONDS < deadline)) || fail "the worker did not exit within 60 s of SIGTERM"
  sleep 1
done
status=0
wait "$worker_pid" || status=$?
worker_pid=""
((status == 0)) || {
  tail -n 20 "$work/worker.log" >&2
  fail "the worker exited with status $status after SIGTERM"
}
grep -q '"worker stopped"' "$work/worker.log" || fail "no 'worker stopped' line after SIGTERM"
say "image-test passed: $IMAGE ($version_line)"
