//! The tier file, `dir/name/sump.tier`: every segment the remote tier is
//! handling, with its lifecycle state. The byte layout is in `FORMAT.md`
//! ("Tier file").
//!
//! It is replaced whole (a temporary file renamed over it, both synced) at
//! every transition: a segment goes through at most five, and each moves
//! a whole segment, so the cost is a few syncs per segment.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde_json::{json, Value};

use super::TierState;
use crate::storage::{replace_file, Storage};

/// Name of the tier file in a channel's directory.
pub(crate) const TIER_FILE: &str = "sump.tier";
const TEMP: &str = "sump.tier.tmp";
const MAGIC: [u8; 8] = *b"SUMPTIER";
const VERSION: u16 = 1;
/// Magic, version, two reserved bytes, the body's length.
const HEAD: usize = 16;

/// What the tier knows of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TierEntry {
    /// Where it stands.
    pub(crate) state: TierState,
    /// What every key of the segment's objects starts with: the channel's
    /// id and the segment's.
    pub(crate) prefix: String,
    /// Its object's key in the store: the prefix and the CRC32C of the
    /// bytes uploaded; empty until the copy is finished.
    pub(crate) key: String,
    /// Length of the segment file.
    pub(crate) bytes: u64,
    /// Records in it.
    pub(crate) records: u64,
    /// Number of its last record, if its records carry numbers.
    pub(crate) last_seq: Option<u64>,
    /// CRC32C of the whole file, checked on every fetch (0 until the
    /// copy is finished).
    pub(crate) crc: u32,
}

/// Every segment the tier handles, by segment id.
pub(crate) type Entries = BTreeMap<u64, TierEntry>;

pub(crate) fn encode(entries: &Entries) -> Vec<u8> {
    let segments: Vec<Value> = entries
        .iter()
        .map(|(id, entry)| {
            json!({
                "id": id,
                "state": entry.state.name(),
                "prefix": entry.prefix,
                "key": entry.key,
                "bytes": entry.bytes,
                "records": entry.records,
                "last_seq": entry.last_seq,
                "crc": entry.crc,
            })
        })
        .collect();
    let body = json!({ "segments": segments }).to_string().into_bytes();
    let mut bytes = Vec::with_capacity(HEAD + body.len() + 4);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&body);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

fn damaged(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("the tier file is damaged: {why}"))
}

pub(crate) fn decode(bytes: &[u8]) -> io::Result<Entries> {
    if bytes.len() < HEAD + 4 || bytes[0..8] != MAGIC {
        return Err(damaged("no tier file header"));
    }
    if bytes[8..10] != VERSION.to_le_bytes() {
        return Err(damaged("unknown version"));
    }
    let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    if bytes.len() != HEAD + len + 4 {
        return Err(damaged("wrong length"));
    }
    let (covered, crc) = bytes.split_at(HEAD + len);
    if crc32c::crc32c(covered).to_le_bytes() != crc {
        return Err(damaged("CRC mismatch"));
    }
    let body: Value = serde_json::from_slice(&covered[HEAD..]).map_err(|err| damaged(&err.to_string()))?;
    let segments = body.get("segments").and_then(Value::as_array).ok_or_else(|| damaged("no segment list"))?;
    let mut entries = Entries::new();
    for segment in segments {
        let number = |field: &str| segment.get(field).and_then(Value::as_u64);
        let (Some(id), Some(bytes), Some(records), Some(crc)) =
            (number("id"), number("bytes"), number("records"), number("crc"))
        else {
            return Err(damaged("a segment entry lacks a field"));
        };
        let state = segment
            .get("state")
            .and_then(Value::as_str)
            .and_then(TierState::from_name)
            .ok_or_else(|| damaged("a segment entry has no valid state"))?;
        let text = |field: &str| {
            segment.get(field).and_then(Value::as_str).ok_or_else(|| damaged("a segment entry lacks a field"))
        };
        let (prefix, key) = (text("prefix")?, text("key")?);
        let crc = u32::try_from(crc).map_err(|_| damaged("a CRC out of range"))?;
        let entry = TierEntry {
            state,
            prefix: prefix.to_owned(),
            key: key.to_owned(),
            bytes,
            records,
            last_seq: number("last_seq"),
            crc,
        };
        if entries.insert(id, entry).is_some() {
            return Err(damaged("a segment listed twice"));
        }
    }
    Ok(entries)
}

/// The tier file in `dir`: empty when there is none.
///
/// # Errors
///
/// A file that cannot be read or is damaged: the channel does not open
/// rather than forget segments that live only in the store.
pub(crate) fn read(fs: &dyn Storage, dir: &Path) -> io::Result<Entries> {
    match fs.read_all(&dir.join(TIER_FILE)) {
        Ok(bytes) => decode(&bytes),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Entries::new()),
        Err(err) => Err(err),
    }
}

/// Replaces the tier file in `dir` with `entries`, durably.
pub(crate) fn write(fs: &dyn Storage, dir: &Path, entries: &Entries) -> io::Result<()> {
    replace_file(fs, dir, TIER_FILE, TEMP, &encode(entries), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entries {
        let mut entries = Entries::new();
        let entry = |state, last_seq| TierEntry {
            state,
            prefix: "00ff-0000000100000002".into(),
            key: "00ff-0000000100000002-deadbeef.seg".into(),
            bytes: 8 << 20,
            records: 1000,
            last_seq,
            crc: 0xdead_beef,
        };
        entries.insert(1 << 32 | 2, entry(TierState::LocalDeleted, Some(41)));
        entries.insert(1 << 32 | 3, entry(TierState::CopyStarted, None));
        entries
    }

    #[test]
    fn entries_round_trip_and_damage_is_refused() {
        let entries = sample();
        let bytes = encode(&entries);
        assert_eq!(decode(&bytes).unwrap(), entries);
        for at in [0, 9, 13, 20, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert_eq!(decode(&bad).unwrap_err().kind(), io::ErrorKind::InvalidData, "byte {at}");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn tier_file_layout_is_pinned() {
        let bytes = encode(&Entries::new());
        let body = br#"{"segments":[]}"#;
        let mut expected = b"SUMPTIER\x01\x00\x00\x00".to_vec();
        expected.extend_from_slice(&(body.len() as u32).to_le_bytes());
        expected.extend_from_slice(body);
        let crc = crc32c::crc32c(&expected);
        expected.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(bytes, expected);
    }
}
