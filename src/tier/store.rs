//! [`RemoteStore`]: what a remote tier is. It imports nothing of the
//! crate, so the settings can name it without reaching above the storage
//! seam.

use std::fmt;
use std::io;
use std::sync::Arc;

/// Where offloaded segments go: another disk, an NFS mount, an
/// S3-compatible object store.
///
/// The calls are blocking; the channel makes them on its own `sump-tier`
/// thread, never under its lock, so a slow store slows only the tier. Keys
/// are short ASCII names (letters, digits, `-` and `.`), unique per
/// channel and segment. An implementation must be safe to call from
/// several threads.
///
/// # Errors
///
/// Every method returns the store's error as an [`io::Error`]; the
/// channel retries with backoff, and counts each failure in
/// [`Stats::remote_failures`](crate::Stats::remote_failures).
pub trait RemoteStore: Send + Sync + fmt::Debug + 'static {
    /// Stores `data` under `key`, replacing any object of that name. It
    /// returns only once the object is durable in the store: the channel
    /// deletes its local copy after that.
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()>;
    /// The object `key`, or `None` if there is none.
    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    /// The size in bytes of object `key`, or `None` if there is none:
    /// what the channel checks after a `put`, before it deletes its local
    /// copy.
    fn size(&self, key: &str) -> io::Result<Option<u64>>;
    /// Deletes object `key`; one that does not exist counts as deleted.
    fn delete(&self, key: &str) -> io::Result<()>;
    /// The keys of every object whose key starts with `prefix`, in any
    /// order.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
}

impl<S: RemoteStore + ?Sized> RemoteStore for Arc<S> {
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        (**self).put(key, data)
    }
    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        (**self).get(key)
    }
    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        (**self).size(key)
    }
    fn delete(&self, key: &str) -> io::Result<()> {
        (**self).delete(key)
    }
    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        (**self).list(prefix)
    }
}
