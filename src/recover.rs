//! Recovery: turning the segment files a previous run left into a disk
//! backlog, in `Persistent` and `WriteAhead` modes.
//!
//! Rules, applied to each segment file in id order:
//! - a segment the segment index describes (see [`crate::index`]) whose
//!   file has the length the index says, and to which no read position
//!   applies, is counted from the index and not read: restart time grows
//!   with the number of segments, not their bytes. Every other segment
//!   goes through the rules below, and the index is rewritten at the end
//!   to describe exactly the segments kept;
//! - a segment the progress file lists as read to the end (its deletion
//!   failed) is deleted now; if that fails again it is skipped, never
//!   read, and listed in the progress file anew;
//! - the progress file names the segment the receiver was reading at the
//!   last clean shutdown and where in it. That segment is rewritten without
//!   the records before that point, and the progress file is removed, so no
//!   read position outlives recovery (a pending one could be lost by the
//!   next shutdown, or apply to a later segment reusing the id). Segments
//!   with lower ids are not "read": the receiver deletes a segment as soon
//!   as it has read it, so any still present are the in-memory items a
//!   clean shutdown wrote in front of the backlog;
//! - the last segment, when shorter than a header, was being created when
//!   the process died: it holds no record and is deleted;
//! - any other segment whose header is short, has the wrong magic number, fails
//!   its CRC or has an unknown version is set aside as `*.seg.corrupt`,
//!   never deleted and never read;
//! - records are counted from the recorded offset (or the header) on; a
//!   damaged stretch followed by intact records is counted in
//!   `Stats::corrupt` and will be skipped by the reader;
//! - damage that runs to the end of the **last** segment is a torn tail,
//!   the mark of a crash in the middle of a write: the file is cut back to
//!   the end of its last intact record, and that is not corruption; the
//!   same in an earlier segment is corruption, counted, and that segment
//!   is set aside once read;
//! - a segment with nothing left to read is deleted;
//! - every remaining segment is treated as sealed; new records go to a new
//!   segment.
//!
//! Recovery reads each file it scans once, never allocates more than one segment's
//! worth for any record, and refuses to start (with the error, naming the
//! file) when a file cannot be read, rather than guess: a transient error
//! (too many open files, say) must never make a segment count as damaged.

use std::collections::VecDeque;
use std::io;
use std::path::Path;

use crate::dir::ChannelDir;
use crate::err::OpenError;
use crate::index;
use crate::options::Compression;
use crate::progress::{self, Progress};
use crate::segment::block::{codec_readable, Packer};
use crate::segment::format::{decode_header, encode_header_as, HEADER_LEN};
use crate::segment::{segment_path, Peek, SegmentCursor, SegmentMeta};
use crate::storage::{read_exact_at, remove_if_present, write_all, Fs, Kind, Open};

/// Id of the first segment of a new durable channel. Segments written at a
/// clean shutdown to hold the in-memory queue take ids below the oldest
/// segment, so there must be room below.
pub(crate) const FIRST_DURABLE_ID: u64 = 1 << 32;

/// The backlog found on disk.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Segments with unread records, oldest first.
    pub(crate) segments: VecDeque<SegmentMeta>,
    /// Damaged stretches found.
    pub(crate) corrupt: u64,
    /// Id for the next segment to create.
    pub(crate) next_id: u64,
    /// The highest sequence number found on a record.
    pub(crate) last_seq: Option<u64>,
    /// Bytes of the segments kept that were written by format version 1,
    /// whose records carry no sequence number (see
    /// [`crate::disk::DiskQueue`] for how they are numbered).
    pub(crate) unnumbered_bytes: u64,
    /// The segments kept that were written by format version 1.
    pub(crate) old_format: std::collections::BTreeSet<u64>,
    /// Entries of the segment index as rewritten at the end of recovery.
    pub(crate) indexed: usize,
    /// Segments counted from the index, without reading their records.
    pub(crate) trusted: usize,
}

/// Recovers the backlog in `dir`.
pub(crate) fn recover(dir: &mut ChannelDir) -> Result<Recovered, OpenError> {
    let fs = std::sync::Arc::clone(dir.fs());
    let fs = &fs;
    let (ids, highest) = dir.scan()?;
    let progress = progress::read(&**fs, dir.path());
    let indexed = index::read(&**fs, dir.path());
    let mut versions = Vec::new();
    let mut still_read = Vec::new();
    let mut recovered =
        Recovered { next_id: highest.map_or(FIRST_DURABLE_ID, |id| id.saturating_add(1)), ..Recovered::default() };
    for (at, &id) in ids.iter().enumerate() {
        let path = segment_path(dir.path(), id);
        let io_error = |err: io::Error| OpenError::io(&path, err);
        if progress.read.contains(&id) {
            if let Err(err) = remove_if_present(&**fs, &path) {
                tracing::warn!(path = %path.display(), error = %err, "a read segment still cannot be deleted; skipped");
                still_read.push(id);
            }
            continue;
        }
        let position = progress.position.filter(|p| p.segment == id);
        let (start, skip) = position.map_or((HEADER_LEN as u64, 0), |p| (p.offset, p.skip));
        let last = at + 1 == ids.len();
        if let Some(entry) = indexed.get(&id).filter(|_| position.is_none()) {
            // Sealed by an earlier run and unchanged in length since: its
            // records are counted from the index, not read.
            if fs.metadata(&path).is_ok_and(|meta| meta.kind == Kind::File && meta.len == entry.meta.bytes) {
                if entry.meta.records == 0 {
                    remove_if_present(&**fs, &path).map_err(io_error)?;
                    continue;
                }
                recovered.trusted += 1;
                versions.push(entry.version);
                recovered.segments.push_back(entry.meta);
                continue;
            }
            tracing::info!(path = %path.display(), "segment changed since it was indexed; scanning it");
        }
        match recover_segment(fs, &path, id, start, skip, last).map_err(io_error)? {
            Scan::Unborn => {
                tracing::warn!(path = %path.display(), "segment was being created at a crash; removed");
                remove_if_present(&**fs, &path).map_err(io_error)?;
            }
            Scan::BadHeader(reason) => {
                tracing::error!(path = %path.display(), %reason, "segment header is damaged; set aside");
                // Never read whatever happens: a failure leaves it for the
                // next open to set aside.
                let _ = dir.set_aside(&path);
            }
            Scan::Segment { meta, corrupt, version } => {
                recovered.corrupt += corrupt;
                if meta.records == 0 && corrupt == 0 {
                    remove_if_present(&**fs, &path).map_err(io_error)?;
                    continue;
                }
                let meta = if start > HEADER_LEN as u64 || skip > 0 {
                    drop_read_records(fs, dir.path(), &path, meta, start, skip).map_err(io_error)?
                } else {
                    meta
                };
                tracing::info!(segment = id, records = meta.records, corrupt, "segment recovered");
                versions.push(version);
                recovered.segments.push_back(meta);
            }
        }
    }
    if !progress.is_empty() {
        // Applied (or its segment is gone): the position must never apply
        // again, to a later segment that reuses the id. Read segments that
        // could not be deleted stay listed.
        let rest = Progress { position: None, read: still_read };
        progress::write(&**fs, dir.path(), &rest, true).map_err(|err| OpenError::io(dir.path(), err))?;
    }
    // The index now describes exactly the segments kept, as they are.
    let entries: Vec<index::Entry> =
        recovered.segments.iter().zip(versions).map(|(&meta, version)| index::Entry { meta, version }).collect();
    for entry in &entries {
        recovered.last_seq = recovered.last_seq.max(entry.meta.last_seq);
        if entry.version < crate::segment::format::VERSION {
            recovered.unnumbered_bytes += entry.meta.bytes;
            recovered.old_format.insert(entry.meta.id);
        }
    }
    match index::rewrite(&**fs, dir.path(), &entries) {
        Ok(()) => recovered.indexed = entries.len(),
        Err(err) => {
            tracing::warn!(error = %err, "could not rewrite the segment index; the next open scans every segment");
            let _ = remove_if_present(&**fs, &dir.path().join(index::INDEX_FILE));
        }
    }
    tracing::debug!(segments = recovered.segments.len(), from_index = recovered.trusted, "backlog recovered");
    Ok(recovered)
}

/// Rewrites segment `path` without the records before `start`, which the
/// receiver read before the last clean shutdown, so that no read position
/// has to outlive recovery. The progress file loses its position before
/// the rewritten segment replaces the old one: a crash in between can only
/// deliver the read records again, never skip unread ones.
///
/// In a compressed segment the read position may fall inside a block
/// (`skip` of its records read): the block's unread records are written
/// as a block of their own, stored without compression.
fn drop_read_records(
    fs: &Fs,
    dir: &Path,
    path: &Path,
    meta: SegmentMeta,
    start: u64,
    skip: u16,
) -> io::Result<SegmentMeta> {
    let bytes = fs.read_all(path)?;
    let header = decode_header(&bytes).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
    let end = usize::try_from(meta.bytes).unwrap_or(usize::MAX).min(bytes.len());
    let mut start = usize::try_from(start).unwrap_or(usize::MAX).min(end);
    let mut rest_of_block = Vec::new();
    if skip > 0 {
        let mut cursor = SegmentCursor::open_sealed(fs, path, meta.id, meta.bytes)?;
        cursor.skip_to(start as u64);
        cursor.pass_records(skip)?;
        if let Some((rest, records, block_end)) = cursor.block_rest() {
            Packer::new(Compression::None).pack_as(rest, records, &mut rest_of_block, header.version)?;
            start = usize::try_from(block_end).unwrap_or(usize::MAX).min(end);
        } else {
            start = usize::try_from(cursor.pos()).unwrap_or(usize::MAX).min(end);
        }
    }
    let temp = path.with_extension("seg.rewrite");
    {
        let file = fs.open(&temp, Open::Replace)?;
        write_all(&**fs, &temp, &file, &encode_header_as(header))?;
        write_all(&**fs, &temp, &file, &rest_of_block)?;
        write_all(&**fs, &temp, &file, &bytes[start..end])?;
        fs.sync(&temp, &file)?;
    }
    let read_list = progress::read(&**fs, dir).read;
    progress::write(&**fs, dir, &Progress { position: None, read: read_list }, true)?;
    fs.rename(&temp, path)?;
    if let Err(err) = fs.set_readonly(path, true) {
        tracing::warn!(path = %path.display(), error = %err, "could not make a rewritten segment read-only");
    }
    fs.sync_dir(dir)?;
    Ok(SegmentMeta { bytes: (HEADER_LEN + rest_of_block.len() + end - start) as u64, ..meta })
}

/// What a scan of one segment found.
enum Scan {
    /// The last segment, shorter than a header: created at a crash.
    Unborn,
    /// The header is damaged; the reason says how.
    BadHeader(String),
    /// The segment, with its records from the start offset on (and the
    /// highest number on them), how many damaged stretches it has, and its
    /// format version.
    Segment { meta: SegmentMeta, corrupt: u64, version: u16 },
}

fn recover_segment(fs: &Fs, path: &Path, id: u64, start: u64, skip: u16, last: bool) -> io::Result<Scan> {
    let meta = fs.metadata(path)?;
    if meta.kind != Kind::File {
        return Ok(Scan::BadHeader(format!("not a plain file ({:?})", meta.kind)));
    }
    let len = meta.len;
    if len < HEADER_LEN as u64 {
        if last {
            return Ok(Scan::Unborn);
        }
        return Ok(Scan::BadHeader("shorter than a segment header".to_string()));
    }
    let mut header = [0u8; HEADER_LEN];
    {
        let file = fs.open(path, Open::Read)?;
        read_exact_at(&**fs, path, &file, &mut header, 0)?;
    }
    let header = match decode_header(&header) {
        Ok(header) => header,
        Err(err) => return Ok(Scan::BadHeader(err.to_string())),
    };
    if let Err(feature) = codec_readable(header.codec) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "segment is compressed with {feature}; open it with a build of sump that has the `{feature}` feature"
            ),
        ));
    }
    let mut cursor = SegmentCursor::open_sealed(fs, path, id, len)?;
    cursor.skip_to(start.min(len));
    cursor.pass_records(skip)?;
    let mut records = 0;
    let mut corrupt = 0;
    let mut last_seq = None;
    let mut end = len;
    loop {
        match cursor.peek()? {
            Peek::Record { seq, .. } => {
                last_seq = last_seq.max(seq);
                cursor.commit();
                records += 1;
            }
            Peek::Damaged { resume: Some(next), reason } => {
                tracing::error!(segment = id, %reason, "damaged record found in recovery");
                corrupt += 1;
                cursor.skip_to(next);
            }
            Peek::Damaged { resume: None, reason } => {
                if last {
                    end = cursor.pos();
                    tracing::warn!(segment = id, at = end, %reason, "torn tail cut off");
                } else {
                    tracing::error!(segment = id, %reason, "damaged end of segment found in recovery");
                    corrupt += 1;
                }
                break;
            }
            Peek::Exhausted | Peek::DamagedActive { .. } => break,
        }
    }
    drop(cursor);
    if end < len {
        truncate(fs, path, end)?;
    }
    let meta = SegmentMeta { id, bytes: end, records, last_seq };
    Ok(Scan::Segment { meta, corrupt, version: header.version })
}

/// Cuts a segment file to `len` bytes, even if it was sealed read-only.
fn truncate(fs: &Fs, path: &Path, len: u64) -> io::Result<()> {
    fs.set_readonly(path, false)?;
    let cut = fs.open(path, Open::Append).and_then(|file| fs.set_len(path, &file, len));
    let sealed = fs.set_readonly(path, true);
    cut?;
    if let Err(err) = sealed {
        tracing::warn!(path = %path.display(), error = %err, "could not make a cut segment read-only again");
    }
    Ok(())
}
