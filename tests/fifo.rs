//! FIFO across the memory/disk boundary, under seeded random interleavings
//! with tiny capacities. A failing seed is printed; rerun with
//! `SUMP_FIFO_SEED=<seed>` to replay it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use sump::{Builder, TryRecvError};

/// A small deterministic generator (xorshift64*), so seeds replay exactly.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("SUMP_FIFO_SEED") {
        Ok(seed) => vec![seed.parse().expect("SUMP_FIFO_SEED must be a number")],
        Err(_) => (1..=40).collect(),
    }
}

/// One thread, several sender handles, random sends and receives: the
/// receiver must see exactly the send order, as a `VecDeque` model does.
#[test]
fn one_thread_random_sends_and_receives_match_a_queue_model() {
    for seed in seeds() {
        let mut rng = Rng::new(seed);
        let dir = tempfile::tempdir().unwrap();
        let capacity = rng.below(4) as usize;
        let segment = 40 + 16 * rng.below(8); // the smallest holds one record of up to 19 bytes
        let (tx, rx) =
            Builder::new("model", dir.path()).memory_capacity(capacity).segment_bytes(segment).open::<u32>().unwrap();
        let mut senders = vec![tx];
        let mut model = VecDeque::new();
        let mut next = 0u32;
        for step in 0..2_000 {
            match rng.below(10) {
                0..=4 => {
                    let handle = rng.below(senders.len() as u64) as usize;
                    senders[handle].send(next).unwrap();
                    model.push_back(next);
                    next += 1;
                }
                5..=7 => {
                    let got = rx.try_recv();
                    match model.pop_front() {
                        Some(expected) => assert_eq!(got, Ok(expected), "seed {seed} step {step}"),
                        None => assert_eq!(got, Err(TryRecvError::Empty), "seed {seed} step {step}"),
                    }
                }
                8 => senders.push(senders[0].clone()),
                _ if senders.len() > 1 => {
                    let handle = rng.below(senders.len() as u64) as usize;
                    senders.swap_remove(handle);
                }
                _ => {}
            }
            let stats = rx.stats();
            assert_eq!(stats.in_memory as u64 + stats.on_disk, model.len() as u64, "seed {seed} step {step}");
            assert!(stats.in_memory <= capacity, "seed {seed} step {step}: {stats:?}");
        }
        drop(senders);
        let rest: Vec<u32> = rx.iter().collect();
        assert_eq!(rest, Vec::from(model), "seed {seed}: draining after disconnect");
    }
}

/// Several producer threads with random pauses, a receiver with random
/// pauses: every item arrives exactly once, and each producer's items
/// arrive in the order it sent them.
#[test]
fn concurrent_producers_keep_their_order_across_the_boundary() {
    for seed in seeds().into_iter().take(12) {
        let mut rng = Rng::new(seed);
        let dir = tempfile::tempdir().unwrap();
        let producers = 2 + rng.below(3) as u32;
        let per_producer = 600u32;
        let (tx, rx) = Builder::new("threads", dir.path())
            .memory_capacity(rng.below(3) as usize)
            .segment_bytes(48 + 32 * rng.below(4))
            .open::<(u32, u32)>()
            .unwrap();
        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let tx = tx.clone();
                let mut rng = Rng::new(seed * 31 + u64::from(p));
                thread::spawn(move || {
                    for i in 0..per_producer {
                        tx.send((p, i)).unwrap();
                        match rng.below(16) {
                            0 => thread::yield_now(),
                            1 => thread::sleep(Duration::from_micros(rng.below(200))),
                            _ => {}
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let mut last = vec![None::<u32>; producers as usize];
        let mut count = 0;
        loop {
            let got = match rng.below(4) {
                0 => match rx.try_recv() {
                    Ok(item) => item,
                    Err(TryRecvError::Empty) => continue,
                    Err(TryRecvError::Disconnected) => break,
                },
                1 => {
                    thread::sleep(Duration::from_micros(rng.below(300)));
                    continue;
                }
                _ => match rx.recv() {
                    Ok(item) => item,
                    Err(_) => break,
                },
            };
            let (p, i) = got;
            let expected = last[p as usize].map_or(0, |prev| prev + 1);
            assert_eq!(i, expected, "seed {seed}: producer {p} out of order or duplicated");
            last[p as usize] = Some(i);
            count += 1;
        }
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(count, producers * per_producer, "seed {seed}: items lost");
        assert!(rx.stats().spilled > 0, "seed {seed}: the test must cross the boundary");
    }
}

/// An item sent after another item's send returned (here: the first
/// sender signals the second) never overtakes it, even when the first
/// went to disk and memory has room for the second.
#[test]
fn an_item_never_overtakes_one_that_went_to_disk_before_it() {
    for seed in seeds().into_iter().take(10) {
        let mut rng = Rng::new(seed);
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = Builder::new("causal", dir.path()).memory_capacity(2).open::<u32>().unwrap();
        let rounds = 300;
        let stop = Arc::new(AtomicBool::new(false));
        let (turn_tx, turn_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let first = {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..rounds {
                    tx.send(2 * i).unwrap();
                    turn_tx.send(()).unwrap(); // the second sender goes only now
                    done_rx.recv().unwrap();
                }
            })
        };
        let second = {
            let tx = tx.clone();
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                for i in 0..rounds {
                    turn_rx.recv().unwrap();
                    tx.send(2 * i + 1).unwrap();
                    done_tx.send(()).unwrap();
                }
                stop.store(true, Ordering::SeqCst);
            })
        };
        drop(tx);
        let mut expected = 0;
        while let Ok(got) = rx.recv() {
            assert_eq!(got, expected, "seed {seed}");
            expected += 1;
            if rng.below(3) == 0 {
                thread::sleep(Duration::from_micros(rng.below(100)));
            }
        }
        first.join().unwrap();
        second.join().unwrap();
        assert!(stop.load(Ordering::SeqCst));
        assert_eq!(expected, 2 * rounds);
    }
}
