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
//!                                     upstream pool: pick, retry, one deadline
//!                                       ▼
//!                                     UDP (fresh connected socket) ─TC─▶ TCP (pooled)
//!                                       ▼
//!                                     answer: validate (RFC 5452 §9.1) ─▶ cache ─▶ callers
//! ```
//!
//! The modules, one concept each:
//! - `wire`: the few wire-format fields the hot path reads, bounds-checked, no allocation.
//! - `query`: a client's query, and the cache key (lower-cased question + DO/CD) built once.
//! - `answer`: a validated upstream answer stored as bytes with its TTL offsets, written
//!   out per client by copying and patching, never re-parsed on a hit.
//! - `cache`: quick_cache of answers (sharded, no global lock), and the TTL policy.
//! - `dedup`: concurrent identical queries share one spawned upstream query.
//! - `upstream`: the pool (random first pick, retry on failure, one deadline) over the
//!   UDP transport (one fresh connected socket per attempt) and the TCP transport
//!   (pooled, pipelined, used after TC=1).
//! - `resolver`, `config`, `lookup`, `service`: the public API, the builder that wires the
//!   parts together, lookups by name, and the `tower::Service` impl.
//!
//! # Behaviour worth knowing
//! - Positive answers are cached for the smallest TTL of their answer section; negative
//!   answers (NXDOMAIN, NODATA) for min(SOA TTL, SOA MINIMUM) (RFC 2308), and not at all
//!   without an SOA. Both are clamped by the builder's settings; TTLs over 2^31-1 are capped.
//!   Served TTLs count down. An entry is never served past its TTL.
//! - SERVFAIL, REFUSED and other failure codes are not cached: they make the pool try the
//!   other upstreams, and the client gets SERVFAIL only when all have failed (never
//!   REFUSED: musl's stub resolver ignores it and waits for its timeout).
//! - The upstream leg is UDP first even when the client asked over TCP (CoreDNS's
//!   `prefer_udp`); TCP is used only to repeat a truncated answer's query.
//! - OPT is hop-by-hop: upstream we advertise 1232 bytes; a client gets an OPT only if it
//!   sent one, and a UDP client gets TC=1 when the answer exceeds its buffer.
//!
//! # Limitations
//! - No health tracking, hedging, serve-stale or prefetch yet: each query starts afresh.
//! - No DNSSEC validation: DO, CD and AD are passed through.
//! - Names in [`Resolver::lookup`] are fully qualified; no search list is applied.
#![deny(missing_docs)]

mod answer;
mod cache;
mod config;
mod dedup;
mod discovery;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod lookup;
mod query;
mod resolver;
mod service;
mod stats;
mod upstream;
mod wire;

pub use config::*;
pub use error::{Error, UpstreamError};
pub use lookup::Lookup;
pub use resolver::{Resolver, Transport};
pub use stats::{Stats, UpstreamStats};
pub use upstream::Selection;

/// The wire-format library dnscore builds on, re-exported for record types and data.
pub use hickory_proto as proto;
