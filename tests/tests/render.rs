//! The generator against real schemas: golden files, upstream CRD validation, the `fails/` set,
//! determinism, and a credentials scan.

use std::path::{Path, PathBuf};

use fledge_generator::render::pipeline::render_files;
use fledge_generator::spec::{self, MAX_REQUEST_BYTES, ProviderKind};
use fledge_tests::crds::{SchemaSet, crds_dir, dirs_for};
use fledge_tests::{missing, workspace_root};
use serde::Deserialize;
use serde_json::Value;

fn case_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("tests/cases"))
        .expect("tests/cases")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("input.yaml").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn golden_cases_cover_every_provider_and_capi_version() {
    let names: Vec<String> = case_dirs()
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for provider in ProviderKind::ALL {
        for capi in ["v1beta1", "v1beta2"] {
            let want = format!("{}-{capi}", provider.as_str());
            assert!(names.contains(&want), "no golden case {want} in {names:?}");
        }
    }
    // Minimal requests (no machine block, empty named profile) render too, and an inline
    // add-on manifest stays out of CP-A's user-data (the agent reads it from the spec).
    for want in [
        "docker-minimal",
        "docker-empty-profile",
        "docker-inline-manifest",
    ] {
        assert!(names.iter().any(|n| n == want), "no golden case {want}");
    }
}

#[test]
fn rendered_files_match_golden_files() {
    let update = std::env::var_os("FLEDGE_UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for dir in case_dirs() {
        let files = render_files(&dir.join("input.yaml"), &Default::default())
            .unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()));
        for f in files {
            let golden = dir.join("expected").join(&f.path);
            if update {
                std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
                std::fs::write(&golden, &f.contents).unwrap();
                continue;
            }
            let want = std::fs::read(&golden)
                .unwrap_or_else(|_| panic!("missing golden file {}", golden.display()));
            if want != f.contents {
                mismatches.push(golden.display().to_string());
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "rendered output differs from golden files (re-run with FLEDGE_UPDATE_GOLDEN=1 after checking the diff): {mismatches:#?}"
    );
}

#[test]
fn every_rendered_capi_object_passes_its_upstream_crd_schema() {
    if !crds_dir().is_dir() {
        return missing(
            &format!("upstream CRDs at {}", crds_dir().display()),
            "set FLEDGE_CRDS_DIR to the shared/crds folder",
        );
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut expected = 0;
    for dir in case_dirs() {
        let checked_req = spec::load_request(&dir.join("input.yaml")).unwrap();
        let mut set = SchemaSet::load(&dirs_for(checked_req.capi, checked_req.provider())).unwrap();
        let files = render_files(&dir.join("input.yaml"), &Default::default()).unwrap();
        let text = |name: &str| {
            let f = files.iter().find(|f| f.path == Path::new(name)).unwrap();
            String::from_utf8(f.contents.clone()).unwrap()
        };
        let objects = docs(&text("management.yaml"));
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        for want in [
            "Cluster",
            "KubeadmControlPlane",
            "FledgeCluster",
            "ServiceAccount",
            "Role",
            "RoleBinding",
        ] {
            assert!(
                kinds.contains(&want),
                "{}: no {want} in {kinds:?}",
                dir.display()
            );
        }
        // No legacy, never-expiring token Secret: `fledge apply` mints a bound token.
        assert!(
            !text("management.yaml").contains("kubernetes.io/service-account-token"),
            "{}: a legacy token Secret is rendered",
            dir.display()
        );
        assert!(
            !kinds.contains(&"MachineDeployment"),
            "workers are the agent's job"
        );
        // The agent's post-pivot objects: per pool a machine template, a KubeadmConfigTemplate
        // and a MachineDeployment, then the control plane's machine template and the KCP at
        // the spec's replica count. Templates are named by content, and the KCP points at the
        // same control-plane template as on the management plane.
        // The MachineHealthChecks come last; the positions below are of the other objects.
        let all_workload = docs(&text("workload.yaml"));
        let (checks, workload): (Vec<Value>, Vec<Value>) = all_workload
            .iter()
            .cloned()
            .partition(|o| o["kind"] == "MachineHealthCheck");
        assert_eq!(
            all_workload[workload.len()..].to_vec(),
            checks,
            "{}: health checks last",
            dir.display()
        );
        let pools = checked_req.spec.workers.len();
        let kinds: Vec<&str> = workload.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert_eq!(kinds.len(), 3 * pools + 2, "{}: {kinds:?}", dir.display());
        let cp_template = |o: &Value| {
            o["spec"]["machineTemplate"]["spec"]["infrastructureRef"]["name"]
                .as_str()
                .or(o["spec"]["machineTemplate"]["infrastructureRef"]["name"].as_str())
                .map(str::to_string)
        };
        let on_management = docs(&text("management.yaml"))
            .iter()
            .find(|o| o["kind"] == "KubeadmControlPlane")
            .and_then(cp_template);
        assert_eq!(cp_template(workload.last().unwrap()), on_management);
        assert_eq!(
            workload[workload.len() - 2]["metadata"]["name"].as_str(),
            on_management.as_deref()
        );
        assert_eq!(kinds.last(), Some(&"KubeadmControlPlane"));
        // As the management plane's: every control-plane node runs the agent.
        let kcp = &workload.last().unwrap()["spec"]["kubeadmConfigSpec"];
        let on_management = docs(&text("management.yaml"))
            .into_iter()
            .find(|o| o["kind"] == "KubeadmControlPlane")
            .unwrap();
        assert_eq!(kcp, &on_management["spec"]["kubeadmConfigSpec"]);
        assert!(kcp.to_string().contains("/etc/fledge/agent.yaml"), "{kcp}");
        assert_eq!(
            workload.last().unwrap()["spec"]["replicas"],
            checked_req.spec.control_plane.replicas
        );
        for (i, pool) in checked_req.spec.workers.iter().enumerate() {
            let md = &workload[3 * i + 2];
            assert_eq!(md["kind"], "MachineDeployment");
            assert_eq!(md["spec"]["replicas"], pool.replicas);
        }
        expected += 5 + all_workload.len();
        for obj in objects.iter().chain(&all_workload) {
            match set.validate(obj) {
                Some(Ok(())) => checked += 1,
                Some(Err(errs)) => {
                    failures.extend(errs.into_iter().map(|e| format!("{}: {e}", dir.display())))
                }
                None => {}
            }
        }
    }
    assert!(
        failures.is_empty(),
        "schema violations:\n{}",
        failures.join("\n")
    );
    // Per case: FledgeCluster, Cluster, infra cluster, machine template, KCP; and every
    // workload object.
    assert_eq!(checked, expected);
}

#[test]
fn a_schema_violation_is_caught() {
    if !crds_dir().is_dir() {
        return missing("upstream CRDs", "set FLEDGE_CRDS_DIR");
    }
    let mut set = SchemaSet::load(&["cluster-api/v1.13.5"]).unwrap();
    let bad = serde_json::json!({
        "apiVersion": "controlplane.cluster.x-k8s.io/v1beta2", "kind": "KubeadmControlPlane",
        "metadata": {"name": "x"},
        "spec": {"replicas": 1, "version": "v1.33.4", "machineTemplate": {"spec": {"infrastructureRef": {"kind": "K", "name": "n"}}},
                 "kubeadmConfigSpec": {"users": [{"name": "u", "lockPasswd": true}]}}});
    let errs = set.validate(&bad).unwrap().unwrap_err();
    let text = errs.join("\n");
    assert!(
        text.contains(
            "spec.machineTemplate.spec.infrastructureRef: missing required field \"apiGroup\""
        ),
        "{text}"
    );
    assert!(
        text.contains("spec.kubeadmConfigSpec.users[0].lockPasswd: unknown field"),
        "{text}"
    );
}

#[test]
fn rendering_is_deterministic() {
    for dir in case_dirs() {
        let a = render_files(&dir.join("input.yaml"), &Default::default()).unwrap();
        let b = render_files(&dir.join("input.yaml"), &Default::default()).unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.path, y.path);
            assert!(
                x.contents == y.contents,
                "{} differs between renders",
                x.path.display()
            );
        }
    }
}

fn fails_dir() -> PathBuf {
    workspace_root().join("tests/fails")
}

#[test]
fn bad_requests_produce_their_exact_errors() {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(fails_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    assert!(entries.len() >= 10, "the fails/ set is too small");
    let mut wrong = Vec::new();
    for input in entries {
        let name = input.file_name().unwrap().to_string_lossy().to_string();
        let want = std::fs::read_to_string(input.with_extension("err"))
            .unwrap_or_else(|_| panic!("{name}: missing .err file"));
        let bytes = std::fs::read(&input).unwrap();
        match spec::parse_request(&name, &bytes) {
            Ok(_) => wrong.push(format!("{name}: accepted, expected:\n{want}")),
            Err(e) if e.to_string().trim_end() != want.trim_end() => wrong.push(format!(
                "{name}:\n--- want\n{}\n--- got\n{e}",
                want.trim_end()
            )),
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

fn example_bytes() -> Vec<u8> {
    std::fs::read(workspace_root().join("examples/docker.yaml")).unwrap()
}

#[test]
fn non_utf8_input_is_reported_with_its_position() {
    let mut bytes = b"apiVersion: fledge.dev/v1alpha1\nkind: Fledge".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    let err = spec::parse_request("bin.yaml", &bytes)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "bin.yaml:2:13: is not valid UTF-8 (invalid byte at offset 44)"
    );
}

#[test]
fn a_ten_megabyte_file_is_refused_before_parsing() {
    let mut bytes = example_bytes();
    bytes.resize(10 * 1024 * 1024, b'#');
    let err = spec::parse_request("huge.yaml", &bytes)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "huge.yaml: is 10485760 bytes; a FledgeCluster request may be at most {MAX_REQUEST_BYTES} bytes"
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    std::fs::write(&path, &bytes).unwrap();
    let err = spec::load_request(&path).unwrap_err();
    assert!(err.to_string().contains("is 10485760 bytes"));
}

/// YAML aliases copy what they name: a small request whose aliases all name one large scalar
/// would expand to gigabytes. The expansion is bounded, with an error that names the rule.
#[test]
fn yaml_aliases_cannot_blow_up_a_request() {
    // 64 KiB named once and copied 2000 times: a 140 KB file that expands to 128 MiB.
    let text = String::from_utf8(example_bytes()).unwrap().replace(
        "  namespace: team-docker\n",
        &format!(
            "  namespace: team-docker\n  annotations:\n    big: &big \"{}\"\n    copies: [{}]\n",
            "x".repeat(64 * 1024),
            vec!["*big"; 2000].join(", ")
        ),
    );
    assert!(text.len() < 150_000);
    let err = spec::parse_request("amp.yaml", text.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("amp.yaml: YAML aliases expand it to more than 16777216 bytes (the limit is 32 times the size of the YAML text"),
        "{err}"
    );
}

#[test]
fn a_request_may_still_use_yaml_aliases() {
    let text = std::fs::read_to_string(workspace_root().join("examples/vsphere.yaml"))
        .unwrap()
        .replace(
            "    machine: {cpus: 4, memoryMiB: 8192, diskGiB: 40}",
            "    machine: &m {cpus: 4, memoryMiB: 8192, diskGiB: 40}",
        )
        .replace(
            "      machine: {cpus: 4, memoryMiB: 16384, diskGiB: 80}",
            "      machine: *m",
        );
    assert!(text.contains("*m"));
    let c = spec::parse_request("alias.yaml", text.as_bytes()).unwrap();
    assert_eq!(c.spec.workers[0].machine, c.spec.control_plane.machine);
    assert_eq!(c.spec.workers[0].machine.memory_mib, Some(8192));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = String::from_utf8(example_bytes())
        .unwrap()
        .replace(
            "controlPlane:\n    replicas: 1",
            "controlPlane:\n    replicas: 2",
        )
        .replace("name: docker-demo", "name: Docker_Demo")
        .replace("192.168.0.0/16", "192.168.0.1/16");
    let err = spec::parse_request("multi.yaml", text.as_bytes()).unwrap_err();
    assert_eq!(err.problems.len(), 3, "{err}");
}

fn no_credentials(label: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for marker in [
        "PRIVATE KEY-----",
        "BEGIN OPENSSH",
        "aws_secret_access_key",
        "AKIA",
    ] {
        if text.contains(marker) {
            found.push(format!("{label}: contains {marker:?}"));
        }
    }
    // Password fields as cloud-init, CABPK and Secrets spell them, anywhere in any document.
    fn walk(v: &Value, path: &str, label: &str, found: &mut Vec<String>) {
        const KEYS: [&str; 8] = [
            "passwd",
            "password",
            "plain_text_passwd",
            "hashed_passwd",
            "passwdFrom",
            "chpasswd",
            "clientSecret",
            "stringData",
        ];
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    if KEYS.contains(&k.as_str()) {
                        found.push(format!("{label}: password-like field {path}.{k}"));
                    }
                    walk(child, &format!("{path}.{k}"), label, found);
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, path, label, found)),
            _ => {}
        }
    }
    if let Ok(values) = serde_norway::Deserializer::from_str(text)
        .map(Value::deserialize)
        .collect::<Result<Vec<_>, _>>()
    {
        for v in &values {
            walk(v, "", label, &mut found);
        }
    }
    found
}

#[test]
fn no_credentials_in_examples_or_rendered_output() {
    let mut found = Vec::new();
    let mut scanned = 0;
    let mut scan_dir = |dir: &Path, found: &mut Vec<String>| {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                found.extend(no_credentials(
                    &p.display().to_string(),
                    &std::fs::read_to_string(&p).unwrap(),
                ));
                scanned += 1;
            }
        }
    };
    scan_dir(&workspace_root().join("examples"), &mut found);
    for dir in case_dirs() {
        for f in render_files(&dir.join("input.yaml"), &Default::default()).unwrap() {
            found.extend(no_credentials(
                &f.path.display().to_string(),
                &String::from_utf8_lossy(&f.contents),
            ));
            scanned += 1;
        }
    }
    assert!(scanned >= 18);
    assert!(found.is_empty(), "{found:#?}");
    // The scanner itself must notice a credential.
    assert!(!no_credentials("probe", "-----BEGIN OPENSSH PRIVATE KEY-----").is_empty());
    assert!(!no_credentials("probe", "users:\n  - name: x\n    passwd: abc\n").is_empty());
}

#[test]
fn the_documented_machine_field_table_matches_the_providers() {
    use fledge_generator::providers::{self, Need};
    let doc = std::fs::read_to_string(workspace_root().join("docs/request.md")).unwrap();
    let mut seen = 0;
    for line in doc.lines() {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let Some(kind) = ProviderKind::ALL.iter().find(|k| cells[0] == k.as_str()) else {
            continue;
        };
        if cells.len() != 9 {
            continue;
        }
        let p = providers::get(*kind);
        let r = p.machine_rules();
        let mark = |n: Need| match n {
            Need::Required => "R",
            Need::Optional => "o",
            Need::Unused => "-",
        };
        let first = |c: &str| c.split(' ').next().unwrap_or("").to_string();
        let got: Vec<String> = cells[1..7].iter().map(|c| first(c)).collect();
        let want = [
            r.cpus,
            r.memory_mib,
            r.disk_gib.0,
            r.instance_type,
            r.vm_size,
            r.machine_type,
        ]
        .map(|n| mark(n).to_string());
        assert_eq!(
            got,
            want,
            "docs/request.md machine table row for {}",
            kind.as_str()
        );
        if r.disk_gib.0 != Need::Unused {
            assert!(cells[3].contains(&format!(">= {}", r.disk_gib.1)), "{line}");
        }
        let block_needed = want.iter().any(|m| m == "R");
        assert_eq!(cells[7] == "required", block_needed, "{line}");
        assert_eq!(cells[8] == "required", p.needs_endpoint(), "{line}");
        seen += 1;
    }
    assert_eq!(
        seen,
        ProviderKind::ALL.len(),
        "one docs/request.md row per provider"
    );
}

/// The agent's cluster-scoped RBAC objects are named `fledge:<namespace>:<cluster>-fledge-agent`
/// (no quotes from the template's escaping inside the name), and the binding points at the role.
#[test]
fn the_agents_cluster_role_is_named_after_namespace_and_cluster() {
    for dir in case_dirs() {
        let req = spec::load_request(&dir.join("input.yaml")).unwrap();
        let want = format!("fledge:{}:{}-fledge-agent", req.namespace, req.name);
        assert_eq!(
            fledge_generator::management::agent_cluster_role(
                req.namespace.as_str(),
                req.name.as_str()
            ),
            want
        );
        let files = render_files(&dir.join("input.yaml"), &Default::default()).unwrap();
        let f = files
            .iter()
            .find(|f| f.path == Path::new("management.yaml"))
            .unwrap();
        let objects = docs(std::str::from_utf8(&f.contents).unwrap());
        let named = |kind: &str| {
            let o = objects
                .iter()
                .find(|o| o["kind"] == kind)
                .unwrap_or_else(|| panic!("{}: no {kind}", dir.display()));
            o["metadata"]["name"].as_str().unwrap().to_string()
        };
        assert_eq!(named("ClusterRole"), want, "{}", dir.display());
        assert_eq!(named("ClusterRoleBinding"), want, "{}", dir.display());
        let binding = objects
            .iter()
            .find(|o| o["kind"] == "ClusterRoleBinding")
            .unwrap();
        assert_eq!(binding["roleRef"]["name"], want.as_str());
    }
}

/// Self-hosted docker clusters: after the pivot the docker provider runs on the cluster's own
/// nodes, so every docker machine template (CP-A's in `management.yaml`, the control plane's
/// and each pool's in `workload.yaml`) mounts the host's Docker socket, as Cluster API's
/// self-hosted e2e does.
#[test]
fn docker_machines_mount_the_docker_socket() {
    let mut seen = 0;
    for dir in case_dirs().into_iter().filter(|d| {
        d.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("docker"))
    }) {
        for file in ["management.yaml", "workload.yaml"] {
            let text = std::fs::read_to_string(dir.join("expected").join(file)).unwrap();
            for d in docs(&text) {
                let kind = d["kind"].as_str().unwrap_or_default();
                if !kind.ends_with("MachineTemplate") {
                    continue;
                }
                let spec = &d["spec"]["template"]["spec"];
                let docker = if spec["backend"]["docker"].is_object() {
                    &spec["backend"]["docker"]
                } else {
                    spec
                };
                let mounts = docker["extraMounts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                assert!(
                    mounts
                        .iter()
                        .any(|m| m["hostPath"] == "/var/run/docker.sock"
                            && m["containerPath"] == "/var/run/docker.sock"),
                    "{}/{file}: {kind} {} lacks the Docker socket mount",
                    dir.display(),
                    d["metadata"]["name"]
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 8, "docker machine templates checked: {seen}");
}

/// The docker provider's machines get no `users`: CAPD runs a cloud-config's `write_files` and
/// `runcmd` itself (`docker exec`) and refuses every other top-level module whose value is not
/// JSON ("failed to exec DockerMachine bootstrap: ... invalid character 'u' looking for
/// beginning of value", seen on the first real node), so CP-A never bootstrapped. Containers
/// have no SSH; `docker exec` is the way in.
#[test]
fn docker_machines_get_no_users_which_capd_cannot_bootstrap() {
    let mut seen = 0;
    for dir in case_dirs() {
        let docker = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("docker"));
        for file in ["management.yaml", "workload.yaml"] {
            let Ok(text) = std::fs::read_to_string(dir.join("expected").join(file)) else {
                continue;
            };
            for d in docs(&text) {
                let spec = match d["kind"].as_str() {
                    Some("KubeadmControlPlane") => &d["spec"]["kubeadmConfigSpec"],
                    Some("KubeadmConfigTemplate") => &d["spec"]["template"]["spec"],
                    _ => continue,
                };
                assert_eq!(
                    spec["users"].is_null(),
                    docker,
                    "{}/{file}: {} {}: users {}",
                    dir.display(),
                    d["kind"],
                    d["metadata"]["name"],
                    if docker {
                        "rendered for CAPD"
                    } else {
                        "missing"
                    }
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 20, "bootstrap configurations checked: {seen}");
}

/// A request whose profile has no `network` core layer is rendered, with a warning: on a real
/// node nothing but host-network pods starts before a CNI runs. A `network` add-on layer is
/// warned about too (it would come after the providers).
#[test]
fn a_request_without_a_network_core_layer_is_warned_about() {
    let warned = |case: &str| {
        let c = spec::load_request(
            &workspace_root()
                .join("tests/cases")
                .join(case)
                .join("input.yaml"),
        )
        .unwrap();
        spec::warnings(&c)
    };
    assert_eq!(warned("docker-v1beta2"), Vec::<String>::new());
    let w = warned("docker-minimal");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("spec.profile.coreLayers has no layer named network"),
        "{w:?}"
    );
    let text =
        std::fs::read_to_string(workspace_root().join("tests/cases/docker-v1beta2/input.yaml"))
            .unwrap()
            .replace("    coreLayers:\n", "    layers:\n");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("late-cni.yaml");
    std::fs::write(&p, text).unwrap();
    let w = spec::warnings(&spec::load_request(&p).unwrap());
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[1].starts_with("spec.profile.layers[0] is named network but is an add-on layer"),
        "{w:?}"
    );
    // The CLI prints them on stderr and still renders.
    let out = std::process::Command::new(fledge_tests::binary("fledge"))
        .args(["validate"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: ") && stderr.contains("is named network but is an add-on layer"),
        "{stderr}"
    );
}

#[test]
fn health_checks_select_their_machines_and_autoscaled_pools_carry_their_bounds() {
    let dir = workspace_root().join("tests/cases/docker-resilient");
    let files = render_files(&dir.join("input.yaml"), &Default::default()).unwrap();
    let text = |name: &str| {
        let f = files.iter().find(|f| f.path == Path::new(name)).unwrap();
        String::from_utf8(f.contents.clone()).unwrap()
    };
    let workload = docs(&text("workload.yaml"));
    let checks: Vec<&Value> = workload
        .iter()
        .filter(|o| o["kind"] == "MachineHealthCheck")
        .collect();
    // The control plane's and md-0's; `batch` switched its check off.
    let names: Vec<&str> = checks
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["docker-demo-control-plane", "docker-demo-md-0"]);
    assert_eq!(
        checks[0]["spec"]["selector"]["matchLabels"]["cluster.x-k8s.io/control-plane"],
        ""
    );
    assert_eq!(
        checks[1]["spec"]["selector"]["matchLabels"]["cluster.x-k8s.io/deployment-name"],
        "docker-demo-md-0"
    );
    assert_eq!(
        checks[0]["spec"]["checks"]["nodeStartupTimeoutSeconds"],
        900
    );
    assert_eq!(
        checks[1]["spec"]["checks"]["unhealthyNodeConditions"],
        serde_json::json!([
            {"type": "Ready", "status": "False", "timeoutSeconds": 120},
            {"type": "Ready", "status": "Unknown", "timeoutSeconds": 300}
        ])
    );
    assert_eq!(
        checks[1]["spec"]["remediation"]["triggerIf"]["unhealthyLessThanOrEqualTo"],
        "40%"
    );
    // The management plane has none: its one control-plane machine is never remediated.
    assert!(
        !docs(&text("management.yaml"))
            .iter()
            .any(|o| o["kind"] == "MachineHealthCheck")
    );
    // md-0 is autoscaled: the bounds as Cluster API's annotations, replicas its initial size.
    let md = |name: &str| {
        workload
            .iter()
            .find(|o| o["kind"] == "MachineDeployment" && o["metadata"]["name"] == name)
            .unwrap()
            .clone()
    };
    let md0 = md("docker-demo-md-0");
    let a = &md0["metadata"]["annotations"];
    assert_eq!(
        a["cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size"],
        "1"
    );
    assert_eq!(
        a["cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size"],
        "5"
    );
    assert_eq!(md0["spec"]["replicas"], 2);
    assert!(md("docker-demo-batch")["metadata"]["annotations"].is_null());
}

/// Azure nodes read `/etc/kubernetes/azure.json` (cloud-provider-azure's configuration) from the
/// Secret CAPZ's AzureMachineTemplate controller writes for their machine template,
/// `<template>-azure-json` with the keys `control-plane-azure.json` and `worker-node-azure.json`
/// (CAPZ v1.26.0 `controllers/helpers.go`). Without it the control plane's cloud provider has no
/// configuration and the nodes keep the uninitialized taint.
#[test]
fn azure_nodes_read_azure_json_from_the_secret_capz_writes_for_their_machine_template() {
    let mut seen = 0;
    for dir in case_dirs().into_iter().filter(|d| {
        d.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("azure"))
    }) {
        let mut all = Vec::new();
        for file in ["management.yaml", "workload.yaml"] {
            let text = std::fs::read_to_string(dir.join("expected").join(file)).unwrap();
            all.extend(docs(&text).into_iter().map(|d| (file, d)));
        }
        let azure_json = |files: &Value| -> Option<(String, String)> {
            let f = files
                .as_array()?
                .iter()
                .find(|f| f["path"] == "/etc/kubernetes/azure.json")?;
            assert_eq!(f["permissions"], "0600");
            let s = &f["contentFrom"]["secret"];
            Some((s["name"].as_str()?.into(), s["key"].as_str()?.into()))
        };
        let infra_ref = |mt: &Value| {
            let r = &mt["infrastructureRef"];
            let r = if r.is_object() {
                r
            } else {
                &mt["spec"]["infrastructureRef"]
            };
            r["name"].as_str().unwrap().to_string()
        };
        for (file, d) in &all {
            let (template, got, key) = match d["kind"].as_str().unwrap_or_default() {
                "KubeadmControlPlane" => (
                    infra_ref(&d["spec"]["machineTemplate"]),
                    azure_json(&d["spec"]["kubeadmConfigSpec"]["files"]),
                    "control-plane-azure.json",
                ),
                "MachineDeployment" => {
                    let spec = &d["spec"]["template"]["spec"];
                    let config = spec["bootstrap"]["configRef"]["name"].as_str().unwrap();
                    let kct = all
                        .iter()
                        .map(|(_, d)| d)
                        .find(|d| {
                            d["kind"] == "KubeadmConfigTemplate" && d["metadata"]["name"] == config
                        })
                        .unwrap();
                    (
                        spec["infrastructureRef"]["name"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                        azure_json(&kct["spec"]["template"]["spec"]["files"]),
                        "worker-node-azure.json",
                    )
                }
                _ => continue,
            };
            assert_eq!(
                got,
                Some((format!("{template}-azure-json"), key.to_string())),
                "{}/{file}: {} {}",
                dir.display(),
                d["kind"],
                d["metadata"]["name"]
            );
            seen += 1;
        }
    }
    // Per case: the management KCP, the workload KCP and one pool.
    assert_eq!(seen, 6);
}
