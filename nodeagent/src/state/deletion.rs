//! The deletion request (`deletion-requested` in the state directory): the order to delete the
//! cluster that the spec sync records when the agent's FledgeCluster alone is deleted, how far
//! its unpivot went, and its cancellation when it no longer holds. The spec sync records,
//! cancels and settles it; the runner carries it out (`Unpivoted`, then `Released`), recording
//! its progress; a new leader takes it from the cluster's copy ([`super::clusterstate`]).
//!
//! Changes are made under a lock of their own (`deletion-requested.lock`): the spec sync and the
//! runner both change the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::journal::{Journal, JournalError, Phase};
use super::layout;
use super::{fsutil, runlock};

/// The file that records a deletion request, in the state directory.
pub fn request_path(state_dir: &Path) -> PathBuf {
    state_dir.join(layout::DELETION_REQUEST)
}

/// The lock that serializes changes of the request file (the spec sync and the phase runner
/// both change it).
fn request_lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join(layout::DELETION_REQUEST_LOCK)
}

/// A deletion request, as recorded in [`request_path`] (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// UID of the FledgeCluster being deleted.
    pub uid: String,
    /// Its `deletionTimestamp`.
    pub deletion_timestamp: String,
    /// How far the unpivot for it went (absent: not started, or recorded by an older agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpivot: Option<Progress>,
    /// Set when the deletion is not (or no longer) an order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<Cancelled>,
}

impl Request {
    /// True while the request is an order the runner carries out (or, cancelled, has not yet
    /// been settled).
    pub fn in_force(&self) -> bool {
        self.cancelled.as_ref().is_none_or(|c| !c.settled)
    }
}

/// How far the unpivot of a deletion went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Progress {
    /// It started and its outcome is not known, or it failed after cutover: it is run again,
    /// which completes it or (before cutover) rolls it back. Not cancellable meanwhile.
    Running,
    /// It failed before any write, or was rolled back: the local cluster is whole.
    RolledBack,
    /// It completed: the cluster's objects are on the management plane.
    Done,
}

/// Why a deletion is not (or no longer) an order to delete the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cancel {
    /// The FledgeCluster is deleted because its namespace is being deleted.
    NamespaceTerminating,
    /// The FledgeCluster is gone, without the agent releasing it (its finalizer was removed by
    /// hand, or its namespace was deleted).
    Gone,
    /// Another FledgeCluster of the same name (another UID) stands in its place.
    Replaced,
}

impl Cancel {
    /// What it means, for the log and the status.
    pub fn explain(self, namespace: &str) -> String {
        match self {
            Cancel::NamespaceTerminating => format!(
                "namespace {namespace} is being deleted on the management plane: that is not an order to delete the cluster (and nothing can be created in a terminating namespace); the agent releases its finalizer and keeps the cluster running from its cached spec"
            ),
            Cancel::Gone => "the FledgeCluster is gone from the management plane without the agent releasing it: the deletion is cancelled and the agent keeps the cluster running from its cached spec".into(),
            Cancel::Replaced => "another FledgeCluster of the same name replaced the one being deleted: the deletion is cancelled and the agent keeps the cluster running".into(),
        }
    }
}

/// A cancelled deletion request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cancelled {
    /// Why.
    pub reason: Cancel,
    /// When (RFC 3339).
    pub time: String,
    /// True once the agent no longer acts on the request (the journal's unfinished `Unpivoted`
    /// is forgotten); until then the runner waits.
    pub settled: bool,
}

/// The recorded request; `Ok(None)` when there is none.
pub fn load_request(state_dir: &Path) -> std::io::Result<Option<Request>> {
    match std::fs::read(request_path(state_dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Changes the recorded request under its lock; `change` returns whether to write it back.
fn update_request<T>(
    state_dir: &Path,
    change: impl FnOnce(&mut Option<Request>) -> (bool, T),
) -> std::io::Result<T> {
    let lock = fsutil::open_lock_file(&request_lock_path(state_dir))?;
    lock.lock()?;
    let mut request = load_request(state_dir)?;
    let (write, out) = change(&mut request);
    if write && let Some(r) = &request {
        let body = serde_json::to_vec_pretty(r).unwrap_or_default();
        fsutil::write_atomic(&request_path(state_dir), &body, 0o600)?;
    }
    Ok(out)
}

/// Writes `bytes` (a request as another node's agent recorded it, see
/// [`crate::state::clusterstate`]) as the recorded request, under its lock. Bytes that are not a
/// request are not written.
pub fn adopt_request(state_dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let request: Request = serde_json::from_slice(bytes).map_err(std::io::Error::other)?;
    update_request(state_dir, |r| {
        *r = Some(request);
        (true, ())
    })
}

/// Whether the runner acts on a deletion: an order is recorded, or a cancelled one is not yet
/// settled (an unreadable record counts as an order, as its existence always did).
pub fn deletion_requested(state_dir: &Path) -> bool {
    match load_request(state_dir) {
        Ok(r) => r.is_some_and(|r| r.in_force()),
        Err(_) => request_path(state_dir).exists(),
    }
}

/// Records the order to delete the cluster: the FledgeCluster `uid` is being deleted (since
/// `when`). Durable; false when a request for `uid` is recorded already, or another one is in
/// force (it is cancelled and settled first). A settled cancellation of another deletion is
/// replaced.
pub fn request_deletion(state_dir: &Path, uid: &str, when: &str) -> std::io::Result<bool> {
    update_request(state_dir, |r| {
        if r.as_ref().is_some_and(|r| r.uid == uid || r.in_force()) {
            return (false, false);
        }
        *r = Some(Request {
            uid: uid.into(),
            deletion_timestamp: when.into(),
            unpivot: None,
            cancelled: None,
        });
        (true, true)
    })
}

/// How far the unpivot of `request` went: its record, else the journal (a request recorded by
/// an older agent: an `Unpivoted` entry not succeeded may have written anything, so it is run
/// again before anything is cancelled).
pub fn progress(request: &Request, journal: &Journal) -> Option<Progress> {
    if journal.done(Phase::Unpivoted) {
        return Some(Progress::Done);
    }
    request.unpivot.or_else(|| {
        journal
            .started(Phase::Unpivoted)
            .then_some(Progress::Running)
    })
}

/// Marks the recorded request cancelled (`why`), unless its unpivot is under way or done, or
/// it is cancelled already; when there is no request for `uid` (a deletion that was never an
/// order), records one already cancelled and settled, for the status. Returns whether it
/// changed anything.
pub fn cancel(
    state_dir: &Path,
    uid: &str,
    deletion_timestamp: &str,
    why: Cancel,
) -> std::io::Result<bool> {
    let journal = Journal::load(state_dir).unwrap_or_default();
    update_request(state_dir, |r| match r {
        Some(req) if req.cancelled.is_none() => {
            if matches!(
                progress(req, &journal),
                Some(Progress::Running | Progress::Done)
            ) {
                return (false, false);
            }
            req.cancelled = Some(Cancelled {
                reason: why,
                time: crate::time::now_rfc3339(),
                settled: false,
            });
            (true, true)
        }
        // Cancelled already (or a cancellation of another request is still being settled).
        Some(req) if req.uid == uid || req.in_force() => (false, false),
        _ => {
            *r = Some(Request {
                uid: uid.into(),
                deletion_timestamp: deletion_timestamp.into(),
                unpivot: None,
                cancelled: Some(Cancelled {
                    reason: why,
                    time: crate::time::now_rfc3339(),
                    settled: true,
                }),
            });
            (true, true)
        }
    })
}

/// A failed read or write of the request file, reported as the agent's durable state.
pub fn request_error(state_dir: &Path, source: std::io::Error) -> JournalError {
    JournalError::Io {
        path: request_path(state_dir),
        op: "read or write",
        source,
    }
}

/// Settles a cancelled request: takes the run lock (no attempt is in flight, none starts), has
/// the journal forget the unfinished `Unpivoted` (so that the runner is back in `Steady`, not
/// "unpivoted by hand") and marks the request settled. `Ok(None)` when there is nothing to
/// settle or the runner holds the lock (then again later); else the reason settled.
pub fn settle(state_dir: &Path) -> Result<Option<Cancel>, JournalError> {
    let io = |source| request_error(state_dir, source);
    let pending = |r: &Request| {
        r.cancelled
            .as_ref()
            .filter(|c| !c.settled)
            .map(|c| c.reason)
    };
    if load_request(state_dir)
        .map_err(io)?
        .as_ref()
        .and_then(pending)
        .is_none()
    {
        return Ok(None);
    }
    let Some(_run) = runlock::try_acquire(state_dir).map_err(|source| JournalError::Io {
        path: runlock::path(state_dir),
        op: "lock",
        source,
    })?
    else {
        return Ok(None);
    };
    let mut journal = Journal::load(state_dir)?;
    if !journal.done(Phase::Unpivoted) {
        journal.forget(state_dir, Phase::Unpivoted)?;
    }
    update_request(state_dir, |r| match r.as_mut() {
        Some(req) => match req.cancelled.as_mut().filter(|c| !c.settled) {
            Some(c) => {
                c.settled = true;
                (true, Some(c.reason))
            }
            None => (false, None),
        },
        None => (false, None),
    })
    .map_err(io)
}

/// Records how far the unpivot went; false (nothing written) when the request is cancelled
/// (or gone): the unpivot must then not start.
pub fn set_progress(state_dir: &Path, to: Progress) -> std::io::Result<bool> {
    update_request(state_dir, |r| match r.as_mut() {
        Some(req) if req.cancelled.is_none() => {
            req.unpivot = Some(to);
            (true, true)
        }
        _ => (false, false),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::journal::Outcome;
    use Cancel::*;

    const UID: &str = "uid-1";

    /// Records `entries` (for generation 1) in the journal of `dir`.
    pub(crate) fn journal(dir: &Path, entries: &[(Phase, Outcome)]) -> Journal {
        let mut j = Journal::load(dir).unwrap();
        for (p, o) in entries {
            j.record(dir, *p, *o, Some(1), None).unwrap();
        }
        j
    }

    /// A journal's entries once the cluster runs itself.
    pub(crate) const STEADY: [(Phase, Outcome); 6] = [
        (Phase::SpecFetched, Outcome::Succeeded),
        (Phase::ProvidersInstalled, Outcome::Succeeded),
        (Phase::Pivoted, Outcome::Succeeded),
        (Phase::ScaledOut, Outcome::Succeeded),
        (Phase::AddonsReady, Outcome::Succeeded),
        (Phase::Steady, Outcome::Succeeded),
    ];

    #[test]
    fn an_order_is_not_cancelled_while_its_unpivot_is_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        journal(state, &STEADY);
        assert!(request_deletion(state, UID, "t").unwrap());
        assert!(set_progress(state, Progress::Running).unwrap());
        assert!(!cancel(state, UID, "t", NamespaceTerminating).unwrap());
        assert_eq!(settle(state).unwrap(), None);
        assert!(deletion_requested(state));
        // Completed: not cancelled either (`Released` goes on).
        assert!(set_progress(state, Progress::Done).unwrap());
        assert!(!cancel(state, UID, "t", Cancel::Gone).unwrap());
        assert!(deletion_requested(state));
    }

    #[test]
    fn a_request_recorded_by_an_older_agent_is_read_and_its_unpivot_run_again_first() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        std::fs::write(
            request_path(state),
            br#"{"uid": "uid-1", "deletionTimestamp": "2026-12-03T00:00:00Z"}"#,
        )
        .unwrap();
        let r = load_request(state).unwrap().unwrap();
        assert!(r.in_force() && deletion_requested(state));
        let j = journal(state, &STEADY);
        assert_eq!(progress(&r, &j), None);
        // It tried the unpivot: what that wrote is not known, so it runs again first.
        let j = journal(state, &[(Phase::Unpivoted, Outcome::Failed)]);
        assert_eq!(progress(&r, &j), Some(Progress::Running));
        assert!(!cancel(state, UID, "", NamespaceTerminating).unwrap());
    }

    #[test]
    fn a_declined_deletion_is_recorded_for_the_status_and_is_no_order() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        assert!(cancel(state, UID, "t", NamespaceTerminating).unwrap());
        assert!(!cancel(state, UID, "t", NamespaceTerminating).unwrap());
        assert!(!deletion_requested(state));
        assert_eq!(settle(state).unwrap(), None);
        assert!(!request_deletion(state, UID, "t").unwrap());
        assert!(!deletion_requested(state));
    }

    #[test]
    fn settling_waits_until_no_runner_attempt_holds_the_run_lock() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        journal(state, &STEADY);
        assert!(request_deletion(state, UID, "t").unwrap());
        assert!(cancel(state, UID, "t", Replaced).unwrap());
        let held = crate::state::runlock::try_acquire(state).unwrap().unwrap();
        assert_eq!(settle(state).unwrap(), None);
        assert!(deletion_requested(state));
        drop(held);
        assert_eq!(settle(state).unwrap(), Some(Replaced));
        assert!(!deletion_requested(state));
    }

    #[test]
    fn a_deletion_request_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!deletion_requested(dir.path()));
        assert!(request_deletion(dir.path(), "u", "2026-12-03T00:00:00Z").unwrap());
        assert!(!request_deletion(dir.path(), "u", "later").unwrap());
        assert!(deletion_requested(dir.path()));
        let text = std::fs::read_to_string(request_path(dir.path())).unwrap();
        assert!(text.contains("2026-12-03T00:00:00Z"), "{text}");
    }
}
