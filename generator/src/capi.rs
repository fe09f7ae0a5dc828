//! Cluster API as fledge writes and reads it: the API groups a pivot moves, the types fledge
//! reads by name at the request's contract, and how its immutable templates are named.

use kube::api::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use crate::spec::{CapiVersion, CheckedCluster};

/// Cluster API's core group (Cluster, Machine, MachineDeployment, ...).
pub const GROUP: &str = "cluster.x-k8s.io";

/// The API groups whose objects the pivot moves, and that the agent's Role grants in its
/// namespace. The one list feeds both the rendered Role and the agent's discovery when it may
/// not list CRDs, so the two never disagree. Other `*.cluster.x-k8s.io` groups (clusterctl's
/// inventory, CAPV's supervisor-mode `vmware.infrastructure`, ...) are neither granted nor moved.
pub const MOVED_API_GROUPS: [&str; 6] = [
    "cluster.x-k8s.io",
    "controlplane.cluster.x-k8s.io",
    "bootstrap.cluster.x-k8s.io",
    "infrastructure.cluster.x-k8s.io",
    "addons.cluster.x-k8s.io",
    "ipam.cluster.x-k8s.io",
];

/// A type of Cluster API's core group at the contract `capi`: `kind` and its resource (plural).
pub fn resource(capi: CapiVersion, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, capi.as_str(), kind), plural)
}

/// The annotation on machine and bootstrap templates that records the Kubernetes version they
/// were rendered for.
pub const KUBERNETES_VERSION_ANNOTATION: &str = "fledge.dev/kubernetes-version";

/// Names an immutable template by its content. Machine templates cannot be changed in place
/// (CAPI replaces machines by pointing their owner at a new template), so each template is
/// named `<base>-<hash>`, the hash taken over its `spec` and the Kubernetes version it is for
/// (recorded in the `fledge.dev/kubernetes-version` annotation). The same content always gets
/// the same name: a replayed day-2 step creates nothing new, and a changed spec a new template.
/// Sets the name in `doc` and returns it.
pub fn name_by_content(base: &str, c: &CheckedCluster, doc: &mut Value) -> String {
    use sha2::{Digest, Sha256};
    let version = c.kubernetes_version.to_string();
    doc["metadata"]["annotations"][KUBERNETES_VERSION_ANNOTATION] = json!(version);
    let content = canonical(&json!({"kubernetesVersion": version, "spec": doc["spec"]}));
    let digest = Sha256::digest(content.as_bytes());
    let hash: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    let name = format!("{base}-{hash}");
    doc["metadata"]["name"] = json!(name);
    name
}

/// JSON with object keys sorted at every level (serde_json keeps insertion order here).
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let body: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&m[k])))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}
