//! fledge-agent: runs on the first control-plane node, installs itself as a systemd service,
//! takes the cluster's Cluster API objects over and keeps the cluster running from a local copy
//! of its spec.
//!
//! - [`cli`]: the command line, one function per subcommand; [`install`]: installing the agent
//!   as a systemd service (on a node, or baked into an image).
//! - [`daemon`]: the long-running service (`fledge-agent run`): its tasks and their supervision,
//!   the spec sync with the management plane, `/healthz` and `/metrics`, systemd's notifications,
//!   the leader election.
//! - [`phases`]: what the service does to the cluster, phase by phase, under a runner
//!   ([`phases::runner`]) that journals each outcome (`Steady`'s plan of day-2 changes, pure
//!   data, is [`phases::steady::day2`]).
//! - [`pivot`]: the pivot engine, moving one cluster's Cluster API objects from one cluster into
//!   another (and back).
//! - [`clusterctl`]: clusterctl's provider repository (components, fetched versions) and
//!   inventory.
//! - [`state`]: the state directory (spec cache, journal, run lock, deletion request, its file
//!   names) and the copy of it the cluster holds.
//! - [`config`]: the agent configuration (`/etc/fledge/agent.yaml`); [`clients`]: Kubernetes
//!   clients whose requests are counted, the local cluster's, and the management token kept
//!   alive; [`json`], [`time`]: small helpers.
//!
//! Modules use only those below them: `cli` → `install`, `daemon` → `phases` → `pivot` →
//! `clients`, `config` → `clusterctl` (which knows clusterctl's repository, and needs nothing of
//! the agent's but its state directory) → `state` → `json`, `time`.

pub mod cli;
pub mod clients;
pub mod clusterctl;
pub mod config;
pub mod daemon;
pub mod install;
pub mod json;
pub mod phases;
pub mod pivot;
pub mod state;
pub mod time;

/// The agent's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
