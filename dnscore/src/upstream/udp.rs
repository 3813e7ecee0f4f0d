//! UDP transport: a few sticky *connected* sockets per upstream, each carrying many queries,
//! retired on any doubt.
//!
//! Why sticky: every new 5-tuple is a new conntrack entry on the node (the problem dnscore
//! exists for), and a pod that resolves many distinct names would otherwise cost one per
//! miss. Why connected: the kernel delivers only datagrams from the upstream's address and
//! port (the first check of RFC 5452 §9.1), and an ICMP port unreachable from an evicted pod
//! surfaces at once as `ECONNREFUSED`.
//!
//! Each socket has one reader task that matches answers to its outstanding queries by ID
//! and question (RFC 5452 §9.1); IDs are random and unique among that socket's outstanding
//! queries. A socket is **retired** (no new query goes to it; it closes once its last
//! outstanding query is answered or given up, and the next query opens a fresh one on a new
//! port, so a new 5-tuple and a new DNAT choice behind a Service IP):
//! - at once on `ECONNREFUSED`, failing its outstanding queries so the pool re-drives them;
//! - when an attempt on it times out: its conntrack entry may lead to a dead endpoint. If
//!   the socket has answered nothing since that query was sent (the mark of such an
//!   entry), the other queries outstanding on it keep listening and are told they are
//!   *stranded*, so that the pool sends them again elsewhere at once, free of the retry
//!   budget; if it answered others meanwhile (a slow upstream, a lost packet), they just
//!   keep waiting;
//! - on a burst of forged or mismatched datagrams ([`SUSPICIOUS_BURST`]; an answer to a
//!   query given up in the last [`LATE_WINDOW`] is late, not forged), failing its queries
//!   with [`UpstreamError::Spoofed`]; the attempt then asks over TCP, as BIND and
//!   pdns-recursor do;
//! - after [`MAX_SOCKET_USES`] queries or [`MAX_SOCKET_AGE`] (port rotation; see there).
//!
//! With zero sockets configured, every attempt gets a socket of its own, retired as soon as
//! its query is sent (a fresh 5-tuple per attempt, the behaviour before pooling).
//!
//! # Security trade-off
//! A fresh random port per query adds ~16 bits of entropy that an off-path spoofer must
//! guess besides the ID (RFC 5452 §9.2). Sticky sockets give most of that up while a
//! socket lives: the spoofer must still guess the ID (16 bits, random, unique per socket)
//! and which of the few ports is in use. Made up for by: rotation, retiring a socket that
//! receives a burst of mismatched datagrams (and asking its queries over TCP), dedup (one
//! query per question in flight, RFC 5452 §5), and, as an option, 0x20 case randomisation
//! (`case_randomization`). On Kubernetes the path to CoreDNS is the node's own network.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket as RawSocket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use crate::answer::{Answer, ResponseError};
use crate::error::UpstreamError;
use crate::query::Key;
use crate::wire::{get_u16, randomize_case};

/// Hashes our own random query IDs (quick_cache's seeded foldhash; SipHash cost a miss a
/// few hundred instructions).
type IdHasher = quick_cache::DefaultHashBuilder;

/// Receive buffer of a socket. We advertise 1232 bytes; a datagram that fills this buffer
/// may have been cut by the kernel, and is treated as truncated.
const RECV_BUFFER: usize = 4096;
/// Queries one socket may have outstanding. Past it another socket is used, or a socket of
/// the query's own: the more IDs are outstanding on one port, the likelier a spoofed ID hits
/// one (RFC 5452 §4.1), so this stays far below the 65,536 IDs.
pub(crate) const MAX_OUTSTANDING_PER_SOCKET: usize = 256;
/// Queries after which a socket is rotated. With [`MAX_SOCKET_AGE`] it bounds how long one
/// port is exposed to a spoofer who learned it, and how long one conntrack entry pins this
/// pod to one CoreDNS endpoint behind the Service IP (a new replica gets this pod's
/// queries only from sockets opened after it appeared). At 4 sockets and 1,000 misses per
/// second a socket lives ~16 s; a rotation costs one conntrack entry.
pub(crate) const MAX_SOCKET_USES: u32 = 4096;
/// Age after which a socket is rotated (see [`MAX_SOCKET_USES`]): a minute bounds how long
/// a scaled-up CoreDNS waits for this pod's queries, and costs at most one conntrack entry
/// per socket per minute (conntrack keeps an answered UDP entry 120 s by default).
pub(crate) const MAX_SOCKET_AGE: Duration = Duration::from_secs(60);
/// Forged or mismatched datagrams (a wrong question or flags for an outstanding ID, or an
/// ID nothing waits for) that retire a socket when they come within [`SUSPICIOUS_WINDOW`].
pub(crate) const SUSPICIOUS_BURST: u32 = 8;
/// See [`SUSPICIOUS_BURST`].
const SUSPICIOUS_WINDOW: Duration = Duration::from_secs(1);
/// How long the ID of a query given up (its attempt ended unanswered) is remembered: an
/// answer for it is late, not forged, and the ID is not reused meanwhile.
const LATE_WINDOW: Duration = Duration::from_secs(5);
/// IDs given up that a socket remembers at most (bounded memory under any load).
const MAX_REMEMBERED_LATE: usize = 1024;

/// What a UDP attempt brought back.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A valid answer (which may itself say TC=1).
    Answer(Answer),
    /// A datagram larger than we can hold: ask again over TCP, as for TC=1.
    TooLarge,
}

/// What a [`Ticket`] reports while its query waits.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// The query's socket was retired by another query's timeout: its packets may lead
    /// nowhere. The query still listens.
    Stranded,
    /// The end: an answer, or why there will be none.
    Reply(Result<Reply, UpstreamError>),
}

/// Why a socket is retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retire {
    /// Port rotation, a socket used for one query only, or one whose upstream left:
    /// nothing is known to be wrong with it.
    Rotation,
    /// An attempt on it timed out, and it answered nothing since that attempt was sent:
    /// its queries are told they are stranded. May follow a `Rotation` (a worn socket can
    /// still go silent).
    Timeout,
}

/// The sockets of one upstream.
pub(crate) struct Sockets {
    addr: SocketAddr,
    /// `size` slots; an empty or retired one gets a fresh socket when next used.
    slots: Mutex<Slots>,
    /// Sockets opened (for stats).
    pub(crate) opened: AtomicU32,
    /// Forged or mismatched datagrams received (for stats).
    pub(crate) suspicious: Arc<AtomicU32>,
    /// When the latest query lost on a socket gone silent was sent: sockets answered only
    /// before it are not known to reach a live endpoint (shared with the sockets).
    last_loss: Arc<Mutex<Option<Instant>>>,
}

struct Slots {
    sockets: Vec<Option<Arc<Socket>>>,
    /// The slot the next first attempt uses.
    next: usize,
}

impl Sockets {
    /// `size` sticky sockets to `addr`; 0 for a fresh socket per attempt.
    pub(crate) fn new(addr: SocketAddr, size: usize) -> Self {
        Self {
            addr,
            slots: Mutex::new(Slots {
                sockets: vec![None; size],
                next: 0,
            }),
            opened: AtomicU32::new(0),
            suspicious: Arc::new(AtomicU32::new(0)),
            last_loss: Arc::default(),
        }
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // Each update is a single slot assignment: a poisoned lock is still consistent.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `key` on one of the sockets and returns the ticket to wait on. A `retry` goes
    /// where a live endpoint is likeliest (see `checkout_retry`); a first attempt on the
    /// next socket in turn. With `exact_case` the question's letters are randomised (0x20)
    /// and the answer must echo them exactly. The socket is retired if the answer has not
    /// come by `retire_at`.
    pub(crate) async fn send(
        &self,
        key: Key<'_>,
        retry: bool,
        exact_case: bool,
        retire_at: Instant,
    ) -> Result<Ticket, UpstreamError> {
        let now = Instant::now();
        // A socket retired or closed between the checkout and the `add` (another query's
        // timeout, its reader's end) is replaced by the next checkout.
        let (socket, shared, id, query, rx) = loop {
            let (socket, shared) = self.checkout(retry, now)?;
            let (reply, rx) = oneshot::channel();
            let added = (!shared || !socket.is_retired())
                .then(|| {
                    socket.state().add(
                        |id| {
                            let mut query = key.upstream_query(id);
                            if exact_case {
                                randomize_case(&mut query);
                            }
                            query
                        },
                        exact_case,
                        retire_at,
                        reply,
                    )
                })
                .flatten();
            if let Some((id, query)) = added {
                break (socket, shared, id, query, rx);
            }
        };
        if !shared {
            socket.retire(Retire::Rotation);
        }
        let ticket = Ticket {
            retired: socket.retired.subscribe(),
            socket,
            id,
            reply: rx,
            retire_at,
            sent_at: now,
            stranded: false,
        };
        if let Err(err) = ticket.socket.udp.send(&query).await {
            let err = UpstreamError::from_io(self.addr, err);
            if matches!(err, UpstreamError::Refused(_)) {
                ticket.socket.close(&err);
            }
            return Err(err);
        }
        Ok(ticket)
    }

    /// A socket for a query, and whether it is shared (kept in a slot); rotated and
    /// retired sockets are replaced here.
    fn checkout(&self, retry: bool, now: Instant) -> Result<(Arc<Socket>, bool), UpstreamError> {
        let mut slots = self.slots();
        let n = slots.sockets.len();
        if n == 0 {
            return Ok((self.open()?, false));
        }
        for slot in &mut slots.sockets {
            if let Some(s) = slot
                && (s.is_retired() || s.worn(now))
            {
                s.retire(Retire::Rotation);
                *slot = None;
            }
        }
        if retry {
            return self.checkout_retry(&mut slots, now);
        }
        let usable = |s: &Arc<Socket>| s.outstanding() < MAX_OUTSTANDING_PER_SOCKET;
        for _ in 0..n {
            let i = slots.next % n;
            slots.next = slots.next.wrapping_add(1);
            match &slots.sockets[i] {
                Some(s) if usable(s) => {
                    s.uses.fetch_add(1, Ordering::Relaxed);
                    return Ok((Arc::clone(s), true));
                }
                Some(_) => {}
                None => {
                    let s = self.open()?;
                    s.uses.fetch_add(1, Ordering::Relaxed);
                    slots.sockets[i] = Some(Arc::clone(&s));
                    return Ok((s, true));
                }
            }
        }
        // Every socket holds its maximum: this query gets one of its own.
        Ok((self.open()?, false))
    }

    /// A socket for a retry, where a live endpoint is likeliest. In order: of the sockets
    /// neither overdue nor gone quiet, the one answered most recently, if that was after
    /// the latest loss on any of them; else one not yet answered (just opened: a new
    /// 5-tuple); else a fresh socket in an empty slot, or in place of the socket gone quiet
    /// that answered longest ago (retired: its queries keep listening); else the one
    /// answered most recently. Behind a Service IP whose endpoint died, every socket open
    /// at that moment may lead to it, and a new port is the way to another endpoint.
    fn checkout_retry(
        &self,
        slots: &mut Slots,
        now: Instant,
    ) -> Result<(Arc<Socket>, bool), UpstreamError> {
        let last_loss = *self.last_loss.lock().unwrap_or_else(|e| e.into_inner());
        let mut answered: Option<(Instant, usize)> = None;
        let mut fresh = None;
        let mut quiet: Option<(Option<Instant>, usize)> = None;
        let mut empty = None;
        for (i, slot) in slots.sockets.iter().enumerate() {
            let Some(s) = slot else {
                empty = empty.or(Some(i));
                continue;
            };
            let state = s.state();
            if state.outstanding() >= MAX_OUTSTANDING_PER_SOCKET {
                continue;
            }
            if state.overdue(now) || state.quiet(now) {
                if quiet.is_none_or(|(at, _)| state.answered_at < at) {
                    quiet = Some((state.answered_at, i));
                }
            } else if let Some(at) = state.answered_at {
                if answered.is_none_or(|(best, _)| at > best) {
                    answered = Some((at, i));
                }
            } else {
                fresh = Some(i);
            }
        }
        let proven = answered.filter(|(at, _)| last_loss.is_none_or(|loss| *at > loss));
        let socket = if let Some(i) = proven.map(|(_, i)| i).or(fresh) {
            slots.sockets[i].clone()
        } else if let Some(i) = empty.or(quiet.map(|(_, i)| i)) {
            if let Some(old) = slots.sockets[i].take() {
                old.retire(Retire::Rotation);
            }
            let s = self.open()?;
            slots.sockets[i] = Some(Arc::clone(&s));
            Some(s)
        } else {
            answered.and_then(|(_, i)| slots.sockets[i].clone())
        };
        // Every socket holds its maximum: a socket of its own.
        let Some(socket) = socket else {
            return Ok((self.open()?, false));
        };
        socket.uses.fetch_add(1, Ordering::Relaxed);
        Ok((socket, true))
    }

    /// Opens a socket and starts its reader.
    fn open(&self) -> Result<Arc<Socket>, UpstreamError> {
        let udp = connect(self.addr).map_err(|e| UpstreamError::from_io(self.addr, e))?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        let socket = Arc::new(Socket {
            udp,
            addr: self.addr,
            worn_at: Instant::now() + MAX_SOCKET_AGE,
            uses: AtomicU32::new(0),
            state: Mutex::new(State::default()),
            retired: watch::Sender::new(None),
            wake: Notify::new(),
            suspicious_total: Arc::clone(&self.suspicious),
            last_loss: Arc::clone(&self.last_loss),
        });
        tokio::spawn(read_loop(Arc::clone(&socket)));
        Ok(socket)
    }
}

impl Sockets {
    /// Retires every socket (the upstream left the list), so that their readers end once
    /// the queries still outstanding on them are done.
    pub(crate) fn retire_all(&self) {
        for slot in &mut self.slots().sockets {
            if let Some(socket) = slot.take() {
                socket.retire(Retire::Rotation);
            }
        }
    }
}

impl Drop for Sockets {
    /// The resolver was dropped: as [`Sockets::retire_all`].
    fn drop(&mut self) {
        self.retire_all();
    }
}

/// One connected socket and the queries outstanding on it.
struct Socket {
    udp: UdpSocket,
    addr: SocketAddr,
    /// When it has lived [`MAX_SOCKET_AGE`] (kept as an instant: every checkout looks at
    /// every slot's, and a comparison is cheaper than an age).
    worn_at: Instant,
    /// Queries sent on it.
    uses: AtomicU32,
    state: Mutex<State>,
    /// Set once, when the socket is retired; queries waiting on it watch it.
    retired: watch::Sender<Option<Retire>>,
    /// Wakes the reader to look whether it may end (retired, nothing outstanding).
    wake: Notify,
    suspicious_total: Arc<AtomicU32>,
    /// See [`Sockets`].
    last_loss: Arc<Mutex<Option<Instant>>>,
}

/// The queries outstanding on one socket, and what its datagrams have shown.
#[derive(Default)]
pub(crate) struct State {
    pending: HashMap<u16, Pending, IdHasher>,
    /// The reader has ended: nothing more is read.
    closed: bool,
    /// Forged or mismatched datagrams in the current window, and when it began.
    suspicious: u32,
    suspicious_since: Option<Instant>,
    /// When a valid answer last arrived.
    answered_at: Option<Instant>,
    /// IDs of queries given up, and when (see [`LATE_WINDOW`]).
    given_up: HashMap<u16, Instant, IdHasher>,
}

/// What became of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Matched {
    /// It ended an outstanding query.
    Answered,
    /// An answer to a query given up moments ago: dropped, not held against the socket.
    Late,
    /// Forged, stray, late or mismatched: dropped, and the wait goes on.
    Suspicious,
    /// As `Suspicious`, and the last of a burst: the socket must be retired.
    Burst,
}

impl State {
    /// Hands `datagram` to the query with its ID if it answers that query (RFC 5452 §9.1:
    /// ID, flags and question; the source is checked by the connected socket).
    pub(crate) fn deliver(
        &mut self,
        addr: SocketAddr,
        datagram: &[u8],
        cut: bool,
        now: Instant,
    ) -> Matched {
        let id = match datagram.get(..2) {
            Some(_) if !self.closed => get_u16(datagram, 0),
            _ => return self.suspicious(now),
        };
        let Some(waiting) = self.pending.get(&id) else {
            if self
                .given_up
                .remove(&id)
                .is_some_and(|at| now.saturating_duration_since(at) < LATE_WINDOW)
            {
                return Matched::Late;
            }
            tracing::debug!(%addr, id, "UDP datagram for no outstanding query");
            return self.suspicious(now);
        };
        let result = if cut {
            Ok(Reply::TooLarge)
        } else {
            match Answer::parse_as(&waiting.query, datagram, now, waiting.exact_case) {
                Ok(answer) => Ok(Reply::Answer(answer)),
                // RFC 5452 §9.1: a mismatched datagram does not end the wait; nor does a
                // malformed one, which anyone who guessed the ID could send.
                Err(why @ (ResponseError::Mismatch | ResponseError::Malformed)) => {
                    tracing::debug!(%addr, id, ?why, "dropped a UDP datagram");
                    return self.suspicious(now);
                }
                Err(ResponseError::CaseMismatch) => Err(UpstreamError::CaseNotPreserved(addr)),
            }
        };
        if result.is_ok() {
            self.answered_at = Some(now);
        }
        if let Some(waiting) = self.pending.remove(&id) {
            let _ = waiting.reply.send(result);
        }
        Matched::Answered
    }

    fn suspicious(&mut self, now: Instant) -> Matched {
        let fresh = self
            .suspicious_since
            .is_some_and(|at| now.saturating_duration_since(at) < SUSPICIOUS_WINDOW);
        if !fresh {
            self.suspicious = 0;
            self.suspicious_since = Some(now);
        }
        self.suspicious += 1;
        if self.suspicious >= SUSPICIOUS_BURST {
            Matched::Burst
        } else {
            Matched::Suspicious
        }
    }

    /// Adds an outstanding query under a random ID unique on this socket; `build` writes
    /// the query for that ID. `None` once the socket is closed.
    pub(crate) fn add(
        &mut self,
        build: impl FnOnce(u16) -> Vec<u8>,
        exact_case: bool,
        retire_at: Instant,
        reply: oneshot::Sender<Result<Reply, UpstreamError>>,
    ) -> Option<(u16, Vec<u8>)> {
        if self.closed {
            return None;
        }
        let id = loop {
            let id: u16 = rand::random();
            if !self.pending.contains_key(&id) && !self.given_up.contains_key(&id) {
                break id;
            }
        };
        let query = build(id);
        let pending = Pending {
            query: query.clone(),
            exact_case,
            sent_at: Instant::now(),
            retire_at,
            reply,
        };
        self.pending.insert(id, pending);
        Some((id, query))
    }

    /// Queries outstanding.
    pub(crate) fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// Forgets an outstanding query (its caller gave up at `now`); its ID is remembered
    /// for a while, so that a late answer is known for one.
    pub(crate) fn forget(&mut self, id: u16, now: Instant) {
        if self.pending.remove(&id).is_none() {
            return;
        }
        if self.given_up.len() >= MAX_REMEMBERED_LATE {
            self.given_up
                .retain(|_, at| now.saturating_duration_since(*at) < LATE_WINDOW);
            if self.given_up.len() >= MAX_REMEMBERED_LATE {
                self.given_up.clear();
            }
        }
        self.given_up.insert(id, now);
    }

    /// Whether a query outstanding here is past the time its wait retires the socket.
    fn overdue(&self, now: Instant) -> bool {
        self.pending.values().any(|p| p.retire_at <= now)
    }

    /// Whether the socket has gone quiet: a query outstanding for half its wait with
    /// nothing answered since it was sent (a live endpoint answers in about an RTT, far
    /// below the attempt timeout's floor).
    fn quiet(&self, now: Instant) -> bool {
        self.pending.values().any(|p| {
            let half = p.retire_at.saturating_duration_since(p.sent_at) / 2;
            now.saturating_duration_since(p.sent_at) >= half
                && self.answered_at.is_none_or(|at| at <= p.sent_at)
        })
    }

    /// Ends the state: nothing more is delivered; returns what was outstanding.
    pub(crate) fn close(&mut self) -> Vec<Pending> {
        self.closed = true;
        self.pending.drain().map(|(_, p)| p).collect()
    }
}

/// A query waiting on a socket.
pub(crate) struct Pending {
    /// What was sent, to validate the answer against.
    query: Vec<u8>,
    exact_case: bool,
    /// When it was handed to the socket.
    sent_at: Instant,
    /// When the query's own wait retires the socket.
    retire_at: Instant,
    reply: oneshot::Sender<Result<Reply, UpstreamError>>,
}

impl Socket {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every operation leaves the map consistent; a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_retired(&self) -> bool {
        self.retired.borrow().is_some()
    }

    fn worn(&self, now: Instant) -> bool {
        self.uses.load(Ordering::Relaxed) >= MAX_SOCKET_USES || now >= self.worn_at
    }

    fn outstanding(&self) -> usize {
        self.state().outstanding()
    }

    fn answered_at(&self) -> Option<Instant> {
        self.state().answered_at
    }

    /// A query sent at `sent_at` was lost here (see [`Sockets`]'s `last_loss`).
    fn lost(&self, sent_at: Instant) {
        let mut last = self.last_loss.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at < sent_at) {
            *last = Some(sent_at);
        }
    }

    /// No new query goes to this socket; it closes once nothing is outstanding.
    fn retire(&self, why: Retire) {
        let changed = self.retired.send_if_modified(|r| {
            let changed = r.is_none() || (why == Retire::Timeout && *r == Some(Retire::Rotation));
            if changed {
                *r = Some(why);
            }
            changed
        });
        if changed {
            self.wake.notify_one();
        }
    }

    /// Ends the socket: every outstanding query fails with `err` (the pool re-drives them).
    fn close(&self, err: &UpstreamError) {
        self.retire(Retire::Rotation);
        let drained = self.state().close();
        for p in drained {
            let _ = p.reply.send(Err(err.clone()));
        }
        self.wake.notify_one();
    }

    /// Hands a datagram to the query it answers; counts and drops anything else, and
    /// retires the socket on a burst of them (its queries then go over TCP).
    fn deliver(&self, datagram: &[u8], cut: bool, now: Instant) {
        let matched = self.state().deliver(self.addr, datagram, cut, now);
        if matches!(matched, Matched::Suspicious | Matched::Burst) {
            self.suspicious_total.fetch_add(1, Ordering::Relaxed);
        }
        if matched == Matched::Burst {
            tracing::warn!(addr = %self.addr, "a burst of forged or mismatched answers: socket retired, its queries go over TCP");
            self.close(&UpstreamError::Spoofed(self.addr));
        }
    }

    /// Whether the reader may end: retired with nothing outstanding (then it is closed
    /// here, under the same lock, so that no query is added after the check), or closed.
    fn finished(&self) -> bool {
        let mut state = self.state();
        if !state.closed && state.pending.is_empty() && self.is_retired() {
            state.closed = true;
        }
        state.closed
    }
}

/// Reads the socket's datagrams until it is finished (see [`Socket::finished`]).
async fn read_loop(socket: Arc<Socket>) {
    // However the task ends (also dropped unfinished with its runtime), the socket is
    // closed, so that no query waits on a socket nothing reads.
    let socket = CloseOnDrop(socket);
    let socket = &socket.0;
    let mut buf = vec![0u8; RECV_BUFFER];
    // One wait for a wake-up, kept across datagrams (a new one per datagram would join and
    // leave the `Notify`'s list under its lock each time), renewed when it fires.
    let woken = socket.wake.notified();
    tokio::pin!(woken);
    loop {
        tokio::select! {
            received = socket.udp.recv(&mut buf) => match received {
                Ok(len) => socket.deliver(&buf[..len], len >= RECV_BUFFER, Instant::now()),
                Err(err) => {
                    let err = UpstreamError::from_io(socket.addr, err);
                    tracing::debug!(%err, "UDP socket failed: retired");
                    socket.close(&err);
                    return;
                }
            },
            () = &mut woken => woken.set(socket.wake.notified()),
        }
        if socket.finished() {
            return;
        }
    }
}

/// Closes the socket when its reader ends, however it ends.
struct CloseOnDrop(Arc<Socket>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        // Not the upstream's failure (the reader's runtime ended, or it finished): what
        // still waits is asked again elsewhere, and the upstream's health is untouched.
        let addr = self.0.addr;
        self.0.close(&UpstreamError::SocketClosed(addr));
    }
}

/// A query outstanding on a socket. Dropping it forgets the query.
pub(crate) struct Ticket {
    socket: Arc<Socket>,
    id: u16,
    reply: oneshot::Receiver<Result<Reply, UpstreamError>>,
    retired: watch::Receiver<Option<Retire>>,
    /// When this query's own wait retires the socket.
    retire_at: Instant,
    /// When the query was handed to the socket.
    sent_at: Instant,
    /// Stranded was reported, or this query retired the socket itself.
    stranded: bool,
}

impl Ticket {
    /// Waits for what happens next: the answer (or why none will come), or, once, word
    /// that another query's timeout retired the socket. At `retire_at` the socket is
    /// retired, and the wait goes on.
    ///
    /// `retire_at` has no timer here: the caller is woken then by a timer of its own (the
    /// attempt's timeout, the same instant), and this wait looks at the clock when polled.
    /// A timer each would cost a registration and a removal in tokio's wheel per miss.
    pub(crate) async fn next(&mut self) -> Delivery {
        loop {
            tokio::select! {
                reply = &mut self.reply => {
                    let addr = self.socket.addr;
                    return Delivery::Reply(reply.unwrap_or(Err(UpstreamError::ConnectionClosed(addr))));
                }
                Ok(_) = self.retired.wait_for(|r| *r == Some(Retire::Timeout)), if !self.stranded => {
                    self.stranded = true;
                    return Delivery::Stranded;
                }
                () = passed(self.retire_at), if !self.stranded => {
                    self.stranded = true;
                    // Silent since this query was sent: the mark of a conntrack entry that
                    // leads to a dead endpoint, so the others waiting on it are stranded.
                    // Answering others meanwhile: a slow upstream or a lost packet; the
                    // socket is rotated and the others keep waiting.
                    let silent = self
                        .socket
                        .answered_at()
                        .is_none_or(|at| at <= self.sent_at);
                    if silent {
                        self.socket.lost(self.sent_at);
                    }
                    self.socket
                        .retire(if silent { Retire::Timeout } else { Retire::Rotation });
                }
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let empty = {
            let mut state = self.socket.state();
            // An answered query has left `pending` already: only one given up is
            // remembered (for its late answer), and only then is the clock read.
            if state.pending.contains_key(&self.id) {
                state.forget(self.id, Instant::now());
            }
            state.pending.is_empty()
        };
        if empty && self.socket.is_retired() {
            self.socket.wake.notify_one();
        }
    }
}

/// Ready once `at` has passed, looked at when polled; it wakes nothing (see
/// [`Ticket::next`]).
fn passed(at: Instant) -> impl Future<Output = ()> {
    std::future::poll_fn(move |_| {
        if Instant::now() >= at {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
}

/// A non-blocking UDP socket on an ephemeral port, connected to `addr`.
fn connect(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = RawSocket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    socket.bind(&any.into())?;
    socket.connect(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Sends `key` to `addr` from a socket of its own and waits for a valid answer; for probes,
/// which must not share a socket that queries retire. Stray, forged and malformed packets
/// are dropped and the wait goes on; the caller bounds it with a timeout.
pub(crate) async fn exchange_once(addr: SocketAddr, key: Key<'_>) -> Result<Reply, UpstreamError> {
    let socket = connect(addr).map_err(|e| UpstreamError::from_io(addr, e))?;
    let query = key.upstream_query(rand::random());
    socket
        .send(&query)
        .await
        .map_err(|e| UpstreamError::from_io(addr, e))?;
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let len = socket
            .recv(&mut buf)
            .await
            .map_err(|e| UpstreamError::from_io(addr, e))?;
        if len >= RECV_BUFFER && buf.get(..2) == query.get(..2) {
            return Ok(Reply::TooLarge);
        }
        match Answer::parse(&query, &buf[..len], Instant::now()) {
            Ok(answer) => return Ok(Reply::Answer(answer)),
            Err(why) => tracing::debug!(%addr, ?why, len, "dropped a UDP packet"),
        }
    }
}
