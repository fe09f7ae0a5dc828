//! `fledge-agent run`: load state, tell systemd READY, then run three things until the stop
//! signal: the spec sync ([`crate::daemon::spec_sync`]: the cached spec in step with the management
//! plane, status reported when reachable, the cache used when not), the phase runner
//! ([`crate::phases`], on a thread of its own), and `/healthz` + `/metrics` on loopback
//! ([`crate::daemon::metrics`]). Feeds systemd's watchdog while the sync beats.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use tokio::sync::watch;

use crate::clients::{CountLayer, Counts};
use crate::config::{AgentConfig, ConfigError};
use crate::daemon::metrics::{Shared, serve_metrics};
use crate::daemon::notify::Notifier;
use crate::daemon::spec_sync::Sync;
use crate::state::cache;
use crate::state::journal::{Journal, JournalError, Outcome, Phase, chain};

/// Errors that stop the agent (everything else is retried).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration or credentials files.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The journal cannot be read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The metrics address cannot be bound.
    #[error("cannot listen on {address}")]
    Listen {
        /// Address.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// One of the agent's tasks ended (or panicked) before the stop signal: the agent exits
    /// non-zero so that systemd restarts it, rather than run on without it.
    #[error("the agent's {task} task ended unexpectedly: {why}")]
    TaskEnded {
        /// Which task.
        task: &'static str,
        /// How it ended.
        why: String,
    },
    /// The management client cannot be built.
    #[error("cannot build the management client for {server}: {message}")]
    Client {
        /// URL.
        server: String,
        /// Why.
        message: String,
    },
}

/// A sync task silent for longer is wedged: the watchdog stops being fed, and systemd restarts
/// the agent once `WatchdogSec` passes. Longer than any single request may take (connect 5 s,
/// read 30 s).
pub const SYNC_STALL: Duration = Duration::from_secs(90);

/// Whether to feed systemd's watchdog: only while every task runs (`all_alive`) and the
/// spec-sync task beats.
pub fn watchdog_feeds(
    all_alive: bool,
    beat: Option<std::time::Instant>,
    now: std::time::Instant,
) -> bool {
    all_alive && beat.is_some_and(|b| now.saturating_duration_since(b) < SYNC_STALL)
}

/// The agent's long-running tasks, by name: whether each still runs. A task's [`TaskGuard`]
/// marks it ended when the task returns or panics, and records it in the snapshot, so that the
/// watchdog stops being fed and `/healthz` fails.
#[derive(Debug, Clone, Default)]
pub struct Tasks(Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, bool>>>);

impl Tasks {
    /// Registers `task` as running; the guard marks it ended when dropped.
    pub fn start(&self, task: &'static str, shared: &Shared) -> TaskGuard {
        if let Ok(mut m) = self.0.lock() {
            m.insert(task, true);
        }
        TaskGuard {
            tasks: self.clone(),
            shared: shared.clone(),
            task,
        }
    }

    /// True while every registered task runs.
    pub fn all_alive(&self) -> bool {
        self.0
            .lock()
            .map(|m| m.values().all(|a| *a))
            .unwrap_or(false)
    }
}

/// Held by a running task (see [`Tasks`]).
#[derive(Debug)]
pub struct TaskGuard {
    tasks: Tasks,
    shared: Shared,
    task: &'static str,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.tasks.0.lock() {
            m.insert(self.task, false);
        }
        let task = self.task;
        self.shared.update(|s| s.tasks_ended.push(task));
    }
}

/// The agent's tasks, spawned on its one runtime and named: one supervises them, and one
/// shutdown path waits for them. Dropped, it aborts what still runs.
pub struct Running {
    set: tokio::task::JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
    /// The agent's span (its cluster): each task's span is a child of it.
    span: tracing::Span,
}

impl Running {
    /// Tasks whose spans are children of `span`.
    pub fn new(span: tracing::Span) -> Self {
        Running {
            set: tokio::task::JoinSet::new(),
            names: Default::default(),
            span,
        }
    }

    /// Spawns `task` as `name`, in a span of its own (`task = name`).
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        use tracing::Instrument;
        let span = tracing::info_span!(parent: &self.span, "task", task = name);
        let handle = self.set.spawn(task.instrument(span));
        self.names.insert(handle.id(), name);
    }

    /// Waits for `shutdown`, or for the first task to end before it. `Ok` on shutdown;
    /// [`RunError::TaskEnded`] naming the task, and whether it returned or panicked, otherwise.
    pub async fn supervise(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        tokio::select! {
            () = shutdown => Ok(()),
            Some(ended) = self.set.join_next_with_id() => {
                let (id, why) = match ended {
                    Ok((id, ())) => (id, "it returned".to_string()),
                    Err(e) if e.is_panic() => (e.id(), format!("it panicked: {}", panic_message(e.into_panic()))),
                    Err(e) => (e.id(), e.to_string()),
                };
                Err(RunError::TaskEnded {
                    task: self.names.get(&id).copied().unwrap_or("unnamed"),
                    why,
                })
            }
        }
    }

    /// Waits until every task has ended.
    pub async fn finish(&mut self) {
        while self.set.join_next().await.is_some() {}
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// How to run (seams for tests: the root for credential files and the watchdog interval).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Prefix for the token and CA paths (`/` on a node).
    pub root: PathBuf,
    /// Watchdog interval; from `WATCHDOG_USEC` when `None`.
    pub watchdog: Option<Duration>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            root: PathBuf::from("/"),
            watchdog: Notifier::watchdog_interval(),
        }
    }
}

/// A client for the management plane from the agent's token and CA files.
pub fn management_client(cfg: &AgentConfig, opts: &RunOptions) -> Result<kube::Client, RunError> {
    management_client_counted(cfg, opts, Arc::default())
}

/// The same, counting its requests into `counts`.
pub fn management_client_counted(
    cfg: &AgentConfig,
    opts: &RunOptions,
    counts: Arc<Counts>,
) -> Result<kube::Client, RunError> {
    let bad = |message: String| RunError::Client {
        server: cfg.management.server.clone(),
        message,
    };
    let uri: http::Uri = cfg
        .management
        .server
        .parse()
        .map_err(|e| bad(format!("{e}")))?;
    let mut config = kube::Config::new(uri);
    config.root_cert_file = Some(crate::config::rooted(&opts.root, &cfg.management.ca_file));
    config.auth_info.token_file = Some(
        crate::config::rooted(&opts.root, &cfg.management.token_file)
            .display()
            .to_string(),
    );
    config.default_namespace = cfg.cluster.namespace.clone();
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(330));
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(|e| bad(e.to_string()))?
        .with_layer(&CountLayer::new(counts))
        .build())
}

/// This agent's side of the leader election ([`crate::daemon::leader`]), kept by one task.
struct Election {
    identity: String,
    kubeconfig: PathBuf,
    counts: Arc<Counts>,
    elector: Option<crate::daemon::leader::Elector>,
    shared: Shared,
    leading: watch::Sender<bool>,
    /// While leading: when the Lease was last renewed.
    renewed: Option<std::time::Instant>,
    /// The local client the election uses.
    local: Option<kube::Client>,
    /// Where a follower takes the leader's renewed management token from, and to:
    /// (namespace, Secret in the local cluster, token file).
    token: (String, String, PathBuf),
    /// When a follower last looked at that Secret.
    token_looked: Option<std::time::Instant>,
}

impl Election {
    /// One round. False when this agent led and no longer does: it must stop (and restart as
    /// a follower), since its phases may be mid-way.
    async fn round(&mut self) -> bool {
        if self.elector.is_none() {
            match crate::clients::local_client(&self.kubeconfig, self.counts.clone()).await {
                Ok(local) => {
                    self.local = Some(local.clone());
                    self.elector = Some(crate::daemon::leader::Elector::new(
                        local,
                        self.identity.clone(),
                        crate::daemon::leader::LEASE_DURATION,
                    ))
                }
                Err(e) => {
                    tracing::debug!(error = %chain(&e), "no local cluster yet for the leader election");
                    return true;
                }
            }
        }
        let Some(elector) = self.elector.as_mut() else {
            return true;
        };
        let round = elector.round().await;
        let was = self.shared.snapshot().following.clone();
        match round {
            Ok(None) => {
                if was != Some(None) {
                    tracing::info!(me = %self.identity, "leading: this agent holds the cluster's leader Lease");
                }
                self.renewed = Some(std::time::Instant::now());
                self.shared.update(|s| s.following = Some(None));
                let _ = self.leading.send(true);
                true
            }
            Ok(Some(holder)) => {
                if self.renewed.is_some() {
                    tracing::error!(%holder, "lost the leader Lease; stopping so that this agent restarts as a follower");
                    return false;
                }
                if was.as_ref().and_then(|f| f.as_deref()) != Some(holder.as_str()) {
                    tracing::info!(%holder, me = %self.identity, "following: another control-plane node's agent leads");
                }
                self.shared.update(|s| s.following = Some(Some(holder)));
                self.take_token().await;
                true
            }
            Err(e) => {
                if let Some(at) = self.renewed
                    && at.elapsed() >= crate::daemon::leader::RENEW_DEADLINE
                {
                    tracing::error!(error = %chain(&e), "cannot renew the leader Lease; stopping so that this agent restarts as a follower");
                    return false;
                }
                tracing::warn!(error = %chain(&e), "leader election: cannot read or write the Lease in the local cluster");
                true
            }
        }
    }
}

impl Election {
    /// A follower takes the leader's renewed management token from the local cluster
    /// ([`crate::clients::token::take_from_cluster`]), at most every 30 s.
    async fn take_token(&mut self) {
        if self
            .token_looked
            .is_some_and(|t| t.elapsed() < Duration::from_secs(30))
        {
            return;
        }
        self.token_looked = Some(std::time::Instant::now());
        let Some(local) = &self.local else {
            return;
        };
        let (ns, secret, file) = &self.token;
        match crate::clients::token::take_from_cluster(local, ns, secret, file).await {
            Ok(Some(c)) => tracing::info!(
                expires = c.expires,
                "took the leader's renewed management token from the local cluster"
            ),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %chain(&e), "cannot read the agents' token copy yet")
            }
        }
    }
}

/// Runs the agent until `shutdown` resolves; in-flight work (a store, a status update) finishes.
pub async fn run<F: Future<Output = ()>>(
    cfg: AgentConfig,
    opts: RunOptions,
    shared: Shared,
    shutdown: F,
) -> Result<(), RunError> {
    cfg.check_credentials(&opts.root)?;
    let state_dir = crate::config::rooted(&opts.root, &cfg.state_dir);
    // A corrupt journal is set aside (its path logged) and the phases start from the first:
    // each re-checks the cluster, so nothing is redone that is done.
    let (mut journal, set_aside) = Journal::load_recovering(&state_dir)?;
    if set_aside.is_some() {
        shared.error("journal_corrupt");
    }
    if !journal.done(Phase::Installed) {
        journal.record(&state_dir, Phase::Installed, Outcome::Succeeded, None, None)?;
    }
    let cached = match cache::load(&state_dir) {
        Ok(c) => c,
        Err(e) => {
            // Keep the file for inspection, take no action from it, and fetch a fresh copy.
            tracing::error!(error = %chain(&e), "cached spec unusable; re-fetching, no action taken from it");
            shared.error("cache_corrupt");
            None
        }
    };
    shared.update(|s| {
        s.phase = journal.current();
        s.spec_generation = cached.as_ref().map(|c| c.generation);
    });

    let listener = tokio::net::TcpListener::bind(&cfg.metrics_address)
        .await
        .map_err(|source| RunError::Listen {
            address: cfg.metrics_address.clone(),
            source,
        })?;
    let notifier = Arc::new(Notifier::from_env());
    notifier.send(&format!(
        "READY=1\nSTATUS=phase {}",
        journal.current().map(|p| p.to_string()).unwrap_or_default()
    ));
    tracing::info!(cluster = %cfg.cluster.name, namespace = %cfg.cluster.namespace, phase = ?journal.current(), "agent started");

    let (stop_tx, stop_rx) = watch::channel(false);
    // Every long-running task holds a guard: when one ends or panics, the watchdog stops being
    // fed, `/healthz` fails, and (below) the agent exits non-zero for systemd to restart it.
    let tasks = Tasks::default();
    let mut running = Running::new(tracing::info_span!(
        "agent",
        cluster = %cfg.cluster.name,
        namespace = %cfg.cluster.namespace
    ));
    {
        let guard = tasks.start("metrics", &shared);
        let serve = serve_metrics(listener, shared.clone(), stop_rx.clone());
        running.spawn("metrics", async move {
            let _guard = guard;
            serve.await;
        });
    }
    shared.update(|s| s.sync_beat = Some(std::time::Instant::now()));
    let sync_guard = tasks.start("spec sync", &shared);
    let runner_guard = tasks.start("phase runner", &shared);
    if let Some(every) = opts.watchdog {
        let (shared, notifier, mut stop) = (shared.clone(), notifier.clone(), stop_rx.clone());
        let tasks = tasks.clone();
        running.spawn("watchdog", async move {
            let mut tick = tokio::time::interval(every);
            let mut silent = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if watchdog_feeds(tasks.all_alive(), shared.snapshot().sync_beat, std::time::Instant::now()) {
                            notifier.send("WATCHDOG=1");
                            shared.update(|s| s.watchdog_pings += 1);
                            silent = false;
                        } else if !silent {
                            silent = true;
                            tracing::error!("a task of the agent is not running, or the spec sync is wedged; no longer feeding the watchdog, so systemd restarts the agent");
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
        });
    }
    let (management_counts, local_counts) = (Arc::<Counts>::default(), Arc::<Counts>::default());
    shared.update(|s| {
        s.requests = Some((management_counts.clone(), local_counts.clone()));
        s.state_dir = Some(state_dir.clone());
    });
    // Only the leader acts ([`crate::daemon::leader`]): the phase runner starts once this agent holds
    // the cluster's Lease, and a follower writes no status; the spec sync runs on every agent,
    // so a follower that takes over has the spec already. The first round runs before the
    // sync starts, so that a follower never reports as if it led.
    let identity = cfg
        .node_name
        .clone()
        .unwrap_or_else(crate::daemon::leader::node_identity);
    let lease_kubeconfig = crate::config::rooted(&opts.root, &cfg.local_kubeconfig());
    let (leading_tx, leading_rx) = watch::channel(false);
    let mut election = Election {
        identity: identity.clone(),
        kubeconfig: lease_kubeconfig,
        counts: local_counts.clone(),
        elector: None,
        shared: shared.clone(),
        leading: leading_tx,
        renewed: None,
        local: None,
        token: (
            cfg.cluster.namespace.clone(),
            fledge_generator::management::Names::new(&cfg.cluster.name).agent_token,
            crate::config::rooted(&opts.root, &cfg.management.token_file),
        ),
        token_looked: None,
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), election.round()).await;
    {
        let guard = tasks.start("leader election", &shared);
        let mut stop = stop_rx.clone();
        running.spawn("leader election", async move {
            let _guard = guard;
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(crate::daemon::leader::RETRY_PERIOD) => {}
                }
                if !election.round().await {
                    return;
                }
            }
        });
    }
    // One management client (its requests counted) for the spec sync and the runner.
    let client = management_client_counted(&cfg, &opts, management_counts)?;
    // The accepted spec goes from the spec sync to the runner over a channel, checked once.
    let specs =
        tokio::sync::watch::Sender::new(cached.map(|c| crate::phases::Accepted::new(&cfg, c)));
    let wake = Arc::new(tokio::sync::Notify::new());
    let journal_changed = Arc::new(tokio::sync::Notify::new());
    // The phases run beside the spec sync as a task of their own: a long phase never holds a
    // new spec back.
    {
        let (cfg, root, state_dir) = (cfg.clone(), opts.root.clone(), state_dir.clone());
        let (specs, wake, journal_changed) = (specs.clone(), wake.clone(), journal_changed.clone());
        let (report, stop) = (Arc::new(shared.clone()), stop_rx.clone());
        let management = client.clone();
        running.spawn("phase runner", async move {
            let _guard = runner_guard;
            // Only the leader runs the phases.
            let mut leading = leading_rx;
            let mut stopped = stop.clone();
            loop {
                if *leading.borrow() {
                    break;
                }
                tokio::select! {
                    r = leading.changed() => if r.is_err() { return },
                    _ = stopped.changed() => return,
                }
            }
            crate::phases::runner::Runner {
                cfg,
                identity,
                root,
                state_dir,
                management,
                local_counts,
                specs,
                wake,
                journal_changed,
                report,
                layer_clock: Default::default(),
            }
            .run(stop)
            .await
        });
    }
    // The status written before a restart keeps its conditions' transition times.
    let last_status = std::fs::read(state_dir.join(crate::state::layout::STATUS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let sync = Sync {
        cfg: cfg.clone(),
        state_dir,
        api: Api::namespaced(client, &cfg.cluster.namespace),
        shared: shared.clone(),
        notifier: notifier.clone(),
        journal,
        specs,
        refused: None,
        last_status,
        wake,
        journal_changed,
    };
    running.spawn("spec sync", async move {
        let _guard = sync_guard;
        sync.run(stop_rx).await;
    });
    let outcome = running.supervise(shutdown).await;
    match &outcome {
        Ok(()) => tracing::info!("stopping: finishing in-flight work"),
        Err(e) => {
            tracing::error!(error = %chain(e), "stopping: a task ended; exiting non-zero so that systemd restarts the agent")
        }
    }
    notifier.send("STOPPING=1");
    let _ = stop_tx.send(true);
    // A request in flight (a watch, a read with a long timeout) must not hold the stop for
    // longer than systemd waits: after the grace period the agent stops anyway. State files are
    // written atomically, so nothing is left half-written.
    let grace = cfg.shutdown_grace();
    if tokio::time::timeout(grace, running.finish()).await.is_err() {
        tracing::warn!(
            seconds = grace.as_secs(),
            "in-flight work did not finish within the shutdown grace period; stopping anyway"
        );
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_watchdog_is_fed_only_while_the_sync_task_runs_and_beats() {
        let now = Instant::now();
        assert!(watchdog_feeds(true, Some(now), now));
        assert!(watchdog_feeds(true, now.checked_sub(SYNC_STALL / 2), now));
        // Wedged: no beat for longer than SYNC_STALL.
        assert!(!watchdog_feeds(true, now.checked_sub(SYNC_STALL), now));
        // A task ended (returned or panicked).
        assert!(!watchdog_feeds(false, Some(now), now));
        assert!(!watchdog_feeds(true, None, now));
    }

    #[tokio::test]
    async fn a_task_that_panics_ends_supervision_with_an_error_naming_it() {
        let shared = Shared::default();
        let tasks = Tasks::default();
        let (g1, g2) = (
            tasks.start("spec sync", &shared),
            tasks.start("phase runner", &shared),
        );
        assert!(tasks.all_alive());
        let mut running = Running::new(tracing::Span::none());
        running.spawn("spec sync", async move {
            let _g = g1;
            std::future::pending::<()>().await
        });
        running.spawn("phase runner", async move {
            let _g = g2;
            tokio::time::sleep(Duration::from_millis(50)).await;
            panic!("index out of range");
        });
        let e = running.supervise(std::future::pending()).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "the agent's phase runner task ended unexpectedly: it panicked: index out of range"
        );
        // The watchdog stops being fed, and /healthz says which task ended.
        assert!(!tasks.all_alive());
        assert_eq!(shared.snapshot().tasks_ended, vec!["phase runner"]);
        drop(running);
    }

    #[tokio::test]
    async fn a_task_that_returns_early_ends_supervision_and_shutdown_does_not() {
        let mut running = Running::new(tracing::Span::none());
        running.spawn("metrics", async {});
        let e = running.supervise(std::future::pending()).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "the agent's metrics task ended unexpectedly: it returned"
        );
        let mut running = Running::new(tracing::Span::none());
        running.spawn("metrics", std::future::pending::<()>());
        running.supervise(async {}).await.unwrap();
    }
}
