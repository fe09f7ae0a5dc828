//! The management plane's cost per cluster, centralized Cluster API against fledge, in one run
//! (`benches/scale.sh` runs this; see there for the arguments).
//!
//! For each worker count K, twice, on a fresh management apiserver (with etcd) running the real
//! CAPI v1.13.5 managers (core, kubeadm bootstrap, kubeadm control plane):
//! - **centralized**: N clusters' Cluster API objects live on the management plane (a Cluster,
//!   its KubeadmControlPlane, CA and kubeconfig Secrets, one control-plane Machine and K worker
//!   Machines, each with its infrastructure machine, KubeadmConfig and bootstrap Secret). Their
//!   kubeconfig Secrets point at a real, shared "workload" apiserver, so the controllers reach
//!   every cluster as they would a live one (objects only: no machines run).
//! - **fledge**: after the pivot the management plane holds, per cluster, the FledgeCluster and
//!   the agent's access objects only; one real `fledge-agent` process per cluster (journal: every
//!   phase done, so it runs Steady) watches its FledgeCluster, reports status, and reconciles its
//!   K workers in its own namespace of the shared local apiserver.
//!
//! After a settling time, over a fixed window: requests per second from the management
//! apiserver's audit log, objects stored (`apiserver_storage_objects`), and CPU (from
//! /proc/PID/stat) and resident memory of the apiserver + etcd and of the CAPI managers.

use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fledge_agent::state::journal::{Journal, Outcome, Phase};
use fledge_generator::management;
use fledge_generator::render::Templates;
use fledge_generator::spec;
use fledge_generator::ssa::{ApplyOptions, apply};
use fledge_generator::target::client_from_kubeconfig;
use fledge_tests::cluster::{Options, TestCluster, USER, kubeconfig_yaml};
use fledge_tests::{capi, install, workspace_root};
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

struct Args {
    /// The agents' `resyncSeconds` (their spec sync re-reads the FledgeCluster and reports
    /// status this often); `None`: the agent's default (300).
    resync: Option<u64>,
    clusters: usize,
    workers: Vec<usize>,
    settle: Duration,
    window: Duration,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        resync: None,
        clusters: 20,
        workers: vec![3, 10, 50],
        settle: Duration::from_secs(30),
        window: Duration::from_secs(120),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--clusters" => a.clusters = value()?.parse()?,
            "--workers" => {
                a.workers = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--settle" => a.settle = Duration::from_secs(value()?.parse()?),
            "--window" => a.window = Duration::from_secs(value()?.parse()?),
            "--resync" => a.resync = Some(value()?.parse()?),
            other => anyhow::bail!(
                "unknown argument {other}; usage: scale-bench [--clusters N] [--workers K,K,..] [--settle S] [--window S] [--resync S]"
            ),
        }
    }
    anyhow::ensure!(
        a.clusters >= 1 && !a.workers.is_empty(),
        "need N >= 1 and at least one K"
    );
    Ok(a)
}

#[derive(Clone, Copy, PartialEq)]
enum Model {
    Centralized,
    Fledge,
}

impl Model {
    fn name(self) -> &'static str {
        match self {
            Model::Centralized => "centralized",
            Model::Fledge => "fledge",
        }
    }
}

/// One measurement.
struct Row {
    model: Model,
    k: usize,
    /// Creating the objects (or the agents' first sync) and the settling time after it.
    build_requests: u64,
    build_apiserver_cpu_s: f64,
    build_controller_cpu_s: f64,
    requests_per_s: f64,
    agent_requests_per_s: f64,
    objects: f64,
    apiserver_cores: f64,
    apiserver_mib: f64,
    controller_cores: f64,
    controller_mib: f64,
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; here, after pid and comm, indexes 11, 12.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// Objects stored: every listable resource the apiserver serves, counted with one
/// `limit=1` list each (the page's item plus `remainingItemCount`).
async fn stored_objects(client: &kube::Client) -> anyhow::Result<f64> {
    use kube::api::ListParams;
    use kube::discovery::{Discovery, verbs};
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut total = 0u64;
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if !caps.supports_operation(verbs::LIST) {
                continue;
            }
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            if let Ok(list) = api.list_metadata(&ListParams::default().limit(1)).await {
                total += list.items.len() as u64
                    + list.metadata.remaining_item_count.unwrap_or(0).max(0) as u64;
            }
        }
    }
    Ok(total as f64)
}

/// Audit events after byte `from`: (all, by the agents' user).
fn audit_count(log: &Path, from: u64) -> anyhow::Result<(u64, u64)> {
    audit_count_between(log, from, u64::MAX)
}

/// Audit events between bytes `from` and `to`: (all, by the agents' user).
fn audit_count_between(log: &Path, from: u64, to: u64) -> anyhow::Result<(u64, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(log)?;
    f.seek(std::io::SeekFrom::Start(from))?;
    let (mut all, mut agents) = (0, 0);
    for line in std::io::BufReader::new(f.take(to.saturating_sub(from))).lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        all += 1;
        if v["user"]["username"] == USER {
            agents += 1;
        }
    }
    Ok((all, agents))
}

/// The request of cluster `i` with K workers, named `c{i}` in namespace `fleet-{i}`.
fn request(i: usize, k: usize) -> anyhow::Result<spec::CheckedCluster> {
    let path = workspace_root().join("tests/cases/docker-v1beta2/input.yaml");
    let text = std::fs::read_to_string(&path)?;
    let mut doc: Value = serde_norway::from_str(&text)?;
    doc["metadata"]["name"] = json!(format!("c{i}"));
    doc["metadata"]["namespace"] = json!(format!("fleet-{i}"));
    doc["spec"]["workers"][0]["replicas"] = json!(k);
    // The example's add-on layer points at a URL that does not resolve here.
    if let Some(spec) = doc["spec"].as_object_mut() {
        spec.remove("profile");
    }
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("request.yaml");
    std::fs::write(&p, serde_norway::to_string(&doc)?)?;
    spec::load_request(&p).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn namespace(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let body = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    match api.create(&Default::default(), &body).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The centralized model: every cluster's objects on the management plane, kubeconfigs
/// pointing at the shared workload apiserver.
async fn centralized(
    mgmt: &TestCluster,
    workload: &TestCluster,
    n: usize,
    k: usize,
) -> anyhow::Result<()> {
    let mc = mgmt.client().await;
    let kubeconfig = kubeconfig_yaml(&workload.url, &workload.ca_pem, &workload.token);
    use base64::Engine;
    let value = base64::engine::general_purpose::STANDARD.encode(kubeconfig);
    for i in 0..n {
        let ns = format!("fleet-{i}");
        namespace(&mc, &ns).await?;
        capi::cluster(&mc, &ns, &format!("c{i}"), capi::V1BETA2, k).await;
        let secrets: Api<DynamicObject> =
            Api::namespaced_with(mc.clone(), &ns, &capi::resource("v1", "Secret"));
        secrets
            .patch(
                &format!("c{i}-kubeconfig"),
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"value": value}})),
            )
            .await?;
    }
    Ok(())
}

/// An agent process and its files.
struct Agent {
    child: Child,
    _root: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fledge model: per cluster the FledgeCluster and the agent's access on the management
/// plane, and one agent process past every phase but Steady.
async fn fledge(
    mgmt: &TestCluster,
    local: &TestCluster,
    n: usize,
    k: usize,
    resync: Option<u64>,
) -> anyhow::Result<Vec<Agent>> {
    let target = client_from_kubeconfig(Some(&mgmt.kubeconfig)).await?;
    let lc = local.client().await;
    let mut agents = Vec::new();
    for i in 0..n {
        let checked = request(i, k)?;
        let ns = checked.namespace.to_string();
        namespace(&lc, &ns).await?;
        let objects: Vec<Value> = management::objects(&checked, &Templates::embedded())?
            .into_iter()
            .filter(|o| {
                let v = o["apiVersion"].as_str().unwrap_or_default();
                v.starts_with("fledge.dev/")
                    || v == "v1"
                    || v.starts_with("rbac.authorization.k8s.io/")
            })
            .collect();
        let role = objects
            .iter()
            .find(|o| o["kind"] == "Role")
            .ok_or_else(|| anyhow::anyhow!("no Role rendered"))?
            .clone();
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "agent-user", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]});
        let mut all = objects;
        all.push(binding);
        apply(&target, &all, &ApplyOptions::default(), |_| {}).await?;
        agents.push(start_agent(mgmt, local, &checked, resync)?);
    }
    Ok(agents)
}

fn start_agent(
    mgmt: &TestCluster,
    local: &TestCluster,
    checked: &spec::CheckedCluster,
    resync: Option<u64>,
) -> anyhow::Result<Agent> {
    let root = tempfile::tempdir()?;
    let r = root.path();
    let state = r.join("state");
    std::fs::create_dir_all(&state)?;
    std::fs::write(r.join("token"), &mgmt.user_token)?;
    std::fs::write(r.join("ca.crt"), &mgmt.ca_pem)?;
    // Past the pivot, the scale-out and the add-ons: the agent runs Steady.
    let mut j = Journal::load(&state)?;
    for p in [
        Phase::Installed,
        Phase::ProvidersInstalled,
        Phase::Pivoted,
        Phase::ScaledOut,
        Phase::AddonsReady,
    ] {
        j.record(&state, p, Outcome::Succeeded, Some(1), None)?;
    }
    let port = fledge_tests::cluster::free_port()?;
    let d = |p: &Path| p.display().to_string();
    let cfg = json!({
        "apiVersion": "fledge.dev/v1alpha1", "kind": "AgentConfig",
        "cluster": {"name": checked.name.as_str(), "namespace": checked.namespace.as_str()},
        "management": {"server": mgmt.url, "tokenFile": d(&r.join("token")), "caFile": d(&r.join("ca.crt"))},
        "stateDir": d(&state),
        "metricsAddress": format!("127.0.0.1:{port}"),
        "localKubeconfig": d(&local.kubeconfig),
    });
    let mut cfg = cfg;
    if let Some(r) = resync {
        cfg["resyncSeconds"] = json!(r);
    }
    let config = r.join("agent.yaml");
    std::fs::write(&config, serde_norway::to_string(&cfg)?)?;
    let log = std::fs::File::create(r.join("agent.log"))?;
    let child = Command::new(fledge_tests::binary("fledge-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    Ok(Agent { child, _root: root })
}

async fn measure(model: Model, n: usize, k: usize, a: &Args) -> anyhow::Result<Row> {
    let mut mgmt = TestCluster::start_with(Options::default()).await?;
    let local = TestCluster::start_with(Options::default()).await?;
    install::install_crds(&local.client().await, &["cluster-api/v1.13.5"])
        .await
        .map_err(anyhow::Error::msg)?;
    // The released CRDs (the Dev infrastructure's among them) and fledge's.
    install::install_crds(&mgmt.client().await, &["cluster-api/v1.13.5"])
        .await
        .map_err(anyhow::Error::msg)?;
    mgmt.start_capi_managers(&[]).await?;
    // pids(): etcd, apiserver, then the managers (no controller-manager runs here).
    let pids = mgmt.pids();
    let (server, controllers) = (pids[..2].to_vec(), pids[2..].to_vec());
    let cpu = |ps: &[u32]| ps.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let log = mgmt.audit_log();
    let build_offset = std::fs::metadata(&log)?.len();
    let (sb, cb) = (cpu(&server), cpu(&controllers));
    let built = Instant::now();
    let _agents = match model {
        Model::Centralized => {
            centralized(&mgmt, &local, n, k).await?;
            Vec::new()
        }
        Model::Fledge => fledge(&mgmt, &local, n, k, a.resync).await?,
    };
    eprintln!(
        "{} N={n} K={k}: populated in {:.1}s; settling {}s, measuring {}s",
        model.name(),
        built.elapsed().as_secs_f64(),
        a.settle.as_secs(),
        a.window.as_secs()
    );
    tokio::time::sleep(a.settle).await;
    let offset = std::fs::metadata(&log)?.len();
    let (s0, c0, t0) = (cpu(&server), cpu(&controllers), Instant::now());
    let (build_requests, _) = audit_count_between(&log, build_offset, offset)?;
    tokio::time::sleep(a.window).await;
    let (s1, c1, dt) = (cpu(&server), cpu(&controllers), t0.elapsed().as_secs_f64());
    let (requests, agent_requests) = audit_count(&log, offset)?;
    let objects = stored_objects(&mgmt.client().await).await?;
    let mem = |ps: &[u32]| ps.iter().map(|p| rss_mib(*p)).sum::<f64>();
    let row = Row {
        model,
        k,
        build_requests,
        build_apiserver_cpu_s: s0 - sb,
        build_controller_cpu_s: c0 - cb,
        requests_per_s: requests as f64 / dt,
        agent_requests_per_s: agent_requests as f64 / dt,
        objects,
        apiserver_cores: (s1 - s0) / dt,
        apiserver_mib: mem(&server),
        controller_cores: (c1 - c0) / dt,
        controller_mib: mem(&controllers),
    };
    if let Some(agent) = _agents.first() {
        let log = agent._root.path().join("agent.log");
        eprintln!(
            "first agent's log, last lines:\n{}",
            fledge_tests::cluster::tail(&log, 8)
        );
    }
    mgmt.stop();
    Ok(row)
}

fn print(n: usize, rows: &[Row]) {
    let per = |v: f64| v / n as f64;
    println!("\nmanagement-plane cost, N={n} clusters (per cluster = total / N)\n");
    println!("idle window:\n");
    println!(
        "| model | K | req/s | req/s per cluster | of which agents | objects stored | objects per cluster | apiserver+etcd mcores per cluster | apiserver+etcd MiB | CAPI managers mcores per cluster | CAPI managers MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {:.3} | {:.1} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.0} |",
            r.model.name(),
            r.k,
            r.requests_per_s,
            per(r.requests_per_s),
            r.agent_requests_per_s,
            r.objects,
            per(r.objects),
            per(r.apiserver_cores) * 1000.0,
            r.apiserver_mib,
            per(r.controller_cores) * 1000.0,
            r.controller_mib
        );
    }
    println!("\nbuilding (objects created, or agents started) and settling, per cluster:\n");
    println!(
        "| model | K | requests per cluster | apiserver+etcd CPU-s per cluster | CAPI managers CPU-s per cluster |"
    );
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} |",
            r.model.name(),
            r.k,
            per(r.build_requests as f64),
            per(r.build_apiserver_cpu_s),
            per(r.build_controller_cpu_s)
        );
    }
    println!("\nratio centralized / fledge, same K:\n");
    println!(
        "| K | idle req/s | objects | idle apiserver+etcd CPU | idle CAPI managers CPU | apiserver+etcd memory | CAPI managers memory | build requests | build CAPI managers CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.1}x", a / b)
        } else {
            "n/a".into()
        }
    };
    for c in rows.iter().filter(|r| r.model == Model::Centralized) {
        if let Some(f) = rows.iter().find(|r| r.model == Model::Fledge && r.k == c.k) {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.k,
                ratio(c.requests_per_s, f.requests_per_s),
                ratio(c.objects, f.objects),
                ratio(c.apiserver_cores, f.apiserver_cores),
                ratio(c.controller_cores, f.controller_cores),
                ratio(c.apiserver_mib, f.apiserver_mib),
                ratio(c.controller_mib, f.controller_mib),
                ratio(c.build_requests as f64, f.build_requests as f64),
                ratio(c.build_controller_cpu_s, f.build_controller_cpu_s)
            );
        }
    }
    // How each model's cost grows with K (first K to last).
    for m in [Model::Centralized, Model::Fledge] {
        let of: Vec<&Row> = rows.iter().filter(|r| r.model == m).collect();
        if let (Some(first), Some(last)) = (of.first(), of.last())
            && first.k != last.k
        {
            println!(
                "\n{}: K {} -> {}: idle req/s {}, objects {}, idle apiserver+etcd CPU {}, idle CAPI managers CPU {}, build requests {}",
                m.name(),
                first.k,
                last.k,
                ratio(last.requests_per_s, first.requests_per_s),
                ratio(last.objects, first.objects),
                ratio(last.apiserver_cores, first.apiserver_cores),
                ratio(last.controller_cores, first.controller_cores),
                ratio(last.build_requests as f64, first.build_requests as f64)
            );
        }
    }
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Built before anything is measured.
        let _: PathBuf = fledge_tests::binary("fledge-agent");
        let mut rows = Vec::new();
        for &k in &a.workers {
            for model in [Model::Centralized, Model::Fledge] {
                rows.push(measure(model, a.clusters, k, &a).await?);
            }
        }
        print(a.clusters, &rows);
        Ok(())
    })
}
