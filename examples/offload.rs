//! A backlog ten times the local disk bound, through a remote tier.
//!
//! ```text
//! cargo run --release --example offload [-- REMOTE_DIR]
//! ```
//!
//! A producer writes 320 MB while the consumer is away; the channel may
//! keep only 32 MiB on its local disk, so sealed segments go to a
//! directory store (a temporary directory, or `REMOTE_DIR`: another disk,
//! an NFS mount). Then the channel is closed and opened again, as after a
//! restart, and the consumer drains everything back, in order, while the
//! tier fetches the segments ahead of it. It prints what happened.

use std::time::{Duration, Instant};

use sump::{Builder, DirStore, Durability};

const ITEMS: u64 = 320_000;
const PAYLOAD: usize = 1_000;
const LOCAL_BOUND: u64 = 32 << 20;

#[derive(serde::Serialize, serde::Deserialize)]
struct Event {
    n: u64,
    body: Vec<u8>,
}

fn open(local: &std::path::Path, remote: &std::path::Path) -> (sump::Sender<Event>, sump::Receiver<Event>) {
    Builder::new("events", local)
        .durability(Durability::Persistent)
        .memory_capacity(1_000)
        .segment_bytes(4 << 20)
        .max_disk_bytes(LOCAL_BOUND)
        .offload_after_bytes(LOCAL_BOUND / 2)
        .remote(DirStore::create(remote).expect("create the store's directory"))
        .open()
        .expect("open the channel")
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn main() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let local = scratch.path().join("local");
    let remote = std::env::args().nth(1).map_or_else(|| scratch.path().join("remote"), Into::into);
    println!("local disk: {} (bound {} MiB); remote store: {}", local.display(), LOCAL_BOUND >> 20, remote.display());

    let (tx, rx) = open(&local, &remote);
    let start = Instant::now();
    let mut peak_local = 0;
    for n in 0..ITEMS {
        tx.send(Event { n, body: vec![(n % 251) as u8; PAYLOAD] }).expect("send");
        if n % 1_000 == 0 {
            peak_local = peak_local.max(tx.stats().disk_bytes);
        }
    }
    let sent_in = start.elapsed();
    let stats = tx.stats();
    println!(
        "sent {ITEMS} events ({:.0} MB) in {:.2} s; peak local disk {:.1} MiB; {} segments ({:.0} MB) in the store, {} uploads",
        mb(ITEMS * PAYLOAD as u64),
        sent_in.as_secs_f64(),
        peak_local as f64 / f64::from(1 << 20),
        stats.remote_segments,
        mb(stats.remote_bytes),
        stats.uploads
    );
    drop((tx, rx));

    // A restart: the backlog is found again, most of it in the store.
    let reopened = Instant::now();
    let (tx, rx) = open(&local, &remote);
    drop(tx);
    let stats = rx.stats();
    println!(
        "reopened in {:.1} ms: {} events waiting, {} segments of them in the store",
        reopened.elapsed().as_secs_f64() * 1e3,
        stats.on_disk + stats.in_memory as u64,
        stats.remote_segments
    );

    let start = Instant::now();
    let mut next = 0;
    while let Ok(event) = rx.recv_timeout(Duration::from_secs(30)) {
        assert_eq!(event.n, next, "events come back in order");
        assert!(event.body.iter().all(|&b| b == (next % 251) as u8), "and intact");
        next += 1;
    }
    let drained_in = start.elapsed();
    let stats = rx.stats();
    assert_eq!(next, ITEMS, "every event came back");
    println!(
        "drained {next} events in order in {:.2} s ({:.0} MB/s); {} fetches, {} store failures, {} lost",
        drained_in.as_secs_f64(),
        mb(ITEMS * PAYLOAD as u64) / drained_in.as_secs_f64(),
        stats.fetches,
        stats.remote_failures,
        stats.lost
    );
}
