//! The resolver: a query flows cache → dedup → upstream pool, and the answer flows back
//! through the cache to every caller that asked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::ResolverBuilder;
use crate::cache::{AnswerCache, Entry, Freshness};
use crate::dedup::{Dedup, FlightResult, Role};
use crate::error::{Error, UpstreamError};
use crate::query::{self, OwnedQuery, Query};
use crate::replay;
use crate::stats::{Counters, Stats};
use crate::upstream::Pool;
use crate::wire::{MAX_MESSAGE_LEN, rcode, write_rcode_reply};

/// How the client's answer travels, which decides how large it may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// A datagram: at most the client's EDNS buffer size, or 512 bytes without EDNS; a larger
    /// answer comes back with TC=1 so the client asks again over TCP.
    Udp,
    /// A stream, or an in-process caller: up to 65,535 bytes.
    Tcp,
}

impl Transport {
    fn limit(self, query: &Query<'_>) -> usize {
        match self {
            Self::Udp => query.udp_limit(),
            Self::Tcp => MAX_MESSAGE_LEN,
        }
    }
}

/// What [`Resolver::answer_cached`] made of a query.
#[derive(Debug)]
pub enum Cached {
    /// `out` holds the response: a fresh cache hit, or a reply such as FORMERR. `qtype` is
    /// the question's type, when it could be read (for metrics).
    Answered {
        /// The question's type.
        qtype: Option<u16>,
    },
    /// No fresh answer: finish it with [`Resolver::resolve_miss`].
    Miss(Miss),
}

/// A query that found no fresh answer in the cache, parsed once and owning its bytes, to
/// be finished by [`Resolver::resolve_miss`] (on a task of its own, typically).
pub struct Miss {
    /// Boxed: the key it holds is the size of the longest name.
    query: Box<OwnedQuery>,
    transport: Transport,
    /// The expired entry the cache had, if any (RFC 8767).
    stale: Option<Arc<Entry>>,
}

impl Miss {
    /// The client's query bytes.
    pub fn query(&self) -> &[u8] {
        self.query.bytes()
    }

    /// The question's type.
    pub fn qtype(&self) -> u16 {
        self.query.qtype()
    }
}

impl std::fmt::Debug for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Miss")
            .field("qtype", &self.qtype())
            .field("transport", &self.transport)
            .field("stale", &self.stale.is_some())
            .finish_non_exhaustive()
    }
}

/// Writes the response to `q` for what the resolver found: the answer, or SERVFAIL.
fn write_result(
    q: &Query<'_>,
    transport: Transport,
    result: Result<Answered, Error>,
    out: &mut Vec<u8>,
) -> Served {
    match result {
        Ok((answer, freshness, upstream)) => {
            let stale = freshness == Freshness::Stale;
            // The coarse clock: the age is counted in whole seconds, never less than it is.
            answer.write_response(q, crate::clock::now(), transport.limit(q), stale, out);
            if stale {
                Served::Stale
            } else {
                Served::Fresh { upstream }
            }
        }
        Err(err) => {
            tracing::debug!(%err, "answering SERVFAIL");
            write_rcode_reply(&q.header, rcode::SERVFAIL, Some(q.question()), q.edns, out);
            Served::Failed
        }
    }
}

/// An answer, how fresh, and the upstream it came from when it was fetched for this query.
pub(crate) type Answered = (Arc<Entry>, Freshness, Option<SocketAddr>);

/// What [`Resolver::resolve_miss`] answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// A fresh answer: from `upstream` (also when this query joined one in flight for the
    /// same question), or `None` from the cache.
    Fresh {
        /// The upstream that answered.
        upstream: Option<SocketAddr>,
    },
    /// The expired cache entry, served stale (RFC 8767): the upstreams failed or were slow.
    Stale,
    /// SERVFAIL: no upstream answered, and there was nothing stale to serve.
    Failed,
}

/// A caching DNS resolver that forwards to upstream servers.
///
/// Cheap to clone (one `Arc`); clones share the cache, the in-flight queries and the
/// upstream connections. Queries must run inside a tokio runtime; the background work
/// they start (probes of dead upstreams, prefetches) runs on theirs, and a probe lost
/// with a runtime that ended is started again by the next query.
#[derive(Clone)]
pub struct Resolver {
    pub(crate) inner: Arc<Inner>,
}

/// The parts, wired together by [`ResolverBuilder::build`].
pub(crate) struct Inner {
    pub(crate) cache: AnswerCache,
    pub(crate) dedup: Dedup,
    pub(crate) pool: Pool,
    pub(crate) counters: Counters,
    pub(crate) serving: Serving,
    pub(crate) names: crate::lookup::Names,
}

/// How answers are served around the cache (RFC 8767 serve-stale, prefetch).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Serving {
    /// How long a client waits for an upstream before it gets a stale answer (RFC 8767's
    /// client response timer).
    pub(crate) stale_answer_timeout: Duration,
    /// After a failed refresh of a stale entry, how long to serve it stale without trying
    /// again (RFC 8767 §4 stale-refresh-time).
    pub(crate) stale_refresh_window: Duration,
    /// Refresh entries asked for in the last tenth of their TTL.
    pub(crate) prefetch: bool,
    /// Serve clients asking with RD without the authority NS set and glue.
    pub(crate) minimal_responses: bool,
    /// RRSIGs kept per RRset of an upstream answer.
    pub(crate) max_rrsigs: usize,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("cached", &self.inner.cache.len())
            .field("in_flight", &self.inner.dedup.len())
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A builder with the defaults; add at least one upstream.
    pub fn builder() -> ResolverBuilder {
        ResolverBuilder::default()
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// Answers a wire-format query with a wire-format response: the caller's ID, RD and CD
    /// flags and question (letter case included) are echoed. The answer may be up to 65,535
    /// bytes (see [`Transport::Tcp`]); use [`resolve_with`](Self::resolve_with) to answer a
    /// datagram client.
    ///
    /// Upstream failures become a SERVFAIL response; a malformed query gets FORMERR when its
    /// header can be read. The only error is [`Error::Malformed`]: drop the packet.
    pub async fn resolve(&self, query: &[u8]) -> Result<Vec<u8>, Error> {
        self.resolve_with(query, Transport::Tcp).await
    }

    /// Like [`resolve`](Self::resolve), for a client on the given transport.
    pub async fn resolve_with(&self, query: &[u8], transport: Transport) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.resolve_into(query, transport, &mut out).await?;
        Ok(out)
    }

    /// Like [`resolve_with`](Self::resolve_with), writing the response into `out` (cleared
    /// first), so a server can reuse one buffer.
    pub async fn resolve_into(
        &self,
        query: &[u8],
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let now = crate::clock::now();
        if self.replay(query, transport, now, out).is_some() {
            return Ok(());
        }
        let q = match query::parse(query) {
            Ok(q) => q,
            Err(rejection) if rejection.write(query, out) => return Ok(()),
            Err(_) => return Err(Error::Malformed),
        };
        // A fresh hit is written at once (through the thread's memo); else the key is
        // looked up no more: its stale entry, if any, goes with it to the upstreams.
        if let Err(stale) = self.try_hit(&q, transport, now, out) {
            let result = self.complete(q.key.as_bytes(), stale).await;
            write_result(&q, transport, result, out);
        }
        Ok(())
    }

    /// Answers from the cache alone, without waiting: `Ok(true)` when `out` holds the
    /// response (a cache hit, or FORMERR and the like), `Ok(false)` when the query needs an
    /// upstream (call [`resolve_into`](Self::resolve_into)), [`Error::Malformed`] when the
    /// packet is to be dropped. A server answers hits inline this way and spawns a task only
    /// for the rest; [`answer_cached`](Self::answer_cached) also keeps the parsed query of a
    /// miss, so that it is not parsed and looked up again.
    pub fn resolve_cached(
        &self,
        query: &[u8],
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Result<bool, Error> {
        let now = crate::clock::now();
        if self.replay(query, transport, now, out).is_some() {
            return Ok(true);
        }
        let q = match query::parse(query) {
            Ok(q) => q,
            Err(rejection) if rejection.write(query, out) => return Ok(true),
            Err(_) => return Err(Error::Malformed),
        };
        Ok(self.try_hit(&q, transport, now, out).is_ok())
    }

    /// Answers from the cache alone, without waiting, like
    /// [`resolve_cached`](Self::resolve_cached); a miss comes back parsed, with what the
    /// cache had (a stale entry), to be finished by [`resolve_miss`](Self::resolve_miss)
    /// on a task: the query is parsed once and looked up once. [`Error::Malformed`]: drop
    /// the packet.
    pub fn answer_cached(
        &self,
        query: &[u8],
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Result<Cached, Error> {
        let now = crate::clock::now();
        if let Some(qtype) = self.replay(query, transport, now, out) {
            return Ok(Cached::Answered { qtype: Some(qtype) });
        }
        let q = match query::parse(query) {
            Ok(q) => q,
            Err(rejection) if rejection.write(query, out) => {
                return Ok(Cached::Answered {
                    qtype: crate::message::question_type(query),
                });
            }
            Err(_) => return Err(Error::Malformed),
        };
        Ok(match self.try_hit(&q, transport, now, out) {
            Ok(()) => Cached::Answered {
                qtype: Some(q.qtype()),
            },
            Err(stale) => Cached::Miss(Miss {
                query: Box::new(q.to_owned()),
                transport,
                stale,
            }),
        })
    }

    /// Finishes a query that [`answer_cached`](Self::answer_cached) found no fresh answer
    /// for, writing the response into `out` (cleared first): from the upstreams, or stale,
    /// or SERVFAIL.
    pub async fn resolve_miss(&self, miss: Miss, out: &mut Vec<u8>) -> Served {
        let q = miss.query.view();
        let result = self.complete(q.key.as_bytes(), miss.stale).await;
        write_result(&q, miss.transport, result, out)
    }

    /// A query this thread answered from the cache a moment ago, byte for byte but for its
    /// ID, is answered again by a copy (see [`replay`]) and counted as a hit: its type.
    #[inline]
    fn replay(
        &self,
        query: &[u8],
        transport: Transport,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<u16> {
        let mut qtype = None;
        replay::replay(self.inner.cache.id(), query, transport, now, out, |hit| {
            self.on_hit(hit.key, hit.entry, hit.age);
            qtype = Some(hit.qtype);
        });
        qtype
    }

    /// A fresh hit at `now` is written to `out` (and kept for [`replay`] when this thread
    /// hit it before); else the stale entry, if the cache has one.
    fn try_hit(
        &self,
        q: &Query<'_>,
        transport: Transport,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), Option<Arc<Entry>>> {
        let key = q.key.as_bytes();
        let cache = &self.inner.cache;
        cache.with_fresh(key, now, |answer, age, again| {
            self.on_hit(key, answer, age);
            answer.write_aged(q, age, transport.limit(q), false, out);
            // Kept from a name's second hit on this thread on: a thread answering many
            // names in turn does not pay for copies it would never replay.
            if again {
                replay::keep(
                    cache.id(),
                    q.msg,
                    transport,
                    key,
                    answer,
                    age,
                    q.qtype(),
                    out,
                );
            }
        })
    }

    /// Counts a hit and starts a prefetch if the entry is near its end.
    #[inline]
    pub(crate) fn on_hit(&self, key: &[u8], answer: &Entry, age: Duration) {
        self.inner.counters.hits.add(1);
        // Outside a runtime (a caller's own thread) there is nowhere to run it: skip, and
        // leave the entry unclaimed for a caller inside one. The runtime is looked up only
        // near the end of the TTL (it clones the handle's Arc: not on every hit).
        if self.inner.serving.prefetch
            && answer.prefetch_due(age)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
            && answer.claim_prefetch(age)
        {
            self.inner.counters.prefetches.add(1);
            let (resolver, key) = (self.clone(), key.to_vec());
            runtime.spawn(async move {
                let _ = resolver.fetch(&key).await;
            });
        }
    }

    /// The answer for a key the cache had no fresh answer for (`stale`: what it had).
    pub(crate) async fn complete(
        &self,
        key: &[u8],
        stale: Option<Arc<Entry>>,
    ) -> Result<Answered, Error> {
        // The coarse clock (never behind the fine one): a failure or a failed refresh is
        // remembered at most two ticks (8 ms) less long.
        let now = crate::clock::now();
        let counters = &self.inner.counters;
        counters.misses.add(1);
        match stale {
            Some(stale) => {
                let serving = self.inner.serving;
                if !stale.refresh_blocked(now, serving.stale_refresh_window) {
                    let fetched =
                        tokio::time::timeout(serving.stale_answer_timeout, self.fetch(key)).await;
                    match fetched {
                        Ok(Ok((fresh, from))) => return Ok((fresh, Freshness::Fresh, Some(from))),
                        Ok(Err(_)) => stale.refresh_failed_at(Instant::now()),
                        // The flight goes on and fills the cache when it lands.
                        Err(_slow) => {}
                    }
                }
                counters.stale.add(1);
                Ok((stale, Freshness::Stale, None))
            }
            None => {
                if self.inner.cache.recently_failed(key, now) {
                    counters.failures.add(1);
                    return Err(Error::NoAnswer(Arc::new(UpstreamError::RecentlyFailed)));
                }
                let fetched = self.fetch(key).await;
                if let Err(err) = &fetched {
                    match err {
                        Error::Overloaded => counters.overloaded.add(1),
                        _ => counters.failures.add(1),
                    }
                }
                fetched.map(|(answer, from)| (answer, Freshness::Fresh, Some(from)))
            }
        }
    }

    /// Joins or starts the flight for `key`; the flight asks the pool, applies the TTL
    /// policy and fills the cache (or remembers the failure) before anyone is answered.
    async fn fetch(&self, key: &[u8]) -> FlightResult {
        let inner = Arc::clone(&self.inner);
        let flight = move |key: Arc<[u8]>| async move {
            match inner.pool.query(&key).await {
                Ok((mut answer, from)) => {
                    let serving = &inner.serving;
                    answer.scrub(serving.max_rrsigs, serving.minimal_responses);
                    let lifetime = inner.cache.policy().apply(&mut answer);
                    let entry = Arc::new(Entry::new(answer, lifetime));
                    inner.cache.insert(&key, &entry);
                    Ok((entry, from))
                }
                Err(err) => {
                    let now = Instant::now();
                    inner.cache.insert_failure(&key, now);
                    // A stale entry is then served at once, without asking again, for a
                    // while (RFC 8767 §4), even to clients that gave up waiting earlier.
                    if let Some((stale, Freshness::Stale, _)) = inner.cache.lookup(&key, now) {
                        stale.refresh_failed_at(now);
                    }
                    Err(Error::NoAnswer(Arc::new(err)))
                }
            }
        };
        let joins = &self.inner.counters.joins;
        self.inner
            .dedup
            .run(key, flight, |role| {
                if role == Role::Joined {
                    joins.add(1);
                }
            })
            .await
    }

    /// Replaces the upstream list, keeping the state of upstreams that stay. Queries
    /// outstanding on removed upstreams are re-driven to the others at once; the cache is
    /// kept. An empty list is refused.
    pub fn set_upstreams(&self, upstreams: &[SocketAddr]) -> Result<(), Error> {
        if upstreams.is_empty() {
            return Err(Error::NoUpstreams);
        }
        self.inner.pool.set_upstreams(upstreams);
        Ok(())
    }

    /// Changes how many answers the cache holds (as
    /// [`ResolverBuilder::cache_capacity`]), keeping the answers that fit.
    pub fn set_cache_capacity(&self, entries: usize) {
        self.inner.cache.set_capacity(entries);
    }

    /// The current upstream addresses, in order.
    pub fn upstream_addrs(&self) -> Vec<SocketAddr> {
        self.inner.pool.addrs()
    }

    /// A snapshot of the counters and of each upstream's state.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            cache_hits: c.hits.get(),
            cache_misses: c.misses.get(),
            stale_answers: c.stale.get(),
            prefetches: c.prefetches.get(),
            dedup_joins: c.joins.get(),
            overloaded: c.overloaded.get(),
            failures: c.failures.get(),
            cache_entries: self.inner.cache.len(),
            in_flight: self.inner.dedup.len(),
            retries_refused: self.inner.pool.retries_refused(),
            upstreams: self.inner.pool.stats(),
        }
    }

    /// How many answers are cached (expired ones included until they are evicted).
    pub fn cache_len(&self) -> usize {
        self.inner.cache.len()
    }

    /// How many distinct upstream queries are in flight.
    pub fn in_flight(&self) -> usize {
        self.inner.dedup.len()
    }
}
