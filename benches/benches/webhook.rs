//! The admission webhook under a burst: 1,000 AdmissionReviews at once, every one answered,
//! latency percentiles printed. Two shapes:
//!
//! - `streams`: the reviews as concurrent HTTP/2 streams over 4 connections, as
//!   kube-apiserver sends them (it keeps connections to a webhook and multiplexes);
//! - `connections`: each review on a TLS connection of its own, opened at the same moment
//!   (the worst case: every request pays a handshake).
//!
//! The webhook is the library's `serve` with the real rustls stack, a certificate from
//! `cert::generate`, on a runtime of its own (2 worker threads); the client runs on another
//! runtime. Both share the machine's cores, so the figures are an upper bound on the
//! webhook's own latency. Latency is from the moment a request is issued to its full
//! answer, including the handshake in `connections`.
//!
//! Run: `cargo bench -p dnscore-benches --bench webhook` (under `cargo test --benches` it
//! sends 50 reviews per shape, as a smoke test).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dnscore_sidecar::cert::{CertRequest, generate, write};
use dnscore_sidecar::inject::InjectOptions;
use dnscore_sidecar::webhook::test_client::{Client, admission_review, replica_set_pod};
use dnscore_sidecar::webhook::tls::Certificates;
use dnscore_sidecar::webhook::{Webhook, serve};

const CONNECTIONS_FOR_STREAMS: usize = 4;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: then a quick smoke run.
    let reviews: usize = if std::env::args().any(|a| a == "--bench") {
        1000
    } else {
        50
    };
    let dir = std::env::temp_dir().join(format!("dnscore-webhook-bench-{}", std::process::id()));
    let files = generate(
        &CertRequest {
            service: "dnscore-webhook".into(),
            namespace: "dnscore-system".into(),
            cluster_domain: "cluster.local".into(),
            days: 1,
        },
        None,
    )
    .expect("certificate");
    write(&dir, &files).expect("certificate files");

    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    let certificates =
        Arc::new(Certificates::load(&dir.join("tls.crt"), &dir.join("tls.key")).expect("load"));
    let webhook = Arc::new(Webhook::new(InjectOptions::default()).expect("webhook"));
    let listener = server
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("listen");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = server.spawn(serve(listener, certificates, webhook, async {
        let _ = stopped.await;
    }));

    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    let client = Client::trusting(&[&dir.join("ca.crt")]).expect("client");
    let body = serde_json::to_vec(&admission_review(replica_set_pod(), "CREATE")).expect("json");

    client_runtime.block_on(async {
        // Warm-up: a few of each, untimed.
        for _ in 0..5 {
            let answer = client
                .request(addr, true, "POST", "/mutate", body.clone())
                .await
                .expect("warm-up");
            assert_eq!(answer.status, 200);
        }

        let mut connections = Vec::new();
        for _ in 0..CONNECTIONS_FOR_STREAMS {
            connections.push(client.connect(addr).await.expect("connection"));
        }
        let started = Instant::now();
        let latencies = futures_join((0..reviews).map(|i| {
            let connection = connections[i % connections.len()].clone();
            let body = body.clone();
            async move {
                let sent = Instant::now();
                let (status, answer) = connection
                    .request("POST", "/mutate", body)
                    .await
                    .expect("answered");
                check(status, &answer);
                sent.elapsed()
            }
        }))
        .await;
        report(
            &format!(
                "streams ({reviews} reviews over {CONNECTIONS_FOR_STREAMS} HTTP/2 connections)"
            ),
            latencies,
            started.elapsed(),
        );

        let started = Instant::now();
        let latencies = futures_join((0..reviews).map(|_| {
            let client = client.clone();
            let body = body.clone();
            async move {
                let sent = Instant::now();
                let answer = client
                    .request(addr, true, "POST", "/mutate", body)
                    .await
                    .expect("answered");
                check(answer.status, &answer.body);
                sent.elapsed()
            }
        }))
        .await;
        report(
            &format!("connections ({reviews} reviews, a TLS connection each)"),
            latencies,
            started.elapsed(),
        );
    });
    let _ = stop.send(());
    let _ = server.block_on(served);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs all the futures at once (each as a task) and returns their outputs in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.expect("task"));
    }
    out
}

/// Every answer must be an allowed review with a patch.
fn check(status: u16, body: &[u8]) {
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(body));
    let review: serde_json::Value = serde_json::from_slice(body).expect("json answer");
    assert_eq!(review["response"]["allowed"], true);
    assert!(review["response"]["patch"].is_string(), "a patch");
}

fn report(label: &str, mut latencies: Vec<Duration>, total: Duration) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "webhook {label}: all {} answered in {:.1} ms; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        ms(total),
        ms(at(0.50)),
        ms(at(0.99)),
        ms(at(1.0)),
    );
}
