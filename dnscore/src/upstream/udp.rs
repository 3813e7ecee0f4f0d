//! UDP transport: one fresh *connected* socket per attempt, on a port the kernel picks at
//! random, with a random ID (RFC 5452 §9.2).
//!
//! Connecting matters twice on Kubernetes: the kernel then delivers only datagrams from the
//! upstream's address and port (the first check of RFC 5452 §9.1), and an ICMP port
//! unreachable from an evicted pod surfaces at once as `ECONNREFUSED` instead of a timeout.
//! A new socket per attempt means a new 5-tuple, so a retry never rides a conntrack entry
//! that still DNATs to a dead pod.

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

/// Sends `key` to `addr` and waits for a valid answer. Stray, forged and malformed packets
/// are dropped and the wait goes on; the caller bounds it with a timeout.
pub(crate) async fn exchange(addr: SocketAddr, key: Key<'_>) -> Result<Reply, UpstreamError> {
    let socket = connect(addr).map_err(|e| UpstreamError::from_io(addr, e))?;
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
            return Ok(Reply::TooLarge);
        }
        match Answer::parse(&query, &buf, Instant::now()) {
            Ok(answer) => return Ok(Reply::Answer(answer)),
            Err(why) => tracing::debug!(%addr, ?why, len = buf.len(), "dropped a UDP packet"),
        }
    }
}

/// A non-blocking UDP socket bound to an ephemeral port and connected to `addr`.
fn connect(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    socket.bind(&any.into())?;
    socket.connect(&addr.into())?;
    UdpSocket::from_std(socket.into())
}
