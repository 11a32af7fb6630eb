//! The disk queue's side of the remote tier (see [`crate::tier`] for the
//! lifecycle): which segment to offload or fetch next, what each outcome
//! changes, and how recovery merges the tier file into the backlog.
//!
//! The queue decides under the channel lock and the `sump-tier` thread
//! does the slow part (reading a segment, talking to the store, writing a
//! fetched copy) outside it, one job at a time. Every state is persisted
//! before the step it announces: `CopyStarted` before the upload,
//! `CopyFinished` before the local copy is deleted, `Read` before a
//! consumed segment's local file goes. A fetched copy is renamed into place
//! under the lock, and only while the channel is open.
//!
//! Accounting: `DiskQueue::bytes` counts every owned segment as if local;
//! the tier keeps the count and bytes of those whose only copy is remote,
//! and the queue's `bytes()` and `segments()` subtract them, so the local
//! bounds see local files only.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::DiskQueue;
use crate::recover::Recovered;
use crate::segment::{segment_path, SegmentMeta};
use crate::storage::{self, Fs, Storage};
use crate::tier::file::{self, Entries, TierEntry};
use crate::tier::{object_key, object_prefix, RemoteSettings, RemoteStore, TierState};

/// First wait after a failed job; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the store is swept for objects no entry accounts for (and
/// once at open).
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// Prefix of the temporary files fetched copies are written to.
pub(crate) const FETCH_TEMP_PREFIX: &str = "sump.fetch.";

/// The remote tier of one channel.
#[derive(Debug)]
pub(crate) struct Tier {
    settings: RemoteSettings,
    /// Every segment the tier handles.
    entries: Entries,
    /// Sealed segments whose only copy is remote.
    remote_only: usize,
    /// Their bytes.
    remote_only_bytes: u64,
    /// Whether a job is out with the tier thread.
    busy: bool,
    /// No job starts before this, after a failure.
    retry_at: Option<Instant>,
    /// The wait after the next failure.
    backoff: Duration,
    /// Counters for `Stats`.
    uploads: u64,
    fetches: u64,
    failures: u64,
    /// The tier thread, woken when there may be work.
    thread: Option<std::thread::Thread>,
    /// Distinguishes this run's temporary files from another's.
    temp_tag: u64,
    /// When the store was last swept for objects no entry accounts for.
    swept_at: Option<Instant>,
}

/// What the tier thread does next, outside the lock.
#[derive(Debug, Clone)]
pub(crate) enum Job {
    /// Copy a sealed segment to the store.
    Upload { id: u64, prefix: String, run: u64, path: PathBuf, bytes: u64 },
    /// Bring a remote segment back.
    Fetch { id: u64, key: String, temp: PathBuf, bytes: u64, crc: u32 },
    /// Delete the objects of a consumed segment.
    Delete { id: u64, prefix: String },
    /// Delete the channel's objects that no entry accounts for: uploads
    /// that landed after their process was killed, or whose entry is gone.
    /// `keep` says, per segment prefix, which key to keep (`None`: any, the
    /// upload is not finished).
    Sweep { channel: String, keep: std::collections::BTreeMap<String, Option<String>> },
}

/// How a job went.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Uploaded and confirmed: the CRC32C of what was uploaded, and its key.
    Uploaded { crc: u32, key: String },
    /// Fetched and verified into the job's temporary file.
    Fetched,
    /// The object is gone.
    Deleted,
    /// The object is missing or its bytes are not the segment's: its
    /// records are lost.
    Lost(String),
    /// It failed and is retried later.
    Failed(io::Error),
}

/// Everything a job needs outside the lock.
pub(crate) struct Work {
    pub(crate) job: Job,
    pub(crate) fs: Fs,
    pub(crate) store: Arc<dyn RemoteStore>,
}

impl Work {
    /// Runs the job.
    pub(crate) fn run(&self) -> Outcome {
        match &self.job {
            Job::Upload { prefix, run, path, bytes, .. } => upload(&*self.fs, &*self.store, prefix, *run, path, *bytes),
            Job::Fetch { key, temp, bytes, crc, .. } => fetch(&*self.fs, &*self.store, key, temp, *bytes, *crc),
            Job::Delete { prefix, .. } => {
                let deleted =
                    self.store.list(prefix).and_then(|keys| keys.iter().try_for_each(|key| self.store.delete(key)));
                match deleted {
                    Ok(()) => Outcome::Deleted,
                    Err(err) => Outcome::Failed(err),
                }
            }
            Job::Sweep { channel, keep } => match sweep(&*self.store, channel, keep) {
                Ok(()) => Outcome::Deleted,
                Err(err) => Outcome::Failed(err),
            },
        }
    }
}

fn upload(fs: &dyn Storage, store: &dyn RemoteStore, prefix: &str, run: u64, path: &Path, bytes: u64) -> Outcome {
    let data = match fs.read_all(path) {
        Ok(data) => data,
        Err(err) => return Outcome::Failed(err),
    };
    if data.len() as u64 != bytes {
        return Outcome::Failed(io::Error::other(format!(
            "segment {} is {} bytes, not the {bytes} it was sealed with",
            path.display(),
            data.len()
        )));
    }
    let crc = crc32c::crc32c(&data);
    let key = object_key(prefix, crc, run);
    if let Err(err) = store.put(&key, &data) {
        return Outcome::Failed(err);
    }
    match store.size(&key) {
        Ok(Some(size)) if size == bytes => Outcome::Uploaded { crc, key },
        Ok(size) => Outcome::Failed(io::Error::other(format!(
            "the store holds {size:?} bytes for {key} after uploading {bytes}; uploading again"
        ))),
        Err(err) => Outcome::Failed(err),
    }
}

fn sweep(
    store: &dyn RemoteStore,
    channel: &str,
    keep: &std::collections::BTreeMap<String, Option<String>>,
) -> io::Result<()> {
    for key in store.list(channel)? {
        let owner = keep.range(..=key.clone()).next_back().filter(|(prefix, _)| key.starts_with(prefix.as_str()));
        let wanted = match owner {
            Some((_, None)) => true,
            Some((_, Some(kept))) => *kept == key,
            None => false,
        };
        if !wanted {
            tracing::info!(key, "deleting an object of this channel that no segment accounts for");
            store.delete(&key)?;
        }
    }
    Ok(())
}

fn fetch(fs: &dyn Storage, store: &dyn RemoteStore, key: &str, temp: &Path, bytes: u64, crc: u32) -> Outcome {
    let data = match store.get(key) {
        Ok(Some(data)) => data,
        Ok(None) => return Outcome::Lost(format!("object {key} is missing from the store")),
        Err(err) => return Outcome::Failed(err),
    };
    if data.len() as u64 != bytes || crc32c::crc32c(&data) != crc {
        return Outcome::Lost(format!("object {key} is not the segment that was uploaded (length or CRC differs)"));
    }
    match storage::write_file(fs, temp, &data, true) {
        Ok(()) => Outcome::Fetched,
        Err(err) => {
            let _ = storage::remove_if_present(fs, temp);
            Outcome::Failed(err)
        }
    }
}

impl Tier {
    /// The tier over `entries` (read from the tier file, already checked
    /// against the directory by [`prepare`]).
    pub(crate) fn new(settings: RemoteSettings, entries: Entries) -> Tier {
        let remote: Vec<&TierEntry> = entries.values().filter(|entry| entry.state == TierState::LocalDeleted).collect();
        Tier {
            remote_only: remote.len(),
            remote_only_bytes: remote.iter().map(|entry| entry.bytes).sum(),
            settings,
            entries,
            busy: false,
            retry_at: None,
            backoff: FIRST_BACKOFF,
            uploads: 0,
            fetches: 0,
            failures: 0,
            thread: None,
            temp_tag: crate::channel_id::random_u64(),
            swept_at: None,
        }
    }

    /// Wakes the tier thread: there may be work.
    fn kick(&self) {
        if let Some(thread) = &self.thread {
            thread.unpark();
        }
    }

    fn state(&self, id: u64) -> TierState {
        self.entries.get(&id).map_or(TierState::Local, |entry| entry.state)
    }

    /// Bytes the store holds or is being given.
    fn stored_bytes(&self) -> u64 {
        self.entries.values().filter(|entry| entry.state.in_store()).map(|entry| entry.bytes).sum()
    }

    fn failed(&mut self, what: &str, err: &io::Error) {
        self.failures += 1;
        self.retry_at = Some(Instant::now() + self.backoff);
        tracing::warn!(error = %err, retry_in = ?self.backoff, "remote tier: {what} failed; retrying");
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// Brings the tier file in line with the directory before recovery reads
/// it: copies the tier says are local but are not, and local files of
/// segments that are consumed or only remote, are settled (see the match
/// below). Returns the entries to go on with.
pub(crate) fn prepare(fs: &dyn Storage, dir: &Path, durable: bool) -> io::Result<Entries> {
    let mut entries = file::read(fs, dir)?;
    for entry in fs.list(dir)? {
        if entry.name.to_str().is_some_and(|name| name.starts_with(FETCH_TEMP_PREFIX)) {
            storage::remove_if_present(fs, &dir.join(&entry.name))?;
        }
    }
    let before = entries.clone();
    for (&id, entry) in &mut entries {
        let path = segment_path(dir, id);
        let local = match fs.metadata(&path) {
            Ok(meta) => Some(meta.len),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(err),
        };
        let next = match (entry.state, local) {
            // Scratch space: a new run starts empty, here and remotely.
            _ if !durable => TierState::Read,
            (TierState::Read, Some(_)) => {
                storage::remove_if_present(fs, &path)?;
                TierState::Read
            }
            // A fetch renamed into place just before a crash.
            (TierState::LocalDeleted, Some(len)) if len == entry.bytes => TierState::Fetched,
            (TierState::LocalDeleted, Some(_)) => {
                storage::remove_if_present(fs, &path)?;
                TierState::LocalDeleted
            }
            // The local copy went after the remote one was confirmed.
            (TierState::CopyFinished | TierState::Fetched, None) => TierState::LocalDeleted,
            // Deleted by another program before any copy was confirmed.
            (TierState::CopyStarted, None) => {
                tracing::error!(path = %path.display(), "a segment being offloaded vanished; its records are lost");
                TierState::Read
            }
            (state, _) => state,
        };
        entry.state = entry.state.check(next)?;
    }
    if entries != before {
        file::write(fs, dir, &entries)?;
    }
    Ok(entries)
}

/// Adds the segments whose only copy is remote to what recovery found,
/// in id order, and marks as read the entries of local segments recovery
/// did not keep.
pub(crate) fn merge(entries: &mut Entries, recovered: &mut Recovered) {
    let kept: std::collections::BTreeSet<u64> = recovered.segments.iter().map(|meta| meta.id).collect();
    for (&id, entry) in entries.iter_mut() {
        match entry.state {
            TierState::LocalDeleted => {
                let meta = SegmentMeta { id, bytes: entry.bytes, records: entry.records, last_seq: entry.last_seq };
                let at = recovered.segments.partition_point(|other| other.id < id);
                recovered.segments.insert(at, meta);
                recovered.last_seq = recovered.last_seq.max(entry.last_seq);
                recovered.next_id = recovered.next_id.max(id.saturating_add(1));
            }
            TierState::Read => {}
            _ if !kept.contains(&id) => entry.state = TierState::Read,
            _ => {}
        }
        recovered.next_id = recovered.next_id.max(id.saturating_add(1));
    }
}

/// What the tier reports in `Stats`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TierStats {
    pub(crate) remote_segments: usize,
    pub(crate) remote_bytes: u64,
    pub(crate) uploads: u64,
    pub(crate) fetches: u64,
    pub(crate) failures: u64,
}

impl DiskQueue {
    /// Bytes and count of sealed segments whose only copy is remote.
    pub(super) fn remote_only(&self) -> (usize, u64) {
        self.tier.as_ref().map_or((0, 0), |tier| (tier.remote_only, tier.remote_only_bytes))
    }

    /// Whether segment `id`'s file is on the local disk.
    pub(super) fn is_local(&self, id: u64) -> bool {
        self.tier.as_ref().is_none_or(|tier| tier.state(id).is_local())
    }

    /// The tier's counters.
    pub(crate) fn tier_stats(&self) -> TierStats {
        let Some(tier) = &self.tier else { return TierStats::default() };
        TierStats {
            remote_segments: tier.remote_only,
            remote_bytes: tier.remote_only_bytes,
            uploads: tier.uploads,
            fetches: tier.fetches,
            failures: tier.failures,
        }
    }

    /// Wakes the tier thread, if any: a segment was sealed or consumed.
    pub(super) fn kick_tier(&self) {
        if let Some(tier) = &self.tier {
            tier.kick();
        }
    }

    /// Moves segment `id` to `next` and persists the tier file. A failure
    /// to persist is logged and returned; the state in memory moves
    /// anyway (see the module documentation for why that is safe for the
    /// transitions that use it).
    fn transition(&mut self, id: u64, next: TierState) -> io::Result<()> {
        let Some(tier) = self.tier.as_mut() else { return Ok(()) };
        let Some(entry) = tier.entries.get_mut(&id) else { return Ok(()) };
        let before = entry.state;
        entry.state = before.check(next)?;
        if before == TierState::LocalDeleted && next != TierState::LocalDeleted {
            tier.remote_only -= 1;
            tier.remote_only_bytes -= entry.bytes;
        } else if next == TierState::LocalDeleted && before != TierState::LocalDeleted {
            tier.remote_only += 1;
            tier.remote_only_bytes += entry.bytes;
        }
        let written = file::write(&*self.fs, self.dir.path(), &tier.entries);
        if let Err(err) = &written {
            tracing::error!(segment = id, state = %next, error = %err, "could not record a segment's tier state");
        }
        written
    }

    /// Segment `id` leaves the backlog (consumed, dropped, lost or set
    /// aside): if the tier holds it, it becomes `Read` and its remote
    /// object will be deleted. Called before its local file is deleted.
    pub(super) fn tier_release(&mut self, id: u64) {
        let handled = self.tier.as_ref().is_some_and(|tier| tier.entries.contains_key(&id));
        if handled {
            let _ = self.transition(id, TierState::Read);
            self.kick_tier();
        }
    }

    /// Registers the tier thread, to be woken when there is work.
    pub(crate) fn tier_attach(&mut self, thread: &std::thread::Thread) {
        if let Some(tier) = self.tier.as_mut() {
            if tier.thread.is_none() {
                tier.thread = Some(thread.clone());
            }
        }
    }

    /// The next job for the tier thread, if any. Order: fetch what the
    /// receiver needs next, delete what was consumed, finish offloads the
    /// store confirmed, then offload the newest local segments while the
    /// local disk holds more than the threshold.
    pub(crate) fn tier_next(&mut self) -> Option<Work> {
        if self.closed {
            return None;
        }
        let tier = self.tier.as_ref()?;
        if tier.busy || tier.retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        let store = Arc::clone(&tier.settings.store);
        let fetch_ahead = tier.settings.fetch_ahead.max(1);
        // 1. Fetch: the front remote segment always, later ones while the
        // local disk has room under the threshold.
        let local = self.bytes();
        let offload_after = tier.settings.offload_after_bytes;
        for (at, meta) in self.sealed.iter().take(fetch_ahead).enumerate() {
            let Some(entry) = tier.entries.get(&meta.id) else { continue };
            if entry.state != TierState::LocalDeleted {
                continue;
            }
            if at > 0 && local + entry.bytes > offload_after {
                break;
            }
            let temp = self.dir.path().join(format!("{FETCH_TEMP_PREFIX}{:016x}.{}.tmp", tier.temp_tag, meta.id));
            let job = Job::Fetch { id: meta.id, key: entry.key.clone(), temp, bytes: entry.bytes, crc: entry.crc };
            return self.hand_out(job, store);
        }
        // At open, before any upload, and every few minutes: objects of
        // this channel that no entry accounts for go.
        if tier.swept_at.is_none_or(|at| at.elapsed() >= SWEEP_INTERVAL) {
            let keep = tier
                .entries
                .values()
                .filter(|entry| entry.state != TierState::Read)
                .map(|entry| {
                    let key = (entry.state != TierState::CopyStarted).then(|| entry.key.clone());
                    (entry.prefix.clone(), key)
                })
                .collect();
            let job = Job::Sweep { channel: format!("{}-", self.channel_id), keep };
            return self.hand_out(job, store);
        }
        // 2. Delete the objects of consumed segments.
        if let Some((&id, entry)) = tier.entries.iter().find(|(_, entry)| entry.state == TierState::Read) {
            let job = Job::Delete { id, prefix: entry.prefix.clone() };
            return self.hand_out(job, store);
        }
        // 3. Local copies whose remote copy is confirmed go (not one the
        // receiver has open: it is about to consume it).
        let finished: Vec<u64> = tier
            .entries
            .iter()
            .filter(|(&id, entry)| entry.state == TierState::CopyFinished && self.reading != Some(id))
            .map(|(&id, _)| id)
            .collect();
        for id in finished {
            self.delete_offloaded(id);
        }
        let tier = self.tier.as_ref()?;
        // 4. Offload: resume an interrupted upload, or start the newest
        // local segment the receiver will not need soon.
        let resume = tier
            .entries
            .iter()
            .find(|(&id, entry)| entry.state == TierState::CopyStarted && self.reading != Some(id))
            .map(|(&id, entry)| (id, entry.prefix.clone(), entry.bytes));
        if let Some((id, prefix, bytes)) = resume {
            let job = Job::Upload { id, prefix, run: tier.temp_tag, path: self.path_of(id), bytes };
            return self.hand_out(job, store);
        }
        if self.bytes() <= offload_after {
            return None;
        }
        let stored = tier.stored_bytes();
        let candidate = self.sealed.iter().skip(fetch_ahead + 1).rev().find(|meta| {
            !tier.entries.contains_key(&meta.id)
                && self.reading != Some(meta.id)
                && stored.saturating_add(meta.bytes) <= tier.settings.max_remote_bytes
        });
        let meta = *candidate?;
        let prefix = object_prefix(self.channel_id, meta.id);
        let entry = TierEntry {
            state: TierState::CopyStarted,
            prefix: prefix.clone(),
            key: String::new(),
            bytes: meta.bytes,
            records: meta.records,
            last_seq: meta.last_seq,
            crc: 0,
        };
        let tier = self.tier.as_mut()?;
        tier.entries.insert(meta.id, entry);
        if let Err(err) = file::write(&*self.fs, self.dir.path(), &tier.entries) {
            tier.entries.remove(&meta.id);
            tier.failed("recording an upload", &err);
            return None;
        }
        let job =
            Job::Upload { id: meta.id, prefix, run: tier.temp_tag, path: self.path_of(meta.id), bytes: meta.bytes };
        self.hand_out(job, store)
    }

    fn hand_out(&mut self, job: Job, store: Arc<dyn RemoteStore>) -> Option<Work> {
        self.tier.as_mut()?.busy = true;
        Some(Work { job, fs: Arc::clone(&self.fs), store })
    }

    /// The store confirmed segment `id`: its local copy goes.
    fn delete_offloaded(&mut self, id: u64) {
        if self.reading == Some(id) {
            return;
        }
        let path = self.path_of(id);
        match storage::remove_if_present(&*self.fs, &path) {
            Ok(()) => {
                self.free_space.checked_at = None;
                let _ = self.transition(id, TierState::LocalDeleted);
                tracing::debug!(segment = id, "segment offloaded; local copy deleted");
            }
            Err(err) => {
                if let Some(tier) = self.tier.as_mut() {
                    tier.failed("deleting an offloaded segment's local copy", &err);
                }
            }
        }
    }

    /// Takes the outcome of a job back. Returns whether local space was
    /// freed or a segment came back, so that waiting senders or the
    /// receiver should look again.
    pub(crate) fn tier_finish(&mut self, job: &Job, outcome: Outcome) -> bool {
        let Some(tier) = self.tier.as_mut() else { return false };
        tier.busy = false;
        if self.closed {
            match (job, &outcome) {
                (Job::Fetch { temp, .. }, _) => {
                    let _ = storage::remove_if_present(&*self.fs, temp);
                }
                // Closed while uploading: nothing records the object, and
                // no other run uses its key.
                (Job::Upload { .. }, Outcome::Uploaded { key, .. }) => {
                    let _ = tier.settings.store.delete(key);
                }
                _ => {}
            }
            return false;
        }
        let ok = !matches!(outcome, Outcome::Failed(_));
        if ok {
            tier.retry_at = None;
            tier.backoff = FIRST_BACKOFF;
        }
        match (job, outcome) {
            (_, Outcome::Failed(err)) => {
                let what = match job {
                    Job::Upload { .. } => "an upload",
                    Job::Fetch { .. } => "a fetch",
                    Job::Delete { .. } => "deleting a remote object",
                    Job::Sweep { .. } => "sweeping the store for stray objects",
                };
                tier.failed(what, &err);
                if let Job::Fetch { temp, .. } = job {
                    let _ = storage::remove_if_present(&*self.fs, temp);
                }
                false
            }
            (Job::Upload { id, .. }, Outcome::Uploaded { crc, key }) => {
                tier.uploads += 1;
                let Some(entry) = tier.entries.get_mut(id) else { return false };
                if entry.state != TierState::CopyStarted {
                    // Consumed meanwhile: the object is deleted next.
                    return false;
                }
                entry.crc = crc;
                entry.key = key;
                if self.transition(*id, TierState::CopyFinished).is_err() {
                    // Not recorded: the local copy stays, and the upload
                    // is made again.
                    if let Some(entry) = self.tier.as_mut().and_then(|tier| tier.entries.get_mut(id)) {
                        entry.state = TierState::CopyStarted;
                    }
                    return false;
                }
                self.delete_offloaded(*id);
                true
            }
            (Job::Fetch { id, temp, .. }, Outcome::Fetched) => {
                tier.fetches += 1;
                if tier.state(*id) != TierState::LocalDeleted {
                    let _ = storage::remove_if_present(&*self.fs, temp);
                    return false;
                }
                let path = self.path_of(*id);
                let placed = self.fs.rename(temp, &path).and_then(|()| self.fs.sync_dir(self.dir.path()));
                if let Err(err) = placed {
                    let _ = storage::remove_if_present(&*self.fs, temp);
                    let _ = storage::remove_if_present(&*self.fs, &path);
                    if let Some(tier) = self.tier.as_mut() {
                        tier.failed("placing a fetched segment", &err);
                    }
                    return false;
                }
                let _ = self.transition(*id, TierState::Fetched);
                tracing::debug!(segment = id, "remote segment fetched");
                true
            }
            (Job::Fetch { id, .. }, Outcome::Lost(reason)) => {
                tracing::error!(segment = id, %reason, "a remote segment cannot be fetched; its records are lost");
                self.lose_remote(*id);
                true
            }
            (Job::Sweep { .. }, Outcome::Deleted) => {
                tier.swept_at = Some(Instant::now());
                false
            }
            (Job::Delete { id, .. }, Outcome::Deleted) => {
                if tier.state(*id) == TierState::Read {
                    tier.entries.remove(id);
                    if let Err(err) = file::write(&*self.fs, self.dir.path(), &tier.entries) {
                        tracing::warn!(error = %err, "could not record a deleted remote segment; deleted again later");
                    }
                }
                false
            }
            (job, outcome) => {
                tracing::error!(?job, ?outcome, "remote tier: an outcome that does not match its job");
                false
            }
        }
    }

    /// A remote segment cannot be fetched: its records are lost, counted,
    /// and the segment leaves the backlog.
    fn lose_remote(&mut self, id: u64) {
        let Some(at) = self.sealed.iter().position(|meta| meta.id == id) else { return };
        let Some(meta) = self.sealed.remove(at) else { return };
        self.bytes -= meta.bytes;
        self.items -= meta.records.min(self.items);
        self.lost += meta.records;
        self.tier_release(id);
    }
}
