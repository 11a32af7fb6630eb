//! [`ShardedReceiver`]: one receiver per shard, taken from in turn, or
//! handed out for parallel draining.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::Receiver;
use crate::err::{CloseError, RecvError, RecvTimeoutError, ShardError, TryRecvError};
use crate::stats::Stats;

use super::live::{ShardId, ShardStats};
use super::sum_stats;
use super::topology::{Receivers, Topology};

/// The receiving half of a sharded channel: one [`Receiver`] per shard.
///
/// The usual way to consume it is in parallel, one thread or drainer per
/// shard: [`drain`](Self::drain) spawns a drainer per shard (and one for
/// each shard added later). The receive methods here take from all shards
/// in turn, for one consumer that does not care about parallelism;
/// per-key order holds for them too.
///
/// # Hand-over
///
/// When the shards change while items wait, a key can move from one
/// shard to another with older items still in the first. The rule that
/// keeps its order: a shard that took keys over at a change delivers its
/// items sent after the change only once every shard that gave keys up
/// has delivered what it held at the change. After
/// [`activate_shard`](crate::ShardedSender::activate_shard) that holds
/// back the new shard until the old ones have delivered their backlog;
/// after [`drain_shard`](crate::ShardedSender::drain_shard), it holds
/// back the other shards' new items until the drained shard has
/// delivered its backlog. The items held back wait on disk, not in
/// memory, and senders never wait for a hand-over.
/// [`ShardStats::handing_over`](crate::ShardStats::handing_over) says
/// which shards are held back. This receiver and the drainers keep the
/// rule; receivers taken out with [`into_shards`](Self::into_shards) do
/// not.
pub struct ShardedReceiver<T> {
    /// The live shard set; detaches the consumer when dropped.
    attachment: Attachment<T>,
    /// One receiver per shard, by id, as of `seen`.
    shards: RefCell<Vec<(ShardId, Receiver<T>)>>,
    /// The topology's generation `shards` reflects.
    seen: Cell<u64>,
    /// The position in `shards` the next receive looks at first.
    next: Cell<usize>,
}

/// Tells the topology, when dropped armed, that the receiving side is
/// gone.
struct Attachment<T> {
    /// The live shard set.
    topology: Arc<Topology<T>>,
    /// Whether dropping it detaches the consumer.
    armed: bool,
}

impl<T> Drop for Attachment<T> {
    fn drop(&mut self) {
        if self.armed {
            self.topology.detach();
        }
    }
}

/// How long [`ShardedReceiver::recv_timeout`] waits on one shard before it
/// looks at the others again, at most.
const POLL_SLICE_MAX: Duration = Duration::from_millis(10);

impl<T> ShardedReceiver<T> {
    pub(crate) fn new(topology: Arc<Topology<T>>, shards: Vec<(ShardId, Receiver<T>)>) -> ShardedReceiver<T> {
        ShardedReceiver {
            attachment: Attachment { topology, armed: true },
            shards: RefCell::new(shards),
            // Never a generation: the first look picks up whatever was
            // added or removed before this receiver existed.
            seen: Cell::new(u64::MAX),
            next: Cell::new(0),
        }
    }

    fn topology(&self) -> &Topology<T> {
        &self.attachment.topology
    }

    /// How many shards are active (routed to) now.
    pub fn shard_count(&self) -> usize {
        self.topology().active_count()
    }

    /// Every shard's counters, added up.
    pub fn stats(&self) -> Stats {
        sum_stats(self.topology().shard_stats().into_iter().map(|shard| shard.stats))
    }

    /// Each shard's id, state and counters, by id.
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        self.topology().shard_stats()
    }

    pub(crate) fn into_parts(self) -> (Receivers<T>, Arc<Topology<T>>) {
        let ShardedReceiver { mut attachment, shards, .. } = self;
        attachment.armed = false;
        (shards.into_inner(), Arc::clone(&attachment.topology))
    }
}

impl<T> ShardedReceiver<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// Splits the channel into its per-shard receivers, by id (every
    /// shard there is now, in [`shard_stats`](Self::shard_stats)'s
    /// order). Live scaling mostly stops there: no consumer is attached to
    /// new shards any more, so adding or activating one fails with
    /// [`ShardError::NoConsumer`](crate::ShardError::NoConsumer), and the
    /// hand-over rule is no longer kept.
    ///
    /// Each receiver keeps its shard locked, so another open of the
    /// channel fails with [`OpenError::Locked`](crate::OpenError::Locked)
    /// while any of them is alive; the lock of the channel as a whole is
    /// released once the senders are gone too.
    pub fn into_shards(self) -> Vec<Receiver<T>> {
        self.refresh();
        self.topology().detach();
        self.shards.into_inner().into_iter().map(|(_, receiver)| receiver).collect()
    }

    /// Adds a provisioned shard, as [`ShardedSender::add_shard`](crate::ShardedSender::add_shard).
    ///
    /// # Errors
    ///
    /// As [`ShardedSender::add_shard`](crate::ShardedSender::add_shard).
    pub fn add_shard(&self) -> Result<ShardId, ShardError> {
        self.topology().add_shard()
    }

    /// As [`ShardedSender::activate_shard`](crate::ShardedSender::activate_shard).
    ///
    /// # Errors
    ///
    /// As [`ShardedSender::activate_shard`](crate::ShardedSender::activate_shard).
    pub fn activate_shard(&self, id: ShardId) -> Result<(), ShardError> {
        self.topology().activate_shard(id)
    }

    /// As [`ShardedSender::drain_shard`](crate::ShardedSender::drain_shard).
    ///
    /// # Errors
    ///
    /// As [`ShardedSender::drain_shard`](crate::ShardedSender::drain_shard).
    pub fn drain_shard(&self, id: ShardId) -> Result<(), ShardError> {
        self.topology().drain_shard(id)
    }

    /// As [`ShardedSender::remove_shard`](crate::ShardedSender::remove_shard).
    ///
    /// # Errors
    ///
    /// As [`ShardedSender::remove_shard`](crate::ShardedSender::remove_shard).
    pub fn remove_shard(&self, id: ShardId) -> Result<(), ShardError> {
        self.refresh();
        if let Some((_, receiver)) = self.shards.borrow().iter().find(|(shard, _)| *shard == id) {
            // A look that finds it empty is what records it as drained;
            // an item found goes back to the front.
            drop(receiver.peek_batch(1, Duration::ZERO));
        }
        self.topology().remove_shard(id)?;
        self.refresh();
        Ok(())
    }

    /// Picks up the receivers of shards added since the last look, and
    /// closes those of shards removed (deleting their files).
    fn refresh(&self) {
        let generation = self.topology().generation();
        if generation == self.seen.get() {
            return;
        }
        self.seen.set(generation);
        let (arrived, departed) = self.topology().take_news();
        let mut shards = self.shards.borrow_mut();
        for (id, receiver) in arrived {
            let at = shards.partition_point(|(other, _)| *other < id);
            shards.insert(at, (id, receiver));
        }
        for id in departed {
            if let Some(at) = shards.iter().position(|(other, _)| *other == id) {
                let (_, receiver) = shards.remove(at);
                self.topology().close_and_discard(id, receiver);
            }
        }
    }

    /// Takes one item from shard `id`, waiting up to `wait`, within the
    /// hand-over rule.
    fn take(&self, id: ShardId, receiver: &Receiver<T>, wait: Duration) -> Result<T, RecvTimeoutError> {
        let Some(limit) = self.topology().limit(id) else {
            if !wait.is_zero() {
                return receiver.recv_timeout(wait);
            }
            return match receiver.try_recv() {
                Ok(item) => Ok(item),
                Err(TryRecvError::Empty) => Err(RecvTimeoutError::Timeout),
                Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            };
        };
        let batch = receiver.peek_batch(1, wait)?;
        if batch.seqs().first().is_some_and(|&seq| seq < limit) {
            let (mut items, committed) = batch.take_first(1);
            if let Err(err) = committed {
                tracing::warn!(error = %err, "an item received may be delivered again after a restart");
            }
            if let Some(item) = items.pop() {
                return Ok(item);
            }
        }
        // Held back by a hand-over: it stays at the front of its shard.
        Err(RecvTimeoutError::Timeout)
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> ShardedReceiver<T> {
    /// Closes every shard, as [`Receiver::close`].
    ///
    /// # Errors
    ///
    /// When some shards could not persist their memory: the count of
    /// every shard's unpersisted items, and the first shard's cause.
    pub fn close(self) -> Result<(), CloseError> {
        let mut failed: Option<CloseError> = None;
        for (_, shard) in self.shards.take() {
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
        self.refresh();
        let shards = self.shards.borrow();
        let count = shards.len();
        let start = self.next.get();
        let mut disconnected = 0;
        for step in 0..count {
            let at = (start + step) % count;
            let (id, receiver) = &shards[at];
            match self.take(*id, receiver, Duration::ZERO) {
                Ok(item) => {
                    self.next.set((at + 1) % count);
                    return Ok(item);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => disconnected += 1,
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
            let shards = self.shards.borrow();
            if shards.is_empty() {
                drop(shards);
                std::thread::sleep(wait);
                continue;
            }
            let at = self.next.get() % shards.len();
            self.next.set((at + 1) % shards.len());
            let (id, receiver) = &shards[at];
            match self.take(*id, receiver, wait) {
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
        f.debug_struct("ShardedReceiver").field("shards", &self.shards.borrow().len()).finish()
    }
}
