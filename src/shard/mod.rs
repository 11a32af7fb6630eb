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
//! `sump.shards` (the shard count and dispatch mode, see
//! [`layout`]), and one directory per shard, `shard-000`, `shard-001`, …,
//! each an ordinary channel directory. A reshard also uses
//! `dir/name/reshard/` while it runs.
//!
//! # Resharding
//!
//! See [`reshard`]: opening with a different shard count moves the items
//! into the new layout before the handles are returned.

mod drain;
pub(crate) mod layout;
mod reshard;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::builder::Builder;
use crate::channel::{Receiver, Sender};
use crate::dir::ChannelDir;
use crate::err::{CloseError, OpenError, RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};
use crate::options::Settings;
use crate::stats::Stats;

pub use drain::{ShardedDrainHandle, ShardedDrainer};
pub use layout::Dispatch;

pub use layout::MAX_SHARDS;

/// Maps an item to the hash of its key.
type KeyHash<T> = Arc<dyn Fn(&T) -> u64 + Send + Sync>;

/// How a sharded channel's sender routes items.
enum Route<T> {
    /// By key hash.
    Key(KeyHash<T>),
    /// Round-robin, sharing one counter across sender clones.
    RoundRobin(Arc<AtomicUsize>),
    /// To every shard; the function clones an item.
    Broadcast(fn(&T) -> T),
}

/// Where one item goes.
enum Target<T> {
    /// To this shard.
    One(usize),
    /// To every shard, cloned with this function.
    All(fn(&T) -> T),
}

impl<T> Route<T> {
    fn dispatch(&self) -> Dispatch {
        match self {
            Route::Key(_) => Dispatch::Key,
            Route::RoundRobin(_) => Dispatch::RoundRobin,
            Route::Broadcast(_) => Dispatch::Broadcast,
        }
    }

    /// Where `item` goes, of `shards` shards.
    fn target(&self, item: &T, shards: usize) -> Target<T> {
        match self {
            Route::Key(hash) => Target::One(shard_of(hash(item), shards)),
            Route::RoundRobin(next) => Target::One(next.fetch_add(1, Ordering::Relaxed) % shards),
            Route::Broadcast(clone) => Target::All(*clone),
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

/// The shard, of `shards`, that a key hash picks.
fn shard_of(hash: u64, shards: usize) -> usize {
    // The remainder is below `shards`, a usize.
    (hash % shards as u64) as usize
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
/// let shard = rx.shards().iter().position(|shard| shard.stats().in_memory == 2).unwrap();
/// assert_eq!(rx.shards()[shard].recv()?.action, "login");
/// assert_eq!(rx.shards()[shard].recv()?.action, "logout");
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
        ShardedBuilder { name, dir, settings, shards, route: None }
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
    /// # Errors
    ///
    /// As [`Builder::open`], and [`OpenError::InvalidConfig`] when
    /// - the shard count is 0 or above [`MAX_SHARDS`];
    /// - no dispatch mode was chosen (dispatch by key needs
    ///   [`key`](Self::key));
    /// - `dir/name/` holds an unsharded channel;
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
        self.settings.check()?;
        let root = ChannelDir::open(&self.settings.fs, &self.dir, &self.name)?;
        let (segments, highest) = root.scan()?;
        if !segments.is_empty() || highest.is_some() {
            return invalid(format!(
                "{} holds the segments of an unsharded channel; open it with Builder::open, or use another name",
                root.path().display()
            ));
        }
        let plan = reshard::Plan { root: root.path(), settings: &self.settings, shards: self.shards };
        reshard::settle::<T>(&plan, &route)?;
        let mut senders = Vec::with_capacity(self.shards);
        let mut receivers = Vec::with_capacity(self.shards);
        for shard in 0..self.shards {
            let (tx, rx) = crate::open::open(root.path(), &shard_name(shard), self.settings.clone())?;
            senders.push(tx);
            receivers.push(rx);
        }
        let root = Arc::new(root);
        Ok((
            ShardedSender { shards: senders, route, _root: Arc::clone(&root) },
            ShardedReceiver { shards: receivers, next: std::cell::Cell::new(0), _root: root },
        ))
    }
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

/// The sending half of a sharded channel: `Clone + Send + Sync`, like
/// [`Sender`]. Each method routes the item as the channel's [`Dispatch`]
/// says and then behaves as the same method of [`Sender`] on that shard.
///
/// In broadcast mode an item goes to every shard whose receiver is still
/// there, and a send fails as disconnected only when every shard's
/// receiver is gone. A broadcast send that fails for another reason (an
/// I/O error, a full shard for `try_send`, a timeout) has reached the
/// shards before the one that failed; sending it again duplicates it
/// there.
pub struct ShardedSender<T> {
    /// One sender per shard.
    shards: Vec<Sender<T>>,
    /// How items are routed.
    route: Route<T>,
    /// Holds the channel's lock while any handle is alive.
    _root: Arc<ChannelDir>,
}

impl<T> ShardedSender<T> {
    /// How many shards the channel has.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// How this channel dispatches items.
    pub fn dispatch(&self) -> Dispatch {
        self.route.dispatch()
    }

    /// The per-shard senders, in shard order.
    pub fn shards(&self) -> &[Sender<T>] {
        &self.shards
    }

    /// Every shard's counters, added up.
    pub fn stats(&self) -> Stats {
        sum_stats(self.shards.iter().map(Sender::stats))
    }

    /// Each shard's counters, in shard order.
    pub fn shard_stats(&self) -> Vec<Stats> {
        self.shards.iter().map(Sender::stats).collect()
    }

    /// Flushes every shard, as [`Sender::flush`].
    ///
    /// # Errors
    ///
    /// The first shard's error; every shard is tried.
    pub fn flush(&self) -> io::Result<()> {
        let mut first = Ok(());
        for shard in &self.shards {
            if let Err(err) = shard.flush() {
                first = first.and(Err(err));
            }
        }
        first
    }
}

impl<T: Serialize + DeserializeOwned> ShardedSender<T> {
    /// Sends an item to its shard (to every shard, in broadcast mode).
    ///
    /// # Errors
    ///
    /// As [`Sender::send`]; the item comes back.
    ///
    /// # Blocking
    ///
    /// As [`Sender::send`], on the item's shard.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        match self.route.target(&item, self.shards.len()) {
            Target::One(shard) => self.shards[shard].send(item),
            Target::All(clone) => self.broadcast(item, clone, |shard, item| match shard.send(item) {
                Ok(()) => Ok(()),
                Err(err) if err.is_disconnected() => Err(Failed::Gone(err.into_inner())),
                Err(err) => Err(Failed::Other(err)),
            }),
        }
    }

    /// Sends an item without blocking, as [`Sender::try_send`].
    ///
    /// # Errors
    ///
    /// As [`Sender::try_send`]. In broadcast mode, a full shard fails the
    /// send, as an I/O error does (see the type's docs).
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        match self.route.target(&item, self.shards.len()) {
            Target::One(shard) => self.shards[shard].try_send(item),
            Target::All(clone) => self.broadcast(item, clone, |shard, item| match shard.try_send(item) {
                Ok(()) => Ok(()),
                Err(TrySendError::Disconnected(item)) => Err(Failed::Gone(item)),
                Err(err) => Err(Failed::Other(err)),
            }),
        }
    }

    /// Sends an item, waiting at most `timeout` for space, as
    /// [`Sender::send_timeout`]. In broadcast mode the timeout applies to
    /// each shard in turn.
    ///
    /// # Errors
    ///
    /// As [`Sender::send_timeout`].
    pub fn send_timeout(&self, item: T, timeout: Duration) -> Result<(), crate::SendTimeoutError<T>> {
        use crate::SendTimeoutError;
        match self.route.target(&item, self.shards.len()) {
            Target::One(shard) => self.shards[shard].send_timeout(item, timeout),
            Target::All(clone) => self.broadcast(item, clone, |shard, item| match shard.send_timeout(item, timeout) {
                Ok(()) => Ok(()),
                Err(SendTimeoutError::Disconnected(item)) => Err(Failed::Gone(item)),
                Err(err) => Err(Failed::Other(err)),
            }),
        }
    }

    /// Sends a batch: groups the items by shard, keeping their order, and
    /// hands each shard its group at once ([`Sender::send_batch`]), so each
    /// shard's lock is taken once for the items that go to memory.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = sump::Builder::new("words", dir.path())
    ///     .sharded::<String>(2)
    ///     .key(|word: &String| word.len())
    ///     .open()?;
    /// tx.send_batch(["a", "bb", "c", "dd"].map(String::from))?;
    /// assert_eq!(tx.stats().sent, 4);
    /// # drop(rx);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// When a shard fails, the other shards still get their groups. The
    /// error carries every item not sent, grouped by shard in shard order,
    /// each group in the batch's order, and the first failure's cause.
    /// In broadcast mode a shard whose receiver is gone is skipped, as in
    /// [`send`](Self::send).
    ///
    /// # Blocking
    ///
    /// As [`Sender::send`], shard after shard.
    pub fn send_batch(&self, items: impl IntoIterator<Item = T>) -> Result<(), SendError<Vec<T>>> {
        let shards = self.shards.len();
        let mut groups: Vec<Vec<T>> = (0..shards).map(|_| Vec::new()).collect();
        let broadcast = self.route.dispatch() == Dispatch::Broadcast;
        for item in items {
            match self.route.target(&item, shards) {
                Target::One(shard) => groups[shard].push(item),
                Target::All(clone) => {
                    for group in groups.iter_mut().skip(1) {
                        group.push(clone(&item));
                    }
                    groups[0].push(item);
                }
            }
        }
        let mut unsent = Vec::new();
        let mut first_error: Option<SendError<()>> = None;
        let mut gone = 0;
        // In broadcast mode, shard 0's group holds the items themselves:
        // they come back if every shard is gone.
        let mut originals = Vec::new();
        for (index, (shard, group)) in self.shards.iter().zip(groups).enumerate() {
            if group.is_empty() {
                continue;
            }
            if let Err(err) = shard.send_batch(group) {
                if broadcast && err.is_disconnected() {
                    gone += 1;
                    if index == 0 {
                        originals = err.into_inner();
                    }
                    continue;
                }
                let (items, err) = err.split();
                unsent.extend(items);
                first_error.get_or_insert(err);
            }
        }
        if broadcast && gone == shards {
            return Err(SendError::disconnected(originals));
        }
        match first_error {
            None => Ok(()),
            Some(err) => Err(err.with_item(unsent)),
        }
    }

    /// Sends `item` to every shard: clones made with `clone` go to all but
    /// the last, which takes the item itself. A shard whose receiver is
    /// gone is skipped; if all are gone, the send fails as disconnected.
    fn broadcast<E>(
        &self,
        item: T,
        clone: fn(&T) -> T,
        send: impl Fn(&Sender<T>, T) -> Result<(), Failed<T, E>>,
    ) -> Result<(), E>
    where
        E: From<Disconnected<T>>,
    {
        let Some((last, rest)) = self.shards.split_last() else { return Err(E::from(Disconnected(item))) };
        let mut delivered = false;
        for shard in rest {
            match send(shard, clone(&item)) {
                Ok(()) => delivered = true,
                Err(Failed::Gone(_)) => {}
                Err(Failed::Other(err)) => return Err(err),
            }
        }
        match send(last, item) {
            Ok(()) => Ok(()),
            Err(Failed::Gone(_)) if delivered => Ok(()),
            Err(Failed::Gone(item)) => Err(E::from(Disconnected(item))),
            Err(Failed::Other(err)) => Err(err),
        }
    }
}

/// How one shard's part of a broadcast failed.
enum Failed<T, E> {
    /// The shard's receiver is gone; the item comes back.
    Gone(T),
    /// Any other failure, as the caller reports it.
    Other(E),
}

/// Every shard's receiver is gone: the item of a broadcast.
struct Disconnected<T>(T);

impl<T> From<Disconnected<T>> for SendError<T> {
    fn from(gone: Disconnected<T>) -> SendError<T> {
        SendError::disconnected(gone.0)
    }
}

impl<T> From<Disconnected<T>> for TrySendError<T> {
    fn from(gone: Disconnected<T>) -> TrySendError<T> {
        TrySendError::Disconnected(gone.0)
    }
}

impl<T> From<Disconnected<T>> for crate::SendTimeoutError<T> {
    fn from(gone: Disconnected<T>) -> crate::SendTimeoutError<T> {
        crate::SendTimeoutError::Disconnected(gone.0)
    }
}

impl<T> Clone for ShardedSender<T> {
    fn clone(&self) -> ShardedSender<T> {
        ShardedSender { shards: self.shards.clone(), route: self.route.clone(), _root: Arc::clone(&self._root) }
    }
}

impl<T> fmt::Debug for ShardedSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedSender").field("shards", &self.shards.len()).field("dispatch", &self.dispatch()).finish()
    }
}

/// Adds up the counters of several shards.
fn sum_stats(shards: impl Iterator<Item = Stats>) -> Stats {
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
        total
    })
}

/// The receiving half of a sharded channel: one [`Receiver`] per shard.
///
/// The usual way to consume it is in parallel, one thread or drainer per
/// shard: [`drain`](Self::drain) spawns a drainer per shard, and
/// [`into_shards`](Self::into_shards) hands out the receivers. The
/// receive methods here take from all shards in turn, for one consumer
/// that does not care about parallelism; per-key order holds for them too,
/// since each key lives in one shard.
pub struct ShardedReceiver<T> {
    /// One receiver per shard.
    shards: Vec<Receiver<T>>,
    /// The shard the next receive looks at first.
    next: std::cell::Cell<usize>,
    /// Holds the channel's lock while any handle is alive.
    _root: Arc<ChannelDir>,
}

/// How long [`ShardedReceiver::recv_timeout`] waits on one shard before it
/// looks at the others again, at most.
const POLL_SLICE_MAX: Duration = Duration::from_millis(10);

impl<T> ShardedReceiver<T> {
    /// How many shards the channel has.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The per-shard receivers, in shard order.
    pub fn shards(&self) -> &[Receiver<T>] {
        &self.shards
    }

    /// Every shard's counters, added up.
    pub fn stats(&self) -> Stats {
        sum_stats(self.shards.iter().map(Receiver::stats))
    }

    /// Each shard's counters, in shard order.
    pub fn shard_stats(&self) -> Vec<Stats> {
        self.shards.iter().map(Receiver::stats).collect()
    }

    /// Splits the channel into its per-shard receivers, in shard order.
    ///
    /// Each receiver keeps its shard locked, so another open of the
    /// channel fails with [`OpenError::Locked`](crate::OpenError::Locked)
    /// while any of them is alive; the lock of the channel as a whole is
    /// released once the senders are gone too.
    pub fn into_shards(self) -> Vec<Receiver<T>> {
        // The senders hold the lock too; once they are gone, the receivers'
        // own shard locks still keep their shards from a second open.
        self.shards
    }

    pub(crate) fn from_shards(shards: Vec<Receiver<T>>, root: Arc<ChannelDir>) -> ShardedReceiver<T> {
        ShardedReceiver { shards, next: std::cell::Cell::new(0), _root: root }
    }

    pub(crate) fn into_parts(self) -> (Vec<Receiver<T>>, Arc<ChannelDir>) {
        (self.shards, self._root)
    }
}

impl<T: Serialize + DeserializeOwned> ShardedReceiver<T> {
    /// Closes every shard, as [`Receiver::close`].
    ///
    /// # Errors
    ///
    /// When some shards could not persist their memory: the count of
    /// every shard's unpersisted items, and the first shard's cause.
    pub fn close(self) -> Result<(), CloseError> {
        let mut failed: Option<CloseError> = None;
        for shard in self.shards {
            if let Err(err) = shard.close() {
                match &mut failed {
                    Some(first) => first.unpersisted += err.unpersisted,
                    None => failed = Some(err),
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Takes an item from the first shard, in turn, that has one.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when no shard has an item,
    /// [`TryRecvError::Disconnected`] when every shard is empty and
    /// disconnected.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let count = self.shards.len();
        let start = self.next.get();
        let mut disconnected = 0;
        for step in 0..count {
            let shard = (start + step) % count;
            match self.shards[shard].try_recv() {
                Ok(item) => {
                    self.next.set((shard + 1) % count);
                    return Ok(item);
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => disconnected += 1,
            }
        }
        if disconnected == count {
            Err(TryRecvError::Disconnected)
        } else {
            Err(TryRecvError::Empty)
        }
    }

    /// Waits at most `timeout` for an item from any shard. It waits on one
    /// shard at a time for a short slice (at most 10 ms), so an item on
    /// another shard may wait that long; consume shards on threads of
    /// their own where that matters.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] when nothing arrived in time,
    /// [`RecvTimeoutError::Disconnected`] when every shard is empty and
    /// disconnected.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut slice = Duration::from_micros(100);
        loop {
            match self.try_recv() {
                Ok(item) => return Ok(item),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            let wait = match deadline {
                Some(deadline) if deadline <= now => return Err(RecvTimeoutError::Timeout),
                Some(deadline) => slice.min(deadline - now),
                None => slice,
            };
            let shard = self.next.get();
            self.next.set((shard + 1) % self.shards.len());
            match self.shards[shard].recv_timeout(wait) {
                Ok(item) => return Ok(item),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
            slice = (slice * 2).min(POLL_SLICE_MAX);
        }
    }

    /// Waits for an item from any shard, as
    /// [`recv_timeout`](Self::recv_timeout) without a deadline.
    ///
    /// # Errors
    ///
    /// [`RecvError`] when every shard is empty and disconnected.
    pub fn recv(&self) -> Result<T, RecvError> {
        loop {
            match self.recv_timeout(Duration::from_secs(3600)) {
                Ok(item) => return Ok(item),
                Err(RecvTimeoutError::Disconnected) => return Err(RecvError),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// A blocking iterator over items from every shard, as
    /// [`recv`](Self::recv); it ends when every shard is disconnected and
    /// empty.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(|| self.recv().ok())
    }

    /// An iterator over the items ready now in any shard, as
    /// [`try_recv`](Self::try_recv).
    pub fn try_iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(|| self.try_recv().ok())
    }
}

impl<T> fmt::Debug for ShardedReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedReceiver").field("shards", &self.shards.len()).finish()
    }
}
