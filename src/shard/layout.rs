//! The shard layout file, `dir/name/sump.shards`: how many shards a
//! sharded channel has, how it dispatches, and whether a reshard is under
//! way.
//!
//! The byte layout (24 bytes: magic, version, dispatch, reshard step, shard
//! count, target count, CRC32C) is in `FORMAT.md` ("Shard layout file"),
//! pinned by `tests::layouts_round_trip_and_damage_is_refused`.
//!
//! The file is replaced whole: written to a temporary name, synced, and
//! renamed over the old one, so a crash leaves either version.

use std::io;

use crate::storage::{replace_file, Storage};
use std::path::{Path, PathBuf};

/// Most shards a sharded channel can have (`shard-000` to `shard-999`).
pub const MAX_SHARDS: usize = 1000;

/// How a sharded channel picks the shard of an item.
///
/// By key is the default mode, but it needs the key function, so `open`
/// refuses a builder given none of [`ShardedBuilder::key`](crate::ShardedBuilder::key),
/// [`round_robin`](crate::ShardedBuilder::round_robin) and
/// [`broadcast`](crate::ShardedBuilder::broadcast).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Dispatch {
    /// By the XXH3 hash of the item's key: equal keys, same shard, same
    /// order. The default; chosen by [`ShardedBuilder::key`](crate::ShardedBuilder::key).
    #[default]
    Key,
    /// Each send to the next shard in turn. No order holds between items
    /// of different shards.
    RoundRobin,
    /// Every item to every shard, for fan-out. Needs `T: Clone`.
    Broadcast,
}

/// Name of the layout file inside a sharded channel's directory.
pub(crate) const LAYOUT_FILE: &str = "sump.shards";

/// Name of the temporary file the layout is written to before the rename.
const LAYOUT_TEMP: &str = "sump.shards.tmp";

/// First bytes of the layout file.
const MAGIC: &[u8; 8] = b"SUMPSHRD";

/// Version of the layout file format.
const VERSION: u16 = 1;

/// Length of the layout file.
const LEN: usize = 24;

/// Where a sharded channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The items are in shards `0..count`, dispatched as recorded.
    Stable,
    /// A reshard is moving every shard's items, shard after shard, into
    /// the staging channel.
    Collecting,
    /// A reshard is moving the staging channel's items into shards
    /// `0..target`.
    Distributing,
}

/// The recorded layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// How items were dispatched; `None` when not known (the layout file
    /// was missing but shard directories were present).
    pub(crate) dispatch: Option<Dispatch>,
    /// Where the channel stands.
    pub(crate) phase: Phase,
    /// Shard directories `shard-000..count` hold items.
    pub(crate) count: usize,
    /// The shard count a reshard moves to; 0 when stable.
    pub(crate) target: usize,
}

/// The path of the layout file of the sharded channel in `root`.
pub(crate) fn path(root: &Path) -> PathBuf {
    root.join(LAYOUT_FILE)
}

impl Layout {
    /// Encodes the layout as the file's bytes.
    fn encode(&self) -> [u8; LEN] {
        let mut bytes = [0u8; LEN];
        bytes[..8].copy_from_slice(MAGIC);
        bytes[8..10].copy_from_slice(&VERSION.to_le_bytes());
        bytes[10] = match self.dispatch {
            Some(Dispatch::Key) => 0,
            Some(Dispatch::RoundRobin) => 1,
            Some(Dispatch::Broadcast) => 2,
            None => 255,
        };
        bytes[11] = match self.phase {
            Phase::Stable => 0,
            Phase::Collecting => 1,
            Phase::Distributing => 2,
        };
        // Counts are at most `MAX_SHARDS`, so they fit in 32 bits.
        bytes[12..16].copy_from_slice(&(self.count as u32).to_le_bytes());
        bytes[16..20].copy_from_slice(&(self.target as u32).to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..20]);
        bytes[20..24].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes the file's bytes, or says what is wrong with them.
    fn decode(bytes: &[u8]) -> Result<Layout, String> {
        let field = |range: std::ops::Range<usize>| bytes.get(range).unwrap_or_default();
        let word = |at: usize| {
            let mut word = [0u8; 4];
            word.copy_from_slice(field(at..at + 4));
            u32::from_le_bytes(word)
        };
        if bytes.len() != LEN {
            return Err(format!("it is {} bytes long, not {LEN}", bytes.len()));
        }
        if field(0..8) != MAGIC {
            return Err("it does not start with the layout magic number".to_string());
        }
        if crc32c::crc32c(field(0..20)) != word(20) {
            return Err("its checksum does not match".to_string());
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(format!("it has format version {version}; this version of sump reads {VERSION}"));
        }
        let dispatch = match bytes[10] {
            0 => Some(Dispatch::Key),
            1 => Some(Dispatch::RoundRobin),
            2 => Some(Dispatch::Broadcast),
            255 => None,
            other => return Err(format!("it names an unknown dispatch mode {other}")),
        };
        let phase = match bytes[11] {
            0 => Phase::Stable,
            1 => Phase::Collecting,
            2 => Phase::Distributing,
            other => return Err(format!("it names an unknown reshard state {other}")),
        };
        let (count, target) = (word(12) as usize, word(16) as usize);
        if count > MAX_SHARDS {
            return Err(format!("it records {count} shards, more than {}", MAX_SHARDS));
        }
        if phase != Phase::Stable && !(1..=MAX_SHARDS).contains(&target) {
            return Err(format!("it records a reshard to {target} shards"));
        }
        Ok(Layout { dispatch, phase, count, target })
    }
}

/// Reads the layout of the sharded channel in `root`; `None` when there is
/// no layout file.
pub(crate) fn read(fs: &dyn Storage, root: &Path) -> io::Result<Option<Layout>> {
    let path = path(root);
    let bytes = match fs.read_all(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    Layout::decode(&bytes).map(Some).map_err(|reason| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the shard layout file {} is damaged: {reason}; if no reshard was under way, deleting it makes \
                 `open` count the shard directories instead (a channel dispatched by key then re-sorts its \
                 items; a broadcast channel must then be empty)",
                path.display()
            ),
        )
    })
}

/// Replaces the layout of the sharded channel in `root`, durably.
pub(crate) fn write(fs: &dyn Storage, root: &Path, layout: &Layout) -> io::Result<()> {
    replace_file(fs, root, LAYOUT_FILE, LAYOUT_TEMP, &layout.encode(), true)
}

/// Whether `path` is the directory of a sharded channel, for the plain
/// `open`, which refuses one.
pub(crate) fn is_sharded(fs: &dyn Storage, channel_dir: &Path) -> bool {
    fs.metadata(&path(channel_dir)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Os;
    use std::fs;

    #[test]
    fn layouts_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(&Os, dir.path()).unwrap(), None);
        let layout = Layout { dispatch: Some(Dispatch::RoundRobin), phase: Phase::Distributing, count: 3, target: 7 };
        write(&Os, dir.path(), &layout).unwrap();
        assert_eq!(read(&Os, dir.path()).unwrap(), Some(layout));

        let mut bytes = fs::read(path(dir.path())).unwrap();
        assert_eq!(&bytes[..8], MAGIC);
        assert_eq!(bytes[10..12], [1, 2]);
        assert_eq!(bytes[8..10], [1, 0], "version 1");
        assert_eq!(bytes[12..20], [3, 0, 0, 0, 7, 0, 0, 0]);
        assert_eq!(bytes[20..24], crc32c::crc32c(&bytes[..20]).to_le_bytes());
        assert_eq!(bytes.len(), 24);
        bytes[12] = 4;
        fs::write(path(dir.path()), &bytes).unwrap();
        let err = read(&Os, dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("checksum"), "{err}");
        let forged = Layout { dispatch: Some(Dispatch::Key), phase: Phase::Distributing, count: 2, target: 0 };
        write(&Os, dir.path(), &forged).unwrap();
        assert!(read(&Os, dir.path()).unwrap_err().to_string().contains("reshard to 0 shards"));
        fs::write(path(dir.path()), &bytes[..10]).unwrap();
        assert!(read(&Os, dir.path()).unwrap_err().to_string().contains("10 bytes long"));
    }
}
