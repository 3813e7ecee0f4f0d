//! The UDP receive threads: one plain thread per `SO_REUSEPORT` socket, reading queries in
//! batches with `recvmmsg` and answering the cache hits of a batch with one `sendmmsg`.
//!
//! On a cache hit the system calls are nearly all the cost (the resolver's part is a few
//! hundred nanoseconds), so a hit must not pay a reactor wake-up, and a busy socket should
//! not pay two calls per query: one `recvmmsg` takes what is queued (up to [`BATCH`],
//! waiting only for the first), one `sendmmsg` sends the answers. Misses are handed,
//! parsed, to a task on the runtime, which sends its answer without blocking when it comes.
//!
//! `recvmmsg` comes from nix, `sendmmsg` from rustix (nix's cannot report how many messages
//! went without reading memory it never initialised); both keep `unsafe` out of this crate.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};

use crate::metrics::{Protocol, QueryCounters};
use crate::{Context, InFlight, ratelimit};

/// Datagrams read (and answers sent) per system call at most.
pub const BATCH: usize = 32;
/// Largest query read over UDP. A DNS query is a few hundred bytes at most (one name, one
/// OPT record); a longer datagram is cut here and dropped.
pub const MAX_QUERY: usize = 4096;
/// A receive thread and its socket.
pub(crate) struct ReceiveThread {
    thread: std::thread::JoinHandle<()>,
    socket: Arc<std::net::UdpSocket>,
}

impl ReceiveThread {
    /// Wakes the thread from its blocking receive, after the stop flag is set: a read
    /// shutdown makes a blocked `recvmmsg` return, also on an unconnected UDP socket
    /// (Linux wakes its waiters whatever `shutdown` returns, ENOTCONN here). So an idle
    /// sidecar never wakes up to look at a flag.
    pub(crate) fn wake(&self) {
        let _ = rustix::net::shutdown(&*self.socket, rustix::net::Shutdown::Read);
    }

    /// Whether the thread has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Starts the receive thread of one UDP socket (see the module documentation).
pub(crate) fn spawn_receiver(
    socket: tokio::net::UdpSocket,
    ctx: &Context,
    in_flight: &InFlight,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<ReceiveThread> {
    let socket = Arc::new(socket.into_std()?);
    socket.set_nonblocking(false)?;
    let runtime = tokio::runtime::Handle::current();
    let (ctx, in_flight, stop) = (ctx.clone(), in_flight.clone(), Arc::clone(stop));
    let shared = Arc::clone(&socket);
    let thread = std::thread::Builder::new()
        .name("dnscore-udp".into())
        .spawn(move || Receiver::new(shared, ctx, in_flight, runtime).run(&stop))?;
    Ok(ReceiveThread { thread, socket })
}

/// One receive thread's state: the socket, the batch buffers and what answers need.
struct Receiver {
    socket: Arc<std::net::UdpSocket>,
    ctx: Context,
    in_flight: InFlight,
    runtime: tokio::runtime::Handle,
    counters: Arc<QueryCounters>,
    limiter: Option<ratelimit::RateLimiter>,
    /// `BATCH` query buffers of `MAX_QUERY` bytes, back to back.
    queries: Vec<u8>,
    /// What the last `recvmmsg` read: length, sender, and whether it was cut.
    received: Vec<(usize, Option<SocketAddr>, bool)>,
    recv_headers: MultiHeaders<SockaddrStorage>,
    /// Answer buffers, and where this batch's answers go: the first `peers.len()` buffers
    /// hold them.
    answers: Vec<Vec<u8>>,
    peers: Vec<SocketAddrAny>,
}

impl Receiver {
    fn new(
        socket: Arc<std::net::UdpSocket>,
        ctx: Context,
        in_flight: InFlight,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            socket,
            counters: ctx.metrics.worker(),
            limiter: ctx.rate_limit.map(ratelimit::RateLimiter::new),
            ctx,
            in_flight,
            runtime,
            queries: vec![0; BATCH * MAX_QUERY],
            received: Vec::with_capacity(BATCH),
            recv_headers: MultiHeaders::preallocate(BATCH, None),
            answers: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
            peers: Vec::with_capacity(BATCH),
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        // Inside the runtime's context, so that a hit near the end of its TTL can spawn the
        // resolver's prefetch.
        let runtime = self.runtime.clone();
        let _context = runtime.enter();
        while !stop.load(Ordering::Acquire) {
            match self.receive() {
                Ok(()) => {}
                // A signal.
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(err) => {
                    tracing::debug!(%err, "UDP receive error");
                    continue;
                }
            }
            let batch = std::time::Instant::now();
            for i in 0..self.received.len() {
                let (len, peer, cut) = self.received[i];
                let Some(peer) = peer else { continue };
                if cut {
                    tracing::debug!(%peer, "dropped a datagram longer than any query");
                    continue;
                }
                let start = i * MAX_QUERY;
                self.answer(start..start + len, peer);
            }
            let hits = self.peers.len() as u64;
            self.send_answers();
            if hits > 0 {
                self.counters.observe(batch.elapsed(), hits);
            }
        }
    }

    /// Reads up to `BATCH` datagrams into `queries`, waiting (up to the poll interval) for
    /// the first only.
    fn receive(&mut self) -> Result<(), Errno> {
        self.received.clear();
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .queries
            .chunks_exact_mut(MAX_QUERY)
            .map(|buf| [IoSliceMut::new(buf)])
            .collect();
        let results = nix::sys::socket::recvmmsg(
            self.socket.as_raw_fd(),
            &mut self.recv_headers,
            slices.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        for msg in results {
            let peer = msg.address.as_ref().and_then(socket_addr);
            let cut = msg.flags.contains(MsgFlags::MSG_TRUNC);
            self.received.push((msg.bytes, peer, cut));
        }
        Ok(())
    }

    /// Answers the query in `queries[range]` from `peer`: a hit (or a refusal) is queued for
    /// this batch's `sendmmsg`, a miss is spawned.
    fn answer(&mut self, range: std::ops::Range<usize>, addr: SocketAddr) {
        let ctx = &self.ctx;
        if !ctx.access.allows(addr.ip()) {
            ctx.metrics.refused_clients.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(limiter) = self.limiter.as_mut()
            && !limiter.allow(addr.ip(), std::time::Instant::now())
        {
            ctx.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let query = &self.queries[range];
        let out = &mut self.answers[self.peers.len()];
        match ctx.answer_now(query, Some(addr), Protocol::Udp, &self.counters, out) {
            Ok(None) => self.peers.push(SocketAddrAny::from(addr)),
            Ok(Some(miss)) => {
                let socket = Arc::clone(&self.socket);
                let guard = self.in_flight.enter();
                ctx.resolve_later(
                    &self.runtime,
                    miss,
                    Some(addr),
                    Protocol::Udp,
                    &self.counters,
                    guard,
                    move |out| {
                        send_now(&socket, &out, addr);
                        std::future::ready(())
                    },
                );
            }
            Err(_) => tracing::debug!(%addr, len = query.len(), "dropped an unanswerable packet"),
        }
    }

    /// Sends this batch's answers, with as few `sendmmsg` calls as the kernel allows: a
    /// message it cannot send (its error comes back on the next call) is skipped.
    fn send_answers(&mut self) {
        let count = self.peers.len();
        let slices: Vec<[IoSlice<'_>; 1]> = self.answers[..count]
            .iter()
            .map(|answer| [IoSlice::new(answer)])
            .collect();
        let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> =
            (0..count).map(|_| SendAncillaryBuffer::default()).collect();
        let mut messages: Vec<MMsgHdr<'_>> = slices
            .iter()
            .zip(&self.peers)
            .zip(&mut controls)
            .map(|((iov, peer), control)| MMsgHdr::new_with_addr(peer, iov, control))
            .collect();
        let mut sent = 0;
        while sent < count {
            match rustix::net::sendmmsg(&*self.socket, &mut messages[sent..], SendFlags::empty()) {
                Ok(n) => sent += n.max(1),
                Err(err) => {
                    tracing::debug!(%err, "UDP send failed");
                    sent += 1;
                }
            }
        }
        drop(messages);
        self.peers.clear();
    }
}

/// Sends one answer without blocking: a task must not wait on a full socket buffer (the
/// client asks again if the answer is dropped).
fn send_now(socket: &std::net::UdpSocket, answer: &[u8], peer: SocketAddr) {
    if let Err(err) = rustix::net::sendto(socket, answer, SendFlags::DONTWAIT, &peer) {
        tracing::debug!(%err, %peer, "UDP send failed");
    }
}

/// The standard form of a sender's address (for the access list and the logs).
fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        Some(SocketAddr::V4(SocketAddrV4::from(*v4)))
    } else {
        addr.as_sockaddr_in6()
            .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
    }
}
