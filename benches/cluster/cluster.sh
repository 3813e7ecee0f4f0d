#!/usr/bin/env bash
# =============================================================================
# cluster.sh - a Kubernetes node in network namespaces: kube-dns Service (kube-proxy
# iptables mode: DNAT + statistic + conntrack), three "CoreDNS" pods (knotd), one
# application pod with a glibc-like stub (ndots:5 + search list), and four DNS setups
# measured side by side on the same workload:
#   1 direct     the pod asks the kube-dns Service IP (today's default)
#   2 nodelocal  NodeLocal-DNSCache-like: unbound on 169.254.20.10 in the node, raw-table
#                NOTRACK for it, forwarding over UDP to the Service IP (tracked)
#   3 sidecar    dnscore-sidecar in the pod on 127.0.0.1:53 -> the Service IP
#   4 sidecar-ep dnscore-sidecar in the pod -> the three endpoints, listed
# Phases per setup: hot (warm cache, repeating names), unique (every name new), evict
# (endpoint removed from the DNAT chain + its server killed and unreachable, under load),
# stale (server killed and unreachable, DNAT rule removed STALE_DELAY s later).
#
# Usage: cluster.sh [--short] [--setups "1 2 3 4"] [--phases "hot unique evict stale"]
#                   [--rate N] [--duration S] [--keep]
# Needs root. Everything lives in namespaces named dnsc-<pid>-*; nothing is configured in
# the root namespace (no address, route, iptables rule or resolv.conf is touched there).
# Results: $OUT_DIR/cluster-<pid>/ (results.tsv, table.txt, logs); the table goes to stdout.
# =============================================================================
set -uo pipefail
export LC_ALL=C
PATH="$PATH:/usr/sbin:/sbin:/usr/local/sbin"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

SHORT=0
SETUPS=${SETUPS:-"1 2 3 4"}
PHASES=${PHASES:-"hot unique evict stale"}
RATE=${RATE:-}            # application lookups per second
DURATION=${DURATION:-}    # seconds of the hot phase (full run: longer than ZONE_TTL, so refreshes count)
UNIQUE_DURATION=${UNIQUE_DURATION:-}  # seconds of the unique phase
FAULT_DURATION=${FAULT_DURATION:-}   # seconds of the evict / stale phases
FAULT_AT=${FAULT_AT:-}    # seconds into the evict / stale phase when the fault happens
STALE_DELAY=${STALE_DELAY:-4}        # kube-proxy lag in the stale phase (s)
FAULT_UNIQUE=${FAULT_UNIQUE:-0.5}    # share of never-seen names in evict/stale (forces upstream traffic)
TIMEOUT=${TIMEOUT:-}      # resolv.conf options timeout (glibc default 5)
ATTEMPTS=${ATTEMPTS:-2}
ZONE_TTL=${ZONE_TTL:-30}  # TTL of every record and of negative answers (CoreDNS default: 5, often 30)
NAMES=${NAMES:-500}       # distinct names in the hot workload
OUT_DIR=${OUT_DIR:-/tmp/dnsc-cluster}
MAX_RUNTIME=${MAX_RUNTIME:-}
SIDECAR=${SIDECAR:-}      # path of a dnscore-sidecar binary; default: build it
KEEP=0

usage() { sed -n '2,/^# ====/p' "$0" | sed 's/^# \{0,1\}//; /^====/d'; }
while [ $# -gt 0 ]; do
  case $1 in
    --short)    SHORT=1; shift ;;
    --setups)   SETUPS=${2:?}; shift 2 ;;
    --phases)   PHASES=${2:?}; shift 2 ;;
    --rate)     RATE=${2:?}; shift 2 ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --keep)     KEEP=1; shift ;;
    -h|--help)  usage; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ $SHORT = 1 ]; then
  : "${RATE:=300}" "${DURATION:=3}" "${UNIQUE_DURATION:=3}" "${FAULT_DURATION:=5}" "${FAULT_AT:=1}" "${TIMEOUT:=2}" "${MAX_RUNTIME:=200}"
  STALE_DELAY=${STALE_DELAY_SHORT:-2}
else
  : "${RATE:=500}" "${DURATION:=40}" "${UNIQUE_DURATION:=10}" "${FAULT_DURATION:=20}" "${FAULT_AT:=5}" "${TIMEOUT:=5}" "${MAX_RUNTIME:=1200}"
fi
for v in "$RATE" "$DURATION" "$UNIQUE_DURATION" "$FAULT_DURATION" "$TIMEOUT" "$ATTEMPTS" "$ZONE_TTL" "$NAMES" "$STALE_DELAY"; do
  [[ $v =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "bad numeric setting '$v'" >&2; exit 2; }
done

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, iptables)"
for c in ip iptables iptables-restore conntrack knotd unbound dig python3 setsid timeout; do
  command -v "$c" >/dev/null || die "missing $c (apt-get install iproute2 iptables conntrack knot unbound bind9-dnsutils)"
done

# ----------------------------------------------------------------------------
# Names and addresses (used only inside the namespaces below)
# ----------------------------------------------------------------------------
PFX="dnsc-$$"
NODE=$PFX-node POD=$PFX-pod
CDS=("$PFX-cd1" "$PFX-cd2" "$PFX-cd3")
EP=(10.250.1.2 10.250.2.2 10.250.3.2)     # CoreDNS endpoints
SVC=10.250.255.10                         # kube-dns ClusterIP
NODELOCAL=169.254.20.10
POD_IP=10.250.10.2
EVICT_EP=${EVICT_EP:-0}   # endpoint (0..2) killed in the evict phase
STALE_EP=${STALE_EP:-1}   # endpoint killed in the stale phase (another one: the resolver's memory
                          # of the first fault must not make the second one easier)
RUN_DIR=$OUT_DIR/cluster-$$
mkdir -p "$RUN_DIR" || die "cannot create $RUN_DIR"
RESULTS=$RUN_DIR/results.tsv

declare -a NSS=("$NODE" "${CDS[@]}" "$POD")
declare -A CD_PID=()
declare -a PIDS=()
CLEANED=0
WATCHDOG=""

nsx() { local n=$1; shift; ip netns exec "$n" "$@"; }

kill_pid() {   # PID: TERM, up to 2 s, then KILL
  local p=$1 i
  kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null
  for i in $(seq 1 20); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null
}

cleanup() {
  [ $CLEANED = 1 ] && return
  CLEANED=1
  trap '' INT TERM HUP
  local p n
  for p in "${PIDS[@]}"; do kill_pid "$p"; done
  # anything still running inside our namespaces was started by us
  for n in "${NSS[@]}"; do
    for p in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  done
  for n in "${NSS[@]}"; do ip netns del "$n" 2>/dev/null; done
  [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
  [ $KEEP = 1 ] || rm -f "$RUN_DIR"/*.rows
}
trap 'cleanup' EXIT
trap 'echo "[cluster] interrupted, cleaning up" >&2; exit 130' INT TERM HUP


start_in() {   # NS LOGFILE CMD... -> LAST_PID (own session; ip netns exec execs the command)
  local n=$1 lf=$2; shift 2
  setsid ip netns exec "$n" "$@" >"$lf" 2>&1 </dev/null &
  LAST_PID=$!
  disown "$LAST_PID"   # no "Killed" job notices; we poll with kill -0 instead of wait
  PIDS+=("$LAST_PID")
}

# ----------------------------------------------------------------------------
# The sidecar binary
# ----------------------------------------------------------------------------
if [ -z "$SIDECAR" ]; then
  log "building dnscore-sidecar (release, CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-cluster})"
  ( cd "$REPO" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-cluster} timeout 900 \
      cargo build --release -q -p dnscore-sidecar ) >"$RUN_DIR/build.log" 2>&1 \
    || die "cargo build failed (see $RUN_DIR/build.log)"
  SIDECAR=${CARGO_TARGET_DIR:-/tmp/target-cluster}/release/dnscore-sidecar
fi
[ -x "$SIDECAR" ] || die "no sidecar binary at $SIDECAR"

# a watchdog bounds the run (after the build, which has its own timeout)
MAIN_PID=$$
( end=$((SECONDS + ${MAX_RUNTIME%.*}))
  while [ $SECONDS -lt $end ]; do sleep 1; kill -0 "$MAIN_PID" 2>/dev/null || exit 0; done
  echo "[watchdog] $MAX_RUNTIME s elapsed, stopping" >&2; kill -TERM "$MAIN_PID" ) &
WATCHDOG=$!

# ----------------------------------------------------------------------------
# Zone and workload
# ----------------------------------------------------------------------------
gen_zone() {
  local z=$RUN_DIR/zones/cluster.local.zone m n
  mkdir -p "$RUN_DIR/zones"
  {
    echo "\$ORIGIN cluster.local."
    echo "\$TTL $ZONE_TTL"
    echo "@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 $ZONE_TTL"
    echo "@ IN NS ns.dns"
    echo "ns.dns IN A 10.250.255.10"
    echo "*.dyn.svc IN A 10.96.255.1"
    for m in $(seq 0 19); do
      for n in $(seq 0 49); do echo "svc-$n.ns-$m.svc IN A 10.96.$m.$((n + 1))"; done
    done
  } >"$z"
  : >"$RUN_DIR/names.txt"
  local i=0
  for m in $(seq 0 19); do
    for n in $(seq 0 49); do
      [ $i -lt "$NAMES" ] && echo "svc-$n.ns-$m" >>"$RUN_DIR/names.txt"
      i=$((i + 1))
    done
  done
}

write_resolv() {   # FILE NAMESERVER
  cat >"$1" <<EOF
nameserver $2
search app.svc.cluster.local svc.cluster.local cluster.local
options ndots:5 timeout:$TIMEOUT attempts:$ATTEMPTS
EOF
}

# ----------------------------------------------------------------------------
# Topology
# ----------------------------------------------------------------------------
build_topology() {
  local i n
  for n in "${NSS[@]}"; do ip netns add "$n" || die "ip netns add $n failed"; nsx "$n" ip link set lo up; done
  # node: a router with no uplink; conntrack timeouts long enough that nothing created in a
  # phase expires before it is counted
  nsx "$NODE" sysctl -qw net.ipv4.ip_forward=1
  for i in 0 1 2; do
    n=${CDS[$i]}
    nsx "$NODE" ip link add "vcd$((i + 1))" type veth peer name eth0 netns "$n" || die "veth to $n"
    nsx "$NODE" ip addr add "10.250.$((i + 1)).1/24" dev "vcd$((i + 1))"
    nsx "$NODE" ip link set "vcd$((i + 1))" up
    nsx "$n" ip addr add "${EP[$i]}/24" dev eth0
    nsx "$n" ip link set eth0 up
    nsx "$n" ip route add 10.250.0.0/16 via "10.250.$((i + 1)).1"
    nsx "$n" sysctl -qw net.ipv4.ip_forward=0
    nsx "$NODE" ip neigh replace "${EP[$i]}" lladdr "$(nsx "$n" cat /sys/class/net/eth0/address)" dev "vcd$((i + 1))" nud permanent
  done
  nsx "$NODE" ip link add vpod type veth peer name eth0 netns "$POD" || die "veth to pod"
  nsx "$NODE" ip addr add 10.250.10.1/24 dev vpod
  nsx "$NODE" ip link set vpod up
  nsx "$POD" ip addr add "$POD_IP/24" dev eth0
  nsx "$POD" ip link set eth0 up
  nsx "$POD" ip route add 10.250.0.0/16 via 10.250.10.1
  nsx "$POD" ip route add "$NODELOCAL/32" via 10.250.10.1
  # the widest ephemeral port range: one pod IP reuses source ports (and so conntrack
  # entries) less often; see the README on port reuse
  nsx "$POD" sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
  # Service CIDR: routed to a dummy device so node-local clients (setup 2) can send to it
  # before nat OUTPUT rewrites the destination (kube-proxy nodes use their default route)
  # (a veth pair inside the node: the "dummy" link type may be missing from the kernel)
  nsx "$NODE" ip link add ksvc type veth peer name ksvc-peer
  nsx "$NODE" ip link set ksvc-peer up
  nsx "$NODE" ip link set ksvc up
  nsx "$NODE" ip route add 10.250.255.0/24 dev ksvc
  # NodeLocal DNSCache's dummy interface
  nsx "$NODE" ip link add nodelocaldns type veth peer name nodelocaldns-p
  nsx "$NODE" ip addr add "$NODELOCAL/32" dev nodelocaldns
  nsx "$NODE" ip link set nodelocaldns-p up
  nsx "$NODE" ip link set nodelocaldns up
}

iptables_base() {
  nsx "$NODE" iptables-restore <<EOF || die "iptables-restore (base) failed"
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -d $NODELOCAL/32 -p udp --dport 53 -j NOTRACK
-A PREROUTING -d $NODELOCAL/32 -p tcp --dport 53 -j NOTRACK
-A PREROUTING -s $NODELOCAL/32 -p udp --sport 53 -j NOTRACK
-A PREROUTING -s $NODELOCAL/32 -p tcp --sport 53 -j NOTRACK
-A OUTPUT -s $NODELOCAL/32 -p udp --sport 53 -j NOTRACK
-A OUTPUT -s $NODELOCAL/32 -p tcp --sport 53 -j NOTRACK
-A OUTPUT -d $NODELOCAL/32 -p udp --dport 53 -j NOTRACK
-A OUTPUT -d $NODELOCAL/32 -p tcp --dport 53 -j NOTRACK
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
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d $SVC/32 -p udp -m udp --dport 53 -m comment --comment "kube-system/kube-dns:dns" -j KUBE-SVC-DNS-UDP
-A KUBE-SERVICES -d $SVC/32 -p tcp -m tcp --dport 53 -m comment --comment "kube-system/kube-dns:dns-tcp" -j KUBE-SVC-DNS-TCP
-A KUBE-SEP-CD1-UDP -p udp -j DNAT --to-destination ${EP[0]}:53
-A KUBE-SEP-CD2-UDP -p udp -j DNAT --to-destination ${EP[1]}:53
-A KUBE-SEP-CD3-UDP -p udp -j DNAT --to-destination ${EP[2]}:53
-A KUBE-SEP-CD1-TCP -p tcp -j DNAT --to-destination ${EP[0]}:53
-A KUBE-SEP-CD2-TCP -p tcp -j DNAT --to-destination ${EP[1]}:53
-A KUBE-SEP-CD3-TCP -p tcp -j DNAT --to-destination ${EP[2]}:53
COMMIT
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
  # long UDP timeouts: every entry created in a phase is still there when it is counted
  nsx "$NODE" sysctl -qw net.netfilter.nf_conntrack_udp_timeout=300 net.netfilter.nf_conntrack_udp_timeout_stream=300
}

program_service() {   # "0 1 2": rebuild the KUBE-SVC chains over these endpoints, like kube-proxy
  local eps=($1) n=${#1} i k proto rules=""
  n=${#eps[@]}
  for proto in UDP TCP; do
    rules+=":KUBE-SVC-DNS-$proto - [0:0]"$'\n'
    for ((k = 0; k < n; k++)); do
      i=${eps[$k]}
      if [ $((n - k)) -gt 1 ]; then
        rules+="-A KUBE-SVC-DNS-$proto -m statistic --mode random --probability $(awk -v r=$((n - k)) 'BEGIN { printf "%.11f", 1 / r }') -j KUBE-SEP-CD$((i + 1))-$proto"$'\n'
      else
        rules+="-A KUBE-SVC-DNS-$proto -j KUBE-SEP-CD$((i + 1))-$proto"$'\n'
      fi
    done
  done
  printf '*nat\n%sCOMMIT\n' "$rules" | nsx "$NODE" iptables-restore --noflush || die "iptables-restore (service) failed"
}

coredns_queries() {   # UDP queries + TCP connections that reached the endpoints since the last zero
  nsx "$NODE" iptables -t filter -L COREDNS-COUNT -nvx 2>/dev/null | awk 'NR > 2 { s += $1 } END { print s + 0 }'
}

start_coredns() {   # INDEX
  local i=$1 d=$RUN_DIR/cd$(( $1 + 1 ))
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
    storage: "$RUN_DIR/zones"
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

wait_answer() {   # NS SERVER -> 0 when svc-0.ns-0.svc.cluster.local resolves (<= ~15 s)
  local i
  for i in $(seq 1 60); do
    if nsx "$1" timeout 3 dig +time=1 +tries=1 +short "@$2" svc-0.ns-0.svc.cluster.local A 2>/dev/null | grep -q '^10\.96\.'; then
      return 0
    fi
    sleep 0.25
  done
  return 1
}

# ----------------------------------------------------------------------------
# Faults
# ----------------------------------------------------------------------------
kill_endpoint() {   # INDEX: the server dies and its IP goes silent (a terminated spot node):
  # the address leaves the CoreDNS namespace, which does not forward, so packets to it are
  # dropped there without any ICMP; the node keeps a permanent neighbour entry for it, so no
  # "host unreachable" either. Clients only see a timeout, local (setup 2) or forwarded.
  local i=$1
  kill -KILL "${CD_PID[$i]}" 2>/dev/null
  nsx "${CDS[$i]}" ip addr flush dev eth0
  local t
  for t in $(seq 1 20); do kill -0 "${CD_PID[$i]}" 2>/dev/null || break; sleep 0.1; done
}
remove_endpoint() {   # INDEX: kube-proxy drops it from the Service and clears its UDP conntrack entries
  local i=$1 rest="" k
  for k in 0 1 2; do [ "$k" != "$i" ] && rest+="$k "; done
  program_service "$rest"
  nsx "$NODE" conntrack -D -p udp --orig-dst "$SVC" --reply-src "${EP[$i]}" >/dev/null 2>&1
}
restore_endpoint() {   # INDEX
  local i=$1
  kill_pid "${CD_PID[$i]}"
  nsx "${CDS[$i]}" ip addr replace "${EP[$i]}/24" dev eth0
  nsx "${CDS[$i]}" ip route replace 10.250.0.0/16 via "10.250.$((i + 1)).1"
  start_coredns "$i"
  wait_answer "$NODE" "${EP[$i]}" || die "CoreDNS $((i + 1)) did not come back"
  program_service "0 1 2"
}

# ----------------------------------------------------------------------------
# Setups
# ----------------------------------------------------------------------------
SETUP_NAME=([1]=direct [2]=nodelocal [3]=sidecar [4]=sidecar-ep)
SETUP_PIDS=()
start_setup() {   # N -> writes $RUN_DIR/resolv-N.conf, starts the node cache / sidecar
  local s=$1 rc=$RUN_DIR/resolv-$1.conf d=$RUN_DIR/setup-$1
  mkdir -p "$d"
  SETUP_PIDS=()
  case $s in
    1) write_resolv "$rc" "$SVC" ;;
    2) write_resolv "$rc" "$NODELOCAL"
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
       SETUP_PIDS+=("$LAST_PID") ;;
    3|4) write_resolv "$rc" 127.0.0.1
       local ups="--upstream $SVC:53"
       [ "$s" = 4 ] && ups="--upstream ${EP[0]}:53 --upstream ${EP[1]}:53 --upstream ${EP[2]}:53"
       # shellcheck disable=SC2086
       start_in "$POD" "$d/sidecar.log" "$SIDECAR" --listen 127.0.0.1:53 $ups \
         --metrics-listen 127.0.0.1:9153 --lameduck 0 --workers 1
       SETUP_PIDS+=("$LAST_PID") ;;
  esac
  local ns; ns=$(awk '$1 == "nameserver" { print $2; exit }' "$rc")
  wait_answer "$POD" "$ns" || die "setup $s (${SETUP_NAME[$s]}) does not answer on $ns (see $d)"
}
stop_setup() {
  local p
  for p in "${SETUP_PIDS[@]}"; do kill_pid "$p"; done
  SETUP_PIDS=()
}
sidecar_metrics() {   # -> saves /metrics of the pod's sidecar
  nsx "$POD" timeout 3 python3 -c 'import urllib.request,sys; sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:9153/metrics", timeout=2).read().decode())' >"$1" 2>/dev/null
}

ct_reset() { nsx "$NODE" conntrack -F >/dev/null 2>&1; nsx "$NODE" iptables -Z COREDNS-COUNT; }
ct_count() { nsx "$NODE" cat /proc/sys/net/netfilter/nf_conntrack_count; }

driver() {   # SETUP OUTFILE ARGS...
  local s=$1 out=$2; shift 2
  nsx "$POD" timeout $((${FAULT_DURATION%.*} + ${DURATION%.*} + 60)) \
    python3 "$HERE/driver.py" run --resolv-conf "$RUN_DIR/resolv-$s.conf" --names "$RUN_DIR/names.txt" "$@" >"$out" 2>"$out.err"
}

jget() {   # FILE KEY[.KEY] -> value
  python3 -c 'import json,sys
d=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    d=d.get(k, {}) if isinstance(d, dict) else {}
print(d if d != {} else 0)' "$1" "$2" 2>/dev/null || echo NA
}

record() {   # SETUP PHASE JSONFILE CT_NEW COREDNS_Q
  local s=$1 ph=$2 j=$3 ct=$4 cq=$5 lk
  lk=$(jget "$j" lookups)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "${SETUP_NAME[$s]}" "$ph" "$lk" \
    "$(jget "$j" failed)" "$(jget "$j" p50_ms)" "$(jget "$j" p99_ms)" "$(jget "$j" max_ms)" \
    "$ct" "$(awk -v c="$ct" -v l="$lk" 'BEGIN { if (l > 0 && c != "NA") printf "%.0f", c * 10000 / l; else print "NA" }')" \
    "$cq" "$(awk -v c="$cq" -v l="$lk" 'BEGIN { if (l > 0) printf "%.0f", c * 10000 / l; else print "NA" }')" \
    "$(jget "$j" window.failed)/$(jget "$j" window.max_ms)" "$(jget "$j" servfail_answers)" >>"$RESULTS"
}

wait_sidecar_healthy() {   # until the sidecar reports every upstream healthy again (<= 10 s)
  local i
  for i in $(seq 1 40); do
    sidecar_metrics "$RUN_DIR/metrics.tmp"
    if grep -q '^dnscore_upstream_healthy' "$RUN_DIR/metrics.tmp" && ! grep -q '^dnscore_upstream_healthy.* 0$' "$RUN_DIR/metrics.tmp"; then
      return 0
    fi
    sleep 0.25
  done
  log "  note: the sidecar still reports an upstream down 10 s after the endpoint came back"
}

run_phase() {   # SETUP PHASE
  local s=$1 ph=$2 j=$RUN_DIR/s$1-$2.json ev=$RUN_DIR/s$1-$2.event ct cq dpid k
  rm -f "$ev"
  case $ph in
    hot|unique)
      ct_reset
      if [ "$ph" = hot ]; then driver "$s" "$j" --rate "$RATE" --duration "$DURATION" --rows "$RUN_DIR/s$s-$ph.rows"
      else driver "$s" "$j" --rate "$RATE" --duration "$UNIQUE_DURATION" --unique "$$s$s" --rows "$RUN_DIR/s$s-$ph.rows"; fi
      ct=$(ct_count); cq=$(coredns_queries) ;;
    evict|stale)
      ct_reset
      driver "$s" "$j" --rate "$RATE" --duration "$FAULT_DURATION" --unique "$$s$s$ph" --unique-frac "$FAULT_UNIQUE" --event-file "$ev" --rows "$RUN_DIR/s$s-$ph.rows" &
      dpid=$!
      sleep "$FAULT_AT"
      date +%s.%N >"$ev"
      if [ "$ph" = evict ]; then
        k=$EVICT_EP; remove_endpoint $k; kill_endpoint $k
      else
        k=$STALE_EP; kill_endpoint $k; sleep "$STALE_DELAY"; remove_endpoint $k
      fi
      wait "$dpid"
      ct=$(ct_count); cq=$(coredns_queries)
      restore_endpoint $k
      [ "$s" -ge 3 ] && wait_sidecar_healthy ;;
  esac
  record "$s" "$ph" "$j" "$ct" "$cq"
  log "  $ph: $(cut -f4-13 <<<"$(tail -1 "$RESULTS")" | tr '\t' ' ')"
}

print_table() {
  echo "# dnscore cluster simulation $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, kernel $(uname -r)"
  echo "# workload: $RATE lookups/s of $NAMES names svc-N.ns-M (ndots:5, search app.svc.cluster.local svc.cluster.local cluster.local: 2 queries per lookup, A only)"
  echo "# hot phase $DURATION s (cache warmed first), unique phase $UNIQUE_DURATION s; evict/stale phases $FAULT_DURATION s, fault at $FAULT_AT s (evict: CoreDNS $((EVICT_EP + 1)) removed from the DNAT chain and killed; stale: CoreDNS $((STALE_EP + 1)) killed, DNAT removed $STALE_DELAY s later); stub timeout:$TIMEOUT attempts:$ATTEMPTS; zone TTL $ZONE_TTL s"
  awk -F'\t' 'BEGIN { printf "%-12s %-7s %8s %7s %8s %8s %9s %8s %9s %8s %9s %14s %8s\n", "setup", "phase", "lookups", "failed", "p50ms", "p99ms", "maxms", "ct_new", "ct/10k", "coredns", "cdns/10k", "win_fail/max", "SERVFAIL" }
    { printf "%-12s %-7s %8s %7s %8s %8s %9s %8s %9s %8s %9s %14s %8s\n", $1 "-" $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, ($3 ~ /evict|stale/ ? $13 : "-"), $14 }' "$RESULTS"
  echo "# ct_new = conntrack entries in the node namespace after the phase (flushed before it; UDP timeout raised to 300 s so none expire),"
  echo "#   i.e. distinct 5-tuples created; the one pod reuses source ports (64k), so setup 1 makes fewer than one per query in long phases"
  echo "# evict/stale: $FAULT_UNIQUE of the lookups are of never-seen names (u*.dyn, wildcard), so every setup must go upstream during the fault"
  echo "# SERVFAIL = SERVFAIL answers the application's stub received (it then tries the next search domain, as glibc does)"
  echo "# coredns = UDP queries (+ TCP connections) that reached the three CoreDNS endpoints; win_fail/max = failures / max latency (ms) of lookups started from 0.5 s before the fault to 10 s after"
}

# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------
log "run dir $RUN_DIR; namespaces $PFX-*; setups: $SETUPS; phases: $PHASES"
gen_zone
build_topology
iptables_base
program_service "0 1 2"
for i in 0 1 2; do start_coredns $i; done
for i in 0 1 2; do wait_answer "$NODE" "${EP[$i]}" || die "CoreDNS $((i + 1)) (knotd) did not come up (see $RUN_DIR/cd$((i + 1)))"; done
wait_answer "$POD" "$SVC" || die "the Service IP does not answer from the pod"
log "cluster up: Service $SVC -> ${EP[*]}"
: >"$RESULTS"
for s in $SETUPS; do
  [[ $s =~ ^[1-4]$ ]] || die "unknown setup $s"
  log "setup $s (${SETUP_NAME[$s]})"
  start_setup "$s"
  driver "$s" "$RUN_DIR/s$s-warm.json" --once --concurrency 50 || log "  warm-up driver failed"
  for ph in $PHASES; do run_phase "$s" "$ph"; done
  [ "$s" -ge 3 ] && sidecar_metrics "$RUN_DIR/setup-$s/metrics.txt"
  stop_setup
done
print_table | tee "$RUN_DIR/table.txt"
echo "results: $RUN_DIR (results.tsv, table.txt, s<setup>-<phase>.json, logs)"
