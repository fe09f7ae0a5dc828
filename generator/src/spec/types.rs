//! The `fledge.dev/v1alpha1` API types as users write them.
//!
//! These structs are the public contract: field names never change. They derive their CRDs
//! (`fledge crd`) and are what the agent reads back from the management cluster. Everything here
//! is *unchecked*: [`crate::spec::validate`] turns a [`FledgeClusterSpec`] into a
//! [`crate::spec::CheckedCluster`].

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of fledge's own resources.
pub const GROUP: &str = "fledge.dev";
/// The API version of fledge's own resources.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in documents.
pub const API_VERSION: &str = "fledge.dev/v1alpha1";

/// A cluster that fledge provisions: the request, and the desired state its agent enforces.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fledge.dev",
    version = "v1alpha1",
    kind = "FledgeCluster",
    namespaced,
    status = "FledgeClusterStatus",
    shortname = "fc",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.infrastructure.provider"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.kubernetesVersion"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FledgeClusterSpec {
    /// Kubernetes version of the workload cluster, for example `v1.33.4`.
    pub kubernetes_version: String,
    /// Cluster API contract of the management plane: `v1beta2` (default) or `v1beta1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capi_version: Option<CapiVersion>,
    /// Where the machines run.
    pub infrastructure: Infrastructure,
    /// The control plane.
    pub control_plane: ControlPlane,
    /// Worker pools; the agent creates them after the pivot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerPool>,
    /// Pod and service networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Who may log in to the nodes.
    pub access: Access,
    /// The management plane the agent reports to.
    pub management: Management,
    /// Add-on profile the agent installs after the pivot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// Where the agent binary lives on the node image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSettings>,
    /// Static addressing for nodes; DHCP when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeAddressing>,
}

/// The Cluster API contract version the management plane serves.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum CapiVersion {
    /// Cluster API >= 1.11.
    #[default]
    V1beta2,
    /// Older management planes.
    V1beta1,
}

impl CapiVersion {
    /// The version string, `v1beta2` or `v1beta1`.
    pub fn as_str(self) -> &'static str {
        match self {
            CapiVersion::V1beta2 => "v1beta2",
            CapiVersion::V1beta1 => "v1beta1",
        }
    }
}

/// Infrastructure provider kinds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Cluster API Provider vSphere (CAPV).
    Vsphere,
    /// Cluster API Provider AWS (CAPA).
    Aws,
    /// Cluster API Provider Azure (CAPZ).
    Azure,
    /// Cluster API Provider GCP (CAPG).
    Gcp,
    /// Cluster API Provider MAAS (CAPMAAS).
    Maas,
    /// CAPI's Docker / Dev test provider (CAPD).
    Docker,
}

impl ProviderKind {
    /// All providers, in documentation order.
    pub const ALL: [ProviderKind; 6] = [
        ProviderKind::Vsphere,
        ProviderKind::Aws,
        ProviderKind::Azure,
        ProviderKind::Gcp,
        ProviderKind::Maas,
        ProviderKind::Docker,
    ];

    /// The provider's name as written in requests.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Vsphere => "vsphere",
            ProviderKind::Aws => "aws",
            ProviderKind::Azure => "azure",
            ProviderKind::Gcp => "gcp",
            ProviderKind::Maas => "maas",
            ProviderKind::Docker => "docker",
        }
    }
}

/// `spec.infrastructure`: the provider and its block. Blocks name Secrets; they never hold
/// credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Infrastructure {
    /// One of `vsphere | aws | azure | gcp | maas | docker`.
    pub provider: ProviderKind,
    /// vSphere settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsphere: Option<VsphereSpec>,
    /// AWS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsSpec>,
    /// Azure settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSpec>,
    /// GCP settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<GcpSpec>,
    /// MAAS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maas: Option<MaasSpec>,
    /// Docker (CAPD) settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerSpec>,
    /// Name of a Secret in the cluster's namespace on the management plane whose keys are the
    /// variables of the providers' components, as clusterctl names them (`VSPHERE_USERNAME`,
    /// `AWS_B64ENCODED_CREDENTIALS`, ...). The agent reads it by name when it installs the
    /// providers in the cluster; the values never travel in user-data, the KubeadmControlPlane
    /// or the agent's configuration. Required for providers whose components need credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variables_secret: Option<String>,
}

/// vSphere settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsphereSpec {
    /// vCenter address (host name or IP, no scheme).
    pub server: String,
    /// TLS thumbprint of vCenter (SHA-1 or SHA-256, colon-separated hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbprint: Option<String>,
    /// Datacenter name.
    pub datacenter: String,
    /// Datastore name.
    pub datastore: String,
    /// Network (port group) name.
    pub network: String,
    /// Resource pool path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_pool: Option<String>,
    /// VM folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    /// VM template to clone.
    pub template: String,
    /// Name of the Secret (in the cluster's namespace) holding the vCenter credentials.
    pub credentials_secret: String,
    /// kube-vip, which serves `spec.controlPlane.endpoint.host` from the control-plane nodes
    /// (vSphere has no load balancer of its own). Defaults apply when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_vip: Option<KubeVip>,
}

/// kube-vip as a static pod on every control-plane node: the node that holds its lease answers
/// ARP for the endpoint address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeVip {
    /// Container image; the node pulls it (or has it in its template). The one CAPV's
    /// template pins when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Network interface that carries the address, for example `ens192`; kube-vip takes the
    /// interface of the default route when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

impl KubeVip {
    /// The image CAPV v1.16.1's `templates/cluster-template.yaml` runs.
    pub const DEFAULT_IMAGE: &str = "ghcr.io/kube-vip/kube-vip:v0.6.4";
}

/// AWS settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsSpec {
    /// AWS region, for example `eu-west-1`.
    pub region: String,
    /// AMI id of an image with fledge-agent baked in; required for new requests (CAPA's default
    /// AMIs have no agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ami: Option<String>,
    /// IAM instance profile of control-plane machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_instance_profile: Option<String>,
    /// Identity CAPA uses for this cluster (credentials live in the identity's Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_ref: Option<AwsIdentityRef>,
}

/// Reference to a CAPA identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsIdentityRef {
    /// `AWSClusterStaticIdentity`, `AWSClusterRoleIdentity` or `AWSClusterControllerIdentity`.
    pub kind: String,
    /// Identity name.
    pub name: String,
}

/// Azure settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureSpec {
    /// Azure location, for example `westeurope`.
    pub location: String,
    /// Subscription id (a UUID).
    #[serde(rename = "subscriptionID")]
    pub subscription_id: String,
    /// Resource group; defaults to the cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    /// Name of the `AzureClusterIdentity` (which names the credentials Secret).
    pub identity_name: String,
    /// Resource id of the machines' image (a managed image or a compute gallery image version),
    /// with fledge-agent baked in; required for new requests.
    #[serde(rename = "imageID", default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
}

/// GCP settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GcpSpec {
    /// GCP project id.
    pub project: String,
    /// Region, for example `europe-west4`.
    pub region: String,
    /// VPC network name; CAPG creates one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Image self-link of an image with fledge-agent baked in; required for new requests (CAPG's
    /// default images have no agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Name of the Secret (in the cluster's namespace) holding the service-account key.
    pub credentials_secret: String,
}

/// MAAS settings (CAPMAAS reads the MAAS endpoint and key from its own deployment).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaasSpec {
    /// MAAS DNS domain for the cluster's records.
    pub dns_domain: String,
    /// Image name in MAAS, for example `custom/u-2204-0-k-1334-0`.
    pub image: String,
    /// MAAS resource pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_pool: Option<String>,
}

/// Docker (CAPD) settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DockerSpec {
    /// Node image; CAPD uses `kindest/node:<version>` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_image: Option<String>,
}

/// `spec.controlPlane`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlane {
    /// Final number of control-plane machines: 1, 3 or 5. The management plane always starts 1.
    pub replicas: i64,
    /// API server endpoint (a VIP or DNS name). Required for vSphere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// Machine size. Optional for providers that use none of the machine fields (docker).
    #[serde(default)]
    pub machine: Machine,
    /// Replace a control-plane machine when its certificates expire within this many days
    /// (KubeadmControlPlane `rollout.before.certificatesExpiryDays`; `rolloutBefore` in
    /// v1beta1). 7 to 364; 30 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates_expiry_days: Option<i64>,
    /// The control plane's MachineHealthCheck (on when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

impl ControlPlane {
    /// Days before certificate expiry at which KCP replaces a machine when none is set.
    pub const DEFAULT_CERTIFICATES_EXPIRY_DAYS: i64 = 30;

    /// `certificatesExpiryDays`, or its default.
    pub fn certificates_expiry_days(&self) -> i64 {
        self.certificates_expiry_days
            .unwrap_or(Self::DEFAULT_CERTIFICATES_EXPIRY_DAYS)
    }
}

/// An API server endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// Host name or IP address.
    pub host: String,
    /// Port; 6443 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

/// Machine size. Which of `instanceType`, `vmSize` and `machineType` is needed depends on the
/// provider (AWS, Azure, GCP respectively).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Machine {
    /// CPUs (at least 2 for a control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<i64>,
    /// Memory in MiB.
    #[serde(rename = "memoryMiB", default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<i64>,
    /// Root disk in GiB.
    #[serde(rename = "diskGiB", default, skip_serializing_if = "Option::is_none")]
    pub disk_gib: Option<i64>,
    /// AWS instance type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Azure VM size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_size: Option<String>,
    /// GCP machine type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
}

/// `spec.workers[]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerPool {
    /// Pool name (a DNS-1123 label); the MachineDeployment is `<cluster>-<name>`.
    pub name: String,
    /// Number of machines.
    pub replicas: i64,
    /// Machine size. Optional for providers that use none of the machine fields (docker).
    #[serde(default)]
    pub machine: Machine,
    /// The pool's MachineHealthCheck (on when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Size bounds for a cluster autoscaler; `replicas` is then only the initial size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

/// `healthCheck` of the control plane or a worker pool: when Cluster API replaces a machine
/// whose node is unhealthy (a MachineHealthCheck in the workload cluster). Every field is
/// optional; an absent block means the defaults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// `false` switches the check off; on when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How long a node may report `Ready=False` before its machine is replaced; 30 to 86400,
    /// 300 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_false_seconds: Option<i64>,
    /// How long a node may be `Ready=Unknown` (its kubelet stopped reporting) before its machine
    /// is replaced; 30 to 86400, 300 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_unknown_seconds: Option<i64>,
    /// How long a new machine may take to get a node; 0 (no limit) or 30 to 86400, 600 when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_startup_seconds: Option<i64>,
    /// Remediation stops while more machines than this are unhealthy (a count, or a
    /// percentage such as `40%` of the checked machines). Default: `100%` for the control plane
    /// (KubeadmControlPlane never remediates past etcd quorum), 40% of the pool's size (at
    /// least 1) for a worker pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_string")]
    pub max_unhealthy: Option<IntOrPercent>,
}

/// Kubernetes' int-or-string schema (a structural CRD cannot say `anyOf` otherwise).
fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"x-kubernetes-int-or-string": true})
}

impl HealthCheck {
    /// Default `readyFalseSeconds` and `readyUnknownSeconds`.
    pub const DEFAULT_READY_SECONDS: i64 = 300;
    /// Default `nodeStartupSeconds` (Cluster API's own default).
    pub const DEFAULT_NODE_STARTUP_SECONDS: i64 = 600;

    /// Whether the check is on.
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    /// `readyFalseSeconds`, or its default.
    pub fn ready_false_seconds(&self) -> i64 {
        self.ready_false_seconds
            .unwrap_or(Self::DEFAULT_READY_SECONDS)
    }

    /// `readyUnknownSeconds`, or its default.
    pub fn ready_unknown_seconds(&self) -> i64 {
        self.ready_unknown_seconds
            .unwrap_or(Self::DEFAULT_READY_SECONDS)
    }

    /// `nodeStartupSeconds`, or its default.
    pub fn node_startup_seconds(&self) -> i64 {
        self.node_startup_seconds
            .unwrap_or(Self::DEFAULT_NODE_STARTUP_SECONDS)
    }
}

/// A count (`2`) or a percentage (`"40%"`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(untagged)]
pub enum IntOrPercent {
    /// A count.
    Int(i64),
    /// A percentage, `N%`.
    Percent(String),
}

impl IntOrPercent {
    /// The value as Kubernetes' int-or-string expects it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            IntOrPercent::Int(n) => serde_json::json!(n),
            IntOrPercent::Percent(p) => serde_json::json!(p),
        }
    }
}

/// `spec.workers[].autoscaling`: the pool's size bounds, written as Cluster API's
/// cluster-autoscaler annotations on its MachineDeployment. The autoscaler (an add-on layer
/// the user supplies) then owns `replicas` within them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Autoscaling {
    /// Fewest machines; at least 1.
    pub min: i64,
    /// Most machines; at least `min`, at most 1000.
    pub max: i64,
}

/// `spec.network`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// Pod CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    /// Service CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Cluster DNS domain; `cluster.local` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<String>,
}

/// `spec.access`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Access {
    /// Login user on the nodes; `capi` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// OpenSSH public keys (`ssh-ed25519 AAAA... comment`). At least one.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

/// `spec.management`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Management {
    /// The management cluster's API URL, as the agent on the node reaches it (`https://...`).
    pub server: String,
}

/// `spec.profile`: inline layers (possibly none yet: a named, empty profile), or a reference to
/// a `ClusterProfile` in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    /// Profile name (inline profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Ordered core layers (inline profiles): the network (CNI) and cloud-provider layers a node
    /// needs before any ordinary pod runs, applied by the agent before the Cluster API
    /// providers (phase `CoreLayers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub core_layers: Vec<Layer>,
    /// Ordered add-on layers (inline profiles), applied after the scale-out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Layer>,
    /// A `ClusterProfile` to use instead of inline layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_profile_ref: Option<LocalObjectRef>,
}

/// A reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectRef {
    /// Object name.
    pub name: String,
}

/// One add-on layer: network, storage, logging, monitoring, security...
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Layer {
    /// Layer name, unique in the profile.
    pub name: String,
    /// Manifests applied in order with server-side apply.
    pub manifests: Vec<Manifest>,
    /// How long the layer may take to become healthy before the agent reports it failed
    /// (and keeps retrying); 300 when absent, at most 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

/// One manifest of a layer, pinned by version and sha256.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// Manifest name, unique in the layer.
    pub name: String,
    /// Version label of the add-on.
    pub version: String,
    /// `https://` URL to fetch the manifest from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The manifest inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// Lower-case hex sha256 of the manifest bytes.
    pub sha256: String,
}

/// Where the agent binary is on the node image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSettings {
    /// Absolute path of the `fledge-agent` executable on the image that cloud-init runs
    /// `install` from; `/usr/local/bin/fledge-agent` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Static addressing of one node (cloud-init network-config v2).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAddressing {
    /// Node host name; the first entry is CP-A.
    pub hostname: String,
    /// Interface match: the MAC address, or none to match the first ethernet device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Addresses in CIDR notation, for example `10.0.0.10/24`.
    pub addresses: Vec<String>,
    /// Default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// DNS servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

/// Status the agent reports (`FledgeCluster.status`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct FledgeClusterStatus {
    /// Current phase of the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The spec generation the agent last accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions with reason and message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Version of the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// When the agent last reported (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// The pivot's progress, written by the pivot itself before its first write to the
    /// management plane: while it is `InProgress` or `Complete`, `fledge apply` leaves the
    /// Cluster API objects alone (they live in the workload cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pivot: Option<PivotStatus>,
}

/// `status.pivot`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PivotStatus {
    /// `InProgress`, `Complete` or `RolledBack`.
    pub state: String,
    /// When the state was entered (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// `status.pivot.state` values.
pub mod pivot_state {
    /// The pivot has started writing; the management objects may be half gone.
    pub const IN_PROGRESS: &str = "InProgress";
    /// The cluster's objects live in the workload cluster.
    pub const COMPLETE: &str = "Complete";
    /// The pivot failed before cutover and put everything back.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// An unpivot has started writing: the cluster's objects are coming back to the
    /// management plane.
    pub const UNPIVOTING: &str = "Unpivoting";
    /// The cluster's objects are back on the management plane, which manages it again.
    pub const UNPIVOTED: &str = "Unpivoted";
}

/// The prefix of the annotations the pivot puts on the objects it moves.
pub const PIVOT_ANNOTATION_PREFIX: &str = "pivot.fledge.dev/";

/// A status condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, for example `SpecFetched`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// Ordered add-on layers shared by clusters.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fledge.dev",
    version = "v1alpha1",
    kind = "ClusterProfile",
    namespaced,
    shortname = "cprof"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterProfileSpec {
    /// Ordered core layers (network, cloud provider), applied before the providers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub core_layers: Vec<Layer>,
    /// Ordered add-on layers.
    #[serde(default)]
    pub layers: Vec<Layer>,
}
