//! Installing CRDs into a test cluster: the upstream Cluster API CRDs as released (CEL rules,
//! defaults and all), with clusterctl's labels, and fledge's own.

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

use crate::crds::{crds_dir, own_crds, read_dir};

/// Labels a CRD as `clusterctl init` would (clusterctl's label, the provider label, and the
/// contract labels the released components carry: contract -> served versions).
pub fn clusterctl_labels(mut crd: Value, provider_label: &str) -> Value {
    let served: Vec<String> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool() == Some(true))
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    let labels = crd["metadata"]
        .as_object_mut()
        .map(|m| m.entry("labels").or_insert_with(|| json!({})));
    if let Some(Value::Object(labels)) = labels {
        labels.insert("clusterctl.cluster.x-k8s.io".into(), json!(""));
        labels.insert("cluster.x-k8s.io/provider".into(), json!(provider_label));
        let joined = served.join("_");
        for contract in ["v1beta1", "v1beta2"] {
            labels.insert(format!("cluster.x-k8s.io/{contract}"), json!(joined));
        }
    }
    crd
}

/// clusterctl's provider label for a CRD from `dir` (`<repo>/<tag>`).
pub fn provider_label(dir: &str, group: &str) -> String {
    let repo = dir.split('/').next().unwrap_or(dir);
    match (repo.strip_prefix("cluster-api-provider-"), group) {
        (Some(p), _) => format!("infrastructure-{p}"),
        (None, g) if g.starts_with("bootstrap.") => "bootstrap-kubeadm".into(),
        (None, g) if g.starts_with("controlplane.") => "control-plane-kubeadm".into(),
        (None, g) if g.starts_with("infrastructure.") => "infrastructure-docker".into(),
        _ => "cluster-api".into(),
    }
}

/// Installs the CRDs of `dirs` (relative to the CRD root) and fledge's own, and waits until
/// all are Established. Already-present CRDs are left as they are.
pub async fn install_crds(client: &kube::Client, dirs: &[&str]) -> Result<usize, String> {
    let mut crds = Vec::new();
    for d in dirs {
        for f in read_dir(&crds_dir().join(d))? {
            let group = f.crd["spec"]["group"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            crds.push(clusterctl_labels(f.crd, &provider_label(d, &group)));
        }
    }
    crds.extend(own_crds());
    create_and_wait(client, crds).await
}

/// Installs only fledge's own CRDs.
pub async fn install_fledge_crds(client: &kube::Client) -> Result<usize, String> {
    create_and_wait(client, own_crds()).await
}

/// Creates CRDs (an existing one is left alone) and waits until all are Established.
pub async fn create_and_wait(client: &kube::Client, crds: Vec<Value>) -> Result<usize, String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for crd in crds {
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let typed: CustomResourceDefinition = serde_json::from_value(crd)
            .map_err(|e| format!("CRD {name} does not deserialize: {e}"))?;
        match api.create(&PostParams::default(), &typed).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(format!("creating CRD {name}: {e}")),
        }
        names.push(name);
    }
    wait_names(&api, &names).await?;
    Ok(names.len())
}

/// Waits until the CRDs `crds` (objects, by `metadata.name`) are Established.
pub async fn wait_established(client: &kube::Client, crds: &[Value]) -> Result<(), String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let names: Vec<String> = crds
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    wait_names(&api, &names).await
}

async fn wait_names(api: &Api<CustomResourceDefinition>, names: &[String]) -> Result<(), String> {
    let start = Instant::now();
    for name in names {
        loop {
            let crd = api
                .get(name)
                .await
                .map_err(|e| format!("reading CRD {name}: {e}"))?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!("CRD {name} not Established after 60s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The CRD files under `sub` of a Go module the peers script downloaded (`which` is
/// `cluster-api` or `capv`, read from `<peers bin>/<which>.dir`), labelled as `clusterctl init`
/// labels them with `provider`.
pub fn module_crds(which: &str, subdirs: &[&str], provider: &str) -> Result<Vec<Value>, String> {
    let marker = crate::cluster::assets_bin().join(format!("{which}.dir"));
    let root = std::fs::read_to_string(&marker)
        .map_err(|e| format!("{}: {e} (run scripts/go-peers.sh)", marker.display()))?;
    let mut out = Vec::new();
    for sub in subdirs {
        let dir = std::path::Path::new(root.trim()).join(sub);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            let crd: Value =
                serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
            out.push(clusterctl_labels(crd, provider));
        }
    }
    Ok(out)
}

/// clusterctl's inventory as `clusterctl init` leaves it: its CRD and one Provider (in
/// `capi-system`) for each of the core, kubeadm bootstrap and control-plane, and docker
/// infrastructure providers, all at `version`.
pub async fn clusterctl_inventory(client: &kube::Client, version: &str) -> Result<(), String> {
    clusterctl_inventory_versions(client, version, version).await
}

/// The same, with the docker infrastructure provider at `docker_version` (CAPD is released with
/// Cluster API's test module, whose versions differ: v1.13.7 here beside v1.13.5).
pub async fn clusterctl_inventory_versions(
    client: &kube::Client,
    version: &str,
    docker_version: &str,
) -> Result<(), String> {
    use kube::api::DynamicObject;
    create_and_wait(
        client,
        vec![fledge_agent::clusterctl::inventory::inventory_crd()],
    )
    .await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": "capi-system"}}))
        .map_err(|e| e.to_string())?;
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(format!("namespace capi-system: {e}")),
    }
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "capi-system",
        &fledge_agent::clusterctl::inventory::inventory_resource(),
    );
    for (name, kind, provider) in [
        ("cluster-api", "CoreProvider", "cluster-api"),
        ("bootstrap-kubeadm", "BootstrapProvider", "kubeadm"),
        ("control-plane-kubeadm", "ControlPlaneProvider", "kubeadm"),
        ("infrastructure-docker", "InfrastructureProvider", "docker"),
    ] {
        let body = json!({"apiVersion": "clusterctl.cluster.x-k8s.io/v1alpha3", "kind": "Provider",
            "metadata": {"name": name, "labels": {"clusterctl.cluster.x-k8s.io": "", "cluster.x-k8s.io/provider": name}},
            "providerName": provider, "type": kind,
            "version": if kind == "InfrastructureProvider" { docker_version } else { version }});
        let obj = serde_json::from_value(body).map_err(|e| e.to_string())?;
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(format!("inventory {name}: {e}")),
        }
    }
    Ok(())
}
