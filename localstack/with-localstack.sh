#!/usr/bin/env bash
# Runs a command with LocalStack up: starts it when nothing healthy answers
# on 127.0.0.1:4566 (installing the venv the first time), runs the command,
# and stops LocalStack again only if it started it. The command's exit
# status is passed through.
#
# Usage: localstack/with-localstack.sh COMMAND [ARGS...]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
exec "$here/../tests/services/with-service.sh" "$here/localstack.sh" "$@"
