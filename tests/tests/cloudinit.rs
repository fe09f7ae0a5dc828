//! CP-A's cloud-init against the real thing: Debian's `cloud-init schema`, and PyYAML (the
//! parser cloud-init uses) for a round-trip property test over adversarial values.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use fledge_generator::cloudinit::{self, CloudInitError, Credentials};
use fledge_generator::render::Templates;
use fledge_generator::render::pipeline::{RenderOptions, render_files};
use fledge_generator::spec;
use fledge_tests::{missing, workspace_root};
use serde_json::{Value, json};

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn every_golden_user_data_passes_cloud_init_schema() {
    if !have("cloud-init") {
        return missing(
            "cloud-init (Debian package)",
            "run scripts/install-test-deps.sh",
        );
    }
    let mut checked = 0;
    for entry in std::fs::read_dir(workspace_root().join("tests/cases")).unwrap() {
        let file = entry.unwrap().path().join("expected/cp-a/user-data");
        if !file.is_file() {
            continue;
        }
        let out = Command::new("cloud-init")
            .args(["schema", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("Valid cloud-config"),
            "{}: {text}",
            file.display()
        );
        checked += 1;
    }
    let cases = std::fs::read_dir(workspace_root().join("tests/cases"))
        .unwrap()
        .count();
    assert_eq!(checked, cases, "every golden case has user-data");
}

#[test]
fn cloud_init_schema_rejects_a_broken_document() {
    if !have("cloud-init") {
        return missing(
            "cloud-init (Debian package)",
            "run scripts/install-test-deps.sh",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad");
    std::fs::write(
        &f,
        "#cloud-config\nusers:\n  - name: x\n    lock_passwd: \"maybe\"\n",
    )
    .unwrap();
    let out = Command::new("cloud-init")
        .args(["schema", "-c"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the validator must catch errors, or the test above proves nothing"
    );
}

/// A small deterministic generator of adversarial strings.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn text(&mut self) -> String {
        const PARTS: &[&str] = &[
            "'",
            "\"",
            ": ",
            ":",
            " #",
            "#",
            "{{ x }}",
            "{% if %}",
            "yes",
            "on",
            "no",
            "off",
            "Y",
            "0755",
            "0x1F",
            "1e3",
            "~",
            "null",
            "true",
            "ünïcødé",
            "✓",
            "日本",
            "\u{2028}",
            "\u{feff}",
            "&a",
            "*b",
            "!tag",
            "%",
            "@",
            "`",
            "|",
            ">",
            "- ",
            "[",
            "]",
            "{",
            "}",
            ",",
            "\\",
            "\\n",
            "? ",
            "---",
            "...",
            " ",
            "  ",
            "a",
            "Z9",
            "$(id)",
            ";rm -rf /",
        ];
        let n = 1 + (self.next() % 6) as usize;
        let mut s: String = (0..n)
            .map(|_| PARTS[(self.next() % PARTS.len() as u64) as usize])
            .collect();
        if s.trim().is_empty() {
            s.push('x');
        }
        s
    }
}

/// Builds a vSphere request whose free-text values are adversarial.
fn adversarial_request(g: &mut Gen) -> (Value, Value) {
    let base = std::fs::read_to_string(workspace_root().join("examples/vsphere.yaml")).unwrap();
    let mut req: Value = serde_norway::from_str(&base).unwrap();
    let key_blob = "AAAAC3NzaC1lZDI1NTE5AAAAIABoS5VYUG4MnEJlKkU7f5yFnx/jg9rz//xqycxHVSob";
    let comment = g.text();
    let vs = &mut req["spec"]["infrastructure"]["vsphere"];
    let (dc, ds, net, tmpl, folder, pool) =
        (g.text(), g.text(), g.text(), g.text(), g.text(), g.text());
    vs["datacenter"] = json!(dc);
    vs["datastore"] = json!(ds);
    vs["network"] = json!(net);
    vs["template"] = json!(tmpl);
    vs["folder"] = json!(folder);
    vs["resourcePool"] = json!(pool);
    let inline = format!(
        "kind: ConfigMap\ndata:\n  v: {}\n",
        serde_json::to_string(&g.text()).unwrap()
    );
    req["spec"]["profile"]["coreLayers"][0]["manifests"][0] = json!({
        "name": "cm", "version": g.text(), "inline": inline, "sha256": "0".repeat(64)
    });
    req["spec"]["access"]["sshAuthorizedKeys"] =
        json!([format!("ssh-ed25519 {key_blob} {comment}")]);
    let expect = json!({
        "keys": [format!("ssh-ed25519 {key_blob} {}", comment.trim())],
        "vsphere": {"datacenter": dc, "datastore": ds, "network": net, "template": tmpl, "folder": folder, "resourcePool": pool},
        "inline": inline,
    });
    (req, expect)
}

const CHECKER: &str = r#"
import json, sys, yaml
failures, checked = [], 0
for line in sys.stdin:
    case = json.loads(line)
    exp = case["expect"]
    ud = yaml.safe_load(case["user_data"])
    mgmt = list(yaml.safe_load_all(case["management"]))
    def check(what, got, want):
        if got != want:
            failures.append(f"case {case['n']}: {what}: got {got!r}, want {want!r}")
    check("users[0].ssh_authorized_keys", ud["users"][0]["ssh_authorized_keys"], exp["keys"])
    check("users[0].lock_passwd", ud["users"][0]["lock_passwd"], True)
    check("ssh_pwauth", ud["ssh_pwauth"], False)
    check("add-on files in user-data", [f["path"] for f in ud["write_files"] if f["path"].startswith("/var/lib/fledge/addons/")], [])
    fc = [d for d in mgmt if d["kind"] == "FledgeCluster"][0]
    check("FledgeCluster inline manifest", fc["spec"]["profile"]["coreLayers"][0]["manifests"][0]["inline"], exp["inline"])
    tmpl = [d for d in mgmt if d["kind"] == "VSphereMachineTemplate"][0]["spec"]["template"]["spec"]
    for k, v in exp["vsphere"].items():
        check("VSphereMachineTemplate " + k, tmpl[k] if k != "network" else tmpl["network"]["devices"][0]["networkName"], v)
    kcp = [d for d in mgmt if d["kind"] == "KubeadmControlPlane"][0]
    check("KCP sshAuthorizedKeys", kcp["spec"]["kubeadmConfigSpec"]["users"][0]["sshAuthorizedKeys"], exp["keys"])
    check("documents", [d["kind"] for d in mgmt][:3], ["Namespace", "FledgeCluster", "Cluster"])
    checked += 1
print(json.dumps({"checked": checked, "failures": failures[:20], "failed": len(failures)}))
"#;

#[test]
fn adversarial_values_round_trip_exactly_through_pyyaml() {
    if !have("python3")
        || !Command::new("python3")
            .args(["-c", "import yaml"])
            .status()
            .is_ok_and(|s| s.success())
    {
        return missing(
            "python3 with PyYAML (python3-yaml)",
            "run scripts/install-test-deps.sh",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let mut lines = String::new();
    let mut rejected = 0;
    let cases = 400;
    for n in 0..cases {
        let (req, expect) = adversarial_request(&mut g);
        let path: PathBuf = dir.path().join(format!("req-{n}.yaml"));
        // Written with escapes for U+2028 and friends (raw, YAML 1.1 reads them as line
        // breaks); the request then reaches fledge through its real parser.
        std::fs::write(&path, fledge_generator::render::yaml::to_string(&req)).unwrap();
        let files = match render_files(&path, &RenderOptions::default()) {
            Ok(f) => f,
            Err(e) => {
                // Only values that validation rightly refuses (for example a U+FEFF in a name).
                let msg = format!("{e:#}");
                assert!(
                    msg.contains("must not contain control characters") || msg.contains("must be"),
                    "case {n}: {msg}"
                );
                rejected += 1;
                continue;
            }
        };
        let get = |p: &str| {
            String::from_utf8(
                files
                    .iter()
                    .find(|f| f.path.to_str() == Some(p))
                    .unwrap()
                    .contents
                    .clone(),
            )
            .unwrap()
        };
        let case = json!({"n": n, "expect": expect, "user_data": get("cp-a/user-data"), "management": get("management.yaml")});
        lines.push_str(&serde_json::to_string(&case).unwrap());
        lines.push('\n');
    }
    let mut child = Command::new("python3")
        .args(["-c", CHECKER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failed"], 0, "{report:#}");
    assert!(
        rejected < cases / 10,
        "too many generated cases rejected ({rejected}); the test would prove little"
    );
    assert_eq!(
        report["checked"].as_u64().unwrap() as usize,
        cases - rejected
    );
}

fn aws() -> spec::CheckedCluster {
    let base = std::fs::read_to_string(workspace_root().join("examples/aws.yaml")).unwrap();
    spec::parse_request("aws.yaml", base.as_bytes()).unwrap()
}

/// Credentials whose CA bundle is `ca` (the largest file CP-A's user-data can carry).
fn with_ca(ca: String) -> Credentials {
    Credentials {
        token: Some("tok.abc-123".into()),
        ca_pem: Some(ca),
    }
}

fn aws_with_addons(manifests: Vec<String>) -> spec::CheckedCluster {
    let base = std::fs::read_to_string(workspace_root().join("examples/aws.yaml")).unwrap();
    let mut req: Value = serde_norway::from_str(&base).unwrap();
    let list: Vec<Value> = manifests
        .into_iter()
        .enumerate()
        .map(|(i, m)| json!({"name": format!("m{i}"), "version": "v1", "inline": m, "sha256": "0".repeat(64)}))
        .collect();
    req["spec"]["profile"]["coreLayers"][0]["manifests"] = Value::Array(list);
    spec::parse_request("aws.yaml", serde_json::to_string(&req).unwrap().as_bytes()).unwrap()
}

#[test]
fn aws_user_data_fits_16384_bytes_by_compressing_large_files() {
    // A bundle of many (repetitive, so compressible) certificates.
    let cert = |i: usize| {
        let body: String = (0..60)
            .map(|j| format!("MIIB{:060}\n", i * 1000 + j))
            .collect();
        format!("-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n")
    };
    let ca: String = (0..6).map(cert).collect();
    assert!(
        ca.len() > 16384,
        "the CA bundle alone exceeds the limit ({} bytes)",
        ca.len()
    );
    let c = aws();
    let limit = cloudinit::default_limit(c.provider());
    assert_eq!(limit, 16384);
    let seed = cloudinit::render(&c, &Templates::embedded(), &with_ca(ca), limit).unwrap();
    assert!(seed.user_data.len() <= 16384, "{}", seed.user_data.len());
    assert!(!seed.compressed.is_empty());
    assert!(seed.user_data.contains("encoding: gzip+base64"));
}

#[test]
fn user_data_that_cannot_fit_fails_with_size_and_limit() {
    // Incompressible content: base64 of a hash chain.
    let mut state = 1u64;
    let noise = |state: &mut u64| {
        (0..3000)
            .map(|_| {
                *state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                char::from(b'a' + (*state >> 59) as u8 % 26)
            })
            .collect::<String>()
    };
    let ca: String = (0..8)
        .map(|_| format!("# {}\n", noise(&mut state)))
        .collect();
    match cloudinit::render(&aws(), &Templates::embedded(), &with_ca(ca), 16384) {
        Err(
            e @ CloudInitError::TooLarge {
                size, limit: 16384, ..
            },
        ) => {
            assert!(size > 16384);
            let msg = e.to_string();
            assert!(msg.contains("the limit for aws is 16384 bytes"), "{msg}");
            assert!(msg.contains("--max-user-data"), "{msg}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

/// The agent reads add-on manifests from the FledgeCluster's spec; a copy in CP-A's user-data
/// would only spend the user-data budget (and sit on the node's disk, world-readable).
#[test]
fn inline_addon_manifests_are_not_written_to_user_data() {
    let marker = "inline-manifest-marker-7f3a";
    let c = aws_with_addons(vec![format!(
        "kind: ConfigMap\nmetadata:\n  name: {marker}\n"
    )]);
    let seed =
        cloudinit::render(&c, &Templates::embedded(), &Credentials::default(), 65536).unwrap();
    assert!(!seed.user_data.contains(marker), "{}", seed.user_data);
    assert!(
        !seed.user_data.contains("/var/lib/fledge/addons"),
        "{}",
        seed.user_data
    );
    // Nor does it change the seed: the request with its URL manifest instead renders the same.
    let plain = cloudinit::render(
        &aws(),
        &Templates::embedded(),
        &Credentials::default(),
        65536,
    )
    .unwrap();
    assert_eq!(seed.user_data, plain.user_data);
}

#[test]
fn instance_id_follows_the_seed_content() {
    let (c, t) = (aws(), Templates::embedded());
    let ca =
        |name: &str| format!("-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n");
    let sa = cloudinit::render(&c, &t, &with_ca(ca("A")), 65536).unwrap();
    let sa2 = cloudinit::render(&c, &t, &with_ca(ca("A")), 65536).unwrap();
    let sb = cloudinit::render(&c, &t, &with_ca(ca("B")), 65536).unwrap();
    assert_eq!(sa.meta_data, sa2.meta_data);
    assert_ne!(
        sa.meta_data, sb.meta_data,
        "a changed seed gets a new instance-id"
    );
}

#[test]
fn embedded_token_is_mode_0600_and_static_network_config_is_written() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(workspace_root().join("examples/maas.yaml")).unwrap();
    let req = base.replace(
        "  management:",
        "  nodes:\n    - hostname: cp-a\n      macAddress: \"52:54:00:AB:CD:EF\"\n      addresses: [\"10.0.0.10/24\"]\n      gateway: 10.0.0.1\n      dns: [\"10.0.0.2\"]\n  management:",
    );
    std::fs::write(dir.path().join("req.yaml"), req).unwrap();
    std::fs::write(dir.path().join("token"), "tok.abc-123\n").unwrap();
    std::fs::write(
        dir.path().join("ca.crt"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = Command::new(fledge_tests::binary("fledge"))
        .args([
            "render",
            "req.yaml",
            "--out",
            "out",
            "--management-token",
            "token",
            "--management-ca",
            "ca.crt",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("tok.abc-123"),
        "the token is never printed"
    );
    let ud = out.join("cp-a/user-data");
    assert_eq!(
        std::fs::metadata(&ud).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&ud).unwrap();
    assert!(text.contains("tok.abc-123"));
    let net: Value =
        serde_norway::from_str(&std::fs::read_to_string(out.join("cp-a/network-config")).unwrap())
            .unwrap();
    assert_eq!(
        net,
        json!({"version": 2, "ethernets": {"primary": {
            "match": {"macaddress": "52:54:00:ab:cd:ef"}, "addresses": ["10.0.0.10/24"],
            "routes": [{"to": "default", "via": "10.0.0.1"}], "nameservers": {"addresses": ["10.0.0.2"]}}}})
    );
    assert!(
        std::fs::read_to_string(out.join("cp-a/meta-data"))
            .unwrap()
            .contains("local-hostname: cp-a")
    );
}

/// Runs CP-A's bootstrap script (as cloud-init's runcmd does) against a scratch root, with a
/// `kubeadm` on PATH that records its calls and creates kubeadm's state, and a stand-in agent.
fn bootstrap(root: &std::path::Path, kubeadm_exit: u8) -> std::process::Output {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let kubeadm = format!(
        "#!/bin/sh\necho \"kubeadm $*\" >> {calls}\n[ {code} -eq 0 ] || {{ echo 'error execution phase preflight' >&2; exit {code}; }}\nmkdir -p {root}/etc/kubernetes/manifests\ntouch {root}/etc/kubernetes/admin.conf {root}/etc/kubernetes/manifests/kube-apiserver.yaml\n",
        calls = root.join("calls").display(),
        root = root.display(),
        code = kubeadm_exit
    );
    let agent = format!(
        "#!/bin/sh\necho \"agent $*\" >> {}\n",
        root.join("calls").display()
    );
    for (name, text) in [("kubeadm", kubeadm), ("fledge-agent", agent)] {
        std::fs::write(bin.join(name), text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = root.join("bootstrap.sh");
    std::fs::write(&script, fledge_generator::cloudinit::BOOTSTRAP_SCRIPT).unwrap();
    Command::new("sh")
        .arg(&script)
        .arg(bin.join("fledge-agent"))
        .arg("/etc/fledge/agent.yaml")
        .env("FLEDGE_BOOTSTRAP_ROOT", root)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .unwrap()
}

#[test]
fn bootstrap_runs_kubeadm_init_once_and_clears_a_stale_failure() {
    if !have("python3") {
        return missing("python3", "install python3");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let calls = || std::fs::read_to_string(root.join("calls")).unwrap_or_default();
    let failure = root.join("var/lib/fledge/bootstrap-failure.json");
    // A failed first attempt leaves its record.
    let out = bootstrap(root, 1);
    assert!(!out.status.success());
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&failure).unwrap()).unwrap();
    assert_eq!(record["phase"], "kubeadm-init");
    assert_eq!(record["exitCode"], 1);
    // The next attempt succeeds: the stale record goes, the agent is installed.
    let out = bootstrap(root, 0);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !failure.exists(),
        "a stale bootstrap failure is still reported"
    );
    assert!(
        root.join("run/cluster-api/bootstrap-success.complete")
            .is_file()
    );
    // A re-delivered seed on the same disk: kubeadm init does not run a second time.
    let out = bootstrap(root, 0);
    assert!(out.status.success());
    let inits = calls()
        .lines()
        .filter(|l| l.starts_with("kubeadm init"))
        .count();
    assert_eq!(
        inits,
        2,
        "one failed and one successful init, none after: {}",
        calls()
    );
    let installs = calls()
        .lines()
        .filter(|l| l.starts_with("agent install"))
        .count();
    assert_eq!(installs, 2, "{}", calls());
}
