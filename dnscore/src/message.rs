//! Small readers and writers of wire-format messages for servers built on the resolver
//! (metrics labels, policy refusals), so that they need not parse a whole message.

use crate::query::{self, Rejection};
use crate::wire::{HEADER_LEN, Header, flag, skip_name, u16_at};

/// The type of the first question of a query, without parsing the rest.
pub fn question_type(msg: &[u8]) -> Option<u16> {
    let end = skip_name(msg, HEADER_LEN).ok()?;
    u16_at(msg, end).ok()
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
        let mut out = Vec::new();
        assert!(reply_with_rcode(&q, 4, &mut out));
        assert_eq!(response_code(&out), Some(4));
        assert_eq!(&out[..2], &[0, 7]);
        assert_eq!(&out[12..], &q[12..]);
        assert_eq!(question_type(&[0; 5]), None);
        assert!(!reply_with_rcode(&[0; 5], 4, &mut out));
    }
}
