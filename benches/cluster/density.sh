#!/usr/bin/env bash
# =============================================================================
# density.sh - many pods on one node: what CoreDNS sees, per DNS setup. The node of
# cluster.sh (kube-proxy DNAT + conntrack, three "CoreDNS" knotd pods) with N application
# pod namespaces on a bridge, each with a glibc-like stub (density_driver.py, one process
# for all pods) and, per setup, its own cache:
#   1 direct          every pod asks the kube-dns Service IP
#   2 nodelocal       one NodeLocal-like cache on the node (unbound on 169.254.20.10, NOTRACK)
#   3 sidecar         dnscore-sidecar in every pod -> the Service IP ($SIDECAR_ARGS added)
#   4 sidecar-nl      dnscore-sidecar in every pod -> the node cache of setup 2
# Workload: every pod asks each of its names once per PERIOD s (20 shared Services
# svc-N.ns-M + OWN names p<POD>-e<K>.dyn of its own), through the search list (ndots:5);
# the pods start at random moments over one TTL, the window (default max(30 s, TTL))
# opens after TTL + PERIOD + WARMUP s.
# Per zone TTL, setup and density: CoreDNS queries/s (mean and busiest second), node
# conntrack entries (end of the window, max, unexpired; kernel default UDP timeouts 30 s /
# 120 s), RSS, PSS and CPU of the caches (all sidecars summed, unbound), CoreDNS CPU,
# lookup p50/p99, failed lookups.
#
# Usage: density.sh [--density "10 50 100"] [--zone-ttl "5 30"] [--setups "1 2 3 4"]
#                   [--window S] [--label TEXT]
# Environment: SIDECAR (binary; default: build it), SIDECAR_ARGS (extra sidecar flags, e.g.
# "--min-ttl 30"), PERIOD (1), OWN (3), WARMUP (2), WINDOW (default max(30, TTL)),
# OUT_DIR (/tmp/dnsc-cluster), MAX_RUNTIME (1800 s).
# Needs root. Namespaces dnsc-<pid>-*, nothing configured in the root namespace; a trap and
# a watchdog kill every process started and delete every namespace.
# =============================================================================
set -uo pipefail
export LC_ALL=C
PATH="$PATH:/usr/sbin:/sbin:/usr/local/sbin"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

DENSITIES=${DENSITIES:-"10 50 100"}
ZONE_TTLS=${ZONE_TTLS:-"5 30"}
SETUPS=${SETUPS:-"1 2 3 4"}
PERIOD=${PERIOD:-1}
OWN=${OWN:-3}
WARMUP=${WARMUP:-2}
WINDOW=${WINDOW:-}
TIMEOUT=${TIMEOUT:-5}
ATTEMPTS=${ATTEMPTS:-2}
SIDECAR_ARGS=${SIDECAR_ARGS:-}
LABEL=${LABEL:-}
OUT_DIR=${OUT_DIR:-/tmp/dnsc-cluster}
MAX_RUNTIME=${MAX_RUNTIME:-1800}
SIDECAR=${SIDECAR:-}

usage() { sed -n '2,/^# ====/p' "$0" | sed 's/^# \{0,1\}//; /^====/d'; }
while [ $# -gt 0 ]; do
  case $1 in
    --density)  DENSITIES=${2:?}; shift 2 ;;
    --zone-ttl) ZONE_TTLS=${2:?}; shift 2 ;;
    --setups)   SETUPS=${2:?}; shift 2 ;;
    --window)   WINDOW=${2:?}; shift 2 ;;
    --label)    LABEL=${2:?}; shift 2 ;;
    -h|--help)  usage; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in $DENSITIES $ZONE_TTLS $PERIOD $OWN $WARMUP $TIMEOUT $ATTEMPTS $MAX_RUNTIME ${WINDOW:-1}; do
  [[ $v =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "bad numeric setting '$v'" >&2; exit 2; }
done
for s in $SETUPS; do [[ $s =~ ^[1-4]$ ]] || { echo "unknown setup $s" >&2; exit 2; }; done

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, iptables)"
for c in ip iptables iptables-restore conntrack knotd unbound dig python3 setsid timeout; do
  command -v "$c" >/dev/null || die "missing $c"
done

PFX="dnsc-$$"
NODE=$PFX-node
CDS=("$PFX-cd1" "$PFX-cd2" "$PFX-cd3")
EP=(10.250.1.2 10.250.2.2 10.250.3.2)
SVC=10.250.255.10
NODELOCAL=169.254.20.10
MAXPODS=0
for d in $DENSITIES; do [ "$d" -gt $MAXPODS ] && MAXPODS=$d; done
[ $MAXPODS -le 500 ] || die "at most 500 pods"
POD_NS=()
for ((i = 0; i < MAXPODS; i++)); do POD_NS+=("$PFX-p$i"); done
pod_ip() { echo "10.250.$((100 + ($1 + 2) / 256)).$((($1 + 2) % 256))"; }   # pods on 10.250.100.0/22

RUN_DIR=$OUT_DIR/density-$$
mkdir -p "$RUN_DIR" || die "cannot create $RUN_DIR"
RESULTS=$RUN_DIR/results.tsv
NSS=("$NODE" "${CDS[@]}" "${POD_NS[@]}")
declare -A CD_PID=()
PIDS=()
SETUP_PIDS=()
UNBOUND_PID=""
CLEANED=0
WATCHDOG=""

nsx() { local n=$1; shift; ip netns exec "$n" "$@"; }

stop_pids() {   # PID...: TERM to all, up to 3 s, then KILL
  local p i alive
  for p in "$@"; do kill -TERM "$p" 2>/dev/null; done
  for i in $(seq 1 30); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && { alive=1; break; }; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  for p in "$@"; do kill -KILL "$p" 2>/dev/null; done
}

cleanup() {
  [ $CLEANED = 1 ] && return
  CLEANED=1
  trap '' INT TERM HUP
  local p n
  [ ${#PIDS[@]} -gt 0 ] && stop_pids "${PIDS[@]}"
  for n in "${NSS[@]}"; do
    for p in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  done
  for n in "${NSS[@]}"; do ip netns del "$n" 2>/dev/null; done
  [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
  left=$(ip netns list 2>/dev/null | grep -c "^$PFX-")
  [ "$left" = 0 ] || echo "[density] WARNING: $left namespaces $PFX-* left" >&2
}
trap 'cleanup' EXIT
trap 'echo "[density] interrupted, cleaning up" >&2; exit 130' INT TERM HUP

start_in() {   # NS LOGFILE CMD... -> LAST_PID (setsid and ip netns exec exec the command)
  local n=$1 lf=$2; shift 2
  setsid ip netns exec "$n" "$@" >"$lf" 2>&1 </dev/null &
  LAST_PID=$!
  disown "$LAST_PID"
  PIDS+=("$LAST_PID")
}

forget_pids() {   # PID...: stopped; out of PIDS (the trap must not signal a reused PID)
  local keep=() p q drop
  for p in "${PIDS[@]}"; do
    drop=0
    for q in "$@"; do [ "$p" = "$q" ] && { drop=1; break; }; done
    [ $drop = 0 ] && keep+=("$p")
  done
  PIDS=("${keep[@]}")
}

if [ -z "$SIDECAR" ]; then
  log "building dnscore-sidecar (release, CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-cluster})"
  ( cd "$REPO" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-cluster} timeout 900 \
      cargo build --release -q -p dnscore-sidecar ) >"$RUN_DIR/build.log" 2>&1 \
    || die "cargo build failed (see $RUN_DIR/build.log)"
  SIDECAR=${CARGO_TARGET_DIR:-/tmp/target-cluster}/release/dnscore-sidecar
fi
[ -x "$SIDECAR" ] || die "no sidecar binary at $SIDECAR"

MAIN_PID=$$
( end=$((SECONDS + ${MAX_RUNTIME%.*}))
  while [ $SECONDS -lt $end ]; do sleep 1; kill -0 "$MAIN_PID" 2>/dev/null || exit 0; done
  echo "[watchdog] $MAX_RUNTIME s elapsed, stopping" >&2; kill -TERM "$MAIN_PID" ) &
WATCHDOG=$!

# ----------------------------------------------------------------------------
# Zone (as cluster.sh: 1,000 svc-N.ns-M.svc A records, a wildcard *.dyn.svc), workload
# ----------------------------------------------------------------------------
gen_zone() {   # TTL -> $RUN_DIR/zones-TTL/cluster.local.zone
  local ttl=$1 d=$RUN_DIR/zones-$1 m n
  mkdir -p "$d"
  {
    echo "\$ORIGIN cluster.local."
    echo "\$TTL $ttl"
    echo "@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 $ttl"
    echo "@ IN NS ns.dns"
    echo "ns.dns IN A $SVC"
    echo "*.dyn.svc IN A 10.96.255.1"
    for m in $(seq 0 19); do
      for n in $(seq 0 49); do echo "svc-$n.ns-$m.svc IN A 10.96.$m.$((n + 1))"; done
    done
  } >"$d/cluster.local.zone"
}
# the Services every pod talks to: 20 of them, in 4 namespaces
for m in 0 1 2 3; do for n in 0 1 2 3 4; do echo "svc-$n.ns-$m"; done; done >"$RUN_DIR/shared-names.txt"

write_resolv() {   # FILE NAMESERVER
  cat >"$1" <<EOF
nameserver $2
search app.svc.cluster.local svc.cluster.local cluster.local
options ndots:5 timeout:$TIMEOUT attempts:$ATTEMPTS
EOF
}

# ----------------------------------------------------------------------------
# Topology: node (router, kube-proxy rules), 3 CoreDNS namespaces on veths, MAXPODS pod
# namespaces on a bridge in the node (10.250.100.1/22)
# ----------------------------------------------------------------------------
build_topology() {
  local i n
  for n in "$NODE" "${CDS[@]}"; do ip netns add "$n" || die "ip netns add $n failed"; nsx "$n" ip link set lo up; done
  nsx "$NODE" sysctl -qw net.ipv4.ip_forward=1
  for i in 0 1 2; do
    n=${CDS[$i]}
    nsx "$NODE" ip link add "vcd$((i + 1))" type veth peer name eth0 netns "$n" || die "veth to $n"
    nsx "$NODE" ip addr add "10.250.$((i + 1)).1/24" dev "vcd$((i + 1))"
    nsx "$NODE" ip link set "vcd$((i + 1))" up
    nsx "$n" ip addr add "${EP[$i]}/24" dev eth0
    nsx "$n" ip link set eth0 up
    nsx "$n" ip route add 10.250.0.0/16 via "10.250.$((i + 1)).1"
  done
  nsx "$NODE" ip link add pods type bridge || die "bridge"
  nsx "$NODE" ip addr add 10.250.100.1/22 dev pods
  nsx "$NODE" ip link set pods up
  for ((i = 0; i < MAXPODS; i++)); do
    n=${POD_NS[$i]}
    ip netns add "$n" || die "ip netns add $n failed"
    nsx "$n" ip link set lo up
    nsx "$NODE" ip link add "vp$i" type veth peer name eth0 netns "$n" || die "veth to $n"
    nsx "$NODE" ip link set "vp$i" master pods up
    nsx "$n" ip addr add "$(pod_ip $i)/22" dev eth0
    nsx "$n" ip link set eth0 up
    nsx "$n" ip route add 10.250.0.0/16 via 10.250.100.1
    nsx "$n" ip route add "$NODELOCAL/32" via 10.250.100.1
  done
  nsx "$NODE" ip link add ksvc type veth peer name ksvc-peer
  nsx "$NODE" ip link set ksvc-peer up
  nsx "$NODE" ip link set ksvc up
  nsx "$NODE" ip route add 10.250.255.0/24 dev ksvc
  nsx "$NODE" ip link add nodelocaldns type veth peer name nodelocaldns-p
  nsx "$NODE" ip addr add "$NODELOCAL/32" dev nodelocaldns
  nsx "$NODE" ip link set nodelocaldns-p up
  nsx "$NODE" ip link set nodelocaldns up
}

iptables_node() {   # kube-proxy's Service over the 3 endpoints, NodeLocal's NOTRACK, the counters
  local rules="" k p proto
  for proto in udp tcp; do
    for k in 0 1 2; do
      p=$(awk -v r=$((3 - k)) 'BEGIN { printf "%.11f", 1 / r }')
      if [ $k -lt 2 ]; then rules+="-A KUBE-SVC-DNS-${proto^^} -m statistic --mode random --probability $p -j KUBE-SEP-CD$((k + 1))-${proto^^}"$'\n'
      else rules+="-A KUBE-SVC-DNS-${proto^^} -j KUBE-SEP-CD$((k + 1))-${proto^^}"$'\n'; fi
      rules+="-A KUBE-SEP-CD$((k + 1))-${proto^^} -p $proto -j DNAT --to-destination ${EP[$k]}:53"$'\n'
    done
  done
  nsx "$NODE" iptables-restore <<EOF || die "iptables-restore failed"
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -d $NODELOCAL/32 -p udp --dport 53 -j NOTRACK
-A PREROUTING -d $NODELOCAL/32 -p tcp --dport 53 -j NOTRACK
-A PREROUTING -s $NODELOCAL/32 -p udp --sport 53 -j NOTRACK
-A PREROUTING -s $NODELOCAL/32 -p tcp --sport 53 -j NOTRACK
-A OUTPUT -d $NODELOCAL/32 -p udp --dport 53 -j NOTRACK
-A OUTPUT -d $NODELOCAL/32 -p tcp --dport 53 -j NOTRACK
-A OUTPUT -s $NODELOCAL/32 -p udp --sport 53 -j NOTRACK
-A OUTPUT -s $NODELOCAL/32 -p tcp --sport 53 -j NOTRACK
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-DNS-UDP - [0:0]
:KUBE-SVC-DNS-TCP - [0:0]
:KUBE-SEP-CD1-UDP - [0:0]
:KUBE-SEP-CD2-UDP - [0:0]
:KUBE-SEP-CD3-UDP - [0:0]
:KUBE-SEP-CD1-TCP - [0:0]
:KUBE-SEP-CD2-TCP - [0:0]
:KUBE-SEP-CD3-TCP - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j KUBE-SERVICES
-A KUBE-SERVICES -d $SVC/32 -p udp -m udp --dport 53 -j KUBE-SVC-DNS-UDP
-A KUBE-SERVICES -d $SVC/32 -p tcp -m tcp --dport 53 -j KUBE-SVC-DNS-TCP
${rules}COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:COREDNS-COUNT - [0:0]
-A FORWARD -j COREDNS-COUNT
-A OUTPUT -j COREDNS-COUNT
-A COREDNS-COUNT -d ${EP[0]}/32 -p udp --dport 53
-A COREDNS-COUNT -d ${EP[1]}/32 -p udp --dport 53
-A COREDNS-COUNT -d ${EP[2]}/32 -p udp --dport 53
-A COREDNS-COUNT -d ${EP[0]}/32 -p tcp --dport 53 --tcp-flags SYN,ACK SYN
-A COREDNS-COUNT -d ${EP[1]}/32 -p tcp --dport 53 --tcp-flags SYN,ACK SYN
-A COREDNS-COUNT -d ${EP[2]}/32 -p tcp --dport 53 --tcp-flags SYN,ACK SYN
COMMIT
EOF
  # the kernel's defaults, set explicitly: what a node's table holds in steady state
  nsx "$NODE" sysctl -qw net.netfilter.nf_conntrack_udp_timeout=30 net.netfilter.nf_conntrack_udp_timeout_stream=120
}

coredns_queries() { nsx "$NODE" iptables -t filter -L COREDNS-COUNT -nvx 2>/dev/null | awk 'NR > 2 { s += $1 } END { print s + 0 }'; }
ct_count() { nsx "$NODE" cat /proc/sys/net/netfilter/nf_conntrack_count; }

start_coredns() {   # INDEX TTL
  local i=$1 d=$RUN_DIR/cd$(($1 + 1))-ttl$2
  mkdir -p "$d/db"
  cat >"$d/knot.conf" <<EOF
server:
    rundir: "$d"
    listen: ${EP[$i]}@53
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: warning
database:
    storage: "$d/db"
template:
  - id: default
    storage: "$RUN_DIR/zones-$2"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
  - domain: cluster.local.
    file: cluster.local.zone
EOF
  start_in "${CDS[$i]}" "$d/knotd.log" knotd -c "$d/knot.conf"
  CD_PID[$i]=$LAST_PID
}

wait_answer() {   # NS SERVER [TRIES] -> 0 when a Service name resolves
  local i
  for i in $(seq 1 "${3:-60}"); do
    nsx "$1" timeout 3 dig +time=1 +tries=1 +short "@$2" svc-0.ns-0.svc.cluster.local A 2>/dev/null | grep -q '^10\.96\.' && return 0
    sleep 0.25
  done
  return 1
}

# ----------------------------------------------------------------------------
# Setups
# ----------------------------------------------------------------------------
SETUP_NAME=([1]=direct [2]=nodelocal [3]=sidecar [4]=sidecar-nl)
start_unbound() {
  local d=$RUN_DIR/unbound
  mkdir -p "$d"
  cat >"$d/unbound.conf" <<EOF
server:
    interface: $NODELOCAL@53
    access-control: 10.250.0.0/16 allow
    do-ip6: no
    num-threads: 1
    username: ""
    chroot: ""
    directory: "$d"
    pidfile: "$d/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 0
    module-config: "iterator"
    qname-minimisation: no
    do-not-query-localhost: no
    tcp-upstream: no
    cache-min-ttl: 0
    msg-cache-size: 16m
    rrset-cache-size: 32m
    domain-insecure: "cluster.local"
    local-zone: "cluster.local." nodefault
forward-zone:
    name: "."
    forward-addr: $SVC@53
remote-control:
    control-enable: no
EOF
  start_in "$NODE" "$d/unbound.log" unbound -d -c "$d/unbound.conf"
  UNBOUND_PID=$LAST_PID
  wait_answer "${POD_NS[0]}" "$NODELOCAL" || die "unbound does not answer"
}

start_setup() {   # SETUP PODS -> $RUN_DIR/resolv-SETUP.conf; SETUP_PIDS = the sidecars
  local s=$1 n=$2 rc=$RUN_DIR/resolv-$1.conf i up
  SETUP_PIDS=()
  UNBOUND_PID=""
  case $s in
    1) write_resolv "$rc" "$SVC" ;;
    2) write_resolv "$rc" "$NODELOCAL"; start_unbound ;;
    3|4)
      write_resolv "$rc" 127.0.0.1
      up=$SVC
      [ "$s" = 4 ] && { start_unbound; up=$NODELOCAL; }
      mkdir -p "$RUN_DIR/sidecars"
      for ((i = 0; i < n; i++)); do
        # shellcheck disable=SC2086
        start_in "${POD_NS[$i]}" "$RUN_DIR/sidecars/p$i.log" "$SIDECAR" --listen 127.0.0.1:53 --upstream "$up:53" \
          --metrics-listen 127.0.0.1:9153 --lameduck 0 --workers 1 $SIDECAR_ARGS
        SETUP_PIDS+=("$LAST_PID")
      done
      for ((i = 0; i < n; i++)); do
        wait_answer "${POD_NS[$i]}" 127.0.0.1 40 || die "the sidecar of pod $i does not answer (see $RUN_DIR/sidecars/p$i.log)"
      done ;;
  esac
  [ "$s" -le 2 ] && { wait_answer "${POD_NS[0]}" "$(awk '$1 == "nameserver" { print $2; exit }' "$rc")" || die "setup $s does not answer"; }
}

stop_setup() {
  local all=("${SETUP_PIDS[@]}")
  [ -n "$UNBOUND_PID" ] && all+=("$UNBOUND_PID")
  [ ${#all[@]} -gt 0 ] && stop_pids "${all[@]}"
  forget_pids "${all[@]}"
  SETUP_PIDS=()
  UNBOUND_PID=""
}

cpu_ticks() {   # PID... -> utime+stime summed (clock ticks)
  local p sum=0 f
  for p in "$@"; do
    f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    f=${f##*) }   # the fields after the command name
    set -- $f
    sum=$((sum + ${12} + ${13}))
  done
  echo $sum
}
# shellcheck disable=SC2086
cpu_of() { local sum=0 p t; for p in "$@"; do t=$(cpu_ticks "$p"); sum=$((sum + t)); done; echo $sum; }
pss_kb() { local p sum=0 v; for p in "$@"; do v=$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null); sum=$((sum + ${v:-0})); done; echo $sum; }
rss_kb() { local p sum=0 v; for p in "$@"; do v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null); sum=$((sum + ${v:-0})); done; echo $sum; }

sampler() {   # OUTFILE: one line a second: unix time, CoreDNS query counter, conntrack entries
  while :; do echo "$(date +%s.%N) $(coredns_queries) $(ct_count)"; sleep 1; done >"$1"
}

run_cell() {   # TTL SETUP PODS
  local ttl=$1 s=$2 n=$3 win=$WINDOW c=$RUN_DIR/ttl$1-s$2-n$3 i pods="" mark spid dpid hz
  [ -z "$win" ] && win=$((ttl > 30 ? ttl : 30))
  # the pods start over one TTL (their caches out of step), the window opens after that
  local warm=$(awk -v t="$ttl" -v p="$PERIOD" -v w="$WARMUP" 'BEGIN { print t + p + w }')
  hz=$(getconf CLK_TCK)
  log "TTL $ttl s, setup $s (${SETUP_NAME[$s]}), $n pods"
  start_setup "$s" "$n"
  for ((i = 0; i < n; i++)); do pods+="${POD_NS[$i]},"; done
  mark=$c.mark; rm -f "$mark"
  # conntrack from the setup's start-up (readiness checks) out of the count
  nsx "$NODE" conntrack -F >/dev/null 2>&1
  nsx "$NODE" timeout $((${warm%.*} + ${win%.*} + 40)) python3 "$HERE/density_driver.py" --netns "$pods" \
    --resolv-conf "$RUN_DIR/resolv-$s.conf" --names "$RUN_DIR/shared-names.txt" --own "$OWN" \
    --period "$PERIOD" --spread "$ttl" --warmup "$warm" --duration "$win" --mark "$mark" >"$c.json" 2>"$c.err" &
  dpid=$!
  for i in $(seq 1 $((${warm%.*} * 10 + 100))); do [ -e "$mark" ] && break; sleep 0.1; done
  [ -e "$mark" ] || log "  note: the driver did not open its window in time (see $c.err)"
  # the window: counters zeroed, CPU read, one sample a second
  local cache_pids=("${SETUP_PIDS[@]}") ub_pid=$UNBOUND_PID
  nsx "$NODE" iptables -Z COREDNS-COUNT
  local t0 sc0 ub0 cd0 t1 sc1 ub1 cd1 q ct rss ubrss
  t0=$(date +%s.%N); sc0=$(cpu_of "${cache_pids[@]}"); ub0=$(cpu_of $ub_pid); cd0=$(cpu_of "${CD_PID[@]}")
  sampler "$c.samples" &
  spid=$!
  sleep "$win"
  q=$(coredns_queries); ct=$(ct_count); t1=$(date +%s.%N)
  # the entries not yet expired (the count above also holds expired ones the kernel's
  # garbage collector has not reaped yet: it is what node_nf_conntrack_entries shows)
  local live; live=$(nsx "$NODE" timeout 20 conntrack -L 2>/dev/null | wc -l)
  sc1=$(cpu_of "${cache_pids[@]}"); ub1=$(cpu_of $ub_pid); cd1=$(cpu_of "${CD_PID[@]}")
  rss=$(rss_kb "${cache_pids[@]}"); ubrss=$(rss_kb $ub_pid)
  # PSS: the binary's pages, mapped by every sidecar, counted once over all of them
  local pss ubpss; pss=$(pss_kb "${cache_pids[@]}"); ubpss=$(pss_kb $ub_pid)
  kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
  local k
  for k in $(seq 1 $((TIMEOUT * ATTEMPTS * 4 + 40))); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$dpid" 2>/dev/null && { log "  driver overran, killed"; kill -KILL "$dpid" 2>/dev/null; }
  wait "$dpid" 2>/dev/null
  stop_setup
  python3 - "$c.json" "$c.samples" "$ttl" "$s" "${SETUP_NAME[$s]}${LABEL:+ $LABEL}" "$n" "$t0" "$t1" "$q" "$ct" \
      "$rss" "$ubrss" "$sc0" "$sc1" "$ub0" "$ub1" "$cd0" "$cd1" "$hz" "$(cut -d' ' -f1 /proc/loadavg)" "$live" "$pss" "$ubpss" >>"$RESULTS" <<'EOF'
import json, sys
(j, samples, ttl, s, name, n, t0, t1, q, ct, rss, ubrss, sc0, sc1, ub0, ub1, cd0, cd1, hz, load, live, pss, ubpss) = sys.argv[1:]
try:
    d = json.load(open(j))
except (OSError, ValueError):
    d = {}
el = float(t1) - float(t0)
rows = []
for line in open(samples):
    p = line.split()
    if len(p) == 3:
        rows.append((float(p[0]), int(p[1]), int(p[2])))
peak = max((b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(rows, rows[1:])) if len(rows) > 1 else 0
ctmax = max([r[2] for r in rows] + [int(ct)])
hz = float(hz)
cores = lambda a, b: (int(b) - int(a)) / hz / el
print("\t".join(str(x) for x in (
    ttl, s, name, n, d.get("lookups", "NA"), d.get("failed", "NA"), d.get("p50_ms", "NA"), d.get("p99_ms", "NA"),
    round(int(q) / el, 1), round(peak, 1), ct, ctmax,
    round(int(rss) / 1024, 1), round(cores(sc0, sc1), 3), round(int(ubrss) / 1024, 1), round(cores(ub0, ub1), 3),
    round(cores(cd0, cd1), 3), d.get("servfail_answers", "NA"), round(el, 1), load, d.get("driver_cpu_s", "NA"), live, round(int(pss) / 1024, 1), round(int(ubpss) / 1024, 1))))
EOF
  log "  $(tail -1 "$RESULTS" | cut -f4-16 | tr '\t' ' ')"
}

print_table() {
  echo "# dnscore density $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, kernel $(uname -r)${LABEL:+, $LABEL}${SIDECAR_ARGS:+, sidecar flags: $SIDECAR_ARGS}"
  echo "# per pod: 20 shared Services + $OWN own names, each looked up once per $PERIOD s (ndots:5, search list: 2 A queries per lookup); pods started over one TTL; window ${WINDOW:-max(30 s, TTL)} after TTL + $PERIOD + $WARMUP s"
  awk -F'\t' 'BEGIN { printf "%-4s %-22s %5s %8s %6s %6s %7s %9s %8s %8s %8s %8s %9s %7s %9s %7s %7s %5s %9s %9s\n", "ttl", "setup", "pods", "lookups", "failed", "p50ms", "p99ms", "coredns/s", "peak/s", "ct_end", "ct_max", "ct_live", "sc_rssMB", "sc_cpu", "nl_rssMB", "nl_cpu", "cd_cpu", "load", "sc_pssMB", "nl_pssMB" }
    { printf "%-4s %-22s %5s %8s %6s %6s %7s %9s %8s %8s %8s %8s %9s %7s %9s %7s %7s %5s %9s %9s\n", $1, $2 "-" $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, ($22 == "" ? "-" : $22), $13, $14, $15, $16, $17, $20, ($23 == "" ? "-" : $23), ($24 == "" ? "-" : $24) }' "$RESULTS"
  echo "# coredns/s = UDP queries (+ TCP SYNs) reaching the 3 CoreDNS endpoints per second over the window; peak/s the busiest 1-s sample"
  echo "# ct_end/ct_max = node conntrack entries (nf_conntrack_count, what node_nf_conntrack_entries shows) at the end of the window / the most in a 1-s sample;"
  echo "#   ct_live = the entries not yet expired at the end (conntrack -L); UDP timeouts 30 s, 120 s for replied-to streams; expired entries wait for the kernel's GC"
  echo "# sc_rssMB/sc_cpu = all sidecars of the node: VmRSS summed (MiB) at the end, CPU in cores over the window; nl_* the same for unbound; cd_cpu the 3 knotd;"
  echo "#   *_pssMB = proportional set size summed (pages shared between the sidecars, e.g. the binary, counted once)"
  echo "# load = 1-min load average at the end of the cell (2 cores; the stub process and the caches run on the same cores)"
}

log "run dir $RUN_DIR; namespaces $PFX-*; densities: $DENSITIES; zone TTLs: $ZONE_TTLS; setups: $SETUPS"
build_topology
iptables_node
log "topology up: $MAXPODS pod namespaces"
: >"$RESULTS"
for ttl in $ZONE_TTLS; do
  gen_zone "$ttl"
  [ ${#CD_PID[@]} -gt 0 ] && { stop_pids "${CD_PID[@]}"; forget_pids "${CD_PID[@]}"; }
  for i in 0 1 2; do start_coredns $i "$ttl"; done
  for i in 0 1 2; do wait_answer "$NODE" "${EP[$i]}" || die "CoreDNS $((i + 1)) did not come up"; done
  wait_answer "${POD_NS[0]}" "$SVC" || die "the Service IP does not answer from pod 0"
  for s in $SETUPS; do
    for n in $DENSITIES; do run_cell "$ttl" "$s" "$n"; done
  done
done
print_table | tee "$RUN_DIR/table.txt"
echo "results: $RUN_DIR (results.tsv, table.txt, per-cell json/samples, logs)"
