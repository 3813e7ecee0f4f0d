//! A thread's replay of its last answers from the cache: a query repeated byte for byte but
//! for its ID is answered with a copy of the answer this thread wrote for it last, while that
//! answer's entry is still the cache's and of the same age in whole seconds. That is exactly
//! what parsing the query, looking it up and writing the answer again would give (the
//! answer depends on nothing else: the query's bytes, the entry, its age in seconds and the
//! transport), at the cost of one comparison and one copy.
//!
//! Each thread keeps [`SLOTS`] answers at most, of queries up to [`MAX_QUERY`] bytes and
//! answers and entries up to [`MAX_ANSWER`] (under 60 KiB a thread, entries included, also
//! ones evicted since, until their slot is reused), and never replays one whose entry the
//! cache no longer holds (it is marked when evicted or replaced).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::cache::Entry;
use crate::resolver::Transport;
use crate::wire::EDNS_UDP_SIZE;

/// Answers kept per thread.
const SLOTS: usize = 16;
/// Longest query kept (a question with the longest name and an OPT record is under 300).
const MAX_QUERY: usize = 512;
/// Longest answer kept: what fits the usual EDNS buffer.
const MAX_ANSWER: usize = EDNS_UDP_SIZE as usize;

/// One answer a thread wrote: for which cache, query and transport, from which entry at
/// which age, and the key it was looked up under (for a prefetch).
struct Slot {
    cache: u64,
    transport: Transport,
    /// The query's bytes after its ID.
    query: Vec<u8>,
    key: Vec<u8>,
    entry: Arc<Entry>,
    /// The entry's age in whole seconds when the answer was written.
    age: u64,
    qtype: u16,
    /// The answer as written, with that query's ID.
    answer: Vec<u8>,
}

thread_local! {
    static REPLAY: RefCell<[Option<Slot>; SLOTS]> =
        const { RefCell::new([const { None }; SLOTS]) };
}

/// The slot of `query`: its bytes after the ID, mixed 8 at a time (so that the A and AAAA
/// questions a stub asks together for one name take different slots, mostly).
#[inline]
fn slot_of(query: &[u8]) -> usize {
    let rest = query.get(2..).unwrap_or_default();
    let mix = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(0x517C_C1B7_2722_0A95);
    let mut chunks = rest.chunks_exact(8);
    let mut h = rest.len() as u64;
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        h = mix(h, u64::from_le_bytes(w));
    }
    let mut w = [0u8; 8];
    w[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = mix(h, u64::from_le_bytes(w));
    (h >> 60) as usize % SLOTS
}

/// What a replayed answer came from: the key, the entry and its age (to count the hit and
/// perhaps prefetch), and the question's type.
pub(crate) struct Replayed<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) entry: &'a Entry,
    pub(crate) age: Duration,
    pub(crate) qtype: u16,
}

/// Writes into `out` the answer this thread last wrote for `query` (but for its ID) from
/// cache `cache` over `transport`, if its entry is still cached and of the same age in whole
/// seconds at `now`; then runs `hit` on where it came from. False when it cannot.
#[inline]
pub(crate) fn replay(
    cache: u64,
    query: &[u8],
    transport: Transport,
    now: Instant,
    out: &mut Vec<u8>,
    hit: impl FnOnce(Replayed<'_>),
) -> bool {
    let (Some(id), Some(rest)) = (query.get(..2), query.get(2..)) else {
        return false;
    };
    if query.len() > MAX_QUERY {
        return false;
    }
    REPLAY
        .try_with(|slots| {
            let slots = slots.borrow();
            let Some(s) = slots[slot_of(query)].as_ref() else {
                return false;
            };
            if s.cache != cache || s.transport != transport || s.query != rest {
                return false;
            }
            let age = s.entry.age(now);
            if age.as_secs() != s.age || s.entry.is_gone() {
                return false;
            }
            out.clear();
            out.extend_from_slice(id);
            out.extend_from_slice(&s.answer[2..]);
            hit(Replayed {
                key: &s.key,
                entry: &s.entry,
                age,
                qtype: s.qtype,
            });
            true
        })
        .unwrap_or(false)
}

/// Keeps `answer`, just written for `query` from `entry` (cached under `key` in cache
/// `cache`) at `age`, for [`replay`]. Answers and queries too long to keep are not.
#[allow(clippy::too_many_arguments)]
pub(crate) fn keep(
    cache: u64,
    query: &[u8],
    transport: Transport,
    key: &[u8],
    entry: &Arc<Entry>,
    age: Duration,
    qtype: u16,
    answer: &[u8],
) {
    // The entry's size too: a short answer (TC=1) may come from a long entry, which the slot
    // would keep alive after the cache let it go.
    let fits = |len: usize, max: usize| (2..=max).contains(&len);
    if !fits(query.len(), MAX_QUERY) || !fits(answer.len(), MAX_ANSWER) || entry.len() > MAX_ANSWER
    {
        return;
    }
    let _ = REPLAY.try_with(|slots| {
        let mut slots = slots.borrow_mut();
        // A slot's buffers are reused: a thread that answers many queries in turn does not
        // allocate for each.
        let s = slots[slot_of(query)].get_or_insert_with(|| Slot {
            cache,
            transport,
            query: Vec::new(),
            key: Vec::new(),
            entry: Arc::clone(entry),
            age: 0,
            qtype,
            answer: Vec::new(),
        });
        s.cache = cache;
        s.transport = transport;
        refill(&mut s.query, &query[2..]);
        refill(&mut s.key, key);
        if !Arc::ptr_eq(&s.entry, entry) {
            s.entry = Arc::clone(entry);
        }
        s.age = age.as_secs();
        s.qtype = qtype;
        refill(&mut s.answer, answer);
    });
}

fn refill(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.clear();
    buf.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::client_query;
    use hickory_proto::rr::RecordType;

    /// A stub asks A and AAAA together: were they one slot, each would push the other out
    /// and neither would be replayed. Most names' two questions take two slots.
    #[test]
    fn a_names_a_and_aaaa_questions_take_different_slots() {
        let apart = (0..20)
            .filter(|i| {
                let name = format!("svc-{i}.ns-1.svc.cluster.local.");
                let a = client_query(&name, RecordType::A, Some(1232));
                let aaaa = client_query(&name, RecordType::AAAA, Some(1232));
                slot_of(&a) != slot_of(&aaaa)
            })
            .count();
        assert!(apart >= 15, "{apart} of 20");
        // The ID is not part of it.
        let mut q = client_query("a.test.", RecordType::A, None);
        let slot = slot_of(&q);
        q[..2].copy_from_slice(&[0xab, 0xcd]);
        assert_eq!(slot_of(&q), slot);
    }
}
