//! The upstream pool: picks upstreams, bounds each query by one deadline, and retries,
//! hedges and re-drives so that an evicted or slow CoreDNS pod is invisible to the client,
//! without ever multiplying the load on one that is overloaded.
//!
//! One query is a race of attempts, decided by the state machine in `race` (its rules are
//! documented there): failures are replaced at once, timeouts and hedges are speculative
//! and paid from a pool-wide retry budget (`budget`), at most two sends go to one upstream,
//! earlier attempts keep listening, and one deadline ends it. This module runs the race:
//! it runs each attempt, feeds the race what happens, and sleeps when the race says so.
//!
//! Each attempt is UDP first, on one of the upstream's few sticky sockets (`udp`; a retry
//! goes on a socket answered since the latest loss, or a new one); a truncated answer, or
//! one whose socket saw a burst of forged datagrams, is asked again over TCP of the same
//! upstream (`tcp`), and a truncated TCP answer is a failure. Transport failures mark an
//! upstream down after a few in a row, which re-drives what is outstanding on it; a probe
//! (`probe`) brings it back.
//! `select` holds the selection policies; `health` what is known of each upstream.

mod budget;
mod health;
mod probe;
mod race;
mod select;
mod tcp;
mod udp;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use crate::answer::Answer;
use crate::error::UpstreamError;
use crate::query::Key;
use crate::stats::UpstreamStats;
use crate::wire::rcode;

use budget::{HedgeBudget, RetryBudget};
use health::Health;
use race::{Budgets, Event, Launch, Race, Step};
pub use select::Selection;
use select::Selector;
use udp::{Delivery, Reply};

#[cfg(feature = "fuzzing")]
pub(crate) use udp::{Matched, Reply as UdpReply, State as SocketState};

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
    pub(crate) retry_budget: f64,
    pub(crate) selection: Selection,
    pub(crate) upstream_sockets: usize,
    pub(crate) case_randomization: bool,
    pub(crate) tcp_connections: usize,
    pub(crate) tcp_idle_timeout: Duration,
}

/// One upstream server: its health, its UDP sockets and its TCP connections.
pub(crate) struct Upstream {
    addr: SocketAddr,
    udp: udp::Sockets,
    tcp: tcp::TcpPool,
    health: Health,
    /// Set when the upstream leaves the list: its probe stops.
    removed: AtomicBool,
}

/// The upstream servers.
pub(crate) struct Pool {
    upstreams: RwLock<Arc<[Arc<Upstream>]>>,
    config: PoolConfig,
    selector: Selector,
    retries: RetryBudget,
    hedges: HedgeBudget,
}

impl Pool {
    pub(crate) fn new(addrs: &[SocketAddr], config: PoolConfig) -> Self {
        let pool = Self {
            upstreams: RwLock::new(Arc::from(Vec::new())),
            selector: Selector::new(config.selection),
            retries: RetryBudget::new(config.retry_budget, Instant::now()),
            hedges: HedgeBudget::new(config.hedge_share),
            config,
        };
        pool.set_upstreams(addrs);
        pool
    }

    fn upstreams(&self) -> Arc<[Arc<Upstream>]> {
        Arc::clone(&self.upstreams.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the upstream list. Upstreams that stay keep their state and connections;
    /// those that leave are drained: queries outstanding on them are re-driven at once and
    /// their probes stop (their sockets and TCP connections close once idle).
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
                    udp: udp::Sockets::new(addr, self.config.upstream_sockets),
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
            gone.udp.retire_all();
            gone.health.redrive();
        }
    }

    /// The upstream addresses, in order.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.upstreams().iter().map(|u| u.addr).collect()
    }

    /// Speculative sends (hedges, re-sends after a timeout) the retry budget refused.
    pub(crate) fn retries_refused(&self) -> u64 {
        self.retries.refused()
    }

    /// A snapshot of every upstream's state.
    pub(crate) fn stats(&self) -> Vec<UpstreamStats> {
        self.upstreams()
            .iter()
            .map(|u| {
                let c = &u.health.counters;
                let rcodes: [u64; 16] =
                    std::array::from_fn(|r| c.rcodes[r].load(Ordering::Relaxed));
                UpstreamStats {
                    addr: u.addr,
                    healthy: !u.health.is_down(),
                    srtt: u.health.srtt(),
                    attempts: c.attempts.load(Ordering::Relaxed),
                    failures: c.failures.load(Ordering::Relaxed),
                    timeouts: c.timeouts.load(Ordering::Relaxed),
                    error_rcodes: rcodes
                        .iter()
                        .enumerate()
                        .filter(|&(r, _)| !matches!(r as u16, rcode::NOERROR | rcode::NXDOMAIN))
                        .map(|(_, n)| n)
                        .sum(),
                    responses_by_rcode: rcodes,
                    probe_failures: c.probe_failures.load(Ordering::Relaxed),
                    redrives: c.redrives.load(Ordering::Relaxed),
                    sockets_opened: u64::from(u.udp.opened.load(Ordering::Relaxed)),
                    suspicious_datagrams: u64::from(u.udp.suspicious.load(Ordering::Relaxed)),
                    last_success: u.health.last_success().map(|t| t.into_std()),
                    rtt_histogram: c.rtt_histogram(),
                    rtt_sum: Duration::from_micros(c.rtt_sum_micros.load(Ordering::Relaxed)),
                }
            })
            .collect()
    }

    /// Asks the upstreams for `key` until one gives an answer (NOERROR or NXDOMAIN), and
    /// says which did: runs the query's [`Race`] and the attempts it launches.
    pub(crate) async fn query(
        &self,
        key: &Arc<[u8]>,
    ) -> Result<(Answer, SocketAddr), UpstreamError> {
        let ups = self.upstreams();
        let config = &self.config;
        let max_attempts = config.max_attempts.unwrap_or((2 * ups.len()).max(6));
        let start = Instant::now();
        self.hedges.deposit();
        self.retries.deposit(start);
        // A down upstream whose probe task was lost (it ran on a runtime that has ended,
        // such as a short-lived one that asked a query) gets a new one here.
        for upstream in ups.iter() {
            if upstream.health.claim_lost_probe() {
                probe::spawn_probe(upstream, config, &ups);
            }
        }
        let budgets = Budgets {
            retry: &self.retries,
            hedge: &self.hedges,
        };
        let view = View {
            ups: &ups,
            config,
            selector: &self.selector,
        };
        let mut race = Race::new(
            ups.len(),
            max_attempts,
            start + config.deadline,
            config.attempt_timeout,
        );
        // Attempts report here; closed when the race ends (decided, or dropped undecided).
        let reports = Closing(Arc::new(Reports::default()));
        // The attempts run inside this task while the race does (most queries need one, and
        // a task of its own for it would cost a spawn and a wake-up per miss); those still
        // running when it is decided get tasks of their own, to see their late answers.
        let mut running = Attempts {
            attempts: smallvec::SmallVec::new(),
            reports: Arc::clone(&reports.0),
        };
        // Read again after each wait only: a launch takes microseconds.
        let mut now = start;
        loop {
            match race.step(now, &view, &budgets) {
                Step::Launch(launch) => running.attempts.push(Box::pin(attempt(
                    Arc::clone(&ups[launch.upstream]),
                    Arc::clone(key),
                    launch,
                    config.clone(),
                    Arc::clone(&ups),
                    Arc::clone(&reports.0),
                ))),
                Step::Wait(until) => {
                    // Biased: the attempts first, and no random draw per wait.
                    tokio::select! {
                        biased;
                        () = &mut running => {}
                        () = sleep_until(until) => {}
                    }
                    for (seq, event) in reports.0.take() {
                        race.on_event(seq, event, &view);
                    }
                    now = Instant::now();
                }
                Step::Done(result) => {
                    reports.0.close();
                    for attempt in running.attempts.drain(..) {
                        tokio::spawn(attempt);
                    }
                    return result;
                }
            }
        }
    }
}

/// The attempts of one query that run inside its task (inline up to two: most queries have
/// one). As a future it polls each of them, and is ready when one has reported: the race
/// decides when the query is done.
struct Attempts {
    attempts: smallvec::SmallVec<[Pin<Box<dyn Future<Output = ()> + Send>>; 2]>,
    reports: Arc<Reports>,
}

impl Future for Attempts {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.attempts
            .retain_mut(|attempt| attempt.as_mut().poll(cx).is_pending());
        if self.reports.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// What a query's attempts report to its race, by launch number. An attempt reports only
/// while [`Attempts`] polls it, inside the query's task, so the race needs no wake-up: it
/// reads the reports each time that future is ready (a tokio channel per query cost a
/// miss an aligned allocation and more). Once the race has ended, reports are dropped, and
/// the attempts that outlive it (in tasks of their own) can wait for that.
#[derive(Default)]
struct Reports {
    queue: std::sync::Mutex<smallvec::SmallVec<[(usize, Event); 2]>>,
    closed: AtomicBool,
    ended: Notify,
}

impl Reports {
    fn queue(&self) -> std::sync::MutexGuard<'_, smallvec::SmallVec<[(usize, Event); 2]>> {
        // A panic while holding it leaves the queue as it was: still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports `event` of attempt `seq`, unless the race has ended.
    fn send(&self, seq: usize, event: Event) {
        if !self.is_closed() {
            self.queue().push((seq, event));
        }
    }

    fn is_empty(&self) -> bool {
        self.queue().is_empty()
    }

    /// The reports so far, oldest first.
    fn take(&self) -> smallvec::SmallVec<[(usize, Event); 2]> {
        std::mem::take(&mut *self.queue())
    }

    /// The race has ended: later reports are dropped. Once.
    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.queue().clear();
        self.ended.notify_waiters();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Waits until the race has ended.
    async fn closed(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before the look, so that a close after it wakes this wait.
            ended.as_mut().enable();
            if self.is_closed() {
                return;
            }
            ended.await;
        }
    }
}

/// Closes the race's reports however the query ends, also dropped undecided.
struct Closing(Arc<Reports>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The race's view of the upstreams of one query.
struct View<'a> {
    ups: &'a [Arc<Upstream>],
    config: &'a PoolConfig,
    selector: &'a Selector,
}

impl race::Upstreams for View<'_> {
    fn addr(&self, i: usize) -> SocketAddr {
        self.ups[i].addr
    }

    fn is_down(&self, i: usize) -> bool {
        self.ups[i].health.is_down()
    }

    fn attempt_timeout(&self, i: usize) -> Duration {
        self.ups[i]
            .health
            .attempt_timeout(self.config.min_attempt_timeout, self.config.attempt_timeout)
    }

    fn hedge_delay(&self, i: usize) -> Option<Duration> {
        self.ups[i].health.hedge_delay()
    }

    fn answered_since(&self, i: usize, at: Instant) -> bool {
        self.ups[i].health.last_success().is_some_and(|t| t > at)
    }

    fn select(&self, candidates: &[usize]) -> usize {
        let now = Instant::now();
        self.selector
            .select(candidates, |i| self.ups[i].health.selection_rtt(now))
    }
}

/// One attempt at one upstream, reporting to `report`, with its accounting: RTT on an
/// answer; a failure on a transport error, and a failure plus a raised SRTT (selection then
/// avoids it) when its timeout passes unanswered; a stop when the upstream is re-driven.
///
/// A timeout never marks the last upstream that is up as down: an upstream slowed by load
/// answers late but answers, and a late answer marks it up again. An attempt outlives its
/// query, up to the attempt timeout's ceiling, so that a late answer is seen.
async fn attempt(
    upstream: Arc<Upstream>,
    key: Arc<[u8]>,
    launch: Launch,
    config: PoolConfig,
    peers: Arc<[Arc<Upstream>]>,
    report: Arc<Reports>,
) {
    let health = &upstream.health;
    health.counters.attempts.fetch_add(1, Ordering::Relaxed);
    let mut deaths = health.deaths();
    deaths.borrow_and_update();
    let started = Instant::now();
    let seq = launch.seq;
    let stranded = || {
        report.send(seq, Event::Stranded);
    };
    // The socket is retired, and the attempt counts as slow, at the instant the race acts
    // on its timeout: a retry then never finds this socket still in the pool.
    let exchange = exchange(
        &upstream,
        Key(&key),
        &launch,
        launch.timeout_at,
        &config,
        &stranded,
    );
    tokio::pin!(exchange);
    // One timer: first the attempt's timeout (it counts as slow; the UDP ticket, which has
    // no timer, retires its socket when this wakes it), then the ceiling on how long it
    // outlives its query (a timer each would cost a registration more per miss).
    let ceiling = started + config.attempt_timeout;
    let timer = sleep_until(launch.timeout_at.min(ceiling));
    tokio::pin!(timer);
    let (mut timed_out, mut slowed) = (false, false);
    let result = loop {
        // Biased: an answer is taken before a timer that fired with it, and no random draw.
        tokio::select! {
            biased;
            result = &mut exchange => {
                match &result {
                    Ok(answer) => {
                        let code = usize::from(answer.rcode.min(15));
                        health.counters.rcodes[code].fetch_add(1, Ordering::Relaxed);
                        let now = Instant::now();
                        health.record_answer(now - started, now);
                    }
                    Err(UpstreamError::CaseNotPreserved(addr)) => {
                        if health.case_not_preserved() {
                            tracing::warn!(%addr, "upstream does not preserve letter case: 0x20 off for it");
                        }
                    }
                    Err(err) if err.is_transport() => {
                        // A closed port or a reset: whatever else waits on it waits in vain.
                        health.redrive();
                        probe::failed(&upstream, &config, &peers, true);
                    }
                    Err(_) => {}
                }
                break result;
            }
            () = &mut timer, if !timed_out => {
                if !slowed {
                    slowed = true;
                    health.record_slow(launch.timeout, Instant::now());
                    health.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    probe::failed(&upstream, &config, &peers, false);
                    timer.as_mut().reset(ceiling);
                    continue;
                }
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
    report.send(seq, Event::Done(result));
}

/// UDP, then TCP if the UDP answer was truncated or too large to hold, or its socket saw
/// forged answers. The UDP socket is retired if no answer has come by `retire_at`;
/// `stranded` is called if another query's timeout retires it first.
async fn exchange(
    upstream: &Upstream,
    key: Key<'_>,
    launch: &Launch,
    retire_at: Instant,
    config: &PoolConfig,
    stranded: &(dyn Fn() + Sync),
) -> Result<Answer, UpstreamError> {
    let exact_case = config.case_randomization && upstream.health.preserves_case();
    let mut ticket = upstream
        .udp
        .send(key, launch.retry, exact_case, retire_at)
        .await?;
    let reply = loop {
        match ticket.next().await {
            Delivery::Stranded => stranded(),
            Delivery::Reply(reply) => break reply,
        }
    };
    drop(ticket);
    match reply {
        Ok(Reply::Answer(answer)) if !answer.truncated() => Ok(answer),
        Ok(Reply::Answer(_) | Reply::TooLarge) | Err(UpstreamError::Spoofed(_)) => {
            match upstream.tcp.exchange(key).await {
                Ok(answer) if answer.truncated() => {
                    Err(UpstreamError::TruncatedOverTcp(upstream.addr))
                }
                other => other,
            }
        }
        Err(err) => Err(err),
    }
}
