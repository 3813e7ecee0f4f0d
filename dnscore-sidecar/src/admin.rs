//! The admin endpoint on `--metrics-listen`: `/metrics` (Prometheus text format), `/health`
//! (liveness: the process serves) and `/ready` (readiness). A deliberately small HTTP/1.1
//! responder: GET only, one request per connection, bounded in size and time.
//!
//! `/ready` is 503 at start, until an upstream has answered (the sidecar asks one question
//! at once, see `startup`) and the `--warm` names are cached, or until `--startup-wait`
//! has passed, whichever comes first: a pod created while CoreDNS is down still starts.
//! From then on it is 200, whatever the upstreams do (a sidecar serving from its cache,
//! stale or not, is serving; a native sidecar's readiness counts for its whole pod, so
//! following upstream health would take every pod out of its Services during a CoreDNS
//! blip), until SIGTERM turns it 503 for the lameduck period.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dnscore::Resolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::{self, Metrics};

/// Largest request head we read.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait after a failed accept (EMFILE...) before the next.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the admin endpoint reports on.
#[derive(Debug)]
pub struct Admin {
    /// Cleared at the start of a shutdown, so that `/ready` fails at once (lameduck).
    pub ready: AtomicBool,
    /// Set once the `--warm` names are cached (at once without any).
    pub warmed: AtomicBool,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// The resolver, for its stats and upstream health.
    pub resolver: Resolver,
    /// When serving began.
    started: Instant,
    /// How long `/ready` waits at most for an upstream's first answer and the warm names.
    startup_wait: Duration,
    /// Set once started up: from then on only a shutdown makes `/ready` fail.
    started_up: AtomicBool,
}

impl Admin {
    /// Fresh metrics; not ready until started up (see the module docs), at most
    /// `startup_wait` from now.
    pub fn new(resolver: Resolver, metrics: Arc<Metrics>, startup_wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            ready: AtomicBool::new(true),
            warmed: AtomicBool::new(false),
            metrics,
            resolver,
            started: Instant::now(),
            startup_wait,
            started_up: AtomicBool::new(false),
        })
    }

    /// Whether an upstream has answered since start (probes and queries alike).
    pub fn upstream_answered(&self) -> bool {
        self.resolver
            .stats()
            .upstreams
            .iter()
            .any(|u| u.last_success.is_some())
    }

    /// Started up: an upstream has answered and the warm names are cached, or the startup
    /// wait is over. Once true, true for good.
    pub fn is_started_up(&self) -> bool {
        if self.started_up.load(Ordering::Acquire) {
            return true;
        }
        let done = (self.warmed.load(Ordering::Acquire) && self.upstream_answered())
            || self.started.elapsed() >= self.startup_wait;
        if done {
            self.started_up.store(true, Ordering::Release);
        }
        done
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.is_started_up()
    }
}

/// Serves the admin endpoint until the task is dropped.
pub async fn serve_admin(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors (EMFILE), say: wait instead of spinning.
                tracing::warn!(%err, "admin accept failed; retrying in 100 ms");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, respond(stream, &admin)).await;
        });
    }
}

async fn respond(mut stream: TcpStream, admin: &Admin) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(&admin.metrics, &admin.resolver),
        ),
        (b"GET", b"/health") => ("200 OK", "text/plain", "ok\n".to_string()),
        (b"GET", b"/ready") if admin.is_ready() => ("200 OK", "text/plain", "ready\n".to_string()),
        (b"GET", b"/ready") => (
            "503 Service Unavailable",
            "text/plain",
            "not ready\n".to_string(),
        ),
        (b"GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
