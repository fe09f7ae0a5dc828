//! fledge-agent against a real management apiserver: fetch, cache, status, watch, loss and
//! return of the management plane, graceful stop.

use std::path::Path;
use std::time::{Duration, Instant};

use fledge_agent::config::AgentConfig;
use fledge_agent::daemon::metrics::Shared;
use fledge_agent::daemon::run::{RunOptions, run};
use fledge_generator::management;
use fledge_generator::render::Templates;
use fledge_generator::spec::{self, FledgeCluster};
use fledge_generator::ssa::{ApplyOptions, apply};
use fledge_generator::target::client_from_kubeconfig;
use fledge_tests::cluster::{Options, TestCluster, start_or_skip};
use fledge_tests::install::install_fledge_crds;
use fledge_tests::workspace_root;
use kube::Api;
use kube::api::{Patch, PatchParams};

async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cached_generation(root: &Path) -> Option<i64> {
    fledge_agent::state::cache::load(&root.join("var/lib/fledge"))
        .ok()
        .flatten()
        .map(|c| c.generation)
}

/// Management cluster with the docker example's Namespace and FledgeCluster and the agent's
/// rendered Role, bound to the test user whose token the node holds (the agent runs with exactly
/// the rights fledge gives it), and a node root holding the agent's config, token and CA.
async fn setup(c: &TestCluster, root: &Path) -> (AgentConfig, Api<FledgeCluster>) {
    install_fledge_crds(&c.client().await).await.unwrap();
    let checked = spec::load_request(&workspace_root().join("examples/docker.yaml")).unwrap();
    let objects = management::objects(&checked, &Templates::embedded()).unwrap();
    let target = client_from_kubeconfig(Some(&c.kubeconfig)).await.unwrap();
    let mut wanted = objects[..2].to_vec();
    wanted.extend(fledge_tests::access::for_test_user(&objects));
    apply(&target, &wanted, &ApplyOptions::default(), |_| {})
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::create_dir_all(root.join("etc/fledge/management")).unwrap();
    std::fs::write(root.join("etc/fledge/management/token"), &c.user_token).unwrap();
    std::fs::write(root.join("etc/fledge/management/ca.crt"), &c.ca_pem).unwrap();
    let cfg = format!(
        "apiVersion: fledge.dev/v1alpha1\nkind: AgentConfig\ncluster:\n  name: {}\n  namespace: {}\nmanagement:\n  server: {}\n  tokenFile: /etc/fledge/management/token\n  caFile: /etc/fledge/management/ca.crt\nstateDir: /var/lib/fledge\nmetricsAddress: \"127.0.0.1:{port}\"\nresyncSeconds: 2\nbackoffCapSeconds: 1\n",
        checked.name, checked.namespace, c.url
    );
    std::fs::write(root.join("etc/fledge/agent.yaml"), cfg).unwrap();
    let cfg = AgentConfig::load(&root.join("etc/fledge/agent.yaml")).unwrap();
    let api: Api<FledgeCluster> = Api::namespaced(c.client().await, checked.namespace.as_str());
    (cfg, api)
}

fn c_name(root: &Path) -> String {
    AgentConfig::load(&root.join("etc/fledge/agent.yaml"))
        .unwrap()
        .cluster
        .name
}

async fn bump_workers(api: &Api<FledgeCluster>, name: &str, replicas: i64) {
    let patch = serde_json::json!({"spec": {"workers": [{"name": "md-0", "replicas": replicas, "machine": {}}]}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_survives_the_loss_and_return_of_the_management_plane() {
    let Some(mut c) = start_or_skip(Options::default()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (cfg, api) = setup(&c, &root).await;
    let name = cfg.cluster.name.clone();
    let addr = cfg.metrics_address.clone();
    let shared = Shared::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = RunOptions {
        root: root.clone(),
        watchdog: Some(Duration::from_millis(200)),
    };
    let agent = tokio::spawn(run(cfg, opts, shared.clone(), async move {
        let _ = stop_rx.await;
    }));

    // Fetch, cache, report.
    wait_for("the spec to be cached", Duration::from_secs(20), || {
        cached_generation(&root) == Some(1)
    })
    .await;
    let start = Instant::now();
    loop {
        let st = api.get(&name).await.unwrap().status;
        if st.as_ref().and_then(|s| s.observed_generation) == Some(1) {
            let st = st.unwrap();
            assert_eq!(st.phase.as_deref(), Some("SpecFetched"));
            assert_eq!(st.agent_version.as_deref(), Some(fledge_agent::VERSION));
            assert!(
                st.conditions
                    .iter()
                    .any(|c| c.type_ == "SpecFetched" && c.status == "True")
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no status reported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Idle: with nothing changing, status goes out once per resync (2 s here) as a heartbeat,
    // not once per watch event (its own status update must not trigger another one).
    let sent = shared.snapshot().status_sent;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_updates = shared.snapshot().status_sent - sent;
    eprintln!("idle status updates in 5 s: {idle_updates}");
    assert!(
        idle_updates <= 3,
        "{idle_updates} status updates in 5 idle seconds: one per resync expected"
    );
    assert!(http_get(&addr, "/healthz").await.ends_with("ok\n"));
    let metrics = http_get(&addr, "/metrics").await;
    assert!(
        metrics.contains("fledge_agent_management_reachable 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fledge_agent_phase{phase=\"SpecFetched\"} 1"),
        "{metrics}"
    );

    // A new generation arrives by watch.
    bump_workers(&api, &name, 3).await;
    wait_for("generation 2 to be cached", Duration::from_secs(10), || {
        cached_generation(&root) == Some(2)
    })
    .await;

    // The management plane goes away: the agent keeps running from its cache.
    c.kill_apiserver();
    wait_for("the agent to notice", Duration::from_secs(30), || {
        !shared.snapshot().reachable
    })
    .await;
    let pings = shared.snapshot().watchdog_pings;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !agent.is_finished(),
        "the agent must keep running without the management plane"
    );
    assert!(
        shared.snapshot().watchdog_pings > pings,
        "the watchdog keeps being fed"
    );
    assert_eq!(cached_generation(&root), Some(2), "the cache is kept");
    let metrics = http_get(&addr, "/metrics").await;
    assert!(
        metrics.contains("fledge_agent_management_reachable 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fledge_agent_errors_total{kind=\"unreachable\"}"),
        "{metrics}"
    );

    // It comes back with a newer generation: picked up, and the status arrives.
    c.start_apiserver().await.unwrap();
    let api: Api<FledgeCluster> =
        Api::namespaced(c.client().await, api.namespace().unwrap_or("default"));
    bump_workers(&api, &name, 5).await;
    wait_for("generation 3 to be cached", Duration::from_secs(30), || {
        cached_generation(&root) == Some(3)
    })
    .await;
    let start = Instant::now();
    while api
        .get(&name)
        .await
        .unwrap()
        .status
        .and_then(|s| s.observed_generation)
        != Some(3)
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the queued status did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(shared.snapshot().reachable);

    // Graceful stop within a bound.
    let start = Instant::now();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("stops within 10 s")
        .unwrap()
        .unwrap();
    eprintln!("stopped in {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_cache_is_detected_and_refetched() {
    let Some(c) = start_or_skip(Options::default()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (cfg, api) = setup(&c, &root).await;
    std::fs::create_dir_all(root.join("var/lib/fledge")).unwrap();
    std::fs::write(
        root.join("var/lib/fledge/spec.yaml"),
        "generation: 9\nuid: x\nsha256: \"00\"\nspec: {}\n",
    )
    .unwrap();
    // What bootstrap.sh leaves after a failed kubeadm init.
    std::fs::write(
        root.join("var/lib/fledge/bootstrap-failure.json"),
        r#"{"phase": "kubeadm-init", "exitCode": 1, "logTail": "[preflight] error\nerror execution phase preflight: port 6443 is in use", "time": "2026-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let shared = Shared::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = RunOptions {
        root: root.clone(),
        watchdog: None,
    };
    let agent = tokio::spawn(run(cfg, opts, shared.clone(), async move {
        let _ = stop_rx.await;
    }));
    wait_for("a good copy", Duration::from_secs(20), || {
        cached_generation(&root) == Some(1)
    })
    .await;
    assert_eq!(shared.snapshot().errors.get("cache_corrupt"), Some(&1));
    // The bootstrap failure is reported in the status.
    let cond = condition(
        &api,
        &c_name(&root),
        "BootstrapSucceeded",
        "BootstrapFailed",
    )
    .await;
    assert_eq!(cond.status, "False");
    assert_eq!(cond.reason.as_deref(), Some("BootstrapFailed"));
    let msg = cond.message.unwrap_or_default();
    assert!(
        msg.contains("kubeadm-init exited 1") && msg.contains("port 6443 is in use"),
        "{msg}"
    );
    stop_tx.send(()).unwrap();
    agent.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_token_file_is_one_clear_error() {
    let Some(c) = start_or_skip(Options::default()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (cfg, _api) = setup(&c, &root).await;
    std::fs::remove_file(root.join("etc/fledge/management/token")).unwrap();
    let opts = RunOptions {
        root: root.clone(),
        watchdog: None,
    };
    let err = run(cfg, opts, Shared::default(), std::future::pending())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("etc/fledge/management/token: cannot read the management token"),
        "{msg}"
    );
}

fn cached(root: &Path) -> Option<fledge_agent::state::cache::CachedSpec> {
    fledge_agent::state::cache::load(&root.join("var/lib/fledge"))
        .ok()
        .flatten()
}

async fn condition(
    api: &Api<FledgeCluster>,
    name: &str,
    type_: &str,
    reason: &str,
) -> spec::Condition {
    let start = Instant::now();
    loop {
        let st = api
            .get(name)
            .await
            .ok()
            .and_then(|o| o.status)
            .unwrap_or_default();
        if let Some(c) = st
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_ && c.reason.as_deref() == Some(reason))
        {
            return c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no condition {type_} with reason {reason}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_or_recreated_spec_is_refused_and_never_cached() {
    let Some(c) = start_or_skip(Options::default()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (cfg, api) = setup(&c, &root).await;
    let name = cfg.cluster.name.clone();
    let addr = cfg.metrics_address.clone();
    let shared = Shared::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = RunOptions {
        root: root.clone(),
        watchdog: None,
    };
    let agent = tokio::spawn(run(cfg, opts, shared.clone(), async move {
        let _ = stop_rx.await;
    }));
    wait_for("the spec to be cached", Duration::from_secs(20), || {
        cached_generation(&root) == Some(1)
    })
    .await;
    let first = cached(&root).unwrap();
    let accepted = condition(&api, &name, "SpecAccepted", "Valid").await;

    // The CRD's schema allows two control-plane replicas; fledge's validation does not.
    let patch = serde_json::json!({"spec": {"controlPlane": {"replicas": 2}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let refused = condition(&api, &name, "SpecAccepted", "InvalidSpec").await;
    assert_eq!(refused.status, "False");
    let msg = refused.message.unwrap_or_default();
    assert!(
        msg.contains("spec.controlPlane.replicas: must be 1, 3 or 5 (got 2)"),
        "{msg}"
    );
    assert_eq!(cached(&root).unwrap(), first, "an invalid spec was cached");
    assert!(shared.snapshot().errors.contains_key("invalid_spec"));
    assert!(
        refused.last_transition_time >= accepted.last_transition_time,
        "transition times go forward"
    );
    // While nothing changes, the condition's transition time stays (status heartbeats).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let again = condition(&api, &name, "SpecAccepted", "InvalidSpec").await;
    assert_eq!(again.last_transition_time, refused.last_transition_time);
    // A management plane that answers is reachable, whatever it says.
    assert!(shared.snapshot().reachable);
    let metrics = http_get(&addr, "/metrics").await;
    assert!(
        metrics.contains("fledge_agent_management_reachable 1"),
        "{metrics}"
    );

    // Deleted and re-created (generation 1 again, a new UID): not a rollback.
    let mut obj = api.get(&name).await.unwrap();
    api.delete(&name, &Default::default()).await.unwrap();
    obj.metadata = kube::api::ObjectMeta {
        name: obj.metadata.name.clone(),
        namespace: obj.metadata.namespace.clone(),
        ..Default::default()
    };
    obj.spec.control_plane.replicas = 3;
    obj.status = None;
    let created = api.create(&Default::default(), &obj).await.unwrap();
    let refused = condition(&api, &name, "SpecAccepted", "Recreated").await;
    let msg = refused.message.unwrap_or_default();
    assert!(msg.contains(&first.uid), "{msg}");
    assert!(msg.contains("fledge.dev/replaces-uid"), "{msg}");
    assert_eq!(
        cached(&root).unwrap(),
        first,
        "a re-created object rolled the cache"
    );
    // The documented annotation lets it replace the cached spec.
    let patch =
        serde_json::json!({"metadata": {"annotations": {"fledge.dev/replaces-uid": first.uid}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for(
        "the re-created spec to be cached",
        Duration::from_secs(20),
        || cached(&root).is_some_and(|c| Some(&c.uid) == created.metadata.uid.as_ref()),
    )
    .await;
    assert_eq!(cached(&root).unwrap().spec.control_plane.replicas, 3);
    stop_tx.send(()).unwrap();
    agent.await.unwrap().unwrap();
}
