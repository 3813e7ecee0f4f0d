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
use dnscore::message::{self, rcode, rtype};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Query types with their own label value (named by `dnscore::message::type_name`); the
/// rest count as "other".
const QTYPES: [u16; 11] = [
    rtype::A,
    rtype::AAAA,
    rtype::CNAME,
    rtype::SRV,
    rtype::PTR,
    rtype::TXT,
    rtype::MX,
    rtype::NS,
    rtype::SOA,
    rtype::HTTPS,
    rtype::ANY,
];
const OTHER_QTYPE: usize = QTYPES.len();
/// Response codes 0 to 5 (NOERROR to REFUSED) have their own label value; the rest count as
/// "other".
const RCODES: [u16; 6] = [
    rcode::NOERROR,
    rcode::FORMERR,
    rcode::SERVFAIL,
    rcode::NXDOMAIN,
    rcode::NOTIMP,
    rcode::REFUSED,
];
const OTHER_RCODE: usize = RCODES.len();

/// The label value of query type cell `t`.
fn qtype_label(t: usize) -> &'static str {
    QTYPES
        .get(t)
        .and_then(|&code| message::type_name(code))
        .unwrap_or("other")
}

/// The label value of response code cell `r`.
fn rcode_label(r: usize) -> &'static str {
    RCODES
        .get(r)
        .and_then(|&code| message::rcode_name(code))
        .unwrap_or("other")
}
const PROTOCOLS: [&str; 2] = ["udp", "tcp"];
const CELLS: usize = PROTOCOLS.len() * (QTYPES.len() + 1) * (RCODES.len() + 1);

/// The counter of protocol `p`, query type `t` and response code `r` (indices).
#[inline]
const fn cell(p: usize, t: usize, r: usize) -> usize {
    (p * (QTYPES.len() + 1) + t) * (RCODES.len() + 1) + r
}

/// The protocol a query came over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// UDP.
    Udp = 0,
    /// TCP.
    Tcp = 1,
}

/// Upper bounds of the client request duration buckets, in seconds: CoreDNS's
/// (`coredns_dns_request_duration_seconds`), so that the same quantile queries work.
const DURATION_BUCKETS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192,
];

/// Query counters by protocol, type and response code, and client request durations; one
/// per worker.
#[derive(Debug)]
pub struct QueryCounters {
    cells: [AtomicU64; CELLS],
    /// Queries per duration bucket (not cumulative; the last is +Inf).
    durations: [AtomicU64; DURATION_BUCKETS.len() + 1],
    duration_sum_nanos: AtomicU64,
}

impl QueryCounters {
    fn new() -> Self {
        Self {
            cells: std::array::from_fn(|_| AtomicU64::new(0)),
            durations: std::array::from_fn(|_| AtomicU64::new(0)),
            duration_sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records that `queries` queries took `took` each, from their arrival to their answer
    /// (the UDP hits of a batch share the batch's time).
    #[inline]
    pub fn observe(&self, took: std::time::Duration, queries: u64) {
        let secs = took.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.durations[bucket].fetch_add(queries, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.duration_sum_nanos
            .fetch_add(nanos.saturating_mul(queries), Ordering::Relaxed);
    }

    /// Counts one answered query of type `qtype` (when it could be read).
    #[inline]
    pub fn count(&self, protocol: Protocol, qtype: Option<u16>, response: &[u8]) {
        let qtype = qtype
            .and_then(|t| QTYPES.iter().position(|&code| code == t))
            .unwrap_or(OTHER_QTYPE);
        let rcode = message::response_code(response)
            .map_or(OTHER_RCODE, |r| usize::from(r).min(OTHER_RCODE));
        self.cells[cell(protocol as usize, qtype, rcode)].fetch_add(1, Ordering::Relaxed);
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
    /// The `server` label of the CoreDNS families: `dns://` and the listen address.
    pub server: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            query_counters: Mutex::new(Vec::new()),
            tcp_connections: AtomicI64::new(0),
            refused_clients: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            server: "dns://:53".to_string(),
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
    /// Fresh metrics of the server listening on `listen` (CoreDNS's `server` label).
    pub fn for_server(listen: std::net::SocketAddr) -> Self {
        Self {
            server: format!("dns://{listen}"),
            ..Self::default()
        }
    }

    /// A new counter set for one worker.
    pub fn worker(&self) -> Arc<QueryCounters> {
        let counters = Arc::new(QueryCounters::new());
        self.query_counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&counters));
        counters
    }

    /// The workers' counters summed: query cells, duration buckets, duration sum (ns).
    fn query_totals(&self) -> (Vec<u64>, Vec<u64>, u64) {
        let mut totals = vec![0u64; CELLS];
        let mut durations = vec![0u64; DURATION_BUCKETS.len() + 1];
        let mut sum = 0u64;
        for counters in self
            .query_counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            for (t, c) in totals.iter_mut().zip(counters.cells.iter()) {
                *t += c.load(Ordering::Relaxed);
            }
            for (t, c) in durations.iter_mut().zip(counters.durations.iter()) {
                *t += c.load(Ordering::Relaxed);
            }
            sum = sum.saturating_add(counters.duration_sum_nanos.load(Ordering::Relaxed));
        }
        (totals, durations, sum)
    }
}

/// Renders all metrics in the Prometheus text format.
pub fn render(metrics: &Arc<Metrics>, resolver: &Resolver) -> String {
    let mut registry = Registry::default();
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

/// A counter or gauge family with one series per label set.
fn family<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (Vec<(&'a str, String)>, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let series = family.encode_family(&labels)?;
        match kind {
            MetricType::Gauge => ConstGauge::new(value as i64).encode(series)?,
            _ => ConstCounter::new(value).encode(series)?,
        }
    }
    Ok(())
}

/// A histogram family: per label set, (upper bound, count in that bucket, not cumulative)
/// with +Inf last, and the sum.
fn histogram<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Vec<(&'a str, String)>, Vec<(f64, u64)>, f64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, buckets, sum) in series {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let count = buckets.iter().map(|b| b.1).sum();
        family
            .encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, count, &buckets, None,
            )?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let stats = self.resolver.stats();
        let totals = self.metrics.query_totals();
        self.encode_coredns(&mut encoder, &stats, &totals)?;
        encode_queries(&mut encoder, &totals.0)?;
        self.encode_server(&mut encoder)?;
        encode_resolver(&mut encoder, &stats)?;
        encode_upstreams(&mut encoder, &stats)
    }
}

/// CoreDNS's response code names, by code (`RCODE12` for one without a name).
pub(crate) fn rcode_name(code: usize) -> String {
    u16::try_from(code)
        .ok()
        .and_then(message::rcode_name)
        .map_or_else(|| format!("RCODE{code}"), str::to_string)
}

impl Snapshot {
    /// The families CoreDNS's `prometheus`, `cache` and `forward` plugins export, with
    /// their names, types and labels, so that CoreDNS dashboards and alerts work unchanged.
    /// `server` is `dns://LISTEN`, `zone` and `zones` are `.` (one server block for the root),
    /// `view` is empty. Labels CoreDNS has but dnscore does not track are left out rather
    /// than made up (`family` of requests, `type` of cache entries and hits, `rcode` of the
    /// forward duration): queries that sum over them work the same.
    fn encode_coredns(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        s: &dnscore::Stats,
        (totals, durations, duration_sum): &(Vec<u64>, Vec<u64>, u64),
    ) -> std::fmt::Result {
        let server = self.metrics.server.clone();
        let base = || {
            vec![
                ("server", server.clone()),
                ("zone", ".".to_string()),
                ("view", String::new()),
            ]
        };
        let cache_labels = || {
            vec![
                ("server", server.clone()),
                ("zones", ".".to_string()),
                ("view", String::new()),
            ]
        };
        let mut by_type: Vec<(Vec<(&str, String)>, u64)> = Vec::new();
        let mut by_rcode = [0u64; RCODES.len() + 1];
        for (p, proto) in PROTOCOLS.iter().enumerate() {
            for t in 0..=QTYPES.len() {
                let qtype = qtype_label(t);
                let mut sum = 0;
                for (r, count) in by_rcode.iter_mut().enumerate() {
                    let cell = totals[cell(p, t, r)];
                    sum += cell;
                    *count += cell;
                }
                if sum > 0 {
                    let mut labels = base();
                    labels.push(("proto", (*proto).to_string()));
                    labels.push(("type", qtype.to_string()));
                    by_type.push((labels, sum));
                }
            }
        }
        family(
            encoder,
            "coredns_dns_requests",
            "Client queries answered, by protocol and query type",
            MetricType::Counter,
            by_type,
        )?;
        family(
            encoder,
            "coredns_dns_responses",
            "Responses sent to clients, by response code",
            MetricType::Counter,
            by_rcode
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(r, &n)| {
                    let mut labels = base();
                    let rcode = rcode_label(r).to_string();
                    labels.push(("rcode", rcode));
                    labels.push(("plugin", String::new()));
                    (labels, n)
                }),
        )?;
        let mut buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .copied()
            .zip(durations.iter().copied())
            .collect();
        buckets.push((f64::INFINITY, durations[DURATION_BUCKETS.len()]));
        histogram(
            encoder,
            "coredns_dns_request_duration_seconds",
            "Time from a client query's arrival to its answer (cache hits of a UDP batch share the batch's time)",
            [(base(), buckets, *duration_sum as f64 / 1e9)],
        )?;
        family(
            encoder,
            "coredns_cache_entries",
            "Answers in the cache (positive and negative)",
            MetricType::Gauge,
            [(cache_labels(), s.cache_entries as u64)],
        )?;
        let cache_counters = [
            (
                "coredns_cache_hits",
                "Client queries answered from a fresh cache entry",
                s.cache_hits,
            ),
            (
                "coredns_cache_misses",
                "Client queries the cache had no fresh entry for",
                s.cache_misses,
            ),
            (
                "coredns_cache_served_stale",
                "Answers served stale (RFC 8767) while the upstreams failed or were slow",
                s.stale_answers,
            ),
            (
                "coredns_cache_prefetch",
                "Background refreshes of entries asked for in the last tenth of their TTL",
                s.prefetches,
            ),
        ];
        for (name, help, value) in cache_counters {
            family(
                encoder,
                name,
                help,
                MetricType::Counter,
                [(cache_labels(), value)],
            )?;
        }
        let to = |u: &dnscore::UpstreamStats| vec![("to", u.addr.to_string())];
        family(
            encoder,
            "coredns_forward_requests",
            "Attempts sent to each upstream (a UDP attempt and its TCP follow-up count once)",
            MetricType::Counter,
            s.upstreams.iter().map(|u| (to(u), u.attempts)),
        )?;
        family(
            encoder,
            "coredns_forward_responses",
            "Answers received from each upstream, by response code",
            MetricType::Counter,
            s.upstreams.iter().flat_map(|u| {
                u.responses_by_rcode
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(move |(r, &n)| {
                        let mut labels = to(u);
                        labels.push(("rcode", rcode_name(r)));
                        (labels, n)
                    })
            }),
        )?;
        histogram(
            encoder,
            "coredns_forward_request_duration_seconds",
            "Round-trip time of each upstream's answers",
            s.upstreams
                .iter()
                .map(|u| (to(u), u.rtt_histogram.clone(), u.rtt_sum.as_secs_f64())),
        )?;
        family(
            encoder,
            "coredns_forward_healthcheck_failures",
            "Health probes (. IN NS, sent while an upstream fails) unanswered within the attempt timeout",
            MetricType::Counter,
            s.upstreams.iter().map(|u| (to(u), u.probe_failures)),
        )
    }

    /// The server's own gauges and drop counters.
    fn encode_server(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let m = &self.metrics;
        gauge(
            encoder,
            "dnscore_tcp_connections",
            "Open client TCP connections",
            m.tcp_connections.load(Ordering::Relaxed),
        )?;
        gauge(
            encoder,
            "dnscore_in_flight",
            "Client queries waiting for an upstream",
            m.in_flight.load(Ordering::Relaxed),
        )?;
        counter(
            encoder,
            "dnscore_refused_clients",
            "Packets dropped from clients not allowed",
            m.refused_clients.load(Ordering::Relaxed),
        )?;
        counter(
            encoder,
            "dnscore_rate_limited",
            "Packets dropped from clients over their rate limit",
            m.rate_limited.load(Ordering::Relaxed),
        )
    }
}

/// `dnscore_queries_total`: client queries by protocol, type and response code.
fn encode_queries(encoder: &mut DescriptorEncoder<'_>, totals: &[u64]) -> std::fmt::Result {
    let mut series = Vec::new();
    for (p, proto) in PROTOCOLS.iter().enumerate() {
        for t in 0..=QTYPES.len() {
            let qtype = qtype_label(t);
            for r in 0..=RCODES.len() {
                let cell = cell(p, t, r);
                if totals[cell] > 0 {
                    let rcode = rcode_label(r);
                    let labels = vec![
                        ("proto", (*proto).to_string()),
                        ("type", qtype.to_string()),
                        ("rcode", rcode.to_string()),
                    ];
                    series.push((labels, totals[cell]));
                }
            }
        }
    }
    family(
        encoder,
        "dnscore_queries",
        "Client queries answered, by protocol, query type and response code",
        MetricType::Counter,
        series,
    )
}

/// The resolver's own counters that CoreDNS has no family for (and the cache's, kept under
/// their dnscore names too).
fn encode_resolver(encoder: &mut DescriptorEncoder<'_>, s: &dnscore::Stats) -> std::fmt::Result {
    let counters = [
        (
            "dnscore_cache_hits",
            "Client queries answered from a fresh cache entry",
            s.cache_hits,
        ),
        (
            "dnscore_cache_misses",
            "Client queries the cache had no fresh entry for (some then joined a query in flight, or were refused as overload)",
            s.cache_misses,
        ),
        (
            "dnscore_cache_stale_answers",
            "Answers served stale (RFC 8767)",
            s.stale_answers,
        ),
        (
            "dnscore_cache_prefetches",
            "Background refreshes near the end of a TTL",
            s.prefetches,
        ),
        (
            "dnscore_dedup_joins",
            "Client queries that joined an identical upstream query in flight",
            s.dedup_joins,
        ),
        (
            "dnscore_overloaded",
            "Client queries refused at once because too much was in flight",
            s.overloaded,
        ),
        (
            "dnscore_failures",
            "Client queries answered SERVFAIL because no upstream answered",
            s.failures,
        ),
        (
            "dnscore_upstream_retries_refused",
            "Speculative upstream sends (hedges, re-sends after a timeout) the retry budget refused",
            s.retries_refused,
        ),
    ];
    for (name, help, value) in counters {
        counter(encoder, name, help, value)?;
    }
    gauge(
        encoder,
        "dnscore_cache_entries",
        "Entries in the cache",
        s.cache_entries as i64,
    )?;
    gauge(
        encoder,
        "dnscore_upstream_queries_in_flight",
        "Distinct upstream queries in flight",
        s.in_flight as i64,
    )
}

/// Per upstream: dnscore's counters, health and RTT histogram.
fn encode_upstreams(encoder: &mut DescriptorEncoder<'_>, s: &dnscore::Stats) -> std::fmt::Result {
    let families: [(&str, &str, UpstreamCounter); 7] = [
        (
            "dnscore_upstream_attempts",
            "Attempts sent to the upstream (UDP, with any TCP follow-up, counts once)",
            |u| u.attempts,
        ),
        (
            "dnscore_upstream_failures",
            "Transport failures of the upstream: refused port, reset, attempts past their timeout",
            |u| u.failures,
        ),
        (
            "dnscore_upstream_timeouts",
            "Attempts unanswered when their adaptive timeout passed (a late answer may still come)",
            |u| u.timeouts,
        ),
        (
            "dnscore_upstream_error_rcodes",
            "Answers with a failure code (SERVFAIL, REFUSED, ...)",
            |u| u.error_rcodes,
        ),
        (
            "dnscore_upstream_redrives",
            "Times its outstanding queries were re-driven",
            |u| u.redrives,
        ),
        (
            "dnscore_upstream_sockets_opened",
            "UDP sockets opened to the upstream (a conntrack entry each)",
            |u| u.sockets_opened,
        ),
        (
            "dnscore_upstream_suspicious_datagrams",
            "Datagrams from the upstream that answered nothing outstanding (forged, late, mismatched)",
            |u| u.suspicious_datagrams,
        ),
    ];
    let upstream = |u: &dnscore::UpstreamStats| vec![("upstream", u.addr.to_string())];
    for (name, help, value) in families {
        family(
            encoder,
            name,
            help,
            MetricType::Counter,
            s.upstreams.iter().map(|u| (upstream(u), value(u))),
        )?;
    }
    family(
        encoder,
        "dnscore_upstream_healthy",
        "1 while the upstream is up, 0 while it is marked down",
        MetricType::Gauge,
        s.upstreams
            .iter()
            .map(|u| (upstream(u), u64::from(u.healthy))),
    )?;
    histogram(
        encoder,
        "dnscore_upstream_rtt_seconds",
        "Round-trip time of the upstream's answers",
        s.upstreams.iter().map(|u| {
            (
                upstream(u),
                u.rtt_histogram.clone(),
                u.rtt_sum.as_secs_f64(),
            )
        }),
    )
}
