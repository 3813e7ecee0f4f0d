//! The answer cache: validated answers by key, bounded, served only while fresh.
//!
//! Lookups hash the key bytes (built on the stack by `query::parse`) and take one shard's
//! read lock inside quick_cache, never a lock shared by all threads; a hit clones an `Arc`.
//! How long an answer may be kept is decided once, on insert, by [`TtlPolicy`], which also
//! rewrites the stored TTLs so that a hit only subtracts the time elapsed.

use std::sync::Arc;

use quick_cache::Weighter;
use quick_cache::sync::Cache;
use tokio::time::Instant;

use crate::answer::Answer;
use crate::wire::{EDNS_UDP_SIZE, MAX_TTL, rcode};

/// How long answers are cached (RFC 2308 for negative answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TtlPolicy {
    pub(crate) min_ttl: u32,
    pub(crate) max_ttl: u32,
    pub(crate) negative_max_ttl: u32,
}

impl TtlPolicy {
    /// Decides how long `answer` may be cached and rewrites its TTLs to match:
    /// - positive (NOERROR with a record of the asked type): the smallest TTL in the answer
    ///   section, clamped to `min_ttl..=max_ttl`;
    /// - negative (NXDOMAIN, or NOERROR without such a record: NODATA, possibly after a CNAME
    ///   chain): min(SOA TTL, SOA MINIMUM) and the answer section's TTLs, capped at
    ///   `negative_max_ttl`; without an SOA in the authority section it is not cached
    ///   (RFC 2308 §5);
    /// - truncated answers and anything but NOERROR/NXDOMAIN (SERVFAIL included) are never
    ///   cached: the pool already tried the other upstreams for them.
    pub(crate) fn apply(&self, answer: &mut Answer) {
        if answer.truncated() || !answer.is_answer() {
            answer.set_ttls(0, MAX_TTL, 0);
            return;
        }
        let facts = answer.facts;
        let answer_ttl = facts.min_answer_ttl.unwrap_or(MAX_TTL).min(MAX_TTL);
        if answer.rcode == rcode::NOERROR && facts.has_qtype {
            let lifetime = answer_ttl.clamp(self.min_ttl, self.max_ttl);
            answer.set_ttls(self.min_ttl, lifetime, lifetime);
        } else if let Some(negative) = facts.negative_ttl {
            let lifetime = negative.min(answer_ttl).min(self.negative_max_ttl);
            answer.set_ttls(0, lifetime, lifetime);
        } else {
            answer.set_ttls(0, MAX_TTL, 0);
        }
    }
}

/// Weighs an answer by the UDP-sized blocks it takes, so that the capacity bounds memory too:
/// an answer of up to 1232 bytes counts as one entry, a 64 KiB TCP answer as 54.
#[derive(Clone, Copy, Debug)]
struct AnswerWeighter;

impl Weighter<Box<[u8]>, Arc<Answer>> for AnswerWeighter {
    fn weight(&self, key: &Box<[u8]>, answer: &Arc<Answer>) -> u64 {
        let bytes = key.len() + answer.len();
        bytes.div_ceil(usize::from(EDNS_UDP_SIZE)).max(1) as u64
    }
}

/// Validated answers by key.
pub(crate) struct AnswerCache {
    entries: Cache<Box<[u8]>, Arc<Answer>, AnswerWeighter>,
    policy: TtlPolicy,
}

impl AnswerCache {
    /// A cache of at most `capacity` entries (see [`AnswerWeighter`]).
    pub(crate) fn new(capacity: usize, policy: TtlPolicy) -> Self {
        Self {
            entries: Cache::with_weighter(capacity, capacity as u64, AnswerWeighter),
            policy,
        }
    }

    /// The caching policy, for answers on their way in.
    pub(crate) fn policy(&self) -> &TtlPolicy {
        &self.policy
    }

    /// A fresh answer for `key` at `now`. An expired entry is never served; it stays until
    /// it is replaced or evicted.
    #[inline]
    pub(crate) fn get(&self, key: &[u8], now: Instant) -> Option<Arc<Answer>> {
        self.entries.get(key).filter(|a| a.fresh_at(now))
    }

    /// Keeps `answer` if the policy gave it a lifetime.
    pub(crate) fn insert(&self, key: &[u8], answer: &Arc<Answer>) {
        if answer.lifetime > 0 {
            self.entries.insert(key.into(), Arc::clone(answer));
        }
    }

    /// How many answers are cached (expired ones included until they are evicted).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
