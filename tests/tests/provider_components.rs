//! Whole infrastructure providers through the agent's components pipeline (issue 27, items 1
//! and 2): each provider's components, built with kustomize from its Go module at the pinned
//! version (`scripts/go-peers.sh` writes `<peers bin>/<which>.dir`), go through what the agent
//! runs when it installs them (a clusterctl local-repository layout in a temp dir,
//! `components::load`, `check_contract` against the module's `metadata.yaml` and
//! `check_crd_contract_labels`, for the cluster contract `v1beta2`), their substitution must give
//! the documents the real clusterctl (v1.13.5, `clusterctl generate yaml`) gives for the same
//! variables, and they are applied to a real kube-apiserver, CRDs Established first.
//!
//! CAPMAAS is not served by the Go module proxy: its v0.9.0 CRDs from `shared/crds` (read in
//! place) get the contract label its kustomization adds and go through the same label check
//! and the apiserver; its contract is the `0.9` series of its published `metadata.yaml`.
//!
//! Nothing is written into the module cache; the built components live in temp dirs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use fledge_agent::clusterctl::components::{self, Components, Kind, Provider};
use serde::Deserialize;
use serde_json::{Value, json};

const CONTRACT: &str = "v1beta2";

/// One provider of the test.
struct Upstream {
    /// `<which>.dir` in the peers directory names its module.
    which: &'static str,
    /// clusterctl's provider name.
    name: &'static str,
    version: &'static str,
    /// The contract its `metadata.yaml` gives `version`.
    contract: &'static str,
    /// The variable sets compared; the first holds only what it requires, so every defaulted
    /// variable is left unset.
    sets: &'static [&'static [(&'static str, &'static str)]],
}

const B64: &str = "W2RlZmF1bHRdCmF3c19hY2Nlc3Nfa2V5X2lkID0gQUtJQQo=";

const PROVIDERS: &[Upstream] = &[
    Upstream {
        which: "capv",
        name: "vsphere",
        version: "v1.16.1",
        contract: "v1beta2",
        sets: &[
            &[
                ("VSPHERE_USERNAME", "admin@vsphere.local"),
                ("VSPHERE_PASSWORD", "s3cret: #not-yaml"),
            ],
            &[
                ("VSPHERE_USERNAME", "u"),
                ("VSPHERE_PASSWORD", "p"),
                ("EXP_NODE_ANTI_AFFINITY", "true"),
                ("CAPI_DIAGNOSTICS_ADDRESS", ":9443"),
            ],
        ],
    },
    Upstream {
        which: "capa",
        name: "aws",
        version: "v2.11.1",
        contract: "v1beta1",
        sets: &[
            &[("AWS_B64ENCODED_CREDENTIALS", B64)],
            &[
                ("AWS_B64ENCODED_CREDENTIALS", B64),
                // config/rbac/serviceaccount.yaml: ${AWS_CONTROLLER_IAM_ROLE/#arn/eks.amazonaws.com/role-arn: arn}
                (
                    "AWS_CONTROLLER_IAM_ROLE",
                    "arn:aws:iam::123456789012:role/capa-controller",
                ),
                ("CAPA_LOGLEVEL", "4"),
                ("EXP_MACHINE_POOL", "true"),
            ],
        ],
    },
    Upstream {
        which: "capz",
        name: "azure",
        version: "v1.26.0",
        contract: "v1beta1",
        sets: &[
            &[],
            // `${AZURE_SYNC_PERIOD:=""}` with the variable set but empty.
            &[("AZURE_SYNC_PERIOD", "")],
            &[
                ("AZURE_SYNC_PERIOD", "5m"),
                ("AZURE_SUBSCRIPTION_ID_B64", "MDAwMC0xMTEx"),
                ("EXP_MACHINE_POOL", "false"),
            ],
        ],
    },
    Upstream {
        which: "capg",
        name: "gcp",
        version: "v1.12.0",
        contract: "v1beta1",
        sets: &[
            &[("GCP_B64ENCODED_CREDENTIALS", B64)],
            &[
                ("GCP_B64ENCODED_CREDENTIALS", B64),
                ("EXP_CAPG_GKE", "true"),
                ("CAPG_LOGLEVEL", "5"),
            ],
        ],
    },
];

/// A peer binary, or the failure (under CI) / skip naming it.
fn peer(name: &str) -> Option<PathBuf> {
    let p = fledge_tests::cluster::assets_bin().join(name);
    if p.is_file() {
        return Some(p);
    }
    fledge_tests::missing(
        &format!("{name} at {}", p.display()),
        "run scripts/go-peers.sh (or set FLEDGE_ASSETS_BIN)",
    );
    None
}

/// The module a `<which>.dir` file names, or the failure / skip naming it.
fn module(which: &str) -> Option<PathBuf> {
    let marker = fledge_tests::cluster::assets_bin().join(format!("{which}.dir"));
    match std::fs::read_to_string(&marker) {
        Ok(dir) if Path::new(dir.trim()).join("config").is_dir() => Some(PathBuf::from(dir.trim())),
        _ => {
            fledge_tests::missing(
                &format!(
                    "{} (the {which} Go module's path, with its config/)",
                    marker.display()
                ),
                "run scripts/go-peers.sh",
            );
            None
        }
    }
}

/// `kustomize build` of the provider's components, as its release does (`config/default`).
///
/// CAPZ's `config/default` adds the `config/aso` component, whose first resource is Azure
/// Service Operator's release bundle downloaded from GitHub (not reachable here; ASO's Go
/// module has no generated CRDs to rebuild it from). So CAPZ is built from what
/// `config/default` combines except that bundle: `config/capz` (CAPZ's own CRDs, RBAC, manager,
/// webhooks, certificates) and `config/aso/settings.yaml` (the `aso-controller-settings` Secret
/// with `${AZURE_SYNC_PERIOD:=""}`), in `capz-system` as the component puts it. The
/// kustomization is written in a temp dir that links to the module (read in place).
fn kustomize(kustomize: &Path, up: &Upstream, module: &Path, tmp: &Path) -> String {
    let root = if up.which == "capz" {
        let dir = tmp.join("kustomize");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(module, dir.join("module")).unwrap();
        std::fs::write(
            dir.join("kustomization.yaml"),
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: capz-system\nresources:\n- module/config/capz\n- module/config/aso/settings.yaml\n",
        )
        .unwrap();
        dir
    } else {
        module.join("config/default")
    };
    let out = Command::new(kustomize)
        .args(["build", "--load-restrictor", "LoadRestrictionsNone"])
        .arg(&root)
        .current_dir(tmp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kustomize build {}: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The documents clusterctl substitutes and parses from `file`, or its error.
fn by_clusterctl(
    bin: &Path,
    file: &Path,
    vars: &BTreeMap<String, String>,
) -> Result<Vec<Value>, String> {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args(["generate", "yaml", "--from"])
        .arg(file)
        .env_clear()
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path())
        .env("CLUSTERCTL_DISABLE_VERSIONCHECK", "true")
        .envs(vars)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    Ok(serde_norway::Deserializer::from_str(&stdout)
        .map(|d| Value::deserialize(d).expect("clusterctl prints YAML"))
        .filter(|v| !v.is_null())
        .collect())
}

fn vars(set: &[(&str, &str)]) -> BTreeMap<String, String> {
    set.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The first document of `kind` named `name`.
fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// One provider: kustomize, the local repository, substitution by both, the contract checks.
/// Returns the components the agent would apply (with the first variable set).
fn provider_pipeline(
    up: &Upstream,
    kustomize_bin: &Path,
    clusterctl: &Path,
    module: &Path,
) -> Components {
    let tmp = tempfile::tempdir().unwrap();
    let text = kustomize(kustomize_bin, up, module, tmp.path());
    assert!(text.contains("${"), "{}: no variables to compare", up.name);
    let provider = Provider {
        kind: Kind::Infrastructure,
        name: up.name.into(),
        version: up.version.into(),
    };
    // clusterctl's local-repository layout, as the agent reads it from an image.
    let base = tmp.path().join("providers");
    let dir = provider.dir(&base);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("components.yaml");
    std::fs::write(&file, &text).unwrap();
    std::fs::copy(module.join("metadata.yaml"), dir.join("metadata.yaml")).unwrap();

    // CAPI v1.13 (a v1beta2 core) accepts a v1beta1-contract provider.
    let found = components::check_contract(&base, &provider, CONTRACT)
        .unwrap_or_else(|e| panic!("{}: {e}", up.name));
    assert_eq!(found, up.contract, "{}: metadata.yaml's contract", up.name);

    let mut first = None;
    for set in up.sets {
        let v = vars(set);
        let want = by_clusterctl(clusterctl, &file, &v)
            .unwrap_or_else(|e| panic!("{} with {set:?}: clusterctl: {e}", up.name));
        let got: Vec<Value> = components::substitute(&file, &text, &v)
            .unwrap_or_else(|e| panic!("{} with {set:?}: {e}", up.name))
            .into_iter()
            .filter(|d| !d.is_null())
            .collect();
        assert_eq!(got.len(), want.len(), "{} with {set:?}", up.name);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                g, w,
                "{} with {set:?}: {} {} differs from clusterctl's",
                up.name, g["kind"], g["metadata"]["name"]
            );
        }
        specific(up, &v, &got);
        let c = components::load(&base, &provider, &v)
            .unwrap_or_else(|e| panic!("{} with {set:?}: {e}", up.name));
        components::check_crd_contract_labels(&c, CONTRACT)
            .unwrap_or_else(|e| panic!("{}: {e}", up.name));
        first.get_or_insert(c);
    }
    // Without a required variable both refuse.
    if let Some(((required, _), rest)) = up.sets[0].split_first() {
        let v = vars(rest);
        assert!(by_clusterctl(clusterctl, &file, &v).is_err(), "{}", up.name);
        let e = components::load(&base, &provider, &v)
            .unwrap_err()
            .to_string();
        assert!(e.contains(required), "{}: {e}", up.name);
    }
    first.expect("at least one variable set")
}

/// What the issue names, checked on the substituted documents themselves.
fn specific(up: &Upstream, v: &BTreeMap<String, String>, docs: &[Value]) {
    match up.which {
        "capz" => {
            let settings = find(docs, "Secret", "aso-controller-settings");
            let want = v.get("AZURE_SYNC_PERIOD").map_or("", String::as_str);
            assert_eq!(settings["stringData"]["AZURE_SYNC_PERIOD"], json!(want));
        }
        "capa" => {
            let sa = find(docs, "ServiceAccount", "capa-controller-manager");
            let want = match v.get("AWS_CONTROLLER_IAM_ROLE") {
                Some(role) => json!({"eks.amazonaws.com/role-arn": role}),
                None => Value::Null,
            };
            assert_eq!(sa["metadata"]["annotations"], want);
        }
        _ => {}
    }
}

/// CAPMAAS v0.9.0: CRDs from `shared/crds` with the contract label its kustomization adds
/// (`cluster.x-k8s.io/v1beta2: v1beta1`), through the label check; its contract from its
/// published `metadata.yaml` (spectrocloud/cluster-api-provider-maas at v0.9.0, commit
/// 030afed04585cc209b6ec40fe08f8357d37b3588: the `0.9` series follows `v1beta2`; the series
/// before it, `0.4`-`0.8`, `v1beta1`) through `check_contract`.
fn maas_pipeline() -> Components {
    let dir = fledge_tests::crds::crds_dir().join("cluster-api-provider-maas/v0.9.0");
    let provider = Provider {
        kind: Kind::Infrastructure,
        name: "maas".into(),
        version: "v0.9.0".into(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    std::fs::create_dir_all(provider.dir(base)).unwrap();
    std::fs::write(
        provider.dir(base).join("metadata.yaml"),
        "apiVersion: clusterctl.cluster.x-k8s.io/v1alpha3\nreleaseSeries:\n  - major: 0\n    minor: 8\n    contract: v1beta1\n  - major: 0\n    minor: 9\n    contract: v1beta2\n",
    )
    .unwrap();
    assert_eq!(
        components::check_contract(base, &provider, CONTRACT).unwrap(),
        "v1beta2"
    );
    let mut foundation = Vec::new();
    for f in fledge_tests::crds::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")) {
        let mut crd = f.crd;
        crd["metadata"]["labels"] = json!({"cluster.x-k8s.io/v1beta2": "v1beta1"});
        foundation.push(crd);
    }
    assert_eq!(foundation.len(), 3, "{}", dir.display());
    let c = Components {
        provider,
        foundation,
        rest: vec![],
        namespace: None,
        tolerated: vec![],
    };
    components::check_crd_contract_labels(&c, CONTRACT).unwrap();
    // Unlabelled, as in shared/crds, they would be refused.
    let mut bare = c.clone();
    for crd in &mut bare.foundation {
        crd["metadata"].as_object_mut().unwrap().remove("labels");
    }
    assert!(components::check_crd_contract_labels(&bare, CONTRACT).is_err());
    c
}

/// cert-manager's kinds: the test apiserver has no cert-manager CRDs (the agent installs
/// cert-manager first; its CRDs are not among the peers).
fn cert_manager(d: &Value) -> bool {
    d["apiVersion"]
        .as_str()
        .is_some_and(|a| a.starts_with("cert-manager.io/"))
}

#[tokio::test]
async fn whole_providers_match_clusterctl_pass_the_contract_check_and_install() {
    let (Some(kustomize_bin), Some(clusterctl)) = (peer("kustomize"), peer("clusterctl")) else {
        return;
    };
    let mut installs = Vec::new();
    for up in PROVIDERS {
        let Some(m) = module(up.which) else { return };
        let started = std::time::Instant::now();
        installs.push(provider_pipeline(up, &kustomize_bin, &clusterctl, &m));
        eprintln!(
            "{} {}: {} variable sets equal to clusterctl's ({:.1}s)",
            up.name,
            up.version,
            up.sets.len(),
            started.elapsed().as_secs_f64()
        );
    }
    installs.push(maas_pipeline());

    let Some(cluster) = fledge_tests::cluster::start_or_skip(Default::default()).await else {
        return;
    };
    let client = cluster.client().await;
    let target = fledge_generator::target::Target {
        client: client.clone(),
        server: "the test apiserver".into(),
        ca_certs: None,
    };
    let opts = fledge_generator::ssa::ApplyOptions {
        dry_run: false,
        force_conflicts: true,
        field_manager: Some("fledge-agent".into()),
        ..Default::default()
    };
    for c in &installs {
        let label = c.provider.label();
        // The CRDs as the components carry them: a conversion webhook's Service does not run,
        // which the apiserver needs only to convert objects, not to establish the CRD.
        fledge_generator::ssa::apply(&target, &c.foundation, &opts, |_| {})
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let crds: Vec<Value> = c
            .foundation
            .iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .cloned()
            .collect();
        fledge_tests::install::wait_established(&client, &crds)
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let rest: Vec<Value> = c
            .rest
            .iter()
            .filter(|d| !cert_manager(d))
            .cloned()
            .collect();
        fledge_generator::ssa::apply(&target, &rest, &opts, |_| {})
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        eprintln!(
            "{label} {}: {} CRDs Established, {} other objects applied ({} cert-manager objects left out)",
            c.provider.version,
            crds.len(),
            rest.len(),
            c.rest.len() - rest.len()
        );
    }
}
