#!/usr/bin/env python3
"""Many pods' applications in one process (stdlib only), for density.sh.

One glibc-like stub per pod, as driver.py, but lean enough for 100 pods on 2 cores: a single
epoll loop (no asyncio) that creates each query's socket inside that pod's network namespace
(setns(2) before socket(2); a socket stays in the namespace it was created in). Per pod it
asks each of its names once every --period seconds (each (pod, name) with its own random
phase), so what reaches CoreDNS is decided by cache expiry and refresh, not by the load.

Names per pod: the shared ones (--names, relative `svc-N.ns-M`, the Services every pod
talks to) and --own names of its own (`p<POD>-e<K>.dyn`, answered by the zone's wildcard:
the pod's private hosts). Each lookup is resolved as glibc does (driver.py): the search list
in order, then the name as is (ndots:5), stopping at the first positive answer; a fresh UDP
socket (new source port) per query name, retries after `timeout` on the same socket, at
once on a new socket after ICMP port unreachable; NXDOMAIN/NODATA/SERVFAIL -> next search
domain; a timeout ends the lookup as failed. A queries only.

Usage:
  density_driver.py --netns NS1,NS2,... --resolv-conf FILE --names FILE [--own 3]
                    [--period 1] [--spread 0] [--warmup 2] [--duration 30] [--mark FILE]
Lookups started in [warmup, warmup + duration) are counted; --mark is written when that
window opens. Prints one JSON object (counts, latency percentiles in ms, own CPU seconds).
"""
import argparse
import ctypes
import errno
import heapq
import json
import os
import random
import select
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver import candidates, encode_query, parse_resolv_conf, pct  # noqa: E402

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class Netns:
    """setns(2) into the pods' namespaces, only when the current one differs."""

    def __init__(self, names):
        self.fds = [os.open(f"/run/netns/{n}", os.O_RDONLY) for n in names]
        self.cur = None

    def enter(self, i):
        if self.cur != i:
            if _libc.setns(self.fds[i], CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"setns: {os.strerror(e)}")
            self.cur = i


class Lookup:
    __slots__ = ("pod", "cands", "ci", "attempt", "sock", "qid", "question", "msg", "t0", "gen", "counted")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--netns", required=True, help="comma-separated network namespace names, one per pod")
    ap.add_argument("--resolv-conf", required=True, help="the pods' resolv.conf (the same in every pod)")
    ap.add_argument("--names", required=True, help="shared relative names, one per line")
    ap.add_argument("--own", type=int, default=3, help="names of each pod's own (p<POD>-e<K>.dyn)")
    ap.add_argument("--period", type=float, default=1.0, help="seconds between two lookups of one name by one pod")
    ap.add_argument("--spread", type=float, default=0.0, help="pods start at random moments over this many seconds")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before the measured window (> spread + period)")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--mark", default="", help="file written when the measured window opens")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    pods = [n for n in args.netns.split(",") if n]
    ns_addr, search, opts = parse_resolv_conf(args.resolv_conf)
    server = (ns_addr, 53)
    shared = [l.strip() for l in open(args.names) if l.strip() and not l.startswith("#")]
    names = [shared + [f"p{p}-e{k}.dyn" for k in range(args.own)] for p in range(len(pods))]
    netns = Netns(pods)
    ep = select.epoll()
    rng = random.Random(args.seed)
    timeout, attempts = opts["timeout"], opts["attempts"]

    t0 = time.monotonic()
    w_start, w_end = t0 + args.warmup, t0 + args.warmup + args.duration
    # pod p starts at a random moment in [0, spread), then asks each name at its own phase:
    # the pods' caches are filled (and so expire) out of step, as on a node whose pods did
    # not all start in the same second; the window opens once every pod has started
    starts = [rng.random() * args.spread for _ in pods]
    sched = [(t0 + starts[p] + rng.random() * args.period, p, j) for p in range(len(pods)) for j in range(len(names[p]))]
    heapq.heapify(sched)
    timers = []  # (deadline, seq, lookup, gen)
    by_fd = {}
    seq = 0
    lat, fails = [], {}
    queries = servfails = 0
    marked = False

    def open_sock(lk):
        netns.enter(lk.pod)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect(server)
        lk.sock = s
        by_fd[s.fileno()] = lk
        ep.register(s.fileno(), select.EPOLLIN)

    def close_sock(lk):
        if lk.sock is not None:
            fd = lk.sock.fileno()
            ep.unregister(fd)
            del by_fd[fd]
            lk.sock.close()
            lk.sock = None

    def finish(lk, outcome):
        close_sock(lk)
        lk.gen = -1
        if lk.counted:
            if outcome == "ok":
                lat.append((time.monotonic() - lk.t0) * 1000)
            else:
                fails[outcome] = fails.get(outcome, 0) + 1

    def send(lk):
        nonlocal seq
        if lk.sock is None:
            open_sock(lk)
        try:
            lk.sock.send(lk.msg)
        except OSError as e:
            if e.errno == errno.ECONNREFUSED:
                close_sock(lk)
                return retry(lk, "refused-port")
            return finish(lk, "error")
        lk.gen += 1
        seq += 1
        heapq.heappush(timers, (time.monotonic() + timeout, seq, lk, lk.gen))

    def retry(lk, why):
        lk.attempt += 1
        if lk.attempt >= attempts:
            return finish(lk, why)
        send(lk)

    def next_candidate(lk):
        nonlocal queries
        lk.ci += 1
        if lk.ci >= len(lk.cands):
            return finish(lk, "notfound")
        close_sock(lk)
        lk.attempt = 0
        lk.qid = random.getrandbits(16)
        lk.msg = encode_query(lk.qid, lk.cands[lk.ci])
        lk.question = lk.msg[12:].lower()
        if lk.counted:
            queries += 1
        send(lk)

    def start(p, j, now):
        lk = Lookup()
        lk.pod, lk.cands, lk.ci, lk.sock, lk.gen, lk.t0 = p, candidates(names[p][j], search, opts["ndots"]), -1, None, 0, now
        lk.counted = w_start <= now < w_end
        next_candidate(lk)

    def on_readable(lk):
        nonlocal servfails
        try:
            data = lk.sock.recv(4096)
        except ConnectionRefusedError:
            close_sock(lk)
            return retry(lk, "refused-port")
        except BlockingIOError:
            return
        except OSError:
            return finish(lk, "error")
        ql = len(lk.question)
        if len(data) < 12 + ql:
            return
        rid, flags, _qd, an = struct.unpack(">HHHH", data[:8])
        if rid != lk.qid or not flags & 0x8000 or data[12:12 + ql].lower() != lk.question:
            return
        rcode = flags & 0xF
        if rcode == 0 and an > 0:
            return finish(lk, "ok")
        if rcode == 2 and lk.counted:
            servfails += 1
        next_candidate(lk)

    max_lookup = timeout * attempts * (len(search) + 1) + 1.0
    while True:
        now = time.monotonic()
        if not marked and now >= w_start:
            marked = True
            if args.mark:
                with open(args.mark, "w") as f:
                    f.write(f"{time.time():.3f}\n")
        while sched and sched[0][0] <= now:
            t, p, j = heapq.heappop(sched)
            if t < w_end:
                start(p, j, t)
                heapq.heappush(sched, (t + args.period, p, j))
        while timers and timers[0][0] <= now:
            _, _, lk, gen = heapq.heappop(timers)
            if lk.gen == gen:
                retry(lk, "timeout")
        if not sched and not by_fd:
            break
        if now > w_end + max_lookup:
            for lk in list(by_fd.values()):
                finish(lk, "unfinished")
            break
        nxt = min([x[0] for x in (sched[:1] + timers[:1])] or [now + 0.05])
        for fd, _ev in ep.poll(max(0.0, min(0.05, nxt - now))):
            lk = by_fd.get(fd)
            if lk is not None:
                on_readable(lk)

    lat.sort()
    cpu = os.times()
    print(json.dumps({
        "pods": len(pods), "names_per_pod": len(names[0]) if names else 0, "period_s": args.period,
        "window_s": args.duration, "lookups": len(lat) + sum(fails.values()), "failed": sum(fails.values()),
        "fail_kinds": fails, "queries": queries, "servfail_answers": servfails,
        "p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2), "max_ms": round(lat[-1], 1) if lat else 0.0,
        "driver_cpu_s": round(cpu.user + cpu.system, 2),
        "resolv": {"nameserver": ns_addr, "search": search, **opts},
    }))


if __name__ == "__main__":
    main()
