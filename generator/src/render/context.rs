//! The template context: every value the templates of `templates/` read, typed. [`Context::new`]
//! builds it once per request; the management objects, the workload objects and CP-A's
//! cloud-init render from it, each setting the parts that are theirs (a worker pool, a health
//! check, CP-A's files). Provider specifics come from [`InfraProvider`], so nothing here depends
//! on which provider it is.

use serde::{Serialize, Serializer};
use serde_json::{Value, json};

use crate::capi::MOVED_API_GROUPS;
use crate::management::{MOVE_RIGHTS_LABEL, Names, agent_cluster_role, paths};
use crate::providers::{self, InfraProvider, TemplateSecretFile};
use crate::render::{RenderError, Templates, yaml};
use crate::spec::{CheckedCluster, Machine};

/// What the templates read. The field names are the templates' names for the values.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    /// The API groups the agent's move Role grants ([`MOVED_API_GROUPS`]).
    pub moved_groups: &'static [&'static str],
    /// `spec.infrastructure.variablesSecret`.
    pub variables_secret: Option<String>,
    /// The file every node reads from a Secret of its machine template, if the provider has one.
    pub node_file: Option<TemplateSecretFile>,
    /// The cluster-scoped identity the request names, which the agent's ClusterRole may read.
    pub global_identity: Option<GlobalIdentity>,
    /// The KubeadmControlPlane's replicas: 1 (CP-A) on the management plane; the agent applies
    /// the spec's count after the pivot (see `workload`).
    pub replicas: i64,
    /// The provider's default instance profile of the machines rendered with this context
    /// (CAPA's; `null` for the other providers).
    pub aws_iam_role: Option<&'static str>,
    /// The Cluster API contract, `v1beta2` or `v1beta1`.
    pub capi: &'static str,
    /// The namespace of the management-plane objects.
    pub namespace: String,
    /// The labels of every object.
    pub labels: StringMap,
    /// The labels of the agent's move Role and RoleBinding ([`MOVE_RIGHTS_LABEL`] added).
    pub move_labels: StringMap,
    /// Object names.
    pub names: ObjectNames,
    /// The Kubernetes version, `v1.33.4`.
    pub kubernetes_version: String,
    /// KCP's certificate rollout threshold.
    pub certificates_expiry_days: i64,
    /// Pod and service networks.
    pub network: Network,
    /// The provider's name, `vsphere`, `aws`, ...
    pub provider: &'static str,
    /// Whether the machines' bootstrap creates the SSH user ([`InfraProvider::bootstrap_users`]).
    pub bootstrap_users: bool,
    /// The provider's API.
    pub infra: Infra,
    /// The provider's block of the request, every property of its schema present (absent ones
    /// null), so that templates can test optional fields with a plain `if`.
    pub block: Value,
    /// The machine being rendered (the control plane's, or a worker pool's), with nulls as
    /// `block`.
    pub machine: Value,
    /// `spec.controlPlane.endpoint`, port defaulted.
    pub endpoint: Option<Endpoint>,
    /// The kubelet's extra arguments.
    pub kubelet_args: Vec<KubeletArg>,
    /// The node name kubeadm registers, as a cloud-init expression ([`InfraProvider::node_name`]).
    pub node_name: Option<&'static str>,
    /// Who may log in to the nodes.
    pub access: Access,
    /// The management API server the agent reports to.
    pub management_server: String,
    /// The agent's files on the node.
    pub agent: Agent,
    /// kube-vip's files on the control-plane nodes, for a provider that needs it.
    pub kube_vip: Option<KubeVipFiles>,
    /// The worker pool being rendered (workload objects only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<Pool>,
    /// The MachineHealthCheck being rendered (workload objects only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// CP-A's own values (its cloud-init only).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedValues>,
}

/// A map of strings that keeps the order it was written in (labels, selectors, annotations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringMap(Vec<(String, String)>);

impl StringMap {
    /// The map with `key` set to `value` (appended if new).
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key.to_string(), value)),
        }
        self
    }

    /// The map without `key`.
    pub fn without(mut self, key: &str) -> Self {
        self.0.retain(|(k, _)| k != key);
        self
    }
}

impl Serialize for StringMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// A cluster-scoped identity: its resource (plural) and name.
#[derive(Debug, Clone, Serialize)]
pub struct GlobalIdentity {
    /// The resource, such as `awsclusterstaticidentities`.
    pub resource: String,
    /// Its name.
    pub name: String,
}

/// The object names: [`Names`] and the agent's ClusterRole.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectNames {
    /// The names derived from the cluster name.
    #[serde(flatten)]
    pub derived: Names,
    /// [`agent_cluster_role`].
    pub agent_cluster_role: String,
}

/// Pod and service networks.
#[derive(Debug, Clone, Serialize)]
pub struct Network {
    /// Pod CIDRs.
    pub pods: Vec<String>,
    /// Service CIDRs.
    pub services: Vec<String>,
    /// The cluster DNS domain.
    pub dns_domain: String,
}

/// The provider's API under the request's contract ([`providers::InfraApi`]).
#[derive(Debug, Clone, Serialize)]
pub struct Infra {
    /// `apiVersion` of its objects.
    pub api_version: &'static str,
    /// The group of `api_version`.
    pub api_group: &'static str,
    /// Kind of the infrastructure cluster.
    pub cluster_kind: &'static str,
    /// Kind of the machine template.
    pub machine_template_kind: &'static str,
}

/// The control-plane endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Port (6443 unless the request says otherwise).
    pub port: i64,
}

/// One extra argument of the kubelet.
#[derive(Debug, Clone, Serialize)]
pub struct KubeletArg {
    /// The flag without dashes.
    pub name: &'static str,
    /// Its value.
    pub value: &'static str,
}

/// Who may log in to the nodes.
#[derive(Debug, Clone, Serialize)]
pub struct Access {
    /// The login user.
    pub user: String,
    /// Its SSH keys.
    pub keys: Vec<String>,
}

/// The agent's files on the node.
#[derive(Debug, Clone, Serialize)]
pub struct Agent {
    /// The agent binary.
    pub path: String,
    /// Its configuration ([`paths::AGENT_CONFIG`]).
    pub config_path: &'static str,
    /// The management token ([`paths::MANAGEMENT_TOKEN`]).
    pub token_path: &'static str,
    /// The management CA ([`paths::MANAGEMENT_CA`]).
    pub ca_path: &'static str,
    /// The command that installs and starts it.
    pub install_command: String,
    /// Its configuration's text (`agent/config.yaml.j2`, rendered with this context).
    pub config: String,
}

/// kube-vip's files on a control-plane node (see [`kube_vip`]).
#[derive(Debug, Clone, Serialize)]
pub struct KubeVipFiles {
    /// Where the static pod's manifest goes.
    pub manifest_path: &'static str,
    /// The manifest.
    pub manifest: String,
    /// Where its hosts file goes.
    pub hosts_path: &'static str,
    /// The hosts file.
    pub hosts: &'static str,
    /// For a KubeadmControlPlane, the command that points `kubeadm init`'s node at
    /// `super-admin.conf`.
    pub init_command: Option<String>,
}

/// A worker pool's values.
#[derive(Debug, Clone, Serialize)]
pub struct Pool {
    /// The name of its MachineDeployment and templates.
    pub name: String,
    /// Its (initial) size.
    pub replicas: i64,
    /// The labels its MachineDeployment selects its machines by.
    pub selector: StringMap,
    /// The cluster-autoscaler's size annotations of an autoscaled pool.
    pub annotations: Option<StringMap>,
    /// Its infrastructure machine template's name, once named by its content.
    pub infrastructure_template: Option<String>,
    /// Its bootstrap template's name, once named by its content.
    pub bootstrap_template: Option<String>,
}

/// A MachineHealthCheck's values.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Its name (that of what it checks).
    pub name: String,
    /// The labels of the machines it checks.
    pub selector: StringMap,
    /// How long a node may be `Ready: False`.
    pub ready_false_seconds: i64,
    /// How long a node may be `Ready: Unknown`.
    pub ready_unknown_seconds: i64,
    /// How long a machine may take to get a node.
    pub node_startup_seconds: i64,
    /// How many machines may be remediated at once: a count or a percentage.
    pub max_unhealthy: Value,
}

/// CP-A's own values, for its cloud-init.
#[derive(Debug, Clone, Serialize)]
pub struct SeedValues {
    /// Its host name.
    pub hostname: String,
    /// kubeadm's configuration API, `v1beta4` or `v1beta3`.
    pub kubeadm_api: &'static str,
    /// Where the bootstrap script is written.
    pub bootstrap_path: &'static str,
    /// The files its user-data writes (empty until they are known).
    pub files: Vec<SeedFile>,
}

/// One file of CP-A's user-data.
#[derive(Debug, Clone, Serialize)]
pub struct SeedFile {
    /// Path on the node.
    pub path: String,
    /// Octal mode.
    pub permissions: &'static str,
    /// `gzip+base64` when compressed.
    pub encoding: Option<&'static str>,
    /// The content (encoded when compressed).
    pub content: String,
}

impl Context {
    /// The context of a request's management objects, CP-A's machine included: the agent's
    /// configuration rendered, and kube-vip's files reading `admin.conf`.
    pub fn new(c: &CheckedCluster, templates: &Templates) -> Result<Self, RenderError> {
        let provider = providers::get(c.provider());
        let api = provider.api(c.capi);
        let infra = &c.spec.infrastructure;
        let schema = crate::spec::spec_schema();
        // An optional block left out is all defaults: every property null.
        let block = provider.block(infra).unwrap_or_else(|| json!({}));
        let block = with_nulls(
            block,
            &schema["properties"]["infrastructure"]["properties"][c.provider().as_str()],
        );
        let labels = StringMap::default()
            .with("cluster.x-k8s.io/cluster-name", c.name.as_str())
            .with("app.kubernetes.io/managed-by", "fledge");
        let install_command = format!(
            "{} install --config {}",
            shell_quote(c.agent_path()),
            paths::AGENT_CONFIG
        );
        let mut ctx = Context {
            moved_groups: &MOVED_API_GROUPS,
            variables_secret: infra.variables_secret.clone(),
            node_file: provider.template_secret_file(),
            global_identity: provider
                .global_identity(infra)
                .map(|(resource, name)| GlobalIdentity { resource, name }),
            replicas: 1,
            aws_iam_role: provider.default_instance_profile(true),
            capi: c.capi.as_str(),
            namespace: c.namespace.to_string(),
            move_labels: labels
                .clone()
                .with(MOVE_RIGHTS_LABEL.0, MOVE_RIGHTS_LABEL.1),
            labels,
            names: ObjectNames {
                derived: Names::new(c.name.as_str()),
                agent_cluster_role: agent_cluster_role(c.namespace.as_str(), c.name.as_str()),
            },
            kubernetes_version: c.kubernetes_version.to_string(),
            certificates_expiry_days: c.spec.control_plane.certificates_expiry_days(),
            network: Network {
                pods: c.pods.iter().map(ToString::to_string).collect(),
                services: c.services.iter().map(ToString::to_string).collect(),
                dns_domain: c.dns_domain().to_string(),
            },
            provider: c.provider().as_str(),
            bootstrap_users: provider.bootstrap_users(),
            infra: Infra {
                api_version: api.api_version,
                api_group: api
                    .api_version
                    .split_once('/')
                    .map_or(api.api_version, |(group, _)| group),
                cluster_kind: api.cluster_kind,
                machine_template_kind: api.machine_template_kind,
            },
            block,
            machine: machine(&c.spec.control_plane.machine),
            endpoint: c.spec.control_plane.endpoint.as_ref().map(|e| Endpoint {
                host: e.host.clone(),
                port: e.port.unwrap_or(6443),
            }),
            kubelet_args: kubelet_args(provider),
            node_name: provider.node_name(),
            access: Access {
                user: c.user.to_string(),
                keys: c.ssh_keys.iter().map(ToString::to_string).collect(),
            },
            management_server: c.spec.management.server.clone(),
            agent: Agent {
                path: c.agent_path().to_string(),
                config_path: paths::AGENT_CONFIG,
                token_path: paths::MANAGEMENT_TOKEN,
                ca_path: paths::MANAGEMENT_CA,
                install_command,
                config: String::new(),
            },
            kube_vip: None,
            pool: None,
            check: None,
            seed: None,
        };
        let config = templates.render_one("agent/config.yaml.j2", &ctx)?;
        ctx.agent.config = yaml::to_string(&config);
        ctx.kube_vip = kube_vip(c, templates, &ctx, paths::ADMIN_KUBECONFIG)?;
        Ok(ctx)
    }
}

/// A machine block as the templates read it: every property of the schema present.
pub fn machine(m: &Machine) -> Value {
    with_nulls(
        serde_json::to_value(m).unwrap_or(Value::Null),
        &crate::spec::spec_schema()["properties"]["controlPlane"]["properties"]["machine"],
    )
}

/// `cloud-provider: external` for a provider whose nodes run an external
/// cloud-controller-manager.
fn kubelet_args(provider: &dyn InfraProvider) -> Vec<KubeletArg> {
    if provider.external_cloud_provider() {
        vec![KubeletArg {
            name: "cloud-provider",
            value: "external",
        }]
    } else {
        vec![]
    }
}

/// What `node/kube-vip.yaml.j2` reads.
#[derive(Serialize)]
struct KubeVipContext<'a> {
    endpoint: Option<&'a Endpoint>,
    kube_vip: KubeVipSettings<'a>,
}

/// kube-vip's settings for its manifest.
#[derive(Serialize)]
struct KubeVipSettings<'a> {
    image: &'a str,
    interface: Option<&'a str>,
    cidr: &'static str,
    kubeconfig: &'a str,
    hosts_path: &'static str,
}

/// kube-vip's static pod for the control-plane nodes of a provider that needs one (see
/// [`InfraProvider::endpoint_vip`]), `None` for the others: the manifest reading `kubeconfig`,
/// and for a KubeadmControlPlane the command that points `kubeadm init`'s node at
/// `super-admin.conf` instead. Since Kubernetes 1.29 `kubeadm init` gives admin.conf its rights
/// only through the API server, which kube-vip must first make reachable at the endpoint
/// (kube-vip#684; CAPV's template does the same); joining nodes keep admin.conf.
pub fn kube_vip(
    c: &CheckedCluster,
    templates: &Templates,
    ctx: &Context,
    kubeconfig: &str,
) -> Result<Option<KubeVipFiles>, RenderError> {
    let Some(vip) = providers::get(c.provider()).endpoint_vip(&c.spec.infrastructure) else {
        return Ok(None);
    };
    let host = ctx.endpoint.as_ref().map_or("", |e| e.host.as_str());
    let manifest = templates.render_one(
        "node/kube-vip.yaml.j2",
        &KubeVipContext {
            endpoint: ctx.endpoint.as_ref(),
            kube_vip: KubeVipSettings {
                image: &vip.image,
                interface: vip.interface.as_deref(),
                cidr: if host.contains(':') { "128" } else { "32" },
                kubeconfig,
                hosts_path: paths::KUBE_VIP_HOSTS,
            },
        },
    )?;
    let init_command = (c.kubernetes_version.minor >= 29).then(|| {
        format!(
            "if [ -f {init} ]; then sed -i 's# path: \"{admin}\"$# path: \"{sup}\"#' {manifest}; fi",
            init = paths::CABPK_INIT_CONFIG,
            admin = paths::ADMIN_KUBECONFIG,
            sup = paths::SUPER_ADMIN_KUBECONFIG,
            manifest = paths::KUBE_VIP_MANIFEST,
        )
    });
    Ok(Some(KubeVipFiles {
        manifest_path: paths::KUBE_VIP_MANIFEST,
        manifest: yaml::to_string(&manifest),
        hosts_path: paths::KUBE_VIP_HOSTS,
        // kube-vip talks to the local API server as `kubernetes` (its kubeconfig names the
        // endpoint it serves itself).
        hosts: "127.0.0.1 localhost kubernetes\n",
        init_command,
    }))
}

/// Adds an explicit `null` for every property of `schema` missing from `v`, so that templates
/// in strict-undefined mode can test optional fields with a plain `if`.
fn with_nulls(mut v: Value, schema: &Value) -> Value {
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
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}
