//! The public handles, [`Sender`] and [`Receiver`], and the receiver's
//! iterators. Each method is a thin wrapper over the channel core.

use std::fmt;
use std::io;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::core::{ReceiverSide, RecvFailure, SendFailure, Shared, Wait};
use crate::err::{CloseError, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError};
use crate::stats::Stats;
use crate::sync::{Arc, FastMutex, FastMutexGuard};

/// The sending half of a channel. Clone it to send from several threads;
/// it is `Send + Sync`, so it can also be shared by reference.
///
/// When the last `Sender` is dropped the channel is disconnected: the
/// receiver gets every item still in memory or on disk, then
/// [`RecvError`].
pub struct Sender<T> {
    /// The channel core, shared with the receiver and other senders.
    shared: Arc<Shared<T>>,
}

/// The receiving half of a channel. There is exactly one; it is not
/// `Clone`, but it is `Send` and `Sync`: threads or tasks that share it
/// (behind an `Arc`) take turns, each item going to one of them. A
/// blocking receive that waits lets the others receive meanwhile.
///
/// Dropping it disconnects the channel: later sends fail and hand their
/// item back, and what was still in the channel is dropped (memory) and
/// deleted (disk).
pub struct Receiver<T> {
    /// The channel core, shared with the senders.
    shared: Arc<Shared<T>>,
    /// The receiver's batch and disk cursor, used only by this handle.
    side: FastMutex<ReceiverSide<T>>,
    /// Set by `close`, so that `Drop` does not shut down a second time.
    closed: bool,
}

impl<T> Sender<T> {
    pub(crate) fn from_shared(shared: Arc<Shared<T>>) -> Sender<T> {
        Sender { shared }
    }

    /// Pushes segment bytes still in the write buffer to the OS and, unless
    /// the sync policy is [`SyncPolicy::Never`](crate::SyncPolicy::Never),
    /// to stable storage. Never needed for the receiver to see an item.
    ///
    /// # Errors
    ///
    /// The error of the write or sync that failed. Nothing is lost: the
    /// bytes stay buffered for the next attempt.
    pub fn flush(&self) -> io::Result<()> {
        self.shared.flush_all()
    }

    /// A snapshot of the channel's contents and counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// The channel core.
    pub(crate) fn core(&self) -> &Shared<T> {
        &self.shared
    }
}

impl<T: Serialize + DeserializeOwned> Sender<T> {
    /// Sends an item. It goes to memory when there is room and nothing is
    /// waiting on disk; otherwise it is encoded and appended to the active
    /// segment.
    ///
    /// `Ok` means the item is in the channel and visible to the receiver,
    /// in order after everything this sender sent before; no flush is
    /// needed. Under [`WhenFull::DropNewest`](crate::WhenFull::DropNewest)
    /// and [`WhenFull::DropOldest`](crate::WhenFull::DropOldest), `Ok` also
    /// covers an item (or older items) the policy dropped; see
    /// [`Stats::dropped`].
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = sump::channel("greetings", dir.path())?;
    /// std::thread::spawn(move || tx.send("hello".to_string()).unwrap());
    /// assert_eq!(rx.recv()?, "hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The item comes back inside the error when the receiver is gone, or
    /// when the item had to go to disk and could not be written (disk
    /// full, an I/O error, an item larger than a segment, or an item serde
    /// refuses to encode); then nothing of it was written.
    ///
    /// # Blocking
    ///
    /// Only when memory and disk are both at their limits and the policy
    /// is [`WhenFull::Block`](crate::WhenFull::Block): it waits until the
    /// receiver frees disk space.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        self.shared.send(item, Wait::Forever).map_err(|failure| match failure {
            SendFailure::Io(item, err) => SendError::io(item, err),
            SendFailure::Full(item) | SendFailure::Timeout(item) | SendFailure::Disconnected(item) => {
                SendError::disconnected(item)
            }
        })
    }

    /// Sends every item of `items`, in order, as [`send`](Self::send)
    /// would one by one, but taking the channel lock once for all the
    /// items that go to memory.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = sump::channel::<u32>("batch", dir.path())?;
    /// tx.send_batch(0..100)?;
    /// assert!(rx.try_iter().eq(0..100));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), for the first item that could not be
    /// sent. The error holds that item and every item after it, in order;
    /// the items before it are in the channel.
    ///
    /// # Blocking
    ///
    /// As [`send`](Self::send).
    pub fn send_batch(&self, items: impl IntoIterator<Item = T>) -> Result<(), SendError<Vec<T>>> {
        let mut items = items.into_iter().collect::<Vec<T>>().into_iter();
        self.shared.send_batch(&mut items, Wait::Forever).map_err(|failure| {
            let unsent = |item: T, rest: std::vec::IntoIter<T>| std::iter::once(item).chain(rest).collect::<Vec<T>>();
            match failure {
                SendFailure::Io(item, err) => SendError::io(unsent(item, items), err),
                SendFailure::Full(item) | SendFailure::Timeout(item) | SendFailure::Disconnected(item) => {
                    SendError::disconnected(unsent(item, items))
                }
            }
        })
    }

    /// Sends an item without ever blocking.
    ///
    /// ```
    /// use sump::{Builder, TrySendError};
    ///
    /// let dir = tempfile::tempdir()?;
    /// // Room for one item in memory and one small segment on disk.
    /// let (tx, _rx) = Builder::new("tiny", dir.path())
    ///     .memory_capacity(1)
    ///     .segment_bytes(40)
    ///     .max_disk_bytes(40)
    ///     .open::<u8>()?;
    /// tx.try_send(1)?; // memory
    /// tx.try_send(2)?; // disk
    /// assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] when memory and disk are at their limits,
    /// [`TrySendError::Disconnected`] when the receiver is gone,
    /// [`TrySendError::Io`] when the disk refused the item. Each gives the
    /// item back.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.shared.send(item, Wait::Never).map_err(|failure| match failure {
            SendFailure::Full(item) | SendFailure::Timeout(item) => TrySendError::Full(item),
            SendFailure::Disconnected(item) => TrySendError::Disconnected(item),
            SendFailure::Io(item, err) => TrySendError::Io(item, err),
        })
    }

    /// Sends an item, waiting at most `timeout` for space.
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError::Timeout`] when memory and disk stayed at their
    /// limits for `timeout`; otherwise as [`try_send`](Self::try_send).
    ///
    /// # Blocking
    ///
    /// As [`send`](Self::send), for at most `timeout`.
    pub fn send_timeout(&self, item: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.shared.send(item, Wait::timeout(timeout)).map_err(|failure| match failure {
            SendFailure::Full(item) | SendFailure::Timeout(item) => SendTimeoutError::Timeout(item),
            SendFailure::Disconnected(item) => SendTimeoutError::Disconnected(item),
            SendFailure::Io(item, err) => SendTimeoutError::Io(item, err),
        })
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Sender<T> {
        self.shared.add_sender();
        Sender { shared: Arc::clone(&self.shared) }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.remove_sender();
    }
}

impl<T> Receiver<T> {
    pub(crate) fn from_shared(shared: Arc<Shared<T>>, side: ReceiverSide<T>) -> Receiver<T> {
        Receiver { shared, side: FastMutex::new(side), closed: false }
    }

    /// A snapshot of the channel's contents and counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// The channel core and the receiver's own state, for the
    /// acknowledgement API ([`crate::Peeked`]).
    pub(crate) fn core(&self) -> (&Shared<T>, FastMutexGuard<'_, ReceiverSide<T>>) {
        (&self.shared, self.side.lock())
    }

    /// The channel core, not kept alive by the reference.
    #[cfg(any(feature = "metrics", test))]
    pub(crate) fn weak_shared(&self) -> std::sync::Weak<Shared<T>> {
        Arc::downgrade(&self.shared)
    }

    /// How the channel is named in published metrics, if it is.
    #[cfg(feature = "metrics")]
    pub(crate) fn labels(&self) -> Option<crate::options::MetricLabels> {
        self.shared.labels.clone()
    }

    /// The channel core alone.
    pub(crate) fn shared(&self) -> &Shared<T> {
        &self.shared
    }

    /// A handle that reads the channel's stats from another thread without
    /// keeping the channel connected.
    pub(crate) fn monitor(&self) -> Monitor<T> {
        Monitor { shared: Arc::clone(&self.shared) }
    }
}

/// Reads a channel's stats; not a sender, so it does not keep the channel
/// connected.
pub(crate) struct Monitor<T> {
    /// The channel core.
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Monitor<T> {
    fn clone(&self) -> Monitor<T> {
        Monitor { shared: Arc::clone(&self.shared) }
    }
}

impl<T> Monitor<T> {
    /// A snapshot of the channel's contents and counters.
    pub(crate) fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Every item numbered below this has been delivered (see
    /// `Shared::done_below`).
    pub(crate) fn done_below(&self) -> u64 {
        self.shared.done_below()
    }

    /// The number the next item accepted will get.
    pub(crate) fn next_seq(&self) -> u64 {
        self.shared.next_seq()
    }
}

impl<T: Serialize + DeserializeOwned> Receiver<T> {
    pub(crate) fn recv_with(&self, wait: Wait) -> Result<T, RecvFailure> {
        self.shared.recv(&mut self.side.lock(), wait)
    }

    /// Receives the next item, waiting for one if the channel is empty.
    ///
    /// Items come in one order that keeps each sender's order, whether
    /// they went through memory or disk.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = sump::channel::<u32>("r", dir.path())?;
    /// tx.send(1)?;
    /// drop(tx);
    /// assert_eq!(rx.recv(), Ok(1));
    /// assert_eq!(rx.recv(), Err(sump::RecvError));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`RecvError`] once every sender is gone and every item, in memory
    /// and on disk, has been received.
    ///
    /// # Blocking
    ///
    /// While the channel is empty and a sender remains.
    pub fn recv(&self) -> Result<T, RecvError> {
        self.recv_with(Wait::Forever).map_err(|_| RecvError)
    }

    /// Receives the next item if there is one, without blocking.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when nothing is there yet,
    /// [`TryRecvError::Disconnected`] when nothing is there and every
    /// sender is gone.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.recv_with(Wait::Never).map_err(|failure| match failure {
            RecvFailure::Empty => TryRecvError::Empty,
            RecvFailure::Disconnected => TryRecvError::Disconnected,
        })
    }

    /// Receives the next item, waiting at most `timeout` for one.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] when nothing arrived in time,
    /// [`RecvTimeoutError::Disconnected`] when nothing is left and every
    /// sender is gone.
    ///
    /// # Blocking
    ///
    /// For at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_with(Wait::timeout(timeout)).map_err(|failure| match failure {
            RecvFailure::Empty => RecvTimeoutError::Timeout,
            RecvFailure::Disconnected => RecvTimeoutError::Disconnected,
        })
    }

    /// An iterator that receives items, blocking, until the channel is
    /// disconnected and empty.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { receiver: self }
    }

    /// An iterator over the items available now; it ends at the first
    /// [`try_recv`](Self::try_recv) that finds nothing.
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter { receiver: self }
    }

    /// Ends the receiving side now, as dropping the receiver does, and
    /// reports what could not be kept.
    ///
    /// In [`Durability::Overflow`](crate::Durability::Overflow) items still
    /// in the channel are dropped and segments deleted, and this returns
    /// `Ok`. In the durable modes the items still in memory are written to
    /// disk, ahead of the disk backlog, and read progress is recorded, so
    /// that the next `open` delivers exactly what was not received.
    ///
    /// ```
    /// use sump::{Builder, Durability};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = Builder::new("jobs", dir.path()).durability(Durability::Persistent).open::<u32>()?;
    /// tx.send(1)?;
    /// tx.send(2)?;
    /// assert_eq!(rx.recv()?, 1);
    /// drop(tx);
    /// rx.close()?; // 2 is written to disk
    ///
    /// let (_tx, rx) = Builder::new("jobs", dir.path()).durability(Durability::Persistent).open::<u32>()?;
    /// assert_eq!(rx.recv()?, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`CloseError`] when items could not be written (a full disk, an item
    /// serde refuses); it says how many. Dropping the receiver does the
    /// same but can only log the error.
    pub fn close(mut self) -> Result<(), CloseError> {
        self.closed = true;
        self.shared.remove_receiver(&mut self.side.lock())
    }
}

impl<T> Receiver<T> {
    /// Drops the receiver as a crash would: no clean shutdown, nothing
    /// persisted, no progress recorded, so a durable channel's next open
    /// reads again what this receiver read. Tests use it to crash; a
    /// reshard uses it to back out of a step that failed.
    pub(crate) fn crash(mut self) {
        self.closed = true;
        self.shared.crash_receiver();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if let Err(err) = self.shared.remove_receiver(&mut self.side.lock()) {
            tracing::error!(error = %err, "closing the channel lost items");
        }
    }
}

/// A blocking iterator over a [`Receiver`]'s items; see [`Receiver::iter`].
pub struct Iter<'a, T> {
    /// The receiver it borrows.
    receiver: &'a Receiver<T>,
}

impl<T: Serialize + DeserializeOwned> Iterator for Iter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.receiver.recv().ok()
    }
}

impl<T> fmt::Debug for Iter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Iter { .. }")
    }
}

/// A non-blocking iterator over a [`Receiver`]'s items; see
/// [`Receiver::try_iter`].
pub struct TryIter<'a, T> {
    /// The receiver it borrows.
    receiver: &'a Receiver<T>,
}

impl<T: Serialize + DeserializeOwned> Iterator for TryIter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.receiver.try_recv().ok()
    }
}

impl<T> fmt::Debug for TryIter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TryIter { .. }")
    }
}

/// An owning blocking iterator over a [`Receiver`]'s items, from
/// `Receiver::into_iter`.
pub struct IntoIter<T> {
    /// The receiver it owns.
    receiver: Receiver<T>,
}

impl<T: Serialize + DeserializeOwned> Iterator for IntoIter<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.receiver.recv().ok()
    }
}

impl<T> fmt::Debug for IntoIter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IntoIter { .. }")
    }
}

impl<'a, T: Serialize + DeserializeOwned> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T: Serialize + DeserializeOwned> IntoIterator for Receiver<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;

    fn into_iter(self) -> IntoIter<T> {
        IntoIter { receiver: self }
    }
}
