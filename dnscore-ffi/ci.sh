#!/usr/bin/env bash
# The C ABI and the Go package, end to end: the checked-in header is what cbindgen makes
# now, the C test passes under valgrind (no leak, no invalid access), the example runs,
# and `go test` passes. Everything talks to dnscore-testkit's test-upstream on 127.0.0.1.
# Run from the repository root: bash dnscore-ffi/ci.sh  (the Rust tests of dnscore-ffi run
# with `cargo test --workspace`). Last line: "ffi: N passed, 0 failed" (C and Go tests).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/dnscore-ci-target}"
export CARGO_TERM_COLOR=never
ffi=dnscore-ffi

# --- Tools: Debian packages when missing (as root), cbindgen from crates.io.
missing=()
command -v go >/dev/null 2>&1 || missing+=(golang-go)
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing ${missing[*]} (not root or no apt-get)" >&2
    exit 1
  fi
fi
if ! command -v cbindgen >/dev/null 2>&1; then
  echo "installing cbindgen"
  cargo install cbindgen --version 0.29.4 --locked --quiet
fi

tmp=$(mktemp -d)
upstream_pid=
cleanup() {
  exec 3>&- 2>/dev/null || true
  if [ -n "$upstream_pid" ]; then kill "$upstream_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# --- The header is generated: fail when the checked-in one differs.
(cd "$ffi" && cbindgen --quiet --config cbindgen.toml --output "$tmp/dnscore.h")
if ! diff -u "$ffi/include/dnscore.h" "$tmp/dnscore.h"; then
  echo "$ffi/include/dnscore.h is out of date; regenerate it:" >&2
  echo "  (cd $ffi && cbindgen --config cbindgen.toml --output include/dnscore.h)" >&2
  exit 1
fi

# --- Build the library and the test upstream; a pkg-config file for the build tree.
cargo build -q -p dnscore-ffi
cargo build -q -p dnscore-testkit --bin test-upstream
libdir="$CARGO_TARGET_DIR/debug"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
mkdir -p "$tmp/pkgconfig"
sed -e "s|@LIBDIR@|$libdir|" -e "s|@INCLUDEDIR@|$PWD/$ffi/include|" -e "s|@VERSION@|$version|" \
  -e "s|@RPATH@|-Wl,-rpath,\${libdir} |" "$ffi/dnscore.pc.in" >"$tmp/pkgconfig/dnscore.pc"
export PKG_CONFIG_PATH="$tmp/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"

# --- C: the example and the test, compiled with gcc through pkg-config.
cflags=(-std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -O1)
# shellcheck disable=SC2046  # pkg-config output is meant to be split
gcc "${cflags[@]}" -o "$tmp/lookup" "$ffi/examples/lookup.c" $(pkg-config --cflags --libs dnscore) -lpthread
# shellcheck disable=SC2046
gcc "${cflags[@]}" -o "$tmp/test" "$ffi/tests/test.c" $(pkg-config --cflags --libs dnscore) -lpthread
# shellcheck disable=SC2046
gcc "${cflags[@]}" -o "$tmp/bench" "$ffi/bench/bench.c" $(pkg-config --cflags --libs dnscore)

# The server's stdin is a fifo we hold open on fd 3: it stops when we exit, even on a kill.
mkfifo "$tmp/upstream.in" "$tmp/upstream.out"
"$CARGO_TARGET_DIR/debug/test-upstream" <"$tmp/upstream.in" >"$tmp/upstream.out" &
upstream_pid=$!
exec 3>"$tmp/upstream.in"
read -r -t 20 upstream <"$tmp/upstream.out"
echo "test upstream on $upstream"

"$tmp/lookup" "$upstream" a.test >/dev/null

valgrind -q --leak-check=full --show-leak-kinds=definite,indirect \
  --errors-for-leak-kinds=definite,indirect --error-exitcode=1 \
  "$tmp/test" "$upstream" | tee "$tmp/c.out"
c_line=$(grep -E '^c: [0-9]+ passed, [0-9]+ failed$' "$tmp/c.out")
c_passed=$(echo "$c_line" | awk '{print $2}')
c_failed=$(echo "$c_line" | awk '{print $4}')

# --- Go: standard library only, no module downloads.
export GOPROXY=off GOTOOLCHAIN=local
export DNSCORE_TEST_UPSTREAM_BIN="$CARGO_TARGET_DIR/debug/test-upstream"
(
  cd "$ffi/go"
  unformatted=$(gofmt -l .)
  if [ -n "$unformatted" ]; then
    echo "gofmt needed: $unformatted" >&2
    exit 1
  fi
  go vet ./...
  go test -count=1 -v ./...
) | tee "$tmp/go.out"
go_passed=$(grep -c -- '^--- PASS' "$tmp/go.out" || true)
go_failed=$(grep -c -- '^--- FAIL' "$tmp/go.out" || true)

failed=$((c_failed + go_failed))
echo "ffi: $((c_passed + go_passed)) passed, $failed failed"
[ "$failed" = 0 ]
