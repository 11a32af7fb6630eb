//! The settings a channel runs with: the policies ([`WhenFull`],
//! [`Durability`], [`SyncPolicy`], [`Compression`]), their defaults, and
//! [`Settings`], which the builder fills in and every layer below reads.
//!
//! This module imports nothing above the storage seam, so every layer can
//! depend on it; checking settings is the open path's job
//! (`crate::builder`).

use std::time::Duration;

/// Default bound on the in-memory queue, in items.
pub const DEFAULT_MEMORY_CAPACITY: usize = 4096;

/// Default longest wait of a group commit for more senders to join it,
/// under [`SyncPolicy::Always`]; see
/// [`Builder::group_commit_wait`](crate::Builder::group_commit_wait).
pub const DEFAULT_GROUP_COMMIT_WAIT: Duration = Duration::from_millis(1);

/// Default size at which the active segment is sealed and a new one
/// started, in bytes (8 MiB).
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 << 20;

/// Default bound on all segment bytes of one channel (1 GiB).
pub const DEFAULT_MAX_DISK_BYTES: u64 = 1 << 30;

/// Default bound on the number of segment files, the active one included:
/// none beyond what [`DEFAULT_MAX_DISK_BYTES`] implies.
pub const DEFAULT_MAX_SEGMENTS: usize = usize::MAX;

/// Default bound on the bytes of set-aside (damaged) segment files a
/// channel keeps for inspection (64 MiB); the oldest are removed past it.
pub const DEFAULT_MAX_SET_ASIDE_BYTES: u64 = 64 << 20;

/// How often the free space of the channel's filesystem is read when
/// [`Builder::min_free_bytes`](crate::Builder::min_free_bytes) is set.
pub const FREE_SPACE_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// What a send does when memory and disk are both at their limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum WhenFull {
    /// `send` waits for space, `try_send` returns
    /// [`TrySendError::Full`](crate::TrySendError::Full), `send_timeout`
    /// waits until its deadline. Nothing is ever dropped. The default.
    #[default]
    Block,
    /// The new item is dropped and counted in [`Stats::dropped`](crate::Stats::dropped);
    /// the send still returns `Ok`.
    DropNewest,
    /// The oldest segment that the receiver has not started reading is
    /// deleted and its items counted in [`Stats::dropped`](crate::Stats::dropped);
    /// the new item is then written. Sealed segments go first; the active
    /// segment goes when it is the only candidate. When the receiver is
    /// reading the only segment, the new item is dropped instead.
    DropOldest,
}

/// What the disk tier promises across restarts.
///
/// | mode | clean restart | process crash (kill -9) | power loss |
/// |---|---|---|---|
/// | `Overflow` | nothing kept | nothing kept | nothing kept |
/// | `Persistent` | nothing lost, nothing delivered twice | items in memory lost; items on disk kept; items read since the last clean shutdown may come again | as a crash, less what the OS had not written back |
/// | `WriteAhead` | nothing lost, nothing delivered twice | nothing whose `send` returned is lost; items read since the last clean shutdown may come again | with [`SyncPolicy::Always`], as a crash |
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Disk is scratch space for overflow, as in hopper: opening a channel
    /// discards the segments a previous run left, and closing it deletes
    /// its own. The default.
    #[default]
    Overflow,
    /// Unread items survive a clean restart: `open` recovers the segments
    /// a previous run left, and a clean shutdown (every handle dropped, or
    /// [`Receiver::close`](crate::Receiver::close)) writes the in-memory
    /// queue to disk, in front of the backlog, and records how far the
    /// receiver read. Items in memory are not on disk until then.
    Persistent,
    /// Every item is written to the active segment (handed to the OS)
    /// before `send` returns, so a process crash loses nothing that was
    /// sent; with [`SyncPolicy::Always`] it is also on stable storage.
    /// Items then travel through disk only. Recovery and clean shutdown
    /// are as in `Persistent`. After a crash, items received since the
    /// last clean shutdown from segments not yet fully read are delivered
    /// again (at-least-once): at most the records of the segments the
    /// receiver had open, `segment_bytes` each.
    WriteAhead,
}

/// When segment bytes are pushed to stable storage (`fsync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SyncPolicy {
    /// Never: the OS writes pages back when it likes. [`Sender::flush`](crate::Sender::flush)
    /// hands buffered bytes to the OS only. The default.
    #[default]
    Never,
    /// A background thread syncs the active segment at this interval (at
    /// least 1 ms); [`Sender::flush`](crate::Sender::flush) syncs too.
    Interval(Duration),
    /// A send that writes to disk returns only once its record is on
    /// stable storage. Concurrent senders share one sync (group commit):
    /// a sync covers every record appended before it started.
    Always,
}

/// How segment data is compressed: per block of records, never per item.
///
/// The writer gathers records in its write buffer and compresses each
/// buffer's worth (up to 256 KiB of records) as one block when it writes
/// it out, so a backlog of small, similar items compresses well. A larger
/// record is a block of its own; one over 1 MiB is stored uncompressed. A block the codec
/// does not shrink is stored as is. The codec is recorded in each
/// segment's header, so a channel reopened with another setting still
/// reads its old segments, as long as this build includes their codec.
///
/// Each codec other than `None` needs the cargo feature of its name;
/// [`Builder::open`](crate::Builder::open) refuses one that was not compiled in.
///
/// When the receiver keeps up, blocks are small (the writer hands each
/// record to the reader as soon as it asks) and compression gains little;
/// it pays off when a backlog builds up, which is when disk space matters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    /// No compression. The default.
    #[default]
    None,
    /// LZ4 block compression (`lz4_flex`, feature `lz4`): fast, modest
    /// ratios.
    Lz4,
    /// Zstandard (`zstd`, feature `zstd`) at `level`: 1 to 22 (3 is the
    /// usual choice), 0 for zstd's default, negative for its faster
    /// levels; [`Builder::open`](crate::Builder::open) refuses a level above 22. Better ratios
    /// than LZ4, more CPU.
    Zstd {
        /// The compression level.
        level: i32,
    },
}

/// The settings a channel runs with, checked by [`Builder::open`](crate::Builder::open).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Bound on items in memory.
    pub(crate) memory_capacity: usize,
    /// Segment size limit in bytes.
    pub(crate) segment_bytes: u64,
    /// Bound on all segment bytes.
    pub(crate) max_disk_bytes: u64,
    /// Bound on segment files, the active one included.
    pub(crate) max_segments: usize,
    /// Free space the filesystem must keep; 0 for no check.
    pub(crate) min_free_bytes: u64,
    /// Policy at the limits.
    pub(crate) when_full: WhenFull,
    /// Durability mode.
    pub(crate) durability: Durability,
    /// Sync policy.
    pub(crate) sync: SyncPolicy,
    /// Longest a group commit waits for more senders to join it.
    pub(crate) group_commit_wait: std::time::Duration,
    /// Codec for segment data.
    pub(crate) compression: Compression,
    /// Bound on the bytes of set-aside files.
    pub(crate) max_set_aside_bytes: u64,
    /// The item type, checked against the one the channel recorded. Its
    /// name is filled in by the open path, which knows `T`.
    pub(crate) identity: TypeIdentity,
    /// Every file operation goes through here: the OS, or a test's
    /// fault-injecting stand-in.
    pub(crate) fs: crate::storage::Fs,
    /// Whether a segment that cannot be read is retried rather than given
    /// up (its records counted as lost): for the channels a reshard moves
    /// items through, where a loss would go unseen; the reshard fails
    /// with an error instead, and the next open tries again.
    pub(crate) retry_unreadable: bool,
    /// How the channel is named in published metrics (feature `metrics`):
    /// set by the open paths users call, `None` for a reshard's scratch
    /// channels, which are not published.
    pub(crate) labels: Option<MetricLabels>,
    /// The remote tier's store, if any.
    pub(crate) remote: Option<std::sync::Arc<dyn crate::tier::store::RemoteStore>>,
    /// Local bytes above which sealed segments are offloaded; `None` for
    /// half of `max_disk_bytes`.
    pub(crate) offload_after_bytes: Option<u64>,
    /// Bound on the bytes in the remote store.
    pub(crate) max_remote_bytes: u64,
    /// Remote segments fetched ahead of the receiver.
    pub(crate) fetch_ahead: usize,
}

/// Remote segments fetched ahead of the receiver unless
/// [`Builder::fetch_ahead`](crate::Builder::fetch_ahead) says otherwise.
pub const DEFAULT_FETCH_AHEAD: usize = 2;

/// How a channel is named in published metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetricLabels {
    /// The channel's name (a sharded channel's, for its shards).
    pub(crate) channel: String,
    /// The shard's index, for a shard of a sharded channel.
    pub(crate) shard: Option<usize>,
}

/// The item type a channel is opened with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct TypeIdentity {
    /// `std::any::type_name` of the item type; set by the open path.
    pub(crate) name: String,
    /// The user's schema version.
    pub(crate) schema: u32,
    /// Whether an open with another identity replaces the recorded one.
    pub(crate) allow_change: bool,
}
