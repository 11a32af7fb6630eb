//! Acknowledgement: `peek_batch`, `Peeked::commit` and `commit_first`,
//! and the sequence numbers every item gets at `send`.

use std::path::Path;
use std::time::Duration;

use sump::{Builder, Durability, RecvTimeoutError};

const NOW: Duration = Duration::ZERO;

fn open(dir: &Path, durability: Durability, memory: usize) -> (sump::Sender<u64>, sump::Receiver<u64>) {
    Builder::new("acks", dir).durability(durability).memory_capacity(memory).segment_bytes(512).open().unwrap()
}

const MODES: [Durability; 3] = [Durability::Overflow, Durability::Persistent, Durability::WriteAhead];

#[test]
fn a_batch_dropped_without_a_commit_comes_back_first_in_order_with_its_numbers() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open(dir.path(), mode, 8);
        for i in 0..100 {
            tx.send(i).unwrap();
        }
        let batch = rx.peek_batch(30, NOW).unwrap();
        assert_eq!(&batch[..], (0..30).collect::<Vec<_>>(), "{mode:?}");
        assert_eq!(batch.seqs(), (0..30).collect::<Vec<_>>(), "{mode:?}: numbered in send order from 0");
        assert_eq!(rx.len(), 70, "{mode:?}: peeked items are out of the channel while the batch lives");
        drop(batch);
        assert_eq!(rx.len(), 100, "{mode:?}: and back in it once it is dropped");
        assert_eq!(rx.stats().received, 0, "{mode:?}: nothing counts as received");
        let again = rx.peek_batch(1_000, NOW).unwrap();
        assert_eq!(&again[..], (0..100).collect::<Vec<_>>(), "{mode:?}");
        assert_eq!(again.seqs(), (0..100).collect::<Vec<_>>(), "{mode:?}: the same numbers");
        again.commit().unwrap();
        assert_eq!(rx.len(), 0);
        assert!(matches!(rx.peek_batch(10, NOW), Err(RecvTimeoutError::Timeout)));
        drop(tx);
        assert!(matches!(rx.peek_batch(10, NOW), Err(RecvTimeoutError::Disconnected)));
    }
}

#[test]
fn commit_first_keeps_the_rest_at_the_front() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), Durability::WriteAhead, 0);
    for i in 0..50 {
        tx.send(i).unwrap();
    }
    rx.peek_batch(20, NOW).unwrap().commit_first(12).unwrap();
    assert_eq!(rx.recv().unwrap(), 12);
    rx.peek_batch(5, NOW).unwrap().commit_first(100).unwrap(); // more than it holds: all of it
    assert_eq!(rx.recv().unwrap(), 18);
    assert!(matches!(rx.peek_batch(0, NOW), Err(RecvTimeoutError::Timeout)), "a limit of 0 takes nothing");
}

#[test]
fn several_batches_at_once_settle_independently() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), Durability::WriteAhead, 0);
    for i in 0..60 {
        tx.send(i).unwrap();
    }
    let first = rx.peek_batch(20, NOW).unwrap();
    let second = rx.peek_batch(20, NOW).unwrap();
    assert_eq!(second.seqs()[0], 20);
    drop(first);
    second.commit().unwrap();
    let rest: Vec<u64> = {
        drop(tx);
        rx.iter().collect()
    };
    assert_eq!(rest, (0..20).chain(40..60).collect::<Vec<_>>());
}

#[test]
fn peek_more_lingers_for_a_fuller_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), Durability::Overflow, 4);
    tx.send(1).unwrap();
    let mut batch = rx.peek_batch(10, NOW).unwrap();
    assert_eq!(batch.peek_more(10, Duration::from_millis(20)), 0, "nothing more came");
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        tx.send(2).unwrap();
        tx.send(3).unwrap();
        tx
    });
    assert!(batch.peek_more(10, Duration::from_secs(10)) >= 1);
    let tx = sender.join().unwrap();
    batch.peek_more(10, NOW);
    assert_eq!(&batch[..], [1, 2, 3]);
    assert_eq!(batch.seqs(), [0, 1, 2]);
    batch.commit().unwrap();
    drop(tx);
}

#[test]
fn numbers_follow_send_order_through_memory_and_disk_and_never_repeat_after_a_restart() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open(dir.path(), mode, 3);
        for i in 0..40 {
            tx.send(i).unwrap();
        }
        let mut seen = Vec::new();
        while let Ok(batch) = rx.peek_batch(7, NOW) {
            for (&item, &seq) in batch.iter().zip(batch.seqs()) {
                assert_eq!(item, seq, "{mode:?}");
            }
            seen.extend_from_slice(batch.seqs());
            batch.commit().unwrap();
        }
        assert_eq!(seen, (0..40).collect::<Vec<_>>(), "{mode:?}");
        drop((tx, rx));
        // Everything was delivered and its files are gone: the numbers go on.
        let (tx, rx) = open(dir.path(), mode, 3);
        tx.send(99).unwrap();
        let batch = rx.peek_batch(1, NOW).unwrap();
        assert!(batch.seqs()[0] >= 40, "{mode:?}: a number was given twice: {}", batch.seqs()[0]);
    }
}

#[test]
fn numbers_survive_a_clean_restart_unchanged_and_uncommitted_items_are_kept() {
    for mode in [Durability::Persistent, Durability::WriteAhead] {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open(dir.path(), mode, 10);
        for i in 0..200 {
            tx.send(i).unwrap();
        }
        rx.peek_batch(50, NOW).unwrap().commit().unwrap();
        let batch = rx.peek_batch(100, NOW).unwrap();
        assert_eq!(batch.seqs()[0], 50);
        drop(batch); // uncommitted: must survive the restart
        drop((tx, rx));
        let (tx, rx) = open(dir.path(), mode, 10);
        drop(tx);
        let mut items = Vec::new();
        let mut seqs = Vec::new();
        while let Ok(batch) = rx.peek_batch(64, NOW) {
            items.extend_from_slice(&batch);
            seqs.extend_from_slice(batch.seqs());
            batch.commit().unwrap();
        }
        assert_eq!(items, (50..200).collect::<Vec<_>>(), "{mode:?}: committed items gone, the rest kept");
        assert_eq!(seqs, items, "{mode:?}: every item kept its number");
    }
}

#[test]
fn read_segments_are_deleted_only_once_their_items_are_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), Durability::WriteAhead, 0);
    for i in 0..300 {
        tx.send(i).unwrap();
    }
    let segments = rx.stats().segments;
    assert!(segments > 4, "{segments}");
    let batch = rx.peek_batch(200, NOW).unwrap();
    assert_eq!(rx.stats().segments, segments, "segments read for an uncommitted batch stay");
    batch.commit_first(100).unwrap();
    let after_half = rx.stats().segments;
    assert!(after_half < segments, "the segments holding only committed items go: {after_half} of {segments}");
    let batch = rx.peek_batch(200, NOW).unwrap();
    batch.commit().unwrap();
    assert!(rx.stats().segments < after_half);
}

/// A segment of format version 1, as sump 0.1 wrote it: no sequence
/// numbers. Its records get numbers as they are read, below every number
/// a new item gets.
#[test]
fn segments_written_before_sequence_numbers_are_read_and_numbered_below_new_items() {
    let dir = tempfile::tempdir().unwrap();
    // Create the channel (and its type file), then leave an old segment.
    drop(open(dir.path(), Durability::Persistent, 0));
    let mut segment = b"SUMPSEG\0".to_vec();
    segment.extend_from_slice(&[1, 0, 0, 0]); // version 1, plain records
    let crc = crc32c::crc32c(&segment);
    segment.extend_from_slice(&crc.to_le_bytes());
    for value in [7u8, 8, 9] {
        // bincode encodes a small u64 as one byte.
        segment.extend_from_slice(&1u32.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&1u32.to_le_bytes()), &[value]);
        segment.extend_from_slice(&crc.to_le_bytes());
        segment.push(value);
    }
    std::fs::write(dir.path().join("acks").join("00000000000000000001.seg"), &segment).unwrap();
    let (tx, rx) = open(dir.path(), Durability::Persistent, 0);
    tx.send(10).unwrap();
    drop(tx);
    let batch = rx.peek_batch(10, NOW).unwrap();
    assert_eq!(&batch[..], [7, 8, 9, 10]);
    let seqs = batch.seqs();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "in order: {seqs:?}");
    batch.commit().unwrap();
}

/// Found in review: batches given back newest first came back out of
/// order, and the oldest uncommitted number was taken from the wrong one,
/// so a segment still holding the older batch could be deleted.
#[test]
fn batches_given_back_in_any_order_come_back_in_send_order_and_keep_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path(), Durability::WriteAhead, 0);
    for i in 0..300 {
        tx.send(i).unwrap();
    }
    let segments = rx.stats().segments;
    let older = rx.peek_batch(100, NOW).unwrap();
    let newer = rx.peek_batch(100, NOW).unwrap();
    drop(older);
    drop(newer);
    let again = rx.peek_batch(250, NOW).unwrap();
    assert_eq!(&again[..], (0..250).collect::<Vec<_>>(), "in send order whatever order they came back in");
    assert_eq!(again.seqs(), (0..250).collect::<Vec<_>>());
    drop(again);
    // The newer batch committed while the older one is out: the older
    // one's segments stay.
    let older = rx.peek_batch(100, NOW).unwrap();
    let newer = rx.peek_batch(100, NOW).unwrap();
    newer.commit().unwrap();
    assert_eq!(rx.stats().segments, segments, "nothing deleted while items 0..100 are uncommitted");
    drop(older);
    drop((tx, rx));
    let (tx, rx) = open(dir.path(), Durability::WriteAhead, 0);
    drop(tx);
    let rest: Vec<u64> = rx.iter().collect();
    assert_eq!(rest, (0..100).chain(200..300).collect::<Vec<_>>());
}

#[test]
fn the_channel_id_is_kept_across_restarts_and_drawn_anew_when_numbers_could_repeat() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let (tx, rx) = open(dir.path(), mode, 8);
            assert_eq!(tx.channel_id(), rx.channel_id());
            rx.channel_id()
        };
        let (tx, rx) = open(dir.path(), mode, 8);
        assert_eq!(rx.channel_id(), first, "{mode:?}: kept across a restart");
        let (other, _other_rx) = Builder::new("other", dir.path()).durability(mode).open::<u64>().unwrap();
        assert_ne!(other.channel_id(), first, "{mode:?}: each channel has its own");
        drop((tx, rx));

        // Numbers could start again once the sequence file is lost.
        std::fs::remove_file(dir.path().join("acks").join("sump.seq")).unwrap();
        let second = open(dir.path(), mode, 8).1.channel_id();
        assert_ne!(second, first, "{mode:?}: a lost sequence file gives a new id");

        // A damaged id file is replaced, with a new id.
        let path = dir.path().join("acks").join("sump.id");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[14] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let third = open(dir.path(), mode, 8).1.channel_id();
        assert_ne!(third, second, "{mode:?}: a damaged id file gives a new id");
        assert_eq!(open(dir.path(), mode, 8).1.channel_id(), third, "{mode:?}: and that one is kept");
    }
}

#[test]
fn a_channel_that_cannot_reserve_numbers_or_record_its_id_still_opens_and_its_next_open_draws_a_new_id() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let channel = dir.path().join("acks");
        let first = open(dir.path(), mode, 8).1.channel_id();

        // The sequence file cannot be replaced (its temporary name is
        // taken by a directory): numbers past the reservation could
        // repeat, so the id file goes.
        std::fs::create_dir(channel.join("sump.seq.tmp")).unwrap();
        {
            let (tx, rx) = open(dir.path(), mode, 8);
            assert_eq!(rx.channel_id(), first, "{mode:?}: this run still uses the recorded id");
            tx.send(1).unwrap();
            assert_eq!(rx.recv().unwrap(), 1);
        }
        assert!(!channel.join("sump.id").exists(), "{mode:?}: the id file was removed");
        std::fs::remove_dir(channel.join("sump.seq.tmp")).unwrap();
        let second = open(dir.path(), mode, 8).1.channel_id();
        assert_ne!(second, first, "{mode:?}: the next open draws a new id");

        // The id cannot be recorded: a new id for that run only.
        std::fs::remove_file(channel.join("sump.id")).unwrap();
        std::fs::create_dir(channel.join("sump.id.tmp")).unwrap();
        let unrecorded = open(dir.path(), mode, 8).1.channel_id();
        assert_ne!(unrecorded, second, "{mode:?}");
        std::fs::remove_dir(channel.join("sump.id.tmp")).unwrap();
        let third = open(dir.path(), mode, 8).1.channel_id();
        assert_ne!(third, unrecorded, "{mode:?}: an id never recorded is never used again");
        assert_eq!(open(dir.path(), mode, 8).1.channel_id(), third, "{mode:?}");
    }
}
