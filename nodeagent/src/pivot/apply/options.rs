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

impl Retry {
    /// The delays between attempts: from `first`, doubling up to `cap`, each with up to as
    /// much again of jitter (so that movers retrying together spread out). Endless: the
    /// callers count the attempts.
    pub fn backoff(&self) -> backon::ExponentialBackoff {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.cap)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
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

    /// The word for the move, capitalized: a plan's title.
    pub fn title(self) -> &'static str {
        match self {
            Direction::Pivot => "Pivot",
            Direction::Unpivot => "Unpivot",
        }
    }

    /// The move done: "Pivoted", "Unpivoted".
    pub fn done(self) -> &'static str {
        match self {
            Direction::Pivot => "Pivoted",
            Direction::Unpivot => "Unpivoted",
        }
    }

    /// What the side the objects leave from is, in messages.
    pub fn source_side(self) -> &'static str {
        match self {
            Direction::Pivot => "source cluster",
            Direction::Unpivot => "local cluster",
        }
    }

    /// Whether the move leaves its marks on the target (the target Cluster's
    /// [`STATE`] annotation, each object's [`SOURCE_UID`]): a pivot does, for a later unpivot
    /// and for `fledge apply` to see; an unpivot removes them once the source is empty, so the
    /// objects read as before the pivot.
    pub(crate) fn leaves_marks(self) -> bool {
        self == Direction::Pivot
    }

    /// Whether the target must run every provider of the source, at the same or a newer
    /// version, before the first write. An unpivot checks it; a pivot's target got its
    /// providers from the agent just before.
    pub(crate) fn checks_providers(self) -> bool {
        self == Direction::Unpivot
    }

    /// Whether the move's state is recorded on the source's FledgeCluster (a pivot's) rather
    /// than the target's (an unpivot's): on the management plane, where `fledge apply` reads it.
    pub(crate) fn marks_source(self) -> bool {
        self == Direction::Pivot
    }

    /// The FledgeCluster's `status.pivot.state` for `mark`.
    pub(crate) fn mark_state(self, mark: Mark) -> &'static str {
        match (self, mark) {
            (Direction::Pivot, Mark::InProgress) => pivot_state::IN_PROGRESS,
            (Direction::Pivot, Mark::Complete) => pivot_state::COMPLETE,
            (Direction::Pivot, Mark::RolledBack) => pivot_state::ROLLED_BACK,
            (Direction::Unpivot, Mark::InProgress) => pivot_state::UNPIVOTING,
            (Direction::Unpivot, Mark::Complete) => pivot_state::UNPIVOTED,
            // Rolled back: the cluster still lives where the pivot put it.
            (Direction::Unpivot, Mark::RolledBack) => pivot_state::COMPLETE,
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
