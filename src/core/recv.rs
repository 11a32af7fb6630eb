//! The receive path: the receiver's local batch, items decoded ahead,
//! the segment cursor, memory, then the disk (in that order, which is
//! what makes the channel FIFO; see the parent module), and how the
//! receiver waits: a short spin on a hint, then a park.

use std::mem;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{ReceiverSide, RecvFailure, Shared, SideGuard, Wait};
use crate::encoding;
use crate::segment::Peek;
use crate::sync::{yield_now, FastMutexGuard, Ordering};

/// What the receiver got from its segment cursor.
enum Taken<T> {
    /// The next item and its number.
    Item((u64, T)),
    /// A damaged record or segment was skipped; look again.
    Skipped,
    /// Nothing readable under the cursor.
    Nothing,
}

/// How long a receiver waits before retrying a disk backlog it could not
/// read (its bytes could not be flushed, or a segment could not be opened).
const STUCK_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// Spins a receiver briefly before it parks: a few rounds of busy-waiting
/// that double each time, then a few yields.
#[derive(Debug, Default)]
struct Spin {
    /// Rounds spun so far.
    round: u32,
}

impl Spin {
    /// Rounds that busy-wait (`2^round` spin hints each).
    const SPIN_ROUNDS: u32 = 6;
    /// Rounds in all, the later ones yielding the thread. None under loom:
    /// spinning only multiplies the interleavings to explore.
    const ROUNDS: u32 = if cfg!(loom) { 0 } else { 10 };

    fn may_spin(&self) -> bool {
        self.round < Self::ROUNDS
    }

    fn spin(&mut self) {
        if self.round < Self::SPIN_ROUNDS {
            for _ in 0..1u32 << self.round {
                std::hint::spin_loop();
            }
        } else {
            yield_now();
        }
        self.round += 1;
    }
}

/// Spin hints a receiver that found memory empty waits, once an item has
/// arrived, before it takes the lock to swap memory out, so that items
/// arriving close together are taken in one swap.
const GATHER_SPINS: u32 = if cfg!(loom) { 0 } else { 128 };

/// Smallest memory bound at which the receiver waits for items to gather.
const GATHER_MIN_CAPACITY: usize = 1024;

/// A swap of memory that brought fewer items than this makes the receiver
/// wait for items to gather before the next one, while items keep coming.
const GATHER_BELOW: usize = 256;

impl<T: Serialize + DeserializeOwned> Shared<T> {
    /// Receives one item, waiting as `wait` allows.
    pub(crate) fn recv(&self, side: &mut SideGuard<'_, T>, wait: Wait) -> Result<T, RecvFailure> {
        let (_, item) = self.recv_numbered(side, wait)?;
        if side.put_back == 0 && side.peeks.is_empty() {
            // Taking is committing here: everything taken so far is done.
            self.raise_done_below(side.last_taken.map_or(0, |seq| seq + 1));
            if side.holding {
                // The last item given back uncommitted was taken, and
                // nothing peeked is out: everything read is committed.
                self.release_committed(side);
            }
        }
        Ok(item)
    }

    /// Receives one item and its sequence number, waiting as `wait` allows.
    ///
    /// A receive that parks releases `side` meanwhile, so that another
    /// receive (blocking or async) may run; it looks again from the start
    /// when it wakes.
    pub(crate) fn recv_numbered(&self, side: &mut SideGuard<'_, T>, wait: Wait) -> Result<(u64, T), RecvFailure> {
        let taken = self.take_numbered(side, wait);
        if let Ok((seq, _)) = &taken {
            side.last_taken = side.last_taken.max(Some(*seq));
        }
        taken
    }

    /// [`recv_numbered`](Self::recv_numbered) without the bookkeeping of
    /// what was taken.
    fn take_numbered(&self, side: &mut SideGuard<'_, T>, wait: Wait) -> Result<(u64, T), RecvFailure> {
        let mut spin = Spin::default();
        loop {
            if let Some(item) = side.local.pop_front() {
                side.put_back = side.put_back.saturating_sub(1);
                // Single writer: a load and a store, no read-modify-write.
                let taken = self.taken.load(Ordering::Relaxed);
                self.taken.store(taken + 1, Ordering::Release);
                self.count_received();
                return Ok(item);
            }
            if let Some(item) = side.prefetched.pop_front() {
                self.prefetched.store(side.prefetched.len(), Ordering::Relaxed);
                self.count_received();
                return Ok(item);
            }
            match self.take_from_cursor(side) {
                Taken::Item(item) => return Ok(item),
                Taken::Skipped => continue,
                Taken::Nothing => {}
            }
            if side.last_swap > 0
                && side.last_swap < GATHER_BELOW
                && self.capacity >= GATHER_MIN_CAPACITY
                && self.queued.load(Ordering::Relaxed)
            {
                // Items are streaming in and the last swap took only a few:
                // let more gather before taking the lock that every send
                // needs (see the gathering below).
                for _ in 0..GATHER_SPINS {
                    std::hint::spin_loop();
                }
            }
            // Memory is empty from here on (swapped out, or found empty);
            // cleared before looking, so that an item arriving after the
            // look sets it again.
            // Without the hint, memory is left to the look under the
            // channel lock below.
            if self.queued.swap(false, Ordering::Relaxed) && self.swap_memory(side) {
                continue;
            }
            let mut state = self.state.lock();
            let next_seq = {
                let mut memory = self.memory.lock();
                if !memory.items.is_empty() {
                    side.last_swap = memory.items.len();
                    mem::swap(&mut side.local, &mut memory.items);
                    continue;
                }
                self.fold_taken(&mut memory);
                Self::next_seq_of(&state, &memory)
            };
            if state.disk.items() == 0 && side.put_back == 0 && side.peeks.is_empty() && side.in_peek == 0 {
                // Empty, with nothing taken left uncommitted: every item
                // numbered so far is done.
                self.raise_done_below(next_seq);
            }
            if self.keeps_spilled() && state.disk.items() > 0 {
                // The next frames may be ones whose items were kept: then
                // the cursor need not wait for the writer to flush them.
                // Nothing is in `prefetched` here: it is handed out first.
                state.staged.hand_over(&mut side.kept, 0, 0);
                if Self::kept_at_cursor(side) {
                    continue;
                }
            }
            // Records on disk that cannot be reached right now (the writer
            // cannot flush them to a full disk, say): retry shortly.
            let mut stuck = false;
            if state.disk.items() > 0 && !state.disk.awaiting_sync() {
                let before = side.reader.place();
                match state.disk.position(&mut side.reader) {
                    Ok(freed) => {
                        if freed {
                            self.after_disk_change(&mut state);
                        }
                        let moved = side.reader.place() != before || freed;
                        if (moved && side.reader.has_more()) || state.disk.items() == 0 {
                            continue;
                        }
                        stuck = true;
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                        tracing::debug!(error = %err, "the disk backlog is not readable yet; retrying");
                        stuck = true;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot read the disk backlog yet; retrying");
                        stuck = true;
                    }
                }
            }
            if !stuck && state.senders == 0 {
                return Err(RecvFailure::Disconnected);
            }
            if state.disk.orphaned() && state.disk.items() == 0 {
                // The directory is gone: what could be delivered was, and
                // nothing more can arrive.
                return Err(RecvFailure::Disconnected);
            }
            let mut deadline = match wait {
                Wait::Never => return Err(RecvFailure::Empty),
                Wait::Until(deadline) if Instant::now() >= deadline => return Err(RecvFailure::Empty),
                Wait::Until(deadline) => Some(deadline),
                Wait::Forever => None,
                Wait::Register(waker, id) => {
                    if !self.note_waiting(&mut state) {
                        continue;
                    }
                    state.recv_wakers.register(waker, id);
                    self.recv_waiters.store(state.recv_wakers.len(), Ordering::Relaxed);
                    if stuck {
                        super::wakers::wake_later(waker, STUCK_RETRY);
                    }
                    return Err(RecvFailure::Empty);
                }
            };
            if stuck {
                let retry = Instant::now() + STUCK_RETRY;
                deadline = Some(deadline.map_or(retry, |d| d.min(retry)));
            } else if spin.may_spin() {
                // An item is often only a moment away: a short spin costs
                // less than parking and being woken. It watches the hint,
                // and takes the lock again only once the hint says memory
                // has items or the spinning is over.
                drop(state);
                spin.spin();
                while spin.may_spin() && !self.queued.load(Ordering::Relaxed) {
                    spin.spin();
                }
                if self.queued.load(Ordering::Relaxed) && self.capacity >= GATHER_MIN_CAPACITY {
                    // Let a few more items join before taking them all at
                    // once: every swap pulls the lock away from the senders.
                    // Not with a small memory bound, which the senders
                    // could fill meanwhile and spill.
                    for _ in 0..GATHER_SPINS {
                        std::hint::spin_loop();
                    }
                }
                continue;
            }
            if !self.note_waiting(&mut state) {
                continue;
            }
            state.receivers_waiting += 1;
            // This one has not been notified yet.
            state.receivers_notified = false;
            FastMutexGuard::unlocked(side, || {
                let mut state = state;
                match deadline {
                    Some(deadline) => {
                        self.ready.wait_until(&mut state, deadline);
                    }
                    None => self.ready.wait(&mut state),
                }
                state.receivers_waiting -= 1;
                // Released before `side` is taken again: `side` comes
                // before the channel lock, always.
                drop(state);
            });
        }
    }

    /// Swaps the whole of memory into the local batch, under the memory
    /// lock alone; whether it held anything. Memory holds only items older
    /// than everything on disk, so they come next.
    fn swap_memory(&self, side: &mut ReceiverSide<T>) -> bool {
        let mut memory = self.memory.lock();
        side.last_swap = memory.items.len();
        if memory.items.is_empty() {
            return false;
        }
        mem::swap(&mut side.local, &mut memory.items);
        true
    }

    /// Before a receive parks or registers its waker: tells senders into
    /// memory to wake it, unless memory received an item since the
    /// receive looked (then it looks again: `false`). Under both locks, so
    /// no item slips in between the look and the note.
    fn note_waiting(&self, _state: &mut super::State<T>) -> bool {
        let mut memory = self.memory.lock();
        if !memory.items.is_empty() {
            return false;
        }
        memory.receiver_waiting = true;
        true
    }

    /// Takes the record under the cursor, if there is one below its limit
    /// or its item was kept: reads and decodes it (or takes the kept item)
    /// and consumes it. Damaged records are consumed and counted, never
    /// returned.
    fn take_from_cursor(&self, side: &mut ReceiverSide<T>) -> Taken<T> {
        // A kept item is taken without reading its frame, which may not be
        // in the file yet, or may not be readable right now.
        if self.keeps_spilled() && Self::kept_at_cursor(side) {
            return self.take_records(side);
        }
        let Some(cursor) = side.reader.cursor() else {
            return Taken::Nothing;
        };
        match cursor.peek() {
            Ok(Peek::Record { .. }) => self.take_records(side),
            // Reading the header moves the cursor to where the first
            // frame starts, which may be a kept one.
            Ok(Peek::Exhausted) => {
                if self.keeps_spilled() && Self::kept_at_cursor(side) {
                    self.take_records(side)
                } else {
                    Taken::Nothing
                }
            }
            Ok(Peek::Damaged { reason, resume }) => {
                tracing::error!(%reason, "damaged record in segment; skipping it");
                cursor.mark_damaged();
                cursor.skip_to(resume.unwrap_or(cursor.limit()));
                Taken::Skipped
            }
            Ok(Peek::DamagedActive { reason }) => {
                // Seal the segment so the damage can be told from a write
                // in progress; the records it cost are counted when the
                // cursor leaves the segment.
                tracing::error!(%reason, "damaged record in the active segment; sealing it");
                let mut state = self.state.lock();
                if let Err(err) = state.disk.seal_active(&mut side.reader) {
                    state.disk.abandon(&mut side.reader, &format!("{reason}; and sealing failed: {err}"));
                    self.after_disk_change(&mut state);
                }
                Taken::Skipped
            }
            // Try again later: a transient error says nothing of the file.
            Err(err) if self.retry_unreadable || crate::storage::transient(&err) => {
                tracing::warn!(error = %err, "cannot read the disk backlog yet; retrying");
                Taken::Nothing
            }
            Err(err) => {
                let mut state = self.state.lock();
                state.disk.abandon(&mut side.reader, &format!("cannot read segment: {err}"));
                self.after_disk_change(&mut state);
                Taken::Skipped
            }
        }
    }

    /// Whether the frame under the cursor is one whose item the receiver
    /// holds as it was sent ([`super::staged`]).
    fn kept_at_cursor(side: &mut ReceiverSide<T>) -> bool {
        let ReceiverSide { reader, kept, .. } = side;
        reader.cursor().is_some_and(|cursor| kept.ready_at(cursor))
    }

    /// Takes records from under the cursor (the first of them known to be
    /// there, or kept) into `side.prefetched`: the items kept as they were
    /// sent where their frames come next ([`super::staged`]), up to the
    /// kept bound, and up to `read_ahead` decoded ones otherwise; and
    /// accounts for them, undecodable ones counted as corrupt, under one
    /// lock, under which it also takes the kept items that are all that is
    /// left on disk, if they are. Returns the first item, or `Skipped`
    /// when there was none.
    fn take_records(&self, side: &mut ReceiverSide<T>) -> Taken<T> {
        let ReceiverSide { prefetched, reader, kept, .. } = side;
        let mut read = 0;
        let mut undecodable = Vec::new();
        // Where the next kept frame starts, as of the last look: the kept
        // items are looked at again only once the cursor is there.
        let mut look = self.keeps_spilled();
        let mut next_kept = None;
        // Kept items are in memory already: they are taken in larger
        // batches than records are decoded, one lock for up to all of them.
        let budget = self.read_ahead.max(self.kept_limit);
        let mut decoded = 0;
        let mut kept_bytes = 0;
        while read < budget {
            let Some(open) = reader.cursor() else { break };
            if look || next_kept == Some((open.id(), open.pos())) {
                look = false;
                let taken = kept.take_at(open, budget - read, prefetched);
                next_kept = taken.next;
                if taken.items > 0 {
                    read += taken.items;
                    kept_bytes += taken.bytes;
                    continue;
                }
            }
            if decoded == self.read_ahead {
                break;
            }
            let (item, seq) = match open.peek() {
                Ok(Peek::Record { payload, seq }) => (encoding::decode::<T>(payload), seq),
                _ => break,
            };
            open.commit();
            read += 1;
            decoded += 1;
            let seq = reader.number(seq);
            match item {
                Ok(item) => prefetched.push_back(seq, item),
                Err(reason) => undecodable.push(reason),
            }
        }
        let mut state = self.state.lock();
        if let Some(open) = reader.cursor() {
            for reason in &undecodable {
                state.disk.undecodable(open, reason);
            }
        }
        if state.disk.consumed(read as u64, reader) {
            self.after_disk_change(&mut state);
        }
        // Under the lock, so that stats never miss the items in hand.
        let first = prefetched.pop_front();
        if self.keeps_spilled() {
            // What this batch took is in `prefetched` now (it was empty).
            state.staged.hand_over(kept, prefetched.len(), kept_bytes);
            // When the kept items are all that is left on disk, they are
            // taken now, under the lock that the senders append under: if
            // their frames are all in the cursor's segment, the backlog is
            // gone and memory opens again. Otherwise senders
            // append between any two takes, and a receiver close behind
            // them never sees the backlog empty while they keep sending.
            if let Some(open) = reader.cursor() {
                if kept.is_all_of(open, state.disk.items()) {
                    let taken = kept.take_at(open, usize::MAX, prefetched);
                    if state.disk.consumed(taken.items as u64, reader) {
                        self.after_disk_change(&mut state);
                    }
                }
            }
        }
        self.prefetched.store(prefetched.len(), Ordering::Relaxed);
        drop(state);
        match first {
            Some(item) => {
                self.count_received();
                Taken::Item(item)
            }
            None => Taken::Skipped,
        }
    }

    fn count_received(&self) {
        // Single writer: a plain load and store, no read-modify-write.
        let received = self.received.load(Ordering::Relaxed);
        self.received.store(received + 1, Ordering::Relaxed);
    }
}
