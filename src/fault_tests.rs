//! Fault injection: the channel on a filesystem that runs out of space in
//! the middle of a write, fails syncs, and loses unsynced writes in a
//! simulated power loss.

use std::sync::Arc;

use crate::storage::faulty::FaultyStorage as FaultyIo;
use crate::{Builder, Durability, Receiver, Sender, SyncPolicy};

fn open(
    dir: &std::path::Path,
    io: &Arc<FaultyIo>,
    mode: Durability,
    sync: SyncPolicy,
) -> (Sender<String>, Receiver<String>) {
    Builder::new("faults", dir)
        .durability(mode)
        .sync(sync)
        .memory_capacity(0)
        .segment_bytes(4_096)
        .storage(Arc::clone(io) as crate::storage::Fs)
        .open()
        .unwrap()
}

fn item(i: usize) -> String {
    format!("{i:05}-{}", "y".repeat(90))
}

#[test]
fn a_write_cut_short_by_a_full_disk_is_rolled_back_and_nothing_accepted_is_lost() {
    for mode in [Durability::Overflow, Durability::WriteAhead] {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(FaultyIo::default());
        let (tx, rx) = open(dir.path(), &io, mode, SyncPolicy::Never);
        // 10,050 bytes: the disk fills in the middle of a record.
        io.limit_space(Some(10_050));
        let mut accepted = 0;
        let refused = loop {
            match tx.send(item(accepted)) {
                Ok(()) => accepted += 1,
                Err(err) => break err,
            }
            assert!(accepted < 1_000, "{mode:?}: the disk never filled");
        };
        assert_eq!(refused.io_error().and_then(|e| e.raw_os_error()), Some(28), "{mode:?}");
        assert_eq!(refused.into_inner(), item(accepted));
        for i in 0..accepted {
            assert_eq!(rx.try_recv().unwrap(), item(i), "{mode:?}");
        }
        assert_eq!(rx.stats().corrupt, 0, "{mode:?}: no torn record is ever read");
        io.limit_space(None);
        tx.send(item(7)).unwrap();
        assert_eq!(rx.try_recv().unwrap(), item(7), "{mode:?}: the channel works once space returns");
    }
}

#[test]
fn a_write_ahead_channel_filled_mid_record_reopens_with_every_accepted_item() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyIo::default());
    let (tx, rx) = open(dir.path(), &io, Durability::WriteAhead, SyncPolicy::Never);
    io.limit_space(Some(5_000));
    let mut accepted = 0;
    while tx.send(item(accepted)).is_ok() {
        accepted += 1;
    }
    drop(tx);
    rx.crash();
    io.limit_space(None);
    let (tx, rx) = open(dir.path(), &io, Durability::WriteAhead, SyncPolicy::Never);
    drop(tx);
    assert_eq!(rx.stats().corrupt, 0);
    assert_eq!(rx.iter().collect::<Vec<_>>(), (0..accepted).map(item).collect::<Vec<_>>());
}

#[test]
fn a_failed_sync_fails_the_send_and_the_channel_recovers_when_syncs_work_again() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyIo::default());
    let (tx, rx) = open(dir.path(), &io, Durability::WriteAhead, SyncPolicy::Always);
    tx.send(item(0)).unwrap();
    io.fail_syncs(true);
    let err = tx.send(item(1)).unwrap_err();
    assert_eq!(err.io_error().and_then(|e| e.raw_os_error()), Some(5));
    assert_eq!(err.into_inner(), item(1), "the item comes back");
    io.fail_syncs(false);
    tx.send(item(2)).unwrap();
    drop(tx);
    let got: Vec<String> = rx.iter().collect();
    // Changed with the storage seam: a failed group commit now takes its
    // record back, so the failed send is never delivered (it used to be).
    assert_eq!(got, vec![item(0), item(2)]);
}

#[test]
fn after_a_power_loss_every_item_whose_send_returned_under_always_is_recovered() {
    for producers in [1usize, 4] {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(FaultyIo::default());
        let (tx, rx) = open(dir.path(), &io, Durability::WriteAhead, SyncPolicy::Always);
        let threads: Vec<_> = (0..producers)
            .map(|p| {
                let tx = tx.clone();
                std::thread::spawn(move || (0..50).for_each(|i| tx.send(item(p * 1_000 + i)).unwrap()))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(tx);
        rx.crash();
        io.lose_unsynced_writes();
        let (tx, rx) = open(dir.path(), &io, Durability::WriteAhead, SyncPolicy::Always);
        drop(tx);
        let mut got: Vec<String> = rx.iter().collect();
        assert_eq!(rx.stats().corrupt, 0);
        got.sort();
        let mut expected: Vec<String> =
            (0..producers).flat_map(|p| (0..50).map(move |i| item(p * 1_000 + i))).collect();
        expected.sort();
        assert_eq!(got, expected, "{producers} producers");
    }
}

#[test]
fn without_syncs_a_power_loss_loses_unsynced_items_but_never_corrupts() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyIo::default());
    let (tx, rx) = open(dir.path(), &io, Durability::WriteAhead, SyncPolicy::Never);
    for i in 0..100 {
        tx.send(item(i)).unwrap();
    }
    drop(tx);
    rx.crash();
    io.lose_unsynced_writes();
    let (tx, rx) = open(dir.path(), &io, Durability::WriteAhead, SyncPolicy::Never);
    drop(tx);
    let got: Vec<String> = rx.iter().collect();
    assert_eq!(rx.stats().corrupt, 0);
    assert!(got.len() < 100, "with SyncPolicy::Never nothing was synced, so a power loss loses items");
    assert_eq!(got, (0..got.len()).map(item).collect::<Vec<_>>(), "what survives is a prefix, in order");
}

#[test]
fn an_interval_sync_makes_items_survive_a_power_loss_once_it_has_run() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyIo::default());
    let every = std::time::Duration::from_millis(5);
    let (tx, rx) = open(dir.path(), &io, Durability::WriteAhead, SyncPolicy::Interval(every));
    for i in 0..20 {
        tx.send(item(i)).unwrap();
    }
    std::thread::sleep(every * 20); // the background thread syncs meanwhile
    drop(tx);
    rx.crash();
    io.lose_unsynced_writes();
    let (tx, rx) = open(dir.path(), &io, Durability::WriteAhead, SyncPolicy::Never);
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), (0..20).map(item).collect::<Vec<_>>());
}

/// Found in review: a second drainer delivering part of the items the first
/// one put back released the segments they came from, so a crash before the
/// rest were delivered lost them.
#[test]
fn segments_holding_put_back_items_outlive_a_partial_delivery_and_a_crash() {
    use crate::{Drainer, SinkError};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Builder::new("putback", dir.path())
            .durability(Durability::WriteAhead)
            .memory_capacity(0)
            .segment_bytes(48)
            .open::<u64>()
            .unwrap()
    };
    let (tx, rx) = open();
    for i in 1..=6 {
        tx.send(i).unwrap();
    }
    let failing = Drainer::new(rx, |_: &[u64]| -> Result<(), SinkError> { Err(SinkError::transient("down")) })
        .batch_size(4) // three records fill a segment: the batch leaves the first one
        .backoff(Duration::from_millis(1), Duration::from_millis(2))
        .spawn();
    std::thread::sleep(Duration::from_millis(100));
    let rx = failing.shutdown(Duration::from_millis(20)).unwrap(); // 1..=4 put back
    let delivered = Arc::new(crate::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&delivered);
    let partial = Drainer::new(rx, move |batch: &[u64]| -> Result<(), SinkError> {
        let mut seen = seen.lock();
        if !seen.is_empty() {
            return Err(SinkError::transient("down again"));
        }
        seen.extend_from_slice(batch);
        Ok(())
    })
    .batch_size(1)
    .backoff(Duration::from_millis(1), Duration::from_millis(2))
    .spawn();
    std::thread::sleep(Duration::from_millis(100));
    let rx = partial.shutdown(Duration::from_millis(20)).unwrap();
    assert_eq!(*delivered.lock(), vec![1]);
    drop(tx);
    rx.crash();
    let (tx, rx) = open();
    drop(tx);
    let after: Vec<u64> = rx.iter().collect();
    assert!(after.ends_with(&[2, 3, 4, 5, 6]), "items not delivered were lost: {after:?}");
}

/// Both halves of a sharded channel of `(key, seq)` items.
type Sharded = (crate::ShardedSender<(u32, u32)>, crate::ShardedReceiver<(u32, u32)>);

/// Opens the sharded channel of `fault_reshard_*` tests with `shards`
/// shards; items are `(key, seq)`.
fn open_sharded(dir: &std::path::Path, io: &Arc<FaultyIo>, shards: usize) -> Result<Sharded, crate::OpenError> {
    Builder::new("sharded", dir)
        .durability(Durability::Persistent)
        .memory_capacity(0)
        .segment_bytes(4_096)
        .storage(Arc::clone(io) as crate::storage::Fs)
        .sharded::<(u32, u32)>(shards)
        .key(|&(key, _): &(u32, u32)| key)
        .open()
}

#[test]
fn a_reshard_that_fills_the_disk_fails_open_and_a_later_open_finishes_it_without_loss() {
    for space in [3_000, 20_000, 45_000] {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(FaultyIo::default());
        let (tx, rx) = open_sharded(dir.path(), &io, 4).unwrap();
        tx.send_batch((0..3_000).map(|seq| (seq % 17, seq))).unwrap();
        drop((tx, rx));

        io.limit_space(Some(space));
        let err = open_sharded(dir.path(), &io, 2).unwrap_err();
        let crate::OpenError::Io { source, .. } = &err else { panic!("space {space}: {err:?}") };
        assert_eq!(source.raw_os_error(), Some(28), "space {space}: {err}");

        io.limit_space(None);
        let (tx, rx) = open_sharded(dir.path(), &io, 2).unwrap();
        drop(tx);
        let mut seen = std::collections::BTreeSet::new();
        for shard in rx.into_shards() {
            let mut last = std::collections::BTreeMap::new();
            for (key, seq) in shard.iter() {
                // A step backed out by a crash may move some items twice;
                // first deliveries keep each key's order.
                if seen.insert(seq) {
                    let before = last.insert(key, seq);
                    assert!(before < Some(seq), "space {space}: key {key}: {seq} after {before:?}");
                }
            }
        }
        assert_eq!(seen.len(), 3_000, "space {space}: items lost");
    }
}

#[cfg(feature = "lz4")]
#[test]
fn a_full_disk_in_the_middle_of_a_compressed_block_loses_nothing_accepted() {
    for mode in [Durability::Overflow, Durability::Persistent] {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(FaultyIo::default());
        let open = || {
            Builder::new("packed", dir.path())
                .durability(mode)
                .memory_capacity(0)
                .segment_bytes(1 << 20)
                .compression(crate::Compression::Lz4)
                .storage(Arc::clone(&io) as crate::storage::Fs)
                .open::<String>()
                .unwrap()
        };
        let (tx, rx) = open();
        io.limit_space(Some(20_000));
        let mut accepted = 0;
        let refused = loop {
            match tx.send(item(accepted)) {
                Ok(()) => accepted += 1,
                Err(err) => break err,
            }
            assert!(accepted < 100_000, "{mode:?}: the disk never filled");
        };
        assert_eq!(refused.io_error().and_then(|e| e.raw_os_error()), Some(28), "{mode:?}");
        // The receiver reads what the writer holds but cannot write.
        for i in 0..accepted / 2 {
            assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(), item(i), "{mode:?}");
        }
        io.limit_space(None);
        tx.send(item(accepted)).unwrap();
        drop(tx);
        let rest: Vec<String> = match mode {
            Durability::Overflow => rx.iter().collect(),
            _ => {
                drop(rx);
                let (tx, rx) = open();
                drop(tx);
                rx.iter().collect()
            }
        };
        assert_eq!(rest, (accepted / 2..=accepted).map(item).collect::<Vec<_>>(), "{mode:?}");
    }
}

/// Found in review: a clean shutdown released the segments a drainer held
/// before it wrote the items put back from them, so a write that failed
/// there (or a crash) lost those items.
#[test]
fn items_put_back_survive_a_shutdown_that_cannot_write_them() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyIo::default());
    let (tx, rx) = open(dir.path(), &io, Durability::WriteAhead, SyncPolicy::Never);
    for i in 0..200 {
        tx.send(item(i)).unwrap();
    }
    drop(tx);
    // A drainer's peek: read past several segments, deliver nothing.
    let batch = rx.peek_batch(120, std::time::Duration::ZERO).unwrap();
    assert_eq!(&batch[..], (0..120).map(item).collect::<Vec<_>>());
    drop(batch);
    io.limit_space(Some(0));
    let err = rx.close().unwrap_err();
    assert_eq!(err.unpersisted(), 120);
    io.limit_space(None);
    let (tx, rx) = open(dir.path(), &io, Durability::WriteAhead, SyncPolicy::Never);
    drop(tx);
    let got: Vec<String> = rx.iter().collect();
    let unique: std::collections::BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 200, "nothing lost (some may come twice): got {}", got.len());
    assert_eq!(got.last(), Some(&item(199)));
}

#[test]
fn on_a_slow_disk_a_group_commit_waits_for_the_senders_it_last_released() {
    // Four senders that each think for 2 ms between sends, on a disk whose
    // syncs take 40 ms. A leader that synced the moment no append arrived
    // would leave the thinking senders to the next sync, each round split
    // in two; waiting (up to one sync's time) for as many senders as the
    // last sync released puts all four in every sync after the first.
    const SENDERS: usize = 4;
    const ROUNDS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyIo::default());
    let (tx, rx) = Builder::new("faults", dir.path())
        .durability(Durability::WriteAhead)
        .sync(SyncPolicy::Always)
        .group_commit_wait(std::time::Duration::from_secs(1))
        .storage(Arc::clone(&io) as crate::storage::Fs)
        .open::<String>()
        .unwrap();
    io.slow_syncs(Some(std::time::Duration::from_millis(40)));
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for i in 0..ROUNDS {
                    tx.send(item(s * ROUNDS + i)).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            })
        })
        .collect();
    senders.into_iter().for_each(|s| s.join().unwrap());
    let stats = tx.stats();
    assert_eq!(stats.spilled, (SENDERS * ROUNDS) as u64);
    // The first round or two may be split while the senders start.
    assert!(
        stats.group_commits <= ROUNDS as u64 + 3,
        "{} syncs for {} records: the leader did not wait for the group",
        stats.group_commits,
        stats.spilled
    );
    drop(tx);
    let mut got: Vec<String> = rx.iter().collect();
    got.sort();
    assert_eq!(got, (0..SENDERS * ROUNDS).map(item).collect::<Vec<_>>());
}

#[test]
fn a_receiver_close_behind_the_senders_takes_spilled_items_without_reading_them_back() {
    use crate::storage::faulty::Fault;
    use crate::storage::Op;
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyIo::default());
    let (tx, rx) = Builder::new("kept", dir.path())
        .memory_capacity(4)
        .storage(Arc::clone(&io) as crate::storage::Fs)
        .open::<String>()
        .unwrap();
    // Four in memory, six spilled: the first four of those are kept.
    for i in 0..10 {
        tx.send(item(i)).unwrap();
    }
    // The first receive from disk reads the segment (the receiver's read
    // buffer now holds items 8 and 9, which were not kept) and takes the
    // kept items 4 to 7.
    for i in 0..5 {
        assert_eq!(rx.try_recv().unwrap(), item(i));
    }
    // Items 8 and 9 are still on disk, so this one follows them there, and
    // is kept (three kept items are in the receiver's hands: the bound of
    // four has room for one).
    tx.send(item(10)).unwrap();
    assert_eq!((rx.stats().spilled, rx.stats().in_memory), (7, 0));
    // Items 8 and 9 are decoded from the read buffer.
    for i in 5..9 {
        assert_eq!(rx.try_recv().unwrap(), item(i));
    }
    // Every read of a segment fails from now on: item 10's frame is past
    // what the receiver read, and it needs it not.
    io.set_fault(Some(Fault { at: 0, errno: 5, only: Some(Op::Read), sticky: true }));
    for i in 9..11 {
        assert_eq!(rx.try_recv().unwrap(), item(i));
    }
    assert!(rx.try_recv().is_err());
    let stats = rx.stats();
    assert_eq!((stats.on_disk, stats.lost, stats.corrupt, stats.received), (0, 0, 0, 11));
    assert_eq!(io.injected().0, 0, "no segment was read");
    // The frames did reach the file, for a receiver that falls behind.
    io.set_fault(None);
    for i in 11..41 {
        tx.send(item(i)).unwrap();
    }
    assert_eq!(rx.iter().take(30).collect::<Vec<_>>(), (11..41).map(item).collect::<Vec<_>>());
}
