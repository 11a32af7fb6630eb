//! Tiered storage: a backlog ten times the local bound spilled through a
//! directory store and drained, beside the same workload kept on the
//! local disk.
//!
//! - `offload`: 100,000 items of 1 KiB (about 104 MB) sent while the
//!   receiver is idle, into a channel whose local disk may hold 10 MiB
//!   (`offload_after_bytes` 5 MiB, 1 MiB segments); sealed segments go to
//!   a `DirStore` on the same machine, then everything is drained in
//!   order.
//! - `local`: the same with no store and no local bound.
//!
//! Each is measured from the first send to the last receive. Before the
//! criterion runs, one run of each prints items/s, bytes/s and the peak
//! local disk use (`Stats::disk_bytes`, sampled every 1,000 sends).
//!
//! Run with `cargo bench --bench tiered`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sump::{Builder, DirStore, Durability};

const ITEMS: u64 = 100_000;
const PAYLOAD: usize = 1_024;
const LOCAL_BOUND: u64 = 10 << 20;

/// Sends and drains; returns the time and the peak local disk use.
fn run(offload: bool) -> (Duration, u64) {
    let dir = tempfile::tempdir().unwrap();
    let builder = Builder::new("tiered", dir.path().join("local"))
        .durability(Durability::Persistent)
        .memory_capacity(1_000)
        .segment_bytes(1 << 20);
    let builder = if offload {
        builder
            .max_disk_bytes(LOCAL_BOUND)
            .offload_after_bytes(LOCAL_BOUND / 2)
            .remote(DirStore::create(dir.path().join("remote")).unwrap())
    } else {
        builder.max_disk_bytes(1 << 30)
    };
    let (tx, rx) = builder.open::<Vec<u8>>().unwrap();
    let payload = vec![7u8; PAYLOAD];
    let start = Instant::now();
    let mut peak = 0;
    for n in 0..ITEMS {
        tx.send(payload.clone()).unwrap();
        if n % 1_000 == 0 {
            peak = peak.max(tx.stats().disk_bytes);
        }
    }
    drop(tx);
    let mut received = 0;
    for item in &rx {
        assert_eq!(item.len(), PAYLOAD);
        received += 1;
    }
    let elapsed = start.elapsed();
    assert_eq!(received, ITEMS);
    if offload {
        let stats = rx.stats();
        assert!(stats.uploads > 0 && stats.fetches > 0, "{stats:?}");
    }
    (elapsed, peak)
}

fn report() {
    let bytes = ITEMS * PAYLOAD as u64;
    for (name, offload) in [("local", false), ("offload", true)] {
        let (elapsed, peak) = run(offload);
        let secs = elapsed.as_secs_f64();
        eprintln!(
            "{name}: {:.0} items/s, {:.1} MB/s, peak local disk {:.1} MiB ({} MiB sent)",
            ITEMS as f64 / secs,
            bytes as f64 / secs / 1e6,
            peak as f64 / (1 << 20) as f64,
            bytes >> 20
        );
    }
}

fn tiered(c: &mut Criterion) {
    report();
    let mut group = c.benchmark_group("tiered");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Bytes(ITEMS * PAYLOAD as u64));
    group.bench_function("local", |b| b.iter_custom(|iters| (0..iters).map(|_| run(false).0).sum()));
    group.bench_function("offload", |b| b.iter_custom(|iters| (0..iters).map(|_| run(true).0).sum()));
    group.finish();
}

criterion_group!(benches, tiered);
criterion_main!(benches);
