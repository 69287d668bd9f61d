#!/usr/bin/env bash
# Runs every test: unit tests, the backend suite, and the end-to-end tests against the real
# binary with oci-client, skopeo and podman. Installs the external tools first if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
