//! The channel's id, `dir/name/sump.id`: 128 random bits that name one
//! numbering of the channel's items. Together with an item's sequence
//! number it names the item uniquely, across restarts and crashes, and
//! across channels: a sink that deduplicates (such as the JetStream sink's
//! `Nats-Msg-Id`) keys on the pair.
//!
//! The id is drawn when the channel is first opened and kept from then
//! on. It is drawn anew whenever the numbers could start again: when the
//! file is missing or damaged, and when the sequence file is (the numbers
//! then go on only after the records still on disk, so a number given to
//! an item already delivered and gone could be given again), and the file
//! is removed when numbers cannot be reserved (see
//! `DiskQueue::reserve_seqs`). A new id costs deduplication across that
//! one event, never an item. A copy of the directory (a restored backup)
//! shares the id; deleting `sump.id` in the copy gives it its own.
//!
//! The byte layout is in `FORMAT.md` ("Id file"), pinned by
//! `tests::id_file_bytes_are_pinned_and_damage_is_refused`.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::storage::{replace_file, Storage};

/// Name of the id file in a channel's directory.
pub(crate) const ID_FILE: &str = "sump.id";

const MAGIC: [u8; 8] = *b"SUMPID\0\0";
const VERSION: u16 = 1;
const LEN: usize = 32;

/// The id of a channel: 128 random bits, drawn when the channel is first
/// opened and kept across restarts, that name its numbering of items.
/// With an item's sequence number ([`Peeked::seqs`](crate::Peeked::seqs))
/// it names the item uniquely, which is what a sink needs to drop an item
/// delivered twice (see [`Sink::send_numbered`](crate::Sink::send_numbered)).
///
/// Displayed as 32 lowercase hexadecimal digits.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let (_tx, rx) = sump::channel::<u64>("jobs", dir.path())?;
/// let id = rx.channel_id();
/// drop(rx);
/// drop(_tx);
/// let (_tx, rx) = sump::channel::<u64>("jobs", dir.path())?;
/// assert_eq!(rx.channel_id(), id);
/// assert_eq!(id.to_string().len(), 32);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(u128);

impl ChannelId {
    /// The id as a number.
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// The id that is this number: for a sink's own tests, and for code
    /// that calls a sink outside a drainer.
    pub fn from_u128(id: u128) -> ChannelId {
        ChannelId(id)
    }

    /// A new id: 128 bits from the standard library's randomly keyed
    /// hasher (seeded from the operating system), mixed with the time
    /// and the process id.
    fn draw() -> ChannelId {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos());
        let half = |salt: u64| {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u64(salt);
            hasher.write_u128(now);
            hasher.write_u32(std::process::id());
            hasher.finish()
        };
        ChannelId(u128::from(half(1)) << 64 | u128::from(half(2)))
    }
}

/// 64 random bits, drawn as a channel id is.
pub(crate) fn random_u64() -> u64 {
    ChannelId::draw().0 as u64
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

fn encode(id: ChannelId) -> [u8; LEN] {
    let mut bytes = [0u8; LEN];
    bytes[0..8].copy_from_slice(&MAGIC);
    bytes[8..10].copy_from_slice(&VERSION.to_le_bytes());
    bytes[12..28].copy_from_slice(&id.0.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode(bytes: &[u8]) -> Option<ChannelId> {
    if bytes.len() != LEN || bytes[0..8] != MAGIC || bytes[8..10] != VERSION.to_le_bytes() {
        return None;
    }
    if crc32c::crc32c(&bytes[0..28]).to_le_bytes() != bytes[28..32] {
        return None;
    }
    Some(ChannelId(u128::from_le_bytes(bytes[12..28].try_into().ok()?)))
}

/// The channel's id: the recorded one, or, when there is none, it is
/// damaged, or the numbering starts again (`renumbered`), a new one,
/// recorded (synced when `sync`) before it is returned. When the file
/// cannot be read or the new id cannot be recorded (a full disk), a new
/// id for this run only, with a warning: the next open draws another,
/// which costs deduplication across the restart, never an item.
pub(crate) fn load(fs: &dyn Storage, dir: &Path, renumbered: bool, sync: bool) -> ChannelId {
    match recorded_or_new(fs, dir, renumbered, sync) {
        Ok(id) => id,
        Err(err) => {
            tracing::warn!(path = %dir.join(ID_FILE).display(), error = %err,
                "cannot read or record the channel's id; using a new one for this run");
            forget(fs, dir);
            ChannelId::draw()
        }
    }
}

/// Removes the id file, so that the next open draws a new id: numbers
/// given out from now on could repeat after a restart. Best effort; a
/// failure is logged.
pub(crate) fn forget(fs: &dyn Storage, dir: &Path) {
    let removed = crate::storage::remove_if_present(fs, &dir.join(ID_FILE)).and_then(|()| fs.sync_dir(dir));
    if let Err(err) = removed {
        tracing::error!(dir = %dir.display(), error = %err,
            "cannot remove the channel's id file: after a restart, a deduplicating sink could take new items for old ones");
    }
}

fn recorded_or_new(fs: &dyn Storage, dir: &Path, renumbered: bool, sync: bool) -> io::Result<ChannelId> {
    let path = dir.join(ID_FILE);
    match fs.read_all(&path) {
        Ok(bytes) => match decode(&bytes) {
            Some(id) if !renumbered => return Ok(id),
            Some(_) => tracing::warn!(path = %path.display(),
                "the sequence file was lost, so numbers could repeat: the channel gets a new id"),
            None => tracing::warn!(path = %path.display(), "the id file is damaged; the channel gets a new id"),
        },
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let id = ChannelId::draw();
    replace_file(fs, dir, ID_FILE, "sump.id.tmp", &encode(id), sync)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_file_bytes_are_pinned_and_damage_is_refused() {
        let id = ChannelId(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        let bytes = encode(id);
        let mut expected = b"SUMPID\0\0\x01\x00\x00\x00".to_vec();
        expected.extend_from_slice(&[16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
        expected.extend_from_slice(&crc32c::crc32c(&expected).to_le_bytes());
        assert_eq!(bytes.to_vec(), expected);
        assert_eq!(decode(&bytes), Some(id));
        assert_eq!(id.to_string(), "0102030405060708090a0b0c0d0e0f10");
        for at in 0..bytes.len() {
            let mut damaged = bytes;
            damaged[at] ^= 0x01;
            assert_eq!(decode(&damaged), None, "byte {at}");
        }
        assert_eq!(decode(&bytes[..LEN - 1]), None);
    }

    #[test]
    fn drawn_ids_differ() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| ChannelId::draw()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
