#!/usr/bin/env python3
"""Bar charts (SVG, Python 3 standard library only) from the raw results of two benchmarks.

  peers    ../shared/bench/peers.sh (dnsperf against each peer, on loopback): one SVG with a
           panel per workload (hot, cold, mixed), one horizontal bar per peer, QPS per server
           core by default; dnscore highlighted, baselines (knotd-direct, floor-*) grey.
           Several reps of a peer and workload -> the median, with a min-max whisker.
  cluster  benches/cluster/cluster.sh (the simulated Kubernetes node): node conntrack entries
           per 10k lookups and p99 lookup latency, one bar per setup, grouped by phase, on a
           log scale.
  selftest builds charts from embedded sample tables and checks them (no files, a second).

Input (peers / cluster), one of:
  RUN_DIR          a run directory: results.tsv is read (table.txt when there is none).
                   peers.sh writes $OUT_DIR/run-<timestamp>/ (OUT_DIR default /tmp/dnsbench),
                   cluster.sh $OUT_DIR/cluster-<pid>/ (default /tmp/dnsc-cluster). Given
                   OUT_DIR itself, the newest run in it is used (peers: its "latest" link).
  FILE             results.tsv (tab-separated, no header) or a printed table (table.txt).
  --from-text FILE the first table printed by the script found in a text/markdown file, e.g.
                   benches/README.md (header line starting "peer ") or
                   benches/cluster/README.md (header line starting "setup "); --table N for
                   the Nth such table.
  '-' reads standard input.

Examples (from the repo root):
  python3 benches/charts.py peers --from-text benches/README.md --out benches/charts/peers.svg
  python3 benches/charts.py peers /tmp/dnsbench/latest --out peers.svg
  python3 benches/charts.py peers RUN_DIR --workloads hot --exclude 'floor-plain' --out hot.svg
  python3 benches/charts.py cluster --from-text benches/cluster/README.md --out-dir benches/charts
      (-> cluster-conntrack.svg, cluster-p99.svg)
  python3 benches/charts.py cluster /tmp/dnsc-cluster/cluster-1234 --metric p99 --out p99.svg
  python3 benches/charts.py selftest

Missing values ('-', 'NA') give a bar-less "n/a" row. Exit status: 0 done, 2 bad usage or
unreadable/unusable input (one line on stderr, no traceback), 1 the output could not be written.
"""
import argparse
import io
import math
import os
import re
import statistics
import sys
import tempfile
import xml.etree.ElementTree as ET
from contextlib import redirect_stderr
from xml.sax.saxutils import escape

PROG = "charts.py"
MAX_BYTES = 64 << 20


class InputError(Exception):
    """Bad or unreadable input: reported in one line, exit status 2."""


class OutputError(Exception):
    """The chart could not be written: exit status 1."""


def warn(msg):
    print(f"{PROG}: warning: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Reading input
# ---------------------------------------------------------------------------------------------
def read_text(path):
    """-> (text, display name). Raises InputError for anything that is not readable text."""
    if path == "-":
        try:
            data = sys.stdin.buffer.read(MAX_BYTES + 1)
        except (OSError, ValueError, AttributeError) as e:
            raise InputError(f"cannot read standard input: {e}")
        name = "<stdin>"
    else:
        name = path
        if os.path.isdir(path):
            raise InputError(f"{path}: is a directory, expected a file")
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror or e}")
    if len(data) > MAX_BYTES:
        raise InputError(f"{name}: larger than {MAX_BYTES >> 20} MB, not a results table")
    if b"\0" in data:
        raise InputError(f"{name}: binary file, not a results table")
    try:
        return data.decode("utf-8-sig"), name
    except UnicodeDecodeError:
        raise InputError(f"{name}: not UTF-8 text")


def resolve_input(path, kind):
    """A run directory / OUT_DIR / file -> (file to read, subtitle hint or None)."""
    if path == "-":
        return path, None
    if not os.path.isdir(path):
        if not os.path.exists(path):
            raise InputError(f"{path}: no such file or directory")
        return path, _meta_hint(path, kind)
    d = path
    found = _results_in(d)
    if not found:
        prefix = "run-" if kind == "peers" else "cluster-"
        runs = []
        latest = os.path.join(d, "latest")
        if kind == "peers" and os.path.isdir(latest):
            runs = [latest]
        else:
            try:
                entries = os.listdir(d)
            except OSError as e:
                raise InputError(f"cannot list {d}: {e.strerror or e}")
            cand = [os.path.join(d, e) for e in entries if e.startswith(prefix)]
            cand = [c for c in cand if os.path.isdir(c)]
            runs = sorted(cand, key=lambda c: os.path.getmtime(c), reverse=True)
        for r in runs:
            found = _results_in(r)
            if found:
                print(f"{PROG}: using {found}", file=sys.stderr)
                break
    if not found:
        what = "peers.sh run directory (run-<timestamp>/)" if kind == "peers" else \
            "cluster.sh run directory (cluster-<pid>/)"
        tsv = os.path.join(d, "results.tsv")
        if os.path.isfile(tsv):
            raise InputError(f"{tsv} is empty and there is no table.txt (did the run finish?)")
        raise InputError(f"{d}: no results.tsv or table.txt in it (expected a {what})")
    return found, _meta_hint(found, kind)


def _meta_hint(results_file, kind):
    """peers.sh writes meta.txt beside results.tsv: its date and host make the subtitle."""
    meta = os.path.join(os.path.dirname(os.path.abspath(results_file)), "meta.txt")
    if kind != "peers" or not os.path.isfile(meta):
        return None
    try:
        with open(meta, encoding="utf-8", errors="replace") as f:
            kv = dict(l.split(":", 1) for l in f.read().splitlines()[:3] if ":" in l)
    except OSError:
        return None
    return "; ".join(v.strip() for k, v in kv.items() if k in ("date", "host")) or None


def _results_in(d):
    for name in ("results.tsv", "table.txt"):
        p = os.path.join(d, name)
        try:
            if os.path.isfile(p) and os.path.getsize(p) > 0:
                return p
        except OSError:
            pass
    return None


MISSING = {"", "-", "na", "n/a", "nan", "none", "null", "?"}


def number(tok, where, col):
    """'1,234' / '12.5' -> float; '-', 'NA', ... -> None; anything else -> None with a warning."""
    t = tok.strip()
    if t.lower() in MISSING:
        return None
    try:
        v = float(t.replace(",", ""))
    except ValueError:
        warn(f"{where}: {col} '{t}' is not a number, taken as missing")
        return None
    if math.isnan(v) or math.isinf(v):
        return None
    return v


class Table:
    def __init__(self, header, rows, context, source, line):
        self.header, self.rows, self.context, self.source, self.line = header, rows, context, source, line


def find_tables(text, source, first_col, required):
    """Tables as the bench scripts print them: a header line whose first word is `first_col`
    and which has all `required` columns, then whitespace-separated rows up to a blank line or
    a ``` fence. Lines starting with '#' are comments. The context of a table (for the chart's
    subtitle) is the first of the comment lines right above its header, else the last
    markdown heading before it."""
    tables = []
    lines = text.splitlines()
    heading = None
    comments = []
    i, n = 0, len(lines)
    while i < n:
        s = lines[i].strip()
        if s.startswith("```") or s.startswith("~~~"):
            comments = []
            i += 1
            continue
        if s.startswith("#"):
            if re.match(r"#{1,6}\s", s):
                heading = s
            comments.append(s)
            i += 1
            continue
        toks = s.split()
        if toks and toks[0] == first_col and required <= set(toks):
            ctx = comments[0] if comments else heading
            rows = []
            j = i + 1
            while j < n:
                t = lines[j].strip()
                if not t or t.startswith("```") or t.startswith("~~~"):
                    break
                if not t.startswith("#"):
                    rows.append((j + 1, t.split()))
                j += 1
            ctx = re.sub(r"^#+\s*", "", ctx).strip() if ctx else None
            tables.append(Table(toks, rows, ctx, source, i + 1))
            comments = []
            i = j
            continue
        comments = []
        i += 1
    return tables


def pick_table(text, source, first_col, required, index, what):
    tables = find_tables(text, source, first_col, required)
    if not tables:
        raise InputError(f"{source}: no {what} table found (expected a header line starting "
                         f"'{first_col} ' with columns {' '.join(sorted(required))})")
    if index < 1 or index > len(tables):
        raise InputError(f"{source}: --table {index}: there are {len(tables)} {what} table(s)")
    return tables[index - 1]


def table_records(t, wanted):
    """-> list of (where, {column: token}) for the rows of t with the header's column count."""
    out = []
    for lineno, f in t.rows:
        where = f"{t.source}:{lineno}"
        if len(f) != len(t.header):
            warn(f"{where}: {len(f)} columns where the header (line {t.line}) has "
                 f"{len(t.header)}; row skipped")
            continue
        rec = dict(zip(t.header, f))
        out.append((where, {k: rec.get(k) for k in wanted}))
    return out


def is_tsv(text):
    lines = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    return bool(lines) and sum("\t" in l for l in lines) * 2 > len(lines)


def tsv_records(text, source, nfields, colmap, script, other_kind):
    """Header-less TSV rows of exactly nfields fields -> list of (where, {column: token})."""
    out, counts = [], {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        f = line.rstrip("\r\n").split("\t")
        if len(f) != nfields:
            counts[len(f)] = counts.get(len(f), 0) + 1
            if len(counts) <= 3 and counts[len(f)] == 1:
                warn(f"{source}:{lineno}: {len(f)} tab-separated fields, expected {nfields}; "
                     "row skipped")
            continue
        out.append((f"{source}:{lineno}", {k: f[i].strip() for k, i in colmap.items()}))
    if not out:
        hint = ""
        if other_kind and other_kind[0] in counts:
            hint = f" (rows of {other_kind[0]} fields are {other_kind[1]}'s results.tsv: " \
                   f"use '{PROG} {other_kind[2]}')"
        raise InputError(f"{source}: no rows of {nfields} tab-separated fields, the format of "
                         f"{script}'s results.tsv{hint}")
    return out


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------
class Bar:
    def __init__(self, label, values, notes, kind):
        self.label = label
        self.values = values          # the numeric values (reps); empty: missing
        self.notes = notes            # set of notes (peers) / extra text
        self.kind = kind              # 'ours' | 'peer' | 'base'
        self.value = statistics.median(values) if values else None
        self.lo = min(values) if values else None
        self.hi = max(values) if values else None
        self.n = len(values)
        self.marks = ""
        self.suffix = ""
        self.missing_reason = ""


def group_values(records, order_groups=None):
    """records: (group, label, value|None, note) -> (ordered groups, {group: [(label, values,
    notes)]}), labels in the order they first appear anywhere (so every panel has the same
    order)."""
    label_order, groups_seen = {}, []
    data = {}
    for g, label, v, note in records:
        if g not in data:
            data[g] = {}
            groups_seen.append(g)
        label_order.setdefault(label, len(label_order))
        vals, notes = data[g].setdefault(label, ([], set()))
        if v is not None:
            vals.append(v)
        if note and note not in MISSING:
            for part in note.split(","):
                if part:
                    notes.add(part)
    groups = groups_seen
    if order_groups:
        known = [g for g in order_groups if g in data]
        groups = known + [g for g in groups_seen if g not in known]
    out = {}
    for g in groups:
        out[g] = sorted(((l, vs, ns) for l, (vs, ns) in data[g].items()), key=lambda x: label_order[x[0]])
    return groups, out


# ---------------------------------------------------------------------------------------------
# Number formats
# ---------------------------------------------------------------------------------------------
def fmt_k(v):
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f}M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def fmt_int(v):
    return f"{v:,.0f}"


def fmt_ms(v):
    if v < 10:
        return f"{v:.2f}"
    if v < 100:
        return f"{v:.1f}"
    return f"{v:,.0f}"


def fmt_tick(v):
    if v == 0:
        return "0"
    for div, suf in ((1e6, "M"), (1e3, "k"), (1, "")):
        if abs(v) >= div:
            return f"{v / div:.3g}" + suf
    return f"{v:.3g}"


# ---------------------------------------------------------------------------------------------
# SVG rendering: horizontal bars in groups (panels), one shared scale
# ---------------------------------------------------------------------------------------------
FONT = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif"
COLOURS = {"ours": "#e66101", "peer": "#5b84b1", "base": "#a9a9a9"}


def text_w(s, size):
    return len(s) * size * 0.6


def wrap(s, width, size):
    words, lines, cur = s.split(), [], ""
    maxc = max(10, int(width / (size * 0.6)))
    for w in words:
        if cur and len(cur) + 1 + len(w) > maxc:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    if cur:
        lines.append(cur)
    return lines


def nice_step(x):
    if x <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if x <= m * e * (1 + 1e-9):
            return m * e
    return 10 * e


class LinearScale:
    name = "linear"

    def __init__(self, vmax):
        if not vmax or vmax <= 0:
            vmax = 1.0
        step = nice_step(vmax / 5)
        k = math.ceil(vmax / step - 1e-9)
        self.max = k * step
        self.ticks = [i * step for i in range(k + 1)]

    def frac(self, v):
        return min(1.0, max(0.0, v / self.max))


class LogScale:
    name = "log"

    def __init__(self, vmin_pos, vmax):
        if not vmin_pos or vmin_pos <= 0 or not vmax or vmax <= 0:
            vmin_pos, vmax = 1.0, 10.0
        self.lo = math.floor(math.log10(vmin_pos) + 1e-9)
        self.hi = math.ceil(math.log10(vmax) - 1e-9)
        if self.hi <= self.lo:
            self.hi = self.lo + 1
        self.ticks = [10.0 ** e for e in range(self.lo, self.hi + 1)]
        self.minor = [m * 10.0 ** e for e in range(self.lo, self.hi) for m in range(2, 10)]

    def frac(self, v):
        if v <= 0:
            return 0.0
        return min(1.0, max(0.0, (math.log10(v) - self.lo) / (self.hi - self.lo)))


def make_scale(kind, groups):
    vals = [b.hi for bars in groups.values() for b in bars if b.hi is not None]
    if kind == "log":
        pos = [b.lo for bars in groups.values() for b in bars if b.lo is not None and b.lo > 0]
        return LogScale(min(pos) if pos else None, max(vals) if vals else None)
    return LinearScale(max(vals) if vals else None)


def legend_items(groups, labels):
    present = {b.kind for bars in groups.values() for b in bars}
    return [(k, labels[k]) for k in ("ours", "peer", "base") if k in present and k in labels]


def render(title, subtitle, group_names, group_desc, groups, fmt, scale_kind, axis_label,
           legend, footnotes, width=800):
    """groups: {name: [Bar]} -> SVG text. Every bar with a value is one <rect class="bar ...">."""
    pad = 16
    row_h, bar_h = 18, 12
    all_bars = [b for g in group_names for b in groups[g]]
    scale = make_scale(scale_kind, groups)

    def vtext(b):
        if b.value is None:
            return "n/a" + (f" ({b.missing_reason})" if b.missing_reason else "")
        return fmt(b.value) + (" " + b.marks if b.marks else "") + b.suffix

    label_w = min(max([text_w(b.label, 12) for b in all_bars] + [40]) + 10, width * 0.3)
    max_chars = int((label_w - 10) / (12 * 0.6))
    value_w = max([text_w(vtext(b), 11) for b in all_bars] + [30]) + 10
    x0 = pad + label_w
    x1 = max(x0 + 150, width - pad - value_w)
    width = max(width, int(x1 + value_w + pad))
    pw = x1 - x0

    def X(v):
        return x0 + scale.frac(v) * pw

    out = []
    a = out.append
    y = pad + 16
    a(f'<text x="{pad}" y="{y}" font-size="17" font-weight="bold" fill="#222">{escape(title)}</text>')
    for line in wrap(subtitle or "", width - 2 * pad, 12):
        y += 17
        a(f'<text x="{pad}" y="{y}" font-size="12" fill="#555">{escape(line)}</text>')
    # legend
    if legend:
        y += 22
        lx = pad
        for kind, text in legend:
            w = 12 + 5 + text_w(text, 12) + 18
            if lx + w > width - pad and lx > pad:
                lx = pad
                y += 18
            a(f'<rect class="legend" x="{lx}" y="{y - 10}" width="12" height="12" fill="{COLOURS[kind]}"/>')
            a(f'<text x="{lx + 17}" y="{y}" font-size="12" fill="#333">{escape(text)}</text>')
            lx += w
    for g in group_names:
        bars = groups[g]
        y += 28
        a(f'<text x="{pad}" y="{y}" font-size="13" font-weight="bold" fill="#222" xml:space="preserve">{escape(g)}'
          + (f'<tspan font-weight="normal" fill="#666"> \u2014 {escape(group_desc[g])}</tspan>'
             if group_desc.get(g) else "") + "</text>")
        top = y + 8
        bottom = top + len(bars) * row_h
        # grid
        if scale.name == "log":
            for t in scale.minor:
                xt = X(t)
                a(f'<line x1="{xt:.1f}" y1="{top}" x2="{xt:.1f}" y2="{bottom}" stroke="#f0f0f0" stroke-width="1"/>')
        for t in scale.ticks:
            xt = X(t)
            a(f'<line x1="{xt:.1f}" y1="{top}" x2="{xt:.1f}" y2="{bottom}" stroke="#dcdcdc" stroke-width="1"/>')
            a(f'<text x="{xt:.1f}" y="{bottom + 12}" font-size="10" fill="#777" text-anchor="middle">{escape(fmt_tick(t))}</text>')
        for i, b in enumerate(bars):
            by = top + i * row_h + (row_h - bar_h) / 2
            mid = by + bar_h / 2
            lab = b.label if len(b.label) <= max_chars else b.label[: max(1, max_chars - 1)] + "\u2026"
            weight = ' font-weight="bold"' if b.kind == "ours" else ""
            a(f'<text x="{x0 - 6:.1f}" y="{mid + 4:.1f}" font-size="12" fill="#222" text-anchor="end"{weight}>{escape(lab)}</text>')
            if b.value is None:
                a(f'<text x="{x0 + 4:.1f}" y="{mid + 4:.1f}" font-size="11" fill="#999" font-style="italic">{escape(vtext(b))}</text>')
                continue
            w = X(b.value) - x0
            if b.value > 0:
                w = max(w, 1.0)
            else:
                w = 1.5  # a zero: a stub, so the row still shows a bar
            tip = f"{b.label}, {g}: {fmt(b.value)}"
            if b.n > 1:
                tip += f" (median of {b.n}: {fmt(b.lo)}\u2013{fmt(b.hi)})"
            if b.notes:
                tip += f" [{','.join(sorted(b.notes))}]"
            a(f'<rect class="bar {b.kind}" x="{x0:.1f}" y="{by:.1f}" width="{w:.1f}" height="{bar_h}" '
              f'fill="{COLOURS[b.kind]}"><title>{escape(tip)}</title></rect>')
            right = x0 + w
            if b.n > 1 and b.hi > b.lo:
                xl, xh = X(b.lo) if b.lo > 0 or scale.name == "linear" else x0, X(b.hi)
                a(f'<line class="range" x1="{xl:.1f}" y1="{mid:.1f}" x2="{xh:.1f}" y2="{mid:.1f}" stroke="#222" stroke-width="1"/>')
                for xe in (xl, xh):
                    a(f'<line class="range" x1="{xe:.1f}" y1="{mid - 4:.1f}" x2="{xe:.1f}" y2="{mid + 4:.1f}" stroke="#222" stroke-width="1"/>')
                right = max(right, xh)
            a(f'<text x="{right + 4:.1f}" y="{mid + 4:.1f}" font-size="11" fill="#222"{weight}>{escape(vtext(b))}</text>')
        a(f'<line x1="{x0:.1f}" y1="{top}" x2="{x0:.1f}" y2="{bottom}" stroke="#444" stroke-width="1"/>')
        y = bottom + 14
    y += 20
    a(f'<text x="{x0 + pw / 2:.1f}" y="{y}" font-size="12" fill="#333" text-anchor="middle">{escape(axis_label)}</text>')
    for note in footnotes:
        for line in wrap(note, width - 2 * pad, 11):
            y += 15
            a(f'<text x="{pad}" y="{y}" font-size="11" fill="#555">{escape(line)}</text>')
    height = int(y + pad)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="{FONT}">\n'
            f'<title>{escape(title)}</title>\n'
            f'<rect class="background" x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>\n')
    return head + "\n".join(out) + "\n</svg>\n"


def write_out(path, svg):
    if path == "-":
        sys.stdout.write(svg)
        return
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".charts-", suffix=".svg", dir=d)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(svg)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}")
    print(f"{PROG}: wrote {path}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# peers
# ---------------------------------------------------------------------------------------------
PEER_METRICS = {
    # name: (printed column, results.tsv index, chart title, axis label, format)
    "qps-per-core": ("QPS/core", 15, "DNS forwarders on loopback: queries per server core",
                     "answered queries per server CPU-second (QPS/core) \u2014 higher is better", fmt_k),
    "qps": ("QPS", 4, "DNS forwarders on loopback: queries per second",
            "dnsperf queries per second (server, dnsperf and upstreams share the CPUs) \u2014 higher is better", fmt_k),
    "avg-ms": ("avg_ms", 5, "DNS forwarders on loopback: average latency",
               "average dnsperf latency, ms \u2014 lower is better", fmt_ms),
}
PEER_TSV_COLS = {"peer": 0, "load": 2, "rep": 3, "QPS": 4, "avg_ms": 5, "QPS/core": 15, "note": 17}
WORKLOAD_ORDER = ["hot", "cold", "mixed"]
WORKLOAD_DESC = {"hot": "repeating names, every answer cached",
                 "cold": "every query a never-seen name (a miss)",
                 "mixed": "mostly hot names, a share of misses"}
NOTE_MARKS = [("wrapped", "\u2020", "\u2020 wrapped: the peer got through the whole unique-name file, "
               "so repeats became cache hits (flatters cold/mixed)."),
              ("rcode-mismatch", "\u2021", "\u2021 rcode-mismatch: answers did not have the expected rcodes."),
              ("no-answers", "\u00b0", "\u00b0 no-answers: dnsperf got no answers.")]
FLOOR_MISS_MARK = ("\u00a7", "\u00a7 the floor never asks upstream: its cold/mixed bars are the "
                   "kernel's cost per query only, not comparable.")


def load_peers(args):
    metric = PEER_METRICS[args.metric]
    col = metric[0]
    hint = None
    if args.from_text:
        text, src = read_text(args.from_text)
        t = pick_table(text, src, "peer", {"peer", "load", "rep"}, args.table, "peers")
        recs = table_records(t, ["peer", "load", "rep", col, "note"])
        hint = t.context
        if col not in t.header:
            raise InputError(f"{src}:{t.line}: the peers table has no '{col}' column")
    else:
        path, hint = resolve_input(args.input, "peers")
        text, src = read_text(path)
        if is_tsv(text):
            recs = tsv_records(text, src, 18, PEER_TSV_COLS, "peers.sh", (14, "cluster.sh", "cluster"))
        else:
            t = pick_table(text, src, "peer", {"peer", "load", "rep"}, args.table, "peers")
            if col not in t.header:
                raise InputError(f"{src}:{t.line}: the peers table has no '{col}' column")
            recs = table_records(t, ["peer", "load", "rep", col, "note"])
            hint = hint or t.context
    if not recs:
        raise InputError(f"{src}: the peers table has no rows")
    return recs, src, hint


def peer_kind(name, args):
    if re.search(args.highlight, name):
        return "ours"
    if re.search(args.baseline, name):
        return "base"
    return "peer"


def cmd_peers(args):
    for opt in ("highlight", "baseline", "include", "exclude"):
        rx = getattr(args, opt)
        if rx:
            try:
                re.compile(rx)
            except re.error as e:
                raise InputError(f"--{opt} '{rx}': bad regular expression: {e}")
    recs, src, hint = load_peers(args)
    col = PEER_METRICS[args.metric][0]
    rows = []
    for where, r in recs:
        peer, load = r["peer"], r["load"]
        if args.include and not re.search(args.include, peer):
            continue
        if args.exclude and re.search(args.exclude, peer):
            continue
        note = r.get("note") or "-"
        v = number(r[col] or "-", where, col)
        if "not-ready" in note.split(","):
            v = None
        rows.append((load, peer, v, note))
    if not rows:
        raise InputError(f"{src}: no rows left after --include/--exclude")
    order = WORKLOAD_ORDER
    if args.workloads:
        order = [w for w in re.split(r"[,\s]+", args.workloads) if w]
    names, raw = group_values(rows, order)
    if args.workloads:
        for w in order:
            if w not in raw:
                warn(f"{src}: no rows for workload '{w}'")
        names = [g for g in names if g in order]
        if not names:
            raise InputError(f"{src}: none of the workloads {' '.join(order)} is in the table")
    groups, reps, marks_used = {}, 1, {}
    for g in names:
        bars = []
        for label, vals, notes in raw[g]:
            b = Bar(label, vals, notes, peer_kind(label, args))
            reps = max(reps, b.n)
            if b.value is None:
                b.missing_reason = "not-ready" if "not-ready" in notes else "no value"
            for note, mark, text in NOTE_MARKS:
                if note in notes and not (note == "rcode-mismatch" and b.kind == "base"):
                    b.marks += mark
                    marks_used[mark] = text
            if b.kind == "base" and label.startswith("floor") and g != "hot" and b.value is not None:
                b.marks += FLOOR_MISS_MARK[0]
                marks_used[FLOOR_MISS_MARK[0]] = FLOOR_MISS_MARK[1]
            other = sorted(n for n in notes if n not in {m[0] for m in NOTE_MARKS} | {"not-ready"})
            if other:
                b.suffix = " [" + ",".join(other) + "]"
            bars.append(b)
        if args.sort == "value":
            bars.sort(key=lambda b: -1 if b.value is None else b.value, reverse=True)
        groups[g] = bars
    sub = args.subtitle if args.subtitle is not None else (hint or src)
    if reps > 1:
        sub += f" \u2014 median of up to {reps} reps, whiskers min\u2013max"
    legend = legend_items(groups, {"ours": "dnscore", "peer": "other servers",
                                   "base": "baselines: knotd-direct (no cache), floor-* (no DNS work)"})
    foot = [text for _, mark, text in NOTE_MARKS + [(None,) + FLOOR_MISS_MARK] if mark in marks_used]
    foot.append("Server, dnsperf and upstreams share the machine's CPUs: compare peers within one run.")
    svg = render(args.title or PEER_METRICS[args.metric][2], sub, names, WORKLOAD_DESC, groups,
                 PEER_METRICS[args.metric][4], args.scale or "linear", PEER_METRICS[args.metric][3],
                 legend, foot, args.width)
    write_out(args.out, svg)
    return svg


# ---------------------------------------------------------------------------------------------
# cluster
# ---------------------------------------------------------------------------------------------
CLUSTER_METRICS = {
    # name: (printed column, chart title, axis label, format, default file)
    "conntrack": ("ct/10k", "Node conntrack entries per 10,000 lookups",
                  "conntrack entries created in the node per 10,000 application lookups (log scale) "
                  "\u2014 lower is better", fmt_int, "cluster-conntrack.svg"),
    "p99": ("p99ms", "p99 latency of an application lookup",
            "p99 lookup latency, ms (log scale) \u2014 lower is better", fmt_ms, "cluster-p99.svg"),
    "p50": ("p50ms", "Median latency of an application lookup",
            "p50 lookup latency, ms (log scale) \u2014 lower is better", fmt_ms, "cluster-p50.svg"),
    "max": ("maxms", "Slowest application lookup",
            "max lookup latency, ms (log scale) \u2014 lower is better", fmt_ms, "cluster-max.svg"),
    "coredns": ("cdns/10k", "Queries reaching CoreDNS per 10,000 lookups",
                "UDP queries (+ TCP connections) reaching the CoreDNS endpoints per 10,000 lookups "
                "(log scale) \u2014 lower is better", fmt_int, "cluster-coredns.svg"),
}
CLUSTER_DEFAULT = ["conntrack", "p99"]
# results.tsv of cluster.sh: setup number, setup name, phase, lookups, failed, p50, p99, max,
# ct_new, ct/10k, coredns, cdns/10k, win_fail/max, SERVFAIL
CLUSTER_TSV_COLS = {"num": 0, "name": 1, "phase": 2, "lookups": 3, "failed": 4, "p50ms": 5,
                    "p99ms": 6, "maxms": 7, "ct/10k": 9, "cdns/10k": 11}
PHASE_ORDER = ["hot", "unique", "evict", "stale"]
PHASE_DESC = {"hot": "warm cache, repeating names",
              "unique": "every name never seen before",
              "evict": "an endpoint removed from the DNAT chain, then killed",
              "stale": "an endpoint killed, its DNAT rule removed seconds later"}


def load_cluster(args):
    wanted = ["setup", "phase", "failed"] + [CLUSTER_METRICS[m][0] for m in args.metrics]
    hint = None
    req = {"setup", "phase", "lookups"}
    if args.from_text:
        text, src = read_text(args.from_text)
        tsv = False
    else:
        path, _ = resolve_input(args.input, "cluster")
        text, src = read_text(path)
        tsv = is_tsv(text)
    if tsv:
        raw = tsv_records(text, src, 14, CLUSTER_TSV_COLS, "cluster.sh", (18, "peers.sh", "peers"))
        recs = []
        for where, r in raw:
            r["setup"] = f"{r['num']}-{r['name']}"
            recs.append((where, r))
    else:
        t = pick_table(text, src, "setup", req, args.table, "cluster")
        for m in args.metrics:
            if CLUSTER_METRICS[m][0] not in t.header:
                raise InputError(f"{src}:{t.line}: the cluster table has no '{CLUSTER_METRICS[m][0]}' column")
        recs = table_records(t, wanted)
        hint = t.context
    if not recs:
        raise InputError(f"{src}: the cluster table has no rows")
    return recs, src, hint


def setup_key(label):
    m = re.match(r"(\d+)", label)
    return (int(m.group(1)), label) if m else (10 ** 9, label)


def cmd_cluster(args):
    args.metrics = args.metric or CLUSTER_DEFAULT
    if args.out and len(args.metrics) != 1:
        raise InputError(f"--out takes one chart; {len(args.metrics)} metrics asked "
                         f"({' '.join(args.metrics)}): use --out-dir DIR, or one --metric")
    if not args.out and not args.out_dir:
        raise InputError("give --out FILE (with one --metric) or --out-dir DIR")
    try:
        re.compile(args.highlight)
    except re.error as e:
        raise InputError(f"--highlight '{args.highlight}': bad regular expression: {e}")
    recs, src, hint = load_cluster(args)
    svgs = {}
    for m in args.metrics:
        col, title, axis, fmt, fname = CLUSTER_METRICS[m]
        rows, failed = [], {}
        for where, r in recs:
            v = number(r.get(col) or "-", where, col)
            rows.append((r["phase"], r["setup"], v, "-"))
            f = number(r.get("failed") or "-", where, "failed")
            if f:
                failed[(r["phase"], r["setup"])] = failed.get((r["phase"], r["setup"]), 0) + f
        names, raw = group_values(rows, PHASE_ORDER)
        groups = {}
        for g in names:
            bars = []
            for label, vals, notes in sorted(raw[g], key=lambda x: setup_key(x[0])):
                kind = "ours" if re.search(args.highlight, label) else "peer"
                b = Bar(label, vals, notes, kind)
                if b.value is None:
                    b.missing_reason = "no value"
                if failed.get((g, label)):
                    b.suffix = f"  ({fmt_int(failed[(g, label)])} failed)"
                bars.append(b)
            groups[g] = bars
        sub = args.subtitle if args.subtitle is not None else (hint or src)
        legend = legend_items(groups, {"ours": "dnscore sidecar (setups 3, 4)",
                                       "peer": "direct to the Service IP / NodeLocal-like unbound"})
        all_bars = [b for bars in groups.values() for b in bars]
        foot = []
        if m == "conntrack":
            foot.append("Entries are counted in the node's conntrack table after each phase "
                        "(flushed before it)"
                        + ("; a bar at the axis is 0." if any(b.value == 0 for b in all_bars) else "."))
        foot.append("Setups: 1 direct to the kube-dns Service IP (DNAT), 2 NodeLocal-like unbound on "
                    "the node, 3 dnscore sidecar in the pod \u2192 Service IP, 4 sidecar \u2192 "
                    "the endpoints."
                    + (" '(N failed)': N application lookups failed." if any(b.suffix for b in all_bars) else ""))
        svg = render(args.title or title, sub, names, PHASE_DESC, groups, fmt, args.scale or "log",
                     axis, legend, foot, args.width)
        out = args.out or os.path.join(args.out_dir, fname)
        write_out(out, svg)
        svgs[m] = svg
    return svgs


# ---------------------------------------------------------------------------------------------
# selftest
# ---------------------------------------------------------------------------------------------
SAMPLE_PEERS_MD = """# Benchmarks

```sh
bash benches/floor/run.sh            # a command block first, like benches/README.md
```

### Sample run: 3 reps, odd values

```
peer               load   rep      QPS  avg_ms   max_ms   lost NOERR% NXDOM% other% srvCPU% upCPU%  QPS/core  note
knotd-direct       hot      1   111488   0.771   10.986      0   47.9   52.1    0.0      68     68    162543  -
unbound-t1         hot      1   114183   0.783    3.017      7   47.9   52.1    0.0      72      0    159062  -
unbound-t1         cold     1    22748   8.661   19.181      0   80.0   20.0    0.0      97     27     23387  -
dnscore-t1         hot      1   142021   0.778    3.559      0   47.9   52.1    0.0      64      0    100000  -
dnscore-t1         hot      2   142021   0.778    3.559      0   47.9   52.1    0.0      64      0    300000  -
dnscore-t1         hot      3   142021   0.778    3.559      0   47.9   52.1    0.0      64      0    120000  -
dnscore-t1         cold     1    29582   6.492   17.355      0   80.1   19.9    0.0     105     20     28211  wrapped
mystery-t1         hot      1        0      NA       NA      0      0      0      0      NA     NA        NA  not-ready
mystery-t1         cold     1    12000   1.000    2.000      0   80.0   20.0    0.0      50      0         -  -
floor-mmsg-t1      hot      1   157510   0.707    3.109      0    0.0  100.0    0.0      64      0    244594  rcode-mismatch
floor-mmsg-t1      cold     1   118391   0.527    4.027      0    0.0  100.0    0.0      59      0    199993  rcode-mismatch,wrapped
this row is short
```

```
peer               load   rep      QPS  avg_ms   max_ms   lost NOERR% NXDOM% other% srvCPU% upCPU%  QPS/core  note
second-table       hot      1        1       1        1      0      0      0      0       1      1         1  -
```
"""
# bars with a value: hot: knotd, unbound, dnscore, floor (mystery not-ready) = 4;
# cold: unbound, dnscore, floor (mystery '-') = 3  -> 7

SAMPLE_PEERS_TSV = "\n".join("\t".join(r) for r in [
    "unbound-t1 1 hot 1 114183 0.783 3.017 0.5 570000 7 47.9 52.1 0.0 72 0 159062 200000 -".split(),
    "dnscore-t1 1 hot 1 142021 0.778 3.559 0.5 710000 0 47.9 52.1 0.0 64 0 221358 200000 -".split(),
    "dnscore-t2 2 hot 1 0 NA NA NA 0 0 0 0 0 NA NA NA 0 not-ready".split(),
    "dnscore-t1 1 mixed 1 121796 1.012 13.177 0.5 600000 6 51.1 48.9 0.0 73 9 139042 500000 wrapped".split(),
]) + "\n"
# bars with a value: hot: unbound, dnscore-t1 = 2 (dnscore-t2 not-ready); mixed: 1 -> 3

SAMPLE_CLUSTER_MD = """### Results
```
# dnscore cluster simulation 2026-11-24T02:13Z, 2 CPUs, kernel 6.18.44-fc-v782
# workload: 500 lookups/s
setup        phase    lookups  failed    p50ms    p99ms     maxms   ct_new    ct/10k  coredns  cdns/10k   win_fail/max SERVFAIL
1-direct     hot        20000       0     0.31     0.73       4.2    29792     14896    40000     20000              -        0
1-direct     stale      10000       0     0.35  5001.61    5005.7    16024     16024    21134     21134       0/5005.7        0
3-sidecar    hot        20000       0     0.29     0.65       1.6        0         0     1000       500              -        0
3-sidecar    stale      10000     130     0.65       -      106.0     8876      8876    11682     11682        0/106.0        0
# a comment after the rows
```
"""
# conntrack: 4 bars (one is 0); p99: 3 bars (one '-')

SAMPLE_CLUSTER_TSV = "\n".join("\t".join(r) for r in [
    "1 direct hot 20000 0 0.31 0.73 4.2 29792 14896 40000 20000 0/0 0".split(),
    "4 sidecar-ep hot 20000 0 0.3 0.66 4.4 996 498 1000 500 0/0 0".split(),
    "2 nodelocal hot 20000 0 0.35 0.84 4.7 991 496 1000 500 0/0 0".split(),
    "4 sidecar-ep evict 10000 0 0.65 1.38 13.1 NA NA 11062 11062 0/13.1 0".split(),
]) + "\n"
# conntrack: 3 bars (evict NA); p99: 4 bars


def bar_rects(svg):
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    rects = root.iter(ns + "rect")
    allr = list(rects)
    bars = [r for r in allr if (r.get("class") or "").split()[:1] == ["bar"]]
    other = [r for r in allr if r not in bars]
    titles = [r.find(ns + "title").text for r in bars]
    return bars, other, titles, root


def run_main(argv):
    """main() in-process -> (exit status, stderr text)."""
    err = io.StringIO()
    with redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
    return rc, err.getvalue()


def cmd_selftest(args):
    fails, n = [], 0

    def check(cond, what):
        nonlocal n
        n += 1
        if not cond:
            fails.append(what)

    with tempfile.TemporaryDirectory(prefix="charts-selftest-") as tmp:
        def put(name, text, mode="w"):
            p = os.path.join(tmp, name)
            with open(p, mode) as f:
                f.write(text)
            return p

        md = put("peers.md", SAMPLE_PEERS_MD)
        out = os.path.join(tmp, "out", "peers.svg")
        rc, err = run_main(["peers", "--from-text", md, "--out", out])
        check(rc == 0, f"peers --from-text: exit {rc}: {err.strip()}")
        check("columns where the header" in err, "peers: short row warned about")
        if rc == 0:
            svg = open(out, encoding="utf-8").read()
            bars, other, titles, root = bar_rects(svg)
            check(len(bars) == 7, f"peers: {len(bars)} bar rects, expected 7")
            check(len(other) == 1 + 3, f"peers: {len(other)} other rects (background + 3 legend), expected 4")
            check(any(t.startswith("dnscore-t1, hot: 120.0k (median of 3: 100.0k\u2013300.0k)") for t in titles),
                  "peers: median of 3 reps of dnscore-t1 hot (100k, 300k, 120k) is 120.0k")
            check(sum(1 for r in bars if "ours" in r.get("class")) == 2, "peers: 2 dnscore bars highlighted")
            check(len([e for e in root.iter() if e.get("class") == "range"]) == 3, "peers: one whisker (3 lines)")
            texts = "".join(root.itertext())
            check("Sample run: 3 reps, odd values" in texts, "peers: subtitle from the markdown heading")
            check("n/a (not-ready)" in texts and "n/a (no value)" in texts, "peers: missing values shown as n/a")
            check("second-table" not in texts, "peers: only the first table")
            check("mystery-t1" in texts, "peers: unknown peer kept")
            check("\u2020 wrapped" in texts and "\u00a7 the floor" in texts, "peers: footnotes")
        rc, err = run_main(["peers", "--from-text", md, "--table", "2", "--out", out])
        check(rc == 0 and len(bar_rects(open(out, encoding="utf-8").read())[0]) == 1, "peers --table 2")

        d = os.path.join(tmp, "run-20260101-000000")
        os.makedirs(d)
        with open(os.path.join(d, "results.tsv"), "w") as f:
            f.write(SAMPLE_PEERS_TSV)
        with open(os.path.join(d, "meta.txt"), "w") as f:
            f.write("date: 2026-01-01T00:00:00+00:00\nhost: Linux 6.1 x86_64, 2 CPUs (test)\n")
        os.symlink("run-20260101-000000", os.path.join(tmp, "latest"))
        for inp in (d, tmp):
            rc, err = run_main(["peers", inp, "--out", out])
            check(rc == 0, f"peers {inp}: exit {rc}: {err.strip()}")
            if rc == 0:
                bars, _, titles, root = bar_rects(open(out, encoding="utf-8").read())
                check(len(bars) == 3, f"peers TSV: {len(bars)} bar rects, expected 3")
                check("2026-01-01T00:00:00+00:00" in "".join(root.itertext()), "peers TSV: subtitle from meta.txt")
        rc, err = run_main(["peers", d, "--workloads", "mixed", "--metric", "qps", "--out", out])
        check(rc == 0 and len(bar_rects(open(out, encoding="utf-8").read())[0]) == 1, "peers --workloads mixed")

        cmd = put("cluster.md", SAMPLE_CLUSTER_MD)
        od = os.path.join(tmp, "charts")
        rc, err = run_main(["cluster", "--from-text", cmd, "--out-dir", od])
        check(rc == 0, f"cluster --from-text: exit {rc}: {err.strip()}")
        if rc == 0:
            bars, _, titles, root = bar_rects(open(os.path.join(od, "cluster-conntrack.svg"), encoding="utf-8").read())
            check(len(bars) == 4, f"cluster conntrack: {len(bars)} bar rects, expected 4")
            check(any(t.startswith("3-sidecar, hot: 0") for t in titles), "cluster: a zero keeps its bar")
            texts = "".join(root.itertext())
            check("dnscore cluster simulation 2026-11-24T02:13Z" in texts, "cluster: subtitle from the comment")
            check("(130 failed)" in texts, "cluster: failures labelled")
            bars, _, titles, root = bar_rects(open(os.path.join(od, "cluster-p99.svg"), encoding="utf-8").read())
            check(len(bars) == 3, f"cluster p99: {len(bars)} bar rects, expected 3")
            check(any(t.startswith("1-direct, stale: 5,002") for t in titles), "cluster p99: 5001.61 -> 5,002")
        tsv = put("results.tsv", SAMPLE_CLUSTER_TSV)
        for metric, want in (("conntrack", 3), ("p99", 4)):
            o = os.path.join(tmp, f"c-{metric}.svg")
            rc, err = run_main(["cluster", tsv, "--metric", metric, "--out", o])
            check(rc == 0, f"cluster TSV {metric}: exit {rc}: {err.strip()}")
            if rc == 0:
                bars, _, titles, _ = bar_rects(open(o, encoding="utf-8").read())
                check(len(bars) == want, f"cluster TSV {metric}: {len(bars)} bars, expected {want}")
                check([t.split(",")[0] for t in titles[:3]] == ["1-direct", "2-nodelocal", "4-sidecar-ep"],
                      f"cluster TSV {metric}: setups in numeric order")

        # bad input: exit 2, one message, no traceback
        binf = put("bin.dat", b"\x00\x01\x02peer", "wb")
        bad_utf = put("latin1.txt", "peer load rep\n\xe9\n".encode("latin-1"), "wb")
        empty = os.path.join(tmp, "emptydir")
        os.makedirs(empty)
        notable = put("notable.md", "# nothing here\n\n```\nno table\n```\n")
        for argv in (["peers", os.path.join(tmp, "missing")],
                     ["peers", "--from-text", os.path.join(tmp, "missing")],
                     ["peers", empty], ["peers", binf], ["peers", bad_utf],
                     ["peers", "--from-text", notable], ["peers", "--from-text", md, "--table", "9"],
                     ["peers", tsv],   # a cluster results.tsv given to peers
                     ["cluster", d],   # a peers run dir given to cluster
                     ["cluster", "--from-text", md, "--out-dir", od],
                     ["cluster", "--from-text", cmd, "--out", os.path.join(tmp, "x.svg")],
                     ["peers", "--from-text", md, "--include", "(", "--out", out],
                     ["peers", md, "--from-text", md],
                     ["peers"]):
            if "--out" not in argv and "--out-dir" not in argv:
                argv = argv + (["--out", out] if argv[0] == "peers" else ["--out-dir", od])
            rc, err = run_main(argv)
            check(rc == 2 and "Traceback" not in err and err.strip(),
                  f"bad input {argv[1:]}: exit {rc}, stderr {err.strip()!r}")
        rc, err = run_main(["peers", tsv, "--out", out])
        check("cluster.sh" in err, "peers given a cluster TSV: says so")

    if fails:
        for f in fails:
            print(f"FAIL  {f}")
        print(f"selftest: {n - len(fails)} passed, {len(fails)} failed")
        return 1
    print(f"selftest: {n} passed, 0 failed")
    return 0


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        raise InputError(message)


def build_parser():
    ap = Parser(prog="charts.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", metavar="{peers,cluster,selftest}", parser_class=Parser)
    sub.required = True

    def common(p, what):
        p.add_argument("input", nargs="?", help=f"{what} run directory, its results.tsv or table.txt, or '-'")
        p.add_argument("--from-text", metavar="FILE",
                       help="read the first printed table in a text/markdown file (README)")
        p.add_argument("--table", type=int, default=1, metavar="N",
                       help="with a printed table: use the Nth matching table (default 1)")
        p.add_argument("--title", help="chart title (default: by metric)")
        p.add_argument("--subtitle", help="subtitle (default: the run's date / the heading or comment above the table)")
        p.add_argument("--scale", choices=["linear", "log"], help="value axis scale")
        p.add_argument("--width", type=int, default=800, help="SVG width in px (default 800)")

    p = sub.add_parser("peers", help="QPS per core per peer, a panel per workload (peers.sh)",
                       description="Chart of a peers.sh run: a panel per workload, a bar per peer.")
    common(p, "peers.sh")
    p.add_argument("--out", required=True, metavar="FILE.svg", help="output file ('-': stdout)")
    p.add_argument("--metric", choices=sorted(PEER_METRICS), default="qps-per-core",
                   help="value per bar (default qps-per-core)")
    p.add_argument("--workloads", metavar="LIST", help="panels, in this order (default: hot cold mixed, then any other)")
    p.add_argument("--include", metavar="REGEX", help="only peers matching")
    p.add_argument("--exclude", metavar="REGEX", help="drop peers matching (e.g. 'floor-plain|-t2')")
    p.add_argument("--sort", choices=["input", "value"], default="input",
                   help="bar order in each panel: as in the input (same in every panel) or by value")
    p.add_argument("--highlight", default=r"dnscore|sidecar", metavar="REGEX",
                   help="peers drawn in the highlight colour (default 'dnscore|sidecar')")
    p.add_argument("--baseline", default=r"^(knotd-direct|floor)", metavar="REGEX",
                   help="peers drawn grey as baselines (default '^(knotd-direct|floor)')")
    p.set_defaults(func=cmd_peers)

    c = sub.add_parser("cluster", help="conntrack per 10k lookups and p99 latency per setup and phase (cluster.sh)",
                       description="Charts of a cluster.sh run: a group per phase, a bar per setup. "
                                   "Default: conntrack and p99, written as cluster-conntrack.svg and "
                                   "cluster-p99.svg into --out-dir.")
    common(c, "cluster.sh")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--out", metavar="FILE.svg", help="output file, with exactly one --metric ('-': stdout)")
    g.add_argument("--out-dir", metavar="DIR", help="write each chart as DIR/cluster-<metric>.svg")
    c.add_argument("--metric", action="append", choices=list(CLUSTER_METRICS),
                   help="chart(s) to draw; repeatable (default: conntrack and p99)")
    c.add_argument("--highlight", default=r"sidecar|dnscore", metavar="REGEX",
                   help="setups drawn in the highlight colour (default 'sidecar|dnscore')")
    c.set_defaults(func=cmd_cluster)

    s = sub.add_parser("selftest", help="build charts from embedded samples and check them",
                       description="Builds charts from embedded sample tables (in a temporary "
                                   "directory) and checks them; last line 'selftest: N passed, M failed'.")
    s.set_defaults(func=cmd_selftest)
    return ap


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        if args.cmd in ("peers", "cluster"):
            if args.input and args.from_text:
                raise InputError("give either INPUT or --from-text FILE, not both")
            if not args.input and not args.from_text:
                raise InputError(f"{args.cmd}: give a run directory / results file, or --from-text FILE")
            if not 300 <= args.width <= 4000:
                raise InputError("--width must be 300..4000")
        rc = args.func(args)
        return rc if isinstance(rc, int) else 0
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OutputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except Exception as e:  # a bug, not bad input: still one line unless asked for more
        if os.environ.get("CHARTS_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {e} (CHARTS_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
