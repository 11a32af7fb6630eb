//! Side-by-side throughput of `sump`, `std::sync::mpsc`, `crossbeam-channel`
//! and `hopper` 0.4 on the same workloads, so ratios come from one run.
//!
//! - W1 hot path: 1 producer, 1 consumer, 1,000,000 `u64`, nothing spills.
//! - W2 spill: 200,000 items of 1 KiB, receiver idle until every send
//!   returned, memory capacity 1,000 (bounded in-memory channels cannot do
//!   this without blocking forever, so only unbounded ones, std's and
//!   crossbeam's, are compared;
//!   hopper did not finish one iteration in 120 s on the reference machine,
//!   so it is left out here). Beside them, the disk's floor: the same
//!   bytes written to files, read back and deleted, with and without the
//!   CRC32C sump checks on both sides.
//! - W5 scale: the cost per item of spilling and draining a backlog of
//!   10^4 and of 10^6 items of 64 bytes (10^7 with `SUMP_BENCH_LARGE=1`).
//! - W3 contention: 4 producers x 250,000 items of 64 bytes, capacity 1,000.
//!
//! Run with `cargo bench --bench channels`.

use std::thread;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const W1_ITEMS: u64 = 1_000_000;
const W2_ITEMS: usize = 200_000;
const W3_PRODUCERS: usize = 4;
const W3_ITEMS: usize = 250_000;

fn w1_hot_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("w1_hot_path");
    group.throughput(Throughput::Elements(W1_ITEMS));
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    group.bench_function("crossbeam_bounded", |b| {
        b.iter(|| {
            let (tx, rx) = crossbeam_channel::bounded::<u64>(1 << 20);
            let producer = thread::spawn(move || (0..W1_ITEMS).for_each(|i| tx.send(i).unwrap()));
            assert_eq!(rx.iter().count() as u64, W1_ITEMS);
            producer.join().unwrap();
        })
    });
    group.bench_function("std_mpsc_sync", |b| {
        b.iter(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(1 << 20);
            let producer = thread::spawn(move || (0..W1_ITEMS).for_each(|i| tx.send(i).unwrap()));
            assert_eq!(rx.iter().count() as u64, W1_ITEMS);
            producer.join().unwrap();
        })
    });
    group.bench_function("hopper", |b| {
        let dir = tempfile::tempdir().unwrap();
        b.iter(|| {
            let capacity = (1 << 20) * std::mem::size_of::<u64>();
            let (mut tx, mut rx) =
                hopper::channel_with_explicit_capacity::<u64>("w1", dir.path(), capacity, 1 << 30, 16).unwrap();
            let producer = thread::spawn(move || (0..W1_ITEMS).for_each(|i| tx.send(i).unwrap()));
            assert_eq!(rx.iter().take(W1_ITEMS as usize).count() as u64, W1_ITEMS);
            producer.join().unwrap();
        })
    });
    group.bench_function("sump", |b| {
        let dir = tempfile::tempdir().unwrap();
        b.iter(|| {
            let (tx, rx) = sump::Builder::new("w1", dir.path()).memory_capacity(1 << 20).open::<u64>().unwrap();
            let producer = thread::spawn(move || (0..W1_ITEMS).for_each(|i| tx.send(i).unwrap()));
            assert_eq!(rx.iter().count() as u64, W1_ITEMS);
            producer.join().unwrap();
            assert_eq!(rx.stats().spilled, 0, "W1 must not spill");
        })
    });
    group.finish();
}

/// A 1 KiB item. A `String` (not a `Vec<u8>`, which serde encodes byte by
/// byte) is what a log shipper carries.
fn kib() -> String {
    "x".repeat(1024)
}

fn w2_spill(c: &mut Criterion) {
    let mut group = c.benchmark_group("w2_spill");
    group.throughput(Throughput::Elements(W2_ITEMS as u64));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    group.bench_function("crossbeam_unbounded", |b| {
        b.iter_batched(
            kib,
            |item| {
                let (tx, rx) = crossbeam_channel::unbounded::<String>();
                for _ in 0..W2_ITEMS {
                    tx.send(item.clone()).unwrap();
                }
                drop(tx);
                assert_eq!(rx.iter().count(), W2_ITEMS);
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("std_unbounded", |b| {
        b.iter_batched(
            kib,
            |item| {
                let (tx, rx) = std::sync::mpsc::channel::<String>();
                for _ in 0..W2_ITEMS {
                    tx.send(item.clone()).unwrap();
                }
                drop(tx);
                assert_eq!(rx.iter().count(), W2_ITEMS);
            },
            BatchSize::PerIteration,
        )
    });
    // Not channels: the floor any disk-backed channel stands on here, the
    // same bytes as sump's records written into 8 MiB files through a
    // 256 KiB buffer, read back the same way and deleted, without and
    // with the CRC32C that sump's format checks on both sides.
    for (name, crc) in [("disk_floor", false), ("disk_floor_crc32c", true)] {
        group.bench_function(name, |b| {
            let dir = tempfile::tempdir().unwrap();
            b.iter(|| disk_round_trip(dir.path(), crc))
        });
    }
    group.bench_function("sump", |b| {
        let dir = tempfile::tempdir().unwrap();
        b.iter_batched(
            kib,
            |item| {
                let (tx, rx) = sump::Builder::new("w2", dir.path()).memory_capacity(1_000).open::<String>().unwrap();
                for _ in 0..W2_ITEMS {
                    tx.send(item.clone()).unwrap();
                }
                drop(tx);
                assert_eq!(rx.iter().count(), W2_ITEMS);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// The bytes of one W2 record as sump frames it: an 8-byte header, the
/// bincode `String` (3 bytes of length, 1,024 of text) and the 8-byte
/// sequence number.
const W2_RECORD_BYTES: usize = 8 + 3 + 1024 + 8;

/// Writes W2's records to files in `dir`, reads them back and deletes
/// them, checking each record's CRC32C on both sides if `crc`.
fn disk_round_trip(dir: &std::path::Path, crc: bool) {
    use std::io::{Read, Write};
    const SEGMENT: usize = 8 << 20;
    const BUFFER: usize = 256 << 10;
    let record = vec![b'x'; W2_RECORD_BYTES];
    let per_file = SEGMENT / W2_RECORD_BYTES;
    let mut files = Vec::new();
    let mut buffer = Vec::with_capacity(BUFFER);
    let mut checks = 0u32;
    for first in (0..W2_ITEMS).step_by(per_file) {
        let path = dir.join(format!("{first}.seg"));
        let mut file = std::fs::File::create(&path).unwrap();
        for _ in first..(first + per_file).min(W2_ITEMS) {
            if buffer.len() + W2_RECORD_BYTES > BUFFER {
                file.write_all(&buffer).unwrap();
                buffer.clear();
            }
            if crc {
                checks ^= crc32c::crc32c(&record[4..]);
            }
            buffer.extend_from_slice(&record);
        }
        file.write_all(&buffer).unwrap();
        buffer.clear();
        files.push(path);
    }
    let mut read = vec![0u8; BUFFER];
    let mut records = 0;
    for path in files {
        let mut file = std::fs::File::open(&path).unwrap();
        let mut carried = 0;
        loop {
            let got = file.read(&mut read[carried..]).unwrap();
            if got == 0 {
                break;
            }
            let filled = carried + got;
            let whole = filled / W2_RECORD_BYTES * W2_RECORD_BYTES;
            for one in read[..whole].chunks_exact(W2_RECORD_BYTES) {
                if crc {
                    checks ^= crc32c::crc32c(&one[4..]);
                }
                records += 1;
            }
            read.copy_within(whole..filled, 0);
            carried = filled - whole;
        }
        std::fs::remove_file(&path).unwrap();
    }
    assert_eq!(records, W2_ITEMS);
    criterion::black_box(checks);
}

fn w3_contention(c: &mut Criterion) {
    let mut group = c.benchmark_group("w3_contention");
    group.throughput(Throughput::Elements((W3_PRODUCERS * W3_ITEMS) as u64));
    group.sample_size(10).measurement_time(Duration::from_secs(8));
    group.bench_function("crossbeam_bounded", |b| {
        b.iter(|| {
            let (tx, rx) = crossbeam_channel::bounded::<[u64; 8]>(1_000);
            let producers: Vec<_> = (0..W3_PRODUCERS)
                .map(|_| {
                    let tx = tx.clone();
                    thread::spawn(move || (0..W3_ITEMS).for_each(|_| tx.send([1u64; 8]).unwrap()))
                })
                .collect();
            drop(tx);
            assert_eq!(rx.iter().count(), W3_PRODUCERS * W3_ITEMS);
            producers.into_iter().for_each(|p| p.join().unwrap());
        })
    });
    group.bench_function("hopper", |b| {
        let dir = tempfile::tempdir().unwrap();
        b.iter(|| {
            let capacity = 1_000 * std::mem::size_of::<[u64; 8]>();
            let (tx, mut rx) =
                hopper::channel_with_explicit_capacity::<[u64; 8]>("w3", dir.path(), capacity, 1 << 30, 64).unwrap();
            let producers: Vec<_> = (0..W3_PRODUCERS)
                .map(|_| {
                    let mut tx = tx.clone();
                    thread::spawn(move || (0..W3_ITEMS).for_each(|_| tx.send([1u64; 8]).unwrap()))
                })
                .collect();
            drop(tx);
            assert_eq!(rx.iter().take(W3_PRODUCERS * W3_ITEMS).count(), W3_PRODUCERS * W3_ITEMS);
            producers.into_iter().for_each(|p| p.join().unwrap());
        })
    });
    group.bench_function("sump", |b| {
        let dir = tempfile::tempdir().unwrap();
        b.iter(|| {
            let (tx, rx) = sump::Builder::new("w3", dir.path()).memory_capacity(1_000).open::<[u64; 8]>().unwrap();
            let producers: Vec<_> = (0..W3_PRODUCERS)
                .map(|_| {
                    let tx = tx.clone();
                    thread::spawn(move || (0..W3_ITEMS).for_each(|_| tx.send([1u64; 8]).unwrap()))
                })
                .collect();
            drop(tx);
            assert_eq!(rx.iter().count(), W3_PRODUCERS * W3_ITEMS);
            producers.into_iter().for_each(|p| p.join().unwrap());
        })
    });
    group.finish();
}

fn w5_scale(c: &mut Criterion) {
    let mut group = c.benchmark_group("w5_scale");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    let mut backlogs = vec![10_000u64, 1_000_000];
    if std::env::var("SUMP_BENCH_LARGE").is_ok_and(|v| v == "1") {
        backlogs.push(10_000_000);
    }
    for backlog in backlogs {
        group.throughput(Throughput::Elements(backlog));
        group.bench_with_input(criterion::BenchmarkId::new("sump", backlog), &backlog, |b, &backlog| {
            let dir = tempfile::tempdir().unwrap();
            b.iter(|| {
                let (tx, rx) = sump::Builder::new("w5", dir.path())
                    .memory_capacity(1_000)
                    .max_disk_bytes(u64::MAX)
                    .open::<[u64; 8]>()
                    .unwrap();
                for i in 0..backlog {
                    tx.send([i; 8]).unwrap();
                }
                drop(tx);
                assert_eq!(rx.iter().count() as u64, backlog);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, w1_hot_path, w2_spill, w3_contention, w5_scale);
criterion_main!(benches);
