//! Raw wire queries: a DNS message in, the response message out.

use std::ffi::{c_int, c_void};

use dnscore::Transport;

use crate::boundary::{UserData, ffi_call, try_mut, try_ref, try_slice};
use crate::code::dnscore_code;
use crate::resolver::{dnscore_resolver, spawn_callback};

/// Called once with the outcome of `dnscore_resolve_async`, on a resolver thread: `code`
/// is 0 or a `DNSCORE_E*` code; on success `response` holds `len` bytes, valid only until
/// the callback returns; otherwise `response` is NULL and `len` 0. It must not block for
/// long: it runs on one of the resolver's worker threads.
pub type dnscore_resolve_cb =
    Option<unsafe extern "C" fn(user: *mut c_void, code: c_int, response: *const u8, len: usize)>;

/// The response to `query`: from the cache without leaving the calling thread when it is
/// there, else through [`dnscore_resolver::wait`].
fn resolve_blocking(
    r: &dnscore_resolver,
    query: &[u8],
    transport: Transport,
    timeout_ms: u32,
) -> Result<Vec<u8>, dnscore_code> {
    let mut out = Vec::new();
    let hit = {
        // A hit may start a prefetch: on the resolver's runtime, never on the caller's.
        let _ctx = r.enter();
        r.resolver().resolve_cached(query, transport, &mut out)?
    };
    if hit {
        return Ok(out);
    }
    let resolver = r.resolver().clone();
    let query = query.to_vec();
    r.wait(timeout_ms, async move {
        resolver.resolve_into(&query, transport, &mut out).await?;
        Ok(out)
    })
}

/// The shared body of `dnscore_resolve` and `dnscore_resolve_datagram`.
///
/// # Safety
/// As for `dnscore_resolve`.
#[allow(clippy::too_many_arguments)]
unsafe fn resolve_c(
    resolver: *const dnscore_resolver,
    query: *const u8,
    len: usize,
    out: *mut u8,
    cap: usize,
    out_len: *mut usize,
    timeout_ms: u32,
    transport: Transport,
) -> c_int {
    ffi_call(|| {
        // SAFETY: the caller guarantees a live resolver or NULL.
        let r = unsafe { try_ref(resolver) }?;
        // SAFETY: the caller guarantees `len` readable bytes at a non-NULL `query`.
        let query = unsafe { try_slice(query, len) }?;
        // SAFETY: the caller guarantees NULL or writable.
        let out_len = unsafe { try_mut(out_len) }?;
        if out.is_null() {
            return Err(dnscore_code::DNSCORE_ENULL);
        }
        if query.is_empty() {
            return Err(dnscore_code::DNSCORE_EINVAL);
        }
        let response = resolve_blocking(r, query, transport, timeout_ms)?;
        if response.len() > cap {
            *out_len = response.len();
            return Err(dnscore_code::DNSCORE_ENOSPC);
        }
        // SAFETY: `out` is non-NULL with `cap >= response.len()` writable bytes (caller's
        // guarantee); the source is our own vector, so they do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(response.as_ptr(), out, response.len()) };
        *out_len = response.len();
        Ok(())
    })
}

/// Answers a DNS query in wire format (as sent over UDP, without TCP's length prefix),
/// blocking the calling thread: the response echoes the query's ID and question, with up
/// to 65,535 bytes (as over TCP). When no upstream answers the response is SERVFAIL, not
/// an error. A cache hit never leaves the calling thread.
///
/// On success (0) the response is in `out[0..*out_len]`. Otherwise nothing is written,
/// except that on `DNSCORE_ENOSPC` `*out_len` is set to the response's size (more than
/// `cap`; 65,535 always suffices). Errors: `DNSCORE_ENULL`, `DNSCORE_EINVAL` (`len` is 0),
/// `DNSCORE_EMALFORMED` (not answerable: drop the query), `DNSCORE_ETIMEOUT` (after
/// `timeout_ms`; 0: only the resolver's own deadline), `DNSCORE_ENOSPC`, `DNSCORE_EPANIC`.
///
/// Thread-safe; may be called from a thread inside a tokio runtime.
///
/// # Safety
/// `resolver` is NULL or a live resolver; `query` is NULL or points to `len` readable
/// bytes; `out` is NULL or points to `cap` writable bytes; `out_len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dnscore_resolve(
    resolver: *const dnscore_resolver,
    query: *const u8,
    len: usize,
    out: *mut u8,
    cap: usize,
    out_len: *mut usize,
    timeout_ms: u32,
) -> c_int {
    // SAFETY: the caller's guarantees are the ones `resolve_c` needs.
    unsafe {
        resolve_c(
            resolver,
            query,
            len,
            out,
            cap,
            out_len,
            timeout_ms,
            Transport::Tcp,
        )
    }
}

/// Like `dnscore_resolve`, for a query that came (or goes) over UDP: the response is at
/// most the query's EDNS buffer size (512 bytes without EDNS), and a larger answer comes
/// back with TC=1 so that the client asks again over TCP.
///
/// # Safety
/// As for `dnscore_resolve`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dnscore_resolve_datagram(
    resolver: *const dnscore_resolver,
    query: *const u8,
    len: usize,
    out: *mut u8,
    cap: usize,
    out_len: *mut usize,
    timeout_ms: u32,
) -> c_int {
    // SAFETY: the caller's guarantees are the ones `resolve_c` needs.
    unsafe {
        resolve_c(
            resolver,
            query,
            len,
            out,
            cap,
            out_len,
            timeout_ms,
            Transport::Udp,
        )
    }
}

/// Starts answering a wire query like `dnscore_resolve` (the query is copied) and returns
/// at once; `cb(user, ...)` is called exactly once later from a resolver thread with the
/// response or an error (`DNSCORE_EMALFORMED`, `DNSCORE_ETIMEOUT`, `DNSCORE_ESHUTDOWN`).
///
/// Returns 0 when the query was started; otherwise an error code (`DNSCORE_ENULL`,
/// `DNSCORE_EINVAL`, `DNSCORE_EPANIC`) and `cb` is never called.
///
/// # Safety
/// `resolver` is NULL or a live resolver; `query` is NULL or points to `len` readable
/// bytes; `user` may be used from another thread by `cb`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dnscore_resolve_async(
    resolver: *const dnscore_resolver,
    query: *const u8,
    len: usize,
    timeout_ms: u32,
    cb: dnscore_resolve_cb,
    user: *mut c_void,
) -> c_int {
    ffi_call(|| {
        // SAFETY: the caller guarantees a live resolver or NULL.
        let r = unsafe { try_ref(resolver) }?;
        // SAFETY: the caller guarantees `len` readable bytes at a non-NULL `query`.
        let query = unsafe { try_slice(query, len) }?.to_vec();
        let cb = cb.ok_or(dnscore_code::DNSCORE_ENULL)?;
        if query.is_empty() {
            return Err(dnscore_code::DNSCORE_EINVAL);
        }
        let user = UserData(user);
        let (resolver, handle) = (r.resolver().clone(), r.handle());
        let fut = async move { Ok(resolver.resolve(&query).await?) };
        // `r` is not used past this point: the callback may free it before we return.
        spawn_callback(handle, timeout_ms, fut, cb, user);
        Ok(())
    })
}
