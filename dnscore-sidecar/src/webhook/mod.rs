//! `dnscore-sidecar webhook`: a mutating admission webhook that gives new pods the sidecar,
//! with the same mutation as `inject` (see [`review`]).
//!
//! One HTTPS port (rustls; HTTP/2 and HTTP/1.1):
//!
//! - `POST /mutate`: an AdmissionReview (`admission.k8s.io/v1`) in, one out. A body that
//!   is not an AdmissionReview gets 400 with the reason; a body over [`MAX_BODY`] gets 413.
//! - `GET /health`: 200 while the process serves (liveness).
//! - `GET /ready`: 200 once the certificate is loaded; 503 from SIGTERM on, while the
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
use hyper_util::server::conn::auto;
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
/// Reviews read and answered at once; more wait. A review takes a fraction of a
/// millisecond of CPU, so a few in parallel keep both cores busy, and with [`MAX_BODY`]
/// this bounds what bodies and their parsed trees can take, well under the Deployment's
/// memory limit.
const MAX_REVIEWS: usize = 4;
/// Default `--shutdown-delay`.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);
/// Time a client has for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4096;
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
            "Time to answer an admission request, from its body read to its answer written",
            duration.clone(),
        );
        Ok(Self {
            options,
            ready: AtomicBool::new(true),
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
        let Ok(_turn) = self.reviews.acquire().await else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
        };
        let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(err) => {
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
        };
        let started = Instant::now();
        match review::review(&body, &self.options) {
            Ok((answer, outcome)) => {
                let answer = serde_json::to_vec(&answer).unwrap_or_default();
                self.count(outcome, Some(started));
                let mut response = Response::new(Full::new(Bytes::from(answer)));
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
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
        let builder = builder.clone();
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
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(err) = watch.watch(connection.into_owned()).await {
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
