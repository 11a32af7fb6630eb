//! Arbitrary bytes as one or more segment files of a durable channel:
//! opening (recovery) and reading everything must never panic, hang or
//! allocate beyond a small multiple of the segment size (libFuzzer's
//! `-malloc_limit_mb` in `.ci/run` checks the last). Segments may be
//! plain or LZ4-compressed blocks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sump::{Builder, Durability};

/// Splits the input into segment files at each occurrence of this marker.
const SPLIT: &[u8] = b"\xffNEXT\xff";

/// A real segment header of format `version` (1 without sequence
/// numbers, 2 with) for `codec` (0 plain, 1 LZ4), so that inputs get past
/// it often.
fn header(version: u8, codec: u8) -> [u8; 16] {
    let mut header = [b'S', b'U', b'M', b'P', b'S', b'E', b'G', 0, version, 0, codec, 0, 0, 0, 0, 0];
    let crc = crc32c::crc32c(&header[..12]);
    header[12..].copy_from_slice(&crc.to_le_bytes());
    header
}

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let channel = dir.path().join("fuzz");
    if std::fs::create_dir_all(&channel).is_err() {
        return;
    }
    let mut rest = data;
    let mut id = 1u64 << 32;
    loop {
        let (chunk, next) = match rest.windows(SPLIT.len()).position(|w| w == SPLIT) {
            Some(at) => (&rest[..at], Some(&rest[at + SPLIT.len()..])),
            None => (rest, None),
        };
        // Chunks starting with 0x00 get a valid plain header of format 1
        // in front, with 0x01 an LZ4 one; 0x02 and 0x03 the same of
        // format 2.
        let bytes: Vec<u8> = match chunk.split_first() {
            Some((&kind @ 0..=3, body)) => header(1 + kind / 2, kind % 2).iter().chain(body).copied().collect(),
            _ => chunk.to_vec(),
        };
        let _ = std::fs::write(channel.join(format!("{id:020}.seg")), bytes);
        id += 1;
        match next {
            Some(next) if id < (1 << 32) + 8 => rest = next,
            _ => break,
        }
    }
    for durability in [Durability::Persistent, Durability::WriteAhead] {
        let opened = Builder::new("fuzz", dir.path()).durability(durability).segment_bytes(1 << 16).open::<String>();
        let Ok((tx, rx)) = opened else { continue };
        drop(tx);
        let mut received = 0usize;
        while let Ok(item) = rx.recv_timeout(std::time::Duration::from_secs(5)) {
            received += item.len().min(1);
        }
        let stats = rx.stats();
        assert_eq!(stats.on_disk, 0, "everything recovered is read or counted: {stats:?}");
        let _ = received;
        let _ = rx.close();
    }
});
