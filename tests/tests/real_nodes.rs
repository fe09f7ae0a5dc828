//! The whole order of operations on real nodes: the first cluster fledge builds.
//!
//! Nodes are privileged containers of the machine's Docker engine (`scripts/docker-engine.sh`),
//! created by the real docker infrastructure provider (CAPD) from the node image
//! `images/node-image.sh` builds (Debian bookworm, systemd, containerd, kubelet, kubeadm, the
//! control-plane images, and fledge-agent and the provider bundle baked in with
//! `images/bake-agent.sh` and `images/bake-providers.sh`), booted by real kubeadm. The
//! management plane is a real kube-apiserver with the Cluster API managers and CAPD as
//! processes, reachable from the containers on the Docker network's gateway.
//!
//! `fledge apply` a docker request → the management plane's Cluster API and CAPD create CP-A
//! (KubeadmControlPlane replicas 1) → `kubeadm init` → the baked agent starts under systemd →
//! core layer (flannel) → node Ready → cert-manager stand-in and the four providers as pods on
//! CP-A → pivot → scale-out (the worker pool; CAPD on CP-A creates its container) → `kubeadm
//! join` → add-on layer → Steady. Then a day-2 change (one more worker) that reaches Ready with
//! the management plane stopped; with it still stopped, a worker's container is killed and the
//! cluster's own MachineHealthCheck and controllers replace it (with 3 control planes, a
//! control-plane node other than CP-A too); a control-plane rollout replaces CP-A, and the agent
//! on a new control-plane node takes the leader Lease and goes on from the state held in the
//! cluster, the management plane still stopped; with it back, that agent applies a later change
//! (one worker less); then `fledge delete`: unpivot, and the management plane's CAPD removes
//! every container.
//!
//! `FLEDGE_REAL_NODES_CP` sets the control-plane size (default 1 in this test; the benchmark
//! `benches/real-nodes.sh` runs 3).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fledge_agent::state::journal::{Journal, Phase};
use fledge_tests::capi;
use fledge_tests::cluster::{Options, TestCluster, start_or_skip, tail};
use fledge_tests::install::{clusterctl_inventory_versions, install_fledge_crds};
use kube::api::{DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const NS: &str = "real-nodes";
const NAME: &str = "rn";
/// The node image images/node-image.sh builds.
const NODE_IMAGE: &str = "fledge.test/node:v1.34.4";
const KUBERNETES_VERSION: &str = "v1.34.4";
/// The Docker network CAPD puts its containers on.
const NETWORK: &str = "kind";
/// The label CAPD gives every container of a cluster.
const CLUSTER_LABEL: &str = "io.x-k8s.kind.cluster";
const POD_CIDR: &str = "192.168.0.0/16";

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The Docker engine and the images are there, or the test reports what is missing.
fn engine_ready() -> bool {
    if let Err(e) = docker(&["info", "--format", "{{.ServerVersion}}"]) {
        fledge_tests::missing(
            &format!("a running Docker engine ({e})"),
            "run scripts/docker-engine.sh",
        );
        return false;
    }
    if docker(&["image", "inspect", "--format", "{{.Id}}", NODE_IMAGE]).is_err() {
        fledge_tests::missing(
            &format!("the node image {NODE_IMAGE}"),
            "run images/node-image.sh (scripts/test.sh does)",
        );
        return false;
    }
    true
}

/// The gateway address of CAPD's network (created like kind creates it when missing): the
/// address the containers reach the management plane on.
fn network_gateway() -> IpAddr {
    if docker(&["network", "inspect", NETWORK]).is_err() {
        docker(&["network", "create", "--driver", "bridge", NETWORK])
            .unwrap_or_else(|e| panic!("cannot create the Docker network {NETWORK}: {e}"));
    }
    let gw = docker(&[
        "network",
        "inspect",
        NETWORK,
        "--format",
        "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    gw.split_whitespace()
        .find_map(|a| a.parse::<IpAddr>().ok().filter(IpAddr::is_ipv4))
        .unwrap_or_else(|| panic!("the Docker network {NETWORK} has no IPv4 gateway ({gw:?})"))
}

/// The cluster's containers (CAPD's label), by name.
fn containers() -> Vec<String> {
    docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={CLUSTER_LABEL}={NAME}"),
        "--format",
        "{{.Names}}",
    ])
    .map(|s| s.lines().map(str::to_string).collect())
    .unwrap_or_default()
}

/// Removes the cluster's containers whatever the test's outcome (they outlive the process).
struct Containers;

impl Drop for Containers {
    fn drop(&mut self) {
        if std::env::var_os("FLEDGE_KEEP_NODES").is_some() {
            eprintln!("FLEDGE_KEEP_NODES: leaving containers {:?}", containers());
            return;
        }
        for c in containers() {
            let _ = docker(&["rm", "-f", "-v", &c]);
        }
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The flannel image images/node-image.sh preloads (flannel's published name).
const FLANNEL_IMAGE: &str = "ghcr.io/flannel-io/flannel:v0.27.4";

/// The network layer's manifest (tests/real-nodes/flannel.yaml) for this cluster.
fn flannel_manifest() -> String {
    std::fs::read_to_string(fledge_tests::workspace_root().join("tests/real-nodes/flannel.yaml"))
        .expect("tests/real-nodes/flannel.yaml")
        .replace("POD_CIDR", POD_CIDR)
        .replace("FLANNEL_IMAGE", FLANNEL_IMAGE)
}

/// Writes the request (see [`request`]) to `path`.
fn write_request(path: &Path, server: &str, control_planes: u32, workers: u32) {
    let text = serde_norway::to_string(&request(server, control_planes, workers)).unwrap();
    std::fs::write(path, text).unwrap();
}

fn request(server: &str, control_planes: u32, workers: u32) -> Value {
    let flannel = flannel_manifest();
    let settings = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fledge-settings\n  namespace: kube-system\ndata:\n  built-by: fledge\n";
    json!({
        "apiVersion": "fledge.dev/v1alpha1",
        "kind": "FledgeCluster",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "kubernetesVersion": KUBERNETES_VERSION,
            "capiVersion": "v1beta2",
            "infrastructure": {"provider": "docker", "docker": {"customImage": NODE_IMAGE}},
            // Health checks that act within the test's time: a node whose kubelet stopped
            // reporting (Ready Unknown) is remediated after 30 s; Ready False keeps its default
            // (a joining node is NotReady until its CNI runs).
            "controlPlane": {"replicas": control_planes, "healthCheck": {"readyUnknownSeconds": 30}},
            "workers": [{"name": "md-0", "replicas": workers, "healthCheck": {"readyUnknownSeconds": 30}}],
            "network": {"pods": [POD_CIDR], "services": ["10.128.0.0/12"], "dnsDomain": "cluster.local"},
            "access": {"user": "capi", "sshAuthorizedKeys": [
                // A public key generated for the examples; its secret half was destroyed.
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIABoS5VYUG4MnEJlKkU7f5yFnx/jg9rz//xqycxHVSob alice@example.invalid"
            ]},
            "management": {"server": server},
            "profile": {
                "name": "real-nodes",
                "coreLayers": [{"name": "network", "manifests": [{
                    "name": "flannel", "version": "v0.27.4",
                    "sha256": sha256_hex(&flannel), "inline": flannel}]}],
                "layers": [{"name": "settings", "manifests": [{
                    "name": "settings", "version": "v1",
                    "sha256": sha256_hex(settings), "inline": settings}]}]
            }
        }
    })
}

fn fledge_apply(kubeconfig: &Path, request: &Path, extra: &[&str]) {
    let out = Command::new(fledge_tests::binary("fledge"))
        .arg("apply")
        .arg(request)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(extra)
        .output()
        .expect("run fledge");
    assert!(
        out.status.success(),
        "fledge apply failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
}

fn api(client: &kube::Client, api_version: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &capi::resource(api_version, kind))
}

fn fledge_clusters(client: &kube::Client) -> Api<DynamicObject> {
    api(client, "fledge.dev/v1alpha1", "FledgeCluster")
}

/// Everything a failed wait prints: the containers, the agent's log and journal, the
/// management plane's manager logs.
fn diagnostics(mgmt: &TestCluster) -> String {
    let mut out = format!("containers: {:?}\n", containers());
    if let Some(cp) = cp_a() {
        for (what, cmd) in [
            // First what a stalled scale-out or rollout shows (CI keeps a failure's first and
            // last lines only).
            (
                "Cluster API objects",
                "kubectl --kubeconfig /etc/kubernetes/admin.conf get cluster,kcp,md,ms,machines -A -o wide",
            ),
            (
                "conditions not True",
                "kubectl --kubeconfig /etc/kubernetes/admin.conf get kcp,md,ms,machines -A -o go-template='{{range .items}}{{$k := .kind}}{{$n := .metadata.name}}{{range .status.conditions}}{{if ne .status \"True\"}}{{$k}}/{{$n}} {{.type}}={{.status}} {{.reason}}: {{.message}}{{\"\\n\"}}{{end}}{{end}}{{end}}' | head -n 30",
            ),
            (
                "workload controllers, last lines",
                "for d in capi-system/capi-controller-manager capd-system/capd-controller-manager capi-kubeadm-control-plane-system/capi-kubeadm-control-plane-controller-manager; do echo \"== $d\"; kubectl --kubeconfig /etc/kubernetes/admin.conf logs -n ${d%/*} deploy/${d#*/} --tail 8 2>&1 | cut -c1-400; done",
            ),
            ("agent journal", "cat /var/lib/fledge/journal.json"),
            (
                "agent log",
                "journalctl -u fledge-agent --no-pager | tail -n 60",
            ),
            ("bootstrap log", "tail -n 30 /var/lib/fledge/bootstrap.log"),
            (
                "pods",
                "kubectl --kubeconfig /etc/kubernetes/admin.conf get pods -A -o wide",
            ),
            (
                "nodes",
                "kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes -o wide",
            ),
        ] {
            let got = docker(&["exec", &cp, "sh", "-c", cmd]).unwrap_or_else(|e| e);
            out.push_str(&format!("--- {what} on {cp}:\n{got}\n"));
        }
    }
    for m in mgmt.managers() {
        out.push_str(&format!(
            "--- {} (management plane), last lines:\n{}\n",
            m.provider.binary,
            tail(&m.log, 15)
        ));
    }
    out
}

/// Polls `check` every 5 s until it returns `Some`, printing `what` and the latest state
/// every 30 s; panics with the diagnostics after `limit`.
async fn wait_for<T, F, Fut>(mgmt: &TestCluster, what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => {
                eprintln!("[real-nodes] {what}: after {:.0?}", start.elapsed());
                return v;
            }
            Err(state) => state,
        };
        if start.elapsed() > limit {
            panic!(
                "{what}: not within {limit:?} (last state: {last})\n{}",
                diagnostics(mgmt)
            );
        }
        if last_print.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "[real-nodes] waiting {:.0?} for {what}: {last}",
                start.elapsed()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn phase(mgmt: &kube::Client) -> Result<String, String> {
    let fc = fledge_clusters(mgmt)
        .get(NAME)
        .await
        .map_err(|e| e.to_string())?;
    Ok(fc.data["status"]["phase"]
        .as_str()
        .unwrap_or("")
        .to_string())
}

/// A client for the workload cluster from the kubeconfig Secret Cluster API wrote.
async fn workload_client(kubeconfig: &str) -> Result<kube::Client, String> {
    let kc = Kubeconfig::from_yaml(kubeconfig).map_err(|e| e.to_string())?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    kube::Client::try_from(cfg).map_err(|e| e.to_string())
}

async fn kubeconfig_secret(client: &kube::Client) -> Result<String, String> {
    use base64::Engine;
    let s = api(client, "v1", "Secret")
        .get(&format!("{NAME}-kubeconfig"))
        .await
        .map_err(|e| e.to_string())?;
    let b64 = s.data["data"]["value"]
        .as_str()
        .ok_or("the kubeconfig Secret has no data.value")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

/// Node name → Ready, from the workload cluster.
async fn nodes(workload: &kube::Client) -> Result<Vec<(String, bool)>, String> {
    use k8s_openapi::api::core::v1::Node;
    let list = Api::<Node>::all(workload.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .map(|n| {
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (n.name_any(), ready)
        })
        .collect())
}

async fn all_ready(workload: &kube::Client, want: usize) -> Result<(), String> {
    let n = nodes(workload).await?;
    let ready = n.iter().filter(|(_, r)| *r).count();
    if n.len() == want && ready == want {
        Ok(())
    } else {
        Err(format!(
            "nodes Ready: {ready}/{} (want {want}): {n:?}",
            n.len()
        ))
    }
}

/// The agent's journal on CP-A: phase name → done.
/// The agent's journal on CP-A, read by the agent's own code from a copy.
fn journal(cp: &str) -> Result<Journal, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let state = dir.path().join("state");
    docker(&[
        "cp",
        &format!("{cp}:/var/lib/fledge"),
        &state.display().to_string(),
    ])?;
    Journal::load(&state).map_err(|e| e.to_string())
}

/// Every Machine in the workload cluster is Running with a nodeRef, and there are `want`.
async fn machines_running(workload: &kube::Client, want: usize) -> Result<(), String> {
    let machines = api(workload, "cluster.x-k8s.io/v1beta2", "Machine")
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    let not: Vec<String> = machines
        .items
        .iter()
        .filter(|m| m.data["status"]["phase"] != "Running" || m.data["status"]["nodeRef"].is_null())
        .map(|m| format!("{} {}", m.name_any(), m.data["status"]["phase"]))
        .collect();
    if machines.items.len() == want && not.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} Machines (want {want}); not Running with a nodeRef: {not:?}",
            machines.items.len()
        ))
    }
}

/// A worker's container (of the pool md-0).
fn a_worker() -> Option<String> {
    containers().into_iter().find(|c| c.contains("md-0"))
}

/// CP-A's container, the one the agent runs on: the oldest control-plane container (`docker ps`
/// lists the newest first; once KCP scaled out there are several).
fn cp_a() -> Option<String> {
    containers()
        .into_iter()
        .rev()
        .find(|c| c.contains("control-plane"))
}

fn count(name: &str) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Kills `container` (a node: its kubelet stops reporting and its Node goes Unknown) and waits
/// until the cluster is back to `want` Ready nodes without it: the health check found the node,
/// its Machine was remediated and a new one joined. Returns the time from the kill.
async fn kill_and_wait_replaced(
    mgmt: &TestCluster,
    workload: &kube::Client,
    container: &str,
    want: usize,
) -> Duration {
    docker(&["kill", container]).unwrap_or_else(|e| panic!("{e}"));
    let killed = Instant::now();
    wait_for(
        mgmt,
        &format!("{container} replaced by a new Ready node"),
        Duration::from_secs(900),
        || async {
            let n = nodes(workload).await?;
            let ready = n.iter().filter(|(_, r)| *r).count();
            if n.len() == want && ready == want && n.iter().all(|(name, _)| name != container) {
                Ok(())
            } else {
                Err(format!("nodes: {n:?}"))
            }
        },
    )
    .await;
    killed.elapsed()
}

/// Restarts the control plane's rollout in the workload cluster (KCP `spec.rollout.after` = now,
/// as `clusterctl alpha rollout restart`) and waits until CP-A's container is gone, another
/// control-plane node's agent holds the leader Lease, and the cluster is back to `want` Ready
/// nodes. Returns the takeover time (the new holder's acquireTime minus the last renewal of
/// CP-A's agent seen, polled every 5 s: an upper bound) and the new leader's container.
async fn cp_a_replaced(
    mgmt: &TestCluster,
    workload: &kube::Client,
    want: usize,
) -> (Duration, String) {
    use k8s_openapi::api::coordination::v1::Lease;
    let cp_a = cp_a().expect("CP-A's container");
    let leases: Api<Lease> = Api::namespaced(workload.clone(), "kube-system");
    let lease = || async {
        let l = leases
            .get("fledge-agent")
            .await
            .map_err(|e| format!("the leader Lease: {e}"))?;
        let spec = l.spec.unwrap_or_default();
        Ok::<_, String>((
            spec.holder_identity.unwrap_or_default(),
            spec.renew_time.map(|t| t.0),
            spec.acquire_time.map(|t| t.0),
        ))
    };
    let (holder, ..) = lease().await.expect("the leader Lease");
    assert_eq!(holder, cp_a, "CP-A's agent leads before the rollout");
    // Whole seconds, as clusterctl writes it: a machine created in the same second as a
    // fractional `after` counts as older than it and is rolled out again.
    let now =
        k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second())
            .expect("now")
            .to_string();
    api(
        workload,
        "controlplane.cluster.x-k8s.io/v1beta2",
        "KubeadmControlPlane",
    )
    .patch(
        &format!("{NAME}-control-plane"),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"rollout": {"after": now}}})),
    )
    .await
    .expect("restart the control plane's rollout");
    let started = Instant::now();
    let last_renew = std::sync::Mutex::new(None);
    let (leader, acquired) = wait_for(
        mgmt,
        "CP-A replaced and another node's agent leading",
        Duration::from_secs(1500),
        || {
            let (last_renew, cp_a) = (&last_renew, &cp_a);
            async move {
                let (holder, renewed, acquired) = lease().await?;
                if holder == *cp_a {
                    *last_renew.lock().unwrap() = renewed;
                }
                let gone = !containers().contains(cp_a);
                match acquired {
                    Some(at) if gone && !holder.is_empty() && holder != *cp_a => Ok((holder, at)),
                    _ => Err(format!(
                        "Lease held by {holder:?}; CP-A's container gone: {gone}"
                    )),
                }
            }
        },
    )
    .await;
    eprintln!(
        "[real-nodes] CP-A's container {cp_a} removed by the rollout, {leader} leading, after {:.0?}",
        started.elapsed()
    );
    let last = last_renew
        .lock()
        .unwrap()
        .expect("a renewal of CP-A's agent seen");
    let takeover = Duration::try_from(acquired.duration_since(last)).unwrap_or_default();
    wait_for(
        mgmt,
        "every node Ready after the rollout",
        Duration::from_secs(600),
        || async {
            let n = nodes(workload).await?;
            if n.len() == want && n.iter().all(|(_, r)| *r) {
                Ok(())
            } else {
                Err(format!("nodes: {n:?}"))
            }
        },
    )
    .await;
    (takeover, leader)
}

/// Kills node `container` and checks every 5 s for `window` that nothing takes its place (the
/// centralized model with its management plane stopped); at the end the node is still there and
/// not Ready. Returns the nodes as last seen.
async fn kill_and_see_nothing_replaced(
    workload: &kube::Client,
    container: &str,
    want: usize,
    window: Duration,
) -> Vec<(String, bool)> {
    docker(&["kill", container]).unwrap_or_else(|e| panic!("{e}"));
    let killed = Instant::now();
    let mut last = Vec::new();
    while killed.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(5)).await;
        last = nodes(workload)
            .await
            .unwrap_or_else(|e| panic!("nodes: {e}"));
        assert!(
            last.len() == want && last.iter().any(|(name, _)| name == container),
            "with the management plane stopped, {container} was replaced after {:.0?}: {last:?}",
            killed.elapsed()
        );
    }
    assert!(
        last.iter().any(|(name, ready)| name == container && !ready),
        "{container} still Ready {window:?} after it was killed: {last:?}"
    );
    last
}

/// The management plane: kube-apiserver (also on the Docker network's gateway), the Cluster API
/// managers and CAPD, fledge's CRDs, clusterctl's inventory, kube-controller-manager. `None`
/// when a component is missing and skipping is allowed.
async fn management_plane() -> Option<TestCluster> {
    let gateway = network_gateway();
    for c in containers() {
        let _ = docker(&["rm", "-f", "-v", &c]);
    }
    let opts = Options {
        public_address: Some(gateway),
        ..Default::default()
    };
    let mut mgmt = start_or_skip(opts).await?;
    let t0 = Instant::now();
    mgmt.start_capi_managers(&[])
        .await
        .expect("the Cluster API managers on the management plane");
    mgmt.start_capd()
        .await
        .expect("CAPD on the management plane");
    let client = mgmt.client().await;
    install_fledge_crds(&client).await.expect("fledge CRDs");
    // What `clusterctl init` leaves besides the providers: its inventory (the unpivot checks it).
    clusterctl_inventory_versions(&client, "v1.13.5", "v1.13.7")
        .await
        .expect("clusterctl's inventory");
    mgmt.start_controller_manager()
        .expect("kube-controller-manager (service-account tokens)");
    eprintln!("[real-nodes] management plane up in {:.0?}", t0.elapsed());
    Some(mgmt)
}

/// Requests the management plane's API server has answered so far (its audit log, one line per
/// request).
fn requests(mgmt: &TestCluster) -> usize {
    std::fs::read_to_string(mgmt.audit_log())
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// fledge-agent's peak resident memory (VmHWM) and CPU time (user + system) on CP-A, from
/// /proc of its service's main process (the node's systemd keeps no CPU accounting).
fn agent_usage(cp: &str) -> String {
    let script = "pid=$(systemctl show -p MainPID --value fledge-agent) && \
                  awk '/^VmHWM/ {print $2}' /proc/$pid/status && \
                  awk '{print $14, $15}' /proc/$pid/stat && getconf CLK_TCK";
    let got = docker(&["exec", cp, "sh", "-c", script]).unwrap_or_default();
    let nums: Vec<f64> = got
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums[..] {
        [kib, utime, stime, tck] if tck > 0.0 => format!(
            "fledge-agent peak RSS {:.0} MiB, CPU {:.1} s",
            kib / 1024.0,
            (utime + stime) / tck
        ),
        _ => format!("fledge-agent peak RSS/CPU: not readable ({got:?})"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_builds_itself_on_real_nodes_and_goes_away() {
    if !engine_ready() {
        return;
    }
    let _cleanup = Containers;
    let Some(mut mgmt) = management_plane().await else {
        return;
    };
    let client = mgmt.client().await;
    let control_planes = count("FLEDGE_REAL_NODES_CP");
    let server = mgmt.public_url().expect("public url");
    let dir = tempfile::tempdir().unwrap();
    let request_path: PathBuf = dir.path().join("request.yaml");
    write_request(&request_path, &server, control_planes, 1);

    // 1. fledge apply; the management plane's Cluster API and CAPD create CP-A.
    let applied = Instant::now();
    let requests_before = requests(&mgmt);
    fledge_apply(&mgmt.kubeconfig, &request_path, &["--install-crds"]);
    let kubeconfig = wait_for(
        &mgmt,
        "the workload kubeconfig",
        Duration::from_secs(300),
        || kubeconfig_secret(&client),
    )
    .await;
    let workload = workload_client(&kubeconfig).await.expect("workload client");
    wait_for(
        &mgmt,
        "CP-A Ready (core layer applied)",
        Duration::from_secs(600),
        || all_ready(&workload, 1),
    )
    .await;
    let cp_a_ready = applied.elapsed();
    wait_for(&mgmt, "the pivot", Duration::from_secs(900), || async {
        match phase(&client).await?.as_str() {
            "Pivoted" | "ScaledOut" | "AddonsReady" | "Steady" => Ok(()),
            other => Err(format!("phase {other:?}")),
        }
    })
    .await;
    let pivoted = applied.elapsed();
    let want = control_planes as usize + 1;
    wait_for(&mgmt, "every node Ready", Duration::from_secs(900), || {
        all_ready(&workload, want)
    })
    .await;
    let all = applied.elapsed();
    wait_for(&mgmt, "Steady", Duration::from_secs(600), || async {
        match phase(&client).await?.as_str() {
            "Steady" => Ok(()),
            other => Err(format!("phase {other:?}")),
        }
    })
    .await;
    eprintln!(
        "[real-nodes] decentralized: CP-A Ready {cp_a_ready:.0?}, pivot {pivoted:.0?}, all nodes Ready {all:.0?}; {} requests to the management plane; {}; nodes Ready: {want}/{want}",
        requests(&mgmt) - requests_before,
        cp_a().map(|cp| agent_usage(&cp)).unwrap_or_default()
    );

    // 2. What the cluster says about itself.
    let agent_node = cp_a().expect("CP-A's container");
    let j = journal(&agent_node).expect("the agent's journal");
    for p in [
        Phase::CoreLayers,
        Phase::ProvidersInstalled,
        Phase::Pivoted,
        Phase::ScaledOut,
        Phase::AddonsReady,
    ] {
        assert!(j.done(p), "the journal has {p:?} not done: {j:#?}");
    }
    wait_for(
        &mgmt,
        "every Machine Running with a nodeRef",
        Duration::from_secs(300),
        || machines_running(&workload, want),
    )
    .await;
    wait_for(
        &mgmt,
        "CoreDNS available (pods reach the API through the service network)",
        Duration::from_secs(300),
        || async {
            use k8s_openapi::api::apps::v1::Deployment;
            let d = Api::<Deployment>::namespaced(workload.clone(), "kube-system")
                .get("coredns")
                .await
                .map_err(|e| e.to_string())?;
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let available = d
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            if want > 0 && available == want {
                Ok(())
            } else {
                Err(format!("coredns available {available}/{want}"))
            }
        },
    )
    .await;
    {
        use k8s_openapi::api::core::v1::Pod;
        for ns in [
            "cert-manager",
            "capi-system",
            "capi-kubeadm-bootstrap-system",
            "capi-kubeadm-control-plane-system",
            "capd-system",
        ] {
            let pods = Api::<Pod>::namespaced(workload.clone(), ns)
                .list(&ListParams::default())
                .await
                .unwrap_or_else(|e| panic!("pods in {ns}: {e}"));
            assert!(!pods.items.is_empty(), "no pods in {ns} on the cluster");
            for p in &pods.items {
                let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                assert_eq!(phase.as_deref(), Some("Running"), "{ns}/{} ", p.name_any());
            }
        }
    }
    for (v, kind) in [
        ("cluster.x-k8s.io/v1beta2", "Cluster"),
        ("cluster.x-k8s.io/v1beta2", "Machine"),
        (
            "controlplane.cluster.x-k8s.io/v1beta2",
            "KubeadmControlPlane",
        ),
    ] {
        let left = api(&client, v, kind)
            .list(&ListParams::default())
            .await
            .expect("list on the management plane");
        assert!(
            left.items.is_empty(),
            "the management plane still holds {kind}s after the pivot: {:?}",
            left.items.iter().map(|o| o.name_any()).collect::<Vec<_>>()
        );
    }

    // 3. Day 2: one more worker, reaching Ready with the management plane stopped.
    let generation = fledge_clusters(&client)
        .get(NAME)
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap_or(0);
    write_request(&request_path, &server, control_planes, 2);
    fledge_apply(&mgmt.kubeconfig, &request_path, &[]);
    wait_for(
        &mgmt,
        "the agent accepting the change",
        Duration::from_secs(300),
        || async {
            let fc = fledge_clusters(&client)
                .get(NAME)
                .await
                .map_err(|e| e.to_string())?;
            let seen = fc.data["status"]["observedGeneration"]
                .as_i64()
                .unwrap_or(0);
            if seen > generation {
                Ok(())
            } else {
                Err(format!("observedGeneration {seen} (was {generation})"))
            }
        },
    )
    .await;
    // The whole management plane goes down: its API server and its controllers.
    mgmt.stop_capi_managers();
    mgmt.kill_apiserver();
    let stopped = Instant::now();
    wait_for(
        &mgmt,
        "the new worker Ready (management plane stopped)",
        Duration::from_secs(600),
        || all_ready(&workload, want + 1),
    )
    .await;
    eprintln!(
        "[real-nodes] day 2 without the management plane: new worker Ready after {:.0?}",
        stopped.elapsed()
    );

    // 4. Failed nodes are replaced with the management plane still stopped: the health checks
    // and the controllers run on the cluster itself.
    let worker = a_worker().expect("a worker's container");
    let worker_back = kill_and_wait_replaced(&mgmt, &workload, &worker, want + 1).await;
    eprintln!(
        "[real-nodes] management plane stopped: worker {worker} killed, a new worker Ready after {worker_back:.0?}"
    );
    if control_planes >= 3 {
        let agent_node = cp_a().expect("CP-A's container");
        let other = containers()
            .into_iter()
            .find(|c| c.contains("control-plane") && *c != agent_node)
            .expect("a control-plane container besides CP-A");
        let cp_back = kill_and_wait_replaced(&mgmt, &workload, &other, want + 1).await;
        wait_for(
            &mgmt,
            "every Machine Running with a nodeRef",
            Duration::from_secs(300),
            || machines_running(&workload, want + 1),
        )
        .await;
        eprintln!(
            "[real-nodes] management plane stopped: control-plane node {other} killed, the control plane back to {control_planes} Ready after {cp_back:.0?}"
        );
    }
    // 5. The agent outlives CP-A: a control-plane rollout (what `clusterctl alpha rollout
    // restart` does, and what an upgrade or the certificates' expiry bring) replaces every
    // control-plane machine, the oldest, CP-A, first. The agent on a new control-plane node
    // takes the leader Lease and goes on from the cluster-held state, the management plane
    // still stopped.
    let (takeover, leader) = cp_a_replaced(&mgmt, &workload, want + 1).await;
    eprintln!(
        "[real-nodes] management plane stopped: the agent on {leader} took the leader Lease {takeover:.1?} after CP-A's agent last renewed it"
    );
    mgmt.start_apiserver()
        .await
        .expect("restart the management plane");
    mgmt.start_capi_managers(&[])
        .await
        .expect("restart the Cluster API managers on the management plane");
    mgmt.start_capd()
        .await
        .expect("restart CAPD on the management plane");

    // 6. The new leader keeps reconciling: a later change (back to one worker) is applied.
    let generation = fledge_clusters(&client)
        .get(NAME)
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap_or(0);
    write_request(&request_path, &server, control_planes, 1);
    fledge_apply(&mgmt.kubeconfig, &request_path, &[]);
    let changed = Instant::now();
    wait_for(
        &mgmt,
        "the new leader applying a later change (one worker)",
        Duration::from_secs(600),
        || async {
            let fc = fledge_clusters(&client)
                .get(NAME)
                .await
                .map_err(|e| e.to_string())?;
            let seen = fc.data["status"]["observedGeneration"]
                .as_i64()
                .unwrap_or(0);
            let n = nodes(&workload).await?;
            // Steady has reconciled the new generation: the node left, and the add-ons'
            // DaemonSets no longer count it (they lag the Node's deletion by a few seconds).
            let j = journal(&leader)?;
            let steady = j.entry(Phase::Steady);
            let reconciled =
                j.done(Phase::Steady) && steady.and_then(|e| e.generation).unwrap_or(0) >= seen;
            if seen > generation && n.len() == want && n.iter().all(|(_, r)| *r) && reconciled {
                Ok(())
            } else {
                Err(format!(
                    "observedGeneration {seen} (was {generation}); nodes {n:?}; Steady: {:?}",
                    steady.map(|e| (&e.outcome, &e.message, e.generation))
                ))
            }
        },
    )
    .await;
    let j = journal(&leader).expect("the new leader's journal");
    assert!(j.done(Phase::Steady), "{j:#?}");
    eprintln!(
        "[real-nodes] after CP-A's replacement: the new leader {leader} applied a later change after {:.0?}",
        changed.elapsed()
    );

    // 7. Deletion, with `fledge delete --wait` (the agent gave up its move rights after the
    // pivot; this binds them again): unpivot, the management plane's CAPD removes every
    // container, the agent releases the FledgeCluster, and the wait sees it go.
    let deleting = std::time::Instant::now();
    let out = Command::new(fledge_tests::binary("fledge"))
        .arg("delete")
        .arg(&request_path)
        .arg("--kubeconfig")
        .arg(&mgmt.kubeconfig)
        .arg("--wait=20m")
        .output()
        .expect("run fledge");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fledge delete --wait failed:\n{}{stderr}",
        String::from_utf8_lossy(&out.stdout),
    );
    eprint!("{}{stderr}", String::from_utf8_lossy(&out.stdout));
    assert!(
        stderr.contains("agent phase ")
            && stderr.contains(&format!("FledgeCluster {NS}/{NAME} deleted")),
        "fledge delete --wait shows the agent's progress and the end: {stderr}"
    );
    eprintln!(
        "[real-nodes] fledge delete --wait returned after {:.0?}",
        deleting.elapsed()
    );
    wait_for(
        &mgmt,
        "every container removed",
        Duration::from_secs(900),
        || async {
            let left = containers();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("containers left: {left:?}"))
            }
        },
    )
    .await;
    wait_for(
        &mgmt,
        "the FledgeCluster gone",
        Duration::from_secs(300),
        || async {
            match fledge_clusters(&client).get_opt(NAME).await {
                Ok(None) => Ok(()),
                Ok(Some(fc)) => Err(format!("still there: {}", fc.data["status"])),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
}

/// The same cluster the centralized way, for `benches/real-nodes.sh`: every Cluster API object
/// applied to the management plane from the start (KCP at its full size, the worker pool), no
/// agent, and the CNI applied to the workload cluster by hand once its API answers, as a
/// platform engineer does with `clusterctl` and `kubectl`. Then the decentralized test's worker
/// kill with the management plane stopped: nothing replaces the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark baseline: run by benches/real-nodes.sh"]
async fn the_same_cluster_the_centralized_way() {
    if !engine_ready() {
        return;
    }
    let _cleanup = Containers;
    let Some(mut mgmt) = management_plane().await else {
        return;
    };
    let client = mgmt.client().await;
    let control_planes = count("FLEDGE_REAL_NODES_CP");
    let dir = tempfile::tempdir().unwrap();
    let request_path = dir.path().join("request.yaml");
    let server = mgmt.public_url().expect("public url");
    write_request(&request_path, &server, control_planes, 1);
    let out = dir.path().join("out");
    let status = Command::new(fledge_tests::binary("fledge"))
        .arg("render")
        .arg(&request_path)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run fledge render");
    assert!(status.success(), "fledge render failed");
    // The Cluster and its infrastructure from management.yaml; the control plane at full size
    // and the workers from workload.yaml (no agent, no pivot).
    let mut docs = Vec::new();
    for (file, kinds) in [
        (
            "management.yaml",
            &["Namespace", "Cluster", "DevCluster", "DevMachineTemplate"][..],
        ),
        ("workload.yaml", &[][..]),
    ] {
        let text = std::fs::read_to_string(out.join(file)).unwrap();
        for v in fledge_generator::yaml::parse_documents(&text).unwrap() {
            let kind = v["kind"].as_str().unwrap_or_default();
            if kinds.is_empty() || kinds.contains(&kind) {
                docs.push(serde_norway::to_string(&v).unwrap());
            }
        }
    }
    let all = dir.path().join("centralized.yaml");
    std::fs::write(&all, docs.join("---\n")).unwrap();
    let kubectl = fledge_tests::cluster::assets_bin().join("kubectl");
    let applied = Instant::now();
    let requests_before = requests(&mgmt);
    let st = Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&mgmt.kubeconfig)
        .args([
            "apply",
            "--server-side",
            "--field-manager=centralized",
            "-f",
        ])
        .arg(&all)
        .status()
        .expect("run kubectl");
    assert!(
        st.success(),
        "kubectl apply of the centralized objects failed"
    );
    let kubeconfig = wait_for(
        &mgmt,
        "the workload kubeconfig",
        Duration::from_secs(300),
        || kubeconfig_secret(&client),
    )
    .await;
    let kc = dir.path().join("workload.kubeconfig");
    std::fs::write(&kc, &kubeconfig).unwrap();
    let flannel = dir.path().join("flannel.yaml");
    std::fs::write(&flannel, flannel_manifest()).unwrap();
    wait_for(
        &mgmt,
        "the CNI applied to the workload cluster",
        Duration::from_secs(600),
        || async {
            let out = Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(&kc)
                .args(["apply", "--server-side", "-f"])
                .arg(&flannel)
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        },
    )
    .await;
    let workload = workload_client(&kubeconfig).await.expect("workload client");
    let want = control_planes as usize + 1;
    wait_for(&mgmt, "every node Ready", Duration::from_secs(900), || {
        all_ready(&workload, want)
    })
    .await;
    eprintln!(
        "[real-nodes] centralized: all nodes Ready {:.0?}; {} requests to the management plane; nodes Ready: {want}/{want}",
        applied.elapsed(),
        requests(&mgmt) - requests_before
    );

    // The same kill as the decentralized test's, with the management plane stopped: its
    // health checks and controllers are down with it, so nothing replaces the node.
    mgmt.stop_capi_managers();
    mgmt.kill_apiserver();
    let window = Duration::from_secs(
        std::env::var("FLEDGE_REAL_NODES_WINDOW")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    let worker = a_worker().expect("a worker's container");
    let seen = kill_and_see_nothing_replaced(&workload, &worker, want, window).await;
    eprintln!(
        "[real-nodes] centralized, management plane stopped: worker {worker} killed, not replaced after {window:.0?} (nodes: {seen:?})"
    );
}
