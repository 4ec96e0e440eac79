# The two commands that matter: `make demo` and `make test`.
#
# Builds reuse one target directory outside the checkout so a fresh clone
# (and CI) does not rebuild the AWS SDK and arrow from scratch.
CARGO_TARGET_DIR ?= $(HOME)/.cache/s3-ingest/target
export CARGO_TARGET_DIR

WITH_LOCALSTACK := localstack/with-localstack.sh
# The benchmark counts instructions under valgrind (callgrind); installed
# from Debian's package when missing.
NEED_VALGRIND := benches/support/need-valgrind.sh
# The sink tests need real servers: PostgreSQL and ClickHouse, installed
# from Debian's packages when missing, started for the run and stopped after.
WITH_POSTGRES := tests/services/with-postgres.sh
WITH_CLICKHOUSE := tests/services/with-service.sh tests/services/clickhouse.sh
# The delta sink's tests read its tables with delta-rs' Python binding,
# installed from PyPI into a venv of its own the first time.
NEED_DELTA_READER := tests/services/need-delta-reader.sh

.PHONY: all build test unit-test lint infra-check fmt fuzz demo localstack-start localstack-stop clean-demo bench bench-memory image image-test

all: build

build:
	cargo build --all-targets

## Every test: unit tests, the LocalStack integration tests, the sink tests
## against real PostgreSQL, ClickHouse and Delta tables (read back by
## delta-rs' Python binding), and a minute of fuzzing. Starts
## what it needs (installing LocalStack into a venv, and the servers from
## Debian's packages, the first time) and stops what it started.
test:
	$(NEED_VALGRIND)
	$(NEED_DELTA_READER)
	$(WITH_LOCALSTACK) $(WITH_POSTGRES) $(WITH_CLICKHOUSE) cargo test --all-targets
	fuzz/smoke.sh

## Unit tests only (no LocalStack).
unit-test:
	cargo test --lib --bins

## Formatting and lints, as CI checks them; infra/check.sh: terraform fmt,
## validate and tests (offline) and checkov on infra/.
lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	infra/check.sh

infra-check:
	infra/check.sh

fmt:
	cargo fmt

## Fuzz the notification parser (needs nightly + cargo-fuzz; see fuzz/README.md).
## `make test` runs it for a minute (fuzz/smoke.sh); this runs it longer.
FUZZ_SECONDS ?= 120
fuzz:
	mkdir -p fuzz/corpus/notification
	cd fuzz && CARGO_TARGET_DIR=$(HOME)/.cache/s3-ingest/fuzz-target cargo +nightly fuzz run notification \
		corpus/notification seeds/notification -- -dict=notification.dict -max_len=4096 \
		-max_total_time=$(FUZZ_SECONDS)

## Benchmarks (see BENCHMARKS.md): the decode stage in memory against bare
## arrow-csv / parquet (criterion), then the worker binary end to end on
## LocalStack, and both counted in instructions under callgrind (the CPU
## target without the machine's noise). Sizes by env, e.g.
## `BENCH_SIZES=10KiB,1MiB BENCH_INSTRUCTIONS=1MiB make bench`.
## Last, the memory bound at 2 GiB objects (`make bench-memory`).
bench:
	$(NEED_VALGRIND)
	cargo bench --bench decode
	$(WITH_LOCALSTACK) cargo bench --bench e2e
	$(MAKE) bench-memory

## tests/it/memory.rs at 2 GiB, release build: a 2 GiB CSV alone, then with a
## 2 GiB Parquet object (128 MiB row groups) at once; peak RSS per phase.
## Takes about 15 minutes and 10 GB of disk under LocalStack.
MEMORY_LARGE ?= 2GiB
bench-memory:
	S3I_MEMORY_LARGE=$(MEMORY_LARGE) $(WITH_LOCALSTACK) cargo test --release --test it memory:: -- --nocapture

## The container image from ./Dockerfile, without a Docker engine: buildah
## with base images made from Debian's packages (installs buildah, podman
## and mmdebstrap the first time; needs root). A cold build takes about half
## an hour on 2 cores (a release build of the AWS SDK and arrow), later ones
## 2-3 minutes (cargo's cache mount). IMAGE=name:tag.
image:
	infra/image/build.sh

## Runs the built image's binary against LocalStack: --version, the health
## check, a CSV ingested end to end, SIGTERM. See infra/image/test.sh.
image-test:
	infra/image/test.sh

## End to end on LocalStack: worker + sample vendor files + what landed.
demo:
	examples/demo.sh

localstack-start:
	localstack/localstack.sh start

localstack-stop:
	localstack/localstack.sh stop

clean-demo:
	rm -rf demo-output
