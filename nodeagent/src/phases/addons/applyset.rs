//! A layer as an ApplySet (KEP-3659): its parent Secret and members, what a layer may not take
//! over, applying a layer, and pruning what was dropped from a layer or from the profile. The
//! kinds it lists are discovered once per reconcile ([`Kinds`]).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams};
use kube::discovery::{ApiCapabilities, Scope};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AddonsError;
use super::sources::Resolved;
use crate::phases::{Context, PhaseError};

/// The namespace of the layers' ApplySet parents.
pub const PARENT_NAMESPACE: &str = "kube-system";

/// Label on a parent naming its layer (how removed layers are found).
pub const LAYER_LABEL: &str = "fledge.dev/addon-layer";

/// The field manager add-on layers are applied with (forced): apart from the one
/// (`fledge-agent`) that installs the providers and writes the cluster's own objects, so a
/// layer's fields are told apart from fledge's own.
pub const FIELD_MANAGER: &str = "fledge-addons";

/// Namespaces a layer may not take over (pruning the layer would delete them).
const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

const ID_LABEL: &str = "applyset.kubernetes.io/id";

pub(super) const PART_OF: &str = "applyset.kubernetes.io/part-of";

const KINDS: &str = "applyset.kubernetes.io/contains-group-kinds";

const NAMESPACES: &str = "applyset.kubernetes.io/additional-namespaces";

const TOOLING: &str = "applyset.kubernetes.io/tooling";

/// The ApplySet ID of a layer's parent Secret (KEP-3659: `applyset-` + unpadded URL-safe
/// base64 of the sha256 of `<name>.<namespace>.<kind>.<group>` + `-v1`).
pub fn applyset_id(layer: &str) -> String {
    let key = format!("{}.{PARENT_NAMESPACE}.Secret.", parent_name(layer));
    let digest = Sha256::digest(key.as_bytes());
    format!(
        "applyset-{}-v1",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

fn parent_name(layer: &str) -> String {
    format!("fledge-addons-{layer}")
}

/// `Kind.group` (`Kind` for the core group), as ApplySets write group-kinds.
pub(super) fn group_kind(o: &Value) -> String {
    let api_version = o["apiVersion"].as_str().unwrap_or_default();
    let kind = o["kind"].as_str().unwrap_or_default();
    match api_version.split_once('/') {
        Some((group, _)) => format!("{kind}.{group}"),
        None => kind.to_string(),
    }
}

/// Discovered kinds, by `Kind.group`.
#[derive(Default)]
pub(super) struct Kinds(BTreeMap<String, Option<(ApiResource, ApiCapabilities)>>);

impl Kinds {
    async fn get(
        &mut self,
        client: &kube::Client,
        gk: &str,
    ) -> Result<Option<(ApiResource, ApiCapabilities)>, PhaseError> {
        if let Some(found) = self.0.get(gk) {
            return Ok(found.clone());
        }
        let (kind, group) = gk.split_once('.').unwrap_or((gk, ""));
        let found = match kube::discovery::group(client, group).await {
            Ok(g) => g.recommended_kind(kind),
            // A kind whose CRD is gone has nothing left to prune.
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(source) => {
                return Err(PhaseError::Request {
                    what: format!("discover {gk}"),
                    source,
                });
            }
        };
        self.0.insert(gk.to_string(), found.clone());
        Ok(found)
    }

    pub(super) async fn api(
        &mut self,
        client: &kube::Client,
        gk: &str,
        namespace: Option<&str>,
    ) -> Result<Option<Api<DynamicObject>>, PhaseError> {
        Ok(self
            .get(client, gk)
            .await?
            .map(|(ar, caps)| match (caps.scope, namespace) {
                (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
                _ => Api::all_with(client.clone(), &ar),
            }))
    }
}

fn secrets(ctx: &Context) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&());
    Api::namespaced_with(ctx.local.clone(), PARENT_NAMESPACE, &ar)
}

/// Applies one layer: the parent (with the union of the old and new member kinds, so an
/// interrupted prune is finished next time), the members, the prune of dropped members, and
/// the parent with the new kinds and namespaces. Returns how many objects changed, and the
/// members as applied: each with the namespace its kind's scope gives it (a namespaced object
/// without one is in the default namespace; a cluster-scoped one has none, whatever its
/// manifest says), which is what the prune keeps and the health check reads.
pub(super) async fn apply_layer(
    ctx: &Context,
    kinds: &mut Kinds,
    layer: &Resolved,
    others: &BTreeSet<String>,
) -> Result<(usize, Vec<Value>), PhaseError> {
    let id = applyset_id(&layer.name);
    let now: BTreeSet<String> = layer.objects.iter().map(group_kind).collect();
    let before = secrets(ctx)
        .get_opt(&parent_name(&layer.name))
        .await
        .map_err(|source| PhaseError::Request {
            what: format!("read the ApplySet parent of layer {}", layer.name),
            source,
        })?;
    let (kinds_before, namespaces_before) = before
        .as_ref()
        .map(|p| (listed(p, KINDS), listed(p, NAMESPACES)))
        .unwrap_or_default();
    let union: BTreeSet<String> = kinds_before.union(&now).cloned().collect();
    let namespaces_union: BTreeSet<String> = layer
        .objects
        .iter()
        .filter_map(|o| o["metadata"]["namespace"].as_str())
        .filter(|ns| !ns.is_empty() && *ns != PARENT_NAMESPACE)
        .map(str::to_string)
        .chain(namespaces_before)
        .collect();
    let parent_err = |source| AddonsError::Apply {
        layer: layer.name.clone(),
        source,
    };
    crate::phases::apply_local(
        ctx,
        &[parent(&layer.name, &id, &union, &namespaces_union)],
        |_| {},
    )
    .await
    .map_err(parent_err)?;
    let guard =
        |body: &Value, live: Option<&DynamicObject>| owned_elsewhere(&id, others, body, live);
    let results = crate::phases::apply_local_as(ctx, FIELD_MANAGER, &guard, &layer.objects, |_| {})
        .await
        .map_err(parent_err)?;
    let changed = results
        .iter()
        .filter(|a| a.outcome != fledge_generator::ssa::Outcome::Unchanged)
        .count();
    let members: Vec<Value> = layer
        .objects
        .iter()
        .zip(&results)
        .map(|(o, applied)| {
            let mut o = o.clone();
            if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                match &applied.namespace {
                    Some(ns) => meta.insert("namespace".into(), json!(ns)),
                    None => meta.remove("namespace"),
                };
            }
            o
        })
        .collect();
    let keep: BTreeSet<(String, String, String)> = members.iter().map(key).collect();
    prune(ctx, kinds, &id, &union, &keep).await?;
    let namespaces: BTreeSet<String> = members
        .iter()
        .filter_map(|o| o["metadata"]["namespace"].as_str())
        .filter(|ns| *ns != PARENT_NAMESPACE)
        .map(str::to_string)
        .collect();
    if union != now || namespaces != namespaces_union {
        crate::phases::apply_local(ctx, &[parent(&layer.name, &id, &now, &namespaces)], |_| {})
            .await
            .map_err(parent_err)?;
    }
    Ok((changed, members))
}

/// Why a layer (ApplySet `id`) may not manage this object, if it may not: the object is one of
/// fledge's own (a provider's component, the cluster's Cluster API objects, an ApplySet parent
/// of the layers), a system namespace, or a member of another layer of the profile (`others`:
/// their ApplySet IDs; two layers holding one object would prune it from each other). Pure.
pub fn owned_elsewhere(
    id: &str,
    others: &BTreeSet<String>,
    body: &Value,
    live: Option<&DynamicObject>,
) -> Result<(), String> {
    let api_version = body["apiVersion"].as_str().unwrap_or_default();
    let kind = body["kind"].as_str().unwrap_or_default();
    let name = body["metadata"]["name"].as_str().unwrap_or_default();
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if (group == "cluster.x-k8s.io" || group.ends_with(".cluster.x-k8s.io"))
        && group != "addons.cluster.x-k8s.io"
    {
        return Err(format!(
            "{kind} is a Cluster API object; the agent manages the cluster's Cluster API objects from spec.controlPlane and spec.workers, and add-on layers may not"
        ));
    }
    if kind == "Namespace" && group.is_empty() && SYSTEM_NAMESPACES.contains(&name) {
        return Err(format!(
            "namespace {name} is a system namespace; a layer that owned it would delete it when the layer is removed"
        ));
    }
    let labels = &body["metadata"]["labels"];
    if !labels[ID_LABEL].is_null() || !labels[LAYER_LABEL].is_null() {
        return Err("an ApplySet parent (it carries applyset.kubernetes.io/id or fledge.dev/addon-layer) is fledge's own bookkeeping".into());
    }
    let Some(live) = live else {
        return Ok(());
    };
    let live_labels = live.labels();
    if live_labels.contains_key(ID_LABEL) || live_labels.contains_key(LAYER_LABEL) {
        return Err("it is an ApplySet parent of fledge's add-on layers".into());
    }
    match live_labels.get(PART_OF) {
        Some(member) if member == id => return Ok(()),
        Some(member) if others.contains(member) => {
            return Err(format!(
                "it belongs to another add-on layer of the profile (ApplySet {member}); an object may be in one layer only"
            ));
        }
        _ => {}
    }
    if live_labels.contains_key("clusterctl.cluster.x-k8s.io") {
        return Err("it is a component of a Cluster API provider or of cert-manager, which the agent installs".into());
    }
    let by_agent = live
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .any(|f| f.manager.as_deref() == Some(crate::phases::providers::FIELD_MANAGER));
    if by_agent {
        return Err(format!(
            "it is managed by {} (the agent's own objects: providers and the cluster's Cluster API objects)",
            crate::phases::providers::FIELD_MANAGER
        ));
    }
    Ok(())
}

/// (group-kind, namespace, name).
pub(super) fn key(o: &Value) -> (String, String, String) {
    (
        group_kind(o),
        o["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn listed(parent: &DynamicObject, annotation: &str) -> BTreeSet<String> {
    parent
        .annotations()
        .get(annotation)
        .map(|s| {
            s.split(',')
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn parent(layer: &str, id: &str, kinds: &BTreeSet<String>, namespaces: &BTreeSet<String>) -> Value {
    let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": parent_name(layer),
            "namespace": PARENT_NAMESPACE,
            "labels": {ID_LABEL: id, LAYER_LABEL: layer},
            "annotations": {
                TOOLING: format!("fledge-agent/v{}", crate::VERSION),
                KINDS: join(kinds),
                NAMESPACES: join(namespaces),
            },
        },
        "type": "Opaque",
    })
}

/// Deletes the members of ApplySet `id` (of the listed kinds) that are not in `keep`.
async fn prune(
    ctx: &Context,
    kinds: &mut Kinds,
    id: &str,
    listed: &BTreeSet<String>,
    keep: &BTreeSet<(String, String, String)>,
) -> Result<usize, PhaseError> {
    let mut deleted = 0;
    for gk in listed {
        let Some(api) = kinds.api(&ctx.local, gk, None).await? else {
            continue;
        };
        let members = api
            .list(&ListParams::default().labels(&format!("{PART_OF}={id}")))
            .await
            .map_err(|source| PhaseError::Request {
                what: format!("list the {gk} members of ApplySet {id}"),
                source,
            })?;
        for m in members.items {
            let ns = m.namespace().unwrap_or_default();
            let name = m.name_any();
            if keep.contains(&(gk.clone(), ns.clone(), name.clone())) {
                continue;
            }
            let api = kinds
                .api(&ctx.local, gk, (!ns.is_empty()).then_some(ns.as_str()))
                .await?
                .unwrap_or(api.clone());
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {
                    tracing::info!("pruned {gk} {ns}/{name} (no longer in its add-on layer)");
                    deleted += 1;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(PhaseError::Request {
                        what: format!("prune {gk} {ns}/{name}"),
                        source,
                    });
                }
            }
        }
    }
    Ok(deleted)
}

/// Prunes every layer whose parent exists but which the profile no longer has.
pub(super) async fn prune_removed_layers(
    ctx: &Context,
    kinds: &mut Kinds,
    wanted: &BTreeSet<&str>,
) -> Result<usize, PhaseError> {
    let parents = secrets(ctx)
        .list(&ListParams::default().labels(LAYER_LABEL))
        .await
        .map_err(|source| PhaseError::Request {
            what: "list the add-on layers' ApplySet parents".into(),
            source,
        })?;
    let mut deleted = 0;
    for p in parents.items {
        let layer = p.labels().get(LAYER_LABEL).cloned().unwrap_or_default();
        if wanted.contains(layer.as_str()) {
            continue;
        }
        let id = applyset_id(&layer);
        deleted += prune(ctx, kinds, &id, &listed(&p, KINDS), &BTreeSet::new()).await?;
        let _ = secrets(ctx)
            .delete(&p.name_any(), &DeleteParams::default())
            .await;
        tracing::info!("layer {layer} removed from the profile: pruned");
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applyset_ids_follow_kep_3659() {
        let id = applyset_id("cni");
        let digest = Sha256::digest(b"fledge-addons-cni.kube-system.Secret.");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        assert_eq!(id, format!("applyset-{b64}-v1"));
        assert!(id.len() <= 63, "a label value: {id}");
    }

    fn live(labels: &[(&str, &str)], manager: Option<&str>) -> DynamicObject {
        let mut o = DynamicObject::new(
            "x",
            &ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
        );
        o.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        o.metadata.managed_fields = manager.map(|m| {
            vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                    manager: Some(m.into()),
                    ..Default::default()
                },
            ]
        });
        o
    }

    #[test]
    fn layers_may_not_manage_what_fledge_or_another_layer_owns() {
        let id = applyset_id("mine");
        let others: BTreeSet<String> = [applyset_id("theirs")].into();
        let ok = |body: Value, l: Option<&DynamicObject>| owned_elsewhere(&id, &others, &body, l);
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        assert!(ok(cm.clone(), None).is_ok());
        // Its own member, also one an older agent applied as fledge-agent.
        assert!(
            ok(
                cm.clone(),
                Some(&live(&[(PART_OF, &id)], Some("fledge-agent")))
            )
            .is_ok()
        );
        // A label edited by hand is drift, corrected by the apply.
        assert!(ok(cm.clone(), Some(&live(&[(PART_OF, "edited")], None))).is_ok());
        let refused = |body: Value, l: Option<&DynamicObject>| {
            owned_elsewhere(&id, &others, &body, l).unwrap_err()
        };
        assert!(
            refused(
                json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment", "metadata": {"name": "md"}}),
                None
            )
            .contains("Cluster API object")
        );
        assert!(
            refused(
                json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "DockerMachineTemplate", "metadata": {"name": "t"}}),
                None
            )
            .contains("Cluster API object")
        );
        assert!(
            refused(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
                None
            )
            .contains("system namespace")
        );
        // The cert-manager namespace the providers phase applied.
        assert!(
            refused(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cert-manager"}}),
                Some(&live(&[("clusterctl.cluster.x-k8s.io", "")], Some("fledge-agent")))
            )
            .contains("provider")
        );
        assert!(
            refused(cm.clone(), Some(&live(&[], Some("fledge-agent")))).contains("fledge-agent")
        );
        assert!(
            refused(
                cm.clone(),
                Some(&live(&[(PART_OF, &applyset_id("theirs"))], None))
            )
            .contains("another add-on layer")
        );
        assert!(
            refused(
                cm.clone(),
                Some(&live(
                    &[(LAYER_LABEL, "theirs"), (ID_LABEL, &applyset_id("theirs"))],
                    Some("fledge-agent")
                ))
            )
            .contains("ApplySet parent")
        );
    }
}
