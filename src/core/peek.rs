//! Acknowledgement: items taken from the channel that stay in it until
//! they are committed (see [`crate::Peeked`]).
//!
//! A peeked item is received like any other, and then either committed
//! or given back to the front of the receiver's local batch, with its
//! sequence number, to be received again. What makes the items survive
//! a crash is that, while anything taken is uncommitted, the disk tier
//! keeps the segments read (`DiskQueue::set_hold`) instead of deleting
//! them; a commit deletes those whose every record is committed, which
//! is what records read progress. A clean shutdown writes the items given
//! back, like the rest of memory, in front of the backlog.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{ReceiverSide, RecvFailure, Shared, SideGuard, Wait};
use crate::sync::Ordering;

impl<T: Serialize + DeserializeOwned> Shared<T> {
    /// Takes up to `limit` items into `items` and their numbers into
    /// `seqs`, uncommitted: waits as `wait` allows for the first, then
    /// takes what is ready. Returns how many were taken; the caller
    /// registers them with [`register_peek`](Self::register_peek).
    pub(crate) fn peek(
        &self,
        side: &mut SideGuard<'_, T>,
        limit: usize,
        wait: Wait,
        items: &mut Vec<T>,
        seqs: &mut Vec<u64>,
    ) -> Result<usize, RecvFailure> {
        if limit == 0 {
            return Ok(0);
        }
        if self.durable && !side.holding {
            // Before anything is read: a segment the cursor finishes from
            // here on is kept until its records are committed.
            self.state.lock().disk.set_hold(true);
            side.holding = true;
        }
        let mut taken = 0;
        let mut wait = wait;
        let result = loop {
            if taken == limit {
                break Ok(taken);
            }
            match self.recv_numbered(side, wait) {
                Ok((seq, item)) => {
                    seqs.push(seq);
                    items.push(item);
                    taken += 1;
                    // Not registered as peeked until this returns.
                    side.in_peek = taken;
                }
                Err(failure) if taken == 0 => break Err(failure),
                Err(_) => break Ok(taken),
            }
            wait = Wait::Never;
        };
        side.in_peek = 0;
        result
    }
}

impl<T> Shared<T> {
    /// Notes a peeked batch whose lowest number is `low`, replacing the
    /// note `old` of the same batch.
    pub(crate) fn register_peek(side: &mut ReceiverSide<T>, old: Option<u64>, low: u64) {
        if let Some(old) = old {
            Self::unregister_peek(side, old);
        }
        *side.peeks.entry(low).or_insert(0) += 1;
    }

    fn unregister_peek(side: &mut ReceiverSide<T>, low: u64) {
        if let Some(count) = side.peeks.get_mut(&low) {
            *count -= 1;
            if *count == 0 {
                side.peeks.remove(&low);
            }
        }
    }

    /// Gives `items` (numbered `seqs`, ascending), taken but not
    /// committed, back to the front of the channel, so they are the next
    /// received. They count as in memory again and no longer as received.
    ///
    /// The items given back earlier and not yet taken again are at the
    /// front of the local batch; the new ones are merged in among them by
    /// number, so that batches given back in any order come back in send
    /// order, and the front of the local batch is the oldest uncommitted
    /// item given back (see `ReceiverSide::oldest_uncommitted`). Every
    /// item taken is older than every item not yet taken, so the merged
    /// region stays in front of the rest.
    pub(crate) fn give_back(&self, side: &mut ReceiverSide<T>, seqs: Vec<u64>, items: Vec<T>) {
        if items.is_empty() {
            return;
        }
        let count = items.len();
        let mut memory = self.memory.lock();
        self.fold_taken(&mut memory);
        memory.in_memory += count;
        let received = self.received.load(Ordering::Relaxed);
        self.received.store(received.saturating_sub(count as u64), Ordering::Relaxed);
        drop(memory);
        let newest = seqs.last().copied().unwrap_or(0);
        let mut given: Vec<(u64, T)> = seqs.into_iter().zip(items).collect();
        if side.local.front_seq().is_some_and(|front| side.put_back > 0 && front < newest) {
            // Interleave with what is already given back (rare: several
            // batches out at once, settled newest first).
            let mut earlier = Vec::with_capacity(side.put_back);
            for _ in 0..side.put_back {
                earlier.extend(side.local.pop_front());
            }
            earlier.append(&mut given);
            earlier.sort_by_key(|&(seq, _)| seq);
            given = earlier;
            side.put_back = 0;
        }
        side.put_back += given.len();
        for (seq, item) in given.into_iter().rev() {
            side.local.push_front(seq, item);
        }
    }

    /// A peeked batch whose lowest number is `low` is settled (committed,
    /// or given back first): deletes the held segments whose records are
    /// now all committed, and stops holding when nothing taken is
    /// uncommitted. The error is that of a deletion that could not be
    /// recorded as read: those items may come again after a restart.
    pub(crate) fn settle_peek(&self, side: &mut ReceiverSide<T>, low: Option<u64>) -> std::io::Result<()> {
        if let Some(low) = low {
            Self::unregister_peek(side, low);
        }
        let oldest = side.oldest_uncommitted();
        let done = oldest.or(side.last_taken.map(|seq| seq + 1)).unwrap_or(0);
        self.raise_done_below(done);
        if !side.holding {
            return Ok(());
        }
        let mut state = self.state.lock();
        let released = state.disk.release_retired(oldest);
        if oldest.is_none() {
            state.disk.set_hold(false);
            side.holding = false;
        }
        if matches!(released, Ok(true)) {
            self.wake_senders(&mut state);
        }
        released.map(|_| ())
    }

    /// Everything taken is committed: see [`settle_peek`](Self::settle_peek).
    pub(crate) fn release_committed(&self, side: &mut ReceiverSide<T>) {
        if let Err(err) = self.settle_peek(side, None) {
            tracing::error!(error = %err, "could not record read progress; read items may be delivered again");
        }
    }
}
