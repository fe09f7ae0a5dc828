//! Deleting a cluster that runs itself: `Unpivoted`, then `Released`.
//!
//! The agent holds a finalizer ([`FINALIZER`]) on its FledgeCluster from the pivot on. When the
//! FledgeCluster alone is deleted, the spec sync records the order in the state directory
//! ([`crate::state::deletion`]) and the runner stops reconciling the cluster:
//! 1. `Unpivoted`: the pivot engine in reverse moves the cluster's Cluster API objects from the
//!    local cluster back to the management plane (the agent's scoped identity), deleting the
//!    Cluster there just before unpausing it, so that the management plane's Cluster API deletes
//!    the machines (the local controllers cannot delete the machine they run on).
//! 2. `Released`: once the management plane's Cluster API is deleting the Cluster (or it is
//!    gone), the finalizer is released: from then on Cluster API needs nothing from this node,
//!    which is among what it deletes. The FledgeCluster goes while the machines are deleted.
//!
//! Not every deletion is an order ([`decide`]): a FledgeCluster deleted because its namespace is
//! being deleted is not (nothing can be created in a terminating namespace, and deleting a
//! namespace is cleanup of the management plane, not of the cluster): the agent releases its
//! finalizer, so that the namespace goes, and keeps the cluster running. A recorded order is
//! cancelled when it no longer holds (the namespace is being deleted, the FledgeCluster is gone
//! without the agent releasing it, or another object of the same name stands in its place),
//! unless its unpivot has gone past the point where it can be rolled back: the cancellation is
//! marked in the request ([`crate::state::deletion::Cancelled`]), and the spec sync settles it
//! ([`crate::state::deletion::settle`]: the journal
//! forgets the unfinished `Unpivoted`), after which the runner is back in `Steady`.
//!
//! `fledge-agent unpivot --to KUBECONFIG` runs the same engine by hand (re-homing into another
//! management plane); the runner then leaves the cluster alone.

use fledge_generator::management::Names;
use fledge_generator::spec::FledgeCluster;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::json;

use super::{Context, PhaseError, Step};
use crate::pivot::apply::{Direction, Options, Pivot};
use crate::state::deletion::{Cancel, cancel, load_request, progress};
use crate::state::deletion::{Progress, Request, request_error, set_progress};
use crate::state::journal::{Journal, chain};

/// The agent's finalizer on its FledgeCluster.
pub const FINALIZER: &str = "fledge.dev/agent";

/// What the agent sees of its FledgeCluster on the management plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen<'a> {
    /// It is not there (404).
    Gone,
    /// It is there.
    Present {
        /// Its UID.
        uid: &'a str,
        /// Whether it has a `deletionTimestamp`.
        deleting: bool,
    },
}

/// The FledgeCluster's namespace on the management plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceState {
    /// Neither terminating nor gone.
    Active,
    /// `deletionTimestamp` set (`status.phase: Terminating`).
    Terminating,
    /// Not there.
    Gone,
    /// Not read (not needed), or the read failed.
    Unknown,
}

/// Whether [`decide`] needs the namespace's state for `seen` (only a FledgeCluster being
/// deleted makes the agent read its namespace).
pub fn needs_namespace(seen: Seen<'_>) -> bool {
    matches!(seen, Seen::Present { deleting: true, .. })
}

/// What to do about deleting the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changes.
    Nothing,
    /// The FledgeCluster alone is being deleted: an order to unpivot and delete the cluster.
    Order,
    /// The FledgeCluster is being deleted, and whether its namespace is could not be read:
    /// decided at the next look.
    Undecided,
    /// Not (or no longer) an order: a recorded request is cancelled, the finalizer of a
    /// FledgeCluster being deleted is released, the cluster keeps running.
    Cancel(Cancel),
    /// The request no longer holds, but its unpivot is under way: that is run again first,
    /// and the request cancelled once it is rolled back (not if it completes).
    Deferred(Cancel),
}

/// Decides, from what the agent sees, whether a deletion is an order (the pure core of the
/// deletion flow). `cached_uid` is the UID of the FledgeCluster whose spec the agent runs (the
/// deletion of another object is no order); `request` and `progress` are what is recorded.
pub fn decide(
    seen: Seen<'_>,
    namespace: NamespaceState,
    cached_uid: Option<&str>,
    request: Option<&Request>,
    progress: Option<Progress>,
) -> Verdict {
    let order = request.filter(|r| r.cancelled.is_none());
    if order.is_some() && progress == Some(Progress::Done) {
        // The objects are back on the management plane: `Released` finishes the deletion.
        return Verdict::Nothing;
    }
    let cancel = |why| match (order, progress) {
        (None, _) | (_, None | Some(Progress::RolledBack)) => Verdict::Cancel(why),
        (Some(_), Some(_)) => Verdict::Deferred(why),
    };
    let (uid, deleting) = match seen {
        Seen::Gone if order.is_some() => return cancel(Cancel::Gone),
        Seen::Gone => return Verdict::Nothing,
        Seen::Present { uid, deleting } => (uid, deleting),
    };
    if order.is_some_and(|r| r.uid != uid) {
        return cancel(Cancel::Replaced);
    }
    if !deleting || cached_uid.is_some_and(|c| c != uid) {
        return Verdict::Nothing;
    }
    match namespace {
        NamespaceState::Terminating | NamespaceState::Gone => cancel(Cancel::NamespaceTerminating),
        _ if order.is_some() => Verdict::Nothing,
        NamespaceState::Active => Verdict::Order,
        NamespaceState::Unknown => Verdict::Undecided,
    }
}

/// The state of namespace `ns` on the management plane (the agent's ClusterRole may read its
/// own namespace); a failed read is logged and `Unknown`.
pub async fn namespace_state(client: &kube::Client, ns: &str) -> NamespaceState {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_opt(ns).await {
        Ok(None) => NamespaceState::Gone,
        Ok(Some(n))
            if n.metadata.deletion_timestamp.is_some()
                || n.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating") =>
        {
            NamespaceState::Terminating
        }
        Ok(Some(_)) => NamespaceState::Active,
        Err(e) => {
            tracing::warn!(namespace = ns, error = %chain(&e), "cannot read the FledgeCluster's namespace on the management plane");
            NamespaceState::Unknown
        }
    }
}

/// The FledgeClusters of namespace `ns` on the management plane, as dynamic objects.
pub(crate) fn fledge_cluster_api(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client, ns, &ApiResource::erase::<FledgeCluster>(&()))
}

fn fledge_clusters(ctx: &Context) -> Api<DynamicObject> {
    fledge_cluster_api(ctx.management.clone(), ctx.spec.namespace.as_str())
}

fn request(what: String) -> impl FnOnce(kube::Error) -> PhaseError {
    move |source| PhaseError::Request { what, source }
}

/// Puts [`FINALIZER`] on the FledgeCluster unless it is there or the object is being deleted
/// (an optimistic-lock patch: a concurrent change makes it fail and be retried). Called when
/// the pivot commits, and once per agent process in Steady, so that a cluster pivoted by an
/// agent that did not take it, or whose finalizer was removed by hand, is deletable again.
pub async fn hold(ctx: &Context) -> Result<(), PhaseError> {
    hold_on(&fledge_clusters(ctx), ctx.spec.name.as_str()).await
}

/// [`hold`] on the FledgeCluster `name` of `api` (the spec sync holds a re-created one).
pub(crate) async fn hold_on(api: &Api<DynamicObject>, name: &str) -> Result<(), PhaseError> {
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
    release_on(&fledge_clusters(ctx), ctx.spec.name.as_str())
        .await
        .map(|_| ())
}

/// [`release`] on the FledgeCluster `name` of `api`; true when this call removed it.
pub(crate) async fn release_on(api: &Api<DynamicObject>, name: &str) -> Result<bool, PhaseError> {
    let Some(fc) = api
        .get_opt(name)
        .await
        .map_err(request(format!("read FledgeCluster {name}")))?
    else {
        return Ok(false);
    };
    let finalizers = fc.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(false);
    }
    let kept: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
    let patch =
        json!({"metadata": {"finalizers": kept, "resourceVersion": fc.metadata.resource_version}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
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
    let recorded = load_request(&ctx.state_dir).ok().flatten();
    if let Some(c) = recorded.as_ref().and_then(|r| r.cancelled.as_ref()) {
        return Ok((
            vec![format!(
                "the deletion is cancelled: {}; then back to Steady",
                c.reason.explain(ns)
            )],
            Some("the spec sync settles the cancellation".into()),
        ));
    }
    Ok((
        vec![
            format!("FledgeCluster {ns}/{cluster} is being deleted"),
            format!(
                "check that it is an order: the FledgeCluster is still the one deleted and namespace {ns} is not being deleted"
            ),
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

/// Why the recorded order no longer holds, from the management plane (before an unpivot
/// starts: one never starts into a terminating namespace); `None` while it holds.
async fn no_longer_ordered(
    ctx: &Context,
    recorded: &Request,
) -> Result<Option<Cancel>, PhaseError> {
    let (ns, name) = (ctx.spec.namespace.as_str(), ctx.spec.name.as_str());
    let fc = fledge_clusters(ctx)
        .get_opt(name)
        .await
        .map_err(request(format!("read FledgeCluster {ns}/{name}")))?;
    let seen = match &fc {
        None => Seen::Gone,
        Some(o) => Seen::Present {
            uid: o.metadata.uid.as_deref().unwrap_or_default(),
            deleting: o.metadata.deletion_timestamp.is_some(),
        },
    };
    let namespace = if needs_namespace(seen) {
        namespace_state(&ctx.management, ns).await
    } else {
        NamespaceState::Unknown
    };
    let journal = Journal::load(&ctx.state_dir)?;
    Ok(
        match decide(
            seen,
            namespace,
            Some(&recorded.uid),
            Some(recorded),
            progress(recorded, &journal),
        ) {
            Verdict::Cancel(why) => Some(why),
            _ => None,
        },
    )
}

/// Runs (or resumes) the unpivot for deletion. A new start (none under way) is made only while
/// the order holds; otherwise the request is marked cancelled and the phase waits for the spec
/// sync to settle it. Its progress is recorded in the request, so that a cancellation never
/// leaves a half-moved cluster behind.
pub async fn apply(
    ctx: &Context,
    progress_line: &(dyn Fn(&str) + Send + Sync),
) -> Result<Step, PhaseError> {
    let (state_dir, ns) = (&ctx.state_dir, ctx.spec.namespace.as_str());
    let io = |source| PhaseError::Journal(request_error(state_dir, source));
    let Some(recorded) = load_request(state_dir).map_err(io)? else {
        return Ok(Step::Waiting("no deletion request is recorded".into()));
    };
    let cancelled = |why: Cancel| {
        Step::Waiting(format!(
            "{}; waiting for the spec sync to settle it",
            why.explain(ns)
        ))
    };
    if let Some(c) = &recorded.cancelled {
        return Ok(cancelled(c.reason));
    }
    let journal = Journal::load(state_dir)?;
    if progress(&recorded, &journal) != Some(Progress::Running) {
        if let Some(why) = no_longer_ordered(ctx, &recorded).await? {
            tracing::warn!(reason = ?why, "{}", why.explain(ns));
            cancel(state_dir, &recorded.uid, &recorded.deletion_timestamp, why).map_err(io)?;
            if why == Cancel::NamespaceTerminating {
                release(ctx).await?;
            }
            return Ok(cancelled(why));
        }
        if !set_progress(state_dir, Progress::Running).map_err(io)? {
            return Ok(Step::Waiting(
                "the deletion request was cancelled meanwhile".into(),
            ));
        }
    }
    // The move rights were given up after the pivot; `fledge delete` binds them again.
    let bound = super::pivoted::move_rights_bound(&ctx.management, ns)
        .await
        .map_err(request(format!(
            "ask the management plane whether the agent may move the cluster's objects into {ns}"
        )))?;
    if !bound {
        let names = Names::new(ctx.spec.name.as_str());
        return Ok(Step::Waiting(format!(
            "the agent's move rights are not bound on the management plane (RoleBinding {ns}/{}), which the unpivot needs: `fledge delete` binds them, or `kubectl apply -f management.yaml -l {}={}`",
            names.agent_move,
            fledge_generator::management::MOVE_RIGHTS_LABEL.0,
            fledge_generator::management::MOVE_RIGHTS_LABEL.1,
        )));
    }
    let events = |e: &crate::pivot::apply::Event| progress_line(&e.to_string());
    let outcome = Pivot::new(
        &ctx.local,
        &ctx.management,
        ns,
        ctx.spec.name.as_str(),
        options(),
        &events,
    )
    .run()
    .await;
    let summary = match outcome {
        Ok(s) => s,
        Err(e) => {
            if e.source_untouched() {
                set_progress(state_dir, Progress::RolledBack).map_err(io)?;
            }
            return Err(e.into());
        }
    };
    set_progress(state_dir, Progress::Done).map_err(io)?;
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

/// Makes sure the management plane's Cluster API is deleting the Cluster (or that it is gone).
/// An unpivot for deletion deletes it there itself; this covers a run interrupted between the
/// two, and a cluster this management plane got by a re-homing.
async fn ensure_cluster_deleting(ctx: &Context) -> Result<(), PhaseError> {
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
        return Ok(());
    };
    if c.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: c.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match clusters.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(request(format!("delete Cluster {ns}/{name}"))(e)),
    }
}

/// `Released`'s plan: nothing to wait for once the objects are back on the management plane.
pub async fn plan_release(ctx: &Context) -> Result<(Vec<String>, Option<String>), PhaseError> {
    Ok((
        vec![
            format!(
                "delete Cluster {}/{} on the management plane unless it is being deleted",
                ctx.spec.namespace, ctx.spec.name
            ),
            format!(
                "release finalizer {FINALIZER} of FledgeCluster {}",
                ctx.spec.name
            ),
        ],
        None,
    ))
}

/// Releases the finalizer once the management plane's Cluster API is deleting the Cluster: from
/// then on nothing needs this node, which is among what it deletes. (Holding it until the
/// control-plane Machines were being deleted lost the race on real nodes: CAPD removed CP-A's
/// container within seconds, before the agent looked again, and the FledgeCluster stayed.)
pub async fn apply_release(
    ctx: &Context,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Step, PhaseError> {
    ensure_cluster_deleting(ctx).await?;
    release(ctx).await?;
    progress(&format!("finalizer {FINALIZER} released"));
    Ok(Step::Done(format!(
        "the management plane's Cluster API is deleting the cluster; finalizer {FINALIZER} released"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::deletion::tests::{STEADY, journal};
    use crate::state::deletion::{deletion_requested, request_deletion, settle};
    use crate::state::journal::{Outcome, Phase};
    use Cancel::*;
    use NamespaceState::*;

    const UID: &str = "uid-1";

    fn deleting(uid: &str) -> Seen<'_> {
        Seen::Present {
            uid,
            deleting: true,
        }
    }

    fn standing(uid: &str) -> Seen<'_> {
        Seen::Present {
            uid,
            deleting: false,
        }
    }

    fn order(uid: &str) -> Request {
        Request {
            uid: uid.into(),
            deletion_timestamp: "2026-12-03T00:00:00Z".into(),
            unpivot: None,
            cancelled: None,
        }
    }

    #[test]
    fn only_a_fledge_cluster_deleted_on_its_own_is_an_order() {
        let d = |seen, ns| decide(seen, ns, Some(UID), None, None);
        assert_eq!(d(deleting(UID), Active), Verdict::Order);
        // Deleted because its namespace is: no order, the finalizer is released.
        assert_eq!(
            d(deleting(UID), Terminating),
            Verdict::Cancel(NamespaceTerminating)
        );
        assert_eq!(
            d(deleting(UID), NamespaceState::Gone),
            Verdict::Cancel(NamespaceTerminating)
        );
        // The namespace could not be read: nothing yet.
        assert_eq!(d(deleting(UID), Unknown), Verdict::Undecided);
        assert_eq!(d(standing(UID), Unknown), Verdict::Nothing);
        assert_eq!(d(Seen::Gone, Unknown), Verdict::Nothing);
        // A re-created object whose spec the agent refused: its deletion is no order.
        assert_eq!(d(deleting("uid-2"), Active), Verdict::Nothing);
        assert!(needs_namespace(deleting(UID)) && !needs_namespace(standing(UID)));
    }

    #[test]
    fn a_recorded_order_is_cancelled_when_it_no_longer_holds() {
        let r = order(UID);
        for progress in [None, Some(Progress::RolledBack)] {
            let d = |seen, ns| decide(seen, ns, Some(UID), Some(&r), progress);
            assert_eq!(d(deleting(UID), Active), Verdict::Nothing, "{progress:?}");
            assert_eq!(d(deleting(UID), Unknown), Verdict::Nothing);
            assert_eq!(
                d(deleting(UID), Terminating),
                Verdict::Cancel(NamespaceTerminating)
            );
            // Its finalizer removed by hand, or its namespace deleted.
            assert_eq!(d(Seen::Gone, Unknown), Verdict::Cancel(Cancel::Gone));
            // Re-created (another UID), being deleted or not.
            assert_eq!(d(standing("uid-2"), Unknown), Verdict::Cancel(Replaced));
            assert_eq!(d(deleting("uid-2"), Active), Verdict::Cancel(Replaced));
        }
    }

    #[test]
    fn an_unpivot_under_way_is_finished_or_rolled_back_before_its_order_is_cancelled() {
        let r = order(UID);
        let running = |seen, ns| decide(seen, ns, Some(UID), Some(&r), Some(Progress::Running));
        assert_eq!(
            running(Seen::Gone, Unknown),
            Verdict::Deferred(Cancel::Gone)
        );
        assert_eq!(
            running(deleting(UID), Terminating),
            Verdict::Deferred(NamespaceTerminating)
        );
        // Done: `Released` finishes the deletion; the FledgeCluster going is its end.
        let done = |seen, ns| decide(seen, ns, Some(UID), Some(&r), Some(Progress::Done));
        assert_eq!(done(Seen::Gone, Unknown), Verdict::Nothing);
        assert_eq!(done(deleting(UID), Terminating), Verdict::Nothing);
    }

    #[test]
    fn a_cancelled_order_is_settled_and_the_runner_is_back_in_steady() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        journal(state, &STEADY);
        assert!(request_deletion(state, UID, "2026-12-03T00:00:00Z").unwrap());
        // The unpivot was tried and rolled back (a terminating namespace refuses every create).
        assert!(set_progress(state, Progress::Running).unwrap());
        let j = journal(state, &[(Phase::Unpivoted, Outcome::Failed)]);
        assert!(set_progress(state, Progress::RolledBack).unwrap());
        assert_eq!(
            super::super::next(&j, deletion_requested(state)),
            Phase::Unpivoted
        );

        assert!(cancel(state, UID, "", Cancel::Gone).unwrap());
        assert!(!cancel(state, UID, "", Cancel::Gone).unwrap(), "once");
        // Marked, not settled: the runner still waits (and starts no unpivot).
        assert!(deletion_requested(state));
        assert!(!set_progress(state, Progress::Running).unwrap());
        assert_eq!(settle(state).unwrap(), Some(Cancel::Gone));
        assert_eq!(settle(state).unwrap(), None, "settled once");
        assert!(!deletion_requested(state));
        let j = Journal::load(state).unwrap();
        assert!(!j.started(Phase::Unpivoted), "{j:?}");
        assert_eq!(
            super::super::next(&j, deletion_requested(state)),
            Phase::Steady
        );
        // Kept for the status, with its reason.
        let r = load_request(state).unwrap().unwrap();
        assert_eq!(
            r.cancelled.map(|c| (c.reason, c.settled)),
            Some((Cancel::Gone, true))
        );
        // A later deletion of another object is an order again.
        assert!(request_deletion(state, "uid-2", "later").unwrap());
        assert!(deletion_requested(state));
    }
}
