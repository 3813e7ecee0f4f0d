//! The resolver against real upstream servers on loopback (dnscore-testkit): every claim is
//! proved by what the upstream saw.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dnscore::proto::op::{Message, ResponseCode};
use dnscore::proto::rr::{RData, RecordType};
use dnscore::{Error, Resolver, Selection, Transport};
use dnscore_testkit::{Behavior, Proto, TestUpstream, query};

fn parse(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).expect("the resolver's answer parses")
}

/// Resolves the query `query` builds from these arguments, and parses the reply.
async fn ask(r: &Resolver, id: u16, name: &str, rtype: RecordType, edns: Option<u16>) -> Message {
    parse(&r.resolve(&query(id, name, rtype, edns)).await.unwrap())
}

fn ipv4s(msg: &Message) -> Vec<IpAddr> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

fn resolver(upstreams: &[SocketAddr]) -> Resolver {
    Resolver::builder()
        .upstreams(upstreams.iter().copied())
        .attempt_timeout(Duration::from_millis(200))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

#[tokio::test]
async fn answers_then_serves_repeats_from_the_cache() {
    let up = TestUpstream::start().await.unwrap();
    let r = resolver(&[up.addr()]);
    let first = ask(&r, 1, "a.test.", RecordType::A, None).await;
    assert_eq!(first.metadata.id, 1);
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);
    assert_eq!(ipv4s(&first), vec![IpAddr::from([192, 0, 2, 1])]);
    assert!(first.metadata.recursion_available);
    for id in 2..10 {
        let again = ask(&r, id, "A.TEST.", RecordType::A, None).await;
        assert_eq!(again.metadata.id, id);
        assert_eq!(ipv4s(&again), vec![IpAddr::from([192, 0, 2, 1])]);
    }
    assert_eq!(
        up.queries("a.test.", Proto::Udp),
        1,
        "repeats come from the cache"
    );
    assert_eq!(up.total_queries(), 1);
}

#[tokio::test]
async fn upstream_gets_edns_1232_and_the_do_bit() {
    let up = TestUpstream::start().await.unwrap();
    let r = resolver(&[up.addr()]);
    let mut m = Message::from_vec(&query(1, "a.test.", RecordType::A, Some(4096))).unwrap();
    if let Some(e) = m.edns.as_mut() {
        e.set_dnssec_ok(true);
    }
    let reply = parse(&r.resolve(&m.to_vec().unwrap()).await.unwrap());
    assert_eq!(reply.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    let seen = up.last_query().expect("upstream saw the query");
    let edns = seen.edns.expect("upstream query carries EDNS");
    assert_eq!(edns.max_payload(), 1232);
    assert!(edns.flags().dnssec_ok);
    assert_ne!(seen.metadata.id, 1, "the upstream ID is our own random one");
}

#[tokio::test]
async fn concurrent_identical_queries_share_one_upstream_query() {
    let up = TestUpstream::start().await.unwrap();
    up.set_behavior("a.test.", Behavior::Delay(Duration::from_millis(150)));
    let r = resolver(&[up.addr()]);
    let mut tasks = Vec::new();
    for id in 0..100u16 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let name = if id % 2 == 0 { "a.test." } else { "A.Test." };
            let bytes = r
                .resolve(&query(id, name, RecordType::A, None))
                .await
                .unwrap();
            (id, parse(&bytes))
        }));
    }
    for task in tasks {
        let (id, reply) = task.await.unwrap();
        assert_eq!(reply.metadata.id, id, "each caller gets its own ID back");
        assert_eq!(ipv4s(&reply), vec![IpAddr::from([192, 0, 2, 1])]);
    }
    assert_eq!(up.total_queries(), 1);
    assert_eq!(r.in_flight(), 0);
}

#[tokio::test]
async fn cancelling_the_first_caller_does_not_cancel_the_shared_query() {
    let up = TestUpstream::start().await.unwrap();
    up.set_behavior("a.test.", Behavior::Delay(Duration::from_millis(150)));
    let r = resolver(&[up.addr()]);
    let first = {
        let r = r.clone();
        tokio::spawn(async move { r.resolve(&query(1, "a.test.", RecordType::A, None)).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let second = {
        let r = r.clone();
        tokio::spawn(async move { r.resolve(&query(2, "a.test.", RecordType::A, None)).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    first.abort();
    let reply = parse(&second.await.unwrap().unwrap());
    assert_eq!(reply.metadata.id, 2);
    assert_eq!(ipv4s(&reply), vec![IpAddr::from([192, 0, 2, 1])]);
    assert_eq!(up.total_queries(), 1);
}

#[tokio::test]
async fn truncated_udp_answer_is_asked_again_over_tcp_and_cached_whole() {
    let up = TestUpstream::start().await.unwrap();
    let r = resolver(&[up.addr()]);
    let full = ask(&r, 1, "big.test.", RecordType::TXT, None).await;
    assert!(!full.metadata.truncation);
    assert!(
        full.answers.len() >= 20,
        "all TXT records: {}",
        full.answers.len()
    );
    assert_eq!(up.queries("big.test.", Proto::Udp), 1);
    assert_eq!(up.queries("big.test.", Proto::Tcp), 1);

    // A UDP client without EDNS gets TC=1 from the cache, and no new upstream query.
    let udp = r
        .resolve_with(
            &query(2, "big.test.", RecordType::TXT, None),
            Transport::Udp,
        )
        .await
        .unwrap();
    assert!(udp.len() <= 512);
    let udp = parse(&udp);
    assert!(udp.metadata.truncation);
    assert!(udp.answers.is_empty());
    assert_eq!(udp.queries.len(), 1);
    assert_eq!(up.total_queries(), 2);
}

#[tokio::test]
async fn tcp_client_still_goes_upstream_over_udp_first() {
    let up = TestUpstream::start().await.unwrap();
    let r = resolver(&[up.addr()]);
    r.resolve_with(&query(1, "a.test.", RecordType::A, None), Transport::Tcp)
        .await
        .unwrap();
    assert_eq!(up.queries("a.test.", Proto::Udp), 1);
    assert_eq!(up.queries("a.test.", Proto::Tcp), 0);
}

#[tokio::test]
async fn many_truncated_answers_share_at_most_two_tcp_connections() {
    let up = TestUpstream::start().await.unwrap();
    up.set_default_behavior(Behavior::TruncateUdp);
    let r = resolver(&[up.addr()]);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("n{i}.test.");
            ask(&r, i, &name, RecordType::A, None).await
        }));
    }
    for task in tasks {
        assert_eq!(
            task.await.unwrap().metadata.response_code,
            ResponseCode::NXDomain
        );
    }
    assert_eq!(up.total_queries(), 80, "40 over UDP, then 40 over TCP");
    assert!(
        up.tcp_connections() <= 2,
        "{} connections",
        up.tcp_connections()
    );
}

#[tokio::test]
async fn truncated_over_tcp_ends_in_servfail_not_a_loop() {
    let up = TestUpstream::start().await.unwrap();
    up.set_default_behavior(Behavior::TruncateAlways);
    let r = resolver(&[up.addr()]);
    let reply = ask(&r, 1, "a.test.", RecordType::A, None).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(
        up.queries("a.test.", Proto::Tcp),
        1,
        "the broken upstream is not asked again"
    );
    assert_eq!(up.queries("a.test.", Proto::Udp), 1);
}

/// An evicted CoreDNS pod: its port is closed. Every query is still answered, and at once:
/// the attempt timeout is far longer than the whole test is allowed to take.
#[tokio::test]
async fn closed_upstream_is_skipped_at_once() {
    let dead = TestUpstream::start().await.unwrap();
    let live = TestUpstream::start_on([127, 0, 0, 2].into()).await.unwrap();
    dead.stop();
    let r = Resolver::builder()
        .upstream(dead.addr())
        .upstream(live.addr())
        .attempt_timeout(Duration::from_secs(5))
        .min_attempt_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    for i in 0..50 {
        let name = format!("n{i}.test.");
        let reply = ask(&r, i, &name, RecordType::A, None).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a closed port must fail the attempt at once, not after the 5 s attempt timeout"
    );
    assert_eq!(live.total_queries(), 50);
}

#[tokio::test]
async fn servfail_and_refused_are_retried_on_another_upstream() {
    for bad in [Behavior::ServFail, Behavior::Refused] {
        let sick = TestUpstream::start().await.unwrap();
        let well = TestUpstream::start_on([127, 0, 0, 3].into()).await.unwrap();
        sick.set_default_behavior(bad.clone());
        let r = resolver(&[sick.addr(), well.addr()]);
        for i in 0..20 {
            let name = format!("n{i}.test.");
            let reply = ask(&r, i, &name, RecordType::A, None).await;
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NXDomain,
                "{bad:?}"
            );
        }
        assert_eq!(well.total_queries(), 20);
        assert!(
            sick.total_queries() <= 20,
            "the sick upstream is asked at most once per query"
        );
    }
}

/// A retry that fails at once (SERVFAIL) is followed by the next at once, even while the
/// first attempt still listens for a late answer: the next one is a retry, not a hedge, and
/// needs no hedge budget.
#[tokio::test]
async fn a_retry_that_fails_at_once_is_followed_at_once() {
    let silent = TestUpstream::start().await.unwrap();
    silent.set_default_behavior(Behavior::Drop);
    let failing = TestUpstream::start_on([127, 0, 0, 2].into()).await.unwrap();
    failing.set_default_behavior(Behavior::ServFail);
    let good = TestUpstream::start_on([127, 0, 0, 3].into()).await.unwrap();
    let r = Resolver::builder()
        .upstreams([silent.addr(), failing.addr(), good.addr()])
        .selection(Selection::Sequential)
        .hedge_share(0.0)
        .min_attempt_timeout(Duration::from_secs(2))
        .attempt_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let reply = ask(&r, 1, "a.test.", RecordType::A, None).await;
    let took = started.elapsed();
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    let asked = |u: &TestUpstream| u.queries("a.test.", Proto::Udp);
    assert_eq!((asked(&silent), asked(&failing), asked(&good)), (1, 1, 1));
    // 2 s for the silent one, then two answers on loopback; waiting out the failed retry's
    // own 2 s as well (as if it were a hedge without budget) would take 4 s.
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn when_every_upstream_fails_the_client_gets_servfail_never_refused() {
    let up = TestUpstream::start().await.unwrap();
    up.set_default_behavior(Behavior::Refused);
    let r = resolver(&[up.addr()]);
    let reply = ask(&r, 7, "a.test.", RecordType::A, Some(1232)).await;
    assert_eq!(reply.metadata.id, 7);
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(reply.edns.is_some(), "the client's EDNS is answered");
    let asked = up.total_queries();

    // The failure is remembered briefly (RFC 2308 §7): a retry storm does not reach the
    // failing server...
    up.set_default_behavior(Behavior::Normal);
    for id in 8..20 {
        let reply = ask(&r, id, "a.test.", RecordType::A, None).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    }
    assert_eq!(up.total_queries(), asked);
    // ...and forgotten after the failure TTL (2 s).
    tokio::time::pause();
    tokio::time::advance(dnscore::defaults::FAILURE_TTL).await;
    tokio::time::resume();
    let reply = ask(&r, 30, "a.test.", RecordType::A, None).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.stats().failures, 13);
}

#[tokio::test]
async fn a_silent_upstream_is_marked_down_by_its_probes_and_a_slow_probe_answer_brings_it_back() {
    let fast = TestUpstream::start().await.unwrap();
    let other = TestUpstream::start().await.unwrap();
    let r = Resolver::builder()
        .upstreams([fast.addr(), other.addr()])
        .selection(Selection::Sequential)
        .probe_interval(Duration::from_millis(100))
        .max_probe_interval(Duration::from_millis(200))
        .failure_ttl(Duration::ZERO)
        .build()
        .unwrap();
    for id in 0..20 {
        ask(&r, id, &format!("warm-{id}.test."), RecordType::A, None).await;
    }
    let srtt = r.stats().upstreams[0].srtt.expect("answered");
    assert!(
        srtt < Duration::from_millis(50),
        "a fast upstream: {srtt:?}"
    );

    // It goes silent: one query times out (after the 50 ms floor) and is answered by the
    // other; selection leaves it, and its probes, each waiting no longer than a query's
    // attempt would, mark it down. With the cap (1.5 s) as the probe's timeout this took
    // over 3 s.
    fast.set_default_behavior(Behavior::Drop);
    let silent = std::time::Instant::now();
    let reply = ask(&r, 100, "after.test.", RecordType::A, None).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    let deadline = silent + Duration::from_secs(2);
    while r.stats().upstreams[0].healthy && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = r.stats().upstreams[0].clone();
    assert!(!stats.healthy, "marked down within 2 s: {stats:#?}");
    assert!(stats.timeouts >= 1);

    // It answers again, but `. NS` (which CoreDNS forwards) takes 300 ms, far past the
    // attempt timeout its 1 ms answers set: an answer within the cap still brings it back.
    fast.set_behavior(".", Behavior::Delay(Duration::from_millis(300)));
    fast.set_default_behavior(Behavior::Normal);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !r.stats().upstreams[0].healthy && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        r.stats().upstreams[0].healthy,
        "a slow probe answer brings it back"
    );
    assert!(fast.queries(".", Proto::Udp) >= 1);
}

#[tokio::test]
async fn dead_upstreams_are_marked_down_fail_fast_and_come_back() {
    let up = TestUpstream::start().await.unwrap();
    let addr = up.addr();
    up.stop();
    let r = Resolver::builder()
        .upstream(addr)
        .probe_interval(Duration::from_millis(100))
        .failure_ttl(Duration::ZERO)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let reply = ask(&r, 1, "a.test.", RecordType::A, None).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refusals fail at once"
    );
    assert_eq!(
        r.stats().upstreams[0].attempts,
        2,
        "one query sends at most twice to one upstream"
    );
    let reply = ask(&r, 4, "c.test.", RecordType::A, None).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(
        !r.stats().upstreams[0].healthy,
        "three refusals in a row mark it down"
    );

    // All upstreams down: asked anyway (a Service IP may lead elsewhere next time), and a
    // refusing one still fails at once.
    let started = std::time::Instant::now();
    let reply = ask(&r, 2, "b.test.", RecordType::A, None).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(r.stats().upstreams[0].attempts > 4);

    // The pod comes back on the same address; a probe (". IN NS") brings it back.
    let SocketAddr::V4(v4) = addr else {
        unreachable!()
    };
    let back = TestUpstream::start_at(v4).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !r.stats().upstreams[0].healthy && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(r.stats().upstreams[0].healthy, "probed back up");
    assert!(
        back.queries(".", Proto::Udp) >= 1,
        "the probe asked the root NS"
    );
    let reply = ask(&r, 3, "b.test.", RecordType::A, None).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
}

/// Slowness alone never takes the last upstream out of rotation: a silent one is asked
/// again once (from another socket: the first is retired), never more whatever the
/// deadline, and stays up for the next query.
#[tokio::test]
async fn a_silent_last_upstream_is_not_marked_down() {
    let up = TestUpstream::start().await.unwrap();
    up.set_default_behavior(Behavior::Drop);
    let r = Resolver::builder()
        .upstream(up.addr())
        .upstream_sockets(1)
        .attempt_timeout(Duration::from_millis(100))
        .timeout(Duration::from_millis(500))
        .failure_ttl(Duration::ZERO)
        .build()
        .unwrap();
    let reply = ask(&r, 1, "a.test.", RecordType::A, None).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    // At 0 and 100 ms (the attempt ceiling), then waited for until the 500 ms deadline.
    let asked = up.queries("a.test.", Proto::Udp);
    assert_eq!(asked, 2, "asked {asked} times");
    assert_eq!(
        up.source_ports().len(),
        2,
        "the timeout retired the first socket"
    );
    assert!(r.stats().upstreams[0].healthy);
    up.set_default_behavior(Behavior::Normal);
    let reply = ask(&r, 2, "a.test.", RecordType::A, None).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
}

#[tokio::test]
async fn forged_answers_are_ignored_and_never_cached() {
    let up = TestUpstream::start().await.unwrap();
    up.set_behavior("a.test.", Behavior::ForgeFirst);
    let r = resolver(&[up.addr()]);
    let reply = ask(&r, 1, "a.test.", RecordType::A, None).await;
    assert_eq!(ipv4s(&reply), vec![IpAddr::from([192, 0, 2, 1])]);
    let cached = ask(&r, 2, "a.test.", RecordType::A, None).await;
    assert_eq!(ipv4s(&cached), vec![IpAddr::from([192, 0, 2, 1])]);
    assert!(cached.answers.iter().all(|rec| rec.ttl <= 300));
    assert_eq!(up.total_queries(), 1);
}

#[tokio::test]
async fn negative_answers_are_cached_for_the_soa_minimum() {
    let up = TestUpstream::start().await.unwrap();
    let r = resolver(&[up.addr()]);
    for id in 0..3 {
        let nx = ask(&r, id, "nope.test.", RecordType::A, None).await;
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(
            nx.authorities.iter().all(|s| s.ttl <= 60),
            "SOA TTL is the negative TTL"
        );
        let nodata = ask(&r, id, "b.test.", RecordType::AAAA, None).await;
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
    }
    assert_eq!(up.total_queries(), 2);
}

#[tokio::test]
async fn ttls_count_down_and_expired_entries_are_asked_again() {
    let up = TestUpstream::start().await.unwrap();
    let r = resolver(&[up.addr()]);
    r.resolve(&query(1, "a.test.", RecordType::A, None))
        .await
        .unwrap();
    r.resolve(&query(1, "short.test.", RecordType::A, None))
        .await
        .unwrap();
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(100)).await;
    let later = ask(&r, 2, "a.test.", RecordType::A, None).await;
    let ttl = later.answers[0].ttl;
    assert!(
        (199..=200).contains(&ttl),
        "TTL 300 counted down by 100 s: {ttl}"
    );
    tokio::time::resume();
    // short.test has TTL 1: long expired after 100 s.
    let again = ask(&r, 3, "short.test.", RecordType::A, None).await;
    assert_eq!(again.metadata.response_code, ResponseCode::NoError);
    assert_eq!(up.queries("short.test.", Proto::Udp), 2);
    assert_eq!(up.queries("a.test.", Proto::Udp), 1);
}

#[tokio::test]
async fn unanswerable_packets_are_dropped_and_malformed_ones_get_formerr() {
    let up = TestUpstream::start().await.unwrap();
    let r = resolver(&[up.addr()]);
    assert!(matches!(r.resolve(&[1, 2, 3]).await, Err(Error::Malformed)));
    let mut response = query(1, "a.test.", RecordType::A, None);
    response[2] |= 0x80;
    assert!(matches!(r.resolve(&response).await, Err(Error::Malformed)));
    let mut two_questions = query(5, "a.test.", RecordType::A, None);
    two_questions[5] = 2;
    let reply = parse(&r.resolve(&two_questions).await.unwrap());
    assert_eq!(reply.metadata.id, 5);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    let cut = &query(6, "a.test.", RecordType::A, None)[..16];
    let reply = parse(&r.resolve(cut).await.unwrap());
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(
        up.total_queries(),
        0,
        "nothing malformed reaches the upstream"
    );
}

#[tokio::test]
async fn lookup_and_lookup_ip() {
    let up = TestUpstream::start().await.unwrap();
    let r = resolver(&[up.addr()]);
    let mut ips = r.lookup_ip("a.test").await.unwrap();
    ips.sort();
    assert_eq!(
        ips,
        vec![IpAddr::from([192, 0, 2, 1]), "2001:db8::1".parse().unwrap()]
    );
    let alias = r.lookup("alias.test.", RecordType::A).await.unwrap();
    assert_eq!(alias.rdata_of(RecordType::CNAME).count(), 1);
    assert_eq!(alias.rdata_of(RecordType::A).count(), 1);
    assert!(matches!(
        r.lookup_ip("nope.test").await,
        Err(Error::NxDomain)
    ));
    assert!(matches!(
        r.lookup("bad..name", RecordType::A).await,
        Err(Error::InvalidName(_))
    ));
    assert_eq!(
        r.lookup_ip("10.1.2.3").await.unwrap(),
        vec![IpAddr::from([10, 1, 2, 3])]
    );
    let before = up.total_queries();
    r.lookup_ip("a.test").await.unwrap();
    assert_eq!(up.total_queries(), before, "lookups share the cache");
}

#[tokio::test]
async fn lookup_reports_why_no_upstream_answered() {
    let up = TestUpstream::start().await.unwrap();
    up.stop();
    let r = resolver(&[up.addr()]);
    match r.lookup("a.test.", RecordType::A).await {
        Err(Error::NoAnswer(cause)) => {
            assert!(
                matches!(*cause, dnscore::UpstreamError::Refused(_)),
                "{cause}"
            )
        }
        other => panic!("expected NoAnswer, got {other:?}"),
    }
}

#[tokio::test]
async fn usable_as_a_tower_service() {
    use tower::ServiceExt;
    let up = TestUpstream::start().await.unwrap();
    let r = resolver(&[up.addr()]);
    let bytes = r
        .oneshot(query(9, "a.test.", RecordType::A, None))
        .await
        .unwrap();
    assert_eq!(ipv4s(&parse(&bytes)), vec![IpAddr::from([192, 0, 2, 1])]);
}

#[test]
fn builder_rejects_bad_settings() {
    assert!(matches!(
        Resolver::builder().build(),
        Err(Error::NoUpstreams)
    ));
    let up: SocketAddr = "127.0.0.1:53".parse().unwrap();
    assert!(matches!(
        Resolver::builder().upstream(up).cache_capacity(0).build(),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        Resolver::builder()
            .upstream(up)
            .min_ttl(10)
            .max_ttl(5)
            .build(),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        Resolver::builder()
            .upstream(up)
            .timeout(Duration::ZERO)
            .build(),
        Err(Error::Config(_))
    ));
    for bad in ["", ".", "kube..example", "a b"] {
        assert!(
            matches!(
                Resolver::builder().upstream(up).cluster_domain(bad).build(),
                Err(Error::InvalidName(_))
            ),
            "{bad:?}"
        );
    }
    assert!(
        Resolver::builder()
            .upstream(up)
            .cluster_domain("Kube.Example.")
            .build()
            .is_ok()
    );
    // A floor above the ceiling is not an error: the ceiling wins (with --max-ttl 10 set
    // alone, the default floor of 30 s must not make the configuration invalid).
    assert!(Resolver::builder().upstream(up).max_ttl(10).build().is_ok());
}

/// A TCP connection that dies with the query on it (a CoreDNS pod evicted mid-stream): the
/// query is re-sent to another upstream at once, not left to time out.
#[tokio::test]
async fn tcp_death_mid_stream_is_retried_on_another_upstream() {
    let dying = TestUpstream::start().await.unwrap();
    let healthy = TestUpstream::start_on([127, 0, 0, 4].into()).await.unwrap();
    dying.set_default_behavior(Behavior::CloseTcp);
    healthy.set_default_behavior(Behavior::TruncateUdp);
    let r = Resolver::builder()
        .upstream(dying.addr())
        .upstream(healthy.addr())
        .attempt_timeout(Duration::from_secs(5))
        .min_attempt_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    // The first pick is random: 30 names meet the dying upstream first about 15 times.
    let mut died = 0;
    for i in 0..30 {
        let name = format!("n{i}.test.");
        let reply = ask(&r, i, &name, RecordType::A, None).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        died += dying.queries(&name, Proto::Tcp);
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no attempt waited out its timeout"
    );
    assert!(died >= 1, "the dying upstream was met over TCP");
    assert_eq!(
        healthy.total_queries(),
        60,
        "each name over UDP, then over TCP"
    );
}

#[test]
fn resolver_is_cheap_to_share_across_threads() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<Resolver>();
    assert_eq!(size_of::<Resolver>(), size_of::<usize>(), "one Arc");
}

/// A headless Service names the CoreDNS pods; the resolver follows them directly.
#[tokio::test]
async fn upstreams_discovered_by_name_are_followed() {
    use dnscore::proto::rr::rdata::A;
    let bootstrap = TestUpstream::start_on([127, 0, 0, 41].into())
        .await
        .unwrap();
    let port = bootstrap.addr().port();
    let pod = |last: u8| std::net::SocketAddrV4::new([127, 0, 0, last].into(), port);
    let (b, c) = (
        TestUpstream::start_at(pod(42)).await.unwrap(),
        TestUpstream::start_at(pod(43)).await.unwrap(),
    );
    for server in [&bootstrap, &b, &c] {
        server.add_record("pods.test.", RData::A(A::new(127, 0, 0, 42)), 1);
        server.add_record("pods.test.", RData::A(A::new(127, 0, 0, 43)), 1);
    }
    let r = resolver(&[bootstrap.addr()]);
    let follow = tokio::spawn(r.clone().follow_upstreams(
        "pods.test.".into(),
        port,
        Duration::from_millis(100),
    ));
    let wait_for = |want: Vec<SocketAddr>| {
        let r = r.clone();
        async move {
            for _ in 0..100 {
                let mut got = r.upstream_addrs();
                got.sort();
                if got == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("upstreams never became {want:?}: {:?}", r.upstream_addrs());
        }
    };
    wait_for(vec![pod(42).into(), pod(43).into()]).await;
    for i in 0..20 {
        let name = format!("n{i}.test.");
        r.resolve(&query(i, &name, RecordType::A, None))
            .await
            .unwrap();
        assert_eq!(
            bootstrap.queries(&name, Proto::Udp),
            0,
            "the pods are asked directly"
        );
    }
    assert!(b.total_queries() + c.total_queries() >= 20);

    // A pod leaves the Service.
    for server in [&b, &c] {
        server.remove_records("pods.test.");
        server.add_record("pods.test.", RData::A(A::new(127, 0, 0, 43)), 1);
    }
    wait_for(vec![pod(43).into()]).await;
    follow.abort();
}

/// An entry asked for in the last tenth of its TTL is refreshed in the background, once, so
/// that a popular name never misses.
#[tokio::test]
async fn popular_entries_are_prefetched_before_they_expire() {
    use dnscore::proto::rr::rdata::A;
    let up = TestUpstream::start().await.unwrap();
    up.add_record("pf.test.", RData::A(A::new(192, 0, 2, 77)), 10);
    let r = resolver(&[up.addr()]);
    r.resolve(&query(1, "pf.test.", RecordType::A, None))
        .await
        .unwrap();
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(9_500)).await;
    let hit = ask(&r, 2, "pf.test.", RecordType::A, None).await;
    assert_eq!(
        hit.answers[0].ttl, 1,
        "still the old entry, in its last second"
    );
    tokio::time::resume();
    for _ in 0..100 {
        if up.queries("pf.test.", Proto::Udp) == 2 && r.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        up.queries("pf.test.", Proto::Udp),
        2,
        "refreshed in the background"
    );
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(1_000)).await;
    let later = ask(&r, 3, "pf.test.", RecordType::A, None).await;
    assert!(
        later.answers[0].ttl >= 8,
        "the refreshed entry: {}",
        later.answers[0].ttl
    );
    assert_eq!(
        up.queries("pf.test.", Proto::Udp),
        2,
        "no miss past the old TTL"
    );
    assert_eq!(r.stats().prefetches, 1);
}

/// Repeated lookups of one name (answered from the thread's lookup memo after the second)
/// are counted as hits, count their TTLs down second by second, and follow the entry when
/// a prefetch replaces it, without waiting for the old one to expire.
#[tokio::test]
async fn repeated_lookups_count_down_and_follow_a_refreshed_entry() {
    use dnscore::proto::rr::rdata::A;
    let up = TestUpstream::start().await.unwrap();
    up.add_record("memo.test.", RData::A(A::new(192, 0, 2, 50)), 10);
    let r = resolver(&[up.addr()]);
    let lookup = |r: Resolver| async move {
        let l = r.lookup("memo.test.", RecordType::A).await.unwrap();
        let records = l.records();
        assert_eq!(records.len(), 1);
        (records[0].data.ip_addr().unwrap(), records[0].ttl)
    };
    let old = IpAddr::from([192, 0, 2, 50]);
    assert_eq!(lookup(r.clone()).await, (old, 10));
    let hits = r.stats().cache_hits;
    for _ in 0..3 {
        assert_eq!(lookup(r.clone()).await, (old, 10));
    }
    assert_eq!(r.stats().cache_hits, hits + 3, "every repeat is a hit");
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(2_500)).await;
    for _ in 0..2 {
        assert_eq!(lookup(r.clone()).await, (old, 8), "counted down by 2 s");
    }
    // The upstream's answer changes; in the entry's last tenth a lookup starts a refresh.
    up.remove_records("memo.test.");
    up.add_record("memo.test.", RData::A(A::new(192, 0, 2, 51)), 10);
    tokio::time::advance(Duration::from_millis(7_000)).await;
    assert_eq!(
        lookup(r.clone()).await,
        (old, 1),
        "the old entry, last second"
    );
    tokio::time::resume();
    for _ in 0..100 {
        if up.queries("memo.test.", Proto::Udp) == 2 && r.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(r.stats().prefetches, 1);
    let (ip, ttl) = lookup(r.clone()).await;
    assert_eq!(ip, IpAddr::from([192, 0, 2, 51]), "the refreshed entry");
    assert!(ttl >= 9, "{ttl}");
    assert_eq!(up.queries("memo.test.", Proto::Udp), 2);

    // lookup_ip the same way: both families, each a hit, nothing sent.
    let both = vec![IpAddr::from([192, 0, 2, 1]), "2001:db8::1".parse().unwrap()];
    assert_eq!(r.lookup_ip("a.test").await.unwrap(), both);
    let (hits, sent) = (r.stats().cache_hits, up.total_queries());
    for _ in 0..3 {
        assert_eq!(r.lookup_ip("a.test").await.unwrap(), both);
    }
    assert_eq!(r.stats().cache_hits, hits + 6);
    assert_eq!(up.total_queries(), sent);
}

/// A query repeated on one thread is answered again from that thread's replay of its last
/// answer: each with its own ID, its TTLs counted down as the entry ages, kept apart by the
/// client's letter case and transport, and never after the cache dropped or replaced the
/// entry it came from.
#[tokio::test]
async fn repeated_queries_are_answered_as_if_written_again() {
    use dnscore::proto::rr::rdata::A;
    let up = TestUpstream::start().await.unwrap();
    up.add_record("replay.test.", RData::A(A::new(192, 0, 2, 60)), 10);
    for i in 0..40 {
        up.add_record("big.replay.test.", RData::A(A::new(10, 0, 0, i)), 600);
    }
    let r = resolver(&[up.addr()]);
    let cached = |r: &Resolver, id: u16, name: &str, transport| {
        let mut out = Vec::new();
        let q = query(id, name, RecordType::A, Some(1232));
        r.resolve_cached(&q, transport, &mut out)
            .unwrap()
            .then_some(out)
    };
    let ttl_and_ip = |out: &[u8]| {
        let m = parse(out);
        (m.answers[0].ttl, ipv4s(&m)[0])
    };
    let old = IpAddr::from([192, 0, 2, 60]);
    assert!(cached(&r, 1, "replay.test.", Transport::Udp).is_none());
    ask(&r, 1, "replay.test.", RecordType::A, Some(1232)).await;
    let hits = r.stats().cache_hits;
    let answers: Vec<Vec<u8>> = (2..6)
        .map(|id| cached(&r, id, "replay.test.", Transport::Udp).unwrap())
        .collect();
    assert_eq!(r.stats().cache_hits, hits + 4, "every repeat is a hit");
    for (id, answer) in (2..6).zip(&answers) {
        assert_eq!(parse(answer).metadata.id, id);
        assert_eq!(
            answer[2..],
            answers[0][2..],
            "the same answer but for the ID"
        );
        assert_eq!(ttl_and_ip(answer), (10, old));
    }

    // The client's letter case is echoed, repeated or not.
    for id in 6..9 {
        let upper = cached(&r, id, "REPLAY.test.", Transport::Udp).unwrap();
        assert_eq!(parse(&upper).queries[0].name().to_string(), "REPLAY.test.");
    }

    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(2_500)).await;
    for id in 9..12 {
        let answer = cached(&r, id, "replay.test.", Transport::Udp).unwrap();
        assert_eq!(ttl_and_ip(&answer), (8, old), "counted down by 2 s");
    }

    // A datagram without EDNS gets TC=1 where a stream gets the whole answer, however the
    // two are interleaved.
    ask(&r, 20, "big.replay.test.", RecordType::A, None).await;
    let mut out = Vec::new();
    for id in 21..27 {
        let q = query(id, "big.replay.test.", RecordType::A, None);
        assert!(r.resolve_cached(&q, Transport::Tcp, &mut out).unwrap());
        let whole = parse(&out);
        assert_eq!(whole.answers.len(), 40);
        assert!(!whole.metadata.truncation);
        if id % 2 == 0 {
            assert!(r.resolve_cached(&q, Transport::Udp, &mut out).unwrap());
            let cut = parse(&out);
            assert!(cut.metadata.truncation, "TC=1 over UDP");
            assert!(cut.answers.is_empty());
        }
    }

    // The entry is replaced by a prefetch in its last tenth: the next answer is the new
    // one, within the same second as the last replay of the old.
    up.remove_records("replay.test.");
    up.add_record("replay.test.", RData::A(A::new(192, 0, 2, 61)), 10);
    tokio::time::advance(Duration::from_millis(7_000)).await;
    let last = cached(&r, 30, "replay.test.", Transport::Udp).unwrap();
    assert_eq!(ttl_and_ip(&last), (1, old), "the old entry, last second");
    tokio::time::resume();
    for _ in 0..100 {
        if up.queries("replay.test.", Proto::Udp) == 2 && r.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(r.stats().prefetches, 1);
    let new = cached(&r, 31, "replay.test.", Transport::Udp).unwrap();
    assert_eq!(
        ttl_and_ip(&new).1,
        IpAddr::from([192, 0, 2, 61]),
        "the new entry"
    );

    // Evicted from the cache: not answered from the replay either.
    for _ in 0..3 {
        cached(&r, 32, "replay.test.", Transport::Udp).unwrap();
    }
    r.set_cache_capacity(1);
    for i in 0..50 {
        ask(&r, 33, &format!("n{i}.test."), RecordType::A, Some(1232)).await;
        // Another letter case: the same key, a query this thread never answered.
        if cached(&r, 34, "rEPLAY.test.", Transport::Udp).is_none() {
            break;
        }
    }
    assert!(cached(&r, 35, "rEPLAY.test.", Transport::Udp).is_none());
    assert!(
        cached(&r, 35, "replay.test.", Transport::Udp).is_none(),
        "an evicted entry is a miss"
    );
}

/// A resolver shared by two runtimes: the TCP connection opened from one dies with it (its
/// tasks are dropped unfinished) and must leave the pool, or every later TCP exchange with
/// that upstream would go to a connection nobody drives.
#[test]
fn a_tcp_connection_whose_runtime_ended_is_not_reused() {
    let server_rt = tokio::runtime::Runtime::new().unwrap();
    let up = server_rt.block_on(TestUpstream::start()).unwrap();
    up.set_default_behavior(Behavior::TruncateUdp);
    let current = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let main_rt = current();
    let r = main_rt.block_on(async { resolver(&[up.addr()]) });
    let short_lived = current();
    let first = short_lived.block_on(ask(&r, 1, "a.test.", RecordType::A, None));
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);
    drop(short_lived);
    let second = main_rt.block_on(ask(&r, 2, "b.test.", RecordType::A, None));
    assert_eq!(second.metadata.response_code, ResponseCode::NoError);
    assert_eq!(up.queries("b.test.", Proto::Tcp), 1);
    assert_eq!(up.tcp_connections(), 2, "a new connection for the second");
}

/// The probe of a dead upstream runs on the runtime whose query found it dead; when that
/// runtime ends first (a short-lived one, or a test's, with the resolver kept in a static),
/// the probe task is dropped with it, and the next query starts another: the upstream must
/// not stay down for good while another one is up.
#[test]
fn a_probe_lost_with_its_runtime_is_started_again_by_the_next_query() {
    let main_rt = tokio::runtime::Runtime::new().unwrap();
    let (dead, good) = main_rt.block_on(async {
        let dead = TestUpstream::start_on([127, 0, 0, 5].into()).await.unwrap();
        let good = TestUpstream::start_on([127, 0, 0, 6].into()).await.unwrap();
        (dead, good)
    });
    let addr = dead.addr();
    dead.stop();
    let r = main_rt.block_on(async {
        Resolver::builder()
            .upstreams([addr, good.addr()])
            .selection(Selection::Sequential)
            .max_failures(1)
            .probe_interval(Duration::from_millis(50))
            .build()
            .unwrap()
    });
    let short_lived = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reply = short_lived.block_on(ask(&r, 1, "a.test.", RecordType::A, None));
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(
        !r.stats().upstreams[0].healthy,
        "the refusal marked it down"
    );
    drop(short_lived);
    let SocketAddr::V4(v4) = addr else {
        unreachable!()
    };
    let _back = main_rt.block_on(TestUpstream::start_at(v4)).unwrap();
    // The application goes on asking (new names: misses), from its main runtime.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut id = 2;
    while !r.stats().upstreams[0].healthy && std::time::Instant::now() < deadline {
        let name = format!("n{id}.test.");
        main_rt.block_on(ask(&r, id, &name, RecordType::A, None));
        id += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(r.stats().upstreams[0].healthy, "probed back up");
}
