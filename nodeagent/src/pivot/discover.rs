//! Discovery, scoped to one cluster (namespace + Cluster name): the requests. It lists the CAPI
//! core, bootstrap and control-plane types, every CRD carrying clusterctl's move labels, and the
//! namespace's Secrets and ConfigMaps, and reads what the pure [`super::graph`] needs of the
//! server (member bodies, which owner types are cluster-scoped, global identities).

use std::collections::{BTreeMap, BTreeSet};

use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use serde_json::Value;

use fledge_generator::capi::MOVED_API_GROUPS;

use super::ObjRef;
use super::graph::{
    Graph, MOVE_HIERARCHY_LABEL, MOVE_LABEL, cluster_class, membership, node, refusals,
};

/// Lists in flight at once during discovery.
pub const LIST_PARALLELISM: usize = 8;

const MOVE_LABELS: [&str; 3] = [
    "clusterctl.cluster.x-k8s.io",
    MOVE_LABEL,
    MOVE_HIERARCHY_LABEL,
];
const CORE_GROUPS: [&str; 3] = [
    "cluster.x-k8s.io",
    "bootstrap.cluster.x-k8s.io",
    "controlplane.cluster.x-k8s.io",
];

/// Errors of discovery.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// A request failed.
    #[error("{what}")]
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
/// type of the groups its Role grants ([`MOVED_API_GROUPS`]), at the storage version (found
/// through the `storageVersionHash` that discovery publishes).
pub async fn move_types(client: &kube::Client) -> Result<Vec<ApiResource>, DiscoverError> {
    Ok(labelled_move_types(client).await?.0)
}

/// [`move_types`], with the types whose CRD carries clusterctl's `move` / `move-hierarchy`
/// labels (see [`Graph::forced_types`]; none known without access to the CRDs).
pub async fn labelled_move_types(
    client: &kube::Client,
) -> Result<(Vec<ApiResource>, BTreeMap<String, bool>), DiscoverError> {
    let list = match super::crds::list(client).await {
        Ok(list) => list,
        Err(kube::Error::Api(s)) if s.code == 403 => {
            return Ok((discovered_types(client).await?, BTreeMap::new()));
        }
        Err(source) => {
            return Err(DiscoverError::Request {
                what: "listing CRDs".into(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    let mut forced = BTreeMap::new();
    for crd in list {
        let s = &crd.spec;
        let labels = crd.metadata.labels.clone().unwrap_or_default();
        let wanted = CORE_GROUPS.contains(&s.group.as_str())
            || MOVE_LABELS.iter().any(|l| labels.contains_key(*l));
        if !wanted || s.scope != "Namespaced" {
            continue;
        }
        if labels.contains_key(MOVE_HIERARCHY_LABEL) {
            forced.insert(format!("{}/{}", s.group, s.names.kind), true);
        } else if labels.contains_key(MOVE_LABEL) {
            forced.insert(format!("{}/{}", s.group, s.names.kind), false);
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
    Ok((out, forced))
}

/// The apiserver's `storageVersionHash` of a kind stored as `group/version`: the first 8 bytes
/// of the sha256 of `group/version/kind`, base64.
pub fn storage_version_hash(group: &str, version: &str, kind: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{group}/{version}/{kind}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(&digest[..8])
}

/// The namespaced, listable types of [`MOVED_API_GROUPS`], from API discovery, each at its
/// storage version (the preferred version when the server publishes no hash).
async fn discovered_types(client: &kube::Client) -> Result<Vec<ApiResource>, DiscoverError> {
    let err = |what: String| move |source| DiscoverError::Request { what, source };
    let groups = client
        .list_api_groups()
        .await
        .map_err(err("listing API groups".into()))?;
    let mut out = Vec::new();
    for g in groups
        .groups
        .into_iter()
        .filter(|g| MOVED_API_GROUPS.contains(&g.name.as_str()))
    {
        // kind -> (plural, storage hash, versions serving it in preference order)
        let mut kinds: BTreeMap<String, (String, Option<String>, Vec<String>)> = BTreeMap::new();
        for v in &g.versions {
            let list = client
                .list_api_group_resources(&v.group_version)
                .await
                .map_err(err(format!("discovering {}", v.group_version)))?;
            for r in list.resources {
                let listable = r.verbs.iter().any(|v| v == "list");
                if r.name.contains('/') || !r.namespaced || !listable {
                    continue;
                }
                let entry = kinds
                    .entry(r.kind.clone())
                    .or_insert_with(|| (r.name.clone(), r.storage_version_hash.clone(), vec![]));
                entry.2.push(v.version.clone());
            }
        }
        let preferred = g.preferred_version.as_ref().map(|p| p.version.clone());
        for (kind, (plural, hash, versions)) in kinds {
            let storage = versions
                .iter()
                .find(|v| hash.as_deref() == Some(&storage_version_hash(&g.name, v, &kind)))
                .or_else(|| versions.iter().find(|v| Some(*v) == preferred.as_ref()))
                .or(versions.first())
                .cloned()
                .unwrap_or_default();
            out.push(ApiResource {
                group: g.name.clone(),
                api_version: format!("{}/{storage}", g.name),
                version: storage,
                kind,
                plural,
            });
        }
    }
    out.sort_by(|a, b| (&a.group, &a.kind).cmp(&(&b.group, &b.kind)));
    Ok(out)
}

/// Objects listed per request; lists continue page by page.
pub const PAGE_SIZE: u32 = 250;

/// Lists one type in `namespace`, page by page: full objects for the Cluster API types, only
/// metadata for Secrets and ConfigMaps (a namespace's Helm release Secrets are ~1 MiB each; the
/// members' bodies are read one by one later). `None` when the identity may not list the type.
async fn list_type(
    client: &kube::Client,
    namespace: &str,
    ar: &ApiResource,
) -> Result<Option<Vec<DynamicObject>>, DiscoverError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, ar);
    let metadata_only = ar.group.is_empty();
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(PAGE_SIZE);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = if metadata_only {
            api.list_metadata(&lp).await.map(|l| {
                let next = l.metadata.continue_.clone();
                let items = l
                    .items
                    .into_iter()
                    .map(|m| DynamicObject {
                        types: None,
                        metadata: m.metadata,
                        data: Value::Object(Default::default()),
                    })
                    .collect::<Vec<_>>();
                (items, next)
            })
        } else {
            api.list(&lp)
                .await
                .map(|l| (l.items, l.metadata.continue_.clone()))
        };
        match page {
            Ok((items, next)) => {
                out.extend(items);
                match next.filter(|t| !t.is_empty()) {
                    Some(t) => token = Some(t),
                    None => return Ok(Some(out)),
                }
            }
            Err(kube::Error::Api(s)) if s.code == 403 => return Ok(None),
            Err(source) => {
                return Err(DiscoverError::Request {
                    what: format!("listing {} in {namespace}", ar.plural),
                    source,
                });
            }
        }
    }
}

/// Discovers the namespace and computes the cluster's members.
pub async fn discover(
    client: &kube::Client,
    namespace: &str,
    cluster: &str,
) -> Result<Graph, DiscoverError> {
    let mut g = Graph::default();
    let (mut types, forced_types) = labelled_move_types(client).await?;
    g.forced_types = forced_types;
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
    // Collected before streaming, so the future stays `Send` (see `Pivot::settle`).
    let work: Vec<_> = types
        .iter()
        .map(|ar| async move { list_type(client, namespace, ar).await.map(|l| (ar, l)) })
        .collect();
    let lists: Vec<(&ApiResource, Option<Vec<DynamicObject>>)> = futures::stream::iter(work)
        .buffered(LIST_PARALLELISM)
        .try_collect()
        .await?;
    for (ar, items) in lists {
        let Some(items) = items else {
            g.unlisted.push((
                format!("{} {}", ar.kind, ar.api_version),
                "the identity may not list it (403)".into(),
            ));
            continue;
        };
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
    read_bodies(client, namespace, &mut g).await?;
    let identity_refusals = super::identities::global(client, &mut g, &root, namespace).await?;
    let cluster_scoped = cluster_scoped_owner_types(client, &g).await?;
    g.refused = refusals(&g, namespace, &cluster_scoped);
    g.refused.extend(identity_refusals);
    g.refused.sort();
    g.refused.dedup();
    Ok(g)
}

/// Of the owner types that members name but the namespace does not hold, those the server
/// serves as cluster-scoped (`apiVersion/Kind`), from API discovery.
async fn cluster_scoped_owner_types(
    client: &kube::Client,
    g: &Graph,
) -> Result<BTreeSet<String>, DiscoverError> {
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for uid in &g.members {
        for o in &g.nodes[uid].owners {
            if !g.nodes.contains_key(&o.uid) {
                wanted
                    .entry(o.api_version.clone())
                    .or_default()
                    .insert(o.kind.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    for (api_version, kinds) in wanted {
        let list = if api_version.contains('/') {
            client.list_api_group_resources(&api_version).await
        } else {
            client.list_core_api_resources(&api_version).await
        };
        match list {
            Ok(list) => {
                for r in list.resources {
                    if kinds.contains(&r.kind) && !r.namespaced && !r.name.contains('/') {
                        out.insert(format!("{api_version}/{}", r.kind));
                    }
                }
            }
            // A type nobody serves any more: a plain dangling reference.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(DiscoverError::Request {
                    what: format!("discovering {api_version}"),
                    source,
                });
            }
        }
    }
    Ok(out)
}

/// Reads the full body of every member that was listed by metadata only (Secrets, ConfigMaps).
async fn read_bodies(
    client: &kube::Client,
    namespace: &str,
    g: &mut Graph,
) -> Result<(), DiscoverError> {
    use futures::{StreamExt, TryStreamExt};
    let wanted: Vec<(String, ObjRef)> = g
        .members
        .iter()
        .map(|u| &g.nodes[u])
        .filter(|n| n.obj.api_version == "v1")
        .map(|n| (n.obj.uid.clone(), n.obj.clone()))
        .collect();
    let graph = &*g;
    let work: Vec<_> = wanted
        .into_iter()
        .map(|(uid, o)| async move {
            let ar = graph.resource(&o).expect("listed types");
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, ar);
            api.get_opt(&o.name)
                .await
                .map(|b| (uid, b))
                .map_err(|source| DiscoverError::Request {
                    what: format!("reading {o} in {namespace}"),
                    source,
                })
        })
        .collect();
    let bodies: Vec<(String, Option<DynamicObject>)> = futures::stream::iter(work)
        .buffered(LIST_PARALLELISM)
        .try_collect()
        .await?;
    for (uid, body) in bodies {
        match body.filter(|b| b.metadata.uid.as_deref() == Some(uid.as_str())) {
            Some(b) => {
                let n = node(b, "v1", &g.nodes[&uid].obj.kind);
                g.nodes.insert(uid, n);
            }
            // Deleted (or replaced) since the listing: nothing of it to move.
            None => {
                g.members.remove(&uid);
            }
        }
    }
    Ok(())
}
