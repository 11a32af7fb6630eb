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
//!    front of them items of peeked batches given back uncommitted),
//! 2. items it decoded ahead from disk (`Overflow` mode only),
//! 3. the record under its segment cursor (the oldest on disk),
//! 4. memory, by swapping the whole queue into its local batch,
//! 5. the disk, by moving its cursor to the oldest unread record.
//!
//! A local batch taken while the disk held items is older than all of
//! them; a cursor positioned while memory was empty is older than anything
//! memory receives later. Both facts make that order FIFO. The local batch
//! is refilled from memory only once the items decoded ahead are gone, and
//! a peeked batch gives back only items it received, which are older than
//! anything still decoded ahead.
//!
//! # Sequence numbers
//!
//! Every item accepted gets `State::next_seq` under the lock, so numbers
//! follow the total order. In memory they are kept as runs beside the
//! items ([`Numbered`]); a spilled frame gets its number stamped in under
//! the lock, after it was encoded outside it. Numbers are reserved in the
//! sequence file in blocks (see `crate::sequence`), so they never repeat.
//!
//! # Costs
//!
//! The memory path never encodes. A send that spills encodes its item in a
//! per-thread buffer before it takes the lock (when the channel is known
//! to be spilling) and only copies bytes into the write buffer under it.
//! The receiver takes the lock once per memory batch, not per item, and
//! reports what it took through an atomic counter that senders fold into
//! `in_memory` only when memory looks full.
//!
//! # Files
//!
//! This module holds the state and what every path shares (waking, the
//! fold of the receiver's counter, stats, the sender count); each path has
//! a file: [`send`] (the memory fast path, the spill decision, `WhenFull`,
//! numbering), [`recv`] (the local batch, reading from disk, the wait
//! strategy), [`peek`] (batches taken uncommitted: giving back, settling),
//! [`commit`] (group commit and the interval sync) and [`shutdown`] (what
//! a receiver leaving does).

mod commit;
mod numbered;
mod peek;
mod recv;
mod send;
mod shutdown;
#[cfg(not(loom))]
mod tier;
mod wakers;

#[cfg(not(loom))]
pub(crate) use commit::start_interval_sync;
use commit::CommitFailures;
pub(crate) use numbered::Numbered;
#[cfg(not(loom))]
pub(crate) use tier::start_tier;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io;
use std::task::Waker;
use std::time::Instant;

use crate::disk::{DiskQueue, Reader};
use crate::options::{Settings, WhenFull};
use crate::stats::Stats;
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, CachePadded, Condvar, Mutex, MutexGuard, Ordering};
use wakers::Wakers;

/// How long an operation may wait.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait<'a> {
    /// Not at all.
    Never,
    /// Until this instant.
    Until(Instant),
    /// As long as it takes.
    Forever,
    /// Not at all, but if the operation would have waited, this future's
    /// waker is registered (under the same lock as the decision) and woken
    /// when it should try again. The cell holds the future's number, 0
    /// until its first registration.
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    Register(&'a Waker, &'a Cell<u64>),
}

impl Wait<'_> {
    /// A wait of `timeout` from now; a timeout too large to represent
    /// waits forever.
    pub(crate) fn timeout(timeout: std::time::Duration) -> Wait<'static> {
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

/// State guarded by the channel lock.
struct State<T> {
    /// The memory tier: items not yet taken by the receiver.
    memory: Numbered<T>,
    /// The sequence number the next item accepted gets.
    next_seq: u64,
    /// Items counted against the memory bound: `memory` plus the
    /// receiver's local batch as of the last fold of `Shared::taken`.
    in_memory: usize,
    /// The disk tier.
    disk: DiskQueue,
    /// Live `Sender` handles.
    senders: usize,
    /// Whether the `Receiver` is alive.
    receiver_alive: bool,
    /// Blocking receives parked on `Shared::ready`.
    receivers_waiting: usize,
    /// Whether every receive parked now was notified since it parked, so
    /// further news need not notify again (senders would otherwise
    /// notify on every send until a woken receiver gets the lock).
    receivers_notified: bool,
    /// Async receives waiting for an item or the last sender to leave.
    recv_wakers: Wakers,
    /// Async sends waiting for disk space or the receiver to leave.
    send_wakers: Wakers,
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
    /// Syncs a group commit made, since open (`Stats::group_commits`).
    group_commits: u64,
    /// The last record the sync in progress covers.
    sync_target: u64,
    /// Records whose group commit failed, until each sender has seen it.
    commit_failures: CommitFailures,
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
    /// Every item numbered below this has been taken and committed (or
    /// was dropped or lost): a lower bound, raised by the receiver after a
    /// committing take, a settled peek, and whenever it finds the channel
    /// empty with nothing uncommitted. A sharded channel's hand-over rule
    /// reads it from other threads ([`Shared::done_below`]).
    done_below: CachePadded<AtomicU64>,
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
    /// Async receives registered in `State::recv_wakers`, as of the last
    /// change under the lock: a receive that got an item looks at it to
    /// know whether to pass a wakeup on. A hint only.
    recv_waiters: AtomicUsize,
    /// Whether a spilled item of this type has been decoded back once, to
    /// catch types that serialize but cannot be read back (bincode does
    /// not support `deserialize_any`) before any of them is accepted.
    round_trip_checked: AtomicBool,
    /// Bound on `State::in_memory`.
    capacity: usize,
    /// The channel's id, as the disk tier recorded it.
    pub(crate) channel_id: crate::ChannelId,
    /// How the channel is named in published metrics, if it is.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) labels: Option<crate::options::MetricLabels>,
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
    /// Longest a group commit waits for more senders
    /// ([`Settings::group_commit_wait`]).
    #[cfg_attr(loom, allow(dead_code))]
    group_commit_wait: std::time::Duration,
    /// `SyncPolicy::Always`: a spilled record is synced before `send`
    /// returns.
    sync_always: bool,
    /// `WriteAhead`: every item goes to disk before `send` returns.
    write_ahead: bool,
    /// `Persistent` or `WriteAhead`: a clean shutdown writes memory to disk.
    durable: bool,
    /// Encodes an item as a frame with the given sequence number; kept
    /// here so that shutdown, which runs in `Drop` where `T: Serialize`
    /// cannot be named, can persist memory.
    encode: fn(&T, u64) -> io::Result<Vec<u8>>,
}

/// The receiver's own state, held while a receive runs (and released
/// while it parks, so that another thread or task may receive meanwhile).
pub(crate) type SideGuard<'a, T> = MutexGuard<'a, ReceiverSide<T>>;

/// The receiver's own state, outside the channel lock.
pub(crate) struct ReceiverSide<T> {
    /// Items swapped out of memory in one batch, oldest first.
    local: Numbered<T>,
    /// How many items at the front of `local` were peeked and given back
    /// uncommitted. Segments read while any remain are held: they may be
    /// the only durable copy of those items.
    put_back: usize,
    /// The first sequence number of every peeked batch not yet committed
    /// or given back, with how many batches start there.
    peeks: BTreeMap<u64, usize>,
    /// Whether the disk tier holds read segments (`DiskQueue::set_hold`)
    /// because something taken is not committed.
    holding: bool,
    /// Items decoded ahead from the disk backlog, oldest first, in
    /// `Overflow` mode only: read and accounted for in batches of up to
    /// [`PREFETCH`] records, so the receiver takes the channel lock once
    /// per batch rather than once per record. They are newer than `local`
    /// and older than anything still on disk or in memory.
    prefetched: Numbered<T>,
    /// Read position on disk.
    reader: Reader,
    /// The highest sequence number taken since open, committed or not.
    /// Items are taken in number order (only items given back come
    /// again, and they are below it), so every item below it was taken.
    last_taken: Option<u64>,
    /// Items the peek in progress has taken so far: taken, not yet
    /// registered in `peeks`, and not committed.
    in_peek: usize,
}

/// Most records the receiver decodes ahead from disk in `Overflow` mode.
/// In the durable modes a record counts as read only once it is handed
/// out, so a crash cannot lose what was decoded ahead: it reads one at a
/// time there.
const PREFETCH: usize = if cfg!(loom) { 2 } else { 64 };

impl<T: serde::Serialize> Shared<T> {
    /// The core of a new channel over `disk`, with one sender and the
    /// receiver alive.
    pub(crate) fn new(disk: DiskQueue, settings: &Settings) -> Shared<T> {
        use crate::options::{Durability, SyncPolicy};
        let channel_id = disk.channel_id();
        // With nothing on disk, nothing numbered before now is waiting.
        let done_below = if disk.items() == 0 { disk.first_seq() } else { 0 };
        Shared {
            state: Mutex::new(State {
                memory: Numbered::default(),
                next_seq: disk.first_seq(),
                in_memory: 0,
                disk,
                senders: 1,
                receiver_alive: true,
                receivers_waiting: 0,
                receivers_notified: false,
                recv_wakers: Wakers::default(),
                send_wakers: Wakers::default(),
                senders_waiting: 0,
                sent: 0,
                spilled: 0,
                dropped: 0,
                appended: 0,
                synced: 0,
                syncing: false,
                sync_round: 0,
                group_commits: 0,
                sync_target: 0,
                commit_failures: CommitFailures::default(),
            }),
            ready: Condvar::new(),
            space: Condvar::new(),
            synced: [Condvar::new(), Condvar::new()],
            spilling: AtomicBool::new(false),
            taken: CachePadded::default(),
            received: CachePadded::default(),
            done_below: CachePadded(AtomicU64::new(done_below)),
            prefetched: CachePadded::default(),
            queued: CachePadded::default(),
            recv_waiters: AtomicUsize::new(0),
            round_trip_checked: AtomicBool::new(false),
            capacity: settings.memory_capacity,
            channel_id,
            labels: settings.labels.clone(),
            retry_unreadable: settings.retry_unreadable,
            read_ahead: if settings.durability == Durability::Overflow {
                PREFETCH.min(settings.memory_capacity.max(1))
            } else {
                1
            },
            when_full: settings.when_full,
            sync_on_flush: settings.sync != SyncPolicy::Never,
            group_commit_wait: settings.group_commit_wait,
            sync_always: settings.sync == SyncPolicy::Always,
            write_ahead: settings.durability == Durability::WriteAhead,
            durable: settings.durability != Durability::Overflow,
            encode: |item, seq| {
                crate::encoding::with_frame(item, |frame| {
                    crate::segment::format::stamp_frame(frame, seq);
                    frame.to_vec()
                })
            },
        }
    }
}

impl<T> ReceiverSide<T> {
    /// A receiver that has taken nothing yet from a channel over `disk`.
    pub(crate) fn new(disk: &DiskQueue) -> ReceiverSide<T> {
        ReceiverSide {
            local: Numbered::default(),
            put_back: 0,
            peeks: BTreeMap::new(),
            holding: false,
            prefetched: Numbered::default(),
            reader: Reader::new(disk),
            last_taken: None,
            in_peek: 0,
        }
    }

    /// The number of the oldest item taken from the channel and not yet
    /// committed: the first of a peeked batch still out, or of the items
    /// given back. `None` when everything taken is committed.
    fn oldest_uncommitted(&self) -> Option<u64> {
        let peeked = self.peeks.keys().next().copied();
        let given_back = if self.put_back > 0 { self.local.front_seq() } else { None };
        match (peeked, given_back) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<T> Shared<T> {
    /// Tells the receiver something arrived: wakes it if it is parked (and
    /// one async receive, if any waits), and sets the hint it watches while
    /// it spins.
    fn wake_receiver(&self, state: &mut State<T>) {
        if !self.queued.load(Ordering::Relaxed) {
            self.queued.store(true, Ordering::Relaxed);
        }
        if state.receivers_waiting > 0 && !state.receivers_notified {
            state.receivers_notified = true;
            self.ready.notify_all();
        }
        if !state.recv_wakers.is_empty() {
            state.recv_wakers.wake_one();
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

    fn wake_senders(&self, state: &mut State<T>) {
        if state.senders_waiting > 0 {
            self.space.notify_all();
        }
        state.send_wakers.wake_all();
    }

    /// Subtracts what the receiver took from its batch since the last fold.
    fn fold_taken(&self, state: &mut State<T>) {
        state.in_memory -= self.taken.swap(0, Ordering::Acquire);
    }

    /// A snapshot of the channel.
    pub(crate) fn stats(&self) -> Stats {
        let mut state = self.state.lock();
        self.fold_taken(&mut state);
        let tier = state.disk.tier_stats();
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
            group_commits: state.group_commits,
            remote_segments: tier.remote_segments,
            remote_bytes: tier.remote_bytes,
            uploads: tier.uploads,
            fetches: tier.fetches,
            remote_failures: tier.failures,
        }
    }

    /// Every item numbered below the result has been delivered: taken and
    /// committed, dropped, or lost. A lower bound that only grows.
    pub(crate) fn done_below(&self) -> u64 {
        self.done_below.load(Ordering::Acquire)
    }

    /// Raises `done_below` to `done`. Only the receiver writes it, with
    /// its side held, so a load and a store do (cheaper than an atomic
    /// maximum on the receive path).
    fn raise_done_below(&self, done: u64) {
        if done > self.done_below.load(Ordering::Relaxed) {
            self.done_below.store(done, Ordering::Release);
        }
    }

    /// The number the next item accepted will get.
    pub(crate) fn next_seq(&self) -> u64 {
        self.state.lock().next_seq
    }

    /// An async receive that registered its waker is done or dropped:
    /// removes its registration, or, if a wakeup was already spent on it,
    /// passes that wakeup on to the next waiting receive, so that no item
    /// sits unclaimed while a receive waits.
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) fn forget_recv_waker(&self, id: u64) {
        let mut state = self.state.lock();
        if !state.recv_wakers.remove(id) {
            state.recv_wakers.wake_one();
        }
        self.recv_waiters.store(state.recv_wakers.len(), Ordering::Relaxed);
    }

    /// After an async receive got its items, with `side` still held:
    /// removes the receive's registration, if it left one (`registered`),
    /// and, if other receives wait and items remain, wakes the next (the
    /// channel wakes one receive per item arriving, and a receive may have
    /// been woken for an item another took, or find several).
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) fn after_async_recv(&self, side: &ReceiverSide<T>, registered: Option<u64>) {
        if registered.is_none() && self.recv_waiters.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut state = self.state.lock();
        if let Some(id) = registered {
            state.recv_wakers.remove(id);
        }
        let left =
            !side.local.is_empty() || !side.prefetched.is_empty() || !state.memory.is_empty() || state.disk.items() > 0;
        if left {
            state.recv_wakers.wake_one();
        }
        self.recv_waiters.store(state.recv_wakers.len(), Ordering::Relaxed);
    }

    /// An async send that registered its waker is done or dropped.
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) fn forget_send_waker(&self, id: u64) {
        self.state.lock().send_wakers.remove(id);
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
            self.queued.store(true, Ordering::Relaxed);
            self.ready.notify_all();
            state.recv_wakers.wake_all();
            if !state.receiver_alive {
                // The last handle: the directory is free from now on.
                state.disk.close();
            }
        }
    }
}
