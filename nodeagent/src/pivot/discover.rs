//! Discovery, scoped to one cluster (namespace + Cluster name): the CAPI core, bootstrap and
//! control-plane types, every CRD carrying clusterctl's move labels, and the namespace's Secrets
//! and ConfigMaps; then the ownerReference graph and cluster membership.

use std::collections::{BTreeMap, BTreeSet};

use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use serde_json::Value;

use super::ObjRef;

/// Lists in flight at once during discovery.
pub const LIST_PARALLELISM: usize = 8;

/// Label CAPI puts on objects of a cluster.
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
const MOVE_LABELS: [&str; 3] = [
    "clusterctl.cluster.x-k8s.io",
    "clusterctl.cluster.x-k8s.io/move",
    "clusterctl.cluster.x-k8s.io/move-hierarchy",
];
const CORE_GROUPS: [&str; 3] = [
    "cluster.x-k8s.io",
    "bootstrap.cluster.x-k8s.io",
    "controlplane.cluster.x-k8s.io",
];
/// Secrets CAPI owns by naming convention (`<cluster>-<suffix>`).
pub const SOFT_OWNED_SUFFIXES: [&str; 5] = ["ca", "etcd", "proxy", "sa", "kubeconfig"];

/// One discovered object.
#[derive(Debug, Clone)]
pub struct Node {
    /// Reference.
    pub obj: ObjRef,
    /// Owner uids (from ownerReferences).
    pub owners: Vec<OwnerRef>,
    /// The full object.
    pub data: Value,
}

/// An ownerReference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    /// Owner kind.
    pub kind: String,
    /// Owner name.
    pub name: String,
    /// Owner uid.
    pub uid: String,
}

/// Everything discovered in a namespace, and which of it belongs to the cluster.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// All objects of the moved types in the namespace, by uid.
    pub nodes: BTreeMap<String, Node>,
    /// UIDs that belong to the cluster.
    pub members: BTreeSet<String>,
    /// Why objects of the namespace were left out (other clusters' objects).
    pub excluded: Vec<(ObjRef, String)>,
    /// The types that were listed (the moved CRDs at their storage version, Secret, ConfigMap).
    pub types: Vec<ApiResource>,
    /// Members that belong to the cluster's ClusterClass (the class, the templates it names and
    /// what they own): copied to the target, never deleted from it on rollback.
    pub shared: BTreeSet<String>,
    /// Shared members that stay in the source (uid -> why): other clusters there use the class.
    pub keep: BTreeMap<String, String>,
}

impl Graph {
    /// The type of an object.
    pub fn resource(&self, obj: &ObjRef) -> Option<&ApiResource> {
        self.types
            .iter()
            .find(|t| t.api_version == obj.api_version && t.kind == obj.kind)
    }
}

/// Errors of discovery.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// A request failed.
    #[error("{what}: {source}")]
    Request {
        /// What was listed.
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The cluster does not exist.
    #[error("Cluster {namespace}/{name} not found in the source cluster")]
    NoCluster {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

/// The types to move, at their storage version: the CAPI core, bootstrap and control-plane
/// types and every CRD carrying clusterctl's move labels. An identity that may not list CRDs
/// (the agent's namespace-scoped access) gets them from API discovery instead: every namespaced
/// type of the `cluster.x-k8s.io` groups (CAPI and its providers), at the preferred version.
pub async fn move_types(client: &kube::Client) -> Result<Vec<ApiResource>, DiscoverError> {
    let list = match super::crds::list(client).await {
        Ok(list) => list,
        Err(kube::Error::Api(s)) if s.code == 403 => return discovered_types(client).await,
        Err(source) => {
            return Err(DiscoverError::Request {
                what: "listing CRDs".into(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for crd in list {
        let s = &crd.spec;
        let labels = crd.metadata.labels.clone().unwrap_or_default();
        let wanted = CORE_GROUPS.contains(&s.group.as_str())
            || MOVE_LABELS.iter().any(|l| labels.contains_key(*l));
        if !wanted || s.scope != "Namespaced" {
            continue;
        }
        let Some(v) = s.versions.iter().find(|v| v.storage) else {
            continue;
        };
        out.push(ApiResource {
            group: s.group.clone(),
            version: v.name.clone(),
            api_version: format!("{}/{}", s.group, v.name),
            kind: s.names.kind.clone(),
            plural: s.names.plural.clone(),
        });
    }
    out.sort_by(|a, b| (&a.group, &a.kind).cmp(&(&b.group, &b.kind)));
    Ok(out)
}

/// The namespaced types of the `cluster.x-k8s.io` groups, from API discovery.
async fn discovered_types(client: &kube::Client) -> Result<Vec<ApiResource>, DiscoverError> {
    let err = |what: &str| {
        let what = what.to_string();
        move |source| DiscoverError::Request { what, source }
    };
    let groups = client
        .list_api_groups()
        .await
        .map_err(err("listing API groups"))?;
    let names: Vec<String> = groups
        .groups
        .into_iter()
        .map(|g| g.name)
        .filter(|n| n == "cluster.x-k8s.io" || n.ends_with(".cluster.x-k8s.io"))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let discovery = kube::Discovery::new(client.clone())
        .filter(&names)
        .run()
        .await
        .map_err(err("discovering the cluster.x-k8s.io API groups"))?;
    let mut out: Vec<ApiResource> = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .filter(|(_, caps)| {
            caps.scope == kube::discovery::Scope::Namespaced
                && caps.supports_operation(kube::discovery::verbs::LIST)
        })
        .map(|(ar, _)| ar)
        .collect();
    out.sort_by(|a, b| (&a.group, &a.kind).cmp(&(&b.group, &b.kind)));
    Ok(out)
}

fn node(obj: DynamicObject, api_version: &str, kind: &str) -> Node {
    let owners = obj
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|o| OwnerRef {
            kind: o.kind,
            name: o.name,
            uid: o.uid,
        })
        .collect();
    let r = ObjRef {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: obj.metadata.name.clone().unwrap_or_default(),
        uid: obj.metadata.uid.clone().unwrap_or_default(),
    };
    let mut data = serde_json::to_value(&obj).unwrap_or_default();
    data["apiVersion"] = Value::String(api_version.into());
    data["kind"] = Value::String(kind.into());
    Node {
        obj: r,
        owners,
        data,
    }
}

/// Discovers the namespace and computes the cluster's members.
pub async fn discover(
    client: &kube::Client,
    namespace: &str,
    cluster: &str,
) -> Result<Graph, DiscoverError> {
    let mut g = Graph::default();
    let mut types = move_types(client).await?;
    for (kind, plural) in [("Secret", "secrets"), ("ConfigMap", "configmaps")] {
        types.push(ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: kind.into(),
            plural: plural.into(),
        });
    }
    // One list per type, several in flight (a fresh server answers the first list of a type
    // slowly).
    use futures::{StreamExt, TryStreamExt};
    let lists: Vec<(&ApiResource, Vec<DynamicObject>)> =
        futures::stream::iter(types.iter().map(|ar| async move {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, ar);
            api.list(&ListParams::default())
                .await
                .map(|l| (ar, l.items))
                .map_err(|source| DiscoverError::Request {
                    what: format!("listing {} in {namespace}", ar.plural),
                    source,
                })
        }))
        .buffered(LIST_PARALLELISM)
        .try_collect()
        .await?;
    for (ar, items) in lists {
        for obj in items {
            let n = node(obj, &ar.api_version, &ar.kind);
            g.nodes.insert(n.obj.uid.clone(), n);
        }
    }
    let root = g
        .nodes
        .values()
        .find(|n| {
            n.obj.kind == "Cluster"
                && n.obj.api_version.starts_with("cluster.x-k8s.io/")
                && n.obj.name == cluster
        })
        .map(|n| n.obj.uid.clone())
        .ok_or_else(|| DiscoverError::NoCluster {
            namespace: namespace.into(),
            name: cluster.into(),
        })?;
    membership(&mut g, &root, cluster);
    cluster_class(&mut g, &root, namespace);
    g.types = types;
    Ok(g)
}

/// The ClusterClass a Cluster's topology names, when it is in `namespace`
/// (v1beta2 `spec.topology.classRef`, v1beta1 `spec.topology.class`/`classNamespace`).
pub fn class_of(cluster: &Value, namespace: &str) -> Option<String> {
    let t = &cluster["spec"]["topology"];
    let (name, ns) = match t["classRef"]["name"].as_str() {
        Some(n) => (n, t["classRef"]["namespace"].as_str()),
        None => (t["class"].as_str()?, t["classNamespace"].as_str()),
    };
    (ns.is_none_or(|n| n.is_empty() || n == namespace)).then(|| name.to_string())
}

/// Adds the cluster's ClusterClass, the templates its spec names and what they own to the
/// members as shared objects; those other clusters of the namespace still use stay in the source.
fn cluster_class(g: &mut Graph, root: &str, namespace: &str) {
    let Some(class) = class_of(&g.nodes[root].data, namespace) else {
        return;
    };
    let Some(cc) = g
        .nodes
        .values()
        .find(|n| n.obj.kind == "ClusterClass" && n.obj.name == class)
        .map(|n| n.obj.uid.clone())
    else {
        return; // reported by the plan as a missing reference? It is simply not there to move.
    };
    let mut refs = Vec::new();
    collect_refs(&g.nodes[&cc].data["spec"], &mut refs);
    let mut shared = BTreeSet::from([cc.clone()]);
    for n in g.nodes.values() {
        if refs
            .iter()
            .any(|(k, name)| *k == n.obj.kind && *name == n.obj.name)
        {
            shared.insert(n.obj.uid.clone());
        }
    }
    loop {
        let before = shared.len();
        for n in g.nodes.values() {
            if !shared.contains(&n.obj.uid) && n.owners.iter().any(|o| shared.contains(&o.uid)) {
                shared.insert(n.obj.uid.clone());
            }
        }
        if shared.len() == before {
            break;
        }
    }
    let users: Vec<String> = g
        .nodes
        .values()
        .filter(|n| {
            n.obj.kind == "Cluster"
                && n.obj.uid != root
                && class_of(&n.data, namespace).as_deref() == Some(class.as_str())
        })
        .map(|n| n.obj.name.clone())
        .collect();
    for uid in &shared {
        g.members.insert(uid.clone());
        g.excluded.retain(|(o, _)| &o.uid != uid);
        if !users.is_empty() {
            g.keep.insert(
                uid.clone(),
                format!("ClusterClass {class} is also used by {}", users.join(", ")),
            );
        }
    }
    g.shared = shared;
}

/// Every (kind, name) pair named in a value (template references and the like).
fn collect_refs(v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            if let (Some(Value::String(k)), Some(Value::String(n))) = (m.get("kind"), m.get("name"))
            {
                out.push((k.clone(), n.clone()));
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

fn label<'a>(n: &'a Node, key: &str) -> Option<&'a str> {
    n.data["metadata"]["labels"][key].as_str()
}

/// Computes the members: the Cluster, objects labelled with its name, the objects its refs name,
/// its soft-owned Secrets, and everything owned (transitively) by a member. Objects labelled for
/// another cluster are excluded even when something links to them.
fn membership(g: &mut Graph, root: &str, cluster: &str) {
    let other_cluster = |n: &Node| label(n, CLUSTER_NAME_LABEL).is_some_and(|c| c != cluster);
    let mut members = BTreeSet::from([root.to_string()]);
    let cluster_data = g.nodes[root].data.clone();
    let refs: Vec<(String, String)> = ["infrastructureRef", "controlPlaneRef"]
        .iter()
        .filter_map(|r| {
            let v = &cluster_data["spec"][*r];
            Some((
                v["kind"].as_str()?.to_string(),
                v["name"].as_str()?.to_string(),
            ))
        })
        .collect();
    for n in g.nodes.values() {
        let soft = n.obj.kind == "Secret"
            && SOFT_OWNED_SUFFIXES
                .iter()
                .any(|s| n.obj.name == format!("{cluster}-{s}"));
        let by_label = label(n, CLUSTER_NAME_LABEL) == Some(cluster);
        let by_ref = refs
            .iter()
            .any(|(k, name)| &n.obj.kind == k && &n.obj.name == name);
        if soft || by_label || by_ref {
            members.insert(n.obj.uid.clone());
        }
    }
    loop {
        let before = members.len();
        for n in g.nodes.values() {
            if !members.contains(&n.obj.uid)
                && !other_cluster(n)
                && n.owners.iter().any(|o| members.contains(&o.uid))
            {
                members.insert(n.obj.uid.clone());
            }
        }
        if members.len() == before {
            break;
        }
    }
    for n in g.nodes.values() {
        if other_cluster(n) && members.contains(&n.obj.uid) {
            members.remove(&n.obj.uid);
        }
        // A service-account token belongs to the cluster that issued it (the agent's own
        // management identity is one): moving it would revoke it and mean nothing in the target.
        if n.obj.kind == "Secret"
            && n.data["type"] == "kubernetes.io/service-account-token"
            && members.remove(&n.obj.uid)
        {
            g.excluded.push((
                n.obj.clone(),
                "service-account token: it stays with the cluster that issued it".into(),
            ));
            continue;
        }
        if !members.contains(&n.obj.uid)
            && (label(n, CLUSTER_NAME_LABEL).is_some()
                || n.obj.api_version.contains("cluster.x-k8s.io"))
        {
            let why = match label(n, CLUSTER_NAME_LABEL) {
                Some(other) => format!("belongs to cluster {other}"),
                None => format!("not linked to cluster {cluster} (no label, owner or reference)"),
            };
            g.excluded.push((n.obj.clone(), why));
        }
    }
    g.members = members;
}
