//! `fledge apply` against real kube-apiservers with the upstream CRDs installed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fledge_generator::management;
use fledge_generator::providers;
use fledge_generator::render::Templates;
use fledge_generator::spec::{self, CapiVersion, CheckedCluster, FledgeCluster, ProviderKind};
use fledge_generator::ssa::{ApplyError, ApplyOptions, Outcome, apply};
use fledge_generator::target::{Target, client_from_kubeconfig};
use fledge_generator::workload;
use fledge_tests::capi;
use fledge_tests::cluster::{Options, TestCluster, kubeconfig_yaml, start_or_skip};
use fledge_tests::crds::core_dir;
use fledge_tests::install::install_crds;
use fledge_tests::workspace_root;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

fn case(provider: ProviderKind, capi: CapiVersion) -> PathBuf {
    workspace_root().join(format!(
        "tests/cases/{}-{}/input.yaml",
        provider.as_str(),
        capi.as_str()
    ))
}

/// The CRD directories the cases of one CAPI contract need.
fn dirs_with_providers(capi: CapiVersion) -> Vec<&'static str> {
    let mut dirs = vec![core_dir(capi)];
    for p in ProviderKind::ALL {
        let d = providers::get(p).api(capi).crd_dir;
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// A cluster with every CRD the cases of one CAPI contract need.
async fn cluster_for(capi: CapiVersion) -> Option<(TestCluster, Target)> {
    cluster_with(capi, false).await
}

/// The same, optionally with the real CAPI managers (v1.13.5) and their webhooks answering.
async fn cluster_with(capi: CapiVersion, managers: bool) -> Option<(TestCluster, Target)> {
    let c = if managers {
        fledge_tests::managers::start_with_managers_or_skip().await?
    } else {
        start_or_skip(Options::default()).await?
    };
    install_crds(&c.client().await, &dirs_with_providers(capi))
        .await
        .unwrap();
    let target = client_from_kubeconfig(Some(&c.kubeconfig)).await.unwrap();
    Some((c, target))
}

async fn create_namespace(target: &Target, name: &str) {
    let api: Api<Namespace> = Api::all(target.client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_string());
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("{e}"),
    }
}

fn load(path: &Path) -> CheckedCluster {
    spec::load_request(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Every golden case (tests/cases/*/input.yaml).
fn all_cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("tests/cases"))
        .unwrap()
        .map(|e| e.unwrap().path().join("input.yaml"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn every_case_passes_server_side_dry_run_for_both_capi_versions() {
    // The CRDs keep their CEL rules, defaults and strict schemas on the current apiserver; the
    // v1beta2 cases also pass the real CAPI v1.13.5 webhooks (the v1beta1 cases are validated
    // against the CAPI v1.9 CRDs, which those managers do not serve).
    let cases: Vec<CheckedCluster> = all_cases().iter().map(|p| load(p)).collect();
    let mut checked = 0;
    for capi in [CapiVersion::V1beta2, CapiVersion::V1beta1] {
        let Some((c, target)) = cluster_with(capi, capi == CapiVersion::V1beta2).await else {
            return;
        };
        for case in cases.iter().filter(|c| c.capi == capi) {
            create_namespace(&target, case.namespace.as_str()).await;
            // The management objects, then (separately: a dry run persists nothing, so the
            // workload's KCP is a create too) what the agent creates after the pivot.
            let opts = ApplyOptions {
                dry_run: true,
                ..Default::default()
            };
            let templates = Templates::embedded();
            for (skip, objects) in [
                // The Namespace exists already.
                (1, management::objects(case, &templates).unwrap()),
                (0, workload::objects(case, &templates).unwrap()),
            ] {
                let results = apply(&target, &objects, &opts, |_| {})
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e:#?}", case.name));
                assert_eq!(results.len(), objects.len());
                assert!(
                    results[skip..]
                        .iter()
                        .all(|a| a.outcome == Outcome::Created),
                    "{results:?}"
                );
            }
            checked += 1;
        }
        if capi == CapiVersion::V1beta2 {
            // The apiserver called the real mutating webhooks (the audit log's annotations).
            tokio::time::sleep(Duration::from_millis(500)).await;
            let audit = std::fs::read_to_string(c.audit_log()).unwrap();
            let called: Vec<String> = audit
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|e| {
                    e["requestURI"]
                        .as_str()
                        .is_some_and(|u| u.contains("dryRun=All"))
                })
                .filter_map(|e| e["annotations"].as_object().cloned())
                .flat_map(|a| a.into_iter())
                .filter(|(k, _)| k.starts_with("mutation.webhook.admission.k8s.io/"))
                .filter_map(|(_, v)| v.as_str().map(str::to_string))
                .collect();
            // (The workload objects bring the MachineDeployment and KubeadmConfigTemplate hooks in.)
            for hook in [
                "default.cluster.cluster.x-k8s.io",
                "default.kubeadmcontrolplane.controlplane.cluster.x-k8s.io",
                "default.machinedeployment.cluster.x-k8s.io",
                "default.kubeadmconfigtemplate.bootstrap.cluster.x-k8s.io",
            ] {
                let want = format!("\"webhook\":\"{hook}\"");
                assert!(
                    called.iter().any(|v| v.contains(&want)),
                    "no dry-run request went through the webhook {hook}: {called:?}"
                );
            }
        }
    }
    assert_eq!(checked, cases.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rendered_schema_error_is_rejected_by_the_server() {
    let Some((_c, target)) = cluster_for(CapiVersion::V1beta2).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("management")).unwrap();
    let original =
        std::fs::read_to_string(workspace_root().join("templates/management/cluster.yaml.j2"))
            .unwrap();
    let broken = original.replace(
        "serviceDomain: {{ network.dns_domain }}",
        "serviceDomain: 12345",
    );
    assert_ne!(broken, original);
    std::fs::write(dir.path().join("management/cluster.yaml.j2"), broken).unwrap();
    let templates = Templates::with_overrides(dir.path()).unwrap();
    let checked = load(&case(ProviderKind::Docker, CapiVersion::V1beta2));
    create_namespace(&target, checked.namespace.as_str()).await;
    let objects = management::objects(&checked, &templates).unwrap();
    let opts = ApplyOptions {
        dry_run: true,
        ..Default::default()
    };
    match apply(&target, &objects, &opts, |_| {}).await {
        Err(ApplyError::Rejected { object, message }) => {
            assert_eq!(object, "cluster.cluster.x-k8s.io/docker-demo");
            assert!(
                message.contains("spec.clusterNetwork.serviceDomain"),
                "{message}"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn applying_twice_changes_nothing_and_fledge_crds_serve_status() {
    let Some((c, target)) = cluster_for(CapiVersion::V1beta2).await else {
        return;
    };
    let request = case(ProviderKind::Vsphere, CapiVersion::V1beta2);
    // Through the binary, as a user runs it.
    let bin = fledge_tests::binary("fledge");
    let run = || {
        std::process::Command::new(&bin)
            .args([
                "apply",
                request.to_str().unwrap(),
                "--kubeconfig",
                c.kubeconfig.to_str().unwrap(),
            ])
            .output()
            .expect("run fledge (cargo build first)")
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let out = String::from_utf8(first.stdout).unwrap();
    assert!(
        out.contains("cluster.cluster.x-k8s.io/vsphere-demo created"),
        "{out}"
    );
    assert!(
        out.contains(
            "kubeadmcontrolplane.controlplane.cluster.x-k8s.io/vsphere-demo-control-plane created"
        ),
        "{out}"
    );

    let checked = load(&request);
    let objects = management::objects(&checked, &Templates::embedded()).unwrap();
    // As the binary applies them (the FledgeCluster owns the agent's access objects).
    let defaults = ApplyOptions::default();
    let apply_request = |objects: Vec<serde_json::Value>| {
        fledge_generator::apply::apply_request(&target, &checked, objects, &defaults, |_| {})
    };
    let before = apply_request(objects.clone()).await.unwrap();
    let again = apply_request(objects.clone()).await.unwrap();
    for (a, b) in before.iter().zip(&again) {
        assert_eq!(b.outcome, Outcome::Unchanged, "{}", b.object);
        assert_eq!(a.resource_version, b.resource_version, "{}", b.object);
    }
    let second = run();
    let out = String::from_utf8(second.stdout).unwrap();
    assert!(
        !out.contains("created") && !out.contains("configured"),
        "{out}"
    );

    // The FledgeCluster CRD is served with its status subresource.
    let api: Api<FledgeCluster> =
        Api::namespaced(target.client.clone(), checked.namespace.as_str());
    let status = serde_json::json!({"status": {"phase": "Installed", "agentVersion": "test"}});
    api.patch_status(
        checked.name.as_str(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();
    let got = api.get(checked.name.as_str()).await.unwrap();
    assert_eq!(got.status.unwrap().phase.as_deref(), Some("Installed"));
    // Status is not part of what fledge applies, so a re-apply keeps it.
    apply_request(objects.clone()).await.unwrap();
    assert!(
        api.get(checked.name.as_str())
            .await
            .unwrap()
            .status
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_and_unauthorised_clusters_give_one_clear_error() {
    let Some(c) = start_or_skip(Options::default()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let checked = load(&case(ProviderKind::Docker, CapiVersion::V1beta2));
    let objects = management::objects(&checked, &Templates::embedded()).unwrap();

    let wrong_token = dir.path().join("wrong-token");
    std::fs::write(
        &wrong_token,
        kubeconfig_yaml(&c.url, &c.ca_pem, "not-the-token"),
    )
    .unwrap();
    let target = client_from_kubeconfig(Some(&wrong_token)).await.unwrap();
    match apply(&target, &objects, &ApplyOptions::default(), |_| {}).await {
        Err(ApplyError::Unauthorized { code: 401, .. }) => {}
        other => panic!("expected 401, got {other:?}"),
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = dir.path().join("closed");
    std::fs::write(
        &closed,
        kubeconfig_yaml(&format!("https://127.0.0.1:{port}"), &c.ca_pem, &c.token),
    )
    .unwrap();
    let target = client_from_kubeconfig(Some(&closed)).await.unwrap();
    let start = Instant::now();
    let err = apply(&target, &objects, &ApplyOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ApplyError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "no retry storm: {:?}",
        start.elapsed()
    );

    // Without fledge's CRDs the error says what to install.
    let target = client_from_kubeconfig(Some(&c.kubeconfig)).await.unwrap();
    let err = apply(&target, &objects, &ApplyOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("fledge apply --install-crds"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_after_the_pivot_applies_only_the_fledge_cluster() {
    use fledge_agent::pivot::apply::{Options as PivotOptions, Pivot};
    let Some((mgmt, target)) = cluster_for(CapiVersion::V1beta2).await else {
        return;
    };
    let Some(local) = start_or_skip(Options::default()).await else {
        return;
    };
    let local_client = local.client().await;
    install_crds(&local_client, &[core_dir(CapiVersion::V1beta2)])
        .await
        .unwrap();
    let request = case(ProviderKind::Docker, CapiVersion::V1beta2);
    let checked = load(&request);
    let (ns, name) = (checked.namespace.as_str(), checked.name.as_str());
    let bin = fledge_tests::binary("fledge");
    let fledge_apply = |request: &Path, extra: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args(["apply", request.to_str().unwrap(), "--kubeconfig"])
            .arg(&mgmt.kubeconfig)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (out, _) = fledge_apply(&request, &[]);
    assert!(
        out.contains("cluster.cluster.x-k8s.io/docker-demo created"),
        "{out}"
    );

    let progress = |_: &fledge_agent::pivot::apply::Event| {};
    Pivot::new(
        &target.client,
        &local_client,
        ns,
        name,
        PivotOptions::default(),
        &progress,
    )
    .run()
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let clusters = |c: &kube::Client| {
        let c = c.clone();
        async move {
            let mut found = Vec::new();
            for (api_version, kind) in [
                (capi::V1BETA2.capi, "Cluster"),
                (capi::V1BETA2.kcp, "KubeadmControlPlane"),
            ] {
                let ar = capi::resource(api_version, kind);
                let api: Api<kube::api::DynamicObject> = Api::namespaced_with(c.clone(), ns, &ar);
                for o in api.list(&Default::default()).await.unwrap() {
                    found.push(format!("{kind}/{}", o.metadata.name.unwrap_or_default()));
                }
            }
            found
        }
    };
    assert!(
        clusters(&target.client).await.is_empty(),
        "the pivot left objects"
    );
    assert_eq!(clusters(&local_client).await.len(), 2);
    // Every control-plane node runs the agent: the KCP keeps its files and install command
    // (the agent's ScaledOut keeps the token Secret they name in the cluster).
    let kcps: Api<kube::api::DynamicObject> = Api::namespaced_with(
        local_client.clone(),
        ns,
        &capi::resource(capi::V1BETA2.kcp, "KubeadmControlPlane"),
    );
    let kcp = kcps
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .remove(0);
    let spec = &kcp.data["spec"]["kubeadmConfigSpec"];
    let text = spec.to_string();
    assert!(text.contains("fledge-agent-token"), "{spec:#}");
    assert!(text.contains("/etc/fledge/agent.yaml"), "{spec:#}");
    assert!(
        spec["postKubeadmCommands"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c
                .as_str()
                .is_some_and(|c| c.ends_with("install --config /etc/fledge/agent.yaml")))),
        "{spec:#}"
    );
    // The rest of the bootstrap config stays (a docker cluster: the API server's SANs; no
    // users, which CAPD cannot run).
    assert!(
        spec["clusterConfiguration"]["apiServer"]["certSANs"]
            .as_array()
            .is_some_and(|k| !k.is_empty()),
        "the rest of the bootstrap config stays: {spec:#}"
    );
    let fc: Api<FledgeCluster> = Api::namespaced(target.client.clone(), ns);
    let marker = fc.get(name).await.unwrap().status.unwrap().pivot.unwrap();
    assert_eq!(marker.state, "Complete");

    // The same request again: only the FledgeCluster, and it says why.
    let (out, err) = fledge_apply(&request, &[]);
    assert!(
        err.contains("was pivoted into its workload cluster"),
        "{err}"
    );
    assert!(
        clusters(&target.client).await.is_empty(),
        "fledge apply re-created Cluster API objects on the management plane: {out}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("fledgecluster.fledge.dev/docker-demo"),
        "{out}"
    );
    // A new generation (day-2 change) still reaches the FledgeCluster.
    let before = fc.get(name).await.unwrap().metadata.generation;
    let mut changed = std::fs::read_to_string(&request).unwrap();
    changed = changed.replace("replicas: 1\n      machine", "replicas: 2\n      machine");
    let dir = tempfile::tempdir().unwrap();
    let changed_path = dir.path().join("input.yaml");
    std::fs::write(&changed_path, changed).unwrap();
    fledge_apply(&changed_path, &[]);
    assert!(fc.get(name).await.unwrap().metadata.generation > before);
    assert!(clusters(&target.client).await.is_empty());
    // The explicit override applies everything.
    let (out, _) = fledge_apply(&request, &["--force-management-objects"]);
    assert!(
        out.contains("cluster.cluster.x-k8s.io/docker-demo created"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_cluster_in_a_namespace_is_refused_unless_allowed() {
    let Some((mgmt, target)) = cluster_for(CapiVersion::V1beta2).await else {
        return;
    };
    let bin = fledge_tests::binary("fledge");
    let request = case(ProviderKind::Docker, CapiVersion::V1beta2);
    let dir = tempfile::tempdir().unwrap();
    let second = dir.path().join("second.yaml");
    let text = std::fs::read_to_string(&request).unwrap();
    assert!(text.contains("name: docker-demo\n"));
    std::fs::write(
        &second,
        text.replace("name: docker-demo\n", "name: docker-two\n"),
    )
    .unwrap();
    let run = |path: &Path, extra: &[&str]| {
        std::process::Command::new(&bin)
            .args(["apply", path.to_str().unwrap(), "--kubeconfig"])
            .arg(&mgmt.kubeconfig)
            .args(extra)
            .output()
            .unwrap()
    };
    let first = run(&request, &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // Applying the same cluster again is fine; another one in its namespace is not.
    assert!(run(&request, &[]).status.success());
    let out = run(&second, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("namespace team-docker already holds cluster(s) docker-demo")
            && err.contains("--allow-shared-namespace"),
        "{err}"
    );
    let fc: Api<FledgeCluster> = Api::namespaced(target.client.clone(), "team-docker");
    assert!(
        fc.get_opt("docker-two").await.unwrap().is_none(),
        "written anyway"
    );
    let out = run(&second, &["--allow-shared-namespace"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fc.get_opt("docker-two").await.unwrap().is_some());
}

/// kube-vip's manifest in the KubeadmControlPlane's files (vSphere), as a `kubeadm join` node
/// and, after the rendered pre-kubeadm command ran, as the `kubeadm init` node sees it; and in
/// the seed path's user-data. Each is a Pod the API server accepts in kube-system.
#[tokio::test(flavor = "multi_thread")]
async fn kube_vips_static_pod_is_a_valid_pod_as_joined_as_initialized_and_in_the_seed() {
    let Some((_c, target)) = cluster_for(CapiVersion::V1beta2).await else {
        return;
    };
    // No controller manager runs here to create kube-system's default ServiceAccount, which
    // the API server's admission wants for any Pod (a kubelet's mirror pods are exempt).
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(target.client.clone(), "kube-system");
    let mut sa = k8s_openapi::api::core::v1::ServiceAccount::default();
    sa.metadata.name = Some("default".into());
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let opts = ApplyOptions {
        dry_run: true,
        ..Default::default()
    };
    let templates = Templates::embedded();
    let mut checked = 0;
    for capi in [CapiVersion::V1beta2, CapiVersion::V1beta1] {
        let case = load(&case(ProviderKind::Vsphere, capi));
        let kcp = management::objects(&case, &templates)
            .unwrap()
            .into_iter()
            .find(|o| o["kind"] == "KubeadmControlPlane")
            .unwrap();
        let spec = &kcp["spec"]["kubeadmConfigSpec"];
        let file = |path: &str| {
            spec["files"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["path"] == path)
                .unwrap_or_else(|| panic!("{}: no file {path} in the KCP", case.name))["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let joined = file(management::paths::KUBE_VIP_MANIFEST);
        assert_eq!(
            file(management::paths::KUBE_VIP_HOSTS),
            "127.0.0.1 localhost kubernetes\n"
        );
        // The pre-kubeadm command, run by a shell on a copy, with its paths moved into a
        // temporary directory; once without and once with kubeadm init's configuration.
        let command = spec["preKubeadmCommands"][0].as_str().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("kube-vip.yaml");
        let init_config = dir.path().join("kubeadm.yaml");
        let local = command
            .replace(
                management::paths::KUBE_VIP_MANIFEST,
                manifest.to_str().unwrap(),
            )
            .replace(
                management::paths::CABPK_INIT_CONFIG,
                init_config.to_str().unwrap(),
            );
        let run = |label: &str| {
            let out = std::process::Command::new("sh")
                .args(["-c", &local])
                .output()
                .unwrap();
            assert!(out.status.success(), "{label}: {out:?}");
            std::fs::read_to_string(&manifest).unwrap()
        };
        std::fs::write(&manifest, &joined).unwrap();
        assert_eq!(run("join"), joined, "a joining node keeps admin.conf");
        std::fs::write(&init_config, "kind: InitConfiguration\n").unwrap();
        let initialized = run("init");
        let seed =
            fledge_generator::cloudinit::render(&case, &templates, &Default::default(), usize::MAX)
                .unwrap();
        let user_data = fledge_generator::yaml::parse_documents(&seed.user_data).unwrap();
        let seeded = user_data[0]["write_files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == management::paths::KUBE_VIP_MANIFEST)
            .expect("kube-vip in the seed's write_files")["content"]
            .as_str()
            .unwrap()
            .to_string();
        for (label, text, kubeconfig) in [
            ("joined", &joined, management::paths::ADMIN_KUBECONFIG),
            (
                "initialized",
                &initialized,
                management::paths::SUPER_ADMIN_KUBECONFIG,
            ),
            ("seed", &seeded, management::paths::SUPER_ADMIN_KUBECONFIG),
        ] {
            let pod = fledge_generator::yaml::parse_documents(text)
                .unwrap()
                .remove(0);
            assert_eq!(
                pod["spec"]["volumes"][0]["hostPath"]["path"], kubeconfig,
                "{}: {label}",
                case.name
            );
            assert_eq!(
                pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
                management::paths::ADMIN_KUBECONFIG,
                "{}: {label}: kube-vip reads the file at admin.conf's path in its container",
                case.name
            );
            let env = &pod["spec"]["containers"][0]["env"];
            assert_eq!(
                env[0],
                serde_json::json!({"name": "address", "value": "10.0.0.100"})
            );
            let results = apply(&target, &[pod], &opts, |_| {})
                .await
                .unwrap_or_else(|e| panic!("{}: {label}: {e:#?}", case.name));
            assert_eq!(results[0].outcome, Outcome::Created, "{label}");
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}

/// `fledge apply --wait`, as a user runs it: CP-A's node comes up and no agent reports, so the
/// wait fails after `--agent-grace` saying what to check (an image without fledge-agent would
/// otherwise leave a one-node cluster in silence); then, once an agent has reported on the
/// FledgeCluster's status, the wait ends successfully.
#[tokio::test(flavor = "multi_thread")]
async fn apply_wait_reports_a_silent_cp_a_and_ends_when_the_agent_reports() {
    let Some((c, target)) = cluster_for(CapiVersion::V1beta2).await else {
        return;
    };
    let request = case(ProviderKind::Docker, CapiVersion::V1beta2);
    let checked = load(&request);
    let ns = checked.namespace.as_str();
    let bin = fledge_tests::binary("fledge");
    let spawn = |grace: &str| {
        std::process::Command::new(&bin)
            .args([
                "apply",
                request.to_str().unwrap(),
                "--install-crds",
                "--wait=90s",
            ])
            .arg(format!("--agent-grace={grace}"))
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Refused before anything is applied.
    let out = std::process::Command::new(&bin)
        .args([
            "apply",
            request.to_str().unwrap(),
            "--wait",
            "--dry-run=server",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be combined with --dry-run"));

    let silent = spawn("3s");
    // CP-A's Machine, as CAPI on the management plane records it once the node registered.
    let start = Instant::now();
    loop {
        let namespaces: Api<Namespace> = Api::all(target.client.clone());
        if namespaces.get_opt(ns).await.unwrap().is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "fledge apply created no namespace"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    capi::create(
        &target.client,
        ns,
        serde_json::json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "docker-demo-control-plane-x7k2p",
                "labels": {"cluster.x-k8s.io/cluster-name": "docker-demo", "cluster.x-k8s.io/control-plane": ""}},
            "spec": {"clusterName": "docker-demo", "bootstrap": {"dataSecretName": "cp-a-bootstrap"},
                "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DockerMachine", "name": "cp-a"}}}),
        &[],
        Some(serde_json::json!({"phase": "Running", "nodeRef": {"name": "docker-demo-cp-a"}})),
    )
    .await;
    let out = silent.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("waiting for fledge-agent on CP-A: Machine docker-demo-control-plane-x7k2p has node docker-demo-cp-a")
            && said.contains("CP-A's node docker-demo-cp-a (Machine docker-demo-control-plane-x7k2p) has been up for ")
            && said.contains("no fledge-agent has reported")
            && said.contains("/usr/local/bin/fledge-agent"),
        "{said}"
    );

    // An agent reports: the wait ends.
    let reporting = spawn("5m");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fc: Api<kube::api::DynamicObject> = Api::namespaced_with(
        target.client.clone(),
        ns,
        &kube::api::ApiResource {
            group: "fledge.dev".into(),
            version: "v1alpha1".into(),
            api_version: "fledge.dev/v1alpha1".into(),
            kind: "FledgeCluster".into(),
            plural: "fledgeclusters".into(),
        },
    );
    fc.patch_status(
        "docker-demo",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"lastSeen": "2026-12-07T12:00:00Z", "phase": "ProvidersInstalled"}})),
    )
    .await
    .unwrap();
    let out = reporting.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("fledge-agent reported (phase ProvidersInstalled)"),
        "{said}"
    );
}

/// The agent's access is revoked with its FledgeCluster (issue 28): `fledge apply` makes the
/// FledgeCluster the owner of the agent's ServiceAccount, Roles, RoleBindings and token Secret,
/// and deleting it (once the agent released its finalizer) lets the garbage collector delete
/// them. The cluster-scoped ClusterRole cannot have a namespaced owner and stays.
#[tokio::test(flavor = "multi_thread")]
async fn the_agents_access_is_owned_by_its_fledge_cluster_and_goes_with_it() {
    let Some(c) = start_or_skip(Options {
        controller_manager: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let client = c.client().await;
    let dirs = dirs_with_providers(CapiVersion::V1beta2);
    install_crds(&client, &dirs).await.unwrap();
    let request = case(ProviderKind::Docker, CapiVersion::V1beta2);
    let checked = load(&request);
    let ns = checked.namespace.as_str();
    let out = std::process::Command::new(fledge_tests::binary("fledge"))
        .args([
            "apply",
            request.to_str().unwrap(),
            "--install-crds",
            "--kubeconfig",
        ])
        .arg(&c.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fc: Api<FledgeCluster> = Api::namespaced(client.clone(), ns);
    let uid = fc
        .get(checked.name.as_str())
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let names = management::Names::new(checked.name.as_str());
    let access = [
        ("v1", "ServiceAccount", names.agent.clone()),
        ("rbac.authorization.k8s.io/v1", "Role", names.agent.clone()),
        (
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            names.agent.clone(),
        ),
        (
            "rbac.authorization.k8s.io/v1",
            "Role",
            names.agent_move.clone(),
        ),
        (
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            names.agent_move.clone(),
        ),
        ("v1", "Secret", names.agent_token.clone()),
    ];
    let get = |api_version: &str, kind: &str, name: &str| {
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &capi::resource(api_version, kind));
        let name = name.to_string();
        async move { api.get_opt(&name).await.unwrap() }
    };
    for (v, kind, name) in &access {
        let o = get(v, kind, name)
            .await
            .unwrap_or_else(|| panic!("{kind}/{name}"));
        let owners = o.metadata.owner_references.unwrap_or_default();
        assert!(
            owners
                .iter()
                .any(|r| r.kind == "FledgeCluster" && r.uid == uid),
            "{kind}/{name}: {owners:?}"
        );
    }
    fc.delete(checked.name.as_str(), &Default::default())
        .await
        .unwrap();
    let start = Instant::now();
    for (v, kind, name) in &access {
        while get(v, kind, name).await.is_some() {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "{kind}/{name} outlived its FledgeCluster"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let role: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    assert!(
        role.get_opt(&management::agent_cluster_role(ns, checked.name.as_str()))
            .await
            .unwrap()
            .is_some()
    );
}
