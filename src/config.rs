//! Opening a channel: [`Builder`], its settings, their defaults, and the
//! hopper-compatible [`channel`] and [`channel_with_explicit_capacity`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{Receiver, Sender};
use crate::err::OpenError;
use crate::segment::format::{FRAME_HEADER_LEN, HEADER_LEN};

/// Default bound on the in-memory queue, in items.
pub const DEFAULT_MEMORY_CAPACITY: usize = 4096;

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
/// [`Builder::min_free_bytes`] is set.
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
    /// Never: the OS writes pages back when it likes. [`Sender::flush`]
    /// hands buffered bytes to the OS only. The default.
    #[default]
    Never,
    /// A background thread syncs the active segment at this interval (at
    /// least 1 ms); [`Sender::flush`] syncs too.
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
/// [`Builder::open`] refuses one that was not compiled in.
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
    /// levels; [`Builder::open`] refuses a level above 22. Better ratios
    /// than LZ4, more CPU.
    Zstd {
        /// The compression level.
        level: i32,
    },
}

/// The settings a channel runs with, checked by [`Builder::open`].
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
    /// Codec for segment data.
    pub(crate) compression: Compression,
    /// Bound on the bytes of set-aside files.
    pub(crate) max_set_aside_bytes: u64,
    /// The item type, checked against the one the channel recorded. Its
    /// name is filled in by the open path, which knows `T`.
    pub(crate) identity: crate::identity::TypeIdentity,
    /// Every file operation goes through here: the OS, or a test's
    /// fault-injecting stand-in.
    pub(crate) fs: crate::storage::Fs,
    /// Whether a segment that cannot be read is retried rather than given
    /// up (its records counted as lost): for the channels a reshard moves
    /// items through, where a loss would go unseen; the reshard fails
    /// with an error instead, and the next open tries again.
    pub(crate) retry_unreadable: bool,
}

/// Opens a channel with every setting spelled out.
///
/// Settings left alone keep the defaults named by the `DEFAULT_*`
/// constants. Each method takes and returns the builder.
///
/// ```
/// use sump::{Builder, WhenFull};
///
/// let dir = tempfile::tempdir()?;
/// let (tx, rx) = Builder::new("events", dir.path())
///     .memory_capacity(1_000)
///     .segment_bytes(1 << 20)
///     .max_disk_bytes(64 << 20)
///     .when_full(WhenFull::DropOldest)
///     .open::<String>()?;
/// tx.send("hello".to_string())?;
/// assert_eq!(rx.recv()?, "hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a Builder does nothing until `open` is called"]
pub struct Builder {
    /// The channel's name: its files live in `dir/name/`.
    name: String,
    /// The directory holding the channel's directory.
    dir: PathBuf,
    /// Everything else.
    settings: Settings,
}

impl Builder {
    /// Starts a builder for the channel `name` in `dir`, with every setting
    /// at its default. The name is checked by [`open`](Self::open).
    pub fn new(name: impl Into<String>, dir: impl AsRef<Path>) -> Builder {
        Builder {
            name: name.into(),
            dir: dir.as_ref().to_path_buf(),
            settings: Settings {
                memory_capacity: DEFAULT_MEMORY_CAPACITY,
                segment_bytes: DEFAULT_SEGMENT_BYTES,
                max_disk_bytes: DEFAULT_MAX_DISK_BYTES,
                max_segments: DEFAULT_MAX_SEGMENTS,
                min_free_bytes: 0,
                when_full: WhenFull::default(),
                durability: Durability::default(),
                sync: SyncPolicy::default(),
                compression: Compression::None,
                max_set_aside_bytes: DEFAULT_MAX_SET_ASIDE_BYTES,
                identity: crate::identity::TypeIdentity::default(),
                fs: crate::storage::os(),
                retry_unreadable: false,
            },
        }
    }

    /// Bounds the in-memory queue to `items` items (default
    /// [`DEFAULT_MEMORY_CAPACITY`]). Zero is allowed: every item then goes
    /// through disk.
    pub fn memory_capacity(mut self, items: usize) -> Builder {
        self.settings.memory_capacity = items;
        self
    }

    /// Seals the active segment and starts a new one before it would grow
    /// past `bytes` (default [`DEFAULT_SEGMENT_BYTES`]). It also bounds the
    /// largest item that can go to disk, and so the receiver's read buffer
    /// at its largest.
    pub fn segment_bytes(mut self, bytes: u64) -> Builder {
        self.settings.segment_bytes = bytes;
        self
    }

    /// Bounds the bytes of all segment files of this channel (default
    /// [`DEFAULT_MAX_DISK_BYTES`]). At the bound, [`WhenFull`] decides.
    pub fn max_disk_bytes(mut self, bytes: u64) -> Builder {
        self.settings.max_disk_bytes = bytes;
        self
    }

    /// Bounds the number of segment files, the active one included (default
    /// [`DEFAULT_MAX_SEGMENTS`]). At the bound, [`WhenFull`] decides.
    pub fn max_segments(mut self, segments: usize) -> Builder {
        self.settings.max_segments = segments;
        self
    }

    /// Treats the disk as full while the filesystem holding the channel has
    /// less than `bytes` bytes free (after the record to be written), so a
    /// channel backs off before it fills the disk for everyone else.
    /// Disabled by default (0). The free space is read with `statvfs` at
    /// most every [`FREE_SPACE_CHECK_INTERVAL`] and after every MiB written.
    pub fn min_free_bytes(mut self, bytes: u64) -> Builder {
        self.settings.min_free_bytes = bytes;
        self
    }

    /// What a send does when memory and disk are at their limits (default
    /// [`WhenFull::Block`]).
    pub fn when_full(mut self, policy: WhenFull) -> Builder {
        self.settings.when_full = policy;
        self
    }

    /// What the disk tier promises across restarts (default
    /// [`Durability::Overflow`]).
    pub fn durability(mut self, durability: Durability) -> Builder {
        self.settings.durability = durability;
        self
    }

    /// When segment bytes are pushed to stable storage (default
    /// [`SyncPolicy::Never`]).
    pub fn sync(mut self, policy: SyncPolicy) -> Builder {
        self.settings.sync = policy;
        self
    }

    /// Compresses segment data per block of records (default
    /// [`Compression::None`]); see [`Compression`].
    pub fn compression(mut self, compression: Compression) -> Builder {
        self.settings.compression = compression;
        self
    }

    /// Bounds the bytes of damaged segment files kept aside for
    /// inspection (default [`DEFAULT_MAX_SET_ASIDE_BYTES`]); past it the
    /// oldest are removed, with a warning. They are not counted in
    /// [`max_disk_bytes`](Self::max_disk_bytes); [`Stats::set_aside_bytes`](crate::Stats::set_aside_bytes)
    /// reports them. 0 keeps none.
    pub fn max_set_aside_bytes(mut self, bytes: u64) -> Builder {
        self.settings.max_set_aside_bytes = bytes;
        self
    }

    /// The version of the item type's encoding (default 0), recorded with
    /// the type's name when the channel is created. Raise it when a type
    /// keeps its name but changes its fields: a durable channel opened
    /// with another name or version fails with
    /// [`OpenError::TypeMismatch`] and changes nothing on disk.
    ///
    /// ```
    /// use sump::{Builder, Durability, OpenError};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let open = |version| Builder::new("jobs", dir.path()).durability(Durability::Persistent).schema_version(version);
    /// drop(open(1).open::<u64>()?);
    /// assert!(matches!(open(2).open::<u64>(), Err(OpenError::TypeMismatch { .. })));
    /// assert!(matches!(open(1).open::<i64>(), Err(OpenError::TypeMismatch { .. })));
    /// drop(open(1).open::<u64>()?); // the channel is as it was
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn schema_version(mut self, version: u32) -> Builder {
        self.settings.identity.schema = version;
        self
    }

    /// Opens a durable channel even if it holds items of another type or
    /// schema version, and records the new one: a deliberate migration,
    /// for a type whose encoding can read the old items. Items that do not
    /// decode are skipped and counted in [`Stats::corrupt`](crate::Stats::corrupt).
    pub fn allow_type_change(mut self) -> Builder {
        self.settings.identity.allow_change = true;
        self
    }

    /// Does every file operation through `fs` (tests inject faults).
    #[cfg(test)]
    pub(crate) fn storage(mut self, fs: crate::storage::Fs) -> Builder {
        self.settings.fs = fs;
        self
    }

    /// Opens the channel: creates `dir/name/` if missing, takes its lock,
    /// and either discards the segments a previous run left there
    /// ([`Durability::Overflow`]) or recovers them (the durable modes).
    /// Files the crate did not create are left alone.
    ///
    /// # Errors
    ///
    /// - [`OpenError::InvalidName`] for an empty name, one with `/`, `\` or
    ///   NUL, or `.` and `..`;
    /// - [`OpenError::InvalidConfig`] when a segment cannot hold one empty
    ///   record, or `max_disk_bytes` cannot hold one segment header and
    ///   record, or `max_segments` is zero, or the [`Compression`] codec
    ///   was not compiled in, or `dir/name/` holds a sharded channel (open
    ///   it with [`Builder::sharded`]);
    /// - [`OpenError::Locked`] while the channel is open elsewhere;
    /// - [`OpenError::TypeMismatch`] when a durable channel holds another
    ///   item type (see [`schema_version`](Self::schema_version));
    /// - [`OpenError::Io`] when the directory or its files cannot be used.
    pub fn open<T>(self) -> Result<(Sender<T>, Receiver<T>), OpenError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        self.settings.check()?;
        crate::dir::validate_name(&self.name)?;
        if crate::shard::is_sharded(&*self.settings.fs, &self.dir.join(&self.name)) {
            return Err(OpenError::InvalidConfig {
                reason: format!(
                    "{} holds a sharded channel; open it with Builder::sharded",
                    self.dir.join(&self.name).display()
                ),
            });
        }
        crate::open::open(&self.dir, &self.name, self.settings)
    }

    /// The name, the directory and the settings.
    pub(crate) fn into_parts(self) -> (String, PathBuf, Settings) {
        (self.name, self.dir, self.settings)
    }
}

impl Settings {
    /// Refuses settings no channel can run with; see [`Builder::open`].
    pub(crate) fn check(&self) -> Result<(), OpenError> {
        let settings = self;
        let block = if settings.compression == Compression::None { 0 } else { crate::segment::block::BLOCK_OVERHEAD };
        let smallest = (HEADER_LEN + FRAME_HEADER_LEN) as u64 + block;
        let invalid = |reason: String| Err(OpenError::InvalidConfig { reason });
        if settings.segment_bytes < smallest {
            return invalid(format!(
                "segment_bytes is {}, but a segment needs at least {smallest} bytes to hold one record",
                settings.segment_bytes
            ));
        }
        if settings.max_disk_bytes < smallest {
            return invalid(format!(
                "max_disk_bytes is {}, but at least {smallest} bytes are needed to hold one record",
                settings.max_disk_bytes
            ));
        }
        if settings.max_segments == 0 {
            return invalid("max_segments is 0, but the active segment needs one".to_string());
        }
        if let Compression::Zstd { level } = settings.compression {
            if level > 22 {
                return invalid(format!("Zstandard compression level {level} is above the highest, 22"));
            }
        }
        if let Err(feature) =
            crate::segment::block::codec_readable(crate::segment::block::codec_id(settings.compression))
        {
            return invalid(format!(
                "compression {:?} needs the `{feature}` feature of sump, which this build does not include",
                settings.compression
            ));
        }
        Ok(())
    }
}

/// Opens the channel `name` in `dir` with default settings.
///
/// The hopper-compatible entry point: the same as
/// `Builder::new(name, dir).open()`.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let (tx, rx) = sump::channel::<u64>("numbers", dir.path())?;
/// tx.send(7)?;
/// drop(tx);
/// assert_eq!(rx.iter().collect::<Vec<_>>(), vec![7]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// As [`Builder::open`].
pub fn channel<T>(name: &str, dir: impl AsRef<Path>) -> Result<(Sender<T>, Receiver<T>), OpenError>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    Builder::new(name, dir).open()
}

/// hopper's floor on the size of one of its queue files (1 MiB), applied by
/// [`channel_with_explicit_capacity`].
const HOPPER_MIN_FILE_BYTES: u64 = 1 << 20;

/// Opens the channel `name` in `dir` with hopper's three limits.
///
/// A drop-in for hopper 0.4's function of the same name: every argument
/// set hopper accepts is accepted, and where sump cannot use a value
/// literally, hopper's own floor (or the nearest one sump can use) applies:
///
/// | argument | becomes | floor |
/// |---|---|---|
/// | `max_memory_bytes` | the in-memory bound in items: `max_memory_bytes / size_of::<T>()` | 1 item (hopper's) |
/// | `max_segment_bytes` (hopper: `max_disk_bytes`, per file) | [`Builder::segment_bytes`] | 1 MiB (hopper's) |
/// | `max_segments` (hopper: `max_disk_files`) | [`Builder::max_segments`] | 1, the active segment (hopper accepts 0) |
///
/// The disk bound is then segment bytes times segments. Only the inline
/// size of `T` counts against memory; heap data an item owns (a
/// `String`'s bytes) does not. A zero-sized `T` counts as one byte.
///
/// Unlike hopper, an item is never lost at the disk limit: the send blocks
/// ([`WhenFull::Block`]) until the receiver frees space; and the channel
/// keeps hopper's semantics of disk as scratch space
/// ([`Durability::Overflow`]).
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let (tx, rx) = sump::channel_with_explicit_capacity::<u64>("n", dir.path(), 64, 1 << 16, 4)?;
/// for i in 0..100 {
///     tx.send(i)?; // 8 items fit in 64 bytes of memory; the rest spill
/// }
/// assert!(tx.stats().spilled > 0);
/// assert_eq!(rx.try_iter().count(), 100);
///
/// // hopper's own tests use limits like these, below what a segment needs:
/// let (tx, rx) = sump::channel_with_explicit_capacity::<u64>("tiny", dir.path(), 8, 8, 0)?;
/// tx.send(7)?;
/// assert_eq!(rx.recv()?, 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// As [`Builder::open`], except that no limit is refused.
pub fn channel_with_explicit_capacity<T>(
    name: &str,
    dir: impl AsRef<Path>,
    max_memory_bytes: usize,
    max_segment_bytes: usize,
    max_segments: usize,
) -> Result<(Sender<T>, Receiver<T>), OpenError>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    let items = (max_memory_bytes / std::mem::size_of::<T>().max(1)).max(1);
    let segment_bytes = (max_segment_bytes as u64).max(HOPPER_MIN_FILE_BYTES);
    let max_segments = max_segments.max(1);
    Builder::new(name, dir)
        .memory_capacity(items)
        .segment_bytes(segment_bytes)
        .max_segments(max_segments)
        .max_disk_bytes(segment_bytes.saturating_mul(max_segments as u64))
        .open()
}
