//! Pivot benchmark: one cluster with N worker Machines (each with infrastructure machine,
//! KubeadmConfig and bootstrap Secret) moved between two real API servers, at --parallelism 1
//! and at the default, in the same run. Requests are counted by a layer in the clients.
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
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(sc.clone());
    api.create(
        &Default::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
    )
    .await?;
    let keys = capi::cluster(&sc, ns, "scale", capi::V1BETA2, workers).await;
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
        "requests per object:    {per_object:.2} ({} reads + {} writes; writes {:.2}/object); clusterctl estimate 7-9 -> {:.1}x-{:.1}x fewer",
        r.reads,
        r.writes,
        r.writes as f64 / r.objects as f64,
        7.0 / per_object,
        9.0 / per_object
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
