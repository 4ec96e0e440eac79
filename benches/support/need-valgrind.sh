#!/usr/bin/env bash
# The benchmark counts instructions with valgrind's callgrind (the CPU
# target read without the machine's noise; see BENCHMARKS.md), and
# `make test` runs that path once in tests/bench_smoke.rs. Installs Debian's
# valgrind package when `valgrind` is missing.
set -euo pipefail
command -v valgrind >/dev/null && exit 0
echo "need-valgrind.sh: valgrind not found; installing Debian's valgrind package" >&2
[[ "$(id -u)" == 0 ]] || { echo "need-valgrind.sh: installing needs root: sudo apt-get install -y valgrind" >&2; exit 1; }
DEBIAN_FRONTEND=noninteractive apt-get install -y valgrind >&2 ||
  { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y valgrind >&2; }
command -v valgrind >/dev/null || { echo "need-valgrind.sh: valgrind still not found after installing" >&2; exit 1; }
