#!/usr/bin/env bash
# The whole test suite, as CI runs it. On a fresh Debian machine it installs the packages the
# tests need, builds (or reuses from ~/.cache) the real Kubernetes test components, the VM
# guest image, the Docker engine and the node image of the real-node test, checks formatting
# and lints, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
scripts/go-peers.sh    # kube-apiserver, etcd, clusterctl and the CAPI managers, from Go modules
export FLEDGE_ASSETS_BIN="$(scripts/go-peers.sh --print-dir)"
images/test-guest.sh   # QEMU + a Debian guest image for the live systemd install test
scripts/real-nodes.sh  # Docker engine, node image with the agent and providers baked in (real nodes)

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast
