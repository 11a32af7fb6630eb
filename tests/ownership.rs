//! Directory ownership: the lock, channel names, the files the crate
//! creates and the files it must leave alone.

use std::path::Path;

use sump::{Builder, OpenError};

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn a_second_open_of_the_same_channel_fails_clearly_while_the_first_is_alive() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = sump::channel::<u8>("jobs", dir.path()).unwrap();
    let err = sump::channel::<u8>("jobs", dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("already open") && message.contains("sump.lock"), "{message}");
    sump::channel::<u8>("other", dir.path()).expect("a different name is a different channel");
    drop(rx);
    assert!(sump::channel::<u8>("jobs", dir.path()).is_err(), "a live sender still holds the channel");
    drop(tx);
    sump::channel::<u8>("jobs", dir.path()).expect("free once every handle is gone");
}

#[test]
fn invalid_names_are_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["", ".", "..", "a/b", "../escape", "a\\b", "nul\0"] {
        let err = sump::channel::<u8>(name, dir.path()).unwrap_err();
        assert!(matches!(err, OpenError::InvalidName { .. }), "{name:?}: {err:?}");
        assert!(err.to_string().contains("invalid channel name"), "{err}");
    }
    assert_eq!(names_in(dir.path()), Vec::<String>::new());
}

#[test]
fn open_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    let (tx, rx) = sump::channel::<u8>("c", &nested).unwrap();
    assert!(nested.join("c").join("sump.lock").exists());
    tx.send(1).unwrap();
    assert_eq!(rx.recv().unwrap(), 1);
}

#[test]
fn an_unusable_directory_is_an_io_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = sump::channel::<u8>("c", &file).unwrap_err();
    assert!(matches!(err, OpenError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("plain-file"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn overflow_open_discards_old_segments_but_never_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let channel_dir = dir.path().join("c");
    std::fs::create_dir_all(&channel_dir).unwrap();
    let foreign = [
        "notes.txt",
        "1.seg",
        "00000000000000000001.seg.bak",
        "0000000000000000000x.seg",
        "00000000000000000009.seg.corrupt",
    ];
    for name in foreign {
        std::fs::write(channel_dir.join(name), b"keep me").unwrap();
    }
    std::fs::write(channel_dir.join("00000000000000000003.seg"), b"stale segment").unwrap();
    let (tx, rx) = Builder::new("c", dir.path()).memory_capacity(0).open::<u8>().unwrap();
    assert!(!channel_dir.join("00000000000000000003.seg").exists(), "old segments are scratch in overflow mode");
    tx.send(7).unwrap();
    let live = names_in(&channel_dir);
    assert!(live.contains(&"00000000000000000010.seg".to_string()), "new ids start past every old one: {live:?}");
    assert_eq!(rx.recv().unwrap(), 7);
    drop((tx, rx));
    for name in foreign {
        assert_eq!(std::fs::read(channel_dir.join(name)).unwrap(), b"keep me", "{name} must be untouched");
    }
    let mut expected: Vec<String> = foreign.iter().map(|s| s.to_string()).collect();
    // The channel's own files: its lock, the record of its item type and
    // the sequence numbers reserved (added with segment format 2), and
    // its id.
    expected.push("sump.id".to_string());
    expected.push("sump.lock".to_string());
    expected.push("sump.seq".to_string());
    expected.push("sump.type".to_string());
    expected.sort();
    assert_eq!(names_in(&channel_dir), expected);
}

#[test]
fn closing_the_channel_deletes_its_segments_but_keeps_the_lock_type_sequence_and_id_files() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("c", dir.path()).memory_capacity(0).open::<u8>().unwrap();
    for i in 0..10 {
        tx.send(i).unwrap();
    }
    assert!(names_in(&dir.path().join("c")).iter().any(|n| n.ends_with(".seg")));
    rx.close().unwrap();
    assert_eq!(names_in(&dir.path().join("c")), ["sump.id", "sump.lock", "sump.seq", "sump.type"]);
    assert!(tx.send(1).unwrap_err().is_disconnected());
}
