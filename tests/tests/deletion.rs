//! Issue 25, defect 6: a deletion of the FledgeCluster that is not (or no longer) an order to
//! delete the cluster. One real fledge-agent process, in `Steady` past the pivot, against two
//! real API servers: a management plane holding the FledgeCluster and the agent's rendered
//! access (it reaches it with exactly those rights), and a local cluster holding what the pivot
//! leaves there (the Cluster API CRDs and the cluster's objects; no controller runs, so the
//! agent's reconcile is all that writes them).
//!
//! - `deleting_the_management_namespace_is_not_a_deletion_order_...`: the namespace is deleted
//!   (the test plays the namespace controller's first deletion, the FledgeCluster's, then starts
//!   the real one): the agent records no order, never unpivots, releases its finalizer so that
//!   the namespace goes, and keeps reconciling the cluster.
//! - `a_deletion_order_that_is_withdrawn_returns_the_agent_to_steady`: the FledgeCluster alone is
//!   deleted (an order), the unpivot cannot proceed (this management plane runs older
//!   providers), the user removes the finalizer by hand: the agent cancels the order and is
//!   back in `Steady`; the FledgeCluster re-created (replacing the old UID) is held again.
//!
//! `Steady` running is observed as drift being corrected: the test changes the worker
//! MachineDeployment's replicas by hand and waits for the agent's resync to restore them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fledge_agent::phases::unpivoted::FINALIZER;
use fledge_agent::state::deletion::{self, Cancel};
use fledge_agent::state::journal::{Journal, Outcome, Phase};
use fledge_generator::management;
use fledge_generator::render::Templates;
use fledge_generator::spec;
use fledge_generator::ssa::{ApplyOptions, apply};
use fledge_generator::target::client_from_kubeconfig;
use fledge_tests::capi;
use fledge_tests::cluster::{Options, TestCluster, start_or_skip, tail};
use fledge_tests::install::{clusterctl_inventory, install_crds, install_fledge_crds};
use fledge_tests::workspace_root;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

const NS: &str = "team-docker";
const NAME: &str = "docker-demo";

fn api(client: &kube::Client, api_version: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &capi::resource(api_version, kind))
}

fn fledge_clusters(client: &kube::Client) -> Api<DynamicObject> {
    api(client, "fledge.dev/v1alpha1", "FledgeCluster")
}

fn machine_deployments(client: &kube::Client) -> Api<DynamicObject> {
    api(client, "cluster.x-k8s.io/v1beta2", "MachineDeployment")
}

struct Agent {
    child: Child,
}

impl Agent {
    fn start(config: &Path, log: &Path) -> Agent {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(fledge_tests::binary("fledge-agent"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Agent { child }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Fixture {
    mgmt: TestCluster,
    local: TestCluster,
    root: tempfile::TempDir,
    config: PathBuf,
    /// The FledgeCluster as rendered (to re-create it).
    fledge_cluster: Value,
}

/// The request the agent runs: the docker case without add-on layers (nothing to download).
fn request() -> spec::CheckedCluster {
    let mut checked =
        spec::load_request(&workspace_root().join("tests/cases/docker-v1beta2/input.yaml"))
            .unwrap();
    checked.spec.profile = Some(spec::Profile {
        core_layers: Vec::new(),
        name: Some("base".into()),
        layers: Vec::new(),
        cluster_profile_ref: None,
    });
    checked
}

/// The two clusters and CP-A's node; the management plane runs the cluster's providers at
/// `mgmt_providers` (clusterctl's inventory; the local cluster's are at v1.13.5), so an unpivot
/// could bring the objects back to it at v1.13.5 or newer and is refused before any write at an
/// older version.
async fn fixture(mgmt_providers: &str) -> Option<Fixture> {
    let mgmt = start_or_skip(Options::default()).await?;
    let local = start_or_skip(Options::default()).await?;
    let checked = request();
    let objects = management::objects(&checked, &Templates::embedded()).unwrap();
    let kind = |o: &Value, kinds: &[&str]| kinds.contains(&o["kind"].as_str().unwrap_or_default());

    // The management plane after the pivot: the Namespace, the FledgeCluster and the agent's
    // access (the rendered Role and ClusterRole, bound to the test user whose token the node
    // holds); the Cluster API objects have moved to the local cluster.
    let mc = mgmt.client().await;
    install_fledge_crds(&mc).await.unwrap();
    install_crds(&mc, &["cluster-api/v1.13.5"]).await.unwrap();
    clusterctl_inventory(&mc, mgmt_providers).await.unwrap();
    let target = client_from_kubeconfig(Some(&mgmt.kubeconfig))
        .await
        .unwrap();
    let mut wanted: Vec<Value> = objects
        .iter()
        .filter(|o| kind(o, &["Namespace", "FledgeCluster"]))
        .cloned()
        .collect();
    // The agent's access (its move rights too, which it gives up in Steady).
    wanted.extend(fledge_tests::access::for_test_user(&objects));
    apply(&target, &wanted, &ApplyOptions::default(), |_| {})
        .await
        .unwrap();

    // The local cluster after the pivot: the Cluster, its infrastructure and CP-A's KCP, which
    // reports the spec's version.
    let lc = local.client().await;
    install_crds(&lc, &["cluster-api/v1.13.5"]).await.unwrap();
    clusterctl_inventory(&lc, "v1.13.5").await.unwrap();
    let pivoted: Vec<Value> = objects
        .iter()
        .filter(|o| {
            kind(
                o,
                &[
                    "Namespace",
                    "Cluster",
                    "DevCluster",
                    "DevMachineTemplate",
                    "KubeadmControlPlane",
                ],
            )
        })
        .cloned()
        .collect();
    let target = client_from_kubeconfig(Some(&local.kubeconfig))
        .await
        .unwrap();
    apply(&target, &pivoted, &ApplyOptions::default(), |_| {})
        .await
        .unwrap();
    api(
        &lc,
        "controlplane.cluster.x-k8s.io/v1beta2",
        "KubeadmControlPlane",
    )
    .patch_status(
        &format!("{NAME}-control-plane"),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"version": checked.spec.kubernetes_version.to_string()}})),
    )
    .await
    .unwrap();

    // CP-A's node: the agent's files, and its journal past the pivot and the scale-out.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc/fledge/management")).unwrap();
    std::fs::create_dir_all(r.join("etc/kubernetes")).unwrap();
    std::fs::write(r.join("etc/fledge/management/token"), &mgmt.user_token).unwrap();
    std::fs::write(r.join("etc/fledge/management/ca.crt"), &mgmt.ca_pem).unwrap();
    std::fs::copy(&local.kubeconfig, r.join("etc/kubernetes/admin.conf")).unwrap();
    let state = r.join("var/lib/fledge");
    let mut journal = Journal::load(&state).unwrap();
    for phase in [
        Phase::Installed,
        Phase::SpecFetched,
        Phase::ProvidersInstalled,
        Phase::Pivoted,
        Phase::ScaledOut,
        Phase::AddonsReady,
    ] {
        journal
            .record(&state, phase, Outcome::Succeeded, Some(1), None)
            .unwrap();
    }
    let p = |s: &str| r.join(s).display().to_string();
    let port = fledge_tests::cluster::free_port().unwrap();
    let cfg = json!({
        "apiVersion": "fledge.dev/v1alpha1", "kind": "AgentConfig",
        "cluster": {"name": NAME, "namespace": NS},
        "management": {"server": mgmt.url, "tokenFile": p("etc/fledge/management/token"), "caFile": p("etc/fledge/management/ca.crt")},
        "stateDir": p("var/lib/fledge"),
        "metricsAddress": format!("127.0.0.1:{port}"),
        "resyncSeconds": 2,
        "backoffCapSeconds": 2,
        "localKubeconfig": p("etc/kubernetes/admin.conf"),
    });
    let config = r.join("etc/fledge/agent.yaml");
    std::fs::write(&config, serde_norway::to_string(&cfg).unwrap()).unwrap();
    let fledge_cluster = objects
        .iter()
        .find(|o| o["kind"] == "FledgeCluster")
        .unwrap()
        .clone();
    Some(Fixture {
        mgmt,
        local,
        root,
        config,
        fledge_cluster,
    })
}

impl Fixture {
    fn state(&self) -> PathBuf {
        self.root.path().join("var/lib/fledge")
    }

    fn log(&self) -> PathBuf {
        self.root.path().join("agent.log")
    }

    fn journal(&self) -> Journal {
        Journal::load(&self.state()).unwrap_or_default()
    }

    fn request(&self) -> Option<deletion::Request> {
        deletion::load_request(&self.state()).ok().flatten()
    }

    /// Waits for `what`, failing with the journal, the deletion request and the agent's log.
    async fn wait<F: AsyncFnMut() -> bool>(&self, what: &str, limit: Duration, mut done: F) {
        let start = Instant::now();
        while !done().await {
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}\njournal {:#?}\ndeletion request {:#?}\nagent log tail:\n{}",
                self.journal(),
                self.request(),
                tail(&self.log(), 40)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Whether the FledgeCluster holds the agent's finalizer (false when it is gone).
    async fn held(&self) -> bool {
        fledge_clusters(&self.mgmt.client().await)
            .get_opt(NAME)
            .await
            .unwrap()
            .is_some_and(|fc| fc.finalizers().iter().any(|f| f == FINALIZER))
    }

    /// The agent is in Steady with its finalizer on the FledgeCluster.
    async fn steady(&self) {
        self.wait("Steady", Duration::from_secs(120), async || {
            self.journal().done(Phase::Steady)
        })
        .await;
        self.wait(
            "the agent's finalizer",
            Duration::from_secs(60),
            async || self.held().await,
        )
        .await;
    }

    /// Changes the worker pool's replicas by hand and waits for Steady's resync to restore
    /// them: the agent reconciles the cluster.
    async fn drift_is_corrected(&self) {
        let mds = machine_deployments(&self.local.client().await);
        let md = format!("{NAME}-md-0");
        mds.patch(
            &md,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
        self.wait(
            "Steady to restore the worker replicas",
            Duration::from_secs(60),
            async || mds.get(&md).await.unwrap().data["spec"]["replicas"] == 1,
        )
        .await;
    }

    /// No unpivot is recorded or under way, and the runner's next phase is Steady.
    fn back_in_steady(&self) {
        let j = self.journal();
        assert!(!j.started(Phase::Unpivoted), "{j:#?}");
        assert!(!deletion::deletion_requested(&self.state()));
        assert_eq!(
            fledge_agent::phases::next(&j, deletion::deletion_requested(&self.state())),
            Phase::Steady
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_management_namespace_is_not_a_deletion_order_the_namespace_goes_and_the_cluster_keeps_running()
 {
    // A management plane that could take the cluster back: only the terminating namespace
    // (which refuses every create) stands between an agent that took this for an order and
    // an unpivot.
    let Some(mut f) = fixture("v1.13.5").await else {
        return;
    };
    let _agent = Agent::start(&f.config, &f.log());
    f.steady().await;
    f.drift_is_corrected().await;

    let mc = f.mgmt.client().await;
    let namespaces: Api<Namespace> = Api::all(mc.clone());
    namespaces.delete(NS, &Default::default()).await.unwrap();
    // The namespace controller's first deletion, played: the FledgeCluster gets a
    // deletionTimestamp only because its namespace is being deleted.
    fledge_clusters(&mc)
        .delete(NAME, &Default::default())
        .await
        .unwrap();
    // The agent releases its finalizer: the FledgeCluster goes, and nothing was ordered.
    f.wait(
        "the agent to release its finalizer",
        Duration::from_secs(60),
        async || fledge_clusters(&mc).get_opt(NAME).await.unwrap().is_none(),
    )
    .await;
    let r = f.request().expect("the declined deletion is recorded");
    let c = r.cancelled.expect("not an order");
    assert_eq!((c.reason, c.settled), (Cancel::NamespaceTerminating, true));
    f.back_in_steady();
    let log = std::fs::read_to_string(f.log()).unwrap();
    assert!(
        log.contains("that is not an order to delete the cluster"),
        "{}",
        tail(&f.log(), 40)
    );
    assert!(
        !log.contains("moving the cluster's objects back"),
        "{}",
        tail(&f.log(), 40)
    );

    // The real namespace controller finishes: nothing of the agent holds the namespace.
    f.mgmt.start_controller_manager().unwrap();
    f.wait(
        "the namespace to be deleted",
        Duration::from_secs(90),
        async || namespaces.get_opt(NS).await.unwrap().is_none(),
    )
    .await;
    // The management plane is gone for this agent (its access went with the namespace): the
    // cluster keeps running from the cached spec.
    f.drift_is_corrected().await;
    f.back_in_steady();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deletion_order_that_is_withdrawn_returns_the_agent_to_steady() {
    let Some(f) = fixture("v1.13.4").await else {
        return;
    };
    let _agent = Agent::start(&f.config, &f.log());
    f.steady().await;
    let mc = f.mgmt.client().await;
    let fcs = fledge_clusters(&mc);
    let old_uid = fcs.get(NAME).await.unwrap().uid().unwrap();

    // Past the pivot the agent holds no move rights here.
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(mc.clone(), NS);
    let move_rights = management::Names::new(NAME).agent_move;
    f.wait(
        "the agent to give up its move rights",
        Duration::from_secs(30),
        async || bindings.get_opt(&move_rights).await.unwrap().is_none(),
    )
    .await;

    // The FledgeCluster alone is deleted, as `fledge delete` does it: an order, and the move
    // rights bound again. This management plane cannot take the cluster's objects back (its
    // providers are older than the cluster's): the unpivot is refused before any write, again
    // and again.
    let target = client_from_kubeconfig(Some(&f.mgmt.kubeconfig))
        .await
        .unwrap();
    let objects = management::objects(&request(), &Templates::embedded()).unwrap();
    let deleted = fledge_generator::delete::delete(
        &target,
        &request(),
        &fledge_tests::access::for_test_user(&objects),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(deleted, fledge_generator::delete::Deleted::Unpivoting);
    let rebound = bindings.get(&move_rights).await.unwrap();
    assert_eq!(
        rebound.metadata.owner_references.unwrap()[0].uid,
        old_uid,
        "owned by the FledgeCluster"
    );
    f.wait(
        "the unpivot to be tried and refused",
        Duration::from_secs(60),
        async || {
            f.journal()
                .entry(Phase::Unpivoted)
                .is_some_and(|e| e.outcome == Outcome::Failed)
        },
    )
    .await;
    let r = f.request().expect("the order is recorded");
    assert!(r.cancelled.is_none() && r.uid == old_uid, "{r:?}");
    assert!(f.held().await, "the FledgeCluster waits for the agent");
    // `fledge delete --wait` follows it and shows what the agent waits for, and gives up at
    // its timeout.
    let mut lines = Vec::new();
    let gone =
        fledge_generator::delete::wait_gone(&target, &request(), Duration::from_secs(3), |l| {
            lines.push(l.to_string())
        })
        .await
        .unwrap();
    assert!(!gone, "the FledgeCluster is held");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("agent phase ") && l.contains("; Unpivoted Failed: ")),
        "{lines:?}"
    );

    // The user gives up on the deletion: removes the finalizer by hand, and the wait sees the
    // FledgeCluster go.
    let req = request();
    let following = tokio::sync::Notify::new();
    let waiting =
        fledge_generator::delete::wait_gone(&target, &req, Duration::from_secs(60), |_| {
            following.notify_one()
        });
    // Removed once the wait has seen the FledgeCluster (its first line), so that the wait sees
    // it go rather than finding it gone.
    let removed = async {
        following.notified().await;
        fcs.patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    };
    let (gone, ()) = tokio::join!(waiting, removed);
    assert!(gone.unwrap(), "the wait saw the FledgeCluster go");
    f.wait(
        "the order to be cancelled",
        Duration::from_secs(60),
        async || !deletion::deletion_requested(&f.state()),
    )
    .await;
    let c = f.request().and_then(|r| r.cancelled).unwrap();
    assert_eq!((c.reason, c.settled), (Cancel::Gone, true));
    f.back_in_steady();
    f.drift_is_corrected().await;
    f.back_in_steady();

    // Re-created, replacing the old object: its spec is accepted and the agent holds it, so
    // deleting it is an order again.
    let mut fc = f.fledge_cluster.clone();
    fc["metadata"]["annotations"] = json!({fledge_agent::state::cache::REPLACES_UID: old_uid});
    let fc: DynamicObject = serde_json::from_value(fc).unwrap();
    fcs.create(&PostParams::default(), &fc).await.unwrap();
    f.wait(
        "the agent's finalizer on the re-created FledgeCluster",
        Duration::from_secs(60),
        async || f.held().await,
    )
    .await;
    let new_uid = fcs.get(NAME).await.unwrap().uid().unwrap();
    assert_ne!(new_uid, old_uid);
    f.wait(
        "the re-created FledgeCluster's spec to be cached",
        Duration::from_secs(30),
        async || {
            fledge_agent::state::cache::load(&f.state())
                .ok()
                .flatten()
                .is_some_and(|c| c.uid == new_uid)
        },
    )
    .await;
    f.back_in_steady();
}
