#!/usr/bin/env bash
# Runs every test: unit tests, the backend suite, the end-to-end tests against the real binary
# with oci-client, skopeo, podman and Python clients, doc tests, and the library's examples
# (each runs against a real port and checks what it gets). Installs the external tools first if
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc "$@"
cargo run -q "$@" -p registry-http --example embed -- --check
cargo run -q "$@" -p registry-http --example in_process
