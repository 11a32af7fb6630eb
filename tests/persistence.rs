//! `Persistent` and `WriteAhead`: what a clean restart keeps, read
//! progress, recovery of torn tails and damaged segments.

use std::path::{Path, PathBuf};

use sump::{Builder, Durability, SyncPolicy};

fn open(dir: &Path, mode: Durability, capacity: usize) -> (sump::Sender<u64>, sump::Receiver<u64>) {
    Builder::new("jobs", dir).durability(mode).memory_capacity(capacity).segment_bytes(256).open().unwrap()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    paths
}

/// Sealed segments are read-only; tests that damage one make it writable.
fn make_writable(path: &Path) {
    let mut permissions = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(path, permissions).unwrap();
}

#[test]
fn a_clean_restart_keeps_items_from_memory_and_disk_in_order() {
    for mode in [Durability::Persistent, Durability::WriteAhead] {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open(dir.path(), mode, 10);
        for i in 0..100 {
            tx.send(i).unwrap();
        }
        drop(tx);
        drop(rx);
        let (tx, rx) = open(dir.path(), mode, 10);
        assert_eq!(rx.stats().on_disk, 100, "{mode:?}");
        drop(tx);
        assert_eq!(rx.iter().collect::<Vec<_>>(), (0..100).collect::<Vec<_>>(), "{mode:?}");
    }
}

#[test]
fn received_items_are_not_delivered_again_after_a_clean_restart() {
    for mode in [Durability::Persistent, Durability::WriteAhead] {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open(dir.path(), mode, 5);
        for i in 0..60 {
            tx.send(i).unwrap();
        }
        for i in 0..23 {
            assert_eq!(rx.recv().unwrap(), i); // some from memory, some from the middle of a segment
        }
        rx.close().unwrap();
        assert!(tx.send(99).unwrap_err().is_disconnected());
        drop(tx);

        let (tx, rx) = open(dir.path(), mode, 5);
        for i in 60..70 {
            tx.send(i).unwrap();
        }
        for i in 23..40 {
            assert_eq!(rx.recv().unwrap(), i, "{mode:?}");
        }
        drop((tx, rx));

        let (tx, rx) = open(dir.path(), mode, 5);
        drop(tx);
        assert_eq!(rx.iter().collect::<Vec<_>>(), (40..70).collect::<Vec<_>>(), "{mode:?}");
    }
}

#[test]
fn items_in_memory_are_written_ahead_of_the_disk_backlog_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), Durability::Persistent, 50);
    for i in 0..200 {
        tx.send(i).unwrap();
    }
    assert_eq!(tx.stats().in_memory, 50);
    let disk_segments = segment_files(dir.path());
    drop(rx);
    let after = segment_files(dir.path());
    assert!(after.len() > disk_segments.len(), "memory went to new segments");
    assert!(after[0] < disk_segments[0], "…named to sort before the backlog: {after:?}");
    drop(tx);
    let (_tx, rx) = open(dir.path(), Durability::Persistent, 50);
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), (0..200).collect::<Vec<_>>());
}

#[test]
fn an_empty_channel_leaves_no_segments_and_reopens_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), Durability::Persistent, 4);
    for i in 0..20 {
        tx.send(i).unwrap();
    }
    drop(tx);
    assert_eq!(rx.iter().count(), 20);
    drop(rx);
    assert_eq!(segment_files(dir.path()), Vec::<PathBuf>::new());
    let (_tx, rx) = open(dir.path(), Durability::Persistent, 4);
    assert_eq!(rx.try_recv(), Err(sump::TryRecvError::Empty));
}

#[test]
fn write_ahead_puts_every_item_on_disk_before_send_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("jobs", dir.path()).durability(Durability::WriteAhead).open::<u64>().unwrap();
    for i in 0..10 {
        tx.send(i).unwrap();
    }
    let stats = tx.stats();
    assert_eq!((stats.in_memory, stats.on_disk, stats.spilled), (0, 10, 10));
    let on_disk: u64 = segment_files(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!(on_disk, stats.disk_bytes, "nothing is left in a write buffer");
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
}

#[test]
fn sync_policies_deliver_the_same_items() {
    for policy in [SyncPolicy::Never, SyncPolicy::Interval(std::time::Duration::from_millis(5)), SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = Builder::new("jobs", dir.path())
            .durability(Durability::WriteAhead)
            .sync(policy)
            .segment_bytes(512)
            .open::<u64>()
            .unwrap();
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || (0..100).for_each(|i| tx.send(t * 1_000 + i).unwrap()))
            })
            .collect();
        senders.into_iter().for_each(|s| s.join().unwrap());
        tx.flush().unwrap();
        drop(tx);
        let mut got: Vec<u64> = rx.iter().collect();
        assert_eq!(got.len(), 400, "{policy:?}");
        got.sort_unstable();
        assert_eq!(got, (0..4).flat_map(|t| (0..100).map(move |i| t * 1_000 + i)).collect::<Vec<_>>());
    }
}

#[test]
fn a_torn_tail_is_cut_off_and_is_not_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), Durability::WriteAhead, 0);
    for i in 0..10 {
        tx.send(i).unwrap();
    }
    drop((tx, rx));
    let last = segment_files(dir.path()).pop().unwrap();
    let clean_len = std::fs::metadata(&last).unwrap().len();
    make_writable(&last);
    // Half a record, as a crash in the middle of a write leaves it.
    let mut file = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
    std::io::Write::write_all(&mut file, &[9, 0, 0, 0, 0xde, 0xad]).unwrap();
    drop(file);
    let (tx, rx) = open(dir.path(), Durability::WriteAhead, 0);
    assert_eq!(std::fs::metadata(&last).unwrap().len(), clean_len, "the torn tail is cut off");
    assert_eq!(rx.stats().corrupt, 0);
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
}

/// Changed when the segment index came: a sealed segment the index
/// describes is not read at open, so damage in it is found when it is
/// read (skipped and counted then); without the index, recovery scans and
/// finds it at open, as before.
#[test]
fn a_damaged_record_is_counted_and_skipped_at_open_or_when_read() {
    for indexed in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open(dir.path(), Durability::WriteAhead, 0);
        for i in 0..40 {
            tx.send(1_000 + i).unwrap(); // 3-byte varints: 19-byte frames (11 before the sequence number)
        }
        drop((tx, rx));
        let first = segment_files(dir.path()).remove(0);
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[16 + 2 * 19 + 9] ^= 0x55; // the third record's payload
        make_writable(&first);
        std::fs::write(&first, bytes).unwrap();
        if !indexed {
            std::fs::remove_file(dir.path().join("jobs").join("sump.index")).unwrap();
        }
        let (tx, rx) = open(dir.path(), Durability::WriteAhead, 0);
        if indexed {
            assert_eq!(rx.stats().corrupt, 0, "not read at open");
            assert_eq!(rx.stats().on_disk, 40);
        } else {
            assert_eq!(rx.stats().corrupt, 1, "found and counted at open");
            assert_eq!(rx.stats().on_disk, 39);
        }
        drop(tx);
        let got: Vec<u64> = rx.iter().collect();
        assert_eq!(got, (0..40).filter(|&i| i != 2).map(|i| 1_000 + i).collect::<Vec<_>>(), "indexed: {indexed}");
        assert_eq!(rx.stats().corrupt, 1, "counted once, indexed: {indexed}");
        assert_eq!(rx.stats().on_disk, 0);
    }
}

#[test]
fn a_segment_with_a_bad_header_is_set_aside_at_open_and_the_rest_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), Durability::WriteAhead, 0);
    for i in 0..100 {
        tx.send(i).unwrap();
    }
    drop((tx, rx));
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 3);
    make_writable(&segments[1]);
    std::fs::write(&segments[1], b"not a segment at all").unwrap();
    let (tx, rx) = open(dir.path(), Durability::WriteAhead, 0);
    drop(tx);
    let got: Vec<u64> = rx.iter().collect();
    assert!(got.len() < 100 && got.len() > 50);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(got[0], 0);
    assert_eq!(*got.last().unwrap(), 99);
    let mut aside = segments[1].clone().into_os_string();
    aside.push(".corrupt");
    assert_eq!(std::fs::read(PathBuf::from(aside)).unwrap(), b"not a segment at all", "kept for inspection");
}

#[test]
fn a_damaged_progress_file_can_only_deliver_items_again_never_lose_them() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), Durability::Persistent, 0);
    for i in 0..30 {
        tx.send(i).unwrap();
    }
    for _ in 0..10 {
        rx.recv().unwrap();
    }
    drop((tx, rx));
    std::fs::write(dir.path().join("jobs").join("progress"), b"scribbled over").unwrap();
    let (tx, rx) = open(dir.path(), Durability::Persistent, 0);
    drop(tx);
    let got: Vec<u64> = rx.iter().collect();
    assert_eq!(*got.last().unwrap(), 29);
    assert!(got.len() >= 20, "nothing after the progress point is lost");
    assert!(got.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn close_reports_items_that_could_not_be_written() {
    #[derive(Debug, serde::Deserialize)]
    struct Fussy(u8);
    impl serde::Serialize for Fussy {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if self.0 == 13 {
                return Err(serde::ser::Error::custom("unlucky"));
            }
            s.serialize_u8(self.0)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("fussy", dir.path()).durability(Durability::Persistent).open::<Fussy>().unwrap();
    tx.send(Fussy(1)).unwrap();
    tx.send(Fussy(13)).unwrap(); // in memory: never encoded until shutdown
    let err = rx.close().unwrap_err();
    assert_eq!(err.unpersisted(), 1);
    assert!(err.to_string().contains("unlucky"), "{err}");
    drop(tx);
    let (_tx, rx) = Builder::new("fussy", dir.path()).durability(Durability::Persistent).open::<Fussy>().unwrap();
    assert_eq!(rx.try_iter().map(|f| f.0).collect::<Vec<_>>(), vec![1]);
}

#[test]
fn a_group_commit_wait_is_paid_only_when_other_senders_append_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let open = |wait_ms: u64| {
        Builder::new("gather", dir.path())
            .durability(Durability::WriteAhead)
            .sync(SyncPolicy::Always)
            .group_commit_wait(std::time::Duration::from_millis(wait_ms))
            .memory_capacity(0)
            .open::<(u64, u64)>()
            .unwrap()
    };
    // A lone sender: 40 sends would take at least 2 s if each waited 50 ms.
    {
        let (tx, rx) = open(50);
        let started = std::time::Instant::now();
        for i in 0..40 {
            tx.send((0, i)).unwrap();
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "a lone sender waited: {:?}", started.elapsed());
        assert_eq!(tx.stats().group_commits, 40, "a lone sender syncs each of its records");
        assert_eq!(rx.try_iter().count(), 40);
    }
    // Eight senders sharing syncs with a wait: everything arrives, each
    // sender's items in its order, and survives a reopen.
    {
        let (tx, _rx) = open(2);
        let senders: Vec<_> = (0..8u64)
            .map(|p| {
                let tx = tx.clone();
                std::thread::spawn(move || (0..200).for_each(|i| tx.send((p, i)).unwrap()))
            })
            .collect();
        senders.into_iter().for_each(|s| s.join().unwrap());
        let stats = tx.stats();
        assert!(stats.group_commits > 0 && stats.group_commits <= stats.spilled, "{stats:?}");
    }
    let other = tempfile::tempdir().unwrap();
    let (tx, _rx) = Builder::new("never", other.path()).memory_capacity(0).open::<u8>().unwrap();
    tx.send(1).unwrap();
    assert_eq!(tx.stats().group_commits, 0, "no group commits without SyncPolicy::Always");
    let (_tx, rx) = open(2);
    let mut next = [0u64; 8];
    for (p, i) in rx.try_iter() {
        assert_eq!(i, next[p as usize], "sender {p}'s items in order");
        next[p as usize] += 1;
    }
    assert_eq!(next, [200; 8]);
}
