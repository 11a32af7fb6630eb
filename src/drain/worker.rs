//! The drainer thread: collects batches from the receiver and delivers
//! them, retrying, splitting and dead-lettering as `mod.rs` describes.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::breaker::{Backoff, Breaker};
use super::{Control, DrainSettings, Sink, SinkError};
use crate::channel::Receiver;
use crate::encoding;
use crate::err::RecvTimeoutError;
use crate::sync::Arc;

/// How often a drainer waiting for items checks for a shutdown request.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Why delivery of a batch ended early.
enum Halt {
    /// The shutdown deadline passed.
    Deadline,
    /// The drainer cannot go on; the reason is reported in the stats.
    Stopped(String),
}

/// The drainer thread's state.
pub(crate) struct Worker<T, S> {
    /// The channel drained.
    receiver: Receiver<T>,
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
    /// An item received for the next batch (its key differed).
    carry: Option<T>,
}

impl<T, S> Worker<T, S>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    S: Sink<T>,
{
    pub(crate) fn new(receiver: Receiver<T>, sink: S, settings: DrainSettings<T>, control: Arc<Control<T>>) -> Self {
        let backoff = Backoff::new(settings.backoff_initial, settings.backoff_max);
        let breaker = Breaker::new(settings.breaker_threshold, settings.breaker_open_for);
        Worker { receiver, sink, settings, control, backoff, breaker, carry: None }
    }

    fn stopping(&self) -> bool {
        self.control.state.lock().deadline.is_some()
    }

    /// Runs until shutdown, disconnection, or a reason to stop; returns the
    /// receiver with every undelivered item still in it.
    pub(crate) fn run(mut self) -> Receiver<T> {
        self.receiver.hold_segments(true);
        while !self.stopping() {
            let Some(batch) = self.collect() else { break };
            if batch.is_empty() {
                continue;
            }
            let mut pending = VecDeque::from(batch);
            self.control.state.lock().in_flight = pending.len() as u64;
            let halt = self.deliver(&mut pending);
            self.control.state.lock().in_flight = 0;
            self.receiver.put_back(Vec::from(pending));
            match halt {
                None if self.carry.is_none() => self.receiver.release_delivered(),
                None => {}
                Some(Halt::Deadline) => break,
                Some(Halt::Stopped(reason)) => {
                    tracing::error!(%reason, "drainer stopped");
                    self.control.state.lock().stats.stopped = Some(reason);
                    break;
                }
            }
        }
        if let Some(item) = self.carry.take() {
            self.receiver.put_back(vec![item]);
        }
        // Segments still held stay until the channel is drained or shut
        // down cleanly: they hold the items put back, should the process
        // crash before then.
        self.receiver.hold_segments(false);
        self.receiver
    }

    /// Collects the next batch. `None` when the channel is disconnected
    /// and empty; an empty batch when a shutdown was requested meanwhile.
    fn collect(&mut self) -> Option<Vec<T>> {
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        let first = match self.carry.take() {
            Some(item) => item,
            None => loop {
                match self.receiver.recv_timeout(STOP_POLL) {
                    Ok(item) => break item,
                    Err(RecvTimeoutError::Disconnected) => return None,
                    Err(RecvTimeoutError::Timeout) if self.stopping() => return Some(batch),
                    Err(RecvTimeoutError::Timeout) => {}
                }
            },
        };
        bytes += self.size_of(&first);
        batch.push(first);
        let linger_until = Instant::now() + self.settings.linger;
        while batch.len() < self.settings.batch_size {
            let item = match self.receiver.try_recv() {
                Ok(item) => item,
                Err(_) => {
                    let left = linger_until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match self.receiver.recv_timeout(left) {
                        Ok(item) => item,
                        Err(_) => break,
                    }
                }
            };
            let size = self.size_of(&item);
            let over_bytes = self.settings.batch_bytes.is_some_and(|max| bytes + size > max);
            let other_key = match (&self.settings.same_key, batch.first()) {
                (Some(same_key), Some(first)) => !same_key(first, &item),
                _ => false,
            };
            if over_bytes || other_key {
                self.carry = Some(item);
                break;
            }
            bytes += size;
            batch.push(item);
        }
        Some(batch)
    }

    fn size_of(&self, item: &T) -> u64 {
        match self.settings.batch_bytes {
            Some(_) => encoding::encoded_len(item).unwrap_or(0) as u64,
            None => 0,
        }
    }

    /// Delivers `pending` in order, popping each item once it is accepted
    /// or dead-lettered. Returns why it halted early, if it did; what is
    /// left in `pending` then goes back to the channel.
    fn deliver(&mut self, pending: &mut VecDeque<T>) -> Option<Halt> {
        // Lengths of the parts still to send, in order; they add up to
        // `pending.len()`. A permanent refusal splits a part in two.
        let mut parts = VecDeque::from([pending.len()]);
        while let Some(&part) = parts.front() {
            if let Some(halt) = self.wait_for_breaker() {
                return Some(halt);
            }
            let slice = &pending.make_contiguous()[..part];
            let outcome = catch_unwind(AssertUnwindSafe(|| self.sink.send_batch(slice)));
            let result = match outcome {
                Ok(result) => result,
                Err(_) => return Some(Halt::Stopped("the sink panicked".to_string())),
            };
            match result {
                Ok(()) => {
                    self.breaker.on_success();
                    self.backoff.reset();
                    self.accepted(pending, part);
                    parts.pop_front();
                }
                Err(err) => {
                    let accepted = err.accepted().min(part);
                    self.accepted(pending, accepted);
                    let left = part - accepted;
                    if left == 0 {
                        parts.pop_front();
                        continue;
                    }
                    parts[0] = left;
                    if err.is_transient() {
                        if let Some(halt) = self.retry_later(&err) {
                            return Some(halt);
                        }
                    } else if let Some(halt) = self.refused(pending, &mut parts, &err) {
                        return Some(halt);
                    }
                }
            }
        }
        None
    }

    /// Pops `count` accepted items and counts them.
    fn accepted(&mut self, pending: &mut VecDeque<T>, count: usize) {
        if count == 0 {
            return;
        }
        pending.drain(..count);
        let mut state = self.control.state.lock();
        state.stats.breaker = self.breaker.state();
        state.stats.delivered += count as u64;
        state.stats.batches += 1;
        state.in_flight = pending.len() as u64;
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
    /// to send it).
    fn refused(&mut self, pending: &mut VecDeque<T>, parts: &mut VecDeque<usize>, err: &SinkError) -> Option<Halt> {
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
        let item = pending.pop_front()?;
        parts.pop_front();
        if let Err(failed) = dead_letter.send(item) {
            let reason = format!("the dead-letter channel refused an item ({failed}) after the sink refused it: {err}");
            pending.push_front(failed.into_inner());
            parts.push_front(1);
            return Some(Halt::Stopped(reason));
        }
        tracing::warn!(error = %err, "item refused by the sink; sent to the dead-letter channel");
        let mut state = self.control.state.lock();
        state.stats.breaker = self.breaker.state();
        state.stats.rejected += 1;
        state.in_flight = pending.len() as u64;
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
