//! fledge-agent: runs on the first control-plane node, installs itself as a systemd service,
//! takes the cluster's Cluster API objects over and keeps the cluster running from a local copy
//! of its spec. This crate is a skeleton; later issues fill it in.

/// The agent's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
