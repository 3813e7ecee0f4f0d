//! A client's query, read in place: header, question, EDNS, and the cache key built from
//! them in exactly one place.

use crate::wire::{
    CLASSIC_UDP_SIZE, EDNS_DO, Edns, HEADER_LEN, Header, MAX_NAME_LEN, flag, get_u16, rcode,
    read_record, rtype, u16_at, write_opt,
};

/// Key bytes kept inline: a name of up to 90 bytes (nearly all of them), type, class and
/// the flags byte. A longer key spills to the heap.
const KEY_INLINE: usize = 96;
/// Key flag: the client set DO (RFC 3225); the answer may carry DNSSEC records.
const KEY_DO: u8 = 1;
/// Key flag: the client set CD (RFC 4035 §3.2.2); we pass it upstream.
const KEY_CD: u8 = 2;

/// The cache and dedup key: the question exactly as it is sent upstream (lower-cased name,
/// type, class) and one byte of the flags we send with it (DO, CD). Keying on exactly what is
/// sent, and nothing finer, keeps one flight per distinct upstream query (RFC 5452 §5).
///
/// Kept on the stack so a cache hit allocates nothing for it, and not zeroed first (a
/// zeroed 260-byte array, and its copies as the query moved, cost a hit ~160 instructions).
#[derive(Clone)]
pub(crate) struct KeyBuf(smallvec::SmallVec<[u8; KEY_INLINE]>);

impl KeyBuf {
    /// The key of `question` (its name lower-cased: the first `name_len` bytes) and flags.
    #[inline]
    fn new(question: &[u8], name_len: usize, flags: u8) -> Self {
        let len = question.len();
        if len < KEY_INLINE {
            // Built in a plain array and copied once (cheaper than growing the SmallVec).
            let mut buf = [0u8; KEY_INLINE];
            buf[..len].copy_from_slice(question);
            buf[..name_len].make_ascii_lowercase();
            buf[len] = flags;
            return Self(smallvec::SmallVec::from_buf_and_len(buf, len + 1));
        }
        let mut buf = smallvec::SmallVec::from_slice(question);
        buf[..name_len].make_ascii_lowercase();
        buf.push(flags);
        Self(buf)
    }

    /// The key of the query a lookup sends for `labels` (the name's labels, root
    /// excluded) and `qtype`: class IN, without DO or CD, as [`parse`] keys that query.
    /// `None` for a name longer than 255 bytes on the wire.
    pub(crate) fn for_lookup<'a>(
        labels: impl Iterator<Item = &'a [u8]>,
        qtype: u16,
    ) -> Option<Self> {
        // Written into a plain array by index, then copied once: pushing byte slices into
        // the SmallVec one by one cost more than the cache lookup itself.
        let mut buf = [0u8; MAX_NAME_LEN + 5];
        let mut end = 0;
        for label in labels {
            let len = label.len();
            if !(1..=63).contains(&len) || end + 1 + len >= MAX_NAME_LEN {
                return None;
            }
            buf[end] = len as u8;
            buf[end + 1..end + 1 + len].copy_from_slice(label);
            end += 1 + len;
        }
        buf[end] = 0;
        buf[..end].make_ascii_lowercase();
        let [t0, t1] = qtype.to_be_bytes();
        buf[end + 1..end + 6].copy_from_slice(&[t0, t1, 0, 1, 0]);
        Some(Self(smallvec::SmallVec::from_slice(&buf[..end + 6])))
    }

    /// The key's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Read access to a key's parts, whether it lives in a [`KeyBuf`] or in an owned box.
#[derive(Clone, Copy)]
pub(crate) struct Key<'a>(pub(crate) &'a [u8]);

impl Key<'_> {
    /// The question section as it is sent upstream.
    pub(crate) fn question(&self) -> &[u8] {
        &self.0[..self.0.len().saturating_sub(1)]
    }

    fn flags(&self) -> u8 {
        self.0.last().copied().unwrap_or(0)
    }

    /// Whether the query asks for DNSSEC records.
    pub(crate) fn dnssec_ok(&self) -> bool {
        self.flags() & KEY_DO != 0
    }

    /// Whether the client disabled DNSSEC checking.
    pub(crate) fn checking_disabled(&self) -> bool {
        self.flags() & KEY_CD != 0
    }

    /// The query we send upstream for this key: RD set, CD as the client asked, the
    /// question, and an OPT with our 1232-byte buffer and the DO bit as the client asked.
    pub(crate) fn upstream_query(&self, id: u16) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.question().len() + 11);
        let cd = if self.checking_disabled() {
            flag::CD
        } else {
            0
        };
        Header {
            id,
            flags: flag::RD | cd,
            qdcount: 1,
            ancount: 0,
            nscount: 0,
            arcount: 1,
        }
        .write(&mut out);
        out.extend_from_slice(self.question());
        write_opt(&mut out, 0, self.dnssec_ok());
        out
    }
}

/// A client's query that we can answer.
pub(crate) struct Query<'a> {
    /// The client's bytes; the question is echoed from them exactly, letter case included.
    pub(crate) msg: &'a [u8],
    pub(crate) header: Header,
    /// End of the question section (it starts at the header's end).
    pub(crate) question_end: usize,
    /// The client's EDNS parameters, if it sent an OPT record.
    pub(crate) edns: Option<Edns>,
    pub(crate) key: KeyBuf,
}

/// A parsed query that owns its bytes: a cache miss handed to a task, parsed once.
#[derive(Clone)]
pub(crate) struct OwnedQuery {
    msg: Box<[u8]>,
    header: Header,
    question_end: usize,
    edns: Option<Edns>,
    key: KeyBuf,
}

impl OwnedQuery {
    /// The query as [`parse`] gave it.
    pub(crate) fn view(&self) -> Query<'_> {
        Query {
            msg: &self.msg,
            header: self.header,
            question_end: self.question_end,
            edns: self.edns,
            key: self.key.clone(),
        }
    }

    /// The client's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.msg
    }

    /// The question's type.
    pub(crate) fn qtype(&self) -> u16 {
        qtype_at(&self.msg, self.question_end)
    }
}

impl Query<'_> {
    /// A copy that owns its bytes, to answer later.
    pub(crate) fn to_owned(&self) -> OwnedQuery {
        OwnedQuery {
            msg: self.msg.into(),
            header: self.header,
            question_end: self.question_end,
            edns: self.edns,
            key: self.key.clone(),
        }
    }

    /// The question's type.
    pub(crate) fn qtype(&self) -> u16 {
        qtype_at(self.msg, self.question_end)
    }

    /// The client's question section.
    pub(crate) fn question(&self) -> &[u8] {
        &self.msg[HEADER_LEN..self.question_end]
    }

    /// The largest UDP answer this client accepts (RFC 6891 §6.2.3, RFC 1035 §2.3.4).
    pub(crate) fn udp_limit(&self) -> usize {
        usize::from(self.edns.map_or(CLASSIC_UDP_SIZE, |e| e.udp_size))
    }
}

/// Why a query is not looked up, and what to do instead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Not answerable: too short to have a header, or a response (QR=1: answering it
    /// could start a packet loop).
    Drop,
    /// Answer with this response code alone.
    Reply {
        header: Header,
        rcode: u16,
        /// End of the client's question section, when it could be read.
        question_end: Option<usize>,
        edns: Option<Edns>,
    },
}

impl Rejection {
    /// Writes the reply for a `Reply` rejection into `out`; returns false for `Drop`.
    pub(crate) fn write(&self, msg: &[u8], out: &mut Vec<u8>) -> bool {
        match *self {
            Self::Drop => false,
            Self::Reply {
                header,
                rcode,
                question_end,
                edns,
            } => {
                let question = question_end.map(|end| &msg[HEADER_LEN..end]);
                crate::wire::write_rcode_reply(&header, rcode, question, edns, out);
                true
            }
        }
    }
}

/// The type of a parsed question that ends at `question_end` (type and class are its last
/// four bytes).
fn qtype_at(msg: &[u8], question_end: usize) -> u16 {
    get_u16(msg, question_end.saturating_sub(4))
}

/// Reads a client's query.
pub(crate) fn parse(msg: &[u8]) -> Result<Query<'_>, Rejection> {
    let Ok(header) = Header::read(msg) else {
        return Err(Rejection::Drop);
    };
    if header.flags & flag::QR != 0 {
        return Err(Rejection::Drop);
    }
    let reply = |rcode, question_end, edns| Rejection::Reply {
        header,
        rcode,
        question_end,
        edns,
    };
    if header.flags & flag::OPCODE != 0 {
        return Err(reply(rcode::NOTIMP, None, None));
    }
    if header.qdcount != 1 {
        return Err(reply(rcode::FORMERR, None, None));
    }

    // The question name, lower-cased into the key. A query's question is the first name in
    // the message, so a compression pointer there can only be malformed.
    // The labels are walked first, then copied and lower-cased at once: a length octet
    // (at most 63) is never an upper-case letter, so lower-casing leaves it alone.
    let mut pos = HEADER_LEN;
    loop {
        let Some(&len) = msg.get(pos) else {
            return Err(reply(rcode::FORMERR, None, None));
        };
        let label_len = usize::from(len);
        pos += 1 + label_len;
        if label_len > 63 || pos - HEADER_LEN > MAX_NAME_LEN {
            return Err(reply(rcode::FORMERR, None, None));
        }
        if label_len == 0 {
            break;
        }
    }
    let name_len = pos - HEADER_LEN;
    let (Ok(qtype), Some(question)) = (u16_at(msg, pos), msg.get(HEADER_LEN..pos + 4)) else {
        return Err(reply(rcode::FORMERR, None, None));
    };
    let question_end = pos + 4;
    let with_question = Some(question_end);

    // A query carries no answer or authority records; tolerate them if well-formed.
    let mut pos = question_end;
    for _ in 0..u32::from(header.ancount) + u32::from(header.nscount) {
        match read_record(msg, pos) {
            Ok(rr) => pos = rr.end,
            Err(_) => return Err(reply(rcode::FORMERR, with_question, None)),
        }
    }
    let mut edns = None;
    for _ in 0..header.arcount {
        let Ok(rr) = read_record(msg, pos) else {
            return Err(reply(rcode::FORMERR, with_question, None));
        };
        pos = rr.end;
        if rr.rtype != rtype::OPT {
            continue;
        }
        // RFC 6891 §6.1.1: one OPT, owned by the root.
        if edns.is_some() || msg[rr.start] != 0 {
            return Err(reply(rcode::FORMERR, with_question, None));
        }
        let this = Edns {
            udp_size: rr.class.max(CLASSIC_UDP_SIZE),
            dnssec_ok: rr.ttl & EDNS_DO != 0,
        };
        if (rr.ttl >> 16) & 0xff != 0 {
            return Err(reply(rcode::BADVERS, with_question, Some(this)));
        }
        edns = Some(this);
    }

    match qtype {
        rtype::OPT => return Err(reply(rcode::FORMERR, with_question, edns)),
        rtype::AXFR | rtype::IXFR | rtype::MAILA | rtype::MAILB => {
            return Err(reply(rcode::NOTIMP, with_question, edns));
        }
        _ => {}
    }

    // The key: the question (name lower-cased, type, class), then the flags.
    let mut key_flags = 0;
    if edns.is_some_and(|e| e.dnssec_ok) {
        key_flags |= KEY_DO;
    }
    if header.flags & flag::CD != 0 {
        key_flags |= KEY_CD;
    }
    let key = KeyBuf::new(question, name_len, key_flags);

    Ok(Query {
        msg,
        header,
        question_end,
        edns,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[&str], qtype: u16, flags: u16, opt: Option<[u8; 11]>) -> Vec<u8> {
        let mut m = vec![0x12, 0x34];
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
        for l in name {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        if let Some(o) = opt {
            m.extend_from_slice(&o);
        }
        m
    }

    fn rcode_of(r: Result<Query<'_>, Rejection>) -> Option<u16> {
        match r {
            Err(Rejection::Reply { rcode, .. }) => Some(rcode),
            _ => None,
        }
    }

    #[test]
    fn key_is_lowercased_and_carries_do_and_cd() {
        let opt = [0, 0, 41, 4, 0, 0, 0, 0x80, 0, 0, 0];
        let m = query(
            &["WwW", "Example", "TEST"],
            1,
            flag::RD | flag::CD,
            Some(opt),
        );
        let q = parse(&m).unwrap();
        let key = Key(q.key.as_bytes());
        assert_eq!(&key.question()[..18], b"\x03www\x07example\x04test\x00");
        assert!(key.dnssec_ok());
        assert!(key.checking_disabled());
        assert_eq!(q.question(), &m[12..12 + 18 + 4]);
        assert_eq!(q.udp_limit(), 1024);

        let plain = query(&["www", "example", "test"], 1, flag::RD, None);
        let p = parse(&plain).unwrap();
        assert_ne!(p.key.as_bytes(), q.key.as_bytes());
        assert_eq!(p.udp_limit(), 512);
    }

    #[test]
    fn a_key_longer_than_its_inline_buffer_is_whole() {
        // A name of 255 bytes on the wire (the longest), past the 96 inline bytes.
        let label = "Ab".repeat(31) + "C";
        let m = query(&[&label, &label, &label, &label[..61]], 28, flag::RD, None);
        let q = parse(&m).unwrap();
        let key = q.key.as_bytes();
        assert_eq!(key.len(), 255 + 4 + 1);
        assert_eq!(&key[..259], m[12..12 + 259].to_ascii_lowercase().as_slice());
        assert_eq!(key[259], 0, "no DO, no CD");
        assert_eq!(q.key.clone().as_bytes(), key);
    }

    #[test]
    fn rejects_what_it_must() {
        assert_eq!(parse(&[0; 11]).err(), Some(Rejection::Drop));
        let response = query(&["a"], 1, flag::QR, None);
        assert_eq!(parse(&response).err(), Some(Rejection::Drop));
        let notify = query(&["a"], 1, 4 << 11, None);
        assert_eq!(rcode_of(parse(&notify)), Some(rcode::NOTIMP));
        let mut two = query(&["a"], 1, 0, None);
        two[5] = 2;
        assert_eq!(rcode_of(parse(&two)), Some(rcode::FORMERR));
        let axfr = query(&["a"], rtype::AXFR, 0, None);
        assert_eq!(rcode_of(parse(&axfr)), Some(rcode::NOTIMP));
        let badvers = query(&["a"], 1, 0, Some([0, 0, 41, 4, 0, 0, 1, 0, 0, 0, 0]));
        assert_eq!(rcode_of(parse(&badvers)), Some(rcode::BADVERS));
        let cut = &query(&["abc"], 1, 0, None)[..15];
        assert_eq!(rcode_of(parse(cut)), Some(rcode::FORMERR));
        let mut ptr = query(&["a"], 1, 0, None);
        ptr[12] = 0xc0;
        assert_eq!(rcode_of(parse(&ptr)), Some(rcode::FORMERR));
    }

    #[test]
    fn formerr_reply_echoes_id_and_question() {
        let mut m = query(&["a"], 1, flag::RD, None);
        m[7] = 1; // ANCOUNT 1, but no record follows
        let rej = parse(&m).err().unwrap();
        let mut out = Vec::new();
        assert!(rej.write(&m, &mut out));
        let h = Header::read(&out).unwrap();
        assert_eq!(h.id, 0x1234);
        assert_eq!(h.flags & flag::RCODE, rcode::FORMERR);
        assert_ne!(h.flags & flag::QR, 0);
        assert_ne!(h.flags & flag::RD, 0);
        assert_eq!(h.qdcount, 1);
        assert_eq!(&out[12..], &m[12..19]);
    }
}
