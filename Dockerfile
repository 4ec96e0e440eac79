# syntax=docker/dockerfile:1
# s3-ingest container image: a release build, then a small runtime image
# with CA certificates and a non-root user.
#
#   docker build -t s3-ingest \
#     --build-arg S3_INGEST_COMMIT=$(git rev-parse --short=12 HEAD) \
#     --build-arg S3_INGEST_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1) .
#   docker run --rm -e S3_INGEST__QUEUE__URL=... -v $PWD/s3-ingest.toml:/etc/s3-ingest.toml:ro \
#     s3-ingest --config /etc/s3-ingest.toml
#
# Without a Docker engine, `make image` builds this file with buildah
# (infra/image/build.sh) from base images it makes from Debian's packages,
# passed as the two build arguments below.

ARG BUILDER_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS build
# The commit `s3-ingest --version` names (build.rs): .git is not sent.
ARG S3_INGEST_COMMIT=unknown
ENV S3_INGEST_COMMIT=${S3_INGEST_COMMIT}
WORKDIR /src
# The context is an allowlist (.dockerignore): the manifest, src/, and the
# bench and test files the manifest declares.
COPY . .
# The registry and the target directory live in cache mounts, so a source
# change rebuilds only this crate, not the AWS SDK and arrow. The binary
# is copied out of the mount into the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin s3-ingest \
    && cp target/release/s3-ingest /usr/local/bin/s3-ingest

FROM ${RUNTIME_IMAGE} AS runtime
ARG S3_INGEST_COMMIT=unknown
ARG S3_INGEST_VERSION=unknown
# Where the source is published (`git remote get-url origin`); empty when unknown.
ARG S3_INGEST_SOURCE=
LABEL org.opencontainers.image.title="s3-ingest" \
      org.opencontainers.image.description="Ingests CSV and Parquet files the moment they land in S3" \
      org.opencontainers.image.source="${S3_INGEST_SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0 OR MIT" \
      org.opencontainers.image.version="${S3_INGEST_VERSION}" \
      org.opencontainers.image.revision="${S3_INGEST_COMMIT}"
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 65532 --no-create-home --shell /usr/sbin/nologin s3ingest \
    && mkdir -p /data && chown 65532:65532 /data
COPY --from=build /usr/local/bin/s3-ingest /usr/local/bin/s3-ingest
USER 65532
# parquet_dir output and scratch space stay writable under a read-only root.
VOLUME ["/data", "/tmp"]
# /metrics, /healthz, /readyz
EXPOSE 9090
# The binary probes its own /healthz and reads no config to do it (set
# S3_INGEST__STATUS__LISTEN_ADDR if the config moves the port): no curl.
HEALTHCHECK --interval=30s --timeout=6s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/s3-ingest", "healthcheck"]
# SIGTERM starts a graceful drain (see README); keep the stop timeout above
# worker.shutdown_grace_secs.
STOPSIGNAL SIGTERM
# glibc keeps up to 8 malloc arenas per core, each holding memory freed by
# the decoder threads; two keep RSS about 20 MiB lower with no measurable
# cost here (tests/it/memory.rs runs the worker the same way).
ENV MALLOC_ARENA_MAX=2
ENTRYPOINT ["/usr/local/bin/s3-ingest"]
CMD ["run", "--log-format", "json"]
