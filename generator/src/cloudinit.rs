//! CP-A's cloud-init seed content: `user-data` (`#cloud-config`), `meta-data` and, for static
//! addressing, `network-config` (v2). The user-data does what CABPK would produce from the
//! KubeadmControlPlane, so a VM can come up without a management cluster.

use std::io::Write;

use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::management::paths;
use crate::render::context::{self, Context, SeedFile, SeedValues};
use crate::render::{RenderError, Templates, yaml};
use crate::spec::{CheckedCluster, ProviderKind};

/// Where the bootstrap script is written on the node.
pub const BOOTSTRAP_PATH: &str = "/usr/local/lib/fledge/bootstrap.sh";
/// kubeadm's configuration on the node.
pub const KUBEADM_CONFIG: &str = "/run/kubeadm/kubeadm.yaml";
/// The bootstrap script (static: it takes values only as arguments).
pub const BOOTSTRAP_SCRIPT: &str = include_str!("../../templates/cloudinit/bootstrap.sh");
/// Files smaller than this are never compressed.
const COMPRESS_MIN: usize = 256;

/// The management credentials to embed (standalone CP-A; CABPK gets them from a Secret).
#[derive(Clone, Default)]
pub struct Credentials {
    /// Service-account token.
    pub token: Option<String>,
    /// CA bundle (PEM).
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

/// Errors building the seed content.
#[derive(Debug, thiserror::Error)]
pub enum CloudInitError {
    /// A template failed.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// Even with every large file compressed, the user-data is over the limit.
    #[error(
        "user-data is {size} bytes after compressing every large file with gzip+base64; the limit for {target} is {limit} bytes (set --max-user-data to change it)"
    )]
    TooLarge {
        /// Final size.
        size: usize,
        /// The limit.
        limit: usize,
        /// Which platform the limit is for.
        target: String,
    },
}

/// The default user-data limit for a provider: EC2's 16384 bytes for AWS, 64 KiB elsewhere.
pub fn default_limit(provider: ProviderKind) -> usize {
    crate::providers::get(provider).user_data_limit()
}

/// The rendered seed content.
#[derive(Debug, Clone)]
pub struct Seed {
    /// `#cloud-config` user-data.
    pub user_data: String,
    /// meta-data (instance-id derived from the content, local-hostname).
    pub meta_data: String,
    /// network-config v2, when static addressing was requested.
    pub network_config: Option<String>,
    /// Paths of files that had to be compressed to fit the limit.
    pub compressed: Vec<String>,
}

struct FileEntry {
    path: String,
    permissions: &'static str,
    content: String,
}

/// Renders CP-A's seed content.
pub fn render(
    c: &CheckedCluster,
    templates: &Templates,
    creds: &Credentials,
    limit: usize,
) -> Result<Seed, CloudInitError> {
    let mut ctx = Context::new(c, templates)?;
    let hostname = c
        .spec
        .nodes
        .first()
        .map(|n| n.hostname.clone())
        .unwrap_or_else(|| format!("{}-cp-a", c.name));
    let seed = SeedValues {
        hostname: hostname.clone(),
        kubeadm_api: if c.kubernetes_version.minor >= 31 {
            "v1beta4"
        } else {
            "v1beta3"
        },
        bootstrap_path: BOOTSTRAP_PATH,
        files: Vec::new(),
    };
    ctx.seed = Some(seed.clone());
    let kubeadm = templates.render_docs("cloudinit/kubeadm.yaml.j2", &ctx)?;
    let kubeadm_text: String = kubeadm
        .iter()
        .map(yaml::to_string)
        .collect::<Vec<_>>()
        .join("---\n");

    let mut files = vec![
        FileEntry {
            path: KUBEADM_CONFIG.into(),
            permissions: "0600",
            content: kubeadm_text,
        },
        FileEntry {
            path: paths::AGENT_CONFIG.into(),
            permissions: "0600",
            content: ctx.agent.config.clone(),
        },
        FileEntry {
            path: BOOTSTRAP_PATH.into(),
            permissions: "0755",
            content: BOOTSTRAP_SCRIPT.into(),
        },
    ];
    // The endpoint's virtual IP, when the provider needs one: this node runs `kubeadm init`, so
    // kube-vip reads super-admin.conf (see `context::kube_vip`).
    let kubeconfig = if c.kubernetes_version.minor >= 29 {
        paths::SUPER_ADMIN_KUBECONFIG
    } else {
        paths::ADMIN_KUBECONFIG
    };
    if let Some(vip) = context::kube_vip(c, templates, &ctx, kubeconfig)? {
        for (path, content) in [
            (vip.manifest_path, vip.manifest),
            (vip.hosts_path, vip.hosts.to_string()),
        ] {
            files.push(FileEntry {
                path: path.into(),
                permissions: "0644",
                content,
            });
        }
    }
    // Inline add-on manifests are not written here: the agent reads them from the
    // FledgeCluster's spec, so a copy would only spend the user-data budget.
    if let Some(token) = &creds.token {
        files.push(FileEntry {
            path: paths::MANAGEMENT_TOKEN.into(),
            permissions: "0600",
            content: token.clone(),
        });
    }
    if let Some(ca) = &creds.ca_pem {
        files.push(FileEntry {
            path: paths::MANAGEMENT_CA.into(),
            permissions: "0600",
            content: ca.clone(),
        });
    }

    // Render; while over the limit, compress the largest uncompressed file.
    let mut compressed: Vec<usize> = Vec::new();
    let user_data = loop {
        ctx.seed = Some(SeedValues {
            files: seed_files(&files, &compressed),
            ..seed.clone()
        });
        let doc = templates.render_one("cloudinit/user-data.yaml.j2", &ctx)?;
        let text = format!("#cloud-config\n{}", yaml::to_string(&doc));
        if text.len() <= limit {
            break text;
        }
        let next = files
            .iter()
            .enumerate()
            .filter(|(i, f)| !compressed.contains(i) && f.content.len() >= COMPRESS_MIN)
            .max_by_key(|(i, f)| (f.content.len(), usize::MAX - i))
            .map(|(i, _)| i);
        match next {
            Some(i) => compressed.push(i),
            None => {
                return Err(CloudInitError::TooLarge {
                    size: text.len(),
                    limit,
                    target: c.provider().as_str().to_string(),
                });
            }
        }
    };

    let network_config = c.spec.nodes.first().map(|n| {
        let mut eth = serde_json::Map::new();
        eth.insert(
            "match".into(),
            match &n.mac_address {
                Some(mac) => json!({"macaddress": mac.to_lowercase()}),
                None => json!({"name": "e*"}),
            },
        );
        eth.insert("addresses".into(), json!(n.addresses));
        if let Some(gw) = &n.gateway {
            eth.insert("routes".into(), json!([{"to": "default", "via": gw}]));
        }
        if !n.dns.is_empty() {
            eth.insert("nameservers".into(), json!({"addresses": n.dns}));
        }
        yaml::to_string(&json!({"version": 2, "ethernets": {"primary": eth}}))
    });

    let mut hasher = Sha256::new();
    hasher.update(user_data.as_bytes());
    hasher.update([0]);
    hasher.update(network_config.as_deref().unwrap_or("").as_bytes());
    hasher.update([0]);
    hasher.update(hostname.as_bytes());
    let digest = hasher.finalize();
    let id: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let meta_data = yaml::to_string(
        &json!({"instance-id": format!("fledge-{id}"), "local-hostname": hostname}),
    );

    Ok(Seed {
        user_data,
        meta_data,
        network_config,
        compressed: compressed.iter().map(|&i| files[i].path.clone()).collect(),
    })
}

/// `files` as the user-data template reads them, those at the indices in `compressed` encoded.
fn seed_files(files: &[FileEntry], compressed: &[usize]) -> Vec<SeedFile> {
    files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let gzip = compressed.contains(&i);
            SeedFile {
                path: f.path.clone(),
                permissions: f.permissions,
                encoding: gzip.then_some("gzip+base64"),
                content: if gzip {
                    gzip_base64(&f.content)
                } else {
                    f.content.clone()
                },
            }
        })
        .collect()
}

fn gzip_base64(text: &str) -> String {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    let _ = enc.write_all(text.as_bytes());
    let bytes = enc.finish().unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
