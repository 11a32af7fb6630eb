//! The `sump-tier` thread of a channel with a remote tier: it takes the
//! next job from the disk queue under the lock, runs it outside the lock,
//! and hands the outcome back (see `crate::disk::tier`).

use std::time::Duration;

use super::Shared;
use crate::disk::tier::Outcome;

/// How long the thread sleeps when there is nothing to do and nobody woke
/// it: also how soon a retry after a failure is looked at.
const IDLE: Duration = Duration::from_millis(50);

/// Starts the tier thread of `channel`. It ends once the channel is
/// closed or gone.
pub(crate) fn start_tier<T: Send + 'static>(channel: std::sync::Weak<Shared<T>>) -> std::io::Result<()> {
    std::thread::Builder::new().name("sump-tier".to_string()).spawn(move || {
        let me = std::thread::current();
        loop {
            let Some(shared) = channel.upgrade() else { return };
            let (work, freed) = {
                let mut state = shared.state.lock();
                if state.disk.is_closed() {
                    return;
                }
                state.disk.tier_attach(&me);
                let work = state.disk.tier_next();
                let freed = state.disk.take_tier_freed();
                if freed && work.is_none() {
                    shared.after_disk_change(&mut state);
                }
                let freed = freed && work.is_some();
                (work, freed)
            };
            let Some(work) = work else {
                drop(shared);
                std::thread::park_timeout(IDLE);
                continue;
            };
            if freed {
                let mut state = shared.state.lock();
                shared.after_disk_change(&mut state);
            }
            // A store that panics must not take the tier with it: the job
            // counts as failed and is retried.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work.run()))
                .unwrap_or_else(|_| Outcome::Failed(std::io::Error::other("the remote store panicked")));
            let mut state = shared.state.lock();
            if let (true, Outcome::Uploaded { key, .. }) = (state.disk.is_closed(), &outcome) {
                // Closed while uploading: nothing records the object, and
                // no other run uses its key. Deleted outside the lock.
                drop(state);
                let _ = work.store.delete(key);
                return;
            }
            if state.disk.tier_finish(&work.job, outcome) {
                shared.after_disk_change(&mut state);
                shared.wake_receiver(&mut state);
            }
        }
    })?;
    Ok(())
}
