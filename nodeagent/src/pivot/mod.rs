//! The pivot: moving one cluster's Cluster API objects from the management cluster into the
//! workload cluster, and back. One API: [`Pivot::plan`] (the dry run: what would move, pure data
//! to print) and [`Pivot::run`] (the move, crash-safe).
//!
//! - [`discover`] (with [`crds`] and [`identities`]): the requests that list one cluster's
//!   objects;
//! - [`graph`]: what was listed as a graph, and which of it belongs to the cluster (pure);
//! - [`plan`]: the groups in creation order (pure);
//! - [`apply`]: the engine behind [`Pivot`], both ways ([`Direction`]), whose providers check
//!   is [`providers`].

pub mod apply;
pub mod crds;
pub mod discover;
pub mod graph;
pub mod identities;
pub mod plan;
pub mod providers;

use serde::Serialize;

pub use apply::{Direction, Pivot};

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
