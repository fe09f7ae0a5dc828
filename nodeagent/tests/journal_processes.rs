//! Two processes writing one journal: the service's runner and `fledge-agent unpivot` (or
//! `pivot`) run by hand both record phases in `<stateDir>/journal.json`. Neither may lose the
//! other's entry. The test runs itself twice as the writers (real processes, a real file).

use std::path::Path;
use std::process::Command;

use fledge_agent::state::journal::{Journal, Outcome, Phase};

const WRITER: &str = "FLEDGE_TEST_JOURNAL_WRITER";
const DIR: &str = "FLEDGE_TEST_JOURNAL_DIR";
const ROUNDS: usize = 200;

/// One writer: records its phase `ROUNDS` times, each with the round as its message, and after
/// each record reads the file back. Its own latest entry must be there: a stale copy written by
/// the other process (a lost update) would show an older round.
fn write_rounds(dir: &Path, phase: Phase) {
    let mut j = Journal::load(dir).unwrap();
    for round in 0..ROUNDS {
        j.record(dir, phase, Outcome::Started, None, Some(round.to_string()))
            .unwrap();
        let on_disk = Journal::load(dir).unwrap();
        let seen = on_disk.entry(phase).and_then(|e| e.message.clone());
        assert_eq!(
            seen.as_deref(),
            Some(round.to_string().as_str()),
            "{phase}: round {round} was overwritten by the other process's stale copy"
        );
    }
}

#[test]
fn two_processes_recording_phases_keep_each_others_entries() {
    if let Ok(phase) = std::env::var(WRITER) {
        let dir = std::env::var(DIR).unwrap();
        let phase = if phase == "Steady" {
            Phase::Steady
        } else {
            Phase::Unpivoted
        };
        write_rounds(Path::new(&dir), phase);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let me = std::env::current_exe().unwrap();
    let writers: Vec<_> = ["Steady", "Unpivoted"]
        .into_iter()
        .map(|phase| {
            Command::new(&me)
                .args([
                    "two_processes_recording_phases_keep_each_others_entries",
                    "--exact",
                    "--nocapture",
                ])
                .env(WRITER, phase)
                .env(DIR, dir.path())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut w in writers {
        let out = w.wait().unwrap();
        assert!(out.success(), "a writer process failed: {out}");
    }
    let j = Journal::load(dir.path()).unwrap();
    let last = (ROUNDS - 1).to_string();
    for phase in [Phase::Steady, Phase::Unpivoted] {
        assert_eq!(
            j.entry(phase).and_then(|e| e.message.as_deref()),
            Some(last.as_str()),
            "{phase}: {j:?}"
        );
    }
}
