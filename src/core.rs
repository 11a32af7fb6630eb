//! The channel core shared by every [`Sender`] and the [`Receiver`]: the
//! memory tier, the handoff to the disk tier, blocking and disconnection.
//!
//! # Ordering
//!
//! Everything a send decides, it decides under the one channel lock
//! (`Shared::state`), and the decision is the send's place in the channel's
//! total order. An item goes to memory only while nothing is on disk;
//! once anything is on disk, every later item follows it there until the
//! receiver has consumed the whole disk backlog. So memory holds only items
//! older than everything on disk, and the receiver takes, in this order:
//!
//! 1. its local batch (items it swapped out of memory in one go, and in
//!    front of them items a drainer put back),
//! 2. items it decoded ahead from disk (`Overflow` mode only),
//! 3. the record under its segment cursor (the oldest on disk),
//! 4. memory, by swapping the whole queue into its local batch,
//! 5. the disk, by moving its cursor to the oldest unread record.
//!
//! A local batch taken while the disk held items is older than all of
//! them; a cursor positioned while memory was empty is older than anything
//! memory receives later. Both facts make that order FIFO. The local batch
//! is refilled from memory only once the items decoded ahead are gone, and
//! a drainer puts back only items it received, which are older than
//! anything still decoded ahead.
//!
//! # Costs
//!
//! The memory path never encodes. A send that spills encodes its item in a
//! per-thread buffer before it takes the lock (when the channel is known
//! to be spilling) and only copies bytes into the write buffer under it.
//! The receiver takes the lock once per memory batch, not per item, and
//! reports what it took through an atomic counter that senders fold into
//! `in_memory` only when memory looks full.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::path::Path;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{Receiver, Sender};
use crate::codec;
use crate::config::{Durability, Settings, SyncPolicy, WhenFull};
use crate::disk::{DiskQueue, Fit};
use crate::err::{CloseError, OpenError};
use crate::segment::{Peek, SegmentCursor};
use crate::stats::Stats;
use crate::sync::{
    yield_now, Arc, AtomicBool, AtomicU64, AtomicUsize, CachePadded, Condvar, Mutex, MutexGuard, Ordering,
};

/// How long an operation may wait.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Not at all.
    Never,
    /// Until this instant.
    Until(Instant),
    /// As long as it takes.
    Forever,
}

impl Wait {
    /// A wait of `timeout` from now; a timeout too large to represent
    /// waits forever.
    pub(crate) fn timeout(timeout: std::time::Duration) -> Wait {
        Instant::now().checked_add(timeout).map_or(Wait::Forever, Wait::Until)
    }
}

/// Why a send did not take the item.
pub(crate) enum SendFailure<T> {
    /// Memory and disk full, and the send could not wait.
    Full(T),
    /// Memory and disk stayed full until the deadline.
    Timeout(T),
    /// The receiver is gone.
    Disconnected(T),
    /// Encoding or writing the item failed.
    Io(T, io::Error),
}

/// Why a receive returned no item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvFailure {
    /// Nothing arrived in time.
    Empty,
    /// No senders and nothing left.
    Disconnected,
}

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

/// What the receiver got from its segment cursor.
enum Taken<T> {
    /// The next item.
    Item(T),
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
struct Backoff {
    /// Rounds spun so far.
    round: u32,
}

impl Backoff {
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

/// State guarded by the channel lock.
struct State<T> {
    /// The memory tier: items not yet taken by the receiver.
    memory: VecDeque<T>,
    /// Items counted against the memory bound: `memory` plus the
    /// receiver's local batch as of the last fold of `Shared::taken`.
    in_memory: usize,
    /// The disk tier.
    disk: DiskQueue,
    /// Live `Sender` handles.
    senders: usize,
    /// Whether the `Receiver` is alive.
    receiver_alive: bool,
    /// Whether the receiver waits on `Shared::ready`.
    receiver_waiting: bool,
    /// Senders waiting on `Shared::space`.
    senders_waiting: usize,
    /// Items accepted since open.
    sent: u64,
    /// Items written to disk since open.
    spilled: u64,
    /// Items dropped by policy since open.
    dropped: u64,
    /// Records appended to disk since open; a record's sequence number.
    appended: u64,
    /// Every record up to this sequence number is on stable storage.
    synced: u64,
    /// Whether a sender is syncing for the group right now.
    syncing: bool,
    /// Group commits started since open; the one in progress, if any.
    sync_round: u64,
    /// The last record the sync in progress covers.
    sync_target: u64,
    /// Records whose group commit failed, until each sender has seen it.
    commit_failures: CommitFailures,
}

/// Ranges of records whose group commit failed: their sends fail. Each
/// range is kept until every one of its senders has claimed the error.
#[derive(Debug, Default)]
struct CommitFailures {
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

/// The part of a channel every handle shares.
pub(crate) struct Shared<T> {
    /// Everything that decides where an item goes.
    state: Mutex<State<T>>,
    /// The receiver waits here for items or for the last sender to leave.
    ready: Condvar,
    /// Senders wait here for disk space or for the receiver to leave.
    space: Condvar,
    /// Senders wait here for a group commit to cover their record: those
    /// the sync of an even round covers on the first, of an odd round on
    /// the second. A finished sync wakes all of its own, and one of the
    /// next round's to lead it; waking everyone would wake each sender
    /// twice per record, and on few cores the context switches would cost
    /// more than the syncs.
    synced: [Condvar; 2],
    /// A hint, written under the lock, that the disk holds items, so a
    /// send should encode before taking the lock. Never trusted for order.
    spilling: AtomicBool,
    /// Items the receiver popped from its local batch and has not yet
    /// subtracted from `State::in_memory`. Written by the receiver only;
    /// folded in under the lock.
    taken: CachePadded<AtomicUsize>,
    /// Items handed to the receiver since open. Written by the receiver only.
    received: CachePadded<AtomicU64>,
    /// A hint, stored under the lock whenever the receiver has news (an
    /// item in memory or on disk, the last sender gone): a spinning
    /// receiver watches it instead of taking the lock over and over, which
    /// would pull the lock's cache line away from the senders. Cleared by
    /// the receiver under the lock. Never trusted for anything but when to
    /// look.
    queued: CachePadded<AtomicBool>,
    /// Items the receiver decoded ahead from disk and has not handed out
    /// yet (`ReceiverSide::prefetched`), so that stats count them as on
    /// disk. Written by the receiver only.
    prefetched: CachePadded<AtomicUsize>,
    /// Whether a spilled item of this type has been decoded back once, to
    /// catch types that serialize but cannot be read back (bincode does
    /// not support `deserialize_any`) before any of them is accepted.
    round_trip_checked: AtomicBool,
    /// Bound on `State::in_memory`.
    capacity: usize,
    /// Whether a read error is retried rather than given up (reshards).
    retry_unreadable: bool,
    /// Most records the receiver decodes from disk at once: [`PREFETCH`]
    /// in `Overflow` mode, but no more than memory itself may hold, so
    /// the memory bound stays what the settings say, give or take one
    /// item; 1 in the durable modes.
    read_ahead: usize,
    /// What a send does at the limits.
    when_full: WhenFull,
    /// Whether `flush` also syncs.
    sync_on_flush: bool,
    /// `SyncPolicy::Always`: a spilled record is synced before `send`
    /// returns.
    sync_always: bool,
    /// `WriteAhead`: every item goes to disk before `send` returns.
    write_ahead: bool,
    /// `Persistent` or `WriteAhead`: a clean shutdown writes memory to disk.
    durable: bool,
    /// Encodes an item as a frame; kept here so that shutdown, which runs
    /// in `Drop` where `T: Serialize` cannot be named, can persist memory.
    encode: fn(&T) -> io::Result<Vec<u8>>,
}

/// The receiver's own state, outside the lock.
pub(crate) struct ReceiverSide<T> {
    /// Items swapped out of memory in one batch, oldest first.
    local: VecDeque<T>,
    /// How many items at the front of `local` a drainer put back. Segments
    /// held for the drainer are not released while any remain: they may be
    /// the only durable copy of those items.
    put_back: usize,
    /// Items decoded ahead from the disk backlog, oldest first, in
    /// `Overflow` mode only: read and accounted for in batches of up to
    /// [`PREFETCH`] records, so the receiver takes the channel lock once
    /// per batch rather than once per record. They are newer than `local`
    /// and older than anything still on disk or in memory.
    prefetched: VecDeque<T>,
    /// Read position on disk.
    cursor: Option<SegmentCursor>,
}

/// Most records the receiver decodes ahead from disk in `Overflow` mode.
/// In the durable modes a record counts as read only once it is handed
/// out, so a crash cannot lose what was decoded ahead: it reads one at a
/// time there.
const PREFETCH: usize = if cfg!(loom) { 2 } else { 64 };

/// Opens a channel: the directory, the disk tier, and the two handles.
pub(crate) fn open<T>(dir: &Path, name: &str, settings: Settings) -> Result<(Sender<T>, Receiver<T>), OpenError>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    let mut settings = settings;
    settings.identity.name = std::any::type_name::<T>().to_string();
    let disk = DiskQueue::open(dir, name, &settings)?;
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            memory: VecDeque::new(),
            in_memory: 0,
            disk,
            senders: 1,
            receiver_alive: true,
            receiver_waiting: false,
            senders_waiting: 0,
            sent: 0,
            spilled: 0,
            dropped: 0,
            appended: 0,
            synced: 0,
            syncing: false,
            sync_round: 0,
            sync_target: 0,
            commit_failures: CommitFailures::default(),
        }),
        ready: Condvar::new(),
        space: Condvar::new(),
        synced: [Condvar::new(), Condvar::new()],
        spilling: AtomicBool::new(false),
        taken: CachePadded::default(),
        received: CachePadded::default(),
        prefetched: CachePadded::default(),
        queued: CachePadded::default(),
        round_trip_checked: AtomicBool::new(false),
        capacity: settings.memory_capacity,
        retry_unreadable: settings.retry_unreadable,
        read_ahead: if settings.durability == Durability::Overflow {
            PREFETCH.min(settings.memory_capacity.max(1))
        } else {
            1
        },
        when_full: settings.when_full,
        sync_on_flush: settings.sync != SyncPolicy::Never,
        sync_always: settings.sync == SyncPolicy::Always,
        write_ahead: settings.durability == Durability::WriteAhead,
        durable: settings.durability != Durability::Overflow,
        encode: |item| codec::with_frame(item, <[u8]>::to_vec),
    });
    #[cfg(not(loom))]
    if let SyncPolicy::Interval(every) = settings.sync {
        start_interval_sync(Arc::downgrade(&shared), every.max(MIN_SYNC_INTERVAL))
            .map_err(|err| OpenError::io(dir.join(name), err))?;
    }
    let side = ReceiverSide { local: VecDeque::new(), put_back: 0, prefetched: VecDeque::new(), cursor: None };
    Ok((Sender::from_shared(Arc::clone(&shared)), Receiver::from_shared(shared, side)))
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
fn start_interval_sync<T: Send + 'static>(
    channel: std::sync::Weak<Shared<T>>,
    every: std::time::Duration,
) -> io::Result<()> {
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
        let decided = codec::with_frame(&item, |frame| {
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
        match codec::decode::<T>(&frame[crate::segment::format::FRAME_HEADER_LEN..]) {
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
        state.memory.push_back(item);
        state.in_memory += 1;
        state.sent += 1;
        self.wake_receiver(state);
    }

    /// The spill path: decides, under the lock, what happens to an item
    /// whose encoded frame is `frame`, and returns the lock still held.
    fn spill(&self, frame: &[u8], wait: Wait) -> (Spill, MutexGuard<'_, State<T>>) {
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
                    // returns.
                    let outcome = match state.disk.append(frame, self.write_ahead && !self.sync_always) {
                        Ok(()) => {
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

    /// Receives one item, waiting as `wait` allows.
    pub(crate) fn recv(&self, side: &mut ReceiverSide<T>, wait: Wait) -> Result<T, RecvFailure> {
        let mut backoff = Backoff::default();
        loop {
            if let Some(item) = side.local.pop_front() {
                side.put_back = side.put_back.saturating_sub(1);
                self.taken.fetch_add(1, Ordering::Release);
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
            let mut state = self.state.lock();
            self.fold_taken(&mut state);
            // Memory is empty from here on (swapped out, or found empty).
            self.queued.store(false, Ordering::Relaxed);
            if !state.memory.is_empty() {
                mem::swap(&mut side.local, &mut state.memory);
                continue;
            }
            // Records on disk that cannot be reached right now (the writer
            // cannot flush them to a full disk, say): retry shortly.
            let mut stuck = false;
            if state.disk.items() > 0 && !state.disk.awaiting_sync() {
                let before = side.cursor.as_ref().map(|c| (c.id(), c.pos(), c.limit()));
                match state.disk.position(&mut side.cursor) {
                    Ok(freed) => {
                        if freed {
                            self.after_disk_change(&mut state);
                        }
                        let after = side.cursor.as_ref().map(|c| (c.id(), c.pos(), c.limit()));
                        let moved = after != before || freed;
                        if (moved && side.cursor.as_ref().is_some_and(|c| !c.at_limit())) || state.disk.items() == 0 {
                            continue;
                        }
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
            };
            if stuck {
                let retry = Instant::now() + STUCK_RETRY;
                deadline = Some(deadline.map_or(retry, |d| d.min(retry)));
            } else if backoff.may_spin() {
                // An item is often only a moment away: a short spin costs
                // less than parking and being woken. It watches the hint,
                // and takes the lock again only once the hint says memory
                // has items or the spinning is over.
                drop(state);
                backoff.spin();
                while backoff.may_spin() && !self.queued.load(Ordering::Relaxed) {
                    backoff.spin();
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
            state.receiver_waiting = true;
            match deadline {
                Some(deadline) => {
                    self.ready.wait_until(&mut state, deadline);
                }
                None => self.ready.wait(&mut state),
            }
            state.receiver_waiting = false;
        }
    }

    /// Reads, decodes and consumes the record under the cursor, if there
    /// is one below its limit. Damaged records are consumed and counted,
    /// never returned.
    fn take_from_cursor(&self, side: &mut ReceiverSide<T>) -> Taken<T> {
        let Some(cursor) = side.cursor.as_mut() else {
            return Taken::Nothing;
        };
        match cursor.peek() {
            Ok(Peek::Record(_)) => self.take_records(side),
            Ok(Peek::Exhausted) => Taken::Nothing,
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
                if let Err(err) = state.disk.seal_active(&mut side.cursor) {
                    state.disk.abandon(&mut side.cursor, &format!("{reason}; and sealing failed: {err}"));
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
                state.disk.abandon(&mut side.cursor, &format!("cannot read segment: {err}"));
                self.after_disk_change(&mut state);
                Taken::Skipped
            }
        }
    }

    /// Decodes up to `read_ahead` intact records from under the cursor
    /// (the first of them known to be there) into `side.prefetched`, and
    /// accounts for them, undecodable ones counted as corrupt, under one
    /// lock; returns the first item, or `Skipped` when none decoded.
    fn take_records(&self, side: &mut ReceiverSide<T>) -> Taken<T> {
        let ReceiverSide { prefetched, cursor, .. } = side;
        let Some(open) = cursor.as_mut() else { return Taken::Nothing };
        let mut read = 0;
        let mut undecodable = Vec::new();
        while read < self.read_ahead {
            let decoded = match open.peek() {
                Ok(Peek::Record(payload)) => codec::decode::<T>(payload),
                _ => break,
            };
            open.commit();
            read += 1;
            match decoded {
                Ok(item) => prefetched.push_back(item),
                Err(reason) => undecodable.push(reason),
            }
        }
        let mut state = self.state.lock();
        if let Some(open) = cursor.as_mut() {
            for reason in &undecodable {
                state.disk.undecodable(open, reason);
            }
        }
        if state.disk.consumed(read as u64, cursor) {
            self.after_disk_change(&mut state);
        }
        // Under the lock, so that stats never miss the items in hand.
        let first = prefetched.pop_front();
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
    fn group_commit<'a>(&'a self, mut state: MutexGuard<'a, State<T>>, sequence: u64, own: bool) -> io::Result<()> {
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
            // appends keep arriving (a lone sender yields once).
            for _ in 0..GROUP_COMMIT_GATHER_ROUNDS {
                let seen = state.appended;
                MutexGuard::unlocked(&mut state, yield_now);
                if state.appended == seen {
                    break;
                }
            }
            let target = state.appended;
            state.sync_target = target;
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
                    }
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
                    state.sent -= dropped;
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

    /// Tells the receiver something arrived: wakes it if it is parked, and
    /// sets the hint it watches while it spins.
    fn wake_receiver(&self, state: &mut State<T>) {
        if !self.queued.load(Ordering::Relaxed) {
            self.queued.store(true, Ordering::Relaxed);
        }
        if state.receiver_waiting {
            state.receiver_waiting = false;
            self.ready.notify_one();
        }
    }

    /// After the disk backlog shrank by more than one record or emptied:
    /// updates the spilling hint and wakes senders waiting for space.
    fn after_disk_change(&self, state: &mut State<T>) {
        if state.disk.items() == 0 && self.spilling.swap(false, Ordering::Relaxed) {
            tracing::debug!("disk backlog drained; back to memory");
        }
        self.wake_senders(state);
    }

    fn wake_senders(&self, state: &State<T>) {
        if state.senders_waiting > 0 {
            self.space.notify_all();
        }
    }

    /// Subtracts what the receiver took from its batch since the last fold.
    fn fold_taken(&self, state: &mut State<T>) {
        state.in_memory -= self.taken.swap(0, Ordering::Acquire);
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

    /// A snapshot of the channel.
    pub(crate) fn stats(&self) -> Stats {
        let mut state = self.state.lock();
        self.fold_taken(&mut state);
        Stats {
            in_memory: state.in_memory,
            on_disk: state.disk.items() + self.prefetched.load(Ordering::Relaxed) as u64,
            disk_bytes: state.disk.bytes(),
            segments: state.disk.segments(),
            sent: state.sent,
            received: self.received.load(Ordering::Relaxed),
            spilled: state.spilled,
            dropped: state.dropped,
            corrupt: state.disk.corrupt(),
            lost: state.disk.lost(),
            set_aside_files: state.disk.set_aside_totals().0,
            set_aside_bytes: state.disk.set_aside_totals().1,
        }
    }

    /// A new `Sender` handle exists.
    pub(crate) fn add_sender(&self) {
        self.state.lock().senders += 1;
    }

    /// A `Sender` handle is gone; the last one wakes the receiver so it can
    /// drain what is left and see the disconnection.
    pub(crate) fn remove_sender(&self) {
        let mut state = self.state.lock();
        state.senders -= 1;
        if state.senders == 0 {
            state.receiver_waiting = false;
            self.queued.store(true, Ordering::Relaxed);
            self.ready.notify_all();
        }
    }

    /// Keeps segments the receiver has read until [`release_retired`](Self::release_retired)
    /// (a drainer's peek-and-commit), or goes back to deleting them at once.
    pub(crate) fn set_hold(&self, hold: bool) {
        self.state.lock().disk.set_hold(hold);
    }

    /// Deletes the segments kept by `set_hold`: their items were delivered.
    /// Not while items put back are still waiting: they came from those
    /// segments.
    pub(crate) fn release_retired(&self, side: &ReceiverSide<T>) {
        if side.put_back > 0 {
            return;
        }
        let mut state = self.state.lock();
        if state.disk.release_retired() {
            self.wake_senders(&state);
        }
    }

    /// Returns items the receiver took but could not hand on (a drainer
    /// whose sink refused them) to the front of the channel, oldest first,
    /// so they are the next to be received. They count as in memory again
    /// and no longer as received.
    pub(crate) fn put_back(&self, side: &mut ReceiverSide<T>, items: Vec<T>) {
        if items.is_empty() {
            return;
        }
        let count = items.len();
        let mut state = self.state.lock();
        self.fold_taken(&mut state);
        state.in_memory += count;
        let received = self.received.load(Ordering::Relaxed);
        self.received.store(received - count as u64, Ordering::Relaxed);
        drop(state);
        side.put_back += count;
        for item in items.into_iter().rev() {
            side.local.push_front(item);
        }
    }

    /// The receiver is gone: later sends fail and waiting senders wake. In
    /// `Overflow` mode everything in the channel is dropped (memory) and
    /// deleted (disk); in the durable modes the items in memory are written
    /// to disk, in front of the backlog, and read progress is recorded.
    pub(crate) fn remove_receiver(&self, side: &mut ReceiverSide<T>) -> Result<(), CloseError> {
        let (memory, result) = {
            let mut state = self.state.lock();
            state.receiver_alive = false;
            self.fold_taken(&mut state);
            let memory = mem::take(&mut state.memory);
            let result = if self.durable {
                self.persist(&mut state.disk, side, &memory)
            } else {
                state.disk.release_all(&mut side.cursor);
                Ok(())
            };
            self.spilling.store(false, Ordering::Relaxed);
            state.in_memory = 0;
            self.taken.store(0, Ordering::Relaxed);
            self.space.notify_all();
            (memory, result)
        };
        // Items are dropped outside the lock: their `Drop` may use the channel.
        drop(memory);
        drop(mem::take(&mut side.local));
        drop(mem::take(&mut side.prefetched));
        self.prefetched.store(0, Ordering::Relaxed);
        side.cursor = None;
        result
    }

    /// Writes the receiver's batch and the memory queue, oldest first, to
    /// disk, and records read progress.
    fn persist(&self, disk: &mut DiskQueue, side: &ReceiverSide<T>, memory: &VecDeque<T>) -> Result<(), CloseError> {
        let mut frames = Vec::with_capacity(side.local.len() + memory.len());
        let mut first_error = None;
        for item in side.local.iter().chain(memory) {
            match (self.encode)(item) {
                Ok(frame) => frames.push(frame),
                Err(err) => {
                    tracing::error!(error = %err, "an item in memory cannot be encoded; it is lost at shutdown");
                    first_error.get_or_insert(err);
                }
            }
        }
        let unencodable = side.local.len() + memory.len() - frames.len();
        match (disk.shutdown(side.cursor.as_ref(), &frames), first_error) {
            (Ok(()), None) => Ok(()),
            (Ok(()), Some(source)) => Err(CloseError { unpersisted: unencodable, source }),
            (Err((unwritten, source)), _) => {
                tracing::error!(error = %source, unwritten, "items in memory could not be written at shutdown");
                Err(CloseError { unpersisted: unwritten + unencodable, source })
            }
        }
    }
}
