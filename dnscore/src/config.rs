//! The builder: every setting with its default and the reason for it, checked once, and the
//! one place where the parts are wired together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::Name;

use crate::cache::{AnswerCache, ClusterFloor, TtlPolicy};
use crate::dedup::Dedup;
use crate::defaults;
use crate::error::Error;
use crate::hosts::Hosts;
use crate::lookup::Names;
use crate::resolv_conf::{self, MAX_NDOTS, ResolvConf};
use crate::resolver::{Inner, Resolver, Serving};
use crate::stats::Counters;
use crate::upstream::{Pool, PoolConfig, Selection};

/// Most sticky UDP sockets per upstream (each is a conntrack entry on the node).
const MAX_UPSTREAM_SOCKETS: usize = 64;
/// After a failed refresh of a stale entry, how long it is served stale without asking
/// again (RFC 8767 §4 stale-refresh-time, 30 s).
const STALE_REFRESH_WINDOW: Duration = Duration::from_secs(30);

/// Configures and builds a [`Resolver`]. Start from [`Resolver::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ResolverBuilder {
    pub(crate) upstreams: Vec<SocketAddr>,
    pub(crate) cache_capacity: usize,
    pub(crate) min_ttl: u32,
    pub(crate) max_ttl: u32,
    pub(crate) negative_min_ttl: u32,
    pub(crate) negative_max_ttl: u32,
    pub(crate) cluster_domain: String,
    pub(crate) cluster_min_ttl: u32,
    pub(crate) attempt_timeout: Duration,
    pub(crate) min_attempt_timeout: Duration,
    pub(crate) timeout: Duration,
    pub(crate) max_attempts: Option<usize>,
    pub(crate) max_failures: u32,
    pub(crate) probe_interval: Duration,
    pub(crate) max_probe_interval: Duration,
    pub(crate) hedge_share: f64,
    pub(crate) retry_budget: f64,
    pub(crate) selection: Selection,
    pub(crate) upstream_sockets: usize,
    pub(crate) case_randomization: bool,
    pub(crate) stale_answer_timeout: Duration,
    pub(crate) max_stale: Duration,
    pub(crate) failure_ttl: Duration,
    pub(crate) prefetch: bool,
    pub(crate) minimal_responses: bool,
    pub(crate) max_rrsigs: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) max_waiters: usize,
    pub(crate) tcp_connections: usize,
    pub(crate) tcp_idle_timeout: Duration,
    pub(crate) search: Vec<String>,
    pub(crate) ndots: u8,
    pub(crate) hosts_file: Option<PathBuf>,
}

impl Default for ResolverBuilder {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            cache_capacity: defaults::CACHE_CAPACITY,
            min_ttl: 0,
            max_ttl: defaults::MAX_TTL,
            negative_min_ttl: 0,
            negative_max_ttl: defaults::NEGATIVE_MAX_TTL,
            cluster_domain: defaults::CLUSTER_DOMAIN.to_string(),
            cluster_min_ttl: defaults::CLUSTER_MIN_TTL,
            attempt_timeout: defaults::ATTEMPT_TIMEOUT,
            min_attempt_timeout: defaults::MIN_ATTEMPT_TIMEOUT,
            timeout: defaults::TIMEOUT,
            max_attempts: None,
            max_failures: defaults::MAX_FAILURES,
            probe_interval: defaults::PROBE_INTERVAL,
            max_probe_interval: defaults::MAX_PROBE_INTERVAL,
            hedge_share: defaults::HEDGE_SHARE,
            retry_budget: defaults::RETRY_BUDGET,
            selection: Selection::LowestRtt,
            upstream_sockets: defaults::UPSTREAM_SOCKETS,
            case_randomization: false,
            stale_answer_timeout: defaults::STALE_ANSWER_TIMEOUT,
            max_stale: defaults::MAX_STALE,
            failure_ttl: defaults::FAILURE_TTL,
            prefetch: true,
            minimal_responses: true,
            max_rrsigs: defaults::MAX_RRSIGS,
            max_in_flight: defaults::MAX_IN_FLIGHT,
            max_waiters: defaults::MAX_WAITERS,
            tcp_connections: defaults::TCP_CONNECTIONS,
            tcp_idle_timeout: defaults::TCP_IDLE_TIMEOUT,
            search: Vec::new(),
            ndots: 1,
            hosts_file: None,
        }
    }
}

impl ResolverBuilder {
    /// A builder set up as the system's own resolver is: [`from_resolv_conf`] of
    /// `/etc/resolv.conf`, and [`hosts_file`] `/etc/hosts` when that exists (glibc goes on
    /// without one too).
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), dnscore::Error> {
    /// // In a pod: kube-dns as upstream, the namespace's search list, ndots:5, the hosts file.
    /// let resolver = dnscore::ResolverBuilder::from_system_conf()?.build()?;
    /// let addrs = resolver.lookup_ip("redis").await?; // redis.<namespace>.svc.cluster.local
    /// # Ok(()) }
    /// ```
    ///
    /// Errors: [`Error::ReadFile`] when a file exists but cannot be read.
    ///
    /// [`from_resolv_conf`]: Self::from_resolv_conf
    /// [`hosts_file`]: Self::hosts_file
    pub fn from_system_conf() -> Result<Self, Error> {
        let builder = Self::from_resolv_conf(Path::new(resolv_conf::SYSTEM_RESOLV_CONF))?;
        let hosts = Path::new(resolv_conf::SYSTEM_HOSTS);
        Ok(if hosts.exists() {
            builder.hosts_file(hosts)
        } else {
            builder
        })
    }

    /// A builder with the settings of the resolv.conf at `path` (see [`ResolvConf`] for
    /// what is read, and [`resolv_conf`](Self::resolv_conf) for how it maps onto dnscore's
    /// settings). Errors: [`Error::ReadFile`].
    pub fn from_resolv_conf(path: impl AsRef<Path>) -> Result<Self, Error> {
        Ok(Self::default().resolv_conf(&ResolvConf::read(path.as_ref())?))
    }

    /// Takes the settings of a parsed resolv.conf:
    /// - the nameservers as upstreams (added to any given already; 127.0.0.1:53 when the
    ///   file names none, as in glibc), the search list and `ndots` as
    ///   [`search`](Self::search) and [`ndots`](Self::ndots);
    /// - `rotate` as [`Selection::RoundRobin`];
    /// - `timeout:N` as the ceiling of one attempt's timeout, N seconds
    ///   ([`attempt_timeout`](Self::attempt_timeout); dnscore still adapts it to the
    ///   upstream's RTT below that), and as the whole query's deadline N × attempts
    ///   ([`timeout`](Self::timeout); attempts 2 when not given, as in glibc), the longest a
    ///   glibc client would wait for one nameserver; without `timeout:` dnscore's own
    ///   deadline (2 s) stays, since glibc's default (5 s a try) is what dnscore is there to
    ///   avoid;
    /// - `attempts:N` as [`max_attempts`](Self::max_attempts) N × nameservers (glibc's
    ///   number of sends).
    pub fn resolv_conf(mut self, conf: &ResolvConf) -> Self {
        let servers = conf.nameservers_or_local();
        if let Some(attempts) = conf.attempts {
            self.max_attempts = Some(attempts as usize * servers.len());
        }
        if let Some(timeout) = conf.timeout {
            self.attempt_timeout = timeout;
            self.min_attempt_timeout = self.min_attempt_timeout.min(timeout);
            self.timeout = timeout * conf.attempts.unwrap_or(2);
        }
        if conf.rotate {
            self.selection = Selection::RoundRobin;
        }
        self.upstreams.extend(servers);
        self.search.clone_from(&conf.search);
        self.ndots = conf.ndots;
        self
    }

    /// The search list for [`Resolver::lookup`] and [`Resolver::lookup_ip`] (default
    /// empty; replaces any given before): a name with fewer than [`ndots`](Self::ndots)
    /// dots is tried with each domain appended, in order, before it is tried as it is; one
    /// with more is tried as it is first, then with the domains; a name with a trailing dot
    /// only as it is. Wire queries ([`Resolver::resolve`]) are never changed.
    ///
    /// [`Resolver::lookup`]: crate::Resolver::lookup
    /// [`Resolver::lookup_ip`]: crate::Resolver::lookup_ip
    /// [`Resolver::resolve`]: crate::Resolver::resolve
    pub fn search<S: Into<String>>(mut self, domains: impl IntoIterator<Item = S>) -> Self {
        self.search = domains.into_iter().map(Into::into).collect();
        self
    }

    /// How many dots make a name be tried as it is before the search list (default 1, as
    /// in glibc; Kubernetes pods use 5; at most 15).
    pub fn ndots(mut self, ndots: u8) -> Self {
        self.ndots = ndots;
        self
    }

    /// A hosts file that [`Resolver::lookup_ip`] (and [`Resolver::lookup`] for A and AAAA)
    /// reads before DNS (default none). It is read when the resolver is built (an error
    /// then if it cannot be) and re-read when it changes, checked at most once a second.
    ///
    /// [`Resolver::lookup`]: crate::Resolver::lookup
    /// [`Resolver::lookup_ip`]: crate::Resolver::lookup_ip
    pub fn hosts_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.hosts_file = Some(path.into());
        self
    }

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

    /// Floor on a negative (NXDOMAIN, NODATA) answer's TTL, in seconds (default 0: the
    /// SOA's). A negative answer without an SOA is still not cached.
    pub fn negative_min_ttl(mut self, seconds: u32) -> Self {
        self.negative_min_ttl = seconds;
        self
    }

    /// Ceiling on a negative (NXDOMAIN, NODATA) answer's TTL, in seconds (default 3,600).
    pub fn negative_max_ttl(mut self, seconds: u32) -> Self {
        self.negative_max_ttl = seconds;
        self
    }

    /// The Kubernetes cluster domain (default `cluster.local`), whose names get
    /// [`cluster_min_ttl`](Self::cluster_min_ttl).
    pub fn cluster_domain(mut self, domain: impl Into<String>) -> Self {
        self.cluster_domain = domain.into();
        self
    }

    /// Floor on the TTL of answers, positive and negative (NXDOMAIN, NODATA), for names at
    /// or under the [cluster domain](Self::cluster_domain), in seconds (default 30; 0: none).
    /// The ceilings (`max_ttl`, `negative_max_ttl`) still apply, and a longer TTL is kept.
    ///
    /// CoreDNS answers for the cluster's names with TTL 5 s, so each pod's cache would ask
    /// again every 5 s for every name it uses; with many pods per node that is many times
    /// what one node cache asks (8.1× at 50 pods in `benches/cluster`, 1.34× with this
    /// floor). The price: a Service deleted and re-created (a new ClusterIP), a Service
    /// created after a name was asked (its NXDOMAIN is kept), and a headless Service's
    /// addresses after its pods change are seen up to this long after CoreDNS sees them.
    /// For a headless Service whose pods come and go often, lower it or set 0.
    pub fn cluster_min_ttl(mut self, seconds: u32) -> Self {
        self.cluster_min_ttl = seconds;
        self
    }

    /// Ceiling on one attempt's timeout (default 1.5 s), after which another upstream may be
    /// asked as well, within the retry budget. The timeout adapts to the upstream's RTT
    /// (SRTT + 4·RTTVAR, at least 1.5 × SRTT) between the floor and this ceiling; before the
    /// upstream's first answer it is 400 ms, within them. Earlier attempts keep listening:
    /// whichever valid answer comes first wins.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Floor on one attempt's adaptive timeout (default 50 ms).
    pub fn min_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.min_attempt_timeout = timeout;
        self
    }

    /// Transport failures in a row that mark an upstream down (default 3). A down upstream
    /// gets no queries until a health probe (`. IN NS`) is answered.
    pub fn max_failures(mut self, failures: u32) -> Self {
        self.max_failures = failures;
        self
    }

    /// First interval between health probes of a down upstream (default 500 ms), doubled
    /// after each failed probe up to [`max_probe_interval`](Self::max_probe_interval).
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Ceiling on the interval between health probes (default 10 s).
    pub fn max_probe_interval(mut self, interval: Duration) -> Self {
        self.max_probe_interval = interval;
        self
    }

    /// Share of queries that may send a hedge, a second copy to another upstream after
    /// about the first upstream's p95 RTT (default 0.05; 0 disables hedging).
    pub fn hedge_share(mut self, share: f64) -> Self {
        self.hedge_share = share;
        self
    }

    /// Retry budget (default 0.1): speculative sends, hedges and re-sends after a timeout
    /// to an upstream not known to be dead, allowed per first attempt, pool-wide, on top of
    /// a floor of 2 per second (at most 20 saved up). When it is spent a timed-out query
    /// keeps waiting for what it sent, up to its deadline, instead of sending again; the
    /// refusals are counted in [`Stats::retries_refused`](crate::Stats::retries_refused).
    /// Re-driving a query stranded on an upstream or socket known to be dead (port refused,
    /// socket closed, socket silent since a query timed out on it, upstream marked down or
    /// removed) is never refused. Whatever the budget, a query
    /// sends at most twice to one upstream.
    pub fn retry_budget(mut self, ratio: f64) -> Self {
        self.retry_budget = ratio;
        self
    }

    /// Sticky UDP sockets per upstream (default 4; 0 for a fresh socket per attempt). Each
    /// carries many queries at once, so a pod's misses cost the node a handful of conntrack
    /// entries instead of one per miss. A socket is retired, and replaced by one on a new
    /// port, when its port is refused, when an attempt on it times out, on a burst of
    /// forged or mismatched answers (its queries then go over TCP), and after 4096 queries
    /// or a minute. See the crate docs for the security trade-off.
    pub fn upstream_sockets(mut self, sockets: usize) -> Self {
        self.upstream_sockets = sockets;
        self
    }

    /// 0x20 case randomisation (default off; Unbound's `use-caps-for-id`): the letters of
    /// each UDP query's name are randomised, and an answer must echo them exactly, which
    /// adds a bit per letter that an off-path spoofer must guess. An upstream seen to
    /// answer in another case is asked in plain case from then on (the query that showed
    /// it is asked again at once).
    pub fn case_randomization(mut self, enabled: bool) -> Self {
        self.case_randomization = enabled;
        self
    }

    /// How attempts pick their upstream (default [`Selection::LowestRtt`]).
    pub fn selection(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// How long a client waits for the upstreams before it gets a stale answer, when the
    /// cache has an expired one (default 1.8 s, RFC 8767). A failed refresh serves stale at
    /// once.
    pub fn stale_answer_timeout(mut self, timeout: Duration) -> Self {
        self.stale_answer_timeout = timeout;
        self
    }

    /// How long past its TTL an answer may be served stale (default 1 day; zero disables
    /// serve-stale). Stale answers carry TTL 30 and an Extended DNS Error "Stale Answer".
    pub fn max_stale(mut self, age: Duration) -> Self {
        self.max_stale = age;
        self
    }

    /// How long a question that failed on every upstream is answered SERVFAIL without
    /// asking again (default 2 s; zero disables).
    pub fn failure_ttl(mut self, ttl: Duration) -> Self {
        self.failure_ttl = ttl;
        self
    }

    /// Whether clients asking with RD (stub resolvers) get minimal responses (default
    /// true; Unbound's `minimal-responses`, CoreDNS's `minimal`): the answer section, and
    /// the authority section's SOA and DNSSEC proofs, without the authority NS set and the
    /// additional glue, which stubs never read and which make answers larger (more TC=1 and
    /// TCP retries). A client asking without RD gets them.
    pub fn minimal_responses(mut self, enabled: bool) -> Self {
        self.minimal_responses = enabled;
        self
    }

    /// RRSIGs kept per RRset of an upstream answer (default 8, as Unbound): the rest are
    /// dropped before the answer is cached, so that a signature flood is not passed on to
    /// every validating client.
    pub fn max_rrsigs(mut self, max: usize) -> Self {
        self.max_rrsigs = max;
        self
    }

    /// Whether an entry asked for in the last tenth of its TTL is refreshed in the
    /// background, once (default true), so that popular names never miss.
    pub fn prefetch(mut self, enabled: bool) -> Self {
        self.prefetch = enabled;
        self
    }

    /// Bound on distinct upstream queries in flight (default 4096); past it, new questions
    /// get SERVFAIL at once.
    pub fn max_in_flight(mut self, queries: usize) -> Self {
        self.max_in_flight = queries;
        self
    }

    /// Bound on callers waiting on one upstream query (default 4096); past it, more callers
    /// for that question get SERVFAIL at once.
    pub fn max_waiters(mut self, callers: usize) -> Self {
        self.max_waiters = callers;
        self
    }

    /// Deadline for a whole query, all attempts included (default 2 s). Past it the client
    /// gets SERVFAIL.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many attempts one query may make in all (default: twice the number of upstreams,
    /// at least 6); each upstream is sent to at most twice per query, and retries after a
    /// timeout come out of the retry budget. Against a silent upstream the timeouts double
    /// from one attempt to the next (50, 100, 200 ms... from the floor).
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

    /// Checks the settings' values and ranges, as [`build`](Self::build) does, without
    /// building (the upstreams may still be missing).
    pub fn check(&self) -> Result<(), Error> {
        if self.cache_capacity == 0 {
            return Err(Error::Config("cache capacity must be at least 1"));
        }
        if self.min_ttl > self.max_ttl {
            return Err(Error::Config("min_ttl must not exceed max_ttl"));
        }
        if self.negative_min_ttl > self.negative_max_ttl {
            return Err(Error::Config(
                "negative_min_ttl must not exceed negative_max_ttl",
            ));
        }
        self.cluster_domain_wire()?;
        if self.attempt_timeout.is_zero() || self.timeout.is_zero() {
            return Err(Error::Config("timeouts must be greater than zero"));
        }
        if self.min_attempt_timeout > self.attempt_timeout {
            return Err(Error::Config(
                "min_attempt_timeout must not exceed attempt_timeout",
            ));
        }
        if self.max_failures == 0 || self.probe_interval.is_zero() {
            return Err(Error::Config(
                "max_failures and probe_interval must be greater than zero",
            ));
        }
        if !(0.0..=1.0).contains(&self.hedge_share) {
            return Err(Error::Config("hedge_share must be between 0 and 1"));
        }
        if !(0.0..=1.0).contains(&self.retry_budget) {
            return Err(Error::Config("retry_budget must be between 0 and 1"));
        }
        if self.max_in_flight == 0 || self.max_waiters == 0 {
            return Err(Error::Config(
                "max_in_flight and max_waiters must be at least 1",
            ));
        }
        if self.max_attempts == Some(0) {
            return Err(Error::Config("max_attempts must be at least 1"));
        }
        if self.tcp_connections == 0 {
            return Err(Error::Config("tcp_connections must be at least 1"));
        }
        if self.upstream_sockets > MAX_UPSTREAM_SOCKETS {
            return Err(Error::Config("upstream_sockets must be at most 64"));
        }
        if self.ndots > MAX_NDOTS {
            return Err(Error::Config("ndots must be at most 15"));
        }
        self.search_names()?;
        Ok(())
    }

    /// The cluster domain in wire form, lower case. Errors: [`Error::InvalidName`].
    fn cluster_domain_wire(&self) -> Result<Box<[u8]>, Error> {
        let invalid = || Error::InvalidName(Arc::from(self.cluster_domain.as_str()));
        let name = crate::settings::parse_domain(&self.cluster_domain).ok_or_else(invalid)?;
        let mut wire = [0u8; crate::wire::MAX_NAME_LEN + 1];
        match crate::lookup::host_name_wire(&name, &mut wire) {
            Some(Ok(len)) => Ok(wire[..len].into()),
            _ => Err(invalid()),
        }
    }

    /// The search list as absolute names. Errors: [`Error::InvalidName`].
    fn search_names(&self) -> Result<Vec<Name>, Error> {
        self.search
            .iter()
            .map(|d| {
                let mut name = Name::from_utf8(d.trim_end_matches('.'))
                    .map_err(|_| Error::InvalidName(Arc::from(d.as_str())))?;
                name.set_fqdn(true);
                Ok(name)
            })
            .collect()
    }

    /// Checks the settings and builds the resolver. Queries need a tokio runtime (they
    /// spawn tasks); building does not.
    pub fn build(self) -> Result<Resolver, Error> {
        if self.upstreams.is_empty() {
            return Err(Error::NoUpstreams);
        }
        self.check()?;
        let names = Names {
            search: self.search_names()?,
            ndots: self.ndots,
            hosts: self.hosts_file.as_deref().map(Hosts::open).transpose()?,
        };
        let policy = TtlPolicy {
            min_ttl: self.min_ttl,
            max_ttl: self.max_ttl,
            negative_min_ttl: self.negative_min_ttl,
            negative_max_ttl: self.negative_max_ttl,
            cluster: match self.cluster_min_ttl {
                0 => None,
                min_ttl => Some(ClusterFloor {
                    domain: self.cluster_domain_wire()?,
                    min_ttl,
                }),
            },
        };
        let pool = PoolConfig {
            min_attempt_timeout: self.min_attempt_timeout,
            attempt_timeout: self.attempt_timeout,
            deadline: self.timeout,
            max_attempts: self.max_attempts,
            max_failures: self.max_failures,
            probe_interval: self.probe_interval,
            max_probe_interval: self.max_probe_interval.max(self.probe_interval),
            hedge_share: self.hedge_share,
            retry_budget: self.retry_budget,
            selection: self.selection,
            upstream_sockets: self.upstream_sockets,
            case_randomization: self.case_randomization,
            tcp_connections: self.tcp_connections,
            tcp_idle_timeout: self.tcp_idle_timeout,
        };
        Ok(Resolver::from_inner(Arc::new(Inner {
            cache: AnswerCache::new(
                self.cache_capacity,
                policy,
                self.max_stale,
                self.failure_ttl,
            ),
            dedup: Dedup::new(self.max_in_flight, self.max_waiters),
            pool: Pool::new(&self.upstreams, pool),
            counters: Counters::default(),
            names,
            serving: Serving {
                stale_answer_timeout: self.stale_answer_timeout,
                stale_refresh_window: STALE_REFRESH_WINDOW,
                prefetch: self.prefetch,
                minimal_responses: self.minimal_responses,
                max_rrsigs: self.max_rrsigs,
            },
        })))
    }
}
