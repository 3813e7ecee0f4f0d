//! A DNS cache and careful upstream client that lives inside the application's pod.
//!
//! On Kubernetes every UDP query from a pod to the kube-dns Service creates a conntrack
//! entry on the node, and a query in flight to an evicted CoreDNS pod is lost until the
//! client's stub resolver times out. `dnscore` answers repeated questions from an
//! in-process cache, sends one upstream query for many identical ones, and retries on
//! another upstream at once when one vanishes.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), dnscore::Error> {
//! use dnscore::Resolver;
//!
//! let resolver = Resolver::builder()
//!     .upstream("10.100.0.10:53".parse().unwrap())
//!     .build()?;
//! let addrs = resolver.lookup_ip("kubernetes.default.svc.cluster.local").await?;
//! # Ok(()) }
//! ```
//!
//! # The flow
//!
//! A query flows one way and the answer comes back the same way:
//!
//! ```text
//! resolve(&[u8]) / lookup ─▶ query ─▶ cache ──hit──▶ answer (ID, flags, TTLs patched)
//!                                       │ miss
//!                                       ▼
//!                                     dedup (one flight per key)
//!                                       ▼
//!                                     upstream pool: pick, retry budget, hedge, re-drive, one deadline
//!                                       ▼
//!                                     UDP (few sticky connected sockets) ─TC─▶ TCP (pooled)
//!                                       ▼
//!                                     answer: validate (RFC 5452 §9.1) ─▶ cache ─▶ callers
//! ```
//!
//! The modules, one concept each:
//! - `wire`: the few wire-format fields the hot path reads, bounds-checked, no allocation.
//! - `query`: a client's query, and the cache key (lower-cased question + DO/CD) built once.
//! - `answer`: a validated upstream answer stored as bytes with its TTL offsets, written
//!   out per client by copying and patching, never re-parsed on a hit.
//! - `cache`: quick_cache of answers (sharded, no global lock), the TTL policy, the stale
//!   window and the briefly remembered failures.
//! - `replay`: a thread's last answers from the cache, copied out again for a query
//!   repeated byte for byte but for its ID while its entry is cached and of the same age in
//!   whole seconds (what writing it again would give, without parsing or a lookup).
//! - `clock`: the clock a hit reads (Linux's coarse monotonic clock, a few ns; never
//!   behind the fine clock, at most two kernel ticks ahead).
//! - `dedup`: concurrent identical queries share one spawned upstream query; bounded.
//! - `upstream`: the pool, which runs each query's race of attempts (`upstream::race`, a
//!   state machine: replacement, retry, hedge, re-drive, one deadline) within a pool-wide
//!   retry budget (`upstream::budget`), picking upstreams by a selection policy
//!   (`upstream::select`) from what `upstream::health` knows (SRTT, failures; probes in
//!   `upstream::probe`), over the UDP transport (`upstream::udp`: a few sticky connected
//!   sockets per upstream, retired on any doubt) and the TCP transport (pooled, pipelined,
//!   used after TC=1 or forged UDP answers).
//! - `resolver`, `config`, `lookup`, `service`, `discovery`, `stats`: the public API, the
//!   builder that wires the parts together, lookups by name (search list, `ndots`, hosts
//!   file first, as glibc; `lookup::memo`: a thread's last lookups, handed out again while
//!   their cache entry holds), the `tower::Service` impl, upstreams followed by name, and
//!   the counters.
//! - [`resolv_conf`] and `hosts`: the system's configuration files, read as glibc reads
//!   them ([`ResolverBuilder::from_system_conf`]); the hosts file re-read when it changes.
//! - `adapters` (features `reqwest`, `hyper-util`, `aws`, none on by default): the resolver
//!   as the DNS hook of reqwest, hyper-util's `HttpConnector` (tonic) and the AWS SDK.
//!
//! # Behaviour worth knowing
//! - Positive answers are cached for the smallest TTL of their answer section; negative
//!   answers (NXDOMAIN, NODATA) for min(SOA TTL, SOA MINIMUM) (RFC 2308), and not at all
//!   without an SOA. Both are clamped by the builder's settings; TTLs over 2^31-1 are capped.
//!   Answers about names under the Kubernetes cluster domain (`cluster.local`) live at least
//!   30 s (`cluster_min_ttl`; CoreDNS gives them 5 s, and a cache in every pod refreshing
//!   every 5 s would ask CoreDNS many times what one node cache asks), so a re-created or
//!   headless Service's new addresses may be seen up to 30 s late. Served TTLs count down. An entry is never served past its TTL, except stale under
//!   RFC 8767 (below) when no upstream answers in time.
//! - SERVFAIL, REFUSED and other failure codes make the pool try the other upstreams; the
//!   client gets SERVFAIL only when all have failed (never REFUSED: musl's stub resolver
//!   ignores it and waits for its timeout), and that failure is remembered for 2 s (RFC 2308
//!   §7) so that a retry storm does not reach a failing server.
//! - Upstream failures are invisible while another upstream answers: a closed port or a
//!   reset fails the attempt at once and re-drives every query waiting on that upstream; a
//!   slow or silent upstream is hedged around after about its p95 RTT (for at most 5% of
//!   queries) or its adaptive timeout; three transport failures in a row mark it down
//!   (re-driving what waits on it) until a probe (`. IN NS`) is answered. With every
//!   upstream down they are asked anyway (a Service IP may reach a live endpoint from
//!   another socket; a dead one refuses at once).
//! - A failing upstream is not asked much harder: speculative sends (hedges, and re-sends
//!   after a timeout to an upstream not known to be dead) come out of one pool-wide retry
//!   budget (10% of first attempts plus 2 per second); a query sends at most twice to one
//!   upstream; earlier attempts keep listening; the attempt timeout follows the upstream's
//!   RTTs (at least 1.5 × SRTT) and backs off. When the budget is spent a timed-out query
//!   waits for what it sent.
//! - Upstream UDP goes over a few sticky connected sockets per upstream (4 by default),
//!   each carrying many queries matched by ID and question, so that a pod's misses cost the
//!   node a handful of conntrack entries, not one per miss. A socket is retired, and the
//!   next query opens one on a new port (a new 5-tuple, a new DNAT choice behind a Service
//!   IP), when its port is refused (its queries are re-driven), when an attempt on it times
//!   out (if it has answered nothing since, its other queries are sent again elsewhere at
//!   once: its conntrack entry may lead to a dead endpoint), on a burst of forged or mismatched
//!   datagrams (its queries go over TCP), and after 4096 queries or a minute. A retry goes
//!   from the socket answered most recently, if that was since the latest query lost on
//!   any of them and none of its queries is overdue or long unanswered; else from a new
//!   port. An answer to a query given up moments ago is late, not forged, and does not
//!   count toward a burst.
//!   `upstream_sockets(0)` opens a fresh socket per attempt instead.
//! - Only what belongs to the question is cached and passed on (once, before an answer is
//!   cached; Unbound's scrubber is the model): the answer section keeps the question's name
//!   and its CNAME chain, the authority section one SOA and one NS set above that name and
//!   the DNSSEC proofs of their zone, the additional section the glue of kept NS, MX and SRV
//!   records; at most 8 RRSIGs per RRset (`max_rrsigs`). Clients asking with RD (stub
//!   resolvers) get minimal responses, without the authority NS set and glue
//!   (`minimal_responses`).
//! - Serve-stale (RFC 8767): when no upstream answers within 1.8 s, an answer expired less
//!   than a day ago is served with TTL 30 and an Extended DNS Error "Stale Answer"; after a
//!   failed refresh it is served at once for 30 s. Entries asked for in the last tenth of
//!   their TTL are refreshed in the background, once.
//! - Bounded: the cache by entries (and so bytes), flights in flight (4096) and callers per
//!   flight (4096); past those bounds a query gets SERVFAIL at once.
//! - The upstream leg is UDP first even when the client asked over TCP (CoreDNS's
//!   `prefer_udp`); TCP is used only to repeat a truncated answer's query.
//! - OPT is hop-by-hop: upstream we advertise 1232 bytes; a client gets an OPT only if it
//!   sent one, and a UDP client gets TC=1 when the answer exceeds its buffer.
//!
//! # Security: sticky sockets and spoofing
//! A fresh random port per query makes an off-path spoofer guess ~16 bits of port besides
//! the 16-bit ID (RFC 5452 §9.2). Sticky sockets give most of the port's share up while a
//! socket lives: the spoofer still needs the ID (random, unique among the socket's
//! outstanding queries, at most 256 of them) and which of the few ports is in use, and
//! wins only for a question in flight (dedup keeps one query per question, RFC 5452 §5).
//! What makes up for it: port rotation (4096 queries or a minute), a socket that receives a
//! burst of mismatched datagrams is retired and its queries asked over TCP (as BIND and
//! pdns-recursor do), and, as an option, 0x20 case randomisation
//! ([`ResolverBuilder::case_randomization`], Unbound's `use-caps-for-id`), which adds a bit
//! per letter of the name. On Kubernetes the path to CoreDNS is the node's own network,
//! where an attacker would need a foothold on the node or the pod network. Where that
//! trade-off is wrong, `upstream_sockets(0)` restores a fresh port per attempt, at one
//! conntrack entry per upstream query. An upstream that does not echo 0x20 case is asked
//! in plain case from then on; someone who guessed an ID and port can turn 0x20 off that
//! way (and gains nothing else).
//!
//! # Limitations
//! - No DNSSEC validation: DO, CD and AD are passed through.
//! - A query sends at most twice to one upstream: with a single upstream that is a
//!   Service IP, a retry that also meets a dead endpoint waits until the deadline. The
//!   retry goes from a socket answered since the latest loss, so this takes every socket
//!   leading to the dead endpoint *and* the new port that the retry then opens.
//! - An answer larger than 4 KiB over UDP (an upstream ignoring our 1232-byte EDNS size) is
//!   asked again over TCP rather than read.
//! - [`Resolver::lookup`] and [`Resolver::lookup_ip`] apply the search list as glibc does,
//!   with the differences listed at [`Resolver::lookup`] (a failing candidate ends the search, as in musl;
//!   `nsswitch.conf` is not read); wire queries are never rewritten.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(any(feature = "reqwest", feature = "hyper-util", feature = "aws"))]
pub mod adapters;
mod answer;
mod cache;
mod clock;
mod config;
mod dedup;
pub mod defaults;
mod discovery;
mod error;
#[cfg(test)]
mod fixtures;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod hosts;
mod lookup;
pub mod message;
mod query;
mod replay;
pub mod resolv_conf;
mod resolver;
mod scrub;
mod service;
pub mod settings;
mod stats;
mod upstream;
mod wire;

pub use config::*;
pub use error::{Error, UpstreamError};
pub use lookup::Lookup;
pub use resolver::{Cached, Miss, Resolver, Served, Transport};
pub use stats::{Stats, UpstreamStats};
pub use upstream::Selection;

/// The wire-format library dnscore builds on, re-exported for record types and data.
pub use hickory_proto as proto;
