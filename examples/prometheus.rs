//! A channel's counters on a Prometheus scrape endpoint: a producer
//! outruns a slow consumer, the channel spills, and
//! `http://127.0.0.1:9187/metrics` shows it as it happens.
//!
//! ```sh
//! cargo run --release --features metrics --example prometheus -- 127.0.0.1:9187 10
//! curl -s http://127.0.0.1:9187/metrics | grep '^sump_'
//! ```
//!
//! The arguments are the address to serve on and how many seconds to run.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusBuilder;
use sump::Builder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9187".to_string()).parse()?;
    let seconds: u64 = std::env::args().nth(2).map_or(Ok(10), |s| s.parse())?;
    // Outside any async runtime, the exporter serves from a thread of its
    // own; every open channel publishes to it once a second.
    PrometheusBuilder::new().with_http_listener(addr).install()?;
    println!("serving metrics on http://{addr}/metrics for {seconds} s");

    let dir = tempfile::tempdir()?;
    let (tx, rx) = Builder::new("orders", dir.path()).memory_capacity(1_000).open::<String>()?;
    let stop = Instant::now() + Duration::from_secs(seconds);
    let producer = thread::spawn(move || {
        let mut sent = 0u64;
        while Instant::now() < stop {
            for _ in 0..1_000 {
                tx.send(format!("order #{sent}")).unwrap();
                sent += 1;
            }
            thread::sleep(Duration::from_millis(10));
        }
    });
    // The consumer takes a tenth of what arrives, so the backlog spills.
    let mut received = 0u64;
    while Instant::now() < stop {
        for _ in 0..100 {
            if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                received += 1;
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    producer.join().map_err(|_| "the producer panicked")?;
    sump::publish_metrics();
    let stats = rx.stats();
    println!(
        "received {received}; {} in memory, {} on disk ({} bytes): the scrape shows the same",
        stats.in_memory, stats.on_disk, stats.disk_bytes
    );
    Ok(())
}
