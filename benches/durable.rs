//! W4: write-ahead with fsync on every send. The cost of durability, and
//! what group commit recovers of it when many senders share each sync.
//!
//! - `always/1` and `always/32`: `WriteAhead` + `SyncPolicy::Always`, 1 and
//!   32 producers, 2,000 items of 64 bytes each. Group commit should give
//!   32 producers at least 16x the items per second of 1.
//! - `always_no_wait/32` and `always_wait_100us/32`: the same with the
//!   gathering wait (`Builder::group_commit_wait`, default 1 ms, never
//!   longer than the last sync took) off, and capped at 100 µs.
//! - `never/32` and `overflow/32`: the same with no fsync, and with disk as
//!   scratch only, for scale.
//!
//! Run with `cargo bench --bench durable`.

use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sump::{Builder, Durability, SyncPolicy};

const PER_PRODUCER: u64 = 2_000;

fn run(producers: u64, durability: Durability, sync: SyncPolicy, wait: Option<Duration>) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let builder = Builder::new("w4", dir.path());
    let builder = match wait {
        Some(wait) => builder.group_commit_wait(wait),
        None => builder,
    };
    let (tx, rx) = builder.durability(durability).sync(sync).memory_capacity(1_000).open::<[u64; 8]>().unwrap();
    let start = Instant::now();
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || (0..PER_PRODUCER).for_each(|i| tx.send([p * PER_PRODUCER + i; 8]).unwrap()))
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    let elapsed = start.elapsed();
    let stats = tx.stats();
    if stats.group_commits > 0 {
        // Once per configuration: how much of the waiting each sync covered.
        static SEEN: std::sync::Mutex<Vec<(u64, Option<Duration>)>> = std::sync::Mutex::new(Vec::new());
        let mut seen = SEEN.lock().unwrap();
        if !seen.contains(&(producers, wait)) {
            seen.push((producers, wait));
            eprintln!(
                "{producers} producers, wait {wait:?}: {:.1} records per sync",
                stats.spilled as f64 / stats.group_commits as f64
            );
        }
    }
    drop(tx);
    assert_eq!(rx.iter().count() as u64, producers * PER_PRODUCER);
    elapsed
}

fn w4_durable(c: &mut Criterion) {
    let mut group = c.benchmark_group("w4_durable");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    let us = Duration::from_micros;
    for (name, producers, durability, sync, wait) in [
        ("always", 1, Durability::WriteAhead, SyncPolicy::Always, None),
        ("always", 32, Durability::WriteAhead, SyncPolicy::Always, None),
        ("always_no_wait", 32, Durability::WriteAhead, SyncPolicy::Always, Some(Duration::ZERO)),
        ("always_wait_100us", 32, Durability::WriteAhead, SyncPolicy::Always, Some(us(100))),
        ("never", 32, Durability::WriteAhead, SyncPolicy::Never, None),
        ("overflow", 32, Durability::Overflow, SyncPolicy::Never, None),
    ] {
        group.throughput(Throughput::Elements(producers * PER_PRODUCER));
        group.bench_with_input(BenchmarkId::new(name, producers), &producers, |b, &producers| {
            b.iter_custom(|iterations| (0..iterations).map(|_| run(producers, durability, sync, wait)).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, w4_durable);
criterion_main!(benches);
