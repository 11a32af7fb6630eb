//! Sharded throughput with 1, 2 and 4 shards, keyed by `item % 1024`.
//!
//! - `receivers`: 4 producers send 400,000 items of 64 bytes, one thread
//!   per shard receives; memory capacity 1,000 per shard, so a backlog
//!   spills. Shows what sharding costs or saves on the channel itself.
//! - `slow_sink`: 20,000 items through one drainer per shard into sinks
//!   that take 1 ms per batch of at most 100 items, a stand-in for a
//!   network round trip. Shows what parallel delivery gains.
//!
//! Run with `cargo bench --bench sharded`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sump::{Builder, SinkError};

const PRODUCERS: u64 = 4;
const ITEMS: u64 = 400_000;
const SLOW_ITEMS: u64 = 20_000;

type Item = [u64; 8];

fn open(dir: &std::path::Path, shards: usize) -> (sump::ShardedSender<Item>, sump::ShardedReceiver<Item>) {
    Builder::new("bench", dir)
        .memory_capacity(1_000)
        .sharded::<Item>(shards)
        .key(|item: &Item| item[0] % 1024)
        .open()
        .unwrap()
}

fn produce(tx: sump::ShardedSender<Item>, items: u64) -> Vec<thread::JoinHandle<()>> {
    (0..PRODUCERS)
        .map(|producer| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in (producer..items).step_by(PRODUCERS as usize) {
                    tx.send([i; 8]).unwrap();
                }
            })
        })
        .collect()
}

fn receivers(c: &mut Criterion) {
    let mut group = c.benchmark_group("sharded_receivers");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    for shards in [1, 2, 4] {
        group.bench_with_input(BenchmarkId::from_parameter(shards), &shards, |b, &shards| {
            let dir = tempfile::tempdir().unwrap();
            b.iter(|| {
                let (tx, rx) = open(dir.path(), shards);
                let producers = produce(tx, ITEMS);
                let consumers: Vec<_> =
                    rx.into_shards().into_iter().map(|shard| thread::spawn(move || shard.iter().count())).collect();
                producers.into_iter().for_each(|p| p.join().unwrap());
                let received: usize = consumers.into_iter().map(|c| c.join().unwrap()).sum();
                assert_eq!(received as u64, ITEMS);
            })
        });
    }
    group.finish();
}

fn slow_sink(c: &mut Criterion) {
    let mut group = c.benchmark_group("sharded_slow_sink");
    group.throughput(Throughput::Elements(SLOW_ITEMS));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    for shards in [1, 2, 4] {
        group.bench_with_input(BenchmarkId::from_parameter(shards), &shards, |b, &shards| {
            let dir = tempfile::tempdir().unwrap();
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let (tx, rx) = open(dir.path(), shards);
                    let delivered = Arc::new(AtomicU64::new(0));
                    let start = Instant::now();
                    let counted = Arc::clone(&delivered);
                    let handle = rx
                        .drain(move |_| {
                            let delivered = Arc::clone(&counted);
                            move |batch: &[Item]| -> Result<(), SinkError> {
                                thread::sleep(Duration::from_millis(1));
                                delivered.fetch_add(batch.len() as u64, Ordering::Relaxed);
                                Ok(())
                            }
                        })
                        .configure(|_, drainer| drainer.batch_size(100).linger(Duration::from_millis(1)))
                        .spawn();
                    produce(tx, SLOW_ITEMS).into_iter().for_each(|p| p.join().unwrap());
                    while delivered.load(Ordering::Relaxed) < SLOW_ITEMS {
                        thread::sleep(Duration::from_micros(200));
                    }
                    total += start.elapsed();
                    handle.shutdown(Duration::from_secs(5)).unwrap();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, receivers, slow_sink);
criterion_main!(benches);
