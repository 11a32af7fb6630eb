//! Receiving in batches, and the sizes of a channel as `len`,
//! `is_empty` and `capacity` on both handles, as crossbeam-channel has
//! them.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{Receiver, Sender};
use crate::core::{RecvFailure, Wait};
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
        buf.push(self.recv_with(Wait::Forever).map_err(|_| RecvError)?);
        Ok(1 + self.take_ready(buf, limit - 1))
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
        match self.recv_with(Wait::Never) {
            Ok(item) => buf.push(item),
            Err(RecvFailure::Empty) => return Err(TryRecvError::Empty),
            Err(RecvFailure::Disconnected) => return Err(TryRecvError::Disconnected),
        }
        Ok(1 + self.take_ready(buf, limit - 1))
    }

    /// Takes up to `limit` ready items into `buf`; how many.
    fn take_ready(&self, buf: &mut Vec<T>, limit: usize) -> usize {
        let mut taken = 0;
        while taken < limit {
            match self.recv_with(Wait::Never) {
                Ok(item) => buf.push(item),
                Err(_) => break,
            }
            taken += 1;
        }
        taken
    }
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
