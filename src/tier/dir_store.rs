//! [`DirStore`]: a remote tier that is a directory (another disk, an NFS
//! mount).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::RemoteStore;

/// A [`RemoteStore`] that keeps each object as a file in a directory:
/// another disk, or a network filesystem mounted on this machine.
///
/// `put` writes to a temporary file, syncs it, renames it into place and
/// syncs the directory, so an object is either whole or absent. A crash
/// during a put leaves a `{key}.part` file; `list` reports it like an
/// object, so that the channel's sweep deletes it.
///
/// The directory must exist: a store never creates it. Point it at a
/// directory *inside* a mounted filesystem (`/mnt/bulk/shipper`, not the
/// mount point `/mnt/bulk` itself): while the filesystem is not mounted
/// the directory is missing, so nothing is written to the disk beneath,
/// and the puts fail and are retried until it is back.
/// [`DirStore::create`] creates it first, for a plain directory.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// use sump::{DirStore, RemoteStore};
///
/// let store = DirStore::create(dir.path().join("remote"))?;
/// store.put("a.seg", b"bytes")?;
/// assert_eq!(store.get("a.seg")?.as_deref(), Some(&b"bytes"[..]));
/// assert_eq!(store.size("a.seg")?, Some(5));
/// store.delete("a.seg")?;
/// assert_eq!(store.get("a.seg")?, None);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// A store in directory `root`, which must exist when it is used.
    pub fn new(root: impl Into<PathBuf>) -> DirStore {
        DirStore { root: root.into() }
    }

    /// A store in directory `root`, created (with its parents) if missing.
    ///
    /// # Errors
    ///
    /// When the directory cannot be created.
    pub fn create(root: impl Into<PathBuf>) -> io::Result<DirStore> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(DirStore { root })
    }

    /// The store's directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        let valid = !key.is_empty()
            && !key.starts_with('.')
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid object key {key:?}")));
        }
        Ok(self.root.join(key))
    }
}

fn absent_is_none<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

impl RemoteStore for DirStore {
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        let path = self.path(key)?;
        let part = self.root.join(format!("{key}.part"));
        let mut file = fs::File::create(&part)?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&part, &path)?;
        fs::File::open(&self.root)?.sync_all()
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        absent_is_none(fs::read(self.path(key)?))
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        absent_is_none(fs::symlink_metadata(self.path(key)?).map(|meta| meta.len()))
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.path(key)?) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            if name.starts_with(prefix) && entry.file_type()?.is_file() {
                keys.push(name);
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_leave_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        for key in ["", "../x", "a/b", ".hidden", "x y"] {
            let err = store.put(key, b"x").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{key:?}");
        }
    }

    #[test]
    fn a_put_replaces_and_list_reports_partial_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path().join("r"));
        assert_eq!(store.put("c-1.seg", b"one").unwrap_err().kind(), io::ErrorKind::NotFound, "never creates its root");
        assert_eq!(store.get("c-1.seg").unwrap(), None);
        let store = DirStore::create(dir.path().join("r")).unwrap();
        assert_eq!(store.list("").unwrap(), Vec::<String>::new());
        store.put("c-1.seg", b"one").unwrap();
        store.put("c-1.seg", b"two!").unwrap();
        store.put("d-1.seg", b"x").unwrap();
        fs::write(dir.path().join("r/c-2.seg.part"), b"half").unwrap();
        assert_eq!(store.get("c-1.seg").unwrap().unwrap(), b"two!");
        let mut listed = store.list("c-").unwrap();
        listed.sort();
        assert_eq!(listed, ["c-1.seg", "c-2.seg.part"], "a crash's leftover is listed, to be swept");
        store.delete("c-2.seg.part").unwrap();
        store.delete("c-1.seg").unwrap();
        store.delete("c-1.seg").unwrap();
        assert_eq!(store.size("c-1.seg").unwrap(), None);
    }
}
