//! Where an add-on layer's objects come from: the profile's layers (inline in the spec, or the
//! referenced ClusterProfile, read from the management plane or its cached copy, and checked as
//! an inline profile is), each manifest's bytes (inline, cached, or fetched, always checked
//! against the pinned sha256), parsed into objects labelled as members of the layer's ApplySet;
//! and the cache's collection of what the profile no longer references.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use fledge_generator::spec::{ClusterProfile, Layer};
use kube::Api;
use serde_json::{Value, json};

use super::applyset::{PART_OF, applyset_id};
use super::{AddonsError, ProfileLayers, dir, write};
use crate::phases::Context;

/// Default per-layer health timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

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
pub(super) async fn resolve_layers(
    state_dir: &Path,
    layers: &[Layer],
) -> Result<Vec<Resolved>, AddonsError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
