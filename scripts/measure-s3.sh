#!/usr/bin/env bash
# Measures this registry on S3 (a local single-node Garage) against the filesystem, with curl
# and release builds, on loopback:
#   1. push (POST + streamed PATCH + PUT) and pull MB/s of a 1 GiB blob, S3 vs filesystem;
#   2. a blob larger than S3's 5 GiB single-PUT limit (SOAK_GIB, default 6) streamed in and out
#      with its digest checked, and the registry's peak RSS meanwhile;
#   3. catalog latency with CATALOG_REPOS repositories (default 10000) on S3.
# Needs `garage` (cargo install --locked garage) and SOAK_GIB+2 GiB free in WORKDIR.
# PARTS="blob soak catalog" (the default) picks what to run; PARTS=chunks runs the soak test
# of 10 001 PATCH chunks across two nodes (cargo test -p registry-cli --test s3 -- --ignored).
# Usage: scripts/measure-s3.sh [WORKDIR]
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
. scripts/lib/distribution.sh   # port()
work="${1:-$(mktemp -d /var/tmp/registry-s3.XXXXXX)}"
soak_gib="${SOAK_GIB:-6}"
repos="${CATALOG_REPOS:-10000}"
parts=" ${PARTS:-blob soak catalog} "
mkdir -p "$work"
cargo build --release -q -p registry-cli
bin="${CARGO_TARGET_DIR:-target}/release/registry"
ps3=$(port); pfs=$(port)
. scripts/lib/garage.sh
garage_start "$work"
gpid=$GARAGE_PID
trap 'kill $gpid ${rs3:-} ${rfs:-} 2>/dev/null || true' EXIT

AWS_ENDPOINT_URL="$GARAGE_ENDPOINT" AWS_REGION=garage AWS_ACCESS_KEY_ID=$GARAGE_KEY AWS_SECRET_ACCESS_KEY=$GARAGE_SECRET \
  RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$ps3" --storage s3://registry/measure 2>"$work/s3.log" &
rs3=$!
RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$pfs" --storage "$work/fs" 2>"$work/fs.log" &
rfs=$!
for p in $ps3 $pfs; do
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$p/healthz" >/dev/null && break; sleep 0.1; done
done

mbps() { python3 -c "print(f'{$1/1048576/$2:.0f} MiB/s ({$2:.2f} s)')"; }
# Streams SIZE bytes of a repeatable pseudo-random stream (no file needed); a second argument
# picks another stream. (openssl dies of SIGPIPE when head has enough: not a failure.)
stream() { { openssl enc -aes-128-ctr -pass "pass:registry${2:-}" -nosalt -pbkdf2 </dev/zero 2>/dev/null || true; } | head -c "$1"; }
# push BASE REPO SIZE: POST, one streamed PATCH, PUT ?digest=; prints seconds. The digest is
# computed first (untimed) and left in $work/digest for pull.
push() {
  local base=$1 repo=$2 size=$3 loc start
  local digest
  digest="sha256:$(stream "$size" | sha256sum | cut -d' ' -f1)"
  echo "$digest" > "$work/digest"
  loc=$(curl -sf -D - -o /dev/null -X POST "$base/v2/$repo/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  start=$(date +%s.%N)
  stream "$size" | curl -sf -o /dev/null -X PATCH -H 'Content-Type: application/octet-stream' -T - "$base$loc"
  curl -sf -o /dev/null -X PUT "$base$loc?digest=$digest"
  python3 -c "import time; print(time.time()-$start)"
}
# monolithic BASE REPO SIZE: one POST ?digest= with the whole body; prints seconds. Its bytes
# differ from push's: a blob already stored would only be read and discarded.
monolithic() {
  local base=$1 repo=$2 size=$3 start digest
  digest="sha256:$(stream "$size" mono | sha256sum | cut -d' ' -f1)"
  start=$(date +%s.%N)
  stream "$size" mono | curl -sf -o /dev/null -X POST -H 'Content-Type: application/octet-stream' -T - "$base/v2/$repo/blobs/uploads/?digest=$digest"
  python3 -c "import time; print(time.time()-$start)"
}
# pull BASE REPO: prints the seconds of a pull to /dev/null (sha256sum in the pipe would bound
# the figure), then checks the digest with a second, untimed pull.
pull() {
  local start got digest t
  digest=$(cat "$work/digest")
  start=$(date +%s.%N)
  curl -sf -o /dev/null "$1/v2/$2/blobs/$digest"
  t=$(python3 -c "import time; print(time.time()-$start)")
  got=$(curl -sf "$1/v2/$2/blobs/$digest" | sha256sum | cut -d' ' -f1)
  [ "sha256:$got" = "$digest" ] || { echo "digest mismatch pulling $2 from $1" >&2; exit 1; }
  echo "$t"
}

gib=$((1024*1024*1024))
if [[ $parts == *" blob "* ]]; then
echo "## 1 GiB blob (push = POST + streamed PATCH + PUT, or one POST; pull digest-checked)"
for name in s3 fs; do
  port_var="p$name"; base="http://127.0.0.1:${!port_var}"
  t=$(push "$base" bench/one $gib); echo "$name push (PATCH): $(mbps $gib "$t")"
  t=$(pull "$base" bench/one); echo "$name pull: $(mbps $gib "$t")"
  t=$(monolithic "$base" bench/mono $gib); echo "$name push (POST ?digest=): $(mbps $gib "$t")"
done

fi
base="http://127.0.0.1:$ps3"
if [[ $parts == *" soak "* ]]; then
echo "## ${soak_gib} GiB blob on S3"
size=$((soak_gib*gib))
base="http://127.0.0.1:$ps3"
( peak=0; while kill -0 $rs3 2>/dev/null; do
    v=$(awk '/VmRSS/{print $2}' /proc/$rs3/status 2>/dev/null || echo 0); [ "${v:-0}" -gt "$peak" ] && peak=$v && echo "$peak" > "$work/peak"
    sleep 0.2; done ) &
sampler=$!
t=$(push "$base" bench/big $size); echo "push: $(mbps $size "$t")"
t=$(pull "$base" bench/big); echo "pull: $(mbps $size "$t") (digest checked)"
kill $sampler 2>/dev/null || true
echo "registry peak RSS during the ${soak_gib} GiB push and pull: $(( $(cat "$work/peak") / 1024 )) MiB (VmHWM $(awk '/VmHWM/{print int($2/1024)}' /proc/$rs3/status) MiB)"

fi
if [[ $parts == *" chunks "* ]]; then
echo "## 10 001 PATCH chunks across two nodes on S3"
cargo test -q --release -p registry-cli --test s3 ten_thousand -- --ignored --nocapture 2>&1 | grep -E "chunks|test result"
fi
if [[ $parts == *" catalog "* ]]; then
echo "## catalog with $repos repositories on S3"
python3 - "$base" "$repos" <<'PY'
import sys, hashlib, concurrent.futures, urllib.request
base, n = sys.argv[1], int(sys.argv[2])
body = b"x"; d = "sha256:" + hashlib.sha256(body).hexdigest()
def push(i):
    req = urllib.request.Request(f"{base}/v2/cat/r{i:05d}/blobs/uploads/?digest={d}", data=body, method="POST")
    urllib.request.urlopen(req).read()
with concurrent.futures.ThreadPoolExecutor(16) as ex:
    list(ex.map(push, range(n)))
PY
for q in "?n=100" "?n=100&last=cat/r05000" "?n=10000"; do
  ts=$(for _ in 1 2 3 4 5; do curl -sf -o /dev/null -w '%{time_total}\n' "$base/v2/_catalog$q"; done | sort -n | sed -n 3p)
  echo "GET /v2/_catalog$q: median of 5 = $(python3 -c "print(f'{$ts*1000:.0f} ms')")"
done
fi
rm -rf "$work"
