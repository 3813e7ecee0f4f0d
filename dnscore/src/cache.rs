//! The answer cache: validated answers by key, bounded; fresh entries, and past their TTL
//! the stale ones within the stale window (RFC 8767), which the resolver serves only when
//! no upstream answers in time.
//!
//! Lookups hash the key bytes (built on the stack by `query::parse`) and take one shard's
//! read lock inside quick_cache, never a lock shared by all threads; a hit clones an `Arc`.
//! quick_cache holds an entry under that hash (a `u64`, keyed per cache), not under a copy
//! of the key: the entry's own question and flags are the key, and are checked on every
//! lookup, so that two keys of one hash are two misses, never one's answer for the other
//! (a key of its own, boxed, cost 38 bytes per entry).
//! A thread that hits an entry again finds it in its own memo (64 slots) and uses it
//! without the lock or the clone, so that threads sharing a hot entry do not write its
//! reference count on every hit; entries evicted or replaced are marked and never served
//! from a memo.
//! How long an answer may be kept is decided once, on insert, by [`TtlPolicy`], which also
//! rewrites the stored TTLs so that a hit only subtracts the time elapsed. An [`Entry`] is
//! the answer with its life in the cache: whether it is fresh, stale or gone at a given
//! instant, its prefetch and its failed refreshes are decided there and nowhere else.

use std::cell::RefCell;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use quick_cache::Weighter;
use quick_cache::sync::Cache;
use tokio::time::Instant;

use crate::answer::Answer;
use crate::wire::{EDNS_UDP_SIZE, MAX_TTL, rcode};

/// How long answers are cached (RFC 2308 for negative answers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TtlPolicy {
    pub(crate) min_ttl: u32,
    pub(crate) max_ttl: u32,
    pub(crate) negative_min_ttl: u32,
    pub(crate) negative_max_ttl: u32,
    /// A floor of its own for answers about the cluster's names.
    pub(crate) cluster: Option<ClusterFloor>,
}

/// A TTL floor for the answers to questions at or under one domain (the Kubernetes cluster
/// domain), positive and negative alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClusterFloor {
    /// The domain in wire form, lower case.
    pub(crate) domain: Box<[u8]>,
    /// The floor, in seconds.
    pub(crate) min_ttl: u32,
}

impl TtlPolicy {
    /// Decides how long `answer` may be cached, in seconds (0: not at all), and rewrites
    /// its TTLs to match:
    /// - positive (NOERROR with a record of the asked type): the smallest TTL in the answer
    ///   section, clamped to `min_ttl..=max_ttl`;
    /// - negative (NXDOMAIN, or NOERROR without such a record: NODATA, possibly after a CNAME
    ///   chain): min(SOA TTL, SOA MINIMUM) and the answer section's TTLs, capped at
    ///   `negative_min_ttl..=negative_max_ttl`; without an SOA in the authority section it is not cached
    ///   (RFC 2308 §5);
    /// - truncated answers and anything but NOERROR/NXDOMAIN (SERVFAIL included) are never
    ///   cached: the pool already tried the other upstreams for them;
    /// - for a question at or under the cluster domain, the cluster floor is a floor for
    ///   positive and negative answers alike; the ceilings still apply.
    pub(crate) fn apply(&self, answer: &mut Answer) -> u32 {
        if answer.truncated() || !answer.is_answer() {
            answer.set_ttls(0, MAX_TTL);
            return 0;
        }
        let cluster_floor = match &self.cluster {
            Some(c) if answer.question_is_under(&c.domain) => c.min_ttl,
            _ => 0,
        };
        let facts = answer.facts;
        let answer_ttl = facts.min_answer_ttl().unwrap_or(MAX_TTL).min(MAX_TTL);
        if answer.rcode == rcode::NOERROR && facts.has_qtype() {
            let floor = self.min_ttl.max(cluster_floor).min(self.max_ttl);
            let lifetime = answer_ttl.clamp(floor, self.max_ttl);
            answer.set_ttls(floor, lifetime);
            lifetime
        } else if let Some(negative) = facts.negative_ttl() {
            let floor = self
                .negative_min_ttl
                .max(cluster_floor)
                .min(self.negative_max_ttl);
            let lifetime = negative.min(answer_ttl).clamp(floor, self.negative_max_ttl);
            answer.set_ttls(floor, lifetime);
            lifetime
        } else {
            answer.set_ttls(0, MAX_TTL);
            0
        }
    }
}

/// A validated answer and its life in the cache. It reads as its [`Answer`] (`Deref`).
#[derive(Debug)]
pub(crate) struct Entry {
    answer: Answer,
    /// How long it may be served from the cache, in seconds after the answer arrived; 0
    /// when it may not be cached.
    lifetime: u32,
    /// Bit 31 ([`PREFETCHED`]): a background refresh was started for it (prefetch happens
    /// once per entry). Bit 30 ([`GONE`]): the cache no longer holds it (evicted or
    /// replaced), so a thread's memo of it must not be used. Bits 28-29 ([`KEY_FLAGS`]):
    /// the flags byte of the key it is cached under (set on insert). Bits 0-27: when a
    /// refresh of this stale entry last failed, in ms after the answer arrived, + 1 (0 for
    /// never; at most 3.1 days, past any entry's life with the default TTL ceiling and
    /// stale window): refreshes are not retried for a while (RFC 8767 §4). One word, so
    /// that an entry and its `Arc` fit 80 bytes.
    state: AtomicU32,
}

/// [`Entry::state`]'s prefetch bit.
const PREFETCHED: u32 = 1 << 31;
/// [`Entry::state`]'s "no longer in the cache" bit.
const GONE: u32 = 1 << 30;
/// [`Entry::state`]'s key flags (the last byte of a key: DO and CD).
const KEY_FLAGS: u32 = 3 << KEY_FLAGS_SHIFT;
/// Where [`KEY_FLAGS`] start.
const KEY_FLAGS_SHIFT: u32 = 28;
/// [`Entry::state`]'s failed-refresh time.
const FAILED_MS: u32 = (1 << KEY_FLAGS_SHIFT) - 1;

impl Deref for Entry {
    type Target = Answer;

    fn deref(&self) -> &Answer {
        &self.answer
    }
}

impl Entry {
    /// `answer`, which may be cached for `lifetime` seconds after it arrived (from
    /// [`TtlPolicy::apply`]).
    pub(crate) fn new(answer: Answer, lifetime: u32) -> Self {
        Self {
            answer,
            lifetime,
            state: AtomicU32::new(0),
        }
    }

    /// How long ago its answer arrived, at `now`.
    #[inline]
    pub(crate) fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.answer.received)
    }

    /// Fresh, stale (expired less than `max_stale` ago) or gone (`None`) at `age` (see
    /// [`age`](Self::age)).
    #[inline]
    pub(crate) fn freshness(&self, age: Duration, max_stale: Duration) -> Option<Freshness> {
        let lifetime = Duration::from_secs(u64::from(self.lifetime));
        if self.is_fresh(age) {
            Some(Freshness::Fresh)
        } else if age.saturating_sub(lifetime) < max_stale {
            Some(Freshness::Stale)
        } else {
            None
        }
    }

    /// Whether it is within its TTL at `age`.
    #[inline]
    pub(crate) fn is_fresh(&self, age: Duration) -> bool {
        age.as_secs() < u64::from(self.lifetime)
    }

    /// Whether a client asking at `now` should trigger a background refresh: the entry is
    /// in the last tenth of its lifetime, and no refresh was started for it yet. Returns
    /// true once.
    pub(crate) fn claim_prefetch(&self, age: Duration) -> bool {
        self.prefetch_due(age)
            && self.state.fetch_or(PREFETCHED, Ordering::Relaxed) & PREFETCHED == 0
    }

    /// Whether the entry is in the last tenth of its lifetime at `age` and not claimed yet
    /// (a cheap look, before [`claim_prefetch`](Self::claim_prefetch)).
    pub(crate) fn prefetch_due(&self, age: Duration) -> bool {
        // In u64 (no u128 arithmetic on every hit): a lifetime is at most 2^31 s, an age
        // that does not fit is past any lifetime.
        let age = u64::try_from(age.as_millis()).unwrap_or(u64::MAX / 10);
        let lifetime = u64::from(self.lifetime) * 1000;
        age * 10 >= lifetime * 9 && self.state.load(Ordering::Relaxed) & PREFETCHED == 0
    }

    /// Records that refreshing this (stale) entry failed at `now`.
    pub(crate) fn refresh_failed_at(&self, now: Instant) {
        let ms = u32::try_from(self.age(now).as_millis())
            .map_or(FAILED_MS - 1, |ms| ms.min(FAILED_MS - 1));
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some((s & !FAILED_MS) | (ms + 1))
            });
    }

    /// Whether it is the entry cached under `key`: its question is the key's (but for the
    /// letter case of the name) and so are the flags it was inserted with.
    fn is_for(&self, key: &[u8]) -> bool {
        let Some((&flags, question)) = key.split_last() else {
            return false;
        };
        let stored = (self.state.load(Ordering::Relaxed) & KEY_FLAGS) >> KEY_FLAGS_SHIFT;
        stored == u32::from(flags) && self.answer.asks(question)
    }

    /// Notes the flags of the key it is cached under (see [`is_for`](Self::is_for)).
    fn set_key_flags(&self, key: &[u8]) {
        let flags = key.last().map_or(0, |&f| u32::from(f) << KEY_FLAGS_SHIFT) & KEY_FLAGS;
        self.state.fetch_or(flags, Ordering::Relaxed);
    }

    /// Marks it as no longer held by the cache.
    fn mark_gone(&self) {
        self.state.fetch_or(GONE, Ordering::Relaxed);
    }

    /// Whether the cache no longer holds it (evicted or replaced): a memo of it must not
    /// be used.
    pub(crate) fn is_gone(&self) -> bool {
        self.state.load(Ordering::Relaxed) & GONE != 0
    }

    /// Whether a refresh failed less than `window` before `now`.
    pub(crate) fn refresh_blocked(&self, now: Instant, window: Duration) -> bool {
        match self.state.load(Ordering::Relaxed) & FAILED_MS {
            0 => false,
            ms => {
                let failed = self.answer.received + Duration::from_millis(u64::from(ms - 1));
                now.saturating_duration_since(failed) < window
            }
        }
    }
}

/// Weighs an answer by the UDP-sized blocks it takes, so that the capacity bounds memory too:
/// an answer of up to 1232 bytes counts as one entry, a 64 KiB TCP answer as 54.
#[derive(Clone, Copy, Debug)]
struct AnswerWeighter;

impl Weighter<u64, Arc<Entry>> for AnswerWeighter {
    fn weight(&self, _hash: &u64, answer: &Arc<Entry>) -> u64 {
        // As if the key were stored too (its question and a flags byte).
        let bytes = answer.question_len() + 1 + answer.len();
        bytes.div_ceil(usize::from(EDNS_UDP_SIZE)).max(1) as u64
    }
}

/// Whether a cached answer is within its TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Freshness {
    Fresh,
    /// Expired, but within the stale window: served only when no upstream answers
    /// (RFC 8767).
    Stale,
}

/// Marks evicted entries [`GONE`] (replaced ones are marked by [`AnswerCache::insert`]).
#[derive(Clone, Copy, Debug, Default)]
struct MarkGone;

impl quick_cache::Lifecycle<u64, Arc<Entry>> for MarkGone {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), _hash: u64, entry: Arc<Entry>) {
        entry.mark_gone();
    }
}

/// Slots of a thread's memo (direct-mapped by a hash of the key's first bytes).
const MEMO_SLOTS: usize = 64;

/// A thread's last fresh hit per slot: which cache, the key, the entry.
struct Memo {
    cache: u64,
    key: smallvec::SmallVec<[u8; 48]>,
    entry: Arc<Entry>,
}

thread_local! {
    /// The entries this thread hit last (at most [`MEMO_SLOTS`]), so that a hit on a hot
    /// entry neither clones its `Arc` nor takes the shard lock: with two threads on one
    /// hot entry, its reference count was the one cache line both wrote on every hit.
    static MEMO: RefCell<[Option<Memo>; MEMO_SLOTS]> =
        const { RefCell::new([const { None }; MEMO_SLOTS]) };
}

/// Each cache's memo identity (an address could be reused by a later cache).
static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);

/// The memo slot of `key`: its length, type and first bytes of the name, mixed.
#[inline]
fn memo_slot(key: &[u8]) -> usize {
    let mut first = [0u8; 8];
    let n = key.len().min(9).saturating_sub(1);
    first[..n].copy_from_slice(&key[1..1 + n]);
    let tail = key.len().checked_sub(4).map_or(0, |i| u64::from(key[i]));
    let mixed = (u64::from_le_bytes(first) ^ (key.len() as u64) << 48 ^ tail << 56)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 58) as usize % MEMO_SLOTS
}

/// Validated answers by key, and the questions that recently failed everywhere.
pub(crate) struct AnswerCache {
    /// By the hash of their key ([`hash`](Self::hash)).
    entries: Cache<u64, Arc<Entry>, AnswerWeighter, quick_cache::DefaultHashBuilder, MarkGone>,
    /// Hashes keys for `entries` (seeded at random: no one can choose keys that collide).
    keys: quick_cache::DefaultHashBuilder,
    /// Tells this cache's entries in the threads' memos from other caches'.
    id: u64,
    /// Until when each recently failed question is answered SERVFAIL without asking
    /// upstream (RFC 2308 §7). Bounded like the cache, a quarter of its size.
    failures: Cache<Box<[u8]>, Instant>,
    policy: TtlPolicy,
    /// How long past its TTL an answer may still be served stale; zero disables it.
    max_stale: Duration,
    /// How long a failure is remembered.
    failure_ttl: Duration,
}

impl AnswerCache {
    /// A cache of at most `capacity` entries (see [`AnswerWeighter`]).
    pub(crate) fn new(
        capacity: usize,
        policy: TtlPolicy,
        max_stale: Duration,
        failure_ttl: Duration,
    ) -> Self {
        Self {
            entries: Cache::with(
                capacity,
                capacity as u64,
                AnswerWeighter,
                quick_cache::DefaultHashBuilder::default(),
                MarkGone,
            ),
            keys: quick_cache::DefaultHashBuilder::default(),
            id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
            failures: Cache::new((capacity / 4).max(64)),
            policy,
            max_stale,
            failure_ttl,
        }
    }

    /// The answer for `key` at `now`, fresh or within the stale window, and its age.
    #[inline]
    pub(crate) fn lookup(
        &self,
        key: &[u8],
        now: Instant,
    ) -> Option<(Arc<Entry>, Freshness, Duration)> {
        let entry = self.get(key)?;
        let age = entry.age(now);
        let freshness = entry.freshness(age, self.max_stale)?;
        Some((entry, freshness, age))
    }

    /// Where `entries` keeps the entry for `key`.
    #[inline]
    fn hash(&self, key: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.keys.hash_one(key)
    }

    /// The entry cached under `key`, whatever its age.
    #[inline]
    fn get(&self, key: &[u8]) -> Option<Arc<Entry>> {
        self.entries.get(&self.hash(key)).filter(|e| e.is_for(key))
    }

    /// Runs `hit` on the fresh entry for `key` at `now` (with its age), from this thread's
    /// memo when it holds it and the cache still does, else from the cache (and memoizes
    /// it); `hit` is told whether the memo had it (this thread hit it before). A stale entry
    /// comes back as `Err(Some)`, none as `Err(None)`. The memo holds at most 64 entries of
    /// up to 1232 bytes per thread, possibly ones evicted since (until overwritten), and
    /// never serves those.
    #[inline]
    pub(crate) fn with_fresh<R>(
        &self,
        key: &[u8],
        now: Instant,
        hit: impl FnOnce(&Arc<Entry>, Duration, bool) -> R,
    ) -> Result<R, Option<Arc<Entry>>> {
        let slot = memo_slot(key);
        let mut hit = Some(hit);
        // `try_with`: a thread being torn down (its memo gone) still gets answers.
        let from_memo = MEMO.try_with(|memo| {
            let memo = memo.borrow();
            let m = memo[slot].as_ref()?;
            if m.cache != self.id || *m.key != *key || m.entry.is_gone() {
                return None;
            }
            let age = m.entry.age(now);
            match m.entry.freshness(age, self.max_stale) {
                Some(Freshness::Fresh) => hit.take().map(|f| f(&m.entry, age, true)),
                _ => None,
            }
        });
        if let Ok(Some(r)) = from_memo {
            return Ok(r);
        }
        let Some(hit) = hit else {
            return Err(None); // not reached: the memo ran it only when it answered
        };
        match self.lookup(key, now) {
            Some((entry, Freshness::Fresh, age)) => {
                let r = hit(&entry, age, false);
                // Only answers of up to a UDP size: the memo's memory stays small (64 such
                // entries a thread at most) beside the cache's bound.
                if entry.len() <= usize::from(EDNS_UDP_SIZE) {
                    let _ = MEMO.try_with(|memo| {
                        memo.borrow_mut()[slot] = Some(Memo {
                            cache: self.id,
                            key: key.into(),
                            entry,
                        });
                    });
                }
                Ok(r)
            }
            Some((stale, Freshness::Stale, _)) => Err(Some(stale)),
            None => Err(None),
        }
    }

    /// Tells this cache from others in a thread's memos.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Remembers that every upstream failed `key` at `now`.
    pub(crate) fn insert_failure(&self, key: &[u8], now: Instant) {
        if !self.failure_ttl.is_zero() {
            self.failures.insert(key.into(), now + self.failure_ttl);
        }
    }

    /// Whether every upstream failed `key` moments before `now`.
    pub(crate) fn recently_failed(&self, key: &[u8], now: Instant) -> bool {
        self.failures.get(key).is_some_and(|until| now < until)
    }

    /// The caching policy, for answers on their way in.
    pub(crate) fn policy(&self) -> &TtlPolicy {
        &self.policy
    }

    /// Keeps `answer` if the policy gave it a lifetime, and forgets any recent failure.
    pub(crate) fn insert(&self, key: &[u8], entry: &Arc<Entry>) {
        if entry.lifetime > 0 {
            let hash = self.hash(key);
            // The entry it replaces is marked, so that no thread's memo serves it on (also
            // one of another key of the same hash, which this one evicts).
            if let Some(old) = self.entries.peek(&hash) {
                old.mark_gone();
            }
            entry.set_key_flags(key);
            debug_assert!(
                entry.is_for(key),
                "an entry is cached under its own question"
            );
            self.entries.insert(hash, Arc::clone(entry));
        }
        if !self.failures.is_empty() {
            self.failures.remove(key);
        }
    }

    /// Changes the capacity, evicting as needed; the answers that fit are kept.
    pub(crate) fn set_capacity(&self, capacity: usize) {
        self.entries.set_capacity(capacity.max(1) as u64);
    }

    /// How many answers are cached (expired ones included until they are evicted).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;

    use super::*;
    use crate::fixtures::{a, client_query, exchange, response_to, soa};
    use crate::query::{self, Key};

    const POLICY: TtlPolicy = TtlPolicy {
        min_ttl: 0,
        max_ttl: 86_400,
        negative_min_ttl: 0,
        negative_max_ttl: 3_600,
        cluster: None,
    };

    fn lifetime_of(
        answers: Vec<crate::proto::rr::Record>,
        authority: Vec<crate::proto::rr::Record>,
        rcode: ResponseCode,
        policy: TtlPolicy,
    ) -> u32 {
        lifetime_for("a.test.", answers, authority, rcode, policy)
    }

    fn lifetime_for(
        name: &str,
        answers: Vec<crate::proto::rr::Record>,
        authority: Vec<crate::proto::rr::Record>,
        rcode: ResponseCode,
        policy: TtlPolicy,
    ) -> u32 {
        let client = client_query(name, RecordType::A, None);
        let q = query::parse(&client).unwrap();
        let sent = Key(q.key.as_bytes()).upstream_query(1);
        let resp = response_to(&sent, rcode, answers, authority);
        let mut answer = Answer::parse(&sent, &resp, Instant::now()).unwrap();
        policy.apply(&mut answer)
    }

    #[test]
    fn positive_answers_live_for_their_smallest_ttl_clamped() {
        let two = || {
            vec![
                a("a.test.", 300, [1, 1, 1, 1]),
                a("a.test.", 60, [2, 2, 2, 2]),
            ]
        };
        assert_eq!(
            lifetime_of(two(), vec![], ResponseCode::NoError, POLICY),
            60
        );
        let clamped = TtlPolicy {
            min_ttl: 120,
            max_ttl: 200,
            ..POLICY
        };
        assert_eq!(
            lifetime_of(two(), vec![], ResponseCode::NoError, clamped),
            120
        );
        let huge = vec![a("a.test.", u32::MAX, [1, 1, 1, 1])];
        let unclamped = TtlPolicy {
            max_ttl: u32::MAX,
            ..POLICY
        };
        assert_eq!(
            lifetime_of(huge, vec![], ResponseCode::NoError, unclamped),
            MAX_TTL
        );
    }

    #[test]
    fn negative_answers_follow_rfc_2308() {
        assert_eq!(
            lifetime_of(vec![], vec![soa(300, 60)], ResponseCode::NXDomain, POLICY),
            60
        );
        assert_eq!(
            lifetime_of(vec![], vec![soa(30, 600)], ResponseCode::NoError, POLICY),
            30
        );
        assert_eq!(
            lifetime_of(
                vec![],
                vec![soa(9000, 9000)],
                ResponseCode::NXDomain,
                POLICY
            ),
            3600
        );
        let floored = TtlPolicy {
            negative_min_ttl: 30,
            negative_max_ttl: 40,
            ..POLICY
        };
        assert_eq!(
            lifetime_of(
                vec![],
                vec![soa(5, 5)],
                ResponseCode::NXDomain,
                floored.clone()
            ),
            30
        );
        assert_eq!(
            lifetime_of(
                vec![],
                vec![soa(90, 90)],
                ResponseCode::NXDomain,
                floored.clone()
            ),
            40
        );
        assert_eq!(
            lifetime_of(vec![], vec![], ResponseCode::NXDomain, floored),
            0,
            "no SOA, no caching, whatever the floor"
        );
        assert_eq!(
            lifetime_of(vec![], vec![], ResponseCode::NXDomain, POLICY),
            0,
            "no SOA, no caching"
        );
        assert_eq!(
            lifetime_of(vec![], vec![], ResponseCode::ServFail, POLICY),
            0
        );
    }

    #[test]
    fn the_cluster_floor_holds_for_the_cluster_domain_only() {
        let policy = TtlPolicy {
            cluster: Some(ClusterFloor {
                domain: b"\x07cluster\x05local\x00".as_slice().into(),
                min_ttl: 30,
            }),
            ..POLICY
        };
        let svc = "redis.shop.svc.cluster.local.";
        let answer = |name| vec![a(name, 5, [10, 100, 0, 7])];
        let lifetime = |name, answers, authority, rcode| {
            lifetime_for(name, answers, authority, rcode, policy.clone())
        };
        assert_eq!(
            lifetime(svc, answer(svc), vec![], ResponseCode::NoError),
            30
        );
        let upper = "Redis.Shop.SVC.Cluster.Local.";
        assert_eq!(
            lifetime(upper, answer(upper), vec![], ResponseCode::NoError),
            30
        );
        assert_eq!(
            lifetime(
                "cluster.local.",
                answer("cluster.local."),
                vec![],
                ResponseCode::NoError
            ),
            30
        );
        let nx = "redis.app.svc.cluster.local.";
        assert_eq!(
            lifetime(nx, vec![], vec![soa(5, 5)], ResponseCode::NXDomain),
            30
        );
        assert_eq!(
            lifetime(svc, vec![], vec![soa(5, 5)], ResponseCode::NoError),
            30
        );
        // Longer TTLs are kept; a negative answer without an SOA is still not cached.
        let long = vec![a(svc, 600, [10, 100, 0, 7])];
        assert_eq!(lifetime(svc, long, vec![], ResponseCode::NoError), 600);
        assert_eq!(lifetime(nx, vec![], vec![], ResponseCode::NXDomain), 0);
        // Names outside the domain, and names that only end in its letters, keep theirs.
        for name in [
            "a.test.",
            "xcluster.local.",
            "cluster.local.example.",
            "local.",
        ] {
            assert_eq!(
                lifetime(name, answer(name), vec![], ResponseCode::NoError),
                5,
                "{name}"
            );
        }
        // The ceilings still apply.
        let low = TtlPolicy {
            max_ttl: 10,
            negative_max_ttl: 20,
            ..policy.clone()
        };
        assert_eq!(
            lifetime_for(svc, answer(svc), vec![], ResponseCode::NoError, low.clone()),
            10
        );
        assert_eq!(
            lifetime_for(nx, vec![], vec![soa(5, 5)], ResponseCode::NXDomain, low),
            20
        );
    }

    #[test]
    fn expired_entries_are_never_served() {
        let client = client_query("a.test.", RecordType::A, None);
        let (_, mut answer) = exchange(
            &client,
            vec![a("a.test.", 5, [1, 1, 1, 1])],
            ResponseCode::NoError,
        );
        let lifetime = POLICY.apply(&mut answer);
        let received = answer.received;
        let answer = Arc::new(Entry::new(answer, lifetime));
        let cache = AnswerCache::new(10, POLICY, Duration::ZERO, Duration::ZERO);
        let key = query::parse(&client).unwrap().key.as_bytes().to_vec();
        cache.insert(&key, &answer);
        let at = |ms| {
            cache
                .lookup(&key, received + Duration::from_millis(ms))
                .map(|(_, f, _)| f)
        };
        assert_eq!(at(4999), Some(Freshness::Fresh));
        assert_eq!(at(5000), None, "no stale window: gone at its TTL");

        let stale = AnswerCache::new(10, POLICY, Duration::from_secs(60), Duration::ZERO);
        stale.insert(&key, &answer);
        let at = |ms| {
            stale
                .lookup(&key, received + Duration::from_millis(ms))
                .map(|(_, f, _)| f)
        };
        assert_eq!(at(4999), Some(Freshness::Fresh));
        assert_eq!(at(5000), Some(Freshness::Stale), "expired: only ever stale");
        assert_eq!(at(64_999), Some(Freshness::Stale));
        assert_eq!(at(65_000), None, "past the stale window");
    }

    #[test]
    fn prefetch_is_claimed_once_in_the_last_tenth_and_failed_refreshes_wait() {
        let (_, entry) = entry_for("a.test.", 100, [1, 1, 1, 1]);
        let received = entry.received;
        let age = Duration::from_millis;
        assert!(!entry.prefetch_due(age(89_999)));
        assert!(entry.prefetch_due(age(90_000)), "the last tenth of 100 s");
        assert!(entry.claim_prefetch(age(90_000)));
        assert!(!entry.claim_prefetch(age(95_000)), "once per entry");
        let at = |ms| received + Duration::from_millis(ms);
        let window = Duration::from_secs(30);
        assert!(!entry.refresh_blocked(at(120_000), window));
        entry.refresh_failed_at(at(120_000));
        assert!(entry.refresh_blocked(at(149_999), window));
        assert!(!entry.refresh_blocked(at(150_000), window));
        assert!(
            !entry.prefetch_due(age(95_000)),
            "the failure kept the prefetch mark"
        );

        // The other order, on a fresh entry: the mark does not disturb the failure's time.
        let (_, entry) = entry_for("a.test.", 100, [1, 1, 1, 1]);
        let received = entry.received;
        let at = |ms| received + Duration::from_millis(ms);
        entry.refresh_failed_at(at(100_500));
        assert!(entry.claim_prefetch(age(100_600)));
        assert!(entry.refresh_blocked(at(130_499), window));
        assert!(!entry.refresh_blocked(at(130_500), window));
        // A failure past the 3.1 days the state holds is taken as that old: not blocked.
        let late = at(30 * 86_400_000);
        entry.refresh_failed_at(late);
        assert!(!entry.refresh_blocked(late, window));
    }

    #[test]
    fn an_entry_and_its_arc_header_fit_80_bytes() {
        // Every cached answer carries one: 96 bytes before the facts were packed and the
        // prefetch mark and refresh time shared a word (the memory benchmark's figure).
        assert!(size_of::<Entry>() <= 64, "{}", size_of::<Entry>());
    }

    #[test]
    fn failures_are_remembered_briefly_and_forgotten_on_success() {
        let cache = AnswerCache::new(10, POLICY, Duration::ZERO, Duration::from_secs(2));
        let now = Instant::now();
        cache.insert_failure(b"key", now);
        assert!(cache.recently_failed(b"key", now + Duration::from_millis(1999)));
        assert!(!cache.recently_failed(b"key", now + Duration::from_secs(2)));
        assert!(!cache.recently_failed(b"other", now));
    }

    /// An entry for `name` whose A record is `ip` with this TTL, and its key.
    fn entry_for(name: &str, ttl: u32, ip: [u8; 4]) -> (Vec<u8>, Arc<Entry>) {
        let client = client_query(name, RecordType::A, None);
        let (_, mut answer) = exchange(&client, vec![a(name, ttl, ip)], ResponseCode::NoError);
        let lifetime = POLICY.apply(&mut answer);
        let key = query::parse(&client).unwrap().key.as_bytes().to_vec();
        (key, Arc::new(Entry::new(answer, lifetime)))
    }

    /// The first address of the fresh entry `with_fresh` finds for `key`, if any.
    fn fresh_ip(cache: &AnswerCache, key: &[u8]) -> Option<std::net::IpAddr> {
        let now = Instant::now();
        cache
            .with_fresh(key, now, |entry, age, _| {
                entry.simple_addresses(age, false).unwrap()[0].1
            })
            .ok()
    }

    #[test]
    fn the_threads_memo_never_outlives_what_the_cache_holds() {
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        // Replaced: the new entry at once, on the thread that memoized the old one.
        let cache = AnswerCache::new(10, POLICY, Duration::ZERO, Duration::ZERO);
        let (key, old) = entry_for("m.test.", 300, [10, 0, 0, 1]);
        cache.insert(&key, &old);
        assert_eq!(fresh_ip(&cache, &key), ip("10.0.0.1"));
        assert_eq!(fresh_ip(&cache, &key), ip("10.0.0.1"), "from the memo");
        let (_, new) = entry_for("m.test.", 300, [10, 0, 0, 2]);
        cache.insert(&key, &new);
        assert_eq!(fresh_ip(&cache, &key), ip("10.0.0.2"));

        // Another cache with the same key: its own entry, never the first cache's.
        let other = AnswerCache::new(10, POLICY, Duration::ZERO, Duration::ZERO);
        assert_eq!(fresh_ip(&other, &key), None);
        let (_, theirs) = entry_for("m.test.", 300, [10, 0, 0, 3]);
        other.insert(&key, &theirs);
        assert_eq!(fresh_ip(&other, &key), ip("10.0.0.3"));
        assert_eq!(fresh_ip(&cache, &key), ip("10.0.0.2"));

        // Evicted: gone from the memo too.
        let tiny = AnswerCache::new(1, POLICY, Duration::ZERO, Duration::ZERO);
        let (k1, e1) = entry_for("one.test.", 300, [10, 0, 1, 1]);
        tiny.insert(&k1, &e1);
        assert_eq!(fresh_ip(&tiny, &k1), ip("10.0.1.1"));
        for i in 0..20u8 {
            let (k, e) = entry_for(&format!("other{i}.test."), 300, [10, 0, 2, i]);
            tiny.insert(&k, &e);
        }
        assert!(tiny.get(&k1).is_none(), "evicted from the cache");
        assert_eq!(fresh_ip(&tiny, &k1), None, "and not served from the memo");
    }

    #[test]
    fn an_entry_is_found_only_under_its_own_key() {
        // The cache finds entries by a hash of the key; the entry itself must be the key's:
        // the question (the name but for case: an upstream may echo 0x20 letters) and the
        // flags it was inserted with.
        let cache = AnswerCache::new(10, POLICY, Duration::ZERO, Duration::ZERO);
        let (key, entry) = entry_for("Mixed.Test.", 300, [10, 0, 0, 1]);
        assert!(
            key.starts_with(b"\x05mixed\x04test\x00"),
            "keys are lower-cased"
        );
        cache.insert(&key, &entry);
        assert!(entry.is_for(&key));
        assert_eq!(fresh_ip(&cache, &key), Some([10, 0, 0, 1].into()));
        let changed = |at: usize, byte: u8| {
            let mut k = key.clone();
            k[at] = byte;
            k
        };
        let last = key.len() - 1;
        for other in [
            changed(last, 1),      // DO set
            changed(last, 2),      // CD set
            changed(last - 3, 28), // AAAA
            changed(last - 1, 3),  // class CH
            changed(1, b'n'),      // another name of that length
            changed(0, 4),         // another name structure
            key[..last].to_vec(),  // cut short
            Vec::new(),
        ] {
            assert!(!entry.is_for(&other), "{other:?}");
            assert!(cache.get(&other).is_none(), "{other:?}");
        }
    }

    #[test]
    fn capacity_is_never_exceeded() {
        let cache = AnswerCache::new(50, POLICY, Duration::ZERO, Duration::ZERO);
        for i in 0..500u32 {
            let name = format!("n{i}.test.");
            let client = client_query(&name, RecordType::A, None);
            let (_, mut answer) = exchange(
                &client,
                vec![a(&name, 300, [1, 1, 1, 1])],
                ResponseCode::NoError,
            );
            let lifetime = POLICY.apply(&mut answer);
            let key = query::parse(&client).unwrap().key.as_bytes().to_vec();
            cache.insert(&key, &Arc::new(Entry::new(answer, lifetime)));
            assert!(cache.len() <= 50);
        }
    }
}
