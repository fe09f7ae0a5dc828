//! The pivot: moving one cluster's Cluster API objects from the management cluster into the
//! workload cluster. Discovery (scoped to one cluster) gives a graph, the plan is pure data that
//! `--dry-run` prints, and [`apply::Pivot`] carries it out, crash-safe.
//!
//! - [`discover`] (with [`crds`] and [`identities`]): the graph of one cluster's objects;
//! - [`plan`]: the groups in creation order;
//! - [`apply`]: the move, and the unpivot (the same engine in reverse), whose providers check
//!   is [`providers`];
//! - [`phase`]: the pivot journaled as the `Pivoted` phase on its own. The agent's runner does
//!   not use it (it runs [`crate::phases::pivoted`] and journals that itself); the pivot
//!   integration test does.

pub mod apply;
pub mod crds;
pub mod discover;
pub mod identities;
pub mod phase;
pub mod plan;
pub mod providers;

use serde::Serialize;

/// An object in the move graph.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjRef {
    /// apiVersion.
    pub api_version: String,
    /// kind.
    pub kind: String,
    /// name.
    pub name: String,
    /// uid in the source cluster.
    pub uid: String,
}

impl std::fmt::Display for ObjRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}
