//! A plain HTTP/1.1 server on loopback, the far end of the HTTP clients that the adapter
//! tests and the connection benchmark point at a name dnscore resolves.
//!
//! One request per connection: every response says `Connection: close` and the server
//! closes after writing it, so that each request of a client is a new connection, and so
//! a new DNS lookup. The server closes first, so the closed connections wait in TIME_WAIT
//! on its side (one port) rather than using up the client's ephemeral ports.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tracing::debug;

/// The largest request head read; a longer one gets 431 and the connection is closed.
const MAX_HEAD: usize = 16 * 1024;

/// A loopback HTTP/1.1 server answering every request with `200 OK` and a fixed body.
///
/// Stops when dropped.
#[derive(Debug)]
pub struct TestHttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

/// What the connections report to the test.
#[derive(Debug, Default)]
struct Shared {
    /// Requests answered (or being answered) with 200.
    requests: AtomicUsize,
    /// The `Host` header of the latest request answered, which names what the client asked
    /// for (a name, not the address it resolved to).
    last_host: Mutex<Option<String>>,
}

impl TestHttpServer {
    /// Binds a port of `127.0.0.1` and serves `body` as `text/plain` on the current tokio
    /// runtime, each connection in a task of its own.
    ///
    /// # Errors
    ///
    /// Any error from binding the listener.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub async fn start(body: &str) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let response: Arc<[u8]> = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
        .into();
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared), response));
        debug!(%addr, "test HTTP server serving");
        Ok(Self {
            addr,
            shared,
            accept: accept.abort_handle(),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests were answered with 200 so far (counted before the response is
    /// written).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The `Host` header of the latest request answered (e.g. `web.test:8080`).
    pub fn last_host(&self) -> Option<String> {
        self.shared
            .last_host
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for TestHttpServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, response: Arc<[u8]>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, Arc::clone(&shared), Arc::clone(&response)));
            }
            // Out of descriptors, or a connection reset before it was accepted: the next
            // accept may work; back off a moment so that a lasting error cannot spin.
            Err(e) => {
                debug!(error = %e, "test HTTP server: accept failed");
                tokio::time::sleep(crate::ERROR_BACKOFF).await;
            }
        }
    }
}

/// Reads one request head, answers it and closes. A client that goes away is not an error.
async fn serve(mut stream: TcpStream, shared: Arc<Shared>, response: Arc<[u8]>) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(end) = find_end(&head) {
            break end;
        }
        if head.len() > MAX_HEAD {
            let _ = stream
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            return;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    // Counted before the response goes out, so that a client holding the body sees it.
    *shared
        .last_host
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = host_header(&head[..end]);
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if stream.write_all(&response).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

/// Where the request head ends (after its blank line), if it has.
fn find_end(head: &[u8]) -> Option<usize> {
    head.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// The value of the `Host` header (case-insensitive name), if any.
fn host_header(head: &[u8]) -> Option<String> {
    let head = std::str::from_utf8(head).ok()?;
    head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("host")
            .then(|| value.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_blank_line_and_the_host_is_read_from_it() {
        let head = b"GET / HTTP/1.1\r\nhOsT:  web.test:8080 \r\naccept: */*\r\n\r\nbody";
        let end = find_end(head).unwrap();
        assert_eq!(&head[end..], b"body");
        assert_eq!(host_header(&head[..end]).as_deref(), Some("web.test:8080"));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(host_header(b"GET / HTTP/1.1\r\n\r\n"), None);
    }
}
