//! The `sump` inspector binary (feature `cli`): ls, verify and dump, on a
//! live channel and on damaged files.

use std::path::Path;
use std::process::{Command, Output};

use sump::{Builder, Durability};

fn sump(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sump")).args(args).arg(dir).arg("jobs").output().unwrap()
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn filled(dir: &Path) -> (sump::Sender<String>, sump::Receiver<String>) {
    let (tx, rx) =
        Builder::new("jobs", dir).durability(Durability::WriteAhead).segment_bytes(1_024).open::<String>().unwrap();
    for i in 0..100 {
        tx.send(format!("job number {i:03}")).unwrap();
    }
    (tx, rx)
}

#[test]
fn ls_lists_segments_with_their_records_on_a_live_channel() {
    let dir = tempfile::tempdir().unwrap();
    let (_tx, _rx) = filled(dir.path());
    let output = sump(&["ls"], dir.path());
    assert!(output.status.success());
    let listing = text(&output);
    assert!(listing.contains("total: 100 records"), "{listing}");
    assert!(listing.contains("sealed") && listing.contains("active"), "{listing}");
}

#[test]
fn verify_passes_a_clean_channel_and_fails_a_damaged_one_naming_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = filled(dir.path());
    let output = sump(&["verify"], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(text(&output).contains("ok: 100 records"), "{}", text(&output));
    drop((tx, rx));

    let first = sump::inspect::segment_files(dir.path(), "jobs").unwrap().remove(0);
    let mut permissions = std::fs::metadata(&first.path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&first.path, permissions).unwrap();
    let mut bytes = std::fs::read(&first.path).unwrap();
    bytes[16 + 8 + 3] ^= 0x20; // inside the first record's payload
    std::fs::write(&first.path, bytes).unwrap();

    let output = sump(&["verify"], dir.path());
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("segment {} offset 16", first.id)), "{stderr}");
    assert!(text(&output).contains("damaged: 1 problems found; 99 intact records"), "{}", text(&output));
}

#[test]
fn dump_prints_every_record_with_its_offset_length_and_hex() {
    let dir = tempfile::tempdir().unwrap();
    let (_tx, _rx) = filled(dir.path());
    let output = sump(&["dump"], dir.path());
    assert!(output.status.success());
    let dump = text(&output);
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines.len(), 100);
    let fields: Vec<&str> = lines[0].split_whitespace().collect();
    // Changed with segment format 2: dump prints each record's sequence
    // number after its offset.
    assert_eq!(fields[1], "16", "the first record follows the 16-byte header");
    assert_eq!(fields[2], "0", "the first item sent has sequence number 0");
    assert_eq!(fields[3], "15", "a 14-character string encodes to 15 bytes");
    let expected: String = std::iter::once(14u8).chain(*b"job number 000").map(|b| format!("{b:02x}")).collect();
    assert_eq!(fields[4], expected);
    assert_eq!(lines[99].split_whitespace().nth(2), Some("99"), "numbers follow send order");
}

#[test]
fn a_missing_channel_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = sump(&["verify"], &dir.path().join("nowhere"));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nowhere"));
}

#[test]
fn the_inspector_reads_lz4_compressed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("jobs", dir.path())
        .durability(Durability::Persistent)
        .memory_capacity(0)
        .compression(sump::Compression::Lz4)
        .open::<String>()
        .unwrap();
    for i in 0..100 {
        tx.send(format!("job number {i:03}")).unwrap();
    }
    drop((tx, rx));
    let output = sump(&["verify"], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(text(&output).contains("ok: 100 records"), "{}", text(&output));
    let dump = text(&sump(&["dump"], dir.path()));
    assert_eq!(dump.lines().count(), 100);
    assert!(dump
        .lines()
        .last()
        .unwrap()
        .ends_with(&"job number 099".bytes().map(|b| format!("{b:02x}")).collect::<String>()));
}

/// A channel whose first segment was damaged and set aside by a read.
fn with_a_set_aside_segment(dir: &Path) -> u64 {
    let (tx, rx) = filled(dir);
    drop((tx, rx));
    let first = sump::inspect::segment_files(dir, "jobs").unwrap().remove(0);
    let mut permissions = std::fs::metadata(&first.path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&first.path, permissions).unwrap();
    let mut bytes = std::fs::read(&first.path).unwrap();
    bytes[16 + 8 + 3] ^= 0x20; // the first record's payload
    std::fs::write(&first.path, bytes).unwrap();
    let (tx, rx) = Builder::new("jobs", dir).durability(Durability::WriteAhead).open::<String>().unwrap();
    drop(tx);
    let read: Vec<String> = rx.iter().collect();
    assert_eq!(read.len(), 99, "the damaged record is skipped");
    assert_eq!(rx.stats().set_aside_files, 1);
    first.id
}

#[test]
fn salvage_puts_the_intact_records_of_set_aside_files_back_in_front_of_the_channel() {
    let dir = tempfile::tempdir().unwrap();
    with_a_set_aside_segment(dir.path());
    let (tx, rx) = Builder::new("jobs", dir.path()).durability(Durability::WriteAhead).open::<String>().unwrap();
    tx.send("newer".to_string()).unwrap();
    let refused = sump(&["salvage"], dir.path());
    assert_eq!(refused.status.code(), Some(2), "salvage refuses an open channel");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("close the channel"));
    drop((tx, rx));

    let output = sump(&["salvage"], dir.path());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let said = text(&output);
    assert!(said.contains("records from 1 set-aside files (1 damaged stretches skipped)"), "{said}");
    let (tx, rx) = Builder::new("jobs", dir.path()).durability(Durability::WriteAhead).open::<String>().unwrap();
    drop(tx);
    let got: Vec<String> = rx.iter().collect();
    assert_eq!(got.last().map(String::as_str), Some("newer"), "salvaged records come first: {got:?}");
    assert!(got.len() > 1 && got[0].starts_with("job number 0"), "{got:?}");
    assert!(!got.contains(&"job number 000".to_string()), "the damaged record stays lost");
    assert_eq!(rx.stats().set_aside_files, 0, "the set-aside file is gone");
}

#[test]
fn salvage_can_write_a_file_of_its_own_and_purge_removes_set_aside_files() {
    let dir = tempfile::tempdir().unwrap();
    with_a_set_aside_segment(dir.path());
    let out = dir.path().join("rescued.seg");
    let output = Command::new(env!("CARGO_BIN_EXE_sump"))
        .args(["salvage", "--out"])
        .arg(&out)
        .arg(dir.path())
        .arg("jobs")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let file = sump::inspect::SegmentFile {
        id: 0,
        path: out.clone(),
        bytes: std::fs::metadata(&out).unwrap().len(),
        state: sump::inspect::SegmentState::Sealed,
    };
    let report = sump::inspect::read_segment(&file, |_| {}, |_| {}).unwrap();
    assert!(report.records > 0 && report.damage.is_empty(), "{report:?}");

    let output = sump(&["purge"], dir.path());
    assert!(output.status.success());
    assert!(text(&output).starts_with("removed 1 set-aside files"), "{}", text(&output));
    let listing = sump::inspect::segment_files(dir.path(), "jobs").unwrap();
    assert!(listing.iter().all(|f| f.state != sump::inspect::SegmentState::SetAside));
}

#[test]
fn a_closed_output_pipe_ends_dump_quietly() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = Builder::new("jobs", dir.path()).durability(Durability::Persistent).open::<String>().unwrap();
    for i in 0..20_000 {
        tx.send(format!("job number {i:05}")).unwrap();
    }
    drop((tx, rx));
    let mut child = Command::new(env!("CARGO_BIN_EXE_sump"))
        .args(["dump"])
        .arg(dir.path())
        .arg("jobs")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap(); // then the pipe closes
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn ls_shows_each_segments_tier_and_verify_checks_the_remote_copies() {
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("remote");
    let (tx, rx) = Builder::new("jobs", dir.path())
        .durability(Durability::WriteAhead)
        .memory_capacity(0)
        .segment_bytes(1_024)
        .max_disk_bytes(16 << 10)
        .offload_after_bytes(4 << 10)
        .remote(sump::DirStore::create(&remote).unwrap())
        .open::<String>()
        .unwrap();
    for i in 0..1_000 {
        tx.send(format!("job number {i:03}")).unwrap();
    }
    let start = std::time::Instant::now();
    while tx.stats().remote_segments < 3 {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "{:?}", tx.stats());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop((tx, rx));
    let listing = text(&sump(&["ls"], dir.path()));
    assert!(listing.contains("total: 1000 records"), "{listing}");
    assert!(listing.lines().filter(|line| line.ends_with("  remote")).count() >= 3, "{listing}");
    assert!(listing.lines().any(|line| line.ends_with("  local")), "{listing}");

    let remote_arg = format!("--remote-dir={}", remote.display());
    let output = sump(&["verify", &remote_arg], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(text(&output).contains("ok: 1000 records"), "{}", text(&output));
    // Without the store, the remote copies are named as not checked.
    let output = sump(&["verify"], dir.path());
    assert!(String::from_utf8_lossy(&output.stderr).contains("remote copies not checked"));

    // A damaged remote copy fails verification, naming the segment.
    let object = std::fs::read_dir(&remote)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[40] ^= 0x01;
    std::fs::write(&object, bytes).unwrap();
    let output = sump(&["verify", &remote_arg], dir.path());
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("remote copy: object"), "{output:?}");
}
