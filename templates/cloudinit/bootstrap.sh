#!/bin/sh
# fledge CP-A bootstrap, run by cloud-init (runcmd) as: bootstrap.sh AGENT_PATH AGENT_CONFIG
# Runs kubeadm init; on success writes CAPI's bootstrap sentinel and installs fledge-agent; on
# failure writes a machine-readable record that fledge-agent reports:
#   /var/lib/fledge/bootstrap-failure.json  {"phase", "exitCode", "logTail", "time"}
# It takes no values from the request except as arguments, never through string substitution.
set -u
agent="$1"
agent_config="$2"
# Tests run the script against a scratch root; on a node it is /.
root="${FLEDGE_BOOTSTRAP_ROOT:-}"
state="$root/var/lib/fledge"
log="$state/bootstrap.log"
mkdir -p "$state" "$root/run/cluster-api"
chmod 0700 "$state"

fail() {
  phase="$1"; code="$2"
  python3 - "$phase" "$code" "$log" "$state/bootstrap-failure.json" <<'PY'
import json, os, sys, time
phase, code, log, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    with open(log, "rb") as f:
        tail = f.read()[-4096:].decode("utf-8", "replace")
except OSError:
    tail = ""
record = {"phase": phase, "exitCode": code, "logTail": tail,
          "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(record, f)
    f.flush()
    os.fsync(f.fileno())
os.rename(tmp, out)
PY
  exit "$code"
}

# A re-delivered seed (new instance-id, same disk) must not run kubeadm init on a node that
# already has a control plane: kubeadm's own state is the guard.
if [ -f "$root/etc/kubernetes/admin.conf" ] && [ -f "$root/etc/kubernetes/manifests/kube-apiserver.yaml" ]; then
  echo "kubeadm init already done on this node; not running it again" >>"$log"
else
  kubeadm init --config "$root/run/kubeadm/kubeadm.yaml" >>"$log" 2>&1 || fail kubeadm-init "$?"
fi
touch "$root/run/cluster-api/bootstrap-success.complete"
"$agent" install --config "$agent_config" >>"$log" 2>&1 || fail agent-install "$?"
# Bootstrap succeeded: a failure recorded by an earlier attempt is no longer true.
rm -f "$state/bootstrap-failure.json"
