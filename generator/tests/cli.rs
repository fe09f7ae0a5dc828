//! The `fledge` binary as a user runs it.

use std::path::Path;
use std::process::Command;

fn fledge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fledge"))
        .args(args)
        .output()
        .expect("run fledge")
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn render_writes_management_yaml_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = fledge(&[
        "render",
        &example("vsphere.yaml"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("management.yaml").is_file());
    assert!(String::from_utf8_lossy(&o.stderr).contains("management.yaml"));
}

#[test]
fn invalid_input_fails_on_stderr_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("cluster.yaml");
    let text = std::fs::read_to_string(example("aws.yaml"))
        .unwrap()
        .replace("replicas: 3", "replicas: 2");
    std::fs::write(&bad, text).unwrap();
    let out = dir.path().join("out");
    let o = fledge(&[
        "render",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("cluster.yaml: spec.controlPlane.replicas: must be 1, 3 or 5 (got 2)"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
    assert!(!out.exists(), "nothing is written on error");
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 1, "no temporary directory left behind");
}

#[test]
fn a_broken_override_template_fails_without_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("t/management")).unwrap();
    std::fs::write(
        dir.path().join("t/management/cluster.yaml.j2"),
        "kind: Cluster\nspec: {{ nope }}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = fledge(&[
        "render",
        &example("docker.yaml"),
        "--out",
        out.to_str().unwrap(),
        "--templates",
        dir.path().join("t").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("management/cluster.yaml.j2"));
    assert!(!out.exists());
}

#[test]
fn crd_prints_both_crds_with_status_subresource() {
    let o = fledge(&["crd"]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("name: fledgeclusters.fledge.dev")
            || text.contains("name: \"fledgeclusters.fledge.dev\""),
        "{text}"
    );
    assert!(text.contains("clusterprofiles.fledge.dev"));
    assert!(text.contains("status: {}"));
}

#[test]
fn help_and_version() {
    let o = fledge(&["--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for word in ["render", "validate", "crd"] {
        assert!(help.contains(word), "{help}");
    }
    let o = fledge(&["--version"]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("fledge "));
}
