//! The builder: every setting with its default and the reason for it, checked once, and the
//! one place where the parts are wired together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::{AnswerCache, TtlPolicy};
use crate::dedup::Dedup;
use crate::error::Error;
use crate::resolver::{Inner, Resolver};
use crate::upstream::{Pool, PoolConfig};

/// Default number of cached answers (CoreDNS's cache plugin holds 9984).
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;
/// Default ceiling on a positive answer's TTL: one day (Unbound, hickory).
pub const DEFAULT_MAX_TTL: u32 = 86_400;
/// Default ceiling on a negative answer's TTL: one hour (Unbound; RFC 2308 §5 suggests 1-3 h).
pub const DEFAULT_NEGATIVE_MAX_TTL: u32 = 3_600;
/// Default wait for one attempt before another upstream is asked too.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(400);
/// Default deadline for a whole query: well inside the 5 s a glibc client waits, so the
/// client gets our SERVFAIL (or answer) before it gives up on us.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default TCP connections per upstream: the EC2 (Nitro) resolver serves only two at once.
pub const DEFAULT_TCP_CONNECTIONS: usize = 2;
/// Default idle time after which a TCP connection to an upstream is closed.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Configures and builds a [`Resolver`]. Start from [`Resolver::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ResolverBuilder {
    upstreams: Vec<SocketAddr>,
    cache_capacity: usize,
    min_ttl: u32,
    max_ttl: u32,
    negative_max_ttl: u32,
    attempt_timeout: Duration,
    timeout: Duration,
    max_attempts: Option<usize>,
    tcp_connections: usize,
    tcp_idle_timeout: Duration,
}

impl Default for ResolverBuilder {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            min_ttl: 0,
            max_ttl: DEFAULT_MAX_TTL,
            negative_max_ttl: DEFAULT_NEGATIVE_MAX_TTL,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            max_attempts: None,
            tcp_connections: DEFAULT_TCP_CONNECTIONS,
            tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
        }
    }
}

impl ResolverBuilder {
    /// Adds an upstream server (repeatable). At least one is required.
    pub fn upstream(mut self, addr: SocketAddr) -> Self {
        self.upstreams.push(addr);
        self
    }

    /// Adds several upstream servers.
    pub fn upstreams(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.upstreams.extend(addrs);
        self
    }

    /// How many answers the cache holds (default 10,000). An answer of up to 1232 bytes
    /// counts as one, a larger (TCP) answer as one per 1232 bytes begun, so this also bounds
    /// the cache's memory.
    pub fn cache_capacity(mut self, entries: usize) -> Self {
        self.cache_capacity = entries;
        self
    }

    /// Floor on a positive answer's TTL, in seconds (default 0: the upstream's TTL).
    pub fn min_ttl(mut self, seconds: u32) -> Self {
        self.min_ttl = seconds;
        self
    }

    /// Ceiling on a positive answer's TTL, in seconds (default 86,400).
    pub fn max_ttl(mut self, seconds: u32) -> Self {
        self.max_ttl = seconds;
        self
    }

    /// Ceiling on a negative (NXDOMAIN, NODATA) answer's TTL, in seconds (default 3,600).
    pub fn negative_max_ttl(mut self, seconds: u32) -> Self {
        self.negative_max_ttl = seconds;
        self
    }

    /// How long one attempt waits before another upstream is asked as well (default 400 ms).
    /// The first attempt keeps listening: whichever valid answer comes first wins.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Deadline for a whole query, all attempts included (default 2 s). Past it the client
    /// gets SERVFAIL.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many attempts one query may make in all (default: twice the number of upstreams,
    /// at least 3).
    pub fn max_attempts(mut self, attempts: usize) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// TCP connections per upstream, used after truncated UDP answers (default 2).
    pub fn tcp_connections(mut self, connections: usize) -> Self {
        self.tcp_connections = connections;
        self
    }

    /// Idle time after which a TCP connection to an upstream is closed (default 10 s).
    pub fn tcp_idle_timeout(mut self, timeout: Duration) -> Self {
        self.tcp_idle_timeout = timeout;
        self
    }

    /// Checks the settings and builds the resolver. Queries need a tokio runtime (they
    /// spawn tasks); building does not.
    pub fn build(self) -> Result<Resolver, Error> {
        if self.upstreams.is_empty() {
            return Err(Error::NoUpstreams);
        }
        if self.cache_capacity == 0 {
            return Err(Error::Config("cache capacity must be at least 1"));
        }
        if self.min_ttl > self.max_ttl {
            return Err(Error::Config("min_ttl must not exceed max_ttl"));
        }
        if self.attempt_timeout.is_zero() || self.timeout.is_zero() {
            return Err(Error::Config("timeouts must be greater than zero"));
        }
        if self.max_attempts == Some(0) {
            return Err(Error::Config("max_attempts must be at least 1"));
        }
        if self.tcp_connections == 0 {
            return Err(Error::Config("tcp_connections must be at least 1"));
        }
        let policy = TtlPolicy {
            min_ttl: self.min_ttl,
            max_ttl: self.max_ttl,
            negative_max_ttl: self.negative_max_ttl,
        };
        let pool = PoolConfig {
            attempt_timeout: self.attempt_timeout,
            deadline: self.timeout,
            max_attempts: self
                .max_attempts
                .unwrap_or_else(|| (2 * self.upstreams.len()).max(3)),
            tcp_connections: self.tcp_connections,
            tcp_idle_timeout: self.tcp_idle_timeout,
        };
        Ok(Resolver::from_inner(Arc::new(Inner {
            cache: AnswerCache::new(self.cache_capacity, policy),
            dedup: Dedup::default(),
            pool: Pool::new(&self.upstreams, pool),
        })))
    }
}
