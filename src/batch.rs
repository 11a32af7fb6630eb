//! Receiving in batches, and what crossbeam-channel has on both handles:
//! the sizes of a channel as `len`, `is_empty` and `capacity`,
//! `same_channel`, and `Debug` output that shows the counters.

use serde::de::DeserializeOwned;
use serde::Serialize;

use std::fmt;

use crate::channel::{Receiver, Sender};
use crate::core::{RecvFailure, Shared, SideGuard, Wait};
use crate::err::{RecvError, TryRecvError};

impl<T: Serialize + DeserializeOwned> Receiver<T> {
    /// Appends up to `limit` items to `buf`: waits for the first, then
    /// takes what is ready without waiting. Returns how many were added
    /// (0 only when `limit` is 0).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = sump::Builder::new("batches", dir.path()).memory_capacity(4).open::<u32>()?;
    /// for i in 0..10 {
    ///     tx.send(i)?; // four in memory, six on disk
    /// }
    /// let mut buf = Vec::new();
    /// assert_eq!(rx.recv_many(&mut buf, 8)?, 8);
    /// assert_eq!(rx.recv_many(&mut buf, 8)?, 2);
    /// assert_eq!(buf, (0..10).collect::<Vec<_>>());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`RecvError`] when the channel is empty and every sender is gone.
    ///
    /// # Blocking
    ///
    /// Until the first item arrives (or the last sender leaves).
    pub fn recv_many(&self, buf: &mut Vec<T>, limit: usize) -> Result<usize, RecvError> {
        if limit == 0 {
            return Ok(0);
        }
        let (shared, mut side) = self.core();
        buf.push(shared.recv(&mut side, Wait::Forever).map_err(|_| RecvError)?);
        Ok(1 + take_ready(shared, &mut side, buf, limit - 1))
    }

    /// Appends up to `limit` items that are ready to `buf`, without
    /// waiting. Returns how many were added (0 only when `limit` is 0).
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when no item is ready,
    /// [`TryRecvError::Disconnected`] when none is left and every sender
    /// is gone.
    pub fn try_recv_many(&self, buf: &mut Vec<T>, limit: usize) -> Result<usize, TryRecvError> {
        if limit == 0 {
            return Ok(0);
        }
        let (shared, mut side) = self.core();
        match shared.recv(&mut side, Wait::Never) {
            Ok(item) => buf.push(item),
            Err(RecvFailure::Empty) => return Err(TryRecvError::Empty),
            Err(RecvFailure::Disconnected) => return Err(TryRecvError::Disconnected),
        }
        Ok(1 + take_ready(shared, &mut side, buf, limit - 1))
    }
}

/// Takes up to `limit` ready items into `buf`, holding the receiver
/// throughout; how many.
fn take_ready<T: Serialize + DeserializeOwned>(
    shared: &Shared<T>,
    side: &mut SideGuard<'_, T>,
    buf: &mut Vec<T>,
    limit: usize,
) -> usize {
    let mut taken = 0;
    while taken < limit {
        match shared.recv(side, Wait::Never) {
            Ok(item) => buf.push(item),
            Err(_) => break,
        }
        taken += 1;
    }
    taken
}

impl<T> Receiver<T> {
    /// Items waiting in the channel, in memory and on disk.
    pub fn len(&self) -> usize {
        waiting(&self.stats())
    }

    /// Whether no item is waiting, in memory or on disk.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `None`: the channel has no bound in items. Memory holds at most
    /// [`Builder::memory_capacity`](crate::Builder::memory_capacity) items,
    /// but the disk is bounded in bytes ([`Builder::max_disk_bytes`](crate::Builder::max_disk_bytes)),
    /// so how many items fit depends on their size. As crossbeam-channel's
    /// `capacity()` for an unbounded channel.
    pub fn capacity(&self) -> Option<usize> {
        None
    }
}

impl<T> Sender<T> {
    /// Items waiting in the channel, in memory and on disk.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = sump::Builder::new("sizes", dir.path()).memory_capacity(2).open::<u8>()?;
    /// for i in 0..5 {
    ///     tx.send(i)?;
    /// }
    /// assert_eq!((tx.len(), rx.len()), (5, 5)); // two in memory, three on disk
    /// rx.recv()?;
    /// assert_eq!(tx.len(), 4);
    /// assert!(!tx.is_empty());
    /// assert_eq!(tx.capacity(), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> usize {
        waiting(&self.stats())
    }

    /// Whether no item is waiting, in memory or on disk.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `None`: the channel has no bound in items; see [`Receiver::capacity`].
    pub fn capacity(&self) -> Option<usize> {
        None
    }
}

/// Items in memory and on disk, saturating.
fn waiting(stats: &crate::Stats) -> usize {
    stats.in_memory.saturating_add(usize::try_from(stats.on_disk).unwrap_or(usize::MAX))
}

/// A [`Sender`] or the [`Receiver`]: what
/// [`Sender::same_channel`] and [`Receiver::same_channel`] compare.
pub trait Handle<T>: sealed::Sealed {
    /// Identifies the channel the handle belongs to while it is open.
    #[doc(hidden)]
    fn handle_key(&self) -> usize;
}

mod sealed {
    pub trait Sealed {}
    impl<T> Sealed for crate::Sender<T> {}
    impl<T> Sealed for crate::Receiver<T> {}
}

impl<T> Handle<T> for Sender<T> {
    fn handle_key(&self) -> usize {
        std::ptr::from_ref(self.core()) as usize
    }
}

impl<T> Handle<T> for Receiver<T> {
    fn handle_key(&self) -> usize {
        std::ptr::from_ref(self.shared()) as usize
    }
}

impl<T> Sender<T> {
    /// The channel's id; see [`Receiver::channel_id`].
    pub fn channel_id(&self) -> crate::ChannelId {
        self.core().channel_id
    }

    /// Whether `other` (a sender or the receiver) belongs to the same
    /// channel as this sender. Two opens of one channel directory, one
    /// after the other, are different channels.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = sump::channel::<u8>("one", dir.path())?;
    /// let (other_tx, _other_rx) = sump::channel::<u8>("two", dir.path())?;
    /// assert!(tx.same_channel(&tx.clone()));
    /// assert!(tx.same_channel(&rx));
    /// assert!(!tx.same_channel(&other_tx));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn same_channel(&self, other: &impl Handle<T>) -> bool {
        self.handle_key() == other.handle_key()
    }
}

impl<T> Receiver<T> {
    /// The channel's id: with an item's sequence number, it names the item
    /// uniquely, across restarts and across channels (see [`ChannelId`](crate::ChannelId)).
    pub fn channel_id(&self) -> crate::ChannelId {
        self.shared().channel_id
    }

    /// Whether `other` (a sender, or a receiver) belongs to the same
    /// channel as this receiver; see [`Sender::same_channel`].
    pub fn same_channel(&self, other: &impl Handle<T>) -> bool {
        self.handle_key() == other.handle_key()
    }
}

/// The counters `Debug` shows for a handle.
fn debug_counters(f: &mut fmt::Formatter<'_>, name: &str, stats: &crate::Stats) -> fmt::Result {
    f.debug_struct(name)
        .field("in_memory", &stats.in_memory)
        .field("on_disk", &stats.on_disk)
        .field("disk_bytes", &stats.disk_bytes)
        .field("sent", &stats.sent)
        .field("received", &stats.received)
        .field("spilled", &stats.spilled)
        .field("dropped", &stats.dropped)
        .finish_non_exhaustive()
}

impl<T> fmt::Debug for Sender<T> {
    /// The channel's counters, as [`stats`](Sender::stats) has them:
    /// `Sender { in_memory: 2, on_disk: 3, disk_bytes: .., sent: 5, .. }`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_counters(f, "Sender", &self.stats())
    }
}

impl<T> fmt::Debug for Receiver<T> {
    /// As the sender's.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_counters(f, "Receiver", &self.stats())
    }
}
