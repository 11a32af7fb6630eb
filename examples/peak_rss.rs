//! Peak resident memory of the spill workloads, each in a process of its
//! own (peak RSS only grows within a process). Criterion does not measure
//! memory, so this does.
//!
//! - W2: 200,000 items of 1 KiB sent while the receiver idles, then
//!   received; `sump` with a memory capacity of 1,000 beside an unbounded
//!   in-memory channel.
//! - W5: backlogs of 10^4, 10^6 (and with `--large`, 10^7) items of 64
//!   bytes through `sump`.
//!
//! Run with `cargo run --release --example peak_rss`.

use std::process::Command;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn run(workload: &str, items: u64) {
    let dir = tempfile::tempdir().unwrap();
    match workload {
        "w2-sump" => {
            let (tx, rx) = sump::Builder::new("w2", dir.path()).memory_capacity(1_000).open::<String>().unwrap();
            let item = "x".repeat(1024);
            for _ in 0..items {
                tx.send(item.clone()).unwrap();
            }
            drop(tx);
            assert_eq!(rx.iter().count() as u64, items);
        }
        "w2-unbounded" => {
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            let item = "x".repeat(1024);
            for _ in 0..items {
                tx.send(item.clone()).unwrap();
            }
            drop(tx);
            assert_eq!(rx.iter().count() as u64, items);
        }
        "w5-sump" => {
            let (tx, rx) = sump::Builder::new("w5", dir.path())
                .memory_capacity(1_000)
                .max_disk_bytes(u64::MAX)
                .open::<[u64; 8]>()
                .unwrap();
            for i in 0..items {
                tx.send([i; 8]).unwrap();
            }
            drop(tx);
            assert_eq!(rx.iter().count() as u64, items);
        }
        other => panic!("unknown workload {other}"),
    }
    println!("{}", peak_rss_kib());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, workload, items] = args.as_slice() {
        run(workload, items.parse().expect("items"));
        return;
    }
    let large = args.iter().any(|a| a == "--large");
    let mut cases = vec![("w2-sump", 200_000), ("w2-unbounded", 200_000), ("w5-sump", 10_000), ("w5-sump", 1_000_000)];
    if large {
        cases.push(("w5-sump", 10_000_000));
    }
    println!("{:<14} {:>12} {:>14}", "workload", "items", "peak RSS MiB");
    for (workload, items) in cases {
        let output = Command::new(std::env::current_exe().unwrap())
            .args([workload, &items.to_string()])
            .output()
            .expect("run the workload");
        let kib: u64 = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0);
        println!("{workload:<14} {items:>12} {:>14.1}", kib as f64 / 1024.0);
    }
}
