//! [`Reader`]: the receiver's read position on disk.
//!
//! The receiver owns it and reads records through it outside the channel
//! lock; the disk tier moves it from segment to segment under the lock,
//! always through [`DiskQueue::point`], which is how the queue knows which
//! segment is being read (a segment being read is never dropped to make
//! room). Records of segment format version 1 carry no sequence number;
//! the reader numbers them as they are read, from the range the queue
//! kept for them.

use super::DiskQueue;
use crate::segment::SegmentCursor;

/// The receiver's read position on disk.
#[derive(Debug)]
pub(crate) struct Reader {
    /// The cursor on the segment being read, if any.
    cursor: Option<SegmentCursor>,
    /// The number the next record of format version 1 gets.
    unnumbered_next: u64,
}

impl Reader {
    /// A reader of the queue `disk` that has read nothing yet.
    pub(crate) fn new(disk: &DiskQueue) -> Reader {
        Reader { cursor: None, unnumbered_next: disk.unnumbered_from }
    }

    /// The cursor, if the reader is on a segment.
    pub(crate) fn cursor(&mut self) -> Option<&mut SegmentCursor> {
        self.cursor.as_mut()
    }

    /// Where the reader stands: segment, offset and the limit it may read
    /// to; what tells a receiver that positioning moved it.
    pub(crate) fn place(&self) -> Option<(u64, u64, u64)> {
        self.cursor.as_ref().map(|open| (open.id(), open.pos(), open.limit()))
    }

    /// Whether the reader is on a segment with records below its limit.
    pub(crate) fn has_more(&self) -> bool {
        self.cursor.as_ref().is_some_and(|open| !open.at_limit())
    }

    /// The number of a record just read: its own, or for a record of
    /// format version 1 the next of the range kept for them.
    pub(crate) fn number(&mut self, seq: Option<u64>) -> u64 {
        seq.unwrap_or_else(|| {
            self.unnumbered_next += 1;
            self.unnumbered_next - 1
        })
    }

    /// The cursor, read-only.
    pub(super) fn open(&self) -> Option<&SegmentCursor> {
        self.cursor.as_ref()
    }
}

impl DiskQueue {
    /// Takes `reader` off its segment, closing the file: the receiver is
    /// leaving.
    pub(crate) fn detach(&mut self, reader: &mut Reader) {
        self.point(reader, None);
        // The saved read position points into a segment the tier must not
        // change; nobody reads any more anyway.
        self.freeze_tier();
    }

    /// Points `reader` at `cursor`, or at nothing: the one place the queue
    /// learns which segment is being read. Returns the cursor it had.
    pub(super) fn point(&mut self, reader: &mut Reader, cursor: Option<SegmentCursor>) -> Option<SegmentCursor> {
        self.reading = cursor.as_ref().map(SegmentCursor::id);
        std::mem::replace(&mut reader.cursor, cursor)
    }
}
