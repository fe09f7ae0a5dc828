//! Pivot benchmark: one cluster with N worker Machines (each with infrastructure machine,
//! KubeadmConfig and bootstrap Secret) moved between two real API servers, at --parallelism 1
//! and at the default, in the same run. Requests are counted by a layer in the clients. Then the
//! same fixture is moved by fledge and by the real `clusterctl move`, requests counted for both
//! from the apiservers' audit logs by user agent.
//!
//! `cargo run --release -p fledge-tests --example pivot_bench -- [WORKERS] [ROUNDS] [PARALLELISM]`
//! (defaults 100, 3 and the pivot's default; see benches/pivot.sh). `FLEDGE_BENCH_RTT_MS` adds a
//! fixed delay to every request, standing in for a network round trip.

use std::time::{Duration, Instant};

use fledge_agent::pivot::apply::{DEFAULT_PARALLELISM, Options, Pivot};
use fledge_tests::capi;
use fledge_tests::cluster::{Options as ClusterOptions, TestCluster};
use fledge_tests::fault::{Fault, client_with};
use fledge_tests::install::install_crds;

struct Run {
    objects: usize,
    busy: f64,
    reads: u64,
    writes: u64,
    wall: Duration,
}

async fn one(
    s: &TestCluster,
    t: &TestCluster,
    ns: &str,
    workers: usize,
    parallelism: usize,
    rtt: Duration,
) -> anyhow::Result<Run> {
    let sc = s.client().await;
    let keys = fixture(&sc, ns, workers).await?;
    let counts = Fault::delaying(rtt);
    let (a, b) = (
        client_with(&s.kubeconfig, &counts).await,
        client_with(&t.kubeconfig, &counts).await,
    );
    let opts = Options {
        parallelism,
        ..Options::default()
    };
    let quiet = |_: &fledge_agent::pivot::apply::Event| {};
    let cpu0 = cpu_ticks();
    let started = Instant::now();
    let summary = Pivot::new(&a, &b, ns, "scale", opts, &quiet).run().await?;
    let wall = started.elapsed();
    let cpu1 = cpu_ticks();
    let busy = match (cpu0, cpu1) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
        _ => f64::NAN,
    };
    anyhow::ensure!(
        summary.moved == keys.len(),
        "moved {} of {}",
        summary.moved,
        keys.len()
    );
    Ok(Run {
        objects: summary.moved,
        busy,
        reads: counts.reads(),
        writes: counts.writes(),
        wall,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mover {
    Fledge,
    Clusterctl,
}

struct Side {
    name: &'static str,
    objects: usize,
    requests: u64,
    source_requests: u64,
    wall: Duration,
    statuses_before: usize,
    statuses_kept: usize,
}

/// Audit events (ResponseComplete) in `log` from line `from` on whose user agent starts with
/// `agent`.
fn audit_count(log: &std::path::Path, from: usize, agent: &str) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .skip(from)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            e["userAgent"]
                .as_str()
                .is_some_and(|u| u.starts_with(agent))
        })
        .count() as u64
}

fn lines(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Moves one fresh fixture with `mover`, counting requests from the audit logs.
async fn audited(
    s: &TestCluster,
    t: &TestCluster,
    ns: &str,
    workers: usize,
    mover: Mover,
) -> anyhow::Result<Side> {
    let sc = s.client().await;
    let tc = t.client().await;
    let keys = fixture(&sc, ns, workers).await?;
    // clusterctl moves only a provisioned cluster: the condition it checks.
    let clusters: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        sc.clone(),
        ns,
        &capi::resource(capi::V1BETA2.capi, "Cluster"),
    );
    let cond = serde_json::json!({"status": {"conditions": [{"type": "ControlPlaneInitialized",
        "status": "True", "reason": "Initialized", "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    clusters
        .patch_status(
            "scale",
            &Default::default(),
            &kube::api::Patch::Merge(&cond),
        )
        .await?;
    let before = capi::snapshot(&sc, ns, &keys).await;
    let statuses_before = before.values().filter(|v| !is_empty(&v.status)).count();
    let (s0, t0) = (lines(&s.audit_log()), lines(&t.audit_log()));
    let started = Instant::now();
    let agent = match mover {
        Mover::Fledge => {
            let (a, b) = (
                agent_client(&s.kubeconfig).await?,
                agent_client(&t.kubeconfig).await?,
            );
            let quiet = |_: &fledge_agent::pivot::apply::Event| {};
            Pivot::new(&a, &b, ns, "scale", Options::default(), &quiet)
                .run()
                .await?;
            "fledge-bench/"
        }
        Mover::Clusterctl => {
            let home = tempfile::tempdir()?;
            let out =
                std::process::Command::new(fledge_tests::cluster::assets_bin().join("clusterctl"))
                    .args(["move", "--kubeconfig"])
                    .arg(&s.kubeconfig)
                    .arg("--to-kubeconfig")
                    .arg(&t.kubeconfig)
                    .args(["-n", ns])
                    .env("CLUSTERCTL_DISABLE_VERSIONCHECK", "true")
                    .env("XDG_CONFIG_HOME", home.path())
                    .env("HOME", home.path())
                    .output()?;
            anyhow::ensure!(
                out.status.success(),
                "clusterctl move failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            "clusterctl/"
        }
    };
    let wall = started.elapsed();
    // Let the audit backend flush.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let source_requests = audit_count(&s.audit_log(), s0, agent);
    let requests = source_requests + audit_count(&t.audit_log(), t0, agent);
    let after = capi::snapshot(&tc, ns, &keys).await;
    anyhow::ensure!(
        after.len() == keys.len(),
        "{} of {} moved",
        after.len(),
        keys.len()
    );
    let statuses_kept = after
        .iter()
        .filter(|(k, v)| {
            !is_empty(&v.status) && before.get(*k).is_some_and(|b| b.status == v.status)
        })
        .count();
    Ok(Side {
        name: if mover == Mover::Fledge {
            "fledge"
        } else {
            "clusterctl"
        },
        objects: keys.len(),
        requests,
        source_requests,
        wall,
        statuses_before,
        statuses_kept,
    })
}

/// A client that names itself in the User-Agent header, so that the audit log tells its
/// requests apart.
async fn agent_client(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let mut config = fledge_generator::target::config_from_kubeconfig(Some(kubeconfig)).await?;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static("fledge-bench/1"),
    ));
    Ok(kube::Client::try_from(config)?)
}

fn is_empty(v: &serde_json::Value) -> bool {
    v.is_null() || v.as_object().is_some_and(|m| m.is_empty())
}

/// A namespace `ns` holding one cluster `scale` with `workers` worker Machines.
async fn fixture(sc: &kube::Client, ns: &str, workers: usize) -> anyhow::Result<Vec<capi::Key>> {
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(sc.clone());
    api.create(
        &Default::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
    )
    .await?;
    Ok(capi::cluster(sc, ns, "scale", capi::V1BETA2, workers).await)
}

/// (busy, total) jiffies of all CPUs, from /proc/stat.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = cpu.iter().sum();
    let idle = cpu.get(3)? + cpu.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let workers: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let wide: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(DEFAULT_PARALLELISM);
    let rtt = Duration::from_millis(
        std::env::var("FLEDGE_BENCH_RTT_MS")
            .ok()
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or(0),
    );
    let s = TestCluster::start_with(ClusterOptions::default()).await?;
    let t = TestCluster::start_with(ClusterOptions::default()).await?;
    for c in [&s, &t] {
        install_crds(&c.client().await, &[capi::V1BETA2.crd_dir])
            .await
            .map_err(anyhow::Error::msg)?;
    }
    // Warm-up (not measured): the first requests for each type on a fresh server are slow.
    one(&s, &t, "bench-warm-up", workers.min(10), wide, rtt).await?;
    let mut serial = Vec::new();
    let mut parallel = Vec::new();
    let mut last = None;
    for round in 0..rounds {
        // Alternate the order so that neither setting always runs on a warmer server.
        let order = if round % 2 == 0 { [1, wide] } else { [wide, 1] };
        for p in order {
            let r = one(&s, &t, &format!("bench-{round}-p{p}"), workers, p, rtt).await?;
            eprintln!(
                "round {round} parallelism {p}: {} objects, {} reads + {} writes, {:.2}s, machine CPU busy {:.0}%",
                r.objects,
                r.reads,
                r.writes,
                r.wall.as_secs_f64(),
                r.busy * 100.0
            );
            if p == 1 {
                serial.push(r.wall);
            } else {
                parallel.push(r.wall);
            }
            last = Some(r);
        }
    }
    let r = last.expect("at least one round");
    let (p1, pn) = (median(serial), median(parallel));
    let per_object = (r.reads + r.writes) as f64 / r.objects as f64;
    println!("objects moved:          {}", r.objects);
    println!(
        "requests per object:    {per_object:.2} ({} reads + {} writes; writes {:.2}/object), counted in the client",
        r.reads,
        r.writes,
        r.writes as f64 / r.objects as f64,
    );
    // The same fixture moved by fledge and by clusterctl, requests counted the same way for
    // both: from the two apiservers' audit logs, by user agent.
    let fledge = audited(&s, &t, "bench-side-fledge", workers, Mover::Fledge).await?;
    let clusterctl = audited(&s, &t, "bench-side-clusterctl", workers, Mover::Clusterctl).await?;
    for m in [&fledge, &clusterctl] {
        println!(
            "{:<10} {} objects: {} requests ({:.2}/object; {} source + {} target), {:.2}s, statuses kept in the target {}/{}",
            m.name,
            m.objects,
            m.requests,
            m.requests as f64 / m.objects as f64,
            m.source_requests,
            m.requests - m.source_requests,
            m.wall.as_secs_f64(),
            m.statuses_kept,
            m.statuses_before
        );
    }
    println!(
        "fledge vs clusterctl:   {:.1}x fewer requests, {:.1}x faster",
        clusterctl.requests as f64 / fledge.requests as f64,
        clusterctl.wall.as_secs_f64() / fledge.wall.as_secs_f64()
    );
    println!(
        "wall, median of {rounds}:   parallelism 1 {:.2}s, parallelism {wide} {:.2}s -> {:.2}x faster (added round trip {} ms)",
        p1.as_secs_f64(),
        pn.as_secs_f64(),
        p1.as_secs_f64() / pn.as_secs_f64(),
        rtt.as_millis()
    );
    Ok(())
}
