//! Failure accounting and health probes: a transport failure counts toward marking an
//! upstream down, and a probe task (`. IN NS`, as CoreDNS's health check asks, with
//! exponential backoff) watches every failing upstream until it answers, so that a silent
//! upstream that selection now avoids (and that gets no queries to fail) is still marked
//! down, and one that is down is brought back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use super::health::Health;
use super::{PoolConfig, Upstream, udp};
use crate::query::Key;

/// Records a transport failure (`hard`: a closed port or a reset; else a timeout) and makes
/// sure a probe task watches the upstream. A timeout never marks down the last upstream
/// that is up. An upstream marked down has every query outstanding on it re-driven: it is
/// known dead, so sending them elsewhere is not speculative.
pub(crate) fn failed(
    upstream: &Arc<Upstream>,
    config: &PoolConfig,
    peers: &Arc<[Arc<Upstream>]>,
    hard: bool,
) {
    let may_go_down = hard || others_up(peers, upstream);
    if upstream
        .health
        .record_failure(config.max_failures, may_go_down)
    {
        tracing::warn!(addr = %upstream.addr, "upstream marked down");
        upstream.health.redrive();
    }
    if upstream.health.start_probing() {
        spawn_probe(upstream, config, peers);
    }
}

/// Starts the probe task of `upstream` (claimed by the caller) on the current runtime.
pub(crate) fn spawn_probe(
    upstream: &Arc<Upstream>,
    config: &PoolConfig,
    peers: &Arc<[Arc<Upstream>]>,
) {
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

/// Asks `. IN NS` every probe interval, doubling while the upstream is down, until it
/// answers anything. Probes go from a socket of their own, never from the query sockets.
///
/// A probe fails as soon as a query's attempt would (an upstream that answered in 1 ms and
/// is now silent is marked down within a few intervals, not a few caps), but it waits for
/// its answer up to the cap meanwhile, and that answer still brings the upstream back:
/// `. NS` may be slower than the queries whose RTT set the timeout (CoreDNS forwards it),
/// and an upstream must never stay down for answering its probes slowly.
async fn probe(upstream: Arc<Upstream>, config: PoolConfig, peers: Arc<[Arc<Upstream>]>) {
    // However the task ends, also dropped unfinished with its runtime, the next failure or
    // query may start another; the probes still waiting are aborted with it.
    let _ends = ProbeEnds(&upstream.health);
    let mut waiting = JoinSet::new();
    let mut interval = config.probe_interval;
    let rtt = loop {
        tokio::select! {
            () = sleep(interval) => {}
            rtt = answer(&mut waiting) => break rtt,
        }
        if upstream.removed.load(Ordering::Acquire) {
            return;
        }
        let timeout = upstream
            .health
            .attempt_timeout(config.min_attempt_timeout, config.attempt_timeout);
        waiting.spawn(ask_root_ns(upstream.addr, config.attempt_timeout));
        tokio::select! {
            () = sleep(timeout) => {}
            rtt = answer(&mut waiting) => break rtt,
        }
        upstream
            .health
            .counters
            .probe_failures
            .fetch_add(1, Ordering::Relaxed);
        if upstream.health.is_down() {
            interval = (interval * 2).min(config.max_probe_interval);
        } else if upstream
            .health
            .record_failure(config.max_failures, others_up(&peers, &upstream))
        {
            tracing::warn!(addr = %upstream.addr, "upstream marked down by its probes");
            upstream.health.redrive();
        }
    };
    if upstream.health.record_answer(rtt, Instant::now()) {
        tracing::info!(addr = %upstream.addr, "upstream is back up");
    }
}

/// One probe: the RTT of its answer, if one comes within `cap`.
async fn ask_root_ns(addr: SocketAddr, cap: Duration) -> Option<Duration> {
    // The key for ". IN NS" without DO or CD: root name, type 2, class 1, flags 0.
    const ROOT_NS: [u8; 6] = [0, 0, 2, 0, 1, 0];
    let started = Instant::now();
    match tokio::time::timeout(cap, udp::exchange_once(addr, Key(&ROOT_NS))).await {
        Ok(Ok(_)) => Some(started.elapsed()),
        _ => None,
    }
}

/// The RTT of the first answer among the probes still waiting; pending while none will.
async fn answer(waiting: &mut JoinSet<Option<Duration>>) -> Duration {
    while let Some(done) = waiting.join_next().await {
        if let Ok(Some(rtt)) = done {
            return rtt;
        }
    }
    std::future::pending().await
}

/// Releases an upstream's probe claim when its probe task ends.
struct ProbeEnds<'a>(&'a Health);

impl Drop for ProbeEnds<'_> {
    fn drop(&mut self) {
        self.0.probe_ended();
    }
}
