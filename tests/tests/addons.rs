//! Add-on layers against a real kube-apiserver (no controllers: nothing here needs a kubelet).
//!
//! - `published_style_manifests_are_applied_and_kept`: manifests written as projects publish
//!   them (a namespaced object without `metadata.namespace`, cluster-scoped objects that carry
//!   one, `kind: List` and `...List` documents) are applied once and never pruned by the same or
//!   a later reconcile: each object keeps its UID.
//! - `a_layer_may_not_take_over_what_fledge_owns`: a layer holding the cert-manager Namespace the
//!   providers phase applied, or a MachineDeployment, is refused before anything is written;
//!   what a layer applies is managed by `fledge-addons`, not by the agent's own field manager.
//! - `a_cluster_profile_is_checked_before_anything_of_it_is_fetched`: a ClusterProfile from the
//!   management plane with a plain-http URL, a non-hex sha256 and a duplicate layer name is
//!   refused with every problem named; no download is tried and nothing is cached.
//! - `a_wall_clock_jump_does_not_time_a_layer_out`: a layer first seen unhealthy "in 1970" (as
//!   recorded by a node that booted before its clock was set) is still within its timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fledge_agent::phases::{self, Context, Step, addons};
use fledge_agent::state::cache::CachedSpec;
use fledge_agent::state::journal;
use fledge_generator::spec::{self, FledgeClusterSpec};
use fledge_tests::cluster::{Options, TestCluster, start_or_skip};
use fledge_tests::install::{install_crds, install_fledge_crds};
use fledge_tests::{inline_layer as inline, workspace_root};
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const NS: &str = "team-docker";
const NAME: &str = "docker-demo";

struct Fixture {
    cluster: TestCluster,
    state: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Fixture {
    async fn start() -> Option<Fixture> {
        let cluster = start_or_skip(Options::default()).await?;
        let state = tempfile::tempdir().unwrap();
        let config = state.path().join("agent.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: fledge.dev/v1alpha1\nkind: AgentConfig\ncluster: {{name: {NAME}, namespace: {NS}}}\n\
                 management: {{server: 'https://127.0.0.1:1', tokenFile: /nonexistent/token, caFile: /nonexistent/ca.crt}}\n\
                 stateDir: {}\nmetricsAddress: '127.0.0.1:0'\n",
                state.path().display()
            ),
        )
        .unwrap();
        Some(Fixture {
            cluster,
            state,
            config,
        })
    }

    /// The agent's context for `profile`; `management` defaults to a port that does not answer.
    async fn ctx(&self, profile: spec::Profile, management: Option<kube::Client>) -> Context {
        let request =
            spec::load_request(&workspace_root().join("tests/cases/docker-v1beta2/input.yaml"))
                .unwrap();
        let mut s: FledgeClusterSpec = request.spec.clone();
        s.profile = Some(profile);
        let cfg = fledge_agent::config::AgentConfig::load(&self.config).unwrap();
        let cached = CachedSpec::new(1, "uid-1", s);
        let checked = phases::checked(&cfg, &cached).unwrap();
        let management = management.unwrap_or_else(|| {
            let mut mc = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
            mc.connect_timeout = Some(std::time::Duration::from_secs(1));
            kube::Client::try_from(mc).unwrap()
        });
        Context {
            cfg,
            root: "/".into(),
            state_dir: self.state.path().to_path_buf(),
            management,
            local: self.cluster.client().await,
            spec: checked,
            generation: 1,
            layer_clock: Default::default(),
        }
    }
}

fn profile(layers: Vec<spec::Layer>) -> spec::Profile {
    spec::Profile {
        core_layers: Vec::new(),
        name: Some("base".into()),
        layers,
        cluster_profile_ref: None,
    }
}

fn api(
    client: &kube::Client,
    v: &str,
    kind: &str,
    plural: &str,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    let (group, version) = v.split_once('/').unwrap_or(("", v));
    let ar = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: v.into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// (apiVersion, kind, plural, namespace, name) of every object the published-style layer holds.
const PUBLISHED: [(&str, &str, &str, Option<&str>, &str); 6] = [
    ("v1", "ConfigMap", "configmaps", Some("default"), "plain"),
    (
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        Some("default"),
        "data",
    ),
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        "clusterroles",
        None,
        "reader",
    ),
    ("v1", "Namespace", "namespaces", None, "addons-published"),
    (
        "v1",
        "ConfigMap",
        "configmaps",
        Some("addons-published"),
        "listed",
    ),
    (
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        Some("default"),
        "listed-sa",
    ),
];

async fn uids(client: &kube::Client) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for (v, kind, plural, ns, name) in PUBLISHED {
        let o = api(client, v, kind, plural, ns)
            .get_opt(name)
            .await
            .unwrap();
        let live = o.filter(|o| o.metadata.deletion_timestamp.is_none());
        out.insert(format!("{kind}/{name}"), live.and_then(|o| o.uid()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_style_manifests_are_applied_and_kept() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    // No namespace on namespaced objects; a namespace on cluster-scoped ones (as many published
    // manifests have); a v1 List and a ConfigMapList.
    let docs = [
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: plain}\ndata: {k: v}\n",
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: reader, namespace: kube-system}\nrules:\n- {apiGroups: [''], resources: [pods], verbs: [get]}\n",
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: addons-published, namespace: default}}\n- {apiVersion: v1, kind: ServiceAccount, metadata: {name: listed-sa}}\n---\napiVersion: v1\nkind: ConfigMapList\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: listed, namespace: addons-published}}\n",
    ];
    let ctx = f.ctx(profile(vec![inline("published", &docs)]), None).await;
    let client = f.cluster.client().await;
    let Step::Done(msg) = addons::reconcile(&ctx, &|_| {}).await.unwrap() else {
        panic!("a layer of objects without health rules is healthy once applied")
    };
    assert_eq!(msg, "layers: published healthy");
    let first = uids(&client).await;
    for (k, uid) in &first {
        assert!(
            uid.is_some(),
            "{k} was applied and must still exist: {first:?}"
        );
    }
    // A second reconcile (a resync) changes nothing: same objects, none deleted and re-created.
    let Step::Done(_) = addons::reconcile(&ctx, &|_| {}).await.unwrap() else {
        panic!("still healthy")
    };
    assert_eq!(uids(&client).await, first);
    // The ApplySet parent lists the namespace the default-namespaced members landed in.
    let parent =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "kube-system")
            .get("fledge-addons-published")
            .await
            .unwrap();
    assert_eq!(
        parent.annotations()["applyset.kubernetes.io/additional-namespaces"],
        "addons-published,default"
    );
    // What the layer applied is managed by the add-ons' field manager.
    let cm = api(&client, "v1", "ConfigMap", "configmaps", Some("default"))
        .get("plain")
        .await
        .unwrap();
    let managers: Vec<String> = cm
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, [addons::applyset::FIELD_MANAGER]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_may_not_take_over_what_fledge_owns() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    let client = f.cluster.client().await;
    install_crds(&client, &["cluster-api/v1.13.5"])
        .await
        .unwrap();
    let ctx = f.ctx(profile(vec![]), None).await;
    // The providers phase applies cert-manager's Namespace as the agent, labelled by clusterctl.
    phases::apply_local(
        &ctx,
        &[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cert-manager",
            "labels": {"clusterctl.cluster.x-k8s.io": "", "clusterctl.cluster.x-k8s.io/core": "cert-manager"}}})],
        |_| {},
    )
    .await
    .unwrap();
    let cases = [
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: cert-manager}\n",
            "namespace/cert-manager: refused: it is a component of a Cluster API provider or of cert-manager",
        ),
        (
            "apiVersion: cluster.x-k8s.io/v1beta2\nkind: MachineDeployment\nmetadata: {name: md, namespace: team-docker}\nspec: {clusterName: docker-demo, replicas: 9}\n",
            "machinedeployment.cluster.x-k8s.io/md: refused: MachineDeployment is a Cluster API object",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: kube-system}\n",
            "namespace/kube-system: refused: namespace kube-system is a system namespace",
        ),
    ];
    for (doc, want) in cases {
        let before = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: before-the-refusal}\n";
        let ctx = f
            .ctx(profile(vec![inline("grabby", &[before, doc])]), None)
            .await;
        let e = addons::reconcile(&ctx, &|_| {}).await.unwrap_err();
        let chain = journal::chain(&e);
        assert!(chain.contains(want), "{want}\nin: {chain}");
    }
    // The Namespace is untouched: not a member of the layer, still the agent's alone.
    let ns = api(&client, "v1", "Namespace", "namespaces", None)
        .get("cert-manager")
        .await
        .unwrap();
    assert!(!ns.labels().contains_key("applyset.kubernetes.io/part-of"));
    let managers: Vec<String> = ns
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["fledge-agent"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_profile_is_checked_before_anything_of_it_is_fetched() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    let client = f.cluster.client().await;
    install_fledge_crds(&client).await.unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
        )
        .await
        .unwrap();
    // A download site that counts the connections it gets.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((_sock, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let sha = "a".repeat(64);
    let profile_object = json!({
        "apiVersion": "fledge.dev/v1alpha1",
        "kind": "ClusterProfile",
        "metadata": {"name": "shared", "namespace": NS},
        "spec": {"layers": [
            {"name": "net", "manifests": [{"name": "cni", "version": "v1",
                "url": format!("http://127.0.0.1:{port}/cni.yaml"), "sha256": sha}]},
            {"name": "net", "manifests": [{"name": "more", "version": "v1",
                "url": format!("https://127.0.0.1:{port}/more.yaml"), "sha256": "not-hex"}]},
        ]},
    });
    let profiles = api(
        &client,
        "fledge.dev/v1alpha1",
        "ClusterProfile",
        "clusterprofiles",
        Some(NS),
    );
    profiles
        .create(
            &PostParams::default(),
            &serde_json::from_value(profile_object).unwrap(),
        )
        .await
        .unwrap();
    let referenced = spec::Profile {
        core_layers: Vec::new(),
        name: None,
        layers: Vec::new(),
        cluster_profile_ref: Some(spec::LocalObjectRef {
            name: "shared".into(),
        }),
    };
    let ctx = f.ctx(referenced, Some(client.clone())).await;
    let e = addons::reconcile(&ctx, &|_| {}).await.unwrap_err();
    let chain = journal::chain(&e);
    for want in [
        "ClusterProfile team-docker/shared is invalid",
        "spec.layers[0].manifests[0].url: must be an https:// URL",
        "spec.layers[1].name: must be unique in the profile",
        "spec.layers[1].manifests[0].sha256: must be 64 lower-case hex digits",
    ] {
        assert!(chain.contains(want), "{want}\nin: {chain}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing may be downloaded");
    let cached: Vec<String> = std::fs::read_dir(addons::dir(f.state.path()))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        cached.iter().all(|n| !n.starts_with("clusterprofile-")),
        "an invalid profile is not cached: {cached:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_does_not_time_a_layer_out() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    // A Deployment never becomes available here (no controllers).
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: slow}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: slow}}\n  template:\n    metadata: {labels: {app: slow}}\n    spec:\n      containers: [{name: c, image: registry.invalid/x:1}]\n";
    let ctx = f
        .ctx(profile(vec![inline("slow", &[deployment])]), None)
        .await;
    // What an earlier attempt recorded on a node whose wall clock said 1970.
    let dir = addons::dir(f.state.path());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("status.json"),
        serde_json::to_vec(
            &json!({"slow": {"state": "Progressing", "objects": 1, "unhealthySince": 1}}),
        )
        .unwrap(),
    )
    .unwrap();
    let step = addons::reconcile(&ctx, &|_| {}).await.unwrap();
    let Step::Waiting(why) = step else {
        panic!("the layer waits for its Deployment: {step:?}")
    };
    assert!(
        why.starts_with("layer slow: Deployment.apps default/slow"),
        "{why}"
    );
    assert_eq!(addons::states(f.state.path())["slow"].state, "Progressing");
}

/// The real node's order: the core layers (the CNI) go in first and the phase waits for every
/// node to be Ready; the add-on layers come later, and neither stage prunes the other's objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layers_go_first_and_wait_for_every_node_to_be_ready() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    let client = f.cluster.client().await;
    let cni = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cni-config, namespace: kube-system}\ndata: {conf: bridge}\n";
    let addon = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dashboard}\n";
    let mut p = profile(vec![inline("dashboards", &[addon])]);
    p.core_layers = vec![inline("network", &[cni])];
    let ctx = f.ctx(p, None).await;
    // CP-A registered, NotReady for want of a CNI.
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "cp-a"}})).unwrap(),
        )
        .await
        .unwrap();
    let step = phases::apply(
        &ctx,
        fledge_agent::state::journal::Phase::CoreLayers,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        step,
        Step::Waiting("core layers: network healthy; node cp-a has not reported Ready yet".into())
    );
    let cms = |ns: &str| api(&client, "v1", "ConfigMap", "configmaps", Some(ns));
    assert!(
        cms("kube-system")
            .get_opt("cni-config")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        cms("default").get_opt("dashboard").await.unwrap().is_none(),
        "no add-on layer before the core layers and the nodes are ready"
    );
    // The kubelet reports Ready once the CNI runs.
    nodes
        .patch_status(
            "cp-a",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "lastHeartbeatTime": "2026-12-06T00:00:00Z", "lastTransitionTime": "2026-12-06T00:00:00Z"}]}})),
        )
        .await
        .unwrap();
    let step = phases::apply(
        &ctx,
        fledge_agent::state::journal::Phase::CoreLayers,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        step,
        Step::Done("core layers: network healthy; every node Ready".into())
    );
    // AddonsReady applies the add-on layer and prunes nothing of the core layer.
    let Step::Done(msg) = addons::reconcile(&ctx, &|_| {}).await.unwrap() else {
        panic!("healthy")
    };
    assert_eq!(msg, "layers: dashboards healthy");
    assert!(
        cms("kube-system")
            .get_opt("cni-config")
            .await
            .unwrap()
            .is_some()
    );
    assert!(cms("default").get_opt("dashboard").await.unwrap().is_some());
    // Steady reconciles both, core first.
    let Step::Done(msg) = addons::reconcile_all(&ctx, &|_| {}).await.unwrap() else {
        panic!("healthy")
    };
    assert_eq!(
        msg,
        "core layers: network healthy; layers: dashboards healthy"
    );
    // A core layer dropped from the profile is pruned; the add-on layer stays.
    let ctx = f
        .ctx(profile(vec![inline("dashboards", &[addon])]), None)
        .await;
    addons::reconcile_all(&ctx, &|_| {}).await.unwrap();
    assert!(
        cms("kube-system")
            .get_opt("cni-config")
            .await
            .unwrap()
            .is_none()
    );
    assert!(cms("default").get_opt("dashboard").await.unwrap().is_some());
}
