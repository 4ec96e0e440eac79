#!/usr/bin/env bash
# Runs a command with the test PostgreSQL up (see with-service.sh) and
# S3I_POSTGRES_URL pointing at it.
#
# Usage: tests/services/with-postgres.sh COMMAND [ARGS...]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export S3I_POSTGRES_URL="${S3I_POSTGRES_URL:-$("$here/postgres.sh" url)}"
exec "$here/with-service.sh" "$here/postgres.sh" "$@"
