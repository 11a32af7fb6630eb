//! The drainer thread: collects batches from the receiver and delivers
//! them, retrying, splitting and dead-lettering as `mod.rs` describes.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::breaker::{Backoff, Breaker};
use super::{Control, DrainSettings, Numbers, Sink, SinkError};
use crate::channel::Receiver;
use crate::encoding;
use crate::err::RecvTimeoutError;
use crate::peeked::Peeked;
use crate::sync::Arc;

/// How often a drainer waiting for items checks for a shutdown request.
const STOP_POLL: Duration = Duration::from_millis(20);

/// How long a drainer held back by a sharded channel's hand-over waits
/// before it looks again (1 ms).
const GATE_POLL: Duration = Duration::from_millis(1);

/// Why delivery of a batch ended early.
enum Halt {
    /// The shutdown deadline passed.
    Deadline,
    /// The drainer cannot go on; the reason is reported in the stats.
    Stopped(String),
}

/// The drainer thread's state.
pub(crate) struct Worker<T, S> {
    /// Where batches go.
    sink: S,
    /// Settings.
    settings: DrainSettings<T>,
    /// Shared with the handle.
    control: Arc<Control<T>>,
    /// Retry pacing.
    backoff: Backoff,
    /// The circuit breaker.
    breaker: Breaker,
    /// With [`DrainSettings::max_rate`]: when the next batch may go.
    paced_until: Option<Instant>,
}

impl<T, S> Worker<T, S>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    S: Sink<T>,
{
    pub(crate) fn new(sink: S, settings: DrainSettings<T>, control: Arc<Control<T>>) -> Self {
        let backoff = Backoff::new(settings.backoff_initial, settings.backoff_max);
        let breaker = Breaker::new(settings.breaker_threshold, settings.breaker_open_for);
        Worker { sink, settings, control, backoff, breaker, paced_until: None }
    }

    fn stopping(&self) -> bool {
        self.control.state.lock().deadline.is_some()
    }

    /// Runs until shutdown, disconnection, or a reason to stop; returns the
    /// receiver with every undelivered item still in it.
    ///
    /// Each batch is peeked ([`Receiver::peek_batch`]): what the sink
    /// accepts (or the dead-letter channel takes) is committed, and the
    /// rest goes back to the front of the channel when the batch is
    /// settled, so nothing the sink did not take is lost, in a crash
    /// either.
    pub(crate) fn run(mut self, receiver: Receiver<T>) -> Receiver<T> {
        while !self.stopping() {
            if self.wait_for_pace() {
                break;
            }
            let Some(collected) = self.collect(&receiver) else { break };
            let Some((batch, cut)) = collected else { continue };
            self.control.state.lock().in_flight = cut as u64;
            let numbers = Numbers::new(receiver.channel_id(), &batch.seqs()[..cut]);
            let started = Instant::now();
            let (done, halt) = self.deliver(&batch[..cut], numbers);
            self.control.state.lock().in_flight = 0;
            self.pace(done, started);
            if let Err(err) = batch.commit_first(done) {
                tracing::error!(error = %err, "delivered items may be delivered again after a restart");
            }
            match halt {
                None => {}
                Some(Halt::Deadline) => break,
                Some(Halt::Stopped(reason)) => {
                    tracing::error!(%reason, "drainer stopped");
                    self.control.state.lock().stats.stopped = Some(reason);
                    break;
                }
            }
        }
        receiver
    }

    /// With a rate limit: after `delivered` items went in a batch
    /// `started` then, the next batch waits for their share of the rate,
    /// counted from when the batch started (the sink's own time is part of
    /// the share). Time not used (the channel was empty, say) is not saved
    /// up: an idle drainer does not burst later.
    fn pace(&mut self, delivered: usize, started: Instant) {
        let Some(rate) = self.settings.max_rate else { return };
        let from = self.paced_until.map_or(started, |until| until.max(started));
        // At most a day, however low the rate.
        const DAY: Duration = Duration::from_secs(86_400);
        let share = Duration::try_from_secs_f64(delivered as f64 / rate).map_or(DAY, |share| share.min(DAY));
        self.paced_until = Some(from + share);
    }

    /// Waits until the rate limit lets the next batch go; `true` if a
    /// shutdown was requested meanwhile (or before).
    fn wait_for_pace(&self) -> bool {
        let Some(until) = self.paced_until else { return false };
        let mut state = self.control.state.lock();
        loop {
            if state.deadline.is_some() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            self.control.wake.wait_until(&mut state, until);
        }
    }

    /// Most items in a batch: the batch size, and with a rate limit a
    /// tenth of a second's worth of items.
    fn batch_limit(&self) -> usize {
        match self.settings.max_rate {
            Some(rate) => self.settings.batch_size.min(((rate / 10.0) as usize).max(1)),
            None => self.settings.batch_size,
        }
    }

    /// Peeks the next batch, and how many of its items to send now: up
    /// to the first whose key differs or that would go over the byte
    /// limit. `None` when the channel is disconnected and empty;
    /// `Some(None)` when a shutdown was requested meanwhile.
    #[allow(clippy::type_complexity)]
    fn collect<'r>(&self, receiver: &'r Receiver<T>) -> Option<Option<(Peeked<'r, T>, usize)>> {
        let batch_size = self.batch_limit();
        let mut batch = loop {
            match receiver.peek_batch(batch_size, STOP_POLL) {
                Ok(batch) => break batch,
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) if self.stopping() => return Some(None),
                Err(RecvTimeoutError::Timeout) => {}
            }
        };
        let linger_until = Instant::now() + self.settings.linger;
        while batch.len() < batch_size {
            let left = linger_until.saturating_duration_since(Instant::now());
            if left.is_zero() || batch.peek_more(batch_size - batch.len(), left) == 0 {
                break;
            }
        }
        let allowed = match self.settings.gate.as_ref().and_then(|gate| gate()) {
            Some(limit) => batch.seqs().partition_point(|&seq| seq < limit),
            None => batch.len(),
        };
        if allowed == 0 {
            // Held back by a hand-over: the batch goes back to the front.
            drop(batch);
            let mut state = self.control.state.lock();
            if state.deadline.is_none() {
                self.control.wake.wait_until(&mut state, Instant::now() + GATE_POLL);
            }
            return Some(None);
        }
        let mut cut = 0;
        let mut bytes = 0u64;
        for item in batch.iter().take(allowed) {
            let size = self.size_of(item);
            if cut > 0 {
                let over_bytes = self.settings.batch_bytes.is_some_and(|max| bytes + size > max);
                let other_key = self.settings.same_key.as_ref().is_some_and(|same_key| !same_key(&batch[0], item));
                if over_bytes || other_key {
                    break;
                }
            }
            bytes += size;
            cut += 1;
        }
        Some(Some((batch, cut)))
    }

    fn size_of(&self, item: &T) -> u64 {
        match self.settings.batch_bytes {
            Some(_) => encoding::encoded_len(item).unwrap_or(0) as u64,
            None => 0,
        }
    }

    /// Delivers `batch` in order. Returns how many items from the front
    /// were accepted or dead-lettered, and why it halted early, if it did;
    /// the rest go back to the channel.
    fn deliver(&mut self, batch: &[T], numbers: Numbers<'_>) -> (usize, Option<Halt>) {
        let mut done = 0;
        // Lengths of the parts still to send, in order; they add up to
        // `batch.len() - done`. A permanent refusal splits a part in two.
        let mut parts = VecDeque::from([batch.len()]);
        while let Some(&part) = parts.front() {
            if let Some(halt) = self.wait_for_breaker() {
                return (done, Some(halt));
            }
            let slice = &batch[done..done + part];
            let slice_numbers = Numbers::new(numbers.channel(), &numbers.seqs()[done..done + part]);
            let outcome = catch_unwind(AssertUnwindSafe(|| self.sink.send_numbered(slice, slice_numbers)));
            let result = match outcome {
                Ok(result) => result,
                Err(_) => return (done, Some(Halt::Stopped("the sink panicked".to_string()))),
            };
            match result {
                Ok(()) => {
                    self.breaker.on_success();
                    self.backoff.reset();
                    done += part;
                    self.accepted(part, batch.len() - done);
                    parts.pop_front();
                }
                Err(err) => {
                    let accepted = err.accepted().min(part);
                    done += accepted;
                    self.accepted(accepted, batch.len() - done);
                    let left = part - accepted;
                    if left == 0 {
                        parts.pop_front();
                        continue;
                    }
                    parts[0] = left;
                    let halt = if err.is_transient() {
                        self.retry_later(&err)
                    } else {
                        self.refused(batch, &mut done, &mut parts, &err)
                    };
                    if let Some(halt) = halt {
                        return (done, Some(halt));
                    }
                }
            }
        }
        (done, None)
    }

    /// Counts `count` accepted items, with `left` still in flight.
    fn accepted(&mut self, count: usize, left: usize) {
        if count == 0 {
            return;
        }
        let mut state = self.control.state.lock();
        state.stats.breaker = self.breaker.state();
        state.stats.delivered += count as u64;
        state.stats.batches += 1;
        state.in_flight = left as u64;
    }

    /// A transient failure: counts it, feeds the breaker, and sleeps for
    /// the next backoff delay (cut short by a shutdown deadline).
    fn retry_later(&mut self, err: &SinkError) -> Option<Halt> {
        tracing::warn!(error = %err, "sink failed; will retry");
        self.breaker.on_failure(Instant::now());
        let mut state = self.control.state.lock();
        state.stats.retried += 1;
        state.stats.breaker = self.breaker.state();
        drop(state);
        let delay = self.backoff.next_delay();
        self.sleep(delay)
    }

    /// A permanent refusal of the front part: splits it, or, when it is a
    /// single item, dead-letters that item (or stops if there is nowhere
    /// to send it). The dead-letter channel gets a copy (the item itself
    /// stays in the channel until committed), made by encoding it.
    fn refused(&mut self, batch: &[T], done: &mut usize, parts: &mut VecDeque<usize>, err: &SinkError) -> Option<Halt> {
        // The sink answered: it is up, whatever it thought of the items.
        self.breaker.on_success();
        let part = parts[0];
        if part > 1 {
            let first = part / 2;
            parts[0] = part - first;
            parts.push_front(first);
            return None;
        }
        let Some(dead_letter) = &self.settings.dead_letter else {
            return Some(Halt::Stopped(format!("the sink refused an item and there is no dead-letter channel: {err}")));
        };
        let copy = match encoding::duplicate(&batch[*done]) {
            Ok(copy) => copy,
            Err(copied) => {
                return Some(Halt::Stopped(format!(
                    "the sink refused an item that cannot be copied to the dead-letter channel ({copied}): {err}"
                )))
            }
        };
        if let Err(failed) = dead_letter.send(copy) {
            let reason = format!("the dead-letter channel refused an item ({failed}) after the sink refused it: {err}");
            return Some(Halt::Stopped(reason));
        }
        parts.pop_front();
        *done += 1;
        tracing::warn!(error = %err, "item refused by the sink; sent to the dead-letter channel");
        let mut state = self.control.state.lock();
        state.stats.breaker = self.breaker.state();
        state.stats.rejected += 1;
        state.in_flight = (batch.len() - *done) as u64;
        None
    }

    /// Waits while the breaker is open. Halts if the shutdown deadline
    /// comes first.
    fn wait_for_breaker(&mut self) -> Option<Halt> {
        loop {
            let wait = self.breaker.wait_before_call(Instant::now());
            self.control.state.lock().stats.breaker = self.breaker.state();
            if wait.is_zero() {
                return self.past_deadline().then_some(Halt::Deadline);
            }
            if let Some(halt) = self.sleep(wait) {
                return Some(halt);
            }
        }
    }

    fn past_deadline(&self) -> bool {
        self.control.state.lock().deadline.is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Sleeps for `delay`, or until the shutdown deadline if that comes
    /// first, in which case it halts.
    fn sleep(&self, delay: Duration) -> Option<Halt> {
        let until = Instant::now() + delay;
        let mut state = self.control.state.lock();
        loop {
            let now = Instant::now();
            if state.deadline.is_some_and(|deadline| now >= deadline) {
                return Some(Halt::Deadline);
            }
            if now >= until {
                return None;
            }
            let wake_at = state.deadline.map_or(until, |deadline| deadline.min(until));
            self.control.wake.wait_until(&mut state, wake_at);
        }
    }
}
