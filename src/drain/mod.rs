//! The drainer: a thread that owns a [`Receiver`] and forwards its items to
//! a blocking [`Sink`] in batches.
//!
//! # Invariants
//!
//! - **No loss.** An item leaves the channel only once the sink accepted it
//!   or it went to the dead-letter channel. The batch in flight is held
//!   apart from the channel; whatever of it was not accepted when the
//!   drainer stops is put back at the front of the channel, in order, so
//!   the receiver handed back by [`DrainHandle::shutdown`] holds it.
//! - **Order.** Batches are delivered in channel order, and a batch is
//!   retried until accepted before the next one starts. Splitting a batch
//!   to find refused items keeps order too; only refused items are taken
//!   out (to the dead-letter channel).
//! - **A dead sink is not hammered.** Transient failures are retried after
//!   a capped exponential backoff with jitter; repeated failures open a
//!   circuit breaker, and while it is open the sink is not called at all.
//! - **Nothing is dropped silently.** With no dead-letter channel, a
//!   permanent refusal stops the drainer, with the reason in
//!   [`DrainStats::stopped`], and the refused item stays in the channel.
//!   A sink that panics stops the drainer the same way.

mod breaker;
#[cfg(feature = "nats")]
mod jetstream_sink;
#[cfg(feature = "redis")]
mod redis_sink;
mod sink;
mod worker;

use std::fmt;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{Receiver, Sender};
use crate::sync::{Arc, Condvar, Mutex};

pub use breaker::{
    BreakerState, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, DEFAULT_BREAKER_OPEN_FOR, DEFAULT_BREAKER_THRESHOLD,
};
#[cfg(feature = "nats")]
pub use jetstream_sink::{JetStreamSink, DEFAULT_DUPLICATE_WINDOW, DEFAULT_NATS_TIMEOUT};
#[cfg(feature = "redis")]
pub use redis_sink::{RedisSink, DEFAULT_REDIS_FIELD, DEFAULT_REDIS_TIMEOUT};
pub use sink::{BoxError, ChannelSink, JsonLinesSink, Numbers, Sink, SinkError};

/// Default bound on items per batch.
pub const DEFAULT_BATCH_SIZE: usize = 512;

/// Default time a drainer waits to fill a batch once it has its first item.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(5);

/// Decides whether two items have the same key, for batching by key.
type SameKey<T> = Box<dyn Fn(&T, &T) -> bool + Send>;

/// Sets up a drainer; [`spawn`](Self::spawn) starts it.
///
/// ```
/// use std::time::Duration;
/// use sump::{Drainer, SinkError};
///
/// let dir = tempfile::tempdir()?;
/// let (tx, rx) = sump::channel::<String>("lines", dir.path())?;
/// let (out_tx, out_rx) = std::sync::mpsc::channel();
/// let handle = Drainer::new(rx, move |batch: &[String]| -> Result<(), SinkError> {
///     out_tx.send(batch.len()).map_err(SinkError::permanent)
/// })
/// .batch_size(100)
/// .linger(Duration::from_millis(20))
/// .spawn();
///
/// for i in 0..250 {
///     tx.send(format!("line {i}"))?;
/// }
/// let mut delivered = 0;
/// while delivered < 250 {
///     delivered += out_rx.recv_timeout(Duration::from_secs(5))?;
/// }
/// let receiver = handle.shutdown(Duration::from_secs(1))?;
/// assert_eq!(receiver.try_recv(), Err(sump::TryRecvError::Empty));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a Drainer does nothing until `spawn` is called"]
pub struct Drainer<T, S> {
    /// The channel drained.
    receiver: Receiver<T>,
    /// Where batches go.
    sink: S,
    /// Settings.
    settings: DrainSettings<T>,
}

/// A drainer's settings.
pub(crate) struct DrainSettings<T> {
    /// Most items in one batch.
    pub(crate) batch_size: usize,
    /// Most encoded bytes in one batch, if bounded.
    pub(crate) batch_bytes: Option<u64>,
    /// Longest wait to fill a batch after its first item.
    pub(crate) linger: Duration,
    /// Where refused items go.
    pub(crate) dead_letter: Option<Sender<T>>,
    /// First retry delay.
    pub(crate) backoff_initial: Duration,
    /// Cap on retry delays.
    pub(crate) backoff_max: Duration,
    /// Failures in a row that open the breaker.
    pub(crate) breaker_threshold: u32,
    /// How long the breaker stays open.
    pub(crate) breaker_open_for: Duration,
    /// Batch boundaries by key, if set.
    pub(crate) same_key: Option<SameKey<T>>,
    /// Most items delivered per second, if paced.
    pub(crate) max_rate: Option<f64>,
    /// A sharded channel's hand-over rule: the item number below which
    /// items may be delivered now, or `None` for any.
    pub(crate) gate: Option<Gate>,
}

/// The hand-over rule of a sharded channel's shard, as a drainer asks it.
pub(crate) type Gate = std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync>;

impl<T, S> Drainer<T, S>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    S: Sink<T> + Send + 'static,
{
    /// A drainer that takes items from `receiver` and hands them to
    /// `sink`, with every setting at its default.
    pub fn new(receiver: Receiver<T>, sink: S) -> Drainer<T, S> {
        Drainer {
            receiver,
            sink,
            settings: DrainSettings {
                batch_size: DEFAULT_BATCH_SIZE,
                batch_bytes: None,
                linger: DEFAULT_LINGER,
                dead_letter: None,
                backoff_initial: DEFAULT_BACKOFF_INITIAL,
                backoff_max: DEFAULT_BACKOFF_MAX,
                breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
                breaker_open_for: DEFAULT_BREAKER_OPEN_FOR,
                same_key: None,
                max_rate: None,
                gate: None,
            },
        }
    }

    /// At most `items` items per batch (default [`DEFAULT_BATCH_SIZE`]; at
    /// least one).
    pub fn batch_size(mut self, items: usize) -> Self {
        self.settings.batch_size = items.max(1);
        self
    }

    /// At most `bytes` bytes per batch, counting each item's encoded size
    /// (bincode). A single item larger than this still makes a batch of
    /// its own. Unbounded by default.
    pub fn batch_bytes(mut self, bytes: u64) -> Self {
        self.settings.batch_bytes = Some(bytes);
        self
    }

    /// Once a batch has its first item, wait at most this long for more
    /// (default [`DEFAULT_LINGER`]).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.settings.linger = linger;
        self
    }

    /// Routes items the sink refuses permanently to another channel
    /// instead of stopping.
    pub fn dead_letter(mut self, sender: Sender<T>) -> Self {
        self.settings.dead_letter = Some(sender);
        self
    }

    /// Retry delays: `initial`, doubling up to `max`, each scaled by a
    /// random factor between 0.5 and 1 (defaults
    /// [`DEFAULT_BACKOFF_INITIAL`] and [`DEFAULT_BACKOFF_MAX`]).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.settings.backoff_initial = initial;
        self.settings.backoff_max = max;
        self
    }

    /// Opens the circuit breaker after `failures` failed calls in a row,
    /// and keeps it open for `open_for` before one probe batch is tried
    /// (defaults [`DEFAULT_BREAKER_THRESHOLD`] and
    /// [`DEFAULT_BREAKER_OPEN_FOR`]).
    pub fn breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.settings.breaker_threshold = failures.max(1);
        self.settings.breaker_open_for = open_for;
        self
    }

    /// Makes every batch hold items of one key only, for sinks that
    /// partition by key: a batch ends where the key changes.
    pub fn batch_by_key<K, F>(mut self, key: F) -> Self
    where
        K: PartialEq,
        F: Fn(&T) -> K + Send + 'static,
    {
        self.settings.same_key = Some(Box::new(move |a, b| key(a) == key(b)));
        self
    }

    /// Delivers at most `items_per_second` items per second on average, so
    /// that a backlog built up while the sink was down does not knock over
    /// the downstream that just came back. Unpaced by default.
    ///
    /// After each batch the drainer waits until the batch's share of the
    /// rate has passed, so the rate holds over any stretch longer than one
    /// batch; to keep that stretch short, a paced batch holds at most a
    /// tenth of a second's worth of items (and at least one). Retries of a
    /// failed batch are paced by the backoff, not by the rate. A rate of 0
    /// or less, or not a number, is taken as one item per second, and
    /// the wait after a batch is at most a day, however low the rate.
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = sump::channel::<u32>("paced", dir.path())?;
    /// tx.send_batch(0..200)?;
    /// drop(tx);
    /// let started = Instant::now();
    /// let handle = sump::Drainer::new(rx, |_: &[u32]| Ok(())).max_rate(500.0).spawn();
    /// while handle.stats().delivered < 200 {
    ///     std::thread::sleep(Duration::from_millis(5));
    /// }
    /// // Four batches of 50 (a tenth of a second each), the last of which
    /// // goes 0.3 s after the first.
    /// assert!(started.elapsed() >= Duration::from_millis(290));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_rate(mut self, items_per_second: f64) -> Self {
        let rate = if items_per_second.is_nan() || items_per_second <= 0.0 { 1.0 } else { items_per_second };
        self.settings.max_rate = Some(rate);
        self
    }

    /// Holds back items as `gate` says (a sharded channel's hand-over).
    pub(crate) fn gate(mut self, gate: Gate) -> Drainer<T, S> {
        self.settings.gate = Some(gate);
        self
    }

    /// Starts the drainer on a thread of its own.
    ///
    /// # Panics
    ///
    /// If the OS cannot start a thread.
    pub fn spawn(self) -> DrainHandle<T> {
        let control = Arc::new(Control {
            state: Mutex::new(ControlState::default()),
            wake: Condvar::new(),
            monitor: self.receiver.monitor(),
        });
        #[cfg(all(feature = "metrics", not(loom)))]
        if let Some(of) = self.receiver.labels() {
            let control = Arc::downgrade(&control);
            let labels = crate::metrics::labels(&of);
            crate::metrics::register(Box::new(move || match control.upgrade() {
                Some(control) => {
                    record_drain(&labels, &control.snapshot());
                    true
                }
                None => false,
            }));
        }
        let worker = worker::Worker::new(self.sink, self.settings, Arc::clone(&control));
        let receiver = self.receiver;
        let thread = std::thread::Builder::new()
            .name("sump-drainer".to_string())
            .spawn(move || worker.run(receiver))
            .expect("cannot start the drainer thread");
        DrainHandle { thread: Some(thread), control }
    }
}

impl<T, S> fmt::Debug for Drainer<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Drainer { .. }")
    }
}

/// Publishes a drainer's stats under `labels`.
#[cfg(all(feature = "metrics", not(loom)))]
fn record_drain(labels: &[::metrics::Label], stats: &DrainStats) {
    use ::metrics::{counter, gauge};

    let labels = || labels.to_vec();
    counter!("sump_drain_delivered_total", labels()).absolute(stats.delivered);
    counter!("sump_drain_batches_total", labels()).absolute(stats.batches);
    counter!("sump_drain_retried_total", labels()).absolute(stats.retried);
    counter!("sump_drain_rejected_total", labels()).absolute(stats.rejected);
    gauge!("sump_drain_lag_items", labels()).set(stats.lag as f64);
    let open = match stats.breaker {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 0.5,
        BreakerState::Open => 1.0,
    };
    gauge!("sump_drain_breaker_open", labels()).set(open);
}

/// What a drainer reports; see [`DrainHandle::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainStats {
    /// Items the sink accepted.
    pub delivered: u64,
    /// Batches (and parts of batches) the sink accepted.
    pub batches: u64,
    /// Sink calls that failed and were retried.
    pub retried: u64,
    /// Items the sink refused permanently, routed to the dead-letter
    /// channel.
    pub rejected: u64,
    /// The circuit breaker's state.
    pub breaker: BreakerState,
    /// Items waiting: in the channel, plus the batch in flight.
    pub lag: u64,
    /// Why the drainer stopped on its own, if it did: a permanent refusal
    /// with no dead-letter channel, a dead-letter channel that failed, or
    /// a sink that panicked.
    pub stopped: Option<String>,
    /// Whether the drainer thread is still running.
    pub running: bool,
}

/// State shared by the drainer thread and its handle.
pub(crate) struct Control<T> {
    /// Counters and the stop request.
    pub(crate) state: Mutex<ControlState>,
    /// Wakes the drainer from a backoff or breaker wait on shutdown.
    pub(crate) wake: Condvar,
    /// Reads the channel's stats for `lag`.
    pub(crate) monitor: crate::channel::Monitor<T>,
}

impl<T> Control<T> {
    /// The drainer's counters and its lag now (`running` left false).
    pub(crate) fn snapshot(&self) -> DrainStats {
        let (mut stats, in_flight) = {
            let state = self.state.lock();
            (state.stats.clone(), state.in_flight)
        };
        let channel = self.monitor.stats();
        stats.lag = channel.in_memory as u64 + channel.on_disk + in_flight;
        stats
    }
}

/// The mutable part of [`Control`].
#[derive(Debug, Default)]
pub(crate) struct ControlState {
    /// Counters, written by the drainer thread.
    pub(crate) stats: DrainStats,
    /// Items in the batch in flight.
    pub(crate) in_flight: u64,
    /// Set by `shutdown`: the in-flight batch must be done by then.
    pub(crate) deadline: Option<Instant>,
}

/// The handle of a running drainer.
///
/// Dropping it detaches the drainer: it runs on until every sender is gone
/// and the channel is drained (or it stops on its own).
pub struct DrainHandle<T> {
    /// The drainer thread; it returns the receiver.
    thread: Option<JoinHandle<Receiver<T>>>,
    /// Shared with the thread.
    control: Arc<Control<T>>,
}

impl<T> DrainHandle<T> {
    /// A snapshot of what the drainer has done.
    pub fn stats(&self) -> DrainStats {
        let mut stats = self.control.snapshot();
        stats.running = self.thread.as_ref().is_some_and(|t| !t.is_finished());
        stats
    }

    /// Whether the drainer has stopped: the channel is disconnected and
    /// empty, or it stopped on its own (see [`DrainStats::stopped`]).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the drainer and hands the receiver back.
    ///
    /// The drainer takes no new batch. The batch in flight is finished if
    /// the sink accepts it before `deadline` passes; otherwise it is
    /// abandoned and put back at the front of the channel. Either way
    /// nothing is lost: every item not accepted is in the returned
    /// receiver, in order.
    ///
    /// A sink call cannot be interrupted. If one is still running when the
    /// deadline (plus [`SHUTDOWN_GRACE`]) has passed, `shutdown` returns
    /// anyway, with a [`DrainError`] that [is a timeout](DrainError::is_timeout)
    /// and gives the handle back ([`DrainError::into_handle`]): the
    /// drainer has been told to stop and does so as soon as the sink
    /// returns, putting the batch back; call `shutdown` again to keep
    /// waiting. Nothing is lost meanwhile: the batch is still in the
    /// channel until the sink accepts it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use sump::{Drainer, SinkError};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = sump::channel::<u32>("slow", dir.path())?;
    /// tx.send(1)?;
    /// let handle = Drainer::new(rx, |_: &[u32]| -> Result<(), SinkError> {
    ///     std::thread::sleep(Duration::from_millis(400)); // a sink that hangs for a while
    ///     Ok(())
    /// })
    /// .spawn();
    /// std::thread::sleep(Duration::from_millis(50));
    /// let err = handle.shutdown(Duration::from_millis(10)).unwrap_err();
    /// assert!(err.is_timeout());
    /// let handle = err.into_handle().expect("a timeout gives the handle back");
    /// let rx = handle.shutdown(Duration::from_secs(5))?; // the sink returned meanwhile
    /// # drop((tx, rx));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`DrainError`]: a timeout, as above, or the drainer thread itself
    /// panicked, which loses the receiver. A panicking sink does not
    /// count: it stops the drainer and is reported in
    /// [`DrainStats::stopped`].
    ///
    /// # Blocking
    ///
    /// Until the drainer has stopped, or `deadline` plus
    /// [`SHUTDOWN_GRACE`] has passed, whichever comes first.
    pub fn shutdown(self, deadline: Duration) -> Result<Receiver<T>, DrainError<Self>> {
        let at = Instant::now().checked_add(deadline).unwrap_or_else(Instant::now);
        self.stop_by(at);
        if !self.wait_until(at + SHUTDOWN_GRACE) {
            return Err(DrainError::timed_out(self));
        }
        self.join().map_err(|_| DrainError::panicked())
    }

    /// Tells the drainer to stop, finishing its batch in flight by `at`.
    pub(crate) fn stop_by(&self, at: Instant) {
        let mut state = self.control.state.lock();
        state.deadline = Some(at);
        self.control.wake.notify_all();
    }

    /// Waits until the drainer thread has ended or `until` has passed;
    /// returns whether it has ended.
    pub(crate) fn wait_until(&self, until: Instant) -> bool {
        let mut pause = Duration::from_micros(100);
        while !self.is_finished() {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            std::thread::sleep(pause.min(until - now));
            pause = (pause * 2).min(Duration::from_millis(5));
        }
        true
    }

    /// Waits for the drainer thread to end and takes its receiver.
    pub(crate) fn join(mut self) -> Result<Receiver<T>, ()> {
        let thread = self.thread.take().ok_or(())?;
        thread.join().map_err(|_| ())
    }
}

/// How long [`DrainHandle::shutdown`] waits past its deadline for the
/// drainer thread to put its batch back and end (100 ms).
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

impl<T> fmt::Debug for DrainHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainHandle").field("finished", &self.is_finished()).finish()
    }
}

/// Why [`DrainHandle::shutdown`] (or [`ShardedDrainHandle::shutdown`](crate::ShardedDrainHandle::shutdown))
/// returned no receiver: the drainer is still in a sink call past the
/// deadline ([`is_timeout`](Self::is_timeout); the handle `H` comes back
/// with [`into_handle`](Self::into_handle)), or a drainer thread panicked
/// and its receiver is lost.
pub struct DrainError<H> {
    /// The handle, when the drainer is still running.
    handle: Option<H>,
}

impl<H> DrainError<H> {
    pub(crate) fn timed_out(handle: H) -> DrainError<H> {
        DrainError { handle: Some(handle) }
    }

    pub(crate) fn panicked() -> DrainError<H> {
        DrainError { handle: None }
    }

    /// Whether the drainer is still running: a sink call outlasted the
    /// deadline. It stops as soon as the call returns.
    pub fn is_timeout(&self) -> bool {
        self.handle.is_some()
    }

    /// The handle of the drainer still running, to shut it down again
    /// (wait longer) or to watch it; `None` when a drainer thread panicked.
    pub fn into_handle(self) -> Option<H> {
        self.handle
    }
}

impl<H> fmt::Debug for DrainError<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.handle {
            Some(_) => f.write_str("DrainError(TimedOut(..))"),
            None => f.write_str("DrainError(Panicked)"),
        }
    }
}

impl<H> fmt::Display for DrainError<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.handle {
            Some(_) => f.write_str(
                "the drainer is still in a sink call past its shutdown deadline; it stops when the call \
                 returns, and nothing is lost (shut the returned handle down again to keep waiting)",
            ),
            None => f.write_str("the drainer thread panicked; its receiver is lost"),
        }
    }
}

impl<H> std::error::Error for DrainError<H> {}
