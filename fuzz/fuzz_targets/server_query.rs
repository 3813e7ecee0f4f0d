//! The server path: arbitrary bytes arrive as a client's query, over UDP and over TCP, at a
//! resolver whose cache holds a few answers. The answer is a response or a drop, never a
//! panic, and never touches the network (`resolve_cached`).
//!
//! Checked: an answer is a whole header with QR=1 and the client's ID, RD and CD echoed,
//! that hickory parses, within the client's UDP limit over UDP; a drop happens only for a
//! packet shorter than a header or with QR=1.
#![no_main]

use dnscore::{Error, Transport};
use dnscore_fuzz::{HEADER_LEN, check_client_answer, fixture, flags_of, id_of};
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

const QR: u16 = 0x8000;
const RD: u16 = 0x0100;
const CD: u16 = 0x0010;

fuzz_target!(|data: &[u8]| {
    let resolver = &fixture().resolver;
    let mut out = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp] {
        match resolver.resolve_cached(data, transport, &mut out) {
            Ok(true) => {
                let answer = check_client_answer(&out, id_of(data));
                let echoed = flags_of(&out) & (RD | CD);
                assert_eq!(echoed, flags_of(data) & (RD | CD), "RD/CD not echoed");
                if let Ok(query) = Message::from_vec(data) {
                    check_against_query(&query, &answer, out.len(), transport);
                }
            }
            Ok(false) => {
                assert!(data.len() >= HEADER_LEN && flags_of(data) & QR == 0);
            }
            Err(Error::Malformed) => {
                assert!(
                    data.len() < HEADER_LEN || flags_of(data) & QR != 0,
                    "dropped a packet with a header and QR=0"
                );
            }
            Err(other) => panic!("resolve_cached failed with {other:?}, not Malformed"),
        }
    }
});

/// Checks an answer against the query as hickory reads it.
fn check_against_query(query: &Message, answer: &Message, len: usize, transport: Transport) {
    if transport == Transport::Udp {
        let limit = query
            .edns
            .as_ref()
            .map_or(512, |e| e.max_payload().max(512));
        assert!(
            len <= usize::from(limit),
            "UDP answer of {len} bytes over the limit {limit}"
        );
    }
    // An answer that carries a question carries the client's, letter case included.
    if let (Some(q), Some(a)) = (query.queries.first(), answer.queries.first()) {
        assert_eq!(
            q.name().to_string(),
            a.name().to_string(),
            "question name not echoed"
        );
        assert_eq!(q.query_type(), a.query_type());
        assert_eq!(q.query_class(), a.query_class());
    }
    // OPT is hop-by-hop: the client gets one only if it sent one.
    if query.edns.is_none() {
        assert!(
            answer.edns.is_none(),
            "OPT in the answer to a query without one"
        );
    }
}
