//! Leader election among the agents on a cluster's control-plane nodes: every control-plane
//! node runs fledge-agent, and exactly one acts. The leader holds the `coordination.k8s.io/v1`
//! Lease `kube-system/fledge-agent` in the local cluster and renews it; the others stand by
//! (they serve `/healthz` and `/metrics` and say that they follow) and take the Lease over when
//! its record has not changed for its duration.
//!
//! As client-go's leader election, expiry is judged by when *this* agent saw the record change
//! (a monotonic clock), not by the timestamps in it: the nodes' clocks need not agree. Every
//! write carries the resourceVersion it read, so of two agents that take an expired Lease at
//! once, one wins and the other stays a follower.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::PostParams;

/// Namespace of the Lease.
pub const LEASE_NAMESPACE: &str = "kube-system";
/// Name of the Lease.
pub const LEASE_NAME: &str = "fledge-agent";
/// How long a leader's renewal counts (client-go's default).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// A leader that could not renew for this long stops leading (client-go's default).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the leader renews, and a follower looks.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// What an agent does with the Lease it read. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nobody holds it, or its holder stopped renewing: take it.
    Take,
    /// This agent holds it: renew it.
    Renew,
    /// Another agent holds it and renews it.
    Follow(String),
}

/// Decides from the Lease's holder and how long its record has been unchanged as this agent
/// observed it.
pub fn decide(
    me: &str,
    holder: Option<&str>,
    unchanged_for: Duration,
    duration: Duration,
) -> Action {
    match holder {
        None | Some("") => Action::Take,
        Some(h) if h == me => Action::Renew,
        Some(_) if unchanged_for >= duration => Action::Take,
        Some(h) => Action::Follow(h.to_string()),
    }
}

/// A Lease's record as far as expiry goes: its holder and renew time.
type Record = (Option<String>, Option<String>);

/// One agent's side of the election.
pub struct Elector {
    api: Api<Lease>,
    identity: String,
    duration: Duration,
    /// The record last seen (holder, renew time) and when it was first seen so.
    seen: Option<(Record, Instant)>,
}

impl Elector {
    /// An elector for `identity` (unique per node: its host name) on the local cluster.
    pub fn new(local: kube::Client, identity: String, duration: Duration) -> Elector {
        Elector {
            api: Api::namespaced(local, LEASE_NAMESPACE),
            identity,
            duration,
            seen: None,
        }
    }

    /// One round: reads the Lease, then takes or renews it when [`decide`] says so. Ok(None)
    /// when this agent leads after the round, Ok(Some(holder)) when another one does.
    pub async fn round(&mut self) -> Result<Option<String>, kube::Error> {
        let now = Instant::now();
        let current = self.api.get_opt(LEASE_NAME).await?;
        let spec = current
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        let record: Record = (
            spec.holder_identity.clone(),
            spec.renew_time.as_ref().map(|t| t.0.to_string()),
        );
        let since = match &self.seen {
            Some((r, t)) if *r == record => *t,
            _ => {
                self.seen = Some((record.clone(), now));
                now
            }
        };
        let action = decide(
            &self.identity,
            spec.holder_identity.as_deref(),
            now.saturating_duration_since(since),
            self.duration,
        );
        let stamp = Some(MicroTime(jiff::Timestamp::now()));
        let mut next = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            renew_time: stamp.clone(),
            ..spec.clone()
        };
        match action {
            Action::Follow(holder) => return Ok(Some(holder)),
            Action::Renew => {}
            Action::Take => {
                next.acquire_time = stamp;
                next.lease_transitions =
                    Some(spec.lease_transitions.unwrap_or(0) + i32::from(current.is_some()));
            }
        }
        let written = match current {
            None => {
                let mut lease = Lease::default();
                lease.metadata.name = Some(LEASE_NAME.into());
                lease.metadata.namespace = Some(LEASE_NAMESPACE.into());
                lease.spec = Some(next);
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // Written with the resourceVersion read: a concurrent writer makes this a 409.
                lease.spec = Some(next);
                self.api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Some(
                spec.holder_identity
                    .unwrap_or_else(|| "another agent".into()),
            )),
            Err(e) => Err(e),
        }
    }
}

/// This node's identity: its host name (`/proc/sys/kernel/hostname`), else `HOSTNAME`.
pub fn node_identity() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-node".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_takes_a_free_or_abandoned_lease_renews_its_own_and_follows_a_live_one() {
        let d = LEASE_DURATION;
        let s = Duration::from_secs;
        let table = [
            (None, s(0), Action::Take),
            (Some(""), s(0), Action::Take),
            (Some("cp-a"), s(0), Action::Renew),
            (Some("cp-a"), s(60), Action::Renew),
            (Some("cp-b"), s(14), Action::Follow("cp-b".into())),
            (Some("cp-b"), s(15), Action::Take),
        ];
        for (holder, unchanged, want) in table {
            assert_eq!(
                decide("cp-a", holder, unchanged, d),
                want,
                "{holder:?} {unchanged:?}"
            );
        }
    }
}
