//! Lookups for Rust callers: a name and a record type in, parsed records out. They take the
//! same path as wire queries (cache, dedup, pool), and parse the answer with hickory-proto.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::error::Error;
use crate::query;
use crate::resolver::Resolver;
use crate::wire::MAX_MESSAGE_LEN;

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
        let mut fqdn = Name::from_utf8(name).map_err(|_| Error::InvalidName(Arc::from(name)))?;
        fqdn.set_fqdn(true);
        let mut msg = Message::query();
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(fqdn, rtype));
        msg.set_edns(Edns::new());
        let wire = msg
            .to_vec()
            .map_err(|_| Error::InvalidName(Arc::from(name)))?;
        let Ok(q) = query::parse(&wire) else {
            return Err(Error::InvalidName(Arc::from(name)));
        };
        let (answer, freshness) = self.answer(&q).await?;
        let stale = freshness == crate::cache::Freshness::Stale;
        let mut out = Vec::new();
        answer.write_response(
            &q,
            tokio::time::Instant::now(),
            MAX_MESSAGE_LEN,
            stale,
            &mut out,
        );
        let response = Message::from_vec(&out).map_err(|_| Error::BadAnswer)?;
        match response.metadata.response_code {
            ResponseCode::NoError => Ok(Lookup {
                records: response.answers,
            }),
            ResponseCode::NXDomain => Err(Error::NxDomain),
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
