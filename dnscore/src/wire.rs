//! DNS wire format: the few fields the hot path needs, read in place without building a
//! `Message` (RFC 1035 §4). Everything here is bounds-checked and returns
//! [`Malformed`] instead of panicking, whatever the bytes.

/// Length of the fixed DNS header (RFC 1035 §4.1.1).
pub(crate) const HEADER_LEN: usize = 12;
/// Longest name on the wire, length octets included (RFC 1035 §2.3.4).
pub(crate) const MAX_NAME_LEN: usize = 255;
/// Largest DNS message without EDNS over UDP (RFC 1035 §2.3.4).
pub(crate) const CLASSIC_UDP_SIZE: u16 = 512;
/// The EDNS buffer size we advertise, upstream and to clients (DNS Flag Day 2020, RFC 9715).
pub(crate) const EDNS_UDP_SIZE: u16 = 1232;
/// Largest DNS message over TCP (two-byte length prefix, RFC 1035 §4.2.2).
pub(crate) const MAX_MESSAGE_LEN: usize = 65535;
/// Largest TTL a cache may hand out (RFC 2181 §8: values with the top bit set are invalid).
pub(crate) const MAX_TTL: u32 = i32::MAX as u32;

/// Record types by number (IANA registry); public as `dnscore::message::rtype`.
pub mod rtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// Name server.
    pub const NS: u16 = 2;
    /// Alias.
    pub const CNAME: u16 = 5;
    /// Start of authority.
    pub const SOA: u16 = 6;
    /// Domain name pointer.
    pub const PTR: u16 = 12;
    /// Host information (CoreDNS's `loop` plugin asks for it).
    pub const HINFO: u16 = 13;
    /// Mail exchange.
    pub const MX: u16 = 15;
    /// Text.
    pub const TXT: u16 = 16;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// Service locator.
    pub const SRV: u16 = 33;
    /// Key exchanger.
    pub const KX: u16 = 36;
    /// Subtree alias (RFC 6672).
    pub const DNAME: u16 = 39;
    /// EDNS (RFC 6891).
    pub const OPT: u16 = 41;
    /// Delegation signer.
    pub const DS: u16 = 43;
    /// DNSSEC signature.
    pub const RRSIG: u16 = 46;
    /// DNSSEC denial of existence.
    pub const NSEC: u16 = 47;
    /// DNSSEC hashed denial of existence.
    pub const NSEC3: u16 = 50;
    /// HTTPS service binding (RFC 9460).
    pub const HTTPS: u16 = 65;
    /// Transaction key (RFC 2930): a meta-record of one exchange.
    pub const TKEY: u16 = 249;
    /// Transaction signature (RFC 8945): a meta-record of one exchange.
    pub const TSIG: u16 = 250;
    /// Incremental zone transfer.
    pub const IXFR: u16 = 251;
    /// Zone transfer.
    pub const AXFR: u16 = 252;
    /// Mailbox records (obsolete).
    pub const MAILB: u16 = 253;
    /// Mail agent records (obsolete).
    pub const MAILA: u16 = 254;
    /// Any type.
    pub const ANY: u16 = 255;
}

/// Response codes (RFC 1035 §4.1.1, RFC 2136, RFC 6891 §9 for BADVERS); public as
/// `dnscore::message::rcode`.
pub mod rcode {
    /// No error.
    pub const NOERROR: u16 = 0;
    /// Format error.
    pub const FORMERR: u16 = 1;
    /// Server failure.
    pub const SERVFAIL: u16 = 2;
    /// The name does not exist.
    pub const NXDOMAIN: u16 = 3;
    /// Not implemented.
    pub const NOTIMP: u16 = 4;
    /// Refused.
    pub const REFUSED: u16 = 5;
    /// Bad OPT version (extended).
    pub const BADVERS: u16 = 16;
}

/// Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.2 for AD/CD).
pub(crate) mod flag {
    pub(crate) const QR: u16 = 0x8000;
    pub(crate) const OPCODE: u16 = 0x7800;
    pub(crate) const TC: u16 = 0x0200;
    pub(crate) const RD: u16 = 0x0100;
    pub(crate) const RA: u16 = 0x0080;
    pub(crate) const AD: u16 = 0x0020;
    pub(crate) const CD: u16 = 0x0010;
    pub(crate) const RCODE: u16 = 0x000f;
}

/// The DO bit in the OPT record's TTL field (RFC 3225).
pub(crate) const EDNS_DO: u32 = 0x8000;

/// The bytes do not form a valid DNS message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Malformed;

/// Reads a big-endian u16 at `pos`.
#[inline]
pub(crate) fn u16_at(msg: &[u8], pos: usize) -> Result<u16, Malformed> {
    match msg.get(pos..pos + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(Malformed),
    }
}

/// Reads a big-endian u32 at `pos`.
#[inline]
pub(crate) fn u32_at(msg: &[u8], pos: usize) -> Result<u32, Malformed> {
    match msg.get(pos..pos + 4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(Malformed),
    }
}

/// Reads a big-endian u16 at `pos` of a message already checked to hold it (a stored
/// answer, a parsed query); 0 if it does not, never a panic.
#[inline]
pub(crate) fn get_u16(msg: &[u8], pos: usize) -> u16 {
    u16_at(msg, pos).unwrap_or(0)
}

/// Reads a big-endian u32 as [`get_u16`] does.
#[inline]
pub(crate) fn get_u32(msg: &[u8], pos: usize) -> u32 {
    u32_at(msg, pos).unwrap_or(0)
}

/// Writes a big-endian u16 at `pos`; `pos + 2` must be in bounds (callers write only
/// into headers they have already length-checked).
#[inline]
pub(crate) fn set_u16(msg: &mut [u8], pos: usize, v: u16) {
    msg[pos..pos + 2].copy_from_slice(&v.to_be_bytes());
}

/// Writes a big-endian u32 at `pos`, as [`set_u16`] does.
#[inline]
pub(crate) fn set_u32(msg: &mut [u8], pos: usize, v: u32) {
    msg[pos..pos + 4].copy_from_slice(&v.to_be_bytes());
}

/// Appends a big-endian u16.
#[inline]
pub(crate) fn push_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// The fixed header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) id: u16,
    pub(crate) flags: u16,
    pub(crate) qdcount: u16,
    pub(crate) ancount: u16,
    pub(crate) nscount: u16,
    pub(crate) arcount: u16,
}

impl Header {
    /// Reads the header, or `Malformed` when the message is shorter than 12 bytes.
    #[inline]
    pub(crate) fn read(msg: &[u8]) -> Result<Self, Malformed> {
        if msg.len() < HEADER_LEN {
            return Err(Malformed);
        }
        Ok(Self {
            id: u16_at(msg, 0)?,
            flags: u16_at(msg, 2)?,
            qdcount: u16_at(msg, 4)?,
            ancount: u16_at(msg, 6)?,
            nscount: u16_at(msg, 8)?,
            arcount: u16_at(msg, 10)?,
        })
    }

    /// Appends the header to `out`, built whole and appended once: one capacity check, not
    /// six (a cache hit writes one).
    #[inline]
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let mut bytes = [0u8; HEADER_LEN];
        for (chunk, v) in bytes.chunks_exact_mut(2).zip([
            self.id,
            self.flags,
            self.qdcount,
            self.ancount,
            self.nscount,
            self.arcount,
        ]) {
            chunk.copy_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&bytes);
    }
}

/// Whether the name at `pos`, uncompressed (as a question is), is `domain` or a name under
/// it: `domain` in wire form, in lower case, ending with the root's zero byte. Compared
/// label by label, so `xcluster.local` is not under `cluster.local`; a compression pointer
/// or a name that runs off the message is not under anything.
pub(crate) fn name_is_under_domain(msg: &[u8], pos: usize, domain: &[u8]) -> bool {
    let mut label = pos;
    loop {
        let Some(rest) = msg.get(label..) else {
            return false;
        };
        // Length bytes are below 64, so ASCII case folding leaves them alone.
        if rest.len() >= domain.len() && rest[..domain.len()].eq_ignore_ascii_case(domain) {
            return true;
        }
        match rest.first() {
            Some(&len @ 1..=63) => label += 1 + usize::from(len),
            _ => return false,
        }
    }
}

/// Walks a possibly compressed name that starts at `pos` and returns the position just
/// after it in the message. Compression pointers must point strictly backwards (RFC 1035
/// §4.1.4: "a prior occurrence"), which also bounds the walk, and never into the header
/// (no name lives there, and answers get a header of our own); the expanded name may not
/// exceed 255 octets.
pub(crate) fn skip_name(msg: &[u8], pos: usize) -> Result<usize, Malformed> {
    walk_name(msg, pos, None)
}

/// The positions in a message where a label of a name starts: the only places a
/// compression pointer may lead to. Built while a message is read front to back (pointers
/// only lead backwards), so that a pointer into a TTL, a type or the data of an address is
/// refused: answers are copied to clients with TTLs rewritten, and such a pointer would read
/// differently there. On the stack for messages of up to 512 bytes (most answers): one
/// allocation less per miss.
pub(crate) struct NameStarts(smallvec::SmallVec<[bool; 512]>);

impl NameStarts {
    pub(crate) fn new(len: usize) -> Self {
        Self(smallvec::smallvec![false; len])
    }
}

/// Like [`skip_name`], and every pointer must lead to a label start recorded in `starts`;
/// the labels of this name are recorded there too.
pub(crate) fn skip_name_tracked(
    msg: &[u8],
    pos: usize,
    starts: &mut NameStarts,
) -> Result<usize, Malformed> {
    walk_name(msg, pos, Some(starts))
}

fn walk_name(
    msg: &[u8],
    mut pos: usize,
    mut starts: Option<&mut NameStarts>,
) -> Result<usize, Malformed> {
    let mut end = None;
    let mut len = 0usize;
    let mut limit = pos;
    loop {
        let b = *msg.get(pos).ok_or(Malformed)?;
        match b & 0xc0 {
            0x00 => {
                if end.is_none()
                    && let Some(starts) = starts.as_deref_mut()
                    && let Some(slot) = starts.0.get_mut(pos)
                {
                    *slot = true;
                }
                let l = usize::from(b);
                len += l + 1;
                if len > MAX_NAME_LEN {
                    return Err(Malformed);
                }
                if l == 0 {
                    return Ok(end.unwrap_or(pos + 1));
                }
                pos += 1 + l;
            }
            0xc0 => {
                let target = usize::from(u16_at(msg, pos)? & 0x3fff);
                if end.is_none() {
                    end = Some(pos + 2);
                }
                if target >= limit || target < HEADER_LEN {
                    return Err(Malformed);
                }
                if let Some(starts) = starts.as_deref()
                    && !starts.0.get(target).copied().unwrap_or(false)
                {
                    return Err(Malformed);
                }
                limit = target;
                pos = target;
            }
            // 0x40 (extended label types, RFC 6891 §5) and 0x80 are not in use.
            _ => return Err(Malformed),
        }
    }
}

/// One resource record's framing, as positions in the message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    /// Where the owner name starts.
    pub(crate) start: usize,
    pub(crate) rtype: u16,
    pub(crate) class: u16,
    /// Where the 4-byte TTL field is.
    pub(crate) ttl_pos: usize,
    pub(crate) ttl: u32,
    /// Where the RDATA starts.
    pub(crate) rdata: usize,
    /// Just past the record.
    pub(crate) end: usize,
}

/// Reads the framing of the record at `pos`, checking that it lies inside the message.
pub(crate) fn read_record(msg: &[u8], pos: usize) -> Result<Record, Malformed> {
    record_after_name(msg, pos, skip_name(msg, pos)?)
}

/// Like [`read_record`], with the owner name checked and recorded in `starts`.
pub(crate) fn read_record_tracked(
    msg: &[u8],
    pos: usize,
    starts: &mut NameStarts,
) -> Result<Record, Malformed> {
    record_after_name(msg, pos, skip_name_tracked(msg, pos, starts)?)
}

fn record_after_name(msg: &[u8], pos: usize, after_name: usize) -> Result<Record, Malformed> {
    let rtype = u16_at(msg, after_name)?;
    let class = u16_at(msg, after_name + 2)?;
    let ttl = u32_at(msg, after_name + 4)?;
    let rdlen = usize::from(u16_at(msg, after_name + 8)?);
    let rdata = after_name + 10;
    let end = rdata + rdlen;
    if end > msg.len() {
        return Err(Malformed);
    }
    Ok(Record {
        start: pos,
        rtype,
        class,
        ttl_pos: after_name + 4,
        ttl,
        rdata,
        end,
    })
}

/// Checks the names inside the RDATA of the types whose names may be compressed (RFC 3597
/// §4, and the later types that old servers compress anyway): each must be well formed, and
/// the names and fixed fields must fill the RDATA exactly. Answers are copied to clients
/// verbatim, so a pointer in them must not lead anywhere but to an earlier name.
pub(crate) fn check_rdata_names(
    msg: &[u8],
    rr: &Record,
    starts: &mut NameStarts,
) -> Result<(), Malformed> {
    let Some((prefix, names, suffix)) = rdata_layout(msg, rr)? else {
        return Ok(());
    };
    let mut pos = rr.rdata + prefix;
    for _ in 0..names {
        if pos >= rr.end {
            return Err(Malformed);
        }
        pos = skip_name_tracked(msg, pos, starts)?;
    }
    match suffix {
        Some(fixed) if pos + fixed != rr.end => Err(Malformed),
        None if pos > rr.end => Err(Malformed),
        _ => Ok(()),
    }
}

/// Where the names are in the RDATA of a record whose type holds names (those of
/// [`check_rdata_names`]): the fixed bytes before them and how many there are; `None` for
/// other types.
pub(crate) fn rdata_names(msg: &[u8], rr: &Record) -> Result<Option<(usize, usize)>, Malformed> {
    Ok(rdata_layout(msg, rr)?.map(|(prefix, names, _)| (prefix, names)))
}

/// (fixed bytes before the names, names, fixed bytes after them; None: any), or `None`
/// for a type without names.
fn rdata_layout(
    msg: &[u8],
    rr: &Record,
) -> Result<Option<(usize, usize, Option<usize>)>, Malformed> {
    Ok(Some(match rr.rtype {
        // NS, MD, MF, CNAME, MB, MG, MR, PTR, DNAME
        2 | 3 | 4 | 5 | 7 | 8 | 9 | 12 | 39 => (0, 1, Some(0)),
        // SOA: two names, then serial, refresh, retry, expire, minimum
        6 => (0, 2, Some(20)),
        // MINFO, RP
        14 | 17 => (0, 2, Some(0)),
        // MX, AFSDB, RT, KX: preference, name
        15 | 18 | 21 | 36 => (2, 1, Some(0)),
        // PX: preference, two names
        26 => (2, 2, Some(0)),
        // SRV: priority, weight, port, target
        33 => (6, 1, Some(0)),
        // SVCB, HTTPS: priority, target (never compressed, RFC 9460 §2.2), parameters
        64 | 65 => (2, 1, None),
        // SIG, RRSIG: type covered, algorithm, labels, original TTL, expiration, inception,
        // key tag; the signer's name (never compressed, RFC 4034 §3.1.7); the signature
        24 | 46 => (18, 1, None),
        // NSEC: the next owner name (never compressed, RFC 4034 §4.1.1), the type bitmaps
        47 => (0, 1, None),
        // NAPTR: order, preference, three character-strings, the replacement name
        35 => (naptr_prefix(msg, rr)?, 1, Some(0)),
        _ => return Ok(None),
    }))
}

/// The label of the name at `pos` (pointers followed) and where the next one is; `None`
/// at the root. `hops` bounds the pointers followed.
fn next_label<'m>(
    msg: &'m [u8],
    mut pos: usize,
    hops: &mut usize,
) -> Result<Option<(&'m [u8], usize)>, Malformed> {
    loop {
        let b = *msg.get(pos).ok_or(Malformed)?;
        match b & 0xc0 {
            0x00 if b == 0 => return Ok(None),
            0x00 => {
                let end = pos + 1 + usize::from(b);
                return Ok(Some((msg.get(pos + 1..end).ok_or(Malformed)?, end)));
            }
            0xc0 => {
                *hops += 1;
                if *hops > MAX_NAME_LEN / 2 {
                    return Err(Malformed);
                }
                pos = usize::from(u16_at(msg, pos)? & 0x3fff);
            }
            _ => return Err(Malformed),
        }
    }
}

/// The labels of the name at `pos`, first to last.
pub(crate) fn labels(msg: &[u8], mut pos: usize) -> Result<Vec<&[u8]>, Malformed> {
    let (mut out, mut hops) = (Vec::new(), 0);
    while let Some((label, next)) = next_label(msg, pos, &mut hops)? {
        out.push(label);
        pos = next;
    }
    Ok(out)
}

/// Whether the names at `a` and `b` are the same, ignoring ASCII case (false if either is
/// malformed).
pub(crate) fn name_eq(msg: &[u8], mut a: usize, mut b: usize) -> bool {
    let (mut hops_a, mut hops_b) = (0, 0);
    loop {
        if a == b {
            return true;
        }
        match (
            next_label(msg, a, &mut hops_a),
            next_label(msg, b, &mut hops_b),
        ) {
            (Ok(None), Ok(None)) => return true,
            (Ok(Some((la, na))), Ok(Some((lb, nb)))) if la.eq_ignore_ascii_case(lb) => {
                (a, b) = (na, nb);
            }
            _ => return false,
        }
    }
}

/// Whether the name at `child` is the name at `parent` or below it, ignoring ASCII case.
pub(crate) fn name_is_under(msg: &[u8], child: usize, parent: usize) -> bool {
    let count = |mut pos: usize| -> Option<usize> {
        let (mut n, mut hops) = (0, 0);
        while let Some((_, next)) = next_label(msg, pos, &mut hops).ok()? {
            (n, pos) = (n + 1, next);
        }
        Some(n)
    };
    let (Some(below), Some(above)) = (count(child), count(parent)) else {
        return false;
    };
    // Skip the child's labels that the parent does not have, then compare the rest.
    let (mut pos, mut hops) = (child, 0);
    for _ in 0..below.saturating_sub(above) {
        match next_label(msg, pos, &mut hops) {
            Ok(Some((_, next))) => pos = next,
            _ => return false,
        }
    }
    below >= above && name_eq(msg, pos, parent)
}

/// The bytes of a NAPTR record's RDATA before its replacement name: order and preference,
/// then the flags, services and regexp character-strings (RFC 3403 §4.1).
fn naptr_prefix(msg: &[u8], rr: &Record) -> Result<usize, Malformed> {
    let mut pos = rr.rdata + 4;
    for _ in 0..3 {
        let len = *msg.get(pos).filter(|_| pos < rr.end).ok_or(Malformed)?;
        pos += 1 + usize::from(len);
    }
    Ok(pos - rr.rdata)
}

/// The negative-caching TTL of an SOA record: min(SOA TTL, SOA MINIMUM) (RFC 2308 §5).
pub(crate) fn soa_negative_ttl(msg: &[u8], soa: &Record) -> Result<u32, Malformed> {
    let after_mname = skip_name(msg, soa.rdata)?;
    let after_rname = skip_name(msg, after_mname)?;
    // serial, refresh, retry, expire, minimum
    if after_rname + 20 > soa.end {
        return Err(Malformed);
    }
    let minimum = u32_at(msg, after_rname + 16)?;
    Ok(soa.ttl.min(minimum))
}

/// EDNS parameters of a client's query (RFC 6891 §6.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Edns {
    /// The client's UDP payload size, raised to 512 if it said less.
    pub(crate) udp_size: u16,
    /// DNSSEC OK.
    pub(crate) dnssec_ok: bool,
}

/// Appends an OPT pseudo-record with our buffer size, the upper 8 bits of `rcode`, version 0
/// and the DO bit.
pub(crate) fn write_opt(out: &mut Vec<u8>, rcode: u16, dnssec_ok: bool) {
    let ext = (rcode >> 4) as u8;
    let do_byte = if dnssec_ok { 0x80 } else { 0 };
    let [opt_hi, opt_lo] = rtype::OPT.to_be_bytes();
    let [size_hi, size_lo] = EDNS_UDP_SIZE.to_be_bytes();
    // Root owner name, type, class (our buffer), TTL (extended rcode, version 0, DO), no
    // options: appended once.
    out.extend_from_slice(&[
        0, opt_hi, opt_lo, size_hi, size_lo, ext, 0, do_byte, 0, 0, 0,
    ]);
}

/// Extended DNS Error option (RFC 8914): code 15, INFO-CODE 3 "Stale Answer".
const EDE_STALE_ANSWER: [u8; 6] = [0, 15, 0, 2, 0, 3];

/// Like [`write_opt`], with an Extended DNS Error "Stale Answer" option (RFC 8767 §6).
pub(crate) fn write_opt_stale(out: &mut Vec<u8>, rcode: u16, dnssec_ok: bool) {
    write_opt(out, rcode, dnssec_ok);
    let len = out.len();
    out[len - 2..].copy_from_slice(&(EDE_STALE_ANSWER.len() as u16).to_be_bytes());
    out.extend_from_slice(&EDE_STALE_ANSWER);
}

/// Writes a reply that carries only a response code: the client's ID, opcode, RD and CD
/// echoed, the question echoed when `question` is the client's question section, and an OPT
/// record when the client sent one.
pub(crate) fn write_rcode_reply(
    header: &Header,
    rcode: u16,
    question: Option<&[u8]>,
    edns: Option<Edns>,
    out: &mut Vec<u8>,
) {
    out.clear();
    let flags = flag::QR
        | (header.flags & (flag::OPCODE | flag::RD | flag::CD))
        | flag::RA
        | (rcode & flag::RCODE);
    Header {
        id: header.id,
        flags,
        qdcount: u16::from(question.is_some()),
        ancount: 0,
        nscount: 0,
        arcount: u16::from(edns.is_some()),
    }
    .write(out);
    if let Some(q) = question {
        out.extend_from_slice(q);
    }
    if let Some(e) = edns {
        write_opt(out, rcode, e.dnssec_ok);
    }
}

/// Randomises the letter case of the question name of `msg` (a query we built: the name
/// starts right after the header, uncompressed), for 0x20 (draft-vixie-dnsext-dns0x20):
/// each letter is flipped with probability one half, adding a bit per letter that an
/// off-path spoofer must guess.
pub(crate) fn randomize_case(msg: &mut [u8]) {
    let mut pos = HEADER_LEN;
    let mut bits: u64 = rand::random();
    let mut left = 64;
    while let Some(&len) = msg.get(pos) {
        let len = usize::from(len);
        if len == 0 || len > 63 {
            break;
        }
        let end = (pos + 1 + len).min(msg.len());
        for byte in &mut msg[pos + 1..end] {
            if byte.is_ascii_alphabetic() {
                if left == 0 {
                    bits = rand::random();
                    left = 64;
                }
                if bits & 1 == 1 {
                    *byte ^= 0x20;
                }
                bits >>= 1;
                left -= 1;
            }
        }
        pos = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_under_a_domain_go_by_whole_labels() {
        let domain = b"\x07cluster\x05local\x00";
        let mut msg = vec![0u8; 12];
        msg.extend_from_slice(b"\x01a\x07Cluster\x05LOCAL\x00");
        assert!(name_is_under_domain(&msg, 12, domain));
        assert!(name_is_under_domain(&msg, 14, domain), "the domain itself");
        for other in [
            &b"\x08xcluster\x05local\x00"[..],
            b"\x07cluster\x05local\x03com\x00",
            b"\x05local\x00",
            b"\x00",
            b"\x01a\xc0\x0c",           // a pointer: not a question's name
            b"\x01a\x07cluster\x05loc", // runs off the message
            b"\x08a\x07clus",           // a label past the end
        ] {
            let mut msg = vec![0u8; 12];
            msg.extend_from_slice(other);
            assert!(!name_is_under_domain(&msg, 12, domain), "{other:?}");
        }
        assert!(!name_is_under_domain(&msg, 99, domain));
    }

    #[test]
    fn names_compare_across_pointers_and_case() {
        // header, then "a.Test." at 12, "b" + pointer to "Test." at 21, "test." at 25.
        let mut msg = vec![0u8; 12];
        msg.extend_from_slice(b"\x01a\x04Test\x00");
        msg.extend_from_slice(b"\x01b\xc0\x0e");
        msg.extend_from_slice(b"\x04test\x00");
        let (a_test, b_test, test, test_at_14) = (12, 20, 24, 14);
        assert!(name_eq(&msg, test, test_at_14), "case ignored");
        assert!(!name_eq(&msg, a_test, b_test));
        assert!(name_is_under(&msg, b_test, test), "through the pointer");
        assert!(name_is_under(&msg, a_test, a_test));
        assert!(
            !name_is_under(&msg, test, a_test),
            "the parent is not under its child"
        );
        assert!(!name_is_under(&msg, a_test, b_test));
        assert!(!name_eq(&msg, 200, 12), "out of bounds: not equal");
    }

    #[test]
    fn skip_name_follows_backward_pointers_only() {
        // header, then "a" + pointer to 12 (itself: forward/self -> invalid)
        let mut msg = vec![0u8; 12];
        msg.extend_from_slice(&[1, b'a', 0]); // 12..15: "a."
        msg.extend_from_slice(&[1, b'b', 0xc0, 12]); // 15..19: "b.a."
        assert_eq!(skip_name(&msg, 12), Ok(15));
        assert_eq!(skip_name(&msg, 15), Ok(19));
        // a pointer into the header: rejected
        let mut header = vec![0u8; 12];
        header.extend_from_slice(&[1, b'a', 0xc0, 3]);
        assert_eq!(skip_name(&header, 12), Err(Malformed));
        // a pointer to itself loops: rejected
        let mut looped = vec![0u8; 12];
        looped.extend_from_slice(&[0xc0, 12]);
        assert_eq!(skip_name(&looped, 12), Err(Malformed));
        // two pointers pointing at each other
        let mut pair = vec![0u8; 12];
        pair.extend_from_slice(&[0xc0, 14, 0xc0, 12]);
        assert_eq!(skip_name(&pair, 12), Err(Malformed));
        assert_eq!(skip_name(&pair, 14), Err(Malformed));
    }

    #[test]
    fn skip_name_rejects_overlong_and_truncated_names() {
        let mut msg = vec![0u8; 12];
        for _ in 0..5 {
            msg.push(63);
            msg.extend_from_slice(&[b'x'; 63]);
        }
        msg.push(0);
        assert_eq!(skip_name(&msg, 12), Err(Malformed));
        assert_eq!(skip_name(&[0u8; 12], 12), Err(Malformed));
        let mut cut = vec![0u8; 12];
        cut.extend_from_slice(&[3, b'a', b'b']);
        assert_eq!(skip_name(&cut, 12), Err(Malformed));
        let mut reserved = vec![0u8; 12];
        reserved.extend_from_slice(&[0x41, 0]);
        assert_eq!(skip_name(&reserved, 12), Err(Malformed));
    }

    #[test]
    fn randomize_case_flips_letters_of_the_name_only() {
        let key = {
            let mut k = vec![
                7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0,
            ];
            k.extend_from_slice(&[0, 1, 0, 1, 0]);
            k
        };
        // A query as `Key::upstream_query` writes it: header, question, OPT.
        let mut plain = Vec::new();
        Header {
            id: 0x4142,
            flags: flag::RD,
            qdcount: 1,
            ancount: 0,
            nscount: 0,
            arcount: 1,
        }
        .write(&mut plain);
        plain.extend_from_slice(&key[..key.len() - 1]);
        write_opt(&mut plain, 0, false);
        let mut seen_upper = false;
        for _ in 0..20 {
            let mut q = plain.clone();
            randomize_case(&mut q);
            assert_eq!(q.len(), plain.len());
            assert_eq!(q[..HEADER_LEN], plain[..HEADER_LEN], "header untouched");
            assert!(q.eq_ignore_ascii_case(&plain), "only case changes");
            assert_eq!(q[HEADER_LEN], 7, "label lengths untouched");
            assert_eq!(q[HEADER_LEN + 8], 3);
            assert_eq!(
                q[HEADER_LEN + 13..],
                plain[HEADER_LEN + 13..],
                "type, class, OPT"
            );
            seen_upper |= q != plain;
        }
        assert!(seen_upper, "20 queries of 10 letters: some letter flipped");
    }
}
