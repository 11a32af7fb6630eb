//! Compressed blocks: how a compressed segment packs many records into one
//! frame.
//!
//! In a segment whose header names a codec, every frame is a block: a
//! 9-byte block header (method, record count, uncompressed length) and the
//! block's data. The byte layout is in `FORMAT.md` ("Compressed block"),
//! pinned by `tests::block_bytes_are_pinned`.
//!
//! Uncompressed, the data is ordinary record frames back to back, each
//! with its own length and CRC32C. The block's frame CRC covers the
//! compressed bytes, so damage is caught before anything is decompressed;
//! a block whose CRC fails is skipped like any damaged record. A block the
//! codec did not shrink is stored as is (method 0), so a block is never
//! more than [`BLOCK_OVERHEAD`] bytes larger than its records.

use std::io;

use super::format::{
    read_frame, seal_frame, seal_v1_frame, stamp_frame, trailer_len, Frame, FRAME_HEADER_LEN, FRAME_OVERHEAD, VERSION,
};
use crate::options::Compression;

/// Length of the block header inside a block frame's payload.
pub(crate) const BLOCK_HEADER_LEN: usize = 9;

/// Bytes a block adds to the records it holds, at most: its frame header
/// and its block header.
pub(crate) const BLOCK_OVERHEAD: u64 = (FRAME_OVERHEAD + BLOCK_HEADER_LEN) as u64;

/// Most records in one block, so that a read position inside a block fits
/// in the progress file.
pub(crate) const MAX_BLOCK_RECORDS: u32 = u16::MAX as u32;

/// Most uncompressed bytes a compressed (not stored) block may claim: what
/// the writer ever packs at once. Bounds what a forged block can make the
/// reader allocate.
pub(crate) const MAX_PACKED_RAW: usize = 1 << 20;

/// Method byte of a block stored without compression.
const STORED: u8 = 0;
/// Method byte of an LZ4 block.
const LZ4: u8 = 1;
/// Method byte of a Zstandard block.
const ZSTD: u8 = 2;

/// The codec number a segment header records for `compression`.
pub(crate) fn codec_id(compression: Compression) -> u16 {
    match compression {
        Compression::None => 0,
        Compression::Lz4 => u16::from(LZ4),
        Compression::Zstd { .. } => u16::from(ZSTD),
    }
}

/// Whether this build can read segments written with codec `id`; `Err`
/// names the feature it would need.
pub(crate) fn codec_readable(id: u16) -> Result<(), &'static str> {
    match id {
        0 => Ok(()),
        1 if cfg!(feature = "lz4") => Ok(()),
        1 => Err("lz4"),
        2 if cfg!(feature = "zstd") => Ok(()),
        2 => Err("zstd"),
        _ => Err("an unknown codec"),
    }
}

/// Compresses blocks for one writer, reusing its scratch space.
#[derive(Debug)]
pub(crate) struct Packer {
    /// The codec.
    compression: Compression,
    /// Scratch space for compressed bytes.
    scratch: Vec<u8>,
}

impl Packer {
    pub(crate) fn new(compression: Compression) -> Packer {
        Packer { compression, scratch: Vec::new() }
    }

    /// Appends to `out` one block frame holding `records` record frames,
    /// `raw`: compressed when that makes it smaller, stored otherwise. The
    /// block frame's sequence number is that of its first record.
    pub(crate) fn pack(&mut self, raw: &[u8], records: u32, out: &mut Vec<u8>) -> io::Result<()> {
        self.pack_as(raw, records, out, VERSION)
    }

    /// [`pack`](Self::pack) for a segment of format `version`, whose
    /// record frames `raw` holds: a recovery that rewrites an older
    /// segment keeps its version.
    pub(crate) fn pack_as(&mut self, raw: &[u8], records: u32, out: &mut Vec<u8>, version: u16) -> io::Result<()> {
        let first_seq = match read_frame(raw, 0, raw.len(), version) {
            Frame::Record { seq, .. } => seq.unwrap_or(0),
            Frame::Incomplete | Frame::Corrupt => 0,
        };
        let raw_len = u32::try_from(raw.len()).map_err(|_| io::Error::other("block larger than 4 GiB"))?;
        let (method, data): (u8, &[u8]) = match self.compress(raw) {
            Some(len) if len < raw.len() => (codec_id(self.compression) as u8, &self.scratch[..len]),
            _ => (STORED, raw),
        };
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        out.push(method);
        out.extend_from_slice(&records.to_le_bytes());
        out.extend_from_slice(&raw_len.to_le_bytes());
        out.extend_from_slice(data);
        out.resize(out.len() + trailer_len(version), 0);
        let sealed = if version >= 2 { seal_frame(&mut out[start..]) } else { seal_v1_frame(&mut out[start..]) };
        match sealed {
            Some(()) => {
                if version >= 2 {
                    stamp_frame(&mut out[start..], first_seq);
                }
                Ok(())
            }
            None => {
                out.truncate(start);
                Err(io::Error::other("block larger than 4 GiB"))
            }
        }
    }

    /// Compresses `raw` into the scratch space; the compressed length, or
    /// `None` when the codec cannot do it here.
    fn compress(&mut self, raw: &[u8]) -> Option<usize> {
        if raw.len() > MAX_PACKED_RAW {
            return None;
        }
        match self.compression {
            Compression::None => None,
            #[cfg(feature = "lz4")]
            Compression::Lz4 => {
                self.scratch.resize(lz4_flex::block::get_maximum_output_size(raw.len()), 0);
                lz4_flex::block::compress_into(raw, &mut self.scratch).ok()
            }
            #[cfg(feature = "zstd")]
            Compression::Zstd { level } => {
                self.scratch.resize(raw.len(), 0);
                zstd::bulk::compress_to_buffer(raw, &mut self.scratch, level).ok()
            }
            #[cfg(not(all(feature = "lz4", feature = "zstd")))]
            _ => None,
        }
    }
}

/// Unpacks the payload of a block frame of segment format `version` into
/// `into` (cleared first): the record frames it holds, each checked.
/// Returns how many there are, or what is wrong with the block.
pub(crate) fn unpack(payload: &[u8], into: &mut Vec<u8>, version: u16) -> Result<u32, String> {
    into.clear();
    let header = payload.get(..BLOCK_HEADER_LEN).ok_or("block shorter than its header")?;
    let method = header[0];
    let records = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let raw_len = u32::from_le_bytes([header[5], header[6], header[7], header[8]]) as usize;
    let data = &payload[BLOCK_HEADER_LEN..];
    if method == STORED {
        if data.len() != raw_len {
            return Err(format!("stored block claims {raw_len} bytes but holds {}", data.len()));
        }
        into.extend_from_slice(data);
    } else {
        if raw_len > MAX_PACKED_RAW {
            return Err(format!("compressed block claims {raw_len} bytes, more than a block ever holds"));
        }
        into.resize(raw_len, 0);
        let out = decompress(method, data, into)?;
        if out != raw_len {
            return Err(format!("block decompresses to {out} bytes, not the {raw_len} it claims"));
        }
    }
    let mut pos = 0;
    let mut found = 0u32;
    while pos < into.len() {
        match read_frame(into, pos, into.len(), version) {
            Frame::Record { next, .. } => {
                pos = next;
                found += 1;
            }
            Frame::Incomplete | Frame::Corrupt => return Err(format!("record {found} inside the block is damaged")),
        }
    }
    if found != records {
        return Err(format!("block claims {records} records but holds {found}"));
    }
    Ok(records)
}

/// Decompresses `data` with `method` into `out`; the bytes written.
fn decompress(method: u8, data: &[u8], out: &mut [u8]) -> Result<usize, String> {
    #[cfg(not(any(feature = "lz4", feature = "zstd")))]
    let _ = (data, &out);
    match method {
        #[cfg(feature = "lz4")]
        LZ4 => {
            lz4_flex::block::decompress_into(data, out).map_err(|err| format!("LZ4 block does not decompress: {err}"))
        }
        #[cfg(feature = "zstd")]
        ZSTD => zstd::bulk::decompress_to_buffer(data, out)
            .map_err(|err| format!("Zstandard block does not decompress: {err}")),
        other if other == LZ4 || other == ZSTD => {
            Err(format!("block uses codec {other}, which this build of sump does not include"))
        }
        other => Err(format!("block uses unknown method {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bitwise CRC32C, independent of the `crc32c` crate the code uses.
    fn bitwise_crc32c(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn block_bytes_are_pinned() {
        assert_eq!(bitwise_crc32c(b"123456789"), 0xE306_9283, "the CRC32C check value");
        let mut record = vec![2, 0, 0, 0];
        record.extend_from_slice(&bitwise_crc32c(&[2, 0, 0, 0, b'h', b'i', 5, 0, 0, 0, 0, 0, 0, 0]).to_le_bytes());
        record.extend_from_slice(b"hi");
        record.extend_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0]); // seq 5
        let mut block = Vec::new();
        Packer::new(Compression::None).pack(&record, 1, &mut block).unwrap();
        let mut payload = vec![0]; // method: stored
        payload.extend_from_slice(&[1, 0, 0, 0]); // records
        payload.extend_from_slice(&[18, 0, 0, 0]); // raw_len
        payload.extend_from_slice(&record);
        let seq = [5, 0, 0, 0, 0, 0, 0, 0]; // the block's seq: its first record's
        let mut expected = vec![27, 0, 0, 0]; // the block frame's len
        let mut covered = expected.clone();
        covered.extend_from_slice(&payload);
        covered.extend_from_slice(&seq);
        expected.extend_from_slice(&bitwise_crc32c(&covered).to_le_bytes());
        expected.extend_from_slice(&payload);
        expected.extend_from_slice(&seq);
        assert_eq!(block, expected, "got {block:02x?}");
    }

    fn frames(count: usize) -> Vec<u8> {
        let mut raw = Vec::new();
        for i in 0..count {
            let payload = format!("record number {i} of a very repetitive block");
            raw.extend(super::super::format::frame_of(payload.as_bytes(), i as u64).unwrap());
        }
        raw
    }

    fn codecs() -> Vec<Compression> {
        let mut codecs = vec![Compression::None];
        if cfg!(feature = "lz4") {
            codecs.push(Compression::Lz4);
        }
        if cfg!(feature = "zstd") {
            codecs.push(Compression::Zstd { level: 3 });
        }
        codecs
    }

    #[test]
    fn blocks_round_trip_and_shrink_when_the_codec_helps() {
        let raw = frames(200);
        for compression in codecs() {
            let mut out = Vec::new();
            Packer::new(compression).pack(&raw, 200, &mut out).unwrap();
            let Frame::Record { payload, seq, next } = read_frame(&out, 0, out.len(), VERSION) else {
                panic!("not a frame")
            };
            assert_eq!((next, seq), (out.len(), Some(0)));
            if compression == Compression::None {
                assert_eq!(out.len() as u64, raw.len() as u64 + BLOCK_OVERHEAD, "stored");
            } else {
                assert!(out.len() < raw.len() / 2, "{compression:?}: {} of {}", out.len(), raw.len());
            }
            let mut back = Vec::new();
            assert_eq!(unpack(payload, &mut back, VERSION), Ok(200));
            assert_eq!(back, raw);
        }
    }

    #[test]
    fn damaged_or_lying_blocks_are_refused() {
        let raw = frames(3);
        let mut out = Vec::new();
        Packer::new(Compression::None).pack(&raw, 3, &mut out).unwrap();
        let payload = super::super::format::payload_of(&out).to_vec();
        let mut into = Vec::new();

        let mut lying = payload.clone();
        lying[1] = 4; // claims 4 records
        assert!(unpack(&lying, &mut into, VERSION).unwrap_err().contains("claims 4 records"));
        let mut bad_inner = payload.clone();
        bad_inner[BLOCK_HEADER_LEN + FRAME_HEADER_LEN] ^= 1;
        assert!(unpack(&bad_inner, &mut into, VERSION).unwrap_err().contains("damaged"));
        let mut huge = payload.clone();
        huge[0] = LZ4;
        huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(unpack(&huge, &mut into, VERSION).is_err());
        assert!(into.len() <= MAX_PACKED_RAW, "a forged length allocated {} bytes", into.len());
        assert!(unpack(&payload[..4], &mut into, VERSION).is_err());
        let mut unknown = payload;
        unknown[0] = 9;
        assert!(unpack(&unknown, &mut into, VERSION).unwrap_err().contains("unknown method"));
    }
}
