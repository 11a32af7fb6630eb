//! Regression tests for the failures the storage seam made reachable:
//! each one was observed with real syscall faults, and each test fails
//! without its fix.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::storage::faulty::{Fault, FaultyStorage};
use crate::storage::{Fs, Op, EIO, EMFILE, ENOSPC};
use crate::{Builder, Durability, Receiver, Sender, SyncPolicy};

fn open(
    dir: &std::path::Path,
    fs: &Arc<FaultyStorage>,
    mode: Durability,
    sync: SyncPolicy,
) -> (Sender<u64>, Receiver<u64>) {
    Builder::new("failures", dir)
        .durability(mode)
        .sync(sync)
        .memory_capacity(0)
        .segment_bytes(400)
        .storage(Arc::clone(fs) as Fs)
        .open()
        .expect("open")
}

/// Drains a reopened channel on a working disk.
fn reopen_and_drain(dir: &std::path::Path, mode: Durability) -> Vec<u64> {
    let fs = Arc::new(FaultyStorage::default());
    let (tx, rx) = open(dir, &fs, mode, SyncPolicy::Never);
    drop(tx);
    rx.iter().collect()
}

#[test]
fn a_send_whose_group_commit_fails_is_never_delivered() {
    for (senders, errno, op) in [(1, EIO, Op::Sync), (4, EIO, Op::Sync), (1, ENOSPC, Op::Write), (4, ENOSPC, Op::Write)]
    {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(FaultyStorage::default());
        let (tx, rx) = open(dir.path(), &fs, Durability::WriteAhead, SyncPolicy::Always);
        // Every fifth sync (or write) fails, from the third on.
        let faults = Arc::clone(&fs);
        let (acked, failed): (Vec<u64>, Vec<u64>) = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..senders)
                .map(|sender| {
                    let tx = tx.clone();
                    let faults = Arc::clone(&faults);
                    scope.spawn(move || {
                        let (mut acked, mut failed) = (Vec::new(), Vec::new());
                        for seq in 0..60u64 {
                            if sender == 0 && seq % 5 == 2 {
                                faults.set_fault(Some(Fault { at: 0, errno, only: Some(op), sticky: false }));
                            }
                            let item = sender << 32 | seq;
                            match tx.send(item) {
                                Ok(()) => acked.push(item),
                                Err(err) => {
                                    assert_eq!(err.into_inner(), item);
                                    failed.push(item);
                                }
                            }
                        }
                        (acked, failed)
                    })
                })
                .collect();
            let mut all = (Vec::new(), Vec::new());
            for handle in handles {
                let (acked, failed) = handle.join().unwrap();
                all.0.extend(acked);
                all.1.extend(failed);
            }
            all
        });
        assert!(!failed.is_empty(), "{senders} senders, {op:?}: no send failed");
        let received_live: Vec<u64> = {
            drop(tx);
            let got: Vec<u64> = rx.try_iter().collect();
            drop(rx);
            got
        };
        let after = reopen_and_drain(dir.path(), Durability::WriteAhead);
        let failed: BTreeSet<u64> = failed.into_iter().collect();
        for item in received_live.iter().chain(&after) {
            assert!(!failed.contains(item), "{senders} senders, {op:?}: failed send {item:#x} delivered");
        }
        let delivered: BTreeSet<u64> = received_live.iter().chain(&after).copied().collect();
        let acked: BTreeSet<u64> = acked.into_iter().collect();
        assert_eq!(delivered, acked, "{senders} senders, {op:?}: every acknowledged item, nothing else");
    }
}

#[test]
fn close_counts_acknowledged_items_still_in_the_write_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FaultyStorage::default());
    let (tx, rx) = open(dir.path(), &fs, Durability::Persistent, SyncPolicy::Never);
    for i in 0..30 {
        tx.send(i).unwrap();
    }
    // From here on every write fails: whatever is buffered stays there.
    fs.limit_space(Some(0));
    let mut acked = 30;
    while tx.send(acked).is_ok() {
        acked += 1;
    }
    drop(tx);
    let err = rx.close().expect_err("nothing buffered can be written");
    fs.limit_space(None);
    let after = reopen_and_drain(dir.path(), Durability::Persistent);
    assert_eq!(after, (0..after.len() as u64).collect::<Vec<_>>(), "what survived is a prefix, in order");
    assert!(err.unpersisted() > 0, "close counted nothing");
    assert_eq!(after.len() + err.unpersisted(), acked as usize, "close counted exactly what was lost");
}

#[test]
fn a_read_segment_that_cannot_be_deleted_is_not_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FaultyStorage::default());
    let (tx, rx) = open(dir.path(), &fs, Durability::Persistent, SyncPolicy::Never);
    for i in 0..150 {
        tx.send(i).unwrap();
    }
    fs.set_fault(Some(Fault { at: 0, errno: EIO, only: Some(Op::Remove), sticky: true }));
    let received: Vec<u64> = (0..144).map(|_| rx.recv().unwrap()).collect();
    assert_eq!(received, (0..144).collect::<Vec<_>>());
    drop(tx);
    rx.close().expect("a failed delete is not a failed close: the segment is recorded as read");
    let after = reopen_and_drain(dir.path(), Durability::Persistent);
    assert_eq!(after, (144..150).collect::<Vec<_>>(), "received items must not come back");
    // A later open with deletes working cleans the read segments up.
    let leftovers = std::fs::read_dir(dir.path().join("failures"))
        .unwrap()
        .filter(|entry| entry.as_ref().unwrap().file_name().to_string_lossy().ends_with(".seg"));
    assert_eq!(leftovers.count(), 0);
}

#[test]
fn a_partial_write_whose_truncate_fails_seals_the_segment_and_corrupts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FaultyStorage::default());
    let (tx, rx) = open(dir.path(), &fs, Durability::WriteAhead, SyncPolicy::Never);
    for i in 0..5 {
        tx.send(i).unwrap();
    }
    // The next record is cut short by a full disk, and cutting it off fails.
    fs.limit_space(Some(5));
    fs.set_fault(Some(Fault { at: 0, errno: EIO, only: Some(Op::SetLen), sticky: false }));
    let err = tx.send(5).unwrap_err();
    assert_eq!(err.io_error().and_then(|e| e.raw_os_error()), Some(ENOSPC), "the send reports the full disk");
    fs.limit_space(None);
    for i in 6..20 {
        tx.send(i).unwrap();
    }
    drop(tx);
    let live: Vec<u64> = rx.iter().collect();
    assert_eq!(live, (0..5).chain(6..20).collect::<Vec<_>>());
    assert_eq!(rx.stats().corrupt, 0);
    drop(rx);
    let dir_path = dir.path().to_owned();
    let fs = Arc::new(FaultyStorage::default());
    let (tx, rx) = open(&dir_path, &fs, Durability::WriteAhead, SyncPolicy::Never);
    drop(tx);
    assert_eq!(rx.iter().count(), 0, "everything was received before the clean close");
}

#[test]
fn a_transient_error_never_makes_a_segment_count_as_damaged() {
    for op in [Op::Open, Op::Read] {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(FaultyStorage::default());
        let (tx, rx) = open(dir.path(), &fs, Durability::Persistent, SyncPolicy::Never);
        for i in 0..100 {
            tx.send(i).unwrap();
        }
        tx.flush().unwrap();
        fs.set_fault(Some(Fault { at: 1, errno: EMFILE, only: Some(op), sticky: false }));
        let got: Vec<u64> = (0..100).map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
        assert_eq!(got, (0..100).collect::<Vec<_>>(), "{op:?}");
        let stats = rx.stats();
        assert_eq!(fs.injected().0, 1, "{op:?}: the fault was hit");
        assert_eq!((stats.corrupt, stats.lost, stats.set_aside_files), (0, 0, 0), "{op:?}");
    }
}

#[test]
fn short_writes_are_finished_and_never_tear_a_record() {
    for mode in [Durability::Persistent, Durability::WriteAhead] {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(FaultyStorage::default());
        fs.short_writes(true);
        let (tx, rx) = open(dir.path(), &fs, mode, SyncPolicy::Always);
        for i in 0..200 {
            tx.send(i).unwrap();
        }
        let first: Vec<u64> = (0..100).map(|_| rx.recv().unwrap()).collect();
        drop(tx);
        drop(rx);
        let rest = reopen_and_drain(dir.path(), mode);
        assert_eq!(first.into_iter().chain(rest).collect::<Vec<_>>(), (0..200).collect::<Vec<_>>(), "{mode:?}");
    }
}

#[test]
fn set_aside_files_are_bounded_oldest_first_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let channel = dir.path().join("failures");
    std::fs::create_dir_all(&channel).unwrap();
    for id in 1..=5u64 {
        std::fs::write(channel.join(format!("{id:020}.seg.corrupt")), vec![0u8; 1000]).unwrap();
    }
    let (tx, rx) = Builder::new("failures", dir.path())
        .durability(Durability::Persistent)
        .max_set_aside_bytes(2_500)
        .open::<u64>()
        .unwrap();
    let stats = tx.stats();
    assert_eq!((stats.set_aside_files, stats.set_aside_bytes), (2, 2_000));
    let mut left: Vec<String> =
        std::fs::read_dir(&channel).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.retain(|name| name.contains(".corrupt"));
    left.sort();
    assert_eq!(left, [format!("{:020}.seg.corrupt", 4), format!("{:020}.seg.corrupt", 5)], "the oldest went first");
    drop((tx, rx));
}

/// A `tracing` subscriber that keeps the messages of warnings.
#[derive(Default)]
struct Warnings(std::sync::Mutex<Vec<String>>);

impl tracing::Subscriber for Warnings {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={value:?} ", field.name()));
            }
        }
        let mut text = Text(String::new());
        event.record(&mut text);
        if let Ok(mut seen) = self.0.lock() {
            seen.push(text.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn open_warns_when_max_disk_bytes_exceeds_the_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let free = fs4::available_space(dir.path()).unwrap();
    let warnings = Arc::new(Warnings::default());
    let open = |max: u64| {
        tracing::subscriber::with_default(Arc::clone(&warnings), || {
            drop(Builder::new("roomy", dir.path()).max_disk_bytes(max).open::<u64>().unwrap());
        })
    };
    open(free / 2);
    assert!(warnings.0.lock().unwrap().iter().all(|w| !w.contains("free space")), "no warning when it fits");
    open(free.saturating_mul(4));
    let seen = warnings.0.lock().unwrap();
    let warning = seen.iter().find(|w| w.contains("larger than the free space")).expect("a warning");
    assert!(warning.contains(&format!("max_disk_bytes={}", free.saturating_mul(4))), "{warning}");
    assert!(warning.contains("free="), "both numbers: {warning}");
}

/// A commit whose segments can neither be deleted nor recorded as read
/// says so with a `CommitError`; nothing is lost, and the committed items
/// may come again after a restart.
#[test]
fn a_commit_that_cannot_be_recorded_is_an_error_that_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FaultyStorage::default());
    let (tx, rx) = open(dir.path(), &fs, Durability::WriteAhead, SyncPolicy::Never);
    for i in 0..200 {
        tx.send(i).unwrap();
    }
    drop(tx);
    let batch = rx.peek_batch(150, Duration::ZERO).unwrap();
    assert_eq!(&batch[..], (0..150).collect::<Vec<_>>());
    fs.set_fault(Some(Fault { at: 0, errno: EIO, only: Some(Op::Remove), sticky: true }));
    fs.limit_space(Some(0));
    let err = batch.commit().unwrap_err();
    assert!(err.to_string().contains("may come again"), "{err}");
    assert_eq!(rx.recv().unwrap(), 150, "committed here all the same");
    rx.crash();
    fs.set_fault(None);
    fs.limit_space(None);
    let got = reopen_and_drain(dir.path(), Durability::WriteAhead);
    assert_eq!(got.last(), Some(&199));
    let unique: BTreeSet<u64> = got.iter().copied().collect();
    assert!((150..200).all(|i| unique.contains(&i)), "uncommitted items lost: {got:?}");
}

/// Found by the model test under the `metrics` feature: the metrics
/// thread holds a channel for a moment each second, and a receiver that
/// crashed left the directory locked until that thread let go, so an open
/// right after failed with `Locked`. Each way of letting go of the last
/// handle must free the directory at once, whoever else holds the channel.
#[test]
fn the_last_handle_frees_the_directory_even_while_a_background_thread_holds_the_channel() {
    type End = fn(Sender<u64>, Receiver<u64>);
    let ends: [(&str, End); 4] = [
        ("close", |tx, rx| {
            drop(tx);
            rx.close().unwrap();
        }),
        ("drop", |tx, rx| {
            drop(tx);
            drop(rx);
        }),
        ("crash", |tx, rx| {
            drop(tx);
            rx.crash();
        }),
        ("crash, then the last sender", |tx, rx| {
            rx.crash();
            assert!(tx.send(9).unwrap_err().is_disconnected(), "a send after the receiver crashed");
            drop(tx);
        }),
    ];
    for (how, end) in ends {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(FaultyStorage::default());
        let (tx, rx) = open(dir.path(), &fs, Durability::WriteAhead, SyncPolicy::Always);
        for n in 0..5 {
            tx.send(n).unwrap();
        }
        // What the metrics thread does each round.
        let held = rx.weak_shared().upgrade().unwrap();
        end(tx, rx);
        let (tx, rx) = Builder::new("failures", dir.path())
            .durability(Durability::WriteAhead)
            .storage(Arc::clone(&fs) as Fs)
            .open::<u64>()
            .unwrap_or_else(|err| panic!("reopen after {how} while the channel is held: {err}"));
        drop(held);
        drop(tx);
        assert_eq!(rx.iter().collect::<Vec<_>>(), (0..5).collect::<Vec<_>>(), "after {how}");
    }
}
