//! `Pivoted`: the cluster's Cluster API objects move from the management plane (the agent's
//! scoped token) into the local cluster with the pivot engine ([`crate::pivot::apply`]). Like
//! `clusterctl move`, it waits until the KubeadmControlPlane on the management plane reports
//! the control plane initialized. A failure before cutover rolls back (the engine does) and is
//! retried; one after cutover resumes forward on the next attempt.

use fledge_generator::management::Names;
use kube::Api;
use kube::api::{ApiResource, DynamicObject};

use super::{Context, PhaseError, Step};
use crate::pivot::apply::{Direction, Options, Pivot};

fn kcp_resource(ctx: &Context) -> ApiResource {
    super::capi_resource(
        ctx,
        "controlplane.cluster.x-k8s.io",
        "KubeadmControlPlane",
        "kubeadmcontrolplanes",
    )
}

/// Whether a KubeadmControlPlane reports the control plane initialized: v1beta2
/// `status.initialization.controlPlaneInitialized`, v1beta1 `status.initialized`.
pub fn initialized(kcp: &serde_json::Value) -> bool {
    kcp["status"]["initialization"]["controlPlaneInitialized"] == true
        || kcp["status"]["initialized"] == true
}

/// None when the pivot may start (or resume); otherwise why not yet.
async fn gate(ctx: &Context) -> Result<Option<String>, PhaseError> {
    let ns = ctx.spec.namespace.as_str();
    let name = Names::new(ctx.spec.name.as_str()).control_plane;
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.management.clone(), ns, &kcp_resource(ctx));
    match api.get_opt(&name).await {
        // Gone from the management plane: the pivot is past cutover (or done); resume.
        Ok(None) => Ok(None),
        Ok(Some(kcp)) if initialized(&serde_json::to_value(&kcp).unwrap_or_default()) => Ok(None),
        Ok(Some(_)) => Ok(Some(format!(
            "KubeadmControlPlane {ns}/{name} on the management plane does not report the control plane initialized yet"
        ))),
        Err(source) => Err(PhaseError::Request {
            what: format!("read KubeadmControlPlane {ns}/{name} on the management plane"),
            source,
        }),
    }
}

/// The plan: the pivot engine's own plan of groups, after the gate.
pub async fn plan(ctx: &Context) -> Result<(Vec<String>, Option<String>), PhaseError> {
    if let Some(why) = gate(ctx).await? {
        return Ok((vec![], Some(why)));
    }
    let (ns, cluster) = (ctx.spec.namespace.as_str(), ctx.spec.name.as_str());
    let plan = Pivot::plan(&ctx.management, ns, cluster, Direction::Pivot).await?;
    let mut steps = vec![format!(
        "move {ns}/{cluster} from the management plane into the local cluster:"
    )];
    steps.extend(plan.to_string().lines().map(|l| format!("  {l}")));
    Ok((steps, None))
}

/// Runs (or resumes) the pivot.
pub async fn apply(
    ctx: &Context,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Step, PhaseError> {
    if let Some(why) = gate(ctx).await? {
        return Ok(Step::Waiting(why));
    }
    // From here on deleting the FledgeCluster needs the agent: it moves the objects back.
    super::unpivoted::hold(ctx).await?;
    let events = |e: &crate::pivot::apply::Event| progress(&e.to_string());
    let summary = Pivot::new(
        &ctx.management,
        &ctx.local,
        ctx.spec.namespace.as_str(),
        ctx.spec.name.as_str(),
        Options::default(),
        &events,
    )
    .run()
    .await?;
    let redacted = redact_copied_token(ctx).await?;
    let mut done = summary.describe();
    if redacted > 0 {
        done.push_str(&format!(
            "; the management token cut out of {redacted} copied Secrets"
        ));
    }
    // Best effort: Steady gives them up too, once per process.
    match revoke_move_rights(ctx).await {
        Ok(Revoked::Now) => done.push_str("; the agent's move rights given up"),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %super::chain(&e), "cannot give up the agent's move rights on the management plane; trying again in Steady")
        }
    }
    Ok(Step::Done(done))
}

/// What [`revoke_move_rights`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// This call deleted the move rights' RoleBinding.
    Now,
    /// There was none (given up before, or never bound).
    Already,
    /// Kept: the FledgeCluster's deletion is requested, and the unpivot needs them.
    KeptForUnpivot,
    /// The agent's Role does not let it (rendered by an older fledge, which had no move Role).
    NotAllowed,
}

/// Gives up the agent's move rights on the management plane once the pivot is done: deletes
/// their RoleBinding `<cluster>-fledge-agent-move`, which its Role lets it delete by that name
/// only. A token stolen from the cluster from then on cannot create Clusters or read Secrets on
/// the management plane. Not while the FledgeCluster's deletion is requested: the unpivot needs
/// them (`fledge delete` binds them again).
pub async fn revoke_move_rights(ctx: &Context) -> Result<Revoked, PhaseError> {
    let (ns, name) = (ctx.spec.namespace.as_str(), ctx.spec.name.as_str());
    if crate::state::deletion::deletion_requested(&ctx.state_dir) {
        return Ok(Revoked::KeptForUnpivot);
    }
    let fcs = super::unpivoted::fledge_cluster_api(ctx.management.clone(), ns);
    let deleting = fcs
        .get_opt(name)
        .await
        .map_err(|source| PhaseError::Request {
            what: format!("read FledgeCluster {ns}/{name}"),
            source,
        })?
        .is_some_and(|fc| fc.metadata.deletion_timestamp.is_some());
    if deleting {
        return Ok(Revoked::KeptForUnpivot);
    }
    revoke(&ctx.management, ns, name)
        .await
        .map_err(|source| PhaseError::Request {
            what: format!(
                "delete RoleBinding {ns}/{} on the management plane",
                Names::new(name).agent_move
            ),
            source,
        })
}

/// Whether the agent's identity (`client`) holds its move rights in `ns`: may it create
/// Clusters there (a SelfSubjectAccessReview, which every authenticated identity may ask).
pub async fn move_rights_bound(client: &kube::Client, ns: &str) -> kube::Result<bool> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some("cluster.x-k8s.io".into()),
                resource: Some("clusters".into()),
                verb: Some("create".into()),
                namespace: Some(ns.into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&kube::api::PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Deletes the move rights' RoleBinding of the agent of `cluster` in `ns` with `client` (the
/// agent's management identity). Idempotent.
pub async fn revoke(client: &kube::Client, ns: &str, cluster: &str) -> kube::Result<Revoked> {
    use k8s_openapi::api::rbac::v1::RoleBinding;
    let api: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let binding = Names::new(cluster).agent_move;
    match api
        .delete(&binding, &kube::api::DeleteParams::default())
        .await
    {
        Ok(_) => {
            tracing::info!(binding = %format!("{ns}/{binding}"), "gave up the agent's move rights on the management plane");
            Ok(Revoked::Now)
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Revoked::Already),
        Err(kube::Error::Api(s)) if s.code == 403 => {
            tracing::warn!(binding = %format!("{ns}/{binding}"), "the agent may not delete its move rights' binding (render and apply its access objects again with this fledge): its token keeps the move rights");
            Ok(Revoked::NotAllowed)
        }
        Err(e) => Err(e),
    }
}

/// Cuts the agent's management token out of the Secrets the pivot copied into the local
/// cluster: CABPK rendered CP-A's bootstrap data with the token inline (CP-A's machine files
/// read it from `<cluster>-fledge-agent-token`), and nothing reads that data again once the
/// machine is up. Every Secret of the cluster's namespace but the agents' own token copy is
/// checked; the token's bytes are removed where found. Idempotent; returns how many changed.
pub async fn redact_copied_token(ctx: &Context) -> Result<usize, PhaseError> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{ListParams, Patch, PatchParams};
    let path = crate::config::rooted(&ctx.root, &ctx.cfg.management.token_file);
    let token = std::fs::read_to_string(&path).map_err(|source| PhaseError::ReadCredentials {
        path: path.clone(),
        source,
    })?;
    let token = token.trim();
    // Nothing that short is a service-account token; never cut common bytes out of data.
    if token.len() < 32 {
        return Ok(0);
    }
    let ns = ctx.spec.namespace.as_str();
    let own = Names::new(ctx.spec.name.as_str()).agent_token;
    let api: Api<Secret> = Api::namespaced(ctx.local.clone(), ns);
    let request = |what: String| move |source| PhaseError::Request { what, source };
    let secrets = api
        .list(&ListParams::default())
        .await
        .map_err(request(format!(
            "list the Secrets of {ns} in the local cluster"
        )))?;
    let mut changed = 0;
    for s in secrets.items {
        let name = s.metadata.name.clone().unwrap_or_default();
        if name == own {
            continue;
        }
        let mut data = serde_json::Map::new();
        for (k, v) in s.data.unwrap_or_default() {
            let text = String::from_utf8_lossy(&v.0);
            if text.contains(token) {
                let cut = text.replace(token, "");
                data.insert(
                    k,
                    serde_json::to_value(k8s_openapi::ByteString(cut.into_bytes()))
                        .unwrap_or_default(),
                );
            }
        }
        if data.is_empty() {
            continue;
        }
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": data})),
        )
        .await
        .map_err(request(format!(
            "remove the management token from Secret {ns}/{name}"
        )))?;
        changed += 1;
    }
    Ok(changed)
}
