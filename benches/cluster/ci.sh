#!/usr/bin/env bash
# CI short form of the cluster simulation (benches/cluster/cluster.sh --short): a few seconds
# per setup and phase, then the claims that must hold. Run from the repo root:
#     bash benches/cluster/ci.sh
# Needs root (network namespaces, iptables); without root it skips (exit 0). Installs iproute2,
# iptables, conntrack, knot, unbound, dig with apt-get when missing; builds dnscore-sidecar
# (CARGO_TARGET_DIR, default /tmp/target-cluster) unless SIDECAR=/path/to/binary is set.
# Last line: "cluster: N passed, M failed"; exit 1 when M > 0.
set -uo pipefail
export LC_ALL=C
PATH="$PATH:/usr/sbin:/sbin:/usr/local/sbin"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ "$(id -u)" != 0 ]; then
  echo "cluster: skipped (needs root for network namespaces and iptables)"
  exit 0
fi

need=()
for c in ip:iproute2 iptables:iptables conntrack:conntrack knotd:knot unbound:unbound dig:bind9-dnsutils python3:python3 setsid:util-linux; do
  command -v "${c%%:*}" >/dev/null 2>&1 || need+=("${c#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "cluster: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # keep the packages' services (knot, unbound) from starting in the root namespace: we run
  # our own instances inside the namespaces only (same trick as shared/bench/peers.sh)
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
    trap '[ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  timeout 300 apt-get install -y -q --no-install-recommends "${need[@]}" >/tmp/cluster-apt.log 2>&1 \
    || { timeout 300 apt-get update -q >>/tmp/cluster-apt.log 2>&1
         timeout 300 apt-get install -y -q --no-install-recommends "${need[@]}" >>/tmp/cluster-apt.log 2>&1; } \
    || { echo "cluster: apt-get install ${need[*]} failed (see /tmp/cluster-apt.log)"; echo "cluster: 0 passed, 1 failed"; exit 1; }
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d && made_policy=0
fi

OUT=${OUT_DIR:-/tmp/dnsc-cluster-ci}
mkdir -p "$OUT"
log=$OUT/run-$$.log
start=$SECONDS
# The release build first, outside the run's time limit: a cold build takes minutes.
if [ -z "${SIDECAR:-}" ]; then
  target=${CARGO_TARGET_DIR:-/tmp/target-cluster}
  ( cd "$HERE/../.." && CARGO_TARGET_DIR=$target cargo build --release -q -p dnscore-sidecar ) \
    >"$OUT/build.log" 2>&1 \
    || { echo "cluster: cargo build failed (see $OUT/build.log)"; echo "cluster: 0 passed, 1 failed"; exit 1; }
  export SIDECAR=$target/release/dnscore-sidecar
fi
OUT_DIR=$OUT timeout 600 bash "$HERE/cluster.sh" --short >"$log" 2>&1
rc=$?
cat "$log" | sed -n '/^# dnscore cluster simulation/,$p'
res=$(ls -td "$OUT"/cluster-*/ 2>/dev/null | head -1)results.tsv
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "PASS  $*"; }
bad() { fail=$((fail + 1)); echo "FAIL  $*"; }
if [ $rc != 0 ] || [ ! -s "$res" ]; then
  tail -20 "$log"
  bad "cluster.sh --short exited $rc (log $log)"
  echo "cluster: $pass passed, $fail failed"
  exit 1
fi

get() {   # SETUP PHASE COLUMN(4=lookups 5=failed 9=ct_new 10=ct/10k 11=coredns 14=servfail)
  awk -F'\t' -v s="$1" -v p="$2" -v c="$3" '$1 == s && $3 == p { print $c; exit }' "$res"
}
num() { [[ ${1:-} =~ ^[0-9]+([.][0-9]+)?$ ]]; }

# sanity: the simulated cluster works, every application lookup creates node conntrack entries
l=$(get 1 hot 4); f=$(get 1 hot 5); c1=$(get 1 hot 10)
if num "$l" && [ "$l" -gt 0 ] && [ "$f" = 0 ] && num "$c1" && [ "$c1" -ge 10000 ]; then
  ok "setup 1 (Service IP) works: $l lookups, 0 failed, $c1 conntrack entries per 10k lookups"
else
  bad "setup 1 (Service IP) sanity: lookups=$l failed=$f ct/10k=$c1 (expected >0, 0, >=10000)"
fi

# claim 1: the sidecar creates far fewer node conntrack entries than setup 1 (warm cache,
# repeating names): at most a tenth
for s in 3 4; do
  c=$(get $s hot 10); f=$(get $s hot 5)
  if num "$c" && num "$c1" && awk -v a="$c" -v b="$c1" 'BEGIN { exit !(a * 10 <= b) }' && [ "$f" = 0 ]; then
    ok "setup $s (sidecar) hot: $c conntrack entries per 10k lookups vs $c1 for setup 1, 0 failed"
  else
    bad "setup $s (sidecar) hot: $c conntrack entries per 10k lookups vs $c1 for setup 1 (want <= 1/10), failed=$f"
  fi
  # misses too: with unique names (every lookup a miss) the sidecar's few sticky upstream
  # sockets cost at most 1% of setup 1's conntrack entries
  c=$(get $s unique 10); cu=$(get 1 unique 10); f=$(get $s unique 5)
  if num "$c" && num "$cu" && awk -v a="$c" -v b="$cu" 'BEGIN { exit !(a * 100 <= b) }' && [ "$f" = 0 ]; then
    ok "setup $s (sidecar) unique names: $c conntrack entries per 10k lookups vs $cu for setup 1 (<= 1%), 0 failed"
  else
    bad "setup $s (sidecar) unique names: $c conntrack entries per 10k lookups vs $cu for setup 1 (want <= 1%), failed=$f"
  fi
done

# claim 2: no application lookup fails during the eviction with dnscore
for s in 3 4; do
  l=$(get $s evict 4); f=$(get $s evict 5)
  if num "$l" && [ "$l" -gt 0 ] && [ "$f" = 0 ]; then ok "setup $s eviction: $l lookups, 0 failed"
  else bad "setup $s eviction: $f of $l lookups failed"; fi
done
# stale conntrack (server dead, DNAT rule removed later): dnscore with the endpoints listed
# (setup 4) and with the Service IP alone (setup 3: a socket whose query timed out is
# retired, and retries go from the socket answered most recently, whose conntrack entry
# leads to a live endpoint)
for s in 4 3; do
  l=$(get $s stale 4); f=$(get $s stale 5); sf=$(get $s stale 14)
  if num "$l" && [ "$l" -gt 0 ] && [ "$f" = 0 ]; then ok "setup $s stale endpoint: $l lookups, 0 failed"
  else bad "setup $s stale endpoint: $f of $l lookups failed ($sf SERVFAIL answers)"; fi
done

echo "cluster: run took $((SECONDS - start)) s; results in ${res%/results.tsv}"
echo "cluster: $pass passed, $fail failed"
[ $fail = 0 ]
