//! Restart time: `open` to the first item of a `WriteAhead` backlog of
//! 1 KiB items, after a clean shutdown and after the writer was killed
//! (a child process that aborts without a shutdown), beside the time to
//! read the backlog's files from start to end in the same run.
//!
//! The page cache is dropped before each measurement when the process may
//! (`/proc/sys/vm/drop_caches`, as root); otherwise the figures are warm
//! and say so.
//!
//! Run with `cargo run --release --example restart` (200,000 items,
//! about 200 MiB); `-- 1000000` for about 1 GiB, `-- 4000000` for 4 GiB.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

fn open(dir: &Path) -> (sump::Sender<String>, sump::Receiver<String>) {
    sump::Builder::new("restart", dir)
        .durability(sump::Durability::WriteAhead)
        .memory_capacity(0)
        .segment_bytes(8 << 20)
        .max_disk_bytes(u64::MAX)
        .open()
        .expect("open")
}

fn fill(dir: &Path, items: u64, crash: bool) {
    let (tx, rx) = open(dir);
    let item = "x".repeat(1024);
    for _ in 0..items {
        tx.send(item.clone()).expect("send");
    }
    tx.flush().expect("flush");
    if crash {
        // As a kill -9: no shutdown, nothing recorded.
        std::process::abort();
    }
    drop((tx, rx));
}

/// Drops the page cache; whether it could.
fn drop_caches() -> bool {
    std::process::Command::new("sync").status().is_ok_and(|s| s.success())
        && std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn read_files(dir: &Path) -> (Duration, u64) {
    let start = Instant::now();
    let mut bytes = 0;
    let mut buffer = vec![0u8; 1 << 20];
    let mut paths: Vec<_> =
        std::fs::read_dir(dir.join("restart")).expect("dir").map(|e| e.expect("entry").path()).collect();
    paths.sort();
    for path in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "seg")) {
        let mut file = std::fs::File::open(path).expect("segment");
        loop {
            let read = file.read(&mut buffer).expect("read");
            if read == 0 {
                break;
            }
            bytes += read as u64;
        }
    }
    (start.elapsed(), bytes)
}

fn first_item(dir: &Path) -> (Duration, u64) {
    let start = Instant::now();
    let (tx, rx) = open(dir);
    let on_disk = rx.stats().on_disk;
    let _first = rx.recv().expect("first item");
    let elapsed = start.elapsed();
    drop((tx, rx));
    (elapsed, on_disk)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("fill") {
        let dir = args.next().expect("dir");
        let items = args.next().and_then(|n| n.parse().ok()).expect("items");
        fill(Path::new(&dir), items, args.next().as_deref() == Some("crash"));
        return;
    }
    let items: u64 = first.and_then(|n| n.parse().ok()).unwrap_or(200_000);
    for crash in [false, true] {
        let dir = tempfile::tempdir_in(".").expect("tempdir");
        let status = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["fill", &dir.path().to_string_lossy(), &items.to_string(), if crash { "crash" } else { "clean" }])
            .status()
            .expect("child");
        assert_eq!(status.success(), !crash, "the child {}", if crash { "aborts" } else { "exits cleanly" });
        let cold = drop_caches();
        let (read, bytes) = read_files(dir.path());
        drop_caches();
        let (open, on_disk) = first_item(dir.path());
        let how = if crash { "after a kill" } else { "after a clean shutdown" };
        let cache = if cold { "cold cache" } else { "warm cache (not root: cannot drop it)" };
        println!(
            "{items} items, {:.0} MiB, {how}, {cache}: open to first item {:.1} ms ({on_disk} counted), \
             reading the files {:.1} ms, ratio {:.3}",
            bytes as f64 / (1 << 20) as f64,
            open.as_secs_f64() * 1e3,
            read.as_secs_f64() * 1e3,
            open.as_secs_f64() / read.as_secs_f64(),
        );
    }
}
