//! An upstream that misbehaves at the packet level, hand-written on loopback (UDP and TCP on
//! the same port): empty datagrams, an answer from another port, a truncated answer that
//! carries part of the records, pipelined TCP answers in the reverse order. Each time the
//! resolver must take the real answer, and only that.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dnscore::Resolver;
use dnscore::proto::op::Message;
use dnscore::proto::rr::rdata::A;
use dnscore::proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

fn query(id: u16, name: &str) -> Vec<u8> {
    dnscore_testkit::query(id, name, RecordType::A, None)
}

/// The answer to `query` with one A record per address, TC set if `truncated`.
fn answer(query: &[u8], addrs: &[[u8; 4]], truncated: bool) -> Vec<u8> {
    let q = Message::from_vec(query).unwrap();
    let mut m = Message::response(q.metadata.id, q.metadata.op_code);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.truncation = truncated;
    m.add_queries(q.queries.iter().cloned());
    for a in addrs {
        m.add_answer(Record::from_rdata(
            q.queries[0].name().clone(),
            60,
            RData::A(A::from(Ipv4Addr::from(*a))),
        ));
    }
    m.to_vec().unwrap()
}

fn addrs_of(msg: &[u8]) -> Vec<IpAddr> {
    let m = Message::from_vec(msg).unwrap();
    m.answers.iter().filter_map(|r| r.data.ip_addr()).collect()
}

fn resolver(upstream: SocketAddr) -> Resolver {
    Resolver::builder()
        .upstream(upstream)
        .tcp_connections(1)
        .build()
        .unwrap()
}

/// Before the real answer, the upstream sends an empty datagram, and a forged answer (right
/// ID and question, address 6.6.6.6) from another port of the same address. The connected
/// socket never sees the forgery; the empty datagram is dropped; the real answer is taken
/// at once, not after a timeout.
#[tokio::test]
async fn empty_datagrams_and_answers_from_another_port_are_ignored() {
    let (udp, _tcp, addr) = dnscore_testkit::bind_udp_and_tcp().await;
    let forger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&asked);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((len, peer)) = udp.recv_from(&mut buf).await {
            count.fetch_add(1, Ordering::Relaxed);
            let q = buf[..len].to_vec();
            forger
                .send_to(&answer(&q, &[[6, 6, 6, 6]], false), peer)
                .await
                .unwrap();
            udp.send_to(&[], peer).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            udp.send_to(&answer(&q, &[[192, 0, 2, 1]], false), peer)
                .await
                .unwrap();
        }
    });
    let r = resolver(addr);
    let started = Instant::now();
    let reply = r.resolve(&query(7, "a.example.")).await.unwrap();
    let took = started.elapsed();
    assert_eq!(addrs_of(&reply), vec![IpAddr::from([192, 0, 2, 1])]);
    // The first attempt's timeout starts at 400 ms: an answer well before it is the one
    // that came 20 ms after the noise, on the first attempt.
    assert!(took < Duration::from_millis(300), "took {took:?}");
    // Neither the empty datagram nor the forgery cost the attempt: no second query.
    assert_eq!(asked.load(Ordering::Relaxed), 1);
    let cached = r.resolve(&query(8, "a.example.")).await.unwrap();
    assert_eq!(addrs_of(&cached), vec![IpAddr::from([192, 0, 2, 1])]);
}

/// Over UDP the upstream answers with TC=1 and the first of three records; over TCP with
/// all three. The client gets all three, and so does the next client, from the cache: the
/// partial answer was never cached.
#[tokio::test]
async fn a_truncated_answer_with_some_records_is_asked_again_over_tcp() {
    let (udp, tcp, addr) = dnscore_testkit::bind_udp_and_tcp().await;
    let all = [[192, 0, 2, 1], [192, 0, 2, 2], [192, 0, 2, 3]];
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((len, peer)) = udp.recv_from(&mut buf).await {
            let partial = answer(&buf[..len], &all[..1], true);
            udp.send_to(&partial, peer).await.unwrap();
        }
    });
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            tokio::spawn(async move {
                while let Ok(len) = stream.read_u16().await {
                    let mut q = vec![0u8; usize::from(len)];
                    stream.read_exact(&mut q).await.unwrap();
                    let a = answer(&q, &all, false);
                    stream.write_u16(a.len() as u16).await.unwrap();
                    stream.write_all(&a).await.unwrap();
                }
            });
        }
    });
    let r = resolver(addr);
    let want: Vec<IpAddr> = all.iter().map(|&a| IpAddr::from(a)).collect();
    let reply = r.resolve(&query(1, "three.example.")).await.unwrap();
    assert!(!Message::from_vec(&reply).unwrap().metadata.truncation);
    assert_eq!(addrs_of(&reply), want);
    let cached = r.resolve(&query(2, "three.example.")).await.unwrap();
    assert_eq!(addrs_of(&cached), want);
}

/// Two queries pipelined on the one TCP connection are answered in the reverse order; each
/// client gets its own answer (matched by ID and question, RFC 7766 §7).
#[tokio::test]
async fn pipelined_tcp_answers_out_of_order_reach_their_own_queries() {
    let (udp, tcp, addr) = dnscore_testkit::bind_udp_and_tcp().await;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((len, peer)) = udp.recv_from(&mut buf).await {
            let tc = answer(&buf[..len], &[], true);
            udp.send_to(&tc, peer).await.unwrap();
        }
    });
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            tokio::spawn(async move {
                // Read two queries, then answer the second first.
                let mut queries = Vec::new();
                while queries.len() < 2 {
                    let Ok(len) = stream.read_u16().await else {
                        return;
                    };
                    let mut q = vec![0u8; usize::from(len)];
                    stream.read_exact(&mut q).await.unwrap();
                    queries.push(q);
                }
                for q in queries.iter().rev() {
                    let name = Message::from_vec(q).unwrap().queries[0].name().to_ascii();
                    let ip = if name.starts_with("one.") {
                        [192, 0, 2, 1]
                    } else {
                        [192, 0, 2, 2]
                    };
                    let a = answer(q, &[ip], false);
                    stream.write_u16(a.len() as u16).await.unwrap();
                    stream.write_all(&a).await.unwrap();
                }
            });
        }
    });
    let r = resolver(addr);
    let (q1, q2) = (query(1, "one.example."), query(2, "two.example."));
    let (one, two) = tokio::join!(r.resolve(&q1), r.resolve(&q2));
    assert_eq!(addrs_of(&one.unwrap()), vec![IpAddr::from([192, 0, 2, 1])]);
    assert_eq!(addrs_of(&two.unwrap()), vec![IpAddr::from([192, 0, 2, 2])]);
}
