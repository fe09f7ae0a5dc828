//! Two moves of one cluster at the same time, against real API servers (both running the
//! garbage collector): run A is held before its k-th write, run B runs to its end meanwhile,
//! then A goes on; for every k of a clean run, for a pivot and for an unpivot. Exactly one run
//! moves the cluster, the other refuses (the move lock is held) or finds the work done, and the
//! end state is exact: every object once, on the right side, nothing lost on either side.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fledge_agent::pivot::apply::{
    Direction, LOCK, Options as PivotOptions, Pivot, PivotError, Retry, Summary,
};
use fledge_tests::capi::{self, Key, Seen};
use fledge_tests::cluster::{Options, TestCluster, start_or_skip};
use fledge_tests::fault::{Fault, Mode, client_with};
use fledge_tests::install::{clusterctl_inventory, install_crds};
use kube::Api;
use kube::api::{DynamicObject, PostParams};
use serde_json::{Value, json};

const F: capi::Flavor = capi::V1BETA2;

/// The management plane and the local cluster: the CAPI CRDs, clusterctl's inventory and the
/// garbage collector on both.
async fn pair() -> Option<(TestCluster, TestCluster)> {
    let mut m = start_or_skip(Options::default()).await?;
    let mut l = start_or_skip(Options::default()).await?;
    for c in [&mut m, &mut l] {
        let client = c.client().await;
        install_crds(&client, &[F.crd_dir]).await.unwrap();
        clusterctl_inventory(&client, "v1.13.5").await.unwrap();
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

fn opts(direction: Direction, parallelism: usize) -> PivotOptions {
    PivotOptions {
        direction,
        parallelism,
        retry: Retry {
            attempts: 4,
            first: Duration::from_millis(5),
            cap: Duration::from_millis(20),
        },
        ..PivotOptions::default()
    }
}

/// One move of cluster `c` by `holder`.
async fn run(
    source: &kube::Client,
    target: &kube::Client,
    ns: &str,
    opts: PivotOptions,
    holder: &str,
) -> Result<Summary, PivotError> {
    let progress = |_: &fledge_agent::pivot::apply::Event| {};
    Pivot::new(source, target, ns, "c", opts, &progress)
        .holder(holder)
        .run()
        .await
}

/// The writes of one undisturbed move in `direction` from a fresh cluster (pivoted first for
/// an unpivot), with run A's options.
async fn writes_of_a_clean_move(m: &TestCluster, l: &TestCluster, direction: Direction) -> u64 {
    let (mc, lc) = (m.client().await, l.client().await);
    let ns = format!("reference-{}", direction.noun());
    namespace(&mc, &ns).await;
    capi::cluster(&mc, &ns, "c", F, 0).await;
    let (from, to) = match direction {
        Direction::Pivot => (&m.kubeconfig, &l.kubeconfig),
        Direction::Unpivot => {
            run(&mc, &lc, &ns, opts(Direction::Pivot, 8), "setup")
                .await
                .unwrap();
            (&l.kubeconfig, &m.kubeconfig)
        }
    };
    let counts = Fault::never();
    let (a, b) = (
        client_with(from, &counts).await,
        client_with(to, &counts).await,
    );
    run(&a, &b, &ns, opts(direction, 1), "reference")
        .await
        .unwrap();
    counts.writes()
}

/// How one run ended.
#[derive(Debug)]
enum Ending {
    /// It moved the cluster.
    Moved(usize),
    /// It found the move done (or finished what the other run had left).
    FoundDone,
    /// It refused: the other run holds the move lock.
    Refused(String),
    /// Anything else: a failure.
    Failed(String),
}

fn ending(r: &Result<Summary, PivotError>) -> Ending {
    match r {
        Ok(s) if s.already_complete || (s.created == 0 && s.deleted == 0) => Ending::FoundDone,
        Ok(s) => Ending::Moved(s.moved),
        Err(e @ PivotError::Locked(_)) => Ending::Refused(e.to_string()),
        Err(e) => Ending::Failed(format!("{e:#}: {}", chain(e))),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut src = e.source();
    while let Some(s) = src {
        out.push(s.to_string());
        src = s.source();
    }
    out.join(": ")
}

/// Run A (holder `run-a`), held before its write `k`; run B (holder `b_holder`) to its end
/// meanwhile; then A goes on. Returns how each ended, and A's write `k`.
async fn interleave(
    from: &Path,
    to: &Path,
    ns: &str,
    k: u64,
    direction: Direction,
    b_holder: &str,
) -> (Ending, Ending, String) {
    let fault = Fault::holding(k);
    let (a_from, a_to) = (
        client_with(from, &fault).await,
        client_with(to, &fault).await,
    );
    // Both in this task (the move's future is not `Send` for every lifetime `spawn` asks).
    let a = run(&a_from, &a_to, ns, opts(direction, 1), "run-a");
    let b = async {
        tokio::time::timeout(Duration::from_secs(120), fault.reached())
            .await
            .unwrap_or_else(|_| panic!("k={k}: run A never reached its write {k}"));
        let held = fault.write_log()[k as usize - 1].clone();
        let (b_from, b_to) = (
            client_with(from, &Fault::never()).await,
            client_with(to, &Fault::never()).await,
        );
        let b = run(&b_from, &b_to, ns, opts(direction, 8), b_holder).await;
        fault.release();
        (b, held)
    };
    let (a, (b, held)) = tokio::join!(a, b);
    (ending(&a), ending(&b), held)
}

/// Everything an object is but its UID and the server's bookkeeping.
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

/// The differences between two [`Full`] snapshots (UIDs aside), and objects of the same types
/// present in `got` but not in `want`.
async fn differences(client: &kube::Client, ns: &str, want: &Full) -> Vec<String> {
    let keys: Vec<Key> = want.keys().cloned().collect();
    let present = capi::list_types(client, ns, &keys).await;
    let mut out: Vec<String> = present
        .keys()
        .filter(|k| !want.contains_key(k))
        .map(|k| format!("{k} should not be there"))
        .collect();
    let missing: Vec<&Key> = keys.iter().filter(|k| !present.contains_key(k)).collect();
    if !missing.is_empty() {
        out.push(format!("missing: {missing:?}"));
        return out;
    }
    let got = full(client, ns, &keys).await;
    for (k, (ws, wl, wa)) in want {
        let (gs, gl, ga) = &got[k];
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

/// Exactly one run moved all `objects`; the other refused (naming the holder of the lock) or
/// found the work done.
fn one_moved(a: &Ending, b: &Ending, objects: usize) -> Result<(), String> {
    let mut moved = 0;
    for (e, other) in [(a, "run-b"), (b, "run-a")] {
        match e {
            Ending::Moved(n) if *n == objects => moved += 1,
            Ending::Moved(n) => return Err(format!("a run moved {n} of {objects} objects")),
            Ending::Refused(msg) if !msg.contains(&format!("held by {other}")) => {
                return Err(format!("the refusal does not name {other}: {msg}"));
            }
            Ending::Failed(msg) => return Err(format!("a run failed: {msg}")),
            Ending::Refused(_) | Ending::FoundDone => {}
        }
    }
    if moved == 1 {
        Ok(())
    } else {
        Err(format!("{moved} runs moved the cluster: A {a:?}; B {b:?}"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pivots_of_one_cluster_interleaved_at_every_write_move_it_exactly_once() {
    let Some((m, l)) = pair().await else {
        return;
    };
    let (mc, lc) = (m.client().await, l.client().await);
    let total = writes_of_a_clean_move(&m, &l, Direction::Pivot).await;
    assert!(total > 20, "{total}");
    let mut failures = Vec::new();
    let mut endings: BTreeMap<String, usize> = BTreeMap::new();
    for k in 1..=total {
        let ns = format!("pivot-{k}");
        namespace(&mc, &ns).await;
        let keys = capi::cluster(&mc, &ns, "c", F, 0).await;
        let before = capi::snapshot(&mc, &ns, &keys).await;
        let (a, b, held) = interleave(
            &m.kubeconfig,
            &l.kubeconfig,
            &ns,
            k,
            Direction::Pivot,
            "run-b",
        )
        .await;
        println!("k={k} ({held}): A {a:?}; B {b:?}");
        *endings
            .entry(format!("{}/{}", tag(&a), tag(&b)))
            .or_default() += 1;
        if let Err(e) = one_moved(&a, &b, keys.len()) {
            failures.push(format!("k={k} ({held}): {e}"));
        }
        let problems = capi::check_moved(&mc, &lc, &ns, &before).await;
        if !problems.is_empty() {
            failures.push(format!("k={k} ({held}): end state: {problems:#?}"));
        }
    }
    println!("{total} writes per pivot; endings (A/B): {endings:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_unpivots_of_one_cluster_interleaved_at_every_write_move_it_exactly_once() {
    let Some((m, l)) = pair().await else {
        return;
    };
    let (mc, lc) = (m.client().await, l.client().await);
    let total = writes_of_a_clean_move(&m, &l, Direction::Unpivot).await;
    assert!(total > 20, "{total}");
    let mut failures = Vec::new();
    let mut endings: BTreeMap<String, usize> = BTreeMap::new();
    for k in 1..=total {
        let ns = format!("unpivot-{k}");
        namespace(&mc, &ns).await;
        let keys = capi::cluster(&mc, &ns, "c", F, 0).await;
        let before = full(&mc, &ns, &keys).await;
        run(&mc, &lc, &ns, opts(Direction::Pivot, 8), "setup")
            .await
            .unwrap();
        let (a, b, held) = interleave(
            &l.kubeconfig,
            &m.kubeconfig,
            &ns,
            k,
            Direction::Unpivot,
            "run-b",
        )
        .await;
        println!("k={k} ({held}): A {a:?}; B {b:?}");
        *endings
            .entry(format!("{}/{}", tag(&a), tag(&b)))
            .or_default() += 1;
        if let Err(e) = one_moved(&a, &b, keys.len()) {
            failures.push(format!("k={k} ({held}): {e}"));
        }
        let problems = differences(&mc, &ns, &before).await;
        if !problems.is_empty() {
            failures.push(format!("k={k} ({held}): management plane: {problems:#?}"));
        }
        let left = capi::list_types(&lc, &ns, &keys).await;
        if !left.is_empty() {
            failures.push(format!(
                "k={k} ({held}): the local cluster still holds {:?}",
                left.keys()
            ));
        }
    }
    println!("{total} writes per unpivot; endings (A/B): {endings:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn tag(e: &Ending) -> &'static str {
    match e {
        Ending::Moved(_) => "moved",
        Ending::FoundDone => "found done",
        Ending::Refused(_) => "refused",
        Ending::Failed(_) => "FAILED",
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_lock_between_them_a_run_that_finds_its_source_gone_completes_instead_of_rolling_back()
 {
    // Both runs under one holder: the lock lets both through (a holder takes its own lock
    // back), as if it were bypassed. What is left is the rollback's own guard: it deletes a
    // target copy only while the source copy exists, and a run that finds the source gone
    // reads the state again and completes. Nothing may be lost at any k.
    let Some((m, l)) = pair().await else {
        return;
    };
    let (mc, lc) = (m.client().await, l.client().await);
    let total = writes_of_a_clean_move(&m, &l, Direction::Pivot).await;
    let mut failures = Vec::new();
    let mut endings: BTreeMap<String, usize> = BTreeMap::new();
    for k in 1..=total {
        let ns = format!("bypass-{k}");
        namespace(&mc, &ns).await;
        let keys = capi::cluster(&mc, &ns, "c", F, 0).await;
        let before = capi::snapshot(&mc, &ns, &keys).await;
        let (a, b, held) = interleave(
            &m.kubeconfig,
            &l.kubeconfig,
            &ns,
            k,
            Direction::Pivot,
            "run-a",
        )
        .await;
        println!("k={k} ({held}): A {a:?}; B {b:?}");
        *endings
            .entry(format!("{}/{}", tag(&a), tag(&b)))
            .or_default() += 1;
        if [&a, &b].iter().any(|e| matches!(e, Ending::Failed(_))) {
            failures.push(format!("k={k} ({held}): A {a:?}; B {b:?}"));
        }
        let problems = capi::check_moved(&mc, &lc, &ns, &before).await;
        if !problems.is_empty() {
            failures.push(format!("k={k} ({held}): end state: {problems:#?}"));
        }
    }
    println!("{total} writes per pivot; endings (A/B): {endings:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        endings.contains_key("found done/moved"),
        "no run found its source gone: {endings:?}"
    );
}

/// The lock annotation on the source Cluster `c` of `ns`, if any.
async fn lock_on(client: &kube::Client, ns: &str) -> Option<Value> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &capi::resource(F.capi, "Cluster"));
    let c = api.get_opt("c").await.unwrap()?;
    let raw = c.metadata.annotations?.get(LOCK)?.clone();
    Some(serde_json::from_str(&raw).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lock_is_renewed_through_a_long_phase_expires_after_a_crash_and_its_holder_takes_it_back()
 {
    let Some((m, l)) = pair().await else {
        return;
    };
    let (mc, lc) = (m.client().await, l.client().await);
    // Holds short enough to wait out, long enough that a loaded machine (this file's four
    // tests run at once on two cores) still renews and refuses within them.
    let hold = Duration::from_secs(3);
    let short = PivotOptions {
        lock_hold: hold,
        ..opts(Direction::Pivot, 1)
    };

    // 1. A long phase: run A is held at its first create of a Machine in the target for four
    //    holds. Its renewal goes on meanwhile: run B is refused every time, and the expiry
    //    it reads moves forward.
    let ns = "renewed";
    namespace(&mc, ns).await;
    let keys = capi::cluster(&mc, ns, "c", F, 0).await;
    let before = capi::snapshot(&mc, ns, &keys).await;
    let fault =
        Fault::holding_first("POST /apis/cluster.x-k8s.io/v1beta2/namespaces/renewed/machines");
    let (a_from, a_to) = (
        client_with(&m.kubeconfig, &fault).await,
        client_with(&l.kubeconfig, &fault).await,
    );
    let a = run(&a_from, &a_to, ns, short, "run-a");
    let b = async {
        tokio::time::timeout(Duration::from_secs(120), fault.reached())
            .await
            .expect("run A reached its first Machine create");
        let mut expiries = Vec::new();
        let until = std::time::Instant::now() + hold * 4;
        while std::time::Instant::now() < until {
            let err = run(&mc, &lc, ns, short, "run-b")
                .await
                .expect_err("run B must be refused while run A holds the lock");
            let msg = err.to_string();
            assert!(matches!(err, PivotError::Locked(_)), "{msg}");
            assert!(msg.contains("held by run-a for a pivot"), "{msg}");
            let lock = lock_on(&mc, ns)
                .await
                .expect("the lock is on the source Cluster");
            assert_eq!(lock["holder"], "run-a");
            expiries.push(lock["expires"].as_str().unwrap().to_string());
            tokio::time::sleep(hold / 3).await;
        }
        fault.release();
        expiries
    };
    let (a, expiries) = tokio::join!(a, b);
    let summary = a.expect("run A completes");
    assert_eq!(summary.moved, keys.len());
    let distinct: std::collections::BTreeSet<&String> = expiries.iter().collect();
    assert!(
        distinct.len() >= 3,
        "the hold was not renewed while run A was held: {expiries:?}"
    );
    let problems = capi::check_moved(&mc, &lc, ns, &before).await;
    assert!(problems.is_empty(), "{problems:#?}");
    let target_cluster: Api<DynamicObject> =
        Api::namespaced_with(lc.clone(), ns, &capi::resource(F.capi, "Cluster"));
    let copy = target_cluster.get("c").await.unwrap();
    assert!(
        !copy
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(LOCK),
        "the lock was copied into the target"
    );

    // 2. A crash after taking the lock: another holder is refused until the hold expires
    //    (the error names the holder and the expiry), then takes it over and completes; the
    //    crashed holder itself takes it back at once.
    for (ns, next) in [("crashed-other", "run-b"), ("crashed-same", "run-a")] {
        namespace(&mc, ns).await;
        let keys = capi::cluster(&mc, ns, "c", F, 0).await;
        let before = capi::snapshot(&mc, ns, &keys).await;
        let fault = Fault::new(6, Mode::Crash);
        let (a_from, a_to) = (
            client_with(&m.kubeconfig, &fault).await,
            client_with(&l.kubeconfig, &fault).await,
        );
        // Run A's hold is what run B is refused under: long enough that run B's first attempt
        // comes before it ends however slow the machine is (CI once took over 1.5 s here).
        let crash_hold = Duration::from_secs(10);
        let crash = PivotOptions {
            retry: Retry {
                attempts: 1,
                first: Duration::from_millis(1),
                cap: Duration::from_millis(1),
            },
            lock_hold: crash_hold,
            ..short
        };
        run(&a_from, &a_to, ns, crash, "run-a")
            .await
            .expect_err("run A crashes");
        let lock = lock_on(&mc, ns)
            .await
            .expect("a crashed run leaves its lock");
        assert_eq!(lock["holder"], "run-a");
        let started = std::time::Instant::now();
        if next == "run-b" {
            let err = run(&mc, &lc, ns, short, next)
                .await
                .expect_err("refused before the expiry");
            let msg = err.to_string();
            println!("{msg}");
            assert!(matches!(err, PivotError::Locked(_)), "{msg}");
            assert!(
                msg.contains(&format!("until {}", lock["expires"].as_str().unwrap())),
                "{msg}"
            );
            tokio::time::sleep(crash_hold.saturating_sub(started.elapsed())).await;
        }
        let summary = run(&mc, &lc, ns, short, next)
            .await
            .unwrap_or_else(|e| panic!("{ns}: {e:#}"));
        println!("{ns}: {summary:?} after {:?}", started.elapsed());
        let problems = capi::check_moved(&mc, &lc, ns, &before).await;
        assert!(problems.is_empty(), "{ns}: {problems:#?}");
    }
}
