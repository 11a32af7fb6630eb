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
