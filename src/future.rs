//! The channel from async code (feature `async`): [`Sender::send_async`],
//! [`Receiver::recv_async`], [`Receiver::recv_many_async`] and
//! [`Receiver::stream`].
//!
//! Nothing here depends on an executor. A future tries the same operation
//! a `try_` call makes; when that would have waited, its waker is
//! registered under the channel lock as part of the same decision, and
//! it returns `Pending`. The channel wakes it where it would notify a
//! blocked thread: one waiting receive per item arriving (a woken receive
//! that got its item passes the wakeup on while more wait; one dropped
//! before it looked passes it on too), every waiting send when disk space
//! frees or the receiver leaves, everyone when the channel disconnects.
//!
//! # Cancellation
//!
//! Every future here is cancel-safe. A poll either completes the
//! operation or changes nothing but the waker registration, so dropping a
//! future (a losing `select!` branch, a timeout) loses no item and leaves
//! no waker behind.
//!
//! # What still blocks
//!
//! The futures wait only where a blocking call would wait for another
//! thread: a send for disk space under [`WhenFull::Block`], a receive for
//! an item. The work itself is done in the poll, as a blocking call does
//! it: a spilling send writes its record to the OS page cache, and with
//! [`SyncPolicy::Always`] it also waits for the sync that covers it (a
//! few milliseconds on a disk; run such senders on a blocking pool, e.g.
//! `tokio::task::spawn_blocking`, if that matters); a receive reads the
//! disk backlog. A blocking receive parked on another thread does not
//! hold the receiver: async and blocking calls may be mixed on one
//! channel, on either side.
//!
//! [`WhenFull::Block`]: crate::WhenFull::Block
//! [`SyncPolicy::Always`]: crate::SyncPolicy::Always

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::{FusedStream, Stream};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{Receiver, Sender};
use crate::core::{RecvFailure, SendFailure, Wait};
use crate::err::{RecvError, SendError};

impl<T: Serialize + DeserializeOwned> Sender<T> {
    /// Sends an item from async code: a future that completes as
    /// [`send`](Self::send) returns, waiting (without blocking the thread)
    /// only while memory and disk are full under
    /// [`WhenFull::Block`](crate::WhenFull::Block).
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = sump::channel::<String>("async-send", dir.path())?;
    /// tx.send_async("hello".to_string()).await?;
    /// assert_eq!(rx.recv_async().await?, "hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send): the item comes back inside the error.
    ///
    /// # Cancellation
    ///
    /// Cancel-safe: dropped before it completes, the future has sent
    /// nothing, and the item is dropped with it.
    pub fn send_async(&self, item: T) -> SendFuture<'_, T> {
        SendFuture { sender: self, item: Some(item), waiting: Waiting::default() }
    }
}

impl<T: Serialize + DeserializeOwned> Receiver<T> {
    /// Receives the next item from async code: a future that completes as
    /// [`recv`](Self::recv) returns, waiting (without blocking the thread)
    /// while the channel is empty and a sender remains.
    ///
    /// # Errors
    ///
    /// [`RecvError`] once every sender is gone and every item has been
    /// received.
    ///
    /// # Cancellation
    ///
    /// Cancel-safe: an item is taken from the channel only by the poll
    /// that returns it, so a future dropped before it completes has taken
    /// nothing.
    pub fn recv_async(&self) -> RecvFuture<'_, T> {
        RecvFuture { receiver: self, waiting: Waiting::default() }
    }

    /// Appends up to `limit` items to `buf` from async code: waits for the
    /// first as [`recv_async`](Self::recv_async) does, then takes what is
    /// ready, as [`recv_many`](Self::recv_many). Completes with how many
    /// were added (0 only when `limit` is 0).
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = sump::Builder::new("async-many", dir.path()).memory_capacity(4).open::<u32>()?;
    /// tx.send_batch(0..10)?; // four in memory, six on disk
    /// let mut buf = Vec::new();
    /// assert_eq!(rx.recv_many_async(&mut buf, 8).await?, 8);
    /// assert_eq!(rx.recv_many_async(&mut buf, 8).await?, 2);
    /// assert_eq!(buf, (0..10).collect::<Vec<_>>());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// [`RecvError`] when the channel is empty and every sender is gone.
    ///
    /// # Cancellation
    ///
    /// Cancel-safe: the poll that takes items also completes, so a future
    /// dropped before it completes has added nothing to `buf`.
    pub fn recv_many_async<'a>(&'a self, buf: &'a mut Vec<T>, limit: usize) -> RecvManyFuture<'a, T> {
        RecvManyFuture { receiver: self, buf, limit, waiting: Waiting::default() }
    }

    /// The items as a [`Stream`]: each `next` is a
    /// [`recv_async`](Self::recv_async); the stream ends once every sender
    /// is gone and every item has been received.
    ///
    /// ```
    /// use futures::StreamExt;
    ///
    /// # futures::executor::block_on(async {
    /// let dir = tempfile::tempdir()?;
    /// let (tx, rx) = sump::channel::<u32>("stream", dir.path())?;
    /// tx.send_batch(0..3)?;
    /// drop(tx);
    /// assert_eq!(rx.stream().collect::<Vec<_>>().await, [0, 1, 2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Cancellation
    ///
    /// Cancel-safe, as [`recv_async`](Self::recv_async): a `next()`
    /// dropped before it completes has taken nothing.
    pub fn stream(&self) -> RecvStream<'_, T> {
        RecvStream { receiver: self, waiting: Waiting::default(), done: false }
    }
}

/// A future's place among the channel's waiting operations.
#[derive(Debug, Default)]
struct Waiting {
    /// Its number, given at its first registration; 0 until then.
    id: Cell<u64>,
    /// Whether its waker may still be registered: it returned `Pending`
    /// and has not completed since.
    registered: bool,
}

impl Waiting {
    /// The wait of one poll: registers the current task's waker with the
    /// operation if it would have waited.
    fn register<'a>(&'a self, cx: &'a Context<'_>) -> Wait<'a> {
        Wait::Register(cx.waker(), &self.id)
    }

    /// The registration to remove, if one may be left, once the future
    /// completes.
    fn completed(&mut self) -> Option<u64> {
        std::mem::take(&mut self.registered).then(|| self.id.get())
    }
}

/// Where a receive puts what it took.
enum Into<'b, T> {
    /// One item.
    One(&'b mut Option<T>),
    /// The first item and whatever is ready after it, up to a total
    /// length of the buffer.
    Many(&'b mut Vec<T>, usize),
}

/// One poll of a receive.
fn poll_recv<T: Serialize + DeserializeOwned>(
    receiver: &Receiver<T>,
    cx: &Context<'_>,
    waiting: &mut Waiting,
    into: Into<'_, T>,
) -> Poll<Result<(), RecvError>> {
    let (shared, mut side) = receiver.core();
    match shared.recv(&mut side, waiting.register(cx)) {
        Ok(item) => {
            match into {
                Into::One(slot) => *slot = Some(item),
                Into::Many(buf, limit) => {
                    buf.push(item);
                    while buf.len() < limit {
                        match shared.recv(&mut side, Wait::Never) {
                            Ok(item) => buf.push(item),
                            Err(_) => break,
                        }
                    }
                }
            }
            shared.after_async_recv(&side, waiting.completed());
            Poll::Ready(Ok(()))
        }
        Err(RecvFailure::Disconnected) => {
            if let Some(id) = waiting.completed() {
                drop(side);
                shared.forget_recv_waker(id);
            }
            Poll::Ready(Err(RecvError))
        }
        Err(RecvFailure::Empty) => {
            waiting.registered = true;
            Poll::Pending
        }
    }
}

/// What a receive future leaves when it is dropped.
fn drop_recv<T>(receiver: &Receiver<T>, waiting: &Waiting) {
    if waiting.registered {
        receiver.shared().forget_recv_waker(waiting.id.get());
    }
}

/// The future of [`Sender::send_async`].
#[must_use = "futures do nothing unless polled"]
pub struct SendFuture<'a, T> {
    /// The sender it sends through.
    sender: &'a Sender<T>,
    /// The item, until it is sent or handed back in an error.
    item: Option<T>,
    /// Its place among the channel's waiting sends.
    waiting: Waiting,
}

// The item is only ever moved, never pinned in place.
impl<T> Unpin for SendFuture<'_, T> {}

impl<T: Serialize + DeserializeOwned> Future for SendFuture<'_, T> {
    type Output = Result<(), SendError<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(item) = this.item.take() else {
            // Polled again after it completed.
            return Poll::Pending;
        };
        let shared = this.sender.core();
        let result = match shared.send(item, this.waiting.register(cx)) {
            Ok(()) => Ok(()),
            Err(SendFailure::Full(item) | SendFailure::Timeout(item)) => {
                this.item = Some(item);
                this.waiting.registered = true;
                return Poll::Pending;
            }
            Err(SendFailure::Disconnected(item)) => Err(SendError::disconnected(item)),
            Err(SendFailure::Io(item, err)) => Err(SendError::io(item, err)),
        };
        if let Some(id) = this.waiting.completed() {
            shared.forget_send_waker(id);
        }
        Poll::Ready(result)
    }
}

impl<T> Drop for SendFuture<'_, T> {
    fn drop(&mut self) {
        if self.waiting.registered {
            self.sender.core().forget_send_waker(self.waiting.id.get());
        }
    }
}

impl<T> fmt::Debug for SendFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendFuture").field("sent", &self.item.is_none()).finish_non_exhaustive()
    }
}

/// The future of [`Receiver::recv_async`].
#[must_use = "futures do nothing unless polled"]
pub struct RecvFuture<'a, T> {
    /// The receiver it receives from.
    receiver: &'a Receiver<T>,
    /// Its place among the channel's waiting receives.
    waiting: Waiting,
}

impl<T: Serialize + DeserializeOwned> Future for RecvFuture<'_, T> {
    type Output = Result<T, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut item = None;
        match poll_recv(this.receiver, cx, &mut this.waiting, Into::One(&mut item)) {
            Poll::Ready(Ok(())) => Poll::Ready(item.ok_or(RecvError)),
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Drop for RecvFuture<'_, T> {
    fn drop(&mut self) {
        drop_recv(self.receiver, &self.waiting);
    }
}

impl<T> fmt::Debug for RecvFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvFuture").finish_non_exhaustive()
    }
}

/// The future of [`Receiver::recv_many_async`].
#[must_use = "futures do nothing unless polled"]
pub struct RecvManyFuture<'a, T> {
    /// The receiver it receives from.
    receiver: &'a Receiver<T>,
    /// Where the items go.
    buf: &'a mut Vec<T>,
    /// Most items to add.
    limit: usize,
    /// As in [`RecvFuture`].
    waiting: Waiting,
}

impl<T: Serialize + DeserializeOwned> Future for RecvManyFuture<'_, T> {
    type Output = Result<usize, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.limit == 0 {
            return Poll::Ready(Ok(0));
        }
        let before = this.buf.len();
        let limit = before + this.limit;
        match poll_recv(this.receiver, cx, &mut this.waiting, Into::Many(&mut *this.buf, limit)) {
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(this.buf.len() - before)),
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Drop for RecvManyFuture<'_, T> {
    fn drop(&mut self) {
        drop_recv(self.receiver, &self.waiting);
    }
}

impl<T> fmt::Debug for RecvManyFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvManyFuture").field("limit", &self.limit).finish_non_exhaustive()
    }
}

/// The stream of [`Receiver::stream`].
#[must_use = "streams do nothing unless polled"]
pub struct RecvStream<'a, T> {
    /// The receiver it receives from.
    receiver: &'a Receiver<T>,
    /// As in [`RecvFuture`]; its number is kept from one item to the next.
    waiting: Waiting,
    /// Whether the channel was found disconnected and empty.
    done: bool,
}

impl<T: Serialize + DeserializeOwned> Stream for RecvStream<'_, T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut item = None;
        match poll_recv(this.receiver, cx, &mut this.waiting, Into::One(&mut item)) {
            Poll::Ready(Ok(())) => Poll::Ready(item),
            Poll::Ready(Err(RecvError)) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: Serialize + DeserializeOwned> FusedStream for RecvStream<'_, T> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<T> Drop for RecvStream<'_, T> {
    fn drop(&mut self) {
        drop_recv(self.receiver, &self.waiting);
    }
}

impl<T> fmt::Debug for RecvStream<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvStream").field("done", &self.done).finish_non_exhaustive()
    }
}
