//! The move graph, pure data and algorithms: every object discovered in the namespace as a node
//! with its owners, which of them belong to the cluster (ownerReferences, CAPI's cluster-name
//! label, clusterctl's move labels, the Secrets CAPI owns by name), the cluster's ClusterClass,
//! and the members the pivot refuses to move. [`super::discover`] fills it from the API server;
//! everything here works on what was listed, without requests, under table tests.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{ApiResource, DynamicObject};
use serde_json::Value;

use super::ObjRef;

/// Label CAPI puts on objects of a cluster.
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";

/// clusterctl's label (on an object or its CRD): move the object.
pub const MOVE_LABEL: &str = "clusterctl.cluster.x-k8s.io/move";

/// clusterctl's label (on an object or its CRD): move the object and what it owns.
pub const MOVE_HIERARCHY_LABEL: &str = "clusterctl.cluster.x-k8s.io/move-hierarchy";

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
    /// Owner apiVersion.
    pub api_version: String,
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
    /// Types that could not be listed ("Kind group/version", why): reported, not moved.
    pub unlisted: Vec<(String, String)>,
    /// Members the pivot cannot move correctly, and why (refused before any write).
    pub refused: Vec<(ObjRef, String)>,
    /// Members that live outside the namespace (uid -> their namespace, `None` when
    /// cluster-scoped): the global identities the cluster's infrastructure names, and their
    /// Secrets in the provider's namespace.
    pub located: BTreeMap<String, Option<String>>,
    /// Global members (identities and what they hold): copied, never deleted from the source nor
    /// (on rollback) from the target, and a copy already in the target is left as it is, as
    /// clusterctl move does.
    pub global: BTreeSet<String>,
    /// Types whose CRD carries clusterctl's `move` (false) or `move-hierarchy` (true) label, by
    /// `group/Kind`: every object of such a type in the namespace is moved.
    pub forced_types: BTreeMap<String, bool>,
}

impl Graph {
    /// The type of an object.
    pub fn resource(&self, obj: &ObjRef) -> Option<&ApiResource> {
        self.resource_of(&obj.api_version, &obj.kind)
    }

    /// The type of `apiVersion` and `kind`.
    pub fn resource_of(&self, api_version: &str, kind: &str) -> Option<&ApiResource> {
        self.types
            .iter()
            .find(|t| t.api_version == api_version && t.kind == kind)
    }

    /// Where a member lives when it is outside the namespace: `Some(None)` cluster-scoped,
    /// `Some(Some(ns))` in namespace `ns`; `None` in the namespace moved.
    pub fn location(&self, uid: &str) -> Option<Option<&str>> {
        self.located.get(uid).map(|l| l.as_deref())
    }
}

/// A discovered object as a graph node (its owners, its body with apiVersion and kind set).
pub(super) fn node(obj: DynamicObject, api_version: &str, kind: &str) -> Node {
    let owners = obj
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|o| OwnerRef {
            api_version: o.api_version,
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

/// Members the pivot of one namespace cannot move correctly: those owned by a cluster-scoped
/// object (it cannot be moved with them, and the copy would lose the link), and those whose
/// references name an object in another namespace.
pub fn refusals(
    g: &Graph,
    namespace: &str,
    cluster_scoped: &BTreeSet<String>,
) -> Vec<(ObjRef, String)> {
    let mut out = Vec::new();
    for uid in &g.members {
        let n = &g.nodes[uid];
        for o in &n.owners {
            if g.members.contains(&o.uid) {
                continue;
            }
            if cluster_scoped.contains(&format!("{}/{}", o.api_version, o.kind)) {
                out.push((
                    n.obj.clone(),
                    format!(
                        "owned by the cluster-scoped {}/{}: the pivot moves one namespace and would drop that owner",
                        o.kind, o.name
                    ),
                ));
            }
        }
        let mut refs = Vec::new();
        collect_namespaced_refs(&n.data["spec"], "spec", &mut refs);
        // Identity references are checked (naming the identity) by `identities::global`.
        let credential_paths: BTreeSet<String> = super::identities::credential_refs(n)
            .into_iter()
            .map(|r| r.path)
            .collect();
        for (path, ns) in refs {
            if ns != namespace && !credential_paths.contains(&path) {
                out.push((
                    n.obj.clone(),
                    format!("{path} refers to namespace {ns}: the pivot moves namespace {namespace} only"),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Every object reference (`kind` + `name` + `namespace`) in a value, with its field path.
fn collect_namespaced_refs(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            if let (Some(Value::String(_)), Some(Value::String(_)), Some(Value::String(ns))) =
                (m.get("kind"), m.get("name"), m.get("namespace"))
                && !ns.is_empty()
            {
                out.push((path.to_string(), ns.clone()));
            }
            for (k, x) in m {
                collect_namespaced_refs(x, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                collect_namespaced_refs(x, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
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
pub(super) fn cluster_class(g: &mut Graph, root: &str, namespace: &str) {
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
    g.shared.extend(shared);
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

/// The Cluster objects of the graph: (uid, name).
fn clusters(g: &Graph) -> Vec<(String, String)> {
    g.nodes
        .values()
        .filter(|n| n.obj.kind == "Cluster" && n.obj.api_version.starts_with("cluster.x-k8s.io/"))
        .map(|n| (n.obj.uid.clone(), n.obj.name.clone()))
        .collect()
}

/// The objects linked to one cluster: its Cluster, objects labelled with its name, the objects
/// its refs name, its soft-owned Secrets, and everything owned (transitively) by one of these.
/// An object labelled for another cluster can be linked (something of this cluster owns it), but
/// what it owns is not pulled in through it; another Cluster object never is.
fn linked(g: &Graph, root: &str, cluster: &str) -> BTreeSet<String> {
    let foreign = |n: &Node| label(n, CLUSTER_NAME_LABEL).is_some_and(|c| c != cluster);
    let is_cluster =
        |n: &Node| n.obj.kind == "Cluster" && n.obj.api_version.starts_with("cluster.x-k8s.io/");
    let mut set = BTreeSet::from([root.to_string()]);
    let cluster_data = &g.nodes[root].data;
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
        if (soft || by_label || by_ref) && !is_cluster(n) {
            set.insert(n.obj.uid.clone());
        }
    }
    // The identity and credentials Secret its infrastructure cluster names.
    set.extend(super::identities::chain(g, root));
    loop {
        let before = set.len();
        for n in g.nodes.values() {
            if set.contains(&n.obj.uid) || is_cluster(n) {
                continue;
            }
            let through_ours = n
                .owners
                .iter()
                .any(|o| set.contains(&o.uid) && g.nodes.get(&o.uid).is_some_and(|n| !foreign(n)));
            if through_ours {
                set.insert(n.obj.uid.clone());
            }
        }
        if set.len() == before {
            break;
        }
    }
    set
}

/// Computes the members (see [`linked`]). A member also linked to another cluster of the
/// namespace (by an owner, its label or a reference) is shared: copied to the target, kept in the
/// source, and never deleted from the target on rollback.
pub(super) fn membership(g: &mut Graph, root: &str, cluster: &str) {
    let mut members = linked(g, root, cluster);
    let others: Vec<(String, BTreeSet<String>)> = clusters(g)
        .into_iter()
        .filter(|(uid, _)| uid != root)
        .map(|(uid, name)| {
            let set = linked(g, &uid, &name);
            (name, set)
        })
        .collect();
    // What clusterctl's labels move and no other cluster holds: with the cluster, kept in the
    // source when the namespace has other clusters.
    let held: BTreeSet<String> = others.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
    let other_names: Vec<String> = others.iter().map(|(n, _)| n.clone()).collect();
    for uid in super::identities::forced(g, cluster, &held) {
        if members.insert(uid.clone()) && !other_names.is_empty() {
            g.shared.insert(uid.clone());
            g.keep
                .insert(uid, super::identities::others_why(&other_names));
        }
    }
    for uid in &members {
        if uid == root {
            continue;
        }
        let n = &g.nodes[uid];
        let mut users: BTreeSet<&str> = others
            .iter()
            .filter(|(_, set)| set.contains(uid))
            .map(|(name, _)| name.as_str())
            .collect();
        if let Some(other) = label(n, CLUSTER_NAME_LABEL).filter(|c| *c != cluster) {
            users.insert(other);
        }
        if !users.is_empty() {
            let users: Vec<&str> = users.into_iter().collect();
            g.shared.insert(uid.clone());
            g.keep.insert(
                uid.clone(),
                format!(
                    "also belongs to cluster {} (owner, label or reference)",
                    users.join(", ")
                ),
            );
        }
    }
    for n in g.nodes.values() {
        // A service-account token belongs to the cluster that issued it (the agent's own
        // management identity is one): moving it would revoke it and mean nothing in the target.
        let token = n.data["type"] == "kubernetes.io/service-account-token"
            || n.data["metadata"]["annotations"]["kubernetes.io/service-account.name"].is_string();
        // The agents' copy of that token in the cluster (kept by the leading agent for the
        // control-plane machines CAPI adds there) stays too: on the management plane the name
        // is the service-account token Secret itself.
        let agents = n.obj.name == fledge_generator::management::Names::new(cluster).agent_token;
        if n.obj.kind == "Secret" && (token || agents) && members.remove(&n.obj.uid) {
            g.shared.remove(&n.obj.uid);
            g.keep.remove(&n.obj.uid);
            g.excluded.push((
                n.obj.clone(),
                if token {
                    "service-account token: it stays with the cluster that issued it".into()
                } else {
                    "the agents' management credentials: they stay in the cluster the agents run in"
                        .into()
                },
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// (kind, name, cluster label, owner names, spec)
    type Row<'a> = (&'a str, &'a str, Option<&'a str>, &'a [&'a str], Value);

    fn api_version(kind: &str) -> &'static str {
        match kind {
            "Secret" | "ConfigMap" => "v1",
            "KubeadmControlPlane" => "controlplane.cluster.x-k8s.io/v1beta2",
            "KubeadmConfig" | "KubeadmConfigTemplate" => "bootstrap.cluster.x-k8s.io/v1beta2",
            k if k.starts_with("Dev") || k.starts_with("Azure") || k.starts_with("GCP") => {
                "infrastructure.cluster.x-k8s.io/v1beta2"
            }
            _ => "cluster.x-k8s.io/v1beta2",
        }
    }

    /// A graph from rows; an object's uid is `uid-<kind>-<name>`, owners are named by
    /// `Kind/name`.
    fn graph(rows: &[Row]) -> Graph {
        let uid = |kn: &str| format!("uid-{}", kn.replace('/', "-"));
        let mut g = Graph::default();
        for (kind, name, cluster, owners, spec) in rows {
            let mut data = json!({"apiVersion": api_version(kind), "kind": kind,
                "metadata": {"name": name, "namespace": "ns"}, "spec": spec});
            if let Some(c) = cluster {
                data["metadata"]["labels"] = json!({CLUSTER_NAME_LABEL: c});
            }
            if *kind == "Secret" && spec["type"].is_string() {
                data["type"] = spec["type"].clone();
            }
            let node = Node {
                obj: ObjRef {
                    api_version: api_version(kind).into(),
                    kind: kind.to_string(),
                    name: name.to_string(),
                    uid: uid(&format!("{kind}/{name}")),
                },
                owners: owners
                    .iter()
                    .map(|o| {
                        let (k, n) = o.split_once('/').unwrap();
                        OwnerRef {
                            api_version: api_version(k).into(),
                            kind: k.into(),
                            name: n.into(),
                            uid: uid(o),
                        }
                    })
                    .collect(),
                data,
            };
            g.nodes.insert(node.obj.uid.clone(), node);
        }
        g
    }

    fn cluster_spec(name: &str) -> Value {
        json!({"controlPlaneRef": {"kind": "KubeadmControlPlane", "name": format!("{name}-cp")},
               "infrastructureRef": {"kind": "DevCluster", "name": name}})
    }

    /// Runs membership for `cluster` on a graph; returns (members, kept in the source) as
    /// `Kind/name`.
    fn members_labelled(g: Graph, cluster: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
        let mut g = g;
        let root = format!("uid-Cluster-{cluster}");
        membership(&mut g, &root, cluster);
        let name = |uid: &String| {
            let o = &g.nodes[uid].obj;
            format!("{}/{}", o.kind, o.name)
        };
        let members = g.members.iter().map(name).collect();
        let keep = g
            .keep
            .iter()
            .map(|(u, why)| (name(u), why.clone()))
            .collect();
        (members, keep)
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cluster_scoped_owners_and_cross_namespace_refs_are_refused() {
        let mut g = graph(&[
            (
                "Cluster",
                "a",
                None,
                &[],
                json!({
                "infrastructureRef": {"kind": "DevCluster", "name": "a", "namespace": "ns"},
                "controlPlaneRef": {"kind": "KubeadmControlPlane", "name": "a-cp", "namespace": "elsewhere"}}),
            ),
            ("DevCluster", "a", None, &["Cluster/a"], json!({})),
            ("Secret", "a-ca", None, &[], json!({})),
        ]);
        membership(&mut g, "uid-Cluster-a", "a");
        // An owner that is a cluster-scoped identity.
        let uid = "uid-DevCluster-a".to_string();
        g.nodes.get_mut(&uid).unwrap().owners = vec![OwnerRef {
            api_version: "infrastructure.cluster.x-k8s.io/v1beta1".into(),
            kind: "VSphereClusterIdentity".into(),
            name: "id".into(),
            uid: "u-id".into(),
        }];
        let scoped = BTreeSet::from([
            "infrastructure.cluster.x-k8s.io/v1beta1/VSphereClusterIdentity".to_string(),
        ]);
        let got: Vec<String> = refusals(&g, "ns", &scoped)
            .into_iter()
            .map(|(o, why)| format!("{o}: {why}"))
            .collect();
        assert_eq!(
            got,
            vec![
                "Cluster/a: spec.controlPlaneRef refers to namespace elsewhere: the pivot moves namespace ns only",
                "DevCluster/a: owned by the cluster-scoped VSphereClusterIdentity/id: the pivot moves one namespace and would drop that owner",
            ]
        );
        assert!(refusals(&g, "ns", &BTreeSet::new()).len() == 1);
    }

    #[test]
    fn a_type_labelled_move_on_its_crd_moves_every_object_of_it_in_the_namespace() {
        let mut g = graph(&[
            ("Cluster", "a", None, &[], cluster_spec("a")),
            ("DevMachineTemplate", "spare", None, &[], json!({})),
            (
                "ConfigMap",
                "spare-cm",
                None,
                &["DevMachineTemplate/spare"],
                json!({}),
            ),
        ]);
        g.forced_types.insert(
            "infrastructure.cluster.x-k8s.io/DevMachineTemplate".into(),
            true,
        );
        let (members, kept) = members_labelled(g, "a");
        assert_eq!(
            members,
            set(&[
                "Cluster/a",
                "DevMachineTemplate/spare",
                "ConfigMap/spare-cm"
            ])
        );
        assert!(kept.is_empty());
    }

    #[test]
    fn membership_table() {
        struct Case<'a> {
            name: &'a str,
            rows: Vec<Row<'a>>,
            cluster: &'a str,
            members: &'a [&'a str],
            kept: &'a [(&'a str, &'a str)],
            /// Labels put on objects: (`Kind/name`, label key).
            labels: &'a [(&'a str, &'a str)],
        }
        let cases = [
            Case {
                name: "the agents' token copy in the cluster is not moved, its kubeconfig is",
                rows: vec![
                    ("Cluster", "a", None, &[], cluster_spec("a")),
                    ("Secret", "a-fledge-agent-token", Some("a"), &[], json!({})),
                    ("Secret", "a-kubeconfig", Some("a"), &[], json!({})),
                ],
                cluster: "a",
                members: &["Cluster/a", "Secret/a-kubeconfig"],
                kept: &[],
                labels: &[],
            },
            Case {
                name: "a template owned by two clusters is copied and kept in the source",
                rows: vec![
                    ("Cluster", "a", None, &[], cluster_spec("a")),
                    ("Cluster", "b", None, &[], cluster_spec("b")),
                    (
                        "DevMachineTemplate",
                        "shared",
                        None,
                        &["Cluster/a", "Cluster/b"],
                        json!({}),
                    ),
                    (
                        "Secret",
                        "shared-creds",
                        None,
                        &["DevMachineTemplate/shared"],
                        json!({}),
                    ),
                ],
                cluster: "a",
                members: &[
                    "Cluster/a",
                    "DevMachineTemplate/shared",
                    "Secret/shared-creds",
                ],
                kept: &[
                    ("DevMachineTemplate/shared", "b"),
                    ("Secret/shared-creds", "b"),
                ],
                labels: &[],
            },
            Case {
                name: "prefix-named clusters stay apart",
                rows: vec![
                    ("Cluster", "web", None, &[], cluster_spec("web")),
                    ("Cluster", "web-2", None, &[], cluster_spec("web-2")),
                    (
                        "KubeadmControlPlane",
                        "web-cp",
                        Some("web"),
                        &["Cluster/web"],
                        json!({}),
                    ),
                    (
                        "KubeadmControlPlane",
                        "web-2-cp",
                        Some("web-2"),
                        &["Cluster/web-2"],
                        json!({}),
                    ),
                    ("Secret", "web-ca", None, &[], json!({})),
                    ("Secret", "web-2-ca", None, &[], json!({})),
                    ("Secret", "web-2-kubeconfig", None, &[], json!({})),
                    ("DevCluster", "web-2", None, &["Cluster/web-2"], json!({})),
                ],
                cluster: "web",
                members: &["Cluster/web", "KubeadmControlPlane/web-cp", "Secret/web-ca"],
                kept: &[],
                labels: &[],
            },
            Case {
                name: "an object labelled for another cluster but owned by this one is kept",
                rows: vec![
                    ("Cluster", "a", None, &[], cluster_spec("a")),
                    ("Cluster", "b", None, &[], cluster_spec("b")),
                    ("ConfigMap", "odd", Some("b"), &["Cluster/a"], json!({})),
                    (
                        "Secret",
                        "child-of-odd",
                        None,
                        &["ConfigMap/odd"],
                        json!({}),
                    ),
                ],
                cluster: "a",
                members: &["Cluster/a", "ConfigMap/odd"],
                kept: &[("ConfigMap/odd", "b")],
                labels: &[],
            },
            Case {
                name: "the other cluster's refs make an object shared",
                rows: vec![
                    ("Cluster", "a", None, &[], cluster_spec("a")),
                    (
                        "Cluster",
                        "b",
                        None,
                        &[],
                        json!({"infrastructureRef": {"kind": "DevCluster", "name": "a"}}),
                    ),
                    ("DevCluster", "a", None, &["Cluster/a"], json!({})),
                ],
                cluster: "a",
                members: &["Cluster/a", "DevCluster/a"],
                kept: &[("DevCluster/a", "b")],
                labels: &[],
            },
            Case {
                name: "a service-account token is never moved, another Cluster never pulled in",
                rows: vec![
                    ("Cluster", "a", None, &[], cluster_spec("a")),
                    ("Cluster", "b", None, &["Cluster/a"], cluster_spec("b")),
                    (
                        "Secret",
                        "a-agent-token",
                        Some("a"),
                        &[],
                        json!({"type": "kubernetes.io/service-account-token"}),
                    ),
                ],
                cluster: "a",
                members: &["Cluster/a"],
                kept: &[],
                labels: &[],
            },
            Case {
                name: "move-hierarchy moves the object and what it owns, move the object alone",
                rows: vec![
                    ("Cluster", "a", None, &[], cluster_spec("a")),
                    ("ConfigMap", "tree", None, &[], json!({})),
                    ("Secret", "leaf", None, &["ConfigMap/tree"], json!({})),
                    ("ConfigMap", "single", None, &[], json!({})),
                    (
                        "Secret",
                        "not-pulled",
                        None,
                        &["ConfigMap/single"],
                        json!({}),
                    ),
                    ("Secret", "unlabelled", None, &[], json!({})),
                ],
                cluster: "a",
                members: &[
                    "Cluster/a",
                    "ConfigMap/tree",
                    "Secret/leaf",
                    "ConfigMap/single",
                ],
                kept: &[],
                labels: &[
                    ("ConfigMap/tree", MOVE_HIERARCHY_LABEL),
                    ("ConfigMap/single", MOVE_LABEL),
                ],
            },
            Case {
                name: "labelled objects no cluster holds are copied and kept for the namespace's other clusters",
                rows: vec![
                    ("Cluster", "a", None, &[], cluster_spec("a")),
                    ("Cluster", "b", None, &[], cluster_spec("b")),
                    ("Secret", "team-creds", None, &[], json!({})),
                ],
                cluster: "a",
                members: &["Cluster/a", "Secret/team-creds"],
                kept: &[("Secret/team-creds", "b")],
                labels: &[("Secret/team-creds", MOVE_LABEL)],
            },
            Case {
                name: "the infrastructure's identityRef and the identity's clientSecret are followed, another cluster's labelled identity is not",
                rows: vec![
                    (
                        "Cluster",
                        "a",
                        None,
                        &[],
                        json!({
                        "infrastructureRef": {"kind": "AzureCluster", "name": "a"}}),
                    ),
                    (
                        "Cluster",
                        "b",
                        None,
                        &[],
                        json!({
                        "infrastructureRef": {"kind": "AzureCluster", "name": "b"}}),
                    ),
                    (
                        "AzureCluster",
                        "a",
                        None,
                        &["Cluster/a"],
                        json!({
                        "identityRef": {"kind": "AzureClusterIdentity", "name": "id-a"}}),
                    ),
                    (
                        "AzureCluster",
                        "b",
                        None,
                        &["Cluster/b"],
                        json!({
                        "identityRef": {"kind": "AzureClusterIdentity", "name": "id-b"}}),
                    ),
                    (
                        "AzureClusterIdentity",
                        "id-a",
                        None,
                        &[],
                        json!({
                        "clientSecret": {"name": "sp-a"}}),
                    ),
                    (
                        "AzureClusterIdentity",
                        "id-b",
                        None,
                        &[],
                        json!({
                        "clientSecret": {"name": "sp-b"}}),
                    ),
                    ("Secret", "sp-a", None, &[], json!({})),
                    ("Secret", "sp-b", None, &[], json!({})),
                ],
                cluster: "a",
                members: &[
                    "Cluster/a",
                    "AzureCluster/a",
                    "AzureClusterIdentity/id-a",
                    "Secret/sp-a",
                ],
                kept: &[],
                labels: &[
                    ("AzureClusterIdentity/id-a", MOVE_HIERARCHY_LABEL),
                    ("AzureClusterIdentity/id-b", MOVE_HIERARCHY_LABEL),
                ],
            },
            Case {
                name: "an identity two clusters name is copied and kept in the source",
                rows: vec![
                    (
                        "Cluster",
                        "a",
                        None,
                        &[],
                        json!({
                        "infrastructureRef": {"kind": "GCPCluster", "name": "a"}}),
                    ),
                    (
                        "Cluster",
                        "b",
                        None,
                        &[],
                        json!({
                        "infrastructureRef": {"kind": "GCPCluster", "name": "b"}}),
                    ),
                    (
                        "GCPCluster",
                        "a",
                        None,
                        &["Cluster/a"],
                        json!({
                        "credentialsRef": {"name": "gcp"}}),
                    ),
                    (
                        "GCPCluster",
                        "b",
                        None,
                        &["Cluster/b"],
                        json!({
                        "credentialsRef": {"name": "gcp"}}),
                    ),
                    ("Secret", "gcp", None, &[], json!({})),
                ],
                cluster: "a",
                members: &["Cluster/a", "GCPCluster/a", "Secret/gcp"],
                kept: &[("Secret/gcp", "b")],
                labels: &[],
            },
        ];
        for case in cases {
            let mut g = graph(&case.rows);
            for (obj, key) in case.labels {
                let uid = format!("uid-{}", obj.replace('/', "-"));
                g.nodes.get_mut(&uid).unwrap().data["metadata"]["labels"][*key] = json!("");
            }
            let (members, kept) = members_labelled(g, case.cluster);
            assert_eq!(members, set(case.members), "{}", case.name);
            assert_eq!(
                kept.keys().cloned().collect::<BTreeSet<_>>(),
                case.kept.iter().map(|(o, _)| o.to_string()).collect(),
                "{}",
                case.name
            );
            for (o, other) in case.kept {
                assert!(
                    kept[*o].contains(&format!("cluster {other}")),
                    "{}: {o}: {}",
                    case.name,
                    kept[*o]
                );
            }
        }
    }
}
