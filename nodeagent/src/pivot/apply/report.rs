//! What a move reports: progress events as it goes, and a summary at the end.

use super::*;

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
