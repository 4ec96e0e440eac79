#!/usr/bin/env bash
# A short fuzzing run for `make test`: the notification parser for
# FUZZ_SMOKE_SECONDS (default 60), where a nightly toolchain and cargo-fuzz
# are installed. Elsewhere it says so and exits 0: the issue asks for the
# fuzzer "where cargo-fuzz is installed", and `make fuzz` runs it longer.
set -euo pipefail
cd "$(dirname "$0")"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz smoke: SKIPPED: no nightly toolchain with cargo-fuzz" \
       "(rustup toolchain install nightly && cargo install cargo-fuzz)"
  exit 0
fi
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/s3-ingest/fuzz-target}"
mkdir -p corpus/notification
echo "fuzz smoke: notification parser for ${FUZZ_SMOKE_SECONDS:-60} s"
log="$CARGO_TARGET_DIR/fuzz-smoke.log"
mkdir -p "$CARGO_TARGET_DIR"
status=0
cargo +nightly fuzz run notification corpus/notification seeds/notification -- \
  -dict=notification.dict -max_len=4096 \
  -max_total_time="${FUZZ_SMOKE_SECONDS:-60}" -print_final_stats=1 >"$log" 2>&1 || status=$?
grep -E "^(Done|stat::number_of_executed_units)" "$log" || true
if ((status)); then
  # A crash, a leak or a build failure: show it. The crashing input is
  # kept under fuzz/artifacts/notification/.
  tail -n 60 "$log"
  echo "fuzz smoke: FAILED (exit $status); full log: $log"
fi
exit "$status"
