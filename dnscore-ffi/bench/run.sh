#!/usr/bin/env bash
# Cached lookups: through the C ABI and the Go package (in-process), against the same
# lookup through the system resolver (getaddrinfo, and Go's default resolver) pointed at a
# dnscore sidecar on 127.0.0.1:53. Root only: everything runs in a private mount and network
# namespace, where a temporary resolv.conf is bind-mounted over /etc/resolv.conf; the
# machine's own resolv.conf and network are untouched, and no query leaves the namespace.
# Usage, from the repository root: bash dnscore-ffi/bench/run.sh   (release builds)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/dnscore-ci-target}"
if [ "$(id -u)" != 0 ]; then
  echo "bench/run.sh needs root for unshare and mount" >&2
  exit 1
fi
cargo build -q --release -p dnscore-ffi -p dnscore-sidecar
cargo build -q --release -p dnscore-testkit --bin test-upstream
rel="$CARGO_TARGET_DIR/release"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/pkgconfig"
sed -e "s|@LIBDIR@|$rel|" -e "s|@INCLUDEDIR@|$PWD/dnscore-ffi/include|" -e "s|@VERSION@|bench|" \
  -e "s|@RPATH@|-Wl,-rpath,\${libdir} |" dnscore-ffi/dnscore.pc.in >"$tmp/pkgconfig/dnscore.pc"
export PKG_CONFIG_PATH="$tmp/pkgconfig"
# shellcheck disable=SC2046
gcc -std=c11 -D_GNU_SOURCE -O2 -o "$tmp/bench" dnscore-ffi/bench/bench.c \
  $(pkg-config --cflags --libs dnscore)
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$tmp/resolv.conf"

export TMPDIR_BENCH="$tmp" REL="$rel"
unshare --mount --net --propagation private bash -euo pipefail -c '
  tmp=$TMPDIR_BENCH
  ip link set lo up
  mount --bind "$tmp/resolv.conf" /etc/resolv.conf
  mkfifo "$tmp/up.in" "$tmp/up.out"
  "$REL/test-upstream" <"$tmp/up.in" >"$tmp/up.out" &
  exec 3>"$tmp/up.in"
  read -r upstream <"$tmp/up.out"
  "$REL/dnscore-sidecar" --listen 127.0.0.1:53 --upstream "$upstream" 2>/dev/null &
  sidecar=$!
  sleep 0.5
  "$tmp/bench" "$upstream" --getaddrinfo
  cd dnscore-ffi/go
  export GOPROXY=off DNSCORE_TEST_UPSTREAM_BIN="$REL/test-upstream" DNSCORE_BENCH_SYSTEM=1
  go test -run "^$" -bench "LookupIP|NetResolver|Resolve$" -benchtime 2s .
  echo "# net.DefaultResolver, pure Go stub -> sidecar:"
  GODEBUG=netdns=go go test -run "^$" -bench SystemResolver -benchtime 2s .
  echo "# net.DefaultResolver, cgo getaddrinfo -> sidecar:"
  GODEBUG=netdns=cgo go test -run "^$" -bench SystemResolver -benchtime 2s .
  kill "$sidecar"
  exec 3>&-
'
