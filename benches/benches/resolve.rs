//! Cache-hit cost of `Resolver::resolve` (ns per query) on one thread and on two.
//!
//! The answer is put in the cache once, from a test upstream on loopback; every measured
//! query is then a hit: read the query, hash its key, copy the stored answer, patch ID,
//! flags, question and TTLs, add an OPT record.
//!
//! Run: `cargo bench -p dnscore-benches --bench resolve`

use std::str::FromStr;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dnscore::proto::op::{Edns, Message, MessageType, OpCode, Query};
use dnscore::proto::rr::{Name, RecordType};
use dnscore::{Resolver, Transport};
use dnscore_testkit::TestUpstream;

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
    m.set_edns(Edns::new());
    m.to_vec().unwrap()
}

fn cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let upstream = rt.block_on(TestUpstream::start()).unwrap();
    let resolver = Resolver::builder()
        .upstream(upstream.addr())
        .build()
        .unwrap();
    let q = query("a.test.");
    let warm = rt.block_on(resolver.resolve(&q)).unwrap();
    assert!(warm.len() > 40, "the warm-up query was answered");

    let mut group = c.benchmark_group("cache_hit");
    group.throughput(Throughput::Elements(1));

    // The async API, as a Rust caller uses it, on a current-thread runtime.
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    group.bench_function("resolve/1_thread", |b| {
        b.to_async(&local).iter(|| resolver.resolve(&q));
    });

    // The synchronous hit path the sidecar uses, with a reused output buffer.
    group.bench_function("resolve_cached/1_thread", |b| {
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            resolver
                .resolve_cached(&q, Transport::Udp, &mut out)
                .unwrap()
        });
    });

    // Two threads hitting the same entry at once: time per query across both (wall time /
    // queries), so that perfect scaling halves it.
    group.bench_function("resolve_cached/2_threads", |b| {
        b.iter_custom(|iters| two_threads(&resolver, &q, iters));
    });
    group.finish();
    drop(upstream);
}

fn two_threads(resolver: &Resolver, q: &[u8], iters: u64) -> Duration {
    let per_thread = iters.div_ceil(2);
    let barrier = Barrier::new(3);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut out = Vec::with_capacity(512);
                barrier.wait();
                for _ in 0..per_thread {
                    let hit = resolver
                        .resolve_cached(q, Transport::Udp, &mut out)
                        .unwrap();
                    assert!(hit);
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

criterion_group!(benches, cache_hit);
criterion_main!(benches);
