//! A multi-producer, single-consumer channel that spills to disk.
//!
//! `sump` has the shape of [`std::sync::mpsc`] and `crossbeam-channel`, but
//! its memory use stays bounded however far the receiver falls behind.
//! Items travel through a bounded in-memory queue; when it is full, further
//! items are encoded and appended to segment files in a directory, and read
//! back in order. A fully read segment is deleted, and once the disk
//! backlog is drained the channel goes back to memory only.
//!
//! # Hello, channel
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! let (tx, rx) = sump::channel::<String>("greetings", dir.path())?;
//!
//! let producer = std::thread::spawn(move || {
//!     for i in 0..3 {
//!         tx.send(format!("hello #{i}")).unwrap();
//!     }
//! });
//!
//! producer.join().unwrap();
//! assert_eq!(rx.iter().collect::<Vec<_>>(), ["hello #0", "hello #1", "hello #2"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Items must implement serde's `Serialize` and `DeserializeOwned`: the
//! items that spill are encoded with bincode. Items that stay in memory are
//! never encoded.
//!
//! # Spilling
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! let (tx, rx) = sump::Builder::new("spill", dir.path())
//!     .memory_capacity(100)
//!     .open::<u64>()?;
//!
//! for i in 0..10_000 {
//!     tx.send(i)?; // never blocks: 100 in memory, the rest on disk
//! }
//! let stats = tx.stats();
//! assert_eq!(stats.in_memory, 100);
//! assert_eq!(stats.on_disk, 9_900);
//!
//! drop(tx);
//! assert!(rx.iter().eq(0..10_000)); // in order, then disconnected
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Order
//!
//! The receiver sees one total order that keeps each sender's order. An
//! item never overtakes an item that went to disk before it: once anything
//! is on disk, later items follow it there until the receiver has caught
//! up.
//!
//! # Disconnection
//!
//! As in `std`: when every [`Sender`] is gone, the receiver gets every
//! remaining item, from memory and disk, then [`RecvError`]. When the
//! [`Receiver`] is gone, sends fail and hand their item back.
//!
//! # Limits
//!
//! Memory holds at most [`Builder::memory_capacity`] items, plus a write
//! buffer and a read window of fixed size (in [`Durability::Overflow`],
//! up to 64 items decoded ahead from disk, and up to as many spilled items
//! as memory holds, at most 1,024 and 256 KiB of their frames, kept as
//! they were sent so that a receiver close behind need not read them
//! back), plus the receiver's read
//! buffer (256 KiB, or one record if larger). Disk holds at most
//! [`Builder::max_disk_bytes`] bytes in at most [`Builder::max_segments`]
//! files. When both are full, [`WhenFull`] decides: block the sender
//! (the default), drop the new item, or drop the oldest segment. Every
//! limit is checked before anything is written, so a refused send changes
//! nothing on disk.
//!
//! ```
//! use sump::{Builder, WhenFull};
//!
//! let dir = tempfile::tempdir()?;
//! let (tx, rx) = Builder::new("lossy", dir.path())
//!     .memory_capacity(1)
//!     .segment_bytes(64)
//!     .max_disk_bytes(64)
//!     .when_full(WhenFull::DropNewest)
//!     .open::<u32>()?;
//! for i in 0..100 {
//!     tx.send(i)?; // Ok even when dropped
//! }
//! let stats = tx.stats();
//! assert!(stats.dropped > 0);
//! assert_eq!(stats.sent + stats.dropped, 100);
//! # drop(rx);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Files
//!
//! A channel named `name` in `dir` owns `dir/name/`: a lock file, which
//! makes a second open of the same channel fail with [`OpenError::Locked`],
//! and segment files named `{id:020}.seg`. In [`Durability::Overflow`] (the
//! default) disk is scratch space: opening a channel discards old
//! segments, and closing it deletes its own; [`Durability::Persistent`]
//! and [`Durability::WriteAhead`] keep items across restarts. Files the crate did not create are never touched. Each segment
//! starts with a magic number and a format version, and each record carries
//! its length and a CRC32C; a damaged record is skipped, counted in
//! [`Stats::corrupt`], and never delivered. The byte layout is in
//! [`on_disk`].
//!
//! # Acknowledgement
//!
//! [`Receiver::peek_batch`] takes items that stay in the channel until
//! they are committed ([`Peeked::commit`], [`Peeked::commit_first`]);
//! dropped uncommitted, they come back first. Every item carries a
//! sequence number given at `send` ([`Peeked::seqs`]), unchanged across
//! restarts and crashes, so a sink can drop redeliveries. The
//! [`Drainer`] is built on this.
//!
//! # Async and metrics
//!
//! With the feature `async`, [`Sender::send_async`],
//! [`Receiver::recv_async`], [`Receiver::recv_many_async`] and
//! [`Receiver::stream`] serve the same channel to async code on any
//! executor; their futures are cancel-safe, and blocking and async calls
//! mix on one channel. With the feature `metrics`, every channel, shard
//! and drainer publishes its counters through the `metrics` facade (see
//! [`publish_metrics`] for the names).
//!
//! # Sharding and compression
//!
//! [`Builder::sharded`] opens N channels behind one router that keeps
//! each key's items in one shard, for parallel draining
//! ([`ShardedReceiver::drain`]); see [`ShardedBuilder`].
//! [`Builder::compression`] compresses segment data per block of records
//! (features `lz4` and `zstd`); see [`Compression`].

#![warn(missing_docs)]

mod batch;
mod builder;
mod channel;
mod channel_id;
mod core;
mod dir;
mod disk;
mod drain;
mod encoding;
mod err;
#[cfg(test)]
mod failure_tests;
#[cfg(test)]
mod fault_sweep;
#[cfg(test)]
mod fault_tests;
#[cfg(feature = "async")]
mod future;
mod identity;
mod index;
pub mod inspect;
#[cfg(all(feature = "metrics", not(loom)))]
mod metrics;
#[doc = include_str!("../FORMAT.md")]
pub mod on_disk {}
#[cfg(test)]
mod model_tests;
mod open;
mod options;
mod peeked;
mod progress;
mod recover;
mod segment;
mod sequence;
mod shard;
mod stats;
mod storage;
mod sync;
pub mod tier;

pub use crate::batch::Handle;
pub use crate::builder::{channel, channel_with_explicit_capacity, Builder};
pub use crate::channel::{IntoIter, Iter, Receiver, Sender, TryIter};
pub use crate::channel_id::ChannelId;
pub use crate::drain::{
    BoxError, BreakerState, ChannelSink, DrainError, DrainHandle, DrainStats, Drainer, JsonLinesSink, Numbers, Sink,
    SinkError, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, DEFAULT_BATCH_SIZE, DEFAULT_BREAKER_OPEN_FOR,
    DEFAULT_BREAKER_THRESHOLD, DEFAULT_LINGER, SHUTDOWN_GRACE,
};
#[cfg(feature = "nats")]
pub use crate::drain::{JetStreamSink, DEFAULT_DUPLICATE_WINDOW, DEFAULT_NATS_TIMEOUT};
#[cfg(feature = "redis")]
pub use crate::drain::{RedisSink, DEFAULT_REDIS_FIELD, DEFAULT_REDIS_TIMEOUT};
pub use crate::err::{
    CloseError, CommitError, OpenError, RecvError, RecvTimeoutError, SendError, SendTimeoutError, ShardError,
    TryRecvError, TrySendError,
};
#[cfg(feature = "async")]
pub use crate::future::{RecvFuture, RecvManyFuture, RecvStream, SendFuture};
#[cfg(all(feature = "metrics", not(loom)))]
pub use crate::metrics::{publish_metrics, METRICS_INTERVAL};
pub use crate::options::{
    Compression, Durability, SyncPolicy, WhenFull, DEFAULT_FETCH_AHEAD, DEFAULT_GROUP_COMMIT_WAIT,
    DEFAULT_MAX_DISK_BYTES, DEFAULT_MAX_SEGMENTS, DEFAULT_MAX_SET_ASIDE_BYTES, DEFAULT_MEMORY_CAPACITY,
    DEFAULT_SEGMENT_BYTES, FREE_SPACE_CHECK_INTERVAL,
};
pub use crate::peeked::Peeked;
pub use crate::shard::{
    Dispatch, ScalingPolicy, ShardId, ShardState, ShardStats, ShardedBuilder, ShardedDrainHandle, ShardedDrainer,
    ShardedReceiver, ShardedSender, DEFAULT_ADD_ABOVE, DEFAULT_CHECK_EVERY, DEFAULT_COOLDOWN, DEFAULT_DRAIN_BELOW,
    DEFAULT_SUSTAINED_FOR, MAX_SHARDS,
};
pub use crate::stats::Stats;
pub use crate::tier::{DirStore, RemoteStore, TierState};
#[cfg(feature = "s3")]
pub use crate::tier::{S3Config, S3Store, DEFAULT_S3_TIMEOUT};
