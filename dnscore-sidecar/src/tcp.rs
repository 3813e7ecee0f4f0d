//! The TCP server: accepts client connections (at most [`MAX_TCP_CONNECTIONS`] at once)
//! and serves each as a pipelined stream (RFC 7766 §6.2.1.1): every query is answered as
//! soon as its answer is ready, in any order; a connection may have [`MAX_PIPELINED`]
//! queries waiting for an upstream before it is read again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dnscore::Resolver;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};

use crate::metrics::{Protocol, QueryCounters};
use crate::{Context, InFlight};

/// Simultaneous client TCP connections; past it new ones wait in the listen backlog.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// Queries one TCP connection may have waiting for an upstream; past it the connection is
/// not read until one is answered (back-pressure on a client that pipelines without end).
pub const MAX_PIPELINED: usize = 128;
/// A client TCP connection idle this long is closed (RFC 7766 §6.2.3 suggests seconds).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until the task is aborted.
pub(crate) async fn serve_tcp(listener: TcpListener, ctx: Context, in_flight: InFlight) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let counters = ctx.metrics.worker();
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors (EMFILE), say: wait instead of spinning.
                tracing::warn!(%err, "TCP accept failed; retrying in 100 ms");
                tokio::time::sleep(crate::admin::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if !ctx.access.allows(peer.ip()) {
            ctx.metrics.refused_clients.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (ctx, counters, guard) = (ctx.clone(), Arc::clone(&counters), in_flight.enter());
        tokio::spawn(async move {
            ctx.metrics.tcp_connections.fetch_add(1, Ordering::Relaxed);
            serve_stream_with(stream, Some(peer), &ctx, counters).await;
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
    serve_stream_with(stream, None, &ctx, counters).await;
}

async fn serve_stream_with<S>(
    stream: S,
    peer: Option<SocketAddr>,
    ctx: &Context,
    counters: Arc<QueryCounters>,
) where
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
    let runtime = tokio::runtime::Handle::current();
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
        let arrived = std::time::Instant::now();
        match ctx.answer_now(&buf, peer, Protocol::Tcp, &counters, &mut out) {
            Ok(None) => {
                counters.observe(arrived.elapsed(), 1);
                if tx.send(out).await.is_err() {
                    break;
                }
            }
            Ok(Some(miss)) => {
                let Ok(slot) = Arc::clone(&pipelined).acquire_owned().await else {
                    break;
                };
                let tx = tx.clone();
                ctx.resolve_later(
                    &runtime,
                    miss,
                    peer,
                    Protocol::Tcp,
                    &counters,
                    slot,
                    |out| async move {
                        let _ = tx.send(out).await;
                    },
                );
            }
            Err(_) => break,
        }
    }
    // Answers still being resolved hold clones of `tx`; the writer ends after the last.
    drop(tx);
    let _ = writer.await;
}
