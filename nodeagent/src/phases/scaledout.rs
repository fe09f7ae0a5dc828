//! `ScaledOut`: the rest of the cluster, rendered by the generator from the cached spec
//! ([`fledge_generator::workload`], what `fledge render` writes to `workload.yaml`) and applied
//! to the local cluster with server-side apply (field manager `fledge-agent`): the
//! KubeadmControlPlane at the spec's replicas and the worker MachineDeployments with their
//! templates. CAPI, running in the local cluster, provisions the machines; the phase reports
//! desired against ready machines and completes once everything is requested.

use fledge_generator::render::Templates;
use fledge_generator::ssa::Outcome;
use kube::Api;
use kube::api::DynamicObject;

use super::{Context, PhaseError, Step};

/// Why the scale-out objects could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ScaleOutError {
    /// Rendering them failed.
    #[error("cannot render the scale-out objects")]
    Render(#[from] fledge_generator::render::RenderError),
    /// Applying them failed.
    #[error("cannot apply the scale-out objects to the local cluster")]
    Apply(#[from] fledge_generator::ssa::ApplyError),
}

fn objects(ctx: &Context) -> Result<Vec<serde_json::Value>, ScaleOutError> {
    Ok(fledge_generator::workload::objects(
        &ctx.spec,
        &Templates::embedded(),
    )?)
}

/// The plan: what would be applied, and the machine counts it asks for.
pub async fn plan(ctx: &Context) -> Result<(Vec<String>, Option<String>), PhaseError> {
    let mut steps: Vec<String> = objects(ctx)?
        .iter()
        .map(|o| {
            format!(
                "apply {} {}/{}",
                o["kind"].as_str().unwrap_or_default(),
                o["metadata"]["namespace"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    for (kind, name, want, ready) in machines(ctx).await {
        steps.push(format!(
            "{kind} {name}: {want} machines wanted, {} ready",
            ready.map_or("?".to_string(), |r| r.to_string())
        ));
    }
    Ok((steps, None))
}

/// Keeps `<cluster>-fledge-agent-token` in the cluster's namespace of the local cluster: the
/// management token and CA this agent uses, which the KubeadmControlPlane's files name, so that
/// every control-plane machine CAPI adds here gets the agent's credentials and runs it too. (On
/// the management plane the same name is the service-account token Secret, which the pivot
/// never moves.) Written with mode-0600 files' contents; never logged.
pub async fn ensure_agent_secret(ctx: &Context) -> Result<(), PhaseError> {
    let read = |path: &std::path::Path| {
        let rooted = crate::config::rooted(&ctx.root, path);
        std::fs::read(&rooted).map_err(|source| PhaseError::ReadCredentials {
            path: rooted.clone(),
            source,
        })
    };
    let token = read(&ctx.cfg.management.token_file)?;
    let ca = read(&ctx.cfg.management.ca_file)?;
    // The file as the agent reads it: the token without the whitespace around it.
    let token = String::from_utf8_lossy(&token).trim().to_string();
    let names = fledge_generator::management::Names::new(ctx.spec.name.as_str());
    let secret = super::opaque_secret(
        ctx.spec.namespace.as_str(),
        &names.agent_token,
        &[("cluster.x-k8s.io/cluster-name", ctx.spec.name.as_str())],
        [("token".into(), token.into_bytes()), ("ca.crt".into(), ca)],
    );
    super::apply_local(ctx, &[secret], |_| {})
        .await
        .map_err(|source| PhaseError::ApplyAgentSecret {
            name: names.agent_token.clone(),
            source: Box::new(source),
        })?;
    Ok(())
}

/// Applies the objects and reports the machine counts.
pub async fn apply(
    ctx: &Context,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Step, PhaseError> {
    ensure_agent_secret(ctx).await?;
    let objects = objects(ctx)?;
    // The KCP's replicas were written by the pivot's create; the agent owns them now.
    let results = super::apply_local(ctx, &objects, |a| progress(&a.to_string()))
        .await
        .map_err(ScaleOutError::from)?;
    let changed = results
        .iter()
        .filter(|a| a.outcome != Outcome::Unchanged)
        .count();
    let counts: Vec<String> = machines(ctx)
        .await
        .into_iter()
        .map(|(kind, name, want, ready)| {
            format!(
                "{kind} {name} {}/{want} ready",
                ready.map_or("?".to_string(), |r| r.to_string())
            )
        })
        .collect();
    Ok(Step::Done(format!(
        "{} objects applied ({changed} changed); {}",
        results.len(),
        counts.join(", ")
    )))
}

/// (kind, name, desired, ready) per machine owner; ready is None when it cannot be read.
pub async fn machines(ctx: &Context) -> Vec<(&'static str, String, i64, Option<i64>)> {
    let ns = ctx.spec.namespace.as_str();
    let mut out = Vec::new();
    for (kind, name, want) in fledge_generator::workload::desired(&ctx.spec) {
        let (group, plural) = match kind {
            "KubeadmControlPlane" => ("controlplane.cluster.x-k8s.io", "kubeadmcontrolplanes"),
            _ => ("cluster.x-k8s.io", "machinedeployments"),
        };
        let ar = super::capi_resource(ctx, group, kind, plural);
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.local.clone(), ns, &ar);
        let ready = api
            .get_opt(&name)
            .await
            .ok()
            .flatten()
            .map(|o| o.data["status"]["readyReplicas"].as_i64().unwrap_or(0));
        out.push((kind, name, want, ready));
    }
    out
}
