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
//!
//! Here: [`Pivot`] and what its parts share. The parts: `options` (how to move), `report`
//! (events and the summary), `error` (why a move fails), `requests` (retried requests, bounded
//! parallelism), `run` (the state machine), `source`, `target` and `unpivot` (the writes on each
//! side), and [`lock`].

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
use tracing::Instrument;

use fledge_generator::spec::pivot_state;

use super::ObjRef;
use super::discover::{DiscoverError, discover};
use super::graph::{Graph, Node};
use super::plan::{Plan, plan};

mod error;
pub mod lock;
mod options;
mod report;
mod requests;
mod run;
mod source;
mod target;
mod unpivot;

pub use error::{PivotError, transient};
pub use lock::{DEFAULT_LOCK_HOLD, LOCK};
pub use options::{DEFAULT_PARALLELISM, Direction, Options, Retry};
pub use report::{Event, Summary};

use crate::state::journal::chain;
use error::is_status;
use run::Attempt;

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

/// The annotation a provider puts on an object while it must not be moved (clusterctl's
/// `clusterctl.cluster.x-k8s.io/block-move`); the pivot waits, after pausing, until it is gone.
pub const BLOCK_MOVE: &str = "clusterctl.cluster.x-k8s.io/block-move";

/// A state the move records on the management plane's FledgeCluster.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mark {
    InProgress,
    Complete,
    RolledBack,
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

/// What the target holds of this pivot, by source UID.
type Existing = HashMap<String, DynamicObject>;

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

    /// The dry run: discovers the cluster in `source` and plans its move `direction`. Reads
    /// only the source and changes nothing: it needs no target, takes no lock, reports nothing.
    pub async fn plan(
        source: &kube::Client,
        namespace: &str,
        cluster: &str,
        direction: Direction,
    ) -> Result<Plan, PivotError> {
        let graph = discover(source, namespace, cluster)
            .instrument(span(direction, namespace, cluster))
            .await?;
        Ok(plan(&graph, namespace, cluster))
    }

    /// Runs the move to completion (or to a clear failure), holding the move lock from its
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
        let r = async {
            let (r, ()) = tokio::join!(work, self.keep_lock(&stop));
            self.release().await;
            r
        }
        .instrument(self.span())
        .await;
        let mut summary = r?;
        summary.wall = started.elapsed();
        Ok(summary)
    }

    /// The span of this move; each stage and group has its own inside it.
    fn span(&self) -> tracing::Span {
        span(self.opts.direction, self.namespace, self.cluster)
    }
}

/// The span of a move (or its plan).
fn span(direction: Direction, namespace: &str, cluster: &str) -> tracing::Span {
    tracing::info_span!("pivot", direction = direction.noun(), namespace, cluster)
}

/// The `spec.paused` value that undoes fledge's pause (`null` removes the field).
fn unpaused(origin: &str) -> Value {
    if origin == "was-false" {
        Value::Bool(false)
    } else {
        Value::Null
    }
}
