#!/usr/bin/env bash
# Benchmark: fledge-agent's idle resident memory and CPU while steady, and its binary size
# (release build). The agent runs against a real management apiserver from the test assets
# (scripts/test-assets.sh) when FLEDGE_BENCH_SERVER/TOKEN/CA are set, otherwise against an
# unreachable address (it then idles in its capped backoff, serving /metrics).
# Usage: benches/agent.sh [SECONDS]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-30}"
cargo build -q --release -p fledge-agent
BIN="$PWD/target/release/fledge-agent"
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
server="${FLEDGE_BENCH_SERVER:-https://127.0.0.1:9}"
printf '%s' "${FLEDGE_BENCH_TOKEN:-bench-token}" > "$work/token"
if [ -n "${FLEDGE_BENCH_CA:-}" ]; then cp "$FLEDGE_BENCH_CA" "$work/ca.crt"; else openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=bench -days 1 -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null; fi
cat > "$work/agent.yaml" <<YAML
apiVersion: fledge.dev/v1alpha1
kind: AgentConfig
cluster: {name: bench, namespace: default}
management: {server: "$server", tokenFile: "$work/token", caFile: "$work/ca.crt"}
stateDir: "$work/state"
metricsAddress: "127.0.0.1:19440"
YAML
WATCHDOG_USEC=30000000 "$BIN" run --config "$work/agent.yaml" 2>"$work/log" &
pid=$!
sleep 5  # start-up
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks); sleep "$SECS"; t1=$(ticks)
rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v s="$SECS" 'BEGIN {printf "%.3f", (b - a) / hz / s * 100}')
size=$(stat -c %s "$BIN")
printf 'binary size:   %s bytes (%.1f MiB)\n' "$size" "$(awk -v s="$size" 'BEGIN {print s/1048576}')"
printf 'idle RSS:      %s KiB (%.1f MiB)   goal < 25 MiB\n' "$rss_kb" "$(awk -v k="$rss_kb" 'BEGIN {print k/1024}')"
printf 'idle CPU:      %s %% of one core over %ss   goal <= 1 %%\n' "$cpu" "$SECS"
