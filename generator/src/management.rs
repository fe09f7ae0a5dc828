//! The management-plane objects for one request, in apply order (step 2 of the design):
//! Namespace, FledgeCluster, Cluster, infrastructure cluster, control-plane machine template,
//! KubeadmControlPlane (replicas 1), and the agent's scoped access.

use serde_json::{Value, json};

use crate::providers;
use crate::render::{RenderError, Templates};
use crate::spec::CheckedCluster;

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

/// The API groups whose objects the pivot moves, and that the agent's Role grants in its
/// namespace. The one list feeds both the rendered Role and the agent's discovery when it may
/// not list CRDs, so the two never disagree. Other `*.cluster.x-k8s.io` groups (clusterctl's
/// inventory, CAPV's supervisor-mode `vmware.infrastructure`, ...) are neither granted nor moved.
pub const MOVED_API_GROUPS: [&str; 6] = [
    "cluster.x-k8s.io",
    "controlplane.cluster.x-k8s.io",
    "bootstrap.cluster.x-k8s.io",
    "infrastructure.cluster.x-k8s.io",
    "addons.cluster.x-k8s.io",
    "ipam.cluster.x-k8s.io",
];

/// Object names derived from the cluster name.
#[derive(Debug, Clone)]
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

/// The template context shared by the management objects and CP-A's cloud-init.
pub fn context(c: &CheckedCluster, templates: &Templates) -> Result<Value, RenderError> {
    let provider = providers::get(c.provider());
    let api = provider.api(c.capi);
    let names = Names::new(c.name.as_str());
    let infra = &c.spec.infrastructure;
    let block = match c.provider() {
        crate::spec::ProviderKind::Vsphere => serde_json::to_value(&infra.vsphere),
        crate::spec::ProviderKind::Aws => serde_json::to_value(&infra.aws),
        crate::spec::ProviderKind::Azure => serde_json::to_value(&infra.azure),
        crate::spec::ProviderKind::Gcp => serde_json::to_value(&infra.gcp),
        crate::spec::ProviderKind::Maas => serde_json::to_value(&infra.maas),
        crate::spec::ProviderKind::Docker => {
            serde_json::to_value(infra.docker.clone().unwrap_or_default())
        }
    }
    .unwrap_or(Value::Null);
    let schema = crate::spec::spec_schema();
    let block = with_nulls(
        block,
        &schema["properties"]["infrastructure"]["properties"][c.provider().as_str()],
    );
    let machine = with_nulls(
        serde_json::to_value(&c.spec.control_plane.machine).unwrap_or(Value::Null),
        &schema["properties"]["controlPlane"]["properties"]["machine"],
    );
    let endpoint = c
        .spec
        .control_plane
        .endpoint
        .as_ref()
        .map(|e| json!({"host": e.host, "port": e.port.unwrap_or(6443)}))
        .unwrap_or(Value::Null);
    let kubelet_args: Vec<Value> = if provider.external_cloud_provider() {
        vec![json!({"name": "cloud-provider", "value": "external"})]
    } else {
        vec![]
    };
    let node_name = match c.provider() {
        // CAPA's templates name nodes after the EC2 private DNS name.
        crate::spec::ProviderKind::Aws => json!("{{ ds.meta_data.local_hostname }}"),
        _ => Value::Null,
    };
    let (group, _) = api
        .api_version
        .split_once('/')
        .unwrap_or((api.api_version, ""));
    let mut ctx = json!({
        "moved_groups": MOVED_API_GROUPS,
        "variables_secret": infra.variables_secret,
        "node_file": provider.template_secret_file(),
        "global_identity": provider.global_identity(infra).map(|(resource, name)| json!({"resource": resource, "name": name})),
        // CP-A only; the agent applies the spec's count after the pivot (see `workload`).
        "replicas": 1,
        // CAPA's default instance profile for the machines rendered with this context.
        "aws_iam_role": "control-plane",
        "capi": c.capi.as_str(),
        "namespace": c.namespace.as_str(),
        "labels": {
            "cluster.x-k8s.io/cluster-name": c.name.as_str(),
            "app.kubernetes.io/managed-by": "fledge",
        },
        "move_labels": {
            "cluster.x-k8s.io/cluster-name": c.name.as_str(),
            "app.kubernetes.io/managed-by": "fledge",
            MOVE_RIGHTS_LABEL.0: MOVE_RIGHTS_LABEL.1,
        },
        "names": {
            "cluster": names.cluster,
            "infra_cluster": names.infra_cluster,
            "control_plane": names.control_plane,
            "control_plane_template": names.control_plane_template,
            "agent": names.agent,
            "agent_token": names.agent_token,
            "agent_move": names.agent_move,
            "agent_cluster_role": agent_cluster_role(c.namespace.as_str(), c.name.as_str()),
        },
        "kubernetes_version": c.kubernetes_version.to_string(),
        "certificates_expiry_days": c.spec.control_plane.certificates_expiry_days(),
        "network": {
            "pods": c.pods.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "services": c.services.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "dns_domain": c.dns_domain(),
        },
        "provider": c.provider().as_str(),
        // Whether the machines' bootstrap creates the SSH user: CAPD runs only a cloud-config's
        // write_files and runcmd and fails on any other module; its machines are containers.
        "bootstrap_users": c.provider() != crate::spec::ProviderKind::Docker,
        "infra": {
            "api_version": api.api_version,
            "api_group": group,
            "cluster_kind": api.cluster_kind,
            "machine_template_kind": api.machine_template_kind,
        },
        "block": block,
        "machine": machine,
        "endpoint": endpoint,
        "kubelet_args": kubelet_args,
        "node_name": node_name,
        "access": {
            "user": c.user.as_str(),
            "keys": c.ssh_keys.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "management_server": c.spec.management.server,
        "agent": {
            "path": c.agent_path(),
            "config_path": paths::AGENT_CONFIG,
            "token_path": paths::MANAGEMENT_TOKEN,
            "ca_path": paths::MANAGEMENT_CA,
            "install_command": format!("{} install --config {}", shell_quote(c.agent_path()), paths::AGENT_CONFIG),
        },
    });
    let config = templates.render_one("agent/config.yaml.j2", &ctx)?;
    ctx["agent"]["config"] = Value::String(crate::render::yaml::to_string(&config));
    ctx["kube_vip"] = kube_vip(c, templates, &ctx, paths::ADMIN_KUBECONFIG)?;
    Ok(ctx)
}

/// kube-vip's static pod for the control-plane nodes of a provider that needs one (see
/// [`providers::InfraProvider::endpoint_vip`]), null for the others: the manifest reading
/// `kubeconfig`, and for a KubeadmControlPlane the command that points `kubeadm init`'s node at
/// `super-admin.conf` instead. Since Kubernetes 1.29 `kubeadm init` gives admin.conf its rights
/// only through the API server, which kube-vip must first make reachable at the endpoint
/// (kube-vip#684; CAPV's template does the same); joining nodes keep admin.conf.
pub fn kube_vip(
    c: &CheckedCluster,
    templates: &Templates,
    ctx: &Value,
    kubeconfig: &str,
) -> Result<Value, RenderError> {
    let Some(vip) = providers::get(c.provider()).endpoint_vip(&c.spec.infrastructure) else {
        return Ok(Value::Null);
    };
    let host = ctx["endpoint"]["host"].as_str().unwrap_or_default();
    let cidr = if host.contains(':') { "128" } else { "32" };
    let mut ctx = ctx.clone();
    ctx["kube_vip"] = json!({
        "image": vip.image,
        "interface": vip.interface,
        "cidr": cidr,
        "kubeconfig": kubeconfig,
        "hosts_path": paths::KUBE_VIP_HOSTS,
    });
    let manifest = templates.render_one("node/kube-vip.yaml.j2", &ctx)?;
    let init_command = (c.kubernetes_version.minor >= 29).then(|| {
        format!(
            "if [ -f {init} ]; then sed -i 's# path: \"{admin}\"$# path: \"{sup}\"#' {manifest}; fi",
            init = paths::CABPK_INIT_CONFIG,
            admin = paths::ADMIN_KUBECONFIG,
            sup = paths::SUPER_ADMIN_KUBECONFIG,
            manifest = paths::KUBE_VIP_MANIFEST,
        )
    });
    Ok(json!({
        "manifest_path": paths::KUBE_VIP_MANIFEST,
        "manifest": crate::render::yaml::to_string(&manifest),
        "hosts_path": paths::KUBE_VIP_HOSTS,
        // kube-vip talks to the local API server as `kubernetes` (its kubeconfig names the
        // endpoint it serves itself).
        "hosts": "127.0.0.1 localhost kubernetes\n",
        "init_command": init_command,
    }))
}

/// Renders the management-plane objects in apply order.
pub fn objects(c: &CheckedCluster, templates: &Templates) -> Result<Vec<Value>, RenderError> {
    let ctx = context(c, templates)?;
    let mut docs = Vec::new();
    docs.extend(templates.render_docs("management/namespace.yaml.j2", &ctx)?);
    docs.push(serde_json::to_value(c.to_object()).unwrap_or(Value::Null));
    docs.extend(templates.render_docs("management/cluster.yaml.j2", &ctx)?);
    let mut ctx = ctx;
    for mut doc in templates.render_docs(&providers::template_name(c.provider()), &ctx)? {
        if doc["kind"]
            == providers::get(c.provider())
                .api(c.capi)
                .machine_template_kind
        {
            let base = Names::new(c.name.as_str()).control_plane_template;
            let name = name_by_content(&base, c, &mut doc);
            ctx["names"]["control_plane_template"] = json!(name);
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

/// The annotation on machine and bootstrap templates that records the Kubernetes version they
/// were rendered for.
pub const KUBERNETES_VERSION_ANNOTATION: &str = "fledge.dev/kubernetes-version";

/// Names an immutable template by its content. Machine templates cannot be changed in place
/// (CAPI replaces machines by pointing their owner at a new template), so each template is
/// named `<base>-<hash>`, the hash taken over its `spec` and the Kubernetes version it is for
/// (recorded in the `fledge.dev/kubernetes-version` annotation). The same content always gets
/// the same name: a replayed day-2 step creates nothing new, and a changed spec a new template.
/// Sets the name in `doc` and returns it.
pub fn name_by_content(base: &str, c: &CheckedCluster, doc: &mut Value) -> String {
    use sha2::{Digest, Sha256};
    let version = c.kubernetes_version.to_string();
    doc["metadata"]["annotations"][KUBERNETES_VERSION_ANNOTATION] = json!(version);
    let content = canonical(&json!({"kubernetesVersion": version, "spec": doc["spec"]}));
    let digest = Sha256::digest(content.as_bytes());
    let hash: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    let name = format!("{base}-{hash}");
    doc["metadata"]["name"] = json!(name);
    name
}

/// JSON with object keys sorted at every level (serde_json keeps insertion order here).
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let body: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&m[k])))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// Adds an explicit `null` for every property of `schema` missing from `v`, so that templates
/// in strict-undefined mode can test optional fields with a plain `if`.
pub(crate) fn with_nulls(mut v: Value, schema: &Value) -> Value {
    if let (Some(obj), Some(props)) = (
        v.as_object_mut(),
        schema.get("properties").and_then(Value::as_object),
    ) {
        for key in props.keys() {
            obj.entry(key.clone()).or_insert(Value::Null);
        }
    }
    v
}

/// Quotes `s` for a POSIX shell: a single-quoted word.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}
