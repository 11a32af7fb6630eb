use super::*;
use crate::storage::os;

#[test]
fn small_frames_are_buffered_until_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SegmentWriter::create(&os(), dir.path(), 3, Compression::None).unwrap();
    writer.append(&[1; 100]).unwrap();
    writer.append(&[2; 100]).unwrap();
    assert_eq!(writer.flushed(), HEADER_LEN as u64);
    assert_eq!(writer.len(), HEADER_LEN as u64 + 200);
    assert_eq!(std::fs::metadata(writer.path()).unwrap().len(), HEADER_LEN as u64);
    writer.flush().unwrap();
    assert_eq!(std::fs::metadata(writer.path()).unwrap().len(), HEADER_LEN as u64 + 200);
    assert_eq!(writer.records(), 2);
}

#[test]
fn records_cut_off_by_a_short_write_are_counted_as_unwritten() {
    let dir = tempfile::tempdir().unwrap();
    let io = std::sync::Arc::new(crate::storage::faulty::FaultyStorage::default());
    let fs: crate::storage::Fs = io.clone();
    let mut writer = SegmentWriter::create(&fs, dir.path(), 4, Compression::None).unwrap();
    let frame = crate::segment::format::frame_of(&[5; 100], 0).unwrap();
    for _ in 0..3 {
        writer.append(&frame).unwrap();
    }
    assert_eq!(writer.unwritten_records(), 3);
    let header = HEADER_LEN as u64;
    let len = frame.len() as u64;
    for (room, unwritten) in [(len + 50, 2), (len + 60, 2), (2 * len, 1), (2 * len + 1, 1), (3 * len - 1, 1)] {
        io.limit_space(Some(header + room - writer.flushed()));
        assert!(writer.flush().is_err(), "the disk fills after {room} bytes");
        assert_eq!(writer.flushed(), header + room);
        assert_eq!(writer.unwritten_records(), unwritten, "after {room} bytes");
    }
    io.limit_space(None);
    writer.flush().unwrap();
    assert_eq!(writer.unwritten_records(), 0);
    assert_eq!(writer.records(), 3);
}

#[test]
fn sealing_flushes_and_makes_the_file_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SegmentWriter::create(&os(), dir.path(), 0, Compression::None).unwrap();
    writer.append(&[7; WRITE_BUFFER_BYTES + 1]).unwrap();
    writer.append(&[8; 10]).unwrap();
    let path = writer.path().to_owned();
    let meta = writer.seal().map_err(|failed| failed.1).unwrap();
    assert_eq!(
        meta,
        SegmentMeta {
            id: 0,
            bytes: HEADER_LEN as u64 + WRITE_BUFFER_BYTES as u64 + 11,
            records: 2,
            last_seq: Some(0x0808_0808_0808_0808)
        }
    );
    let file_meta = std::fs::metadata(&path).unwrap();
    assert_eq!(file_meta.len(), meta.bytes);
    assert!(file_meta.permissions().readonly());
}

/// Found in review: after a flush failed half-way through a packed
/// block, a frame of exactly the buffer size went to the file before
/// the rest of that block.
#[cfg(feature = "lz4")]
#[test]
fn a_large_frame_waits_for_a_half_written_block() {
    use crate::segment::{Peek, SegmentCursor};
    let dir = tempfile::tempdir().unwrap();
    let io = std::sync::Arc::new(crate::storage::faulty::FaultyStorage::default());
    let fs: crate::storage::Fs = io.clone();
    let mut writer = SegmentWriter::create(&fs, dir.path(), 9, Compression::Lz4).unwrap();
    let frame = |fill: u8, len: usize| crate::segment::format::frame_of(&vec![fill; len - FRAME_OVERHEAD], 1).unwrap();
    // Bytes that do not compress, so the block is stored and large.
    let noise: Vec<u8> = (0..1000u32).flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()).collect();
    let small = crate::segment::format::frame_of(&noise, 0).unwrap();
    writer.append(&small).unwrap();
    io.limit_space(Some(100));
    assert!(writer.flush().is_err(), "the disk fills in the middle of the block");
    io.limit_space(None);
    writer.append(&frame(7, WRITE_BUFFER_BYTES)).unwrap();
    let meta = writer.seal().map_err(|failed| failed.1).unwrap();
    let mut cursor = SegmentCursor::open_sealed(&fs, &segment_path(dir.path(), 9), 9, meta.bytes).unwrap();
    let mut lens = Vec::new();
    while let Peek::Record { payload, .. } = cursor.peek().unwrap() {
        lens.push(payload.len());
        cursor.commit();
    }
    assert_eq!(lens, [noise.len(), WRITE_BUFFER_BYTES - FRAME_OVERHEAD]);
    assert_eq!(cursor.peek().unwrap(), Peek::Exhausted);
}

#[cfg(feature = "lz4")]
#[test]
fn growth_counts_a_new_block_whenever_a_frame_starts_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SegmentWriter::create(&os(), dir.path(), 1, Compression::Lz4).unwrap();
    assert_eq!(writer.growth(100), 100 + BLOCK_OVERHEAD, "the first frame starts a block");
    writer.append(&[1; 100]).unwrap();
    assert_eq!(writer.growth(100), 100, "the next joins it");
    assert_eq!(writer.growth(WRITE_BUFFER_BYTES - 50), WRITE_BUFFER_BYTES as u64 - 50 + BLOCK_OVERHEAD);
    let before = writer.len();
    writer.append(&[2; WRITE_BUFFER_BYTES - 50]).unwrap();
    assert!(writer.len() <= before + WRITE_BUFFER_BYTES as u64 - 50 + BLOCK_OVERHEAD);
}

#[test]
fn creating_over_an_existing_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(segment_path(dir.path(), 5), b"not ours").unwrap();
    assert!(SegmentWriter::create(&os(), dir.path(), 5, Compression::None).is_err());
    assert_eq!(std::fs::read(segment_path(dir.path(), 5)).unwrap(), b"not ours");
}
