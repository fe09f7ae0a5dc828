//! The real Cluster API managers (core, kubeadm bootstrap, kubeadm control plane) as processes
//! against a [`TestCluster`], installed the way `clusterctl init` installs a release:
//!
//! - each provider's CRDs are the `resources` of its `config/crd/kustomization.yaml`, with the
//!   kustomization's conversion-webhook `patches` merged in, its `labels` and the provider label
//!   of `config/default/kustomization.yaml`, and clusterctl's own label;
//! - its admission webhooks are `config/webhook/manifests.yaml`, renamed with the provider's
//!   `namePrefix` (so the three providers' configurations do not collide);
//! - every webhook (conversion and admission) points at `https://127.0.0.1:PORT/<path>` with the
//!   cluster CA as caBundle; each manager serves on its own port with a certificate that CA
//!   signed, and its admission configurations are registered only after its `/readyz` answers;
//! - then each provider's validating webhook is probed with a server-side dry run the webhook
//!   (not the schema) must deny, so that a test starts only once the apiserver calls them.
//!
//! The files come from the Go module cache (`<peers bin>/cluster-api.dir`, written by
//! `scripts/go-peers.sh`); nothing is copied into this repository. The processes belong to the
//! cluster and are killed by PID before its apiserver when it stops or is dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::cluster::{HarnessError, TestCluster, assets_bin, free_port, issue_cert, tail};

/// One Cluster API provider as the harness runs it.
#[derive(Debug, Clone, Copy)]
pub struct Provider {
    /// The binary built by `scripts/go-peers.sh`.
    pub binary: &'static str,
    /// clusterctl's provider label (`cluster.x-k8s.io/provider`).
    pub label: &'static str,
    /// The kustomize `namePrefix` of its release.
    pub prefix: &'static str,
    /// The namespace its release runs in (used as the manager's POD_NAMESPACE).
    pub namespace: &'static str,
    /// Its `config/` directory inside its Go module.
    pub config: &'static str,
    /// The Go module it comes from.
    pub module: Module,
}

/// The Go modules whose `config/` directories the harness installs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    /// `sigs.k8s.io/cluster-api` (`<peers bin>/cluster-api.dir`).
    ClusterApi,
    /// `sigs.k8s.io/cluster-api/test`, which holds the docker infrastructure provider (CAPD)
    /// (`<peers bin>/capd.dir`).
    ClusterApiTest,
}

impl Module {
    fn marker(self) -> &'static str {
        match self {
            Module::ClusterApi => "cluster-api.dir",
            Module::ClusterApiTest => "capd.dir",
        }
    }
}

/// Core, kubeadm bootstrap and kubeadm control plane, in clusterctl's installation order.
pub const PROVIDERS: [Provider; 3] = [
    Provider {
        binary: "capi-manager",
        label: "cluster-api",
        prefix: "capi-",
        namespace: "capi-system",
        config: "config",
        module: Module::ClusterApi,
    },
    Provider {
        binary: "capi-kubeadm-bootstrap-manager",
        label: "bootstrap-kubeadm",
        prefix: "capi-kubeadm-bootstrap-",
        namespace: "capi-kubeadm-bootstrap-system",
        config: "bootstrap/kubeadm/config",
        module: Module::ClusterApi,
    },
    Provider {
        binary: "capi-kubeadm-control-plane-manager",
        label: "control-plane-kubeadm",
        prefix: "capi-kubeadm-control-plane-",
        namespace: "capi-kubeadm-control-plane-system",
        config: "controlplane/kubeadm/config",
        module: Module::ClusterApi,
    },
];

/// The docker infrastructure provider (CAPD), which creates machines as containers of the
/// Docker engine it reaches through `/var/run/docker.sock`.
pub const CAPD: Provider = Provider {
    binary: "capd-manager",
    label: "infrastructure-docker",
    prefix: "capd-",
    namespace: "capd-system",
    config: "infrastructure/docker/config",
    module: Module::ClusterApiTest,
};

/// A running manager.
#[derive(Debug)]
pub struct Manager {
    /// Which provider.
    pub provider: Provider,
    /// Its webhook server's port.
    pub webhook_port: u16,
    /// Its health probe port (`/readyz`, `/healthz`, plain HTTP).
    pub health_port: u16,
    /// Its log file.
    pub log: PathBuf,
    pub(crate) child: std::process::Child,
}

fn io_err(what: &Path, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Command {
        what: what.display().to_string(),
        detail: e.to_string(),
    }
}

/// The cluster-api module's source directory in the Go module cache.
pub fn module_root() -> Result<PathBuf, HarnessError> {
    module_dir(Module::ClusterApi)
}

/// A module's source directory in the Go module cache.
pub fn module_dir(module: Module) -> Result<PathBuf, HarnessError> {
    let marker = assets_bin().join(module.marker());
    let root =
        std::fs::read_to_string(&marker).map_err(|_| HarnessError::MissingAsset(marker.clone()))?;
    Ok(PathBuf::from(root.trim()))
}

fn read_yaml_docs(path: &Path) -> Result<Vec<Value>, HarnessError> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let mut docs = Vec::new();
    for d in serde_norway::Deserializer::from_str(&text) {
        let v = Value::deserialize(d).map_err(|e| io_err(path, e))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// The `labels[].pairs` of a kustomization.
fn kustomize_labels(k: &Value) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for l in k["labels"].as_array().into_iter().flatten() {
        if let Some(pairs) = l["pairs"].as_object() {
            out.extend(pairs.clone());
        }
    }
    out
}

/// The labels kustomize and clusterctl give every object of `p`'s release.
fn release_labels(
    root: &Path,
    p: &Provider,
) -> Result<serde_json::Map<String, Value>, HarnessError> {
    let default = root.join(p.config).join("default/kustomization.yaml");
    let mut labels = kustomize_labels(&read_yaml_docs(&default)?.remove(0));
    labels.insert("clusterctl.cluster.x-k8s.io".into(), json!(""));
    Ok(labels)
}

fn add_labels(obj: &mut Value, labels: &serde_json::Map<String, Value>) {
    let meta = &mut obj["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    if let Some(m) = meta["labels"].as_object_mut() {
        m.extend(labels.clone());
    }
}

/// Points a webhook `clientConfig` (a service reference in the release) at `port` on loopback.
fn loopback(client_config: &mut Value, port: u16, ca_bundle: &str) {
    let path = client_config["service"]["path"]
        .as_str()
        .unwrap_or("/")
        .to_string();
    *client_config =
        json!({"url": format!("https://127.0.0.1:{port}{path}"), "caBundle": ca_bundle});
}

/// `p`'s CRDs as its release installs them, converting through `port`.
pub fn provider_crds(
    root: &Path,
    p: &Provider,
    port: u16,
    ca_bundle: &str,
) -> Result<Vec<Value>, HarnessError> {
    let crd_dir = root.join(p.config).join("crd");
    let kpath = crd_dir.join("kustomization.yaml");
    let k = read_yaml_docs(&kpath)?.remove(0);
    let mut labels = kustomize_labels(&k);
    labels.extend(release_labels(root, p)?);
    let mut conversions = std::collections::BTreeMap::new();
    for patch in k["patches"].as_array().into_iter().flatten() {
        let Some(path) = patch["path"].as_str() else {
            continue;
        };
        for doc in read_yaml_docs(&crd_dir.join(path))? {
            if let (Some(name), false) = (
                doc["metadata"]["name"].as_str(),
                doc["spec"]["conversion"].is_null(),
            ) {
                conversions.insert(name.to_string(), doc["spec"]["conversion"].clone());
            }
        }
    }
    let mut out = Vec::new();
    for res in k["resources"].as_array().into_iter().flatten() {
        let Some(path) = res.as_str() else { continue };
        for mut crd in read_yaml_docs(&crd_dir.join(path))? {
            let name = crd["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if let Some(mut conv) = conversions.remove(&name) {
                loopback(&mut conv["webhook"]["clientConfig"], port, ca_bundle);
                crd["spec"]["conversion"] = conv;
            }
            add_labels(&mut crd, &labels);
            out.push(crd);
        }
    }
    if let Some(name) = conversions.keys().next() {
        return Err(io_err(
            &kpath,
            format!("conversion patch for {name}, which is no resource"),
        ));
    }
    Ok(out)
}

/// `p`'s admission webhook configurations as its release installs them, served on `port`.
pub fn provider_webhooks(
    root: &Path,
    p: &Provider,
    port: u16,
    ca_bundle: &str,
) -> Result<Vec<Value>, HarnessError> {
    let labels = release_labels(root, p)?;
    let mut out = read_yaml_docs(&root.join(p.config).join("webhook/manifests.yaml"))?;
    for cfg in &mut out {
        let name = cfg["metadata"]["name"].as_str().unwrap_or_default();
        cfg["metadata"]["name"] = json!(format!("{}{name}", p.prefix));
        add_labels(cfg, &labels);
        for w in cfg["webhooks"].as_array_mut().into_iter().flatten() {
            loopback(&mut w["clientConfig"], port, ca_bundle);
        }
    }
    Ok(out)
}

/// Server-side apply of cluster-scoped objects (CRDs, webhook configurations) as clusterctl.
async fn apply_all(
    client: &kube::Client,
    objs: &[Value],
    ar: &ApiResource,
) -> Result<(), HarnessError> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
    let pp = PatchParams::apply("clusterctl").force();
    for o in objs {
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        api.patch(name, &pp, &Patch::Apply(o))
            .await
            .map_err(|e| HarnessError::Kube(format!("applying {} {name}: {e}", ar.kind)))?;
    }
    Ok(())
}

fn crd_resource() -> ApiResource {
    crate::capi::resource("apiextensions.k8s.io/v1", "CustomResourceDefinition")
}

fn admission_resource(kind: &str) -> ApiResource {
    crate::capi::resource("admissionregistration.k8s.io/v1", kind)
}

/// `GET /readyz` on the manager's health port answers 200.
async fn ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200")
}

/// An object each provider's validating webhook denies although its schema allows it.
fn probe(p: &Provider) -> (ApiResource, Value) {
    let obj = match p.label {
        "cluster-api" => json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "fledge-webhook-probe"},
            "spec": {"clusterName": "probe", "version": "not-a-version",
                "bootstrap": {"dataSecretName": "probe"},
                "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DevMachine", "name": "probe"}}}),
        "bootstrap-kubeadm" => {
            json!({"apiVersion": "bootstrap.cluster.x-k8s.io/v1beta2", "kind": "KubeadmConfig",
            "metadata": {"name": "fledge-webhook-probe"},
            "spec": {"files": [{"path": "/probe", "content": "x",
                "contentFrom": {"secret": {"name": "probe", "key": "probe"}}}]}})
        }
        "infrastructure-docker" => {
            json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2", "kind": "DevCluster",
            "metadata": {"name": "fledge-webhook-probe"},
            "spec": {"backend": {"docker": {"failureDomains": [{"name": "b"}, {"name": "a"}]}}}})
        }
        _ => {
            json!({"apiVersion": "controlplane.cluster.x-k8s.io/v1beta2", "kind": "KubeadmControlPlane",
            "metadata": {"name": "fledge-webhook-probe"},
            "spec": {"version": "not-a-version",
                "machineTemplate": {"spec": {"infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DevMachineTemplate", "name": "probe"}}}}})
        }
    };
    let ar = crate::capi::resource(
        obj["apiVersion"].as_str().unwrap_or_default(),
        obj["kind"].as_str().unwrap_or_default(),
    );
    (ar, obj)
}

/// Waits until the apiserver calls `p`'s validating webhook (it denies the probe).
async fn wait_for_admission(client: &kube::Client, p: &Provider) -> Result<(), String> {
    let (ar, obj) = probe(p);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let obj: DynamicObject = serde_json::from_value(obj).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(30) {
        match api.create(&pp, &obj).await {
            Err(kube::Error::Api(s)) if s.message.contains("admission webhook") => return Ok(()),
            Err(e) => last = e.to_string(),
            Ok(_) => last = "the probe was admitted".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "{}'s validating webhook did not deny its probe {} within 30s (last answer: {last})",
        p.label, ar.kind
    ))
}

impl TestCluster {
    /// Installs the core, kubeadm bootstrap and kubeadm control-plane providers (CRDs with
    /// conversion webhooks, admission webhooks) and runs their managers against this cluster;
    /// returns once every manager is ready and every provider's webhooks are called.
    /// `extra_args` are appended to each manager's flags (e.g. feature gates).
    pub async fn start_capi_managers(&mut self, extra_args: &[&str]) -> Result<(), HarnessError> {
        self.start_providers(&PROVIDERS, extra_args).await
    }

    /// Installs and runs the docker infrastructure provider (CAPD) like the others: it creates
    /// each Machine as a container of the local Docker engine.
    pub async fn start_capd(&mut self) -> Result<(), HarnessError> {
        self.start_providers(&[CAPD], &[]).await
    }

    /// Installs `providers` and runs their managers, in order.
    pub async fn start_providers(
        &mut self,
        providers: &[Provider],
        extra_args: &[&str],
    ) -> Result<(), HarnessError> {
        let mut roots = Vec::new();
        for p in providers {
            if !assets_bin().join(p.binary).is_file() {
                return Err(HarnessError::MissingAsset(assets_bin().join(p.binary)));
            }
            roots.push(module_dir(p.module)?);
        }
        let d = self.dir().to_path_buf();
        // One serving certificate for 127.0.0.1, signed by the cluster CA.
        let wh = d.join("webhook-certs");
        if !wh.join("tls.crt").is_file() {
            std::fs::create_dir_all(&wh)?;
            issue_cert(&d, "webhook-certs/tls", "capi-webhook")?;
        }
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let client = self.client().await;
        let mut ports = Vec::new();
        let mut crds = Vec::new();
        for (p, root) in providers.iter().zip(&roots) {
            let (webhook_port, health_port) = (free_port()?, free_port()?);
            crds.extend(provider_crds(root, p, webhook_port, &ca_bundle)?);
            ports.push((webhook_port, health_port));
        }
        apply_all(&client, &crds, &crd_resource()).await?;
        crate::install::wait_established(&client, &crds)
            .await
            .map_err(HarnessError::Kube)?;
        let first = self.managers.len();
        for (p, (webhook_port, health_port)) in providers.iter().zip(&ports) {
            let mut args: Vec<String> = vec![
                format!("--kubeconfig={}", self.kubeconfig.display()),
                "--leader-elect=false".into(),
                format!("--webhook-port={webhook_port}"),
                format!("--webhook-cert-dir={}", wh.display()),
                format!("--health-addr=127.0.0.1:{health_port}"),
                "--diagnostics-address=0".into(),
                "--v=2".into(),
            ];
            args.extend(extra_args.iter().map(|a| a.to_string()));
            let (child, log) =
                self.spawn_with_env(p.binary, &args, &[("POD_NAMESPACE", p.namespace)])?;
            self.managers.push(Manager {
                provider: *p,
                webhook_port: *webhook_port,
                health_port: *health_port,
                log,
                child,
            });
        }
        for (i, root) in (first..self.managers.len()).zip(&roots) {
            self.wait_manager_ready(i).await?;
            let m = &self.managers[i];
            let hooks = provider_webhooks(root, &m.provider, m.webhook_port, &ca_bundle)?;
            for kind in [
                "MutatingWebhookConfiguration",
                "ValidatingWebhookConfiguration",
            ] {
                let of_kind: Vec<Value> = hooks
                    .iter()
                    .filter(|h| h["kind"] == kind)
                    .cloned()
                    .collect();
                apply_all(&client, &of_kind, &admission_resource(kind)).await?;
            }
        }
        for i in first..self.managers.len() {
            let p = self.managers[i].provider;
            if let Err(e) = wait_for_admission(&client, &p).await {
                let m = &self.managers[i];
                return Err(HarnessError::Server {
                    component: "cluster-api manager",
                    problem: e,
                    tail: tail(&m.log, 25),
                    log: m.log.clone(),
                });
            }
        }
        Ok(())
    }

    async fn wait_manager_ready(&mut self, i: usize) -> Result<(), HarnessError> {
        let start = Instant::now();
        loop {
            let m = &mut self.managers[i];
            let exited = m.child.try_wait().ok().flatten();
            let problem = match exited {
                Some(status) => Some(format!(
                    "{} exited during start-up ({status})",
                    m.provider.binary
                )),
                None if ready(m.health_port).await => return Ok(()),
                None if start.elapsed() > Duration::from_secs(120) => {
                    Some(format!("{} was not ready after 120s", m.provider.binary))
                }
                None => None,
            };
            if let Some(problem) = problem {
                return Err(HarnessError::Server {
                    component: "cluster-api manager",
                    problem,
                    tail: tail(&m.log, 25),
                    log: m.log.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The running Cluster API managers.
    pub fn managers(&self) -> &[Manager] {
        &self.managers
    }
}

/// Starts a cluster running the three managers, or reports what is missing like
/// [`crate::cluster::start_or_skip`] (a failure under CI or without `FLEDGE_ALLOW_MISSING=1`).
pub async fn start_with_managers_or_skip() -> Option<TestCluster> {
    let mut c = crate::cluster::start_or_skip(crate::cluster::Options::default()).await?;
    match c.start_capi_managers(&[]).await {
        Ok(()) => Some(c),
        Err(HarnessError::MissingAsset(p)) => {
            crate::missing(&p.display().to_string(), "run scripts/go-peers.sh");
            None
        }
        Err(e) => panic!("cannot start the Cluster API managers: {e}"),
    }
}
