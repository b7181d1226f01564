#!/usr/bin/env bash
# JWT auth off against on, paired, with `venta bench` (s1 and s3
# presets over NATS), the gateway as docs/benchmarks/gateway-peer.sh runs it
# (features on) on CPU 0, the bench on CPU 1. loadgen cannot do this (one
# token, many userIds), so this is the auth figure of docs/BENCHMARKS.md.
#
#   docs/benchmarks/auth-ab.sh [reps=2] [out=/tmp/auth-ab.jsonl]
#
# One token for all 10,000 clients means one user: the per-user message
# budget (WS_RATE_LIMIT, counted in Redis) would refuse their subscribes,
# so it is raised for both arms; rate limiting stays on.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
reps=${1:-2}
out=${2:-/tmp/auth-ab.jsonl}
bin=${GATEWAY_BIN:-$root/target/release/venta-gateway}
venta=${VENTA_BIN:-$root/target/release/venta}
nats=${NATS_SERVER:-$(command -v nats-server || echo "$root/target/nats-venv/bin/nats-server")}
[ -x "$bin" ] || { echo "no gateway at $bin: cargo build --release" >&2; exit 1; }
[ -x "$venta" ] || { echo "no venta (the bench) at $venta: cargo build --release" >&2; exit 1; }
secret=auth-ab-secret-0123456789abcdef
token=$(JWT_SECRET=$secret "$bin" gentoken --sub benchuser --ttl 86400)
export WS_RATE_LIMIT=1000000
ulimit -n "$(ulimit -Hn)"
taskset -c 1 "$nats" -a 127.0.0.1 -p 14288 >/dev/null 2>&1 &
nats_pid=$!
trap 'kill $nats_pid 2>/dev/null || true' EXIT
sleep 0.5
for rep in $(seq "$reps"); do for auth in off on; do for sc in s1 s3; do
    tok=()
    if [ $auth = on ]; then export JWT_SECRET=$secret; tok=(--token "$token"); else unset JWT_SECRET; fi
    PORT=18400 HOST=127.0.0.1 NATS_URL=nats://127.0.0.1:14288 GATEWAY_BIN=$bin \
        taskset -c 0 "$root/docs/benchmarks/gateway-peer.sh" >/dev/null 2>&1 &
    gw=$!
    for _ in $(seq 100); do curl -sf localhost:18400/health/ready >/dev/null && break; sleep 0.1; done
    sleep 1
    echo "[auth-ab] rep $rep, auth $auth, $sc" >&2
    taskset -c 1 "$venta" bench --scenario "$sc" --url ws://127.0.0.1:18400/ws/location --via nats \
        --nats nats://127.0.0.1:14288 --pid "$gw" "${tok[@]}" --label "auth-$auth/$sc/$rep" | tail -1 >>"$out"
    kill "$gw"; wait "$gw" 2>/dev/null || true
    sleep 2
done; done; done
echo "results: $out" >&2
