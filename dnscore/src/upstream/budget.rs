//! The two token buckets that bound speculative sends, so that dnscore never multiplies the
//! load on an upstream that is already struggling.
//!
//! - [`RetryBudget`], pool-wide: every *speculative* send (a hedge, or a re-send after a
//!   timeout to an upstream not known to be dead) takes a token; tokens come from a share
//!   of first attempts plus a small floor per second, as Finagle's `RetryBudget` and Envoy's
//!   `retry_budget` do for RPC. Retries are a share of real traffic, never a multiple of it.
//!   Re-driving a query stranded on an upstream or socket known to be dead (port refused,
//!   socket closed, socket silent since a query timed out on it, upstream marked down or
//!   removed) is not speculative and takes nothing.
//! - [`HedgeBudget`]: of those, hedges are further limited to their own share of queries.
//!
//! Time is an argument (`now`), so the buckets are tested without sleeping.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Speculative sends allowed per second whatever the traffic (Finagle's
/// `minRetriesPerSec` is 10; a pod's sidecar needs fewer): a pod that asks little still
/// gets a retry past a lost packet.
pub(crate) const RETRY_FLOOR_PER_SECOND: i64 = 2;
/// Most tokens the retry budget holds: the burst of speculative sends after a quiet spell.
pub(crate) const RETRY_BURST: i64 = 20;
/// Tokens are kept in thousandths, so that shares add up exactly.
const MILLI: i64 = 1000;

/// The pool-wide budget of speculative sends (see the module documentation).
#[derive(Debug)]
pub(crate) struct RetryBudget {
    bucket: Mutex<Bucket>,
    /// Thousandths of a token each first attempt adds.
    per_attempt: i64,
    /// Speculative sends refused for want of tokens (for metrics).
    refused: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    /// In thousandths.
    milli_tokens: i64,
    /// When the floor was last added.
    refilled: Instant,
}

impl RetryBudget {
    /// A budget of `ratio` speculative sends per first attempt (0.1: one in ten), plus
    /// [`RETRY_FLOOR_PER_SECOND`], holding at most [`RETRY_BURST`]. It starts with a
    /// second's floor.
    pub(crate) fn new(ratio: f64, now: Instant) -> Self {
        Self {
            bucket: Mutex::new(Bucket {
                milli_tokens: RETRY_FLOOR_PER_SECOND * MILLI,
                refilled: now,
            }),
            per_attempt: (ratio.clamp(0.0, 1.0) * MILLI as f64) as i64,
            refused: AtomicU64::new(0),
        }
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        // Every update leaves the bucket consistent; a poisoned lock is still usable.
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A first attempt was sent.
    pub(crate) fn deposit(&self, now: Instant) {
        let mut b = self.bucket();
        b.refill(now);
        b.milli_tokens = (b.milli_tokens + self.per_attempt).min(RETRY_BURST * MILLI);
    }

    /// Takes a token for one speculative send; false (and counted) when there is none.
    pub(crate) fn try_take(&self, now: Instant) -> bool {
        let mut b = self.bucket();
        b.refill(now);
        if b.milli_tokens >= MILLI {
            b.milli_tokens -= MILLI;
            true
        } else {
            drop(b);
            self.refused.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Speculative sends refused so far.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled);
        // Whole milliseconds only, so that frequent calls lose nothing to rounding.
        let millis = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
        if millis > 0 {
            let added = millis.saturating_mul(RETRY_FLOOR_PER_SECOND);
            self.milli_tokens = self
                .milli_tokens
                .saturating_add(added)
                .min(RETRY_BURST * MILLI);
            self.refilled += Duration::from_millis(millis.unsigned_abs());
        }
    }
}

/// A token bucket that lets a `share` of queries send a hedge. Tokens are kept in
/// thousandths; each query adds `share` × 1000, each hedge takes 1000.
#[derive(Debug)]
pub(crate) struct HedgeBudget {
    milli_tokens: AtomicI64,
    per_query: i64,
}

/// Hedges that may be sent in a burst.
const HEDGE_BURST: i64 = 10;

impl HedgeBudget {
    pub(crate) fn new(share: f64) -> Self {
        Self {
            milli_tokens: AtomicI64::new(0),
            per_query: (share.clamp(0.0, 1.0) * 1000.0) as i64,
        }
    }

    /// Whether hedging is on at all.
    pub(crate) fn enabled(&self) -> bool {
        self.per_query > 0
    }

    pub(crate) fn deposit(&self) {
        if self.per_query == 0 {
            return;
        }
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + self.per_query).min(HEDGE_BURST * 1000))
            });
    }

    pub(crate) fn try_take(&self) -> bool {
        self.milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok()
    }

    /// Gives back a hedge token taken for a hedge that was not sent.
    pub(crate) fn refund(&self) {
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + 1000).min(HEDGE_BURST * 1000))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedge_budget_allows_about_its_share() {
        let budget = HedgeBudget::new(0.05);
        let mut hedges = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.try_take() {
                hedges += 1;
            }
        }
        assert!(
            (49..=51).contains(&hedges),
            "{hedges} hedges for 1000 queries"
        );
        let none = HedgeBudget::new(0.0);
        none.deposit();
        assert!(!none.try_take());
        assert!(!none.enabled());
    }

    #[test]
    fn retry_budget_is_a_share_of_first_attempts_plus_a_floor() {
        let start = Instant::now();
        let budget = RetryBudget::new(0.1, start);
        // 10,000 first attempts within one instant: 10% of them, on top of the initial
        // floor, up to the burst.
        let mut allowed = 0;
        for _ in 0..100 {
            budget.deposit(start);
            if budget.try_take(start) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 10 + RETRY_FLOOR_PER_SECOND as usize);
        assert_eq!(budget.refused(), 100 - allowed as u64);
        // No traffic: the floor alone, per second.
        let later = start + Duration::from_secs(1);
        let mut floor = 0;
        while budget.try_take(later) {
            floor += 1;
        }
        assert_eq!(floor, RETRY_FLOOR_PER_SECOND as usize);
        // A long quiet spell fills the bucket to its burst, no further.
        let much_later = later + Duration::from_secs(3600);
        let mut burst = 0;
        while budget.try_take(much_later) {
            burst += 1;
        }
        assert_eq!(burst, RETRY_BURST as usize);
    }
}
