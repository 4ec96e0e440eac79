#!/usr/bin/env bash
# Runs a command with a test service up: starts it when `CTL status` says
# it is not running, runs the command, and stops the service again only if
# this script started it. The command's exit status is passed through.
#
# Usage: tests/services/with-service.sh CTL COMMAND [ARGS...]
#   CTL: a script taking start|stop|status (tests/services/clickhouse.sh,
#        tests/services/postgres.sh, localstack/localstack.sh)
set -euo pipefail

ctl="$1"
shift
started_here=0
if ! "$ctl" status >/dev/null 2>&1; then
  started_here=1
fi
# `start` installs what is missing and waits until the service answers; it
# fails loudly (and non-zero) when it cannot: tests never skip.
"$ctl" start

cleanup() {
  if ((started_here)); then
    "$ctl" stop || true
  fi
}
trap cleanup EXIT
"$@"
