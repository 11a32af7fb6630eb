//! [`ShardedSender`]: routes each item to its shard, and sends batches
//! grouped by shard.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::Sender;
use crate::dir::ChannelDir;
use crate::err::{SendError, TrySendError};
use crate::stats::Stats;

use super::{sum_stats, Dispatch, Route, Target};

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
    pub(super) shards: Vec<Sender<T>>,
    /// How items are routed.
    pub(super) route: Route<T>,
    /// Holds the channel's lock while any handle is alive.
    pub(super) _root: Arc<ChannelDir>,
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
