//! Reading a request file: size, encoding, YAML syntax, document shape, schema, then semantics.
//! Every error names the file, and the line/column or the field path, and the rule.

use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use kube::CustomResourceExt;
use serde_json::Value;

use super::salvage;
use super::{
    CheckedCluster, FledgeCluster, FledgeClusterSpec, RequestMeta, types::API_VERSION, validate,
};
use crate::schema::{Validator, Violation};
use crate::yaml::{self, YamlError, YamlErrorKind};

/// Requests larger than this are refused before parsing.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Everything wrong with a request file.
#[derive(Debug, Clone)]
pub struct RequestError {
    /// The file as the user named it.
    pub file: String,
    /// One line per problem, without the file prefix.
    pub problems: Vec<String>,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            // Syntax errors carry `:line:col`; everything else is `: path: rule`.
            if p.starts_with(':') {
                write!(f, "{}{p}", self.file)?;
            } else {
                write!(f, "{}: {p}", self.file)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for RequestError {}

/// Why a request file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadRequestError {
    /// The file could not be read.
    #[error("{file}: cannot read")]
    Read {
        /// The file as the user named it.
        file: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid request.
    #[error(transparent)]
    Invalid(#[from] RequestError),
}

impl RequestError {
    fn one(file: &str, problem: impl Into<String>) -> Self {
        RequestError {
            file: file.to_string(),
            problems: vec![problem.into()],
        }
    }
    fn many(file: &str, violations: Vec<Violation>) -> Self {
        RequestError {
            file: file.to_string(),
            problems: violations.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Reads and validates the request at `path`.
pub fn load_request(path: &Path) -> Result<CheckedCluster, LoadRequestError> {
    let label = path.display().to_string();
    let read = |source| LoadRequestError::Read {
        file: label.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.is_dir() {
        return Err(RequestError::one(
            &label,
            "is a directory; expected a FledgeCluster YAML file",
        )
        .into());
    }
    if meta.len() > MAX_REQUEST_BYTES as u64 {
        return Err(too_big(&label, meta.len()).into());
    }
    let bytes = std::fs::read(path).map_err(read)?;
    Ok(parse_request(&label, &bytes)?)
}

fn too_big(label: &str, len: u64) -> RequestError {
    RequestError::one(
        label,
        format!("is {len} bytes; a FledgeCluster request may be at most {MAX_REQUEST_BYTES} bytes"),
    )
}

/// Parses and validates request bytes; `label` names the source in errors.
pub fn parse_request(label: &str, bytes: &[u8]) -> Result<CheckedCluster, RequestError> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(too_big(label, bytes.len() as u64));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, col) = line_col(&bytes[..e.valid_up_to()]);
        RequestError::one(
            label,
            format!(
                ":{line}:{col}: is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);

    // Duplicate keys and alias expansion are refused here (see `crate::yaml`).
    let mut docs =
        yaml::parse_documents(text).map_err(|e| RequestError::one(label, yaml_error(&e)))?;
    let doc = match docs.len() {
        0 => {
            return Err(RequestError::one(
                label,
                "is empty; expected one FledgeCluster document",
            ));
        }
        1 => docs.remove(0),
        n => {
            return Err(RequestError::one(
                label,
                format!("holds {n} YAML documents; expected exactly one FledgeCluster"),
            ));
        }
    };

    let mut problems = Vec::new();
    let Some(top) = doc.as_object() else {
        return Err(RequestError::one(
            label,
            "must be a YAML mapping with apiVersion, kind, metadata and spec",
        ));
    };
    let push = |problems: &mut Vec<Violation>, path: &str, rule: String| {
        problems.push(Violation {
            path: path.to_string(),
            rule,
        })
    };
    match top.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(other) => push(
            &mut problems,
            "apiVersion",
            format!("must be {API_VERSION} (got {other})"),
        ),
        None => push(
            &mut problems,
            "apiVersion",
            format!("is required and must be {API_VERSION}"),
        ),
    }
    match top.get("kind") {
        Some(Value::String(v)) if v == "FledgeCluster" => {}
        Some(other) => push(
            &mut problems,
            "kind",
            format!("must be FledgeCluster (got {other})"),
        ),
        None => push(
            &mut problems,
            "kind",
            "is required and must be FledgeCluster".to_string(),
        ),
    }
    for key in top.keys() {
        match key.as_str() {
            "apiVersion" | "kind" | "metadata" | "spec" => {}
            "status" => push(
                &mut problems,
                "status",
                "is written by the agent; remove it from the request".to_string(),
            ),
            other => push(&mut problems, other, "unknown field".to_string()),
        }
    }
    let mut validator = Validator::new();
    problems.extend(validator.validate(
        metadata_schema(),
        top.get("metadata").unwrap_or(&Value::Null),
        "metadata",
    ));
    match top.get("spec") {
        Some(spec) => problems.extend(validator.validate(spec_schema(), spec, "spec")),
        None => push(&mut problems, "spec", "is required".to_string()),
    }
    if problems.is_empty() {
        let (meta, spec) = typed(&top["metadata"], &top["spec"])
            .map_err(|e| RequestError::one(label, format!("spec: {e}")))?;
        let checked = validate(&meta, &spec).map_err(|p| RequestError::many(label, sorted(p.0)))?;
        let missing = request_rules(&checked);
        if !missing.is_empty() {
            return Err(RequestError::many(label, missing));
        }
        return Ok(checked);
    }

    // The structure is wrong somewhere: run the semantic checks on the parts that did parse, so
    // that every problem is reported at once.
    let mut metadata = top.get("metadata").cloned().unwrap_or(Value::Null);
    let mut spec = top.get("spec").cloned().unwrap_or(Value::Null);
    let changed = salvage::salvage(metadata_schema(), &mut metadata, "metadata", &problems)
        .zip(salvage::salvage(
            spec_schema(),
            &mut spec,
            "spec",
            &problems,
        ))
        .map(|(mut a, b)| {
            a.extend(b);
            a
        });
    if let Some(changed) = changed
        && let Ok((meta, spec)) = typed(&metadata, &spec)
        && let Err(found) = validate(&meta, &spec)
    {
        for finding in found.0 {
            if salvage::relevant(&finding, &changed) && !problems.contains(&finding) {
                problems.push(finding);
            }
        }
    }
    Err(RequestError::many(label, sorted(problems)))
}

/// What a new request must hold for its first node to come up, beyond what the agent checks in
/// a cached spec (an agent keeps running clusters made by older requests): a provider whose
/// nodes run `cloud-provider: external` needs a `cloud` core layer (its cloud-controller-manager),
/// unless the profile is a `clusterProfileRef` (the agent reads that one).
///
/// A provider whose components need credentials needs `infrastructure.variablesSecret`.
///
/// The machine image must be named where the provider would otherwise pick its own: CP-A runs
/// fledge-agent only when its image has it baked in (`images/bake-agent.sh`), and a provider's
/// default image has none, so the cluster would silently stay at one control-plane machine.
fn request_rules(checked: &CheckedCluster) -> Vec<Violation> {
    let mut out = Vec::new();
    let infra = &checked.spec.infrastructure;
    let kind = infra.provider;
    let provider = crate::providers::get(kind);
    if let Some(image) = provider.unset_image(infra) {
        out.push(Violation {
            path: image.field.into(),
            rule: format!(
                "is required for {}: {} of an image with fledge-agent baked in (images/bake-agent.sh); with the provider's default image no agent runs on CP-A and the cluster stays at one control-plane machine",
                kind.as_str(),
                image.what
            ),
        });
    }
    let needed = provider.credential_variables();
    if !needed.is_empty() && infra.variables_secret.is_none() {
        out.push(Violation {
            path: "spec.infrastructure.variablesSecret".into(),
            rule: format!(
                "is required for {}: name a Secret in the cluster's namespace on the management plane with the keys {} (the credentials its provider's components need); the agent reads it when it installs the providers, so they never travel in user-data",
                kind.as_str(),
                needed.join(", ")
            ),
        });
    }
    if !provider.external_cloud_provider() {
        return out;
    }
    let profile = checked.spec.profile.as_ref();
    if profile.is_some_and(|p| p.cluster_profile_ref.is_some()) {
        return out;
    }
    if profile.is_some_and(|p| p.core_layers.iter().any(|l| l.name == "cloud")) {
        return out;
    }
    out.push(Violation {
        path: "spec.profile.coreLayers".into(),
        rule: format!(
            "must hold a layer named cloud with the cloud-controller-manager for {}: its nodes run cloud-provider: external and keep the node.cloudprovider.kubernetes.io/uninitialized taint, with no providerID (so no Machine gets a nodeRef and the control plane never scales out), until one runs",
            kind.as_str()
        ),
    });
    out
}

/// Orders problems by field path (stable, so one field's problems keep their order).
fn sorted(mut problems: Vec<Violation>) -> Vec<Violation> {
    problems.sort_by_key(|v| salvage::path_key(&v.path));
    problems
}

/// The typed metadata and spec of a document that satisfies the schema.
fn typed(meta_v: &Value, spec: &Value) -> Result<(RequestMeta, FledgeClusterSpec), String> {
    let meta = RequestMeta {
        name: meta_v["name"].as_str().unwrap_or_default().to_string(),
        namespace: meta_v
            .get("namespace")
            .and_then(Value::as_str)
            .map(str::to_string),
        labels: meta_v
            .get("labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let spec: FledgeClusterSpec =
        serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
    Ok((meta, spec))
}

/// A YAML problem as a request problem: `:line:col: rule` when the position is known. A request
/// holds one document, so the document's index is left out.
fn yaml_error(e: &YamlError) -> String {
    match (e.location, e.kind) {
        (Some(at), _) => format!(":{}:{}: {}", at.line, at.column, e.message),
        (None, YamlErrorKind::Syntax) => format!("invalid YAML: {}", e.message),
        (None, _) => e.message.clone(),
    }
}

fn line_col(prefix: &[u8]) -> (usize, usize) {
    let line = prefix.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = prefix.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, col)
}

/// The schema of `spec`, derived from the Rust types (the same one `fledge crd` prints).
pub fn spec_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = serde_json::to_value(FledgeCluster::crd()).unwrap_or(Value::Null);
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
    })
}

fn metadata_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::json!({
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}}
            }
        })
    })
}
