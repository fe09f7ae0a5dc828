//! Identities and credentials: what a cluster's infrastructure authenticates with, and the
//! objects clusterctl's `move` / `move-hierarchy` labels ask to move.
//!
//! clusterctl move copies every object of its namespace labelled `move` (and, for
//! `move-hierarchy`, what the object owns), and every *global* (cluster-scoped) object of a type
//! labelled so — CAPA's `AWSCluster{Static,Role,Controller}Identity` — with the Secrets they own
//! in an infrastructure provider's namespace. Global objects are copied, never deleted from the
//! source, and a copy already in the target is left as it is.
//!
//! The pivot moves one cluster into its own workload cluster, so it follows the cluster's own
//! references instead of copying every tenant's global identities: the infrastructure cluster's
//! `spec.identityRef` (AWS, Azure, vSphere) or `spec.credentialsRef` (GCP), then the identity's
//! `sourceIdentityRef` (an AWS role chain), `secretRef` / `secretName` (a Secret in the provider's
//! namespace, for a global identity) and `clientSecret` (Azure). What it cannot follow (another
//! namespace, an object that does not exist or may not be read) is refused before any write,
//! naming the identity.

use std::collections::BTreeSet;

use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use serde_json::Value;

use super::ObjRef;
use super::discover::DiscoverError;
use super::graph::{CLUSTER_NAME_LABEL, Graph, MOVE_HIERARCHY_LABEL, MOVE_LABEL, Node};

/// A reference to the identity or the Secret an object authenticates with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRef {
    /// Field path (`spec.identityRef`).
    pub path: String,
    /// Kind named (`Secret` for the Secret references).
    pub kind: String,
    /// Name.
    pub name: String,
    /// The namespace the reference names, when it names one.
    pub namespace: Option<String>,
    /// A Secret in the namespace of the provider's controllers (a global identity's
    /// `secretRef` / `secretName`), not in the referrer's.
    pub provider_namespace: bool,
}

/// The identity and Secret references of an infrastructure cluster or an identity.
pub fn credential_refs(n: &Node) -> Vec<CredentialRef> {
    let spec = &n.data["spec"];
    let global = n.data["metadata"]["namespace"]
        .as_str()
        .is_none_or(str::is_empty)
        && n.obj.kind.contains("Identity");
    let ns = |v: &Value| {
        v["namespace"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let mut out = Vec::new();
    for field in ["identityRef", "sourceIdentityRef"] {
        let v = &spec[field];
        if let (Some(kind), Some(name)) = (v["kind"].as_str(), v["name"].as_str()) {
            out.push(CredentialRef {
                path: format!("spec.{field}"),
                kind: kind.into(),
                name: name.into(),
                namespace: ns(v),
                provider_namespace: kind == "Secret" && global,
            });
        }
    }
    for field in ["credentialsRef", "clientSecret", "secretRef", "secretName"] {
        let v = &spec[field];
        let (name, namespace) = match v {
            Value::String(s) => (s.as_str(), None),
            Value::Object(_) => match v["name"].as_str() {
                Some(n) => (n, ns(v)),
                None => continue,
            },
            _ => continue,
        };
        if name.is_empty() {
            continue;
        }
        out.push(CredentialRef {
            path: format!("spec.{field}"),
            kind: "Secret".into(),
            name: name.into(),
            provider_namespace: global && namespace.is_none(),
            namespace,
        });
    }
    out
}

/// The uid of the Cluster's infrastructure cluster, when the namespace holds it.
pub(super) fn infra_of(g: &Graph, root: &str) -> Option<String> {
    let r = &g.nodes[root].data["spec"]["infrastructureRef"];
    let (kind, name) = (r["kind"].as_str()?, r["name"].as_str()?);
    g.nodes
        .values()
        .find(|n| n.obj.kind == kind && n.obj.name == name && !g.located.contains_key(&n.obj.uid))
        .map(|n| n.obj.uid.clone())
}

/// The identities and Secrets of the namespace that the cluster's infrastructure names, directly
/// or through an identity (what lies outside the namespace is [`global`]'s).
pub(super) fn chain(g: &Graph, root: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo: Vec<String> = infra_of(g, root).into_iter().collect();
    while let Some(uid) = todo.pop() {
        let n = &g.nodes[&uid];
        let own_ns = n.data["metadata"]["namespace"].as_str();
        for r in credential_refs(n) {
            if r.provider_namespace || (r.namespace.is_some() && r.namespace.as_deref() != own_ns) {
                continue;
            }
            if let Some(t) = g.nodes.values().find(|t| {
                t.obj.kind == r.kind && t.obj.name == r.name && !g.located.contains_key(&t.obj.uid)
            }) && out.insert(t.obj.uid.clone())
            {
                todo.push(t.obj.uid.clone());
            }
        }
    }
    out
}

/// The objects of the namespace clusterctl's labels move (`move`: the object; `move-hierarchy`:
/// the object and what it owns, transitively), on the object or on its CRD, leaving out Cluster
/// objects, objects labelled for another cluster than `cluster`, and what `others` (the other
/// clusters' linked objects) hold.
pub(super) fn forced(g: &Graph, cluster: &str, others: &BTreeSet<String>) -> BTreeSet<String> {
    let group_kind = |n: &Node| {
        let group = n.obj.api_version.rsplit_once('/').map_or("", |(g, _)| g);
        format!("{group}/{}", n.obj.kind)
    };
    let eligible = |n: &Node| {
        let is_cluster =
            n.obj.kind == "Cluster" && n.obj.api_version.starts_with("cluster.x-k8s.io/");
        let foreign = n.data["metadata"]["labels"][CLUSTER_NAME_LABEL]
            .as_str()
            .is_some_and(|c| c != cluster);
        !(is_cluster
            || foreign
            || others.contains(&n.obj.uid)
            || g.located.contains_key(&n.obj.uid))
    };
    let labels = |n: &Node| n.data["metadata"]["labels"].as_object().cloned();
    let mut set = BTreeSet::new();
    let mut hierarchy = BTreeSet::new();
    for n in g.nodes.values().filter(|n| eligible(n)) {
        let l = labels(n).unwrap_or_default();
        let by_type = g.forced_types.get(&group_kind(n));
        if l.contains_key(MOVE_HIERARCHY_LABEL) || by_type == Some(&true) {
            hierarchy.insert(n.obj.uid.clone());
            set.insert(n.obj.uid.clone());
        } else if l.contains_key(MOVE_LABEL) || by_type == Some(&false) {
            set.insert(n.obj.uid.clone());
        }
    }
    loop {
        let before = hierarchy.len();
        for n in g.nodes.values().filter(|n| eligible(n)) {
            if !hierarchy.contains(&n.obj.uid)
                && n.owners.iter().any(|o| hierarchy.contains(&o.uid))
            {
                hierarchy.insert(n.obj.uid.clone());
                set.insert(n.obj.uid.clone());
            }
        }
        if hierarchy.len() == before {
            break;
        }
    }
    set
}

/// Why a global member is copied and kept.
const GLOBAL_WHY: &str = "global identity (or its Secret): copied and never deleted from the source, as clusterctl move does; a copy already in the target is left as it is";

/// Follows the cluster's identity references out of the namespace: a global (cluster-scoped)
/// identity and, for it, its Secret in an infrastructure provider's namespace become global
/// members ([`Graph::located`], [`Graph::global`]). Returns what cannot be followed (refused
/// before any write, naming the identity). The namespaced part of the chain is already a member
/// ([`chain`]).
pub async fn global(
    client: &kube::Client,
    g: &mut Graph,
    root: &str,
    namespace: &str,
) -> Result<Vec<(ObjRef, String)>, DiscoverError> {
    let mut refused = Vec::new();
    let Some(infra) = infra_of(g, root) else {
        return Ok(refused);
    };
    let mut provider_namespaces: Option<Vec<String>> = None;
    let mut todo = vec![infra];
    let mut seen = BTreeSet::new();
    while let Some(uid) = todo.pop() {
        if !seen.insert(uid.clone()) {
            continue;
        }
        let n = g.nodes[&uid].clone();
        let own_ns = n.data["metadata"]["namespace"].as_str().map(str::to_string);
        for r in credential_refs(&n) {
            let named = if r.kind == "Secret" {
                format!("Secret {}", r.name)
            } else {
                format!("{}/{}", r.kind, r.name)
            };
            if let Some(other) = r
                .namespace
                .as_deref()
                .filter(|o| Some(*o) != own_ns.as_deref())
            {
                refused.push((
                    n.obj.clone(),
                    format!(
                        "{} names {named} in namespace {other}: the pivot moves namespace {namespace} only, and the cluster would lose its credentials; put the identity in {namespace}",
                        r.path
                    ),
                ));
                continue;
            }
            // In the namespace: a member through `chain`, or missing.
            let local = g.nodes.values().find(|t| {
                t.obj.kind == r.kind && t.obj.name == r.name && !g.located.contains_key(&t.obj.uid)
            });
            if !r.provider_namespace && own_ns.is_some() {
                if let Some(t) = local {
                    if g.members.contains(&t.obj.uid) {
                        todo.push(t.obj.uid.clone());
                    }
                    continue;
                }
                if r.kind == "Secret" {
                    refused.push((
                        n.obj.clone(),
                        format!(
                            "{} names {named}, which does not exist in namespace {namespace}: the cluster would have no credentials after the pivot",
                            r.path
                        ),
                    ));
                    continue;
                }
            }
            let found = if r.provider_namespace {
                let pns = match &provider_namespaces {
                    Some(p) => p.clone(),
                    None => {
                        let p = infra_provider_namespaces(client).await?;
                        provider_namespaces = Some(p.clone());
                        p
                    }
                };
                provider_secret(client, &r.name, &pns).await.map_err(|why| {
                    format!(
                        "{} names {named}, {why}: the identity would have no credentials after the pivot",
                        r.path
                    )
                })
            } else {
                cluster_scoped(client, &n, &r, namespace).await
            };
            match found {
                Ok(obj) => {
                    let uid = add_global(g, obj);
                    todo.push(uid);
                }
                Err(why) => refused.push((n.obj.clone(), why)),
            }
        }
    }
    Ok(refused)
}

/// Adds a global object to the graph as a member; returns its uid.
fn add_global(g: &mut Graph, (obj, ar): (DynamicObject, ApiResource)) -> String {
    let location = obj.metadata.namespace.clone();
    let mut node = super::graph::node(obj, &ar.api_version, &ar.kind);
    let uid = node.obj.uid.clone();
    if let Some(old) = g.nodes.get(&uid) {
        node = old.clone();
    }
    g.nodes.insert(uid.clone(), node);
    g.members.insert(uid.clone());
    g.shared.insert(uid.clone());
    g.global.insert(uid.clone());
    g.keep.insert(uid.clone(), GLOBAL_WHY.into());
    g.located.insert(uid.clone(), location);
    if g.resource_of(&ar.api_version, &ar.kind).is_none() {
        g.types.push(ar);
    }
    uid
}

/// The namespaces of the infrastructure providers in clusterctl's inventory (where a global
/// identity's Secret lives).
async fn infra_provider_namespaces(client: &kube::Client) -> Result<Vec<String>, DiscoverError> {
    let api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &crate::clusterctl::inventory::inventory_resource(),
    );
    match api.list(&ListParams::default()).await {
        Ok(list) => {
            let set: BTreeSet<String> = list
                .items
                .into_iter()
                .filter(|p| p.data["type"] == "InfrastructureProvider")
                .filter_map(|p| p.metadata.namespace)
                .collect();
            Ok(set.into_iter().collect())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(vec![]),
        Err(source) => Err(DiscoverError::Request {
            what: "listing clusterctl's provider inventory".into(),
            source,
        }),
    }
}

fn secret_resource() -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "Secret".into(),
        plural: "secrets".into(),
    }
}

/// The Secret `name` in the first of `namespaces` that holds it.
async fn provider_secret(
    client: &kube::Client,
    name: &str,
    namespaces: &[String],
) -> Result<(DynamicObject, ApiResource), String> {
    let ar = secret_resource();
    if namespaces.is_empty() {
        return Err(
            "but clusterctl's inventory records no infrastructure provider, whose namespace holds it"
                .into(),
        );
    }
    // A namespace the pivot may not read is passed over: the Secret may be in the next one.
    let mut forbidden = Vec::new();
    for ns in namespaces {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        match api.get_opt(name).await {
            Ok(Some(s)) => return Ok((s, ar)),
            Ok(None) => {}
            Err(kube::Error::Api(s)) if s.code == 403 => forbidden.push(ns.as_str()),
            Err(e) => return Err(format!("which could not be read in namespace {ns}: {e}")),
        }
    }
    if !forbidden.is_empty() {
        return Err(format!(
            "which is not in the infrastructure provider namespaces the pivot may read, and it may not read {} (HTTP 403: grant get on secrets there)",
            forbidden.join(", ")
        ));
    }
    Err(format!(
        "which does not exist in the infrastructure provider namespace{} {}",
        if namespaces.len() > 1 { "s" } else { "" },
        namespaces.join(", ")
    ))
}

/// Reads the cluster-scoped object a reference names (its type is found through API discovery
/// of the referrer's group); an error says why it cannot be moved.
async fn cluster_scoped(
    client: &kube::Client,
    referrer: &Node,
    r: &CredentialRef,
    namespace: &str,
) -> Result<(DynamicObject, ApiResource), String> {
    let named = format!("{}/{}", r.kind, r.name);
    let api_version = referrer.obj.api_version.as_str();
    let resources = if api_version.contains('/') {
        client.list_api_group_resources(api_version).await
    } else {
        client.list_core_api_resources(api_version).await
    };
    let resources = resources.map_err(|e| {
        format!(
            "{} names {named}: discovering {api_version} failed: {e}",
            r.path
        )
    })?;
    let Some(res) = resources
        .resources
        .iter()
        .find(|x| x.kind == r.kind && !x.name.contains('/'))
    else {
        return Err(format!(
            "{} names {named}, a kind {api_version} does not serve",
            r.path
        ));
    };
    if res.namespaced {
        return Err(format!(
            "{} names {named}, which does not exist in namespace {namespace}: the cluster would have no credentials after the pivot",
            r.path
        ));
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let ar = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: r.kind.clone(),
        plural: res.name.clone(),
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    match api.get_opt(&r.name).await {
        Ok(Some(o)) => Ok((o, ar)),
        Ok(None) => Err(format!(
            "{} names the cluster-scoped {named}, which does not exist: the cluster would have no credentials after the pivot",
            r.path
        )),
        Err(kube::Error::Api(s)) if s.code == 403 => Err(format!(
            "{} names the cluster-scoped {named}, which the pivot may not read (HTTP 403: grant get on {}.{group})",
            r.path, res.name
        )),
        Err(e) => Err(format!("{} names {named}: reading it failed: {e}", r.path)),
    }
}

/// The other clusters' names, for the reason a forced member stays in the source.
pub(super) fn others_why(names: &[String]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("cluster {n}")).collect();
    format!(
        "labelled for clusterctl move and linked to no one cluster: copied, and kept in the source, where {} may use it",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(kind: &str, data: Value) -> Node {
        Node {
            obj: ObjRef {
                api_version: "infrastructure.cluster.x-k8s.io/v1beta2".into(),
                kind: kind.into(),
                name: "x".into(),
                uid: "u".into(),
            },
            owners: vec![],
            data,
        }
    }

    #[test]
    fn credential_refs_of_each_provider() {
        let refs = |kind: &str, data: Value| -> Vec<String> {
            credential_refs(&node(kind, data))
                .into_iter()
                .map(|r| {
                    format!(
                        "{} -> {} {} ns={} provider={}",
                        r.path,
                        r.kind,
                        r.name,
                        r.namespace.unwrap_or_default(),
                        r.provider_namespace
                    )
                })
                .collect()
        };
        let namespaced = |spec: Value| json!({"metadata": {"namespace": "ns"}, "spec": spec});
        let global = |spec: Value| json!({"metadata": {}, "spec": spec});
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            (
                "AWSCluster",
                namespaced(
                    json!({"identityRef": {"kind": "AWSClusterStaticIdentity", "name": "id"}}),
                ),
                vec!["spec.identityRef -> AWSClusterStaticIdentity id ns= provider=false"],
            ),
            (
                "AWSClusterStaticIdentity",
                global(json!({"secretRef": "aws-creds"})),
                vec!["spec.secretRef -> Secret aws-creds ns= provider=true"],
            ),
            (
                "AWSClusterRoleIdentity",
                global(
                    json!({"roleARN": "arn", "sourceIdentityRef": {"kind": "AWSClusterStaticIdentity", "name": "id"}}),
                ),
                vec!["spec.sourceIdentityRef -> AWSClusterStaticIdentity id ns= provider=false"],
            ),
            ("AWSClusterControllerIdentity", global(json!({})), vec![]),
            (
                "AzureCluster",
                namespaced(
                    json!({"identityRef": {"kind": "AzureClusterIdentity", "name": "id", "namespace": "ns"}}),
                ),
                vec!["spec.identityRef -> AzureClusterIdentity id ns=ns provider=false"],
            ),
            (
                "AzureClusterIdentity",
                namespaced(json!({"clientSecret": {"name": "s", "namespace": "ns"}})),
                vec!["spec.clientSecret -> Secret s ns=ns provider=false"],
            ),
            (
                "GCPCluster",
                namespaced(json!({"credentialsRef": {"name": "gcp", "namespace": "ns"}})),
                vec!["spec.credentialsRef -> Secret gcp ns=ns provider=false"],
            ),
            (
                "VSphereCluster",
                namespaced(json!({"identityRef": {"kind": "Secret", "name": "vs"}})),
                vec!["spec.identityRef -> Secret vs ns= provider=false"],
            ),
            (
                "VSphereClusterIdentity",
                global(json!({"secretName": "vs"})),
                vec!["spec.secretName -> Secret vs ns= provider=true"],
            ),
        ];
        for (kind, data, want) in cases {
            assert_eq!(refs(kind, data), want, "{kind}");
        }
    }
}
