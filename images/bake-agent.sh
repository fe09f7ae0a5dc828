#!/usr/bin/env bash
# Bakes fledge-agent into a VM template's root filesystem: the binary at
# /usr/local/bin/fledge-agent, its systemd unit, and the multi-user.target.wants link. Nothing
# per-cluster or secret goes into the image: the unit stays inactive (ConditionPathExists) until
# cloud-init delivers /etc/fledge/agent.yaml and runs `fledge-agent install --config FILE`, which
# finds the binary up to date, writes the configuration and starts the service.
# Usage: images/bake-agent.sh ROOTFS [FLEDGE_AGENT_BINARY]
#   (default binary: target/release/fledge-agent, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOTFS="${1:?usage: images/bake-agent.sh ROOTFS [FLEDGE_AGENT_BINARY]}"
BIN="${2:-target/release/fledge-agent}"
if [ ! -x "$BIN" ] && [ "$BIN" = target/release/fledge-agent ]; then
  cargo build -q --release -p fledge-agent
fi
[ -d "$ROOTFS" ] || { echo "bake-agent: $ROOTFS is not a directory" >&2; exit 1; }
"$BIN" install --root "$ROOTFS"
