//! How to move: which way, how many requests at once, the retry policy, the lock's hold.

use super::*;

/// Retry policy for transient errors (connection failures, 429, 5xx, optimistic-lock conflicts).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// First delay.
    pub first: Duration,
    /// Longest delay.
    pub cap: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 6,
            first: Duration::from_millis(200),
            cap: Duration::from_secs(5),
        }
    }
}

/// Which way the objects go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    /// Management plane -> local cluster.
    #[default]
    Pivot,
    /// Local cluster -> a management plane (deletion, re-homing).
    Unpivot,
}

impl Direction {
    /// The word for the move, in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Direction::Pivot => "pivot",
            Direction::Unpivot => "unpivot",
        }
    }
}

/// How to pivot.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Which way.
    pub direction: Direction,
    /// Delete the target Cluster just before it is unpaused (an unpivot for deletion: the
    /// target's Cluster API then deletes the cluster, and never reconciles it as live first).
    pub delete_target_cluster: bool,
    /// Requests in flight at once within a group.
    pub parallelism: usize,
    /// Copy status through the status subresource.
    pub copy_status: bool,
    /// Retry policy.
    pub retry: Retry,
    /// How long to wait, once the source is paused, for providers to clear clusterctl's
    /// `block-move` annotation from the cluster's objects.
    pub block_move_timeout: Duration,
    /// How long the move lock holds without renewal (it is renewed every third of it): how
    /// long a crashed run blocks another holder.
    pub lock_hold: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            direction: Direction::Pivot,
            delete_target_cluster: false,
            parallelism: DEFAULT_PARALLELISM,
            copy_status: true,
            retry: Retry::default(),
            block_move_timeout: Duration::from_secs(300),
            lock_hold: DEFAULT_LOCK_HOLD,
        }
    }
}

/// Default `--parallelism`.
pub const DEFAULT_PARALLELISM: usize = 8;
