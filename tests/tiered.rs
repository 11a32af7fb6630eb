//! Tiered storage against a directory store: a backlog ten times the
//! local bound goes through the store and comes back in order, across a
//! clean restart and kill -9; a store that is down, a missing object and
//! a damaged object; the local bound holds throughout.
//!
//! The kill -9 tests run 20 trials each by default; set
//! `SUMP_CRASH_TRIALS` for more.

mod common;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sump::{Builder, DirStore, Durability, OpenError, RemoteStore, SyncPolicy, WhenFull};

const SEGMENT_BYTES: u64 = 16 << 10;
const MAX_DISK_BYTES: u64 = 128 << 10;
const OFFLOAD_AFTER: u64 = 64 << 10;
/// An item's payload: with its frame, about 130 items per segment.
const PAYLOAD: usize = 100;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Item {
    n: u64,
    payload: Vec<u8>,
}

fn item(n: u64) -> Item {
    Item { n, payload: vec![(n % 251) as u8; PAYLOAD] }
}

/// A directory store in `path`, created.
fn dir_store(path: impl AsRef<Path>) -> DirStore {
    DirStore::create(path.as_ref()).unwrap()
}

fn builder(local: &Path) -> Builder {
    Builder::new("tiered", local)
        .durability(Durability::WriteAhead)
        .sync(SyncPolicy::Never)
        .memory_capacity(0)
        .segment_bytes(SEGMENT_BYTES)
        .max_disk_bytes(MAX_DISK_BYTES)
        .offload_after_bytes(OFFLOAD_AFTER)
        .when_full(WhenFull::Block)
}

fn open(local: &Path, store: impl RemoteStore) -> (sump::Sender<Item>, sump::Receiver<Item>) {
    builder(local).remote(store).open().unwrap()
}

/// Items for ten times the local bound.
fn ten_times_the_bound() -> u64 {
    10 * MAX_DISK_BYTES / (PAYLOAD as u64 + 16)
}

/// Segment objects in the store (each channel also keeps one small
/// marker object there).
fn objects(store: &DirStore) -> usize {
    store.list("").unwrap().iter().filter(|key| !key.ends_with("-marker")).count()
}

/// Receives `count` items and checks they are `from..from + count`.
fn expect_in_order(rx: &sump::Receiver<Item>, from: u64, count: u64) {
    for n in from..from + count {
        let got = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|err| panic!("item {n}: {err:?}"));
        assert_eq!(got, item(n), "items come back in order");
    }
}

#[test]
fn a_backlog_ten_times_the_local_bound_goes_through_the_store_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path().join("remote"));
    let (tx, rx) = open(&dir.path().join("local"), store.clone());
    let items = ten_times_the_bound();
    let mut peak_local = 0;
    for n in 0..items {
        tx.send(item(n)).unwrap();
        peak_local = peak_local.max(tx.stats().disk_bytes);
    }
    let stats = tx.stats();
    assert!(stats.remote_segments > 0 && stats.remote_bytes > 0, "{stats:?}");
    assert!(stats.uploads as usize >= stats.remote_segments, "{stats:?}");
    assert_eq!(stats.on_disk, items, "remote records count as on disk");
    assert!(peak_local <= MAX_DISK_BYTES, "local disk {peak_local} over its bound");
    assert!(objects(&store) > 0);
    expect_in_order(&rx, 0, items);
    let stats = rx.stats();
    assert_eq!((stats.lost, stats.corrupt, stats.remote_segments), (0, 0, 0), "{stats:?}");
    assert!(stats.fetches > 0, "{stats:?}");
    // Consumed remote segments are deleted from the store.
    let deadline = Instant::now() + Duration::from_secs(10);
    while objects(&store) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(objects(&store), 0, "every object deleted once read");
}

#[test]
fn a_remote_backlog_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path().join("remote"));
    let local = dir.path().join("local");
    let items = ten_times_the_bound();
    let (tx, rx) = open(&local, store.clone());
    for n in 0..items {
        tx.send(item(n)).unwrap();
    }
    // Half read, the rest left for the next run.
    expect_in_order(&rx, 0, items / 2);
    drop((tx, rx));
    let (tx, rx) = open(&local, store.clone());
    assert_eq!(rx.stats().on_disk, items - items / 2);
    drop(tx);
    expect_in_order(&rx, items / 2, items - items / 2);
    assert!(rx.recv().is_err(), "nothing more");
    assert_eq!(rx.stats().lost, 0);
}

#[test]
fn a_channel_with_remote_segments_refuses_to_open_without_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path().join("remote"));
    let local = dir.path().join("local");
    let (tx, rx) = open(&local, store.clone());
    for n in 0..ten_times_the_bound() {
        tx.send(item(n)).unwrap();
    }
    assert!(tx.stats().remote_segments > 0);
    drop((tx, rx));
    let err = builder(&local).open::<Item>().unwrap_err();
    match &err {
        OpenError::InvalidConfig { reason } => assert!(reason.contains("remote store"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Nothing changed: with the store it opens and delivers everything.
    let (tx, rx) = open(&local, store);
    drop(tx);
    expect_in_order(&rx, 0, ten_times_the_bound());
}

#[test]
fn offload_after_bytes_must_be_below_the_local_bound() {
    let dir = tempfile::tempdir().unwrap();
    let err = builder(dir.path())
        .offload_after_bytes(MAX_DISK_BYTES)
        .remote(dir_store(dir.path().join("remote")))
        .open::<Item>()
        .unwrap_err();
    assert!(matches!(err, OpenError::InvalidConfig { .. }), "{err:?}");
}

/// A store that can be switched off, and counts its calls.
#[derive(Debug, Clone)]
struct Switchable {
    inner: DirStore,
    down: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    /// Deletes fail while set.
    deletes_down: Arc<AtomicBool>,
    /// Listings always fail (a store policy without ListBucket).
    lists_fail: bool,
    /// The next put panics.
    panic_next_put: Arc<AtomicBool>,
}

impl Switchable {
    fn new(root: &Path) -> Switchable {
        Switchable {
            inner: dir_store(root),
            down: Arc::new(AtomicBool::new(false)),
            calls: Arc::new(AtomicU64::new(0)),
            deletes_down: Arc::new(AtomicBool::new(false)),
            lists_fail: false,
            panic_next_put: Arc::new(AtomicBool::new(false)),
        }
    }

    fn check(&self) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "the store is down"));
        }
        Ok(())
    }
}

impl RemoteStore for Switchable {
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        self.check()?;
        if self.panic_next_put.swap(false, Ordering::Relaxed) {
            panic!("a store that panics");
        }
        self.inner.put(key, data)
    }
    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.check()?;
        self.inner.get(key)
    }
    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        self.check()?;
        self.inner.size(key)
    }
    fn delete(&self, key: &str) -> io::Result<()> {
        self.check()?;
        if self.deletes_down.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "deletes are refused"));
        }
        self.inner.delete(key)
    }
    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.check()?;
        if self.lists_fail {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "listing is not allowed"));
        }
        self.inner.list(prefix)
    }
}

#[test]
fn a_store_that_is_down_blocks_nobody_while_local_space_remains_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Switchable::new(&dir.path().join("remote"));
    let down = Arc::clone(&store.down);
    down.store(true, Ordering::Relaxed);
    let (tx, rx) = open(&dir.path().join("local"), store.clone());
    // With the store down, sends go on until the local bound: try_send
    // never waits, so every one of these succeeding shows nobody blocked.
    let fits = OFFLOAD_AFTER / (PAYLOAD as u64 + 16);
    for n in 0..fits {
        tx.try_send(item(n)).unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    let stats = tx.stats();
    assert!(stats.remote_failures > 0, "the tier tried and failed: {stats:?}");
    assert_eq!((stats.uploads, stats.remote_segments), (0, 0), "{stats:?}");
    // A sender that goes on now blocks at the local bound, until the store
    // is back.
    let items = ten_times_the_bound();
    let sender = thread::spawn(move || {
        for n in fits..items {
            tx.send(item(n)).unwrap();
        }
        tx
    });
    thread::sleep(Duration::from_millis(300));
    assert!(!sender.is_finished(), "the local bound holds while the store is down");
    assert!(rx.stats().disk_bytes <= MAX_DISK_BYTES);
    down.store(false, Ordering::Relaxed);
    let tx = sender.join().unwrap();
    drop(tx);
    expect_in_order(&rx, 0, items);
    assert_eq!(rx.stats().lost, 0);
}

#[test]
fn a_missing_or_damaged_object_costs_only_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path().join("remote"));
    let local = dir.path().join("local");
    let items = ten_times_the_bound();
    let (tx, rx) = open(&local, store.clone());
    for n in 0..items {
        tx.send(item(n)).unwrap();
    }
    drop((tx, rx));
    let mut keys: Vec<String> = store.list("").unwrap().into_iter().filter(|key| key.ends_with(".seg")).collect();
    keys.sort();
    assert!(keys.len() >= 3, "{keys:?}");
    // One object deleted, one damaged by another program.
    store.delete(&keys[0]).unwrap();
    let mut bytes = store.get(&keys[1]).unwrap().unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(store.root().join(&keys[1]), bytes).unwrap();
    let (tx, rx) = open(&local, store.clone());
    drop(tx);
    let mut got = Vec::new();
    while let Ok(next) = rx.recv_timeout(Duration::from_secs(20)) {
        assert_eq!(next, item(next.n), "payload intact");
        got.push(next.n);
    }
    let stats = rx.stats();
    assert!(stats.lost > 0, "the two segments' records are counted: {stats:?}");
    assert_eq!(got.len() as u64 + stats.lost, items, "only their records are missing");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "what arrives is in order");
}

#[test]
fn a_store_that_is_not_the_one_written_to_loses_nothing() {
    // The remote directory as an unmounted mount point would show it: empty.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let items = ten_times_the_bound();
    let (tx, rx) = open(&local, dir_store(dir.path().join("remote")));
    for n in 0..items {
        tx.send(item(n)).unwrap();
    }
    assert!(tx.stats().remote_segments > 0);
    drop((tx, rx));
    let (tx, rx) = open(&local, dir_store(dir.path().join("elsewhere")));
    drop(tx);
    let mut got = 0;
    while rx.recv_timeout(Duration::from_secs(1)).is_ok() {
        got += 1;
    }
    let stats = rx.stats();
    assert!(got < items, "the remote segments could not be fetched");
    assert_eq!(stats.lost, 0, "a missing object is not lost while the channel's marker is missing too: {stats:?}");
    assert!(stats.remote_failures > 0, "{stats:?}");
    drop(rx);
    // With the right store, everything not yet delivered comes.
    let (tx, rx) = open(&local, dir_store(dir.path().join("remote")));
    drop(tx);
    expect_in_order(&rx, got, items - got);
    assert_eq!(rx.stats().lost, 0);
}

#[test]
fn a_store_that_refuses_listings_still_offloads_and_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Switchable { lists_fail: true, ..Switchable::new(&dir.path().join("remote")) };
    let (tx, rx) = open(&dir.path().join("local"), store);
    let items = ten_times_the_bound();
    for n in 0..items {
        tx.send(item(n)).unwrap();
    }
    let stats = tx.stats();
    assert!(stats.uploads > 0 && stats.remote_failures > 0, "the sweep fails, uploads go on: {stats:?}");
    drop(tx);
    expect_in_order(&rx, 0, items);
}

#[test]
fn a_store_that_panics_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let store = Switchable::new(&dir.path().join("remote"));
    store.panic_next_put.store(true, Ordering::Relaxed);
    let (tx, rx) = open(&dir.path().join("local"), store);
    let items = ten_times_the_bound();
    for n in 0..items {
        tx.send(item(n)).unwrap();
    }
    let stats = tx.stats();
    assert!(stats.uploads > 0 && stats.remote_failures > 0, "{stats:?}");
    drop(tx);
    expect_in_order(&rx, 0, items);
}

#[test]
fn items_written_at_shutdown_never_take_the_id_of_a_consumed_remote_segment() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let store = Switchable::new(&dir.path().join("remote"));
    let deletes_down = Arc::clone(&store.deletes_down);
    let open_with_memory = |store: Switchable| {
        builder(&local)
            .memory_capacity(100)
            .durability(Durability::Persistent)
            .offload_after_bytes(SEGMENT_BYTES)
            .remote(store)
            .open::<Item>()
            .unwrap()
    };
    let (tx, rx) = open_with_memory(store.clone());
    // Remote deletes fail: consumed segments stay listed as read.
    deletes_down.store(true, Ordering::Relaxed);
    let items = ten_times_the_bound();
    for n in 0..items {
        tx.send(item(n)).unwrap();
    }
    // Let the tier offload the newest sealed segment too: it is the one
    // just below the active segment, whose id a shutdown would reuse.
    let start = Instant::now();
    while tx.stats().disk_bytes > 4 * SEGMENT_BYTES + SEGMENT_BYTES / 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", tx.stats());
        thread::sleep(Duration::from_millis(5));
    }
    expect_in_order(&rx, 0, items);
    // The disk is empty: the next 100 stay in memory, the 50 after them
    // spill; the clean shutdown writes the 100 in front of the 50, in a
    // segment of its own with an id below the oldest owned one.
    for n in items..items + 150 {
        tx.send(item(n)).unwrap();
    }
    assert_eq!(tx.stats().in_memory, 100);
    drop((tx, rx));
    deletes_down.store(false, Ordering::Relaxed);
    let (tx, rx) = open_with_memory(store);
    drop(tx);
    expect_in_order(&rx, items, 150);
    assert_eq!(rx.stats().lost, 0);
}

#[test]
fn a_local_bound_too_small_to_offload_anything_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = builder(dir.path())
        .max_disk_bytes(4 * SEGMENT_BYTES)
        .offload_after_bytes(SEGMENT_BYTES)
        .remote(dir_store(dir.path().join("remote")))
        .open::<Item>()
        .unwrap_err();
    match err {
        OpenError::InvalidConfig { reason } => assert!(reason.contains("fetch_ahead + 3"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let err =
        builder(dir.path()).max_segments(4).remote(dir_store(dir.path().join("remote"))).open::<Item>().unwrap_err();
    match err {
        OpenError::InvalidConfig { reason } => assert!(reason.contains("max_segments (4)"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_overflow_channel_opens_without_its_store_and_a_durable_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    for durability in [Durability::Overflow, Durability::WriteAhead] {
        let local = dir.path().join(format!("{durability:?}"));
        let (tx, rx) =
            builder(&local).durability(durability).remote(dir_store(dir.path().join("remote"))).open().unwrap();
        for n in 0..ten_times_the_bound() {
            tx.send(item(n)).unwrap();
        }
        assert!(tx.stats().remote_segments > 0);
        drop((tx, rx));
        let reopened = builder(&local).durability(durability).open::<Item>();
        match durability {
            // Scratch space: nothing of it was wanted.
            Durability::Overflow => assert_eq!(reopened.unwrap().1.stats().on_disk, 0),
            _ => assert!(matches!(reopened, Err(OpenError::InvalidConfig { .. }))),
        }
    }
}

#[test]
fn at_max_remote_bytes_nothing_more_is_offloaded_and_the_local_bound_decides() {
    let dir = tempfile::tempdir().unwrap();
    let max_remote = 3 * SEGMENT_BYTES;
    let (tx, rx) = builder(&dir.path().join("local"))
        .max_remote_bytes(max_remote)
        .remote(dir_store(dir.path().join("remote")))
        .open::<Item>()
        .unwrap();
    let mut sent = 0;
    let start = Instant::now();
    loop {
        match tx.send_timeout(item(sent), Duration::from_millis(300)) {
            Ok(()) => sent += 1,
            Err(err) => {
                assert!(err.is_timeout(), "{err:?}");
                break;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the bounds never held");
    }
    let stats = tx.stats();
    assert!(stats.remote_bytes > 0 && stats.remote_bytes <= max_remote, "{stats:?}");
    assert!(stats.disk_bytes <= MAX_DISK_BYTES, "{stats:?}");
    drop(tx);
    expect_in_order(&rx, 0, sent);
}

/// In a child process: the role named by `SUMP_TIER_ROLE`, until killed.
fn child() -> bool {
    let Ok(role) = std::env::var("SUMP_TIER_ROLE") else { return false };
    let dir = PathBuf::from(std::env::var("SUMP_TIER_DIR").unwrap());
    let store = dir_store(dir.join("remote"));
    let (tx, rx) = open(&dir.join("local"), store);
    let mut out = io::stdout().lock();
    match role.as_str() {
        "send" => {
            // The receiver stays, idle: the backlog grows into the store.
            let _rx = rx;
            for n in 0.. {
                tx.send(item(n)).unwrap();
                writeln!(out, "item:{n}").unwrap(); // acknowledged
                out.flush().unwrap();
            }
        }
        "recv" => {
            drop(tx);
            while let Ok(got) = rx.recv() {
                writeln!(out, "item:{}", got.n).unwrap(); // received
                out.flush().unwrap();
                if got.n % 4 == 0 {
                    thread::sleep(Duration::from_micros(50));
                }
            }
            thread::sleep(Duration::from_secs(60));
        }
        _ => unreachable!(),
    }
    true
}

fn trials() -> u64 {
    std::env::var("SUMP_CRASH_TRIALS").ok().and_then(|n| n.parse().ok()).unwrap_or(20)
}

/// Delay before the kill for trial `n`: spread over 5..150 ms.
fn delay(n: u64) -> Duration {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x >> 29;
    Duration::from_millis(5 + x % 145)
}

/// Runs `role` in a child, kills it with SIGKILL `after` its first line,
/// and returns the numbers it printed.
fn run_and_kill(test: &str, role: &str, dir: &Path, after: Duration) -> Vec<u64> {
    let mut child = common::this_test(test);
    child.env("SUMP_TIER_ROLE", role).env("SUMP_TIER_DIR", dir);
    common::run_and_kill(child, after)
}

#[test]
fn a_sender_killed_while_offloading_loses_nothing_whose_send_returned() {
    if child() {
        return;
    }
    let name = "a_sender_killed_while_offloading_loses_nothing_whose_send_returned";
    let mut offloaded = 0;
    for trial in 0..trials() {
        let dir = tempfile::tempdir().unwrap();
        let acked = run_and_kill(name, "send", dir.path(), delay(trial) * 2);
        let last_acked = *acked.last().unwrap();
        let (tx, rx) = open(&dir.path().join("local"), dir_store(dir.path().join("remote")));
        drop(tx);
        offloaded += rx.stats().remote_segments;
        let mut next = 0;
        while let Ok(got) = rx.recv_timeout(Duration::from_secs(20)) {
            assert_eq!(got, item(next), "trial {trial}: in order, no gaps, no repeats");
            next += 1;
        }
        assert!(next > last_acked, "trial {trial}: acked up to {last_acked}, recovered {next}");
        assert_eq!((rx.stats().lost, rx.stats().corrupt), (0, 0), "trial {trial}");
    }
    assert!(offloaded > 0, "some trials were killed with segments in the store");
}

#[test]
fn a_receiver_killed_while_fetching_loses_nothing_and_repeats_at_most_its_segment() {
    if child() {
        return;
    }
    let name = "a_receiver_killed_while_fetching_loses_nothing_and_repeats_at_most_its_segment";
    let items = ten_times_the_bound();
    let per_segment = SEGMENT_BYTES / (PAYLOAD as u64 + 16) + 1;
    let mut repeated_max = 0;
    let mut killed_past_the_local_segments = 0;
    for trial in 0..trials() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (tx, rx) = open(&dir.path().join("local"), dir_store(dir.path().join("remote")));
            for n in 0..items {
                tx.send(item(n)).unwrap();
            }
            assert!(tx.stats().remote_segments > 0);
            drop((tx, rx));
        }
        let received = run_and_kill(name, "recv", dir.path(), delay(trial) * 2);
        if received.len() as u64 > 4 * per_segment && (received.len() as u64) < items {
            killed_past_the_local_segments += 1;
        }
        assert_eq!(received, (0..received.len() as u64).collect::<Vec<_>>(), "trial {trial}");
        let (tx, rx) = open(&dir.path().join("local"), dir_store(dir.path().join("remote")));
        drop(tx);
        let first = rx.recv_timeout(Duration::from_secs(20)).map_or(items, |got| got.n);
        let repeated = (received.len() as u64).saturating_sub(first);
        repeated_max = repeated_max.max(repeated);
        assert!(first <= received.len() as u64, "trial {trial}: nothing skipped");
        assert!(repeated <= per_segment, "trial {trial}: {repeated} repeated, more than a segment");
        let mut next = first + 1;
        while next < items {
            let got = rx.recv_timeout(Duration::from_secs(20)).unwrap();
            assert_eq!(got, item(next), "trial {trial}");
            next += 1;
        }
        assert_eq!(rx.stats().lost, 0, "trial {trial}");
    }
    assert!(killed_past_the_local_segments > 0, "some kills came while remote segments were read");
    println!("at most {repeated_max} items delivered again after a kill");
}
