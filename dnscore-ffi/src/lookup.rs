//! Address lookups by host name: blocking and with a callback.

use std::ffi::{c_char, c_int, c_void};
use std::net::IpAddr;

use dnscore::proto::rr::RecordType;

use crate::boundary::{UserData, ffi_call, try_mut, try_ref, try_str};
use crate::code::dnscore_code;
use crate::resolver::{dnscore_resolver, spawn_callback};

/// `family`: IPv4 and IPv6 addresses (A and AAAA, asked concurrently).
pub const DNSCORE_AF_UNSPEC: c_int = 0;
/// `family`: IPv4 addresses only (A).
pub const DNSCORE_AF_INET: c_int = 4;
/// `family`: IPv6 addresses only (AAAA).
pub const DNSCORE_AF_INET6: c_int = 6;

/// One IP address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct dnscore_addr {
    /// `DNSCORE_AF_INET` (4) or `DNSCORE_AF_INET6` (6).
    pub family: c_int,
    /// The address in network byte order: 4 bytes for IPv4 (the other 12 are zero), 16
    /// for IPv6. Copy it into `sin_addr` / `sin6_addr`.
    pub addr: [u8; 16],
}

impl From<IpAddr> for dnscore_addr {
    fn from(ip: IpAddr) -> Self {
        let mut addr = [0; 16];
        match ip {
            IpAddr::V4(v4) => {
                addr[..4].copy_from_slice(&v4.octets());
                Self {
                    family: DNSCORE_AF_INET,
                    addr,
                }
            }
            IpAddr::V6(v6) => Self {
                family: DNSCORE_AF_INET6,
                addr: v6.octets(),
            },
        }
    }
}

/// Called once with the outcome of `dnscore_lookup_ip_async`, on a resolver thread:
/// `code` is 0 or a `DNSCORE_E*` code; on success `addrs` holds `n` addresses, valid only
/// until the callback returns (copy what you keep); otherwise `addrs` is NULL and `n` 0.
/// It must not block for long: it runs on one of the resolver's worker threads.
pub type dnscore_lookup_cb = Option<
    unsafe extern "C" fn(user: *mut c_void, code: c_int, addrs: *const dnscore_addr, n: usize),
>;

/// Checks `family` before anything is spawned.
fn check_family(family: c_int) -> Result<c_int, dnscore_code> {
    match family {
        DNSCORE_AF_UNSPEC | DNSCORE_AF_INET | DNSCORE_AF_INET6 => Ok(family),
        _ => Err(dnscore_code::DNSCORE_EINVAL),
    }
}

/// The addresses of `host` of `family`; `DNSCORE_ENODATA` when there are none.
async fn lookup(
    resolver: dnscore::Resolver,
    host: String,
    family: c_int,
) -> Result<Vec<dnscore_addr>, dnscore_code> {
    let wanted = |ip: &IpAddr| match family {
        DNSCORE_AF_INET => ip.is_ipv4(),
        DNSCORE_AF_INET6 => ip.is_ipv6(),
        _ => true,
    };
    let ips: Vec<IpAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
        vec![ip]
    } else {
        match family {
            DNSCORE_AF_INET | DNSCORE_AF_INET6 => {
                let rtype = if family == DNSCORE_AF_INET {
                    RecordType::A
                } else {
                    RecordType::AAAA
                };
                let answer = resolver.lookup(&host, rtype).await?;
                answer.rdata_of(rtype).filter_map(|d| d.ip_addr()).collect()
            }
            _ => resolver.lookup_ip(&host).await?,
        }
    };
    let addrs: Vec<dnscore_addr> = ips.into_iter().filter(wanted).map(Into::into).collect();
    if addrs.is_empty() {
        return Err(dnscore_code::DNSCORE_ENODATA);
    }
    Ok(addrs)
}

/// Looks up the addresses of `host`, blocking the calling thread until they are known.
///
/// An IP literal is returned as is. With the configuration's `hosts_file`, that file is
/// asked first; with its `resolv_conf` (see `dnscore_config_system`), `host` goes through
/// the search list and `ndots` as in glibc; without them, `host` is asked as it is.
/// `family` is `DNSCORE_AF_UNSPEC` (IPv4 then IPv6), `DNSCORE_AF_INET` or
/// `DNSCORE_AF_INET6`. `timeout_ms` bounds this call (0: only the resolver's timeout).
///
/// On success (0) the addresses are in `out[0..*n]`. Otherwise nothing is written, except
/// that on `DNSCORE_ENOSPC` `*n` is set to the number of addresses found (more than
/// `cap`). Errors: `DNSCORE_ENULL` (`resolver`, `host` or `n` NULL, or `out` NULL while
/// `cap` is not 0), `DNSCORE_EUTF8`, `DNSCORE_EINVAL` (unknown family), `DNSCORE_EBADNAME`,
/// `DNSCORE_ENXDOMAIN`, `DNSCORE_ENODATA`, `DNSCORE_ETIMEOUT`, `DNSCORE_ENOANSWER`,
/// `DNSCORE_EOVERLOADED`, `DNSCORE_ENOSPC`, `DNSCORE_EPANIC`.
///
/// Thread-safe; may be called from a thread inside a tokio runtime.
///
/// # Safety
/// `resolver` is NULL or a live resolver; `host` is NULL or NUL-terminated; `out` is NULL
/// or points to `cap` writable `dnscore_addr`; `n` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dnscore_lookup_ip(
    resolver: *const dnscore_resolver,
    host: *const c_char,
    family: c_int,
    out: *mut dnscore_addr,
    cap: usize,
    n: *mut usize,
    timeout_ms: u32,
) -> c_int {
    ffi_call(|| {
        // SAFETY: the caller guarantees a live resolver or NULL.
        let r = unsafe { try_ref(resolver) }?;
        // SAFETY: the caller guarantees NULL or a NUL-terminated string.
        let host = unsafe { try_str(host) }?;
        // SAFETY: the caller guarantees NULL or writable.
        let n = unsafe { try_mut(n) }?;
        if out.is_null() && cap > 0 {
            return Err(dnscore_code::DNSCORE_ENULL);
        }
        let family = check_family(family)?;
        let addrs = r.wait(
            timeout_ms,
            lookup(r.resolver().clone(), host.to_owned(), family),
        )?;
        if addrs.len() > cap {
            *n = addrs.len();
            return Err(dnscore_code::DNSCORE_ENOSPC);
        }
        if !addrs.is_empty() {
            // SAFETY: `out` is non-NULL here (cap >= addrs.len() > 0) and the caller
            // guarantees `cap` writable elements; the source is our own vector.
            unsafe { std::ptr::copy_nonoverlapping(addrs.as_ptr(), out, addrs.len()) };
        }
        *n = addrs.len();
        Ok(())
    })
}

/// Starts a lookup like `dnscore_lookup_ip` and returns at once; `cb(user, ...)` is called
/// exactly once later from a resolver thread with the outcome (also `DNSCORE_ETIMEOUT`
/// after `timeout_ms`, or `DNSCORE_ESHUTDOWN` when the resolver is freed first).
///
/// Returns 0 when the lookup was started; otherwise an error code (`DNSCORE_ENULL`,
/// `DNSCORE_EUTF8`, `DNSCORE_EINVAL`, `DNSCORE_EPANIC`) and `cb` is never called.
///
/// # Safety
/// `resolver` is NULL or a live resolver; `host` is NULL or NUL-terminated (it is copied);
/// `user` may be used from another thread by `cb`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dnscore_lookup_ip_async(
    resolver: *const dnscore_resolver,
    host: *const c_char,
    family: c_int,
    timeout_ms: u32,
    cb: dnscore_lookup_cb,
    user: *mut c_void,
) -> c_int {
    ffi_call(|| {
        // SAFETY: the caller guarantees a live resolver or NULL.
        let r = unsafe { try_ref(resolver) }?;
        // SAFETY: the caller guarantees NULL or a NUL-terminated string.
        let host = unsafe { try_str(host) }?;
        let cb = cb.ok_or(dnscore_code::DNSCORE_ENULL)?;
        let family = check_family(family)?;
        let user = UserData(user);
        let (fut, handle) = (
            lookup(r.resolver().clone(), host.to_owned(), family),
            r.handle(),
        );
        // `r` is not used past this point: the callback may free it before we return.
        spawn_callback(handle, timeout_ms, fut, cb, user);
        Ok(())
    })
}
