//! The tasks of async callers waiting on the channel, kept under the
//! channel lock beside the condvars the blocking callers wait on, so that
//! registering a waker is part of the same decision as finding nothing to
//! do: a wakeup cannot fall between the two.
//!
//! Each waiting future has a number of its own, given at its first
//! registration and never reused, so a future dropped after its waker was
//! taken cannot remove someone else's. Senders are woken all at once, as
//! the blocking ones are (space frees in whole segments, rarely); a
//! receiver is woken one per item, and a woken receiver that is dropped
//! without looking passes the wakeup on (see `Shared::forget_recv_waker`).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::task::Waker;

/// Wakers of futures waiting for one kind of event, by future.
#[derive(Debug, Default)]
pub(crate) struct Wakers {
    /// Registered wakers, oldest registration first.
    waiting: BTreeMap<u64, Waker>,
    /// The number the next new future gets; 0 means "none yet".
    next_id: u64,
}

impl Wakers {
    /// Registers (or replaces) the waker of the future whose number is in
    /// `id`, giving it a number first if it has none.
    pub(crate) fn register(&mut self, waker: &Waker, id: &Cell<u64>) {
        if id.get() == 0 {
            self.next_id += 1;
            id.set(self.next_id);
        }
        match self.waiting.get_mut(&id.get()) {
            Some(registered) if registered.will_wake(waker) => {}
            Some(registered) => registered.clone_from(waker),
            None => {
                self.waiting.insert(id.get(), waker.clone());
            }
        }
    }

    /// Removes the registration of future `id`; whether it was still there
    /// (not yet woken).
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        self.waiting.remove(&id).is_some()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Wakes the future that has waited longest.
    pub(crate) fn wake_one(&mut self) {
        if let Some((_, waker)) = self.waiting.pop_first() {
            waker.wake();
        }
    }

    /// Wakes every waiting future.
    pub(crate) fn wake_all(&mut self) {
        for (_, waker) in std::mem::take(&mut self.waiting) {
            waker.wake();
        }
    }
}

/// Wakes `waker` after `delay`, from a thread of its own: an async
/// receive that cannot read the disk backlog yet (a full disk holds its
/// bytes in the writer, say) retries as a blocking one would, without a
/// timer from any particular runtime. Rare, so a thread per retry is
/// cheap enough; if none can be started the task is woken at once.
pub(crate) fn wake_later(waker: &Waker, delay: std::time::Duration) {
    let later = waker.clone();
    let spawned = std::thread::Builder::new().name("sump-retry".into()).spawn(move || {
        std::thread::sleep(delay);
        later.wake();
    });
    if spawned.is_err() {
        waker.wake_by_ref();
    }
}
