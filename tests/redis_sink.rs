//! The Redis Streams sink against a real `redis-server` on 127.0.0.1,
//! stopped mid-stream and started again. Needs the `redis` feature and a
//! `redis-server` binary on `PATH` (or in `SUMP_REDIS_SERVER`); `.ci/run`
//! installs one.
#![cfg(feature = "redis")]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sump::{Builder, Drainer, RedisSink};

const ITEMS: u64 = 20_000;

#[derive(Debug, Serialize, Deserialize)]
struct Event {
    seq: u64,
    body: String,
}

/// A Redis server of our own, with fsync on every write, so acknowledged
/// entries survive it being killed.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dir: &Path, port: u16) -> Server {
        let binary = std::env::var("SUMP_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string());
        let child = Command::new(&binary)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {binary} (install redis-server): {err}"));
        let server = Server { child, port };
        let start = Instant::now();
        while server.client().get_connection_with_timeout(Duration::from_millis(100)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not come up");
            thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    fn stop(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn items_back_up_and_spill_while_redis_is_down_then_all_arrive_in_order() {
    let data = tempfile::tempdir().unwrap();
    let redis_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::start(redis_dir.path(), port);

    let (tx, rx) = Builder::new("events", data.path()).memory_capacity(100).segment_bytes(64 * 1024).open().unwrap();
    let sink = RedisSink::new(&server.url(), "events").unwrap().timeout(Duration::from_millis(500));
    let handle = Drainer::new(rx, sink)
        .batch_size(50)
        .backoff(Duration::from_millis(5), Duration::from_millis(100))
        .breaker(5, Duration::from_millis(200))
        .spawn();

    let producer = thread::spawn(move || {
        for seq in 0..ITEMS {
            tx.send(Event { seq, body: format!("event number {seq}") }).unwrap();
            if seq % 1_000 == 0 {
                thread::sleep(Duration::from_millis(20));
            }
        }
        tx
    });

    wait("the first deliveries", || handle.stats().delivered >= 2_000);
    server.stop();
    wait("a backlog on disk", || {
        let stats = handle.stats();
        stats.lag > 1_000 && stats.retried > 0
    });
    let tx = producer.join().unwrap();
    assert!(tx.stats().spilled > 0, "with Redis down, items spill to disk");
    let stalled = handle.stats();
    assert!(stalled.delivered < ITEMS, "nothing can be delivered while Redis is down");

    let server = Server::start(redis_dir.path(), port);
    wait("every item delivered", || handle.stats().delivered >= ITEMS && handle.stats().lag == 0);
    let stats = handle.stats();
    assert_eq!(stats.rejected, 0);
    drop(tx);
    let rx = handle.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(rx.try_recv().map(|e| e.seq), Err(sump::TryRecvError::Disconnected));

    let mut connection = server.client().get_connection().unwrap();
    let entries: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg("events").arg("-").arg("+").query(&mut connection).unwrap();
    let seqs: Vec<u64> = entries
        .ids
        .iter()
        .map(|entry| {
            let json: String = entry.get("item").expect("every entry has the item field");
            serde_json::from_str::<Event>(&json).unwrap().seq
        })
        .collect();
    let mut first_seen = Vec::new();
    let mut duplicates = 0;
    for &seq in &seqs {
        if first_seen.last().is_some_and(|&last| seq <= last) {
            duplicates += 1;
        } else {
            first_seen.push(seq);
        }
    }
    eprintln!("{} entries in Redis, {duplicates} duplicates, {} retries", seqs.len(), stats.retried);
    assert_eq!(first_seen, (0..ITEMS).collect::<Vec<_>>(), "every item arrives, in order");
    assert!(
        duplicates <= 50 * stats.retried as usize,
        "duplicates come only from retried batches whose answer was lost"
    );
}
