//! Fault injection under sustained load: the resolver in front of three scriptable upstreams
//! ("CoreDNS pods") on loopback, a steady stream of queries for names it has not cached, and
//! one fault at a time. Each test asserts what the application must see (no failures, one
//! upstream query per name, no forged answer) and prints its figures.
//!
//! The load is bounded in count and time. `DNSCORE_SOAK=1` stretches every phase tenfold.

// Each test holds a std mutex for its whole run, across awaits, on purpose: every test has a
// runtime of its own, and the lock only keeps two load tests from running at once.
#![allow(clippy::await_holding_lock)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dnscore::proto::op::{Message, ResponseCode};
use dnscore::proto::rr::rdata::A;
use dnscore::proto::rr::{RData, RecordType};
use dnscore::{Resolver, Transport};
use dnscore_testkit::{Behavior, Proto, TestUpstream};

fn query(id: u16, name: &str, edns: bool) -> Vec<u8> {
    dnscore_testkit::query(id, name, RecordType::A, edns.then_some(512))
}

fn scale() -> u32 {
    if std::env::var_os("DNSCORE_SOAK").is_some() {
        10
    } else {
        1
    }
}

async fn three_pods() -> Vec<TestUpstream> {
    let mut pods = Vec::new();
    for ip in [[127, 0, 0, 21], [127, 0, 0, 22], [127, 0, 0, 23]] {
        pods.push(TestUpstream::start_on(ip.into()).await.unwrap());
    }
    pods
}

fn addrs(pods: &[TestUpstream]) -> Vec<SocketAddr> {
    pods.iter().map(TestUpstream::addr).collect()
}

/// What the clients saw during one phase.
#[derive(Debug, Default)]
struct Phase {
    queries: usize,
    failures: usize,
    latencies: Vec<Duration>,
}

impl Phase {
    fn percentile(&self, p: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or_default()
    }

    fn line(&self, label: &str) -> String {
        format!(
            "{label}: {} queries, {} failures, p50 {:?}, p99 {:?}, max {:?}",
            self.queries,
            self.failures,
            self.percentile(0.5),
            self.percentile(0.99),
            self.percentile(1.0)
        )
    }
}

static NEXT_NAME: AtomicU64 = AtomicU64::new(0);

/// The load tests run one at a time, so that their figures are their own and two of them
/// do not share two cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOAD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOAD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `rate` queries per second for `duration`, each for a name never asked before
/// (every one reaches an upstream), and waits for all answers.
async fn load(r: &Resolver, rate: u32, duration: Duration) -> Phase {
    let total = (rate as u128 * duration.as_millis() / 1000) as u64;
    let interval = Duration::from_secs(1) / rate;
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(started + interval * i as u32).await;
        let n = NEXT_NAME.fetch_add(1, Ordering::Relaxed);
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            // lookup() rather than resolve(): a failure then says why.
            let reply = r.lookup(&format!("load-{n}.test."), RecordType::A).await;
            let error = match reply {
                Err(dnscore::Error::NxDomain) => None,
                Ok(_) => Some("NOERROR for a name that does not exist".to_string()),
                Err(e) => Some(e.to_string()),
            };
            (error, sent.elapsed())
        }));
    }
    let mut phase = Phase::default();
    for t in tasks {
        let (error, took) = t.await.unwrap();
        phase.queries += 1;
        if let Some(e) = error {
            if phase.failures < 3 {
                eprintln!("client-visible failure: {e}");
            }
            phase.failures += 1;
        }
        phase.latencies.push(took);
    }
    phase
}

/// Waits until `check` holds (polled), up to `limit`; returns how long it took.
async fn until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

fn resolver(upstreams: &[SocketAddr]) -> Resolver {
    Resolver::builder()
        .upstreams(upstreams.iter().copied())
        .probe_interval(Duration::from_millis(100))
        .max_probe_interval(Duration::from_millis(400))
        .build()
        .unwrap()
}

const RATE: u32 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_one_of_three_mid_load() {
    let _serial = serial();
    let pods = three_pods().await;
    let r = resolver(&addrs(&pods));
    let phase = Duration::from_secs(1) * scale();
    let before = load(&r, RATE, phase).await;

    let during = {
        // Three seconds: a dead pod that selection already avoids gets a query again when
        // its RTT sample is 2 s old (exploration), and the failures that mark it down follow.
        let load = load(&r, RATE, phase * 3);
        tokio::pin!(load);
        let kill = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            pods[0].stop();
            until(Duration::from_secs(5), || !r.stats().upstreams[0].healthy).await
        };
        tokio::join!(load, kill)
    };
    let (during, detection) = during;
    let dead = r.stats().upstreams[0].clone();
    // The pod is replaced (a new IP), as a Deployment does; the list is updated.
    let replacement = TestUpstream::start_on([127, 0, 0, 24].into())
        .await
        .unwrap();
    r.set_upstreams(&[replacement.addr(), pods[1].addr(), pods[2].addr()])
        .unwrap();
    let after = load(&r, RATE, phase).await;
    eprintln!("kill 1 of 3 at {RATE} q/s:");
    eprintln!("  {}", before.line("before"));
    eprintln!("  {}", during.line("during"));
    eprintln!("  {}", after.line("after replacement"));
    eprintln!("  detection: marked down {detection:?} after the kill");
    eprintln!("  replacement got {} queries", replacement.total_queries());
    assert_eq!(before.failures + during.failures + after.failures, 0);
    assert!(
        detection.is_some(),
        "the dead pod is marked down: {dead:#?}"
    );
    assert!(replacement.total_queries() > 0);
    // Measured 0.6 ms on a quiet machine; the bound leaves room for a loaded CI runner.
    assert!(
        during.percentile(0.99) < Duration::from_millis(500),
        "re-drives keep p99 under 500 ms: {:?}",
        during.percentile(0.99)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_one_of_three_mid_load() {
    let _serial = serial();
    let pods = three_pods().await;
    let r = resolver(&addrs(&pods));
    let phase = Duration::from_secs(1) * scale();
    let before = load(&r, RATE, phase).await;
    let (during, detection) = tokio::join!(load(&r, RATE, phase * 3), async {
        pods[1].set_default_behavior(Behavior::Drop);
        until(Duration::from_secs(5), || !r.stats().upstreams[1].healthy).await
    });
    pods[1].set_default_behavior(Behavior::Normal);
    let healed = Instant::now();
    let recovery = until(Duration::from_secs(5), || r.stats().upstreams[1].healthy).await;
    let after = load(&r, RATE, phase).await;
    eprintln!("blackhole 1 of 3 at {RATE} q/s:");
    eprintln!("  {}", before.line("before"));
    eprintln!("  {}", during.line("during"));
    eprintln!("  {}", after.line("after"));
    eprintln!("  detection: marked down {detection:?} after the blackhole began");
    eprintln!(
        "  recovery: back up {recovery:?} after it healed ({:?} ago)",
        healed.elapsed()
    );
    assert_eq!(before.failures + during.failures + after.failures, 0);
    assert!(detection.is_some(), "the blackholed pod is marked down");
    assert!(recovery.is_some(), "probes bring it back");
    // Measured 0.5 ms on a quiet machine; the bound leaves room for a loaded CI runner.
    assert!(
        during.percentile(0.99) < Duration::from_millis(500),
        "retries elsewhere keep p99 under 500 ms: {:?}",
        during.percentile(0.99)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_flapping_upstreams_cost_no_answers() {
    let _serial = serial();
    let pods = three_pods().await;
    let r = resolver(&addrs(&pods));
    pods[0].set_default_behavior(Behavior::Delay(Duration::from_millis(300)));
    let phase = Duration::from_millis(500) * scale();
    let mut total = Phase::default();
    for round in 0..4 {
        // pod 2 flaps: silent, then answering, every half second
        let b = if round % 2 == 0 {
            Behavior::Drop
        } else {
            Behavior::Normal
        };
        pods[2].set_default_behavior(b);
        let p = load(&r, RATE, phase).await;
        total.queries += p.queries;
        total.failures += p.failures;
        total.latencies.extend(p.latencies);
    }
    eprintln!("slow pod + flapping pod: {}", total.line("all"));
    let stats = r.stats();
    eprintln!(
        "  attempts per pod: {:?}",
        stats
            .upstreams
            .iter()
            .map(|u| u.attempts)
            .collect::<Vec<_>>()
    );
    assert_eq!(total.failures, 0);
    assert!(
        stats.upstreams[1].attempts > stats.upstreams[0].attempts,
        "the fast pod gets more queries than the slow one"
    );
}

/// The sidecar's most common upstream is the kube-dns Service IP alone. When a CoreDNS pod
/// dies, kube-proxy's DNAT keeps sending some sockets to it until its endpoint is removed:
/// one upstream that silently loses the queries of about a third of the sockets, always on
/// the same 5-tuples (conntrack pins them). A lost attempt must cost one short retry, from
/// a socket that was just answered (its entry leads to a live endpoint), and must not teach
/// the resolver that the upstream is slow (whose longer timeouts would then make unlucky
/// queries wait past the client's patience).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_ip_with_a_dead_endpoint_costs_no_answers() {
    let _serial = serial();
    let vip = TestUpstream::start_on([127, 0, 0, 24].into())
        .await
        .unwrap();
    let r = resolver(&[vip.addr()]);
    // Healthy first, so that the resolver has learnt the RTT.
    let before = load(&r, RATE, Duration::from_millis(500)).await;
    vip.set_default_behavior(Behavior::DropOneIn(3));
    let during = load(&r, RATE, Duration::from_secs(3) * scale()).await;
    eprintln!("Service IP losing the 5-tuples of one port in three at {RATE} q/s:");
    eprintln!("  {}", before.line("before"));
    eprintln!("  {}", during.line("during"));
    let stats = r.stats();
    eprintln!(
        "  attempts {}, timeouts {}, SRTT now {:?}",
        stats.upstreams[0].attempts, stats.upstreams[0].timeouts, stats.upstreams[0].srtt
    );
    assert_eq!(before.failures + during.failures, 0);
    // The queries on a socket whose port the DNAT pins to the dead endpoint wait for the
    // timeout's floor (50 ms); that socket is retired, and they are asked again from the
    // socket answered most recently. Timeouts inflated by the losses would reach 1.5 s.
    assert!(
        during.percentile(0.99) < Duration::from_millis(150),
        "p99 {:?}",
        during.percentile(0.99)
    );
    assert!(
        during.percentile(1.0) < Duration::from_secs(1),
        "max {:?}",
        during.percentile(1.0)
    );
}

/// As above, when every socket open at that moment leads to the dead endpoint (with two
/// CoreDNS pods, one time in sixteen for four sockets): a retry must not go to another of
/// them because it was answered before the death, but to a new port, a new 5-tuple that
/// the DNAT sends to a live endpoint. And the new sockets stay few.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_socket_leading_to_a_dead_endpoint_costs_no_answers() {
    let _serial = serial();
    let vip = TestUpstream::start_on([127, 0, 0, 25].into())
        .await
        .unwrap();
    let r = resolver(&[vip.addr()]);
    let before = load(&r, RATE, Duration::from_millis(200)).await;
    let opened = r.stats().upstreams[0].sockets_opened;
    let dead: Vec<u16> = vip.source_ports().into_iter().collect();
    vip.set_default_behavior(Behavior::DropPorts(dead.clone()));
    let during = load(&r, RATE, Duration::from_secs(1) * scale()).await;
    let stats = r.stats();
    let new_sockets = stats.upstreams[0].sockets_opened - opened;
    eprintln!(
        "every socket ({}) leading to a dead endpoint at {RATE} q/s:",
        dead.len()
    );
    eprintln!("  {}", before.line("before"));
    eprintln!("  {}", during.line("during"));
    eprintln!(
        "  timeouts {}, sockets opened since {new_sockets}",
        stats.upstreams[0].timeouts
    );
    assert_eq!(before.failures + during.failures, 0);
    assert!(
        stats.upstreams[0].timeouts > 0,
        "the dead sockets lost queries"
    );
    assert!(
        during.percentile(1.0) < Duration::from_secs(1),
        "max {:?}",
        during.percentile(1.0)
    );
    assert!(new_sockets <= 12, "{new_sockets} sockets opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_storm_is_absorbed_by_the_other_pods() {
    let _serial = serial();
    let pods = three_pods().await;
    let r = resolver(&addrs(&pods));
    pods[0].set_default_behavior(Behavior::ServFail);
    pods[1].set_default_behavior(Behavior::Refused);
    let p = load(&r, RATE, Duration::from_secs(1) * scale()).await;
    eprintln!("SERVFAIL + REFUSED pods: {}", p.line("load"));
    assert_eq!(p.failures, 0);
    assert_eq!(
        pods[2].total_queries(),
        p.queries,
        "every name reached the good pod once"
    );
    assert!(
        r.stats().upstreams.iter().all(|u| u.healthy),
        "answering pods stay up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_with_a_warm_cache_serves_stale_then_servfail() {
    let _serial = serial();
    let pods = three_pods().await;
    let r = Resolver::builder()
        .upstreams(addrs(&pods))
        .failure_ttl(Duration::ZERO)
        .build()
        .unwrap();
    // short.test has TTL 1: warm it, let it expire, then take every pod away.
    let warm = r.resolve(&query(1, "short.test.", true)).await.unwrap();
    assert_eq!(Message::from_vec(&warm).unwrap().answers.len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for p in &pods {
        p.set_default_behavior(Behavior::Drop);
    }
    let started = Instant::now();
    let raw = r.resolve(&query(2, "short.test.", true)).await.unwrap();
    let stale_after = started.elapsed();
    let stale = Message::from_vec(&raw).unwrap();
    assert_eq!(stale.metadata.response_code, ResponseCode::NoError);
    assert_eq!(stale.answers[0].ttl, 30, "stale answers carry TTL 30");
    assert!(
        raw.ends_with(&[0, 6, 0, 15, 0, 2, 0, 3]),
        "the OPT record carries EDE 3 (Stale Answer)"
    );
    assert!(
        stale_after < Duration::from_millis(1900),
        "stale within 1.8 s: {stale_after:?}"
    );

    let started = Instant::now();
    let uncached =
        Message::from_vec(&r.resolve(&query(3, "a.test.", false)).await.unwrap()).unwrap();
    let servfail_after = started.elapsed();
    assert_eq!(uncached.metadata.response_code, ResponseCode::ServFail);
    assert!(
        servfail_after < Duration::from_millis(2100),
        "SERVFAIL within 2 s: {servfail_after:?}"
    );
    // The refresh has failed meanwhile: stale at once, no 1.8 s wait (RFC 8767 §4).
    let started = Instant::now();
    let again =
        Message::from_vec(&r.resolve(&query(4, "short.test.", false)).await.unwrap()).unwrap();
    assert_eq!(again.answers[0].ttl, 30);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    eprintln!(
        "all down, warm cache: stale after {stale_after:?}, SERVFAIL after {servfail_after:?}, \
         stale again after {:?}",
        started.elapsed()
    );
    assert!(r.stats().stale_answers >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thundering_herd_sends_one_upstream_query() {
    let _serial = serial();
    let pods = three_pods().await;
    for p in &pods {
        p.set_default_behavior(Behavior::Delay(Duration::from_millis(200)));
    }
    let r = resolver(&addrs(&pods));
    let clients = 3000;
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let b = r.resolve(&query(i as u16, "a.test.", false)).await.unwrap();
                let m = Message::from_vec(&b).unwrap();
                (m.metadata.id, m.metadata.response_code)
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), (i as u16, ResponseCode::NoError));
    }
    let asked: usize = pods.iter().map(|p| p.queries("a.test.", Proto::Udp)).sum();
    eprintln!("thundering herd: {clients} clients -> {asked} upstream queries (hedges included)");
    assert!(
        asked <= 2,
        "one upstream query (and at most one hedge): {asked}"
    );
    assert!(r.stats().dedup_joins >= clients as u64 - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoof_flood_is_never_accepted() {
    let _serial = serial();
    let pods = three_pods().await;
    for p in &pods {
        p.set_default_behavior(Behavior::ForgeFirst);
    }
    let r = resolver(&addrs(&pods));
    let mut forged = 0;
    for i in 0..300 {
        let name = format!("a{i}.test.");
        for p in &pods {
            p.add_record(&name, RData::A(A::new(192, 0, 2, 9)), 300);
        }
        let b = r.resolve(&query(i, &name, false)).await.unwrap();
        let m = Message::from_vec(&b).unwrap();
        let ips: Vec<IpAddr> = m
            .answers
            .iter()
            .filter_map(|rec| rec.data.ip_addr())
            .collect();
        if ips != vec![IpAddr::from([192, 0, 2, 9])] {
            forged += 1;
        }
    }
    eprintln!(
        "spoof flood: 300 names, 4 forged packets before each real answer -> {forged} accepted"
    );
    assert_eq!(forged, 0);
    assert!(
        r.stats().upstreams.iter().all(|u| u.healthy),
        "forgeries are not failures"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_frozen_or_closed_with_queries_outstanding() {
    let _serial = serial();
    let pods = three_pods().await;
    // Every answer is truncated over UDP, so every query rides TCP.
    for p in &pods {
        p.set_default_behavior(Behavior::TruncateUdp);
    }
    let r = resolver(&addrs(&pods));
    let warm = load(&r, RATE, Duration::from_millis(400)).await;
    assert_eq!(warm.failures, 0);
    // One pod freezes (reads queries, answers nothing, keeps the connections open); one
    // closes each connection with the pipelined queries on it.
    pods[0].set_default_behavior(Behavior::Drop);
    pods[1].set_default_behavior(Behavior::CloseTcp);
    let p = load(&r, RATE, Duration::from_secs(1) * scale()).await;
    eprintln!("TCP: frozen pod + closing pod: {}", p.line("load"));
    eprintln!(
        "  TCP connections accepted per pod: {:?}",
        pods.iter()
            .map(TestUpstream::tcp_connections)
            .collect::<Vec<_>>()
    );
    assert_eq!(p.failures, 0, "{:#?}", r.stats());
    assert!(
        pods[0].tcp_connections() <= 2,
        "never more than 2 connections to a pod"
    );
}

#[tokio::test]
async fn overload_is_refused_at_once_and_bounded() {
    let up = TestUpstream::start().await.unwrap();
    up.set_default_behavior(Behavior::Delay(Duration::from_millis(300)));
    let r = Resolver::builder()
        .upstream(up.addr())
        .max_in_flight(50)
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..200u16)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let b = r
                    .resolve_with(&query(i, &format!("o{i}.test."), false), Transport::Udp)
                    .await
                    .unwrap();
                Message::from_vec(&b).unwrap().metadata.response_code
            })
        })
        .collect();
    let mut servfail = 0;
    for t in tasks {
        if t.await.unwrap() == ResponseCode::ServFail {
            servfail += 1;
        }
    }
    assert_eq!(servfail, 150, "past 50 in flight, SERVFAIL at once");
    assert_eq!(r.stats().overloaded, 150);
    assert!(up.total_queries() <= 60);
}
