//! The upstream pool: picks upstreams, bounds each query by one deadline, and retries,
//! hedges and re-drives so that an evicted or slow CoreDNS pod is invisible to the client.
//!
//! One query is a race of attempts:
//! - the first goes to the upstream the [`Selection`] policy picks among the healthy ones;
//! - another is launched at once when an attempt fails (port closed, TCP reset, SERVFAIL,
//!   REFUSED, malformed answer) or is re-driven (its upstream was found dead while the
//!   attempt waited; when it was the latest attempt, its successor is a retry, not a hedge,
//!   even while earlier attempts still listen), when the attempt's adaptive timeout passes
//!   (SRTT + 4·RTTVAR, clamped; doubled after each timeout of this query on an upstream
//!   that has answered nothing since, as a stub backs off: while it answers other queries,
//!   a lost attempt is a lost packet, such as a Service IP's DNAT to a dead endpoint, and is
//!   retried at once), or, as a *hedge*, after about the upstream's p95 RTT if the hedge
//!   budget allows (a small share of queries, so a slow upstream cannot double the load);
//! - earlier attempts keep listening: whichever valid answer comes first wins;
//! - the query ends with the first good answer, when attempts run out, or at the deadline.
//!
//! Each attempt is UDP first on a fresh connected socket (a retry to an upstream already
//! tried by this query binds it to a port that was answered moments ago, whose conntrack
//! entry behind a Service IP leads to a live endpoint); a truncated answer is asked
//! again over TCP of the same upstream, and a truncated TCP answer is a failure. Transport
//! failures mark an upstream down after a few in a row; a probe task (`. IN NS`, with
//! exponential backoff) brings it back. When every upstream is down they are asked anyway: an
//! upstream is often a Service IP, behind which a fresh socket may reach a live endpoint.

mod health;
mod tcp;
mod udp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until};

use crate::answer::Answer;
use crate::error::UpstreamError;
use crate::query::Key;
use crate::stats::UpstreamStats;

use health::Health;

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

/// How the pool behaves; see the builder for the defaults and their reasons.
#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    pub(crate) min_attempt_timeout: Duration,
    pub(crate) attempt_timeout: Duration,
    pub(crate) deadline: Duration,
    /// `None`: twice the number of upstreams at the time of the query, at least 6.
    pub(crate) max_attempts: Option<usize>,
    pub(crate) max_failures: u32,
    pub(crate) probe_interval: Duration,
    pub(crate) max_probe_interval: Duration,
    pub(crate) hedge_share: f64,
    pub(crate) selection: Selection,
    pub(crate) tcp_connections: usize,
    pub(crate) tcp_idle_timeout: Duration,
}

/// One upstream server: its health and its TCP connections.
struct Upstream {
    addr: SocketAddr,
    tcp: tcp::TcpPool,
    health: Health,
    /// Set when the upstream leaves the list: its probe stops.
    removed: AtomicBool,
}

/// A token bucket that lets a `share` of queries send a hedge. Tokens are kept in
/// thousandths; each query adds `share` × 1000, each hedge takes 1000.
struct HedgeBudget {
    milli_tokens: AtomicI64,
    per_query: i64,
}

/// Hedges that may be sent in a burst.
const HEDGE_BURST: i64 = 10;

impl HedgeBudget {
    fn new(share: f64) -> Self {
        Self {
            milli_tokens: AtomicI64::new(0),
            per_query: (share.clamp(0.0, 1.0) * 1000.0) as i64,
        }
    }

    fn deposit(&self) {
        if self.per_query == 0 {
            return;
        }
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + self.per_query).min(HEDGE_BURST * 1000))
            });
    }

    fn try_take(&self) -> bool {
        self.milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok()
    }
}

/// The upstream servers.
pub(crate) struct Pool {
    upstreams: RwLock<Arc<[Arc<Upstream>]>>,
    config: PoolConfig,
    round_robin: AtomicUsize,
    hedges: HedgeBudget,
}

impl Pool {
    pub(crate) fn new(addrs: &[SocketAddr], config: PoolConfig) -> Self {
        let pool = Self {
            upstreams: RwLock::new(Arc::from(Vec::new())),
            hedges: HedgeBudget::new(config.hedge_share),
            config,
            round_robin: AtomicUsize::new(0),
        };
        pool.set_upstreams(addrs);
        pool
    }

    fn upstreams(&self) -> Arc<[Arc<Upstream>]> {
        Arc::clone(&self.upstreams.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the upstream list. Upstreams that stay keep their state and connections;
    /// those that leave are drained: queries outstanding on them are re-driven at once and
    /// their probes stop (their TCP connections close once idle).
    pub(crate) fn set_upstreams(&self, addrs: &[SocketAddr]) {
        // Held from the read to the write, so two changes at once (a reload and the
        // discovery loop) cannot bring back an upstream the other marked removed.
        let mut current = self.upstreams.write().unwrap_or_else(|e| e.into_inner());
        let old = Arc::clone(&current);
        let mut next: Vec<Arc<Upstream>> = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            if next.iter().any(|u| u.addr == addr) {
                continue;
            }
            let kept = old.iter().find(|u| u.addr == addr).map(Arc::clone);
            next.push(kept.unwrap_or_else(|| {
                Arc::new(Upstream {
                    addr,
                    tcp: tcp::TcpPool::new(
                        addr,
                        self.config.tcp_connections,
                        self.config.tcp_idle_timeout,
                    ),
                    health: Health::default(),
                    removed: AtomicBool::new(false),
                })
            }));
        }
        *current = Arc::from(next.clone());
        drop(current);
        for gone in old
            .iter()
            .filter(|u| !next.iter().any(|n| n.addr == u.addr))
        {
            gone.removed.store(true, Ordering::Release);
            gone.health.redrive();
        }
    }

    /// The upstream addresses, in order.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.upstreams().iter().map(|u| u.addr).collect()
    }

    /// A snapshot of every upstream's state.
    pub(crate) fn stats(&self) -> Vec<UpstreamStats> {
        self.upstreams()
            .iter()
            .map(|u| {
                let c = &u.health.counters;
                UpstreamStats {
                    addr: u.addr,
                    healthy: !u.health.is_down(),
                    srtt: u.health.srtt(),
                    attempts: c.attempts.load(Ordering::Relaxed),
                    failures: c.failures.load(Ordering::Relaxed),
                    timeouts: c.timeouts.load(Ordering::Relaxed),
                    error_rcodes: c.error_rcodes.load(Ordering::Relaxed),
                    redrives: c.redrives.load(Ordering::Relaxed),
                    last_success: u.health.last_success().map(|t| t.into_std()),
                    rtt_histogram: c.rtt_histogram(),
                    rtt_sum: Duration::from_micros(c.rtt_sum_micros.load(Ordering::Relaxed)),
                }
            })
            .collect()
    }

    /// Picks an upstream that is healthy and not excluded, preferring ones not yet tried;
    /// a hedge goes only to one not yet tried.
    fn pick(
        &self,
        ups: &[Arc<Upstream>],
        excluded: &[bool],
        tried: &[bool],
        hedge: bool,
    ) -> Option<usize> {
        let usable = |i: usize| !excluded[i] && !ups[i].health.is_down();
        let mut candidates: Vec<usize> =
            (0..ups.len()).filter(|&i| usable(i) && !tried[i]).collect();
        if candidates.is_empty() && !hedge {
            candidates = (0..ups.len()).filter(|&i| usable(i)).collect();
        }
        // Every upstream down: ask them anyway (as CoreDNS's forward does). An upstream is
        // often a Service IP whose DNAT picks another endpoint for a fresh socket; a dead
        // one refuses at once, so this still fails fast.
        if candidates.is_empty() && !hedge && ups.iter().all(|u| u.health.is_down()) {
            candidates = (0..ups.len())
                .filter(|&i| !excluded[i] && !tried[i])
                .collect();
            if candidates.is_empty() {
                candidates = (0..ups.len()).filter(|&i| !excluded[i]).collect();
            }
        }
        if candidates.is_empty() {
            return None;
        }
        let n = candidates.len();
        Some(match self.config.selection {
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
                let now = Instant::now();
                let rtt = |i: usize| ups[i].health.selection_rtt(now);
                if rtt(b) < rtt(a) { b } else { a }
            }
        })
    }

    /// Asks the upstreams for `key` until one gives an answer (NOERROR or NXDOMAIN).
    pub(crate) async fn query(&self, key: &Arc<[u8]>) -> Result<Answer, UpstreamError> {
        let ups = self.upstreams();
        let n = ups.len();
        let max_attempts = self.config.max_attempts.unwrap_or((2 * n).max(6));
        let config = &self.config;
        let deadline = Instant::now() + config.deadline;
        self.hedges.deposit();
        // A down upstream whose probe task was lost (it ran on a runtime that has ended,
        // such as a short-lived one that asked a query) gets a new one here.
        for upstream in ups.iter() {
            if upstream.health.claim_lost_probe() {
                spawn_probe(upstream, config, &ups);
            }
        }
        // Upstreams that answered with a failure code: asking them again gives the same.
        let mut gave_up = vec![false; n];
        let mut tried = vec![false; n];
        // Attempts report here; `outstanding` counts those that have not yet.
        let (results, mut attempts) = mpsc::unbounded_channel();
        let mut outstanding = 0usize;
        let mut launched = 0usize;
        let mut next_launch = Instant::now();
        let mut timeout_at = next_launch;
        let mut last_error = None;
        // Timeouts of this query on a silent upstream: each doubles the next one's timeout.
        let mut backoff = 0u32;
        // The latest attempt failed before its timeout: the next one replaces it (a retry,
        // not a hedge), even if older attempts still listen for late answers.
        let mut latest_failed = false;
        let mut last_launch: Option<(usize, Instant)> = None;
        // At the deadline: a timeout, named after the last upstream in the list that was tried.
        let timed_out = |tried: &[bool]| {
            UpstreamError::Timeout(ups[tried.iter().rposition(|&t| t).unwrap_or(0)].addr)
        };

        loop {
            let now = Instant::now();
            if now >= deadline {
                // Checked here too, not only in the select below: every path of this loop
                // must end or wait, whatever the clock says.
                last_error = Some(timed_out(&tried));
                break;
            }
            let may_launch = launched < max_attempts;
            if may_launch && (outstanding == 0 || now >= next_launch) {
                // Before the running attempt's timeout, a new one is a hedge: it needs another
                // upstream and budget.
                let hedge = outstanding > 0 && now < timeout_at;
                let Some(i) = self.pick(&ups, &gave_up, &tried, hedge) else {
                    if outstanding == 0 {
                        break;
                    }
                    next_launch = if hedge { timeout_at } else { deadline };
                    continue;
                };
                if hedge && !self.hedges.try_take() {
                    next_launch = timeout_at;
                    continue;
                }
                if outstanding > 0 && !hedge && !latest_failed {
                    // The last attempt timed out. Back off unless its upstream has answered
                    // other queries since it was sent (then that one packet was lost).
                    let answered_since = last_launch.is_some_and(|(j, at)| {
                        ups[j].health.last_success().is_some_and(|t| t > at)
                    });
                    if !answered_since {
                        backoff += 1;
                    }
                }
                let upstream = Arc::clone(&ups[i]);
                let limit = upstream
                    .health
                    .attempt_timeout(config.min_attempt_timeout, config.attempt_timeout)
                    .saturating_mul(1 << backoff.min(4))
                    .min(config.attempt_timeout);
                last_launch = Some((i, now));
                let hedge_after = upstream
                    .health
                    .hedge_delay()
                    .filter(|_| self.hedges.per_query > 0);
                timeout_at = now + limit;
                next_launch = hedge_after.map_or(timeout_at, |h| (now + h).min(timeout_at));
                let report = results.clone();
                tokio::spawn(attempt(
                    upstream,
                    Arc::clone(key),
                    Target {
                        index: i,
                        retry: tried[i],
                        seq: launched,
                        hedge,
                    },
                    limit,
                    config.clone(),
                    Arc::clone(&ups),
                    report,
                ));
                outstanding += 1;
                tried[i] = true;
                launched += 1;
                latest_failed = false;
                continue;
            }
            if outstanding == 0 {
                break;
            }
            tokio::select! {
                done = attempts.recv() => {
                    let Some((target, result)) = done else { break };
                    let i = target.index;
                    outstanding -= 1;
                    match result {
                        Ok(answer) if answer.is_answer() => return Ok(answer),
                        Ok(answer) => {
                            gave_up[i] = true;
                            last_error = Some(UpstreamError::Rcode {
                                addr: ups[i].addr,
                                rcode: answer.rcode,
                            });
                        }
                        Err(err) => {
                            if matches!(err, UpstreamError::TruncatedOverTcp(_)) {
                                gave_up[i] = true;
                            }
                            last_error = Some(err);
                        }
                    }
                    // A failed attempt frees its slot: the next one goes now, and if it was
                    // the latest and not a hedge, as a retry rather than a hedge (a failed
                    // hedge must not turn the budget's extra attempt into two).
                    next_launch = Instant::now();
                    if target.seq + 1 == launched && !target.hedge {
                        timeout_at = next_launch;
                        latest_failed = true;
                    }
                    if let Some(err) = &last_error {
                        tracing::debug!(%err, "upstream attempt failed");
                    }
                }
                () = sleep_until(next_launch), if may_launch => {}
                () = sleep_until(deadline) => {
                    last_error = Some(timed_out(&tried));
                    break;
                }
            }
        }
        Err(last_error.unwrap_or(UpstreamError::AllDown))
    }
}

/// Which upstream of the query's list an attempt asks, whether the query asked it before,
/// which of the query's attempts it is (0 for the first), and whether it is a hedge.
#[derive(Clone, Copy, Debug)]
struct Target {
    index: usize,
    retry: bool,
    seq: usize,
    hedge: bool,
}

/// One attempt at one upstream, reporting to `report`, with its accounting: RTT on an
/// answer; a failure on a transport error, and a failure plus a raised SRTT (selection then
/// avoids it) when `slow_after`, the adaptive timeout, passes unanswered; a stop when the
/// upstream is re-driven. A retry (the query asked this upstream before) goes from a
/// recently answered port.
///
/// A timeout never marks the last upstream that is up as down (`others_up`): an upstream
/// slowed by load answers late but answers, and a late answer marks it up again. An attempt
/// outlives its query, up to the attempt timeout's ceiling, so that a late answer is seen.
async fn attempt(
    upstream: Arc<Upstream>,
    key: Arc<[u8]>,
    target: Target,
    slow_after: Duration,
    config: PoolConfig,
    peers: Arc<[Arc<Upstream>]>,
    report: mpsc::UnboundedSender<(Target, Result<Answer, UpstreamError>)>,
) {
    let health = &upstream.health;
    health.counters.attempts.fetch_add(1, Ordering::Relaxed);
    let mut deaths = health.deaths();
    deaths.borrow_and_update();
    let started = Instant::now();
    let exchange = exchange(&upstream, Key(&key), target.retry);
    tokio::pin!(exchange);
    let ceiling = sleep(config.attempt_timeout);
    tokio::pin!(ceiling);
    let slow = sleep(slow_after);
    tokio::pin!(slow);
    let (mut timed_out, mut slowed) = (false, false);
    let result = loop {
        tokio::select! {
            result = &mut exchange => {
                match &result {
                    Ok(answer) => {
                        if !answer.is_answer() {
                            health.counters.error_rcodes.fetch_add(1, Ordering::Relaxed);
                        }
                        health.record_answer(started.elapsed(), Instant::now());
                    }
                    Err(err) if err.is_transport() => {
                        // A closed port or a reset: whatever else waits on it waits in vain.
                        health.redrive();
                        failed(&upstream, &config, &peers, true);
                    }
                    Err(_) => {}
                }
                break result;
            }
            () = &mut slow, if !slowed => {
                slowed = true;
                health.record_slow(slow_after, Instant::now());
                health.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                failed(&upstream, &config, &peers, false);
            }
            () = &mut ceiling, if !timed_out => {
                timed_out = true;
                if report.is_closed() {
                    return;
                }
            }
            Ok(()) = deaths.changed() => break Err(UpstreamError::Redriven(upstream.addr)),
            // The query has ended; wait no longer than the ceiling for the accounting.
            () = report.closed(), if timed_out => return,
        }
    };
    let _ = report.send((target, result));
}

/// Records a transport failure (`hard`: a closed port or a reset; else a timeout) and makes
/// sure a probe task watches the upstream: it asks `. IN NS` until the upstream answers,
/// counting each unanswered probe as a failure, so that a silent upstream that selection
/// now avoids (and that gets no queries to fail) is still marked down, and one that is down
/// is brought back. A timeout never marks down the last upstream that is up.
fn failed(upstream: &Arc<Upstream>, config: &PoolConfig, peers: &Arc<[Arc<Upstream>]>, hard: bool) {
    let may_go_down = hard || others_up(peers, upstream);
    if upstream
        .health
        .record_failure(config.max_failures, may_go_down)
    {
        tracing::warn!(addr = %upstream.addr, "upstream marked down");
    }
    if upstream.health.start_probing() {
        spawn_probe(upstream, config, peers);
    }
}

/// Starts the probe task of `upstream` (claimed by the caller) on the current runtime.
fn spawn_probe(upstream: &Arc<Upstream>, config: &PoolConfig, peers: &Arc<[Arc<Upstream>]>) {
    tokio::spawn(probe(
        Arc::clone(upstream),
        config.clone(),
        Arc::clone(peers),
    ));
}

/// Whether an upstream other than `this` is up.
fn others_up(peers: &[Arc<Upstream>], this: &Arc<Upstream>) -> bool {
    peers
        .iter()
        .any(|u| !Arc::ptr_eq(u, this) && !u.health.is_down())
}

/// Asks `. IN NS` (as CoreDNS's health check does) every probe interval, doubling while the
/// upstream is down, until it answers anything.
async fn probe(upstream: Arc<Upstream>, config: PoolConfig, peers: Arc<[Arc<Upstream>]>) {
    // The key for ". IN NS" without DO or CD: root name, type 2, class 1, flags 0.
    const ROOT_NS: [u8; 6] = [0, 0, 2, 0, 1, 0];
    // However the task ends, also dropped unfinished with its runtime, the next failure or
    // query may start another.
    let _ends = ProbeEnds(&upstream.health);
    let mut interval = config.probe_interval;
    loop {
        sleep(interval).await;
        if upstream.removed.load(Ordering::Acquire) {
            break;
        }
        let started = Instant::now();
        let reply = tokio::time::timeout(
            config.attempt_timeout,
            udp::exchange(upstream.addr, Key(&ROOT_NS), &[]),
        )
        .await;
        if let Ok(Ok(_)) = reply {
            if upstream
                .health
                .record_answer(started.elapsed(), Instant::now())
            {
                tracing::info!(addr = %upstream.addr, "upstream is back up");
            }
            break;
        }
        if upstream.health.is_down() {
            interval = (interval * 2).min(config.max_probe_interval);
        } else if upstream
            .health
            .record_failure(config.max_failures, others_up(&peers, &upstream))
        {
            tracing::warn!(addr = %upstream.addr, "upstream marked down by its probes");
        }
    }
}

/// Releases an upstream's probe claim when its probe task ends.
struct ProbeEnds<'a>(&'a Health);

impl Drop for ProbeEnds<'_> {
    fn drop(&mut self) {
        self.0.probe_ended();
    }
}

/// UDP, then TCP if the UDP answer was truncated or too large to hold. A `retry` binds its
/// UDP socket to a port that was answered recently, if one is free.
async fn exchange(upstream: &Upstream, key: Key<'_>, retry: bool) -> Result<Answer, UpstreamError> {
    let good_ports = &upstream.health.good_ports;
    let ports = if retry {
        good_ports.recent(Instant::now())
    } else {
        Vec::new()
    };
    let (reply, port) = udp::exchange(upstream.addr, key, &ports).await?;
    good_ports.record(port, Instant::now());
    match reply {
        udp::Reply::Answer(answer) if !answer.truncated() => Ok(answer),
        udp::Reply::Answer(_) | udp::Reply::TooLarge => match upstream.tcp.exchange(key).await {
            Ok(answer) if answer.truncated() => Err(UpstreamError::TruncatedOverTcp(upstream.addr)),
            other => other,
        },
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
    }
}
