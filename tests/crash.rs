//! Crash tests: a child process using a `WriteAhead` channel is killed
//! with SIGKILL at a random moment, and the parent reopens the channel.
//!
//! - A sender killed mid-stream: every item whose `send` returned is
//!   recovered, in order, none corrupt.
//! - A receiver killed mid-stream: nothing is lost; items it had received
//!   from the segment it was reading come again (the at-least-once window,
//!   measured and bounded here).
//!
//! - A drainer killed mid-stream: nothing its sink had not accepted is
//!   lost; segments it read stay until their items are delivered.
//! - A receiver killed while it holds peeked batches: nothing it had not
//!   committed is lost, and every item keeps its sequence number.
//! - A sharded channel killed while `open` moves its backlog to a new
//!   shard count: the next open finishes the move; nothing is lost and
//!   each key's items keep their order (a move that was cut short may
//!   deliver some twice).
//!
//! 20 trials each by default; set `SUMP_CRASH_TRIALS` for more.

mod common;

use std::io::Write;
use std::path::Path;
use std::thread;
use std::time::Duration;

use sump::{Builder, Durability, SyncPolicy};

const SEGMENT_BYTES: u64 = 4_096;

fn open(dir: &Path) -> (sump::Sender<u64>, sump::Receiver<u64>) {
    open_with(dir, SyncPolicy::Always)
}

fn open_with(dir: &Path, sync: SyncPolicy) -> (sump::Sender<u64>, sump::Receiver<u64>) {
    Builder::new("crash", dir)
        .durability(Durability::WriteAhead)
        .sync(sync)
        .segment_bytes(SEGMENT_BYTES)
        .open()
        .unwrap()
}

/// Fills a channel in `dir` with `0..items` and closes it cleanly.
fn prefill(dir: &Path, items: u64) {
    let (tx, rx) = open_with(dir, SyncPolicy::Never);
    for i in 0..items {
        tx.send(i).unwrap();
    }
    drop((tx, rx));
}

fn trials() -> u64 {
    std::env::var("SUMP_CRASH_TRIALS").ok().and_then(|n| n.parse().ok()).unwrap_or(20)
}

/// Delay before the kill for trial `n`: spread over 5..80 ms.
fn delay(n: u64) -> Duration {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x >> 29;
    Duration::from_millis(5 + x % 75)
}

/// In a child process: do the role named by `SUMP_CRASH_ROLE` until killed.
fn child() -> bool {
    let Ok(role) = std::env::var("SUMP_CRASH_ROLE") else { return false };
    let dir = std::env::var("SUMP_CRASH_DIR").unwrap();
    if role == "reshard" {
        println!("item:0"); // started
        let opened = open_sharded(Path::new(&dir), 2);
        println!("item:1"); // the reshard is done
        thread::sleep(Duration::from_secs(60));
        drop(opened);
        return true;
    }
    let (tx, rx) = open(Path::new(&dir));
    match role.as_str() {
        "send" => {
            let mut out = std::io::stdout().lock();
            for i in 0.. {
                tx.send(i).unwrap();
                writeln!(out, "item:{i}").unwrap(); // acknowledged: send returned
                out.flush().unwrap();
            }
        }
        "recv" => {
            let mut out = std::io::stdout().lock();
            drop(tx);
            for item in &rx {
                writeln!(out, "item:{item}").unwrap(); // received
                out.flush().unwrap();
                thread::sleep(Duration::from_micros(50));
            }
            // All read: wait to be killed, holding the channel.
            thread::sleep(Duration::from_secs(60));
        }
        "drain" => {
            drop(tx);
            // Batches larger than a segment, and a slow sink: the batch in
            // flight nearly always holds items of a segment already read.
            let handle = sump::Drainer::new(rx, move |batch: &[u64]| -> Result<(), sump::SinkError> {
                thread::sleep(Duration::from_millis(5)); // a slow downstream
                let mut out = std::io::stdout().lock();
                for item in batch {
                    writeln!(out, "item:{item}").unwrap(); // accepted by the sink
                }
                out.flush().unwrap();
                Ok(())
            })
            .batch_size(1_000)
            .spawn();
            thread::sleep(Duration::from_secs(60));
            drop(handle);
        }
        "peek" => {
            drop(tx);
            // Batches that span segments, committed in part. What is
            // committed was printed first, as a sink takes a batch before
            // it is committed: nothing unprinted may be lost.
            let mut out = std::io::stdout().lock();
            while let Ok(batch) = rx.peek_batch(700, Duration::from_secs(1)) {
                let commit = (batch.len() * 2).div_ceil(3);
                assert_eq!(&batch[..], batch.seqs(), "every item kept the number it was sent with");
                for item in &batch[..commit] {
                    writeln!(out, "item:{item}").unwrap();
                }
                out.flush().unwrap();
                batch.commit_first(commit).unwrap();
                thread::sleep(Duration::from_millis(2));
            }
            thread::sleep(Duration::from_secs(60));
        }
        other => panic!("unknown role {other}"),
    }
    true
}

/// Runs the child in `role` on `dir`, kills it after `after`, and returns
/// the numbers it printed.
fn run_and_kill(test: &str, role: &str, dir: &Path, after: Duration) -> Vec<u64> {
    let mut child = common::this_test(test);
    child.env("SUMP_CRASH_ROLE", role).env("SUMP_CRASH_DIR", dir);
    common::run_and_kill(child, after)
}

#[test]
fn a_sender_killed_mid_stream_loses_nothing_whose_send_returned() {
    if child() {
        return;
    }
    for trial in 0..trials() {
        let dir = tempfile::tempdir().unwrap();
        let acked = run_and_kill(
            "a_sender_killed_mid_stream_loses_nothing_whose_send_returned",
            "send",
            dir.path(),
            delay(trial),
        );
        let last_acked = *acked.last().unwrap();
        let (tx, rx) = open(dir.path());
        drop(tx);
        let got: Vec<u64> = rx.iter().collect();
        assert_eq!(rx.stats().corrupt, 0, "trial {trial}");
        assert!(got.len() as u64 > last_acked, "trial {trial}: acked up to {last_acked}, recovered {}", got.len());
        assert_eq!(got, (0..got.len() as u64).collect::<Vec<_>>(), "trial {trial}: in order, no gaps");
    }
}

#[test]
fn a_receiver_killed_mid_stream_loses_nothing_and_redelivers_at_most_its_open_segment() {
    if child() {
        return;
    }
    const ITEMS: u64 = 3_000;
    let mut widest = 0;
    for trial in 0..trials() {
        let dir = tempfile::tempdir().unwrap();
        prefill(dir.path(), ITEMS);
        let received = run_and_kill(
            "a_receiver_killed_mid_stream_loses_nothing_and_redelivers_at_most_its_open_segment",
            "recv",
            dir.path(),
            delay(trial),
        );
        assert_eq!(received, (0..received.len() as u64).collect::<Vec<_>>());
        let next = received.len() as u64;
        let (tx, rx) = open(dir.path());
        drop(tx);
        let got: Vec<u64> = rx.iter().collect();
        let first = got.first().copied().unwrap_or(ITEMS);
        assert!(first <= next, "trial {trial}: items {first}..{next} were lost");
        assert_eq!(got, (first..ITEMS).collect::<Vec<_>>(), "trial {trial}: everything after, in order");
        widest = widest.max(next - first);
    }
    // A record of a small u64 is 17 to 25 bytes (9 to 17 before segment
    // format 2 added the sequence number): one 4 KiB segment holds at most
    // 240 of them.
    let per_segment = (SEGMENT_BYTES - 16) / 17;
    eprintln!("widest redelivery window: {widest} items (one segment holds at most {per_segment})");
    assert!(widest <= per_segment, "redelivered {widest} items, more than one segment holds");
}

/// Prefills a channel with `0..ITEMS`, runs the child in `role` on it and
/// kills it: the child prints each item it took for good (accepted by a
/// sink, or about to be committed) before taking it. The parent reopens
/// the channel, reads it back with `read_back`, and checks that nothing
/// after the last item printed was lost: every item after it, in order
/// (some printed ones may come again).
fn killed_consumer_loses_nothing_it_had_not_taken(
    test: &str,
    role: &str,
    read_back: fn(&sump::Receiver<u64>, u64) -> Vec<u64>,
) {
    const ITEMS: u64 = 30_000;
    for trial in 0..trials() {
        let dir = tempfile::tempdir().unwrap();
        prefill(dir.path(), ITEMS);
        let taken = run_and_kill(test, role, dir.path(), delay(trial));
        assert_eq!(taken, (0..taken.len() as u64).collect::<Vec<_>>());
        let next = taken.len() as u64;
        let (tx, rx) = open(dir.path());
        drop(tx);
        let got = read_back(&rx, trial);
        let first = got.first().copied().unwrap_or(ITEMS);
        assert!(first <= next, "trial {trial}: items {first}..{next}, never taken, were lost");
        assert_eq!(got, (first..ITEMS).collect::<Vec<_>>(), "trial {trial}");
    }
}

#[test]
fn a_drainer_killed_mid_stream_loses_nothing_its_sink_had_not_accepted() {
    if child() {
        return;
    }
    killed_consumer_loses_nothing_it_had_not_taken(
        "a_drainer_killed_mid_stream_loses_nothing_its_sink_had_not_accepted",
        "drain",
        |rx, _| rx.iter().collect(),
    );
}

#[test]
fn a_receiver_killed_while_it_holds_peeked_batches_loses_nothing_uncommitted() {
    if child() {
        return;
    }
    killed_consumer_loses_nothing_it_had_not_taken(
        "a_receiver_killed_while_it_holds_peeked_batches_loses_nothing_uncommitted",
        "peek",
        |rx, trial| {
            let mut got = Vec::new();
            while let Ok(batch) = rx.peek_batch(4_096, Duration::ZERO) {
                assert_eq!(&batch[..], batch.seqs(), "trial {trial}: numbers unchanged by the crash");
                got.extend_from_slice(&batch);
                batch.commit().unwrap();
            }
            got
        },
    );
}

/// Both halves of the sharded channel of the reshard test: `(key, seq)` items.
type Sharded = (sump::ShardedSender<(u32, u64)>, sump::ShardedReceiver<(u32, u64)>);

fn open_sharded(dir: &Path, shards: usize) -> Sharded {
    Builder::new("sharded", dir)
        .durability(Durability::Persistent)
        .memory_capacity(0)
        .segment_bytes(SEGMENT_BYTES)
        .sharded::<(u32, u64)>(shards)
        .key(|&(key, _): &(u32, u64)| key)
        .open()
        .unwrap()
}

#[test]
fn a_reshard_killed_midway_is_finished_by_the_next_open_without_loss() {
    if child() {
        return;
    }
    const ITEMS: u64 = 40_000;
    let mut finished = 0;
    let mut phases = [0; 3];
    for trial in 0..trials() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open_sharded(dir.path(), 4);
        tx.send_batch((0..ITEMS).map(|seq| ((seq % 23) as u32, seq))).unwrap();
        drop((tx, rx));
        let marks = run_and_kill(
            "a_reshard_killed_midway_is_finished_by_the_next_open_without_loss",
            "reshard",
            dir.path(),
            delay(trial) * 5,
        );
        finished += usize::from(marks.contains(&1));
        // Byte 11 of the layout file is the reshard step the kill cut.
        let layout = std::fs::read(dir.path().join("sharded/sump.shards")).unwrap();
        phases[usize::from(layout[11].min(2))] += 1;
        let (tx, rx) = open_sharded(dir.path(), 3);
        drop(tx);
        let mut seen = std::collections::BTreeSet::new();
        for shard in rx.into_shards() {
            let mut last = std::collections::BTreeMap::new();
            for (key, seq) in shard.iter() {
                if seen.insert(seq) {
                    let before = last.insert(key, seq);
                    assert!(before < Some(seq), "trial {trial}: key {key}: {seq} came after {before:?}");
                }
            }
        }
        assert_eq!(seen.len() as u64, ITEMS, "trial {trial}: items lost");
    }
    eprintln!(
        "{finished} of {} reshards finished before the kill; killed while stable, collecting, distributing: {phases:?}",
        trials()
    );
}
