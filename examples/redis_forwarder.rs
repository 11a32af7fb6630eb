//! A log shipper in miniature: events go into a `sump` channel, a drainer
//! forwards them to a Redis stream in batches. Stop Redis while it runs
//! and watch the backlog grow and spill to disk; start it again and watch
//! the backlog drain, in order.
//!
//! ```sh
//! redis-server --port 6379 &
//! cargo run --release --features redis --example redis_forwarder -- redis://127.0.0.1:6379/
//! redis-cli XLEN shipped-events
//! ```

use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sump::{Builder, Drainer, RedisSink};

#[derive(Debug, Serialize, Deserialize)]
struct Event {
    seq: u64,
    host: String,
    message: String,
}

const EVENTS: u64 = 200_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "redis://127.0.0.1:6379/".to_string());
    let dir = tempfile::tempdir()?;
    let (tx, rx) = Builder::new("shipper", dir.path()).memory_capacity(10_000).open::<Event>()?;
    let sink = RedisSink::new(&url, "shipped-events")?.timeout(Duration::from_secs(1));
    let handle = Drainer::new(rx, sink)
        .batch_size(500)
        .linger(Duration::from_millis(10))
        .backoff(Duration::from_millis(50), Duration::from_secs(2))
        .breaker(5, Duration::from_secs(2))
        .spawn();
    println!("forwarding {EVENTS} events to the stream `shipped-events` at {url}");

    let mut producer = Some(thread::spawn(move || {
        for seq in 0..EVENTS {
            let event = Event { seq, host: "web-1".into(), message: format!("GET /item/{seq} 200") };
            tx.send(event).expect("the channel is open");
            if seq % 10_000 == 0 {
                thread::sleep(Duration::from_millis(100)); // bursts, like real traffic
            }
        }
        tx
    }));

    let start = Instant::now();
    let mut tx = None;
    loop {
        let stats = handle.stats();
        println!(
            "{:>5.1}s  delivered {:>7}  lag {:>7}  retried {:>4}  breaker {:?}",
            start.elapsed().as_secs_f64(),
            stats.delivered,
            stats.lag,
            stats.retried,
            stats.breaker,
        );
        if producer.as_ref().is_some_and(|p| p.is_finished()) {
            tx = producer.take().map(|p| p.join().expect("producer panicked"));
        }
        if tx.is_some() && stats.lag == 0 {
            break;
        }
        if let Some(reason) = stats.stopped {
            println!("drainer stopped: {reason}");
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    let receiver = handle.shutdown(Duration::from_secs(5))?;
    let left = receiver.stats();
    println!("done: {} items left in the channel ({} on disk)", left.in_memory as u64 + left.on_disk, left.on_disk);
    Ok(())
}
