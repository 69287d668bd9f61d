#!/usr/bin/env bash
# Installs what the end-to-end tests and benchmark scripts drive: skopeo, podman, curl (Debian
# packages) and Garage, the real S3 server of the storage tests (`cargo install`, about 10
# minutes the first time; an installed one is reused). Idempotent.
set -euo pipefail
missing=()
for tool in skopeo podman curl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: ${missing[*]} missing; run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for tool in skopeo podman curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install-test-deps: $tool still missing" >&2; exit 1; }
done

if ! command -v garage >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/garage" ]; then
  echo "install-test-deps: building Garage (cargo install --locked garage)" >&2
  cargo install --locked --quiet garage
fi
command -v garage >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/garage" ] || { echo "install-test-deps: garage still missing" >&2; exit 1; }
