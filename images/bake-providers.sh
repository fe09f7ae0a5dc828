#!/usr/bin/env bash
# Bakes Cluster API providers into a VM template's root filesystem, so that the agent's
# ProvidersInstalled phase needs no network: each SRC is a provider version directory in
# clusterctl's local-repository layout, SRC = .../<name>/<version>/ holding components.yaml
# (and metadata.yaml for the CAPI providers), for example what a release publishes as
# components.yaml and metadata.yaml, saved under cluster-api/v1.13.5/. They are copied to
# ROOTFS/usr/share/fledge/providers/<name>/<version>/ (atomically per version: a temporary
# sibling, then rename), checked with `fledge-agent providers` exactly as the agent will load
# them, and the container images the components run are written to
# ROOTFS/usr/share/fledge/providers/images.txt, one per line.
#
# Container images: the first node has no registry guarantee, so pre-pull them into the image's
# containerd store during the build, on the build VM where containerd runs (Packer shell step,
# image-builder's `containerd` role), e.g.
#   xargs -r -n1 ctr -n k8s.io images pull < /usr/share/fledge/providers/images.txt
# (kubelet finds them there; with `imagePullPolicy: IfNotPresent`, as the released manifests
# set, nothing is fetched at first boot). Nothing secret goes into the image, and provider
# credentials must never be put in the agent configuration either: /etc/fledge/agent.yaml is
# written inline into CP-A's user-data and the KubeadmControlPlane, and its
# `providers.variables` are not a secret store (see nodeagent/src/config.rs). The agent does not take provider credentials yet; they will come
# from a credentials Secret on the management plane.
#
# Usage: images/bake-providers.sh ROOTFS SRC [SRC ...] [--agent FLEDGE_AGENT_BINARY]
#   (default binary: target/release/fledge-agent, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: images/bake-providers.sh ROOTFS SRC [SRC ...] [--agent FLEDGE_AGENT_BINARY]"
ROOTFS="${1:?$usage}"; shift
BIN=target/release/fledge-agent
SRCS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --agent) BIN="${2:?$usage}"; shift 2 ;;
    *) SRCS+=("$1"); shift ;;
  esac
done
[ ${#SRCS[@]} -gt 0 ] || { echo "$usage" >&2; exit 2; }
[ -d "$ROOTFS" ] || { echo "bake-providers: $ROOTFS is not a directory" >&2; exit 1; }
if [ ! -x "$BIN" ] && [ "$BIN" = target/release/fledge-agent ]; then
  cargo build -q --release -p fledge-agent
fi
DEST="$ROOTFS/usr/share/fledge/providers"
mkdir -p "$DEST"
for src in "${SRCS[@]}"; do
  src="${src%/}"
  [ -f "$src/components.yaml" ] || { echo "bake-providers: $src/components.yaml: missing" >&2; exit 1; }
  version="$(basename "$src")"
  name="$(basename "$(dirname "$src")")"
  mkdir -p "$DEST/$name"
  tmp="$(mktemp -d "$DEST/$name/.bake.XXXXXX")"
  cp "$src/components.yaml" "$tmp/"
  [ ! -f "$src/metadata.yaml" ] || cp "$src/metadata.yaml" "$tmp/"
  chmod 0755 "$tmp"; chmod 0644 "$tmp"/*
  rm -rf "$DEST/$name/$version"
  mv "$tmp" "$DEST/$name/$version"
  echo "baked $name $version"
done
"$BIN" providers --dir "$DEST"
"$BIN" providers --dir "$DEST" --images > "$DEST/images.txt.tmp"
mv "$DEST/images.txt.tmp" "$DEST/images.txt"
echo "container images to pre-pull: $DEST/images.txt ($(wc -l < "$DEST/images.txt"))"
