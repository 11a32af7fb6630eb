//! Damaged segment files, found while the channel runs: the damaged
//! records are skipped and counted, never delivered, reading resumes at the
//! next intact record, the damaged segment is set aside, and nothing
//! panics or hangs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sump::Builder;

const HEADER: usize = 16;
/// A 10-character string encodes to 11 bytes: a 27-byte frame (length,
/// CRC, payload, sequence number; segment format 2 added the number).
const FRAME: usize = 8 + 11 + 8;

fn item(i: u32) -> String {
    format!("item-{i:05}")
}

fn segments(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    paths.sort();
    paths
}

fn edit(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    change(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// Five records per 151-byte segment.
fn open(dir: &Path) -> (sump::Sender<String>, sump::Receiver<String>) {
    Builder::new("c", dir).memory_capacity(0).segment_bytes((HEADER + 5 * FRAME) as u64).open().unwrap()
}

#[test]
fn a_flipped_bit_loses_only_the_damaged_record_and_sets_its_segment_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path());
    for i in 0..20 {
        tx.send(item(i)).unwrap();
    }
    let channel_dir = dir.path().join("c");
    let sealed = segments(&channel_dir, ".seg");
    assert_eq!(sealed.len(), 4);
    // Third record of the second segment: items 5..10 live there.
    edit(&sealed[1], |bytes| bytes[HEADER + 2 * FRAME + 12] ^= 0x08);
    drop(tx);
    let got: Vec<String> = rx.iter().collect();
    let expected: Vec<String> = (0..20).filter(|&i| i != 7).map(item).collect();
    assert_eq!(got, expected, "reading resumes at the next intact record");
    let stats = rx.stats();
    assert_eq!(stats.corrupt, 1, "only the damaged record is lost");
    assert_eq!(stats.received, 19);
    let aside = segments(&channel_dir, ".seg.corrupt");
    assert_eq!(aside.len(), 1, "the damaged segment is kept for inspection");
    assert!(aside[0].to_string_lossy().contains(&*sealed[1].file_name().unwrap().to_string_lossy()));
    drop(rx);
    assert!(aside[0].exists(), "closing the channel keeps the damaged segment");
}

#[test]
fn a_record_that_passes_its_crc_but_does_not_decode_is_skipped_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path());
    for i in 0..10 {
        tx.send(item(i)).unwrap();
    }
    let sealed = segments(&dir.path().join("c"), ".seg");
    edit(&sealed[0], |bytes| {
        let frame = HEADER + FRAME; // the second record
        bytes[frame + 8 + 1] = 0xff; // not UTF-8
        let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[frame..frame + 4]), &bytes[frame + 8..frame + FRAME]);
        bytes[frame + 4..frame + 8].copy_from_slice(&crc.to_le_bytes());
    });
    drop(tx);
    let got: Vec<String> = rx.iter().collect();
    let expected: Vec<String> = (0..10).filter(|&i| i != 1).map(item).collect();
    assert_eq!(got, expected);
    assert_eq!(rx.stats().corrupt, 1);
    assert_eq!(segments(&dir.path().join("c"), ".seg.corrupt").len(), 1);
}

#[test]
fn a_segment_with_a_bad_header_is_set_aside_and_the_rest_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path());
    for i in 0..15 {
        tx.send(item(i)).unwrap();
    }
    let sealed = segments(&dir.path().join("c"), ".seg");
    edit(&sealed[0], |bytes| bytes[0] = b'X');
    drop(tx);
    let got: Vec<String> = rx.iter().collect();
    assert_eq!(got, (5..15).map(item).collect::<Vec<_>>());
    assert_eq!(rx.stats().corrupt, 5);
}

#[test]
fn a_truncated_segment_is_read_up_to_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = open(dir.path());
    for i in 0..10 {
        tx.send(item(i)).unwrap();
    }
    let sealed = segments(&dir.path().join("c"), ".seg");
    edit(&sealed[0], |bytes| bytes.truncate(HEADER + 3 * FRAME + 5));
    drop(tx);
    let got: Vec<String> = rx.iter().collect();
    assert_eq!(got, (0..3).chain(5..10).map(item).collect::<Vec<_>>());
    assert_eq!(rx.stats().corrupt, 2);
}

#[test]
fn damage_in_the_segment_being_written_is_found_after_sealing_it() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("c", dir.path()).memory_capacity(0).open::<String>().unwrap();
    for i in 0..10 {
        tx.send(item(i)).unwrap();
    }
    tx.flush().unwrap();
    let active = segments(&dir.path().join("c"), ".seg");
    assert_eq!(active.len(), 1);
    edit(&active[0], |bytes| bytes[HEADER + 4 * FRAME + 10] ^= 0x01);
    let got: Vec<String> = rx.try_iter().collect();
    assert_eq!(got, (0..10).filter(|&i| i != 4).map(item).collect::<Vec<_>>());
    assert_eq!(rx.stats().corrupt, 1);
    tx.send(item(10)).unwrap();
    assert_eq!(rx.recv().unwrap(), item(10), "the channel goes on in a new segment");
    assert_eq!(segments(&dir.path().join("c"), ".seg.corrupt").len(), 1);
}

#[test]
fn a_bad_length_in_the_segment_being_written_does_not_hang_try_recv() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("c", dir.path()).memory_capacity(0).open::<u32>().unwrap();
    for i in 0..3 {
        tx.send(i).unwrap();
    }
    tx.flush().unwrap();
    let active = segments(&dir.path().join("c"), ".seg");
    // The second record's length field (each record here is 8 + 1 + 8
    // bytes: segment format 2 added the sequence number).
    edit(&active[0], |bytes| bytes[HEADER + 17..HEADER + 21].copy_from_slice(&1_000u32.to_le_bytes()));
    let receiver = std::thread::spawn(move || {
        let got: Vec<u32> = (0..3).filter_map(|_| rx.try_recv().ok()).collect();
        (got, rx.stats().corrupt)
    });
    let start = std::time::Instant::now();
    while !receiver.is_finished() {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "try_recv hangs");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(receiver.join().unwrap(), (vec![0, 2], 1));
    drop(tx);
}

#[test]
fn random_damage_never_panics_and_every_item_is_delivered_or_counted() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..30u32 {
        let (tx, rx) = open(dir.path());
        for i in 0..30 {
            tx.send(item(i)).unwrap();
        }
        let sealed = segments(&dir.path().join("c"), ".seg");
        let victim = &sealed[(round as usize) % (sealed.len() - 1)];
        edit(victim, |bytes| {
            let mut x = round.wrapping_mul(2_654_435_761) | 1;
            for _ in 0..(1 + round % 4) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let at = x as usize % bytes.len();
                bytes[at] = bytes[at].wrapping_add(1 + (x >> 8) as u8 % 255);
            }
        });
        drop(tx);
        let got: Vec<String> = rx.iter().collect();
        let stats = rx.stats();
        assert_eq!(got.len() as u64 + stats.corrupt, 30, "round {round}: {stats:?}");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "round {round}: order kept");
        assert!(got.iter().all(|s| s.starts_with("item-")), "round {round}: no garbage delivered");
    }
}
