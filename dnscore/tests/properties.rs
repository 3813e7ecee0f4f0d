//! Properties of the resolver through its public API, against the test upstream on loopback.
//!
//! - The cache against a reference model: random queries and passages of time (tokio's clock,
//!   paused only while no query is in flight, so loopback replies never race a timer). An
//!   entry is served while the model says it is fresh, with the TTL counted down by exactly
//!   the time elapsed; past its TTL the upstream is asked again; the cache never holds more
//!   than its capacity; negative answers (NXDOMAIN, NODATA) live for min(SOA TTL, SOA
//!   MINIMUM) capped by `negative_max_ttl` and carry that TTL on the SOA (RFC 2308 §5).
//! - Round trips: whatever the client's ID, flags, letter case and EDNS, the answer (from the
//!   upstream or the cache) echoes the ID, the question byte for byte, the opcode, RD and CD,
//!   and has an OPT record exactly when the query had one.
//!
//! Prefetch and serve-stale are off in the model test: both deliberately bend the plain TTL
//! rules, and have their own tests.

use std::str::FromStr;
use std::time::Duration;

use dnscore::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use dnscore::proto::rr::{Name, RData, RecordType, rdata::A};
use dnscore::{Resolver, Transport};
use dnscore_testkit::TestUpstream;
use proptest::prelude::*;

/// Positive names the model test adds, each with one A record of a random TTL.
const POSITIVE: usize = 3;
/// SOA of the test zone: TTL 300, MINIMUM 60, so negative answers live min(300, 60) = 60 s.
const SOA_NEGATIVE_TTL: u32 = 60;

/// One step of the model test.
#[derive(Clone, Debug)]
enum Op {
    /// Ask for question `q` (see [`questions`]).
    Ask(usize),
    /// Let this many seconds pass.
    Wait(u32),
}

/// The questions the model test asks: for each positive name its A (cached for its TTL) and
/// its AAAA (NODATA), then one NXDOMAIN name.
fn questions() -> Vec<(String, RecordType)> {
    let mut qs = Vec::new();
    for i in 0..POSITIVE {
        qs.push((format!("p{i}.model.test."), RecordType::A));
        qs.push((format!("p{i}.model.test."), RecordType::AAAA));
    }
    qs.push(("missing.model.test.".to_owned(), RecordType::A));
    qs
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2 * POSITIVE + 1).prop_map(Op::Ask),
        2 => prop_oneof![0u32..5, 5u32..70].prop_map(Op::Wait),
    ]
}

fn query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
    dnscore_testkit::query(id, name, rtype, Some(512))
}

/// What the model remembers of a cached answer.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Model time (seconds) when it was fetched.
    at: u64,
    /// How long it may be served.
    lifetime: u32,
}

/// Lets `secs` seconds pass on tokio's clock while nothing is in flight.
async fn wait(secs: u32) {
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(u64::from(secs))).await;
    tokio::time::resume();
}

/// Runs `ops` against a resolver and the reference model; `Err` describes a divergence.
async fn check_model(
    ttls: [u32; POSITIVE],
    max_ttl: u32,
    negative_max_ttl: u32,
    capacity: usize,
    ops: Vec<Op>,
) -> Result<(), String> {
    let upstream = TestUpstream::start().await.unwrap();
    for (i, &ttl) in ttls.iter().enumerate() {
        let rdata = RData::A(A::new(192, 0, 2, 10 + i as u8));
        upstream.add_record(&format!("p{i}.model.test."), rdata, ttl);
    }
    let resolver = Resolver::builder()
        .upstream(upstream.addr())
        .cache_capacity(capacity)
        .max_ttl(max_ttl)
        .negative_max_ttl(negative_max_ttl)
        .prefetch(false)
        .max_stale(Duration::ZERO)
        .hedge_share(0.0)
        // Generous timeouts: on a loaded machine a loopback reply can take longer than the
        // adaptive attempt timeout, and a second attempt would look like a second miss.
        .min_attempt_timeout(Duration::from_secs(2))
        .attempt_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let qs = questions();
    // Every question fits the cache unless the capacity is smaller than their number; then
    // an entry the model thinks fresh may have been evicted (a miss), but never served wrong.
    let may_evict = capacity < qs.len();
    let mut model: Vec<Option<Entry>> = vec![None; qs.len()];
    let mut now = 0u64;
    for (step, op) in ops.into_iter().enumerate() {
        let q = match op {
            Op::Wait(secs) => {
                wait(secs).await;
                now += u64::from(secs);
                continue;
            }
            Op::Ask(q) => q,
        };
        let (name, rtype) = &qs[q];
        let before = upstream.total_queries();
        let wire = resolver
            .resolve(&query(step as u16, name, *rtype))
            .await
            .unwrap();
        let asked = upstream.total_queries() - before;
        let msg = Message::from_vec(&wire).unwrap();

        // What the upstream's answer is, and how long it may be cached.
        let positive = *rtype == RecordType::A && q < 2 * POSITIVE;
        let (rcode, lifetime) = if positive {
            (ResponseCode::NoError, ttls[q / 2].min(max_ttl))
        } else if q < 2 * POSITIVE {
            (
                ResponseCode::NoError,
                SOA_NEGATIVE_TTL.min(negative_max_ttl),
            )
        } else {
            (
                ResponseCode::NXDomain,
                SOA_NEGATIVE_TTL.min(negative_max_ttl),
            )
        };
        if msg.metadata.response_code != rcode {
            return Err(format!(
                "step {step}: {name} {rtype}: rcode {:?}",
                msg.metadata.response_code
            ));
        }
        let served = if positive {
            msg.answers.first().map(|r| r.ttl)
        } else {
            msg.authorities
                .iter()
                .find(|r| r.record_type() == RecordType::SOA)
                .map(|r| r.ttl)
        }
        .ok_or_else(|| format!("step {step}: {name} {rtype}: no record in {msg:?}"))?;

        let fresh = model[q].filter(|e| now < e.at + u64::from(e.lifetime));
        match (fresh, asked) {
            (Some(e), 0) => {
                let expect = u64::from(e.lifetime) - (now - e.at);
                if u64::from(served) != expect {
                    return Err(format!(
                        "step {step}: {name} {rtype}: hit served TTL {served}, model {expect}"
                    ));
                }
            }
            (Some(_), 1) if may_evict => model[q] = Some(Entry { at: now, lifetime }),
            (None, 1) => model[q] = Some(Entry { at: now, lifetime }),
            (fresh, asked) => {
                return Err(format!(
                    "step {step} at {now}s: {name} {rtype}: model entry {fresh:?} (stored \
                     {:?}), but {asked} upstream queries",
                    model[q]
                ));
            }
        }
        if asked == 1 && served != lifetime {
            return Err(format!(
                "step {step}: {name} {rtype}: fresh answer TTL {served}, not {lifetime}"
            ));
        }
        if resolver.cache_len() > capacity {
            return Err(format!(
                "step {step}: {} entries over capacity {capacity}",
                resolver.cache_len()
            ));
        }
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The cache against the reference model, with room for every answer.
    #[test]
    fn cache_follows_the_ttl_model(
        ttls in proptest::array::uniform3(0u32..40),
        max_ttl in prop_oneof![Just(86_400u32), 1u32..30],
        negative_max_ttl in prop_oneof![Just(3_600u32), 0u32..70],
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let result = runtime().block_on(check_model(ttls, max_ttl, negative_max_ttl, 1_000, ops));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }

    /// The same with a cache smaller than the working set: evictions, but the capacity holds
    /// and nothing is served past its TTL.
    #[test]
    fn small_cache_never_exceeds_capacity(
        ttls in proptest::array::uniform3(1u32..40),
        capacity in 1usize..6,
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let result = runtime().block_on(check_model(ttls, 86_400, 3_600, capacity, ops));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}

/// A client query as raw parts, so that the round trip test can compare bytes.
#[derive(Clone, Debug)]
struct ClientQuery {
    id: u16,
    name: String,
    rtype: RecordType,
    rd: bool,
    cd: bool,
    /// EDNS buffer size and DO bit, when the client sends OPT.
    edns: Option<(u16, bool)>,
}

impl ClientQuery {
    fn wire(&self) -> Vec<u8> {
        let mut m = Message::new(self.id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = self.rd;
        m.metadata.checking_disabled = self.cd;
        m.add_query(Query::query(
            Name::from_str(&self.name).unwrap(),
            self.rtype,
        ));
        if let Some((size, dnssec_ok)) = self.edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            e.set_dnssec_ok(dnssec_ok);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }
}

/// Names of the test zone (answers, CNAME, big TXT, NXDOMAIN) and one outside it (REFUSED
/// upstream: SERVFAIL to the client), in random letter case.
fn client_query() -> impl Strategy<Value = ClientQuery> {
    let names = prop::sample::select(vec![
        "a.test.",
        "alias.test.",
        "big.test.",
        "nope.test.",
        "b.test.",
        "outside.invalid.",
    ]);
    let case = proptest::collection::vec(any::<bool>(), 20);
    let rtype = prop::sample::select(vec![
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::MX,
    ]);
    let edns = proptest::option::of((prop_oneof![Just(0u16), 512u16..4096], any::<bool>()));
    (
        any::<u16>(),
        names,
        case,
        rtype,
        any::<bool>(),
        any::<bool>(),
        edns,
    )
        .prop_map(|(id, name, case, rtype, rd, cd, edns)| {
            let name = name
                .chars()
                .zip(case.iter().cycle())
                .map(|(c, &up)| if up { c.to_ascii_uppercase() } else { c })
                .collect();
            ClientQuery {
                id,
                name,
                rtype,
                rd,
                cd,
                edns,
            }
        })
}

/// The question section of a query built by [`ClientQuery::wire`] (no compression).
fn question(msg: &[u8]) -> &[u8] {
    let mut pos = 12;
    while msg[pos] != 0 {
        pos += 1 + usize::from(msg[pos]);
    }
    &msg[12..pos + 5]
}

fn check_echo(
    q: &ClientQuery,
    query: &[u8],
    answer: &[u8],
    transport: Transport,
) -> Result<(), String> {
    let m = Message::from_vec(answer).map_err(|e| format!("answer does not parse: {e}"))?;
    let md = &m.metadata;
    if md.id != q.id || md.message_type != MessageType::Response || md.op_code != OpCode::Query {
        return Err(format!("header not echoed: {md:?}"));
    }
    if md.recursion_desired != q.rd || md.checking_disabled != q.cd {
        return Err(format!("RD/CD not echoed: {md:?}"));
    }
    if answer.get(12..12 + question(query).len()) != Some(question(query)) {
        return Err("question not echoed byte for byte".to_owned());
    }
    if m.edns.is_some() != q.edns.is_some() {
        return Err(format!(
            "OPT in the answer: {}, in the query: {}",
            m.edns.is_some(),
            q.edns.is_some()
        ));
    }
    if transport == Transport::Udp {
        let limit = q.edns.map_or(512, |(size, _)| size.max(512));
        if answer.len() > usize::from(limit) {
            return Err(format!(
                "{} bytes over UDP with a limit of {limit}",
                answer.len()
            ));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Round trips keep the caller's ID, question and flags, from the upstream and from the
    /// cache (each query is asked twice, over UDP and then over TCP, or the reverse).
    #[test]
    fn round_trips_echo_the_client(queries in proptest::collection::vec(client_query(), 1..6)) {
        let result: Result<(), String> = runtime().block_on(async {
            let upstream = TestUpstream::start().await.unwrap();
            let resolver = Resolver::builder().upstream(upstream.addr()).build().unwrap();
            for (i, q) in queries.iter().enumerate() {
                let wire = q.wire();
                let order = if i % 2 == 0 { [Transport::Udp, Transport::Tcp] } else { [Transport::Tcp, Transport::Udp] };
                for transport in order {
                    let answer = resolver.resolve_with(&wire, transport).await.unwrap();
                    check_echo(q, &wire, &answer, transport).map_err(|e| format!("{q:?} {transport:?}: {e}"))?;
                }
            }
            Ok(())
        });
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}
