#!/usr/bin/env bash
# The delta sink's tests read its tables back with an engine of their own:
# the `deltalake` Python package (delta-rs' Python binding, with pyarrow),
# honouring the table's log. Installs it from PyPI into its own venv the
# first time, or when the pins change; prints nothing when it is there.
#
#   S3I_DELTA_READER_VENV  venv location (default: $HOME/.cache/s3-ingest/delta-reader-venv)
set -euo pipefail

VENV="${S3I_DELTA_READER_VENV:-$HOME/.cache/s3-ingest/delta-reader-venv}"
PYTHON="${PYTHON:-python3}"
# Known to install and read delta-rs 1.1 tables on CPython 3.11.
PINS=("deltalake==1.6.6" "pyarrow==21.0.0")
MARKER="$VENV/.s3-ingest-pins"

if [[ -x "$VENV/bin/python" && -f "$MARKER" && "$(cat "$MARKER")" == "${PINS[*]}" ]]; then
  exit 0
fi
echo "need-delta-reader.sh: installing ${PINS[*]} into $VENV" >&2
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
"$VENV/bin/python" -c 'import deltalake, pyarrow.dataset' ||
  { echo "need-delta-reader.sh: deltalake does not import after installing" >&2; exit 1; }
echo "${PINS[*]}" > "$MARKER"
