//! The failure model, from the outside: files touched by other programs,
//! a deleted directory, symbolic links, the wrong item type, a sink that
//! hangs. Each case is made to happen for real, and each test fails
//! without the fix it guards.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sump::{Builder, Durability, OpenError, RecvTimeoutError};

fn segments(channel: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(channel)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    found.sort();
    found
}

fn spilled(dir: &Path, mode: Durability) -> (sump::Sender<u64>, sump::Receiver<u64>) {
    let (tx, rx) =
        Builder::new("touched", dir).durability(mode).memory_capacity(0).segment_bytes(200).open::<u64>().unwrap();
    for i in 0..100 {
        tx.send(i).unwrap();
    }
    tx.flush().unwrap();
    (tx, rx)
}

#[test]
fn a_sealed_segment_deleted_by_another_program_costs_its_items_and_the_receiver_goes_on() {
    for mode in [Durability::Overflow, Durability::Persistent] {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = spilled(dir.path(), mode);
        let victim = segments(&dir.path().join("touched"))[2].clone();
        std::fs::remove_file(&victim).unwrap();
        drop(tx);
        let mut got = Vec::new();
        let started = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(item) => got.push(item),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("{mode:?}: the receiver stalled after {} items", got.len()),
            }
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{mode:?}");
        let stats = rx.stats();
        assert!(stats.lost > 0, "{mode:?}: the loss is counted");
        assert_eq!(got.len() as u64 + stats.lost, 100, "{mode:?}: every item delivered or counted as lost");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{mode:?}: in order");
        assert_eq!(got.last(), Some(&99), "{mode:?}: the segments after the gap are read");
    }
}

#[test]
fn a_deleted_channel_directory_fails_sends_and_ends_the_receiver_without_a_stall() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = spilled(dir.path(), Durability::Persistent);
    std::fs::remove_dir_all(dir.path().join("touched")).unwrap();
    // Sends notice within the check interval.
    let started = Instant::now();
    let err = loop {
        match tx.send(7) {
            Ok(()) => assert!(started.elapsed() < Duration::from_secs(5), "sends never noticed"),
            Err(err) => break err,
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(err.io_error().map(|e| e.kind()), Some(std::io::ErrorKind::NotFound));
    assert!(err.to_string().contains("deleted"), "{err}");
    // The owner is alive: a second open of the same channel is refused.
    assert!(matches!(sump::channel::<u64>("touched", dir.path()), Err(OpenError::Locked { .. })));
    // The receiver delivers what it can and ends, though a sender lives.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(_) => {}
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("the receiver stalled"),
        }
        assert!(Instant::now() < deadline, "the receiver never ended");
    }
    assert_eq!(rx.stats().on_disk, 0);
    drop((tx, rx));
}

#[cfg(unix)]
#[test]
fn a_segment_named_symlink_is_a_foreign_file_never_read_or_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("precious.txt");
    std::fs::write(&outside, b"not a segment: must stay as it is").unwrap();
    let channel = dir.path().join("links");
    std::fs::create_dir_all(&channel).unwrap();
    let link = channel.join("00000000000000000005.seg");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    for mode in [Durability::Persistent, Durability::Overflow] {
        let (tx, rx) = Builder::new("links", dir.path()).durability(mode).memory_capacity(0).open::<u64>().unwrap();
        tx.send(1).unwrap();
        assert_eq!(rx.recv().unwrap(), 1, "{mode:?}");
        assert_eq!(rx.stats().corrupt, 0, "{mode:?}");
        drop((tx, rx));
        assert_eq!(std::fs::read(&outside).unwrap(), b"not a segment: must stay as it is", "{mode:?}");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "{mode:?}: the link stays");
    }
}

#[test]
fn reopening_with_another_item_type_fails_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let open = || Builder::new("typed", dir.path()).durability(Durability::Persistent).memory_capacity(0);
    let (tx, rx) = open().open::<(u64, String)>().unwrap();
    for i in 0..10 {
        tx.send((i, format!("item {i}"))).unwrap();
    }
    drop((tx, rx));
    let before: Vec<(PathBuf, Vec<u8>)> =
        segments(&dir.path().join("typed")).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    let err = open().open::<u32>().unwrap_err();
    let OpenError::TypeMismatch { recorded, requested, .. } = &err else { panic!("{err:?}") };
    assert!(recorded.contains("(u64, alloc::string::String)"), "{recorded}");
    assert!(requested.contains("u32"), "{requested}");
    assert!(err.to_string().contains("allow_type_change"), "{err}");
    assert!(matches!(open().schema_version(3).open::<(u64, String)>(), Err(OpenError::TypeMismatch { .. })));
    let after: Vec<(PathBuf, Vec<u8>)> =
        segments(&dir.path().join("typed")).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    assert_eq!(before, after, "a refused open changes nothing on disk");
    let (tx, rx) = open().open::<(u64, String)>().unwrap();
    drop(tx);
    assert_eq!(rx.iter().count(), 10);
    drop(rx);
    // A deliberate migration is allowed, and recorded.
    drop(open().allow_type_change().open::<u32>().unwrap());
    assert!(matches!(open().open::<(u64, String)>(), Err(OpenError::TypeMismatch { .. })));
}

#[test]
fn a_drainer_shutdown_returns_by_its_deadline_while_the_sink_blocks_and_loses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("hung", dir.path()).durability(Durability::Persistent).open::<u64>().unwrap();
    for i in 0..50 {
        tx.send(i).unwrap();
    }
    let release = Arc::new(AtomicBool::new(false));
    let released = Arc::clone(&release);
    let handle = sump::Drainer::new(rx, move |_: &[u64]| -> Result<(), sump::SinkError> {
        while !released.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        Err(sump::SinkError::transient("gave up"))
    })
    .spawn();
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    let err = handle.shutdown(Duration::from_millis(300)).unwrap_err();
    let waited = started.elapsed();
    assert!(err.is_timeout(), "{err}");
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_millis(1_500), "waited {waited:?}");
    let handle = err.into_handle().expect("the handle comes back");
    release.store(true, Ordering::Relaxed);
    let rx = handle.shutdown(Duration::from_millis(200)).expect("the drainer stops once the sink returns");
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), (0..50).collect::<Vec<_>>(), "nothing was lost");
}
