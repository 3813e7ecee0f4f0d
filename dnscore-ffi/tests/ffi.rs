//! The C ABI called from Rust, against the test upstream on loopback: lookups, raw queries,
//! the async callbacks, argument errors, and calls from inside another tokio runtime.

// The tests hand `dnscore_error` back by value, as C does.
#![allow(clippy::result_large_err)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::net::UdpSocket;
use std::ptr;
use std::sync::mpsc;
use std::time::Duration;

use dnscore::proto::op::Message;
use dnscore::proto::rr::RecordType;
use dnscore_ffi::*;
use dnscore_testkit::TestUpstream;

const OK: c_int = dnscore_code::DNSCORE_OK as c_int;

fn code(c: dnscore_code) -> c_int {
    c as c_int
}

/// A test upstream on a runtime of its own, so that a test may block its own thread (or
/// its own runtime) in a dnscore call without starving the server.
struct Upstream {
    server: TestUpstream,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Upstream {
    fn start() -> Self {
        // Started from a plain thread: the test itself may be inside a runtime.
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let server = runtime.block_on(TestUpstream::start()).unwrap();
            Self {
                server,
                runtime: Some(runtime),
            }
        })
        .join()
        .unwrap()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.server.stop();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// An owned resolver, freed on drop.
struct Resolver(*mut dnscore_resolver);

// SAFETY (test): the ABI documents the resolver as shareable between threads.
unsafe impl Send for Resolver {}
// SAFETY (test): as above.
unsafe impl Sync for Resolver {}

impl Drop for Resolver {
    fn drop(&mut self) {
        // SAFETY: made by dnscore_resolver_new, freed once.
        unsafe { dnscore_resolver_free(self.0) };
    }
}

fn resolver_for(upstreams: &[&str], timeout_ms: u32) -> Result<Resolver, dnscore_error> {
    resolver_with(upstreams, timeout_ms, &[])
}

/// A resolver with `settings` ("name=value") besides the upstreams and timeouts.
fn resolver_with(
    upstreams: &[&str],
    timeout_ms: u32,
    settings: &[&str],
) -> Result<Resolver, dnscore_error> {
    let c_strings = |list: &[&str]| -> Vec<CString> {
        list.iter().map(|s| CString::new(*s).unwrap()).collect()
    };
    let (strings, pairs) = (c_strings(upstreams), c_strings(settings));
    let ptrs: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
    let pair_ptrs: Vec<*const c_char> = pairs.iter().map(|s| s.as_ptr()).collect();
    let mut cfg = dnscore_config_default();
    cfg.upstreams = ptrs.as_ptr();
    cfg.upstreams_len = ptrs.len();
    cfg.timeout_ms = timeout_ms;
    cfg.attempt_timeout_ms = timeout_ms.min(400);
    if !pair_ptrs.is_empty() {
        cfg.settings = pair_ptrs.as_ptr();
        cfg.settings_len = pair_ptrs.len();
    }
    let mut err = dnscore_error::new_zeroed();
    // SAFETY: cfg and its strings live across the call; err is writable.
    let r = unsafe { dnscore_resolver_new(&cfg, &mut err) };
    if r.is_null() {
        Err(err)
    } else {
        Ok(Resolver(r))
    }
}

trait Zeroed {
    fn new_zeroed() -> Self;
}

impl Zeroed for dnscore_error {
    fn new_zeroed() -> Self {
        Self {
            code: 0,
            message: [0; DNSCORE_ERROR_MESSAGE_LEN],
        }
    }
}

fn resolver(up: &Upstream) -> Resolver {
    resolver_for(&[&up.server.addr().to_string()], 2000).unwrap()
}

fn lookup(r: &Resolver, host: &str, family: c_int) -> Result<Vec<dnscore_addr>, c_int> {
    let host = CString::new(host).unwrap();
    let mut out = [dnscore_addr {
        family: 0,
        addr: [0; 16],
    }; 8];
    let mut n = 0;
    // SAFETY: all pointers valid for the call.
    let rc = unsafe {
        dnscore_lookup_ip(
            r.0,
            host.as_ptr(),
            family,
            out.as_mut_ptr(),
            out.len(),
            &mut n,
            0,
        )
    };
    if rc == OK {
        Ok(out[..n].to_vec())
    } else {
        Err(rc)
    }
}

fn ip(a: &dnscore_addr) -> std::net::IpAddr {
    match a.family {
        DNSCORE_AF_INET => {
            std::net::Ipv4Addr::new(a.addr[0], a.addr[1], a.addr[2], a.addr[3]).into()
        }
        _ => std::net::Ipv6Addr::from(a.addr).into(),
    }
}

fn query(name: &str, rtype: RecordType, id: u16) -> Vec<u8> {
    dnscore_testkit::query(id, name, rtype, None)
}

fn resolve(r: &Resolver, q: &[u8], cap: usize) -> (c_int, Vec<u8>, usize) {
    let mut out = vec![0u8; cap];
    let mut len = 0;
    // SAFETY: all pointers valid for the call.
    let rc =
        unsafe { dnscore_resolve(r.0, q.as_ptr(), q.len(), out.as_mut_ptr(), cap, &mut len, 0) };
    out.truncate(if rc == OK { len } else { 0 });
    (rc, out, len)
}

#[test]
fn lookup_ip_by_family_and_from_cache() {
    let up = Upstream::start();
    let r = resolver(&up);
    let all: Vec<_> = lookup(&r, "a.test", DNSCORE_AF_UNSPEC)
        .unwrap()
        .iter()
        .map(ip)
        .collect();
    assert_eq!(
        all,
        [
            "192.0.2.1".parse::<std::net::IpAddr>().unwrap(),
            "2001:db8::1".parse().unwrap()
        ]
    );
    let v4 = lookup(&r, "a.test", DNSCORE_AF_INET).unwrap();
    assert_eq!(
        (v4.len(), v4[0].family, &v4[0].addr[..4]),
        (1, 4, &[192, 0, 2, 1][..])
    );
    assert_eq!(v4[0].addr[4..], [0; 12]);
    assert_eq!(
        lookup(&r, "A.TEST.", DNSCORE_AF_INET6).unwrap()[0].family,
        6
    );
    let before = up.server.total_queries();
    for _ in 0..10 {
        lookup(&r, "a.test", DNSCORE_AF_UNSPEC).unwrap();
    }
    assert_eq!(
        up.server.total_queries(),
        before,
        "repeats come from the cache"
    );
    assert_eq!(
        lookup(&r, "192.0.2.77", DNSCORE_AF_UNSPEC).unwrap()[0].addr[3],
        77
    );
}

#[test]
fn lookup_errors() {
    let up = Upstream::start();
    let r = resolver(&up);
    assert_eq!(
        lookup(&r, "nope.test", 0),
        Err(code(dnscore_code::DNSCORE_ENXDOMAIN))
    );
    assert_eq!(
        lookup(&r, "b.test", DNSCORE_AF_INET6),
        Err(code(dnscore_code::DNSCORE_ENODATA))
    );
    assert_eq!(
        lookup(&r, "a.test", 5),
        Err(code(dnscore_code::DNSCORE_EINVAL))
    );
    assert_eq!(
        lookup(&r, "a..test", 0),
        Err(code(dnscore_code::DNSCORE_EBADNAME))
    );

    let mut out = [dnscore_addr {
        family: 0,
        addr: [0; 16],
    }; 1];
    let mut n = 99;
    let host = c"a.test";
    // SAFETY: valid pointers; `out` has room for 1.
    let rc = unsafe { dnscore_lookup_ip(r.0, host.as_ptr(), 0, out.as_mut_ptr(), 1, &mut n, 0) };
    assert_eq!(
        (rc, n, out[0].family),
        (code(dnscore_code::DNSCORE_ENOSPC), 2, 0)
    );
    // SAFETY: NULL arguments are checked, never dereferenced.
    unsafe {
        let rc = dnscore_lookup_ip(
            ptr::null(),
            host.as_ptr(),
            0,
            out.as_mut_ptr(),
            1,
            &mut n,
            0,
        );
        assert_eq!(rc, code(dnscore_code::DNSCORE_ENULL));
        let rc = dnscore_lookup_ip(r.0, ptr::null(), 0, out.as_mut_ptr(), 1, &mut n, 0);
        assert_eq!(rc, code(dnscore_code::DNSCORE_ENULL));
        let rc = dnscore_lookup_ip(r.0, host.as_ptr(), 0, ptr::null_mut(), 1, &mut n, 0);
        assert_eq!(rc, code(dnscore_code::DNSCORE_ENULL));
        let rc = dnscore_lookup_ip(
            r.0,
            host.as_ptr(),
            0,
            out.as_mut_ptr(),
            1,
            ptr::null_mut(),
            0,
        );
        assert_eq!(rc, code(dnscore_code::DNSCORE_ENULL));
        let bad = b"a\xff.test\0";
        let rc = dnscore_lookup_ip(r.0, bad.as_ptr().cast(), 0, out.as_mut_ptr(), 1, &mut n, 0);
        assert_eq!(rc, code(dnscore_code::DNSCORE_EUTF8));
    }
}

#[test]
fn resolve_wire_queries() {
    let up = Upstream::start();
    let r = resolver(&up);
    let q = query("a.test.", RecordType::A, 0x1234);
    let (rc, resp, _) = resolve(&r, &q, 512);
    assert_eq!(rc, OK);
    let msg = Message::from_vec(&resp).unwrap();
    assert_eq!((msg.metadata.id, msg.answers.len()), (0x1234, 1));
    // A hit echoes the new ID.
    let (rc, resp, _) = resolve(&r, &query("a.test.", RecordType::A, 7), 512);
    assert_eq!((rc, Message::from_vec(&resp).unwrap().metadata.id), (OK, 7));

    let big = query("big.test.", RecordType::TXT, 9);
    let (rc, _, needed) = resolve(&r, &big, 512);
    assert_eq!(rc, code(dnscore_code::DNSCORE_ENOSPC));
    assert!(needed > 2000, "{needed}");
    let (rc, resp, _) = resolve(&r, &big, needed);
    assert_eq!((rc, resp.len()), (OK, needed));

    // Over UDP without EDNS the answer is cut to 512 bytes with TC=1.
    let mut out = vec![0u8; 65535];
    let mut len = 0;
    // SAFETY: valid pointers for the call.
    let rc = unsafe {
        dnscore_resolve_datagram(
            r.0,
            big.as_ptr(),
            big.len(),
            out.as_mut_ptr(),
            out.len(),
            &mut len,
            0,
        )
    };
    assert_eq!(rc, OK);
    assert!(len <= 512);
    assert!(Message::from_vec(&out[..len]).unwrap().metadata.truncation);

    assert_eq!(
        resolve(&r, &[1, 2, 3], 512).0,
        code(dnscore_code::DNSCORE_EMALFORMED)
    );
    assert_eq!(resolve(&r, &[], 512).0, code(dnscore_code::DNSCORE_EINVAL));
    // SAFETY: NULL arguments are checked.
    let rc = unsafe { dnscore_resolve(r.0, ptr::null(), 12, out.as_mut_ptr(), 512, &mut len, 0) };
    assert_eq!(rc, code(dnscore_code::DNSCORE_ENULL));
}

/// A `user` pointer for one async call: a boxed clone of `tx` that the callback takes over.
/// The callback must own its Sender: a borrowed one could be dropped by the test (and the
/// channel freed) as soon as the message arrives, while the callback is still inside `send`.
fn sender_for<T>(tx: &mpsc::Sender<T>) -> *mut c_void {
    Box::into_raw(Box::new(tx.clone())).cast()
}

/// Takes back a `user` pointer whose call was refused, so its callback never runs.
fn reclaim<T>(user: *mut c_void) {
    // SAFETY: made by `sender_for` with the same `T`, and no callback owns it.
    drop(unsafe { Box::from_raw(user.cast::<mpsc::Sender<T>>()) });
}

unsafe extern "C" fn on_lookup(
    user: *mut c_void,
    code: c_int,
    addrs: *const dnscore_addr,
    n: usize,
) {
    // SAFETY: `user` is a boxed Sender made by `sender_for` for this one call.
    let tx = unsafe { Box::from_raw(user.cast::<mpsc::Sender<(c_int, Vec<dnscore_addr>)>>()) };
    let list = if addrs.is_null() {
        Vec::new()
    } else {
        // SAFETY: the ABI gives `n` addresses valid during the call.
        unsafe { std::slice::from_raw_parts(addrs, n) }.to_vec()
    };
    // The receiver is gone only if the test already failed.
    let _ = tx.send((code, list));
}

unsafe extern "C" fn on_resolve(user: *mut c_void, code: c_int, resp: *const u8, len: usize) {
    // SAFETY: as in `on_lookup`.
    let tx = unsafe { Box::from_raw(user.cast::<mpsc::Sender<(c_int, Vec<u8>)>>()) };
    let bytes = if resp.is_null() {
        Vec::new()
    } else {
        // SAFETY: the ABI gives `len` bytes valid during the call.
        unsafe { std::slice::from_raw_parts(resp, len) }.to_vec()
    };
    // As in `on_lookup`.
    let _ = tx.send((code, bytes));
}

#[test]
fn async_callbacks() {
    let up = Upstream::start();
    let r = resolver(&up);
    let (tx, rx) = mpsc::channel::<(c_int, Vec<dnscore_addr>)>();
    for host in [c"a.test", c"nope.test"] {
        // SAFETY: the callback takes over the boxed Sender.
        let rc = unsafe {
            dnscore_lookup_ip_async(r.0, host.as_ptr(), 0, 0, Some(on_lookup), sender_for(&tx))
        };
        assert_eq!(rc, OK);
    }
    let mut got: Vec<_> = (0..2)
        .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    got.sort_by_key(|(c, _)| *c);
    assert_eq!((got[0].0, got[0].1.len()), (OK, 2));
    assert_eq!(got[1].0, code(dnscore_code::DNSCORE_ENXDOMAIN));
    let user = sender_for(&tx);
    // SAFETY: a NULL callback is refused, nothing is spawned.
    let rc = unsafe { dnscore_lookup_ip_async(r.0, c"a.test".as_ptr(), 0, 0, None, user) };
    assert_eq!(rc, code(dnscore_code::DNSCORE_ENULL));
    reclaim::<(c_int, Vec<dnscore_addr>)>(user);

    let (tx, rx) = mpsc::channel::<(c_int, Vec<u8>)>();
    let q = query("b.test.", RecordType::A, 42);
    // SAFETY: the query is copied; the callback takes over the boxed Sender.
    let rc = unsafe {
        dnscore_resolve_async(
            r.0,
            q.as_ptr(),
            q.len(),
            0,
            Some(on_resolve),
            sender_for(&tx),
        )
    };
    assert_eq!(rc, OK);
    let (c, resp) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((c, Message::from_vec(&resp).unwrap().metadata.id), (OK, 42));
}

/// An upstream that never answers: a bound UDP socket nobody reads.
fn black_hole() -> (UdpSocket, String) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap().to_string();
    (sock, addr)
}

#[test]
fn timeouts_and_free_with_queries_in_flight() {
    let (_hole, addr) = black_hole();
    let r = resolver_for(&[&addr], 5000).unwrap();
    let host = CString::new("slow.test").unwrap();
    let mut out = [dnscore_addr {
        family: 0,
        addr: [0; 16],
    }; 2];
    let mut n = 0;
    let started = std::time::Instant::now();
    // SAFETY: valid pointers for the call.
    let rc = unsafe { dnscore_lookup_ip(r.0, host.as_ptr(), 0, out.as_mut_ptr(), 2, &mut n, 100) };
    assert_eq!(rc, code(dnscore_code::DNSCORE_ETIMEOUT));
    assert!(started.elapsed() < Duration::from_secs(2));

    let (tx, rx) = mpsc::channel::<(c_int, Vec<dnscore_addr>)>();
    // SAFETY: the callback takes over the boxed Sender.
    let rc = unsafe {
        dnscore_lookup_ip_async(r.0, host.as_ptr(), 0, 0, Some(on_lookup), sender_for(&tx))
    };
    assert_eq!(rc, OK);
    let freeing = std::time::Instant::now();
    drop(r);
    // Free waits up to a second for the callback; only a free that waited that long may
    // return first (a loaded machine), and then the callback still comes, soon.
    let (c, _) = rx
        .try_recv()
        .or_else(|_| {
            assert!(
                freeing.elapsed() >= Duration::from_secs(1),
                "callback ran before free returned"
            );
            rx.recv_timeout(Duration::from_secs(5))
        })
        .unwrap();
    assert_eq!(c, code(dnscore_code::DNSCORE_ESHUTDOWN));
}

#[test]
fn bad_configs() {
    let err = resolver_for(&["not-an-address"], 0).err().unwrap();
    assert_eq!(err.code, code(dnscore_code::DNSCORE_ECONFIG));
    // SAFETY: the message is NUL-terminated by construction.
    let msg = unsafe { CStr::from_ptr(err.message.as_ptr()) }
        .to_str()
        .unwrap();
    assert!(msg.contains("not-an-address"), "{msg}");
    assert_eq!(
        resolver_for(&[], 0).err().unwrap().code,
        code(dnscore_code::DNSCORE_ECONFIG)
    );
    for (upstream, expected) in [
        (c"127.0.0.1:\xff53".as_ptr(), dnscore_code::DNSCORE_EUTF8),
        (ptr::null(), dnscore_code::DNSCORE_ENULL),
    ] {
        let list = [upstream];
        let mut cfg = dnscore_config_default();
        cfg.upstreams = list.as_ptr();
        cfg.upstreams_len = 1;
        let mut err = dnscore_error::new_zeroed();
        // SAFETY: `list` outlives the call; its one pointer is NULL or NUL-terminated.
        assert!(unsafe { dnscore_resolver_new(&cfg, &mut err) }.is_null());
        assert_eq!(err.code, code(expected));
    }
    let mut err = dnscore_error::new_zeroed();
    // SAFETY: NULL cfg is checked.
    assert!(unsafe { dnscore_resolver_new(ptr::null(), &mut err) }.is_null());
    assert_eq!(err.code, code(dnscore_code::DNSCORE_ENULL));
    // SAFETY: NULL is ignored.
    unsafe { dnscore_resolver_free(ptr::null_mut()) };
}

#[test]
fn settings_by_name_cap_the_ttls_and_bad_ones_are_named() {
    let up = Upstream::start();
    up.server.add_record(
        "long.test.",
        dnscore::proto::rr::RData::A(dnscore::proto::rr::rdata::A::new(10, 0, 0, 7)),
        300,
    );
    let addr = up.server.addr().to_string();
    let r = resolver_with(&[&addr], 2000, &["max-ttl=30s", "negative-max-ttl=5"]).unwrap();
    let (rc, out, _) = resolve(&r, &query("long.test.", RecordType::A, 7), 512);
    assert_eq!(rc, OK);
    let m = Message::from_vec(&out).unwrap();
    assert!(m.answers[0].ttl <= 30, "TTL {}", m.answers[0].ttl);
    let (rc, out, _) = resolve(&r, &query("nowhere.test.", RecordType::A, 8), 512);
    assert_eq!(rc, OK);
    let m = Message::from_vec(&out).unwrap();
    assert!(
        m.authorities[0].ttl <= 5,
        "negative TTL {}",
        m.authorities[0].ttl
    );
    for (bad, says) in [
        ("max-tll=30", "unknown setting"),
        ("max-ttl=soon", "whole seconds"),
        ("max-ttl", "name=value"),
    ] {
        let err = resolver_with(&[&addr], 2000, &[bad]).err().expect(bad);
        assert_eq!(err.code, code(dnscore_code::DNSCORE_ECONFIG));
        // SAFETY: the message is NUL-terminated within its array.
        let msg = unsafe { CStr::from_ptr(err.message.as_ptr()) }
            .to_str()
            .unwrap();
        assert!(msg.contains("settings[0]") && msg.contains(says), "{msg}");
    }
}

#[test]
fn strerror_is_static_and_total() {
    // SAFETY: dnscore_strerror never returns NULL.
    let s = |c| {
        unsafe { CStr::from_ptr(dnscore_strerror(c)) }
            .to_str()
            .unwrap()
    };
    assert_eq!(s(0), "success");
    assert!(s(code(dnscore_code::DNSCORE_ENXDOMAIN)).contains("NXDOMAIN"));
    assert_eq!(s(-1), "unknown error code");
    // SAFETY: static string.
    let v = unsafe { CStr::from_ptr(dnscore_version()) };
    assert_eq!(v.to_str().unwrap(), VERSION);
}

#[test]
fn one_resolver_many_threads() {
    let up = Upstream::start();
    let r = resolver(&up);
    std::thread::scope(|s| {
        for i in 0..8 {
            let r = &r;
            s.spawn(move || {
                for j in 0..50 {
                    let host = if (i + j) % 2 == 0 { "a.test" } else { "b.test" };
                    assert!(!lookup(r, host, DNSCORE_AF_INET).unwrap().is_empty());
                }
            });
        }
    });
    // 400 lookups of two names: two queries, and a few more only if an attempt outlives its
    // 400 ms on a loaded machine and is retried. Without the cache and dedup, hundreds.
    assert!(
        up.server.total_queries() <= 10,
        "{}",
        up.server.total_queries()
    );
}

/// Regression guard: `Handle::block_on` panics on a thread inside a runtime, and dropping a
/// runtime there panics too; calls from a current-thread runtime must wait on a channel.
#[tokio::test]
async fn works_inside_a_current_thread_runtime() {
    let up = Upstream::start();
    let r = resolver(&up);
    assert_eq!(lookup(&r, "a.test", 0).unwrap().len(), 2);
    let (rc, _, _) = resolve(&r, &query("b.test.", RecordType::A, 1), 512);
    assert_eq!(rc, OK);
    drop(r);
}

/// As above, on a multi-thread runtime, where the wait goes through `block_in_place`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_inside_a_multi_thread_runtime() {
    let up = Upstream::start();
    let r = std::sync::Arc::new(resolver(&up));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let r = std::sync::Arc::clone(&r);
            tokio::spawn(async move { lookup(&r, "a.test", DNSCORE_AF_INET).unwrap().len() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 1);
    }
}

/// The resolver pointer and a channel, for a callback that frees the resolver.
struct FreeFromCallback {
    resolver: *mut dnscore_resolver,
    done: mpsc::Sender<c_int>,
}

unsafe extern "C" fn free_in_callback(
    user: *mut c_void,
    code: c_int,
    _addrs: *const dnscore_addr,
    _n: usize,
) {
    // SAFETY: `user` is the boxed FreeFromCallback the test leaked for this one call.
    let ctx = unsafe { Box::from_raw(user.cast::<FreeFromCallback>()) };
    // SAFETY: the resolver is live and nothing else uses it any more.
    unsafe { dnscore_resolver_free(ctx.resolver) };
    // The receiver is gone only if the test already failed.
    let _ = ctx.done.send(code);
}

/// Freeing the resolver from its own callback (on one of its threads) must not panic or
/// deadlock: the runtime is shut down in the background.
#[test]
fn free_from_inside_a_callback() {
    let up = Upstream::start();
    let r = resolver(&up);
    let (tx, rx) = mpsc::channel();
    let ctx = Box::into_raw(Box::new(FreeFromCallback {
        resolver: r.0,
        done: tx,
    }));
    std::mem::forget(r);
    // SAFETY: the callback takes ownership of `ctx` and of the resolver.
    let rc = unsafe {
        dnscore_lookup_ip_async(
            (*ctx).resolver,
            c"a.test".as_ptr(),
            0,
            0,
            Some(free_in_callback),
            ctx.cast(),
        )
    };
    assert_eq!(rc, OK);
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), OK);
}

/// A cache hit near the end of its TTL refreshes the entry in the background on the
/// resolver's own threads, even when the call came from inside a runtime of the caller's
/// that ends right after (a prefetch spawned there would never run).
#[test]
fn a_hit_from_a_short_lived_runtime_still_prefetches() {
    use dnscore::proto::rr::{RData, rdata::A};
    let up = Upstream::start();
    let r = resolver(&up);
    let asked = |name: &str| up.server.queries(name, dnscore_testkit::Proto::Udp);
    for attempt in 0..3 {
        let name = format!("pf{attempt}.test.");
        up.server
            .add_record(&name, RData::A(A::new(192, 0, 2, 9)), 3);
        assert_eq!(resolve(&r, &query(&name, RecordType::A, 1), 512).0, OK);
        let before = asked(&name);
        // Into the last tenth of the 3 s TTL, where a hit starts a prefetch.
        std::thread::sleep(Duration::from_millis(2750));
        let caller = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (rc, hit, _) =
            caller.block_on(async { resolve(&r, &query(&name, RecordType::A, 2), 512) });
        drop(caller);
        assert_eq!(rc, OK);
        if Message::from_vec(&hit).unwrap().answers[0].ttl == 3 {
            continue; // the sleep overslept the TTL (a loaded machine): a miss, try again
        }
        let waited = std::time::Instant::now();
        while asked(&name) == before && waited.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            asked(&name) > before,
            "the entry was refreshed in the background"
        );
        return;
    }
    panic!("three sleeps of 2.75 s overslept a 3 s TTL");
}
