//! A channel's directory: its name, its lock, and which files in it are
//! the crate's.
//!
//! A channel named `name` in `dir` owns `dir/name/`. It holds:
//! - `sump.lock`, locked exclusively for as long as the channel is open, so
//!   a second open of the same channel (in this process or another) fails
//!   with [`OpenError::Locked`] instead of corrupting the first. The file
//!   itself is left in place when the channel closes: deleting a lock file
//!   races with the next process that opens it.
//! - segment files, `{id:020}.seg`;
//! - segments set aside as damaged, `{id:020}.seg.corrupt`.
//!
//! Nothing else in the directory is read, renamed or deleted.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::err::OpenError;
use crate::segment::parse_segment_name;

/// Name of the lock file inside a channel's directory.
pub(crate) const LOCK_FILE: &str = "sump.lock";

/// Suffix added to a segment's file name when it is set aside as damaged.
pub(crate) const CORRUPT_SUFFIX: &str = ".corrupt";

/// An open, locked channel directory.
#[derive(Debug)]
pub(crate) struct ChannelDir {
    /// `dir/name`.
    path: PathBuf,
    /// The locked lock file; the lock is released when this is dropped.
    _lock: File,
}

/// Checks that `name` names exactly one directory entry.
pub(crate) fn validate_name(name: &str) -> Result<(), OpenError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("`.` and `..` do not name a directory of their own")
    } else if name.contains(['/', '\\']) {
        Some("it contains a path separator")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(OpenError::InvalidName { name: name.to_string(), reason }),
        None => Ok(()),
    }
}

impl ChannelDir {
    /// Creates `dir/name/` if missing and takes its lock.
    pub(crate) fn open(dir: &Path, name: &str) -> Result<ChannelDir, OpenError> {
        validate_name(name)?;
        let path = dir.join(name);
        std::fs::create_dir_all(&path).map_err(|err| OpenError::io(&path, err))?;
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|err| OpenError::io(&lock_path, err))?;
        match lock.try_lock() {
            Ok(()) => Ok(ChannelDir { path, _lock: lock }),
            Err(TryLockError::WouldBlock) => Err(OpenError::Locked { path: lock_path }),
            Err(TryLockError::Error(err)) => Err(OpenError::io(&lock_path, err)),
        }
    }

    /// `dir/name`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Ids of the segment files present, in ascending order, and the
    /// highest id in use by any segment file, damaged ones included.
    pub(crate) fn scan(&self) -> Result<(Vec<u64>, Option<u64>), OpenError> {
        let entries = std::fs::read_dir(&self.path).map_err(|err| OpenError::io(&self.path, err))?;
        let mut segments = Vec::new();
        let mut highest = None;
        for entry in entries {
            let entry = entry.map_err(|err| OpenError::io(&self.path, err))?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            let (id, damaged) = match name.strip_suffix(CORRUPT_SUFFIX) {
                Some(stem) => (parse_segment_name(stem), true),
                None => (parse_segment_name(&name), false),
            };
            let Some(id) = id else { continue };
            highest = highest.max(Some(id));
            if !damaged {
                segments.push(id);
            }
        }
        segments.sort_unstable();
        Ok((segments, highest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_one_plain_entry_are_refused() {
        for name in ["", ".", "..", "a/b", "a\\b", "nul\0byte", "/abs"] {
            assert!(matches!(validate_name(name), Err(OpenError::InvalidName { .. })), "{name:?}");
        }
        for name in ["jobs", "a.b", "..x", "metrics-2026", "日本"] {
            assert!(validate_name(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn the_lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = ChannelDir::open(dir.path(), "c").unwrap();
        assert!(matches!(ChannelDir::open(dir.path(), "c"), Err(OpenError::Locked { .. })));
        drop(first);
        ChannelDir::open(dir.path(), "c").unwrap();
    }
}
