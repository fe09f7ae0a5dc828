//! The management-plane objects for one request, in apply order (step 2 of the design):
//! Namespace, FledgeCluster, Cluster, infrastructure cluster, control-plane machine template,
//! KubeadmControlPlane (replicas 1), and the agent's scoped access.

use serde_json::{Value, json};

use crate::render::context::Context;
use crate::render::{RenderError, Templates};
use crate::spec::CheckedCluster;
use crate::{capi, providers};

/// Where the agent's files live on the node.
pub mod paths {
    /// Agent configuration.
    pub const AGENT_CONFIG: &str = "/etc/fledge/agent.yaml";
    /// The management service-account token.
    pub const MANAGEMENT_TOKEN: &str = "/etc/fledge/management/token";
    /// The management API server's CA.
    pub const MANAGEMENT_CA: &str = "/etc/fledge/management/ca.crt";
    /// kube-vip's static pod.
    pub const KUBE_VIP_MANIFEST: &str = "/etc/kubernetes/manifests/kube-vip.yaml";
    /// The hosts file kube-vip's container sees.
    pub const KUBE_VIP_HOSTS: &str = "/etc/kube-vip.hosts";
    /// kubeadm's admin kubeconfig.
    pub const ADMIN_KUBECONFIG: &str = "/etc/kubernetes/admin.conf";
    /// The kubeconfig `kubeadm init` writes for the `system:masters` group (Kubernetes 1.29+).
    pub const SUPER_ADMIN_KUBECONFIG: &str = "/etc/kubernetes/super-admin.conf";
    /// Where CABPK writes `kubeadm init`'s configuration (absent on joining nodes).
    pub const CABPK_INIT_CONFIG: &str = "/run/kubeadm/kubeadm.yaml";
}

/// Object names derived from the cluster name.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Names {
    /// `Cluster` and `FledgeCluster`.
    pub cluster: String,
    /// Infrastructure cluster.
    pub infra_cluster: String,
    /// KubeadmControlPlane.
    pub control_plane: String,
    /// Control-plane machine template.
    pub control_plane_template: String,
    /// ServiceAccount, Role and RoleBinding of the agent: what it always needs.
    pub agent: String,
    /// Role and RoleBinding of the agent's move rights, bound only while a pivot or unpivot
    /// needs them ([`MOVE_RIGHTS_LABEL`]).
    pub agent_move: String,
    /// The agent's service-account token Secret.
    pub agent_token: String,
}

impl Names {
    /// Names for `cluster`.
    pub fn new(cluster: &str) -> Self {
        Names {
            cluster: cluster.to_string(),
            infra_cluster: cluster.to_string(),
            control_plane: format!("{cluster}-control-plane"),
            control_plane_template: format!("{cluster}-control-plane"),
            agent: format!("{cluster}-fledge-agent"),
            agent_move: format!("{cluster}-fledge-agent-move"),
            agent_token: format!("{cluster}-fledge-agent-token"),
        }
    }
}

/// The label (key, value) on the agent's move Role and RoleBinding: `kubectl apply -f
/// management.yaml -l fledge.dev/rights=move` binds the move rights again, which an unpivot
/// needs (`fledge delete` does it).
pub const MOVE_RIGHTS_LABEL: (&str, &str) = ("fledge.dev/rights", "move");

/// The name of the agent's ClusterRole and ClusterRoleBinding on the management plane:
/// `fledge:<namespace>:<cluster>-fledge-agent`. Cluster-scoped, so the namespace is part of it
/// (two clusters of the same name in different namespaces get their own).
pub fn agent_cluster_role(namespace: &str, cluster: &str) -> String {
    format!("fledge:{namespace}:{}", Names::new(cluster).agent)
}

/// Renders the management-plane objects in apply order.
pub fn objects(c: &CheckedCluster, templates: &Templates) -> Result<Vec<Value>, RenderError> {
    let mut ctx = Context::new(c, templates)?;
    let mut docs = Vec::new();
    docs.extend(templates.render_docs("management/namespace.yaml.j2", &ctx)?);
    docs.push(serde_json::to_value(c.to_object()).unwrap_or(Value::Null));
    docs.extend(templates.render_docs("management/cluster.yaml.j2", &ctx)?);
    let machine_template_kind = providers::get(c.provider())
        .api(c.capi)
        .machine_template_kind;
    for mut doc in templates.render_docs(&providers::template_name(c.provider()), &ctx)? {
        if doc["kind"] == machine_template_kind {
            let base = Names::new(c.name.as_str()).control_plane_template;
            ctx.names.derived.control_plane_template = capi::name_by_content(&base, c, &mut doc);
        }
        docs.push(doc);
    }
    docs.extend(templates.render_docs("management/kubeadmcontrolplane.yaml.j2", &ctx)?);
    docs.extend(templates.render_docs("management/agent-access.yaml.j2", &ctx)?);
    Ok(docs)
}

/// Makes the FledgeCluster (`uid`) the owner of the agent's access objects among `objects`: its
/// ServiceAccount, Roles, RoleBindings and token Secret, which the garbage collector then deletes
/// with it (after the agent's own finalizer is released: the agent unpivots first). The
/// cluster-scoped ClusterRole and its binding cannot have a namespaced owner and are left as
/// they are. Returns how many objects it marked.
pub fn own_access(objects: &mut [Value], c: &CheckedCluster, uid: &str) -> usize {
    let names = Names::new(c.name.as_str());
    let owned = [
        ("ServiceAccount", names.agent.as_str()),
        ("Role", names.agent.as_str()),
        ("RoleBinding", names.agent.as_str()),
        ("Role", names.agent_move.as_str()),
        ("RoleBinding", names.agent_move.as_str()),
        ("Secret", names.agent_token.as_str()),
    ];
    let mut marked = 0;
    for o in objects.iter_mut() {
        let (kind, name) = (
            o["kind"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default(),
        );
        if o["metadata"]["namespace"] == c.namespace.as_str()
            && owned.iter().any(|(k, n)| *k == kind && *n == name)
        {
            o["metadata"]["ownerReferences"] = json!([{
                "apiVersion": crate::spec::API_VERSION,
                "kind": "FledgeCluster",
                "name": c.name.as_str(),
                "uid": uid,
            }]);
            marked += 1;
        }
    }
    marked
}
