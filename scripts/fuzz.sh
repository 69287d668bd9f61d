#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS (default 60) with AddressSanitizer, starting from the
# committed seeds in fuzz/seeds/<target> (new inputs go to the ignored fuzz/corpus/<target>).
# A crash fails the script; its input is left in fuzz/artifacts/<target>/ to become a test.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1   # the stable toolchain, with the unstable sanitizer flags cargo-fuzz needs
# A target directory outside the clone may be shared between runs (FUZZ_TARGET_DIR).
target_dir=(); [ -n "${FUZZ_TARGET_DIR:-}" ] && target_dir=(--target-dir "$FUZZ_TARGET_DIR")
targets=$(cargo fuzz list)
for t in $targets; do
  mkdir -p "corpus/$t"
  echo "fuzz: $t for ${seconds}s"
  if ! cargo fuzz run "${target_dir[@]}" "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$seconds" >"corpus/$t.log" 2>&1; then
    tail -40 "corpus/$t.log"
    echo "fuzz: $t FAILED; the crashing input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^Done [0-9]+ runs' "corpus/$t.log" || tail -2 "corpus/$t.log"
done
echo "fuzz: all targets ran ${seconds}s without a crash"
