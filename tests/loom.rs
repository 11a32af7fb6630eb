//! loom models of the channel's handoffs: every interleaving of two or
//! three threads on a channel with tiny limits. Run with
//! `RUSTFLAGS="--cfg loom" cargo test --release --test loom` (`.ci/run`
//! does). Each model is small on purpose: two threads, a few items.
#![cfg(loom)]

use loom::thread;
use sump::{Builder, Durability, SyncPolicy, TryRecvError, WhenFull};

fn open(dir: &std::path::Path, capacity: usize) -> (sump::Sender<u32>, sump::Receiver<u32>) {
    // A segment holds exactly one record of a small u32 (8 bytes of length
    // and CRC, 1 of payload, 8 of sequence number): every spill rotates.
    Builder::new("loom", dir).memory_capacity(capacity).segment_bytes(16 + 17).open().unwrap()
}

/// A write-ahead channel whose sends wait for a group commit.
fn open_synced(dir: &std::path::Path) -> (sump::Sender<u32>, sump::Receiver<u32>) {
    Builder::new("loom", dir).durability(Durability::WriteAhead).sync(SyncPolicy::Always).open().unwrap()
}

#[test]
fn a_send_racing_a_recv_at_the_memory_to_disk_switch_keeps_order() {
    loom::model(|| {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open(dir.path(), 1);
        let sender = thread::spawn(move || {
            tx.send(1).unwrap(); // memory
            tx.send(2).unwrap(); // memory or disk, depending on the receiver
        });
        let first = rx.recv().unwrap();
        let second = rx.recv().unwrap();
        assert_eq!((first, second), (1, 2));
        sender.join().unwrap();
        assert_eq!(rx.recv(), Err(sump::RecvError));
    });
}

#[test]
fn the_channel_goes_back_to_memory_once_the_disk_backlog_is_drained() {
    loom::model(|| {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open(dir.path(), 1);
        tx.send(1).unwrap(); // memory
        tx.send(2).unwrap(); // disk
        let late = tx.clone();
        let sender = thread::spawn(move || late.send(3).unwrap()); // disk, or memory after the drain
        let got: Vec<u32> = (0..3).map(|_| rx.recv().unwrap()).collect();
        sender.join().unwrap();
        assert_eq!(got, vec![1, 2, 3]);
        assert_eq!(rx.stats().on_disk, 0);
        drop(tx);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    });
}

#[test]
fn disconnection_wakes_a_waiting_receiver_after_the_last_item() {
    loom::model(|| {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open(dir.path(), 0);
        let sender = thread::spawn(move || {
            tx.send(7).unwrap(); // through disk
            drop(tx);
        });
        assert_eq!(rx.recv(), Ok(7));
        assert_eq!(rx.recv(), Err(sump::RecvError));
        sender.join().unwrap();
    });
}

#[test]
fn a_sender_blocked_on_a_full_channel_gets_its_item_back_when_the_receiver_leaves() {
    loom::model(|| {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = Builder::new("loom", dir.path())
            .memory_capacity(0)
            .segment_bytes(16 + 17)
            .max_segments(1)
            .when_full(WhenFull::Block)
            .open::<u32>()
            .unwrap();
        tx.send(1).unwrap(); // fills the only segment
        let sender = thread::spawn(move || tx.send(2).map_err(|e| (e.is_disconnected(), e.into_inner())));
        drop(rx);
        assert_eq!(sender.join().unwrap(), Err((true, 2)));
    });
}

#[test]
fn concurrent_senders_appending_and_rotating_lose_nothing() {
    loom::model(|| {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open(dir.path(), 0);
        let other = tx.clone();
        let sender = thread::spawn(move || other.send(10).unwrap());
        tx.send(20).unwrap();
        sender.join().unwrap();
        drop(tx);
        let mut got: Vec<u32> = rx.iter().collect();
        got.sort_unstable();
        assert_eq!(got, vec![10, 20]);
        // Changed when segments became reused across spill episodes: the
        // drained channel keeps at most its active segment.
        assert!(rx.stats().segments <= 1);
    });
}

#[test]
fn group_commit_covers_every_sender_that_returned() {
    loom::model(|| {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open_synced(dir.path());
        let other = tx.clone();
        let sender = thread::spawn(move || other.send(1).unwrap());
        tx.send(2).unwrap();
        sender.join().unwrap();
        drop(tx);
        let mut got: Vec<u32> = rx.iter().collect();
        got.sort_unstable();
        assert_eq!(got, vec![1, 2]);
    });
}

/// Three senders: one leads a sync, and the other two may arrive during it
/// and wait for the next round, which one of them must be woken to lead.
#[test]
fn group_commit_wakes_a_leader_for_senders_a_sync_did_not_cover() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(2);
    model.check(|| {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open_synced(dir.path());
        let senders: Vec<_> = (1..3)
            .map(|item| {
                let tx = tx.clone();
                thread::spawn(move || tx.send(item).unwrap())
            })
            .collect();
        tx.send(3).unwrap();
        senders.into_iter().for_each(|sender| sender.join().unwrap());
        drop(tx);
        let mut got: Vec<u32> = rx.iter().collect();
        got.sort_unstable();
        assert_eq!(got, vec![1, 2, 3]);
    });
}

/// Blocks forever under loom (a timeout would need a clock loom does not
/// model).
const FOREVER: std::time::Duration = std::time::Duration::MAX;

/// A batch given back while a sender spills comes back first, in order,
/// with the numbers it had; the rest follows.
#[test]
fn a_peeked_batch_given_back_while_a_sender_spills_keeps_order_and_numbers() {
    loom::model(|| {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open(dir.path(), 1);
        let sender = thread::spawn(move || {
            tx.send(1).unwrap(); // memory
            tx.send(2).unwrap(); // memory or disk, depending on the receiver
        });
        let batch = rx.peek_batch(2, FOREVER).unwrap();
        assert_eq!((batch[0], batch.seqs()[0]), (1, 0));
        drop(batch);
        let mut got = Vec::new();
        while got.len() < 2 {
            let batch = rx.peek_batch(2, FOREVER).unwrap();
            got.extend(batch.iter().copied().zip(batch.seqs().iter().copied()));
            batch.commit().unwrap();
        }
        assert_eq!(got, vec![(1, 0), (2, 1)]);
        sender.join().unwrap();
        assert!(matches!(rx.peek_batch(1, FOREVER), Err(sump::RecvTimeoutError::Disconnected)));
    });
}

/// A sender blocked on a full disk whose space is held by an uncommitted
/// batch is woken by the commit, and nothing is lost.
#[test]
fn a_commit_frees_the_space_a_blocked_sender_waits_for() {
    loom::model(|| {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = Builder::new("loom", dir.path())
            .durability(Durability::WriteAhead)
            .segment_bytes(16 + 17)
            .max_segments(2)
            .when_full(WhenFull::Block)
            .open::<u32>()
            .unwrap();
        tx.send(1).unwrap();
        tx.send(2).unwrap(); // both segments are full
        let batch = rx.peek_batch(2, FOREVER).unwrap();
        assert_eq!(&batch[..], [1, 2]);
        let sender = thread::spawn(move || tx.send(3).unwrap()); // waits for the commit
        batch.commit().unwrap();
        assert_eq!(rx.recv(), Ok(3));
        sender.join().unwrap();
        assert_eq!(rx.recv(), Err(sump::RecvError));
    });
}
