//! `AddonsReady`: the profile's add-on layers, applied in order to the local cluster. The core
//! layers (`CoreLayers`) and `Steady` reconcile layers the same way.
//!
//! - **Sources** ([`sources`]). A layer's manifests are inline in the spec, or fetched from an
//!   `https://` URL; either way their sha256 is pinned in the spec. A `clusterProfileRef` names a
//!   `ClusterProfile` on the management plane; its spec is cached in the state directory and the
//!   cached copy is used while the management plane is unreachable. Manifests are cached under
//!   `<stateDir>/addons/<sha256>.yaml`, so a cluster whose management plane and download sites
//!   are both gone still reconciles its add-ons.
//! - **Order and health** ([`health`]). Layer N+1 is not applied before every object of layer N
//!   is healthy: Deployments, DaemonSets and StatefulSets rolled out, CRDs Established, Jobs
//!   complete, APIServices Available (other kinds are healthy once applied). A layer that is not
//!   healthy within its `timeoutSeconds` (300) fails the attempt; the runner retries.
//! - **Inventory and pruning (ApplySet, KEP-3659)** ([`applyset`]). Each layer is an ApplySet
//!   whose parent is the Secret `kube-system/fledge-addons-<layer>`; every member carries the
//!   `applyset.kubernetes.io/part-of` label, and the parent lists the member kinds, so
//!   `kubectl apply --prune --applyset` understands it. An object dropped from a layer is deleted
//!   in the same reconcile; a layer dropped from the profile is deleted whole, parent last.
//! - **State** (here). `<stateDir>/addons/status.json` holds each layer's state (what the
//!   metrics and `fledge-agent status` show) and when it was first applied unhealthy (for the
//!   timeout).
//!
//! Here: the phase's plan and reconcile, which walk the layers in order with the three above.

pub mod applyset;
pub mod health;
pub mod sources;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use fledge_generator::spec::Layer;
use serde::{Deserialize, Serialize};

use super::{Context, PhaseError, Step};
use crate::state::layout;
use applyset::{Kinds, apply_layer, applyset_id, prune_removed_layers};
use health::unhealthy;
use sources::{collect_cache, profile_layers, resolve_layers};

/// Why the add-ons could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum AddonsError {
    /// A manifest's bytes do not match the pinned hash.
    #[error("layer {layer}, manifest {manifest}: sha256 is {got}, the spec pins {want}")]
    Mismatch {
        /// Layer.
        layer: String,
        /// Manifest.
        manifest: String,
        /// Pinned.
        want: String,
        /// Computed.
        got: String,
    },
    /// A manifest could not be fetched.
    #[error("layer {layer}, manifest {manifest}")]
    Fetch {
        /// Layer.
        layer: String,
        /// Manifest.
        manifest: String,
        /// Why.
        #[source]
        source: crate::clusterctl::fetch::FetchError,
    },
    /// A manifest is not a list of Kubernetes objects.
    #[error("layer {layer}, manifest {manifest}, document {index}: {message}")]
    Manifest {
        /// Layer.
        layer: String,
        /// Manifest.
        manifest: String,
        /// 1-based document number.
        index: usize,
        /// Why.
        message: String,
    },
    /// The referenced ClusterProfile is neither readable nor cached.
    #[error(
        "ClusterProfile {namespace}/{name}: cannot read it from the management plane ({message}) and no copy is cached"
    )]
    Profile {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Why.
        message: String,
    },
    /// The referenced ClusterProfile breaks the rules inline profiles follow.
    #[error(
        "ClusterProfile {namespace}/{name} is invalid, so none of it is fetched or applied: {problems}"
    )]
    InvalidProfile {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Every problem, `field: rule`, separated by `; `.
        problems: String,
    },
    /// A layer stayed unhealthy past its timeout.
    #[error("layer {layer} is not healthy after {seconds}s: {why}")]
    Timeout {
        /// Layer.
        layer: String,
        /// Its timeout.
        seconds: u64,
        /// What is not ready.
        why: String,
    },
    /// Applying a layer failed.
    #[error("layer {layer}")]
    Apply {
        /// Layer.
        layer: String,
        /// Why.
        #[source]
        source: fledge_generator::ssa::ApplyError,
    },
    /// A state file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// File.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A layer's recorded state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LayerState {
    /// `Pending`, `Progressing`, `Healthy` or `Failed`.
    pub state: String,
    /// Objects in the layer.
    pub objects: usize,
    /// When it was first applied and found unhealthy (unix seconds), for the timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_since: Option<u64>,
    /// What is not ready, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `<stateDir>/addons`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(layout::ADDONS)
}

/// Reads the layers' recorded states (empty when none were recorded).
pub fn states(state_dir: &Path) -> BTreeMap<String, LayerState> {
    std::fs::read(layout::addons_status(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_states(
    state_dir: &Path,
    states: &BTreeMap<String, LayerState>,
) -> Result<(), AddonsError> {
    let path = layout::addons_status(state_dir);
    let bytes = serde_json::to_vec_pretty(states).unwrap_or_default();
    write(&path, &bytes)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), AddonsError> {
    let werr = |source| AddonsError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(werr)?;
    }
    crate::state::fsutil::write_atomic(path, bytes, 0o600).map_err(werr)
}

/// Which of a profile's layer lists: the core layers (network, cloud provider: phase
/// `CoreLayers`, before the providers) or the add-on layers (phase `AddonsReady`, after the
/// scale-out). Both are reconciled again in `Steady`, core first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `coreLayers`.
    Core,
    /// `layers`.
    Addons,
}

/// A profile's two layer lists.
#[derive(Debug, Clone, Default)]
pub struct ProfileLayers {
    /// `coreLayers`.
    pub core: Vec<Layer>,
    /// `layers`.
    pub addons: Vec<Layer>,
}

impl ProfileLayers {
    fn stage(&self, stage: Stage) -> &[Layer] {
        match stage {
            Stage::Core => &self.core,
            Stage::Addons => &self.addons,
        }
    }

    fn all(&self) -> impl Iterator<Item = &Layer> {
        self.core.iter().chain(&self.addons)
    }
}

/// The plan: per add-on layer, its state and what it holds.
pub async fn plan(ctx: &Context) -> Result<(Vec<String>, Option<String>), PhaseError> {
    let profile = profile_layers(ctx).await?;
    plan_stage(ctx, &profile, Stage::Addons).await
}

/// The plan of one stage's layers of `profile` (read once per attempt by the caller).
pub async fn plan_stage(
    ctx: &Context,
    profile: &ProfileLayers,
    stage: Stage,
) -> Result<(Vec<String>, Option<String>), PhaseError> {
    let layers = resolve_layers(&ctx.state_dir, profile.stage(stage)).await?;
    let states = states(&ctx.state_dir);
    let mut steps = Vec::new();
    let what = match stage {
        Stage::Core => "core layer",
        Stage::Addons => "layer",
    };
    for l in &layers {
        let state = states
            .get(&l.name)
            .map_or("Pending".to_string(), |s| s.state.clone());
        steps.push(format!(
            "{what} {}: {} objects ({state}), ApplySet {}",
            l.name,
            l.objects.len(),
            applyset_id(&l.name)
        ));
    }
    if layers.is_empty() {
        steps.push(format!("the profile has no {what}s"));
    }
    Ok((steps, None))
}

/// One reconcile of the add-on layers (AddonsReady): applies them in order, each once the
/// previous is healthy, and prunes.
pub async fn reconcile(
    ctx: &Context,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Step, PhaseError> {
    let profile = profile_layers(ctx).await?;
    reconcile_stage(ctx, &profile, Stage::Addons, progress).await
}

/// One reconcile of every layer, core first (Steady): while a core layer is not healthy, the
/// add-on layers wait. Without core layers, exactly [`reconcile`]. The profile is read once.
pub async fn reconcile_all(
    ctx: &Context,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Step, PhaseError> {
    let profile = profile_layers(ctx).await?;
    if profile.core.is_empty() {
        return reconcile_stage(ctx, &profile, Stage::Addons, progress).await;
    }
    match reconcile_stage(ctx, &profile, Stage::Core, progress).await? {
        Step::Waiting(why) => Ok(Step::Waiting(why)),
        Step::Done(core) => Ok(
            match reconcile_stage(ctx, &profile, Stage::Addons, progress).await? {
                Step::Done(addons) => Step::Done(format!("core {core}; {addons}")),
                waiting => waiting,
            },
        ),
    }
}

/// One reconcile of one stage's layers: applied in order, each once the previous is healthy;
/// members dropped from a layer and layers dropped from the profile (from either stage) pruned.
pub async fn reconcile_stage(
    ctx: &Context,
    profile: &ProfileLayers,
    stage: Stage,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Step, PhaseError> {
    let layers = resolve_layers(&ctx.state_dir, profile.stage(stage)).await?;
    let mut states = states(&ctx.state_dir);
    // Every layer of the profile, of both stages: neither stage prunes the other's.
    let wanted: BTreeSet<&str> = profile.all().map(|l| l.name.as_str()).collect();
    states.retain(|k, _| wanted.contains(k.as_str()));
    let mut kinds = Kinds::default();
    let mut summary = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let others: BTreeSet<String> = profile
            .all()
            .filter(|l| l.name != layer.name)
            .map(|l| applyset_id(&l.name))
            .collect();
        let (applied, members) = apply_layer(ctx, &mut kinds, layer, &others).await?;
        if applied > 0 {
            progress(&format!("layer {}: {applied} objects changed", layer.name));
        }
        let unhealthy = unhealthy(ctx, &mut kinds, &members).await?;
        let st = states.entry(layer.name.clone()).or_default();
        st.objects = layer.objects.len();
        match unhealthy {
            None => {
                ctx.layer_clock.healthy(&layer.name);
                st.state = "Healthy".into();
                st.unhealthy_since = None;
                st.message = None;
                summary.push(format!("{} healthy", layer.name));
            }
            Some(why) => {
                let late = ctx
                    .layer_clock
                    .unhealthy_for(&layer.name, std::time::Instant::now())
                    >= layer.timeout;
                // For people (status, metrics): when, on the wall clock; the timeout itself
                // runs on the monotonic clock above.
                st.unhealthy_since
                    .get_or_insert_with(|| crate::time::unix_now() as u64);
                st.state = if late { "Failed" } else { "Progressing" }.into();
                st.message = Some(why.clone());
                for later in &layers[i + 1..] {
                    states.entry(later.name.clone()).or_default().state = "Pending".into();
                }
                write_states(&ctx.state_dir, &states)?;
                if late {
                    return Err(AddonsError::Timeout {
                        layer: layer.name.clone(),
                        seconds: layer.timeout.as_secs(),
                        why,
                    }
                    .into());
                }
                return Ok(Step::Waiting(format!("layer {}: {why}", layer.name)));
            }
        }
    }
    let pruned = prune_removed_layers(ctx, &mut kinds, &wanted).await?;
    write_states(&ctx.state_dir, &states)?;
    let referenced: BTreeSet<String> = profile
        .all()
        .flat_map(|l| &l.manifests)
        .filter(|m| m.url.is_some())
        .map(|m| m.sha256.to_ascii_lowercase())
        .collect();
    let profile = ctx
        .spec
        .spec
        .profile
        .as_ref()
        .and_then(|p| p.cluster_profile_ref.as_ref())
        .map(|r| r.name.as_str());
    collect_cache(&ctx.state_dir, &referenced, profile);
    let mut msg = if summary.is_empty() {
        match stage {
            Stage::Core => "no core layers".to_string(),
            Stage::Addons => "no add-on layers".to_string(),
        }
    } else {
        format!("layers: {}", summary.join(", "))
    };
    if pruned > 0 {
        msg.push_str(&format!("; {pruned} objects of removed layers pruned"));
    }
    Ok(Step::Done(msg))
}
