use super::*;
use crate::segment::{segment_path, SegmentWriter};

fn frame(payload: &[u8]) -> Vec<u8> {
    crate::segment::format::frame_of(payload, payload.len() as u64).unwrap()
}

fn read_all(cursor: &mut SegmentCursor) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Peek::Record { payload, .. } = cursor.peek().unwrap() {
        out.push(payload.to_vec());
        cursor.commit();
    }
    out
}

#[test]
fn active_cursor_sees_only_flushed_records_and_follows_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SegmentWriter::create(&crate::storage::os(), dir.path(), 1, crate::Compression::None).unwrap();
    writer.append(&frame(b"one")).unwrap();
    let mut cursor = SegmentCursor::open_active(&crate::storage::os(), writer.path(), 1, writer.flushed()).unwrap();
    assert_eq!(cursor.peek().unwrap(), Peek::Exhausted);
    writer.flush().unwrap();
    cursor.set_limit(writer.flushed(), false, true);
    writer.append(&frame(b"two")).unwrap();
    assert_eq!(read_all(&mut cursor), vec![b"one".to_vec()]);
    writer.flush().unwrap();
    cursor.set_limit(writer.flushed(), false, true);
    assert_eq!(read_all(&mut cursor), vec![b"two".to_vec()]);
    assert_eq!(cursor.records_read(), 2);
    assert!(cursor.at_limit());
}

#[test]
fn sealed_cursor_reads_every_record_and_reports_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SegmentWriter::create(&crate::storage::os(), dir.path(), 2, crate::Compression::None).unwrap();
    for payload in [&b"a"[..], b"bb", b"ccc"] {
        writer.append(&frame(payload)).unwrap();
    }
    let meta = writer.seal().map_err(|failed| failed.1).unwrap();
    let path = segment_path(dir.path(), 2);
    let mut cursor = SegmentCursor::open_sealed(&crate::storage::os(), &path, 2, meta.bytes).unwrap();
    assert_eq!(read_all(&mut cursor), vec![b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()]);
    assert_eq!(cursor.peek().unwrap(), Peek::Exhausted);

    let mut torn = SegmentCursor::open_sealed(&crate::storage::os(), &path, 2, meta.bytes - 1).unwrap();
    assert_eq!(read_all(&mut torn).len(), 2);
    assert!(matches!(torn.peek().unwrap(), Peek::Damaged { resume: None, .. }));
}

/// Found in review: stored blocks hold whole record frames, and the
/// search for the next intact frame after a torn block found them,
/// so a torn tail was read as damage followed by records.
#[cfg(feature = "lz4")]
#[test]
fn a_torn_compressed_block_is_a_torn_tail_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SegmentWriter::create(&crate::storage::os(), dir.path(), 4, crate::Compression::Lz4).unwrap();
    let noise = |seed: u32| -> Vec<u8> {
        (0..50u32).flat_map(|i| (i ^ seed).wrapping_mul(2_654_435_761).to_le_bytes()).collect()
    };
    for block in 0..3u32 {
        for record in 0..5 {
            writer.append(&frame(&noise(block * 10 + record))).unwrap();
        }
        writer.flush().unwrap();
    }
    let meta = writer.seal().map_err(|failed| failed.1).unwrap();
    let path = segment_path(dir.path(), 4);
    let mut whole = SegmentCursor::open_sealed(&crate::storage::os(), &path, 4, meta.bytes).unwrap();
    assert_eq!(read_all(&mut whole).len(), 15);
    // Cut the last block short, after its third record.
    let torn_len = meta.bytes - 2 * (crate::segment::format::FRAME_OVERHEAD as u64 + 200) - 10;
    let mut torn = SegmentCursor::open_sealed(&crate::storage::os(), &path, 4, torn_len).unwrap();
    assert_eq!(read_all(&mut torn).len(), 10, "the two whole blocks");
    assert!(matches!(torn.peek().unwrap(), Peek::Damaged { resume: None, .. }), "nothing after the tear");
}

#[test]
fn a_bad_header_or_a_flipped_byte_is_reported_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SegmentWriter::create(&crate::storage::os(), dir.path(), 3, crate::Compression::None).unwrap();
    writer.append(&frame(b"payload")).unwrap();
    let meta = writer.seal().map_err(|failed| failed.1).unwrap();
    let path = segment_path(dir.path(), 3);
    let clean = std::fs::read(&path).unwrap();
    for (offset, what) in [(0, "header"), (HEADER_LEN + 9, "payload")] {
        let mut bytes = clean.clone();
        bytes[offset] ^= 0x40;
        let damaged = dir.path().join(format!("damaged-{what}"));
        std::fs::write(&damaged, &bytes).unwrap();
        let mut cursor = SegmentCursor::open_sealed(&crate::storage::os(), &damaged, 3, meta.bytes).unwrap();
        assert!(matches!(cursor.peek().unwrap(), Peek::Damaged { resume: None, .. }), "{what}");
    }
}

#[test]
fn records_carry_their_sequence_numbers_and_version_1_records_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SegmentWriter::create(&crate::storage::os(), dir.path(), 5, crate::Compression::None).unwrap();
    for seq in [3u64, 9, 10] {
        writer.append(&crate::segment::format::frame_of(b"x", seq).unwrap()).unwrap();
    }
    let meta = writer.seal().map_err(|failed| failed.1).unwrap();
    let path = segment_path(dir.path(), 5);
    let mut cursor = SegmentCursor::open_sealed(&crate::storage::os(), &path, 5, meta.bytes).unwrap();
    let mut seqs = Vec::new();
    while let Peek::Record { seq, .. } = cursor.peek().unwrap() {
        seqs.push(seq);
        cursor.commit();
    }
    assert_eq!(seqs, [Some(3), Some(9), Some(10)]);

    // A segment written by format version 1: no sequence numbers.
    let mut old = crate::segment::format::encode_header(0).to_vec();
    old[8] = 1;
    let crc = crc32c::crc32c(&old[0..12]);
    old[12..16].copy_from_slice(&crc.to_le_bytes());
    for payload in [&b"old"[..], b"er"] {
        old.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&(payload.len() as u32).to_le_bytes()), payload);
        old.extend_from_slice(&crc.to_le_bytes());
        old.extend_from_slice(payload);
    }
    let path = segment_path(dir.path(), 6);
    std::fs::write(&path, &old).unwrap();
    let mut cursor = SegmentCursor::open_sealed(&crate::storage::os(), &path, 6, old.len() as u64).unwrap();
    let mut found = Vec::new();
    while let Peek::Record { payload, seq } = cursor.peek().unwrap() {
        found.push((payload.to_vec(), seq));
        cursor.commit();
    }
    assert_eq!(found, [(b"old".to_vec(), None), (b"er".to_vec(), None)]);
    assert_eq!(cursor.peek().unwrap(), Peek::Exhausted);
}
