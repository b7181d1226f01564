#!/usr/bin/env python3
"""The capacity model of docs/SCALING.md: instances, NATS and Redis load for a fleet, from the
figures measured in docs/BENCHMARKS.md, and the chart docs/benchmarks/scaling.svg.

    python3 docs/benchmarks/scaling.py                       # the tables of docs/SCALING.md (Markdown)
    python3 docs/benchmarks/scaling.py -o docs/benchmarks/scaling.svg   # and the chart
    python3 docs/benchmarks/scaling.py --instance-cores 8 --instance-gib 16   # another instance size

Every input is either MEASURED (a figure of docs/BENCHMARKS.md, named by its section) or an
ASSUMPTION (a choice of this model or a figure not measured here, said so); change either on the
command line, never in the tables by hand, so that the document, the chart and this file agree.
The model is deliberately simple: per connection, memory and CPU add up linearly (the 5,000 and
19,000 connection runs showed no growth per connection with the count), and an instance's
capacity is the largest connection count whose CPU and memory stay under the headroom.
Output is deterministic: the same arguments give byte-identical Markdown and SVG.
"""
import argparse, math, sys
from html import escape

# Measured here (docs/BENCHMARKS.md). KiB and microseconds.
MEASURED = {
    # "Where an idle WebTransport session's memory goes": 5,000 idle subscribed sessions, medians
    "ws_kib": 6.05,   # WebSocket, the largest recent median (4.82 at 19,000; 5.14 in the issue-14 final run)
    "wt_kib": 68.4,   # WebTransport (stream or datagrams: 68.4 / 68.5)
    # "Area subscriptions (s4)", results after the fixes: RSS per area connection, everything held
    "area_kib": 18.7,
    # "Idle connections at scale": kernel socket memory outside RSS per idle TCP socket (sockstat)
    "sock_kib": 3.0,
    # "Idle connections at scale": RSS of the idle process (17.5-17.8 MiB)
    "base_mib": 17.8,
    # "Where the memory went": async-nats keeps a 32-slot channel per subscribed subject
    "subject_kib": 5.9,
    # "The architecture work", final check: S3 server CPU per delivery at low fan-out (10 clients per
    # vendor, 2 updates/s each: nothing batches). The slowest median measured (13.0-16.0).
    "deliver_us": 16.0,
    # "Side by side with the peers": S2 at 1,000 updates/s to 2,000 subscribers (writes batch)
    "deliver_hot_us": 0.5,
    # "Area subscriptions (s4)": gateway CPU per area delivery, gross; indexing per update, per cluster
    "area_deliver_us": 16.7,
    "index_us": 80.0,
    # "Area subscriptions (s4)": 50,998 area deliveries/s to 5,000 area clients at s4's density
    # (10,000 vendors updating every 5 s over 30 x 30 km, 2 x 2 km viewports); about 7 JetStream KV
    # messages per indexed update (connz)
    "area_events_per_client": 50998 / 5000,
    "kv_msgs_per_update": 7,
    # "Side by side with the peers" / "Idle connections at scale": WebSocket connects accepted per
    # second on one gateway core (the offered rate: a lower bound of the capacity)
    "ws_connects_per_core": 4982,
    # "WebTransport": 2,000/s offered gave handshake p50 207 ms, p99 1.2 s on a busy machine
    "wt_connects_per_core": 2000,
}

# Assumptions: choices of the model, or figures not measured here (said so in docs/SCALING.md).
ASSUMED = {
    "instance_cores": 4, "instance_gib": 8.0,   # the instance size
    "cpu_headroom": 0.60, "mem_headroom": 0.70,  # run cores at <= 60 %, memory at <= 70 %
    "ping_s": 30.0,          # WS_HEARTBEAT_INTERVAL default: a ping out and a pong in per 30 s, each costed as a delivery
    "recv_us": 16.0,         # NATS message received by an instance: not measured apart; costed as one delivery
    "client_msgs_per_s": 1 / 60,  # client messages (subscribe, unsubscribe) per per-vendor client: usage, assumed
    "pan_per_s": 0.1 / 3,    # s4's pan rate: 10 % of area clients move their box every 3 s
    "redis_shard_calls": 25_000,   # GCRA calls/s one Redis shard takes at <= 60 % CPU: NOT measured here
    "nats_node_msgs": 500_000,     # messages/s one NATS node moves at <= 60 %: NOT measured here
    "js_replicas": 3,
    "regions": 20,           # regions of the "by region" mix (metro areas of equal size), a deployment choice
}

# Mixes of connections: fractions of per-vendor WebSocket, per-vendor WebTransport, area (WebSocket),
# and the regions the fleet is split into: 1 = any client on any instance (a plain load balancer);
# R = clients routed to the instances of their region (a DNS or load-balancer policy outside the
# gateway), so an instance follows only its region's vendors and cells.
MIXES = {"WebSocket": (1.0, 0.0, 0.0, 1), "WebTransport": (0.0, 1.0, 0.0, 1),
         "map-heavy": (0.6, 0.1, 0.3, 1), "map-heavy, by region": (0.6, 0.1, 0.3, "regions")}
# The stated workloads: connections, vendors; every vendor updates every 5 s, every per-vendor client
# follows one vendor (connections / vendors followers per vendor).
SIZES = ((100_000, 5_000), (1_000_000, 50_000), (10_000_000, 500_000))
UPDATE_EVERY_S = 5.0


def plan(conns, vendors, mix, m, a):
    """The fleet for `conns` connections of `mix` over `vendors`: a dict of every figure the
    tables show (per instance and in all)."""
    fv, fw, fa, regions = mix
    regions = a["regions"] if regions == "regions" else regions
    u = 1 / UPDATE_EVERY_S
    per_vendor = fv + fw
    kib = fv * (m["ws_kib"] + m["sock_kib"]) + fw * m["wt_kib"] + fa * (m["area_kib"] + m["sock_kib"])
    ping = 2 / a["ping_s"]
    us_per_s = (per_vendor * (u + ping) * m["deliver_us"]
                + fa * (m["area_events_per_client"] * m["area_deliver_us"] + ping * m["deliver_us"]))
    cpu_budget_us = a["instance_cores"] * a["cpu_headroom"] * 1e6
    mem_budget_kib = a["instance_gib"] * a["mem_headroom"] * 1024 * 1024
    updates = vendors * u
    index_us = m["index_us"] * updates if fa > 0 else 0.0  # spread over the instances (queue group)

    local = vendors / regions  # the vendors an instance's clients choose from

    def interest(n):  # distinct vendor subjects n clients follow, each one vendor chosen uniformly
        return local * (1 - math.exp(-n * per_vendor / local))

    # an instance with area clients receives its region's updates once more on the cell subjects
    cells_in = updates / regions if fa > 0 else 0.0

    def fits(n, instances):
        i = interest(n)
        cpu = n * us_per_s + (i * u + cells_in) * a["recv_us"] + index_us / instances
        mem = m["base_mib"] * 1024 + n * kib + i * m["subject_kib"]
        return cpu <= cpu_budget_us and mem <= mem_budget_kib, cpu, mem

    # at least enough instances that the indexing share leaves half of each one's budget
    instances = max(1, math.ceil(index_us / (cpu_budget_us / 2)))
    seen = set()
    for _ in range(50):  # the indexing share depends on the count: iterate to a fixed point
        lo, hi = 0, 10_000_000
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid, instances)[0] else (lo, mid - 1)
        if lo == 0:  # the fixed share (NATS receiving, indexing) fills an instance: more instances
            if instances > 1_000_000 or index_us == 0 or cells_in * a["recv_us"] >= cpu_budget_us:
                return None  # receiving the region's cell traffic alone fills an instance
            instances *= 2
            continue
        need = math.ceil(conns / lo) + 1  # +1: the fleet survives the loss of one instance
        if need == instances:
            break
        if need in seen:  # alternating between two counts: take the larger, which fits
            instances = max(need, instances)
            break
        seen.add(instances)
        instances = need
    n_max = lo
    n = conns / instances
    _, cpu, mem = fits(n, instances)
    by_cpu = n_max * us_per_s + (interest(n_max) * u + cells_in) * a["recv_us"] + index_us / instances
    mem_at_max = m["base_mib"] * 1024 + n_max * kib + interest(n_max) * m["subject_kib"]
    bound = "CPU" if by_cpu / cpu_budget_us >= mem_at_max / mem_budget_kib else "memory"
    i = interest(n)
    subj_share = i * m["subject_kib"] / mem
    recv_share = (i * u + cells_in) * a["recv_us"] / cpu
    nats_out = instances * (i * u + cells_in)
    nats_in = updates * (1 + (a["js_replicas"] - 1)) + (updates * (m["kv_msgs_per_update"] + 5) if fa > 0 else 0)
    redis = conns * (per_vendor * a["client_msgs_per_s"] + fa * a["pan_per_s"])
    rate = (fv + fa) * m["ws_connects_per_core"] + fw * m["wt_connects_per_core"]
    survivors = (instances - 1) * a["instance_cores"] * rate
    deliveries = conns * (per_vendor * u + fa * m["area_events_per_client"])
    return {
        "conns": conns, "vendors": vendors, "updates": updates, "deliveries": deliveries,
        "kib": kib, "us_per_s": us_per_s, "n_max": n_max, "bound": bound, "instances": instances,
        "n": n, "cpu_cores": cpu / 1e6, "mem_gib": mem / 1024 / 1024, "interest": i,
        "subj_share": subj_share, "recv_share": recv_share, "index_cores": index_us / 1e6,
        "nats_msgs": nats_out + nats_in, "nats_out": nats_out, "nats_in": nats_in,
        "nats_nodes": max(3, math.ceil((nats_out + nats_in) / a["nats_node_msgs"])),
        "redis_calls": redis, "redis_shards": max(1, math.ceil(redis / a["redis_shard_calls"])),
        "storm_s": n / survivors, "restart_s": conns / (instances * a["instance_cores"] * rate),
        "fleet_gib": instances * mem / 1024 / 1024, "fleet_cores": instances * a["instance_cores"],
    }


def fmt(v, d=0):
    return f"{v:,.{d}f}"


def tables(m, a):
    o = []
    for conns, vendors in SIZES:
        ps = {name: plan(conns, vendors, mix, m, a) for name, mix in MIXES.items()}
        updates = vendors / UPDATE_EVERY_S
        o.append(f"### {fmt(conns)} connections, {fmt(vendors)} vendors every {UPDATE_EVERY_S:g} s "
                 f"({fmt(updates)} updates/s, {fmt(conns / vendors)} followers per vendor)\n")
        o.append("| | " + " | ".join(ps) + " |")
        o.append("|---" * (len(ps) + 1) + "|")
        rows = [
            ("deliveries/s to clients", lambda p: fmt(p["deliveries"])),
            ("memory per connection, KiB (RSS + kernel socket)", lambda p: fmt(p["kib"], 1)),
            ("CPU per connection, µs/s (updates + heartbeats)", lambda p: fmt(p["us_per_s"], 1)),
            (f"most connections per instance ({a['instance_cores']:g} vCPU, {a['instance_gib']:g} GiB), bound by",
             lambda p: f"{fmt(p['n_max'])}, {p['bound']}"),
            ("**instances** (⌈connections ÷ most⌉ + 1 spare)", lambda p: f"**{fmt(p['instances'])}**"),
            ("per instance: connections, cores busy, GiB", lambda p: f"{fmt(p['n'])}, {p['cpu_cores']:.2f}, {p['mem_gib']:.2f}"),
            ("per instance: vendor subjects on NATS; their share of memory; NATS receiving's share of CPU",
             lambda p: f"{fmt(p['interest'])}; {p['subj_share']:.0%}; {p['recv_share']:.0%}"),
            ("geo indexing, cores in the fleet", lambda p: f"{p['index_cores']:.2f}" if p["index_cores"] else "–"),
            ("NATS messages/s: to gateways + published, stored, indexed", lambda p: f"{fmt(p['nats_out'])} + {fmt(p['nats_in'])}"),
            ("**NATS nodes**", lambda p: f"**{p['nats_nodes']}**"),
            ("Redis GCRA calls/s → **shards**", lambda p: f"{fmt(p['redis_calls'])} → **{p['redis_shards']}**"),
            ("one instance lost: its clients back in (s)", lambda p: f"{p['storm_s']:.2f}"),
            ("whole fleet restarted: everyone back in (s)", lambda p: f"{p['restart_s']:.1f}"),
        ]
        for label, f in rows:
            o.append(f"| {label} | " + " | ".join(f(p) if p else "does not fit ¹" for p in ps.values()) + " |")
        if not all(ps.values()):
            o.append("")
            o.append("¹ No instance count fits: an instance cannot hold one connection on top of what it "
                     "receives from NATS (with area clients: every indexed update of its region on the cell "
                     f"subjects, {fmt(updates)}/s × {a['recv_us']:g} µs ≥ the {a['instance_cores'] * a['cpu_headroom']:g} "
                     "cores an instance may use, when not routed by region), or the instance is too small.")
        o.append("")
    return "\n".join(o)


def chart(m, a):
    W, H = 900, 600
    panels = ((70, 420, "instances"), (520, 870, "fleet memory, GiB"))
    T, B = 104, 480
    xs = [10 ** (4 + k / 8) for k in range(25)]  # 10k .. 10M
    colours = {"WebSocket": "#0072B2", "WebTransport": "#D55E00", "map-heavy": "#009E73",
               "map-heavy, by region": "#CC79A7"}
    data = {name: [plan(int(c), max(1, int(c / 20)), mix, m, a) for c in xs] for name, mix in MIXES.items()}

    def text(x, y, s, anchor="start", size=12, extra=""):
        return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>{escape(s)}</text>'

    def si(v):
        for div, suf in ((1e6, "M"), (1e3, "k")):
            if v >= div:
                return f"{v / div:g}{suf}"
        return f"{v:g}"

    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="DejaVu Sans, Verdana, Arial, sans-serif" fill="#222">',
         f'<rect width="{W}" height="{H}" fill="#fff"/>',
         text(70, 30, "Capacity model: what a fleet needs against connections", size=17, extra=' font-weight="bold"'),
         text(70, 52, f"{a['instance_cores']:g} vCPU / {a['instance_gib']:g} GiB instances, CPU ≤ {a['cpu_headroom']:.0%}, "
              f"memory ≤ {a['mem_headroom']:.0%}, one spare; 20 followers per vendor, each vendor every "
              f"{UPDATE_EVERY_S:g} s", size=12, extra=' fill="#555"'),
         text(70, 68, "inputs: docs/BENCHMARKS.md (measured on a 2-vCPU VM); model: docs/benchmarks/scaling.py",
              size=12, extra=' fill="#555"')]
    for (L, R, label), key in zip(panels, ("instances", "fleet_gib")):
        ys = [p[key] for ps in data.values() for p in ps if p]
        if not ys:
            sys.exit("scaling.py: error: no size fits an instance with these inputs: nothing to chart")
        ya, yb = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
        xa, xb = 4, 7
        px = lambda v: L + (math.log10(v) - xa) / (xb - xa) * (R - L)
        py = lambda v: B - (math.log10(v) - ya) / (yb - ya) * (B - T)
        for k in range(xa, xb + 1):
            for mm in (1, 2, 5):
                v = mm * 10 ** k
                if v > 10 ** xb:
                    continue
                o.append(f'<line x1="{px(v):.1f}" y1="{T}" x2="{px(v):.1f}" y2="{B}" stroke="{"#ccc" if mm == 1 else "#eee"}"/>')
                if mm == 1:
                    o.append(text(px(v), B + 18, si(v), "middle"))
        for k in range(ya, yb + 1):
            for mm in (1, 2, 5):
                v = mm * 10 ** k
                if math.log10(v) > yb:
                    continue
                o.append(f'<line x1="{L}" y1="{py(v):.1f}" x2="{R}" y2="{py(v):.1f}" stroke="{"#ccc" if mm == 1 else "#eee"}"/>')
                o.append(text(L - 6, py(v) + 4, si(v), "end", 12 if mm == 1 else 10, "" if mm == 1 else ' fill="#666"'))
        o.append(f'<rect x="{L}" y="{T}" width="{R - L}" height="{B - T}" fill="none" stroke="#444"/>')
        o.append(text((L + R) / 2, B + 40, "connections (log scale)", "middle", 13))
        o.append(text((L + R) / 2, T - 6, f"{label} (log scale)", "middle", 13, ' font-weight="bold"'))
        for name, ps in data.items():
            pts = " ".join(f"{px(c):.1f},{py(p[key]):.1f}" for c, p in zip(xs, ps) if p)
            o.append(f'<polyline points="{pts}" fill="none" stroke="{colours[name]}" stroke-width="2.2" '
                     'stroke-linejoin="round"/>')
            fit = [(c, p) for c, p in zip(xs, ps) if p]
            if not fit:
                continue
            last = fit[-1]
            if last[0] < xs[-1]:  # the model stops: say so where the line ends
                o.append(f'<text x="{px(last[0]) + 6:.1f}" y="{py(last[1][key]) + 4:.1f}" font-size="11" '
                         f'fill="{colours[name]}">× no fit beyond {si(last[0] * 10 ** 0.125):s}</text>')
            for c, p in zip(xs, ps):
                if p and abs(math.log10(c) - round(math.log10(c))) < 1e-9:
                    o.append(f'<circle cx="{px(c):.1f}" cy="{py(p[key]):.1f}" r="4" fill="{colours[name]}"/>')
    for k, name in enumerate(MIXES):
        lx, ly = 90 + (k % 2) * 400, H - 58 + (k // 2) * 20
        o.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 28}" y2="{ly - 4}" stroke="{colours[name]}" stroke-width="2.2"/>')
        mix = MIXES[name]
        desc = {"WebSocket": "per-vendor WS", "WebTransport": "per-vendor WT",
                "map-heavy": f"map-heavy ({mix[0]:.0%} WS, {mix[1]:.0%} WT, {mix[2]:.0%} area)",
                "map-heavy, by region": f"the same, by region ({a['regions']:g})"}[name]
        o.append(text(lx + 34, ly, desc, size=12))
    o.append(text(70, H - 10, "Fleet memory: instances × RSS + kernel socket memory in use (not the machines' size).",
                  size=11, extra=' fill="#555"'))
    o.append("</svg>")
    return "\n".join(o) + "\n"


def main():
    global SIZES, UPDATE_EVERY_S
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", help="also write the chart (SVG) here")
    ap.add_argument("--sizes", help="connections:vendors,... for the tables (default "
                    + ",".join(f"{c}:{v}" for c, v in SIZES) + ")")
    ap.add_argument("--update-every-s", type=float, default=UPDATE_EVERY_S,
                    help=f"seconds between a vendor's updates (default {UPDATE_EVERY_S:g})")
    for k, v in {**MEASURED, **ASSUMED}.items():
        ap.add_argument("--" + k.replace("_", "-"), type=float, default=v, help=f"default {v:g}")
    a = vars(ap.parse_args())
    out = a.pop("out")
    sizes = a.pop("sizes")
    UPDATE_EVERY_S = a.pop("update_every_s")
    try:
        if sizes:
            SIZES = tuple(tuple(int(x) for x in pair.split(":")) for pair in sizes.split(","))
    except ValueError:
        sys.exit("scaling.py: error: --sizes takes connections:vendors pairs, comma-separated")
    if UPDATE_EVERY_S <= 0 or any(len(p) != 2 or min(p) <= 0 for p in SIZES):
        sys.exit("scaling.py: error: --update-every-s and every size must be above 0")
    m = {k: a[k] for k in MEASURED}
    s = {k: a[k] for k in ASSUMED}
    if s["instance_cores"] <= 0 or s["instance_gib"] <= 0 or not (0 < s["cpu_headroom"] <= 1) \
            or not (0 < s["mem_headroom"] <= 1) or s["redis_shard_calls"] <= 0 or s["nats_node_msgs"] <= 0:
        sys.exit("scaling.py: error: sizes, budgets and headrooms must be above 0 (headrooms at most 1)")
    sys.stdout.write(tables(m, s))
    if out:
        try:
            with open(out, "w", encoding="utf-8", newline="\n") as f:
                f.write(chart(m, s))
        except OSError as e:
            sys.exit(f"scaling.py: error: cannot write {out}: {e}")


if __name__ == "__main__":
    main()
