//! The runner: walks the journal and runs the first phase that has not succeeded (`Steady`
//! once all have: it reconciles on each new generation and every `resyncSeconds`), records each
//! outcome with the spec generation it ran for, and retries a failure with capped, jittered
//! backoff. It runs beside the spec sync and never blocks it.
//!
//! Each attempt holds the run lock ([`crate::state::runlock`]), takes the cluster's copy of the
//! state once ([`crate::state::clusterstate`]), renews the management token when it is due
//! ([`crate::clients::token`]), makes sure the agent's finalizer is on its FledgeCluster and its
//! move rights are given up once per process, and publishes the cluster's copy afterwards.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tracing::Instrument;

use super::{
    Accepted, Context, PhaseError, Specs, Step, addons, apply, next, offer, pivoted, unpivoted,
};
use crate::clients::{Counts, local_client};
use crate::config::AgentConfig;
use crate::state::journal::{Journal, Outcome, Phase, chain};

/// How long to wait before looking again when a phase waits for something outside the agent
/// (a provider's Deployment becoming available, the control plane initializing).
pub const POLL: Duration = Duration::from_secs(2);

/// The longest wait between looks while a phase keeps waiting for the same thing.
pub const POLL_CAP: Duration = Duration::from_secs(30);

/// Capped exponential backoff of a phase's repeated waits: [`POLL`] for a new reason, doubled
/// each time the phase waits again for the same reason, at most [`POLL_CAP`]. A wait for
/// another reason, or any progress, starts again at [`POLL`]. (On a slow or intermittent
/// network a wait that does not move is not asked about every 2 s; a new spec still wakes
/// the runner at once.)
#[derive(Debug, Default)]
pub struct WaitBackoff {
    last: Option<(String, Duration)>,
}

impl WaitBackoff {
    /// The delay before the next look, for a phase waiting for `why`.
    pub fn next(&mut self, why: &str) -> Duration {
        let delay = match &self.last {
            Some((reason, d)) if reason == why => (*d * 2).min(POLL_CAP),
            _ => POLL,
        };
        self.last = Some((why.to_string(), delay));
        delay
    }

    /// Progress: the next wait starts at [`POLL`].
    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// What the runner reports to the metrics. (Outcomes and their messages go to the journal, and
/// from there to the status; progress lines go to the log.)
pub trait Report: Send + Sync {
    /// An attempt at `phase` failed (it is retried).
    fn failed(&self, phase: Phase);
}

/// The runner's side of the cluster-held state ([`crate::state::clusterstate`]).
#[derive(Default)]
struct ClusterCopy {
    /// Whether the cluster's copy was taken (or there was no local cluster to hold one).
    taken: bool,
    /// The files last published.
    last: Option<crate::state::clusterstate::Files>,
}

/// Walks the journal's phases.
pub struct Runner {
    /// The configuration.
    pub cfg: AgentConfig,
    /// This agent's name in the leader election (`nodeName`, else the host name): the holder
    /// of the cluster's copy of the state it publishes.
    pub identity: String,
    /// Root prefix.
    pub root: PathBuf,
    /// State directory (rooted).
    pub state_dir: PathBuf,
    /// The management client.
    pub management: kube::Client,
    /// Counts the local client's requests.
    pub local_counts: Arc<Counts>,
    /// The accepted spec: each attempt acts on the latest, and a new one wakes the runner.
    /// The runner sends too, when the cluster's copy of the state brings a newer one.
    pub specs: Specs,
    /// Woken by the spec sync when a deletion is ordered or its cancellation settled.
    pub wake: Arc<Notify>,
    /// Woken when an attempt changed the journal, for the status.
    pub journal_changed: Arc<Notify>,
    /// Progress sink.
    pub report: Arc<dyn Report>,
    /// The add-on layers' health timers, kept across attempts.
    pub layer_clock: addons::health::LayerClock,
}

impl Runner {
    /// Runs phases until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = self.cfg.backoff();
        let mut waits = WaitBackoff::default();
        let mut local: Option<kube::Client> = None;
        // Whether this process has made sure the agent's finalizer is on its FledgeCluster.
        let mut held = false;
        let mut copy = ClusterCopy::default();
        let mut specs = self.specs.subscribe();
        while !*stop.borrow() {
            let delay = match self
                .attempt(&mut specs, &mut local, &mut held, &mut copy)
                .await
            {
                Attempt::Progressed => {
                    backoff = self.cfg.backoff();
                    waits.reset();
                    Duration::ZERO
                }
                Attempt::Wait(d) => {
                    waits.reset();
                    d
                }
                Attempt::Waiting(why) => waits.next(&why),
                Attempt::Failed => backoff.next().unwrap_or(self.cfg.backoff_cap()),
            };
            if delay.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = specs.changed() => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// The local client, made on first use; `Ok(None)` while the local cluster has no
    /// kubeconfig yet (CP-A before `kubeadm init`).
    async fn local(
        &self,
        local: &mut Option<kube::Client>,
    ) -> Result<Option<kube::Client>, PhaseError> {
        if let Some(c) = local {
            return Ok(Some(c.clone()));
        }
        let path = crate::config::rooted(&self.root, &self.cfg.local_kubeconfig());
        if !path.exists() {
            return Ok(None);
        }
        let c = local_client(&path, self.local_counts.clone()).await?;
        *local = Some(c.clone());
        Ok(Some(c))
    }

    /// Takes the cluster's copy of the state ([`crate::state::clusterstate`]) once, before this
    /// process's first phase, where it is newer than the disk. False when it could not be read:
    /// no phase runs on a state that may be older than the cluster's.
    async fn take_cluster_copy(
        &self,
        local: &mut Option<kube::Client>,
        copy: &mut ClusterCopy,
    ) -> bool {
        if copy.taken {
            return true;
        }
        let client = match self.local(local).await {
            Ok(Some(c)) => c,
            // No local cluster: nothing can be held in it yet.
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(error = %chain(&e), "cannot read the cluster's copy of the agent's state; no phase runs until it can be");
                return false;
            }
        };
        match crate::state::clusterstate::restore(&client, &self.state_dir).await {
            Ok(r) => {
                if !r.taken.is_empty() {
                    tracing::info!(sequence = r.sequence, written_by = %r.holder, taken = ?r.taken, "took the cluster's copy of the agent's state (newer than this node's)");
                }
                if let Some(spec) = r.spec {
                    offer(&self.specs, Accepted::new(&self.cfg, spec));
                }
                copy.taken = true;
                true
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "cannot take the cluster's copy of the agent's state; no phase runs until it can be");
                false
            }
        }
    }

    /// Keeps the cluster's copy of the state equal to the disk (a write only when it changed).
    async fn publish_cluster_copy(&self, local: &mut Option<kube::Client>, copy: &mut ClusterCopy) {
        let Ok(Some(client)) = self.local(local).await else {
            return;
        };
        match crate::state::clusterstate::publish(
            &client,
            &self.state_dir,
            &self.identity,
            &mut copy.last,
        )
        .await
        {
            Ok(Some(n)) => tracing::debug!(
                sequence = n,
                "the cluster's copy of the agent's state updated"
            ),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %chain(&e), "cannot update the cluster's copy of the agent's state; the disk keeps it, and the next attempt tries again")
            }
        }
    }

    /// Renews the management token when it is due ([`crate::clients::token`]); a failure is logged and
    /// tried again at the next attempt (the token stays valid for a fifth of its lifetime).
    async fn renew_token(&self) {
        let names = fledge_generator::management::Names::new(&self.cfg.cluster.name);
        let file = crate::config::rooted(&self.root, &self.cfg.management.token_file);
        match crate::clients::token::renew_if_due(
            &self.management,
            &self.cfg.cluster.namespace,
            &names.agent,
            &file,
            crate::time::unix_now(),
        )
        .await
        {
            Ok(Some(c)) => tracing::info!(
                expires = c.expires,
                "renewed the management token (bound, for the agent's own ServiceAccount)"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                error = %chain(&e),
                "cannot renew the management token; trying again at the next attempt"
            ),
        }
    }

    async fn attempt(
        &self,
        specs: &mut watch::Receiver<Option<Accepted>>,
        local: &mut Option<kube::Client>,
        held: &mut bool,
        copy: &mut ClusterCopy,
    ) -> Attempt {
        // Held until the attempt ends: `fledge-agent unpivot` run by hand waits for it, and
        // while it holds the lock (moving the cluster away) no attempt starts.
        let _run = match crate::state::runlock::try_acquire(&self.state_dir) {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                tracing::info!(
                    lock = %crate::state::runlock::path(&self.state_dir).display(),
                    "fledge-agent unpivot, run by hand, holds the run lock; waiting"
                );
                return Attempt::Wait(POLL);
            }
            Err(e) => {
                tracing::error!(error = %chain(&e), lock = %crate::state::runlock::path(&self.state_dir).display(), "cannot take the run lock; no phase runs");
                return Attempt::Failed;
            }
        };
        if !self.take_cluster_copy(local, copy).await {
            return Attempt::Failed;
        }
        self.renew_token().await;
        let attempt = self.attempt_locked(specs, local, held).await;
        if copy.taken {
            self.publish_cluster_copy(local, copy).await;
        }
        attempt
    }

    async fn attempt_locked(
        &self,
        specs: &mut watch::Receiver<Option<Accepted>>,
        local: &mut Option<kube::Client>,
        held: &mut bool,
    ) -> Attempt {
        let mut journal = match Journal::load(&self.state_dir) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %chain(&e), "cannot read the journal; no phase runs");
                return Attempt::Failed;
            }
        };
        let deleting = crate::state::deletion::deletion_requested(&self.state_dir);
        let phase = next(&journal, deleting);
        if phase == Phase::Unpivoted && !deleting {
            // `fledge-agent unpivot` moved the cluster (or is moving it): hands off.
            tracing::info!(
                "the cluster was unpivoted by hand (fledge-agent unpivot); this agent no longer manages it"
            );
            return Attempt::Wait(Duration::from_secs(3600));
        }
        if phase == Phase::Released && journal.done(Phase::Released) {
            return Attempt::Wait(Duration::from_secs(3600));
        }
        // Nothing to act on before the first spec arrives (it wakes the runner).
        let Some(accepted) = specs.borrow_and_update().clone() else {
            return Attempt::Wait(Duration::from_secs(3600));
        };
        let generation = accepted.cached.generation;
        let span = tracing::info_span!("phase", cluster = %self.cfg.cluster.name, phase = %phase, generation);
        async {
            let result = self.step(local, held, &mut journal, phase, &accepted).await;
            // Every failure is journaled (also one before the phase could start, such as an
            // unreadable local kubeconfig); the status is told only when something changed.
            let changed = match &result {
                Ok(step) => step.1,
                Err(e) => journal
                    .record_if_changed(
                        &self.state_dir,
                        phase,
                        Outcome::Failed,
                        Some(generation),
                        Some(chain(e)),
                    )
                    .unwrap_or(true),
            };
            if changed {
                self.journal_changed.notify_one();
            }
            match result.map(|s| s.0) {
                Ok(Step::Done(msg)) if phase == Phase::Steady => {
                    if changed {
                        tracing::info!(%msg, "reconciled");
                    }
                    Attempt::Wait(self.cfg.resync())
                }
                Ok(Step::Done(msg)) => {
                    tracing::info!(%msg, "phase complete");
                    Attempt::Progressed
                }
                Ok(Step::Waiting(why)) => {
                    tracing::info!(%why, "phase waiting");
                    Attempt::Waiting(why)
                }
                Err(e) => {
                    let msg = chain(&e);
                    tracing::warn!(error = %msg, "phase failed; retrying with backoff");
                    self.report.failed(phase);
                    Attempt::Failed
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn step(
        &self,
        local: &mut Option<kube::Client>,
        held: &mut bool,
        journal: &mut Journal,
        phase: Phase,
        accepted: &Accepted,
    ) -> Result<(Step, bool), PhaseError> {
        let generation = Some(accepted.cached.generation);
        let spec = accepted.checked()?;
        let client = match self.local(local).await? {
            Some(c) => c,
            // No kubeconfig: the client's own error says so, naming the file.
            None => {
                let path = crate::config::rooted(&self.root, &self.cfg.local_kubeconfig());
                local_client(&path, self.local_counts.clone()).await?
            }
        };
        let ctx = Context {
            cfg: self.cfg.clone(),
            root: self.root.clone(),
            state_dir: self.state_dir.clone(),
            management: self.management.clone(),
            local: client,
            spec,
            generation: accepted.cached.generation,
            layer_clock: self.layer_clock.clone(),
        };
        // `Started` marks the first attempt for a generation; a retry after a failure keeps the
        // failure on record (with its reason) until the phase succeeds or fails differently.
        let mut changed = false;
        if journal
            .entry(phase)
            .is_none_or(|e| e.generation != generation)
        {
            journal.record(&self.state_dir, phase, Outcome::Started, generation, None)?;
            changed = true;
        }
        if phase == Phase::Steady && !*held {
            // Once per process: a cluster pivoted by an agent that did not take the finalizer
            // (an older one), or whose finalizer was removed, is deletable from here on.
            // And the move rights are given up (an agent that could not at the pivot's end).
            match unpivoted::hold(&ctx).await {
                Ok(()) => match pivoted::revoke_move_rights(&ctx).await {
                    Ok(_) => *held = true,
                    Err(e) => {
                        tracing::warn!(error = %chain(&e), "cannot give up the agent's move rights on the management plane; trying again next attempt")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "cannot make sure the agent's finalizer is on its FledgeCluster; trying again next attempt")
                }
            }
        }
        let progress = move |line: &str| tracing::info!(phase = %phase, "{line}");
        match apply(&ctx, phase, &progress).await? {
            Step::Done(msg) => {
                // A resync that finds everything as it was writes nothing.
                changed |= journal.record_if_changed(
                    &self.state_dir,
                    phase,
                    Outcome::Succeeded,
                    generation,
                    Some(msg.clone()),
                )?;
                Ok((Step::Done(msg), changed))
            }
            Step::Waiting(why) => {
                changed |= journal.record_if_changed(
                    &self.state_dir,
                    phase,
                    Outcome::Started,
                    generation,
                    Some(format!("waiting: {why}")),
                )?;
                Ok((Step::Waiting(why), changed))
            }
        }
    }
}

enum Attempt {
    Progressed,
    Wait(Duration),
    /// The phase waits for something outside the agent (polled with [`WaitBackoff`]).
    Waiting(String),
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoReport;
    impl Report for NoReport {
        fn failed(&self, _: Phase) {}
    }

    #[tokio::test]
    async fn no_attempt_starts_while_an_unpivot_by_hand_holds_the_run_lock() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let runner = Runner {
            cfg: crate::config::for_test(&state),
            identity: "cp-a".into(),
            root: PathBuf::from("/"),
            state_dir: state.clone(),
            management: kube::Client::try_from(kube::Config::new(
                "https://127.0.0.1:1".parse().unwrap(),
            ))
            .unwrap(),
            local_counts: Arc::new(Counts::default()),
            specs: watch::channel(None).0,
            wake: Arc::new(Notify::new()),
            journal_changed: Arc::new(Notify::new()),
            report: Arc::new(NoReport),
            layer_clock: Default::default(),
        };
        // With the lock free, this attempt finds no cached spec and waits an hour for one;
        // with it held, the attempt reads nothing and checks the lock again after POLL.
        let mut j = Journal::load(&state).unwrap();
        j.record(&state, Phase::Installed, Outcome::Succeeded, None, None)
            .unwrap();
        let before = std::fs::read(crate::state::journal::path(&state)).unwrap();
        let held = crate::state::runlock::try_acquire(&state).unwrap().unwrap();
        let (mut local, mut finalizer) = (None, false);
        let mut specs = runner.specs.subscribe();
        let a = runner
            .attempt(
                &mut specs,
                &mut local,
                &mut finalizer,
                &mut ClusterCopy::default(),
            )
            .await;
        assert!(matches!(a, Attempt::Wait(d) if d == POLL));
        assert_eq!(
            std::fs::read(crate::state::journal::path(&state)).unwrap(),
            before
        );
        // The attempt held the lock only while it ran; with the lock free it runs again.
        drop(held);
        let a = runner
            .attempt(
                &mut specs,
                &mut local,
                &mut finalizer,
                &mut ClusterCopy::default(),
            )
            .await;
        assert!(matches!(a, Attempt::Wait(d) if d == Duration::from_secs(3600)));
        assert!(
            crate::state::runlock::try_acquire(&state)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn repeated_waits_for_the_same_reason_back_off_to_the_cap() {
        let mut w = WaitBackoff::default();
        let secs = |w: &mut WaitBackoff, why: &str| w.next(why).as_secs();
        let same: Vec<u64> = (0..7).map(|_| secs(&mut w, "control plane")).collect();
        assert_eq!(same, [2, 4, 8, 16, 30, 30, 30]);
        // Another reason (something moved) starts again at POLL, and so does progress.
        assert_eq!(secs(&mut w, "1/3 machines ready"), 2);
        assert_eq!(secs(&mut w, "1/3 machines ready"), 4);
        w.reset();
        assert_eq!(secs(&mut w, "1/3 machines ready"), 2);
    }
}
