//! The clock a cache hit reads (and a miss, for its answer's age and its failure checks,
//! where a few ms early do not matter): on Linux the coarse monotonic clock (the kernel's time at
//! its last tick, read from the vDSO without the TSC: ~10 ns against ~26 ns for
//! `Instant::now` on this project's machines, a fifth of a hit), as dnsdist and Unbound
//! read their time once per event rather than per question. It runs ahead of the fine
//! clock by at most two ticks (8 ms at 250 Hz) and never behind, so an entry may count as
//! expired up to that much early and is never served past its TTL. Answer arrival, timers
//! and RTTs read the fine clock. With the `test-util` feature, and in unit
//! tests, it is tokio's clock, so that paused time drives the cache as before.

use tokio::time::Instant;

/// Now, for deciding what a cache entry's age is.
#[inline]
pub(crate) fn now() -> Instant {
    #[cfg(all(target_os = "linux", not(any(test, feature = "test-util"))))]
    {
        coarse::now()
    }
    #[cfg(not(all(target_os = "linux", not(any(test, feature = "test-util")))))]
    {
        Instant::now()
    }
}

#[cfg(all(target_os = "linux", any(test, not(feature = "test-util"))))]
mod coarse {
    use std::sync::OnceLock;
    use std::time::Duration;

    use nix::sys::time::TimeSpec;
    use nix::time::{ClockId, clock_getres, clock_gettime};
    use tokio::time::Instant;

    /// A fine instant, and the coarse clock's reading at it less one tick.
    struct Anchor {
        at: Instant,
        coarse: Duration,
    }

    static ANCHOR: OnceLock<Anchor> = OnceLock::new();

    /// A reading of the coarse clock (zero if it cannot be read: never on Linux ≥ 2.6.32).
    fn read() -> Duration {
        clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE).map_or(Duration::ZERO, duration)
    }

    /// The coarse clock's resolution (its tick), between 1 and 10 ms.
    fn tick() -> Duration {
        clock_getres(ClockId::CLOCK_MONOTONIC_COARSE)
            .map_or(Duration::from_millis(10), duration)
            .clamp(Duration::from_millis(1), Duration::from_millis(10))
    }

    fn duration(ts: TimeSpec) -> Duration {
        let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
        let nanos = u32::try_from(ts.tv_nsec()).unwrap_or(0).min(999_999_999);
        Duration::new(secs, nanos)
    }

    /// The coarse clock as an [`Instant`]: the anchor plus the coarse time since it. The
    /// coarse clock lags the fine one by less than a tick, so counting from a reading one
    /// tick earlier keeps the result at or ahead of the fine clock, by at most two ticks.
    pub(crate) fn now() -> Instant {
        let anchor = ANCHOR.get_or_init(|| {
            let tick = tick();
            let at = Instant::now();
            Anchor {
                at,
                coarse: read().saturating_sub(tick),
            }
        });
        anchor.at + read().saturating_sub(anchor.coarse)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_coarse_clock_is_never_behind_the_fine_one_and_at_most_two_ticks_ahead() {
            let tick = tick();
            for _ in 0..10_000 {
                let before = Instant::now();
                let coarse = now();
                let after = Instant::now();
                assert!(coarse >= before, "behind by {:?}", before - coarse);
                assert!(coarse <= after + 2 * tick, "ahead by {:?}", coarse - after);
            }
            // It moves.
            let first = now();
            std::thread::sleep(Duration::from_millis(30));
            assert!(now() >= first + Duration::from_millis(20));
        }
    }
}
