#!/usr/bin/env bash
# Render time of the web interface's repository list with 10 000 repositories (at --scale 1),
# on the filesystem and on S3 (a local single-node Garage): the first page, a search (for the
# last repository, so every name is looked at), and a page
# in the middle, one request at a time, with median and p99 over every request of every round
# (registry-bench's `ui-repositories` workload). Writes BENCHMARKS-ui.md (or $OUT).
# Usage: scripts/bench-ui.sh [--scale S] [--rounds N]   (extra flags go to registry-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/distribution.sh
. scripts/lib/garage.sh
out="${OUT:-BENCHMARKS-ui.md}"
work="$(mktemp -d /var/tmp/registry-bench-ui.XXXXXX)"
scale=1
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = --scale ] && scale="${args[$((i + 1))]}"
done

cargo build --release -q -p registry-cli -p registry-benches
target="${CARGO_TARGET_DIR:-target}/release"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work/fs" "$work/garage"' EXIT

garage_start "$work"
pids+=("$GARAGE_PID")
pf=$(port); ps=$(port)
RUST_LOG=warn "$target/registry" serve --listen "127.0.0.1:$pf" --storage "$work/fs" 2>"$work/fs.log" &
fs=$!
pids+=("$fs")
env RUST_LOG=warn AWS_ENDPOINT_URL="$GARAGE_ENDPOINT" AWS_REGION=garage \
  AWS_ACCESS_KEY_ID="$GARAGE_KEY" AWS_SECRET_ACCESS_KEY="$GARAGE_SECRET" \
  "$target/registry" serve --listen "127.0.0.1:$ps" --storage s3://registry/ui 2>"$work/s3.log" &
s3=$!
pids+=("$s3")
for p in $pf $ps; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/v2/" >/dev/null && break; sleep 0.1; done
done

"$target/registry-bench" "http://127.0.0.1:$pf" --pid "$fs" --label filesystem \
  --workloads ui-repositories "$@" --output "$work/fs.md"
"$target/registry-bench" "http://127.0.0.1:$ps" --pid "$s3" --label s3-garage \
  --workloads ui-repositories "$@" --output "$work/s3.md"

{
  echo "# Benchmarks: the web interface's repository list"
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "- Command: \`scripts/bench-ui.sh $*\`"
  echo "- $(awk -v s="$scale" 'BEGIN { n = int(10000 * s + 0.5); if (n < 2) n = 2; print n }') repositories, each with one tagged image; pages of 50 with tag count and last push time"
  echo "  (per repository shown, its tag list from the node's cache, validated by one small read of the repository's tag generation). \`GET /\`, \`GET /?q=<the last name>\` and \`GET /?after=<the middle>\` in turn, one at a time;"
  echo "  p50 and p99 are over every request, the rate is the median over rounds. No guard (a guard adds its check per request)."
  echo "- S3: $(garage --version 2>/dev/null | head -1 || echo Garage) on the same disk, LMDB metadata."
  echo
  echo "## Filesystem"
  echo
  cat "$work/fs.md"
  echo
  echo "## S3 (Garage)"
  echo
  cat "$work/s3.md"
} >"$out"
echo "wrote $out"
