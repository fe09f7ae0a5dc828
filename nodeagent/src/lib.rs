//! fledge-agent: runs on the first control-plane node, installs itself as a systemd service,
//! takes the cluster's Cluster API objects over and keeps the cluster running from a local copy
//! of its spec. Implemented so far: configuration, self-installation, the spec cache and journal,
//! status reporting (`run`), and the pivot (`pivot`).

pub mod cli;
pub mod clients;
pub mod clusterctl;
pub mod config;
pub mod daemon;
pub mod day2;
pub mod install;
pub mod json;
pub mod phases;
pub mod pivot;
pub mod state;
pub mod time;

/// The agent's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
