#!/usr/bin/env bash
# Builds a filesystem store of MANIFESTS image manifests (default 10000), each with a config and
# four small layers of its own (5 blobs per manifest: 50 000 by default), through a release
# `registry serve` over HTTP, then measures maintenance commands on it: wall time and peak RSS
# (GNU time) of `registry fsck`, and of `registry gc` twice: with nothing to collect, then after
# UNTAG (default 2000) tags were deleted (--delete-untagged --grace-period 0s frees their
# manifests and 5 blobs each). Usage: scripts/measure-store.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/distribution.sh   # port()
work="${1:-$(mktemp -d /var/tmp/registry-store.XXXXXX)}"
manifests="${MANIFESTS:-10000}"
mkdir -p "$work"
cargo build --release -q -p registry-cli
bin="${CARGO_TARGET_DIR:-target}/release/registry"
p=$(port)
RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$p" --storage "$work/store" 2>"$work/serve.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$p/healthz" >/dev/null && break; sleep 0.1; done
start=$(date +%s.%N)
python3 - "http://127.0.0.1:$p" "$manifests" <<'PY'
import sys, json, hashlib, concurrent.futures, urllib.request
base, n = sys.argv[1], int(sys.argv[2])
def blob(repo, body):
    d = "sha256:" + hashlib.sha256(body).hexdigest()
    req = urllib.request.Request(f"{base}/v2/{repo}/blobs/uploads/?digest={d}", data=body, method="POST")
    urllib.request.urlopen(req).read()
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(body)}
def image(i):
    repo = f"store/r{i % 100:03d}"
    config = blob(repo, json.dumps({"image": i}).encode())
    config["mediaType"] = "application/vnd.oci.image.config.v1+json"
    layers = [blob(repo, f"layer {k} of image {i} ".encode() * 20) for k in range(4)]
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config, "layers": layers}).encode()
    req = urllib.request.Request(f"{base}/v2/{repo}/manifests/t{i}", data=m, method="PUT",
                                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    urllib.request.urlopen(req).read()
with concurrent.futures.ThreadPoolExecutor(8) as ex:
    list(ex.map(image, range(n)))
PY
echo "## store of $manifests manifests, $((manifests * 5)) blobs (filesystem)"
echo "built over HTTP in $(python3 -c "import time; print(f'{time.time()-$start:.0f} s')")"
/usr/bin/time -f "fsck: %e s, peak RSS %M KiB" "$bin" fsck --storage "$work/store" 2>&1 | tail -2
/usr/bin/time -f "gc, nothing to collect: %e s (5 s of it the settle wait), peak RSS %M KiB" \
  "$bin" gc --storage "$work/store" --grace-period 0s --delete-untagged 2>&1 | tail -2
untag="${UNTAG:-2000}"
for i in $(seq 0 $((untag - 1))); do
  curl -sf -o /dev/null -X DELETE "http://127.0.0.1:$p/v2/store/r$(printf %03d $((i % 100)))/manifests/t$i"
done
sleep 1.1  # objects of the cutoff's second are young
/usr/bin/time -f "gc after untagging $untag: %e s, peak RSS %M KiB" \
  "$bin" gc --storage "$work/store" --grace-period 0s --delete-untagged 2>&1 | tail -2
kill $server; wait $server 2>/dev/null || true
"$bin" fsck --storage "$work/store" | tail -1
rm -rf "$work"
