//! clusterctl's inventory: the `providers.clusterctl.cluster.x-k8s.io` objects in which
//! clusterctl records each installed provider and its version. Its type, its CRD (for a cluster
//! that has none yet), and the versions it records. The entry the agent writes for a provider it
//! installs is prepared with the provider's components ([`super::components::inventory`]).

use std::collections::BTreeMap;

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::{Value, json};

/// clusterctl's inventory type (`providers.clusterctl.cluster.x-k8s.io`).
pub fn inventory_resource() -> ApiResource {
    ApiResource {
        group: "clusterctl.cluster.x-k8s.io".into(),
        version: "v1alpha3".into(),
        api_version: "clusterctl.cluster.x-k8s.io/v1alpha3".into(),
        kind: "Provider".into(),
        plural: "providers".into(),
    }
}

/// Provider versions by inventory name (`cluster-api`, `infrastructure-docker`, ...). `None`
/// when the cluster has no inventory (the CRD is not served).
pub async fn inventory(
    client: &kube::Client,
) -> Result<Option<BTreeMap<String, String>>, kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &inventory_resource());
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(Some(
            list.items
                .into_iter()
                .filter_map(|o| Some((o.metadata.name?, o.data["version"].as_str()?.to_string())))
                .collect(),
        )),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// The inventory's CRD, for a cluster that has none yet (clusterctl installs the same group,
/// version and fields; it replaces this one when it upgrades the inventory).
pub fn inventory_crd() -> Value {
    let s = json!({"type": "string"});
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": "providers.clusterctl.cluster.x-k8s.io",
            "labels": {
                "clusterctl.cluster.x-k8s.io": "",
                "clusterctl.cluster.x-k8s.io/core": "inventory",
            },
        },
        "spec": {
            "group": "clusterctl.cluster.x-k8s.io",
            "names": {"kind": "Provider", "listKind": "ProviderList", "plural": "providers", "singular": "provider", "categories": ["cluster-api"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1alpha3",
                "served": true,
                "storage": true,
                "additionalPrinterColumns": [
                    {"jsonPath": ".type", "name": "Type", "type": "string"},
                    {"jsonPath": ".providerName", "name": "Provider", "type": "string"},
                    {"jsonPath": ".version", "name": "Version", "type": "string"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "apiVersion": s, "kind": s, "metadata": {"type": "object"},
                        "providerName": s, "type": s, "version": s, "watchedNamespace": s,
                    },
                }},
            }],
        },
    })
}
