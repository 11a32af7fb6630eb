//! [`ShardedReceiver`]: one receiver per shard, taken from in turn, or
//! handed out for parallel draining.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::Receiver;
use crate::dir::ChannelDir;
use crate::err::{CloseError, RecvError, RecvTimeoutError, TryRecvError};
use crate::stats::Stats;

use super::sum_stats;

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
    pub(super) shards: Vec<Receiver<T>>,
    /// The shard the next receive looks at first.
    pub(super) next: std::cell::Cell<usize>,
    /// Holds the channel's lock while any handle is alive.
    pub(super) _root: Arc<ChannelDir>,
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
