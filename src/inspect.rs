//! Read-only inspection of a channel's files, for the `sump` command-line
//! tool and for anyone who wants to look at a channel from outside.
//!
//! Nothing here takes the channel's lock or writes a byte, so a live
//! channel can be inspected while it runs. Files are read with positioned
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

/// One record found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Offset of its frame in the file.
    pub offset: u64,
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
            Peek::Record(payload) => {
                report.records += 1;
                report.payload_bytes += payload.len() as u64;
                let record = Record { offset, payload: payload.to_vec() };
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
