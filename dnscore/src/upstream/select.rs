//! Selection: which of the candidate upstreams an attempt asks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How the pool picks the upstream for an attempt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Selection {
    /// Of two healthy upstreams picked at random, the one with the lower smoothed RTT
    /// ("power of two choices"): fast upstreams get most queries, none gets all of them.
    #[default]
    LowestRtt,
    /// A healthy upstream at random.
    Random,
    /// The healthy upstreams in turn.
    RoundRobin,
    /// The first healthy upstream in the configured order.
    Sequential,
}

/// A [`Selection`] policy with the state it needs.
#[derive(Debug)]
pub(crate) struct Selector {
    policy: Selection,
    round_robin: AtomicUsize,
}

impl Selector {
    pub(crate) fn new(policy: Selection) -> Self {
        Self {
            policy,
            round_robin: AtomicUsize::new(0),
        }
    }

    /// One of `candidates` (not empty); `rtt` is what the lowest-RTT policy compares.
    pub(crate) fn select(&self, candidates: &[usize], rtt: impl Fn(usize) -> Duration) -> usize {
        let n = candidates.len();
        match self.policy {
            // One upstream (a pod's usual Service IP) leaves no choice: no random draws and
            // no RTT reads (~600 instructions per miss). Round robin still counts it.
            Selection::Sequential | Selection::Random | Selection::LowestRtt if n == 1 => {
                candidates[0]
            }
            Selection::Sequential => candidates[0],
            Selection::Random => candidates[rand::random_range(0..n)],
            Selection::RoundRobin => {
                candidates[self.round_robin.fetch_add(1, Ordering::Relaxed) % n]
            }
            Selection::LowestRtt => {
                // Two distinct candidates (when there are two), so the slower of a pair is
                // never chosen against itself.
                let first = rand::random_range(0..n);
                let second = (first + rand::random_range(1..n.max(2))) % n;
                let (a, b) = (candidates[first], candidates[second]);
                // An upstream with no recent RTT counts as fastest, so that it gets explored.
                if rtt(b) < rtt(a) { b } else { a }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_rtt_prefers_the_faster_of_two() {
        let selector = Selector::new(Selection::LowestRtt);
        let rtt = |i: usize| Duration::from_millis(if i == 7 { 1 } else { 50 });
        for _ in 0..100 {
            assert_eq!(selector.select(&[3, 7], rtt), 7);
        }
        assert_eq!(selector.select(&[3], rtt), 3);
        let rr = Selector::new(Selection::RoundRobin);
        let picks: Vec<usize> = (0..4).map(|_| rr.select(&[1, 2], rtt)).collect();
        assert_eq!(picks, [1, 2, 1, 2]);
        assert_eq!(Selector::new(Selection::Sequential).select(&[5, 1], rtt), 5);
    }
}
