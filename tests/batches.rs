//! Receiving in batches (`recv_many`, `try_recv_many`) and the sizes of a
//! channel (`len`, `is_empty`, `capacity`).

use std::time::{Duration, Instant};

use sump::{Builder, RecvError, TryRecvError};

#[test]
fn recv_many_waits_for_the_first_item_then_takes_what_is_ready_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("batches", dir.path()).memory_capacity(3).open::<u32>().unwrap();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        for i in 0..20 {
            tx.send(i).unwrap(); // three in memory, the rest on disk
        }
        tx
    });
    let started = Instant::now();
    let mut buf = vec![99];
    let first = rx.recv_many(&mut buf, 1).unwrap();
    assert_eq!(first, 1);
    assert!(started.elapsed() >= Duration::from_millis(90), "it waited for the first item");
    let tx = sender.join().unwrap();
    while buf.len() < 21 {
        let got = rx.recv_many(&mut buf, 7).unwrap();
        assert!((1..=7).contains(&got), "{got}");
    }
    assert_eq!(buf[0], 99, "recv_many appends");
    assert_eq!(&buf[1..], (0..20).collect::<Vec<_>>().as_slice(), "across memory and disk, in order");
    assert_eq!(rx.recv_many(&mut buf, 0), Ok(0));
    drop(tx);
    assert_eq!(rx.recv_many(&mut buf, 5), Err(RecvError));
}

#[test]
fn try_recv_many_never_waits_and_tells_empty_from_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("batches", dir.path()).memory_capacity(2).open::<u32>().unwrap();
    let mut buf = Vec::new();
    assert_eq!(rx.try_recv_many(&mut buf, 4), Err(TryRecvError::Empty));
    for i in 0..10 {
        tx.send(i).unwrap();
    }
    assert_eq!(rx.try_recv_many(&mut buf, 4), Ok(4));
    assert_eq!(rx.try_recv_many(&mut buf, 100), Ok(6));
    assert_eq!(buf, (0..10).collect::<Vec<_>>());
    drop(tx);
    assert_eq!(rx.try_recv_many(&mut buf, 4), Err(TryRecvError::Disconnected));
}

#[test]
fn len_counts_memory_and_disk_on_both_handles() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("sizes", dir.path()).memory_capacity(4).open::<u64>().unwrap();
    assert!(tx.is_empty() && rx.is_empty());
    for i in 0..100 {
        tx.send(i).unwrap();
    }
    assert_eq!((tx.len(), rx.len()), (100, 100));
    let mut buf = Vec::new();
    rx.recv_many(&mut buf, 30).unwrap();
    assert_eq!(tx.len(), 100 - buf.len());
    assert_eq!((tx.capacity(), rx.capacity()), (None, None), "bounded in bytes, not items");
}
