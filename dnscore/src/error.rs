//! The one error type of the crate.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

/// What went wrong, and through each variant's docs, what the caller should do about it.
///
/// `Clone`, because one upstream failure is handed to every caller that shared the query.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder was given no upstream. Add one with [`ResolverBuilder::upstream`].
    ///
    /// [`ResolverBuilder::upstream`]: crate::ResolverBuilder::upstream
    #[error("no upstream server configured")]
    NoUpstreams,
    /// A configuration value is out of range; the message names it. Fix the configuration.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// The query cannot be answered at all (shorter than a DNS header, or a response rather
    /// than a query). Drop it: replying could start a packet loop.
    #[error("malformed query: not answered")]
    Malformed,
    /// A configuration file (resolv.conf, hosts) could not be read. Fix the path or the
    /// file's permissions.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: Arc<std::path::Path>,
        /// The operating system's error.
        source: Arc<io::Error>,
    },
    /// A name given to [`Resolver::lookup`](crate::Resolver::lookup) is not a valid DNS name.
    #[error("invalid name {0:?}")]
    InvalidName(Arc<str>),
    /// The name does not exist (NXDOMAIN). Do not retry.
    #[error("no such name (NXDOMAIN)")]
    NxDomain,
    /// The query got no answer from any upstream within the deadline: every upstream refused,
    /// failed or timed out. The last failure is kept. Retry later.
    #[error("no upstream answered: {0}")]
    NoAnswer(Arc<UpstreamError>),
    /// The answer could not be read as a DNS message (from `lookup`). Retry later.
    #[error("unreadable answer")]
    BadAnswer,
    /// Too many queries are waiting on upstreams (or on one upstream query) already; the
    /// query was refused at once to bound memory. Retry later.
    #[error("resolver overloaded: too many queries in flight")]
    Overloaded,
    /// The query was abandoned because the resolver's runtime is shutting down.
    #[error("resolver is shutting down")]
    Shutdown,
}

/// Why one attempt at one upstream failed. The pool retries another upstream on each of
/// these; callers see the last one inside [`Error::NoAnswer`].
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The upstream's port is closed (ICMP port unreachable on the connected UDP socket, or
    /// a TCP RST on connect): typically an evicted pod.
    #[error("{0} refused the query (port closed)")]
    Refused(SocketAddr),
    /// No valid answer arrived within the attempt's timeout.
    #[error("{0} did not answer in time")]
    Timeout(SocketAddr),
    /// The TCP connection closed or reset before the answer arrived.
    #[error("{0} closed the TCP connection")]
    ConnectionClosed(SocketAddr),
    /// The upstream answered with a failure code (SERVFAIL, REFUSED, ...).
    #[error("{addr} answered rcode {rcode}")]
    Rcode {
        /// The upstream.
        addr: SocketAddr,
        /// The response code it sent.
        rcode: u16,
    },
    /// The upstream set TC=1 over TCP: a broken server. Not retried over TCP again.
    #[error("{0} sent a truncated answer over TCP")]
    TruncatedOverTcp(SocketAddr),
    /// Too many queries are already waiting on the upstream's TCP connections.
    #[error("{0} has too many queries outstanding over TCP")]
    Overloaded(SocketAddr),
    /// The socket the query waited on was closed under it, through no fault of the
    /// upstream (its reader's runtime ended); the query was asked again.
    #[error("the socket to {0} was closed while the query waited")]
    SocketClosed(SocketAddr),
    /// A burst of forged or mismatched datagrams arrived on the socket the query waited on;
    /// the socket was retired and the query is asked again over TCP.
    #[error("{0}: forged or mismatched answers on the socket; asked over TCP")]
    Spoofed(SocketAddr),
    /// With 0x20 case randomisation, the upstream's answer did not echo the question's
    /// letter case: it is asked without randomisation from now on.
    #[error("{0} does not preserve the question's letter case (0x20 turned off for it)")]
    CaseNotPreserved(SocketAddr),
    /// The upstream was found dead (or removed from the list) while the attempt waited;
    /// the query went to another upstream.
    #[error("{0} was found dead while the query waited; re-driven")]
    Redriven(SocketAddr),
    /// No upstream could be asked for this query: the list is empty (an excluded upstream
    /// reports its own failure instead). Upstreams marked down are still asked when all
    /// are down.
    #[error("no upstream could be asked")]
    AllDown,
    /// Every upstream failed this question moments ago; the failure is cached for a few
    /// seconds (RFC 2308 §7) so that retries do not storm a failing server.
    #[error("every upstream failed this question moments ago")]
    RecentlyFailed,
    /// A socket operation failed.
    #[error("socket error talking to {addr}: {source}")]
    Io {
        /// The upstream.
        addr: SocketAddr,
        /// The operating system's error.
        source: Arc<io::Error>,
    },
}

impl UpstreamError {
    /// Whether this is a transport failure of the upstream (as opposed to an answer we did
    /// not like): these count toward marking it down.
    pub(crate) fn is_transport(&self) -> bool {
        matches!(
            self,
            Self::Refused(_) | Self::ConnectionClosed(_) | Self::Io { .. }
        )
    }

    /// Classifies a socket error: refused and reset are the marks of a vanished upstream.
    pub(crate) fn from_io(addr: SocketAddr, err: io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused(addr),
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Self::ConnectionClosed(addr),
            _ => Self::Io {
                addr,
                source: Arc::new(err),
            },
        }
    }
}
