#!/usr/bin/env bash
# Measures, with curl against a release build of `registry serve` on loopback:
#   1. single-stream upload throughput of a 1 GiB blob (one POST ?digest=, and POST+PATCH+PUT),
#   2. pull throughput of that blob,
#   3. the server's peak RSS (VmHWM) during 16 concurrent 256 MiB uploads.
# Usage: scripts/measure-uploads.sh [WORKDIR]   (needs ~6 GiB free in WORKDIR)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
cargo build --release -q -p registry-cli
bin="${CARGO_TARGET_DIR:-target}/release/registry"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"

head -c $((1024*1024*1024)) /dev/urandom > "$work/big.bin"
for i in $(seq 1 16); do head -c $((256*1024*1024)) /dev/urandom > "$work/m$i.bin"; done
big_digest="sha256:$(sha256sum "$work/big.bin" | cut -d' ' -f1)"

rm -rf "$work/data"
"$bin" serve --listen "127.0.0.1:$port" --storage "$work/data" 2>"$work/server.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until curl -sf "$base/v2/" >/dev/null; do sleep 0.1; done

mbps() { python3 -c "print(f'{$1/1048576/$2:.0f} MiB/s ({$2:.2f} s)')"; }
size=$((1024*1024*1024))

t=$(curl -sf -o /dev/null -w '%{time_total}' -X POST -H 'Content-Type: application/octet-stream' \
  -T "$work/big.bin" "$base/v2/bench/one/blobs/uploads?digest=$big_digest")
echo "1 GiB upload, single POST ?digest=:        $(mbps $size $t)"

rm -rf "$work/data/blobs" "$work/data/repositories"
loc=$(curl -sf -D - -o /dev/null -X POST "$base/v2/bench/two/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
start=$(date +%s.%N)
curl -sf -o /dev/null -X PATCH -H 'Content-Type: application/octet-stream' -T "$work/big.bin" "$base$loc"
curl -sf -o /dev/null -X PUT "$base$loc?digest=$big_digest"
t=$(python3 -c "import time; print(time.time()-$start)")
echo "1 GiB upload, POST + streamed PATCH + PUT: $(mbps $size $t)"

t=$(curl -sf -o /dev/null -w '%{time_total}' "$base/v2/bench/two/blobs/$big_digest")
echo "1 GiB pull:                                $(mbps $size $t)"

grep VmHWM /proc/$pid/status | sed 's/^/before concurrent uploads: /'
declare -a digests
for i in $(seq 1 16); do digests[$i]="sha256:$(sha256sum "$work/m$i.bin" | cut -d' ' -f1)"; done
start=$(date +%s.%N)
pids=()
for i in $(seq 1 16); do
  curl -sf -o /dev/null -X POST -T "$work/m$i.bin" "$base/v2/bench/many/blobs/uploads?digest=${digests[$i]}" &
  pids+=($!)
done
wait "${pids[@]}"
t=$(python3 -c "import time; print(time.time()-$start)")
echo "16 x 256 MiB concurrent uploads:           $(mbps $((16*256*1024*1024)) $t) aggregate"
grep VmHWM /proc/$pid/status | sed 's/^/peak RSS (VmHWM) after concurrent uploads: /'
