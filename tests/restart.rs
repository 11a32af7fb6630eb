//! Restart without reading the backlog: sealed segments are counted from
//! the segment index (`sump.index`) at open, not read; a segment whose
//! length no longer matches its entry, or a missing or damaged index, is
//! scanned as before.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sump::{Builder, Durability};

fn open(dir: &Path) -> (sump::Sender<u64>, sump::Receiver<u64>) {
    Builder::new("r", dir).durability(Durability::WriteAhead).memory_capacity(0).segment_bytes(1_024).open().unwrap()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join("r"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    paths
}

fn overwrite(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    change(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

fn filled(dir: &Path, items: u64) -> Vec<PathBuf> {
    let (tx, rx) = open(dir);
    for i in 0..items {
        tx.send(i).unwrap();
    }
    drop((tx, rx));
    segments(dir)
}

/// Proof that `open` reads no sealed segment: their records are replaced
/// by garbage of the same length, and `open` still counts every record
/// and finds no damage. The damage is found when the records are read.
#[test]
fn open_counts_sealed_segments_from_the_index_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let files = filled(dir.path(), 1_000);
    assert!(files.len() > 10, "{}", files.len());
    // Every segment but the last (the active one at shutdown, not sealed).
    for path in &files[..files.len() - 1] {
        overwrite(path, |bytes| bytes[16..].fill(0xa5));
    }
    let (tx, rx) = open(dir.path());
    let stats = rx.stats();
    assert_eq!((stats.on_disk, stats.corrupt), (1_000, 0), "counted from the index, nothing read");
    drop(tx);
    let got: Vec<u64> = rx.iter().collect();
    let last_segment_items = got.len();
    assert!(last_segment_items > 0 && got.iter().all(|&i| i >= 1_000 - last_segment_items as u64));
    assert_eq!(rx.stats().corrupt as usize, 1_000 - got.len(), "every garbage record counted as damaged when read");
    assert_eq!(rx.stats().on_disk, 0);
}

#[test]
fn a_segment_cut_by_another_program_is_scanned_and_the_rest_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let files = filled(dir.path(), 1_000);
    let cut = &files[2];
    let len = std::fs::metadata(cut).unwrap().len();
    overwrite(cut, |bytes| bytes.truncate(len as usize / 2));
    let (tx, rx) = open(dir.path());
    let on_disk = rx.stats().on_disk;
    drop(tx);
    let got: Vec<u64> = rx.iter().collect();
    assert_eq!(got.len() as u64, on_disk, "the count at open is exact");
    assert!(got.len() < 1_000 && got.len() > 900, "only the cut half is missing: {}", got.len());
    assert!(got.windows(2).all(|pair| pair[0] < pair[1]), "in order");
}

#[test]
fn without_a_usable_index_every_segment_is_scanned() {
    for damage in ["remove", "garble"] {
        let dir = tempfile::tempdir().unwrap();
        let files = filled(dir.path(), 500);
        overwrite(&files[0], |bytes| bytes[40] ^= 0x10);
        let index = dir.path().join("r").join("sump.index");
        match damage {
            "remove" => std::fs::remove_file(&index).unwrap(),
            _ => std::fs::write(&index, b"not an index").unwrap(),
        }
        let (tx, rx) = open(dir.path());
        assert_eq!(rx.stats().corrupt, 1, "{damage}: scanned, so the damage is found at open");
        assert_eq!(rx.stats().on_disk, 499, "{damage}");
        drop(tx);
        assert_eq!(rx.iter().count(), 499, "{damage}");
        // The open wrote the index anew: the next open trusts it.
        drop(rx);
        let (tx, rx) = open(dir.path());
        assert_eq!(rx.stats().on_disk, 0, "{damage}: everything was read");
        drop((tx, rx));
    }
}

#[test]
fn a_restart_after_a_restart_still_delivers_every_item_once() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 600);
    for round in 0..3u64 {
        let (tx, rx) = open(dir.path());
        assert_eq!(rx.stats().on_disk, 600 - 100 * round, "round {round}");
        for i in 0..100 {
            assert_eq!(rx.recv().unwrap(), 100 * round + i);
        }
        drop((tx, rx));
    }
    let (tx, rx) = open(dir.path());
    drop(tx);
    assert!(rx.iter().eq(300..600));
}
