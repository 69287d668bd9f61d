#!/usr/bin/env bash
# Cost of HTTP Basic auth, measured side by side in one run: this registry with an htpasswd
# bcrypt user against CNCF Distribution 2.8 with the same file, and against itself without auth.
# The htpasswd file is written by Apache's `htpasswd -B` at its default cost. Read workloads
# only (manifest GET/HEAD, blob HEAD), where per-request authentication dominates.
# Writes BENCHMARKS-auth.md (or $OUT).
# Usage: scripts/bench-auth.sh [--scale S] [--rounds N]   (extra flags go to registry-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/distribution.sh
out="${OUT:-BENCHMARKS-auth.md}"
work="$(mktemp -d /var/tmp/registry-bench-auth.XXXXXX)"

need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
systemctl stop docker-registry >/dev/null 2>&1 || true

cargo build --release -q -p registry-cli -p registry-benches
target="${CARGO_TARGET_DIR:-target}/release"
pa=$(port); pb=$(port); pc=$(port)
htpasswd -Bbc "$work/htpasswd" bench bench-password 2>/dev/null
cost=$(cut -d'$' -f3 "$work/htpasswd")

distribution_config "$work/distribution.yml" "$work/distribution" "$pb" "$work/htpasswd"

RUST_LOG=warn "$target/registry" serve --listen "127.0.0.1:$pa" --storage "$work/auth" \
  --htpasswd "$work/htpasswd" 2>"$work/auth.log" &
auth=$!
docker-registry serve "$work/distribution.yml" >"$work/distribution.log" 2>&1 &
dist=$!
RUST_LOG=warn "$target/registry" serve --listen "127.0.0.1:$pc" --storage "$work/open" 2>"$work/open.log" &
open=$!
trap 'kill $auth $dist $open 2>/dev/null || true' EXIT
for p in $pa $pb $pc; do
  for _ in $(seq 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -u bench:bench-password "http://127.0.0.1:$p/v2/" || true)
    [ "$code" = 200 ] && break
    sleep 0.1
  done
done

common=(--workloads manifest-get,manifest-head,blob-head "$@")
"$target/registry-bench" "http://127.0.0.1:$pa" --pid "$auth" --label registry-auth --basic-auth bench:bench-password \
  --compare "http://127.0.0.1:$pb" --compare-pid "$dist" --compare-label distribution-auth \
  --compare-basic-auth bench:bench-password "${common[@]}" --output "$work/vs-distribution.md"
"$target/registry-bench" "http://127.0.0.1:$pa" --pid "$auth" --label registry-auth --basic-auth bench:bench-password \
  --compare "http://127.0.0.1:$pc" --compare-pid "$open" --compare-label registry-open \
  "${common[@]}" --output "$work/vs-open.md"

{
  echo "# Benchmarks: the cost of HTTP Basic auth"
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "- Command: \`scripts/bench-auth.sh $*\`"
  echo "- One htpasswd file with one bcrypt user (\`htpasswd -B\`, cost $cost) for both registries;"
  echo "  registry remembers a verified password for 2 minutes (keyed hash of user and password), Distribution verifies bcrypt on every request."
  echo
  echo "## registry (auth) vs Distribution (auth)"
  echo
  cat "$work/vs-distribution.md"
  echo
  echo "## registry (auth) vs registry (no auth)"
  echo
  cat "$work/vs-open.md"
} > "$out"
echo "wrote $out"
rm -rf "$work"
