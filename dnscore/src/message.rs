//! Small readers and writers of wire-format messages for servers built on the resolver
//! (metrics labels, policy refusals), so that they need not parse a whole message.

use crate::query::{self, Rejection};
use crate::wire::{HEADER_LEN, Header, flag, skip_name, u16_at};
pub use crate::wire::{rcode, rtype};

/// The mnemonic of a common record type (`A`, `AAAA`, `HTTPS`...), as CoreDNS's metrics
/// label it; `None` for the others.
pub fn type_name(t: u16) -> Option<&'static str> {
    Some(match t {
        rtype::A => "A",
        rtype::NS => "NS",
        rtype::CNAME => "CNAME",
        rtype::SOA => "SOA",
        rtype::PTR => "PTR",
        rtype::HINFO => "HINFO",
        rtype::MX => "MX",
        rtype::TXT => "TXT",
        rtype::AAAA => "AAAA",
        rtype::SRV => "SRV",
        rtype::DS => "DS",
        rtype::RRSIG => "RRSIG",
        rtype::HTTPS => "HTTPS",
        rtype::ANY => "ANY",
        _ => return None,
    })
}

/// The mnemonic of a response code in a header (0 to 10: `NOERROR` to `NOTZONE`, RFC 1035
/// and RFC 2136); `None` for the others.
pub fn rcode_name(code: u16) -> Option<&'static str> {
    const NAMES: [&str; 11] = [
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
        "NXRRSET", "NOTAUTH", "NOTZONE",
    ];
    NAMES.get(usize::from(code)).copied()
}

/// The type of the first question of a query, without parsing the rest.
pub fn question_type(msg: &[u8]) -> Option<u16> {
    let end = skip_name(msg, HEADER_LEN).ok()?;
    u16_at(msg, end).ok()
}

/// The name of the first question of a query, in presentation form (`www.example.com.`,
/// the root as `.`), for logs: labels are read as they are (uncompressed, as queries carry
/// them), bytes outside printable ASCII and `.` and `\` within a label are escaped as
/// `\DDD` (RFC 1035 §5.1). `None` if the question cannot be read.
pub fn question_name(msg: &[u8]) -> Option<String> {
    let end = skip_name(msg, HEADER_LEN).ok()?;
    let mut name = String::new();
    let mut pos = HEADER_LEN;
    while pos < end {
        let len = usize::from(*msg.get(pos)?);
        if len == 0 || len & 0xc0 != 0 {
            break;
        }
        for &b in msg.get(pos + 1..pos + 1 + len)? {
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                name.push(char::from(b));
            } else {
                name.push_str(&format!("\\{b:03}"));
            }
        }
        name.push('.');
        pos += 1 + len;
    }
    if name.is_empty() {
        name.push('.');
    }
    Some(name)
}

/// The response code in a message's header (the 4 low bits; extended codes live in OPT).
pub fn response_code(msg: &[u8]) -> Option<u16> {
    Header::read(msg).ok().map(|h| h.flags & flag::RCODE)
}

/// Writes into `out` a reply to `query` that carries only `rcode` (e.g. 4 NOTIMP, 5 REFUSED):
/// the client's ID, RD and CD, its question and, if it sent one, an OPT record. Returns false,
/// writing nothing, when the query must be dropped (no header, or QR=1).
pub fn reply_with_rcode(query: &[u8], rcode: u16, out: &mut Vec<u8>) -> bool {
    match query::parse(query) {
        Ok(q) => {
            crate::wire::write_rcode_reply(&q.header, rcode, Some(q.question()), q.edns, out);
            true
        }
        Err(rejection @ Rejection::Reply { .. }) => rejection.write(query, out),
        Err(Rejection::Drop) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_type_and_rcode_and_writes_replies() {
        // id 7, RD, one question "a." type ANY class IN
        let q = [0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 255, 0, 1];
        assert_eq!(question_type(&q), Some(255));
        assert_eq!(question_name(&q).as_deref(), Some("a."));
        let odd = [
            0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'a', b'.', 0xff, 0, 0, 1, 0, 1,
        ];
        assert_eq!(question_name(&odd).as_deref(), Some("a\\046\\255."));
        let root = [0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1];
        assert_eq!(question_name(&root).as_deref(), Some("."));
        assert_eq!(question_name(&q[..14]), None);
        let mut out = Vec::new();
        assert!(reply_with_rcode(&q, 4, &mut out));
        assert_eq!(response_code(&out), Some(4));
        assert_eq!(&out[..2], &[0, 7]);
        assert_eq!(&out[12..], &q[12..]);
        assert_eq!(question_type(&[0; 5]), None);
        assert_eq!(type_name(rtype::HTTPS), Some("HTTPS"));
        assert_eq!(type_name(4242), None);
        assert_eq!(rcode_name(rcode::NOTIMP), Some("NOTIMP"));
        assert_eq!(rcode_name(10), Some("NOTZONE"));
        assert_eq!(rcode_name(rcode::BADVERS), None);
        assert!(!reply_with_rcode(&[0; 5], 4, &mut out));
    }
}
