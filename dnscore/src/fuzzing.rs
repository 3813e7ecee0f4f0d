//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not a stable API).
//!
//! They reach the internal readers directly, so that a fuzzer's bytes get past the checks a
//! socket would make for them (the upstream answer's ID is patched to match).

use tokio::time::Instant;

use crate::answer::Answer;
use crate::cache::TtlPolicy;
use crate::query::{self, Key};
use crate::upstream::UdpReply as Reply;

/// Reads `client` as a client query; if it is answerable, treats `response` (with its ID
/// set to ours) as the upstream's answer to it and writes the client's answer.
///
/// Returns `None` when the query is rejected or the response is not accepted; otherwise
/// the bytes the client would get and the cache lifetime the answer was given.
pub fn upstream_answer(client: &[u8], response: &[u8]) -> Option<(Vec<u8>, u32)> {
    let q = query::parse(client).ok()?;
    let id = 0x2a2a;
    let sent = Key(q.key.as_bytes()).upstream_query(id);
    let mut response = response.to_vec();
    if let Some(head) = response.get_mut(..2) {
        head.copy_from_slice(&id.to_be_bytes());
    }
    let mut answer = Answer::parse(&sent, &response, Instant::now()).ok()?;
    answer.scrub(crate::defaults::MAX_RRSIGS, true);
    // Scrubbing is done once: what it keeps has nothing left to drop.
    assert!(
        matches!(
            crate::scrub::scrub(answer.wire(), crate::defaults::MAX_RRSIGS),
            Ok(None)
        ) || answer.facts == Default::default(),
        "a scrubbed answer scrubs again"
    );
    let lifetime = TtlPolicy {
        min_ttl: 0,
        max_ttl: crate::defaults::MAX_TTL,
        negative_min_ttl: 0,
        negative_max_ttl: crate::defaults::NEGATIVE_MAX_TTL,
        cluster: None,
    }
    .apply(&mut answer);
    let mut out = Vec::new();
    answer.write_response(&q, Instant::now(), usize::from(u16::MAX), false, &mut out);
    Some((out, lifetime))
}

/// The upstream query dnscore would send for `client` (ID 0x2a2a), if it is answerable: a
/// seed for the response corpus.
pub fn upstream_query_for(client: &[u8]) -> Option<Vec<u8>> {
    let q = query::parse(client).ok()?;
    Some(Key(q.key.as_bytes()).upstream_query(0x2a2a))
}

/// What [`pooled_receive`] saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Receipt {
    /// Datagrams that ended an outstanding query.
    pub answered: usize,
    /// Datagrams dropped as forged, stray, late or mismatched.
    pub suspicious: usize,
    /// Times a burst of those called for the socket's retirement.
    pub bursts: usize,
    /// Queries still outstanding at the end.
    pub outstanding: usize,
}

/// Drives one pooled upstream socket's receive path (no real socket): the queries
/// dnscore would send for `clients` are outstanding on it (every other one with 0x20), and
/// `ops` is a script of events, each introduced by one byte:
/// - `0`, then a two-byte length (big-endian) and that many bytes: a datagram arrives;
///   if the length's top bit is set, a byte after it numbers a query whose ID replaces the
///   datagram's first two bytes (so that the fuzzer reaches past the ID check);
/// - `1`: the last datagram arrives again (a duplicate);
/// - `2`: the query numbered by the next byte is given up (its caller left);
/// - `3`: the socket is closed (retired after a refusal or a burst); what comes after is
///   a late answer.
///
/// Checks, by panicking: a query is answered at most once, only by a datagram that
/// validates as its answer, never after it was given up or the socket closed; a duplicate
/// of an answer answers nothing; an answer to a query given up is late, not forged; the
/// outstanding count is what the script left.
pub fn pooled_receive(clients: &[Vec<u8>], ops: &[u8]) -> Receipt {
    use crate::upstream::{Matched, SocketState};
    use tokio::sync::oneshot;

    let addr: std::net::SocketAddr = ([127, 0, 0, 1], 53).into();
    let now = Instant::now();
    let mut state = SocketState::default();
    // (ID, query, reply receiver, still outstanding)
    let mut queries = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let Ok(q) = query::parse(client) else {
            continue;
        };
        let key = q.key.as_bytes().to_vec();
        let exact = i % 2 == 1;
        let (tx, rx) = oneshot::channel();
        let added = state.add(
            |id| {
                let mut sent = Key(&key).upstream_query(id);
                if exact {
                    crate::wire::randomize_case(&mut sent);
                }
                sent
            },
            exact,
            now + std::time::Duration::from_secs(1),
            tx,
        );
        if let Some((id, sent)) = added {
            queries.push((id, sent, rx, true, exact));
        }
    }
    let mut receipt = Receipt::default();
    let mut last: Vec<u8> = Vec::new();
    let mut closed = false;
    let mut rest = ops;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let datagram = match op % 4 {
            0 => {
                let Some((len, tail)) = rest.split_first_chunk::<2>() else {
                    break;
                };
                let len = u16::from_be_bytes(*len);
                let (patch, len) = (len & 0x8000 != 0, usize::from(len & 0x7fff));
                let (target, tail) = match tail.split_first() {
                    Some((&t, tail)) if patch => (Some(usize::from(t)), tail),
                    _ => (None, tail),
                };
                let take = len.min(tail.len());
                let mut bytes = tail[..take].to_vec();
                rest = &tail[take..];
                if let (Some(t), Some(head)) = (target, bytes.get_mut(..2))
                    && !queries.is_empty()
                {
                    head.copy_from_slice(&queries[t % queries.len()].0.to_be_bytes());
                }
                last = bytes.clone();
                bytes
            }
            1 => last.clone(),
            2 => {
                let Some((&n, tail)) = rest.split_first() else {
                    break;
                };
                rest = tail;
                if !queries.is_empty() {
                    let k = usize::from(n) % queries.len();
                    state.forget(queries[k].0, now);
                    queries[k].3 = false;
                }
                continue;
            }
            _ => {
                drop(state.close());
                closed = true;
                for q in &mut queries {
                    q.3 = false;
                }
                continue;
            }
        };
        let before = state.outstanding();
        let matched = state.deliver(addr, &datagram, false, now);
        match matched {
            Matched::Answered => {
                assert!(!closed, "a datagram answered a query on a closed socket");
                assert_eq!(state.outstanding() + 1, before, "an answer ends one query");
                receipt.answered += 1;
                let id = u16::from_be_bytes([datagram[0], datagram[1]]);
                let q = queries
                    .iter_mut()
                    .find(|q| q.0 == id && q.3)
                    .expect("the answered query was outstanding");
                q.3 = false;
                match q.2.try_recv() {
                    Ok(Ok(Reply::Answer(answer))) => {
                        assert!(
                            Answer::parse_as(&q.1, &datagram, now, q.4).is_ok(),
                            "accepted a datagram that is no answer to its query"
                        );
                        drop(answer);
                    }
                    Ok(Ok(Reply::TooLarge)) => panic!("TooLarge without a cut datagram"),
                    Ok(Err(err)) => assert!(
                        matches!(err, crate::UpstreamError::CaseNotPreserved(_)) && q.4,
                        "unexpected failure {err}"
                    ),
                    Err(_) => panic!("an answered query got nothing"),
                }
            }
            Matched::Late | Matched::Suspicious | Matched::Burst => {
                assert_eq!(
                    state.outstanding(),
                    before,
                    "a dropped datagram ends nothing"
                );
                receipt.suspicious += 1;
                receipt.bursts += usize::from(matched == Matched::Burst);
            }
        }
    }
    let open = queries.iter().filter(|q| q.3).count();
    assert_eq!(state.outstanding(), open, "outstanding queries miscounted");
    receipt.outstanding = open;
    receipt
}
