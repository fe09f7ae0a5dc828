#!/usr/bin/env bash
# Benchmark: time from the agent's start to ScaledOut written in its journal, and the requests
# it made (its own counters, /metrics `fledge_agent_requests_total`), on the takeover fixture:
# a management apiserver with fledge's rendered docker-v1beta2 objects (KCP replicas 3, one pool
# of 2 workers) and a local apiserver running the real CAPI v1.13.5 managers, providers from a
# baked directory (cert-manager, core, CABPK, KCP, Dev infrastructure). Runs the takeover test
# ROUNDS times and prints each round's figures and the medians.
# Usage: benches/takeover.sh [ROUNDS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/go-peers.sh >/dev/null
export FLEDGE_ASSETS_BIN="${FLEDGE_ASSETS_BIN:-$(scripts/go-peers.sh --print-dir)}"
rounds="${1:-3}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq "$rounds"); do
  CI=true cargo test -q --release -p fledge-tests --test takeover one_agent -- --nocapture 2>&1 \
    | grep '^BENCH' | tee -a "$out"
done
python3 - "$out" <<'PY'
import re, statistics, sys
rows = [re.findall(r"[\d.]+", l) for l in open(sys.argv[1])]
if not rows:
    sys.exit("no BENCH lines: the takeover test failed")
t = statistics.median(float(r[0]) for r in rows)
m = statistics.median(float(r[1]) for r in rows)
l = statistics.median(float(r[2]) for r in rows)
print(f"median of {len(rows)}: time-to-ScaledOut {t:.1f}s; requests: management {m:.0f}, local {l:.0f}")
PY
