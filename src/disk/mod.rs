//! [`DiskQueue`]: the disk tier of one channel, kept under the channel's
//! lock.
//!
//! It owns the active [`SegmentWriter`], the list of sealed segments
//! (oldest first), and the counts the bounds are checked against. The
//! receiver's [`Reader`] (its cursor on the segment being read) lives
//! outside the lock; the queue only moves it from segment to segment, in
//! one place ([`reader`]), and learns what it consumed.
//!
//! Invariants:
//! - `items` is the number of records written and not yet consumed,
//!   dropped or lost to damage; `bytes` the total length of the segment
//!   files the queue still owns, active included;
//! - every limit is checked by [`DiskQueue::fit`] before anything is
//!   written, so a refused record changes nothing on disk;
//! - the cursor reads the oldest segment first, and no segment is deleted
//!   while the cursor has it open, except when everything in it has been
//!   consumed;
//! - when `items` reaches zero every sealed segment is deleted and the
//!   active one is kept, with the cursor at its end, so the next spill
//!   appends to it: an idle channel holds at most one segment, and a
//!   channel whose receiver keeps catching up does not create a file per
//!   spill episode;
//! - a segment read to the end whose deletion fails is recorded as read
//!   (in the progress file, at once in the durable modes), so it is never
//!   delivered again;
//! - a segment that vanished or cannot be read costs its unread records,
//!   counted in `Stats::lost` and logged with the file name, and reading
//!   goes on with the next one; a transient error (see
//!   [`storage::transient`]) only makes the receiver retry;
//! - under `SyncPolicy::Always` the receiver reads only records on stable
//!   storage, so a failed sync can take its records back
//!   ([`DiskQueue::roll_back_unsynced`]) before anyone saw them;
//! - once the directory is found deleted (or replaced) behind the channel's
//!   back, nothing more is written to disk ([`Fit::Gone`]).
//!
//! # Files
//!
//! This module holds the queue's state, opening, the accessors and the
//! directory check; [`write`] is the log writer's side (limits, append,
//! rotate, drop-oldest, sync points), [`reader`] is the receiver's read
//! position, [`read`] moves it and gives up unreadable segments, [`release`] decides which
//! segments may be deleted (consumed, retired until committed, set aside,
//! recorded as read), [`tier`] offloads segments to a remote store and
//! fetches them back, and [`shutdown`] writes a clean shutdown.

mod read;
mod reader;
mod release;
mod shutdown;
pub(crate) mod tier;
mod write;

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::dir::ChannelDir;
use crate::err::OpenError;
use crate::index::{self, Entry, Index};
use crate::options::{Compression, Durability, Settings, SyncPolicy};
use crate::recover::{recover, Recovered};
use crate::segment::{segment_path, SegmentMeta, SegmentWriter};
use crate::storage::Fs;
use write::FreeSpace;

pub(crate) use reader::Reader;

/// Whether a record of some size can be written now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    /// It can.
    Fits,
    /// Not until the receiver frees space (or a policy drops something).
    Full,
    /// Never: it is larger than a segment or than the whole disk bound.
    TooLarge,
    /// Never: the channel's directory was deleted or replaced.
    Gone,
}

/// The disk tier of one channel.
#[derive(Debug)]
pub(crate) struct DiskQueue {
    /// The channel's directory and lock.
    dir: ChannelDir,
    /// Size at which the active segment is sealed, in bytes.
    segment_bytes: u64,
    /// Bound on `bytes`.
    max_disk_bytes: u64,
    /// Bound on segment files, the active one included.
    max_segments: usize,
    /// Free space the filesystem must keep, checked now and then.
    free_space: FreeSpace,
    /// Every file operation goes through here (the directory's storage).
    fs: Fs,
    /// When the directory was last checked to still be the channel's.
    checked_dir_at: std::time::Duration,
    /// Whether the directory was found deleted or replaced.
    orphaned: bool,
    /// Segments read to the end whose deletion failed, recorded as read.
    undeleted: Vec<u64>,
    /// Whether a segment was created since the directory was last synced
    /// (only `SyncPolicy::Always` syncs it at once): the next sync of the
    /// active segment syncs the directory first, or a power loss could
    /// forget the file itself.
    dir_unsynced: bool,
    /// Records lost since open to segments that vanished or could not be
    /// read.
    lost: u64,
    /// Whether every error opening or reading a segment counts as
    /// transient (see `Settings::retry_unreadable`).
    retry_unreadable: bool,
    /// Whether segments survive the channel (`Persistent`, `WriteAhead`)
    /// rather than being scratch space (`Overflow`).
    durable: bool,
    /// Whether every append is followed by an fsync.
    sync_always: bool,
    /// Codec of new segments.
    compression: Compression,
    /// Whether read segments are kept until [`release_retired`](Self::release_retired)
    /// instead of deleted at once: while the receiver has taken items it has
    /// not committed (`Receiver::peek_batch`), leaving their segment does
    /// not make them delivered; the commit does.
    hold: bool,
    /// Segments read to the end but kept while `hold` is set, oldest first.
    retired: Vec<SegmentMeta>,
    /// The segment being appended to, if any.
    active: Option<SegmentWriter>,
    /// Sealed segments still owned, oldest first.
    sealed: VecDeque<SegmentMeta>,
    /// The segment the receiver's cursor has open, if any.
    reading: Option<u64>,
    /// Records written and not yet consumed, dropped or lost.
    items: u64,
    /// Whether [`close`](Self::close) ran.
    closed: bool,
    /// Bytes of all owned segment files but the active one, which counts
    /// as its writer's `len()`.
    bytes: u64,
    /// Records skipped as damaged since open.
    corrupt: u64,
    /// Id of the next segment to create.
    next_id: u64,
    /// The number the first item sent after open gets.
    first_seq: u64,
    /// The number the first record of format version 1 read after open
    /// gets: such records carry none, and are numbered as they are read,
    /// from a range below `first_seq` kept for them.
    unnumbered_from: u64,
    /// When the channel's next number reaches this, numbers are reserved
    /// anew in the sequence file.
    seq_checkpoint: u64,
    /// Whether the sequence file is synced when written (`SyncPolicy::Always`).
    sync_seq: bool,
    /// The segment index, in the durable modes (see [`crate::index`]).
    index: Index,
    /// Segments of format version 1 still owned: left out when the index
    /// is compacted, so the next open scans them and knows their format.
    old_format: std::collections::BTreeSet<u64>,
    /// The channel's id (see [`crate::channel_id`]).
    channel_id: crate::ChannelId,
    /// The remote tier, if the channel has one.
    tier: Option<tier::Tier>,
}

impl DiskQueue {
    /// Opens the channel directory. In `Overflow` mode the segments a
    /// previous run left are discarded (disk is scratch space); in the
    /// durable modes they are recovered.
    pub(crate) fn open(dir: &std::path::Path, name: &str, settings: &Settings) -> Result<DiskQueue, OpenError> {
        let mut dir = ChannelDir::open(&settings.fs, dir, name)?;
        let fs = Arc::clone(dir.fs());
        let durable = settings.durability != Durability::Overflow;
        crate::identity::check(&dir, &settings.identity, durable)?;
        let tier_path = dir.path().join(crate::tier::file::TIER_FILE);
        let (mut tier_entries, lost_at_open) = match &settings.remote {
            Some(_) => tier::prepare(&*fs, dir.path(), durable).map_err(|err| OpenError::io(&tier_path, err))?,
            None => {
                let entries =
                    crate::tier::file::read(&*fs, dir.path()).map_err(|err| OpenError::io(&tier_path, err))?;
                if !entries.is_empty() && !durable {
                    // Scratch space: nothing of it is wanted any more.
                    tracing::warn!(path = %tier_path.display(), segments = entries.len(),
                        "an overflow channel opened without its remote store; its objects there are left behind");
                    crate::storage::remove_if_present(&*fs, &tier_path)
                        .map_err(|err| OpenError::io(&tier_path, err))?;
                } else if !entries.is_empty() {
                    let remote = entries.values().filter(|entry| !entry.state.is_local()).count();
                    return Err(OpenError::InvalidConfig {
                        reason: format!(
                            "the remote tier of this channel handles {} segments ({remote} of them only in the \
                             remote store; see {}): open it with Builder::remote and its store",
                            entries.len(),
                            tier_path.display()
                        ),
                    });
                }
                (crate::tier::file::Entries::new(), 0)
            }
        };
        let mut recovered = if durable {
            recover(&mut dir)?
        } else {
            let (old_segments, highest) = dir.scan()?;
            for id in old_segments {
                let path = segment_path(dir.path(), id);
                if let Err(err) = fs.remove(&path) {
                    // Scratch space: a leftover is skipped, never read.
                    tracing::warn!(path = %path.display(), error = %err, "could not delete an old overflow segment");
                }
            }
            // Scratch space keeps no index: one left by a durable run
            // would describe segments that are gone.
            let index_path = dir.path().join(index::INDEX_FILE);
            if let Err(err) = crate::storage::remove_if_present(&*fs, &index_path) {
                tracing::warn!(path = %index_path.display(), error = %err, "could not remove an old segment index");
            }
            Recovered { next_id: highest.map_or(0, |id| id.saturating_add(1)), ..Recovered::default() }
        };
        // `prepare` recorded what it settled; this records what recovery
        // changed, if anything.
        if tier::merge(&mut tier_entries, &mut recovered) {
            crate::tier::file::write(&*fs, dir.path(), &tier_entries).map_err(|err| OpenError::io(&tier_path, err))?;
        }
        let tier = settings.remote.as_ref().map(|store| {
            let remote = crate::tier::RemoteSettings {
                store: Arc::clone(store),
                offload_after_bytes: settings.offload_after_bytes.unwrap_or(settings.max_disk_bytes / 2),
                max_remote_bytes: settings.max_remote_bytes,
                fetch_ahead: settings.fetch_ahead,
            };
            tier::Tier::new(remote, tier_entries)
        });
        let index = if durable { Index::rewritten(recovered.indexed) } else { Index::none() };
        dir.bound_set_aside(settings.max_set_aside_bytes);
        match fs.available_space(dir.path()) {
            Ok(free) if settings.max_disk_bytes != u64::MAX && settings.max_disk_bytes > free => {
                tracing::warn!(path = %dir.path().display(), max_disk_bytes = settings.max_disk_bytes, free,
                    "max_disk_bytes is larger than the free space of the channel's filesystem");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "cannot read the free space of the channel's filesystem"),
        }
        // Numbers go on after every number the sequence file reserved and
        // every number on a record; records of format version 1 get a range
        // of their own first, at most one number per 16-bit fraction of a
        // byte (a compressed block packs up to 65,535 records into a few
        // bytes), which is never exhausted.
        let reserved = crate::sequence::read(&*fs, dir.path());
        let channel_id = crate::channel_id::load(&*fs, dir.path(), reserved == 0, durable);
        let unnumbered_from = reserved.max(recovered.last_seq.map_or(0, |seq| seq.saturating_add(1)));
        let first_seq = unnumbered_from.saturating_add(recovered.unnumbered_bytes.saturating_mul(1 << 16));
        // Synced in the durable modes whatever the policy: a power loss
        // that took an older sequence file back would repeat numbers under
        // the same channel id. It is written once per open and per 2^20
        // numbers.
        let sync_seq = durable;
        let items = recovered.segments.iter().map(|meta| meta.records).sum();
        let bytes = recovered.segments.iter().map(|meta| meta.bytes).sum();
        Ok(DiskQueue {
            dir,
            segment_bytes: settings.segment_bytes,
            max_disk_bytes: settings.max_disk_bytes,
            max_segments: settings.max_segments,
            fs,
            checked_dir_at: coarse_now(),
            orphaned: false,
            undeleted: Vec::new(),
            dir_unsynced: false,
            lost: lost_at_open,
            retry_unreadable: settings.retry_unreadable,
            free_space: FreeSpace { min_free: settings.min_free_bytes, checked_at: None, free: u64::MAX, written: 0 },
            durable,
            sync_always: settings.sync == SyncPolicy::Always,
            compression: settings.compression,
            hold: false,
            retired: Vec::new(),
            active: None,
            sealed: recovered.segments,
            reading: None,
            items,
            closed: false,
            bytes,
            corrupt: recovered.corrupt,
            next_id: recovered.next_id,
            first_seq,
            unnumbered_from,
            seq_checkpoint: first_seq,
            sync_seq,
            index,
            old_format: recovered.old_format,
            channel_id,
            tier,
        })
        .map(|mut queue| {
            queue.reserve_seqs(first_seq);
            queue
        })
    }

    /// Adds a segment just sealed by this run to the index, and compacts
    /// the index once it holds many more entries than live segments.
    fn index_sealed(&mut self, meta: SegmentMeta) {
        if !self.durable {
            return;
        }
        let entry = Entry { meta, version: crate::segment::format::VERSION };
        self.index.add(&*self.fs, self.dir.path(), &entry);
        let live = self.sealed.len() + self.retired.len();
        if self.index.entries() > 2 * live + 64 {
            self.index.close();
            let entries: Vec<Entry> = self
                .sealed
                .iter()
                .chain(&self.retired)
                .filter(|meta| !self.old_format.contains(&meta.id))
                .map(|&meta| Entry { meta, version: crate::segment::format::VERSION })
                .collect();
            self.index = match index::rewrite(&*self.fs, self.dir.path(), &entries) {
                Ok(()) => Index::rewritten(entries.len()),
                Err(err) => {
                    tracing::warn!(error = %err, "could not compact the segment index");
                    Index::rewritten(self.index.entries())
                }
            };
        }
    }

    /// The number the first item sent after open gets.
    pub(crate) fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// When the channel's next number reaches this, call
    /// [`reserve_seqs`](Self::reserve_seqs).
    pub(crate) fn seq_checkpoint(&self) -> u64 {
        self.seq_checkpoint
    }

    /// The channel's id.
    pub(crate) fn channel_id(&self) -> crate::ChannelId {
        self.channel_id
    }

    /// Reserves the next block of numbers from `next` on in the sequence
    /// file. A failure (a full disk) is logged and tried again a sixteenth
    /// of a block later; meanwhile the records on disk still bound the
    /// numbers a restart goes on from, so a send is never refused for it.
    /// Numbers past the recorded end could then repeat after a restart,
    /// once their items are gone, so the id file is removed: the next
    /// open draws a new id (see [`crate::channel_id`]).
    pub(crate) fn reserve_seqs(&mut self, next: u64) {
        let end = next.saturating_add(crate::sequence::RESERVE);
        match crate::sequence::write(&*self.fs, self.dir.path(), end, self.sync_seq) {
            Ok(()) => self.seq_checkpoint = end,
            Err(err) => {
                tracing::warn!(error = %err, "could not reserve sequence numbers; trying again later");
                self.seq_checkpoint = next.saturating_add(crate::sequence::RESERVE / 16);
                crate::channel_id::forget(&*self.fs, self.dir.path());
            }
        }
    }
    /// Records on disk not yet consumed.
    pub(crate) fn items(&self) -> u64 {
        self.items
    }

    /// Bytes of all segment files, the active one's buffered bytes
    /// included.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes - self.remote_only().1 + self.active.as_ref().map_or(0, SegmentWriter::len)
    }

    /// Segment files, the active one and retired ones included.
    pub(crate) fn segments(&self) -> usize {
        self.sealed.len() + self.retired.len() + usize::from(self.active.is_some()) - self.remote_only().0
    }

    /// Whether [`close`](Self::close) ran.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }
    /// Records skipped as damaged since open.
    pub(crate) fn corrupt(&self) -> u64 {
        self.corrupt
    }

    /// Records lost since open to segments that vanished or could not be
    /// read.
    pub(crate) fn lost(&self) -> u64 {
        self.lost
    }

    /// Set-aside files and their bytes.
    pub(crate) fn set_aside_totals(&self) -> (usize, u64) {
        self.dir.set_aside_totals()
    }

    /// Whether the channel's directory was found deleted or replaced.
    pub(crate) fn orphaned(&self) -> bool {
        self.orphaned
    }

    /// Checks, at most every [`DIR_CHECK_INTERVAL`] unless `now`, that the
    /// directory is still the channel's; returns whether it is.
    pub(crate) fn check_dir(&mut self, now: bool) -> bool {
        if self.orphaned {
            return false;
        }
        let at = coarse_now();
        if now || at.saturating_sub(self.checked_dir_at) >= DIR_CHECK_INTERVAL {
            self.checked_dir_at = at;
            if !self.dir.still_ours() {
                tracing::error!(path = %self.dir.path().display(),
                    "the channel's directory was deleted or replaced; nothing more is written to disk");
                self.orphaned = true;
            }
        }
        !self.orphaned
    }

    /// The error a send gets once the directory is gone.
    pub(crate) fn gone(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the channel directory {} was deleted or replaced while the channel was open; \
                 nothing more can be written to it",
                self.dir.path().display()
            ),
        )
    }

    fn path_of(&self, id: u64) -> PathBuf {
        segment_path(self.dir.path(), id)
    }
}

impl DiskQueue {
    /// Ends the disk tier once the last handle is gone: in `Overflow`
    /// mode deletes the segments (scratch space, gone with the channel),
    /// closes the active segment and releases the directory's lock, so
    /// that an open right after finds the channel free even if a
    /// background thread (the interval sync, the metrics) still holds the
    /// channel for a moment. Nothing touches the directory after this.
    pub(crate) fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.close_tier();
        if !self.durable {
            self.delete_all(None);
        }
        self.active = None;
        self.dir_unsynced = false;
        self.dir.unlock();
    }
}

impl Drop for DiskQueue {
    fn drop(&mut self) {
        self.close();
    }
}
/// How often a channel that writes to disk checks that its directory is
/// still its own.
const DIR_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// The time on the kernel's coarse monotonic clock, which it keeps at the
/// resolution of its timer tick (a few milliseconds) and hands out without
/// reading the hardware clock: the checks of the spill path are due every
/// 50 or 100 ms and are asked on every record, where `Instant::now` cost
/// 2% of a spill's time. Elsewhere than Linux and FreeBSD, which have no
/// such clock, the time since the first call, from `Instant`.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
pub(crate) fn coarse_now() -> std::time::Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    // A monotonic clock counts from boot: never negative.
    std::time::Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

/// See the Linux version.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
pub(crate) fn coarse_now() -> std::time::Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}
