//! Acknowledgement as a public API: [`Receiver::peek_batch`] and
//! [`Peeked`], a batch of items that stay in the channel until they are
//! committed. The drainer and the reshard are built on it.

use std::fmt;
use std::ops::Deref;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::Receiver;
use crate::core::{RecvFailure, Shared, Wait};
use crate::err::{CommitError, RecvTimeoutError};

/// Items taken from a channel by [`Receiver::peek_batch`] that stay in it
/// until they are committed.
///
/// It derefs to the items, oldest first, and [`seqs`](Self::seqs) gives
/// their sequence numbers. [`commit`](Self::commit) removes them for good;
/// [`commit_first`](Self::commit_first) removes the first `n` and gives
/// the rest back. Dropped without a commit, it gives every item back to
/// the front of the channel: the next receive returns them again, and
/// they count as in the channel, not as received.
///
/// In the durable modes nothing read from disk is deleted until it is
/// committed: an uncommitted item survives a clean restart (it is written
/// back in front of the backlog, like the rest of memory) and a crash (in
/// `Persistent` mode, if it had reached disk). Committed items may still come again after
/// a crash (at least once, as every received item in the segment being
/// read): sinks that must not see an item twice drop the numbers they
/// have seen.
///
/// A receiver may hold several batches at once; each is committed or
/// given back on its own, and batches given back in any order come back
/// in send order.
pub struct Peeked<'a, T> {
    /// The receiver the items came from.
    receiver: &'a Receiver<T>,
    /// The items, oldest first.
    items: Vec<T>,
    /// Their sequence numbers.
    seqs: Vec<u64>,
    /// The lowest of `seqs`, as registered with the receiver.
    low: Option<u64>,
}

impl<T: Serialize + DeserializeOwned> Receiver<T> {
    /// Takes up to `limit` items that stay in the channel until committed:
    /// waits up to `timeout` for the first, then takes what is ready
    /// without waiting.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = sump::Builder::new("acks", dir.path()).open::<String>()?;
    /// for word in ["a", "b", "c"] {
    ///     tx.send(word.to_string())?;
    /// }
    /// let batch = rx.peek_batch(10, Duration::from_secs(1))?;
    /// assert_eq!(&batch[..], ["a", "b", "c"]);
    /// assert_eq!(batch.seqs(), [0, 1, 2]);
    /// batch.commit_first(2)?; // "c" goes back to the front
    /// assert_eq!(rx.recv()?, "c");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] when nothing arrived in time (also
    /// at once when `limit` is 0), [`RecvTimeoutError::Disconnected`] when
    /// the channel is empty and every sender is gone.
    pub fn peek_batch(&self, limit: usize, timeout: Duration) -> Result<Peeked<'_, T>, RecvTimeoutError> {
        let mut peeked = Peeked { receiver: self, items: Vec::new(), seqs: Vec::new(), low: None };
        match peeked.take(limit, Wait::timeout(timeout)) {
            Ok(0) | Err(RecvFailure::Empty) => Err(RecvTimeoutError::Timeout),
            Ok(_) => Ok(peeked),
            Err(RecvFailure::Disconnected) => Err(RecvTimeoutError::Disconnected),
        }
    }
}

impl<T: Serialize + DeserializeOwned> Peeked<'_, T> {
    /// Adds up to `limit` more items to the batch, waiting up to `timeout`
    /// for the first of them; returns how many were added (0 when none
    /// came in time or the channel is disconnected and empty). A drainer
    /// lingering for a fuller batch uses it.
    pub fn peek_more(&mut self, limit: usize, timeout: Duration) -> usize {
        self.take(limit, Wait::timeout(timeout)).unwrap_or(0)
    }

    fn take(&mut self, limit: usize, wait: Wait) -> Result<usize, RecvFailure> {
        let (shared, mut side) = self.receiver.core();
        let start = self.items.len();
        let taken = shared.peek(&mut side, limit, wait, &mut self.items, &mut self.seqs)?;
        if let Some(&low) = self.seqs[start..].iter().min() {
            if self.low.is_none_or(|registered| low < registered) {
                Shared::register_peek(&mut side, self.low, low);
                self.low = Some(low);
            }
        }
        Ok(taken)
    }
}

impl<T> Peeked<'_, T> {
    /// The items' sequence numbers, in the items' order: given at `send`,
    /// in send order, and unchanged across restarts and crashes, so a sink
    /// can tell an item it has already seen. (Records written by segment
    /// format version 1 carry none and are numbered as they are read.)
    pub fn seqs(&self) -> &[u64] {
        &self.seqs
    }

    /// Removes every item from the channel for good.
    ///
    /// # Errors
    ///
    /// [`CommitError`] when the commit could not be recorded on disk: the
    /// items are still committed here, but may come again after a restart.
    pub fn commit(self) -> Result<(), CommitError> {
        let all = self.items.len();
        self.commit_first(all)
    }

    /// Removes the first `n` items (all of them when `n` is larger) from
    /// the channel for good, and gives the rest back to its front, in
    /// order.
    ///
    /// # Errors
    ///
    /// As [`commit`](Self::commit).
    pub fn commit_first(self, n: usize) -> Result<(), CommitError> {
        let (committed, settled) = self.take_first(n);
        // Outside the receiver's state: an item's `Drop` may use the channel.
        drop(committed);
        settled
    }

    /// Commits the first `n` items, as [`commit_first`](Self::commit_first),
    /// and hands them over.
    pub(crate) fn take_first(mut self, n: usize) -> (Vec<T>, Result<(), CommitError>) {
        let n = n.min(self.items.len());
        let rest_items = self.items.split_off(n);
        let rest_seqs = self.seqs.split_off(n);
        let committed = std::mem::take(&mut self.items);
        let (shared, mut side) = self.receiver.core();
        shared.give_back(&mut side, rest_seqs, rest_items);
        let settled = shared.settle_peek(&mut side, self.low.take());
        drop(side);
        (committed, settled.map_err(|source| CommitError { source }))
    }
}

impl<T> Deref for Peeked<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.items
    }
}

impl<T> Drop for Peeked<'_, T> {
    fn drop(&mut self) {
        if self.low.is_none() && self.items.is_empty() {
            return;
        }
        let (shared, mut side) = self.receiver.core();
        let items = std::mem::take(&mut self.items);
        let seqs = std::mem::take(&mut self.seqs);
        shared.give_back(&mut side, seqs, items);
        if let Err(err) = shared.settle_peek(&mut side, self.low.take()) {
            tracing::error!(error = %err, "could not record read progress; read items may be delivered again");
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Peeked<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peeked").field("items", &self.items).field("seqs", &self.seqs).finish()
    }
}
