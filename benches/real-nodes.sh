#!/usr/bin/env bash
# Benchmark: one cluster on real nodes (CAPD-made containers, real kubeadm; see docs/testing.md,
# "Real nodes"), built twice in the same run on the same machine:
#   decentralized  fledge apply -> CP-A (KCP replicas 1) -> the baked agent pivots and scales
#                  out (tests/tests/real_nodes.rs a_cluster_builds_itself_on_real_nodes_and_goes_away)
#   centralized    every Cluster API object applied to the management plane from the start
#                  (KCP at CP replicas, the worker pool), the CNI applied by hand once the
#                  workload API answers, no agent (the_same_cluster_the_centralized_way)
# Prints, per model, the time from the first apply to CP-A Ready, to the pivot and to all nodes
# Ready (decentralized), to all nodes Ready (centralized), the requests each model sent to the
# management plane (its API server's audit log) and fledge-agent's peak memory and CPU time
# (read from /proc of its main process), each line ending in `nodes Ready: R/W`. Then, with the
# management plane stopped, the time from killing a worker's container (and, with 3 control
# planes, a control-plane node other than CP-A) until a new node is Ready, and for the
# centralized model that nothing replaced the worker within FLEDGE_REAL_NODES_WINDOW seconds
# (default 300).
# Usage: benches/real-nodes.sh [CONTROL_PLANES]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
# The preparation is quiet; its output is shown when it fails.
prep=$(mktemp)
trap 'rm -f "$prep"' EXIT
scripts/go-peers.sh >"$prep" 2>&1 || { cat "$prep" >&2; exit 1; }
export FLEDGE_ASSETS_BIN="${FLEDGE_ASSETS_BIN:-$(scripts/go-peers.sh --print-dir)}"
scripts/real-nodes.sh >"$prep" 2>&1 || { cat "$prep" >&2; exit 1; }
FLEDGE_REAL_NODES_CP="${1:-3}" CI=true cargo test -q -p fledge-tests --test real_nodes -- \
  --include-ignored --test-threads=1 --nocapture 2>&1 |
  grep --line-buffered -E '^\[real-nodes\] (decentralized|centralized|day 2|management plane)|^test result'
