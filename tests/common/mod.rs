//! What the kill -9 tests share: running this test binary as a child and
//! killing it with SIGKILL.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Spawns `child` (this test binary, told by its arguments and environment
/// which role to play), waits for its first `item:N` line, gives it
/// `after` more, kills it with SIGKILL, and returns every number it
/// printed.
pub fn run_and_kill(mut child: Command, after: Duration) -> Vec<u64> {
    let mut child = child.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The test harness may print on the same line before the
            // child's first number; the marker finds it.
            let Some((_, number)) = line.rsplit_once("item:") else { continue };
            if let Ok(n) = number.trim().parse::<u64>() {
                let _ = lines_tx.send(n);
            }
        }
    });
    // Wait for the child to get going, then give it `after` more.
    let first = lines_rx.recv_timeout(Duration::from_secs(30)).expect("the child printed nothing");
    thread::sleep(after);
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    std::iter::once(first).chain(lines_rx.try_iter()).collect()
}

/// A command that runs test `test` of this binary, alone.
pub fn this_test(test: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", test, "--nocapture", "--test-threads=1"]);
    command
}
