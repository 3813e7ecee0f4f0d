//! Prometheus metrics: the server's own counters (queries by protocol, type and response
//! code; TCP connections; refused clients) and, read at each scrape, the resolver's
//! (`Resolver::stats`: cache, dedup, upstreams with their RTT histograms). Exposition by
//! `prometheus-client`.
//!
//! Query counters sit on the hot path: a fixed array of atomics per UDP worker (no lock, no
//! label hashing, no cache line shared between workers), summed at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dnscore::Resolver;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Query types with their own label value; the rest count as "other".
const QTYPES: [(u16, &str); 11] = [
    (1, "A"),
    (28, "AAAA"),
    (5, "CNAME"),
    (33, "SRV"),
    (12, "PTR"),
    (16, "TXT"),
    (15, "MX"),
    (2, "NS"),
    (6, "SOA"),
    (65, "HTTPS"),
    (255, "ANY"),
];
const OTHER_QTYPE: usize = QTYPES.len();
/// Response codes with their own label value; the rest count as "other".
const RCODES: [&str; 6] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
];
const OTHER_RCODE: usize = RCODES.len();
const PROTOCOLS: [&str; 2] = ["udp", "tcp"];
const CELLS: usize = PROTOCOLS.len() * (QTYPES.len() + 1) * (RCODES.len() + 1);

/// The protocol a query came over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// UDP.
    Udp = 0,
    /// TCP.
    Tcp = 1,
}

/// Query counters by protocol, type and response code; one per worker.
#[derive(Debug)]
pub struct QueryCounters {
    cells: [AtomicU64; CELLS],
}

impl QueryCounters {
    fn new() -> Self {
        Self {
            cells: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one answered query of type `qtype` (when it could be read).
    #[inline]
    pub fn count(&self, protocol: Protocol, qtype: Option<u16>, response: &[u8]) {
        let qtype = qtype
            .and_then(|t| QTYPES.iter().position(|&(code, _)| code == t))
            .unwrap_or(OTHER_QTYPE);
        let rcode = dnscore::message::response_code(response)
            .map_or(OTHER_RCODE, |r| usize::from(r).min(OTHER_RCODE));
        let cell = (protocol as usize * (QTYPES.len() + 1) + qtype) * (RCODES.len() + 1) + rcode;
        self.cells[cell].fetch_add(1, Ordering::Relaxed);
    }
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// One counter set per worker (and one for TCP), summed at scrape.
    query_counters: Mutex<Vec<Arc<QueryCounters>>>,
    /// Open client TCP connections.
    pub tcp_connections: AtomicI64,
    /// Packets dropped because the client is not allowed.
    pub refused_clients: AtomicU64,
    /// Packets dropped because the client is over its rate limit.
    pub rate_limited: AtomicU64,
    /// Client queries waiting for an upstream (cache misses being resolved).
    pub in_flight: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            query_counters: Mutex::new(Vec::new()),
            tcp_connections: AtomicI64::new(0),
            refused_clients: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
        }
    }
}

/// A client query waiting for an upstream: counted in the `in_flight` gauge while it lives.
pub(crate) struct Waiting(Arc<Metrics>);

impl Waiting {
    pub(crate) fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(metrics))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// A new counter set for one worker.
    pub fn worker(&self) -> Arc<QueryCounters> {
        let counters = Arc::new(QueryCounters::new());
        self.query_counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&counters));
        counters
    }

    fn query_totals(&self) -> Vec<u64> {
        let mut totals = vec![0u64; CELLS];
        for counters in self
            .query_counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            for (t, c) in totals.iter_mut().zip(counters.cells.iter()) {
                *t += c.load(Ordering::Relaxed);
            }
        }
        totals
    }
}

/// Renders all metrics in the Prometheus text format.
pub fn render(metrics: &Arc<Metrics>, resolver: &Resolver) -> String {
    let mut registry = Registry::with_prefix("dnscore");
    registry.register_collector(Box::new(Snapshot {
        metrics: Arc::clone(metrics),
        resolver: resolver.clone(),
    }));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        let _ = writeln!(out, "# encoding failed");
    }
    out
}

/// Reads one counter of an upstream's stats.
type UpstreamCounter = fn(&dnscore::UpstreamStats) -> u64;

/// Reads the counters at scrape time.
#[derive(Debug)]
struct Snapshot {
    metrics: Arc<Metrics>,
    resolver: Resolver,
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> std::fmt::Result {
    ConstCounter::new(v).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: i64) -> std::fmt::Result {
    ConstGauge::new(v).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let totals = self.metrics.query_totals();
        {
            let mut family = encoder.encode_descriptor(
                "queries",
                "Queries answered, by protocol, query type and response code",
                None,
                MetricType::Counter,
            )?;
            for (p, proto) in PROTOCOLS.iter().enumerate() {
                for t in 0..=QTYPES.len() {
                    let qtype = QTYPES.get(t).map_or("other", |q| q.1);
                    for r in 0..=RCODES.len() {
                        let cell = (p * (QTYPES.len() + 1) + t) * (RCODES.len() + 1) + r;
                        if totals[cell] == 0 {
                            continue;
                        }
                        let rcode = RCODES.get(r).copied().unwrap_or("other");
                        let labels = [("proto", *proto), ("type", qtype), ("rcode", rcode)];
                        ConstCounter::new(totals[cell]).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        let m = &self.metrics;
        gauge(
            &mut encoder,
            "tcp_connections",
            "Open client TCP connections",
            m.tcp_connections.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut encoder,
            "in_flight",
            "Client queries waiting for an upstream",
            m.in_flight.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "refused_clients",
            "Packets dropped from clients not allowed",
            m.refused_clients.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "rate_limited",
            "Packets dropped from clients over their rate limit",
            m.rate_limited.load(Ordering::Relaxed),
        )?;

        let s = self.resolver.stats();
        counter(
            &mut encoder,
            "cache_hits",
            "Queries answered from a fresh cache entry",
            s.cache_hits,
        )?;
        counter(
            &mut encoder,
            "cache_misses",
            "Queries that went upstream",
            s.cache_misses,
        )?;
        counter(
            &mut encoder,
            "cache_stale_answers",
            "Answers served stale (RFC 8767)",
            s.stale_answers,
        )?;
        counter(
            &mut encoder,
            "cache_prefetches",
            "Background refreshes near the end of a TTL",
            s.prefetches,
        )?;
        gauge(
            &mut encoder,
            "cache_entries",
            "Entries in the cache",
            s.cache_entries as i64,
        )?;
        counter(
            &mut encoder,
            "dedup_joins",
            "Queries that joined an identical upstream query in flight",
            s.dedup_joins,
        )?;
        counter(
            &mut encoder,
            "overloaded",
            "Queries refused at once because too much was in flight",
            s.overloaded,
        )?;
        counter(
            &mut encoder,
            "failures",
            "Queries answered SERVFAIL because no upstream answered",
            s.failures,
        )?;
        gauge(
            &mut encoder,
            "upstream_queries_in_flight",
            "Distinct upstream queries in flight",
            s.in_flight as i64,
        )?;
        counter(
            &mut encoder,
            "upstream_retries_refused",
            "Speculative upstream sends (hedges, re-sends after a timeout) the retry budget refused",
            s.retries_refused,
        )?;

        let families: [(&str, &str, UpstreamCounter); 7] = [
            ("upstream_attempts", "Attempts sent to the upstream", |u| {
                u.attempts
            }),
            (
                "upstream_failures",
                "Transport failures of the upstream",
                |u| u.failures,
            ),
            (
                "upstream_timeouts",
                "Attempts unanswered at the timeout ceiling",
                |u| u.timeouts,
            ),
            (
                "upstream_error_rcodes",
                "Answers with a failure code",
                |u| u.error_rcodes,
            ),
            (
                "upstream_redrives",
                "Times its outstanding queries were re-driven",
                |u| u.redrives,
            ),
            (
                "upstream_sockets_opened",
                "UDP sockets opened to the upstream (a conntrack entry each)",
                |u| u.sockets_opened,
            ),
            (
                "upstream_suspicious_datagrams",
                "Datagrams from the upstream that answered nothing outstanding (forged, late, mismatched)",
                |u| u.suspicious_datagrams,
            ),
        ];
        for (name, help, value) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for u in &s.upstreams {
                let addr = u.addr.to_string();
                let labels = [("upstream", addr.as_str())];
                ConstCounter::new(value(u)).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "upstream_healthy",
                "1 while the upstream is up, 0 while it is marked down",
                None,
                MetricType::Gauge,
            )?;
            for u in &s.upstreams {
                let addr = u.addr.to_string();
                let labels = [("upstream", addr.as_str())];
                ConstGauge::new(i64::from(u.healthy)).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "upstream_rtt_seconds",
                "Round-trip time of the upstream's answers",
                None,
                MetricType::Histogram,
            )?;
            for u in &s.upstreams {
                let addr = u.addr.to_string();
                let labels = [("upstream", addr.as_str())];
                let count = u.rtt_histogram.iter().map(|b| b.1).sum();
                family
                    .encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        u.rtt_sum.as_secs_f64(),
                        count,
                        &u.rtt_histogram,
                        None,
                    )?;
            }
        }
        Ok(())
    }
}
