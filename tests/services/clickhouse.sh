#!/usr/bin/env bash
# A local ClickHouse for the `http` sink tests: its HTTP interface on
# loopback, data under a private directory, never as root.
#
#   tests/services/clickhouse.sh start|stop|status
#
# Uses Debian's clickhouse-server package (bookworm ships 18.16, from 2018:
# enough for `INSERT ... FORMAT JSONEachRow` over HTTP, too old for
# ArrowStream and insert_deduplication_token). Installs it with apt-get when
# missing, which needs root.
#
#   S3I_CLICKHOUSE_HTTP_PORT  HTTP port   (default: 18123)
#   S3I_CLICKHOUSE_TCP_PORT   native port (default: 19000)
#   S3I_CLICKHOUSE_DIR        data, logs, pid (default: /tmp/s3-ingest-clickhouse;
#                             not under $HOME: as root the server runs as the
#                             `clickhouse` user, who cannot enter /root)
set -euo pipefail

HTTP_PORT="${S3I_CLICKHOUSE_HTTP_PORT:-18123}"
TCP_PORT="${S3I_CLICKHOUSE_TCP_PORT:-19000}"
DIR="${S3I_CLICKHOUSE_DIR:-/tmp/s3-ingest-clickhouse}"
PID_FILE="$DIR/clickhouse.pid"
URL="http://127.0.0.1:$HTTP_PORT/"

ping() { curl -fsS --max-time 2 "${URL}ping" >/dev/null 2>&1; }

running_pid() {
  [[ -s "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  # A stale pid file may name an unrelated process that reused the pid.
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'clickhouse-server' || return 1
  printf '%s\n' "$pid"
}

install_if_missing() {
  [[ -x /usr/sbin/clickhouse-server ]] && return 0
  if [[ "$(id -u)" != 0 ]]; then
    echo "clickhouse-server is not installed; run: sudo apt-get install -y --no-install-recommends clickhouse-server" >&2
    exit 1
  fi
  echo "installing clickhouse-server from Debian..." >&2
  # A fresh machine may have no package lists yet: update and try again.
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends clickhouse-server >&2 ||
    { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends clickhouse-server >&2; }
}

write_config() {
  mkdir -p "$DIR/data" "$DIR/tmp" "$DIR/log"
  cat >"$DIR/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>$DIR/log/server.log</log>
        <errorlog>$DIR/log/server.err.log</errorlog>
    </logger>
    <http_port>$HTTP_PORT</http_port>
    <tcp_port>$TCP_PORT</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>$DIR/data/</path>
    <tmp_path>$DIR/tmp/</tmp_path>
    <user_files_path>$DIR/data/user_files/</user_files_path>
    <format_schema_path>$DIR/data/format_schemas/</format_schema_path>
    <users_config>/etc/clickhouse-server/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>5368709120</mark_cache_size>
</yandex>
XML
}

start() {
  if ping; then echo "ClickHouse already answers on $URL"; return 0; fi
  install_if_missing
  write_config
  local runner=()
  if [[ "$(id -u)" == 0 ]]; then
    # The server refuses nothing as root, but it should not run as root:
    # the package's own system user owns the data directory instead.
    chown -R clickhouse:clickhouse "$DIR"
    runner=(runuser -u clickhouse --)
  fi
  # setsid: its own process group, so `stop` ends it and nothing else.
  setsid "${runner[@]}" /usr/sbin/clickhouse-server --config-file="$DIR/config.xml" \
    >"$DIR/log/stdout.log" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  for _ in $(seq 1 60); do
    if ping; then echo "ClickHouse $(curl -fsS "$URL" --data-binary 'SELECT version()') on $URL"; return 0; fi
    sleep 0.5
  done
  echo "ClickHouse did not answer on $URL within 30 s; see $DIR/log/" >&2
  tail -n 20 "$DIR/log/server.err.log" >&2 || true
  exit 1
}

stop() {
  local pid
  if pid="$(running_pid)"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    echo "ClickHouse stopped"
  else
    echo "ClickHouse is not running (from $PID_FILE)"
  fi
  rm -f "$PID_FILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if ping; then echo "ClickHouse answers on $URL"; else echo "ClickHouse is not running on $URL"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
