#!/usr/bin/env python3
"""Reference runs of `venta bench` (s1, s2, s3) against a release build of
the gateway on this machine, as in docs/BENCHMARKS.md.

    python3 docs/benchmarks/reference.py run --reps 3 --out /tmp/bench.jsonl \
        [--loadgen bench/target/release/loadgen]       # pair every run with the team's loadgen
    python3 docs/benchmarks/reference.py report /tmp/bench.jsonl > table.md

For every repetition, scenario and tool (interleaved in that order, so runs that are
compared are minutes apart; the tools' order alternates between repetitions) it starts a fresh gateway pinned to CPU 0, waits until it
is ready, runs the load generator pinned to CPU 1 (where nats-server also runs) with
--pid, records its JSON line plus per-CPU busy time and the load average, and stops
the gateway with SIGTERM. Runs as root get `nice -n -10` for gateway, bench and NATS,
so that other tenants of a shared machine do not take most of the cores.
"""
import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCENARIO_TIMEOUT_S = {"s1": 300, "s2": 900, "s3": 300}
# loadgen equivalents of the bench presets (bench.py's SCENARIOS).
LOADGEN = {
    "s1": ["--conns", "10000", "--vendors", "1000", "--connect-rate", "5000", "--connect-concurrency", "256",
           "--settle-ms", "3000", "--hold-ms", "2000"],
    "s2": ["--conns", "2000", "--vendors", "1", "--connect-rate", "2000",
           "--rates", "5,10,15,20,25,35,50,75,100,150,200,300,400,500,750,1000", "--duration", "10",
           "--stop-p99-ms", "250", "--drain-ms", "5000"],
    "s3": ["--conns", "10000", "--vendors", "1000", "--connect-rate", "2000", "--connect-concurrency", "256",
           "--rates", "2000", "--duration", "20", "--stop-p99-ms", "1e9", "--drain-ms", "10000"],
}


def cpu_stat():
    out = {}
    for line in open("/proc/stat"):
        if line.startswith("cpu") and line[3].isdigit():
            f = line.split()
            v = list(map(int, f[1:9]))  # user nice system idle iowait irq softirq steal
            out[f[0]] = (sum(v), v[3] + v[4], v[6])
    return out


def busy(a, b):
    res = {}
    for c in a:
        tot = (b[c][0] - a[c][0]) or 1
        res[c] = {"busy_pct": round(100 * (1 - (b[c][1] - a[c][1]) / tot), 1),
                  "softirq_pct": round(100 * (b[c][2] - a[c][2]) / tot, 1)}
    return res


def loadavg():
    return [float(x) for x in open("/proc/loadavg").read().split()[:3]]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, timeout=30.0):
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gateway not ready after {timeout}s")


def stop(proc):
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_one(a, tool, sc, rep, nats_url, nice, out):
    port, grpc = free_port(), free_port()
    env = dict(os.environ, WEBSOCKET_GATEWAY_PORT=str(port), GRPC_PORT=str(grpc), BIND_ADDR="127.0.0.1",
               NATS_URL=nats_url, NATS_SUBJECT_PREFIX="venta", NATS_JETSTREAM="false",
               WS_MAX_CONNECTIONS="20000", LOG_LEVEL="warn")
    log = open(Path(out).with_suffix(".gateway.log"), "a")
    log.write(f"--- {tool} {sc} rep {rep} {time.strftime('%H:%M:%S')}\n")
    log.flush()
    gw = subprocess.Popen(["taskset", "-c", "0", *nice, str(a.gateway)], env=env, stdout=log,
                          stderr=subprocess.STDOUT)
    res = {}
    try:
        wait_ready(port, gw)
        time.sleep(1.0)
        if tool == "bench":
            cmd = [str(a.venta), "bench", "--scenario", sc, "--url", f"ws://127.0.0.1:{port}/ws/location",
                   "--via", "nats", "--nats", nats_url, "--pid", str(gw.pid), "--label", f"bench/{sc}/{rep}"]
        else:
            cmd = [str(a.loadgen), "--addr", f"127.0.0.1:{port}", "--nats", nats_url, "--pid", str(gw.pid),
                   "--server-cpu", "0", "--label", f"loadgen/{sc}/{rep}", *LOADGEN[sc]]
        cmd = ["taskset", "-c", "1", *nice, *cmd]
        print(f"[reference] {tool} {sc} rep {rep}", file=sys.stderr, flush=True)
        c0, l0 = cpu_stat(), loadavg()
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if a.quiet else None, text=True,
                           timeout=SCENARIO_TIMEOUT_S[sc])
        lines = r.stdout.strip().splitlines()
        res = json.loads(lines[-1]) if lines else {"error": f"{tool} exited {r.returncode} without output"}
        res["cpus"] = busy(c0, cpu_stat())
        res["loadavg_before"], res["loadavg_after"] = l0, loadavg()
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
        res = {"error": str(e)}
    finally:
        stop(gw)
    res.update({"tool": tool, "scenario": sc, "rep": rep, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    with open(out, "a") as f:
        f.write(json.dumps(res) + "\n")
    print(f"[reference] -> {summary(res)}", file=sys.stderr, flush=True)


def summary(r):
    if "error" in r:
        return r["error"]
    s = f"connected {r.get('connected')} at {r.get('connect_rate')}/s, rss/conn {r.get('rss_per_conn_ready_kib')} KiB"
    for st in r.get("steps", []):
        s += f" | {st['rate']:g}/s: {st['deliveries_per_s']:.0f}/s p99 {st['lat_ms']['p99']} lost {st['lost']}"
    return s + f" | load {r.get('loadavg_before')}"


def run(a):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nice = ["nice", "-n", "-10"] if os.geteuid() == 0 else []
    tools = ["bench"] + (["loadgen"] if a.loadgen else [])
    nats_port = free_port()
    nats_dir = tempfile.mkdtemp(prefix="reference-nats-")
    nats = subprocess.Popen(["taskset", "-c", "1", *nice, a.nats_server, "-a", "127.0.0.1", "-p", str(nats_port),
                             "-sd", nats_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        for rep in range(1, a.reps + 1):
            for sc in a.scenarios.split(","):
                # Alternate which tool goes first, so a trend in the
                # machine's load does not always favour the same one.
                for tool in (tools if rep % 2 else tools[::-1]):
                    run_one(a, tool, sc, rep, f"nats://127.0.0.1:{nats_port}", nice, a.out)
                    time.sleep(a.pause_s)
    finally:
        stop(nats)


# ---------------- report ----------------

def med(xs, fmt="{:.0f}"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    m = statistics.median(xs)
    return fmt.format(m) if len(xs) == 1 else f"{fmt.format(m)} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def first_step(r):
    return (r.get("steps") or [{}])[0]


def s2_broke(r):
    b = r.get("broke")
    return b.split(":")[0] if b else "did not break"


def report(a):
    rows = [json.loads(l) for l in open(a.file) if l.strip()]
    tools = sorted({r["tool"] for r in rows}, key=lambda t: t != "bench")
    by = {(t, sc): [r for r in rows if r["tool"] == t and r["scenario"] == sc and "error" not in r]
          for t in tools for sc in ("s1", "s2", "s3")}
    lines = [
        ("S1 RSS per subscribed connection, KiB", "s1", lambda r: r.get("rss_per_conn_ready_kib"), "{:.1f}"),
        ("S1 RSS with all connected, MiB", "s1", lambda r: (r.get("rss_kib") or {}).get("ready", 0) / 1024, "{:.0f}"),
        ("S1 connect rate (5,000/s offered), conn/s", "s1", lambda r: r.get("connect_rate"), "{:.0f}"),
        ("S1 handshake p50, ms", "s1", lambda r: (r.get("connect_ms") or {}).get("p50"), "{:.1f}"),
        ("S1 handshake p99, ms", "s1", lambda r: (r.get("connect_ms") or {}).get("p99"), "{:.1f}"),
        ("S2 max sustainable deliveries/s", "s2", lambda r: r.get("max_ok_deliveries_per_s"), "{:.0f}"),
        ("S2 at rate (updates/s)", "s2", lambda r: r.get("max_ok_rate"), "{:.0f}"),
        ("S3 p50, ms", "s3", lambda r: first_step(r).get("lat_ms", {}).get("p50"), "{:.2f}"),
        ("S3 p99, ms", "s3", lambda r: first_step(r).get("lat_ms", {}).get("p99"), "{:.2f}"),
        ("S3 p99.9, ms", "s3", lambda r: first_step(r).get("lat_ms", {}).get("p999"), "{:.2f}"),
        ("S3 max, ms", "s3", lambda r: first_step(r).get("lat_ms", {}).get("max"), "{:.1f}"),
        ("S3 deliveries/s", "s3", lambda r: first_step(r).get("deliveries_per_s"), "{:.0f}"),
        ("S3 lost", "s3", lambda r: first_step(r).get("lost"), "{:.0f}"),
        ("S3 gateway CPU, % of a core", "s3", lambda r: first_step(r).get("server_cpu_pct"), "{:.0f}"),
        ("S3 gateway waiting for its CPU, % of the step", "s3",
         lambda r: (first_step(r).get("sched_wait_pct") or {}).get("server"), "{:.0f}"),
        ("S3 load generator CPU, %", "s3",
         lambda r: first_step(r).get("bench_cpu_pct", first_step(r).get("loadgen_cpu_pct")), "{:.0f}"),
    ]
    print("| | " + " | ".join(tools) + " |")
    print("|---|" + "---|" * len(tools))
    for name, sc, f, fmt in lines:
        print(f"| {name} | " + " | ".join(med([f(r) for r in by[(t, sc)]], fmt) for t in tools) + " |")
    print("| S2 broke at | " + " | ".join(", ".join(s2_broke(r) for r in by[(t, 's2')]) or "–" for t in tools) + " |")
    print()
    loads = [r.get("loadavg_before", [None])[0] for r in rows]
    loads = [x for x in loads if x is not None]
    if loads:
        print(f"Load average (1 min) before the runs: median {statistics.median(loads):.1f}, "
              f"min {min(loads):.1f}, max {max(loads):.1f}; {len(rows)} runs, "
              f"{sum('error' in r for r in rows)} errors.")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--gateway", type=Path, default=ROOT / "target/release/venta-gateway")
    r.add_argument("--venta", type=Path, default=ROOT / "target/release/venta", help="the bench (crates/tools)")
    r.add_argument("--nats-server", default=str(ROOT / "target/nats-venv/bin/nats-server"))
    r.add_argument("--loadgen", type=Path, help="also run the team's loadgen, interleaved")
    r.add_argument("--scenarios", default="s1,s2,s3")
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--pause-s", type=float, default=5.0)
    r.add_argument("--quiet", action="store_true", help="hide the load generators' progress")
    r.add_argument("--out", required=True)
    rp = sub.add_parser("report")
    rp.add_argument("file")
    a = p.parse_args()
    run(a) if a.cmd == "run" else report(a)


if __name__ == "__main__":
    main()
