//! The behaviour users of `std::sync::mpsc` rely on, checked on `sump`:
//! disconnection in both directions, timeouts, iterators, and errors that
//! give the item back. Written for this crate; each test says which std
//! guarantee it checks.

use std::thread;
use std::time::{Duration, Instant};

use sump::{RecvError, RecvTimeoutError, SendTimeoutError, TryRecvError, TrySendError};

fn open<T>(dir: &tempfile::TempDir) -> (sump::Sender<T>, sump::Receiver<T>)
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    sump::Builder::new("mpsc", dir.path()).memory_capacity(4).open().unwrap()
}

/// A channel already at its limits: one item in memory, one segment of
/// 40 bytes holding one more (a 16-byte header and a 17-byte record; 32
/// before segment format 2 added the 8-byte sequence number).
fn full(dir: &tempfile::TempDir) -> (sump::Sender<u8>, sump::Receiver<u8>) {
    let (tx, rx) =
        sump::Builder::new("full", dir.path()).memory_capacity(1).segment_bytes(40).max_disk_bytes(40).open().unwrap();
    tx.send(1).unwrap();
    tx.send(2).unwrap();
    (tx, rx)
}

#[test]
fn send_then_recv_returns_the_item() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open::<i32>(&dir);
    tx.send(1).unwrap();
    assert_eq!(rx.recv(), Ok(1));
}

#[test]
fn recv_blocks_until_another_thread_sends() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open::<i32>(&dir);
    let sender = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        tx.send(42).unwrap();
    });
    assert_eq!(rx.recv(), Ok(42));
    sender.join().unwrap();
}

#[test]
fn recv_reports_disconnection_after_the_last_sender_drops() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open::<i32>(&dir);
    let tx2 = tx.clone();
    drop(tx);
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "a clone still lives");
    drop(tx2);
    assert_eq!(rx.recv(), Err(RecvError));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(rx.recv_timeout(Duration::from_millis(1)), Err(RecvTimeoutError::Disconnected));
}

#[test]
fn a_blocked_recv_wakes_when_the_last_sender_drops() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open::<i32>(&dir);
    let dropper = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        drop(tx);
    });
    assert_eq!(rx.recv(), Err(RecvError));
    dropper.join().unwrap();
}

#[test]
fn items_in_memory_and_on_disk_are_delivered_before_disconnection() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open::<i32>(&dir);
    for i in 0..20 {
        tx.send(i).unwrap();
    }
    assert!(tx.stats().on_disk > 0, "capacity 4 must spill some of 20 items");
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), (0..20).collect::<Vec<_>>());
    assert_eq!(rx.recv(), Err(RecvError));
}

#[test]
fn send_fails_and_gives_the_item_back_after_the_receiver_drops() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open::<String>(&dir);
    drop(rx);
    let err = tx.send("kept".to_string()).unwrap_err();
    assert!(err.is_disconnected());
    assert!(err.io_error().is_none());
    assert_eq!(err.to_string(), "sending on a disconnected channel");
    assert_eq!(err.into_inner(), "kept");
    match tx.try_send("again".to_string()) {
        Err(TrySendError::Disconnected(item)) => assert_eq!(item, "again"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    match tx.send_timeout("late".to_string(), Duration::from_millis(5)) {
        Err(SendTimeoutError::Disconnected(item)) => assert_eq!(item, "late"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[test]
fn a_sender_blocked_on_a_full_channel_wakes_when_the_receiver_drops() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = full(&dir);
    let blocked = thread::spawn(move || tx.send(3).map_err(|e| (e.is_disconnected(), e.into_inner())));
    thread::sleep(Duration::from_millis(50));
    assert!(!blocked.is_finished(), "send must block while memory and disk are full");
    drop(rx);
    assert_eq!(blocked.join().unwrap(), Err((true, 3)));
}

#[test]
fn recv_timeout_times_out_on_an_empty_channel() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open::<i32>(&dir);
    let start = Instant::now();
    assert_eq!(rx.recv_timeout(Duration::from_millis(30)), Err(RecvTimeoutError::Timeout));
    assert!(start.elapsed() >= Duration::from_millis(30));
    tx.send(5).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_millis(30)), Ok(5));
}

#[test]
fn recv_timeout_with_a_huge_timeout_waits_like_recv() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open::<i32>(&dir);
    let sender = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        tx.send(6).unwrap();
    });
    assert_eq!(rx.recv_timeout(Duration::MAX), Ok(6));
    sender.join().unwrap();
}

#[test]
fn send_timeout_times_out_on_a_full_channel_and_gives_the_item_back() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = full(&dir);
    let start = Instant::now();
    match tx.send_timeout(3, Duration::from_millis(30)) {
        Err(err @ SendTimeoutError::Timeout(_)) => {
            assert!(err.is_timeout());
            assert_eq!(err.into_inner(), 3);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(30));
    match tx.try_send(4) {
        Err(err @ TrySendError::Full(_)) => {
            assert!(err.is_full());
            assert_eq!(err.into_inner(), 4);
        }
        other => panic!("expected Full, got {other:?}"),
    }
}

#[test]
fn a_blocked_send_completes_once_the_receiver_frees_space() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = full(&dir);
    let sender = thread::spawn(move || tx.send(3));
    thread::sleep(Duration::from_millis(30));
    assert_eq!(rx.recv(), Ok(1));
    assert_eq!(rx.recv(), Ok(2));
    sender.join().unwrap().unwrap();
    assert_eq!(rx.recv(), Ok(3));
    assert_eq!(rx.recv(), Err(RecvError));
}

#[test]
fn try_iter_stops_at_the_first_empty_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open::<i32>(&dir);
    for i in 0..10 {
        tx.send(i).unwrap();
    }
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    assert_eq!(rx.try_iter().next(), None);
    tx.send(10).unwrap();
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![10]);
}

#[test]
fn iter_and_into_iter_end_at_disconnection() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open::<i32>(&dir);
    let sender = thread::spawn(move || {
        for i in 0..50 {
            tx.send(i).unwrap();
        }
    });
    let mut seen = Vec::new();
    for item in &rx {
        seen.push(item);
    }
    sender.join().unwrap();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());

    let (tx, rx) = sump::Builder::new("again", dir.path()).memory_capacity(2).open::<i32>().unwrap();
    for i in 0..5 {
        tx.send(i).unwrap();
    }
    drop(tx);
    let owned: Vec<i32> = rx.into_iter().collect();
    assert_eq!(owned, vec![0, 1, 2, 3, 4]);
}

#[test]
fn senders_can_be_shared_by_reference_across_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open::<u32>(&dir);
    thread::scope(|scope| {
        for t in 0..4 {
            let tx = &tx;
            scope.spawn(move || {
                for i in 0..100 {
                    tx.send(t * 1000 + i).unwrap();
                }
            });
        }
    });
    drop(tx);
    let mut all: Vec<u32> = rx.iter().collect();
    all.sort_unstable();
    let mut expected: Vec<u32> = (0..4).flat_map(|t| (0..100).map(move |i| t * 1000 + i)).collect();
    expected.sort_unstable();
    assert_eq!(all, expected);
}

#[test]
fn handles_have_the_std_auto_traits() {
    fn send_sync<X: Send + Sync>() {}
    fn send<X: Send>() {}
    send_sync::<sump::Sender<String>>();
    send_sync::<sump::Receiver<String>>();
    send::<sump::Peeked<'static, String>>();
}

#[test]
fn a_receiver_shared_by_threads_hands_each_item_to_one_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = sump::Builder::new("shared", dir.path()).memory_capacity(64).open::<u32>().unwrap();
    let rx = std::sync::Arc::new(rx);
    let receivers: Vec<_> = (0..3)
        .map(|_| {
            let rx = std::sync::Arc::clone(&rx);
            std::thread::spawn(move || rx.iter().collect::<Vec<u32>>())
        })
        .collect();
    for i in 0..30_000 {
        tx.send(i).unwrap(); // memory and disk
    }
    drop(tx);
    let mut all = Vec::new();
    for receiver in receivers {
        let mine = receiver.join().unwrap();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "each receiver sees send order");
        all.extend(mine);
    }
    all.sort_unstable();
    assert_eq!(all, (0..30_000).collect::<Vec<_>>());
}

#[test]
fn same_channel_tells_handles_of_one_channel_from_another() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = sump::channel::<u8>("a", dir.path()).unwrap();
    let (other_tx, other_rx) = sump::channel::<u8>("b", dir.path()).unwrap();
    assert!(tx.same_channel(&tx.clone()) && tx.same_channel(&rx) && rx.same_channel(&tx) && rx.same_channel(&rx));
    assert!(!tx.same_channel(&other_tx) && !rx.same_channel(&other_rx) && !other_rx.same_channel(&tx));
}

#[test]
fn debug_shows_the_counters_on_both_handles() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = sump::Builder::new("debug", dir.path()).memory_capacity(2).open::<u8>().unwrap();
    for i in 0..5 {
        tx.send(i).unwrap();
    }
    rx.recv().unwrap();
    let shown = format!("{tx:?}");
    assert!(shown.starts_with("Sender { in_memory: 1, on_disk: 3, "), "{shown}");
    assert!(shown.contains("sent: 5, received: 1, spilled: 3, dropped: 0"), "{shown}");
    assert!(format!("{rx:?}").starts_with("Receiver { in_memory: 1, on_disk: 3, "));
}

#[test]
fn errors_display_and_debug_without_requiring_debug_on_the_item() {
    struct Opaque;
    assert_eq!(format!("{:?}", TrySendError::Full(Opaque)), "Full(..)");
    assert_eq!(format!("{:?}", SendTimeoutError::Disconnected(Opaque)), "Disconnected(..)");
    assert_eq!(format!("{}", RecvError), "receiving on an empty and disconnected channel");
    assert_eq!(TryRecvError::Empty.to_string(), "receiving on an empty channel");
    assert_eq!(RecvTimeoutError::Timeout.to_string(), "timed out waiting on an empty channel");
    let boxed: Box<dyn std::error::Error> = Box::new(SendTimeoutError::Timeout(1u8));
    assert_eq!(boxed.to_string(), "timed out waiting on a full channel");
}

#[test]
fn dropping_the_receiver_drops_the_items_it_held() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Counted(u32);
    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = sump::Builder::new("drops", dir.path()).memory_capacity(8).open::<Counted>().unwrap();
    for i in 0..3 {
        tx.send(Counted(i)).unwrap();
    }
    assert_eq!(DROPS.load(Ordering::SeqCst), 0);
    drop(rx);
    assert_eq!(DROPS.load(Ordering::SeqCst), 3, "the receiver's items are dropped with it, senders alive or not");
    drop(tx);
}

/// A send after the receiver left fails as disconnected before anything
/// is encoded, even for a type the disk path would refuse (serde_json's
/// `Value` cannot be read back by bincode), and hands the item back.
#[test]
fn a_send_after_the_receiver_left_is_disconnected_even_for_a_type_that_cannot_spill() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = sump::channel::<serde_json::Value>("gone", dir.path()).unwrap();
    tx.send(serde_json::json!({ "before": 1 })).unwrap();
    drop(rx);
    let err = tx.send(serde_json::json!({ "after": 2 })).unwrap_err();
    assert!(err.is_disconnected(), "expected disconnected, got {err:?}");
    assert!(err.io_error().is_none());
    assert_eq!(err.into_inner(), serde_json::json!({ "after": 2 }));
    let err = tx.try_send(serde_json::json!(3)).unwrap_err();
    assert!(err.is_disconnected(), "expected disconnected, got {err:?}");
}
