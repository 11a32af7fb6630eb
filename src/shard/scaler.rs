//! The scaling policy's thread, `sump-scaler`: every
//! [`ScalingPolicy::check_every`] it removes the draining shards that
//! have delivered everything, measures the backlog per active shard, and
//! adds or drains a shard when the backlog has stayed past a threshold
//! for [`ScalingPolicy::sustained_for`] and the last change is
//! [`ScalingPolicy::cooldown`] ago. It holds the channel only while it
//! looks, and ends once every handle of the channel is gone.

use std::io;
use std::sync::Weak;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::live::{ScalingPolicy, ShardState};
use super::topology::Topology;

/// What the policy has seen so far.
#[derive(Debug, Default)]
struct Watch {
    /// Since when the backlog has been above `add_above`, if it is.
    high_since: Option<Instant>,
    /// Since when it has been below `drain_below`, if it is.
    low_since: Option<Instant>,
    /// When the policy last changed the shards.
    changed_at: Option<Instant>,
}

/// Starts the policy's thread for the channel of `topology`.
pub(crate) fn start<T>(topology: Weak<Topology<T>>, policy: ScalingPolicy) -> io::Result<()>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    std::thread::Builder::new().name("sump-scaler".to_string()).spawn(move || {
        let mut watch = Watch::default();
        loop {
            std::thread::sleep(policy.check_every);
            let Some(topology) = topology.upgrade() else { return };
            step(&topology, &policy, &mut watch, Instant::now());
        }
    })?;
    Ok(())
}

/// One look: removes drained shards, then adds or drains one if the
/// policy says so.
fn step<T>(topology: &Topology<T>, policy: &ScalingPolicy, watch: &mut Watch, now: Instant)
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    for id in topology.remove_drained() {
        tracing::debug!(shard = id.0, "scaling policy removed a drained shard");
    }
    let shards = topology.shard_stats();
    let active: Vec<_> = shards.iter().filter(|shard| shard.state == ShardState::Active).collect();
    if active.is_empty() {
        return;
    }
    let per_shard = active.iter().map(|shard| shard.backlog()).sum::<u64>() / active.len() as u64;
    let high = per_shard > policy.add_above && active.len() < policy.max;
    let low = per_shard < policy.drain_below && active.len() > policy.min;
    watch.high_since = if high { Some(watch.high_since.unwrap_or(now)) } else { None };
    watch.low_since = if low { Some(watch.low_since.unwrap_or(now)) } else { None };
    let cooled = watch.changed_at.is_none_or(|at| now.duration_since(at) >= policy.cooldown);
    let sustained =
        |since: Option<Instant>| since.is_some_and(|since| now.duration_since(since) >= policy.sustained_for);
    if !cooled {
        return;
    }
    let changed = if sustained(watch.high_since) {
        topology.add_shard().and_then(|id| {
            tracing::info!(shard = id.0, per_shard, "scaling policy adds a shard");
            topology.activate_shard(id).inspect_err(|_| {
                // Not left provisioned, or every look would add one more.
                if let Err(err) = topology.remove_shard(id) {
                    tracing::warn!(shard = id.0, error = %err, "could not remove a shard that failed to activate");
                }
            })
        })
    } else if sustained(watch.low_since) {
        let newest = active.last().map(|shard| shard.id);
        match newest {
            Some(id) => {
                tracing::info!(shard = id.0, per_shard, "scaling policy drains a shard");
                topology.drain_shard(id)
            }
            None => return,
        }
    } else {
        return;
    };
    match changed {
        Ok(()) => {
            watch.changed_at = Some(now);
            watch.high_since = None;
            watch.low_since = None;
        }
        Err(err) => tracing::warn!(error = %err, "the scaling policy could not change the shards"),
    }
}
