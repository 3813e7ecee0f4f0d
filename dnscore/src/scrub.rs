//! Answer hygiene, once per upstream answer before it is cached (never on a hit): only what
//! belongs to the question is kept, and signatures are capped. Unbound's
//! `iterator/iter_scrub.c` (`scrub_normalize`) is the model; where a forwarder that does
//! not know the zone cut differs from an iterator, it says so below.
//!
//! - **Answer section**: the question's name and its CNAME chain, in order: a record is
//!   kept when its owner is the name the chain has reached (a CNAME there moves the chain
//!   on, the first one only), of the asked type (or any type for ANY), or an RRSIG over it;
//!   a DNAME whose owner is above that name is kept too. Anything else is dropped.
//! - **Authority section**: one SOA and one NS set whose owners are the question's name or
//!   the chain's end or above them; DNSSEC proofs (NSEC, NSEC3, DS, RRSIG) under the zone
//!   that SOA or NS names (all of them when neither is there: a wildcard answer carries
//!   only its NSEC). CNAME, DNAME, A, AAAA and any other type are dropped (Unbound keeps
//!   unknown types; a forwarder's clients have no use for them).
//! - **Additional section**: A and AAAA records (and their RRSIGs) for the targets of a kept
//!   NS, MX, SRV or KX record: glue. Anything else is dropped (Unbound keeps other types).
//! - At most `max_rrsigs` RRSIGs per RRset (owner, section and type covered), as Unbound
//!   does since 2026: a signature flood is an amplification and CPU vector for every
//!   validating client behind us.
//!
//! The kept records are written into a fresh message only when something was dropped or
//! moved: most answers (CoreDNS's) carry nothing to drop and are kept as they came. In the
//! rewritten message the authority section's NS set (with its RRSIGs) comes last, so that a
//! minimal response (see `Answer::write_response`) is a prefix of the stored answer.

use crate::wire::{
    HEADER_LEN, Header, Malformed, Record, labels, name_eq, name_is_under, push_u16, rdata_names,
    read_record, rtype, set_u16, skip_name, u16_at,
};

const ANSWER: u8 = 0;
const AUTHORITY: u8 = 1;
const ADDITIONAL: u8 = 2;

/// One record of the message and what becomes of it.
struct Entry {
    rr: Record,
    section: u8,
    keep: bool,
}

/// The records of `msg` (a validated answer without OPT) to keep, rewritten into a fresh
/// message; `None` when the message is already clean.
pub(crate) fn scrub(msg: &[u8], max_rrsigs: usize) -> Result<Option<Vec<u8>>, Malformed> {
    let header = Header::read(msg)?;
    let question_end = skip_name(msg, HEADER_LEN)? + 4;
    let qtype = u16_at(msg, question_end - 4)?;
    if header.arcount == 0
        && let Some(after) = plain_answer(msg, question_end, qtype)?
        && (header.nscount == 0 || (header.nscount == 1 && lone_soa(msg, after)?))
    {
        return Ok(None);
    }
    let mut entries = Vec::new();
    let mut pos = question_end;
    for (section, count) in [header.ancount, header.nscount, header.arcount]
        .into_iter()
        .enumerate()
    {
        for _ in 0..count {
            let rr = read_record(msg, pos)?;
            pos = rr.end;
            entries.push(Entry {
                rr,
                section: section as u8,
                keep: false,
            });
        }
    }

    // The answer section: the chain from the question's name.
    let mut chain = vec![HEADER_LEN];
    let mut glue_targets = Vec::new();
    for e in entries.iter_mut().filter(|e| e.section == ANSWER) {
        let here = *chain.last().unwrap_or(&HEADER_LEN);
        let owner = e.rr.start;
        e.keep = if e.rr.rtype == rtype::DNAME {
            name_is_under(msg, here, owner) && !name_eq(msg, here, owner)
        } else if !name_eq(msg, owner, here) {
            e.rr.rtype == rtype::RRSIG && chain.iter().any(|&c| name_eq(msg, owner, c))
        } else if e.rr.rtype == rtype::CNAME && qtype != rtype::CNAME {
            chain.push(e.rr.rdata);
            true
        } else {
            e.rr.rtype == qtype || qtype == rtype::ANY || e.rr.rtype == rtype::RRSIG
        };
        if e.keep {
            glue_targets.extend(target(&e.rr)?);
        }
    }
    let end = *chain.last().unwrap_or(&HEADER_LEN);
    let above_question =
        |owner: usize| name_is_under(msg, HEADER_LEN, owner) || name_is_under(msg, end, owner);

    // The authority section: one SOA, one NS set, then the proofs under their zone.
    let mut soa = None;
    let mut ns = None;
    for e in entries.iter_mut().filter(|e| e.section == AUTHORITY) {
        let owner = e.rr.start;
        let slot = match e.rr.rtype {
            rtype::SOA => &mut soa,
            rtype::NS => &mut ns,
            _ => continue,
        };
        e.keep = match *slot {
            None if above_question(owner) => {
                *slot = Some(owner);
                true
            }
            Some(first) => e.rr.rtype == rtype::NS && name_eq(msg, owner, first),
            None => false,
        };
        if e.keep && e.rr.rtype == rtype::NS {
            glue_targets.extend(target(&e.rr)?);
        }
    }
    let zone = soa.or(ns);
    for e in entries.iter_mut().filter(|e| e.section == AUTHORITY) {
        if matches!(
            e.rr.rtype,
            rtype::NSEC | rtype::NSEC3 | rtype::DS | rtype::RRSIG
        ) {
            e.keep = zone.is_none_or(|z| name_is_under(msg, e.rr.start, z));
        }
    }

    // The additional section: glue for what was kept.
    for e in entries.iter_mut().filter(|e| e.section == ADDITIONAL) {
        e.keep = matches!(e.rr.rtype, rtype::A | rtype::AAAA | rtype::RRSIG)
            && glue_targets.iter().any(|&t| name_eq(msg, e.rr.start, t));
    }

    cap_rrsigs(msg, &mut entries, max_rrsigs);

    // The authority section's NS set and its signatures last.
    let mut order: Vec<&Entry> = entries.iter().filter(|e| e.keep).collect();
    order.sort_by_key(|e| {
        (
            e.section,
            e.section == AUTHORITY && ns_or_its_rrsig(msg, &e.rr),
        )
    });
    let moved = order
        .iter()
        .zip(entries.iter().filter(|e| e.keep))
        .any(|(a, b)| a.rr.start != b.rr.start);
    if order.len() == entries.len() && !moved {
        return Ok(None);
    }
    rewrite(msg, question_end, &order).map(Some)
}

/// Where the answer section ends, if every record in it is of the asked type at the
/// question's name (most answers, and negative ones): found without allocating.
fn plain_answer(msg: &[u8], question_end: usize, qtype: u16) -> Result<Option<usize>, Malformed> {
    let mut pos = question_end;
    for _ in 0..u16_at(msg, 6)? {
        let rr = read_record(msg, pos)?;
        if rr.rtype != qtype || !name_eq(msg, rr.start, HEADER_LEN) {
            return Ok(None);
        }
        pos = rr.end;
    }
    Ok(Some(pos))
}

/// Whether the record at `pos` is an SOA at or above the question's name (the authority
/// section of most negative answers).
fn lone_soa(msg: &[u8], pos: usize) -> Result<bool, Malformed> {
    let rr = read_record(msg, pos)?;
    Ok(rr.rtype == rtype::SOA && name_is_under(msg, HEADER_LEN, rr.start))
}

/// The name in `rr`'s data that additional records may be glue for (NS, MX, SRV, KX).
fn target(rr: &Record) -> Result<Option<usize>, Malformed> {
    let offset = match rr.rtype {
        rtype::NS => 0,
        rtype::MX | rtype::KX => 2,
        rtype::SRV => 6,
        _ => return Ok(None),
    };
    let at = rr.rdata + offset;
    if at >= rr.end {
        return Err(Malformed);
    }
    Ok(Some(at))
}

/// Whether `rr` is an NS record or an RRSIG over one: in the authority section, what a
/// minimal response leaves out (stored last there, see `Answer::write_response`).
pub(crate) fn ns_or_its_rrsig(msg: &[u8], rr: &Record) -> bool {
    rr.rtype == rtype::NS || covered(msg, rr) == Some(rtype::NS)
}

/// The type an RRSIG covers.
fn covered(msg: &[u8], rr: &Record) -> Option<u16> {
    (rr.rtype == rtype::RRSIG)
        .then(|| u16_at(msg, rr.rdata).ok())
        .flatten()
}

/// Drops the RRSIGs past `max` of each RRset (owner, section, type covered).
fn cap_rrsigs(msg: &[u8], entries: &mut [Entry], max: usize) {
    // (section, type covered, owner's position, count): few RRsets per answer.
    let mut seen: Vec<(u8, u16, usize, usize)> = Vec::new();
    for e in entries.iter_mut().filter(|e| e.keep) {
        let Some(covers) = covered(msg, &e.rr) else {
            continue;
        };
        let owner = e.rr.start;
        match seen
            .iter_mut()
            .find(|s| s.0 == e.section && s.1 == covers && name_eq(msg, s.2, owner))
        {
            Some(s) => {
                s.3 += 1;
                e.keep = s.3 <= max;
            }
            None => {
                seen.push((e.section, covers, owner, 1));
                e.keep = max >= 1;
            }
        }
    }
}

/// Writes a message of the header and question of `msg` and the `records` in that order,
/// with names compressed afresh (owner names, and the names in the data of the types that
/// RFC 3597 §4 lets be compressed), so that no pointer can lead into a dropped record.
fn rewrite(msg: &[u8], question_end: usize, records: &[&Entry]) -> Result<Vec<u8>, Malformed> {
    let mut out = Vec::with_capacity(msg.len());
    out.extend_from_slice(msg.get(..question_end).ok_or(Malformed)?);
    let mut names = Names::default();
    names.learn(msg, HEADER_LEN, HEADER_LEN)?;
    let mut counts = [0u16; 3];
    for e in records {
        let rr = &e.rr;
        counts[usize::from(e.section)] += 1;
        names.write(msg, rr.start, &mut out, true)?;
        // type, class, TTL; the length is written once the data is.
        let fixed = rr.ttl_pos - 4;
        out.extend_from_slice(msg.get(fixed..fixed + 8).ok_or(Malformed)?);
        let len_at = out.len();
        out.extend_from_slice(&[0, 0]);
        match rdata_names(msg, rr)? {
            Some((prefix, count)) => {
                let compress = matches!(rr.rtype, 2..=9 | 12 | 14 | 15);
                let mut pos = rr.rdata + prefix;
                out.extend_from_slice(msg.get(rr.rdata..pos).ok_or(Malformed)?);
                for _ in 0..count {
                    pos = names.write(msg, pos, &mut out, compress)?;
                }
                out.extend_from_slice(msg.get(pos..rr.end).ok_or(Malformed)?);
            }
            None => out.extend_from_slice(msg.get(rr.rdata..rr.end).ok_or(Malformed)?),
        }
        let len = u16::try_from(out.len() - len_at - 2).map_err(|_| Malformed)?;
        set_u16(&mut out, len_at, len);
    }
    if out.len() > usize::from(u16::MAX) {
        return Err(Malformed);
    }
    for (i, count) in counts.into_iter().enumerate() {
        set_u16(&mut out, 6 + 2 * i, count);
    }
    Ok(out)
}

/// The names written so far, for compression: each suffix (in lower case, wire form) and
/// where it starts in the message being written.
#[derive(Default)]
struct Names(Vec<(Vec<u8>, u16)>);

impl Names {
    /// Remembers the suffixes of the name at `pos` in `msg`, written at `at`.
    fn learn(&mut self, msg: &[u8], pos: usize, at: usize) -> Result<(), Malformed> {
        let labels = labels(msg, pos)?;
        let mut at = at;
        for (i, label) in labels.iter().enumerate() {
            if let Ok(offset) = u16::try_from(at)
                && offset < 0x4000
            {
                self.0.push((suffix(&labels[i..]), offset));
            }
            at += 1 + label.len();
        }
        Ok(())
    }

    /// Writes the name at `pos` in `msg` into `out`, ending in a pointer to the longest
    /// suffix already written when `compress`; returns where the name ends in `msg`.
    fn write(
        &mut self,
        msg: &[u8],
        pos: usize,
        out: &mut Vec<u8>,
        compress: bool,
    ) -> Result<usize, Malformed> {
        let labels = labels(msg, pos)?;
        for i in 0..labels.len() {
            let tail = suffix(&labels[i..]);
            if compress && let Some(&(_, offset)) = self.0.iter().find(|(k, _)| *k == tail) {
                push_u16(out, 0xc000 | offset);
                return skip_name(msg, pos);
            }
            if let Ok(offset) = u16::try_from(out.len())
                && offset < 0x4000
            {
                self.0.push((tail, offset));
            }
            out.push(labels[i].len() as u8);
            out.extend_from_slice(labels[i]);
        }
        out.push(0);
        skip_name(msg, pos)
    }
}

/// The wire form of `labels`, in lower case.
fn suffix(labels: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for label in labels {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::{A, CNAME, NS, NULL};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::*;

    fn name(n: &str) -> Name {
        Name::from_ascii(n).unwrap()
    }

    fn a(owner: &str) -> Record {
        Record::from_rdata(name(owner), 60, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))))
    }

    fn rrsig(owner: &str, tag: u8) -> Record {
        let mut data = vec![0, 1, 13, 2, 0, 0, 0, 60];
        data.extend_from_slice(&[0; 8]);
        data.extend_from_slice(&[0, tag]);
        data.extend_from_slice(b"\x04test\x00");
        data.extend_from_slice(&[tag; 32]);
        Record::from_rdata(
            name(owner),
            60,
            RData::Unknown {
                code: RecordType::RRSIG,
                rdata: NULL::with(data),
            },
        )
    }

    fn response(qname: &str, answers: Vec<Record>, authority: Vec<Record>) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(name(qname), RecordType::A));
        m.add_answers(answers);
        m.add_authorities(authority);
        m.to_vec().unwrap()
    }

    #[test]
    fn a_clean_answer_is_left_as_it_came() {
        let plain = response("a.test.", vec![a("a.test."), a("a.test.")], vec![]);
        assert_eq!(scrub(&plain, 8), Ok(None));
        let cname = Record::from_rdata(name("www.test."), 60, RData::CNAME(CNAME(name("a.test."))));
        let chain = response(
            "www.test.",
            vec![cname, a("a.test."), rrsig("a.test.", 1)],
            vec![],
        );
        assert_eq!(scrub(&chain, 8), Ok(None));
    }

    #[test]
    fn what_is_kept_is_rewritten_compressed_and_reads_back() {
        let ns = Record::from_rdata(name("test."), 60, RData::NS(NS(name("ns1.test."))));
        let msg = response(
            "a.test.",
            vec![
                a("a.test."),
                a("evil.example."),
                rrsig("a.test.", 1),
                rrsig("a.test.", 2),
            ],
            vec![ns.clone(), a("glue.test.")],
        );
        let clean = scrub(&msg, 1).unwrap().expect("something to drop");
        let read = Message::from_vec(&clean).unwrap();
        let owners: Vec<String> = read.answers.iter().map(|r| r.name.to_ascii()).collect();
        assert_eq!(owners, ["a.test.", "a.test."], "one A and one RRSIG");
        assert_eq!(read.authorities, vec![ns]);
        assert!(read.additionals.is_empty());
        // Owners point to the question; the NS target shares "test." with it.
        assert!(clean.len() < msg.len(), "{} < {}", clean.len(), msg.len());
        assert_eq!(scrub(&clean, 1), Ok(None), "scrubbed once for all");
    }

    #[test]
    fn no_signature_is_kept_with_a_cap_of_zero() {
        let msg = response("a.test.", vec![a("a.test."), rrsig("a.test.", 1)], vec![]);
        let clean = scrub(&msg, 0).unwrap().expect("the RRSIG goes");
        let read = Message::from_vec(&clean).unwrap();
        assert_eq!(read.answers.len(), 1);
        assert_eq!(read.answers[0].record_type(), RecordType::A);
    }
}
