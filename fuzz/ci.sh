#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each briefly on a copy of its seed corpus; fails
# on a crash. Run from anywhere: `bash fuzz/ci.sh` (FUZZ_SECONDS=300 for a longer run).
#
# cargo fuzz needs nightly flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them. The builds go to fuzz/target (gitignored) unless FUZZ_TARGET_DIR
# says otherwise, so they never invalidate the workspace's own target directory.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-15}"
target_dir="${FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

flags=(--release --debug-assertions --target-dir "$target_dir")
cargo fuzz build "${flags[@]}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
for target in $(cargo fuzz list); do
  corpus="$work/$target"
  mkdir -p "$corpus"
  cp fuzz/seeds/"$target"/* "$corpus"/
  log="$work/$target.log"
  # Crash inputs land in fuzz/artifacts/<target>/ (gitignored).
  if cargo fuzz run "${flags[@]}" "$target" "$corpus" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    passed=$((passed + 1))
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    echo "fuzz $target: ok, ${runs:-?} runs in ${seconds}s"
  else
    failed=$((failed + 1))
    echo "fuzz $target: FAILED; the end of its log:"
    tail -n 60 "$log"
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
