//! A realistic Cluster API cluster as it looks on the management plane once CP-A is up, for
//! pivot tests and the pivot benchmark: objects with ownerReferences, finalizers, statuses and
//! Secrets, in the v1beta2 or the v1beta1 flavour; plus a snapshot of it and the checks of a
//! finished pivot.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, TryStreamExt};
use kube::Api;
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

use fledge_agent::pivot::apply::{SOURCE_UID, STATE};

/// One API flavour of the fixture.
#[derive(Debug, Clone, Copy)]
pub struct Flavor {
    /// CRD directory (under the shared CRDs) that serves it.
    pub crd_dir: &'static str,
    /// cluster.x-k8s.io version.
    pub capi: &'static str,
    /// controlplane.cluster.x-k8s.io version.
    pub kcp: &'static str,
    /// bootstrap.cluster.x-k8s.io version.
    pub boot: &'static str,
    /// infrastructure.cluster.x-k8s.io version.
    pub infra: &'static str,
    /// Infrastructure kinds: cluster, machine template, machine.
    pub infra_kinds: [&'static str; 3],
}

/// Cluster API v1.13 (v1beta2 contract) with the Dev (docker) provider.
pub const V1BETA2: Flavor = Flavor {
    crd_dir: "cluster-api/v1.13.5",
    capi: "cluster.x-k8s.io/v1beta2",
    kcp: "controlplane.cluster.x-k8s.io/v1beta2",
    boot: "bootstrap.cluster.x-k8s.io/v1beta2",
    infra: "infrastructure.cluster.x-k8s.io/v1beta2",
    infra_kinds: ["DevCluster", "DevMachineTemplate", "DevMachine"],
};

/// Cluster API v1.9 (v1beta1 contract) with the Docker provider.
pub const V1BETA1: Flavor = Flavor {
    crd_dir: "cluster-api/v1.9.11",
    capi: "cluster.x-k8s.io/v1beta1",
    kcp: "controlplane.cluster.x-k8s.io/v1beta1",
    boot: "bootstrap.cluster.x-k8s.io/v1beta1",
    infra: "infrastructure.cluster.x-k8s.io/v1beta1",
    infra_kinds: ["DockerCluster", "DockerMachineTemplate", "DockerMachine"],
};

impl Flavor {
    fn v1beta2(&self) -> bool {
        self.capi.ends_with("v1beta2")
    }

    /// A reference to another object, in the flavour's form.
    fn reference(&self, api_version: &str, kind: &str, name: &str) -> Value {
        if self.v1beta2() {
            json!({"apiGroup": api_version.split('/').next(), "kind": kind, "name": name})
        } else {
            json!({"apiVersion": api_version, "kind": kind, "name": name})
        }
    }
}

/// The ApiResource of `api_version`/`kind` (every kind here pluralises with "s" or "es").
pub fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        &if kind.ends_with('s') {
            format!("{}es", kind.to_lowercase())
        } else {
            format!("{}s", kind.to_lowercase())
        },
    )
}

/// An object of the fixture.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// apiVersion.
    pub api_version: String,
    /// kind.
    pub kind: String,
    /// name.
    pub name: String,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// Creates objects in one namespace.
pub struct Builder<'a> {
    client: &'a kube::Client,
    ns: &'a str,
    /// Everything created, in order.
    pub created: Vec<Key>,
}

/// (kind, name, uid, apiVersion) of an owner.
pub type Owner = (String, String, String, String);

impl<'a> Builder<'a> {
    /// A builder for `ns`.
    pub fn new(client: &'a kube::Client, ns: &'a str) -> Self {
        Self {
            client,
            ns,
            created: Vec::new(),
        }
    }

    /// Creates `obj` owned by `owners` (the first is the controller), then sets `status`
    /// through the status subresource when given. Returns the owner tuple of the new object.
    pub async fn create(&mut self, obj: Value, owners: &[&Owner], status: Option<Value>) -> Owner {
        let (key, owner) = create(self.client, self.ns, obj, owners, status).await;
        self.created.push(key);
        owner
    }
}

/// Creates one object (see [`Builder::create`]).
pub async fn create(
    client: &kube::Client,
    ns: &str,
    mut obj: Value,
    owners: &[&Owner],
    status: Option<Value>,
) -> (Key, Owner) {
    let api_version = obj["apiVersion"].as_str().unwrap().to_string();
    let kind = obj["kind"].as_str().unwrap().to_string();
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    if !owners.is_empty() {
        obj["metadata"]["ownerReferences"] = owners
            .iter()
            .enumerate()
            .map(|(i, (k, n, u, a))| {
                json!({"apiVersion": a, "kind": k, "name": n, "uid": u,
                       "controller": i == 0, "blockOwnerDeletion": true})
            })
            .collect();
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &resource(&api_version, &kind));
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
    let uid = created.metadata.uid.unwrap();
    (
        Key {
            api_version: api_version.clone(),
            kind: kind.clone(),
            name: name.clone(),
        },
        (kind, name, uid, api_version),
    )
}

fn own(o: &Owner) -> [&Owner; 1] {
    [o]
}

/// Creates one cluster `name` in `ns`: Cluster, infrastructure cluster, KubeadmControlPlane, its
/// machine template, the CP-A Machine with its infrastructure machine, KubeadmConfig and
/// bootstrap Secret, the cluster's CA/etcd/sa/proxy/kubeconfig Secrets, and `workers` worker
/// Machines each with infrastructure machine, KubeadmConfig and bootstrap Secret.
/// Returns every object created.
pub async fn cluster(
    client: &kube::Client,
    ns: &str,
    name: &str,
    f: Flavor,
    workers: usize,
) -> Vec<Key> {
    let mut b = Builder::new(client, ns);
    let v2 = f.v1beta2();
    let [infra_cluster, infra_tmpl, _] = f.infra_kinds;
    let labels = json!({"cluster.x-k8s.io/cluster-name": name});
    let meta = |n: &str| json!({"name": n, "labels": labels});
    let kcp_name = format!("{name}-control-plane");
    let cluster_status = if v2 {
        json!({"phase": "Provisioned", "initialization": {"infrastructureProvisioned": true, "controlPlaneInitialized": true}})
    } else {
        json!({"phase": "Provisioned", "infrastructureReady": true, "controlPlaneReady": true})
    };
    let mut cmeta = meta(name);
    cmeta["finalizers"] = json!(["cluster.cluster.x-k8s.io"]);
    let c = b
        .create(
            json!({"apiVersion": f.capi, "kind": "Cluster", "metadata": cmeta, "spec": {
                "controlPlaneRef": f.reference(f.kcp, "KubeadmControlPlane", &kcp_name),
                "infrastructureRef": f.reference(f.infra, infra_cluster, name)}}),
            &[],
            Some(cluster_status),
        )
        .await;
    let provisioned = if v2 {
        json!({"initialization": {"provisioned": true}})
    } else {
        json!({"ready": true})
    };
    let spec_backend = if v2 {
        json!({"backend": {"docker": {}}})
    } else {
        json!({})
    };
    b.create(
        json!({"apiVersion": f.infra, "kind": infra_cluster, "metadata": meta(name), "spec": spec_backend}),
        &own(&c),
        Some(provisioned.clone()),
    )
    .await;
    b.create(
        json!({"apiVersion": f.infra, "kind": infra_tmpl, "metadata": meta(&kcp_name), "spec": {"template": {"spec": spec_backend}}}),
        &own(&c),
        None,
    )
    .await;
    let mut kcp_spec = json!({"replicas": 1, "version": "v1.33.4",
        "machineTemplate": {"spec": {"infrastructureRef": f.reference(f.infra, infra_tmpl, &kcp_name)}}});
    if !v2 {
        kcp_spec["machineTemplate"] =
            json!({"infrastructureRef": f.reference(f.infra, infra_tmpl, &kcp_name)});
        kcp_spec["kubeadmConfigSpec"] = json!({"format": "cloud-config"});
    }
    let kcp_status = if v2 {
        json!({"initialization": {"controlPlaneInitialized": true}, "replicas": 1, "readyReplicas": 1, "version": "v1.33.4"})
    } else {
        json!({"initialized": true, "ready": true, "replicas": 1, "readyReplicas": 1, "version": "v1.33.4"})
    };
    let kcp = b
        .create(
            json!({"apiVersion": f.kcp, "kind": "KubeadmControlPlane", "metadata": meta(&kcp_name), "spec": kcp_spec}),
            &own(&c),
            Some(kcp_status),
        )
        .await;
    for s in ["ca", "etcd", "sa", "proxy"] {
        b.create(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta(&format!("{name}-{s}")),
                   "type": "cluster.x-k8s.io/secret", "data": {"tls.crt": "eA==", "tls.key": "eQ=="}}),
            &own(&kcp),
            None,
        )
        .await;
    }
    b.create(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta(&format!("{name}-kubeconfig")),
               "type": "cluster.x-k8s.io/secret", "data": {"value": "eA=="}}),
        &own(&c),
        None,
    )
    .await;
    let cp = format!("{name}-control-plane-abcde");
    machine(&mut b, f, &labels, &cp, &kcp, true).await;
    let mut keys = b.created;
    let worker_keys: Vec<Vec<Key>> = futures::stream::iter((0..workers).map(|i| {
        let labels = labels.clone();
        let c = c.clone();
        async move {
            let mut wb = Builder::new(client, ns);
            let m = format!("{name}-md-0-{i:04}");
            machine(&mut wb, f, &labels, &m, &c, false).await;
            Ok::<_, ()>(wb.created)
        }
    }))
    .buffer_unordered(16)
    .try_collect()
    .await
    .unwrap();
    keys.extend(worker_keys.into_iter().flatten());
    keys
}

/// A Machine owned by `owner` with its infrastructure machine, KubeadmConfig and bootstrap Secret.
async fn machine(
    b: &mut Builder<'_>,
    f: Flavor,
    labels: &Value,
    m: &str,
    owner: &Owner,
    control_plane: bool,
) {
    let v2 = f.v1beta2();
    let [_, _, infra_machine] = f.infra_kinds;
    let mut labels = labels.clone();
    if control_plane {
        labels["cluster.x-k8s.io/control-plane"] = json!("");
    }
    let cluster = labels["cluster.x-k8s.io/cluster-name"]
        .as_str()
        .unwrap()
        .to_string();
    let mut mmeta = json!({"name": m, "labels": labels});
    mmeta["finalizers"] = json!(["machine.cluster.x-k8s.io"]);
    let machine_status = if v2 {
        json!({"phase": "Running", "initialization": {"bootstrapDataSecretCreated": true, "infrastructureProvisioned": true}, "nodeRef": {"name": m}})
    } else {
        json!({"phase": "Running", "bootstrapReady": true, "infrastructureReady": true, "nodeRef": {"apiVersion": "v1", "kind": "Node", "name": m}})
    };
    let mc = b
        .create(
            json!({"apiVersion": f.capi, "kind": "Machine", "metadata": mmeta, "spec": {
                "clusterName": cluster, "version": "v1.33.4",
                "bootstrap": {"configRef": f.reference(f.boot, "KubeadmConfig", m), "dataSecretName": m},
                "infrastructureRef": f.reference(f.infra, infra_machine, m)}}),
            &[owner],
            Some(machine_status),
        )
        .await;
    let mut imeta = json!({"name": m, "labels": labels});
    imeta["finalizers"] = json!(["dockermachine.infrastructure.cluster.x-k8s.io"]);
    let (spec, status) = if v2 {
        (
            json!({"backend": {"docker": {}}}),
            json!({"initialization": {"provisioned": true}, "addresses": [{"type": "InternalIP", "address": "10.0.0.10"}]}),
        )
    } else {
        (
            json!({}),
            json!({"ready": true, "addresses": [{"type": "InternalIP", "address": "10.0.0.10"}]}),
        )
    };
    b.create(
        json!({"apiVersion": f.infra, "kind": infra_machine, "metadata": imeta, "spec": spec}),
        &[&mc],
        Some(status),
    )
    .await;
    let kc_status = if v2 {
        json!({"initialization": {"dataSecretCreated": true}, "dataSecretName": m})
    } else {
        json!({"ready": true, "dataSecretName": m})
    };
    let kc = b
        .create(
            json!({"apiVersion": f.boot, "kind": "KubeadmConfig", "metadata": {"name": m, "labels": labels},
                   "spec": {"format": "cloud-config"}}),
            &[&mc],
            Some(kc_status),
        )
        .await;
    b.create(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": m, "labels": labels},
               "type": "cluster.x-k8s.io/secret", "data": {"value": "I2Nsb3VkLWNvbmZpZwo=", "format": "Y2xvdWQtY29uZmln"}}),
        &[&kc],
        None,
    )
    .await;
}

/// What an object looked like in the source.
#[derive(Debug, Clone)]
pub struct Seen {
    /// uid.
    pub uid: String,
    /// Owners as `Kind/name`.
    pub owners: BTreeSet<String>,
    /// status.
    pub status: Value,
    /// finalizers.
    pub finalizers: Vec<String>,
    /// spec (or data for Secrets).
    pub content: Value,
}

/// Reads `keys` back from `client`.
pub async fn snapshot(client: &kube::Client, ns: &str, keys: &[Key]) -> BTreeMap<Key, Seen> {
    let objs = list_types(client, ns, keys).await;
    keys.iter()
        .map(|k| {
            let o = objs
                .get(k)
                .unwrap_or_else(|| panic!("{k} is not in the source"));
            (k.clone(), seen(o, &objs))
        })
        .collect()
}

fn seen(o: &DynamicObject, all: &BTreeMap<Key, DynamicObject>) -> Seen {
    let owners = o
        .metadata
        .owner_references
        .iter()
        .flatten()
        .map(|r| {
            all.iter()
                .find(|(_, x)| x.metadata.uid.as_deref() == Some(r.uid.as_str()))
                .map(|(k, _)| k.to_string())
                .unwrap_or_else(|| format!("(missing uid {})", r.uid))
        })
        .collect();
    Seen {
        uid: o.metadata.uid.clone().unwrap_or_default(),
        owners,
        status: o.data.get("status").cloned().unwrap_or(Value::Null),
        finalizers: o.metadata.finalizers.clone().unwrap_or_default(),
        content: o
            .data
            .get("spec")
            .or_else(|| o.data.get("data"))
            .cloned()
            .unwrap_or(Value::Null),
    }
}

/// Every object in `ns` of the types of `keys`.
pub async fn list_types(
    client: &kube::Client,
    ns: &str,
    keys: &[Key],
) -> BTreeMap<Key, DynamicObject> {
    let types: BTreeSet<(String, String)> = keys
        .iter()
        .map(|k| (k.api_version.clone(), k.kind.clone()))
        .collect();
    let mut out = BTreeMap::new();
    for (av, kind) in types {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &resource(&av, &kind));
        for o in api.list(&ListParams::default()).await.unwrap() {
            out.insert(
                Key {
                    api_version: av.clone(),
                    kind: kind.clone(),
                    name: o.metadata.name.clone().unwrap_or_default(),
                },
                o,
            );
        }
    }
    out
}

/// Checks a finished pivot of `cluster`: the target holds exactly the snapshot's objects of
/// those types (same content, finalizers and status, owners pointing at the target copies,
/// annotated with their source UID), the source holds none of them, and the target Cluster is
/// unpaused. Returns a description of every difference (empty when all is well).
pub async fn check_moved(
    source: &kube::Client,
    target: &kube::Client,
    ns: &str,
    before: &BTreeMap<Key, Seen>,
) -> Vec<String> {
    let keys: Vec<Key> = before.keys().cloned().collect();
    let mut problems = Vec::new();
    let in_target = list_types(target, ns, &keys).await;
    let got: BTreeSet<&Key> = in_target.keys().collect();
    let want: BTreeSet<&Key> = before.keys().collect();
    for k in got.difference(&want) {
        problems.push(format!("{k} is in the target but should not be"));
    }
    for (k, was) in before {
        let Some(o) = in_target.get(k) else {
            problems.push(format!("{k} is missing from the target"));
            continue;
        };
        let now = seen(o, &in_target);
        let ann = o
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE_UID));
        if ann != Some(&was.uid) {
            problems.push(format!(
                "{k}: source-uid annotation {ann:?}, want {}",
                was.uid
            ));
        }
        if now.owners != was.owners {
            problems.push(format!(
                "{k}: owners {:?}, want {:?}",
                now.owners, was.owners
            ));
        }
        if now.status != was.status {
            problems.push(format!("{k}: status {} , want {}", now.status, was.status));
        }
        if now.finalizers != was.finalizers {
            problems.push(format!(
                "{k}: finalizers {:?}, want {:?}",
                now.finalizers, was.finalizers
            ));
        }
        let mut content = now.content.clone();
        let mut want_content = was.content.clone();
        if k.kind == "Cluster" {
            // Only spec.paused may differ: the pivot pauses and unpauses.
            for c in [&mut content, &mut want_content] {
                if let Some(m) = c.as_object_mut() {
                    m.remove("paused");
                }
            }
            if o.data["spec"]["paused"].as_bool() == Some(true) {
                problems.push(format!("{k} is still paused in the target"));
            }
            let state = o.metadata.annotations.as_ref().and_then(|a| a.get(STATE));
            if state.map(String::as_str) != Some("complete") {
                problems.push(format!("{k}: state annotation {state:?}, want complete"));
            }
        }
        if content != want_content {
            problems.push(format!("{k}: content {content}, want {want_content}"));
        }
    }
    let in_source = list_types(source, ns, &keys).await;
    for k in before.keys() {
        if in_source.contains_key(k) {
            problems.push(format!("{k} is still in the source"));
        }
    }
    problems
}
