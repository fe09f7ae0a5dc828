//! Issue 12: one fledge-agent process, configured as cloud-init configures it, takes a cluster
//! from "CP-A only" to "scaled-out objects in the local cluster" by itself, against two real
//! API servers: a management plane holding fledge's rendered objects (the agent reaches it with
//! the rendered scoped Role), and a local cluster running the real CAPI v1.13.5 managers.
//!
//! The providers come from a baked directory in clusterctl's local-repository layout, built
//! here from the CAPI module's own files: the CRDs and webhook configurations as the harness
//! serves them (the managers run as processes on loopback, not as pods), the upstream manager
//! Deployments (with their `${VAR:=default}` arguments) and the upstream `metadata.yaml`.
//! cert-manager's release manifests are not in the module cache: its component here is a
//! Namespace and a Deployment without tolerations, like cert-manager's own. No kubelet or
//! scheduler runs, so the test plays them: it marks every Deployment Available once it exists.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fledge_agent::state::cache;
use fledge_agent::state::clusterstate;
use fledge_agent::state::journal::{Journal, Phase};
use fledge_generator::management;
use fledge_generator::render::Templates;
use fledge_generator::spec;
use fledge_generator::ssa::{ApplyOptions, apply};
use fledge_generator::target::client_from_kubeconfig;
use fledge_tests::capi;
use fledge_tests::cluster::{Options, TestCluster, start_or_skip};
use fledge_tests::install::{clusterctl_inventory, install_crds, install_fledge_crds};
use fledge_tests::workspace_root;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

const NS: &str = "team-docker";
const NAME: &str = "docker-demo";
/// The request's `infrastructure.variablesSecret`, and the one variable it holds.
const VARIABLES_SECRET: &str = "docker-provider-variables";
const CREDENTIALS_VARIABLE: &str = "FLEDGE_TEST_CREDENTIALS";
const CREDENTIALS: &str = "test-credential-7f3a9c-only-in-the-secret";

fn api(client: &kube::Client, api_version: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &capi::resource(api_version, kind))
}

/// An object as a components.yaml carries it: no server-set metadata, no status.
fn as_shipped(mut v: Value) -> Value {
    let meta = v["metadata"].clone();
    let mut m = json!({"name": meta["name"]});
    for k in ["namespace", "labels", "annotations"] {
        if !meta[k].is_null() {
            m[k] = meta[k].clone();
        }
    }
    v["metadata"] = m;
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    v
}

async fn list_labelled(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    label: &str,
) -> Vec<Value> {
    let ar = capi::resource(api_version, kind);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let lp = ListParams::default().labels(&format!("cluster.x-k8s.io/provider={label}"));
    api.list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| {
            let mut v = serde_json::to_value(&o).unwrap();
            v["apiVersion"] = json!(api_version);
            v["kind"] = json!(kind);
            as_shipped(v)
        })
        .collect()
}

fn write_docs(path: &Path, docs: &[Value]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, fledge_generator::render::yaml::documents(docs)).unwrap();
}

/// The baked providers directory (see the module comment).
async fn bake_providers(local: &kube::Client, dir: &Path) {
    let root = fledge_tests::managers::module_root().unwrap();
    let metadata = std::fs::read(root.join("metadata.yaml")).unwrap();
    let version = root
        .file_name()
        .unwrap()
        .to_string_lossy()
        .rsplit_once('@')
        .unwrap()
        .1
        .to_string();
    let manager: Value = serde_norway::from_str(
        &std::fs::read_to_string(root.join("config/manager/manager.yaml")).unwrap(),
    )
    .unwrap();
    for (label, config, prefix, ns) in [
        ("cluster-api", "config", "capi-", "capi-system"),
        (
            "bootstrap-kubeadm",
            "bootstrap/kubeadm/config",
            "capi-kubeadm-bootstrap-",
            "capi-kubeadm-bootstrap-system",
        ),
        (
            "control-plane-kubeadm",
            "controlplane/kubeadm/config",
            "capi-kubeadm-control-plane-",
            "capi-kubeadm-control-plane-system",
        ),
    ] {
        let mut docs =
            vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})];
        docs.extend(
            list_labelled(
                local,
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                label,
            )
            .await,
        );
        for kind in [
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ] {
            docs.extend(list_labelled(local, "admissionregistration.k8s.io/v1", kind, label).await);
        }
        // The provider's own manager Deployment (CABPK's and KCP's have the same shape).
        let own: Value = serde_norway::from_str(
            &std::fs::read_to_string(root.join(config).join("manager/manager.yaml"))
                .unwrap_or_else(|_| serde_norway::to_string(&manager).unwrap()),
        )
        .unwrap();
        let mut d = own;
        d["metadata"]["name"] = json!(format!(
            "{prefix}{}",
            d["metadata"]["name"].as_str().unwrap()
        ));
        d["metadata"]["namespace"] = json!(ns);
        docs.push(d);
        assert!(
            docs.iter()
                .filter(|d| d["kind"] == "CustomResourceDefinition")
                .count()
                > 0,
            "{label}: the harness installed no CRDs labelled for it"
        );
        let at = dir.join(label).join(&version);
        write_docs(&at.join("components.yaml"), &docs);
        std::fs::write(at.join("metadata.yaml"), &metadata).unwrap();
    }
    // The Dev (docker) infrastructure provider: its CRDs from the shared upstream set; no
    // manager runs for it (the test is that provider).
    let crds_dir = fledge_tests::crds::crds_dir().join("cluster-api/v1.13.5");
    let mut docs =
        vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "capd-system"}})];
    let mut files: Vec<PathBuf> = std::fs::read_dir(&crds_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("infrastructure.cluster.x-k8s.io_d")
        })
        .collect();
    files.sort();
    for f in files {
        // With the contract labels CAPD's release gives them (CAPI reads the served version
        // for a contract from them).
        let crd = serde_norway::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        docs.push(fledge_tests::install::clusterctl_labels(
            crd,
            "infrastructure-docker",
        ));
    }
    let mut d = manager.clone();
    d["metadata"]["name"] = json!("capd-controller-manager");
    d["metadata"]["namespace"] = json!("capd-system");
    docs.push(d);
    // A manager credential as the cloud providers' components carry theirs (CAPA's
    // `capa-manager-bootstrap-credentials`): a required variable, which the agent takes from the
    // request's variablesSecret on the management plane.
    docs.push(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "capd-manager-bootstrap-credentials", "namespace": "capd-system"},
        "type": "Opaque", "stringData": {"credentials": format!("${{{CREDENTIALS_VARIABLE}}}")}}));
    let at = dir.join("infrastructure-docker").join(&version);
    write_docs(&at.join("components.yaml"), &docs);
    std::fs::write(at.join("metadata.yaml"), &metadata).unwrap();
    // cert-manager.
    let docs = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cert-manager"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "cert-manager", "namespace": "cert-manager"},
            "spec": {"selector": {"matchLabels": {"app": "cert-manager"}},
                "template": {"metadata": {"labels": {"app": "cert-manager"}},
                    "spec": {"containers": [{"name": "cert-manager-controller",
                        "image": "cert-manager-controller:${CERT_MANAGER_TAG:=v1.18.2}"}]}}}}),
    ];
    write_docs(&dir.join("cert-manager/v1.18.2/components.yaml"), &docs);
}

/// Plays the kube-controller-manager, scheduler and kubelet for Deployments: each one that
/// exists is marked Available. Stops when the returned handle is dropped (aborted).
fn play_kubelet(local: kube::Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Deployment> = Api::all(local.clone());
        loop {
            if let Ok(list) = api.list(&Default::default()).await {
                for d in list.items {
                    let ns = d.metadata.namespace.clone().unwrap_or_default();
                    let name = d.metadata.name.clone().unwrap_or_default();
                    let available = d
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter()
                                .any(|x| x.type_ == "Available" && x.status == "True")
                        });
                    if available {
                        continue;
                    }
                    let status = json!({"status": {"observedGeneration": d.metadata.generation,
                        "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1,
                        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                            "message": "played by the test", "lastUpdateTime": "2026-01-01T00:00:00Z",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
                    let nsapi: Api<Deployment> = Api::namespaced(local.clone(), &ns);
                    let _ = nsapi
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

struct Agent {
    child: Child,
}

impl Agent {
    fn start(config: &Path, log: &Path) -> Agent {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(fledge_tests::binary("fledge-agent"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Agent { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Serves `dir`'s files over plain HTTP on loopback (a release's download directory); returns
/// the base URL.
async fn serve_release(dir: &Path) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/releases/v1.13.5/", l.local_addr().unwrap());
    let dir = dir.to_path_buf();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let dir = dir.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("");
                let name = path.rsplit('/').next().unwrap_or("");
                let body = std::fs::read(dir.join(name))
                    .ok()
                    .filter(|_| !name.is_empty());
                let head = match &body {
                    Some(b) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        b.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .into()
                    }
                };
                let _ = s.write_all(head.as_bytes()).await;
                if let Some(b) = body {
                    let _ = s.write_all(&b).await;
                }
            });
        }
    });
    (url, task)
}

/// The scale-out in the local cluster: KCP at 3 replicas with the agent's files and the
/// Secret they name, the worker MachineDeployment at 2. Returns both.
async fn scaled_out(lc: &kube::Client) -> (DynamicObject, DynamicObject) {
    let kcp = api(
        lc,
        "controlplane.cluster.x-k8s.io/v1beta2",
        "KubeadmControlPlane",
    )
    .get(&format!("{NAME}-control-plane"))
    .await
    .unwrap();
    assert_eq!(kcp.data["spec"]["replicas"], 3);
    // Every control-plane node runs the agent: the KCP keeps its files, and the Secret they
    // name is in the cluster (what CABPK here reads for each machine KCP adds).
    let spec = kcp.data["spec"]["kubeadmConfigSpec"].to_string();
    assert!(
        spec.contains("/etc/fledge/agent.yaml")
            && spec.contains(&format!("{NAME}-fledge-agent-token")),
        "{spec}"
    );
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(lc.clone(), NS)
        .get(&format!("{NAME}-fledge-agent-token"))
        .await
        .unwrap();
    let data = secret.data.unwrap();
    assert!(
        !data["token"].0.is_empty()
            && String::from_utf8_lossy(&data["ca.crt"].0).contains("BEGIN CERTIFICATE"),
        "the agent's Secret holds its token and CA"
    );
    let md = api(lc, "cluster.x-k8s.io/v1beta2", "MachineDeployment")
        .get(&format!("{NAME}-md-0"))
        .await
        .unwrap();
    assert_eq!(md.data["spec"]["replicas"], 2);
    (kcp, md)
}

/// The two clusters and a node root as cloud-init leaves it on CP-A.
struct Fixture {
    mgmt: TestCluster,
    local: TestCluster,
    root: tempfile::TempDir,
    config: PathBuf,
    metrics: String,
    /// The request, as applied.
    checked: spec::CheckedCluster,
    /// Serves the release the infrastructure provider is fetched from.
    _release: (tokio::task::JoinHandle<()>, tempfile::TempDir),
}

async fn fixture() -> Option<Fixture> {
    let local = fledge_tests::managers::start_with_managers_or_skip().await?;
    let mgmt = start_or_skip(Options::default()).await?;
    let mc = mgmt.client().await;
    install_fledge_crds(&mc).await.unwrap();
    install_crds(&mc, &["cluster-api/v1.13.5"]).await.unwrap();
    // The request: three control-plane machines and two workers.
    let mut checked =
        spec::load_request(&workspace_root().join("tests/cases/docker-v1beta2/input.yaml"))
            .unwrap();
    checked.spec.control_plane.replicas = 3;
    checked.spec.workers[0].replicas = 2;
    // One inline add-on layer (the example's layer points at a URL that does not resolve).
    let hello = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fledge-hello, namespace: default}\ndata: {k: v}\n";
    let sha = fledge_agent::clusterctl::fetch::hex(hello.as_bytes());
    checked.spec.profile = Some(spec::Profile {
        core_layers: Vec::new(),
        name: Some("base".into()),
        layers: vec![spec::Layer {
            name: "hello".into(),
            manifests: vec![spec::Manifest {
                name: "hello".into(),
                version: "v1".into(),
                url: None,
                inline: Some(hello.into()),
                sha256: sha,
            }],
            timeout_seconds: None,
        }],
        cluster_profile_ref: None,
    });
    checked.spec.infrastructure.variables_secret = Some(VARIABLES_SECRET.into());
    let objects = management::objects(&checked, &Templates::embedded()).unwrap();
    let target = client_from_kubeconfig(Some(&mgmt.kubeconfig))
        .await
        .unwrap();
    apply(&target, &objects, &ApplyOptions::default(), |_| {})
        .await
        .unwrap();
    // The providers' variables, created by the user beside the request.
    let variables: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": VARIABLES_SECRET, "namespace": NS},
        "stringData": {CREDENTIALS_VARIABLE: CREDENTIALS}}))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(mc.clone(), NS)
        .create(&Default::default(), &variables)
        .await
        .unwrap();
    // The agent's identity: the rendered Roles and ClusterRole (the reads an unpivot checks
    // before writing), bound to the test user whose token the node holds.
    apply(
        &target,
        &fledge_tests::access::for_test_user(&objects),
        &ApplyOptions::default(),
        |_| {},
    )
    .await
    .unwrap();
    // clusterctl init's inventory, at the versions the agent installs locally.
    clusterctl_inventory(&mc, "v1.13.5").await.unwrap();
    // CP-A is up: the management plane's KCP reports the control plane initialized (no CAPI
    // controller runs on this management plane; the test plays it).
    api(
        &mc,
        "controlplane.cluster.x-k8s.io/v1beta2",
        "KubeadmControlPlane",
    )
    .patch_status(
        &format!("{NAME}-control-plane"),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"initialization": {"controlPlaneInitialized": true}}})),
    )
    .await
    .unwrap();

    // CP-A's bootstrap data as CABPK renders it: user-data with the agent's token inline.
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(mc.clone(), NS)
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": format!("{NAME}-control-plane-bootdata"),
                    "labels": {"cluster.x-k8s.io/cluster-name": NAME}},
                "type": "cluster.x-k8s.io/secret",
                "stringData": {"format": "cloud-config", "value": format!(
                    "#cloud-config\nwrite_files:\n- path: /etc/fledge/management/token\n  content: {}\n",
                    mgmt.user_token)},
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc/fledge/management")).unwrap();
    std::fs::create_dir_all(r.join("etc/kubernetes")).unwrap();
    std::fs::write(r.join("etc/fledge/management/token"), &mgmt.user_token).unwrap();
    std::fs::write(r.join("etc/fledge/management/ca.crt"), &mgmt.ca_pem).unwrap();
    std::fs::copy(&local.kubeconfig, r.join("etc/kubernetes/admin.conf")).unwrap();
    // Staged as a release would publish them, then baked with the image recipe.
    let staging = tempfile::tempdir().unwrap();
    bake_providers(&local.client().await, staging.path()).await;
    let mut srcs: Vec<PathBuf> = Vec::new();
    for label in std::fs::read_dir(staging.path()).unwrap() {
        for version in std::fs::read_dir(label.unwrap().path()).unwrap() {
            srcs.push(version.unwrap().path());
        }
    }
    // The infrastructure provider is not baked: the agent fetches it from a release URL
    // (served here on loopback), pinned by sha256.
    srcs.retain(|p| !p.to_string_lossy().contains("infrastructure-docker"));
    let infra = staging.path().join("infrastructure-docker/v1.13.5");
    let (release_url, server) = serve_release(&infra).await;
    let pin = |f: &str| {
        use sha2::Digest;
        let d = sha2::Sha256::digest(std::fs::read(infra.join(f)).unwrap());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let out = Command::new(workspace_root().join("images/bake-providers.sh"))
        .arg(r)
        .args(&srcs)
        .arg("--agent")
        .arg(fledge_tests::binary("fledge-agent"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "bake-providers.sh: {said}");
    assert!(
        said.contains("baked control-plane-kubeadm v1.13.5"),
        "{said}"
    );
    let images = std::fs::read_to_string(r.join("usr/share/fledge/providers/images.txt")).unwrap();
    assert!(
        images
            .lines()
            .any(|l| l == "cert-manager-controller:v1.18.2"),
        "the ${{CERT_MANAGER_TAG:=v1.18.2}} default is substituted: {images}"
    );
    let port = fledge_tests::cluster::free_port().unwrap();
    let metrics = format!("127.0.0.1:{port}");
    let p = |s: &str| r.join(s).display().to_string();
    let cfg = json!({
        "apiVersion": "fledge.dev/v1alpha1", "kind": "AgentConfig",
        "cluster": {"name": NAME, "namespace": NS},
        "management": {"server": mgmt.url, "tokenFile": p("etc/fledge/management/token"), "caFile": p("etc/fledge/management/ca.crt")},
        "stateDir": p("var/lib/fledge"),
        "metricsAddress": metrics,
        "resyncSeconds": 2,
        "backoffCapSeconds": 2,
        "localKubeconfig": p("etc/kubernetes/admin.conf"),
        "providers": {"directory": p("usr/share/fledge/providers"), "fetch": [{
            "name": "infrastructure-docker", "version": "v1.13.5", "url": release_url,
            "sha256": {"components.yaml": pin("components.yaml"), "metadata.yaml": pin("metadata.yaml")}}]},
    });
    let config = r.join("etc/fledge/agent.yaml");
    std::fs::write(&config, serde_norway::to_string(&cfg).unwrap()).unwrap();
    Some(Fixture {
        mgmt,
        local,
        root,
        config,
        metrics,
        checked,
        _release: (server, staging),
    })
}

impl Fixture {
    fn state(&self) -> PathBuf {
        self.root.path().join("var/lib/fledge")
    }
    fn log(&self) -> PathBuf {
        self.root.path().join("agent.log")
    }
    fn journal(&self) -> Journal {
        Journal::load(&self.state()).unwrap_or_default()
    }
    async fn wait_phase(&self, phase: Phase, limit: Duration) {
        let start = Instant::now();
        while !self.journal().done(phase) {
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {phase}; journal {:#?}\nagent log tail:\n{}",
                self.journal(),
                fledge_tests::cluster::tail(&self.log(), 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    async fn metric(&self, name: &str) -> f64 {
        metric_at(&self.metrics, name).await
    }

    /// A second control-plane node's agent on the same local cluster: its own configuration
    /// (node name, state directory, metrics address), the same credentials. Returns its
    /// configuration, state directory, metrics address and log.
    fn second_agent(&self, node: &str) -> (PathBuf, PathBuf, String, PathBuf) {
        let r = self.root.path();
        let mut cfg: Value =
            serde_norway::from_str(&std::fs::read_to_string(&self.config).unwrap()).unwrap();
        let state = r.join(format!("var/lib/fledge-{node}"));
        let metrics = format!("127.0.0.1:{}", fledge_tests::cluster::free_port().unwrap());
        cfg["nodeName"] = json!(node);
        cfg["stateDir"] = json!(state.display().to_string());
        cfg["metricsAddress"] = json!(metrics);
        let config = r.join(format!("etc/fledge/agent-{node}.yaml"));
        std::fs::write(&config, serde_norway::to_string(&cfg).unwrap()).unwrap();
        (config, state, metrics, r.join(format!("agent-{node}.log")))
    }

    /// The end state: the management plane keeps only the FledgeCluster and the agent's
    /// access; the local cluster holds the cluster, KCP at 3 and the MachineDeployment.
    async fn check_end_state(&self) {
        let mc = self.mgmt.client().await;
        let lc = self.local.client().await;
        for (v, kind) in [
            ("cluster.x-k8s.io/v1beta2", "Cluster"),
            (
                "controlplane.cluster.x-k8s.io/v1beta2",
                "KubeadmControlPlane",
            ),
            ("infrastructure.cluster.x-k8s.io/v1beta2", "DevCluster"),
            (
                "infrastructure.cluster.x-k8s.io/v1beta2",
                "DevMachineTemplate",
            ),
        ] {
            let left = api(&mc, v, kind)
                .list(&Default::default())
                .await
                .unwrap()
                .items;
            assert!(
                left.is_empty(),
                "{kind} left on the management plane: {left:?}"
            );
        }
        assert!(
            api(&mc, "fledge.dev/v1alpha1", "FledgeCluster")
                .get_opt(NAME)
                .await
                .unwrap()
                .is_some()
        );
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(mc.clone(), NS);
        assert!(
            sa.get_opt(&format!("{NAME}-fledge-agent"))
                .await
                .unwrap()
                .is_some()
        );

        let cluster = api(&lc, "cluster.x-k8s.io/v1beta2", "Cluster")
            .get(NAME)
            .await
            .unwrap();
        assert_ne!(
            cluster.data["spec"]["paused"], true,
            "the local Cluster is unpaused"
        );
        let (_, md) = scaled_out(&lc).await;
        let managers: Vec<String> = md
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|f| f.manager.clone())
            .collect();
        assert!(
            managers.contains(&"fledge-agent".to_string()),
            "{managers:?}"
        );
        // The templates the MachineDeployment points at (named by their content) exist.
        let spec = &md.data["spec"]["template"]["spec"];
        for (v, kind, r) in [
            (
                "bootstrap.cluster.x-k8s.io/v1beta2",
                "KubeadmConfigTemplate",
                &spec["bootstrap"]["configRef"],
            ),
            (
                "infrastructure.cluster.x-k8s.io/v1beta2",
                "DevMachineTemplate",
                &spec["infrastructureRef"],
            ),
        ] {
            let name = r["name"].as_str().unwrap();
            assert!(name.starts_with(&format!("{NAME}-md-0-")), "{name}");
            api(&lc, v, kind).get(name).await.unwrap();
        }
        // The infrastructure provider came from its release URL, verified and kept.
        assert!(
            self.state()
                .join("providers/infrastructure-docker/v1.13.5/components.yaml")
                .is_file()
        );
        // clusterctl's inventory.
        let inv: Api<DynamicObject> = Api::all_with(
            lc.clone(),
            &capi::resource("clusterctl.cluster.x-k8s.io/v1alpha3", "Provider"),
        );
        let mut names: Vec<String> = inv
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|p| {
                format!(
                    "{}/{} {} {}",
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                    p.data["type"].as_str().unwrap_or(""),
                    p.data["version"].as_str().unwrap_or("")
                )
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "capd-system/infrastructure-docker InfrastructureProvider v1.13.5",
                "capi-kubeadm-bootstrap-system/bootstrap-kubeadm BootstrapProvider v1.13.5",
                "capi-kubeadm-control-plane-system/control-plane-kubeadm ControlPlaneProvider v1.13.5",
                "capi-system/cluster-api CoreProvider v1.13.5",
            ]
        );
        // cert-manager got the control-plane toleration and clusterctl's cert-manager label.
        let deps: Api<Deployment> = Api::namespaced(lc.clone(), "cert-manager");
        let cm = deps.get("cert-manager").await.unwrap();
        let labels = cm.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("clusterctl.cluster.x-k8s.io/core")
                .map(String::as_str),
            Some("cert-manager")
        );
        let tol = cm
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .tolerations
            .unwrap_or_default();
        assert!(
            tol.iter()
                .any(|t| t.key.as_deref() == Some("node-role.kubernetes.io/control-plane")),
            "{tol:?}"
        );
        // The manager Deployment's ${VAR:=default}s were substituted in its arguments.
        let deps: Api<Deployment> = Api::namespaced(lc.clone(), "capi-system");
        let m = deps.get("capi-controller-manager").await.unwrap();
        let args =
            serde_json::to_string(&m.spec.unwrap().template.spec.unwrap().containers[0].args)
                .unwrap();
        assert!(
            args.contains("--diagnostics-address=:8443") && !args.contains("${"),
            "{args}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_agent_takes_the_cluster_from_cp_a_only_to_scaled_out() {
    let Some(f) = fixture().await else {
        return;
    };
    let kubelet = play_kubelet(f.local.client().await);
    // Built before the clock starts.
    fledge_tests::binary("fledge-agent");
    let start = Instant::now();
    let agent = Agent::start(&f.config, &f.log());
    f.wait_phase(Phase::ScaledOut, Duration::from_secs(300))
        .await;
    let took = start.elapsed();
    let mgmt_requests = f
        .metric("fledge_agent_requests_total{cluster=\"management\"}")
        .await;
    let local_requests = f
        .metric("fledge_agent_requests_total{cluster=\"local\"}")
        .await;
    eprintln!(
        "BENCH time-to-ScaledOut {:.1}s; requests: management {mgmt_requests}, local {local_requests}",
        took.as_secs_f64()
    );
    // The counters the benchmark reports are served (NaN when a line is missing).
    assert!(
        mgmt_requests > 0.0 && local_requests > 0.0,
        "request counters: management {mgmt_requests}, local {local_requests}"
    );
    f.check_end_state().await;
    // The provider's credential came from the management plane's Secret into the provider's
    // own Secret, and nowhere else: not the agent's configuration, state or log.
    let creds: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(f.local.client().await, "capd-system");
    let creds = creds
        .get("capd-manager-bootstrap-credentials")
        .await
        .unwrap();
    assert_eq!(
        creds.data.unwrap()["credentials"].0,
        CREDENTIALS.as_bytes(),
        "the provider's Secret holds the value from {VARIABLES_SECRET}"
    );
    let mut found = Vec::new();
    let mut dirs = vec![f.root.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if String::from_utf8_lossy(&std::fs::read(&p).unwrap()).contains(CREDENTIALS) {
                found.push(p);
            }
        }
    }
    assert!(found.is_empty(), "the credential is written in {found:?}");
    // The copy of CP-A's bootstrap data in the cluster carries no management token.
    let bootdata =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(f.local.client().await, NS)
            .get(&format!("{NAME}-control-plane-bootdata"))
            .await
            .unwrap();
    let value = String::from_utf8(bootdata.data.unwrap()["value"].0.clone()).unwrap();
    assert!(
        value.contains("path: /etc/fledge/management/token"),
        "{value}"
    );
    assert!(
        !value.contains(&f.mgmt.user_token),
        "the copied bootstrap data holds the token"
    );
    // The add-on layer is applied, then the agent goes on to Steady, and its first reconcile
    // finds the cluster as the scale-out left it (no field the servers defaulted reads as a
    // change).
    f.wait_phase(Phase::Steady, Duration::from_secs(60)).await;
    let steady = f.journal().entry(Phase::Steady).cloned().unwrap();
    assert!(
        steady
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("generation 1: in sync; layers: hello healthy")),
        "{steady:?}"
    );
    let cm: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(f.local.client().await, "default");
    let cm = cm.get("fledge-hello").await.unwrap();
    assert!(cm.labels().contains_key("applyset.kubernetes.io/part-of"));
    assert_eq!(
        f.metric("fledge_agent_addon_layer_healthy{layer=\"hello\",state=\"Healthy\"}")
            .await,
        1.0
    );
    // The journal recorded each phase with the generation it ran for.
    let j = f.journal();
    for p in fledge_agent::phases::RUN {
        assert_eq!(j.entry(p).unwrap().generation, Some(1), "{j:#?}");
    }
    // The status on the management plane says so.
    let mc = f.mgmt.client().await;
    let start = Instant::now();
    loop {
        let fc = api(&mc, "fledge.dev/v1alpha1", "FledgeCluster")
            .get(NAME)
            .await
            .unwrap();
        let conds = fc.data["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if conds
            .iter()
            .filter(|c| c["status"] == "True")
            .any(|c| c["type"] == "ScaledOut")
            && fc.data["status"]["phase"] == "Steady"
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no ScaledOut condition or not Steady: {:#?}",
            fc.data["status"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What the real CAPI controllers did with the MachineDeployment in the local cluster.
    let lc = f.local.client().await;
    let ms = api(&lc, "cluster.x-k8s.io/v1beta2", "MachineSet");
    let start = Instant::now();
    let sets = loop {
        let sets = ms.list(&Default::default()).await.unwrap().items;
        if !sets.is_empty() || start.elapsed() > Duration::from_secs(60) {
            break sets;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "CAPI: {} MachineSet(s): {:?}",
        sets.len(),
        sets.iter()
            .map(|s| (s.metadata.name.clone(), s.data["spec"]["replicas"].clone()))
            .collect::<Vec<_>>()
    );
    let md = api(&lc, "cluster.x-k8s.io/v1beta2", "MachineDeployment")
        .get(&format!("{NAME}-md-0"))
        .await
        .unwrap();
    let cluster = api(&lc, "cluster.x-k8s.io/v1beta2", "Cluster")
        .get(NAME)
        .await
        .unwrap();
    if sets.is_empty() {
        for m in f.local.managers() {
            eprintln!(
                "--- {}\n{}",
                m.log.display(),
                fledge_tests::cluster::tail(&m.log, 15)
            );
        }
    }
    assert_eq!(
        sets.len(),
        1,
        "the MachineDeployment controller creates one MachineSet; MachineDeployment {:#}, Cluster status {:#}\nmanager logs: {}",
        md.data["status"]["conditions"],
        cluster.data["status"],
        f.local.dir().display()
    );
    assert_eq!(sets[0].data["spec"]["replicas"], 2);
    drop(agent);
    kubelet.abort();
}

/// One line of an agent's `/metrics` (NaN when missing), or its `/healthz` body for "healthz".
async fn metric_at(address: &str, name: &str) -> f64 {
    match http_get(address, "/metrics").await {
        Some(out) => out
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN),
        None => f64::NAN,
    }
}

async fn http_get(address: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(address).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

/// Every control-plane node runs the agent and one leads (issue 28): a second node's agent on
/// the same cluster follows (does nothing, says so on /healthz and /metrics) while CP-A's agent
/// leads; when CP-A's agent dies it takes the Lease over after its duration, runs the phases
/// to Steady (each finds its work done) and then applies a later spec change.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_nodes_agent_follows_and_takes_over_when_the_leader_dies() {
    let Some(f) = fixture().await else {
        return;
    };
    let kubelet = play_kubelet(f.local.client().await);
    let mut leader = Agent::start(&f.config, &f.log());
    f.wait_phase(Phase::Steady, Duration::from_secs(300)).await;
    let (config, state, metrics, log) = f.second_agent("cp-b");
    let mut follower = Agent::start(&config, &log);
    let start = Instant::now();
    let healthz = loop {
        let h = http_get(&metrics, "/healthz").await.unwrap_or_default();
        if h.contains("follower of") {
            break h;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "cp-b does not follow: {h}\n{}",
            fledge_tests::cluster::tail(&log, 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        metric_at(&metrics, "fledge_agent_leader").await,
        0.0,
        "{healthz}"
    );
    assert_eq!(f.metric("fledge_agent_leader").await, 1.0);
    // A follower caches the spec and runs no phase: after a while its journal has none.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let j = Journal::load(&state).unwrap_or_default();
    assert!(j.done(Phase::SpecFetched), "{j:#?}");
    for p in fledge_agent::phases::RUN {
        assert!(j.entry(p).is_none(), "a follower ran {p}: {j:#?}");
    }
    let fetched_by_b = cache::load(&state).unwrap().unwrap().generation;

    // cp-b goes down with the spec it has; the spec changes, and the leader applies it and
    // keeps its state in the cluster.
    follower.kill();
    let mc = f.mgmt.client().await;
    let lc = f.local.client().await;
    set_workers(&mc, 3).await;
    wait_workers(&lc, 3, &f.log()).await;
    let start = Instant::now();
    let held = loop {
        let held = clusterstate::read(&lc).await.unwrap().map(|(h, _)| h);
        let spec = held
            .as_ref()
            .and_then(|h| h.files.get(clusterstate::SPEC))
            .map(|b| serde_norway::from_slice::<cache::CachedSpec>(b).unwrap());
        if let (Some(h), Some(s)) = (&held, spec)
            && s.generation > fetched_by_b
            && serde_json::from_slice::<Journal>(&h.files[clusterstate::JOURNAL])
                .unwrap()
                .entry(Phase::Steady)
                .is_some_and(|e| e.generation == Some(s.generation))
        {
            break held.unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the leader's state is not held in the cluster: {held:?}\n{}",
            fledge_tests::cluster::tail(&f.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // Written by the leader (this host's name: the first agent names no node).
    assert_eq!(held.holder, fledge_agent::daemon::leader::node_identity());
    let leaders = f.journal();

    // The leader dies, and cp-b comes back while the management plane is out of its reach: its
    // disk holds the older spec, the cluster the newer one.
    leader.kill();
    let killed = Instant::now();
    let mut cfg: Value =
        serde_norway::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let reachable = cfg["management"]["server"].clone();
    cfg["management"]["server"] = json!("https://127.0.0.1:1");
    std::fs::write(&config, serde_norway::to_string(&cfg).unwrap()).unwrap();
    let mut follower = Agent::start(&config, &log);
    let start = Instant::now();
    loop {
        // Never rolled back to the older spec.
        let md = api(&lc, "cluster.x-k8s.io/v1beta2", "MachineDeployment")
            .get(&format!("{NAME}-md-0"))
            .await
            .unwrap();
        assert_eq!(md.data["spec"]["replicas"], 3, "rolled back by cp-b");
        let j = Journal::load(&state).unwrap_or_default();
        if j.done(Phase::Steady) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "cp-b did not take over: {j:#?}\n{}",
            fledge_tests::cluster::tail(&log, 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = killed.elapsed();
    eprintln!(
        "BENCH leader killed -> new leader Steady {:.1}s",
        took.as_secs_f64()
    );
    assert!(
        took >= fledge_agent::daemon::leader::LEASE_DURATION,
        "took over before the Lease expired: {took:?}"
    );
    assert_eq!(metric_at(&metrics, "fledge_agent_leader").await, 1.0);
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        lc.clone(),
        fledge_agent::daemon::leader::LEASE_NAMESPACE,
    )
    .get(fledge_agent::daemon::leader::LEASE_NAME)
    .await
    .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("cp-b"));
    // cp-b resumed from the cluster's state: the leader's phases are on record as the leader
    // ran them (not run again), and its spec is the newer one.
    let taken = Journal::load(&state).unwrap();
    for p in [Phase::ProvidersInstalled, Phase::Pivoted, Phase::ScaledOut] {
        assert_eq!(
            taken.entry(p).map(|e| &e.time),
            leaders.entry(p).map(|e| &e.time),
            "{p} run again by cp-b: {taken:#?}"
        );
    }
    let spec = cache::load(&state).unwrap().unwrap();
    assert!(spec.generation > fetched_by_b, "{}", spec.generation);
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("took the cluster's copy of the agent's state"),
        "{}",
        fledge_tests::cluster::tail(&log, 40)
    );

    // With the management plane in reach again, the new leader keeps the cluster reconciling:
    // a later spec change is applied.
    follower.kill();
    cfg["management"]["server"] = reachable;
    std::fs::write(&config, serde_norway::to_string(&cfg).unwrap()).unwrap();
    let follower = Agent::start(&config, &log);
    set_workers(&mc, 4).await;
    wait_workers(&lc, 4, &log).await;
    drop(follower);
    kubelet.abort();
}

async fn set_workers(mc: &kube::Client, replicas: i64) {
    api(mc, "fledge.dev/v1alpha1", "FledgeCluster")
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
                    {"op": "replace", "path": "/spec/workers/0/replicas", "value": replicas}
                ]))
                .unwrap(),
            ),
        )
        .await
        .unwrap();
}

async fn wait_workers(lc: &kube::Client, replicas: i64, log: &Path) {
    let start = Instant::now();
    loop {
        let md = api(lc, "cluster.x-k8s.io/v1beta2", "MachineDeployment")
            .get(&format!("{NAME}-md-0"))
            .await
            .unwrap();
        if md.data["spec"]["replicas"] == replicas {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the change to {replicas} workers was not applied: {}\n{}",
            md.data["spec"],
            fledge_tests::cluster::tail(log, 40)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A point at which the test SIGKILLs the agent.
struct KillPoint {
    what: &'static str,
    reached: fn(&Journal, bool) -> bool,
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_each_phase_boundary_and_inside_each_phase_resumes_and_scale_out_needs_no_management_plane()
 {
    let Some(mut f) = fixture().await else {
        return;
    };
    let kubelet = play_kubelet(f.local.client().await);
    let lc = f.local.client().await;
    let local_cluster = api(&lc, "cluster.x-k8s.io/v1beta2", "Cluster");
    use fledge_agent::state::journal::Outcome;
    let state = |j: &Journal, p: Phase| j.entry(p).map(|e| e.outcome);
    let points = [
        KillPoint {
            what: "inside ProvidersInstalled",
            reached: |j, _| j.entry(Phase::ProvidersInstalled).is_some(),
        },
        KillPoint {
            what: "at the ProvidersInstalled/Pivoted boundary",
            reached: |j, _| j.done(Phase::ProvidersInstalled),
        },
        KillPoint {
            what: "inside Pivoted (objects already in the local cluster)",
            reached: |j, in_local| j.entry(Phase::Pivoted).is_some() && in_local,
        },
        KillPoint {
            what: "at the Pivoted/ScaledOut boundary",
            reached: |j, _| j.done(Phase::Pivoted),
        },
    ];
    let mut killed = Vec::new();
    for point in &points {
        let mut agent = Agent::start(&f.config, &f.log());
        let start = Instant::now();
        loop {
            let in_local = local_cluster.get_opt(NAME).await.ok().flatten().is_some();
            let j = f.journal();
            if (point.reached)(&j, in_local) {
                agent.kill();
                killed.push(format!(
                    "{}: ProvidersInstalled {:?}, Pivoted {:?}",
                    point.what,
                    state(&j, Phase::ProvidersInstalled),
                    state(&j, Phase::Pivoted)
                ));
                break;
            }
            assert!(
                !j.done(Phase::ScaledOut),
                "finished before the kill point {}",
                point.what
            );
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "timed out waiting for {}: {j:#?}\n{}",
                point.what,
                fledge_tests::cluster::tail(&f.log(), 40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("killed: {killed:#?}");
    let j = f.journal();
    assert!(
        j.done(Phase::Pivoted) && !j.done(Phase::ScaledOut),
        "{j:#?}"
    );
    assert_ne!(
        state(&j, Phase::ScaledOut),
        Some(Outcome::Succeeded),
        "{j:#?}"
    );
    // While the agent is down, `fledge-agent plan` says what it will do next.
    let out = Command::new(fledge_tests::binary("fledge-agent"))
        .args(["plan", "--config"])
        .arg(&f.config)
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{plan}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        plan.contains("next phase: ScaledOut (spec generation 1)"),
        "{plan}"
    );
    assert!(
        plan.contains(&format!("apply MachineDeployment {NS}/{NAME}-md-0")),
        "{plan}"
    );
    // The management plane goes away after the pivot: the scale-out needs only the local copy
    // of the spec and the local cluster.
    f.mgmt.kill_apiserver();
    let agent = Agent::start(&f.config, &f.log());
    f.wait_phase(Phase::ScaledOut, Duration::from_secs(120))
        .await;
    drop(agent);
    scaled_out(&lc).await;
    // Every object was moved exactly once: one Cluster, no duplicates by source UID.
    for (v, kind) in [
        ("cluster.x-k8s.io/v1beta2", "Cluster"),
        (
            "controlplane.cluster.x-k8s.io/v1beta2",
            "KubeadmControlPlane",
        ),
        ("infrastructure.cluster.x-k8s.io/v1beta2", "DevCluster"),
    ] {
        let n = api(&lc, v, kind)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len();
        assert_eq!(n, 1, "{kind} in the local cluster");
    }
    kubelet.abort();
}

/// The kinds of the cluster's objects, to check both sides are empty at the end.
const CLUSTER_KINDS: [(&str, &str); 9] = [
    ("cluster.x-k8s.io/v1beta2", "Cluster"),
    ("cluster.x-k8s.io/v1beta2", "MachineDeployment"),
    ("cluster.x-k8s.io/v1beta2", "MachineSet"),
    ("cluster.x-k8s.io/v1beta2", "Machine"),
    (
        "controlplane.cluster.x-k8s.io/v1beta2",
        "KubeadmControlPlane",
    ),
    ("bootstrap.cluster.x-k8s.io/v1beta2", "KubeadmConfig"),
    (
        "bootstrap.cluster.x-k8s.io/v1beta2",
        "KubeadmConfigTemplate",
    ),
    ("infrastructure.cluster.x-k8s.io/v1beta2", "DevCluster"),
    (
        "infrastructure.cluster.x-k8s.io/v1beta2",
        "DevMachineTemplate",
    ),
];

async fn cluster_objects(client: &kube::Client) -> Vec<String> {
    let mut out = Vec::new();
    for (v, kind) in CLUSTER_KINDS {
        let list =
            Api::<DynamicObject>::namespaced_with(client.clone(), NS, &capi::resource(v, kind))
                .list(&Default::default())
                .await
                .unwrap();
        for o in list.items {
            out.push(format!(
                "{kind}/{} finalizers {:?}",
                o.name_any(),
                o.finalizers()
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_fledge_cluster_moves_the_cluster_back_and_the_management_plane_deletes_it() {
    let Some(mut f) = fixture().await else {
        return;
    };
    let kubelet = play_kubelet(f.local.client().await);
    let mut agent = Agent::start(&f.config, &f.log());
    f.wait_phase(Phase::Steady, Duration::from_secs(300)).await;
    let (mc, lc) = (f.mgmt.client().await, f.local.client().await);
    let fcs = api(&mc, "fledge.dev/v1alpha1", "FledgeCluster");
    let holds = async || {
        fcs.get(NAME)
            .await
            .unwrap()
            .finalizers()
            .iter()
            .any(|x| x == fledge_agent::phases::unpivoted::FINALIZER)
    };
    assert!(
        holds().await,
        "the agent holds its finalizer from the pivot on"
    );
    // A cluster whose finalizer is missing (pivoted by an agent that did not take it, or
    // removed by hand): the agent, restarted, takes it again in Steady.
    agent.kill();
    fcs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(!holds().await);
    let _agent = Agent::start(&f.config, &f.log());
    let start = Instant::now();
    while !holds().await {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "a restarted agent in Steady did not take its finalizer again:\n{}",
            fledge_tests::cluster::tail(&f.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let local_before = cluster_objects(&lc).await;
    assert!(
        local_before.iter().any(|o| o.starts_with("Cluster/"))
            && local_before
                .iter()
                .any(|o| o.starts_with("MachineDeployment/")),
        "{local_before:#?}"
    );
    // From here on the management plane runs Cluster API, which deletes the machines, and the
    // garbage collector, which deletes what the Cluster owns (the templates).
    f.mgmt.start_capi_managers(&[]).await.unwrap();
    f.mgmt.start_controller_manager().unwrap();

    // Past the pivot the agent holds no move rights on the management plane.
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(mc.clone(), NS);
    let move_rights = management::Names::new(NAME).agent_move;
    assert!(
        bindings.get_opt(&move_rights).await.unwrap().is_none(),
        "the agent gave up its move rights"
    );

    let start = Instant::now();
    // As `fledge delete` does it: the deletion, then the move rights bound again.
    let target = client_from_kubeconfig(Some(&f.mgmt.kubeconfig))
        .await
        .unwrap();
    let objects = management::objects(&f.checked, &Templates::embedded()).unwrap();
    let deleted = fledge_generator::delete::delete(
        &target,
        &f.checked,
        &fledge_tests::access::for_test_user(&objects),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(deleted, fledge_generator::delete::Deleted::Unpivoting);
    // The FledgeCluster goes once the management plane's Cluster API is deleting the cluster.
    loop {
        if fcs.get_opt(NAME).await.unwrap().is_none() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the FledgeCluster was not released: journal {:#?}\nmanagement: {:#?}\nagent log:\n{}",
            f.journal(),
            cluster_objects(&mc).await,
            fledge_tests::cluster::tail(&f.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = start.elapsed();
    let j = f.journal();
    let unpivoted = j
        .entry(Phase::Unpivoted)
        .cloned()
        .expect("Unpivoted journaled");
    let released = j
        .entry(Phase::Released)
        .cloned()
        .expect("Released journaled");
    eprintln!(
        "deletion took {:.1}s; {}; {}",
        took.as_secs_f64(),
        unpivoted.message.unwrap_or_default(),
        released.message.unwrap_or_default()
    );
    assert!(
        j.done(Phase::Unpivoted) && j.done(Phase::Released),
        "{j:#?}"
    );
    // Released once the management plane's Cluster API was deleting the Cluster, which then
    // finishes the deletion.
    let start = Instant::now();
    loop {
        let (m, l) = (cluster_objects(&mc).await, cluster_objects(&lc).await);
        if m.is_empty() && l.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "objects left (none may be held by a finalizer): management {m:#?}, local {l:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    kubelet.abort();
}
