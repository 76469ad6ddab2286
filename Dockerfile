# syntax=docker/dockerfile:1
# The sluice image: one binary for every role (gateway, queue-worker, autoscaler, watchdog, and
# the client commands). From the repository root:
#
#   docker build -t ghcr.io/sluice-dev/sluice:0.1.0 .
#
# The Helm chart (charts/sluice) runs it; functions/Dockerfile copies the binary out of it.

FROM rust:1.89-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and git caches survive between builds; target/ stays in the layer so the binary
# can be copied out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo build --release --locked -p sluice-cli

FROM debian:bookworm-slim
# Certificates for HTTPS callbacks and TLS to Postgres and NATS: always the newest, not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/sluice --no-create-home \
        --shell /usr/sbin/nologin sluice \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/sluice
COPY --from=builder /src/target/release/sluice /usr/local/bin/sluice
# `sluice up` and `sluice gateway` keep their data dir (default .sluice) here.
WORKDIR /var/lib/sluice
USER 10001
EXPOSE 8080
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="An OpenFaaS-compatible function gateway" \
      org.opencontainers.image.source="https://github.com/sluice-dev/sluice" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["sluice"]
CMD ["--help"]
