#!/usr/bin/env bash
# Builds (once) the guest image for the VM test of fledge-agent's live install: a Debian
# bookworm minbase root filesystem with systemd and cloud-init (debootstrap from the machine's
# configured apt mirror), as a sparse ext4 disk image plus the kernel and initrd to boot it with.
# Also installs what booting it needs: QEMU (from bookworm-backports when the machine's
# qemu-utils comes from there, as test-peers.md says), debootstrap, e2fsprogs (debugfs).
#
# Output: ${FLEDGE_VM_DIR:-~/.cache/fledge/vm-bookworm-1}/{disk.raw,vmlinuz,initrd.img}
# Every step writes to a temporary name and renames, so an interrupted run starts over cleanly.
set -euo pipefail

OUT="${FLEDGE_VM_DIR:-$HOME/.cache/fledge/vm-bookworm-1}"
log() { echo "[test-guest $(date +%H:%M:%S)] $*" >&2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# --- host packages -----------------------------------------------------------------------------
mirror() {
  # The first Debian (not security) URI of the machine's configured sources.
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$f"
  done | head -1
}
MIRROR="$(mirror)"
if [ -z "$MIRROR" ]; then
  MIRROR="$(awk '/^deb / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
fi
[ -n "$MIRROR" ] || { log "no Debian mirror found in /etc/apt/sources.list(.d)"; exit 1; }

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v debugfs >/dev/null || [ -x /usr/sbin/debugfs ] || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
  apt_opts=()
  target=()
  if dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null | grep -q bpo12; then
    # bookworm's qemu-system-x86 (7.2) conflicts with a backports qemu-utils: take QEMU from
    # bookworm-backports too, through a private source list (nothing under /etc/apt changes).
    priv="$(mktemp -d)"
    trap 'rm -rf "$priv"' EXIT
    chmod 0755 "$priv"
    mkdir -p "$priv/lists/partial"
    key=/usr/share/keyrings/debian-archive-keyring.gpg
    printf 'deb [signed-by=%s] %s bookworm main\ndeb [signed-by=%s] %s bookworm-backports main\n' \
      "$key" "$MIRROR" "$key" "$MIRROR" > "$priv/sources.list"
    apt_opts=(-o "Dir::Etc::SourceList=$priv/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$priv/lists")
    target=(-t bookworm-backports)
  fi
  log "installing ${need[*]}"
  $SUDO apt-get "${apt_opts[@]}" update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${apt_opts[@]}" install -y -qq \
    --no-install-recommends "${target[@]}" "${need[@]}" >/dev/null
fi

# --- guest image -------------------------------------------------------------------------------
if [ -f "$OUT/disk.raw" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.img" ]; then
  log "cached: $OUT"
  exit 0
fi
mkdir -p "$OUT"
work="$(mktemp -d "$OUT/.build.XXXXXX")"
trap 'rm -rf "$work" "${priv:-}"' EXIT
root="$work/rootfs"
PKGS=systemd-sysv,udev,dbus,linux-image-amd64,initramfs-tools,cloud-init,python3-cffi-backend,openssh-server,ifupdown,isc-dhcp-client,e2fsprogs,sudo,iproute2
log "debootstrap bookworm (minbase + $PKGS) from $MIRROR"
$SUDO /usr/sbin/debootstrap --variant=minbase --include="$PKGS" bookworm "$root" "$MIRROR" \
  > "$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log" >&2; exit 1; }

log "fix-ups"
echo '/dev/vda / ext4 defaults 0 1' > "$root/etc/fstab"
echo fledge-vm > "$root/etc/hostname"
rm -f "$root/etc/resolv.conf" "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
cat > "$root/etc/cloud/cloud.cfg.d/99-fledge-test.cfg" <<'CFG'
datasource_list: [ NoCloud, None ]
locale: C.UTF-8
manage_etc_hosts: true
ssh_genkeytypes: [ed25519, ecdsa]
CFG
rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*

cp "$(readlink -f "$root/vmlinuz")" "$work/vmlinuz"
cp "$(readlink -f "$root/initrd.img")" "$work/initrd.img"
chmod 0644 "$work/vmlinuz" "$work/initrd.img"
log "ext4 image"
mkfs.ext4 -q -L root -d "$root" "$work/disk.raw" 3G
for f in vmlinuz initrd.img disk.raw; do mv "$work/$f" "$OUT/$f.tmp"; done
for f in vmlinuz initrd.img disk.raw; do mv "$OUT/$f.tmp" "$OUT/$f"; done
log "built: $OUT ($(du -sh "$OUT/disk.raw" | cut -f1) on disk)"
