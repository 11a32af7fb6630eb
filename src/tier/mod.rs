//! Tiered storage: sealed segments offloaded to a [`RemoteStore`] and
//! fetched back, in order, when the receiver reaches them.
//!
//! A channel opened with [`Builder::remote`](crate::Builder::remote)
//! starts offloading once its local disk holds more than
//! [`offload_after_bytes`](crate::Builder::offload_after_bytes) of
//! segments: a background thread
//! (`sump-tier`) copies sealed segments to the store, newest first, and
//! deletes the local copy once the store has confirmed it. The segments the
//! receiver will read next stay local, and the thread fetches remote ones
//! back ahead of the receiver ([`fetch_ahead`](crate::Builder::fetch_ahead)
//! of them), so the receiver sees one FIFO order across memory, local and
//! remote segments. [`max_disk_bytes`](crate::Builder::max_disk_bytes)
//! bounds what senders write locally; a fetch of the segment the receiver
//! reads next may take the local disk over it by that one segment. A remote segment is read back once and then deleted
//! from the store.
//!
//! # The lifecycle
//!
//! Every segment the tier touches has a [`TierState`], persisted in the
//! tier file `sump.tier` (see `FORMAT.md`) before the step it announces is
//! taken, so that a crash anywhere leaves a state recovery knows how to go
//! on from:
//!
//! ```text
//! Local ─► CopyStarted ─► CopyFinished ─► LocalDeleted ◄─► Fetched ─► Read ─► (gone)
//!   │          │               │               │              │
//!   └──────────┴───────────────┴───────────────┴──────────────┴─► Read (consumed, lost or dropped)
//! ```
//!
//! (`Fetched` goes back to `LocalDeleted` only at open, when the fetched
//! copy was lost in a crash.)
//!
//! - `CopyStarted`: the upload is under way; the local file is the copy.
//!   A crash here uploads again. The object's key is made of the
//!   channel's id, the segment's id, the CRC32C of its bytes and a number
//!   drawn at open: a retry in the same run overwrites its own object,
//!   and nothing another run uploaded (a killed process's upload may land
//!   late) ever replaces the copy recorded; such leftovers are swept (see
//!   below). Only the recorded key is ever fetched, so no segment is
//!   delivered twice.
//! - `CopyFinished`: the store confirmed the object's size (and, for S3,
//!   the upload's `Content-MD5`); the CRC32C of the bytes uploaded is
//!   recorded, and every fetch is checked against it. Only now may the
//!   local copy go.
//! - `LocalDeleted`: the segment exists only in the store.
//! - `Fetched`: a full copy is local again, and still in the store.
//! - `Read`: every record was consumed (or given up): the local copy is
//!   deleted, then the remote one, and the entry leaves the file.
//!
//! At open, before its first upload, and then every ten minutes, the tier
//! lists the channel's objects in the store and deletes those no entry
//! accounts for: an upload a killed process had in flight can land (or
//! show up in the store's listing) after its entry was settled, and must
//! not stay in the store for ever.
//!
//! A transition the table does not allow is an error
//! ([`TierState::check`]), never a silent overwrite.
//!
//! # Failures
//!
//! A store that is down or slow never blocks a sender while local space
//! remains: uploads run on their own thread and retry with backoff (100 ms
//! doubling to 5 s). When the local bound is reached and offloading cannot
//! keep up, [`WhenFull`](crate::WhenFull) applies as without a store. A
//! fetch that fails is retried the same way, and the receiver waits for it
//! (the next item is in that segment). An object that is missing, or whose
//! bytes fail the recorded CRC, costs only its records: they are counted
//! in [`Stats::lost`](crate::Stats::lost), logged, and reading goes on.

mod dir_store;
pub(crate) mod file;
#[cfg(feature = "s3")]
mod s3;
pub(crate) mod store;

pub use dir_store::DirStore;
#[cfg(feature = "s3")]
pub use s3::{S3Config, S3Store, DEFAULT_S3_TIMEOUT};
pub use store::RemoteStore;

use std::fmt;
use std::io;
use std::sync::Arc;

/// Where one segment stands in the tiered lifecycle (see the module
/// documentation of [`crate::tier`] for the diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TierState {
    /// Only on the local disk: the tier has not touched it.
    Local,
    /// Being copied to the store; the local file is the copy.
    CopyStarted,
    /// Copied and confirmed; the local file may go.
    CopyFinished,
    /// Only in the store.
    LocalDeleted,
    /// Fetched back: local again, and still in the store.
    Fetched,
    /// Consumed (or given up): both copies are being deleted.
    Read,
}

impl TierState {
    /// Whether the lifecycle allows going from `self` to `next`. Staying
    /// in a state is allowed (every step is idempotent).
    #[must_use]
    pub fn can_become(self, next: TierState) -> bool {
        use TierState::*;
        self == next
            || matches!(
                (self, next),
                (Local, CopyStarted)
                    | (CopyStarted, CopyFinished)
                    | (CopyFinished, LocalDeleted)
                    | (LocalDeleted, Fetched)
                    // The fetched copy was lost in a crash: fetch again.
                    | (Fetched, LocalDeleted)
                    | (Local | CopyStarted | CopyFinished | LocalDeleted | Fetched, Read)
            )
    }

    /// `next` if the lifecycle allows it.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidData`] naming both states, for a transition
    /// the table does not allow.
    pub fn check(self, next: TierState) -> io::Result<TierState> {
        if self.can_become(next) {
            Ok(next)
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("illegal segment lifecycle transition from {self:?} to {next:?}"),
            ))
        }
    }

    /// Whether a full copy of the segment is on the local disk.
    #[must_use]
    pub fn is_local(self) -> bool {
        !matches!(self, TierState::LocalDeleted | TierState::Read)
    }

    /// Whether the store may hold an object for the segment.
    #[must_use]
    pub fn in_store(self) -> bool {
        self != TierState::Local
    }

    /// The state's name as `FORMAT.md` and `sump ls` spell it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            TierState::Local => "local",
            TierState::CopyStarted => "copy-started",
            TierState::CopyFinished => "copy-finished",
            TierState::LocalDeleted => "remote",
            TierState::Fetched => "fetched",
            TierState::Read => "read",
        }
    }

    /// The state named `name` (see [`name`](Self::name)).
    #[must_use]
    pub fn from_name(name: &str) -> Option<TierState> {
        [
            TierState::Local,
            TierState::CopyStarted,
            TierState::CopyFinished,
            TierState::LocalDeleted,
            TierState::Fetched,
            TierState::Read,
        ]
        .into_iter()
        .find(|state| state.name() == name)
    }
}

impl fmt::Display for TierState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The remote tier a channel was opened with.
#[derive(Clone)]
pub(crate) struct RemoteSettings {
    /// The store.
    pub(crate) store: Arc<dyn RemoteStore>,
    /// Local segment bytes above which sealed segments are offloaded.
    pub(crate) offload_after_bytes: u64,
    /// Bound on the bytes held in the store.
    pub(crate) max_remote_bytes: u64,
    /// Remote segments fetched ahead of the receiver.
    pub(crate) fetch_ahead: usize,
}

impl fmt::Debug for RemoteSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteSettings")
            .field("store", &self.store)
            .field("offload_after_bytes", &self.offload_after_bytes)
            .field("max_remote_bytes", &self.max_remote_bytes)
            .field("fetch_ahead", &self.fetch_ahead)
            .finish()
    }
}

/// What the keys of segment `id` of channel `channel` start with.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn object_prefix(channel: crate::ChannelId, id: u64) -> String {
    format!("{channel}-{id:016x}-")
}

/// The key of an upload by the run `run` of bytes whose CRC32C is `crc`:
/// a retry in the same run overwrites the same object; a segment recovery
/// rewrote, or an upload of an earlier run (whose process may have died
/// with it in flight), never replaces the one recorded.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn object_key(prefix: &str, crc: u32, run: u64) -> String {
    format!("{prefix}{crc:08x}-{run:016x}.seg")
}

#[cfg(test)]
mod tests {
    use super::TierState::{self, *};

    const ALL: [TierState; 6] = [Local, CopyStarted, CopyFinished, LocalDeleted, Fetched, Read];

    #[test]
    fn the_lifecycle_allows_exactly_its_table() {
        let allowed = [
            (Local, CopyStarted),
            (CopyStarted, CopyFinished),
            (CopyFinished, LocalDeleted),
            (LocalDeleted, Fetched),
            (Fetched, LocalDeleted),
            (Local, Read),
            (CopyStarted, Read),
            (CopyFinished, Read),
            (LocalDeleted, Read),
            (Fetched, Read),
        ];
        for from in ALL {
            for to in ALL {
                let expected = from == to || allowed.contains(&(from, to));
                assert_eq!(from.can_become(to), expected, "{from:?} -> {to:?}");
                assert_eq!(from.check(to).is_ok(), expected, "{from:?} -> {to:?}");
            }
        }
        // In particular: a local copy never goes before the remote one is
        // confirmed, and nothing comes back from Read.
        assert!(!CopyStarted.can_become(LocalDeleted));
        assert!(ALL.iter().all(|&to| to == Read || !Read.can_become(to)));
        let err = Read.check(Fetched).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("Read to Fetched"), "{err}");
    }

    #[test]
    fn state_names_parse_back() {
        for state in ALL {
            assert_eq!(TierState::from_name(state.name()), Some(state));
        }
        assert_eq!(TierState::from_name("elsewhere"), None);
    }
}
