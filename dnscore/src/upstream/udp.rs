//! UDP transport: one fresh *connected* socket per attempt, on a port the kernel picks at
//! random, with a random ID (RFC 5452 §9.2).
//!
//! Connecting matters twice on Kubernetes: the kernel then delivers only datagrams from the
//! upstream's address and port (the first check of RFC 5452 §9.1), and an ICMP port
//! unreachable from an evicted pod surfaces at once as `ECONNREFUSED` instead of a timeout.
//! A new socket per attempt means a new 5-tuple, so a retry never rides a conntrack entry
//! that still DNATs to a dead pod. The pool may ask for a retry's socket to be bound to a
//! port that was answered moments ago instead (see `GoodPorts` in `health`): that 5-tuple's
//! conntrack entry leads to an endpoint that is alive. Still a fresh socket, a new ID.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::answer::Answer;
use crate::error::UpstreamError;
use crate::query::Key;
use crate::wire::upstream_query;

/// Receive buffer for one attempt. We advertise 1232 bytes; a datagram that fills this
/// buffer may have been cut by the kernel, and is treated as truncated.
const RECV_BUFFER: usize = 4096;

/// What a UDP attempt brought back.
pub(crate) enum Reply {
    /// A valid answer (which may itself say TC=1).
    Answer(Answer),
    /// A datagram larger than we can hold: ask again over TCP, as for TC=1.
    TooLarge,
}

/// Sends `key` to `addr` from the first of `ports` that is free (else from a port the kernel
/// picks) and waits for a valid answer; returns it with the local port. Stray, forged and
/// malformed packets are dropped and the wait goes on; the caller bounds it with a timeout.
pub(crate) async fn exchange(
    addr: SocketAddr,
    key: Key<'_>,
    ports: &[u16],
) -> Result<(Reply, u16), UpstreamError> {
    let socket = connect(addr, ports).map_err(|e| UpstreamError::from_io(addr, e))?;
    let port = socket
        .local_addr()
        .map_err(|e| UpstreamError::from_io(addr, e))?
        .port();
    let query = upstream_query(key, rand::random());
    socket
        .send(&query)
        .await
        .map_err(|e| UpstreamError::from_io(addr, e))?;
    let mut buf = Vec::with_capacity(RECV_BUFFER);
    loop {
        buf.clear();
        socket
            .recv_buf(&mut buf)
            .await
            .map_err(|e| UpstreamError::from_io(addr, e))?;
        if buf.len() >= RECV_BUFFER && buf.get(..2) == query.get(..2) {
            return Ok((Reply::TooLarge, port));
        }
        match Answer::parse(&query, &buf, Instant::now()) {
            Ok(answer) => return Ok((Reply::Answer(answer), port)),
            Err(why) => tracing::debug!(%addr, ?why, len = buf.len(), "dropped a UDP packet"),
        }
    }
}

/// A non-blocking UDP socket connected to `addr`, bound to the first of `ports` that is
/// free, else to an ephemeral port.
fn connect(addr: SocketAddr, ports: &[u16]) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    let any = |port: u16| -> SocketAddr {
        match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, port).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, port).into(),
        }
    };
    // A port in use (another attempt holds it now) is skipped.
    if !ports
        .iter()
        .any(|&port| socket.bind(&any(port).into()).is_ok())
    {
        socket.bind(&any(0).into())?;
    }
    socket.connect(&addr.into())?;
    UdpSocket::from_std(socket.into())
}
