//! The sidecar over real UDP and TCP sockets on loopback, in-process and as the real binary.

use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::process::{Command, Stdio};
use std::time::Duration;

use dnscore::Resolver;
use dnscore::proto::op::{Message, ResponseCode};
use dnscore::proto::rr::rdata::A;
use dnscore::proto::rr::{RData, RecordType};
use dnscore_testkit::{Proto, TestUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;

fn query(id: u16, name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
    dnscore_testkit::query(id, name, rtype, edns.then_some(512))
}

struct Sidecar {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sidecar {
    async fn start(upstreams: &[SocketAddr]) -> Self {
        let (udp, tcp, addr) = dnscore_testkit::bind_udp_and_tcp().await;
        let resolver = Resolver::builder()
            .upstreams(upstreams.iter().copied())
            .attempt_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(dnscore_sidecar::serve(udp, tcp, resolver, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

async fn ask_udp(server: SocketAddr, msg: &[u8]) -> Option<Message> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(msg, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let len = tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(Message::from_vec(&buf[..len]).unwrap())
}

async fn read_frame(stream: &mut TcpStream) -> Message {
    let len = stream.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

#[tokio::test]
async fn serves_udp_with_truncation_and_tcp_with_pipelining() {
    let up = TestUpstream::start().await.unwrap();
    let sidecar = Sidecar::start(&[up.addr()]).await;

    let a = ask_udp(sidecar.addr, &query(1, "a.test.", RecordType::A, false))
        .await
        .unwrap();
    assert_eq!(a.metadata.id, 1);
    assert_eq!(a.answers.len(), 1);

    let big = ask_udp(sidecar.addr, &query(2, "big.test.", RecordType::TXT, false))
        .await
        .unwrap();
    assert!(big.metadata.truncation, "a 512-byte client gets TC=1");

    // Three queries in one write; the answers come back matched by ID.
    let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
    let mut frames = Vec::new();
    for (id, name, rtype) in [
        (10, "big.test.", RecordType::TXT),
        (11, "a.test.", RecordType::AAAA),
        (12, "nope.test.", RecordType::A),
    ] {
        let q = query(id, name, rtype, true);
        frames.extend_from_slice(&(q.len() as u16).to_be_bytes());
        frames.extend_from_slice(&q);
    }
    stream.write_all(&frames).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let m = read_frame(&mut stream).await;
        match m.metadata.id {
            10 => assert!(m.answers.len() >= 20 && !m.metadata.truncation),
            11 => assert_eq!(m.answers.len(), 1),
            12 => assert_eq!(m.metadata.response_code, ResponseCode::NXDomain),
            other => panic!("unexpected id {other}"),
        }
        seen.push(m.metadata.id);
    }
    seen.sort();
    assert_eq!(seen, vec![10, 11, 12]);
    assert_eq!(
        up.queries("big.test.", Proto::Tcp),
        1,
        "the TC answer was fetched whole once"
    );
    drop(stream);
    sidecar.stop().await;
}

#[tokio::test]
async fn bad_packets_are_dropped_or_answered_formerr_and_the_server_survives() {
    let up = TestUpstream::start().await.unwrap();
    let sidecar = Sidecar::start(&[up.addr()]).await;
    assert!(ask_udp(sidecar.addr, &[0x12, 0x34, 0x01]).await.is_none());
    let mut response = query(3, "a.test.", RecordType::A, false);
    response[2] |= 0x80;
    assert!(
        ask_udp(sidecar.addr, &response).await.is_none(),
        "QR=1 is never answered"
    );
    let mut two = query(4, "a.test.", RecordType::A, false);
    two[5] = 2;
    let formerr = ask_udp(sidecar.addr, &two).await.unwrap();
    assert_eq!(formerr.metadata.id, 4);
    assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);
    let ok = ask_udp(sidecar.addr, &query(5, "a.test.", RecordType::A, false))
        .await
        .unwrap();
    assert_eq!(ok.metadata.response_code, ResponseCode::NoError);
    assert_eq!(up.total_queries(), 1);
    sidecar.stop().await;
}

/// A burst larger than one `recvmmsg` batch, mixing hits, misses, packets to drop and
/// datagrams longer than any query: every client gets exactly the answer to its own query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_mixed_queries_answers_each_client_its_own() {
    let up = TestUpstream::start().await.unwrap();
    let sidecar = Sidecar::start(&[up.addr()]).await;
    assert!(
        ask_udp(sidecar.addr, &query(1, "a.test.", RecordType::A, false))
            .await
            .is_some()
    );

    const CLIENTS: u16 = 100; // about three batches of 32
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let sock = StdUdp::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        clients.push(sock);
    }
    let name = |i: u16| match i % 3 {
        0 => "a.test.".to_string(),     // a hit
        _ => format!("miss-{i}.test."), // a miss (NXDOMAIN upstream)
    };
    // Everything is sent before anything is read, so the server finds a full queue.
    for (i, sock) in (0..CLIENTS).zip(&clients) {
        if i % 10 == 0 {
            // A query padded past any real query's length: cut by the read, so dropped.
            let mut long = query(9999, "a.test.", RecordType::A, false);
            long.resize(5000, 0);
            sock.send_to(&long, sidecar.addr).unwrap();
        }
        if i % 7 == 0 {
            sock.send_to(&[0x12, 0x34, 0x01], sidecar.addr).unwrap(); // dropped
        }
        sock.send_to(
            &query(1000 + i, &name(i), RecordType::A, false),
            sidecar.addr,
        )
        .unwrap();
    }
    let clients = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 65535];
        for (i, sock) in (0..CLIENTS).zip(&clients) {
            let len = sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("client {i}: {e}"));
            let answer = Message::from_vec(&buf[..len]).unwrap();
            assert_eq!(
                answer.metadata.id,
                1000 + i,
                "client {i} got another's answer"
            );
            assert_eq!(answer.queries[0].name().to_ascii(), name(i));
            let rcode = answer.metadata.response_code;
            assert_eq!(
                rcode == ResponseCode::NoError,
                i % 3 == 0,
                "client {i}: {rcode}"
            );
        }
        clients
    })
    .await
    .unwrap();
    // Nothing else arrives: the dropped packets and the long datagrams got no answer.
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 65535];
        for sock in &clients {
            sock.set_nonblocking(true).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        for (i, sock) in clients.iter().enumerate() {
            assert!(
                sock.recv(&mut buf).is_err(),
                "client {i} got a second datagram"
            );
        }
    })
    .await
    .unwrap();
    sidecar.stop().await;
}

/// IPv6 pods (EKS IPv6 clusters): bound on `[::1]` the sidecar answers `::1` clients; bound
/// on `[::]` (dual stack) it answers a `127.0.0.1` client, whose address arrives v4-mapped.
#[tokio::test]
async fn serves_ipv6_and_v4_mapped_loopback_clients() {
    let up = TestUpstream::start().await.unwrap();
    for (listen, client) in [("[::1]:0", "[::1]:0"), ("[::]:0", "127.0.0.1:0")] {
        let udp = UdpSocket::bind(listen).await.unwrap();
        let port = udp.local_addr().unwrap().port();
        let tcp = TcpListener::bind(udp.local_addr().unwrap()).await.unwrap();
        let resolver = Resolver::builder().upstreams([up.addr()]).build().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(dnscore_sidecar::serve(udp, tcp, resolver, async {
            let _ = stopped.await;
        }));
        let sock = UdpSocket::bind(client).await.unwrap();
        let server: SocketAddr = if client.starts_with('[') {
            format!("[::1]:{port}").parse().unwrap()
        } else {
            format!("127.0.0.1:{port}").parse().unwrap()
        };
        let mut buf = vec![0u8; 4096];
        for id in [7, 8] {
            // The first is a miss (answered by its task), the second a hit (by the batch).
            sock.send_to(&query(id, "a.test.", RecordType::A, false), server)
                .await
                .unwrap();
            let (len, from) =
                tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("{listen} gave {client} no answer"))
                    .unwrap();
            assert_eq!(from.port(), port);
            let answer = Message::from_vec(&buf[..len]).unwrap();
            assert_eq!(answer.metadata.id, id);
            assert_eq!(answer.answers.len(), 1, "{listen}, query {id}");
        }
        let _ = stop.send(());
        task.await.unwrap();
    }
    assert_eq!(up.total_queries(), 2, "one miss per listener");
}

/// A cache hit answered by a UDP receive thread (a plain thread, not a runtime task) near
/// the end of its TTL still starts the resolver's background refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_hits_near_the_end_of_the_ttl_are_prefetched() {
    let up = TestUpstream::start().await.unwrap();
    up.add_record("pf.test.", RData::A(A::new(192, 0, 2, 77)), 2);
    let sidecar = Sidecar::start(&[up.addr()]).await;
    assert!(
        ask_udp(sidecar.addr, &query(1, "pf.test.", RecordType::A, false))
            .await
            .is_some()
    );
    // In the last tenth of the 2 s TTL.
    tokio::time::sleep(Duration::from_millis(1850)).await;
    let hit = ask_udp(sidecar.addr, &query(2, "pf.test.", RecordType::A, false))
        .await
        .unwrap();
    assert_eq!(hit.answers.len(), 1);
    for _ in 0..100 {
        if up.queries("pf.test.", Proto::Udp) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        up.queries("pf.test.", Proto::Udp),
        2,
        "refreshed in the background"
    );
    sidecar.stop().await;
}

/// `dig` falls back to TCP on TC=1, as glibc does; the sidecar must serve both legs.
#[tokio::test]
async fn dig_gets_the_whole_answer_through_tcp_fallback() {
    if Command::new("dig").arg("-v").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install dig (dnsutils)"
        );
        eprintln!("skipped: dig is not installed (apt-get install dnsutils)");
        return;
    }
    let up = TestUpstream::start().await.unwrap();
    let sidecar = Sidecar::start(&[up.addr()]).await;
    let port = sidecar.addr.port().to_string();
    let out = tokio::process::Command::new("dig")
        .args([
            "+time=2",
            "+tries=1",
            "+noedns",
            "-p",
            &port,
            "@127.0.0.1",
            "big.test",
            "TXT",
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("status: NOERROR"), "{text}");
    assert!(text.contains("Truncated, retrying in TCP mode"), "{text}");
    let txt_lines = text.lines().filter(|l| l.contains("\tTXT\t")).count();
    assert!(txt_lines >= 20, "{text}");
    sidecar.stop().await;
}

fn free_port() -> u16 {
    // UDP and TCP share the number; the sidecar binds both.
    loop {
        let udp = StdUdp::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The real binary on a free loopback port with `args` after its listen, upstream,
/// metrics and lameduck flags; waits until it answers `a.test.`.
async fn spawn_binary(up: &TestUpstream, args: &[&str]) -> (tokio::process::Child, SocketAddr) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dnscore-sidecar"))
        .args(["--listen", &listen, "--upstream", &up.addr().to_string()])
        .args(["--metrics-listen", "127.0.0.1:0", "--lameduck", "0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let server: SocketAddr = listen.parse().unwrap();
    for _ in 0..50 {
        if ask_udp(server, &query(1, "a.test.", RecordType::A, false))
            .await
            .is_some()
        {
            return (child, server);
        }
    }
    panic!("the sidecar does not answer");
}

#[tokio::test]
async fn ttl_ceilings_from_the_command_line_hold_for_answers_and_nxdomain() {
    let up = TestUpstream::start().await.unwrap();
    up.add_record("long.test.", RData::A(A::new(10, 0, 0, 7)), 300);
    let args = ["--max-ttl", "30s", "--negative-max-ttl", "5s"];
    let (_child, server) = spawn_binary(&up, &args).await;
    let m = ask_udp(server, &query(2, "long.test.", RecordType::A, false))
        .await
        .expect("answered");
    assert_eq!(m.answers.len(), 1);
    assert!(
        m.answers[0].ttl <= 30,
        "TTL {} over --max-ttl",
        m.answers[0].ttl
    );
    // The zone's SOA says 60 s for negative answers; the ceiling says 5.
    let nx = ask_udp(server, &query(3, "nowhere.test.", RecordType::A, false))
        .await
        .expect("answered");
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    let soa = nx
        .authorities
        .first()
        .expect("an SOA in the authority section");
    assert!(
        soa.ttl <= 5,
        "negative TTL {} over --negative-max-ttl",
        soa.ttl
    );
    // Cached: asked again, the upstream is not.
    let before = up.total_queries();
    ask_udp(server, &query(4, "nowhere.test.", RecordType::A, false)).await;
    assert_eq!(up.total_queries(), before);
}

#[tokio::test]
async fn the_binary_serves_and_exits_cleanly_on_sigterm() {
    let up = TestUpstream::start().await.unwrap();
    let (mut child, server) = spawn_binary(&up, &[]).await;
    let m = ask_udp(server, &query(1, "a.test.", RecordType::A, false))
        .await
        .expect("the sidecar answers");
    assert_eq!(m.answers.len(), 1);
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn the_binary_refuses_to_forward_to_itself() {
    let dir = std::env::temp_dir().join(format!("dnscore-sidecar-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("resolv.conf");
    std::fs::write(
        &conf,
        "search default.svc.cluster.local\nnameserver 127.0.0.1\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dnscore-sidecar"))
        .args(["--listen", "127.0.0.1:53", "--resolv-conf"])
        .arg(&conf)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loop") && err.contains("--upstream"), "{err}");
}

/// At most MAX_TCP_CONNECTIONS clients are served at once; the next waits until one leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connection_limit_holds() {
    let up = TestUpstream::start().await.unwrap();
    let (udp, tcp, addr) = dnscore_testkit::bind_udp_and_tcp().await;
    let resolver = Resolver::builder().upstream(up.addr()).build().unwrap();
    let ctx = dnscore_sidecar::Context::new(resolver);
    let metrics = std::sync::Arc::clone(&ctx.metrics);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(dnscore_sidecar::serve_with(vec![udp], tcp, ctx, async {
        let _ = stopped.await;
    }));
    let mut held = Vec::new();
    for _ in 0..dnscore_sidecar::MAX_TCP_CONNECTIONS {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let q = query(7, "a.test.", RecordType::A, false);
    let mut frame = (q.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    // Wait until the server has taken all the allowed connections.
    for _ in 0..100 {
        if metrics
            .tcp_connections
            .load(std::sync::atomic::Ordering::Relaxed) as usize
            == dnscore_sidecar::MAX_TCP_CONNECTIONS
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut extra = TcpStream::connect(addr).await.unwrap();
    extra.write_all(&frame).await.unwrap();
    let mut len = [0u8; 2];
    let early = tokio::time::timeout(Duration::from_millis(300), extra.read_exact(&mut len)).await;
    assert!(
        early.is_err(),
        "one connection over the limit is not served"
    );
    assert_eq!(
        metrics
            .tcp_connections
            .load(std::sync::atomic::Ordering::Relaxed) as usize,
        dnscore_sidecar::MAX_TCP_CONNECTIONS
    );
    held.pop();
    let late = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut extra)).await;
    assert_eq!(late.expect("served once a slot frees").metadata.id, 7);
    drop((held, extra));
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_drops_a_client_over_its_budget() {
    let up = TestUpstream::start().await.unwrap();
    let (udp, tcp, addr) = dnscore_testkit::bind_udp_and_tcp().await;
    let resolver = Resolver::builder().upstream(up.addr()).build().unwrap();
    let mut ctx = dnscore_sidecar::Context::new(resolver.clone());
    ctx.rate_limit = Some(5);
    let metrics = std::sync::Arc::clone(&ctx.metrics);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(dnscore_sidecar::serve_with(vec![udp], tcp, ctx, async {
        let _ = stopped.await;
    }));
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for id in 0..20 {
        client
            .send_to(&query(id, "a.test.", RecordType::A, false), addr)
            .await
            .unwrap();
    }
    let mut answered = 0;
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), client.recv(&mut buf)).await
    {
        answered += 1;
    }
    let limited = metrics
        .rate_limited
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (5..=7).contains(&answered),
        "a burst of 5 (and refill): {answered}"
    );
    assert_eq!(limited as usize + answered, 20);
    let text = dnscore_sidecar::metrics::render(&metrics, &resolver);
    assert!(
        text.contains(&format!("dnscore_rate_limited_total {limited}\n")),
        "/metrics shows the drops"
    );
    let _ = stop.send(());
    server.await.unwrap();
}

/// Misses keep the promise hits keep: 2,000 lookups of distinct names through the sidecar
/// (UDP clients, 50 at a time, and some over TCP) reach the upstream from a handful of
/// sticky sockets, so they cost the node a handful of conntrack entries, not one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_names_through_the_sidecar_use_few_upstream_ports() {
    let up = TestUpstream::start().await.unwrap();
    for i in 0..2000 {
        up.add_record(&format!("u{i}.test."), RData::A(A::new(192, 0, 2, 9)), 300);
    }
    let sidecar = Sidecar::start(&[up.addr()]).await;
    for batch in 0..40u16 {
        let asks: Vec<_> = (0..50u16)
            .map(|i| {
                let n = batch * 50 + i;
                let server = sidecar.addr;
                tokio::spawn(async move {
                    let msg = query(n, &format!("u{n}.test."), RecordType::A, false);
                    if n % 10 == 0 {
                        let mut tcp = TcpStream::connect(server).await.unwrap();
                        let mut frame = (msg.len() as u16).to_be_bytes().to_vec();
                        frame.extend_from_slice(&msg);
                        tcp.write_all(&frame).await.unwrap();
                        return Some(read_frame(&mut tcp).await);
                    }
                    for _ in 0..3 {
                        if let Some(answer) = ask_udp(server, &msg).await {
                            return Some(answer);
                        }
                    }
                    None
                })
            })
            .collect();
        for ask in asks {
            let answer = ask.await.unwrap().expect("answered");
            assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
            assert_eq!(answer.answers.len(), 1);
        }
    }
    let ports = up.source_ports();
    eprintln!(
        "2000 distinct names through the sidecar: {} upstream source ports",
        ports.len()
    );
    assert!(ports.len() <= 64, "{} ports", ports.len());
    assert!((1..=2).contains(&up.queries("u1999.test.", Proto::Udp)));
    sidecar.stop().await;
}
