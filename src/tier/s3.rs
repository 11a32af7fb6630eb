//! [`S3Store`]: a remote tier in an S3-compatible object store (feature
//! `s3`), on `rust-s3`'s blocking client.

use std::fmt;
use std::io;
use std::time::Duration;

use s3::creds::Credentials;
use s3::{Bucket, Region};

use super::RemoteStore;

/// How long one request to the store may take unless
/// [`S3Config::timeout`] says otherwise.
pub const DEFAULT_S3_TIMEOUT: Duration = Duration::from_secs(30);

/// Where an [`S3Store`] keeps its objects, and how it signs in.
///
/// ```
/// use sump::S3Config;
///
/// let config = S3Config::new("http://127.0.0.1:8333", "sump")
///     .prefix("shipper-1/")
///     .region("us-east-1")
///     .credentials("access key id", "secret access key");
/// # let _ = config;
/// ```
#[derive(Clone)]
pub struct S3Config {
    endpoint: String,
    bucket: String,
    prefix: String,
    region: String,
    credentials: Option<(String, String)>,
    path_style: bool,
    timeout: Duration,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("credentials", &self.credentials.as_ref().map(|(id, _)| (id, "<secret>")))
            .field("path_style", &self.path_style)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl S3Config {
    /// Objects in `bucket` at `endpoint` (`https://s3.eu-west-1.amazonaws.com`,
    /// `http://127.0.0.1:8333`), region `us-east-1`, no key prefix,
    /// path-style addressing (what S3-compatible servers expect), and the
    /// credentials in `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and
    /// `AWS_SESSION_TOKEN`, if set) unless [`credentials`](Self::credentials)
    /// gives others.
    pub fn new(endpoint: impl Into<String>, bucket: impl Into<String>) -> S3Config {
        S3Config {
            endpoint: endpoint.into(),
            bucket: bucket.into(),
            prefix: String::new(),
            region: "us-east-1".to_string(),
            credentials: None,
            path_style: true,
            timeout: DEFAULT_S3_TIMEOUT,
        }
    }

    /// Puts every key under `prefix` (`"shipper-1/"`), so that several
    /// programs can share a bucket.
    pub fn prefix(mut self, prefix: impl Into<String>) -> S3Config {
        self.prefix = prefix.into();
        self
    }

    /// The region to sign requests for (default `us-east-1`).
    pub fn region(mut self, region: impl Into<String>) -> S3Config {
        self.region = region.into();
        self
    }

    /// Signs in with this access key id and secret access key.
    pub fn credentials(mut self, access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> S3Config {
        self.credentials = Some((access_key_id.into(), secret_access_key.into()));
        self
    }

    /// Addresses the bucket as a host name (`bucket.endpoint`), as AWS
    /// prefers, rather than as the first part of the path.
    pub fn virtual_hosted(mut self) -> S3Config {
        self.path_style = false;
        self
    }

    /// How long one request may take (default [`DEFAULT_S3_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> S3Config {
        self.timeout = timeout;
        self
    }
}

/// A [`RemoteStore`] in an S3-compatible object store: AWS S3, MinIO,
/// SeaweedFS, Ceph, R2, and the like (feature `s3`).
///
/// It uses `rust-s3`'s blocking client, so the store needs no async
/// runtime: the channel calls it from its `sump-tier` thread. Every
/// upload carries a `Content-MD5` header, so the server refuses bytes
/// damaged on the way; the channel then checks the object's size before
/// it deletes its local copy, and the CRC32C of every object it fetches.
/// A request that does not answer within the [`timeout`](S3Config::timeout)
/// fails, and the channel retries it with backoff.
///
/// ```no_run
/// use sump::{Builder, Durability, S3Config, S3Store};
///
/// let store = S3Store::new(S3Config::new("http://127.0.0.1:8333", "sump").prefix("events/"))?;
/// let (tx, rx) = Builder::new("events", "/var/lib/shipper")
///     .durability(Durability::WriteAhead)
///     .remote(store)
///     .open::<String>()?;
/// # drop((tx, rx));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct S3Store {
    bucket: Box<Bucket>,
    prefix: String,
    description: String,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store").field("store", &self.description).finish()
    }
}

fn s3_error(what: &str, err: s3::error::S3Error) -> io::Error {
    match err {
        s3::error::S3Error::Io(err) => io::Error::new(err.kind(), format!("S3 {what}: {err}")),
        other => io::Error::other(format!("S3 {what}: {other}")),
    }
}

fn status_error(what: &str, status: u16, body: &[u8]) -> io::Error {
    let body = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    io::Error::other(format!("S3 {what}: HTTP {status}: {body}"))
}

impl S3Store {
    /// A store as `config` describes. Nothing is sent yet: a store that is
    /// down is found, and retried, when the channel first uses it.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] when no credentials were given and
    /// the environment has none, or the endpoint or bucket name is not
    /// valid.
    pub fn new(config: S3Config) -> io::Result<S3Store> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        let credentials = match &config.credentials {
            Some((id, secret)) => Credentials::new(Some(id), Some(secret), None, None, None),
            None => Credentials::from_env(),
        }
        .map_err(|err| invalid(format!("S3 credentials: {err} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")))?;
        let region = Region::Custom { region: config.region.clone(), endpoint: config.endpoint.clone() };
        let mut bucket =
            Bucket::new(&config.bucket, region, credentials).map_err(|err| invalid(format!("S3 bucket: {err}")))?;
        if config.path_style {
            bucket = bucket.with_path_style();
        }
        bucket.set_request_timeout(Some(config.timeout));
        let description = format!("{}/{}/{}", config.endpoint, config.bucket, config.prefix);
        Ok(S3Store { bucket, prefix: config.prefix, description })
    }

    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl RemoteStore for S3Store {
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        let what = format!("PUT {key}");
        let response = self.bucket.put_object(self.path(key), data).map_err(|err| s3_error(&what, err))?;
        match response.status_code() {
            200..=299 => Ok(()),
            status => Err(status_error(&what, status, response.as_slice())),
        }
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let what = format!("GET {key}");
        let response = self.bucket.get_object(self.path(key)).map_err(|err| s3_error(&what, err))?;
        match response.status_code() {
            200..=299 => Ok(Some(response.to_vec())),
            404 => Ok(None),
            status => Err(status_error(&what, status, response.as_slice())),
        }
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        let what = format!("HEAD {key}");
        let (head, status) = self.bucket.head_object(self.path(key)).map_err(|err| s3_error(&what, err))?;
        match status {
            200..=299 => {
                let length = head.content_length.ok_or_else(|| io::Error::other(format!("S3 {what}: no length")))?;
                Ok(Some(u64::try_from(length).map_err(|_| io::Error::other(format!("S3 {what}: length {length}")))?))
            }
            404 => Ok(None),
            status => Err(status_error(&what, status, &[])),
        }
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let what = format!("DELETE {key}");
        let response = self.bucket.delete_object(self.path(key)).map_err(|err| s3_error(&what, err))?;
        match response.status_code() {
            200..=299 | 404 => Ok(()),
            status => Err(status_error(&what, status, response.as_slice())),
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let what = format!("LIST {prefix}");
        let pages = self.bucket.list(self.path(prefix), None).map_err(|err| s3_error(&what, err))?;
        Ok(pages
            .into_iter()
            .flat_map(|page| page.contents)
            .filter_map(|object| object.key.strip_prefix(&self.prefix).map(str::to_owned))
            .collect())
    }
}
