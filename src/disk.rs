//! [`DiskQueue`]: the disk tier of one channel, kept under the channel's
//! lock.
//!
//! It owns the active [`SegmentWriter`], the list of sealed segments
//! (oldest first), and the counts the bounds are checked against. The
//! receiver's [`SegmentCursor`] lives outside the lock; the queue only
//! moves it from segment to segment and learns what it consumed.
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

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Compression, Durability, Settings, SyncPolicy};
use crate::dir::ChannelDir;
use crate::err::OpenError;
use crate::progress::{self, Position, Progress};
use crate::recover::{recover, Recovered};
use crate::segment::block::BLOCK_OVERHEAD;
use crate::segment::format::HEADER_LEN;
use crate::segment::writer::SyncPoint;
use crate::segment::{segment_path, SegmentCursor, SegmentMeta, SegmentWriter};
use crate::storage::{self, Fs, SyncHandle};

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
    checked_dir_at: std::time::Instant,
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
    /// instead of deleted at once: a drainer's items are not delivered when
    /// the cursor leaves their segment, only when the sink accepts them.
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
    /// Bytes of all owned segment files but the active one, which counts
    /// as its writer's `len()`.
    bytes: u64,
    /// Records skipped as damaged since open.
    corrupt: u64,
    /// Id of the next segment to create.
    next_id: u64,
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
        let recovered = if durable {
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
            Recovered { next_id: highest.map_or(0, |id| id.saturating_add(1)), ..Recovered::default() }
        };
        dir.bound_set_aside(settings.max_set_aside_bytes);
        match fs.available_space(dir.path()) {
            Ok(free) if settings.max_disk_bytes != u64::MAX && settings.max_disk_bytes > free => {
                tracing::warn!(path = %dir.path().display(), max_disk_bytes = settings.max_disk_bytes, free,
                    "max_disk_bytes is larger than the free space of the channel's filesystem");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "cannot read the free space of the channel's filesystem"),
        }
        let items = recovered.segments.iter().map(|meta| meta.records).sum();
        let bytes = recovered.segments.iter().map(|meta| meta.bytes).sum();
        Ok(DiskQueue {
            dir,
            segment_bytes: settings.segment_bytes,
            max_disk_bytes: settings.max_disk_bytes,
            max_segments: settings.max_segments,
            fs,
            checked_dir_at: std::time::Instant::now(),
            orphaned: false,
            undeleted: Vec::new(),
            dir_unsynced: false,
            lost: 0,
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
            bytes,
            corrupt: recovered.corrupt,
            next_id: recovered.next_id,
        })
    }

    /// Records on disk not yet consumed.
    pub(crate) fn items(&self) -> u64 {
        self.items
    }

    /// Bytes of all segment files, the active one's buffered bytes
    /// included.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes + self.active.as_ref().map_or(0, SegmentWriter::len)
    }

    /// Segment files, the active one and retired ones included.
    pub(crate) fn segments(&self) -> usize {
        self.sealed.len() + self.retired.len() + usize::from(self.active.is_some())
    }

    /// Keeps read segments (see `hold`) or, when `hold` is false, goes back
    /// to deleting them as soon as they are read. Segments already retired
    /// stay until released.
    pub(crate) fn set_hold(&mut self, hold: bool) {
        self.hold = hold;
    }

    /// Deletes the segments retired while `hold` was set: everything read
    /// from them has been delivered. Returns whether anything was freed.
    pub(crate) fn release_retired(&mut self) -> bool {
        let freed = !self.retired.is_empty();
        for meta in std::mem::take(&mut self.retired) {
            self.bytes -= meta.bytes;
            tracing::debug!(segment = meta.id, "delivered segment deleted");
            self.delete_segment(meta.id);
        }
        freed
    }

    /// Deletes a segment file whose records are all consumed. If that
    /// fails, the segment is recorded as read, so no restart delivers it
    /// again: in the durable modes in the progress file at once (a crash
    /// must not deliver it either), and again at shutdown.
    fn delete_segment(&mut self, id: u64) {
        self.free_space.checked_at = None;
        let path = self.path_of(id);
        let Err(err) = storage::remove_if_present(&*self.fs, &path) else { return };
        tracing::warn!(path = %path.display(), error = %err, "could not delete a read segment; recorded as read");
        self.undeleted.push(id);
        if self.durable {
            let _ = self.record_undeleted(None);
        }
    }

    /// Tries again to delete the read segments whose deletion failed.
    fn retry_undeleted(&mut self) {
        let fs = Arc::clone(&self.fs);
        self.undeleted.retain(|&id| storage::remove_if_present(&*fs, &segment_path(self.dir.path(), id)).is_err());
    }

    /// Writes the progress file: `position`, and the undeleted segments.
    fn record_undeleted(&mut self, position: Option<Position>) -> io::Result<()> {
        let progress = Progress { position, read: self.undeleted.clone() };
        let written = progress::write(&*self.fs, self.dir.path(), &progress, true);
        if let Err(err) = &written {
            tracing::error!(error = %err, "could not record read progress; read items may be delivered again");
        }
        written
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
        if now || self.checked_dir_at.elapsed() >= DIR_CHECK_INTERVAL {
            self.checked_dir_at = std::time::Instant::now();
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

    /// Whether a frame of `frame_len` bytes can be appended now.
    pub(crate) fn fit(&mut self, frame_len: usize) -> Fit {
        let frame = frame_len as u64;
        let overhead = if self.compression == Compression::None { 0 } else { BLOCK_OVERHEAD };
        let alone = HEADER_LEN as u64 + frame + overhead;
        if alone > self.segment_bytes || alone > self.max_disk_bytes {
            return Fit::TooLarge;
        }
        if !self.check_dir(false) {
            return Fit::Gone;
        }
        loop {
            let (more_bytes, more_segments) = match &self.active {
                Some(writer) if writer.len() + writer.growth(frame_len) <= self.segment_bytes => {
                    (writer.growth(frame_len), 0)
                }
                _ => (alone, 1),
            };
            let full = self.bytes() + more_bytes > self.max_disk_bytes
                || self.segments() + more_segments > self.max_segments
                || !self.free_space.allows(&*self.fs, self.dir.path(), more_bytes);
            if !full {
                return Fit::Fits;
            }
            // A segment kept only for reuse makes room by going.
            if !self.discard_drained_active() {
                return Fit::Full;
            }
        }
    }

    /// Deletes the active segment when every record in it was consumed, to
    /// make room: it was kept only so the next spill could reuse it. The
    /// receiver's cursor on it is replaced when it next looks. Returns
    /// whether a segment went.
    fn discard_drained_active(&mut self) -> bool {
        if self.items > 0 || self.hold {
            return false;
        }
        let Some(writer) = self.active.take() else { return false };
        let id = writer.id();
        drop(writer);
        if self.reading == Some(id) {
            self.reading = None;
        }
        self.delete_segment(id);
        tracing::debug!(segment = id, "drained segment deleted to make room");
        true
    }

    /// The error a send gets for a frame that [`fit`](Self::fit) called
    /// [`Fit::TooLarge`].
    pub(crate) fn too_large(&self, frame_len: usize) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "item encodes to a {frame_len}-byte record, which cannot fit in a segment of {} bytes \
                 (with its {HEADER_LEN}-byte header) or in max_disk_bytes of {}",
                self.segment_bytes, self.max_disk_bytes
            ),
        )
    }

    /// Appends one frame, starting a new segment first if the active one
    /// would grow past `segment_bytes`; with `through`, the frame is
    /// written to the file before this returns. The caller has checked
    /// [`fit`](Self::fit). On error nothing was appended.
    pub(crate) fn append(&mut self, frame: &[u8], through: bool) -> io::Result<()> {
        let rotate = match &self.active {
            Some(writer) => writer.tail_unknown() || writer.len() + writer.growth(frame.len()) > self.segment_bytes,
            None => true,
        };
        if rotate {
            self.rotate()?;
        }
        let Some(writer) = self.active.as_mut() else {
            return Err(io::Error::other("no active segment after rotation"));
        };
        let appended = if through { writer.append_through(frame) } else { writer.append(frame) };
        if let Err(err) = appended {
            // A full disk whose only segment was read to the end: that
            // segment goes, and the record goes to a fresh one.
            if !self.discard_drained_active() {
                return Err(err);
            }
            self.rotate()?;
            let Some(writer) = self.active.as_mut() else {
                return Err(io::Error::other("no active segment after rotation"));
            };
            if through {
                writer.append_through(frame)?;
            } else {
                writer.append(frame)?;
            }
        }
        self.items += 1;
        self.free_space.written += frame.len() as u64;
        Ok(())
    }

    /// Starts a new active segment, sealing the current one. Under
    /// `SyncPolicy::Always` the old segment is synced before it is sealed,
    /// and the directory after the new file is created, so that a group
    /// commit of the new segment covers every record before it.
    fn rotate(&mut self) -> io::Result<()> {
        if self.sync_always {
            if let Some(old) = self.active.as_mut() {
                old.sync()?;
            }
        }
        let id = self.next_id;
        let next = id.checked_add(1).ok_or_else(|| io::Error::other("segment ids are exhausted"))?;
        let new = match SegmentWriter::create(&self.fs, self.dir.path(), id, self.compression) {
            Ok(new) => new,
            Err(err) => {
                if err.kind() == io::ErrorKind::NotFound && !self.check_dir(true) {
                    return Err(self.gone());
                }
                return Err(err);
            }
        };
        self.next_id = next;
        if self.sync_always {
            if let Err(err) = self.fs.sync_dir(self.dir.path()) {
                self.remove_logged(id);
                return Err(err);
            }
        } else {
            self.dir_unsynced = true;
        }
        if let Some(old) = self.active.take() {
            match old.seal() {
                Ok(meta) => {
                    tracing::debug!(segment = meta.id, bytes = meta.bytes, records = meta.records, "segment sealed");
                    self.bytes += meta.bytes;
                    self.sealed.push_back(meta);
                }
                Err(failed) => {
                    let (old, err) = *failed;
                    self.active = Some(old);
                    self.remove_logged(id);
                    return Err(err);
                }
            }
        }
        tracing::debug!(segment = id, "segment started");
        self.active = Some(new);
        Ok(())
    }

    /// Deletes the oldest segment the receiver has not opened (the active
    /// one if it is the only such segment) and returns how many records it
    /// held, or `None` if there is no such segment.
    pub(crate) fn drop_oldest(&mut self) -> Option<u64> {
        let (id, records) = match self.sealed.iter().position(|meta| Some(meta.id) != self.reading) {
            Some(index) => {
                let meta = self.sealed.remove(index)?;
                self.bytes -= meta.bytes;
                (meta.id, meta.records)
            }
            None => {
                let writer = self.active.take_if(|w| Some(w.id()) != self.reading && w.records() > 0)?;
                (writer.id(), writer.records())
            }
        };
        self.items -= records;
        tracing::warn!(segment = id, records, "disk full: oldest segment dropped");
        self.delete_segment(id);
        Some(records)
    }

    /// Writes buffered bytes to the OS and returns the active segment's
    /// file, to be synced outside the lock, with what the sync covers;
    /// `None` when there is no active segment (sealed ones were synced
    /// when sealed).
    pub(crate) fn flush_for_sync(&mut self) -> io::Result<Option<(SyncHandle, SyncPoint)>> {
        self.sync_dir_if_needed()?;
        self.active.as_mut().map(SegmentWriter::flush_for_sync).transpose()
    }

    /// Syncs the directory if a segment was created since it last was.
    fn sync_dir_if_needed(&mut self) -> io::Result<()> {
        if self.dir_unsynced {
            self.fs.sync_dir(self.dir.path())?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Notes that the sync of `point` succeeded.
    pub(crate) fn mark_synced(&mut self, point: &SyncPoint) {
        if let Some(writer) = self.active.as_mut() {
            writer.mark_synced(point);
        }
    }

    /// After a failed sync (or a failed write before it): takes back every
    /// record of the active segment that is not on stable storage, and
    /// returns how many. Under `SyncPolicy::Always` the receiver never read
    /// them, and each belongs to a send that is about to fail.
    pub(crate) fn roll_back_unsynced(&mut self) -> u64 {
        let Some(writer) = self.active.as_mut() else { return 0 };
        let dropped = writer.roll_back_unsynced();
        self.items -= dropped.min(self.items);
        dropped
    }

    /// Whether records are on disk that the receiver may not read yet:
    /// under `SyncPolicy::Always`, records not yet synced.
    pub(crate) fn awaiting_sync(&self) -> bool {
        self.sync_always && self.active.as_ref().is_some_and(|writer| writer.len() > writer.synced())
    }

    /// Deletes a file the queue created, for a step that failed half-way;
    /// a failure is logged (the file holds no record).
    fn remove_logged(&self, id: u64) {
        let path = self.path_of(id);
        if let Err(err) = storage::remove_if_present(&*self.fs, &path) {
            tracing::warn!(path = %path.display(), error = %err, "could not delete an empty segment");
        }
    }

    /// Writes buffered bytes to the OS, and to stable storage if `sync`.
    pub(crate) fn flush(&mut self, sync: bool) -> io::Result<()> {
        if sync {
            self.sync_dir_if_needed()?;
        }
        match self.active.as_mut() {
            Some(writer) if sync => writer.sync(),
            Some(writer) => writer.flush(),
            None => Ok(()),
        }
    }

    /// Points `cursor` at the oldest unconsumed record and brings its limit
    /// up to date, flushing the writer if the cursor has caught up with it.
    /// Finished sealed segments are deleted on the way, and segments that
    /// vanished or cannot be opened are given up (their records counted as
    /// lost). Returns whether any segment was released, which frees space.
    ///
    /// # Errors
    ///
    /// A transient error opening a segment, or a flush that failed with
    /// nothing left to read: the receiver retries later.
    pub(crate) fn position(&mut self, cursor: &mut Option<SegmentCursor>) -> io::Result<bool> {
        let mut freed = false;
        loop {
            let current = cursor.as_ref().map(SegmentCursor::id);
            if let Some(front) = self.sealed.front().copied() {
                match cursor.as_mut() {
                    Some(open) if current == Some(front.id) => {
                        open.set_limit(front.bytes, true, true);
                        if !open.at_limit() {
                            return Ok(freed);
                        }
                        let missing = front.records.saturating_sub(open.records_read());
                        if missing > 0 {
                            self.lose(missing, front.id, "segment ended before all its records were read");
                        }
                        let damaged = open.damaged() || missing > 0;
                        *cursor = None;
                        self.release_front(damaged);
                        freed = true;
                    }
                    _ => match SegmentCursor::open_sealed(&self.fs, &self.path_of(front.id), front.id, front.bytes) {
                        Ok(open) => {
                            *cursor = Some(open);
                            self.reading = Some(front.id);
                            return Ok(freed);
                        }
                        Err(err) if self.retry_unreadable || storage::transient(&err) => return Err(err),
                        Err(err) => {
                            self.give_up_front(&err);
                            freed = true;
                        }
                    },
                }
                continue;
            }
            let sync_always = self.sync_always;
            let Some(writer) = self.active.as_mut() else {
                *cursor = None;
                self.reading = None;
                return Ok(freed);
            };
            // A failed flush (a full disk) must not keep the cursor from
            // what did reach the file; it matters only once that is read.
            // Under `Always` only synced bytes may be read: a failed sync
            // takes the rest back.
            let flushed = if sync_always { Ok(()) } else { writer.flush() };
            let limit = if sync_always { writer.synced() } else { writer.flushed() };
            if current != Some(writer.id()) {
                match SegmentCursor::open_active(&self.fs, writer.path(), writer.id(), limit) {
                    Ok(open) => {
                        *cursor = Some(open);
                        self.reading = Some(writer.id());
                    }
                    Err(err) if self.retry_unreadable || storage::transient(&err) => return Err(err),
                    Err(err) => {
                        self.give_up_active(&err);
                        return Ok(true);
                    }
                }
            }
            let Some(open) = cursor.as_mut() else { return Ok(freed) };
            open.set_limit(limit, false, flushed.is_ok() && !sync_always);
            if let Err(err) = flushed {
                let unflushed = writer.unflushed()?;
                if !unflushed.is_empty() {
                    // The disk is full: read the records the writer holds,
                    // so the backlog can drain and its space come back.
                    tracing::warn!(error = %err, "cannot flush the active segment; reading its buffer");
                    open.feed_unflushed(limit, unflushed)?;
                }
                if open.at_limit() {
                    return Err(err);
                }
            }
            return Ok(freed);
        }
    }

    /// The front sealed segment cannot be opened (deleted by another
    /// program, unreadable): its records are lost, counted and logged, and
    /// it is set aside if it is still there.
    fn give_up_front(&mut self, err: &io::Error) {
        let Some(meta) = self.sealed.pop_front() else { return };
        let path = self.path_of(meta.id);
        self.bytes -= meta.bytes;
        if self.reading == Some(meta.id) {
            self.reading = None;
        }
        self.lose_to_storage(meta.records, &path, err);
        self.set_aside(meta.id);
    }

    /// Sets segment `id` aside as damaged or unreadable; if that fails it
    /// is recorded as read instead, so that no restart delivers what the
    /// channel already counted as lost (and out of order).
    fn set_aside(&mut self, id: u64) {
        let path = self.path_of(id);
        if !self.dir.set_aside(&path) {
            self.undeleted.push(id);
            if self.durable {
                let _ = self.record_undeleted(None);
            }
        }
    }

    /// The active segment cannot be opened for reading: its records are
    /// lost, and it is closed (set aside if still there); the next append
    /// starts a new segment.
    fn give_up_active(&mut self, err: &io::Error) {
        let Some(writer) = self.active.take() else { return };
        let path = writer.path().to_owned();
        let records = writer.records();
        let id = writer.id();
        drop(writer);
        self.lose_to_storage(records, &path, err);
        if err.kind() == io::ErrorKind::NotFound {
            self.check_dir(true);
        }
        self.set_aside(id);
    }

    /// Counts records lost to a file that vanished or cannot be read.
    fn lose_to_storage(&mut self, records: u64, path: &std::path::Path, err: &io::Error) {
        self.items -= records.min(self.items);
        self.lost += records;
        tracing::error!(path = %path.display(), records, error = %err, "segment cannot be read; its records are lost");
    }

    /// Seals the active segment now, so the cursor reads it as sealed: its
    /// final length known, so damage in it can be told from a write in
    /// progress. The next append starts a new segment.
    pub(crate) fn seal_active(&mut self, cursor: &mut Option<SegmentCursor>) -> io::Result<()> {
        let Some(mut writer) = self.active.take() else { return Ok(()) };
        // Under `Always`, a group commit may be about to sync this segment
        // for senders waiting on it; sealed, it would no longer be synced.
        if self.sync_always {
            if let Err(err) = writer.sync() {
                self.active = Some(writer);
                return Err(err);
            }
        }
        match writer.seal() {
            Ok(meta) => {
                self.bytes += meta.bytes;
                self.sealed.push_back(meta);
                if let Some(open) = cursor.as_mut().filter(|open| open.id() == meta.id) {
                    open.set_limit(meta.bytes, true, true);
                }
                Ok(())
            }
            Err(failed) => {
                let (writer, err) = *failed;
                self.active = Some(writer);
                Err(err)
            }
        }
    }

    /// Removes the front sealed segment, which the cursor has finished:
    /// deleted if clean, set aside if damaged.
    fn release_front(&mut self, damaged: bool) {
        let Some(meta) = self.sealed.pop_front() else { return };
        if self.reading == Some(meta.id) {
            self.reading = None;
        }
        if damaged {
            self.bytes -= meta.bytes;
            self.set_aside(meta.id);
        } else if self.hold {
            self.retired.push(meta);
        } else {
            self.bytes -= meta.bytes;
            tracing::debug!(segment = meta.id, "segment consumed and deleted");
            self.delete_segment(meta.id);
        }
    }

    /// Counts records that can never be delivered.
    fn lose(&mut self, records: u64, segment: u64, reason: &str) {
        self.items -= records.min(self.items);
        self.corrupt += records;
        tracing::error!(segment, records, reason, "records lost to a damaged segment");
    }

    /// Notes that the cursor consumed `records` records (delivered them, or
    /// skipped them as undecodable). When that was the last record on disk, every
    /// segment is released and the cursor closed. Returns whether the disk
    /// is now empty.
    pub(crate) fn consumed(&mut self, records: u64, cursor: &mut Option<SegmentCursor>) -> bool {
        self.items = self.items.saturating_sub(records);
        if self.items > 0 {
            return false;
        }
        if self.hold {
            self.retire_all(cursor);
        } else {
            self.release_consumed(cursor);
        }
        true
    }

    /// Everything on disk was consumed: sealed segments are deleted, and
    /// the active segment is kept with the cursor at its end, so the next
    /// spill appends to it instead of creating a file (with its create,
    /// header write and directory syncs): an idle channel holds at most one
    /// segment. A damaged active segment, or one the cursor is not on, goes
    /// the way of [`release_all`](Self::release_all).
    fn release_consumed(&mut self, cursor: &mut Option<SegmentCursor>) {
        let keep = match (&self.active, cursor.as_ref()) {
            (Some(writer), Some(open)) => open.id() == writer.id() && !open.damaged() && !writer.tail_unknown(),
            _ => false,
        };
        if !keep {
            return self.release_all(cursor);
        }
        self.release_retired();
        for meta in std::mem::take(&mut self.sealed) {
            self.bytes -= meta.bytes;
            self.delete_segment(meta.id);
        }
        if let Some(open) = cursor.as_mut() {
            open.park();
        }
        self.items = 0;
    }

    /// The record the cursor is at decoded to garbage: counts it, and marks
    /// its segment to be set aside once read.
    pub(crate) fn undecodable(&mut self, cursor: &mut SegmentCursor, reason: &str) {
        self.corrupt += 1;
        cursor.mark_damaged();
        tracing::error!(segment = cursor.id(), reason, "record does not decode; skipped");
    }

    /// The cursor cannot read its segment past where it is: the records it
    /// has not read are lost, the segment is set aside, and the cursor is
    /// closed.
    pub(crate) fn abandon(&mut self, cursor: &mut Option<SegmentCursor>, reason: &str) {
        let Some(open) = cursor.take() else { return };
        self.reading = None;
        if self.sealed.front().map(|meta| meta.id) == Some(open.id()) {
            let total = self.sealed.front().map_or(0, |meta| meta.records);
            self.lose(total.saturating_sub(open.records_read()), open.id(), reason);
            self.release_front(true);
        } else if let Some(writer) = self.active.take_if(|writer| writer.id() == open.id()) {
            self.lose(writer.records().saturating_sub(open.records_read()), open.id(), reason);
            let id = writer.id();
            drop(writer);
            self.set_aside(id);
        }
        if self.items == 0 {
            self.release_all(cursor);
        }
    }

    /// Deletes every segment (setting aside the one the cursor marked
    /// damaged) and closes the cursor.
    pub(crate) fn release_all(&mut self, cursor: &mut Option<SegmentCursor>) {
        self.release_retired();
        let damaged = cursor.take().filter(|open| open.damaged()).map(|open| open.id());
        self.reading = None;
        let ids: Vec<u64> =
            self.sealed.drain(..).map(|meta| meta.id).chain(self.active.take().map(|w| w.id())).collect();
        for id in ids {
            if Some(id) == damaged {
                self.set_aside(id);
            } else {
                self.delete_segment(id);
            }
        }
        self.items = 0;
        self.bytes = 0;
    }
}

impl DiskQueue {
    /// Everything on disk has been read while `hold` is set: every segment
    /// is retired (the active one sealed first) and the cursor closed.
    fn retire_all(&mut self, cursor: &mut Option<SegmentCursor>) {
        if let Err(err) = self.seal_active(cursor) {
            // Unsealed, it cannot be retired; deleting it could lose the
            // batch in flight, so it is left for recovery.
            // Retired as it is: deleted once its items are delivered, read
            // again by recovery if the process dies first.
            tracing::warn!(error = %err, "could not seal the active segment; retiring it unsealed");
            if let Some(writer) = self.active.take() {
                let meta = SegmentMeta { id: writer.id(), bytes: writer.len(), records: writer.records() };
                self.bytes += meta.bytes;
                self.retired.push(meta);
            }
        }
        let damaged = cursor.take().filter(|open| open.damaged()).map(|open| open.id());
        self.reading = None;
        while let Some(meta) = self.sealed.front() {
            let damaged = Some(meta.id) == damaged;
            self.release_front(damaged);
        }
    }

    /// A clean shutdown of a durable channel: flushes and syncs the active
    /// segment, writes `frames` (the items still in memory, oldest first)
    /// into segments placed before every other, and records where the
    /// cursor stopped reading and which read segments could not be
    /// deleted. Every step is tried even when one fails. Returns how many
    /// accepted items could not be made durable (records of the active
    /// segment that never reached the file, or whose sync failed, and
    /// frames not written), with the first error.
    pub(crate) fn shutdown(
        &mut self,
        cursor: Option<&SegmentCursor>,
        frames: &[Vec<u8>],
    ) -> Result<(), (usize, io::Error)> {
        let mut unpersisted = 0u64;
        let mut first_error = None;
        // Every record read and nothing held for a drainer: the active
        // segment kept for the next spill holds nothing worth keeping.
        let drained = self.items == 0 && self.retired.is_empty();
        let cursor = if drained {
            if let Some(writer) = self.active.take() {
                let id = writer.id();
                drop(writer);
                self.delete_segment(id);
            }
            None
        } else {
            cursor
        };
        if let Some(writer) = self.active.as_mut() {
            let synced = match writer.flush() {
                Err(err) => Err((writer.unwritten_records(), err)),
                Ok(()) => writer.sync().map_err(|err| (writer.records_not_synced(), err)),
            };
            if let Err((count, err)) = synced {
                tracing::error!(error = %err, records = count, "the active segment could not be made durable");
                unpersisted += count;
                first_error.get_or_insert(err);
            }
        }
        match self.write_front(frames) {
            // What was read from retired segments and not delivered is
            // among `frames`, put back by the drainer, and now on disk in
            // front: the retired segments can go. Not before: a crash or a
            // failed write in between would lose those items; this way it
            // can only deliver some again.
            Ok(()) => {
                self.release_retired();
            }
            Err((count, err)) => {
                unpersisted += count as u64;
                first_error.get_or_insert(err);
            }
        }
        self.retry_undeleted();
        let position = cursor.map(|open| Position {
            segment: open.id(),
            offset: open.pos(),
            // A block never holds more records than a u16 counts.
            skip: u16::try_from(open.read_in_block()).unwrap_or(u16::MAX),
        });
        // A progress record that cannot be written loses nothing: read
        // items may only come again.
        if let Err(err) = self.record_undeleted(position) {
            first_error.get_or_insert(err);
        }
        match first_error {
            None => Ok(()),
            Some(err) => Err((usize::try_from(unpersisted).unwrap_or(usize::MAX), err)),
        }
    }

    /// Writes `frames` into new segments whose ids sort before every
    /// segment the queue holds, so they are read first.
    fn write_front(&mut self, frames: &[Vec<u8>]) -> Result<(), (usize, io::Error)> {
        if frames.is_empty() {
            return Ok(());
        }
        let mut chunks: Vec<&[Vec<u8>]> = Vec::new();
        let mut start = 0;
        let mut len = HEADER_LEN as u64;
        // In a compressed segment a frame may start a block: count its
        // overhead with every frame, an upper bound.
        let overhead = if self.compression == Compression::None { 0 } else { BLOCK_OVERHEAD };
        for (index, frame) in frames.iter().enumerate() {
            let frame_len = frame.len() as u64 + overhead;
            if index > start && len + frame_len > self.segment_bytes {
                chunks.push(&frames[start..index]);
                start = index;
                len = HEADER_LEN as u64;
            }
            len += frame_len;
        }
        chunks.push(&frames[start..]);
        // Below every segment still owned, retired ones included: they are
        // deleted only once these are written.
        let oldest = self
            .retired
            .iter()
            .map(|meta| meta.id)
            .chain(self.sealed.front().map(|meta| meta.id))
            .chain(self.active.as_ref().map(SegmentWriter::id))
            .min();
        let first_id = match oldest {
            Some(oldest) => oldest.checked_sub(chunks.len() as u64),
            None => {
                self.next_id += chunks.len() as u64;
                Some(self.next_id - chunks.len() as u64)
            }
        };
        let Some(first_id) = first_id else {
            return Err((frames.len(), io::Error::other("no segment id is free below the oldest segment")));
        };
        let mut written = 0;
        for (offset, chunk) in chunks.iter().enumerate() {
            let id = first_id + offset as u64;
            let mut writer = SegmentWriter::create(&self.fs, self.dir.path(), id, self.compression)
                .map_err(|err| (frames.len() - written, err))?;
            let result = chunk.iter().try_for_each(|frame| writer.append(frame)).and_then(|()| writer.sync());
            match result.and_then(|()| writer.seal().map_err(|failed| failed.1)) {
                Ok(meta) => {
                    written += chunk.len();
                    self.items += meta.records;
                    self.bytes += meta.bytes;
                }
                Err(err) => {
                    self.remove_logged(id);
                    return Err((frames.len() - written, err));
                }
            }
        }
        tracing::info!(items = frames.len(), segments = chunks.len(), "in-memory items written to disk at shutdown");
        Ok(())
    }
}

impl Drop for DiskQueue {
    fn drop(&mut self) {
        if !self.durable {
            // Overflow mode: segments are scratch space, gone with the channel.
            self.release_all(&mut None);
        }
    }
}

/// The `min_free_bytes` check: the filesystem's free space, read now and
/// then rather than on every append.
#[derive(Debug)]
struct FreeSpace {
    /// Bytes that must stay free; 0 disables the check.
    min_free: u64,
    /// When `free` was read.
    checked_at: Option<std::time::Instant>,
    /// Free bytes at the last reading, less what was written since.
    free: u64,
    /// Bytes appended since the last reading.
    written: u64,
}

impl FreeSpace {
    /// Bytes written between two readings at most.
    const RECHECK_AFTER_BYTES: u64 = 1 << 20;

    /// Whether `more` bytes can be written and leave `min_free` free.
    fn allows(&mut self, fs: &dyn storage::Storage, dir: &std::path::Path, more: u64) -> bool {
        if self.min_free == 0 {
            return true;
        }
        let stale = self.checked_at.is_none_or(|at| at.elapsed() >= crate::config::FREE_SPACE_CHECK_INTERVAL);
        if stale || self.written >= Self::RECHECK_AFTER_BYTES {
            match fs.available_space(dir) {
                Ok(free) => self.free = free,
                Err(err) => tracing::warn!(error = %err, "cannot read the free space of the channel's filesystem"),
            }
            self.checked_at = Some(std::time::Instant::now());
            self.written = 0;
        }
        self.free.saturating_sub(self.written) >= more.saturating_add(self.min_free)
    }
}

/// How often a channel that writes to disk checks that its directory is
/// still its own.
const DIR_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
