//! Sharded throughput with 1, 2 and 4 shards, keyed by `item % 1024`.
//!
//! - `receivers`: 4 producers send 400,000 items of 64 bytes, one thread
//!   per shard receives; memory capacity 1,000 per shard, so a backlog
//!   spills. Shows what sharding costs or saves on the channel itself.
//! - `slow_sink`: 20,000 items through one drainer per shard into sinks
//!   that take 1 ms per batch of at most 100 items, a stand-in for a
//!   network round trip. Shows what parallel delivery gains.
//! - `scaling`: the same slow sinks, fed 40,000 items at 200,000 a
//!   second (more than one shard delivers, less than four): 1 shard
//!   scaled live to 4 once a quarter of the items is delivered and back
//!   to 2 at 60%, against 1 and 4 fixed shards in the same run. Live
//!   scaling moves no backlog, and the new shards wait for the old one's
//!   backlog at the change (the hand-over), so it gains only on what
//!   arrives after.
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
const SCALING_ITEMS: u64 = 40_000;
/// Items per millisecond the `scaling` producer sends.
const SCALING_RATE: u64 = 200;

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
                    let start = Instant::now();
                    let (handle, delivered) = drain_slowly(rx);
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

/// Drains every shard (and every shard added later) into a sink that
/// takes 1 ms per batch of at most 100 items; counts what it delivered.
fn drain_slowly(rx: sump::ShardedReceiver<Item>) -> (sump::ShardedDrainHandle<Item>, Arc<AtomicU64>) {
    let delivered = Arc::new(AtomicU64::new(0));
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
    (handle, delivered)
}

/// Sends `SCALING_ITEMS` at `SCALING_RATE`, from one thread.
fn produce_paced(tx: sump::ShardedSender<Item>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let start = Instant::now();
        for i in 0..SCALING_ITEMS {
            if i % SCALING_RATE == 0 {
                let due = start + Duration::from_millis(i / SCALING_RATE);
                thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            tx.send([i; 8]).unwrap();
        }
    })
}

/// Delivers `SCALING_ITEMS` into 1 ms-per-batch sinks; with `scale`, scales
/// 1 → 4 shards at 25% delivered and 4 → 2 at 60%. Returns the time from
/// the first send to the last delivery.
fn slow_run(dir: &std::path::Path, shards: usize, scale: bool) -> Duration {
    let (tx, rx) = open(dir, shards);
    let (handle, delivered) = drain_slowly(rx);
    let start = Instant::now();
    let producer = produce_paced(tx.clone());
    let (mut up, mut down) = (!scale, !scale);
    while delivered.load(Ordering::Relaxed) < SCALING_ITEMS {
        let done = delivered.load(Ordering::Relaxed);
        if !up && done >= SCALING_ITEMS / 4 {
            for _ in 0..3 {
                let id = handle.add_shard().unwrap();
                handle.activate_shard(id).unwrap();
            }
            up = true;
        }
        if !down && done >= SCALING_ITEMS * 6 / 10 {
            let active: Vec<_> =
                tx.shard_stats().into_iter().filter(|s| s.state == sump::ShardState::Active).map(|s| s.id).collect();
            for id in active.iter().rev().take(2) {
                handle.drain_shard(*id).unwrap();
            }
            down = true;
        }
        thread::sleep(Duration::from_micros(200));
    }
    let elapsed = start.elapsed();
    producer.join().unwrap();
    drop(tx);
    handle.shutdown(Duration::from_secs(5)).unwrap();
    elapsed
}

fn scaling(c: &mut Criterion) {
    let mut group = c.benchmark_group("sharded_scaling");
    group.throughput(Throughput::Elements(SCALING_ITEMS));
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    for (name, shards, scale) in [("fixed-1", 1, false), ("1-4-2", 1, true), ("fixed-4", 4, false)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                (0..iterations).map(|_| slow_run(tempfile::tempdir().unwrap().path(), shards, scale)).sum()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, receivers, slow_sink, scaling);
criterion_main!(benches);
