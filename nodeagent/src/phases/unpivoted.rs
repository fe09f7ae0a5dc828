//! Deleting a cluster that runs itself: `Unpivoted`, then `Released`.
//!
//! The agent holds a finalizer ([`FINALIZER`]) on its FledgeCluster from the pivot on. When the
//! FledgeCluster is deleted, the spec sync records the request in the state directory
//! ([`request_deletion`]) and the runner stops reconciling the cluster:
//! 1. `Unpivoted`: the pivot engine in reverse moves the cluster's Cluster API objects from the
//!    local cluster back to the management plane (the agent's scoped identity), deleting the
//!    Cluster there just before unpausing it, so that the management plane's Cluster API deletes
//!    the machines (the local controllers cannot delete the machine they run on).
//! 2. `Released`: once the Cluster is gone from the management plane (or the control-plane
//!    machines, this one among them, are being deleted: from then on Cluster API needs nothing
//!    from this node, which is about to go), the finalizer is released, last.
//!
//! `fledge-agent unpivot --to KUBECONFIG` runs the same engine by hand (re-homing into another
//! management plane); the runner then leaves the cluster alone.

use std::path::{Path, PathBuf};

use fledge_generator::spec::FledgeCluster;
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;

use super::{Context, PhaseError, Step};
use crate::pivot::apply::{Direction, Options, Pivot};

/// The agent's finalizer on its FledgeCluster.
pub const FINALIZER: &str = "fledge.dev/agent";

/// The file that records a deletion request, in the state directory.
pub fn request_path(state_dir: &Path) -> PathBuf {
    state_dir.join("deletion-requested")
}

/// Whether the FledgeCluster's deletion was requested.
pub fn deletion_requested(state_dir: &Path) -> bool {
    request_path(state_dir).exists()
}

/// Records that the FledgeCluster (`uid`) is being deleted (since `when`), durably, once.
pub fn request_deletion(state_dir: &Path, uid: &str, when: &str) -> std::io::Result<bool> {
    let path = request_path(state_dir);
    if path.exists() {
        return Ok(false);
    }
    let body = serde_json::to_vec_pretty(&json!({"uid": uid, "deletionTimestamp": when}))
        .unwrap_or_default();
    crate::fsutil::write_atomic(&path, &body, 0o600)?;
    Ok(true)
}

fn fledge_clusters(ctx: &Context) -> Api<DynamicObject> {
    Api::namespaced_with(
        ctx.management.clone(),
        ctx.spec.namespace.as_str(),
        &ApiResource::erase::<FledgeCluster>(&()),
    )
}

fn request(what: String) -> impl FnOnce(kube::Error) -> PhaseError {
    move |source| PhaseError::Request { what, source }
}

/// Puts [`FINALIZER`] on the FledgeCluster unless it is there or the object is being deleted
/// (an optimistic-lock patch: a concurrent change makes it fail and be retried). Called when
/// the pivot commits, and once per agent process in Steady, so that a cluster pivoted by an
/// agent that did not take it, or whose finalizer was removed by hand, is deletable again.
pub async fn hold(ctx: &Context) -> Result<(), PhaseError> {
    let name = ctx.spec.name.as_str();
    let api = fledge_clusters(ctx);
    let Some(fc) = api
        .get_opt(name)
        .await
        .map_err(request(format!("read FledgeCluster {name}")))?
    else {
        return Ok(());
    };
    let mut finalizers = fc.metadata.finalizers.clone().unwrap_or_default();
    if fc.metadata.deletion_timestamp.is_some() || finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    finalizers.push(FINALIZER.into());
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": fc.metadata.resource_version}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // A Role rendered by an older fledge: the pivot goes on, but deleting the FledgeCluster
        // will not bring the cluster back. Say so rather than block the cluster.
        Err(kube::Error::Api(s)) if s.code == 403 => {
            tracing::warn!(
                finalizer = FINALIZER,
                "the agent may not patch its FledgeCluster (render and apply its Role again): deleting the FledgeCluster will not unpivot and delete the cluster"
            );
            Ok(())
        }
        Err(e) => Err(request(format!(
            "add finalizer {FINALIZER} to FledgeCluster {name}"
        ))(e)),
    }
}

/// Removes [`FINALIZER`] from the FledgeCluster (gone already: nothing to do).
async fn release(ctx: &Context) -> Result<(), PhaseError> {
    let name = ctx.spec.name.as_str();
    let api = fledge_clusters(ctx);
    let Some(fc) = api
        .get_opt(name)
        .await
        .map_err(request(format!("read FledgeCluster {name}")))?
    else {
        return Ok(());
    };
    let finalizers = fc.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let kept: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
    let patch =
        json!({"metadata": {"finalizers": kept, "resourceVersion": fc.metadata.resource_version}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(request(format!(
            "release finalizer {FINALIZER} of FledgeCluster {name}"
        ))(e)),
    }
}

/// The options of the unpivot for deletion.
fn options() -> Options {
    Options {
        direction: Direction::Unpivot,
        delete_target_cluster: true,
        ..Options::default()
    }
}

/// `Unpivoted`'s plan.
pub async fn plan(ctx: &Context) -> Result<(Vec<String>, Option<String>), PhaseError> {
    let (ns, cluster) = (ctx.spec.namespace.as_str(), ctx.spec.name.as_str());
    Ok((
        vec![
            format!("FledgeCluster {ns}/{cluster} is being deleted"),
            format!(
                "move {ns}/{cluster}'s Cluster API objects from the local cluster back to the management plane"
            ),
            "delete the Cluster there: the management plane's Cluster API deletes the machines"
                .into(),
            format!("release finalizer {FINALIZER} once the Cluster is gone"),
        ],
        None,
    ))
}

/// Runs (or resumes) the unpivot for deletion.
pub async fn apply(
    ctx: &Context,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Step, PhaseError> {
    let events = |e: &crate::pivot::apply::Event| progress(&e.to_string());
    let summary = Pivot::new(
        &ctx.local,
        &ctx.management,
        ctx.spec.namespace.as_str(),
        ctx.spec.name.as_str(),
        options(),
        &events,
    )
    .run()
    .await?;
    Ok(Step::Done(if summary.already_complete {
        "the cluster's objects are on the management plane".into()
    } else {
        format!(
            "{} objects moved back to the management plane ({} created, {} deleted from the local cluster) in {:.1}s; Cluster deleted there",
            summary.moved,
            summary.created,
            summary.deleted,
            summary.wall.as_secs_f64()
        )
    }))
}

/// Why the finalizer is still held, or `None` when it may be released.
async fn deletion_pending(ctx: &Context) -> Result<Option<String>, PhaseError> {
    let (ns, name) = (ctx.spec.namespace.as_str(), ctx.spec.name.as_str());
    let clusters: Api<DynamicObject> = Api::namespaced_with(
        ctx.management.clone(),
        ns,
        &super::capi_resource(ctx, "cluster.x-k8s.io", "Cluster", "clusters"),
    );
    let Some(c) = clusters.get_opt(name).await.map_err(request(format!(
        "read Cluster {ns}/{name} on the management plane"
    )))?
    else {
        return Ok(None);
    };
    if c.metadata.deletion_timestamp.is_none() {
        // Unpivoted for deletion without the delete (an earlier run was interrupted between
        // the two, or this management plane got the cluster by a re-homing).
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: c.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match clusters.delete(name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(request(format!("delete Cluster {ns}/{name}"))(e)),
        }
    }
    let machines: Api<DynamicObject> = Api::namespaced_with(
        ctx.management.clone(),
        ns,
        &super::capi_resource(ctx, "cluster.x-k8s.io", "Machine", "machines"),
    );
    let lp = ListParams::default().labels(&format!(
        "cluster.x-k8s.io/cluster-name={name},cluster.x-k8s.io/control-plane"
    ));
    let cp = machines.list(&lp).await.map_err(request(format!(
        "list the control-plane Machines of {ns}/{name}"
    )))?;
    if !cp.items.is_empty()
        && cp
            .items
            .iter()
            .all(|m| m.metadata.deletion_timestamp.is_some())
    {
        return Ok(None);
    }
    Ok(Some(format!(
        "the management plane's Cluster API is deleting Cluster {ns}/{name} (phase {})",
        c.data["status"]["phase"].as_str().unwrap_or("unknown")
    )))
}

/// `Released`'s plan.
pub async fn plan_release(ctx: &Context) -> Result<(Vec<String>, Option<String>), PhaseError> {
    let waiting = deletion_pending(ctx).await?;
    Ok((
        vec![format!(
            "release finalizer {FINALIZER} of FledgeCluster {}",
            ctx.spec.name
        )],
        waiting,
    ))
}

/// Releases the finalizer once the cluster is deleted (or its control plane is going).
pub async fn apply_release(
    ctx: &Context,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Step, PhaseError> {
    if let Some(why) = deletion_pending(ctx).await? {
        return Ok(Step::Waiting(why));
    }
    release(ctx).await?;
    progress(&format!("finalizer {FINALIZER} released"));
    Ok(Step::Done(format!(
        "cluster deleted; finalizer {FINALIZER} released"
    )))
}
