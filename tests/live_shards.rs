//! Live shard scaling: adding, activating, draining and removing shards
//! of a running sharded channel. The first four tests are the bugs such
//! systems are known for, as regressions: a shard routed to before its
//! consumer is attached, a removed shard's items dropped, a repeated
//! activation that breaks routing, a drain that keeps routing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sump::{
    Builder, Durability, ScalingPolicy, ShardError, ShardId, ShardState, ShardedReceiver, ShardedSender, SinkError,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Event {
    key: u32,
    producer: u32,
    n: u32,
}

type Log = Arc<Mutex<Vec<(ShardId, Event)>>>;

fn open(dir: &std::path::Path, shards: usize) -> (ShardedSender<Event>, ShardedReceiver<Event>) {
    Builder::new("live", dir)
        .durability(Durability::Persistent)
        .memory_capacity(50)
        .segment_bytes(16 * 1024)
        .sharded::<Event>(shards)
        .key(|event: &Event| event.key)
        .open()
        .unwrap()
}

/// Spawns a drainer per shard (and per shard added later) that appends
/// what it delivers to one log, in delivery order.
fn drain_into_log(rx: ShardedReceiver<Event>, log: &Log) -> sump::ShardedDrainHandle<Event> {
    let log = Arc::clone(log);
    rx.drain(move |shard| {
        let log = Arc::clone(&log);
        move |batch: &[Event]| -> Result<(), SinkError> {
            log.lock().unwrap().extend(batch.iter().map(|event| (shard, event.clone())));
            Ok(())
        }
    })
    .configure(|_, drainer| drainer.batch_size(32).linger(Duration::from_millis(1)))
    .spawn()
}

/// Fails unless each producer's items of each key come in the order they
/// were sent, and every item in `expected` came exactly once.
fn check_once_in_key_order<'a>(delivered: impl Iterator<Item = &'a Event>, expected: usize) {
    let mut last: BTreeMap<(u32, u32), u32> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for event in delivered {
        assert!(seen.insert((event.producer, event.n)), "delivered twice: {event:?}");
        if let Some(before) = last.insert((event.producer, event.key), event.n) {
            assert!(before < event.n, "key {} of producer {}: {} after {before}", event.key, event.producer, event.n);
        }
    }
    assert_eq!(seen.len(), expected, "items lost");
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

fn stats_of(tx: &ShardedSender<Event>, id: ShardId) -> sump::ShardStats {
    tx.shard_stats().into_iter().find(|shard| shard.id == id).unwrap()
}

#[test]
fn a_new_shard_is_routed_to_only_once_activated_and_never_strands_an_item() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 2);
    let log = Log::default();
    let handle = drain_into_log(rx, &log);
    let id = tx.add_shard().unwrap();
    assert_eq!((stats_of(&tx, id).state, tx.shard_count()), (ShardState::Provisioned, 2));
    for n in 0..500 {
        tx.send(Event { key: n, producer: 0, n }).unwrap();
    }
    assert_eq!(stats_of(&tx, id).stats.sent, 0, "a provisioned shard was routed to");
    tx.activate_shard(id).unwrap();
    for n in 500..1_000 {
        tx.send(Event { key: n % 500, producer: 0, n }).unwrap();
    }
    assert!(stats_of(&tx, id).stats.sent > 50, "the activated shard got {:?}", stats_of(&tx, id).stats.sent);
    wait_for("every item", Duration::from_secs(20), || log.lock().unwrap().len() >= 1_000);
    let log = log.lock().unwrap();
    assert!(log.iter().any(|(shard, _)| *shard == id), "the new shard's drainer delivered nothing");
    check_once_in_key_order(log.iter().map(|(_, event)| event), 1_000);
    assert_eq!(tx.unrouted(), 0);
    drop(handle);
}

#[test]
fn activating_a_shard_twice_keeps_the_count_and_every_key_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = open(dir.path(), 3);
    // The shard each key goes to, seen through the shards' counters.
    let placement = |tx: &ShardedSender<Event>| -> Vec<ShardId> {
        (0..200)
            .map(|key| {
                let before = tx.shard_stats();
                tx.send(Event { key, producer: 0, n: key }).unwrap();
                let after = tx.shard_stats();
                let moved: Vec<ShardId> =
                    after.iter().zip(&before).filter(|(a, b)| a.stats.sent > b.stats.sent).map(|(a, _)| a.id).collect();
                assert_eq!(moved.len(), 1);
                moved[0]
            })
            .collect()
    };
    let id = tx.add_shard().unwrap();
    tx.activate_shard(id).unwrap();
    let first = placement(&tx);
    tx.activate_shard(id).unwrap();
    tx.activate_shard(id).unwrap();
    assert_eq!(tx.shard_count(), 4);
    assert_eq!(tx.shard_stats().len(), 4);
    assert_eq!(placement(&tx), first, "a repeated activation moved keys");
    // The same keys land where a channel opened with these 4 shards puts them.
    let other = tempfile::tempdir().unwrap();
    let (fresh, _fresh_rx) = open(other.path(), 4);
    assert_eq!(placement(&fresh), first);
    // Rendezvous routing moved only the keys the new shard won.
    assert!(first.iter().filter(|&&shard| shard == id).count() < 100);
}

#[test]
fn a_drained_shard_gets_no_new_items_and_delivers_what_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 3);
    for n in 0..300 {
        tx.send(Event { key: n % 30, producer: 0, n }).unwrap();
    }
    let drained = tx.shard_stats()[1].id;
    let held = stats_of(&tx, drained).stats.sent;
    assert!(held > 0);
    tx.drain_shard(drained).unwrap();
    tx.drain_shard(drained).unwrap();
    assert_eq!((stats_of(&tx, drained).state, tx.shard_count()), (ShardState::Draining, 2));
    for n in 300..900 {
        tx.send(Event { key: n % 30, producer: 0, n }).unwrap();
    }
    assert_eq!(stats_of(&tx, drained).stats.sent, held, "a draining shard was routed to");
    let mut got = Vec::new();
    while got.len() < 900 {
        got.push(rx.recv_timeout(Duration::from_secs(10)).expect("items stranded"));
    }
    check_once_in_key_order(got.iter(), 900);
    tx.remove_shard(drained).unwrap();
    tx.remove_shard(drained).unwrap();
    assert!(tx.shard_stats().iter().all(|shard| shard.id != drained));
    assert!(rx.try_recv().is_err());
    assert!(!dir.path().join("live/shard-001").exists(), "the removed shard's files stay");
}

#[test]
fn removing_a_shard_that_holds_items_is_refused_and_nothing_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 2);
    for n in 0..400 {
        tx.send(Event { key: n % 40, producer: 0, n }).unwrap();
    }
    let id = tx.shard_stats()[1].id;
    assert!(matches!(tx.remove_shard(id), Err(ShardError::WrongState { state: ShardState::Active, .. })));
    tx.drain_shard(id).unwrap();
    match tx.remove_shard(id) {
        Err(ShardError::NotDrained { shard, waiting }) => {
            assert_eq!((shard, waiting), (id, stats_of(&tx, id).backlog()))
        }
        other => panic!("{other:?}"),
    }
    // The draining state, and the items, outlive a restart.
    drop((tx, rx));
    let (tx, rx) = open(dir.path(), 1);
    assert_eq!(stats_of(&tx, id).state, ShardState::Draining);
    assert!(matches!(tx.remove_shard(id), Err(ShardError::NotDrained { .. })));
    let mut got = Vec::new();
    while got.len() < 400 {
        got.push(rx.recv_timeout(Duration::from_secs(10)).expect("items lost"));
    }
    check_once_in_key_order(got.iter(), 400);
    rx.remove_shard(id).unwrap();
    assert_eq!(tx.shard_stats().len(), 1);
    assert!(matches!(tx.remove_shard(tx.shard_stats()[0].id), Err(ShardError::WrongState { .. })));
    assert!(matches!(tx.drain_shard(tx.shard_stats()[0].id), Err(ShardError::OutOfBounds { .. })));
}

#[test]
fn per_key_order_holds_across_an_activation_and_a_drain_with_backlogs_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 2);
    // Backlogs first, with nobody consuming; then a change; then more.
    let mut n = 0;
    let mut send = |count: u32| {
        for _ in 0..count {
            tx.send(Event { key: n % 50, producer: 0, n }).unwrap();
            n += 1;
        }
    };
    send(2_000);
    let added = tx.add_shard().unwrap();
    tx.activate_shard(added).unwrap();
    assert!(stats_of(&tx, added).handing_over || stats_of(&tx, added).stats.sent == 0);
    send(2_000);
    assert!(stats_of(&tx, added).handing_over, "the new shard's keys were not held back");
    tx.drain_shard(tx.shard_stats()[0].id).unwrap();
    send(2_000);
    let log = Log::default();
    let handle = drain_into_log(rx, &log);
    wait_for("every item", Duration::from_secs(30), || log.lock().unwrap().len() >= 6_000);
    check_once_in_key_order(log.lock().unwrap().iter().map(|(_, event)| event), 6_000);
    wait_for("the hand-overs to finish", Duration::from_secs(5), || {
        tx.shard_stats().iter().all(|shard| !shard.handing_over)
    });
    drop(handle);
}

#[test]
fn a_key_moved_by_a_drain_and_then_an_activation_keeps_its_order() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 2);
    // Which keys live in shard 1, then nothing waiting anywhere.
    let mut on_one = Vec::new();
    for key in 0..60 {
        let before = stats_of(&tx, tx.shard_stats()[1].id).stats.sent;
        tx.send(Event { key, producer: 9, n: key }).unwrap();
        if stats_of(&tx, tx.shard_stats()[1].id).stats.sent > before {
            on_one.push(key);
        }
    }
    while rx.try_recv().is_ok() {}
    assert!(rx.try_recv().is_err() && on_one.len() > 5);
    let mut n = 0;
    let mut send = |count: u32| {
        for _ in 0..count {
            tx.send(Event { key: on_one[n as usize % on_one.len()], producer: 0, n }).unwrap();
            n += 1;
        }
    };
    // A backlog in shard 1 only; its keys move to shard 0, then some of
    // them on to a new shard, with nothing sent between the changes.
    send(300);
    let drained = tx.shard_stats()[1].id;
    tx.drain_shard(drained).unwrap();
    let added = tx.add_shard().unwrap();
    tx.activate_shard(added).unwrap();
    send(300);
    assert!(stats_of(&tx, added).stats.sent > 0, "no key moved to the new shard");
    let mut got = Vec::new();
    while got.len() < 600 {
        got.push(rx.recv_timeout(Duration::from_secs(10)).expect("items stranded"));
    }
    check_once_in_key_order(got.iter(), 600);
}

#[test]
fn scaling_every_few_milliseconds_under_load_delivers_every_item_once_in_key_order() {
    const PRODUCERS: u32 = 4;
    const PER_PRODUCER: u32 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 2);
    let log = Log::default();
    let handle = drain_into_log(rx, &log);
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|producer| {
            let tx = tx.clone();
            thread::spawn(move || {
                for n in 0..PER_PRODUCER {
                    tx.send(Event { key: (n * 7 + producer) % 64, producer, n }).unwrap();
                }
            })
        })
        .collect();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut added, mut drained, mut removed) = (0, 0, 0);
    let mut change = |tx: &ShardedSender<Event>| {
        let shards = tx.shard_stats();
        let active: Vec<ShardId> =
            shards.iter().filter(|shard| shard.state == ShardState::Active).map(|shard| shard.id).collect();
        for shard in shards.iter().filter(|shard| shard.state == ShardState::Draining) {
            if handle.remove_shard(shard.id).is_ok() {
                removed += 1;
            }
        }
        if active.len() < 2 || (active.len() < 6 && random() % 2 == 0) {
            let id = tx.add_shard().unwrap();
            tx.activate_shard(id).unwrap();
            added += 1;
        } else {
            let victim = active[(random() % active.len() as u64) as usize];
            tx.drain_shard(victim).unwrap();
            drained += 1;
        }
    };
    let mut changes = 0;
    while !producers.iter().all(|producer| producer.is_finished()) || changes < 20 {
        change(&tx);
        changes += 1;
        thread::sleep(Duration::from_millis(3));
    }
    producers.into_iter().for_each(|producer| producer.join().unwrap());
    let total = (PRODUCERS * PER_PRODUCER) as usize;
    wait_for("every item", Duration::from_secs(60), || log.lock().unwrap().len() >= total);
    check_once_in_key_order(log.lock().unwrap().iter().map(|(_, event)| event), total);
    wait_for("drained shards to be removable", Duration::from_secs(10), || {
        let draining: Vec<ShardId> =
            tx.shard_stats().iter().filter(|shard| shard.state == ShardState::Draining).map(|shard| shard.id).collect();
        draining.into_iter().all(|id| handle.remove_shard(id).is_ok())
    });
    assert!(added >= 3 && drained >= 3 && removed >= 1, "added {added}, drained {drained}, removed {removed}");
    assert_eq!(tx.unrouted(), 0);
    let stats = tx.stats();
    assert_eq!(stats.in_memory as u64 + stats.on_disk, 0);
    let rx = handle.shutdown(Duration::from_secs(1)).unwrap();
    assert!(rx.try_recv().is_err());
}

#[test]
fn the_scaling_policy_adds_shards_under_lag_and_drains_them_when_it_clears() {
    let dir = tempfile::tempdir().unwrap();
    let policy = ScalingPolicy::new(1, 3)
        .add_above(100)
        .drain_below(10)
        .sustained_for(Duration::from_millis(20))
        .cooldown(Duration::from_millis(50))
        .check_every(Duration::from_millis(10));
    let (tx, rx) = Builder::new("scaled", dir.path())
        .durability(Durability::Persistent)
        .memory_capacity(50)
        .sharded::<Event>(1)
        .key(|event: &Event| event.key)
        .scaling(policy.clone())
        .open()
        .unwrap();
    let mut n = 0;
    wait_for("the policy to add shards", Duration::from_secs(20), || {
        for _ in 0..100 {
            tx.send(Event { key: n % 100, producer: 0, n }).unwrap();
            n += 1;
        }
        tx.shard_count() == 3
    });
    // Manual changes keep to the policy's bounds.
    let extra = tx.add_shard().unwrap();
    assert!(matches!(tx.activate_shard(extra), Err(ShardError::OutOfBounds { active: 4, min: 1, max: 3 })));
    tx.remove_shard(extra).unwrap();
    let mut got = Vec::new();
    wait_for("the policy to drain and remove shards", Duration::from_secs(30), || {
        got.extend(rx.try_iter());
        tx.shard_stats().len() == 1
    });
    got.extend(rx.try_iter());
    let shards = tx.shard_stats();
    assert_eq!(tx.shard_count(), 1, "{shards:#?}");
    check_once_in_key_order(got.iter(), n as usize);
    assert_eq!(tx.shard_count(), 1);
    // A restart keeps the policy's count: no reshard back to the builder's.
    drop((tx, rx));
    let (tx, _rx) = Builder::new("scaled", dir.path())
        .durability(Durability::Persistent)
        .memory_capacity(50)
        .sharded::<Event>(2)
        .key(|event: &Event| event.key)
        .scaling(policy)
        .open()
        .unwrap();
    assert_eq!(tx.shard_count(), 1);
}

#[test]
fn a_live_layout_survives_a_restart_and_another_count_scales_it_live() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 2);
    for n in 0..100 {
        tx.send(Event { key: n, producer: 0, n }).unwrap();
    }
    let added = tx.add_shard().unwrap();
    tx.activate_shard(added).unwrap();
    tx.drain_shard(tx.shard_stats()[0].id).unwrap();
    let before: Vec<(ShardId, ShardState)> = tx.shard_stats().iter().map(|shard| (shard.id, shard.state)).collect();
    drop((tx, rx));
    let (tx, rx) = open(dir.path(), 2);
    let after: Vec<(ShardId, ShardState)> = tx.shard_stats().iter().map(|shard| (shard.id, shard.state)).collect();
    assert_eq!(after, before);
    drop((tx, rx));
    let (tx, rx) = open(dir.path(), 3);
    assert_eq!(tx.shard_count(), 3);
    assert_eq!(tx.shard_stats().len(), 4, "scaled live: the draining shard is still there");
    for n in 100..200 {
        tx.send(Event { key: n, producer: 0, n }).unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 200 {
        got.push(rx.recv_timeout(Duration::from_secs(10)).expect("items lost"));
    }
    check_once_in_key_order(got.iter(), 200);
}

#[test]
fn a_channel_with_a_version_1_layout_is_re_sorted_once_and_keeps_every_item() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 3);
    for n in 0..600 {
        tx.send(Event { key: n % 37, producer: 0, n }).unwrap();
    }
    drop((tx, rx));
    // What an older version wrote: 3 shards, dispatched by key, by modulo.
    let mut v1 = Vec::from(*b"SUMPSHRD");
    v1.extend_from_slice(&[1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
    v1.extend_from_slice(&crc32c::crc32c(&v1).to_le_bytes());
    std::fs::write(dir.path().join("live/sump.shards"), &v1).unwrap();
    let (tx, rx) = open(dir.path(), 3);
    let layout = std::fs::read(dir.path().join("live/sump.shards")).unwrap();
    assert_eq!(layout[8..10], [2, 0], "the layout was not rewritten as version 2");
    drop(tx);
    let got: Vec<Event> = rx.iter().collect();
    check_once_in_key_order(got.iter(), 600);
}

/// The channel of the kill -9 test: every acknowledged item on disk.
fn open_write_ahead(dir: &std::path::Path) -> (ShardedSender<Event>, ShardedReceiver<Event>) {
    Builder::new("live", dir)
        .durability(Durability::WriteAhead)
        .memory_capacity(0)
        .segment_bytes(16 * 1024)
        .sharded::<Event>(2)
        .key(|event: &Event| event.key)
        .open()
        .unwrap()
}

/// The child of the kill -9 test: sends numbered items while another
/// thread adds, activates, drains and removes shards as fast as it can,
/// printing each number once its send returned.
#[test]
#[ignore = "run by the kill -9 test as a child process"]
fn child_sends_while_scaling() {
    let dir = std::env::var("SUMP_LIVE_DIR").unwrap();
    let start: u32 = std::env::var("SUMP_LIVE_START").unwrap().parse().unwrap();
    let (tx, rx) = open_write_ahead(std::path::Path::new(&dir));
    let scaler = tx.clone();
    let mark = std::env::var("SUMP_LIVE_MARK").unwrap();
    thread::spawn(move || loop {
        let shards = scaler.shard_stats();
        let active: Vec<ShardId> =
            shards.iter().filter(|shard| shard.state == ShardState::Active).map(|shard| shard.id).collect();
        for shard in &shards {
            // Refused for shards that hold items: nothing consumes here.
            let _ = scaler.remove_shard(shard.id);
        }
        // A shard left provisioned is removed next round. Activations
        // are bounded, so that restarts and the final drain stay quick:
        // drained shards keep their items.
        let id = scaler.add_shard().unwrap();
        if active.len() < 4 && shards.len() < 40 {
            scaler.activate_shard(id).unwrap();
        }
        if active.len() > 2 {
            scaler.drain_shard(active[0]).unwrap();
            std::fs::write(&mark, b"drained").unwrap();
        }
        thread::sleep(Duration::from_millis(2));
    });
    for n in start.. {
        tx.send(Event { key: n % 16, producer: 0, n }).unwrap();
        println!("item:{n}");
    }
    drop(rx);
}

#[test]
fn kill_9_during_live_changes_loses_no_acknowledged_item_and_keeps_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged = BTreeSet::new();
    for trial in 0..6u32 {
        let mut child = common::this_test("child_sends_while_scaling");
        child.arg("--ignored");
        let mark = dir.path().join(format!("drained-{trial}"));
        child.env("SUMP_LIVE_DIR", dir.path()).env("SUMP_LIVE_START", (trial * 1_000_000).to_string());
        child.env("SUMP_LIVE_MARK", &mark);
        let generation = |dir: &std::path::Path| {
            let bytes = std::fs::read(dir.join("live/sump.shards")).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let at = text.find("\"generation\":").map(|at| at + 13);
            at.map_or(0, |at| text[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse::<u64>().unwrap())
        };
        let before = generation(dir.path());
        let printed = common::run_and_kill(child, Duration::from_millis(50 + 60 * u64::from(trial)));
        assert!(printed.len() > 10, "trial {trial}: the child sent almost nothing");
        assert!(generation(dir.path()) > before, "trial {trial}: the child changed no shard");
        assert!(mark.exists() || trial > 2, "trial {trial}: the child's scaling thread drained no shard");
        acknowledged.extend(printed.into_iter().map(|n| n as u32));
    }
    let (tx, rx) = open_write_ahead(dir.path());
    drop(tx);
    let mut last: BTreeMap<u32, u32> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for event in rx.iter() {
        assert!(seen.insert(event.n), "delivered twice: {event:?}");
        if let Some(before) = last.insert(event.key, event.n) {
            assert!(before < event.n, "key {}: {} after {before}", event.key, event.n);
        }
    }
    let lost: Vec<&u32> = acknowledged.difference(&seen).collect();
    assert!(lost.is_empty(), "{} acknowledged items lost, the first {:?}", lost.len(), &lost[..lost.len().min(5)]);
}
