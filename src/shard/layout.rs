//! The shard layout file, `dir/name/sump.shards`: how many shards a
//! sharded channel has, how it dispatches, and whether a reshard is under
//! way.
//!
//! Version 2 (written since live scaling): a 16-byte head (magic,
//! version, reserved, body length), a JSON body (dispatch, reshard phase
//! and counts, routing, generation, next shard id, every shard's id and
//! state, hand-overs in progress), and a CRC32C of all before it. Version
//! 1 (24 bytes: magic, version, dispatch, reshard step, shard count,
//! target count, CRC32C) is still read; it routed keys by modulo, so a
//! channel dispatched by key over several shards is resharded once. Both
//! are in `FORMAT.md` ("Shard layout file"), pinned by the tests below.
//!
//! The file is replaced whole: written to a temporary name, synced, and
//! renamed over the old one, so a crash leaves either version.

use std::io;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::live::{ShardId, ShardState, MAX_SHARDS};
use crate::storage::{replace_file, Storage};

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

/// Version of the layout file format written.
const VERSION: u16 = 2;

/// Length of a version 1 layout file.
const V1_LEN: usize = 24;

/// Magic, version, two reserved bytes and the body's length.
const HEAD: usize = 16;

/// Where a sharded channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The items are in the shards listed, dispatched as recorded.
    Stable,
    /// A reshard is moving every shard's items, shard after shard, into
    /// the staging channel.
    Collecting,
    /// A reshard is moving the staging channel's items into shards
    /// `0..target`.
    Distributing,
}

/// How keys were mapped to shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Routing {
    /// The key hash modulo the shard count (layout version 1).
    Modulo,
    /// Rendezvous hashing over the active shards' ids (version 2).
    Rendezvous,
}

/// One shard of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShardEntry {
    /// Its id.
    pub(crate) id: ShardId,
    /// Where it stands.
    pub(crate) state: ShardState,
}

/// A hand-over in progress: shard `shard` took over keys at a change, and
/// its items numbered `after` or above wait until every shard in `waits`
/// has delivered the items it held then (all those numbered below the
/// fence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Handover {
    /// The shard that took keys over.
    pub(crate) shard: ShardId,
    /// Its first item number after the change.
    pub(crate) after: u64,
    /// The shards that gave keys up, each with its next item number at
    /// the change.
    pub(crate) waits: Vec<(ShardId, u64)>,
}

/// The recorded layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// How items were dispatched; `None` when not known (the layout file
    /// was missing but shard directories were present).
    pub(crate) dispatch: Option<Dispatch>,
    /// Where the channel stands.
    pub(crate) phase: Phase,
    /// During a reshard: shard directories `shard-000..count` hold items.
    /// When stable, the number of shards listed.
    pub(crate) count: usize,
    /// The shard count a reshard moves to; 0 when stable.
    pub(crate) target: usize,
    /// How keys map to shards.
    pub(crate) routing: Routing,
    /// Changes of the shard set so far.
    pub(crate) generation: u64,
    /// The id the next shard added gets.
    pub(crate) next_id: u32,
    /// Every shard, by id.
    pub(crate) shards: Vec<ShardEntry>,
    /// Hand-overs not known to be finished.
    pub(crate) handovers: Vec<Handover>,
}

/// The path of the layout file of the sharded channel in `root`.
pub(crate) fn path(root: &Path) -> PathBuf {
    root.join(LAYOUT_FILE)
}

impl Layout {
    /// A stable layout of `count` active shards `0..count`.
    pub(crate) fn stable(dispatch: Option<Dispatch>, count: usize, generation: u64) -> Layout {
        Layout {
            dispatch,
            phase: Phase::Stable,
            count,
            target: 0,
            routing: Routing::Rendezvous,
            generation,
            next_id: count as u32,
            shards: (0..count as u32).map(|id| ShardEntry { id: ShardId(id), state: ShardState::Active }).collect(),
            handovers: Vec::new(),
        }
    }

    /// Whether the layout is what `open` alone makes: shards `0..count`,
    /// all active, no hand-over, rendezvous routing. Only such a layout
    /// is resharded at `open`; one scaled live is scaled live.
    pub(crate) fn is_plain(&self) -> bool {
        self.phase != Phase::Stable
            || (self.handovers.is_empty()
                && self
                    .shards
                    .iter()
                    .enumerate()
                    .all(|(at, shard)| shard.id.0 as usize == at && shard.state == ShardState::Active))
    }

    /// Active shards.
    pub(crate) fn active(&self) -> usize {
        self.shards.iter().filter(|shard| shard.state == ShardState::Active).count()
    }

    /// Encodes the layout as the file's bytes.
    fn encode(&self) -> Vec<u8> {
        let shards: Vec<Value> =
            self.shards.iter().map(|shard| json!({"id": shard.id.0, "state": shard.state.name()})).collect();
        let handovers: Vec<Value> = self
            .handovers
            .iter()
            .map(|handover| {
                let waits: Vec<Value> =
                    handover.waits.iter().map(|(id, fence)| json!({"shard": id.0, "fence": fence})).collect();
                json!({"shard": handover.shard.0, "after": handover.after, "waits": waits})
            })
            .collect();
        let body = json!({
            "dispatch": self.dispatch.map(dispatch_name),
            "phase": match self.phase {
                Phase::Stable => "stable",
                Phase::Collecting => "collecting",
                Phase::Distributing => "distributing",
            },
            "count": self.count,
            "target": self.target,
            "routing": match self.routing {
                Routing::Modulo => "modulo",
                Routing::Rendezvous => "rendezvous",
            },
            "generation": self.generation,
            "next_id": self.next_id,
            "shards": shards,
            "handovers": handovers,
        })
        .to_string();
        let mut bytes = Vec::with_capacity(HEAD + body.len() + 4);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(body.as_bytes());
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes the file's bytes, either version, or says what is wrong
    /// with them.
    fn decode(bytes: &[u8]) -> Result<Layout, String> {
        if bytes.len() < 10 || &bytes[..8] != MAGIC {
            return Err("it does not start with the layout magic number".to_string());
        }
        match u16::from_le_bytes([bytes[8], bytes[9]]) {
            1 => decode_v1(bytes),
            2 => decode_v2(bytes),
            version => Err(format!("it has format version {version}; this version of sump reads 1 and {VERSION}")),
        }
    }
}

/// The name of a dispatch mode in the layout file.
fn dispatch_name(dispatch: Dispatch) -> &'static str {
    match dispatch {
        Dispatch::Key => "key",
        Dispatch::RoundRobin => "round_robin",
        Dispatch::Broadcast => "broadcast",
    }
}

/// A little-endian `u32` at `at` of `bytes`, which is long enough.
fn word(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Decodes a version 1 file: 24 bytes, routing by modulo.
fn decode_v1(bytes: &[u8]) -> Result<Layout, String> {
    if bytes.len() != V1_LEN {
        return Err(format!("it is {} bytes long, not {V1_LEN}", bytes.len()));
    }
    if crc32c::crc32c(&bytes[..20]) != word(bytes, 20) {
        return Err("its checksum does not match".to_string());
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
    let (count, target) = (word(bytes, 12) as usize, word(bytes, 16) as usize);
    if count > MAX_SHARDS {
        return Err(format!("it records {count} shards, more than {}", MAX_SHARDS));
    }
    if phase != Phase::Stable && !(1..=MAX_SHARDS).contains(&target) {
        return Err(format!("it records a reshard to {target} shards"));
    }
    Ok(Layout { phase, target, routing: Routing::Modulo, ..Layout::stable(dispatch, count, 0) })
}

/// Decodes a version 2 file: a JSON body between a head and a CRC32C.
fn decode_v2(bytes: &[u8]) -> Result<Layout, String> {
    if bytes.len() < HEAD + 4 {
        return Err(format!("it is {} bytes long, shorter than a head and a checksum", bytes.len()));
    }
    let len = word(bytes, 12) as usize;
    if bytes.len() != HEAD + len + 4 {
        return Err(format!("it is {} bytes long, but its head says {}", bytes.len(), HEAD + len + 4));
    }
    if crc32c::crc32c(&bytes[..HEAD + len]) != word(bytes, HEAD + len) {
        return Err("its checksum does not match".to_string());
    }
    let body: Value = serde_json::from_slice(&bytes[HEAD..HEAD + len]).map_err(|err| format!("its body: {err}"))?;
    let number = |value: &Value, field: &str| value.get(field).and_then(Value::as_u64).ok_or(format!("no {field}"));
    let text = |value: &Value, field: &str| {
        value.get(field).and_then(Value::as_str).map(str::to_string).ok_or(format!("no {field}"))
    };
    let id = |value: &Value, field: &str| {
        number(value, field).and_then(|id| u32::try_from(id).map(ShardId).map_err(|_| format!("{field} {id}")))
    };
    let dispatch = match body.get("dispatch").and_then(Value::as_str) {
        None => None,
        Some("key") => Some(Dispatch::Key),
        Some("round_robin") => Some(Dispatch::RoundRobin),
        Some("broadcast") => Some(Dispatch::Broadcast),
        Some(other) => return Err(format!("it names an unknown dispatch mode {other:?}")),
    };
    let phase = match text(&body, "phase")?.as_str() {
        "stable" => Phase::Stable,
        "collecting" => Phase::Collecting,
        "distributing" => Phase::Distributing,
        other => return Err(format!("it names an unknown reshard state {other:?}")),
    };
    let routing = match text(&body, "routing")?.as_str() {
        "modulo" => Routing::Modulo,
        "rendezvous" => Routing::Rendezvous,
        other => return Err(format!("it names an unknown routing {other:?}")),
    };
    let mut shards = Vec::new();
    for shard in body.get("shards").and_then(Value::as_array).ok_or("no shards")? {
        let state = text(shard, "state")?;
        let state = ShardState::from_name(&state).ok_or(format!("it names an unknown shard state {state:?}"))?;
        shards.push(ShardEntry { id: id(shard, "id")?, state });
    }
    let mut handovers = Vec::new();
    for handover in body.get("handovers").and_then(Value::as_array).ok_or("no handovers")? {
        let mut waits = Vec::new();
        for wait in handover.get("waits").and_then(Value::as_array).ok_or("no waits")? {
            waits.push((id(wait, "shard")?, number(wait, "fence")?));
        }
        handovers.push(Handover { shard: id(handover, "shard")?, after: number(handover, "after")?, waits });
    }
    let layout = Layout {
        dispatch,
        phase,
        count: number(&body, "count")? as usize,
        target: number(&body, "target")? as usize,
        routing,
        generation: number(&body, "generation")?,
        next_id: id(&body, "next_id")?.0,
        shards,
        handovers,
    };
    if layout.count > MAX_SHARDS || layout.shards.len() > MAX_SHARDS {
        return Err(format!("it records more than {MAX_SHARDS} shards"));
    }
    if layout.phase != Phase::Stable && !(1..=MAX_SHARDS).contains(&layout.target) {
        return Err(format!("it records a reshard to {} shards", layout.target));
    }
    if layout.shards.windows(2).any(|pair| pair[0].id >= pair[1].id)
        || layout.shards.iter().any(|shard| shard.id.0 >= layout.next_id)
    {
        return Err("its shard ids are not in order below next_id".to_string());
    }
    if layout.phase == Phase::Stable && layout.active() == 0 && !layout.shards.is_empty() {
        return Err("it records no active shard".to_string());
    }
    Ok(layout)
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
    fn version_1_layouts_are_still_read_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(&Os, dir.path()).unwrap(), None);
        let mut bytes = Vec::from(*MAGIC);
        bytes.extend_from_slice(&[1, 0, 1, 2, 3, 0, 0, 0, 7, 0, 0, 0]);
        bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
        fs::write(path(dir.path()), &bytes).unwrap();
        let layout = read(&Os, dir.path()).unwrap().unwrap();
        assert_eq!(
            (layout.dispatch, layout.phase, layout.count, layout.target, layout.routing),
            (Some(Dispatch::RoundRobin), Phase::Distributing, 3, 7, Routing::Modulo)
        );
        assert_eq!(layout.shards.len(), 3);
        bytes[12] = 4;
        fs::write(path(dir.path()), &bytes).unwrap();
        let err = read(&Os, dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("checksum"), "{err}");
        fs::write(path(dir.path()), &bytes[..10]).unwrap();
        assert!(read(&Os, dir.path()).unwrap_err().to_string().contains("10 bytes long"));
    }

    #[test]
    fn version_2_layouts_round_trip_with_states_and_hand_overs() {
        let dir = tempfile::tempdir().unwrap();
        let mut layout = Layout::stable(Some(Dispatch::Key), 2, 5);
        layout.next_id = 4;
        layout.shards[1].state = ShardState::Draining;
        layout.shards.push(ShardEntry { id: ShardId(3), state: ShardState::Provisioned });
        layout.handovers.push(Handover { shard: ShardId(0), after: 17, waits: vec![(ShardId(1), 9)] });
        write(&Os, dir.path(), &layout).unwrap();
        assert_eq!(read(&Os, dir.path()).unwrap(), Some(layout.clone()));
        assert!(!layout.is_plain());
        assert!(Layout::stable(Some(Dispatch::Key), 3, 0).is_plain());

        let bytes = fs::read(path(dir.path())).unwrap();
        assert_eq!(&bytes[..8], MAGIC);
        assert_eq!(bytes[8..12], [2, 0, 0, 0], "version 2, reserved");
        let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), HEAD + len + 4);
        assert_eq!(bytes[HEAD + len..], crc32c::crc32c(&bytes[..HEAD + len]).to_le_bytes());
        let body: Value = serde_json::from_slice(&bytes[HEAD..HEAD + len]).unwrap();
        assert_eq!(body["shards"][1], json!({"id": 1, "state": "draining"}));
        assert_eq!(body["handovers"][0], json!({"shard": 0, "after": 17, "waits": [{"shard": 1, "fence": 9}]}));
        assert_eq!((body["routing"].as_str(), body["generation"].as_u64()), (Some("rendezvous"), Some(5)));

        let mut damaged = bytes.clone();
        damaged[HEAD + 3] ^= 1;
        fs::write(path(dir.path()), &damaged).unwrap();
        assert!(read(&Os, dir.path()).unwrap_err().to_string().contains("checksum"));
        fs::write(path(dir.path()), &bytes[..bytes.len() - 1]).unwrap();
        assert!(read(&Os, dir.path()).unwrap_err().to_string().contains("head says"));
        layout.shards.swap(0, 1);
        write(&Os, dir.path(), &layout).unwrap();
        assert!(read(&Os, dir.path()).unwrap_err().to_string().contains("not in order"));
    }
}
