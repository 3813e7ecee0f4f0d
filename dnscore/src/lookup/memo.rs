//! A thread's last lookups: the [`Lookup`] built from a fresh cache entry for a name as the
//! caller wrote it, handed out again (its records are shared, one reference count) while
//! that entry is still the cache's, still fresh, and of the same age in whole seconds, so
//! that every TTL in it is what building it again would give. A repeated lookup then
//! parses no name, builds no key and no records and takes no cache lock; the hit is still
//! counted and may start a prefetch, as any hit.
//!
//! Only lookups answered by their first candidate name are kept (a later candidate's
//! answer depends on the earlier ones' too), and only from entries of up to a UDP size, as
//! in the cache's own memo: a thread keeps at most [`SLOTS`] entries alive past eviction.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Lookup;
use crate::cache::Entry;
use crate::wire::EDNS_UDP_SIZE;

/// Slots per thread, direct-mapped by a hash of the name and type.
const SLOTS: usize = 16;

/// One kept lookup.
struct Slot {
    /// The cache it came from ([`AnswerCache::id`](crate::cache::AnswerCache::id)).
    cache: u64,
    rtype: u16,
    /// The name as the caller wrote it (the records' owner keeps its spelling).
    name: Box<str>,
    /// The entry's cache key (for prefetch).
    key: Box<[u8]>,
    entry: Arc<Entry>,
    /// The entry's age when `lookup` was built, in whole seconds.
    age_secs: u64,
    lookup: Lookup,
}

thread_local! {
    static LOOKUPS: RefCell<[Option<Slot>; SLOTS]> =
        const { RefCell::new([const { None }; SLOTS]) };
}

/// The slot of `name` and `rtype`: its length, first and last bytes, mixed.
fn slot_of(name: &str, rtype: u16) -> usize {
    let bytes = name.as_bytes();
    let word = |part: &[u8]| {
        let mut w = [0u8; 8];
        w[..part.len()].copy_from_slice(part);
        u64::from_le_bytes(w)
    };
    let head = word(&bytes[..bytes.len().min(8)]);
    let tail = word(&bytes[bytes.len().saturating_sub(8)..]);
    let mixed = (head ^ tail.rotate_left(29) ^ (bytes.len() as u64) << 48 ^ u64::from(rtype))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 59) as usize % SLOTS
}

/// The kept lookup of `name` and `rtype` from `cache`, if it is still what a lookup at
/// `now` would build; `hit` is called first with its key, entry and age (to count it).
pub(super) fn get(
    cache: u64,
    name: &str,
    rtype: u16,
    now: Instant,
    hit: impl FnOnce(&[u8], &Entry, Duration),
) -> Option<Lookup> {
    LOOKUPS
        .try_with(|slots| {
            let slots = slots.borrow();
            let s = slots[slot_of(name, rtype)].as_ref()?;
            if s.cache != cache || s.rtype != rtype || *s.name != *name || s.entry.is_gone() {
                return None;
            }
            let age = s.entry.age(now);
            if age.as_secs() != s.age_secs || !s.entry.is_fresh(age) {
                return None;
            }
            hit(&s.key, &s.entry, age);
            Some(s.lookup.clone())
        })
        .ok()
        .flatten()
}

/// Keeps `lookup`, built for `name` and `rtype` from the fresh `entry` (of `cache`, under
/// `key`) at `age`.
pub(super) fn put(
    cache: u64,
    name: &str,
    rtype: u16,
    key: &[u8],
    entry: &Arc<Entry>,
    age: Duration,
    lookup: &Lookup,
) {
    if entry.len() > usize::from(EDNS_UDP_SIZE) {
        return;
    }
    let _ = LOOKUPS.try_with(|slots| {
        let slot = &mut slots.borrow_mut()[slot_of(name, rtype)];
        match slot {
            // The same name again (a new second, a new entry): its buffers are reused.
            Some(s) if s.cache == cache && s.rtype == rtype && *s.name == *name => {
                if *s.key != *key {
                    s.key = key.into();
                }
                s.entry = Arc::clone(entry);
                s.age_secs = age.as_secs();
                s.lookup = lookup.clone();
            }
            _ => {
                *slot = Some(Slot {
                    cache,
                    rtype,
                    name: name.into(),
                    key: key.into(),
                    entry: Arc::clone(entry),
                    age_secs: age.as_secs(),
                    lookup: lookup.clone(),
                });
            }
        }
    });
}
