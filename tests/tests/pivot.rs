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
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["total"], 14);
}
