//! Drainer throughput: 1,000,000 items of 64 bytes through a channel and a
//! drainer into a sink that accepts everything. The target is at least
//! 1,000,000 items per second on a 2-core machine.
//!
//! Run with `cargo bench --bench drainer`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sump::{Builder, Drainer, SinkError};

const ITEMS: u64 = 1_000_000;

fn drain_to_accepting_sink(c: &mut Criterion) {
    let mut group = c.benchmark_group("drainer");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    group.bench_function("accept_all_64_byte_items", |b| {
        let dir = tempfile::tempdir().unwrap();
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let (tx, rx) = Builder::new("bench", dir.path()).memory_capacity(65_536).open::<[u64; 8]>().unwrap();
                let delivered = Arc::new(AtomicU64::new(0));
                let counted = Arc::clone(&delivered);
                let start = Instant::now();
                let handle = Drainer::new(rx, move |batch: &[[u64; 8]]| -> Result<(), SinkError> {
                    counted.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    Ok(())
                })
                .batch_size(512)
                .spawn();
                let producer = thread::spawn(move || (0..ITEMS).for_each(|i| tx.send([i; 8]).unwrap()));
                while delivered.load(Ordering::Relaxed) < ITEMS {
                    thread::yield_now();
                }
                total += start.elapsed();
                producer.join().unwrap();
                handle.shutdown(Duration::from_secs(5)).unwrap();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, drain_to_accepting_sink);
criterion_main!(benches);
