#!/usr/bin/env bash
# A throwaway PostgreSQL server for the `postgres` sink's integration tests.
#
# Uses the server binaries under /usr/lib/postgresql/*/bin (the newest one);
# when there are none, installs Debian's `postgresql` package. PostgreSQL
# refuses to run as root, so initdb and pg_ctl run as the `postgres` OS user
# with a data directory that user owns. Trust authentication on loopback
# only: this server is for tests, never for data.
#
# TLS is on: a throwaway CA and a server certificate for 127.0.0.1 and
# localhost live in $DATA_DIR/s3i-tls (made when missing or about to
# expire, so a data directory from before TLS just works), and every start
# passes ssl=on with them. `ca` prints the CA certificate's path, for the
# sink's `ca_file`. Plain connections are still accepted.
#
# Usage: tests/services/postgres.sh install|start|stop|status|url|ca
#
# Environment:
#   S3I_POSTGRES_PORT      port on 127.0.0.1       (default: 55432)
#   S3I_POSTGRES_DATA      data directory          (default: /var/tmp/s3-ingest-postgres)
#   S3I_POSTGRES_TIMEOUT   seconds to wait for it  (default: 60)
set -euo pipefail

PORT="${S3I_POSTGRES_PORT:-55432}"
DATA_DIR="${S3I_POSTGRES_DATA:-/var/tmp/s3-ingest-postgres}"
START_TIMEOUT="${S3I_POSTGRES_TIMEOUT:-60}"
OS_USER=postgres
LOG_FILE="$DATA_DIR.log"
TLS_DIR="$DATA_DIR/s3i-tls"

log() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

bin_dir() {
  # The newest installed major version; `sort -V` orders 9.6 < 15 < 16.
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  [[ -n "$dir" && -x "$dir/pg_ctl" ]] && printf '%s\n' "$dir"
}

# Runs a command as the postgres OS user (we may be root; the server is not).
as_pg() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u "$OS_USER" -- "$@"
  else
    "$@"
  fi
}

cmd_install() {
  if [[ -n "$(bin_dir)" ]]; then
    return 0
  fi
  log "no server under /usr/lib/postgresql; installing Debian's postgresql package"
  [[ "$(id -u)" == 0 ]] || die "installing needs root: apt-get install -y postgresql"
  DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2 ||
    { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2; }
  [[ -n "$(bin_dir)" ]] || die "postgresql installed but no pg_ctl under /usr/lib/postgresql/*/bin"
}

is_ready() {
  local bin
  bin="$(bin_dir)" || return 1
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres
}

cmd_status() {
  if is_ready; then
    echo "running on 127.0.0.1:$PORT"
  else
    echo "not running"
    return 1
  fi
}

# Whether the running server has TLS on (one started by an older version
# of this script has not).
has_tls() {
  local bin
  bin="$(bin_dir)" || return 1
  [[ "$("$bin/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -XAtc 'SHOW ssl' 2>/dev/null)" == on ]]
}

# A CA and a server certificate signed by it for 127.0.0.1 and localhost
# (rustls checks the chain, the name and the key usages), unless valid
# ones are there for at least another day.
ensure_tls_files() {
  if [[ -f "$TLS_DIR/ca.crt" && -f "$TLS_DIR/server.key" && -f "$TLS_DIR/server.crt" ]] &&
    openssl x509 -checkend 86400 -noout -in "$TLS_DIR/server.crt" >/dev/null &&
    openssl x509 -checkend 86400 -noout -in "$TLS_DIR/ca.crt" >/dev/null; then
    return 0
  fi
  command -v openssl >/dev/null || die "openssl is needed to make the test certificates: apt-get install -y openssl"
  log "making a test CA and server certificate in $TLS_DIR"
  mkdir -p "$TLS_DIR"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -days 3650 -subj "/CN=s3-ingest test CA" \
    -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null ||
    die "openssl could not make the test CA"
  openssl req "${ec[@]}" -subj "/CN=localhost" \
    -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null ||
    die "openssl could not make the server key"
  printf '%s\n' \
    "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" >"$TLS_DIR/server.ext"
  openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.crt" -CAkey "$TLS_DIR/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$TLS_DIR/server.ext" \
    -out "$TLS_DIR/server.crt" 2>/dev/null ||
    die "openssl could not sign the server certificate"
  rm -f "$TLS_DIR/server.csr" "$TLS_DIR/server.ext"
  # The server refuses a key others can read; the CA certificate is public.
  chown -R "$OS_USER" "$TLS_DIR" 2>/dev/null || true
  chmod 700 "$TLS_DIR"
  chmod 600 "$TLS_DIR/server.key" "$TLS_DIR/ca.key"
  chmod 644 "$TLS_DIR/ca.crt" "$TLS_DIR/server.crt"
}

cmd_start() {
  if is_ready; then
    if has_tls; then
      log "already running on 127.0.0.1:$PORT"
      return 0
    fi
    log "running without TLS (started by an older postgres.sh): restarting it with TLS"
    cmd_stop
  fi
  cmd_install
  local bin
  bin="$(bin_dir)"
  if [[ ! -f "$DATA_DIR/PG_VERSION" ]]; then
    log "initialising $DATA_DIR"
    mkdir -p "$DATA_DIR"
    chown "$OS_USER" "$DATA_DIR" 2>/dev/null || true
    chmod 700 "$DATA_DIR"
    as_pg "$bin/initdb" -D "$DATA_DIR" -U postgres --auth=trust --encoding=UTF8 --no-locale >&2
  fi
  ensure_tls_files
  touch "$LOG_FILE"
  chown "$OS_USER" "$LOG_FILE" 2>/dev/null || true
  # Loopback only, trust auth (initdb --auth=trust), enough connections for
  # parallel tests, socket in the data dir (no /var/run/postgresql needed),
  # TLS on with the test certificate (passed on every start, so a data dir
  # initialised before TLS needs no change).
  as_pg "$bin/pg_ctl" -D "$DATA_DIR" -l "$LOG_FILE" -w -t "$START_TIMEOUT" \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=$DATA_DIR -c max_connections=200 -c fsync=off -c ssl=on -c ssl_cert_file=$TLS_DIR/server.crt -c ssl_key_file=$TLS_DIR/server.key" \
    start >&2 || die "server did not start; see $LOG_FILE"
  local deadline=$((SECONDS + START_TIMEOUT))
  until is_ready; do
    ((SECONDS < deadline)) || die "not ready after ${START_TIMEOUT}s; see $LOG_FILE"
    sleep 0.5
  done
  log "ready on 127.0.0.1:$PORT"
}

cmd_stop() {
  local bin
  bin="$(bin_dir)" || return 0
  if [[ -f "$DATA_DIR/postmaster.pid" ]]; then
    as_pg "$bin/pg_ctl" -D "$DATA_DIR" -m fast -w stop >&2 || true
  fi
}

cmd_url() {
  echo "postgres://postgres@127.0.0.1:$PORT/postgres"
}

cmd_ca() {
  echo "$TLS_DIR/ca.crt"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  url) cmd_url ;;
  ca) cmd_ca ;;
  *) die "usage: $0 install|start|stop|status|url|ca" ;;
esac
