//! Arbitrary sequences of channel operations on a `Persistent` channel
//! with tiny limits, compared with a `VecDeque` after every step: sends,
//! receives, clones and drops of senders, and close-and-reopen.
#![no_main]

use std::collections::VecDeque;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sump::{Builder, Durability, TryRecvError};

#[derive(Debug, Arbitrary)]
enum Op {
    Send(u16),
    TrySend(u16),
    Recv,
    TryRecv,
    Clone,
    DropSender(u8),
    CloseAndReopen,
}

#[derive(Debug, Arbitrary)]
struct Case {
    capacity: u8,
    segment: u8,
    ops: Vec<Op>,
}

type Channel = (Vec<sump::Sender<u16>>, sump::Receiver<u16>);

fn open(dir: &std::path::Path, capacity: usize, segment: u64) -> Channel {
    let (tx, rx) = Builder::new("ops", dir)
        .durability(Durability::Persistent)
        .memory_capacity(capacity)
        .segment_bytes(segment)
        .open::<u16>()
        .expect("open");
    (vec![tx], rx)
}

fuzz_target!(|case: Case| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let capacity = usize::from(case.capacity % 4);
    // At least one record (16-byte header + 16 bytes of frame + 3-byte u16).
    let segment = 35 + u64::from(case.segment % 64);
    let (mut senders, mut rx) = open(dir.path(), capacity, segment);
    let mut model: VecDeque<u16> = VecDeque::new();
    for op in case.ops.into_iter().take(200) {
        match op {
            Op::Send(value) | Op::TrySend(value) if !senders.is_empty() => {
                let sent = match op {
                    Op::Send(_) => senders[0].send(value).is_ok(),
                    _ => senders[0].try_send(value).is_ok(),
                };
                assert!(sent, "disk limits are the defaults here: a send cannot be refused");
                model.push_back(value);
            }
            Op::Send(_) | Op::TrySend(_) => {}
            Op::Recv => {
                let got = rx.recv_timeout(Duration::from_millis(1)).ok();
                assert_eq!(got, model.pop_front());
            }
            Op::TryRecv => match rx.try_recv() {
                Ok(value) => assert_eq!(Some(value), model.pop_front()),
                Err(TryRecvError::Empty) => assert!(model.is_empty() && !senders.is_empty()),
                Err(TryRecvError::Disconnected) => assert!(model.is_empty() && senders.is_empty()),
            },
            Op::Clone => {
                if let Some(first) = senders.first() {
                    if senders.len() < 4 {
                        senders.push(first.clone());
                    }
                }
            }
            Op::DropSender(index) => {
                if !senders.is_empty() {
                    senders.remove(usize::from(index) % senders.len());
                }
            }
            Op::CloseAndReopen => {
                senders.clear();
                rx.close().expect("a clean close persists everything");
                (senders, rx) = open(dir.path(), capacity, segment);
            }
        }
        let stats = rx.stats();
        assert_eq!(stats.in_memory as u64 + stats.on_disk, model.len() as u64, "{stats:?}");
    }
});
