//! Answer hygiene against a hostile upstream (the testkit server adding records to its
//! answers): what does not belong to the question is neither cached nor passed on,
//! signatures are capped, and stub resolvers get minimal responses. Each case is checked
//! on the miss (from the upstream) and on the hit (from the cache).

use std::net::Ipv4Addr;

use dnscore::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use dnscore::proto::rr::rdata::{A, NS, NULL, SOA, TXT};
use dnscore::proto::rr::{Name, RData, Record, RecordType};
use dnscore::{Resolver, ResolverBuilder};
use dnscore_testkit::{Behavior, TestUpstream};

fn name(n: &str) -> Name {
    Name::from_ascii(n).unwrap()
}

fn a(owner: &str, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(owner), 300, RData::A(A(Ipv4Addr::from(ip))))
}

fn txt(owner: &str) -> Record {
    Record::from_rdata(
        name(owner),
        300,
        RData::TXT(TXT::new(vec!["unrelated".into()])),
    )
}

fn ns(owner: &str, target: &str) -> Record {
    Record::from_rdata(name(owner), 300, RData::NS(NS(name(target))))
}

/// An RRSIG over `covered` at `owner`, signed by `test.`, with key tag `tag` (the data is
/// well formed; nothing here validates it).
fn rrsig(owner: &str, covered: RecordType, tag: u16) -> Record {
    let mut data = Vec::new();
    data.extend_from_slice(&u16::from(covered).to_be_bytes());
    data.extend_from_slice(&[13, 2]); // algorithm, labels
    data.extend_from_slice(&300u32.to_be_bytes()); // original TTL
    data.extend_from_slice(&2_000_000_000u32.to_be_bytes()); // expiration
    data.extend_from_slice(&1_700_000_000u32.to_be_bytes()); // inception
    data.extend_from_slice(&tag.to_be_bytes());
    data.extend_from_slice(b"\x04test\x00");
    data.extend_from_slice(&[0x5a; 64]);
    Record::from_rdata(
        name(owner),
        300,
        RData::Unknown {
            code: RecordType::RRSIG,
            rdata: NULL::with(data),
        },
    )
}

/// A query with RD, and EDNS with DO=1 (`dnssec`) or without EDNS.
fn query(id: u16, qname: &str, rtype: RecordType, rd: bool, dnssec: bool) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = rd;
    m.add_query(Query::query(name(qname), rtype));
    if dnssec {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        e.set_dnssec_ok(true);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

async fn ask(r: &Resolver, q: &[u8]) -> Message {
    Message::from_vec(&r.resolve(q).await.unwrap()).unwrap()
}

fn types(records: &[Record]) -> Vec<RecordType> {
    records.iter().map(|r| r.record_type()).collect()
}

fn builder(up: &TestUpstream) -> ResolverBuilder {
    Resolver::builder().upstream(up.addr())
}

/// The "done when" of the hygiene issue: an out-of-zone A, an unrelated TXT and 20 RRSIGs
/// over the answer RRset reach the client without the A, without the TXT, with 8 RRSIGs,
/// first from the upstream and then from the cache; a DO=1 client keeps the RRSIGs.
#[tokio::test]
async fn out_of_zone_and_unrelated_records_are_dropped_and_signatures_capped() {
    let up = TestUpstream::start().await.unwrap();
    let mut answers = vec![a("evil.example.", [6, 6, 6, 6])];
    answers.extend((0..20).map(|tag| rrsig("a.test.", RecordType::A, tag)));
    up.set_behavior(
        "a.test.",
        Behavior::Extra {
            answers,
            authority: vec![ns("example.", "ns.example."), txt("unrelated.test.")],
            additional: vec![a("ns.example.", [6, 6, 6, 7]), txt("unrelated.test.")],
        },
    );
    let r = builder(&up).build().unwrap();
    for id in 1..=2 {
        let m = ask(&r, &query(id, "a.test.", RecordType::A, true, true)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let addrs: Vec<_> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        assert_eq!(addrs, vec![Ipv4Addr::new(192, 0, 2, 1)], "ask {id}");
        let sigs = m
            .answers
            .iter()
            .filter(|r| r.record_type() == RecordType::RRSIG)
            .count();
        assert_eq!(sigs, 8, "ask {id}: RRSIGs capped at 8");
        assert!(m.authorities.is_empty(), "ask {id}: {:?}", m.authorities);
        assert!(m.additionals.is_empty(), "ask {id}: {:?}", m.additionals);
    }
    assert_eq!(
        up.total_queries(),
        2,
        "UDP (truncated), then TCP; then the cache"
    );

    // The cap is a setting.
    let r = builder(&up).max_rrsigs(2).build().unwrap();
    let m = ask(&r, &query(3, "a.test.", RecordType::A, true, true)).await;
    assert_eq!(
        types(&m.answers)
            .iter()
            .filter(|t| **t == RecordType::RRSIG)
            .count(),
        2
    );
}

/// A referral-style answer: the NS set of the question's zone and its glue. A stub
/// (RD=1) gets the answer alone; a client asking without RD, or any client with
/// minimal responses off, gets the NS set and its glue, and never the unrelated glue.
#[tokio::test]
async fn stubs_get_minimal_responses_and_glue_stays_with_its_ns() {
    let up = TestUpstream::start().await.unwrap();
    up.set_behavior(
        "a.test.",
        Behavior::Extra {
            answers: vec![],
            authority: vec![ns("test.", "ns1.test."), rrsig("test.", RecordType::NS, 1)],
            additional: vec![
                a("ns1.test.", [192, 0, 2, 53]),
                a("ns2.other.", [192, 0, 2, 54]),
            ],
        },
    );
    let r = builder(&up).build().unwrap();
    for id in 1..=2 {
        let stub = ask(&r, &query(id, "a.test.", RecordType::A, true, false)).await;
        assert_eq!(types(&stub.answers), vec![RecordType::A], "ask {id}");
        assert!(
            stub.authorities.is_empty(),
            "ask {id}: {:?}",
            stub.authorities
        );
        assert!(
            stub.additionals.is_empty(),
            "ask {id}: {:?}",
            stub.additionals
        );
        let norec = ask(&r, &query(id, "a.test.", RecordType::A, false, false)).await;
        assert_eq!(
            types(&norec.authorities),
            vec![RecordType::NS, RecordType::RRSIG]
        );
        assert_eq!(types(&norec.additionals), vec![RecordType::A]);
        assert_eq!(norec.additionals[0].name, name("ns1.test."));
    }
    let r = builder(&up).minimal_responses(false).build().unwrap();
    let full = ask(&r, &query(3, "a.test.", RecordType::A, true, false)).await;
    assert_eq!(
        types(&full.authorities),
        vec![RecordType::NS, RecordType::RRSIG]
    );
    assert_eq!(types(&full.additionals), vec![RecordType::A]);
}

/// NXDOMAIN and NODATA keep their SOA (stubs and RFC 2308 need it) and are cached as
/// before; an NS set put before the SOA is moved behind it and left out for stubs.
#[tokio::test]
async fn negative_answers_keep_their_soa_and_are_cached() {
    let up = TestUpstream::start().await.unwrap();
    let soa = |owner: &str| {
        Record::from_rdata(
            name(owner),
            60,
            RData::SOA(SOA::new(
                name("ns.test."),
                name("hostmaster.test."),
                1,
                3600,
                600,
                86400,
                60,
            )),
        )
    };
    // A second, unrelated SOA and an NS set ahead of the zone's own SOA.
    up.set_behavior(
        "nope.test.",
        Behavior::Extra {
            answers: vec![],
            authority: vec![ns("test.", "ns1.test."), soa("other.example.")],
            additional: vec![],
        },
    );
    let r = builder(&up).build().unwrap();
    for id in 1..=3 {
        let nx = ask(&r, &query(id, "nope.test.", RecordType::A, true, false)).await;
        assert_eq!(
            nx.metadata.response_code,
            ResponseCode::NXDomain,
            "ask {id}"
        );
        assert_eq!(types(&nx.authorities), vec![RecordType::SOA], "ask {id}");
        assert_eq!(nx.authorities[0].name, name("test."));
        let nodata = ask(&r, &query(id, "a.test.", RecordType::TXT, true, false)).await;
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(types(&nodata.authorities), vec![RecordType::SOA]);
    }
    assert_eq!(up.total_queries(), 2, "both negative answers cached");
    let norec = ask(&r, &query(4, "nope.test.", RecordType::A, false, false)).await;
    assert_eq!(
        types(&norec.authorities),
        vec![RecordType::SOA, RecordType::NS],
        "the NS set after the SOA"
    );
}

/// A CNAME chain keeps its links and what the chain reaches; records of names off the
/// chain, and a second CNAME of a link, are dropped.
#[tokio::test]
async fn a_cname_chain_keeps_its_links_only() {
    let up = TestUpstream::start().await.unwrap();
    let cname = |owner: &str, target: &str| {
        Record::from_rdata(
            name(owner),
            300,
            RData::CNAME(dnscore::proto::rr::rdata::CNAME(name(target))),
        )
    };
    up.set_behavior(
        "alias.test.",
        Behavior::Extra {
            answers: vec![
                cname("alias.test.", "evil.example."),
                a("evil.example.", [6, 6, 6, 6]),
                a("off.test.", [6, 6, 6, 8]),
                rrsig("a.test.", RecordType::A, 1),
            ],
            authority: vec![],
            additional: vec![],
        },
    );
    let r = builder(&up).build().unwrap();
    for id in 1..=2 {
        let m = ask(&r, &query(id, "alias.test.", RecordType::A, true, true)).await;
        let kept: Vec<(String, RecordType)> = m
            .answers
            .iter()
            .map(|r| (r.name.to_ascii(), r.record_type()))
            .collect();
        assert_eq!(
            kept,
            vec![
                ("alias.test.".to_string(), RecordType::CNAME),
                ("a.test.".to_string(), RecordType::A),
                ("a.test.".to_string(), RecordType::RRSIG),
            ],
            "ask {id}"
        );
    }
}
