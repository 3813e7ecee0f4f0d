//! Cache-hit cost of `Resolver::resolve` (ns per query) on one thread and on two, and the
//! same cached lookup through dnscore's and hickory-resolver's `lookup(name, A)` in the same
//! group, so that the dnscore / hickory ratio comes from one run.
//!
//! The answer is put in the cache once, from a test upstream on loopback; every measured
//! query is then a hit. A query repeated on one thread (`resolve_cached/1_thread`, also with
//! a new ID each time) is answered from the thread's replay of the answer it wrote last: a
//! comparison and a copy. `resolve_cached/1_thread_1000_names` asks 1,000 names in turn, past
//! the replay and the memo: read the query, hash its key, look it up, copy the stored answer,
//! patch ID, flags, question and TTLs, add an OPT record. hickory-resolver is pointed at the same test
//! upstream (never the system configuration) and warmed the same way; its hit is a lookup in
//! its own cache (its `Lookup` shares the records, no wire format on either side).
//!
//! Two-thread figures are wall time / queries with both threads hitting the same entry, so
//! perfect scaling halves them: QPS(2 threads) / QPS(1 thread) = time(1) / time(2).
//!
//! Run: `cargo bench -p dnscore-benches --bench resolve`

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dnscore::proto::rr::RecordType;
use dnscore::{Resolver, Transport};
use dnscore_testkit::TestUpstream;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

fn query(name: &str) -> Vec<u8> {
    dnscore_testkit::query(0x1234, name, RecordType::A, Some(512))
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
            let hit = resolver
                .resolve_cached(&q, Transport::Udp, &mut out)
                .unwrap();
            assert!(hit, "the benchmark measures hits");
        });
    });

    // A new ID every time, as a client's queries come.
    group.bench_function("resolve_cached/1_thread_new_ids", |b| {
        let (mut q, mut out, mut id) = (q.clone(), Vec::with_capacity(512), 0u16);
        b.iter(|| {
            id = id.wrapping_add(1);
            q[..2].copy_from_slice(&id.to_be_bytes());
            let hit = resolver
                .resolve_cached(&q, Transport::Udp, &mut out)
                .unwrap();
            assert!(hit && out[..2] == id.to_be_bytes());
        });
    });

    // 1,000 names in turn: no query is the thread's last for its replay or memo slot.
    let names: Vec<Vec<u8>> = (0..1000u16)
        .map(|i| {
            let name = format!("n{i}.many.test.");
            let [hi, lo] = i.to_be_bytes();
            upstream.add_record(
                &name,
                dnscore::proto::rr::RData::A(dnscore::proto::rr::rdata::A::new(10, 1, hi, lo)),
                3600,
            );
            let q = query(&name);
            assert!(rt.block_on(resolver.resolve(&q)).unwrap().len() > 40);
            q
        })
        .collect();
    group.bench_function("resolve_cached/1_thread_1000_names", |b| {
        let (mut out, mut i) = (Vec::with_capacity(512), 0);
        b.iter(|| {
            i = (i + 7) % names.len();
            let hit = resolver
                .resolve_cached(&names[i], Transport::Udp, &mut out)
                .unwrap();
            assert!(hit, "the benchmark measures hits");
        });
    });

    // Two threads hitting the same entry at once: time per query across both (wall time /
    // queries), so that perfect scaling halves it.
    group.bench_function("resolve_cached/2_threads", |b| {
        b.iter_custom(|iters| two_threads(&resolver, &q, iters));
    });
    // The async API on two threads: two tasks on a two-worker runtime.
    group.bench_function("resolve/2_threads", |b| {
        b.iter_custom(|iters| {
            two_tasks(&rt, iters, {
                let resolver = resolver.clone();
                let q = Arc::new(q.clone());
                move || {
                    let (resolver, q) = (resolver.clone(), Arc::clone(&q));
                    async move {
                        resolver.resolve(&q).await.unwrap();
                    }
                }
            })
        });
    });

    // The same cached lookup by name through both libraries, on the current-thread runtime;
    // both take the name as a string and parse it on every call.
    let name = "a.test.";
    let hickory = local.block_on(async {
        let hickory = hickory_resolver(upstream.addr());
        let warm = hickory.lookup(name, RecordType::A).await.unwrap();
        assert!(warm.answers().len() == 1, "hickory was answered");
        hickory
    });
    local
        .block_on(resolver.lookup(name, RecordType::A))
        .unwrap();
    group.bench_function("dnscore_lookup/1_thread", |b| {
        b.to_async(&local)
            .iter(|| resolver.lookup(name, RecordType::A));
    });
    group.bench_function("hickory_lookup/1_thread", |b| {
        b.to_async(&local)
            .iter(|| hickory.lookup(name, RecordType::A));
    });
    group.bench_function("dnscore_lookup/2_threads", |b| {
        b.iter_custom(|iters| {
            two_tasks(&rt, iters, {
                let resolver = resolver.clone();
                move || {
                    let resolver = resolver.clone();
                    async move {
                        resolver.lookup(name, RecordType::A).await.unwrap();
                    }
                }
            })
        });
    });
    group.bench_function("hickory_lookup/2_threads", |b| {
        b.iter_custom(|iters| {
            two_tasks(&rt, iters, {
                let hickory = hickory.clone();
                move || {
                    let hickory = hickory.clone();
                    async move {
                        hickory.lookup(name, RecordType::A).await.unwrap();
                    }
                }
            })
        });
    });
    group.finish();
    drop(upstream);
}

/// hickory-resolver over UDP and TCP to `upstream` only, no search list, no hosts file.
fn hickory_resolver(
    upstream: std::net::SocketAddr,
) -> hickory_resolver::Resolver<TokioRuntimeProvider> {
    let mut udp = ConnectionConfig::udp();
    udp.port = upstream.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = upstream.port();
    let server = NameServerConfig::new(upstream.ip(), true, vec![udp, tcp]);
    let config = ResolverConfig::from_parts(None, vec![], vec![server]);
    let mut builder =
        hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    builder.options_mut().use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
    builder.build().unwrap()
}

/// Runs `iters` queries made by `make` as two concurrent tasks on the two-worker `rt`;
/// returns the wall time.
fn two_tasks<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, make: F) -> Duration
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let per_task = iters.div_ceil(2);
    let make = Arc::new(make);
    rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let make = Arc::clone(&make);
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        make().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        start.elapsed()
    })
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
