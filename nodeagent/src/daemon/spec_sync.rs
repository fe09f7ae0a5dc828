//! The spec sync: gets the cluster's FledgeCluster from the management plane, watches it,
//! resyncs, accepts or refuses each offered spec into the cache, and reports status (the
//! journal's phases as conditions). It backs off while the management plane is unreachable and
//! keeps the agent running from the cached spec. It also decides whether a deletion of the
//! FledgeCluster is an order to delete the cluster ([`crate::phases::unpivoted::decide`]):
//! it records an order, declines a deletion that comes from the namespace's, cancels an order
//! that no longer holds, and settles a cancellation so that the runner is back in `Steady`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fledge_generator::spec::{Condition, FledgeCluster, FledgeClusterStatus};
use futures::StreamExt;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::daemon::metrics::Shared;
use crate::daemon::notify::Notifier;
use crate::phases::unpivoted::{self, NamespaceState, Seen, Verdict};
use crate::phases::{Accepted, Specs};
use crate::state::cache::{self, CachedSpec, Decision};
use crate::state::deletion::{self, Cancel};
use crate::state::journal::{Journal, Outcome, Phase, chain};
use crate::state::layout;
use crate::time::unix_now as now;

/// How often the spec-sync task beats (the watchdog is fed while it does:
/// [`crate::daemon::run::SYNC_STALL`]).
pub(crate) const SYNC_BEAT: Duration = Duration::from_secs(5);

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

/// [`error_kind`] of a watcher's failure.
fn watch_error_kind(e: &watcher::Error) -> &'static str {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => error_kind(e),
        watcher::Error::WatchError(s) if s.code == 401 || s.code == 403 => "unauthorized",
        watcher::Error::WatchError(s) if s.code == 404 => "not_found",
        watcher::Error::WatchError(_) => "api",
        watcher::Error::NoResourceVersion => "decode",
    }
}

pub(crate) struct Sync {
    pub(crate) cfg: AgentConfig,
    pub(crate) state_dir: PathBuf,
    pub(crate) api: Api<FledgeCluster>,
    pub(crate) shared: Shared,
    pub(crate) notifier: Arc<Notifier>,
    pub(crate) journal: Journal,
    /// The accepted spec (what is cached), sent to the runner.
    pub(crate) specs: Specs,
    /// Why the latest offered spec was refused (condition reason, message).
    pub(crate) refused: Option<(&'static str, String)>,
    /// The status last built, for condition transition times.
    pub(crate) last_status: Option<FledgeClusterStatus>,
    /// Wakes the phase runner when a deletion is ordered or its cancellation settled.
    pub(crate) wake: Arc<tokio::sync::Notify>,
    /// The phase runner wrote the journal: report it.
    pub(crate) journal_changed: Arc<tokio::sync::Notify>,
}

impl Sync {
    /// Follows the FledgeCluster with `kube::runtime`'s watcher (a list, then a watch from its
    /// version, listed again whenever the watch cannot resume) until `stop`. Every `resyncSeconds`
    /// (at most 290, also the watch's timeout) it looks at the latest copy again (a deletion
    /// waiting on its namespace is decided then) and sends the status, the agent's heartbeat.
    /// A failed request backs off (capped, jittered) while the agent runs from its cache.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let cap = self.cfg.backoff_cap();
        // Also the watch's timeout, which the apiserver caps below 300 s.
        let resync = self.cfg.resync().as_secs().min(290);
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={}", self.cfg.cluster.name))
            .timeout(resync as u32);
        let mut events = watcher::watcher(self.api.clone(), config).boxed();
        let mut backoff = self.cfg.backoff();
        let mut beat = tokio::time::interval(SYNC_BEAT);
        let mut resync = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(resync),
            Duration::from_secs(resync),
        );
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The FledgeCluster as last seen (`None`: the last list did not find it), once the first
        // list has answered; and whether the list under way has found it.
        let mut latest: Option<Option<FledgeCluster>> = None;
        let mut found = false;
        // A stop lets a list in flight finish (it answers, fails, or the shutdown grace ends
        // it); an established watch is simply dropped.
        let (mut listing, mut stopping) = (true, false);
        self.beat();
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    _ if stopping => return,
                    Some(Ok(ev)) => {
                        listing = match ev {
                            watcher::Event::Init => true,
                            watcher::Event::InitDone => false,
                            _ => listing,
                        };
                        backoff = self.cfg.backoff();
                        self.reachable(true);
                        self.event(ev, &mut latest, &mut found).await;
                    }
                    Some(Err(e)) => {
                        self.failed(watch_error_kind(&e), &e);
                        let delay = backoff.next().unwrap_or(cap);
                        self.notifier.send(&format!(
                            "STATUS=management unreachable; running from the cached spec; retry in {}s",
                            delay.as_secs()
                        ));
                        let until = tokio::time::Instant::now() + delay;
                        loop {
                            tokio::select! {
                                _ = tokio::time::sleep_until(until) => break,
                                _ = beat.tick() => self.beat(),
                                _ = stop.changed() => return,
                            }
                        }
                    }
                    None => return,
                },
                _ = resync.tick() => match &latest {
                    Some(Some(obj)) => {
                        let obj = obj.clone();
                        self.observe(&obj).await;
                        self.push_status().await;
                    }
                    Some(None) if self.deletion(None).await => self.push_status().await,
                    _ => {}
                },
                _ = beat.tick() => self.beat(),
                _ = self.journal_changed.notified() => self.push_status().await,
                _ = stop.changed(), if !stopping => {
                    if !listing {
                        return;
                    }
                    stopping = true;
                }
            }
        }
    }

    /// One event of the watcher: a (re)list's objects, a change, a deletion.
    async fn event(
        &mut self,
        ev: watcher::Event<FledgeCluster>,
        latest: &mut Option<Option<FledgeCluster>>,
        found: &mut bool,
    ) {
        match ev {
            watcher::Event::Init => *found = false,
            watcher::Event::InitApply(obj) => {
                *found = true;
                self.observe(&obj).await;
                *latest = Some(Some(obj));
            }
            watcher::Event::InitDone => {
                if !*found {
                    tracing::warn!(name = %self.cfg.cluster.name, "FledgeCluster not found on the management plane; running from the cache");
                    self.shared.error("not_found");
                    *latest = Some(None);
                    if self.deletion(None).await {
                        self.push_status().await;
                    }
                } else {
                    self.push_status().await;
                }
            }
            // Status updates (ours included) change nothing here; only a new or refused spec,
            // or a step of a deletion, is worth reporting.
            watcher::Event::Apply(obj) => {
                let report = self.observe(&obj).await;
                *latest = Some(Some(obj));
                if report {
                    self.push_status().await;
                }
            }
            watcher::Event::Delete(_) => {
                *latest = Some(None);
                if self.deletion(None).await {
                    self.push_status().await;
                }
            }
        }
    }

    /// `f` of the cached spec (the runner may have taken a newer one from the cluster's copy
    /// of the state), read without copying the spec.
    fn cached<T>(&self, f: impl FnOnce(&CachedSpec) -> T) -> Option<T> {
        self.specs.borrow().as_ref().map(|a| f(&a.cached))
    }

    fn beat(&self) {
        self.shared
            .update(|s| s.sync_beat = Some(std::time::Instant::now()));
        self.settle_deletion();
    }

    /// Settles a cancelled deletion request once no runner attempt is in flight (tried on every
    /// beat): the runner is woken and back in `Steady`, and the status is sent.
    fn settle_deletion(&self) -> bool {
        match deletion::settle(&self.state_dir) {
            Ok(Some(why)) => {
                tracing::warn!(reason = ?why, "deletion request cancelled; the agent is back in Steady: {}", why.explain(&self.cfg.cluster.namespace));
                self.wake.notify_one();
                self.journal_changed.notify_one();
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::error!(error = %chain(&e), "cannot settle the cancelled deletion request");
                false
            }
        }
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
        self.failed(error_kind(e), e);
    }

    /// [`Self::unreachable`], for a failure of `kind`.
    fn failed(&self, kind: &'static str, e: &(dyn std::error::Error + 'static)) {
        tracing::warn!(error = %chain(e), kind, "management plane request failed; running from the cached spec");
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

    /// Handles one look at the FledgeCluster: the spec offered (accepted or refused), the
    /// agent's finalizer on a re-created FledgeCluster whose spec it accepted, and its deletion.
    /// True when the status is worth sending.
    async fn observe(&mut self, obj: &FledgeCluster) -> bool {
        let before = self.cached(|c| c.uid.clone());
        let decision = self.accept(obj);
        let after = self.cached(|c| c.uid.clone());
        if before.is_some() && before != after && self.pivoted() {
            // The runner holds the finalizer once per process: a re-created FledgeCluster
            // accepted since is held here, so that deleting it is an order again.
            let api = unpivoted::fledge_cluster_api(
                kube::Client::from(self.api.clone()),
                &self.cfg.cluster.namespace,
            );
            if let Err(e) = unpivoted::hold_on(&api, &self.cfg.cluster.name).await {
                tracing::warn!(error = %chain(&e), "cannot put the agent's finalizer on the re-created FledgeCluster; the runner takes it at its next start");
            }
        }
        let acted = self.deletion(Some(obj)).await;
        decision != Decision::Unchanged || acted
    }

    fn pivoted(&self) -> bool {
        Journal::load(&self.state_dir).is_ok_and(|j| j.done(Phase::Pivoted))
    }

    /// Decides what the FledgeCluster (`None`: gone) says about deleting the cluster, and acts:
    /// records an order (the runner then unpivots), declines a deletion that comes from the
    /// namespace's (releasing the finalizer, so that the namespace can go), or cancels an
    /// order that no longer holds. True when something changed.
    async fn deletion(&mut self, obj: Option<&FledgeCluster>) -> bool {
        let seen = match obj {
            None => Seen::Gone,
            Some(o) => Seen::Present {
                uid: o.metadata.uid.as_deref().unwrap_or_default(),
                deleting: o.metadata.deletion_timestamp.is_some(),
            },
        };
        let request = match deletion::load_request(&self.state_dir) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %chain(&e), path = %deletion::request_path(&self.state_dir).display(), "cannot read the deletion request");
                return false;
            }
        };
        // No order recorded, and no deletion seen: nothing to decide (the common case, every
        // event and resync).
        if request.is_none() && !unpivoted::needs_namespace(seen) {
            return false;
        }
        let ns = self.cfg.cluster.namespace.clone();
        let client = kube::Client::from(self.api.clone());
        let namespace = if unpivoted::needs_namespace(seen) {
            unpivoted::namespace_state(&client, &ns).await
        } else {
            NamespaceState::Unknown
        };
        let journal = Journal::load(&self.state_dir).unwrap_or_default();
        let progress = request
            .as_ref()
            .and_then(|r| deletion::progress(r, &journal));
        let cached_uid = self.cached(|c| c.uid.clone());
        let cached_uid = cached_uid.as_deref();
        let when = obj
            .and_then(|o| o.metadata.deletion_timestamp.as_ref())
            .map(|t| t.0.to_string());
        match unpivoted::decide(seen, namespace, cached_uid, request.as_ref(), progress) {
            Verdict::Nothing => false,
            Verdict::Order => {
                let (Seen::Present { uid, .. }, Some(when)) = (seen, when) else {
                    return false;
                };
                match deletion::request_deletion(&self.state_dir, uid, &when) {
                    Ok(true) => {
                        tracing::warn!(%when, "the FledgeCluster is being deleted: moving the cluster's objects back to the management plane, which then deletes the cluster");
                        self.wake.notify_one();
                        true
                    }
                    Ok(false) => false,
                    Err(e) => {
                        tracing::error!(error = %chain(&e), "cannot record the deletion request");
                        false
                    }
                }
            }
            Verdict::Undecided => {
                tracing::warn!(namespace = %ns, "the FledgeCluster is being deleted, but whether its namespace is being deleted is not known yet: nothing is done until it is");
                false
            }
            Verdict::Deferred(why) => {
                tracing::warn!(reason = ?why, "{}; but an unpivot is under way: it is finished or rolled back first, and the deletion request is cancelled only if it is rolled back", why.explain(&ns));
                false
            }
            Verdict::Cancel(why) => {
                let (uid, when) = match (seen, request.as_ref()) {
                    (Seen::Present { uid, .. }, _) => (uid.to_string(), when.unwrap_or_default()),
                    (Seen::Gone, Some(r)) => (r.uid.clone(), r.deletion_timestamp.clone()),
                    (Seen::Gone, None) => return false,
                };
                let changed = match deletion::cancel(&self.state_dir, &uid, &when, why) {
                    Ok(changed) => changed,
                    Err(e) => {
                        tracing::error!(error = %chain(&e), "cannot record that the deletion is not an order");
                        false
                    }
                };
                if changed {
                    tracing::warn!(reason = ?why, "{}", why.explain(&ns));
                }
                if why == Cancel::NamespaceTerminating
                    && obj.is_some_and(|o| {
                        o.metadata
                            .finalizers
                            .as_ref()
                            .is_some_and(|f| f.iter().any(|f| f == unpivoted::FINALIZER))
                    })
                {
                    let api = unpivoted::fledge_cluster_api(client, &ns);
                    match unpivoted::release_on(&api, &self.cfg.cluster.name).await {
                        Ok(true) => tracing::warn!(
                            finalizer = unpivoted::FINALIZER,
                            namespace = %ns,
                            "finalizer released: the namespace can go; the cluster keeps running"
                        ),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(error = %chain(&e), "cannot release the agent's finalizer; the namespace stays Terminating until it is removed (kubectl patch ... finalizers)")
                        }
                    }
                }
                let settled = self.settle_deletion();
                changed || settled
            }
        }
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
        // Every event (the echo of each status the agent sends among them) offers the spec
        // again: the cached spec's own is not checked again, its check is kept with it.
        let mut checked = None;
        let decision = {
            let current = self.specs.borrow();
            match cache::decide(current.as_ref().map(|a| &a.cached), &offered, replaces) {
                Decision::Unchanged => match current.as_ref().map(|a| &a.spec) {
                    Some(Err(problems)) => Decision::Invalid(problems.clone()),
                    _ => Decision::Unchanged,
                },
                decided => match crate::phases::check(&self.cfg, &obj.spec) {
                    Err(problems) => Decision::Invalid(problems),
                    Ok(spec) => {
                        checked = Some(spec);
                        decided
                    }
                },
            }
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
                    self.specs.send_replace(Some(Accepted {
                        cached: offered,
                        // Always Some: only a spec that checked is decided Accept.
                        spec: checked.ok_or_else(Vec::new),
                    }));
                    if let Err(e) = self.journal.record(
                        &self.state_dir,
                        Phase::SpecFetched,
                        Outcome::Succeeded,
                        Some(generation),
                        None,
                    ) {
                        tracing::error!(error = %chain(&e), "cannot record the journal");
                    }
                    let phase = self.journal.current();
                    self.shared.update(|s| {
                        s.spec_generation = Some(generation);
                        s.phase = phase;
                        s.status_pending = true;
                    });
                }
                Err(e) => {
                    tracing::error!(error = %chain(&e), "cannot store the spec");
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
        let now_s = crate::time::now_rfc3339();
        let cond = |t: &str, ok: bool, reason: &str, message: String| Condition {
            type_: t.to_string(),
            status: if ok { "True" } else { "False" }.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message),
            last_transition_time: Some(now_s.clone()),
        };
        let cached = self.cached(CachedSpec::clone);
        let mut conditions = vec![match &cached {
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
        } else if cached.is_some() {
            conditions.push(cond(
                "SpecAccepted",
                true,
                "Valid",
                "the latest spec passed validation".into(),
            ));
        }
        // One condition per phase the runner has started, from the journal.
        for e in &self.journal.phases {
            if e.phase < Phase::CoreLayers {
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
        if let Some(c) = self.deletion_condition(&cond) {
            conditions.push(c);
        }
        let failure = self.state_dir.join(layout::BOOTSTRAP_FAILURE);
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
            observed_generation: cached.as_ref().map(|c| c.generation),
            conditions,
            agent_version: Some(crate::VERSION.to_string()),
            last_seen: Some(now_s),
            // Written by the pivot itself; a merge patch without it leaves it alone.
            pivot: None,
        }
    }

    /// `DeletionRequested`, from the recorded request: True while an order is carried out,
    /// False (with the reason) when a deletion was declined or cancelled.
    fn deletion_condition(
        &self,
        cond: &dyn Fn(&str, bool, &str, String) -> Condition,
    ) -> Option<Condition> {
        let r = deletion::load_request(&self.state_dir).ok().flatten()?;
        let ns = self.cfg.cluster.namespace.as_str();
        Some(match &r.cancelled {
            None => cond(
                "DeletionRequested",
                true,
                "Ordered",
                format!(
                    "FledgeCluster {} deleted at {}: the cluster's objects go back to the management plane, which deletes the cluster",
                    r.uid, r.deletion_timestamp
                ),
            ),
            Some(c) => cond(
                "DeletionRequested",
                false,
                match c.reason {
                    Cancel::NamespaceTerminating => "NamespaceTerminating",
                    Cancel::Gone => "FledgeClusterGone",
                    Cancel::Replaced => "FledgeClusterReplaced",
                },
                format!(
                    "FledgeCluster {} deleted at {}: {}",
                    r.uid,
                    r.deletion_timestamp,
                    c.reason.explain(ns)
                ),
            ),
        })
    }

    /// Sends the latest status; on failure it stays pending and goes out on the next success.
    async fn push_status(&mut self) {
        if let Ok(j) = Journal::load(&self.state_dir) {
            self.journal = j;
        }
        let status = self.status();
        self.last_status = Some(status.clone());
        if let Err(e) = crate::state::fsutil::write_atomic(
            &self.state_dir.join(layout::STATUS),
            &serde_json::to_vec_pretty(&status).unwrap_or_default(),
            0o600,
        ) {
            tracing::warn!(error = %chain(&e), "cannot write status.json");
        }
        // A follower's journal is not the cluster's state: only the leader (or an agent with
        // no local cluster to elect in yet) reports.
        if let Some(Some(holder)) = self.shared.snapshot().following {
            tracing::debug!(%holder, "following: the leader reports the status");
            self.shared.update(|s| s.status_pending = false);
            return;
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
            self.cached(|c| c.generation).unwrap_or(0)
        ));
    }
}
