//! The miss path against real upstream servers on loopback: sticky upstream sockets (few
//! 5-tuples, so few conntrack entries), the retry budget against a slow upstream, 0x20, and
//! the retirement of sockets on a timeout, on forged answers and with their runtime.

use std::collections::HashSet;
use std::time::Duration;

use dnscore::proto::op::{Message, ResponseCode};
use dnscore::proto::rr::RecordType;
use dnscore::proto::rr::{RData, rdata::A};
use dnscore::{Resolver, defaults};
use dnscore_testkit::{Behavior, Proto, TestUpstream, query};

async fn ask(r: &Resolver, id: u16, name: &str) -> Message {
    let reply = r.resolve(&query(id, name, RecordType::A, None)).await;
    Message::from_vec(&reply.unwrap()).expect("the resolver's answer parses")
}

/// A zone with `count` names `n<i>.test.` on `up`.
fn names(up: &TestUpstream, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let name = format!("n{i}.test.");
            up.add_record(&name, RData::A(A::new(192, 0, 2, 7)), 300);
            name
        })
        .collect()
}

/// 2,000 distinct names, 50 at a time: every one is a miss, yet they all leave from the
/// few sticky sockets (a fresh socket per attempt, as before pooling, used ~1 port per lookup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_names_reach_the_upstream_from_a_few_ports() {
    let up = TestUpstream::start().await.unwrap();
    let names = names(&up, 2000);
    let r = Resolver::builder().upstream(up.addr()).build().unwrap();
    for (batch, chunk) in names.chunks(50).enumerate() {
        let asks: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let r = r.clone();
                let name = name.clone();
                let id = (batch * 50 + i) as u16;
                tokio::spawn(async move { ask(&r, id, &name).await })
            })
            .collect();
        for reply in asks {
            assert_eq!(
                reply.await.unwrap().metadata.response_code,
                ResponseCode::NoError
            );
        }
    }
    let ports = up.source_ports();
    eprintln!("2000 distinct names from {} source ports", ports.len());
    assert!(ports.len() <= 64, "{} ports", ports.len());
    assert!(!ports.is_empty());
    let stats = &r.stats().upstreams[0];
    assert!(stats.sockets_opened >= ports.len() as u64);
    assert!(stats.sockets_opened >= defaults::UPSTREAM_SOCKETS as u64);
}

/// With no sticky sockets, each attempt has a port of its own (the behaviour before).
#[tokio::test]
async fn zero_sockets_means_a_fresh_port_per_attempt() {
    let up = TestUpstream::start().await.unwrap();
    let names = names(&up, 40);
    let r = Resolver::builder()
        .upstream(up.addr())
        .upstream_sockets(0)
        .build()
        .unwrap();
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            ask(&r, i as u16, name).await.metadata.response_code,
            ResponseCode::NoError
        );
    }
    // The kernel may hand a port out again once it is closed; nearly all are distinct.
    assert!(
        up.source_ports().len() >= 30,
        "{:?}",
        up.source_ports().len()
    );
}

/// A CoreDNS starved of CPU answers after 800 ms: one question is sent at most twice (the
/// first attempt times out at 400 ms before any RTT is known; its retry is the last send
/// to that upstream), and answered.
#[tokio::test]
async fn a_slow_upstream_is_asked_at_most_twice_for_one_question() {
    let up = TestUpstream::start().await.unwrap();
    up.set_default_behavior(Behavior::Delay(Duration::from_millis(800)));
    let r = Resolver::builder().upstream(up.addr()).build().unwrap();
    let reply = ask(&r, 1, "a.test.").await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    let asked = up.queries("a.test.", Proto::Udp);
    eprintln!("one question to an upstream answering after 800 ms: asked {asked} times");
    assert!((1..=2).contains(&asked), "asked {asked} times");
}

/// 20 clients asking distinct names for 6 s of an upstream that answers everything 800 ms
/// late: no retry storm (the attempt timeout learns the RTT, the retry budget bounds the
/// rest), and every question answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_on_a_slow_upstream_is_not_amplified() {
    let up = TestUpstream::start().await.unwrap();
    up.set_default_behavior(Behavior::Delay(Duration::from_millis(800)));
    let names = names(&up, 20 * 10);
    let r = Resolver::builder().upstream(up.addr()).build().unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    let clients: Vec<_> = (0..20)
        .map(|c| {
            let (r, names) = (r.clone(), names.clone());
            tokio::spawn(async move {
                let (mut asked, mut failed) = (0usize, 0usize);
                for name in names.iter().skip(c * 10).take(10) {
                    if tokio::time::Instant::now() >= until {
                        break;
                    }
                    let reply = ask(&r, asked as u16, name).await;
                    asked += 1;
                    if reply.metadata.response_code != ResponseCode::NoError {
                        failed += 1;
                    }
                }
                (asked, failed)
            })
        })
        .collect();
    let (mut questions, mut failures) = (0, 0);
    for client in clients {
        let (asked, failed) = client.await.unwrap();
        questions += asked;
        failures += failed;
    }
    let sent = up.total_queries();
    let ratio = sent as f64 / questions as f64;
    let refused = r.stats().retries_refused;
    eprintln!(
        "20 clients, 6 s, upstream 800 ms late: {questions} questions, {sent} upstream queries ({ratio:.2} per question), {failures} failed, {refused} retries refused"
    );
    assert_eq!(failures, 0);
    assert!(questions >= 100, "{questions} questions");
    assert!(ratio <= 1.2, "{ratio:.2} upstream queries per question");
}

/// A timeout retires the socket it happened on: the retry leaves from another port.
#[tokio::test]
async fn a_timeout_retires_its_socket() {
    let up = TestUpstream::start().await.unwrap();
    // One socket, so that a fresh port shows that the one that timed out was retired.
    let r = Resolver::builder()
        .upstream(up.addr())
        .upstream_sockets(1)
        .attempt_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    // Learn the RTT, and open the socket.
    assert_eq!(
        ask(&r, 1, "a.test.").await.metadata.response_code,
        ResponseCode::NoError
    );
    let first = up.source_ports();
    assert_eq!(first.len(), 1);
    up.set_behavior("b.test.", Behavior::Drop);
    let started = std::time::Instant::now();
    let reply = ask(&r, 2, "b.test.").await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(up.queries("b.test.", Proto::Udp), 2, "at most two sends");
    // The next question goes out on a fresh socket: the one that timed out is gone.
    up.reset_counters();
    assert_eq!(
        ask(&r, 3, "b.test.").await.metadata.response_code,
        ResponseCode::ServFail,
        "the failure is remembered"
    );
    assert_eq!(
        ask(&r, 4, "alias.test.").await.metadata.response_code,
        ResponseCode::NoError
    );
    let later: HashSet<u16> = up.source_ports();
    assert!(
        later.is_disjoint(&first),
        "{later:?} reuses the timed-out port {first:?}"
    );
}

/// A burst of forged answers on a socket retires it and sends its queries over TCP; none
/// of the forgeries is accepted, and the upstream is not counted as failing.
#[tokio::test]
async fn forged_answers_in_a_burst_send_the_query_over_tcp() {
    let up = TestUpstream::start().await.unwrap();
    up.set_default_behavior(Behavior::ForgeFirst);
    let names = names(&up, 20);
    let r = Resolver::builder().upstream(up.addr()).build().unwrap();
    for (i, name) in names.iter().enumerate() {
        let reply = ask(&r, i as u16, name).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        let ips: Vec<_> = reply
            .answers
            .iter()
            .filter_map(|a| a.data.ip_addr())
            .collect();
        assert_eq!(ips, [std::net::IpAddr::from([192, 0, 2, 7])], "{name}");
    }
    let tcp: usize = names.iter().map(|n| up.queries(n, Proto::Tcp)).sum();
    let stats = &r.stats().upstreams[0];
    eprintln!(
        "20 names, 4 forgeries before each answer: {tcp} asked over TCP, {} suspicious datagrams, {} sockets",
        stats.suspicious_datagrams, stats.sockets_opened
    );
    assert!(tcp >= 1, "a burst sent queries over TCP");
    assert!(stats.suspicious_datagrams >= 20 * 3);
    assert!(
        stats.sockets_opened >= 2,
        "the socket of the burst was retired"
    );
    assert!(stats.healthy);
}

/// 0x20: the name's letters go out in random case and the echo must match; an upstream
/// that answers in lower case gets the query again at once, and plain queries after that.
#[tokio::test]
async fn case_randomization_and_its_fallback() {
    let up = TestUpstream::start().await.unwrap();
    let names: Vec<String> = (0..10)
        .map(|i| {
            let name = format!("abcdefghij{i}.test.");
            up.add_record(&name, RData::A(A::new(192, 0, 2, 8)), 300);
            name
        })
        .collect();
    // Timeouts well above a loaded machine's stalls: every send below is counted.
    let r = Resolver::builder()
        .upstream(up.addr())
        .case_randomization(true)
        .min_attempt_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let mut mixed = 0;
    for (i, name) in names.iter().take(5).enumerate() {
        let reply = ask(&r, i as u16, name).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            reply.queries[0].name().to_ascii(),
            *name,
            "the client's case"
        );
        let sent = up.last_query().unwrap().queries[0].name().to_ascii();
        assert!(sent.eq_ignore_ascii_case(name));
        if sent != *name {
            mixed += 1;
        }
    }
    assert!(mixed >= 4, "{mixed} of 5 queries in mixed case");
    up.set_default_behavior(Behavior::LowercaseQuestion);
    let reply = ask(&r, 10, &names[5]).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(up.queries(&names[5], Proto::Udp), 2, "asked again at once");
    for (i, name) in names.iter().enumerate().skip(6) {
        assert_eq!(
            ask(&r, i as u16, name).await.metadata.response_code,
            ResponseCode::NoError
        );
        assert_eq!(
            up.queries(name, Proto::Udp),
            1,
            "plain case: answered at once"
        );
        let sent = up.last_query().unwrap().queries[0].name().to_ascii();
        assert_eq!(sent, *name);
    }
}

/// A resolver shared by two runtimes: sockets opened from one die with it (their readers
/// are dropped unfinished) and must be replaced, or later queries would wait on sockets
/// that nothing reads.
#[test]
fn a_socket_whose_runtime_ended_is_not_reused() {
    let server_rt = tokio::runtime::Runtime::new().unwrap();
    let up = server_rt.block_on(TestUpstream::start()).unwrap();
    let current = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let main_rt = current();
    // One socket: the second query finds the dead one in its slot unless it was closed.
    let r = main_rt.block_on(async {
        Resolver::builder()
            .upstream(up.addr())
            .upstream_sockets(1)
            .min_attempt_timeout(Duration::from_millis(500))
            .build()
            .unwrap()
    });
    let short_lived = current();
    let first = short_lived.block_on(ask(&r, 1, "a.test."));
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);
    drop(short_lived);
    let started = std::time::Instant::now();
    let second = main_rt.block_on(ask(&r, 2, "b.test."));
    assert_eq!(second.metadata.response_code, ResponseCode::NoError);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "answered at once, not after a timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(up.queries("b.test.", Proto::Udp), 1);
    assert_eq!(r.stats().upstreams[0].sockets_opened, 2);
}

/// An upstream that leaves the list closes its sockets once nothing waits on them (their
/// readers would otherwise run, and hold their ports, for as long as the process).
#[tokio::test]
async fn a_removed_upstream_closes_its_sockets() {
    let a = TestUpstream::start_on([127, 0, 0, 7].into()).await.unwrap();
    let b = TestUpstream::start_on([127, 0, 0, 8].into()).await.unwrap();
    let r = Resolver::builder().upstream(a.addr()).build().unwrap();
    assert_eq!(
        ask(&r, 1, "a.test.").await.metadata.response_code,
        ResponseCode::NoError
    );
    let port = *a.source_ports().iter().next().unwrap();
    let bind = || std::net::UdpSocket::bind(("0.0.0.0", port));
    assert!(bind().is_err(), "the socket is open and holds its port");
    r.set_upstreams(&[b.addr()]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while bind().is_err() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        bind().is_ok(),
        "port {port} still held after the upstream left"
    );
    assert_eq!(
        ask(&r, 2, "b.test.").await.metadata.response_code,
        ResponseCode::NoError
    );
}
