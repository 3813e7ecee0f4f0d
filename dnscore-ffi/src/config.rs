//! The resolver's configuration as a plain C struct, and its defaults.

use std::ffi::c_char;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::boundary::try_str;
use crate::code::{NewError, dnscore_code};

/// Default number of resolver threads (tokio workers). Two, so that one slow callback of
/// the async API does not hold up every other query.
pub(crate) const DEFAULT_WORKER_THREADS: u32 = 2;

/// How to build a resolver. Start from [`dnscore_config_default`], then set `upstreams`;
/// or from [`dnscore_config_system`], which reads the system's resolv.conf and hosts file
/// (its nameservers are the upstreams unless `upstreams` is set too). A zero in a numeric
/// field means "the default" named on the field.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct dnscore_config {
    /// Upstream servers, each an "IP:PORT" string (`"10.100.0.10:53"`, `"[fd00::a]:53"`).
    /// At least one is required. Read during `dnscore_resolver_new` only.
    pub upstreams: *const *const c_char,
    /// Number of strings in `upstreams`.
    pub upstreams_len: usize,
    /// How many answers the cache holds; 0: dnscore's default (10,000).
    pub cache_capacity: usize,
    /// Deadline for a whole query across retries, in milliseconds; 0: dnscore's default
    /// (2,000).
    pub timeout_ms: u32,
    /// Wait for one attempt before another upstream is asked, in milliseconds; 0: dnscore's
    /// default (`dnscore_config_default` shows the values of this build).
    pub attempt_timeout_ms: u32,
    /// Threads of the resolver's runtime, which run queries and async callbacks; 0: 2.
    pub worker_threads: u32,
    /// Any other setting of the resolver, each a `"name=value"` string with the names and
    /// values of the sidecar's flags (`"max-ttl=30s"`, `"negative-max-ttl=5"`,
    /// `"selection=round-robin"`, `"prefetch=false"`; `dnscore-sidecar --help` lists them).
    /// Applied after the fields above, so a setting here wins. NULL with `settings_len` 0
    /// for none. Read during `dnscore_resolver_new` only.
    pub settings: *const *const c_char,
    /// Number of strings in `settings`.
    pub settings_len: usize,
    /// A resolv.conf to read (`"/etc/resolv.conf"`), or NULL (the default) for none. Its
    /// `search` list and `ndots` apply to `dnscore_lookup_ip` as in glibc (`"redis"` is
    /// asked as `redis.<namespace>.svc.cluster.local` first in a pod); its `options
    /// timeout: attempts: rotate` become settings (the fields above and `settings` win);
    /// its nameservers are the upstreams when `upstreams_len` is 0 (127.0.0.1:53 when it
    /// names none, as in glibc). Read during `dnscore_resolver_new` only.
    pub resolv_conf: *const c_char,
    /// A hosts file that `dnscore_lookup_ip` asks before DNS (`"/etc/hosts"`), re-read
    /// when it changes; NULL (the default) for none.
    pub hosts_file: *const c_char,
}

/// The default configuration: no upstream, and every numeric field at its default
/// (written out, not zero, so a caller can read them).
#[unsafe(no_mangle)]
pub extern "C" fn dnscore_config_default() -> dnscore_config {
    dnscore_config {
        upstreams: std::ptr::null(),
        upstreams_len: 0,
        cache_capacity: dnscore::defaults::CACHE_CAPACITY,
        timeout_ms: millis(dnscore::defaults::TIMEOUT),
        attempt_timeout_ms: millis(dnscore::defaults::ATTEMPT_TIMEOUT),
        worker_threads: DEFAULT_WORKER_THREADS,
        settings: std::ptr::null(),
        settings_len: 0,
        resolv_conf: std::ptr::null(),
        hosts_file: std::ptr::null(),
    }
}

/// The default configuration with the system's files: `resolv_conf` `"/etc/resolv.conf"`
/// and `hosts_file` `"/etc/hosts"` (static strings), so that `dnscore_lookup_ip` resolves
/// short names as `getaddrinfo` does. Nothing is read until `dnscore_resolver_new`.
#[unsafe(no_mangle)]
pub extern "C" fn dnscore_config_system() -> dnscore_config {
    dnscore_config {
        resolv_conf: c"/etc/resolv.conf".as_ptr(),
        hosts_file: c"/etc/hosts".as_ptr(),
        ..dnscore_config_default()
    }
}

/// A path field: `None` when NULL. Errors: `DNSCORE_EUTF8`.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string that outlives the call.
unsafe fn optional_path<'a>(ptr: *const c_char, field: &str) -> Result<Option<&'a str>, NewError> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL, and the caller guarantees a NUL-terminated string.
    unsafe { try_str(ptr) }
        .map(Some)
        .map_err(|code| NewError::new(code, format!("{field} is not UTF-8")))
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// What a `dnscore_config` says, checked and in Rust types.
pub(crate) struct Config {
    pub(crate) builder: dnscore::ResolverBuilder,
    pub(crate) worker_threads: usize,
}

impl Config {
    /// Reads and checks `cfg`.
    ///
    /// # Safety
    /// `cfg.upstreams` is NULL or points to `cfg.upstreams_len` pointers, each NULL or a
    /// NUL-terminated string; so is `cfg.settings` with `cfg.settings_len`;
    /// `cfg.resolv_conf` and `cfg.hosts_file` are NULL or NUL-terminated strings.
    pub(crate) unsafe fn from_c(cfg: &dnscore_config) -> Result<Self, NewError> {
        let bad = |msg: String| NewError::new(dnscore_code::DNSCORE_ECONFIG, msg);
        // SAFETY: the caller guarantees `resolv_conf` is NULL or NUL-terminated.
        let resolv_conf = unsafe { optional_path(cfg.resolv_conf, "resolv_conf") }?;
        // SAFETY: the caller guarantees `hosts_file` is NULL or NUL-terminated.
        let hosts_file = unsafe { optional_path(cfg.hosts_file, "hosts_file") }?;
        let mut system = match resolv_conf {
            Some(path) => Some(
                dnscore::resolv_conf::ResolvConf::read(Path::new(path))
                    .map_err(|e| bad(e.to_string()))?,
            ),
            None => None,
        };
        if cfg.upstreams_len == 0 && system.is_none() {
            return Err(bad("no upstream server configured".into()));
        }
        if cfg.upstreams_len != 0 && cfg.upstreams.is_null() {
            return Err(NewError::new(
                dnscore_code::DNSCORE_ENULL,
                "upstreams is NULL but upstreams_len is not 0",
            ));
        }
        let strings = if cfg.upstreams_len == 0 {
            &[][..]
        } else {
            // SAFETY: non-NULL, and the caller guarantees `upstreams_len` readable pointers.
            unsafe { std::slice::from_raw_parts(cfg.upstreams, cfg.upstreams_len) }
        };
        let mut upstreams = Vec::with_capacity(strings.len());
        for (i, &ptr) in strings.iter().enumerate() {
            // SAFETY: the caller guarantees each pointer is NULL or a NUL-terminated string.
            let s = unsafe { try_str(ptr) }.map_err(|code| {
                NewError::new(code, format!("upstreams[{i}] is NULL or not UTF-8"))
            })?;
            let addr: SocketAddr = s.trim().parse().map_err(|_| {
                bad(format!(
                    "upstreams[{i}] = {s:?} is not an \"IP:PORT\" address"
                ))
            })?;
            upstreams.push(addr);
        }
        let mut builder = dnscore::Resolver::builder();
        match &mut system {
            Some(conf) => {
                if !upstreams.is_empty() {
                    conf.nameservers = upstreams;
                }
                builder = builder.resolv_conf(conf);
            }
            None => builder = builder.upstreams(upstreams),
        }
        if let Some(path) = hosts_file {
            builder = builder.hosts_file(path);
        }
        if cfg.cache_capacity != 0 {
            builder = builder.cache_capacity(cfg.cache_capacity);
        }
        if cfg.timeout_ms != 0 {
            builder = builder.timeout(Duration::from_millis(cfg.timeout_ms.into()));
        }
        if cfg.attempt_timeout_ms != 0 {
            builder = builder.attempt_timeout(Duration::from_millis(cfg.attempt_timeout_ms.into()));
        }
        if cfg.settings_len != 0 {
            if cfg.settings.is_null() {
                return Err(NewError::new(
                    dnscore_code::DNSCORE_ENULL,
                    "settings is NULL but settings_len is not 0",
                ));
            }
            // SAFETY: non-NULL, and the caller guarantees `settings_len` readable pointers.
            let pairs = unsafe { std::slice::from_raw_parts(cfg.settings, cfg.settings_len) };
            for (i, &ptr) in pairs.iter().enumerate() {
                // SAFETY: the caller guarantees each pointer is NULL or a NUL-terminated string.
                let pair = unsafe { try_str(ptr) }.map_err(|code| {
                    NewError::new(code, format!("settings[{i}] is NULL or not UTF-8"))
                })?;
                builder = builder
                    .set_pair(pair)
                    .map_err(|e| bad(format!("settings[{i}]: {e}")))?;
            }
        }
        let worker_threads = match cfg.worker_threads {
            0 => DEFAULT_WORKER_THREADS,
            n => n.min(256),
        };
        Ok(Self {
            builder,
            worker_threads: worker_threads as usize,
        })
    }
}
