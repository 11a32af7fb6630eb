//! [`SegmentCursor`]: the receiver's read position in one segment.
//!
//! Every segment is read with positioned reads, through the storage seam,
//! into a buffer of at most [`READ_BYTES`] (or one record, whichever is
//! larger): a sealed one up to its final length, the active one up to the
//! limit the writer has flushed. The cursor never looks past its limit,
//! and the most it ever allocates for one record is the segment size. No
//! memory map: a file another program truncates under the reader reads as
//! a short file (damage, counted), never as a crash.
//!
//! Reading is two steps: [`SegmentCursor::peek`] returns the next record's
//! payload without moving, [`SegmentCursor::commit`] moves past it. The
//! receiver commits only once the record is accounted for.
//!
//! In a compressed segment each frame is a block of records: the cursor
//! unpacks a block when it reaches it and hands out its records one by
//! one. Its offset stays at the block's start until the last record of
//! the block is committed; [`SegmentCursor::read_in_block`] says how many
//! of the block's records are already read.

use std::io;
use std::path::Path;

use crate::storage::Fs;

use super::block::{codec_readable, unpack};
mod source;

use source::Source;

use super::format::{decode_header, find_frame, read_frame, trailer_len, Frame, FRAME_HEADER_LEN, HEADER_LEN};

/// Bytes read at once from a segment.
pub(crate) const READ_BYTES: usize = 256 * 1024;

/// What [`SegmentCursor::peek`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Peek<'a> {
    /// The next record's payload, CRC checked, and its sequence number
    /// (`None` in a version 1 segment, whose records carry none).
    Record { payload: &'a [u8], seq: Option<u64> },
    /// Nothing more below the limit (yet, if the segment is still active).
    Exhausted,
    /// The bytes at the cursor are not a whole, intact frame, and the
    /// segment is sealed (or the header is bad). `resume` is where the
    /// next intact frame starts, if there is one below the limit.
    Damaged { reason: String, resume: Option<u64> },
    /// The bytes at the cursor of the active segment are not an intact
    /// frame; whether the damage is a torn write can only be decided once
    /// the segment is sealed.
    DamagedActive { reason: String },
}

/// A read position in one segment, owned by the receiver.
#[derive(Debug)]
pub(crate) struct SegmentCursor {
    /// The segment being read.
    id: u64,
    /// The bytes.
    source: Source,
    /// File offset of the next frame; 0 until the header has been checked.
    pos: u64,
    /// Bytes of the file that may be read. Set by `set_limit`.
    limit: u64,
    /// Whether `limit` is the segment's final length, so that a frame cut
    /// off by it is torn rather than still being written.
    sealed: bool,
    /// Whether every record appended so far lies below `limit` (the writer
    /// had nothing buffered), so that a frame cut off by it is damage even
    /// in the active segment.
    complete: bool,
    /// Offset after the record returned by the last `peek`, if any.
    pending_next: Option<u64>,
    /// Records committed so far.
    records_read: u64,
    /// Whether a record in this segment failed to decode, so the segment
    /// is to be set aside rather than deleted.
    damaged: bool,
    /// The segment's codec, from its header; 0 for plain records.
    codec: u16,
    /// The segment's format version, from its header.
    version: u16,
    /// Where to go once the header has been checked, when `skip_to` was
    /// called before it was.
    resume_at: Option<u64>,
    /// Whether the header was found damaged: nothing in the segment can
    /// be read, and `skip_to` moves at once.
    header_failed: bool,
    /// The block at `pos`, unpacked (compressed segments only).
    block: UnpackedBlock,
}

/// The records of the block under a cursor in a compressed segment.
#[derive(Debug, Default)]
struct UnpackedBlock {
    /// File offset after the block; `None` when no block is unpacked.
    end: Option<u64>,
    /// The block's record frames.
    frames: Vec<u8>,
    /// Offset in `frames` of the next record.
    next: usize,
    /// Records in the block.
    records: u32,
    /// Records of the block committed.
    read: u32,
    /// Where the record the last `peek` returned ends in `frames`.
    pending: Option<usize>,
}

/// Where the frame at the cursor is, or what is wrong with it.
enum Located {
    /// An intact frame of `len` bytes whose payload is at `payload` within
    /// it, with its sequence number.
    Frame { len: usize, payload: std::ops::Range<usize>, seq: Option<u64> },
    /// Not an intact frame.
    Damage { what: &'static str, checksum_failed: bool },
}

impl SegmentCursor {
    /// Opens a sealed segment of `bytes` bytes.
    pub(crate) fn open_sealed(fs: &Fs, path: &Path, id: u64, bytes: u64) -> io::Result<SegmentCursor> {
        Ok(SegmentCursor::new(id, Source::open(fs, path)?, bytes, true))
    }

    /// Opens the active segment, to read up to `limit` bytes.
    pub(crate) fn open_active(fs: &Fs, path: &Path, id: u64, limit: u64) -> io::Result<SegmentCursor> {
        Ok(SegmentCursor::new(id, Source::open(fs, path)?, limit, false))
    }

    fn new(id: u64, source: Source, limit: u64, sealed: bool) -> SegmentCursor {
        SegmentCursor {
            id,
            source,
            pos: 0,
            limit,
            sealed,
            complete: sealed,
            pending_next: None,
            records_read: 0,
            damaged: false,
            codec: 0,
            version: super::format::VERSION,
            resume_at: None,
            header_failed: false,
            block: UnpackedBlock::default(),
        }
    }

    /// The segment this cursor reads.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Records committed so far.
    pub(crate) fn records_read(&self) -> u64 {
        self.records_read
    }

    /// Whether a record in this segment failed to decode.
    pub(crate) fn damaged(&self) -> bool {
        self.damaged
    }

    /// Notes that a record in this segment failed to decode.
    pub(crate) fn mark_damaged(&mut self) {
        self.damaged = true;
    }

    /// Records of the block at the cursor's offset already committed: 0
    /// unless the cursor is inside a block of a compressed segment.
    pub(crate) fn read_in_block(&self) -> u32 {
        if self.block.end.is_some() {
            self.block.read
        } else {
            0
        }
    }

    /// The unread records of the block under the cursor, their count, and
    /// the file offset after the block; `None` outside a block.
    pub(crate) fn block_rest(&self) -> Option<(&[u8], u32, u64)> {
        let end = self.block.end?;
        let rest = self.block.frames.get(self.block.next..)?;
        Some((rest, self.block.records.saturating_sub(self.block.read), end))
    }

    /// Closes the file, keeping the position: the cursor of a drained
    /// segment kept for reuse must not keep the file's space allocated if
    /// the segment is deleted to make room. The next read reopens it.
    pub(crate) fn park(&mut self) {
        self.source.file = None;
        // Nothing buffered counts as read any more; the allocation stays.
        self.source.base = u64::MAX;
    }

    /// Whether every byte below the limit has been read.
    pub(crate) fn at_limit(&self) -> bool {
        self.pos >= self.limit
    }

    /// Moves the limit: the writer flushed more, or sealed the segment.
    /// `complete` says that every record appended so far lies below it.
    pub(crate) fn set_limit(&mut self, limit: u64, sealed: bool, complete: bool) {
        self.limit = limit;
        self.sealed = sealed;
        self.complete = sealed || complete;
    }

    /// Lets the cursor of the active segment read records the writer could
    /// not flush (a full disk): from here on it reads up to the file's
    /// `flushed` bytes from the file and then `unflushed`, a copy of the
    /// writer's buffer. The bytes are all appended records, so the new
    /// limit covers every record.
    pub(crate) fn feed_unflushed(&mut self, flushed: u64, unflushed: &[u8]) -> io::Result<()> {
        let source = &mut self.source;
        source.buffer.clear();
        if self.pos < flushed {
            let from_file = usize::try_from(flushed - self.pos).unwrap_or(usize::MAX);
            source.fill(self.pos, from_file)?;
            if source.buffer.len() < from_file {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "segment is shorter than what was written"));
            }
            source.buffer.extend_from_slice(unflushed);
        } else {
            let skip = usize::try_from(self.pos - flushed).unwrap_or(usize::MAX).min(unflushed.len());
            source.buffer.extend_from_slice(&unflushed[skip..]);
        }
        source.base = self.pos;
        self.limit = flushed + unflushed.len() as u64;
        self.complete = true;
        Ok(())
    }

    /// Returns up to `limit - pos` bytes from file offset `pos`, at least
    /// `want` of them when the limit allows.
    /// A file shorter than the limit (cut by another program) gives fewer
    /// bytes, which read as a frame cut off: damage, never a crash.
    fn bytes_at(&mut self, pos: u64, want: usize) -> io::Result<&[u8]> {
        let available = self.limit.saturating_sub(pos);
        let source = &mut self.source;
        let want = (want as u64).min(available);
        let covered = pos >= source.base && pos + want <= source.base + source.buffer.len() as u64;
        if !covered {
            let len = want.max(READ_BYTES as u64).min(available) as usize;
            source.fill(pos, len)?;
        }
        let start = usize::try_from(pos - source.base).unwrap_or(usize::MAX).min(source.buffer.len());
        let end =
            usize::try_from(self.limit.saturating_sub(source.base)).unwrap_or(usize::MAX).min(source.buffer.len());
        Ok(&source.buffer[start..end.max(start)])
    }

    /// Returns the next record without moving past it.
    ///
    /// # Errors
    ///
    /// Only when reading the active segment's file fails.
    pub(crate) fn peek(&mut self) -> io::Result<Peek<'_>> {
        self.pending_next = None;
        self.block.pending = None;
        if self.pos == 0 {
            let sealed = self.sealed;
            let header = self.bytes_at(0, HEADER_LEN)?;
            if header.len() < HEADER_LEN && !sealed {
                return Ok(Peek::Exhausted);
            }
            let header = match decode_header(header) {
                Ok(header) => header,
                Err(err) => {
                    self.header_failed = true;
                    return Ok(Peek::Damaged { reason: err.to_string(), resume: None });
                }
            };
            let codec = header.codec;
            if let Err(feature) = codec_readable(codec) {
                self.header_failed = true;
                let reason = format!("segment {} is compressed with {feature}, which this build cannot read", self.id);
                return Ok(Peek::Damaged { reason, resume: None });
            }
            self.codec = codec;
            self.version = header.version;
            self.pos = self.resume_at.take().unwrap_or(0).max(HEADER_LEN as u64);
        }
        if self.codec != 0 {
            return self.peek_block();
        }
        if self.pos >= self.limit {
            return Ok(Peek::Exhausted);
        }
        let pos = self.pos;
        match self.locate()? {
            Located::Frame { len, payload, seq } => {
                self.pending_next = Some(pos + len as u64);
                // Already read and checked: this second look copies nothing.
                Ok(Peek::Record { payload: &self.bytes_at(pos, len)?[payload], seq })
            }
            Located::Damage { what, checksum_failed } => self.report_damage(pos, what, checksum_failed),
        }
    }

    /// Finds the frame at the cursor and checks it.
    fn locate(&mut self) -> io::Result<Located> {
        let pos = self.pos;
        let frame_len = {
            let bytes = self.bytes_at(pos, FRAME_HEADER_LEN)?;
            if bytes.len() < FRAME_HEADER_LEN {
                let what = "record header cut off by the end of the segment";
                return Ok(Located::Damage { what, checksum_failed: false });
            }
            let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            (FRAME_HEADER_LEN + trailer_len(self.version)) as u64 + u64::from(len)
        };
        if pos + frame_len > self.limit {
            // The length is not yet checked: it may be the damage itself.
            let what = "record runs past the end of the segment";
            return Ok(Located::Damage { what, checksum_failed: false });
        }
        let len = frame_len as usize;
        let version = self.version;
        Ok(match read_frame(self.bytes_at(pos, len)?, 0, len, version) {
            Frame::Record { payload, seq, next } => {
                let end = next - trailer_len(version);
                Located::Frame { len, payload: end - payload.len()..end, seq }
            }
            Frame::Incomplete | Frame::Corrupt => {
                Located::Damage { what: "record fails its CRC32C", checksum_failed: true }
            }
        })
    }

    /// [`peek`](Self::peek) in a compressed segment: the next record of the
    /// block under the cursor, unpacking the next block when one is used up.
    fn peek_block(&mut self) -> io::Result<Peek<'_>> {
        loop {
            if self.block.end.is_some() {
                let block = &mut self.block;
                if block.next < block.frames.len() {
                    // `unpack` checked every record of the block.
                    let version = self.version;
                    if let Frame::Record { payload, seq, next } =
                        read_frame(&block.frames, block.next, block.frames.len(), version)
                    {
                        let end = next - trailer_len(version);
                        let range = end - payload.len()..end;
                        block.pending = Some(next);
                        return Ok(Peek::Record { payload: &self.block.frames[range], seq });
                    }
                }
                self.leave_block();
                continue;
            }
            if self.pos >= self.limit {
                return Ok(Peek::Exhausted);
            }
            let pos = self.pos;
            let (len, payload) = match self.locate()? {
                Located::Frame { len, payload, .. } => (len, payload),
                Located::Damage { what, checksum_failed } => return self.report_damage(pos, what, checksum_failed),
            };
            let mut frames = std::mem::take(&mut self.block.frames);
            let version = self.version;
            let unpacked = unpack(&self.bytes_at(pos, len)?[payload], &mut frames, version);
            self.block.frames = frames;
            match unpacked {
                Ok(records) => {
                    self.block = UnpackedBlock {
                        end: Some(pos + len as u64),
                        frames: std::mem::take(&mut self.block.frames),
                        next: 0,
                        records,
                        read: 0,
                        pending: None,
                    };
                }
                Err(reason) => {
                    self.block.frames.clear();
                    let what = format!("compressed block is damaged: {reason}");
                    return self.report_damage(pos, &what, true);
                }
            }
        }
    }

    /// Moves past the block under the cursor.
    fn leave_block(&mut self) {
        if let Some(end) = self.block.end.take() {
            self.pos = end;
        }
        self.block.frames.clear();
        self.block.next = 0;
        self.block.read = 0;
        self.block.records = 0;
        self.block.pending = None;
    }

    /// Reports damage at `pos`. In the active segment a frame cut off by
    /// the limit is still being written, so it is only "exhausted"; in a
    /// sealed one, the next intact frame is searched for.
    fn report_damage(&mut self, pos: u64, what: &str, checksum_failed: bool) -> io::Result<Peek<'_>> {
        let reason = format!("{what} (offset {pos} of segment {})", self.id);
        if !self.sealed {
            let damage = checksum_failed || self.complete;
            return Ok(if damage { Peek::DamagedActive { reason } } else { Peek::Exhausted });
        }
        let rest = usize::try_from(self.limit - pos).unwrap_or(usize::MAX);
        let (compressed, version) = (self.codec != 0, self.version);
        let bytes = self.bytes_at(pos, rest)?;
        let resume =
            if compressed { find_block(bytes, 1, version) } else { find_frame(bytes, 1, bytes.len(), version) };
        Ok(Peek::Damaged { reason, resume: resume.map(|offset| pos + offset as u64) })
    }

    /// Moves the cursor to `pos` without counting a record: past a damaged
    /// stretch, or to where reading left off before a restart.
    pub(crate) fn skip_to(&mut self, pos: u64) {
        self.pending_next = None;
        self.block.end = None;
        self.leave_block();
        if self.pos == 0 && !self.header_failed {
            // The header, which names the codec, is still to be checked:
            // the next `peek` checks it and then goes to `pos`.
            self.resume_at = Some(pos);
            return;
        }
        self.pos = pos.max(HEADER_LEN as u64);
    }

    /// Commits up to `count` records without looking at them (the records
    /// of a block read before a restart), stopping early at anything that
    /// is not an intact record.
    pub(crate) fn pass_records(&mut self, count: u16) -> io::Result<()> {
        for _ in 0..count {
            if !matches!(self.peek()?, Peek::Record { .. }) {
                break;
            }
            self.commit();
        }
        Ok(())
    }

    /// Moves past the plain frame between `start` and `end`, counting it
    /// as read, when it is the next one under the cursor: its record was
    /// taken from elsewhere (the item kept as it was sent, see
    /// `core::staged`). The frame may still be only in the writer's
    /// buffer, past the limit; the cursor then stays past the limit until
    /// the limit catches up. Returns whether it moved: not before the
    /// header was checked, nor in a compressed segment.
    pub(crate) fn pass_frame(&mut self, start: u64, end: u64) -> bool {
        if self.passable_at() != Some(start) || end <= start {
            return false;
        }
        self.pending_next = None;
        self.pos = end;
        self.records_read += 1;
        true
    }

    /// Where a frame must start for [`pass_frame`](Self::pass_frame) to
    /// pass it: the cursor's offset, once a good header of a segment of
    /// plain frames has been read; `None` otherwise.
    pub(crate) fn passable_at(&self) -> Option<u64> {
        let ready = self.pos >= HEADER_LEN as u64 && self.codec == 0 && !self.header_failed;
        ready.then_some(self.pos)
    }

    /// The cursor's offset: where the next record starts.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// The bytes the cursor may read.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Moves past the record the last `peek` returned.
    pub(crate) fn commit(&mut self) {
        if let Some(next) = self.block.pending.take() {
            self.block.next = next;
            self.block.read += 1;
            self.records_read += 1;
            if next >= self.block.frames.len() {
                self.leave_block();
            }
            return;
        }
        if let Some(next) = self.pending_next.take() {
            self.pos = next;
            self.records_read += 1;
        }
    }
}

/// Finds the first offset at or after `from` where an intact block starts:
/// a frame whose CRC matches and whose payload unpacks. Record frames
/// inside stored blocks are intact frames too, but not blocks, so reading
/// never resumes in the middle of a block, and a torn block at the end of
/// a segment is not mistaken for damage followed by records.
fn find_block(bytes: &[u8], mut from: usize, version: u16) -> Option<usize> {
    let mut scratch = Vec::new();
    loop {
        let at = find_frame(bytes, from, bytes.len(), version)?;
        if let Frame::Record { payload, .. } = read_frame(bytes, at, bytes.len(), version) {
            if unpack(payload, &mut scratch, version).is_ok() {
                return Some(at);
            }
        }
        from = at + 1;
    }
}

#[cfg(test)]
mod tests;
