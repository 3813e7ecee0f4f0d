//! The resolver: a query flows cache → dedup → upstream pool, and the answer flows back
//! through the cache to every caller that asked.

use std::sync::Arc;

use tokio::time::Instant;

use crate::ResolverBuilder;
use crate::answer::Answer;
use crate::cache::AnswerCache;
use crate::dedup::Dedup;
use crate::error::Error;
use crate::query::{self, Query};
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

/// A caching DNS resolver that forwards to upstream servers.
///
/// Cheap to clone (one `Arc`); clones share the cache, the in-flight queries and the
/// upstream connections. Queries must run inside a tokio runtime.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

/// The parts, wired together by [`ResolverBuilder::build`].
pub(crate) struct Inner {
    pub(crate) cache: AnswerCache,
    pub(crate) dedup: Dedup,
    pub(crate) pool: Pool,
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
        let q = match query::parse(query) {
            Ok(q) => q,
            Err(rejection) if rejection.write(query, out) => return Ok(()),
            Err(_) => return Err(Error::Malformed),
        };
        let limit = transport.limit(&q);
        let now = Instant::now();
        if let Some(answer) = self.inner.cache.get(q.key.as_bytes(), now) {
            answer.write_response(&q, now, limit, out);
            return Ok(());
        }
        match self.fetch(&q).await {
            Ok(answer) => answer.write_response(&q, Instant::now(), limit, out),
            Err(err) => {
                tracing::debug!(%err, "answering SERVFAIL");
                write_rcode_reply(&q.header, rcode::SERVFAIL, Some(q.question()), q.edns, out);
            }
        }
        Ok(())
    }

    /// Answers from the cache alone, without waiting: `Ok(true)` when `out` holds the
    /// response (a cache hit, or FORMERR and the like), `Ok(false)` on a cache miss (call
    /// [`resolve_into`](Self::resolve_into)), [`Error::Malformed`] when the packet is to be
    /// dropped. A server answers hits inline this way and spawns a task only for misses.
    pub fn resolve_cached(
        &self,
        query: &[u8],
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Result<bool, Error> {
        let q = match query::parse(query) {
            Ok(q) => q,
            Err(rejection) if rejection.write(query, out) => return Ok(true),
            Err(_) => return Err(Error::Malformed),
        };
        let now = Instant::now();
        match self.inner.cache.get(q.key.as_bytes(), now) {
            Some(answer) => {
                answer.write_response(&q, now, transport.limit(&q), out);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The answer for a parsed query: from the cache, or from the one flight for its key.
    pub(crate) async fn answer(&self, q: &Query<'_>) -> Result<Arc<Answer>, Error> {
        match self.inner.cache.get(q.key.as_bytes(), Instant::now()) {
            Some(answer) => Ok(answer),
            None => self.fetch(q).await,
        }
    }

    /// Joins or starts the flight for `q`'s key; the flight asks the pool, applies the TTL
    /// policy and fills the cache before anyone is answered.
    async fn fetch(&self, q: &Query<'_>) -> Result<Arc<Answer>, Error> {
        let inner = Arc::clone(&self.inner);
        self.inner
            .dedup
            .run(q.key.as_bytes(), move |key| async move {
                let mut answer = inner
                    .pool
                    .query(&key)
                    .await
                    .map_err(|e| Error::NoAnswer(Arc::new(e)))?;
                inner.cache.policy().apply(&mut answer);
                let answer = Arc::new(answer);
                inner.cache.insert(&key, &answer);
                Ok(answer)
            })
            .await
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
