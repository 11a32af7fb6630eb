//! Spilling to disk, segment rotation, deletion of read segments, and the
//! return to the memory-only path.

use std::path::Path;

use sump::{Builder, Durability};

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

#[test]
fn items_beyond_memory_capacity_go_to_disk_and_come_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("spill", dir.path()).memory_capacity(10).open::<String>().unwrap();
    for i in 0..1_000 {
        tx.send(format!("item {i}")).unwrap();
    }
    let stats = tx.stats();
    assert_eq!(stats.in_memory, 10);
    assert_eq!(stats.on_disk, 990);
    assert_eq!(stats.spilled, 990);
    assert_eq!(stats.sent, 1_000);
    assert!(stats.disk_bytes > 990 * 8, "every spilled record has an 8-byte frame header");
    for i in 0..1_000 {
        assert_eq!(rx.recv().unwrap(), format!("item {i}"));
    }
    let stats = rx.stats();
    assert_eq!((stats.in_memory, stats.on_disk, stats.received), (0, 0, 1_000));
}

#[test]
fn a_full_segment_is_sealed_read_only_and_a_new_one_started() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) =
        Builder::new("rotate", dir.path()).memory_capacity(0).segment_bytes(1_024).open::<Vec<u8>>().unwrap();
    for i in 0..50u8 {
        tx.send(vec![i; 100]).unwrap();
    }
    let channel_dir = dir.path().join("rotate");
    let files = segment_files(&channel_dir);
    let stats = tx.stats();
    assert_eq!(files.len(), stats.segments);
    assert!(files.len() >= 5, "50 records of ~110 bytes need several 1 KiB segments, got {files:?}");
    for name in &files {
        let meta = std::fs::metadata(channel_dir.join(name)).unwrap();
        assert!(meta.len() <= 1_024, "{name} is {} bytes", meta.len());
    }
    for name in &files[..files.len() - 1] {
        assert!(std::fs::metadata(channel_dir.join(name)).unwrap().permissions().readonly(), "{name} sealed");
    }
    let file_bytes: u64 = files.iter().map(|n| std::fs::metadata(channel_dir.join(n)).unwrap().len()).sum();
    tx.flush().unwrap();
    let file_bytes_flushed: u64 = files.iter().map(|n| std::fs::metadata(channel_dir.join(n)).unwrap().len()).sum();
    assert!(file_bytes <= file_bytes_flushed);
    assert_eq!(file_bytes_flushed, stats.disk_bytes);
    for i in 0..50u8 {
        assert_eq!(rx.recv().unwrap(), vec![i; 100]);
    }
}

#[test]
fn read_segments_are_deleted_as_the_receiver_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("del", dir.path()).memory_capacity(0).segment_bytes(256).open::<u64>().unwrap();
    for i in 0..200 {
        tx.send(i).unwrap();
    }
    let channel_dir = dir.path().join("del");
    let before = segment_files(&channel_dir);
    assert!(before.len() > 3);
    for i in 0..100 {
        assert_eq!(rx.recv().unwrap(), i);
    }
    let middle = segment_files(&channel_dir);
    assert!(middle.len() < before.len(), "segments read past must be deleted: {before:?} -> {middle:?}");
    assert!(!middle.contains(&before[0]), "the oldest segment is gone");
    assert_eq!(rx.stats().segments, middle.len());
    for i in 100..200 {
        assert_eq!(rx.recv().unwrap(), i);
    }
    // Changed when segments became reused across spill episodes: an empty
    // channel keeps at most its active segment, for the next spill.
    let left = segment_files(&channel_dir);
    assert!(left.len() <= 1 && !left.iter().any(|name| middle.contains(name) && name != &middle[middle.len() - 1]));
    let stats = rx.stats();
    assert_eq!((stats.segments, stats.on_disk), (left.len(), 0));
    assert!(stats.disk_bytes <= 256, "less than one segment: {stats:?}");
}

#[test]
fn once_the_backlog_drains_items_travel_through_memory_again() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("back", dir.path()).memory_capacity(4).open::<u32>().unwrap();
    for i in 0..20 {
        tx.send(i).unwrap();
    }
    assert_eq!(tx.stats().spilled, 16);
    for i in 0..20 {
        assert_eq!(rx.recv().unwrap(), i);
    }
    for i in 20..24 {
        tx.send(i).unwrap();
    }
    let stats = tx.stats();
    assert_eq!(stats.spilled, 16, "with room in memory and nothing on disk, nothing spills");
    assert_eq!(stats.in_memory, 4);
    // Changed when segments became reused: the active one stays for the
    // next spill episode.
    assert!(stats.segments <= 1);
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![20, 21, 22, 23]);
}

#[test]
fn while_anything_is_on_disk_new_items_follow_it_there() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("follow", dir.path()).memory_capacity(2).open::<u32>().unwrap();
    for i in 0..5 {
        tx.send(i).unwrap();
    }
    // Memory now has room again, but 2..5 are on disk: 5 must not overtake them.
    assert_eq!(rx.recv().unwrap(), 0);
    assert_eq!(rx.recv().unwrap(), 1);
    tx.send(5).unwrap();
    assert_eq!(tx.stats().on_disk, 4);
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![2, 3, 4, 5]);
}

#[test]
fn a_receiver_keeping_up_with_a_spilling_sender_reads_unflushed_records() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("tail", dir.path()).memory_capacity(0).open::<u64>().unwrap();
    for i in 0..1_000 {
        tx.send(i).unwrap();
        assert_eq!(rx.try_recv().unwrap(), i, "an item is visible as soon as send returns");
    }
    assert_eq!(tx.stats().spilled, 1_000);
}

#[test]
fn a_capacity_of_zero_sends_everything_through_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("zero", dir.path()).memory_capacity(0).open::<u8>().unwrap();
    tx.send(1).unwrap();
    let stats = tx.stats();
    assert_eq!((stats.in_memory, stats.on_disk, stats.segments), (0, 1, 1));
    assert_eq!(rx.recv().unwrap(), 1);
}

#[test]
fn an_item_larger_than_a_segment_is_refused_with_an_error_and_handed_back() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("big", dir.path()).memory_capacity(1).segment_bytes(64).open::<Vec<u8>>().unwrap();
    tx.send(vec![0; 1_000]).unwrap(); // memory: never encoded, any size goes
    let err = tx.send(vec![1; 1_000]).unwrap_err();
    let io = err.io_error().expect("an I/O cause");
    assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("segment"), "{err}");
    assert_eq!(err.into_inner(), vec![1; 1_000]);
    tx.send(vec![2; 10]).unwrap();
    assert_eq!(rx.recv().unwrap(), vec![0; 1_000]);
    assert_eq!(rx.recv().unwrap(), vec![2; 10]);
}

#[test]
fn items_larger_than_the_write_buffer_spill_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("huge", dir.path()).memory_capacity(0).open::<Vec<u8>>().unwrap();
    let items: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 600_000]).collect();
    for item in &items {
        tx.send(item.clone()).unwrap();
    }
    for item in &items {
        assert_eq!(&rx.recv().unwrap(), item);
    }
}

#[test]
fn an_item_serde_refuses_is_handed_back_with_an_error() {
    #[derive(Debug, PartialEq)]
    struct Refused;
    impl serde::Serialize for Refused {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refused"))
        }
    }
    impl<'de> serde::Deserialize<'de> for Refused {
        fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            Ok(Refused)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = Builder::new("refused", dir.path()).memory_capacity(0).open::<Refused>().unwrap();
    let err = tx.send(Refused).unwrap_err();
    assert_eq!(err.io_error().map(|e| e.kind()), Some(std::io::ErrorKind::InvalidData));
    assert_eq!(err.into_inner(), Refused);
    let stats = tx.stats();
    assert_eq!((stats.sent, stats.on_disk), (0, 0));
}

#[test]
fn a_type_that_cannot_be_read_back_fails_its_first_spill_instead_of_vanishing() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Number(u32),
        Text(String),
    }
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("untagged", dir.path()).memory_capacity(2).open::<Loose>().unwrap();
    tx.send(Loose::Number(1)).unwrap();
    tx.send(Loose::Text("two".into())).unwrap();
    let err = tx.send(Loose::Number(3)).unwrap_err();
    assert_eq!(err.io_error().map(|e| e.kind()), Some(std::io::ErrorKind::InvalidData));
    assert!(err.to_string().contains("deserialize_any"), "{err}");
    assert_eq!(err.into_inner(), Loose::Number(3));
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![Loose::Number(1), Loose::Text("two".into())]);
    assert_eq!(rx.stats().corrupt, 0);
}

#[test]
fn records_the_receiver_decoded_ahead_still_count_as_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = sump::Builder::new("ahead", dir.path()).memory_capacity(10).open::<u32>().unwrap();
    for i in 0..1_000 {
        tx.send(i).unwrap();
    }
    // Past memory, into the disk backlog, which is read in batches.
    for i in 0..15 {
        assert_eq!(rx.recv().unwrap(), i);
    }
    let stats = rx.stats();
    assert_eq!(stats.received, 15);
    assert_eq!((stats.in_memory, stats.on_disk), (0, 985), "{stats:?}");
    assert_eq!(stats.sent, stats.received + stats.in_memory as u64 + stats.on_disk);
    // New items follow the backlog.
    tx.send(1_000).unwrap();
    drop(tx);
    assert!(rx.iter().eq(15..=1_000));
    assert_eq!(rx.stats().on_disk, 0);
}

/// Found by a reading of the disk tier: every spill episode created a
/// segment file of its own (300 bursts made 300 files in `Overflow` and
/// `Persistent`, 985 in `WriteAhead`), each with a create, a header write
/// and directory syncs. The active segment now takes records across
/// episodes.
#[test]
fn a_receiver_that_keeps_catching_up_reuses_one_segment_across_spill_episodes() {
    for (mode, first_id) in
        [(Durability::Overflow, 0u64), (Durability::Persistent, 1 << 32), (Durability::WriteAhead, 1 << 32)]
    {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = Builder::new("bursts", dir.path()).durability(mode).memory_capacity(64).open::<u64>().unwrap();
        let channel_dir = dir.path().join("bursts");
        let mut highest = first_id;
        for burst in 0..300u64 {
            for i in 0..1_000 {
                tx.send(burst * 1_000 + i).unwrap();
            }
            for name in segment_files(&channel_dir) {
                let id: u64 = name.trim_end_matches(".seg").parse().unwrap();
                highest = highest.max(id);
            }
            for i in 0..1_000 {
                assert_eq!(rx.recv().unwrap(), burst * 1_000 + i, "{mode:?}");
            }
        }
        let created = highest - first_id + 1;
        eprintln!("{mode:?}: 300 bursts created {created} segment files");
        assert_eq!(created, 1, "{mode:?}: one segment takes every episode");
        let stats = rx.stats();
        assert!(stats.segments <= 1 && stats.disk_bytes < sump::DEFAULT_SEGMENT_BYTES, "{mode:?}: {stats:?}");
        drop((tx, rx));
    }
}

/// An item whose decoding, when it is a large one, runs the hook set for
/// this thread: a way to have a sender spill while the receiver decodes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "Wire")]
enum Item {
    Small(u32),
    Large(Vec<u8>),
}

/// [`Item`] as it is decoded, before the hook runs.
#[derive(serde::Deserialize)]
enum Wire {
    Small(u32),
    Large(Vec<u8>),
}

type Hook = Box<dyn FnOnce()>;

thread_local! {
    static ON_LARGE: std::cell::RefCell<Option<Hook>> = std::cell::RefCell::new(None);
}

impl From<Wire> for Item {
    fn from(wire: Wire) -> Item {
        match wire {
            Wire::Small(n) => Item::Small(n),
            Wire::Large(bytes) => {
                if let Some(hook) = ON_LARGE.with(|hook| hook.borrow_mut().take()) {
                    hook();
                }
                Item::Large(bytes)
            }
        }
    }
}

#[test]
fn a_receiver_that_catches_up_with_a_spilling_sender_takes_the_channel_back_to_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("catch", dir.path()).memory_capacity(2).open::<Item>().unwrap();
    // Too large to be kept beside its frame: the receive decodes it.
    let large = Item::Large(vec![7; 300 * 1024]);
    tx.send(Item::Small(0)).unwrap();
    tx.send(Item::Small(1)).unwrap();
    tx.send(large.clone()).unwrap();
    assert_eq!(tx.stats().spilled, 1);
    // While the receive decodes the large item, a sender spills a small
    // one behind it, after the receive last looked at the backlog.
    let meanwhile = tx.clone();
    ON_LARGE.with(|hook| *hook.borrow_mut() = Some(Box::new(move || meanwhile.send(Item::Small(2)).unwrap())));
    assert_eq!(rx.recv().unwrap(), Item::Small(0));
    assert_eq!(rx.recv().unwrap(), Item::Small(1));
    assert_eq!(rx.recv().unwrap(), large);
    assert!(ON_LARGE.with(|hook| hook.borrow().is_none()), "the receive decoded the large item");
    assert_eq!(tx.stats().spilled, 2);
    // The item spilled meanwhile was kept as it was sent, and it was all
    // that was left on disk: the receive took it along, so the backlog is
    // gone and the next send goes to memory.
    assert_eq!(tx.stats().on_disk, 1, "taken, not handed out yet");
    tx.send(Item::Small(3)).unwrap();
    assert_eq!(tx.stats().spilled, 2, "nothing was left on disk for it to follow");
    assert_eq!(tx.stats().in_memory, 1);
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![Item::Small(2), Item::Small(3)]);
}

#[test]
fn kept_items_in_the_next_segment_are_not_taken_along_and_the_channel_stays_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) =
        Builder::new("rotate", dir.path()).memory_capacity(2).segment_bytes(320 * 1024).open::<Item>().unwrap();
    let large = Item::Large(vec![7; 300 * 1024]);
    // Kept (under the kept bytes), but too large for what is left of the
    // large item's segment: it starts the next one.
    let medium = Item::Large(vec![8; 30 * 1024]);
    tx.send(Item::Small(0)).unwrap();
    tx.send(Item::Small(1)).unwrap();
    tx.send(large.clone()).unwrap();
    let meanwhile = tx.clone();
    let spilled = medium.clone();
    ON_LARGE.with(|hook| *hook.borrow_mut() = Some(Box::new(move || meanwhile.send(spilled).unwrap())));
    assert_eq!(rx.recv().unwrap(), Item::Small(0));
    assert_eq!(rx.recv().unwrap(), Item::Small(1));
    assert_eq!(rx.recv().unwrap(), large);
    assert!(ON_LARGE.with(|hook| hook.borrow().is_none()), "the receive decoded the large item");
    let stats = tx.stats();
    assert_eq!((stats.spilled, stats.segments), (2, 2));
    // The kept item is all that is left on disk, but in another segment:
    // the cursor cannot pass its frame from where it is, so it stays on
    // disk and the next send follows it there.
    tx.send(Item::Small(3)).unwrap();
    assert_eq!(tx.stats().spilled, 3);
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![medium, Item::Small(3)]);
    assert_eq!(tx.stats().on_disk, 0);
}
