//! `CoreLayers`: the profile's core layers (`coreLayers`: the network, i.e. the CNI, and the
//! cloud provider), applied to the local cluster before anything else, then every node Ready.
//!
//! This is the order a real node imposes: until a CNI runs, the kubelet starts no pod that is
//! not `hostNetwork` and the node keeps its `node.kubernetes.io/not-ready` taint, so
//! cert-manager and the Cluster API providers (`ProvidersInstalled`) would never become
//! available. Core layers use the add-on layers' sources, cache, ApplySets and health rules
//! ([`super::addons`]); a profile without core layers ends this phase at once (the image or
//! the infrastructure brings its own CNI, or none is needed, as in tests that play the kubelet).

use k8s_openapi::api::core::v1::{Node, Secret};
use kube::Api;
use kube::api::ListParams;

use super::addons::{self, Stage};
use super::{Context, PhaseError, Step};

/// Why a node is not Ready yet (None: Ready). Pure.
pub fn not_ready(node: &Node) -> Option<String> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(format!(
            "node {} is not Ready ({}{})",
            node.metadata.name.as_deref().unwrap_or_default(),
            c.reason.as_deref().unwrap_or("no reason given"),
            c.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        )),
        None => Some(format!(
            "node {} has not reported Ready yet",
            node.metadata.name.as_deref().unwrap_or_default()
        )),
    }
}

/// Why the cluster's nodes are not all Ready, if they are not.
async fn nodes_not_ready(ctx: &Context) -> Result<Option<String>, PhaseError> {
    let nodes = Api::<Node>::all(ctx.local.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| PhaseError::Request {
            what: "list the nodes".into(),
            source,
        })?;
    if nodes.items.is_empty() {
        return Ok(Some("no node has registered yet".into()));
    }
    let why: Vec<String> = nodes.items.iter().filter_map(not_ready).collect();
    Ok((!why.is_empty()).then(|| why.join("; ")))
}

/// Makes the cloud provider's credentials Secret in the local cluster when the provider needs
/// one ([`fledge_generator::providers::InfraProvider::cloud_secret`]), from the request's Secret:
/// the cluster's moved copy in the local cluster once the pivot has run, else the management
/// plane's. With neither readable, a Secret made earlier is kept. Returns what it did.
pub async fn ensure_cloud_secret(ctx: &Context) -> Result<Option<String>, PhaseError> {
    let provider = fledge_generator::providers::get(ctx.spec.provider());
    let Some(want) = provider.cloud_secret(&ctx.spec.spec.infrastructure) else {
        return Ok(None);
    };
    let ns = ctx.spec.namespace.as_str();
    let read = |client: &kube::Client| {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let name = want.source.clone();
        async move { api.get_opt(&name).await }
    };
    let (source, from) = match read(&ctx.local).await {
        Ok(Some(s)) => (s, "the cluster"),
        _ => match read(&ctx.management).await {
            Ok(Some(s)) => (s, "the management plane"),
            answer => {
                let made = Api::<Secret>::namespaced(ctx.local.clone(), want.namespace)
                    .get_opt(want.name)
                    .await
                    .ok()
                    .flatten();
                if made.is_some() {
                    return Ok(Some(format!(
                        "{}/{} kept: Secret {ns}/{} cannot be read now",
                        want.namespace, want.name, want.source
                    )));
                }
                return Err(match answer {
                    Err(source) => PhaseError::Request {
                        what: format!(
                            "read the cloud provider's credentials, Secret {ns}/{}",
                            want.source
                        ),
                        source,
                    },
                    _ => PhaseError::CloudSecret(format!(
                        "Secret {ns}/{} (the request's credentials for the cloud provider) exists neither in the cluster nor on the management plane",
                        want.source
                    )),
                });
            }
        },
    };
    let mut data = source.data.unwrap_or_default();
    let mut out = Vec::new();
    for (from_key, to_key) in &want.keys {
        let Some(v) = data.remove(*from_key) else {
            return Err(PhaseError::CloudSecret(format!(
                "Secret {ns}/{} has no key {from_key:?}, which the cloud provider's credentials need",
                want.source
            )));
        };
        out.push((to_key.clone(), v.0));
    }
    let secret = super::opaque_secret(want.namespace, want.name, &[], out);
    super::apply_local(ctx, &[secret], |_| {})
        .await
        .map_err(|source| PhaseError::ApplyCloudSecret {
            namespace: want.namespace.to_string(),
            name: want.name.to_string(),
            source: Box::new(source),
        })?;
    Ok(Some(format!(
        "{}/{} made from Secret {ns}/{} in {from}",
        want.namespace, want.name, want.source
    )))
}

/// The plan: the core layers, and whether the nodes are Ready.
pub async fn plan(ctx: &Context) -> Result<(Vec<String>, Option<String>), PhaseError> {
    let profile = addons::sources::profile_layers(ctx).await?;
    let (mut steps, waiting) = addons::plan_stage(ctx, &profile, Stage::Core).await?;
    if !profile.core.is_empty() {
        steps.push("then every node Ready".into());
    }
    Ok((steps, waiting))
}

/// Applies the core layers (health-gated, in order), then waits for every node to be Ready.
pub async fn apply(
    ctx: &Context,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Step, PhaseError> {
    if let Some(did) = ensure_cloud_secret(ctx).await? {
        progress(&did);
    }
    let profile = addons::sources::profile_layers(ctx).await?;
    if profile.core.is_empty() {
        return Ok(Step::Done(
            "the profile has no core layers; the nodes' network is provided otherwise".into(),
        ));
    }
    match addons::reconcile_stage(ctx, &profile, Stage::Core, progress).await? {
        Step::Waiting(why) => Ok(Step::Waiting(why)),
        Step::Done(layers) => match nodes_not_ready(ctx).await? {
            Some(why) => Ok(Step::Waiting(format!("core {layers}; {why}"))),
            None => Ok(Step::Done(format!("core {layers}; every node Ready"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: Option<(&str, &str)>) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": ready.map(|(status, reason)| vec![serde_json::json!({
                "type": "Ready", "status": status, "reason": reason,
                "message": "container runtime network not ready: cni plugin not initialized"})])
                .unwrap_or_default()},
        }))
        .unwrap()
    }

    #[test]
    fn a_node_is_ready_only_with_its_ready_condition_true() {
        assert_eq!(
            not_ready(&node("cp-a", Some(("True", "KubeletReady")))),
            None
        );
        assert_eq!(
            not_ready(&node("cp-a", Some(("False", "KubeletNotReady")))).as_deref(),
            Some(
                "node cp-a is not Ready (KubeletNotReady: container runtime network not ready: cni plugin not initialized)"
            )
        );
        assert_eq!(
            not_ready(&node("cp-a", None)).as_deref(),
            Some("node cp-a has not reported Ready yet")
        );
    }
}
