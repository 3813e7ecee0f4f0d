//! Memory per cached entry: fills the cache with 100,000 distinct positive answers (one A
//! record each, from the test upstream on loopback) and reports the heap bytes the
//! resolver's thread kept, per entry; then again from an upstream that adds to each answer
//! what a non-minimal server does (the zone's NS set and its glue) and junk (an out-of-zone
//! A record, an unrelated TXT), which the scrubber drops or keeps out of stub answers.
//!
//! How: a counting global allocator adds every allocation and subtracts every free made on
//! the thread marked for counting. The resolver runs on a current-thread runtime on that
//! thread (its flights are spawned there too); the test upstream runs on its own runtime
//! thread, so its zone and counters are not counted. Kept bytes = the cache's keys, answers
//! (stored wire bytes + TTL offsets + `Arc`) and quick_cache's tables, plus anything else the
//! resolver keeps (nothing, once the flights are done). RSS growth is printed too, but it
//! includes the upstream's zone and is only a cross-check.
//!
//! Run: `cargo bench -p dnscore-benches --bench memory` (under `cargo test --benches` it runs
//! with 1,000 entries only, as a smoke test).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};

use dnscore::Resolver;
use dnscore::proto::rr::rdata::{A, AAAA, NS, TXT};
use dnscore::proto::rr::{Name, RData, Record, RecordType};
use dnscore_testkit::{Behavior, TestUpstream};

/// Counts the bytes allocated minus freed on threads that set [`COUNTING`].
struct Counting;

static KEPT: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is forwarded to `System` unchanged; the counter is a side effect only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            KEPT.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counting() {
            KEPT.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            KEPT.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn query(id: u16, name: &str) -> Vec<u8> {
    dnscore_testkit::query(id, name, RecordType::A, Some(512))
}

fn rss_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// What a non-minimal upstream adds to every answer: the zone's NS set and glue, and junk.
fn non_minimal() -> Behavior {
    let name = |n: &str| Name::from_ascii(n).unwrap();
    let rr = |owner: &str, data: RData| Record::from_rdata(name(owner), 3600, data);
    Behavior::Extra {
        answers: vec![],
        authority: vec![
            rr("mem.test.", RData::NS(NS(name("ns1.mem.test.")))),
            rr("mem.test.", RData::NS(NS(name("ns2.mem.test.")))),
            rr(
                "other.test.",
                RData::TXT(TXT::new(vec!["unrelated".into()])),
            ),
        ],
        additional: vec![
            rr("ns1.mem.test.", RData::A(A::new(192, 0, 2, 53))),
            rr("ns2.mem.test.", RData::A(A::new(192, 0, 2, 54))),
            rr(
                "ns1.mem.test.",
                RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 53)),
            ),
            rr("ns.example.", RData::A(A::new(6, 6, 6, 6))),
        ],
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: then a quick smoke run.
    let entries: usize = if std::env::args().any(|a| a == "--bench") {
        100_000
    } else {
        1_000
    };
    fill(entries, "a minimal upstream", None);
    fill(entries, "a non-minimal upstream", Some(non_minimal()));
}

/// Fills a fresh resolver's cache with `entries` answers from an upstream with `behavior`.
fn fill(entries: usize, upstream_kind: &str, behavior: Option<Behavior>) {
    let name = |i: usize| format!("h{i}.mem.test.");

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let upstream = server_rt.block_on(TestUpstream::start()).unwrap();
    if let Some(behavior) = behavior {
        upstream.set_default_behavior(behavior);
    }
    for i in 0..entries {
        let ip = A::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
        upstream.add_record(&name(i), RData::A(ip), 3600);
    }
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let queries: Vec<Vec<u8>> = (0..entries).map(|i| query(i as u16, &name(i))).collect();

    COUNTING.with(|c| c.set(true));
    let rss_before = rss_bytes();
    let before = KEPT.load(Ordering::Relaxed);
    let resolver = Resolver::builder()
        .upstream(upstream.addr())
        .cache_capacity(entries + entries / 4)
        .build()
        .unwrap();
    let empty = KEPT.load(Ordering::Relaxed) - before;
    let answer_len = client.block_on(async {
        let mut len = 0;
        // 32 in flight at a time: quick, and a bounded number of live flights.
        for chunk in queries.chunks(32) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|q| {
                    let (resolver, q) = (resolver.clone(), q.clone());
                    tokio::spawn(async move { resolver.resolve(&q).await.unwrap().len() })
                })
                .collect();
            for task in tasks {
                len = task.await.unwrap();
            }
        }
        // Let the finished flights' tasks and sockets be dropped.
        tokio::task::yield_now().await;
        len
    });
    let kept = KEPT.load(Ordering::Relaxed) - before;
    let rss_after = rss_bytes();
    COUNTING.with(|c| c.set(false));

    let cached = resolver.cache_len();
    assert!(
        cached >= entries * 99 / 100,
        "only {cached} of {entries} answers were cached"
    );
    let per_entry = (kept - empty) as f64 / cached as f64;
    println!("memory, from {upstream_kind}:");
    println!("memory: {cached} cached answers; a stub gets {answer_len} bytes for each");
    println!("memory: resolver with an empty cache: {empty} bytes");
    println!("memory: heap kept per cached entry: {per_entry:.0} bytes (counting allocator)");
    if let (Some(a), Some(b)) = (rss_before, rss_after) {
        println!(
            "memory: RSS growth per entry: {:.0} bytes (includes the upstream's zone)",
            (b as f64 - a as f64) / cached as f64
        );
    }
    drop(resolver);
    drop(upstream);
}
