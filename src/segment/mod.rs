//! Segment files: the disk tier of a channel.
//!
//! A channel's overflow lives in append-only segment files under
//! `dir/name/`, each named after its numeric id, zero-padded to twenty
//! digits (`00000000000000000007.seg`) so that sorting names sorts ids.
//!
//! Invariants kept by this module and its users:
//! - the writer ([`SegmentWriter`]) creates files and only ever appends;
//!   the reader ([`SegmentCursor`]) never writes, and the receiver alone
//!   deletes a segment, once it has read every record in it;
//! - a record never spans two segments; a segment is sealed (flushed and
//!   made read-only) before the next one is started, and a sealed segment
//!   never changes again;
//! - every segment is read with positioned reads into a bounded buffer: a
//!   sealed one up to its final length, the active one up to the bytes the
//!   writer has flushed (under `SyncPolicy::Always`, synced);
//! - every record carries a CRC32C over its length and payload, and the
//!   reader checks it before it trusts either.
//!
//! The byte layout is in [`format`].

pub(crate) mod block;
pub(crate) mod cursor;
pub(crate) mod format;
pub(crate) mod writer;

use std::path::{Path, PathBuf};

pub(crate) use cursor::{Peek, SegmentCursor};
pub(crate) use writer::{SegmentWriter, WRITE_BUFFER_BYTES};

/// File name suffix of a segment.
const SEGMENT_SUFFIX: &str = ".seg";

/// Number of digits in a segment file's name.
const ID_DIGITS: usize = 20;

/// The path of segment `id` in `dir`.
pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:0width$}{SEGMENT_SUFFIX}", width = ID_DIGITS))
}

/// The id of a file named like a segment, or `None` for any other name.
/// Only names this crate writes match, so other files are never touched.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != ID_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What is known of a segment that is no longer being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentMeta {
    /// The segment's id, which names its file.
    pub(crate) id: u64,
    /// Length of the file in bytes, header included.
    pub(crate) bytes: u64,
    /// Number of records in the file.
    pub(crate) records: u64,
    /// The sequence number of its last record: the highest in it. `None`
    /// when it has no record, or when its records carry no number (format
    /// version 1).
    pub(crate) last_seq: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_in_numeric_order_and_parse_back() {
        let dir = Path::new("/x");
        let mut names: Vec<String> = [10u64, 9, 100, 0, u64::MAX]
            .iter()
            .map(|&id| segment_path(dir, id).file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        names.sort();
        let ids: Vec<u64> = names.iter().map(|n| parse_segment_name(n).unwrap()).collect();
        assert_eq!(ids, vec![0, 9, 10, 100, u64::MAX]);
    }

    #[test]
    fn names_the_crate_did_not_write_are_not_segments() {
        for name in [
            "1.seg",
            "0000000000000000000a.seg",
            "00000000000000000001.seg.corrupt",
            "notes.txt",
            "sump.lock",
            "+0000000000000000001.seg",
        ] {
            assert_eq!(parse_segment_name(name), None, "{name}");
        }
    }
}
