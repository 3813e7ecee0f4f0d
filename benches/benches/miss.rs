//! The miss path against the test upstream on loopback, and deduplication.
//!
//! - `miss/upstream_direct`: one query straight to the upstream from a fresh connected UDP
//!   socket: the floor (dnscore reuses a few sticky sockets instead, so the socket's set-up
//!   is in the floor and not in dnscore's figure).
//! - `miss/dnscore`: the same question through `Resolver::resolve`, never answered from the
//!   cache (the record has TTL 0; prefetch and serve-stale are off). The difference to the
//!   floor is what dnscore adds to a miss.
//! - `dedup/1000_identical`: 1,000 concurrent identical queries for a name not asked before
//!   (NXDOMAIN, cached 60 s) → time until all are answered. Callers that arrive while the one
//!   flight is out join it; callers spawned after it landed are cache hits. The upstream
//!   queries per batch are printed (1.00 when dedup works).
//!
//! The upstream runs on its own runtime thread, the client on another, as in a pod.
//! Run: `cargo bench -p dnscore-benches --bench miss`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dnscore::Resolver;
use dnscore::proto::rr::{RData, RecordType, rdata::A};
use dnscore_testkit::TestUpstream;
use tokio::net::UdpSocket;

/// Concurrent identical queries in the dedup benchmark.
const DEDUP_CALLERS: usize = 1_000;

fn query(name: &str) -> Vec<u8> {
    dnscore_testkit::query(0x1234, name, RecordType::A, Some(512))
}

async fn ask_direct(upstream: SocketAddr, q: &[u8]) -> usize {
    let mut buf = [0u8; 4096];
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(upstream).await.unwrap();
    socket.send(q).await.unwrap();
    socket.recv(&mut buf).await.unwrap()
}

fn miss(c: &mut Criterion) {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let upstream = server_rt.block_on(TestUpstream::start()).unwrap();
    upstream.add_record("zero.test.", RData::A(A::new(192, 0, 2, 50)), 0);
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let resolver = Resolver::builder()
        .upstream(upstream.addr())
        .prefetch(false)
        .max_stale(Duration::ZERO)
        .hedge_share(0.0)
        .build()
        .unwrap();
    let q = query("zero.test.");

    let mut group = c.benchmark_group("miss");
    group.throughput(Throughput::Elements(1));
    group.bench_function("upstream_direct", |b| {
        b.to_async(&client).iter(|| ask_direct(upstream.addr(), &q));
    });
    group.bench_function("dnscore", |b| {
        b.to_async(&client).iter(|| async {
            let answer = resolver.resolve(&q).await.unwrap();
            assert_eq!(answer[3] & 0x0f, 0, "NOERROR");
        });
    });
    group.finish();

    // Dedup: on a two-worker runtime, as a busy server would run it.
    let workers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("dedup");
    group.throughput(Throughput::Elements(DEDUP_CALLERS as u64));
    group.sample_size(20);
    let (mut batches, before) = (0u64, upstream.total_queries());
    group.bench_function("1000_identical", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                batches += 1;
                let q = Arc::new(query(&format!("n{batches}.dedup.test.")));
                total += workers.block_on(batch(&resolver, &q));
            }
            total
        });
    });
    group.finish();
    let asked = upstream.total_queries() - before;
    println!(
        "dedup: {asked} upstream queries for {batches} batches of {DEDUP_CALLERS} callers \
         ({:.2} per batch)",
        asked as f64 / batches.max(1) as f64
    );
    assert!(
        asked as u64 <= 2 * batches,
        "dedup: {asked} upstream queries for {batches} batches"
    );
}

/// Starts `DEDUP_CALLERS` identical queries at once; the time until every one is answered.
async fn batch(resolver: &Resolver, q: &Arc<Vec<u8>>) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..DEDUP_CALLERS)
        .map(|_| {
            let (resolver, q) = (resolver.clone(), Arc::clone(q));
            tokio::spawn(async move { resolver.resolve(&q).await.unwrap() })
        })
        .collect();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer[3] & 0x0f, 3, "NXDOMAIN");
    }
    start.elapsed()
}

criterion_group!(benches, miss);
criterion_main!(benches);
