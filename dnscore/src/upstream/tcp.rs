//! TCP transport (RFC 7766), used only after a truncated UDP answer: at most a few
//! connections per upstream (the EC2 resolver serves two at once), queries pipelined on
//! them and matched to answers by ID and question, so answers may come back in any order.
//!
//! Each connection is two tasks: a writer fed by a channel, which closes the connection when
//! it has been idle, and a reader, which hands each answer to the query waiting for it. When
//! the connection ends, every query still waiting on it gets `ConnectionClosed` at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::answer::Answer;
use crate::error::UpstreamError;
use crate::query::Key;
use crate::wire::{push_u16, u16_at};

/// Queries one connection may have outstanding; past it a new connection is opened, or the
/// attempt fails as overloaded.
const MAX_PENDING_PER_CONNECTION: usize = 1024;

/// The connections to one upstream.
pub(crate) struct TcpPool {
    addr: SocketAddr,
    max_connections: usize,
    idle_timeout: Duration,
    /// Held across a connect, so that concurrent truncated answers share one new connection
    /// instead of each opening their own.
    connections: tokio::sync::Mutex<Vec<Arc<Connection>>>,
}

/// A query waiting for its answer on a connection.
struct Pending {
    /// What was sent, to validate the answer against.
    query: Vec<u8>,
    reply: oneshot::Sender<Result<Answer, UpstreamError>>,
}

struct Connection {
    addr: SocketAddr,
    /// Length-prefixed frames for the writer task.
    frames: mpsc::UnboundedSender<Vec<u8>>,
    /// Queries sent and not yet answered, by ID.
    pending: Mutex<HashMap<u16, Pending>>,
    /// Set when either task ended: no new query goes to this connection.
    closed: AtomicBool,
}

impl TcpPool {
    pub(crate) fn new(addr: SocketAddr, max_connections: usize, idle_timeout: Duration) -> Self {
        Self {
            addr,
            max_connections: max_connections.max(1),
            idle_timeout,
            connections: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// Sends `key` over one of the pool's connections and waits for the answer.
    pub(crate) async fn exchange(&self, key: Key<'_>) -> Result<Answer, UpstreamError> {
        let conn = self.connection().await?;
        let (tx, rx) = oneshot::channel();
        let (id, frame) = {
            let mut pending = conn.pending();
            if pending.len() >= MAX_PENDING_PER_CONNECTION {
                return Err(UpstreamError::Overloaded(self.addr));
            }
            let id = loop {
                let id: u16 = rand::random();
                if !pending.contains_key(&id) {
                    break id;
                }
            };
            let query = key.upstream_query(id);
            let mut frame = Vec::with_capacity(query.len() + 2);
            push_u16(&mut frame, query.len() as u16);
            frame.extend_from_slice(&query);
            pending.insert(id, Pending { query, reply: tx });
            (id, frame)
        };
        // Forget the query if the caller gives up (timeout, or another upstream won).
        let _forget = Forget { conn: &conn, id };
        // `close` sets the flag before it fails the pending queries: a query added after
        // that sees the flag here instead of waiting for an answer that cannot come.
        if conn.closed.load(Ordering::Acquire) || conn.frames.send(frame).is_err() {
            return Err(UpstreamError::ConnectionClosed(self.addr));
        }
        rx.await
            .unwrap_or(Err(UpstreamError::ConnectionClosed(self.addr)))
    }

    /// The least busy open connection, or a new one while there are fewer than the maximum
    /// and every open one is busy.
    async fn connection(&self) -> Result<Arc<Connection>, UpstreamError> {
        let mut conns = self.connections.lock().await;
        conns.retain(|c| !c.closed.load(Ordering::Acquire));
        let least_busy = conns
            .iter()
            .min_by_key(|c| c.pending().len())
            .map(|c| (Arc::clone(c), c.pending().len()));
        if let Some((conn, load)) = least_busy
            && (load == 0 || conns.len() >= self.max_connections)
        {
            return Ok(conn);
        }
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| UpstreamError::from_io(self.addr, e))?;
        // Queries are small and latency-bound.
        let _ = stream.set_nodelay(true);
        let conn = Connection::spawn(self.addr, stream, self.idle_timeout);
        conns.push(Arc::clone(&conn));
        Ok(conn)
    }
}

impl Connection {
    fn spawn(addr: SocketAddr, stream: TcpStream, idle_timeout: Duration) -> Arc<Self> {
        let (frames, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Self {
            addr,
            frames,
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        });
        let (read, write) = stream.into_split();
        let reader = tokio::spawn(Arc::clone(&conn).read_loop(read));
        tokio::spawn(Arc::clone(&conn).write_loop(write, rx, idle_timeout, reader));
        conn
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<u16, Pending>> {
        // A poisoned map is still a valid map: every operation on it is a single insert or
        // remove.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads answers until the connection ends, then fails whatever is still waiting.
    async fn read_loop(self: Arc<Self>, mut read: OwnedReadHalf) {
        let conn = CloseOnDrop(self);
        let mut buf = Vec::new();
        while let Ok(len) = read.read_u16().await {
            buf.resize(usize::from(len), 0);
            if read.read_exact(&mut buf).await.is_err() {
                break;
            }
            conn.0.deliver(&buf);
        }
    }

    /// Hands one answer to the query with its ID, if it is the answer to that query.
    fn deliver(&self, frame: &[u8]) {
        let Ok(id) = u16_at(frame, 0) else {
            return;
        };
        let mut pending = self.pending();
        let Some(waiting) = pending.get(&id) else {
            tracing::debug!(addr = %self.addr, id, "TCP answer for no pending query");
            return;
        };
        let answer = match Answer::parse(&waiting.query, frame, Instant::now()) {
            Ok(answer) => answer,
            // RFC 5452 §9.1: a mismatched answer does not end the wait; nor does a
            // malformed one (a query may come here after forged UDP answers, and the
            // forger may be on the path).
            Err(why) => {
                tracing::debug!(addr = %self.addr, id, ?why, "dropped a TCP answer");
                return;
            }
        };
        if let Some(waiting) = pending.remove(&id) {
            let _ = waiting.reply.send(Ok(answer));
        }
    }

    /// Writes queued frames; closes the connection once it has been idle (no frame written
    /// and nothing pending) for `idle_timeout`.
    async fn write_loop(
        self: Arc<Self>,
        mut write: OwnedWriteHalf,
        mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
        idle_timeout: Duration,
        reader: tokio::task::JoinHandle<()>,
    ) {
        let _closing = CloseOnDrop(Arc::clone(&self));
        loop {
            match tokio::time::timeout(idle_timeout, frames.recv()).await {
                Ok(Some(frame)) => {
                    if write.write_all(&frame).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(_idle) if self.pending().is_empty() => break,
                Err(_busy) => {}
            }
            if self.closed.load(Ordering::Acquire) {
                break;
            }
        }
        reader.abort();
        let _ = write.shutdown().await;
    }

    /// Marks the connection closed and fails every pending query, so that the pool retries
    /// them elsewhere now rather than after a timeout.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let drained: Vec<Pending> = self.pending().drain().map(|(_, p)| p).collect();
        for p in drained {
            let _ = p
                .reply
                .send(Err(UpstreamError::ConnectionClosed(self.addr)));
        }
    }
}

/// Closes the connection when dropped: when either task's loop ends, and also when the task
/// is dropped unfinished (the runtime it ran on shut down), so that the pool never keeps a
/// connection that nothing drives any more.
struct CloseOnDrop(Arc<Connection>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Removes a query from its connection's pending map when the caller stops waiting.
struct Forget<'a> {
    conn: &'a Connection,
    id: u16,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.conn.pending().remove(&self.id);
    }
}
