//! The disk bounds (`max_disk_bytes`, `max_segments`) and each `WhenFull`
//! policy at them.

use std::path::Path;
use std::thread;
use std::time::Duration;

use sump::{Builder, TrySendError, WhenFull};

/// Sum of the sizes of the channel's segment files.
fn bytes_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn small(dir: &Path, policy: WhenFull) -> (sump::Sender<u64>, sump::Receiver<u64>) {
    // u64 values below 251 encode in one byte: 17-byte frames (length, CRC,
    // payload, sequence number), 16-byte headers. An 84-byte segment holds
    // 4 records; two segments fit in 168 bytes. (Segment format 2 added the
    // 8-byte sequence number, so these sizes grew from 52 and 104.)
    Builder::new("capped", dir)
        .memory_capacity(2)
        .segment_bytes(84)
        .max_disk_bytes(168)
        .when_full(policy)
        .open()
        .unwrap()
}

#[test]
fn block_refuses_try_send_at_the_cap_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = small(dir.path(), WhenFull::Block);
    let mut accepted = Vec::new();
    for i in 0..100u64 {
        match tx.try_send(i) {
            Ok(()) => accepted.push(i),
            Err(TrySendError::Full(item)) => {
                assert_eq!(item, i);
                break;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted.len(), 2 + 8, "two in memory, eight on disk");
    let stats = tx.stats();
    assert!(stats.disk_bytes <= 168);
    assert_eq!(stats.dropped, 0);
    tx.flush().unwrap();
    assert_eq!(bytes_on_disk(&dir.path().join("capped")), stats.disk_bytes);
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), accepted);
}

#[test]
fn a_refused_send_changes_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = small(dir.path(), WhenFull::Block);
    while tx.try_send(1).is_ok() {}
    tx.flush().unwrap();
    let before = tx.stats();
    let bytes = bytes_on_disk(&dir.path().join("capped"));
    for _ in 0..10 {
        assert!(tx.try_send(2).unwrap_err().is_full());
        assert!(tx.send_timeout(3, Duration::from_millis(1)).unwrap_err().is_timeout());
    }
    tx.flush().unwrap();
    assert_eq!(tx.stats(), before);
    assert_eq!(bytes_on_disk(&dir.path().join("capped")), bytes);
}

#[test]
fn blocked_senders_resume_as_the_receiver_frees_segments_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = small(dir.path(), WhenFull::Block);
    let producers: Vec<_> = (0..3u64)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..200 {
                    tx.send(p * 1_000 + i).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    thread::sleep(Duration::from_millis(20));
    let mut received = Vec::new();
    let mut max_bytes = 0;
    while let Ok(item) = rx.recv() {
        received.push(item);
        max_bytes = max_bytes.max(rx.stats().disk_bytes);
    }
    for producer in producers {
        producer.join().unwrap();
    }
    assert!(max_bytes <= 168, "disk bound exceeded: {max_bytes}");
    assert_eq!(received.len(), 600);
    for p in 0..3 {
        let mine: Vec<u64> = received.iter().copied().filter(|v| v / 1_000 == p).collect();
        assert_eq!(mine, (0..200).map(|i| p * 1_000 + i).collect::<Vec<_>>());
    }
    assert_eq!(rx.stats().dropped, 0);
}

#[test]
fn drop_newest_drops_new_items_counts_them_and_returns_ok() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = small(dir.path(), WhenFull::DropNewest);
    for i in 0..30 {
        tx.send(i).unwrap();
        tx.try_send(100 + i).unwrap();
    }
    let stats = tx.stats();
    assert_eq!(stats.sent, 10);
    assert_eq!(stats.dropped, 50);
    drop(tx);
    let kept: Vec<u64> = rx.iter().collect();
    assert_eq!(kept, vec![0, 100, 1, 101, 2, 102, 3, 103, 4, 104], "the oldest items are kept");
}

#[test]
fn drop_oldest_deletes_the_oldest_sealed_segment_and_keeps_the_newest_items() {
    let dir = tempfile::tempdir().unwrap();
    // Room for three segments of four records each.
    let (tx, rx) = Builder::new("oldest", dir.path())
        .memory_capacity(2)
        .segment_bytes(84)
        .max_disk_bytes(252)
        .when_full(WhenFull::DropOldest)
        .open::<u64>()
        .unwrap();
    for i in 0..40 {
        tx.send(i).unwrap();
    }
    let stats = tx.stats();
    assert!(stats.dropped > 0);
    assert!(stats.disk_bytes <= 252);
    assert_eq!(stats.sent, 40);
    drop(tx);
    let kept: Vec<u64> = rx.iter().collect();
    assert_eq!(kept.len() as u64 + stats.dropped, 40, "every item is either delivered or counted as dropped");
    assert_eq!(&kept[..2], &[0, 1], "memory items are older than the disk and are kept");
    assert_eq!(*kept.last().unwrap(), 39, "the newest item is kept");
    assert!(kept.windows(2).all(|w| w[0] < w[1]), "still in order: {kept:?}");
    assert_eq!(rx.stats().dropped, stats.dropped);
}

#[test]
fn drop_oldest_never_deletes_the_segment_the_receiver_is_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("reading", dir.path())
        .memory_capacity(0)
        .segment_bytes(84)
        .max_disk_bytes(168)
        .when_full(WhenFull::DropOldest)
        .open::<u64>()
        .unwrap();
    for i in 0..8 {
        tx.send(i).unwrap();
    }
    assert_eq!(rx.recv().unwrap(), 0); // the receiver now has segment one open
    for i in 8..20 {
        tx.send(i).unwrap();
    }
    drop(tx);
    let rest: Vec<u64> = rx.iter().collect();
    assert_eq!(&rest[..3], &[1, 2, 3], "the open segment is read to its end");
    assert!(rest.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*rest.last().unwrap(), 19);
}

#[test]
fn max_segments_counts_the_active_segment_too() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) =
        Builder::new("segs", dir.path()).memory_capacity(0).segment_bytes(84).max_segments(2).open::<u64>().unwrap();
    let mut sent = 0;
    while tx.try_send(sent).is_ok() {
        sent += 1;
    }
    assert_eq!(sent, 8, "two segments of four records");
    assert_eq!(tx.stats().segments, 2);
    assert_eq!(rx.recv().unwrap(), 0);
    assert!(tx.try_send(99).unwrap_err().is_full(), "space frees only when a whole segment is read");
    for i in 1..4 {
        assert_eq!(rx.recv().unwrap(), i);
    }
    assert_eq!(rx.recv().unwrap(), 4); // moving on deletes the first segment
    tx.try_send(8).unwrap();
}

/// Changed when the hopper mapping took hopper's floors: 52-byte files
/// became hopper's 1 MiB minimum, so the bound is two 1 MiB segments.
#[test]
fn hopper_style_capacity_bounds_disk_by_segments_times_size() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = sump::channel_with_explicit_capacity::<u64>("hop", dir.path(), 16, 52, 2).unwrap();
    let mut sent = 0;
    while tx.try_send(sent).is_ok() {
        sent += 1;
    }
    let stats = tx.stats();
    assert_eq!(stats.in_memory, 2, "16 bytes of memory hold two u64s");
    assert!(stats.disk_bytes <= 2 << 20 && stats.disk_bytes > (2 << 20) - 64, "{stats:?}");
    assert_eq!(stats.segments, 2);
    drop(tx);
    assert_eq!(rx.iter().count() as u64, sent);
}

#[test]
fn every_argument_set_hopper_accepts_opens_and_works() {
    let dir = tempfile::tempdir().unwrap();
    for (index, (memory, file_bytes, files)) in
        [(0, 0, 0), (8, 8, 0), (1, 8, 5), (1 << 20, 1, 1), (usize::MAX, usize::MAX, usize::MAX)].into_iter().enumerate()
    {
        let (tx, rx) =
            sump::channel_with_explicit_capacity::<u64>(&format!("h{index}"), dir.path(), memory, file_bytes, files)
                .unwrap_or_else(|err| panic!("({memory}, {file_bytes}, {files}): {err}"));
        for i in 0..1_000 {
            tx.send(i).unwrap();
        }
        drop(tx);
        assert!(rx.iter().eq(0..1_000), "({memory}, {file_bytes}, {files})");
    }
}

#[test]
fn settings_that_cannot_hold_one_record_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for builder in [
        Builder::new("a", dir.path()).segment_bytes(10),
        Builder::new("b", dir.path()).max_disk_bytes(0),
        Builder::new("c", dir.path()).max_segments(0),
    ] {
        let err = builder.open::<u8>().unwrap_err();
        assert!(matches!(err, sump::OpenError::InvalidConfig { .. }), "{err}");
    }
}

#[test]
fn a_filesystem_below_min_free_bytes_counts_as_full() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) =
        Builder::new("reserve", dir.path()).memory_capacity(1).min_free_bytes(u64::MAX).open::<u64>().unwrap();
    tx.try_send(1).unwrap(); // memory
    assert!(tx.try_send(2).unwrap_err().is_full(), "no filesystem has u64::MAX bytes free");
    assert_eq!(tx.stats().on_disk, 0);
    assert_eq!(rx.recv().unwrap(), 1);
}
