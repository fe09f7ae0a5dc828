//! Applying the plan: the move itself, crash-safe.
//!
//! The order of writes:
//! 1. pause the source Cluster (`spec.paused`, plus an annotation saying fledge paused it);
//! 2. create the objects in the target group by group (owners first), each carrying its source
//!    UID in an annotation and its ownerReferences rewritten to target UIDs; copy status through
//!    the status subresource;
//! 3. verify, from a fresh listing of the target, that every object is there with the right owners;
//! 4. **cutover**: mark the target Cluster (`pivot.fledge.dev/state: cutover`);
//! 5. delete from the source, dependants first and the Cluster last, releasing finalizers first;
//! 6. unpause the target Cluster and mark it `complete`.
//!
//! The same engine runs in reverse for an unpivot ([`Direction::Unpivot`]: the local cluster is
//! the source and a management plane the target), with the same guarantees. Before any write it
//! also checks that the target runs every provider of the source at the same or a newer version;
//! the state is then marked on the target's FledgeCluster (where the management plane reads it),
//! and once the source is empty the pivot's annotations are removed from the target objects, so
//! that they read as before the pivot.
//!
//! The clusters themselves are the journal: a second run reads both, and from any interrupted
//! state it converges to the same end state. Before cutover a run that fails for good rolls back
//! (deletes what it created in the target, unpauses the source); after cutover it only moves
//! forward. A rollback deletes a target object only while its source copy still exists: a run
//! that finds the source gone (or the target past cutover) reads the state again and completes
//! the move instead.
//!
//! One move of a cluster at a time: before its first write a run takes the move lock on the
//! source Cluster ([`lock`]), renews it while it runs and releases it at the end; a second run
//! refuses while another holds it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    Preconditions,
};
use serde::Serialize;
use serde_json::{Value, json};

use fledge_generator::spec::pivot_state;

use super::ObjRef;
use super::discover::{DiscoverError, Graph, Node, discover};
use super::plan::{Plan, plan};

pub mod lock;
mod source;
mod target;
mod unpivot;

pub use lock::{DEFAULT_LOCK_HOLD, LOCK};

/// Annotation on every object created in the target: the object's UID in the source.
pub const SOURCE_UID: &str = "pivot.fledge.dev/source-uid";
/// Annotation on the target Cluster: `cutover` once the source starts being deleted, then
/// `complete`.
pub const STATE: &str = "pivot.fledge.dev/state";
/// Annotation on the source Cluster (and its copy) when fledge paused it, so that only a pause
/// fledge made is undone.
pub const PAUSED_BY: &str = "pivot.fledge.dev/paused";

/// The annotation that pauses a ClusterClass (and any Cluster API object).
pub const CLASS_PAUSED: &str = "cluster.x-k8s.io/paused";

/// A state the move records on the management plane's FledgeCluster.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mark {
    InProgress,
    Complete,
    RolledBack,
}

/// Retry policy for transient errors (connection failures, 429, 5xx, optimistic-lock conflicts).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// First delay.
    pub first: Duration,
    /// Longest delay.
    pub cap: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 6,
            first: Duration::from_millis(200),
            cap: Duration::from_secs(5),
        }
    }
}

/// Which way the objects go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    /// Management plane -> local cluster.
    #[default]
    Pivot,
    /// Local cluster -> a management plane (deletion, re-homing).
    Unpivot,
}

impl Direction {
    /// The word for the move, in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Direction::Pivot => "pivot",
            Direction::Unpivot => "unpivot",
        }
    }
}

/// How to pivot.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Which way.
    pub direction: Direction,
    /// Delete the target Cluster just before it is unpaused (an unpivot for deletion: the
    /// target's Cluster API then deletes the cluster, and never reconciles it as live first).
    pub delete_target_cluster: bool,
    /// Requests in flight at once within a group.
    pub parallelism: usize,
    /// Copy status through the status subresource.
    pub copy_status: bool,
    /// Retry policy.
    pub retry: Retry,
    /// How long to wait, once the source is paused, for providers to clear clusterctl's
    /// `block-move` annotation from the cluster's objects.
    pub block_move_timeout: Duration,
    /// How long the move lock holds without renewal (it is renewed every third of it): how
    /// long a crashed run blocks another holder.
    pub lock_hold: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            direction: Direction::Pivot,
            delete_target_cluster: false,
            parallelism: DEFAULT_PARALLELISM,
            copy_status: true,
            retry: Retry::default(),
            block_move_timeout: Duration::from_secs(300),
            lock_hold: DEFAULT_LOCK_HOLD,
        }
    }
}

/// The annotation a provider puts on an object while it must not be moved (clusterctl's
/// `clusterctl.cluster.x-k8s.io/block-move`); the pivot waits, after pausing, until it is gone.
pub const BLOCK_MOVE: &str = "clusterctl.cluster.x-k8s.io/block-move";

/// Default `--parallelism`.
pub const DEFAULT_PARALLELISM: usize = 8;

/// Progress, reported as the pivot goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum Event {
    /// The target serves every type of the plan.
    Checked {
        /// Objects to move.
        objects: usize,
        /// Groups.
        groups: usize,
    },
    /// The source Cluster was paused (or already was).
    Paused {
        /// Whether this run paused it.
        now: bool,
    },
    /// Objects carry clusterctl's block-move annotation: the pivot waits.
    Blocked {
        /// `Kind/name` of each.
        objects: Vec<String>,
        /// Seconds waited so far.
        waited: u64,
    },
    /// A group exists in the target.
    Created {
        /// Group index.
        group: usize,
        /// Groups in all.
        of: usize,
        /// Objects in the group.
        objects: usize,
        /// Created by this run.
        created: usize,
        /// Statuses copied by this run.
        statuses: usize,
    },
    /// Every object is in the target with the right owners.
    Verified {
        /// Objects checked.
        objects: usize,
    },
    /// The target Cluster is marked cutover: from here on the pivot only moves forward.
    Cutover,
    /// A group was deleted from the source.
    Deleted {
        /// Group index.
        group: usize,
        /// Objects deleted by this run.
        objects: usize,
    },
    /// The source's providers are in the target at the same or newer versions (unpivot).
    ProvidersChecked {
        /// Providers compared.
        providers: usize,
    },
    /// The pivot's annotations were removed from the target objects (unpivot).
    Unmarked {
        /// Objects changed by this run.
        objects: usize,
    },
    /// The target Cluster was deleted (an unpivot for deletion).
    ClusterDeleted,
    /// The target Cluster is unpaused and marked complete.
    Completed,
    /// A failure before cutover was rolled back.
    RolledBack {
        /// Objects deleted from the target.
        deleted: usize,
    },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Checked { objects, groups } => write!(
                f,
                "target serves every type; moving {objects} objects in {groups} groups"
            ),
            Event::Paused { now: true } => write!(f, "source Cluster paused"),
            Event::Paused { now: false } => write!(f, "source Cluster already paused"),
            Event::Blocked { objects, waited } => write!(
                f,
                "waiting for {BLOCK_MOVE} to be removed from {} ({waited}s)",
                objects.join(", ")
            ),
            Event::Created {
                group,
                of,
                objects,
                created,
                statuses,
            } => write!(
                f,
                "group {}/{of}: {objects} objects in the target ({created} created, {statuses} statuses copied)",
                group + 1
            ),
            Event::Verified { objects } => {
                write!(
                    f,
                    "verified: {objects} objects in the target with their owners"
                )
            }
            Event::Cutover => write!(f, "cutover: deleting from the source"),
            Event::Deleted { group, objects } => {
                write!(f, "group {}: {objects} deleted from the source", group + 1)
            }
            Event::ProvidersChecked { providers } => write!(
                f,
                "the target runs the source's {providers} providers at the same or newer versions"
            ),
            Event::Unmarked { objects } => write!(
                f,
                "pivot annotations removed from {objects} objects in the target"
            ),
            Event::ClusterDeleted => write!(
                f,
                "target Cluster deleted: its Cluster API deletes the cluster once it is unpaused"
            ),
            Event::Completed => write!(f, "target Cluster unpaused; move complete"),
            Event::RolledBack { deleted } => write!(
                f,
                "rolled back: {deleted} objects deleted from the target, source Cluster unpaused"
            ),
        }
    }
}

/// What a pivot did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Objects of the cluster now in the target.
    pub moved: usize,
    /// Objects created by this run.
    pub created: usize,
    /// Statuses copied by this run.
    pub statuses: usize,
    /// Objects deleted from the source by this run.
    pub deleted: usize,
    /// Ownerreferences dropped because their owner exists nowhere.
    pub dropped_owner_refs: usize,
    /// The pivot had already completed; nothing was done.
    pub already_complete: bool,
    /// Wall time.
    #[serde(skip)]
    pub wall: Duration,
}

impl Summary {
    /// One line for the journal and the status: what the run moved.
    pub fn describe(&self) -> String {
        if self.already_complete {
            return "already pivoted".to_string();
        }
        format!(
            "{} objects moved ({} created, {} deleted from the management cluster) in {:.1}s",
            self.moved,
            self.created,
            self.deleted,
            self.wall.as_secs_f64()
        )
    }
}

/// Why a pivot failed.
#[derive(Debug, thiserror::Error)]
pub enum PivotError {
    /// Discovery failed.
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    /// The target lacks types of the plan (checked before any write).
    #[error(
        "the target cluster does not serve {}; install the same providers there (clusterctl init) and run the pivot again; nothing was changed",
        .0.join(", ")
    )]
    MissingTypes(Vec<String>),
    /// The target holds an object of the same name that this pivot did not create.
    #[error("the target already has {object}, which this pivot did not create ({why})")]
    Conflict {
        /// `Kind/name`.
        object: String,
        /// Details.
        why: String,
    },
    /// A request failed with an error retrying cannot fix, or kept failing.
    #[error("{what}: {}", describe(source))]
    Request {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The target does not hold what was created.
    #[error("verification failed: {0}")]
    Verify(String),
    /// The target's providers are missing or older than the source's (checked before any
    /// write).
    #[error(
        "the target cannot take the cluster's objects; nothing was changed: {}; upgrade the target's providers (clusterctl upgrade) or install them (clusterctl init) and run again",
        .0.join("; ")
    )]
    Providers(Vec<String>),
    /// A provider inventory could not be read (checked before any write).
    #[error(
        "cannot read clusterctl's provider inventory in the {side}; nothing was changed: {}",
        describe(source)
    )]
    Inventory {
        /// `source` or `target`.
        side: &'static str,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Objects the pivot cannot move correctly (checked before any write).
    #[error("the pivot cannot move this cluster as it is; nothing was changed: {}", .0.join("; "))]
    Refused(Vec<String>),
    /// Objects of the cluster are being deleted in the source (checked before any copy).
    #[error(
        "{} being deleted in the source; a copy would bring it back to life in the target: wait until the deletion finishes (its finalizers are released) and run the pivot again",
        .0.join(", ")
    )]
    BeingDeleted(Vec<String>),
    /// Providers kept the block-move annotation past the timeout.
    #[error("{} still carry {BLOCK_MOVE} after {waited}s; the providers are not ready for the move", objects.join(", "))]
    Blocked {
        /// `Kind/name` of each.
        objects: Vec<String>,
        /// Seconds waited.
        waited: u64,
    },
    /// Failed before cutover; rolled back.
    #[error(
        "the pivot failed before cutover and was rolled back: the source Cluster is unpaused and the target holds none of its objects"
    )]
    RolledBack(#[source] Box<PivotError>),
    /// Failed before cutover, and the rollback failed too.
    #[error(
        "the pivot failed before cutover, and rolling back failed too ({rollback}); run the pivot again to complete it"
    )]
    RollbackFailed {
        /// The first failure.
        #[source]
        cause: Box<PivotError>,
        /// Why the rollback failed.
        rollback: String,
    },
    /// Failed after cutover: a second run completes it.
    #[error(
        "the pivot failed after cutover; run it again to complete it (from cutover on it only moves forward)"
    )]
    Incomplete(#[source] Box<PivotError>),
    /// Another run holds the move lock (checked before this run's first write).
    #[error(
        "another move of {}/{} is running: its move lock ({}) is held by {} for a {} since {}, until {} unless renewed; this run changed nothing: wait for that move to end, or run again after {} if its holder is gone",
        .0.namespace, .0.cluster, lock::LOCK, .0.holder, .0.direction, .0.acquired, .0.expires, .0.expires
    )]
    Locked(Box<lock::LockedBy>),
    /// The move lock was taken over while this run went on (it could not renew it in time):
    /// this run stopped writing, without rolling back.
    #[error(
        "the move lock of Cluster {cluster} was lost while the move ran (now: {holder}); this run stopped writing and rolled nothing back: the holder finishes the move, or run it again"
    )]
    LockLost {
        /// Cluster name.
        cluster: String,
        /// Who holds it now.
        holder: String,
    },
}

impl PivotError {
    /// True when the pivot changed nothing durable in the source (it is unpaused and whole).
    pub fn source_untouched(&self) -> bool {
        matches!(
            self,
            PivotError::Discover(_)
                | PivotError::Refused(_)
                | PivotError::MissingTypes(_)
                | PivotError::Providers(_)
                | PivotError::Inventory { .. }
                | PivotError::Conflict { .. }
                | PivotError::RolledBack(_)
        )
    }
}

fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("HTTP {} {}: {}", s.code, s.reason, s.message),
        other => {
            let mut msg = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        }
    }
}

/// Whether retrying can fix an error.
pub fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            matches!(s.code, 429 | 500 | 502 | 503 | 504)
                || (s.code == 409 && s.reason == "Conflict")
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::HttpError(_) => true,
        _ => false,
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// A type as served by the target.
#[derive(Debug, Clone, Copy)]
struct Served {
    status_subresource: bool,
}

/// The pivot of one cluster between two clients.
pub struct Pivot<'a> {
    source: &'a kube::Client,
    target: &'a kube::Client,
    namespace: &'a str,
    cluster: &'a str,
    opts: Options,
    progress: &'a (dyn Fn(&Event) + Send + Sync),
    /// The identity the move lock is held under.
    holder: String,
    lock: lock::LockState,
}

/// How one pass over the clusters ended.
enum Attempt {
    Done,
    /// The source changed under a rollback (another run got past cutover, or the source is
    /// gone): read the state again and complete the move.
    Again(PivotError),
}

/// What the target holds of this pivot, by source UID.
type Existing = HashMap<String, DynamicObject>;

/// Marks as shared the members whose copy in the target already serves another cluster (an
/// earlier pivot copied it there, and it has an owner that is not one of this pivot's copies):
/// this pivot adds its owners to them and a rollback never deletes them.
fn shared_in_target(graph: &mut Graph, existing: &Existing) {
    let ours: BTreeSet<&str> = existing
        .values()
        .filter_map(|o| o.metadata.uid.as_deref())
        .collect();
    let serving_others: Vec<String> = existing
        .iter()
        .filter(|(_, o)| {
            o.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| !ours.contains(r.uid.as_str()))
        })
        .map(|(src, _)| src.clone())
        .collect();
    graph.shared.extend(serving_others);
}

impl<'a> Pivot<'a> {
    /// A pivot of `namespace/cluster` from `source` to `target`.
    pub fn new(
        source: &'a kube::Client,
        target: &'a kube::Client,
        namespace: &'a str,
        cluster: &'a str,
        opts: Options,
        progress: &'a (dyn Fn(&Event) + Send + Sync),
    ) -> Self {
        Self {
            source,
            target,
            namespace,
            cluster,
            opts: Options {
                parallelism: opts.parallelism.max(1),
                ..opts
            },
            progress,
            holder: lock::default_holder(),
            lock: lock::LockState::default(),
        }
    }

    /// Holds the move lock as `holder` instead of [`lock::default_holder`] (this host and
    /// process). A run of the same holder takes a lock it left behind back at once, so give
    /// the identity that stays the same across restarts of one mover, never one that two
    /// movers share.
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = holder.into();
        self
    }

    /// Runs the pivot to completion (or to a clear failure), holding the move lock from its
    /// first write to its end.
    pub async fn run(&self) -> Result<Summary, PivotError> {
        let started = Instant::now();
        self.lock.reset();
        let stop = tokio::sync::Notify::new();
        let work = async {
            let r = self.attempts().await;
            stop.notify_one();
            r
        };
        let (r, ()) = tokio::join!(work, self.keep_lock(&stop));
        self.release().await;
        let mut summary = r?;
        summary.wall = started.elapsed();
        Ok(summary)
    }

    /// [`Self::attempt`], again after a rollback that found the source changed under it.
    async fn attempts(&self) -> Result<Summary, PivotError> {
        let mut summary = Summary::default();
        let mut again = 0;
        loop {
            match self.attempt(&mut summary).await? {
                Attempt::Done => return Ok(summary),
                Attempt::Again(cause) if again < 2 => {
                    again += 1;
                    tracing::warn!(
                        cluster = self.cluster,
                        cause = %cause,
                        "the source changed under the move: not rolling back; reading the state again to complete it"
                    );
                }
                Attempt::Again(cause) => return Err(PivotError::Incomplete(Box::new(cause))),
            }
        }
    }

    /// One pass: read both clusters, then move forward from wherever the move stands.
    async fn attempt(&self, summary: &mut Summary) -> Result<Attempt, PivotError> {
        let mut graph = match discover(self.source, self.namespace, self.cluster).await {
            Ok(g) => g,
            Err(DiscoverError::NoCluster { .. }) => {
                // Either the pivot completed (or got past deleting the source Cluster), or there
                // is nothing to move.
                self.finish_without_source(summary).await?;
                return Ok(Attempt::Done);
            }
            Err(e) => return Err(e.into()),
        };
        let plan = plan(&graph, self.namespace, self.cluster);
        if !plan.refused.is_empty() {
            return Err(PivotError::Refused(
                plan.refused
                    .iter()
                    .map(|(o, why)| format!("{o}: {why}"))
                    .collect(),
            ));
        }
        let served = self.check_target(&plan).await?;
        let existing = self.existing(&graph, &plan).await?;
        shared_in_target(&mut graph, &existing);
        let graph = graph;
        let past_cutover = existing
            .get(&self.root(&graph).obj.uid)
            .and_then(|c| c.metadata.annotations.as_ref()?.get(STATE).cloned())
            .is_some();
        (self.progress)(&Event::Checked {
            objects: plan.total,
            groups: plan.groups.len(),
        });
        if past_cutover {
            // The move lock, before the first write (the checks above only read).
            if !self.take_lock().await? {
                self.finish_without_source(summary).await?;
                return Ok(Attempt::Done);
            }
            let resumed = match self
                .resume(&graph, &plan, &served, &existing, summary)
                .await
            {
                Ok(()) => self.forward(&graph, &plan, existing, summary).await,
                Err(e) => Err(e),
            };
            resumed.map_err(|e| PivotError::Incomplete(Box::new(e)))?;
        } else {
            if self.opts.direction == Direction::Unpivot {
                self.check_providers().await?;
            }
            if !self.take_lock().await? {
                self.finish_without_source(summary).await?;
                return Ok(Attempt::Done);
            }
            // Pause first, wait for the providers' block-move to clear, then discover again:
            // what is moved is what exists once nothing reconciles it any more.
            let (graph, plan, served, existing) = match self.settled(&graph).await {
                Ok(fresh) => fresh,
                Err(e) => return self.roll_back(&graph, &plan, e).await,
            };
            match self
                .before_cutover(&graph, &plan, &served, existing, summary)
                .await
            {
                Ok(existing) => self
                    .forward(&graph, &plan, existing, summary)
                    .await
                    .map_err(|e| PivotError::Incomplete(Box::new(e)))?,
                Err(e) => return self.roll_back(&graph, &plan, e).await,
            }
        }
        summary.moved = plan.total;
        Ok(Attempt::Done)
    }

    /// [`Self::acquire`]. A failure to take the lock (other than another run holding it) is a
    /// failure before cutover with nothing to undo but the lock itself, which the end of the
    /// run releases if the write landed.
    async fn take_lock(&self) -> Result<bool, PivotError> {
        match self.acquire().await {
            Err(e @ PivotError::Locked(_)) => Err(e),
            Err(e) => Err(PivotError::RolledBack(Box::new(e))),
            ok => ok,
        }
    }

    /// Pauses the source, waits (bounded) until no object of the cluster carries
    /// [`BLOCK_MOVE`], and discovers the cluster again; refuses objects being deleted.
    async fn settled(
        &self,
        graph: &Graph,
    ) -> Result<(Graph, Plan, HashMap<(String, String), Served>, Existing), PivotError> {
        self.ensure_namespace().await?;
        self.mark(Mark::InProgress).await?;
        self.pause_source(graph).await?;
        self.pause_class(graph).await?;
        let start = Instant::now();
        let mut delay = Duration::from_millis(500);
        let graph = loop {
            let g = discover(self.source, self.namespace, self.cluster).await?;
            let mut blocked: Vec<&Node> = g
                .members
                .iter()
                .map(|u| &g.nodes[u])
                .filter(|n| n.data["metadata"]["annotations"][BLOCK_MOVE].is_string())
                .collect();
            if blocked.is_empty() {
                break g;
            }
            // Poll only the blocked objects; discover the whole cluster again once they clear.
            while !blocked.is_empty() {
                let names: Vec<String> = blocked.iter().map(|n| n.obj.to_string()).collect();
                let waited = start.elapsed().as_secs();
                if start.elapsed() >= self.opts.block_move_timeout {
                    return Err(PivotError::Blocked {
                        objects: names,
                        waited,
                    });
                }
                (self.progress)(&Event::Blocked {
                    objects: names,
                    waited,
                });
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                let mut still = Vec::new();
                for n in blocked {
                    let api = self.member_api(self.source, &g, &n.obj);
                    let now = self
                        .retry(
                            || format!("reading the source {}", n.obj),
                            || async { api.get_opt(&n.obj.name).await },
                        )
                        .await?;
                    let held = now.is_some_and(|o| {
                        o.metadata
                            .annotations
                            .is_some_and(|a| a.contains_key(BLOCK_MOVE))
                    });
                    if held {
                        still.push(n);
                    }
                }
                blocked = still;
            }
        };
        let being_deleted: Vec<String> = graph
            .members
            .iter()
            .map(|u| &graph.nodes[u])
            .filter(|n| n.data["metadata"]["deletionTimestamp"].is_string())
            .map(|n| n.obj.to_string())
            .collect();
        if !being_deleted.is_empty() {
            return Err(PivotError::BeingDeleted(being_deleted));
        }
        let mut graph = graph;
        let plan = plan(&graph, self.namespace, self.cluster);
        let served = self.check_target(&plan).await?;
        let existing = self.existing(&graph, &plan).await?;
        shared_in_target(&mut graph, &existing);
        Ok((graph, plan, served, existing))
    }

    async fn retry<T, F, Fut>(&self, what: impl Fn() -> String, mut f: F) -> Result<T, PivotError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut delay = self.opts.retry.first;
        let mut attempt = 1;
        loop {
            self.check_lock()?;
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) && attempt < self.opts.retry.attempts => {
                    tracing::warn!(what = %what(), error = %describe(&e), attempt, "retrying");
                    tokio::time::sleep(delay + jitter(delay)).await;
                    delay = (delay * 2).min(self.opts.retry.cap);
                    attempt += 1;
                }
                Err(source) => {
                    return Err(PivotError::Request {
                        what: what(),
                        source,
                    });
                }
            }
        }
    }

    /// Runs `work` with `parallelism` in flight. After the first failure nothing new starts,
    /// but what is in flight finishes: a request dropped half-way may still land on the server
    /// after a rollback has looked, so no request is ever abandoned. Returns the first error.
    async fn settle<T, Fut>(&self, work: impl Iterator<Item = Fut>) -> Result<Vec<T>, PivotError>
    where
        Fut: Future<Output = Result<T, PivotError>>,
    {
        let failed = AtomicBool::new(false);
        let failed = &failed;
        let results: Vec<Option<Result<T, PivotError>>> =
            futures::stream::iter(work.map(|fut| async move {
                if failed.load(Ordering::SeqCst) {
                    return None;
                }
                let r = fut.await;
                if r.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                Some(r)
            }))
            .buffer_unordered(self.opts.parallelism)
            .collect()
            .await;
        let mut out = Vec::new();
        let mut first = None;
        for r in results.into_iter().flatten() {
            match r {
                Ok(v) => out.push(v),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// A JSON merge patch of `name`, retried like every request.
    async fn merge(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        patch: &Value,
        what: impl Fn() -> String,
    ) -> Result<DynamicObject, PivotError> {
        self.retry(what, || async {
            api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
        })
        .await
    }

    fn api(&self, client: &kube::Client, ar: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), self.namespace, ar)
    }

    /// The API of a member where it lives: the namespace moved, or (a global identity and its
    /// Secret) cluster-wide or the provider's namespace.
    fn member_api(&self, client: &kube::Client, graph: &Graph, o: &ObjRef) -> Api<DynamicObject> {
        let ar = graph.resource(o).expect("members' types are listed");
        match graph.location(&o.uid) {
            Some(None) => Api::all_with(client.clone(), ar),
            Some(Some(ns)) => Api::namespaced_with(client.clone(), ns, ar),
            None => self.api(client, ar),
        }
    }

    /// The plan's types, one each, of the members in the namespace.
    fn plan_types<'g>(graph: &'g Graph, plan: &Plan) -> Vec<&'g ApiResource> {
        let mut seen = BTreeSet::new();
        plan.groups
            .iter()
            .flat_map(|g| &g.objects)
            .filter(|o| graph.location(&o.uid).is_none())
            .filter(|o| seen.insert((o.api_version.clone(), o.kind.clone())))
            .filter_map(|o| graph.resource(o))
            .collect()
    }

    /// Lists the target and returns the objects this pivot created there (by source UID).
    /// Fails on an object of the same name it did not create.
    async fn existing(&self, graph: &Graph, plan: &Plan) -> Result<Existing, PivotError> {
        let mut by_source = HashMap::new();
        let mut by_name = HashMap::new();
        let lists: Vec<(&ApiResource, Vec<DynamicObject>)> = futures::stream::iter(
            Self::plan_types(graph, plan)
                .into_iter()
                .map(|ar| async move {
                    let api = self.api(self.target, ar);
                    let list = self
                        .retry(
                            || format!("listing {} in the target", ar.plural),
                            || async { api.list(&ListParams::default()).await },
                        )
                        .await?;
                    Ok::<_, PivotError>((ar, list.items))
                }),
        )
        .buffered(super::discover::LIST_PARALLELISM)
        .try_collect()
        .await?;
        for (ar, items) in lists {
            for obj in items {
                let name = obj.metadata.name.clone().unwrap_or_default();
                let src = obj
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SOURCE_UID))
                    .cloned();
                by_name.insert((ar.kind.clone(), name), src.clone());
                if let Some(src) = src {
                    by_source.insert(src, obj);
                }
            }
        }
        // Members outside the namespace (global identities, their Secrets), one by one: a
        // copy this pivot did not make is left as it is (clusterctl move does the same).
        for uid in graph.located.keys().filter(|u| graph.members.contains(*u)) {
            let o = &graph.nodes[uid].obj;
            let api = self.member_api(self.target, graph, o);
            let got = self
                .retry(
                    || format!("reading {o} in the target"),
                    || async { api.get_opt(&o.name).await },
                )
                .await?;
            if let Some(obj) = got {
                by_source.insert(uid.clone(), obj);
            }
        }
        for uid in &graph.members {
            let o = &graph.nodes[uid].obj;
            if graph.location(uid).is_some() {
                continue;
            }
            match by_name.get(&(o.kind.clone(), o.name.clone())) {
                None => {}
                Some(Some(src)) if src == uid => {}
                Some(Some(src)) => {
                    return Err(PivotError::Conflict {
                        object: o.to_string(),
                        why: format!(
                            "it was pivoted from another object, source uid {src}, not {uid}"
                        ),
                    });
                }
                Some(None) => {
                    return Err(PivotError::Conflict {
                        object: o.to_string(),
                        why: format!("it has no {SOURCE_UID} annotation"),
                    });
                }
            }
        }
        by_source.retain(|src, _| graph.members.contains(src));
        Ok(by_source)
    }

    fn root<'g>(&self, graph: &'g Graph) -> &'g Node {
        graph
            .nodes
            .values()
            .find(|n| {
                n.obj.kind == "Cluster"
                    && n.obj.api_version.starts_with("cluster.x-k8s.io/")
                    && n.obj.name == self.cluster
                    && graph.members.contains(&n.obj.uid)
            })
            .expect("discover found the Cluster")
    }

    /// Pause, create, copy status, verify, cutover. Returns the target's objects.
    async fn before_cutover(
        &self,
        graph: &Graph,
        plan: &Plan,
        served: &HashMap<(String, String), Served>,
        mut existing: Existing,
        summary: &mut Summary,
    ) -> Result<Existing, PivotError> {
        let root = self.root(graph);
        // Paused by `settled` before this graph was discovered: its annotation says whether
        // this pivot paused it, and what to restore.
        let we_paused = root.data["metadata"]["annotations"][PAUSED_BY].as_str();
        let mut uids: HashMap<String, String> = existing
            .iter()
            .filter_map(|(src, obj)| Some((src.clone(), obj.metadata.uid.clone()?)))
            .collect();
        for group in &plan.groups {
            let results: Vec<(String, DynamicObject, bool, bool, usize)> =
                self.settle(group.objects.iter().map(|o| {
                    let node = &graph.nodes[&o.uid];
                    let known = existing.get(&o.uid).cloned();
                    let uids = &uids;
                    let is_root = o.uid == root.obj.uid;
                    async move {
                        let ar = graph.resource(o).expect("planned types are listed");
                        let st = served[&(o.api_version.clone(), o.kind.clone())];
                        let global = graph.global.contains(&o.uid);
                        let (obj, created, dropped) = match known {
                            // A global identity (or its Secret) already there stays as it is.
                            Some(obj) if global => (obj, false, 0),
                            // A shared object an earlier pivot copied: this cluster's owners
                            // join the ones already there.
                            Some(obj) if graph.shared.contains(&o.uid) => {
                                (self.add_owners(ar, node, obj, uids).await?, false, 0)
                            }
                            Some(obj) => (obj, false, 0),
                            None => {
                                let (body, dropped) = self.target_body(
                                    node,
                                    uids,
                                    is_root,
                                    we_paused,
                                    st.status_subresource,
                                );
                                if dropped > 0 {
                                    tracing::warn!(object = %o, dropped, "ownerReferences to objects that are not moved are dropped in the target");
                                }
                                let api = self.member_api(self.target, graph, o);
                                (self.create(&api, o, body).await?, true, dropped)
                            }
                        };
                        let copied = if self.opts.copy_status && st.status_subresource && !global {
                            self.copy_status(ar, o, node, &obj).await?
                        } else {
                            false
                        };
                        Ok::<_, PivotError>((o.uid.clone(), obj, created, copied, dropped))
                    }
                }))
                .await?;
            let (mut created, mut statuses) = (0, 0);
            for (src, obj, c, s, d) in results {
                created += usize::from(c);
                summary.dropped_owner_refs += d;
                statuses += usize::from(s);
                if let Some(uid) = obj.metadata.uid.clone() {
                    uids.insert(src.clone(), uid);
                }
                existing.insert(src, obj);
            }
            summary.created += created;
            summary.statuses += statuses;
            (self.progress)(&Event::Created {
                group: group.index,
                of: plan.groups.len(),
                objects: group.objects.len(),
                created,
                statuses,
            });
        }
        let existing = self.verify(graph, plan).await?;
        // Cutover: from here on, only forward.
        let cluster_ar = graph.resource(&root.obj).expect("listed");
        let target_root = &existing[&root.obj.uid];
        let name = target_root.metadata.name.clone().unwrap_or_default();
        let api = self.api(self.target, cluster_ar);
        let patch = json!({"metadata": {"annotations": {STATE: "cutover"}}});
        self.merge(&api, &name, &patch, || {
            format!("marking the target {} cutover", root.obj)
        })
        .await?;
        (self.progress)(&Event::Cutover);
        Ok(existing)
    }

    /// A run resumed after cutover: checks that everything is in the target and copies any
    /// status an interrupted run did not, before [`Self::forward`] deletes anything.
    async fn resume(
        &self,
        graph: &Graph,
        plan: &Plan,
        served: &HashMap<(String, String), Served>,
        existing: &Existing,
        summary: &mut Summary,
    ) -> Result<(), PivotError> {
        if graph.members.iter().any(|u| !existing.contains_key(u)) {
            return Err(PivotError::Verify(
                "the target Cluster is marked cutover but objects are missing from the target; not deleting anything from the source".into(),
            ));
        }
        if self.opts.copy_status {
            for o in plan.groups.iter().flat_map(|g| &g.objects) {
                if served[&(o.api_version.clone(), o.kind.clone())].status_subresource
                    && !graph.global.contains(&o.uid)
                {
                    let ar = graph.resource(o).expect("listed");
                    summary.statuses += usize::from(
                        self.copy_status(ar, o, &graph.nodes[&o.uid], &existing[&o.uid])
                            .await?,
                    );
                }
            }
        }
        Ok(())
    }

    /// After cutover: delete from the source (the Cluster last), then unpause and complete the
    /// target.
    async fn forward(
        &self,
        graph: &Graph,
        plan: &Plan,
        existing: Existing,
        summary: &mut Summary,
    ) -> Result<(), PivotError> {
        let root = self.root(graph);
        // A ClusterClass that stays in the source (other clusters use it) is unpaused there
        // before anything is deleted, so that no crash can leave it paused.
        self.unpause_class(graph, true).await?;
        for group in plan.groups.iter().rev() {
            let objects: Vec<&ObjRef> = group
                .objects
                .iter()
                .filter(|o| o.uid != root.obj.uid && !graph.keep.contains_key(&o.uid))
                .collect();
            let deleted: Vec<bool> = self
                .settle(
                    objects
                        .iter()
                        .map(|o| self.delete(self.source, graph, &graph.nodes[&o.uid])),
                )
                .await?;
            let mut n = deleted.iter().filter(|d| **d).count();
            if group.index == 0 {
                // The Cluster goes last, once nothing else of it is left in the source.
                n += usize::from(self.delete(self.source, graph, root).await?);
            }
            summary.deleted += n;
            (self.progress)(&Event::Deleted {
                group: group.index,
                objects: n,
            });
        }
        if self.opts.direction == Direction::Unpivot {
            // The source is empty: the source UIDs have served their purpose. The target's
            // objects are discovered again, since a resumed run's graph lacks what an earlier
            // run already deleted from the source.
            self.unmark_discovered().await?;
        }
        let target_root = &existing[&root.obj.uid];
        self.complete(graph.resource(&root.obj).expect("listed"), target_root)
            .await
    }

    /// Unpauses the target Cluster if fledge paused it, and marks it complete.
    async fn complete(
        &self,
        ar: &ApiResource,
        target_root: &DynamicObject,
    ) -> Result<(), PivotError> {
        let ours = target_root
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PAUSED_BY));
        // A pivot marks its end on the target Cluster; an unpivot leaves the Cluster as it was
        // before it was ever pivoted (its end is marked on the FledgeCluster).
        let state = match self.opts.direction {
            Direction::Pivot => json!("complete"),
            Direction::Unpivot => Value::Null,
        };
        let mut patch = json!({"metadata": {"annotations": {STATE: state, PAUSED_BY: null}}});
        if let Some(origin) = ours {
            patch["spec"] = json!({"paused": unpaused(origin)});
        }
        if self.opts.direction == Direction::Unpivot {
            patch["metadata"]["annotations"][SOURCE_UID] = Value::Null;
        }
        let name = target_root.metadata.name.clone().unwrap_or_default();
        let api = self.api(self.target, ar);
        if self.opts.delete_target_cluster {
            self.delete_target_cluster(&api, target_root).await?;
        }
        // An unpivot marks the FledgeCluster before it unmarks the Cluster: once the Cluster is
        // unmarked, a second run finds nothing left to do, and must find the mark in place.
        if self.opts.direction == Direction::Unpivot {
            self.mark(Mark::Complete).await?;
        }
        self.merge(&api, &name, &patch, || {
            format!("unpausing the target Cluster {name}")
        })
        .await?;
        if self.opts.direction == Direction::Pivot {
            self.mark(Mark::Complete).await?;
        }
        (self.progress)(&Event::Completed);
        Ok(())
    }

    /// The source Cluster is gone: complete the target if it is past cutover, report that the
    /// pivot already completed, or fail because there is no such cluster anywhere.
    async fn finish_without_source(&self, summary: &mut Summary) -> Result<(), PivotError> {
        let no_cluster = || {
            PivotError::Discover(DiscoverError::NoCluster {
                namespace: self.namespace.into(),
                name: self.cluster.into(),
            })
        };
        let types = super::discover::move_types(self.target).await?;
        let Some(ar) = types
            .iter()
            .find(|t| t.group == "cluster.x-k8s.io" && t.kind == "Cluster")
        else {
            return Err(no_cluster());
        };
        let api = self.api(self.target, ar);
        let Some(c) = self
            .retry(
                || format!("reading Cluster {} in the target", self.cluster),
                || async { api.get_opt(self.cluster).await },
            )
            .await?
        else {
            return Err(no_cluster());
        };
        let state = c
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(STATE))
            .cloned();
        match (self.opts.direction, state.as_deref()) {
            (Direction::Pivot, Some("complete")) => {
                summary.already_complete = true;
                Ok(())
            }
            (Direction::Pivot, Some(_)) => self
                .complete(ar, &c)
                .await
                .map_err(|e| PivotError::Incomplete(Box::new(e))),
            (Direction::Pivot, None) => Err(no_cluster()),
            // The cluster is in the target and was never pivoted from here, or an unpivot
            // finished (and removed its marks): nothing to move. An unpivot for deletion still
            // deletes it.
            (Direction::Unpivot, None) => {
                summary.already_complete = true;
                if self.opts.delete_target_cluster {
                    self.delete_target_cluster(&api, &c).await?;
                }
                Ok(())
            }
            (Direction::Unpivot, Some(_)) => {
                let finish = async {
                    self.unmark_discovered().await?;
                    self.complete(ar, &c).await
                };
                finish
                    .await
                    .map_err(|e| PivotError::Incomplete(Box::new(e)))
            }
        }
    }
}

/// The `spec.paused` value that undoes fledge's pause (`null` removes the field).
fn unpaused(origin: &str) -> Value {
    if origin == "was-false" {
        Value::Bool(false)
    } else {
        Value::Null
    }
}

/// Up to a quarter of `d`, from the clock's low bits (no randomness source needed).
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let quarter = (d.as_millis() / 4).max(1) as u64;
    Duration::from_millis(u64::from(nanos) % quarter)
}
