//! dnscore in front of a real authoritative server, Debian's knotd, on loopback: a peer that
//! compresses names its own way, orders records its own way and truncates for real. What a
//! client gets through dnscore must match what knotd says directly.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dnscore::proto::op::{Message, ResponseCode};
use dnscore::proto::rr::RecordType;
use dnscore::{Resolver, Transport};

const ZONE: &str = r#"$ORIGIN cluster.local.
$TTL 30
@ SOA ns1.cluster.local. hostmaster.cluster.local. 1 3600 600 86400 10
@ NS ns1
ns1 A 10.100.0.10
kube-dns.kube-system.svc A 10.100.0.10
my-svc.default.svc A 10.0.0.1
my-svc.default.svc A 10.0.0.2
my-svc.default.svc AAAA fd00::1
alias.default.svc CNAME my-svc.default.svc
_http._tcp.my-svc.default.svc SRV 0 50 80 my-svc.default.svc
"#;

/// A knotd process serving [`ZONE`] (plus a TXT set too large for UDP) on a loopback port.
struct Knot {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Knot {
    fn start() -> Option<Self> {
        if Command::new("knotd").arg("-V").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must install knotd (knot)"
            );
            eprintln!("skipped: knotd is not installed (apt-get install knot)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("dnscore-knot-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let mut zone = ZONE.to_string();
        for i in 0..30 {
            zone.push_str(&format!("big.default.svc TXT \"{i:0>60}\"\n"));
        }
        std::fs::write(dir.join("cluster.local.zone"), zone).unwrap();
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let conf = format!(
            "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\n    udp-workers: 1\n    \
             tcp-workers: 1\n    background-workers: 1\nlog:\n  - target: stderr\n    any: warning\n\
             database:\n    storage: \"{d}/db\"\ntemplate:\n  - id: default\n    storage: \"{d}\"\n    \
             zonefile-sync: -1\n    zonefile-load: whole\n    journal-content: none\n\
             zone:\n  - domain: cluster.local.\n    file: cluster.local.zone\n",
            d = dir.display()
        );
        std::fs::write(dir.join("knot.conf"), conf).unwrap();
        let child = Command::new("knotd")
            .arg("-c")
            .arg(dir.join("knot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let knot = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if knot
                .ask_udp(&query("ns1.cluster.local.", RecordType::A))
                .is_some()
            {
                return Some(knot);
            }
        }
        panic!("knotd did not come up on {addr}");
    }

    /// Asks knotd directly over UDP (EDNS 1232), falling back to TCP on TC=1 as a stub would.
    fn ask(&self, msg: &[u8]) -> Message {
        let reply = self.ask_udp(msg).expect("knotd answers");
        if !reply.metadata.truncation {
            return reply;
        }
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.addr).unwrap();
        let mut frame = (msg.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(msg);
        stream.write_all(&frame).unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).unwrap();
        Message::from_vec(&buf).unwrap()
    }

    fn ask_udp(&self, msg: &[u8]) -> Option<Message> {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        sock.send_to(msg, self.addr).ok()?;
        let mut buf = vec![0u8; 65535];
        let len = sock.recv(&mut buf).ok()?;
        Message::from_vec(&buf[..len]).ok()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn query(name: &str, rtype: RecordType) -> Vec<u8> {
    dnscore_testkit::query(0x5151, name, rtype, Some(1232))
}

/// The answer section as comparable text: owner (lower-cased), type and data, sorted.
fn records(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .map(|r| format!("{} {} {}", r.name.to_lowercase(), r.record_type(), r.data))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn answers_through_dnscore_match_knotd() {
    let Some(knot) = Knot::start() else { return };
    // The answers as knotd gives them: no TTL floor for the cluster's names (below: with).
    let resolver = Resolver::builder()
        .upstream(knot.addr)
        .cluster_min_ttl(0)
        .build()
        .unwrap();
    let cases = [
        ("my-svc.default.svc.cluster.local.", RecordType::A),
        ("My-Svc.Default.SVC.cluster.local.", RecordType::AAAA),
        ("alias.default.svc.cluster.local.", RecordType::A),
        (
            "_http._tcp.my-svc.default.svc.cluster.local.",
            RecordType::SRV,
        ),
        ("kube-dns.kube-system.svc.cluster.local.", RecordType::A),
        ("cluster.local.", RecordType::NS),
        ("cluster.local.", RecordType::SOA),
        ("nope.default.svc.cluster.local.", RecordType::A),
        ("kube-dns.kube-system.svc.cluster.local.", RecordType::AAAA),
        ("big.default.svc.cluster.local.", RecordType::TXT),
    ];
    for (name, rtype) in cases {
        let q = query(name, rtype);
        let direct = knot.ask(&q);
        assert!(
            !direct.answers.is_empty() || !direct.authorities.is_empty(),
            "{name}: knotd answered"
        );
        // Twice: the miss path, then the cache-hit path.
        for round in ["miss", "hit"] {
            let via = Message::from_vec(&resolver.resolve(&q).await.unwrap()).unwrap();
            let what = format!("{name} {rtype} ({round})");
            assert_eq!(via.metadata.id, 0x5151, "{what}");
            assert_eq!(
                via.metadata.response_code, direct.metadata.response_code,
                "{what}"
            );
            assert_eq!(records(&via), records(&direct), "{what}");
            assert_eq!(
                via.queries, direct.queries,
                "{what}: the question is echoed"
            );
            let soa = |m: &Message| {
                m.authorities
                    .iter()
                    .any(|r| r.record_type() == RecordType::SOA)
            };
            assert_eq!(
                soa(&via),
                soa(&direct),
                "{what}: negative answers keep their SOA"
            );
            for (a, b) in via.answers.iter().zip(direct.answers.iter()) {
                assert!(a.ttl <= b.ttl, "{what}: TTLs never grow");
            }
        }
    }
    // The negative answer's TTLs: SOA MINIMUM without a floor; by default the cluster's
    // names are kept at least 30 s, NXDOMAINs too.
    let floored = Resolver::builder().upstream(knot.addr).build().unwrap();
    for (r, ttls, what) in [
        (&resolver, 0..=10, "negative TTL = SOA MINIMUM"),
        (&floored, 29..=30, "the cluster floor"),
    ] {
        let q = query("nope.default.svc.cluster.local.", RecordType::A);
        let nx = Message::from_vec(&r.resolve(&q).await.unwrap()).unwrap();
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(
            nx.authorities.iter().all(|a| ttls.contains(&a.ttl)),
            "{what}: {:?}",
            nx.authorities
        );
    }

    // knotd's large answer reached dnscore over TCP; a 1232-byte UDP client gets TC=1.
    let udp = resolver
        .resolve_with(
            &query("big.default.svc.cluster.local.", RecordType::TXT),
            Transport::Udp,
        )
        .await
        .unwrap();
    let udp = Message::from_vec(&udp).unwrap();
    assert!(udp.metadata.truncation);
    assert!(udp.answers.is_empty());
}
