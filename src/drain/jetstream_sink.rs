//! [`JetStreamSink`]: publishes each item to a NATS JetStream stream and
//! waits for every acknowledgement, with a `Nats-Msg-Id` made from the
//! channel's id and the item's sequence number so that the server drops
//! what a crash made the drainer deliver twice. Behind the `nats` feature.
//!
//! The client is `async-nats`, driven by a current-thread tokio runtime
//! that the sink owns and runs on a thread of its own (named
//! `sump-nats`), so that the connection keeps answering the server's
//! pings while the drainer waits for items; each batch is handed to that
//! runtime and waited for, so the [`Sink`] stays blocking.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, StorageType};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, Context};
use async_nats::HeaderMap;
use bytes::Bytes;
use serde::Serialize;

use super::sink::{BoxError, Numbers, Sink, SinkError};

/// Default timeout for connecting and for each batch's acknowledgements.
pub const DEFAULT_NATS_TIMEOUT: Duration = Duration::from_secs(5);

/// Default duplicate window of a stream the sink creates: JetStream's own
/// default, two minutes.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How an item becomes a message's payload.
type Encode<T> = fn(&T, &mut Vec<u8>) -> Result<(), BoxError>;

/// The subject of each item: one for all, or one of its own.
enum SubjectOf<T> {
    Fixed(async_nats::Subject),
    Each(Box<dyn Fn(&T) -> String + Send>),
}

impl<T> SubjectOf<T> {
    fn of(&self, item: &T) -> async_nats::Subject {
        match self {
            SubjectOf::Fixed(subject) => subject.clone(),
            SubjectOf::Each(subject) => async_nats::Subject::from(subject(item)),
        }
    }
}

/// Headers of each item, beyond the fixed ones.
type HeadersOf<T> = Box<dyn Fn(&T, &mut HeaderMap) + Send>;

fn encode_json<T: Serialize>(item: &T, out: &mut Vec<u8>) -> Result<(), BoxError> {
    serde_json::to_writer(out, item).map_err(Into::into)
}

#[allow(clippy::ptr_arg)] // the type of `Encode<Vec<u8>>`
fn encode_raw(item: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), BoxError> {
    out.extend_from_slice(item);
    Ok(())
}

/// Most publishes awaiting their acknowledgement at once; a larger
/// batch waits for the oldest before it publishes more.
const MAX_ACKS_IN_FLIGHT: usize = 4_096;

/// How the connection is set up, beyond the servers and the timeout.
type Options = Box<dyn Fn(async_nats::ConnectOptions) -> std::io::Result<async_nats::ConnectOptions> + Send>;

/// A sink that publishes every item to a NATS JetStream stream, waits for
/// the server's acknowledgement of each, and names each message with a
/// `Nats-Msg-Id` so that the stream keeps an item once however often it
/// is delivered.
///
/// # Exactly once, within the duplicate window
///
/// A drainer commits a batch only after the sink accepted it, so a
/// forwarding process that crashes between the two delivers the batch
/// again after its restart (the at-least-once window). Here every message
/// carries `Nats-Msg-Id: <channel id>-<sequence number>` (see
/// [`ChannelId`](crate::ChannelId)), the same on every delivery of the
/// item, and JetStream drops a message whose id it saw within the
/// stream's duplicate window. So a redelivery is dropped if the process
/// is back and delivering within that window of the first delivery: two
/// minutes by default ([`DEFAULT_DUPLICATE_WINDOW`]); a longer window
/// ([`JetStreamSink::duplicate_window`]) costs the server memory for the
/// ids it remembers. On connecting the sink reads the stream's window and
/// warns when it is shorter than the one asked for. With
/// [`JetStreamSink::deduplicate`]`(false)` no id is sent, and besides a
/// crash's redeliveries, the items after one the server refused for good
/// are stored again each time the drainer splits the batch to find it.
///
/// The pair (channel id, number) is the same on every delivery of an
/// item, but for items a reshard moved (numbered anew in their new shard)
/// and records of segment format version 1 (numbered as they are read).
/// A copy of the channel directory (a restored backup, a volume snapshot)
/// shares the id: two forwarders running from copies of one directory
/// must not publish to one stream, or one's items are dropped as the
/// other's; delete `sump.id` in the copy to give it an id of its own.
///
/// # Order
///
/// Items are published in channel order on one connection and the stream
/// stores them in that order. A batch is retried from its first item not
/// acknowledged; items after it that were stored meanwhile come again and
/// are dropped as duplicates. One case breaks the order: the server
/// refuses one message for a reason that passes (a stream electing its
/// leader) and stores the next ones already in flight; the refused one
/// then lands after them.
///
/// # Failures
///
/// A server that cannot be reached, a connection that drops, an
/// acknowledgement that does not come within the timeout
/// ([`DEFAULT_NATS_TIMEOUT`]) or an error the server may recover from
/// (no quorum, say) is transient: the drainer retries with backoff, and
/// [`SinkError::accepted`] says how many leading items were acknowledged.
/// A message the server refuses for good (larger than the stream or the
/// server allows), a subject that is not valid, headers a closure could
/// not set, and a stream that does not exist (unless the sink was asked
/// to create it, [`JetStreamSink::create_stream`]: it is created again)
/// are permanent, so the drainer routes those items to its dead-letter
/// channel.
///
/// Call it from a plain thread, as a drainer does: called from inside a
/// tokio runtime it refuses every batch (a runtime cannot wait on another
/// from within).
///
/// ```no_run
/// use sump::{Drainer, JetStreamSink};
///
/// let dir = tempfile::tempdir()?;
/// let (tx, rx) = sump::channel::<String>("events", dir.path())?;
/// let sink = JetStreamSink::new("nats://127.0.0.1:4222", "EVENTS", "events.all")?
///     .create_stream(["events.>"]);
/// let drainer = Drainer::new(rx, sink).spawn();
/// tx.send("hello".to_string())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct JetStreamSink<T> {
    /// Where the runtime runs, and how it is stopped.
    runtime: Runtime,
    /// Where to connect, as given.
    url: String,
    /// The servers in it.
    servers: Vec<async_nats::ServerAddr>,
    /// The JetStream context, once connected and the stream checked.
    context: Option<Context>,
    /// The stream's name.
    stream: String,
    /// Each item's subject.
    subject: SubjectOf<T>,
    /// Headers on every message.
    headers: HeaderMap,
    /// Headers of each item.
    item_headers: Option<HeadersOf<T>>,
    /// The payload of an item.
    encode: Encode<T>,
    /// The subjects of the stream to create when it is missing, if asked.
    create: Option<Vec<String>>,
    /// Replicas of a stream the sink creates.
    replicas: usize,
    /// Connection settings (credentials, TLS, ...).
    options: Option<Options>,
    /// Whether messages carry a `Nats-Msg-Id`.
    deduplicate: bool,
    /// The duplicate window wanted.
    duplicate_window: Duration,
    /// Connect and acknowledgement timeout.
    timeout: Duration,
}

/// The sink's runtime: a current-thread tokio runtime driven by a thread
/// of its own until the sink is dropped.
struct Runtime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Runtime {
    fn start() -> std::io::Result<Runtime> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("sump-nats".to_string()).spawn(move || {
            runtime.block_on(async move {
                let _ = stopped.await;
            });
            // Not waiting on a name lookup that hangs.
            runtime.shutdown_timeout(Duration::from_secs(1));
        })?;
        Ok(Runtime { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// Runs `future` on the runtime and waits for it; an error if the
    /// caller is itself on a tokio runtime, or the runtime's thread is
    /// gone.
    fn run<O>(&self, future: impl std::future::Future<Output = Result<O, SinkError>>) -> Result<O, SinkError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(SinkError::transient(
                "JetStreamSink called from inside a tokio runtime: call it from a thread",
            ));
        }
        if self.thread.as_ref().is_none_or(std::thread::JoinHandle::is_finished) {
            return Err(SinkError::transient("the JetStreamSink's runtime thread is gone"));
        }
        self.handle.block_on(future)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<T: Serialize> JetStreamSink<T> {
    /// A sink publishing to stream `stream` on the server at `url`
    /// (`nats://host:port`, or several separated by commas: the nodes of
    /// a cluster), every item on
    /// `subject`, encoded as JSON. Does not connect yet.
    ///
    /// # Errors
    ///
    /// When a server address is not valid (an error of kind
    /// `InvalidInput`), or the sink's runtime thread cannot be started.
    pub fn new(url: impl Into<String>, stream: impl Into<String>, subject: impl Into<String>) -> std::io::Result<Self> {
        let url = url.into();
        let servers = url
            .split(',')
            .map(|server| {
                server.trim().parse::<async_nats::ServerAddr>().map_err(|err| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("NATS server {server:?}: {err}"))
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let subject = async_nats::Subject::from(subject.into());
        Ok(JetStreamSink {
            runtime: Runtime::start()?,
            url,
            servers,
            context: None,
            stream: stream.into(),
            subject: SubjectOf::Fixed(subject),
            headers: HeaderMap::new(),
            item_headers: None,
            encode: encode_json::<T>,
            create: None,
            replicas: 1,
            options: None,
            deduplicate: true,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            timeout: DEFAULT_NATS_TIMEOUT,
        })
    }
}

impl JetStreamSink<Vec<u8>> {
    /// Publishes each `Vec<u8>` item as it is, instead of as JSON.
    #[must_use]
    pub fn raw(mut self) -> Self {
        self.encode = encode_raw;
        self
    }
}

impl<T> JetStreamSink<T> {
    /// Publishes each item on the subject `subject` gives it, instead of
    /// the one subject given to [`new`](JetStreamSink::new).
    #[must_use]
    pub fn subject_of(mut self, subject: impl Fn(&T) -> String + Send + 'static) -> Self {
        self.subject = SubjectOf::Each(Box::new(subject));
        self
    }

    /// Adds a header to every message.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name (empty, or holding a colon,
    /// a space or a control character) or `value` holds a line break.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Lets `headers` add headers of each item to its message. A closure
    /// that panics on an item (the header map panics on a value with a
    /// line break, say) refuses that item, permanently.
    #[must_use]
    pub fn headers_of(mut self, headers: impl Fn(&T, &mut HeaderMap) + Send + 'static) -> Self {
        self.item_headers = Some(Box::new(headers));
        self
    }

    /// Creates the stream, on file storage with [`replicas`](Self::replicas)
    /// replicas (one by default), bound to
    /// `subjects` and with the [duplicate window](Self::duplicate_window),
    /// when the sink finds no stream of its name. Without this a missing
    /// stream refuses every item.
    #[must_use]
    pub fn create_stream<S: Into<String>>(mut self, subjects: impl IntoIterator<Item = S>) -> Self {
        self.create = Some(subjects.into_iter().map(Into::into).collect());
        self
    }

    /// The number of replicas of a stream the sink creates with
    /// [`create_stream`](Self::create_stream) (default 1; 3 on a
    /// three-node cluster keeps every acknowledged item through the loss
    /// of one node).
    #[must_use]
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// Sets up the connection further: credentials, TLS, a client name,
    /// anything `async_nats::ConnectOptions` offers. Called at every
    /// connect; the sink sets the connection timeout after it. An error
    /// (a credentials file that cannot be read) fails the connect,
    /// transiently: the drainer retries, and nothing is refused for it.
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let sink = sump::JetStreamSink::<String>::new("tls://nats.example:4222", "EVENTS", "events")?
    ///     .connect_options(|options| {
    ///         let creds = std::fs::read_to_string("/etc/shipper/nats.creds")?;
    ///         options.name("shipper").credentials(&creds)
    ///     });
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn connect_options(
        mut self,
        options: impl Fn(async_nats::ConnectOptions) -> std::io::Result<async_nats::ConnectOptions> + Send + 'static,
    ) -> Self {
        self.options = Some(Box::new(options));
        self
    }

    /// The duplicate window a stream the sink creates gets, and the one it
    /// expects of a stream that exists (default
    /// [`DEFAULT_DUPLICATE_WINDOW`]): a redelivery later than this after
    /// the first delivery is stored again.
    #[must_use]
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Whether messages carry a `Nats-Msg-Id` (default `true`). Without
    /// it, a batch delivered again after a crash is stored twice.
    #[must_use]
    pub fn deduplicate(mut self, deduplicate: bool) -> Self {
        self.deduplicate = deduplicate;
        self
    }

    /// How long the server may take to answer (default
    /// [`DEFAULT_NATS_TIMEOUT`]): to connect, and to acknowledge each
    /// message. A call gives up, transiently, after twice this to connect
    /// and twice this to publish the batch; items acknowledged by then
    /// count as accepted.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects, and finds (or creates) the stream.
    async fn connect(&self) -> Result<Context, SinkError> {
        let options = async_nats::ConnectOptions::new();
        let options = match &self.options {
            Some(more) => more(options)
                .map_err(|err| SinkError::transient(format!("cannot set up the NATS connection: {err}")))?,
            None => options,
        };
        let client = options
            .connection_timeout(self.timeout)
            .connect(self.servers.as_slice())
            .await
            .map_err(SinkError::transient)?;
        let context = jetstream::ContextBuilder::new()
            .timeout(self.timeout)
            .ack_timeout(self.timeout)
            .backpressure_on_inflight(true)
            .build(client);
        let stream = match &self.create {
            Some(_) => context.get_or_create_stream(self.stream_config()).await.map_err(SinkError::transient)?,
            None => context.get_stream(&self.stream).await.map_err(|err| {
                if is_missing_stream(&err) {
                    SinkError::permanent(format!("no JetStream stream named {:?}: {err}", self.stream))
                } else {
                    SinkError::transient(err)
                }
            })?,
        };
        let window = stream.cached_info().config.duplicate_window;
        if self.deduplicate && window < self.duplicate_window {
            tracing::warn!(stream = %self.stream, window = ?window, wanted = ?self.duplicate_window,
                "the stream's duplicate window is shorter than asked: a redelivery later than it is stored again");
        }
        Ok(context)
    }

    /// Publishes the leading items of `batch`, one per payload, and waits
    /// for their acknowledgements; the error says how many leading ones
    /// were acknowledged.
    async fn publish(
        &self,
        context: &Context,
        batch: &[T],
        numbers: Numbers<'_>,
        mut payloads: Vec<Vec<u8>>,
    ) -> Result<(), SinkError> {
        let count = payloads.len();
        let mut acks = VecDeque::with_capacity(count.min(MAX_ACKS_IN_FLIGHT));
        // Leading items acknowledged.
        let mut done = 0;
        for (index, item) in batch[..count].iter().enumerate() {
            if acks.len() == MAX_ACKS_IN_FLIGHT {
                if let Some(ack) = acks.pop_front() {
                    match ack.await {
                        Ok(_) => done += 1,
                        Err(err) => return Err(self.classify(context, &err).await.with_accepted(done)),
                    }
                }
            }
            let id = match numbers.seqs().get(index) {
                Some(seq) if self.deduplicate => Some(format!("{}-{seq}", numbers.channel())),
                _ => None,
            };
            let refusal = match self.message(item, std::mem::take(&mut payloads[index]), id) {
                Ok((subject, message)) => match context.send_publish(subject, message).await {
                    Ok(ack) => {
                        acks.push_back(ack);
                        continue;
                    }
                    Err(err) => self.classify(context, &err).await,
                },
                Err(refusal) => refusal,
            };
            // Those published before still count if acknowledged.
            self.settle(context, acks, done).await?;
            return Err(refusal.with_accepted(index));
        }
        self.settle(context, acks, done).await.map(|_| ())
    }

    /// The subject and message of `item`; a permanent refusal if its
    /// subject is not valid or its headers closure panicked.
    fn message(
        &self,
        item: &T,
        payload: Vec<u8>,
        id: Option<String>,
    ) -> Result<(async_nats::Subject, PublishMessage), SinkError> {
        let subject = self.subject.of(item);
        if !subject.is_valid() {
            return Err(SinkError::permanent(format!("{:?} is not a valid NATS subject", subject.as_str())));
        }
        let mut message = PublishMessage::build().payload(Bytes::from(payload));
        if !self.headers.is_empty() || self.item_headers.is_some() {
            let mut headers = self.headers.clone();
            if let Some(item_headers) = &self.item_headers {
                let set = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| item_headers(item, &mut headers)));
                if set.is_err() {
                    return Err(SinkError::permanent(
                        "the headers closure panicked on this item (a line break in a value?)",
                    ));
                }
            }
            message = message.headers(headers);
        }
        if let Some(id) = id {
            message = message.message_id(id);
        }
        Ok((subject, message))
    }

    /// Waits for the acknowledgements in flight, after `done` leading
    /// ones; how many were acknowledged in all, or the first failure with
    /// how many came before it.
    async fn settle(
        &self,
        context: &Context,
        acks: VecDeque<jetstream::context::PublishAckFuture>,
        mut done: usize,
    ) -> Result<usize, SinkError> {
        for ack in acks {
            match ack.await {
                Ok(_) => done += 1,
                Err(err) => return Err(self.classify(context, &err).await.with_accepted(done)),
            }
        }
        Ok(done)
    }
}

impl<T> JetStreamSink<T> {
    /// Transient or permanent, by what the server or the client said. "No
    /// responders" is permanent only if the server says the stream does
    /// not exist: a cluster electing the stream's leader answers a
    /// publish that way too, for a moment.
    async fn classify(&self, context: &Context, err: &PublishError) -> SinkError {
        match err.kind() {
            PublishErrorKind::MaxPayloadExceeded => SinkError::permanent(err.to_string()),
            PublishErrorKind::StreamNotFound => match context.get_stream(&self.stream).await {
                Err(lookup) if is_missing_stream(&lookup) && self.create.is_some() => {
                    match context.get_or_create_stream(self.stream_config()).await {
                        Ok(_) => {
                            SinkError::transient(format!("the stream {:?} was missing; created again", self.stream))
                        }
                        Err(create) => {
                            SinkError::transient(format!("the stream {:?} is missing: {create}", self.stream))
                        }
                    }
                }
                Err(lookup) if is_missing_stream(&lookup) => SinkError::permanent(format!(
                    "no JetStream stream named {:?} (no stream takes the subject): {err}",
                    self.stream
                )),
                Ok(_) => SinkError::transient(format!("the stream has no leader yet: {err}")),
                Err(lookup) => SinkError::transient(format!("{err}; and looking the stream up failed: {lookup}")),
            },
            PublishErrorKind::Other => {
                let refused = std::error::Error::source(err)
                    .and_then(|source| source.downcast_ref::<jetstream::Error>())
                    .is_some_and(|server| server.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM);
                if refused {
                    SinkError::permanent(err.to_string())
                } else {
                    SinkError::transient(err.to_string())
                }
            }
            // Only with expectations set by a headers closure.
            PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
                SinkError::permanent(err.to_string())
            }
            _ => SinkError::transient(err.to_string()),
        }
    }

    /// The stream [`create_stream`](Self::create_stream) creates.
    fn stream_config(&self) -> Config {
        Config {
            name: self.stream.clone(),
            subjects: self.create.clone().unwrap_or_default(),
            storage: StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            ..Config::default()
        }
    }
}

/// Whether a failed stream lookup says the stream does not exist.
fn is_missing_stream(err: &jetstream::context::GetStreamError) -> bool {
    matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(err)
        if err.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

impl<T> fmt::Debug for JetStreamSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamSink")
            .field("url", &self.url)
            .field("stream", &self.stream)
            .field("connected", &self.context.is_some())
            .field("deduplicate", &self.deduplicate)
            .finish_non_exhaustive()
    }
}

impl<T> Sink<T> for JetStreamSink<T> {
    /// Publishes without `Nats-Msg-Id`s: called directly, outside a
    /// drainer, the items come with no numbers. A drainer calls
    /// [`send_numbered`](Sink::send_numbered).
    fn send_batch(&mut self, batch: &[T]) -> Result<(), SinkError> {
        self.send_numbered(batch, Numbers::new(crate::ChannelId::from_u128(0), &[]))
    }

    fn send_numbered(&mut self, batch: &[T], numbers: Numbers<'_>) -> Result<(), SinkError> {
        let mut payloads = Vec::with_capacity(batch.len());
        let mut refused = None;
        for (index, item) in batch.iter().enumerate() {
            let mut payload = Vec::new();
            if let Err(err) = (self.encode)(item, &mut payload) {
                refused = Some((index, err));
                break;
            }
            payloads.push(payload);
        }
        let good = payloads.len();
        if good > 0 {
            // One connection for the sink's life once it is made: the
            // client reconnects by itself and sends what it buffered in
            // order, so a new connection beside it could reorder.
            let context = match &self.context {
                Some(context) => context.clone(),
                None => {
                    let context = self.runtime.run(within(self.timeout.saturating_mul(2), self.connect()))?;
                    self.context = Some(context.clone());
                    context
                }
            };
            let timeout = self.timeout.saturating_mul(2);
            self.runtime.run(within(timeout, self.publish(&context, batch, numbers, payloads)))?;
        }
        match refused {
            Some((index, err)) => Err(SinkError::permanent(err).with_accepted(index)),
            None => Ok(()),
        }
    }
}

/// `future`'s result, or a transient error once `timeout` passed (a
/// connection that is down can hold a publish back however long).
async fn within<O>(
    timeout: Duration,
    future: impl std::future::Future<Output = Result<O, SinkError>>,
) -> Result<O, SinkError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(output) => output,
        Err(_) => Err(SinkError::transient(format!("no answer from the NATS server within {timeout:?}"))),
    }
}
