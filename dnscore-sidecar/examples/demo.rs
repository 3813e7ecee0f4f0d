//! A real run on loopback, no internet needed: two test upstreams ("CoreDNS pods"), the
//! sidecar in front of them, and a client that shows cache hits, deduplication and failover
//! in numbers.
//!
//! Run: `cargo run --release -p dnscore-sidecar --example demo`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dnscore::Resolver;
use dnscore::proto::op::{Message, ResponseCode};
use dnscore::proto::rr::RecordType;
use dnscore_testkit::{Behavior, TestUpstream};
use tokio::net::{TcpListener, UdpSocket};

fn query(id: u16, name: &str) -> Vec<u8> {
    dnscore_testkit::query(id, name, RecordType::A, None)
}

/// One UDP query from a fresh client socket; the answer's rcode and the time it took.
async fn ask(server: SocketAddr, id: u16, name: &str) -> (Option<ResponseCode>, Duration) {
    let started = Instant::now();
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await else {
        return (None, started.elapsed());
    };
    if sock.send_to(&query(id, name), server).await.is_err() {
        return (None, started.elapsed());
    }
    let mut buf = [0u8; 1500];
    let got = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf)).await;
    let rcode = match got {
        Ok(Ok(len)) => Message::from_vec(&buf[..len])
            .ok()
            .map(|m| m.metadata.response_code),
        _ => None,
    };
    (rcode, started.elapsed())
}

fn percentile(mut samples: Vec<Duration>, p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(index).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pod_a = TestUpstream::start_on([127, 0, 0, 1].into()).await?;
    let pod_b = TestUpstream::start_on([127, 0, 0, 2].into()).await?;
    let udp = UdpSocket::bind("127.0.0.1:0").await?;
    let server = udp.local_addr()?;
    let tcp = TcpListener::bind(server).await?;
    let resolver = Resolver::builder()
        .upstream(pod_a.addr())
        .upstream(pod_b.addr())
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sidecar = tokio::spawn(dnscore_sidecar::serve(udp, tcp, resolver, async {
        let _ = stopped.await;
    }));
    println!(
        "sidecar on {server}, upstreams {} and {}",
        pod_a.addr(),
        pod_b.addr()
    );
    let upstream_total = || pod_a.total_queries() + pod_b.total_queries();

    // 1. Cache: the same name 2,000 times.
    let mut hits = Vec::new();
    for i in 0..2000u16 {
        let (rcode, took) = ask(server, i, "a.test.").await;
        assert_eq!(rcode, Some(ResponseCode::NoError));
        hits.push(took);
    }
    println!(
        "cache:    2000 client queries -> {} upstream queries; client round trip p50 {:?}, p99 {:?}",
        upstream_total(),
        percentile(hits.clone(), 0.5),
        percentile(hits, 0.99)
    );

    // 2. Dedup: 200 clients ask at once for a name whose upstream takes 100 ms.
    pod_a.set_default_behavior(Behavior::Delay(Duration::from_millis(100)));
    pod_b.set_default_behavior(Behavior::Delay(Duration::from_millis(100)));
    let before = upstream_total();
    let clients: Vec<_> = (0..200u16)
        .map(|i| tokio::spawn(ask(server, i, "b.test.")))
        .collect();
    let mut answered = 0;
    for c in clients {
        if c.await?.0 == Some(ResponseCode::NoError) {
            answered += 1;
        }
    }
    println!(
        "dedup:    200 concurrent identical queries -> {answered} answered, {} upstream query",
        upstream_total() - before
    );
    pod_a.set_default_behavior(Behavior::Normal);
    pod_b.set_default_behavior(Behavior::Normal);

    // 3. Failover: one "CoreDNS pod" is evicted; 500 new names are asked.
    pod_a.stop();
    let mut latencies = Vec::new();
    let mut failures = 0;
    for i in 0..500u16 {
        let (rcode, took) = ask(server, i, &format!("svc-{i}.test.")).await;
        if rcode != Some(ResponseCode::NXDomain) {
            failures += 1;
        }
        latencies.push(took);
    }
    println!(
        "failover: upstream {} stopped; 500 new names -> {failures} client-visible failures, \
         p50 {:?}, max {:?}",
        pod_a.addr(),
        percentile(latencies.clone(), 0.5),
        percentile(latencies, 1.0)
    );

    let _ = stop.send(());
    sidecar.await?;
    Ok(())
}
