//! Infrastructure providers. Each is a small [`InfraProvider`] in its own module with its own
//! template (`templates/infra/<provider>.yaml.j2`); [`get`] is the one registry `match`.

mod aws;
mod azure;
mod docker;
mod gcp;
mod maas;
mod vsphere;

use serde_json::Value;

use crate::spec::{
    CapiVersion, FledgeClusterSpec, Infrastructure, Machine, Problems, ProviderKind, check_text,
};

/// The API a provider serves for one CAPI contract, and the upstream CRDs that define it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfraApi {
    /// `apiVersion` of the provider's objects, for example `infrastructure.cluster.x-k8s.io/v1beta2`.
    pub api_version: &'static str,
    /// Kind of the infrastructure cluster, for example `VSphereCluster`.
    pub cluster_kind: &'static str,
    /// Kind of the machine template, for example `VSphereMachineTemplate`.
    pub machine_template_kind: &'static str,
    /// Folder under `shared/crds/` holding the CRDs this release targets, `<repo>/<tag>`.
    pub crd_dir: &'static str,
}

/// Whether a machine field is needed by a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Must be set.
    Required,
    /// May be set.
    Optional,
    /// Not used by this provider: setting it is an error, so nothing is silently ignored.
    Unused,
}

/// Which machine fields a provider uses, and their lower bounds.
#[derive(Debug, Clone, Copy)]
pub struct MachineRules {
    /// `cpus`.
    pub cpus: Need,
    /// `memoryMiB`.
    pub memory_mib: Need,
    /// `diskGiB` and its minimum.
    pub disk_gib: (Need, i64),
    /// `instanceType` (AWS).
    pub instance_type: Need,
    /// `vmSize` (Azure).
    pub vm_size: Need,
    /// `machineType` (GCP).
    pub machine_type: Need,
}

/// One infrastructure provider.
pub trait InfraProvider: Sync {
    /// The API it serves under a CAPI contract.
    fn api(&self, capi: CapiVersion) -> InfraApi;
    /// Which machine fields it uses.
    fn machine_rules(&self) -> MachineRules;
    /// Its block of `spec.infrastructure` as the request has it, as JSON; `None` when absent.
    fn block(&self, infra: &Infrastructure) -> Option<Value>;
    /// Whether the request must have its block (an optional one's defaults apply when absent).
    fn requires_block(&self) -> bool {
        true
    }
    /// Whether nodes run an external cloud-controller-manager (`cloud-provider: external`).
    fn external_cloud_provider(&self) -> bool;
    /// Whether `spec.controlPlane.endpoint` is required (no provider-managed load balancer).
    fn needs_endpoint(&self) -> bool {
        false
    }
    /// Checks the provider's block (present when this is called, unless it is optional).
    fn validate_block(&self, infra: &Infrastructure, p: &mut Problems);
    /// Checks `spec.controlPlane.endpoint.host` beyond the common host rule.
    fn validate_endpoint_host(&self, _infra: &Infrastructure, _host: &str) -> Result<(), String> {
        Ok(())
    }
    /// The variables its `components.yaml` needs and has no default for: the credentials of
    /// its manager, which the request's `infrastructure.variablesSecret` must hold.
    fn credential_variables(&self) -> &'static [&'static str] {
        &[]
    }
    /// The cluster-scoped identity the request names, as (resource, name): the pivot copies it
    /// (as clusterctl move copies global identities), so the agent's ClusterRole may `get` it.
    fn global_identity(&self, _infra: &Infrastructure) -> Option<(String, String)> {
        None
    }
    /// The credentials Secret its cloud-controller-manager reads, made from the request's.
    fn cloud_secret(&self, _infra: &Infrastructure) -> Option<CloudSecret> {
        None
    }
    /// The node configuration the provider's controller writes into a Secret per machine
    /// template, which every node of the template needs as a file (Azure's `azure.json`).
    fn template_secret_file(&self) -> Option<TemplateSecretFile> {
        None
    }
    /// The virtual IP the control-plane nodes serve the endpoint with, when nothing of the
    /// provider's serves it (no load balancer, no DNS record): kube-vip as a static pod.
    fn endpoint_vip(&self, _infra: &Infrastructure) -> Option<EndpointVip> {
        None
    }
    /// The node name kubeadm registers, as a cloud-init expression, when it is not the host
    /// name.
    fn node_name(&self) -> Option<&'static str> {
        None
    }
    /// Whether the machines' bootstrap may create the SSH user (cloud-init's `users` module).
    fn bootstrap_users(&self) -> bool {
        true
    }
    /// The instance profile of control-plane machines or workers that the request leaves to
    /// the provider's default (the name before the provider's suffix).
    fn default_instance_profile(&self, _control_plane: bool) -> Option<&'static str> {
        None
    }
    /// The largest user-data its machines accept, in bytes.
    fn user_data_limit(&self) -> usize {
        64 * 1024
    }
    /// Where the request leaves the machine image to the provider's default: the field that
    /// names the image, and what it holds. A provider's default image has no fledge-agent.
    fn unset_image(&self, _infra: &Infrastructure) -> Option<UnsetImage> {
        None
    }
}

/// A machine image the request leaves to the provider (see [`InfraProvider::unset_image`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsetImage {
    /// The request's field that names the image, such as `spec.infrastructure.aws.ami`.
    pub field: &'static str,
    /// What the field holds, such as `the AMI id`.
    pub what: &'static str,
}

/// `block` as JSON, for [`InfraProvider::block`].
fn block_json<T: serde::Serialize>(block: Option<&T>) -> Option<Value> {
    block.map(|b| serde_json::to_value(b).unwrap_or(Value::Null))
}

/// A file every node gets from a Secret the provider creates for each machine template, named
/// `<template name><suffix>`, with one key for control-plane nodes and one for workers (see
/// [`InfraProvider::template_secret_file`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TemplateSecretFile {
    /// Path on the node.
    pub path: &'static str,
    /// Suffix of the Secret's name after the machine template's name.
    pub suffix: &'static str,
    /// The key control-plane nodes read.
    pub control_plane_key: &'static str,
    /// The key workers read.
    pub worker_key: &'static str,
}

/// A Secret the cloud provider (the `cloud` core layer) reads in the cluster, which the agent
/// makes from a Secret the request names in the cluster's namespace (see
/// [`InfraProvider::cloud_secret`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudSecret {
    /// The request's Secret, in the cluster's namespace.
    pub source: String,
    /// Namespace of the Secret to make.
    pub namespace: &'static str,
    /// Its name.
    pub name: &'static str,
    /// (key in the source, key in the Secret made).
    pub keys: Vec<(&'static str, String)>,
}

/// kube-vip's settings for one cluster (see [`InfraProvider::endpoint_vip`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointVip {
    /// Container image.
    pub image: String,
    /// Interface that carries the address; kube-vip picks the default route's when absent.
    pub interface: Option<String>,
}

/// The provider implementation for `kind`.
pub fn get(kind: ProviderKind) -> &'static dyn InfraProvider {
    match kind {
        ProviderKind::Vsphere => &vsphere::Vsphere,
        ProviderKind::Aws => &aws::Aws,
        ProviderKind::Azure => &azure::Azure,
        ProviderKind::Gcp => &gcp::Gcp,
        ProviderKind::Maas => &maas::Maas,
        ProviderKind::Docker => &docker::Docker,
    }
}

/// The template that renders a provider's infrastructure cluster and machine template.
pub fn template_name(kind: ProviderKind) -> String {
    format!("infra/{}.yaml.j2", kind.as_str())
}

/// Validates `spec.infrastructure` and every machine block against the chosen provider.
pub fn validate(spec: &FledgeClusterSpec, p: &mut Problems) {
    let infra = &spec.infrastructure;
    let chosen = infra.provider;
    let provider = get(chosen);
    for other in ProviderKind::ALL {
        if other != chosen && get(other).block(infra).is_some() {
            p.push(
                format!("spec.infrastructure.{}", other.as_str()),
                format!("must not be set when provider is {}", chosen.as_str()),
            );
        }
    }
    if provider.block(infra).is_some() || !provider.requires_block() {
        provider.validate_block(infra, p);
    } else {
        p.push(
            format!("spec.infrastructure.{}", chosen.as_str()),
            format!("is required when provider is {}", chosen.as_str()),
        );
    }
    if let Some(name) = &infra.variables_secret {
        p.check(
            "spec.infrastructure.variablesSecret",
            crate::spec::check_dns_subdomain(name),
        );
    }
    if let Some(ep) = &spec.control_plane.endpoint
        && let Err(why) = provider.validate_endpoint_host(infra, &ep.host)
    {
        p.push("spec.controlPlane.endpoint.host", why);
    }
    if provider.needs_endpoint() && spec.control_plane.endpoint.is_none() {
        p.push(
            "spec.controlPlane.endpoint",
            format!(
                "is required for {}: it has no provider-managed load balancer",
                chosen.as_str()
            ),
        );
    }
    let rules = provider.machine_rules();
    validate_machine(
        p,
        "spec.controlPlane.machine",
        &spec.control_plane.machine,
        rules,
        chosen,
        true,
    );
    for (i, w) in spec.workers.iter().enumerate() {
        validate_machine(
            p,
            &format!("spec.workers[{i}].machine"),
            &w.machine,
            rules,
            chosen,
            false,
        );
    }
}

fn validate_machine(
    p: &mut Problems,
    path: &str,
    m: &Machine,
    rules: MachineRules,
    kind: ProviderKind,
    control_plane: bool,
) {
    let provider = kind.as_str();
    let mut need = |field: &str, present: bool, need: Need| match (need, present) {
        (Need::Required, false) => p.push(
            format!("{path}.{field}"),
            format!("is required for {provider}"),
        ),
        (Need::Unused, true) => p.push(
            format!("{path}.{field}"),
            format!("is not used by {provider}; remove it"),
        ),
        _ => {}
    };
    need("cpus", m.cpus.is_some(), rules.cpus);
    need("memoryMiB", m.memory_mib.is_some(), rules.memory_mib);
    need("diskGiB", m.disk_gib.is_some(), rules.disk_gib.0);
    need(
        "instanceType",
        m.instance_type.is_some(),
        rules.instance_type,
    );
    need("vmSize", m.vm_size.is_some(), rules.vm_size);
    need("machineType", m.machine_type.is_some(), rules.machine_type);
    let min_cpus = if control_plane { 2 } else { 1 };
    if let Some(c) = m.cpus
        && !(min_cpus..=1024).contains(&c)
    {
        p.push(
            format!("{path}.cpus"),
            format!("must be between {min_cpus} and 1024 (got {c})"),
        );
    }
    let min_mem = if control_plane { 2048 } else { 1024 };
    if let Some(mem) = m.memory_mib
        && !(min_mem..=16 * 1024 * 1024).contains(&mem)
    {
        p.push(
            format!("{path}.memoryMiB"),
            format!("must be at least {min_mem} (got {mem})"),
        );
    }
    if let Some(d) = m.disk_gib {
        let min = rules.disk_gib.1;
        if !(min..=65536).contains(&d) {
            p.push(
                format!("{path}.diskGiB"),
                format!("must be between {min} and 65536 (got {d})"),
            );
        }
    }
    for (field, v) in [
        ("instanceType", &m.instance_type),
        ("vmSize", &m.vm_size),
        ("machineType", &m.machine_type),
    ] {
        if let Some(v) = v {
            let ok = check_text(v, 64).is_ok()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                p.push(
                    format!("{path}.{field}"),
                    format!("must be a size name of letters, digits, '.', '_' and '-' (got {v:?})"),
                );
            }
        }
    }
}

/// Checks an optional text field of a provider block.
fn text(p: &mut Problems, path: &str, v: Option<&String>, max: usize) {
    if let Some(v) = v {
        p.check(path, check_text(v, max));
    }
}
