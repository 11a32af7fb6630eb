//! The channel from async code: tokio's multi-thread and current-thread
//! runtimes, and `futures`' own executor; cancellation in `select!`;
//! ten thousand tasks waiting on one channel; async and blocking calls
//! mixed on one channel.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use futures::StreamExt;
use sump::{Builder, RecvError, WhenFull};

/// A channel whose memory holds `capacity` items, the rest spilling.
fn open(dir: &std::path::Path, capacity: usize) -> (sump::Sender<u64>, sump::Receiver<u64>) {
    Builder::new("async", dir).memory_capacity(capacity).open().unwrap()
}

/// Room for exactly one `u64` record on disk and none in memory: the
/// second send waits for the receiver.
fn open_tiny(dir: &std::path::Path) -> (sump::Sender<u64>, sump::Receiver<u64>) {
    // A record of a small u64: 16 bytes of frame, 1 of payload.
    Builder::new("tiny", dir)
        .memory_capacity(0)
        .segment_bytes(16 + 17)
        .max_disk_bytes(16 + 17)
        .when_full(WhenFull::Block)
        .open()
        .unwrap()
}

/// A waker that counts nothing but its clones: with one `Waker` made from
/// it kept by the test, the strong count is 2 once every future that held
/// a clone is gone.
struct Counted;

impl Wake for Counted {
    fn wake(self: Arc<Self>) {}
}

#[test]
fn a_multi_thread_runtime_moves_a_spilling_stream_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 100);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let received = runtime.block_on(async move {
        let consumer = tokio::spawn(async move {
            let got: Vec<u64> = rx.stream().collect().await;
            (got, rx.stats())
        });
        let producer = tokio::spawn(async move {
            for i in 0..20_000u64 {
                tx.send_async(i).await.unwrap();
                if i % 1000 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        producer.await.unwrap();
        consumer.await.unwrap()
    });
    let (got, stats) = received;
    assert_eq!(got, (0..20_000).collect::<Vec<_>>());
    assert_eq!(stats.received, 20_000);
    assert!(stats.spilled > 0, "the test is meant to spill: {stats:?}");
}

#[test]
fn a_current_thread_runtime_wakes_a_receiver_waiting_on_the_same_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 10);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let got = runtime.block_on(async move {
        // The consumer starts first and waits: every item after it is a
        // wakeup from a task on the same thread.
        let consumer = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = Vec::new();
            while rx.recv_many_async(&mut buf, 7).await.is_ok() {
                got.append(&mut buf);
            }
            got
        });
        tokio::task::yield_now().await;
        for i in 0..1_000u64 {
            tx.send_async(i).await.unwrap();
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        drop(tx);
        consumer.await.unwrap()
    });
    assert_eq!(got, (0..1_000).collect::<Vec<_>>());
}

#[test]
fn the_futures_executor_runs_both_sides_without_tokio() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 5);
    let mut pool = futures::executor::LocalPool::new();
    let spawner = pool.spawner();
    use futures::task::LocalSpawnExt;
    let consumer = spawner
        .spawn_local_with_handle(async move {
            let mut got = Vec::new();
            while let Ok(item) = rx.recv_async().await {
                got.push(item);
            }
            got
        })
        .unwrap();
    spawner
        .spawn_local(async move {
            for i in 0..500u64 {
                tx.send_async(i).await.unwrap();
            }
        })
        .unwrap();
    let got = pool.run_until(consumer);
    assert_eq!(got, (0..500).collect::<Vec<_>>());
}

#[test]
fn a_receive_that_loses_a_select_loses_no_item() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 20);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
    let (got, cancelled) = runtime.block_on(async move {
        let producer = tokio::spawn(async move {
            for i in 0..3_000u64 {
                tx.send_async(i).await.unwrap();
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        let mut got = Vec::new();
        let mut cancelled = 0;
        let mut tick = tokio::time::interval(Duration::from_micros(200));
        loop {
            tokio::select! {
                biased;
                _ = tick.tick() => cancelled += 1, // drops the pending receive
                item = rx.recv_async() => match item {
                    Ok(item) => got.push(item),
                    Err(RecvError) => break,
                },
            }
        }
        producer.await.unwrap();
        (got, cancelled)
    });
    assert!(cancelled > 10, "the tick should win often: {cancelled}");
    assert_eq!(got, (0..3_000).collect::<Vec<_>>());
}

#[test]
fn ten_thousand_tasks_waiting_to_receive_each_get_one_item() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 1_000);
    let rx = Arc::new(rx);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let mut got = runtime.block_on(async move {
        let waiters: Vec<_> = (0..10_000)
            .map(|_| {
                let rx = Arc::clone(&rx);
                tokio::spawn(async move { rx.recv_async().await.unwrap() })
            })
            .collect();
        tokio::task::yield_now().await;
        for i in 0..10_000u64 {
            tx.send_async(i).await.unwrap();
        }
        let mut got = Vec::new();
        for waiter in waiters {
            got.push(waiter.await.unwrap());
        }
        got
    });
    got.sort_unstable();
    assert_eq!(got, (0..10_000).collect::<Vec<_>>());
}

#[test]
fn ten_thousand_tasks_waiting_for_disk_space_all_get_through() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("full", dir.path())
        .memory_capacity(10)
        .segment_bytes(4096)
        .max_disk_bytes(8192)
        .when_full(WhenFull::Block)
        .open::<u64>()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let mut got = runtime.block_on(async move {
        let senders: Vec<_> = (0..10_000u64)
            .map(|i| {
                let tx = tx.clone();
                tokio::spawn(async move { tx.send_async(i).await.unwrap() })
            })
            .collect();
        drop(tx);
        tokio::task::yield_now().await;
        // Drained from a blocking thread while the tasks wait for space.
        let drain = tokio::task::spawn_blocking(move || (rx.iter().collect::<Vec<u64>>(), rx.stats()));
        for sender in senders {
            sender.await.unwrap();
        }
        let (got, stats) = drain.await.unwrap();
        assert!(stats.spilled > 0, "{stats:?}");
        got
    });
    got.sort_unstable();
    assert_eq!(got, (0..10_000).collect::<Vec<_>>());
}

#[test]
fn a_blocking_receive_parked_on_another_thread_does_not_hold_back_an_async_one() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 10);
    let rx = Arc::new(rx);
    let blocking = {
        let rx = Arc::clone(&rx);
        std::thread::spawn(move || rx.recv().unwrap())
    };
    std::thread::sleep(Duration::from_millis(50)); // parked
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let (first, second) = runtime.block_on(async {
        let waiting = tokio::spawn({
            let rx = Arc::clone(&rx);
            async move { rx.recv_async().await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        let asynchronous = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
        (asynchronous, blocking.join().unwrap())
    });
    let mut both = [first, second];
    both.sort_unstable();
    assert_eq!(both, [1, 2]);
}

#[test]
fn blocking_senders_feed_an_async_receiver_and_async_senders_a_blocking_one() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 50);
    let producers: Vec<_> = (0..2u64)
        .map(|p| {
            let tx = tx.clone();
            std::thread::spawn(move || (0..2_000u64).for_each(|i| tx.send(p * 10_000 + i).unwrap()))
        })
        .collect();
    drop(tx);
    let got = futures::executor::block_on(rx.stream().collect::<Vec<u64>>());
    producers.into_iter().for_each(|p| p.join().unwrap());
    for p in 0..2u64 {
        let mine: Vec<u64> = got.iter().copied().filter(|i| i / 10_000 == p).collect();
        assert_eq!(mine, (0..2_000).map(|i| p * 10_000 + i).collect::<Vec<_>>());
    }

    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 50);
    let consumer = std::thread::spawn(move || rx.iter().collect::<Vec<u64>>());
    futures::executor::block_on(async {
        for i in 0..3_000u64 {
            tx.send_async(i).await.unwrap();
        }
    });
    drop(tx);
    assert_eq!(consumer.join().unwrap(), (0..3_000).collect::<Vec<_>>());
}

#[test]
fn dropped_futures_leave_no_waker_and_take_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open_tiny(dir.path());
    let counted = Arc::new(Counted);
    let waker = Waker::from(Arc::clone(&counted));
    let mut cx = Context::from_waker(&waker);

    // A receive on an empty channel registers, then is dropped.
    let mut receive = Box::pin(rx.recv_async());
    assert!(receive.as_mut().poll(&mut cx).is_pending());
    assert!(Arc::strong_count(&counted) > 2, "the pending receive holds a waker");
    drop(receive);
    assert_eq!(Arc::strong_count(&counted), 2, "a dropped receive left its waker");

    // A send on a full channel registers, then is dropped: its item was
    // never sent.
    tx.send(1).unwrap();
    {
        let mut send = pin!(tx.send_async(2));
        assert!(send.as_mut().poll(&mut cx).is_pending());
        assert!(Arc::strong_count(&counted) > 2, "the pending send holds a waker");
    }
    assert_eq!(Arc::strong_count(&counted), 2, "a dropped send left its waker");

    // A stream's next() dropped half-way takes nothing either.
    let mut stream = rx.stream();
    assert_eq!(futures::executor::block_on(stream.next()), Some(1));
    {
        let mut next = pin!(stream.next());
        assert!(next.as_mut().poll(&mut cx).is_pending());
    }
    drop(stream);
    assert_eq!(Arc::strong_count(&counted), 2, "a dropped stream left its waker");
    tx.send(3).unwrap();
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), [3]);
}

#[test]
fn disconnection_ends_waiting_futures_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), 10);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
    runtime.block_on(async move {
        let waiting = tokio::spawn(async move { rx.recv_async().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx);
        let outcome = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
        assert_eq!(outcome, Err(RecvError));
    });

    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open_tiny(dir.path());
    tx.send(1).unwrap();
    runtime.block_on(async move {
        let waiting = tokio::spawn(async move { tx.send_async(2).await.map_err(|err| err.into_inner()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        let outcome = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
        assert_eq!(outcome, Err(2), "the item comes back");
    });
}
