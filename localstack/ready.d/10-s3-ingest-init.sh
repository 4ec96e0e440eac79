#!/bin/sh
# LocalStack ready hook (docker-compose.yml mounts this into
# /etc/localstack/init/ready.d/). LocalStack runs *.sh hooks as programs but
# exec()s *.py hooks inside its own process (no __main__, no argv), so a tiny
# shell wrapper is the way to reuse init.py unchanged.
set -eu

# The image keeps LocalStack (and boto3) in this venv; fall back to PATH.
PY=/opt/code/localstack/.venv/bin/python
[ -x "$PY" ] || PY=python3

# Inside the container LocalStack listens on 4566 on all interfaces.
# S3I_INIT_PY only exists so the hook can be exercised outside the container.
exec "$PY" "${S3I_INIT_PY:-/opt/s3-ingest/init.py}" --endpoint-url http://127.0.0.1:4566
