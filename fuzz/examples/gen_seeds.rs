//! Writes the seed corpora under `fuzz/seeds/<target>/` (checked in; rerun after changing
//! the fixture): `cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds`.
//!
//! Upstream answers are real ones, from the test upstream on 127.0.0.1, to the exact query
//! dnscore sends, plus a few derived failure answers.

use std::fs;
use std::path::{Path, PathBuf};

use dnscore::fuzzing::upstream_query_for;
use dnscore_fuzz::{answer_target_queries, client_query, fixture, warm_queries};
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let f = fixture();

    let mut server = warm_queries();
    server.extend([
        client_query(7, "fz.test.", RecordType::TXT, None, false), // over 512: TC=1 over UDP
        client_query(8, "FZ.Test.", RecordType::A, Some((4096, true)), false),
        client_query(9, "cn.test.", RecordType::A, None, true),
        client_query(10, "a.test.", RecordType::A, Some((1232, false)), false), // a miss
    ]);
    let mut response = server[0].clone();
    response[2] |= 0x80; // QR=1: dropped
    let mut notimp = server[1].clone();
    notimp[2] |= 0x28; // opcode 5 (UPDATE)
    let mut two_questions = server[2].clone();
    two_questions[5] = 2;
    server.extend([response, notimp, two_questions, vec![0x12, 0x34, 1, 0, 0]]);
    write_all(&root.join("server_query"), &server);

    let frame = |q: &[u8]| {
        let mut v = (q.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(q);
        v
    };
    let w = warm_queries();
    let miss = client_query(0x4242, "b.test.", RecordType::A, Some((1232, false)), false);
    let refused = client_query(0x4343, "example.invalid.", RecordType::A, None, false);
    let streams = vec![
        frame(&w[0]),
        [frame(&w[0]), frame(&w[4]), frame(&w[7])].concat(),
        [frame(&miss), frame(&w[1]), frame(&refused)].concat(),
        [frame(&w[2]), frame(&w[3])[..9].to_vec()].concat(), // a partial frame at the end
        [frame(&w[5]), vec![0, 0], frame(&w[6])].concat(),   // a zero-length frame
    ];
    write_all(&root.join("tcp_stream"), &streams);

    let mut answers = Vec::new();
    let mut udp_answers = Vec::new();
    for (i, client) in answer_target_queries().iter().enumerate() {
        let sent = upstream_query_for(client).expect("the fixed queries are answerable");
        let udp = f.rt.block_on(ask_udp(f.upstream.addr(), &sent));
        udp_answers.push(udp.clone());
        let tcp = f.rt.block_on(ask_tcp(f.upstream.addr(), &sent));
        for answer in [udp, tcp.clone()] {
            answers.push([&[i as u8][..], &answer].concat());
        }
        // The same answer as SERVFAIL and as REFUSED, and with TC=1.
        for (byte, set) in [(3, 0x02u8), (3, 0x05), (2, 0x02)] {
            let mut bad = tcp.clone();
            if byte == 3 {
                bad[3] = (bad[3] & 0xf0) | set;
            } else {
                bad[2] |= set;
            }
            answers.push([&[i as u8][..], &bad].concat());
        }
    }
    write_all(&root.join("upstream_answer"), &answers);

    // pooled_receive scripts (see dnscore::fuzzing::pooled_receive): 0 = a datagram (two
    // length bytes, top bit: patch its ID to that of the query numbered by the next byte),
    // 1 = the last one again, 2 = a caller gives up query n, 3 = the socket closes.
    let datagram = |target: Option<u8>, bytes: &[u8]| {
        let len = bytes.len() as u16 | if target.is_some() { 0x8000 } else { 0 };
        let mut op = vec![0];
        op.extend_from_slice(&len.to_be_bytes());
        op.extend(target);
        op.extend_from_slice(bytes);
        op
    };
    let every_answer: Vec<u8> = udp_answers
        .iter()
        .enumerate()
        .flat_map(|(i, a)| datagram(Some(i as u8), a))
        .collect();
    let duplicate_late_closed = [
        datagram(Some(0), &udp_answers[0]),
        vec![1],
        vec![2, 2],
        datagram(Some(2), &udp_answers[2]),
        vec![3],
        datagram(Some(4), &udp_answers[4]),
    ]
    .concat();
    let stray_burst: Vec<u8> = (0..9u8)
        .flat_map(|i| datagram(None, &[i, i, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0]))
        .collect();
    let mismatched = [
        datagram(Some(1), &udp_answers[3]),
        datagram(Some(0), &udp_answers[0][..20]),
    ]
    .concat();
    write_all(
        &root.join("pooled_receive"),
        &[every_answer, duplicate_late_closed, stray_burst, mismatched],
    );
}

async fn ask_udp(upstream: std::net::SocketAddr, q: &[u8]) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(upstream).await.unwrap();
    socket.send(q).await.unwrap();
    let mut buf = vec![0; 65_535];
    let n = socket.recv(&mut buf).await.unwrap();
    buf.truncate(n);
    buf
}

async fn ask_tcp(upstream: std::net::SocketAddr, q: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(upstream).await.unwrap();
    s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(q).await.unwrap();
    let len = s.read_u16().await.unwrap();
    let mut buf = vec![0; usize::from(len)];
    s.read_exact(&mut buf).await.unwrap();
    buf
}

fn write_all(dir: &Path, seeds: &[Vec<u8>]) {
    fs::create_dir_all(dir).unwrap();
    for (i, seed) in seeds.iter().enumerate() {
        fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
}
