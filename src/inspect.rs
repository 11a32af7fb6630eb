//! Read-only inspection of a channel's files, for the `sump` command-line
//! tool and for anyone who wants to look at a channel from outside.
//!
//! Nothing here but [`salvage`] and [`purge`] takes the channel's lock or
//! writes a byte, so a live channel can be inspected while it runs; those
//! two change the channel's files and refuse to run while it is open.
//! Files are read with positioned
//! reads (never memory maps), up to the length they had when inspection
//! started, so a segment that grows or shrinks meanwhile can only make
//! the inspection stop early with an error, never crash it.

use std::io;
use std::path::{Path, PathBuf};

use crate::segment::format::HEADER_LEN;
use crate::segment::{parse_segment_name, Peek, SegmentCursor};

/// What kind of segment file this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentState {
    /// Sealed: complete and read-only.
    Sealed,
    /// Still writable: the segment being appended to, or the last one a
    /// crashed process was writing.
    Active,
    /// Set aside as damaged (`*.seg.corrupt`).
    SetAside,
}

/// One segment file of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    /// The id in its name.
    pub id: u64,
    /// Its path.
    pub path: PathBuf,
    /// Its length in bytes when listed.
    pub bytes: u64,
    /// Sealed, active or set aside.
    pub state: SegmentState,
}

/// Lists the segment files in `dir/name/`, in id order (set-aside files
/// after live ones with the same id).
///
/// # Errors
///
/// When the directory cannot be read.
pub fn segment_files(dir: impl AsRef<Path>, name: &str) -> io::Result<Vec<SegmentFile>> {
    let channel = dir.as_ref().join(name);
    let fs = crate::storage::os();
    let mut files = Vec::new();
    for entry in fs.list(&channel)? {
        let Ok(file_name) = entry.name.into_string() else { continue };
        let (id, set_aside) = match parse_segment_name(&file_name) {
            Some(id) => (Some(id), false),
            None => (crate::dir::parse_set_aside_name(&file_name), true),
        };
        let Some(id) = id else { continue };
        if entry.kind != crate::storage::Kind::File {
            continue;
        }
        let path = channel.join(&file_name);
        let metadata = match fs.metadata(&path) {
            Ok(metadata) => metadata,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        let state = if set_aside {
            SegmentState::SetAside
        } else if metadata.readonly {
            SegmentState::Sealed
        } else {
            SegmentState::Active
        };
        files.push(SegmentFile { id, path, bytes: metadata.len, state });
    }
    files.sort_by_key(|file| (file.id, file.state == SegmentState::SetAside));
    Ok(files)
}

/// A segment the remote tier handles, as the channel's tier file lists it
/// (see [`crate::tier`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierSegment {
    /// The segment's id.
    pub id: u64,
    /// Where it stands in the lifecycle.
    pub state: crate::TierState,
    /// The key of its object in the store; empty until the copy is
    /// finished.
    pub key: String,
    /// The segment's length.
    pub bytes: u64,
    /// Its records.
    pub records: u64,
    /// CRC32C of the whole segment, which its object must match.
    pub crc: u32,
}

/// The segments the remote tier of channel `dir/name/` handles, in id
/// order; none for a channel without a tier file.
///
/// # Errors
///
/// When the tier file cannot be read or is damaged.
pub fn tier_segments(dir: impl AsRef<Path>, name: &str) -> io::Result<Vec<TierSegment>> {
    let entries = crate::tier::file::read(&*crate::storage::os(), &dir.as_ref().join(name))?;
    Ok(entries
        .into_iter()
        .map(|(id, entry)| TierSegment {
            id,
            state: entry.state,
            key: entry.key,
            bytes: entry.bytes,
            records: entry.records,
            crc: entry.crc,
        })
        .collect())
}

/// Checks the remote copy of `segment` in `store`: it exists, and its
/// length and CRC32C are the segment's. `Ok(Err(reason))` says what is
/// wrong with it; a segment whose copy is not finished has none to check.
///
/// # Errors
///
/// When the store cannot be asked.
pub fn verify_remote(store: &dyn crate::RemoteStore, segment: &TierSegment) -> io::Result<Result<(), String>> {
    use crate::TierState::{CopyFinished, Fetched, LocalDeleted};
    if !matches!(segment.state, CopyFinished | LocalDeleted | Fetched) {
        return Ok(Ok(()));
    }
    let Some(data) = store.get(&segment.key)? else {
        return Ok(Err(format!("object {} is missing from the store", segment.key)));
    };
    if data.len() as u64 != segment.bytes {
        return Ok(Err(format!("object {} is {} bytes, not {}", segment.key, data.len(), segment.bytes)));
    }
    if crc32c::crc32c(&data) != segment.crc {
        return Ok(Err(format!("object {} fails its CRC", segment.key)));
    }
    Ok(Ok(()))
}

/// One record found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Offset of its frame in the file.
    pub offset: u64,
    /// The item's sequence number; `None` in a file written by segment
    /// format version 1, whose records carry none.
    pub seq: Option<u64>,
    /// The payload (the encoded item), CRC checked.
    pub payload: Vec<u8>,
}

/// Damage found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Where it starts.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
    /// Whether it runs to the end of the file: in a segment still being
    /// written (or the last one a crash left) that is a write in progress
    /// or a torn tail, which recovery cuts off, not corruption.
    pub at_end: bool,
}

/// What [`read_segment`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentReport {
    /// Intact records.
    pub records: u64,
    /// Bytes of intact records' payloads.
    pub payload_bytes: u64,
    /// Damaged stretches, in file order.
    pub damage: Vec<Damage>,
}

/// Reads every record of a segment file, checking the header and every
/// CRC, and hands each intact record to `on_record`; `on_progress` gets
/// the offset reached now and then.
///
/// # Errors
///
/// When the file cannot be opened or read.
pub fn read_segment(
    file: &SegmentFile,
    mut on_record: impl FnMut(Record),
    mut on_progress: impl FnMut(u64),
) -> io::Result<SegmentReport> {
    let mut cursor = SegmentCursor::open_active(&crate::storage::os(), &file.path, file.id, file.bytes)?;
    cursor.set_limit(file.bytes, true, true);
    let mut report = SegmentReport::default();
    let mut last_progress = 0;
    loop {
        let offset = cursor.pos().max(HEADER_LEN as u64);
        match cursor.peek()? {
            Peek::Record { payload, seq } => {
                report.records += 1;
                report.payload_bytes += payload.len() as u64;
                let record = Record { offset, seq, payload: payload.to_vec() };
                cursor.commit();
                on_record(record);
            }
            Peek::Damaged { reason, resume } => {
                let at = if cursor.pos() == 0 { 0 } else { offset };
                report.damage.push(Damage { offset: at, reason, at_end: resume.is_none() && at != 0 });
                match resume {
                    Some(next) => cursor.skip_to(next),
                    None => break,
                }
            }
            Peek::Exhausted | Peek::DamagedActive { .. } => break,
        }
        if cursor.pos() - last_progress > 1 << 20 {
            last_progress = cursor.pos();
            on_progress(last_progress);
        }
    }
    on_progress(file.bytes);
    Ok(report)
}

/// Where [`salvage`] puts the intact records of set-aside files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SalvageTarget<'a> {
    /// Back into the channel, as a new segment in front of its backlog
    /// (set-aside records are older than the segments still there), so
    /// the next open delivers them first. The set-aside files are removed
    /// once the new segment is on stable storage.
    Channel,
    /// Out, into a new segment file at this path (which must not exist),
    /// readable by [`read_segment`] and by `sump dump`; the set-aside
    /// files stay.
    File(&'a Path),
}

/// What [`salvage`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalvageReport {
    /// Set-aside files read.
    pub files: usize,
    /// Intact records recovered from them.
    pub records: u64,
    /// Damaged stretches skipped.
    pub damaged: usize,
    /// The segment file the records were written to; `None` when there
    /// was nothing to salvage.
    pub written_to: Option<PathBuf>,
}

/// Takes the channel's lock, for the commands that change its files.
fn lock(dir: &Path, name: &str) -> io::Result<crate::dir::ChannelDir> {
    crate::dir::ChannelDir::open(&crate::storage::os(), dir, name).map_err(|err| match err {
        crate::OpenError::Locked { .. } => {
            io::Error::new(io::ErrorKind::ResourceBusy, format!("{err}; close the channel before repairing it"))
        }
        crate::OpenError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    })
}

/// Recovers the intact records of every set-aside file of channel `name`
/// in `dir`, in order (oldest file first), into `target`. Every header
/// and CRC is checked as the channel itself would; damaged stretches are
/// skipped and counted.
///
/// # Errors
///
/// When the channel is open (its lock is held), or a file cannot be read
/// or written. Nothing is removed unless the salvaged records are safely
/// written.
pub fn salvage(dir: impl AsRef<Path>, name: &str, target: SalvageTarget<'_>) -> io::Result<SalvageReport> {
    let dir = dir.as_ref();
    let channel = lock(dir, name)?;
    let fs = std::sync::Arc::clone(channel.fs());
    let set_aside = channel.set_aside_files()?;
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut report = SalvageReport { files: set_aside.len(), records: 0, damaged: 0, written_to: None };
    for file in &set_aside {
        let path = channel.path().join(&file.name);
        let segment = SegmentFile { id: file.id, path, bytes: file.bytes, state: SegmentState::SetAside };
        let found = read_segment(
            &segment,
            |record| {
                // A record of a version 1 file has no number to keep.
                if let Some(frame) = crate::segment::format::frame_of(&record.payload, record.seq.unwrap_or(0)) {
                    frames.push(frame);
                }
            },
            |_| {},
        )?;
        report.records += found.records;
        report.damaged += found.damage.len();
    }
    if frames.is_empty() {
        return Ok(report);
    }
    let (segments, highest) = channel.scan().map_err(|err| io::Error::other(err.to_string()))?;
    let (segment_dir, id, path) = match target {
        SalvageTarget::File(path) => {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            (parent.to_path_buf(), None, path.to_path_buf())
        }
        SalvageTarget::Channel => {
            // In front of the backlog: below the oldest segment, or past
            // every id in use when there is no backlog.
            let id = match segments.first() {
                Some(&oldest) => oldest.checked_sub(1).ok_or_else(|| io::Error::other("no segment id is free"))?,
                None => highest.map_or(crate::recover::FIRST_DURABLE_ID, |id| id.saturating_add(1)),
            };
            (channel.path().to_path_buf(), Some(id), crate::segment::segment_path(channel.path(), id))
        }
    };
    let written = write_salvaged(&fs, &segment_dir, id, &path, &frames)?;
    if target == SalvageTarget::Channel {
        for file in &set_aside {
            fs.remove(&channel.path().join(&file.name))?;
        }
        fs.sync_dir(channel.path())?;
    }
    report.written_to = Some(written);
    Ok(report)
}

/// Writes `frames` as a sealed, synced segment at `path` (segment `id` of
/// a channel, or a file of its own).
fn write_salvaged(
    fs: &crate::storage::Fs,
    dir: &Path,
    id: Option<u64>,
    path: &Path,
    frames: &[Vec<u8>],
) -> io::Result<PathBuf> {
    use crate::storage::{write_all, Open};
    let file = fs.open(path, Open::CreateNew)?;
    let mut bytes = crate::segment::format::encode_header(0).to_vec();
    for frame in frames {
        bytes.extend_from_slice(frame);
    }
    let written = write_all(&**fs, path, &file, &bytes).and_then(|()| fs.sync(path, &file));
    if let Err(err) = written {
        drop(file);
        let _ = fs.remove(path);
        return Err(err);
    }
    if id.is_some() {
        fs.set_readonly(path, true)?;
    }
    fs.sync_dir(dir)?;
    Ok(path.to_path_buf())
}

/// Removes every set-aside file of channel `name` in `dir`; returns how
/// many files and bytes were removed.
///
/// # Errors
///
/// When the channel is open (its lock is held), or a file cannot be
/// removed (those before it are gone).
pub fn purge(dir: impl AsRef<Path>, name: &str) -> io::Result<(usize, u64)> {
    let channel = lock(dir.as_ref(), name)?;
    let files = channel.set_aside_files()?;
    let fs = channel.fs();
    let mut bytes = 0;
    for file in &files {
        fs.remove(&channel.path().join(&file.name))?;
        bytes += file.bytes;
    }
    fs.sync_dir(channel.path())?;
    Ok((files.len(), bytes))
}
