#!/usr/bin/env bash
# The machine-readable specs, checked three ways:
#   1. docs/asyncapi.yaml with @asyncapi/parser (any error-severity diagnostic fails);
#   2. docs/openapi.yaml with `redocly lint` (tools/spec/redocly.yaml);
#   3. schemathesis against a real gateway (target/debug/venta-gateway, embedded
#      mode, INGEST_TOKEN and ADMIN_TOKEN set), bounded in time: no 5xx, and
#      every status, content type, header and body as the spec says.
# The tools are pinned in tools/spec (package-lock.json, requirements.txt) and
# installed under tools/spec/node_modules and target/spec-venv.
#
# Settings (environment): SPECS_MAX_EXAMPLES (150) test cases per operation and
# phase, SPECS_FUZZ_TIMEOUT (180) seconds for the whole schemathesis run,
# SPECS_SEED (fixed, so a CI failure reproduces) for schemathesis' generator.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
die() { printf 'specs: ERROR: %s\n' "$*" >&2; exit 1; }
say() { printf -- '--> %s\n' "$*"; }

max_examples=${SPECS_MAX_EXAMPLES:-150}
fuzz_timeout=${SPECS_FUZZ_TIMEOUT:-180}
seed=${SPECS_SEED:-20261201}

say "spec tools (npm ci in tools/spec)"
command -v npm >/dev/null || die "npm not found"
# npm ci starts from scratch every time; skip it while node_modules was
# installed from this very lockfile.
lock_sum=$(sha256sum tools/spec/package-lock.json | cut -d' ' -f1)
if [ "$(cat tools/spec/node_modules/.venta-lock-sha256 2>/dev/null)" != "$lock_sum" ]; then
    npm ci --prefix tools/spec --no-audit --no-fund --loglevel=error >/dev/null || die "npm ci in tools/spec failed"
    echo "$lock_sum" >tools/spec/node_modules/.venta-lock-sha256
fi

say "AsyncAPI: docs/asyncapi.yaml (@asyncapi/parser)"
(cd tools/spec && node validate-asyncapi.mjs ../../docs/asyncapi.yaml) || die "docs/asyncapi.yaml is not valid"

say "OpenAPI: docs/openapi.yaml (redocly lint)"
# Redocly 2.x prints a Node 20 end-of-life banner; the lint result is what counts.
(cd tools/spec && npx --no-install redocly lint --config redocly.yaml --format stylish ../../docs/openapi.yaml) ||
    die "docs/openapi.yaml does not lint"

say "schemathesis (pinned in tools/spec/requirements.txt, venv target/spec-venv)"
venv=target/spec-venv
want=$(sed -n 's/^schemathesis==//p' tools/spec/requirements.txt)
if [ "$("$venv/bin/schemathesis" --version 2>/dev/null | awk '{print $NF}')" != "$want" ]; then
    python3 -m venv "$venv" || die "python3 -m venv failed (apt-get install python3-venv)"
    "$venv/bin/pip" install -q -r tools/spec/requirements.txt || die "pip install schemathesis failed"
fi

say "gateway binary"
command -v curl >/dev/null || die "curl not found (apt-get install curl)"
cargo build --locked -q -p venta-gateway --bin venta-gateway || die "cargo build failed"

work=$(mktemp -d)
gw_pid=""
cleanup() {
    if [ -n "$gw_pid" ] && kill -0 "$gw_pid" 2>/dev/null; then
        kill -TERM "$gw_pid" 2>/dev/null || true
        wait "$gw_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
port=$(free_port SOCK_STREAM)
grpc_port=$(free_port SOCK_STREAM)
wt_port=$(free_port SOCK_DGRAM)
ingest_token="ingest-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
admin_token="admin-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
base="http://127.0.0.1:$port"

say "starting the gateway on 127.0.0.1:$port (embedded bus, SQLite audit)"
env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
    BIND_ADDR=127.0.0.1 WEBSOCKET_GATEWAY_PORT="$port" GRPC_PORT="$grpc_port" WT_PORT="$wt_port" \
    INGEST_TOKEN="$ingest_token" ADMIN_TOKEN="$admin_token" \
    AUDIT_SQLITE_PATH="$work/audit.db" AUDIT_JOURNAL_DIR="$work/journal" \
    LOG_LEVEL=warn SHUTDOWN_TIMEOUT=5 \
    target/debug/venta-gateway >"$work/gateway.log" 2>&1 &
gw_pid=$!
for _ in $(seq 1 300); do
    curl -fsS "$base/health/ready" >/dev/null 2>&1 && break
    kill -0 "$gw_pid" 2>/dev/null || { cat "$work/gateway.log" >&2; die "the gateway exited at start"; }
    sleep 0.1
done
curl -fsS "$base/health/ready" >/dev/null || { cat "$work/gateway.log" >&2; die "the gateway did not become ready in 30 s"; }

# Real rows for the audit API to answer with (connect, subscribe, unsubscribe,
# disconnect), so its 200 bodies are checked against the schema with data in them.
say "seeding audit rows with one WebSocket session"
node --experimental-websocket --no-warnings tools/spec/seed-audit.mjs "$base" "$admin_token" ||
    die "could not seed audit rows"

say "fuzzing $base (at most ${max_examples} cases per operation and phase, ${fuzz_timeout} s in all)"
# Event streams (/sse/*, /dashboard/stats) never end: schemathesis reads each
# only up to its first event (tools/spec/schemathesis.toml), so they are fuzzed
# like the rest, refusals and streams alike.
# Run from target/: schemathesis keeps its cache of past failures (replayed
# first on the next run) in ./.schemathesis, which must not land in the tree.
status=0
(cd target && VENTA_INGEST_TOKEN="$ingest_token" VENTA_ADMIN_TOKEN="$admin_token" \
    timeout --kill-after=10 "$fuzz_timeout" \
    "$root/$venv/bin/schemathesis" --config-file "$root/tools/spec/schemathesis.toml" run "$root/docs/openapi.yaml" \
    --url "$base" \
    --max-examples "$max_examples" --seed "$seed" \
    --report junit --report-dir "$root/target/specs-report") || status=$?
if ! kill -0 "$gw_pid" 2>/dev/null; then
    cat "$work/gateway.log" >&2
    die "the gateway died during the fuzzing"
fi
if grep -q 'panicked' "$work/gateway.log"; then
    grep -B2 -A10 'panicked' "$work/gateway.log" >&2
    die "the gateway panicked during the fuzzing"
fi
[ "$status" -eq 124 ] && die "schemathesis did not finish within ${fuzz_timeout} s"
[ "$status" -eq 0 ] || die "schemathesis found problems (exit $status); report in target/specs-report"
say "specs ok"
