#!/usr/bin/env bash
# 100,000 idle, subscribed WebSocket connections to one gateway on this
# machine (docs/BENCHMARKS.md, "100,000 idle connections").
#
#   docs/benchmarks/idle100k.sh bench/target/release/loadgen [conns] [vendors]
#
# Starts its own nats-server (core NATS) and a release gateway (features on,
# as docs/benchmarks/gateway-peer.sh), pinned to CPU 0, then the team's
# loadgen on CPU 1: connect at 5,000/s, one update per vendor until every
# client has one, hold. Prints loadgen's progress and a summary: gateway RSS
# before and after, per connection, and the kernel's socket memory.
#
# OS limits this needs, raised here for these processes only:
# - RLIMIT_NOFILE: one descriptor per connection in the gateway and in
#   loadgen, so a hard limit of conns + 1,000. Raising a hard limit needs
#   CAP_SYS_RESOURCE (`ulimit -Hn`, systemd LimitNOFILE=, docker
#   --ulimit nofile=, compose `ulimits:`); the team's machines cap it at 20,000
#   without that capability, so there: `idle100k.sh LOADGEN 19000 1900`;
# - ephemeral ports: one local port per connection per source address
#   (net.ipv4.ip_local_port_range gives ~28,000), so clients connect from
#   127.0.0.2-127.0.0.6 (loopback answers all of 127/8; nothing to configure);
# - the accept backlog: WS_ACCEPT_BACKLOG (4096) is capped by
#   net.core.somaxconn (4096 on this kernel): enough at 5,000 connects/s.
set -euo pipefail
loadgen=${1:?usage: idle100k.sh LOADGEN [conns] [vendors]}
conns=${2:-100000}
vendors=${3:-10000}
root=$(cd "$(dirname "$0")/../.." && pwd)
gateway=${GATEWAY_BIN:-$root/target/release/venta-gateway}
nats=${NATS_SERVER:-$(command -v nats-server || echo "$root/target/nats-venv/bin/nats-server")}
[ -x "$gateway" ] || { echo "no gateway at $gateway: cargo build --release" >&2; exit 1; }
[ -x "$loadgen" ] || { echo "no loadgen at $loadgen (build it: cd bench && cargo build --release --locked)" >&2; exit 1; }
[ -x "$nats" ] || { echo "no nats-server (PATH or target/nats-venv)" >&2; exit 1; }

need=$((conns + 1000))
ulimit -Hn "$need" 2>/dev/null || true
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$need" ]; then
    echo "RLIMIT_NOFILE hard limit is $(ulimit -Hn) and cannot be raised here (no CAP_SYS_RESOURCE):" \
        "$conns connections need $need; try $(( $(ulimit -Hn) - 1000 )) connections" >&2
    exit 1
fi
ulimit -n "$need"
echo "RLIMIT_NOFILE $(ulimit -n); ip_local_port_range $(cat /proc/sys/net/ipv4/ip_local_port_range | tr '\t' -)," \
    "somaxconn $(cat /proc/sys/net/core/somaxconn)"

work=$(mktemp -d /tmp/venta-idle100k.XXXXXX)
nats_port=14299 port=18299
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
taskset -c 1 "$nats" -a 127.0.0.1 -p "$nats_port" >"$work/nats.log" 2>&1 &
pids+=($!)
sleep 0.5
PORT=$port HOST=127.0.0.1 NATS_URL=nats://127.0.0.1:$nats_port GATEWAY_BIN=$gateway \
    WS_MAX_CONNECTIONS=$((conns + 1000)) WS_MAX_CONNECTIONS_PER_USER=$((conns + 1000)) \
    taskset -c 0 "$root/docs/benchmarks/gateway-peer.sh" >"$work/gateway.log" 2>&1 &
gw=$!
pids+=("$gw")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null || { echo "gateway not ready; log:" >&2; cat "$work/gateway.log" >&2; exit 1; }
sock() { awk '/^TCP:/ {print "sockets in use " $3 ", kernel socket memory " $NF * 4 " KiB"}' /proc/net/sockstat; }
echo "before: $(sock)"
taskset -c 1 "$loadgen" --addr 127.0.0.1:$port --proto plain --nats nats://127.0.0.1:$nats_port \
    --conns "$conns" --vendors "$vendors" --connect-rate 5000 --connect-concurrency 256 \
    --src-ips 127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6 --settle-ms 5000 --hold-ms 5000 \
    --ready-timeout-ms 120000 --rates 1 --duration 1 --pid "$gw" --server-cpu 0 --label idle100k \
    >"$work/result.json"
echo "after loadgen closed its connections: $(sock)"
python3 - "$work/result.json" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
rss = r["rss_kib"]
print(f"connected {r['connected']}/{r['conns']} (failed {r['connect_failed']}) in {r['connect_s']:.1f} s "
      f"at {r['connect_rate']:.0f}/s; ready {r.get('ready')} after {r.get('ready_ms')} ms")
print(f"gateway RSS idle {rss['idle']/1024:.1f} MiB, all connected {rss['connected']/1024:.1f} MiB, "
      f"subscribed and ready {rss['ready']/1024:.1f} MiB, peak {rss['peak']/1024:.1f} MiB")
print(f"per connection: {r['rss_per_conn_kib']:.2f} KiB connected, {r['rss_per_conn_ready_kib']:.2f} KiB subscribed")
PY
echo "raw result: $work/result.json"
