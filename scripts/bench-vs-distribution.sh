#!/usr/bin/env bash
# Side-by-side load benchmark: this registry against CNCF Distribution 2.8 (Debian's
# docker-registry), both on loopback with filesystem storage, deletes enabled, no auth, quiet
# logs. Runs registry-bench in --compare mode (A, B, A, B, … per workload) and writes the table
# with the date, machine and command to BENCHMARKS.md (or $OUT).
# With --s3 first, both store in one bucket of a local single-node Garage (under the prefixes
# registry-<table>/ and distribution-<table>/), and the table replaces the "On S3" section of
# $OUT, leaving the filesystem tables as they are (a filesystem run keeps the S3 section).
# Usage: scripts/bench-vs-distribution.sh [--s3] [--scale S] [--rounds N]   (extra flags go to registry-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/distribution.sh
out="${OUT:-BENCHMARKS.md}"
work="${WORK:-$(mktemp -d /var/tmp/registry-bench.XXXXXX)}"
mkdir -p "$work"
s3=
if [ "${1:-}" = --s3 ]; then
  s3=1
  shift
fi

if ! command -v docker-registry >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq docker-registry >/dev/null
fi
# Debian starts a system instance on :5000; this benchmark runs its own.
systemctl stop docker-registry >/dev/null 2>&1 || true

cargo build --release -q -p registry-cli -p registry-benches
target="${CARGO_TARGET_DIR:-target}/release"
pa=$(port); pb=$(port)

ours_env=()
if [ -n "$s3" ]; then
  . scripts/lib/garage.sh
  garage_start "$work"
  ours_env=(AWS_ENDPOINT_URL="$GARAGE_ENDPOINT" AWS_REGION=garage
            AWS_ACCESS_KEY_ID="$GARAGE_KEY" AWS_SECRET_ACCESS_KEY="$GARAGE_SECRET")
fi
# Tens of GiB of pushed blobs: removed also when a run fails (the logs stay in $work).
trap 'kill ${ours:-} ${theirs:-} ${GARAGE_PID:-} 2>/dev/null || true; rm -rf "$work/registry" "$work/distribution" "$work/garage"' EXIT

# start_servers N: both servers on empty storage of their own (directories, or key prefixes
# ending in N on S3), so that no table's run depends on what an earlier one stored, and the
# disk holds one run's pushes at a time (a full run pushes about 22 GiB to each server; all
# three kept together filled a disk with 46 GiB free).
start_servers() {
  local storage="$work/registry" root="$work/distribution"
  if [ -n "$s3" ]; then
    storage="s3://registry/registry-$1"
    root="/distribution-$1"
  fi
  distribution_config "$work/distribution.yml" "$root" "$pb"
  env RUST_LOG=warn "${ours_env[@]}" "$target/registry" serve --listen "127.0.0.1:$pa" --storage "$storage" 2>>"$work/registry.log" &
  ours=$!
  # Go's AWS SDK refuses a CA bundle (AWS_CA_BUNDLE, which some machines set) with a custom
  # endpoint's transport; the loopback Garage is plain HTTP.
  env -u AWS_CA_BUNDLE docker-registry serve "$work/distribution.yml" >>"$work/distribution.log" 2>&1 &
  theirs=$!
  for p in $pa $pb; do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/v2/" >/dev/null && break; sleep 0.1; done
  done
}

# stop_servers: stops both and removes what they stored on the filesystem.
stop_servers() {
  kill "$ours" "$theirs" 2>/dev/null || true
  wait "$ours" "$theirs" 2>/dev/null || true
  rm -rf "$work/registry" "$work/distribution"
}

# registry-bench drops the page cache before each push round when this is set (root only).
if [ "$(id -u)" = 0 ]; then
  export REGISTRY_BENCH_DROP_CACHES=1
else
  echo "not root: rounds keep the page cache, so their figures depend on what it holds" >&2
fi
# bench ARGS…: registry-bench against both servers, started afresh for it.
bench() {
  start_servers "$1"
  shift
  "$target/registry-bench" "http://127.0.0.1:$pa" --pid "$ours" --label registry \
    --compare "http://127.0.0.1:$pb" --compare-pid "$theirs" --compare-label distribution "$@"
  stop_servers
}
bench main "$@" --output "$work/table.md"
# The full set also pushes in 1 MiB and 64 MiB chunks (the table's push-chunked uses 8 MiB).
# On S3 only in 64 MiB: Distribution's S3 driver took 691 s for one 512 MiB push in 1 MiB
# chunks on Garage (this registry 51 s), so three rounds would take over half an hour.
chunks=()
sizes=(1 64)
[ -n "$s3" ] && sizes=(64)
if [[ " $* " != *" --workloads"* ]]; then
  for mib in "${sizes[@]}"; do
    bench "chunk-$mib" "$@" --workloads push-chunked --chunk-mib "$mib" --output "$work/chunk-$mib.md"
    chunks+=("$mib")
  done
fi

version=$(docker-registry --version 2>/dev/null | awk '{print $3}')
if [ -n "$s3" ]; then
  # The filesystem part of $out stays; the S3 section is replaced.
  fs_part=$( [ -f "$out" ] && sed '/^## On S3/,$d' "$out" || true)
  {
    [ -z "$fs_part" ] || printf '%s\n\n' "$fs_part"
    echo "## On S3: registry vs Distribution $version on a local single-node Garage"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Command: \`scripts/bench-vs-distribution.sh --s3 $*\`"
    echo "- Both servers store in one bucket of the same Garage (version $(garage --version 2>/dev/null | head -1 | sed 's/.*cargo://; s/ .*//'), LMDB metadata, on the same disk), under the prefixes registry-<table>/ and distribution-<table>/ (fresh for each table); Distribution serves blobs itself (redirect disabled), as this registry does by default;"
    echo "  otherwise as above (deletes on, no auth, request logs off, Distribution's in-memory blob descriptor cache)."
    echo
    cat "$work/table.md"
    for mib in "${chunks[@]}"; do
      echo
      echo "### push-chunked in $mib MiB PATCHes, on S3"
      echo
      grep '^|' "$work/chunk-$mib.md"
    done
  } > "$out.new"
else
  s3_part=$( [ -f "$out" ] && sed -n '/^## On S3/,$p' "$out" || true)
  {
    echo "# Benchmarks: registry vs CNCF Distribution $version"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB"
    echo "- Command: \`scripts/bench-vs-distribution.sh $*\`"
    echo "- Both servers: filesystem storage on the same disk (registry fsyncs files and directories before every 201; Distribution syncs files when it commits them), deletes on, no auth, request logs off;"
    echo "  Distribution with the in-memory blob descriptor cache. Rounds alternate A, B, A, B per workload; rates are medians over rounds (slowest and fastest round in parentheses),"
    echo "  p99 over every request. A ratio above 1 favours registry for rates, below 1 for p99, CPU and RSS."
    echo "  Each round starts after \`sync\` (registry-bench runs it), so no round pays for the writeback of the rounds before it."
    echo "  Before each push round the page cache is dropped (as root), and before each pull round both servers' blobs are read once, unmeasured, so both serve them from the page cache."
    echo
    cat "$work/table.md"
    for mib in "${chunks[@]}"; do
      echo
      echo "## push-chunked in $mib MiB PATCHes"
      echo
      grep '^|' "$work/chunk-$mib.md"
    done
    if [ -n "$s3_part" ]; then
      echo
      printf '%s\n' "$s3_part"
    fi
  } > "$out.new"
fi
mv "$out.new" "$out"
echo "wrote $out"
rm -rf "$work/registry" "$work/distribution" "$work/garage"
