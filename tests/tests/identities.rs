//! Identities across the pivot (issue 27, item 4), side by side with the real `clusterctl move`
//! on the same fixture: CAPA's global identities (a role identity chained to a static identity
//! whose Secret lives in `capa-system`, owned by it as CAPA sets it), CAPZ's
//! `AzureClusterIdentity` labelled `move-hierarchy` with its labelled client Secret, and CAPG's
//! `credentialsRef` Secret labelled `move`, with the providers' real CRDs (`shared/crds`, and
//! CAPA v2.11.1's identity CRDs from its Go module, which `shared/crds` lacks).

use std::collections::BTreeMap;

use fledge_agent::pivot::apply::{Direction, Options as PivotOptions, Pivot, PivotError};
use fledge_agent::pivot::discover::discover;
use fledge_agent::pivot::plan::plan;
use fledge_tests::cluster::{Options, TestCluster, start_or_skip};
use fledge_tests::install::{create_and_wait, install_crds};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const CAPI: &str = "cluster.x-k8s.io/v1beta2";
const CAPA: &str = "infrastructure.cluster.x-k8s.io/v1beta2";
const CAPZ: &str = "infrastructure.cluster.x-k8s.io/v1beta1";
const CAPG: &str = "infrastructure.cluster.x-k8s.io/v1beta1";
const MOVE: &str = "clusterctl.cluster.x-k8s.io/move";
const MOVE_HIERARCHY: &str = "clusterctl.cluster.x-k8s.io/move-hierarchy";

/// (namespace, cluster) of each provider's cluster.
const CLUSTERS: [(&str, &str); 3] = [("aws", "aws-a"), ("azure", "az-a"), ("gcp", "gcp-a")];

/// The infrastructure providers: (inventory name, provider, namespace).
const INFRA: [(&str, &str, &str); 3] = [
    ("infrastructure-aws", "aws", "capa-system"),
    ("infrastructure-azure", "azure", "capz-system"),
    ("infrastructure-gcp", "gcp", "capg-system"),
];

async fn ensure_namespace(client: &kube::Client, ns: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    match api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("namespace {ns}: {e}"),
    }
}

/// A management cluster as `clusterctl init --infrastructure aws,azure,gcp` leaves it (the
/// CRDs, the provider namespaces and clusterctl's inventory; no controllers).
async fn management_cluster() -> Option<TestCluster> {
    let aws_identities = fledge_tests::crds::capa_identity_crds()?;
    let c = start_or_skip(Options::default()).await?;
    let client = c.client().await;
    install_crds(
        &client,
        &[
            "cluster-api/v1.13.5",
            "cluster-api-provider-aws/v2.11.1",
            "cluster-api-provider-azure/v1.26.0",
            "cluster-api-provider-gcp/v1.12.0",
        ],
    )
    .await
    .unwrap();
    create_and_wait(&client, aws_identities).await.unwrap();
    fledge_tests::install::clusterctl_inventory(&client, "v1.13.5")
        .await
        .unwrap();
    let inventory = fledge_agent::clusterctl::inventory::inventory_resource();
    for (name, provider, ns) in INFRA {
        ensure_namespace(&client, ns).await;
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &inventory);
        let body = json!({"apiVersion": "clusterctl.cluster.x-k8s.io/v1alpha3", "kind": "Provider",
            "metadata": {"name": name, "labels": {"clusterctl.cluster.x-k8s.io": "", "cluster.x-k8s.io/provider": name}},
            "providerName": provider, "type": "InfrastructureProvider", "version": "v1.0.0"});
        api.create(
            &PostParams::default(),
            &serde_json::from_value(body).unwrap(),
        )
        .await
        .unwrap();
    }
    Some(c)
}

async fn resource(client: &kube::Client, api_version: &str, kind: &str) -> (ApiResource, bool) {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let (ar, caps) =
        kube::discovery::pinned_kind(client, &GroupVersionKind::gvk(group, version, kind))
            .await
            .unwrap_or_else(|e| panic!("{kind} {api_version}: {e}"));
    (ar, caps.scope == kube::discovery::Scope::Namespaced)
}

async fn api_of(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    ns: &str,
) -> Api<DynamicObject> {
    let (ar, namespaced) = resource(client, api_version, kind).await;
    if namespaced {
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    }
}

/// Creates `obj` (in `ns` when its type is namespaced), owned by `owners` (kind, name, uid,
/// apiVersion), then sets `status`; returns its uid.
async fn create(
    client: &kube::Client,
    ns: &str,
    mut obj: Value,
    owners: &[(&str, &str, &str, &str)],
    status: Option<Value>,
) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap().to_string();
    let kind = obj["kind"].as_str().unwrap().to_string();
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    if !owners.is_empty() {
        obj["metadata"]["ownerReferences"] = owners
            .iter()
            .map(|(k, n, u, a)| json!({"apiVersion": a, "kind": k, "name": n, "uid": u}))
            .collect();
    }
    let api = api_of(client, &api_version, &kind, ns).await;
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(obj).unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("creating {kind}/{name}: {e}"));
    if let Some(status) = status {
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap_or_else(|e| panic!("status of {kind}/{name}: {e}"));
    }
    created.metadata.uid.unwrap()
}

/// A provisioned Cluster (as clusterctl move wants it) and its infrastructure cluster.
async fn cluster(client: &kube::Client, ns: &str, name: &str, infra: Value) {
    ensure_namespace(client, ns).await;
    let kind = infra["kind"].as_str().unwrap().to_string();
    let api_version = infra["apiVersion"].as_str().unwrap().to_string();
    let c = create(client, ns, json!({"apiVersion": CAPI, "kind": "Cluster",
        "metadata": {"name": name, "labels": {"cluster.x-k8s.io/cluster-name": name}},
        "spec": {"infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": kind, "name": name}}}),
        &[],
        Some(json!({"initialization": {"infrastructureProvisioned": true},
            "conditions": [{"type": "ControlPlaneInitialized", "status": "True", "reason": "Initialized", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}))).await;
    create(client, ns, infra, &[("Cluster", name, &c, CAPI)], None).await;
    let _ = api_version;
}

/// The fixture: the three providers' clusters with their identities as the providers' docs and
/// templates set them up, plus another tenant's AWS identity and CAPA's default controller
/// identity, which no cluster here uses.
async fn fixture(client: &kube::Client) {
    let secret = |ns: &str, name: &str, labels: Value| {
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "stringData": {"credentials": format!("secret of {name}")}})
    };
    // CAPA: AWSCluster -> role identity -> static identity -> Secret in capa-system, which
    // CAPA makes the identity's dependant "for clusterctl move".
    let stat = create(
        client,
        "",
        json!({"apiVersion": CAPA, "kind": "AWSClusterStaticIdentity",
        "metadata": {"name": "static"},
        "spec": {"secretRef": "aws-static-creds", "allowedNamespaces": {}}}),
        &[],
        None,
    )
    .await;
    create(
        client,
        "capa-system",
        secret("capa-system", "aws-static-creds", json!({})),
        &[("AWSClusterStaticIdentity", "static", &stat, CAPA)],
        None,
    )
    .await;
    create(client, "", json!({"apiVersion": CAPA, "kind": "AWSClusterRoleIdentity",
        "metadata": {"name": "role"},
        "spec": {"roleARN": "arn:aws:iam::123456789012:role/capa", "sessionName": "fledge",
            "allowedNamespaces": {}, "sourceIdentityRef": {"kind": "AWSClusterStaticIdentity", "name": "static"}}}),
        &[], None).await;
    let other = create(
        client,
        "",
        json!({"apiVersion": CAPA, "kind": "AWSClusterStaticIdentity",
        "metadata": {"name": "other-tenant"},
        "spec": {"secretRef": "other-tenant-creds", "allowedNamespaces": {"list": ["elsewhere"]}}}),
        &[],
        None,
    )
    .await;
    create(
        client,
        "capa-system",
        secret("capa-system", "other-tenant-creds", json!({})),
        &[("AWSClusterStaticIdentity", "other-tenant", &other, CAPA)],
        None,
    )
    .await;
    create(
        client,
        "",
        json!({"apiVersion": CAPA, "kind": "AWSClusterControllerIdentity",
        "metadata": {"name": "default"}, "spec": {"allowedNamespaces": {}}}),
        &[],
        None,
    )
    .await;
    cluster(client, "aws", "aws-a", json!({"apiVersion": CAPA, "kind": "AWSCluster",
        "metadata": {"name": "aws-a"},
        "spec": {"region": "eu-west-1", "identityRef": {"kind": "AWSClusterRoleIdentity", "name": "role"}}})).await;
    // CAPZ: the template's identity, labelled move-hierarchy, and the client Secret labelled
    // as CAPZ's docs ask.
    ensure_namespace(client, "azure").await;
    create(
        client,
        "azure",
        secret("azure", "az-secret", json!({MOVE_HIERARCHY: "true"})),
        &[],
        None,
    )
    .await;
    create(
        client,
        "azure",
        json!({"apiVersion": CAPZ, "kind": "AzureClusterIdentity",
        "metadata": {"name": "az-id", "labels": {MOVE_HIERARCHY: "true"}},
        "spec": {"type": "ServicePrincipal", "clientID": "00000000-0000-0000-0000-000000000001",
            "tenantID": "00000000-0000-0000-0000-000000000002", "allowedNamespaces": {},
            "clientSecret": {"name": "az-secret", "namespace": "azure"}}}),
        &[],
        None,
    )
    .await;
    cluster(client, "azure", "az-a", json!({"apiVersion": CAPZ, "kind": "AzureCluster",
        "metadata": {"name": "az-a"},
        "spec": {"location": "westeurope", "resourceGroup": "az-a",
            "identityRef": {"kind": "AzureClusterIdentity", "name": "az-id", "namespace": "azure"}}})).await;
    // CAPG: the credentialsRef Secret, labelled move as clusterctl's contract asks.
    ensure_namespace(client, "gcp").await;
    create(
        client,
        "gcp",
        secret("gcp", "gcp-creds", json!({MOVE: ""})),
        &[],
        None,
    )
    .await;
    cluster(
        client,
        "gcp",
        "gcp-a",
        json!({"apiVersion": CAPG, "kind": "GCPCluster",
        "metadata": {"name": "gcp-a"},
        "spec": {"project": "p", "region": "europe-west1", "network": {"name": "default"},
            "credentialsRef": {"name": "gcp-creds", "namespace": "gcp"}}}),
    )
    .await;
}

/// The identity objects compared: (apiVersion, kind, namespace or "" for global, name).
const WATCHED: [(&str, &str, &str, &str); 9] = [
    (CAPA, "AWSClusterRoleIdentity", "", "role"),
    (CAPA, "AWSClusterStaticIdentity", "", "static"),
    ("v1", "Secret", "capa-system", "aws-static-creds"),
    (CAPA, "AWSClusterStaticIdentity", "", "other-tenant"),
    ("v1", "Secret", "capa-system", "other-tenant-creds"),
    (CAPA, "AWSClusterControllerIdentity", "", "default"),
    (CAPZ, "AzureClusterIdentity", "azure", "az-id"),
    ("v1", "Secret", "azure", "az-secret"),
    ("v1", "Secret", "gcp", "gcp-creds"),
];

fn label(w: &(&str, &str, &str, &str)) -> String {
    match w.2 {
        "" => format!("{}/{}", w.1, w.3),
        ns => format!("{} {ns}/{}", w.1, w.3),
    }
}

/// The watched objects a cluster holds: label -> (spec or data, owners as `Kind/name`).
async fn holdings(client: &kube::Client) -> BTreeMap<String, (Value, Vec<String>)> {
    let mut out = BTreeMap::new();
    for w in &WATCHED {
        let api = api_of(client, w.0, w.1, w.2).await;
        if let Some(o) = api.get_opt(w.3).await.unwrap() {
            let body = if w.1 == "Secret" {
                o.data["data"].clone()
            } else {
                o.data["spec"].clone()
            };
            let owners = o
                .metadata
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .map(|r| format!("{}/{}", r.kind, r.name))
                .collect();
            out.insert(label(w), (body, owners));
        }
    }
    out
}

/// Whether (clusterctl's source, its target, fledge's source, its target) hold an object.
type Row<'a> = (&'a str, &'a str, &'a str, &'a str);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mover {
    Fledge,
    Clusterctl,
}

/// Moves the three clusters with `mover`; returns what the source and the target hold after.
async fn moved_by(
    mover: Mover,
) -> Option<(
    BTreeMap<String, (Value, Vec<String>)>,
    BTreeMap<String, (Value, Vec<String>)>,
)> {
    let s = management_cluster().await?;
    let t = management_cluster().await?;
    let (sc, tc) = (s.client().await, t.client().await);
    fixture(&sc).await;
    for (ns, name) in CLUSTERS {
        match mover {
            Mover::Fledge => {
                let progress = |e: &fledge_agent::pivot::apply::Event| println!("{ns}/{name}: {e}");
                let r = Pivot::new(&sc, &tc, ns, name, PivotOptions::default(), &progress)
                    .run()
                    .await;
                r.unwrap_or_else(|e| panic!("fledge pivot of {ns}/{name}: {e:#}"));
            }
            Mover::Clusterctl => {
                let bin = fledge_tests::cluster::assets_bin().join("clusterctl");
                if !bin.exists() {
                    fledge_tests::missing(
                        &format!("clusterctl at {}", bin.display()),
                        "run scripts/go-peers.sh (it builds clusterctl beside the apiserver)",
                    );
                    return None;
                }
                let home = tempfile::tempdir().unwrap();
                let out = std::process::Command::new(bin)
                    .args(["move", "--kubeconfig"])
                    .arg(&s.kubeconfig)
                    .arg("--to-kubeconfig")
                    .arg(&t.kubeconfig)
                    .args(["-n", ns])
                    .env("CLUSTERCTL_DISABLE_VERSIONCHECK", "true")
                    .env("XDG_CONFIG_HOME", home.path())
                    .env("HOME", home.path())
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "clusterctl move -n {ns}: {}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    let source = holdings(&sc).await;
    let target = holdings(&tc).await;
    if mover == Mover::Fledge {
        // The moved Secret names its identity's copy in the target (the target's uid).
        let id = api_of(&tc, CAPA, "AWSClusterStaticIdentity", "")
            .await
            .get("static")
            .await
            .unwrap();
        let secret = api_of(&tc, "v1", "Secret", "capa-system")
            .await
            .get("aws-static-creds")
            .await
            .unwrap();
        let owner = &secret.metadata.owner_references.unwrap()[0];
        assert_eq!(Some(&owner.uid), id.metadata.uid.as_ref());
        // Back again (the unpivot of a deletion or re-homing): the global identities the
        // management plane kept are left as they are, the namespaced ones come back.
        for (ns, name) in CLUSTERS {
            let progress =
                |e: &fledge_agent::pivot::apply::Event| println!("unpivot {ns}/{name}: {e}");
            let opts = PivotOptions {
                direction: Direction::Unpivot,
                ..PivotOptions::default()
            };
            Pivot::new(&tc, &sc, ns, name, opts, &progress)
                .run()
                .await
                .unwrap_or_else(|e| panic!("fledge unpivot of {ns}/{name}: {e:#}"));
        }
        let back = holdings(&sc).await;
        let mut want = source.clone();
        for (k, v) in &target {
            want.entry(k.clone()).or_insert_with(|| v.clone());
        }
        assert_eq!(
            back.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "after the unpivot the management plane holds every identity again"
        );
        let untouched = api_of(&sc, CAPA, "AWSClusterStaticIdentity", "")
            .await
            .get("static")
            .await
            .unwrap();
        assert!(
            untouched
                .metadata
                .annotations
                .unwrap_or_default()
                .is_empty(),
            "the unpivot left the management plane's global identity as it was"
        );
    }
    Some((source, target))
}

#[tokio::test(flavor = "multi_thread")]
async fn identities_are_moved_as_clusterctl_move_moves_them() {
    let Some((fs, ft)) = moved_by(Mover::Fledge).await else {
        return;
    };
    let Some((cs, ct)) = moved_by(Mover::Clusterctl).await else {
        return;
    };
    let yes = |m: &BTreeMap<String, (Value, Vec<String>)>, k: &str| {
        if m.contains_key(k) { "yes" } else { "-" }
    };
    println!(
        "{:<52} {:>10} {:>10} | {:>10} {:>10}",
        "object", "cctl src", "cctl tgt", "fledge src", "fledge tgt"
    );
    let mut table = Vec::new();
    for w in &WATCHED {
        let k = label(w);
        let row = (yes(&cs, &k), yes(&ct, &k), yes(&fs, &k), yes(&ft, &k));
        println!(
            "{k:<52} {:>10} {:>10} | {:>10} {:>10}",
            row.0, row.1, row.2, row.3
        );
        table.push((k, row));
    }
    // clusterctl copies every global identity of a type labelled move-hierarchy and the Secrets
    // they own; fledge copies those the moved cluster names (another tenant's identity would
    // hand its credentials to this cluster). Namespaced identities and Secrets leave the source
    // with both.
    let want = [
        ("AWSClusterRoleIdentity/role", ("yes", "yes", "yes", "yes")),
        (
            "AWSClusterStaticIdentity/static",
            ("yes", "yes", "yes", "yes"),
        ),
        (
            "Secret capa-system/aws-static-creds",
            ("yes", "yes", "yes", "yes"),
        ),
        (
            "AWSClusterStaticIdentity/other-tenant",
            ("yes", "yes", "yes", "-"),
        ),
        (
            "Secret capa-system/other-tenant-creds",
            ("yes", "yes", "yes", "-"),
        ),
        (
            "AWSClusterControllerIdentity/default",
            ("yes", "yes", "yes", "-"),
        ),
        ("AzureClusterIdentity azure/az-id", ("-", "yes", "-", "yes")),
        ("Secret azure/az-secret", ("-", "yes", "-", "yes")),
        ("Secret gcp/gcp-creds", ("-", "yes", "-", "yes")),
    ];
    let got: Vec<(&str, Row)> = table.iter().map(|(k, r)| (k.as_str(), *r)).collect();
    assert_eq!(got, want);
    // What both copied is the same in both targets: body and owners.
    for (k, (body, owners)) in &ft {
        assert_eq!(Some(&(body.clone(), owners.clone())), ct.get(k), "{k}");
    }
}

/// What the pivot cannot move as clusterctl would is refused before any write, naming the
/// identity.
#[tokio::test(flavor = "multi_thread")]
async fn identities_the_pivot_cannot_follow_are_refused_naming_them() {
    let Some(s) = management_cluster().await else {
        return;
    };
    let Some(t) = management_cluster().await else {
        return;
    };
    let (sc, tc) = (s.client().await, t.client().await);
    // An identity in another namespace (CAPZ allows it through allowedNamespaces).
    ensure_namespace(&sc, "shared-ids").await;
    create(&sc, "shared-ids", json!({"apiVersion": CAPZ, "kind": "AzureClusterIdentity",
        "metadata": {"name": "team"},
        "spec": {"type": "WorkloadIdentity", "clientID": "c", "tenantID": "t", "allowedNamespaces": {}}}), &[], None).await;
    cluster(&sc, "az", "az-b", json!({"apiVersion": CAPZ, "kind": "AzureCluster",
        "metadata": {"name": "az-b"},
        "spec": {"location": "westeurope", "identityRef": {"kind": "AzureClusterIdentity", "name": "team", "namespace": "shared-ids"}}})).await;
    // A static identity whose Secret is nowhere.
    create(
        &sc,
        "",
        json!({"apiVersion": CAPA, "kind": "AWSClusterStaticIdentity",
        "metadata": {"name": "no-secret"}, "spec": {"secretRef": "gone"}}),
        &[],
        None,
    )
    .await;
    cluster(&sc, "aws", "aws-b", json!({"apiVersion": CAPA, "kind": "AWSCluster",
        "metadata": {"name": "aws-b"},
        "spec": {"region": "eu-west-1", "identityRef": {"kind": "AWSClusterStaticIdentity", "name": "no-secret"}}})).await;
    // An identity that does not exist.
    cluster(&sc, "aws2", "aws-c", json!({"apiVersion": CAPA, "kind": "AWSCluster",
        "metadata": {"name": "aws-c"},
        "spec": {"region": "eu-west-1", "identityRef": {"kind": "AWSClusterRoleIdentity", "name": "missing"}}})).await;
    // A credentials Secret that does not exist.
    cluster(&sc, "gcp", "gcp-b", json!({"apiVersion": CAPG, "kind": "GCPCluster",
        "metadata": {"name": "gcp-b"},
        "spec": {"project": "p", "region": "r", "credentialsRef": {"name": "nowhere", "namespace": "gcp"}}})).await;
    let cases = [
        (
            "az",
            "az-b",
            "AzureCluster/az-b: spec.identityRef names AzureClusterIdentity/team in namespace shared-ids",
        ),
        (
            "aws",
            "aws-b",
            "AWSClusterStaticIdentity/no-secret: spec.secretRef names Secret gone, which does not exist in the infrastructure provider namespaces",
        ),
        (
            "aws2",
            "aws-c",
            "AWSCluster/aws-c: spec.identityRef names the cluster-scoped AWSClusterRoleIdentity/missing, which does not exist",
        ),
        (
            "gcp",
            "gcp-b",
            "GCPCluster/gcp-b: spec.credentialsRef names Secret nowhere, which does not exist in namespace gcp",
        ),
    ];
    for (ns, name, want) in cases {
        let g = discover(&sc, ns, name).await.unwrap();
        let p = plan(&g, ns, name);
        let refused: Vec<String> = p
            .refused
            .iter()
            .map(|(o, why)| format!("{o}: {why}"))
            .collect();
        assert!(
            refused.iter().any(|r| r.starts_with(want)),
            "{ns}/{name}: {refused:#?}"
        );
        let progress = |_: &fledge_agent::pivot::apply::Event| {};
        let err = Pivot::new(&sc, &tc, ns, name, PivotOptions::default(), &progress)
            .run()
            .await
            .unwrap_err();
        assert!(matches!(err, PivotError::Refused(_)), "{err:#}");
        assert!(err.to_string().contains(want), "{err}");
        let cluster = api_of(&sc, CAPI, "Cluster", ns)
            .await
            .get(name)
            .await
            .unwrap();
        assert!(
            cluster.data["spec"]["paused"].is_null(),
            "nothing was written: the source Cluster is not paused"
        );
    }
}
