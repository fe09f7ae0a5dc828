//! The agent's state: what it keeps in its state directory (`stateDir`, `/var/lib/fledge`) and
//! the copy of it the cluster holds.
//! - [`cache`]: the accepted spec (`spec.yaml`);
//! - [`journal`]: each phase with its outcome (`journal.json`, and its lock);
//! - [`runlock`]: who may act on the cluster right now (`run.lock`);
//! - [`deletion`]: the order to delete the cluster, and how far it went (`deletion-requested`);
//! - [`clusterstate`]: the state directory's copy in the local cluster, for a new leader;
//! - [`layout`]: the names of the files and directories in the state directory;
//! - [`fsutil`]: durable (atomic) file writes, lock files, paths inside an image root.

pub mod cache;
pub mod clusterstate;
pub mod deletion;
pub mod fsutil;
pub mod journal;
pub mod layout;
pub mod runlock;
