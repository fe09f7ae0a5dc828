#!/usr/bin/env bash
# Builds the Cluster API provider bundle the real-node test bakes into its node image, in
# clusterctl's local-repository layout (what images/bake-providers.sh takes):
#   OUT/cluster-api/v1.13.5/{components.yaml,metadata.yaml}
#   OUT/bootstrap-kubeadm/v1.13.5/...   OUT/control-plane-kubeadm/v1.13.5/...
#   OUT/infrastructure-docker/v1.13.7/...
# Each components.yaml is what the provider's release target makes of its kustomize
# `config/default`: `kustomize build`, with the manager's pull policy IfNotPresent (a release
# sets it so; the dev default `Always` would make the kubelet pull, and no registry is reachable
# here). The images keep the names `config/default` gives them; images/node-image.sh builds
# them under those names from the binaries scripts/go-peers.sh built. The kustomize configs
# and metadata.yaml files are read in place from the Go module cache (nothing upstream is
# copied into this repository).
#
# Usage: scripts/provider-bundle.sh OUT_DIR
#   needs scripts/go-peers.sh to have run (kustomize, cluster-api.dir, capd.dir)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: scripts/provider-bundle.sh OUT_DIR}"
BIN="${FLEDGE_ASSETS_BIN:-$(scripts/go-peers.sh --print-dir)}"
CAPI_VERSION=v1.13.5
CAPD_VERSION=v1.13.7

need() { [ -e "$1" ] || { echo "provider-bundle: $1 is missing: run scripts/go-peers.sh" >&2; exit 1; }; }
need "$BIN/kustomize"
need "$BIN/cluster-api.dir"
need "$BIN/capd.dir"
capi=$(cat "$BIN/cluster-api.dir")
capd=$(cat "$BIN/capd.dir")

# provider LABEL VERSION CONFIG_DIR METADATA
provider() {
  local label=$1 version=$2 config=$3 metadata=$4
  local dest="$OUT/$label/$version" tmp
  need "$config/kustomization.yaml"
  need "$metadata"
  mkdir -p "$OUT/$label"
  tmp=$(mktemp -d "$OUT/$label/.$version.XXXXXX")
  "$BIN/kustomize" build "$config" |
    sed 's/^\([[:space:]]*\)imagePullPolicy: Always$/\1imagePullPolicy: IfNotPresent/' \
      >"$tmp/components.yaml"
  if grep -q 'imagePullPolicy: Always' "$tmp/components.yaml"; then
    echo "provider-bundle: $label still has imagePullPolicy: Always" >&2
    exit 1
  fi
  cp "$metadata" "$tmp/metadata.yaml"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  echo "provider-bundle: $label $version ($(grep -c '^kind:' "$dest/components.yaml") objects)" >&2
}

provider cluster-api "$CAPI_VERSION" "$capi/config/default" "$capi/metadata.yaml"
provider bootstrap-kubeadm "$CAPI_VERSION" "$capi/bootstrap/kubeadm/config/default" "$capi/metadata.yaml"
provider control-plane-kubeadm "$CAPI_VERSION" "$capi/controlplane/kubeadm/config/default" "$capi/metadata.yaml"
# CAPD is released with the test module; its metadata is the e2e suite's shared one.
provider infrastructure-docker "$CAPD_VERSION" "$capd/infrastructure/docker/config/default" \
  "$capd/e2e/data/shared/main/metadata.yaml"
