//! The agent's rendered access, given to the test user whose token plays the agent's.

use serde_json::{Value, json};

/// The rendered Roles, ClusterRole and their bindings among `objects`, with each binding's
/// subject replaced by the test user ([`crate::cluster::USER`]). The bindings keep their names,
/// so the agent gives up its move rights (deletes `<cluster>-fledge-agent-move`) as it would on
/// a real management plane. Owner references are dropped (the tests' FledgeCluster may not
/// exist when they are applied).
pub fn for_test_user(objects: &[Value]) -> Vec<Value> {
    let user = json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": crate::cluster::USER}]);
    objects
        .iter()
        .filter(|o| {
            o["apiVersion"] == "rbac.authorization.k8s.io/v1"
                && ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"]
                    .contains(&o["kind"].as_str().unwrap_or_default())
        })
        .map(|o| {
            let mut o = o.clone();
            if let Some(meta) = o["metadata"].as_object_mut() {
                meta.remove("ownerReferences");
            }
            if o["kind"].as_str().is_some_and(|k| k.ends_with("Binding")) {
                o["subjects"] = user.clone();
            }
            o
        })
        .collect()
}
