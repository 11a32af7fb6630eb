//! The send path: the memory fast path, the decision to spill, and what
//! `WhenFull` does at the limits. Every decision is taken under the
//! channel lock, and that decision is the send's place in the order.

use std::io;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Memory, SendFailure, Shared, State, Wait};
use crate::disk::Fit;
use crate::encoding;
use crate::options::WhenFull;
use crate::sync::{MutexGuard, Ordering};

/// Why the memory fast path did not take an item.
enum Refused<T> {
    /// The receiver is gone.
    Disconnected(T),
    /// Memory is closed or full: the slow path decides.
    Elsewhere(T),
}

/// What the spill path decided, under the lock.
enum Spill {
    /// The frame is on disk: the channel's `appended` count after it, the
    /// item's sequence number and the frame's length.
    Written {
        appended: u64,
        seq: u64,
        len: u64,
    },
    /// The item was dropped by policy.
    Dropped,
    /// The disk backlog drained meanwhile and memory has room: the item
    /// goes to memory after all.
    Memory,
    /// As the `SendFailure` variants.
    Full,
    Timeout,
    Disconnected,
    Io(io::Error),
}

impl<T: Serialize + DeserializeOwned> Shared<T> {
    /// Sends `item`, waiting for space as `wait` allows.
    pub(crate) fn send(&self, item: T, wait: Wait) -> Result<(), SendFailure<T>> {
        let item = match self.send_to_memory(item) {
            Ok(()) => return Ok(()),
            Err(Refused::Disconnected(item)) => return Err(SendFailure::Disconnected(item)),
            Err(Refused::Elsewhere(item)) => item,
        };
        let decided = encoding::with_frame(&item, |frame| {
            self.check_round_trip(frame)?;
            Ok(self.spill(frame, wait))
        });
        let (outcome, mut state) = match decided.and_then(|decided| decided) {
            Ok(decided) => decided,
            Err(err) => return Err(SendFailure::Io(item, err)),
        };
        match outcome {
            Spill::Written { appended, .. } if self.sync_always => match self.group_commit(state, appended, true) {
                Ok(()) => Ok(()),
                Err(err) => Err(SendFailure::Io(item, err)),
            },
            Spill::Written { seq, len, .. } => {
                let refused = self.keep_spilled(&mut state, seq, len, item);
                // An async send does not yield: its thread is an
                // executor's, which may be the receiver's too.
                let behind = refused.is_some()
                    && state.staged.is_full()
                    && !matches!(wait, Wait::Register(..))
                    && self.receiver_moved(&mut state);
                // Dropped outside the lock: an item's `Drop` may use the
                // channel.
                drop(state);
                drop(refused);
                if behind {
                    crate::sync::yield_now();
                }
                Ok(())
            }
            Spill::Dropped => Ok(()),
            Spill::Memory => {
                self.push_memory(&mut state, item);
                Ok(())
            }
            Spill::Full => Err(SendFailure::Full(item)),
            Spill::Timeout => Err(SendFailure::Timeout(item)),
            Spill::Disconnected => Err(SendFailure::Disconnected(item)),
            Spill::Io(err) => Err(SendFailure::Io(item, err)),
        }
    }

    /// The fast path: puts `item` in memory under the memory lock alone,
    /// if memory is open and has room; hands it back otherwise.
    fn send_to_memory(&self, item: T) -> Result<(), Refused<T>> {
        if self.spilling.load(Ordering::Relaxed) {
            return Err(Refused::Elsewhere(item));
        }
        let mut memory = self.memory.lock();
        if memory.receiver_gone {
            return Err(Refused::Disconnected(item));
        }
        if !self.fast_path_takes(&mut memory) {
            return Err(Refused::Elsewhere(item));
        }
        let seq = memory.next_seq;
        memory.next_seq += 1;
        memory.push(seq, item);
        let wake = std::mem::take(&mut memory.receiver_waiting);
        drop(memory);
        self.after_fast_push(wake);
        Ok(())
    }

    /// Whether the fast path may put one more item in memory: it is open,
    /// its number is reserved, and there is room.
    fn fast_path_takes(&self, memory: &mut Memory<T>) -> bool {
        memory.open && memory.next_seq < memory.seq_limit && self.memory_has_room(memory)
    }

    /// After items went to memory on the fast path: sets the hint, and
    /// wakes a waiting receive if the send took its note (`wake`).
    fn after_fast_push(&self, wake: bool) {
        self.set_queued();
        if wake {
            self.wake_after_push();
        }
    }

    /// Sends `items` in order, taking the memory lock once for every item
    /// that fits in memory and sending the rest one by one. Stops at the
    /// first failure; the items after it stay in `items`.
    pub(crate) fn send_batch(&self, items: &mut std::vec::IntoIter<T>, wait: Wait) -> Result<(), SendFailure<T>> {
        if !self.spilling.load(Ordering::Relaxed) {
            let mut memory = self.memory.lock();
            let mut pushed = false;
            while items.len() > 0 && self.fast_path_takes(&mut memory) {
                let Some(item) = items.next() else { break };
                let seq = memory.next_seq;
                memory.next_seq += 1;
                memory.push(seq, item);
                pushed = true;
            }
            let wake = pushed && std::mem::take(&mut memory.receiver_waiting);
            drop(memory);
            if pushed {
                self.after_fast_push(wake);
            }
        }
        for item in items.by_ref() {
            self.send(item, wait)?;
        }
        Ok(())
    }

    /// Decodes the first frame this channel spills, so that a type that
    /// serializes but cannot be read back fails its first spilling send
    /// instead of being lost on the way out.
    fn check_round_trip(&self, frame: &[u8]) -> io::Result<()> {
        if self.round_trip_checked.load(Ordering::Relaxed) {
            return Ok(());
        }
        match encoding::decode::<T>(crate::segment::format::payload_of(frame)) {
            Ok(_) => {
                self.round_trip_checked.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(err) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "items of this type cannot be read back from disk ({err}); bincode does not support \
                     serde's deserialize_any, used by untagged enums, flatten and serde_json::Value"
                ),
            )),
        }
    }

    /// Keeps a spilled item beside its frame, numbered `seq` and `len`
    /// bytes long, which the append just made the newest on disk, if the
    /// channel keeps spilled items and has room ([`super::staged`]). With
    /// the channel lock held, so that items are kept in append order.
    /// Returns the item if it was not kept.
    fn keep_spilled(&self, state: &mut State<T>, seq: u64, len: u64, item: T) -> Option<T> {
        if !self.keeps_spilled() {
            return Some(item);
        }
        let Some((segment, end)) = state.disk.appended_end() else { return Some(item) };
        state.staged.keep(seq, item, segment, end.saturating_sub(len), end).err()
    }

    /// Whether the receiver received anything since a spilling send last
    /// asked: then a blocking send whose item could not be kept, as many
    /// items being kept as may be, yields its thread (see "Costs" in the
    /// parent module).
    fn receiver_moved(&self, state: &mut State<T>) -> bool {
        let received = self.received.load(Ordering::Relaxed);
        let moved = received != state.seen_received;
        state.seen_received = received;
        moved
    }

    /// Whether memory has room for one more item, folding in what the
    /// receiver took when it looks full.
    fn memory_has_room(&self, memory: &mut Memory<T>) -> bool {
        if memory.in_memory < self.capacity {
            return true;
        }
        self.fold_taken(memory);
        memory.in_memory < self.capacity
    }

    /// Puts `item` in memory with the channel lock held and memory closed
    /// (by [`spill`](Self::spill)), and opens memory to the fast path
    /// again if the disk backlog is gone.
    fn push_memory(&self, state: &mut State<T>, item: T) {
        let seq = self.take_seq(state);
        {
            let mut memory = self.memory.lock();
            memory.push(seq, item);
            self.set_memory_gate(state, &mut memory);
        }
        // Woken outside the memory lock (a notify is a system call, a waker
        // runs an executor's code); the channel lock, still held, keeps a
        // receive from noting it waits meanwhile.
        self.wake_receiver(state);
        let waiting = Self::receiver_waiting(state);
        self.memory.lock().receiver_waiting = waiting;
    }

    /// The next sequence number, with memory closed, reserving more in the
    /// sequence file when the reserved ones run out (once every
    /// [`RESERVE`](crate::sequence::RESERVE) items).
    fn take_seq(&self, state: &mut State<T>) -> u64 {
        let seq = state.next_seq;
        if seq >= state.disk.seq_checkpoint() {
            state.disk.reserve_seqs(seq);
        }
        state.next_seq += 1;
        seq
    }

    /// The spill path: decides, under the lock, what happens to an item
    /// whose encoded frame is `frame`, and returns the lock still held.
    fn spill(&self, frame: &mut [u8], wait: Wait) -> (Spill, MutexGuard<'_, State<T>>) {
        let mut state = self.state.lock();
        loop {
            if !state.receiver_alive {
                return (Spill::Disconnected, state);
            }
            // Memory is closed to the fast path from here on: until
            // `push_memory` puts the item in, so that the room found here is
            // still there then; before anything reaches the disk, so that no
            // send puts an item in memory behind it. While it is closed,
            // only holders of the channel lock number items. An orphaned
            // channel sends everything down the disk path, which refuses
            // it with the reason.
            let open = self.memory_open(&state);
            if open || !state.memory_closed {
                let mut memory = self.memory.lock();
                Self::close_memory(&mut state, &mut memory);
                if open && self.memory_has_room(&mut memory) {
                    drop(memory);
                    return (Spill::Memory, state);
                }
            }
            let seq = state.next_seq;
            match state.disk.fit(frame.len()) {
                Fit::Fits => {
                    // Write-ahead without `Always` writes each record through
                    // to the OS here; with `Always`, the group commit writes
                    // and syncs everyone's records at once before `send`
                    // returns. The number is taken back if the append fails:
                    // the item is handed back, never delivered.
                    crate::segment::format::stamp_frame(frame, seq);
                    let outcome = match state.disk.append(frame, self.write_ahead && !self.sync_always) {
                        Ok(()) => {
                            self.take_seq(&mut state);
                            if !self.spilling.load(Ordering::Relaxed) {
                                tracing::debug!("spill to disk started");
                                self.spilling.store(true, Ordering::Relaxed);
                            }
                            state.spilled += 1;
                            state.appended += 1;
                            self.joined_group(&mut state);
                            self.wake_receiver(&mut state);
                            Spill::Written { appended: state.appended, seq, len: frame.len() as u64 }
                        }
                        Err(err) => {
                            self.sync_memory_gate(&mut state);
                            Spill::Io(err)
                        }
                    };
                    return (outcome, state);
                }
                Fit::TooLarge => {
                    let err = state.disk.too_large(frame.len());
                    return (Spill::Io(err), state);
                }
                Fit::Gone => {
                    let err = state.disk.gone();
                    return (Spill::Io(err), state);
                }
                Fit::Full => match self.when_full {
                    WhenFull::DropNewest => {
                        state.dropped += 1;
                        return (Spill::Dropped, state);
                    }
                    WhenFull::DropOldest => match state.disk.drop_oldest() {
                        Some(records) => state.dropped += records,
                        None => {
                            state.dropped += 1;
                            return (Spill::Dropped, state);
                        }
                    },
                    WhenFull::Block => {
                        let deadline = match wait {
                            Wait::Never => return (Spill::Full, state),
                            Wait::Until(deadline) if Instant::now() >= deadline => return (Spill::Timeout, state),
                            Wait::Until(deadline) => Some(deadline),
                            Wait::Forever => None,
                            Wait::Register(waker, id) => {
                                state.send_wakers.register(waker, id);
                                return (Spill::Full, state);
                            }
                        };
                        state.senders_waiting += 1;
                        match deadline {
                            Some(deadline) => {
                                self.space.wait_until(&mut state, deadline);
                            }
                            None => self.space.wait(&mut state),
                        }
                        state.senders_waiting -= 1;
                    }
                },
            }
        }
    }
}
