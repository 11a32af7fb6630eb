//! Error types, one per operation, named as in `std::sync::mpsc` and
//! `crossbeam-channel`.
//!
//! Every error that carries an item gives it back with `into_inner()`, and
//! `Debug` never requires `T: Debug`: it prints `SendError(..)`. A send that
//! fails because the disk refused to write says so and carries the
//! [`io::Error`]; the item comes back either way.

use std::error::Error;
use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a send failed: the receiver is gone, or the disk refused the item.
enum Cause {
    Disconnected,
    Io(io::Error),
}

/// An error returned by [`Sender::send`](crate::Sender::send): the item could
/// not be sent and is handed back.
///
/// Either the receiver is gone ([`is_disconnected`](Self::is_disconnected)),
/// or the item had to go to disk and the write failed
/// ([`io_error`](Self::io_error)), in which case nothing of it was written.
pub struct SendError<T> {
    item: T,
    cause: Cause,
}

impl<T> SendError<T> {
    pub(crate) fn disconnected(item: T) -> SendError<T> {
        SendError { item, cause: Cause::Disconnected }
    }

    pub(crate) fn io(item: T, err: io::Error) -> SendError<T> {
        SendError { item, cause: Cause::Io(err) }
    }

    /// Separates the item from the cause.
    pub(crate) fn split(self) -> (T, SendError<()>) {
        (self.item, SendError { item: (), cause: self.cause })
    }

    /// Gives back the item that could not be sent.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = sump::channel::<String>("jobs", dir.path())?;
    /// drop(rx);
    /// let err = tx.send("hello".to_string()).unwrap_err();
    /// assert_eq!(err.into_inner(), "hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_inner(self) -> T {
        self.item
    }

    /// Whether the send failed because the receiver is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self.cause, Cause::Disconnected)
    }

    /// The I/O error, when the send failed because the disk refused it.
    pub fn io_error(&self) -> Option<&io::Error> {
        match &self.cause {
            Cause::Io(err) => Some(err),
            Cause::Disconnected => None,
        }
    }
}

impl SendError<()> {
    /// The same cause, carrying `item`.
    pub(crate) fn with_item<T>(self, item: T) -> SendError<T> {
        SendError { item, cause: self.cause }
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Disconnected => f.write_str("SendError(..)"),
            Cause::Io(err) => write!(f, "SendError(.., {err:?})"),
        }
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Disconnected => f.write_str("sending on a disconnected channel"),
            Cause::Io(err) => write!(f, "sending failed: could not write the item to disk: {err}"),
        }
    }
}

impl<T> Error for SendError<T> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.io_error().map(|err| err as &(dyn Error + 'static))
    }
}

/// An error returned by [`Sender::try_send`](crate::Sender::try_send).
pub enum TrySendError<T> {
    /// Memory and disk are both at their limits (and the channel is set to
    /// [`WhenFull::Block`](crate::WhenFull::Block)).
    Full(T),
    /// The receiver is gone.
    Disconnected(T),
    /// The item had to go to disk and the write failed; nothing of it was
    /// written.
    Io(T, io::Error),
}

impl<T> TrySendError<T> {
    /// Gives back the item that could not be sent.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(item) | TrySendError::Disconnected(item) | TrySendError::Io(item, _) => item,
        }
    }

    /// Whether the send failed because the channel was full.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(_))
    }

    /// Whether the send failed because the receiver is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, TrySendError::Disconnected(_))
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Disconnected(_) => f.write_str("Disconnected(..)"),
            TrySendError::Io(_, err) => write!(f, "Io(.., {err:?})"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("sending on a full channel"),
            TrySendError::Disconnected(_) => f.write_str("sending on a disconnected channel"),
            TrySendError::Io(_, err) => write!(f, "sending failed: could not write the item to disk: {err}"),
        }
    }
}

impl<T> Error for TrySendError<T> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            TrySendError::Io(_, err) => Some(err),
            _ => None,
        }
    }
}

/// An error returned by [`Sender::send_timeout`](crate::Sender::send_timeout).
pub enum SendTimeoutError<T> {
    /// Memory and disk stayed at their limits until the timeout.
    Timeout(T),
    /// The receiver is gone.
    Disconnected(T),
    /// The item had to go to disk and the write failed; nothing of it was
    /// written.
    Io(T, io::Error),
}

impl<T> SendTimeoutError<T> {
    /// Gives back the item that could not be sent.
    pub fn into_inner(self) -> T {
        match self {
            SendTimeoutError::Timeout(item) | SendTimeoutError::Disconnected(item) | SendTimeoutError::Io(item, _) => {
                item
            }
        }
    }

    /// Whether the send timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout(_))
    }

    /// Whether the send failed because the receiver is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, SendTimeoutError::Disconnected(_))
    }
}

impl<T> fmt::Debug for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => f.write_str("Timeout(..)"),
            SendTimeoutError::Disconnected(_) => f.write_str("Disconnected(..)"),
            SendTimeoutError::Io(_, err) => write!(f, "Io(.., {err:?})"),
        }
    }
}

impl<T> fmt::Display for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => f.write_str("timed out waiting on a full channel"),
            SendTimeoutError::Disconnected(_) => f.write_str("sending on a disconnected channel"),
            SendTimeoutError::Io(_, err) => write!(f, "sending failed: could not write the item to disk: {err}"),
        }
    }
}

impl<T> Error for SendTimeoutError<T> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            SendTimeoutError::Io(_, err) => Some(err),
            _ => None,
        }
    }
}

/// An error returned by [`Receiver::recv`](crate::Receiver::recv): every
/// sender is gone and every item has been received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvError;

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("receiving on an empty and disconnected channel")
    }
}

impl Error for RecvError {}

/// An error returned by [`Receiver::try_recv`](crate::Receiver::try_recv).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing to receive right now; senders remain.
    Empty,
    /// Every sender is gone and every item has been received.
    Disconnected,
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("receiving on an empty channel"),
            TryRecvError::Disconnected => f.write_str("receiving on an empty and disconnected channel"),
        }
    }
}

impl Error for TryRecvError {}

/// An error returned by [`Receiver::recv_timeout`](crate::Receiver::recv_timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvTimeoutError {
    /// Nothing arrived before the timeout; senders remain.
    Timeout,
    /// Every sender is gone and every item has been received.
    Disconnected,
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvTimeoutError::Timeout => f.write_str("timed out waiting on an empty channel"),
            RecvTimeoutError::Disconnected => f.write_str("receiving on an empty and disconnected channel"),
        }
    }
}

impl Error for RecvTimeoutError {}

/// An error returned when a channel cannot be opened.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// The channel name is empty, contains a path separator or NUL, or is
    /// `.` or `..`.
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A setting is out of range, such as a segment too small for one record.
    InvalidConfig {
        /// What is wrong, with the values involved.
        reason: String,
    },
    /// Another open channel, in this process or another, holds the lock.
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The directory or a file in it could not be created or read.
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The channel holds items of another type (or schema version) than
    /// the one it is opened with. Nothing on disk was changed; open it
    /// with the type it was written with, or set
    /// [`Builder::allow_type_change`](crate::Builder::allow_type_change)
    /// for a deliberate migration.
    TypeMismatch {
        /// The channel's directory.
        path: PathBuf,
        /// The item type recorded in the channel, with its schema version.
        recorded: String,
        /// The item type it was opened with, with its schema version.
        requested: String,
    },
}

impl OpenError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> OpenError {
        OpenError::Io { path: path.into(), source }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::InvalidName { name, reason } => write!(f, "invalid channel name {name:?}: {reason}"),
            OpenError::InvalidConfig { reason } => write!(f, "invalid channel settings: {reason}"),
            OpenError::Locked { path } => write!(
                f,
                "channel is already open (lock held on {}): close the other handle or process first",
                path.display()
            ),
            OpenError::Io { path, source } => write!(f, "cannot open channel at {}: {source}", path.display()),
            OpenError::TypeMismatch { path, recorded, requested } => write!(
                f,
                "channel at {} holds items of type {recorded}, but was opened for {requested}; nothing was \
                 changed (Builder::allow_type_change allows a deliberate migration)",
                path.display()
            ),
        }
    }
}

impl Error for OpenError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            OpenError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An error returned by [`Receiver::close`](crate::Receiver::close): some
/// items could not be written to disk and are still in memory.
#[derive(Debug)]
pub struct CloseError {
    /// Items that could not be persisted.
    pub(crate) unpersisted: usize,
    /// Why.
    pub(crate) source: io::Error,
}

impl CloseError {
    /// How many items could not be persisted.
    pub fn unpersisted(&self) -> usize {
        self.unpersisted
    }
}

impl fmt::Display for CloseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "closing the channel left {} items unpersisted: {}", self.unpersisted, self.source)
    }
}

impl Error for CloseError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// An error returned by [`Peeked::commit`](crate::Peeked::commit) and
/// [`Peeked::commit_first`](crate::Peeked::commit_first): the items are
/// committed (they are not received again by this receiver), but a
/// segment they were read from could neither be deleted nor recorded as
/// read, so they may be delivered again after a restart: at least once,
/// never lost.
#[derive(Debug)]
pub struct CommitError {
    /// Why.
    pub(crate) source: io::Error,
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the commit could not be recorded on disk, so its items may come again after a restart: {}",
            self.source
        )
    }
}

impl Error for CommitError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// Why a live change of a sharded channel's shards
/// ([`ShardedSender::add_shard`](crate::ShardedSender::add_shard),
/// `activate_shard`, `drain_shard`, `remove_shard`) was refused. A refused
/// change changes nothing.
#[derive(Debug)]
#[non_exhaustive]
pub enum ShardError {
    /// No shard with this id is in the channel: never added, or already
    /// removed.
    Unknown(crate::ShardId),
    /// The change does not apply to a shard in this state: activating a
    /// draining shard, draining a provisioned one, removing an active one
    /// (drain it first).
    WrongState {
        /// The shard.
        shard: crate::ShardId,
        /// The state it is in.
        state: crate::ShardState,
    },
    /// The shard still holds items (or items taken from it are not
    /// committed, or its consumer has not looked at it since it emptied:
    /// `waiting` is 0 then): a shard is removed only once it has
    /// delivered everything, so that nothing is dropped.
    NotDrained {
        /// The shard.
        shard: crate::ShardId,
        /// Items still waiting in it, in memory and on disk.
        waiting: u64,
    },
    /// Records of the shard could not be read since open (counted in its
    /// `Stats::lost` or `Stats::corrupt`) or were set aside: its files are
    /// kept, so they can be salvaged or read again after a restart, and
    /// the shard stays draining.
    Unreadable {
        /// The shard.
        shard: crate::ShardId,
        /// Records lost or corrupt since open, and set-aside files.
        records: u64,
    },
    /// The change would take the number of active shards out of bounds:
    /// below 1 (or the scaling policy's `min_shards`), or above
    /// [`MAX_SHARDS`](crate::MAX_SHARDS) (or the policy's `max_shards`);
    /// or, for `add_shard`, the channel already has `MAX_SHARDS` shards
    /// in all states.
    /// Manual calls bypass the policy's cooldown, not its bounds.
    OutOfBounds {
        /// Active shards the change would leave.
        active: usize,
        /// The bounds.
        min: usize,
        /// The bounds.
        max: usize,
    },
    /// Nothing consumes new shards: the receivers were handed out with
    /// [`ShardedReceiver::into_shards`](crate::ShardedReceiver::into_shards),
    /// or the receiving side is gone. A shard is routed to only while a
    /// consumer is attached, so that no item is stranded.
    NoConsumer,
    /// Writing the shard's files or the layout file failed; the change did
    /// not take effect. (When only the final directory sync failed, the
    /// layout file may record it already; the next change or open brings
    /// file and channel back in line, and nothing is lost either way.)
    Io(io::Error),
}

impl fmt::Display for ShardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardError::Unknown(shard) => write!(f, "{shard} is not in this channel (never added, or removed)"),
            ShardError::WrongState { shard, state } => {
                write!(f, "{shard} is {state:?}, which this change does not apply to")
            }
            ShardError::NotDrained { shard, waiting } => {
                write!(f, "{shard} still holds {waiting} items; it is removed only once it has delivered them")
            }
            ShardError::Unreadable { shard, records } => write!(
                f,
                "{shard} could not read {records} records or files since open; its files are kept (salvage them, or \
                 reopen once the disk works)"
            ),
            ShardError::OutOfBounds { active, min, max } => {
                write!(f, "the change would leave {active} active shards; this channel keeps {min} to {max}")
            }
            ShardError::NoConsumer => f.write_str(
                "no consumer is attached to new shards (the receivers were handed out with into_shards, or are gone)",
            ),
            ShardError::Io(err) => write!(f, "could not record the change: {err}"),
        }
    }
}

impl Error for ShardError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            ShardError::Io(err) => Some(err),
            _ => None,
        }
    }
}

impl From<io::Error> for ShardError {
    fn from(err: io::Error) -> ShardError {
        ShardError::Io(err)
    }
}
