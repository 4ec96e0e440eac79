#!/usr/bin/env bash
# Run LocalStack (S3 + SQS + SNS + EventBridge) on the host, without Docker.
#
# Machines this project runs on have no Docker engine, so LocalStack is
# installed from PyPI into a private venv and started as a plain process.
# Users who do have Docker can use docker-compose.yml next to this file instead.
#
# Usage: localstack/localstack.sh install|start|stop|status
#
# Environment:
#   S3I_LOCALSTACK_VENV  venv location   (default: $HOME/.cache/s3-ingest/localstack-venv)
#   S3I_STATE_DIR        log/pid/data    (default: $HOME/.cache/s3-ingest)
#   S3I_PYTHON           python to build the venv with (default: python3, needs >= 3.11)
#   S3I_START_TIMEOUT    seconds to wait for healthy   (default: 120)
set -euo pipefail

VENV="${S3I_LOCALSTACK_VENV:-$HOME/.cache/s3-ingest/localstack-venv}"
STATE_DIR="${S3I_STATE_DIR:-$HOME/.cache/s3-ingest}"
PYTHON="${S3I_PYTHON:-python3}"
START_TIMEOUT="${S3I_START_TIMEOUT:-120}"
STOP_TIMEOUT=20

LOG_FILE="$STATE_DIR/localstack.log"
PID_FILE="$STATE_DIR/localstack.pid"
# LocalStack's default host-mode directories point at /var/lib/localstack and
# the system temp dir; keep everything it writes under our state dir instead.
DATA_DIR="$STATE_DIR/localstack-data"

HOST_PORT="127.0.0.1:4566"
HEALTH_URL="http://$HOST_PORT/_localstack/health"
SERVICES="s3,sqs,sns,events,sts,ssm"

# These exact pins are the combination known to work on Python 3.11; change
# them only together with a real `start` + init.py run:
#  - localstack-core 4.13.1 matches the Docker image tag in docker-compose.yml;
#    [runtime] pulls in the server side (moto-ext, twisted gateway, ...).
#  - cbor2<6: LocalStack 4.13 is not compatible with cbor2 6.
#  - cryptography 43.0.3 + pyopenssl 24.2.1: a mutually compatible pair.
#  - service_identity: used by the twisted-based gateway for TLS.
# boto3 is only for init.py and ad-hoc poking; it is not pinned on purpose.
PINS=(
  "localstack-core[runtime]==4.13.1"
  "cbor2<6"
  "cryptography==43.0.3"
  "pyopenssl==24.2.1"
  "service_identity"
  "boto3"
)
MARKER="$VENV/.s3-ingest-pins"

log() { printf 'localstack.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

pins_text() { printf '%s\n' "${PINS[@]}"; }

cmd_install() {
  # The marker is written only after pip succeeded, so an interrupted install
  # or an edited pin list both lead to a (re)install instead of a broken venv.
  if [[ -x "$VENV/bin/python" && -f "$MARKER" ]] && [[ "$(cat "$MARKER")" == "$(pins_text)" ]]; then
    return 0
  fi
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set S3I_PYTHON)"
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$PYTHON is older than 3.11; LocalStack 4.13 needs >= 3.11 (set S3I_PYTHON)"
  log "installing LocalStack into $VENV (takes a few minutes the first time)"
  rm -f "$MARKER"
  if [[ ! -x "$VENV/bin/python" ]]; then
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
  pins_text >"$MARKER"
  log "installed"
}

# Prints the health JSON and exits 0 if anything answers on the port.
health_json() {
  curl -fsS --max-time 3 "$HEALTH_URL" 2>/dev/null
}

# Exit 0 when every service we need reports available/running. Uses the venv's
# python (not jq) because it is guaranteed to be there after install.
services_ready() {
  local json
  json="$(health_json)" || return 1
  "$VENV/bin/python" - "$SERVICES" "$json" <<'PY'
import json, sys
wanted = sys.argv[1].split(",")
services = json.loads(sys.argv[2]).get("services", {})
sys.exit(0 if all(services.get(s) in ("available", "running") for s in wanted) else 1)
PY
}

running_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(cat "$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  # A stale pid file (e.g. after a reboot) may name an unrelated process that
  # reused the pid; `stop` kills a whole process group, so make sure it is ours.
  if [[ -r "/proc/$pid/cmdline" ]] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'localstack.runtime.main'; then
    return 1
  fi
  printf '%s\n' "$pid"
}

cmd_start() {
  local started_here=0
  cmd_install
  if services_ready; then
    log "LocalStack already healthy on $HOST_PORT; not starting another"
    return 0
  fi
  if health_json >/dev/null; then
    # Something answers but is not ready: probably our own instance still
    # booting. Starting a second one would just fail to bind the port.
    log "something already answers on $HOST_PORT but is not ready yet; waiting for it"
  elif running_pid >/dev/null; then
    log "LocalStack (pid $(running_pid)) is starting; waiting for it"
  else
    mkdir -p "$STATE_DIR" "$DATA_DIR"
    # Why each setting:
    #  GATEWAY_LISTEN, LOCALSTACK_HOST, SQS_ENDPOINT_STRATEGY=path: otherwise queue
    #    URLs use a *.localhost.localstack.cloud hostname that needs public DNS.
    #  OVERRIDE_IN_DOCKER=0: LocalStack thinks it is in a container whenever
    #    /.dockerenv exists (true on our CI/dev sandboxes) and then writes to
    #    /var/lib/localstack and /tmp/localstack. Host mode keeps all of its files
    #    under FILESYSTEM_ROOT (default: inside site-packages), so point that at
    #    our state dir; LOCALSTACK_VOLUME_DIR likewise.
    #  DNS_ADDRESS=0: do not start LocalStack's DNS server on port 53.
    #  EAGER_SERVICE_LOADING=1: load the services at boot, so a broken install
    #    fails here rather than on a test's first request, and no test pays the
    #    lazy-load latency.
    #  SKIP_SSL_CERT_DOWNLOAD=1, DISABLE_EVENTS=1: no internet here; do not try
    #    to fetch the TLS cert or send analytics.
    # setsid+nohup: the server must outlive the shell (make, CI step) that started
    # it, and lead its own process group so `stop` can kill all its children.
    # The log is truncated so a failure's log tail is about this run only.
    GATEWAY_LISTEN="$HOST_PORT" \
    LOCALSTACK_HOST="$HOST_PORT" \
    SQS_ENDPOINT_STRATEGY=path \
    SERVICES="$SERVICES" \
    EAGER_SERVICE_LOADING=1 \
    OVERRIDE_IN_DOCKER=0 \
    FILESYSTEM_ROOT="$DATA_DIR" \
    LOCALSTACK_VOLUME_DIR="$DATA_DIR/volume" \
    CONFIG_DIR="$DATA_DIR/config" \
    DNS_ADDRESS=0 \
    SKIP_SSL_CERT_DOWNLOAD=1 \
    DISABLE_EVENTS=1 \
      setsid nohup "$VENV/bin/python" -m localstack.runtime.main \
        >"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    started_here=1
    log "started LocalStack pid $! (log: $LOG_FILE)"
  fi

  local deadline=$((SECONDS + START_TIMEOUT))
  until services_ready; do
    if ((SECONDS >= deadline)); then
      log "LocalStack not healthy after ${START_TIMEOUT}s; last log lines:"
      tail -n 40 "$LOG_FILE" >&2 || true
      # Do not leave a half-started server behind to confuse the next start
      # (or hold the port in CI); one we did not start is not ours to kill.
      if ((started_here)); then cmd_stop; fi
      exit 1
    fi
    if [[ -f "$PID_FILE" ]] && ! running_pid >/dev/null; then
      log "LocalStack exited during startup; last log lines:"
      tail -n 40 "$LOG_FILE" >&2 || true
      rm -f "$PID_FILE"
      exit 1
    fi
    sleep 1
  done
  log "LocalStack healthy on http://$HOST_PORT"
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  # The pid is the session/group leader thanks to setsid, so signalling the
  # negative pid also reaches any helper processes LocalStack spawned.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "pid $pid ignored TERM for ${STOP_TIMEOUT}s; sending KILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.5
  done
  # Sweep up any straggler left in the group after the leader went away.
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$PID_FILE"
  log "stopped (pid $pid)"
}

cmd_status() {
  local json
  if json="$(health_json)"; then
    printf '%s\n' "$json"
  else
    echo "not running"
    exit 1
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 install|start|stop|status" >&2
    exit 2
    ;;
esac
