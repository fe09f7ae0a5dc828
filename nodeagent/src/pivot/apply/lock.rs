//! One move of a cluster at a time: the move lock.
//!
//! Two runs of one cluster's move (the agent's service and a hand-run `fledge-agent pivot`, or
//! agents on two nodes) must never interleave. Every pivot and unpivot takes a lock before its
//! first write: the annotation [`LOCK`] on the **source** Cluster, the one object every move
//! reads first and deletes last, on the side whose objects leave (the management plane for a
//! pivot, where the agent's Role already lets it patch Clusters; the local cluster for an
//! unpivot). It is written with the Cluster's `resourceVersion` as a precondition, so of two
//! runs that read it free only one writes it. It names its holder, the move, when it was taken
//! and when it expires; the holder renews it every third of the hold while the move runs (from
//! a task of its own, so that a long phase never starves it) and removes it at the end. A
//! holder that crashes blocks others until the expiry; the same holder (a resumed run of the
//! same identity) takes it back at once, and so does any run on the crashed holder's host
//! that sees its process gone (the default identity names host, boot and process: a restarted
//! agent or a re-run by hand does not wait for the expiry). Once the move has deleted the source Cluster there is
//! no lock left: a later run finds the source gone and only completes what is left in the
//! target, which any number of runs can do at once.
//!
//! The decision itself ([`decide`]) is pure and unit-tested; the rest reads and writes the
//! Cluster.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::*;

/// Annotation on the source Cluster while a move holds it: a JSON [`Hold`].
pub const LOCK: &str = "pivot.fledge.dev/lock";

/// Default time a hold lasts without renewal.
pub const DEFAULT_LOCK_HOLD: Duration = Duration::from_secs(30);

/// Re-reads after a conflict (another writer changed the Cluster between read and write)
/// before the lock gives up; a conflict is a race, not a failure, so this does not follow the
/// retry policy.
const CONFLICTS: u32 = 8;

/// What the lock annotation holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    /// Who holds it (see [`default_holder`]).
    pub holder: String,
    /// `pivot` or `unpivot`.
    #[serde(rename = "move")]
    pub direction: String,
    /// When it was taken (RFC 3339).
    pub acquired: String,
    /// When it expires unless renewed (RFC 3339).
    pub expires: String,
}

/// Who holds the lock a run was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedBy {
    /// Namespace.
    pub namespace: String,
    /// Cluster name.
    pub cluster: String,
    /// Who holds it.
    pub holder: String,
    /// `pivot` or `unpivot`.
    pub direction: String,
    /// Since when (RFC 3339).
    pub acquired: String,
    /// Until when, unless renewed (RFC 3339).
    pub expires: String,
}

/// What a run may do with the lock as it finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it.
    Take,
    /// It is this holder's (a resumed run of the same identity): take it back.
    TakeBack,
    /// Its holder let it expire, or its process is gone (or the lock cannot be read): take it
    /// over.
    TakeOver {
        /// The previous holder, as the annotation names it.
        from: String,
    },
    /// Another holder holds it until it expires.
    Held(Hold),
}

/// The lock annotation's value `current`, as `holder` finds it at `now_ms` (milliseconds since
/// the Unix epoch). A hold expires at its `expires` instant, or as soon as `gone` says its
/// holder's process no longer runs.
pub fn decide(
    current: Option<&str>,
    holder: &str,
    now_ms: i64,
    gone: &dyn Fn(&str) -> bool,
) -> Decision {
    let Some(raw) = current else {
        return Decision::Take;
    };
    let Ok(hold) = serde_json::from_str::<Hold>(raw) else {
        return Decision::TakeOver {
            from: format!("an unreadable lock {raw:?}"),
        };
    };
    if hold.holder == holder {
        return Decision::TakeBack;
    }
    match millis(&hold.expires) {
        Some(expires) if now_ms < expires && !gone(&hold.holder) => Decision::Held(hold),
        _ => Decision::TakeOver { from: hold.holder },
    }
}

/// Whether `holder`, a [`default_holder`] identity of this host and boot, names a process that
/// no longer runs. Any other identity (another host, an earlier boot, one given explicitly) is
/// not known to be gone: it holds until it expires. A PID reused since only makes the lock
/// wait for its expiry.
pub fn gone_here(holder: &str) -> bool {
    let Some((prefix, pid)) = holder.rsplit_once("/pid-") else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    prefix == this_host_and_boot() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// `<hostname>/boot-<first 8 of the boot id>`.
fn this_host_and_boot() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
    };
    let host = read("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown-host".into());
    let boot: String = read("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .chars()
        .take(8)
        .collect();
    format!("{host}/boot-{boot}")
}

/// RFC 3339 to milliseconds since the Unix epoch.
fn millis(rfc3339: &str) -> Option<i64> {
    rfc3339
        .parse::<Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// Milliseconds since the Unix epoch to RFC 3339.
fn rfc3339(ms: i64) -> String {
    Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The identity a run holds the lock under unless it is given one: this host, boot and
/// process (`<hostname>/boot-<id>/pid-<pid>`), so that two processes never share it, and a run
/// on the same host can tell when its process is gone ([`gone_here`]).
pub fn default_holder() -> String {
    format!("{}/pid-{}", this_host_and_boot(), std::process::id())
}

/// The lock as this run has it.
#[derive(Debug, Default)]
pub(super) struct LockState {
    inner: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    /// The source Cluster's type, once the lock is taken (what the renewal renews).
    cluster: Option<ApiResource>,
    /// The source Cluster's type, once this run may have written the lock (what the release
    /// releases if it is this holder's).
    written: Option<ApiResource>,
    /// When it was taken, kept across renewals.
    acquired: String,
    /// The hold lasts until then (monotonic clock, measured from before the write).
    deadline: Option<Instant>,
    /// Another run holds it now: this one must not write any more.
    lost: Option<String>,
}

impl LockState {
    /// Forgets an earlier run's lock (a run starts without one).
    pub(super) fn reset(&self) {
        *self.get() = Held::default();
    }

    fn get(&self) -> std::sync::MutexGuard<'_, Held> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a renewal found.
enum Renewal {
    Renewed,
    /// The source Cluster is gone (the move deleted it): nothing left to hold.
    Gone,
    /// Someone else holds it, or removed it.
    Lost(String),
}

impl<'a> Pivot<'a> {
    /// Fails when the lock is lost or expired: every request checks this first, so a run that
    /// lost the lock stops writing.
    pub(super) fn check_lock(&self) -> Result<(), PivotError> {
        let held = self.lock.get();
        if let Some(holder) = &held.lost {
            return Err(PivotError::LockLost {
                cluster: self.cluster.into(),
                holder: holder.clone(),
            });
        }
        if held.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(PivotError::LockLost {
                cluster: self.cluster.into(),
                holder: "nobody yet: the hold expired before it could be renewed".into(),
            });
        }
        Ok(())
    }

    /// Whether another run took the lock from this one.
    pub(super) fn lock_lost(&self) -> bool {
        self.lock.get().lost.is_some()
    }

    /// The source Cluster's type; `None` when the source serves no Cluster.
    async fn cluster_type(&self) -> Result<Option<ApiResource>, PivotError> {
        let types = super::super::discover::move_types(self.source).await?;
        Ok(types
            .into_iter()
            .find(|t| t.group == "cluster.x-k8s.io" && t.kind == "Cluster"))
    }

    /// Takes the lock on the source Cluster, or takes it back. Returns `false` when the source
    /// Cluster is gone (there is nothing to lock: the move got past deleting it, or there is
    /// no such cluster). Fails with [`PivotError::Locked`] while another run holds it.
    pub(super) async fn acquire(&self) -> Result<bool, PivotError> {
        if self.lock.get().cluster.is_some() {
            return Ok(true);
        }
        let Some(ar) = self.cluster_type().await? else {
            return Ok(false);
        };
        let api = self.api(self.source, &ar);
        let mut conflicts = 0;
        let mut failures = 1;
        let mut backoff = self.opts.retry.backoff();
        loop {
            let Some(current) = self
                .retry(
                    || {
                        format!(
                            "reading the source Cluster {} for its move lock",
                            self.cluster
                        )
                    },
                    || async { api.get_opt(self.cluster).await },
                )
                .await?
            else {
                return Ok(false);
            };
            let now = Timestamp::now().as_millisecond();
            match decide(annotation(&current, LOCK), &self.holder, now, &gone_here) {
                Decision::Held(hold) => {
                    return Err(PivotError::Locked(Box::new(LockedBy {
                        namespace: self.namespace.into(),
                        cluster: self.cluster.into(),
                        holder: hold.holder,
                        direction: hold.direction,
                        acquired: hold.acquired,
                        expires: hold.expires,
                    })));
                }
                Decision::TakeOver { from } => tracing::warn!(
                    cluster = self.cluster,
                    previous = %from,
                    "taking over an expired move lock"
                ),
                Decision::TakeBack => tracing::info!(
                    cluster = self.cluster,
                    "taking back this holder's move lock"
                ),
                Decision::Take => {}
            }
            let started = Instant::now();
            self.lock.get().written = Some(ar.clone());
            let hold = Hold {
                holder: self.holder.clone(),
                direction: self.opts.direction.noun().into(),
                acquired: rfc3339(now),
                expires: rfc3339(now + self.opts.lock_hold.as_millis() as i64),
            };
            match self.write_lock(&api, &current, Some(&hold)).await {
                Ok(()) => {
                    tracing::info!(cluster = self.cluster, holder = %self.holder, expires = %hold.expires, "move lock taken");
                    let mut held = self.lock.get();
                    held.cluster = Some(ar);
                    held.acquired = hold.acquired;
                    held.deadline = Some(started + self.opts.lock_hold);
                    return Ok(true);
                }
                Err(e) if is_status(&e, 404) => return Ok(false),
                Err(e) if is_status(&e, 409) && conflicts < CONFLICTS => conflicts += 1,
                Err(e) if transient(&e) && failures < self.opts.retry.attempts => {
                    failures += 1;
                    tokio::time::sleep(backoff.next().unwrap_or(self.opts.retry.cap)).await;
                }
                Err(source) => {
                    return Err(PivotError::Request {
                        what: format!(
                            "taking the move lock on the source Cluster {}",
                            self.cluster
                        ),
                        source,
                    });
                }
            }
        }
    }

    /// Writes (or, with `None`, removes) the lock annotation, on the condition that the
    /// Cluster is still at `current`'s resourceVersion.
    async fn write_lock(
        &self,
        api: &Api<DynamicObject>,
        current: &DynamicObject,
        hold: Option<&Hold>,
    ) -> Result<(), kube::Error> {
        let value = match hold {
            Some(h) => Value::String(serde_json::to_string(h).unwrap_or_default()),
            None => Value::Null,
        };
        let patch = json!({"metadata": {
            "resourceVersion": current.metadata.resource_version,
            "annotations": {LOCK: value},
        }});
        api.patch(self.cluster, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }

    /// Renews the lock every third of the hold until the move ends (`stop`), so that a long
    /// phase never lets it expire. A renewal that fails is tried again at the next tick; one
    /// that finds another holder marks the lock lost, and the move stops writing.
    pub(super) async fn keep_lock(&self, stop: &Notify) {
        let every = (self.opts.lock_hold / 3).max(Duration::from_millis(50));
        loop {
            tokio::select! {
                () = stop.notified() => return,
                () = tokio::time::sleep(every) => {}
            }
            let Some(ar) = self.lock.get().cluster.clone() else {
                continue;
            };
            match self.renew(&ar).await {
                Ok(Renewal::Renewed) => {}
                Ok(Renewal::Gone) => {
                    // Deleted by the move itself: nothing is left to hold.
                    self.lock.get().deadline = None;
                }
                Ok(Renewal::Lost(holder)) => {
                    tracing::error!(cluster = self.cluster, %holder, "the move lock was lost; this run stops writing");
                    self.lock.get().lost = Some(holder);
                    return;
                }
                Err(e) => tracing::warn!(
                    cluster = self.cluster,
                    error = %chain(&e),
                    "renewing the move lock failed; trying again"
                ),
            }
        }
    }

    async fn renew(&self, ar: &ApiResource) -> Result<Renewal, kube::Error> {
        let api = self.api(self.source, ar);
        for _ in 0..CONFLICTS {
            let Some(current) = api.get_opt(self.cluster).await? else {
                return Ok(Renewal::Gone);
            };
            let now = Timestamp::now().as_millisecond();
            match decide(annotation(&current, LOCK), &self.holder, now, &gone_here) {
                Decision::TakeBack => {}
                Decision::Held(h) => return Ok(Renewal::Lost(h.holder)),
                Decision::TakeOver { from } => return Ok(Renewal::Lost(from)),
                Decision::Take => return Ok(Renewal::Lost("nobody: it was removed".into())),
            }
            let started = Instant::now();
            let hold = Hold {
                holder: self.holder.clone(),
                direction: self.opts.direction.noun().into(),
                acquired: self.lock.get().acquired.clone(),
                expires: rfc3339(now + self.opts.lock_hold.as_millis() as i64),
            };
            match self.write_lock(&api, &current, Some(&hold)).await {
                Ok(()) => {
                    let mut held = self.lock.get();
                    if held.deadline.is_some() {
                        held.deadline = Some(started + self.opts.lock_hold);
                    }
                    return Ok(Renewal::Renewed);
                }
                Err(e) if is_status(&e, 404) => return Ok(Renewal::Gone),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(Renewal::Renewed)
    }

    /// Removes the lock if this run still holds it and the source Cluster still exists (after
    /// a rollback, or a failure). A failure is only logged: the hold expires by itself, and the
    /// same holder takes it back at once.
    pub(super) async fn release(&self) {
        let ar = {
            let mut held = self.lock.get();
            if held.lost.is_some() {
                return;
            }
            held.deadline = None;
            held.cluster = None;
            match held.written.take() {
                Some(ar) => ar,
                None => return,
            }
        };
        let api = self.api(self.source, &ar);
        let mut failures = 1;
        let mut backoff = self.opts.retry.backoff();
        for _ in 0..CONFLICTS + self.opts.retry.attempts {
            let current = match api.get_opt(self.cluster).await {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) if transient(&e) && failures < self.opts.retry.attempts => {
                    failures += 1;
                    tokio::time::sleep(backoff.next().unwrap_or(self.opts.retry.cap)).await;
                    continue;
                }
                Err(e) => return warn_release(self.cluster, &e),
            };
            if decide(
                annotation(&current, LOCK),
                &self.holder,
                Timestamp::now().as_millisecond(),
                &|_| false,
            ) != Decision::TakeBack
            {
                return;
            }
            match self.write_lock(&api, &current, None).await {
                Ok(()) => {
                    tracing::info!(cluster = self.cluster, "move lock released");
                    return;
                }
                Err(e) if is_status(&e, 404) => return,
                Err(e) if is_status(&e, 409) => {}
                Err(e) if transient(&e) && failures < self.opts.retry.attempts => {
                    failures += 1;
                    tokio::time::sleep(backoff.next().unwrap_or(self.opts.retry.cap)).await;
                }
                Err(e) => return warn_release(self.cluster, &e),
            }
        }
    }
}

fn warn_release(cluster: &str, e: &kube::Error) {
    tracing::warn!(
        cluster,
        error = %chain(e),
        "releasing the move lock failed; it expires by itself"
    );
}

/// An annotation of `obj`.
fn annotation<'o>(obj: &'o DynamicObject, key: &str) -> Option<&'o str> {
    obj.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn alive(_: &str) -> bool {
        false
    }

    fn hold(holder: &str, expires_ms: i64) -> String {
        serde_json::to_string(&Hold {
            holder: holder.into(),
            direction: "pivot".into(),
            acquired: rfc3339(T0),
            expires: rfc3339(expires_ms),
        })
        .unwrap()
    }

    #[test]
    fn a_free_lock_is_taken() {
        assert_eq!(decide(None, "a", T0, &alive), Decision::Take);
    }

    #[test]
    fn a_lock_held_by_another_is_refused_until_it_expires() {
        let h = hold("b", T0 + 30_000);
        match decide(Some(&h), "a", T0 + 29_999, &alive) {
            Decision::Held(got) => {
                assert_eq!(got.holder, "b");
                assert_eq!(got.expires, "2023-11-14T22:13:50Z");
                assert_eq!(got.direction, "pivot");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(Some(&h), "a", T0 + 30_000, &alive),
            Decision::TakeOver { from: "b".into() }
        );
        assert_eq!(
            decide(Some(&h), "a", T0 + 90_000, &alive),
            Decision::TakeOver { from: "b".into() }
        );
    }

    #[test]
    fn the_same_holder_takes_its_lock_back_expired_or_not() {
        assert_eq!(
            decide(Some(&hold("a", T0 + 30_000)), "a", T0, &alive),
            Decision::TakeBack
        );
        assert_eq!(
            decide(Some(&hold("a", T0)), "a", T0 + 60_000, &alive),
            Decision::TakeBack
        );
    }

    #[test]
    fn a_lock_whose_holder_process_is_gone_is_taken_over_before_it_expires() {
        let h = hold("b", T0 + 30_000);
        assert_eq!(
            decide(Some(&h), "a", T0, &|holder| holder == "b"),
            Decision::TakeOver { from: "b".into() }
        );
        assert!(matches!(
            decide(Some(&h), "a", T0, &|holder| holder == "c"),
            Decision::Held(_)
        ));
    }

    #[test]
    fn only_a_process_of_this_host_and_boot_is_known_to_be_gone() {
        let me = default_holder();
        assert!(!gone_here(&me), "{me}");
        let (here, _) = me.rsplit_once("/pid-").unwrap();
        // Above the kernel's largest PID (2^22): no such process.
        assert!(gone_here(&format!("{here}/pid-4194305")));
        assert!(!gone_here("elsewhere/boot-00000000/pid-4194305"));
        assert!(!gone_here("run-a"));
        assert!(!gone_here(&format!("{here}/pid-x")));
    }

    #[test]
    fn an_unreadable_lock_is_taken_over() {
        assert!(matches!(
            decide(Some("not json"), "a", T0, &alive),
            Decision::TakeOver { .. }
        ));
        let bad_time = serde_json::to_string(&Hold {
            holder: "b".into(),
            direction: "pivot".into(),
            acquired: "yesterday".into(),
            expires: "never".into(),
        })
        .unwrap();
        assert_eq!(
            decide(Some(&bad_time), "a", T0, &alive),
            Decision::TakeOver { from: "b".into() }
        );
    }

    #[test]
    fn hold_times_round_trip_through_rfc3339_to_the_millisecond() {
        let t = T0 + 123;
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(millis(&rfc3339(t)), Some(t));
        assert_eq!(millis("2023-11-14T22:13:20Z"), Some(T0));
    }

    #[test]
    fn the_default_holder_names_this_host_and_process() {
        let h = default_holder();
        assert!(h.ends_with(&format!("/pid-{}", std::process::id())), "{h}");
    }
}
