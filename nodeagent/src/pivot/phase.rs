//! The pivot as the agent's `Pivoted` phase: journaled `Started` before the first request,
//! `Succeeded` or `Failed` (with the error) after. A restart that finds `Started` or `Failed`
//! runs the pivot again, which converges from wherever the last run stopped; one that finds
//! `Succeeded` does nothing.

use std::path::Path;

use super::apply::{Event, Options, Pivot, PivotError, Summary};
use crate::state::journal::{Journal, JournalError, Phase};

/// Why the phase failed.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    /// The journal could not be written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The pivot failed (journaled as `Failed`).
    #[error(transparent)]
    Pivot(#[from] PivotError),
}

/// Where to pivot from and to.
pub struct Clients<'a> {
    /// The management cluster (the agent's scoped identity is enough).
    pub source: &'a kube::Client,
    /// The local cluster.
    pub target: &'a kube::Client,
}

/// Runs the `Pivoted` phase for `namespace/cluster`.
pub async fn run(
    state_dir: &Path,
    journal: &mut Journal,
    clients: Clients<'_>,
    namespace: &str,
    cluster: &str,
    opts: Options,
    progress: &(dyn Fn(&Event) + Send + Sync),
) -> Result<Summary, PhaseError> {
    let work = async {
        Pivot::new(
            clients.source,
            clients.target,
            namespace,
            cluster,
            opts,
            progress,
        )
        .run()
        .await
        .map_err(PhaseError::from)
    };
    let done = crate::state::journal::journaled(
        state_dir,
        journal,
        Phase::Pivoted,
        None,
        work,
        Summary::describe,
    )
    .await?;
    Ok(done.unwrap_or(Summary {
        already_complete: true,
        ..Summary::default()
    }))
}
