//! The counters published through the `metrics` facade, scraped over HTTP
//! from a Prometheus exporter on loopback and checked against `stats()`.
//! One test: the recorder is installed once per process.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use sump::{Builder, ChannelSink};

/// Fetches the exporter's page.
fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    page
}

/// The page's samples: `name{labels}` to value.
fn samples(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|line| line.starts_with("sump_"))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of `name` with exactly these labels, in the exporter's
/// order (alphabetical by label name).
fn value(samples: &HashMap<String, f64>, name: &str, labels: &str) -> f64 {
    let series = format!("{name}{{{labels}}}");
    *samples.get(&series).unwrap_or_else(|| panic!("no {series} among {:?}", samples.keys()))
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_scrape_shows_what_stats_shows_for_channels_shards_and_drainers() {
    let port = free_port();
    // Outside any runtime: the exporter runs its own on a thread.
    PrometheusBuilder::new().with_http_listener(([127, 0, 0, 1], port)).install().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("orders", dir.path()).memory_capacity(10).open::<u64>().unwrap();
    for i in 0..100 {
        tx.send(i).unwrap(); // 10 in memory, 90 on disk
    }
    for _ in 0..25 {
        rx.recv().unwrap();
    }

    let (sharded_tx, sharded_rx) =
        Builder::new("events", dir.path()).memory_capacity(4).sharded::<u64>(2).round_robin().open().unwrap();
    for i in 0..20 {
        sharded_tx.send(i).unwrap();
    }

    let (forward_tx, forward_rx) = Builder::new("forward", dir.path()).open::<u64>().unwrap();
    let (out_tx, out_rx) = Builder::new("out", dir.path()).open::<u64>().unwrap();
    for i in 0..50 {
        forward_tx.send(i).unwrap();
    }
    drop(forward_tx);
    let drainer = sump::Drainer::new(forward_rx, ChannelSink::new(out_tx)).spawn();
    while !drainer.is_finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(drainer.stats().delivered, 50);
    assert_eq!(out_rx.try_iter().count(), 50);

    sump::publish_metrics();
    let page = scrape(port);
    let got = samples(&page);

    let stats = tx.stats();
    let orders = r#"channel="orders""#;
    assert_eq!(value(&got, "sump_in_memory_items", orders), stats.in_memory as f64);
    assert_eq!(value(&got, "sump_on_disk_items", orders), stats.on_disk as f64);
    assert_eq!(value(&got, "sump_disk_bytes", orders), stats.disk_bytes as f64);
    assert_eq!(value(&got, "sump_segments", orders), stats.segments as f64);
    assert_eq!(value(&got, "sump_sent_total", orders), 100.0);
    assert_eq!(value(&got, "sump_received_total", orders), 25.0);
    assert_eq!(value(&got, "sump_spilled_total", orders), stats.spilled as f64);
    assert_eq!(value(&got, "sump_dropped_total", orders), 0.0);
    assert!(stats.spilled > 0 && stats.on_disk > 0, "{stats:?}");

    let shards = sharded_rx.shard_stats();
    for (index, shard) in shards.iter().enumerate() {
        let labels = format!(r#"channel="events",shard="{index}""#);
        assert_eq!(value(&got, "sump_sent_total", &labels), shard.stats.sent as f64);
        assert_eq!(value(&got, "sump_on_disk_items", &labels), shard.stats.on_disk as f64);
    }
    let total = sharded_rx.stats();
    let all = r#"channel="events",shard="all""#;
    assert_eq!(value(&got, "sump_sent_total", all), total.sent as f64);
    assert_eq!(value(&got, "sump_sent_total", all), 20.0);
    assert_eq!(value(&got, "sump_in_memory_items", all), total.in_memory as f64);

    let forward = r#"channel="forward""#;
    assert_eq!(value(&got, "sump_drain_delivered_total", forward), 50.0);
    assert_eq!(value(&got, "sump_drain_lag_items", forward), 0.0);
    assert_eq!(value(&got, "sump_drain_breaker_open", forward), 0.0);

    // The values follow the channel: more received, published again.
    for _ in 0..25 {
        rx.recv().unwrap();
    }
    sump::publish_metrics();
    let got = samples(&scrape(port));
    assert_eq!(value(&got, "sump_received_total", orders), 50.0);
    assert_eq!(value(&got, "sump_on_disk_items", orders), tx.stats().on_disk as f64);
}

#[test]
fn publishing_never_keeps_a_closed_channel_locked() {
    // The publisher holds each channel for a moment while it reads its
    // stats; the last handle's drop must free the directory regardless.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sump::publish_metrics();
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    for round in 0..500u64 {
        let (tx, rx) = Builder::new("again", dir.path())
            .durability(sump::Durability::Persistent)
            .open::<u64>()
            .unwrap_or_else(|err| panic!("round {round}: {err}"));
        tx.send(round).unwrap();
        assert_eq!(rx.recv().unwrap(), round);
        if round % 2 == 0 {
            drop(tx);
            drop(rx);
        } else {
            drop(rx);
            drop(tx);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.join().unwrap();
}
