//! The dnscore sidecar's server: serves a [`Resolver`] over UDP and TCP on sockets the caller
//! has bound, until a shutdown future completes. The binary (`main.rs`) only reads its
//! configuration, binds, and turns signals into the lameduck-then-shutdown sequence.
//!
//! Cache hits are answered inline in the receive loop ([`udp`]: batched system calls);
//! only misses spawn a task. Several UDP sockets (`SO_REUSEPORT`, one per worker) spread
//! the load over the cores. TCP connections are pipelined (RFC 7766 §6.2.1.1): each query
//! is answered as soon as its answer is ready, in any order.
//!
//! Modules: [`access`] (who may ask), [`metrics`] and [`admin`] (`/metrics`, `/health`,
//! `/ready`), [`config`] (flags, environment, TOML file), [`resolv_conf`] (default upstreams).
#![deny(missing_docs)]

pub mod access;
pub mod admin;
pub mod config;
pub mod inject;
pub mod metrics;
pub mod ratelimit;
pub mod resolv_conf;
pub mod udp;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dnscore::{Resolver, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, mpsc};

use access::Access;
use metrics::{Metrics, Protocol, QueryCounters, Waiting};

/// Simultaneous client TCP connections; past it new ones wait in the listen backlog.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// Queries one TCP connection may have waiting for an upstream; past it the connection is
/// not read until one is answered (back-pressure on a client that pipelines without end).
pub const MAX_PIPELINED: usize = 128;
/// A client TCP connection idle this long is closed (RFC 7766 §6.2.3 suggests seconds).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight queries may take to finish after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// The response code sent for ANY queries when they are refused (RFC 1035 NOTIMP).
const NOTIMP: u16 = 4;
/// The ANY query type.
const ANY: u16 = 255;

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
}

impl Context {
    /// Loopback clients only, fresh metrics.
    pub fn new(resolver: Resolver) -> Self {
        Self {
            resolver,
            metrics: Arc::default(),
            access: Arc::default(),
            rate_limit: None,
        }
    }

    /// The answer to `query` that needs no upstream, written to `out`: a cache hit, or
    /// NOTIMP for ANY when bound beyond loopback. `Ok(false)`: a miss, to resolve;
    /// `Err`: drop the packet.
    fn answer_now(
        &self,
        query: &[u8],
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Result<bool, dnscore::Error> {
        if self.access.refuses_any() && dnscore::message::question_type(query) == Some(ANY) {
            return match dnscore::message::reply_with_rcode(query, NOTIMP, out) {
                true => Ok(true),
                false => Err(dnscore::Error::Malformed),
            };
        }
        self.resolver.resolve_cached(query, transport, out)
    }
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
    let tcp = tokio::spawn(serve_tcp(tcp, ctx, in_flight.clone()));
    shutdown.await;
    tracing::info!("stopped reading; finishing the queries in flight");
    stop.store(true, Ordering::Release);
    tcp.abort();
    while receivers.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    in_flight.wait(SHUTDOWN_GRACE).await;
}

async fn serve_tcp(listener: TcpListener, ctx: Context, in_flight: InFlight) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let counters = ctx.metrics.worker();
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::debug!(%err, "TCP accept failed");
                continue;
            }
        };
        if !ctx.access.allows(peer.ip()) {
            ctx.metrics.refused_clients.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (ctx, counters, guard) = (ctx.clone(), Arc::clone(&counters), in_flight.enter(None));
        tokio::spawn(async move {
            ctx.metrics.tcp_connections.fetch_add(1, Ordering::Relaxed);
            serve_stream_with(stream, &ctx, counters).await;
            ctx.metrics.tcp_connections.fetch_sub(1, Ordering::Relaxed);
            tracing::trace!(%peer, "TCP connection closed");
            drop((permit, guard));
        });
    }
}

/// Serves one client stream (a TCP connection, after `serve` accepted it): reads queries
/// framed with a two-byte length (RFC 1035 §4.2.2) until the client closes the stream, idles
/// for [`TCP_IDLE_TIMEOUT`] or sends a packet that must be dropped, and writes each answer,
/// framed the same way, as soon as it is ready, in any order (RFC 7766 §6.2.1.1). Returns
/// after the last answer is written and the write side is shut down.
///
/// Generic over the stream so that tests and the fuzz targets can drive it through
/// [`tokio::io::duplex`]. Must run inside a tokio runtime (misses are spawned).
pub async fn serve_stream<S>(stream: S, resolver: Resolver)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Context::new(resolver);
    let counters = ctx.metrics.worker();
    serve_stream_with(stream, &ctx, counters).await;
}

async fn serve_stream_with<S>(stream: S, ctx: &Context, counters: Arc<QueryCounters>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut read, mut write) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        // One buffer for the connection's frames, not one per answer.
        let mut frame = Vec::new();
        while let Some(msg) = rx.recv().await {
            let Ok(len) = u16::try_from(msg.len()) else {
                continue;
            };
            frame.clear();
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&msg);
            if write.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    });
    let pipelined = Arc::new(Semaphore::new(MAX_PIPELINED));
    let mut buf = Vec::new();
    loop {
        let len = match tokio::time::timeout(TCP_IDLE_TIMEOUT, read.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => break,
        };
        buf.resize(len, 0);
        if read.read_exact(&mut buf).await.is_err() {
            break;
        }
        let mut out = Vec::new();
        match ctx.answer_now(&buf, Transport::Tcp, &mut out) {
            Ok(true) => {
                counters.count(Protocol::Tcp, &buf, &out);
                if tx.send(out).await.is_err() {
                    break;
                }
            }
            Ok(false) => {
                let Ok(slot) = Arc::clone(&pipelined).acquire_owned().await else {
                    break;
                };
                let (query, resolver, tx) = (buf.clone(), ctx.resolver.clone(), tx.clone());
                let (counters, waiting) = (Arc::clone(&counters), Waiting::new(&ctx.metrics));
                tokio::spawn(async move {
                    if resolver
                        .resolve_into(&query, Transport::Tcp, &mut out)
                        .await
                        .is_ok()
                    {
                        counters.count(Protocol::Tcp, &query, &out);
                        let _ = tx.send(out).await;
                    }
                    drop((slot, waiting));
                });
            }
            Err(_) => break,
        }
    }
    // Answers still being resolved hold clones of `tx`; the writer ends after the last.
    drop(tx);
    let _ = writer.await;
}

/// Counts the work in flight so that shutdown can wait for it (and `/metrics` can show it).
#[derive(Clone, Default)]
struct InFlight(Arc<()>);

/// One unit of work in flight: a query (counted in the `in_flight` gauge) or a connection.
struct Entered {
    _count: Arc<()>,
    _query: Option<Waiting>,
}

impl InFlight {
    fn enter(&self, query: Option<&Arc<Metrics>>) -> Entered {
        Entered {
            _count: Arc::clone(&self.0),
            _query: query.map(Waiting::new),
        }
    }

    async fn wait(self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while Arc::strong_count(&self.0) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
