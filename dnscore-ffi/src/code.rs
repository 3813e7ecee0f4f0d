//! Result codes: one `#[repr(u32)]` enum in stable numbered ranges, their messages, and
//! the error detail that `dnscore_resolver_new` writes.

use std::ffi::{c_char, c_int};

/// The result of every fallible function, returned as an `int`. Zero is success; the
/// other values sit in stable ranges and are never renumbered:
///
/// - 1000-1999: the caller passed something wrong; fix the call.
/// - 2000-2999: the name or query could not be answered; the message says whether to retry.
/// - 3000-3999: the library itself failed.
#[repr(u32)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum dnscore_code {
    /// Success.
    DNSCORE_OK = 0,
    /// A required pointer argument was NULL.
    DNSCORE_ENULL = 1001,
    /// An argument is out of range (an unknown address family, a zero-length query).
    DNSCORE_EINVAL = 1002,
    /// The host name is not valid UTF-8.
    DNSCORE_EUTF8 = 1003,
    /// The output buffer is too small; the size needed was written to the length output.
    DNSCORE_ENOSPC = 1004,
    /// The configuration is invalid: no upstream, an upstream that is not "IP:PORT", or a
    /// value out of range. `dnscore_error.message` says which.
    DNSCORE_ECONFIG = 1005,
    /// The name does not exist (NXDOMAIN). Do not retry.
    DNSCORE_ENXDOMAIN = 2001,
    /// The name exists but has no address of the family asked for (NODATA).
    DNSCORE_ENODATA = 2002,
    /// The call's `timeout_ms` passed before an answer arrived. Retry later.
    DNSCORE_ETIMEOUT = 2003,
    /// No upstream answered within the resolver's deadline. Retry later.
    DNSCORE_ENOANSWER = 2004,
    /// The host is not a valid DNS name.
    DNSCORE_EBADNAME = 2005,
    /// The wire query cannot be answered at all (shorter than a header, or a response):
    /// drop it rather than reply.
    DNSCORE_EMALFORMED = 2006,
    /// An upstream's answer could not be read. Retry later.
    DNSCORE_EBADANSWER = 2007,
    /// Too many queries are waiting on upstreams already; this one was refused at once to
    /// bound memory. Retry later.
    DNSCORE_EOVERLOADED = 2008,
    /// A panic was caught inside the library (a bug: please report it).
    DNSCORE_EPANIC = 3001,
    /// The resolver is shutting down; the query was abandoned.
    DNSCORE_ESHUTDOWN = 3002,
    /// The resolver's runtime (its threads) could not be started.
    DNSCORE_ERUNTIME = 3003,
    /// An error this version does not classify more precisely.
    DNSCORE_EINTERNAL = 3999,
}

impl dnscore_code {
    /// The code as the `int` the functions return.
    pub(crate) fn as_int(self) -> c_int {
        self as c_int
    }

    /// The static, NUL-terminated message for the code.
    fn message(self) -> &'static str {
        match self {
            Self::DNSCORE_OK => "success\0",
            Self::DNSCORE_ENULL => "a required pointer argument was NULL\0",
            Self::DNSCORE_EINVAL => "invalid argument\0",
            Self::DNSCORE_EUTF8 => "host name is not valid UTF-8\0",
            Self::DNSCORE_ENOSPC => "output buffer too small\0",
            Self::DNSCORE_ECONFIG => "invalid configuration\0",
            Self::DNSCORE_ENXDOMAIN => "no such name (NXDOMAIN)\0",
            Self::DNSCORE_ENODATA => "no address of the requested family (NODATA)\0",
            Self::DNSCORE_ETIMEOUT => "timed out\0",
            Self::DNSCORE_ENOANSWER => "no upstream answered\0",
            Self::DNSCORE_EBADNAME => "invalid host name\0",
            Self::DNSCORE_EMALFORMED => "malformed query: not answered\0",
            Self::DNSCORE_EBADANSWER => "unreadable answer from upstream\0",
            Self::DNSCORE_EOVERLOADED => "resolver overloaded: too many queries in flight\0",
            Self::DNSCORE_EPANIC => "internal panic caught (a bug in dnscore)\0",
            Self::DNSCORE_ESHUTDOWN => "resolver is shutting down\0",
            Self::DNSCORE_ERUNTIME => "could not start the resolver's threads\0",
            Self::DNSCORE_EINTERNAL => "internal error\0",
        }
    }

    fn from_int(code: c_int) -> Option<Self> {
        const ALL: [dnscore_code; 18] = [
            dnscore_code::DNSCORE_OK,
            dnscore_code::DNSCORE_ENULL,
            dnscore_code::DNSCORE_EINVAL,
            dnscore_code::DNSCORE_EUTF8,
            dnscore_code::DNSCORE_ENOSPC,
            dnscore_code::DNSCORE_ECONFIG,
            dnscore_code::DNSCORE_ENXDOMAIN,
            dnscore_code::DNSCORE_ENODATA,
            dnscore_code::DNSCORE_ETIMEOUT,
            dnscore_code::DNSCORE_ENOANSWER,
            dnscore_code::DNSCORE_EBADNAME,
            dnscore_code::DNSCORE_EMALFORMED,
            dnscore_code::DNSCORE_EBADANSWER,
            dnscore_code::DNSCORE_EOVERLOADED,
            dnscore_code::DNSCORE_EPANIC,
            dnscore_code::DNSCORE_ESHUTDOWN,
            dnscore_code::DNSCORE_ERUNTIME,
            dnscore_code::DNSCORE_EINTERNAL,
        ];
        ALL.into_iter().find(|c| c.as_int() == code)
    }
}

impl From<dnscore::Error> for dnscore_code {
    fn from(err: dnscore::Error) -> Self {
        use dnscore::Error;
        match err {
            Error::NoUpstreams | Error::Config(_) | Error::ReadFile { .. } => Self::DNSCORE_ECONFIG,
            Error::Malformed => Self::DNSCORE_EMALFORMED,
            Error::InvalidName(_) => Self::DNSCORE_EBADNAME,
            Error::NxDomain => Self::DNSCORE_ENXDOMAIN,
            Error::NoAnswer(_) => Self::DNSCORE_ENOANSWER,
            Error::BadAnswer => Self::DNSCORE_EBADANSWER,
            Error::Overloaded => Self::DNSCORE_EOVERLOADED,
            Error::Shutdown => Self::DNSCORE_ESHUTDOWN,
            _ => Self::DNSCORE_EINTERNAL,
        }
    }
}

/// A static, NUL-terminated English message for a code returned by any function;
/// "unknown error code" for a value that is not one. Never NULL; do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn dnscore_strerror(code: c_int) -> *const c_char {
    let msg = dnscore_code::from_int(code).map_or("unknown error code\0", dnscore_code::message);
    msg.as_ptr().cast()
}

/// Size of [`dnscore_error::message`], the terminating NUL included.
pub const DNSCORE_ERROR_MESSAGE_LEN: usize = 256;

/// Why `dnscore_resolver_new` failed: caller-allocated, written only on failure.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct dnscore_error {
    /// The code `dnscore_resolver_new` failed with (a `dnscore_code`).
    pub code: c_int,
    /// A NUL-terminated message naming what was wrong (e.g. which upstream string), cut
    /// to fit.
    pub message: [c_char; DNSCORE_ERROR_MESSAGE_LEN],
}

/// Why a resolver could not be made, on the Rust side: small, unlike [`dnscore_error`].
#[derive(Debug)]
pub(crate) struct NewError {
    pub(crate) code: dnscore_code,
    pub(crate) message: String,
}

impl NewError {
    pub(crate) fn new(code: dnscore_code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl dnscore_error {
    /// An error with `code` and `message` (cut at a character boundary to fit).
    pub(crate) fn new(code: dnscore_code, message: &str) -> Self {
        let mut out = Self {
            code: code.as_int(),
            message: [0; DNSCORE_ERROR_MESSAGE_LEN],
        };
        let mut end = message.len().min(DNSCORE_ERROR_MESSAGE_LEN - 1);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        for (dst, src) in out.message.iter_mut().zip(&message.as_bytes()[..end]) {
            *dst = *src as c_char;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_core_error_has_its_own_code_and_message() {
        use dnscore::Error;
        let cases = [
            (Error::NoUpstreams, dnscore_code::DNSCORE_ECONFIG),
            (Error::Malformed, dnscore_code::DNSCORE_EMALFORMED),
            (Error::NxDomain, dnscore_code::DNSCORE_ENXDOMAIN),
            (Error::BadAnswer, dnscore_code::DNSCORE_EBADANSWER),
            (Error::Overloaded, dnscore_code::DNSCORE_EOVERLOADED),
            (Error::Shutdown, dnscore_code::DNSCORE_ESHUTDOWN),
        ];
        for (err, code) in cases {
            assert_eq!(dnscore_code::from(err), code);
            assert_eq!(dnscore_code::from_int(code.as_int()), Some(code));
        }
    }
}
