# venta-gateway container image.
#
#   docker build -t venta-gateway .
#   docker run --rm -p 127.0.0.1:5006:5006/tcp -p 127.0.0.1:5006:5006/udp \
#       -p 127.0.0.1:5007:5007 venta-gateway
#
# Publish on 127.0.0.1 until auth is configured: without JWT_SECRET /
# JWT_PUBLIC_KEY and INGEST_TOKEN anyone who reaches the ports can subscribe
# and publish (see docker-compose.yml and README "Containers").
#
# Base images are pinned to exact versions (RUST_VERSION, DEBIAN_VERSION);
# the builder and the runtime are the same Debian release (same glibc).
#
# Works with BuildKit and with the classic builder (docker-compose v1 builds
# with it by default): no `# syntax=` line, no heredocs, no RUN --mount.
#
# Stages:
#   base     - Rust toolchain (protoc is vendored by build.rs)
#   planner  - reduces the build context to a dependency "skeleton": the
#              manifests, Cargo.lock and a stub for every target root of every
#              crate under crates/ (src/main.rs, src/lib.rs, build.rs, ...), so that Cargo can parse the manifest even when it
#              declares [[bin]]/[[bench]]/[[test]] targets. The skeleton only
#              changes when the manifest, the lock file or the set of targets
#              changes, so the dependency layer below stays cached otherwise.
#   builder  - builds all dependencies from the skeleton (cached layer), then
#              the real crate. The health probe is a subcommand of the same
#              binary (`venta-gateway healthcheck`): nothing else to build.
#   runtime  - debian:${DEBIAN_VERSION}-slim (the builder's release), non-root.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_VERSION=13.6

# ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-trixie AS base

# No system packages needed: protoc comes from the protoc-bin-vendored crate
# (build.rs), SQLite is bundled by sqlx.

ENV CARGO_TERM_COLOR=never
WORKDIR /build

# ---------------------------------------------------------------------------
FROM base AS planner

COPY . .

# Stub every target root of every workspace crate. An explicit
# `path = "..."` outside these places would need adding here.
RUN set -eu; \
    mkdir -p /skeleton; \
    cp Cargo.toml Cargo.lock /skeleton/; \
    for m in crates/*/Cargo.toml; do \
        mkdir -p "/skeleton/$(dirname "$m")"; cp "$m" "/skeleton/$m"; \
    done; \
    for f in crates/*/build.rs crates/*/src/main.rs crates/*/src/lib.rs \
             crates/*/src/bin/*.rs crates/*/benches/*.rs crates/*/tests/*.rs \
             crates/*/examples/*.rs; do \
        [ -f "$f" ] || continue; \
        mkdir -p "/skeleton/$(dirname "$f")"; \
        case "$f" in */src/lib.rs) : > "/skeleton/$f" ;; \
                     *) echo 'fn main() {}' > "/skeleton/$f" ;; esac; \
    done

# ---------------------------------------------------------------------------
FROM base AS builder

# 1. Dependencies only: this layer is reused until Cargo.toml, Cargo.lock or
#    the set of targets changes.
COPY --from=planner /skeleton/ ./
RUN cargo fetch --locked \
 && cargo build --release --locked -p venta-gateway --bin venta-gateway \
 && rm -rf crates

# 2. The real sources. COPY cannot copy a path only "if present", so each
#    directory the build needs is listed; uncomment a line once it exists.
COPY crates ./crates
COPY proto ./proto
# sqlx::migrate! embeds the audit migrations into the binary at build time.
COPY migrations ./migrations
# COPY schemas ./schemas

# Forget the stub build of this crate (COPY keeps the context's mtimes, which
# may be older than the stub's artefacts), then build and install the binary.
RUN rm -rf target/release/.fingerprint/venta-* \
           target/release/build/venta-* \
           target/release/deps/venta_* \
           target/release/deps/libventa_* \
           target/release/venta-gateway \
 && cargo build --release --locked -p venta-gateway --bin venta-gateway \
 && install -D -m 0755 target/release/venta-gateway /out/venta-gateway

# ---------------------------------------------------------------------------
FROM debian:${DEBIAN_VERSION}-slim AS runtime

ARG DEBIAN_VERSION
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=

LABEL org.opencontainers.image.title="venta-gateway" \
      org.opencontainers.image.description="Real-time gateway: vendor location and vendor data updates to WebSocket and WebTransport clients" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="docker.io/library/debian:${DEBIAN_VERSION}-slim"

# ca-certificates: TLS to NATS/Redis/PostgreSQL (rustls + webpki/native roots).
# Non-root user with a fixed uid/gid; its home is the working directory, where
# the SQLite audit file (embedded mode) and the audit spill journal live.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 venta \
 && useradd --system --uid 10001 --gid venta --no-create-home \
            --home-dir /var/lib/venta-gateway --shell /usr/sbin/nologin venta \
 && install -d -o venta -g venta -m 0750 /var/lib/venta-gateway

COPY --from=builder /out/venta-gateway /usr/local/bin/venta-gateway

WORKDIR /var/lib/venta-gateway
USER 10001:10001

ENV BIND_ADDR=:: \
    LOG_FORMAT=json \
    AUDIT_SQLITE_PATH=/var/lib/venta-gateway/venta-gateway-audit.db \
    AUDIT_JOURNAL_DIR=/var/lib/venta-gateway/audit-journal

# 5006/tcp HTTP + WebSocket, 5006/udp WebTransport (HTTP/3), 5007/tcp gRPC.
EXPOSE 5006/tcp 5006/udp 5007/tcp

# The gateway handles SIGTERM itself: stop accepting, close clients with 1001,
# flush audit, drain NATS, exit 0 within SHUTDOWN_TIMEOUT (10 s by default;
# give `docker stop -t` / stop_grace_period more than that).
STOPSIGNAL SIGTERM

# Liveness probe: `venta-gateway healthcheck` (crates/gateway/src/healthcheck.rs)
# GETs /health/live on 127.0.0.1:$WEBSOCKET_GATEWAY_PORT and exits 0 on 200,
# 1 otherwise; every step has a timeout, and no gateway setting is parsed.
# Exec form: no shell involved.
# /health/live rather than /health/ready: Docker (and Swarm) restart or drop
# unhealthy containers, and a NATS outage makes every instance "not ready" at
# once. docker-compose.yml probes readiness instead
# (`venta-gateway healthcheck /health/ready`), for depends_on and operators.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/venta-gateway", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/venta-gateway"]
