//! The unpivot (the pivot engine in reverse: local cluster -> management plane) against real
//! API servers with the garbage collector running: a pivot followed by an unpivot gives back
//! exactly the objects the management plane had (content, status, finalizers, owners, labels and
//! annotations), a failure at any write converges on a re-run, and a target whose providers are
//! older than the source's is refused before any write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fledge_agent::pivot::apply::{
    Direction, Event, Options as PivotOptions, Pivot, PivotError, Retry,
};
use fledge_tests::capi::{self, Key, Seen};
use fledge_tests::cluster::{Options, TestCluster, start_or_skip};
use fledge_tests::fault::{Fault, Mode, client_with};
use fledge_tests::install::{clusterctl_inventory, install_crds};
use kube::Api;
use kube::api::{DynamicObject, PostParams};
use serde_json::{Value, json};

const F: capi::Flavor = capi::V1BETA2;

/// The management plane and the local cluster, both with the CAPI CRDs, clusterctl's inventory
/// holding `mgmt` and `local` versions of the same providers, and the garbage collector.
async fn pair(mgmt: &str, local: &str) -> Option<(TestCluster, TestCluster)> {
    let mut m = start_or_skip(Options::default()).await?;
    let mut l = start_or_skip(Options::default()).await?;
    for (c, version) in [(&mut m, mgmt), (&mut l, local)] {
        let client = c.client().await;
        install_crds(&client, &[F.crd_dir]).await.unwrap();
        clusterctl_inventory(&client, version).await.unwrap();
        c.start_controller_manager().unwrap();
    }
    Some((m, l))
}

async fn namespace(client: &kube::Client, ns: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let body = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    match api.create(&PostParams::default(), &body).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("namespace {ns}: {e}"),
    }
}

async fn run(
    source: &kube::Client,
    target: &kube::Client,
    ns: &str,
    opts: PivotOptions,
) -> (
    Result<fledge_agent::pivot::apply::Summary, PivotError>,
    Vec<Event>,
) {
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let sink = events.clone();
    let progress = move |e: &Event| sink.lock().unwrap().push(e.clone());
    let r = Pivot::new(source, target, ns, "c", opts, &progress)
        .run()
        .await;
    let e = events.lock().unwrap().clone();
    (r, e)
}

fn unpivot() -> PivotOptions {
    PivotOptions {
        direction: Direction::Unpivot,
        ..PivotOptions::default()
    }
}

/// Everything an object is, but its UID and the server's bookkeeping: the snapshot (content,
/// status, finalizers, owners by kind and name) plus labels and annotations.
type Full = BTreeMap<Key, (Seen, Value, Value)>;

async fn full(client: &kube::Client, ns: &str, keys: &[Key]) -> Full {
    let seen = capi::snapshot(client, ns, keys).await;
    let objs = capi::list_types(client, ns, keys).await;
    seen.into_iter()
        .map(|(k, s)| {
            let o = &objs[&k];
            let labels = serde_json::to_value(&o.metadata.labels).unwrap();
            let annotations = serde_json::to_value(&o.metadata.annotations).unwrap();
            (k, (s, labels, annotations))
        })
        .collect()
}

/// The differences between two [`Full`] snapshots (UIDs aside).
fn differences(want: &Full, got: &Full) -> Vec<String> {
    let mut out = Vec::new();
    for (k, (ws, wl, wa)) in want {
        let Some((gs, gl, ga)) = got.get(k) else {
            out.push(format!("{k} is missing"));
            continue;
        };
        for (what, w, g) in [
            ("content", &ws.content, &gs.content),
            ("status", &ws.status, &gs.status),
            ("labels", wl, gl),
            ("annotations", wa, ga),
        ] {
            if w != g {
                out.push(format!("{k}: {what} {g}, want {w}"));
            }
        }
        if ws.owners != gs.owners {
            out.push(format!("{k}: owners {:?}, want {:?}", gs.owners, ws.owners));
        }
        if ws.finalizers != gs.finalizers {
            out.push(format!(
                "{k}: finalizers {:?}, want {:?}",
                gs.finalizers, ws.finalizers
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pivot_then_an_unpivot_gives_back_exactly_the_original_objects() {
    let Some((m, l)) = pair("v1.13.5", "v1.13.5").await else {
        return;
    };
    let (mc, lc) = (m.client().await, l.client().await);
    let ns = "fleet";
    namespace(&mc, ns).await;
    let keys = capi::cluster(&mc, ns, "c", F, 2).await;
    let other = capi::cluster(&mc, ns, "other", F, 0).await;
    let before = full(&mc, ns, &keys).await;
    let other_before = capi::snapshot(&mc, ns, &other).await;

    let (r, _) = run(&mc, &lc, ns, PivotOptions::default()).await;
    let pivoted = r.unwrap();
    assert!(
        capi::list_types(&mc, ns, &keys)
            .await
            .keys()
            .all(|k| !keys.contains(k))
    );
    // What the local cluster holds now, as the agent would hand it back.
    let local = full(&lc, ns, &keys).await;

    let counts = Fault::never();
    let (a, b) = (
        client_with(&l.kubeconfig, &counts).await,
        client_with(&m.kubeconfig, &counts).await,
    );
    let (r, events) = run(&a, &b, ns, unpivot()).await;
    let summary = r.unwrap_or_else(|e| panic!("unpivot: {e:#}"));
    for e in &events {
        println!("{e}");
    }
    println!(
        "pivot {pivoted:?}; unpivot {summary:?}; unpivot requests: {} reads + {} writes",
        counts.reads(),
        counts.writes()
    );
    assert_eq!(summary.moved, keys.len());
    assert_eq!(summary.created, keys.len());
    assert_eq!(summary.deleted, keys.len());
    assert!(matches!(events.first(), Some(Event::Checked { .. })));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::ProvidersChecked { providers: 4 })),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Unmarked { objects } if *objects == keys.len() - 1)),
        "{events:?}"
    );
    assert!(matches!(events.last(), Some(Event::Completed)));

    // The management plane holds exactly what it held before the pivot; the local cluster
    // holds nothing of the cluster; the other cluster was never touched.
    let after = full(&mc, ns, &keys).await;
    let problems = differences(&before, &after);
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        capi::list_types(&lc, ns, &keys).await.is_empty(),
        "the local cluster still holds objects"
    );
    let other_after = capi::snapshot(&mc, ns, &other).await;
    for (k, was) in &other_before {
        assert_eq!(was.uid, other_after[k].uid, "{k} of the other cluster");
        assert_eq!(
            was.content, other_after[k].content,
            "{k} of the other cluster"
        );
    }
    // And the unpivot's own end state mirrors the pivot's: the local snapshot, moved.
    for (k, (s, ..)) in &local {
        assert_eq!(s.status, after[k].0.status, "{k}");
    }

    // The garbage collector collected nothing: read again after it had time to act.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let problems = differences(&before, &full(&mc, ns, &keys).await);
    assert!(
        problems.is_empty(),
        "after garbage collection: {problems:#?}"
    );

    // A second run finds nothing to move and writes nothing.
    let again = Fault::never();
    let (a, b) = (
        client_with(&l.kubeconfig, &again).await,
        client_with(&m.kubeconfig, &again).await,
    );
    let (r, _) = run(&a, &b, ns, unpivot()).await;
    assert!(r.unwrap().already_complete);
    assert_eq!(
        again.writes(),
        0,
        "a second run wrote: {:?}",
        again.write_log()
    );

    // And the cluster can be pivoted again (re-homing is the same engine both ways).
    let on_management = capi::snapshot(&mc, ns, &keys).await;
    let (r, _) = run(&mc, &lc, ns, PivotOptions::default()).await;
    r.unwrap();
    let problems = capi::check_moved(&mc, &lc, ns, &on_management).await;
    assert!(problems.is_empty(), "the second pivot: {problems:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_with_older_or_missing_providers_is_refused_before_any_write() {
    let Some((m, l)) = pair("v1.13.4", "v1.13.5").await else {
        return;
    };
    let (mc, lc) = (m.client().await, l.client().await);
    let ns = "fleet";
    namespace(&mc, ns).await;
    let keys = capi::cluster(&mc, ns, "c", F, 0).await;
    run(&mc, &lc, ns, PivotOptions::default()).await.0.unwrap();
    let local = capi::snapshot(&lc, ns, &keys).await;

    let counts = Fault::never();
    let (a, b) = (
        client_with(&l.kubeconfig, &counts).await,
        client_with(&m.kubeconfig, &counts).await,
    );
    let (r, _) = run(&a, &b, ns, unpivot()).await;
    let err = r.expect_err("older providers must be refused");
    let msg = err.to_string();
    println!("{msg}");
    assert!(
        matches!(err, PivotError::Providers(ref p) if p.len() == 4),
        "{err:#}"
    );
    assert!(
        msg.contains("cluster-api is v1.13.4 in the target, older than v1.13.5 in the source"),
        "{msg}"
    );
    assert!(msg.contains("nothing was changed"), "{msg}");
    assert!(err.source_untouched());
    assert_eq!(counts.writes(), 0, "{:?}", counts.write_log());

    // One provider missing from the target's inventory is refused the same way.
    let inv: Api<DynamicObject> = Api::namespaced_with(
        mc.clone(),
        "capi-system",
        &fledge_agent::clusterctl::inventory::inventory_resource(),
    );
    for name in ["cluster-api", "bootstrap-kubeadm", "control-plane-kubeadm"] {
        inv.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"version": "v1.14.0"})),
        )
        .await
        .unwrap();
    }
    inv.delete("infrastructure-docker", &Default::default())
        .await
        .unwrap();
    let (r, _) = run(&lc, &mc, ns, unpivot()).await;
    let msg = r
        .expect_err("a missing provider must be refused")
        .to_string();
    assert!(
        msg.contains("infrastructure-docker v1.13.5 is not installed in the target"),
        "{msg}"
    );
    let still = capi::snapshot(&lc, ns, &keys).await;
    for (k, was) in &local {
        assert_eq!(was.uid, still[k].uid, "{k} changed in the local cluster");
    }
    assert!(capi::list_types(&mc, ns, &keys).await.is_empty());
}

/// Writes of one clean unpivot of a fresh cluster (pivoted first), to know how many writes to
/// fail in turn.
async fn writes_of_a_clean_unpivot(m: &TestCluster, l: &TestCluster) -> u64 {
    let (mc, lc) = (m.client().await, l.client().await);
    let ns = "unpivot-reference";
    namespace(&mc, ns).await;
    capi::cluster(&mc, ns, "c", F, 1).await;
    run(&mc, &lc, ns, PivotOptions::default()).await.0.unwrap();
    let counts = Fault::never();
    let (a, b) = (
        client_with(&l.kubeconfig, &counts).await,
        client_with(&m.kubeconfig, &counts).await,
    );
    run(&a, &b, ns, unpivot()).await.0.unwrap();
    counts.writes()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unpivot_converges_after_a_failure_at_every_write() {
    let Some((m, l)) = pair("v1.13.5", "v1.13.5").await else {
        return;
    };
    let (mc, lc) = (m.client().await, l.client().await);
    let total = writes_of_a_clean_unpivot(&m, &l).await;
    assert!(total > 30, "{total}");
    let no_retry = PivotOptions {
        retry: Retry {
            attempts: 1,
            first: Duration::from_millis(1),
            cap: Duration::from_millis(1),
        },
        ..unpivot()
    };
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    // Crash: the process dies at write k (its rollback fails too; the re-run converges).
    // Once: write k fails alone (a rollback before cutover, only forward after).
    for mode in [Mode::Crash, Mode::Once] {
        for k in 1..=total {
            let ns = format!("{}-{k}", if mode == Mode::Crash { "crash" } else { "once" });
            namespace(&mc, &ns).await;
            let keys = capi::cluster(&mc, &ns, "c", F, 1).await;
            let before = full(&mc, &ns, &keys).await;
            run(&mc, &lc, &ns, PivotOptions::default()).await.0.unwrap();
            let local = capi::snapshot(&lc, &ns, &keys).await;
            let fault = Fault::new(k, mode);
            let (a, b) = (
                client_with(&l.kubeconfig, &fault).await,
                client_with(&m.kubeconfig, &fault).await,
            );
            let (r, _) = run(&a, &b, &ns, no_retry).await;
            assert!(fault.tripped(), "write {k} never happened");
            let err = r.expect_err("a failed write must fail the run");
            let kind = match &err {
                PivotError::RolledBack(_) => "rolled back",
                PivotError::RollbackFailed { .. } => "rollback failed",
                PivotError::Incomplete(_) => "incomplete",
                _ => "other",
            };
            *outcomes.entry(format!("{mode:?}: {kind}")).or_default() += 1;
            if matches!(err, PivotError::RolledBack(_)) {
                // Rolled back before cutover: the local cluster is whole and unpaused, the
                // management plane holds nothing of the cluster.
                let now = capi::snapshot(&lc, &ns, &keys).await;
                for (key, was) in &local {
                    assert_eq!(was.uid, now[key].uid, "k={k}: {key}");
                    assert_eq!(was.content, now[key].content, "k={k}: {key}");
                }
                let left = capi::list_types(&mc, &ns, &keys).await;
                assert!(
                    left.is_empty(),
                    "k={k}: target not clean: {:?}",
                    left.keys()
                );
            } else {
                assert!(kind != "other", "k={k} {mode:?}: unexpected error {err:#}");
            }
            let (r, _) = run(&lc, &mc, &ns, unpivot()).await;
            r.unwrap_or_else(|e| panic!("k={k} {mode:?}: re-run failed: {e:#}"));
            let problems = differences(&before, &full(&mc, &ns, &keys).await);
            assert!(problems.is_empty(), "k={k} {mode:?}: {problems:#?}");
            assert!(
                capi::list_types(&lc, &ns, &keys).await.is_empty(),
                "k={k} {mode:?}: the local cluster still holds objects"
            );
        }
    }
    println!("{total} writes per unpivot; outcomes: {outcomes:?}");
    for o in [
        "Crash: rollback failed",
        "Crash: incomplete",
        "Once: rolled back",
        "Once: incomplete",
    ] {
        assert!(outcomes.contains_key(o), "no {o} outcome: {outcomes:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unpivot_cli_rehomes_the_cluster_into_another_management_plane_and_journals_it() {
    // Pivoted from management plane A; `fledge-agent unpivot` on the node moves it to B.
    let Some((a, l)) = pair("v1.13.5", "v1.13.5").await else {
        return;
    };
    let Some(mut b) = start_or_skip(Options::default()).await else {
        return;
    };
    let bc = b.client().await;
    install_crds(&bc, &[F.crd_dir]).await.unwrap();
    clusterctl_inventory(&bc, "v1.14.0").await.unwrap();
    b.start_controller_manager().unwrap();
    let (ac, lc) = (a.client().await, l.client().await);
    let ns = "fleet";
    namespace(&ac, ns).await;
    namespace(&bc, ns).await;
    let keys = capi::cluster(&ac, ns, "c", F, 1).await;
    let before = full(&ac, ns, &keys).await;
    run(&ac, &lc, ns, PivotOptions::default()).await.0.unwrap();

    // The agent's configuration gives --from, --namespace and --cluster.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(dir.path().join("token"), "unused").unwrap();
    std::fs::write(dir.path().join("ca.crt"), &a.ca_pem).unwrap();
    let d = |p: &std::path::Path| p.display().to_string();
    let cfg = json!({"apiVersion": "fledge.dev/v1alpha1", "kind": "AgentConfig",
        "cluster": {"name": "c", "namespace": ns},
        "management": {"server": a.url, "tokenFile": d(&dir.path().join("token")), "caFile": d(&dir.path().join("ca.crt"))},
        "stateDir": d(&state), "metricsAddress": "127.0.0.1:9440",
        "localKubeconfig": d(&l.kubeconfig)});
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, serde_norway::to_string(&cfg).unwrap()).unwrap();
    let unpivot = |extra: &[&str]| {
        let out = std::process::Command::new(fledge_tests::binary("fledge-agent"))
            .args(["unpivot", "--config"])
            .arg(&config)
            .arg("--to")
            .arg(&b.kubeconfig)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = unpivot(&["--dry-run"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.starts_with("Unpivot plan for cluster fleet/c: 17 objects"),
        "the plan names the move: {out}"
    );
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().take(3).eq(["0", "Cluster", "c"])),
        "the plan names the objects: {out}"
    );
    assert!(
        capi::list_types(&bc, ns, &keys).await.is_empty(),
        "a dry run wrote"
    );

    // While the service's runner is mid-attempt (it holds the run lock), the unpivot waits,
    // before it journals or writes anything.
    let attempt = fledge_agent::state::runlock::try_acquire(&state)
        .unwrap()
        .expect("the run lock is free");
    let mut child = std::process::Command::new(fledge_tests::binary("fledge-agent"))
        .args(["unpivot", "--config"])
        .arg(&config)
        .arg("--to")
        .arg(&b.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, stderr_lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut err = String::new();
    let waiting = loop {
        match stderr_lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                err.push_str(&line);
                err.push('\n');
                if line.contains("waiting for the agent's current attempt to finish") {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    assert!(waiting, "the unpivot did not wait for the run lock:\n{err}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the unpivot ended while the lock was held:\n{err}"
    );
    assert!(
        capi::list_types(&bc, ns, &keys).await.is_empty(),
        "the unpivot wrote while the agent's attempt held the run lock"
    );
    assert!(
        fledge_agent::state::journal::Journal::load(&state)
            .unwrap()
            .entry(fledge_agent::state::journal::Phase::Unpivoted)
            .is_none(),
        "the unpivot journaled while the agent's attempt held the run lock"
    );
    drop(attempt);
    let done = child.wait_with_output().unwrap();
    reader.join().unwrap();
    err.extend(stderr_lines.try_iter().map(|l| l + "\n"));
    let out = String::from_utf8_lossy(&done.stdout).to_string();
    assert!(done.status.success(), "{out}\n{err}");
    println!("{err}{out}");
    assert!(err.contains("same or newer versions"), "{err}");
    assert!(out.starts_with("Unpivoted cluster fleet/c"), "{out}");
    let problems = differences(&before, &full(&bc, ns, &keys).await);
    assert!(
        problems.is_empty(),
        "on the new management plane: {problems:#?}"
    );
    assert!(capi::list_types(&lc, ns, &keys).await.is_empty());
    assert!(capi::list_types(&ac, ns, &keys).await.is_empty());
    let journal = fledge_agent::state::journal::Journal::load(&state).unwrap();
    let e = journal
        .entry(fledge_agent::state::journal::Phase::Unpivoted)
        .expect("the unpivot is journaled");
    assert_eq!(e.outcome, fledge_agent::state::journal::Outcome::Succeeded);
    assert!(
        e.message
            .as_deref()
            .is_some_and(|m| m.contains(&b.kubeconfig.display().to_string())),
        "{e:?}"
    );
    // The runner leaves a cluster unpivoted by hand alone.
    assert_eq!(
        fledge_agent::phases::next(&journal, false),
        fledge_agent::state::journal::Phase::Unpivoted
    );

    let (ok, out, err) = unpivot(&[]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("already unpivoted"), "{out}");
}
