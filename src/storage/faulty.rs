//! [`FaultyStorage`]: the real filesystem with faults on demand, for tests.
//!
//! It counts every operation, can fail the Nth one (of any kind, or of one
//! kind) with any errno, once or from then on, can cut writes short, can
//! run out of space, and can lose power: from a chosen operation on every
//! call fails, and [`FaultyStorage::restore_after_power_loss`] then puts
//! the directory back as a machine that lost power would find it, every
//! byte and every directory entry that was not synced forgotten.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::{Entry, Meta, Op, Open, Os, Storage};
use crate::sync::Mutex;

/// Which operation fails, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fault {
    /// Index of the failing operation among those `only` matches (all
    /// operations when `None`), counting from 0 since the plan was set.
    pub(crate) at: u64,
    /// The errno it fails with.
    pub(crate) errno: i32,
    /// Only operations of this kind count and fail.
    pub(crate) only: Option<Op>,
    /// Whether every later matching operation fails too.
    pub(crate) sticky: bool,
}

/// A directory change not yet made durable by a directory sync.
#[derive(Debug)]
enum DirChange {
    /// A file was created.
    Created(PathBuf),
    /// A file was removed; its synced bytes, to put back.
    Removed(PathBuf, Vec<u8>),
    /// A file was renamed, replacing `to` whose synced bytes are kept.
    Renamed { from: PathBuf, to: PathBuf, replaced: Option<Vec<u8>> },
}

/// What the faulty filesystem does, and what it has seen.
#[derive(Debug, Default)]
struct Plan {
    /// The fault to inject, if any.
    fault: Option<Fault>,
    /// Operations matching the fault's filter since it was set.
    matched: u64,
    /// Operations of every kind since the storage was made.
    ops: u64,
    /// Power is lost when `ops` reaches this.
    power_off_at: Option<u64>,
    /// The disk fills up (every later write fails with ENOSPC) when `ops`
    /// reaches this.
    full_at: Option<u64>,
    /// Whether power is lost: every operation fails with EIO.
    dead: bool,
    /// Bytes that can still be written before writes fail with ENOSPC
    /// (the last write may be cut short); `None` for no limit.
    space_left: Option<u64>,
    /// Whether syncs fail with EIO.
    fail_syncs: bool,
    /// How long each sync takes at least, like a disk without a write
    /// cache.
    slow_syncs: Option<std::time::Duration>,
    /// Whether each write writes at most half of what it is given.
    short_writes: bool,
    /// Bytes of each file known to be on stable storage, for the files
    /// this storage wrote or created.
    synced: HashMap<PathBuf, u64>,
    /// Directory changes not yet synced, oldest first.
    unsynced: Vec<DirChange>,
    /// Faults injected so far.
    injected: u64,
    /// The operations the faults hit, for messages.
    hits: Vec<(Op, PathBuf)>,
}

/// The real filesystem with faults on demand.
#[derive(Debug, Default)]
pub(crate) struct FaultyStorage {
    plan: Mutex<Plan>,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl FaultyStorage {
    /// Fails operations as `fault` says, counting from now; `None` stops
    /// failing.
    pub(crate) fn set_fault(&self, fault: Option<Fault>) {
        let mut plan = self.plan.lock();
        plan.fault = fault;
        plan.matched = 0;
    }

    /// Operations of every kind so far.
    pub(crate) fn ops(&self) -> u64 {
        self.plan.lock().ops
    }

    /// Faults injected so far, and the kinds of operation they hit.
    pub(crate) fn injected(&self) -> (u64, Vec<(Op, PathBuf)>) {
        let plan = self.plan.lock();
        (plan.injected, plan.hits.clone())
    }

    /// Loses power once `ops()` reaches `at`: from then on every operation
    /// fails with EIO, until [`restore_after_power_loss`](Self::restore_after_power_loss).
    pub(crate) fn power_off_at(&self, at: Option<u64>) {
        self.plan.lock().power_off_at = at;
    }

    /// Fills the disk once `ops()` reaches `at`: every later write fails
    /// with ENOSPC, until [`limit_space`](Self::limit_space)`(None)`.
    pub(crate) fn full_at(&self, at: Option<u64>) {
        self.plan.lock().full_at = at;
    }

    /// Whether power is off.
    pub(crate) fn is_dead(&self) -> bool {
        self.plan.lock().dead
    }

    /// From now on, at most `bytes` more bytes can be written.
    pub(crate) fn limit_space(&self, bytes: Option<u64>) {
        self.plan.lock().space_left = bytes;
    }

    /// Makes every sync fail, or succeed again.
    pub(crate) fn fail_syncs(&self, fail: bool) {
        self.plan.lock().fail_syncs = fail;
    }

    /// Makes every sync take at least `delay` (`None`: as long as the
    /// real one).
    pub(crate) fn slow_syncs(&self, delay: Option<std::time::Duration>) {
        self.plan.lock().slow_syncs = delay;
    }

    /// Makes every write write at most half of its buffer (at least one
    /// byte), or whole buffers again.
    pub(crate) fn short_writes(&self, short: bool) {
        self.plan.lock().short_writes = short;
    }

    /// Simulates a power loss now: see [`restore_after_power_loss`](Self::restore_after_power_loss).
    pub(crate) fn lose_unsynced_writes(&self) {
        self.plan.lock().dead = true;
        self.restore_after_power_loss();
    }

    /// Puts every file this storage touched back as a power loss would
    /// leave it, turns the power back on and clears every fault: files cut
    /// back to their synced bytes, then unsynced creates, removes and
    /// renames undone, newest first.
    pub(crate) fn restore_after_power_loss(&self) {
        let mut plan = self.plan.lock();
        for (path, &synced) in &plan.synced {
            let Ok(meta) = std::fs::symlink_metadata(path) else { continue };
            if meta.len() > synced {
                force_len(path, synced);
            }
        }
        for change in std::mem::take(&mut plan.unsynced).into_iter().rev() {
            match change {
                DirChange::Created(path) => {
                    let _ = std::fs::remove_file(&path);
                }
                DirChange::Removed(path, bytes) => {
                    let _ = std::fs::write(&path, bytes);
                }
                DirChange::Renamed { from, to, replaced } => {
                    let _ = std::fs::rename(&to, &from);
                    if let Some(bytes) = replaced {
                        let _ = std::fs::write(&to, bytes);
                    }
                }
            }
        }
        plan.synced.clear();
        plan.dead = false;
        plan.power_off_at = None;
        plan.full_at = None;
        plan.fault = None;
        plan.space_left = None;
        plan.fail_syncs = false;
        plan.slow_syncs = None;
        plan.short_writes = false;
    }

    /// Counts an operation and decides whether it fails.
    fn check(&self, op: Op, path: &Path) -> io::Result<()> {
        let mut plan = self.plan.lock();
        plan.ops += 1;
        if plan.power_off_at.is_some_and(|at| plan.ops > at) {
            plan.dead = true;
        }
        if plan.dead {
            return Err(errno(super::EIO));
        }
        if plan.full_at.is_some_and(|at| plan.ops > at) {
            plan.full_at = None;
            plan.space_left = Some(0);
        }
        let Some(fault) = plan.fault else { return Ok(()) };
        if fault.only.is_some_and(|only| only != op) {
            return Ok(());
        }
        let index = plan.matched;
        plan.matched += 1;
        if index == fault.at || (fault.sticky && index > fault.at) {
            plan.injected += 1;
            plan.hits.push((op, path.to_owned()));
            return Err(errno(fault.errno));
        }
        Ok(())
    }

    /// The synced bytes of `path`, to put back if a change to it is undone.
    fn synced_bytes(plan: &Plan, path: &Path) -> Option<Vec<u8>> {
        let mut bytes = std::fs::read(path).ok()?;
        if let Some(&synced) = plan.synced.get(path) {
            bytes.truncate(synced as usize);
        }
        Some(bytes)
    }
}

/// Cuts a file to `len` bytes even if it is read-only.
fn force_len(path: &Path, len: u64) {
    let Ok(meta) = std::fs::metadata(path) else { return };
    let mut permissions = meta.permissions();
    let readonly = permissions.readonly();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    let _ = std::fs::set_permissions(path, permissions.clone());
    if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
        let _ = file.set_len(len);
    }
    permissions.set_readonly(readonly);
    let _ = std::fs::set_permissions(path, permissions);
}

impl Storage for FaultyStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check(Op::CreateDir, path)?;
        Os.create_dir_all(path)
    }

    fn open(&self, path: &Path, how: Open) -> io::Result<File> {
        self.check(Op::Open, path)?;
        let existed = std::fs::symlink_metadata(path).is_ok();
        let replaced = match how {
            Open::Replace if existed => Self::synced_bytes(&self.plan.lock(), path),
            _ => None,
        };
        let file = Os.open(path, how)?;
        let mut plan = self.plan.lock();
        match how {
            Open::CreateNew | Open::Replace | Open::ReadWriteCreate if !existed => {
                plan.synced.insert(path.to_owned(), 0);
                plan.unsynced.push(DirChange::Created(path.to_owned()));
            }
            Open::Replace => {
                // Emptied: what it held is gone once this is synced.
                plan.synced.insert(path.to_owned(), 0);
                if let Some(bytes) = replaced {
                    plan.unsynced.push(DirChange::Removed(path.to_owned(), bytes));
                    plan.unsynced.push(DirChange::Created(path.to_owned()));
                }
            }
            _ => {}
        }
        Ok(file)
    }

    fn read_at(&self, path: &Path, file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
        self.check(Op::Read, path)?;
        Os.read_at(path, file, buf, at)
    }

    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.check(Op::Read, path)?;
        Os.read_all(path)
    }

    fn write(&self, path: &Path, file: &File, buf: &[u8]) -> io::Result<usize> {
        self.check(Op::Write, path)?;
        let mut plan = self.plan.lock();
        let mut allowed = match plan.space_left {
            Some(0) => return Err(errno(super::ENOSPC)),
            Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        if plan.short_writes && allowed > 1 {
            allowed /= 2;
        }
        if !plan.synced.contains_key(path) {
            // A file this storage did not create: what it held before
            // counts as synced.
            let len = file.metadata().map_or(0, |meta| meta.len());
            plan.synced.insert(path.to_owned(), len);
        }
        let written = Os.write(path, file, &buf[..allowed])?;
        if let Some(left) = plan.space_left.as_mut() {
            *left -= written as u64;
        }
        Ok(written)
    }

    fn sync(&self, path: &Path, file: &File) -> io::Result<()> {
        self.check(Op::Sync, path)?;
        let delay = self.plan.lock().slow_syncs;
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
        let mut plan = self.plan.lock();
        if plan.fail_syncs {
            return Err(errno(super::EIO));
        }
        Os.sync(path, file)?;
        let len = file.metadata()?.len();
        plan.synced.insert(path.to_owned(), len);
        Ok(())
    }

    fn set_len(&self, path: &Path, file: &File, len: u64) -> io::Result<()> {
        self.check(Op::SetLen, path)?;
        let mut plan = self.plan.lock();
        if !plan.synced.contains_key(path) {
            let before = file.metadata().map_or(0, |meta| meta.len());
            plan.synced.insert(path.to_owned(), before);
        }
        Os.set_len(path, file, len)?;
        if let Some(synced) = plan.synced.get_mut(path) {
            *synced = (*synced).min(len);
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename, from)?;
        let replaced = Self::synced_bytes(&self.plan.lock(), to);
        Os.rename(from, to)?;
        let mut plan = self.plan.lock();
        match plan.synced.remove(from) {
            Some(synced) => plan.synced.insert(to.to_owned(), synced),
            None => plan.synced.remove(to),
        };
        plan.unsynced.push(DirChange::Renamed { from: from.to_owned(), to: to.to_owned(), replaced });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.check(Op::Remove, path)?;
        let bytes = Self::synced_bytes(&self.plan.lock(), path);
        Os.remove(path)?;
        let mut plan = self.plan.lock();
        plan.synced.remove(path);
        if let Some(bytes) = bytes {
            plan.unsynced.push(DirChange::Removed(path.to_owned(), bytes));
        }
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.check(Op::Remove, path)?;
        Os.remove_dir(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<Entry>> {
        self.check(Op::List, dir)?;
        Os.list(dir)
    }

    fn metadata(&self, path: &Path) -> io::Result<Meta> {
        self.check(Op::Metadata, path)?;
        Os.metadata(path)
    }

    fn file_metadata(&self, path: &Path, file: &File) -> io::Result<Meta> {
        self.check(Op::Metadata, path)?;
        Os.file_metadata(path, file)
    }

    fn set_readonly(&self, path: &Path, readonly: bool) -> io::Result<()> {
        self.check(Op::SetReadonly, path)?;
        Os.set_readonly(path, readonly)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(Op::SyncDir, dir)?;
        Os.sync_dir(dir)?;
        let mut plan = self.plan.lock();
        plan.unsynced.retain(|change| {
            let path = match change {
                DirChange::Created(path) | DirChange::Removed(path, _) => path,
                DirChange::Renamed { to, .. } => to,
            };
            path.parent() != Some(dir)
        });
        Ok(())
    }

    fn available_space(&self, dir: &Path) -> io::Result<u64> {
        self.check(Op::FreeSpace, dir)?;
        Os.available_space(dir)
    }

    fn try_lock(&self, path: &Path, file: &File) -> io::Result<bool> {
        self.check(Op::Lock, path)?;
        Os.try_lock(path, file)
    }
}
