//! [`ShardedSender`]: routes each item to its shard, and sends batches
//! grouped by shard.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::Sender;
use crate::err::{SendError, SendTimeoutError, ShardError, TrySendError};
use crate::stats::Stats;

use super::live::{ShardId, ShardStats};
use super::topology::{Lane, Pick, Topology, SEND_SLICE};
use super::{sum_stats, Dispatch};

/// The sending half of a sharded channel: `Clone + Send + Sync`, like
/// [`Sender`]. Each method routes the item as the channel's [`Dispatch`]
/// says and then behaves as the same method of [`Sender`] on that shard.
///
/// Its shards can change while it runs (see
/// [`add_shard`](Self::add_shard)): every handle of the channel, senders,
/// receiver and drainers alike, sees the same shards.
///
/// In broadcast mode an item goes to every active shard whose receiver is
/// still there, and a send fails as disconnected only when every shard's
/// receiver is gone. A broadcast send that fails for another reason (an
/// I/O error, a full shard for `try_send`, a timeout) has reached the
/// shards before the one that failed; sending it again duplicates it
/// there.
pub struct ShardedSender<T> {
    /// The live shard set, shared by every handle of the channel.
    topology: Arc<Topology<T>>,
    /// This handle's copy of the routing table.
    lane: Arc<Lane<T>>,
}

impl<T> ShardedSender<T> {
    pub(crate) fn new(topology: Arc<Topology<T>>) -> ShardedSender<T> {
        topology.add_sender();
        let lane = topology.new_lane();
        ShardedSender { topology, lane }
    }

    /// How many shards are active (routed to) now.
    pub fn shard_count(&self) -> usize {
        self.topology.active_count()
    }

    /// How this channel dispatches items.
    pub fn dispatch(&self) -> Dispatch {
        self.topology.route.dispatch()
    }

    /// Every shard's counters, added up (active, provisioned and
    /// draining shards alike).
    pub fn stats(&self) -> Stats {
        sum_stats(self.topology.shard_stats().into_iter().map(|shard| shard.stats))
    }

    /// Each shard's id, state and counters, by id.
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        self.topology.shard_stats()
    }

    /// Items a send found no active shard for. A channel always keeps at
    /// least one shard active, so this stays 0; it is counted, not
    /// hidden, should it ever not.
    pub fn unrouted(&self) -> u64 {
        self.topology.unrouted()
    }

    /// Flushes every shard, as [`Sender::flush`].
    ///
    /// # Errors
    ///
    /// The first shard's error; every shard is tried.
    pub fn flush(&self) -> io::Result<()> {
        let table = self.lane.read();
        let mut first = Ok(());
        for shard in table.slots.iter().filter_map(|slot| slot.sender.as_ref()) {
            if let Err(err) = shard.flush() {
                first = first.and(Err(err));
            }
        }
        first
    }
}

impl<T> ShardedSender<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// Adds a shard, provisioned: its directory is made, its consumer is
    /// attached (the [`ShardedReceiver`](crate::ShardedReceiver), or a
    /// new drainer from the sink factory when the channel is drained),
    /// and it is recorded in the layout file, but nothing is routed to it
    /// until [`activate_shard`](Self::activate_shard).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = sump::Builder::new("live", dir.path()).sharded::<u64>(2).key(|n: &u64| *n).open()?;
    /// let id = tx.add_shard()?;
    /// assert_eq!(tx.shard_count(), 2, "provisioned, not active yet");
    /// tx.activate_shard(id)?;
    /// tx.activate_shard(id)?; // idempotent
    /// assert_eq!(tx.shard_count(), 3);
    /// tx.drain_shard(id)?;
    /// tx.remove_shard(id)?; // it held nothing
    /// assert_eq!(tx.shard_stats().len(), 2);
    /// # drop(rx);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ShardError::OutOfBounds`] at [`MAX_SHARDS`](crate::MAX_SHARDS)
    /// shards, [`ShardError::NoConsumer`] when the receivers were handed
    /// out or are gone, [`ShardError::Io`] when the shard's files or the
    /// layout cannot be written (the shard's files are deleted again, or
    /// at the next open if that fails too; its id is not given out
    /// again).
    pub fn add_shard(&self) -> Result<ShardId, ShardError> {
        self.topology.add_shard()
    }

    /// Routes to shard `id` from now on. Keys that move to it (with
    /// dispatch by key, about one in n+1) keep their order: its new
    /// items are delivered only once the shards they came from have
    /// delivered what they held (see [`ShardedReceiver`](crate::ShardedReceiver)'s
    /// docs, "Hand-over"). Activating an active shard does nothing.
    ///
    /// # Errors
    ///
    /// [`ShardError::Unknown`], [`ShardError::WrongState`] for a draining
    /// shard, [`ShardError::OutOfBounds`] above the scaling policy's
    /// `max_shards`, [`ShardError::NoConsumer`], [`ShardError::Io`] when
    /// the layout cannot be recorded (the shard stays provisioned).
    pub fn activate_shard(&self, id: ShardId) -> Result<(), ShardError> {
        self.topology.activate_shard(id)
    }

    /// Stops routing to shard `id`; what it holds is still delivered.
    /// Its keys move to the other active shards, which deliver their new
    /// items for those keys only after it has delivered its backlog.
    /// Draining a draining shard does nothing.
    ///
    /// # Errors
    ///
    /// [`ShardError::Unknown`], [`ShardError::WrongState`] for a
    /// provisioned shard (remove it instead), [`ShardError::OutOfBounds`]
    /// for the last active shard or below the policy's `min_shards`,
    /// [`ShardError::Io`] (the shard stays active).
    pub fn drain_shard(&self, id: ShardId) -> Result<(), ShardError> {
        self.topology.drain_shard(id)
    }

    /// Removes shard `id` and deletes its files, once it is provisioned or
    /// drained and has delivered everything (every item taken from it
    /// committed, and its consumer has since found it empty: a drainer
    /// looks every few milliseconds, a [`ShardedReceiver`](crate::ShardedReceiver)
    /// at its next receive, and its own `remove_shard` looks first).
    /// Removing a removed shard does nothing.
    ///
    /// # Errors
    ///
    /// [`ShardError::NotDrained`] while it holds items: nothing is ever
    /// dropped; [`ShardError::Unreadable`] when some of its records could
    /// not be read (its files are kept); [`ShardError::WrongState`] for an active shard (drain it
    /// first); [`ShardError::Unknown`]; [`ShardError::Io`].
    pub fn remove_shard(&self, id: ShardId) -> Result<(), ShardError> {
        self.topology.remove_shard(id)
    }
}

impl<T: Serialize + DeserializeOwned> ShardedSender<T> {
    /// Sends an item to its shard (to every active shard, in broadcast
    /// mode).
    ///
    /// # Errors
    ///
    /// As [`Sender::send`]; the item comes back.
    ///
    /// # Blocking
    ///
    /// As [`Sender::send`], on the item's shard. While it waits for space
    /// it routes the item again every 10 ms, so that a change of the
    /// shards never waits on it longer. A broadcast send holds a change
    /// off until every shard has the item.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        match self.send_until(item, None) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Disconnected(item)) => Err(SendError::disconnected(item)),
            Err(SendTimeoutError::Io(item, err)) => Err(SendError::io(item, err)),
            Err(SendTimeoutError::Timeout(item)) => Err(SendError::io(item, io::Error::other("send timed out"))),
        }
    }

    /// Sends an item without blocking, as [`Sender::try_send`].
    ///
    /// # Errors
    ///
    /// As [`Sender::try_send`]. In broadcast mode, a full shard fails the
    /// send, as an I/O error does (see the type's docs).
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let table = self.lane.read();
        match self.topology.pick(&table, &item) {
            Pick::One(shard) => shard.try_send(item),
            Pick::All(shards, clone) => broadcast(&shards, item, clone, |shard, item| match shard.try_send(item) {
                Ok(()) => Ok(()),
                Err(TrySendError::Disconnected(item)) => Err(Failed::Gone(item)),
                Err(err) => Err(Failed::Other(err)),
            }),
            Pick::Nowhere => Err(TrySendError::Io(item, nowhere())),
        }
    }

    /// Sends an item, waiting at most `timeout` for space, as
    /// [`Sender::send_timeout`]. In broadcast mode the timeout applies to
    /// each shard in turn.
    ///
    /// # Errors
    ///
    /// As [`Sender::send_timeout`].
    pub fn send_timeout(&self, item: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.send_until(item, Instant::now().checked_add(timeout))
    }

    /// Sends `item`, waiting for space until `deadline` (forever when
    /// `None`), in slices of at most [`SEND_SLICE`] with the routing table
    /// held.
    fn send_until(&self, item: T, deadline: Option<Instant>) -> Result<(), SendTimeoutError<T>> {
        let mut item = item;
        // The usual case first: the shard has room, no clock is read.
        if self.topology.route.dispatch() != Dispatch::Broadcast {
            let table = self.lane.read();
            match self.topology.pick(&table, &item) {
                Pick::One(shard) => match shard.try_send(item) {
                    Ok(()) => return Ok(()),
                    Err(TrySendError::Full(back)) => item = back,
                    Err(TrySendError::Disconnected(back)) => return Err(SendTimeoutError::Disconnected(back)),
                    Err(TrySendError::Io(back, err)) => return Err(SendTimeoutError::Io(back, err)),
                },
                Pick::Nowhere => return Err(SendTimeoutError::Io(item, nowhere())),
                Pick::All(..) => {}
            }
        }
        loop {
            let slice = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()).min(SEND_SLICE),
                None => SEND_SLICE,
            };
            let table = self.lane.read();
            match self.topology.pick(&table, &item) {
                Pick::One(shard) => match shard.send_timeout(item, slice) {
                    Err(SendTimeoutError::Timeout(back)) if deadline.is_none_or(|at| Instant::now() < at) => {
                        item = back;
                    }
                    other => return other,
                },
                Pick::All(shards, clone) => {
                    let wait = deadline.map(|at| at.saturating_duration_since(Instant::now()));
                    return broadcast(&shards, item, clone, |shard, item| {
                        let sent = shard.send_timeout(item, wait.unwrap_or(Duration::MAX));
                        match sent {
                            Ok(()) => Ok(()),
                            Err(SendTimeoutError::Disconnected(item)) => Err(Failed::Gone(item)),
                            Err(err) => Err(Failed::Other(err)),
                        }
                    });
                }
                Pick::Nowhere => return Err(SendTimeoutError::Io(item, nowhere())),
            }
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
    /// As [`Sender::send`], shard after shard. A change of the shards
    /// waits for the batch to be in, and while it waits, sends of the
    /// handles whose lanes it already took wait too.
    pub fn send_batch(&self, items: impl IntoIterator<Item = T>) -> Result<(), SendError<Vec<T>>> {
        let table = self.lane.read();
        let shards: Vec<&Sender<T>> = table.active().filter_map(|slot| slot.sender.as_ref()).collect();
        let broadcast = self.topology.route.dispatch() == Dispatch::Broadcast;
        let mut groups: Vec<Vec<T>> = (0..shards.len()).map(|_| Vec::new()).collect();
        let mut nowhere_items = Vec::new();
        for item in items {
            match self.topology.pick(&table, &item) {
                Pick::One(shard) => match shards.iter().position(|candidate| std::ptr::eq(*candidate, shard)) {
                    Some(at) => groups[at].push(item),
                    None => nowhere_items.push(item),
                },
                Pick::All(all, clone) => {
                    for group in groups.iter_mut().take(all.len()).skip(1) {
                        group.push(clone(&item));
                    }
                    groups[0].push(item);
                }
                Pick::Nowhere => nowhere_items.push(item),
            }
        }
        let mut unsent = Vec::new();
        let mut first_error: Option<SendError<()>> = None;
        if !nowhere_items.is_empty() {
            unsent.append(&mut nowhere_items);
            first_error = Some(SendError::io((), nowhere()));
        }
        let mut gone = 0;
        // In broadcast mode, the first shard's group holds the items
        // themselves: they come back if every shard is gone.
        let mut originals = Vec::new();
        let count = shards.len();
        for (index, (shard, group)) in shards.into_iter().zip(groups).enumerate() {
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
        if broadcast && count > 0 && gone == count {
            return Err(SendError::disconnected(originals));
        }
        match first_error {
            None => Ok(()),
            Some(err) => Err(err.with_item(unsent)),
        }
    }
}

/// Why an item found no shard.
fn nowhere() -> io::Error {
    io::Error::other("no shard of the sharded channel is active")
}

/// Sends `item` to every shard of `shards`: clones made with `clone` go
/// to all but the last, which takes the item itself. A shard whose
/// receiver is gone is skipped; if all are gone, the send fails as
/// disconnected.
fn broadcast<T, E>(
    shards: &[&Sender<T>],
    item: T,
    clone: fn(&T) -> T,
    send: impl Fn(&Sender<T>, T) -> Result<(), Failed<T, E>>,
) -> Result<(), E>
where
    E: From<Disconnected<T>>,
{
    let Some((last, rest)) = shards.split_last() else { return Err(E::from(Disconnected(item))) };
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
        ShardedSender::new(Arc::clone(&self.topology))
    }
}

impl<T> Drop for ShardedSender<T> {
    fn drop(&mut self) {
        self.topology.remove_sender();
    }
}

impl<T> fmt::Debug for ShardedSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedSender")
            .field("shards", &self.shard_count())
            .field("dispatch", &self.dispatch())
            .finish()
    }
}
