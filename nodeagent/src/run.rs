//! `fledge-agent run`: load state, tell systemd READY, then run three things until the stop
//! signal: the spec sync ([`crate::spec_sync`]: the cached spec in step with the management
//! plane, status reported when reachable, the cache used when not), the phase runner
//! ([`crate::phases`], on a thread of its own), and `/healthz` + `/metrics` on loopback
//! ([`crate::metrics`]). Feeds systemd's watchdog while the sync beats.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use tokio::sync::watch;

use crate::cache;
use crate::config::{AgentConfig, ConfigError};
use crate::journal::{Journal, JournalError, Outcome, Phase};
use crate::metrics::serve_metrics;
pub use crate::metrics::{Shared, Snapshot};
use crate::notify::Notifier;
use crate::pivot::count::{CountLayer, Counts};
use crate::spec_sync::Sync;
pub use crate::spec_sync::error_kind;

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

/// How often the spec-sync task beats.
pub(crate) const SYNC_BEAT: Duration = Duration::from_secs(5);
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

pub(crate) fn now() -> i64 {
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
    shared.update(|s| {
        s.requests = Some((management_counts.clone(), local_counts.clone()));
        s.state_dir = Some(state_dir.clone());
    });
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
