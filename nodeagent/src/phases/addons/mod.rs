//! `AddonsReady`: the profile's add-on layers, applied in order to the local cluster.
//!
//! - **Sources.** A layer's manifests are inline in the spec, or fetched from an `https://` URL;
//!   either way their sha256 is pinned in the spec. A `clusterProfileRef` names a
//!   `ClusterProfile` on the management plane; its spec is cached in the state directory and the
//!   cached copy is used while the management plane is unreachable. Manifests are cached under
//!   `<stateDir>/addons/<sha256>.yaml`, so a cluster whose management plane and download sites
//!   are both gone still reconciles its add-ons.
//! - **Order and health.** Layer N+1 is not applied before every object of layer N is healthy:
//!   Deployments, DaemonSets and StatefulSets rolled out, CRDs Established, Jobs complete,
//!   APIServices Available (other kinds are healthy once applied). A layer that is not healthy
//!   within its `timeoutSeconds` (300) fails the attempt; the runner retries.
//! - **Inventory and pruning (ApplySet, KEP-3659).** Each layer is an ApplySet whose parent is the
//!   Secret `kube-system/fledge-addons-<layer>`; every member carries the
//!   `applyset.kubernetes.io/part-of` label, and the parent lists the member kinds, so
//!   `kubectl apply --prune --applyset` understands it. An object dropped from a layer is deleted
//!   in the same reconcile; a layer dropped from the profile is deleted whole, parent last.
//! - **State.** `<stateDir>/addons/status.json` holds each layer's state (what the metrics and
//!   `fledge-agent status` show) and when it was first applied unhealthy (for the timeout).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use fledge_generator::spec::{ClusterProfile, Layer};
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams};
use kube::discovery::{ApiCapabilities, Scope};
use kube::{Api, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Context, PhaseError, Step};
use crate::state::layout;

/// The namespace of the layers' ApplySet parents.
pub const PARENT_NAMESPACE: &str = "kube-system";
/// Label on a parent naming its layer (how removed layers are found).
pub const LAYER_LABEL: &str = "fledge.dev/addon-layer";
/// Default per-layer health timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The field manager add-on layers are applied with (forced): apart from the one
/// (`fledge-agent`) that installs the providers and writes the cluster's own objects, so a
/// layer's fields are told apart from fledge's own.
pub const FIELD_MANAGER: &str = "fledge-addons";
/// Namespaces a layer may not take over (pruning the layer would delete them).
const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// When each layer was first seen unhealthy, on the monotonic clock (a wall clock that jumps,
/// as on a node that boots before its time is synchronised, must not fail a layer early or
/// late). Kept by the runner across attempts; a restarted agent gives a layer its full timeout
/// again.
#[derive(Debug, Clone, Default)]
pub struct LayerClock(std::sync::Arc<std::sync::Mutex<BTreeMap<String, std::time::Instant>>>);

impl LayerClock {
    /// How long `layer` has been unhealthy (zero on the first call since it was healthy).
    pub fn unhealthy_for(&self, layer: &str, now: std::time::Instant) -> Duration {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        now.saturating_duration_since(*m.entry(layer.to_string()).or_insert(now))
    }

    /// `layer` is healthy (or gone): its timer stops.
    pub fn healthy(&self, layer: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(layer);
    }
}

const ID_LABEL: &str = "applyset.kubernetes.io/id";
const PART_OF: &str = "applyset.kubernetes.io/part-of";
const KINDS: &str = "applyset.kubernetes.io/contains-group-kinds";
const NAMESPACES: &str = "applyset.kubernetes.io/additional-namespaces";
const TOOLING: &str = "applyset.kubernetes.io/tooling";

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
        source: fledge_generator::apply::ApplyError,
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

/// One layer, resolved: its objects in manifest order.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Layer name.
    pub name: String,
    /// Objects, labelled as ApplySet members.
    pub objects: Vec<Value>,
    /// Health timeout.
    pub timeout: Duration,
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

/// The ApplySet ID of a layer's parent Secret (KEP-3659: `applyset-` + unpadded URL-safe
/// base64 of the sha256 of `<name>.<namespace>.<kind>.<group>` + `-v1`).
pub fn applyset_id(layer: &str) -> String {
    let key = format!("{}.{PARENT_NAMESPACE}.Secret.", parent_name(layer));
    let digest = Sha256::digest(key.as_bytes());
    format!(
        "applyset-{}-v1",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

fn parent_name(layer: &str) -> String {
    format!("fledge-addons-{layer}")
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

/// The layers of the spec's profile (empty without a profile): inline, or the referenced
/// ClusterProfile's (read from the management plane, or its cached copy).
pub async fn profile_layers(ctx: &Context) -> Result<ProfileLayers, AddonsError> {
    let Some(profile) = &ctx.spec.spec.profile else {
        return Ok(ProfileLayers::default());
    };
    let Some(r) = &profile.cluster_profile_ref else {
        return Ok(ProfileLayers {
            core: profile.core_layers.clone(),
            addons: profile.layers.clone(),
        });
    };
    let ns = ctx.spec.namespace.as_str();
    let cached = dir(&ctx.state_dir).join(format!("clusterprofile-{}.json", r.name));
    let api: Api<ClusterProfile> = Api::namespaced(ctx.management.clone(), ns);
    match tokio::time::timeout(Duration::from_secs(10), api.get(&r.name)).await {
        Ok(Ok(p)) => {
            // Checked before anything of it is cached, fetched or applied.
            check_profile(ns, &r.name, &p.spec.core_layers, &p.spec.layers)?;
            let bytes = serde_json::to_vec(&p.spec).unwrap_or_default();
            write(&cached, &bytes)?;
            Ok(ProfileLayers {
                core: p.spec.core_layers,
                addons: p.spec.layers,
            })
        }
        Ok(Err(e)) => from_cache(&cached, ns, &r.name, e.to_string()),
        Err(_) => from_cache(&cached, ns, &r.name, "timed out after 10s".into()),
    }
}

fn from_cache(
    cached: &Path,
    namespace: &str,
    name: &str,
    message: String,
) -> Result<ProfileLayers, AddonsError> {
    let spec: Option<fledge_generator::spec::ClusterProfileSpec> = std::fs::read(cached)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match spec {
        Some(s) => {
            tracing::info!(%message, "ClusterProfile {namespace}/{name} from the local cache");
            check_profile(namespace, name, &s.core_layers, &s.layers)?;
            Ok(ProfileLayers {
                core: s.core_layers,
                addons: s.layers,
            })
        }
        None => Err(AddonsError::Profile {
            namespace: namespace.into(),
            name: name.into(),
            message,
        }),
    }
}

/// A ClusterProfile's layers, checked by the rules of an inline profile (https URLs, hex
/// sha256, DNS-label names, unique layer names, timeouts in range).
pub fn check_profile(
    namespace: &str,
    name: &str,
    core: &[Layer],
    layers: &[Layer],
) -> Result<(), AddonsError> {
    let mut problems = fledge_generator::spec::Problems::default();
    fledge_generator::spec::validate_profile_layers(&mut problems, "spec", core, layers);
    if problems.0.is_empty() {
        return Ok(());
    }
    Err(AddonsError::InvalidProfile {
        namespace: namespace.into(),
        name: name.into(),
        problems: problems
            .0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// A manifest's bytes: inline, from the cache, or fetched (and then cached); always checked
/// against the pinned hash.
async fn manifest_bytes(
    state_dir: &Path,
    layer: &str,
    m: &fledge_generator::spec::Manifest,
) -> Result<Vec<u8>, AddonsError> {
    let want = m.sha256.to_ascii_lowercase();
    let check = |bytes: Vec<u8>| {
        let got = crate::clusterctl::fetch::hex(&bytes);
        if got == want {
            Ok(bytes)
        } else {
            Err(AddonsError::Mismatch {
                layer: layer.into(),
                manifest: m.name.clone(),
                want: want.clone(),
                got,
            })
        }
    };
    if let Some(inline) = &m.inline {
        return check(inline.clone().into_bytes());
    }
    let cached = dir(state_dir).join(format!("{want}.yaml"));
    if let Ok(bytes) = std::fs::read(&cached)
        && crate::clusterctl::fetch::hex(&bytes) == want
    {
        return Ok(bytes);
    }
    let url = m.url.clone().unwrap_or_default();
    let bytes = check(
        crate::clusterctl::fetch::get(&url)
            .await
            .map_err(|source| AddonsError::Fetch {
                layer: layer.into(),
                manifest: m.name.clone(),
                source,
            })?,
    )?;
    write(&cached, &bytes)?;
    Ok(bytes)
}

/// Parses a manifest into objects and labels them as members of `layer`'s ApplySet. A
/// `List` document (`kind: List`, or any `...List` kind with `items`, as `kubectl get -o yaml`
/// writes) stands for its items. Every value is read without panicking: a document that is not
/// a mapping, or whose `metadata` or `metadata.labels` is not one, is an error naming the
/// document and the field.
pub fn parse_manifest(
    layer: &str,
    manifest: &str,
    bytes: &[u8],
) -> Result<Vec<Value>, AddonsError> {
    let text = String::from_utf8_lossy(bytes);
    let id = applyset_id(layer);
    let mut out = Vec::new();
    // Bounded: aliases may not expand the text beyond a multiple of its size, and a repeated
    // key is an error (fledge_generator::yaml).
    let docs =
        fledge_generator::yaml::parse_numbered(&text).map_err(|e| AddonsError::Manifest {
            layer: layer.into(),
            manifest: manifest.into(),
            index: e.document,
            message: e.within_document(),
        })?;
    for (index, v) in docs {
        let err = |message: String| AddonsError::Manifest {
            layer: layer.into(),
            manifest: manifest.into(),
            index,
            message,
        };
        let mut v = v;
        let is_list =
            v["kind"].as_str().is_some_and(|k| k.ends_with("List")) && v["items"].is_array();
        let items: Vec<(Option<usize>, Value)> = if is_list {
            match v.get_mut("items").map(Value::take) {
                Some(Value::Array(items)) => items
                    .into_iter()
                    .enumerate()
                    .map(|(j, item)| (Some(j), item))
                    .collect(),
                _ => Vec::new(),
            }
        } else {
            vec![(None, v)]
        };
        for (j, mut item) in items {
            let at = |message: String| match j {
                Some(j) => err(format!("items[{j}]: {message}")),
                None => err(message),
            };
            member(&mut item, &id).map_err(at)?;
            out.push(item);
        }
    }
    Ok(out)
}

/// Checks one object of a manifest and labels it as a member of ApplySet `id`.
fn member(v: &mut Value, id: &str) -> Result<(), String> {
    if !v.is_object() {
        return Err(
            "must be a Kubernetes object (a mapping with apiVersion, kind and metadata)".into(),
        );
    }
    for field in ["apiVersion", "kind"] {
        if v[field].as_str().is_none_or(str::is_empty) {
            return Err(format!("{field} is required"));
        }
    }
    if v["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        return Err("metadata.name is required".into());
    }
    if v["kind"].as_str().is_some_and(|k| k.ends_with("List")) && v["items"].is_array() {
        return Err("a List inside a List is not supported".into());
    }
    crate::json::object_mut(v, &["metadata", "labels"])?.insert(PART_OF.into(), json!(id));
    Ok(())
}

/// Resolves `layers`: sources fetched or read from the cache, parsed, labelled.
async fn resolve_layers(state_dir: &Path, layers: &[Layer]) -> Result<Vec<Resolved>, AddonsError> {
    let mut out = Vec::new();
    for layer in layers {
        let mut objects = Vec::new();
        for m in &layer.manifests {
            let bytes = manifest_bytes(state_dir, &layer.name, m).await?;
            objects.extend(parse_manifest(&layer.name, &m.name, &bytes)?);
        }
        let timeout = layer
            .timeout_seconds
            .and_then(|t| u64::try_from(t).ok())
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        out.push(Resolved {
            name: layer.name.clone(),
            objects,
            timeout,
        });
    }
    Ok(out)
}

/// Removes cached manifests (`<sha256>.yaml`) that are not in `referenced`, and cached
/// ClusterProfiles other than `profile`. Best effort: a file that cannot be removed is logged.
pub fn collect_cache(state_dir: &Path, referenced: &BTreeSet<String>, profile: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = match (
            name.strip_suffix(".yaml"),
            name.strip_prefix("clusterprofile-"),
        ) {
            (Some(hash), _) if is_sha256(hash) => !referenced.contains(hash),
            (_, Some(rest)) => rest
                .strip_suffix(".json")
                .is_some_and(|p| Some(p) != profile),
            _ => false,
        };
        if !stale {
            continue;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => {
                tracing::info!(file = %e.path().display(), "removed a cached add-on file the profile no longer references")
            }
            Err(error) => {
                tracing::warn!(file = %e.path().display(), %error, "cannot remove a stale cached add-on file")
            }
        }
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `Kind.group` (`Kind` for the core group), as ApplySets write group-kinds.
fn group_kind(o: &Value) -> String {
    let api_version = o["apiVersion"].as_str().unwrap_or_default();
    let kind = o["kind"].as_str().unwrap_or_default();
    match api_version.split_once('/') {
        Some((group, _)) => format!("{kind}.{group}"),
        None => kind.to_string(),
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

/// Applies the layers in order, each once the previous is healthy, and prunes.
pub async fn apply(
    ctx: &Context,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Step, PhaseError> {
    reconcile(ctx, progress).await
}

/// One reconcile of the add-on layers (AddonsReady).
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

/// Discovered kinds, by `Kind.group`.
#[derive(Default)]
struct Kinds(BTreeMap<String, Option<(ApiResource, ApiCapabilities)>>);

impl Kinds {
    async fn get(
        &mut self,
        client: &kube::Client,
        gk: &str,
    ) -> Result<Option<(ApiResource, ApiCapabilities)>, PhaseError> {
        if let Some(found) = self.0.get(gk) {
            return Ok(found.clone());
        }
        let (kind, group) = gk.split_once('.').unwrap_or((gk, ""));
        let found = match kube::discovery::group(client, group).await {
            Ok(g) => g.recommended_kind(kind),
            // A kind whose CRD is gone has nothing left to prune.
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(source) => {
                return Err(PhaseError::Request {
                    what: format!("discover {gk}"),
                    source,
                });
            }
        };
        self.0.insert(gk.to_string(), found.clone());
        Ok(found)
    }

    async fn api(
        &mut self,
        client: &kube::Client,
        gk: &str,
        namespace: Option<&str>,
    ) -> Result<Option<Api<DynamicObject>>, PhaseError> {
        Ok(self
            .get(client, gk)
            .await?
            .map(|(ar, caps)| match (caps.scope, namespace) {
                (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
                _ => Api::all_with(client.clone(), &ar),
            }))
    }
}

fn secrets(ctx: &Context) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&());
    Api::namespaced_with(ctx.local.clone(), PARENT_NAMESPACE, &ar)
}

/// Applies one layer: the parent (with the union of the old and new member kinds, so an
/// interrupted prune is finished next time), the members, the prune of dropped members, and
/// the parent with the new kinds and namespaces. Returns how many objects changed, and the
/// members as applied: each with the namespace its kind's scope gives it (a namespaced object
/// without one is in the default namespace; a cluster-scoped one has none, whatever its
/// manifest says), which is what the prune keeps and the health check reads.
async fn apply_layer(
    ctx: &Context,
    kinds: &mut Kinds,
    layer: &Resolved,
    others: &BTreeSet<String>,
) -> Result<(usize, Vec<Value>), PhaseError> {
    let id = applyset_id(&layer.name);
    let now: BTreeSet<String> = layer.objects.iter().map(group_kind).collect();
    let before = secrets(ctx)
        .get_opt(&parent_name(&layer.name))
        .await
        .map_err(|source| PhaseError::Request {
            what: format!("read the ApplySet parent of layer {}", layer.name),
            source,
        })?;
    let (kinds_before, namespaces_before) = before
        .as_ref()
        .map(|p| (listed(p, KINDS), listed(p, NAMESPACES)))
        .unwrap_or_default();
    let union: BTreeSet<String> = kinds_before.union(&now).cloned().collect();
    let namespaces_union: BTreeSet<String> = layer
        .objects
        .iter()
        .filter_map(|o| o["metadata"]["namespace"].as_str())
        .filter(|ns| !ns.is_empty() && *ns != PARENT_NAMESPACE)
        .map(str::to_string)
        .chain(namespaces_before)
        .collect();
    let parent_err = |source| AddonsError::Apply {
        layer: layer.name.clone(),
        source,
    };
    super::apply_local(
        ctx,
        &[parent(&layer.name, &id, &union, &namespaces_union)],
        |_| {},
    )
    .await
    .map_err(parent_err)?;
    let guard =
        |body: &Value, live: Option<&DynamicObject>| owned_elsewhere(&id, others, body, live);
    let results = super::apply_local_as(ctx, FIELD_MANAGER, &guard, &layer.objects, |_| {})
        .await
        .map_err(parent_err)?;
    let changed = results
        .iter()
        .filter(|a| a.outcome != fledge_generator::apply::Outcome::Unchanged)
        .count();
    let members: Vec<Value> = layer
        .objects
        .iter()
        .zip(&results)
        .map(|(o, applied)| {
            let mut o = o.clone();
            if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                match &applied.namespace {
                    Some(ns) => meta.insert("namespace".into(), json!(ns)),
                    None => meta.remove("namespace"),
                };
            }
            o
        })
        .collect();
    let keep: BTreeSet<(String, String, String)> = members.iter().map(key).collect();
    prune(ctx, kinds, &id, &union, &keep).await?;
    let namespaces: BTreeSet<String> = members
        .iter()
        .filter_map(|o| o["metadata"]["namespace"].as_str())
        .filter(|ns| *ns != PARENT_NAMESPACE)
        .map(str::to_string)
        .collect();
    if union != now || namespaces != namespaces_union {
        super::apply_local(ctx, &[parent(&layer.name, &id, &now, &namespaces)], |_| {})
            .await
            .map_err(parent_err)?;
    }
    Ok((changed, members))
}

/// Why a layer (ApplySet `id`) may not manage this object, if it may not: the object is one of
/// fledge's own (a provider's component, the cluster's Cluster API objects, an ApplySet parent
/// of the layers), a system namespace, or a member of another layer of the profile (`others`:
/// their ApplySet IDs; two layers holding one object would prune it from each other). Pure.
pub fn owned_elsewhere(
    id: &str,
    others: &BTreeSet<String>,
    body: &Value,
    live: Option<&DynamicObject>,
) -> Result<(), String> {
    let api_version = body["apiVersion"].as_str().unwrap_or_default();
    let kind = body["kind"].as_str().unwrap_or_default();
    let name = body["metadata"]["name"].as_str().unwrap_or_default();
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if (group == "cluster.x-k8s.io" || group.ends_with(".cluster.x-k8s.io"))
        && group != "addons.cluster.x-k8s.io"
    {
        return Err(format!(
            "{kind} is a Cluster API object; the agent manages the cluster's Cluster API objects from spec.controlPlane and spec.workers, and add-on layers may not"
        ));
    }
    if kind == "Namespace" && group.is_empty() && SYSTEM_NAMESPACES.contains(&name) {
        return Err(format!(
            "namespace {name} is a system namespace; a layer that owned it would delete it when the layer is removed"
        ));
    }
    let labels = &body["metadata"]["labels"];
    if !labels[ID_LABEL].is_null() || !labels[LAYER_LABEL].is_null() {
        return Err("an ApplySet parent (it carries applyset.kubernetes.io/id or fledge.dev/addon-layer) is fledge's own bookkeeping".into());
    }
    let Some(live) = live else {
        return Ok(());
    };
    let live_labels = live.labels();
    if live_labels.contains_key(ID_LABEL) || live_labels.contains_key(LAYER_LABEL) {
        return Err("it is an ApplySet parent of fledge's add-on layers".into());
    }
    match live_labels.get(PART_OF) {
        Some(member) if member == id => return Ok(()),
        Some(member) if others.contains(member) => {
            return Err(format!(
                "it belongs to another add-on layer of the profile (ApplySet {member}); an object may be in one layer only"
            ));
        }
        _ => {}
    }
    if live_labels.contains_key("clusterctl.cluster.x-k8s.io") {
        return Err("it is a component of a Cluster API provider or of cert-manager, which the agent installs".into());
    }
    let by_agent = live
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .any(|f| f.manager.as_deref() == Some(super::providers::FIELD_MANAGER));
    if by_agent {
        return Err(format!(
            "it is managed by {} (the agent's own objects: providers and the cluster's Cluster API objects)",
            super::providers::FIELD_MANAGER
        ));
    }
    Ok(())
}

/// (group-kind, namespace, name).
fn key(o: &Value) -> (String, String, String) {
    (
        group_kind(o),
        o["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn listed(parent: &DynamicObject, annotation: &str) -> BTreeSet<String> {
    parent
        .annotations()
        .get(annotation)
        .map(|s| {
            s.split(',')
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn parent(layer: &str, id: &str, kinds: &BTreeSet<String>, namespaces: &BTreeSet<String>) -> Value {
    let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": parent_name(layer),
            "namespace": PARENT_NAMESPACE,
            "labels": {ID_LABEL: id, LAYER_LABEL: layer},
            "annotations": {
                TOOLING: format!("fledge-agent/v{}", crate::VERSION),
                KINDS: join(kinds),
                NAMESPACES: join(namespaces),
            },
        },
        "type": "Opaque",
    })
}

/// Deletes the members of ApplySet `id` (of the listed kinds) that are not in `keep`.
async fn prune(
    ctx: &Context,
    kinds: &mut Kinds,
    id: &str,
    listed: &BTreeSet<String>,
    keep: &BTreeSet<(String, String, String)>,
) -> Result<usize, PhaseError> {
    let mut deleted = 0;
    for gk in listed {
        let Some(api) = kinds.api(&ctx.local, gk, None).await? else {
            continue;
        };
        let members = api
            .list(&ListParams::default().labels(&format!("{PART_OF}={id}")))
            .await
            .map_err(|source| PhaseError::Request {
                what: format!("list the {gk} members of ApplySet {id}"),
                source,
            })?;
        for m in members.items {
            let ns = m.namespace().unwrap_or_default();
            let name = m.name_any();
            if keep.contains(&(gk.clone(), ns.clone(), name.clone())) {
                continue;
            }
            let api = kinds
                .api(&ctx.local, gk, (!ns.is_empty()).then_some(ns.as_str()))
                .await?
                .unwrap_or(api.clone());
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {
                    tracing::info!("pruned {gk} {ns}/{name} (no longer in its add-on layer)");
                    deleted += 1;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(PhaseError::Request {
                        what: format!("prune {gk} {ns}/{name}"),
                        source,
                    });
                }
            }
        }
    }
    Ok(deleted)
}

/// Prunes every layer whose parent exists but which the profile no longer has.
async fn prune_removed_layers(
    ctx: &Context,
    kinds: &mut Kinds,
    wanted: &BTreeSet<&str>,
) -> Result<usize, PhaseError> {
    let parents = secrets(ctx)
        .list(&ListParams::default().labels(LAYER_LABEL))
        .await
        .map_err(|source| PhaseError::Request {
            what: "list the add-on layers' ApplySet parents".into(),
            source,
        })?;
    let mut deleted = 0;
    for p in parents.items {
        let layer = p.labels().get(LAYER_LABEL).cloned().unwrap_or_default();
        if wanted.contains(layer.as_str()) {
            continue;
        }
        let id = applyset_id(&layer);
        deleted += prune(ctx, kinds, &id, &listed(&p, KINDS), &BTreeSet::new()).await?;
        let _ = secrets(ctx)
            .delete(&p.name_any(), &DeleteParams::default())
            .await;
        tracing::info!("layer {layer} removed from the profile: pruned");
    }
    Ok(deleted)
}

/// Why the first unhealthy object of `objects` is not healthy; None when all are.
async fn unhealthy(
    ctx: &Context,
    kinds: &mut Kinds,
    objects: &[Value],
) -> Result<Option<String>, PhaseError> {
    let mut waiting = Vec::new();
    for o in objects {
        let gk = group_kind(o);
        let (_, ns, name) = key(o);
        let Some(api) = kinds
            .api(&ctx.local, &gk, (!ns.is_empty()).then_some(ns.as_str()))
            .await?
        else {
            waiting.push(format!("{gk} {name}: the kind is not served"));
            continue;
        };
        let live = api
            .get_opt(&name)
            .await
            .map_err(|source| PhaseError::Request {
                what: format!("read {gk} {ns}/{name}"),
                source,
            })?;
        let why = match live {
            None => Some("not found".to_string()),
            Some(l) => health(&gk, &serde_json::to_value(&l).unwrap_or_default()),
        };
        if let Some(why) = why {
            waiting.push(format!(
                "{gk} {}{name} {why}",
                if ns.is_empty() {
                    String::new()
                } else {
                    format!("{ns}/")
                }
            ));
        }
    }
    Ok((!waiting.is_empty()).then(|| waiting.join("; ")))
}

fn condition_true(o: &Value, kind: &str) -> bool {
    o["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

/// Why a live object is not healthy yet (None: healthy). Pure.
pub fn health(group_kind: &str, o: &Value) -> Option<String> {
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let observed = n(&o["status"]["observedGeneration"]) >= n(&o["metadata"]["generation"]);
    let replicas = o["spec"]["replicas"].as_i64().unwrap_or(1);
    let s = &o["status"];
    match group_kind {
        "Deployment.apps" => {
            let (up, avail) = (n(&s["updatedReplicas"]), n(&s["availableReplicas"]));
            (!(observed && up >= replicas && avail >= replicas))
                .then(|| format!("{avail}/{replicas} available, {up} updated"))
        }
        "StatefulSet.apps" => {
            let (up, ready) = (n(&s["updatedReplicas"]), n(&s["readyReplicas"]));
            let observed = observed && s.get("observedGeneration").is_some();
            (!(observed && up >= replicas && ready >= replicas))
                .then(|| format!("{ready}/{replicas} ready, {up} updated"))
        }
        "DaemonSet.apps" => {
            let want = n(&s["desiredNumberScheduled"]);
            let (up, avail) = (n(&s["updatedNumberScheduled"]), n(&s["numberAvailable"]));
            let observed = observed && s.get("observedGeneration").is_some();
            (!(observed && up >= want && avail >= want))
                .then(|| format!("{avail}/{want} available, {up} updated"))
        }
        "CustomResourceDefinition.apiextensions.k8s.io" => {
            (!condition_true(o, "Established")).then(|| "not Established".to_string())
        }
        "Job.batch" => (!condition_true(o, "Complete")).then(|| "not Complete".to_string()),
        "APIService.apiregistration.k8s.io" => {
            (!condition_true(o, "Available")).then(|| "not Available".to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applyset_ids_follow_kep_3659() {
        let id = applyset_id("cni");
        let digest = Sha256::digest(b"fledge-addons-cni.kube-system.Secret.");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        assert_eq!(id, format!("applyset-{b64}-v1"));
        assert!(id.len() <= 63, "a label value: {id}");
    }

    #[test]
    fn manifests_are_objects_labelled_as_members() {
        let objs = parse_manifest(
            "cni",
            "m",
            b"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: x}\n---\n",
        )
        .unwrap();
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0]["metadata"]["labels"][PART_OF], applyset_id("cni"));
        let err = parse_manifest("cni", "m", b"apiVersion: v1\nkind: ConfigMap\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "layer cni, manifest m, document 1: metadata.name is required"
        );
    }

    #[test]
    fn list_documents_stand_for_their_items_and_bad_fields_are_errors_not_panics() {
        let objs = parse_manifest(
            "net",
            "m",
            b"apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n---\napiVersion: v1\nkind: ConfigMapList\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n",
        )
        .unwrap();
        let names: Vec<&str> = objs
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(
            objs.iter()
                .all(|o| o["metadata"]["labels"][PART_OF] == applyset_id("net"))
        );
        for (doc, want) in [
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, labels: x}\n",
                "layer net, manifest m, document 1: metadata.labels must be a mapping (got a string)",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, labels: [x]}\n",
                "layer net, manifest m, document 1: metadata.labels must be a mapping (got a list)",
            ),
            (
                "- a\n- b\n",
                "layer net, manifest m, document 1: must be a Kubernetes object (a mapping with apiVersion, kind and metadata)",
            ),
            (
                "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a, labels: 7}}\n",
                "layer net, manifest m, document 1: items[0]: metadata.labels must be a mapping (got a number)",
            ),
            (
                "apiVersion: v1\nkind: List\nitems: [{kind: ConfigMap}]\n",
                "layer net, manifest m, document 1: items[0]: apiVersion is required",
            ),
        ] {
            let e = parse_manifest("net", "m", doc.as_bytes()).unwrap_err();
            assert_eq!(e.to_string(), want, "{doc}");
        }
    }

    #[test]
    fn manifests_are_read_with_the_bounded_yaml_reader() {
        // Aliases that would expand a few kilobytes into gigabytes.
        let mut text = String::from(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata:\n  a0: &a0 \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"\n",
        );
        for i in 1..40 {
            text.push_str(&format!(
                "  a{i}: &a{i} [*a{}, *a{}, *a{}, *a{}]\n",
                i - 1,
                i - 1,
                i - 1,
                i - 1
            ));
        }
        let e = parse_manifest("net", "m", text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("layer net, manifest m, document 1: "), "{e}");
        assert!(e.contains("aliases"), "{e}");
        let e = parse_manifest(
            "net",
            "m",
            b"---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  name: b\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "layer net, manifest m, document 2: line 7, column 3: duplicate key \"name\" (first at line 6)"
        );
    }

    fn live(labels: &[(&str, &str)], manager: Option<&str>) -> DynamicObject {
        let mut o = DynamicObject::new(
            "x",
            &ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
        );
        o.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        o.metadata.managed_fields = manager.map(|m| {
            vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                    manager: Some(m.into()),
                    ..Default::default()
                },
            ]
        });
        o
    }

    #[test]
    fn layers_may_not_manage_what_fledge_or_another_layer_owns() {
        let id = applyset_id("mine");
        let others: BTreeSet<String> = [applyset_id("theirs")].into();
        let ok = |body: Value, l: Option<&DynamicObject>| owned_elsewhere(&id, &others, &body, l);
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        assert!(ok(cm.clone(), None).is_ok());
        // Its own member, also one an older agent applied as fledge-agent.
        assert!(
            ok(
                cm.clone(),
                Some(&live(&[(PART_OF, &id)], Some("fledge-agent")))
            )
            .is_ok()
        );
        // A label edited by hand is drift, corrected by the apply.
        assert!(ok(cm.clone(), Some(&live(&[(PART_OF, "edited")], None))).is_ok());
        let refused = |body: Value, l: Option<&DynamicObject>| {
            owned_elsewhere(&id, &others, &body, l).unwrap_err()
        };
        assert!(
            refused(
                json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment", "metadata": {"name": "md"}}),
                None
            )
            .contains("Cluster API object")
        );
        assert!(
            refused(
                json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "DockerMachineTemplate", "metadata": {"name": "t"}}),
                None
            )
            .contains("Cluster API object")
        );
        assert!(
            refused(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
                None
            )
            .contains("system namespace")
        );
        // The cert-manager namespace the providers phase applied.
        assert!(
            refused(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cert-manager"}}),
                Some(&live(&[("clusterctl.cluster.x-k8s.io", "")], Some("fledge-agent")))
            )
            .contains("provider")
        );
        assert!(
            refused(cm.clone(), Some(&live(&[], Some("fledge-agent")))).contains("fledge-agent")
        );
        assert!(
            refused(
                cm.clone(),
                Some(&live(&[(PART_OF, &applyset_id("theirs"))], None))
            )
            .contains("another add-on layer")
        );
        assert!(
            refused(
                cm.clone(),
                Some(&live(
                    &[(LAYER_LABEL, "theirs"), (ID_LABEL, &applyset_id("theirs"))],
                    Some("fledge-agent")
                ))
            )
            .contains("ApplySet parent")
        );
    }

    #[test]
    fn the_layer_timeout_runs_on_the_monotonic_clock() {
        let clock = LayerClock::default();
        let t0 = std::time::Instant::now();
        assert_eq!(clock.unhealthy_for("net", t0), Duration::ZERO);
        let later = t0 + Duration::from_secs(30);
        assert_eq!(clock.unhealthy_for("net", later), Duration::from_secs(30));
        clock.healthy("net");
        assert_eq!(clock.unhealthy_for("net", later), Duration::ZERO);
    }

    #[test]
    fn cached_manifests_the_profile_no_longer_references_are_removed() {
        let state = tempfile::tempdir().unwrap();
        let d = dir(state.path());
        std::fs::create_dir_all(&d).unwrap();
        let (keep, old) = ("a".repeat(64), "b".repeat(64));
        for f in [
            format!("{keep}.yaml"),
            format!("{old}.yaml"),
            "clusterprofile-base.json".into(),
            "clusterprofile-old.json".into(),
            "status.json".into(),
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        collect_cache(state.path(), &[keep.clone()].into(), Some("base"));
        let mut left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                format!("{keep}.yaml"),
                "clusterprofile-base.json".into(),
                "status.json".into()
            ]
        );
    }

    #[test]
    fn cluster_profiles_are_checked_like_inline_profiles() {
        let m = |url: &str, sha: &str| fledge_generator::spec::Manifest {
            name: "m".into(),
            version: "v1".into(),
            url: Some(url.into()),
            inline: None,
            sha256: sha.into(),
        };
        let layer = |name: &str, m| Layer {
            name: name.into(),
            manifests: vec![m],
            timeout_seconds: None,
        };
        let good = "a".repeat(64);
        assert!(
            check_profile(
                "ns",
                "p",
                &[layer("cni", m("https://example.org/cni.yaml", &good))],
                &[layer("net", m("https://example.org/x.yaml", &good))]
            )
            .is_ok()
        );
        // One name across both lists: two layers of one name would prune each other.
        assert!(
            check_profile(
                "ns",
                "p",
                &[layer("net", m("https://example.org/cni.yaml", &good))],
                &[layer("net", m("https://example.org/x.yaml", &good))]
            )
            .unwrap_err()
            .to_string()
            .contains("spec.layers[0].name: must not also name a core layer")
        );
        let e = check_profile(
            "ns",
            "p",
            &[],
            &[
                layer("net", m("http://169.254.169.254/latest/meta-data", &good)),
                layer("net", m("https://example.org/x.yaml", "not-hex")),
                layer("../x", m("https://example.org/x.yaml", &good)),
            ],
        )
        .unwrap_err()
        .to_string();
        for want in [
            "ClusterProfile ns/p is invalid",
            "spec.layers[0].manifests[0].url",
            "spec.layers[1].name",
            "spec.layers[1].manifests[0].sha256",
            "spec.layers[2].name",
        ] {
            assert!(e.contains(want), "{want} in {e}");
        }
    }

    #[test]
    fn health_rules() {
        let d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 1}});
        assert_eq!(
            health("Deployment.apps", &d).as_deref(),
            Some("1/2 available, 2 updated")
        );
        let d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 2}});
        assert_eq!(health("Deployment.apps", &d), None);
        assert!(health("Job.batch", &json!({})).is_some());
        assert!(
            health(
                "Job.batch",
                &json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}})
            )
            .is_none()
        );
        assert!(health("ConfigMap", &json!({})).is_none());
        // A DaemonSet the controller has not looked at yet is not healthy.
        assert!(health("DaemonSet.apps", &json!({"metadata": {"generation": 1}})).is_some());
    }
}
