#!/usr/bin/env bash
# Builds (resumably, cached) the docker images of the real-node test: Cluster API's docker
# provider (CAPD) creates privileged node containers from them, and kubeadm boots them.
# No image registry is reachable here, so every image is built locally and tagged with the name
# its consumer expects:
#   fledge.test/base:bookworm        Debian bookworm minbase (debootstrap from the machine's
#                                    configured apt mirror) + tini, iptables, conntrack, ipset
#   registry.k8s.io/...              what `kubeadm config images list --kubernetes-version v1.34.4`
#                                    names (apiserver, controller-manager, scheduler, proxy,
#                                    etcd 3.6.5-0 (runs our etcd 3.6.16), coredns v1.12.1 (runs
#                                    the coredns built by go-peers), pause 3.10.1 (tini + sleep))
#   gcr.io/k8s-staging-cluster-api/* the Cluster API managers, named as each provider's
#                                    kustomize config/default names them (binary at /manager);
#                                    also tagged registry.k8s.io/cluster-api/*:<version>
#   ghcr.io/flannel-io/flannel:*     flanneld (+ iptables) at /opt/bin/flanneld
#   kindest/haproxy:v20230606-42a2262b  CAPD's default load balancer: Debian's haproxy, config at
#                                    /usr/local/etc/haproxy/haproxy.cfg, reloaded on SIGHUP
#   fledge.test/node:v1.34.4         the node (also tagged kindest/node:v1.34.4, CAPD's default
#                                    name): systemd, containerd, runc, kubelet, kubeadm, kubectl,
#                                    crictl, CNI plugins, every image above except the load
#                                    balancer preloaded into containerd's k8s.io namespace
#
# Usage: images/node-image.sh [--preload IMAGE]... [--hook SCRIPT]... [--bin DIR] [--shim PATH]
#                             [--verify] [--only rootfs|base|images]
#   --preload IMAGE  a further image of the local docker engine to preload into the node (repeatable)
#   --hook SCRIPT    run `SCRIPT ROOTFS` on the node's root filesystem before it becomes an image
#                    (repeatable; e.g. a script running images/bake-agent.sh "$1" and
#                    images/bake-providers.sh "$1" ...). Hooks run on every call (cheap); the
#                    resulting tree is part of the node image's cache key.
#   --bin DIR        the peers directory (default: scripts/go-peers.sh --print-dir)
#   --shim PATH      the OCI runtime shim (default: scripts/docker-engine.sh --print-shim); baked
#                    in as containerd's runc BinaryName only when this host's capability bounding
#                    set lacks CAP_SYS_RESOURCE
#   --verify         afterwards boot the node as CAPD does and run a minimal `kubeadm init`
#   --only STEP      stop after that step (rootfs: the debootstrap tars; base; images: all but the node)
# Cache: ${FLEDGE_NODE_CACHE:-~/.cache/fledge/node}/ (debootstrap tarball, root filesystem
# tars), and the docker engine itself: every image carries a fledge.test.key label, the hash of
# its inputs, and is rebuilt only when that changes. Each step writes to a temporary name and
# renames, so an interrupted run resumes at the step it stopped in.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
NODE_FILES="$REPO/images/node"

K8S_VERSION=v1.34.4
SUITE=bookworm
# Bump when this script changes what it builds in a way its inputs don't show.
REV=1
ETCD_TAG=3.6.5-0        # the tag kubeadm v1.34.4 asks for (the binary inside is our etcd 3.6.16)
COREDNS_TAG=v1.12.1     # the tag kubeadm v1.34.4 asks for
PAUSE_TAG=3.10.1
LB_IMAGE=kindest/haproxy:v20230606-42a2262b   # CAPD loadbalancer.DefaultImageRepository/Image/Tag
NODE_IMAGE="fledge.test/node:$K8S_VERSION"
BASE_IMAGE="fledge.test/base:$SUITE"
KEY_LABEL=fledge.test.key

BASE_PKGS=tini,iptables,conntrack,ipset,ca-certificates
NODE_PKGS=systemd,systemd-sysv,dbus,containerd,runc,iptables,conntrack,ethtool,socat,kmod,iproute2,util-linux,mount,procps,ca-certificates,python3-minimal,openssl
LB_PKGS=haproxy

CACHE="${FLEDGE_NODE_CACHE:-$HOME/.cache/fledge/node}"
export DOCKER_BUILDKIT=0
log() { echo "[node-image $(date +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

PRELOAD=(); HOOKS=(); BIN=""; SHIM=""; VERIFY=0; ONLY=""
usage="usage: images/node-image.sh [--preload IMAGE]... [--hook SCRIPT]... [--bin DIR] [--shim PATH] [--verify] [--only rootfs|base|images]"
while [ $# -gt 0 ]; do
  case "$1" in
    --preload) PRELOAD+=("${2:?$usage}"); shift 2 ;;
    --hook) HOOKS+=("$(readlink -f "${2:?$usage}")"); shift 2 ;;
    --bin) BIN="${2:?$usage}"; shift 2 ;;
    --shim) SHIM="${2:?$usage}"; shift 2 ;;
    --verify) VERIFY=1; shift ;;
    --only) ONLY="${2:?$usage}"; shift 2 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
mkdir -p "$CACHE"
T0=$SECONDS
WORK=""
BUILD_CTR=""
cleanup() {
  [ -z "$BUILD_CTR" ] || docker rm -f -v "$BUILD_CTR" >/dev/null 2>&1 || true
  [ -z "$WORK" ] || $SUDO rm -rf "$WORK"
}
trap cleanup EXIT
WORK="$(mktemp -d "$CACHE/.work.XXXXXX")"

hash_str() { sha256sum | cut -c1-16; }

# --- apt mirror (the machine's configured one; never written into the project) -------------
mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$f"
  done | head -1
}
MIRROR="$(mirror)"
[ -n "$MIRROR" ] || MIRROR="$(awk '/^deb / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"

# --- root filesystems: debootstrap (minbase + a package list) ---------------------------------
# Each package list gets its own debootstrap tarball (--make-tarball downloads once;
# --unpack-tarball installs exactly what the tarball holds), cached by the list.
ensure_tarball() { # PKGS -> path of the tarball
  local pkgs=$1
  local key; key="$(echo "$REV $SUITE minbase $pkgs" | hash_str)"
  local tarball="$CACHE/debootstrap-$SUITE-$key.tgz"
  if [ ! -f "$tarball" ]; then
    [ -n "$MIRROR" ] || die "no Debian mirror found in /etc/apt/sources.list(.d)"
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || {
      log "installing debootstrap"
      $SUDO apt-get update -q >&2
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    log "debootstrap --make-tarball (minbase + $pkgs) from $MIRROR"
    local t=$SECONDS
    $SUDO /usr/sbin/debootstrap --variant=minbase --include="$pkgs" --make-tarball="$tarball.tmp" \
      "$SUITE" "$WORK/dl-$key" "$MIRROR" > "$WORK/make-tarball-$key.log" 2>&1 ||
      { tail -30 "$WORK/make-tarball-$key.log" >&2; exit 1; }
    mv "$tarball.tmp" "$tarball"
    $SUDO rm -rf "$WORK/dl-$key"
    log "tarball in $((SECONDS - t))s: $tarball ($(du -h "$tarball" | cut -f1))"
  fi
  echo "$tarball"
}

# rootfs_tar NAME PKGS FIXUP_FUNCTION -> prints the path of a cached tar of that root filesystem
rootfs_tar() {
  local name=$1 pkgs=$2 fix=$3
  local key; key="$(echo "$REV $SUITE $pkgs $(declare -f "$fix" common_fixups)" | hash_str)"
  local out="$CACHE/rootfs-$name-$key.tar"
  if [ ! -f "$out" ]; then
    local tarball; tarball="$(ensure_tarball "$pkgs")"
    local root="$WORK/rootfs-$name" t=$SECONDS
    log "debootstrap $name rootfs (minbase + $pkgs)"
    $SUDO /usr/sbin/debootstrap --variant=minbase --include="$pkgs" --unpack-tarball="$tarball" \
      "$SUITE" "$root" "$MIRROR" > "$WORK/debootstrap-$name.log" 2>&1 ||
      { tail -30 "$WORK/debootstrap-$name.log" >&2; exit 1; }
    "$fix" "$root"
    common_fixups "$root"
    $SUDO tar --numeric-owner --xattrs --xattrs-include='*' -C "$root" -cf "$out.tmp" .
    $SUDO rm -rf "$root"
    mv "$out.tmp" "$out"
    log "$name rootfs in $((SECONDS - t))s ($(du -h "$out" | cut -f1))"
  fi
  echo "$out"
}
common_fixups() {
  local root=$1
  $SUDO rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/*.bin "$root"/var/log/*.log "$root"/var/log/apt/* "$root/debootstrap"
  $SUDO rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
  : | $SUDO tee "$root/etc/machine-id" >/dev/null
  $SUDO rm -f "$root/var/lib/dbus/machine-id"
}
fix_base() { :; }
fix_lb() { :; }
fix_node() {
  local root=$1
  # No getty on the container's console (docker's tty carries the boot log CAPD reads), no
  # apt timers (no network use at run time), no kernel log reading.
  local u
  for u in getty.target console-getty.service apt-daily.timer apt-daily-upgrade.timer \
           systemd-binfmt.service e2scrub_all.timer fstrim.timer; do
    $SUDO ln -sf /dev/null "$root/etc/systemd/system/$u"
  done
  printf '[Journal]\nReadKMsg=no\n' | $SUDO install -D -m 0644 /dev/stdin "$root/etc/systemd/journald.conf.d/10-fledge-node.conf"
}


# ============================================================================================
BASE_TAR="$(rootfs_tar base "$BASE_PKGS" fix_base)"
LB_TAR="$(rootfs_tar lb "$LB_PKGS" fix_lb)"
NODE_TAR="$(rootfs_tar node "$NODE_PKGS" fix_node)"
[ "$ONLY" != rootfs ] || { log "root filesystems ready in $((SECONDS - T0))s"; exit 0; }

# --- inputs: peers, shim ------------------------------------------------------------------
command -v docker >/dev/null || die "docker is not installed (scripts/docker-engine.sh)"
docker info >/dev/null 2>&1 || die "the docker engine is not running (scripts/docker-engine.sh)"
[ -n "$BIN" ] || BIN="$(scripts/go-peers.sh --print-dir)"
[ -d "$BIN" ] || die "$BIN: no such directory (scripts/go-peers.sh builds it)"
versions_get() { awk -v k="$1" '$1 == k {print $2}' "$BIN/versions" 2>/dev/null; }
CAPI_DIR="$(cat "$BIN/cluster-api.dir" 2>/dev/null || true)"
CAPD_DIR="$(cat "$BIN/capd.dir" 2>/dev/null || true)"
GOMODCACHE_DIR="$(go env GOMODCACHE 2>/dev/null || echo "$HOME/go/pkg/mod")"
[ -n "$CAPD_DIR" ] || CAPD_DIR="$GOMODCACHE_DIR/sigs.k8s.io/cluster-api/test@v1.13.7"
CAPI_VERSION="$(versions_get cluster-api)"; CAPI_VERSION="${CAPI_VERSION:-v1.13.5}"
CAPD_VERSION="${CAPD_DIR##*@}"
FLANNEL_VERSION="$(versions_get flannel)"; FLANNEL_VERSION="${FLANNEL_VERSION:-v0.27.4}"

# The shim goes into the node (containerd's runc BinaryName) only where this host's capability
# bounding set lacks CAP_SYS_RESOURCE (bit 24): privileged mode cannot grant it there.
NEED_SHIM=0
capbnd="$(awk '/^CapBnd:/ {print $2}' /proc/self/status)"
(( (16#$capbnd >> 24) & 1 )) || NEED_SHIM=1
if [ "$NEED_SHIM" = 1 ]; then
  if [ -z "$SHIM" ]; then
    [ -x scripts/docker-engine.sh ] || die "no --shim and no scripts/docker-engine.sh"
    SHIM="$(scripts/docker-engine.sh --print-shim)"
  fi
  [ -x "$SHIM" ] || die "OCI runtime shim $SHIM: missing (scripts/docker-engine.sh builds it)"
fi

# sha256 of a file, remembered by (path, size, mtime)
SUMS="$CACHE/sums"; mkdir -p "$SUMS"
file_sum() {
  local f; f="$(readlink -f "$1")"
  local id; id="$(stat -c '%n %s %Y' "$f" | hash_str)"
  [ -s "$SUMS/$id" ] || sha256sum "$f" | cut -c1-64 > "$SUMS/$id"
  cat "$SUMS/$id"
}
image_key() { docker image inspect -f "{{index .Config.Labels \"$KEY_LABEL\"}}" "$1" 2>/dev/null || true; }
image_id() { docker image inspect -f '{{.Id}}' "$1"; }
# up_to_date KEY TAG... : every tag exists with that key
up_to_date() {
  local key=$1 t; shift
  for t in "$@"; do [ "$(image_key "$t")" = "$key" ] || return 1; done
}
tag_all() { local src=$1 t; shift; for t in "$@"; do [ "$t" = "$src" ] || docker tag "$src" "$t"; done; }

# --- 1. base image -------------------------------------------------------------------------
IMPORT_ENV='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
import_rootfs() { # TAR KEY TAG [--change ...]
  local tar=$1 key=$2 tag=$3; shift 3
  if up_to_date "$key" "$tag"; then log "cached: $tag"; return 0; fi
  log "docker import $tag"
  docker import -c "$IMPORT_ENV" -c "LABEL $KEY_LABEL=$key" "$@" "$tar" "$tag" >/dev/null
}
BASE_KEY="$(echo "$REV $(basename "$BASE_TAR")" | hash_str)"
import_rootfs "$BASE_TAR" "$BASE_KEY" "$BASE_IMAGE"
BASE_ID="$(image_id "$BASE_IMAGE")"
[ "$ONLY" != base ] || { log "done in $((SECONDS - T0))s"; exit 0; }

# --- 2. component images: FROM the base + one binary --------------------------------------
PRELOAD_TAGS=()   # primary tags to preload into the node
SKIPPED=()
# component TAGS(comma-separated; first is primary) BINARY DEST ENTRYPOINT_JSON [EXTRA DOCKERFILE LINES]
component() {
  local tags=$1 bin=$2 dest=$3 entry=$4 extra=${5:-}
  local -a tagv; IFS=, read -r -a tagv <<< "$tags"
  local src="" sum="none"
  if [ -n "$bin" ]; then
    src="$BIN/$bin"
    if [ ! -f "$src" ]; then
      log "warning: $src missing: not building ${tagv[0]}"
      SKIPPED+=("${tagv[0]}"); return 0
    fi
    sum="$(file_sum "$src")"
  fi
  local df
  df="FROM $BASE_IMAGE"$'\n'
  [ -z "$bin" ] || df+="COPY bin $dest"$'\n'
  [ -z "$extra" ] || df+="$extra"$'\n'
  df+="ENTRYPOINT $entry"$'\n'
  local key; key="$(echo "$REV $BASE_ID $sum $df" | hash_str)"
  df+="LABEL $KEY_LABEL=$key"$'\n'
  PRELOAD_TAGS+=("${tagv[0]}")
  if up_to_date "$key" "${tagv[@]}"; then log "cached: ${tagv[0]}"; return 0; fi
  if [ "$(image_key "${tagv[0]}")" != "$key" ]; then
    local old_id; old_id="$(docker image inspect -f '{{.Id}}' "${tagv[0]}" 2>/dev/null || true)"
    local ctx="$WORK/ctx-$bin-$RANDOM"; mkdir -p "$ctx"
    [ -z "$bin" ] || { ln "$(readlink -f "$src")" "$ctx/bin" 2>/dev/null || cp "$(readlink -f "$src")" "$ctx/bin"; chmod 0755 "$ctx/bin"; }
    printf '%s' "$df" > "$ctx/Dockerfile"
    local t=$SECONDS
    docker build -q -t "${tagv[0]}" "$ctx" > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log" >&2; die "docker build ${tagv[0]} failed"; }
    rm -rf "$ctx"
    log "built ${tagv[0]} in $((SECONDS - t))s"
    tag_all "${tagv[0]}" "${tagv[@]}"
    # the replaced image, unless a container still uses it
    [ -z "$old_id" ] || docker rmi "$old_id" >/dev/null 2>&1 || true
  fi
  tag_all "${tagv[0]}" "${tagv[@]}"
}
# The image a provider's kustomize config/default runs (manager_image_patch.yaml).
kustomize_image() {
  local f="$1/manager_image_patch.yaml"
  [ -f "$f" ] || die "$f: missing"
  sed -n 's/^[[:space:]-]*image:[[:space:]]*//p' "$f" | head -1
}
release_name() { # kustomize image -> registry.k8s.io/cluster-api/<name>:<version>
  local n="${1##*/}"; echo "registry.k8s.io/cluster-api/${n%%:*}:$2"
}

# kube-proxy and flanneld write iptables rules into the node's network namespace, next to
# docker's (written with the host's iptables): use the same backend as the host.
IPT_MODE=nft
iptables -V 2>/dev/null | grep -q legacy && IPT_MODE=legacy
IPT_SELECT=""
[ "$IPT_MODE" = nft ] || IPT_SELECT='RUN update-alternatives --set iptables /usr/sbin/iptables-legacy && update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy'

R=registry.k8s.io
component "$R/kube-apiserver:$K8S_VERSION" kube-apiserver /usr/local/bin/kube-apiserver '["/usr/local/bin/kube-apiserver"]'
component "$R/kube-controller-manager:$K8S_VERSION" kube-controller-manager /usr/local/bin/kube-controller-manager '["/usr/local/bin/kube-controller-manager"]'
component "$R/kube-scheduler:$K8S_VERSION" kube-scheduler /usr/local/bin/kube-scheduler '["/usr/local/bin/kube-scheduler"]'
component "$R/kube-proxy:$K8S_VERSION" kube-proxy /usr/local/bin/kube-proxy '["/usr/local/bin/kube-proxy"]' "$IPT_SELECT"
# etcd: the tag kubeadm v1.34.4 asks for; the binary is etcd 3.6.16 (scripts/go-peers.sh)
component "$R/etcd:$ETCD_TAG" etcd /usr/local/bin/etcd '["/usr/local/bin/etcd"]'
component "$R/coredns/coredns:$COREDNS_TAG" coredns /coredns '["/coredns"]'
# pause: no pause binary here; tini (PID 1: reaps, exits on SIGTERM) over sleep
component "$R/pause:$PAUSE_TAG" "" "" '["/usr/bin/tini", "-g", "--", "/bin/sleep", "infinity"]'
if [ -n "$CAPI_DIR" ]; then
  img="$(kustomize_image "$CAPI_DIR/config/default")"
  component "$img,$(release_name "$img" "$CAPI_VERSION")" capi-manager /manager '["/manager"]'
  img="$(kustomize_image "$CAPI_DIR/bootstrap/kubeadm/config/default")"
  component "$img,$(release_name "$img" "$CAPI_VERSION")" capi-kubeadm-bootstrap-manager /manager '["/manager"]'
  img="$(kustomize_image "$CAPI_DIR/controlplane/kubeadm/config/default")"
  component "$img,$(release_name "$img" "$CAPI_VERSION")" capi-kubeadm-control-plane-manager /manager '["/manager"]'
else
  log "warning: $BIN/cluster-api.dir missing: no Cluster API manager images"
fi
img="$(kustomize_image "$CAPD_DIR/infrastructure/docker/config/default")"
component "$img,$(release_name "$img" "$CAPD_VERSION")" capd-manager /manager '["/manager"]'
component "ghcr.io/flannel-io/flannel:$FLANNEL_VERSION" flanneld /opt/bin/flanneld '["/opt/bin/flanneld"]' \
  'RUN ["/bin/ln", "-s", "/opt/bin/flanneld", "/usr/local/bin/flanneld"]'$'\n'"$IPT_SELECT"

# CAPD's load balancer: CAPD runs it with the entrypoint `haproxy -W -db -f
# /usr/local/etc/haproxy/haproxy.cfg`, writes that file with `mkdir -p` + `cp /dev/stdin`, reads
# it back with `cp FILE /dev/stdout`, then sends SIGHUP (master-worker reload). Its
# configuration's maxconn 100000 needs ~200000 open files: images/node/haproxy-wrapper.
LB_KEY="$(echo "$REV $(basename "$LB_TAR") $(file_sum "$NODE_FILES/haproxy.cfg") $(file_sum "$NODE_FILES/haproxy-wrapper")" | hash_str)"
if ! up_to_date "$LB_KEY" "$LB_IMAGE"; then
  lbroot="$WORK/lb"; mkdir -p "$lbroot"
  $SUDO tar --numeric-owner --xattrs --xattrs-include='*' -xpf "$LB_TAR" -C "$lbroot"
  $SUDO install -D -m 0644 "$NODE_FILES/haproxy.cfg" "$lbroot/usr/local/etc/haproxy/haproxy.cfg"
  # `haproxy` in PATH: caps maxconn to the open-files limit (see images/node/haproxy-wrapper)
  $SUDO install -D -m 0755 "$NODE_FILES/haproxy-wrapper" "$lbroot/usr/local/sbin/haproxy"
  $SUDO tar --numeric-owner --xattrs --xattrs-include='*' -C "$lbroot" -cf "$WORK/lb.tar" .
  $SUDO rm -rf "$lbroot"
  import_rootfs "$WORK/lb.tar" "$LB_KEY" "$LB_IMAGE" \
    -c 'ENTRYPOINT ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]'
  rm -f "$WORK/lb.tar"
else
  log "cached: $LB_IMAGE"
fi
# Every image kubeadm itself will ask for must exist under that name.
if [ -x "$BIN/kubeadm" ]; then
  for img in $("$BIN/kubeadm" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null); do
    docker image inspect "$img" >/dev/null 2>&1 || log "warning: kubeadm wants $img, which was not built"
  done
fi
[ ${#SKIPPED[@]} -eq 0 ] || log "warning: not built (binaries missing): ${SKIPPED[*]}"
[ "$ONLY" != images ] || { log "done in $((SECONDS - T0))s"; exit 0; }

# --- 3. the node image ---------------------------------------------------------------------
for b in kubelet kubeadm kubectl crictl; do
  [ -f "$BIN/$b" ] || die "$BIN/$b: missing (scripts/go-peers.sh builds it)"
done
[ -d "$BIN/cni" ] || die "$BIN/cni: missing (scripts/go-peers.sh builds the CNI plugins)"
for img in "${PRELOAD[@]}"; do
  docker image inspect "$img" >/dev/null 2>&1 || die "--preload $img: no such image in the local engine"
done
NODE_ENTRYPOINT='["/usr/local/sbin/fledge-node-entrypoint"]'
NODE_CMD='["/sbin/init"]'
SHIM_IN_NODE=/usr/local/bin/fledge-oci-shim

# The node's root filesystem: the Debian node rootfs + our binaries, units and configs + hooks.
nroot="$WORK/node-root"
mkdir -p "$nroot"
$SUDO tar --numeric-owner --xattrs --xattrs-include='*' -xpf "$NODE_TAR" -C "$nroot"
inst() { $SUDO install -D -m "$1" "$2" "$nroot$3"; }
for b in kubelet kubeadm kubectl crictl; do inst 0755 "$(readlink -f "$BIN/$b")" "/usr/bin/$b"; done
$SUDO mkdir -p "$nroot/opt/cni/bin"
for p in "$BIN"/cni/*; do [ -f "$p" ] && inst 0755 "$(readlink -f "$p")" "/opt/cni/bin/$(basename "$p")"; done
inst 0755 "$NODE_FILES/fledge-node-entrypoint" /usr/local/sbin/fledge-node-entrypoint
inst 0644 "$NODE_FILES/kubelet.service" /etc/systemd/system/kubelet.service
inst 0644 "$NODE_FILES/10-kubeadm.conf" /etc/systemd/system/kubelet.service.d/10-kubeadm.conf
inst 0644 "$NODE_FILES/default-kubelet" /etc/default/kubelet
inst 0644 "$NODE_FILES/crictl.yaml" /etc/crictl.yaml
inst 0644 "$NODE_FILES/sysctl.conf" /etc/sysctl.d/10-fledge-node.conf
$SUDO mkdir -p "$nroot/etc/systemd/system/multi-user.target.wants" "$nroot/etc/kubernetes/manifests" \
  "$nroot/etc/cni/net.d" "$nroot/var/lib/kubelet"
$SUDO ln -sfn /etc/systemd/system/kubelet.service "$nroot/etc/systemd/system/multi-user.target.wants/kubelet.service"
[ -e "$nroot/etc/systemd/system/multi-user.target.wants/containerd.service" ] ||
  $SUDO ln -sfn /lib/systemd/system/containerd.service "$nroot/etc/systemd/system/multi-user.target.wants/containerd.service"
# containerd: its own defaults, cgroupfs (SystemdCgroup = false), the local pause image, and the
# shim in front of runc where privileged mode cannot grant CAP_SYS_RESOURCE.
binary_name=""
if [ "$NEED_SHIM" = 1 ]; then
  inst 0755 "$(readlink -f "$SHIM")" "$SHIM_IN_NODE"
  binary_name="$SHIM_IN_NODE"
fi
$SUDO chroot "$nroot" /usr/bin/containerd config default > "$WORK/containerd.toml"
sed -i -e "s|^\([[:space:]]*sandbox_image = \).*|\1\"$R/pause:$PAUSE_TAG\"|" \
       -e 's|^\([[:space:]]*SystemdCgroup = \).*|\1false|' \
       -e "s|^\([[:space:]]*BinaryName = \).*|\1\"$binary_name\"|" "$WORK/containerd.toml"
grep -q "sandbox_image = \"$R/pause:$PAUSE_TAG\"" "$WORK/containerd.toml" || die "containerd config: sandbox_image not set"
inst 0644 "$WORK/containerd.toml" /etc/containerd/config.toml
for h in "${HOOKS[@]}"; do
  log "hook: $h $nroot"
  $SUDO "$h" "$nroot" >&2 || die "hook $h failed"
done
# A reproducible tar of the tree: its hash is the tree's part of the node key.
$SUDO tar --numeric-owner --xattrs --xattrs-include='*' --sort=name --mtime=2024-01-01 --clamp-mtime \
  --pax-option='exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime' -C "$nroot" -cf "$WORK/node.tar" .
$SUDO rm -rf "$nroot"
tree_sum="$(sha256sum "$WORK/node.tar" | cut -c1-64)"
ALL_PRELOAD=("${PRELOAD_TAGS[@]}" "${PRELOAD[@]}")
preload_ids=""
for img in "${ALL_PRELOAD[@]}"; do preload_ids+="$img=$(image_id "$img") "; done
NODE_KEY="$(echo "$REV $tree_sum $preload_ids $NODE_ENTRYPOINT $NODE_CMD" | hash_str)"

if up_to_date "$NODE_KEY" "$NODE_IMAGE" "kindest/node:$K8S_VERSION"; then
  log "cached: $NODE_IMAGE"
else
  t=$SECONDS
  old_id="$(docker image inspect -f '{{.Id}}' "$NODE_IMAGE" 2>/dev/null || true)"
  stage="fledge.test/node-stage:$NODE_KEY"
  docker import -c "$IMPORT_ENV" -c 'ENV container=docker' -c "ENTRYPOINT $NODE_ENTRYPOINT" \
    -c "CMD $NODE_CMD" "$WORK/node.tar" "$stage" >/dev/null
  rm -f "$WORK/node.tar"
  log "node rootfs imported in $((SECONDS - t))s; saving ${#ALL_PRELOAD[@]} images to preload"
  docker save -o "$WORK/preload.tar" "${ALL_PRELOAD[@]}"
  # Boot it as CAPD does (privileged, tmpfs /run and /tmp, private cgroup namespace), but with
  # /var in the container's own layer so that the imported images land in the commit.
  BUILD_CTR="fledge-node-build-$$"
  docker run -d -t --name "$BUILD_CTR" --hostname fledge-node-build --privileged \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined --cgroupns=private \
    --tmpfs /run --tmpfs /tmp -v /lib/modules:/lib/modules:ro "$stage" >/dev/null
  for i in $(seq 1 120); do
    docker exec "$BUILD_CTR" ctr version >/dev/null 2>&1 && break
    [ "$(docker inspect -f '{{.State.Running}}' "$BUILD_CTR")" = true ] || { docker logs "$BUILD_CTR" | tail -30 >&2; die "node container exited"; }
    sleep 1
  done
  docker exec "$BUILD_CTR" ctr version >/dev/null || { docker logs "$BUILD_CTR" | tail -30 >&2; die "containerd did not start in the node"; }
  log "containerd up after $((SECONDS - t))s; importing"
  docker exec -i "$BUILD_CTR" ctr -n k8s.io images import --no-unpack - < "$WORK/preload.tar" >&2
  rm -f "$WORK/preload.tar"
  docker exec "$BUILD_CTR" ctr -n k8s.io images ls -q > "$WORK/imported"
  for img in "${ALL_PRELOAD[@]}"; do
    grep -qxF "$img" "$WORK/imported" || grep -qxF "docker.io/$img" "$WORK/imported" ||
      grep -qxF "docker.io/library/$img" "$WORK/imported" || die "$img: not in the node's containerd after import"
  done
  # Leave no per-boot state in the image: stop the runtime, forget this boot's identity.
  docker exec "$BUILD_CTR" sh -c 'systemctl stop kubelet containerd; : > /etc/machine-id;
    rm -rf /var/lib/fledge-node /var/log/journal/* /var/lib/systemd/random-seed /var/lib/dbus/machine-id'
  # systemd halts cleanly on SIGRTMIN+3 (SIGTERM would make it re-execute itself)
  docker kill -s SIGRTMIN+3 "$BUILD_CTR" >/dev/null
  timeout 60 docker wait "$BUILD_CTR" >/dev/null || docker stop -t 1 "$BUILD_CTR" >/dev/null
  docker commit "$BUILD_CTR" "$stage-preloaded" >/dev/null
  docker rm -f -v "$BUILD_CTR" >/dev/null; BUILD_CTR=""
  # The final configuration (docker 20.10's import/commit --change know no STOPSIGNAL).
  mkdir -p "$WORK/final"
  printf '%s\n' "FROM $stage-preloaded" "ENV container=docker" "ENTRYPOINT $NODE_ENTRYPOINT" \
    "CMD $NODE_CMD" "STOPSIGNAL SIGRTMIN+3" "LABEL $KEY_LABEL=$NODE_KEY" > "$WORK/final/Dockerfile"
  docker build -q -t "$NODE_IMAGE" "$WORK/final" > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log" >&2; die "docker build $NODE_IMAGE failed"; }
  docker tag "$NODE_IMAGE" "kindest/node:$K8S_VERSION"
  docker rmi "$stage-preloaded" "$stage" >/dev/null 2>&1 || true
  # the replaced node image, unless something else still uses it
  [ -z "$old_id" ] || docker rmi "$old_id" >/dev/null 2>&1 || true
  log "built $NODE_IMAGE in $((SECONDS - t))s ($(docker image inspect -f '{{.Size}}' "$NODE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
fi
[ ${#SKIPPED[@]} -eq 0 ] || log "warning: not built and not preloaded (binaries missing): ${SKIPPED[*]}"
log "images ready in $((SECONDS - T0))s"

# --- 4. verify: boot the node as CAPD does, then a minimal kubeadm init ----------------------
[ "$VERIFY" = 1 ] || exit 0
VNET=fledge-node-verify
VCTR="fledge-node-verify-$$"
docker network inspect "$VNET" >/dev/null 2>&1 || docker network create "$VNET" >/dev/null
BUILD_CTR="$VCTR"   # removed (with its /var volume) on exit
t=$SECONDS
# CAPD (test/infrastructure/container/docker.go RunContainer + docker/manager.go createNode)
docker run -d -t --name "$VCTR" --hostname "$VCTR" --network "$VNET" --privileged \
  --security-opt seccomp=unconfined --security-opt apparmor=unconfined --cgroupns=private \
  --restart on-failure:1 --init=false --tmpfs /tmp --tmpfs /run -v /var -v /lib/modules:/lib/modules:ro \
  -e KUBECONFIG=/etc/kubernetes/admin.conf --label io.x-k8s.kind.cluster=fledge-verify \
  --label io.x-k8s.kind.role=control-plane "$NODE_IMAGE" >/dev/null
vexec() { docker exec "$VCTR" "$@"; }
# CAPD waits for this line in the container log, then for `crictl ps` (4 s at most).
for i in $(seq 1 120); do
  docker logs "$VCTR" 2>&1 | grep -Eq 'Reached target .*Multi-User System' && break
  sleep 1
done
docker logs "$VCTR" 2>&1 | grep -Eq 'Reached target .*Multi-User System' ||
  { docker logs "$VCTR" 2>&1 | tail -40 >&2; die "verify: no 'Reached target Multi-User System' in the log"; }
log "verify: multi-user.target after $((SECONDS - t))s"
ok=0
for i in 1 2 3 4 5 6 7 8; do vexec crictl ps >/dev/null 2>&1 && { ok=1; break; }; sleep 0.5; done
[ "$ok" = 1 ] || { vexec crictl ps >&2 || true; die "verify: crictl ps fails 4 s after multi-user.target"; }
state="$(vexec systemctl is-system-running --wait 2>/dev/null || true)"
log "verify: system $state, containerd $(vexec systemctl is-active containerd || true)"
case "$state" in running|degraded) ;; *) vexec systemctl --failed >&2 || true; die "verify: system state $state" ;; esac
[ "$state" = running ] || vexec systemctl --failed --no-legend >&2 || true
vexec crictl images > "$WORK/crictl-images"
cat "$WORK/crictl-images" >&2
for img in "${PRELOAD_TAGS[@]}"; do
  repo="${img%:*}" tag="${img##*:}"
  grep -Eq "^(docker.io/(library/)?)?$repo[[:space:]]+$tag[[:space:]]" "$WORK/crictl-images" ||
    die "verify: crictl images lacks $img"
done
# kubeadm init with what CAPD's kubeadm bootstrap adds for docker nodes (writefiles.go
# fixNodeRegistration) and the preflight errors CAPD ignores, plus all others for the check.
vexec mkdir -p /run/kubeadm
docker exec -i "$VCTR" sh -c 'cat > /run/kubeadm/kubeadm.yaml' <<YAML
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
nodeRegistration:
  criSocket: unix:///var/run/containerd/containerd.sock
  kubeletExtraArgs:
  - {name: eviction-hard, value: "nodefs.available<0%,nodefs.inodesFree<0%,imagefs.available<0%"}
  - {name: image-gc-high-threshold, value: "100"}
  - {name: fail-swap-on, value: "false"}
  - {name: cgroup-root, value: /kubelet}
  - {name: runtime-cgroups, value: /system.slice/containerd.service}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: $K8S_VERSION
networking:
  podSubnet: 10.244.0.0/16
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
YAML
t=$SECONDS
if ! vexec kubeadm init --config /run/kubeadm/kubeadm.yaml --skip-phases=addon/coredns,addon/kube-proxy \
    --ignore-preflight-errors=all > "$WORK/kubeadm.log" 2>&1; then
  tail -40 "$WORK/kubeadm.log" >&2
  vexec journalctl -u kubelet --no-pager | tail -40 >&2 || true
  die "verify: kubeadm init failed"
fi
log "verify: kubeadm init in $((SECONDS - t))s"
for i in $(seq 1 90); do
  running="$(vexec kubectl get pods -n kube-system --no-headers 2>/dev/null | awk '$3 == "Running"' | wc -l)"
  [ "$running" -ge 4 ] && break
  sleep 2
done
vexec kubectl get pods -n kube-system -o wide >&2 || true
vexec kubectl get nodes -o wide >&2 || true
[ "${running:-0}" -ge 4 ] || die "verify: the static pods are not all Running"
vexec kubectl get node "$VCTR" >/dev/null || die "verify: node $VCTR not registered"
log "verify: OK (4 static pods Running, node registered) $((SECONDS - t))s after kubeadm init began"
