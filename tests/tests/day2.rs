//! Day 2 from the local spec, against a real apiserver running the real Cluster API v1.13.5
//! managers (their webhooks judge every write). The management plane is unreachable throughout:
//! the phases get a client for a closed port.
//!
//! - `the_day2_corpus_is_classified_and_written_as_expected`: a sequence of spec changes, each
//!   with its expected class (or refusal) and the objects it creates, changes and deletes,
//!   measured from resource versions; replays write nothing and create no template; a crash in
//!   the middle of the upgrade's template writes resumes without duplicates; a `kubectl edit`
//!   of a managed field is reverted by the next resync and reported.
//! - `five_layers_are_applied_in_order_health_gated_and_pruned`: five add-on layers from the
//!   local cache; no object of layer N+1 exists before layer N is healthy; an object dropped
//!   from a layer, and a dropped layer, are pruned in one reconcile.
//!
//! The Cluster is paused so that CAPI's controllers leave the objects to the test, which plays
//! the KubeadmControlPlane controller (its reported version) and the kubelet (rollout status).

use std::collections::{BTreeMap, BTreeSet};

use fledge_agent::phases::steady::day2::Class;
use fledge_agent::phases::{self, Context, Step, addons, steady};
use fledge_agent::state::cache::CachedSpec;
use fledge_agent::state::journal::{Journal, Outcome, Phase, chain};
use fledge_generator::management;
use fledge_generator::render::Templates;
use fledge_generator::spec::{self, FledgeClusterSpec};
use fledge_generator::ssa::{ApplyOptions, apply};
use fledge_generator::target::client_from_kubeconfig;
use fledge_tests::capi;
use fledge_tests::cluster::TestCluster;
use fledge_tests::fault::{Fault, Mode, client_with};
use fledge_tests::install::install_crds;
use fledge_tests::{inline_layer as layer, workspace_root};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

const NS: &str = "team-docker";
const NAME: &str = "docker-demo";
const KINDS: [(&str, &str); 4] = [
    (
        "controlplane.cluster.x-k8s.io/v1beta2",
        "KubeadmControlPlane",
    ),
    ("cluster.x-k8s.io/v1beta2", "MachineDeployment"),
    (
        "infrastructure.cluster.x-k8s.io/v1beta2",
        "DevMachineTemplate",
    ),
    (
        "bootstrap.cluster.x-k8s.io/v1beta2",
        "KubeadmConfigTemplate",
    ),
];

fn api(client: &kube::Client, api_version: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &capi::resource(api_version, kind))
}

/// `Kind/name` -> generation of the cluster's CAPI objects that are not being deleted. The
/// generation moves with spec writes only: CAPI's controllers write status (a paused Cluster
/// still gets its `Paused` conditions) and the agent's co-ownership of an unchanged object
/// changes only its managed fields. A MachineDeployment being deleted keeps CAPI's finalizer
/// while the Cluster is paused; it counts as deleted.
async fn snapshot(client: &kube::Client) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (v, kind) in KINDS {
        for o in api(client, v, kind)
            .list(&Default::default())
            .await
            .unwrap()
        {
            if o.metadata.deletion_timestamp.is_some() {
                continue;
            }
            out.insert(
                format!("{kind}/{}", o.name_any()),
                o.metadata.generation.unwrap_or_default().to_string(),
            );
        }
    }
    out
}

/// What changed between two snapshots, as sorted "+Kind/name", "~Kind/name", "-Kind/name".
fn writes(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in after {
        match before.get(k) {
            None => out.push(format!("+{k}")),
            Some(b) if b != v => out.push(format!("~{k}")),
            _ => {}
        }
    }
    for k in before.keys() {
        if !after.contains_key(k) {
            out.push(format!("-{k}"));
        }
    }
    out
}

/// The objects written, without the kind of write, and templates by kind only (their names
/// are hashes).
fn shape(w: &[String]) -> Vec<String> {
    let mut out: Vec<String> = w
        .iter()
        .map(|s| {
            let s = s.trim_start_matches(['+', '~', '-']);
            let (kind, name) = s.split_once('/').unwrap_or((s, ""));
            if kind.ends_with("Template") {
                kind.to_string()
            } else {
                format!("{kind}/{name}")
            }
        })
        .collect();
    out.sort();
    out
}

fn base_spec() -> FledgeClusterSpec {
    let c = spec::load_request(&workspace_root().join("tests/cases/docker-v1beta2/input.yaml"))
        .unwrap();
    let mut s = c.spec.clone();
    s.profile = Some(spec::Profile {
        core_layers: Vec::new(),
        name: Some("base".into()),
        layers: Vec::new(),
        cluster_profile_ref: None,
    });
    s
}

struct Fixture {
    local: TestCluster,
    state: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Fixture {
    async fn start() -> Option<Fixture> {
        let local = fledge_tests::managers::start_with_managers_or_skip().await?;
        let client = local.client().await;
        install_crds(&client, &["cluster-api/v1.13.5"])
            .await
            .unwrap();
        // What the pivot leaves: the Cluster (paused here), its infrastructure, CP-A's KCP.
        let checked =
            spec::load_request(&workspace_root().join("tests/cases/docker-v1beta2/input.yaml"))
                .unwrap();
        let keep = [
            "Namespace",
            "Cluster",
            "DevCluster",
            "DevMachineTemplate",
            "KubeadmControlPlane",
        ];
        let mut objects: Vec<Value> = management::objects(&checked, &Templates::embedded())
            .unwrap()
            .into_iter()
            .filter(|o| keep.contains(&o["kind"].as_str().unwrap_or_default()))
            .collect();
        for o in &mut objects {
            if o["kind"] == "Cluster" {
                o["spec"]["paused"] = json!(true);
            }
        }
        let target = client_from_kubeconfig(Some(&local.kubeconfig))
            .await
            .unwrap();
        apply(&target, &objects, &ApplyOptions::default(), |_| {})
            .await
            .unwrap();
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
        let f = Fixture {
            local,
            state,
            config,
        };
        f.report_version("v1.33.4").await;
        Some(f)
    }

    /// The agent's context for `spec` at `generation`, with `local` as the local cluster and
    /// a management plane that does not answer.
    fn ctx(&self, local: kube::Client, spec: &FledgeClusterSpec, generation: i64) -> Context {
        let cfg = fledge_agent::config::AgentConfig::load(&self.config).unwrap();
        let cached = CachedSpec::new(generation, "uid-1", spec.clone());
        let checked = phases::checked(&cfg, &cached).unwrap();
        let mut mc = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        mc.connect_timeout = Some(std::time::Duration::from_secs(1));
        Context {
            cfg,
            root: "/".into(),
            state_dir: self.state.path().to_path_buf(),
            management: kube::Client::try_from(mc).unwrap(),
            local,
            spec: checked,
            generation,
            layer_clock: Default::default(),
        }
    }

    /// Plays KCP: the control plane's machines run `version`.
    async fn report_version(&self, version: &str) {
        api(&self.local.client().await, KINDS[0].0, KINDS[0].1)
            .patch_status(
                &format!("{NAME}-control-plane"),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"version": version}})),
            )
            .await
            .unwrap();
    }

    /// Journals Steady as the runner does after a successful reconcile of `generation`.
    fn journal_reconciled(&self, generation: i64) {
        let mut j = Journal::load(self.state.path()).unwrap();
        j.record(
            self.state.path(),
            Phase::Steady,
            Outcome::Succeeded,
            Some(generation),
            Some("reconciled".into()),
        )
        .unwrap();
    }
}

/// One corpus entry's outcome.
struct Ran {
    class: Result<Class, String>,
    /// The plan's lines (for failure messages).
    plan: Vec<String>,
    step: Result<Step, String>,
    writes: Vec<String>,
}

async fn run(f: &Fixture, spec: &FledgeClusterSpec, generation: i64) -> Ran {
    let client = f.local.client().await;
    let ctx = f.ctx(client.clone(), spec, generation);
    let before = snapshot(&client).await;
    let planned = phases::plan(&ctx, Phase::Steady).await.unwrap();
    let plan = planned.steps.clone();
    let class = match planned {
        p if p
            .waiting
            .as_deref()
            .is_some_and(|w| w.starts_with("refused")) =>
        {
            Err(p.waiting.unwrap())
        }
        p => Ok(match p.steps[0].trim_start_matches("change class: ") {
            "no-op" => Class::NoOp,
            "in-place" => Class::InPlace,
            "rollout" => Class::Rollout,
            other => panic!("unknown class {other}"),
        }),
    };
    let step = steady::apply(&ctx, &|_| {}).await.map_err(|e| chain(&e));
    let after = snapshot(&client).await;
    Ran {
        class,
        plan,
        step,
        writes: writes(&before, &after),
    }
}

fn templates(snap: &BTreeMap<String, String>) -> BTreeSet<String> {
    snap.keys()
        .filter(|k| k.contains("Template/"))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_day2_corpus_is_classified_and_written_as_expected() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    let client = f.local.client().await;
    let mut spec = base_spec();
    let mut generation = 1;
    let md = |s: &str| format!("MachineDeployment/{NAME}-{s}");
    let kcp = format!("KubeadmControlPlane/{NAME}-control-plane");
    let mut report = Vec::new();

    // (name, change, expected class or refusal, expected writes by kind)
    type Change = Box<dyn Fn(&mut FledgeClusterSpec)>;
    type Entry<'a> = (&'a str, Change, Result<Class, &'a str>, Vec<String>);
    let corpus: Vec<Entry> = vec![
        (
            "scale-out (first reconcile)",
            Box::new(|_| {}),
            Ok(Class::InPlace),
            // The KCP is already as the spec says (replicas 1): only the pool is new.
            vec![
                "DevMachineTemplate".into(),
                "KubeadmConfigTemplate".into(),
                md("md-0"),
            ],
        ),
        ("replay", Box::new(|_| {}), Ok(Class::NoOp), vec![]),
        (
            "replicas",
            Box::new(|s| {
                s.control_plane.replicas = 3;
                s.workers[0].replicas = 4;
            }),
            Ok(Class::InPlace),
            vec![kcp.clone(), md("md-0")],
        ),
        (
            "certificate days",
            Box::new(|s| s.control_plane.certificates_expiry_days = Some(45)),
            Ok(Class::InPlace),
            vec![kcp.clone()],
        ),
        (
            "new pool",
            Box::new(|s| {
                let mut p = s.workers[0].clone();
                p.name = "md-1".into();
                p.replicas = 1;
                s.workers.push(p);
            }),
            Ok(Class::InPlace),
            vec![
                "DevMachineTemplate".into(),
                "KubeadmConfigTemplate".into(),
                md("md-1"),
            ],
        ),
        (
            "removed pool",
            Box::new(|s| {
                s.workers.pop();
            }),
            Ok(Class::InPlace),
            vec![
                "DevMachineTemplate".into(),
                "KubeadmConfigTemplate".into(),
                md("md-1"),
            ],
        ),
        (
            // The control plane moves first; md-0 waits for it (and keeps its templates).
            "version bump",
            Box::new(|s| s.kubernetes_version = "v1.34.1".into()),
            Ok(Class::Rollout),
            vec![
                "DevMachineTemplate".into(),
                "DevMachineTemplate".into(),
                "DevMachineTemplate".into(),
                "KubeadmConfigTemplate".into(),
                kcp.clone(),
            ],
        ),
    ];
    for (name, change, want_class, want_writes) in corpus {
        let mut next = spec.clone();
        change(&mut next);
        if next != spec {
            generation += 1;
        }
        let ran = run(&f, &next, generation).await;
        let got_class = ran.class.clone().map_err(|e| e.to_string());
        assert_eq!(
            got_class.clone().map_err(|_| ()),
            want_class.map_err(|_| ()),
            "{name}: {got_class:?}"
        );
        assert!(ran.step.is_ok(), "{name}: {:?}", ran.step);
        assert_eq!(
            shape(&ran.writes),
            shape(&want_writes),
            "{name}: {:?}",
            ran.writes
        );
        report.push(format!(
            "{name}: {} -> {:?}",
            got_class.map_or_else(|e| e, |c| c.to_string()),
            ran.writes
        ));
        spec = next;
    }
    // The upgrade waited for the control plane: md-0 is still at v1.33.4.
    let md0 = api(&client, KINDS[1].0, KINDS[1].1)
        .get(&format!("{NAME}-md-0"))
        .await
        .unwrap();
    assert_eq!(md0.data["spec"]["template"]["spec"]["version"], "v1.33.4");
    // KCP got version and template in one write.
    let kcp_obj = api(&client, KINDS[0].0, KINDS[0].1)
        .get(&format!("{NAME}-control-plane"))
        .await
        .unwrap();
    assert_eq!(kcp_obj.data["spec"]["version"], "v1.34.1");
    let cp_template = kcp_obj.data["spec"]["machineTemplate"]["spec"]["infrastructureRef"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(cp_template.starts_with(&format!("{NAME}-control-plane-")));

    // The control plane reports the new version: md-0 follows, its old templates go.
    f.report_version("v1.34.1").await;
    let ran = run(&f, &spec, generation).await;
    assert!(matches!(ran.step, Ok(Step::Done(_))), "{:?}", ran.step);
    assert_eq!(
        shape(&ran.writes),
        shape(&[
            "-DevMachineTemplate/x".into(),
            "-KubeadmConfigTemplate/x".into(),
            md("md-0")
        ]),
        "{:?}",
        ran.writes
    );
    report.push(format!("version bump, workers: {:?}", ran.writes));
    // Replaying the upgrade creates no template and writes nothing.
    let ran = run(&f, &spec, generation).await;
    assert_eq!(ran.class, Ok(Class::NoOp), "{:?}", ran.plan);
    assert!(ran.writes.is_empty(), "{:?}", ran.writes);
    report.push("upgrade replay: no-op -> []".into());

    // Refused before any write.
    for (name, version, word) in [
        ("skipped minor", "v1.36.0", "skips a minor"),
        ("downgrade", "v1.33.4", "downgrade"),
    ] {
        let mut next = spec.clone();
        next.kubernetes_version = version.into();
        let ran = run(&f, &next, generation + 1).await;
        let refused = ran.class.clone().unwrap_err();
        assert!(refused.contains(word), "{name}: {refused}");
        assert!(ran.step.as_ref().unwrap_err().contains(word), "{name}");
        assert!(ran.writes.is_empty(), "{name}: {:?}", ran.writes);
        report.push(format!("{name}: refused -> [] ({refused})"));
    }

    // Machine image change, with a crash after the first write: the next reconcile completes
    // it, and there is exactly one new template per pool and for the control plane.
    let mut next = spec.clone();
    next.infrastructure.docker = Some(spec::DockerSpec {
        custom_image: Some("kindest/node:v1.34.1".into()),
    });
    generation += 1;
    let before = snapshot(&client).await;
    let fault = Fault::new(2, Mode::Crash);
    let faulty = client_with(&f.local.kubeconfig, &fault).await;
    let crashed = steady::apply(&f.ctx(faulty, &next, generation), &|_| {}).await;
    assert!(crashed.is_err(), "the fault stops the reconcile");
    let mid = snapshot(&client).await;
    assert_eq!(
        writes(&before, &mid).len(),
        1,
        "{:?}",
        writes(&before, &mid)
    );
    let ran = run(&f, &next, generation).await;
    assert_eq!(ran.class, Ok(Class::Rollout));
    let all = writes(&before, &snapshot(&client).await);
    assert_eq!(
        shape(&all),
        shape(&[
            "+DevMachineTemplate/a".into(),
            "+DevMachineTemplate/b".into(),
            "-DevMachineTemplate/c".into(),
            "-DevMachineTemplate/d".into(),
            kcp.clone(),
            md("md-0"),
        ]),
        "{all:?}"
    );
    let after = snapshot(&client).await;
    assert_eq!(
        templates(&after).len(),
        3,
        "one machine template each for CP and md-0, one bootstrap template: {after:?}"
    );
    report.push(format!(
        "machine image (crash after write 1, resumed): rollout -> {all:?}"
    ));
    spec = next;

    // Add-on change: a new layer is applied by the same reconcile.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: day2-addon, namespace: default}\n";
    let mut next = spec.clone();
    next.profile = Some(spec::Profile {
        core_layers: Vec::new(),
        name: Some("base".into()),
        layers: vec![layer("extra", &[cm])],
        cluster_profile_ref: None,
    });
    generation += 1;
    let ran = run(&f, &next, generation).await;
    assert!(matches!(ran.step, Ok(Step::Done(_))), "{:?}", ran.step);
    assert!(ran.writes.is_empty(), "no CAPI write: {:?}", ran.writes);
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    cms.get("day2-addon").await.unwrap();
    report.push(format!(
        "add-on change: CAPI objects {} -> [] ; layer extra applied: +ConfigMap/day2-addon",
        ran.class.clone().map_or_else(|e| e, |c| c.to_string())
    ));
    spec = next;

    // Drift: a `kubectl edit` of md-0's replicas is reverted by the next resync and reported.
    f.journal_reconciled(generation);
    api(&client, KINDS[1].0, KINDS[1].1)
        .patch(
            &format!("{NAME}-md-0"),
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    let ran = run(&f, &spec, generation).await;
    let Ok(Step::Done(msg)) = &ran.step else {
        panic!("{:?}", ran.step)
    };
    assert!(
        msg.contains("drift corrected") && msg.contains("spec.replicas: 7 -> 4"),
        "{msg}"
    );
    let md0 = api(&client, KINDS[1].0, KINDS[1].1)
        .get(&format!("{NAME}-md-0"))
        .await
        .unwrap();
    assert_eq!(md0.data["spec"]["replicas"], 4);
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), NS);
    let drift: Vec<_> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("DriftCorrected"))
        .collect();
    assert!(!drift.is_empty());
    report.push(format!(
        "kubectl edit md-0 replicas 7: drift -> {:?}",
        ran.writes
    ));
    println!("CORPUS\n{}", report.join("\n"));
}

async fn exists(client: &kube::Client, v: &str, kind: &str, ns: Option<&str>, name: &str) -> bool {
    let ar = capi::resource(v, kind);
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.get_opt(name).await.unwrap().is_some()
}

/// Plays the kubelet for one Deployment in `default`.
async fn roll_out(client: &kube::Client, name: &str) {
    let api: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "default");
    let d = api.get(name).await.unwrap();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"observedGeneration": d.metadata.generation,
            "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}}),
        ),
    )
    .await
    .unwrap();
}

fn deployment(name: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  replicas: 1\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers: [{{name: c, image: registry.invalid/x:1}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_layers_are_applied_in_order_health_gated_and_pruned() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    let client = f.local.client().await;
    let crd = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.fledge.dev}
spec:
  group: example.fledge.dev
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;
    let widget = "apiVersion: example.fledge.dev/v1\nkind: Widget\nmetadata: {name: w, namespace: default}\n";
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: addons-demo}\n";
    let cm = |n: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {n}, namespace: default}}\n")
    };
    let (d1, d3) = (deployment("net"), deployment("mon"));
    let (c2, c5a, c5b) = (cm("storage-class"), cm("policy-a"), cm("policy-b"));
    let layers = vec![
        layer("network", &[ns, &d1]),
        layer("crds", &[crd]),
        layer("storage", &[widget, &c2]),
        layer("monitoring", &[&d3]),
        layer("security", &[&c5a, &c5b]),
    ];
    let mut spec = base_spec();
    spec.profile = Some(spec::Profile {
        core_layers: Vec::new(),
        name: Some("base".into()),
        layers: layers.clone(),
        cluster_profile_ref: None,
    });
    let ctx = f.ctx(client.clone(), &spec, 1);
    let reconcile = || async { addons::reconcile(&ctx, &|_| {}).await.unwrap() };

    // Layer 1 is applied and waits for its Deployment; nothing of layer 2 exists.
    let Step::Waiting(why) = reconcile().await else {
        panic!("layer 1 is not healthy yet")
    };
    assert!(
        why.starts_with("layer network: Deployment.apps default/net"),
        "{why}"
    );
    assert!(exists(&client, "apps/v1", "Deployment", Some("default"), "net").await);
    let crd_api = "apiextensions.k8s.io/v1";
    assert!(
        !exists(
            &client,
            crd_api,
            "CustomResourceDefinition",
            None,
            "widgets.example.fledge.dev"
        )
        .await
    );
    // Again: still waiting, still nothing of layer 2.
    assert!(matches!(reconcile().await, Step::Waiting(_)));
    assert!(
        !exists(
            &client,
            crd_api,
            "CustomResourceDefinition",
            None,
            "widgets.example.fledge.dev"
        )
        .await
    );
    roll_out(&client, "net").await;
    // Layer 2 (the CRD, Established by the apiserver) and layer 3 (a Widget, which needs the
    // CRD) go in; layer 4 waits for its Deployment; layer 5 is not applied.
    let Step::Waiting(why) = reconcile().await else {
        panic!("layer 4 is not healthy yet")
    };
    let why = if why.starts_with("layer crds") {
        // The CRD may need a moment to be Established.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        match reconcile().await {
            Step::Waiting(w) => w,
            other => panic!("{other:?}"),
        }
    } else {
        why
    };
    assert!(why.starts_with("layer monitoring:"), "{why}");
    assert!(
        exists(
            &client,
            "example.fledge.dev/v1",
            "Widget",
            Some("default"),
            "w"
        )
        .await
    );
    assert!(!exists(&client, "v1", "ConfigMap", Some("default"), "policy-a").await);
    let states = addons::states(f.state.path());
    assert_eq!(states["storage"].state, "Healthy");
    assert_eq!(states["monitoring"].state, "Progressing");
    assert_eq!(states["security"].state, "Pending");
    roll_out(&client, "mon").await;
    let Step::Done(msg) = reconcile().await else {
        panic!("all layers healthy")
    };
    assert_eq!(
        msg,
        "layers: network healthy, crds healthy, storage healthy, monitoring healthy, security healthy"
    );
    // The ApplySet parent lists its members' kinds, so kubectl understands it.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "kube-system");
    let parent = secrets.get("fledge-addons-network").await.unwrap();
    assert_eq!(
        parent.annotations()["applyset.kubernetes.io/contains-group-kinds"],
        "Deployment.apps,Namespace"
    );
    assert_eq!(
        parent.labels()["applyset.kubernetes.io/id"],
        addons::applyset::applyset_id("network")
    );

    // Drop policy-b from the security layer and the whole monitoring layer: one reconcile
    // prunes both.
    let mut pruned = layers.clone();
    pruned[4] = layer("security", &[&c5a]);
    pruned.remove(3);
    spec.profile.as_mut().unwrap().layers = pruned;
    let ctx = f.ctx(client.clone(), &spec, 2);
    let Step::Done(msg) = addons::reconcile(&ctx, &|_| {}).await.unwrap() else {
        panic!("healthy")
    };
    assert!(msg.ends_with("1 objects of removed layers pruned"), "{msg}");
    assert!(exists(&client, "v1", "ConfigMap", Some("default"), "policy-a").await);
    assert!(!exists(&client, "v1", "ConfigMap", Some("default"), "policy-b").await);
    // Deletion of a Deployment is asynchronous only for its dependents; the object goes now.
    assert!(!exists(&client, "apps/v1", "Deployment", Some("default"), "mon").await);
    assert!(
        secrets
            .get_opt("fledge-addons-monitoring")
            .await
            .unwrap()
            .is_none()
    );

    // A `kubectl edit` of a managed field of an add-on object is reverted by the next resync.
    cms_edit(&client).await;
    addons::reconcile(&ctx, &|_| {}).await.unwrap();
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    let sc = cms.get("storage-class").await.unwrap();
    let labels = sc.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("applyset.kubernetes.io/part-of"),
        Some(&addons::applyset::applyset_id("storage")),
        "the membership label, edited away, is back"
    );
}

/// `kubectl edit` of the storage-class ConfigMap: its ApplySet label changed by hand.
async fn cms_edit(client: &kube::Client) {
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    cms.patch(
        "storage-class",
        &PatchParams {
            field_manager: Some("kubectl-edit".into()),
            ..Default::default()
        },
        &Patch::Merge(
            json!({"metadata": {"labels": {"applyset.kubernetes.io/part-of": "edited"}}}),
        ),
    )
    .await
    .unwrap();
}

/// The cluster's MachineHealthCheck `name` in the local cluster, if any.
async fn health_check(client: &kube::Client, name: &str) -> Option<DynamicObject> {
    api(client, "cluster.x-k8s.io/v1beta2", "MachineHealthCheck")
        .get_opt(&format!("{NAME}-{name}"))
        .await
        .unwrap()
}

/// Sets md-0's replicas as a person would (`kubectl scale`/`edit`: another field manager).
async fn scale_by_hand(client: &kube::Client, replicas: i64) {
    api(client, KINDS[1].0, KINDS[1].1)
        .patch(
            &format!("{NAME}-md-0"),
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

async fn md0_replicas(client: &kube::Client) -> Value {
    api(client, KINDS[1].0, KINDS[1].1)
        .get(&format!("{NAME}-md-0"))
        .await
        .unwrap()
        .data["spec"]["replicas"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_and_autoscaling_bounds_are_reconciled() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    let client = f.local.client().await;
    let mut spec = base_spec();
    spec.workers[0].replicas = 2;
    spec.workers[0].autoscaling = Some(spec::Autoscaling { min: 1, max: 5 });
    let mut generation = 1;

    // First reconcile: the pool at its initial size with its bounds, and the health checks of
    // the control plane and the pool, through the real CAPI webhooks.
    let ran = run(&f, &spec, generation).await;
    assert!(matches!(ran.step, Ok(Step::Done(_))), "{:?}", ran.step);
    assert_eq!(md0_replicas(&client).await, 2);
    let md0 = api(&client, KINDS[1].0, KINDS[1].1)
        .get(&format!("{NAME}-md-0"))
        .await
        .unwrap();
    assert_eq!(
        md0.annotations()["cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size"],
        "5"
    );
    let cp = health_check(&client, "control-plane").await.unwrap();
    assert_eq!(
        cp.data["spec"]["selector"]["matchLabels"]["cluster.x-k8s.io/control-plane"],
        ""
    );
    // The MachineHealthCheck webhook labelled it with the cluster's name.
    assert_eq!(cp.labels()["cluster.x-k8s.io/cluster-name"], NAME);
    assert!(health_check(&client, "md-0").await.is_some());
    let ran = run(&f, &spec, generation).await;
    assert_eq!(ran.class, Ok(Class::NoOp), "replay: {:?}", ran.plan);

    // A health check's timeout: in place, nothing else written.
    let mut next = spec.clone();
    next.workers[0].health_check = Some(spec::HealthCheck {
        ready_unknown_seconds: Some(600),
        ..Default::default()
    });
    generation += 1;
    let ran = run(&f, &next, generation).await;
    assert_eq!(ran.class, Ok(Class::InPlace), "{:?}", ran.plan);
    assert!(
        ran.plan.iter().any(|l| l
            == "~ MachineHealthCheck/docker-demo-md-0 spec.checks.unhealthyNodeConditions[1].timeoutSeconds: 300 -> 600 (in-place)"),
        "{:?}",
        ran.plan
    );
    assert!(ran.writes.is_empty(), "{:?}", ran.writes);
    let md_check = health_check(&client, "md-0").await.unwrap();
    assert_eq!(
        md_check.data["spec"]["checks"]["unhealthyNodeConditions"][1]["timeoutSeconds"],
        600
    );
    spec = next;

    // Replicas changed by hand (or by the autoscaler) inside the bounds stay; outside them
    // they are brought back to the nearest bound, as drift.
    f.journal_reconciled(generation);
    scale_by_hand(&client, 4).await;
    let ran = run(&f, &spec, generation).await;
    assert_eq!(ran.class, Ok(Class::NoOp), "{:?}", ran.plan);
    assert!(ran.writes.is_empty(), "{:?}", ran.writes);
    assert_eq!(md0_replicas(&client).await, 4);
    scale_by_hand(&client, 9).await;
    let ran = run(&f, &spec, generation).await;
    let Ok(Step::Done(msg)) = &ran.step else {
        panic!("{:?}", ran.step)
    };
    assert!(
        msg.contains("drift corrected") && msg.contains("spec.replicas: 9 -> 5"),
        "{msg}"
    );
    assert_eq!(md0_replicas(&client).await, 5);
    // Back inside the bounds, the agent lets go of the count again.
    f.journal_reconciled(generation);
    scale_by_hand(&client, 3).await;
    let ran = run(&f, &spec, generation).await;
    assert_eq!(ran.class, Ok(Class::NoOp), "{:?}", ran.plan);
    assert_eq!(md0_replicas(&client).await, 3);

    // A check switched off is deleted; the control plane's stays.
    let mut next = spec.clone();
    next.workers[0].health_check = Some(spec::HealthCheck {
        enabled: Some(false),
        ..Default::default()
    });
    generation += 1;
    let ran = run(&f, &next, generation).await;
    assert_eq!(ran.class, Ok(Class::InPlace), "{:?}", ran.plan);
    assert!(matches!(ran.step, Ok(Step::Done(_))), "{:?}", ran.step);
    assert!(health_check(&client, "md-0").await.is_none());
    assert!(health_check(&client, "control-plane").await.is_some());
}
