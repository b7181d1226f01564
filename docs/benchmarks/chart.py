#!/usr/bin/env python3
"""Chart latency against delivery rate from bench.py results, as an SVG for docs/BENCHMARKS.md.

    python3 docs/benchmarks/chart.py results.jsonl [more.jsonl ...] -o docs/benchmarks/s2-latency.svg \\
        [--scenario s2] [--metric p99,p50] [--threshold 250]

Input: the JSONL files written by the team's scenario driver
(`python3 bench/bench.py run ... --out results.jsonl`, see bench/README.md): one line
per run of one server name ("peer") x scenario x repetition, holding loadgen's JSON result with
its `steps[]` (offered `rate`, `deliveries_per_s`, `lat_ms{p50,p90,p99,p999,max,mean}`, `ok`,
`attempt`) plus the driver's `peer`, `scenario`, `rep`, `valid` and `final`. Runs are selected as
`bench.py report` selects them: only `final` runs (a line without the field counts) and no
failed runs (`error`); within a run the last attempt of each rate counts. (Lines of
docs/benchmarks/reference.py, named by `tool` instead of `peer`, are read too.)

Drawn, one colour and marker shape per server name, x = deliveries/s and y = latency (both log):
for each name and offered rate, the median over the runs that reached that step of
deliveries/s and of each latency percentile (first --metric solid, the next dashed, ...). A
rate is shown if at least half of the name's runs reached it; it counts as passed if it
passed in more than half of the name's runs, otherwise its markers are hollow. The last passed rate
(max sustainable) is ringed and its deliveries/s is given in the legend. A horizontal line
marks the stop threshold (S2: p99 250 ms). S3 (one rate) gives one point per name and metric.
Output is deterministic: the same input gives a byte-identical SVG.
"""
import argparse, json, math, statistics, sys
from html import escape

METRICS = ("p50", "p90", "p99", "p999", "max", "mean")
# Okabe-Ito palette (colour-blind safe), yellow left out (too light on white)
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
SHAPES = ("circle", "square", "diamond", "triangle", "tri_down")
DASHES = ("", "7 4", "2 3", "9 3 2 3")
TITLES = {"s1": "S1 idle", "s2": "S2 fan-out", "s3": "S3 spread"}
W, H = 900, 580
L, T, R, B = 78, 74, 660, 486  # plot area: left, top, right, bottom


class InputError(Exception):
    pass


def load(paths, scenario):
    """Final, error-free runs of `scenario`, grouped by name: {name: [run, ...]} (input order)."""
    runs, seen, skipped = {}, set(), {"not final": 0, "with an error": 0}
    for path in paths:
        try:
            lines = open(path, encoding="utf-8").read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read {path}: {e}")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not a JSON line ({e})")
            if not isinstance(r, dict):
                raise InputError(f"{path}:{n}: expected a JSON object per line")
            seen.add(str(r.get("scenario")))
            if r.get("scenario") != scenario:
                continue
            if not r.get("final", True) or "error" in r:
                skipped["not final" if not r.get("final", True) else "with an error"] += 1
                continue
            name = r.get("peer") or r.get("tool")  # bench.py writes "peer"; reference.py "tool"
            if not name or not isinstance(r.get("steps"), list):
                raise InputError(f"{path}:{n}: run without a peer name or steps[]")
            r["_where"] = f"{path}:{n}"
            runs.setdefault(str(name), []).append(r)
    if not runs:
        why = ", ".join(f"{n} {k}" for k, n in skipped.items() if n)
        raise InputError(f"no final {scenario} runs in {', '.join(paths)}" + (f" ({why} left out)" if why else "")
                         + f"; scenarios present: {', '.join(sorted(seen - {'None'})) or 'none'}")
    return runs


def aggregate(runs, metrics):
    """Per rate: (rate, median deliveries/s, {metric: median ms}, passed) for the rates that at
    least half of the runs reached."""
    per_rate = {}
    for r in runs:
        try:
            last = {float(s["rate"]): s for s in r["steps"]}  # last attempt per rate
            for rate, s in last.items():
                vals = (float(s["deliveries_per_s"]), {m: float(s["lat_ms"][m]) for m in metrics}, bool(s["ok"]))
                per_rate.setdefault(rate, []).append(vals)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{r['_where']}: step without rate/deliveries_per_s/lat_ms/ok ({e!r})")
    points = []
    for rate in sorted(per_rate):
        vs = per_rate[rate]
        if 2 * len(vs) < len(runs):
            continue
        points.append((rate, statistics.median(v[0] for v in vs),
                       {m: statistics.median(v[1][m] for v in vs) for m in metrics},
                       2 * sum(v[2] for v in vs) > len(runs)))
    return points


def si(v):
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}"


def ms_label(v):
    return f"{v:,.0f}" if v >= 1 else f"{v:g}"


def log_axis(lo, hi, min_decades=1.0):
    """Padded log10 range covering [lo, hi], at least min_decades wide, and its ticks:
    [(value, major)] at 1, 2, 5 x 10^k (2 and 5 only if the range spans < 3.5 decades)."""
    a, b = math.log10(lo), math.log10(hi)
    if b - a < min_decades:
        mid = (a + b) / 2
        a, b = mid - min_decades / 2, mid + min_decades / 2
    pad = 0.04 * (b - a)
    a, b = a - pad, b + pad
    minors = (2, 5) if b - a < 3.5 else ()
    ticks = [(m * 10 ** k, m == 1) for k in range(math.floor(a), math.ceil(b) + 1) for m in (1, *minors)]
    return a, b, [(v, major) for v, major in ticks if a <= math.log10(v) <= b]


def marker(shape, x, y, colour, filled, size=5.0):
    fill = colour if filled else "#fff"
    style = f'fill="{fill}" stroke="{colour}" stroke-width="1.6"'
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{size:.1f}" {style}/>'
    if shape == "square":
        s = size * 0.9
        return f'<rect x="{x - s:.1f}" y="{y - s:.1f}" width="{2 * s:.1f}" height="{2 * s:.1f}" {style}/>'
    s = size * 1.25
    pts = {"diamond": ((0, -s), (s, 0), (0, s), (-s, 0)),
           "triangle": ((0, -s), (s, s * 0.75), (-s, s * 0.75)),
           "tri_down": ((0, s), (s, -s * 0.75), (-s, -s * 0.75))}[shape]
    return f'<polygon points="{" ".join(f"{x + dx:.1f},{y + dy:.1f}" for dx, dy in pts)}" {style}/>'


def text(x, y, s, anchor="start", size=12, extra=""):
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>{escape(s)}</text>'


def render(scenario, runs, metrics, threshold):
    series = {name: aggregate(rs, metrics) for name, rs in runs.items()}
    pts = [(p[1], p[2][m]) for ps in series.values() for p in ps for m in metrics]
    xs = [x for x, _ in pts if x > 0]
    ys = [y for _, y in pts if y > 0] + ([threshold] if threshold else [])
    if not xs or not ys:
        raise InputError(f"no {scenario} step with deliveries/s and latency above 0 to plot")
    xa, xb, xticks = log_axis(min(xs), max(xs))
    ya, yb, yticks = log_axis(min(ys), max(ys))
    px = lambda v: L + (math.log10(v) - xa) / (xb - xa) * (R - L)
    py = lambda v: B - (math.log10(v) - ya) / (yb - ya) * (B - T)
    stepped = any(len(ps) > 1 for ps in series.values())
    counts = sorted({len(rs) for rs in runs.values()})
    reps = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    first = next(iter(runs.values()))[0]
    size = (f"{first['conns']:,} connections, {first['vendors']:,} vendor{'s' if first['vendors'] != 1 else ''}, "
            if all(r.get("conns") == first.get("conns") and r.get("vendors") == first.get("vendors")
                   for rs in runs.values() for r in rs) and isinstance(first.get("conns"), int)
            and isinstance(first.get("vendors"), int) else "")
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="DejaVu Sans, Verdana, Arial, sans-serif" fill="#222">',
         f'<rect width="{W}" height="{H}" fill="#fff"/>',
         text(L, 30, f"{TITLES.get(scenario, scenario.upper())}: latency against deliveries/s", size=17,
              extra=' font-weight="bold"'),
         text(L, 52, f"{size}median of {reps} repetition{'s' if counts[-1] != 1 else ''} (final runs)"
              + (", per offered rate" if stepped else ""), size=12, extra=' fill="#555"')]
    for v, major in xticks:  # grid and tick labels
        x = px(v)
        o.append(f'<line x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{B}" stroke="{"#ccc" if major else "#eee"}"/>')
        o.append(text(x, B + 18, si(v), "middle", 12 if major else 11, "" if major else ' fill="#666"'))
    for v, major in yticks:
        y = py(v)
        o.append(f'<line x1="{L}" y1="{y:.1f}" x2="{R}" y2="{y:.1f}" stroke="{"#ccc" if major else "#eee"}"/>')
        o.append(text(L - 7, y + 4, ms_label(v), "end", 12 if major else 11, "" if major else ' fill="#666"'))
    o.append(f'<rect x="{L}" y="{T}" width="{R - L}" height="{B - T}" fill="none" stroke="#444"/>')
    o.append(text((L + R) / 2, B + 42, "deliveries per second (log scale)", "middle", 13))
    o.append(text(20, (T + B) / 2, "latency, ms (log scale)", "middle", 13,
                  f' transform="rotate(-90 20 {(T + B) / 2:.1f})"'))
    if threshold:
        o.append(f'<line x1="{L}" y1="{py(threshold):.1f}" x2="{R}" y2="{py(threshold):.1f}" stroke="#999" '
                 'stroke-width="1.6"/>')
    best = {}
    for i, (name, ps) in enumerate(series.items()):
        colour, shape = COLOURS[i % len(COLOURS)], SHAPES[i % len(SHAPES)]
        ok = [p for p in ps if p[3]]
        best[name] = ok[-1] if stepped and ok else None
        dx = 0 if stepped else (i - (len(series) - 1) / 2) * 16  # scatter: side by side, not on top
        if not stepped:  # one point per metric: join them with a thin bar
            for p in ps:
                yv = [py(p[2][m]) for m in metrics if p[1] > 0 and p[2][m] > 0]
                if len(yv) > 1:
                    o.append(f'<line x1="{px(p[1]) + dx:.1f}" y1="{min(yv):.1f}" x2="{px(p[1]) + dx:.1f}" '
                             f'y2="{max(yv):.1f}" stroke="{colour}" stroke-width="1.4"/>')
        for j, m in enumerate(metrics):
            line = [(px(p[1]), py(p[2][m])) for p in ps if p[1] > 0 and p[2][m] > 0]
            dash = f' stroke-dasharray="{DASHES[j % len(DASHES)]}"' if DASHES[j % len(DASHES)] else ""
            if len(line) > 1:
                o.append(f'<polyline points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in line)}" fill="none" '
                         f'stroke="{colour}" stroke-width="{2.2 if j == 0 else 1.6}"{dash} stroke-linejoin="round"/>')
            for p in ps:
                if p[1] > 0 and p[2][m] > 0:
                    x, y = px(p[1]) + dx, py(p[2][m])
                    if p is best[name]:
                        o.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="10" fill="none" stroke="{colour}" '
                                 'stroke-width="2"/>')
                    o.append(marker(shape, x, y, colour, p[3], (5.0 if j == 0 else 4.0) if stepped
                                    else (5.5 if j == 0 else 3.5)))
    # legend, right of the plot
    lx, ly = R + 22, T + 6
    o.append(text(lx, ly, "server", size=13, extra=' font-weight="bold"'))
    for i, name in enumerate(series):
        colour, shape = COLOURS[i % len(COLOURS)], SHAPES[i % len(SHAPES)]
        ly += 22
        o.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 30}" y2="{ly - 4}" stroke="{colour}" stroke-width="2.2"/>')
        o.append(marker(shape, lx + 15, ly - 4, colour, True))
        o.append(text(lx + 40, ly, name, size=13))
        if best[name]:
            ly += 16
            o.append(text(lx + 40, ly, f"max {si(best[name][1])}/s at {best[name][0]:g} msg/s", size=11,
                          extra=' fill="#555"'))
    ly += 30
    o.append(text(lx, ly, "latency", size=13, extra=' font-weight="bold"'))
    for j, m in enumerate(metrics):
        ly += 20
        dash = f' stroke-dasharray="{DASHES[j % len(DASHES)]}"' if DASHES[j % len(DASHES)] else ""
        if stepped:
            o.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 30}" y2="{ly - 4}" stroke="#222" '
                     f'stroke-width="{2.2 if j == 0 else 1.6}"{dash}/>')
        else:
            o.append(marker("circle", lx + 15, ly - 4, "#222", True, 5.5 if j == 0 else 3.5))
        o.append(text(lx + 40, ly, m, size=13))
    if threshold:
        ly += 20
        o.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 30}" y2="{ly - 4}" stroke="#999" '
                 'stroke-width="1.6"/>')
        o.append(text(lx + 40, ly, f"stop threshold {threshold:g} ms", size=13))
    ly += 30
    o.append(text(lx, ly, "step", size=13, extra=' font-weight="bold"'))
    keys = [(True, "passed"), (False, "failed (most runs)")] + ([(None, "max sustainable")] if stepped else [])
    for filled, label in keys:
        ly += 22
        if filled is None:
            o.append(f'<circle cx="{lx + 15}" cy="{ly - 4}" r="10" fill="none" stroke="#222" stroke-width="2"/>')
        o.append(marker("circle", lx + 15, ly - 4, "#222", filled is not False))
        o.append(text(lx + 40, ly, label, size=13))
    notes = (["Each point: median over the runs that reached the step (shown if at least half of them did).",
              "Failed: p99 over the limit, a loss or a dropped connection; the run stops there."] if stepped else
             ["Each point: median over the final runs; servers are drawn side by side (a few pixels apart) at their",
              "deliveries/s. Failed: a loss or a dropped connection."])
    o += [text(L, H - 26 + 15 * k, n, size=11, extra=' fill="#555"') for k, n in enumerate(notes)]
    o.append("</svg>")
    return "\n".join(o) + "\n"


def metric_list(s):
    ms = [m.strip() for m in s.split(",") if m.strip()]
    bad = [m for m in ms if m not in METRICS]
    if not ms or bad:
        raise argparse.ArgumentTypeError(f"unknown metric {', '.join(bad) or '(none)'}: choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(ms))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", metavar="results.jsonl", help="bench.py run --out files")
    ap.add_argument("-o", "--out", required=True, help="SVG file to write ('-' for stdout)")
    ap.add_argument("--scenario", default="s2", help="scenario to chart (default s2; s3 gives one point per name)")
    ap.add_argument("--metric", type=metric_list, default=["p99", "p50"],
                    help=f"latency percentiles, comma list from {','.join(METRICS)}; the first is drawn solid, "
                         "the next dashed (default p99,p50)")
    ap.add_argument("--threshold", type=float, help="horizontal reference line in ms "
                    "(default: 250, loadgen's stop-p99-ms, for s2; none otherwise; 0 = none)")
    a = ap.parse_args()
    threshold = a.threshold if a.threshold is not None else (250.0 if a.scenario == "s2" else 0.0)
    try:
        svg = render(a.scenario, load(a.files, a.scenario), a.metric, threshold if threshold > 0 else 0.0)
    except InputError as e:
        sys.exit(f"chart.py: error: {e}")
    if a.out == "-":
        sys.stdout.write(svg)
        return
    try:
        with open(a.out, "w", encoding="utf-8", newline="\n") as f:
            f.write(svg)
    except OSError as e:
        sys.exit(f"chart.py: error: cannot write {a.out}: {e}")


if __name__ == "__main__":
    main()
