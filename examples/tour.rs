//! A tour of `sump`: a producer outruns a slow consumer, the channel spills
//! to disk instead of growing in memory or blocking, and drains back to
//! memory once the consumer catches up.
//!
//! Run it with `cargo run --release --example tour`.

use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What a log shipper might carry.
#[derive(Debug, Serialize, Deserialize)]
struct LogLine {
    seq: u64,
    level: String,
    message: String,
}

const BURST: u64 = 200_000;
const TRICKLE: u64 = 2_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (tx, rx) =
        sump::Builder::new("logs", dir.path()).memory_capacity(1_000).segment_bytes(4 << 20).open::<LogLine>()?;
    println!("channel `logs` in {}", dir.path().display());
    println!("memory holds 1,000 items; the rest goes to 4 MiB segments\n");

    let start = Instant::now();

    // The producer: a burst far faster than the consumer, then a trickle.
    let producer = thread::spawn(move || -> Result<(), sump::SendError<LogLine>> {
        for seq in 0..BURST {
            let line = LogLine { seq, level: "INFO".into(), message: format!("request {seq} served in 3 ms") };
            tx.send(line)?; // never blocks here: overflow goes to disk
        }
        println!("     producer: burst of {BURST} sent in {:.2}s", start.elapsed().as_secs_f64());
        for seq in BURST..BURST + TRICKLE {
            tx.send(LogLine { seq, level: "DEBUG".into(), message: "heartbeat".into() })?;
            thread::sleep(Duration::from_micros(500));
        }
        println!("     producer: done, dropping the sender");
        Ok(())
    });

    // The consumer: slow at first (a downstream that takes its time), then
    // fast. It checks that nothing is lost or reordered.
    // Every 200 ms it prints what the channel holds.
    let mut expected = 0;
    let mut back_to_memory_at = None;
    let mut peak = sump::Stats::default();
    let mut next_report = Duration::ZERO;
    for line in &rx {
        assert_eq!(line.seq, expected, "items arrive in order");
        expected += 1;
        if expected < 100_000 && expected % 100 == 0 {
            thread::sleep(Duration::from_millis(2));
        }
        if start.elapsed() >= next_report {
            next_report += Duration::from_millis(200);
            let s = rx.stats();
            println!(
                "{:>5.1}s  in memory {:>5}  on disk {:>7}  segments {:>2}  disk {:>6.1} MiB  received {:>7}",
                start.elapsed().as_secs_f64(),
                s.in_memory,
                s.on_disk,
                s.segments,
                s.disk_bytes as f64 / (1 << 20) as f64,
                s.received,
            );
            if s.on_disk > peak.on_disk {
                peak = s;
            }
        }
        if back_to_memory_at.is_none() && expected > BURST / 2 && rx.stats().on_disk == 0 {
            back_to_memory_at = Some(start.elapsed());
        }
    }
    producer.join().expect("producer panicked")?;

    let stats = rx.stats();
    println!("\nreceived {} of {} items, in order", stats.received, BURST + TRICKLE);
    println!("spilled to disk: {} items; dropped: {}; corrupt: {}", stats.spilled, stats.dropped, stats.corrupt);
    println!(
        "largest backlog seen: {} items on disk in {} segments ({:.1} MiB), while memory held at most 1,000",
        peak.on_disk,
        peak.segments,
        peak.disk_bytes as f64 / (1 << 20) as f64
    );
    if let Some(at) = back_to_memory_at {
        println!("disk backlog drained at {:.1}s; later items went through memory only", at.as_secs_f64());
    }
    println!("segments left on disk: {}", stats.segments);
    Ok(())
}
