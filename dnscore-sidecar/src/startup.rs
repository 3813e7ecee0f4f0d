//! What the sidecar does as it starts: one question through the upstreams, which both
//! brings the first upstream answer that `/ready` waits for and detects a forwarding loop
//! (as CoreDNS's `loop` plugin does: a random name that comes back to our own listener),
//! and the `--warm` names, resolved before `/ready` turns 200 and kept fresh afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use dnscore::proto::rr::RecordType;
use dnscore::{Error, Resolver};
use tokio::sync::Notify;

use crate::admin::Admin;

/// HINFO: the type of the loop probe (CoreDNS's `loop` plugin asks the same).
const HINFO: u16 = dnscore::message::rtype::HINFO;
/// Between two tries of the startup question, and two visits of the warm names.
const TICK: Duration = Duration::from_secs(1);

/// The loop probe: random names under `invalid.` (RFC 6761: never delegated, so no
/// resolver sends them on to the Internet), `N.<random>.dnscore-loop.invalid.` for the Nth
/// try (a fresh name each time, so that no cache on the way answers a retry), asked through
/// the upstreams. Seen by our own listener, one means the upstreams forward back to us.
#[derive(Debug)]
pub struct LoopProbe {
    /// `<random>.dnscore-loop.invalid.`
    suffix: String,
    /// The suffix in wire format, lower case, as it follows a query's first label.
    wire: Vec<u8>,
    tries: AtomicU32,
    came_back: AtomicBool,
    notify: Notify,
}

impl Default for LoopProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl LoopProbe {
    /// A probe with a fresh random name.
    pub fn new() -> Self {
        let label = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let suffix = format!("{label}.dnscore-loop.invalid.");
        let mut wire = Vec::with_capacity(suffix.len() + 1);
        for part in suffix.trim_end_matches('.').split('.') {
            wire.push(part.len() as u8);
            wire.extend_from_slice(part.as_bytes());
        }
        wire.push(0);
        Self {
            suffix,
            wire,
            tries: AtomicU32::new(0),
            came_back: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// The name of the next try.
    pub fn next_name(&self) -> String {
        let n = self.tries.fetch_add(1, Ordering::Relaxed);
        format!("{n}.{}", self.suffix)
    }

    /// What the probe's names end with.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// Called by the servers for each query that missed the cache: notes a query for one of
    /// the probe's names.
    pub fn check(&self, qtype: u16, query: &[u8]) {
        if qtype != HINFO {
            return;
        }
        let Some(&first) = query.get(12) else {
            return;
        };
        let start = 13 + usize::from(first);
        let matches = query
            .get(start..start + self.wire.len())
            .is_some_and(|rest| rest.eq_ignore_ascii_case(&self.wire));
        if matches && !self.came_back.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    /// Completes when one of the probe's names came back to our listener.
    pub async fn came_back(&self) {
        self.notify.notified().await;
    }
}

/// Asks the loop probe until an upstream has answered (or readiness no longer waits),
/// then resolves the warm names until they are cached, marks them warmed, and keeps them
/// fresh: each is looked up every second, a cache hit that refreshes it (prefetch) in the
/// last tenth of its TTL.
pub async fn run(resolver: Resolver, admin: Arc<Admin>, probe: Arc<LoopProbe>, warm: Vec<String>) {
    while !admin.upstream_answered() && !admin.is_started_up() {
        let _ = resolver.lookup(&probe.next_name(), RecordType::HINFO).await;
        if !admin.upstream_answered() {
            tokio::time::sleep(TICK).await;
        }
    }
    if warm.is_empty() {
        admin.warmed.store(true, Ordering::Release);
        return;
    }
    loop {
        let mut cached = true;
        for name in &warm {
            for rtype in [RecordType::A, RecordType::AAAA] {
                match resolver.lookup(name, rtype).await {
                    Ok(_) | Err(Error::NxDomain) => {}
                    Err(err) => {
                        cached = false;
                        if !admin.warmed.load(Ordering::Acquire) {
                            tracing::debug!(%name, ?rtype, %err, "warm name not cached yet");
                        }
                    }
                }
            }
        }
        if cached && !admin.warmed.swap(true, Ordering::AcqRel) {
            tracing::info!(names = warm.len(), "warm names cached");
        }
        tokio::time::sleep(TICK).await;
    }
}
