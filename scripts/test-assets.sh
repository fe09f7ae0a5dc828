#!/usr/bin/env bash
# Obtain the real Kubernetes components the tests run against:
#   kube-apiserver and kube-controller-manager v1.20.2, built from Debian bookworm's
#   `kubernetes` source package with Debian's Go 1.19, and etcd from Debian's etcd-server.
#
# Uses the apt sources already configured on this machine (read from /etc/apt), with a
# private apt state directory: nothing is installed system-wide. Binaries are cached in
#   ${FLEDGE_ASSETS:-$HOME/.cache/fledge/k8s-1.20.2}/bin
# and the script exits at once when they are present. It is idempotent and safe to
# interrupt: every step writes into a temporary name and renames on success.
#
# Usage: scripts/test-assets.sh [--print-dir]
set -euo pipefail

K8S_SRC_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
ASSETS="${FLEDGE_ASSETS:-$HOME/.cache/fledge/k8s-1.20.2}"
BIN="$ASSETS/bin"
WORK="$ASSETS/work"

if [ "${1:-}" = "--print-dir" ]; then echo "$BIN"; exit 0; fi

log() { printf '[test-assets %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

have_all() {
  [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && [ -x "$BIN/etcd" ] && [ -f "$BIN/.complete" ]
}

if have_all; then
  log "cached: $BIN (kube-apiserver, kube-controller-manager, etcd)"
  exit 0
fi

start=$(date +%s)
mkdir -p "$WORK" "$BIN"

# --- private apt configuration, derived from the machine's own sources ---------------
APT="$WORK/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/sources.list.d"
rm -f "$APT/sources.list.d/"*
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  # deb822: add deb-src to every stanza's Types line.
  sed -E 's/^Types:[[:space:]]*deb[[:space:]]*$/Types: deb deb-src/' "$f" > "$APT/sources.list.d/$(basename "$f")"
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] || continue
  { grep -E '^[[:space:]]*deb[[:space:]]' "$f" || true
    grep -E '^[[:space:]]*deb[[:space:]]' "$f" | sed -E 's/^([[:space:]]*)deb /\1deb-src /' || true
  } > "$APT/sources.list.d/$(basename "$f" .list)-fledge.list"
done
APT_OPTS=(
  -o "Dir::Etc::sourcelist=/dev/null"
  -o "Dir::Etc::sourceparts=$APT/sources.list.d"
  -o "Dir::State::Lists=$APT/lists"
  -o "Dir::Cache=$APT/cache"
  -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=root"
)

if [ ! -f "$APT/.updated" ]; then
  log "apt-get update (private lists in $APT)"
  apt-get "${APT_OPTS[@]}" update -q >&2
  touch "$APT/.updated"
fi

# --- downloads -------------------------------------------------------------------------
DEBS="$WORK/debs"
mkdir -p "$DEBS"
if [ ! -f "$DEBS/.complete" ]; then
  log "downloading golang-1.19, etcd-server, reflect2 debs"
  (cd "$DEBS" && apt-get "${APT_OPTS[@]}" download golang-1.19-go golang-1.19-src etcd-server golang-github-modern-go-reflect2-dev >&2)
  touch "$DEBS/.complete"
fi
SRC="$WORK/src"
mkdir -p "$SRC"
if [ ! -f "$SRC/.complete" ]; then
  log "downloading kubernetes source package $K8S_SRC_VERSION"
  (cd "$SRC" && apt-get "${APT_OPTS[@]}" source --download-only "kubernetes=$K8S_SRC_VERSION" >&2)
  touch "$SRC/.complete"
fi

# --- unpack ----------------------------------------------------------------------------
PREFIX="$WORK/prefix"
if [ ! -f "$PREFIX/.complete" ]; then
  log "unpacking debs"
  rm -rf "$PREFIX.tmp" && mkdir -p "$PREFIX.tmp"
  for d in "$DEBS"/*.deb; do dpkg -x "$d" "$PREFIX.tmp"; done
  rm -rf "$PREFIX" && mv "$PREFIX.tmp" "$PREFIX"
  touch "$PREFIX/.complete"
fi
GOROOT_DIR="$PREFIX/usr/lib/go-1.19"
[ -x "$GOROOT_DIR/bin/go" ] || { log "go not found at $GOROOT_DIR/bin/go"; exit 1; }

TREE="$WORK/gopath/src/k8s.io/kubernetes"
if [ ! -f "$WORK/.tree-complete" ]; then
  log "unpacking kubernetes source"
  rm -rf "$WORK/tree.tmp" "$WORK/gopath"
  dsc=$(ls "$SRC"/kubernetes_*.dsc | head -n1)
  dpkg-source -x --no-check "$dsc" "$WORK/tree.tmp" >&2
  log "replacing vendored modern-go/reflect2 with Debian's 1.0.2"
  rm -rf "$WORK/tree.tmp/vendor/github.com/modern-go/reflect2"
  cp -a "$PREFIX/usr/share/gocode/src/github.com/modern-go/reflect2" "$WORK/tree.tmp/vendor/github.com/modern-go/reflect2"
  rm -f "$WORK/tree.tmp/vendor/github.com/modern-go/reflect2/go.mod"
  mkdir -p "$(dirname "$TREE")"
  mv "$WORK/tree.tmp" "$TREE"
  touch "$WORK/.tree-complete"
fi

export GOROOT="$GOROOT_DIR" GOPATH="$WORK/gopath" GO111MODULE=off CGO_ENABLED=0 GOPROXY=off GOFLAGS=
export GOCACHE="$WORK/gocache" PATH="$GOROOT_DIR/bin:$PATH"
cd "$TREE"

OPENAPI="pkg/generated/openapi/zz_generated.openapi.go"
if [ ! -f "$OPENAPI" ]; then
  log "building openapi-gen"
  go build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  log "generating $OPENAPI"
  pkgs=()
  while IFS= read -r dir; do
    d=${dir#./}
    case "$d" in
      staging/src/k8s.io/code-generator*|staging/src/k8s.io/sample-apiserver*) continue ;;
      vendor/k8s.io/code-generator*|vendor/k8s.io/sample-apiserver*) continue ;;
      staging/src/*) pkgs+=("${d#staging/src/}") ;;
      vendor/*) pkgs+=("${d#vendor/}") ;;
      *) pkgs+=("k8s.io/kubernetes/$d") ;;
    esac
  done < <(grep -rl --include='*.go' -E '\+k8s:openapi-gen=' pkg cmd plugin staging/src 2>/dev/null | xargs -n1 dirname | sort -u)
  # de-duplicate (staging and vendor map to the same import path)
  mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
  log "openapi-gen over ${#pkgs[@]} packages"
  "$WORK/openapi-gen" \
    --input-dirs "$(IFS=,; echo "${pkgs[*]}")" \
    --output-package k8s.io/kubernetes/pkg/generated/openapi \
    --output-file-base zz_generated.openapi.tmp \
    --go-header-file hack/boilerplate/boilerplate.generatego.txt \
    --output-base "$GOPATH/src" \
    --report-filename /dev/null >&2
  mv pkg/generated/openapi/zz_generated.openapi.tmp.go "$OPENAPI"
fi

# Stamp the real version (GOPATH builds otherwise report v0.0.0-master) and drop symbols.
VPKG=k8s.io/kubernetes/vendor/k8s.io/component-base/version
CPKG=k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version
LDFLAGS="-s -w"
for p in "$VPKG" "$CPKG"; do
  LDFLAGS="$LDFLAGS -X $p.gitVersion=v1.20.2 -X $p.gitMajor=1 -X $p.gitMinor=20 -X $p.gitTreeState=clean"
done
for cmd in kube-apiserver kube-controller-manager; do
  if [ ! -x "$BIN/$cmd" ]; then
    log "go build $cmd (takes a few minutes)"
    go build -tags selinux,notest -trimpath -ldflags "$LDFLAGS" -o "$BIN/$cmd.tmp" "./cmd/$cmd"
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  fi
done

if [ ! -x "$BIN/etcd" ]; then
  src_etcd="$PREFIX/usr/bin/etcd"
  [ -x "$src_etcd" ] || { log "etcd binary not found in the etcd-server deb ($src_etcd)"; exit 1; }
  cp "$src_etcd" "$BIN/etcd.tmp" && mv "$BIN/etcd.tmp" "$BIN/etcd"
fi

"$BIN/kube-apiserver" --version >&2
"$BIN/etcd" --version | head -n1 >&2
"$BIN/kube-apiserver" --version | grep -q 'v1.20.2' || { log "kube-apiserver does not report v1.20.2"; exit 1; }
touch "$BIN/.complete"
if [ -z "${FLEDGE_KEEP_WORK:-}" ]; then
  log "removing build work space $WORK (set FLEDGE_KEEP_WORK=1 to keep it)"
  rm -rf "$WORK"
fi
log "done in $(( $(date +%s) - start ))s: $BIN"
