//! Opening a channel: [`Builder`], which collects the [`Settings`] and
//! checks them, and the hopper-compatible [`channel`] and
//! [`channel_with_explicit_capacity`].

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{Receiver, Sender};
use crate::err::OpenError;
use crate::options::{
    Compression, Durability, Settings, SyncPolicy, WhenFull, DEFAULT_GROUP_COMMIT_WAIT, DEFAULT_MAX_DISK_BYTES,
    DEFAULT_MAX_SEGMENTS, DEFAULT_MAX_SET_ASIDE_BYTES, DEFAULT_MEMORY_CAPACITY, DEFAULT_SEGMENT_BYTES,
};
use crate::segment::format::{FRAME_OVERHEAD, HEADER_LEN};

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
                group_commit_wait: DEFAULT_GROUP_COMMIT_WAIT,
                compression: Compression::None,
                max_set_aside_bytes: DEFAULT_MAX_SET_ASIDE_BYTES,
                identity: crate::identity::TypeIdentity::default(),
                fs: crate::storage::os(),
                retry_unreadable: false,
                labels: None,
                remote: None,
                offload_after_bytes: None,
                max_remote_bytes: u64::MAX,
                fetch_ahead: crate::options::DEFAULT_FETCH_AHEAD,
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
    /// most every [`FREE_SPACE_CHECK_INTERVAL`](crate::FREE_SPACE_CHECK_INTERVAL) and after every MiB written.
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

    /// Under [`SyncPolicy::Always`], the longest the sender that leads a
    /// group commit waits for other senders to append before it syncs
    /// for all of them (default [`DEFAULT_GROUP_COMMIT_WAIT`], 1 ms), like
    /// BookKeeper's `journalMaxGroupWaitMSec` or Postgres's
    /// `commit_delay`. Zero never waits.
    ///
    /// The wait adapts: the leader waits only until as many records are
    /// waiting for a sync as there were when the last sync finished (the
    /// senders it released, sending again), and never longer than that
    /// sync took. A lone sender never waits; a group whose senders all
    /// come back ends the wait at once; a group that shrank pays at most
    /// one sync's time, once, and the next round expects the smaller
    /// group. So a send's latency grows by at most one sync, and only
    /// when senders stop.
    ///
    /// Measured on a VM whose fsync takes about 0.2 ms (`cargo bench
    /// --bench durable`, 32 senders of 64-byte items, three runs): with
    /// the default, 32.0 records per sync and 99,700 to 102,600 items/s,
    /// 18.4x to 19.8x one sender's 5,200 to 5,500; with no wait, 22.8 to
    /// 23.0 records per sync and 82,400 to 83,000 items/s (15.3x to
    /// 15.9x). A cap of 100 µs did as well as 1 ms there, because the
    /// sync, not the cap, bounds the wait; a larger cap matters where a
    /// sync costs milliseconds.
    pub fn group_commit_wait(mut self, wait: std::time::Duration) -> Builder {
        self.settings.group_commit_wait = wait;
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

    /// Offloads sealed segments to `store` once the local disk holds more
    /// than [`offload_after_bytes`](Self::offload_after_bytes), and
    /// fetches them back, in order, as the receiver reaches them: the
    /// backlog can then be as large as the store, while the local disk
    /// holds at most [`max_disk_bytes`](Self::max_disk_bytes). See
    /// [`crate::tier`] for the lifecycle and its failures; `FORMAT.md`
    /// for the tier file.
    ///
    /// Objects are keyed by the channel's [`ChannelId`](crate::ChannelId)
    /// and the segment's id, so several channels can share a store. A
    /// durable channel whose tier file lists segments must be opened with
    /// its store: an open without it fails with
    /// [`OpenError::InvalidConfig`]. In
    /// [`Durability::Overflow`] mode the store holds scratch space, and a
    /// new run deletes what an old one left there.
    ///
    /// ```
    /// use sump::{Builder, DirStore, Durability};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = Builder::new("events", dir.path().join("local"))
    ///     .durability(Durability::Persistent)
    ///     .memory_capacity(0)
    ///     .segment_bytes(64 << 10)
    ///     .max_disk_bytes(1 << 20)
    ///     .offload_after_bytes(256 << 10)
    ///     .remote(DirStore::create(dir.path().join("remote"))?)
    ///     .open::<Vec<u8>>()?;
    /// for _ in 0..4_000 {
    ///     tx.send(vec![7u8; 1_000])?; // 4 MB: four times the local bound
    /// }
    /// for _ in 0..4_000 {
    ///     assert_eq!(rx.recv()?.len(), 1_000);
    /// }
    /// assert!(rx.stats().uploads > 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remote(mut self, store: impl crate::tier::RemoteStore) -> Builder {
        self.settings.remote = Some(std::sync::Arc::new(store));
        self
    }

    /// Local segment bytes above which sealed segments are offloaded to
    /// the [`remote`](Self::remote) store (default: half of
    /// [`max_disk_bytes`](Self::max_disk_bytes)). The newest sealed
    /// segments go first; the oldest [`fetch_ahead`](Self::fetch_ahead)
    /// plus one, which the receiver reads next, stay local. It must be
    /// below `max_disk_bytes`, which bounds what senders write locally (a
    /// fetch of the segment the receiver reads next may go over it by that
    /// segment), and
    /// `max_disk_bytes` and `max_segments` must allow at least
    /// `fetch_ahead + 3` segments.
    pub fn offload_after_bytes(mut self, bytes: u64) -> Builder {
        self.settings.offload_after_bytes = Some(bytes);
        self
    }

    /// Bounds the bytes the channel keeps in the [`remote`](Self::remote)
    /// store (default: no bound). At the bound nothing more is offloaded,
    /// so the local disk fills, and at [`max_disk_bytes`](Self::max_disk_bytes)
    /// [`WhenFull`] decides, as without a store.
    pub fn max_remote_bytes(mut self, bytes: u64) -> Builder {
        self.settings.max_remote_bytes = bytes;
        self
    }

    /// How many remote segments are fetched ahead of the segment the
    /// receiver is reading (default [`DEFAULT_FETCH_AHEAD`](crate::DEFAULT_FETCH_AHEAD);
    /// 0 counts as 1). The segment being read and the next one are fetched
    /// whatever the local bound; the others only while the local disk is
    /// under [`offload_after_bytes`](Self::offload_after_bytes).
    pub fn fetch_ahead(mut self, segments: usize) -> Builder {
        self.settings.fetch_ahead = segments;
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
        if crate::shard::layout::is_sharded(&*self.settings.fs, &self.dir.join(&self.name)) {
            return Err(OpenError::InvalidConfig {
                reason: format!(
                    "{} holds a sharded channel; open it with Builder::sharded",
                    self.dir.join(&self.name).display()
                ),
            });
        }
        let mut settings = self.settings;
        settings.labels = Some(crate::options::MetricLabels { channel: self.name.clone(), shard: None });
        crate::open::open(&self.dir, &self.name, settings)
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
        let smallest = (HEADER_LEN + FRAME_OVERHEAD) as u64 + block;
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
        if settings.remote.is_some() {
            // The oldest `fetch_ahead + 1` sealed segments stay local, and
            // the active one: with no room for one more, nothing could
            // ever be offloaded.
            let ahead = settings.fetch_ahead.max(1);
            let kept = (ahead as u64).saturating_add(3);
            if settings.max_disk_bytes / settings.segment_bytes.max(1) < kept {
                return invalid(format!(
                    "max_disk_bytes ({}) holds fewer than fetch_ahead + 3 = {kept} segments of {} bytes \
                     (fetch_ahead counts as {ahead}): the segments kept local would leave none to offload",
                    settings.max_disk_bytes, settings.segment_bytes
                ));
            }
            if (settings.max_segments as u64) < kept {
                return invalid(format!(
                    "max_segments ({}) is below fetch_ahead + 3 = {kept} (fetch_ahead counts as {ahead}): \
                     the segments kept local would leave none to offload",
                    settings.max_segments
                ));
            }
        }
        if let (Some(_), Some(offload)) = (&settings.remote, settings.offload_after_bytes) {
            if offload >= settings.max_disk_bytes {
                return invalid(format!(
                    "offload_after_bytes is {offload}, but it must be below max_disk_bytes ({}), \
                     or the local bound is reached before anything is offloaded",
                    settings.max_disk_bytes
                ));
            }
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
