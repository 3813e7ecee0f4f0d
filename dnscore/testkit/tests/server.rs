//! Integration tests of the test upstream, with real sockets on 127.0.0.1.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use dnscore_testkit::hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use dnscore_testkit::hickory_proto::rr::rdata::{A, AAAA, SOA};
use dnscore_testkit::hickory_proto::rr::{Name, RData, RecordType};
use dnscore_testkit::{Behavior, Proto, TestUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

/// Upper bound for anything that is expected to happen.
const PATIENCE: Duration = Duration::from_secs(2);

fn query(name: &str, rtype: RecordType, edns_payload: Option<u16>) -> Message {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(payload) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        msg.set_edns(edns);
    }
    msg
}

async fn udp_client(addr: SocketAddr) -> UdpSocket {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    sock.connect(addr).await.unwrap();
    sock
}

async fn udp_recv(sock: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65_535];
    match timeout(wait, sock.recv(&mut buf)).await {
        Ok(Ok(len)) => Some(buf[..len].to_vec()),
        Ok(Err(e)) => panic!("UDP receive failed: {e}"),
        Err(_) => None,
    }
}

async fn udp_exchange(addr: SocketAddr, msg: &Message) -> Message {
    let sock = udp_client(addr).await;
    sock.send(&msg.to_vec().unwrap()).await.unwrap();
    let bytes = udp_recv(&sock, PATIENCE).await.expect("no UDP answer");
    Message::from_vec(&bytes).unwrap()
}

async fn tcp_send(stream: &mut TcpStream, msg: &Message) {
    let bytes = msg.to_vec().unwrap();
    let mut frame = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&bytes);
    stream.write_all(&frame).await.unwrap();
}

async fn tcp_recv_raw(stream: &mut TcpStream) -> Vec<u8> {
    timeout(PATIENCE, async {
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    })
    .await
    .expect("no TCP answer")
}

async fn tcp_recv(stream: &mut TcpStream) -> Message {
    Message::from_vec(&tcp_recv_raw(stream).await).unwrap()
}

async fn tcp_exchange(addr: SocketAddr, msg: &Message) -> Message {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    tcp_send(&mut stream, msg).await;
    tcp_recv(&mut stream).await
}

fn a_addrs(msg: &Message) -> Vec<Ipv4Addr> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn soa_of(msg: &Message) -> (u32, SOA) {
    assert_eq!(msg.authorities.len(), 1, "authority: {:?}", msg.authorities);
    let record = &msg.authorities[0];
    match &record.data {
        RData::SOA(soa) => (record.ttl, soa.clone()),
        other => panic!("not an SOA: {other:?}"),
    }
}

#[tokio::test]
async fn a_record_over_udp_echoes_header_and_question() {
    let up = TestUpstream::start().await.unwrap();
    assert!(up.addr().ip().is_loopback());
    let q = query("A.Test.", RecordType::A, None);
    let resp = udp_exchange(up.addr(), &q).await;
    assert_eq!(resp.metadata.id, q.metadata.id);
    assert_eq!(resp.metadata.message_type, MessageType::Response);
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert!(resp.metadata.authoritative);
    assert!(resp.metadata.recursion_desired);
    assert!(!resp.metadata.recursion_available);
    assert!(!resp.metadata.truncation);
    assert!(resp.edns.is_none(), "no OPT without OPT in the query");
    assert_eq!(resp.queries.len(), 1);
    assert!(
        resp.queries[0].name().eq_case(q.queries[0].name()),
        "question case kept"
    );
    assert_eq!(a_addrs(&resp), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(resp.answers[0].ttl, 300);
}

#[tokio::test]
async fn aaaa_and_cname_chase() {
    let up = TestUpstream::start().await.unwrap();
    let resp = udp_exchange(up.addr(), &query("a.test.", RecordType::AAAA, None)).await;
    assert_eq!(resp.answers.len(), 1);
    assert_eq!(
        resp.answers[0].data,
        RData::AAAA(AAAA("2001:db8::1".parse().unwrap()))
    );

    let resp = udp_exchange(up.addr(), &query("alias.test.", RecordType::A, None)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert_eq!(resp.answers.len(), 2);
    assert_eq!(resp.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(resp.answers[1].name, Name::from_ascii("a.test.").unwrap());
    assert_eq!(a_addrs(&resp), vec![Ipv4Addr::new(192, 0, 2, 1)]);

    let resp = udp_exchange(up.addr(), &query("alias.test.", RecordType::CNAME, None)).await;
    assert_eq!(resp.answers.len(), 1);
    assert_eq!(resp.answers[0].record_type(), RecordType::CNAME);

    let resp = udp_exchange(up.addr(), &query("short.test.", RecordType::A, None)).await;
    assert_eq!(resp.answers[0].ttl, 1);
}

#[tokio::test]
async fn nxdomain_nodata_and_out_of_zone() {
    let up = TestUpstream::start().await.unwrap();

    let resp = udp_exchange(up.addr(), &query("nope.test.", RecordType::A, None)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::NXDomain);
    assert!(resp.metadata.authoritative);
    assert!(resp.answers.is_empty());
    let (ttl, soa) = soa_of(&resp);
    assert_eq!(ttl, 300);
    assert_eq!(soa.minimum, 60);
    assert_eq!(soa.serial, 1);
    assert_eq!(soa.mname, Name::from_ascii("ns.test.").unwrap());

    let resp = udp_exchange(up.addr(), &query("b.test.", RecordType::AAAA, None)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert!(resp.answers.is_empty());
    soa_of(&resp);

    let resp = tcp_exchange(up.addr(), &query("example.com.", RecordType::A, None)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::Refused);
    assert!(resp.answers.is_empty());
    assert!(resp.authorities.is_empty());
}

#[tokio::test]
async fn big_answer_truncated_over_udp_complete_over_tcp() {
    let up = TestUpstream::start().await.unwrap();
    let q = query("big.test.", RecordType::TXT, Some(1232));

    let resp = udp_exchange(up.addr(), &q).await;
    assert_eq!(resp.metadata.id, q.metadata.id);
    assert!(resp.metadata.truncation);
    assert!(resp.answers.is_empty());
    assert_eq!(resp.edns.as_ref().map(Edns::max_payload), Some(1232));

    let resp = udp_exchange(up.addr(), &query("big.test.", RecordType::TXT, None)).await;
    assert!(resp.metadata.truncation);
    assert!(resp.edns.is_none());

    let mut stream = TcpStream::connect(up.addr()).await.unwrap();
    tcp_send(&mut stream, &q).await;
    let raw = tcp_recv_raw(&mut stream).await;
    assert!(raw.len() > 2000, "answer is {} bytes", raw.len());
    let resp = Message::from_vec(&raw).unwrap();
    assert!(!resp.metadata.truncation);
    assert_eq!(resp.answers.len(), 40);
    assert_eq!(resp.edns.as_ref().map(Edns::max_payload), Some(1232));
}

#[tokio::test]
async fn counters_per_protocol() {
    let up = TestUpstream::start().await.unwrap();
    udp_exchange(up.addr(), &query("a.test.", RecordType::A, None)).await;
    udp_exchange(up.addr(), &query("A.TEST.", RecordType::AAAA, None)).await;
    let mut stream = TcpStream::connect(up.addr()).await.unwrap();
    tcp_send(&mut stream, &query("a.test.", RecordType::A, Some(1232))).await;
    tcp_recv(&mut stream).await;
    tcp_send(&mut stream, &query("b.test.", RecordType::A, Some(1232))).await;
    tcp_recv(&mut stream).await;

    assert_eq!(up.queries("a.test", Proto::Udp), 2);
    assert_eq!(up.queries("A.Test.", Proto::Udp), 2);
    assert_eq!(up.queries("a.test.", Proto::Tcp), 1);
    assert_eq!(up.queries("b.test", Proto::Tcp), 1);
    assert_eq!(up.queries("b.test", Proto::Udp), 0);
    assert_eq!(up.queries("nope.test", Proto::Udp), 0);
    assert_eq!(up.total_queries(), 4);
    assert_eq!(up.tcp_connections(), 1);
    let last = up.last_query().unwrap();
    assert_eq!(
        last.queries[0].name(),
        &Name::from_ascii("b.test.").unwrap()
    );
    assert_eq!(last.edns.as_ref().map(Edns::max_payload), Some(1232));

    up.reset_counters();
    assert_eq!(up.total_queries(), 0);
    assert_eq!(up.queries("a.test", Proto::Udp), 0);
    assert!(up.last_query().is_none());
}

#[tokio::test]
async fn added_records_are_served_case_insensitively() {
    let up = TestUpstream::start().await.unwrap();
    up.add_record("www.Example.test", RData::A(A::new(192, 0, 2, 9)), 42);
    up.add_record("outside.example.", RData::A(A::new(192, 0, 2, 10)), 42);
    let resp = udp_exchange(up.addr(), &query("WWW.example.TEST.", RecordType::A, None)).await;
    assert_eq!(a_addrs(&resp), vec![Ipv4Addr::new(192, 0, 2, 9)]);
    assert_eq!(resp.answers[0].ttl, 42);
    // "example.test." is now an empty non-terminal: NODATA, not NXDOMAIN.
    let resp = udp_exchange(up.addr(), &query("example.test.", RecordType::A, None)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    let resp = udp_exchange(up.addr(), &query("outside.example.", RecordType::A, None)).await;
    assert_eq!(a_addrs(&resp), vec![Ipv4Addr::new(192, 0, 2, 10)]);

    up.remove_records("www.example.test.");
    let resp = udp_exchange(up.addr(), &query("www.example.test.", RecordType::A, None)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn delay_delays() {
    let up = TestUpstream::start().await.unwrap();
    up.set_behavior("b.test", Behavior::Delay(Duration::from_millis(150)));
    let started = Instant::now();
    let resp = udp_exchange(up.addr(), &query("b.test.", RecordType::A, None)).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(a_addrs(&resp), vec![Ipv4Addr::new(192, 0, 2, 2)]);
    // Other names are not delayed.
    let started = Instant::now();
    udp_exchange(up.addr(), &query("a.test.", RecordType::A, None)).await;
    assert!(started.elapsed() < Duration::from_millis(150));
}

#[tokio::test]
async fn drop_never_answers_but_counts() {
    let up = TestUpstream::start().await.unwrap();
    up.set_default_behavior(Behavior::Drop);
    let sock = udp_client(up.addr()).await;
    sock.send(&query("a.test.", RecordType::A, None).to_vec().unwrap())
        .await
        .unwrap();
    assert!(udp_recv(&sock, Duration::from_millis(200)).await.is_none());
    assert_eq!(up.queries("a.test", Proto::Udp), 1);
}

#[tokio::test]
async fn servfail_refused_and_per_name_wins() {
    let up = TestUpstream::start().await.unwrap();
    up.set_default_behavior(Behavior::ServFail);
    up.set_behavior("b.test.", Behavior::Refused);
    up.set_behavior("short.test.", Behavior::Normal);
    let q = query("a.test.", RecordType::A, Some(1232));
    let resp = udp_exchange(up.addr(), &q).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(resp.metadata.id, q.metadata.id);
    assert!(resp.answers.is_empty());
    assert!(resp.edns.is_some());
    let resp = tcp_exchange(up.addr(), &query("b.test.", RecordType::A, None)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::Refused);
    let resp = udp_exchange(up.addr(), &query("short.test.", RecordType::A, None)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_addrs(&resp), vec![Ipv4Addr::new(192, 0, 2, 3)]);
    up.clear_behaviors();
    let resp = udp_exchange(up.addr(), &query("short.test.", RecordType::A, None)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn forge_first_sends_forgeries_before_the_real_answer() {
    let up = TestUpstream::start().await.unwrap();
    up.set_behavior("a.test.", Behavior::ForgeFirst);
    let q = query("a.test.", RecordType::A, None);
    let sock = udp_client(up.addr()).await;
    sock.send(&q.to_vec().unwrap()).await.unwrap();

    let mut datagrams = Vec::new();
    while let Some(bytes) = udp_recv(&sock, Duration::from_millis(300)).await {
        datagrams.push(bytes);
        if datagrams.len() == 5 {
            break;
        }
    }
    assert_eq!(datagrams.len(), 5, "4 forged + 1 real");
    let parsed: Vec<Option<Message>> = datagrams
        .iter()
        .map(|d| Message::from_vec(d).ok())
        .collect();

    let wrong_id = parsed[0].as_ref().unwrap();
    assert_ne!(wrong_id.metadata.id, q.metadata.id);
    assert_eq!(a_addrs(wrong_id), vec![Ipv4Addr::new(6, 6, 6, 6)]);
    assert_eq!(wrong_id.answers[0].ttl, 86_400);

    let wrong_name = parsed[1].as_ref().unwrap();
    assert_eq!(wrong_name.metadata.id, q.metadata.id);
    assert_eq!(
        wrong_name.queries[0].name(),
        &Name::from_ascii("forged.invalid.").unwrap()
    );
    assert_eq!(a_addrs(wrong_name), vec![Ipv4Addr::new(6, 6, 6, 6)]);

    let not_response = parsed[2].as_ref().unwrap();
    assert_eq!(not_response.metadata.id, q.metadata.id);
    assert_eq!(not_response.metadata.message_type, MessageType::Query);
    assert_eq!(a_addrs(not_response), vec![Ipv4Addr::new(6, 6, 6, 6)]);

    assert_eq!(datagrams[3].len(), 7);
    assert!(parsed[3].is_none(), "garbage must not parse");

    let real = parsed[4].as_ref().unwrap();
    assert_eq!(real.metadata.id, q.metadata.id);
    assert_eq!(real.metadata.message_type, MessageType::Response);
    assert_eq!(real.queries, q.queries);
    assert_eq!(a_addrs(real), vec![Ipv4Addr::new(192, 0, 2, 1)]);

    // Over TCP too: the real answer comes last.
    let mut stream = TcpStream::connect(up.addr()).await.unwrap();
    tcp_send(&mut stream, &q).await;
    for _ in 0..4 {
        tcp_recv_raw(&mut stream).await;
    }
    let real = tcp_recv(&mut stream).await;
    assert_eq!(a_addrs(&real), vec![Ipv4Addr::new(192, 0, 2, 1)]);
}

#[tokio::test]
async fn close_tcp_closes_the_connection() {
    let up = TestUpstream::start().await.unwrap();
    up.set_behavior("a.test.", Behavior::CloseTcp);
    let mut stream = TcpStream::connect(up.addr()).await.unwrap();
    tcp_send(&mut stream, &query("a.test.", RecordType::A, None)).await;
    let mut buf = [0u8; 16];
    let read = timeout(PATIENCE, stream.read(&mut buf)).await.unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "connection not closed: {read:?}"
    );
    assert_eq!(up.queries("a.test", Proto::Tcp), 1);

    // Over UDP it truncates, sending the client to its death over TCP.
    let resp = udp_exchange(up.addr(), &query("a.test.", RecordType::A, None)).await;
    assert!(resp.metadata.truncation);
    assert!(resp.answers.is_empty());

    // Other connections still work.
    let resp = tcp_exchange(up.addr(), &query("b.test.", RecordType::A, None)).await;
    assert_eq!(a_addrs(&resp), vec![Ipv4Addr::new(192, 0, 2, 2)]);
}

#[tokio::test]
async fn truncate_udp_and_truncate_always() {
    let up = TestUpstream::start().await.unwrap();
    up.set_behavior("a.test.", Behavior::TruncateUdp);
    up.set_behavior("b.test.", Behavior::TruncateAlways);

    let resp = udp_exchange(up.addr(), &query("a.test.", RecordType::A, None)).await;
    assert!(resp.metadata.truncation);
    assert!(resp.answers.is_empty());
    let resp = tcp_exchange(up.addr(), &query("a.test.", RecordType::A, None)).await;
    assert!(!resp.metadata.truncation);
    assert_eq!(a_addrs(&resp), vec![Ipv4Addr::new(192, 0, 2, 1)]);

    let resp = udp_exchange(up.addr(), &query("b.test.", RecordType::A, None)).await;
    assert!(resp.metadata.truncation);
    assert!(resp.answers.is_empty());
    let resp = tcp_exchange(up.addr(), &query("b.test.", RecordType::A, None)).await;
    assert!(resp.metadata.truncation);
    assert!(resp.answers.is_empty());
}

#[tokio::test]
async fn pipelined_tcp_answers_out_of_order() {
    let up = TestUpstream::start().await.unwrap();
    up.set_behavior("b.test.", Behavior::Delay(Duration::from_millis(200)));
    let slow = query("b.test.", RecordType::A, None);
    let fast = query("a.test.", RecordType::A, None);
    let mut stream = TcpStream::connect(up.addr()).await.unwrap();
    tcp_send(&mut stream, &slow).await;
    tcp_send(&mut stream, &fast).await;
    let first = tcp_recv(&mut stream).await;
    let second = tcp_recv(&mut stream).await;
    assert_eq!(first.metadata.id, fast.metadata.id);
    assert_eq!(a_addrs(&first), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(second.metadata.id, slow.metadata.id);
    assert_eq!(a_addrs(&second), vec![Ipv4Addr::new(192, 0, 2, 2)]);
    assert_eq!(up.tcp_connections(), 1);
}

#[tokio::test]
async fn malformed_queries_are_ignored() {
    let up = TestUpstream::start().await.unwrap();
    let sock = udp_client(up.addr()).await;
    for garbage in [
        &b""[..],
        b"\x01",
        b"\x12\x34\x01\x00\x00\x01\x00\x00",
        &[0xff; 100],
    ] {
        sock.send(garbage).await.unwrap();
    }
    // A response (QR=1) is not a query either.
    let mut response = query("a.test.", RecordType::A, None);
    response.metadata.message_type = MessageType::Response;
    sock.send(&response.to_vec().unwrap()).await.unwrap();
    assert!(udp_recv(&sock, Duration::from_millis(100)).await.is_none());

    let mut stream = TcpStream::connect(up.addr()).await.unwrap();
    stream.write_all(b"\x00\x03abc").await.unwrap();
    let q = query("a.test.", RecordType::A, None);
    tcp_send(&mut stream, &q).await;
    let resp = tcp_recv(&mut stream).await;
    assert_eq!(resp.metadata.id, q.metadata.id);

    let resp = udp_exchange(up.addr(), &q).await;
    assert_eq!(a_addrs(&resp), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(up.total_queries(), 2);
}

#[tokio::test]
async fn stop_closes_the_port() {
    let up = TestUpstream::start().await.unwrap();
    let addr = up.addr();
    let q = query("a.test.", RecordType::A, None);
    let sock = udp_client(addr).await;
    sock.send(&q.to_vec().unwrap()).await.unwrap();
    assert!(udp_recv(&sock, PATIENCE).await.is_some());
    let mut open = TcpStream::connect(addr).await.unwrap();
    tcp_send(&mut open, &q).await;
    tcp_recv(&mut open).await;

    up.stop();
    up.stop(); // idempotent
    assert!(up.is_stopped());

    sock.send(&q.to_vec().unwrap()).await.unwrap();
    let mut buf = [0u8; 512];
    let err = timeout(PATIENCE, sock.recv(&mut buf))
        .await
        .expect("recv should fail at once")
        .expect_err("no answer after stop");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);

    let err = TcpStream::connect(addr)
        .await
        .expect_err("connect after stop");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);

    let read = timeout(PATIENCE, open.read(&mut buf)).await.unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "open connection not closed: {read:?}"
    );
}

#[tokio::test]
async fn dropping_the_last_handle_stops() {
    let up = TestUpstream::start().await.unwrap();
    let addr = up.addr();
    let other = up.clone();
    drop(up);
    let resp = udp_exchange(addr, &query("a.test.", RecordType::A, None)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    drop(other);
    let err = TcpStream::connect(addr)
        .await
        .expect_err("connect after drop");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn start_on_checks_loopback() {
    let err = TestUpstream::start_on(Ipv4Addr::new(192, 0, 2, 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    let up = TestUpstream::start_on(Ipv4Addr::new(127, 0, 0, 2))
        .await
        .unwrap();
    assert_eq!(up.addr().ip(), Ipv4Addr::new(127, 0, 0, 2));
    let resp = tcp_exchange(up.addr(), &query("a.test.", RecordType::A, None)).await;
    assert_eq!(a_addrs(&resp), vec![Ipv4Addr::new(192, 0, 2, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_queries_on_multi_thread_runtime() {
    let up = TestUpstream::start().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let addr = up.addr();
        tasks.push(tokio::spawn(async move {
            let q = query("a.test.", RecordType::A, None);
            if i % 2 == 0 {
                udp_exchange(addr, &q).await
            } else {
                tcp_exchange(addr, &q).await
            }
        }));
    }
    for task in tasks {
        let resp = task.await.unwrap();
        assert_eq!(a_addrs(&resp), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    }
    assert_eq!(up.queries("a.test", Proto::Udp), 10);
    assert_eq!(up.queries("a.test", Proto::Tcp), 10);
    assert_eq!(up.tcp_connections(), 10);
}
