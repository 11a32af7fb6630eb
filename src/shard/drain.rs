//! One drainer per shard: [`ShardedReceiver::drain`] and its handle.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::Receiver;
use crate::drain::{DrainError, DrainHandle, DrainStats, Drainer, Gate, Sink};
use crate::err::ShardError;
use crate::shard::live::{ShardId, ShardStats};
use crate::shard::topology::Topology;
use crate::shard::ShardedReceiver;

/// Sets up one [`Drainer`] per shard; from [`ShardedReceiver::drain`].
///
/// Each shard gets its own sink, from the factory, and its own thread, so
/// N sinks deliver in parallel; within a shard, and so within a key,
/// delivery keeps channel order.
///
/// ```
/// use std::time::Duration;
/// use sump::{Builder, SinkError};
///
/// let dir = tempfile::tempdir()?;
/// let (tx, rx) = Builder::new("orders", dir.path())
///     .sharded::<(u32, u32)>(3)
///     .key(|&(customer, _): &(u32, u32)| customer)
///     .open()?;
/// let (seen_tx, seen_rx) = std::sync::mpsc::channel();
/// let handle = rx
///     .drain(move |_shard| {
///         let seen = seen_tx.clone();
///         move |batch: &[(u32, u32)]| -> Result<(), SinkError> {
///             batch.iter().try_for_each(|&order| seen.send(order).map_err(SinkError::permanent))
///         }
///     })
///     .configure(|_shard, drainer| drainer.batch_size(64).linger(Duration::from_millis(1)))
///     .spawn();
///
/// for order in 0..300 {
///     tx.send((order % 7, order))?;
/// }
/// let mut last = [None; 7];
/// for _ in 0..300 {
///     let (customer, order) = seen_rx.recv_timeout(Duration::from_secs(5))?;
///     // Each customer's orders arrive in order, whichever shard carried them.
///     assert!(last[customer as usize] < Some(order));
///     last[customer as usize] = Some(order);
/// }
/// let rx = handle.shutdown(Duration::from_secs(1))?;
/// assert_eq!(rx.stats().in_memory, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a ShardedDrainer does nothing until `spawn` is called"]
pub struct ShardedDrainer<T, S> {
    /// One drainer per shard there is now, by id.
    drainers: Vec<(ShardId, Drainer<T, S>)>,
    /// Makes the sink of a shard.
    sink_for: SinkFor<S>,
    /// Applies the settings to a shard's drainer.
    settings: Settings<T, S>,
    /// The live shard set.
    topology: Arc<Topology<T>>,
}

/// Makes the sink of a shard.
type SinkFor<S> = Box<dyn FnMut(ShardId) -> S + Send>;

/// Applies the settings to a shard's drainer.
type Settings<T, S> = Box<dyn FnMut(ShardId, Drainer<T, S>) -> Drainer<T, S> + Send>;

impl<T, S> ShardedDrainer<T, S>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    S: Sink<T> + Send + 'static,
{
    /// Applies `settings` to each shard's drainer, and to the drainer of
    /// every shard added later: it gets the shard's id and its
    /// [`Drainer`], and returns the drainer with whatever settings it
    /// needs (batch size, linger, backoff, breaker, a dead letter
    /// channel, batching by key).
    pub fn configure<F>(mut self, mut settings: F) -> ShardedDrainer<T, S>
    where
        F: FnMut(ShardId, Drainer<T, S>) -> Drainer<T, S> + Send + 'static,
    {
        self.drainers = self.drainers.into_iter().map(|(shard, drainer)| (shard, settings(shard, drainer))).collect();
        self.settings = Box::new(settings);
        self
    }

    /// Starts every drainer, each on a thread of its own; a shard added
    /// later gets its drainer as it is added.
    ///
    /// # Panics
    ///
    /// If the OS cannot start a thread.
    pub fn spawn(self) -> ShardedDrainHandle<T> {
        let ShardedDrainer { drainers, mut sink_for, mut settings, topology } = self;
        let gated = |topology: Arc<Topology<T>>, id: ShardId| -> Gate { Arc::new(move || topology.limit(id)) };
        let running: Vec<(ShardId, DrainHandle<T>)> = drainers
            .into_iter()
            .map(|(id, drainer)| (id, drainer.gate(gated(Arc::clone(&topology), id)).spawn()))
            .collect();
        // Held weakly: the topology keeps this closure.
        let weak = Arc::downgrade(&topology);
        let start = move |id: ShardId, receiver: Receiver<T>| {
            let drainer = settings(id, Drainer::new(receiver, sink_for(id)));
            match weak.upgrade() {
                Some(topology) => drainer.gate(gated(topology, id)).spawn(),
                None => drainer.spawn(),
            }
        };
        topology.attach_drainers(Box::new(start), running);
        ShardedDrainHandle { topology }
    }
}

impl<T, S> fmt::Debug for ShardedDrainer<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedDrainer").field("shards", &self.drainers.len()).finish()
    }
}

impl<T> ShardedReceiver<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// Sets up one drainer per shard, each with the sink `sink_for(shard)`
    /// returns; [`ShardedDrainer::spawn`] starts them. A shard added while
    /// they run gets a drainer and a sink of its own as it is added,
    /// before anything is routed to it.
    pub fn drain<S, F>(self, mut sink_for: F) -> ShardedDrainer<T, S>
    where
        S: Sink<T> + Send + 'static,
        F: FnMut(ShardId) -> S + Send + 'static,
    {
        let (shards, topology) = self.into_parts();
        let drainers =
            shards.into_iter().map(|(shard, receiver)| (shard, Drainer::new(receiver, sink_for(shard)))).collect();
        ShardedDrainer { drainers, sink_for: Box::new(sink_for), settings: Box::new(|_, drainer| drainer), topology }
    }
}

/// The handle of the drainers of a sharded channel.
///
/// It shares the channel's live shard set: shards can be added, drained
/// and removed through it as through the sender. Dropping it detaches the
/// drainers, as dropping a [`DrainHandle`] does; they go on, and shards
/// added through the senders still get drainers.
pub struct ShardedDrainHandle<T> {
    /// The live shard set, which holds the drainers.
    topology: Arc<Topology<T>>,
}

impl<T> ShardedDrainHandle<T> {
    /// What each shard's drainer has done, in shard id order (the order of
    /// [`shard_stats`](Self::shard_stats) while no shard is provisioned
    /// without a drainer).
    pub fn stats(&self) -> Vec<DrainStats> {
        let mut stats = self.topology.drain_stats();
        stats.sort_by_key(|(id, _)| *id);
        stats.into_iter().map(|(_, stats)| stats).collect()
    }

    /// Whether every drainer has stopped.
    pub fn is_finished(&self) -> bool {
        self.topology.drainers_finished()
    }

    /// Each shard's id, state and counters, by id.
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        self.topology.shard_stats()
    }
}

impl<T> ShardedDrainHandle<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// As [`ShardedSender::add_shard`](crate::ShardedSender::add_shard):
    /// the new shard gets its drainer at once.
    ///
    /// # Errors
    ///
    /// As [`ShardedSender::add_shard`](crate::ShardedSender::add_shard).
    pub fn add_shard(&self) -> Result<ShardId, ShardError> {
        self.topology.add_shard()
    }

    /// As [`ShardedSender::activate_shard`](crate::ShardedSender::activate_shard).
    ///
    /// # Errors
    ///
    /// As [`ShardedSender::activate_shard`](crate::ShardedSender::activate_shard).
    pub fn activate_shard(&self, id: ShardId) -> Result<(), ShardError> {
        self.topology.activate_shard(id)
    }

    /// As [`ShardedSender::drain_shard`](crate::ShardedSender::drain_shard).
    ///
    /// # Errors
    ///
    /// As [`ShardedSender::drain_shard`](crate::ShardedSender::drain_shard).
    pub fn drain_shard(&self, id: ShardId) -> Result<(), ShardError> {
        self.topology.drain_shard(id)
    }

    /// As [`ShardedSender::remove_shard`](crate::ShardedSender::remove_shard):
    /// the shard's drainer is stopped and its files deleted.
    ///
    /// # Errors
    ///
    /// As [`ShardedSender::remove_shard`](crate::ShardedSender::remove_shard).
    pub fn remove_shard(&self, id: ShardId) -> Result<(), ShardError> {
        self.topology.remove_shard(id)
    }

    /// Stops every drainer, all at once, and hands the receivers back as a
    /// [`ShardedReceiver`]. Each drainer finishes or puts back its batch in
    /// flight by `deadline` from now, as [`DrainHandle::shutdown`] does, so
    /// nothing is lost.
    ///
    /// # Errors
    ///
    /// [`DrainError`]: a timeout when a drainer is still in a sink call
    /// past `deadline` plus [`SHUTDOWN_GRACE`](crate::SHUTDOWN_GRACE), which
    /// gives this handle back whole (every drainer has been told to stop);
    /// or a drainer thread itself panicked, which loses that shard's
    /// receiver; the other shards' receivers are then dropped, which in
    /// the durable modes writes their items to disk.
    ///
    /// # Blocking
    ///
    /// Until every drainer has stopped, or `deadline` plus
    /// [`SHUTDOWN_GRACE`](crate::SHUTDOWN_GRACE) has passed.
    pub fn shutdown(self, deadline: Duration) -> Result<ShardedReceiver<T>, DrainError<Self>> {
        let at = Instant::now().checked_add(deadline).unwrap_or_else(Instant::now);
        let Some(drainers) = self.topology.take_drainers() else {
            return Ok(ShardedReceiver::new(Arc::clone(&self.topology), Vec::new()));
        };
        for (_, handle) in &drainers.running {
            handle.stop_by(at);
        }
        let until = at + crate::drain::SHUTDOWN_GRACE;
        if !drainers.running.iter().all(|(_, handle)| handle.wait_until(until)) {
            self.topology.attach_drainers(drainers.start, drainers.running);
            return Err(DrainError::timed_out(self));
        }
        let mut receivers = Vec::with_capacity(drainers.running.len());
        let mut failed = false;
        for (id, handle) in drainers.running {
            match handle.join() {
                Ok(receiver) => receivers.push((id, receiver)),
                Err(()) => failed = true,
            }
        }
        if failed {
            // Nothing consumes new shards any more.
            self.topology.detach();
            return Err(DrainError::panicked());
        }
        receivers.sort_by_key(|(id, _)| *id);
        Ok(ShardedReceiver::new(Arc::clone(&self.topology), receivers))
    }
}

impl<T> fmt::Debug for ShardedDrainHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedDrainHandle")
            .field("shards", &self.topology.drain_stats().len())
            .field("finished", &self.is_finished())
            .finish()
    }
}
