//! A clean shutdown of a durable channel's disk tier.

use std::io;

use super::{DiskQueue, Reader};
use crate::options::Compression;
use crate::progress::Position;
use crate::segment::block::BLOCK_OVERHEAD;
use crate::segment::format::HEADER_LEN;
use crate::segment::SegmentWriter;

impl DiskQueue {
    /// A clean shutdown of a durable channel: flushes and syncs the active
    /// segment, writes `frames` (the items still in memory, oldest first)
    /// into segments placed before every other, and records where the
    /// cursor stopped reading and which read segments could not be
    /// deleted. Every step is tried even when one fails. Returns how many
    /// accepted items could not be made durable (records of the active
    /// segment that never reached the file, or whose sync failed, and
    /// frames not written), with the first error.
    pub(crate) fn shutdown(&mut self, reader: &Reader, frames: &[Vec<u8>]) -> Result<(), (usize, io::Error)> {
        let mut unpersisted = 0u64;
        let mut first_error = None;
        // Every record read and nothing held uncommitted: the active
        // segment kept for the next spill holds nothing worth keeping.
        let drained = self.items == 0 && self.retired.is_empty();
        let cursor = reader.open();
        let cursor = if drained {
            if let Some(writer) = self.active.take() {
                let id = writer.id();
                drop(writer);
                let _ = self.delete_segment(id);
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
            // among `frames`, given back uncommitted, and now on disk in
            // front: the retired segments can go. Not before: a crash or a
            // failed write in between would lose those items; this way it
            // can only deliver some again.
            Ok(()) => {
                if let Err(err) = self.release_retired(None) {
                    first_error.get_or_insert(err);
                }
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
        // deleted only once these are written. And below every id the
        // remote tier still names: a consumed segment whose entry has not
        // gone yet must not lend its id to a new one.
        let oldest = self
            .retired
            .iter()
            .map(|meta| meta.id)
            .chain(self.sealed.front().map(|meta| meta.id))
            .chain(self.active.as_ref().map(SegmentWriter::id))
            .chain(self.tier_lowest_id())
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
                    self.index_sealed(meta);
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
