//! The byte layout of a segment file: its header and its record frames.
//!
//! This module is the only place that knows where a segment's bytes go.
//! Everything is little-endian and independent of the host and of any
//! library's memory layout; the format version in the header changes
//! whenever the layout does. The layout is in `FORMAT.md` ("Segment
//! header" and "Record frame"); `tests::segment_bytes_are_pinned` pins the
//! exact bytes.
//!
//! In a segment with a codec, each frame's payload is a block of records
//! (see [`super::block`]) rather than one record.
//!
//! Invariants: a record never spans two segments; the CRC covers the length
//! field, so a torn or flipped length is caught before it is trusted; a
//! reader never looks past the limit it is given, so a frame whose length
//! points past it is either still being written (active segment) or torn.

/// Bytes at the start of every segment file.
pub(crate) const MAGIC: [u8; 8] = *b"SUMPSEG\0";

/// The segment format version this build writes.
pub(crate) const VERSION: u16 = 2;

/// The oldest segment format version this build still reads: version 1,
/// whose frames carry no sequence number.
pub(crate) const OLDEST_VERSION: u16 = 1;

/// Length of [`SegmentHeader`] in bytes.
pub(crate) const HEADER_LEN: usize = 16;

/// Length of the fields in front of a record frame's payload (`len` and
/// `crc32c`), in bytes.
pub(crate) const FRAME_HEADER_LEN: usize = 8;

/// Length of the field after a record frame's payload (`seq`, the item's
/// sequence number), in bytes; version 1 frames have none.
pub(crate) const SEQ_LEN: usize = 8;

/// Bytes a frame of the current version adds to its payload.
pub(crate) const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + SEQ_LEN;

/// Bytes after the payload in a frame of segment format `version`.
pub(crate) fn trailer_len(version: u16) -> usize {
    if version >= 2 {
        SEQ_LEN
    } else {
        0
    }
}

/// Highest codec number a header may carry.
const MAX_CODEC: u16 = 2;

/// Writes the 16-byte segment header for the current format version and
/// codec `codec` (see [`super::block::codec_id`]).
pub(crate) fn encode_header(codec: u16) -> [u8; HEADER_LEN] {
    encode_header_as(SegmentHeader { version: VERSION, codec })
}

/// Writes the segment header `header`: a recovery that rewrites an older
/// segment keeps its version.
pub(crate) fn encode_header_as(header: SegmentHeader) -> [u8; HEADER_LEN] {
    let SegmentHeader { version, codec } = header;
    let mut header = [0u8; HEADER_LEN];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..10].copy_from_slice(&version.to_le_bytes());
    header[10..12].copy_from_slice(&codec.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..12]);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Why a segment header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes.
    Short,
    /// The first eight bytes are not [`MAGIC`]: not a segment file.
    BadMagic,
    /// The header CRC does not match its bytes.
    BadChecksum,
    /// A version or codec this build does not understand.
    Unsupported { version: u16, codec: u16 },
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Short => write!(f, "segment is shorter than its {HEADER_LEN}-byte header"),
            HeaderError::BadMagic => write!(f, "segment does not start with the sump magic number"),
            HeaderError::BadChecksum => write!(f, "segment header fails its CRC32C"),
            HeaderError::Unsupported { version, codec } => {
                write!(f, "segment format version {version} with codec {codec} is not supported")
            }
        }
    }
}

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// The format version the segment was written in.
    pub(crate) version: u16,
    /// How its frames are packed (see [`super::block::codec_id`]).
    pub(crate) codec: u16,
}

/// Checks a segment header: magic first, then checksum, then version.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
    let header = bytes.get(..HEADER_LEN).ok_or(HeaderError::Short)?;
    if header[0..8] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let stored = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    if crc32c::crc32c(&header[0..12]) != stored {
        return Err(HeaderError::BadChecksum);
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    let codec = u16::from_le_bytes([header[10], header[11]]);
    if !(OLDEST_VERSION..=VERSION).contains(&version) || codec > MAX_CODEC {
        return Err(HeaderError::Unsupported { version, codec });
    }
    Ok(SegmentHeader { version, codec })
}

/// Turns an already-encoded payload, placed at `frame[FRAME_HEADER_LEN..]`
/// and followed by [`SEQ_LEN`] bytes for the sequence number, into a frame
/// that only lacks its sequence number: its length is filled in, and its
/// CRC field holds the CRC of the length and the payload, which
/// [`stamp_frame`] completes. Encoding is done outside the channel lock;
/// the number is known only under it, and stamping costs eight bytes of
/// CRC there.
///
/// Returns `None` when the payload is longer than a `u32` can describe.
pub(crate) fn seal_frame(frame: &mut [u8]) -> Option<()> {
    let payload_len = frame.len().checked_sub(FRAME_OVERHEAD)?;
    seal_payload(frame, payload_len)
}

/// Fills in the length of the payload of `payload_len` bytes at
/// `frame[FRAME_HEADER_LEN..]`, and puts the CRC of the length and the
/// payload in the CRC field. The length is first written into the CRC
/// field, right before the payload, so that one CRC call covers both (the
/// call's set-up, not the bytes, is most of its cost for small records).
fn seal_payload(frame: &mut [u8], payload_len: usize) -> Option<()> {
    let len = u32::try_from(payload_len).ok()?.to_le_bytes();
    frame[0..4].copy_from_slice(&len);
    frame[4..8].copy_from_slice(&len);
    let crc = crc32c::crc32c(&frame[4..FRAME_HEADER_LEN + payload_len]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    Some(())
}

/// Fills in the length and CRC of a version 1 frame, which has no
/// sequence number: only a recovery rewriting a version 1 segment makes one.
pub(crate) fn seal_v1_frame(frame: &mut [u8]) -> Option<()> {
    let payload_len = frame.len().checked_sub(FRAME_HEADER_LEN)?;
    seal_payload(frame, payload_len)
}

/// Gives a frame made by [`seal_frame`] its sequence number and completes
/// its CRC. Called once per frame.
pub(crate) fn stamp_frame(frame: &mut [u8], seq: u64) {
    let Some(at) = frame.len().checked_sub(SEQ_LEN) else { return };
    if at < FRAME_HEADER_LEN {
        return;
    }
    let partial = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let seq = seq.to_le_bytes();
    frame[at..].copy_from_slice(&seq);
    frame[4..8].copy_from_slice(&crc32c::crc32c_append(partial, &seq).to_le_bytes());
}

/// The payload of a frame of the current version made by this crate
/// ([`seal_frame`] or [`frame_of`]), whose length is known to be right.
pub(crate) fn payload_of(frame: &[u8]) -> &[u8] {
    frame.get(FRAME_HEADER_LEN..frame.len().saturating_sub(SEQ_LEN)).unwrap_or(&[])
}

/// The sequence number of a frame of the current version made by this
/// crate: its last [`SEQ_LEN`] bytes.
pub(crate) fn seq_of(frame: &[u8]) -> Option<u64> {
    let at = frame.len().checked_sub(SEQ_LEN)?;
    let mut seq = [0u8; SEQ_LEN];
    seq.copy_from_slice(frame.get(at..)?);
    Some(u64::from_le_bytes(seq))
}

/// A whole frame for `payload` with sequence number `seq`.
pub(crate) fn frame_of(payload: &[u8], seq: u64) -> Option<Vec<u8>> {
    let mut frame = vec![0u8; FRAME_HEADER_LEN];
    frame.extend_from_slice(payload);
    frame.extend_from_slice(&[0; SEQ_LEN]);
    seal_frame(&mut frame)?;
    stamp_frame(&mut frame, seq);
    Some(frame)
}

/// What [`read_frame`] found at an offset.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A whole record whose CRC matches; `seq` is its sequence number
    /// (`None` in a version 1 segment) and `next` the offset after it.
    Record { payload: &'a [u8], seq: Option<u64>, next: usize },
    /// The frame does not fit below the limit: either it is still being
    /// written or the segment ends in a torn record.
    Incomplete,
    /// The frame's CRC does not match. Its length cannot be trusted, so
    /// nothing after it in this segment can be located.
    Corrupt,
}

/// Reads the frame of segment format `version` that starts at `pos`,
/// looking at nothing at or past `limit`. Never allocates and never
/// panics, whatever the bytes.
pub(crate) fn read_frame(bytes: &[u8], pos: usize, limit: usize, version: u16) -> Frame<'_> {
    let limit = limit.min(bytes.len());
    let Some(header_end) = pos.checked_add(FRAME_HEADER_LEN) else {
        return Frame::Incomplete;
    };
    if header_end > limit {
        return Frame::Incomplete;
    }
    let len_bytes = [bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]];
    let stored = u32::from_le_bytes([bytes[pos + 4], bytes[pos + 5], bytes[pos + 6], bytes[pos + 7]]);
    let len = u32::from_le_bytes(len_bytes) as usize;
    let Some(payload_end) = header_end.checked_add(len) else {
        return Frame::Corrupt;
    };
    let Some(end) = payload_end.checked_add(trailer_len(version)) else {
        return Frame::Corrupt;
    };
    if end > limit {
        return Frame::Incomplete;
    }
    let payload = &bytes[header_end..payload_end];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &bytes[header_end..end]);
    if crc != stored {
        return Frame::Corrupt;
    }
    let seq = (end > payload_end).then(|| {
        let mut seq = [0u8; SEQ_LEN];
        seq.copy_from_slice(&bytes[payload_end..end]);
        u64::from_le_bytes(seq)
    });
    Frame::Record { payload, seq, next: end }
}

/// Finds the first offset at or after `from` where a whole frame with a
/// matching CRC starts, below `limit`: where reading can resume after a
/// damaged stretch. Never allocates; the cost is bounded by the bytes
/// between `from` and `limit` times the lengths the candidates claim.
pub(crate) fn find_frame(bytes: &[u8], from: usize, limit: usize, version: u16) -> Option<usize> {
    let limit = limit.min(bytes.len());
    (from..limit.saturating_sub(FRAME_HEADER_LEN - 1))
        .find(|&pos| matches!(read_frame(bytes, pos, limit, version), Frame::Record { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8], seq: u64) -> Vec<u8> {
        frame_of(payload, seq).expect("payload fits in u32")
    }

    /// The CRCs below were computed independently of this crate with a
    /// bitwise CRC32C (polynomial 0x82F63B78, check value 0xE3069283).
    #[test]
    fn segment_bytes_are_pinned() {
        let mut segment = encode_header(0).to_vec();
        segment.extend(frame(b"hi", 7));
        segment.extend(frame(b"", 8));
        let expected: Vec<u8> = vec![
            b'S', b'U', b'M', b'P', b'S', b'E', b'G', 0, // magic
            2, 0, // version 2
            0, 0, // codec: plain records
            0xee, 0x5f, 0x47, 0x18, // header crc32c
            2, 0, 0, 0, // len 2
            0xc0, 0x26, 0xf6, 0x36, // crc32c(len ++ "hi" ++ seq)
            b'h', b'i', // payload
            7, 0, 0, 0, 0, 0, 0, 0, // seq 7
            0, 0, 0, 0, // len 0
            0x87, 0xb1, 0x5b, 0x69, // crc32c(len ++ seq)
            8, 0, 0, 0, 0, 0, 0, 0, // seq 8
        ];
        assert_eq!(segment, expected, "got {segment:02x?}");
    }

    /// A version 1 frame: no sequence number, the CRC over length and
    /// payload only.
    fn v1_frame(payload: &[u8]) -> Vec<u8> {
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&frame), payload);
        frame.extend_from_slice(&crc.to_le_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn version_1_frames_are_still_read_and_carry_no_number() {
        let old = v1_frame(b"hi");
        assert_eq!(old[4..8], [0x59, 0x72, 0x5a, 0x88], "crc32c(len ++ \"hi\"), as version 1 wrote it");
        assert_eq!(read_frame(&old, 0, old.len(), 1), Frame::Record { payload: b"hi", seq: None, next: old.len() });
        assert_eq!(read_frame(&old, 0, old.len(), 2), Frame::Incomplete, "too short for a version 2 frame");
        let new = frame(b"hi", 1);
        assert!(
            matches!(read_frame(&new, 0, new.len(), 1), Frame::Corrupt),
            "a version 2 frame is not a version 1 one"
        );
        let mut header = encode_header(1);
        header[8] = 1;
        let crc = crc32c::crc32c(&header[0..12]);
        header[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&header), Ok(SegmentHeader { version: 1, codec: 1 }));
    }

    #[test]
    fn header_round_trips_and_rejects_each_kind_of_damage() {
        let header = encode_header(0);
        assert_eq!(decode_header(&header), Ok(SegmentHeader { version: VERSION, codec: 0 }));
        assert_eq!(decode_header(&encode_header(2)), Ok(SegmentHeader { version: VERSION, codec: 2 }));
        assert_eq!(decode_header(&header[..10]), Err(HeaderError::Short));
        let mut bad = header;
        bad[0] = b's';
        assert_eq!(decode_header(&bad), Err(HeaderError::BadMagic));
        let mut bad = header;
        bad[13] ^= 1;
        assert_eq!(decode_header(&bad), Err(HeaderError::BadChecksum));
        let mut bad = header;
        bad[8] = 3;
        let crc = crc32c::crc32c(&bad[0..12]);
        bad[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&bad), Err(HeaderError::Unsupported { version: 3, codec: 0 }));
    }

    #[test]
    fn frame_reader_tells_records_torn_tails_and_flipped_bits_apart() {
        let frame = frame(b"payload", 42);
        assert_eq!(
            read_frame(&frame, 0, frame.len(), VERSION),
            Frame::Record { payload: b"payload", seq: Some(42), next: frame.len() }
        );
        for cut in 0..frame.len() {
            assert_eq!(read_frame(&frame, 0, cut, VERSION), Frame::Incomplete, "cut at {cut}");
        }
        for bit in 0..frame.len() * 8 {
            let mut flipped = frame.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let found = read_frame(&flipped, 0, flipped.len(), VERSION);
            assert!(matches!(found, Frame::Corrupt | Frame::Incomplete), "bit {bit} flipped was read as {found:?}");
        }
    }

    #[test]
    fn reading_resumes_at_the_next_whole_frame_after_damage() {
        let mut bytes = frame(b"first", 1);
        let second = bytes.len();
        bytes.extend(frame(b"second", 2));
        let third = bytes.len();
        bytes.extend(frame(b"third", 3));
        assert_eq!(find_frame(&bytes, 0, bytes.len(), VERSION), Some(0));
        bytes[second + 10] ^= 0xff; // damage the second payload
        assert_eq!(read_frame(&bytes, second, bytes.len(), VERSION), Frame::Corrupt);
        assert_eq!(find_frame(&bytes, second, bytes.len(), VERSION), Some(third));
        assert_eq!(find_frame(&bytes, third + 1, bytes.len(), VERSION), None);
        assert_eq!(find_frame(&[0u8; 64], 0, 64, VERSION), None, "zeros are not frames");
    }

    #[test]
    fn a_huge_length_field_is_never_trusted() {
        let mut frame = frame(b"x", 0);
        frame[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read_frame(&frame, 0, frame.len(), VERSION), Frame::Incomplete);
        assert_eq!(read_frame(&frame, usize::MAX - 3, usize::MAX, VERSION), Frame::Incomplete);
    }
}
