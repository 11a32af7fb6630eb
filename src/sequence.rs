//! The sequence file, `dir/name/sump.seq`: the lowest sequence number no
//! item of the channel can have been given, so that numbers never repeat
//! across restarts, even once every item that carried them is gone.
//!
//! Writing it for every item would cost a file write per send. Instead
//! the channel reserves numbers in blocks of [`RESERVE`]: the file says
//! where the block ends, and is rewritten only when the numbers given out
//! reach it. A restart starts at the recorded end (numbers of the block
//! not given out are skipped), or after the highest number found on a
//! record, whichever is higher.
//!
//! The byte layout is in `FORMAT.md` ("Sequence file"), pinned by
//! `tests::sequence_file_bytes_are_pinned`. A damaged or missing file
//! reads as "no numbers given out": the records on disk still bound the
//! numbers.

use std::io;
use std::path::Path;

use crate::storage::{replace_file, Storage};

/// Name of the sequence file in a channel's directory.
pub(crate) const SEQUENCE_FILE: &str = "sump.seq";

/// Numbers reserved at once.
pub(crate) const RESERVE: u64 = 1 << 20;

const MAGIC: [u8; 8] = *b"SUMPSEQ\0";
const VERSION: u16 = 1;
const LEN: usize = 24;

fn encode(next: u64) -> [u8; LEN] {
    let mut bytes = [0u8; LEN];
    bytes[0..8].copy_from_slice(&MAGIC);
    bytes[8..10].copy_from_slice(&VERSION.to_le_bytes());
    bytes[12..20].copy_from_slice(&next.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..20]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != LEN || bytes[0..8] != MAGIC || bytes[8..10] != VERSION.to_le_bytes() {
        return None;
    }
    if crc32c::crc32c(&bytes[0..20]).to_le_bytes() != bytes[20..24] {
        return None;
    }
    Some(u64::from_le_bytes(bytes[12..20].try_into().ok()?))
}

/// The recorded end of the reserved numbers; 0 when there is no file or
/// it is damaged (with a warning).
pub(crate) fn read(fs: &dyn Storage, dir: &Path) -> u64 {
    let path = dir.join(SEQUENCE_FILE);
    match fs.read_all(&path) {
        Ok(bytes) => decode(&bytes).unwrap_or_else(|| {
            tracing::warn!(path = %path.display(), "the sequence file is damaged; numbering goes on after the records on disk");
            0
        }),
        Err(err) => {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %err,
                    "cannot read the sequence file; numbering goes on after the records on disk");
            }
            0
        }
    }
}

/// Records that numbers below `end` may have been given out: written to
/// a temporary file and renamed over the old one, synced when `sync`.
pub(crate) fn write(fs: &dyn Storage, dir: &Path, end: u64, sync: bool) -> io::Result<()> {
    replace_file(fs, dir, SEQUENCE_FILE, "sump.seq.tmp", &encode(end), sync)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_file_bytes_are_pinned() {
        let bytes = encode(0x0102_0304_0506_0708);
        let mut expected = b"SUMPSEQ\0".to_vec();
        expected.extend_from_slice(&[1, 0, 0, 0]); // version 1, reserved
        expected.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]); // next
        expected.extend_from_slice(&crc32c::crc32c(&expected).to_le_bytes());
        assert_eq!(bytes.to_vec(), expected);
        assert_eq!(decode(&bytes), Some(0x0102_0304_0506_0708));
        for at in 0..LEN {
            let mut damaged = bytes;
            damaged[at] ^= 0x10;
            assert_eq!(decode(&damaged), None, "byte {at} flipped");
        }
        assert_eq!(decode(&bytes[..20]), None);
    }

    #[test]
    fn a_missing_or_damaged_file_reads_as_zero_and_a_written_one_back() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::storage::os();
        assert_eq!(read(&*fs, dir.path()), 0);
        write(&*fs, dir.path(), 77, true).unwrap();
        assert_eq!(read(&*fs, dir.path()), 77);
        std::fs::write(dir.path().join(SEQUENCE_FILE), b"garbage").unwrap();
        assert_eq!(read(&*fs, dir.path()), 0);
    }
}
