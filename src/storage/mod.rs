//! The storage seam: every filesystem operation the crate performs goes
//! through [`Storage`], so that a test can make any one of them fail.
//!
//! Two implementations: [`Os`], the real filesystem, and (in tests)
//! [`faulty::FaultyStorage`], which fails the Nth operation of any kind
//! with any errno, cuts writes short, and simulates a power loss that
//! forgets every byte and directory entry that was not synced.
//!
//! # The operations, and what a failure of each means
//!
//! | operation | used for | a failure means |
//! |---|---|---|
//! | `create_dir_all` | the channel's directory | `open` fails; nothing changed |
//! | `open` | segments, the lock, progress and layout files | the file cannot be used: an `open` fails, a send fails and hands its item back, a segment the receiver cannot open is lost (counted) unless the error is transient |
//! | `read_at`, `read_all` | reading segments and small files | as a failed `open` of that file |
//! | `write` | appending records | the send fails and hands its item back; what reached the file is cut off again, or the segment is sealed if that fails too |
//! | `sync` | `SyncPolicy::Always`, `Interval`, shutdown | the sends the sync covered fail and their records are cut off (see `write`); at shutdown the items are counted as not persisted |
//! | `set_len` | cutting off a failed write, a torn tail | the segment is sealed at its last good record: nothing is ever appended after bytes of unknown state |
//! | `rename` | progress and layout files, setting a segment aside | the old file stays in place; a progress record that was not replaced is reported by `close` |
//! | `remove` | deleting read segments | the segment is recorded as read (in the progress file), so it is never delivered again |
//! | `list` | finding segments at `open` | `open` fails |
//! | `metadata` | file lengths, symlink checks | treated as a failed `open` of that file |
//! | `set_readonly` | sealing | logged only: read-only is a guard, not something correctness rests on |
//! | `sync_dir` | making creates, renames and deletes durable | as a failed `sync` |
//! | `available_space` | `min_free_bytes`, the free-space warning | logged; the last reading stands |
//! | `try_lock` | the lock file | `open` fails |
//!
//! Errors that say "try again" (EINTR, EAGAIN, EMFILE, ENFILE, ENOMEM) are
//! [`transient`]: they never make a segment count as damaged.
//!
//! Every `open` refuses to follow a symbolic link (`O_NOFOLLOW`), and
//! `metadata` and `list` report links as links: a link inside the channel
//! directory is a foreign file, never read and never written through.

#[cfg(test)]
pub(crate) mod faulty;

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// The kinds of storage operation, for counting and for aiming faults.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    CreateDir,
    Open,
    Read,
    Write,
    Sync,
    SetLen,
    Rename,
    Remove,
    List,
    Metadata,
    SetReadonly,
    SyncDir,
    FreeSpace,
    Lock,
}

/// How a file is opened. Every mode refuses to follow a symbolic link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Open {
    /// An existing file, to read.
    Read,
    /// An existing file, to write at its end.
    Append,
    /// A new file, to write; fails if the name is taken.
    CreateNew,
    /// A file to write from scratch: created, or emptied if present.
    Replace,
    /// A file to read and write, created if missing, never emptied.
    ReadWriteCreate,
}

/// What a directory entry is, as `lstat` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// An entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The entry's name.
    pub(crate) name: OsString,
    /// What it is, without following a link.
    pub(crate) kind: Kind,
}

/// What [`Storage::metadata`] reports, without following a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Length in bytes.
    pub(crate) len: u64,
    /// What it is.
    pub(crate) kind: Kind,
    /// Whether its permissions make it read-only.
    pub(crate) readonly: bool,
    /// The device and inode, which tell one file from another of the same
    /// name.
    pub(crate) identity: (u64, u64),
}

/// Every filesystem operation the crate performs. Paths are passed along
/// with open files so that an implementation can aim faults at files.
pub(crate) trait Storage: Send + Sync + fmt::Debug {
    /// Creates `path` and any missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Opens `path` as `how` says, never through a symbolic link.
    fn open(&self, path: &Path, how: Open) -> io::Result<File>;
    /// Reads into `buf` from offset `at`; returns how many bytes were read.
    fn read_at(&self, path: &Path, file: &File, buf: &mut [u8], at: u64) -> io::Result<usize>;
    /// Reads the whole of a small file.
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Writes some of `buf` at `file`'s position; returns how many bytes.
    fn write(&self, path: &Path, file: &File, buf: &[u8]) -> io::Result<usize>;
    /// Puts `file`'s data on stable storage.
    fn sync(&self, path: &Path, file: &File) -> io::Result<()>;
    /// Cuts or extends `file` to `len` bytes and moves its position there.
    fn set_len(&self, path: &Path, file: &File, len: u64) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Lists a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<Entry>>;
    /// Describes `path` without following a link.
    fn metadata(&self, path: &Path) -> io::Result<Meta>;
    /// Describes an open file.
    fn file_metadata(&self, path: &Path, file: &File) -> io::Result<Meta>;
    /// Makes a file read-only, or writable again.
    fn set_readonly(&self, path: &Path, readonly: bool) -> io::Result<()>;
    /// Makes a directory's entries (created, renamed, removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Free bytes on the filesystem holding `dir`.
    fn available_space(&self, dir: &Path) -> io::Result<u64>;
    /// Takes an exclusive lock on `file` for this process, without
    /// waiting; `Ok(false)` when another process holds it.
    fn try_lock(&self, path: &Path, file: &File) -> io::Result<bool>;
}

/// A shared [`Storage`].
pub(crate) type Fs = Arc<dyn Storage>;

/// The real filesystem.
#[derive(Debug, Default)]
pub(crate) struct Os;

/// The real filesystem, shared.
pub(crate) fn os() -> Fs {
    Arc::new(Os)
}

/// Whether an error says "try again later" rather than anything about the
/// file: such an error never makes a segment count as damaged.
pub(crate) fn transient(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::OutOfMemory)
        || matches!(err.raw_os_error(), Some(code) if code == EMFILE || code == ENFILE)
}

/// errno values named in this crate's handling and its tests.
#[cfg(test)]
pub(crate) const ENOSPC: i32 = 28;
#[cfg(test)]
pub(crate) const EIO: i32 = 5;
#[cfg(test)]
pub(crate) const ENOENT: i32 = 2;
pub(crate) const EMFILE: i32 = 24;
pub(crate) const ENFILE: i32 = 23;

fn kind_of(file_type: std::fs::FileType) -> Kind {
    if file_type.is_symlink() {
        Kind::Symlink
    } else if file_type.is_dir() {
        Kind::Dir
    } else if file_type.is_file() {
        Kind::File
    } else {
        Kind::Other
    }
}

fn meta_of(meta: &std::fs::Metadata) -> Meta {
    #[cfg(unix)]
    let identity = {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    };
    #[cfg(not(unix))]
    let identity = (0, 0);
    Meta { len: meta.len(), kind: kind_of(meta.file_type()), readonly: meta.permissions().readonly(), identity }
}

impl Storage for Os {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn open(&self, path: &Path, how: Open) -> io::Result<File> {
        let mut options = OpenOptions::new();
        match how {
            Open::Read => options.read(true),
            Open::Append => options.write(true),
            Open::CreateNew => options.write(true).create_new(true),
            Open::Replace => options.write(true).create(true).truncate(true),
            Open::ReadWriteCreate => options.read(true).write(true).create(true).truncate(false),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
        }
        let file = options.open(path)?;
        if how == Open::Append {
            use std::io::{Seek, SeekFrom};
            (&file).seek(SeekFrom::End(0))?;
        }
        Ok(file)
    }

    fn read_at(&self, _: &Path, file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::read_at(file, buf, at)
        }
        #[cfg(windows)]
        {
            std::os::windows::fs::FileExt::seek_read(file, buf, at)
        }
    }

    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open(path, Open::Read)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn write(&self, _: &Path, mut file: &File, buf: &[u8]) -> io::Result<usize> {
        file.write(buf)
    }

    fn sync(&self, _: &Path, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn set_len(&self, _: &Path, file: &File, len: u64) -> io::Result<()> {
        use std::io::{Seek, SeekFrom};
        file.set_len(len)?;
        let mut file = file;
        file.seek(SeekFrom::Start(len))?;
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type().map_or(Kind::Other, kind_of);
            entries.push(Entry { name: entry.file_name(), kind });
        }
        Ok(entries)
    }

    fn metadata(&self, path: &Path) -> io::Result<Meta> {
        std::fs::symlink_metadata(path).map(|meta| meta_of(&meta))
    }

    fn file_metadata(&self, _: &Path, file: &File) -> io::Result<Meta> {
        file.metadata().map(|meta| meta_of(&meta))
    }

    fn set_readonly(&self, path: &Path, readonly: bool) -> io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        if meta.file_type().is_symlink() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not changing the permissions of a link"));
        }
        let mut permissions = meta.permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        permissions.set_readonly(readonly);
        std::fs::set_permissions(path, permissions)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        #[cfg(unix)]
        {
            File::open(dir)?.sync_all()
        }
        #[cfg(not(unix))]
        {
            let _ = dir;
            Ok(())
        }
    }

    fn available_space(&self, dir: &Path) -> io::Result<u64> {
        fs4::available_space(dir)
    }

    fn try_lock(&self, _: &Path, file: &File) -> io::Result<bool> {
        // A POSIX record lock belongs to the process, not to the open file
        // description as `flock` does, so a child process forked by another
        // thread (which inherits every descriptor until it calls exec) does
        // not keep holding the lock after this process released it.
        // Within the process, `dir::ChannelDir` keeps a registry, since
        // record locks do not exclude their own process.
        #[cfg(unix)]
        {
            use rustix::fs::{fcntl_lock, FlockOperation};
            match fcntl_lock(file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => Ok(true),
                Err(err) if err == rustix::io::Errno::AGAIN || err == rustix::io::Errno::ACCESS => Ok(false),
                Err(err) => Err(err.into()),
            }
        }
        #[cfg(not(unix))]
        {
            match file.try_lock() {
                Ok(()) => Ok(true),
                Err(std::fs::TryLockError::WouldBlock) => Ok(false),
                Err(std::fs::TryLockError::Error(err)) => Err(err),
            }
        }
    }
}

/// Writes all of `buf` through `fs`, as `Write::write_all` does.
pub(crate) fn write_all(fs: &dyn Storage, path: &Path, file: &File, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match fs.write(path, file, buf) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write made no progress")),
            Ok(written) => buf = &buf[written..],
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes from offset `at` through `fs`.
pub(crate) fn read_exact_at(
    fs: &dyn Storage,
    path: &Path,
    file: &File,
    mut buf: &mut [u8],
    mut at: u64,
) -> io::Result<()> {
    while !buf.is_empty() {
        match fs.read_at(path, file, buf, at) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file is shorter than expected")),
            Ok(read) => {
                buf = &mut buf[read..];
                at += read as u64;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Writes a small file in full and syncs it: `path` is created or emptied.
pub(crate) fn write_file(fs: &dyn Storage, path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let file = fs.open(path, Open::Replace)?;
    write_all(fs, path, &file, bytes)?;
    if sync {
        fs.sync(path, &file)?;
    }
    Ok(())
}

/// Replaces `dir/name` with `bytes` atomically: written to `dir/temp`,
/// then renamed over it. With `sync`, durably: the file and the
/// directory are synced too.
pub(crate) fn replace_file(
    fs: &dyn Storage,
    dir: &Path,
    name: &str,
    temp: &str,
    bytes: &[u8],
    sync: bool,
) -> io::Result<()> {
    let temp = dir.join(temp);
    write_file(fs, &temp, bytes, sync)?;
    fs.rename(&temp, &dir.join(name))?;
    if sync {
        fs.sync_dir(dir)?;
    }
    Ok(())
}

/// Removes a file; one that is already gone counts as removed (checked:
/// a "not found" for a file that is still there is an error).
pub(crate) fn remove_if_present(fs: &dyn Storage, path: &Path) -> io::Result<()> {
    match fs.remove(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound || fs.metadata(path).is_ok() => Err(err),
        _ => Ok(()),
    }
}

/// Everything needed to sync a segment file outside the channel lock.
#[derive(Debug, Clone)]
pub(crate) struct SyncHandle {
    /// How to sync.
    pub(crate) fs: Fs,
    /// The file's path.
    pub(crate) path: std::path::PathBuf,
    /// The file.
    pub(crate) file: Arc<File>,
}

impl SyncHandle {
    /// Syncs the file.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.fs.sync(&self.path, &self.file)
    }
}
