//! The agent's phases after the spec is cached: `CoreLayers`, `ProvidersInstalled`, `Pivoted`,
//! `ScaledOut`, `AddonsReady`, then `Steady` for good.
//! Each lives in its own module with a plan (pure data: what it would do next and why; `fledge-agent
//! plan` prints it) and an apply step. [`Runner`] walks the journal: it runs the first phase
//! that has not succeeded (`Steady` once all have: it reconciles on each new generation and
//! every `resyncSeconds`), records each outcome with the spec generation it ran for, and retries
//! a failure with capped, jittered backoff. It runs beside the spec sync and never blocks it.
//!
//! Here: the runner, the phase [`Context`] and what the phases share (the local client, applying
//! to the local cluster). The phases: [`corelayers`], [`providers`], [`pivoted`], [`scaledout`],
//! [`addons`] (its layers are also the core layers' and `Steady`'s), [`steady`], and
//! [`unpivoted`] (deleting the cluster: `Unpivoted`, then `Released`).

pub mod addons;
pub mod corelayers;
pub mod pivoted;
pub mod providers;
pub mod scaledout;
pub mod steady;
pub mod unpivoted;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use fledge_generator::spec::CheckedCluster;
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::clients::Counts;
use crate::config::AgentConfig;
use crate::state::cache;
use crate::state::journal::{Journal, JournalError, Outcome, Phase, chain};

/// The phases this version of the agent runs, in order.
pub const RUN: [Phase; 6] = [
    Phase::CoreLayers,
    Phase::ProvidersInstalled,
    Phase::Pivoted,
    Phase::ScaledOut,
    Phase::AddonsReady,
    Phase::Steady,
];

/// The phase the runner works on: the first not yet succeeded, else `Steady`, which never ends.
/// Once the FledgeCluster's deletion is requested (`deleting`): a pivot under way is finished
/// first (the engine converges it), then `Unpivoted`, then `Released`. An unpivot without a
/// deletion (`fledge-agent unpivot`) leaves the runner at `Unpivoted`, which it does not run.
pub fn next(journal: &Journal, deleting: bool) -> Phase {
    if deleting {
        return if journal.started(Phase::Pivoted) && !journal.done(Phase::Pivoted) {
            Phase::Pivoted
        } else if !journal.done(Phase::Unpivoted) {
            Phase::Unpivoted
        } else {
            Phase::Released
        };
    }
    if journal.started(Phase::Unpivoted) {
        return Phase::Unpivoted;
    }
    // A journal written before `CoreLayers` existed (an upgraded agent) has the providers
    // installed already: the core layers are then `Steady`'s to reconcile.
    let done = |p: Phase| {
        journal.done(p) || (p == Phase::CoreLayers && journal.done(Phase::ProvidersInstalled))
    };
    RUN.into_iter()
        .find(|p| *p == Phase::Steady || !done(*p))
        .unwrap_or(Phase::Steady)
}

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

/// Why a phase could not run.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    /// Installing the providers failed.
    #[error(transparent)]
    Providers(#[from] providers::ProvidersError),
    /// The pivot failed.
    #[error(transparent)]
    Pivot(#[from] crate::pivot::apply::PivotError),
    /// Installing the add-ons failed.
    #[error(transparent)]
    Addons(Box<addons::AddonsError>),
    /// A day-2 change was refused.
    #[error(transparent)]
    Refused(#[from] crate::day2::Refused),
    /// Applying the scale-out objects failed.
    #[error(transparent)]
    ScaleOut(#[from] scaledout::ScaleOutError),
    /// The agent's credentials Secret for the control-plane machines cannot be kept.
    #[error("the agent's Secret for new control-plane machines: {0}")]
    AgentSecret(String),
    /// The cloud provider's credentials Secret cannot be made.
    #[error("cloud provider credentials: {0}")]
    CloudSecret(String),
    /// A request failed.
    #[error("cannot {what}")]
    Request {
        /// What was asked.
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The local cluster's kubeconfig is unusable.
    #[error("local cluster kubeconfig {path}: {message}")]
    LocalKubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The cached spec does not check (it did when it was cached; the rules changed).
    #[error("the cached spec (generation {generation}) is invalid: {problems}")]
    Spec {
        /// Generation.
        generation: i64,
        /// The problems.
        problems: String,
    },
    /// The journal could not be written.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl From<addons::AddonsError> for PhaseError {
    fn from(e: addons::AddonsError) -> Self {
        PhaseError::Addons(Box::new(e))
    }
}

/// Everything a phase works with.
pub struct Context {
    /// The configuration.
    pub cfg: AgentConfig,
    /// Root prefix for configured paths (`/` on a node).
    pub root: PathBuf,
    /// State directory (rooted).
    pub state_dir: PathBuf,
    /// The management plane (the agent's scoped identity).
    pub management: kube::Client,
    /// The local cluster.
    pub local: kube::Client,
    /// The cached spec, checked.
    pub spec: CheckedCluster,
    /// Its generation.
    pub generation: i64,
    /// How long each add-on layer has been unhealthy (monotonic; kept across attempts).
    pub layer_clock: addons::LayerClock,
}

/// What a phase would do next, and why: printable data.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The phase.
    pub phase: Phase,
    /// The spec generation it is for.
    pub generation: i64,
    /// What it would do, in order.
    pub steps: Vec<String>,
    /// Why it cannot act yet, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "next phase: {} (spec generation {})",
            self.phase, self.generation
        )?;
        if let Some(w) = &self.waiting {
            writeln!(f, "waiting: {w}")?;
        }
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "{:>3}. {s}", i + 1)?;
        }
        Ok(())
    }
}

/// How an apply step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The phase is complete (a summary for the journal).
    Done(String),
    /// It made what progress it could and waits for something outside the agent.
    Waiting(String),
}

/// Plans `phase`.
pub async fn plan(ctx: &Context, phase: Phase) -> Result<Plan, PhaseError> {
    let (steps, waiting) = match phase {
        Phase::CoreLayers => corelayers::plan(ctx).await?,
        Phase::ProvidersInstalled => providers::plan(ctx).await?,
        Phase::Pivoted => pivoted::plan(ctx).await?,
        Phase::ScaledOut => scaledout::plan(ctx).await?,
        Phase::AddonsReady => addons::plan(ctx).await?,
        Phase::Steady => steady::plan(ctx).await?,
        Phase::Unpivoted if unpivoted::deletion_requested(&ctx.state_dir) => {
            unpivoted::plan(ctx).await?
        }
        Phase::Released => unpivoted::plan_release(ctx).await?,
        other => (
            vec![format!(
                "{other} is not run by fledge-agent {}",
                crate::VERSION
            )],
            None,
        ),
    };
    Ok(Plan {
        phase,
        generation: ctx.generation,
        steps,
        waiting,
    })
}

/// Applies `phase`; `progress` gets one line per step.
pub async fn apply(
    ctx: &Context,
    phase: Phase,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Step, PhaseError> {
    match phase {
        Phase::CoreLayers => corelayers::apply(ctx, progress).await,
        Phase::ProvidersInstalled => providers::apply(ctx, progress).await,
        Phase::Pivoted => pivoted::apply(ctx, progress).await,
        Phase::ScaledOut => scaledout::apply(ctx, progress).await,
        Phase::AddonsReady => addons::apply(ctx, progress).await,
        Phase::Steady => steady::apply(ctx, progress).await,
        Phase::Unpivoted if unpivoted::deletion_requested(&ctx.state_dir) => {
            unpivoted::apply(ctx, progress).await
        }
        Phase::Released => unpivoted::apply_release(ctx, progress).await,
        other => Ok(Step::Waiting(format!(
            "{other} is not run by fledge-agent {}",
            crate::VERSION
        ))),
    }
}

/// A Secret the agent keeps in the local cluster, as applied there: Opaque, labelled as
/// fledge's (plus `labels`), its `data` given as bytes (the type's serializer encodes them).
pub(crate) fn opaque_secret(
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    data: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> serde_json::Value {
    use k8s_openapi::ByteString;
    let mut secret = k8s_openapi::api::core::v1::Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.namespace = Some(namespace.into());
    secret.metadata.labels = Some(
        labels
            .iter()
            .chain(&[("app.kubernetes.io/managed-by", "fledge")])
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    secret.type_ = Some("Opaque".into());
    secret.data = Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect());
    serde_json::to_value(&secret).unwrap_or_default()
}

/// A client for the local cluster from its kubeconfig, counting its requests.
pub async fn local_client(
    path: &std::path::Path,
    counts: Arc<Counts>,
) -> Result<kube::Client, PhaseError> {
    crate::clients::counted_client(Some(path), counts)
        .await
        .map(|(client, _)| client)
        .map_err(|e| PhaseError::LocalKubeconfig {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })
}

/// Server-side applies `objects` to the local cluster as the agent (field manager
/// `fledge-agent`, forced: the agent owns what it applies there); `progress` gets each outcome.
pub async fn apply_local(
    ctx: &Context,
    objects: &[serde_json::Value],
    progress: impl FnMut(&fledge_generator::apply::Applied),
) -> Result<Vec<fledge_generator::apply::Applied>, fledge_generator::apply::ApplyError> {
    apply_local_as(
        ctx,
        providers::FIELD_MANAGER,
        &|_, _| Ok(()),
        objects,
        progress,
    )
    .await
}

/// [`apply_local`] as `field_manager` (forced), asking `guard` before each write.
pub async fn apply_local_as(
    ctx: &Context,
    field_manager: &str,
    guard: &fledge_generator::apply::Guard<'_>,
    objects: &[serde_json::Value],
    progress: impl FnMut(&fledge_generator::apply::Applied),
) -> Result<Vec<fledge_generator::apply::Applied>, fledge_generator::apply::ApplyError> {
    let target = fledge_generator::apply::Target {
        client: ctx.local.clone(),
        server: "the local cluster".into(),
        ca_certs: None,
    };
    let opts = fledge_generator::apply::ApplyOptions {
        dry_run: false,
        force_conflicts: true,
        field_manager: Some(field_manager.into()),
        ..Default::default()
    };
    fledge_generator::apply::apply_guarded(&target, objects, &opts, guard, progress).await
}

/// A Cluster API type at the cluster's contract version.
pub fn capi_resource(
    ctx: &Context,
    group: &str,
    kind: &str,
    plural: &str,
) -> kube::api::ApiResource {
    let version = ctx.spec.capi.as_str();
    kube::api::ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Checks the cached spec into the generator's checked type.
pub fn checked(
    cfg: &AgentConfig,
    cached: &cache::CachedSpec,
) -> Result<CheckedCluster, PhaseError> {
    let meta = fledge_generator::spec::RequestMeta {
        name: cfg.cluster.name.clone(),
        namespace: Some(cfg.cluster.namespace.clone()),
        labels: Default::default(),
    };
    fledge_generator::spec::validate(&meta, &cached.spec).map_err(|p| PhaseError::Spec {
        generation: cached.generation,
        problems: p
            .0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    })
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
    /// Root prefix.
    pub root: PathBuf,
    /// State directory (rooted).
    pub state_dir: PathBuf,
    /// The management client.
    pub management: kube::Client,
    /// Counts the local client's requests.
    pub local_counts: Arc<Counts>,
    /// Woken when a new spec is cached.
    pub spec_changed: Arc<Notify>,
    /// Woken when an attempt changed the journal, for the status.
    pub journal_changed: Arc<Notify>,
    /// Progress sink.
    pub report: Arc<dyn Report>,
    /// Upper bound of the retry backoff.
    pub backoff_cap: Duration,
    /// The add-on layers' health timers, kept across attempts.
    pub layer_clock: addons::LayerClock,
}

impl Runner {
    /// Runs phases until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = self.backoff();
        let mut waits = WaitBackoff::default();
        let mut local: Option<kube::Client> = None;
        // Whether this process has made sure the agent's finalizer is on its FledgeCluster.
        let mut held = false;
        let mut copy = ClusterCopy::default();
        while !*stop.borrow() {
            let delay = match self.attempt(&mut local, &mut held, &mut copy).await {
                Attempt::Progressed => {
                    backoff = self.backoff();
                    waits.reset();
                    Duration::ZERO
                }
                Attempt::Wait(d) => {
                    waits.reset();
                    d
                }
                Attempt::Waiting(why) => waits.next(&why),
                Attempt::Failed => backoff.next().unwrap_or(self.backoff_cap),
            };
            if delay.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.spec_changed.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// How often `Steady` reconciles without a new spec.
    fn resync(&self) -> Duration {
        Duration::from_secs(self.cfg.resync_seconds.unwrap_or(300).max(1))
    }

    fn backoff(&self) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(self.backoff_cap)
            .with_jitter()
            .without_max_times()
            .build()
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
        let holder = self
            .cfg
            .node_name
            .clone()
            .unwrap_or_else(crate::daemon::leader::node_identity);
        match crate::state::clusterstate::publish(&client, &self.state_dir, &holder, &mut copy.last)
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

    /// Renews the management token when it is due ([`crate::daemon::renew`]); a failure is logged and
    /// tried again at the next attempt (the token stays valid for a fifth of its lifetime).
    async fn renew_token(&self) {
        let names = fledge_generator::management::Names::new(&self.cfg.cluster.name);
        let file = crate::config::rooted(&self.root, &self.cfg.management.token_file);
        match crate::daemon::renew::renew_if_due(
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
                tracing::error!(error = %e, lock = %crate::state::runlock::path(&self.state_dir).display(), "cannot take the run lock; no phase runs");
                return Attempt::Failed;
            }
        };
        if !self.take_cluster_copy(local, copy).await {
            return Attempt::Failed;
        }
        self.renew_token().await;
        let attempt = self.attempt_locked(local, held).await;
        if copy.taken {
            self.publish_cluster_copy(local, copy).await;
        }
        attempt
    }

    async fn attempt_locked(&self, local: &mut Option<kube::Client>, held: &mut bool) -> Attempt {
        let mut journal = match Journal::load(&self.state_dir) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the journal; no phase runs");
                return Attempt::Failed;
            }
        };
        let deleting = unpivoted::deletion_requested(&self.state_dir);
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
        let cached = match cache::load(&self.state_dir) {
            Ok(Some(c)) => c,
            // Nothing to act on before the first spec arrives.
            Ok(None) | Err(_) => return Attempt::Wait(Duration::from_secs(3600)),
        };
        let span = tracing::info_span!("phase", cluster = %self.cfg.cluster.name, phase = %phase, generation = cached.generation);
        let _enter = span.enter();
        let result = self.step(local, held, &mut journal, phase, &cached).await;
        // Every failure is journaled (also one before the phase could start, such as an
        // unreadable local kubeconfig); the status is told only when something changed.
        let changed = match &result {
            Ok(step) => step.1,
            Err(e) => journal
                .record_if_changed(
                    &self.state_dir,
                    phase,
                    Outcome::Failed,
                    Some(cached.generation),
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
                Attempt::Wait(self.resync())
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

    async fn step(
        &self,
        local: &mut Option<kube::Client>,
        held: &mut bool,
        journal: &mut Journal,
        phase: Phase,
        cached: &cache::CachedSpec,
    ) -> Result<(Step, bool), PhaseError> {
        let generation = Some(cached.generation);
        let spec = checked(&self.cfg, cached)?;
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
            generation: cached.generation,
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
        let cfg = format!(
            "apiVersion: fledge.dev/v1alpha1\nkind: AgentConfig\ncluster:\n  name: c\n  namespace: fleet\nmanagement:\n  server: https://127.0.0.1:1\n  tokenFile: /t\n  caFile: /ca\nstateDir: {}\nmetricsAddress: \"127.0.0.1:9440\"\n",
            state.display()
        );
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, cfg).unwrap();
        let runner = Runner {
            cfg: AgentConfig::load(&path).unwrap(),
            root: PathBuf::from("/"),
            state_dir: state.clone(),
            management: kube::Client::try_from(kube::Config::new(
                "https://127.0.0.1:1".parse().unwrap(),
            ))
            .unwrap(),
            local_counts: Arc::new(Counts::default()),
            spec_changed: Arc::new(Notify::new()),
            journal_changed: Arc::new(Notify::new()),
            report: Arc::new(NoReport),
            backoff_cap: Duration::from_secs(1),
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
        let a = runner
            .attempt(&mut local, &mut finalizer, &mut ClusterCopy::default())
            .await;
        assert!(matches!(a, Attempt::Wait(d) if d == POLL));
        assert_eq!(
            std::fs::read(crate::state::journal::path(&state)).unwrap(),
            before
        );
        // The attempt held the lock only while it ran; with the lock free it runs again.
        drop(held);
        let a = runner
            .attempt(&mut local, &mut finalizer, &mut ClusterCopy::default())
            .await;
        assert!(matches!(a, Attempt::Wait(d) if d == Duration::from_secs(3600)));
        assert!(
            crate::state::runlock::try_acquire(&state)
                .unwrap()
                .is_some()
        );
    }

    fn journal(entries: &[(Phase, Outcome)]) -> Journal {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::load(dir.path()).unwrap();
        for (p, o) in entries {
            j.record(dir.path(), *p, *o, Some(1), None).unwrap();
        }
        j
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

    #[test]
    fn the_core_layers_come_before_the_providers() {
        use Outcome::*;
        assert_eq!(next(&journal(&[]), false), Phase::CoreLayers);
        assert_eq!(
            next(&journal(&[(Phase::CoreLayers, Succeeded)]), false),
            Phase::ProvidersInstalled
        );
        // An agent upgraded on a running cluster goes on in Steady, which reconciles the core
        // layers too.
        let upgraded = [
            (Phase::ProvidersInstalled, Succeeded),
            (Phase::Pivoted, Succeeded),
            (Phase::ScaledOut, Succeeded),
            (Phase::AddonsReady, Succeeded),
            (Phase::Steady, Succeeded),
        ];
        assert_eq!(next(&journal(&upgraded), false), Phase::Steady);
        let midway = [(Phase::ProvidersInstalled, Succeeded)];
        assert_eq!(next(&journal(&midway), false), Phase::Pivoted);
    }

    #[test]
    fn a_deletion_finishes_the_pivot_then_unpivots_then_releases() {
        use Outcome::*;
        let setup = [
            (Phase::ProvidersInstalled, Succeeded),
            (Phase::Pivoted, Succeeded),
            (Phase::ScaledOut, Succeeded),
            (Phase::AddonsReady, Succeeded),
            (Phase::Steady, Succeeded),
        ];
        assert_eq!(next(&journal(&setup), false), Phase::Steady);
        assert_eq!(next(&journal(&setup), true), Phase::Unpivoted);
        let mut j = setup.to_vec();
        j.push((Phase::Unpivoted, Failed));
        assert_eq!(next(&journal(&j), true), Phase::Unpivoted);
        // Unpivoted by hand (no deletion): the runner stays there and runs nothing.
        assert_eq!(next(&journal(&j), false), Phase::Unpivoted);
        j.push((Phase::Unpivoted, Succeeded));
        assert_eq!(next(&journal(&j), true), Phase::Released);
        // A pivot under way is finished before the unpivot; one never started is not run.
        let midway = [
            (Phase::ProvidersInstalled, Succeeded),
            (Phase::Pivoted, Failed),
        ];
        assert_eq!(next(&journal(&midway), true), Phase::Pivoted);
        let early = [(Phase::ProvidersInstalled, Started)];
        assert_eq!(next(&journal(&early), true), Phase::Unpivoted);
    }

    #[test]
    fn a_deletion_request_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!unpivoted::deletion_requested(dir.path()));
        assert!(unpivoted::request_deletion(dir.path(), "u", "2026-12-03T00:00:00Z").unwrap());
        assert!(!unpivoted::request_deletion(dir.path(), "u", "later").unwrap());
        assert!(unpivoted::deletion_requested(dir.path()));
        let text = std::fs::read_to_string(unpivoted::request_path(dir.path())).unwrap();
        assert!(text.contains("2026-12-03T00:00:00Z"), "{text}");
    }
}
