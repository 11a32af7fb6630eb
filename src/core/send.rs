//! The send path: the memory fast path, the decision to spill, and what
//! `WhenFull` does at the limits. Every decision is taken under the
//! channel lock, and that decision is the send's place in the order.

use std::io;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{SendFailure, Shared, State, Wait};
use crate::disk::Fit;
use crate::encoding;
use crate::options::WhenFull;
use crate::sync::{MutexGuard, Ordering};

/// What the spill path decided, under the lock.
enum Spill {
    /// The frame is on disk: the channel's `appended` count after it.
    Written(u64),
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
        if !self.spilling.load(Ordering::Relaxed) {
            let mut state = self.state.lock();
            if !state.receiver_alive {
                return Err(SendFailure::Disconnected(item));
            }
            if self.memory_has_room(&mut state) {
                self.push_memory(&mut state, item);
                return Ok(());
            }
        }
        let decided = encoding::with_frame(&item, |frame| {
            self.check_round_trip(frame)?;
            Ok(self.spill(frame, wait))
        });
        let (outcome, mut state) = match decided.and_then(|decided| decided) {
            Ok(decided) => decided,
            Err(err) => return Err(SendFailure::Io(item, err)),
        };
        match outcome {
            Spill::Written(sequence) if self.sync_always => match self.group_commit(state, sequence, true) {
                Ok(()) => Ok(()),
                Err(err) => Err(SendFailure::Io(item, err)),
            },
            Spill::Written(_) | Spill::Dropped => Ok(()),
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

    /// Sends `items` in order, taking the lock once for every item that
    /// fits in memory and sending the rest one by one. Stops at the first
    /// failure; the items after it stay in `items`.
    pub(crate) fn send_batch(&self, items: &mut std::vec::IntoIter<T>, wait: Wait) -> Result<(), SendFailure<T>> {
        if !self.spilling.load(Ordering::Relaxed) {
            let mut state = self.state.lock();
            if !state.receiver_alive {
                return match items.next() {
                    Some(item) => Err(SendFailure::Disconnected(item)),
                    None => Ok(()),
                };
            }
            while items.len() > 0 && self.memory_has_room(&mut state) {
                let Some(item) = items.next() else { break };
                self.push_memory(&mut state, item);
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

    /// Whether the next item may go to memory: nothing is on disk (FIFO)
    /// and the memory bound has room.
    fn memory_has_room(&self, state: &mut State<T>) -> bool {
        // An orphaned channel sends everything down the disk path, which
        // refuses it with the reason.
        if self.write_ahead || state.disk.items() > 0 || state.disk.orphaned() {
            return false;
        }
        if state.in_memory < self.capacity {
            return true;
        }
        self.fold_taken(state);
        state.in_memory < self.capacity
    }

    fn push_memory(&self, state: &mut State<T>, item: T) {
        let seq = self.take_seq(state);
        state.memory.push_back(seq, item);
        state.in_memory += 1;
        state.sent += 1;
        self.wake_receiver(state);
    }

    /// The next sequence number, reserving more in the sequence file when
    /// the reserved ones run out (once every [`RESERVE`](crate::sequence::RESERVE)
    /// items).
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
            if self.memory_has_room(&mut state) {
                return (Spill::Memory, state);
            }
            match state.disk.fit(frame.len()) {
                Fit::Fits => {
                    // Write-ahead without `Always` writes each record through
                    // to the OS here; with `Always`, the group commit writes
                    // and syncs everyone's records at once before `send`
                    // returns. The number is taken back if the append fails:
                    // the item is handed back, never delivered.
                    let seq = state.next_seq;
                    crate::segment::format::stamp_frame(frame, seq);
                    let outcome = match state.disk.append(frame, self.write_ahead && !self.sync_always) {
                        Ok(()) => {
                            self.take_seq(&mut state);
                            if state.spilled == 0 || !self.spilling.load(Ordering::Relaxed) {
                                tracing::debug!(in_memory = state.in_memory, "spill to disk started");
                            }
                            state.sent += 1;
                            state.spilled += 1;
                            state.appended += 1;
                            self.spilling.store(true, Ordering::Relaxed);
                            self.wake_receiver(&mut state);
                            Spill::Written(state.appended)
                        }
                        Err(err) => Spill::Io(err),
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
