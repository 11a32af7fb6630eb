//! The channel lock holds across processes.
//!
//! This lives in a test binary of its own: spawning a child process forks
//! this one, and until the child execs it shares every open file, lock
//! files included, which would make lock tests running beside it flaky.

use sump::OpenError;

#[test]
fn a_second_process_cannot_open_a_channel_this_process_holds() {
    if let Ok(dir) = std::env::var("SUMP_LOCK_CHILD_DIR") {
        // Child: report how the open went through the exit code.
        let code = match sump::channel::<u8>("shared", &dir) {
            Err(OpenError::Locked { .. }) => 0,
            Err(_) => 2,
            Ok(_) => 3,
        };
        std::process::exit(code);
    }
    let dir = tempfile::tempdir().unwrap();
    let _held = sump::channel::<u8>("shared", dir.path()).unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_second_process_cannot_open_a_channel_this_process_holds", "--nocapture"])
        .env("SUMP_LOCK_CHILD_DIR", dir.path())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0), "the child must see OpenError::Locked");
}

/// A `flock` lock belongs to the open file, which a child forked by another
/// thread holds until it execs: a reopen right after a drop was refused
/// with `Locked` in a third of the tries.
#[test]
fn reopening_right_after_a_drop_is_never_refused_while_other_threads_spawn_processes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::process::Command::new("true").status();
                }
            });
        }
        let mut refused = 0;
        for _ in 0..2_000 {
            match sump::channel::<u8>("reopened", dir.path()) {
                Ok(pair) => {
                    // A second open while this one lives is refused at once.
                    assert!(matches!(sump::channel::<u8>("reopened", dir.path()), Err(OpenError::Locked { .. })));
                    drop(pair);
                }
                Err(OpenError::Locked { .. }) => refused += 1,
                Err(err) => panic!("{err}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(refused, 0, "reopens refused while other threads spawned processes");
    });
}
