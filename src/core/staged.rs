//! [`Staged`]: spilled items kept as they were sent, beside their frames.
//!
//! In `Overflow` mode a send that spills hands its encoded frame to the
//! disk tier and would then drop the item. While the receiver is close
//! behind the senders it would read that frame back moments later, check
//! its CRC and decode it into the very item that was dropped. So the item
//! is kept instead, up to a bound, with where its frame is: the segment
//! and the frame's first and last offsets. When the receiver's cursor is
//! at exactly such a frame it takes the kept item and moves past the frame
//! without reading it.
//!
//! This changes no order and no count. A frame is identified by its
//! segment and offset, which no other frame ever has (segment ids are
//! never reused within an open channel, and a segment's bytes are never
//! rewritten), so the kept item is the record under the cursor: taking
//! it is reading that record, and the disk tier accounts for it the same
//! way. Entries are added in append order under the channel lock, after
//! the append; an entry whose frame the cursor has passed (read from the
//! file instead: the bound was reached, or the receive took another path)
//! is dropped when the receiver next looks. Nothing is kept for a segment
//! that packs frames into compressed blocks, nothing under
//! `SyncPolicy::Always` (only synced records may be read), and nothing in
//! the durable modes, where a record counts as read only once it is
//! handed out.
//!
//! A kept item is the item as it was sent, so bytes of its frame that
//! another program damaged in the file go unnoticed: what is delivered is
//! intact. It is also the sent value rather than what its encoding
//! decodes to, as an item that stayed in memory is; the two differ only
//! for types whose serde round trip is not exact (the README says so).
//! The frame still reaches the file, in the writer's large writes, for a
//! receiver that falls further behind than the bound.
//!
//! While the senders keep spilling, the receiver finds the backlog empty
//! only by catching up with them at a moment when none appends, which
//! with several busy senders almost never happens: the channel would stay
//! on the disk path, every item paying for a spill, long after the
//! receiver caught up. So when the receiver accounts for what it took,
//! under the channel lock that every append takes, and finds that the
//! kept items are every record left on disk, from its cursor on, it takes
//! them all there and then. If their frames are all in the segment the
//! cursor is in, the backlog is empty at that moment and memory opens
//! again (otherwise the take stops at the segment's end, and memory stays
//! closed); the items taken are older than anything memory receives from
//! then on, and the receiver hands them all out before it looks at
//! memory again.
//!
//! The bound ([`STAGED_MAX`] items, no more than the memory bound, and
//! [`STAGED_BYTES`] of frames) counts the items in the receiver's hands as
//! of its last take, which only shrink meanwhile.

use std::collections::VecDeque;

use super::Numbered;
use crate::segment::SegmentCursor;

/// Most items kept (and never more than the memory bound). Enough to let a
/// receiver that fell behind by a memory's worth of items catch up
/// without decoding; fewer made the difference vanish in the contention
/// benchmark (W3).
pub(crate) const STAGED_MAX: usize = if cfg!(loom) { 2 } else { 1024 };

/// Most bytes of frames whose items are kept: the write buffer's size, so
/// that large items are kept only a few at a time.
pub(crate) const STAGED_BYTES: u64 = crate::segment::WRITE_BUFFER_BYTES as u64;

/// One kept item and where its frame is.
#[derive(Debug)]
struct Entry<T> {
    seq: u64,
    item: T,
    segment: u64,
    start: u64,
    end: u64,
}

impl<T> Entry<T> {
    /// Where the frame starts: its segment and offset, which order frames
    /// as the cursor meets them.
    fn place(&self) -> (u64, u64) {
        (self.segment, self.start)
    }
}

/// Where the cursor is, as [`Entry::place`] says it.
fn place_of(cursor: &SegmentCursor) -> (u64, u64) {
    (cursor.id(), cursor.pos())
}

/// Spilled items kept as they were sent, oldest first, not yet handed to
/// the receiver (see the module docs). Under the channel lock: a send adds
/// its item right after the append, and the receiver moves everything
/// into its [`Kept`] whenever it holds that lock anyway (once per batch it
/// accounts for, and before it would flush the writer to read on).
#[derive(Debug)]
pub(crate) struct Staged<T> {
    entries: VecDeque<Entry<T>>,
    /// Most items kept, here and in the receiver's hands; 0 keeps none.
    limit: usize,
    /// Bytes of the frames of `entries`.
    bytes: u64,
    /// Items the receiver held when it last took the kept ones, and the
    /// bytes of their frames: upper bounds on what it holds now, as it
    /// only gives them up meanwhile.
    held: (usize, u64),
}

impl<T> Staged<T> {
    /// Keeps at most `limit` items.
    pub(crate) fn new(limit: usize) -> Staged<T> {
        Staged { entries: VecDeque::new(), limit, bytes: 0, held: (0, 0) }
    }

    /// Keeps `item`, numbered `seq`, whose frame was just appended to
    /// `segment` between offsets `start` and `end`. Without room the item
    /// is handed back.
    pub(crate) fn keep(&mut self, seq: u64, item: T, segment: u64, start: u64, end: u64) -> Result<(), T> {
        let len = end.saturating_sub(start);
        if self.entries.len() + self.held.0 >= self.limit || self.bytes + self.held.1 + len > STAGED_BYTES {
            return Err(item);
        }
        self.entries.push_back(Entry { seq, item, segment, start, end });
        self.bytes += len;
        Ok(())
    }

    /// Whether as many items are kept, here and in the receiver's hands, as
    /// the bound allows, so that the next one cannot be: the receiver is
    /// at least that many items behind the senders.
    pub(crate) fn is_full(&self) -> bool {
        self.limit > 0 && self.entries.len() + self.held.0 >= self.limit
    }

    /// Moves every kept item to the receiver's `kept`, behind the ones it
    /// holds (which are older); `in_hand` more items, with frames of at
    /// most `in_hand_bytes`, are in the receiver's hands outside `kept`,
    /// not yet handed out.
    pub(crate) fn hand_over(&mut self, kept: &mut Kept<T>, in_hand: usize, in_hand_bytes: u64) {
        if kept.entries.is_empty() {
            std::mem::swap(&mut kept.entries, &mut self.entries);
        } else {
            kept.entries.append(&mut self.entries);
        }
        kept.bytes += std::mem::take(&mut self.bytes);
        self.held = (kept.entries.len() + in_hand, kept.bytes + in_hand_bytes);
    }

    /// Takes every kept item out, to be dropped outside the lock.
    pub(crate) fn take_all(&mut self) -> Vec<T> {
        self.held = (0, 0);
        self.bytes = 0;
        self.entries.drain(..).map(|entry| entry.item).collect()
    }
}

/// What [`Kept::take_at`] moved.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TakenKept {
    /// Items moved.
    pub(crate) items: usize,
    /// Bytes of their frames.
    pub(crate) bytes: u64,
    /// Where the oldest kept frame left starts: its segment and offset.
    pub(crate) next: Option<(u64, u64)>,
}

/// The kept items in the receiver's hands, oldest first.
#[derive(Debug)]
pub(crate) struct Kept<T> {
    entries: VecDeque<Entry<T>>,
    /// Bytes of the frames of `entries`.
    bytes: u64,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept { entries: VecDeque::new(), bytes: 0 }
    }
}

impl<T> Kept<T> {
    /// Drops the items of frames `cursor` has passed (read from the file
    /// instead), and returns where the oldest remaining kept frame starts:
    /// its segment and offset.
    pub(crate) fn next_after(&mut self, cursor: &SegmentCursor) -> Option<(u64, u64)> {
        let here = place_of(cursor);
        while self.entries.front().is_some_and(|entry| entry.place() < here) {
            self.pop();
        }
        self.entries.front().map(Entry::place)
    }

    fn pop(&mut self) -> Option<Entry<T>> {
        let entry = self.entries.pop_front()?;
        self.bytes = self.bytes.saturating_sub(entry.end.saturating_sub(entry.start));
        Some(entry)
    }

    /// Whether the next frame under `cursor` is one whose item is kept,
    /// and the cursor can pass it. Drops nothing (it may be asked with the
    /// channel lock held, and an item's `Drop` may use the channel).
    pub(crate) fn ready_at(&self, cursor: &SegmentCursor) -> bool {
        let here = place_of(cursor);
        cursor.passable_at().is_some()
            && self.entries.iter().map(Entry::place).find(|&place| place >= here) == Some(here)
    }

    /// Whether the kept items are `records` in number and the first of
    /// them is the next frame under `cursor`: then, if their frames follow
    /// one another, they are every record from the cursor on, and
    /// [`take_at`](Self::take_at) drops none of them.
    pub(crate) fn is_all_of(&self, cursor: &SegmentCursor, records: u64) -> bool {
        self.entries.len() as u64 == records
            && records > 0
            && self.entries.front().is_some_and(|entry| entry.place() == place_of(cursor))
    }

    /// Moves to `out`, up to `max` of them, the kept items whose frames are
    /// the next ones under `cursor`, moving the cursor past each, and drops
    /// those of frames the cursor has passed: with no lock held but the
    /// receiver's own, or under the channel lock when
    /// [`is_all_of`](Self::is_all_of) said so, which leaves none to drop.
    pub(crate) fn take_at(&mut self, cursor: &mut SegmentCursor, max: usize, out: &mut Numbered<T>) -> TakenKept {
        let mut taken = TakenKept { items: 0, bytes: 0, next: None };
        while taken.items < max && cursor.passable_at().is_some() && self.next_after(cursor) == Some(place_of(cursor)) {
            let Some(entry) = self.entries.front() else { break };
            if !cursor.pass_frame(entry.start, entry.end) {
                break;
            }
            let Some(entry) = self.pop() else { break };
            taken.bytes += entry.end - entry.start;
            out.push_back(entry.seq, entry.item);
            taken.items += 1;
        }
        taken.next = self.next_after(cursor);
        taken
    }

    /// Drops every item.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::format::{frame_of, HEADER_LEN};
    use crate::segment::{Peek, SegmentWriter};

    fn took(taken: TakenKept) -> (usize, Option<(u64, u64)>) {
        (taken.items, taken.next)
    }

    /// A segment holding `count` frames (item `i` numbered `10 + i`), of
    /// which only the first is written to the file, the cursor on it
    /// having read its header; and the frames' offsets.
    fn segment(dir: &std::path::Path, count: u64) -> (SegmentWriter, SegmentCursor, Vec<(u64, u64)>) {
        let fs = crate::storage::os();
        let mut writer = SegmentWriter::create(&fs, dir, 3, crate::Compression::None).unwrap();
        let mut offsets = Vec::new();
        for i in 0..count {
            let start = writer.len();
            writer.append(&frame_of(&i.to_le_bytes(), 10 + i).unwrap()).unwrap();
            offsets.push((start, writer.len()));
            if i == 0 {
                writer.flush().unwrap();
            }
        }
        let mut cursor = SegmentCursor::open_active(&fs, writer.path(), 3, offsets[0].1).unwrap();
        assert!(matches!(cursor.peek().unwrap(), Peek::Record { .. }), "the header is read");
        assert_eq!(cursor.pos(), HEADER_LEN as u64);
        (writer, cursor, offsets)
    }

    /// The receiver's kept items for the frames of [`segment`] from the
    /// `first` on (item `i` numbered `10 + i`), handed over.
    fn kept_from(offsets: &[(u64, u64)], first: u64) -> Kept<u64> {
        let mut staged = Staged::new(8);
        for i in first..offsets.len() as u64 {
            staged.keep(10 + i, i, 3, offsets[i as usize].0, offsets[i as usize].1).unwrap();
        }
        let mut kept = Kept::default();
        staged.hand_over(&mut kept, 0, 0);
        kept
    }

    #[test]
    fn kept_items_are_taken_only_where_their_frames_come_next() {
        let dir = tempfile::tempdir().unwrap();
        let (_writer, mut cursor, offsets) = segment(dir.path(), 4);
        // Item 0 was not kept: its frame must be read from the file first.
        let mut kept = kept_from(&offsets, 1);
        let mut out = Numbered::default();
        assert_eq!(took(kept.take_at(&mut cursor, 8, &mut out)), (0, Some((3, offsets[1].0))), "not at the cursor yet");
        assert!(out.is_empty());
        cursor.commit();
        let taken = kept.take_at(&mut cursor, 2, &mut out);
        assert_eq!(taken.bytes, offsets[2].1 - offsets[1].0);
        assert_eq!(took(taken), (2, Some((3, offsets[3].0))), "at most `max`");
        assert_eq!(took(kept.take_at(&mut cursor, 8, &mut out)), (1, None));
        assert_eq!(out.iter().map(|(seq, &item)| (seq, item)).collect::<Vec<_>>(), vec![(11, 1), (12, 2), (13, 3)]);
        assert_eq!(cursor.pos(), offsets[3].1, "past the last kept frame, beyond what the file holds");
        assert_eq!(cursor.records_read(), 4);
        assert_eq!(cursor.peek().unwrap(), Peek::Exhausted, "nothing is read past the limit");
    }

    #[test]
    fn items_whose_frames_the_cursor_read_are_dropped_unused() {
        let dir = tempfile::tempdir().unwrap();
        let (_writer, mut cursor, offsets) = segment(dir.path(), 3);
        let mut staged = Staged::new(8);
        staged.keep(1, 100, 2, 16, 40).unwrap(); // an older segment's
        staged.keep(10, 0, 3, offsets[0].0, offsets[0].1).unwrap();
        staged.keep(12, 2, 3, offsets[2].0, offsets[2].1).unwrap();
        staged.keep(20, 200, 4, HEADER_LEN as u64, 60).unwrap(); // a newer segment's
        let mut kept = Kept::default();
        staged.hand_over(&mut kept, 0, 0);
        // The first frame is read from the file instead.
        cursor.commit();
        let mut out = Numbered::default();
        assert!(!kept.ready_at(&cursor));
        assert_eq!(kept.entries.len(), 4, "asking drops nothing");
        assert_eq!(kept.next_after(&cursor), Some((3, offsets[2].0)), "the older and the read ones are gone");
        assert_eq!(took(kept.take_at(&mut cursor, 8, &mut out)), (0, Some((3, offsets[2].0))), "frame 1 was not kept");
        assert!(cursor.pass_frame(offsets[1].0, offsets[1].1), "read from elsewhere");
        assert_eq!(took(kept.take_at(&mut cursor, 8, &mut out)), (1, Some((4, HEADER_LEN as u64))));
        assert_eq!(out.pop_front(), Some((12, 2)));
        assert!(!cursor.pass_frame(offsets[1].0, offsets[1].1), "a frame not under the cursor is not passed");
    }

    #[test]
    fn nothing_kept_is_taken_in_a_segment_whose_header_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::storage::os();
        let mut writer = SegmentWriter::create(&fs, dir.path(), 3, crate::Compression::None).unwrap();
        writer.append(&frame_of(b"x", 10).unwrap()).unwrap();
        writer.flush().unwrap();
        let mut bytes = std::fs::read(writer.path()).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(writer.path(), &bytes).unwrap();
        let mut cursor = SegmentCursor::open_active(&fs, writer.path(), 3, writer.flushed()).unwrap();
        assert!(matches!(cursor.peek().unwrap(), Peek::Damaged { .. }));
        cursor.skip_to(HEADER_LEN as u64);
        let mut staged = Staged::new(8);
        staged.keep(10, 0u8, 3, HEADER_LEN as u64, writer.flushed()).unwrap();
        let mut kept = Kept::default();
        staged.hand_over(&mut kept, 0, 0);
        assert!(!kept.ready_at(&cursor));
        let mut out = Numbered::default();
        assert_eq!(kept.take_at(&mut cursor, 8, &mut out).items, 0);
        assert!(out.is_empty());
    }

    #[test]
    fn the_kept_items_are_all_of_the_backlog_only_if_they_start_at_the_cursor_and_number_as_many() {
        let dir = tempfile::tempdir().unwrap();
        let (_writer, mut cursor, offsets) = segment(dir.path(), 3);
        let mut kept = kept_from(&offsets, 1);
        assert!(!kept.is_all_of(&cursor, 3), "frame 0, under the cursor, was not kept");
        assert!(!kept.is_all_of(&cursor, 2), "nor with the count of the kept ones");
        cursor.commit();
        assert!(kept.is_all_of(&cursor, 2));
        assert!(!kept.is_all_of(&cursor, 3), "a record beyond the kept ones");
        let mut out = Numbered::default();
        assert_eq!(took(kept.take_at(&mut cursor, usize::MAX, &mut out)), (2, None));
        assert!(!kept.is_all_of(&cursor, 0), "nothing kept is not all of anything");
    }

    #[test]
    fn what_is_kept_is_bounded_in_items_and_bytes_counting_what_the_receiver_holds() {
        let mut staged = Staged::new(3);
        let mut kept = Kept::default();
        for i in 0..3 {
            staged.keep(i, i, 1, 16 + 10 * i, 26 + 10 * i).unwrap();
        }
        assert_eq!(staged.keep(3, 3, 1, 46, 56), Err(3), "three items at most");
        staged.hand_over(&mut kept, 0, 0);
        assert_eq!(staged.keep(3, 3, 1, 46, 56), Err(3), "the receiver's count too");
        // Two kept items the receiver moved on to hand out still count.
        let mut staged = Staged::new(3);
        staged.hand_over(&mut Kept::default(), 2, 20);
        staged.keep(0, 0, 1, 16, 26).unwrap();
        assert_eq!(staged.keep(1, 1, 1, 26, 36), Err(1));
        let mut staged = Staged::new(10);
        staged.hand_over(&mut Kept::default(), 1, STAGED_BYTES - 10);
        assert_eq!(staged.keep(0, 0, 1, 16, 27), Err(0), "and their frames' bytes");
        staged.keep(0, 0, 1, 16, 26).unwrap();
        let mut staged = Staged::new(10);
        staged.keep(0, 0, 1, 16, 16 + STAGED_BYTES - 100).unwrap();
        assert_eq!(staged.keep(1, 1, 1, 16 + STAGED_BYTES - 100, 17 + STAGED_BYTES), Err(1), "bytes");
        staged.keep(1, 1, 1, 16 + STAGED_BYTES - 100, 16 + STAGED_BYTES - 10).unwrap();
        assert_eq!(staged.take_all(), vec![0, 1]);
        staged.keep(2, 2, 1, 0, STAGED_BYTES).unwrap();
    }

    #[test]
    fn the_bound_is_full_by_count_only_counting_what_the_receiver_holds() {
        let mut staged = Staged::new(2);
        staged.keep(0, 0, 1, 16, 26).unwrap();
        assert!(!staged.is_full());
        staged.hand_over(&mut Kept::default(), 1, 10);
        assert!(staged.is_full(), "one held and one in hand");
        assert_eq!(staged.keep(1, 1, 1, 26, 36), Err(1));
        staged.hand_over(&mut Kept::default(), 0, 0);
        assert!(!staged.is_full(), "the receiver handed them out");
        let mut staged = Staged::new(2);
        assert_eq!(staged.keep(0, 0, 1, 16, 17 + STAGED_BYTES), Err(0), "too large to keep");
        assert!(!staged.is_full(), "a refusal for its size says nothing of the receiver");
        assert!(!Staged::<u8>::new(0).is_full(), "a channel that keeps nothing is never behind by it");
    }
}
