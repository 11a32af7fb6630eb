//! The read-progress file: where the receiver stopped reading, and which
//! fully read segments could not be deleted, so that a restart does not
//! deliver received items again.
//!
//! `dir/name/progress` is written at a clean shutdown, and whenever a read
//! segment cannot be deleted (replaced atomically, through a temporary
//! file and a rename). It may name the segment the receiver was reading and
//! the offset of the next record (in a compressed segment: of the block
//! holding it, and how many of that block's records were read), and it
//! lists segments that were read to the end but are still on disk because
//! deleting them failed: recovery deletes them (or, if that fails again,
//! skips them and lists them anew), and never delivers their records.
//!
//! The byte layout (version 2, and version 1, still read) is in
//! `FORMAT.md` ("Progress file"), pinned by
//! `tests::progress_bytes_are_pinned_and_round_trip`.
//!
//! A missing file means nothing was read from the remaining segments; a
//! damaged one is ignored with a warning, which can only deliver items
//! again, never lose them.

use std::io;
use std::path::Path;

use crate::storage::{remove_if_present, replace_file, Storage};

/// Name of the progress file in a channel's directory.
pub(crate) const PROGRESS_FILE: &str = "progress";

/// Name of the file a new progress record is written to before the rename.
const PROGRESS_TEMP: &str = "progress.tmp";

const MAGIC: [u8; 8] = *b"SUMPPROG";
const VERSION: u16 = 2;
const V1_LEN: usize = 32;
const FIXED_LEN: usize = 40;
/// Flag bit: the file holds a read position.
const HAS_POSITION: u32 = 1;
/// Most read segments one file lists; more are left to be delivered again.
const MAX_READ: usize = 4096;

/// Where reading resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    /// The segment being read.
    pub(crate) segment: u64,
    /// Offset of its next unread record, or of the block holding it.
    pub(crate) offset: u64,
    /// Records of the block at `offset` already read; 0 in a segment
    /// without compression.
    pub(crate) skip: u16,
}

/// What the progress file records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Where the receiver stopped reading, at a clean shutdown.
    pub(crate) position: Option<Position>,
    /// Segments read to the end that are still on disk.
    pub(crate) read: Vec<u64>,
}

impl Progress {
    /// Whether there is nothing to record.
    pub(crate) fn is_empty(&self) -> bool {
        self.position.is_none() && self.read.is_empty()
    }
}

fn encode(progress: &Progress) -> Vec<u8> {
    let read = &progress.read[..progress.read.len().min(MAX_READ)];
    let mut bytes = Vec::with_capacity(FIXED_LEN + 8 * read.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    let position = progress.position.unwrap_or(Position { segment: 0, offset: 0, skip: 0 });
    bytes.extend_from_slice(&position.skip.to_le_bytes());
    bytes.extend_from_slice(&position.segment.to_le_bytes());
    bytes.extend_from_slice(&position.offset.to_le_bytes());
    let flags = if progress.position.is_some() { HAS_POSITION } else { 0 };
    bytes.extend_from_slice(&flags.to_le_bytes());
    bytes.extend_from_slice(&(read.len() as u32).to_le_bytes());
    for id in read {
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn decode(bytes: &[u8]) -> Option<Progress> {
    if bytes.get(0..8)? != MAGIC {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len().checked_sub(4)?);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let position = Position { segment: u64_at(bytes, 12)?, offset: u64_at(bytes, 20)?, skip: u16_at(bytes, 10)? };
    match u16_at(bytes, 8)? {
        1 if bytes.len() == V1_LEN => Some(Progress { position: Some(position), read: Vec::new() }),
        2 if bytes.len() >= FIXED_LEN => {
            let flags = u32_at(bytes, 28)?;
            let count = u32_at(bytes, 32)? as usize;
            if count > MAX_READ || bytes.len() != FIXED_LEN + 8 * count {
                return None;
            }
            let read = (0..count).map(|i| u64_at(bytes, 36 + 8 * i)).collect::<Option<Vec<u64>>>()?;
            Some(Progress { position: (flags & HAS_POSITION != 0).then_some(position), read })
        }
        _ => None,
    }
}

/// Reads the progress file in `dir`. Empty when there is none, or it is
/// damaged (logged).
pub(crate) fn read(fs: &dyn Storage, dir: &Path) -> Progress {
    let path = dir.join(PROGRESS_FILE);
    match fs.read_all(&path) {
        Ok(bytes) => decode(&bytes).unwrap_or_else(|| {
            tracing::warn!(path = %path.display(), "progress file is damaged; reading from the oldest segment");
            Progress::default()
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Progress::default(),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot read the progress file");
            Progress::default()
        }
    }
}

/// Records `progress` in `dir` (or removes the record when it is empty),
/// atomically; with `sync`, durably.
pub(crate) fn write(fs: &dyn Storage, dir: &Path, progress: &Progress, sync: bool) -> io::Result<()> {
    let path = dir.join(PROGRESS_FILE);
    if progress.is_empty() {
        remove_if_present(fs, &path)?;
        return if sync { fs.sync_dir(dir) } else { Ok(()) };
    }
    replace_file(fs, dir, PROGRESS_FILE, PROGRESS_TEMP, &encode(progress), sync)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Os;

    #[test]
    fn progress_bytes_are_pinned_and_round_trip() {
        let progress =
            Progress { position: Some(Position { segment: 0x0102, offset: 16, skip: 0x0304 }), read: vec![9] };
        let bytes = encode(&progress);
        let mut expected = b"SUMPPROG\x02\x00\x04\x03".to_vec();
        expected.extend_from_slice(&[2, 1, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&crc32c::crc32c(&expected).to_le_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(decode(&bytes), Some(progress.clone()));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert_eq!(decode(&damaged), None, "byte {at}");
        }
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        let only_read = Progress { position: None, read: vec![1, 2] };
        assert_eq!(decode(&encode(&only_read)), Some(only_read));
    }

    #[test]
    fn version_1_files_are_still_read() {
        let mut v1 = b"SUMPPROG\x01\x00\x02\x00".to_vec();
        v1.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0, 40, 0, 0, 0, 0, 0, 0, 0]);
        v1.extend_from_slice(&crc32c::crc32c(&v1).to_le_bytes());
        let position = Position { segment: 7, offset: 40, skip: 2 };
        assert_eq!(decode(&v1), Some(Progress { position: Some(position), read: Vec::new() }));
    }

    #[test]
    fn progress_is_replaced_and_removed_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(&Os, dir.path()), Progress::default());
        let first = Progress { position: Some(Position { segment: 3, offset: 40, skip: 0 }), read: vec![] };
        write(&Os, dir.path(), &first, true).unwrap();
        let second = Progress { position: Some(Position { segment: 4, offset: 16, skip: 2 }), read: vec![1] };
        write(&Os, dir.path(), &second, false).unwrap();
        assert_eq!(read(&Os, dir.path()), second);
        write(&Os, dir.path(), &Progress::default(), false).unwrap();
        assert_eq!(read(&Os, dir.path()), Progress::default());
        std::fs::write(dir.path().join(PROGRESS_FILE), b"garbage").unwrap();
        assert_eq!(read(&Os, dir.path()), Progress::default());
    }
}
