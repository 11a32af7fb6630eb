//! Durability of what was sent: group commit under `SyncPolicy::Always`
//! (one sync for every sender waiting, and taking the records back when
//! it fails), `flush`, and the background thread of
//! `SyncPolicy::Interval`.

use std::collections::VecDeque;
use std::io;

use super::{Shared, State};
use crate::sync::{yield_now, MutexGuard};

/// Ranges of records whose group commit failed: their sends fail. Each
/// range is kept until every one of its senders has claimed the error.
#[derive(Debug, Default)]
pub(super) struct CommitFailures {
    /// The failed ranges, oldest first.
    ranges: VecDeque<CommitFailure>,
}

/// Records `after + 1 ..= last` whose group commit failed.
#[derive(Debug)]
struct CommitFailure {
    /// The last record before the range.
    after: u64,
    /// The range's last record.
    last: u64,
    /// Senders of the range that have not seen the error yet.
    unclaimed: u64,
    /// The error, to be rebuilt for each sender.
    kind: io::ErrorKind,
    /// Its errno, if it had one.
    code: Option<i32>,
    /// Its message.
    message: String,
}

impl CommitFailure {
    fn covers(&self, sequence: u64) -> bool {
        sequence > self.after && sequence <= self.last
    }

    fn error(&self) -> io::Error {
        match self.code {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.kind, self.message.clone()),
        }
    }
}

impl CommitFailures {
    /// Records that the commit of records `after + 1 ..= last` failed.
    fn record(&mut self, after: u64, last: u64, err: &io::Error) {
        if last > after {
            self.ranges.push_back(CommitFailure {
                after,
                last,
                unclaimed: last - after,
                kind: err.kind(),
                code: err.raw_os_error(),
                message: err.to_string(),
            });
        }
    }

    /// The error of record `sequence`'s commit, if it failed, without
    /// claiming it.
    fn find(&self, sequence: u64) -> Option<io::Error> {
        self.ranges.iter().find(|range| range.covers(sequence)).map(CommitFailure::error)
    }

    /// The error of record `sequence`'s commit, if it failed; each record's
    /// sender claims it once.
    fn claim(&mut self, sequence: u64) -> Option<io::Error> {
        let index = self.ranges.iter().position(|range| range.covers(sequence))?;
        let range = &mut self.ranges[index];
        range.unclaimed -= 1;
        let err = range.error();
        if range.unclaimed == 0 {
            self.ranges.remove(index);
        }
        Some(err)
    }
}

/// How many times a group-commit leader yields to let more senders append
/// before it syncs, as long as each yield brought new appends.
const GROUP_COMMIT_GATHER_ROUNDS: usize = if cfg!(loom) { 1 } else { 64 };

#[cfg(not(loom))]
/// The shortest interval a `SyncPolicy::Interval` thread syncs at.
const MIN_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

#[cfg(not(loom))]
/// Starts the thread that syncs a channel's active segment every `every`,
/// for `SyncPolicy::Interval`. It holds only a weak reference and ends
/// once the channel is gone.
pub(crate) fn start_interval_sync<T: Send + 'static>(
    channel: std::sync::Weak<Shared<T>>,
    every: std::time::Duration,
) -> io::Result<()> {
    let every = every.max(MIN_SYNC_INTERVAL);
    std::thread::Builder::new().name("sump-sync".to_string()).spawn(move || loop {
        std::thread::sleep(every);
        let Some(shared) = channel.upgrade() else { return };
        let file = shared.state.lock().disk.flush_for_sync();
        match file.and_then(|file| file.map(|(handle, point)| handle.sync().map(|()| point)).transpose()) {
            Ok(Some(point)) => shared.state.lock().disk.mark_synced(&point),
            Ok(None) => {}
            Err(err) => tracing::error!(error = %err, "interval sync of the active segment failed"),
        }
    })?;
    Ok(())
}

impl<T> Shared<T> {
    /// Waits until record `sequence` is on stable storage. The first sender
    /// to find no sync under way syncs for everyone: it flushes under the
    /// lock, then syncs outside it, covering every record appended before
    /// it started; senders arriving meanwhile wait for the next round.
    ///
    /// # Errors
    ///
    /// The error of the write or sync that was to cover the record. Every
    /// record not on stable storage then is taken back out of the file
    /// before anyone could read it (the receiver reads only synced records
    /// under `SyncPolicy::Always`), and each of their sends fails: a send
    /// that failed is never delivered later.
    pub(super) fn group_commit<'a>(
        &'a self,
        mut state: MutexGuard<'a, State<T>>,
        sequence: u64,
        own: bool,
    ) -> io::Result<()> {
        loop {
            // A sender claims its record's failure; a flush only looks.
            let failed = if own { state.commit_failures.claim(sequence) } else { state.commit_failures.find(sequence) };
            if let Some(err) = failed {
                return Err(err);
            }
            if state.synced >= sequence {
                return Ok(());
            }
            if state.syncing {
                // Covered by the sync in progress, or by the next one.
                let round = state.sync_round + u64::from(sequence > state.sync_target);
                self.synced[(round % 2) as usize].wait(&mut state);
                continue;
            }
            state.syncing = true;
            state.sync_round += 1;
            // Until the target is known, every waiter belongs to this round.
            state.sync_target = u64::MAX;
            // Let senders about to append join this sync: yield while
            // appends keep arriving (a lone sender yields once), then wait
            // for the senders the last sync released.
            for _ in 0..GROUP_COMMIT_GATHER_ROUNDS {
                let seen = state.appended;
                MutexGuard::unlocked(&mut state, yield_now);
                if state.appended == seen {
                    break;
                }
            }
            #[cfg(not(loom))]
            self.gather(&mut state);
            let target = state.appended;
            state.sync_target = target;
            #[cfg(not(loom))]
            let started = std::time::Instant::now();
            let synced = match state.disk.flush_for_sync() {
                Ok(Some((handle, point))) => MutexGuard::unlocked(&mut state, || handle.sync()).map(|()| Some(point)),
                Ok(None) => Ok(None),
                Err(err) => Err(err),
            };
            state.syncing = false;
            let round = state.sync_round;
            match synced {
                Ok(point) => {
                    if let Some(point) = point {
                        state.disk.mark_synced(&point);
                        state.group_commits += 1;
                        #[cfg(not(loom))]
                        {
                            state.last_sync = started.elapsed();
                        }
                    }
                    state.group_peak = state.appended.saturating_sub(state.synced);
                    state.synced = state.synced.max(target);
                    self.synced[(round % 2) as usize].notify_all();
                    self.synced[((round + 1) % 2) as usize].notify_one();
                    // Synced records are readable now.
                    self.wake_receiver(&mut state);
                }
                Err(err) => {
                    // The unsynced records are the newest ones: take them
                    // back, fail their sends, and let everyone look again.
                    let dropped = state.disk.roll_back_unsynced();
                    let first_failed = state.appended - dropped;
                    state.synced = state.synced.max(first_failed);
                    state.spilled -= dropped;
                    let last = state.appended;
                    state.commit_failures.record(first_failed, last, &err);
                    tracing::error!(error = %err, records = dropped,
                        "group commit failed; the records it covered are taken back and their sends fail");
                    for condvar in &self.synced {
                        condvar.notify_all();
                    }
                    self.after_disk_change(&mut state);
                }
            }
        }
    }

    /// The group commit's leader, before it fixes what its sync covers:
    /// waits for as many records to be waiting as there were when the
    /// last sync finished (the senders it released are likely sending
    /// again), but no longer than that sync took, nor than
    /// `group_commit_wait`. A lone sender does not wait.
    #[cfg(not(loom))]
    fn gather(&self, state: &mut MutexGuard<'_, State<T>>) {
        let expected = state.group_peak;
        let cap = self.group_commit_wait.min(state.last_sync);
        if cap.is_zero() || state.appended.saturating_sub(state.synced) >= expected {
            return;
        }
        let deadline = std::time::Instant::now() + cap;
        state.gather_for = expected;
        while state.gather_for != 0 {
            if self.gathered.wait_until(state, deadline).timed_out() {
                break;
            }
        }
        state.gather_for = 0;
    }

    /// After a record was appended: wakes a group commit's leader waiting
    /// for it ([`gather`](Self::gather)).
    pub(super) fn joined_group(&self, state: &mut State<T>) {
        if state.gather_for != 0 && state.appended.saturating_sub(state.synced) >= state.gather_for {
            state.gather_for = 0;
            self.gathered.notify_one();
        }
    }

    /// Writes buffered segment bytes to the OS, and syncs them unless the
    /// policy is `Never`.
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.state.lock().disk.flush(self.sync_on_flush)
    }

    /// [`flush`](Self::flush) under `SyncPolicy::Always`: a group commit of
    /// every record appended so far, so that a failed sync takes records
    /// back exactly as a send's would.
    pub(crate) fn flush_all(&self) -> io::Result<()> {
        if !self.sync_always {
            return self.flush();
        }
        let state = self.state.lock();
        let last = state.appended;
        self.group_commit(state, last, false)
    }
}
