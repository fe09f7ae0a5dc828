//! The `FledgeCluster` request: types, parsing, and validation into a [`CheckedCluster`].

mod parse;
mod phase;
mod salvage;
mod scalars;
mod sshkey;
mod types;

pub use parse::{
    LoadRequestError, MAX_REQUEST_BYTES, RequestError, load_request, parse_request, spec_schema,
};
pub use phase::Phase;
pub use scalars::{
    Cidr, DnsLabel, KubeVersion, UserName, check_dns_label, check_dns_subdomain, check_host,
    check_https_url, check_text, is_metadata_host, is_metadata_ip,
};
pub use sshkey::SshPublicKey;
pub use types::*;

use std::collections::BTreeMap;

use kube::CustomResourceExt;

use crate::providers;
use crate::schema::Violation;

/// Default pod network.
pub const DEFAULT_POD_CIDR: &str = "192.168.0.0/16";
/// Default service network.
pub const DEFAULT_SERVICE_CIDR: &str = "10.128.0.0/12";
/// Default cluster DNS domain.
pub const DEFAULT_DNS_DOMAIN: &str = "cluster.local";
/// Default login user.
pub const DEFAULT_USER: &str = "capi";
/// Default path of the agent binary on node images.
pub const DEFAULT_AGENT_PATH: &str = "/usr/local/bin/fledge-agent";

/// Collects every problem found in a request.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Violation>);

impl Problems {
    /// Records a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, rule: impl Into<String>) {
        self.0.push(Violation {
            path: path.into(),
            rule: rule.into(),
        });
    }

    /// Records `result`'s error, if any, at `path`.
    pub fn check(&mut self, path: &str, result: Result<(), String>) {
        if let Err(rule) = result {
            self.push(path, rule);
        }
    }

    /// Parses `text` into `T`, recording the error at `path`.
    pub fn parse<T: std::str::FromStr<Err = String>>(
        &mut self,
        path: &str,
        text: &str,
    ) -> Option<T> {
        match text.parse() {
            Ok(v) => Some(v),
            Err(rule) => {
                self.push(path, rule);
                None
            }
        }
    }
}

/// A request that passed validation: the only input rendering accepts.
#[derive(Debug, Clone)]
pub struct CheckedCluster {
    /// Cluster name; every object name derives from it.
    pub name: DnsLabel,
    /// Namespace of the management-plane objects.
    pub namespace: DnsLabel,
    /// Labels the user put on the request.
    pub labels: BTreeMap<String, String>,
    /// Kubernetes version.
    pub kubernetes_version: KubeVersion,
    /// Cluster API contract.
    pub capi: CapiVersion,
    /// Pod networks.
    pub pods: Vec<Cidr>,
    /// Service networks.
    pub services: Vec<Cidr>,
    /// Login user.
    pub user: UserName,
    /// SSH keys.
    pub ssh_keys: Vec<SshPublicKey>,
    /// The request with every default filled in: what the agent enforces.
    pub spec: FledgeClusterSpec,
}

impl CheckedCluster {
    /// The infrastructure provider.
    pub fn provider(&self) -> ProviderKind {
        self.spec.infrastructure.provider
    }

    /// The cluster DNS domain.
    pub fn dns_domain(&self) -> &str {
        self.spec
            .network
            .as_ref()
            .and_then(|n| n.dns_domain.as_deref())
            .unwrap_or(DEFAULT_DNS_DOMAIN)
    }

    /// The agent binary path on the node.
    pub fn agent_path(&self) -> &str {
        self.spec
            .agent
            .as_ref()
            .and_then(|a| a.path.as_deref())
            .unwrap_or(DEFAULT_AGENT_PATH)
    }

    /// The `FledgeCluster` object as stored on the management plane.
    pub fn to_object(&self) -> FledgeCluster {
        let mut obj = FledgeCluster::new(self.name.as_str(), self.spec.clone());
        obj.metadata.namespace = Some(self.namespace.to_string());
        if !self.labels.is_empty() {
            obj.metadata.labels = Some(self.labels.clone());
        }
        obj
    }
}

/// The CRDs of FledgeCluster and ClusterProfile as a multi-document YAML stream (`fledge crd`).
pub fn crd_yaml() -> String {
    let docs: Vec<serde_json::Value> = [FledgeCluster::crd(), ClusterProfile::crd()]
        .into_iter()
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .collect();
    crate::render::yaml::documents(&docs)
}

/// Metadata of a request document.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: Option<String>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

/// Validates a parsed request; every problem is reported at once.
pub fn validate(meta: &RequestMeta, spec: &FledgeClusterSpec) -> Result<CheckedCluster, Problems> {
    let mut p = Problems::default();
    let name: Option<DnsLabel> = p.parse("metadata.name", &meta.name);
    // Each cluster in its own namespace by default: RBAC cannot restrict by label, so the
    // namespace is what bounds the agent's access on the management plane.
    let namespace: Option<DnsLabel> = match meta.namespace.as_deref() {
        Some(ns) => p.parse("metadata.namespace", ns),
        // Derived from the name: a bad name is reported once, as the name.
        None => name.clone(),
    };
    for (k, v) in &meta.labels {
        p.check(&format!("metadata.labels[{k:?}]"), check_label(k, v));
    }
    let kubernetes_version: Option<KubeVersion> =
        p.parse("spec.kubernetesVersion", &spec.kubernetes_version);
    let capi = spec.capi_version.unwrap_or_default();

    // Network.
    let net = spec.network.clone().unwrap_or(Network {
        pods: vec![],
        services: vec![],
        dns_domain: None,
    });
    let pods_text = if net.pods.is_empty() {
        vec![DEFAULT_POD_CIDR.to_string()]
    } else {
        net.pods.clone()
    };
    let services_text = if net.services.is_empty() {
        vec![DEFAULT_SERVICE_CIDR.to_string()]
    } else {
        net.services.clone()
    };
    let pods: Vec<Cidr> = parse_list(&mut p, "spec.network.pods", &pods_text);
    let services: Vec<Cidr> = parse_list(&mut p, "spec.network.services", &services_text);
    for (field, list) in [("pods", &pods), ("services", &services)] {
        if list.len() > 2 || (list.len() == 2 && list[0].is_ipv4() == list[1].is_ipv4()) {
            p.push(
                format!("spec.network.{field}"),
                "must hold one CIDR, or one IPv4 and one IPv6 CIDR for dual-stack",
            );
        }
    }
    for a in &pods {
        for (j, b) in services.iter().enumerate() {
            if a.overlaps(b) {
                p.push(
                    format!("spec.network.services[{j}]"),
                    format!("must not overlap the pod network {a} (got {b})"),
                );
            }
        }
    }
    let dns_domain = net
        .dns_domain
        .clone()
        .unwrap_or_else(|| DEFAULT_DNS_DOMAIN.to_string());
    p.check("spec.network.dnsDomain", check_dns_subdomain(&dns_domain));

    // Control plane.
    let cp = &spec.control_plane;
    if ![1, 3, 5].contains(&cp.replicas) {
        p.push(
            "spec.controlPlane.replicas",
            format!("must be 1, 3 or 5 (got {})", cp.replicas),
        );
    }
    if let Some(days) = cp.certificates_expiry_days
        && !(7..=364).contains(&days)
    {
        // KCP's minimum is 7; kubeadm's certificates last a year.
        p.push(
            "spec.controlPlane.certificatesExpiryDays",
            format!("must be between 7 and 364 (got {days})"),
        );
    }
    if let Some(ep) = &cp.endpoint {
        p.check("spec.controlPlane.endpoint.host", check_host(&ep.host));
        if let Some(port) = ep.port
            && !(1..=65535).contains(&port)
        {
            p.push(
                "spec.controlPlane.endpoint.port",
                format!("must be between 1 and 65535 (got {port})"),
            );
        }
    }

    if let Some(hc) = &cp.health_check {
        validate_health_check(&mut p, "spec.controlPlane.healthCheck", hc);
    }

    // Workers.
    let mut seen = BTreeMap::new();
    for (i, w) in spec.workers.iter().enumerate() {
        let path = format!("spec.workers[{i}]");
        p.check(&format!("{path}.name"), check_dns_label(&w.name, 40));
        if let Some(prev) = seen.insert(w.name.clone(), i) {
            p.push(
                format!("{path}.name"),
                format!("must be unique (spec.workers[{prev}] is also {:?})", w.name),
            );
        }
        if !(0..=1000).contains(&w.replicas) {
            p.push(
                format!("{path}.replicas"),
                format!("must be between 0 and 1000 (got {})", w.replicas),
            );
        }
        if let Some(hc) = &w.health_check {
            validate_health_check(&mut p, &format!("{path}.healthCheck"), hc);
        }
        if let Some(a) = &w.autoscaling {
            validate_autoscaling(&mut p, &path, w.replicas, a);
        }
    }

    // Access.
    let user_text = spec
        .access
        .user
        .clone()
        .unwrap_or_else(|| DEFAULT_USER.to_string());
    let user: Option<UserName> = p.parse("spec.access.user", &user_text);
    if spec.access.ssh_authorized_keys.is_empty() {
        p.push(
            "spec.access.sshAuthorizedKeys",
            "must hold at least one SSH public key",
        );
    }
    let ssh_keys: Vec<SshPublicKey> = parse_list(
        &mut p,
        "spec.access.sshAuthorizedKeys",
        &spec.access.ssh_authorized_keys,
    );

    // Management and agent.
    p.check(
        "spec.management.server",
        check_https_url(&spec.management.server),
    );
    if let Some(path) = spec.agent.as_ref().and_then(|a| a.path.as_deref()) {
        p.check("spec.agent.path", check_abs_path(path));
    }

    // Profile.
    if let Some(profile) = &spec.profile {
        validate_profile(&mut p, profile);
    }

    // Static addresses.
    for (i, node) in spec.nodes.iter().enumerate() {
        validate_node(&mut p, &format!("spec.nodes[{i}]"), node);
    }

    // Provider block and machine sizes.
    providers::validate(spec, &mut p);

    if !p.0.is_empty() {
        return Err(p);
    }
    // All parses succeeded when no problem was recorded.
    let (Some(name), Some(namespace), Some(kubernetes_version), Some(user)) =
        (name, namespace, kubernetes_version, user)
    else {
        return Err(p);
    };
    let mut normalized = spec.clone();
    normalized.capi_version = Some(capi);
    normalized.network = Some(Network {
        pods: pods.iter().map(ToString::to_string).collect(),
        services: services.iter().map(ToString::to_string).collect(),
        dns_domain: Some(dns_domain),
    });
    normalized.access.user = Some(user.to_string());
    if let Some(ep) = normalized.control_plane.endpoint.as_mut() {
        ep.port.get_or_insert(6443);
    }
    Ok(CheckedCluster {
        name,
        namespace,
        labels: meta.labels.clone(),
        kubernetes_version,
        capi,
        pods,
        services,
        user,
        ssh_keys,
        spec: normalized,
    })
}

fn parse_list<T: std::str::FromStr<Err = String>>(
    p: &mut Problems,
    path: &str,
    items: &[String],
) -> Vec<T> {
    items
        .iter()
        .enumerate()
        .filter_map(|(i, s)| p.parse(&format!("{path}[{i}]"), s))
        .collect()
}

fn check_label(key: &str, value: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
    };
    if prefix.is_some_and(|p| check_dns_subdomain(p).is_err()) || !name_ok(name) {
        return Err("must be a valid label key ([prefix/]name, name at most 63 characters)".into());
    }
    if !value.is_empty() && !name_ok(value) {
        return Err(format!(
            "must be a valid label value (at most 63 characters of [A-Za-z0-9-_.]) (got {value:?})"
        ));
    }
    Ok(())
}

fn check_abs_path(path: &str) -> Result<(), String> {
    let ok = path.starts_with('/')
        && path.len() <= 256
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
        && !path.split('/').any(|c| c == "..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be an absolute path of letters, digits, '/', '.', '_' and '-' (got {path:?})"
        ))
    }
}

fn validate_profile(p: &mut Problems, profile: &Profile) {
    let inline_empty = profile.layers.is_empty() && profile.core_layers.is_empty();
    match (&profile.cluster_profile_ref, inline_empty) {
        (Some(r), true) => {
            p.check(
                "spec.profile.clusterProfileRef.name",
                check_dns_subdomain(&r.name),
            );
            if profile.name.is_some() {
                p.push(
                    "spec.profile.name",
                    "must not be set together with clusterProfileRef",
                );
            }
        }
        (Some(_), false) => p.push(
            "spec.profile",
            "must have either layers (coreLayers, layers) or clusterProfileRef, not both",
        ),
        // A named profile with no layers yet: the agent has nothing to install.
        (None, true) => match &profile.name {
            Some(n) => p.check("spec.profile.name", check_dns_label(n, 63)),
            None => p.push(
                "spec.profile",
                "must have a name (a profile with no add-ons yet is written `profile: {name: base}`), layers, or a clusterProfileRef",
            ),
        },
        (None, false) => match &profile.name {
            Some(n) => p.check("spec.profile.name", check_dns_label(n, 63)),
            None => p.push("spec.profile.name", "is required for an inline profile"),
        },
    }
    validate_profile_layers(p, "spec.profile", &profile.core_layers, &profile.layers);
}

/// Validates a profile's core and add-on layers (inline profiles and `ClusterProfile` objects):
/// each list by [`validate_layers`], and a layer name used once across both (each layer is one
/// ApplySet; two of one name would prune each other).
pub fn validate_profile_layers(p: &mut Problems, path: &str, core: &[Layer], layers: &[Layer]) {
    validate_layers(p, &format!("{path}.coreLayers"), core);
    validate_layers(p, &format!("{path}.layers"), layers);
    for (i, layer) in layers.iter().enumerate() {
        if core.iter().any(|c| c.name == layer.name) {
            p.push(
                format!("{path}.layers[{i}].name"),
                format!(
                    "must not also name a core layer (got {:?}, which is in coreLayers)",
                    layer.name
                ),
            );
        }
    }
}

/// What a request lacks that a real node needs, when it is not an error: a profile without a
/// `network` core layer (the CNI) leaves every node NotReady, and no ordinary pod (cert-manager,
/// the Cluster API providers) starts until a CNI is installed by other means. A request whose
/// profile is a `clusterProfileRef` is checked by the agent when it reads the profile.
pub fn warnings(checked: &CheckedCluster) -> Vec<String> {
    let profile = checked.spec.profile.as_ref();
    if profile.is_some_and(|p| p.cluster_profile_ref.is_some()) {
        return Vec::new();
    }
    let has_network = profile.is_some_and(|p| p.core_layers.iter().any(|l| l.name == "network"));
    let mut out = Vec::new();
    if !has_network {
        out.push(
            "spec.profile.coreLayers has no layer named network: until a CNI runs the nodes stay NotReady and the Cluster API providers never start (unless the machine image brings its own CNI)"
                .to_string(),
        );
    }
    if let Some(i) = profile.and_then(|p| p.layers.iter().position(|l| l.name == "network")) {
        out.push(format!(
            "spec.profile.layers[{i}] is named network but is an add-on layer, applied only after the providers and the scale-out; a CNI belongs in spec.profile.coreLayers"
        ));
    }
    out
}

/// Validates add-on layers (inline profiles and `ClusterProfile` objects).
pub fn validate_layers(p: &mut Problems, path: &str, layers: &[Layer]) {
    let mut names = BTreeMap::new();
    for (i, layer) in layers.iter().enumerate() {
        let lp = format!("{path}[{i}]");
        p.check(&format!("{lp}.name"), check_dns_label(&layer.name, 63));
        if names.insert(layer.name.clone(), i).is_some() {
            p.push(
                format!("{lp}.name"),
                format!("must be unique in the profile (got {:?} twice)", layer.name),
            );
        }
        if let Some(t) = layer.timeout_seconds
            && !(1..=3600).contains(&t)
        {
            p.push(
                format!("{lp}.timeoutSeconds"),
                format!("must be between 1 and 3600 (got {t})"),
            );
        }
        if layer.manifests.is_empty() {
            p.push(format!("{lp}.manifests"), "must hold at least one manifest");
        }
        for (j, m) in layer.manifests.iter().enumerate() {
            let mp = format!("{lp}.manifests[{j}]");
            p.check(&format!("{mp}.name"), check_dns_label(&m.name, 63));
            p.check(&format!("{mp}.version"), check_text(&m.version, 64));
            let hex_ok = m.sha256.len() == 64
                && m.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                p.push(
                    format!("{mp}.sha256"),
                    format!("must be 64 lower-case hex digits (got {:?})", m.sha256),
                );
            }
            match (&m.url, &m.inline) {
                (Some(url), None) => p.check(&format!("{mp}.url"), check_https_url(url)),
                (None, Some(_)) => {}
                _ => p.push(mp.clone(), "must have exactly one of url or inline"),
            }
        }
    }
}

/// A health check's timeouts and remediation limit: what the MachineHealthCheck webhook and
/// CRD accept, and no timeout so short that a node's restart gets it replaced.
fn validate_health_check(p: &mut Problems, path: &str, hc: &HealthCheck) {
    for (field, value) in [
        ("readyFalseSeconds", hc.ready_false_seconds),
        ("readyUnknownSeconds", hc.ready_unknown_seconds),
    ] {
        if let Some(v) = value
            && !(30..=86400).contains(&v)
        {
            p.push(
                format!("{path}.{field}"),
                format!("must be between 30 and 86400 (got {v})"),
            );
        }
    }
    if let Some(v) = hc.node_startup_seconds
        && v != 0
        && !(30..=86400).contains(&v)
    {
        p.push(
            format!("{path}.nodeStartupSeconds"),
            format!("must be 0 (no limit) or between 30 and 86400 (got {v})"),
        );
    }
    match &hc.max_unhealthy {
        Some(IntOrPercent::Int(n)) if !(1..=1000).contains(n) => p.push(
            format!("{path}.maxUnhealthy"),
            format!("must be a count between 1 and 1000 or a percentage from 1% to 100% (got {n})"),
        ),
        Some(IntOrPercent::Percent(text)) => {
            let ok = text
                .strip_suffix('%')
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && n.len() <= 3)
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| (1..=100).contains(&n));
            if !ok {
                p.push(
                    format!("{path}.maxUnhealthy"),
                    format!(
                        "must be a count between 1 and 1000 or a percentage from 1% to 100% (got {text:?})"
                    ),
                );
            }
        }
        _ => {}
    }
}

/// A pool's autoscaling bounds: `1 <= min <= max <= 1000`, and `replicas` (the initial size)
/// between them.
fn validate_autoscaling(p: &mut Problems, path: &str, replicas: i64, a: &Autoscaling) {
    if !(1..=1000).contains(&a.min) {
        p.push(
            format!("{path}.autoscaling.min"),
            format!("must be between 1 and 1000 (got {})", a.min),
        );
    }
    if a.max < a.min || a.max > 1000 {
        p.push(
            format!("{path}.autoscaling.max"),
            format!(
                "must be between autoscaling.min ({}) and 1000 (got {})",
                a.min, a.max
            ),
        );
    } else if !(a.min..=a.max).contains(&replicas) {
        p.push(
            format!("{path}.replicas"),
            format!(
                "is the initial size of an autoscaled pool and must be between autoscaling.min and autoscaling.max ({}..{}) (got {replicas})",
                a.min, a.max
            ),
        );
    }
}

fn validate_node(p: &mut Problems, path: &str, node: &NodeAddressing) {
    p.check(
        &format!("{path}.hostname"),
        check_dns_label(&node.hostname, 63),
    );
    if let Some(mac) = &node.mac_address {
        let ok = mac.len() == 17
            && mac.split(':').count() == 6
            && mac
                .split(':')
                .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            p.push(
                format!("{path}.macAddress"),
                format!("must be a MAC address like 52:54:00:12:34:56 (got {mac:?})"),
            );
        }
    }
    if node.addresses.is_empty() {
        p.push(
            format!("{path}.addresses"),
            "must hold at least one address in CIDR notation",
        );
    }
    for (i, a) in node.addresses.iter().enumerate() {
        let ok = a.split_once('/').is_some_and(|(ip, len)| {
            ip.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128)
        });
        if !ok {
            p.push(
                format!("{path}.addresses[{i}]"),
                format!("must be an address with prefix length, like 10.0.0.10/24 (got {a:?})"),
            );
        }
    }
    if let Some(gw) = &node.gateway
        && gw.parse::<std::net::IpAddr>().is_err()
    {
        p.push(
            format!("{path}.gateway"),
            format!("must be an IP address (got {gw:?})"),
        );
    }
    for (i, d) in node.dns.iter().enumerate() {
        if d.parse::<std::net::IpAddr>().is_err() {
            p.push(
                format!("{path}.dns[{i}]"),
                format!("must be an IP address (got {d:?})"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(edit: impl FnOnce(&mut serde_json::Value)) -> Result<CheckedCluster, Vec<String>> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/cases/docker-v1beta2/input.yaml");
        let mut req: serde_json::Value =
            serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        edit(&mut req["spec"]);
        parse_request(
            "input.yaml",
            serde_norway::to_string(&req).unwrap().as_bytes(),
        )
        .map_err(|e| e.problems)
    }

    #[test]
    fn health_checks_default_on_and_their_limits_are_checked() {
        let c = request(|_| {}).unwrap();
        let hc = c
            .spec
            .control_plane
            .health_check
            .clone()
            .unwrap_or_default();
        assert!(hc.enabled());
        assert_eq!(
            (
                hc.ready_false_seconds(),
                hc.ready_unknown_seconds(),
                hc.node_startup_seconds()
            ),
            (300, 300, 600)
        );
        let ok = request(|s| {
            s["controlPlane"]["healthCheck"] = serde_json::json!({"enabled": false});
            s["workers"][0]["healthCheck"] = serde_json::json!(
                {"readyFalseSeconds": 30, "readyUnknownSeconds": 86400, "nodeStartupSeconds": 0, "maxUnhealthy": "100%"});
        });
        assert!(ok.is_ok(), "{ok:?}");
        let problems = request(|s| {
            s["controlPlane"]["healthCheck"] =
                serde_json::json!({"readyFalseSeconds": 10, "nodeStartupSeconds": 20});
            s["workers"][0]["healthCheck"] =
                serde_json::json!({"readyUnknownSeconds": 90000, "maxUnhealthy": "140%"});
        })
        .unwrap_err();
        let want = [
            "spec.controlPlane.healthCheck.readyFalseSeconds: must be between 30 and 86400 (got 10)",
            "spec.controlPlane.healthCheck.nodeStartupSeconds: must be 0 (no limit) or between 30 and 86400 (got 20)",
            "spec.workers[0].healthCheck.readyUnknownSeconds: must be between 30 and 86400 (got 90000)",
            "spec.workers[0].healthCheck.maxUnhealthy: must be a count between 1 and 1000 or a percentage from 1% to 100% (got \"140%\")",
        ];
        for w in want {
            assert!(
                problems.iter().any(|p| p.contains(w)),
                "{w} not in {problems:#?}"
            );
        }
        for bad in [
            serde_json::json!(0),
            serde_json::json!("x%"),
            serde_json::json!("%"),
        ] {
            let problems = request(|s| {
                s["workers"][0]["healthCheck"] = serde_json::json!({"maxUnhealthy": bad});
            })
            .unwrap_err();
            assert!(
                problems[0].contains("spec.workers[0].healthCheck.maxUnhealthy"),
                "{problems:?}"
            );
        }
        // Unknown fields are refused, like everywhere in the request.
        assert!(
            request(|s| s["workers"][0]["healthCheck"] = serde_json::json!({"timeout": "5m"}))
                .is_err()
        );
    }

    #[test]
    fn autoscaling_bounds_hold_the_initial_replicas() {
        let ok = request(|s| {
            s["workers"][0]["replicas"] = serde_json::json!(2);
            s["workers"][0]["autoscaling"] = serde_json::json!({"min": 1, "max": 5});
        });
        assert!(ok.is_ok(), "{ok:?}");
        let cases = [
            (
                (1, 0, 3),
                "spec.workers[0].autoscaling.min: must be between 1 and 1000 (got 0)",
            ),
            (
                (3, 4, 2),
                "spec.workers[0].autoscaling.max: must be between autoscaling.min (4) and 1000 (got 2)",
            ),
            (
                (1, 1, 1001),
                "spec.workers[0].autoscaling.max: must be between autoscaling.min (1) and 1000 (got 1001)",
            ),
            (
                (6, 1, 5),
                "spec.workers[0].replicas: is the initial size of an autoscaled pool and must be between autoscaling.min and autoscaling.max (1..5) (got 6)",
            ),
        ];
        for ((replicas, min, max), want) in cases {
            let problems = request(|s| {
                s["workers"][0]["replicas"] = serde_json::json!(replicas);
                s["workers"][0]["autoscaling"] = serde_json::json!({"min": min, "max": max});
            })
            .unwrap_err();
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "{want} not in {problems:#?}"
            );
        }
    }
}
