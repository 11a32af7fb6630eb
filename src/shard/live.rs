//! The public vocabulary of live shard scaling: [`ShardId`],
//! [`ShardState`], [`ShardStats`] and [`ScalingPolicy`].
//!
//! A shard's life:
//!
//! ```text
//!  add_shard ──▶ Provisioned ──activate_shard──▶ Active ──drain_shard──▶ Draining ──remove_shard──▶ (gone)
//!                     │                                                      ▲ (once it delivered
//!                     └──────────────────────remove_shard────────────────────┘  everything)
//! ```
//!
//! Only active shards are routed to. A provisioned shard has a consumer
//! attached but receives nothing; a draining shard receives nothing new
//! and delivers what it holds.

use std::fmt;
use std::time::Duration;

use crate::stats::Stats;

/// Most shards a sharded channel can have at once, and most it can open
/// with. Ids grow past it over many changes (`shard-1000`, …): ids are
/// never reused.
pub const MAX_SHARDS: usize = 1000;

/// The id of one shard of a sharded channel: its files live in
/// `dir/name/shard-NNN/` (`NNN` is the id, at least three digits). A new
/// channel's shards are `0..n`; live changes give out ids that were never
/// used in the channel's layout, and a channel reopened with its live
/// layout keeps its ids (a reshard at `open` numbers the shards `0..n`
/// again). Ids come from [`add_shard`](crate::ShardedSender::add_shard),
/// [`shard_stats`](crate::ShardedSender::shard_stats) and the sink
/// factory of [`ShardedReceiver::drain`](crate::ShardedReceiver::drain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub(crate) u32);

impl ShardId {
    /// The id as a number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}", self.0)
    }
}

/// Where a shard stands in its life:
///
/// ```text
///  add_shard ──▶ Provisioned ──activate_shard──▶ Active ──drain_shard──▶ Draining ──remove_shard──▶ (gone)
///                     │                                                      ▲ (once it delivered
///                     └──────────────────────remove_shard────────────────────┘  everything)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShardState {
    /// Added, with a consumer attached, but not routed to yet.
    Provisioned,
    /// Routed to.
    Active,
    /// No longer routed to; delivering what it holds, after which it can
    /// be removed.
    Draining,
}

impl ShardState {
    /// The state's name in the layout file.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ShardState::Provisioned => "provisioned",
            ShardState::Active => "active",
            ShardState::Draining => "draining",
        }
    }

    /// The state named `name` in the layout file.
    pub(crate) fn from_name(name: &str) -> Option<ShardState> {
        match name {
            "provisioned" => Some(ShardState::Provisioned),
            "active" => Some(ShardState::Active),
            "draining" => Some(ShardState::Draining),
            _ => None,
        }
    }
}

/// One shard's state and counters, from
/// [`ShardedSender::shard_stats`](crate::ShardedSender::shard_stats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStats {
    /// The shard.
    pub id: ShardId,
    /// Where it stands.
    pub state: ShardState,
    /// Whether its new items wait for a hand-over: older items of keys it
    /// took over are still in the shards that had them.
    pub handing_over: bool,
    /// Its channel's counters.
    pub stats: Stats,
}

impl ShardStats {
    /// Items waiting in the shard, in memory and on disk.
    pub fn backlog(&self) -> u64 {
        self.stats.in_memory as u64 + self.stats.on_disk
    }

    /// Items the shard handed to its consumer since open.
    pub fn delivered(&self) -> u64 {
        self.stats.received
    }
}

/// Default [`ScalingPolicy::add_above`]: 10,000 items waiting per active
/// shard.
pub const DEFAULT_ADD_ABOVE: u64 = 10_000;

/// Default [`ScalingPolicy::drain_below`]: 100 items waiting per active
/// shard.
pub const DEFAULT_DRAIN_BELOW: u64 = 100;

/// Default [`ScalingPolicy::sustained_for`]: 5 seconds.
pub const DEFAULT_SUSTAINED_FOR: Duration = Duration::from_secs(5);

/// Default [`ScalingPolicy::cooldown`]: 30 seconds.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);

/// Default [`ScalingPolicy::check_every`]: 100 ms.
pub const DEFAULT_CHECK_EVERY: Duration = Duration::from_millis(100);

/// When a sharded channel adds and drains shards by itself; given to
/// [`ShardedBuilder::scaling`](crate::ShardedBuilder::scaling).
///
/// The lag it watches is the backlog per active shard: every active
/// shard's waiting items (memory and disk) over the number of active
/// shards. When it stays above [`add_above`](Self::add_above) for
/// [`sustained_for`](Self::sustained_for), a shard is added and activated;
/// when it stays below [`drain_below`](Self::drain_below) as long, the
/// newest active shard is drained, and removed once it has delivered
/// everything (a shard some of whose records could not be read stays
/// draining, its files kept: see
/// [`ShardError::Unreadable`](crate::ShardError::Unreadable)). Between two
/// changes it waits [`cooldown`](Self::cooldown).
/// The active count stays within `min_shards..=max_shards`; manual calls
/// are held to the same bounds but not to the cooldown.
///
/// ```
/// use std::time::Duration;
/// use sump::ScalingPolicy;
///
/// let policy = ScalingPolicy::new(2, 8)
///     .add_above(50_000)
///     .drain_below(1_000)
///     .sustained_for(Duration::from_secs(10))
///     .cooldown(Duration::from_secs(60));
/// assert_eq!((policy.min_shards(), policy.max_shards()), (2, 8));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalingPolicy {
    /// Fewest active shards.
    pub(crate) min: usize,
    /// Most active shards.
    pub(crate) max: usize,
    /// Backlog per active shard above which a shard is added.
    pub(crate) add_above: u64,
    /// Backlog per active shard below which one is drained.
    pub(crate) drain_below: u64,
    /// How long a condition must hold before the policy acts.
    pub(crate) sustained_for: Duration,
    /// Least time between two changes the policy makes.
    pub(crate) cooldown: Duration,
    /// How often the policy looks.
    pub(crate) check_every: Duration,
}

impl ScalingPolicy {
    /// A policy that keeps between `min_shards` and `max_shards` active
    /// shards, with the default thresholds. `open` refuses bounds outside
    /// `1..=MAX_SHARDS`, a minimum above the maximum, `drain_below` not
    /// below `add_above`, and a zero `check_every`.
    pub fn new(min_shards: usize, max_shards: usize) -> ScalingPolicy {
        ScalingPolicy {
            min: min_shards,
            max: max_shards,
            add_above: DEFAULT_ADD_ABOVE,
            drain_below: DEFAULT_DRAIN_BELOW,
            sustained_for: DEFAULT_SUSTAINED_FOR,
            cooldown: DEFAULT_COOLDOWN,
            check_every: DEFAULT_CHECK_EVERY,
        }
    }

    /// Fewest active shards.
    pub fn min_shards(&self) -> usize {
        self.min
    }

    /// Most active shards.
    pub fn max_shards(&self) -> usize {
        self.max
    }

    /// Adds a shard when more items than this wait per active shard.
    pub fn add_above(mut self, items: u64) -> ScalingPolicy {
        self.add_above = items;
        self
    }

    /// Drains a shard when fewer items than this wait per active shard.
    pub fn drain_below(mut self, items: u64) -> ScalingPolicy {
        self.drain_below = items;
        self
    }

    /// How long the backlog must stay past a threshold before the policy
    /// acts.
    pub fn sustained_for(mut self, duration: Duration) -> ScalingPolicy {
        self.sustained_for = duration;
        self
    }

    /// Least time between two changes the policy makes.
    pub fn cooldown(mut self, duration: Duration) -> ScalingPolicy {
        self.cooldown = duration;
        self
    }

    /// How often the policy looks at the backlog (and removes drained
    /// shards).
    pub fn check_every(mut self, interval: Duration) -> ScalingPolicy {
        self.check_every = interval;
        self
    }

    /// Why the policy cannot be used, if it cannot.
    pub(crate) fn problem(&self) -> Option<String> {
        if self.min == 0 || self.max > MAX_SHARDS || self.min > self.max {
            return Some(format!(
                "a scaling policy keeps 1 to {} active shards, with min_shards <= max_shards; not {}..={}",
                MAX_SHARDS, self.min, self.max
            ));
        }
        if self.drain_below >= self.add_above {
            return Some(format!(
                "a scaling policy drains below {} items per shard and adds above {}: the first must be lower",
                self.drain_below, self.add_above
            ));
        }
        if self.check_every.is_zero() {
            return Some("a scaling policy's check_every must not be zero".to_string());
        }
        None
    }
}
