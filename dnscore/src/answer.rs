//! A validated upstream answer, kept as wire bytes with the positions of its TTL fields, and
//! written out for each client by copying and patching: ID, flags, the client's question
//! (letter case included), counted-down TTLs, and an OPT record of our own (OPT is
//! hop-by-hop, RFC 6891 §6.1.1). Answers are parsed once, when they arrive; a cache hit
//! only copies.

use std::time::Duration;

use tokio::time::Instant;

use crate::query::Query;
use crate::wire::{
    HEADER_LEN, Header, MAX_TTL, Malformed, NameStarts, check_rdata_names, flag, get_u16, get_u32,
    rcode, read_record_tracked, rtype, set_u16, set_u32, skip_name_tracked, soa_negative_ttl,
    write_opt, write_opt_stale,
};

/// The TTL of a stale answer (RFC 8767 §4 recommends 30 s).
pub(crate) const STALE_TTL: u32 = 30;

/// Why an upstream packet is not an answer to what we sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResponseError {
    /// ID, QR, opcode or question differ from the query (RFC 5452 §9.1): a stray or forged
    /// packet. It is dropped and the wait for the real answer goes on.
    Mismatch,
    /// The packet matches but its records do not parse.
    Malformed,
    /// The question matches except for letter case, where the case was randomised (0x20)
    /// and must be echoed exactly: the upstream does not preserve case, or the packet is
    /// forged.
    CaseMismatch,
}

impl From<Malformed> for ResponseError {
    fn from(_: Malformed) -> Self {
        Self::Malformed
    }
}

/// What the caching policy needs to know about an answer, gathered while validating it.
/// Kept in 9 bytes (TTLs capped at 2^31-1, as the policy caps them, so `u32::MAX` can mean
/// none), since every cached entry carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Facts {
    /// Smallest TTL in the answer section; [`NO_TTL`] when it is empty.
    min_answer_ttl: u32,
    /// min(SOA TTL, SOA MINIMUM) of an SOA in the authority section (RFC 2308 §5);
    /// [`NO_TTL`] without one.
    negative_ttl: u32,
    /// The answer section holds a record of the asked type (or the question is ANY).
    has_qtype: bool,
}

/// [`Facts`]' "no TTL".
const NO_TTL: u32 = u32::MAX;

impl Default for Facts {
    fn default() -> Self {
        Self {
            min_answer_ttl: NO_TTL,
            negative_ttl: NO_TTL,
            has_qtype: false,
        }
    }
}

impl Facts {
    /// Smallest TTL in the answer section (capped at 2^31-1).
    pub(crate) fn min_answer_ttl(&self) -> Option<u32> {
        (self.min_answer_ttl != NO_TTL).then_some(self.min_answer_ttl)
    }

    /// The negative-caching TTL from the authority section's SOA (capped at 2^31-1).
    pub(crate) fn negative_ttl(&self) -> Option<u32> {
        (self.negative_ttl != NO_TTL).then_some(self.negative_ttl)
    }

    /// Whether the answer section holds a record of the asked type.
    pub(crate) fn has_qtype(&self) -> bool {
        self.has_qtype
    }
}

/// A validated upstream answer.
#[derive(Debug)]
pub(crate) struct Answer {
    /// Header, question and records, without the upstream's OPT record (the counts in the
    /// header match), then where each record's TTL field is in them (big-endian u16s): one
    /// allocation per entry, not two (48 bytes less per cached entry).
    bytes: Box<[u8]>,
    /// Where the message in `bytes` ends and the TTL offsets begin.
    message_len: u16,
    /// The minimal response (answer section, and the authority section's records but an
    /// NS set) as a prefix of `bytes`: where it ends, and its authority count; `None` when
    /// it is the whole answer.
    minimal: Option<(u16, u16)>,
    /// Full response code, extended bits included.
    pub(crate) rcode: u16,
    pub(crate) facts: Facts,
    /// When it arrived: TTLs count down from here.
    pub(crate) received: Instant,
}

impl Answer {
    /// Validates `resp` as the answer to `sent` (RFC 5452 §9.1: ID, QR=1, opcode and the
    /// whole question; the source address is checked by the connected socket) and keeps it.
    pub(crate) fn parse(
        sent: &[u8],
        resp: &[u8],
        received: Instant,
    ) -> Result<Self, ResponseError> {
        Self::parse_as(sent, resp, received, false)
    }

    /// Like [`parse`](Self::parse); with `exact_case` (a 0x20 query) the question must match
    /// letter for letter, and a match in all but case is [`ResponseError::CaseMismatch`].
    pub(crate) fn parse_as(
        sent: &[u8],
        resp: &[u8],
        received: Instant,
        exact_case: bool,
    ) -> Result<Self, ResponseError> {
        let sent_header = Header::read(sent)?;
        let header = Header::read(resp)?;
        if header.id != sent_header.id
            || header.flags & flag::QR == 0
            || header.flags & flag::OPCODE != 0
            || header.qdcount != 1
        {
            return Err(ResponseError::Mismatch);
        }
        let question_end = crate::wire::skip_name(sent, HEADER_LEN)? + 4;
        let mut starts = NameStarts::new(resp.len());
        let sent_question = &sent[HEADER_LEN..question_end];
        match resp.get(HEADER_LEN..question_end) {
            Some(q) if q == sent_question => {}
            // The name but for case; the type and class exactly (type 97 is not type 65).
            Some(q)
                if q[..q.len() - 4].eq_ignore_ascii_case(&sent_question[..q.len() - 4])
                    && q[q.len() - 4..] == sent_question[q.len() - 4..] =>
            {
                if exact_case {
                    return Err(ResponseError::CaseMismatch);
                }
            }
            _ => return Err(ResponseError::Mismatch),
        }
        skip_name_tracked(resp, HEADER_LEN, &mut starts)?;
        let qtype = crate::wire::u16_at(sent, question_end - 4)?;

        let mut facts = Facts::default();
        let mut ttl_offsets: smallvec::SmallVec<[u16; 16]> = smallvec::SmallVec::new();
        let mut pos = question_end;
        let mut end = question_end;
        let mut ext_rcode = 0u16;
        let mut arcount = 0u16;
        let mut nscount = 0u16;
        // Where the authority section's NS set begins (and the records before it), where
        // the additional section begins, and whether other records follow the NS set.
        let (mut ns_from, mut additional_from, mut mixed) = (None, None, false);
        let sections = [header.ancount, header.nscount, header.arcount];
        'sections: for (section, &count) in sections.iter().enumerate() {
            for _ in 0..count {
                let rr = read_record_tracked(resp, pos, &mut starts)?;
                check_rdata_names(resp, &rr, &mut starts)?;
                pos = rr.end;
                if matches!(rr.rtype, rtype::OPT | rtype::TSIG | rtype::TKEY) {
                    if section != 2 {
                        return Err(ResponseError::Malformed);
                    }
                    // OPT, TSIG and TKEY belong to the upstream's exchange, not the
                    // client's: drop them, and the additional records after them (a server
                    // puts OPT last but for a TSIG; additional data is optional). A TSIG
                    // passed on would be wrong for the client, and its name may point
                    // into the header, which the client's differs from.
                    if rr.rtype == rtype::OPT {
                        ext_rcode = u16::try_from(rr.ttl >> 24).unwrap_or(0) << 4;
                    }
                    break 'sections;
                }
                match section {
                    0 => {
                        facts.min_answer_ttl = facts.min_answer_ttl.min(rr.ttl.min(MAX_TTL));
                        if rr.rtype == qtype || qtype == rtype::ANY {
                            facts.has_qtype = true;
                        }
                    }
                    1 => {
                        if rr.rtype == rtype::SOA {
                            facts.negative_ttl = soa_negative_ttl(resp, &rr)?.min(MAX_TTL);
                        }
                        if crate::scrub::ns_or_its_rrsig(resp, &rr) {
                            ns_from = ns_from.or(Some((rr.start, nscount)));
                        } else if ns_from.is_some() {
                            mixed = true;
                        }
                        nscount += 1;
                    }
                    _ => {
                        additional_from = additional_from.or(Some(rr.start));
                        arcount += 1;
                    }
                }
                let offset = u16::try_from(rr.ttl_pos).map_err(|_| ResponseError::Malformed)?;
                ttl_offsets.push(offset);
                end = rr.end;
            }
        }

        let message_len = u16::try_from(end).map_err(|_| ResponseError::Malformed)?;
        let mut bytes = Vec::with_capacity(end + 2 * ttl_offsets.len());
        bytes.extend_from_slice(&resp[..end]);
        set_u16(&mut bytes, 10, arcount);
        for offset in ttl_offsets {
            bytes.extend_from_slice(&offset.to_be_bytes());
        }
        let minimal = match (mixed, ns_from, additional_from) {
            (true, _, _) => None,
            (false, Some((at, ns)), _) => Some((at, ns)),
            (false, None, Some(at)) => Some((at, nscount)),
            (false, None, None) => None,
        };
        let minimal = minimal
            .map(|(at, ns)| u16::try_from(at).map(|at| (at, ns)))
            .transpose()
            .map_err(|_| ResponseError::Malformed)?;
        Ok(Self {
            bytes: bytes.into_boxed_slice(),
            message_len,
            minimal,
            rcode: ext_rcode | (header.flags & flag::RCODE),
            facts,
            received,
        })
    }

    /// Keeps only what belongs to the question, with at most `max_rrsigs` RRSIGs per RRset
    /// (see `scrub`), and with `minimal_responses` serves clients that ask with RD the
    /// answer without the authority NS set and glue. Once, before the answer is cached.
    pub(crate) fn scrub(&mut self, max_rrsigs: usize, minimal_responses: bool) {
        match crate::scrub::scrub(self.message(), max_rrsigs) {
            Ok(Some(clean)) => {
                let question_end = crate::wire::skip_name(&clean, HEADER_LEN).map(|e| e + 4);
                let parsed = question_end
                    .map_err(ResponseError::from)
                    .and_then(|end| Self::parse(&clean[..end], &clean, self.received));
                match parsed {
                    Ok(clean) => {
                        let rcode = self.rcode;
                        *self = clean;
                        self.rcode = rcode;
                    }
                    // Not reached: the rewrite is of a validated answer. Served, not cached.
                    Err(why) => {
                        tracing::warn!(?why, "a scrubbed answer did not parse: not cached");
                        self.facts = Facts::default();
                    }
                }
            }
            Ok(None) => {}
            Err(_) => {
                tracing::warn!("an answer could not be scrubbed: not cached");
                self.facts = Facts::default();
            }
        }
        if !minimal_responses {
            self.minimal = None;
        }
    }

    /// Whether its question is `question` (a cache key's: the name lower-cased, type and
    /// class), but for the letter case of the name (which an upstream may change: 0x20).
    pub(crate) fn asks(&self, question: &[u8]) -> bool {
        let Some(name_len) = question.len().checked_sub(4) else {
            return false;
        };
        match self.message().get(HEADER_LEN..HEADER_LEN + question.len()) {
            // As sent (the key's letters), unless the upstream was asked with 0x20.
            Some(stored) if stored == question => true,
            // Label lengths (0..=63) are not letters: equal but for case means equal names.
            Some(stored) => {
                stored[..name_len].eq_ignore_ascii_case(&question[..name_len])
                    && stored[name_len..] == question[name_len..]
            }
            None => false,
        }
    }

    /// Length of its question section (name, type and class).
    pub(crate) fn question_len(&self) -> usize {
        crate::wire::skip_name(self.message(), HEADER_LEN).map_or(0, |end| end + 4 - HEADER_LEN)
    }

    /// The upstream's header flags.
    fn flags(&self) -> u16 {
        get_u16(self.message(), 2)
    }

    /// Whether the upstream set TC: the answer is partial.
    pub(crate) fn truncated(&self) -> bool {
        self.flags() & flag::TC != 0
    }

    /// Whether this is an answer to pass on (NOERROR or NXDOMAIN); anything else is an
    /// upstream failure.
    pub(crate) fn is_answer(&self) -> bool {
        matches!(self.rcode, rcode::NOERROR | rcode::NXDOMAIN)
    }

    /// The records of the answer section as `(ttl, address)`, when the section is in the
    /// common shape: every record an A or AAAA owned by the question's name (a compression
    /// pointer to it). TTLs as a client `age` after arrival would get them (30 when
    /// `stale`). `None` for any other shape (a CNAME, another type, an owner written out),
    /// which [`Resolver::lookup`](crate::Resolver::lookup) then decodes in full.
    pub(crate) fn simple_addresses(
        &self,
        age: Duration,
        stale: bool,
    ) -> Option<smallvec::SmallVec<[(u32, std::net::IpAddr); 4]>> {
        /// A compression pointer to offset 12: the question's name.
        const QUESTION_POINTER: [u8; 2] = [0xc0, HEADER_LEN as u8];
        let elapsed = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        let bytes = self.message();
        let mut pos = crate::wire::skip_name(bytes, HEADER_LEN).ok()? + 4;
        let mut out = smallvec::SmallVec::new();
        for _ in 0..get_u16(bytes, 6) {
            let fixed = bytes.get(pos..pos + 12)?;
            if fixed[..2] != QUESTION_POINTER {
                return None;
            }
            let (rtype, rdlen) = (get_u16(fixed, 2), usize::from(get_u16(fixed, 10)));
            let ttl = if stale {
                STALE_TTL
            } else {
                get_u32(fixed, 6).saturating_sub(elapsed)
            };
            let rdata = bytes.get(pos + 12..pos + 12 + rdlen)?;
            let ip = match (rtype, rdata.len()) {
                (rtype::A, 4) => std::net::IpAddr::from(<[u8; 4]>::try_from(rdata).ok()?),
                (rtype::AAAA, 16) => std::net::IpAddr::from(<[u8; 16]>::try_from(rdata).ok()?),
                _ => return None,
            };
            out.push((ttl, ip));
            pos += 12 + rdlen;
        }
        Some(out)
    }

    /// The stored answer (for the fuzz targets' checks).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn wire(&self) -> &[u8] {
        self.message()
    }

    /// Whether the question's name is `domain` or under it (`domain` in wire form, lower
    /// case).
    pub(crate) fn question_is_under(&self, domain: &[u8]) -> bool {
        crate::wire::name_is_under_domain(self.message(), HEADER_LEN, domain)
    }

    /// The stored message: header, question and records.
    fn message(&self) -> &[u8] {
        &self.bytes[..usize::from(self.message_len)]
    }

    /// Where each record's TTL field is in the message.
    fn ttl_offsets(&self) -> impl Iterator<Item = usize> + '_ {
        offsets(&self.bytes[usize::from(self.message_len)..])
    }

    /// Size of the stored answer in bytes (its TTL offsets included).
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Sets every record's TTL to `min(max(ttl, floor), ceiling)`, with `ttl` first capped
    /// at 2^31-1.
    pub(crate) fn set_ttls(&mut self, floor: u32, ceiling: u32) {
        let (message, offsets_bytes) = self.bytes.split_at_mut(usize::from(self.message_len));
        for pos in offsets(offsets_bytes) {
            let ttl = get_u32(message, pos).min(MAX_TTL).max(floor).min(ceiling);
            set_u32(message, pos, ttl);
        }
    }

    /// Writes the answer for `query` into `out`: the client's ID, RD and CD, our RA, the
    /// upstream's rcode and (when the client asked for DNSSEC) AD, the client's question,
    /// the records with TTLs counted down to `now`, and an OPT record if the client sent one.
    /// Over `limit` bytes the client gets the header and question with TC=1 instead.
    ///
    /// A `stale` answer (RFC 8767) carries TTL 30 on every record and, for a client that
    /// sent EDNS, an Extended DNS Error "Stale Answer" (RFC 8914).
    pub(crate) fn write_response(
        &self,
        query: &Query<'_>,
        now: Instant,
        limit: usize,
        stale: bool,
        out: &mut Vec<u8>,
    ) {
        let age = now.saturating_duration_since(self.received);
        self.write_aged(query, age, limit, stale, out);
    }

    /// As [`write_response`](Self::write_response), `age` after the answer arrived (a hit
    /// has measured it already: one clock subtraction per hit).
    pub(crate) fn write_aged(
        &self,
        query: &Query<'_>,
        age: Duration,
        limit: usize,
        stale: bool,
        out: &mut Vec<u8>,
    ) {
        let elapsed = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        let qflags = query.header.flags;
        let wants_ad = qflags & flag::AD != 0 || query.edns.is_some_and(|e| e.dnssec_ok);
        let ad = if wants_ad { self.flags() & flag::AD } else { 0 };
        let mut flags = flag::QR
            | (qflags & (flag::RD | flag::CD))
            | flag::RA
            | ad
            | (self.rcode & flag::RCODE);
        let question_end = query.question_end;
        let extra = match (query.edns, stale) {
            (None, _) => 0,
            (Some(_), false) => 11,
            (Some(_), true) => 17,
        };

        // A client asking with RD gets the minimal response, if shorter.
        let message = self.message();
        let (body, counts) = match self.minimal.filter(|_| qflags & flag::RD != 0) {
            Some((end, ns)) => (&message[..usize::from(end)], [get_u16(message, 6), ns, 0]),
            None => (
                message,
                [
                    get_u16(message, 6),
                    get_u16(message, 8),
                    get_u16(message, 10),
                ],
            ),
        };
        out.clear();
        if body.len() + extra > limit {
            flags |= flag::TC;
            write_header(out, query, flags, [0, 0, 0]);
            out.extend_from_slice(query.question());
        } else {
            out.reserve(body.len() + extra);
            write_header(out, query, flags, counts);
            out.extend_from_slice(query.question());
            // The stored question is the same name in another letter case: same length, so
            // every offset into the records (TTLs, compression pointers) still holds.
            out.extend_from_slice(&body[question_end..]);
            for pos in self.ttl_offsets() {
                if pos >= body.len() {
                    break;
                }
                let ttl = if stale {
                    STALE_TTL
                } else {
                    get_u32(out, pos).saturating_sub(elapsed)
                };
                set_u32(out, pos, ttl);
            }
        }
        if let Some(edns) = query.edns {
            let arcount = get_u16(out, 10).saturating_add(1);
            set_u16(out, 10, arcount);
            if stale {
                write_opt_stale(out, self.rcode, edns.dnssec_ok);
            } else {
                write_opt(out, self.rcode, edns.dnssec_ok);
            }
        }
    }
}

/// The TTL offsets stored after a message, as big-endian u16s.
fn offsets(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    bytes
        .chunks_exact(2)
        .map(|pair| usize::from(u16::from_be_bytes([pair[0], pair[1]])))
}

fn write_header(out: &mut Vec<u8>, query: &Query<'_>, flags: u16, counts: [u16; 3]) {
    Header {
        id: query.header.id,
        flags,
        qdcount: 1,
        ancount: counts[0],
        nscount: counts[1],
        arcount: counts[2],
    }
    .write(out);
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::time::Duration;

    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::rdata::TXT;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::*;
    use crate::fixtures::{a, client_query, exchange, response_to, soa};
    use crate::query::{self, Key};

    #[test]
    fn simple_addresses_are_read_in_place_and_other_shapes_left_alone() {
        let client = client_query("a.test.", RecordType::A, None);
        let records = vec![
            a("a.test.", 60, [192, 0, 2, 1]),
            a("a.test.", 30, [192, 0, 2, 2]),
        ];
        let (_, answer) = exchange(&client, records, ResponseCode::NoError);
        let got = answer
            .simple_addresses(Duration::from_secs(10), false)
            .unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            got.as_slice(),
            [(50, ip("192.0.2.1")), (20, ip("192.0.2.2"))]
        );
        let stale = answer
            .simple_addresses(Duration::from_secs(100), true)
            .unwrap();
        assert_eq!(
            stale.as_slice(),
            [(30, ip("192.0.2.1")), (30, ip("192.0.2.2"))]
        );
        let old = answer
            .simple_addresses(Duration::from_secs(100), false)
            .unwrap();
        assert_eq!(old[0].0, 0, "never below zero");

        // A CNAME chain, or a record of another type: not this path.
        let alias = client_query("alias.test.", RecordType::A, None);
        let target = Name::from_str("a.test.").unwrap();
        let chain = vec![
            Record::from_rdata(
                Name::from_str("alias.test.").unwrap(),
                60,
                RData::CNAME(hickory_proto::rr::rdata::CNAME(target)),
            ),
            a("a.test.", 60, [192, 0, 2, 1]),
        ];
        let (_, answer) = exchange(&alias, chain, ResponseCode::NoError);
        assert!(answer.simple_addresses(Duration::ZERO, false).is_none());
        let txt = client_query("t.test.", RecordType::TXT, None);
        let rec = Record::from_rdata(
            Name::from_str("t.test.").unwrap(),
            60,
            RData::TXT(TXT::new(vec!["x".into()])),
        );
        let (_, answer) = exchange(&txt, vec![rec], ResponseCode::NoError);
        assert!(answer.simple_addresses(Duration::ZERO, false).is_none());
        // NODATA: an empty list.
        let (_, answer) = exchange(&client, vec![], ResponseCode::NoError);
        assert!(
            answer
                .simple_addresses(Duration::ZERO, false)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn mismatched_packets_are_not_answers() {
        let client = client_query("a.test.", RecordType::A, None);
        let q = query::parse(&client).unwrap();
        let sent = Key(q.key.as_bytes()).upstream_query(0x1111);
        let good = response_to(
            &sent,
            ResponseCode::NoError,
            vec![a("a.test.", 60, [1, 2, 3, 4])],
            vec![],
        );
        let now = Instant::now();
        assert!(Answer::parse(&sent, &good, now).is_ok());

        let mut wrong_id = good.clone();
        wrong_id[0] ^= 1;
        assert_eq!(
            Answer::parse(&sent, &wrong_id, now).err(),
            Some(ResponseError::Mismatch)
        );
        let mut not_response = good.clone();
        not_response[2] &= 0x7f;
        assert_eq!(
            Answer::parse(&sent, &not_response, now).err(),
            Some(ResponseError::Mismatch)
        );
        let mut other_name = good.clone();
        other_name[13] = b'z';
        assert_eq!(
            Answer::parse(&sent, &other_name, now).err(),
            Some(ResponseError::Mismatch)
        );
        let mut other_type = good.clone();
        other_type[20] = 28;
        assert_eq!(
            Answer::parse(&sent, &other_type, now).err(),
            Some(ResponseError::Mismatch)
        );
        assert_eq!(
            Answer::parse(&sent, &good[..good.len() - 13], now).err(),
            Some(ResponseError::Malformed)
        );
        // Letter case may differ (0x20 or a server that lower-cases).
        let mut upper = good.clone();
        upper[13] = b'A';
        assert!(Answer::parse(&sent, &upper, now).is_ok());
        // ...but not the type's: HTTPS is 0x0041, "A"; 0x0061, "a", is another type.
        let client = client_query("a.test.", RecordType::HTTPS, None);
        let q = query::parse(&client).unwrap();
        let sent = Key(q.key.as_bytes()).upstream_query(0x1111);
        let mut https = response_to(&sent, ResponseCode::NoError, vec![], vec![]);
        assert!(Answer::parse(&sent, &https, now).is_ok());
        assert_eq!(https[21], b'A');
        https[21] = b'a';
        assert_eq!(
            Answer::parse(&sent, &https, now).err(),
            Some(ResponseError::Mismatch)
        );
    }

    #[test]
    fn written_answer_echoes_the_client_and_drops_the_upstream_opt() {
        let mut client = client_query("www.example.test.", RecordType::A, None);
        client[13..16].copy_from_slice(b"WWW");
        let (_, mut answer) = exchange(
            &client,
            vec![a("www.example.test.", 300, [192, 0, 2, 1])],
            ResponseCode::NoError,
        );
        answer.set_ttls(0, 300);
        let q = query::parse(&client).unwrap();
        let mut out = Vec::new();
        answer.write_response(
            &q,
            answer.received + Duration::from_secs(100),
            512,
            false,
            &mut out,
        );
        let msg = Message::from_vec(&out).unwrap();
        assert_eq!(msg.metadata.id, 0xbeef);
        assert!(msg.metadata.recursion_desired);
        assert_eq!(&out[12..q.question_end], q.question());
        assert_eq!(
            &out[12..16],
            b"\x03WWW",
            "the client's letter case is echoed"
        );
        assert_eq!(msg.answers.len(), 1);
        assert_eq!(msg.answers[0].ttl, 200, "TTL counts down");
        assert!(msg.edns.is_none(), "no OPT for a client that sent none");

        let with_edns = client_query("www.example.test.", RecordType::A, Some(4096));
        let q = query::parse(&with_edns).unwrap();
        answer.write_response(&q, answer.received, 4096, false, &mut out);
        let msg = Message::from_vec(&out).unwrap();
        assert_eq!(msg.edns.as_ref().map(|e| e.max_payload()), Some(1232));
        assert_eq!(msg.answers[0].ttl, 300);
    }

    #[test]
    fn oversized_udp_answer_is_truncated_for_the_client() {
        let client = client_query("big.test.", RecordType::TXT, None);
        let txt = |i: usize| {
            Record::from_rdata(
                Name::from_str("big.test.").unwrap(),
                60,
                RData::TXT(TXT::new(vec![format!("{i:0>100}")])),
            )
        };
        let (_, answer) = exchange(&client, (0..10).map(txt).collect(), ResponseCode::NoError);
        let q = query::parse(&client).unwrap();
        let mut out = Vec::new();
        answer.write_response(&q, answer.received, 512, false, &mut out);
        let msg = Message::from_vec(&out).unwrap();
        assert!(msg.metadata.truncation);
        assert!(msg.answers.is_empty());
        assert_eq!(msg.queries.len(), 1);
        answer.write_response(&q, answer.received, 65535, false, &mut out);
        let msg = Message::from_vec(&out).unwrap();
        assert!(!msg.metadata.truncation);
        assert_eq!(msg.answers.len(), 10);
    }

    #[test]
    fn soa_facts_are_gathered() {
        let client = client_query("nope.test.", RecordType::A, None);
        let q = query::parse(&client).unwrap();
        let sent = Key(q.key.as_bytes()).upstream_query(7);
        let resp = response_to(&sent, ResponseCode::NXDomain, vec![], vec![soa(300, 60)]);
        let answer = Answer::parse(&sent, &resp, Instant::now()).unwrap();
        assert_eq!(answer.rcode, rcode::NXDOMAIN);
        assert_eq!(answer.facts.negative_ttl(), Some(60));
        assert!(!answer.facts.has_qtype());
    }
}

#[cfg(test)]
mod proptests {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;
    use proptest::prelude::*;

    use super::*;
    use crate::fixtures::{a, client_query, response_to, soa};
    use crate::query::{self, Key};

    fn sent_and_valid() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let client = client_query("a.test.", RecordType::A, Some(1232));
        let q = query::parse(&client).unwrap();
        let sent = Key(q.key.as_bytes()).upstream_query(0x4242);
        let resp = response_to(
            &sent,
            ResponseCode::NoError,
            vec![
                a("a.test.", 60, [1, 2, 3, 4]),
                a("a.test.", 30, [5, 6, 7, 8]),
            ],
            vec![soa(300, 60)],
        );
        (client, sent, resp)
    }

    proptest! {
        /// Whatever an upstream sends, parsing it and writing it for a client never panics.
        #[test]
        fn arbitrary_upstream_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let (client, sent, _) = sent_and_valid();
            let q = query::parse(&client).unwrap();
            if let Ok(answer) = Answer::parse(&sent, &bytes, Instant::now()) {
                let mut out = Vec::new();
                answer.write_response(&q, Instant::now(), 512, false, &mut out);
            }
        }

        /// Corrupting bytes of a valid answer (past the ID) gives a mismatch, a malformed
        /// packet, or an answer that still writes out safely.
        #[test]
        fn corrupted_answers_never_panic(flips in proptest::collection::vec((2usize..200, any::<u8>()), 1..6)) {
            let (client, sent, mut resp) = sent_and_valid();
            for (pos, byte) in flips {
                let len = resp.len();
                resp[pos % len] = byte;
            }
            let q = query::parse(&client).unwrap();
            if let Ok(mut answer) = Answer::parse(&sent, &resp, Instant::now()) {
                let policy = crate::cache::TtlPolicy { min_ttl: 0, max_ttl: 86_400, negative_min_ttl: 0, negative_max_ttl: 3_600, cluster: None };
                prop_assert!(policy.apply(&mut answer) <= 86_400);
                let mut out = Vec::new();
                answer.write_response(&q, Instant::now(), 65_535, true, &mut out);
                prop_assert_eq!(&out[..2], &client[..2]);
            }
        }

        /// Whatever a client sends, reading it as a query never panics, and a reply written
        /// for a rejected query keeps the client's ID.
        #[test]
        fn arbitrary_client_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            match query::parse(&bytes) {
                Ok(q) => prop_assert!(q.question_end <= bytes.len()),
                Err(rejection) => {
                    let mut out = Vec::new();
                    if rejection.write(&bytes, &mut out) {
                        prop_assert_eq!(&out[..2], &bytes[..2]);
                        prop_assert!(out[2] & 0x80 != 0, "a reply has QR=1");
                    }
                }
            }
        }
    }
}
