//! A real full filesystem: a small tmpfs each test mounts, so they need
//! root. They are `#[ignore]`d so that `cargo test` works for anyone;
//! `.ci/run` runs them as root with `cargo test --test full_disk -- --ignored`.
//!
//! When the disk fills, a send gets its item back with the `io::Error`,
//! the segment stays valid, nothing accepted earlier is lost, and once the
//! receiver has freed space the channel works again.

use std::path::{Path, PathBuf};
use std::process::Command;

use sump::{Builder, Durability};

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
        assert!(root, "this test mounts a tmpfs and needs root");
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs failed");
        Tmpfs { path: dir.path().to_owned(), _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn item(i: u32) -> String {
    format!("{i:08}-{}", "x".repeat(1_000))
}

fn fill_until_full(dir: &Path, mode: Durability, segment_bytes: u64) {
    eprintln!("{mode:?} with {segment_bytes}-byte segments");
    let (tx, rx) = Builder::new("full", dir)
        .durability(mode)
        .memory_capacity(0)
        .segment_bytes(segment_bytes)
        .max_disk_bytes(u64::MAX)
        .open::<String>()
        .unwrap();
    let mut accepted = 0;
    let refused = loop {
        match tx.send(item(accepted)) {
            Ok(()) => accepted += 1,
            Err(err) => break err,
        }
        assert!(accepted < 10_000, "the disk never filled");
    };
    let io = refused.io_error().expect("an I/O error, not a disconnection");
    assert_eq!(io.raw_os_error(), Some(28), "ENOSPC, got {io:?}");
    assert_eq!(refused.into_inner(), item(accepted), "the refused item comes back");
    assert_eq!(tx.stats().sent, u64::from(accepted), "{mode:?}");

    // Every accepted item is delivered, in order, even those the writer
    // could not flush.
    for i in 0..accepted {
        let got =
            rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap_or_else(|e| panic!("{mode:?} item {i}: {e}"));
        assert_eq!(got, item(i), "{mode:?}");
    }
    // Space is back: the channel works again.
    for i in 0..50 {
        tx.send(item(i)).unwrap();
    }
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), (0..50).map(item).collect::<Vec<_>>(), "{mode:?}");
}

#[test]
#[ignore = "mounts a tmpfs, so needs root; .ci/run runs it"]
fn a_full_disk_refuses_the_send_loses_nothing_and_recovers() {
    let fs = Tmpfs::mount("512k");
    for (mode, segment_bytes) in [
        (Durability::Overflow, 64 * 1024),
        (Durability::Overflow, 8 << 20),
        (Durability::WriteAhead, 64 * 1024),
        (Durability::WriteAhead, 8 << 20),
        (Durability::Persistent, 64 * 1024),
    ] {
        let dir = fs.path.join(format!("{mode:?}-{segment_bytes}"));
        fill_until_full(&dir, mode, segment_bytes);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
#[ignore = "mounts a tmpfs, so needs root; .ci/run runs it"]
fn a_write_ahead_channel_filled_to_the_brim_reopens_with_valid_segments() {
    let fs = Tmpfs::mount("256k");
    let open =
        || Builder::new("brim", &fs.path).durability(Durability::WriteAhead).segment_bytes(32 * 1024).open::<String>();
    let (tx, rx) = open().unwrap();
    let mut accepted = 0;
    while tx.send(item(accepted)).is_ok() {
        accepted += 1;
    }
    drop((tx, rx));
    let (tx, rx) = open().unwrap();
    assert_eq!(rx.stats().corrupt, 0, "no torn record was left behind");
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), (0..accepted).map(item).collect::<Vec<_>>());
}

#[test]
#[ignore = "mounts a tmpfs, so needs root; .ci/run runs it"]
fn min_free_bytes_makes_the_channel_full_before_the_filesystem_is() {
    let fs = Tmpfs::mount("1m");
    let (tx, rx) = Builder::new("polite", &fs.path)
        .memory_capacity(0)
        .segment_bytes(64 * 1024)
        .min_free_bytes(512 * 1024)
        .open::<String>()
        .unwrap();
    let mut accepted = 0;
    loop {
        match tx.try_send(item(accepted)) {
            Ok(()) => accepted += 1,
            Err(sump::TrySendError::Full(_)) => break,
            Err(other) => panic!("expected Full before the disk fills, got {other:?}"),
        }
    }
    tx.flush().unwrap();
    let free = fs4::available_space(&fs.path).unwrap();
    assert!(free >= 400 * 1024, "the channel stopped with {free} bytes free");
    assert!(accepted > 100, "it used the space above the reserve: {accepted} items");
    for i in 0..accepted {
        assert_eq!(rx.recv().unwrap(), item(i));
    }
    tx.try_send(item(0)).expect("space is back once the backlog is read");
}
