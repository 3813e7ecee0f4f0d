#!/usr/bin/env python3
"""Application load generator for the simulated cluster (stdlib only).

It behaves like glibc's stub resolver as an application sees it through getaddrinfo():
reads a resolv.conf (nameserver, search, options ndots/timeout/attempts), expands a relative
name through the search list in order (name.<search1>, name.<search2>, ..., then the name as
is when it has fewer than ndots dots) and stops at the first positive answer.

Per query name (one search candidate) it opens a fresh UDP socket with a kernel-chosen source
port, connects it to the (first) nameserver and sends the query; when no answer comes within
`timeout` it re-sends on the SAME socket (same 5-tuple, as glibc does within one res_send),
up to `attempts` sends; after ECONNREFUSED (ICMP port unreachable) the next try goes at once
on a new socket, as glibc does. As in glibc's res_search:
  * NXDOMAIN / NOERROR without answers / SERVFAIL / REFUSED -> try the next search candidate;
  * a timeout (no answer to any attempt) -> the lookup fails at once.
Only A queries are sent (glibc would send A and AAAA in parallel on the same socket); every
workload name exists, so a lookup "fails" when it does not end in a positive answer.

Usage:
  driver.py run --resolv-conf FILE --names FILE [--rate N --duration S | --once]
                [--unique PREFIX] [--event-file FILE] [--window S] [--concurrency N]
Prints one JSON object with the counts and latency percentiles (ms).
"""
import argparse
import asyncio
import errno
import json
import os
import random
import socket
import struct
import sys
import time


def parse_resolv_conf(path):
    ns, search, opts = [], [], {"ndots": 1, "timeout": 5.0, "attempts": 2}
    with open(path) as f:
        for line in f:
            parts = line.split("#")[0].split(";")[0].split()
            if not parts:
                continue
            if parts[0] == "nameserver" and len(parts) > 1:
                ns.append(parts[1])
            elif parts[0] == "search":
                search = parts[1:]
            elif parts[0] == "options":
                for o in parts[1:]:
                    k, _, v = o.partition(":")
                    if k == "ndots":
                        opts["ndots"] = int(v)
                    elif k == "timeout":
                        opts["timeout"] = float(v)
                    elif k == "attempts":
                        opts["attempts"] = int(v)
    if not ns:
        raise SystemExit(f"{path}: no nameserver")
    return ns[0], search, opts


def candidates(name, search, ndots):
    if name.endswith("."):
        return [name]
    rel = [f"{name}.{d}." for d in search]
    if name.count(".") >= ndots:
        return [name + "."] + rel
    return rel + [name + "."]


def encode_query(qid, qname):
    out = bytearray(struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0))
    for label in qname.rstrip(".").split("."):
        b = label.encode()
        out.append(len(b))
        out += b
    out += b"\x00" + struct.pack(">HH", 1, 1)  # A IN
    return bytes(out)


class Stats:
    def __init__(self):
        self.rows = []  # (start_monotonic, latency_s, outcome)
        self.queries = 0
        self.sends = 0
        self.servfails = 0


async def query_one(loop, server, qname, timeout, attempts, stats):
    """-> 'ok' | 'neg' (NXDOMAIN/NODATA) | 'servfail' | 'timeout' | 'refused-port' | 'error'"""
    qid = random.getrandbits(16)
    msg = encode_query(qid, qname)
    question = msg[12:]
    stats.queries += 1
    s = None
    end = "timeout"
    try:
        for _ in range(attempts):
            if s is None:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setblocking(False)
                try:
                    s.connect(server)
                except OSError:
                    return "error"
            stats.sends += 1
            try:
                s.send(msg)
            except OSError as e:
                if e.errno != errno.ECONNREFUSED:
                    return "error"
                s.close()  # glibc: close, next try on a new socket
                s = None
                end = "refused-port"
                continue
            deadline = loop.time() + timeout
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    data = await asyncio.wait_for(loop.sock_recv(s, 4096), left)
                except asyncio.TimeoutError:
                    end = "timeout"
                    break
                except ConnectionRefusedError:
                    # ICMP port unreachable: glibc closes the socket and moves on to the next
                    # try (a new socket, so a new source port), without waiting out the timeout
                    s.close()
                    s = None
                    end = "refused-port"
                    break
                except OSError:
                    return "error"
                if len(data) < 12 + len(question):
                    continue
                rid, flags, qd, an = struct.unpack(">HHHH", data[:8])
                if rid != qid or not flags & 0x8000 or data[12:12 + len(question)].lower() != question.lower():
                    continue
                rcode = flags & 0xF
                if rcode == 0 and an > 0:
                    return "ok"
                if rcode in (0, 3):
                    return "neg"
                if rcode == 2:
                    stats.servfails += 1
                return "servfail"
        return end
    finally:
        if s is not None:
            s.close()


async def lookup(loop, server, name, search, opts, stats):
    t0 = time.monotonic()
    outcome = "notfound"
    for qn in candidates(name, search, opts["ndots"]):
        r = await query_one(loop, server, qn, opts["timeout"], opts["attempts"], stats)
        if r == "ok":
            outcome = "ok"
            break
        if r in ("timeout", "refused-port", "error"):
            outcome = r
            break
        # neg / servfail: next search candidate (glibc res_search)
    stats.rows.append((t0, time.monotonic() - t0, outcome))


def pct(sorted_vals, p):
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


def summarize(rows, t_from=None, t_to=None):
    sel = [r for r in rows if (t_from is None or r[0] >= t_from) and (t_to is None or r[0] < t_to)]
    lat = sorted(r[1] * 1000 for r in sel)
    fails = {}
    for r in sel:
        if r[2] != "ok":
            fails[r[2]] = fails.get(r[2], 0) + 1
    return {
        "lookups": len(sel),
        "failed": sum(fails.values()),
        "fail_kinds": fails,
        "p50_ms": round(pct(lat, 50), 2),
        "p99_ms": round(pct(lat, 99), 2),
        "max_ms": round(lat[-1], 1) if lat else 0.0,
        "over_1s": sum(1 for v in lat if v >= 1000),
    }


async def run(args):
    ns, search, opts = parse_resolv_conf(args.resolv_conf)
    server = (ns, 53)
    names = [l.strip() for l in open(args.names) if l.strip() and not l.startswith("#")]
    if not names:
        raise SystemExit("no names")
    loop = asyncio.get_running_loop()
    stats = Stats()
    tasks = set()
    max_lookup = opts["timeout"] * opts["attempts"] * (len(search) + 1) + 1.0
    t_start_wall = time.time()
    t_start = time.monotonic()
    if args.once:
        sem = asyncio.Semaphore(args.concurrency)

        async def one(n):
            async with sem:
                await lookup(loop, server, n, search, opts, stats)

        await asyncio.wait_for(asyncio.gather(*(one(n) for n in names)), len(names) * max_lookup / args.concurrency + 30)
    else:
        rng = random.Random(args.seed)
        order = list(names)
        rng.shuffle(order)
        total = int(args.rate * args.duration)
        i = 0
        while i < total:
            now = time.monotonic()
            due = min(total, int((now - t_start) * args.rate) + 1)
            while i < due:
                if len(tasks) >= args.max_inflight:
                    stats.rows.append((time.monotonic(), 0.0, "driver-overload"))
                else:
                    if args.unique and (args.unique_frac >= 1.0 or rng.random() < args.unique_frac):
                        n = f"u{args.unique}-{i}.dyn"
                    else:
                        n = order[i % len(order)]
                    t = loop.create_task(lookup(loop, server, n, search, opts, stats))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                i += 1
            await asyncio.sleep(0.002)
        if tasks:
            await asyncio.wait(list(tasks), timeout=max_lookup + 1)
    elapsed = time.monotonic() - t_start
    res = {"elapsed_s": round(elapsed, 2), "queries": stats.queries, "sends": stats.sends, "servfail_answers": stats.servfails,
           "resolv": {"nameserver": ns, "search": search, **opts}}
    res.update(summarize(stats.rows))
    res["rate_achieved"] = round(len(stats.rows) / max(elapsed, 1e-6), 1)
    if args.event_file and os.path.exists(args.event_file):
        try:
            ev_wall = float(open(args.event_file).read().split()[0])
            ev = t_start + (ev_wall - t_start_wall)
            res["event_at_s"] = round(ev - t_start, 2)
            res["window"] = summarize(stats.rows, ev - 0.5, ev + args.window)
        except (ValueError, IndexError):
            pass
    if args.rows:
        with open(args.rows, "w") as f:
            for r in stats.rows:
                f.write(f"{r[0] - t_start:.4f}\t{r[1] * 1000:.2f}\t{r[2]}\n")
    print(json.dumps(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--resolv-conf", required=True)
    r.add_argument("--names", required=True, help="file, one relative name per line (e.g. svc-3.ns-7)")
    r.add_argument("--rate", type=float, default=300.0, help="lookups per second (open loop)")
    r.add_argument("--duration", type=float, default=5.0)
    r.add_argument("--once", action="store_true", help="look every name up once (warm-up), closed loop")
    r.add_argument("--concurrency", type=int, default=50, help="with --once")
    r.add_argument("--unique", default="", help="unique names u<PREFIX>-<i>.dyn instead of --names")
    r.add_argument("--unique-frac", type=float, default=1.0, help="with --unique: share of unique names, the rest from --names")
    r.add_argument("--event-file", default="", help="file with the wall-clock time of the fault")
    r.add_argument("--window", type=float, default=10.0, help="seconds after the event to report apart")
    r.add_argument("--max-inflight", type=int, default=20000)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--rows", default="", help="write one line per lookup (start s, latency ms, outcome)")
    args = ap.parse_args()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
