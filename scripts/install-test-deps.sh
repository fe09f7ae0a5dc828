#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, from the machine's configured apt
# sources. Skips apt entirely when everything is already present.
set -euo pipefail

# command -> package
declare -A NEED=(
  [openssl]=openssl            # throw-away CAs for the test API servers
  [cloud-init]=cloud-init      # `cloud-init schema -c`, and PyYAML (python3-yaml) with it
  [isoinfo]=genisoimage        # reads seed ISOs back
  [xorriso]=xorriso            # extracts files from seed ISOs
  [mtype]=mtools               # reads vfat seeds back (mdir, mtype)
  [fsck.vfat]=dosfstools       # checks vfat seeds
  [blkid]=util-linux           # labels and types of seed images
  [cloud-localds]=cloud-image-utils  # the baseline of benches/seed.sh
  [gcc]=gcc                    # flanneld (scripts/go-peers.sh) is the one peer built with cgo
)

missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
# flanneld is linked statically against glibc.
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
if [ ${#missing[@]} -eq 0 ]; then
  echo "[install-test-deps] all present" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "[install-test-deps] installing: ${missing[*]}" >&2
$SUDO apt-get update -q >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
