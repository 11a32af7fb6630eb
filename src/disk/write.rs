//! The log writer's side of the disk tier: the limits every record is
//! checked against before anything is written, appending, rotating,
//! dropping the oldest segment, and the points a sync covers.

use std::io;

use super::{DiskQueue, Fit};
use crate::options::Compression;
use crate::segment::block::BLOCK_OVERHEAD;
use crate::segment::format::HEADER_LEN;
use crate::segment::writer::SyncPoint;
use crate::segment::SegmentWriter;
use crate::storage::{self, SyncHandle};

impl DiskQueue {
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
        let _ = self.delete_segment(id);
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
        let write =
            |writer: &mut SegmentWriter| if through { writer.append_through(frame) } else { writer.append(frame) };
        if let Err(err) = write(writer) {
            // A full disk whose only segment was read to the end: that
            // segment goes, and the record goes to a fresh one.
            if !self.discard_drained_active() {
                return Err(err);
            }
            self.rotate()?;
            let Some(writer) = self.active.as_mut() else {
                return Err(io::Error::other("no active segment after rotation"));
            };
            write(writer)?;
        }
        self.items += 1;
        self.free_space.written += frame.len() as u64;
        Ok(())
    }

    /// Where the frame [`append`](Self::append) just added ends: the
    /// active segment's id and its length with everything buffered. `None`
    /// for a compressed segment, whose frames are packed into blocks and
    /// have no offsets of their own.
    pub(crate) fn appended_end(&self) -> Option<(u64, u64)> {
        self.active.as_ref().filter(|writer| !writer.compressed()).map(|writer| (writer.id(), writer.len()))
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
                    self.index_sealed(meta);
                    self.kick_tier();
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
        // Only a local segment frees local space.
        let droppable = |meta: &crate::segment::SegmentMeta| Some(meta.id) != self.reading && self.is_local(meta.id);
        let (id, records) = match self.sealed.iter().position(droppable) {
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
        let _ = self.delete_segment(id);
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
    pub(super) fn remove_logged(&self, id: u64) {
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
}

/// The `min_free_bytes` check: the filesystem's free space, read now and
/// then rather than on every append.
#[derive(Debug)]
pub(super) struct FreeSpace {
    /// Bytes that must stay free; 0 disables the check.
    pub(super) min_free: u64,
    /// When `free` was read, on [`coarse_now`](super::coarse_now)'s clock.
    pub(super) checked_at: Option<std::time::Duration>,
    /// Free bytes at the last reading, less what was written since.
    pub(super) free: u64,
    /// Bytes appended since the last reading.
    pub(super) written: u64,
}

impl FreeSpace {
    /// Bytes written between two readings at most.
    const RECHECK_AFTER_BYTES: u64 = 1 << 20;

    /// Whether `more` bytes can be written and leave `min_free` free.
    fn allows(&mut self, fs: &dyn storage::Storage, dir: &std::path::Path, more: u64) -> bool {
        if self.min_free == 0 {
            return true;
        }
        let now = super::coarse_now();
        let stale =
            self.checked_at.is_none_or(|at| now.saturating_sub(at) >= crate::options::FREE_SPACE_CHECK_INTERVAL);
        if stale || self.written >= Self::RECHECK_AFTER_BYTES {
            match fs.available_space(dir) {
                Ok(free) => self.free = free,
                Err(err) => tracing::warn!(error = %err, "cannot read the free space of the channel's filesystem"),
            }
            self.checked_at = Some(now);
            self.written = 0;
        }
        self.free.saturating_sub(self.written) >= more.saturating_add(self.min_free)
    }
}
