//! The admin endpoint on `--metrics-listen`: `/metrics` (Prometheus text format), `/health`
//! (liveness: the process serves) and `/ready` (readiness: listeners bound, not shutting
//! down, at least one upstream healthy). A deliberately small HTTP/1.1 responder: GET only,
//! one request per connection, bounded in size and time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dnscore::Resolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::{self, Metrics};

/// Largest request head we read.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin endpoint reports on.
#[derive(Debug)]
pub struct Admin {
    /// Cleared at the start of a shutdown, so that `/ready` fails at once (lameduck).
    pub ready: AtomicBool,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// The resolver, for its stats and upstream health.
    pub resolver: Resolver,
}

impl Admin {
    /// Ready, with fresh metrics.
    pub fn new(resolver: Resolver, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            ready: AtomicBool::new(true),
            metrics,
            resolver,
        })
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self.resolver.stats().upstreams.iter().any(|u| u.healthy)
    }
}

/// Serves the admin endpoint until the task is dropped.
pub async fn serve_admin(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
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
