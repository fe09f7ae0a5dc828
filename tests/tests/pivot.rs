//! Pivot discovery and plan against a real apiserver holding a realistic one-control-plane
//! cluster (v1beta2) next to a second cluster in the same namespace.

use fledge_agent::pivot::discover::discover;
use fledge_agent::pivot::plan::plan;
use fledge_tests::cluster::{Options, start_or_skip};
use fledge_tests::install::install_crds;
use kube::Api;
use kube::api::{DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};

/// Creates `obj` (owned by `owners`: (kind, name, uid, apiVersion)) and returns its uid.
async fn create(
    client: &kube::Client,
    ns: &str,
    mut obj: Value,
    owners: &[(&str, &str, &str, &str)],
) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap().to_string();
    let kind = obj["kind"].as_str().unwrap().to_string();
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let (ar, _) =
        kube::discovery::pinned_kind(client, &GroupVersionKind::gvk(group, version, &kind))
            .await
            .unwrap();
    if !owners.is_empty() {
        obj["metadata"]["ownerReferences"] = owners
            .iter()
            .map(|(k, n, u, a)| json!({"apiVersion": a, "kind": k, "name": n, "uid": u}))
            .collect();
    }
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(obj).unwrap(),
        )
        .await
        .unwrap();
    created.metadata.uid.unwrap()
}

const CAPI: &str = "cluster.x-k8s.io/v1beta2";
const KCP: &str = "controlplane.cluster.x-k8s.io/v1beta2";
const BOOT: &str = "bootstrap.cluster.x-k8s.io/v1beta2";
const INFRA: &str = "infrastructure.cluster.x-k8s.io/v1beta2";

/// One cluster as it looks on the management plane once CP-A is up.
async fn fixture(client: &kube::Client, ns: &str, name: &str) {
    let l = json!({"cluster.x-k8s.io/cluster-name": name});
    let meta = |n: &str| json!({"name": n, "labels": l});
    let cluster = create(client, ns, json!({"apiVersion": CAPI, "kind": "Cluster", "metadata": meta(name), "spec": {
        "controlPlaneRef": {"apiGroup": "controlplane.cluster.x-k8s.io", "kind": "KubeadmControlPlane", "name": format!("{name}-control-plane")},
        "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DevCluster", "name": name}}}), &[]).await;
    let own_c = [("Cluster", name, cluster.as_str(), CAPI)];
    create(client, ns, json!({"apiVersion": INFRA, "kind": "DevCluster", "metadata": {"name": name}, "spec": {"backend": {"docker": {}}}}), &own_c).await;
    let tmpl = format!("{name}-control-plane");
    create(client, ns, json!({"apiVersion": INFRA, "kind": "DevMachineTemplate", "metadata": {"name": tmpl}, "spec": {"template": {"spec": {"backend": {"docker": {}}}}}}), &own_c).await;
    let kcp = create(client, ns, json!({"apiVersion": KCP, "kind": "KubeadmControlPlane", "metadata": meta(&tmpl), "spec": {
        "replicas": 1, "version": "v1.33.4",
        "machineTemplate": {"spec": {"infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DevMachineTemplate", "name": tmpl}}}}}), &own_c).await;
    let own_kcp = [("KubeadmControlPlane", tmpl.as_str(), kcp.as_str(), KCP)];
    let m = format!("{name}-control-plane-abcde");
    let machine = create(client, ns, json!({"apiVersion": CAPI, "kind": "Machine", "metadata": meta(&m), "spec": {
        "clusterName": name, "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "KubeadmConfig", "name": m}},
        "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DevMachine", "name": m}}}), &own_kcp).await;
    let own_m = [("Machine", m.as_str(), machine.as_str(), CAPI)];
    create(client, ns, json!({"apiVersion": INFRA, "kind": "DevMachine", "metadata": meta(&m), "spec": {"backend": {"docker": {}}}}), &own_m).await;
    let kc = create(
        client,
        ns,
        json!({"apiVersion": BOOT, "kind": "KubeadmConfig", "metadata": meta(&m), "spec": {"format": "cloud-config"}}),
        &own_m,
    )
    .await;
    let own_kc = [("KubeadmConfig", m.as_str(), kc.as_str(), BOOT)];
    create(client, ns, json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta(&m), "type": "cluster.x-k8s.io/secret", "stringData": {"value": "#cloud-config\n"}}), &own_kc).await;
    for s in ["ca", "etcd", "sa", "proxy"] {
        create(client, ns, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-{s}")}, "data": {"tls.crt": "eA=="}}), &own_kcp).await;
    }
    create(client, ns, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-kubeconfig")}, "data": {"value": "eA=="}}), &own_c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_holds_exactly_the_clusters_objects_in_owner_order() {
    let Some(c) = start_or_skip(Options::default()).await else {
        return;
    };
    let client = c.client().await;
    install_crds(&client, &["cluster-api/v1.13.5"])
        .await
        .unwrap();
    let ns = "default";
    fixture(&client, ns, "c1").await;
    fixture(&client, ns, "c2").await;
    // An owner reference to an object that does not exist.
    create(&client, ns, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1-extra", "labels": {"cluster.x-k8s.io/cluster-name": "c1"}}}),
        &[("MachineSet", "gone", "00000000-0000-0000-0000-000000000000", CAPI)]).await;

    // The agent's management token (as fledge renders it, labelled for the cluster) stays.
    create(&client, ns, json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "c1-fledge-agent-token", "labels": {"cluster.x-k8s.io/cluster-name": "c1"},
                     "annotations": {"kubernetes.io/service-account.name": "c1-fledge-agent"}}}), &[]).await;

    let g = discover(&client, ns, "c1").await.unwrap();
    let p = plan(&g, ns, "c1");
    println!("{p}");
    let names: Vec<String> = p
        .groups
        .iter()
        .flat_map(|g| g.objects.iter().map(|o| format!("{}/{}", o.kind, o.name)))
        .collect();
    assert_eq!(p.total, 14, "{names:#?}");
    assert!(
        names.iter().all(|n| !n.contains("c2")),
        "another cluster's objects are never planned: {names:#?}"
    );
    // Owners come before dependants.
    let group_of = |kind: &str, name: &str| {
        p.groups
            .iter()
            .find(|g| g.objects.iter().any(|o| o.kind == kind && o.name == name))
            .map(|g| g.index)
            .unwrap()
    };
    assert_eq!(group_of("Cluster", "c1"), 0);
    assert!(
        group_of("KubeadmControlPlane", "c1-control-plane")
            < group_of("Machine", "c1-control-plane-abcde")
    );
    assert!(
        group_of("Machine", "c1-control-plane-abcde")
            < group_of("KubeadmConfig", "c1-control-plane-abcde")
    );
    assert!(
        group_of("KubeadmConfig", "c1-control-plane-abcde")
            < group_of("Secret", "c1-control-plane-abcde")
    );
    // The virtual owner is reported, not ignored.
    assert_eq!(p.virtual_owners.len(), 1);
    assert_eq!(p.virtual_owners[0].object.name, "c1-extra");
    assert!(
        p.skipped
            .iter()
            .any(|(o, why)| o.name == "c2" && why.contains("c2"))
    );
    assert!(
        p.skipped
            .iter()
            .any(|(o, why)| o.name == "c1-fledge-agent-token" && why.contains("service-account")),
        "{p}"
    );
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["total"], 14);
}

// ---------------------------------------------------------------------------------------------
// The move itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fledge_agent::pivot::apply::{
    Direction, Event, Options as PivotOptions, Pivot, PivotError, Retry,
};
use fledge_tests::capi::{self, Flavor, Key, Seen};
use fledge_tests::cluster::TestCluster;
use fledge_tests::fault::{Fault, Mode, client_with};

async fn namespace(client: &kube::Client, ns: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .unwrap();
}

/// Two clusters with `flavor`'s CRDs; the target optionally with the garbage collector running.
async fn pair(flavor: Flavor, gc: bool) -> Option<(TestCluster, TestCluster)> {
    let source = start_or_skip(Options::default()).await?;
    let mut target = start_or_skip(Options::default()).await?;
    install_crds(&source.client().await, &[flavor.crd_dir])
        .await
        .unwrap();
    install_crds(&target.client().await, &[flavor.crd_dir])
        .await
        .unwrap();
    if gc {
        // Started after the CRDs exist, so that its first discovery covers them.
        target.start_controller_manager().unwrap();
    }
    Some((source, target))
}

type Events = Arc<Mutex<Vec<Event>>>;

async fn run_pivot(
    source: &kube::Client,
    target: &kube::Client,
    ns: &str,
    cluster: &str,
    opts: PivotOptions,
) -> (
    Result<fledge_agent::pivot::apply::Summary, PivotError>,
    Vec<Event>,
) {
    let events: Events = Arc::default();
    let sink = events.clone();
    let t0 = std::time::Instant::now();
    let progress = move |e: &Event| {
        println!("{:>7.3}s {e}", t0.elapsed().as_secs_f64());
        sink.lock().unwrap().push(e.clone());
    };
    let r = Pivot::new(source, target, ns, cluster, opts, &progress)
        .run()
        .await;
    let e = events.lock().unwrap().clone();
    (r, e)
}

fn paused(obj: &DynamicObject) -> bool {
    obj.data["spec"]["paused"].as_bool() == Some(true)
}

async fn get(client: &kube::Client, ns: &str, k: &Key) -> Option<DynamicObject> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &capi::resource(&k.api_version, &k.kind));
    api.get_opt(&k.name).await.unwrap()
}

fn cluster_key(f: Flavor, name: &str) -> Key {
    Key {
        api_version: f.capi.into(),
        kind: "Cluster".into(),
        name: name.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pivot_moves_exactly_one_cluster_with_status_and_owners_under_the_garbage_collector() {
    let f = capi::V1BETA2;
    let Some((s, t)) = pair(f, true).await else {
        return;
    };
    let (sc, tc) = (s.client().await, t.client().await);
    let ns = "fleet";
    namespace(&sc, ns).await;
    let c1 = capi::cluster(&sc, ns, "c1", f, 0).await;
    let c2 = capi::cluster(&sc, ns, "c2", f, 0).await;
    assert_eq!(c1.len(), 13, "{c1:#?}");
    // An object of c1 whose owner exists nowhere: moved, with that reference dropped so that
    // the target's garbage collector does not delete it.
    create(&sc, ns, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1-extra", "labels": {"cluster.x-k8s.io/cluster-name": "c1"}}}),
        &[("MachineSet", "gone", "00000000-0000-0000-0000-000000000000", CAPI)]).await;
    let before = capi::snapshot(&sc, ns, &c1).await;
    let c2_before = capi::snapshot(&sc, ns, &c2).await;

    let counts = Fault::never();
    let (scount, tcount) = (
        client_with(&s.kubeconfig, &counts).await,
        client_with(&t.kubeconfig, &counts).await,
    );
    let (r, events) = run_pivot(&scount, &tcount, ns, "c1", PivotOptions::default()).await;
    let summary = r.unwrap();
    for e in &events {
        println!("{e}");
    }
    println!(
        "{summary:?}; {} reads + {} writes for {} objects",
        counts.reads(),
        counts.writes(),
        summary.moved
    );
    assert_eq!(summary.moved, 14);
    assert_eq!(summary.created, 14);
    assert_eq!(summary.deleted, 14);
    assert_eq!(summary.dropped_owner_refs, 1);
    assert!(summary.statuses >= 6, "{summary:?}");
    assert!(
        matches!(events.last(), Some(Event::Completed)),
        "{events:?}"
    );
    let problems = capi::check_moved(&sc, &tc, ns, &before).await;
    assert!(problems.is_empty(), "{problems:#?}");
    let extra = Key {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "c1-extra".into(),
    };
    assert!(get(&sc, ns, &extra).await.is_none());
    let moved_extra = get(&tc, ns, &extra).await.expect("c1-extra moved");
    assert!(moved_extra.metadata.owner_references.is_none());

    // The other cluster of the namespace is untouched, and not paused.
    let c2_after = capi::snapshot(&sc, ns, &c2).await;
    assert_same(&c2_before, &c2_after);
    assert!(!paused(&get(&sc, ns, &cluster_key(f, "c2")).await.unwrap()));
    for k in &c2 {
        assert!(
            get(&tc, ns, k).await.is_none(),
            "{k} of c2 reached the target"
        );
    }

    // The garbage collector runs in the target (a dangling object of a Cluster API type is
    // collected) and has not collected anything the pivot created.
    create(&tc, ns, json!({"apiVersion": capi::V1BETA2.infra, "kind": "DevMachine", "metadata": {"name": "gc-canary"}, "spec": {"backend": {"docker": {}}}}),
        &[("Machine", "gone", "00000000-0000-0000-0000-000000000001", CAPI)]).await;
    let canary = Key {
        api_version: f.infra.into(),
        kind: "DevMachine".into(),
        name: "gc-canary".into(),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while get(&tc, ns, &canary).await.is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the garbage collector never collected the canary: is it running?"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let problems = capi::check_moved(&sc, &tc, ns, &before).await;
    assert!(
        problems.is_empty(),
        "after garbage collection: {problems:#?}"
    );
    assert!(
        get(&tc, ns, &extra).await.is_some(),
        "c1-extra was collected"
    );

    // A second run does nothing.
    let again = Fault::never();
    let (scount, tcount) = (
        client_with(&s.kubeconfig, &again).await,
        client_with(&t.kubeconfig, &again).await,
    );
    let (r, _) = run_pivot(&scount, &tcount, ns, "c1", PivotOptions::default()).await;
    assert!(r.unwrap().already_complete);
    assert_eq!(again.writes(), 0, "a second run wrote");
}

fn assert_same(a: &BTreeMap<Key, Seen>, b: &BTreeMap<Key, Seen>) {
    assert_eq!(a.len(), b.len());
    for (k, x) in a {
        let y = &b[k];
        assert_eq!(x.uid, y.uid, "{k}");
        assert_eq!(x.status, y.status, "{k}");
        assert_eq!(x.content, y.content, "{k}");
        assert_eq!(x.finalizers, y.finalizers, "{k}");
        assert_eq!(x.owners, y.owners, "{k}");
    }
}

fn agent_bin() -> std::path::PathBuf {
    fledge_tests::binary("fledge-agent")
}

#[tokio::test(flavor = "multi_thread")]
async fn pivot_cli_v1beta1_fails_fast_on_missing_crds_then_moves_and_is_idempotent() {
    let f = capi::V1BETA1;
    let Some(s) = start_or_skip(Options::default()).await else {
        return;
    };
    let Some(t) = start_or_skip(Options::default()).await else {
        return;
    };
    let (sc, tc) = (s.client().await, t.client().await);
    install_crds(&sc, &[f.crd_dir]).await.unwrap();
    let ns = "legacy";
    namespace(&sc, ns).await;
    let keys = capi::cluster(&sc, ns, "old", f, 2).await;
    let before = capi::snapshot(&sc, ns, &keys).await;
    let pivot = || {
        let out = std::process::Command::new(agent_bin())
            .args(["pivot", "--from"])
            .arg(&s.kubeconfig)
            .arg("--to")
            .arg(&t.kubeconfig)
            .args(["--namespace", ns, "--cluster", "old"])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // The target has no Cluster API CRDs: fail before any write, source untouched.
    let (ok, _, err) = pivot();
    assert!(!ok);
    assert!(err.contains("does not serve"), "{err}");
    assert!(err.contains("KubeadmControlPlane"), "{err}");
    assert_same(&before, &capi::snapshot(&sc, ns, &keys).await);
    assert!(!paused(
        &get(&sc, ns, &cluster_key(f, "old")).await.unwrap()
    ));

    install_crds(&tc, &[f.crd_dir]).await.unwrap();
    let (ok, out, err) = pivot();
    assert!(ok, "{out}\n{err}");
    println!("{err}{out}");
    assert!(err.contains("group 1/"), "progress per group: {err}");
    assert!(err.contains("cutover"), "{err}");
    assert!(
        out.contains(&format!("{} objects moved", keys.len())),
        "{out}"
    );
    assert!(out.contains("requests"), "{out}");
    let problems = capi::check_moved(&sc, &tc, ns, &before).await;
    assert!(problems.is_empty(), "{problems:#?}");

    let (ok, out, err) = pivot();
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("already pivoted"), "{out}");
}

/// The writes of one undisturbed pivot of a fresh one-control-plane cluster.
async fn writes_of_a_clean_pivot(s: &TestCluster, t: &TestCluster, f: Flavor) -> u64 {
    let sc = s.client().await;
    let ns = "crash-reference";
    namespace(&sc, ns).await;
    capi::cluster(&sc, ns, "c", f, 0).await;
    let counts = Fault::never();
    let (a, b) = (
        client_with(&s.kubeconfig, &counts).await,
        client_with(&t.kubeconfig, &counts).await,
    );
    run_pivot(&a, &b, ns, "c", PivotOptions::default())
        .await
        .0
        .unwrap();
    counts.writes()
}

#[tokio::test(flavor = "multi_thread")]
async fn pivot_converges_after_a_failure_at_every_write() {
    let f = capi::V1BETA2;
    let Some((s, t)) = pair(f, false).await else {
        return;
    };
    let (sc, tc) = (s.client().await, t.client().await);
    let total = writes_of_a_clean_pivot(&s, &t, f).await;
    assert!(total > 20, "{total}");
    let no_retry = PivotOptions {
        retry: Retry {
            attempts: 1,
            first: Duration::from_millis(1),
            cap: Duration::from_millis(1),
        },
        ..PivotOptions::default()
    };
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for mode in Mode::ALL {
        for k in 1..=total {
            let tag = match mode {
                Mode::Crash => "crash",
                Mode::Once => "once",
                Mode::CrashAnswerLost => "crash-lost",
                Mode::OnceAnswerLost => "once-lost",
            };
            let ns = format!("{tag}-{k}");
            namespace(&sc, &ns).await;
            let keys = capi::cluster(&sc, &ns, "c", f, 0).await;
            let before = capi::snapshot(&sc, &ns, &keys).await;
            let fault = Fault::new(k, mode);
            let (a, b) = (
                client_with(&s.kubeconfig, &fault).await,
                client_with(&t.kubeconfig, &fault).await,
            );
            let (r, _) = run_pivot(&a, &b, &ns, "c", no_retry).await;
            assert!(fault.tripped(), "write {k} never happened");
            let failed = fault.write_log()[k as usize - 1].clone();
            let err = match r {
                // The cutover mark landed but its answer was lost: the rollback finds the
                // target past cutover and completes the move instead of undoing it.
                Ok(_) => {
                    assert!(
                        mode == Mode::OnceAnswerLost && failed.ends_with("/clusters/c"),
                        "k={k} {mode:?}: a failed write ({failed}) did not fail the run"
                    );
                    *outcomes.entry(format!("{mode:?}: completed")).or_default() += 1;
                    let problems = capi::check_moved(&sc, &tc, &ns, &before).await;
                    assert!(problems.is_empty(), "k={k} {mode:?}: {problems:#?}");
                    continue;
                }
                Err(e) => e,
            };
            let kind = match &err {
                PivotError::RolledBack(_) => "rolled back",
                PivotError::RollbackFailed { .. } => "rollback failed",
                PivotError::Incomplete(_) => "incomplete",
                _ => "other",
            };
            *outcomes.entry(format!("{mode:?}: {kind}")).or_default() += 1;
            if matches!(err, PivotError::RolledBack(_)) {
                // Abort before cutover: source whole and unpaused, target clean.
                assert_same(&before, &capi::snapshot(&sc, &ns, &keys).await);
                assert!(!paused(&get(&sc, &ns, &cluster_key(f, "c")).await.unwrap()));
                let left = capi::list_types(&tc, &ns, &keys).await;
                assert!(
                    left.is_empty(),
                    "k={k}: target not clean: {:?}",
                    left.keys()
                );
            } else {
                assert!(
                    !matches!(kind, "other"),
                    "k={k} {mode:?}: unexpected error {err:#}"
                );
            }
            // A fresh engine, no injected failures: the same end state.
            let (r, _) = run_pivot(&sc, &tc, &ns, "c", PivotOptions::default()).await;
            r.unwrap_or_else(|e| panic!("k={k} {mode:?}: re-run failed: {e:#}"));
            let problems = capi::check_moved(&sc, &tc, &ns, &before).await;
            assert!(problems.is_empty(), "k={k} {mode:?}: {problems:#?}");
        }
    }
    println!("{total} writes per pivot; outcomes: {outcomes:?}");
    assert!(outcomes.keys().any(|o| o.contains("rolled back")));
    assert!(outcomes.keys().any(|o| o.contains("incomplete")));
    assert!(outcomes.keys().any(|o| o.starts_with("CrashAnswerLost")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_is_recovered_within_the_run_by_reading_back() {
    // With retries on, a write whose answer is lost is retried: a create meets 409
    // AlreadyExists and reads the object back, a delete meets 404, a patch is re-applied.
    // Every such k must end in one successful run with the exact end state.
    let f = capi::V1BETA2;
    let Some((s, t)) = pair(f, false).await else {
        return;
    };
    let (sc, tc) = (s.client().await, t.client().await);
    let total = writes_of_a_clean_pivot(&s, &t, f).await;
    let quick = PivotOptions {
        retry: Retry {
            attempts: 4,
            first: Duration::from_millis(5),
            cap: Duration::from_millis(20),
        },
        ..PivotOptions::default()
    };
    let mut creates_lost = 0;
    for k in 1..=total {
        let ns = format!("lost-{k}");
        namespace(&sc, &ns).await;
        let keys = capi::cluster(&sc, &ns, "c", f, 0).await;
        let before = capi::snapshot(&sc, &ns, &keys).await;
        let fault = Fault::new(k, Mode::OnceAnswerLost);
        let (a, b) = (
            client_with(&s.kubeconfig, &fault).await,
            client_with(&t.kubeconfig, &fault).await,
        );
        let (r, _) = run_pivot(&a, &b, &ns, "c", quick).await;
        assert!(fault.tripped(), "write {k} never happened");
        if fault.write_log()[k as usize - 1].starts_with("POST ") {
            creates_lost += 1;
        }
        r.unwrap_or_else(|e| panic!("k={k} ({}): {e:?}", fault.write_log()[k as usize - 1]));
        let problems = capi::check_moved(&sc, &tc, &ns, &before).await;
        assert!(problems.is_empty(), "k={k}: {problems:#?}");
    }
    assert!(
        creates_lost > 5,
        "the 409 read-back path was exercised {creates_lost} times"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_management_role_is_enough_to_pivot() {
    use fledge_generator::render::Templates;
    use fledge_generator::{management, spec};
    let f = capi::V1BETA2;
    let Some((s, t)) = pair(f, false).await else {
        return;
    };
    let (sc, tc) = (s.client().await, t.client().await);
    let ns = "scoped";
    namespace(&sc, ns).await;
    // The Roles fledge renders for the agent (what it always needs, and its move rights, bound
    // while it moves), bound to a user with no other rights.
    let request = fledge_tests::workspace_root().join("tests/cases/vsphere-v1beta2/input.yaml");
    let checked = spec::load_request(&request).unwrap();
    let objects = management::objects(&checked, &Templates::embedded()).unwrap();
    let rbac = |kind: &str| capi::resource("rbac.authorization.k8s.io/v1", kind);
    let access = fledge_tests::access::for_test_user(&objects);
    let namespaced: Vec<&serde_json::Value> = access
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "RoleBinding")
        .collect();
    assert_eq!(namespaced.len(), 4, "two Roles and their bindings");
    for o in namespaced {
        let mut o = o.clone();
        o["metadata"]["namespace"] = json!(ns);
        let kind = o["kind"].as_str().unwrap().to_string();
        Api::<DynamicObject>::namespaced_with(sc.clone(), ns, &rbac(&kind))
            .create(&PostParams::default(), &serde_json::from_value(o).unwrap())
            .await
            .unwrap();
    }
    // A management cluster as `clusterctl init --infrastructure vsphere` leaves it: the
    // inventory CRD and every CAPV CRD (the supervisor-mode vmware.infrastructure group too),
    // with objects of both groups the Role does not grant in the namespace.
    let mut extra = fledge_tests::install::module_crds(
        "cluster-api",
        &["cmd/clusterctl/config/crd/bases"],
        "cluster-api",
    )
    .unwrap();
    extra.extend(
        fledge_tests::install::module_crds(
            "capv",
            &["config/default/crd/bases", "config/supervisor/crd/bases"],
            "infrastructure-vsphere",
        )
        .unwrap(),
    );
    let crd_storage: BTreeMap<String, String> = extra
        .iter()
        .chain(
            fledge_tests::crds::read_dir(&fledge_tests::crds::crds_dir().join(f.crd_dir))
                .unwrap()
                .iter()
                .map(|c| &c.crd),
        )
        .filter_map(|c| {
            let group = c["spec"]["group"].as_str()?;
            let kind = c["spec"]["names"]["kind"].as_str()?;
            let v = c["spec"]["versions"]
                .as_array()?
                .iter()
                .find(|v| v["storage"] == true)?;
            Some((format!("{group}/{kind}"), v["name"].as_str()?.to_string()))
        })
        .collect();
    fledge_tests::install::create_and_wait(&sc, extra)
        .await
        .unwrap();
    capi::create(&sc, ns, json!({"apiVersion": "clusterctl.cluster.x-k8s.io/v1alpha3", "kind": "Provider",
        "metadata": {"name": "infrastructure-vsphere"}, "providerName": "vsphere", "type": "InfrastructureProvider", "version": "v1.16.1"}), &[], None).await;
    capi::create(&sc, ns, json!({"apiVersion": "vmware.infrastructure.cluster.x-k8s.io/v1beta1", "kind": "VSphereMachineTemplate",
        "metadata": {"name": "c1-supervisor", "labels": {"cluster.x-k8s.io/cluster-name": "c1"}},
        "spec": {"template": {"spec": {"className": "small", "imageName": "ubuntu"}}}}), &[], None).await;
    let keys = capi::cluster(&sc, ns, "c1", f, 1).await;
    let before = capi::snapshot(&sc, ns, &keys).await;
    let scoped = client_with(&s.user_kubeconfig, &Fault::never()).await;
    // The storage version is found from discovery's storageVersionHash: the hash the server
    // publishes is the one fledge computes for the storage version.
    let published = scoped
        .list_api_group_resources(f.capi)
        .await
        .unwrap()
        .resources
        .into_iter()
        .find(|r| r.name == "clusters")
        .and_then(|r| r.storage_version_hash)
        .unwrap();
    let (g, v) = f.capi.split_once('/').unwrap();
    assert_eq!(
        published,
        fledge_agent::pivot::discover::storage_version_hash(g, v, "Cluster")
    );
    // Discovery through the Role: only its groups, each type at its storage version.
    let types = fledge_agent::pivot::discover::move_types(&scoped)
        .await
        .unwrap();
    assert!(!types.is_empty());
    for t in &types {
        assert!(
            fledge_generator::capi::MOVED_API_GROUPS.contains(&t.group.as_str()),
            "{t:?}"
        );
        let key = format!("{}/{}", t.group, t.kind);
        if let Some(storage) = crd_storage.get(&key) {
            assert_eq!(&t.version, storage, "{key} not at its storage version");
        }
    }
    // The user really is scoped: it may not list CRDs.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(scoped.clone());
    assert!(
        matches!(crds.list(&Default::default()).await, Err(kube::Error::Api(e)) if e.code == 403)
    );
    // As the agent runs it: the pivot engine with the scoped identity as the source.
    let quiet = |_: &Event| {};
    let pivot = |cluster: &'static str| {
        Pivot::new(&scoped, &tc, ns, cluster, PivotOptions::default(), &quiet)
    };
    // A cluster that does not exist: a clear error naming it.
    let err = pivot("nope").run().await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    // The dry run plans every object, and changes nothing.
    let counted = Fault::never();
    let planned = Pivot::plan(
        &client_with(&s.user_kubeconfig, &counted).await,
        ns,
        "c1",
        Direction::Pivot,
    )
    .await
    .unwrap();
    assert_eq!(planned.total, keys.len());
    assert_eq!(counted.writes(), 0);
    let summary = pivot("c1").run().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(summary.moved, keys.len());
    let problems = capi::check_moved(&sc, &tc, ns, &before).await;
    assert!(problems.is_empty(), "{problems:#?}");
    // Run again (an agent restarted after the pivot): already complete, nothing written.
    let counted = Fault::never();
    let (a, b) = (
        client_with(&s.user_kubeconfig, &counted).await,
        client_with(&t.kubeconfig, &counted).await,
    );
    let again = Pivot::new(&a, &b, ns, "c1", PivotOptions::default(), &quiet)
        .run()
        .await
        .unwrap();
    assert!(again.already_complete);
    assert_eq!(counted.writes(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_cluster_class_is_paused_copied_and_kept_while_other_clusters_use_it() {
    let f = capi::V1BETA2;
    let Some((s, t)) = pair(f, false).await else {
        return;
    };
    let (sc, tc) = (s.client().await, t.client().await);
    let ns = "classy";
    namespace(&sc, ns).await;
    let key = |av: &str, kind: &str, name: &str| Key {
        api_version: av.into(),
        kind: kind.into(),
        name: name.into(),
    };
    let (cc_key, cc) = capi::create(&sc, ns, json!({"apiVersion": CAPI, "kind": "ClusterClass", "metadata": {"name": "cc"}, "spec": {
        "infrastructure": {"templateRef": {"apiVersion": INFRA, "kind": "DevClusterTemplate", "name": "cc-infra"}},
        "controlPlane": {"templateRef": {"apiVersion": KCP, "kind": "KubeadmControlPlaneTemplate", "name": "cc-cp"}}}}), &[], None).await;
    let (infra_key, _) = capi::create(
        &sc,
        ns,
        json!({"apiVersion": INFRA, "kind": "DevClusterTemplate", "metadata": {"name": "cc-infra"},
        "spec": {"template": {"spec": {"backend": {"docker": {}}}}}}),
        &[&cc],
        None,
    )
    .await;
    let (cp_key, _) = capi::create(&sc, ns, json!({"apiVersion": KCP, "kind": "KubeadmControlPlaneTemplate", "metadata": {"name": "cc-cp"},
        "spec": {"template": {"spec": {"kubeadmConfigSpec": {"format": "cloud-config"}}}}}), &[&cc], None).await;
    let class_keys = vec![cc_key.clone(), infra_key, cp_key];
    let mut cluster_keys = BTreeMap::new();
    for name in ["t1", "t2"] {
        let (ck, c) = capi::create(
            &sc,
            ns,
            json!({"apiVersion": CAPI, "kind": "Cluster", "metadata": {"name": name},
            "spec": {"topology": {"classRef": {"name": "cc"}, "version": "v1.33.4"}}}),
            &[],
            None,
        )
        .await;
        let (sk, _) = capi::create(&sc, ns, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-kubeconfig")},
            "data": {"value": "eA=="}}), &[&c], None).await;
        cluster_keys.insert(name, vec![ck, sk]);
    }
    let class_before = capi::snapshot(&sc, ns, &class_keys).await;
    let t1_before = capi::snapshot(&sc, ns, &cluster_keys["t1"]).await;
    let t2_before = capi::snapshot(&sc, ns, &cluster_keys["t2"]).await;

    // The plan copies the class and its templates, and keeps them in the source.
    let g = discover(&sc, ns, "t1").await.unwrap();
    let p = plan(&g, ns, "t1");
    println!("{p}");
    assert_eq!(p.total, 5, "{p}");
    assert_eq!(p.kept_in_source.len(), 3, "{p}");
    assert!(
        p.kept_in_source.iter().all(|(_, why)| why.contains("t2")),
        "{p}"
    );

    let recorded = Fault::never();
    let (a, b) = (
        client_with(&s.kubeconfig, &recorded).await,
        client_with(&t.kubeconfig, &recorded).await,
    );
    let (r, _) = run_pivot(&a, &b, ns, "t1", PivotOptions::default()).await;
    r.unwrap_or_else(|e| panic!("{e:#}"));
    // The class was paused before the first copy was created, and unpaused (it stays) before
    // the first delete.
    let log = recorded.write_log();
    let at = |pred: &dyn Fn(&String) -> bool| log.iter().position(pred);
    let class_patches: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, w)| w.starts_with("PATCH ") && w.ends_with("/clusterclasses/cc"))
        .map(|(i, _)| i)
        .collect();
    let first_create =
        at(&|w| w.starts_with("POST ") && w.contains("/namespaces/classy/")).unwrap();
    let last_create = log
        .iter()
        .rposition(|w| w.starts_with("POST ") && w.contains("/namespaces/classy/"))
        .unwrap();
    let first_delete = at(&|w| w.starts_with("DELETE ")).unwrap();
    assert_eq!(class_patches.len(), 2, "{log:#?}");
    assert!(class_patches[0] < first_create, "{log:#?}");
    assert!(
        last_create < class_patches[1] && class_patches[1] < first_delete,
        "{log:#?}"
    );
    let problems = capi::check_moved(&sc, &tc, ns, &t1_before).await;
    assert!(problems.is_empty(), "{problems:#?}");
    // The class is in both, unpaused in both, and unchanged in the source.
    assert_same(&class_before, &capi::snapshot(&sc, ns, &class_keys).await);
    for (side, c) in [("source", &sc), ("target", &tc)] {
        let got = get(c, ns, &cc_key)
            .await
            .unwrap_or_else(|| panic!("ClusterClass in the {side}"));
        let ann = got.metadata.annotations.clone().unwrap_or_default();
        assert!(
            !ann.contains_key("cluster.x-k8s.io/paused"),
            "{side}: {ann:?}"
        );
        assert!(
            !ann.contains_key("pivot.fledge.dev/paused"),
            "{side}: {ann:?}"
        );
    }
    assert_same(
        &t2_before,
        &capi::snapshot(&sc, ns, &cluster_keys["t2"]).await,
    );

    // The last user moves: the class leaves the source, and the target's copy serves both.
    let (r, _) = run_pivot(&sc, &tc, ns, "t2", PivotOptions::default()).await;
    r.unwrap_or_else(|e| panic!("{e:#}"));
    let mut all_before = t2_before.clone();
    all_before.extend(class_before.clone());
    all_before.extend(t1_before.clone());
    let problems = capi::check_moved(&sc, &tc, ns, &all_before).await;
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(get(&tc, ns, &key(CAPI, "Cluster", "t1")).await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_shared_with_another_cluster_is_copied_and_kept_in_the_source() {
    let f = capi::V1BETA2;
    let Some((s, t)) = pair(f, false).await else {
        return;
    };
    let (sc, tc) = (s.client().await, t.client().await);
    let ns = "sharing";
    namespace(&sc, ns).await;
    let a = capi::cluster(&sc, ns, "a", f, 0).await;
    let b = capi::cluster(&sc, ns, "b", f, 0).await;
    let owner = |client: &kube::Client, k: Key| {
        let client = client.clone();
        async move {
            let o = get(&client, ns, &k).await.unwrap();
            (
                k.kind.clone(),
                k.name.clone(),
                o.metadata.uid.clone().unwrap(),
                k.api_version.clone(),
            )
        }
    };
    let ca = owner(&sc, cluster_key(f, "a")).await;
    let cb = owner(&sc, cluster_key(f, "b")).await;
    // A machine template both clusters own, and a Secret the template owns.
    let (tmpl_key, tmpl) = capi::create(&sc, ns, json!({"apiVersion": f.infra, "kind": "DevMachineTemplate",
        "metadata": {"name": "shared-workers"}, "spec": {"template": {"spec": {"backend": {"docker": {}}}}}}), &[&ca, &cb], None).await;
    let (secret_key, _) = capi::create(
        &sc,
        ns,
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "shared-workers-creds"}, "data": {"k": "eA=="}}),
        &[&tmpl],
        None,
    )
    .await;
    let shared = vec![tmpl_key.clone(), secret_key.clone()];
    let shared_before = capi::snapshot(&sc, ns, &shared).await;
    let a_before = capi::snapshot(&sc, ns, &a).await;
    let b_before = capi::snapshot(&sc, ns, &b).await;

    let p = plan(&discover(&sc, ns, "a").await.unwrap(), ns, "a");
    println!("{p}");
    let kept: Vec<String> = p
        .kept_in_source
        .iter()
        .map(|(o, _)| o.to_string())
        .collect();
    assert_eq!(
        kept,
        vec![
            "DevMachineTemplate/shared-workers",
            "Secret/shared-workers-creds"
        ],
        "{p}"
    );
    assert!(
        p.kept_in_source.iter().all(|(_, why)| why.contains("b")),
        "{p}"
    );

    let (r, _) = run_pivot(&sc, &tc, ns, "a", PivotOptions::default()).await;
    r.unwrap_or_else(|e| panic!("{e:#}"));
    // a's own objects moved exactly (the shared ones are checked below).
    let problems: Vec<String> = capi::check_moved(&sc, &tc, ns, &a_before)
        .await
        .into_iter()
        .filter(|p| !p.contains("/shared-workers"))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    // The shared objects are still in the source for b (with b's owner), and copied.
    for k in &shared {
        let src = get(&sc, ns, k)
            .await
            .unwrap_or_else(|| panic!("{k} left the source"));
        assert_eq!(
            src.metadata.uid,
            Some(shared_before[k].uid.clone()),
            "{k} was re-created"
        );
        assert!(get(&tc, ns, k).await.is_some(), "{k} not copied");
    }
    let src_tmpl = get(&sc, ns, &tmpl_key).await.unwrap();
    assert!(
        src_tmpl
            .metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .any(|o| o.uid == cb.2),
        "b's owner reference is gone from the source template"
    );
    assert_same(&b_before, &capi::snapshot(&sc, ns, &b).await);
    // A rollback of a later pivot never deletes them from the target: covered by the plan's
    // shared set; here, the second cluster moves and the shared objects leave the source.
    let (r, _) = run_pivot(&sc, &tc, ns, "b", PivotOptions::default()).await;
    r.unwrap_or_else(|e| panic!("{e:?}"));
    for k in &shared {
        assert!(get(&sc, ns, k).await.is_none(), "{k} still in the source");
        assert!(get(&tc, ns, k).await.is_some(), "{k} not in the target");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_survives_for_a_type_without_a_status_subresource() {
    let f = capi::V1BETA2;
    let Some((s, t)) = pair(f, false).await else {
        return;
    };
    let (sc, tc) = (s.client().await, t.client().await);
    let ns = "widgets";
    namespace(&sc, ns).await;
    // A provider type clusterctl would move (move label on the CRD), with no status subresource.
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.addons.example.fledge.dev", "labels": {"clusterctl.cluster.x-k8s.io/move": ""}},
        "spec": {"group": "addons.example.fledge.dev", "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
    for c in [&sc, &tc] {
        fledge_tests::install::create_and_wait(c, vec![crd.clone()])
            .await
            .unwrap();
    }
    capi::cluster(&sc, ns, "w", f, 0).await;
    let status = json!({"ready": true, "observed": {"size": 3}});
    let (wk, _) = capi::create(
        &sc,
        ns,
        json!({"apiVersion": "addons.example.fledge.dev/v1", "kind": "Widget",
        "metadata": {"name": "w-widget", "labels": {"cluster.x-k8s.io/cluster-name": "w"}},
        "spec": {"size": 3}, "status": status}),
        &[],
        None,
    )
    .await;
    assert_eq!(get(&sc, ns, &wk).await.unwrap().data["status"], status);
    let (r, _) = run_pivot(&sc, &tc, ns, "w", PivotOptions::default()).await;
    r.unwrap_or_else(|e| panic!("{e:#}"));
    let moved = get(&tc, ns, &wk).await.expect("widget moved");
    assert_eq!(moved.data["status"], status, "status lost in the target");
    assert!(get(&sc, ns, &wk).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_pages_through_a_large_namespace_and_reads_member_bodies() {
    let Some(c) = start_or_skip(Options::default()).await else {
        return;
    };
    let client = c.client().await;
    install_crds(&client, &["cluster-api/v1.13.5"])
        .await
        .unwrap();
    let ns = "default";
    fixture(&client, ns, "big").await;
    // More unrelated ConfigMaps than one page holds (Helm keeps releases like this).
    let n = fledge_agent::pivot::discover::PAGE_SIZE as usize + 40;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &capi::resource("v1", "ConfigMap"));
    futures::future::join_all((0..n).map(|i| {
        let api = api.clone();
        async move {
            api.create(
                &PostParams::default(),
                &serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("release-{i:04}")}, "data": {"v": "x".repeat(1000)}}))
                .unwrap(),
            )
            .await
            .unwrap();
        }
    }))
    .await;
    // The last page holds a member.
    create(
        &client,
        ns,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "zz-big-settings", "labels": {"cluster.x-k8s.io/cluster-name": "big"}},
        "data": {"setting": "kept"}}),
        &[],
    )
    .await;
    let g = discover(&client, ns, "big").await.unwrap();
    let member = g
        .members
        .iter()
        .map(|u| &g.nodes[u])
        .find(|m| m.obj.name == "zz-big-settings")
        .expect("the member on the last page was found");
    assert_eq!(
        member.data["data"]["setting"], "kept",
        "the member's body was read"
    );
    let configmaps = g
        .nodes
        .values()
        .filter(|m| m.obj.kind == "ConfigMap")
        .count();
    assert!(configmaps > n, "{configmaps} ConfigMaps listed, {n} exist");
    // Non-members were listed by metadata only: no data held for them.
    assert!(
        g.nodes
            .values()
            .filter(|m| m.obj.name.starts_with("release-"))
            .all(|m| m.data.get("data").is_none())
    );
    assert!(
        !g.members
            .iter()
            .any(|u| g.nodes[u].obj.name.starts_with("release-"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pivot_pauses_first_waits_for_block_move_and_refuses_objects_being_deleted() {
    let f = capi::V1BETA2;
    let Some((s, t)) = pair(f, false).await else {
        return;
    };
    let (sc, tc) = (s.client().await, t.client().await);
    let ns = "blocky";
    namespace(&sc, ns).await;
    let keys = capi::cluster(&sc, ns, "c1", f, 0).await;
    let dev_machine = keys
        .iter()
        .find(|k| k.kind == "DevMachine")
        .unwrap()
        .clone();
    let machines: Api<DynamicObject> = Api::namespaced_with(
        sc.clone(),
        ns,
        &capi::resource(&dev_machine.api_version, "DevMachine"),
    );
    let annotate = |v: Value| {
        let machines = machines.clone();
        let name = dev_machine.name.clone();
        async move {
            machines
                .patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"clusterctl.cluster.x-k8s.io/block-move": v}}})),
                )
                .await
                .unwrap();
        }
    };
    annotate(json!("true")).await;
    let events: Events = Arc::default();
    let sink = events.clone();
    let progress = move |e: &Event| {
        println!("{e}");
        sink.lock().unwrap().push(e.clone());
    };
    let pivot = Pivot::new(&sc, &tc, ns, "c1", PivotOptions::default(), &progress);
    let driver = async {
        // Paused, then blocked: nothing is copied while the provider holds the move.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let blocked = events
                .lock()
                .unwrap()
                .iter()
                .any(|e| matches!(e, Event::Blocked { .. }));
            if blocked {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never blocked");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(paused(&get(&sc, ns, &cluster_key(f, "c1")).await.unwrap()));
        assert!(
            get(&tc, ns, &cluster_key(f, "c1")).await.is_none(),
            "copied while blocked"
        );
        // Created after the pause, before the move: discovery runs after the pause, so it moves.
        create(
            &sc,
            ns,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c1-late", "labels": {"cluster.x-k8s.io/cluster-name": "c1"}}}),
            &[],
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        annotate(Value::Null).await;
    };
    let (r, ()) = tokio::join!(pivot.run(), driver);
    r.unwrap_or_else(|e| panic!("{e:?}"));
    let late = Key {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "c1-late".into(),
    };
    assert!(
        get(&tc, ns, &late).await.is_some(),
        "the late member was not moved"
    );
    assert!(get(&tc, ns, &dev_machine).await.is_some());

    // An object of the cluster being deleted (a finalizer holds it): refused before any copy.
    let keys = capi::cluster(&sc, ns, "c2", f, 0).await;
    create(
        &sc,
        ns,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c2-going", "labels": {"cluster.x-k8s.io/cluster-name": "c2"},
                     "finalizers": ["example.fledge.dev/hold"]}}),
        &[],
    )
    .await;
    let cms: Api<DynamicObject> =
        Api::namespaced_with(sc.clone(), ns, &capi::resource("v1", "ConfigMap"));
    cms.delete("c2-going", &Default::default()).await.unwrap();
    let (r, _) = run_pivot(&sc, &tc, ns, "c2", PivotOptions::default()).await;
    let err = r.expect_err("an object being deleted must stop the pivot");
    let chain = format!("{err:?}");
    assert!(
        chain.contains("BeingDeleted") && chain.contains("ConfigMap/c2-going"),
        "{chain}"
    );
    assert!(err.source_untouched(), "{err}");
    assert!(
        !paused(&get(&sc, ns, &cluster_key(f, "c2")).await.unwrap()),
        "left paused"
    );
    for k in &keys {
        assert!(get(&tc, ns, k).await.is_none(), "{k} reached the target");
    }
    // Once the deletion finishes, the pivot goes through.
    cms.patch(
        "c2-going",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    let (r, _) = run_pivot(&sc, &tc, ns, "c2", PivotOptions::default()).await;
    r.unwrap_or_else(|e| panic!("{e:?}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_owned_by_a_cluster_scoped_object_is_refused_before_any_write() {
    let f = capi::V1BETA2;
    let Some((s, t)) = pair(f, false).await else {
        return;
    };
    let (sc, tc) = (s.client().await, t.client().await);
    let ns = "scoped-owner";
    namespace(&sc, ns).await;
    let keys = capi::cluster(&sc, ns, "c1", f, 0).await;
    // ExtensionConfig (runtime.cluster.x-k8s.io) is cluster-scoped.
    create(
        &sc,
        ns,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c1-hooked", "labels": {"cluster.x-k8s.io/cluster-name": "c1"}}}),
        &[(
            "ExtensionConfig",
            "hooks",
            "00000000-0000-0000-0000-00000000e0c0",
            "runtime.cluster.x-k8s.io/v1beta2",
        )],
    )
    .await;
    let p = plan(&discover(&sc, ns, "c1").await.unwrap(), ns, "c1");
    println!("{p}");
    assert_eq!(p.refused.len(), 1, "{p}");
    assert!(
        p.refused[0]
            .1
            .contains("cluster-scoped ExtensionConfig/hooks"),
        "{p}"
    );
    let recorded = Fault::never();
    let (a, b) = (
        client_with(&s.kubeconfig, &recorded).await,
        client_with(&t.kubeconfig, &recorded).await,
    );
    let (r, _) = run_pivot(&a, &b, ns, "c1", PivotOptions::default()).await;
    let err = r.expect_err("refused");
    assert!(matches!(err, PivotError::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("ConfigMap/c1-hooked"), "{err}");
    assert_eq!(recorded.writes(), 0, "{:?}", recorded.write_log());
    for k in &keys {
        assert!(get(&tc, ns, k).await.is_none());
    }
}
