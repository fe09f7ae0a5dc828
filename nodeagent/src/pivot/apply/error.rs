//! Why a move fails, and which request errors retrying can fix.

use super::*;

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
    #[error("{what}")]
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
    #[error("cannot read clusterctl's provider inventory in the {side}; nothing was changed")]
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

pub(super) fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_request_names_what_failed_and_says_why_once() {
        let status: kube::core::Status = serde_json::from_value(json!({
            "status": "Failure", "code": 409, "reason": "AlreadyExists",
            "message": "clusters \"c1\" already exists"
        }))
        .unwrap();
        let e = PivotError::Incomplete(Box::new(PivotError::Request {
            what: "creating Cluster/c1 in the target".into(),
            source: kube::Error::Api(Box::new(status)),
        }));
        assert_eq!(
            crate::state::journal::chain(&e),
            "the pivot failed after cutover; run it again to complete it (from cutover on it only moves forward): creating Cluster/c1 in the target: HTTP 409 AlreadyExists: clusters \"c1\" already exists"
        );
    }
}
