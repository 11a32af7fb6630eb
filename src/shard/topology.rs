//! The live shard set of a sharded channel: which shards exist, which are
//! routed to, the hand-overs in progress, and who consumes new shards.
//! Every handle of the channel (its senders, its receiver, its drainers'
//! handle, the scaling policy's thread) shares one [`Topology`].
//!
//! # Routing
//!
//! A send holds its handle's lane (a copy of the routing table behind a
//! lock of its own) from the moment it picks a shard until the shard has
//! numbered the item, so a change, which takes every lane's write lock,
//! sees every item routed before it already numbered in its shard, and
//! every item after it routed by the new table. A send blocked on a full
//! shard gives its lane up every [`SEND_SLICE`] and routes again, so a
//! change never waits on it for longer; a broadcast send and a batch send
//! hold their lane until they are in, so a change waits for them. The
//! consumers' side (`limit`) never takes a lane.
//!
//! Keys are mapped by rendezvous hashing over the active shards' ids: a
//! key goes to the active shard whose id scores highest with the key's
//! hash. Adding a shard moves only the keys the new shard now wins (about
//! one in n+1); draining one moves only its own keys, each to the shard
//! that scores next highest.
//!
//! # The hand-over rule
//!
//! A key that moves from shard A to shard B at a change may still have
//! items waiting in A. Its new items go to B at once (a send never waits
//! for a hand-over), but B delivers nothing numbered at or after the
//! change until A has delivered everything numbered before it. Precisely,
//! a change records, for each shard that takes keys over (the new shard,
//! when one is activated; every other active shard, when one is drained):
//! a [`Handover`] with the shard's next item number `after`, and for each
//! shard that gives keys up, its next item number, the fence; it also
//! inherits what the giving shards still wait for themselves, since a
//! key a giver took over earlier may have its older items further back
//! (a key moved from a drained shard to A, then from A to a new shard:
//! the new shard waits for the drained one too, even if A holds none of
//! that key's items). The shard
//! delivers items numbered below `after` freely, and the rest only once
//! every giving shard's `done_below` (everything numbered below it has
//! been taken and committed) has reached its fence.
//!
//! Why that keeps each key's order: a key's items before the change are
//! all in its old shard, numbered below that shard's fence; its items
//! after the change are all in its new shard, numbered at or after
//! `after`; the new shard delivers none of the latter before the old
//! shard delivered all of the former. Why it cannot deadlock: a shard
//! only ever waits on fences recorded at an earlier or the same change,
//! and at one change a shard either takes keys or gives them up, never
//! both; the items a fence covers were numbered before that change, so
//! the hand-overs they wait on were recorded before it too, and the
//! oldest hand-over always clears.
//!
//! The cost: after an activation the new shard delivers nothing new
//! until the old shards have delivered what they held at the change;
//! after a drain the other shards pause at their first new item until
//! the drained shard has delivered its backlog. Their items wait on disk
//! (memory stays bounded) and nothing waits at the senders. Hand-overs
//! are persisted with the layout; cleared ones are dropped from it at the
//! next change.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{ArcRwLockWriteGuard, Mutex, MutexGuard, RawRwLock, RwLock, RwLockWriteGuard};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::layout::{self, Handover, Layout, Phase, Routing, ShardEntry};
use super::live::{ShardId, ShardState, ShardStats};
use super::{shard_name, Dispatch, Route};
use crate::channel::{Monitor, Receiver, Sender};
use crate::dir::ChannelDir;
use crate::drain::DrainHandle;
use crate::err::{OpenError, ShardError};
use crate::options::Settings;

/// Longest a send blocked on a full shard holds the routing table before
/// it routes again (10 ms).
pub(crate) const SEND_SLICE: Duration = Duration::from_millis(10);

/// Each shard's receiver, by id.
pub(crate) type Receivers<T> = Vec<(ShardId, Receiver<T>)>;

/// One shard in the routing table.
pub(crate) struct Slot<T> {
    /// Its id.
    pub(crate) id: ShardId,
    /// Where it stands.
    pub(crate) state: ShardState,
    /// Its sender; `None` once every `ShardedSender` is gone.
    pub(crate) sender: Option<Sender<T>>,
    /// Its counters and progress, without keeping it connected.
    pub(crate) probe: Monitor<T>,
}

/// The routing table: every shard not removed, by id.
pub(crate) struct Table<T> {
    /// The shards, ascending by id.
    pub(crate) slots: Vec<Slot<T>>,
    /// Where the active shards are in `slots`, ascending; kept by
    /// [`Table::index`] after every change.
    active: Vec<usize>,
}

impl<T> Table<T> {
    /// A copy for the senders' lanes.
    fn snapshot(&self) -> Table<T> {
        let slots = self
            .slots
            .iter()
            .map(|slot| Slot { id: slot.id, state: slot.state, sender: slot.sender.clone(), probe: slot.probe.clone() })
            .collect();
        Table { slots, active: self.active.clone() }
    }

    /// A table of `slots`, ascending by id.
    fn new(slots: Vec<Slot<T>>) -> Table<T> {
        let mut table = Table { slots, active: Vec::new() };
        table.index();
        table
    }

    /// Recomputes `active` after a change of `slots`.
    fn index(&mut self) {
        self.active = (0..self.slots.len()).filter(|&at| self.slots[at].state == ShardState::Active).collect();
    }

    /// Where the shard `id` is in `slots`.
    pub(crate) fn find(&self, id: ShardId) -> Option<usize> {
        self.slots.binary_search_by_key(&id, |slot| slot.id).ok()
    }

    /// The active shards, by id.
    pub(crate) fn active(&self) -> impl Iterator<Item = &Slot<T>> {
        self.slots.iter().filter(|slot| slot.state == ShardState::Active)
    }
}

/// Who consumes the shards, and so who gets the receiver of a shard
/// added.
pub(crate) enum Consumer<T> {
    /// A [`ShardedReceiver`](super::ShardedReceiver) (or a sharded
    /// drainer not spawned yet): new receivers wait in `arrived` for it to
    /// pick up; `departed` lists removed shards whose receivers it still
    /// has to close and whose files it deletes then.
    Receiver {
        /// Receivers of shards added since it last looked.
        arrived: Vec<(ShardId, Receiver<T>)>,
        /// Shards removed since it last looked.
        departed: Vec<ShardId>,
    },
    /// One drainer per shard; `start` starts one for a shard added.
    Drainers {
        /// Starts a drainer on a shard's receiver.
        start: StartDrainer<T>,
        /// The drainers running, by shard.
        running: Vec<(ShardId, DrainHandle<T>)>,
    },
    /// The receivers were handed out or dropped.
    Detached,
}

/// The drainers of a channel, taken out for a shutdown.
pub(crate) struct Drainers<T> {
    /// Starts a drainer on a shard's receiver.
    pub(crate) start: StartDrainer<T>,
    /// The drainers running, by shard.
    pub(crate) running: Vec<(ShardId, DrainHandle<T>)>,
}

/// Starts a drainer on a shard's receiver.
pub(crate) type StartDrainer<T> = Box<dyn FnMut(ShardId, Receiver<T>) -> DrainHandle<T> + Send>;

/// What a change records besides the table and the hand-overs.
#[derive(Debug, Clone, Copy)]
struct Recorded {
    /// Changes of the shard set so far.
    generation: u64,
    /// The id the next shard added gets.
    next_id: u32,
}

/// The live shard set; see the module docs.
pub(crate) struct Topology<T> {
    /// `dir/name`, locked while any handle is alive.
    pub(crate) root: Arc<ChannelDir>,
    /// The channel's name, for metric labels.
    name: String,
    /// Settings of each shard.
    pub(crate) settings: Settings,
    /// How items are routed.
    pub(crate) route: Route<T>,
    /// Fewest and most active shards.
    pub(crate) bounds: (usize, usize),
    /// The routing table, as changes write it. Sends read their lane's
    /// copy instead.
    table: RwLock<Table<T>>,
    /// Every `ShardedSender`'s lane: its copy of the table, read for the
    /// whole of each of its sends. A change takes every lane's write lock
    /// (so it waits for the sends in flight, and none starts meanwhile)
    /// and publishes the new table to each when done. One lane per handle
    /// keeps producers on different threads off one shared lock word.
    lanes: Mutex<Vec<std::sync::Weak<Lane<T>>>>,
    /// Serializes changes; what they record besides the table.
    changes: Mutex<Recorded>,
    /// Hand-overs not known to be finished, oldest first.
    handovers: Mutex<Vec<Handover>>,
    /// `handovers.len()`, a hint read without the lock.
    handing_over: AtomicUsize,
    /// Who consumes the shards.
    consumer: Mutex<Consumer<T>>,
    /// Changes of the shard set since open, for the receiver's cache.
    generation: AtomicU64,
    /// Live `ShardedSender` handles.
    senders: AtomicUsize,
    /// Items sent when no shard was active (none should ever be).
    unrouted: AtomicU64,
}

/// The weight of shard `id` for a key hash, in rendezvous hashing: a
/// SplitMix64 finish of the hash mixed with the id.
fn weight(hash: u64, id: u32) -> u64 {
    let mut z = hash ^ (u64::from(id) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which of `ids` a key hash goes to: the one of highest weight (the
/// first such, should two tie). `None` when `ids` is empty.
pub(crate) fn rendezvous(hash: u64, ids: impl Iterator<Item = u32>) -> Option<usize> {
    ids.enumerate().max_by_key(|&(at, id)| (weight(hash, id), std::cmp::Reverse(at))).map(|(at, _)| at)
}

/// A sender's copy of the routing table; see `Topology::lanes`.
pub(crate) type Lane<T> = RwLock<Arc<Table<T>>>;

/// A change in progress: every lane and the table locked for writing.
/// Dropping it publishes the table to the lanes and unlocks them.
pub(crate) struct Writing<'a, T> {
    /// The lane registry, held so no lane is added meanwhile.
    _registry: MutexGuard<'a, Vec<std::sync::Weak<Lane<T>>>>,
    /// Every live lane, locked.
    lanes: Vec<ArcRwLockWriteGuard<RawRwLock, Arc<Table<T>>>>,
    /// The table.
    table: RwLockWriteGuard<'a, Table<T>>,
}

impl<T> std::ops::Deref for Writing<'_, T> {
    type Target = Table<T>;

    fn deref(&self) -> &Table<T> {
        &self.table
    }
}

impl<T> std::ops::DerefMut for Writing<'_, T> {
    fn deref_mut(&mut self) -> &mut Table<T> {
        &mut self.table
    }
}

impl<T> Drop for Writing<'_, T> {
    fn drop(&mut self) {
        let snapshot = Arc::new(self.table.snapshot());
        for lane in &mut self.lanes {
            **lane = Arc::clone(&snapshot);
        }
    }
}

/// Where one item goes, as the routing table says.
pub(crate) enum Pick<'a, T> {
    /// To this shard.
    One(&'a Sender<T>),
    /// To each of these, cloned with the function.
    All(Vec<&'a Sender<T>>, fn(&T) -> T),
    /// Nowhere: no shard is active, or every sender is gone.
    Nowhere,
}

impl<T> Topology<T> {
    /// A lane for a new `ShardedSender`, with the table as it is now.
    pub(crate) fn new_lane(&self) -> Arc<Lane<T>> {
        let mut lanes = self.lanes.lock();
        lanes.retain(|lane| lane.strong_count() > 0);
        let lane = Arc::new(RwLock::new(Arc::new(self.table.read().snapshot())));
        lanes.push(Arc::downgrade(&lane));
        lane
    }

    /// Starts a change: waits for the sends in flight, holds off new ones.
    fn write(&self) -> Writing<'_, T> {
        let registry = self.lanes.lock();
        let lanes = registry.iter().filter_map(std::sync::Weak::upgrade).map(|lane| lane.write_arc()).collect();
        Writing { _registry: registry, lanes, table: self.table.write() }
    }

    /// Where `item` goes, by `table`.
    pub(crate) fn pick<'a>(&self, table: &'a Table<T>, item: &T) -> Pick<'a, T> {
        let active = &table.active;
        let picked = match &self.route {
            Route::Key(hash) => {
                let hash = hash(item);
                rendezvous(hash, active.iter().map(|&at| table.slots[at].id.0))
                    .and_then(|at| table.slots[active[at]].sender.as_ref())
            }
            Route::RoundRobin(next) => match active.len() {
                0 => None,
                count => table.slots[active[next.fetch_add(1, Ordering::Relaxed) % count]].sender.as_ref(),
            },
            Route::Broadcast(clone) => {
                let all: Vec<&Sender<T>> = active.iter().filter_map(|&at| table.slots[at].sender.as_ref()).collect();
                if !all.is_empty() {
                    return Pick::All(all, *clone);
                }
                None
            }
        };
        match picked {
            Some(sender) => Pick::One(sender),
            None => {
                self.unrouted.fetch_add(1, Ordering::Relaxed);
                Pick::Nowhere
            }
        }
    }

    /// Items sent when no shard was active.
    pub(crate) fn unrouted(&self) -> u64 {
        self.unrouted.load(Ordering::Relaxed)
    }

    /// Changes of the shard set since open.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A new `ShardedSender` handle exists.
    pub(crate) fn add_sender(&self) {
        self.senders.fetch_add(1, Ordering::Relaxed);
    }

    /// A `ShardedSender` handle is gone; the last one disconnects every
    /// shard.
    pub(crate) fn remove_sender(&self) {
        if self.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            for slot in &mut self.write().slots {
                slot.sender = None;
            }
        }
    }

    /// The highest item number `shard` may deliver now, exclusive; `None`
    /// when it may deliver anything (see the hand-over rule). Clears the
    /// hand-overs that are finished.
    pub(crate) fn limit(&self, shard: ShardId) -> Option<u64> {
        if self.handing_over.load(Ordering::Acquire) == 0 {
            return None;
        }
        let table = self.table.read();
        let mut handovers = self.handovers.lock();
        handovers.retain(|handover| !cleared(&table, handover));
        self.handing_over.store(handovers.len(), Ordering::Release);
        handovers.iter().filter(|handover| handover.shard == shard).map(|handover| handover.after).min()
    }

    /// Each shard's state and counters, by id.
    pub(crate) fn shard_stats(&self) -> Vec<ShardStats> {
        let table = self.table.read();
        let handovers = self.handovers.lock();
        table
            .slots
            .iter()
            .map(|slot| ShardStats {
                id: slot.id,
                state: slot.state,
                handing_over: handovers.iter().any(|handover| handover.shard == slot.id && !cleared(&table, handover)),
                stats: slot.probe.stats(),
            })
            .collect()
    }

    /// Active shards now.
    pub(crate) fn active_count(&self) -> usize {
        self.table.read().active().count()
    }

    /// The receiving side is gone: shards added from now on have no
    /// consumer.
    pub(crate) fn detach(&self) {
        *self.consumer.lock() = Consumer::Detached;
    }

    /// Receivers of shards added, and shards removed, since the receiver
    /// last looked.
    pub(crate) fn take_news(&self) -> (Vec<(ShardId, Receiver<T>)>, Vec<ShardId>) {
        match &mut *self.consumer.lock() {
            Consumer::Receiver { arrived, departed } => (std::mem::take(arrived), std::mem::take(departed)),
            _ => (Vec::new(), Vec::new()),
        }
    }

    /// Drainers now consume the shards: `start` starts one on a shard's
    /// receiver; `running` are those already started. Shards added
    /// meanwhile get theirs now; those removed meanwhile lose theirs
    /// (detached, their files deleted at the next open).
    pub(crate) fn attach_drainers(&self, start: StartDrainer<T>, running: Vec<(ShardId, DrainHandle<T>)>) {
        let mut consumer = self.consumer.lock();
        let (arrived, departed) = match std::mem::replace(&mut *consumer, Consumer::Detached) {
            Consumer::Receiver { arrived, departed } => (arrived, departed),
            _ => (Vec::new(), Vec::new()),
        };
        let mut start = start;
        let mut running = running;
        running.retain(|(id, _)| !departed.contains(id));
        for (id, receiver) in arrived {
            running.push((id, start(id, receiver)));
        }
        *consumer = Consumer::Drainers { start, running };
    }

    /// The drainers, for a shutdown: the receiving side then waits for
    /// the receivers to come back, and shards added meanwhile wait for it
    /// ([`Consumer::Receiver`]). `None` when drainers do not consume the
    /// shards.
    pub(crate) fn take_drainers(&self) -> Option<Drainers<T>> {
        let mut consumer = self.consumer.lock();
        match std::mem::replace(&mut *consumer, Consumer::Receiver { arrived: Vec::new(), departed: Vec::new() }) {
            Consumer::Drainers { start, running } => Some(Drainers { start, running }),
            other => {
                *consumer = other;
                None
            }
        }
    }

    /// Each running drainer's stats, by shard.
    pub(crate) fn drain_stats(&self) -> Vec<(ShardId, crate::drain::DrainStats)> {
        match &*self.consumer.lock() {
            Consumer::Drainers { running, .. } => running.iter().map(|(id, handle)| (*id, handle.stats())).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether every running drainer has stopped.
    pub(crate) fn drainers_finished(&self) -> bool {
        match &*self.consumer.lock() {
            Consumer::Drainers { running, .. } => running.iter().all(|(_, handle)| handle.is_finished()),
            _ => true,
        }
    }

    /// The layout to record for `table` and `handovers`.
    fn layout(&self, recorded: &Recorded, table: &Table<T>, handovers: &[Handover]) -> Layout {
        Layout {
            dispatch: Some(self.route.dispatch()),
            phase: Phase::Stable,
            count: table.slots.len(),
            target: 0,
            routing: Routing::Rendezvous,
            generation: recorded.generation,
            next_id: recorded.next_id,
            shards: table.slots.iter().map(|slot| ShardEntry { id: slot.id, state: slot.state }).collect(),
            handovers: handovers.iter().filter(|handover| !cleared(table, handover)).cloned().collect(),
        }
    }

    /// Writes `layout` durably.
    fn record(&self, layout: &Layout) -> Result<(), ShardError> {
        layout::write(&*self.settings.fs, self.root.path(), layout).map_err(ShardError::Io)
    }

    /// Why shard `id` is not in the table: removed (`Ok`, for the
    /// idempotent `remove_shard`) or never added.
    fn missing(&self, recorded: &Recorded, id: ShardId) -> Result<(), ShardError> {
        if id.0 < recorded.next_id {
            Ok(())
        } else {
            Err(ShardError::Unknown(id))
        }
    }

    /// Refuses a change that would leave `active` active shards.
    fn check_bounds(&self, active: usize) -> Result<(), ShardError> {
        let (min, max) = self.bounds;
        if active < min || active > max {
            return Err(ShardError::OutOfBounds { active, min, max });
        }
        Ok(())
    }
}

/// Whether the shard behind `probe` has delivered everything numbered
/// below `fence`: it is past it, or it has delivered everything it was
/// ever given (which also covers numbers that started again lower, after
/// its sequence file was lost).
fn delivered<T>(probe: &Monitor<T>, fence: u64) -> bool {
    let done = probe.done_below();
    done >= fence || done >= probe.next_seq()
}

/// What a shard taking keys from `givers` at a change must wait for:
/// each giver's items numbered before now, and whatever the givers
/// themselves still wait for (a key a giver took over at an earlier
/// change may still have older items in the shard it came from, while
/// the giver holds none of them). Shards that have delivered everything
/// are left out; each shard appears once, with its highest fence.
fn waits_for<T>(table: &Table<T>, handovers: &[Handover], givers: &[ShardId]) -> Vec<(ShardId, u64)> {
    let mut waits: std::collections::BTreeMap<ShardId, u64> = std::collections::BTreeMap::new();
    let mut add = |shard: ShardId, fence: u64| {
        if let Some(at) = table.find(shard) {
            if !delivered(&table.slots[at].probe, fence) {
                let entry = waits.entry(shard).or_insert(fence);
                *entry = (*entry).max(fence);
            }
        }
    };
    for &giver in givers {
        if let Some(at) = table.find(giver) {
            add(giver, table.slots[at].probe.next_seq());
        }
        for handover in handovers.iter().filter(|handover| handover.shard == giver) {
            for &(shard, fence) in &handover.waits {
                add(shard, fence);
            }
        }
    }
    waits.into_iter().collect()
}

/// Whether every shard `handover` waits on has delivered what it held at
/// the change (a shard removed had delivered everything).
fn cleared<T>(table: &Table<T>, handover: &Handover) -> bool {
    handover
        .waits
        .iter()
        .all(|&(shard, fence)| table.find(shard).is_none_or(|at| delivered(&table.slots[at].probe, fence)))
}

impl<T> Topology<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// The topology of a channel whose shards were opened from `layout`:
    /// `shards` holds each shard's sender and receiver, in the layout's
    /// order. The receivers go to the caller, for the `ShardedReceiver`.
    #[allow(clippy::type_complexity)]
    pub(crate) fn new(
        root: Arc<ChannelDir>,
        name: String,
        settings: Settings,
        route: Route<T>,
        bounds: (usize, usize),
        layout: &Layout,
        shards: Vec<(Sender<T>, Receiver<T>)>,
    ) -> (Topology<T>, Vec<(ShardId, Receiver<T>)>) {
        let mut slots = Vec::with_capacity(shards.len());
        let mut receivers = Vec::with_capacity(shards.len());
        for (entry, (sender, receiver)) in layout.shards.iter().zip(shards) {
            slots.push(Slot { id: entry.id, state: entry.state, sender: Some(sender), probe: receiver.monitor() });
            receivers.push((entry.id, receiver));
        }
        let topology = Topology {
            root,
            name,
            settings,
            route,
            bounds,
            table: RwLock::new(Table::new(slots)),
            lanes: Mutex::new(Vec::new()),
            changes: Mutex::new(Recorded { generation: layout.generation, next_id: layout.next_id }),
            handing_over: AtomicUsize::new(layout.handovers.len()),
            handovers: Mutex::new(layout.handovers.clone()),
            consumer: Mutex::new(Consumer::Receiver { arrived: Vec::new(), departed: Vec::new() }),
            generation: AtomicU64::new(0),
            senders: AtomicUsize::new(0),
            unrouted: AtomicU64::new(0),
        };
        (topology, receivers)
    }

    /// Opens the channel of shard `id`.
    pub(crate) fn open_shard(
        root: &std::path::Path,
        name: &str,
        settings: &Settings,
        id: ShardId,
    ) -> Result<(Sender<T>, Receiver<T>), OpenError> {
        let mut settings = settings.clone();
        settings.labels = Some(crate::options::MetricLabels { channel: name.to_string(), shard: Some(id.0 as usize) });
        crate::open::open(root, &shard_name(id.0 as usize), settings)
    }

    /// Adds a provisioned shard: creates its directory, records it, and
    /// attaches the consumer. It receives nothing until activated.
    pub(crate) fn add_shard(&self) -> Result<ShardId, ShardError> {
        let mut recorded = self.changes.lock();
        if self.table.read().slots.len() >= super::MAX_SHARDS {
            let active = self.active_count();
            return Err(ShardError::OutOfBounds { active, min: self.bounds.0, max: super::MAX_SHARDS });
        }
        if matches!(*self.consumer.lock(), Consumer::Detached) {
            return Err(ShardError::NoConsumer);
        }
        let id = ShardId(recorded.next_id);
        let (sender, receiver) = Self::open_shard(self.root.path(), &self.name, &self.settings, id)
            .map_err(|err| ShardError::Io(io::Error::other(err)))?;
        let probe = receiver.monitor();
        let next = Recorded { generation: recorded.generation + 1, next_id: id.0 + 1 };
        let mut table = self.write();
        let senders_alive = self.senders.load(Ordering::Acquire) > 0;
        table.slots.push(Slot { id, state: ShardState::Provisioned, sender: Some(sender), probe });
        table.index();
        let layout = self.layout(&next, &table, &self.handovers.lock());
        if let Err(err) = self.record(&layout) {
            table.slots.pop();
            table.index();
            drop(table);
            drop(receiver);
            self.discard(id);
            // The layout may be on disk even so (a failed directory sync
            // after the rename): the id is not given out again.
            recorded.next_id = id.0 + 1;
            return Err(err);
        }
        if !senders_alive {
            if let Some(slot) = table.slots.last_mut() {
                slot.sender = None;
            }
        }
        drop(table);
        *recorded = next;
        self.attach(id, receiver);
        self.generation.fetch_add(1, Ordering::AcqRel);
        tracing::info!(shard = id.0, "shard added");
        Ok(id)
    }

    /// Hands the receiver of shard `id` to the consumer.
    fn attach(&self, id: ShardId, receiver: Receiver<T>) {
        match &mut *self.consumer.lock() {
            Consumer::Receiver { arrived, .. } => arrived.push((id, receiver)),
            Consumer::Drainers { start, running } => {
                let handle = start(id, receiver);
                running.push((id, handle));
            }
            // Checked before the shard was made; the receiving side left
            // meanwhile. Dropping the receiver keeps its items on disk.
            Consumer::Detached => drop(receiver),
        }
    }

    /// Routes to shard `id` from now on; see the hand-over rule.
    pub(crate) fn activate_shard(&self, id: ShardId) -> Result<(), ShardError> {
        let mut recorded = self.changes.lock();
        let mut table = self.write();
        let Some(at) = table.find(id) else {
            self.missing(&recorded, id)?;
            return Err(ShardError::Unknown(id));
        };
        match table.slots[at].state {
            ShardState::Active => return Ok(()),
            state @ ShardState::Draining => return Err(ShardError::WrongState { shard: id, state }),
            ShardState::Provisioned => {}
        }
        if matches!(*self.consumer.lock(), Consumer::Detached) {
            return Err(ShardError::NoConsumer);
        }
        self.check_bounds(table.active().count() + 1)?;
        let mut handovers = self.handovers.lock();
        let mut next_handovers = handovers.clone();
        if self.route.dispatch() == Dispatch::Key {
            let givers: Vec<ShardId> = table.active().map(|slot| slot.id).collect();
            let waits = waits_for(&table, &handovers, &givers);
            if !waits.is_empty() {
                next_handovers.push(Handover { shard: id, after: table.slots[at].probe.next_seq(), waits });
            }
        }
        self.change_state(&mut recorded, &mut table, &mut handovers, next_handovers, at, ShardState::Active)?;
        tracing::info!(shard = id.0, "shard activated");
        Ok(())
    }

    /// Moves the shard at `at` to `state` with `next_handovers`, recording
    /// the layout first; on failure nothing changes.
    fn change_state(
        &self,
        recorded: &mut Recorded,
        table: &mut Table<T>,
        handovers: &mut Vec<Handover>,
        next_handovers: Vec<Handover>,
        at: usize,
        state: ShardState,
    ) -> Result<(), ShardError> {
        let before = std::mem::replace(&mut table.slots[at].state, state);
        table.index();
        let next = Recorded { generation: recorded.generation + 1, ..*recorded };
        if let Err(err) = self.record(&self.layout(&next, table, &next_handovers)) {
            table.slots[at].state = before;
            table.index();
            return Err(err);
        }
        *handovers = next_handovers;
        self.handing_over.store(handovers.len(), Ordering::Release);
        *recorded = next;
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Stops routing to shard `id`; see the hand-over rule.
    pub(crate) fn drain_shard(&self, id: ShardId) -> Result<(), ShardError> {
        let mut recorded = self.changes.lock();
        let mut table = self.write();
        let Some(at) = table.find(id) else {
            self.missing(&recorded, id)?;
            return Err(ShardError::Unknown(id));
        };
        match table.slots[at].state {
            ShardState::Draining => return Ok(()),
            state @ ShardState::Provisioned => return Err(ShardError::WrongState { shard: id, state }),
            ShardState::Active => {}
        }
        self.check_bounds(table.active().count() - 1)?;
        let mut handovers = self.handovers.lock();
        let mut next_handovers = handovers.clone();
        let waits = waits_for(&table, &handovers, &[id]);
        if self.route.dispatch() == Dispatch::Key && !waits.is_empty() {
            for slot in table.active().filter(|slot| slot.id != id) {
                next_handovers.push(Handover { shard: slot.id, after: slot.probe.next_seq(), waits: waits.clone() });
            }
        }
        self.change_state(&mut recorded, &mut table, &mut handovers, next_handovers, at, ShardState::Draining)?;
        tracing::info!(shard = id.0, "shard draining");
        Ok(())
    }

    /// Removes shard `id`, which must be provisioned or drained.
    pub(crate) fn remove_shard(&self, id: ShardId) -> Result<(), ShardError> {
        let mut recorded = self.changes.lock();
        let mut table = self.write();
        let Some(at) = table.find(id) else {
            return self.missing(&recorded, id);
        };
        let slot = &table.slots[at];
        if slot.state == ShardState::Active {
            return Err(ShardError::WrongState { shard: id, state: slot.state });
        }
        let stats = slot.probe.stats();
        if slot.probe.done_below() < slot.probe.next_seq() {
            return Err(ShardError::NotDrained { shard: id, waiting: stats.in_memory as u64 + stats.on_disk });
        }
        let unreadable = stats.lost + stats.corrupt + stats.set_aside_files as u64;
        if unreadable > 0 {
            return Err(ShardError::Unreadable { shard: id, records: unreadable });
        }
        let removed = table.slots.remove(at);
        table.index();
        let next = Recorded { generation: recorded.generation + 1, ..*recorded };
        let handovers = self.handovers.lock();
        if let Err(err) = self.record(&self.layout(&next, &table, &handovers)) {
            table.slots.insert(at, removed);
            table.index();
            return Err(err);
        }
        drop(handovers);
        drop(removed);
        drop(table);
        *recorded = next;
        let stopped = match &mut *self.consumer.lock() {
            Consumer::Receiver { departed, .. } => {
                departed.push(id);
                None
            }
            Consumer::Drainers { running, .. } => {
                running.iter().position(|(shard, _)| *shard == id).map(|at| running.remove(at).1)
            }
            Consumer::Detached => None,
        };
        // After `departed`, so a receiver that sees the new generation
        // finds the removal.
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(handle) = stopped {
            match handle.shutdown(Duration::ZERO) {
                Ok(receiver) => self.close_and_discard(id, receiver),
                Err(err) => {
                    tracing::warn!(shard = id.0, error = %err, "the drainer of a removed shard did not stop; its files stay until the next open")
                }
            }
        }
        tracing::info!(shard = id.0, "shard removed");
        Ok(())
    }

    /// Closes the receiver of a removed shard and deletes its files.
    pub(crate) fn close_and_discard(&self, id: ShardId, receiver: Receiver<T>) {
        if let Err(err) = receiver.close() {
            tracing::warn!(shard = id.0, error = %err, "closing a removed shard");
        }
        self.discard(id);
    }

    /// Deletes the files of shard `id`, which no handle uses any more;
    /// what cannot be deleted now is deleted at the next open.
    fn discard(&self, id: ShardId) {
        if let Err(err) = super::reshard::discard::<T>(self.root.path(), &shard_name(id.0 as usize), &self.settings) {
            tracing::warn!(shard = id.0, error = %err, "the files of a removed shard stay until the next open");
        }
    }

    /// Adds and activates, or drains, shards until `target` are active.
    pub(crate) fn scale_to(&self, target: usize) -> Result<(), ShardError> {
        while self.active_count() < target {
            let id = self.add_shard()?;
            self.activate_shard(id)?;
        }
        while self.active_count() > target {
            let newest = self.table.read().active().last().map(|slot| slot.id);
            match newest {
                Some(id) => self.drain_shard(id)?,
                None => break,
            }
        }
        Ok(())
    }

    /// Removes every draining shard that has delivered everything; the
    /// shards removed.
    pub(crate) fn remove_drained(&self) -> Vec<ShardId> {
        let draining: Vec<ShardId> = {
            let table = self.table.read();
            table
                .slots
                .iter()
                .filter(|slot| slot.state == ShardState::Draining && slot.probe.done_below() >= slot.probe.next_seq())
                .map(|slot| slot.id)
                .collect()
        };
        draining
            .into_iter()
            .filter(|&id| match self.remove_shard(id) {
                Ok(()) => true,
                Err(err @ ShardError::Unreadable { .. }) => {
                    tracing::debug!(shard = id.0, error = %err, "a drained shard with unreadable records is kept");
                    false
                }
                Err(_) => false,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random key hashes.
    fn hashes(count: u64) -> impl Iterator<Item = u64> {
        (0..count).map(|i| weight(i, 0xdead_beef))
    }

    #[test]
    fn rendezvous_spreads_keys_and_moves_only_those_a_change_must_move() {
        let owner = |hash: u64, ids: &[u32]| ids[rendezvous(hash, ids.iter().copied()).unwrap()];
        let four = [0, 1, 2, 3];
        let five = [0, 1, 2, 3, 4];
        let mut per_shard = [0u32; 5];
        let (mut moved, mut drained_moved) = (0, 0);
        for hash in hashes(20_000) {
            let before = owner(hash, &four);
            let after = owner(hash, &five);
            per_shard[after as usize] += 1;
            if before != after {
                assert_eq!(after, 4, "a key moved between two old shards");
                moved += 1;
            }
            let without_two = owner(hash, &[0, 1, 3, 4]);
            if without_two != after {
                assert_eq!(after, 2, "draining shard 2 moved a key it did not have");
                drained_moved += 1;
            }
        }
        // About a fifth of the keys each.
        assert!(per_shard.iter().all(|&count| (3_400..4_600).contains(&count)), "{per_shard:?}");
        assert!((3_400..4_600).contains(&moved), "{moved} keys moved to the new shard");
        assert_eq!(drained_moved, per_shard[2]);
        assert_eq!(rendezvous(7, std::iter::empty()), None);
    }
}
