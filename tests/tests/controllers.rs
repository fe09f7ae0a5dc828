//! The real Cluster API controllers (core, CABPK, KCP v1.13.5) before and after a pivot: the
//! management plane's controllers build the first control-plane Machine from fledge's rendered
//! objects (the test plays the infrastructure provider and the kubelet), the cluster is pivoted
//! into a local cluster that runs the same three controllers, and they must take it over
//! quietly: no webhook rejects a write, no Machine is created or deleted, the Machines'
//! resource versions become stable within 2 minutes, and KCP itself judges the Machine up to
//! date (its `UpToDate` condition), i.e. the agent files stripped by the pivot cause no rollout.
//!
//! The workload cluster of the pivoted cluster is the local apiserver itself, as on CP-A: its CA
//! is given to KCP as the cluster CA, so the kubeconfig KCP generates reaches it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine;
use fledge_generator::management;
use fledge_generator::render::Templates;
use fledge_generator::spec;
use fledge_generator::ssa::{ApplyOptions, apply};
use fledge_generator::target::client_from_kubeconfig;
use fledge_tests::capi;
use fledge_tests::cluster::TestCluster;
use fledge_tests::install::install_crds;
use fledge_tests::workspace_root;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const NS: &str = "team-docker";
const NAME: &str = "docker-demo";

async fn with_managers() -> Option<TestCluster> {
    let c = fledge_tests::managers::start_with_managers_or_skip().await?;
    // The Dev infrastructure CRDs (no controller runs for them: the test is that provider).
    install_crds(&c.client().await, &["cluster-api/v1.13.5"])
        .await
        .unwrap();
    Some(c)
}

fn api(client: &kube::Client, api_version: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &capi::resource(api_version, kind))
}

async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn machines(client: &kube::Client) -> BTreeMap<String, DynamicObject> {
    api(client, "cluster.x-k8s.io/v1beta2", "Machine")
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|m| (m.metadata.name.clone().unwrap_or_default(), m))
        .collect()
}

fn condition<'a>(obj: &'a DynamicObject, kind: &str) -> Option<&'a Value> {
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// The management plane as it is once CP-A runs: fledge's objects, KCP's first Machine.
async fn management_plane(s: &TestCluster, workload: &TestCluster) -> kube::Client {
    let sc = s.client().await;
    let checked =
        spec::load_request(&workspace_root().join("tests/cases/docker-v1beta2/input.yaml"))
            .unwrap();
    let objects = management::objects(&checked, &Templates::embedded()).unwrap();
    let target = client_from_kubeconfig(Some(&s.kubeconfig)).await.unwrap();
    apply(&target, &objects, &ApplyOptions::default(), |_| {})
        .await
        .unwrap();
    // The cluster CA is the workload (local) apiserver's CA.
    let key = std::fs::read_to_string(workload.dir().join("ca.key")).unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(sc.clone(), NS);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": format!("{NAME}-ca"),
                "labels": {"cluster.x-k8s.io/cluster-name": NAME}},
                "type": "cluster.x-k8s.io/secret",
                "data": {"tls.crt": b64(&workload.ca_pem), "tls.key": b64(&key)}}))
            .unwrap(),
        )
        .await
        .unwrap();
    // Play the infrastructure provider for the cluster.
    let port: i64 = workload.url.rsplit(':').next().unwrap().parse().unwrap();
    let dc = api(&sc, "infrastructure.cluster.x-k8s.io/v1beta2", "DevCluster");
    dc.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"controlPlaneEndpoint": {"host": "127.0.0.1", "port": port}}}),
        ),
    )
    .await
    .unwrap();
    dc.patch_status(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"initialization": {"provisioned": true}}})),
    )
    .await
    .unwrap();
    // KCP creates the first control-plane Machine.
    let m = wait_for("KCP's first Machine", Duration::from_secs(120), || {
        let sc = sc.clone();
        async move { machines(&sc).await.into_values().next() }
    })
    .await;
    let name = m.metadata.name.clone().unwrap();
    let infra = m.data["spec"]["infrastructureRef"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    // Play the infrastructure provider for the machine, and the kubelet for its Node.
    let dm = api(&sc, "infrastructure.cluster.x-k8s.io/v1beta2", "DevMachine");
    dm.patch(
        &infra,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"providerID": "dev://cp-a"}})),
    )
    .await
    .unwrap();
    dm.patch_status(
        &infra,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"initialization": {"provisioned": true},
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}})),
    )
    .await
    .unwrap();
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(workload.client().await);
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "cp-a",
                "labels": {"node-role.kubernetes.io/control-plane": ""}},
                "spec": {"providerID": "dev://cp-a"}}))
            .unwrap(),
        )
        .await
        .unwrap();
    // What `kubeadm init` leaves behind, from which KCP concludes the control plane is initialized.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(workload.client().await, "kube-system");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "kubeadm-config"},
            "data": {"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.33.4\n"}}))
        .unwrap(),
    )
    .await
    .unwrap();
    let kcp = api(
        &sc,
        "controlplane.cluster.x-k8s.io/v1beta2",
        "KubeadmControlPlane",
    );
    wait_for(
        "KCP's controlPlaneInitialized",
        Duration::from_secs(120),
        || {
            let kcp = kcp.clone();
            async move {
                let k = kcp.get(&format!("{NAME}-control-plane")).await.ok()?;
                (k.data["status"]["initialization"]["controlPlaneInitialized"] == true)
                    .then_some(())
            }
        },
    )
    .await;
    wait_for("the Machine's nodeRef", Duration::from_secs(120), || {
        let sc = sc.clone();
        let name = name.clone();
        async move {
            let m = machines(&sc).await.remove(&name)?;
            m.data["status"]["nodeRef"]["name"].as_str().map(|_| ())
        }
    })
    .await;
    sc
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mover {
    Fledge,
    Clusterctl,
}

/// Then the same fixture moved by the real `clusterctl move`, for comparison (one after the
/// other: four apiservers and twelve managers at once would blur the stability windows).
#[tokio::test(flavor = "multi_thread")]
async fn the_real_controllers_take_over_a_pivoted_cluster_without_rollout() {
    take_over(Mover::Fledge).await;
    take_over(Mover::Clusterctl).await;
}

async fn take_over(mover: Mover) {
    let Some(s) = with_managers().await else {
        return;
    };
    let Some(t) = with_managers().await else {
        return;
    };
    let sc = management_plane(&s, &t).await;
    let tc = t.client().await;
    // Quiet on the management plane first (the same check as after the pivot).
    let before = stable(&sc, "the management plane").await;
    let name = before.keys().next().unwrap().clone();
    println!("machines before: {:?}", before.keys().collect::<Vec<_>>());
    let up = |m: &DynamicObject| condition(m, "UpToDate").cloned();
    println!("UpToDate on the source: {:?}", up(&before[&name]));

    let audit_from = lines(&t.audit_log());
    let home = tempfile::tempdir().unwrap();
    let out = match mover {
        Mover::Fledge => std::process::Command::new(fledge_tests::binary("fledge-agent"))
            .args(["pivot", "--from"])
            .arg(&s.kubeconfig)
            .arg("--to")
            .arg(&t.kubeconfig)
            .args(["--namespace", NS, "--cluster", NAME])
            .output()
            .unwrap(),
        Mover::Clusterctl => {
            std::process::Command::new(fledge_tests::cluster::assets_bin().join("clusterctl"))
                .args(["move", "--kubeconfig"])
                .arg(&s.kubeconfig)
                .arg("--to-kubeconfig")
                .arg(&t.kubeconfig)
                .args(["-n", NS])
                .env("CLUSTERCTL_DISABLE_VERSIONCHECK", "true")
                .env("XDG_CONFIG_HOME", home.path())
                .env("HOME", home.path())
                .output()
                .unwrap()
        }
    };
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{mover:?}: {stdout}\n{stderr}");
    println!("{mover:?}: {stdout}");

    let after = stable(&tc, "the local cluster").await;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "no Machine created or deleted"
    );
    assert!(
        machines(&sc).await.is_empty(),
        "the source keeps no Machine"
    );
    let m = &after[&name];
    println!(
        "{mover:?}: on the target the Machine has phase {}, nodeRef {}, UpToDate {:?}",
        m.data["status"]["phase"],
        m.data["status"]["nodeRef"],
        up(m)
    );
    if mover == Mover::Fledge {
        assert_eq!(m.data["status"]["nodeRef"]["name"], "cp-a");
        assert_eq!(m.data["status"]["phase"], "Running");
        // KCP's own verdict: the Machine matches the KCP spec (the agent files the pivot
        // stripped from both sides cause no rollout).
        let up_after = up(m).expect("KCP sets UpToDate on its Machines");
        assert_eq!(up_after["status"], "True", "{up_after}");
    }
    // (clusterctl moves no status: the Machine and DevMachine arrive unprovisioned and stay so
    // until an infrastructure provider reports again, which none does here.)
    let kcp = api(
        &tc,
        "controlplane.cluster.x-k8s.io/v1beta2",
        "KubeadmControlPlane",
    )
    .get(&format!("{NAME}-control-plane"))
    .await
    .unwrap();
    assert_eq!(kcp.data["spec"]["replicas"], 1);
    // No webhook (nor anything else) rejected a write on the target after the pivot began.
    let rejected = rejections(&t.audit_log(), audit_from);
    assert!(rejected.is_empty(), "rejected writes: {rejected:#?}");
    // The verdict is the target's own: its KCP manager wrote the Machine after the pivot.
    let writers = machine_writers(&t.audit_log(), audit_from);
    println!("{mover:?}: writers of Machines on the target after the move: {writers:?}");
    // (After clusterctl move the target's KCP writes no Machine: it waits for the cluster's
    // statuses, which clusterctl does not move.)
    if mover == Mover::Fledge {
        assert!(
            writers
                .keys()
                .any(|w| w.starts_with("capi-kubeadm-control-plane-manager")),
            "{writers:?}"
        );
    }
}

fn lines(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// The completed writes (create, update, patch) in an audit log from line `from` on.
fn writes(log: &std::path::Path, from: usize) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .skip(from)
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| ["create", "update", "patch"].contains(&e["verb"].as_str().unwrap_or("")))
        .collect()
}

/// Writes into the cluster's namespace answered 4xx (other than 404/409, which the movers use
/// to probe) from line `from` on.
fn rejections(log: &std::path::Path, from: usize) -> Vec<String> {
    writes(log, from)
        .iter()
        .filter(|e| {
            e["requestURI"]
                .as_str()
                .is_some_and(|u| u.contains(&format!("/namespaces/{NS}/")))
        })
        .filter(|e| {
            let code = e["responseStatus"]["code"].as_i64().unwrap_or(0);
            (400..500).contains(&code) && code != 404 && code != 409
        })
        .map(|e| {
            format!(
                "{} {} {} by {}",
                e["verb"], e["requestURI"], e["responseStatus"], e["userAgent"]
            )
        })
        .collect()
}

/// The user agents (first word) that wrote Machines from line `from` on, with their counts.
fn machine_writers(log: &std::path::Path, from: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in writes(log, from)
        .iter()
        .filter(|e| e["objectRef"]["resource"] == "machines")
    {
        let agent = e["userAgent"]
            .as_str()
            .unwrap_or("")
            .split(' ')
            .next()
            .unwrap_or("");
        *out.entry(agent.to_string()).or_default() += 1;
    }
    out
}

/// Waits (at most 2 minutes, upstream's stability window) until the Machines' resource
/// versions stay the same for 15 s, and returns them.
async fn stable(client: &kube::Client, side: &str) -> BTreeMap<String, DynamicObject> {
    let start = Instant::now();
    let version = |m: &BTreeMap<String, DynamicObject>| -> Vec<(String, String)> {
        m.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.metadata.resource_version.clone().unwrap_or_default(),
                )
            })
            .collect()
    };
    let mut last = machines(client).await;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = machines(client).await;
        if version(&now) != version(&last) || now.is_empty() {
            since = Instant::now();
            last = now;
        } else if since.elapsed() >= Duration::from_secs(15) {
            println!(
                "{side}: Machines stable after {:.0}s",
                start.elapsed().as_secs_f64()
            );
            return now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{side}: Machine resource versions still changing after 2 minutes: {:?}",
            version(&last)
        );
    }
}
