# syntax=docker/dockerfile:1
# s3-ingest container image: a release build, then a small runtime image
# with CA certificates and a non-root user.
#
#   docker build -t s3-ingest .
#   docker run --rm -e S3_INGEST__QUEUE__URL=... -v $PWD/s3-ingest.toml:/etc/s3-ingest.toml:ro \
#     s3-ingest --config /etc/s3-ingest.toml

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild the AWS SDK.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin s3-ingest

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 65532 --no-create-home --shell /usr/sbin/nologin s3ingest \
    && mkdir -p /data && chown 65532:65532 /data
COPY --from=build /src/target/release/s3-ingest /usr/local/bin/s3-ingest
USER 65532
# parquet_dir output and scratch space stay writable under a read-only root.
VOLUME ["/data", "/tmp"]
# /metrics, /healthz, /readyz
EXPOSE 9090
# The binary probes its own /healthz: no curl in the image.
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
