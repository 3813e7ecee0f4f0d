//! `dnscore-sidecar webhook`: a mutating admission webhook that gives new pods the sidecar,
//! with the same mutation as `inject` (see [`review`]).
//!
//! One HTTPS port (rustls; HTTP/2 and HTTP/1.1):
//!
//! - `POST /mutate`: an AdmissionReview (`admission.k8s.io/v1`) in, one out. A body that
//!   is not an AdmissionReview gets 400 with the reason; a body over [`MAX_BODY`] gets 413,
//!   one that takes over 3 s to arrive 408.
//! - `GET /health`: 200 while the process serves (liveness).
//! - `GET /ready`: 200 from the start (the webhook does not start without a certificate
//!   that loads); 503 from SIGTERM on, while the
//!   webhook goes on answering for the shutdown delay (`--shutdown-delay`, default 5 s):
//!   kube-apiserver learns of the pod's removal from the Service's endpoints a moment
//!   later, and a review sent to a closed port would let a pod start without the sidecar
//!   (`failurePolicy: Ignore`).
//! - `GET /metrics`: `dnscore_webhook_admission_requests_total{outcome}` and
//!   `dnscore_webhook_admission_duration_seconds` (Prometheus text).
//!
//! The certificate files are re-read when they change ([`tls`]).

pub mod review;
#[cfg(feature = "test-util")]
pub mod test_client;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::inject::InjectOptions;
use review::ReviewOutcome;
use tls::Certificates;

/// Largest AdmissionReview accepted: 1 MiB. Real pods are a few KiB; etcd stores objects
/// of 1.5 MiB at most, and a pod refused here is only created without the sidecar.
pub const MAX_BODY: usize = 1024 * 1024;
/// Request bodies read at once (each at most [`MAX_BODY`]); more wait.
const MAX_READING: usize = 8;
/// Time a client has to send a request's body: under the webhook configuration's 5 s, so
/// a stalled client cannot hold a reading slot for longer than a review may take.
const BODY_TIMEOUT: Duration = Duration::from_secs(3);
/// Reviews worked on at once: one, on one of the runtime's two worker threads, so the
/// other is always free for probes and TLS handshakes. A review takes about 0.1 ms of CPU
/// and, with the parts of a pod it reads bounded to 64 KiB, at most a few milliseconds
/// (benches/README.md): one at a time is thousands a second.
const MAX_REVIEWS: usize = 1;
/// Default `--shutdown-delay`.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);
/// Time a client has for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's head (HTTP/1.1; an HTTP/2 client is probed by
/// keep-alive pings instead).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog. kube-apiserver keeps a few
/// per webhook endpoint and multiplexes reviews over them.
const MAX_CONNECTIONS: usize = 128;
/// HTTP/2 streams per connection, and flow-control windows: what one connection can make
/// the webhook buffer before a body is read (the HTTP/2 default stream window, and four of
/// them per connection). With [`MAX_CONNECTIONS`] that is 32 MiB at most, beside the bodies
/// being read (8 MiB) and the review: the Deployment's memory limit is 128Mi.
const MAX_STREAMS: u32 = 32;
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024;
/// HTTP/2 keep-alive: a ping after this much silence, and the connection closed when the
/// ping is not answered within the timeout.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for requests in flight after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The webhook's state: how to inject, and what it reports on.
#[derive(Debug)]
pub struct Webhook {
    options: InjectOptions,
    ready: AtomicBool,
    reading: tokio::sync::Semaphore,
    reviews: tokio::sync::Semaphore,
    shutdown_delay: Duration,
    requests: Family<OutcomeLabel, Counter>,
    duration: Histogram,
    registry: Registry,
}

impl Webhook {
    /// A webhook injecting with `options` (per-pod annotations override them); fails on
    /// options that would make a broken pod.
    pub fn new(options: InjectOptions) -> Result<Self, crate::inject::InjectError> {
        options.validate()?;
        let requests = Family::<OutcomeLabel, Counter>::default();
        for outcome in ReviewOutcome::ALL {
            // Every outcome shows, at 0 until it happens.
            let _ = requests.get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            });
        }
        // 0.5 ms to 2 s.
        let duration = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.0005, 2.0, 13,
        ));
        let mut registry = Registry::default();
        registry.register(
            "dnscore_webhook_admission_requests",
            "Admission requests answered, by what was done",
            requests.clone(),
        );
        registry.register(
            "dnscore_webhook_admission_duration_seconds",
            "Time to answer an admission request, from its body read to its answer ready to send",
            duration.clone(),
        );
        Ok(Self {
            options,
            ready: AtomicBool::new(true),
            reading: tokio::sync::Semaphore::new(MAX_READING),
            reviews: tokio::sync::Semaphore::new(MAX_REVIEWS),
            shutdown_delay: DEFAULT_SHUTDOWN_DELAY,
            requests,
            duration,
            registry,
        })
    }

    /// Sets how long it goes on answering after shutdown begins, with `/ready` failing.
    pub fn with_shutdown_delay(mut self, delay: Duration) -> Self {
        self.shutdown_delay = delay;
        self
    }

    /// Answers one request.
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        match (request.method(), path) {
            (&Method::POST, "/mutate") => self.mutate(request).await,
            (&Method::GET, "/health") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/ready") if self.ready.load(Ordering::Relaxed) => {
                text(StatusCode::OK, "ready\n")
            }
            (&Method::GET, "/ready") => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            (&Method::GET, "/metrics") => {
                let mut out = String::new();
                if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
                    return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n");
                }
                let mut response = Response::new(Full::new(Bytes::from(out)));
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            (_, "/mutate" | "/health" | "/ready" | "/metrics") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found: try POST /mutate\n"),
        }
    }

    async fn mutate(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let Ok(_reading) = self.reading.acquire().await else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
        };
        let read = Limited::new(request.into_body(), MAX_BODY).collect();
        let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(err)) => {
                self.count(ReviewOutcome::BadRequest, None);
                return if err
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    text(StatusCode::PAYLOAD_TOO_LARGE, "AdmissionReview too large\n")
                } else {
                    text(StatusCode::BAD_REQUEST, "cannot read the request body\n")
                };
            }
            Err(_) => {
                self.count(ReviewOutcome::BadRequest, None);
                return text(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body came too slowly\n",
                );
            }
        };
        let Ok(_turn) = self.reviews.acquire().await else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
        };
        let started = Instant::now();
        let reviewed = review::review(&body, &self.options)
            .map(|(answer, outcome)| (serde_json::to_vec(&answer).unwrap_or_default(), outcome));
        match reviewed {
            Ok((answer, outcome)) => {
                let mut response = Response::new(Full::new(Bytes::from(answer)));
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                self.count(outcome, Some(started));
                response
            }
            Err(err) => {
                tracing::debug!("bad admission request: {err}");
                self.count(ReviewOutcome::BadRequest, Some(started));
                text(StatusCode::BAD_REQUEST, &format!("{err}\n"))
            }
        }
    }

    fn count(&self, outcome: ReviewOutcome, started: Option<Instant>) {
        self.requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc();
        if let Some(started) = started {
            self.duration.observe(started.elapsed().as_secs_f64());
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

/// Serves HTTPS on `listener` until `shutdown` completes; then `/ready` fails while it goes
/// on serving for the webhook's shutdown delay; then no new connection is taken, and
/// requests in flight get up to 10 s to finish.
pub async fn serve(
    listener: TcpListener,
    certificates: Arc<Certificates>,
    webhook: Arc<Webhook>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), rustls::Error> {
    let acceptor = TlsAcceptor::from(Arc::new(certificates.server_config()?));
    let watcher = tokio::spawn(certificates.watch());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    let shutdown = async {
        shutdown.await;
        webhook.ready.store(false, Ordering::Relaxed);
        tokio::time::sleep(webhook.shutdown_delay).await;
    };
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(crate::admin::ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let webhook = webhook.clone();
        let (http1, http2) = (http1.clone(), http2.clone());
        let watch = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!("TLS handshake failed: {err}");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |request| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(webhook.handle(request).await) }
            });
            // The protocol is the one ALPN agreed: no guessing from the first bytes.
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(tls);
            let ended = if h2 {
                watch.watch(http2.serve_connection(io, service)).await
            } else {
                watch.watch(http1.serve_connection(io, service)).await
            };
            if let Err(err) = ended {
                tracing::debug!("connection ended: {err}");
            }
        });
    }
    drop(listener);
    watcher.abort();
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; exiting anyway");
    }
    Ok(())
}
