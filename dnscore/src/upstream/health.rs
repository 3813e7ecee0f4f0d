//! What the pool knows of one upstream: smoothed RTT and its variance (RFC 6298), the run of
//! consecutive transport failures that marks it down, and a signal that re-drives every
//! query outstanding on it when it is found dead.
//!
//! Two RTT figures are kept. The estimator behind attempt timeouts and hedge delays learns
//! from answers only (Karn's rule, RFC 6298 §3): an attempt that gets no answer says nothing
//! of the RTT, and may be a lost packet rather than a slow server (a Service IP whose DNAT
//! sent that socket to a dead endpoint). Selection's figure also takes the time an attempt
//! waited in vain, so that a silent or slow upstream is avoided at once.
//!
//! Only transport failures count (port closed, connection reset, no answer in time): an
//! upstream that answers SERVFAIL is alive, and a forged or malformed packet never reaches
//! here at all, so an attacker cannot take an upstream out of rotation by spraying packets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// RFC 6298 §2: alpha = 1/8, beta = 1/4.
const ALPHA: f64 = 0.125;
const BETA: f64 = 0.25;
/// How long an RTT sample steers selection before the upstream is explored again.
const SAMPLE_MAX_AGE: Duration = Duration::from_secs(2);
/// An attempt's timeout before the upstream's first answer.
const INITIAL_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(400);
/// The earliest a hedge is sent.
const MIN_HEDGE_DELAY: Duration = Duration::from_millis(5);
#[derive(Debug, Default)]
struct State {
    /// Smoothed RTT in seconds; `None` until the first answer.
    srtt: Option<f64>,
    /// RTT variation in seconds.
    rttvar: f64,
    /// What selection compares, in seconds: smoothed like SRTT, but raised to the wait of
    /// an attempt that timed out.
    selection_rtt: Option<f64>,
    consecutive_failures: u32,
    down: bool,
    /// A probe task is running for this upstream.
    probing: bool,
    last_success: Option<Instant>,
    /// When selection's RTT last changed (an answer, or an attempt found slow).
    sampled_at: Option<Instant>,
    /// One query has been let through to re-measure a stale SRTT.
    exploring: bool,
}

/// Upper bounds of the RTT histogram's buckets, in seconds (the last is +Inf).
pub(crate) const RTT_BUCKETS: [f64; 13] = [
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    f64::INFINITY,
];

/// Counters kept for metrics and tests.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) attempts: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    /// Answers by response code; an extended code (16 and up, from OPT) counts in 15.
    pub(crate) rcodes: [AtomicU64; 16],
    /// Health probes that got no answer in time.
    pub(crate) probe_failures: AtomicU64,
    pub(crate) redrives: AtomicU64,
    /// Answers per RTT bucket (not cumulative), and their RTT sum in microseconds.
    pub(crate) rtt_buckets: [AtomicU64; RTT_BUCKETS.len()],
    pub(crate) rtt_sum_micros: AtomicU64,
}

impl Counters {
    fn observe_rtt(&self, rtt: Duration) {
        let secs = rtt.as_secs_f64();
        let bucket = RTT_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(RTT_BUCKETS.len() - 1);
        self.rtt_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.rtt_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The histogram as (upper bound in seconds, count in that bucket) pairs.
    pub(crate) fn rtt_histogram(&self) -> Vec<(f64, u64)> {
        RTT_BUCKETS
            .iter()
            .zip(&self.rtt_buckets)
            .map(|(&bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Health of one upstream.
#[derive(Debug)]
pub(crate) struct Health {
    state: Mutex<State>,
    /// Bumped when the upstream is found dead or removed: attempts in flight on it stop
    /// waiting and their queries go elsewhere at once.
    deaths: watch::Sender<u64>,
    pub(crate) counters: Counters,
    /// The upstream was seen not to echo a 0x20 question's letter case: it is asked in
    /// plain case from then on.
    case_unreliable: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            deaths: watch::Sender::new(0),
            counters: Counters::default(),
            case_unreliable: AtomicBool::new(false),
        }
    }
}

impl Health {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent; a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An answer arrived after `rtt`: fold it into SRTT/RTTVAR and end any run of failures.
    /// Returns true if this brought the upstream back up.
    pub(crate) fn record_answer(&self, rtt: Duration, now: Instant) -> bool {
        self.counters.observe_rtt(rtt);
        let r = rtt.as_secs_f64();
        let mut s = self.state();
        match s.srtt {
            None => {
                s.srtt = Some(r);
                s.rttvar = r / 2.0;
            }
            Some(srtt) => {
                s.rttvar = (1.0 - BETA) * s.rttvar + BETA * (srtt - r).abs();
                s.srtt = Some((1.0 - ALPHA) * srtt + ALPHA * r);
            }
        }
        s.selection_rtt = Some(s.selection_rtt.map_or(r, |v| (1.0 - ALPHA) * v + ALPHA * r));
        s.consecutive_failures = 0;
        s.last_success = Some(now);
        s.sampled_at = Some(now);
        s.exploring = false;
        std::mem::replace(&mut s.down, false)
    }

    /// An attempt waited `waited` without an answer: the upstream may be that slow now, so
    /// raise the RTT selection compares to it (selection then prefers the others). SRTT,
    /// and with it the attempt timeout, is left alone: a lost packet is not an RTT sample.
    pub(crate) fn record_slow(&self, waited: Duration, now: Instant) {
        let mut s = self.state();
        let waited = waited.as_secs_f64();
        s.selection_rtt = Some(s.selection_rtt.map_or(waited, |v| v.max(waited)));
        s.sampled_at = Some(now);
        s.exploring = false;
    }

    /// The RTT selection compares: SRTT raised by recent vain waits, or zero once (until the
    /// next sample) when the sample is old, so that an upstream avoided for being slow is tried again now and then
    /// by one query (it may have recovered; if it has not, that attempt adds to its failures
    /// until it is marked down and probed). Zero before the first sample: explore.
    pub(crate) fn selection_rtt(&self, now: Instant) -> Duration {
        let mut s = self.state();
        match (s.selection_rtt, s.sampled_at) {
            (None, _) | (_, None) => Duration::ZERO,
            (Some(srtt), Some(at)) => {
                if now.saturating_duration_since(at) >= SAMPLE_MAX_AGE && !s.exploring {
                    s.exploring = true;
                    return Duration::ZERO;
                }
                Duration::from_secs_f64(srtt)
            }
        }
    }

    /// A transport failure; after `max_failures` in a row the upstream is marked down.
    ///
    /// `may_go_down` is false for a timeout when no other upstream is up: slowness alone
    /// never takes the last one out of rotation (a refused port or a reset still does).
    /// Returns true when this marked the upstream down.
    pub(crate) fn record_failure(&self, max_failures: u32, may_go_down: bool) -> bool {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        let mut s = self.state();
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        if may_go_down && !s.down && s.consecutive_failures >= max_failures {
            s.down = true;
            return true;
        }
        false
    }

    /// Claims the probe task of this upstream: true if none is running.
    pub(crate) fn start_probing(&self) -> bool {
        !std::mem::replace(&mut self.state().probing, true)
    }

    /// Claims a new probe task for an upstream that is down without one: its probe task
    /// was dropped unfinished (it ran on a runtime that has ended).
    pub(crate) fn claim_lost_probe(&self) -> bool {
        let mut state = self.state();
        let lost = state.down && !state.probing;
        state.probing |= lost;
        lost
    }

    /// The probe task ends (the upstream is back, or it was removed, or the task was
    /// dropped with its runtime).
    pub(crate) fn probe_ended(&self) {
        self.state().probing = false;
    }

    /// Whether the upstream is marked down.
    pub(crate) fn is_down(&self) -> bool {
        self.state().down
    }

    /// Smoothed RTT of the answers, if any answer was seen.
    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.state().srtt.map(Duration::from_secs_f64)
    }

    /// How long an attempt waits before it counts as timed out: SRTT + 4·RTTVAR (RFC 6298
    /// §2.3), and at least 1.5 × SRTT (an upstream that answers steadily late has a small
    /// RTTVAR: its answers must not race the timeout), clamped to `floor..=cap`; before
    /// the first answer, 400 ms (Unbound starts at 376 ms) within the same bounds.
    pub(crate) fn attempt_timeout(&self, floor: Duration, cap: Duration) -> Duration {
        let s = self.state();
        match s.srtt {
            None => INITIAL_ATTEMPT_TIMEOUT.clamp(floor, cap),
            Some(srtt) => {
                Duration::from_secs_f64(srtt + (4.0 * s.rttvar).max(srtt / 2.0)).clamp(floor, cap)
            }
        }
    }

    /// When a second copy of a query may be sent elsewhere: about the upstream's p95 RTT
    /// (SRTT + 2·RTTVAR, RTTVAR being close to a mean deviation), at least 5 ms (below that,
    /// scheduling jitter rather than the upstream decides).
    pub(crate) fn hedge_delay(&self) -> Option<Duration> {
        let s = self.state();
        s.srtt
            .map(|srtt| Duration::from_secs_f64(srtt + 2.0 * s.rttvar).max(MIN_HEDGE_DELAY))
    }

    /// Re-drives every query outstanding on this upstream.
    pub(crate) fn redrive(&self) {
        self.counters.redrives.fetch_add(1, Ordering::Relaxed);
        self.deaths
            .send_modify(|epoch| *epoch = epoch.wrapping_add(1));
    }

    /// A receiver that fires at the next re-drive.
    pub(crate) fn deaths(&self) -> watch::Receiver<u64> {
        self.deaths.subscribe()
    }

    /// Whether queries to it may randomise letter case (0x20).
    pub(crate) fn preserves_case(&self) -> bool {
        !self.case_unreliable.load(Ordering::Relaxed)
    }

    /// The upstream answered a 0x20 query in another letter case: stop randomising.
    /// Returns true the first time.
    pub(crate) fn case_not_preserved(&self) -> bool {
        !self.case_unreliable.swap(true, Ordering::Relaxed)
    }

    /// When the upstream last answered.
    pub(crate) fn last_success(&self) -> Option<Instant> {
        self.state().last_success
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_estimates_follow_rfc_6298() {
        let h = Health::default();
        let now = Instant::now();
        let (floor, cap) = (Duration::from_millis(50), Duration::from_secs(1));
        assert_eq!(
            h.attempt_timeout(floor, cap),
            INITIAL_ATTEMPT_TIMEOUT,
            "no sample yet"
        );
        assert_eq!(
            h.attempt_timeout(floor, Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        h.record_answer(Duration::from_millis(100), now);
        // srtt 100 ms, rttvar 50 ms -> 300 ms
        assert_eq!(h.attempt_timeout(floor, cap), Duration::from_millis(300));
        for _ in 0..50 {
            h.record_answer(Duration::from_micros(200), now);
        }
        assert_eq!(
            h.attempt_timeout(floor, cap),
            floor,
            "fast upstream: the floor"
        );
        assert!(h.srtt().unwrap() < Duration::from_millis(1));
        let histogram = h.counters.rtt_histogram();
        assert_eq!(histogram.iter().map(|b| b.1).sum::<u64>(), 51);
        assert_eq!(histogram[0], (0.0005, 50), "200 µs answers");
        assert_eq!(histogram[7], (0.1, 1), "the 100 ms answer");
    }

    #[test]
    fn a_vain_wait_steers_selection_but_not_the_timeout() {
        let h = Health::default();
        let now = Instant::now();
        let (floor, cap) = (Duration::from_millis(50), Duration::from_millis(800));
        for _ in 0..20 {
            h.record_answer(Duration::from_millis(1), now);
        }
        assert_eq!(h.attempt_timeout(floor, cap), floor);
        for _ in 0..5 {
            h.record_slow(h.attempt_timeout(floor, cap), now);
        }
        assert_eq!(
            h.attempt_timeout(floor, cap),
            floor,
            "lost attempts are no samples"
        );
        assert_eq!(h.selection_rtt(now), floor, "selection avoids it meanwhile");
        h.record_answer(Duration::from_millis(1), now);
        assert!(h.selection_rtt(now) < floor, "and answers bring it back");
    }

    #[test]
    fn marked_down_after_consecutive_failures_only() {
        let h = Health::default();
        let now = Instant::now();
        assert!(!h.record_failure(3, true));
        assert!(!h.record_failure(3, true));
        h.record_answer(Duration::from_millis(1), now);
        assert!(!h.record_failure(3, true));
        assert!(!h.record_failure(3, true));
        assert!(!h.record_failure(3, false), "the last one stays");
        assert!(!h.is_down());
        assert!(h.record_failure(3, true));
        assert!(h.is_down());
        assert!(!h.record_failure(3, true), "marked down once");
        assert!(h.start_probing());
        assert!(!h.start_probing(), "one probe task only");
        assert!(h.record_answer(Duration::from_millis(1), now), "back up");
        assert!(!h.is_down());
    }
}
