#!/usr/bin/env bash
# Prepares everything the real-node test (tests/tests/real_nodes.rs) and benches/real-nodes.sh
# need, cached and resumable:
#   1. the Docker engine with its OCI runtime shim            (scripts/docker-engine.sh)
#   2. the provider bundle: the four Cluster API providers' components.yaml built with kustomize
#      from the Go module cache (scripts/provider-bundle.sh), and cert-manager's: its real CRDs
#      with the test stand-in for its issuer and CA injector (tests/cert-standin/components.sh)
#   3. the stand-in's image, FROM fledge.test/base:bookworm
#   4. the node image fledge.test/node:v1.34.4 (images/node-image.sh), with the stand-in image
#      preloaded, and fledge-agent and the provider bundle baked in by images/bake-agent.sh and
#      images/bake-providers.sh: the "baked into a VM template" case, with a container for a VM.
# The agent baked in is the debug build the tests build anyway (target/debug/fledge-agent).
#
# Usage: scripts/real-nodes.sh      (needs scripts/go-peers.sh to have run)
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[real-nodes $(date +%H:%M:%S)] $*" >&2; }
BIN="${FLEDGE_ASSETS_BIN:-$(scripts/go-peers.sh --print-dir)}"
export FLEDGE_ASSETS_BIN="$BIN"
CACHE="$HOME/.cache/fledge/real-nodes"
STANDIN_IMAGE=fledge.test/cert-manager-standin:v1.19.1
STANDIN_PATH=/usr/local/bin/fledge-test-cert-manager
mkdir -p "$CACHE"
start=$SECONDS

scripts/docker-engine.sh

log "building fledge-agent and the cert-manager stand-in"
# One --bin per binary: with --bin, cargo builds only the named binaries of the packages given.
cargo build --locked -q -p fledge-agent -p fledge-test-cert-manager \
  --bin fledge-agent --bin fledge-test-cert-manager
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
AGENT="$TARGET/debug/fledge-agent"
STANDIN="$TARGET/debug/fledge-test-cert-manager"
for built in "$AGENT" "$STANDIN"; do
  [ -x "$built" ] || { log "cargo build did not produce $built"; exit 1; }
done

log "provider bundle"
BUNDLE="$CACHE/providers"
tmp=$(mktemp -d "$CACHE/.providers.XXXXXX")
scripts/provider-bundle.sh "$tmp"
tests/cert-standin/components.sh "$tmp" v1.19.1 "$STANDIN_IMAGE" "$STANDIN_PATH" >/dev/null
rm -rf "$BUNDLE"
mv "$tmp" "$BUNDLE"

images/node-image.sh --only base
log "stand-in image $STANDIN_IMAGE"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$STANDIN" "$ctx/fledge-test-cert-manager"
printf 'FROM fledge.test/base:bookworm\nCOPY fledge-test-cert-manager %s\nENTRYPOINT ["%s"]\n' \
  "$STANDIN_PATH" "$STANDIN_PATH" >"$ctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$STANDIN_IMAGE" "$ctx" >/dev/null

# The hook bakes the agent and the bundle into the node's root filesystem.
cat >"$ctx/bake.sh" <<EOF
#!/usr/bin/env bash
set -euo pipefail
cd "$PWD"
images/bake-agent.sh "\$1" "$AGENT"
images/bake-providers.sh "\$1" "$BUNDLE"/*/* --agent "$AGENT"
EOF
chmod +x "$ctx/bake.sh"
images/node-image.sh --preload "$STANDIN_IMAGE" --hook "$ctx/bake.sh"
log "ready in $((SECONDS - start))s"
