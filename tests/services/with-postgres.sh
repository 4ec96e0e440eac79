#!/usr/bin/env bash
# Runs a command with the test PostgreSQL up: starts it when nothing answers
# on its port, exports S3I_POSTGRES_URL, runs the command, and stops the
# server again only if this script started it. The command's exit status is
# passed through.
#
# Usage: tests/services/with-postgres.sh COMMAND [ARGS...]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ctl="$here/postgres.sh"

started_here=0
if ! "$ctl" status >/dev/null 2>&1; then
  started_here=1
fi
# Fails loudly (non-zero) when the server cannot start: tests never skip.
"$ctl" start

cleanup() {
  if ((started_here)); then
    "$ctl" stop || true
  fi
}
trap cleanup EXIT

export S3I_POSTGRES_URL="${S3I_POSTGRES_URL:-$("$ctl" url)}"
"$@"
