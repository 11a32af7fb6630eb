//! Which segments may be deleted: those consumed, those retired while
//! items read from them were not yet committed (see
//! [`crate::Receiver::peek_batch`]) once they are, damaged ones set aside,
//! and read ones that could not be deleted, recorded as read instead.

use std::io;
use std::sync::Arc;

use super::{DiskQueue, Reader};
use crate::progress::{self, Position, Progress};
use crate::segment::{segment_path, SegmentMeta};
use crate::storage;

impl DiskQueue {
    /// Keeps read segments (see `hold`) or, when `hold` is false, goes back
    /// to deleting them as soon as they are read. Segments already retired
    /// stay until released.
    pub(crate) fn set_hold(&mut self, hold: bool) {
        self.hold = hold;
    }

    /// Deletes the retired segments whose every record is committed: all of
    /// them when `oldest_uncommitted` is `None`, else those whose last
    /// record is numbered below it (a segment of format version 1, whose
    /// records carry no number, only with all of them). Returns whether
    /// anything was freed, or the error that kept a failed deletion from
    /// being recorded as read: its items may then come again after a
    /// restart.
    pub(crate) fn release_retired(&mut self, oldest_uncommitted: Option<u64>) -> io::Result<bool> {
        let committed = |last: Option<u64>| match (oldest_uncommitted, last) {
            (None, _) => true,
            (Some(oldest), Some(last)) => last < oldest,
            (Some(_), None) => false,
        };
        let mut freed = false;
        let mut first_error = None;
        while let Some(&meta) = self.retired.first() {
            if !committed(meta.last_seq) {
                break;
            }
            self.retired.remove(0);
            freed = true;
            self.bytes -= meta.bytes;
            tracing::debug!(segment = meta.id, "committed segment deleted");
            if let Err(err) = self.delete_segment(meta.id) {
                first_error.get_or_insert(err);
            }
        }
        match first_error {
            None => Ok(freed),
            Some(err) => Err(err),
        }
    }

    /// Deletes a segment file whose records are all consumed. If that
    /// fails, the segment is recorded as read, so no restart delivers it
    /// again: in the durable modes in the progress file at once (a crash
    /// must not deliver it either), and again at shutdown. The error is
    /// that of recording it, when that failed too.
    pub(super) fn delete_segment(&mut self, id: u64) -> io::Result<()> {
        let may_delete = self.tier_release(id);
        self.free_space.checked_at = None;
        let path = self.path_of(id);
        let removed = if may_delete {
            storage::remove_if_present(&*self.fs, &path)
        } else {
            Err(io::Error::other("its remote tier state could not be recorded as read"))
        };
        let Err(err) = removed else { return Ok(()) };
        tracing::warn!(path = %path.display(), error = %err, "could not delete a read segment; recorded as read");
        self.undeleted.push(id);
        if self.durable {
            return self.record_undeleted(None);
        }
        Ok(())
    }

    /// Tries again to delete the read segments whose deletion failed.
    pub(super) fn retry_undeleted(&mut self) {
        let fs = Arc::clone(&self.fs);
        self.undeleted.retain(|&id| storage::remove_if_present(&*fs, &segment_path(self.dir.path(), id)).is_err());
    }

    /// Writes the progress file: `position`, and the undeleted segments.
    pub(super) fn record_undeleted(&mut self, position: Option<Position>) -> io::Result<()> {
        let progress = Progress { position, read: self.undeleted.clone() };
        let written = progress::write(&*self.fs, self.dir.path(), &progress, true);
        if let Err(err) = &written {
            tracing::error!(error = %err, "could not record read progress; read items may be delivered again");
        }
        written
    }
    /// Sets segment `id` aside as damaged or unreadable; if that fails it
    /// is recorded as read instead, so that no restart delivers what the
    /// channel already counted as lost (and out of order).
    pub(super) fn set_aside(&mut self, id: u64) {
        let _ = self.tier_release(id);
        let path = self.path_of(id);
        if !self.dir.set_aside(&path) {
            self.undeleted.push(id);
            if self.durable {
                let _ = self.record_undeleted(None);
            }
        }
    }
    /// Removes the front sealed segment, which the cursor has finished:
    /// deleted if clean, set aside if damaged, retired while `hold` is set.
    pub(super) fn release_front(&mut self, damaged: bool) {
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
            let _ = self.delete_segment(meta.id);
        }
    }
    /// Notes that the cursor consumed `records` records (delivered them, or
    /// skipped them as undecodable). When that was the last record on disk, every
    /// segment is released and the cursor closed. Returns whether the disk
    /// is now empty.
    pub(crate) fn consumed(&mut self, records: u64, reader: &mut Reader) -> bool {
        self.items = self.items.saturating_sub(records);
        if self.items > 0 {
            return false;
        }
        if self.hold {
            self.retire_all(reader);
        } else {
            self.release_consumed(reader);
        }
        true
    }

    /// Everything on disk was consumed: sealed segments are deleted, and
    /// the active segment is kept with the cursor at its end, so the next
    /// spill appends to it instead of creating a file (with its create,
    /// header write and directory syncs): an idle channel holds at most one
    /// segment. A damaged active segment, or one the cursor is not on, goes
    /// the way of [`release_all`](Self::release_all).
    fn release_consumed(&mut self, reader: &mut Reader) {
        let keep = match (&self.active, reader.open()) {
            (Some(writer), Some(open)) => open.id() == writer.id() && !open.damaged() && !writer.tail_unknown(),
            _ => false,
        };
        if !keep {
            return self.release_all(reader);
        }
        let _ = self.release_retired(None);
        for meta in std::mem::take(&mut self.sealed) {
            self.bytes -= meta.bytes;
            let _ = self.delete_segment(meta.id);
        }
        if let Some(open) = reader.cursor() {
            open.park();
        }
        self.items = 0;
    }
    /// Deletes every segment (setting aside the one the reader marked
    /// damaged) and takes the reader off its segment.
    pub(crate) fn release_all(&mut self, reader: &mut Reader) {
        let damaged = self.point(reader, None).filter(|open| open.damaged()).map(|open| open.id());
        self.delete_all(damaged);
    }

    /// Deletes every segment, setting aside `damaged`.
    pub(super) fn delete_all(&mut self, damaged: Option<u64>) {
        let _ = self.release_retired(None);
        let ids: Vec<u64> =
            self.sealed.drain(..).map(|meta| meta.id).chain(self.active.take().map(|w| w.id())).collect();
        for id in ids {
            if Some(id) == damaged {
                self.set_aside(id);
            } else {
                let _ = self.delete_segment(id);
            }
        }
        self.items = 0;
        self.bytes = 0;
    }

    /// Everything on disk has been read while `hold` is set: every segment
    /// is retired (the active one sealed first) and the cursor closed.
    fn retire_all(&mut self, reader: &mut Reader) {
        if let Err(err) = self.seal_active(reader) {
            // Unsealed, it cannot be retired; deleting it could lose the
            // batch in flight, so it is left for recovery.
            // Retired as it is: deleted once its items are delivered, read
            // again by recovery if the process dies first.
            tracing::warn!(error = %err, "could not seal the active segment; retiring it unsealed");
            if let Some(writer) = self.active.take() {
                let meta = SegmentMeta {
                    id: writer.id(),
                    bytes: writer.len(),
                    records: writer.records(),
                    last_seq: writer.last_seq(),
                };
                self.bytes += meta.bytes;
                self.retired.push(meta);
            }
        }
        let damaged = self.point(reader, None).filter(|open| open.damaged()).map(|open| open.id());
        while let Some(meta) = self.sealed.front() {
            let damaged = Some(meta.id) == damaged;
            self.release_front(damaged);
        }
    }
}
