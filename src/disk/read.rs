//! The reader's side of the disk tier: moving the receiver's cursor from
//! segment to segment, and what happens when a segment cannot be read.

use std::io;

use super::{DiskQueue, Reader};
use crate::segment::SegmentCursor;
use crate::storage;

impl DiskQueue {
    /// Points `reader` at the oldest unconsumed record and brings its limit
    /// up to date, flushing the writer if the reader has caught up with it.
    /// Finished sealed segments are deleted on the way, and segments that
    /// vanished or cannot be opened are given up (their records counted as
    /// lost). Returns whether any segment was released, which frees space.
    ///
    /// # Errors
    ///
    /// A transient error opening a segment, or a flush that failed with
    /// nothing left to read: the receiver retries later.
    pub(crate) fn position(&mut self, reader: &mut Reader) -> io::Result<bool> {
        let mut freed = false;
        loop {
            let current = reader.open().map(SegmentCursor::id);
            if let Some(front) = self.sealed.front().copied() {
                match reader.cursor() {
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
                        self.point(reader, None);
                        self.release_front(damaged);
                        freed = true;
                    }
                    _ if !self.is_local(front.id) => {
                        self.kick_tier();
                        return Err(io::Error::new(
                            io::ErrorKind::WouldBlock,
                            format!("segment {} is in the remote store; waiting for it to be fetched", front.id),
                        ));
                    }
                    _ => match SegmentCursor::open_sealed(&self.fs, &self.path_of(front.id), front.id, front.bytes) {
                        Ok(open) => {
                            self.point(reader, Some(open));
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
            if self.active.is_none() {
                self.point(reader, None);
                return Ok(freed);
            }
            let Some(writer) = self.active.as_mut() else { return Ok(freed) };
            // A failed flush (a full disk) must not keep the cursor from
            // what did reach the file; it matters only once that is read.
            // Under `Always` only synced bytes may be read: a failed sync
            // takes the rest back.
            let flushed = if sync_always { Ok(()) } else { writer.flush() };
            let limit = if sync_always { writer.synced() } else { writer.flushed() };
            let id = writer.id();
            if current != Some(id) {
                match SegmentCursor::open_active(&self.fs, writer.path(), id, limit) {
                    Ok(open) => {
                        self.point(reader, Some(open));
                    }
                    Err(err) if self.retry_unreadable || storage::transient(&err) => return Err(err),
                    Err(err) => {
                        self.give_up_active(&err);
                        return Ok(true);
                    }
                }
            }
            let Some(open) = reader.cursor() else { return Ok(freed) };
            open.set_limit(limit, false, flushed.is_ok() && !sync_always);
            if let Err(err) = flushed {
                let Some(writer) = self.active.as_mut() else { return Err(err) };
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
    pub(crate) fn seal_active(&mut self, reader: &mut Reader) -> io::Result<()> {
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
                self.index_sealed(meta);
                self.kick_tier();
                if let Some(open) = reader.cursor().filter(|open| open.id() == meta.id) {
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
    /// Counts records that can never be delivered.
    fn lose(&mut self, records: u64, segment: u64, reason: &str) {
        self.items -= records.min(self.items);
        self.corrupt += records;
        tracing::error!(segment, records, reason, "records lost to a damaged segment");
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
    pub(crate) fn abandon(&mut self, reader: &mut Reader, reason: &str) {
        let Some(open) = self.point(reader, None) else { return };
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
            self.release_all(reader);
        }
    }
}
