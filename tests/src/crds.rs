//! The upstream CRDs in `shared/crds/` (test data, read in place; override the location with
//! `FLEDGE_CRDS_DIR`), indexed by group, version and kind, and a strict validator over them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fledge_generator::providers;
use fledge_generator::schema::{Validator, Violation};
use fledge_generator::spec::{CapiVersion, ProviderKind};
use serde::Deserialize;
use serde_json::{Value, json};

/// Where the upstream CRDs are: `$FLEDGE_CRDS_DIR`, else `<workspace>/../shared/crds`.
pub fn crds_dir() -> PathBuf {
    std::env::var_os("FLEDGE_CRDS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("../shared/crds"))
}

/// The core Cluster API release whose CRDs match a contract version.
pub fn core_dir(capi: CapiVersion) -> &'static str {
    match capi {
        CapiVersion::V1beta2 => "cluster-api/v1.13.5",
        CapiVersion::V1beta1 => "cluster-api/v1.9.11",
    }
}

/// The CRD folders (relative to [`crds_dir`]) for a provider under a contract version.
pub fn dirs_for(capi: CapiVersion, provider: ProviderKind) -> Vec<&'static str> {
    let mut dirs = vec![core_dir(capi)];
    let infra = providers::get(provider).api(capi).crd_dir;
    if !dirs.contains(&infra) {
        dirs.push(infra);
    }
    dirs
}

/// One CRD as read from disk.
#[derive(Debug, Clone)]
pub struct CrdFile {
    /// The file.
    pub path: PathBuf,
    /// The parsed CRD.
    pub crd: Value,
}

/// Reads every CRD file in `dir`, sorted by name.
pub fn read_dir(dir: &Path) -> Result<Vec<CrdFile>, String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read CRD directory {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    entries
        .into_iter()
        .map(|path| {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let crd = Value::deserialize(serde_norway::Deserializer::from_str(&text))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(CrdFile { path, crd })
        })
        .collect()
}

/// Schemas indexed by `(group/version, kind)`.
pub struct SchemaSet {
    schemas: HashMap<(String, String), (Value, PathBuf, bool)>,
    validator: Validator,
}

impl SchemaSet {
    /// Loads the CRDs of `dirs` (relative to [`crds_dir`]) plus fledge's own CRDs.
    pub fn load(dirs: &[&str]) -> Result<Self, String> {
        let root = crds_dir();
        let mut files = Vec::new();
        for d in dirs {
            files.extend(read_dir(&root.join(d))?);
        }
        for crd in own_crds() {
            files.push(CrdFile {
                path: PathBuf::from("fledge crd"),
                crd,
            });
        }
        let mut schemas = HashMap::new();
        for f in files {
            let group = f.crd["spec"]["group"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let kind = f.crd["spec"]["names"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            for v in f.crd["spec"]["versions"].as_array().into_iter().flatten() {
                let version = v["name"].as_str().unwrap_or_default();
                let served = v["served"].as_bool().unwrap_or(false);
                let mut schema = v["schema"]["openAPIV3Schema"].clone();
                // metadata is validated by the apiserver itself, not by the CRD schema.
                if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
                    props.insert(
                        "metadata".into(),
                        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
                    );
                    props.insert("apiVersion".into(), json!({"type": "string"}));
                    props.insert("kind".into(), json!({"type": "string"}));
                }
                schemas.insert(
                    (format!("{group}/{version}"), kind.clone()),
                    (schema, f.path.clone(), served),
                );
            }
        }
        Ok(SchemaSet {
            schemas,
            validator: Validator::new(),
        })
    }

    /// True when the set has a schema for this apiVersion and kind.
    pub fn knows(&self, api_version: &str, kind: &str) -> bool {
        self.schemas
            .contains_key(&(api_version.to_string(), kind.to_string()))
    }

    /// Validates one object strictly (unknown fields are errors). Objects of built-in kinds
    /// (group-less or `rbac.authorization.k8s.io`) return `None`: they have no CRD.
    pub fn validate(&mut self, obj: &Value) -> Option<Result<(), Vec<String>>> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        if !api_version.contains('/') || api_version.starts_with("rbac.authorization.k8s.io/") {
            return None;
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or("?");
        let Self { schemas, validator } = self;
        let Some((schema, path, served)) =
            schemas.get(&(api_version.to_string(), kind.to_string()))
        else {
            return Some(Err(vec![format!(
                "{kind} {name}: no CRD defines {kind} in {api_version}"
            )]));
        };
        if !served {
            return Some(Err(vec![format!(
                "{kind} {name}: {api_version} is not served ({})",
                path.display()
            )]));
        }
        let errs: Vec<Violation> = validator.validate(schema, obj, "");
        if errs.is_empty() {
            Some(Ok(()))
        } else {
            Some(Err(errs
                .iter()
                .map(|v| format!("{kind} {name} ({}): {v}", path.display()))
                .collect()))
        }
    }
}

/// fledge's own CRDs as JSON.
pub fn own_crds() -> Vec<Value> {
    let text = fledge_generator::spec::crd_yaml();
    serde_norway::Deserializer::from_str(&text)
        .filter_map(|d| Value::deserialize(d).ok())
        .collect()
}

/// CAPA v2.11.1's cluster-scoped identity CRDs (`AWSCluster{Static,Role,Controller}Identity`)
/// from its Go module (`scripts/go-peers.sh` writes `capa.dir`; `shared/crds` lacks them), with
/// the `clusterctl.cluster.x-k8s.io/move-hierarchy` label its release adds
/// (`config/crd/patches/label_in_*.yaml`) and clusterctl's provider labels. None (and, under
/// CI, a failure naming what is missing) when the module is not there.
pub fn capa_identity_crds() -> Option<Vec<Value>> {
    let marker = crate::cluster::assets_bin().join("capa.dir");
    let Ok(dir) = std::fs::read_to_string(&marker) else {
        crate::missing(
            &format!("{} (the CAPA Go module's path)", marker.display()),
            "run scripts/go-peers.sh",
        );
        return None;
    };
    let bases = Path::new(dir.trim()).join("config/crd/bases");
    let crds = [
        "awsclusterstaticidentities",
        "awsclusterroleidentities",
        "awsclustercontrolleridentities",
    ]
    .iter()
    .map(|plural| {
        let path = bases.join(format!("infrastructure.cluster.x-k8s.io_{plural}.yaml"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut crd: Value =
            serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        crd["metadata"]["labels"]["clusterctl.cluster.x-k8s.io/move-hierarchy"] = json!("");
        crate::install::clusterctl_labels(crd, "infrastructure-aws")
    })
    .collect();
    Some(crds)
}
