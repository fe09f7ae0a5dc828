//! `Steady`: the cluster kept equal to the local cached spec, on each new generation and every
//! resync, with or without the management plane.
//!
//! Each reconcile observes the local cluster's KubeadmControlPlane, fledge's MachineDeployments
//! and templates, plans with [`day2::plan`] (classified; refusals stop it before any
//! write) and writes in order: new templates (named by content, so a replay creates nothing),
//! the KubeadmControlPlane (version and template in one write), the MachineDeployments (an
//! upgrade waits until the control plane runs the new version), the MachineHealthChecks,
//! deletion of removed pools and switched-off health checks and then of templates nothing
//! points at any more, and last the add-on layers
//! ([`super::addons::reconcile`]). A change found when the spec's generation was already
//! reconciled is drift: it is restored, logged, recorded as a Warning event `DriftCorrected` on
//! the object and in the journal (and so in the status condition).

pub mod day2;

use std::collections::BTreeSet;

use fledge_generator::capi::KUBERNETES_VERSION_ANNOTATION;
use fledge_generator::management::Names;
use fledge_generator::render::Templates;
use k8s_openapi::api::core::v1::Event;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use super::scaledout::ScaleOutError;
use super::{Context, PhaseError, Step};
use crate::state::journal::{Journal, Outcome, Phase, chain};
use day2::Observed;

fn resources(ctx: &Context) -> Resources {
    let provider = fledge_generator::providers::get(ctx.spec.provider());
    let api = provider.api(ctx.spec.capi);
    let (group, version) = api
        .api_version
        .split_once('/')
        .unwrap_or(("", api.api_version));
    let infra = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api.api_version.into(),
        kind: api.machine_template_kind.into(),
        plural: format!("{}s", api.machine_template_kind.to_ascii_lowercase()),
    };
    Resources {
        kcp: super::capi_resource(
            ctx,
            "controlplane.cluster.x-k8s.io",
            "KubeadmControlPlane",
            "kubeadmcontrolplanes",
        ),
        md: super::capi_resource(
            ctx,
            "cluster.x-k8s.io",
            "MachineDeployment",
            "machinedeployments",
        ),
        ms: super::capi_resource(ctx, "cluster.x-k8s.io", "MachineSet", "machinesets"),
        mhc: super::capi_resource(
            ctx,
            "cluster.x-k8s.io",
            "MachineHealthCheck",
            "machinehealthchecks",
        ),
        templates: vec![
            infra,
            super::capi_resource(
                ctx,
                "bootstrap.cluster.x-k8s.io",
                "KubeadmConfigTemplate",
                "kubeadmconfigtemplates",
            ),
        ],
    }
}

struct Resources {
    kcp: ApiResource,
    md: ApiResource,
    ms: ApiResource,
    mhc: ApiResource,
    templates: Vec<ApiResource>,
}

fn request(what: String) -> impl FnOnce(kube::Error) -> PhaseError {
    move |source| PhaseError::Request { what, source }
}

fn to_value(o: &DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or_default()
}

/// The cluster's objects as they are.
async fn observe(ctx: &Context, r: &Resources) -> Result<(Observed, Vec<Value>), PhaseError> {
    let ns = ctx.spec.namespace.as_str();
    let cluster = ctx.spec.name.as_str();
    let ours = ListParams::default().labels(&format!(
        "cluster.x-k8s.io/cluster-name={cluster},app.kubernetes.io/managed-by=fledge"
    ));
    let api = |ar: &ApiResource| Api::<DynamicObject>::namespaced_with(ctx.local.clone(), ns, ar);
    let kcp_name = Names::new(cluster).control_plane;
    let kcp = api(&r.kcp)
        .get_opt(&kcp_name)
        .await
        .map_err(request(format!("read KubeadmControlPlane {ns}/{kcp_name}")))?
        .map(|o| to_value(&o));
    let machine_deployments = api(&r.md)
        .list(&ours)
        .await
        .map_err(request(format!(
            "list the MachineDeployments of {ns}/{cluster}"
        )))?
        .items
        .iter()
        // One being deleted (its finalizer still held) is already gone as far as the plan goes.
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .map(|o| (o.name_any(), to_value(o)))
        .collect();
    let machine_health_checks = api(&r.mhc)
        .list(&ours)
        .await
        .map_err(request(format!(
            "list the MachineHealthChecks of {ns}/{cluster}"
        )))?
        .items
        .iter()
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .map(|o| (o.name_any(), to_value(o)))
        .collect();
    let mut templates = BTreeSet::new();
    for ar in &r.templates {
        for t in api(ar)
            .list(&ours)
            .await
            .map_err(request(format!("list the {}s of {ns}/{cluster}", ar.kind)))?
            .items
        {
            // Only templates fledge named by content (never one a user added by hand).
            if t.annotations().contains_key(KUBERNETES_VERSION_ANNOTATION) {
                templates.insert((ar.kind.clone(), t.name_any()));
            }
        }
    }
    let machine_sets = api(&r.ms)
        .list(&ListParams::default().labels(&format!("cluster.x-k8s.io/cluster-name={cluster}")))
        .await
        .map_err(request(format!("list the MachineSets of {ns}/{cluster}")))?
        .items
        .iter()
        .map(to_value)
        .collect();
    Ok((
        Observed {
            kcp,
            machine_deployments,
            templates,
            machine_health_checks,
        },
        machine_sets,
    ))
}

/// The generator's objects, with an autoscaled pool's replicas left to the autoscaler
/// ([`day2::for_autoscaler`]).
fn desired(ctx: &Context, observed: &Observed) -> Result<Vec<Value>, PhaseError> {
    let objects = fledge_generator::workload::objects(&ctx.spec, &Templates::embedded())
        .map_err(ScaleOutError::from)?;
    Ok(day2::for_autoscaler(&objects, observed))
}

/// The plan: the pending changes as a diff, with their class.
pub async fn plan(ctx: &Context) -> Result<(Vec<String>, Option<String>), PhaseError> {
    let r = resources(ctx);
    let (observed, _) = observe(ctx, &r).await?;
    let plan = match day2::plan(&desired(ctx, &observed)?, &observed) {
        Ok(p) => p,
        Err(refused) => return Ok((Vec::new(), Some(refused.to_string()))),
    };
    let mut steps = vec![format!("change class: {}", plan.class())];
    steps.extend(plan.diff());
    use super::addons::sources::profile_layers;
    use super::addons::{Stage, plan_stage};
    let profile = profile_layers(ctx).await?;
    if !profile.core.is_empty() {
        steps.extend(plan_stage(ctx, &profile, Stage::Core).await?.0);
    }
    steps.extend(plan_stage(ctx, &profile, Stage::Addons).await?.0);
    Ok((steps, None))
}

/// One reconcile.
pub async fn apply(
    ctx: &Context,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Step, PhaseError> {
    // The agents' copy of the management token follows the leader's renewals. Best effort: the
    // copy serves joining control-plane nodes and followers, and a day-2 change must not wait
    // for it; the next reconcile tries again.
    if let Err(e) = super::scaledout::ensure_agent_secret(ctx).await {
        tracing::warn!(error = %super::chain(&e), "cannot update the agents' copy of the management token; trying again at the next reconcile");
    }
    let r = resources(ctx);
    let (observed, machine_sets) = observe(ctx, &r).await?;
    let desired = desired(ctx, &observed)?;
    // Refused changes stop here, before any write.
    let plan = day2::plan(&desired, &observed)?;
    let reconciled = Journal::load(&ctx.state_dir)?
        .entry(Phase::Steady)
        .is_some_and(|e| e.outcome == Outcome::Succeeded && e.generation == Some(ctx.generation));
    let drift = reconciled && !plan.changes.is_empty();
    for c in &plan.changes {
        if drift {
            tracing::warn!("drift: {c}; restoring the spec's value");
        } else {
            progress(&c.to_string());
        }
    }
    let writes: Vec<Value> = plan.writes.iter().map(|i| desired[*i].clone()).collect();
    super::apply_local(ctx, &writes, |_| {})
        .await
        .map_err(ScaleOutError::from)?;
    let ns = ctx.spec.namespace.as_str();
    let api = |ar: &ApiResource| Api::<DynamicObject>::namespaced_with(ctx.local.clone(), ns, ar);
    for md in &plan.deletes {
        delete(&api(&r.md), md).await?;
        progress(&format!(
            "deleted MachineDeployment {ns}/{md} (pool removed)"
        ));
    }
    for mhc in &plan.deleted_health_checks {
        delete(&api(&r.mhc), mhc).await?;
        progress(&format!(
            "deleted MachineHealthCheck {ns}/{mhc} (check switched off or pool removed)"
        ));
    }
    // Templates (of fledge's, see `observe`) nothing points at any more: not the objects just written, not a deferred
    // MachineDeployment as it is, not a MachineSet still scaling down.
    let written: BTreeSet<&str> = writes
        .iter()
        .filter(|o| o["kind"] == "MachineDeployment")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    let mut holders = writes.clone();
    holders.extend(machine_sets);
    holders.extend(
        observed
            .machine_deployments
            .iter()
            .filter(|(n, _)| !plan.deletes.contains(n) && !written.contains(n.as_str()))
            .map(|(_, v)| v.clone()),
    );
    let used = day2::referenced_templates(&holders);
    let mut removed = 0;
    for ar in &r.templates {
        for (kind, name) in observed.templates.iter().filter(|(k, _)| *k == ar.kind) {
            if used.contains(&(kind.clone(), name.clone())) {
                continue;
            }
            delete(&api(ar), name).await?;
            progress(&format!("deleted unused {kind} {ns}/{name}"));
            removed += 1;
        }
    }
    if drift {
        for c in &plan.changes {
            event(ctx, c).await;
        }
    }
    let addons = super::addons::reconcile_all(ctx, progress).await?;
    let mut summary = if plan.changes.is_empty() {
        format!("generation {}: in sync", ctx.generation)
    } else if drift {
        format!(
            "generation {}: drift corrected: {}",
            ctx.generation,
            plan.diff().join("; ")
        )
    } else {
        format!(
            "generation {}: {} ({} changes)",
            ctx.generation,
            plan.class(),
            plan.changes.len()
        )
    };
    if removed > 0 {
        summary.push_str(&format!("; {removed} unused templates deleted"));
    }
    if !plan.deferred.is_empty() {
        return Ok(Step::Waiting(plan.deferred.join("; ")));
    }
    Ok(match addons {
        Step::Waiting(why) => Step::Waiting(why),
        Step::Done(a) => Step::Done(format!("{summary}; {a}")),
    })
}

async fn delete(api: &Api<DynamicObject>, name: &str) -> Result<(), PhaseError> {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(PhaseError::Request {
            what: format!("delete {name}"),
            source,
        }),
    }
}

/// A Warning event `DriftCorrected` on the object (best effort: the restore is what matters).
async fn event(ctx: &Context, c: &day2::Change) {
    let ns = ctx.spec.namespace.as_str();
    let (kind, name) = c.object.split_once('/').unwrap_or(("", &c.object));
    let now = crate::time::now_rfc3339();
    let ev = json!({
        "metadata": {"generateName": format!("{name}.drift-"), "namespace": ns},
        "involvedObject": {"kind": kind, "name": name, "namespace": ns},
        "reason": "DriftCorrected",
        "message": format!("fledge-agent restored the spec's value: {c}"),
        "type": "Warning",
        "source": {"component": "fledge-agent"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    let Ok(ev) = serde_json::from_value::<Event>(ev) else {
        return;
    };
    let api: Api<Event> = Api::namespaced(ctx.local.clone(), ns);
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::warn!(error = %chain(&e), "cannot record the DriftCorrected event");
    }
}
