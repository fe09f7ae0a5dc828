#!/usr/bin/env bash
# Writes cert-manager "components" in the layout of clusterctl's local repository, for tests:
#   OUT_DIR/cert-manager/VERSION_TAG/components.yaml
# holding cert-manager's real CRDs (read in place from its Go module's deploy/crds/, the
# controller-gen output: plain YAML, not Helm templates) and, instead of cert-manager's
# controller, cainjector and webhook, one Deployment running fledge-test-cert-manager: a TEST
# STAND-IN for cert-manager's selfSigned/CA issuance and CA injection, not cert-manager.
#
# Usage: tests/cert-standin/components.sh OUT_DIR VERSION_TAG IMAGE [BINARY_PATH]
#   VERSION_TAG  cert-manager's version whose CRDs to use, e.g. v1.19.1
#   IMAGE        an image holding the stand-in binary (pulled IfNotPresent)
#   BINARY_PATH  the binary's path in IMAGE (default /usr/local/bin/fledge-test-cert-manager)
# The module comes from `go mod download` (the Go module cache, else the Go proxy);
# CERT_MANAGER_MODULE_DIR=<dir> uses an unpacked module instead.
#
# clusterctl's labels (clusterctl.cluster.x-k8s.io, .../core: cert-manager) are not written:
# fledge-agent adds them to every object as clusterctl does (nodeagent/src/clusterctl/components.rs).
set -euo pipefail

if [ $# -lt 3 ] || [ $# -gt 4 ]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
out=$1 tag=$2 image=$3 binary=${4:-/usr/local/bin/fledge-test-cert-manager}
module=github.com/cert-manager/cert-manager

die() { echo "components.sh: $*" >&2; exit 1; }

dir=${CERT_MANAGER_MODULE_DIR:-}
if [ -z "$dir" ]; then
  command -v go >/dev/null || die "go is needed to download $module@$tag (or set CERT_MANAGER_MODULE_DIR)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && printf 'module fledge.invalid/certmanagercrds\n\ngo 1.22\n' >go.mod)
  json=$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "$module@$tag" 2>&1) ||
    die "go mod download $module@$tag failed: $json"
  dir=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' | head -n1)
  [ -n "$dir" ] || die "go mod download $module@$tag gave no Dir: $json"
fi
crds=$dir/deploy/crds
[ -d "$crds" ] || die "$crds is missing (is $module@$tag a cert-manager module with deploy/crds?)"
shopt -s nullglob
files=("$crds"/*.yaml)
[ ${#files[@]} -gt 0 ] || die "no CRD files in $crds"
for f in "${files[@]}"; do
  # These are controller-gen output; refuse Helm templates rather than render them wrongly.
  if grep -q '{{' "$f"; then die "$f is a template, not plain YAML"; fi
  grep -q '^kind: CustomResourceDefinition$' "$f" || die "$f is not a CustomResourceDefinition"
done

dest=$out/cert-manager/$tag
mkdir -p "$dest"
{
  echo "# cert-manager $tag CRDs (from $module@$tag deploy/crds) and fledge-test-cert-manager,"
  echo "# a TEST STAND-IN for cert-manager's selfSigned/CA issuance and CA injection, not cert-manager."
  cat <<'EOF'
apiVersion: v1
kind: Namespace
metadata:
  name: cert-manager
EOF
  for f in "${files[@]}"; do
    echo "---"
    # Drop a leading document marker; the files hold one CRD each.
    sed '/^---[[:space:]]*$/d' "$f"
  done
  cat <<EOF
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: cert-manager
  namespace: cert-manager
  labels:
    app.kubernetes.io/name: cert-manager
    app.kubernetes.io/instance: cert-manager
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: cert-manager-test-standin
  labels:
    app.kubernetes.io/name: cert-manager
    app.kubernetes.io/instance: cert-manager
rules:
- apiGroups: ["cert-manager.io"]
  resources: ["certificates", "issuers", "clusterissuers", "certificates/status", "issuers/status", "clusterissuers/status"]
  verbs: ["get", "list", "watch", "update", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch", "update", "patch"]
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"]
  verbs: ["get", "list", "watch", "update", "patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: cert-manager-test-standin
  labels:
    app.kubernetes.io/name: cert-manager
    app.kubernetes.io/instance: cert-manager
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cert-manager-test-standin
subjects:
- kind: ServiceAccount
  name: cert-manager
  namespace: cert-manager
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: cert-manager
  namespace: cert-manager
  labels:
    app.kubernetes.io/name: cert-manager
    app.kubernetes.io/instance: cert-manager
    app.kubernetes.io/component: controller
spec:
  replicas: 1
  selector:
    matchLabels:
      app.kubernetes.io/name: cert-manager
      app.kubernetes.io/instance: cert-manager
      app.kubernetes.io/component: controller
  template:
    metadata:
      labels:
        app.kubernetes.io/name: cert-manager
        app.kubernetes.io/instance: cert-manager
        app.kubernetes.io/component: controller
    spec:
      serviceAccountName: cert-manager
      tolerations:
      - key: node-role.kubernetes.io/control-plane
        operator: Exists
        effect: NoSchedule
      - key: node.cloudprovider.kubernetes.io/uninitialized
        operator: Exists
        effect: NoSchedule
      containers:
      - name: cert-manager-controller
        image: "$image"
        imagePullPolicy: IfNotPresent
        command: ["$binary"]
        args: ["--health-addr=0.0.0.0:9403", "--cluster-resource-namespace=cert-manager"]
        env:
        - name: RUST_LOG
          value: info
        ports:
        - name: http-healthz
          containerPort: 9403
          protocol: TCP
        readinessProbe:
          httpGet:
            path: /readyz
            port: http-healthz
          periodSeconds: 2
          failureThreshold: 3
        livenessProbe:
          httpGet:
            path: /livez
            port: http-healthz
          initialDelaySeconds: 10
          periodSeconds: 10
          failureThreshold: 6
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities:
            drop: ["ALL"]
        resources:
          requests:
            cpu: 10m
            memory: 32Mi
EOF
} >"$dest/components.yaml"
echo "$dest/components.yaml"
