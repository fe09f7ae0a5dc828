#!/usr/bin/env bash
# Build the real Go test peers from their published Go modules, pinned by the wrapper modules
# in peers/ (go.mod + go.sum only; no upstream code is in this repository):
#   peers/k8s   kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubelet,
#               kubeadm, kubectl                          (k8s.io/kubernetes)
#   peers/etcd  etcd                                      (go.etcd.io/etcd/server/v3)
#   peers/capi  clusterctl and the core, kubeadm bootstrap and kubeadm control-plane managers
#               (sigs.k8s.io/cluster-api)
#   peers/capd  capd-manager, CAPD's manager              (sigs.k8s.io/cluster-api/test, with
#               sigs.k8s.io/cluster-api replaced by CAPI_VERSION: the test module's own version
#               of it is not served)
#   peers/node  what runs on a real node besides the kubelet: crictl (sigs.k8s.io/cri-tools),
#               the CNI plugins bridge, host-local, loopback, portmap, ptp (in cni/;
#               github.com/containernetworking/plugins), flanneld (github.com/flannel-io/flannel;
#               on amd64 built with cgo, statically: its UDP backend has C code), kustomize
#               (sigs.k8s.io/kustomize/kustomize/v5). Not built: flannel's CNI plugin
#               (github.com/flannel-io/cni-plugin is not served by the Go module proxy).
#   peers/coredns  coredns (github.com/coredns/coredns), alone: v1.12.1 needs the client-go it
#               pins (v0.32), while crictl's pulls peers/node up to v0.34
#
# Binaries are cached per wrapper under ${FLEDGE_PEERS:-$HOME/.cache/fledge/peers}/<wrapper>-<hash>/
# (the hash covers the wrapper's go.mod and go.sum, the versions and BUILD_REV), so a changed pin rebuilds
# only that wrapper; each binary is built to a temporary name and renamed, so an interrupted run
# resumes where it stopped. The combined directory printed by --print-dir holds links to all of
# them (the CNI plugins as the directory cni/), plus cluster-api.dir, capd.dir, capv.dir, capa.dir,
# capz.dir and capg.dir: the paths of sigs.k8s.io/cluster-api, sigs.k8s.io/cluster-api/test,
# sigs.k8s.io/cluster-api-provider-vsphere, sigs.k8s.io/cluster-api-provider-aws/v2,
# sigs.k8s.io/cluster-api-provider-azure and sigs.k8s.io/cluster-api-provider-gcp in the Go
# module cache. cluster-api's and CAPV's config/ hold the CRDs and webhook manifests the tests
# install; capd.dir's infrastructure/docker/config holds CAPD's kustomize config; CAPA's
# config/crd/bases its identity CRDs; the four infrastructure providers' config/ and
# metadata.yaml are what tests/tests/provider_components.rs builds their components from.
# `versions` lists the pinned versions.
#
# Usage:
#   scripts/go-peers.sh               build what is missing (cold: about 40 minutes on 2 cores;
#                                     CAPD's manager alone 3-7 minutes)
#   scripts/go-peers.sh --print-dir   print the combined bin directory
#   scripts/go-peers.sh --download    only `go mod download -x` every wrapper (what the proxy serves)
#   scripts/go-peers.sh --regenerate  re-create the wrappers from the versions below
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=v1.34.4      # k8s.io/kubernetes; staging modules at v0.34.4, derived from its go.mod
ETCD_VERSION=v3.6.16     # go.etcd.io/etcd/server/v3
CAPI_VERSION=v1.13.5     # sigs.k8s.io/cluster-api (the CRDs the tests validate against)
CAPV_VERSION=v1.16.1     # sigs.k8s.io/cluster-api-provider-vsphere: CRDs only, not built
CAPA_VERSION=v2.11.1     # sigs.k8s.io/cluster-api-provider-aws/v2: its config/ only, not built
CAPZ_VERSION=v1.26.0     # sigs.k8s.io/cluster-api-provider-azure: its config/ only, not built
CAPG_VERSION=v1.12.0     # sigs.k8s.io/cluster-api-provider-gcp: its config/ only, not built
CAPD_VERSION=v1.13.7     # sigs.k8s.io/cluster-api/test (v1.13.5 is not served)
CRICTL_VERSION=v1.34.0   # sigs.k8s.io/cri-tools
CNI_VERSION=v1.10.0      # github.com/containernetworking/plugins
FLANNEL_VERSION=v0.27.4  # github.com/flannel-io/flannel
COREDNS_VERSION=v1.12.1  # github.com/coredns/coredns: the tag kubeadm v1.34 expects
KUSTOMIZE_VERSION=v5.7.1 # sigs.k8s.io/kustomize/kustomize/v5

WRAPPERS="k8s etcd capi capd node coredns"
# k8s.io/kubernetes/cmd/<x> built from peers/k8s
K8S_CMDS="kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl"
CNI_PLUGINS="main/bridge ipam/host-local main/loopback meta/portmap main/ptp"
# wrapper -> "module version" lines it must require (or replace to), checked before building
pins() {
  case $1 in
    k8s) echo "k8s.io/kubernetes $K8S_VERSION" ;;
    etcd) echo "go.etcd.io/etcd/server/v3 $ETCD_VERSION" ;;
    capi) echo "sigs.k8s.io/cluster-api $CAPI_VERSION" ;;
    capd) printf '%s\n' "sigs.k8s.io/cluster-api/test $CAPD_VERSION" "sigs.k8s.io/cluster-api $CAPI_VERSION" ;;
    node) printf '%s\n' "sigs.k8s.io/cri-tools $CRICTL_VERSION" \
      "github.com/containernetworking/plugins $CNI_VERSION" \
      "github.com/flannel-io/flannel $FLANNEL_VERSION" "sigs.k8s.io/kustomize/kustomize/v5 $KUSTOMIZE_VERSION" ;;
    coredns) echo "github.com/coredns/coredns $COREDNS_VERSION" ;;
  esac
}
# wrapper -> the packages it builds (its go.mod's tool lines)
tools() {
  case $1 in
    k8s) for c in $K8S_CMDS; do echo "k8s.io/kubernetes/cmd/$c"; done ;;
    etcd) echo go.etcd.io/etcd/server/v3 ;;
    capi) printf '%s\n' sigs.k8s.io/cluster-api sigs.k8s.io/cluster-api/bootstrap/kubeadm \
      sigs.k8s.io/cluster-api/cmd/clusterctl sigs.k8s.io/cluster-api/controlplane/kubeadm ;;
    capd) echo sigs.k8s.io/cluster-api/test/infrastructure/docker ;;
    node) echo sigs.k8s.io/cri-tools/cmd/crictl
      for c in $CNI_PLUGINS; do echo "github.com/containernetworking/plugins/plugins/$c"; done
      printf '%s\n' github.com/flannel-io/flannel sigs.k8s.io/kustomize/kustomize/v5 ;;
    coredns) echo github.com/coredns/coredns ;;
  esac
}

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
ROOT="${FLEDGE_PEERS:-$HOME/.cache/fledge/peers}"
# Bump when the build flags below change, so that cached binaries are rebuilt.
BUILD_REV=1

log() { printf '[go-peers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

wrapper_dir() { # wrapper -> cache directory for its binaries
  local h extra=
  [ -f "peers/$1/go.mod" ] && [ -f "peers/$1/go.sum" ] ||
    { echo "go-peers: peers/$1/go.mod or go.sum is missing; run $0 --regenerate" >&2; exit 1; }
  case $1 in # the versions that reach ldflags (k8s, etcd, capi: as before, so their hashes stay)
    capd) extra=" $CAPD_VERSION" ;;
    node) extra=" $CRICTL_VERSION $CNI_VERSION $FLANNEL_VERSION $KUSTOMIZE_VERSION" ;;
    coredns) extra=" $COREDNS_VERSION" ;;
  esac
  h=$( { cat "peers/$1/go.mod" "peers/$1/go.sum"; echo "$BUILD_REV $K8S_VERSION $ETCD_VERSION $CAPI_VERSION$extra"; } | sha256sum | cut -c1-12)
  echo "$ROOT/$1-$h"
}
combined_dir() {
  local h
  h=$(for w in $WRAPPERS; do wrapper_dir "$w"; done | sha256sum | cut -c1-12)
  echo "$ROOT/bin-$h"
}

if [ "${1:-}" = "--print-dir" ]; then combined_dir; exit 0; fi

command -v go >/dev/null || { echo "go-peers: Go is not installed (need Go >= 1.26.8: peers/node says go 1.26.8)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "go-peers: python3 is not installed (used to read go's JSON output)" >&2; exit 1; }

# The staging modules k8s.io/kubernetes replaces with ./staging/src paths, read from its go.mod.
staging_modules() {
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  sed -n 's|^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/.*|\1|p' "$gomod"
}

regenerate() {
  local sv="v0.${K8S_VERSION#v1.}" c pkgs
  rm -rf peers/k8s peers/etcd peers/capi peers/capd peers/node peers/coredns
  mkdir -p peers/k8s peers/etcd peers/capi peers/capd peers/node peers/coredns
  (cd peers/etcd && go mod init fledge.local/peers/etcd && go mod edit -go=1.26 &&
    go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  (cd peers/capi && go mod init fledge.local/peers/capi && go mod edit -go=1.26 &&
    go get -tool "sigs.k8s.io/cluster-api@$CAPI_VERSION" \
      "sigs.k8s.io/cluster-api/bootstrap/kubeadm@$CAPI_VERSION" \
      "sigs.k8s.io/cluster-api/controlplane/kubeadm@$CAPI_VERSION" \
      "sigs.k8s.io/cluster-api/cmd/clusterctl@$CAPI_VERSION")
  # The test module replaces sigs.k8s.io/cluster-api with ../ upstream; a replace in a dependency
  # is ignored, so the wrapper names the release (the test module's own version is not served).
  (cd peers/capd && go mod init fledge.local/peers/capd && go mod edit -go=1.26 &&
    go mod edit "-replace=sigs.k8s.io/cluster-api=sigs.k8s.io/cluster-api@$CAPI_VERSION" &&
    go get -tool "sigs.k8s.io/cluster-api/test/infrastructure/docker@$CAPD_VERSION")
  pkgs="sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  for c in $CNI_PLUGINS; do pkgs="$pkgs github.com/containernetworking/plugins/plugins/$c@$CNI_VERSION"; done
  pkgs="$pkgs github.com/flannel-io/flannel@$FLANNEL_VERSION sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  # shellcheck disable=SC2086
  (cd peers/node && go mod init fledge.local/peers/node && go mod edit -go=1.26 && go get -tool $pkgs)
  (cd peers/coredns && go mod init fledge.local/peers/coredns && go mod edit -go=1.26 &&
    go get -tool "github.com/coredns/coredns@$COREDNS_VERSION")
  local mods
  mods=$(cd peers/k8s && staging_modules)
  pkgs=
  for c in $K8S_CMDS; do pkgs="$pkgs k8s.io/kubernetes/cmd/$c@$K8S_VERSION"; done
  # shellcheck disable=SC2086
  (cd peers/k8s && go mod init fledge.local/peers/k8s && go mod edit -go=1.26 &&
    for m in $mods; do go mod edit "-replace=$m=$m@$sv"; done &&
    go get -tool $pkgs)
}

case "${1:-}" in
  --regenerate) regenerate; log "wrappers re-created; review and commit peers/"; exit 0 ;;
  --download)
    for w in $WRAPPERS; do log "go mod download -x in peers/$w"; (cd "peers/$w" && go mod download -x); done
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

# Each wrapper must pin the versions above and list every package built from it as a tool.
check_pins() {
  local w=$1 json missing=
  json=$(cd "peers/$w" && go mod edit -json) || { echo "go-peers: cannot read peers/$w/go.mod" >&2; return 1; }
  missing=$(PINS=$(pins "$w") TOOLS=$(tools "$w") python3 -c '
import json, os, sys
m = json.load(sys.stdin)
have = {r["Path"]: r["Version"] for r in m.get("Require") or []}
for r in m.get("Replace") or []:
    have[r["Old"]["Path"]] = r["New"].get("Version", r["New"]["Path"])
for line in os.environ["PINS"].split("\n"):
    mod, ver = line.split()
    if have.get(mod) != ver:
        print("  needs %s %s; go.mod has %s" % (mod, ver, have.get(mod, "nothing")))
tools = {t["Path"] for t in m.get("Tool") or []}
for t in os.environ["TOOLS"].split("\n"):
    if t not in tools:
        print("  needs tool %s; go.mod lacks it" % t)' <<<"$json") || return 1
  if [ -n "$missing" ]; then
    echo "go-peers: peers/$w/go.mod does not pin what this script builds (run $0 --regenerate):" >&2
    echo "$missing" >&2
    return 1
  fi
}

TIMES=
# build WRAPPER OUT PACKAGE LDFLAGS [TAGS]; OUT may be in a subdirectory (cni/bridge)
build() {
  local w=$1 out=$2 pkg=$3 ld=$4 tags=${5:-}
  local dir; dir=$(wrapper_dir "$w")
  local tmp; tmp="$dir/$(dirname "$out")/.$(basename "$out").tmp"
  mkdir -p "$(dirname "$dir/$out")"
  if [ -x "$dir/$out" ]; then log "cached: $dir/$out"; return 0; fi
  log "go build $pkg -> $out${tags:+ (tags $tags)}$([ "$CGO_ENABLED" = 0 ] || echo " (CGO_ENABLED=$CGO_ENABLED)")"
  local t0=$SECONDS
  if ! (cd "peers/$w" && go build -trimpath -pgo=off ${tags:+-tags "$tags"} -ldflags "$ld" \
    -o "$tmp" "$pkg"); then
    echo "go-peers: building $out ($pkg in peers/$w) failed; see the go output above" >&2
    exit 1
  fi
  mv "$tmp" "$dir/$out"
  log "built $out in $((SECONDS - t0))s ($(du -h "$dir/$out" | cut -f1))"
  TIMES="$TIMES $out=$((SECONDS - t0))s"
}

# go mod download -json MODULE@VERSION in peers/WRAPPER -> the module's directory
module_dir() {
  local d
  d=$(cd "peers/$1" && go mod download -json "$2" |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get("Dir", ""))')
  [ -n "$d" ] && [ -d "$d" ] || { echo "go-peers: $2 is not in the Go module cache (go mod download failed)" >&2; exit 1; }
  echo "$d"
}

start=$SECONDS
mkdir -p "$ROOT"
bad=
for w in $WRAPPERS; do check_pins "$w" || bad="$bad $w"; done
[ -z "$bad" ] || exit 1
check_staging

# --- etcd ------------------------------------------------------------------------------
build etcd etcd go.etcd.io/etcd/server/v3 "-s -w"

# --- Kubernetes: kube-apiserver, kube-controller-manager, then the node and client tools ---
minor=$(echo "$K8S_VERSION" | cut -d. -f2)
KLD="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  KLD="$KLD -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  KLD="$KLD -X $p.gitTreeState=clean -X $p.buildDate=2000-01-01T00:00:00Z"
done
for c in $K8S_CMDS; do
  build k8s "$c" "k8s.io/kubernetes/cmd/$c" "$KLD" selinux,notest
done

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

# --- CAPD (the Docker infrastructure provider) -------------------------------------------
dminor=$(echo "$CAPD_VERSION" | cut -d. -f2)
DLD="-s -w"
for k in "gitVersion=$CAPD_VERSION" gitMajor=1 "gitMinor=$dminor" gitTreeState=clean \
  buildDate=2000-01-01T00:00:00Z; do
  DLD="$DLD -X sigs.k8s.io/cluster-api/version.$k"
done
build capd capd-manager sigs.k8s.io/cluster-api/test/infrastructure/docker "$DLD"

# --- node programs -----------------------------------------------------------------------
build node crictl sigs.k8s.io/cri-tools/cmd/crictl \
  "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION#v}"
for c in $CNI_PLUGINS; do
  build node "cni/$(basename "$c")" "github.com/containernetworking/plugins/plugins/$c" \
    "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_VERSION"
done
# flanneld does not build with CGO_ENABLED=0 on amd64 (its UDP backend, always linked in, has a C
# proxy), so, as upstream's Makefile does on amd64, it is built with cgo and linked statically; the
# netgo and osusergo tags keep glibc's resolver and user lookup out of the static binary.
if [ "$(go env GOARCH)" = amd64 ]; then
  cc=$(go env CC)
  command -v "$cc" >/dev/null ||
    { echo "go-peers: flanneld needs cgo on amd64, but the C compiler '$cc' is missing (apt-get install gcc)" >&2; exit 1; }
  [ -n "$(cd "$ROOT" && "$cc" -print-file-name=libc.a | grep /)" ] ||
    { echo "go-peers: flanneld is linked statically, but $cc finds no libc.a (apt-get install libc6-dev)" >&2; exit 1; }
  CGO_ENABLED=1 build node flanneld github.com/flannel-io/flannel \
    "-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$FLANNEL_VERSION -extldflags -static" netgo,osusergo
else
  build node flanneld github.com/flannel-io/flannel \
    "-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$FLANNEL_VERSION"
fi
build coredns coredns github.com/coredns/coredns \
  "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
build node kustomize sigs.k8s.io/kustomize/kustomize/v5 \
  "-s -w -X sigs.k8s.io/kustomize/api/provenance.version=kustomize/$KUSTOMIZE_VERSION -X sigs.k8s.io/kustomize/api/provenance.buildDate=2000-01-01T00:00:00Z"

# --- the combined directory ------------------------------------------------------------
BIN=$(combined_dir)
mkdir -p "$BIN"
for w in $WRAPPERS; do
  d=$(wrapper_dir "$w")
  for f in "$d"/*; do ln -sfn "$f" "$BIN/$(basename "$f")"; done
done
module_dir capi "sigs.k8s.io/cluster-api@$CAPI_VERSION" > "$BIN/cluster-api.dir"
capd_src=$(module_dir capd "sigs.k8s.io/cluster-api/test@$CAPD_VERSION")
[ -d "$capd_src/infrastructure/docker/config" ] ||
  { echo "go-peers: $capd_src has no infrastructure/docker/config (CAPD's kustomize config)" >&2; exit 1; }
printf '%s\n' "$capd_src" > "$BIN/capd.dir"
# CAPV's module is only downloaded (its CRDs, supervisor-mode group included, are test data).
capv_src=$(cd "$ROOT" && go mod download -json "sigs.k8s.io/cluster-api-provider-vsphere@$CAPV_VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
printf '%s\n' "$capv_src" > "$BIN/capv.dir"
# CAPA's module, likewise: its cluster-scoped identity CRDs, which shared/crds does not hold.
capa_src=$(cd "$ROOT" && go mod download -json "sigs.k8s.io/cluster-api-provider-aws/v2@$CAPA_VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
[ -f "$capa_src/config/crd/bases/infrastructure.cluster.x-k8s.io_awsclusterstaticidentities.yaml" ] ||
  { echo "go-peers: $capa_src has no identity CRDs under config/crd/bases" >&2; exit 1; }
printf '%s\n' "$capa_src" > "$BIN/capa.dir"
# CAPZ's and CAPG's modules, likewise: their config/ (kustomize) and metadata.yaml.
while read -r name mod; do
  src=$(cd "$ROOT" && go mod download -json "$mod" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("Dir", ""))')
  [ -n "$src" ] && [ -f "$src/metadata.yaml" ] && [ -d "$src/config/default" ] ||
    { echo "go-peers: $mod has no metadata.yaml and config/default (go mod download failed?)" >&2; exit 1; }
  printf '%s\n' "$src" > "$BIN/$name.dir"
done <<EOF
capz sigs.k8s.io/cluster-api-provider-azure@$CAPZ_VERSION
capg sigs.k8s.io/cluster-api-provider-gcp@$CAPG_VERSION
EOF
{
  printf 'kubernetes %s\netcd %s\ncluster-api %s\ncapd %s\n' "$K8S_VERSION" "$ETCD_VERSION" "$CAPI_VERSION" "$CAPD_VERSION"
  printf 'crictl %s\ncni-plugins %s\nflannel %s\ncoredns %s\nkustomize %s\n' "$CRICTL_VERSION" "$CNI_VERSION" \
    "$FLANNEL_VERSION" "$COREDNS_VERSION" "$KUSTOMIZE_VERSION"
} > "$BIN/versions"
missing=
for f in etcd $K8S_CMDS clusterctl capi-manager capi-kubeadm-bootstrap-manager \
  capi-kubeadm-control-plane-manager capd-manager crictl flanneld coredns kustomize; do
  [ -x "$BIN/$f" ] || missing="$missing $f"
done
for c in $CNI_PLUGINS; do [ -x "$BIN/cni/$(basename "$c")" ] || missing="$missing cni/$(basename "$c")"; done
[ -z "$missing" ] || { echo "go-peers: missing from $BIN:$missing" >&2; exit 1; }
ln -sfn "$BIN" "$ROOT/current"   # what the test harness uses when FLEDGE_ASSETS_BIN is unset
[ -z "$TIMES" ] || log "build times:$TIMES"
log "peers ready in $BIN ($((SECONDS - start))s)"
