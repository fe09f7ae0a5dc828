//! A provider's components as `clusterctl init` prepares them, read from a directory in the
//! layout of clusterctl's local repository (`<name>/<version>/components.yaml` and
//! `metadata.yaml`):
//! - variables are substituted as `clusterctl init` substitutes them (its syntax, defaults and
//!   required variables: [`envsubst`]; the variables without a value are reported at once, in
//!   one error), with one difference: clusterctl puts values into the text before it parses
//!   the YAML, so a value can change a document; here a value never does (see [`substitute`]);
//! - every object gets clusterctl's labels (`clusterctl.cluster.x-k8s.io` and
//!   `cluster.x-k8s.io/provider`, or `clusterctl.cluster.x-k8s.io/core: cert-manager`);
//! - workloads that do not tolerate the control-plane taint get that toleration, because the
//!   first control-plane node is the only node when they are installed;
//! - the inventory object (`providers.clusterctl.cluster.x-k8s.io`) that clusterctl reads later.
//!
//! Pure data in, data out; the `ProvidersInstalled` phase applies the result.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

pub mod envsubst;

/// Where images bake providers.
pub const DEFAULT_DIR: &str = "/usr/share/fledge/providers";

/// The taint on control-plane nodes.
pub const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane";

/// The provider types clusterctl knows, in its install order (cert-manager first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Kind {
    /// cert-manager (not a CAPI provider; installed first, as `clusterctl init` does).
    CertManager,
    /// `cluster-api`.
    Core,
    /// `bootstrap-<name>`.
    Bootstrap,
    /// `control-plane-<name>`.
    ControlPlane,
    /// `infrastructure-<name>`.
    Infrastructure,
}

impl Kind {
    /// The inventory's `type`.
    pub fn inventory_type(self) -> &'static str {
        match self {
            Kind::CertManager => "",
            Kind::Core => "CoreProvider",
            Kind::Bootstrap => "BootstrapProvider",
            Kind::ControlPlane => "ControlPlaneProvider",
            Kind::Infrastructure => "InfrastructureProvider",
        }
    }
}

/// One provider to install.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Provider {
    /// The type.
    pub kind: Kind,
    /// clusterctl's provider name (`cluster-api`, `kubeadm`, `docker`, `cert-manager`).
    pub name: String,
    /// Version (`v1.13.5`).
    pub version: String,
}

impl Provider {
    /// The `cluster.x-k8s.io/provider` label and the directory name: `bootstrap-kubeadm`.
    pub fn label(&self) -> String {
        match self.kind {
            Kind::CertManager | Kind::Core => self.name.clone(),
            Kind::Bootstrap => format!("bootstrap-{}", self.name),
            Kind::ControlPlane => format!("control-plane-{}", self.name),
            Kind::Infrastructure => format!("infrastructure-{}", self.name),
        }
    }

    /// `<dir>/<label>/<version>`.
    pub fn dir(&self, base: &Path) -> PathBuf {
        base.join(self.label()).join(&self.version)
    }
}

/// Why the components could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ComponentsError {
    /// A file could not be read.
    #[error("{path}: cannot read")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A document is not YAML or not an object.
    #[error("{path}: document {index}: {problem}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based document number.
        index: usize,
        /// What is wrong.
        problem: String,
    },
    /// The text is not valid variable syntax (clusterctl refuses it too).
    #[error("{path}: not valid variable syntax")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where and what.
        #[source]
        source: envsubst::SyntaxError,
    },
    /// Two keys of a mapping are the same after substitution.
    #[error("{path}: document {index}: two keys are {key:?} after substitution")]
    DuplicateKey {
        /// The file.
        path: PathBuf,
        /// 1-based document number.
        index: usize,
        /// The key.
        key: String,
    },
    /// Variables without a value (and without a default).
    #[error(
        "{path}: no value for the variables {}; set them in the Secret named by the request's spec.infrastructure.variablesSecret (or, if they are not secret, under providers.variables in the agent configuration)",
        names.join(", ")
    )]
    Variables {
        /// The file.
        path: PathBuf,
        /// The names, sorted.
        names: Vec<String>,
    },
    /// The version's contract does not match.
    #[error("{path}: {problem}")]
    Metadata {
        /// metadata.yaml.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// No directory for a provider; names what is there.
    #[error("{dir}: provider {label} is not baked into this image ({found})")]
    Missing {
        /// The providers directory.
        dir: PathBuf,
        /// The provider.
        label: String,
        /// What versions exist.
        found: String,
    },
}

/// A provider's objects, ready to apply, in apply order.
#[derive(Debug, Clone)]
pub struct Components {
    /// The provider.
    pub provider: Provider,
    /// Namespaces and CRDs (applied and established first).
    pub foundation: Vec<Value>,
    /// Everything else, webhooks last.
    pub rest: Vec<Value>,
    /// The namespace the provider runs in (its Namespace object).
    pub namespace: Option<String>,
    /// Workloads that got the control-plane toleration (`kind/namespace/name`).
    pub tolerated: Vec<String>,
}

/// The subdirectories of `dir`, sorted (none when it cannot be read).
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Finds `label`'s version under `base`: the configured one, or the only one baked in.
pub fn resolve_version(
    base: &Path,
    label: &str,
    configured: Option<&str>,
) -> Result<String, ComponentsError> {
    let found: Vec<String> = subdirs(&base.join(label))
        .into_iter()
        .filter(|d| d.join("components.yaml").is_file())
        .map(|d| {
            d.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let missing = |label: String| ComponentsError::Missing {
        dir: base.to_path_buf(),
        label,
        found: if found.is_empty() {
            "no version found".into()
        } else {
            format!("found {}", found.join(", "))
        },
    };
    match configured {
        Some(v) if found.iter().any(|f| f == v) => Ok(v.to_string()),
        Some(v) => Err(missing(format!("{label} {v}"))),
        None if found.len() == 1 => Ok(found[0].clone()),
        None if found.is_empty() => Err(missing(label.to_string())),
        None => Err(missing(format!(
            "{label} (several versions; name one under providers.versions)"
        ))),
    }
}

/// Reads and prepares a provider's components from `base`.
pub fn load(
    base: &Path,
    provider: &Provider,
    variables: &BTreeMap<String, String>,
) -> Result<Components, ComponentsError> {
    let path = provider.dir(base).join("components.yaml");
    let text = std::fs::read_to_string(&path).map_err(|source| ComponentsError::Read {
        path: path.clone(),
        source,
    })?;
    prepare(&path, &text, provider, variables)
}

/// Prepares components from text (`path` names it in errors).
pub fn prepare(
    path: &Path,
    text: &str,
    provider: &Provider,
    variables: &BTreeMap<String, String>,
) -> Result<Components, ComponentsError> {
    let mut docs = Vec::new();
    for (i, v) in substitute(path, text, variables)?.into_iter().enumerate() {
        match &v {
            Value::Null => continue,
            Value::Object(o) if o.contains_key("kind") && o.contains_key("apiVersion") => {}
            _ => {
                return Err(ComponentsError::Parse {
                    path: path.to_path_buf(),
                    index: i + 1,
                    problem: "not a Kubernetes object (needs apiVersion and kind)".into(),
                });
            }
        }
        docs.push(v);
    }
    let label = provider.label();
    let mut tolerated = Vec::new();
    for (i, d) in docs.iter_mut().enumerate() {
        let labels = crate::json::object_mut(d, &["metadata", "labels"]).map_err(|problem| {
            ComponentsError::Parse {
                path: path.to_path_buf(),
                index: i + 1,
                problem,
            }
        })?;
        labels.insert("clusterctl.cluster.x-k8s.io".into(), json!(""));
        if provider.kind == Kind::CertManager {
            labels.insert(
                "clusterctl.cluster.x-k8s.io/core".into(),
                json!("cert-manager"),
            );
        } else {
            labels.insert("cluster.x-k8s.io/provider".into(), json!(label));
        }
        if tolerate_control_plane(d) {
            tolerated.push(format!(
                "{}/{}/{}",
                d["kind"].as_str().unwrap_or(""),
                d["metadata"]["namespace"].as_str().unwrap_or(""),
                d["metadata"]["name"].as_str().unwrap_or("")
            ));
        }
    }
    let namespace = docs
        .iter()
        .find(|d| d["kind"] == "Namespace")
        .and_then(|d| d["metadata"]["name"].as_str())
        .map(str::to_string);
    let (foundation, mut rest): (Vec<Value>, Vec<Value>) = docs
        .into_iter()
        .partition(|d| d["kind"] == "Namespace" || d["kind"] == "CustomResourceDefinition");
    // Webhook configurations last: their services must exist before the apiserver calls them.
    rest.sort_by_key(|d| {
        d["kind"]
            .as_str()
            .is_some_and(|k| k.ends_with("WebhookConfiguration"))
    });
    Ok(Components {
        provider: provider.clone(),
        foundation,
        rest,
        namespace,
        tolerated,
    })
}

/// The documents of `text` with `variables` substituted (null for empty documents), equal to
/// what clusterctl parses from its substituted text wherever a value does not hold YAML syntax.
///
/// clusterctl substitutes into the text, then parses it. Defaults are part of the components, so
/// they go into the text here too: `${X:=""}` in a plain scalar is the YAML `""`, an empty
/// string, and `${X:=false}` a boolean, as for clusterctl. Values do not: each goes in as a
/// placeholder, so the text parsed (and with it every document's structure) is the same
/// whatever the values are. The placeholders are then replaced in the parsed strings (keys
/// included) by the values as they are, so quotes, `#`, `: `, line breaks or `---` in a value stay
/// characters of that string. The one thing a value takes from YAML is the type of a plain
/// scalar it makes up: the text is parsed a second time with `1` for every placeholder, and a
/// scalar that reads as a number there is plain and made of references only; its value is then
/// read as YAML 1.2 reads a plain scalar (null, boolean, number), as clusterctl's parse of
/// `replicas: ${N}` gives a number. A value that is not a single plain scalar stays a string.
///
/// fledge reads YAML 1.2 here as everywhere: the YAML 1.1 forms clusterctl's parser also
/// resolves (`yes`, `on`, `y`, `0755`, `1_000`) are strings, in the components' own text as in
/// values and defaults.
pub fn substitute(
    path: &Path,
    text: &str,
    variables: &BTreeMap<String, String>,
) -> Result<Vec<Value>, ComponentsError> {
    let text = envsubst::convert_legacy(text);
    let nodes = envsubst::parse(&text).map_err(|source| ComponentsError::Syntax {
        path: path.to_path_buf(),
        source,
    })?;
    let names = envsubst::required(&nodes, variables);
    if !names.is_empty() {
        return Err(ComponentsError::Variables {
            path: path.to_path_buf(),
            names,
        });
    }
    // Letters and digits only: the same in every scalar style, never split by folding.
    let mut base = String::from("zfledgevalue");
    while text.contains(&base) {
        base.push('z');
    }
    let mut values = Vec::new();
    let mut with_placeholders = String::with_capacity(text.len());
    envsubst::evaluate(&nodes, variables, &mut with_placeholders, &mut |v, out| {
        out.push_str(&format!("{base}{}z", values.len()));
        values.push(v.to_string());
    });
    let docs = parse_all(path, &with_placeholders)?;
    if values.is_empty() {
        return Ok(docs);
    }
    let placeholders = Placeholders {
        base: &base,
        values: &values,
    };
    let probed = {
        let mut ones = String::with_capacity(text.len());
        envsubst::evaluate(&nodes, variables, &mut ones, &mut |_, out| {
            out.push_str(PROBE)
        });
        parse_all(path, &ones)
            .ok()
            .filter(|p| p.len() == docs.len())
    };
    let mut out = Vec::with_capacity(docs.len());
    for (i, mut d) in docs.into_iter().enumerate() {
        let probe = probed.as_ref().map(|p| &p[i]);
        placeholders
            .replace(&mut d, probe)
            .map_err(|key| ComponentsError::DuplicateKey {
                path: path.to_path_buf(),
                index: i + 1,
                key,
            })?;
        out.push(d);
    }
    Ok(out)
}

/// Every document of `text`, null for an empty one. Bounded as every untrusted YAML the agent
/// reads: aliases may not expand the text beyond a multiple of its size, and a repeated key is
/// an error (`fledge_generator::yaml`).
fn parse_all(path: &Path, text: &str) -> Result<Vec<Value>, ComponentsError> {
    let docs =
        fledge_generator::yaml::parse_numbered(text).map_err(|e| ComponentsError::Parse {
            path: path.to_path_buf(),
            index: e.document,
            problem: e.within_document(),
        })?;
    let mut out = Vec::new();
    for (number, v) in docs {
        out.resize(number - 1, Value::Null);
        out.push(v);
    }
    Ok(out)
}

/// What stands for every value in the second parse: a plain scalar made only of it reads as a
/// number (`1`, `11`, `-1`, `1.1`, `0x1`; YAML 1.2 reads `00` as a string), a quoted or block
/// one as a string.
const PROBE: &str = "1";

/// The values standing behind `<base><index>z` in parsed documents.
struct Placeholders<'a> {
    base: &'a str,
    values: &'a [String],
}

impl Placeholders<'_> {
    /// `s` with every placeholder replaced by `with(value)`.
    fn fill(&self, s: &str, with: impl Fn(&str) -> String) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(at) = rest.find(self.base) {
            out.push_str(&rest[..at]);
            let after = &rest[at + self.base.len()..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let value = after[..digits]
                .parse::<usize>()
                .ok()
                .filter(|_| after[digits..].starts_with('z'))
                .and_then(|i| self.values.get(i));
            match value {
                Some(v) => {
                    out.push_str(&with(v));
                    rest = &after[digits + 1..];
                }
                None => {
                    out.push_str(self.base);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Replaces the placeholders in `v`; `probe` is the same place parsed with `1` for every
    /// placeholder. Err(key) when two keys of a mapping become the same.
    fn replace(&self, v: &mut Value, probe: Option<&Value>) -> Result<(), String> {
        match v {
            Value::String(s) if s.contains(self.base) => {
                let text = self.fill(s, str::to_string);
                *v = match probe {
                    Some(Value::Number(_)) => plain_scalar(&text),
                    _ => None,
                }
                .unwrap_or(Value::String(text));
            }
            Value::Array(a) => {
                for (i, x) in a.iter_mut().enumerate() {
                    self.replace(x, probe.and_then(|p| p.get(i)))?;
                }
            }
            Value::Object(o) if o.keys().any(|k| k.contains(self.base)) => {
                let probe_keys: Vec<String> =
                    o.keys().map(|k| self.fill(k, |_| PROBE.into())).collect();
                let mut filled = serde_json::Map::new();
                for (k, mut x) in std::mem::take(o) {
                    let pk = self.fill(&k, |_| PROBE.into());
                    // Keys that meet in the probe cannot tell their subtrees apart.
                    let unique = probe_keys.iter().filter(|q| **q == pk).count() == 1;
                    let child = probe.filter(|_| unique).and_then(|p| p.get(&pk));
                    self.replace(&mut x, child)?;
                    let key = self.fill(&k, str::to_string);
                    if filled.contains_key(&key) {
                        return Err(key);
                    }
                    filled.insert(key, x);
                }
                *o = filled;
            }
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    self.replace(x, probe.and_then(|p| p.get(k)))?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The null, boolean or number YAML 1.2 reads `text` as when it is a whole plain scalar; None
/// when it is a string or not one plain scalar (a comment, a `: `, quotes, a flow collection,
/// leading or trailing blanks, several lines).
fn plain_scalar(text: &str) -> Option<Value> {
    let first = text.chars().next()?;
    let second = text.chars().nth(1);
    let indicator = ",[]{}#&*!|>'\"%@`".contains(first)
        || (matches!(first, '-' | '?' | ':') && second.is_none_or(|c| c == ' '));
    if indicator
        || text.trim() != text
        || text.contains(['\n', '\r', '\t'])
        || text.contains(" #")
        || text.contains(": ")
        || text.ends_with(':')
    {
        return None;
    }
    let parsed: Value = serde_norway::from_str(&format!("k: {text}")).ok()?;
    let obj = parsed.as_object().filter(|o| o.len() == 1)?;
    match obj.get("k")? {
        v @ (Value::Null | Value::Bool(_) | Value::Number(_)) => Some(v.clone()),
        _ => None,
    }
}

/// `s` with values and defaults put in as text (what clusterctl's text substitution makes of
/// the one string), for listing images; `missing` gets the required variables without a value.
/// A string that is not valid variable syntax is kept as it is.
fn expand(s: &str, vars: &BTreeMap<String, String>, missing: &mut BTreeSet<String>) -> String {
    let text = envsubst::convert_legacy(s);
    let Ok(nodes) = envsubst::parse(&text) else {
        return s.to_string();
    };
    missing.extend(envsubst::required(&nodes, vars));
    let mut out = String::with_capacity(s.len());
    envsubst::evaluate(&nodes, vars, &mut out, &mut |v, out| out.push_str(v));
    out
}

/// Adds the control-plane toleration to a Deployment, StatefulSet or DaemonSet whose pods do
/// not tolerate that taint already; true when it changed the object.
fn tolerate_control_plane(d: &mut Value) -> bool {
    let kind = d["kind"].as_str().unwrap_or("");
    if !matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet") {
        return false;
    }
    let Some(spec) = d
        .pointer_mut("/spec/template/spec")
        .and_then(Value::as_object_mut)
    else {
        return false;
    };
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if !tolerations.is_array() {
        *tolerations = json!([]);
    }
    let Value::Array(list) = tolerations else {
        return false;
    };
    let covered = list.iter().any(|t| {
        let key = t["key"].as_str();
        let effect = t["effect"].as_str();
        let op_exists = t["operator"] == "Exists";
        (key.is_none() && op_exists)
            || (key == Some(CONTROL_PLANE_TAINT) && matches!(effect, None | Some("NoSchedule")))
    });
    if covered {
        return false;
    }
    list.push(json!({"key": CONTROL_PLANE_TAINT, "operator": "Exists", "effect": "NoSchedule"}));
    true
}

/// The inventory entry clusterctl writes for an installed provider (cert-manager has none).
pub fn inventory(provider: &Provider, namespace: &str) -> Option<Value> {
    if provider.kind == Kind::CertManager {
        return None;
    }
    let label = provider.label();
    Some(json!({
        "apiVersion": "clusterctl.cluster.x-k8s.io/v1alpha3",
        "kind": "Provider",
        "metadata": {
            "name": label,
            "namespace": namespace,
            "labels": {
                "clusterctl.cluster.x-k8s.io": "",
                "cluster.x-k8s.io/provider": label,
                "clusterctl.cluster.x-k8s.io/core": "inventory",
            },
        },
        "providerName": provider.name,
        "type": provider.kind.inventory_type(),
        "version": provider.version,
    }))
}

/// The contract `metadata.yaml` gives `provider`'s version (`v1beta2`).
pub fn contract_of(base: &Path, provider: &Provider) -> Result<String, ComponentsError> {
    let path = provider.dir(base).join("metadata.yaml");
    let err = |problem: String| ComponentsError::Metadata {
        path: path.clone(),
        problem,
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ComponentsError::Read {
        path: path.clone(),
        source,
    })?;
    let meta: Value = serde_norway::from_str(&text).map_err(|e| err(e.to_string()))?;
    let (major, minor) = parse_version(&provider.version).ok_or_else(|| {
        err(format!(
            "version {:?} is not vMAJOR.MINOR.PATCH",
            provider.version
        ))
    })?;
    let series = meta["releaseSeries"]
        .as_array()
        .ok_or_else(|| err("releaseSeries: missing".into()))?;
    series
        .iter()
        .find(|s| s["major"].as_u64() == Some(major) && s["minor"].as_u64() == Some(minor))
        .and_then(|s| s["contract"].as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            err(format!(
                "releaseSeries: no entry for {major}.{minor} (the version {})",
                provider.version
            ))
        })
}

/// The contracts a Cluster API core of contract `core` works with, newest first: its own and,
/// for v1beta2, v1beta1 as well (until v1beta1 is end-of-life). This is Cluster API v1.13's
/// `GetCompatibleVersions` (`internal/contract/version.go`).
pub fn compatible_contracts(core: &str) -> Vec<&str> {
    let mut out = vec![core];
    if core == "v1beta2" {
        out.push("v1beta1");
    }
    out
}

/// Checks that `provider`'s version works with the cluster's `contract`; returns the contract
/// its `metadata.yaml` gives it. Cluster API's rule (clusterctl's `providerInstaller.Validate`
/// in `cmd/clusterctl/client/cluster/installer.go`): the core provider's contract is the
/// management cluster's, and every other provider must follow a contract compatible with it
/// ([`compatible_contracts`]). The cluster's `contract` is what the agent writes Cluster API
/// objects at, so the core must follow it exactly; a bootstrap, control-plane or
/// infrastructure provider may follow v1beta1 under a v1beta2 core.
pub fn check_contract(
    base: &Path,
    provider: &Provider,
    contract: &str,
) -> Result<String, ComponentsError> {
    let found = contract_of(base, provider)?;
    let accepted = if provider.kind == Kind::Core {
        vec![contract]
    } else {
        compatible_contracts(contract)
    };
    if !accepted.contains(&found.as_str()) {
        return Err(ComponentsError::Metadata {
            path: provider.dir(base).join("metadata.yaml"),
            problem: format!(
                "{} {} follows the Cluster API contract {found}; the cluster needs {}",
                provider.label(),
                provider.version,
                accepted.join(" or ")
            ),
        });
    }
    Ok(found)
}

/// Every CRD of a bootstrap, control-plane or infrastructure provider must carry a non-empty
/// contract label `cluster.x-k8s.io/<contract>` (its API versions for that contract, joined by
/// `_`) for one of the contracts compatible with the cluster's: Cluster API reads a referenced
/// object at the newest version the newest such label names, and finds none without one
/// ("cannot find any versions matching contract versions"; `GetLatestContractAndAPIVersionFromContract`
/// in Cluster API's `internal/contract/version.go`).
pub fn check_crd_contract_labels(c: &Components, contract: &str) -> Result<(), ComponentsError> {
    // The core provider's own types are not referenced through contracts.
    if matches!(c.provider.kind, Kind::CertManager | Kind::Core) {
        return Ok(());
    }
    let compatible = compatible_contracts(contract);
    let mut unlabelled = Vec::new();
    for crd in c
        .foundation
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
    {
        let labelled = compatible.iter().any(|v| {
            crd["metadata"]["labels"][format!("cluster.x-k8s.io/{v}")]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        });
        if !labelled {
            unlabelled.push(crd["metadata"]["name"].as_str().unwrap_or_default());
        }
    }
    if unlabelled.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = compatible
        .iter()
        .map(|v| format!("cluster.x-k8s.io/{v}"))
        .collect();
    Err(ComponentsError::Metadata {
        path: PathBuf::from(format!(
            "{}/{}/components.yaml",
            c.provider.label(),
            c.provider.version
        )),
        problem: format!(
            "CRDs without a contract label for {} ({}; Cluster API cannot use them): {}",
            compatible.join(" or "),
            keys.join(" or "),
            unlabelled.join(", ")
        ),
    })
}

/// One provider version baked into a providers directory, as `fledge-agent providers` lists it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Baked {
    /// `cluster-api`, `bootstrap-kubeadm`, ...
    pub label: String,
    /// Version directory.
    pub version: String,
    /// The contract `metadata.yaml` gives the version (none for cert-manager).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// Objects in `components.yaml`.
    pub objects: usize,
    /// Container images the workloads run (defaults of `${VAR:=default}` substituted): what an
    /// image build pre-pulls so that no registry is needed at first boot.
    pub images: Vec<String>,
    /// Variables without a default that the agent configuration must set.
    pub needs: Vec<String>,
    /// What makes it unusable, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The provider kind a directory name stands for.
pub fn kind_of(label: &str) -> Option<(Kind, String)> {
    match label {
        "cert-manager" => Some((Kind::CertManager, label.into())),
        "cluster-api" => Some((Kind::Core, label.into())),
        _ => [
            ("bootstrap-", Kind::Bootstrap),
            ("control-plane-", Kind::ControlPlane),
            ("infrastructure-", Kind::Infrastructure),
        ]
        .into_iter()
        .find_map(|(prefix, k)| label.strip_prefix(prefix).map(|n| (k, n.to_string()))),
    }
}

/// Everything baked under `base`, sorted; each entry checked as the agent would load it.
pub fn baked(base: &Path, variables: &BTreeMap<String, String>) -> Vec<Baked> {
    let mut out = Vec::new();
    for dir in subdirs(base) {
        let label = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for vdir in subdirs(&dir) {
            let version = vdir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let mut b = Baked {
                label: label.clone(),
                version: version.clone(),
                contract: None,
                objects: 0,
                images: vec![],
                needs: vec![],
                problem: None,
            };
            let Some((kind, name)) = kind_of(&label) else {
                b.problem = Some(format!(
                    "{label}: not a provider name clusterctl knows (cert-manager, cluster-api, bootstrap-*, control-plane-*, infrastructure-*)"
                ));
                out.push(b);
                continue;
            };
            let p = Provider {
                kind,
                name,
                version,
            };
            if kind != Kind::CertManager {
                match contract_of(base, &p) {
                    Ok(c) => b.contract = Some(c),
                    Err(e) => b.problem = Some(e.to_string()),
                }
            }
            let path = p.dir(base).join("components.yaml");
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    b.problem = Some(format!("{}: {e}", path.display()));
                    out.push(b);
                    continue;
                }
            };
            let mut missing = BTreeSet::new();
            let mut images = BTreeSet::new();
            for doc in serde_norway::Deserializer::from_str(&text) {
                let Ok(v) = Value::deserialize(doc) else {
                    continue;
                };
                for key in ["containers", "initContainers"] {
                    for c in v["spec"]["template"]["spec"][key]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        if let Some(i) = c["image"].as_str() {
                            images.insert(expand(i, variables, &mut missing));
                        }
                    }
                }
            }
            b.images = images.into_iter().collect();
            match prepare(&path, &text, &p, variables) {
                Ok(c) => b.objects = c.foundation.len() + c.rest.len(),
                Err(ComponentsError::Variables { names, .. }) => b.needs = names,
                Err(e) => b.problem = Some(e.to_string()),
            }
            out.push(b);
        }
    }
    out
}

fn parse_version(v: &str) -> Option<(u64, u64)> {
    let mut it = v.strip_prefix('v')?.split(['.', '-', '+']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn core() -> Provider {
        Provider {
            kind: Kind::Core,
            name: "cluster-api".into(),
            version: "v1.13.5".into(),
        }
    }

    #[test]
    fn variables_expand_in_strings_with_defaults_and_all_missing_ones_are_named_at_once() {
        let mut missing = BTreeSet::new();
        let v = vars(&[("A", "x: {y}")]);
        assert_eq!(
            expand("--a=${A} --b=${B:=false} --c=${C:-1}", &v, &mut missing),
            "--a=x: {y} --b=false --c=1"
        );
        assert!(missing.is_empty());
        assert_eq!(
            expand("$1 ${not-a-name} ${", &v, &mut missing),
            "$1 ${not-a-name} ${"
        );
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata:\n  k: \"${ZED} ${ALPHA}\"\n  j: ${ALPHA}\n";
        let err = prepare(Path::new("c.yaml"), text, &core(), &v).unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.yaml: no value for the variables ALPHA, ZED; set them in the Secret named by the request's spec.infrastructure.variablesSecret (or, if they are not secret, under providers.variables in the agent configuration)"
        );
    }

    #[test]
    fn capa_role_annotation_comes_from_its_prefix_replacement() {
        // CAPA v2.11.1's config/rbac/serviceaccount.yaml: the replacement's string is the
        // components' text (a mapping entry), the rest of the value stays a string.
        let text = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: controller-manager\n  annotations:\n    # envsubst's prefix substitution\n    ${AWS_CONTROLLER_IAM_ROLE/#arn/eks.amazonaws.com/role-arn: arn}\n";
        let path = Path::new("components.yaml");
        let unset = substitute(path, text, &vars(&[])).unwrap();
        assert_eq!(unset[0]["metadata"]["annotations"], Value::Null);
        let role = "arn:aws:iam::123456789012:role/capa # x: y";
        let set = substitute(path, text, &vars(&[("AWS_CONTROLLER_IAM_ROLE", role)])).unwrap();
        assert_eq!(
            set[0]["metadata"]["annotations"],
            json!({"eks.amazonaws.com/role-arn": role})
        );
    }

    #[test]
    fn malformed_fields_in_a_release_are_errors_naming_the_document_not_panics() {
        let v = vars(&[]);
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b, labels: [x]}\n";
        let err = prepare(Path::new("c.yaml"), text, &core(), &v).unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.yaml: document 2: metadata.labels must be a mapping (got a list)"
        );
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: text\n";
        let err = prepare(Path::new("c.yaml"), text, &core(), &v).unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.yaml: document 1: metadata must be a mapping (got a string)"
        );
        // A workload whose pod template is not a mapping gets no toleration, and no panic.
        for spec in [
            "spec: x",
            "spec: {template: [a]}",
            "spec: {template: {spec: 1}}",
        ] {
            let text =
                format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\n{spec}\n");
            let c = prepare(Path::new("c.yaml"), &text, &core(), &v).unwrap();
            assert!(c.tolerated.is_empty(), "{spec}");
        }
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {template: {spec: {tolerations: bad}}}\n";
        assert_eq!(
            prepare(Path::new("c.yaml"), text, &core(), &v)
                .unwrap()
                .tolerated
                .len(),
            1
        );
    }

    #[test]
    fn a_default_is_yaml_text_and_a_value_only_types_a_plain_scalar() {
        let text = r#"apiVersion: v1
kind: Case
metadata: {name: a}
spec:
  sync: ${AZURE_SYNC_PERIOD:=""}
  flag: ${F:=false}
  quoted: "${F:=false}"
  n: ${N}
  qn: "${N}"
  arg: --n=${N}
  k-${N}: x
  text: ${T}
"#;
        let v = vars(&[("N", "3"), ("T", "a: b # c")]);
        let c = prepare(Path::new("c.yaml"), text, &core(), &v).unwrap();
        assert_eq!(
            c.rest[0]["spec"],
            json!({"sync": "", "flag": false, "quoted": "false", "n": 3, "qn": "3",
                "arg": "--n=3", "k-3": "x", "text": "a: b # c"})
        );
    }

    #[test]
    fn bad_variable_syntax_and_keys_that_meet_are_errors() {
        let text =
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: ${not-a-name}}\n";
        let e = prepare(Path::new("c.yaml"), text, &core(), &vars(&[])).unwrap_err();
        assert_eq!(e.to_string(), "c.yaml: not valid variable syntax");
        assert_eq!(
            std::error::Error::source(&e).unwrap().to_string(),
            "line 4: missing closing brace"
        );
        let text =
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {${A}: 1, ${B}: 2}\n";
        let e = prepare(
            Path::new("c.yaml"),
            text,
            &core(),
            &vars(&[("A", "x"), ("B", "x")]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.yaml: document 1: two keys are \"x\" after substitution"
        );
    }

    #[test]
    fn a_value_cannot_change_the_structure_of_a_document() {
        let v = vars(&[("X", "a\nkind: Secret\n---\nb: c")]);
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: \"${X}\"}\n";
        let c = prepare(Path::new("c.yaml"), text, &core(), &v).unwrap();
        assert_eq!(c.rest.len(), 1);
        assert_eq!(c.rest[0]["kind"], "ConfigMap");
        assert_eq!(c.rest[0]["data"]["k"], "a\nkind: Secret\n---\nb: c");
    }

    #[test]
    fn objects_get_clusterctl_labels_and_workloads_the_control_plane_toleration() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: capi-system}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: w}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: m, namespace: capi-system, labels: {app: m}}
spec: {template: {spec: {containers: []}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: t, namespace: capi-system}
spec: {template: {spec: {tolerations: [{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}]}}}
"#;
        let c = prepare(Path::new("c.yaml"), text, &core(), &BTreeMap::new()).unwrap();
        assert_eq!(c.namespace.as_deref(), Some("capi-system"));
        assert_eq!(c.foundation.len(), 1);
        let kinds: Vec<_> = c.rest.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["Deployment", "Deployment", "ValidatingWebhookConfiguration"]
        );
        let m = &c.rest[0];
        assert_eq!(m["metadata"]["labels"]["app"], "m");
        assert_eq!(
            m["metadata"]["labels"]["cluster.x-k8s.io/provider"],
            "cluster-api"
        );
        assert_eq!(m["metadata"]["labels"]["clusterctl.cluster.x-k8s.io"], "");
        assert_eq!(
            m["spec"]["template"]["spec"]["tolerations"][0]["key"],
            CONTROL_PLANE_TAINT
        );
        assert_eq!(c.tolerated, ["Deployment/capi-system/m"]);
        let cm = Provider {
            kind: Kind::CertManager,
            name: "cert-manager".into(),
            version: "v1.18.2".into(),
        };
        let c = prepare(Path::new("c.yaml"), text, &cm, &BTreeMap::new()).unwrap();
        assert_eq!(
            c.rest[0]["metadata"]["labels"]["clusterctl.cluster.x-k8s.io/core"],
            "cert-manager"
        );
        assert!(inventory(&cm, "cert-manager").is_none());
    }

    #[test]
    fn a_baked_directory_lists_images_needed_variables_and_problems() {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write(
            "cert-manager/v1.18.2/components.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: cm, namespace: cert-manager}\nspec: {template: {spec: {containers: [{name: c, image: \"q.example/cm:${TAG:=v1.18.2}\"}]}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {k: \"${KEY}\"}\n",
        );
        write("infrastructure-docker/v1.13.5/components.yaml", "");
        write("bogus/v1/components.yaml", "");
        let b = baked(dir.path(), &BTreeMap::new());
        let labels: Vec<_> = b.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["bogus", "cert-manager", "infrastructure-docker"]);
        assert!(
            b[0].problem
                .as_deref()
                .unwrap()
                .contains("not a provider name")
        );
        assert_eq!(b[1].images, ["q.example/cm:v1.18.2"]);
        assert_eq!(b[1].needs, ["KEY"]);
        assert!(b[1].problem.is_none(), "{:?}", b[1].problem);
        assert!(
            b[2].problem.as_deref().unwrap().contains("metadata.yaml"),
            "{:?}",
            b[2].problem
        );
        assert_eq!(
            kind_of("control-plane-kubeadm"),
            Some((Kind::ControlPlane, "kubeadm".into()))
        );
    }

    #[test]
    fn the_contract_comes_from_metadata_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let p = core();
        std::fs::create_dir_all(p.dir(dir.path())).unwrap();
        std::fs::write(p.dir(dir.path()).join("components.yaml"), "").unwrap();
        std::fs::write(
            p.dir(dir.path()).join("metadata.yaml"),
            "releaseSeries:\n- {major: 1, minor: 13, contract: v1beta2}\n- {major: 1, minor: 10, contract: v1beta1}\n",
        )
        .unwrap();
        assert_eq!(
            check_contract(dir.path(), &p, "v1beta2").unwrap(),
            "v1beta2"
        );
        let e = check_contract(dir.path(), &p, "v1beta1").unwrap_err();
        assert!(
            e.to_string()
                .contains("follows the Cluster API contract v1beta2; the cluster needs v1beta1"),
            "{e}"
        );
        assert_eq!(
            resolve_version(dir.path(), "cluster-api", None).unwrap(),
            "v1.13.5"
        );
        let e = resolve_version(dir.path(), "bootstrap-kubeadm", None).unwrap_err();
        assert!(
            e.to_string().contains(
                "provider bootstrap-kubeadm is not baked into this image (no version found)"
            ),
            "{e}"
        );
        let e = resolve_version(dir.path(), "cluster-api", Some("v1.12.0")).unwrap_err();
        assert!(
            e.to_string()
                .contains("cluster-api v1.12.0 is not baked into this image (found v1.13.5)"),
            "{e}"
        );
    }

    /// A provider directory under a temporary base with `metadata.yaml` declaring `contract`
    /// for the provider's minor version.
    fn with_metadata(p: &Provider, contract: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let (major, minor) = parse_version(&p.version).unwrap();
        std::fs::create_dir_all(p.dir(dir.path())).unwrap();
        std::fs::write(p.dir(dir.path()).join("components.yaml"), "").unwrap();
        std::fs::write(
            p.dir(dir.path()).join("metadata.yaml"),
            format!("releaseSeries:\n- {{major: {major}, minor: {minor}, contract: {contract}}}\n"),
        )
        .unwrap();
        dir
    }

    fn infra(name: &str, version: &str) -> Provider {
        Provider {
            kind: Kind::Infrastructure,
            name: name.into(),
            version: version.into(),
        }
    }

    /// Components of `p` with one CRD labelled `labels`.
    fn with_crd(p: &Provider, labels: &[(&str, &str)]) -> Components {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        Components {
            provider: p.clone(),
            foundation: vec![json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": "awsclusters.infrastructure.cluster.x-k8s.io", "labels": labels},
            })],
            rest: vec![],
            namespace: None,
            tolerated: vec![],
        }
    }

    #[test]
    fn a_v1beta1_provider_is_accepted_under_a_v1beta2_core() {
        for (name, version) in [("aws", "v2.11.1"), ("azure", "v1.26.0"), ("gcp", "v1.12.0")] {
            let p = infra(name, version);
            let dir = with_metadata(&p, "v1beta1");
            assert_eq!(
                check_contract(dir.path(), &p, "v1beta2").unwrap(),
                "v1beta1",
                "{name}"
            );
        }
    }

    #[test]
    fn crds_labelled_only_for_v1beta1_are_accepted_under_a_v1beta2_core() {
        let p = infra("aws", "v2.11.1");
        let c = with_crd(&p, &[("cluster.x-k8s.io/v1beta1", "v1beta1_v1beta2")]);
        check_crd_contract_labels(&c, "v1beta2").unwrap();
        let c = with_crd(&p, &[("cluster.x-k8s.io/v1beta2", "v1beta2")]);
        check_crd_contract_labels(&c, "v1beta2").unwrap();
    }

    #[test]
    fn a_v1alpha4_provider_is_refused_under_either_core() {
        let p = infra("aws", "v0.7.0");
        let dir = with_metadata(&p, "v1alpha4");
        for core in ["v1beta2", "v1beta1"] {
            let e = check_contract(dir.path(), &p, core).unwrap_err();
            assert!(
                e.to_string().contains(
                    "infrastructure-aws v0.7.0 follows the Cluster API contract v1alpha4"
                ),
                "{e}"
            );
        }
        let c = with_crd(&p, &[("cluster.x-k8s.io/v1alpha4", "v1alpha4")]);
        let e = check_crd_contract_labels(&c, "v1beta2").unwrap_err();
        assert!(
            e.to_string()
                .contains("awsclusters.infrastructure.cluster.x-k8s.io"),
            "{e}"
        );
    }

    #[test]
    fn a_v1beta2_provider_is_refused_under_a_v1beta1_core() {
        // Compatibility goes one way: a v1beta1 core accepts v1beta1 providers only.
        let p = infra("docker", "v1.13.5");
        let dir = with_metadata(&p, "v1beta2");
        let e = check_contract(dir.path(), &p, "v1beta1").unwrap_err();
        assert!(
            e.to_string()
                .contains("follows the Cluster API contract v1beta2"),
            "{e}"
        );
        let c = with_crd(&p, &[("cluster.x-k8s.io/v1beta2", "v1beta2")]);
        assert!(check_crd_contract_labels(&c, "v1beta1").is_err());
    }

    #[test]
    fn the_core_provider_must_follow_the_clusters_contract_itself() {
        // The core's contract is the management cluster's (clusterctl), and the agent writes
        // Cluster API objects at it: a v1beta1 core cannot serve a v1beta2 cluster.
        let p = Provider {
            kind: Kind::Core,
            name: "cluster-api".into(),
            version: "v1.10.0".into(),
        };
        let dir = with_metadata(&p, "v1beta1");
        assert!(check_contract(dir.path(), &p, "v1beta2").is_err());
        assert_eq!(
            check_contract(dir.path(), &p, "v1beta1").unwrap(),
            "v1beta1"
        );
    }

    #[test]
    fn crds_without_a_compatible_non_empty_contract_label_are_refused() {
        let p = infra("aws", "v2.11.1");
        for labels in [
            &[][..],
            &[("cluster.x-k8s.io/v1beta1", "")][..],
            &[("cluster.x-k8s.io/v1alpha4", "v1alpha4")][..],
        ] {
            let e = check_crd_contract_labels(&with_crd(&p, labels), "v1beta2").unwrap_err();
            assert!(
                e.to_string().contains(
                    "CRDs without a contract label for v1beta2 or v1beta1 (cluster.x-k8s.io/v1beta2 or cluster.x-k8s.io/v1beta1; Cluster API cannot use them): awsclusters.infrastructure.cluster.x-k8s.io"
                ),
                "{labels:?}: {e}"
            );
        }
        assert_eq!(compatible_contracts("v1beta2"), ["v1beta2", "v1beta1"]);
        assert_eq!(compatible_contracts("v1beta1"), ["v1beta1"]);
    }
}
