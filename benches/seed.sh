#!/usr/bin/env bash
# Benchmark: `fledge seed` against `cloud-localds` on the same user-data and meta-data, whole
# processes, same run, ISO and vfat. Prints the median wall time of each and the ratio, then the
# in-process throughput (render + seed) from the seed_throughput example.
# Usage: benches/seed.sh [RUNS]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-30}"
scripts/install-test-deps.sh
cargo build -q --release -p fledge-generator
FLEDGE="$PWD/target/release/fledge"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$FLEDGE" render examples/vsphere.yaml --out "$work/out" 2>/dev/null
src="$work/out/cp-a"

median_ms() { # command...: median wall time of RUNS runs, in ms
  local t=()
  for _ in $(seq "$RUNS"); do
    local s e
    s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N)
    t+=($(( (e - s) / 1000 )))
  done
  printf '%s\n' "${t[@]}" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m/1000}'
}

printf '%-6s %14s %14s %8s\n' format "cloud-localds" "fledge seed" ratio
for fmt in iso vfat; do
  if [ "$fmt" = iso ]; then ff=nocloud-iso; else ff=nocloud-vfat; fi
  base=$(median_ms cloud-localds -f "$fmt" "$work/base.$fmt" "$src/user-data" "$src/meta-data")
  ours=$(median_ms "$FLEDGE" seed "$src" -o "$work/ours.$fmt" -f "$ff")
  ratio=$(awk -v b="$base" -v o="$ours" 'BEGIN {printf "%.1fx", b/o}')
  printf '%-6s %12s ms %12s ms %8s\n' "$fmt" "$base" "$ours" "$ratio"
done
echo
cargo run -q --release -p fledge-generator --example seed_throughput
