#!/usr/bin/env bash
# Benchmark: the management plane's cost per cluster, centralized Cluster API against fledge,
# measured in the same run (issue 14).
#
# For each worker count K and each model, a fresh management kube-apiserver + etcd running the
# real CAPI v1.13.5 managers (core, kubeadm bootstrap, kubeadm control plane), and N clusters
# simulated with objects only (no machines run):
#   centralized  every cluster's Cluster API objects on the management plane (Cluster, KCP,
#                Secrets, 1 control-plane + K worker Machines with their infrastructure machines,
#                KubeadmConfigs and bootstrap Secrets); kubeconfigs point at a shared, real
#                workload apiserver, so the controllers reach each cluster;
#   fledge       per cluster only the FledgeCluster and the agent's access objects, and one real
#                fledge-agent process (its journal past the pivot: it runs Steady), whose local
#                cluster is a namespace of a shared local apiserver.
# Measured after SETTLE seconds, over WINDOW seconds: requests per second (the management
# apiserver's audit log), objects stored (every listable resource counted), CPU (/proc/PID/stat)
# and resident memory of apiserver+etcd and of the CAPI managers; plus the requests and CPU of
# building and settling. Prints markdown tables: both models side by side, per cluster, the
# ratio centralized/fledge at each K, and how each model grows from the first K to the last.
#
# Usage: benches/scale.sh [--clusters N] [--workers K,K,...] [--settle S] [--window S] [--resync S]
#        (defaults: 20 clusters, workers 3,10,50, settle 30 s, window 120 s, the agents' default
#        resyncSeconds 300: a window shorter than that may hold none of an agent's periodic
#        GET + status report, only its open watch; about 20 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/go-peers.sh >/dev/null
export FLEDGE_ASSETS_BIN="${FLEDGE_ASSETS_BIN:-$(scripts/go-peers.sh --print-dir)}"
cargo build -q --release -p fledge-tests --bin scale-bench
cargo build -q -p fledge-agent
RUST_LOG=warn exec target/release/scale-bench "$@"
