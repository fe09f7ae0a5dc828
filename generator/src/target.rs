//! The cluster a command talks to: a client built from a kubeconfig with short timeouts, and the
//! API server URL and CA it was built from (for messages, and for the agent's token Secret).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError};

/// A cluster to talk to: a client and the API server URL it talks to.
#[derive(Clone)]
pub struct Target {
    /// The client.
    pub client: kube::Client,
    /// The API server URL, for messages.
    pub server: String,
    /// The CA certificates (DER) the kubeconfig trusts it by, if it names any.
    pub ca_certs: Option<Vec<Vec<u8>>>,
}

/// Why no client could be built from a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum LoadKubeconfigError {
    /// The named file could not be read or used.
    #[error("cannot load kubeconfig {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: KubeconfigError,
    },
    /// No configuration was found where kubectl looks.
    #[error("cannot load kubeconfig {DEFAULT_PLACES}")]
    Infer {
        /// The cause.
        #[source]
        source: InferConfigError,
    },
    /// The configuration does not make a client.
    #[error("cannot load kubeconfig {}", path.as_ref().map_or(DEFAULT_PLACES.into(), |p| p.display().to_string()))]
    Client {
        /// The file, when one was named.
        path: Option<PathBuf>,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// Where kubectl looks for a kubeconfig when none is named.
const DEFAULT_PLACES: &str = "(KUBECONFIG or ~/.kube/config)";

/// Builds a client from a kubeconfig file (or the default locations), with short timeouts.
pub async fn client_from_kubeconfig(path: Option<&Path>) -> Result<Target, LoadKubeconfigError> {
    let config = config_from_kubeconfig(path).await?;
    let server = config.cluster_url.to_string();
    let ca_certs = config.root_cert.clone();
    let client = kube::Client::try_from(config).map_err(|source| LoadKubeconfigError::Client {
        path: path.map(Path::to_path_buf),
        source,
    })?;
    Ok(Target {
        client,
        server,
        ca_certs,
    })
}

/// Loads a kubeconfig file (or the default locations) into a client configuration with short
/// timeouts, for callers that add layers to the client.
pub async fn config_from_kubeconfig(
    path: Option<&Path>,
) -> Result<kube::Config, LoadKubeconfigError> {
    let mut config = match path {
        Some(p) => {
            let read = |source| LoadKubeconfigError::Read {
                path: p.to_path_buf(),
                source,
            };
            let kc = Kubeconfig::read_from(p).map_err(read)?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(read)?
        }
        None => kube::Config::infer()
            .await
            .map_err(|source| LoadKubeconfigError::Infer { source })?,
    };
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(30));
    Ok(config)
}
