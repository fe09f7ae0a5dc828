//! `/etc/fledge/agent.yaml`: which cluster the agent runs, where the management plane is, and
//! where its token and CA are. It names secret files; it holds no secret itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clusterctl::fetch::{Fetch, check_provider_name, check_provider_version};

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
    /// This agent's name in the leader election among the control-plane nodes' agents
    /// (default: the node's host name, which is unique among a cluster's nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
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
        let cfg: AgentConfig = serde_norway::from_str(&text).map_err(|e| err(e.to_string()))?;
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
            check_provider_name(&f.name).map_err(|r| err(format!("{at}.name: {r}")))?;
            check_provider_version(&f.version).map_err(|r| err(format!("{at}.version: {r}")))?;
            if !(f.url.starts_with("https://") || f.url.starts_with("http://"))
                || !f.url.ends_with('/')
            {
                return Err(err(format!(
                    "{at}.url: must be an http(s) URL of a directory, ending in / (got {:?})",
                    f.url
                )));
            }
            for (file, h) in &f.sha256 {
                if !crate::clusterctl::fetch::FILES.contains(&file.as_str()) {
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

    /// Time between full resyncs of the spec (`resyncSeconds`, default 300, at least 1 s).
    pub fn resync(&self) -> Duration {
        Duration::from_secs(self.resync_seconds.unwrap_or(300).max(1))
    }

    /// Upper bound of the retry and reconnect backoff (`backoffCapSeconds`, default 60, at
    /// least 1 s).
    pub fn backoff_cap(&self) -> Duration {
        Duration::from_secs(self.backoff_cap_seconds.unwrap_or(60).max(1))
    }

    /// The agent's retry and reconnect backoff: from 0.5 s, doubling up to [`Self::backoff_cap`],
    /// with jitter, without end.
    pub fn backoff(&self) -> backon::ExponentialBackoff {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(self.backoff_cap())
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// How long in-flight work may take after SIGTERM (`shutdownGraceSeconds`, default 20).
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds.unwrap_or(20))
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
            .unwrap_or_else(|| PathBuf::from(crate::clusterctl::components::DEFAULT_DIR))
    }

    /// Rewrites the management token file without whitespace around the token (atomically,
    /// 0600); returns whether it did. A missing file is left to [`Self::check_credentials`].
    ///
    /// The Kubernetes client sends the file's bytes as they are (and rereads it every minute):
    /// a newline would make every request fail before it leaves, which looks like an unreachable
    /// management plane. But cloud-init ends every file given as a YAML block with a newline,
    /// which is how Cluster API's kubeadm bootstrap delivers the token (`contentFrom`), so a
    /// real CP-A always has one. `fledge-agent install` (root, before it starts the service)
    /// and the service itself rewrite it, as client-go trims it on every read.
    pub fn normalize_token(&self, root: &Path) -> Result<bool, ConfigError> {
        let token = rooted(root, &self.management.token_file);
        let text = match std::fs::read_to_string(&token) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(ConfigError {
                    file: token,
                    problem: format!("cannot read the management token: {e}"),
                });
            }
        };
        let word = text.trim();
        if word == text || word.is_empty() {
            return Ok(false);
        }
        crate::state::fsutil::write_atomic(&token, word.as_bytes(), 0o600).map_err(|e| ConfigError {
            file: token.clone(),
            problem: format!(
                "the management token has whitespace around it, which the Kubernetes client would \
                 send as part of the token, and it cannot be rewritten without ({e}); \
                 `fledge-agent install` (as root) rewrites it"
            ),
        })?;
        Ok(true)
    }

    /// Checks that the token and CA files exist, are readable and look right.
    pub fn check_credentials(&self, root: &Path) -> Result<(), ConfigError> {
        self.normalize_token(root)?;
        let token = rooted(root, &self.management.token_file);
        let text = std::fs::read_to_string(&token).map_err(|e| ConfigError {
            file: token.clone(),
            problem: format!("cannot read the management token: {e}"),
        })?;
        let word = text.trim();
        if word.is_empty() || word.contains(char::is_whitespace) {
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

/// A valid configuration for unit tests, as [`AgentConfig::load`] reads it: cluster `c` in
/// `fleet`, its state in `state_dir`.
#[cfg(test)]
pub(crate) fn for_test(state_dir: &Path) -> AgentConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    let text = format!(
        "apiVersion: fledge.dev/v1alpha1\nkind: AgentConfig\ncluster: {{name: c, namespace: fleet}}\n\
         management: {{server: 'https://127.0.0.1:1', tokenFile: /t, caFile: /ca}}\n\
         stateDir: {}\nmetricsAddress: '127.0.0.1:9440'\n",
        state_dir.display()
    );
    std::fs::write(&path, text).unwrap();
    AgentConfig::load(&path).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a valid configuration with `providers` appended and loads it.
    fn load_with(providers: &str) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        let text = format!(
            "apiVersion: fledge.dev/v1alpha1\nkind: AgentConfig\ncluster: {{name: c, namespace: fleet}}\n\
             management: {{server: 'https://10.0.0.1:6443', tokenFile: /etc/fledge/token, caFile: /etc/fledge/ca.crt}}\n\
             stateDir: /var/lib/fledge\nmetricsAddress: '127.0.0.1:9440'\n{providers}"
        );
        std::fs::write(&path, text).unwrap();
        AgentConfig::load(&path)
    }

    fn fetch_entries(entries: &[(&str, &str)]) -> String {
        let pin = "0".repeat(64);
        let mut out = "providers:\n  fetch:\n".to_string();
        for (name, version) in entries {
            out += &format!(
                "    - {{name: '{name}', version: '{version}', url: 'https://example.com/r/', sha256: {{components.yaml: '{pin}'}}}}\n"
            );
        }
        out
    }

    #[test]
    fn fetch_names_and_versions_that_are_not_plain_path_segments_are_refused_naming_the_field() {
        let good = [
            ("infrastructure-vsphere", "v1.16.1"),
            ("cert-manager", "v1.18.2"),
            ("cluster-api", "v1.13.0-rc.1"),
            ("bootstrap-kubeadm", "v1.13.5+build.7"),
        ];
        load_with(&fetch_entries(&good)).unwrap();
        for (name, version, field) in [
            (
                "infrastructure-docker",
                "../../etc",
                "providers.fetch[1].version",
            ),
            (
                "infrastructure-docker",
                "v1.2.3/../../x",
                "providers.fetch[1].version",
            ),
            (
                "infrastructure-docker",
                "v1.2.3/",
                "providers.fetch[1].version",
            ),
            (
                "infrastructure-docker",
                "1.2.3",
                "providers.fetch[1].version",
            ),
            (
                "infrastructure-docker",
                "v1..2",
                "providers.fetch[1].version",
            ),
            ("infrastructure-docker", "", "providers.fetch[1].version"),
            (
                "infrastructure-../../x",
                "v1.2.3",
                "providers.fetch[1].name",
            ),
            ("infrastructure-Docker", "v1.2.3", "providers.fetch[1].name"),
            ("infrastructure-a/b", "v1.2.3", "providers.fetch[1].name"),
            ("infrastructure-", "v1.2.3", "providers.fetch[1].name"),
        ] {
            let cfg = fetch_entries(&[good[0], (name, version)]);
            let e = load_with(&cfg).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{field}: must be")),
                "{name} {version}: {e}"
            );
            assert!(
                e.contains(&format!(
                    "{:?}",
                    if field.ends_with("name") {
                        name
                    } else {
                        version
                    }
                )),
                "{e}"
            );
        }
    }

    fn with_token(token: &str) -> (tempfile::TempDir, Result<(), ConfigError>) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/fledge")).unwrap();
        std::fs::write(root.path().join("etc/fledge/token"), token).unwrap();
        std::fs::write(
            root.path().join("etc/fledge/ca.crt"),
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let cfg = load_with("").unwrap();
        let got = cfg.check_credentials(root.path());
        (root, got)
    }

    /// Cloud-init ends every file given as a YAML block with a newline; Cluster API's kubeadm
    /// bootstrap delivers the token so (`contentFrom`). The first real CP-A's agent refused it
    /// and restarted forever.
    #[test]
    fn a_token_file_with_whitespace_around_it_is_rewritten_without() {
        use std::os::unix::fs::PermissionsExt;
        for token in [
            "eyJhbGciOi.payload.sig",
            "eyJhbGciOi.payload.sig\n",
            "eyJhbGciOi.payload.sig\r\n",
            " eyJhbGciOi.payload.sig",
        ] {
            let (root, got) = with_token(token);
            got.unwrap();
            let file = root.path().join("etc/fledge/token");
            assert_eq!(
                std::fs::read_to_string(&file).unwrap(),
                "eyJhbGciOi.payload.sig"
            );
            if token.len() != "eyJhbGciOi.payload.sig".len() {
                let mode = std::fs::metadata(&file).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{token:?}");
            }
        }
        for bad in ["", "\n", "two words"] {
            let (_root, got) = with_token(bad);
            assert!(
                got.unwrap_err()
                    .to_string()
                    .contains("one service-account token")
            );
        }
    }
}
