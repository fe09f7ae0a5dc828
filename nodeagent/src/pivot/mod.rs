//! The pivot: moving one cluster's Cluster API objects from the management cluster into the
//! workload cluster. Discovery (scoped to one cluster) gives a graph, the plan is pure data that
//! `--dry-run` prints, and [`apply::Pivot`] carries it out, crash-safe.

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
