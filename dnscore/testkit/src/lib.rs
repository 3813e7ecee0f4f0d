//! Test support for dnscore: a scriptable, fault-injecting DNS server that
//! listens on a loopback address (the "fake CoreDNS pod").
//!
//! [`TestUpstream::start`] binds UDP and TCP on the same port of `127.0.0.1`
//! and serves a small authoritative zone (`test.`, see [`TestUpstream`] for
//! its contents). Tests can add records, count the queries that arrived per
//! name and protocol, and inject faults per name or globally with
//! [`Behavior`]. [`TestUpstream::stop`] closes the port synchronously, so a
//! connected UDP client gets `ECONNREFUSED` and new TCP connections are
//! refused, like an evicted pod.
//!
//! [`TestHttpServer`] is a plain HTTP/1.1 server on `127.0.0.1`, one request per
//! connection, for tests and benchmarks of HTTP clients that resolve names through dnscore.
//!
//! All traffic stays on `127.0.0.0/8`: the server only binds loopback
//! addresses and only ever answers the peer that sent a query.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use dnscore_testkit::{Behavior, Proto, TestUpstream};
//! use dnscore_testkit::hickory_proto::rr::{RData, rdata::A};
//!
//! let upstream = TestUpstream::start().await?;
//! upstream.add_record("www.example.test.", RData::A(A::new(192, 0, 2, 80)), 60);
//! upstream.set_behavior("slow.test.", Behavior::Delay(std::time::Duration::from_millis(100)));
//! // ... point the resolver at `upstream.addr()` and run it ...
//! assert_eq!(upstream.queries("www.example.test", Proto::Udp), 0);
//! upstream.stop();
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub use hickory_proto;

mod http;
pub use http::TestHttpServer;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{debug, trace, warn};

/// The EDNS UDP payload size the server advertises in its OPT record.
const SERVER_UDP_PAYLOAD: u16 = 1232;
/// The UDP size limit for a client that sent no OPT record (RFC 1035).
const PLAIN_UDP_LIMIT: u16 = 512;
/// How many UDP ports to try before giving up finding one whose TCP twin is free.
const BIND_ATTEMPTS: usize = 16;
/// How many CNAME hops the server follows inside its zone.
const MAX_CNAME_CHAIN: usize = 8;
/// TTL of the records in forged answers ([`Behavior::ForgeFirst`]).
const FORGED_TTL: u32 = 86_400;
/// Question name of the forged answer with a foreign question.
const FORGED_NAME: &str = "forged.invalid.";
/// Pause after an unexpected socket error, so that a persistent error cannot spin a loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(1);

/// A recursive query for `name` and `rtype` with this ID, in wire form as a client sends
/// it; with an OPT record advertising `edns` bytes when given (hickory's default is 512).
///
/// # Panics
/// If `name` is not a valid DNS name (it is test input).
pub fn query(id: u16, name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("a valid test name"),
        rtype,
    ));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().expect("an encodable query")
}

/// A UDP socket on 127.0.0.1 and a TCP listener on the same port, as a DNS server binds
/// them (when another socket holds that TCP port, another pair is tried).
///
/// # Panics
/// If no UDP socket can be bound on 127.0.0.1.
pub async fn bind_udp_and_tcp() -> (UdpSocket, TcpListener, SocketAddr) {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("a UDP socket on 127.0.0.1");
        let addr = udp.local_addr().expect("a bound socket's address");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp, addr);
        }
    }
}

/// The transport a query arrived over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// DNS over UDP.
    Udp,
    /// DNS over TCP (RFC 1035 / RFC 7766 two-byte length framing).
    Tcp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        })
    }
}

/// How the server reacts to a query (fault injection).
///
/// Set per name with [`TestUpstream::set_behavior`] or for all names with
/// [`TestUpstream::set_default_behavior`]; a per-name behaviour wins. Every
/// query is counted whatever the behaviour.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Behavior {
    /// Answer from the zone.
    #[default]
    Normal,
    /// Over UDP answer with TC=1 and an empty answer section; over TCP answer normally.
    TruncateUdp,
    /// Answer normally after this delay. Other queries are not held up meanwhile.
    Delay(Duration),
    /// Never answer.
    Drop,
    /// Over UDP, never answer a client on the first of every this many (at least 2)
    /// source ports, in the order the server first saw them (the 1st, 4th, 7th... for 3,
    /// counting from the server's start); answer the others, and TCP, from the zone.
    /// A resolver then loses the attempts of one socket in that many, always the same
    /// 5-tuples: a Service IP whose DNAT has pinned some conntrack entries to an endpoint
    /// that is gone (the stale window after a CoreDNS pod dies). The choice does not
    /// depend on the ports the kernel hands out, so a test sees the same dead sockets
    /// every run (for every socket dead at once, see [`Behavior::DropPorts`]).
    DropOneIn(u16),
    /// Over UDP, never answer a client on one of these source ports; answer the others,
    /// and TCP, from the zone: the sockets a resolver had open when the endpoint their
    /// conntrack entries lead to died (with [`TestUpstream::source_ports`]).
    DropPorts(Vec<u16>),
    /// Answer from the zone, with these records added to the answer, authority and
    /// additional sections (a server that passes on whatever it holds: out-of-zone records,
    /// unrelated ones, floods of signatures).
    Extra {
        /// Added to the answer section.
        answers: Vec<Record>,
        /// Added to the authority section.
        authority: Vec<Record>,
        /// Added to the additional section.
        additional: Vec<Record>,
    },
    /// Answer SERVFAIL.
    ServFail,
    /// Answer REFUSED.
    Refused,
    /// First send four forged answers, then the real one. The forged answers are,
    /// in order: one with a wrong ID; one with the right ID but the question
    /// `forged.invalid.`; one with the right ID and question but QR=0; and 7
    /// bytes of garbage (starting with the right ID). The first three carry an
    /// `A 6.6.6.6` record with TTL 86400.
    ForgeFirst,
    /// Over TCP: read the query, then close the connection without answering
    /// (mid-stream death). Over UDP: answer with TC=1 (like [`Behavior::TruncateUdp`]), so
    /// that a resolver comes over TCP and meets the death.
    CloseTcp,
    /// Answer with TC=1 and no records over both UDP and TCP (a broken server;
    /// the resolver must not loop).
    TruncateAlways,
    /// Answer from the zone, but with the question's name in lower case instead of echoing
    /// its letter case (a server that breaks 0x20 case randomisation).
    LowercaseQuestion,
}

/// A scriptable DNS server on a loopback port, for integration tests.
///
/// Cloning gives another handle to the same server. The server stops when
/// [`TestUpstream::stop`] is called or when the last handle is dropped.
///
/// # The default zone
///
/// The server is authoritative for `test.` (and for any name given to
/// [`TestUpstream::add_record`]); other names get REFUSED. The zone holds:
///
/// ```text
/// test.        300 IN SOA   ns.test. hostmaster.test. 1 3600 600 86400 60
/// a.test.      300 IN A     192.0.2.1
/// a.test.      300 IN AAAA  2001:db8::1
/// b.test.       60 IN A     192.0.2.2
/// alias.test.  300 IN CNAME a.test.
/// big.test.    300 IN TXT   40 records of one 60-byte string each (~3 KB answer)
/// short.test.    1 IN A     192.0.2.3
/// ```
///
/// Answers have AA=1, QR=1, RA=0, and echo the query's ID, RD bit and question
/// (letter case included). CNAMEs are chased inside the zone. A name with no
/// record of the asked type gets NODATA, a missing name under `test.` gets
/// NXDOMAIN; both with the SOA in the authority section. A query with an OPT
/// record gets an OPT (payload 1232) back. Over UDP, an answer larger than the
/// client's limit (512 bytes without OPT, else the OPT payload size) is replaced
/// by an empty one with TC=1. Malformed queries are dropped silently.
#[derive(Clone)]
pub struct TestUpstream {
    handle: Arc<Handle>,
}

/// Owned by the [`TestUpstream`] handles only (the server tasks hold `Inner`),
/// so that dropping the last handle stops the server.
struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.stop();
    }
}

impl fmt::Debug for TestUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestUpstream")
            .field("addr", &self.handle.inner.addr)
            .field("stopped", &self.handle.inner.is_stopped())
            .finish_non_exhaustive()
    }
}

impl TestUpstream {
    /// Binds UDP and TCP on the same port of `127.0.0.1` (the kernel picks the
    /// UDP port, then TCP is bound to it; another port is tried if that fails),
    /// loads the default zone and starts serving on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// Any error from binding the sockets.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub async fn start() -> io::Result<Self> {
        Self::start_on(Ipv4Addr::LOCALHOST).await
    }

    /// Like [`TestUpstream::start`], on the given address, which must be in
    /// `127.0.0.0/8`.
    ///
    /// # Errors
    ///
    /// An error of kind [`io::ErrorKind::InvalidInput`] if `ip` is not a
    /// loopback address, or any error from binding the sockets.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub async fn start_on(ip: Ipv4Addr) -> io::Result<Self> {
        if !ip.is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TestUpstream only binds loopback addresses (127.0.0.0/8), not {ip}"),
            ));
        }
        let (udp, listener) = bind_pair(ip)?;
        Self::serve(udp, listener)
    }

    /// Like [`TestUpstream::start_on`], on exactly this address and port (UDP and TCP), for
    /// tests that need several servers on one port (e.g. upstreams discovered by name).
    ///
    /// # Errors
    ///
    /// As [`TestUpstream::start_on`]; also if the port is taken.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub async fn start_at(addr: std::net::SocketAddrV4) -> io::Result<Self> {
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TestUpstream only binds loopback addresses (127.0.0.0/8), not {addr}"),
            ));
        }
        let udp = std::net::UdpSocket::bind(addr)?;
        let listener = std::net::TcpListener::bind(addr)?;
        Self::serve(udp, listener)
    }

    /// Serves on bound sockets.
    fn serve(udp: std::net::UdpSocket, listener: std::net::TcpListener) -> io::Result<Self> {
        let addr = udp.local_addr()?;
        // Duplicates of the descriptors, kept so that `stop` can act on the
        // sockets synchronously while the tasks own the tokio wrappers.
        let udp_control = udp.try_clone()?;
        let listener_control = listener.try_clone()?;
        udp.set_nonblocking(true)?;
        listener.set_nonblocking(true)?;
        let udp = Arc::new(UdpSocket::from_std(udp)?);
        let listener = TcpListener::from_std(listener)?;

        let inner = Arc::new(Inner::new(addr, default_zone()?, apex_name()?));
        let udp_task = tokio::spawn(udp_loop(Arc::clone(&inner), udp));
        let tcp_task = tokio::spawn(accept_loop(Arc::clone(&inner), listener));
        {
            let mut control = lock(&inner.control);
            control.udp = Some(udp_control);
            control.listener = Some(listener_control);
            control.tasks.push(udp_task.abort_handle());
            control.tasks.push(tcp_task.abort_handle());
        }
        debug!(%addr, "test upstream serving");
        Ok(Self {
            handle: Arc::new(Handle { inner }),
        })
    }

    fn inner(&self) -> &Inner {
        &self.handle.inner
    }

    /// The address the server listens on (the same port for UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.inner().addr
    }

    /// Adds a record to the zone, e.g.
    /// `add_record("www.example.test.", RData::A(A::new(192, 0, 2, 9)), 60)`.
    ///
    /// Names are case-insensitive; a missing trailing dot is implied. Adding a
    /// record whose data is already present only updates its TTL. The server
    /// becomes authoritative for the exact name even outside `test.`.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid domain name (a bug in the calling test).
    pub fn add_record(&self, name: &str, rdata: RData, ttl: u32) {
        let name = parse_name_or_panic(name);
        let mut zone = lock(&self.inner().zone);
        let records = zone.entry(name.clone()).or_default();
        if let Some(existing) = records.iter_mut().find(|r| r.data == rdata) {
            existing.ttl = ttl;
        } else {
            records.push(Record::from_rdata(name, ttl, rdata));
        }
    }

    /// Makes the server authoritative for another zone, `apex` (e.g.
    /// `"cluster.local."`, or `"."` for every name): an SOA like `test.`'s (negative TTL 60 s) is added at the apex,
    /// and missing names under it get NXDOMAIN with that SOA instead of REFUSED.
    ///
    /// # Panics
    ///
    /// If `apex` is not a valid domain name (a bug in the calling test).
    pub fn add_zone(&self, apex: &str) {
        let apex_name = parse_name_or_panic(apex);
        let name = |label: &str| {
            let label = Name::from_ascii(label).expect("a valid label");
            label
                .append_domain(&apex_name)
                .expect("a name short enough")
        };
        let soa = SOA::new(name("ns"), name("hostmaster"), 1, 3600, 600, 86_400, 60);
        self.add_record(apex, RData::SOA(soa), 300);
    }

    /// Removes every record of `name` (case-insensitive) from the zone; the
    /// name then gets NXDOMAIN (or REFUSED outside `test.`). Removing the apex
    /// `test.` removes the SOA from negative answers.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid domain name (a bug in the calling test).
    pub fn remove_records(&self, name: &str) {
        let name = parse_name_or_panic(name);
        lock(&self.inner().zone).remove(&name);
    }

    /// How many queries for `name` (case-insensitive, with or without trailing
    /// dot) arrived over `proto`. Dropped and faulted queries count too;
    /// malformed ones do not. An invalid name gives 0.
    pub fn queries(&self, name: &str, proto: Proto) -> usize {
        let Some(name) = parse_name(name) else {
            return 0;
        };
        lock(&self.inner().counters)
            .get(&(name, proto))
            .copied()
            .unwrap_or(0)
    }

    /// How many well-formed queries arrived, over all protocols and for all names.
    pub fn total_queries(&self) -> usize {
        self.inner().total.load(Ordering::SeqCst)
    }

    /// The distinct source ports that well-formed UDP queries came from (each is a 5-tuple:
    /// a conntrack entry on a node).
    pub fn source_ports(&self) -> HashSet<u16> {
        lock(&self.inner().source_ports).clone()
    }

    /// How many TCP connections were accepted so far.
    pub fn tcp_connections(&self) -> usize {
        self.inner().tcp_connections.load(Ordering::SeqCst)
    }

    /// The last well-formed query received, over any protocol (for asserting on
    /// flags or EDNS).
    pub fn last_query(&self) -> Option<Message> {
        lock(&self.inner().last_query).clone()
    }

    /// Resets the query counters (per name, total, source ports and TCP connections) and
    /// forgets the last query.
    pub fn reset_counters(&self) {
        let inner = self.inner();
        lock(&inner.counters).clear();
        lock(&inner.source_ports).clear();
        inner.total.store(0, Ordering::SeqCst);
        inner.tcp_connections.store(0, Ordering::SeqCst);
        *lock(&inner.last_query) = None;
    }

    /// Sets the behaviour for queries whose name is exactly `name`
    /// (case-insensitive, with or without trailing dot). It wins over the
    /// default behaviour. Setting [`Behavior::Normal`] overrides a non-normal
    /// default for this name.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid domain name (a bug in the calling test).
    pub fn set_behavior(&self, name: &str, b: Behavior) {
        let name = parse_name_or_panic(name);
        lock(&self.inner().behaviors).insert(name, b);
    }

    /// Forgets every per-name behaviour set with [`TestUpstream::set_behavior`].
    pub fn clear_behaviors(&self) {
        lock(&self.inner().behaviors).clear();
    }

    /// Sets the behaviour for names that have no behaviour of their own.
    pub fn set_default_behavior(&self, b: Behavior) {
        *lock(&self.inner().default_behavior) = b;
    }

    /// Stops serving: closes the UDP port, the TCP listener and all open TCP
    /// connections before returning, so that a connected UDP client then gets
    /// `ECONNREFUSED` and a TCP connect is refused, like an evicted pod.
    /// Queries still being delayed are never answered. Idempotent; the server
    /// cannot be restarted.
    pub fn stop(&self) {
        self.inner().stop();
    }

    /// Whether [`TestUpstream::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.inner().is_stopped()
    }
}

/// State shared by the handles and the server tasks.
struct Inner {
    addr: SocketAddr,
    apex: Name,
    zone: Mutex<HashMap<Name, Vec<Record>>>,
    counters: Mutex<HashMap<(Name, Proto), usize>>,
    source_ports: Mutex<HashSet<u16>>,
    /// Each UDP source port seen, with the number of ports seen before it (never reset).
    port_ranks: Mutex<HashMap<u16, usize>>,
    total: AtomicUsize,
    tcp_connections: AtomicUsize,
    last_query: Mutex<Option<Message>>,
    behaviors: Mutex<HashMap<Name, Behavior>>,
    default_behavior: Mutex<Behavior>,
    stopped: AtomicBool,
    control: Mutex<Control>,
}

/// What `stop` needs to close the port synchronously.
#[derive(Default)]
struct Control {
    /// A duplicate of the UDP socket's descriptor.
    udp: Option<std::net::UdpSocket>,
    /// A duplicate of the TCP listener's descriptor.
    listener: Option<std::net::TcpListener>,
    /// Duplicates of the open TCP connections' descriptors, by connection id.
    connections: HashMap<u64, std::net::TcpStream>,
    next_connection_id: u64,
    /// The UDP and accept loops.
    tasks: Vec<AbortHandle>,
}

/// A mutex lock that survives poisoning (a panicking test thread must not
/// break the server for the others).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Parses a name given by a test: case is folded, a trailing dot is implied.
fn parse_name(name: &str) -> Option<Name> {
    let mut parsed = Name::from_ascii(name).ok()?;
    parsed.set_fqdn(true);
    Some(parsed.to_lowercase())
}

fn parse_name_or_panic(name: &str) -> Name {
    match parse_name(name) {
        Some(parsed) => parsed,
        None => panic!("dnscore-testkit: invalid domain name {name:?}"),
    }
}

fn static_name(name: &str) -> io::Result<Name> {
    Name::from_ascii(name).map_err(io::Error::other)
}

fn apex_name() -> io::Result<Name> {
    static_name("test.")
}

/// The default zone (see [`TestUpstream`]).
fn default_zone() -> io::Result<HashMap<Name, Vec<Record>>> {
    let apex = apex_name()?;
    let a = static_name("a.test.")?;
    let mut zone: HashMap<Name, Vec<Record>> = HashMap::new();
    let mut add = |name: &Name, ttl: u32, rdata: RData| {
        zone.entry(name.clone())
            .or_default()
            .push(Record::from_rdata(name.clone(), ttl, rdata));
    };
    add(
        &apex,
        300,
        RData::SOA(SOA::new(
            static_name("ns.test.")?,
            static_name("hostmaster.test.")?,
            1,
            3600,
            600,
            86_400,
            60,
        )),
    );
    add(&a, 300, RData::A(A::new(192, 0, 2, 1)));
    add(
        &a,
        300,
        RData::AAAA(AAAA(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))),
    );
    add(&static_name("b.test.")?, 60, RData::A(A::new(192, 0, 2, 2)));
    add(
        &static_name("alias.test.")?,
        300,
        RData::CNAME(CNAME(a.clone())),
    );
    let big = static_name("big.test.")?;
    for i in 0..40 {
        let text = format!("{i:02}-{}", "x".repeat(57));
        add(&big, 300, RData::TXT(TXT::new(vec![text])));
    }
    add(
        &static_name("short.test.")?,
        1,
        RData::A(A::new(192, 0, 2, 3)),
    );
    Ok(zone)
}

/// Binds a UDP socket on a kernel-chosen port of `ip`, then a TCP listener on
/// the same port, trying other ports if the TCP one is taken.
fn bind_pair(ip: Ipv4Addr) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    // Failed UDP sockets are kept open until the end so that the kernel does
    // not hand out the same port again.
    let mut tried = Vec::new();
    let mut last_error = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = std::net::UdpSocket::bind(SocketAddr::from((ip, 0)))?;
        let port = udp.local_addr()?.port();
        match std::net::TcpListener::bind(SocketAddr::from((ip, port))) {
            Ok(listener) => return Ok((udp, listener)),
            Err(e) => {
                debug!(port, error = %e, "TCP port taken, trying another UDP port");
                last_error = Some(e);
                tried.push(udp);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free UDP+TCP port pair found")))
}

impl Inner {
    fn new(addr: SocketAddr, zone: HashMap<Name, Vec<Record>>, apex: Name) -> Self {
        Self {
            addr,
            apex,
            zone: Mutex::new(zone),
            counters: Mutex::new(HashMap::new()),
            source_ports: Mutex::new(HashSet::new()),
            port_ranks: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            tcp_connections: AtomicUsize::new(0),
            last_query: Mutex::new(None),
            behaviors: Mutex::new(HashMap::new()),
            default_behavior: Mutex::new(Behavior::Normal),
            stopped: AtomicBool::new(false),
            control: Mutex::new(Control::default()),
        }
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut control = lock(&self.control);
        if let Some(udp) = control.udp.take() {
            // Connecting the socket to its own address makes the kernel
            // deliver it only datagrams from itself: every other datagram to
            // the port now finds no socket, and the kernel answers it with ICMP
            // port unreachable (ECONNREFUSED for a connected client) at once,
            // while the tokio side of the socket is closed asynchronously when
            // the aborted task is dropped.
            if let Err(e) = udp.connect(self.addr) {
                warn!(error = %e, "could not disconnect the UDP socket");
            }
        }
        if let Some(listener) = control.listener.take() {
            // shutdown(2) on a listening socket stops it listening (Linux):
            // new connections are refused from now on.
            if let Err(e) = socket2::SockRef::from(&listener).shutdown(Shutdown::Both) {
                warn!(error = %e, "could not shut the TCP listener down");
            }
        }
        for (_, stream) in control.connections.drain() {
            // NotConnected just means the peer went away already.
            let _ = stream.shutdown(Shutdown::Both);
        }
        for task in control.tasks.drain(..) {
            task.abort();
        }
        debug!(addr = %self.addr, "test upstream stopped");
    }

    /// Keeps a duplicate of a new TCP connection's descriptor so that `stop`
    /// and [`Behavior::CloseTcp`] can close it. Returns the stream and its id.
    fn register_connection(&self, stream: TcpStream) -> io::Result<(TcpStream, u64)> {
        let stream = stream.into_std()?;
        let control_dup = stream.try_clone()?;
        let stream = TcpStream::from_std(stream)?;
        let mut control = lock(&self.control);
        if self.is_stopped() {
            let _ = control_dup.shutdown(Shutdown::Both);
            return Err(io::Error::other("server stopped"));
        }
        let id = control.next_connection_id;
        control.next_connection_id += 1;
        control.connections.insert(id, control_dup);
        Ok((stream, id))
    }

    fn unregister_connection(&self, id: u64) {
        lock(&self.control).connections.remove(&id);
    }

    /// Closes one TCP connection (both directions) now.
    fn close_connection(&self, id: u64) {
        if let Some(stream) = lock(&self.control).connections.remove(&id) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Parses and counts a query. Returns `None` for bytes that are not a
    /// well-formed query with exactly one question.
    fn accept_query(&self, bytes: &[u8], proto: Proto) -> Option<(Message, Behavior)> {
        let query = match Message::from_vec(bytes) {
            Ok(query) => query,
            Err(e) => {
                debug!(%proto, len = bytes.len(), error = %e, "dropping malformed query");
                return None;
            }
        };
        if query.metadata.message_type != MessageType::Query || query.queries.len() != 1 {
            debug!(%proto, "dropping a message that is not a one-question query");
            return None;
        }
        let name = query.queries[0].name().to_lowercase();
        trace!(%proto, %name, qtype = %query.queries[0].query_type(), id = query.metadata.id, "query");
        *lock(&self.counters)
            .entry((name.clone(), proto))
            .or_insert(0) += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        *lock(&self.last_query) = Some(query.clone());
        let behavior = lock(&self.behaviors)
            .get(&name)
            .cloned()
            .unwrap_or_else(|| lock(&self.default_behavior).clone());
        Some((query, behavior))
    }

    /// The normal answer to `query` from the zone.
    fn answer(&self, query: &Message) -> Message {
        let mut resp = response_skeleton(query);
        if query.metadata.op_code != OpCode::Query {
            resp.metadata.response_code = ResponseCode::NotImp;
            return resp;
        }
        let Some(question) = query.queries.first() else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return resp;
        };
        if question.query_class() != DNSClass::IN {
            resp.metadata.response_code = ResponseCode::Refused;
            return resp;
        }
        let qtype = question.query_type();
        let zone = lock(&self.zone);
        let serves = |name: &Name| {
            self.apex.zone_of(name) || zone.contains_key(name) || soa_owner(&zone, name).is_some()
        };
        if !serves(question.name()) {
            resp.metadata.response_code = ResponseCode::Refused;
            return resp;
        }
        resp.metadata.authoritative = true;

        // Owner names are written as looked up: the question as sent, then
        // the CNAME targets.
        let mut current = question.name().clone();
        for _ in 0..MAX_CNAME_CHAIN {
            let Some(records) = zone.get(&current) else {
                let empty_non_terminal = zone.keys().any(|k| current.zone_of(k));
                if !empty_non_terminal {
                    resp.metadata.response_code = ResponseCode::NXDomain;
                }
                self.add_soa(&zone, &mut resp);
                return resp;
            };
            let matching: Vec<Record> = records
                .iter()
                .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                .map(|r| with_owner(r, &current))
                .collect();
            if !matching.is_empty() {
                resp.answers.extend(matching);
                return resp;
            }
            let cname = records.iter().find_map(|r| match &r.data {
                RData::CNAME(target) => Some((r, target.0.clone())),
                _ => None,
            });
            let Some((cname_record, target)) = cname else {
                // NODATA
                self.add_soa(&zone, &mut resp);
                return resp;
            };
            resp.answers.push(with_owner(cname_record, &current));
            if !serves(&target) {
                return resp;
            }
            current = target;
        }
        resp
    }

    /// The SOA of the zone the question is in: the closest one above it, else `test.`'s.
    fn add_soa(&self, zone: &HashMap<Name, Vec<Record>>, resp: &mut Message) {
        let owner = resp
            .queries
            .first()
            .and_then(|q| soa_owner(zone, q.name()))
            .unwrap_or_else(|| self.apex.clone());
        if let Some(records) = zone.get(&owner) {
            resp.authorities.extend(
                records
                    .iter()
                    .filter(|r| r.record_type() == RecordType::SOA)
                    .cloned(),
            );
        }
    }
}

/// The closest name at or above `name` that has an SOA record in `zone`.
fn soa_owner(zone: &HashMap<Name, Vec<Record>>, name: &Name) -> Option<Name> {
    let mut current = name.clone();
    loop {
        let has_soa = zone
            .get(&current)
            .is_some_and(|rs| rs.iter().any(|r| r.record_type() == RecordType::SOA));
        if has_soa {
            return Some(current);
        }
        if current.is_root() {
            return None;
        }
        current = current.base_name();
    }
}

fn with_owner(record: &Record, owner: &Name) -> Record {
    let mut record = record.clone();
    record.name = owner.clone();
    record
}

fn server_edns() -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(SERVER_UDP_PAYLOAD);
    edns
}

/// A response header and question echoing `query`, with an OPT if it had one.
fn response_skeleton(query: &Message) -> Message {
    let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    resp.metadata.recursion_available = false;
    resp.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        resp.set_edns(server_edns());
    }
    resp
}

/// `resp` without any record and with TC=1 (the OPT is kept).
fn truncated(resp: &Message) -> Message {
    let mut tc = Message::new(
        resp.metadata.id,
        MessageType::Response,
        resp.metadata.op_code,
    );
    tc.metadata = resp.metadata;
    tc.metadata.truncation = true;
    tc.add_queries(resp.queries.iter().cloned());
    if let Some(edns) = &resp.edns {
        tc.set_edns(edns.clone());
    }
    tc
}

/// The largest UDP response the client of `query` accepts.
fn udp_limit(query: &Message) -> usize {
    let limit = match &query.edns {
        Some(edns) => edns.max_payload().max(PLAIN_UDP_LIMIT),
        None => PLAIN_UDP_LIMIT,
    };
    usize::from(limit)
}

/// The forged answers of [`Behavior::ForgeFirst`], in sending order.
fn forged_packets(query: &Message) -> Vec<Vec<u8>> {
    let id = query.metadata.id;
    let Some(question) = query.queries.first() else {
        return Vec::new();
    };
    let forge = |id: u16, message_type: MessageType, question: Query| {
        let mut msg = Message::new(id, message_type, OpCode::Query);
        msg.metadata.authoritative = true;
        msg.metadata.recursion_desired = query.metadata.recursion_desired;
        let owner = question.name().clone();
        msg.add_query(question);
        msg.add_answer(Record::from_rdata(
            owner,
            FORGED_TTL,
            RData::A(A::new(6, 6, 6, 6)),
        ));
        msg.to_vec()
    };
    let mut foreign = question.clone();
    match Name::from_ascii(FORGED_NAME) {
        Ok(name) => {
            foreign.set_name(name);
        }
        Err(e) => warn!(error = %e, "could not build the forged name"),
    }
    let [id_hi, id_lo] = id.to_be_bytes();
    let mut packets: Vec<Vec<u8>> = [
        forge(id ^ 0x5a5a, MessageType::Response, question.clone()),
        forge(id, MessageType::Response, foreign),
        forge(id, MessageType::Query, question.clone()),
    ]
    .into_iter()
    .filter_map(|packet| {
        packet
            .inspect_err(|e| warn!(error = %e, "could not encode a forged answer"))
            .ok()
    })
    .collect();
    packets.push(vec![id_hi, id_lo, 0x85, 0x80, 0x00, 0x01, 0xde]);
    packets
}

fn encode(msg: &Message) -> Option<Vec<u8>> {
    msg.to_vec()
        .inspect_err(|e| warn!(error = %e, "could not encode a response"))
        .ok()
}

/// Where the answers to one query go.
enum Reply {
    Udp {
        sock: Arc<UdpSocket>,
        peer: SocketAddr,
        /// How many distinct source ports the server had seen before this one's first
        /// datagram.
        rank: usize,
    },
    Tcp {
        /// Frames (length prefix included) for the connection's writer task.
        tx: mpsc::UnboundedSender<Vec<u8>>,
        connection_id: u64,
    },
}

impl Reply {
    fn proto(&self) -> Proto {
        match self {
            Self::Udp { .. } => Proto::Udp,
            Self::Tcp { .. } => Proto::Tcp,
        }
    }

    async fn send(&self, inner: &Inner, bytes: &[u8]) {
        if inner.is_stopped() {
            return;
        }
        match self {
            Self::Udp { sock, peer, .. } => {
                if let Err(e) = sock.send_to(bytes, *peer).await {
                    debug!(%peer, error = %e, "UDP send failed");
                }
            }
            Self::Tcp { tx, .. } => {
                let Ok(len) = u16::try_from(bytes.len()) else {
                    warn!(len = bytes.len(), "response too large for TCP framing");
                    return;
                };
                let mut frame = Vec::with_capacity(bytes.len() + 2);
                frame.extend_from_slice(&len.to_be_bytes());
                frame.extend_from_slice(bytes);
                // An error means the connection is gone: nothing to do.
                let _ = tx.send(frame);
            }
        }
    }

    /// The client's source port, and its rank (see [`Reply::Udp`]), over UDP.
    fn udp_port(&self) -> Option<(u16, usize)> {
        match self {
            Self::Udp { peer, rank, .. } => Some((peer.port(), *rank)),
            Self::Tcp { .. } => None,
        }
    }

    /// Sends `resp`, replaced by its truncated form over UDP if it does not fit.
    async fn send_message(&self, inner: &Inner, query: &Message, resp: &Message) {
        let Some(mut bytes) = encode(resp) else {
            return;
        };
        if self.proto() == Proto::Udp && bytes.len() > udp_limit(query) {
            let Some(tc) = encode(&truncated(resp)) else {
                return;
            };
            bytes = tc;
        }
        self.send(inner, &bytes).await;
    }
}

/// Answers one query according to its behaviour.
async fn respond(inner: Arc<Inner>, query: Message, behavior: Behavior, reply: Reply) {
    let proto = reply.proto();
    match behavior {
        Behavior::Normal => {
            let resp = inner.answer(&query);
            reply.send_message(&inner, &query, &resp).await;
        }
        Behavior::Extra {
            answers,
            authority,
            additional,
        } => {
            let mut resp = inner.answer(&query);
            resp.add_answers(answers);
            resp.add_authorities(authority);
            resp.add_additionals(additional);
            reply.send_message(&inner, &query, &resp).await;
        }
        Behavior::LowercaseQuestion => {
            let mut resp = inner.answer(&query);
            for q in &mut resp.queries {
                let lower = q.name().to_lowercase();
                q.set_name(lower);
            }
            reply.send_message(&inner, &query, &resp).await;
        }
        Behavior::TruncateUdp => {
            let resp = inner.answer(&query);
            let resp = match proto {
                Proto::Udp => truncated(&resp),
                Proto::Tcp => resp,
            };
            reply.send_message(&inner, &query, &resp).await;
        }
        Behavior::TruncateAlways => {
            let resp = truncated(&inner.answer(&query));
            reply.send_message(&inner, &query, &resp).await;
        }
        Behavior::Delay(delay) => {
            tokio::time::sleep(delay).await;
            let resp = inner.answer(&query);
            reply.send_message(&inner, &query, &resp).await;
        }
        Behavior::Drop => {}
        Behavior::DropOneIn(n) => {
            let dead = reply
                .udp_port()
                .is_some_and(|(_, rank)| rank.is_multiple_of(usize::from(n.max(2))));
            if !dead {
                let resp = inner.answer(&query);
                reply.send_message(&inner, &query, &resp).await;
            }
        }
        Behavior::DropPorts(ports) => {
            if !reply.udp_port().is_some_and(|(p, _)| ports.contains(&p)) {
                let resp = inner.answer(&query);
                reply.send_message(&inner, &query, &resp).await;
            }
        }
        Behavior::ServFail | Behavior::Refused => {
            let mut resp = response_skeleton(&query);
            resp.metadata.response_code = if behavior == Behavior::ServFail {
                ResponseCode::ServFail
            } else {
                ResponseCode::Refused
            };
            reply.send_message(&inner, &query, &resp).await;
        }
        Behavior::ForgeFirst => {
            for forged in forged_packets(&query) {
                reply.send(&inner, &forged).await;
            }
            let resp = inner.answer(&query);
            reply.send_message(&inner, &query, &resp).await;
        }
        Behavior::CloseTcp => match &reply {
            Reply::Tcp { connection_id, .. } => inner.close_connection(*connection_id),
            Reply::Udp { .. } => {
                let resp = truncated(&inner.answer(&query));
                reply.send_message(&inner, &query, &resp).await;
            }
        },
    }
}

async fn udp_loop(inner: Arc<Inner>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let received = sock.recv_from(&mut buf).await;
        if inner.is_stopped() {
            break;
        }
        match received {
            Ok((len, peer)) => {
                let Some((query, behavior)) = inner.accept_query(&buf[..len], Proto::Udp) else {
                    continue;
                };
                lock(&inner.source_ports).insert(peer.port());
                let rank = {
                    let mut ranks = lock(&inner.port_ranks);
                    let next = ranks.len();
                    *ranks.entry(peer.port()).or_insert(next)
                };
                let reply = Reply::Udp {
                    sock: Arc::clone(&sock),
                    peer,
                    rank,
                };
                tokio::spawn(respond(Arc::clone(&inner), query, behavior, reply));
            }
            Err(e) => {
                debug!(error = %e, "UDP receive failed");
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let accepted = listener.accept().await;
        if inner.is_stopped() {
            break;
        }
        match accepted {
            Ok((stream, peer)) => {
                trace!(%peer, "TCP connection accepted");
                inner.tcp_connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_connection(Arc::clone(&inner), stream));
            }
            Err(e) => {
                debug!(error = %e, "TCP accept failed");
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
}

/// Serves one TCP connection: reads length-framed queries and answers each in
/// its own task, through a writer task, so answers can go out of order.
async fn serve_connection(inner: Arc<Inner>, stream: TcpStream) {
    let (stream, connection_id) = match inner.register_connection(stream) {
        Ok(registered) => registered,
        Err(e) => {
            debug!(error = %e, "dropping TCP connection");
            return;
        }
    };
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer_task = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if let Err(e) = writer.write_all(&frame).await {
                debug!(error = %e, "TCP write failed");
                break;
            }
        }
    });
    // Ends at EOF or on a reset.
    while let Ok(len) = reader.read_u16().await {
        let mut buf = vec![0u8; usize::from(len)];
        if reader.read_exact(&mut buf).await.is_err() {
            break;
        }
        if let Some((query, behavior)) = inner.accept_query(&buf, Proto::Tcp) {
            let reply = Reply::Tcp {
                tx: tx.clone(),
                connection_id,
            };
            tokio::spawn(respond(Arc::clone(&inner), query, behavior, reply));
        }
    }
    // The writer keeps going until the answers still being prepared are sent.
    drop(tx);
    let _ = writer_task.await;
    inner.unregister_connection(connection_id);
}
