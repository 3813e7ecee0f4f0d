//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not a stable API).
//!
//! They reach the internal readers directly, so that a fuzzer's bytes get past the checks a
//! socket would make for them (the upstream answer's ID is patched to match).

use tokio::time::Instant;

use crate::answer::Answer;
use crate::cache::TtlPolicy;
use crate::query::{self, Key};
use crate::wire::upstream_query;

/// Reads `client` as a client query; if it is answerable, treats `response` (with its ID
/// set to ours) as the upstream's answer to it and writes the client's answer.
///
/// Returns `None` when the query is rejected or the response is not accepted; otherwise
/// the bytes the client would get and the cache lifetime the answer was given.
pub fn upstream_answer(client: &[u8], response: &[u8]) -> Option<(Vec<u8>, u32)> {
    let q = query::parse(client).ok()?;
    let id = 0x2a2a;
    let sent = upstream_query(Key(q.key.as_bytes()), id);
    let mut response = response.to_vec();
    if let Some(head) = response.get_mut(..2) {
        head.copy_from_slice(&id.to_be_bytes());
    }
    let mut answer = Answer::parse(&sent, &response, Instant::now()).ok()?;
    TtlPolicy {
        min_ttl: 0,
        max_ttl: crate::DEFAULT_MAX_TTL,
        negative_max_ttl: crate::DEFAULT_NEGATIVE_MAX_TTL,
    }
    .apply(&mut answer);
    let mut out = Vec::new();
    answer.write_response(&q, Instant::now(), usize::from(u16::MAX), false, &mut out);
    Some((out, answer.lifetime))
}

/// The upstream query dnscore would send for `client` (ID 0x2a2a), if it is answerable: a
/// seed for the response corpus.
pub fn upstream_query_for(client: &[u8]) -> Option<Vec<u8>> {
    let q = query::parse(client).ok()?;
    Some(upstream_query(Key(q.key.as_bytes()), 0x2a2a))
}
