//! Zero-sized items work in memory, on disk and with hopper's byte-based
//! capacity (which divides by the item size).

use sump::Builder;

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Tick;

#[test]
fn unit_items_spill_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("unit", dir.path()).memory_capacity(3).segment_bytes(64).open::<()>().unwrap();
    for _ in 0..100 {
        tx.send(()).unwrap();
    }
    let stats = tx.stats();
    assert_eq!((stats.in_memory, stats.on_disk), (3, 97));
    assert!(stats.segments > 1, "8-byte records in 64-byte segments rotate");
    drop(tx);
    assert_eq!(rx.iter().count(), 100);
}

#[test]
fn unit_structs_work_through_the_hopper_entry_point() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = sump::channel_with_explicit_capacity::<Tick>("ticks", dir.path(), 0, 1 << 12, 4).unwrap();
    for _ in 0..10 {
        tx.send(Tick).unwrap();
    }
    assert_eq!(tx.stats().in_memory, 1, "a zero byte budget still holds one item");
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), (0..10).map(|_| Tick).collect::<Vec<_>>());
}

#[test]
fn default_channel_of_unit_items_stays_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = sump::channel::<()>("quiet", dir.path()).unwrap();
    for _ in 0..1_000 {
        tx.send(()).unwrap();
    }
    assert_eq!(tx.stats().spilled, 0);
    assert_eq!(rx.try_iter().count(), 1_000);
}
