//! The agent's phases: the vocabulary of a FledgeCluster's `status.phase`, which the agent
//! writes and journals and `fledge apply` reads.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The agent's phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    /// The service is installed.
    Installed,
    /// The spec was fetched and cached.
    SpecFetched,
    /// The profile's core layers (network, cloud provider) are applied and every node is Ready.
    CoreLayers,
    /// The Cluster API providers run in the local cluster.
    ProvidersInstalled,
    /// The cluster's CAPI objects were moved into the local cluster.
    Pivoted,
    /// The remaining control-plane and worker machines were requested.
    ScaledOut,
    /// The profile's add-ons are installed.
    AddonsReady,
    /// Reconciling from the local spec.
    Steady,
    /// The cluster's CAPI objects were moved back to a management plane (the FledgeCluster's
    /// deletion, or `fledge-agent unpivot`); the agent no longer manages the cluster.
    Unpivoted,
    /// The management plane deleted the cluster and the agent released its finalizer.
    Released,
}

impl Phase {
    /// All phases in order.
    pub const ALL: [Phase; 10] = [
        Phase::Installed,
        Phase::SpecFetched,
        Phase::CoreLayers,
        Phase::ProvidersInstalled,
        Phase::Pivoted,
        Phase::ScaledOut,
        Phase::AddonsReady,
        Phase::Steady,
        Phase::Unpivoted,
        Phase::Released,
    ];

    /// The phase a status names, if it names one.
    pub fn parse(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.to_string() == name)
    }

    /// Whether the cluster's Cluster API objects live in the cluster itself in this phase: from
    /// `Pivoted` up to `Steady` (an unpivot brings them back).
    pub fn objects_in_the_cluster(self) -> bool {
        (Phase::Pivoted..=Phase::Steady).contains(&self)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_parses_from_its_name_and_only_pivoted_to_steady_hold_the_objects() {
        for p in Phase::ALL {
            assert_eq!(Phase::parse(&p.to_string()), Some(p));
        }
        assert_eq!(Phase::parse("steady"), None);
        let holding: Vec<Phase> = Phase::ALL
            .into_iter()
            .filter(|p| p.objects_in_the_cluster())
            .collect();
        assert_eq!(
            holding,
            [
                Phase::Pivoted,
                Phase::ScaledOut,
                Phase::AddonsReady,
                Phase::Steady
            ]
        );
    }
}
