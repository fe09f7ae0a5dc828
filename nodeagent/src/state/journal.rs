//! The agent's durable journal (`/var/lib/fledge/journal.json`): each phase with its outcome and
//! time. A restart resumes from the first phase that has not succeeded; a corrupt journal is set
//! aside (kept, never overwritten) and the phases run again from the first.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The agent's phases: the vocabulary of the FledgeCluster's `status.phase`, one enum for both
/// crates (`fledge apply` reads it too).
pub use fledge_generator::spec::Phase;

/// How a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Started, not finished (a crash leaves this).
    Started,
    /// Finished.
    Succeeded,
    /// Failed; it is retried.
    Failed,
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The phase.
    pub phase: Phase,
    /// Its latest outcome.
    pub outcome: Outcome,
    /// When (RFC 3339).
    pub time: String,
    /// Details, for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The spec generation the phase ran for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// The lock file next to the journal (`journal.lock`, empty, mode 0600).
pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join(super::layout::JOURNAL_LOCK)
}

/// Takes the exclusive lock that serializes the read-merge-write of the journal, held until the
/// returned file is dropped. Each call opens the file anew, and a `flock(2)` lock belongs to the
/// open file description, so it keeps apart the agent's own tasks (the spec sync records
/// SpecFetched while the phase runner records the later phases) as well as processes (the
/// service, and `fledge-agent unpivot` run by hand).
fn lock_file(state_dir: &Path) -> Result<std::fs::File, JournalError> {
    let path = lock_path(state_dir);
    let file = crate::state::fsutil::open_lock_file(&path).map_err(|source| JournalError::Io {
        path: path.clone(),
        op: "open",
        source,
    })?;
    file.lock().map_err(|source| JournalError::Io {
        path,
        op: "lock",
        source,
    })?;
    Ok(file)
}

/// Errors reading or writing the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A corrupt journal could not be set aside (it is still in place, unchanged).
    #[error("{path}: journal is corrupt and cannot be set aside")]
    SetAside {
        /// The journal file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("{path}: cannot {op}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The journal, one entry per phase that has started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Journal {
    /// Format version.
    pub version: u32,
    /// Entries in phase order.
    pub phases: Vec<Entry>,
}

/// The journal file in a state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(super::layout::JOURNAL)
}

/// A corrupt journal that was set aside: its bytes kept under a new name next to it, never
/// overwritten or deleted, for whoever investigates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// The journal file (`journal.json`), now free.
    pub journal: PathBuf,
    /// Where its bytes are kept (`journal.json.corrupt-<unix seconds>`, with `.1`, `.2`, … when
    /// that name is taken).
    pub kept: PathBuf,
    /// Why it is not a journal (the parse error).
    pub problem: String,
}

impl fmt::Display for SetAside {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: journal was corrupt ({}); kept as {}, the journal starts empty",
            self.journal.display(),
            self.problem,
            self.kept.display()
        )
    }
}

/// What the journal file holds.
enum OnDisk {
    Missing,
    Valid(Journal),
    Corrupt(String),
}

fn read(state_dir: &Path) -> Result<OnDisk, JournalError> {
    let p = path(state_dir);
    match std::fs::read(&p) {
        Ok(bytes) => Ok(match serde_json::from_slice(&bytes) {
            Ok(j) => OnDisk::Valid(j),
            Err(e) => OnDisk::Corrupt(e.to_string()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(OnDisk::Missing),
        Err(source) => Err(JournalError::Io {
            path: p,
            op: "read",
            source,
        }),
    }
}

/// Moves the corrupt journal to `journal.json.corrupt-<secs>` (never replacing an earlier
/// copy); the caller holds the journal lock.
fn set_aside(state_dir: &Path, problem: String, secs: i64) -> Result<SetAside, JournalError> {
    let journal = path(state_dir);
    let kept = crate::state::fsutil::move_aside(&journal, &format!("corrupt-{secs}")).map_err(
        |source| JournalError::SetAside {
            path: journal.clone(),
            source,
        },
    )?;
    Ok(SetAside {
        journal,
        kept,
        problem,
    })
}

impl Journal {
    fn empty() -> Journal {
        Journal {
            version: 1,
            phases: vec![],
        }
    }

    /// Loads the journal; a missing file is an empty journal, and so is a corrupt one, which is
    /// set aside first (see [`Journal::load_recovering`]).
    pub fn load(state_dir: &Path) -> Result<Journal, JournalError> {
        Ok(Journal::load_recovering(state_dir)?.0)
    }

    /// Loads the journal, and says whether a corrupt one was set aside.
    ///
    /// A journal that does not parse must not stop the agent (a restart loop that only a person
    /// can end): it is moved aside to `journal.json.corrupt-<unix seconds>` (atomically, never
    /// replacing an earlier copy), logged as an error naming both files, and the journal starts
    /// empty. Starting over is safe: every phase is idempotent and re-checks the cluster, and the
    /// cached spec next to the journal is kept. Only a file that is still corrupt once the
    /// journal lock is held is moved, so a fresh journal another process wrote meanwhile is
    /// never taken for it.
    pub fn load_recovering(state_dir: &Path) -> Result<(Journal, Option<SetAside>), JournalError> {
        match read(state_dir)? {
            OnDisk::Missing => return Ok((Journal::empty(), None)),
            OnDisk::Valid(j) => return Ok((j, None)),
            OnDisk::Corrupt(_) => {}
        }
        let _lock = lock_file(state_dir)?;
        match read(state_dir)? {
            OnDisk::Missing => Ok((Journal::empty(), None)),
            OnDisk::Valid(j) => Ok((j, None)),
            OnDisk::Corrupt(problem) => {
                let aside = set_aside(state_dir, problem, crate::time::unix_now())?;
                tracing::error!(
                    journal = %aside.journal.display(),
                    kept = %aside.kept.display(),
                    problem = %aside.problem,
                    "the journal is corrupt: it was set aside and the journal starts empty; the agent runs its phases again from the first (each re-checks the cluster)"
                );
                Ok((Journal::empty(), Some(aside)))
            }
        }
    }

    /// Records `outcome` for `phase` (run for spec `generation`) and writes the journal
    /// durably. The entries other tasks wrote since this copy was loaded are kept.
    pub fn record(
        &mut self,
        state_dir: &Path,
        phase: Phase,
        outcome: Outcome,
        generation: Option<i64>,
        message: Option<String>,
    ) -> Result<(), JournalError> {
        let _lock = lock_file(state_dir)?;
        match read(state_dir) {
            Ok(OnDisk::Valid(on_disk)) => *self = on_disk,
            Ok(OnDisk::Missing) => *self = Journal::empty(),
            // Never overwritten: set aside, and this copy (the best record left) is written.
            Ok(OnDisk::Corrupt(problem)) => {
                let aside = set_aside(state_dir, problem, crate::time::unix_now())?;
                tracing::error!(
                    journal = %aside.journal.display(),
                    kept = %aside.kept.display(),
                    problem = %aside.problem,
                    "the journal is corrupt: it was set aside and replaced by this process's copy"
                );
            }
            // Unreadable: the write below says why if it fails too.
            Err(_) => {}
        }
        let entry = Entry {
            phase,
            outcome,
            time: crate::time::now_rfc3339(),
            message,
            generation,
        };
        match self.phases.iter_mut().find(|e| e.phase == phase) {
            Some(e) => *e = entry,
            None => {
                self.phases.push(entry);
                self.phases.sort_by_key(|e| e.phase);
            }
        }
        self.version = 1;
        let p = path(state_dir);
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        crate::state::fsutil::write_atomic(&p, &bytes, 0o600).map_err(|source| JournalError::Io {
            path: p,
            op: "write",
            source,
        })
    }

    /// Like [`Journal::record`], but writes (and returns true) only when the outcome, the
    /// generation or the message differ from the recorded ones: a phase that keeps failing the
    /// same way, or keeps waiting for the same thing, does not rewrite the file every attempt.
    pub fn record_if_changed(
        &mut self,
        state_dir: &Path,
        phase: Phase,
        outcome: Outcome,
        generation: Option<i64>,
        message: Option<String>,
    ) -> Result<bool, JournalError> {
        if self.entry(phase).is_some_and(|e| {
            e.outcome == outcome && e.generation == generation && e.message == message
        }) {
            return Ok(false);
        }
        self.record(state_dir, phase, outcome, generation, message)?;
        Ok(true)
    }

    /// Removes `phase`'s entry and writes the journal durably (false, nothing written, when it
    /// had none): a cancelled deletion forgets the `Unpivoted` it never finished, so that the
    /// runner resumes `Steady` instead of leaving the cluster to a hand-run unpivot.
    pub fn forget(&mut self, state_dir: &Path, phase: Phase) -> Result<bool, JournalError> {
        let _lock = lock_file(state_dir)?;
        match read(state_dir) {
            Ok(OnDisk::Valid(on_disk)) => *self = on_disk,
            Ok(OnDisk::Missing) => *self = Journal::empty(),
            // Never overwritten: set aside, and this copy (the best record left) is written.
            Ok(OnDisk::Corrupt(problem)) => {
                let aside = set_aside(state_dir, problem, crate::time::unix_now())?;
                tracing::error!(
                    journal = %aside.journal.display(),
                    kept = %aside.kept.display(),
                    problem = %aside.problem,
                    "the journal is corrupt: it was set aside and replaced by this process's copy"
                );
            }
            // Unreadable: the write below says why if it fails too.
            Err(_) => {}
        }
        if !self.started(phase) {
            return Ok(false);
        }
        self.phases.retain(|e| e.phase != phase);
        let p = path(state_dir);
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        crate::state::fsutil::write_atomic(&p, &bytes, 0o600).map_err(|source| {
            JournalError::Io {
                path: p,
                op: "write",
                source,
            }
        })?;
        Ok(true)
    }

    /// Replaces the journal with [`merged`] of the one on disk and `held` (the copy a new leader
    /// takes from the cluster, see [`crate::state::clusterstate`]), under the journal lock.
    pub fn adopt(state_dir: &Path, held: &Journal) -> Result<Journal, JournalError> {
        let _lock = lock_file(state_dir)?;
        let ours = match read(state_dir)? {
            OnDisk::Valid(j) => j,
            OnDisk::Missing => Journal::empty(),
            // Never overwritten: set aside first.
            OnDisk::Corrupt(problem) => {
                set_aside(state_dir, problem, crate::time::unix_now())?;
                Journal::empty()
            }
        };
        let j = merged(&ours, held);
        let p = path(state_dir);
        let bytes = serde_json::to_vec_pretty(&j).unwrap_or_default();
        crate::state::fsutil::write_atomic(&p, &bytes, 0o600).map_err(|source| {
            JournalError::Io {
                path: p,
                op: "write",
                source,
            }
        })?;
        Ok(j)
    }

    /// The entry of `phase`.
    pub fn entry(&self, phase: Phase) -> Option<&Entry> {
        self.phases.iter().find(|e| e.phase == phase)
    }

    /// True when `phase` has succeeded.
    pub fn done(&self, phase: Phase) -> bool {
        self.phases
            .iter()
            .any(|e| e.phase == phase && e.outcome == Outcome::Succeeded)
    }

    /// The phase to run next: the first that has not succeeded (`None` when Steady is reached;
    /// the phases after Steady run only on a deletion or by hand).
    pub fn next(&self) -> Option<Phase> {
        Phase::ALL
            .into_iter()
            .take_while(|p| *p != Phase::Unpivoted)
            .find(|p| !self.done(*p))
    }

    /// True when `phase` has an entry, whatever its outcome.
    pub fn started(&self, phase: Phase) -> bool {
        self.phases.iter().any(|e| e.phase == phase)
    }

    /// The latest phase that succeeded.
    pub fn current(&self) -> Option<Phase> {
        Phase::ALL.into_iter().rev().find(|p| self.done(*p))
    }
}

/// The journal a new leader goes on from: `held`'s (the leader's, from the cluster), except that
/// `Installed` stays this node's and `SpecFetched` is the one for the higher generation. Pure.
pub fn merged(ours: &Journal, held: &Journal) -> Journal {
    let mut phases: Vec<Entry> = held
        .phases
        .iter()
        .filter(|e| !matches!(e.phase, Phase::Installed | Phase::SpecFetched))
        .cloned()
        .collect();
    phases.extend(ours.entry(Phase::Installed).cloned());
    let fetched = match (
        ours.entry(Phase::SpecFetched),
        held.entry(Phase::SpecFetched),
    ) {
        (Some(o), Some(h)) if h.generation > o.generation => Some(h),
        (Some(o), _) => Some(o),
        (None, h) => h,
    };
    phases.extend(fetched.cloned());
    phases.sort_by_key(|e| e.phase);
    Journal { version: 1, phases }
}

/// The error and its causes on one line: how the journal records a failure (and how the agent
/// logs one).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    fledge_generator::diagnostics::causes(e).join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_resumes_from_the_first_unfinished_phase() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::load(dir.path()).unwrap();
        assert_eq!(j.next(), Some(Phase::Installed));
        j.record(dir.path(), Phase::Installed, Outcome::Succeeded, None, None)
            .unwrap();
        j.record(
            dir.path(),
            Phase::SpecFetched,
            Outcome::Started,
            Some(3),
            None,
        )
        .unwrap();
        // "Crash": a new process loads what is on disk.
        let j2 = Journal::load(dir.path()).unwrap();
        assert_eq!(j2, j);
        assert_eq!(j2.next(), Some(Phase::SpecFetched));
        assert_eq!(j2.current(), Some(Phase::Installed));
        assert_eq!(j2.entry(Phase::SpecFetched).unwrap().generation, Some(3));
    }

    #[test]
    fn two_writers_keep_each_others_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut sync = Journal::load(dir.path()).unwrap();
        let mut runner = Journal::load(dir.path()).unwrap();
        sync.record(
            dir.path(),
            Phase::SpecFetched,
            Outcome::Succeeded,
            Some(1),
            None,
        )
        .unwrap();
        runner
            .record(
                dir.path(),
                Phase::ProvidersInstalled,
                Outcome::Started,
                Some(1),
                None,
            )
            .unwrap();
        let j = Journal::load(dir.path()).unwrap();
        assert!(j.done(Phase::SpecFetched), "{j:?}");
        assert_eq!(j.phases.len(), 2);
        assert_eq!(runner, j);
    }

    #[test]
    fn two_threads_recording_phases_keep_each_others_entries() {
        let dir = tempfile::tempdir().unwrap();
        std::thread::scope(|s| {
            for phase in [Phase::SpecFetched, Phase::Steady] {
                let dir = dir.path();
                s.spawn(move || {
                    let mut j = Journal::load(dir).unwrap();
                    for round in 0..200 {
                        j.record(dir, phase, Outcome::Started, None, Some(round.to_string()))
                            .unwrap();
                        let seen = Journal::load(dir).unwrap().entry(phase).cloned();
                        assert_eq!(
                            seen.and_then(|e| e.message),
                            Some(round.to_string()),
                            "{phase}: round {round} was overwritten by the other thread"
                        );
                    }
                });
            }
        });
        let j = Journal::load(dir.path()).unwrap();
        for phase in [Phase::SpecFetched, Phase::Steady] {
            assert_eq!(
                j.entry(phase).and_then(|e| e.message.as_deref()),
                Some("199")
            );
        }
    }

    /// Names in `dir` that start with `journal.json.corrupt-`, sorted.
    fn set_aside_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("journal.json.corrupt-")
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_corrupt_journal_is_set_aside_and_the_agent_starts_from_an_empty_journal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), b"{not json").unwrap();
        let (j, aside) = Journal::load_recovering(dir.path()).unwrap();
        assert_eq!(j.next(), Some(Phase::Installed), "{j:?}");
        assert!(j.phases.is_empty(), "{j:?}");
        let aside = aside.expect("the corrupt journal is reported");
        assert_eq!(aside.journal, path(dir.path()));
        assert_eq!(set_aside_files(dir.path()), vec![aside.kept.clone()]);
        assert_eq!(std::fs::read(&aside.kept).unwrap(), b"{not json");
        assert!(!path(dir.path()).exists(), "the corrupt name is free");
        let shown = aside.to_string();
        assert!(
            shown.contains(&path(dir.path()).display().to_string())
                && shown.contains(&aside.kept.display().to_string()),
            "{shown}"
        );
        // The next load finds no journal: nothing more is set aside.
        let (j, again) = Journal::load_recovering(dir.path()).unwrap();
        assert!(j.phases.is_empty() && again.is_none());
    }

    #[test]
    fn plain_load_of_a_corrupt_journal_sets_it_aside_too() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), b"\0\0\0").unwrap();
        let j = Journal::load(dir.path()).unwrap();
        assert_eq!(j.next(), Some(Phase::Installed));
        let kept = set_aside_files(dir.path());
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(std::fs::read(&kept[0]).unwrap(), b"\0\0\0");
    }

    #[test]
    fn setting_aside_never_overwrites_an_earlier_corrupt_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = Vec::new();
        for (i, bytes) in [&b"first"[..], b"second", b"third"].into_iter().enumerate() {
            std::fs::write(path(dir.path()), bytes).unwrap();
            // The same second each time: the names must still differ.
            let aside = set_aside(dir.path(), "bad".into(), 1_700_000_000).unwrap();
            assert_eq!(std::fs::read(&aside.kept).unwrap(), bytes, "copy {i}");
            kept.push(aside.kept);
        }
        assert_eq!(set_aside_files(dir.path()).len(), 3, "{kept:?}");
        for (k, bytes) in kept.iter().zip([&b"first"[..], b"second", b"third"]) {
            assert_eq!(std::fs::read(k).unwrap(), bytes, "{}", k.display());
        }
        assert!(
            kept[0]
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("journal.json.corrupt-1700000000")
        );
    }

    #[test]
    fn record_sets_a_corrupt_journal_aside_instead_of_overwriting_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::load(dir.path()).unwrap();
        j.record(dir.path(), Phase::Installed, Outcome::Succeeded, None, None)
            .unwrap();
        std::fs::write(path(dir.path()), b"garbage").unwrap();
        j.record(
            dir.path(),
            Phase::SpecFetched,
            Outcome::Succeeded,
            Some(2),
            None,
        )
        .unwrap();
        let kept = set_aside_files(dir.path());
        assert_eq!(kept.len(), 1, "the corrupt file was overwritten");
        assert_eq!(std::fs::read(&kept[0]).unwrap(), b"garbage");
        // The writer's own copy is the best record left: it is kept, with the new entry.
        let on_disk = Journal::load(dir.path()).unwrap();
        assert!(
            on_disk.done(Phase::Installed) && on_disk.done(Phase::SpecFetched),
            "{on_disk:?}"
        );
        assert_eq!(on_disk, j);
    }
}
