//! The agent's components pipeline against the real clusterctl (v1.13.5, built by
//! `scripts/go-peers.sh`): the same components text and variables go through
//! `fledge_agent::clusterctl::components::prepare` and `clusterctl generate yaml` (clusterctl's own
//! substitution and parse, the ones `clusterctl init` uses), and every case must give the same
//! values, or fail in both.
//!
//! Values that hold YAML syntax (quotes, `: `, ` #`, line breaks) are where the two differ on
//! purpose: clusterctl puts them into the text, so they can change the document; fledge keeps
//! them as characters of their string (`a_value_is_never_read_as_yaml_syntax`).

use std::collections::BTreeMap;
use std::path::Path;

use fledge_agent::clusterctl::components::{self, Kind, Provider};
use serde::Deserialize;
use serde_json::{Value, json};

/// One corpus entry: the body of a document's `spec`, and the variables set.
struct Case {
    spec: &'static str,
    vars: &'static [(&'static str, &'static str)],
}

const fn case(spec: &'static str, vars: &'static [(&'static str, &'static str)]) -> Case {
    Case { spec, vars }
}

/// Cases both must accept with the same result.
const SAME: &[Case] = &[
    // CAPZ's `${AZURE_SYNC_PERIOD:=""}`: the default is YAML text, an empty string.
    case(r#"v: ${X:=""}"#, &[]),
    case(r#"v: ${X:=""}"#, &[("X", "")]),
    case(r#"v: ${X:=""}"#, &[("X", "5m")]),
    case("v: ${X:=''}", &[]),
    case("v: '${X:=''}'", &[]),
    case(r#"v: "${X:=}x""#, &[("X", "")]),
    case("v: ${X:-default}", &[]),
    case("v: ${X:-default}", &[("X", "given")]),
    case("v: ${X=default}", &[]),
    case("v: ${X:?default}", &[]),
    case("v: ${X:+default}", &[("X", "given")]),
    // Defaults typed by the parse of the substituted text.
    case("v: ${X:=false}", &[]),
    case(r#"v: "${X:=false}""#, &[]),
    case("v: ${X:=1}", &[]),
    case("v: ${X:=1.5}", &[]),
    case("v: ${X:=null}", &[]),
    case("v: ${X:=~}", &[]),
    case("v: ${X:=:8443}", &[]),
    case("v: ${X:=[a, b]}", &[]),
    // Values typed as clusterctl's parse types them in a plain scalar, never in a quoted one.
    case("v: ${X}", &[("X", "true")]),
    case(r#"v: "${X}""#, &[("X", "true")]),
    case("v: ${X}", &[("X", "3")]),
    case("v: '${X}'", &[("X", "3")]),
    case("v: ${X}", &[("X", "0x1f")]),
    case("v: ${X}", &[("X", "-2.5")]),
    case("v: ${X}", &[("X", "null")]),
    case("v: ${X}${Y}", &[("X", "1"), ("Y", "2")]),
    case("v: -${X}", &[("X", "1")]),
    case("v: ${X}", &[("X", "")]),
    case("v: ${X:=false}", &[("X", "true")]),
    case("v: ${X}", &[("X", "hello world")]),
    case("v: ${X}", &[("X", "v1.2.3")]),
    case("v: ${X}", &[("X", "QUJDREVGRw==")]),
    // References inside longer strings, lists, flow collections, block scalars and keys.
    case(
        "args:\n  - --feature-gates=MachinePool=${EXP_MACHINE_POOL:=false},Other=${EXP_OTHER:=true}\n  - \"--diagnostics-address=${CAPI_DIAGNOSTICS_ADDRESS:=:8443}\"\n  - --sync-period=${SYNC:=\"\"}",
        &[("EXP_OTHER", "false")],
    ),
    case("v: [--a=${X}, b, ${N}]", &[("X", "1"), ("N", "2")]),
    case("v: {a: ${X}, b: \"${X}\"}", &[("X", "7")]),
    case("v: |\n  line ${X}\n  ${Y:=two}\n", &[("X", "one")]),
    case("v: >-\n  ${X}\n  folded\n", &[("X", "true")]),
    case("${K}: v\nk-${K}: w", &[("K", "key")]),
    case("v: x-${X:=1}-y ${X:=2}", &[]),
    // Nested references in defaults.
    case("v: ${X:=${Y}}", &[("Y", "inner")]),
    case("v: ${X:=a-${Y:=b}-c}", &[]),
    case("v: ${X:=${Y}}", &[]),
    // `$$` is one `$` in text; `$${X}` is the text `${X}`.
    case("v: $${X}", &[("X", "no")]),
    case("v: a$$b $$$$ $1 $", &[]),
    case("v: \"$$$${X}\"", &[("X", "v")]),
    case("v: ${X:=a$$b}", &[]),
    // clusterctl's blanks inside braces.
    case("v: ${ X }-${ X}-${X }", &[("X", "v")]),
    // A variable whose first reference has a default is not required.
    case("a: ${X:=d}\nb: ${X}", &[]),
    case("# a comment ${C:=c}\nv: ${C}", &[]),
    // Replacements (CAPA's `${AWS_CONTROLLER_IAM_ROLE/#arn/eks.amazonaws.com/role-arn: arn}`):
    // the string is components text, the value's pieces values; never required.
    case("a:\n  ${R/#arn/k: arn}", &[("R", "arn:aws:iam::1:role/x")]),
    case("a:\n  ${R/#arn/k: arn}", &[("R", "other")]),
    case("a:\n  ${R/#arn/k: arn}", &[]),
    case("v: ${X/./}", &[("X", "1.5")]),
    case("v: ${X//./-}", &[("X", "1.2.3")]),
    case("v: ${X/%.0/}", &[("X", "v1.0")]),
    case("v: \"${X/%.0/x}\"", &[("X", "1.0")]),
    case("v: ${X/a/\\/}-${X}", &[("X", "ab")]),
];

/// Cases both must refuse.
const REFUSED: &[Case] = &[
    case("v: ${X}", &[]),
    case("v: ${X:=}", &[]),
    case("a: ${X}\nb: ${X:=d}", &[]),
    case("# only in a comment ${C}\nv: 1", &[]),
    case("v: ${not-a-name}", &[]),
    case("v: ${", &[]),
    case("v: ${X:=abc", &[]),
    case("v: \"${X:=\"\"}\"", &[]),
    case("v: ${X/a", &[]),
    case("v: ${X//}", &[]),
];

fn clusterctl() -> Option<std::path::PathBuf> {
    let p = fledge_tests::cluster::assets_bin().join("clusterctl");
    if p.is_file() {
        return Some(p);
    }
    fledge_tests::missing(
        &format!("clusterctl at {}", p.display()),
        "run scripts/go-peers.sh (or set FLEDGE_ASSETS_BIN)",
    );
    None
}

fn document(spec: &str) -> String {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("apiVersion: example.com/v1\nkind: Case\nmetadata:\n  name: c\nspec:\n{body}")
}

fn vars(c: &Case) -> BTreeMap<String, String> {
    c.vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `spec` clusterctl substitutes and parses, or its error.
fn by_clusterctl(bin: &Path, text: &str, vars: &BTreeMap<String, String>) -> Result<Value, String> {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("components.yaml");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(bin)
        .args(["generate", "yaml", "--from"])
        .arg(&file)
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
    let docs: Vec<Value> = serde_norway::Deserializer::from_str(&stdout)
        .map(|d| Value::deserialize(d).expect("clusterctl prints YAML"))
        .filter(|v| !v.is_null())
        .collect();
    assert_eq!(docs.len(), 1, "{stdout}");
    Ok(docs[0]["spec"].clone())
}

/// The `spec` fledge's components pipeline makes, or its error.
fn by_fledge(text: &str, vars: &BTreeMap<String, String>) -> Result<Value, String> {
    let provider = Provider {
        kind: Kind::Infrastructure,
        name: "example".into(),
        version: "v1.0.0".into(),
    };
    let c = components::prepare(Path::new("components.yaml"), text, &provider, vars)
        .map_err(|e| e.to_string())?;
    assert_eq!(c.rest.len(), 1);
    Ok(c.rest[0]["spec"].clone())
}

#[test]
fn substitution_gives_what_clusterctl_gives() {
    let Some(bin) = clusterctl() else { return };
    let mut problems = Vec::new();
    for c in SAME {
        let text = document(c.spec);
        let v = vars(c);
        let want = by_clusterctl(&bin, &text, &v);
        let got = by_fledge(&text, &v);
        match (&want, &got) {
            (Ok(w), Ok(g)) if w == g => {}
            _ => problems.push(format!(
                "{:?} with {:?}:\n  clusterctl: {want:?}\n  fledge:     {got:?}",
                c.spec, c.vars
            )),
        }
    }
    for c in REFUSED {
        let text = document(c.spec);
        let v = vars(c);
        let want = by_clusterctl(&bin, &text, &v);
        let got = by_fledge(&text, &v);
        if want.is_ok() || got.is_ok() {
            problems.push(format!(
                "{:?} with {:?} must be refused by both:\n  clusterctl: {want:?}\n  fledge:     {got:?}",
                c.spec, c.vars
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} cases differ:\n{}",
        problems.len(),
        SAME.len() + REFUSED.len(),
        problems.join("\n")
    );
}

#[test]
fn a_value_is_never_read_as_yaml_syntax() {
    // Each value would change the document (or break it) in clusterctl's text substitution.
    let cases = [
        ("v: \"${X}\"", "a\"\nkind: Secret\n---\nb: \"c"),
        ("v: ${X}", "a: b"),
        ("v: ${X}", "[1, 2]"),
        ("v: ${X}", "x # not a comment"),
        ("v: '${X}'", "it's"),
        ("v: |\n  ${X}\n", "line one\nline two"),
        ("v: [${X}]", "a, b"),
    ];
    for (spec, value) in cases {
        let v: BTreeMap<String, String> = [("X".to_string(), value.to_string())].into();
        let spec_value = by_fledge(&document(spec), &v).unwrap();
        let want = if spec.starts_with("v: [") {
            json!({"v": [value]})
        } else if spec.starts_with("v: |") {
            json!({"v": format!("{value}\n")})
        } else {
            json!({"v": value})
        };
        assert_eq!(spec_value, want, "{spec} with {value:?}");
    }
}

/// The documents clusterctl substitutes and parses from `text`.
fn docs_by_clusterctl(bin: &Path, text: &str, vars: &BTreeMap<String, String>) -> Vec<Value> {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("components.yaml");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(bin)
        .args(["generate", "yaml", "--from"])
        .arg(&file)
        .env_clear()
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path())
        .env("CLUSTERCTL_DISABLE_VERSIONCHECK", "true")
        .envs(vars)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_norway::Deserializer::from_str(&stdout)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn upstream_manager_manifests_give_what_clusterctl_gives() {
    let Some(bin) = clusterctl() else { return };
    let module = |which: &str| {
        let marker = fledge_tests::cluster::assets_bin().join(format!("{which}.dir"));
        match std::fs::read_to_string(&marker) {
            Ok(dir) => Some(std::path::PathBuf::from(dir.trim())),
            Err(_) => {
                fledge_tests::missing(
                    &format!("{} (the {which} Go module's path)", marker.display()),
                    "run scripts/go-peers.sh",
                );
                None
            }
        }
    };
    let (Some(capi), Some(capv)) = (module("cluster-api"), module("capv")) else {
        return;
    };
    let files = [
        capi.join("config/manager/manager.yaml"),
        capi.join("bootstrap/kubeadm/config/manager/manager.yaml"),
        capi.join("controlplane/kubeadm/config/manager/manager.yaml"),
        capv.join("config/manager/manager.yaml"),
        capv.join("config/base/credentials.yaml"),
    ];
    let sets: [&[(&str, &str)]; 2] = [
        &[
            ("VSPHERE_USERNAME", "admin@vsphere.local"),
            ("VSPHERE_PASSWORD", "s3cret"),
        ],
        &[
            ("VSPHERE_USERNAME", "u"),
            ("VSPHERE_PASSWORD", "p"),
            ("EXP_MACHINE_POOL", "false"),
            ("CAPI_DIAGNOSTICS_ADDRESS", ":9443"),
            ("EXP_NODE_ANTI_AFFINITY", "true"),
            ("KUBEADM_BOOTSTRAP_TOKEN_TTL", "30m"),
        ],
    ];
    let mut compared = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            text.contains("${"),
            "{}: no variables to compare",
            f.display()
        );
        for set in sets {
            let v: BTreeMap<String, String> = set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let want = docs_by_clusterctl(&bin, &text, &v);
            let got: Vec<Value> = components::substitute(f, &text, &v)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .filter(|d| !d.is_null())
                .collect();
            assert_eq!(got, want, "{} with {set:?}", f.display());
            compared += 1;
        }
    }
    assert_eq!(compared, files.len() * sets.len());
}
