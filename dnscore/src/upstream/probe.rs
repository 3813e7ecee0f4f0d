//! Failure accounting and health probes: a transport failure counts toward marking an
//! upstream down, and a probe task (`. IN NS`, as CoreDNS's health check asks, with
//! exponential backoff) watches every failing upstream until it answers, so that a silent
//! upstream that selection now avoids (and that gets no queries to fail) is still marked
//! down, and one that is down is brought back.

use std::sync::Arc;
use std::sync::atomic::Ordering;

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
            udp::exchange_once(upstream.addr, Key(&ROOT_NS)),
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
            upstream.health.redrive();
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
