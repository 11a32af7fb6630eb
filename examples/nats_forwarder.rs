//! A forwarder into a distributed log: events go into a durable `sump`
//! channel, a paced drainer publishes them to a NATS JetStream stream,
//! each with a `Nats-Msg-Id` of its channel and sequence number. Kill this
//! process while it runs and start it again: the stream holds every event
//! once, in order, because the redelivered tail is dropped by the server.
//!
//! ```sh
//! nats-server -js -a 127.0.0.1 -p 4222 &
//! cargo run --release --features nats --example nats_forwarder -- nats://127.0.0.1:4222 /tmp/forwarder
//! ```

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sump::{Builder, Drainer, Durability, JetStreamSink};

#[derive(Debug, Serialize, Deserialize)]
struct Event {
    seq: u64,
    host: String,
    message: String,
}

const EVENTS: u64 = 100_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "nats://127.0.0.1:4222".to_string());
    let temporary = tempfile::tempdir()?;
    let dir = std::env::args().nth(2).map_or_else(|| temporary.path().to_owned(), PathBuf::from);
    let (tx, rx) =
        Builder::new("forwarder", &dir).durability(Durability::WriteAhead).memory_capacity(10_000).open::<Event>()?;
    let resumed = rx.len();
    let sink = JetStreamSink::new(&url, "EVENTS", "events.web")?
        .create_stream(["events.>"])
        .subject_of(|event: &Event| format!("events.{}", event.host))
        .timeout(Duration::from_secs(2));
    let handle = Drainer::new(rx, sink)
        .batch_size(1_000)
        .max_rate(50_000.0) // what the downstream takes after an outage
        .backoff(Duration::from_millis(50), Duration::from_secs(2))
        .spawn();
    println!("channel {} in {}: {resumed} events left from a previous run", tx.channel_id(), dir.display());
    println!("forwarding {EVENTS} more to the stream EVENTS at {url}, at most 50,000 a second");

    let producer = thread::spawn(move || {
        for seq in 0..EVENTS {
            let event = Event { seq, host: "web-1".into(), message: format!("GET /item/{seq} 200") };
            tx.send(event).expect("the channel is open");
        }
        tx
    });

    let start = Instant::now();
    let mut tx = None;
    let mut producer = Some(producer);
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
    println!("done: {} events left in the channel", receiver.len());
    Ok(())
}
