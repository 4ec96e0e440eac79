#!/usr/bin/env bash
# Runs a command with LocalStack up: starts it when nothing healthy answers
# on 127.0.0.1:4566, runs the command, and stops LocalStack again only if
# this script started it. The command's exit status is passed through.
#
# Usage: localstack/with-localstack.sh COMMAND [ARGS...]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ctl="$here/localstack.sh"

started_here=0
if ! "$ctl" status >/dev/null 2>&1; then
  started_here=1
fi
# `start` installs the venv when missing and waits for health; it fails
# loudly (and non-zero) if LocalStack cannot start: tests never skip.
"$ctl" start

cleanup() {
  if ((started_here)); then
    "$ctl" stop || true
  fi
}
trap cleanup EXIT

export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
"$@"
