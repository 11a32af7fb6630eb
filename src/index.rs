//! The segment index, `dir/name/sump.index`: what recovery needs to know
//! of each sealed segment (its length, record count, highest sequence
//! number and format version), so that `open` need not read a sealed
//! segment's records to count them. Restart time then grows with the
//! number of segments, not with the bytes they hold.
//!
//! A segment gets an entry when it is sealed: one entry appended to the
//! file, which is rewritten whole (to a temporary file, then renamed) at
//! every open and whenever it holds many more entries than live segments.
//! The index is a hint, never the truth: recovery trusts an entry only
//! for a segment file whose length is the entry's, and scans every other
//! segment as before. Every record's CRC is still checked when it is
//! read, so damage in a segment counted from its entry is found then,
//! skipped and counted as it always is; only the moment it is counted
//! moves from `open` to the read.
//!
//! The byte layout is in `FORMAT.md` ("Index file"), pinned by
//! `tests::index_bytes_are_pinned`. Entries are read up to the first one
//! that fails its CRC (a torn append); a damaged header makes the whole
//! file count as empty.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::Path;

use crate::segment::SegmentMeta;
use crate::storage::{replace_file, write_all, Open, Storage};

/// Name of the index file in a channel's directory.
pub(crate) const INDEX_FILE: &str = "sump.index";

const INDEX_TEMP: &str = "sump.index.tmp";
const MAGIC: [u8; 8] = *b"SUMPIDX\0";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 16;
const ENTRY_LEN: usize = 40;
/// `last_seq` of an entry whose segment has no numbered record.
const NO_SEQ: u64 = u64::MAX;

/// What the index says of one sealed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The segment, its length, records and highest number.
    pub(crate) meta: SegmentMeta,
    /// Its format version.
    pub(crate) version: u16,
}

fn header() -> [u8; HEADER_LEN] {
    let mut bytes = [0u8; HEADER_LEN];
    bytes[0..8].copy_from_slice(&MAGIC);
    bytes[8..10].copy_from_slice(&VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..12]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn encode(entry: &Entry) -> [u8; ENTRY_LEN] {
    let mut bytes = [0u8; ENTRY_LEN];
    bytes[0..8].copy_from_slice(&entry.meta.id.to_le_bytes());
    bytes[8..16].copy_from_slice(&entry.meta.bytes.to_le_bytes());
    bytes[16..24].copy_from_slice(&entry.meta.records.to_le_bytes());
    bytes[24..32].copy_from_slice(&entry.meta.last_seq.unwrap_or(NO_SEQ).to_le_bytes());
    bytes[32..34].copy_from_slice(&entry.version.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..36]);
    bytes[36..40].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The entries of an index file's bytes, up to the first damaged one.
fn decode(bytes: &[u8]) -> Vec<Entry> {
    if bytes.get(..HEADER_LEN) != Some(&header()[..]) {
        return Vec::new();
    }
    let mut entries = Vec::new();
    for entry in bytes[HEADER_LEN..].chunks_exact(ENTRY_LEN) {
        if crc32c::crc32c(&entry[0..36]).to_le_bytes() != entry[36..40] {
            break;
        }
        let last_seq = Some(u64_at(entry, 24)).filter(|&seq| seq != NO_SEQ);
        let meta = SegmentMeta { id: u64_at(entry, 0), bytes: u64_at(entry, 8), records: u64_at(entry, 16), last_seq };
        entries.push(Entry { meta, version: u16::from_le_bytes([entry[32], entry[33]]) });
    }
    entries
}

/// The entries of the index in `dir` by segment id, the latest for each
/// id; empty when there is no index or it cannot be read (with a warning).
pub(crate) fn read(fs: &dyn Storage, dir: &Path) -> BTreeMap<u64, Entry> {
    let path = dir.join(INDEX_FILE);
    match fs.read_all(&path) {
        Ok(bytes) => decode(&bytes).into_iter().map(|entry| (entry.meta.id, entry)).collect(),
        Err(err) => {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %err, "cannot read the segment index; segments are scanned");
            }
            BTreeMap::new()
        }
    }
}

/// Replaces the index in `dir` with `entries`.
pub(crate) fn rewrite(fs: &dyn Storage, dir: &Path, entries: &[Entry]) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * entries.len());
    bytes.extend_from_slice(&header());
    for entry in entries {
        bytes.extend_from_slice(&encode(entry));
    }
    replace_file(fs, dir, INDEX_FILE, INDEX_TEMP, &bytes, false)
}

/// The index of an open channel, to which sealed segments are added.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// The index file, open for appending; opened at the first append.
    file: Option<File>,
    /// Entries in the file.
    entries: usize,
    /// Whether an append failed: the file was removed (an entry missing
    /// from it could leave an older entry for a reused id standing), and
    /// nothing more is added until it is rewritten.
    broken: bool,
}

impl Index {
    /// An index just rewritten with `entries` entries.
    pub(crate) fn rewritten(entries: usize) -> Index {
        Index { file: None, entries, broken: false }
    }

    /// No index: appends are refused until it is rewritten.
    pub(crate) fn none() -> Index {
        Index { file: None, entries: 0, broken: true }
    }

    /// Entries in the file, live or not.
    pub(crate) fn entries(&self) -> usize {
        self.entries
    }

    /// Appends `entry`. On a failure the index is removed, so that no
    /// stale entry outlives it, and the segments are scanned at the next
    /// open.
    pub(crate) fn add(&mut self, fs: &dyn Storage, dir: &Path, entry: &Entry) {
        if self.broken {
            return;
        }
        let path = dir.join(INDEX_FILE);
        let appended = (|| {
            if self.file.is_none() {
                self.file = Some(fs.open(&path, Open::Append)?);
            }
            let Some(file) = self.file.as_ref() else { return Ok(()) };
            write_all(fs, &path, file, &encode(entry))
        })();
        match appended {
            Ok(()) => self.entries += 1,
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err,
                    "could not add a segment to the index; the next open scans every segment");
                self.file = None;
                self.broken = true;
                if let Err(err) = crate::storage::remove_if_present(fs, &path) {
                    tracing::error!(path = %path.display(), error = %err,
                        "could not remove the segment index after a failed append");
                }
            }
        }
    }

    /// Forgets the open file, before the index is rewritten.
    pub(crate) fn close(&mut self) {
        self.file = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, last_seq: Option<u64>) -> Entry {
        Entry { meta: SegmentMeta { id, bytes: 4096, records: 200, last_seq }, version: 2 }
    }

    #[test]
    fn index_bytes_are_pinned() {
        let mut expected = b"SUMPIDX\0".to_vec();
        expected.extend_from_slice(&[1, 0, 0, 0]); // version 1, reserved
        expected.extend_from_slice(&crc32c::crc32c(&expected).to_le_bytes());
        assert_eq!(header().to_vec(), expected);
        let mut record = Vec::new();
        record.extend_from_slice(&7u64.to_le_bytes()); // id
        record.extend_from_slice(&4096u64.to_le_bytes()); // bytes
        record.extend_from_slice(&200u64.to_le_bytes()); // records
        record.extend_from_slice(&99u64.to_le_bytes()); // last_seq
        record.extend_from_slice(&[2, 0, 0, 0]); // version 2, reserved
        record.extend_from_slice(&crc32c::crc32c(&record).to_le_bytes());
        assert_eq!(encode(&entry(7, Some(99))).to_vec(), record);
        assert_eq!(encode(&entry(7, None))[24..32], [0xff; 8], "no number");
    }

    #[test]
    fn entries_round_trip_and_a_torn_one_ends_them() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::storage::os();
        assert!(read(&*fs, dir.path()).is_empty(), "no file: no entries");
        rewrite(&*fs, dir.path(), &[entry(1, Some(10))]).unwrap();
        let mut index = Index::rewritten(1);
        index.add(&*fs, dir.path(), &entry(2, None));
        index.add(&*fs, dir.path(), &entry(3, Some(30)));
        let read_back = read(&*fs, dir.path());
        assert_eq!(
            read_back.values().copied().collect::<Vec<_>>(),
            [entry(1, Some(10)), entry(2, None), entry(3, Some(30))]
        );
        let path = dir.path().join(INDEX_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN + ENTRY_LEN + 3] ^= 1; // damage the second entry
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&*fs, dir.path()).len(), 1, "entries end at the damaged one");
        bytes[0] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read(&*fs, dir.path()).is_empty(), "a damaged header: nothing trusted");
    }
}
