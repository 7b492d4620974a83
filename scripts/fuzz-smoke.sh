#!/usr/bin/env bash
# Runs every fuzz target for a few seconds, starting from its committed corpus
# (what CI runs; long runs are in the README). Needs the nightly toolchain;
# installs cargo-fuzz from crates.io when it is missing.
# Usage: ./scripts/fuzz-smoke.sh [seconds per target, default 5]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-5}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
# --dev: a debug build (fast to compile), with overflow checks (-a); the
# build outputs in TALLY_FUZZ_TARGET_DIR when set (scripts/test.sh keeps them
# outside the clone), else in fuzz/target.
flags=(--dev -a --sanitizer none)
[ -n "${TALLY_FUZZ_TARGET_DIR:-}" ] && flags+=(--target-dir "$TALLY_FUZZ_TARGET_DIR")
cargo +nightly fuzz build "${flags[@]}"
# A kept build directory holds every earlier build of each target (about 1 GB
# each): drop the target binaries a day old or more, which no build uses now.
if [ -n "${TALLY_FUZZ_TARGET_DIR:-}" ]; then
  find "$TALLY_FUZZ_TARGET_DIR" -path '*/debug/deps/*' -type f -size +100M -mtime +0 \
    ! -name '*.rlib' ! -name '*.rmeta' ! -name '*.so' -delete 2>/dev/null || true
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$scratch/$target"
  echo "fuzz smoke: $target (${secs}s)"
  # New inputs go to the scratch directory; the committed corpus is read only.
  cargo +nightly fuzz run "${flags[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 12
done
