//! `fledge-agent run`: load state, tell systemd READY, then keep the cached spec in step with the
//! management plane (a watch plus a periodic resync), report status when reachable, and keep
//! running from the cache when it is not. `/healthz` and `/metrics` are served on loopback.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fledge_generator::spec::{Condition, FledgeCluster, FledgeClusterStatus};
use futures::{StreamExt, TryStreamExt};
use kube::Api;
use kube::api::{Patch, PatchParams, WatchEvent, WatchParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::cache::{self, CachedSpec, Decision};
use crate::config::{AgentConfig, ConfigError};
use crate::journal::{Journal, JournalError, Outcome, Phase};
use crate::notify::Notifier;
use crate::pivot::count::{CountLayer, Counts};

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
    /// The management client cannot be built.
    #[error("cannot build the management client for {server}: {message}")]
    Client {
        /// URL.
        server: String,
        /// Why.
        message: String,
    },
}

/// What the agent knows, shared with the metrics endpoint and tests.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Latest succeeded phase.
    pub phase: Option<Phase>,
    /// Generation of the cached spec.
    pub spec_generation: Option<i64>,
    /// Unix time of the last successful sync with the management plane.
    pub last_sync: Option<i64>,
    /// Whether the last request to the management plane succeeded.
    pub reachable: bool,
    /// Errors by kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// Watchdog notifications sent.
    pub watchdog_pings: u64,
    /// A status update waits for the management plane.
    pub status_pending: bool,
    /// Status updates delivered.
    pub status_sent: u64,
    /// When the spec-sync task last showed it is alive (it beats every few seconds, also while
    /// it waits on a watch or a back-off).
    pub sync_beat: Option<std::time::Instant>,
    /// Per phase run by the runner: its latest state (`Started`, `Progressing`, `Waiting`,
    /// `Failed`, `Succeeded`) and message.
    pub phases: BTreeMap<Phase, (String, String)>,
    /// Phase attempts that failed, by phase.
    pub phase_failures: BTreeMap<Phase, u64>,
    /// Requests sent to the management plane and to the local cluster.
    pub requests: Option<(Arc<Counts>, Arc<Counts>)>,
}

impl crate::phases::Report for Shared {
    fn phase(&self, phase: Phase, state: &str, message: &str) {
        self.update(|s| {
            if state == "Failed" {
                *s.phase_failures.entry(phase).or_default() += 1;
            }
            s.phases
                .insert(phase, (state.to_string(), message.to_string()));
        });
    }
}

/// How often the spec-sync task beats.
const SYNC_BEAT: Duration = Duration::from_secs(5);
/// A sync task silent for longer is wedged: the watchdog stops being fed, and systemd restarts
/// the agent once `WatchdogSec` passes. Longer than any single request may take (connect 5 s,
/// read 30 s).
pub const SYNC_STALL: Duration = Duration::from_secs(90);

/// Whether to feed systemd's watchdog: only while the spec-sync task runs and beats.
pub fn watchdog_feeds(
    sync_alive: bool,
    beat: Option<std::time::Instant>,
    now: std::time::Instant,
) -> bool {
    sync_alive && beat.is_some_and(|b| now.saturating_duration_since(b) < SYNC_STALL)
}

/// Shared state.
#[derive(Debug, Default, Clone)]
pub struct Shared(Arc<Mutex<Snapshot>>);

impl Shared {
    /// A copy of the current state.
    pub fn snapshot(&self) -> Snapshot {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }
    fn error(&self, kind: &'static str) {
        self.update(|s| *s.errors.entry(kind).or_default() += 1);
    }

    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        let s = self.snapshot();
        let mut out = String::new();
        out.push_str("# HELP fledge_agent_phase The agent's latest completed phase.\n# TYPE fledge_agent_phase gauge\n");
        for p in Phase::ALL {
            out.push_str(&format!(
                "fledge_agent_phase{{phase=\"{p}\"}} {}\n",
                u8::from(s.phase == Some(p))
            ));
        }
        out.push_str("# HELP fledge_agent_spec_generation Generation of the cached spec.\n# TYPE fledge_agent_spec_generation gauge\n");
        out.push_str(&format!(
            "fledge_agent_spec_generation {}\n",
            s.spec_generation.unwrap_or(0)
        ));
        out.push_str("# HELP fledge_agent_last_sync_timestamp_seconds Last successful sync with the management plane.\n# TYPE fledge_agent_last_sync_timestamp_seconds gauge\n");
        out.push_str(&format!(
            "fledge_agent_last_sync_timestamp_seconds {}\n",
            s.last_sync.unwrap_or(0)
        ));
        out.push_str("# HELP fledge_agent_management_reachable 1 when the management plane answered the last request.\n# TYPE fledge_agent_management_reachable gauge\n");
        out.push_str(&format!(
            "fledge_agent_management_reachable {}\n",
            u8::from(s.reachable)
        ));
        out.push_str("# HELP fledge_agent_errors_total Errors by kind.\n# TYPE fledge_agent_errors_total counter\n");
        for (k, v) in &s.errors {
            out.push_str(&format!("fledge_agent_errors_total{{kind=\"{k}\"}} {v}\n"));
        }
        out.push_str("# HELP fledge_agent_phase_failures_total Failed phase attempts (each is retried with backoff).\n# TYPE fledge_agent_phase_failures_total counter\n");
        for (p, v) in &s.phase_failures {
            out.push_str(&format!(
                "fledge_agent_phase_failures_total{{phase=\"{p}\"}} {v}\n"
            ));
        }
        if let Some((m, l)) = &s.requests {
            out.push_str("# HELP fledge_agent_requests_total Requests sent, by cluster.\n# TYPE fledge_agent_requests_total counter\n");
            out.push_str(&format!(
                "fledge_agent_requests_total{{cluster=\"management\"}} {}\nfledge_agent_requests_total{{cluster=\"local\"}} {}\n",
                m.total(),
                l.total()
            ));
        }
        out.push_str("# HELP fledge_agent_watchdog_pings_total Watchdog notifications sent to systemd.\n# TYPE fledge_agent_watchdog_pings_total counter\n");
        out.push_str(&format!(
            "fledge_agent_watchdog_pings_total {}\n",
            s.watchdog_pings
        ));
        out
    }
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

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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

/// Runs the agent until `shutdown` resolves; in-flight work (a store, a status update) finishes.
pub async fn run<F: Future<Output = ()>>(
    cfg: AgentConfig,
    opts: RunOptions,
    shared: Shared,
    shutdown: F,
) -> Result<(), RunError> {
    cfg.check_credentials(&opts.root)?;
    let state_dir = crate::config::rooted(&opts.root, &cfg.state_dir);
    let mut journal = Journal::load(&state_dir)?;
    if !journal.done(Phase::Installed) {
        journal.record(&state_dir, Phase::Installed, Outcome::Succeeded, None, None)?;
    }
    let cached = match cache::load(&state_dir) {
        Ok(c) => c,
        Err(e) => {
            // Keep the file for inspection, take no action from it, and fetch a fresh copy.
            tracing::error!(error = %e, "cached spec unusable; re-fetching, no action taken from it");
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
    let metrics_task = tokio::spawn(serve_metrics(listener, shared.clone(), stop_rx.clone()));
    // Set while the spec-sync task runs; a guard clears it when the task ends, panics included.
    let sync_alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
    shared.update(|s| s.sync_beat = Some(std::time::Instant::now()));
    let watchdog_task = opts.watchdog.map(|every| {
        let (shared, notifier, mut stop) = (shared.clone(), notifier.clone(), stop_rx.clone());
        let alive = sync_alive.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut silent = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let alive = alive.load(std::sync::atomic::Ordering::SeqCst);
                        if watchdog_feeds(alive, shared.snapshot().sync_beat, std::time::Instant::now()) {
                            notifier.send("WATCHDOG=1");
                            shared.update(|s| s.watchdog_pings += 1);
                            silent = false;
                        } else if !silent {
                            silent = true;
                            tracing::error!("the spec-sync task is not running or is wedged; no longer feeding the watchdog, so systemd restarts the agent");
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
        })
    });
    let (management_counts, local_counts) = (Arc::<Counts>::default(), Arc::<Counts>::default());
    shared.update(|s| s.requests = Some((management_counts.clone(), local_counts.clone())));
    let client = management_client_counted(&cfg, &opts, management_counts.clone())?;
    let spec_changed = Arc::new(tokio::sync::Notify::new());
    let journal_changed = Arc::new(tokio::sync::Notify::new());
    // The phases run beside the spec sync, on a thread of their own with its own runtime and
    // clients: a long phase never holds a new spec back, and the pivot engine's futures (which
    // borrow across awaits in ways `tokio::spawn`'s bounds cannot express) need not be `Send`.
    let runner_task = {
        let (cfg, root, state_dir) = (cfg.clone(), opts.root.clone(), state_dir.clone());
        let (spec_changed, journal_changed) = (spec_changed.clone(), journal_changed.clone());
        let (report, stop) = (Arc::new(shared.clone()), stop_rx.clone());
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the phase runner");
                    return;
                }
            };
            rt.block_on(async move {
                let management = match management_client_counted(&cfg, &opts, management_counts) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the phase runner");
                        return;
                    }
                };
                let backoff_cap = Duration::from_secs(cfg.backoff_cap_seconds.unwrap_or(60).max(1));
                crate::phases::Runner {
                    cfg,
                    root,
                    state_dir,
                    management,
                    local_counts,
                    spec_changed,
                    journal_changed,
                    report,
                    backoff_cap,
                }
                .run(stop)
                .await
            })
        })
    };
    // The status written before a restart keeps its conditions' transition times.
    let last_status = std::fs::read(state_dir.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let sync = Sync {
        cfg: cfg.clone(),
        state_dir,
        api: Api::namespaced(client, &cfg.cluster.namespace),
        shared: shared.clone(),
        notifier: notifier.clone(),
        journal,
        cached,
        refused: None,
        last_status,
        spec_changed,
        journal_changed,
    };
    struct Alive(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Alive {
        fn drop(&mut self) {
            self.0.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let guard = Alive(sync_alive.clone());
    let sync_task = tokio::spawn(async move {
        let _guard = guard;
        sync.run(stop_rx).await;
    });
    shutdown.await;
    tracing::info!("stopping: finishing in-flight work");
    notifier.send("STOPPING=1");
    let _ = stop_tx.send(true);
    // A request in flight (a watch, a read with a long timeout) must not hold the stop for
    // longer than systemd waits: after the grace period the agent stops anyway. State files are
    // written atomically, so nothing is left half-written.
    let grace = Duration::from_secs(cfg.shutdown_grace_seconds.unwrap_or(20));
    let both = async {
        let _ = sync_task.await;
        let _ = runner_task.await;
    };
    if tokio::time::timeout(grace, both).await.is_err() {
        tracing::warn!(
            seconds = grace.as_secs(),
            "in-flight work did not finish within the shutdown grace period; stopping anyway"
        );
    }
    let _ = metrics_task.await;
    if let Some(t) = watchdog_task {
        let _ = t.await;
    }
    Ok(())
}

/// The kind of a failed management-plane request, as counted in the metrics.
pub fn error_kind(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => "unauthorized",
        kube::Error::Api(s) if s.code == 404 => "not_found",
        kube::Error::Api(_) => "api",
        kube::Error::SerdeError(_) => "decode",
        _ => "unreachable",
    }
}

/// Validates a fetched spec with the generator's own rules (what `fledge validate` says).
fn check_spec(obj: &FledgeCluster) -> Result<(), Vec<String>> {
    let meta = fledge_generator::spec::RequestMeta {
        name: obj.metadata.name.clone().unwrap_or_default(),
        namespace: obj.metadata.namespace.clone(),
        labels: obj.metadata.labels.clone().unwrap_or_default(),
    };
    fledge_generator::spec::validate(&meta, &obj.spec)
        .map(|_| ())
        .map_err(|p| p.0.iter().map(ToString::to_string).collect())
}

struct Sync {
    cfg: AgentConfig,
    state_dir: PathBuf,
    api: Api<FledgeCluster>,
    shared: Shared,
    notifier: Arc<Notifier>,
    journal: Journal,
    cached: Option<CachedSpec>,
    /// Why the latest offered spec was refused (condition reason, message).
    refused: Option<(&'static str, String)>,
    /// The status last built, for condition transition times.
    last_status: Option<FledgeClusterStatus>,
    /// Tells the phase runner a new spec is cached.
    spec_changed: Arc<tokio::sync::Notify>,
    /// The phase runner wrote the journal: report it.
    journal_changed: Arc<tokio::sync::Notify>,
}

impl Sync {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let cap = Duration::from_secs(self.cfg.backoff_cap_seconds.unwrap_or(60).max(1));
        let resync = self.cfg.resync_seconds.unwrap_or(300).clamp(1, 290) as u32;
        let mut delay = Duration::from_millis(500);
        let mut beat = tokio::time::interval(SYNC_BEAT);
        while !*stop.borrow() {
            self.beat();
            // The resync: read the object, accept it, and send status (also the heartbeat).
            let resume_from = match self.api.get_opt(&self.cfg.cluster.name).await {
                Ok(Some(obj)) => {
                    self.reachable(true);
                    self.accept(&obj);
                    self.push_status().await;
                    obj.metadata.resource_version.clone()
                }
                Ok(None) => {
                    self.reachable(true);
                    tracing::warn!(name = %self.cfg.cluster.name, "FledgeCluster not found on the management plane; running from the cache");
                    self.shared.error("not_found");
                    None
                }
                Err(e) => {
                    self.unreachable(&e);
                    None
                }
            };
            if let Some(rv) = resume_from {
                delay = Duration::from_millis(500);
                let wp = WatchParams::default()
                    .fields(&format!("metadata.name={}", self.cfg.cluster.name))
                    .timeout(resync);
                // From the version just read: no replay of what was already handled.
                match self.api.watch(&wp, &rv).await {
                    Ok(stream) => {
                        let mut stream = stream.boxed();
                        loop {
                            tokio::select! {
                                                            ev = stream.try_next() => match ev {
                            Ok(Some(WatchEvent::Added(obj) | WatchEvent::Modified(obj))) => {
                                                                    // Status updates (ours included) change nothing here;
                                                                    // only a new or refused spec is worth reporting.
                                                                    if self.accept(&obj) != Decision::Unchanged {
                                                                        self.push_status().await;
                                                                    }
                                                                }
                                                                Ok(Some(_)) => {}
                                                                Ok(None) => break, // resync
                                                                Err(e) => { self.unreachable(&e); break; }
                                                            },
                                                            _ = beat.tick() => self.beat(),
                                                            _ = self.journal_changed.notified() => self.push_status().await,
                                                            _ = stop.changed() => return,
                                                        }
                        }
                    }
                    Err(e) => self.unreachable(&e),
                }
                continue;
            }
            // Back off with jitter, up to the cap.
            let jitter = Duration::from_millis(u64::from(std::process::id() ^ now() as u32) % 250);
            self.notifier.send(&format!(
                "STATUS=management unreachable; running from the cached spec; retry in {}s",
                delay.as_secs()
            ));
            let until = tokio::time::Instant::now() + delay + jitter;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    _ = beat.tick() => self.beat(),
                    _ = stop.changed() => return,
                }
            }
            delay = (delay * 2).min(cap);
        }
    }

    fn beat(&self) {
        self.shared
            .update(|s| s.sync_beat = Some(std::time::Instant::now()));
    }

    fn reachable(&self, yes: bool) {
        self.shared.update(|s| {
            s.reachable = yes;
            if yes {
                s.last_sync = Some(now());
            }
        });
    }

    /// A failed request: counted by kind; only a transport failure means "unreachable" (the
    /// plane that answered 401, 404 or with something undecodable is reachable).
    fn unreachable(&self, e: &kube::Error) {
        let kind = error_kind(e);
        tracing::warn!(error = %e, kind, "management plane request failed; running from the cached spec");
        self.shared.error(kind);
        let transport = kind == "unreachable";
        self.shared.update(|s| {
            s.reachable = !transport;
            if !transport {
                s.last_sync = Some(now());
            }
            s.status_pending = true;
        });
    }

    fn accept(&mut self, obj: &FledgeCluster) -> Decision {
        let generation = obj.metadata.generation.unwrap_or(0);
        let uid = obj.metadata.uid.clone().unwrap_or_default();
        let offered = CachedSpec::new(generation, &uid, obj.spec.clone());
        let replaces = obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(cache::REPLACES_UID))
            .map(String::as_str);
        let decision = match check_spec(obj) {
            Err(problems) => Decision::Invalid(problems),
            Ok(()) => cache::decide(self.cached.as_ref(), &offered, replaces),
        };
        self.refused = None;
        match decision.clone() {
            Decision::Unchanged => {}
            Decision::Stale { cached, offered } => {
                tracing::error!(cached, offered, "refusing a spec older than the cached one");
                self.shared.error("stale_generation");
                self.refused = Some((
                    "StaleGeneration",
                    format!("generation {offered} is older than the cached generation {cached}"),
                ));
            }
            Decision::Recreated {
                cached_uid,
                cached,
                offered,
            } => {
                tracing::error!(%cached_uid, cached, offered, "refusing a re-created FledgeCluster whose generation restarted");
                self.shared.error("recreated");
                self.refused = Some((
                    "Recreated",
                    format!(
                        "the FledgeCluster was re-created (generation {offered}, the cached object {cached_uid} was at {cached}); annotate it {}={cached_uid} to replace the cached spec",
                        cache::REPLACES_UID
                    ),
                ));
            }
            Decision::Invalid(problems) => {
                for p in &problems {
                    tracing::error!(generation, problem = %p, "refusing an invalid spec");
                }
                self.shared.error("invalid_spec");
                self.refused = Some(("InvalidSpec", problems.join("; ")));
            }
            Decision::Accept => match cache::store(&self.state_dir, &offered) {
                Ok(()) => {
                    tracing::info!(generation, "accepted spec");
                    self.cached = Some(offered);
                    self.spec_changed.notify_one();
                    if let Err(e) = self.journal.record(
                        &self.state_dir,
                        Phase::SpecFetched,
                        Outcome::Succeeded,
                        Some(generation),
                        None,
                    ) {
                        tracing::error!(error = %e, "cannot record the journal");
                    }
                    let phase = self.journal.current();
                    self.shared.update(|s| {
                        s.spec_generation = Some(generation);
                        s.phase = phase;
                        s.status_pending = true;
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot store the spec");
                    self.shared.error("cache_write");
                }
            },
        }
        decision
    }

    fn status(&self) -> FledgeClusterStatus {
        let mut status = self.status_now();
        // A condition's lastTransitionTime changes only when its status does.
        if let Some(prev) = &self.last_status {
            for c in &mut status.conditions {
                if let Some(p) = prev.conditions.iter().find(|p| p.type_ == c.type_)
                    && p.status == c.status
                {
                    c.last_transition_time = p.last_transition_time.clone();
                }
            }
        }
        status
    }

    fn status_now(&self) -> FledgeClusterStatus {
        let now_s = crate::fsutil::now_rfc3339();
        let cond = |t: &str, ok: bool, reason: &str, message: String| Condition {
            type_: t.to_string(),
            status: if ok { "True" } else { "False" }.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message),
            last_transition_time: Some(now_s.clone()),
        };
        let mut conditions = vec![match &self.cached {
            Some(c) => cond(
                "SpecFetched",
                true,
                "Cached",
                format!(
                    "generation {} cached (sha256 {})",
                    c.generation,
                    &c.sha256[..12]
                ),
            ),
            None => cond("SpecFetched", false, "NoSpec", "no spec cached yet".into()),
        }];
        if let Some((reason, message)) = &self.refused {
            conditions.push(cond("SpecAccepted", false, reason, message.clone()));
        } else if self.cached.is_some() {
            conditions.push(cond(
                "SpecAccepted",
                true,
                "Valid",
                "the latest spec passed validation".into(),
            ));
        }
        // One condition per phase the runner has started, from the journal.
        for e in &self.journal.phases {
            if e.phase < Phase::ProvidersInstalled {
                continue;
            }
            let (ok, reason) = match e.outcome {
                Outcome::Succeeded => (true, "Succeeded"),
                Outcome::Failed => (false, "Failed"),
                Outcome::Started => (false, "InProgress"),
            };
            let message = match (&e.message, e.generation) {
                (Some(m), Some(g)) => format!("{m} (spec generation {g})"),
                (Some(m), None) => m.clone(),
                (None, Some(g)) => format!("spec generation {g}"),
                (None, None) => String::new(),
            };
            conditions.push(cond(&e.phase.to_string(), ok, reason, message));
        }
        let failure = self.state_dir.join("bootstrap-failure.json");
        if let Ok(text) = std::fs::read_to_string(&failure) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            conditions.push(cond(
                "BootstrapSucceeded",
                false,
                "BootstrapFailed",
                format!(
                    "phase {} exited {}: {}",
                    v["phase"].as_str().unwrap_or("?"),
                    v["exitCode"],
                    v["logTail"]
                        .as_str()
                        .unwrap_or("")
                        .lines()
                        .last()
                        .unwrap_or("")
                ),
            ));
        }
        FledgeClusterStatus {
            phase: self.journal.current().map(|p| p.to_string()),
            observed_generation: self.cached.as_ref().map(|c| c.generation),
            conditions,
            agent_version: Some(crate::VERSION.to_string()),
            last_seen: Some(now_s),
            // Written by the pivot itself; a merge patch without it leaves it alone.
            pivot: None,
        }
    }

    /// Sends the latest status; on failure it stays pending and goes out on the next success.
    async fn push_status(&mut self) {
        if let Ok(j) = Journal::load(&self.state_dir) {
            self.journal = j;
        }
        let status = self.status();
        self.last_status = Some(status.clone());
        if let Err(e) = crate::fsutil::write_atomic(
            &self.state_dir.join("status.json"),
            &serde_json::to_vec_pretty(&status).unwrap_or_default(),
            0o600,
        ) {
            tracing::warn!(error = %e, "cannot write status.json");
        }
        let patch = serde_json::json!({"status": status});
        match self
            .api
            .patch_status(
                &self.cfg.cluster.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => self.shared.update(|s| {
                s.status_pending = false;
                s.status_sent += 1;
            }),
            Err(e) => {
                self.unreachable(&e);
                self.shared.error("status_update");
            }
        }
        self.notifier.send(&format!(
            "STATUS=phase {}; spec generation {}",
            self.journal
                .current()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            self.cached.as_ref().map(|c| c.generation).unwrap_or(0)
        ));
    }
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.changed() => return,
        };
        let Ok((mut sock, _)) = conn else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (code, body) = match path {
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/metrics" => ("200 OK", shared.metrics()),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
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
        // Ended (returned or panicked).
        assert!(!watchdog_feeds(false, Some(now), now));
        assert!(!watchdog_feeds(true, None, now));
    }
}
