#!/usr/bin/env bash
# Benchmark: fledge-agent's idle resident memory and CPU while steady, and its binary size
# (release build). By default the agent runs against a real management apiserver started for
# the run (tests/examples/mgmt_server.rs, binaries from scripts/go-peers.sh) holding its
# FledgeCluster: it fetches the spec, caches it, reports status and then idles on its watch.
# --unreachable measures it against a closed port instead (idling in its capped backoff).
# FLEDGE_BENCH_SERVER/TOKEN/CA point it at another management plane.
# Usage: benches/agent.sh [--unreachable] [SECONDS]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=live
if [ "${1:-}" = "--unreachable" ]; then MODE=unreachable; shift; fi
SECS="${1:-30}"
cargo build -q --release -p fledge-agent
BIN="$PWD/target/release/fledge-agent"
work=$(mktemp -d)
pid=""; mpid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -n "$mpid" ] && { exec 9>&-; wait "$mpid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
name=bench; ns=default
if [ -n "${FLEDGE_BENCH_SERVER:-}" ]; then
  MODE=external
  server="$FLEDGE_BENCH_SERVER"
  printf '%s' "$FLEDGE_BENCH_TOKEN" > "$work/token"
  cp "$FLEDGE_BENCH_CA" "$work/ca.crt"
elif [ "$MODE" = live ]; then
  scripts/go-peers.sh >/dev/null
  export FLEDGE_ASSETS_BIN="${FLEDGE_ASSETS_BIN:-$(scripts/go-peers.sh --print-dir)}"
  cargo build -q -p fledge-tests --example mgmt_server
  mkdir "$work/mgmt"
  # The server runs until its standard input (fd 9 here) closes.
  mkfifo "$work/stdin"
  target/debug/examples/mgmt_server "$work/mgmt" < "$work/stdin" > "$work/mgmt.out" 2>"$work/mgmt.log" &
  mpid=$!
  exec 9>"$work/stdin"
  for _ in $(seq 1 120); do grep -q ready "$work/mgmt.out" 2>/dev/null && break; sleep 0.5; done
  grep -q ready "$work/mgmt.out" || { tail -20 "$work/mgmt.log" >&2; exit 1; }
  server=$(cat "$work/mgmt/server")
  install -m 0600 "$work/mgmt/token" "$work/token"
  cp "$work/mgmt/ca.crt" "$work/ca.crt"
  name=vsphere-demo; ns=team-vsphere   # examples/vsphere.yaml
else
  server="https://127.0.0.1:9"
  (umask 077; od -An -tx1 -N16 /dev/urandom | tr -d ' \n' > "$work/token")
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=bench -days 1 -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
fi
mport=$((19440 + RANDOM % 1000))
cat > "$work/agent.yaml" <<YAML
apiVersion: fledge.dev/v1alpha1
kind: AgentConfig
cluster: {name: $name, namespace: $ns}
management: {server: "$server", tokenFile: "$work/token", caFile: "$work/ca.crt"}
stateDir: "$work/state"
metricsAddress: "127.0.0.1:$mport"
YAML
WATCHDOG_USEC=30000000 "$BIN" run --config "$work/agent.yaml" 2>"$work/log" &
pid=$!
sleep 5  # start-up: fetch, cache, first status
metrics() {
  exec 8<>"/dev/tcp/127.0.0.1/$mport"
  printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&8
  cat <&8 || true
  exec 8>&-
}
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks); sleep "$SECS"; t1=$(ticks)
rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v s="$SECS" 'BEGIN {printf "%.3f", (b - a) / hz / s * 100}')
size=$(stat -c %s "$BIN")
echo "mode:          $MODE ($server)"
echo "agent state:   $(metrics | grep -E '^fledge_agent_(management_reachable|spec_generation|phase)' | tr '\n' ' ')"
printf 'binary size:   %s bytes (%.1f MiB)\n' "$size" "$(awk -v s="$size" 'BEGIN {print s/1048576}')"
printf 'idle RSS:      %s KiB (%.1f MiB)   goal < 25 MiB\n' "$rss_kb" "$(awk -v k="$rss_kb" 'BEGIN {print k/1024}')"
printf 'idle CPU:      %s %% of one core over %ss   goal <= 1 %%\n' "$cpu" "$SECS"
