//! [`Source`]: where a cursor's bytes come from, a segment file read with
//! positioned reads through the storage seam into one buffer.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::storage::{Fs, Open};

/// Where the cursor's bytes come from: `buffer` holds the file's bytes
/// from `base` on.
#[derive(Debug)]
pub(super) struct Source {
    /// How the file is read.
    pub(super) fs: Fs,
    /// The file's path, for the storage seam and for messages.
    pub(super) path: PathBuf,
    /// The segment file, open for reading; `None` while parked (see
    /// [`super::SegmentCursor::park`]), reopened by the next read.
    pub(super) file: Option<File>,
    /// Bytes read from the file.
    pub(super) buffer: Vec<u8>,
    /// File offset of `buffer[0]`.
    pub(super) base: u64,
}

impl Source {
    pub(super) fn open(fs: &Fs, path: &Path) -> io::Result<Source> {
        let file = fs.open(path, Open::Read)?;
        Ok(Source {
            fs: std::sync::Arc::clone(fs),
            path: path.to_owned(),
            file: Some(file),
            buffer: Vec::new(),
            base: 0,
        })
    }

    /// Replaces the buffer with up to `len` bytes of the file from `pos`:
    /// fewer only where the file ends sooner.
    pub(super) fn fill(&mut self, pos: u64, len: usize) -> io::Result<()> {
        let file = match self.file.take() {
            Some(file) => file,
            None => self.fs.open(&self.path, Open::Read)?,
        };
        let file = self.file.insert(file);
        // Resized, not cleared: only bytes past the old length are zeroed,
        // and every byte kept is overwritten by the read or cut off below.
        self.buffer.resize(len, 0);
        self.base = pos;
        let mut got = 0;
        while got < len {
            match self.fs.read_at(&self.path, file, &mut self.buffer[got..], pos + got as u64) {
                Ok(0) => break,
                Ok(read) => got += read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.buffer.clear();
                    return Err(err);
                }
            }
        }
        self.buffer.truncate(got);
        Ok(())
    }
}
