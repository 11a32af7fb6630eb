//! The counters of open channels and running drainers, published through
//! the `metrics` facade (feature `metrics`); see [`publish_metrics`].

use std::sync::{Mutex, Once, PoisonError, Weak};
use std::time::Duration;

use metrics::{counter, gauge, Label};

use crate::options::MetricLabels;
use crate::stats::Stats;

/// How often the background thread publishes every registered channel
/// and drainer.
pub const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Something published each round; `false` once it is gone.
pub(crate) type Source = Box<dyn FnMut() -> bool + Send>;

/// Every channel and drainer that publishes.
static SOURCES: Mutex<Vec<Source>> = Mutex::new(Vec::new());

/// Starts the publishing thread, once per process.
static PUBLISHER: Once = Once::new();

/// The counters of open channels and running drainers, published through
/// the `metrics` facade (feature `metrics`), so that whatever recorder the
/// application installed (a Prometheus exporter, StatsD, ...) has them.
///
/// Every channel opened with [`Builder::open`](crate::Builder::open) or
/// [`ShardedBuilder::open`](crate::ShardedBuilder::open), and every
/// drainer, registers here; one background thread, `sump-metrics`,
/// publishes all of them every [`METRICS_INTERVAL`], and
/// [`publish_metrics`] does it at once. Publishing takes a snapshot, as
/// [`Sender::stats`](crate::Sender::stats) does: the send and receive
/// paths do no metrics work at all. A channel or drainer that is gone is
/// dropped from the registry at the next round; the recorder keeps its
/// last values.
///
/// # Names
///
/// Every series has the label `channel` (the channel's name); the shards
/// of a sharded channel and their drainers also have `shard` (the shard's
/// index), and a sharded channel's totals, added up over its shards, have
/// `shard="all"` (leave those out when adding up shards yourself).
///
/// | Name | Kind | Value |
/// |---|---|---|
/// | `sump_in_memory_items` | gauge | [`Stats::in_memory`] |
/// | `sump_on_disk_items` | gauge | [`Stats::on_disk`] |
/// | `sump_disk_bytes` | gauge | [`Stats::disk_bytes`] |
/// | `sump_segments` | gauge | [`Stats::segments`] |
/// | `sump_set_aside_files` | gauge | [`Stats::set_aside_files`] |
/// | `sump_set_aside_bytes` | gauge | [`Stats::set_aside_bytes`] |
/// | `sump_sent_total` | counter | [`Stats::sent`] |
/// | `sump_received_total` | counter | [`Stats::received`] |
/// | `sump_spilled_total` | counter | [`Stats::spilled`] |
/// | `sump_dropped_total` | counter | [`Stats::dropped`] |
/// | `sump_corrupt_total` | counter | [`Stats::corrupt`] |
/// | `sump_lost_total` | counter | [`Stats::lost`] |
/// | `sump_group_commits_total` | counter | [`Stats::group_commits`] |
/// | `sump_remote_segments`, `sump_remote_bytes` | gauge | [`Stats::remote_segments`], [`Stats::remote_bytes`] |
/// | `sump_uploads_total`, `sump_fetches_total`, `sump_remote_failures_total` | counter | [`Stats::uploads`], [`Stats::fetches`], [`Stats::remote_failures`] |
/// | `sump_drain_delivered_total` | counter | [`DrainStats::delivered`](crate::DrainStats::delivered) |
/// | `sump_drain_batches_total` | counter | [`DrainStats::batches`](crate::DrainStats::batches) |
/// | `sump_drain_retried_total` | counter | [`DrainStats::retried`](crate::DrainStats::retried) |
/// | `sump_drain_rejected_total` | counter | [`DrainStats::rejected`](crate::DrainStats::rejected) |
/// | `sump_drain_lag_items` | gauge | [`DrainStats::lag`](crate::DrainStats::lag) |
/// | `sump_drain_breaker_open` | gauge | 0 closed, 1 open, 0.5 half-open ([`DrainStats::breaker`](crate::DrainStats::breaker)) |
///
/// Counters are set to the channel's own totals since it was opened
/// (`Counter::absolute`), so they restart from 0 with the process, as
/// Prometheus counters do.
///
/// # Publishing now
///
/// This function publishes the counters of every open channel and running
/// drainer at once, as the background thread does every
/// [`METRICS_INTERVAL`]: before a scrape that must see the latest values,
/// or at shutdown.
pub fn publish_metrics() {
    let mut sources = SOURCES.lock().unwrap_or_else(PoisonError::into_inner);
    sources.retain_mut(|publish| publish());
}

/// Adds a source and makes sure the publishing thread runs.
pub(crate) fn register(source: Source) {
    SOURCES.lock().unwrap_or_else(PoisonError::into_inner).push(source);
    PUBLISHER.call_once(|| {
        let started = std::thread::Builder::new().name("sump-metrics".into()).spawn(|| loop {
            std::thread::sleep(METRICS_INTERVAL);
            publish_metrics();
        });
        if let Err(err) = started {
            tracing::warn!(error = %err, "cannot start the metrics thread; call sump::publish_metrics to publish");
        }
    });
}

/// The labels of a series.
pub(crate) fn labels(of: &MetricLabels) -> Vec<Label> {
    let mut labels = vec![Label::new("channel", of.channel.clone())];
    if let Some(shard) = of.shard {
        labels.push(Label::new("shard", shard.to_string()));
    }
    labels
}

/// Publishes a channel's stats under `labels`.
pub(crate) fn record_stats(labels: &[Label], stats: &Stats) {
    let labels = || labels.to_vec();
    gauge!("sump_in_memory_items", labels()).set(stats.in_memory as f64);
    gauge!("sump_on_disk_items", labels()).set(stats.on_disk as f64);
    gauge!("sump_disk_bytes", labels()).set(stats.disk_bytes as f64);
    gauge!("sump_segments", labels()).set(stats.segments as f64);
    gauge!("sump_set_aside_files", labels()).set(stats.set_aside_files as f64);
    gauge!("sump_set_aside_bytes", labels()).set(stats.set_aside_bytes as f64);
    counter!("sump_sent_total", labels()).absolute(stats.sent);
    counter!("sump_received_total", labels()).absolute(stats.received);
    counter!("sump_spilled_total", labels()).absolute(stats.spilled);
    counter!("sump_dropped_total", labels()).absolute(stats.dropped);
    counter!("sump_corrupt_total", labels()).absolute(stats.corrupt);
    counter!("sump_lost_total", labels()).absolute(stats.lost);
    counter!("sump_group_commits_total", labels()).absolute(stats.group_commits);
    gauge!("sump_remote_segments", labels()).set(stats.remote_segments as f64);
    gauge!("sump_remote_bytes", labels()).set(stats.remote_bytes as f64);
    counter!("sump_uploads_total", labels()).absolute(stats.uploads);
    counter!("sump_fetches_total", labels()).absolute(stats.fetches);
    counter!("sump_remote_failures_total", labels()).absolute(stats.remote_failures);
}

/// Publishes a channel while any handle of it is alive.
pub(crate) fn register_channel<T: Send + 'static>(shared: Weak<crate::core::Shared<T>>, of: MetricLabels) {
    let labels = labels(&of);
    register(Box::new(move || match shared.upgrade() {
        Some(shared) => {
            record_stats(&labels, &shared.stats());
            true
        }
        None => false,
    }));
}
