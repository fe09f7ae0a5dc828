//! `/etc/fledge/agent.yaml`: which cluster the agent runs, where the management plane is, and
//! where its token and CA are. It names secret files; it holds no secret itself.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default location of the configuration.
pub const DEFAULT_PATH: &str = "/etc/fledge/agent.yaml";

/// The agent configuration (`kind: AgentConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// `fledge.dev/v1alpha1`.
    pub api_version: String,
    /// `AgentConfig`.
    pub kind: String,
    /// The cluster this node belongs to.
    pub cluster: ClusterRef,
    /// The management plane.
    pub management: Management,
    /// State directory; `/var/lib/fledge`.
    pub state_dir: PathBuf,
    /// Loopback address for /healthz and /metrics.
    pub metrics_address: String,
    /// Seconds between full resyncs of the spec (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_seconds: Option<u64>,
    /// Upper bound of the reconnect backoff in seconds (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_cap_seconds: Option<u64>,
    /// On SIGTERM, how long in-flight work may take before the agent stops anyway, in seconds
    /// (default 20, below the unit's TimeoutStopSec=30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_seconds: Option<u64>,
    /// Kubeconfig of the local cluster (default `/etc/kubernetes/admin.conf`, what
    /// `kubeadm init` writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_kubeconfig: Option<PathBuf>,
    /// The Cluster API providers to install into the local cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<Providers>,
}

/// Default kubeconfig of the local cluster.
pub const DEFAULT_LOCAL_KUBECONFIG: &str = "/etc/kubernetes/admin.conf";

/// Where the providers come from (`providers:` in the configuration).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Providers {
    /// Directory in clusterctl's local-repository layout, `<name>/<version>/components.yaml`
    /// and `metadata.yaml` (default `/usr/share/fledge/providers`, baked into the image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<PathBuf>,
    /// Version per provider (`cluster-api`, `bootstrap-kubeadm`, `control-plane-kubeadm`,
    /// `infrastructure-<name>`, `cert-manager`); a provider not named uses the one version
    /// baked into the directory.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub versions: std::collections::BTreeMap<String, String>,
    /// Values for the components' `${VARIABLES}` (no secrets: this file is readable by root
    /// only, but it is not a secret store).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub variables: std::collections::BTreeMap<String, String>,
    /// Provider versions the image does not carry, fetched once and pinned by sha256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fetch: Vec<Fetch>,
}

/// A provider version fetched from a URL (`providers.fetch[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fetch {
    /// Provider name as in the directory layout (`infrastructure-vsphere`).
    pub name: String,
    /// Version (`v1.16.1`).
    pub version: String,
    /// Base URL ending in `/` holding `components.yaml` and `metadata.yaml` (a release's
    /// download directory).
    pub url: String,
    /// sha256 (hex) per file: `components.yaml` always, `metadata.yaml` for CAPI providers.
    pub sha256: std::collections::BTreeMap<String, String>,
}

/// The cluster's FledgeCluster on the management plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterRef {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
}

/// How to reach the management plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Management {
    /// API server URL.
    pub server: String,
    /// File holding the service-account token.
    pub token_file: PathBuf,
    /// File holding the API server's CA bundle.
    pub ca_file: PathBuf,
}

/// A configuration problem, naming the file and the rule.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong.
    pub problem: String,
}

impl AgentConfig {
    /// Reads and checks a configuration file. `root` prefixes every path (image baking).
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let err = |problem: String| ConfigError {
            file: path.to_path_buf(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let cfg: AgentConfig = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
        if cfg.api_version != "fledge.dev/v1alpha1" || cfg.kind != "AgentConfig" {
            return Err(err(format!(
                "must be apiVersion fledge.dev/v1alpha1, kind AgentConfig (got {}, {})",
                cfg.api_version, cfg.kind
            )));
        }
        fledge_generator::spec::check_dns_label(&cfg.cluster.name, 63)
            .map_err(|r| err(format!("cluster.name: {r}")))?;
        fledge_generator::spec::check_dns_label(&cfg.cluster.namespace, 63)
            .map_err(|r| err(format!("cluster.namespace: {r}")))?;
        fledge_generator::spec::check_https_url(&cfg.management.server)
            .map_err(|r| err(format!("management.server: {r}")))?;
        let local = cfg.local_kubeconfig();
        let dir = cfg.providers_dir();
        for (field, p) in [
            ("management.tokenFile", &cfg.management.token_file),
            ("management.caFile", &cfg.management.ca_file),
            ("stateDir", &cfg.state_dir),
            ("localKubeconfig", &local),
            ("providers.directory", &dir),
        ] {
            if !p.is_absolute() {
                return Err(err(format!(
                    "{field}: must be an absolute path (got {})",
                    p.display()
                )));
            }
        }
        let addr: std::net::SocketAddr = cfg.metrics_address.parse().map_err(|_| {
            err(format!(
                "metricsAddress: must be IP:PORT (got {:?})",
                cfg.metrics_address
            ))
        })?;
        if !addr.ip().is_loopback() {
            return Err(err(format!(
                "metricsAddress: must be a loopback address (got {addr})"
            )));
        }
        for (i, f) in cfg.providers.iter().flat_map(|p| &p.fetch).enumerate() {
            let at = format!("providers.fetch[{i}]");
            if crate::components::kind_of(&f.name).is_none() {
                return Err(err(format!(
                    "{at}.name: must be cert-manager, cluster-api, bootstrap-*, control-plane-* or infrastructure-* (got {:?})",
                    f.name
                )));
            }
            if !(f.url.starts_with("https://") || f.url.starts_with("http://"))
                || !f.url.ends_with('/')
            {
                return Err(err(format!(
                    "{at}.url: must be an http(s) URL of a directory, ending in / (got {:?})",
                    f.url
                )));
            }
            for (file, h) in &f.sha256 {
                if !crate::fetch::FILES.contains(&file.as_str()) {
                    return Err(err(format!(
                        "{at}.sha256: unknown file {file:?} (components.yaml, metadata.yaml)"
                    )));
                }
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(err(format!(
                        "{at}.sha256.{file}: must be 64 hex digits (got {h:?})"
                    )));
                }
            }
            if !f.sha256.contains_key("components.yaml") {
                return Err(err(format!(
                    "{at}.sha256: must pin components.yaml (a fetched file is used only when it matches its pin)"
                )));
            }
        }
        Ok(cfg)
    }

    /// The local cluster's kubeconfig.
    pub fn local_kubeconfig(&self) -> PathBuf {
        self.local_kubeconfig
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LOCAL_KUBECONFIG))
    }

    /// The providers directory.
    pub fn providers_dir(&self) -> PathBuf {
        self.providers
            .as_ref()
            .and_then(|p| p.directory.clone())
            .unwrap_or_else(|| PathBuf::from(crate::components::DEFAULT_DIR))
    }

    /// Checks that the token and CA files exist, are readable and look right.
    pub fn check_credentials(&self, root: &Path) -> Result<(), ConfigError> {
        let token = rooted(root, &self.management.token_file);
        let text = std::fs::read_to_string(&token).map_err(|e| ConfigError {
            file: token.clone(),
            problem: format!("cannot read the management token: {e}"),
        })?;
        if text.trim().is_empty() || text.trim().contains(char::is_whitespace) {
            return Err(ConfigError {
                file: token,
                problem: "must hold one service-account token".into(),
            });
        }
        let ca = rooted(root, &self.management.ca_file);
        let text = std::fs::read_to_string(&ca).map_err(|e| ConfigError {
            file: ca.clone(),
            problem: format!("cannot read the management CA: {e}"),
        })?;
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            return Err(ConfigError {
                file: ca,
                problem: "must hold PEM certificates".into(),
            });
        }
        Ok(())
    }
}

/// `path` under `root` (`/` leaves it as is).
pub fn rooted(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix("/") {
        Ok(rel) => root.join(rel),
        Err(_) => root.join(path),
    }
}
