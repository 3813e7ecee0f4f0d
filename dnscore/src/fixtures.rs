//! Test fixtures shared by the core's unit tests: client queries, upstream responses and
//! records, built with hickory.

use std::str::FromStr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as HQuery, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::time::Instant;

use crate::answer::Answer;
use crate::query::{self, Key};

/// A client query for `name`/`rtype`, optionally with EDNS.
pub(crate) fn client_query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0xbeef, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(HQuery::query(Name::from_str(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// The response an upstream would send to `sent`, with these sections.
pub(crate) fn response_to(
    sent: &[u8],
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
) -> Vec<u8> {
    let q = Message::from_vec(sent).unwrap();
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.response_code = rcode;
    m.metadata.recursion_available = true;
    m.add_queries(q.queries.clone());
    m.add_answers(answers);
    m.add_authorities(authorities);
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    m.to_vec().unwrap()
}

pub(crate) fn a(name: &str, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(Name::from_str(name).unwrap(), ttl, RData::A(A(ip.into())))
}

pub(crate) fn soa(ttl: u32, minimum: u32) -> Record {
    let soa = SOA::new(
        Name::from_str("ns.test.").unwrap(),
        Name::from_str("hostmaster.test.").unwrap(),
        1,
        3600,
        600,
        86400,
        minimum,
    );
    Record::from_rdata(Name::from_str("test.").unwrap(), ttl, RData::SOA(soa))
}

/// Parses `resp` as the answer to the upstream query made from `client`.
pub(crate) fn exchange(
    client: &[u8],
    answers: Vec<Record>,
    rcode: ResponseCode,
) -> (Vec<u8>, Answer) {
    let q = query::parse(client).unwrap();
    let sent = Key(q.key.as_bytes()).upstream_query(0x1111);
    let resp = response_to(&sent, rcode, answers, vec![]);
    let answer = Answer::parse(&sent, &resp, Instant::now()).unwrap();
    (sent, answer)
}
