//! Retry pacing for the drainer: capped exponential backoff with jitter,
//! and a circuit breaker.
//!
//! The breaker is a small state machine driven by the outcome of each sink
//! call and by the clock, which the caller passes in, so tests need no
//! sleeps:
//!
//! ```text
//!   Closed --(failure_threshold failures in a row)--> Open
//!   Open   --(open_for elapsed)---------------------> HalfOpen (one probe)
//!   HalfOpen --(probe succeeds)--> Closed
//!   HalfOpen --(probe fails)-----> Open (for open_for again)
//! ```

use std::time::{Duration, Instant};

/// Default delay before the first retry.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(10);

/// Default cap on the delay between retries.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Default number of failures in a row that opens the breaker.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;

/// Default time the breaker stays open before it lets one probe through.
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(5);

/// The circuit breaker's state, as reported in
/// [`DrainStats::breaker`](crate::DrainStats::breaker).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// The sink is called normally.
    #[default]
    Closed,
    /// The sink failed repeatedly and is left alone for a while.
    Open,
    /// One probe batch is allowed through to test the sink.
    HalfOpen,
}

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    /// Delay before the first retry.
    initial: Duration,
    /// Cap on any delay.
    max: Duration,
    /// Retries since the last success.
    attempt: u32,
    /// Jitter source (xorshift state, never zero).
    seed: u64,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos());
        Backoff { initial, max: max.max(initial), attempt: 0, seed: (nanos as u64) | 1 }
    }

    /// The next delay: `initial * 2^attempt`, capped at `max`, then
    /// scaled by a random factor in [0.5, 1.0] so that many drainers
    /// retrying the same sink do not retry in step.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let exponential = self.initial.saturating_mul(1u32 << self.attempt.min(30));
        self.attempt = self.attempt.saturating_add(1);
        let capped = exponential.min(self.max);
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let factor = 0.5 + (self.seed % 1_000) as f64 / 2_000.0;
        capped.mul_f64(factor)
    }

    /// A success: the next failure starts from `initial` again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The circuit breaker.
#[derive(Debug, Clone)]
pub(crate) struct Breaker {
    /// Failures in a row that open it.
    threshold: u32,
    /// How long it stays open.
    open_for: Duration,
    /// Current state.
    state: BreakerState,
    /// Failures in a row so far.
    failures: u32,
    /// When an open breaker lets a probe through.
    reopen_at: Option<Instant>,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, open_for: Duration) -> Breaker {
        Breaker { threshold: threshold.max(1), open_for, state: BreakerState::Closed, failures: 0, reopen_at: None }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.state
    }

    /// How long to wait before the sink may be called at `now`; zero when
    /// it may be called now. An open breaker turns half-open when its time
    /// is up.
    pub(crate) fn wait_before_call(&mut self, now: Instant) -> Duration {
        match (self.state, self.reopen_at) {
            (BreakerState::Open, Some(at)) if now < at => at - now,
            (BreakerState::Open, _) => {
                self.state = BreakerState::HalfOpen;
                Duration::ZERO
            }
            _ => Duration::ZERO,
        }
    }

    /// The sink accepted a call.
    pub(crate) fn on_success(&mut self) {
        self.state = BreakerState::Closed;
        self.failures = 0;
        self.reopen_at = None;
    }

    /// The sink failed a call at `now`. Returns whether that opened the
    /// breaker.
    pub(crate) fn on_failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        let open = self.state == BreakerState::HalfOpen || self.failures >= self.threshold;
        if open {
            self.state = BreakerState::Open;
            self.reopen_at = now.checked_add(self.open_for);
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        let nominal = [10u64, 20, 40, 80, 100, 100, 100, 100];
        for (delay, nominal) in delays.iter().zip(nominal) {
            let nominal = Duration::from_millis(nominal);
            assert!(*delay >= nominal / 2 && *delay <= nominal, "{delay:?} outside [{:?}, {nominal:?}]", nominal / 2);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(10));
    }

    #[test]
    fn breaker_opens_after_the_threshold_probes_once_and_closes_on_success() {
        let start = Instant::now();
        let mut breaker = Breaker::new(3, Duration::from_secs(1));
        assert!(!breaker.on_failure(start));
        assert!(!breaker.on_failure(start));
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.on_failure(start));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.wait_before_call(start + Duration::from_millis(400)), Duration::from_millis(600));
        assert_eq!(breaker.wait_before_call(start + Duration::from_secs(1)), Duration::ZERO);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        // A failed probe opens it again at once.
        assert!(breaker.on_failure(start + Duration::from_secs(1)));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.wait_before_call(start + Duration::from_millis(1_500)) > Duration::ZERO);
        assert_eq!(breaker.wait_before_call(start + Duration::from_secs(2)), Duration::ZERO);
        breaker.on_success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(!breaker.on_failure(start + Duration::from_secs(3)), "the count starts again after a success");
    }
}
