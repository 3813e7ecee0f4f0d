//! Counters for metrics: cheap enough for the cache-hit path (striped across threads, so
//! two threads counting hits do not fight over one cache line), read as a snapshot.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Stripes per counter; threads map to one by a per-thread index.
const STRIPES: usize = 16;

/// A counter spread over cache-line-sized stripes.
#[derive(Debug, Default)]
pub(crate) struct Striped {
    stripes: [Padded; STRIPES],
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|i| {
        if i.get() == usize::MAX {
            i.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        i.get()
    })
}

impl Striped {
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.stripes[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// The resolver's own counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: Striped,
    pub(crate) misses: Striped,
    pub(crate) stale: Striped,
    pub(crate) prefetches: Striped,
    pub(crate) joins: Striped,
    pub(crate) overloaded: Striped,
    pub(crate) failures: Striped,
}

/// A snapshot of the resolver's counters and state, for metrics.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Queries answered from a fresh cache entry.
    pub cache_hits: u64,
    /// Queries that found no fresh entry (stale ones included): they went upstream, or got
    /// the remembered failure, or a stale answer while its refresh is held off.
    pub cache_misses: u64,
    /// Answers served stale (RFC 8767) because no upstream answered in time.
    pub stale_answers: u64,
    /// Background refreshes of popular entries near the end of their TTL.
    pub prefetches: u64,
    /// Queries that joined an identical upstream query already in flight.
    pub dedup_joins: u64,
    /// Queries refused at once because too much was in flight.
    pub overloaded: u64,
    /// Queries answered SERVFAIL because no upstream answered (cached failures included).
    pub failures: u64,
    /// Entries in the cache, expired ones included until evicted.
    pub cache_entries: usize,
    /// Distinct upstream queries in flight.
    pub in_flight: usize,
    /// Speculative upstream sends (hedges, and re-sends after a timeout to an upstream not
    /// known to be dead) that the retry budget refused: those queries waited on what they
    /// had sent instead.
    pub retries_refused: u64,
    /// One entry per upstream.
    pub upstreams: Vec<UpstreamStats>,
}

/// The state of one upstream.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct UpstreamStats {
    /// Its address.
    pub addr: SocketAddr,
    /// False while it is marked down.
    pub healthy: bool,
    /// Smoothed RTT, once it has answered.
    pub srtt: Option<Duration>,
    /// Attempts sent to it (UDP, with any TCP follow-up, counts once).
    pub attempts: u64,
    /// Transport failures: port closed, reset, timeouts.
    pub failures: u64,
    /// Attempts that passed their timeout (also counted in `failures`).
    pub timeouts: u64,
    /// Answers with a failure code (SERVFAIL, REFUSED, ...).
    pub error_rcodes: u64,
    /// Answers by response code: `responses_by_rcode[3]` is the NXDOMAIN answers; an
    /// extended code (16 and up) counts in `[15]`.
    pub responses_by_rcode: [u64; 16],
    /// Health probes (`. IN NS`, while it fails) that got no answer within the attempt
    /// timeout.
    pub probe_failures: u64,
    /// Times the queries outstanding on it were re-driven elsewhere.
    pub redrives: u64,
    /// UDP sockets opened to it (each is a 5-tuple: a conntrack entry on the node).
    pub sockets_opened: u64,
    /// Datagrams from it that answered nothing outstanding: forged, late or mismatched.
    pub suspicious_datagrams: u64,
    /// When it last answered.
    pub last_success: Option<Instant>,
    /// Answer RTTs: (upper bound in seconds, answers in that bucket, not cumulative); the
    /// last bound is +Inf.
    pub rtt_histogram: Vec<(f64, u64)>,
    /// Sum of the RTTs counted in `rtt_histogram`.
    pub rtt_sum: Duration,
}
