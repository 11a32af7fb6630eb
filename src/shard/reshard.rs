//! Resharding: bringing the shards on disk to the count and dispatch mode
//! a sharded channel is opened with, before any handle exists.
//!
//! # What moves
//!
//! | recorded → requested | what `open` does |
//! |---|---|
//! | same count, same mode | nothing |
//! | key → key, other count | every item moves to the shard its key picks now |
//! | round-robin or unknown → key | the same, so per-key order holds from now on |
//! | key or round-robin → round-robin, same or more shards | nothing; new shards start empty |
//! | key or round-robin → round-robin, fewer shards | every item moves, round-robin |
//! | broadcast → broadcast, more shards | nothing; new shards start empty |
//! | broadcast → broadcast, fewer shards | removed shards must be empty, else `open` refuses |
//! | to or from broadcast | every shard must be empty, else `open` refuses |
//!
//! In [`Durability::Overflow`] nothing survives a restart anyway: shards no
//! longer wanted are deleted and the new layout is recorded.
//!
//! # How items move
//!
//! In two steps, through a staging channel `dir/name/reshard/`, so that a
//! key's items, which all live in one shard, keep their order:
//!
//! 1. **Collecting**: shard after shard, every item is appended to the
//!    staging channel. A shard's read segments are held until the staging
//!    channel has its items on disk, and only then is the shard closed
//!    cleanly, which records them as read.
//! 2. **Distributing**: the staging channel is read and each item appended
//!    to the shard it goes to now; the staging channel is closed cleanly
//!    only once every shard has its items on disk.
//!
//! The layout file records each step before it starts. A crash in the
//! middle leaves the step to be done again by the next `open`: items read
//! since the step began are read again, so some may be delivered twice,
//! but none is lost or stranded, and a key's items come in order apart
//! from that replayed stretch. A step that fails (a full disk, an I/O
//! error, a backlog that stays unreadable) backs out the same way and
//! `open` returns the error.
//!
//! Moved items are made as durable as the shards' [`SyncPolicy`] makes
//! any item: with `Never`, a power loss soon after a reshard can lose what
//! the OS had not written back. A move ignores the shards' disk limits, so
//! after shrinking, a shard may hold more than `max_disk_bytes`; until it
//! drains, its senders block, or drop items, as [`WhenFull`] says.

use std::io;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{Receiver, Sender};
use crate::err::{OpenError, RecvTimeoutError};
use crate::options::{Durability, Settings, SyncPolicy, WhenFull};
use crate::shard::layout::{self, Layout, Phase, Routing};
use crate::shard::{shard_name, Dispatch, Route, Target};

/// Name of the staging channel inside a sharded channel's directory.
pub(crate) const STAGING: &str = "reshard";

/// What `open` was asked for.
pub(crate) struct Plan<'a> {
    /// `dir/name`, locked.
    pub(crate) root: &'a Path,
    /// Settings of each shard.
    pub(crate) settings: &'a Settings,
    /// The shard count asked for.
    pub(crate) shards: usize,
}

/// Brings the shards in `plan.root` to `plan.shards` shards dispatched by
/// `route`, moving items as the module docs say.
pub(crate) fn settle<T>(plan: &Plan<'_>, route: &Route<T>) -> Result<(), OpenError>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    let root = plan.root;
    let io_error = |err: io::Error| OpenError::io(layout::path(root), err);
    let dispatch = route.dispatch();
    let stable = |count| Layout::stable(Some(dispatch), count, 0);
    let fs = &*plan.settings.fs;
    let present = highest_shard_dir(fs, root).map_err(|err| OpenError::io(root, err))?;
    let mut current = match layout::read(fs, root).map_err(io_error)? {
        Some(recorded) => recorded,
        None if present == 0 => return layout::write(fs, root, &stable(plan.shards)).map_err(io_error),
        None => Layout::stable(None, present, 0),
    };
    if plan.settings.durability == Durability::Overflow {
        let last = present.max(current.count).max(current.target);
        for shard in plan.shards..last {
            remove_shard::<T>(root, shard, plan.settings, false)?;
        }
        discard_staging::<T>(root, plan.settings)?;
        return layout::write(fs, root, &stable(plan.shards)).map_err(io_error);
    }
    loop {
        match current.phase {
            Phase::Stable => {
                if current.count == plan.shards && current.dispatch == Some(dispatch) {
                    if current.routing == Routing::Rendezvous {
                        return Ok(());
                    }
                    if dispatch != Dispatch::Key || current.count <= 1 {
                        // Nothing was placed by the old routing's choice.
                        return layout::write(fs, root, &stable(plan.shards)).map_err(io_error);
                    }
                    // Keys were placed by modulo (layout version 1): sort
                    // them again, once, by rendezvous hashing.
                    current = Layout { phase: Phase::Collecting, target: plan.shards, ..current };
                    tracing::info!(shards = plan.shards, "resharding: re-sorting keys for rendezvous routing");
                    layout::write(fs, root, &current).map_err(io_error)?;
                    continue;
                }
                let broadcast = dispatch == Dispatch::Broadcast || current.dispatch == Some(Dispatch::Broadcast);
                let growing_round_robin = dispatch == Dispatch::RoundRobin
                    && matches!(current.dispatch, Some(Dispatch::Key | Dispatch::RoundRobin))
                    && plan.shards >= current.count;
                if broadcast {
                    let kept = if current.dispatch == Some(dispatch) { plan.shards } else { 0 };
                    for shard in kept..current.count {
                        check_empty::<T>(root, shard, plan.settings, &current, dispatch)?;
                    }
                }
                if broadcast || growing_round_robin {
                    for shard in plan.shards..current.count {
                        remove_shard::<T>(root, shard, plan.settings, true)?;
                    }
                    current = stable(plan.shards);
                } else {
                    current = Layout { phase: Phase::Collecting, target: plan.shards, ..current };
                    tracing::info!(from = current.count, to = plan.shards, "resharding: collecting items");
                }
                layout::write(fs, root, &current).map_err(io_error)?;
            }
            Phase::Collecting | Phase::Distributing if dispatch == Dispatch::Broadcast => {
                return Err(OpenError::InvalidConfig {
                    reason: format!(
                        "a reshard of {} to {} shards is under way; open with key or round-robin dispatch to \
                         finish it first",
                        root.display(),
                        current.target
                    ),
                });
            }
            Phase::Collecting => {
                collect::<T>(root, plan.settings, current.count.max(present))?;
                current = Layout {
                    phase: Phase::Distributing,
                    target: plan.shards,
                    dispatch: Some(dispatch),
                    routing: Routing::Rendezvous,
                    ..current
                };
                tracing::info!(to = plan.shards, "resharding: distributing items");
                layout::write(fs, root, &current).map_err(io_error)?;
            }
            Phase::Distributing => {
                distribute::<T>(root, plan.settings, current.target, route)?;
                for shard in current.target..current.count.max(present) {
                    remove_shard::<T>(root, shard, plan.settings, true)?;
                }
                discard_staging::<T>(root, plan.settings)?;
                // A reshard begun by an open with another mode ends with
                // items routed by this one: their layout is not known.
                let moved = if current.dispatch == Some(dispatch) { Some(dispatch) } else { None };
                current = Layout::stable(moved, current.target, current.generation + 1);
                tracing::info!(shards = current.count, "resharding done");
                layout::write(fs, root, &current).map_err(io_error)?;
            }
        }
    }
}

/// Settings for the channels a reshard opens: durable, every item through
/// disk, no limits that would block a move (nobody drains meanwhile).
fn moving(settings: &Settings) -> Settings {
    Settings {
        memory_capacity: 0,
        max_disk_bytes: u64::MAX,
        max_segments: usize::MAX,
        when_full: WhenFull::Block,
        durability: Durability::Persistent,
        sync: SyncPolicy::Never,
        retry_unreadable: true,
        labels: None,
        ..settings.clone()
    }
}

/// Opens one channel of a sharded channel for a reshard.
fn open_moving<T>(root: &Path, name: &str, settings: &Settings) -> Result<(Sender<T>, Receiver<T>), OpenError>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    crate::open::open(root, name, moving(settings))
}

/// Appends `item` to a channel being filled by a reshard. On failure the
/// item is dropped: its source is then dropped as in a crash, so it still
/// has the item.
fn append<T>(to: &Sender<T>, item: T, name: &str, root: &Path) -> Result<(), OpenError>
where
    T: Serialize + DeserializeOwned,
{
    to.try_send(item).map_err(|err| {
        let reason = match err {
            crate::TrySendError::Io(_, err) => err,
            crate::TrySendError::Full(_) => io::Error::new(
                io::ErrorKind::StorageFull,
                "the filesystem is below the channel's min_free_bytes; free space to reshard",
            ),
            crate::TrySendError::Disconnected(_) => io::Error::other("the channel being filled closed"),
        };
        OpenError::io(root.join(name), reason)
    })
}

/// Closes a channel a reshard opened, cleanly.
fn close<T>(rx: Receiver<T>, root: &Path, name: &str) -> Result<(), OpenError>
where
    T: Serialize + DeserializeOwned,
{
    rx.close().map_err(|err| OpenError::io(root.join(name), io::Error::other(err)))
}

/// How many items shard `shard` holds; `None` when it has no directory.
pub(crate) fn items_in<T>(root: &Path, shard: usize, settings: &Settings) -> Result<Option<u64>, OpenError>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    let name = shard_name(shard);
    if !root.join(&name).is_dir() {
        return Ok(None);
    }
    let (tx, rx) = open_moving::<T>(root, &name, settings)?;
    let stats = rx.stats();
    drop(tx);
    close(rx, root, &name)?;
    Ok(Some(stats.on_disk + stats.in_memory as u64))
}

/// How long a reshard waits for a backlog it cannot read right now (a
/// segment that cannot be opened, say) before it gives up with an error.
const STUCK_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// Items a reshard moves between two settles of what it wrote.
const MOVE_BATCH: usize = 1 << 16;

/// Hands a copy of every item of `source`, whose senders are gone, to
/// `each`, in order, through the acknowledgement API: a batch is peeked,
/// copied, made durable where it went (`settle`), and only then
/// committed, so a crash at any point leaves every item in the source,
/// the target, or both. A backlog that stays unreadable for
/// [`STUCK_FOR`] is an error rather than a hang.
fn drain_all<T, F, G>(source: &Receiver<T>, name: &str, root: &Path, mut each: F, settle: G) -> Result<(), OpenError>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(T) -> Result<(), OpenError>,
    G: Fn() -> Result<(), OpenError>,
{
    let mut stuck_since = None;
    loop {
        match source.peek_batch(MOVE_BATCH, std::time::Duration::ZERO) {
            Ok(batch) => {
                stuck_since = None;
                for item in batch.iter() {
                    let copy = crate::encoding::duplicate(item).map_err(|err| OpenError::io(root.join(name), err))?;
                    each(copy)?;
                }
                settle()?;
                if let Err(err) = batch.commit() {
                    // Moved and durable: at worst the source delivers
                    // them again, which a restarted reshard moves again.
                    tracing::warn!(error = %err, "a moved batch could not be recorded as read");
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
            Err(RecvTimeoutError::Timeout) => {
                let since = *stuck_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > STUCK_FOR {
                    let err = io::Error::other("its backlog cannot be read (the log says why)");
                    return Err(OpenError::io(root.join(name), err));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// Makes what `to` was given durable: flushed to the OS, and to stable
/// storage unless the shards' sync policy is `Never`.
fn settle_writes<T>(to: &Sender<T>, name: &str, root: &Path, settings: &Settings) -> Result<(), OpenError> {
    let dir = root.join(name);
    let sync = || -> io::Result<()> {
        to.flush()?;
        if settings.sync != SyncPolicy::Never {
            let fs = &*settings.fs;
            for entry in fs.list(&dir)? {
                let name = entry.name.to_string_lossy();
                if entry.kind == crate::storage::Kind::File && crate::segment::parse_segment_name(&name).is_some() {
                    let path = dir.join(&*name);
                    let file = fs.open(&path, crate::storage::Open::Read)?;
                    fs.sync(&path, &file)?;
                }
            }
            fs.sync_dir(&dir)?;
        }
        Ok(())
    };
    sync().map_err(|err| OpenError::io(&dir, err))
}

/// Step 1: moves the items of shards `0..count`, shard after shard, into
/// the staging channel.
fn collect<T>(root: &Path, settings: &Settings, count: usize) -> Result<(), OpenError>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    let (stage, stage_rx) = open_moving::<T>(root, STAGING, settings)?;
    for shard in 0..count {
        let name = shard_name(shard);
        if !root.join(&name).is_dir() {
            continue;
        }
        let (tx, rx) = open_moving::<T>(root, &name, settings)?;
        drop(tx);
        let moved = drain_all(
            &rx,
            &name,
            root,
            |item| append(&stage, item, STAGING, root),
            || settle_writes(&stage, STAGING, root, settings),
        );
        if let Err(err) = moved {
            // As in a crash: the shard keeps everything, and the next open
            // collects it again.
            rx.crash();
            return Err(err);
        }
        close(rx, root, &name)?;
    }
    drop(stage);
    close(stage_rx, root, STAGING)
}

/// Step 2: moves the staging channel's items into shards `0..target`, each
/// to the shard `route` picks.
fn distribute<T>(root: &Path, settings: &Settings, target: usize, route: &Route<T>) -> Result<(), OpenError>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    let (stage, stage_rx) = open_moving::<T>(root, STAGING, settings)?;
    drop(stage);
    let mut shards = Vec::with_capacity(target);
    for shard in 0..target {
        shards.push(open_moving::<T>(root, &shard_name(shard), settings)?);
    }
    let settle_all =
        || (0..target).try_for_each(|shard| settle_writes(&shards[shard].0, &shard_name(shard), root, settings));
    let moved = drain_all(
        &stage_rx,
        STAGING,
        root,
        |item| match route.target(&item, target) {
            Target::One(shard) => append(&shards[shard].0, item, &shard_name(shard), root),
            Target::All => Err(OpenError::InvalidConfig {
                reason: "a broadcast channel's items are never moved between shards".to_string(),
            }),
        },
        settle_all,
    );
    if let Err(err) = moved {
        // As in a crash: the staging channel keeps everything, and the
        // next open distributes it again.
        stage_rx.crash();
        return Err(err);
    }
    for (shard, (tx, rx)) in shards.into_iter().enumerate() {
        drop(tx);
        close(rx, root, &shard_name(shard))?;
    }
    close(stage_rx, root, STAGING)
}

/// Refuses a change of a broadcast channel that would lose the items of
/// `shard`.
fn check_empty<T>(
    root: &Path,
    shard: usize,
    settings: &Settings,
    current: &Layout,
    dispatch: Dispatch,
) -> Result<(), OpenError>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    let waiting = match items_in::<T>(root, shard, settings)? {
        None | Some(0) => return Ok(()),
        Some(waiting) => waiting,
    };
    let recorded = match current.dispatch {
        Some(mode) => format!("{mode:?}"),
        None => "an unknown mode".to_string(),
    };
    Err(OpenError::InvalidConfig {
        reason: format!(
            "{} still holds {waiting} items; a channel last open with {} shards dispatched by {recorded} cannot \
             become {dispatch:?} with these shards without losing them: drain it first, or open it as before",
            root.join(shard_name(shard)).display(),
            current.count,
        ),
    })
}

/// Deletes shard `shard`'s files and directory, after checking it holds
/// nothing when `must_be_empty`. Files the crate did not create stay, and
/// so does the directory then.
fn remove_shard<T>(root: &Path, shard: usize, settings: &Settings, must_be_empty: bool) -> Result<(), OpenError>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    let name = shard_name(shard);
    if !root.join(&name).is_dir() {
        return Ok(());
    }
    if must_be_empty {
        if let Some(waiting @ 1..) = items_in::<T>(root, shard, settings)? {
            return Err(OpenError::io(
                root.join(&name),
                io::Error::other(format!(
                    "the shard still holds {waiting} items after the reshard moved them; it is left in place"
                )),
            ));
        }
    }
    discard::<T>(root, &name, settings)
}

/// Deletes the staging channel's files and directory.
fn discard_staging<T>(root: &Path, settings: &Settings) -> Result<(), OpenError>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    if root.join(STAGING).is_dir() {
        discard::<T>(root, STAGING, settings)?;
    }
    Ok(())
}

/// Opens the channel `name` as scratch space, which deletes its segments,
/// closes it, and removes its lock file and directory when nothing else is
/// left in it.
pub(crate) fn discard<T>(root: &Path, name: &str, settings: &Settings) -> Result<(), OpenError>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    let scratch = Settings { durability: Durability::Overflow, ..moving(settings) };
    drop(crate::open::open::<T>(root, name, scratch)?);
    let dir = root.join(name);
    let fs = &*settings.fs;
    let removed = fs
        .remove(&dir.join(crate::dir::LOCK_FILE))
        .and_then(|()| crate::storage::remove_if_present(fs, &dir.join(crate::identity::TYPE_FILE)))
        .and_then(|()| crate::storage::remove_if_present(fs, &dir.join(crate::sequence::SEQUENCE_FILE)))
        .and_then(|()| crate::storage::remove_if_present(fs, &dir.join(crate::channel_id::ID_FILE)))
        .and_then(|()| fs.remove_dir(&dir));
    if let Err(err) = removed {
        tracing::warn!(dir = %dir.display(), error = %err, "left a shard directory that holds other files");
    }
    Ok(())
}

/// One more than the highest `shard-NNN` directory in `root`; 0 when there
/// is none.
pub(crate) fn highest_shard_dir(fs: &dyn crate::storage::Storage, root: &Path) -> io::Result<usize> {
    let mut count = 0;
    for entry in fs.list(root)? {
        let Ok(name) = entry.name.into_string() else { continue };
        let Some(index) = name.strip_prefix("shard-").and_then(|digits| digits.parse::<usize>().ok()) else {
            continue;
        };
        if shard_name(index) == name && entry.kind == crate::storage::Kind::Dir {
            count = count.max(index + 1);
        }
    }
    Ok(count)
}
