//! `sump`: inspect a channel's files without disturbing it.
//!
//! ```text
//! sump ls DIR NAME       segments with their records, bytes and state
//! sump verify DIR NAME   check every header and CRC; exit 0 only if all is clean
//! sump dump DIR NAME     every record: segment, offset, sequence number, length, payload as hex
//! sump salvage DIR NAME  the intact records of set-aside files, back into the channel
//!                        (or, with --out FILE, into a segment file of their own)
//! sump purge DIR NAME    remove the set-aside files
//! ```
//!
//! `salvage` (into the channel) and `purge` change the channel's files and
//! refuse to run while it is open. A closed output pipe (`sump dump | head`)
//! ends the command quietly.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sump::inspect::{read_segment, segment_files, SegmentFile, SegmentState};

#[derive(Parser)]
#[command(name = "sump", version, about = "Inspect the files of a sump channel (read-only; safe on a live channel)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the channel's segments: records, bytes and state.
    Ls {
        /// The directory the channel was opened in.
        dir: PathBuf,
        /// The channel's name.
        name: String,
    },
    /// Check every segment header and record CRC. Exits 0 only when all is
    /// clean (a tail still being written in the active segment is fine).
    Verify {
        /// The directory the channel was opened in.
        dir: PathBuf,
        /// The channel's name.
        name: String,
    },
    /// Print every intact record: segment, offset, sequence number, length and payload bytes
    /// as hex.
    Dump {
        /// The directory the channel was opened in.
        dir: PathBuf,
        /// The channel's name.
        name: String,
        /// Print at most this many payload bytes of each record.
        #[arg(long, default_value_t = 64)]
        max_bytes: usize,
    },
    /// Recover the intact records of set-aside (damaged) segments: back into
    /// the channel, in front of its backlog, or with --out into a new
    /// segment file. The channel must be closed.
    Salvage {
        /// The directory the channel was opened in.
        dir: PathBuf,
        /// The channel's name.
        name: String,
        /// Write the records to this new file instead of the channel (the
        /// set-aside files then stay).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Remove the set-aside segments. The channel must be closed.
    Purge {
        /// The directory the channel was opened in.
        dir: PathBuf,
        /// The channel's name.
        name: String,
    },
}

fn state_name(state: SegmentState) -> &'static str {
    match state {
        SegmentState::Sealed => "sealed",
        SegmentState::Active => "active",
        SegmentState::SetAside => "set-aside",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ls { dir, name } => ls(&dir, &name),
        Command::Verify { dir, name } => verify(&dir, &name),
        Command::Dump { dir, name, max_bytes } => dump(&dir, &name, max_bytes),
        Command::Salvage { dir, name, out } => salvage(&dir, &name, out.as_deref()),
        Command::Purge { dir, name } => purge(&dir, &name),
    };
    match result {
        Ok(code) => code,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sump: {err}");
            ExitCode::from(2)
        }
    }
}

fn files(dir: &std::path::Path, name: &str) -> std::io::Result<Vec<SegmentFile>> {
    segment_files(dir, name)
        .map_err(|err| std::io::Error::new(err.kind(), format!("{}: {err}", dir.join(name).display())))
}

fn ls(dir: &std::path::Path, name: &str) -> std::io::Result<ExitCode> {
    let files = files(dir, name)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:>20}  {:>10}  {:>12}  {:>7}  state", "segment", "records", "bytes", "damaged")?;
    let (mut records, mut bytes) = (0, 0);
    for file in files {
        let report = read_segment(&file, |_| {}, |_| {})?;
        let damaged = report.damage.iter().filter(|d| !(d.at_end && file.state == SegmentState::Active)).count();
        writeln!(
            out,
            "{:>20}  {:>10}  {:>12}  {:>7}  {}",
            file.id,
            report.records,
            file.bytes,
            damaged,
            state_name(file.state)
        )?;
        if file.state != SegmentState::SetAside {
            records += report.records;
            bytes += file.bytes;
        }
    }
    writeln!(out, "total: {records} records in {bytes} bytes (set-aside segments not counted)")?;
    Ok(ExitCode::SUCCESS)
}

/// Prints a finding to stderr without tearing the progress bar (which
/// hides itself when stderr is not a terminal).
fn say(bar: &ProgressBar, message: String) {
    bar.suspend(|| eprintln!("{message}"));
}

fn verify(dir: &std::path::Path, name: &str) -> std::io::Result<ExitCode> {
    let files = files(dir, name)?;
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let last_live = files.iter().filter(|f| f.state != SegmentState::SetAside).map(|f| f.id).max();
    let (mut problems, mut records, mut done) = (0, 0, 0);
    for file in &files {
        bar.set_message(format!("segment {}", file.id));
        if file.state == SegmentState::SetAside {
            say(&bar, format!("segment {}: set aside as damaged ({})", file.id, file.path.display()));
            problems += 1;
            done += file.bytes;
            continue;
        }
        let report = read_segment(file, |_| {}, |offset| bar.set_position(done + offset))?;
        done += file.bytes;
        records += report.records;
        for damage in &report.damage {
            let benign = damage.at_end && Some(file.id) == last_live;
            if benign {
                say(&bar, format!(
                    "segment {} offset {}: incomplete last record (a write in progress, or a torn tail recovery cuts off)",
                    file.id, damage.offset
                ));
            } else {
                say(&bar, format!("segment {} offset {}: {}", file.id, damage.offset, damage.reason));
                problems += 1;
            }
        }
    }
    bar.finish_and_clear();
    if problems == 0 {
        println!("ok: {records} records in {} segments, every header and CRC intact", files.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("damaged: {problems} problems found; {records} intact records");
        Ok(ExitCode::from(1))
    }
}

fn dump(dir: &std::path::Path, name: &str, max_bytes: usize) -> std::io::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut failed = None;
    for file in files(dir, name)? {
        if file.state == SegmentState::SetAside {
            continue;
        }
        read_segment(
            &file,
            |record| {
                if failed.is_some() {
                    return;
                }
                let shown = &record.payload[..record.payload.len().min(max_bytes)];
                let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
                let more = if shown.len() < record.payload.len() { "…" } else { "" };
                let seq = record.seq.map_or_else(|| "-".to_string(), |seq| seq.to_string());
                let (id, offset, len) = (file.id, record.offset, record.payload.len());
                if let Err(err) = writeln!(out, "{id} {offset:>10} {seq:>10} {len:>8} {hex}{more}") {
                    failed = Some(err);
                }
            },
            |_| {},
        )?;
        if let Some(err) = failed.take() {
            return Err(err);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn salvage(dir: &std::path::Path, name: &str, out: Option<&std::path::Path>) -> std::io::Result<ExitCode> {
    let target = match out {
        Some(path) => sump::inspect::SalvageTarget::File(path),
        None => sump::inspect::SalvageTarget::Channel,
    };
    let report = sump::inspect::salvage(dir, name, target)?;
    match &report.written_to {
        Some(path) => println!(
            "salvaged {} records from {} set-aside files ({} damaged stretches skipped) into {}",
            report.records,
            report.files,
            report.damaged,
            path.display()
        ),
        None => println!("nothing to salvage: {} set-aside files, no intact record", report.files),
    }
    Ok(ExitCode::SUCCESS)
}

fn purge(dir: &std::path::Path, name: &str) -> std::io::Result<ExitCode> {
    let (files, bytes) = sump::inspect::purge(dir, name)?;
    println!("removed {files} set-aside files, {bytes} bytes");
    Ok(ExitCode::SUCCESS)
}
