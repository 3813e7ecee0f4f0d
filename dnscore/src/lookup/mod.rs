//! Lookups for Rust callers: a name and a record type in, parsed records out. They take the
//! same path as wire queries (cache, dedup, pool), and parse the answer with hickory-proto.
//! Names are looked up as glibc looks them up: the hosts file first, then the candidates
//! the search list and `ndots` make, each an ordinary cached query (so a short name's
//! negative answers are cached too, and its tenth lookup sends nothing upstream). A thread
//! that looks a name up again gets the records it built last time, while they still hold
//! ([`memo`]).

mod memo;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use crate::cache::Entry;
use crate::error::Error;
use crate::hosts::Hosts;
use crate::query::{self, KeyBuf};
use crate::resolver::Resolver;
use crate::wire::{self, MAX_MESSAGE_LEN, MAX_NAME_LEN, rcode};

/// The records that answered a [`Resolver::lookup`]. Clones share the records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    records: Arc<[Record]>,
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

/// How names become the names asked: the builder's search list, `ndots` and hosts file.
#[derive(Debug, Default)]
pub(crate) struct Names {
    /// Absolute names.
    pub(crate) search: Vec<Name>,
    pub(crate) ndots: u8,
    pub(crate) hosts: Option<Hosts>,
}

impl Names {
    /// The names to ask for `name`, in order (glibc's `res_search`): a name with a trailing
    /// dot as it is; one with at least `ndots` dots as it is, then with each search domain;
    /// others with each search domain, then as they are. Candidates too long are skipped.
    /// Nothing is allocated beyond the names themselves (a lookup of a full name is one).
    fn candidates<'a>(&'a self, name: &'a Name) -> impl Iterator<Item = Name> + Send + 'a {
        let mut absolute = name.clone();
        absolute.set_fqdn(true);
        let relative = !name.is_fqdn();
        let as_is_first = !relative || name.num_labels().saturating_sub(1) >= self.ndots;
        let (first, last) = if as_is_first {
            (Some(absolute), None)
        } else {
            (None, Some(absolute))
        };
        let searched = self
            .search
            .iter()
            .filter(move |_| relative)
            .filter_map(|domain| name.clone().append_domain(domain).ok());
        first.into_iter().chain(searched).chain(last)
    }
}

impl Resolver {
    /// Looks up records of type `rtype` for `name`, as glibc looks names up: for A and
    /// AAAA the hosts file first (if [`hosts_file`](crate::ResolverBuilder::hosts_file)
    /// was given; records from it have TTL 0), then the candidates of the
    /// [`search`](crate::ResolverBuilder::search) list and `ndots` (by default no search
    /// list, so a name is asked as it is), up to the first with records of `rtype` (or, for
    /// CNAME and ANY, any record). Non-ASCII names are converted to punycode.
    ///
    /// Errors: [`Error::InvalidName`], [`Error::NxDomain`] (for every candidate),
    /// [`Error::NoAnswer`] when no upstream answered, [`Error::BadAnswer`] when the answer
    /// cannot be parsed. When a candidate exists but has no such record (NODATA), and no
    /// later one has it, that candidate's empty `Lookup` is returned (also when a later
    /// candidate fails: the name exists, as glibc reports).
    ///
    /// # Where this differs from glibc and musl
    /// - A candidate that fails (no upstream answered, SERVFAIL) ends the lookup with that
    ///   error, as musl does; glibc goes on to the next candidate after a SERVFAIL, which
    ///   can return the address of a name further down the search list while the right one
    ///   is failing.
    /// - In [`lookup_ip`](Self::lookup_ip), A and AAAA are asked concurrently and together
    ///   decide a candidate, as glibc's getaddrinfo does: the first candidate with an
    ///   address of either family wins.
    /// - The hosts file is asked for the name as given (any trailing dot ignored), never
    ///   for search-list candidates, as glibc's `files` service; `nsswitch.conf` is not read
    ///   (its order is taken to be `files dns`), and `lookup` asks it only for A and AAAA.
    /// - Each candidate's answer, negative ones included, is cached like any answer, so a
    ///   repeated lookup of a short name costs cache hits only.
    pub async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Lookup, Error> {
        if let Some(found) = self.hosts_records(name, rtype) {
            return found;
        }
        let mut first = self.memoized(name, rtype, crate::clock::now());
        if let Some(l) = &first
            && answers(l, rtype)
        {
            return Ok(l.clone());
        }
        let parsed = parse_name(name)?;
        // The first candidate that exists without such records (NODATA), if no later one
        // has them.
        let mut nodata = None;
        for (i, candidate) in self.inner.names.candidates(&parsed).enumerate() {
            match self
                .first_or_lookup(&mut first, name, i, &candidate, rtype)
                .await
            {
                Ok(l) if answers(&l, rtype) => return Ok(l),
                Ok(l) => _ = nodata.get_or_insert(l),
                Err(Error::NxDomain) => {}
                // The name exists (as glibc, a failure after a NODATA reports the NODATA).
                Err(e) => return nodata.ok_or(e),
            }
        }
        nodata.ok_or(Error::NxDomain)
    }

    /// The records the hosts file gives `name`, for A and AAAA (an error if `name` is
    /// invalid).
    fn hosts_records(&self, name: &str, rtype: RecordType) -> Option<Result<Lookup, Error>> {
        if !matches!(rtype, RecordType::A | RecordType::AAAA) {
            return None;
        }
        let found = self.inner.names.hosts.as_ref()?.lookup(name)?;
        let mut owner = match parse_name(name) {
            Ok(parsed) => parsed,
            Err(e) => return Some(Err(e)),
        };
        owner.set_fqdn(true);
        let records: Vec<Record> = found
            .into_iter()
            .filter_map(|ip| match (ip, rtype) {
                (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(v4))),
                (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(v6))),
                _ => None,
            })
            .map(|data| Record::from_rdata(owner.clone(), 0, data))
            .collect();
        (!records.is_empty()).then(|| {
            Ok(Lookup {
                records: records.into(),
            })
        })
    }

    /// This thread's last lookup of the first candidate of `name` (see [`memo`]), if it
    /// still holds at `now`; a hit is counted.
    fn memoized(&self, name: &str, rtype: RecordType, now: tokio::time::Instant) -> Option<Lookup> {
        memo::get(
            self.inner.cache.id(),
            name,
            u16::from(rtype),
            now,
            |key, entry, age| {
                self.on_hit(key, entry, age);
            },
        )
    }

    /// The `i`th candidate of `name`: the first one from `first` if the memo had it, else
    /// looked up (and the first one's fresh hit memoized).
    async fn first_or_lookup(
        &self,
        first: &mut Option<Lookup>,
        name: &str,
        i: usize,
        candidate: &Name,
        rtype: RecordType,
    ) -> Result<Lookup, Error> {
        match first.take() {
            Some(l) if i == 0 => Ok(l),
            _ => {
                let memo_as = (i == 0).then_some(name);
                self.lookup_name(candidate, rtype, memo_as).await
            }
        }
    }

    /// One name, asked as it is (`fqdn` is absolute). The key is built from the name
    /// directly; a fresh hit is read through the thread's memo, anything else goes to the
    /// upstreams with what the cache had (the key is looked up once). A fresh hit is kept
    /// in the thread's lookup memo under `memo_as`, if given.
    async fn lookup_name(
        &self,
        fqdn: &Name,
        rtype: RecordType,
        memo_as: Option<&str>,
    ) -> Result<Lookup, Error> {
        let key = KeyBuf::for_lookup(fqdn.iter(), u16::from(rtype))
            .ok_or_else(|| Error::InvalidName(Arc::from(fqdn.to_string())))?;
        let key = key.as_bytes();
        let now = crate::clock::now();
        let cache = &self.inner.cache;
        let hit = cache.with_fresh(key, now, |answer, age, _| {
            self.on_hit(key, answer, age);
            let found = records_of(answer, fqdn, rtype, age, false);
            if let (Some(name), Ok(l)) = (memo_as, &found) {
                memo::put(cache.id(), name, u16::from(rtype), key, answer, age, l);
            }
            found
        });
        let stale = match hit {
            Ok(found) => return found,
            Err(stale) => stale,
        };
        let (answer, freshness, _) = self.complete(key, stale).await?;
        let age = tokio::time::Instant::now().saturating_duration_since(answer.received);
        let stale = freshness == crate::cache::Freshness::Stale;
        records_of(&answer, fqdn, rtype, age, stale)
    }

    /// The IPv4 and IPv6 addresses of `host`, IPv4 first. An IP literal is returned as it
    /// is; then the hosts file is asked (if one was given), then each candidate name of the
    /// search list (see [`lookup`](Self::lookup)), A and AAAA concurrently, up to the first
    /// with an address of either family. One family failing is not an error while the
    /// other answers.
    ///
    /// Errors: [`Error::InvalidName`]; [`Error::NxDomain`] when every candidate is
    /// NXDOMAIN (an empty list when one exists without addresses); else the failure that
    /// ended the search ([`Error::NoAnswer`], ...).
    pub async fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, Error> {
        // (Only what could be an IP literal is parsed as one: a host name seldom is.)
        if host
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b':')
            && let Ok(ip) = host.parse::<IpAddr>()
        {
            return Ok(vec![ip]);
        }
        if let Some(hosts) = &self.inner.names.hosts
            && let Some(ips) = hosts.lookup(host)
        {
            parse_name(host)?;
            return Ok(ips);
        }
        let now = crate::clock::now();
        let mut first_v4 = self.memoized(host, RecordType::A, now);
        let mut first_v6 = first_v4
            .as_ref()
            .and_then(|_| self.memoized(host, RecordType::AAAA, now));
        if let (Some(v4), Some(v6)) = (&first_v4, &first_v6) {
            let found: Vec<IpAddr> = [v4, v6].into_iter().flat_map(addresses).collect();
            if !found.is_empty() {
                return Ok(found);
            }
        }
        let parsed = parse_name(host)?;
        // Whether a candidate exists without addresses (NODATA for both families).
        let mut nodata = false;
        for (i, candidate) in self.inner.names.candidates(&parsed).enumerate() {
            let (v4, v6) = tokio::join!(
                self.first_or_lookup(&mut first_v4, host, i, &candidate, RecordType::A),
                self.first_or_lookup(&mut first_v6, host, i, &candidate, RecordType::AAAA)
            );
            let found: Vec<IpAddr> = [&v4, &v6]
                .into_iter()
                .filter_map(|r| r.as_ref().ok())
                .flat_map(addresses)
                .collect();
            if !found.is_empty() {
                return Ok(found);
            }
            match (v4, v6) {
                (Err(Error::NxDomain), _) | (_, Err(Error::NxDomain)) => {}
                (Ok(_), Ok(_)) => nodata = true,
                (Err(_), _) | (_, Err(_)) if nodata => return Ok(Vec::new()),
                (Err(e), _) | (_, Err(e)) => return Err(e),
            }
        }
        if nodata {
            Ok(Vec::new())
        } else {
            Err(Error::NxDomain)
        }
    }
}

/// The addresses of `l`'s A and AAAA records.
fn addresses(l: &Lookup) -> impl Iterator<Item = IpAddr> + '_ {
    l.records
        .iter()
        .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
        .filter_map(|r| r.data.ip_addr())
}

/// Whether `l` answers a lookup of `rtype`: it has records of that type (or, for CNAME and
/// ANY, any record).
fn answers(l: &Lookup, rtype: RecordType) -> bool {
    match rtype {
        RecordType::CNAME | RecordType::ANY => !l.records.is_empty(),
        _ => l.records.iter().any(|r| r.record_type() == rtype),
    }
}

/// The records of `answer` for `fqdn` and `rtype`, `age` after it arrived: for the common
/// shape (addresses of the question's name) read from the cached bytes, for other shapes
/// written out as a client would get them and decoded with hickory-proto.
fn records_of(
    answer: &Entry,
    fqdn: &Name,
    rtype: RecordType,
    age: Duration,
    stale: bool,
) -> Result<Lookup, Error> {
    match answer.rcode {
        rcode::NOERROR => {}
        rcode::NXDOMAIN => return Err(Error::NxDomain),
        _ => return Err(Error::BadAnswer),
    }
    if let Some(addrs) = answer.simple_addresses(age, stale) {
        return Ok(addresses_as_records(fqdn, addrs));
    }
    let wire = query_for(fqdn, rtype);
    let q = query::parse(&wire).map_err(|_| Error::InvalidName(Arc::from(fqdn.to_string())))?;
    let mut out = Vec::new();
    answer.write_aged(&q, age, MAX_MESSAGE_LEN, stale, &mut out);
    Ok(Lookup {
        records: answer_records(&out).ok_or(Error::BadAnswer)?.into(),
    })
}

/// A [`Lookup`] of A and AAAA records owned by `owner`.
fn addresses_as_records(owner: &Name, addrs: impl IntoIterator<Item = (u32, IpAddr)>) -> Lookup {
    let records = addrs
        .into_iter()
        .map(|(ttl, ip)| {
            let data = match ip {
                IpAddr::V4(v4) => RData::A(A(v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
            };
            Record::from_rdata(owner.clone(), ttl, data)
        })
        .collect();
    Lookup { records }
}

/// `name` as a DNS name (punycode for non-ASCII). Errors: [`Error::InvalidName`].
fn parse_name(name: &str) -> Result<Name, Error> {
    let invalid = || Error::InvalidName(Arc::from(name));
    let mut wire = [0u8; MAX_NAME_LEN + 1];
    match host_name_wire(name, &mut wire) {
        Some(Ok(len)) => {
            let mut parsed =
                Name::read(&mut BinDecoder::new(&wire[..len])).map_err(|_| invalid())?;
            parsed.set_fqdn(name.ends_with('.'));
            Ok(parsed)
        }
        Some(Err(())) => Err(invalid()),
        None => Name::from_utf8(name).map_err(|_| invalid()),
    }
}

/// Writes the wire form of a host name made of letters, digits, `-`, `_` and `*` (the
/// names services look up) into `wire`, in one pass, and returns its length: its labels as
/// they are, without the IDNA mapping that `Name::from_utf8` applies (a quarter of a cached
/// lookup's time, and a no-op on such a name but for letter case, which DNS ignores).
/// `Some(Err(()))` for an empty label, a label over 63 bytes or a name over 255; `None` for
/// any other character, left to `Name::from_utf8`.
pub(crate) fn host_name_wire(
    name: &str,
    wire: &mut [u8; MAX_NAME_LEN + 1],
) -> Option<Result<usize, ()>> {
    if name.is_empty() {
        return None;
    }
    let body = name.strip_suffix('.').unwrap_or(name).as_bytes();
    if body.is_empty() {
        return Some(Ok(1)); // the root: one zero byte
    }
    // `start`: where the current label's length byte goes; `end`: the next free byte.
    let (mut start, mut end) = (0, 1);
    let mut bad = false;
    for &b in body {
        if b == b'.' {
            let len = end - start - 1;
            bad |= len == 0 || len > 63;
            wire[start] = len as u8;
            start = end;
        } else if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*') {
            wire[end] = b;
        } else {
            return None;
        }
        end += 1;
        if end >= MAX_NAME_LEN {
            return Some(Err(()));
        }
    }
    let len = end - start - 1;
    bad |= len == 0 || len > 63;
    wire[start] = len as u8;
    wire[end] = 0;
    Some(if bad { Err(()) } else { Ok(end + 1) })
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
    fn the_fast_paths_agree_with_the_general_ones() {
        // The key built from a name is the key of the query written for it (the longest
        // name, 255 bytes on the wire, included).
        let longest = format!("{0}.{0}.{0}.{1}.", "Ab".repeat(31) + "c", "d".repeat(61));
        for (name, rtype) in [
            ("Www.Example.TEST.", RecordType::A),
            ("a.test.", RecordType::AAAA),
            (".", RecordType::NS),
            (longest.as_str(), RecordType::A),
        ] {
            let name = Name::from_utf8(name).unwrap();
            let wire = query_for(&name, rtype);
            let parsed = query::parse(&wire).unwrap();
            let key = KeyBuf::for_lookup(name.iter(), u16::from(rtype)).unwrap();
            assert_eq!(key.as_bytes(), parsed.key.as_bytes(), "{name}");
        }
        // Host names read without IDNA are the names IDNA reads, but for letter case.
        for name in [
            "redis",
            "a.test.",
            "My-Svc.ns.svc.cluster.local",
            "_dns._udp.x",
            "*.w",
            ".",
        ] {
            let fast = parse_name(name).unwrap();
            let idna = Name::from_utf8(name).unwrap();
            assert_eq!(fast, idna, "{name}");
            assert_eq!(fast.is_fqdn(), idna.is_fqdn(), "{name}");
        }
        for bad in [
            "a..b",
            "..",
            &format!("{}.x", "y".repeat(64)),
            &"ab.".repeat(90),
        ] {
            assert!(
                matches!(parse_name(bad), Err(Error::InvalidName(_))),
                "{bad}"
            );
        }
        // Other characters go to the IDNA path.
        assert_eq!(
            parse_name("bücher.example").unwrap(),
            Name::from_utf8("xn--bcher-kva.example").unwrap()
        );
    }

    proptest::proptest! {
        /// The one-pass host-name reader and hickory's IDNA path agree on every name of
        /// the characters the fast path takes: the same name (but for letter case), or
        /// both an error (the fast path may also accept what IDNA's rules refuse, as DNS
        /// does: then it is the name as written).
        #[test]
        fn host_names_read_as_idna_reads_them(name in "[a-zA-Z0-9_*.-]{0,80}|[a-z.]{240,300}") {
            let fast = parse_name(&name);
            match Name::from_utf8(&name) {
                Ok(idna) if !name.is_empty() => {
                    let fast = fast.expect("IDNA took it, the fast path must too");
                    proptest::prop_assert_eq!(&fast, &idna);
                    proptest::prop_assert_eq!(fast.is_fqdn(), idna.is_fqdn());
                }
                _ => {
                    if let Ok(fast) = fast {
                        let labels: Vec<&[u8]> = fast.iter().collect();
                        let written: Vec<&[u8]> = name
                            .strip_suffix('.')
                            .unwrap_or(&name)
                            .split('.')
                            .filter(|l| !l.is_empty())
                            .map(str::as_bytes)
                            .collect();
                        proptest::prop_assert_eq!(labels, written);
                    }
                }
            }
        }
    }

    #[test]
    fn candidates_follow_glibcs_order() {
        let names = Names {
            search: ["ns.svc.cluster.local.", "cluster.local."]
                .iter()
                .map(|d| Name::from_utf8(d).unwrap())
                .collect(),
            ndots: 2,
            hosts: None,
        };
        let of = |name: &str| -> Vec<String> {
            names
                .candidates(&Name::from_utf8(name).unwrap())
                .map(|n| n.to_string())
                .collect()
        };
        assert_eq!(
            of("redis"),
            [
                "redis.ns.svc.cluster.local.",
                "redis.cluster.local.",
                "redis."
            ]
        );
        assert_eq!(
            of("a.b"),
            ["a.b.ns.svc.cluster.local.", "a.b.cluster.local.", "a.b."]
        );
        assert_eq!(
            of("a.b.c"),
            [
                "a.b.c.",
                "a.b.c.ns.svc.cluster.local.",
                "a.b.c.cluster.local."
            ]
        );
        assert_eq!(of("a.b."), ["a.b."]);
        // A candidate past 255 bytes is skipped, the others stay.
        let long = [
            "x".repeat(63),
            "y".repeat(63),
            "z".repeat(63),
            "w".repeat(42),
        ]
        .join(".");
        let got = of(&long);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got, [format!("{long}."), format!("{long}.cluster.local.")]);
        let none = Names::default();
        assert_eq!(
            none.candidates(&Name::from_utf8("redis").unwrap())
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
            ["redis."]
        );
    }

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
