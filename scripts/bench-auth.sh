#!/usr/bin/env bash
# Cost of authentication, measured side by side in one run: this registry with an htpasswd
# bcrypt user against CNCF Distribution 2.8 with the same file, and against itself without auth;
# then this registry with Bearer tokens (token authentication, ES256 JWTs from its own token
# service, one token reused as docker does) against itself without auth and with HTTP Basic.
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
pa=$(port); pb=$(port); pc=$(port); pd=$(port)
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
# Token authentication: an instance with the same user, its own signing key, tokens of an hour.
home="$work/home"
"$target/registry" --config-dir "$home" instance create default --listen "127.0.0.1:$pd" --storage "$work/token" >/dev/null
cp "$work/htpasswd" "$home/instances/default/htpasswd"
"$target/registry" --config-dir "$home" reconfigure htpasswd=htpasswd >/dev/null
"$target/registry" --config-dir "$home" token init >/dev/null
"$target/registry" --config-dir "$home" reconfigure token_lifetime=1h >/dev/null
RUST_LOG=warn "$target/registry" --config-dir "$home" serve 2>"$work/token.log" &
token=$!
trap 'kill $auth $dist $open $token 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$pd/v2/" && break
  sleep 0.1
done
bearer="Bearer $(curl -sf -u bench:bench-password \
  "http://127.0.0.1:$pd/auth/token?service=127.0.0.1:$pd&scope=repository:bench/read:pull,push" |
  sed -E 's/.*"token":"([^"]+)".*/\1/')"
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: $bearer" "http://127.0.0.1:$pd/v2/")" = 200 ] ||
  { echo "bench-auth: the token service gave no usable token" >&2; exit 1; }
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
"$target/registry-bench" "http://127.0.0.1:$pd" --pid "$token" --label registry-token --authorization "$bearer" \
  --compare "http://127.0.0.1:$pc" --compare-pid "$open" --compare-label registry-open \
  "${common[@]}" --output "$work/token-vs-open.md"
"$target/registry-bench" "http://127.0.0.1:$pd" --pid "$token" --label registry-token --authorization "$bearer" \
  --compare "http://127.0.0.1:$pa" --compare-pid "$auth" --compare-label registry-basic \
  --compare-basic-auth bench:bench-password "${common[@]}" --output "$work/token-vs-basic.md"

{
  echo "# Benchmarks: the cost of authentication"
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
  echo
  echo "## registry (Bearer tokens) vs registry (no auth)"
  echo
  echo "Every request carries one ES256 JWT (as docker reuses its token for a whole pull): verified once, then remembered until it expires (at most 60 s)."
  echo
  cat "$work/token-vs-open.md"
  echo
  echo "## registry (Bearer tokens) vs registry (HTTP Basic)"
  echo
  cat "$work/token-vs-basic.md"
} > "$out"
echo "wrote $out"
rm -rf "$work"
