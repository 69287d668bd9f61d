#!/usr/bin/env bash
# Installs what the end-to-end tests and benchmark scripts drive: skopeo, podman, curl, docker
# (docker.io: dockerd and the client), containerd (containerd, ctr) and pebble (a real ACME
# server, with pebble-challtestsrv as its DNS) and chromium with chromium-driver (the web
# interface's browser test) as Debian packages (the tests start private
# daemons of their own), the npm package oidc-provider (the sign-in tests'
# OpenID Connect provider), Garage, the real S3 server of the storage tests (`cargo install`, about 10
# minutes the first time; an installed one is reused), and a Python virtual environment with
# the `requests` and `oras` clients and `selenium` (which drives chromium) from PyPI at $REGISTRY_TEST_VENV (default
# ~/.cache/registry-test-venv). Idempotent.
set -euo pipefail
# tool:package
tools="skopeo:skopeo podman:podman curl:curl dockerd:docker.io docker:docker.io containerd:containerd ctr:containerd pebble:pebble pebble-challtestsrv:pebble chromium:chromium chromedriver:chromium-driver"
missing=()
for pair in $tools; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: ${missing[*]} missing; run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi
for pair in $tools; do
  tool="${pair%%:*}"
  command -v "$tool" >/dev/null 2>&1 || { echo "install-test-deps: $tool still missing" >&2; exit 1; }
done

if ! command -v garage >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/garage" ]; then
  echo "install-test-deps: building Garage (cargo install --locked garage)" >&2
  cargo install --locked --quiet garage
fi
command -v garage >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/garage" ] || { echo "install-test-deps: garage still missing" >&2; exit 1; }

venv="${REGISTRY_TEST_VENV:-$HOME/.cache/registry-test-venv}"
if ! "$venv/bin/python" -c 'import requests, oras, selenium' >/dev/null 2>&1; then
  echo "install-test-deps: creating the Python client environment in $venv" >&2
  if ! python3 -m venv --help >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || { echo "install-test-deps: python3 with venv missing; run as root or: sudo apt-get install python3-venv" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check requests==2.34.2 oras==0.2.43 selenium==4.51.0
fi
"$venv/bin/python" -c 'import requests, oras, selenium' || { echo "install-test-deps: the Python clients still missing in $venv" >&2; exit 1; }

# The OpenID Connect provider of the sign-in tests (the `oidc-provider` npm package, pinned by
# its package-lock.json), run with the machine's Node.js.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { echo "install-test-deps: node and npm are required (Node.js 20)" >&2; exit 1; }
oidc="$(cd "$(dirname "$0")/.." && pwd)/crates/registry-cli/tests/fixtures/oidc-provider"
if ! (cd "$oidc" && node -e 'import("oidc-provider")' >/dev/null 2>&1); then
  echo "install-test-deps: installing the OpenID Connect test provider (npm ci)" >&2
  (cd "$oidc" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
(cd "$oidc" && node -e 'import("oidc-provider")') || { echo "install-test-deps: oidc-provider still missing in $oidc" >&2; exit 1; }
