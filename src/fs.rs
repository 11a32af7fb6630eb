//! The seam between the segment writer and the filesystem: every byte a
//! segment writer writes, and every sync, goes through [`WriteIo`]. The
//! real implementation calls the OS; tests swap in one that runs out of
//! space, fails syncs, or forgets unsynced writes as a power loss would.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Writes and syncs segment files.
pub(crate) trait WriteIo: Send + Sync + fmt::Debug {
    /// Writes some of `buf` at `file`'s current position; returns how many
    /// bytes were written.
    fn write(&self, path: &Path, file: &File, buf: &[u8]) -> io::Result<usize>;

    /// Puts `file`'s data on stable storage.
    fn sync(&self, path: &Path, file: &File) -> io::Result<()>;
}

/// A shared [`WriteIo`].
pub(crate) type Io = Arc<dyn WriteIo>;

/// The real filesystem.
#[derive(Debug, Default)]
pub(crate) struct Direct;

impl WriteIo for Direct {
    fn write(&self, _: &Path, mut file: &File, buf: &[u8]) -> io::Result<usize> {
        file.write(buf)
    }

    fn sync(&self, _: &Path, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}

/// The real filesystem, shared.
pub(crate) fn direct() -> Io {
    Arc::new(Direct)
}

/// Everything needed to sync a segment file outside the channel lock.
#[derive(Debug, Clone)]
pub(crate) struct SyncHandle {
    /// How to sync.
    pub(crate) io: Io,
    /// The file's path.
    pub(crate) path: PathBuf,
    /// The file.
    pub(crate) file: Arc<File>,
}

impl SyncHandle {
    /// Syncs the file.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.io.sync(&self.path, &self.file)
    }
}

#[cfg(test)]
pub(crate) mod faults {
    //! A [`WriteIo`] that injects faults, for tests.

    use std::collections::HashMap;
    use std::fs::File;
    use std::io::{self, Write};
    use std::path::{Path, PathBuf};

    use super::WriteIo;
    use crate::sync::Mutex;

    /// What the faulty filesystem does, and what it has seen.
    #[derive(Debug, Default)]
    struct Plan {
        /// Bytes that can still be written before writes fail with ENOSPC
        /// (the last write may be cut short); `None` for no limit.
        space_left: Option<u64>,
        /// Whether syncs fail with EIO.
        fail_syncs: bool,
        /// Bytes written to each file.
        written: HashMap<PathBuf, u64>,
        /// Bytes of each file known to be on stable storage.
        synced: HashMap<PathBuf, u64>,
    }

    /// A filesystem that runs out of space, fails syncs, and can "lose
    /// power", forgetting every write not synced.
    #[derive(Debug, Default)]
    pub(crate) struct FaultyIo {
        plan: Mutex<Plan>,
    }

    impl FaultyIo {
        /// From now on, at most `bytes` more bytes can be written.
        pub(crate) fn limit_space(&self, bytes: Option<u64>) {
            self.plan.lock().space_left = bytes;
        }

        /// Makes every sync fail, or succeed again.
        pub(crate) fn fail_syncs(&self, fail: bool) {
            self.plan.lock().fail_syncs = fail;
        }

        /// Simulates a power loss: every file written through this
        /// filesystem is cut back to what was last synced.
        pub(crate) fn lose_unsynced_writes(&self) {
            let plan = self.plan.lock();
            for (path, written) in &plan.written {
                let synced = plan.synced.get(path).copied().unwrap_or(0);
                if synced < *written && path.exists() {
                    let mut permissions = std::fs::metadata(path).unwrap().permissions();
                    #[allow(clippy::permissions_set_readonly_false)]
                    permissions.set_readonly(false);
                    std::fs::set_permissions(path, permissions).unwrap();
                    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(synced).unwrap();
                }
            }
        }
    }

    impl WriteIo for FaultyIo {
        fn write(&self, path: &Path, mut file: &File, buf: &[u8]) -> io::Result<usize> {
            let mut plan = self.plan.lock();
            let allowed = match plan.space_left {
                Some(0) => return Err(io::Error::from_raw_os_error(28)),
                Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
                None => buf.len(),
            };
            let written = file.write(&buf[..allowed])?;
            if let Some(left) = plan.space_left.as_mut() {
                *left -= written as u64;
            }
            *plan.written.entry(path.to_owned()).or_default() += written as u64;
            Ok(written)
        }

        fn sync(&self, path: &Path, file: &File) -> io::Result<()> {
            let mut plan = self.plan.lock();
            if plan.fail_syncs {
                return Err(io::Error::from_raw_os_error(5));
            }
            file.sync_data()?;
            let written = plan.written.get(path).copied().unwrap_or(0);
            plan.synced.insert(path.to_owned(), written);
            Ok(())
        }
    }
}
