//! The channel core shared by every [`Sender`] and the [`Receiver`]: the
//! memory tier, the handoff to the disk tier, blocking and disconnection.
//!
//! # Ordering
//!
//! There are two locks: the channel lock (`Shared::state`: the disk tier,
//! blocking, everything but memory) and the memory lock (`Shared::memory`:
//! the memory tier, its numbering, and whether it is *open*). When both
//! are held, the channel lock is taken first. A send's place in the
//! channel's total order is decided under one of them:
//!
//! - **Fast path.** A send that finds memory open and with room puts its
//!   item there under the memory lock alone, and numbers it there.
//! - **Slow path.** Any other send takes the channel lock, and closes
//!   memory (under both locks) before it decides: to memory, if the disk is
//!   empty and memory has room (then it reopens it), or to disk.
//!
//! Memory is open only while nothing is on disk, the directory is there,
//! the receiver is alive and the mode is not `WriteAhead`; it is closed
//! before the first item of a spill reaches the disk, and reopened (under
//! both locks) only once the disk backlog is gone. So once anything is on
//! disk, every later item follows it there until the receiver has consumed
//! the whole disk backlog, memory holds only items older than everything on
//! disk, and while memory is closed only holders of the channel lock add
//! to it. The receiver takes, in this order:
//!
//! 1. its local batch (items it swapped out of memory in one go, and in
//!    front of them items of peeked batches given back uncommitted),
//! 2. items it decoded ahead from disk (`Overflow` mode only),
//! 3. the record under its segment cursor (the oldest on disk): the
//!    item a send kept beside that very frame, if it kept one
//!    ([`staged`]; `Overflow` mode only), and the decoded frame otherwise;
//!    when the kept items are every record left on disk, it moves them
//!    all into 2 at once, under the channel lock, which empties the disk
//!    and opens memory if their frames are all in the segment it is
//!    reading (they are older than anything memory receives after that,
//!    and memory is swapped out only once 2 is empty),
//! 4. memory, by swapping the whole queue into its local batch (under the
//!    memory lock alone when a send said items arrived, and again under
//!    both locks before it looks at the disk),
//! 5. the disk, by moving its cursor to the oldest unread record, under
//!    the channel lock, having found memory empty under both.
//!
//! A local batch taken while the disk held items is older than all of
//! them; a cursor positioned while memory was empty is older than anything
//! memory receives later (memory is closed while the disk holds records,
//! and the cursor's limit is the last record there when it was placed).
//! Both facts make that order FIFO. The local batch is refilled from
//! memory only once the items decoded ahead are gone, and a peeked batch
//! gives back only items it received, which are older than anything still
//! decoded ahead.
//!
//! A receive that parks (or an async one that registers its waker) first
//! notes it in memory (`Memory::receiver_waiting`), under both locks and
//! only if memory is still empty; a fast-path send that finds the note
//! takes the channel lock to wake it. No item can slip in between the
//! receive's last look and its note.
//!
//! # Sequence numbers
//!
//! Every item accepted gets the next number where its place was decided:
//! `Memory::next_seq` under the memory lock while memory is open,
//! `State::next_seq` under the channel lock while it is closed; the count
//! moves from one to the other when memory opens or closes, under both
//! locks. So numbers follow the total order. In memory they are kept as
//! runs beside the items ([`Numbered`]); a spilled frame gets its number
//! stamped in under the lock, after it was encoded outside it. Numbers are
//! reserved in the sequence file in blocks (see `crate::sequence`), so
//! they never repeat; the fast path stops at the end of the reserved block
//! (`Memory::seq_limit`) and leaves reserving the next to the slow path.
//!
//! # Costs
//!
//! The memory path never encodes, and takes one lock whose uncontended
//! take is one compare-and-swap and whose release is one store
//! ([`FastMutex`](crate::sync::FastMutex)); the receiver's own state is
//! behind another such lock, taken once per item. A send that spills
//! encodes its item in a per-thread buffer before it takes the channel
//! lock (when the channel is known to be spilling) and only copies bytes
//! into the write buffer under it (and, in `Overflow` mode, keeps the item
//! beside them, so that a receiver close behind neither reads nor decodes
//! it); while the disk holds items it does not take the memory lock at
//! all. The receiver takes the memory lock once per
//! memory batch, not per item, and reports what it took through a counter
//! that senders fold into `in_memory` only when memory looks full.
//!
//! Senders that spill do not wait for the receiver (in `Overflow` mode,
//! until the disk is full), so on a machine with fewer cores than busy
//! threads the receiver gets only its share of the processor, and once it
//! falls behind by more than the items kept beside their frames it reads
//! and decodes, which costs more than a send, and does not catch up while
//! they keep sending. So a blocking send whose item could not be kept,
//! as many items being kept as the bound allows, yields its thread if the
//! receiver received anything since a send last looked: a receiver that
//! is receiving gets the processor, an idle one costs nothing, and on a
//! machine with a core to spare the yield is one system call that
//! returns at once. An async send does not yield.
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
mod staged;
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
use crate::sync::{
    AtomicBool, AtomicU64, AtomicUsize, CachePadded, Condvar, FastMutex, FastMutexGuard, Mutex, Ordering,
};
use staged::Staged;
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
    /// The sequence number the next item accepted gets, while memory is
    /// closed to the fast path (`memory_closed`); `Memory::next_seq` is
    /// the one while it is open. Handed over under both locks.
    next_seq: u64,
    /// Whether `Memory::open` is false: kept here too so that the spill
    /// path need not take the memory lock to know.
    memory_closed: bool,
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
    /// Items written to disk since open.
    spilled: u64,
    /// The receiver's count of items received, as a spilling send last
    /// looked at it (see `send`'s yield).
    seen_received: u64,
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
    /// Records waiting for a sync when the last one finished: how many
    /// senders the next group commit's leader waits for.
    group_peak: u64,
    /// While a group commit's leader waits for senders to join: the
    /// number of unsynced records at which the append that makes it wakes
    /// the leader (`Shared::gathered`); 0 otherwise.
    gather_for: u64,
    /// How long the last group commit's sync took: the longest the next
    /// leader waits for others to join.
    #[cfg_attr(loom, allow(dead_code))]
    last_sync: std::time::Duration,
    /// Records whose group commit failed, until each sender has seen it.
    commit_failures: CommitFailures,
    /// Spilled items kept as they were sent, beside their frames, not yet
    /// handed to the receiver ([`staged`]).
    staged: Staged<T>,
}

/// The memory tier and what a send needs to use it without the channel
/// lock, under a lock of its own (`Shared::memory`).
struct Memory<T> {
    /// Items not yet taken by the receiver.
    items: Numbered<T>,
    /// Whether a send may put its item here without the channel lock:
    /// nothing is on disk, the directory is there, the receiver is alive
    /// and the mode is not `WriteAhead`. Written under both locks.
    open: bool,
    /// The sequence number the next item accepted gets.
    next_seq: u64,
    /// Numbers below this are reserved in the sequence file; a send that
    /// would take this one reserves more, under the channel lock.
    seq_limit: u64,
    /// Items counted against the memory bound: `items` plus the
    /// receiver's local batch as of the last fold of `Shared::taken`.
    in_memory: usize,
    /// `Shared::taken` as of its last fold into `in_memory`.
    folded: u64,
    /// Items put here since open (those written to disk are
    /// `State::spilled`).
    sent: u64,
    /// Whether the receiver is gone: a send fails at once, before it
    /// would encode its item for the disk path.
    receiver_gone: bool,
    /// Whether a receive is parked or an async receive registered, so a
    /// send into memory must take the channel lock to wake it.
    receiver_waiting: bool,
}

impl<T> Memory<T> {
    /// Adds `item`, numbered `seq`, counting it against the bound and as
    /// sent.
    fn push(&mut self, seq: u64, item: T) {
        self.items.push_back(seq, item);
        self.in_memory += 1;
        self.sent += 1;
    }
}

/// The part of a channel every handle shares.
pub(crate) struct Shared<T> {
    /// Everything that decides where an item goes, but for the memory
    /// fast path. Taken before `memory` when both are held. On a cache
    /// line of its own: spilling senders write it on every send, and the
    /// settings read on every send would sit beside it otherwise.
    state: CachePadded<Mutex<State<T>>>,
    /// The memory tier. A send that finds it open and with room takes
    /// only this lock (see the module docs).
    memory: CachePadded<FastMutex<Memory<T>>>,
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
    /// A group commit's leader waits here for the senders of the last
    /// group to append again (`State::gather_for`).
    gathered: Condvar,
    /// A hint, written under the lock, that the disk holds items, so a
    /// send should encode before taking the lock. Never trusted for order.
    /// Every send reads it: it is stored only when it changes, on a line
    /// of its own.
    spilling: CachePadded<AtomicBool>,
    /// Items the receiver popped from its local batch since open. Written
    /// by the receiver only, with a load and a store (no read-modify-write
    /// on the receive path); folded into `State::in_memory` under the lock,
    /// which keeps how much of it was folded (`State::folded`).
    taken: CachePadded<AtomicU64>,
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
    /// Most spilled items kept beside their frames ([`staged`]): 0, none,
    /// but in `Overflow` mode with plain segments.
    kept_limit: usize,
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
pub(crate) type SideGuard<'a, T> = FastMutexGuard<'a, ReceiverSide<T>>;

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
    /// per batch rather than once per record, and kept items taken with
    /// them (up to the kept bound more). They are newer than `local`
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
    /// How many items the last swap of memory brought into `local`.
    last_swap: usize,
    /// Spilled items kept as they were sent, taken from `State::staged`,
    /// for the cursor to take when it reaches their frames.
    kept: staged::Kept<T>,
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
        use crate::options::{Compression, Durability, SyncPolicy};
        let channel_id = disk.channel_id();
        // With nothing on disk, nothing numbered before now is waiting.
        let done_below = if disk.items() == 0 { disk.first_seq() } else { 0 };
        let kept_limit = if settings.durability == Durability::Overflow && settings.compression == Compression::None {
            staged::STAGED_MAX.min(settings.memory_capacity)
        } else {
            0
        };
        let memory_open = settings.durability != Durability::WriteAhead && disk.items() == 0 && !disk.orphaned();
        Shared {
            memory: CachePadded(FastMutex::new(Memory {
                items: Numbered::default(),
                open: memory_open,
                next_seq: disk.first_seq(),
                seq_limit: disk.seq_checkpoint(),
                in_memory: 0,
                folded: 0,
                sent: 0,
                receiver_gone: false,
                receiver_waiting: false,
            })),
            state: CachePadded(Mutex::new(State {
                next_seq: disk.first_seq(),
                memory_closed: !memory_open,
                disk,
                senders: 1,
                receiver_alive: true,
                receivers_waiting: 0,
                receivers_notified: false,
                recv_wakers: Wakers::default(),
                send_wakers: Wakers::default(),
                senders_waiting: 0,
                spilled: 0,
                seen_received: 0,
                dropped: 0,
                appended: 0,
                synced: 0,
                syncing: false,
                sync_round: 0,
                group_commits: 0,
                sync_target: 0,
                group_peak: 0,
                gather_for: 0,
                last_sync: std::time::Duration::ZERO,
                commit_failures: CommitFailures::default(),
                staged: Staged::new(kept_limit),
            })),
            ready: Condvar::new(),
            space: Condvar::new(),
            synced: [Condvar::new(), Condvar::new()],
            gathered: Condvar::new(),
            spilling: CachePadded(AtomicBool::new(false)),
            taken: CachePadded::default(),
            received: CachePadded::default(),
            done_below: CachePadded(AtomicU64::new(done_below)),
            prefetched: CachePadded::default(),
            queued: CachePadded::default(),
            kept_limit,
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
            last_swap: 0,
            kept: staged::Kept::default(),
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
    /// Whether spilled items are kept beside their frames at all.
    fn keeps_spilled(&self) -> bool {
        self.kept_limit > 0
    }

    /// Tells the receiver something arrived: wakes it if it is parked (and
    /// one async receive, if any waits), and sets the hint it watches while
    /// it spins.
    fn wake_receiver(&self, state: &mut State<T>) {
        self.set_queued();
        if state.receivers_waiting > 0 && !state.receivers_notified {
            state.receivers_notified = true;
            self.ready.notify_all();
        }
        if !state.recv_wakers.is_empty() {
            state.recv_wakers.wake_one();
        }
    }

    /// Sets the hint a spinning receiver watches (a store only when it
    /// changes, so that senders do not pull its cache line over each time).
    fn set_queued(&self) {
        if !self.queued.load(Ordering::Relaxed) {
            self.queued.store(true, Ordering::Relaxed);
        }
    }

    /// A send put an item in memory without the channel lock and found a
    /// receive waiting: wakes it under the lock, and leaves the flag set
    /// if receives still wait after that (async ones, woken one at a time).
    fn wake_after_push(&self) {
        let mut state = self.state.lock();
        self.wake_receiver(&mut state);
        if Self::receiver_waiting(&state) {
            self.memory.lock().receiver_waiting = true;
        }
    }

    /// After the disk backlog shrank by more than one record or emptied:
    /// updates the spilling hint and wakes senders waiting for space.
    fn after_disk_change(&self, state: &mut State<T>) {
        if state.disk.items() == 0 && self.spilling.load(Ordering::Relaxed) {
            self.spilling.store(false, Ordering::Relaxed);
            tracing::debug!("disk backlog drained; back to memory");
        }
        self.sync_memory_gate(state);
        self.wake_senders(state);
    }

    fn wake_senders(&self, state: &mut State<T>) {
        if state.senders_waiting > 0 {
            self.space.notify_all();
        }
        state.send_wakers.wake_all();
    }

    /// Subtracts what the receiver took from its batch since the last fold.
    fn fold_taken(&self, memory: &mut Memory<T>) {
        let taken = self.taken.load(Ordering::Acquire);
        // The difference fits: it is at most what `in_memory` counted.
        memory.in_memory -= (taken - memory.folded) as usize;
        memory.folded = taken;
    }

    /// Opens memory to the fast path, or closes it, as the channel now
    /// stands ([`memory_open`](Self::memory_open)).
    fn sync_memory_gate(&self, state: &mut State<T>) {
        if self.memory_open(state) != state.memory_closed {
            return;
        }
        let mut memory = self.memory.lock();
        self.set_memory_gate(state, &mut memory);
    }

    /// [`sync_memory_gate`](Self::sync_memory_gate) with the memory lock held.
    fn set_memory_gate(&self, state: &mut State<T>, memory: &mut Memory<T>) {
        if self.memory_open(state) {
            Self::open_memory(state, memory);
        } else {
            Self::close_memory(state, memory);
        }
    }

    /// Closes memory to the fast path: numbering moves to the channel lock.
    fn close_memory(state: &mut State<T>, memory: &mut Memory<T>) {
        if memory.open {
            memory.open = false;
            state.next_seq = memory.next_seq;
            state.memory_closed = true;
        }
    }

    /// Opens memory to the fast path: numbering moves to the memory lock,
    /// up to the numbers reserved in the sequence file.
    fn open_memory(state: &mut State<T>, memory: &mut Memory<T>) {
        if !memory.open {
            memory.next_seq = state.next_seq;
            memory.seq_limit = state.disk.seq_checkpoint();
            memory.open = true;
            state.memory_closed = false;
        }
    }

    /// The number the next item accepted gets, with both locks held.
    fn next_seq_of(state: &State<T>, memory: &Memory<T>) -> u64 {
        if memory.open {
            memory.next_seq
        } else {
            state.next_seq
        }
    }

    /// Whether a send may use memory without the channel lock, as the
    /// channel stands now.
    fn memory_open(&self, state: &State<T>) -> bool {
        !self.write_ahead && state.receiver_alive && state.disk.items() == 0 && !state.disk.orphaned()
    }

    /// Whether a send into memory must take the channel lock to wake a
    /// receive: one is parked and not yet notified, or an async one waits.
    fn receiver_waiting(state: &State<T>) -> bool {
        (state.receivers_waiting > 0 && !state.receivers_notified) || !state.recv_wakers.is_empty()
    }

    /// A snapshot of the channel.
    pub(crate) fn stats(&self) -> Stats {
        let state = self.state.lock();
        let (in_memory, sent) = {
            let mut memory = self.memory.lock();
            self.fold_taken(&mut memory);
            (memory.in_memory, memory.sent)
        };
        let tier = state.disk.tier_stats();
        Stats {
            in_memory,
            on_disk: state.disk.items() + self.prefetched.load(Ordering::Relaxed) as u64,
            disk_bytes: state.disk.bytes(),
            segments: state.disk.segments(),
            sent: sent + state.spilled,
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
        let state = self.state.lock();
        let memory = self.memory.lock();
        Self::next_seq_of(&state, &memory)
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
        let left = !side.local.is_empty()
            || !side.prefetched.is_empty()
            || !self.memory.lock().items.is_empty()
            || state.disk.items() > 0;
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
