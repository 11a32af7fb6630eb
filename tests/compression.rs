//! Segment compression: round trips with each codec, the space it saves,
//! restarts in the middle of a block, codecs changing between runs, and
//! damaged compressed blocks.

use std::path::Path;

use sump::{Builder, Compression, Durability};

const CODECS: [Compression; 3] = [Compression::None, Compression::Lz4, Compression::Zstd { level: 3 }];

fn event(i: u64) -> String {
    format!("{{\"host\":\"web-{:02}\",\"level\":\"info\",\"msg\":\"request served\",\"seq\":{i}}}", i % 16)
}

fn open(dir: &Path, compression: Compression) -> (sump::Sender<String>, sump::Receiver<String>) {
    open_with(dir, compression, 10)
}

fn open_with(dir: &Path, compression: Compression, memory: usize) -> (sump::Sender<String>, sump::Receiver<String>) {
    Builder::new("logs", dir)
        .memory_capacity(memory)
        .segment_bytes(64 << 10)
        .durability(Durability::Persistent)
        .compression(compression)
        .open()
        .unwrap()
}

/// The segment files of the channel, in id order.
fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn every_codec_round_trips_a_backlog_and_the_codecs_shrink_it() {
    let mut sizes = Vec::new();
    for compression in CODECS {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = open(dir.path(), compression);
        tx.send_batch((0..20_000).map(event)).unwrap();
        tx.flush().unwrap();
        let stats = tx.stats();
        assert_eq!(stats.on_disk, 19_990, "{compression:?}");
        let on_disk: u64 = segments(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
        assert_eq!(stats.disk_bytes, on_disk, "{compression:?}: disk_bytes counts the files as written");
        sizes.push(on_disk);
        let flags = std::fs::read(&segments(dir.path())[0]).unwrap()[10];
        assert_eq!(flags, [0, 1, 2][sizes.len() - 1], "{compression:?}: the header records the codec");
        drop(tx);
        assert!(rx.iter().eq((0..20_000).map(event)), "{compression:?}");
        assert_eq!(rx.stats().corrupt, 0);
    }
    eprintln!("segment bytes for 19,990 log lines: none {}, LZ4 {}, Zstandard {}", sizes[0], sizes[1], sizes[2]);
    assert!(sizes[1] * 4 < sizes[0], "LZ4 should shrink repetitive logs at least 4x: {sizes:?}");
    assert!(sizes[2] * 4 < sizes[0], "Zstandard should shrink repetitive logs at least 4x: {sizes:?}");
}

#[test]
fn a_clean_restart_inside_a_block_delivers_nothing_twice_and_loses_nothing() {
    for compression in CODECS {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = open(dir.path(), compression);
        tx.send_batch((0..5_000).map(event)).unwrap();
        drop(tx);
        let mut got: Vec<String> = Vec::new();
        let mut inside_a_block = 0;
        // Stop at odd places: inside blocks, between them, in memory.
        for take in [3usize, 250, 1, 1_000, 777] {
            got.extend(rx.iter().take(take));
            drop(rx);
            // Bytes 10..12 of the progress file: records of a block read.
            if let Ok(progress) = std::fs::read(dir.path().join("logs/progress")) {
                inside_a_block += usize::from(progress[10..12] != [0, 0]);
            }
            let (tx, reopened) = open(dir.path(), compression);
            drop(tx);
            rx = reopened;
        }
        got.extend(rx.iter());
        assert_eq!(inside_a_block > 0, compression != Compression::None, "{compression:?}: {inside_a_block}");
        assert_eq!(got.len(), 5_000, "{compression:?}");
        assert!(got.iter().cloned().eq((0..5_000).map(event)), "{compression:?}: in order, no duplicates");
    }
}

#[test]
fn a_channel_reads_segments_written_with_another_codec() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    let mut next = 0;
    for compression in [Compression::Zstd { level: 1 }, Compression::None, Compression::Lz4] {
        let (tx, rx) = open(dir.path(), compression);
        tx.send_batch((next..next + 1_000).map(event)).unwrap();
        expected.extend((next..next + 1_000).map(event));
        next += 1_000;
        drop((tx, rx));
    }
    let (tx, rx) = open(dir.path(), Compression::None);
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), expected);
}

#[test]
fn a_damaged_compressed_block_is_skipped_and_counted_and_the_rest_is_read() {
    for compression in [Compression::Lz4, Compression::Zstd { level: 3 }] {
        let dir = tempfile::tempdir().unwrap();
        // Each flush packs what was sent since into one block: blocks of
        // 100 records, all on disk.
        let (tx, rx) = open_with(dir.path(), compression, 0);
        for chunk in 0..10u64 {
            tx.send_batch((chunk * 100..chunk * 100 + 100).map(event)).unwrap();
            tx.flush().unwrap();
        }
        drop((tx, rx));
        let segment = segments(dir.path()).remove(0);
        let mut bytes = std::fs::read(&segment).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        let mut permissions = std::fs::metadata(&segment).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        permissions.set_readonly(false);
        std::fs::set_permissions(&segment, permissions).unwrap();
        std::fs::write(&segment, &bytes).unwrap();

        let (tx, rx) = open_with(dir.path(), compression, 0);
        drop(tx);
        let got: Vec<String> = rx.iter().collect();
        let stats = rx.stats();
        assert!(stats.corrupt >= 1, "{compression:?}: the damaged block is counted");
        let lost = 1_000 - got.len();
        assert!((1..=200).contains(&lost), "{compression:?}: one block of about 100 lost, not {lost}");
        // What was read is in order, a gap where the block was.
        let seqs: Vec<u64> =
            got.iter().map(|e| e.rsplit(':').next().unwrap().trim_end_matches('}').parse().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{compression:?}");
        assert_eq!((seqs[0], *seqs.last().unwrap()), (0, 999), "{compression:?}: blocks on both sides are read");
    }
}

#[test]
fn a_zstd_level_above_the_highest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opened = Builder::new("logs", dir.path()).compression(Compression::Zstd { level: 23 }).open::<String>();
    match opened {
        Err(sump::OpenError::InvalidConfig { reason }) => assert!(reason.contains("22"), "{reason}"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert!(Builder::new("logs", dir.path()).compression(Compression::Zstd { level: -3 }).open::<String>().is_ok());
}
