//! [`Stats`]: a snapshot of a channel's contents and counters.

/// A snapshot of a channel, from [`Sender::stats`](crate::Sender::stats) or
/// [`Receiver::stats`](crate::Receiver::stats).
///
/// Counters count since the channel was opened (items recovered from disk
/// by `open` are in `on_disk` but not in `sent`). When nothing is in
/// flight, under [`WhenFull::Block`](crate::WhenFull::Block) and
/// [`WhenFull::DropNewest`](crate::WhenFull::DropNewest)
/// `sent == received + in_memory + on_disk + corrupt + lost` (`DropNewest`
/// drops items before they count as sent); under
/// [`WhenFull::DropOldest`](crate::WhenFull::DropOldest), which drops items
/// already sent, `sent == received + in_memory + on_disk + corrupt + lost + dropped`.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let (tx, rx) = sump::Builder::new("s", dir.path()).memory_capacity(2).open::<u32>()?;
/// for i in 0..5 {
///     tx.send(i)?;
/// }
/// let stats = tx.stats();
/// assert_eq!((stats.sent, stats.in_memory, stats.on_disk, stats.spilled), (5, 2, 3, 3));
/// rx.recv()?;
/// assert_eq!(rx.stats().received, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Items in memory, waiting to be received.
    pub in_memory: usize,
    /// Items on disk, waiting to be received.
    pub on_disk: u64,
    /// Bytes of this channel's segment files.
    pub disk_bytes: u64,
    /// Segment files of this channel, the active one included.
    pub segments: usize,
    /// Items accepted into the channel (memory or disk).
    pub sent: u64,
    /// Items handed to the receiver.
    pub received: u64,
    /// Items that were written to disk because memory was full or older
    /// items were already on disk.
    pub spilled: u64,
    /// Items dropped by the [`WhenFull`](crate::WhenFull) policy: new
    /// items refused by `DropNewest`, and old items deleted by `DropOldest`.
    pub dropped: u64,
    /// Records skipped because they failed their checksum or did not
    /// decode; they are never delivered.
    pub corrupt: u64,
    /// Records lost because their segment file vanished (deleted by
    /// another program, or with the channel's directory) or could not be
    /// read; each loss is logged with the file's name.
    pub lost: u64,
    /// Damaged segment files set aside for inspection (`*.seg.corrupt*`),
    /// bounded by [`Builder::max_set_aside_bytes`](crate::Builder::max_set_aside_bytes).
    pub set_aside_files: usize,
    /// Bytes of those files.
    pub set_aside_bytes: u64,
    /// Syncs made by group commits under
    /// [`SyncPolicy::Always`](crate::SyncPolicy::Always) since open: with
    /// `spilled`, the records each sync covered on average.
    pub group_commits: u64,
    /// Sealed segments whose only copy is in the remote store (see
    /// [`Builder::remote`](crate::Builder::remote)); their records count in
    /// `on_disk`, their bytes not in `disk_bytes` (which is local only).
    pub remote_segments: usize,
    /// Bytes of those segments.
    pub remote_bytes: u64,
    /// Segments copied to the remote store since open.
    pub uploads: u64,
    /// Segments fetched back from it since open.
    pub fetches: u64,
    /// Failed calls to the remote store (and local steps of the remote
    /// tier) since open; each is retried with backoff.
    pub remote_failures: u64,
}
