//! Items per second into a NATS JetStream stream: `sump`'s channel and
//! drainer with the `JetStreamSink` (with and without a `Nats-Msg-Id` on
//! every message), beside the ceiling, the same client publishing the
//! same payloads straight from memory with the same number of
//! acknowledgements in flight (what `nats bench js pub` measures; with
//! and without ids too, since the server's deduplication has a cost of
//! its own), in the same run.
//!
//! 1,000,000 items of 200 bytes per iteration (`SUMP_BENCH_NATS_ITEMS`
//! changes it) into a file-backed stream on a `nats-server` the bench
//! starts on a free loopback port (`nats-server` on `PATH`, or in
//! `SUMP_NATS_SERVER`), with the server's default sync interval.
//!
//! Run with `cargo bench --features nats --bench jetstream`.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sump::{Builder, Drainer, JetStreamSink};

/// Acknowledgements in flight: the drainer's batch size, and the raw
/// publisher's window.
const IN_FLIGHT: usize = 1_000;

fn items() -> u64 {
    std::env::var("SUMP_BENCH_NATS_ITEMS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000)
}

/// A 200-byte payload.
fn payload(i: u64) -> Vec<u8> {
    let mut bytes = format!("{i:020}").into_bytes();
    bytes.resize(200, b'x');
    bytes
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(dir: &std::path::Path) -> (Server, String) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let binary = std::env::var("SUMP_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_string());
    let child = Command::new(&binary)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {binary}: {err}"));
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "nats-server did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Server(child), format!("nats://127.0.0.1:{port}"))
}

/// A fresh stream `name` on `subject`, on file storage.
fn fresh_stream(rt: &tokio::runtime::Runtime, url: &str, name: &str, subject: &str) {
    rt.block_on(async {
        let context = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let _ = context.delete_stream(name).await;
        let config = async_nats::jetstream::stream::Config {
            name: name.to_string(),
            subjects: vec![subject.to_string()],
            ..Default::default()
        };
        context.create_stream(config).await.unwrap();
    });
}

fn jetstream(c: &mut Criterion) {
    let items = items();
    let store = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(store.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let payloads: Vec<Vec<u8>> = (0..items).map(payload).collect();

    let mut group = c.benchmark_group("jetstream_1m_x_200b");
    group.throughput(Throughput::Elements(items));
    group.sample_size(10).measurement_time(Duration::from_secs(20));

    for with_ids in [false, true] {
        let name = if with_ids { "raw_publish_with_msg_ids" } else { "raw_publish_same_client" };
        group.bench_function(name, |b| {
            let context = rt.block_on(async { async_nats::jetstream::new(async_nats::connect(&url).await.unwrap()) });
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    fresh_stream(&rt, &url, "RAW", "raw");
                    let start = Instant::now();
                    rt.block_on(async {
                        for (n, window) in payloads.chunks(IN_FLIGHT).enumerate() {
                            let mut acks = Vec::with_capacity(window.len());
                            for (i, bytes) in window.iter().enumerate() {
                                let mut message = PublishMessage::build().payload(bytes.clone().into());
                                if with_ids {
                                    message = message.message_id(format!("bench-{}", n * IN_FLIGHT + i));
                                }
                                acks.push(context.send_publish("raw", message).await.unwrap());
                            }
                            for ack in acks {
                                ack.await.unwrap();
                            }
                        }
                    });
                    total += start.elapsed();
                }
                total
            })
        });
    }

    for dedupe in [true, false] {
        let name = if dedupe { "sump_drainer_jetstream_sink" } else { "sump_drainer_jetstream_sink_no_ids" };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    fresh_stream(&rt, &url, "SUMP", "sump");
                    let dir = tempfile::tempdir().unwrap();
                    let (tx, rx) =
                        Builder::new("bench", dir.path()).memory_capacity(100_000).open::<Vec<u8>>().unwrap();
                    let sink = JetStreamSink::new(url.as_str(), "SUMP", "sump").unwrap().raw().deduplicate(dedupe);
                    let start = Instant::now();
                    let handle = Drainer::new(rx, sink).batch_size(IN_FLIGHT).spawn();
                    for bytes in &payloads {
                        tx.send(bytes.clone()).unwrap();
                    }
                    drop(tx);
                    while !handle.is_finished() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    total += start.elapsed();
                    assert_eq!(handle.stats().delivered, items);
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, jetstream);
criterion_main!(benches);
