//! The dnscore sidecar's server: serves a [`Resolver`] over UDP and TCP on sockets the caller
//! has bound, until a shutdown future completes. The binary (`main.rs`) only parses flags,
//! binds and passes a signal.
//!
//! Cache hits are answered inline in the receive loop; only misses spawn a task. TCP
//! connections are pipelined (RFC 7766 §6.2.1.1): each query is answered as soon as its
//! answer is ready, in any order.
#![deny(missing_docs)]

pub mod resolv_conf;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dnscore::{Resolver, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, mpsc};

/// Largest UDP datagram we read (anything larger is not DNS).
const MAX_DATAGRAM: usize = 65_535;
/// Simultaneous client TCP connections; past it new ones wait in the listen backlog.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// A client TCP connection idle this long is closed (RFC 7766 §6.2.3 suggests seconds).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight queries may take to finish after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Serves `resolver` on `udp` and `tcp` until `shutdown` completes, then stops reading,
/// lets the queries in flight finish (up to [`SHUTDOWN_GRACE`]) and returns.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    resolver: Resolver,
    shutdown: impl Future<Output = ()>,
) {
    let in_flight = InFlight::default();
    let udp = Arc::new(udp);
    tokio::select! {
        () = serve_udp(Arc::clone(&udp), resolver.clone(), in_flight.clone()) => {}
        () = serve_tcp(tcp, resolver, in_flight.clone()) => {}
        () = shutdown => tracing::info!("shutting down"),
    }
    in_flight.wait(SHUTDOWN_GRACE).await;
}

async fn serve_udp(socket: Arc<UdpSocket>, resolver: Resolver, in_flight: InFlight) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = Vec::with_capacity(MAX_DATAGRAM);
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                // ECONNREFUSED and the like from an earlier send_to: not fatal.
                tracing::debug!(%err, "UDP receive error");
                continue;
            }
        };
        let query = &buf[..len];
        match resolver.resolve_cached(query, Transport::Udp, &mut out) {
            Ok(true) => send(&socket, &out, peer).await,
            Ok(false) => {
                let query = query.to_vec();
                let (socket, resolver, guard) =
                    (Arc::clone(&socket), resolver.clone(), in_flight.enter());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    if resolver
                        .resolve_into(&query, Transport::Udp, &mut out)
                        .await
                        .is_ok()
                    {
                        send(&socket, &out, peer).await;
                    }
                    drop(guard);
                });
            }
            Err(_) => tracing::debug!(%peer, len, "dropped an unanswerable packet"),
        }
    }
}

async fn send(socket: &UdpSocket, msg: &[u8], peer: SocketAddr) {
    if let Err(err) = socket.send_to(msg, peer).await {
        tracing::debug!(%err, %peer, "UDP send failed");
    }
}

async fn serve_tcp(listener: TcpListener, resolver: Resolver, in_flight: InFlight) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
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
        let _ = stream.set_nodelay(true);
        let (resolver, guard) = (resolver.clone(), in_flight.enter());
        tokio::spawn(async move {
            serve_stream(stream, resolver).await;
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
    let (mut read, mut write) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let Ok(len) = u16::try_from(msg.len()) else {
                continue;
            };
            let mut frame = Vec::with_capacity(msg.len() + 2);
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&msg);
            if write.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    });
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
        match resolver.resolve_cached(&buf, Transport::Tcp, &mut out) {
            Ok(true) => {
                if tx.send(out).await.is_err() {
                    break;
                }
            }
            Ok(false) => {
                let (query, resolver, tx) = (buf.clone(), resolver.clone(), tx.clone());
                tokio::spawn(async move {
                    if resolver
                        .resolve_into(&query, Transport::Tcp, &mut out)
                        .await
                        .is_ok()
                    {
                        let _ = tx.send(out).await;
                    }
                });
            }
            Err(_) => break,
        }
    }
    // Answers still being resolved hold clones of `tx`; the writer ends after the last.
    drop(tx);
    let _ = writer.await;
}

/// Counts the work in flight so that shutdown can wait for it.
#[derive(Clone, Default)]
struct InFlight(Arc<()>);

impl InFlight {
    fn enter(&self) -> Arc<()> {
        Arc::clone(&self.0)
    }

    async fn wait(self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while Arc::strong_count(&self.0) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
