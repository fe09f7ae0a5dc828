//! The state directory's layout (`stateDir` in the agent configuration, `/var/lib/fledge` on a
//! node): the name of each file and directory the agent keeps there. The module that owns a file
//! builds its path from the name here.

use std::path::{Path, PathBuf};

/// The journal: each phase with its outcome ([`super::journal::path`]).
pub const JOURNAL: &str = "journal.json";
/// The lock that serializes the journal's read-merge-write ([`super::journal::lock_path`]).
pub const JOURNAL_LOCK: &str = "journal.lock";
/// The accepted spec ([`super::cache::path`]).
pub const SPEC: &str = "spec.yaml";
/// Who may act on the cluster right now ([`super::runlock::path`]).
pub const RUN_LOCK: &str = "run.lock";
/// The order to delete the cluster, its progress and its cancellation
/// ([`super::deletion::request_path`]).
pub const DELETION_REQUEST: &str = "deletion-requested";
/// The lock that serializes changes of [`DELETION_REQUEST`].
pub const DELETION_REQUEST_LOCK: &str = "deletion-requested.lock";
/// The sequence number of the cluster-held copy this node last wrote or took
/// ([`super::clusterstate::sequence_path`]).
pub const CLUSTER_STATE_SEQUENCE: &str = "cluster-state.sequence";
/// The FledgeCluster status the daemon's spec sync last built; read back at start for the
/// conditions' transition times.
pub const STATUS: &str = "status.json";
/// Written by CP-A's bootstrap script when one of its steps fails (the generator's
/// `templates/cloudinit/bootstrap.sh` spells the same name); the spec sync reports it.
pub const BOOTSTRAP_FAILURE: &str = "bootstrap-failure.json";
/// Provider versions fetched by `providers.fetch`, in clusterctl's repository layout.
pub const PROVIDERS: &str = "providers";
/// The add-on layers' directory (their manifests and ClusterProfiles cached, their states).
pub const ADDONS: &str = "addons";
/// In [`ADDONS`]: each layer's state ([`addons_status`]).
pub const ADDONS_STATUS: &str = "status.json";

/// The add-on layers' states, `<stateDir>/addons/status.json` (written by the add-ons phase,
/// held in the cluster by [`super::clusterstate`]).
pub fn addons_status(state_dir: &Path) -> PathBuf {
    state_dir.join(ADDONS).join(ADDONS_STATUS)
}
