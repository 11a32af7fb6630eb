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

/// The segment format version this build writes and reads.
pub(crate) const VERSION: u16 = 1;

/// Length of [`SegmentHeader`] in bytes.
pub(crate) const HEADER_LEN: usize = 16;

/// Length of a record frame's fixed part (`len` and `crc32c`), in bytes.
pub(crate) const FRAME_HEADER_LEN: usize = 8;

/// Highest codec number a header may carry.
const MAX_CODEC: u16 = 2;

/// Writes the 16-byte segment header for the current format version and
/// codec `codec` (see [`super::block::codec_id`]).
pub(crate) fn encode_header(codec: u16) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..10].copy_from_slice(&VERSION.to_le_bytes());
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

/// Checks a segment header: magic first, then checksum, then version.
/// Returns the segment's codec.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<u16, HeaderError> {
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
    if version != VERSION || codec > MAX_CODEC {
        return Err(HeaderError::Unsupported { version, codec });
    }
    Ok(codec)
}

/// Turns an already-encoded payload, placed at `frame[FRAME_HEADER_LEN..]`,
/// into a complete frame by filling in its length and CRC.
///
/// Returns `None` when the payload is longer than a `u32` can describe.
pub(crate) fn seal_frame(frame: &mut [u8]) -> Option<()> {
    let payload_len = frame.len().checked_sub(FRAME_HEADER_LEN)?;
    let len = u32::try_from(payload_len).ok()?.to_le_bytes();
    frame[0..4].copy_from_slice(&len);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), &frame[FRAME_HEADER_LEN..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    Some(())
}

/// What [`read_frame`] found at an offset.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A whole record whose CRC matches; `next` is the offset after it.
    Record { payload: &'a [u8], next: usize },
    /// The frame does not fit below the limit: either it is still being
    /// written or the segment ends in a torn record.
    Incomplete,
    /// The frame's CRC does not match. Its length cannot be trusted, so
    /// nothing after it in this segment can be located.
    Corrupt,
}

/// Reads the frame that starts at `pos`, looking at nothing at or past
/// `limit`. Never allocates and never panics, whatever the bytes.
pub(crate) fn read_frame(bytes: &[u8], pos: usize, limit: usize) -> Frame<'_> {
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
    let Some(end) = header_end.checked_add(len) else {
        return Frame::Corrupt;
    };
    if end > limit {
        return Frame::Incomplete;
    }
    let payload = &bytes[header_end..end];
    if crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload) != stored {
        return Frame::Corrupt;
    }
    Frame::Record { payload, next: end }
}

/// Finds the first offset at or after `from` where a whole frame with a
/// matching CRC starts, below `limit`: where reading can resume after a
/// damaged stretch. Never allocates; the cost is bounded by the bytes
/// between `from` and `limit` times the lengths the candidates claim.
pub(crate) fn find_frame(bytes: &[u8], from: usize, limit: usize) -> Option<usize> {
    let limit = limit.min(bytes.len());
    (from..limit.saturating_sub(FRAME_HEADER_LEN - 1))
        .find(|&pos| matches!(read_frame(bytes, pos, limit), Frame::Record { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; FRAME_HEADER_LEN];
        frame.extend_from_slice(payload);
        seal_frame(&mut frame).expect("payload fits in u32");
        frame
    }

    /// The CRCs below were computed independently of this crate with a
    /// bitwise CRC32C (polynomial 0x82F63B78, check value 0xE3069283).
    #[test]
    fn segment_bytes_are_pinned() {
        let mut segment = encode_header(0).to_vec();
        segment.extend(frame_of(b"hi"));
        segment.extend(frame_of(b""));
        let expected: Vec<u8> = vec![
            b'S', b'U', b'M', b'P', b'S', b'E', b'G', 0, // magic
            1, 0, // version 1
            0, 0, // codec: plain records
            0xd7, 0xd6, 0x65, 0x7a, // header crc32c
            2, 0, 0, 0, // len 2
            0x59, 0x72, 0x5a, 0x88, // crc32c(len ++ "hi")
            b'h', b'i', // payload
            0, 0, 0, 0, // len 0
            0xc7, 0x4b, 0x67, 0x48, // crc32c(len)
        ];
        assert_eq!(segment, expected, "got {segment:02x?}");
    }

    #[test]
    fn header_round_trips_and_rejects_each_kind_of_damage() {
        let header = encode_header(0);
        assert_eq!(decode_header(&header), Ok(0));
        assert_eq!(decode_header(&encode_header(2)), Ok(2));
        assert_eq!(decode_header(&header[..10]), Err(HeaderError::Short));
        let mut bad = header;
        bad[0] = b's';
        assert_eq!(decode_header(&bad), Err(HeaderError::BadMagic));
        let mut bad = header;
        bad[13] ^= 1;
        assert_eq!(decode_header(&bad), Err(HeaderError::BadChecksum));
        let mut bad = header;
        bad[8] = 2;
        let crc = crc32c::crc32c(&bad[0..12]);
        bad[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&bad), Err(HeaderError::Unsupported { version: 2, codec: 0 }));
    }

    #[test]
    fn frame_reader_tells_records_torn_tails_and_flipped_bits_apart() {
        let frame = frame_of(b"payload");
        assert_eq!(read_frame(&frame, 0, frame.len()), Frame::Record { payload: b"payload", next: frame.len() });
        for cut in 0..frame.len() {
            assert_eq!(read_frame(&frame, 0, cut), Frame::Incomplete, "cut at {cut}");
        }
        for bit in 0..frame.len() * 8 {
            let mut flipped = frame.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let found = read_frame(&flipped, 0, flipped.len());
            assert!(matches!(found, Frame::Corrupt | Frame::Incomplete), "bit {bit} flipped was read as {found:?}");
        }
    }

    #[test]
    fn reading_resumes_at_the_next_whole_frame_after_damage() {
        let mut bytes = frame_of(b"first");
        let second = bytes.len();
        bytes.extend(frame_of(b"second"));
        let third = bytes.len();
        bytes.extend(frame_of(b"third"));
        assert_eq!(find_frame(&bytes, 0, bytes.len()), Some(0));
        bytes[second + 10] ^= 0xff; // damage the second payload
        assert_eq!(read_frame(&bytes, second, bytes.len()), Frame::Corrupt);
        assert_eq!(find_frame(&bytes, second, bytes.len()), Some(third));
        assert_eq!(find_frame(&bytes, third + 1, bytes.len()), None);
        assert_eq!(find_frame(&[0u8; 64], 0, 64), None, "zeros are not frames");
    }

    #[test]
    fn a_huge_length_field_is_never_trusted() {
        let mut frame = frame_of(b"x");
        frame[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read_frame(&frame, 0, frame.len()), Frame::Incomplete);
        assert_eq!(read_frame(&frame, usize::MAX - 3, usize::MAX), Frame::Incomplete);
    }
}
