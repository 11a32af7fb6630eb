//! The [`Sink`] trait, its error type, and the sinks that ship with the
//! crate: any closure, [`ChannelSink`] (into another `sump` channel, so
//! stages chain into a pipeline) and [`JsonLinesSink`] (newline-delimited
//! JSON to any `io::Write`).

use std::error::Error;
use std::fmt;
use std::io::Write;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::Sender;
use crate::ChannelId;

/// The boxed error a [`SinkError`] carries.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// Where a drainer delivers batches. Blocking: `send_batch` returns once
/// the batch is accepted or refused.
///
/// Any `FnMut(&[T]) -> Result<(), SinkError>` closure is a sink.
///
/// ```
/// use sump::{Sink, SinkError};
///
/// struct Stdout;
/// impl Sink<String> for Stdout {
///     fn send_batch(&mut self, batch: &[String]) -> Result<(), SinkError> {
///         for line in batch {
///             println!("{line}");
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Sink<T> {
    /// Delivers a batch, in order.
    ///
    /// # Errors
    ///
    /// [`SinkError::transient`] asks the drainer to retry later (a timeout,
    /// an unavailable server, a full downstream); [`SinkError::permanent`]
    /// says the batch can never be accepted (it contains an item the sink
    /// refuses). Either may say, with [`SinkError::with_accepted`], that a
    /// leading part of the batch was accepted before the failure, so the
    /// drainer does not send it again.
    fn send_batch(&mut self, batch: &[T]) -> Result<(), SinkError>;

    /// Delivers a batch, in order, told where its items come from: the
    /// channel's id and each item's sequence number. The drainer calls
    /// this; the default forwards to [`send_batch`](Sink::send_batch).
    ///
    /// A sink that can drop what it already delivered overrides it: an
    /// item delivered, then delivered again after a crash of the process
    /// before its commit (the at-least-once window), comes back with the
    /// same channel id and number. A sink that wraps another must forward
    /// this call too, or the inner sink gets no numbers.
    ///
    /// ```
    /// use std::collections::HashSet;
    /// use sump::{Numbers, Sink, SinkError};
    ///
    /// /// Keeps each item once, however often it is delivered.
    /// #[derive(Default)]
    /// struct Once(HashSet<(u128, u64)>, Vec<String>);
    ///
    /// impl Sink<String> for Once {
    ///     fn send_batch(&mut self, _: &[String]) -> Result<(), SinkError> {
    ///         Err(SinkError::permanent("needs the numbers"))
    ///     }
    ///     fn send_numbered(&mut self, batch: &[String], numbers: Numbers<'_>) -> Result<(), SinkError> {
    ///         for (item, seq) in batch.iter().zip(numbers.seqs()) {
    ///             if self.0.insert((numbers.channel().as_u128(), *seq)) {
    ///                 self.1.push(item.clone());
    ///             }
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`send_batch`](Sink::send_batch).
    fn send_numbered(&mut self, batch: &[T], numbers: Numbers<'_>) -> Result<(), SinkError> {
        let _ = numbers;
        self.send_batch(batch)
    }
}

/// Where the items of a batch come from, as a [`Sink`] is told by
/// [`Sink::send_numbered`]: the channel's id and each item's sequence
/// number, in the batch's order.
#[derive(Debug, Clone, Copy)]
pub struct Numbers<'a> {
    channel: ChannelId,
    seqs: &'a [u64],
}

impl<'a> Numbers<'a> {
    /// Numbers for a batch from `channel`, one per item. For a sink's own
    /// tests, and for code that calls a sink outside a drainer.
    pub fn new(channel: ChannelId, seqs: &'a [u64]) -> Numbers<'a> {
        Numbers { channel, seqs }
    }

    /// The channel the items were sent on.
    pub fn channel(&self) -> ChannelId {
        self.channel
    }

    /// Each item's sequence number, in the batch's order.
    pub fn seqs(&self) -> &'a [u64] {
        self.seqs
    }
}

impl<T, F> Sink<T> for F
where
    F: FnMut(&[T]) -> Result<(), SinkError>,
{
    fn send_batch(&mut self, batch: &[T]) -> Result<(), SinkError> {
        self(batch)
    }
}

/// Whether a failure may go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Transient,
    Permanent,
}

/// Why a [`Sink`] did not accept a batch.
#[derive(Debug)]
pub struct SinkError {
    /// Transient or permanent.
    kind: Kind,
    /// Leading items of the batch accepted before the failure.
    accepted: usize,
    /// What went wrong.
    source: BoxError,
}

impl SinkError {
    /// A failure that may go away: the drainer retries the batch with
    /// backoff, and repeated failures open its circuit breaker.
    ///
    /// ```
    /// let err = sump::SinkError::transient("collector unavailable");
    /// assert!(err.is_transient());
    /// ```
    pub fn transient(err: impl Into<BoxError>) -> SinkError {
        SinkError { kind: Kind::Transient, accepted: 0, source: err.into() }
    }

    /// A failure that will not go away: the batch holds at least one item
    /// the sink will never accept. The drainer splits the batch to find
    /// such items and routes only them to its dead-letter channel.
    pub fn permanent(err: impl Into<BoxError>) -> SinkError {
        SinkError { kind: Kind::Permanent, accepted: 0, source: err.into() }
    }

    /// Says that the first `items` items of the batch were accepted before
    /// the failure; they are not sent again.
    #[must_use]
    pub fn with_accepted(mut self, items: usize) -> SinkError {
        self.accepted = items;
        self
    }

    /// Whether the failure is transient.
    pub fn is_transient(&self) -> bool {
        self.kind == Kind::Transient
    }

    /// Whether the failure is permanent.
    pub fn is_permanent(&self) -> bool {
        self.kind == Kind::Permanent
    }

    /// Leading items of the batch accepted before the failure.
    pub fn accepted(&self) -> usize {
        self.accepted
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_transient() { "transient" } else { "permanent" };
        write!(f, "{kind} sink error: {}", self.source)
    }
}

impl Error for SinkError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// A sink that forwards every item into another `sump` channel, so that
/// stages chain into a pipeline, each with its own bounded memory and
/// disk.
///
/// A send that fails because that channel's receiver is gone is permanent;
/// one that fails to write to disk is transient. Either way the items
/// forwarded before it are reported as accepted.
///
/// ```
/// use std::time::Duration;
/// use sump::{ChannelSink, Drainer};
///
/// let dir = tempfile::tempdir()?;
/// let (tx, rx) = sump::channel::<u32>("stage-1", dir.path())?;
/// let (next_tx, next_rx) = sump::channel::<u32>("stage-2", dir.path())?;
/// let handle = Drainer::new(rx, ChannelSink::new(next_tx)).spawn();
/// tx.send(5)?;
/// assert_eq!(next_rx.recv_timeout(Duration::from_secs(5))?, 5);
/// handle.shutdown(Duration::from_secs(1))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ChannelSink<T> {
    /// The next stage.
    sender: Sender<T>,
}

impl<T> ChannelSink<T> {
    /// Forwards into the channel that `sender` sends on.
    pub fn new(sender: Sender<T>) -> ChannelSink<T> {
        ChannelSink { sender }
    }
}

impl<T> fmt::Debug for ChannelSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelSink { .. }")
    }
}

impl<T: Clone + Serialize + DeserializeOwned> Sink<T> for ChannelSink<T> {
    fn send_batch(&mut self, batch: &[T]) -> Result<(), SinkError> {
        for (index, item) in batch.iter().enumerate() {
            if let Err(err) = self.sender.send(item.clone()) {
                let message = err.to_string();
                let failure =
                    if err.is_disconnected() { SinkError::permanent(message) } else { SinkError::transient(message) };
                return Err(failure.with_accepted(index));
            }
        }
        Ok(())
    }
}

/// A sink that writes each item as one line of JSON to any `io::Write`
/// (a file, a socket, stdout), flushing after every batch.
///
/// An item that cannot be represented as JSON is refused permanently; a
/// write or flush error is transient. A batch whose write failed half-way
/// is written again in full, so a reader of the output may see some lines
/// twice after an I/O error (at-least-once).
///
/// ```
/// use sump::{JsonLinesSink, Sink};
///
/// let mut sink = JsonLinesSink::new(Vec::new());
/// sink.send_batch(&[1, 2])?;
/// assert_eq!(sink.get_ref(), b"1\n2\n");
/// # Ok::<(), sump::SinkError>(())
/// ```
#[derive(Debug)]
pub struct JsonLinesSink<W> {
    /// Where the lines go.
    writer: W,
    /// One batch of lines, encoded before any byte is written.
    buffer: Vec<u8>,
}

impl<W: Write> JsonLinesSink<W> {
    /// Writes to `writer`.
    pub fn new(writer: W) -> JsonLinesSink<W> {
        JsonLinesSink { writer, buffer: Vec::new() }
    }

    /// The writer.
    pub fn get_ref(&self) -> &W {
        &self.writer
    }

    /// Gives the writer back.
    pub fn into_inner(self) -> W {
        self.writer
    }

    fn write_buffer(&mut self) -> std::io::Result<()> {
        self.writer.write_all(&self.buffer)?;
        self.writer.flush()
    }
}

impl<T: Serialize, W: Write> Sink<T> for JsonLinesSink<W> {
    fn send_batch(&mut self, batch: &[T]) -> Result<(), SinkError> {
        self.buffer.clear();
        let mut refused = None;
        for (index, item) in batch.iter().enumerate() {
            let line_start = self.buffer.len();
            if let Err(err) = serde_json::to_writer(&mut self.buffer, item) {
                self.buffer.truncate(line_start);
                refused = Some((index, err));
                break;
            }
            self.buffer.push(b'\n');
        }
        self.write_buffer().map_err(SinkError::transient)?;
        match refused {
            Some((index, err)) => Err(SinkError::permanent(err).with_accepted(index)),
            None => Ok(()),
        }
    }
}
