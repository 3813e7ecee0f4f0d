//! The upstream-response path: arbitrary bytes arrive as the upstream's answer to a known
//! query (picked by the first byte; the ID is patched to match, as a socket would filter).
//! The answer is accepted or rejected, never a panic, and never cached when invalid.
//!
//! Checked for an accepted answer: the client's bytes parse (hickory; when it parses the
//! upstream's), echo the client's ID and question; the cache lifetime is 0 unless the
//! upstream said NOERROR or NXDOMAIN without TC; no served TTL exceeds a non-zero lifetime;
//! every TTL is at most 2^31-1 (RFC 2181 §8); the answer section holds only the question's
//! name and its CNAME chain (and DNAMEs above it), and at most 8 RRSIGs per RRset (the
//! scrubber, which also checks that what it kept has nothing left to drop).
#![no_main]

use std::sync::OnceLock;

use dnscore::fuzzing::upstream_answer;
use dnscore_fuzz::{HEADER_LEN, answer_target_queries, check_client_answer, flags_of, id_of};
use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};
use libfuzzer_sys::fuzz_target;

const TC: u16 = 0x0200;
const RCODE: u16 = 0x000f;
const NOERROR: u16 = 0;
const NXDOMAIN: u16 = 3;
const MAX_TTL: u32 = 0x7fff_ffff;

fuzz_target!(|data: &[u8]| {
    static QUERIES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let queries = QUERIES.get_or_init(answer_target_queries);
    let Some((&pick, response)) = data.split_first() else {
        return;
    };
    let client = &queries[usize::from(pick) % queries.len()];
    let Some((out, lifetime)) = upstream_answer(client, response) else {
        return;
    };
    // Accepted, so it was long enough to have a header.
    assert!(
        response.len() >= HEADER_LEN,
        "accepted an answer without a header"
    );
    // The answer is the upstream's records re-framed for the client. When hickory cannot
    // read the upstream's bytes either (it refuses, for one, an empty RDATA of an unknown
    // type, which RFC 3597 allows), only the header is checked.
    // (Parsed with the ID dnscore::fuzzing patched in: ID bytes can be pointer targets.)
    let mut patched = response.to_vec();
    patched[..2].copy_from_slice(&0x2a2au16.to_be_bytes());
    if Message::from_vec(&patched).is_err() {
        assert!(out.len() >= HEADER_LEN && flags_of(&out) & 0x8000 != 0);
        assert_eq!(
            id_of(&out),
            id_of(client),
            "answer does not echo the client's ID"
        );
        return;
    }
    let answer = check_client_answer(&out, id_of(client));
    let query = Message::from_vec(client).expect("the fixed queries parse");
    let (q, a) = (
        &query.queries[0],
        answer.queries.first().expect("question echoed"),
    );
    assert_eq!(
        q.name().to_string(),
        a.name().to_string(),
        "question not echoed"
    );
    assert_eq!(
        (q.query_type(), q.query_class()),
        (a.query_type(), a.query_class())
    );

    let mut chain = vec![q.name().clone()];
    let mut sigs = Vec::new();
    for record in &answer.answers {
        match record.record_type() {
            RecordType::DNAME => continue,
            RecordType::RRSIG => sigs.push(record.name.clone()),
            _ => {}
        }
        assert!(
            chain.contains(&record.name),
            "answer record of {} off the question's chain {chain:?}",
            record.name
        );
        if let RData::CNAME(target) = &record.data {
            chain.push(target.0.clone());
        }
    }
    for name in &sigs {
        // Per owner: at most 8 per RRset, and an owner has a few types at most here.
        assert!(
            sigs.iter().filter(|n| *n == name).count() <= 8 * 4,
            "RRSIGs at {name} not capped"
        );
    }

    let upstream_flags = flags_of(response);
    let rcode = upstream_flags & RCODE;
    if upstream_flags & TC != 0 || !matches!(rcode, NOERROR | NXDOMAIN) {
        assert_eq!(
            lifetime, 0,
            "a truncated or failed answer (flags {upstream_flags:#06x}) would be cached"
        );
    }
    assert!(
        lifetime <= dnscore::defaults::MAX_TTL,
        "lifetime {lifetime} over the ceiling"
    );
    for record in answer
        .answers
        .iter()
        .chain(&answer.authorities)
        .chain(&answer.additionals)
    {
        assert!(record.ttl <= MAX_TTL, "TTL {} over 2^31-1", record.ttl);
        if lifetime > 0 {
            assert!(
                record.ttl <= lifetime,
                "served TTL {} outlives the cache lifetime {lifetime}",
                record.ttl
            );
        }
    }
});
