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

// The tier thread does not run under loom (see `crate::core::tier`).
#![cfg_attr(loom, allow(dead_code))]

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
    /// Per kind of job: no job of the kind starts before this, after a
    /// failure, and the wait after the next failure. Kinds back off on
    /// their own, so that one that keeps failing (a listing the store's
    /// policy refuses, say) holds up no other.
    backoff: [(Option<Instant>, Duration); KINDS],
    /// Whether the store was seen to hold this channel's marker object
    /// in this run (see [`marker_key`]).
    marker_confirmed: bool,
    /// Whether the receiver has left: nothing is offloaded, fetched or
    /// deleted locally any more (its saved read position points into a
    /// segment that must stay as it is).
    frozen: bool,
    /// Set once the channel is closed, for the jobs still out.
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// Whether a local copy was deleted since the thread last looked, so
    /// that senders waiting for space are woken.
    freed: bool,
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

/// Kinds of job, each with its own backoff.
const KINDS: usize = 5;
const FETCH: usize = 0;
const DELETE: usize = 1;
const SWEEP: usize = 2;
const UPLOAD: usize = 3;
/// Deleting local copies the store confirmed, done under the lock.
const LOCAL: usize = 4;

/// The key of the marker object a channel writes before its first upload:
/// a fetch that finds a segment's object missing declares the segment
/// lost only if the marker is there, and while the channel has objects in
/// the store no upload starts before the marker is found, so a store that
/// is not the one written to (an unmounted directory, a wrong bucket or
/// prefix) makes the tier fail and retry instead of losing the backlog or
/// scattering it over two stores.
pub(crate) fn marker_key(prefix: &str) -> String {
    let channel = prefix.split('-').next().unwrap_or(prefix);
    format!("{channel}-marker")
}

/// The marker step of an upload (see [`marker_key`]).
#[derive(Debug, Clone)]
pub(crate) struct Marker {
    /// The marker that must be in the store already: the channel has
    /// objects there.
    check: Option<String>,
    /// The marker to write.
    write: String,
}

/// What the tier thread does next, outside the lock.
#[derive(Debug, Clone)]
pub(crate) enum Job {
    /// Copy a sealed segment to the store, first (`marker`) checking that
    /// the store holds the marker of the channel's earlier objects, if any,
    /// and writing the channel's own.
    Upload { id: u64, prefix: String, run: u64, path: PathBuf, bytes: u64, marker: Option<Marker> },
    /// Bring a remote segment back.
    Fetch { id: u64, key: String, temp: PathBuf, bytes: u64, crc: u32 },
    /// Delete the objects of a consumed segment.
    Delete { id: u64, prefix: String },
    /// Delete the channel's objects that no entry accounts for: uploads
    /// that landed after their process was killed, or whose entry is gone.
    /// `keep` says, per segment prefix, which key to keep (`None`: any, the
    /// upload is not finished).
    Sweep {
        channel: String,
        keep: std::collections::BTreeMap<String, Option<String>>,
        closed: Arc<std::sync::atomic::AtomicBool>,
    },
}

impl Job {
    fn kind(&self) -> usize {
        match self {
            Job::Upload { .. } => UPLOAD,
            Job::Fetch { .. } => FETCH,
            Job::Delete { .. } => DELETE,
            Job::Sweep { .. } => SWEEP,
        }
    }
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
            Job::Upload { prefix, run, path, bytes, marker, .. } => {
                if let Some(marker) = marker {
                    if let Some(check) = &marker.check {
                        match self.store.size(check) {
                            Ok(Some(_)) => {}
                            Ok(None) => {
                                return Outcome::Failed(io::Error::new(
                                    io::ErrorKind::NotFound,
                                    format!(
                                        "the store lacks the channel's marker {check}, though segments went \
                                         there: is it the same store (mounted, right bucket and prefix)?"
                                    ),
                                ))
                            }
                            Err(err) => return Outcome::Failed(err),
                        }
                    }
                    if let Err(err) = self.store.put(&marker.write, b"sump channel marker\n") {
                        return Outcome::Failed(err);
                    }
                }
                upload(&*self.fs, &*self.store, prefix, *run, path, *bytes)
            }
            Job::Fetch { key, temp, bytes, crc, .. } => fetch(&*self.fs, &*self.store, key, temp, *bytes, *crc),
            Job::Delete { prefix, .. } => {
                let deleted =
                    self.store.list(prefix).and_then(|keys| keys.iter().try_for_each(|key| self.store.delete(key)));
                match deleted {
                    Ok(()) => Outcome::Deleted,
                    Err(err) => Outcome::Failed(err),
                }
            }
            Job::Sweep { channel, keep, closed } => match sweep(&*self.store, channel, keep, closed) {
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
    closed: &std::sync::atomic::AtomicBool,
) -> io::Result<()> {
    let marker = format!("{channel}marker");
    for key in store.list(channel)? {
        // A channel reopened meanwhile has objects this list does not know.
        if closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        if key == marker {
            continue;
        }
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
        Ok(None) => {
            let marker = marker_key(key);
            return match store.size(&marker) {
                Ok(Some(_)) => Outcome::Lost(format!("object {key} is missing from the store")),
                Ok(None) => Outcome::Failed(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "object {key} is missing and so is the channel's marker {marker}: \
                         is this the store the segments went to (mounted, right bucket and prefix)?"
                    ),
                )),
                Err(err) => Outcome::Failed(err),
            };
        }
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
            backoff: [(None, FIRST_BACKOFF); KINDS],
            marker_confirmed: false,
            frozen: false,
            closed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            freed: false,
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

    fn failed(&mut self, kind: usize, what: &str, err: &io::Error) {
        self.failures += 1;
        let (retry_at, wait) = &mut self.backoff[kind];
        *retry_at = Some(Instant::now() + *wait);
        tracing::warn!(error = %err, retry_in = ?*wait, "remote tier: {what} failed; retrying");
        *wait = (*wait * 2).min(MAX_BACKOFF);
    }

    fn succeeded(&mut self, kind: usize) {
        self.backoff[kind] = (None, FIRST_BACKOFF);
    }

    /// Whether a job of `kind` may start now.
    fn ready(&self, kind: usize) -> bool {
        self.backoff[kind].0.is_none_or(|at| Instant::now() >= at)
    }
}

/// Brings the tier file in line with the directory before recovery reads
/// it: copies the tier says are local but are not, and local files of
/// segments that are consumed or only remote, are settled (see the match
/// below). Returns the entries to go on with, and the records lost to
/// segments that vanished before their copy was confirmed.
pub(crate) fn prepare(fs: &dyn Storage, dir: &Path, durable: bool) -> io::Result<(Entries, u64)> {
    let mut entries = file::read(fs, dir)?;
    for entry in fs.list(dir)? {
        if entry.name.to_str().is_some_and(|name| name.starts_with(FETCH_TEMP_PREFIX)) {
            storage::remove_if_present(fs, &dir.join(&entry.name))?;
        }
    }
    let before = entries.clone();
    let mut lost = 0;
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
            // The consumed segment's file, if it is that file; another of
            // that name is not touched.
            (TierState::Read, Some(len)) => {
                if len == entry.bytes {
                    storage::remove_if_present(fs, &path)?;
                }
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
                tracing::error!(path = %path.display(), records = entry.records,
                    "a segment being offloaded vanished; its records are lost");
                lost += entry.records;
                TierState::Read
            }
            (state, _) => state,
        };
        entry.state = entry.state.check(next)?;
    }
    if entries != before {
        file::write(fs, dir, &entries)?;
    }
    Ok((entries, lost))
}

/// Adds the segments whose only copy is remote to what recovery found,
/// in id order, and marks as read the entries of local segments recovery
/// did not keep. Returns whether `entries` changed, so that the tier file
/// is written at open only when there is something new to record.
pub(crate) fn merge(entries: &mut Entries, recovered: &mut Recovered) -> bool {
    let kept: std::collections::BTreeMap<u64, SegmentMeta> =
        recovered.segments.iter().map(|meta| (meta.id, *meta)).collect();
    // A local segment recovery changed (the one being read at a clean
    // shutdown is rewritten without its read records) is no longer the
    // one the store holds: the tier forgets it, and the sweep deletes its
    // objects; segment ids are never reused, so no key can be confused.
    let listed = entries.len();
    entries.retain(|id, entry| match kept.get(id) {
        Some(meta) if entry.state.is_local() && entry.state != TierState::Read => {
            let same = meta.bytes == entry.bytes && meta.records == entry.records;
            if !same {
                tracing::info!(segment = id, "a segment changed at recovery; its remote copy is dropped");
            }
            same
        }
        _ => true,
    });
    let mut changed = entries.len() != listed;
    for (&id, entry) in entries.iter_mut() {
        match entry.state {
            TierState::LocalDeleted => {
                let meta = SegmentMeta { id, bytes: entry.bytes, records: entry.records, last_seq: entry.last_seq };
                let at = recovered.segments.partition_point(|other| other.id < id);
                recovered.segments.insert(at, meta);
                recovered.last_seq = recovered.last_seq.max(entry.last_seq);
            }
            TierState::Read => {}
            _ if !kept.contains_key(&id) => {
                entry.state = TierState::Read;
                changed = true;
            }
            _ => {}
        }
        recovered.next_id = recovered.next_id.max(id.saturating_add(1));
    }
    changed
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
    /// object will be deleted. Called before its local file is deleted;
    /// returns whether it may be: not if `Read` could not be recorded
    /// (after a crash the entry would say the file holds unread records).
    pub(super) fn tier_release(&mut self, id: u64) -> bool {
        let handled = self.tier.as_ref().is_some_and(|tier| tier.entries.contains_key(&id));
        if !handled {
            return true;
        }
        let recorded = self.transition(id, TierState::Read).is_ok();
        self.kick_tier();
        recorded
    }

    /// The lowest segment id the tier file names: segments written in
    /// front of the backlog at shutdown take ids below it too, so that no
    /// new segment has the id of one whose entry is still settling.
    pub(super) fn tier_lowest_id(&self) -> Option<u64> {
        self.tier.as_ref().and_then(|tier| tier.entries.keys().next().copied())
    }

    /// The receiver left: the tier stops touching the segments.
    pub(super) fn freeze_tier(&mut self) {
        if let Some(tier) = self.tier.as_mut() {
            tier.frozen = true;
        }
    }

    /// The channel closed: jobs still out stop where they can.
    pub(super) fn close_tier(&mut self) {
        if let Some(tier) = &self.tier {
            tier.closed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether local space was freed since the last call.
    pub(crate) fn take_tier_freed(&mut self) -> bool {
        self.tier.as_mut().is_some_and(|tier| std::mem::take(&mut tier.freed))
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
    /// receiver needs next, sweep the store (at open and every ten
    /// minutes), delete what was consumed, finish offloads the store
    /// confirmed, then offload the newest local segments while the local
    /// disk holds more than the threshold. A kind of job that is backing
    /// off after a failure is passed over.
    pub(crate) fn tier_next(&mut self) -> Option<Work> {
        if self.closed {
            return None;
        }
        let tier = self.tier.as_ref()?;
        if tier.busy || tier.frozen {
            return None;
        }
        let store = Arc::clone(&tier.settings.store);
        let fetch_ahead = tier.settings.fetch_ahead.max(1);
        // 1. Fetch, among the segment being read (or waited for) and the
        // `fetch_ahead` after it: those two whatever the local bound, the
        // later ones while the local disk is under the threshold.
        let local = self.bytes();
        let offload_after = tier.settings.offload_after_bytes;
        if tier.ready(FETCH) {
            for (at, meta) in self.sealed.iter().take(fetch_ahead + 1).enumerate() {
                let Some(entry) = tier.entries.get(&meta.id) else { continue };
                if entry.state != TierState::LocalDeleted {
                    continue;
                }
                if at > 1 && local + entry.bytes > offload_after {
                    break;
                }
                let name = format!("{FETCH_TEMP_PREFIX}{:016x}.{}.tmp", tier.temp_tag, meta.id);
                let temp = self.dir.path().join(name);
                let job = Job::Fetch { id: meta.id, key: entry.key.clone(), temp, bytes: entry.bytes, crc: entry.crc };
                return self.hand_out(job, store);
            }
        }
        // 2. Objects of this channel that no entry accounts for go: at
        // open, before any upload, and every few minutes.
        if tier.ready(SWEEP) && tier.swept_at.is_none_or(|at| at.elapsed() >= SWEEP_INTERVAL) {
            let keep = tier
                .entries
                .values()
                .filter(|entry| entry.state != TierState::Read)
                .map(|entry| {
                    let key = (entry.state != TierState::CopyStarted).then(|| entry.key.clone());
                    (entry.prefix.clone(), key)
                })
                .collect();
            let closed = Arc::clone(&tier.closed);
            let job = Job::Sweep { channel: format!("{}-", self.channel_id), keep, closed };
            return self.hand_out(job, store);
        }
        // 3. Delete the objects of consumed segments.
        if tier.ready(DELETE) {
            if let Some((&id, entry)) = tier.entries.iter().find(|(_, entry)| entry.state == TierState::Read) {
                let job = Job::Delete { id, prefix: entry.prefix.clone() };
                return self.hand_out(job, store);
            }
        }
        // 4. Local copies whose remote copy is confirmed go, but not those
        // the receiver reads next (nor the one it has open): they would
        // only be fetched straight back.
        if tier.ready(LOCAL) {
            let near: Vec<u64> = self.sealed.iter().take(fetch_ahead + 1).map(|meta| meta.id).collect();
            let finished: Vec<u64> = tier
                .entries
                .iter()
                .filter(|(id, entry)| {
                    entry.state == TierState::CopyFinished && self.reading != Some(**id) && !near.contains(id)
                })
                .map(|(&id, _)| id)
                .collect();
            for id in finished {
                self.delete_offloaded(id);
            }
        }
        let tier = self.tier.as_ref()?;
        if !tier.ready(UPLOAD) {
            return None;
        }
        let marker = (!tier.marker_confirmed).then(|| Marker {
            check: tier.entries.values().find(|entry| !entry.key.is_empty()).map(|entry| marker_key(&entry.prefix)),
            write: marker_key(&object_prefix(self.channel_id, 0)),
        });
        // 5. Offload: resume an interrupted upload, or start the newest
        // local segment the receiver will not need soon.
        let resume = tier
            .entries
            .iter()
            .find(|(&id, entry)| entry.state == TierState::CopyStarted && self.reading != Some(id))
            .map(|(&id, entry)| (id, entry.prefix.clone(), entry.bytes));
        if let Some((id, prefix, bytes)) = resume {
            let job = Job::Upload { id, prefix, run: tier.temp_tag, path: self.path_of(id), bytes, marker };
            return self.hand_out(job, store);
        }
        if self.bytes() <= offload_after {
            return None;
        }
        let stored = tier.stored_bytes();
        let candidate = self.sealed.iter().skip(fetch_ahead + 1).rev().find(|meta| {
            !tier.entries.contains_key(&meta.id)
                && self.reading != Some(meta.id)
                // Records of format version 1 carry no numbers; they are
                // numbered from a range recovery keeps for local files.
                && !self.old_format.contains(&meta.id)
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
            tier.failed(UPLOAD, "recording an upload", &err);
            return None;
        }
        let (run, path) = (tier.temp_tag, self.path_of(meta.id));
        let job = Job::Upload { id: meta.id, prefix, run, path, bytes: meta.bytes, marker };
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
                if let Some(tier) = self.tier.as_mut() {
                    tier.freed = true;
                    tier.succeeded(LOCAL);
                }
                tracing::debug!(segment = id, "segment offloaded; local copy deleted");
            }
            Err(err) => {
                if let Some(tier) = self.tier.as_mut() {
                    tier.failed(LOCAL, "deleting an offloaded segment's local copy", &err);
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
            // An upload finished after the close is deleted by the tier
            // thread, outside the lock (see `crate::core::tier`).
            if let Job::Fetch { temp, .. } = job {
                let _ = storage::remove_if_present(&*self.fs, temp);
            }
            return false;
        }
        if !matches!(outcome, Outcome::Failed(_)) {
            tier.succeeded(job.kind());
        }
        match (job, outcome) {
            (_, Outcome::Failed(err)) => {
                let what = match job {
                    Job::Upload { .. } => "an upload",
                    Job::Fetch { .. } => "a fetch",
                    Job::Delete { .. } => "deleting a remote object",
                    Job::Sweep { .. } => "sweeping the store for stray objects",
                };
                tier.failed(job.kind(), what, &err);
                if let Job::Fetch { temp, .. } = job {
                    let _ = storage::remove_if_present(&*self.fs, temp);
                }
                false
            }
            (Job::Upload { id, marker, .. }, Outcome::Uploaded { crc, key }) => {
                tier.uploads += 1;
                if marker.is_some() {
                    tier.marker_confirmed = true;
                }
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
                let fetch_ahead = self.tier.as_ref().map_or(1, |tier| tier.settings.fetch_ahead.max(1));
                let near = self.sealed.iter().take(fetch_ahead + 1).any(|meta| meta.id == *id);
                if !near {
                    self.delete_offloaded(*id);
                }
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
                        tier.failed(FETCH, "placing a fetched segment", &err);
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
        let _ = self.tier_release(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: TierState, bytes: u64, records: u64) -> TierEntry {
        TierEntry { state, prefix: "c-1-".into(), key: "c-1-k.seg".into(), bytes, records, last_seq: Some(9), crc: 1 }
    }

    fn meta(id: u64, bytes: u64, records: u64) -> SegmentMeta {
        SegmentMeta { id, bytes, records, last_seq: Some(id) }
    }

    #[test]
    fn merge_puts_remote_segments_in_order_and_forgets_segments_recovery_changed() {
        let mut entries = Entries::new();
        entries.insert(20, entry(TierState::LocalDeleted, 500, 50));
        // Rewritten by recovery without its read records: no longer the
        // segment the store holds.
        entries.insert(30, entry(TierState::CopyFinished, 400, 40));
        entries.insert(40, entry(TierState::Fetched, 300, 30));
        // Gone at recovery (read to the end): its objects are deleted.
        entries.insert(50, entry(TierState::CopyStarted, 200, 20));
        entries.insert(99, entry(TierState::LocalDeleted, 100, 10));
        let mut recovered = Recovered { next_id: 61, ..Recovered::default() };
        recovered.segments.extend([meta(10, 50, 5), meta(30, 120, 12), meta(40, 300, 30), meta(60, 70, 7)]);
        assert!(merge(&mut entries, &mut recovered), "an entry was dropped and one marked read");
        let ids: Vec<u64> = recovered.segments.iter().map(|meta| meta.id).collect();
        assert_eq!(ids, [10, 20, 30, 40, 60, 99], "remote segments merged in id order");
        assert_eq!(recovered.segments[1], SegmentMeta { id: 20, bytes: 500, records: 50, last_seq: Some(9) });
        assert!(!entries.contains_key(&30), "a changed segment's entry is dropped");
        assert_eq!(entries[&40].state, TierState::Fetched);
        assert_eq!(entries[&50].state, TierState::Read);
        assert_eq!(recovered.next_id, 100, "no new segment takes a remote segment's id");
    }

    #[test]
    fn prepare_settles_every_state_against_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::storage::os();
        let write = |id: u64, bytes: usize| std::fs::write(segment_path(dir.path(), id), vec![0u8; bytes]).unwrap();
        let mut entries = Entries::new();
        entries.insert(1, entry(TierState::CopyFinished, 10, 1)); // local gone: remote
        entries.insert(2, entry(TierState::Fetched, 10, 1)); // local gone: remote again
        entries.insert(3, entry(TierState::LocalDeleted, 10, 1)); // a complete file: fetched
        write(3, 10);
        entries.insert(4, entry(TierState::LocalDeleted, 10, 1)); // a partial file: removed
        write(4, 3);
        entries.insert(5, entry(TierState::Read, 10, 1)); // the consumed file: removed
        write(5, 10);
        entries.insert(6, entry(TierState::Read, 10, 1)); // another file of that name: kept
        write(6, 4);
        entries.insert(7, entry(TierState::CopyStarted, 10, 1)); // vanished before confirmed: read
        std::fs::write(dir.path().join(format!("{FETCH_TEMP_PREFIX}0.3.tmp")), b"half").unwrap();
        file::write(&*fs, dir.path(), &entries).unwrap();
        let (settled, lost) = prepare(&*fs, dir.path(), true).unwrap();
        assert_eq!(lost, 1, "the vanished upload's records are counted");
        let states: Vec<TierState> = settled.values().map(|entry| entry.state).collect();
        use TierState::*;
        assert_eq!(states, [LocalDeleted, LocalDeleted, Fetched, LocalDeleted, Read, Read, Read]);
        assert!(!segment_path(dir.path(), 4).exists() && !segment_path(dir.path(), 5).exists());
        assert!(segment_path(dir.path(), 3).exists() && segment_path(dir.path(), 6).exists());
        assert!(!dir.path().join(format!("{FETCH_TEMP_PREFIX}0.3.tmp")).exists(), "fetch leftovers removed");
        assert_eq!(file::read(&*fs, dir.path()).unwrap(), settled, "the settled states are recorded");
        // Scratch space: everything is read.
        let (scratch, _) = prepare(&*fs, dir.path(), false).unwrap();
        assert!(scratch.values().all(|entry| entry.state == Read));
    }
}
