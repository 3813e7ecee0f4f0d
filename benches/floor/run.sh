#!/usr/bin/env bash
# Runs ../shared/bench/peers.sh with our sidecar and the floor (floor.c: a server that does
# no DNS work, so its CPU per query is the kernel's share alone) as targets, beside the peers.
# Usage, from the repo root, as root (peers.sh installs the peers unless --no-install):
#   bash benches/floor/run.sh [peers.sh options, e.g. --workloads hot]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
peers=${PEERS_SH:-$root/../shared/bench/peers.sh}
work=${FLOOR_WORK:-/tmp/dnscore-floor}
[ -f "$peers" ] || { echo "floor: needs $peers (or PEERS_SH=...)" >&2; exit 1; }
mkdir -p "$work"
gcc -O2 -Wall -Wextra -o "$work/floor" "$root/benches/floor/floor.c"
(cd "$root" && cargo build --release -p dnscore-sidecar)
target_dir=${CARGO_TARGET_DIR:-$root/target}
cp "$target_dir/release/dnscore-sidecar" "$work/dnscore-sidecar"
export WARMUP=${WARMUP:-2}
exec bash "$peers" --no-hickory --duration 5 \
  --target dnscore=127.0.0.30:5300 \
  --target-cmd dnscore="$work/dnscore-sidecar --listen \$LISTEN_ADDR:\$LISTEN_PORT --upstream \${UPSTREAMS// /,} --workers \$THREADS --metrics-listen 127.0.0.30:9153 --lameduck 0 --cache-capacity 100000" \
  --target floor-plain=127.0.0.31:5300 \
  --target-cmd floor-plain="$work/floor \$LISTEN_ADDR \$LISTEN_PORT 1 \$THREADS" \
  --target floor-mmsg=127.0.0.32:5300 \
  --target-cmd floor-mmsg="$work/floor \$LISTEN_ADDR \$LISTEN_PORT 32 \$THREADS" \
  "$@"
