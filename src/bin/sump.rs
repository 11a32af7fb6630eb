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
use sump::inspect::{
    read_segment, segment_files, tier_segments, verify_remote, SegmentFile, SegmentState, TierSegment,
};

#[derive(Parser)]
#[command(name = "sump", version, about = "Inspect the files of a sump channel (read-only; safe on a live channel)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the channel's segments: records, bytes, state, and for a
    /// channel with a remote tier where each stands in its lifecycle
    /// (segments only in the store are listed too).
    Ls {
        /// The directory the channel was opened in.
        dir: PathBuf,
        /// The channel's name.
        name: String,
    },
    /// Check every segment header and record CRC. Exits 0 only when all is
    /// clean (a tail still being written in the active segment is fine).
    /// With a store, every remote copy is fetched and checked too.
    Verify {
        /// The directory the channel was opened in.
        dir: PathBuf,
        /// The channel's name.
        name: String,
        #[command(flatten)]
        remote: RemoteArgs,
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

/// Where `sump verify` finds the remote copies.
#[derive(clap::Args)]
struct RemoteArgs {
    /// The directory of the channel's remote store (a `DirStore`).
    #[arg(long)]
    remote_dir: Option<PathBuf>,
    /// The endpoint of the channel's S3-compatible store (credentials from
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).
    #[cfg(feature = "s3")]
    #[arg(long, requires = "s3_bucket")]
    s3_endpoint: Option<String>,
    /// The bucket.
    #[cfg(feature = "s3")]
    #[arg(long)]
    s3_bucket: Option<String>,
    /// The key prefix the store was given.
    #[cfg(feature = "s3")]
    #[arg(long, default_value = "")]
    s3_prefix: String,
    /// The region.
    #[cfg(feature = "s3")]
    #[arg(long, default_value = "us-east-1")]
    s3_region: String,
}

impl RemoteArgs {
    fn store(&self) -> std::io::Result<Option<Box<dyn sump::RemoteStore>>> {
        if let Some(dir) = &self.remote_dir {
            return Ok(Some(Box::new(sump::DirStore::new(dir))));
        }
        #[cfg(feature = "s3")]
        if let (Some(endpoint), Some(bucket)) = (&self.s3_endpoint, &self.s3_bucket) {
            let config = sump::S3Config::new(endpoint, bucket).prefix(&self.s3_prefix).region(&self.s3_region);
            return Ok(Some(Box::new(sump::S3Store::new(config)?)));
        }
        Ok(None)
    }
}

fn tiers(dir: &std::path::Path, name: &str) -> std::io::Result<Vec<TierSegment>> {
    tier_segments(dir, name)
        .map_err(|err| std::io::Error::new(err.kind(), format!("{}: {err}", dir.join(name).display())))
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
        Command::Verify { dir, name, remote } => verify(&dir, &name, &remote),
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
    let tiered = tiers(dir, name)?;
    let tier_of = |id: u64| tiered.iter().find(|segment| segment.id == id).map_or("local", |s| s.state.name());
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:>20}  {:>10}  {:>12}  {:>7}  {:<9}  tier", "segment", "records", "bytes", "damaged", "state")?;
    let (mut records, mut bytes) = (0, 0);
    // Local files and remote-only segments, in id order.
    let mut remote = tiered.iter().filter(|s| !s.state.is_local()).peekable();
    for file in files {
        while let Some(segment) = remote.next_if(|segment| segment.id < file.id) {
            remote_row(&mut out, segment, &mut records)?;
        }
        let report = read_segment(&file, |_| {}, |_| {})?;
        let damaged = report.damage.iter().filter(|d| !(d.at_end && file.state == SegmentState::Active)).count();
        writeln!(
            out,
            "{:>20}  {:>10}  {:>12}  {:>7}  {:<9}  {}",
            file.id,
            report.records,
            file.bytes,
            damaged,
            state_name(file.state),
            tier_of(file.id)
        )?;
        if file.state != SegmentState::SetAside {
            records += report.records;
            bytes += file.bytes;
        }
    }
    for segment in remote {
        remote_row(&mut out, segment, &mut records)?;
    }
    let remote_bytes: u64 = tiered.iter().filter(|s| s.state == sump::TierState::LocalDeleted).map(|s| s.bytes).sum();
    writeln!(
        out,
        "total: {records} records in {bytes} local bytes and {remote_bytes} remote bytes (set-aside segments not counted)"
    )?;
    Ok(ExitCode::SUCCESS)
}

/// A row of `sump ls` for a segment not on the local disk.
fn remote_row(out: &mut impl Write, segment: &TierSegment, records: &mut u64) -> std::io::Result<()> {
    let counted = segment.state == sump::TierState::LocalDeleted;
    writeln!(
        out,
        "{:>20}  {:>10}  {:>12}  {:>7}  {:<9}  {}",
        segment.id,
        segment.records,
        segment.bytes,
        "-",
        "remote",
        segment.state.name()
    )?;
    if counted {
        *records += segment.records;
    }
    Ok(())
}

/// Prints a finding to stderr without tearing the progress bar (which
/// hides itself when stderr is not a terminal).
fn say(bar: &ProgressBar, message: String) {
    bar.suspend(|| eprintln!("{message}"));
}

fn verify(dir: &std::path::Path, name: &str, remote: &RemoteArgs) -> std::io::Result<ExitCode> {
    let files = files(dir, name)?;
    let tiered = tiers(dir, name)?;
    let store = remote.store()?;
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
    let copies: Vec<&TierSegment> =
        tiered.iter().filter(|s| !s.key.is_empty() && s.state != sump::TierState::Read).collect();
    let mut segments = files.len();
    match &store {
        Some(store) => {
            for segment in &copies {
                bar.set_message(format!("remote copy of segment {}", segment.id));
                if let Err(reason) = verify_remote(&**store, segment)? {
                    say(&bar, format!("segment {}: remote copy: {reason}", segment.id));
                    problems += 1;
                }
            }
        }
        None if !copies.is_empty() => say(
            &bar,
            format!(
                "{} remote copies not checked: give the store (--remote-dir, or --s3-endpoint with feature s3)",
                copies.len()
            ),
        ),
        None => {}
    }
    if store.is_some() {
        for segment in tiered.iter().filter(|s| s.state == sump::TierState::LocalDeleted) {
            records += segment.records;
            segments += 1;
        }
    }
    bar.finish_and_clear();
    if problems == 0 {
        println!("ok: {records} records in {segments} segments, every header and CRC intact");
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
