//! The receiver leaving: in `Overflow` mode everything in the channel
//! goes; in the durable modes what is in memory is written to disk, in
//! front of the backlog, and read progress is recorded.

use std::mem;

use super::{Numbered, ReceiverSide, Shared, State};
use crate::disk::DiskQueue;
use crate::err::CloseError;
use crate::sync::Ordering;

impl<T> Shared<T> {
    /// The receiver is gone: later sends fail and waiting senders wake. In
    /// `Overflow` mode everything in the channel is dropped (memory) and
    /// deleted (disk); in the durable modes the items in memory are written
    /// to disk, in front of the backlog, and read progress is recorded.
    pub(crate) fn remove_receiver(&self, side: &mut ReceiverSide<T>) -> Result<(), CloseError> {
        let (memory, kept, result) = {
            let mut state = self.state.lock();
            state.receiver_alive = false;
            let memory = {
                let mut memory = self.memory.lock();
                Self::close_memory(&mut state, &mut memory);
                memory.receiver_gone = true;
                memory.in_memory = 0;
                memory.folded = self.taken.load(Ordering::Relaxed);
                mem::take(&mut memory.items)
            };
            let result = if self.durable {
                let persisted = self.persist(&mut state.disk, side, &memory);
                state.disk.detach(&mut side.reader);
                persisted
            } else {
                state.disk.release_all(&mut side.reader);
                Ok(())
            };
            let kept = state.staged.take_all();
            self.spilling.store(false, Ordering::Relaxed);
            self.receiver_left(&mut state);
            (memory, kept, result)
        };
        // Items are dropped outside the lock: their `Drop` may use the channel.
        drop(memory);
        drop(kept);
        drop(mem::take(&mut side.local));
        drop(mem::take(&mut side.prefetched));
        self.prefetched.store(0, Ordering::Relaxed);
        side.kept.clear();
        result
    }

    /// The receiver is gone as a crash would take it: nothing is written
    /// and no progress recorded, so the next open reads again what it
    /// read. Later sends fail and waiting senders wake, as for
    /// [`remove_receiver`](Self::remove_receiver); with no sender left the
    /// directory is free at once, as a dead process's is, even while a
    /// background thread (the metrics, the interval sync) still holds the
    /// channel for a moment.
    pub(crate) fn crash_receiver(&self) {
        let mut state = self.state.lock();
        state.receiver_alive = false;
        {
            let mut memory = self.memory.lock();
            Self::close_memory(&mut state, &mut memory);
            memory.receiver_gone = true;
        }
        self.receiver_left(&mut state);
    }

    /// The receiver is gone: waiting senders wake to fail, and with no
    /// sender left this was the last handle, so the directory is free from
    /// now on.
    fn receiver_left(&self, state: &mut State<T>) {
        self.space.notify_all();
        state.send_wakers.wake_all();
        if state.senders == 0 {
            state.disk.close();
        }
    }

    /// Writes the receiver's batch and the memory queue, oldest first, to
    /// disk, and records read progress.
    fn persist(&self, disk: &mut DiskQueue, side: &ReceiverSide<T>, memory: &Numbered<T>) -> Result<(), CloseError> {
        let mut frames = Vec::with_capacity(side.local.len() + memory.len());
        let mut first_error = None;
        for (seq, item) in side.local.iter().chain(memory.iter()) {
            match (self.encode)(item, seq) {
                Ok(frame) => frames.push(frame),
                Err(err) => {
                    tracing::error!(error = %err, "an item in memory cannot be encoded; it is lost at shutdown");
                    first_error.get_or_insert(err);
                }
            }
        }
        let unencodable = side.local.len() + memory.len() - frames.len();
        match (disk.shutdown(&side.reader, &frames), first_error) {
            (Ok(()), None) => Ok(()),
            (Ok(()), Some(source)) => Err(CloseError { unpersisted: unencodable, source }),
            (Err((unwritten, source)), _) => {
                tracing::error!(error = %source, unwritten, "items in memory could not be written at shutdown");
                Err(CloseError { unpersisted: unwritten + unencodable, source })
            }
        }
    }
}
