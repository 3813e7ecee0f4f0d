//! Regressions found by the fuzz targets in `fuzz/`, replayed through the public API against
//! a hand-written upstream on loopback that sends exactly the bytes that broke.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dnscore::Resolver;
use dnscore::proto::op::{Message, MessageType, OpCode, Query};
use dnscore::proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;

/// The question section of a query (uncompressed, as clients send it).
fn question_end(query: &[u8]) -> usize {
    let mut pos = 12;
    while query[pos] != 0 {
        pos += 1 + usize::from(query[pos]);
    }
    pos + 5
}

/// The start of an answer to `query`: its ID, QR AA RD (RA=0: offset 3 is 0x00), NOERROR,
/// one question and one answer, `additional` additional records, and the question.
fn answer_head(query: &[u8], additional: u8) -> Vec<u8> {
    let mut r = query[..2].to_vec();
    r.extend_from_slice(&[0x85, 0x00, 0, 1, 0, 1, 0, 0, 0, additional]);
    r.extend_from_slice(&query[12..question_end(query)]);
    r
}

/// Asks `alias.test. A` of a resolver on `upstream`; the client's answer must parse, and the
/// upstream must have sent its crafted answer (else the test proved nothing).
async fn answer_must_parse((upstream, answered): (std::net::SocketAddr, Arc<AtomicUsize>)) {
    let resolver = Resolver::builder()
        .upstream(upstream)
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let mut q = Message::new(0x4242, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(
        Name::from_str("alias.test.").unwrap(),
        RecordType::A,
    ));
    let answer = resolver.resolve(&q.to_vec().unwrap()).await.unwrap();
    // Whatever dnscore does with such an answer (reject it: SERVFAIL; or rewrite the
    // pointer), the client must get a message it can read.
    if let Err(err) = Message::from_vec(&answer) {
        panic!("the client's answer does not parse ({err}): {answer:02x?}");
    }
    assert!(
        answered.load(Ordering::Relaxed) >= 1,
        "the scripted upstream sent its answer"
    );
}

/// An upstream on 127.0.0.1 that answers every UDP query with `answer(query)`, and counts
/// the answers it sent (an assertion failing inside `answer` sends none).
async fn scripted_upstream(
    answer: fn(&[u8]) -> Vec<u8>,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&answered);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
            if socket.send_to(&answer(&buf[..len]), peer).await.is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (addr, answered)
}

/// Found by `fuzz/fuzz_targets/upstream_answer.rs` (input kept as
/// `fuzz/seeds/upstream_answer/regress-header-pointer-in-mx-rdata`): a compression pointer
/// into the header (offset < 12) in an upstream record was passed through to the client.
/// dnscore copies records verbatim and writes its own header (the client's ID, RA=1, ...),
/// so the name the pointer reaches changes: here the upstream's CNAME target is the root
/// (offset 3 = flags low byte 0x00), and in the client's answer offset 3 holds 0x80 (RA),
/// which is no label at all. The upstream's message parses; the client's did not.
/// Fixed: such an answer is malformed (`wire::skip_name` refuses pointers into the header,
/// and the names in the RDATA of the types that carry them are checked), so it is dropped
/// and the client gets SERVFAIL at the deadline.
#[tokio::test]
async fn pointer_into_the_header_is_not_passed_through() {
    let upstream = scripted_upstream(|query| {
        let mut r = Vec::new();
        r.extend_from_slice(&query[..2]); // ID
        r.extend_from_slice(&[0x85, 0x00]); // QR AA RD, RA=0, NOERROR: offset 3 is 0x00
        r.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0]); // QD=1 AN=1 NS=0 AR=0
        r.extend_from_slice(&query[12..question_end(query)]);
        // alias.test. 300 IN CNAME <pointer to offset 3: the root name in this message>
        r.extend_from_slice(&[0xc0, 0x0c, 0, 5, 0, 1, 0, 0, 1, 0x2c, 0, 2, 0xc0, 0x03]);
        r
    })
    .await;
    answer_must_parse(upstream).await;
}

/// Found by `fuzz/fuzz_targets/upstream_answer.rs` after the fix above: a compression
/// pointer into a TTL field. The pointer is backwards (allowed) but lands on bytes dnscore
/// rewrites: TTLs are capped at 2^31-1, clamped by the policy and counted down on every hit.
/// Here the CNAME's TTL is 0x80000000 and its target points at the TTL's third byte (0x00,
/// the root name, offset 36); dnscore caps the TTL to 0x7fffffff, so the client's target
/// reads 0xff 0xff, a forward pointer, and the message does not parse. Fixed: a pointer
/// must lead to the start of a label of a name read before it (`wire::NameStarts`).
#[tokio::test]
async fn pointer_into_a_ttl_is_not_passed_through() {
    let upstream = scripted_upstream(|query| {
        let mut r = Vec::new();
        r.extend_from_slice(&query[..2]);
        r.extend_from_slice(&[0x85, 0x00, 0, 1, 0, 1, 0, 0, 0, 0]);
        let question = &query[12..question_end(query)];
        assert_eq!(
            question.len(),
            16,
            "alias.test. A IN: the record starts at 28"
        );
        r.extend_from_slice(question);
        // 28: alias.test. (ptr 12), CNAME, IN, TTL 0x80000000 at 34..38, RDLENGTH 2, and the
        // target: a pointer to offset 36, the TTL's third byte (0x00: the root name).
        r.extend_from_slice(&[0xc0, 0x0c, 0, 5, 0, 1, 0x80, 0, 0, 0, 0, 2, 0xc0, 36]);
        assert!(
            Message::from_vec(&r).is_ok(),
            "the upstream's answer itself parses"
        );
        r
    })
    .await;
    answer_must_parse(upstream).await;
}

/// Found by `fuzz/fuzz_targets/upstream_answer.rs` after the header fix: the same pointer
/// into the header, inside the target name of an HTTPS record (type 65; SVCB, 64, is read
/// the same way). RFC 9460 §2.2 forbids compressing that name, but hickory (and so a client
/// using it) follows the pointer. Fixed: `wire::check_rdata_names` checks SVCB and HTTPS
/// target names too.
#[tokio::test]
async fn pointer_into_the_header_in_https_rdata_is_not_passed_through() {
    let upstream = scripted_upstream(|query| {
        let mut r = answer_head(query, 0);
        // alias.test. 300 IN HTTPS 1 <pointer to offset 3: the root name in this message>
        r.extend_from_slice(&[0xc0, 0x0c, 0, 65, 0, 1, 0, 0, 1, 0x2c, 0, 4, 0, 1, 0xc0, 3]);
        assert!(
            Message::from_vec(&r).is_ok(),
            "the upstream's answer itself parses"
        );
        r
    })
    .await;
    answer_must_parse(upstream).await;
}

/// Found by `fuzz/fuzz_targets/upstream_answer.rs` in a 30-minute run (14 million inputs;
/// the input is `fuzz/seeds/upstream_answer/regress-tsig-header-pointer`): a TSIG record in
/// the additional section, whose algorithm name was a pointer into the header, was passed
/// to the client. The record is the upstream's transaction signature, meaningless to the
/// client, and hickory reads its name through the pointer into the client's header, which
/// differs. Fixed: TSIG (and TKEY) are dropped like OPT, with what follows them; the names
/// in SIG, RRSIG, NSEC and NAPTR records are checked as well (below).
#[tokio::test]
async fn a_tsig_with_a_pointer_into_the_header_is_not_passed_through() {
    let upstream = scripted_upstream(|query| {
        let mut r = answer_head(query, 1);
        // alias.test. 300 IN CNAME a.test. (the question's "test." at 18)
        r.extend_from_slice(&[
            0xc0, 0x0c, 0, 5, 0, 1, 0, 0, 1, 0x2c, 0, 4, 1, b'a', 0xc0, 18,
        ]);
        // <root> ANY TSIG: algorithm name "x" + pointer to offset 3 (the flags' low byte),
        // then a time, fudge, an empty MAC, the original ID, no error, no other data.
        let tsig_rdata = [
            &[1, b'x', 0xc0, 3][..],
            &[0, 0, 0, 0, 0, 1, 0, 0x2c, 0, 0],
            &query[..2],
            &[0, 0, 0, 0],
        ]
        .concat();
        r.extend_from_slice(&[0, 0, 250, 0, 255, 0, 0, 0, 0]);
        r.extend_from_slice(&(tsig_rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(&tsig_rdata);
        assert!(
            Message::from_vec(&r).is_ok(),
            "the upstream's answer itself parses"
        );
        r
    })
    .await;
    answer_must_parse(upstream).await;
}

/// The same pointer into the header as the signer's name of an RRSIG (type 46; SIG, 24,
/// alike) and as the replacement of a NAPTR (35): names that hickory reads, now checked.
#[tokio::test]
async fn pointers_into_the_header_in_rrsig_and_naptr_are_not_passed_through() {
    for rtype in [46u8, 35] {
        let answer: fn(&[u8]) -> Vec<u8> = match rtype {
            46 => |query| {
                let mut r = answer_head(query, 0);
                // alias.test. 300 IN RRSIG A 8 2 300 <times> <tag> <signer: ptr 3> <sig>
                let rdata = [
                    &[0, 1, 8, 2, 0, 0, 1, 0x2c][..],
                    &[0x70, 0, 0, 0, 0x60, 0, 0, 0, 0x12, 0x34],
                    &[0xc0, 3],
                    &[0xaa; 8],
                ]
                .concat();
                r.extend_from_slice(&[0xc0, 0x0c, 0, 46, 0, 1, 0, 0, 1, 0x2c]);
                r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                r.extend_from_slice(&rdata);
                r
            },
            _ => |query| {
                let mut r = answer_head(query, 0);
                // alias.test. 300 IN NAPTR 10 20 "u" "E2U+sip" "" <replacement: ptr 3>
                let rdata = [&[0, 10, 0, 20, 1, b'u', 7][..], b"E2U+sip", &[0, 0xc0, 3]].concat();
                r.extend_from_slice(&[0xc0, 0x0c, 0, 35, 0, 1, 0, 0, 1, 0x2c]);
                r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                r.extend_from_slice(&rdata);
                r
            },
        };
        answer_must_parse(scripted_upstream(answer).await).await;
    }
}
