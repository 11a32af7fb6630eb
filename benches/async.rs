//! An async producer and an async consumer on tokio: `sump` beside
//! `tokio::sync::mpsc`, in the same run, so the ratios mean something on
//! a noisy machine.
//!
//! - hot path: 1,000,000 `u64`, nothing spills (`sump` memory capacity
//!   and tokio's bound both 2^20), beside tokio's bounded and unbounded
//!   channels;
//! - spilling: 200,000 items of 64 bytes, `sump` with 1,000 in memory
//!   (the rest goes through disk), beside tokio's unbounded channel,
//!   which keeps them all in memory.
//!
//! Run with `cargo bench --features async --bench async`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const HOT_ITEMS: u64 = 1_000_000;
const SPILL_ITEMS: u64 = 200_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap()
}

/// A 64-byte item.
fn item(i: u64) -> String {
    format!("{i:064}")
}

fn hot_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("async_hot_path");
    group.throughput(Throughput::Elements(HOT_ITEMS));
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    let rt = runtime();
    group.bench_function("tokio_mpsc_bounded", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1 << 20);
                let producer = tokio::spawn(async move {
                    for i in 0..HOT_ITEMS {
                        tx.send(i).await.unwrap();
                    }
                });
                let mut count = 0;
                while rx.recv().await.is_some() {
                    count += 1;
                }
                producer.await.unwrap();
                assert_eq!(count, HOT_ITEMS);
            })
        })
    });
    group.bench_function("tokio_mpsc_unbounded", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
                let producer = tokio::spawn(async move {
                    for i in 0..HOT_ITEMS {
                        tx.send(i).unwrap();
                    }
                });
                let mut count = 0;
                while rx.recv().await.is_some() {
                    count += 1;
                }
                producer.await.unwrap();
                assert_eq!(count, HOT_ITEMS);
            })
        })
    });
    let dir = tempfile::tempdir().unwrap();
    group.bench_function("sump", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (tx, rx) = sump::Builder::new("hot", dir.path()).memory_capacity(1 << 20).open::<u64>().unwrap();
                let producer = tokio::spawn(async move {
                    for i in 0..HOT_ITEMS {
                        tx.send_async(i).await.unwrap();
                    }
                });
                let mut count = 0;
                while rx.recv_async().await.is_ok() {
                    count += 1;
                }
                producer.await.unwrap();
                assert_eq!(count, HOT_ITEMS);
                assert_eq!(rx.stats().spilled, 0, "the hot path must not spill");
            })
        })
    });
    group.finish();
}

fn spilling(c: &mut Criterion) {
    let mut group = c.benchmark_group("async_spilling");
    group.throughput(Throughput::Elements(SPILL_ITEMS));
    group.sample_size(10).measurement_time(Duration::from_secs(8));
    let rt = runtime();
    group.bench_function("tokio_mpsc_unbounded", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                let producer = tokio::spawn(async move {
                    for i in 0..SPILL_ITEMS {
                        tx.send(item(i)).unwrap();
                    }
                });
                producer.await.unwrap();
                let mut count = 0;
                while rx.recv().await.is_some() {
                    count += 1;
                }
                assert_eq!(count, SPILL_ITEMS);
            })
        })
    });
    let dir = tempfile::tempdir().unwrap();
    group.bench_function("sump", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (tx, rx) = sump::Builder::new("spill", dir.path()).memory_capacity(1_000).open::<String>().unwrap();
                let producer = tokio::spawn(async move {
                    for i in 0..SPILL_ITEMS {
                        tx.send_async(item(i)).await.unwrap();
                    }
                });
                producer.await.unwrap();
                let mut count = 0;
                let mut stream = std::pin::pin!(rx.stream());
                while futures::StreamExt::next(&mut stream).await.is_some() {
                    count += 1;
                }
                assert_eq!(count, SPILL_ITEMS);
            })
        })
    });
    group.finish();
}

criterion_group!(benches, hot_path, spilling);
criterion_main!(benches);
