#!/usr/bin/env bash
# Benchmark: the pivot of one cluster with WORKERS worker Machines (each with infrastructure
# machine, KubeadmConfig and bootstrap Secret; 13 + 4*WORKERS objects) between two real API
# servers from the test assets (scripts/go-peers.sh), at --parallelism 1 and at the default
# in the same run, alternating, ROUNDS times each. Reports requests per moved object (counted
# by a layer in the clients) and the median wall times.
# Then the same fixture is moved once by fledge and once by the real `clusterctl move` (v1.13.5,
# from scripts/go-peers.sh, CLUSTERCTL_DISABLE_VERSIONCHECK=true) between the same two servers,
# requests counted the same way for both (the apiservers' audit logs, by user agent), with wall
# time and how many statuses each leaves in the target.
# A warm-up pivot runs first and is not measured. The machine's CPU use during each run is
# printed too: on loopback the API servers, not the network, set the pace.
# FLEDGE_BENCH_RTT_MS=N delays every request by N ms (a stand-in for a real network round trip).
# Usage: benches/pivot.sh [WORKERS] [ROUNDS] [PARALLELISM]   (defaults 100, 3, the default 8)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/go-peers.sh >/dev/null
export FLEDGE_ASSETS_BIN="${FLEDGE_ASSETS_BIN:-$(scripts/go-peers.sh --print-dir)}"
cargo run -q --release -p fledge-tests --example pivot_bench -- "${1:-100}" "${2:-3}" ${3:+"$3"}
