//! `Pivoted`: the cluster's Cluster API objects move from the management plane (the agent's
//! scoped token) into the local cluster with the pivot engine ([`crate::pivot::apply`]). Like
//! `clusterctl move`, it waits until the KubeadmControlPlane on the management plane reports
//! the control plane initialized. A failure before cutover rolls back (the engine does) and is
//! retried; one after cutover resumes forward on the next attempt.

use fledge_generator::management::Names;
use kube::Api;
use kube::api::{ApiResource, DynamicObject};

use super::{Context, PhaseError, Step};
use crate::pivot::apply::{Options, Pivot};
use crate::pivot::{discover, plan as pivot_plan};

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
    let graph = discover::discover(&ctx.management, ns, cluster)
        .await
        .map_err(crate::pivot::apply::PivotError::from)?;
    let plan = pivot_plan::plan(&graph, ns, cluster);
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
    Ok(Step::Done(summary.describe()))
}
