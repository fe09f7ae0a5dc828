//! `<stateDir>/run.lock`: who may act on the cluster right now. The service's phase runner
//! holds it for each attempt; `fledge-agent unpivot` run by hand holds it from before its
//! journal entry to after its outcome, so the runner never reconciles objects while they are
//! being moved away, and the unpivot never starts in the middle of an attempt.
//! An exclusive `flock(2)`: the kernel releases it when its holder dies.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

/// The lock file in a state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(super::layout::RUN_LOCK)
}

/// A held run lock; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Takes the run lock if no one holds it (`None` when someone does).
pub fn try_acquire(state_dir: &Path) -> std::io::Result<Option<RunLock>> {
    let file = crate::state::fsutil::open_lock_file(&path(state_dir))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(RunLock { _file: file })),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Takes the run lock, waiting for its holder; `waiting` is called once, when it has to wait.
pub async fn acquire(state_dir: &Path, waiting: impl FnOnce(&Path)) -> std::io::Result<RunLock> {
    if let Some(lock) = try_acquire(state_dir)? {
        return Ok(lock);
    }
    waiting(&path(state_dir));
    let file = crate::state::fsutil::open_lock_file(&path(state_dir))?;
    tokio::task::spawn_blocking(move || file.lock().map(|()| RunLock { _file: file }))
        .await
        .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let held = try_acquire(dir.path()).unwrap().expect("free");
        // flock locks belong to the open file description: a second open is a second holder.
        assert!(try_acquire(dir.path()).unwrap().is_none());
        drop(held);
        assert!(try_acquire(dir.path()).unwrap().is_some());
    }
}
