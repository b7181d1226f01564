#!/bin/sh
# The gateway as a "peer" of bench/bench.py, features on: per-client
# rate limits counted in Redis (per-IP connect limit off: loadgen is one IP),
# metrics, the SQLite audit trail, heartbeats. bench.py sets PORT, HOST and
# NATS_URL; everything else can be overridden from the environment.
# JWT auth is on only when JWT_SECRET is set: loadgen sends one userId per
# connection (u0, u1, ...) and one token for all (in --path), and the gateway
# refuses a subscribe whose userId is not the token's sub, so with auth on
# loadgen's subscribes are refused. `venta bench` (one token, userId =
# sub) measures auth on against off (docs/BENCHMARKS.md).
# The peers' nats-server (Debian 2.9.10) has no JetStream async-nats can use,
# so the last-value cache is off, as in the peers.
set -eu
: "${GATEWAY_BIN:?path to target/release/venta-gateway}"
audit_dir=$(mktemp -d /tmp/venta-bench-audit.XXXXXX)
export WEBSOCKET_GATEWAY_PORT="${PORT:-18080}" BIND_ADDR="${HOST:-127.0.0.1}"
export GRPC_PORT="${GRPC_PORT:-$((${PORT:-18080} + 1))}" WT_PORT="${WT_PORT:-${PORT:-18080}}"
export NATS_JETSTREAM="${NATS_JETSTREAM:-false}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}" REDIS_KEY_PREFIX="${REDIS_KEY_PREFIX:-venta-bench}"
export WS_MAX_CONNECTIONS="${WS_MAX_CONNECTIONS:-110000}" WS_MAX_CONNECTIONS_PER_USER="${WS_MAX_CONNECTIONS_PER_USER:-110000}"
export AUDIT_SQLITE_PATH="${AUDIT_SQLITE_PATH:-$audit_dir/audit.db}" AUDIT_JOURNAL_DIR="${AUDIT_JOURNAL_DIR:-$audit_dir/journal}"
export LOG_LEVEL="${LOG_LEVEL:-warn}"
exec "$GATEWAY_BIN"
