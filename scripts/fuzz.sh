#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS (default 60) with AddressSanitizer, starting from the
# committed seeds in fuzz/seeds/<target> (new inputs go to the ignored fuzz/corpus/<target>).
# A crash fails the script; its input is left in fuzz/artifacts/<target>/ to become a test.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1   # the stable toolchain, with the unstable sanitizer flags cargo-fuzz needs
targets=$(cargo fuzz list)
for t in $targets; do
  mkdir -p "corpus/$t"
  echo "fuzz: $t for ${seconds}s"
  cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 | tail -4
done
echo "fuzz: all targets ran ${seconds}s without a crash"
