//! Lookups for Rust callers: a name and a record type in, parsed records out. They take the
//! same path as wire queries (cache, dedup, pool), and parse the answer with hickory-proto.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use crate::error::Error;
use crate::query;
use crate::resolver::Resolver;
use crate::wire::{self, MAX_MESSAGE_LEN, rcode};

/// The records that answered a [`Resolver::lookup`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    records: Vec<Record>,
}

impl Lookup {
    /// The answer section: the records of the asked type, and any CNAME records that led
    /// to them. Their TTLs count down while the answer sits in the cache. Empty when the
    /// name exists but has no record of that type (NODATA).
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The data of the answer's records of type `rtype`.
    pub fn rdata_of(&self, rtype: RecordType) -> impl Iterator<Item = &RData> {
        self.records
            .iter()
            .filter(move |r| r.record_type() == rtype)
            .map(|r| &r.data)
    }
}

impl Resolver {
    /// Looks up records of type `rtype` for `name`. The name is taken as fully qualified
    /// (no search list is applied); non-ASCII names are converted to punycode.
    ///
    /// Errors: [`Error::InvalidName`], [`Error::NxDomain`], [`Error::NoAnswer`] when no
    /// upstream answered, [`Error::BadAnswer`] when the answer cannot be parsed.
    pub async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Lookup, Error> {
        let invalid = || Error::InvalidName(Arc::from(name));
        let fqdn = Name::from_utf8(name).map_err(|_| invalid())?;
        let wire = query_for(&fqdn, rtype);
        let Ok(q) = query::parse(&wire) else {
            return Err(invalid());
        };
        let (answer, freshness, _) = self.answer(&q).await?;
        let stale = freshness == crate::cache::Freshness::Stale;
        let mut out = Vec::new();
        answer.write_response(
            &q,
            tokio::time::Instant::now(),
            MAX_MESSAGE_LEN,
            stale,
            &mut out,
        );
        match crate::message::response_code(&out) {
            Some(rcode::NOERROR) => Ok(Lookup {
                records: answer_records(&out).ok_or(Error::BadAnswer)?,
            }),
            Some(rcode::NXDOMAIN) => Err(Error::NxDomain),
            _ => Err(Error::BadAnswer),
        }
    }

    /// The IPv4 and IPv6 addresses of `host`, asked for concurrently (A and AAAA). An IP
    /// literal is returned as it is. One family failing is not an error while the other
    /// answers; NXDOMAIN for both is [`Error::NxDomain`].
    pub async fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, Error> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let (v4, v6) = tokio::join!(
            self.lookup(host, RecordType::A),
            self.lookup(host, RecordType::AAAA)
        );
        let addrs = |l: &Lookup| -> Vec<IpAddr> {
            l.records
                .iter()
                .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
                .filter_map(|r| r.data.ip_addr())
                .collect()
        };
        match (v4, v6) {
            (Ok(a), Ok(b)) => Ok(addrs(&a).into_iter().chain(addrs(&b)).collect()),
            (Ok(one), Err(_)) | (Err(_), Ok(one)) => Ok(addrs(&one)),
            (Err(e), Err(_)) => Err(e),
        }
    }
}

/// A recursive query (ID 0) for `name` and `rtype`, with an OPT record (payload 1232, no
/// DO), written directly: a `Message` built and encoded by hickory costs as much again.
fn query_for(name: &Name, rtype: RecordType) -> Vec<u8> {
    let mut q = Vec::with_capacity(wire::HEADER_LEN + name.len() + 16);
    wire::Header {
        id: 0,
        flags: wire::flag::RD,
        qdcount: 1,
        ancount: 0,
        nscount: 0,
        arcount: 1,
    }
    .write(&mut q);
    for label in name.iter() {
        // A parsed name's labels are 1..=63 bytes long.
        q.push(label.len() as u8);
        q.extend_from_slice(label);
    }
    q.push(0);
    wire::push_u16(&mut q, u16::from(rtype));
    wire::push_u16(&mut q, 1); // class IN
    wire::write_opt(&mut q, 0, false);
    q
}

/// The answer section of a response: its records, decoded after skipping the header and
/// the one question (authority and additional are not read). `None` if unreadable.
fn answer_records(response: &[u8]) -> Option<Vec<Record>> {
    let count = wire::u16_at(response, 6).ok()?;
    let question_end = wire::skip_name(response, wire::HEADER_LEN).ok()? + 4;
    let mut decoder = BinDecoder::new(response);
    decoder.read_slice(question_end).ok()?;
    (0..count)
        .map(|_| Record::read(&mut decoder).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::{A, CNAME};

    use super::*;

    #[test]
    fn the_hand_written_query_and_answer_reader_agree_with_hickory() {
        let name = Name::from_utf8("Www.Example.test.").unwrap();
        let wire = query_for(&name, RecordType::AAAA);
        let msg = Message::from_vec(&wire).unwrap();
        assert!(msg.metadata.recursion_desired);
        assert_eq!(msg.queries[0].name(), &name);
        assert_eq!(msg.queries[0].query_type(), RecordType::AAAA);
        assert_eq!(msg.edns.as_ref().map(|e| e.max_payload()), Some(1232));
        assert!(!msg.edns.unwrap().flags().dnssec_ok);

        let mut response = Message::new(7, MessageType::Response, OpCode::Query);
        response.add_query(Query::query(name.clone(), RecordType::A));
        let target = Name::from_utf8("host.example.test.").unwrap();
        response.add_answer(Record::from_rdata(
            name,
            60,
            RData::CNAME(CNAME(target.clone())),
        ));
        response.add_answer(Record::from_rdata(
            target,
            30,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        let bytes = response.to_vec().unwrap();
        assert_eq!(answer_records(&bytes).unwrap(), response.answers);
        assert_eq!(answer_records(&bytes[..bytes.len() - 1]), None, "cut short");
    }
}
