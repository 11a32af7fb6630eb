//! Many producers at once, through memory and disk: every item exactly
//! once, each producer's order kept.

use std::thread;

use sump::Builder;

fn run(producers: u64, per_producer: u64, capacity: usize, segment_bytes: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("stress", dir.path())
        .memory_capacity(capacity)
        .segment_bytes(segment_bytes)
        .open::<(u64, u64, String)>()
        .unwrap();
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..per_producer {
                    tx.send((p, i, format!("payload {p}/{i}"))).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let mut next = vec![0u64; producers as usize];
    let mut total = 0;
    for (p, i, payload) in &rx {
        assert_eq!(i, next[p as usize], "producer {p}: expected {}, got {i}", next[p as usize]);
        assert_eq!(payload, format!("payload {p}/{i}"));
        next[p as usize] += 1;
        total += 1;
    }
    for handle in handles {
        handle.join().unwrap();
    }
    assert_eq!(total, producers * per_producer);
    assert!(next.iter().all(|&n| n == per_producer));
    let stats = rx.stats();
    assert_eq!(stats.received, total);
    assert_eq!(stats.sent, total);
    assert_eq!((stats.in_memory, stats.on_disk), (0, 0));
    // Changed when segments became reused across spill episodes: the
    // drained channel keeps at most its active segment.
    assert!(stats.segments <= 1, "{stats:?}");
}

#[test]
fn four_producers_through_a_tiny_memory_tier_deliver_every_item_once_in_order() {
    run(4, 20_000, 16, 4_096);
}

#[test]
fn eight_producers_with_no_memory_tier_deliver_every_item_once_in_order() {
    run(8, 5_000, 0, 64 * 1024);
}

#[test]
fn six_producers_with_a_roomy_memory_tier_deliver_every_item_once_in_order() {
    run(6, 20_000, 4_096, 1 << 20);
}
