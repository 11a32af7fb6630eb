//! The read-progress file: where the receiver stopped reading, so that a
//! clean restart does not deliver received items again.
//!
//! `dir/name/progress` is written at a clean shutdown (and replaced
//! atomically, through a temporary file and a rename). It names the
//! segment the receiver was reading and the offset of the next record (in
//! a compressed segment: of the block holding it, and how many of that
//! block's records were read); every segment with a lower id was read
//! completely.
//!
//! ```text
//! ProgressFile (32 bytes)
//!   offset  size  field
//!   0       8     magic     b"SUMPPROG"
//!   8       2     version   u16, 1
//!   10      2     skip      u16, records of the block at `offset` already read (compressed segments; else 0)
//!   12      8     segment   u64, id of the segment being read
//!   20      8     offset    u64, offset of the next record in it
//!   28      4     crc32c    CRC32C of bytes 0..28
//! ```
//!
//! A missing file means nothing was read from the remaining segments; a
//! damaged one is ignored with a warning, which can only deliver items
//! again, never lose them.

use std::io::{self, Write};
use std::path::Path;

/// Name of the progress file in a channel's directory.
pub(crate) const PROGRESS_FILE: &str = "progress";

/// Name of the file a new progress record is written to before the rename.
const PROGRESS_TEMP: &str = "progress.tmp";

const MAGIC: [u8; 8] = *b"SUMPPROG";
const VERSION: u16 = 1;
const LEN: usize = 32;

/// Where reading resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The segment being read.
    pub(crate) segment: u64,
    /// Offset of its next unread record, or of the block holding it.
    pub(crate) offset: u64,
    /// Records of the block at `offset` already read; 0 in a segment
    /// without compression.
    pub(crate) skip: u16,
}

fn encode(progress: Progress) -> [u8; LEN] {
    let mut bytes = [0u8; LEN];
    bytes[0..8].copy_from_slice(&MAGIC);
    bytes[8..10].copy_from_slice(&VERSION.to_le_bytes());
    bytes[10..12].copy_from_slice(&progress.skip.to_le_bytes());
    bytes[12..20].copy_from_slice(&progress.segment.to_le_bytes());
    bytes[20..28].copy_from_slice(&progress.offset.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode(bytes: &[u8]) -> Option<Progress> {
    let bytes: &[u8; LEN] = bytes.try_into().ok()?;
    let crc = u32::from_le_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]);
    if bytes[0..8] != MAGIC || crc32c::crc32c(&bytes[0..28]) != crc || bytes[8..10] != [1, 0] {
        return None;
    }
    let word = |at: usize| {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(eight)
    };
    Some(Progress { segment: word(12), offset: word(20), skip: u16::from_le_bytes([bytes[10], bytes[11]]) })
}

/// Reads the progress file in `dir`. `None` when there is none, or it is
/// damaged (logged).
pub(crate) fn read(dir: &Path) -> Option<Progress> {
    let path = dir.join(PROGRESS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let progress = decode(&bytes);
            if progress.is_none() {
                tracing::warn!(path = %path.display(), "progress file is damaged; reading from the oldest segment");
            }
            progress
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot read the progress file");
            None
        }
    }
}

/// Records `progress` in `dir` (or removes the record when `None`),
/// atomically; with `sync`, durably.
pub(crate) fn write(dir: &Path, progress: Option<Progress>, sync: bool) -> io::Result<()> {
    let path = dir.join(PROGRESS_FILE);
    let Some(progress) = progress else {
        return match std::fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        };
    };
    let temp = dir.join(PROGRESS_TEMP);
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(&encode(progress))?;
    if sync {
        file.sync_data()?;
    }
    std::fs::rename(&temp, &path)?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes the directory's entries (created, renamed, deleted files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bytes_are_pinned_and_round_trip() {
        let progress = Progress { segment: 0x0102, offset: 16, skip: 0 };
        let bytes = encode(progress);
        assert_eq!(&bytes[0..12], b"SUMPPROG\x01\x00\x00\x00");
        let inside = Progress { skip: 0x0304, ..progress };
        assert_eq!(&encode(inside)[10..12], &[4, 3]);
        assert_eq!(decode(&encode(inside)), Some(inside));
        assert_eq!(&bytes[12..28], &[2, 1, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode(&bytes), Some(progress));
        for at in 0..LEN {
            let mut damaged = bytes;
            damaged[at] ^= 0x10;
            assert_eq!(decode(&damaged), None, "byte {at}");
        }
        assert_eq!(decode(&bytes[..31]), None);
    }

    #[test]
    fn progress_is_replaced_and_removed_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), None);
        write(dir.path(), Some(Progress { segment: 3, offset: 40, skip: 0 }), true).unwrap();
        write(dir.path(), Some(Progress { segment: 4, offset: 16, skip: 2 }), false).unwrap();
        assert_eq!(read(dir.path()), Some(Progress { segment: 4, offset: 16, skip: 2 }));
        write(dir.path(), None, false).unwrap();
        assert_eq!(read(dir.path()), None);
        std::fs::write(dir.path().join(PROGRESS_FILE), b"garbage").unwrap();
        assert_eq!(read(dir.path()), None);
    }
}
