//! One drainer per shard: [`ShardedReceiver::drain`] and its handle.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::dir::ChannelDir;
use crate::drain::{DrainError, DrainHandle, DrainStats, Drainer, Sink};
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
///     .drain(|_shard| {
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
    /// One drainer per shard, in shard order.
    drainers: Vec<Drainer<T, S>>,
    /// The channel's lock.
    root: Arc<ChannelDir>,
}

impl<T, S> ShardedDrainer<T, S>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    S: Sink<T> + Send + 'static,
{
    /// Applies `settings` to each shard's drainer: it gets the shard's
    /// index and its [`Drainer`], and returns the drainer with whatever
    /// settings it needs (batch size, linger, backoff, breaker, a dead
    /// letter channel, batching by key).
    pub fn configure<F>(mut self, mut settings: F) -> ShardedDrainer<T, S>
    where
        F: FnMut(usize, Drainer<T, S>) -> Drainer<T, S>,
    {
        self.drainers =
            self.drainers.into_iter().enumerate().map(|(shard, drainer)| settings(shard, drainer)).collect();
        self
    }

    /// Starts every drainer, each on a thread of its own.
    ///
    /// # Panics
    ///
    /// If the OS cannot start a thread.
    pub fn spawn(self) -> ShardedDrainHandle<T> {
        ShardedDrainHandle { handles: self.drainers.into_iter().map(Drainer::spawn).collect(), root: self.root }
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
    /// returns; [`ShardedDrainer::spawn`] starts them.
    pub fn drain<S, F>(self, mut sink_for: F) -> ShardedDrainer<T, S>
    where
        S: Sink<T> + Send + 'static,
        F: FnMut(usize) -> S,
    {
        let (shards, root) = self.into_parts();
        let drainers =
            shards.into_iter().enumerate().map(|(shard, receiver)| Drainer::new(receiver, sink_for(shard))).collect();
        ShardedDrainer { drainers, root }
    }
}

/// The handle of the drainers of a sharded channel.
///
/// Dropping it detaches the drainers, as dropping a [`DrainHandle`] does.
pub struct ShardedDrainHandle<T> {
    /// One handle per shard, in shard order.
    handles: Vec<DrainHandle<T>>,
    /// The channel's lock.
    root: Arc<ChannelDir>,
}

impl<T> ShardedDrainHandle<T> {
    /// What each shard's drainer has done, in shard order.
    pub fn stats(&self) -> Vec<DrainStats> {
        self.handles.iter().map(DrainHandle::stats).collect()
    }

    /// Whether every drainer has stopped.
    pub fn is_finished(&self) -> bool {
        self.handles.iter().all(DrainHandle::is_finished)
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
        for handle in &self.handles {
            handle.stop_by(at);
        }
        let until = at + crate::drain::SHUTDOWN_GRACE;
        if !self.handles.iter().all(|handle| handle.wait_until(until)) {
            return Err(DrainError::timed_out(self));
        }
        let mut receivers = Vec::with_capacity(self.handles.len());
        let mut failed = false;
        for handle in self.handles {
            match handle.join() {
                Ok(receiver) => receivers.push(receiver),
                Err(()) => failed = true,
            }
        }
        if failed {
            return Err(DrainError::panicked());
        }
        Ok(ShardedReceiver::from_shards(receivers, self.root))
    }
}

impl<T> fmt::Debug for ShardedDrainHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedDrainHandle")
            .field("shards", &self.handles.len())
            .field("finished", &self.is_finished())
            .finish()
    }
}
