//! The providers' credentials (issue 27, item 3) against a real kube-apiserver: the request names
//! a Secret on the management plane (`spec.infrastructure.variablesSecret`); the agent reads it
//! by name, with the rendered Role, when it installs the providers, and the values fill the
//! provider's components as `clusterctl init` fills them. Nothing the generator renders holds
//! them.
//!
//! - `the_agent_reads_the_named_secret_with_its_role_and_fills_capvs_credentials`: CAPV v1.16.1's
//!   own `config/base/credentials.yaml` (from its Go module) gets VSPHERE_USERNAME and
//!   VSPHERE_PASSWORD from the Secret, through the agent's token and Role.
//! - `a_missing_secret_or_a_key_that_is_no_variable_is_a_clear_error`: the error names the
//!   Secret, the field and the rule.
//! - `the_agents_cluster_role_reads_the_named_aws_identity_and_no_other`: the cluster-scoped
//!   identity an AWS request names, which the pivot copies, and nothing else of its kind.
//! - `vspheres_cloud_provider_gets_its_credentials_from_the_requests_secret`: the Secret
//!   cloud-provider-vsphere reads, made before the core layers.

use std::collections::BTreeMap;

use fledge_agent::phases::{self, Context, providers};
use fledge_agent::state::cache::CachedSpec;
use fledge_generator::management;
use fledge_generator::render::Templates;
use fledge_generator::spec::{self, CheckedCluster};
use fledge_generator::ssa::{ApplyOptions, apply};
use fledge_generator::target::client_from_kubeconfig;
use fledge_tests::cluster::{Options, TestCluster, USER, start_or_skip};
use fledge_tests::workspace_root;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

const USERNAME: &str = "fledge-test@vsphere.local";
const PASSWORD: &str = "pw-only-in-the-secret-5d1c";

fn request() -> CheckedCluster {
    spec::load_request(&workspace_root().join("tests/cases/vsphere-v1beta2/input.yaml")).unwrap()
}

/// The management plane with the request's Namespace, and its rendered Role bound to the test
/// user whose token plays the agent's.
async fn management_plane(checked: &CheckedCluster) -> Option<(TestCluster, kube::Client)> {
    let mgmt = start_or_skip(Options::default()).await?;
    let objects = management::objects(checked, &Templates::embedded()).unwrap();
    let access = fledge_tests::access::for_test_user(&objects);
    let namespace = objects[0].clone();
    assert_eq!(namespace["kind"], "Namespace");
    let target = client_from_kubeconfig(Some(&mgmt.kubeconfig))
        .await
        .unwrap();
    apply(
        &target,
        &[vec![namespace], access].concat(),
        &ApplyOptions::default(),
        |_| {},
    )
    .await
    .unwrap();
    let agent = client_from_kubeconfig(Some(&mgmt.user_kubeconfig))
        .await
        .unwrap()
        .client;
    Some((mgmt, agent))
}

async fn secret(client: &kube::Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "stringData": data.iter().map(|(k, v)| (k.to_string(), Value::from(*v))).collect::<serde_json::Map<_, _>>(),
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

/// The agent's context: the request's spec, the management plane through the agent's token.
fn context(checked: &CheckedCluster, management: kube::Client, state: &std::path::Path) -> Context {
    let config = state.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: fledge.dev/v1alpha1\nkind: AgentConfig\ncluster: {{name: {}, namespace: {}}}\n\
             management: {{server: 'https://127.0.0.1:1', tokenFile: /nonexistent/token, caFile: /nonexistent/ca.crt}}\n\
             stateDir: {}\nmetricsAddress: '127.0.0.1:0'\n\
             providers: {{variables: {{EXP_MACHINE_POOL: 'false', VSPHERE_USERNAME: from-the-config}}}}\n",
            checked.name,
            checked.namespace,
            state.display()
        ),
    )
    .unwrap();
    let cfg = fledge_agent::config::AgentConfig::load(&config).unwrap();
    let cached = CachedSpec::new(1, "uid-1", checked.spec.clone());
    let spec = phases::checked(&cfg, &cached).unwrap();
    Context {
        cfg,
        root: "/".into(),
        state_dir: state.to_path_buf(),
        local: management.clone(),
        management,
        spec,
        generation: 1,
        layer_clock: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_reads_the_named_secret_with_its_role_and_fills_capvs_credentials() {
    let checked = request();
    let name = checked
        .spec
        .infrastructure
        .variables_secret
        .clone()
        .expect("the vSphere case names its variables Secret");
    let Some((mgmt, agent)) = management_plane(&checked).await else {
        return;
    };
    let ns = checked.namespace.as_str();
    secret(
        &mgmt.client().await,
        ns,
        &name,
        &[
            ("VSPHERE_USERNAME", USERNAME),
            ("VSPHERE_PASSWORD", PASSWORD),
        ],
    )
    .await;
    // The rendered Role names the Secret: `get`, by name.
    let role = management::objects(&checked, &Templates::embedded())
        .unwrap()
        .into_iter()
        .find(|o| o["kind"] == "Role")
        .unwrap();
    assert!(
        role["rules"].as_array().unwrap().iter().any(|r| r
            == &json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": [name], "verbs": ["get"]})),
        "{role:#}"
    );

    let state = tempfile::tempdir().unwrap();
    let ctx = context(&checked, agent, state.path());
    let (variables, from_secret) = providers::variables(&ctx).await.unwrap();
    assert_eq!(from_secret, ["VSPHERE_PASSWORD", "VSPHERE_USERNAME"]);
    let want: BTreeMap<String, String> = [
        ("EXP_MACHINE_POOL", "false"),
        ("VSPHERE_PASSWORD", PASSWORD),
        // The Secret's value wins over the configuration's.
        ("VSPHERE_USERNAME", USERNAME),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(variables, want);

    // CAPV's own credentials Secret, as its release's components carry it.
    let marker = fledge_tests::cluster::assets_bin().join("capv.dir");
    let Ok(capv) = std::fs::read_to_string(&marker) else {
        fledge_tests::missing(
            &format!("{} (the capv Go module's path)", marker.display()),
            "run scripts/go-peers.sh",
        );
        return;
    };
    let file = std::path::Path::new(capv.trim()).join("config/base/credentials.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let docs = fledge_agent::clusterctl::components::substitute(&file, &text, &variables).unwrap();
    assert_eq!(
        docs[0]["stringData"]["credentials.yaml"],
        format!("username: '{USERNAME}'\npassword: '{PASSWORD}'")
    );

    // Nothing fledge renders for this request, nor the agent's state, holds a value.
    let templates = Templates::embedded();
    let mut rendered = String::new();
    for o in management::objects(&checked, &templates)
        .unwrap()
        .iter()
        .chain(&fledge_generator::workload::objects(&checked, &templates).unwrap())
    {
        rendered.push_str(&o.to_string());
    }
    let seed =
        fledge_generator::cloudinit::render(&checked, &templates, &Default::default(), usize::MAX)
            .unwrap();
    rendered.push_str(&seed.user_data);
    for entry in walk(state.path()) {
        rendered.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    assert!(!rendered.contains(PASSWORD) && !rendered.contains(USERNAME));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_secret_or_a_key_that_is_no_variable_is_a_clear_error() {
    let checked = request();
    let name = checked
        .spec
        .infrastructure
        .variables_secret
        .clone()
        .unwrap();
    let Some((mgmt, agent)) = management_plane(&checked).await else {
        return;
    };
    let ns = checked.namespace.as_str();
    let state = tempfile::tempdir().unwrap();
    let ctx = context(&checked, agent, state.path());
    let chain = |e: &dyn std::error::Error| {
        let mut s = e.to_string();
        let mut src = e.source();
        while let Some(x) = src {
            s.push_str(&format!(": {x}"));
            src = x.source();
        }
        s
    };
    let e = providers::variables(&ctx).await.unwrap_err();
    let said = chain(&e);
    assert!(
        said.starts_with(&format!(
            "cannot read the providers' variables from Secret {ns}/{name} on the management plane (spec.infrastructure.variablesSecret)"
        )) && said.contains("not found"),
        "{said}"
    );
    secret(
        &mgmt.client().await,
        ns,
        &name,
        &[("VSPHERE-USERNAME", USERNAME)],
    )
    .await;
    let e = providers::variables(&ctx).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "Secret {ns}/{name} (spec.infrastructure.variablesSecret): key \"VSPHERE-USERNAME\" is not a variable name (letters, digits and '_', not starting with a digit)"
        )
    );
}

/// The AWS request names a cluster-scoped identity (`aws.identityRef`); the pivot copies it, so
/// the rendered ClusterRole lets the agent `get` that one identity (CAPA v2.11.1's real CRD), and
/// no other tenant's, and list none.
#[tokio::test(flavor = "multi_thread")]
async fn the_agents_cluster_role_reads_the_named_aws_identity_and_no_other() {
    let checked =
        spec::load_request(&workspace_root().join("tests/cases/aws-v1beta2/input.yaml")).unwrap();
    let named = checked
        .spec
        .infrastructure
        .aws
        .as_ref()
        .unwrap()
        .identity_ref
        .clone()
        .unwrap();
    assert_eq!(named.kind, "AWSClusterStaticIdentity");
    let Some(crds) = fledge_tests::crds::capa_identity_crds() else {
        return;
    };
    let Some(mgmt) = start_or_skip(Options::default()).await else {
        return;
    };
    let admin = mgmt.client().await;
    fledge_tests::install::create_and_wait(&admin, crds)
        .await
        .unwrap();
    let objects = management::objects(&checked, &Templates::embedded()).unwrap();
    let role = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRole")
        .unwrap()
        .clone();
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "agent-test-user"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]});
    let target = client_from_kubeconfig(Some(&mgmt.kubeconfig))
        .await
        .unwrap();
    apply(&target, &[role, binding], &ApplyOptions::default(), |_| {})
        .await
        .unwrap();
    let ar = kube::api::ApiResource {
        group: "infrastructure.cluster.x-k8s.io".into(),
        version: "v1beta2".into(),
        api_version: "infrastructure.cluster.x-k8s.io/v1beta2".into(),
        kind: named.kind.clone(),
        plural: "awsclusterstaticidentities".into(),
    };
    for name in [named.name.as_str(), "other-tenant"] {
        let body: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": ar.api_version, "kind": ar.kind, "metadata": {"name": name},
            "spec": {"secretRef": format!("{name}-credentials"), "allowedNamespaces": {}}}))
        .unwrap();
        Api::<kube::api::DynamicObject>::all_with(admin.clone(), &ar)
            .create(&PostParams::default(), &body)
            .await
            .unwrap();
    }
    let agent = client_from_kubeconfig(Some(&mgmt.user_kubeconfig))
        .await
        .unwrap()
        .client;
    let api = Api::<kube::api::DynamicObject>::all_with(agent, &ar);
    let got = api.get(&named.name).await.unwrap();
    assert_eq!(
        got.data["spec"]["secretRef"],
        format!("{}-credentials", named.name)
    );
    let forbidden =
        |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    assert!(
        forbidden(api.get("other-tenant").await.map(|_| ())),
        "another tenant's identity"
    );
    assert!(
        forbidden(api.list(&Default::default()).await.map(|_| ())),
        "a list of identities"
    );
}

/// vSphere's cloud provider reads vCenter's credentials from
/// `kube-system/cloud-provider-vsphere-credentials` (`<server>.username`, `<server>.password`,
/// as CAPV's template makes it). Before the core layers the agent makes it from the request's
/// `vsphere.credentialsSecret`: on the management plane before the pivot, the cluster's moved
/// copy after it, and it keeps the one it made while neither can be read.
#[tokio::test(flavor = "multi_thread")]
async fn vspheres_cloud_provider_gets_its_credentials_from_the_requests_secret() {
    let checked = request();
    let block = checked.spec.infrastructure.vsphere.clone().unwrap();
    let Some((mgmt, agent)) = management_plane(&checked).await else {
        return;
    };
    let Some(local) = start_or_skip(Options::default()).await else {
        return;
    };
    let ns = checked.namespace.as_str();
    secret(
        &mgmt.client().await,
        ns,
        &block.credentials_secret,
        &[("username", USERNAME), ("password", PASSWORD)],
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let mut ctx = context(&checked, agent, state.path());
    ctx.local = local.client().await;
    let made = || async {
        let s = Api::<Secret>::namespaced(local.client().await, "kube-system")
            .get("cloud-provider-vsphere-credentials")
            .await
            .unwrap();
        s.data
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect::<BTreeMap<_, _>>()
    };
    let want = |password: &str| {
        BTreeMap::from([
            (format!("{}.password", block.server), password.to_string()),
            (format!("{}.username", block.server), USERNAME.to_string()),
        ])
    };
    let did = phases::corelayers::ensure_cloud_secret(&ctx).await.unwrap();
    assert_eq!(
        did.as_deref(),
        Some(
            format!(
                "kube-system/cloud-provider-vsphere-credentials made from Secret {ns}/{} in the management plane",
                block.credentials_secret
            )
            .as_str()
        )
    );
    assert_eq!(made().await, want(PASSWORD));

    // The management plane gone: the Secret made is kept.
    let mut offline = context(&checked, dead_client(), state.path());
    offline.local = local.client().await;
    let did = phases::corelayers::ensure_cloud_secret(&offline)
        .await
        .unwrap();
    assert!(did.unwrap().contains("kept"));
    assert_eq!(made().await, want(PASSWORD));

    // After the pivot the cluster holds the request's Secret (here with a new password).
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(local.client().await)
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    secret(
        &local.client().await,
        ns,
        &block.credentials_secret,
        &[("username", USERNAME), ("password", "rotated")],
    )
    .await;
    let did = phases::corelayers::ensure_cloud_secret(&offline)
        .await
        .unwrap();
    assert!(did.unwrap().ends_with("in the cluster"));
    assert_eq!(made().await, want("rotated"));

    // A Secret without the key the cloud provider needs is an error naming it.
    Api::<Secret>::namespaced(local.client().await, ns)
        .delete(&block.credentials_secret, &Default::default())
        .await
        .unwrap();
    secret(
        &local.client().await,
        ns,
        &block.credentials_secret,
        &[("user", USERNAME), ("password", PASSWORD)],
    )
    .await;
    let e = phases::corelayers::ensure_cloud_secret(&offline)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "cloud provider credentials: Secret {ns}/{} has no key \"username\", which the cloud provider's credentials need",
            block.credentials_secret
        )
    );
}

/// A client of a port nothing answers on.
fn dead_client() -> kube::Client {
    let mut c = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    c.connect_timeout = Some(std::time::Duration::from_secs(1));
    kube::Client::try_from(c).unwrap()
}
