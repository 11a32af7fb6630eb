//! Forwarding from tokio code, two ways.
//!
//! 1. A tokio task receives with `recv_many_async` and forwards each batch
//!    to an async destination. Simple; an item received is gone from the
//!    channel, so a crash mid-batch loses that batch.
//! 2. The blocking `Drainer` on its own thread, with a `Sink` that drives
//!    the async client through the runtime's `Handle::block_on`. Items
//!    stay in the channel until the sink accepted them (at least once),
//!    with the drainer's retries, backoff and breaker.
//!
//! ```sh
//! cargo run --release --features async --example async_forwarder
//! ```
//!
//! The destination here is a tokio channel behind a simulated network
//! delay; in a service it would be an HTTP or database client.

use std::time::{Duration, Instant};

use sump::{Builder, Drainer, SinkError};
use tokio::sync::mpsc;

const ITEMS: u64 = 20_000;

/// An async destination: each batch costs a round trip.
async fn deliver(out: &mpsc::Sender<u64>, batch: &[u64]) -> Result<(), mpsc::error::SendError<u64>> {
    tokio::time::sleep(Duration::from_millis(1)).await;
    for &item in batch {
        out.send(item).await?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build()?;
    let dir = tempfile::tempdir()?;

    // 1. A task that receives and forwards.
    let (tx, rx) = Builder::new("from-a-task", dir.path()).memory_capacity(1_000).open::<u64>()?;
    let started = Instant::now();
    let forwarded = runtime.block_on(async move {
        let (out, mut delivered) = mpsc::channel(4096);
        let forwarder = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(500);
            while rx.recv_many_async(&mut batch, 500).await.is_ok() {
                deliver(&out, &batch).await.expect("the destination is gone");
                batch.clear();
            }
        });
        for i in 0..ITEMS {
            tx.send_async(i).await.expect("the channel is open");
        }
        drop(tx);
        let mut count = 0u64;
        while let Some(item) = delivered.recv().await {
            assert_eq!(item, count, "in order");
            count += 1;
        }
        forwarder.await.expect("the forwarder finished");
        count
    });
    println!("task:    forwarded {forwarded} items in order in {:?}", started.elapsed());

    // 2. The drainer, with an async client inside its sink.
    let (tx, rx) = Builder::new("from-a-drainer", dir.path()).memory_capacity(1_000).open::<u64>()?;
    let (out, mut delivered) = mpsc::channel(4096);
    let handle = runtime.handle().clone();
    let sink =
        move |batch: &[u64]| handle.block_on(deliver(&out, batch)).map_err(|err| SinkError::transient(err.to_string()));
    let started = Instant::now();
    let drainer = Drainer::new(rx, sink).batch_size(500).linger(Duration::from_millis(5)).spawn();
    let count = runtime.block_on(async move {
        let producer = tokio::spawn(async move {
            for i in 0..ITEMS {
                tx.send_async(i).await.expect("the channel is open");
            }
        });
        let mut count = 0u64;
        while count < ITEMS {
            let item = delivered.recv().await.expect("the drainer delivers everything");
            assert_eq!(item, count, "in order");
            count += 1;
        }
        producer.await.expect("the producer finished");
        count
    });
    let stats = drainer.stats();
    println!(
        "drainer: forwarded {count} items in order in {:?} ({} batches, {} retried)",
        started.elapsed(),
        stats.batches,
        stats.retried
    );
    Ok(())
}
