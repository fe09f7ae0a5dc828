#!/usr/bin/env bash
# Build the real Go test peers from their published Go modules, pinned by the wrapper modules
# in peers/ (go.mod + go.sum only; no upstream code is in this repository):
#   peers/k8s   kube-apiserver, kube-controller-manager   (k8s.io/kubernetes)
#   peers/etcd  etcd                                      (go.etcd.io/etcd/server/v3)
#   peers/capi  clusterctl and the core, kubeadm bootstrap and kubeadm control-plane managers
#               (sigs.k8s.io/cluster-api)
#
# Binaries are cached per wrapper under ${FLEDGE_PEERS:-$HOME/.cache/fledge/peers}/<wrapper>-<hash>/
# (the hash covers the wrapper's go.mod and go.sum, the versions and BUILD_REV), so a changed pin rebuilds
# only that wrapper; each binary is built to a temporary name and renamed, so an interrupted run
# resumes where it stopped. The combined directory printed by --print-dir holds links to all of
# them, plus cluster-api.dir and capv.dir: the paths of sigs.k8s.io/cluster-api and
# sigs.k8s.io/cluster-api-provider-vsphere in the Go module cache, whose config/ holds the CRDs
# and webhook manifests the tests install.
#
# Usage:
#   scripts/go-peers.sh               build what is missing (cold: about 25 minutes on 2 cores)
#   scripts/go-peers.sh --print-dir   print the combined bin directory
#   scripts/go-peers.sh --download    only `go mod download -x` every wrapper (what the proxy serves)
#   scripts/go-peers.sh --regenerate  re-create the wrappers from the versions below
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=v1.34.4      # k8s.io/kubernetes; staging modules at v0.34.4, derived from its go.mod
ETCD_VERSION=v3.6.16     # go.etcd.io/etcd/server/v3
CAPI_VERSION=v1.13.5     # sigs.k8s.io/cluster-api (the CRDs the tests validate against)
CAPV_VERSION=v1.16.1     # sigs.k8s.io/cluster-api-provider-vsphere: CRDs only, not built

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
ROOT="${FLEDGE_PEERS:-$HOME/.cache/fledge/peers}"
# Bump when the build flags below change, so that cached binaries are rebuilt.
BUILD_REV=1

log() { printf '[go-peers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

wrapper_dir() { # wrapper -> cache directory for its binaries
  local h
  h=$( { cat "peers/$1/go.mod" "peers/$1/go.sum"; echo "$BUILD_REV $K8S_VERSION $ETCD_VERSION $CAPI_VERSION"; } | sha256sum | cut -c1-12)
  echo "$ROOT/$1-$h"
}
combined_dir() {
  local h
  h=$(for w in k8s etcd capi; do wrapper_dir "$w"; done | sha256sum | cut -c1-12)
  echo "$ROOT/bin-$h"
}

if [ "${1:-}" = "--print-dir" ]; then combined_dir; exit 0; fi

command -v go >/dev/null || { echo "go-peers: Go is not installed (need Go >= 1.24)" >&2; exit 1; }

# The staging modules k8s.io/kubernetes replaces with ./staging/src paths, read from its go.mod.
staging_modules() {
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  sed -n 's|^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/.*|\1|p' "$gomod"
}

regenerate() {
  local sv="v0.${K8S_VERSION#v1.}"
  rm -rf peers/k8s peers/etcd peers/capi
  mkdir -p peers/k8s peers/etcd peers/capi
  (cd peers/etcd && go mod init fledge.local/peers/etcd && go mod edit -go=1.26 &&
    go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  (cd peers/capi && go mod init fledge.local/peers/capi && go mod edit -go=1.26 &&
    go get -tool "sigs.k8s.io/cluster-api@$CAPI_VERSION" \
      "sigs.k8s.io/cluster-api/bootstrap/kubeadm@$CAPI_VERSION" \
      "sigs.k8s.io/cluster-api/controlplane/kubeadm@$CAPI_VERSION" \
      "sigs.k8s.io/cluster-api/cmd/clusterctl@$CAPI_VERSION")
  local mods
  mods=$(cd peers/k8s && staging_modules)
  (cd peers/k8s && go mod init fledge.local/peers/k8s && go mod edit -go=1.26 &&
    for m in $mods; do go mod edit "-replace=$m=$m@$sv"; done &&
    go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" \
      "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION")
}

case "${1:-}" in
  --regenerate) regenerate; log "wrappers re-created; review and commit peers/"; exit 0 ;;
  --download)
    for w in k8s etcd capi; do log "go mod download -x in peers/$w"; (cd "peers/$w" && go mod download -x); done
    exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--print-dir|--download|--regenerate]" >&2; exit 2 ;;
esac

# The k8s wrapper must replace exactly the staging modules of the pinned k8s.io/kubernetes.
check_staging() {
  local want got
  want=$(cd peers/k8s && staging_modules | sort)
  got=$(cd peers/k8s && go mod edit -json | python3 -c '
import json,sys
for r in json.load(sys.stdin).get("Replace") or []:
    print(r["Old"]["Path"])' | sort)
  if [ "$want" != "$got" ]; then
    echo "go-peers: peers/k8s/go.mod does not replace exactly the staging modules of k8s.io/kubernetes@$K8S_VERSION; run $0 --regenerate" >&2
    diff <(echo "$want") <(echo "$got") >&2 || true
    exit 1
  fi
}

# build WRAPPER OUT PACKAGE LDFLAGS [TAGS]
build() {
  local w=$1 out=$2 pkg=$3 ld=$4 tags=${5:-}
  local dir; dir=$(wrapper_dir "$w")
  mkdir -p "$dir"
  if [ -x "$dir/$out" ]; then log "cached: $dir/$out"; return 0; fi
  log "go build $pkg -> $out"
  local t0=$SECONDS
  (cd "peers/$w" && go build -trimpath -pgo=off ${tags:+-tags "$tags"} -ldflags "$ld" \
    -o "$dir/.$out.tmp" "$pkg")
  mv "$dir/.$out.tmp" "$dir/$out"
  log "built $out in $((SECONDS - t0))s"
}

start=$SECONDS
mkdir -p "$ROOT"

# --- etcd ------------------------------------------------------------------------------
build etcd etcd go.etcd.io/etcd/server/v3 "-s -w"

# --- kube-apiserver, kube-controller-manager -------------------------------------------
check_staging
minor=$(echo "$K8S_VERSION" | cut -d. -f2)
KLD="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  KLD="$KLD -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  KLD="$KLD -X $p.gitTreeState=clean -X $p.buildDate=2000-01-01T00:00:00Z"
done
build k8s kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$KLD" selinux,notest
build k8s kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$KLD" selinux,notest

# --- Cluster API -----------------------------------------------------------------------
cminor=$(echo "$CAPI_VERSION" | cut -d. -f2)
CLD="-s -w"
for k in "gitVersion=$CAPI_VERSION" gitMajor=1 "gitMinor=$cminor" gitTreeState=clean \
  buildDate=2000-01-01T00:00:00Z; do
  CLD="$CLD -X sigs.k8s.io/cluster-api/version.$k"
done
build capi clusterctl sigs.k8s.io/cluster-api/cmd/clusterctl "$CLD"
build capi capi-manager sigs.k8s.io/cluster-api "$CLD"
build capi capi-kubeadm-bootstrap-manager sigs.k8s.io/cluster-api/bootstrap/kubeadm "$CLD"
build capi capi-kubeadm-control-plane-manager sigs.k8s.io/cluster-api/controlplane/kubeadm "$CLD"

# --- the combined directory ------------------------------------------------------------
BIN=$(combined_dir)
mkdir -p "$BIN"
for w in k8s etcd capi; do
  d=$(wrapper_dir "$w")
  for f in "$d"/*; do ln -sfn "$f" "$BIN/$(basename "$f")"; done
done
capi_src=$(cd peers/capi && go mod download -json "sigs.k8s.io/cluster-api@$CAPI_VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
printf '%s\n' "$capi_src" > "$BIN/cluster-api.dir"
# CAPV's module is only downloaded (its CRDs, supervisor-mode group included, are test data).
capv_src=$(cd "$ROOT" && go mod download -json "sigs.k8s.io/cluster-api-provider-vsphere@$CAPV_VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
printf '%s\n' "$capv_src" > "$BIN/capv.dir"
printf 'kubernetes %s\netcd %s\ncluster-api %s\n' "$K8S_VERSION" "$ETCD_VERSION" "$CAPI_VERSION" > "$BIN/versions"
ln -sfn "$BIN" "$ROOT/current"   # what the test harness uses when FLEDGE_ASSETS_BIN is unset
log "peers ready in $BIN ($((SECONDS - start))s)"
