#!/usr/bin/env bash
# The pull-through cache against a direct pull: CNCF Distribution 2.8 (Debian's
# docker-registry) is the upstream, this registry mirrors it under up/. Each round pushes a new
# image (LAYERS layers of random bytes) to Distribution, then pulls it (manifest by tag, then the
# config and layers, 4 at a time, with curl) three ways: straight from Distribution, through the
# cache for the first time (it fetches from Distribution while it streams), and through the
# cache again (from its own storage). Everything is on loopback with filesystem storage, and the
# bytes are in the page cache for all three (just written). Writes BENCHMARKS-mirror.md (or $OUT).
# Usage: scripts/bench-mirror.sh [--scale S] [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/distribution.sh
out="${OUT:-BENCHMARKS-mirror.md}"
scale=1 rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
layers=8
layer_kib=$(python3 -c "print(max(1, int(32 * 1024 * $scale)))")

if ! command -v docker-registry >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq docker-registry >/dev/null
fi
systemctl stop docker-registry >/dev/null 2>&1 || true
cargo build --release -q -p registry-cli
target="${CARGO_TARGET_DIR:-target}/release"
work="$(mktemp -d /var/tmp/registry-mirror-bench.XXXXXX)"
pu=$(port); pc=$(port)
distribution_config "$work/distribution.yml" "$work/distribution" "$pu"
docker-registry serve "$work/distribution.yml" >"$work/distribution.log" 2>&1 &
upstream=$!
printf '[[proxy]]\nprefix = "up"\nurl = "http://127.0.0.1:%s"\n' "$pu" > "$work/cache.toml"
RUST_LOG=warn "$target/registry" serve --listen "127.0.0.1:$pc" --storage "$work/cache" \
  --config "$work/cache.toml" 2>"$work/registry.log" &
cache=$!
trap 'kill $upstream $cache 2>/dev/null || true; rm -rf "$work"' EXIT
for p in $pu $pc; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/v2/" >/dev/null && break; sleep 0.1; done
done

U="http://127.0.0.1:$pu/v2" C="http://127.0.0.1:$pc/v2"
# upload REPO FILE DIGEST: POST for a session, then one PUT with the bytes (Distribution 2.8
# does not take a monolithic POST).
upload() {
  local location
  location=$(curl -sSf -X POST "$U/$1/blobs/uploads/" -D - -o /dev/null |
    tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')
  case "$location" in http*) ;; *) location="http://127.0.0.1:$pu$location" ;; esac
  case "$location" in *\?*) location="$location&digest=$3" ;; *) location="$location?digest=$3" ;; esac
  curl -sSf -X PUT "$location" --data-binary @"$2" -H 'content-type: application/octet-stream' -o /dev/null
}
# push REPO: a new image in Distribution; prints the digests to pull, config first.
push() {
  local repo=$1 dir="$work/img" i d size layers_json="" config
  mkdir -p "$dir"
  for i in $(seq "$layers"); do
    head -c "$((layer_kib * 1024))" /dev/urandom > "$dir/layer"
    d="sha256:$(sha256sum "$dir/layer" | cut -d' ' -f1)"
    upload "$repo" "$dir/layer" "$d"
    layers_json="$layers_json${layers_json:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"$d\",\"size\":$((layer_kib * 1024))}"
    echo "$d"
  done > "$dir/digests"
  printf '{"architecture":"amd64","os":"linux","n":"%s"}' "$repo" > "$dir/config"
  config="sha256:$(sha256sum "$dir/config" | cut -d' ' -f1)"
  size=$(stat -c %s "$dir/config")
  upload "$repo" "$dir/config" "$config"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
    "$config" "$size" "$layers_json" > "$dir/manifest"
  curl -sSf -X PUT "$U/$repo/manifests/v1" --data-binary @"$dir/manifest" \
    -H 'content-type: application/vnd.oci.image.manifest.v1+json' -o /dev/null
  { echo "$config"; cat "$dir/digests"; }
}
# pull BASE REPO DIGESTS…: seconds for the manifest by tag, then the blobs 4 at a time.
pull() {
  local base=$1 repo=$2 start end
  shift 2
  start=$(date +%s.%N)
  curl -sSf "$base/$repo/manifests/v1" -H 'accept: application/vnd.oci.image.manifest.v1+json' -o /dev/null
  printf '%s\n' "$@" | xargs -P 4 -I{} curl -sSf "$base/$repo/blobs/{}" -o /dev/null -w '%{size_download}\n' >>"$work/pulled"
  end=$(date +%s.%N)
  python3 -c "print(f'{$end - $start:.3f}')"
}

mib=$(python3 -c "print(f'{$layers * $layer_kib / 1024:.1f}')")
rows=""
for r in $(seq "$rounds"); do
  repo="bench/r$r"
  mapfile -t digests < <(push "$repo")
  direct=$(pull "$U" "$repo" "${digests[@]}")
  cold=$(pull "$C" "up/$repo" "${digests[@]}")
  warm=$(pull "$C" "up/$repo" "${digests[@]}")
  # Every pull got every byte (curl -f fails a pull that did not; this catches the rest).
  want=$((3 * (layers * layer_kib * 1024 + $(stat -c %s "$work/img/config"))))
  got=$(awk '{s += $1} END {print s}' "$work/pulled")
  [ "$got" = "$want" ] || { echo "round $r: pulled $got bytes, expected $want" >&2; exit 1; }
  rm -f "$work/pulled"
  rows="$rows$r $direct $cold $warm"$'\n'
done

table=$(python3 - "$mib" <<PY
import statistics, sys
mib = float(sys.argv[1])
rows = [list(map(float, l.split()[1:])) for l in """$rows""".strip().splitlines()]
def col(i): return [mib / r[i] for r in rows]
def cell(v): return f"{statistics.median(v):.0f} ({min(v):.0f}–{max(v):.0f})"
direct, cold, warm = col(0), col(1), col(2)
print("| pull of one image | MiB/s, median (min–max) | against the direct pull |")
print("|---|---|---|")
print(f"| straight from Distribution | {cell(direct)} | 1.00x |")
print(f"| through the cache, first (fetched upstream while streamed) | {cell(cold)} | {statistics.median(cold) / statistics.median(direct):.2f}x |")
print(f"| through the cache, cached | {cell(warm)} | {statistics.median(warm) / statistics.median(direct):.2f}x |")
PY
)
{
  echo "# Pull-through cache"
  echo
  echo "- Date: $(date -u +%Y-%m-%d), $(nproc) cores; command: \`scripts/bench-mirror.sh --scale $scale --rounds $rounds\`"
  echo "- Upstream: Distribution $(docker-registry --version 2>/dev/null | awk '{print $3}') on loopback, filesystem storage; the cache: this registry (release build), filesystem storage, mirroring it under \`up/\`."
  echo "- Each round: a new image of $layers layers of $layer_kib KiB ($mib MiB) pushed to Distribution, then pulled with curl (manifest, then blobs 4 at a time): directly, through the cache cold, through the cache again. $rounds rounds."
  echo
  echo "$table"
} > "$out"
cat "$out"
