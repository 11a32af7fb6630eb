//! Sharded channels: N inner channels under `dir/name/shard-NNN/`, and a
//! router that sends each item to one of them (or all of them).
//!
//! # Dispatch
//!
//! - [`Dispatch::Key`], the default, which needs the key function: the item's key, from the function
//!   given to [`ShardedBuilder::key`], is hashed with XXH3 and the hash
//!   picks the shard. Items with equal keys go to the same shard, so they
//!   keep their order however many drainers deliver in parallel.
//! - [`Dispatch::RoundRobin`]: shard after shard, to spread load when
//!   order between items does not matter.
//! - [`Dispatch::Broadcast`]: every item to every shard, to fan one stream
//!   out to several sinks.
//!
//! # Files
//!
//! `dir/name/` holds `sump.lock` (held while the channel is open),
//! `sump.shards` (the shards, their states, the dispatch mode and the
//! hand-overs in progress, see [`layout`]), and one directory per shard,
//! `shard-000`, `shard-001`, … (named by shard id), each an ordinary
//! channel directory. A reshard also uses
//! `dir/name/reshard/` while it runs.
//!
//! # Resharding
//!
//! See [`reshard`]: opening a channel whose layout `open` alone made with
//! a different shard count moves the items into the new layout before
//! the handles are returned.
//!
//! # Live scaling
//!
//! See [`topology`]: every handle shares one live shard set; shards are
//! added (provisioned), activated, drained and removed while the channel
//! runs, each change recorded in the layout file first; the hand-over
//! rule keeps each key's order across a change; [`scaler`] runs the
//! optional policy. A layout changed live is kept across restarts, and
//! opening it with another count scales it live instead of resharding.

mod drain;
pub(crate) mod layout;
mod live;
mod receiver;
mod reshard;
mod scaler;
mod sender;
mod topology;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::builder::Builder;
use crate::dir::ChannelDir;
use crate::err::OpenError;
use crate::options::Settings;
use crate::stats::Stats;

pub use drain::{ShardedDrainHandle, ShardedDrainer};
pub use layout::Dispatch;

pub use live::{
    ScalingPolicy, ShardId, ShardState, ShardStats, DEFAULT_ADD_ABOVE, DEFAULT_CHECK_EVERY, DEFAULT_COOLDOWN,
    DEFAULT_DRAIN_BELOW, DEFAULT_SUSTAINED_FOR, MAX_SHARDS,
};
pub use receiver::ShardedReceiver;
pub use sender::ShardedSender;

/// Maps an item to the hash of its key.
type KeyHash<T> = Arc<dyn Fn(&T) -> u64 + Send + Sync>;

/// How a sharded channel's sender routes items.
pub(crate) enum Route<T> {
    /// By key hash.
    Key(KeyHash<T>),
    /// Round-robin, sharing one counter across sender clones.
    RoundRobin(Arc<AtomicUsize>),
    /// To every shard; the function clones an item.
    Broadcast(fn(&T) -> T),
}

/// Where one item goes.
enum Target {
    /// To this shard.
    One(usize),
    /// To every shard.
    All,
}

impl<T> Route<T> {
    pub(crate) fn dispatch(&self) -> Dispatch {
        match self {
            Route::Key(_) => Dispatch::Key,
            Route::RoundRobin(_) => Dispatch::RoundRobin,
            Route::Broadcast(_) => Dispatch::Broadcast,
        }
    }

    /// Where `item` goes, of `shards` shards.
    fn target(&self, item: &T, shards: usize) -> Target {
        match self {
            Route::Key(hash) => Target::One(topology::rendezvous(hash(item), 0..shards as u32).unwrap_or(0)),
            Route::RoundRobin(next) => Target::One(next.fetch_add(1, Ordering::Relaxed) % shards),
            Route::Broadcast(_) => Target::All,
        }
    }
}

impl<T> Clone for Route<T> {
    fn clone(&self) -> Route<T> {
        match self {
            Route::Key(hash) => Route::Key(Arc::clone(hash)),
            Route::RoundRobin(next) => Route::RoundRobin(Arc::clone(next)),
            Route::Broadcast(clone) => Route::Broadcast(*clone),
        }
    }
}

/// Hashes a key with XXH3 (seed 0), through its [`Hash`] implementation.
fn hash_key<K: Hash>(key: &K) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// Opens a sharded channel; from [`Builder::sharded`].
///
/// Every setting of the [`Builder`] applies to each shard on its own:
/// `memory_capacity(1000)` with 4 shards holds up to 4000 items in memory.
///
/// ```
/// use sump::Builder;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Event { user: u64, action: String }
///
/// let dir = tempfile::tempdir()?;
/// let (tx, rx) = Builder::new("events", dir.path())
///     .memory_capacity(1_000)
///     .sharded(4)
///     .key(|event: &Event| event.user)
///     .open()?;
/// tx.send(Event { user: 7, action: "login".into() })?;
/// tx.send(Event { user: 7, action: "logout".into() })?;
///
/// // Both events of user 7 are in one shard, in order.
/// assert_eq!(rx.shard_stats().iter().filter(|shard| shard.stats.in_memory == 2).count(), 1);
/// assert_eq!(rx.recv()?.action, "login");
/// assert_eq!(rx.recv()?.action, "logout");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a ShardedBuilder does nothing until `open` is called"]
pub struct ShardedBuilder<T> {
    /// The channel's name: its files live in `dir/name/`.
    name: String,
    /// The directory holding the channel's directory.
    dir: PathBuf,
    /// Settings of each shard.
    settings: Settings,
    /// Shard count.
    shards: usize,
    /// How items are routed; `None` until chosen.
    route: Option<Route<T>>,
    /// When shards are added and drained by themselves, if ever.
    scaling: Option<ScalingPolicy>,
}

impl Builder {
    /// Turns this builder into one for a channel of `shards` shards; see
    /// [`ShardedBuilder`]. Every setting made so far applies to each
    /// shard. Choose how items are dispatched, which `open` needs:
    /// [`key`](ShardedBuilder::key) (per-key order),
    /// [`round_robin`](ShardedBuilder::round_robin) or
    /// [`broadcast`](ShardedBuilder::broadcast).
    pub fn sharded<T>(self, shards: usize) -> ShardedBuilder<T> {
        let (name, dir, settings) = self.into_parts();
        ShardedBuilder { name, dir, settings, shards, route: None, scaling: None }
    }
}

impl<T> ShardedBuilder<T> {
    /// Dispatches by key ([`Dispatch::Key`]): `key` takes the key out of an
    /// item, and its XXH3 hash (through [`Hash`]) picks the shard.
    ///
    /// The shard of a key is stable across runs as long as the key's
    /// `Hash` output is: integers, strings, byte slices and tuples of them
    /// hash the same on every run on a given platform. The standard
    /// library does not promise its `Hash` output across Rust releases;
    /// should it change, a persistent channel's keys move to other shards
    /// and per-key order holds again only from the next reshard on.
    pub fn key<K, F>(mut self, key: F) -> ShardedBuilder<T>
    where
        K: Hash,
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        self.route = Some(Route::Key(Arc::new(move |item| hash_key(&key(item)))));
        self
    }

    /// Dispatches round-robin ([`Dispatch::RoundRobin`]).
    pub fn round_robin(mut self) -> ShardedBuilder<T> {
        self.route = Some(Route::RoundRobin(Arc::new(AtomicUsize::new(0))));
        self
    }

    /// Adds and drains shards by the backlog, as `policy` says (see
    /// [`ScalingPolicy`]). The count given to [`Builder::sharded`] must
    /// lie within the policy's bounds; a new channel opens with it, and
    /// later opens of a durable channel keep the count the policy reached
    /// (clamped to the bounds) instead of resharding.
    pub fn scaling(mut self, policy: ScalingPolicy) -> ShardedBuilder<T> {
        self.scaling = Some(policy);
        self
    }

    /// Sends every item to every shard ([`Dispatch::Broadcast`]).
    pub fn broadcast(mut self) -> ShardedBuilder<T>
    where
        T: Clone,
    {
        self.route = Some(Route::Broadcast(T::clone));
        self
    }

    /// Opens the sharded channel: creates `dir/name/` and a directory per
    /// shard, takes the channel's lock, records the layout, and recovers
    /// or discards what each shard left as the durability mode says.
    ///
    /// When the channel was last open with another shard count, the items
    /// on disk are moved into the new layout first (see "Resharding"
    /// below). In [`Durability::Overflow`](crate::Durability::Overflow)
    /// there is nothing to move: old shards are discarded.
    ///
    /// # Resharding
    ///
    /// The shard count and dispatch mode are recorded in
    /// `dir/name/sump.shards`. Opening with another count, or switching to
    /// dispatch by key, moves every item on disk through a staging channel
    /// (`dir/name/reshard/`) into the shard it belongs to now, keeping
    /// each key's order. The move is recorded step by step: if it is cut
    /// short (a crash, a full disk), `open` returns the error and the next
    /// `open` finishes it; nothing is lost, and items moved when it was
    /// cut short may be delivered twice. Growing a round-robin or
    /// broadcast channel moves nothing (new shards start empty). A
    /// broadcast channel cannot shrink while a shard to be removed holds
    /// items, nor change to or from broadcast while any shard does: each
    /// shard is a different consumer's copy, so moving them would lose or
    /// duplicate deliveries; `open` refuses instead.
    ///
    /// A durable channel whose shards were changed while it ran (see
    /// [`ShardedSender::add_shard`]) is not resharded: it opens with the
    /// shards and states recorded, hand-overs included, and if the count
    /// asked for differs from its active shards, shards are added and
    /// activated, or the newest drained, to reach it, moving nothing. With
    /// a [`scaling`](Self::scaling) policy the recorded count is kept
    /// (within the policy's bounds) whatever the count asked for.
    ///
    /// # Errors
    ///
    /// As [`Builder::open`], and [`OpenError::InvalidConfig`] when
    /// - the shard count is 0 or above [`MAX_SHARDS`];
    /// - no dispatch mode was chosen (dispatch by key needs
    ///   [`key`](Self::key));
    /// - `dir/name/` holds an unsharded channel;
    /// - the scaling policy is invalid (see [`ScalingPolicy::new`]) or its
    ///   bounds exclude the count;
    /// - a channel scaled live is opened with another dispatch mode;
    /// - a broadcast channel would lose items: its count shrinks while a
    ///   shard to be removed still holds items, or the mode changes to or
    ///   from broadcast while any shard holds items;
    /// - it is opened in broadcast mode while a reshard begun in another
    ///   mode is unfinished;
    ///
    /// and [`OpenError::Io`] when a reshard cannot finish (a full disk, an
    /// I/O error, a backlog that cannot be read): the next `open` resumes
    /// it.
    pub fn open(self) -> Result<(ShardedSender<T>, ShardedReceiver<T>), OpenError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let invalid = |reason: String| Err(OpenError::InvalidConfig { reason });
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return invalid(format!("a sharded channel has 1 to {MAX_SHARDS} shards, not {}", self.shards));
        }
        let Some(route) = self.route else {
            return invalid(
                "no dispatch mode: dispatch by key needs a key function (ShardedBuilder::key); or choose \
                 round_robin or broadcast"
                    .to_string(),
            );
        };
        let bounds = match &self.scaling {
            None => (1, MAX_SHARDS),
            Some(policy) => {
                if let Some(reason) = policy.problem() {
                    return invalid(reason);
                }
                if !(policy.min..=policy.max).contains(&self.shards) {
                    return invalid(format!(
                        "the channel opens with {} shards, outside its scaling policy's {}..={}",
                        self.shards, policy.min, policy.max
                    ));
                }
                (policy.min, policy.max)
            }
        };
        self.settings.check()?;
        let root = ChannelDir::open(&self.settings.fs, &self.dir, &self.name)?;
        let (segments, highest) = root.scan()?;
        if !segments.is_empty() || highest.is_some() {
            return invalid(format!(
                "{} holds the segments of an unsharded channel; open it with Builder::open, or use another name",
                root.path().display()
            ));
        }
        let fs = &*self.settings.fs;
        let layout_error = |err| OpenError::io(layout::path(root.path()), err);
        let dispatch = route.dispatch();
        let recorded = layout::read(fs, root.path()).map_err(layout_error)?;
        let durable = self.settings.durability != crate::Durability::Overflow;
        // A layout scaled live is kept and scaled live to the count asked
        // for; so is any layout within a scaling policy's bounds.
        let live = recorded.as_ref().filter(|recorded| {
            durable
                && recorded.phase == layout::Phase::Stable
                && recorded.routing == layout::Routing::Rendezvous
                && (!recorded.is_plain()
                    || (self.scaling.is_some() && (bounds.0..=bounds.1).contains(&recorded.active())))
        });
        let scale_to = match live {
            Some(recorded) if recorded.dispatch != Some(dispatch) => {
                return invalid(format!(
                    "{} was scaled while running with dispatch {:?}; open it with that mode (a channel scaled live \
                     keeps its mode)",
                    root.path().display(),
                    recorded.dispatch
                ));
            }
            Some(recorded) if self.scaling.is_some() => recorded.active().clamp(bounds.0, bounds.1),
            Some(_) => self.shards,
            None => {
                let plan = reshard::Plan { root: root.path(), settings: &self.settings, shards: self.shards };
                reshard::settle::<T>(&plan, &route)?;
                self.shards
            }
        };
        let mut layout = layout::read(fs, root.path())
            .map_err(layout_error)?
            .unwrap_or_else(|| layout::Layout::stable(Some(dispatch), self.shards, 0));
        settle_strays::<T>(root.path(), &self.settings, &mut layout)?;
        let mut shards = Vec::with_capacity(layout.shards.len());
        for entry in &layout.shards {
            shards.push(topology::Topology::<T>::open_shard(root.path(), &self.name, &self.settings, entry.id)?);
        }
        #[cfg(all(feature = "metrics", not(loom)))]
        {
            // The totals, while any shard open now is open.
            let shards: Vec<_> = shards.iter().map(|(_, rx)| rx.weak_shared()).collect();
            let labels =
                vec![::metrics::Label::new("channel", self.name.clone()), ::metrics::Label::new("shard", "all")];
            crate::metrics::register(Box::new(move || {
                let live: Vec<Stats> = shards.iter().filter_map(std::sync::Weak::upgrade).map(|s| s.stats()).collect();
                let open = !live.is_empty();
                if open {
                    crate::metrics::record_stats(&labels, &sum_stats(live.into_iter()));
                }
                open
            }));
        }
        let (topology, receivers) =
            topology::Topology::new(Arc::new(root), self.name, self.settings, route, bounds, &layout, shards);
        let topology = Arc::new(topology);
        let rx = ShardedReceiver::new(Arc::clone(&topology), receivers);
        let tx = ShardedSender::new(Arc::clone(&topology));
        if topology.active_count() != scale_to {
            topology.scale_to(scale_to).map_err(|err| OpenError::io(topology.root.path(), io::Error::other(err)))?;
        }
        if let Some(policy) = self.scaling {
            scaler::start(Arc::downgrade(&topology), policy).map_err(|err| OpenError::io(topology.root.path(), err))?;
        }
        Ok((tx, rx))
    }
}

/// Shard directories the layout does not list (left by a crash while a
/// shard was added or removed): an empty one is deleted; one that holds
/// items is kept as a draining shard, so they are delivered.
fn settle_strays<T>(root: &std::path::Path, settings: &Settings, layout: &mut layout::Layout) -> Result<(), OpenError>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    let fs = &*settings.fs;
    let highest = reshard::highest_shard_dir(fs, root).map_err(|err| OpenError::io(root, err))?;
    let mut changed = false;
    for index in 0..highest {
        let id = live::ShardId(index as u32);
        if layout.shards.iter().any(|entry| entry.id == id) {
            continue;
        }
        match reshard::items_in::<T>(root, index, settings)? {
            None => {}
            Some(0) => reshard::discard::<T>(root, &shard_name(index), settings)?,
            Some(waiting) => {
                tracing::warn!(shard = index, waiting, "a shard missing from the layout holds items; draining it");
                let at = layout.shards.partition_point(|entry| entry.id < id);
                layout.shards.insert(at, layout::ShardEntry { id, state: ShardState::Draining });
                layout.next_id = layout.next_id.max(id.0 + 1);
                layout.count = layout.shards.len();
                changed = true;
            }
        }
    }
    if changed {
        layout::write(fs, root, layout).map_err(|err| OpenError::io(layout::path(root), err))?;
    }
    Ok(())
}

impl<T> fmt::Debug for ShardedBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedBuilder")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("shards", &self.shards)
            .field("dispatch", &self.route.as_ref().map(Route::dispatch))
            .finish_non_exhaustive()
    }
}

/// The directory name of shard `index`.
pub(crate) fn shard_name(index: usize) -> String {
    format!("shard-{index:03}")
}

/// Adds up the counters of several shards.
pub(crate) fn sum_stats(shards: impl Iterator<Item = Stats>) -> Stats {
    shards.fold(Stats::default(), |mut total, shard| {
        total.in_memory += shard.in_memory;
        total.on_disk += shard.on_disk;
        total.disk_bytes += shard.disk_bytes;
        total.segments += shard.segments;
        total.sent += shard.sent;
        total.received += shard.received;
        total.spilled += shard.spilled;
        total.dropped += shard.dropped;
        total.corrupt += shard.corrupt;
        total.lost += shard.lost;
        total.set_aside_files += shard.set_aside_files;
        total.set_aside_bytes += shard.set_aside_bytes;
        total.group_commits += shard.group_commits;
        total
    })
}
