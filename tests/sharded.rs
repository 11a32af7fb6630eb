//! Sharded channels: per-key order with many producers and drainers, each
//! dispatch mode, batches, and resharding up and down with a backlog.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use sump::{Builder, Dispatch, Durability, OpenError, ShardedReceiver, ShardedSender, SinkError, TryRecvError};

const WAIT: Duration = Duration::from_secs(20);

/// An event: its key, the producer that sent it, and that producer's
/// sequence number.
type Event = (u32, u32, u32);

fn keyed(dir: &std::path::Path, shards: usize, mode: Durability) -> (ShardedSender<Event>, ShardedReceiver<Event>) {
    Builder::new("events", dir)
        .memory_capacity(64)
        .segment_bytes(16 << 10)
        .durability(mode)
        .sharded::<Event>(shards)
        .key(|&(key, _, _): &Event| key)
        .open()
        .unwrap()
}

/// Sends `per_producer` events from each of `producers` threads, keys
/// cycling through `keys`.
fn produce(tx: &ShardedSender<Event>, producers: u32, per_producer: u32, keys: u32) {
    thread::scope(|scope| {
        for producer in 0..producers {
            let tx = tx.clone();
            scope.spawn(move || {
                for seq in 0..per_producer {
                    tx.send(((seq * 7 + producer) % keys, producer, seq)).unwrap();
                }
            });
        }
    });
}

/// Checks that every (key, producer) pair's events come in sequence order
/// and that the events are exactly those produced, each once.
fn check_per_key_order(events: &[Event], producers: u32, per_producer: u32) {
    let mut last: BTreeMap<(u32, u32), u32> = BTreeMap::new();
    for &(key, producer, seq) in events {
        if let Some(&before) = last.get(&(key, producer)) {
            assert!(before < seq, "key {key}, producer {producer}: {seq} came after {before}");
        }
        last.insert((key, producer), seq);
    }
    let unique: BTreeSet<(u32, u32)> = events.iter().map(|&(_, p, s)| (p, s)).collect();
    assert_eq!(unique.len(), events.len(), "an event came twice");
    assert_eq!(events.len() as u64, u64::from(producers * per_producer), "events lost");
}

/// Reads every shard to the end (after the senders are gone), checking
/// each key lives in one shard only; returns everything, shard by shard.
fn drain_shards(rx: ShardedReceiver<Event>) -> Vec<Event> {
    let mut owner: BTreeMap<u32, usize> = BTreeMap::new();
    let mut all = Vec::new();
    for (shard, receiver) in rx.into_shards().into_iter().enumerate() {
        for event in receiver.iter() {
            let first = *owner.entry(event.0).or_insert(shard);
            assert_eq!(first, shard, "key {} is in shards {first} and {shard}", event.0);
            all.push(event);
        }
    }
    all
}

#[test]
fn per_key_order_holds_with_many_producers_and_a_drainer_per_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = keyed(dir.path(), 4, Durability::Overflow);
    assert_eq!((tx.shard_count(), tx.dispatch()), (4, Dispatch::Key));
    let delivered: Vec<Arc<Mutex<Vec<Event>>>> = (0..4).map(|_| Arc::default()).collect();
    let sinks = delivered.clone();
    let handle = rx
        .drain(move |shard| {
            let into = Arc::clone(&sinks[shard.get() as usize]);
            move |batch: &[Event]| -> Result<(), SinkError> {
                into.lock().unwrap().extend_from_slice(batch);
                Ok(())
            }
        })
        .configure(|_, drainer| drainer.batch_size(100).linger(Duration::from_millis(1)))
        .spawn();
    produce(&tx, 6, 5_000, 40);
    assert!(tx.stats().spilled > 0, "the test should make the shards spill");
    let start = std::time::Instant::now();
    while delivered.iter().map(|d| d.lock().unwrap().len()).sum::<usize>() < 30_000 {
        assert!(start.elapsed() < WAIT, "the drainers did not deliver everything");
        thread::sleep(Duration::from_millis(5));
    }
    let stats = handle.stats();
    assert_eq!(stats.len(), 4);
    assert_eq!(stats.iter().map(|s| s.delivered).sum::<u64>(), 30_000);
    assert!(stats.iter().filter(|s| s.delivered > 0).count() >= 3, "keys should spread over the shards: {stats:?}");
    let rx = handle.shutdown(Duration::from_secs(1)).unwrap();
    assert_eq!(rx.stats().received, 30_000);

    let mut owner = BTreeMap::new();
    let mut all = Vec::new();
    for (shard, events) in delivered.iter().enumerate() {
        for &event in events.lock().unwrap().iter() {
            assert_eq!(*owner.entry(event.0).or_insert(shard), shard, "key {} in two shards", event.0);
            all.push(event);
        }
    }
    check_per_key_order(&all, 6, 5_000);
}

#[test]
fn round_robin_spreads_items_evenly_and_broadcast_copies_them_to_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("spread", dir.path()).sharded::<u32>(4).round_robin().open().unwrap();
    assert_eq!(tx.dispatch(), Dispatch::RoundRobin);
    for i in 0..400 {
        tx.send(i).unwrap();
    }
    assert_eq!(rx.shard_stats().iter().map(|s| s.stats.in_memory).collect::<Vec<_>>(), [100; 4]);
    let first: Vec<u32> = rx.into_shards()[1].try_iter().collect();
    assert_eq!(first, (0..100).map(|i| i * 4 + 1).collect::<Vec<_>>());

    let (tx, rx) = Builder::new("fanout", dir.path()).memory_capacity(10).sharded::<u32>(3).broadcast().open().unwrap();
    assert_eq!(tx.dispatch(), Dispatch::Broadcast);
    for i in 0..100 {
        tx.send(i).unwrap();
    }
    tx.send_batch(100..150).unwrap();
    let stats = tx.stats();
    assert_eq!((stats.sent, stats.spilled), (450, 3 * 140));
    let mut shards = rx.into_shards();
    for shard in &shards {
        assert!(shard.try_iter().eq(0..150));
    }
    // A shard whose receiver is gone is skipped; all gone is disconnected.
    drop(shards.remove(0));
    tx.send(150).unwrap();
    tx.try_send(151).unwrap();
    assert!(shards.iter().all(|shard| shard.try_iter().eq(150..152)));
    drop(shards);
    assert!(tx.send(152).unwrap_err().is_disconnected());
    let err = tx.send_batch(153..156).unwrap_err();
    assert!(err.is_disconnected());
    assert_eq!(err.into_inner(), [153, 154, 155], "with every shard gone the items come back");
}

#[test]
fn send_batch_groups_by_shard_keeps_order_and_returns_what_it_could_not_send() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("batch", dir.path())
        .memory_capacity(8)
        .sharded::<(u8, u32)>(3)
        .key(|&(key, _): &(u8, u32)| key)
        .open()
        .unwrap();
    let batch: Vec<(u8, u32)> = (0..300).map(|i| ((i % 5) as u8, i)).collect();
    tx.send_batch(batch.clone()).unwrap();
    assert_eq!(tx.stats().sent, 300);
    assert_eq!(tx.stats().in_memory, 24, "memory fills first, the rest spills");
    let mut shards = rx.into_shards();
    let mut got: Vec<(u8, u32)> = shards.iter().flat_map(|shard| shard.try_iter().collect::<Vec<_>>()).collect();
    for key in 0..5 {
        let of_key: Vec<u32> = got.iter().filter(|e| e.0 == key).map(|e| e.1).collect();
        assert_eq!(of_key, (0..300).filter(|i| i % 5 == u32::from(key)).collect::<Vec<_>>());
    }
    got.sort_unstable_by_key(|e| e.1);
    assert_eq!(got, batch);

    // With one shard's receiver gone, its items come back, in order.
    let gone = shards.iter().position(|shard| shard.stats().received > 0).unwrap();
    drop(shards.remove(gone));
    let err = tx.send_batch(batch.clone()).unwrap_err();
    assert!(err.is_disconnected());
    let unsent = err.into_inner();
    assert!(!unsent.is_empty());
    assert!(unsent.windows(2).all(|pair| pair[0].1 < pair[1].1));
    let delivered: usize = shards.iter().map(|shard| shard.try_iter().count()).sum();
    assert_eq!(delivered + unsent.len(), 300, "every item is either in a shard or handed back");
}

#[test]
fn the_sharded_receiver_takes_from_every_shard_and_sees_disconnection() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = keyed(dir.path(), 3, Durability::Overflow);
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(rx.recv_timeout(Duration::from_millis(20)), Err(sump::RecvTimeoutError::Timeout));
    let producer = {
        let tx = tx.clone();
        thread::spawn(move || produce(&tx, 2, 2_000, 9))
    };
    drop(tx);
    let all: Vec<Event> = rx.iter().collect();
    producer.join().unwrap();
    check_per_key_order(&all, 2, 2_000);
    assert_eq!(rx.recv(), Err(sump::RecvError));
    let stats = rx.stats();
    assert_eq!(stats.received, 4_000);
    assert_eq!(rx.shard_stats().iter().map(|s| s.stats.sent).sum::<u64>(), stats.sent);
}

#[test]
fn resharding_up_and_down_moves_a_disk_backlog_without_loss_or_reordering() {
    for mode in [Durability::Persistent, Durability::WriteAhead] {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = keyed(dir.path(), 4, mode);
        produce(&tx, 3, 3_000, 50);
        assert!(tx.stats().on_disk > 0, "{mode:?}: the backlog should be on disk");
        drop((tx, rx));
        for shards in [2, 7, 1, 3] {
            let (tx, rx) = keyed(dir.path(), shards, mode);
            assert_eq!(rx.shard_count(), shards);
            let stats = rx.stats();
            assert_eq!(stats.on_disk + stats.in_memory as u64, 9_000, "{mode:?}, {shards} shards");
            assert_eq!(stats.corrupt, 0);
            assert_eq!(rx.shard_stats().iter().filter(|s| s.stats.on_disk > 0).count(), shards.min(50));
            drop((tx, rx));
        }
        let names: BTreeSet<String> = std::fs::read_dir(dir.path().join("events"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let expected: BTreeSet<String> =
            ["shard-000", "shard-001", "shard-002", "sump.lock", "sump.shards"].map(String::from).into();
        assert_eq!(names, expected, "{mode:?}: removed shards and the staging channel are gone");
        // Every step kept each key in one shard and in order.
        let (tx, rx) = keyed(dir.path(), 3, mode);
        drop(tx);
        check_per_key_order(&drain_shards(rx), 3, 3_000);
    }
}

#[test]
fn round_robin_shrinks_without_loss_and_grows_without_moving() {
    let dir = tempfile::tempdir().unwrap();
    let open = |shards| {
        Builder::new("rr", dir.path())
            .memory_capacity(10)
            .durability(Durability::Persistent)
            .sharded::<u32>(shards)
            .round_robin()
            .open()
            .unwrap()
    };
    let (tx, rx) = open(4);
    tx.send_batch(0..1_000).unwrap();
    drop((tx, rx));
    let (tx, rx) = open(6);
    let before: Vec<u64> = rx.shard_stats().iter().map(|s| s.backlog()).collect();
    assert_eq!(before, [250, 250, 250, 250, 0, 0], "growing round-robin moves nothing");
    drop((tx, rx));
    let (tx, rx) = open(3);
    assert_eq!(rx.stats().on_disk, 1_000);
    drop(tx);
    let mut all: Vec<u32> = rx.iter().collect();
    all.sort_unstable();
    assert_eq!(all, (0..1_000).collect::<Vec<_>>());
}

#[test]
fn a_broadcast_channel_refuses_a_change_that_would_lose_items() {
    let dir = tempfile::tempdir().unwrap();
    let open = |shards| {
        Builder::new("fan", dir.path()).durability(Durability::Persistent).sharded::<u32>(shards).broadcast().open()
    };
    let (tx, rx) = open(3).unwrap();
    tx.send_batch(0..10).unwrap();
    let mut shards = rx.into_shards();
    assert!(shards[2].try_iter().eq(0..10), "the last shard's sink has read everything");
    drop((tx, shards.pop()));
    drop(shards);

    // Growing adds an empty shard; shrinking drops only the empty one.
    let (tx, rx) = open(4).unwrap();
    let waiting: Vec<u64> = rx.shard_stats().iter().map(|s| s.stats.on_disk).collect();
    assert_eq!(waiting, [10, 10, 0, 0]);
    drop((tx, rx));
    let (tx, rx) = open(2).unwrap();
    assert_eq!(rx.stats().on_disk, 20);
    drop((tx, rx));

    match open(1) {
        Err(OpenError::InvalidConfig { reason }) => assert!(reason.contains("still holds 10 items"), "{reason}"),
        other => panic!("shrinking onto a shard with items must be refused, got {other:?}"),
    }
    let by_key = Builder::new("fan", dir.path())
        .durability(Durability::Persistent)
        .sharded::<u32>(2)
        .key(|&item: &u32| item)
        .open();
    assert!(matches!(by_key, Err(OpenError::InvalidConfig { .. })), "{by_key:?}");
    // Refusals changed nothing.
    let (tx, rx) = open(2).unwrap();
    drop(tx);
    let mut shards = rx.into_shards();
    assert!(shards.iter_mut().all(|shard| shard.iter().eq(0..10)));
}

#[test]
fn bad_settings_and_mixed_up_channels_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let sharded = |name: &str, shards| Builder::new(name, dir.path()).sharded::<u32>(shards).round_robin().open();
    for shards in [0, sump::MAX_SHARDS + 1] {
        assert!(matches!(sharded("n", shards), Err(OpenError::InvalidConfig { .. })), "{shards} shards");
    }
    let no_key = Builder::new("k", dir.path()).sharded::<u32>(2).open();
    match no_key {
        Err(OpenError::InvalidConfig { reason }) => assert!(reason.contains("key function"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(sharded("a/b", 2), Err(OpenError::InvalidName { .. })));

    let (tx, rx) = sharded("twice", 2).unwrap();
    assert!(matches!(sharded("twice", 2), Err(OpenError::Locked { .. })));
    drop((tx, rx));
    sharded("twice", 2).unwrap();
    let plain = Builder::new("twice", dir.path()).open::<u32>();
    assert!(matches!(plain, Err(OpenError::InvalidConfig { .. })), "a plain open of a sharded channel: {plain:?}");

    let (tx, rx) =
        Builder::new("plain", dir.path()).memory_capacity(0).durability(Durability::Persistent).open::<u32>().unwrap();
    tx.send(1).unwrap();
    drop((tx, rx));
    let err = sharded("plain", 2).unwrap_err();
    assert!(err.to_string().contains("unsharded"), "{err}");
    let (tx, rx) = Builder::new("plain", dir.path()).durability(Durability::Persistent).open::<u32>().unwrap();
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), [1], "the refused sharded open touched nothing");
}

#[test]
fn an_overflow_channel_discards_old_shards_when_the_count_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = keyed(dir.path(), 5, Durability::Overflow);
    produce(&tx, 1, 2_000, 30);
    drop((tx, rx));
    let (tx, rx) = keyed(dir.path(), 2, Durability::Overflow);
    assert_eq!(rx.stats().on_disk, 0);
    assert!(!dir.path().join("events/shard-004").exists());
    tx.send((1, 0, 0)).unwrap();
    assert_eq!(rx.try_recv(), Ok((1, 0, 0)));
}
