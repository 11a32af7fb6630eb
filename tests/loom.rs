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
fn two_senders_at_the_memory_to_disk_switch_are_numbered_in_receive_order() {
    loom::model(|| {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open(dir.path(), 1);
        let other = tx.clone();
        // One takes memory's only place under the memory lock; the other
        // finds it full and spills under the channel lock, numbered there.
        let sender = thread::spawn(move || other.send(1).unwrap());
        tx.send(2).unwrap();
        sender.join().unwrap();
        let batch = rx.peek_batch(2, std::time::Duration::ZERO).unwrap();
        let mut items = batch.to_vec();
        let seqs = batch.seqs().to_vec();
        batch.commit().unwrap();
        assert!(seqs[0] < seqs[1], "numbers follow the order received: {seqs:?}");
        items.sort_unstable();
        assert_eq!(items, [1, 2]);
        assert_eq!(rx.stats().sent, 2);
    });
}

#[test]
fn a_parked_receive_is_woken_by_a_send_into_memory() {
    loom::model(|| {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open(dir.path(), 2);
        // Kept alive, so that only the send itself can wake the receive.
        let _keep = tx.clone();
        let sender = thread::spawn(move || tx.send(1).unwrap()); // memory, without the channel lock
        assert_eq!(rx.recv(), Ok(1));
        sender.join().unwrap();
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
fn a_receive_that_takes_every_kept_item_on_disk_at_once_keeps_order_and_reopens_memory() {
    loom::model(|| {
        let dir = tempfile::tempdir().unwrap();
        // Segments large enough to hold every frame: spilled items are kept
        // beside frames of one segment, and a receive close behind may take
        // them all while the sender is still spilling.
        // Two items kept at most.
        let (tx, rx) = Builder::new("loom", dir.path()).memory_capacity(2).open::<u32>().unwrap();
        tx.send(1).unwrap(); // memory
        tx.send(2).unwrap(); // memory
        tx.send(3).unwrap(); // disk, kept
        let late = tx.clone();
        // Disk, kept, and taken along with 3 if it is there by then; or
        // memory once the receive took 3. Which of them happened cannot be
        // seen from here (tests/spill.rs checks that the take happens):
        // this checks order and counts in every interleaving.
        let sender = thread::spawn(move || late.send(4).unwrap());
        let got: Vec<u32> = (0..4).map(|_| rx.recv().unwrap()).collect();
        sender.join().unwrap();
        assert_eq!(got, vec![1, 2, 3, 4]);
        let stats = rx.stats();
        assert_eq!((stats.on_disk, stats.in_memory, stats.sent), (0, 0, 4));
        tx.send(5).unwrap();
        assert_eq!(rx.stats().spilled, stats.spilled, "back on the memory path");
        assert_eq!(rx.try_recv(), Ok(5));
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
/// with the numbers it had; the rest follows. Bounded to three
/// preemptions, like the largest models: unbounded, it takes too long for
/// CI.
#[test]
fn a_peeked_batch_given_back_while_a_sender_spills_keeps_order_and_numbers() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
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

/// The async side: wakers registered under the channel lock, as part of
/// the decision to wait, so no wakeup falls between the two.
#[cfg(feature = "async")]
mod wakers {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    use loom::thread;
    use sump::{Builder, WhenFull};

    #[test]
    fn a_registered_waker_is_woken_by_a_send_into_memory() {
        loom::model(|| {
            let dir = tempfile::tempdir().unwrap();
            let (tx, rx) = super::open(dir.path(), 2);
            // Kept alive, so that only the send itself can wake the receive.
            let _keep = tx.clone();
            let sender = thread::spawn(move || tx.send(1).unwrap()); // memory, without the channel lock
            assert_eq!(loom::future::block_on(rx.recv_async()), Ok(1));
            sender.join().unwrap();
        });
    }

    /// A waker that only counts its clones: once every future holding one
    /// is gone, none is left registered.
    struct Counted;

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {}
    }

    /// Bounded to three preemptions: with the memory lock beside the
    /// channel lock, the full model takes too long for CI.
    #[test]
    fn a_waker_registered_while_an_item_arrives_is_woken() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let dir = tempfile::tempdir().unwrap();
            let (tx, rx) = super::open(dir.path(), 1);
            let sender = thread::spawn(move || {
                tx.send(1).unwrap();
                tx.send(2).unwrap(); // memory or disk
            });
            assert_eq!(loom::future::block_on(rx.recv_async()), Ok(1));
            assert_eq!(loom::future::block_on(rx.recv_async()), Ok(2));
            sender.join().unwrap();
            // The last sender left: a waiting receive is woken to see it.
            assert_eq!(loom::future::block_on(rx.recv_async()), Err(sump::RecvError));
        });
    }

    #[test]
    fn a_cancelled_receive_passes_its_wakeup_on_and_leaves_no_waker() {
        loom::model(|| {
            let dir = tempfile::tempdir().unwrap();
            let (tx, rx) = super::open(dir.path(), 1);
            let rx = Arc::new(rx);
            let counted = Arc::new(Counted);
            let waker = Waker::from(Arc::clone(&counted));
            let mut first = Box::pin(rx.recv_async());
            assert!(first.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
            let other = Arc::clone(&rx);
            let waiter = thread::spawn(move || loom::future::block_on(other.recv_async()));
            tx.send(7).unwrap(); // may wake `first`, registered before the waiter
            drop(first); // cancelled: the wakeup, if it got it, goes to the waiter
            assert_eq!(waiter.join().unwrap(), Ok(7));
            drop(waker);
            assert_eq!(Arc::strong_count(&counted), 1, "a dropped future left its waker registered");
        });
    }

    #[test]
    fn an_async_send_waiting_for_disk_space_is_woken_when_the_receiver_frees_it() {
        loom::model(|| {
            let dir = tempfile::tempdir().unwrap();
            // No memory, and room on disk for exactly one record.
            let (tx, rx) = Builder::new("loom", dir.path())
                .memory_capacity(0)
                .segment_bytes(16 + 17)
                .max_disk_bytes(16 + 17)
                .when_full(WhenFull::Block)
                .open::<u32>()
                .unwrap();
            tx.send(1).unwrap();
            let sender = thread::spawn(move || loom::future::block_on(tx.send_async(2)).unwrap());
            assert_eq!(rx.recv(), Ok(1));
            assert_eq!(rx.recv(), Ok(2));
            sender.join().unwrap();
        });
    }

    #[test]
    fn a_cancelled_send_leaves_nothing_in_the_channel_and_no_waker() {
        loom::model(|| {
            let dir = tempfile::tempdir().unwrap();
            let (tx, rx) = Builder::new("loom", dir.path())
                .memory_capacity(0)
                .segment_bytes(16 + 17)
                .max_disk_bytes(16 + 17)
                .open::<u32>()
                .unwrap();
            tx.send(1).unwrap();
            let counted = Arc::new(Counted);
            let waker = Waker::from(Arc::clone(&counted));
            let receiver = thread::spawn(move || rx.recv().map(|item| (item, rx)));
            let sent = {
                let mut send = pin!(tx.send_async(2));
                // Full, or room already freed by the receiver: either way
                // one poll decides, and dropping it then changes nothing.
                matches!(send.as_mut().poll(&mut Context::from_waker(&waker)), Poll::Ready(Ok(())))
            };
            let (first, rx) = receiver.join().unwrap().unwrap();
            assert_eq!(first, 1);
            drop(tx);
            let rest: Vec<u32> = rx.iter().collect();
            assert_eq!(rest, if sent { vec![2] } else { vec![] });
            drop(waker);
            assert_eq!(Arc::strong_count(&counted), 1, "a dropped future left its waker registered");
        });
    }
}
