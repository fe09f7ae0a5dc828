//! `fledge-agent install` / `uninstall`: the same steps whether cloud-init calls it on first boot
//! (live system, systemd running) or an image build bakes the agent into a root directory.
//!
//! [`plan`] compares the wanted files with what is on disk and returns the actions; [`apply`]
//! carries them out. An empty plan means "up to date".
//!
//! Every path under `--root` is resolved inside the root the way the image's own system will see
//! it, as after `chroot(root)` ([`crate::state::fsutil::resolve_in_root`]): an image's symbolic link
//! `/usr/local/bin -> /tmp/x` or `/etc/systemd/system -> /etc/systemd/system` is followed to
//! `<root>/tmp/x` or `<root>/etc/systemd/system`, never to the build host's files. Refusing such
//! links would reject ordinary images (merged `/usr`, `/etc/systemd/system` links); resolving
//! them as a chroot does writes where the booted image reads.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use serde::Deserialize;

use crate::config::{AgentConfig, ConfigError};

/// The unit file installed.
pub const UNIT: &str = include_str!("../../templates/agent/fledge-agent.service");
/// Unit name.
pub const UNIT_NAME: &str = "fledge-agent.service";
/// Installed binary.
pub const BIN_PATH: &str = "/usr/local/bin/fledge-agent";
/// Installed unit.
pub const UNIT_PATH: &str = "/etc/systemd/system/fledge-agent.service";
/// Enablement link.
pub const WANTS_LINK: &str = "/etc/systemd/system/multi-user.target.wants/fledge-agent.service";

/// Errors installing.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file operation failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A path cannot be resolved inside the root (a symbolic link loop, an unreadable
    /// directory).
    #[error("cannot resolve {path} inside {root}")]
    Resolve {
        /// The path, as the image sees it.
        path: PathBuf,
        /// The root.
        root: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--purge` cannot tell which secret files the configuration names; nothing was removed.
    #[error(
        "{config}: cannot tell which management token and CA files to purge ({problem}); nothing was removed (fix the file, or remove the files it names and then the file by hand)"
    )]
    PurgeSecrets {
        /// The configuration.
        config: PathBuf,
        /// Why.
        problem: String,
    },
    /// The copied binary does not match the running one.
    #[error("{0}: the installed binary's sha256 does not match the running executable")]
    Verify(PathBuf),
    /// systemctl failed.
    #[error("systemctl {args} failed ({status}): {stderr}")]
    Systemctl {
        /// Arguments.
        args: String,
        /// Exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io { op, path, source }
}

/// One install step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Copy the running binary (a new install, or an upgrade).
    WriteBinary {
        /// True when a different binary is replaced.
        upgrade: bool,
    },
    /// Write the unit file.
    WriteUnit,
    /// Copy the configuration into place (0600).
    WriteConfig {
        /// Source file.
        from: PathBuf,
    },
    /// Create the multi-user.target.wants link (image baking).
    Link,
    /// `systemctl daemon-reload` + `enable` (live system).
    Enable,
    /// Start the service (live system, new install), without waiting for it.
    Start,
    /// Restart the service (live system, upgrade), without waiting for it.
    Restart,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::WriteBinary { upgrade: true } => write!(f, "upgrade {BIN_PATH}"),
            Action::WriteBinary { upgrade: false } => write!(f, "install {BIN_PATH}"),
            Action::WriteUnit => write!(f, "write {UNIT_PATH}"),
            Action::WriteConfig { from } => write!(
                f,
                "install {} from {}",
                crate::config::DEFAULT_PATH,
                from.display()
            ),
            Action::Link => write!(f, "enable {UNIT_NAME} (link in multi-user.target.wants)"),
            Action::Enable => write!(f, "systemctl daemon-reload and enable {UNIT_NAME}"),
            Action::Start => write!(f, "start {UNIT_NAME}"),
            Action::Restart => write!(f, "restart {UNIT_NAME}"),
        }
    }
}

/// What to install and where.
#[derive(Debug, Clone)]
pub struct Target {
    /// Filesystem root (`/` on a live system).
    pub root: PathBuf,
    /// The agent binary to install.
    pub binary: PathBuf,
    /// Configuration to install (`None`: it must already be at /etc/fledge/agent.yaml).
    pub config: Option<PathBuf>,
    /// Do not start or restart the service.
    pub no_start: bool,
    /// Call systemctl (a live root with systemd running).
    pub live: bool,
}

impl Target {
    /// A target for `root`: live when it is `/` and systemd is running.
    pub fn new(root: &Path, binary: PathBuf, config: Option<PathBuf>, no_start: bool) -> Target {
        let live = root == Path::new("/") && Path::new("/run/systemd/system").is_dir();
        Target {
            root: root.to_path_buf(),
            binary,
            config,
            no_start,
            live,
        }
    }
    /// `p` inside the root, symbolic links resolved inside it.
    fn path(&self, p: &str) -> Result<PathBuf, InstallError> {
        in_root(&self.root, Path::new(p), true)
    }

    /// True when installing without a configuration (none given, none in place) where that is
    /// allowed: into an image root, or with --no-start.
    pub fn config_pending(&self) -> bool {
        self.config.is_none()
            && (!self.live || self.no_start)
            && !self
                .path(crate::config::DEFAULT_PATH)
                .is_ok_and(|p| p.exists())
    }
}

/// `path` inside `root`, symbolic links resolved inside it (the last one only when
/// `follow_last`).
fn in_root(root: &Path, path: &Path, follow_last: bool) -> Result<PathBuf, InstallError> {
    crate::state::fsutil::resolve_in_root(root, path, follow_last).map_err(|source| {
        InstallError::Resolve {
            path: path.to_path_buf(),
            root: root.to_path_buf(),
            source,
        }
    })
}

fn sha256_file(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

/// Computes the install plan.
pub fn plan(t: &Target) -> Result<Vec<Action>, InstallError> {
    let mut actions = Vec::new();
    // The configuration must be valid before anything changes.
    let config_dest = t.path(crate::config::DEFAULT_PATH)?;
    let config_src = t.config.clone().unwrap_or_else(|| config_dest.clone());
    // Baking an image (or enabling without starting) needs no configuration: the unit's
    // ConditionPathExists keeps it inactive until cloud-init delivers one.
    if !t.config_pending() {
        AgentConfig::load(&config_src)?;
        if config_src != config_dest
            && std::fs::read(&config_src).ok() != std::fs::read(&config_dest).ok()
        {
            actions.push(Action::WriteConfig { from: config_src });
        }
    }
    let want = sha256_file(&t.binary).ok_or_else(|| InstallError::Io {
        op: "read",
        path: t.binary.clone(),
        source: std::io::Error::other("the running executable is not readable"),
    })?;
    let bin = t.path(BIN_PATH)?;
    let upgrade = match sha256_file(&bin) {
        Some(have) if have == want => None,
        Some(_) => Some(true),
        None => Some(false),
    };
    if let Some(upgrade) = upgrade {
        actions.push(Action::WriteBinary { upgrade });
    }
    let unit_changed = std::fs::read_to_string(t.path(UNIT_PATH)?).ok().as_deref() != Some(UNIT);
    if unit_changed {
        actions.push(Action::WriteUnit);
    }
    if t.live {
        let enabled = Command::new("systemctl")
            .args(["is-enabled", "--quiet", UNIT_NAME])
            .status()
            .is_ok_and(|s| s.success());
        if unit_changed || !enabled {
            actions.push(Action::Enable);
        }
        if !t.no_start {
            let active = Command::new("systemctl")
                .args(["is-active", "--quiet", UNIT_NAME])
                .status()
                .is_ok_and(|s| s.success());
            if !active {
                actions.push(Action::Start);
            } else if upgrade == Some(true) || unit_changed {
                actions.push(Action::Restart);
            }
        }
    } else if std::fs::read_link(in_root(&t.root, Path::new(WANTS_LINK), false)?).ok()
        != Some(PathBuf::from(UNIT_PATH))
    {
        actions.push(Action::Link);
    }
    Ok(actions)
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    crate::state::fsutil::write_atomic(path, bytes, mode).map_err(io("write", path))
}

fn systemctl(args: &[&str]) -> Result<(), InstallError> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(io("run", Path::new("systemctl")))?;
    if !out.status.success() {
        return Err(InstallError::Systemctl {
            args: args.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Before the service starts: the installed configuration's management token without
/// whitespace around it (see [`crate::config::AgentConfig::normalize_token`]; the service's
/// sandbox cannot write /etc).
fn normalize_token(t: &Target) -> Result<(), InstallError> {
    let path = t.path(crate::config::DEFAULT_PATH)?;
    // A configuration that does not load is the service's to report, with its file and field.
    if let Ok(cfg) = crate::config::AgentConfig::load(&path) {
        cfg.normalize_token(&t.root)?;
    }
    Ok(())
}

/// Carries out a plan.
pub fn apply(t: &Target, actions: &[Action]) -> Result<(), InstallError> {
    for a in actions {
        match a {
            Action::WriteConfig { from } => {
                let bytes = std::fs::read(from).map_err(io("read", from))?;
                write_atomic(&t.path(crate::config::DEFAULT_PATH)?, &bytes, 0o600)?;
            }
            Action::WriteBinary { .. } => {
                let bytes = std::fs::read(&t.binary).map_err(io("read", &t.binary))?;
                let dest = t.path(BIN_PATH)?;
                write_atomic(&dest, &bytes, 0o755)?;
                if sha256_file(&dest) != Some(Sha256::digest(&bytes).into()) {
                    return Err(InstallError::Verify(dest));
                }
            }
            Action::WriteUnit => write_atomic(&t.path(UNIT_PATH)?, UNIT.as_bytes(), 0o644)?,
            Action::Link => {
                let link = in_root(&t.root, Path::new(WANTS_LINK), false)?;
                let dir = link.parent().unwrap_or(Path::new("/"));
                std::fs::create_dir_all(dir).map_err(io("create", dir))?;
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(UNIT_PATH, &link).map_err(io("link", &link))?;
            }
            Action::Enable => {
                systemctl(&["daemon-reload"])?;
                systemctl(&["enable", UNIT_NAME])?;
            }
            // --no-block: cloud-init's own unit is part of the boot transaction, so waiting for
            // our start job from inside it could deadlock.
            Action::Start => {
                normalize_token(t)?;
                systemctl(&["start", "--no-block", UNIT_NAME])?
            }
            Action::Restart => {
                normalize_token(t)?;
                systemctl(&["restart", "--no-block", UNIT_NAME])?
            }
        }
    }
    Ok(())
}

/// The part of the configuration `--purge` needs: the secret files it names. Deliberately not
/// [`AgentConfig::load`]: a configuration that an older or newer agent wrote, or that no longer
/// passes validation, still names its token and CA.
#[derive(Deserialize)]
struct Secrets {
    management: SecretFiles,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretFiles {
    token_file: PathBuf,
    ca_file: PathBuf,
}

/// The management token and CA files that the installed configuration names (none when there is
/// no configuration).
fn secret_files(root: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let config = in_root(root, Path::new(crate::config::DEFAULT_PATH), true)?;
    let problem = |problem: String| InstallError::PurgeSecrets {
        config: config.clone(),
        problem,
    };
    let text = match std::fs::read_to_string(&config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(problem(format!("cannot read it: {e}"))),
    };
    let s: Secrets = serde_norway::from_str(&text).map_err(|e| problem(e.to_string()))?;
    Ok(vec![s.management.token_file, s.management.ca_file])
}

/// Reverses an install: stops and disables the service, removes the link, unit and binary.
/// With `purge` also the configuration, the management token and CA files it names, and
/// `/var/lib/fledge`. Returns what was done, one line per change, naming paths as the image
/// sees them. A name that is a symbolic link is removed, not what it points to.
pub fn uninstall(root: &Path, purge: bool) -> Result<Vec<String>, InstallError> {
    let live = root == Path::new("/") && Path::new("/run/systemd/system").is_dir();
    // Read before anything changes: a purge that cannot tell where the secrets are removes
    // nothing.
    let secrets = if purge { secret_files(root)? } else { vec![] };
    let mut done = Vec::new();
    if live {
        let _ = systemctl(&["disable", "--now", "--no-block", UNIT_NAME]);
        done.push(format!("disabled and stopped {UNIT_NAME}"));
    }
    let mut paths: Vec<PathBuf> = [WANTS_LINK, UNIT_PATH, BIN_PATH]
        .into_iter()
        .map(PathBuf::from)
        .collect();
    if purge {
        paths.extend(secrets);
        paths.push(PathBuf::from(crate::config::DEFAULT_PATH));
    }
    for p in paths {
        let path = in_root(root, &p, false)?;
        match std::fs::remove_file(&path) {
            Ok(()) => done.push(format!("removed {}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &path)(e)),
        }
    }
    if purge {
        let state = in_root(root, Path::new("/var/lib/fledge"), false)?;
        // remove_dir_all removes a symbolic link itself, never its target's contents.
        match std::fs::remove_dir_all(&state) {
            Ok(()) => done.push("removed /var/lib/fledge".into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &state)(e)),
        }
    }
    if live {
        let _ = systemctl(&["daemon-reload"]);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cluster API's kubeadm bootstrap delivers the token as a YAML block, which cloud-init
    /// writes with a newline after it; the service's sandbox cannot rewrite /etc, so install
    /// does before it starts the service (the first real CP-A's agent restarted forever).
    #[test]
    fn install_removes_the_newline_cloud_init_writes_after_the_token() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc/fledge");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("agent.yaml"),
            "apiVersion: fledge.dev/v1alpha1\nkind: AgentConfig\ncluster: {name: c, namespace: fleet}\n\
             management: {server: 'https://10.0.0.1:6443', tokenFile: /etc/fledge/token, caFile: /etc/fledge/ca.crt}\n\
             stateDir: /var/lib/fledge\nmetricsAddress: '127.0.0.1:9440'\n",
        )
        .unwrap();
        std::fs::write(etc.join("token"), "eyJhbGciOi.payload.sig\n").unwrap();
        let t = Target::new(root.path(), PathBuf::from("/bin/true"), None, false);
        normalize_token(&t).unwrap();
        assert_eq!(
            std::fs::read_to_string(etc.join("token")).unwrap(),
            "eyJhbGciOi.payload.sig"
        );
        // Nothing to do the second time, and no configuration is no error.
        normalize_token(&t).unwrap();
        std::fs::remove_file(etc.join("agent.yaml")).unwrap();
        normalize_token(&t).unwrap();
    }
}
