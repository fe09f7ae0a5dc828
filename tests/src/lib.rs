//! Test support shared by the workspace's tests: the upstream Cluster API CRDs as schemas,
//! and (see `cluster`) real Kubernetes API servers.

pub mod crds;

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// True when running under CI (`CI=true`): missing real components are failures, not skips.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reports a missing real component. This panics (a test failure naming what is missing and
/// how to get it) unless `FLEDGE_ALLOW_MISSING=1` explicitly allows the skip; never under CI.
/// Returns normally only when the skip is allowed, and the caller must then return early.
pub fn missing(what: &str, how: &str) {
    let msg = format!("missing real test component: {what}. {how}");
    let allowed = std::env::var("FLEDGE_ALLOW_MISSING").is_ok_and(|v| v == "1");
    if in_ci() || !allowed {
        panic!("{msg} (set FLEDGE_ALLOW_MISSING=1 to skip such tests outside CI)");
    }
    eprintln!("SKIPPED (FLEDGE_ALLOW_MISSING=1): {msg}");
}

/// The path of one of the workspace's binaries (`fledge`, `fledge-agent`), built first from
/// the current sources, once per test process, so that a test never runs a stale binary left in
/// `target/` by an earlier build of another package.
pub fn binary(name: &str) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let package = match name {
        "fledge" => "fledge-generator",
        "fledge-agent" => "fledge-agent",
        other => panic!("no workspace binary {other}"),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--locked", "-p", package, "--bin", name])
        .current_dir(workspace_root())
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {name}: {e}"));
    assert!(
        status.success(),
        "cargo build -p {package} --bin {name} failed"
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug").join(name);
    built.insert(name.to_string(), path.clone());
    path
}

pub mod access;
pub mod capi;
pub mod cluster;
pub mod fault;
pub mod install;
pub mod managers;

/// An add-on (or core) layer named `name` of inline manifests `docs` (`m0`, `m1`, ...), each
/// pinned by its sha256, with a 60 s health timeout.
pub fn inline_layer(name: &str, docs: &[&str]) -> fledge_generator::spec::Layer {
    fledge_generator::spec::Layer {
        name: name.into(),
        manifests: docs
            .iter()
            .enumerate()
            .map(|(i, d)| fledge_generator::spec::Manifest {
                name: format!("m{i}"),
                version: "v1".into(),
                url: None,
                inline: Some((*d).into()),
                sha256: fledge_agent::clusterctl::fetch::hex(d.as_bytes()),
            })
            .collect(),
        timeout_seconds: Some(60),
    }
}
