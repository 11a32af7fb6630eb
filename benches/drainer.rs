//! Drainer throughput: 1,000,000 items of 64 bytes through a channel and a
//! drainer into a sink that accepts everything. The target is at least
//! 15,000,000 items per second on a 2-core machine.
//!
//! The measuring thread sleeps until the sink has seen the last item. It
//! used to poll with `yield_now`, which on 2 cores took a core from the
//! producer or the drainer: 3.9 M items/s that way, 17 to 20 M without,
//! in the same session.
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
                // The measuring thread sleeps until the last batch: on 2
                // cores a thread polling meanwhile would take one from the
                // producer or the drainer.
                let main = thread::current();
                let start = Instant::now();
                let handle = Drainer::new(rx, move |batch: &[[u64; 8]]| -> Result<(), SinkError> {
                    let before = counted.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if before + batch.len() as u64 >= ITEMS {
                        main.unpark();
                    }
                    Ok(())
                })
                .batch_size(512)
                .spawn();
                let producer = thread::spawn(move || (0..ITEMS).for_each(|i| tx.send([i; 8]).unwrap()));
                while delivered.load(Ordering::Relaxed) < ITEMS {
                    thread::park_timeout(Duration::from_millis(10));
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
