//! What the fuzz targets share: a warmed resolver on a loopback test upstream, the client
//! queries the upstream-answer target picks from, and the checks every client answer must
//! pass. Built once per fuzzing process.

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use dnscore::Resolver;
use dnscore_testkit::TestUpstream;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{Name, RData, RecordType};

/// Header length; every answer has at least this.
pub const HEADER_LEN: usize = 12;
/// The QR bit in the header's flags word.
const QR: u16 = 0x8000;
/// TTL of the records the fixture adds: long enough that nothing expires during a fuzz run,
/// so hits stay hits.
const LONG_TTL: u32 = 86_400;

/// A resolver whose cache holds answers for [`warm_queries`], on a test upstream that keeps
/// serving misses (on 127.0.0.1), and the runtime both run on.
pub struct Fixture {
    /// Runs the upstream, and the resolver's misses when a target blocks on it.
    pub rt: tokio::runtime::Runtime,
    /// The warmed resolver.
    pub resolver: Resolver,
    /// Kept alive for the misses.
    pub upstream: TestUpstream,
}

/// The process's fixture, built and warmed on first use.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (resolver, upstream) = rt.block_on(async {
            let upstream = TestUpstream::start()
                .await
                .expect("test upstream on 127.0.0.1");
            add_records(&upstream);
            let resolver = Resolver::builder()
                .upstream(upstream.addr())
                .attempt_timeout(Duration::from_millis(100))
                .timeout(Duration::from_millis(300))
                .build()
                .expect("resolver");
            for q in warm_queries() {
                resolver.resolve(&q).await.expect("warm-up answer");
            }
            (resolver, upstream)
        });
        assert!(resolver.cache_len() > 0, "the cache was warmed");
        Fixture {
            rt,
            resolver,
            upstream,
        }
    })
}

fn add_records(upstream: &TestUpstream) {
    upstream.add_record("fz.test.", RData::A(A::new(192, 0, 2, 7)), LONG_TTL);
    upstream.add_record("fz.test.", RData::A(A::new(192, 0, 2, 8)), LONG_TTL - 5);
    upstream.add_record(
        "fz.test.",
        RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
        LONG_TTL,
    );
    for i in 0..12 {
        // ~800 bytes of TXT: over 512 (no EDNS), under 1232, so UDP truncation is reachable.
        let text = format!("{i:02}-{}", "x".repeat(60));
        upstream.add_record("fz.test.", RData::TXT(TXT::new(vec![text])), LONG_TTL);
    }
    let target = Name::from_str("fz.test.").expect("name");
    upstream.add_record("cn.test.", RData::CNAME(CNAME(target)), LONG_TTL);
}

/// The names and types the fixture's cache holds answers for (each also with DO and CD).
pub const WARM: &[(&str, RecordType)] = &[
    ("fz.test.", RecordType::A),
    ("fz.test.", RecordType::AAAA),
    ("fz.test.", RecordType::TXT),
    ("cn.test.", RecordType::A),
    ("fz.test.", RecordType::MX), // NODATA, cached for the SOA's 60 s
    ("nx.test.", RecordType::A),  // NXDOMAIN, cached for the SOA's 60 s
];

/// A client query, as a stub resolver sends it.
pub fn client_query(
    id: u16,
    name: &str,
    rtype: RecordType,
    edns: Option<(u16, bool)>,
    cd: bool,
) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.checking_disabled = cd;
    m.add_query(Query::query(Name::from_str(name).expect("name"), rtype));
    if let Some((size, dnssec_ok)) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        e.set_dnssec_ok(dnssec_ok);
        m.set_edns(e);
    }
    m.to_vec().expect("query encodes")
}

/// The queries the fixture warms the cache with: every [`WARM`] question, plain, with DO
/// and with CD.
pub fn warm_queries() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, &(name, rtype)) in WARM.iter().enumerate() {
        let id = i as u16;
        out.push(client_query(id, name, rtype, Some((1232, false)), false));
        out.push(client_query(id, name, rtype, Some((1232, true)), false));
        out.push(client_query(id, name, rtype, Some((1232, false)), true));
    }
    out
}

/// The client queries the upstream-answer target picks from by its first byte.
pub fn answer_target_queries() -> Vec<Vec<u8>> {
    vec![
        client_query(0x1234, "a.test.", RecordType::A, Some((1232, false)), false),
        client_query(0x1234, "A.Test.", RecordType::AAAA, None, false),
        client_query(
            0xbeef,
            "alias.test.",
            RecordType::A,
            Some((4096, true)),
            true,
        ),
        client_query(
            0x0001,
            "nope.test.",
            RecordType::A,
            Some((512, false)),
            false,
        ),
        client_query(0xffff, "big.test.", RecordType::TXT, None, false),
        client_query(0x0000, "a.test.", RecordType::MX, Some((1232, true)), false),
    ]
}

/// The message ID of a DNS message.
pub fn id_of(msg: &[u8]) -> u16 {
    u16::from_be_bytes([msg[0], msg[1]])
}

/// The flags word of a DNS message.
pub fn flags_of(msg: &[u8]) -> u16 {
    u16::from_be_bytes([msg[2], msg[3]])
}

/// Checks what every answer written to a client must be: a whole header, QR=1, the given
/// ID, and a message that hickory parses. Returns the parsed message.
pub fn check_client_answer(out: &[u8], id: u16) -> Message {
    assert!(
        out.len() >= HEADER_LEN,
        "answer shorter than a header: {out:02x?}"
    );
    assert!(flags_of(out) & QR != 0, "answer without QR: {out:02x?}");
    assert_eq!(id_of(out), id, "answer does not echo the client's ID");
    match Message::from_vec(out) {
        Ok(m) => m,
        Err(err) => panic!("hickory cannot parse our answer ({err}): {out:02x?}"),
    }
}
