#!/usr/bin/env bash
# New HTTP connections per second through reqwest with four resolvers in the same run
# (benches/http/connections.rs): dnscore's reqwest adapter in-process; reqwest's default
# (getaddrinfo) and its hickory-dns resolver, both reading /etc/resolv.conf, which names a
# dnscore sidecar on 127.0.0.1:53; and a fixed address (no DNS) as the ceiling. Each request
# is a new connection to a local HTTP server, so each one resolves the name.
#
# Root only: everything runs in a private mount and network namespace, where a temporary
# resolv.conf (and a minimal hosts file) are bind-mounted over /etc's; the machine's own
# files and network are untouched, and no packet leaves the namespace's loopback. Not part
# of CI. Bounded: the measurement is killed after 10 minutes; everything it started is
# stopped on exit.
# Usage, from anywhere: sudo bash benches/http/run.sh [--secs S] [--rounds N] [--concurrency C,C]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/dnscore-ci-target}"
if [ "$(id -u)" != 0 ]; then
  echo "benches/http/run.sh needs root for unshare and mount" >&2
  exit 1
fi
cargo build -q --release -p dnscore-sidecar
cargo build -q --release -p dnscore-testkit --bin test-upstream
cargo build -q --release -p dnscore-benches --example http-connections
rel="$CARGO_TARGET_DIR/release"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$tmp/resolv.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$tmp/hosts"

export TMPDIR_BENCH="$tmp" REL="$rel"
unshare --mount --net --propagation private bash -euo pipefail -c '
  tmp=$TMPDIR_BENCH
  ip link set lo up
  mount --bind "$tmp/resolv.conf" /etc/resolv.conf
  mount --bind "$tmp/hosts" /etc/hosts
  pids=()
  trap '\''kill "${pids[@]}" 2>/dev/null || true; wait'\'' EXIT
  mkfifo "$tmp/up.in" "$tmp/up.out"
  "$REL/test-upstream" web.test.=127.0.0.1 <"$tmp/up.in" >"$tmp/up.out" &
  pids+=($!)
  exec 3>"$tmp/up.in"
  read -r upstream <"$tmp/up.out"
  "$REL/dnscore-sidecar" --listen 127.0.0.1:53 --upstream "$upstream" 2>/dev/null &
  pids+=($!)
  echo "# $(nproc) CPUs, load $(cut -d" " -f1-3 /proc/loadavg); nsswitch $(grep -E "^hosts:" /etc/nsswitch.conf | tr -s " ")"
  echo "# test upstream $upstream, dnscore sidecar on 127.0.0.1:53 (resolv.conf)"
  timeout 600 "$REL/examples/http-connections" "$upstream" "$@"
  exec 3>&-
' http-bench "$@"
