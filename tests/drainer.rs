//! The drainer against sinks that accept, stall, fail transiently, refuse
//! items, accept part of a batch, and panic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sump::{BreakerState, Builder, DrainHandle, Drainer, Sink, SinkError};

const WAIT: Duration = Duration::from_secs(10);

/// A sink that records what it accepted, and can be told how to fail.
#[derive(Clone, Default)]
struct Recorder {
    accepted: Arc<Mutex<Vec<u64>>>,
    batches: Arc<Mutex<Vec<usize>>>,
    calls: Arc<AtomicUsize>,
}

impl Recorder {
    fn accepted(&self) -> Vec<u64> {
        self.accepted.lock().unwrap().clone()
    }

    fn wait_for(&self, count: usize) {
        let start = Instant::now();
        while self.accepted.lock().unwrap().len() < count {
            assert!(start.elapsed() < WAIT, "only {} of {count} items arrived", self.accepted().len());
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn take(&self, batch: &[u64]) {
        self.accepted.lock().unwrap().extend_from_slice(batch);
        self.batches.lock().unwrap().push(batch.len());
    }
}

impl Sink<u64> for Recorder {
    fn send_batch(&mut self, batch: &[u64]) -> Result<(), SinkError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.take(batch);
        Ok(())
    }
}

fn open(dir: &tempfile::TempDir, name: &str) -> (sump::Sender<u64>, sump::Receiver<u64>) {
    Builder::new(name, dir.path()).memory_capacity(16).open().unwrap()
}

fn fast<S: Sink<u64> + Send + 'static>(rx: sump::Receiver<u64>, sink: S) -> Drainer<u64, S> {
    Drainer::new(rx, sink).backoff(Duration::from_millis(1), Duration::from_millis(5))
}

fn wait_until_finished(handle: &DrainHandle<u64>) {
    let start = Instant::now();
    while !handle.is_finished() {
        assert!(start.elapsed() < WAIT, "drainer did not finish");
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn every_item_is_delivered_once_in_order_including_items_that_spilled() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(&dir, "all");
    for i in 0..5_000 {
        tx.send(i).unwrap();
    }
    assert!(tx.stats().on_disk > 0);
    let sink = Recorder::default();
    let handle = fast(rx, sink.clone()).batch_size(100).spawn();
    drop(tx);
    wait_until_finished(&handle);
    assert_eq!(sink.accepted(), (0..5_000).collect::<Vec<_>>());
    assert!(sink.batches.lock().unwrap().iter().all(|&n| n <= 100));
    let stats = handle.stats();
    assert_eq!((stats.delivered, stats.retried, stats.rejected, stats.lag), (5_000, 0, 0, 0));
    assert!(!stats.running);
    let rx = handle.shutdown(WAIT).unwrap();
    assert_eq!(rx.try_recv(), Err(sump::TryRecvError::Disconnected));
}

#[test]
fn a_batch_waits_at_most_linger_for_more_items() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(&dir, "linger");
    let sink = Recorder::default();
    let handle = fast(rx, sink.clone()).batch_size(1_000).linger(Duration::from_millis(30)).spawn();
    for i in 0..3 {
        tx.send(i).unwrap();
    }
    sink.wait_for(3);
    assert_eq!(*sink.batches.lock().unwrap(), vec![3], "items sent together share a batch");
    thread::sleep(Duration::from_millis(100));
    tx.send(3).unwrap();
    sink.wait_for(4);
    assert_eq!(*sink.batches.lock().unwrap(), vec![3, 1], "a lone item goes after the linger time");
    handle.shutdown(WAIT).unwrap();
}

#[test]
fn batches_are_bounded_by_encoded_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(&dir, "bytes");
    for i in 0..100 {
        tx.send(1_000_000 + i).unwrap(); // five bytes each, varint-encoded
    }
    drop(tx);
    let sink = Recorder::default();
    let handle = fast(rx, sink.clone()).batch_bytes(50).spawn();
    wait_until_finished(&handle);
    assert_eq!(sink.accepted().len(), 100);
    assert!(sink.batches.lock().unwrap().iter().all(|&n| n == 10), "{:?}", sink.batches.lock().unwrap());
}

#[test]
fn batching_by_key_never_mixes_keys_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(&dir, "keys");
    let items: Vec<u64> = [1, 1, 1, 2, 2, 1, 3, 3, 3, 3].iter().map(|k| k * 100).collect();
    for &i in &items {
        tx.send(i).unwrap();
    }
    drop(tx);
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&batches);
    let handle = fast(rx, move |batch: &[u64]| -> Result<(), SinkError> {
        seen.lock().unwrap().push(batch.to_vec());
        Ok(())
    })
    .batch_by_key(|item: &u64| *item)
    .spawn();
    wait_until_finished(&handle);
    let batches = batches.lock().unwrap().clone();
    assert_eq!(batches, vec![vec![100; 3], vec![200; 2], vec![100], vec![300; 4]]);
}

#[test]
fn transient_failures_are_retried_until_the_sink_accepts_with_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(&dir, "transient");
    let sink = Recorder::default();
    let inner = sink.clone();
    let failures = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&failures);
    let handle = fast(rx, move |batch: &[u64]| -> Result<(), SinkError> {
        // Every third call fails.
        if inner.calls.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
            counted.fetch_add(1, Ordering::SeqCst);
            return Err(SinkError::transient("timeout"));
        }
        inner.take(batch);
        Ok(())
    })
    .batch_size(7)
    .breaker(1_000, Duration::from_millis(1))
    .spawn();
    for i in 0..500 {
        tx.send(i).unwrap();
    }
    drop(tx);
    wait_until_finished(&handle);
    assert_eq!(sink.accepted(), (0..500).collect::<Vec<_>>());
    assert_eq!(handle.stats().retried, failures.load(Ordering::SeqCst) as u64);
    assert!(handle.stats().retried > 0);
}

#[test]
fn a_partly_accepted_batch_is_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(&dir, "partial");
    let sink = Recorder::default();
    let inner = sink.clone();
    let handle = fast(rx, move |batch: &[u64]| -> Result<(), SinkError> {
        // Accepts at most three items per call, then times out.
        let take = batch.len().min(3);
        inner.take(&batch[..take]);
        if take < batch.len() {
            return Err(SinkError::transient("slow down").with_accepted(take));
        }
        Ok(())
    })
    .batch_size(10)
    .breaker(1_000, Duration::from_millis(1))
    .spawn();
    for i in 0..100 {
        tx.send(i).unwrap();
    }
    drop(tx);
    wait_until_finished(&handle);
    assert_eq!(sink.accepted(), (0..100).collect::<Vec<_>>());
    assert_eq!(handle.stats().delivered, 100);
}

#[test]
fn the_breaker_opens_on_a_dead_sink_stops_calling_it_and_closes_when_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(&dir, "breaker");
    let up = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let sink = Recorder::default();
    let (inner, is_up, counted) = (sink.clone(), Arc::clone(&up), Arc::clone(&calls));
    let handle = Drainer::new(rx, move |batch: &[u64]| -> Result<(), SinkError> {
        counted.fetch_add(1, Ordering::SeqCst);
        if is_up.load(Ordering::SeqCst) == 0 {
            return Err(SinkError::transient("connection refused"));
        }
        inner.take(batch);
        Ok(())
    })
    .backoff(Duration::from_millis(1), Duration::from_millis(2))
    .breaker(3, Duration::from_millis(300))
    .spawn();
    tx.send(1).unwrap();
    let start = Instant::now();
    while handle.stats().breaker != BreakerState::Open {
        assert!(start.elapsed() < WAIT);
        thread::sleep(Duration::from_millis(1));
    }
    let at_open = calls.load(Ordering::SeqCst);
    assert_eq!(at_open, 3, "the breaker opens after three failures in a row");
    thread::sleep(Duration::from_millis(150));
    assert_eq!(calls.load(Ordering::SeqCst), at_open, "an open breaker does not call the sink");
    assert!(handle.stats().lag >= 1, "the undelivered item is lag");
    up.store(1, Ordering::SeqCst);
    sink.wait_for(1);
    assert_eq!(calls.load(Ordering::SeqCst), at_open + 1, "one probe, which succeeds");
    assert_eq!(handle.stats().breaker, BreakerState::Closed);
    tx.send(2).unwrap();
    sink.wait_for(2);
    assert_eq!(sink.accepted(), vec![1, 2]);
    handle.shutdown(WAIT).unwrap();
}

/// Refuses every multiple of seven, permanently.
fn picky(sink: Recorder) -> impl FnMut(&[u64]) -> Result<(), SinkError> + Send + 'static {
    move |batch: &[u64]| {
        sink.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(bad) = batch.iter().find(|&&i| i % 7 == 0) {
            return Err(SinkError::permanent(format!("{bad} is not welcome")));
        }
        sink.take(batch);
        Ok(())
    }
}

#[test]
fn refused_items_alone_go_to_the_dead_letter_channel() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(&dir, "main");
    let (dead_tx, dead_rx) = open(&dir, "dead");
    let sink = Recorder::default();
    let handle = fast(rx, picky(sink.clone())).batch_size(32).dead_letter(dead_tx).spawn();
    for i in 1..=300 {
        tx.send(i).unwrap();
    }
    drop(tx);
    wait_until_finished(&handle);
    assert_eq!(sink.accepted(), (1..=300).filter(|i| i % 7 != 0).collect::<Vec<_>>());
    let stats = handle.stats();
    assert_eq!(stats.rejected, 42);
    assert_eq!(stats.delivered, 300 - 42);
    assert_eq!(stats.stopped, None);
    drop(handle);
    assert_eq!(dead_rx.try_iter().collect::<Vec<_>>(), (1..=300).filter(|i| i % 7 == 0).collect::<Vec<_>>());
}

#[test]
fn without_a_dead_letter_channel_a_refusal_stops_the_drainer_and_nothing_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(&dir, "stop");
    let sink = Recorder::default();
    let handle = fast(rx, picky(sink.clone())).batch_size(4).spawn();
    for i in 1..=20 {
        tx.send(i).unwrap();
    }
    wait_until_finished(&handle);
    let stats = handle.stats();
    let reason = stats.stopped.expect("the drainer says why it stopped");
    assert!(reason.contains("no dead-letter channel") && reason.contains("7 is not welcome"), "{reason}");
    assert_eq!(sink.accepted(), vec![1, 2, 3, 4, 5, 6], "items before the refused one are delivered");
    let rx = handle.shutdown(WAIT).unwrap();
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), (7..=20).collect::<Vec<_>>(), "the refused item and the rest stay");
}

#[test]
fn shutdown_with_the_sink_down_hands_back_every_undelivered_item_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(&dir, "down");
    for i in 0..1_000 {
        tx.send(i).unwrap();
    }
    let handle = Drainer::new(rx, |_: &[u64]| -> Result<(), SinkError> { Err(SinkError::transient("down")) })
        .backoff(Duration::from_millis(1), Duration::from_millis(10))
        .spawn();
    thread::sleep(Duration::from_millis(50));
    assert_eq!(handle.stats().lag, 1_000);
    let start = Instant::now();
    let rx = handle.shutdown(Duration::from_millis(100)).unwrap();
    assert!(start.elapsed() < Duration::from_secs(2), "shutdown respects its deadline");
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), (0..1_000).collect::<Vec<_>>());
}

#[test]
fn shutdown_finishes_the_batch_in_flight_when_the_sink_accepts_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(&dir, "inflight");
    let sink = Recorder::default();
    let inner = sink.clone();
    let handle = Drainer::new(rx, move |batch: &[u64]| -> Result<(), SinkError> {
        thread::sleep(Duration::from_millis(100)); // a slow sink
        inner.take(batch);
        Ok(())
    })
    .batch_size(10)
    .spawn();
    for i in 0..50 {
        tx.send(i).unwrap();
    }
    thread::sleep(Duration::from_millis(20)); // the first batch is in flight
    let rx = handle.shutdown(Duration::from_secs(5)).unwrap();
    let delivered = sink.accepted();
    assert_eq!(delivered, (0..10).collect::<Vec<_>>(), "the batch in flight completes; no new batch starts");
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), (10..50).collect::<Vec<_>>());
}

#[test]
fn a_panicking_sink_stops_the_drainer_without_losing_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(&dir, "panic");
    let handle = Drainer::new(rx, |_: &[u64]| -> Result<(), SinkError> { panic!("sink bug") }).spawn();
    for i in 0..10 {
        tx.send(i).unwrap();
    }
    wait_until_finished(&handle);
    assert_eq!(handle.stats().stopped.as_deref(), Some("the sink panicked"));
    let rx = handle.shutdown(WAIT).unwrap();
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
}

#[test]
fn channel_sinks_chain_stages_into_a_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("stage-1", dir.path()).memory_capacity(4).open::<u64>().unwrap();
    let (mid_tx, mid_rx) = Builder::new("stage-2", dir.path()).memory_capacity(4).open::<u64>().unwrap();
    let first = Drainer::new(rx, sump::ChannelSink::new(mid_tx)).spawn();
    let sink = Recorder::default();
    let second = Drainer::new(mid_rx, sink.clone()).spawn();
    for i in 0..2_000 {
        tx.send(i).unwrap();
    }
    drop(tx);
    wait_until_finished(&first);
    drop(first); // drops the stage-2 sender with the first drainer's sink
    wait_until_finished(&second);
    assert_eq!(sink.accepted(), (0..2_000).collect::<Vec<_>>());
}

#[test]
fn a_channel_sink_whose_receiver_is_gone_refuses_permanently_and_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    let (next_tx, next_rx) = open(&dir, "next");
    let mut sink = sump::ChannelSink::new(next_tx);
    sink.send_batch(&[1, 2]).unwrap();
    assert_eq!(next_rx.try_iter().collect::<Vec<_>>(), vec![1, 2]);
    drop(next_rx);
    let err = sink.send_batch(&[3]).unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(err.accepted(), 0);
}

#[test]
fn json_lines_sink_writes_one_line_per_item_and_refuses_what_json_cannot_hold() {
    let mut sink = sump::JsonLinesSink::new(Vec::new());
    sink.send_batch(&[("a".to_string(), 1u8), ("b".to_string(), 2)]).unwrap();
    assert_eq!(String::from_utf8(sink.get_ref().clone()).unwrap(), "[\"a\",1]\n[\"b\",2]\n");

    let mut sink = sump::JsonLinesSink::new(Vec::new());
    let mut bad = std::collections::HashMap::new();
    bad.insert(vec![1u8], 1u8); // JSON object keys must be strings
    let good = std::collections::HashMap::new();
    let err = sink.send_batch(&[good.clone(), bad, good]).unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(err.accepted(), 1);
    assert_eq!(sink.into_inner(), b"{}\n", "lines before the refused item are written");
}

#[test]
fn a_json_lines_sink_on_a_failing_writer_fails_transiently() {
    struct Broken;
    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut sink = sump::JsonLinesSink::new(Broken);
    let err = sink.send_batch(&[1u8]).unwrap_err();
    assert!(err.is_transient());
    assert!(err.to_string().contains("disk on fire"));
}

#[test]
fn undelivered_items_survive_a_clean_restart_in_the_durable_modes() {
    for mode in [sump::Durability::Persistent, sump::Durability::WriteAhead] {
        let dir = tempfile::tempdir().unwrap();
        let open =
            || Builder::new("durable", dir.path()).durability(mode).memory_capacity(16).segment_bytes(512).open();
        let (tx, rx) = open().unwrap();
        let sink = Recorder::default();
        let inner = sink.clone();
        let handle = fast(rx, move |batch: &[u64]| -> Result<(), SinkError> {
            // Accepts the first 100 items, then the downstream goes away.
            if inner.accepted().len() >= 100 {
                return Err(SinkError::transient("downstream gone"));
            }
            inner.take(batch);
            Ok(())
        })
        .batch_size(20)
        .spawn();
        for i in 0..500 {
            tx.send(i).unwrap();
        }
        sink.wait_for(100);
        let rx = handle.shutdown(Duration::from_millis(50)).unwrap();
        drop((tx, rx));
        // Batches end where the linger does, so the sink may have taken a
        // few more than 100 before it started refusing.
        let accepted = sink.accepted();
        assert_eq!(accepted, (0..accepted.len() as u64).collect::<Vec<_>>(), "{mode:?}");
        let (tx, rx) = open().unwrap();
        drop(tx);
        assert_eq!(rx.iter().collect::<Vec<_>>(), (accepted.len() as u64..500).collect::<Vec<_>>(), "{mode:?}");
    }
}

/// Found in review: items a drainer put back were written at shutdown in
/// front of a segment read part-way, and a shutdown inside those items
/// lost the read position in that segment, so its read records came again.
#[test]
fn reads_before_a_clean_shutdown_never_come_again_across_several_restarts() {
    for mode in [sump::Durability::Persistent, sump::Durability::WriteAhead] {
        for segment_bytes in [64, 1 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let open = || {
                Builder::new("cycles", dir.path())
                    .durability(mode)
                    .memory_capacity(0)
                    .segment_bytes(segment_bytes)
                    .open::<u64>()
                    .unwrap()
            };
            let (tx, rx) = open();
            for i in 1..=6 {
                tx.send(i).unwrap();
            }
            let handle = fast(rx, |_: &[u64]| -> Result<(), SinkError> { Err(SinkError::transient("down")) })
                .batch_size(3)
                .linger(Duration::from_millis(50))
                .spawn();
            thread::sleep(Duration::from_millis(200));
            let rx = handle.shutdown(Duration::from_millis(50)).unwrap();
            drop(tx);
            rx.close().unwrap();

            let (tx, rx) = open();
            assert_eq!(rx.recv_timeout(WAIT).unwrap(), 1);
            drop(tx);
            rx.close().unwrap();

            let (tx, rx) = open();
            drop(tx);
            assert_eq!(rx.iter().collect::<Vec<_>>(), vec![2, 3, 4, 5, 6], "{mode:?}, {segment_bytes}-byte segments");
        }
    }
}

#[test]
fn max_rate_paces_delivery_in_small_batches_and_shutdown_does_not_wait_for_the_pace() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(&dir, "paced");
    tx.send_batch(0..300).unwrap();
    let sink = Recorder::default();
    let started = Instant::now();
    let handle = fast(rx, sink.clone()).max_rate(1_000.0).spawn();
    sink.wait_for(300);
    let took = started.elapsed();
    // 300 items at 1,000 a second: the last batch may go at 0.3 s less
    // one batch's share (0.1 s).
    assert!(took >= Duration::from_millis(190), "300 items at 1,000/s took only {took:?}");
    assert!(sink.batches.lock().unwrap().iter().all(|&len| len <= 100), "a paced batch holds 0.1 s of items");
    assert_eq!(sink.accepted(), (0..300).collect::<Vec<_>>());

    // One item every two seconds: the drainer paces for two seconds after
    // each item, and a shutdown cuts that wait short.
    tx.send_batch(300..310).unwrap();
    drop(tx);
    let (tx2, rx2) = open(&dir, "slow");
    tx2.send_batch(0..10).unwrap();
    drop(tx2);
    let slow = Recorder::default();
    let slow_handle = fast(rx2, slow.clone()).max_rate(0.5).spawn();
    slow.wait_for(1);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(slow.accepted().len(), 1, "the next item waits for its share of the rate");
    let asked = Instant::now();
    let rest = slow_handle.shutdown(Duration::from_secs(30)).unwrap();
    assert!(asked.elapsed() < Duration::from_secs(1), "shutdown waited for the pace: {:?}", asked.elapsed());
    assert_eq!(rest.try_iter().collect::<Vec<_>>(), (1..10).collect::<Vec<_>>(), "the rest stays in the channel");
    handle.shutdown(Duration::from_secs(5)).unwrap();
}

/// Records the numbers the drainer gives with each batch.
#[derive(Clone, Default)]
struct Numbered {
    seen: Arc<Mutex<Vec<(u64, sump::ChannelId, u64)>>>,
}

impl Sink<u64> for Numbered {
    fn send_batch(&mut self, _: &[u64]) -> Result<(), SinkError> {
        Err(SinkError::permanent("the drainer calls send_numbered"))
    }

    fn send_numbered(&mut self, batch: &[u64], numbers: sump::Numbers<'_>) -> Result<(), SinkError> {
        assert_eq!(batch.len(), numbers.seqs().len());
        let mut seen = self.seen.lock().unwrap();
        for (item, seq) in batch.iter().zip(numbers.seqs()) {
            seen.push((*item, numbers.channel(), *seq));
        }
        // Accept half of a batch now and then: the rest comes again with
        // the same numbers.
        if batch.len() > 3 && batch[0].is_multiple_of(5) {
            let keep = seen.len() - (batch.len() - batch.len() / 2);
            seen.truncate(keep);
            return Err(SinkError::transient("half now").with_accepted(batch.len() / 2));
        }
        Ok(())
    }
}

#[test]
fn a_sink_is_told_each_items_channel_and_number_the_same_on_every_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(&dir, "numbers");
    let channel = rx.channel_id();
    let sink = Numbered::default();
    let handle = fast(rx, sink.clone()).batch_size(20).spawn();
    for i in 0..1_000 {
        tx.send(i).unwrap();
    }
    drop(tx);
    wait_until_finished(&handle);
    let seen = sink.seen.lock().unwrap().clone();
    let expected: Vec<_> = (0..1_000).map(|i| (i, channel, i)).collect();
    assert_eq!(seen, expected, "items numbered from 0 in send order, with their channel");
}
