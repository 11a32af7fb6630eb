//! A channel's directory: its name, its lock, and which files in it are
//! the crate's.
//!
//! A channel named `name` in `dir` owns `dir/name/`. It holds:
//! - `sump.lock`, locked for as long as the channel is open, so a second
//!   open of the same channel (in this process or another) fails at once
//!   with [`OpenError::Locked`] instead of corrupting the first. The lock
//!   is a POSIX record lock, which belongs to the process: a child that
//!   another thread forks does not inherit it, so a reopen right after
//!   every handle was dropped is never refused. Record locks do not keep
//!   out their own process, so a registry of the directories this process
//!   has open does that. The file itself is left in place when the channel
//!   closes: deleting a lock file races with the next process that opens
//!   it.
//! - segment files, `{id:020}.seg`;
//! - segments set aside as damaged, `{id:020}.seg.corrupt` and
//!   `{id:020}.seg.corrupt.N` (see [`parse_set_aside_name`]).
//!
//! Nothing else in the directory is read, renamed or deleted, and an entry
//! that is a symbolic link is never a segment, whatever its name.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::err::OpenError;
use crate::segment::parse_segment_name;
use crate::storage::{Fs, Kind, Open};

/// Name of the lock file inside a channel's directory.
pub(crate) const LOCK_FILE: &str = "sump.lock";

/// Suffix added to a segment's file name when it is set aside as damaged.
pub(crate) const CORRUPT_SUFFIX: &str = ".corrupt";

/// An open, locked channel directory.
#[derive(Debug)]
pub(crate) struct ChannelDir {
    /// `dir/name`.
    path: PathBuf,
    /// Every file operation goes through here.
    fs: Fs,
    /// The locked lock file; the lock is released when it is closed, on
    /// drop. `None` only while dropping.
    lock: Option<File>,
    /// The lock file's device and inode, to tell whether the directory
    /// was deleted (or replaced) behind the channel's back.
    lock_identity: (u64, u64),
    /// This directory's entry in the process's registry, removed on drop.
    registered: PathBuf,
    /// Bound on the bytes of set-aside files; the oldest are removed past it.
    max_set_aside_bytes: u64,
    /// Set-aside files in the directory and their bytes, as of the last
    /// scan or set-aside.
    set_aside: (usize, u64),
}

/// A set-aside file found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SetAsideFile {
    /// The segment id in its name.
    pub(crate) id: u64,
    /// Its name.
    pub(crate) name: String,
    /// Its length in bytes.
    pub(crate) bytes: u64,
}

/// The channel directories this process has open, by absolute path.
fn registry() -> &'static Mutex<HashSet<PathBuf>> {
    static OPEN: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    OPEN.get_or_init(Mutex::default)
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

/// The id of a set-aside segment's name (`{id:020}.seg.corrupt` or
/// `{id:020}.seg.corrupt.N`), or `None` for any other name.
pub(crate) fn parse_set_aside_name(name: &str) -> Option<u64> {
    let at = name.find(CORRUPT_SUFFIX)?;
    let rest = &name[at + CORRUPT_SUFFIX.len()..];
    let numbered = rest.is_empty()
        || rest.strip_prefix('.').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !numbered {
        return None;
    }
    parse_segment_name(&name[..at])
}

impl ChannelDir {
    /// Creates `dir/name/` if missing and takes its lock.
    pub(crate) fn open(fs: &Fs, dir: &Path, name: &str) -> Result<ChannelDir, OpenError> {
        validate_name(name)?;
        let path = dir.join(name);
        fs.create_dir_all(&path).map_err(|err| OpenError::io(&path, err))?;
        let lock_path = path.join(LOCK_FILE);
        let registered = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
        // Registered before the lock file is opened: closing any descriptor
        // of a file drops the process's record locks on it, so this process
        // must never open a lock file it already holds.
        if !registry().lock().is_ok_and(|mut open| open.insert(registered.clone())) {
            return Err(OpenError::Locked { path: lock_path });
        }
        let unregister = |err| {
            if let Ok(mut open) = registry().lock() {
                open.remove(&registered);
            }
            err
        };
        let lock =
            fs.open(&lock_path, Open::ReadWriteCreate).map_err(|err| unregister(OpenError::io(&lock_path, err)))?;
        match fs.try_lock(&lock_path, &lock) {
            Ok(true) => {}
            Ok(false) => return Err(unregister(OpenError::Locked { path: lock_path })),
            Err(err) => return Err(unregister(OpenError::io(&lock_path, err))),
        }
        let lock_identity = match fs.file_metadata(&lock_path, &lock) {
            Ok(meta) => meta.identity,
            Err(err) => return Err(unregister(OpenError::io(&lock_path, err))),
        };
        Ok(ChannelDir {
            path,
            fs: std::sync::Arc::clone(fs),
            lock: Some(lock),
            lock_identity,
            registered,
            max_set_aside_bytes: u64::MAX,
            set_aside: (0, 0),
        })
    }

    /// `dir/name`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The storage every file operation goes through.
    pub(crate) fn fs(&self) -> &Fs {
        &self.fs
    }

    /// Whether the directory is still this channel's: its lock file is the
    /// one this channel locked. `false` once another program deleted the
    /// directory (or the lock file). An error reading it counts as alive:
    /// only a definite answer ends a channel.
    pub(crate) fn still_ours(&self) -> bool {
        match self.fs.metadata(&self.path.join(LOCK_FILE)) {
            Ok(meta) => meta.identity == self.lock_identity,
            Err(err) => err.kind() != std::io::ErrorKind::NotFound,
        }
    }

    /// Sets the bound on the bytes of set-aside files, and applies it.
    pub(crate) fn bound_set_aside(&mut self, max_bytes: u64) {
        self.max_set_aside_bytes = max_bytes;
        self.enforce_set_aside_bound();
    }

    /// Set-aside files and their bytes, as of the last scan or set-aside.
    pub(crate) fn set_aside_totals(&self) -> (usize, u64) {
        self.set_aside
    }

    /// Renames a damaged segment to `*.seg.corrupt` (or `*.seg.corrupt.N`
    /// if that name is taken) so it can be inspected, then removes the
    /// oldest set-aside files while they exceed the bound. Returns whether
    /// the segment is gone from its name (set aside, or already missing);
    /// a failure is logged, and the caller must then record the segment
    /// as read so that no restart delivers it again.
    pub(crate) fn set_aside(&mut self, path: &Path) -> bool {
        let mut target = path.as_os_str().to_owned();
        target.push(CORRUPT_SUFFIX);
        let base = target.clone();
        let mut n = 0;
        while self.fs.metadata(Path::new(&target)).is_ok() {
            n += 1;
            target = base.clone();
            target.push(format!(".{n}"));
        }
        let target = PathBuf::from(target);
        match self.fs.rename(path, &target) {
            Ok(()) => tracing::warn!(path = %target.display(), "damaged segment set aside"),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && self.fs.metadata(path).is_err() => return true,
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "could not set damaged segment aside");
                return false;
            }
        }
        self.enforce_set_aside_bound();
        true
    }

    /// The set-aside files in the directory, oldest first.
    pub(crate) fn set_aside_files(&self) -> std::io::Result<Vec<SetAsideFile>> {
        list_set_aside(&*self.fs, &self.path)
    }

    fn enforce_set_aside_bound(&mut self) {
        let files = match self.set_aside_files() {
            Ok(files) => files,
            Err(err) => {
                tracing::warn!(path = %self.path.display(), error = %err, "cannot list set-aside files");
                return;
            }
        };
        let mut total: u64 = files.iter().map(|file| file.bytes).sum();
        let mut count = files.len();
        for file in &files {
            if total <= self.max_set_aside_bytes {
                break;
            }
            let path = self.path.join(&file.name);
            match self.fs.remove(&path) {
                Ok(()) => {
                    tracing::warn!(path = %path.display(), bytes = file.bytes, limit = self.max_set_aside_bytes,
                        "set-aside files exceed max_set_aside_bytes; the oldest removed");
                    total -= file.bytes;
                    count -= 1;
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "could not remove an old set-aside file");
                }
            }
        }
        self.set_aside = (count, total);
    }

    /// Ids of the segment files present, in ascending order, and the
    /// highest id in use by any segment file, set-aside ones included.
    /// Symbolic links are foreign files: they are skipped, with a warning.
    pub(crate) fn scan(&self) -> Result<(Vec<u64>, Option<u64>), OpenError> {
        let entries = self.fs.list(&self.path).map_err(|err| OpenError::io(&self.path, err))?;
        let mut segments = Vec::new();
        let mut highest = None;
        for entry in entries {
            let Ok(name) = entry.name.into_string() else { continue };
            let (id, set_aside) = match parse_segment_name(&name) {
                Some(id) => (Some(id), false),
                None => (parse_set_aside_name(&name), true),
            };
            let Some(id) = id else { continue };
            if entry.kind != Kind::File {
                tracing::warn!(path = %self.path.join(&name).display(), kind = ?entry.kind,
                    "an entry named like a segment is not a plain file; left alone");
                continue;
            }
            highest = highest.max(Some(id));
            if !set_aside {
                segments.push(id);
            }
        }
        segments.sort_unstable();
        Ok((segments, highest))
    }
}

/// The set-aside files in `dir`, oldest first (by segment id, then by the
/// number after `.corrupt`). Links and directories are not among them.
pub(crate) fn list_set_aside(fs: &dyn crate::storage::Storage, dir: &Path) -> std::io::Result<Vec<SetAsideFile>> {
    let mut files = Vec::new();
    for entry in fs.list(dir)? {
        let Ok(name) = entry.name.into_string() else { continue };
        let Some(id) = parse_set_aside_name(&name) else { continue };
        if entry.kind != Kind::File {
            continue;
        }
        let bytes = match fs.metadata(&dir.join(&name)) {
            Ok(meta) => meta.len,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        files.push(SetAsideFile { id, name, bytes });
    }
    let number = |name: &str| name.rsplit_once(".corrupt.").and_then(|(_, n)| n.parse::<u64>().ok()).unwrap_or(0);
    files.sort_by_key(|file| (file.id, number(&file.name)));
    Ok(files)
}

impl ChannelDir {
    /// Releases the lock now (once; dropping does it otherwise), so the
    /// channel can be opened again even while something, such as a
    /// background thread, still holds the handle.
    pub(crate) fn unlock(&mut self) {
        // The lock goes with the descriptor, and the registry entry after
        // it: a new open in between would lose its lock when this closes.
        if let Some(lock) = self.lock.take() {
            drop(lock);
            if let Ok(mut open) = registry().lock() {
                open.remove(&self.registered);
            }
        }
    }
}

impl Drop for ChannelDir {
    fn drop(&mut self) {
        self.unlock();
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
        let fs = crate::storage::os();
        let first = ChannelDir::open(&fs, dir.path(), "c").unwrap();
        assert!(matches!(ChannelDir::open(&fs, dir.path(), "c"), Err(OpenError::Locked { .. })));
        drop(first);
        ChannelDir::open(&fs, dir.path(), "c").unwrap();
    }

    #[test]
    fn set_aside_names_are_parsed_one_way_whatever_their_number() {
        assert_eq!(parse_set_aside_name("00000000000000000007.seg.corrupt"), Some(7));
        assert_eq!(parse_set_aside_name("00000000000000000007.seg.corrupt.12"), Some(7));
        for name in [
            "00000000000000000007.seg",
            "7.seg.corrupt",
            "00000000000000000007.seg.corrupt.",
            "00000000000000000007.seg.corrupt.x",
            "00000000000000000007.seg.corruptx",
        ] {
            assert_eq!(parse_set_aside_name(name), None, "{name}");
        }
    }
}
