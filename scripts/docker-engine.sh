#!/usr/bin/env bash
# Brings up a Docker engine for the real-node tests (privileged node containers). Idempotent.
#
#   scripts/docker-engine.sh               install/configure/start dockerd and check it
#   scripts/docker-engine.sh --print-shim  print the installed path of fledge-oci-shim
#
# Steps: installs Debian's docker.io from the machine's configured apt sources if dockerd is
# missing; builds tests/oci-shim (fledge-oci-shim) and installs it to
# ~/.cache/fledge/docker/fledge-oci-shim; when the capability bounding set lacks CAP_SYS_RESOURCE
# (bit 24 of CapBnd), registers the shim in /etc/docker/daemon.json as runtime `fledge-shim` and
# makes it the default (privileged containers fail without it); starts dockerd in the background
# (no systemd here) and restarts it when daemon.json changed; finally runs a privileged container
# from a locally imported image (fledge-test/probe:1; no registry is reachable).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${HOME}/.cache/fledge/docker"
SHIM="${CACHE}/fledge-oci-shim"
LOG="${CACHE}/dockerd.log"
DAEMON_JSON=/etc/docker/daemon.json
RUNTIME=fledge-shim
PROBE=fledge-test/probe:1

log() { echo "[docker-engine] $*" >&2; }
die() { echo "[docker-engine] error: $*" >&2; exit 1; }

case "${1:-}" in
  --print-shim) echo "$SHIM"; exit 0 ;;
  "") ;;
  -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown option: $1 (known: --print-shim)" ;;
esac

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ -n "$SUDO" ] && ! command -v sudo >/dev/null 2>&1; then
  die "not root and no sudo: cannot install or start dockerd"
fi
mkdir -p "$CACHE"

# 1. dockerd (Debian's docker.io, from the configured apt sources).
if ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io"
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q docker.io >&2 \
    || die "apt-get install docker.io failed"
  command -v dockerd >/dev/null 2>&1 || die "dockerd still missing after installing docker.io"
fi
command -v docker >/dev/null 2>&1 || die "docker CLI missing (docker.io should provide it)"
RUNC=""
for r in /usr/sbin/runc /usr/bin/runc; do [ -x "$r" ] && { RUNC="$r"; break; }; done
[ -n "$RUNC" ] || die "runc missing (docker.io depends on it; apt-get install runc)"

# 2. The OCI runtime shim, built from the workspace and copied atomically.
command -v cargo >/dev/null 2>&1 || die "cargo missing: cannot build fledge-oci-shim"
(cd "$ROOT" && cargo build -q -p fledge-oci-shim) || die "building fledge-oci-shim failed"
BUILT="${CARGO_TARGET_DIR:-$ROOT/target}/debug/fledge-oci-shim"
[ -x "$BUILT" ] || die "built shim not found at $BUILT"
if ! cmp -s "$BUILT" "$SHIM"; then
  cp "$BUILT" "$SHIM.tmp.$$"
  chmod 0755 "$SHIM.tmp.$$"
  mv -f "$SHIM.tmp.$$" "$SHIM"
  log "installed $SHIM"
fi

# 3. daemon.json: the shim as default runtime when CAP_SYS_RESOURCE is not in the bounding set.
capbnd="$(awk '/^CapBnd:/ {print $2}' /proc/self/status)"
[ -n "$capbnd" ] || die "no CapBnd in /proc/self/status"
need_shim=0
(( (16#$capbnd >> 24) & 1 )) || need_shim=1
changed=0
if [ "$need_shim" -eq 1 ]; then
  command -v python3 >/dev/null 2>&1 || die "python3 missing: needed to edit $DAEMON_JSON"
  new="$(SHIM="$SHIM" RUNTIME="$RUNTIME" DAEMON_JSON="$DAEMON_JSON" python3 - <<'PY'
import json, os
path = os.environ["DAEMON_JSON"]
try:
    with open(path) as f:
        cfg = json.load(f)
except FileNotFoundError:
    cfg = {}
if not isinstance(cfg, dict):
    raise SystemExit(f"{path} is not a JSON object")
cfg.setdefault("storage-driver", "overlay2")
runtimes = cfg.setdefault("runtimes", {})
runtimes[os.environ["RUNTIME"]] = {"path": os.environ["SHIM"]}
cfg["default-runtime"] = os.environ["RUNTIME"]
print(json.dumps(cfg, indent=2, sort_keys=True))
PY
)" || die "cannot compose $DAEMON_JSON"
  if [ "$new" != "$(cat "$DAEMON_JSON" 2>/dev/null || true)" ]; then
    $SUDO mkdir -p "$(dirname "$DAEMON_JSON")"
    printf '%s\n' "$new" | $SUDO tee "$DAEMON_JSON.tmp.$$" >/dev/null
    $SUDO mv -f "$DAEMON_JSON.tmp.$$" "$DAEMON_JSON"
    changed=1
    log "wrote $DAEMON_JSON (default runtime $RUNTIME -> $SHIM)"
  fi
else
  log "CapBnd $capbnd has CAP_SYS_RESOURCE: plain runc, no shim needed"
fi

# 4. dockerd in the background (no systemd on these hosts).
dockerd_pid() { pidof dockerd 2>/dev/null | awk '{print $1}'; }
# Also restart when a running dockerd has not picked up daemon.json (an earlier run stopped
# between writing it and restarting).
if [ -n "$(dockerd_pid)" ] && [ "$changed" -eq 0 ] && [ "$need_shim" -eq 1 ] \
  && docker info >/dev/null 2>&1 \
  && [ "$(docker info --format '{{.DefaultRuntime}}' 2>/dev/null)" != "$RUNTIME" ]; then
  changed=1
fi
if [ -n "$(dockerd_pid)" ] && [ "$changed" -eq 1 ]; then
  if pidof systemd >/dev/null 2>&1 && command -v systemctl >/dev/null 2>&1; then
    log "daemon.json changed or not loaded: systemctl restart docker"
    $SUDO systemctl restart docker || die "systemctl restart docker failed"
  else
    pid="$(dockerd_pid)"
    log "daemon.json changed or not loaded: stopping dockerd (pid $pid)"
    $SUDO kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then die "dockerd (pid $pid) did not stop within 30 s"; fi
  fi
fi
if ! docker info >/dev/null 2>&1; then
  if [ -z "$(dockerd_pid)" ]; then
    if pidof systemd >/dev/null 2>&1 && command -v systemctl >/dev/null 2>&1; then
      log "starting docker with systemctl"
      $SUDO systemctl start docker || die "systemctl start docker failed"
    else
      log "starting dockerd (log: $LOG)"
      $SUDO setsid nohup dockerd >"$LOG" 2>&1 </dev/null &
    fi
  fi
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -n 20 "$LOG" >&2 2>/dev/null || true; die "dockerd did not answer docker info within 60 s (log: $LOG)"; }
fi
if [ "$need_shim" -eq 1 ]; then
  default="$(docker info --format '{{.DefaultRuntime}}' 2>/dev/null || true)"
  [ "$default" = "$RUNTIME" ] || die "dockerd's default runtime is '$default', not $RUNTIME (restart dockerd after editing $DAEMON_JSON)"
fi

# 5. A privileged container from a locally made image.
if ! docker image inspect "$PROBE" >/dev/null 2>&1; then
  # The image holds one binary and no libraries: prefer known static ones (a static docker CLI,
  # tini-static from docker.io's recommends); both answer `--version`.
  bin=""
  for b in /usr/local/bin/docker /usr/bin/tini-static; do [ -x "$b" ] && { bin="$b"; break; }; done
  if [ -z "$bin" ]; then
    bin="$(command -v docker)"
    log "warning: no known static binary; $bin may need libraries the probe image lacks"
  fi
  dir="$(mktemp -d)"
  trap 'rm -rf "$dir"' EXIT
  cp -L "$bin" "$dir/probe"
  tar -C "$dir" -c . | docker import -c 'ENTRYPOINT ["/probe"]' - "$PROBE" >/dev/null \
    || die "docker import of $PROBE failed"
  log "imported $PROBE"
fi
out="$(docker run --rm --privileged "$PROBE" --version 2>&1)" \
  || die "privileged container failed: $out"
log "privileged container ok: $out"
log "ready (default runtime: $(docker info --format '{{.DefaultRuntime}}'))"
