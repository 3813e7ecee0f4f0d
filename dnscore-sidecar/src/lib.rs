//! The dnscore sidecar's server: serves a [`Resolver`] over UDP and TCP on sockets the caller
//! has bound, until a shutdown future completes. The binary (`main.rs`) only reads its
//! configuration, binds, and turns signals into the lameduck-then-shutdown sequence.
//!
//! Cache hits are answered inline in the receive loop ([`udp`]: batched system calls);
//! only misses spawn a task. Several UDP sockets (`SO_REUSEPORT`, one per worker) spread
//! the load over the cores. TCP connections are pipelined (RFC 7766 §6.2.1.1): each query
//! is answered as soon as its answer is ready, in any order.
//!
//! Both transports take one step per query (`Context::answer_now`, then
//! `Context::resolve_later` for a miss): the query is parsed and looked up once; a miss is
//! handed, parsed, to a task.
//!
//! Modules: [`udp`] and [`tcp`] (the servers), [`access`] (who may ask), [`metrics`] and
//! [`admin`] (`/metrics`, `/health`, `/ready`), [`config`] (flags, environment, TOML file),
//! [`resolv_conf`] (default upstreams), [`startup`] (the first question, loop detection,
//! warm names).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod cert;
pub mod config;
pub mod doctor;
pub mod inject;
pub mod metrics;
pub mod ratelimit;
pub mod resolv_conf;
pub mod startup;
pub mod tcp;
pub mod udp;
pub mod webhook;

pub use tcp::{MAX_PIPELINED, MAX_TCP_CONNECTIONS, TCP_IDLE_TIMEOUT, serve_stream};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dnscore::message::{rcode, rtype};
use dnscore::{Cached, Miss, Resolver, Served, Transport};
use tokio::net::{TcpListener, UdpSocket};

use access::Access;
use metrics::{Metrics, Protocol, QueryCounters, Waiting};

/// How long in-flight queries may take to finish after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Everything the server needs besides its sockets.
#[derive(Clone, Debug)]
pub struct Context {
    /// The resolver that answers.
    pub resolver: Resolver,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Who may ask.
    pub access: Arc<Access>,
    /// Queries per second per client over UDP, if limited.
    pub rate_limit: Option<u32>,
    /// The loop probe to watch for among the misses, if any.
    pub loop_probe: Option<Arc<startup::LoopProbe>>,
    /// The share of queries written to the query log (`--log-queries`), if any.
    pub query_log: Option<f64>,
}

impl Context {
    /// Loopback clients only, fresh metrics.
    pub fn new(resolver: Resolver) -> Self {
        Self {
            resolver,
            metrics: Arc::default(),
            access: Arc::default(),
            rate_limit: None,
            loop_probe: None,
            query_log: None,
        }
    }

    /// The first half of the one step both transports take for each query: the answer
    /// that needs no upstream (a cache hit, or NOTIMP for ANY when bound beyond loopback),
    /// written to `out` and counted: `Ok(None)`. A miss comes back parsed, for
    /// [`resolve_later`](Self::resolve_later); `Err`: drop the packet.
    fn answer_now(
        &self,
        query: &[u8],
        client: Option<SocketAddr>,
        protocol: Protocol,
        counters: &QueryCounters,
        out: &mut Vec<u8>,
    ) -> Result<Option<Miss>, dnscore::Error> {
        let logged = self.sampled();
        let transport = match protocol {
            Protocol::Udp => Transport::Udp,
            Protocol::Tcp => Transport::Tcp,
        };
        let cached = if self.access.refuses_any()
            && dnscore::message::question_type(query) == Some(rtype::ANY)
        {
            if !dnscore::message::reply_with_rcode(query, rcode::NOTIMP, out) {
                return Err(dnscore::Error::Malformed);
            }
            Cached::Answered {
                qtype: Some(rtype::ANY),
            }
        } else {
            self.resolver.answer_cached(query, transport, out)?
        };
        match cached {
            Cached::Answered { qtype } => {
                counters.count(protocol, qtype, out);
                if let Some(arrived) = logged {
                    log_query(client, protocol, query, out, ("hit", None), arrived);
                }
                Ok(None)
            }
            Cached::Miss(miss) => {
                if let Some(probe) = &self.loop_probe {
                    probe.check(miss.qtype(), query);
                }
                Ok(Some(miss))
            }
        }
    }

    /// The second half: resolves `miss` on a task of `runtime`, counts it (and shows it in
    /// the `in_flight` gauge meanwhile), and hands the response to `reply`; `hold` (a slot,
    /// a shutdown guard) is released after that.
    #[allow(clippy::too_many_arguments)]
    fn resolve_later<F>(
        &self,
        runtime: &tokio::runtime::Handle,
        miss: Miss,
        client: Option<SocketAddr>,
        protocol: Protocol,
        counters: &Arc<QueryCounters>,
        hold: impl Send + 'static,
        reply: impl FnOnce(Vec<u8>) -> F + Send + 'static,
    ) where
        F: Future<Output = ()> + Send,
    {
        let (resolver, counters) = (self.resolver.clone(), Arc::clone(counters));
        let waiting = Waiting::new(&self.metrics);
        let arrived = std::time::Instant::now();
        let logged = self.sampled();
        runtime.spawn(async move {
            let qtype = miss.qtype();
            let query = logged.map(|_| miss.query().to_vec());
            let mut out = Vec::with_capacity(512);
            let served = resolver.resolve_miss(miss, &mut out).await;
            counters.count(protocol, Some(qtype), &out);
            counters.observe(arrived.elapsed(), 1);
            if let (Some(arrived), Some(query)) = (logged, query) {
                let how = match served {
                    Served::Stale => ("stale", None),
                    Served::Fresh { upstream } => ("miss", upstream),
                    Served::Failed => ("miss", None),
                };
                log_query(client, protocol, &query, &out, how, arrived);
            }
            reply(out).await;
            drop((waiting, hold));
        });
    }

    /// When the query log takes this query: the time it is taken, to measure it.
    fn sampled(&self) -> Option<std::time::Instant> {
        let share = self.query_log?;
        (share >= 1.0 || rand::random::<f64>() < share).then(std::time::Instant::now)
    }
}

/// One line of the query log (target `dnscore::query`): client, protocol, name, type,
/// response code, how the cache took part (`hit`, `miss`, or `stale`: an expired entry
/// served because the upstreams failed or were slow), the upstream that answered a miss,
/// and the time to the answer. With `--log-format json` each is a JSON object.
fn log_query(
    client: Option<SocketAddr>,
    protocol: Protocol,
    query: &[u8],
    answer: &[u8],
    (cache, upstream): (&str, Option<SocketAddr>),
    arrived: std::time::Instant,
) {
    let name = dnscore::message::question_name(query).unwrap_or_default();
    let qtype = dnscore::message::question_type(query).map_or_else(String::new, |t| {
        dnscore::proto::rr::RecordType::from(t).to_string()
    });
    let rcode = dnscore::message::response_code(answer)
        .map_or_else(String::new, |r| metrics::rcode_name(usize::from(r)));
    tracing::info!(
        target: "dnscore::query",
        client = %client.map_or_else(String::new, |c| c.to_string()),
        proto = match protocol { Protocol::Udp => "udp", Protocol::Tcp => "tcp" },
        name = %name,
        qtype = %qtype,
        rcode = %rcode,
        cache,
        upstream = %upstream.map_or_else(String::new, |u| u.to_string()),
        duration_us = u64::try_from(arrived.elapsed().as_micros()).unwrap_or(u64::MAX),
        "query"
    );
}

/// Serves `resolver` on `udp` and `tcp` to loopback clients until `shutdown` completes,
/// then stops reading, lets the queries in flight finish (up to [`SHUTDOWN_GRACE`]) and
/// returns.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    resolver: Resolver,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(vec![udp], tcp, Context::new(resolver), shutdown).await;
}

/// Like [`serve`], with one receive loop per UDP socket (bind them with `SO_REUSEPORT`) and
/// the given context.
pub async fn serve_with(
    udp: Vec<UdpSocket>,
    tcp: TcpListener,
    ctx: Context,
    shutdown: impl Future<Output = ()>,
) {
    let in_flight = InFlight::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for socket in udp {
        match udp::spawn_receiver(socket, &ctx, &in_flight, &stop) {
            Ok(thread) => receivers.push(thread),
            Err(err) => tracing::error!(%err, "cannot start a UDP receive thread"),
        }
    }
    let tcp = tokio::spawn(tcp::serve_tcp(tcp, ctx, in_flight.clone()));
    shutdown.await;
    tracing::info!("stopped reading; finishing the queries in flight");
    stop.store(true, Ordering::Release);
    for receiver in &receivers {
        receiver.wake();
    }
    tcp.abort();
    while receivers.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    in_flight.wait(SHUTDOWN_GRACE).await;
}

/// Counts the work in flight so that shutdown can wait for it (and `/metrics` can show it).
#[derive(Clone, Default)]
struct InFlight(Arc<()>);

/// One unit of work in flight: a query or a connection.
struct Entered {
    _count: Arc<()>,
}

impl InFlight {
    fn enter(&self) -> Entered {
        Entered {
            _count: Arc::clone(&self.0),
        }
    }

    async fn wait(self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while Arc::strong_count(&self.0) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
