//! The real-API-server harness itself: isolation, clean shutdown, failure reports, CRDs.

use std::path::Path;

use fledge_tests::cluster::{HarnessError, Options, TestCluster, start_or_skip};
use fledge_tests::install::install_crds;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};

#[tokio::test(flavor = "multi_thread")]
async fn two_clusters_are_isolated_and_stop_without_leftovers() {
    let Some(a) = start_or_skip(Options::default()).await else {
        return;
    };
    let Some(b) = start_or_skip(Options::default()).await else {
        return;
    };
    assert_ne!(a.url, b.url);
    let ns_a: Api<Namespace> = Api::all(a.client().await);
    let ns_b: Api<Namespace> = Api::all(b.client().await);
    let mut ns = Namespace::default();
    ns.metadata.name = Some("only-in-a".into());
    ns_a.create(&PostParams::default(), &ns).await.unwrap();
    assert!(ns_a.get_opt("only-in-a").await.unwrap().is_some());
    assert!(ns_b.get_opt("only-in-a").await.unwrap().is_none());

    let pids = a.pids();
    assert_eq!(pids.len(), 2, "etcd and kube-apiserver");
    let dir = a.dir().to_path_buf();
    drop(a);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still exists"
        );
    }
    assert!(!dir.exists(), "working directory removed");
    // The other cluster is unaffected.
    assert!(ns_b.list(&Default::default()).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_start_reports_the_log_tail() {
    let opts = Options {
        extra_apiserver_args: vec!["--no-such-flag=1".into()],
        ..Options::default()
    };
    match TestCluster::start_with(opts).await {
        Err(HarnessError::Server {
            component, tail, ..
        }) => {
            assert_eq!(component, "kube-apiserver");
            assert!(tail.contains("unknown flag: --no-such-flag"), "{tail}");
        }
        Err(HarnessError::MissingAsset(p)) => {
            fledge_tests::missing(&p.display().to_string(), "run scripts/go-peers.sh")
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("start should fail"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn capi_crds_install_and_serve_status_subresources() {
    let Some(c) = start_or_skip(Options::default()).await else {
        return;
    };
    let client = c.client().await;
    let n = install_crds(&client, &["cluster-api/v1.13.5"])
        .await
        .unwrap();
    assert!(n > 25, "all core CRDs and fledge's: {n}");
    let gvk = GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta2", "Cluster");
    let (ar, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let obj: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": "c1"},
        "spec": {"controlPlaneRef": {"apiGroup": "controlplane.cluster.x-k8s.io", "kind": "KubeadmControlPlane", "name": "c1"}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
    let status = serde_json::json!({"status": {"phase": "Provisioned"}});
    api.patch_status("c1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let got = api.get("c1").await.unwrap();
    assert_eq!(got.data["status"]["phase"], "Provisioned");
    // Labelled as clusterctl init labels them.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client);
    let crd = crds.get("clusters.cluster.x-k8s.io").await.unwrap();
    let labels = crd.metadata.labels.unwrap();
    assert_eq!(
        labels
            .get("clusterctl.cluster.x-k8s.io")
            .map(String::as_str),
        Some("")
    );
    assert_eq!(
        labels.get("cluster.x-k8s.io/provider").map(String::as_str),
        Some("cluster-api")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn capi_managers_serve_conversion_and_admission_webhooks_and_stop_by_pid() {
    let Some(c) = fledge_tests::managers::start_with_managers_or_skip().await else {
        return;
    };
    let client = c.client().await;
    // The infrastructure kinds the objects refer to (conversion looks up their contract label);
    // the CAPI CRDs already installed by the harness are left as they are.
    install_crds(&client, &["cluster-api/v1.13.5"])
        .await
        .unwrap();
    // The CRDs as the release installs them: labels, and conversion through the manager.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let kcp = crds
        .get("kubeadmcontrolplanes.controlplane.cluster.x-k8s.io")
        .await
        .unwrap();
    let labels = kcp.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["cluster.x-k8s.io/provider"], "control-plane-kubeadm");
    assert_eq!(labels["cluster.x-k8s.io/v1beta2"], "v1beta2");
    assert_eq!(labels["clusterctl.cluster.x-k8s.io"], "");
    let conv = kcp.spec.conversion.unwrap();
    assert_eq!(conv.strategy, "Webhook");
    let url = conv.webhook.unwrap().client_config.unwrap().url.unwrap();
    let kcp_port = c.managers()[2].webhook_port;
    assert_eq!(url, format!("https://127.0.0.1:{kcp_port}/convert"));
    // Admission configurations are renamed per provider.
    let vwc: Api<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration> =
        Api::all(client.clone());
    let mut names: Vec<String> = vwc
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|w| w.metadata.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "capi-kubeadm-bootstrap-validating-webhook-configuration",
            "capi-kubeadm-control-plane-validating-webhook-configuration",
            "capi-validating-webhook-configuration",
        ]
    );

    // The mutating webhook defaults a MachineDeployment (selector from the cluster name), and
    // the conversion webhook serves it as v1beta1.
    let md = serde_json::json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
        "metadata": {"name": "md-0", "namespace": "default"},
        "spec": {"clusterName": "c1", "template": {"spec": {"clusterName": "c1",
            "bootstrap": {"dataSecretName": "boot"},
            "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DevMachineTemplate", "name": "t"}}}}});
    let v1b2 = fledge_tests::capi::resource("cluster.x-k8s.io/v1beta2", "MachineDeployment");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &v1b2);
    let created = api
        .create(&PostParams::default(), &serde_json::from_value(md).unwrap())
        .await
        .unwrap();
    assert_eq!(
        created.data["spec"]["selector"]["matchLabels"]["cluster.x-k8s.io/cluster-name"], "c1",
        "{:#?}",
        created.data
    );
    let v1b1 = fledge_tests::capi::resource("cluster.x-k8s.io/v1beta1", "MachineDeployment");
    let old: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &v1b1);
    let read = old.get("md-0").await.unwrap();
    assert_eq!(read.types.unwrap().api_version, "cluster.x-k8s.io/v1beta1");
    assert_eq!(
        read.data["spec"]["template"]["spec"]["bootstrap"]["dataSecretName"],
        "boot"
    );

    // A webhook-only rule (not in the schema) is enforced: KCP versions must be semver.
    let kcp = serde_json::json!({"apiVersion": "controlplane.cluster.x-k8s.io/v1beta2", "kind": "KubeadmControlPlane",
        "metadata": {"name": "cp", "namespace": "default"},
        "spec": {"version": "v1.33", "machineTemplate": {"spec": {"infrastructureRef":
            {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DevMachineTemplate", "name": "t"}}}}});
    let kapi: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &fledge_tests::capi::resource(
            "controlplane.cluster.x-k8s.io/v1beta2",
            "KubeadmControlPlane",
        ),
    );
    match kapi
        .create(
            &PostParams::default(),
            &serde_json::from_value(kcp).unwrap(),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert!(
            s.message.contains("admission webhook") && s.message.contains("semantic version"),
            "{}",
            s.message
        ),
        other => panic!("expected the KCP webhook to deny, got {other:?}"),
    }

    // Every process, managers included, is gone once the cluster is dropped.
    let pids = c.pids();
    assert_eq!(pids.len(), 5, "etcd, kube-apiserver and three managers");
    drop(c);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still exists"
        );
    }
}
