#!/usr/bin/env python3
"""Line charts (SVG, stdlib only) of density.sh results: CoreDNS queries per second and node
conntrack entries against pods per node, one line per setup, one row of panels per zone TTL,
log scale.

Usage: density_plot.py RESULTS.tsv [RESULTS.tsv ...] --out benches/cluster/density.svg
       [--setups "1-direct 2-nodelocal 3-sidecar 4-sidecar-nl"] [--note TEXT]
RESULTS.tsv is what density.sh writes ($OUT_DIR/density-<pid>/results.tsv) or a run directory.
"""
import argparse
import math
import os
import sys
from xml.sax.saxutils import escape

COLORS = {"direct": "#888888", "nodelocal": "#1f77b4", "sidecar": "#d62728", "sidecar-nl": "#ff7f0e"}
EXTRA = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
METRICS = [(8, "CoreDNS queries/s"), (10, "node conntrack entries")]


def read(paths):
    rows = []
    for p in paths:
        if os.path.isdir(p):
            p = os.path.join(p, "results.tsv")
        for line in open(p):
            f = line.rstrip("\n").split("\t")
            if len(f) >= 12:
                rows.append(f)
    return rows


def fmt(v):
    """An axis tick: 10, 100, 1k, 10k, 1M."""
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def value(v):
    """A point's label: 4,576 / 56.6 / 2.6."""
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def panel(out, x0, y0, w, h, title, series, xs):
    """series: [(label, color, [(pods, value)])]; log y axis, linear x over xs."""
    vals = [v for _, _, pts in series for _, v in pts if v > 0]
    lo = 10 ** math.floor(math.log10(min(vals))) if vals else 1
    hi = 10 ** math.ceil(math.log10(max(vals))) if vals else 10
    if hi <= lo:
        hi = lo * 10
    xmin, xmax = 0, max(xs)
    px = lambda x: x0 + 50 + (x - xmin) / (xmax - xmin) * (w - 70)
    py = lambda v: y0 + h - 30 - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * (h - 60)
    out.append(f'<text x="{x0 + w / 2}" y="{y0 + 16}" text-anchor="middle" font-weight="bold">{escape(title)}</text>')
    e = math.log10(lo)
    while e <= math.log10(hi) + 1e-9:
        v = 10 ** e
        out.append(f'<line x1="{x0 + 50}" x2="{x0 + w - 20}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 + 45}" y="{py(v) + 4:.1f}" text-anchor="end" font-size="11">{fmt(v)}</text>')
        e += 1
    for x in xs:
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{y0 + 30}" y2="{y0 + h - 30}" stroke="#eee"/>')
        out.append(f'<text x="{px(x):.1f}" y="{y0 + h - 14}" text-anchor="middle" font-size="11">{x}</text>')
    out.append(f'<text x="{x0 + w / 2}" y="{y0 + h}" text-anchor="middle" font-size="11">pods per node</text>')
    ends = []
    for label, color, pts in series:
        pts = sorted(pts)
        if not pts:
            continue
        d = " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in pts)
        out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, v in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(v):.1f}" r="3" fill="{color}"><title>{escape(label)}: {v:g} at {x} pods</title></circle>')
        ends.append((py(pts[-1][1]) - 6, px(pts[-1][0]) - 4, color, value(pts[-1][1])))
    # the last point's value above it; labels that would overlap are pushed apart
    ends.sort()
    for i in range(1, len(ends)):
        if ends[i][0] - ends[i - 1][0] < 11:
            ends[i] = (ends[i - 1][0] + 11,) + ends[i][1:]
    for y, x, color, text in ends:
        out.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="10" fill="{color}" text-anchor="end">{text}</text>')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--setups", default="", help="series to draw (setup-name as in the table), default all")
    ap.add_argument("--note", default="", help="text under the legend, '|' between lines")
    args = ap.parse_args()
    rows = read(args.results)
    if not rows:
        sys.exit("density_plot.py: no rows")
    want = args.setups.split() if args.setups else None
    ttls = sorted({int(float(r[0])) for r in rows})
    labels = []
    for r in rows:
        k = f"{r[1]}-{r[2]}"
        if k not in labels and (want is None or k in want):
            labels.append(k)
    xs = sorted({int(r[3]) for r in rows})
    pw, ph = 430, 300
    notes = [l.strip() for l in args.note.split("|") if l.strip()]
    W, H = pw * len(METRICS) + 20, ph * len(ttls) + 60 + 18 * ((len(labels) + 2) // 3) + 15 * len(notes)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">'
           'What CoreDNS and the node see, per DNS setup, against pods per node</text>']
    extra = iter(EXTRA)
    colors = {}
    for k in labels:
        base = k.split("-", 1)[1]
        colors[k] = COLORS.get(base) or next(extra, "#000")
    for ti, ttl in enumerate(ttls):
        for mi, (col, name) in enumerate(METRICS):
            series = []
            for k in labels:
                pts = [(int(r[3]), float(r[col])) for r in rows
                       if int(float(r[0])) == ttl and f"{r[1]}-{r[2]}" == k and r[col] not in ("NA", "")]
                series.append((k, colors[k], pts))
            panel(out, 10 + mi * pw, 30 + ti * ph, pw, ph, f"{name}, zone TTL {ttl} s", series, xs)
    y = 30 + len(ttls) * ph + 14
    for i, k in enumerate(labels):
        x = 20 + (i % 3) * 280
        yy = y + (i // 3) * 18
        out.append(f'<line x1="{x}" x2="{x + 24}" y1="{yy - 4}" y2="{yy - 4}" stroke="{colors[k]}" stroke-width="3"/>')
        out.append(f'<text x="{x + 30}" y="{yy}">{escape(k)}</text>')
    for i, line in enumerate(notes):
        out.append(f'<text x="20" y="{y + 18 * ((len(labels) + 2) // 3) + 15 * i}" font-size="11">{escape(line)}</text>')
    out.append("</svg>")
    with open(args.out, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
