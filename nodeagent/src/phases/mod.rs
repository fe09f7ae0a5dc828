//! The agent's phases after the spec is cached: `CoreLayers`, `ProvidersInstalled`, `Pivoted`,
//! `ScaledOut`, `AddonsReady`, then `Steady` for good.
//! Each lives in its own module with a plan (pure data: what it would do next and why; `fledge-agent
//! plan` prints it) and an apply step; the [`runner`] walks the journal and runs them.
//!
//! Here: the order of the phases ([`RUN`], [`next`]), the phase [`Context`], [`Plan`] and
//! [`Step`], [`plan`] and [`apply`] for any phase, and what the phases share (applying to the
//! local cluster). The phases: [`corelayers`], [`providers`], [`pivoted`], [`scaledout`],
//! [`addons`] (its layers are also the core layers' and `Steady`'s), [`steady`], and
//! [`unpivoted`] (deleting the cluster: `Unpivoted`, then `Released`).

pub mod addons;
pub mod corelayers;
pub mod pivoted;
pub mod providers;
pub mod runner;
pub mod scaledout;
pub mod steady;
pub mod unpivoted;

use std::fmt;
use std::path::PathBuf;

use fledge_generator::spec::CheckedCluster;
use serde::Serialize;

use crate::config::AgentConfig;
use crate::state::cache;
use crate::state::journal::{Journal, JournalError, Phase, chain};

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
    Refused(#[from] steady::day2::Refused),
    /// Applying the scale-out objects failed.
    #[error(transparent)]
    ScaleOut(#[from] scaledout::ScaleOutError),
    /// A file of the agent's management credentials (its token, the CA) cannot be read.
    #[error("the agent's Secret for new control-plane machines: cannot read {}", path.display())]
    ReadCredentials {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The agent's credentials Secret for the control-plane machines cannot be applied.
    #[error("the agent's Secret for new control-plane machines: cannot apply {name}")]
    ApplyAgentSecret {
        /// The Secret's name.
        name: String,
        /// Why.
        #[source]
        source: Box<fledge_generator::ssa::ApplyError>,
    },
    /// The cloud provider's credentials Secret cannot be made from what the request names.
    #[error("cloud provider credentials: {0}")]
    CloudSecret(String),
    /// The cloud provider's credentials Secret cannot be applied.
    #[error("cloud provider credentials: cannot apply {namespace}/{name}")]
    ApplyCloudSecret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: Box<fledge_generator::ssa::ApplyError>,
    },
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
    #[error(transparent)]
    LocalKubeconfig(#[from] crate::clients::LocalKubeconfigError),
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
    pub layer_clock: addons::health::LayerClock,
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
        Phase::Unpivoted if crate::state::deletion::deletion_requested(&ctx.state_dir) => {
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
        Phase::AddonsReady => addons::reconcile(ctx, progress).await,
        Phase::Steady => steady::apply(ctx, progress).await,
        Phase::Unpivoted if crate::state::deletion::deletion_requested(&ctx.state_dir) => {
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

/// Server-side applies `objects` to the local cluster as the agent (field manager
/// `fledge-agent`, forced: the agent owns what it applies there); `progress` gets each outcome.
pub async fn apply_local(
    ctx: &Context,
    objects: &[serde_json::Value],
    progress: impl FnMut(&fledge_generator::ssa::Applied),
) -> Result<Vec<fledge_generator::ssa::Applied>, fledge_generator::ssa::ApplyError> {
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
    guard: &fledge_generator::ssa::Guard<'_>,
    objects: &[serde_json::Value],
    progress: impl FnMut(&fledge_generator::ssa::Applied),
) -> Result<Vec<fledge_generator::ssa::Applied>, fledge_generator::ssa::ApplyError> {
    let target = fledge_generator::target::Target {
        client: ctx.local.clone(),
        server: "the local cluster".into(),
        ca_certs: None,
    };
    let opts = fledge_generator::ssa::ApplyOptions {
        dry_run: false,
        force_conflicts: true,
        field_manager: Some(field_manager.into()),
        ..Default::default()
    };
    fledge_generator::ssa::apply_guarded(&target, objects, &opts, guard, progress).await
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

/// Checks a spec into the generator's checked type, for the cluster the configuration names.
/// The FledgeCluster's labels are left out: what the agent renders never carried them (a
/// MachineDeployment's selector is immutable), and the apiserver holds them to the same rules.
pub fn check(
    cfg: &AgentConfig,
    spec: &fledge_generator::spec::FledgeClusterSpec,
) -> Result<CheckedCluster, Vec<String>> {
    let meta = fledge_generator::spec::RequestMeta {
        name: cfg.cluster.name.clone(),
        namespace: Some(cfg.cluster.namespace.clone()),
        labels: Default::default(),
    };
    fledge_generator::spec::validate(&meta, spec)
        .map_err(|p| p.0.iter().map(ToString::to_string).collect())
}

/// Checks the cached spec into the generator's checked type.
pub fn checked(
    cfg: &AgentConfig,
    cached: &cache::CachedSpec,
) -> Result<CheckedCluster, PhaseError> {
    check(cfg, &cached.spec).map_err(|problems| invalid(cached.generation, &problems))
}

/// [`PhaseError::Spec`]: the spec of `generation` does not check.
fn invalid(generation: i64, problems: &[String]) -> PhaseError {
    PhaseError::Spec {
        generation,
        problems: problems.join("; "),
    }
}

/// The spec the phases act on: the cached copy and its checked form, checked once, when it is
/// accepted (or read from the disk), not at every attempt. The spec sync sends it to the
/// runner over a [`Specs`] channel; the cluster's copy of the state can bring a newer one
/// ([`runner`]).
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The cached copy (as `spec.yaml` holds it).
    pub cached: cache::CachedSpec,
    /// Its checked form, or why it does not check (a spec cached by an older agent whose rules
    /// were looser: each attempt then fails, saying so).
    pub spec: Result<CheckedCluster, Vec<String>>,
}

impl Accepted {
    /// Checks `cached`.
    pub fn new(cfg: &AgentConfig, cached: cache::CachedSpec) -> Accepted {
        let spec = check(cfg, &cached.spec);
        Accepted { cached, spec }
    }

    /// The checked spec, or [`PhaseError::Spec`].
    pub fn checked(&self) -> Result<CheckedCluster, PhaseError> {
        self.spec
            .clone()
            .map_err(|problems| invalid(self.cached.generation, &problems))
    }
}

/// The channel of the accepted spec (`None` before the first): the spec sync sends, the runner
/// watches it.
pub type Specs = tokio::sync::watch::Sender<Option<Accepted>>;

/// Offers `accepted` (not from the management plane: the cluster's copy of the state) to the
/// channel; it replaces the current spec only where the cache's rules take it
/// ([`cache::decide`]). True when it did.
pub fn offer(specs: &Specs, accepted: Accepted) -> bool {
    specs.send_if_modified(|current| {
        let take = cache::decide(current.as_ref().map(|c| &c.cached), &accepted.cached, None)
            == cache::Decision::Accept;
        if take {
            *current = Some(accepted);
        }
        take
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::state::journal::Outcome;

    fn journal(entries: &[(Phase, Outcome)]) -> Journal {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::load(dir.path()).unwrap();
        for (p, o) in entries {
            j.record(dir.path(), *p, *o, Some(1), None).unwrap();
        }
        j
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
    fn the_spec_channel_takes_an_offered_spec_only_where_it_is_newer_and_keeps_its_check() {
        let cfg = crate::config::for_test(std::path::Path::new("/var/lib/fledge"));
        let text = include_str!("../../../examples/docker.yaml");
        let spec = fledge_generator::spec::parse_request("docker.yaml", text.as_bytes())
            .unwrap()
            .spec;
        let at = |generation, uid: &str| {
            Accepted::new(&cfg, cache::CachedSpec::new(generation, uid, spec.clone()))
        };
        let specs: Specs = tokio::sync::watch::Sender::new(None);
        let mut rx = specs.subscribe();
        let generation = |rx: &mut tokio::sync::watch::Receiver<Option<Accepted>>| {
            rx.borrow_and_update().as_ref().map(|a| a.cached.generation)
        };
        assert!(offer(&specs, at(3, "u")));
        assert_eq!(generation(&mut rx), Some(3));
        // Older, or a re-created object whose generation restarted: the channel keeps its spec
        // and the runner is not woken.
        assert!(!offer(&specs, at(2, "u")));
        assert!(!offer(&specs, at(1, "other")));
        assert!(!rx.has_changed().unwrap());
        assert!(offer(&specs, at(4, "u")));
        assert!(rx.has_changed().unwrap());
        assert_eq!(generation(&mut rx), Some(4));
        // What the spec checked into is kept with it: an attempt reads the result, it does not
        // check again (a spec cached under looser rules fails each attempt, saying why).
        let mut stale = at(5, "u");
        assert!(stale.checked().is_ok());
        stale.spec = Err(vec!["spec.x: a rule of a newer agent".into()]);
        let e = stale.checked().unwrap_err().to_string();
        assert!(
            e.contains("generation 5") && e.contains("spec.x: a rule of a newer agent"),
            "{e}"
        );
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
}
