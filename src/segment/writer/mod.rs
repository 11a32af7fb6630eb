//! [`SegmentWriter`]: appends record frames to the active segment.
//!
//! Frames are gathered in a write buffer and reach the file in large
//! sequential writes, never one system call per record. Bytes reach the
//! file only through [`SegmentWriter::flush`], which keeps an exact count
//! of what the file holds even when a write fails half-way, so a failed
//! write never leaves the writer unsure of where the next byte goes.
//!
//! In a compressed segment the buffered frames are packed into one block
//! (see [`super::block`]) when they are written out. A packed block waits
//! in its own buffer until it is all in the file, so a write that fails
//! half-way resumes with the same bytes, and a reader fed the unwritten
//! bytes (on a full disk) sees exactly what the file will hold.
//!
//! The writer never appends after bytes whose state it does not know: if a
//! failed write cannot be cut off again (the truncate fails too), the
//! writer refuses every further append ([`SegmentWriter::tail_unknown`])
//! and the disk tier seals it at its last good record and starts a new
//! segment. It also knows which of its records are only in its buffers
//! ([`SegmentWriter::unwritten_records`]), so a shutdown that cannot write
//! them counts them, and which are on stable storage, so a failed sync can
//! take back exactly the records it was to cover
//! ([`SegmentWriter::roll_back_unsynced`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::block::{codec_id, Packer, BLOCK_OVERHEAD, MAX_BLOCK_RECORDS};
use super::format::{encode_header, seq_of, FRAME_OVERHEAD, HEADER_LEN};
use super::{segment_path, SegmentMeta};
use crate::options::Compression;
use crate::storage::{write_all, Fs, Open, SyncHandle};

/// Size of the write buffer in bytes. Frames at least this large bypass it.
pub(crate) const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// What a compressed segment's writer keeps besides the plain writer's.
#[derive(Debug)]
struct Compressed {
    /// The codec.
    packer: Packer,
    /// Packed blocks not yet all in the file.
    packed: Vec<u8>,
}

/// The one segment that is being appended to.
#[derive(Debug)]
pub(crate) struct SegmentWriter {
    /// The segment's id; its file is `segment_path(dir, id)`.
    id: u64,
    /// Path of the segment file, for messages and sealing.
    path: PathBuf,
    /// The file, opened for appending. Written only by `flush`; shared
    /// only to be synced outside the channel lock.
    file: Arc<File>,
    /// Every file operation goes through here.
    fs: Fs,
    /// Frames appended but not yet written to the file (in a compressed
    /// segment: not yet packed).
    buffer: Vec<u8>,
    /// Records in `buffer`.
    buffered_records: u32,
    /// A compressed segment's codec and packed bytes; `None` for plain
    /// frames.
    compressed: Option<Box<Compressed>>,
    /// Bytes the file holds, header included.
    flushed: u64,
    /// Records appended, buffered or not.
    records: u64,
    /// The sequence number of the last record appended.
    last_seq: Option<u64>,
    /// In a compressed segment, the file offsets at which the packed
    /// blocks not yet all in the file end, and how many records each
    /// holds. Frames still to be packed are `buffered_records` instead.
    pending_ends: VecDeque<(u64, u32)>,
    /// In a plain segment, how many bytes at the front of `buffer` finish
    /// a frame whose start is already in the file (a write that stopped
    /// half-way). The buffer's frames are counted by walking their
    /// lengths from there, when needed, which costs nothing per append.
    head_partial: usize,
    /// Bytes of the file known to be on stable storage.
    synced: u64,
    /// Records in those bytes.
    synced_records: u64,
    /// Set when a failed write could not be cut off again: the file may
    /// hold bytes past `flushed`, so nothing more may be appended.
    tail_unknown: bool,
}

/// What a sync of the active segment covers, taken when its bytes were
/// handed to the OS; given back to [`SegmentWriter::mark_synced`] once the
/// sync succeeded.
#[derive(Debug, Clone)]
pub(crate) struct SyncPoint {
    /// The segment.
    pub(crate) id: u64,
    /// Bytes in the file at that point.
    pub(crate) bytes: u64,
    /// Records in those bytes.
    pub(crate) records: u64,
}

impl SegmentWriter {
    /// Creates segment `id` in `dir` and writes its header. Fails if the
    /// file exists: a writer never appends to a file it did not start.
    pub(crate) fn create(fs: &Fs, dir: &Path, id: u64, compression: Compression) -> io::Result<SegmentWriter> {
        let path = segment_path(dir, id);
        let file = fs.open(&path, Open::CreateNew)?;
        if let Err(err) = write_all(&**fs, &path, &file, &encode_header(codec_id(compression))) {
            drop(file);
            if let Err(removed) = fs.remove(&path) {
                tracing::warn!(path = %path.display(), error = %removed, "could not remove a segment whose header failed");
            }
            return Err(err);
        }
        let file = Arc::new(file);
        let compressed = (compression != Compression::None)
            .then(|| Box::new(Compressed { packer: Packer::new(compression), packed: Vec::new() }));
        Ok(SegmentWriter {
            id,
            path,
            file,
            fs: Arc::clone(fs),
            buffer: Vec::new(),
            buffered_records: 0,
            compressed,
            flushed: HEADER_LEN as u64,
            records: 0,
            last_seq: None,
            pending_ends: VecDeque::new(),
            head_partial: 0,
            synced: HEADER_LEN as u64,
            synced_records: 0,
            tail_unknown: false,
        })
    }

    /// Whether the writer refuses appends because a failed write could
    /// not be cut off: the segment must be sealed at [`flushed`](Self::flushed).
    pub(crate) fn tail_unknown(&self) -> bool {
        self.tail_unknown
    }

    /// Records appended that are not yet all in the file.
    pub(crate) fn unwritten_records(&self) -> u64 {
        if self.compressed.is_none() {
            return plain_frames_in(&self.buffer, self.head_partial);
        }
        u64::from(self.buffered_records) + self.pending_ends.iter().map(|&(_, records)| u64::from(records)).sum::<u64>()
    }

    /// Records appended that are not known to be on stable storage.
    pub(crate) fn records_not_synced(&self) -> u64 {
        self.records - self.synced_records
    }

    /// Records wholly in the file.
    fn records_in_file(&self) -> u64 {
        self.records - self.unwritten_records()
    }

    fn refuse_if_tail_unknown(&self) -> io::Result<()> {
        if self.tail_unknown {
            return Err(io::Error::other(format!(
                "segment {} is closed to appends: a failed write could not be cut off",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Whether frames are packed into compressed blocks.
    pub(crate) fn compressed(&self) -> bool {
        self.compressed.is_some()
    }

    /// The segment's id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The segment's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Length of the segment in bytes once everything buffered is written;
    /// in a compressed segment, at most that (the buffered frames are
    /// counted as a block stored without compression).
    pub(crate) fn len(&self) -> u64 {
        let (packed, overhead) = match &self.compressed {
            Some(compressed) if self.buffer.is_empty() => (compressed.packed.len(), 0),
            Some(compressed) => (compressed.packed.len(), BLOCK_OVERHEAD),
            None => (0, 0),
        };
        self.flushed + packed as u64 + self.buffer.len() as u64 + overhead
    }

    /// How much [`len`](Self::len) grows, at most, when a frame of
    /// `frame_len` bytes is appended: in a compressed segment, a frame that
    /// starts a new block brings the block's overhead with it.
    pub(crate) fn growth(&self, frame_len: usize) -> u64 {
        let frame = frame_len as u64;
        let new_block = self.buffer.is_empty()
            || frame_len >= WRITE_BUFFER_BYTES
            || self.buffer.len() + frame_len > WRITE_BUFFER_BYTES
            || self.buffered_records >= MAX_BLOCK_RECORDS;
        match &self.compressed {
            Some(_) if new_block => frame + BLOCK_OVERHEAD,
            _ => frame,
        }
    }

    /// Bytes already in the file; a reader may read up to here.
    pub(crate) fn flushed(&self) -> u64 {
        self.flushed
    }

    /// Bytes appended but not yet in the file, exactly as the file will
    /// hold them: in a compressed segment, the buffered frames are packed
    /// first.
    pub(crate) fn unflushed(&mut self) -> io::Result<&[u8]> {
        self.pack()?;
        match &self.compressed {
            Some(compressed) => Ok(&compressed.packed),
            None => Ok(&self.buffer),
        }
    }

    /// Packs the buffered frames of a compressed segment into a block.
    fn pack(&mut self) -> io::Result<()> {
        let Some(compressed) = self.compressed.as_mut() else { return Ok(()) };
        if self.buffer.is_empty() {
            return Ok(());
        }
        compressed.packer.pack(&self.buffer, self.buffered_records, &mut compressed.packed)?;
        self.pending_ends.push_back((self.flushed + compressed.packed.len() as u64, self.buffered_records));
        self.buffer.clear();
        self.buffered_records = 0;
        Ok(())
    }

    /// Records appended so far.
    pub(crate) fn records(&self) -> u64 {
        self.records
    }

    /// The sequence number of the last record appended.
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Counts a frame just appended, and notes its number.
    fn appended(&mut self, frame: &[u8]) {
        self.records += 1;
        self.last_seq = seq_of(frame).or(self.last_seq);
    }

    /// Appends one complete frame. On error nothing of this frame was
    /// appended, and everything appended before is still buffered or in
    /// the file.
    pub(crate) fn append(&mut self, frame: &[u8]) -> io::Result<()> {
        self.refuse_if_tail_unknown()?;
        if self.buffer.len() + frame.len() > WRITE_BUFFER_BYTES || self.buffered_records >= MAX_BLOCK_RECORDS {
            self.flush()?;
        }
        if frame.len() >= WRITE_BUFFER_BYTES {
            // Whatever is still pending goes first: a packed block whose
            // write failed half-way must be finished before anything else.
            self.flush()?;
            self.write_direct(frame)?;
        } else {
            self.buffer.extend_from_slice(frame);
            self.buffered_records += 1;
        }
        self.appended(frame);
        Ok(())
    }

    /// Appends one frame and writes it to the file (to the OS) before
    /// returning: write-ahead. On error nothing of this frame is in the
    /// file, and everything appended before is still buffered or in it.
    pub(crate) fn append_through(&mut self, frame: &[u8]) -> io::Result<()> {
        self.refuse_if_tail_unknown()?;
        self.flush()?;
        self.write_direct(frame)?;
        self.appended(frame);
        Ok(())
    }

    /// Writes a frame straight to the file (in a compressed segment, as a
    /// block of its own). A failure half-way cuts the file back to where
    /// the frame started. Called with nothing buffered.
    fn write_direct(&mut self, frame: &[u8]) -> io::Result<()> {
        let block;
        let frame = match self.compressed.as_mut() {
            Some(compressed) => {
                let mut packed = Vec::new();
                compressed.packer.pack(frame, 1, &mut packed)?;
                block = packed;
                &block[..]
            }
            None => frame,
        };
        match write_all(&*self.fs, &self.path, &self.file, frame) {
            Ok(()) => {
                self.flushed += frame.len() as u64;
                Ok(())
            }
            Err(err) => {
                // The send gets the write's error (ENOSPC, say), not the
                // truncate's; a failed truncate closes the segment.
                self.cut_back_to(self.flushed);
                Err(err)
            }
        }
    }

    /// Cuts the file back to `len` bytes, where the last good record ends.
    /// If that fails the file's tail is unknown, and the writer takes no
    /// more appends.
    fn cut_back_to(&mut self, len: u64) {
        if let Err(err) = self.fs.set_len(&self.path, &self.file, len) {
            tracing::error!(path = %self.path.display(), error = %err,
                "a failed write could not be cut off; the segment is closed to appends");
            self.tail_unknown = true;
        }
    }

    /// Takes back every record not yet on stable storage: the buffers are
    /// emptied and the file cut back to its synced bytes, after a sync (or
    /// the write before it) failed. Returns how many records were taken
    /// back. If the file cannot be cut, the writer is closed to appends
    /// ([`tail_unknown`](Self::tail_unknown)): the records may then still
    /// be found by a recovery, but nothing is ever appended after them.
    pub(crate) fn roll_back_unsynced(&mut self) -> u64 {
        let dropped = self.records - self.synced_records;
        self.buffer.clear();
        self.buffered_records = 0;
        if let Some(compressed) = self.compressed.as_mut() {
            compressed.packed.clear();
        }
        self.pending_ends.clear();
        self.head_partial = 0;
        self.records = self.synced_records;
        if self.flushed > self.synced {
            self.flushed = self.synced;
            self.cut_back_to(self.synced);
        }
        dropped
    }

    /// Notes that a sync taken at `point` succeeded.
    pub(crate) fn mark_synced(&mut self, point: &SyncPoint) {
        if point.id == self.id && point.bytes > self.synced && point.bytes <= self.flushed {
            self.synced = point.bytes;
            self.synced_records = point.records;
        }
    }

    /// Bytes of the file known to be on stable storage.
    pub(crate) fn synced(&self) -> u64 {
        self.synced
    }

    /// Writes buffered frames to the file (to the OS, not to stable
    /// storage). On a failure the bytes that did reach the file are
    /// accounted for and the rest stay buffered for the next attempt.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.refuse_if_tail_unknown()?;
        self.pack()?;
        let plain = self.compressed.is_none();
        let pending = match self.compressed.as_mut() {
            Some(compressed) => &mut compressed.packed,
            None => &mut self.buffer,
        };
        while !pending.is_empty() {
            match self.fs.write(&self.path, &self.file, pending) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "segment write made no progress")),
                Ok(written) => {
                    self.flushed += written as u64;
                    if plain {
                        self.head_partial = if written == pending.len() {
                            0
                        } else {
                            partial_after(pending, self.head_partial, written)
                        };
                    }
                    pending.drain(..written);
                    while self.pending_ends.front().is_some_and(|&(end, _)| end <= self.flushed) {
                        self.pending_ends.pop_front();
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.buffered_records = 0;
        Ok(())
    }

    /// Flushes and then asks the OS to put the file on stable storage.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        let (_, point) = self.flush_for_sync()?;
        self.fs.sync(&self.path, &self.file)?;
        self.mark_synced(&point);
        Ok(())
    }

    /// Flushes, and returns the file so that it can be synced without
    /// holding up appends, with what that sync covers.
    pub(crate) fn flush_for_sync(&mut self) -> io::Result<(SyncHandle, SyncPoint)> {
        self.flush()?;
        let point = SyncPoint { id: self.id, bytes: self.flushed, records: self.records_in_file() };
        let handle = SyncHandle { fs: Arc::clone(&self.fs), path: self.path.clone(), file: Arc::clone(&self.file) };
        Ok((handle, point))
    }

    /// Flushes and closes the segment for good, making the file read-only.
    /// On error the writer is handed back unchanged, still active.
    /// A writer whose tail is unknown is sealed at its last good record:
    /// nothing is buffered in it.
    pub(crate) fn seal(mut self) -> Result<SegmentMeta, Box<(SegmentWriter, io::Error)>> {
        if !self.tail_unknown {
            if let Err(err) = self.flush() {
                return Err(Box::new((self, err)));
            }
        }
        let meta = SegmentMeta { id: self.id, bytes: self.flushed, records: self.records, last_seq: self.last_seq };
        // Read-only is a guard against accidents, not something correctness
        // rests on, so a failure here is only logged.
        if let Err(err) = self.fs.set_readonly(&self.path, true) {
            tracing::warn!(path = %self.path.display(), error = %err, "could not make sealed segment read-only");
        }
        Ok(meta)
    }
}

/// How many frames (whole or, the first, finishing) `buffer` holds, its
/// first `head_partial` bytes finishing a frame started before it.
fn plain_frames_in(buffer: &[u8], head_partial: usize) -> u64 {
    if buffer.is_empty() {
        return 0;
    }
    let mut count = u64::from(head_partial > 0);
    let mut pos = head_partial;
    while let Some(len) = buffer.get(pos..pos + 4) {
        count += 1;
        pos += FRAME_OVERHEAD + u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    }
    count
}

/// After the first `written` bytes of `buffer` reached the file: how many
/// bytes at the front of what is left finish a frame already started.
fn partial_after(buffer: &[u8], head_partial: usize, written: usize) -> usize {
    if written < head_partial {
        return head_partial - written;
    }
    let mut pos = head_partial;
    while pos < written {
        let Some(len) = buffer.get(pos..pos + 4) else { return 0 };
        pos += FRAME_OVERHEAD + u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    }
    pos - written
}

#[cfg(test)]
mod tests;
