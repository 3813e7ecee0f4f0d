//! The builder's defaults, each with the reason for it (the builder's methods say what each
//! setting does; `dnscore::settings` lists them by name).

use std::time::Duration;

/// Default number of cached answers (CoreDNS's cache plugin holds 9984).
pub const CACHE_CAPACITY: usize = 10_000;

/// Default ceiling on a positive answer's TTL: one day (Unbound, hickory).
pub const MAX_TTL: u32 = 86_400;

/// Default ceiling on a negative answer's TTL: one hour (Unbound; RFC 2308 §5 suggests 1-3 h).
pub const NEGATIVE_MAX_TTL: u32 = 3_600;

/// Default ceiling on one attempt's adaptive timeout (SRTT + 4·RTTVAR, at least 1.5 ×
/// SRTT); before an upstream has answered once, its attempts wait 400 ms (or this ceiling,
/// if lower). High enough that a CoreDNS starved of CPU, answering after 800 ms, gets its
/// answers in without re-sends; within the 2 s deadline.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Default floor on one attempt's adaptive timeout.
pub const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(50);

/// Default transport failures in a row (port closed, reset, timeout) that mark an upstream
/// down (CoreDNS: 2).
pub const MAX_FAILURES: u32 = 3;

/// Default first interval between health probes of a down upstream (CoreDNS: 0.5 s); it
/// doubles after each failed probe.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Default ceiling on the interval between health probes.
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// Default share of queries that may send a hedge (a second copy to another upstream).
pub const HEDGE_SHARE: f64 = 0.05;

/// Default retry budget: speculative sends (hedges, re-sends after a timeout) allowed per
/// first attempt, pool-wide, on top of a floor of 2 per second (Finagle's `RetryBudget`
/// allows 20%, Envoy's `retry_budget` 20% of active requests; a pod's sidecar is one of
/// thousands asking the same CoreDNS, so less).
pub const RETRY_BUDGET: f64 = 0.1;

/// Default number of sticky UDP sockets per upstream (0: a fresh socket per attempt).
pub const UPSTREAM_SOCKETS: usize = 4;

/// Default time a client waits for an upstream before it gets a stale answer (RFC 8767
/// client response timer).
pub const STALE_ANSWER_TIMEOUT: Duration = Duration::from_millis(1800);

/// Default time past its TTL an answer may still be served stale (RFC 8767: 1 to 3 days).
pub const MAX_STALE: Duration = Duration::from_secs(86_400);

/// Default time a question that failed on every upstream is answered SERVFAIL without
/// asking again (RFC 2308 §7 allows up to 5 minutes; CoreDNS caches SERVFAIL 5 s).
pub const FAILURE_TTL: Duration = Duration::from_secs(2);

/// Default bound on distinct upstream queries in flight.
pub const MAX_IN_FLIGHT: usize = 4096;

/// Default bound on callers waiting on one upstream query.
pub const MAX_WAITERS: usize = 4096;

/// Default deadline for a whole query: well inside the 5 s a glibc client waits, so the
/// client gets our SERVFAIL (or answer) before it gives up on us.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Default TCP connections per upstream: the EC2 (Nitro) resolver serves only two at once.
pub const TCP_CONNECTIONS: usize = 2;

/// Default idle time after which a TCP connection to an upstream is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default RRSIGs kept per RRset of an upstream answer (Unbound's default since 2026).
pub const MAX_RRSIGS: usize = 8;

/// Default cluster domain: Kubernetes' default (`--cluster-domain` of the kubelet).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Default TTL floor for answers about names under the cluster domain, positive and
/// negative: 30 s. CoreDNS's kubernetes plugin answers with TTL 5 s, so without a floor
/// every pod's cache asks CoreDNS for each of its names every 5 s: measured at 50 pods per
/// node (benches/cluster/README.md, "Many pods per node"), per-pod caches then send CoreDNS
/// 8.1× what one node cache sends, and 1.34× with a 30-s floor. NodeLocal DNSCache's
/// `cache 30` and many clusters' `ttl 30` serve Service names as long. The price: a
/// re-created Service, a new one, or a headless Service's new pod set is seen up to 30 s
/// late.
pub const CLUSTER_MIN_TTL: u32 = 30;
