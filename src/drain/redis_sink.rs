//! [`RedisSink`]: appends each item to a Redis stream with `XADD`, one
//! pipelined round trip per batch. Behind the `redis` feature.

use std::fmt;
use std::time::Duration;

use redis::{Client, Connection, ErrorKind, RedisError};
use serde::Serialize;

use super::sink::{Sink, SinkError};

/// Default timeout for connecting and for each batch's round trip.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// Default name of the stream entry field that holds the item.
pub const DEFAULT_REDIS_FIELD: &str = "item";

/// A sink that appends every item to a Redis stream (`XADD key * field
/// json`), pipelining each batch into one round trip.
///
/// Items are encoded as JSON. The connection is made on first use and
/// made again after any connection or I/O error, which is transient: the
/// drainer retries the batch. An error Redis returns for the command
/// itself (a key of the wrong type, say) is permanent.
///
/// Delivery is at-least-once: when a connection drops after Redis applied
/// part of a pipeline but before the answer arrived, the retry appends
/// those entries again.
///
/// ```no_run
/// use sump::{Drainer, RedisSink};
///
/// let dir = tempfile::tempdir()?;
/// let (tx, rx) = sump::channel::<String>("events", dir.path())?;
/// let sink = RedisSink::new("redis://127.0.0.1:6379/", "events")?;
/// let drainer = Drainer::new(rx, sink).spawn();
/// tx.send("hello".to_string())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RedisSink {
    /// Where to connect.
    client: Client,
    /// The live connection, if any.
    connection: Option<Connection>,
    /// The stream's key.
    stream: String,
    /// The entry field holding the item.
    field: String,
    /// Connect and round-trip timeout.
    timeout: Duration,
    /// The JSON of one batch, reused.
    encoded: Vec<Vec<u8>>,
}

impl RedisSink {
    /// A sink appending to stream `stream` on the server at `url`
    /// (`redis://host:port/db`). Does not connect yet.
    ///
    /// # Errors
    ///
    /// When the URL is not a valid Redis URL.
    pub fn new(url: &str, stream: impl Into<String>) -> Result<RedisSink, RedisError> {
        Ok(RedisSink {
            client: Client::open(url)?,
            connection: None,
            stream: stream.into(),
            field: DEFAULT_REDIS_FIELD.to_string(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            encoded: Vec::new(),
        })
    }

    /// Names the entry field that holds the item (default
    /// [`DEFAULT_REDIS_FIELD`]).
    pub fn field(mut self, field: impl Into<String>) -> RedisSink {
        self.field = field.into();
        self
    }

    /// Bounds connecting and each batch's round trip (default
    /// [`DEFAULT_REDIS_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> RedisSink {
        self.timeout = timeout;
        self
    }

    fn connection(&mut self) -> Result<&mut Connection, RedisError> {
        if self.connection.is_none() {
            let connection = self.client.get_connection_with_timeout(self.timeout)?;
            connection.set_read_timeout(Some(self.timeout))?;
            connection.set_write_timeout(Some(self.timeout))?;
            self.connection = Some(connection);
        }
        self.connection.as_mut().ok_or_else(|| RedisError::from((ErrorKind::ClientError, "no connection")))
    }

    /// Sends the first `count` encoded items in one pipeline.
    fn append(&mut self, count: usize) -> Result<(), SinkError> {
        if count == 0 {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for json in &self.encoded[..count] {
            pipe.cmd("XADD").arg(&self.stream).arg("*").arg(&self.field).arg(json.as_slice()).ignore();
        }
        let result = self.connection().and_then(|connection| pipe.query::<()>(connection));
        result.map_err(|err| {
            let refused =
                matches!(err.kind(), ErrorKind::ResponseError | ErrorKind::TypeError | ErrorKind::ExtensionError);
            if refused {
                SinkError::permanent(err)
            } else {
                self.connection = None;
                SinkError::transient(err)
            }
        })
    }
}

impl fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSink")
            .field("stream", &self.stream)
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl<T: Serialize> Sink<T> for RedisSink {
    fn send_batch(&mut self, batch: &[T]) -> Result<(), SinkError> {
        self.encoded.resize_with(batch.len(), Vec::new);
        let mut refused = None;
        for (index, item) in batch.iter().enumerate() {
            let json = &mut self.encoded[index];
            json.clear();
            if let Err(err) = serde_json::to_writer(&mut *json, item) {
                refused = Some((index, err));
                break;
            }
        }
        let good = refused.as_ref().map_or(batch.len(), |(index, _)| *index);
        self.append(good)?;
        match refused {
            Some((index, err)) => Err(SinkError::permanent(err).with_accepted(index)),
            None => Ok(()),
        }
    }
}
