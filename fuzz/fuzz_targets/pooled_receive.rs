//! The pooled upstream socket's receive path: the queries dnscore would send for the
//! upstream-answer target's clients are outstanding on one socket (half of them with 0x20),
//! and the input is a script of datagrams (patched to an outstanding ID or not),
//! duplicates, callers giving up and the socket's retirement, after which every datagram
//! is a late answer. `dnscore::fuzzing::pooled_receive` checks, by panicking, that a query
//! is answered at most once, only by a datagram that validates as its answer, never after
//! it was given up or its socket closed, and that nothing else ends a query.
#![no_main]

use std::sync::OnceLock;

use dnscore::fuzzing::pooled_receive;
use dnscore_fuzz::answer_target_queries;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static QUERIES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let queries = QUERIES.get_or_init(answer_target_queries);
    let receipt = pooled_receive(queries, data);
    assert!(
        receipt.answered <= queries.len(),
        "more answers than queries"
    );
});
