//! The resolver handle: a `dnscore::Resolver` and the tokio runtime it owns, the `_new` /
//! `_free` pair, and how a call waits for its query from any thread.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

use crate::boundary::{UserData, ffi_call_ptr, try_mut, try_ref};
use crate::code::{NewError, dnscore_code, dnscore_error};
use crate::config::{Config, dnscore_config};

/// A caching resolver with its own threads. Opaque: create it with
/// `dnscore_resolver_new`, share it between any number of threads, and give it back with
/// `dnscore_resolver_free` once no thread uses it any more.
pub struct dnscore_resolver {
    /// The core resolver: cache, dedup, upstream pool.
    resolver: dnscore::Resolver,
    /// The runtime itself, which runs the resolver's tasks and sockets.
    runtime: Runtime,
}

impl dnscore_resolver {
    fn new(config: Config) -> Result<Self, NewError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .thread_name("dnscore")
            .enable_all()
            .build()
            .map_err(|e| NewError::new(dnscore_code::DNSCORE_ERUNTIME, e.to_string()))?;
        let built = {
            let _ctx = runtime.enter();
            config.builder.build()
        };
        match built {
            Ok(resolver) => Ok(Self { resolver, runtime }),
            Err(err) => {
                shut_down(runtime);
                Err(NewError::new(err.clone().into(), err.to_string()))
            }
        }
    }

    /// The core resolver (cheap to clone into a task).
    pub(crate) fn resolver(&self) -> &dnscore::Resolver {
        &self.resolver
    }

    /// Runs `fut` to completion on this resolver's runtime and returns its output, blocking
    /// the calling thread; [`dnscore_code::DNSCORE_ETIMEOUT`] after `timeout_ms` (0: no
    /// limit beyond the resolver's own deadline).
    ///
    /// From a plain thread the future is driven right here (its tasks and sockets are run
    /// by the resolver's threads): no hand-off, so a cache hit costs no context switch.
    /// From a thread inside a runtime, `Handle::block_on` would panic, so the future is
    /// spawned and the caller waits on a channel, inside `block_in_place` when that runtime
    /// is multi-threaded so its other tasks move to another worker meanwhile.
    pub(crate) fn wait<T, F>(&self, timeout_ms: u32, fut: F) -> Result<T, dnscore_code>
    where
        F: Future<Output = Result<T, dnscore_code>> + Send + 'static,
        T: Send + 'static,
    {
        let Ok(current) = Handle::try_current() else {
            return self.runtime.block_on(with_timeout(timeout_ms, fut));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        // `spawn` reports a panic or a cancelled task as an error, like `block_on` above.
        spawn(self.handle(), timeout_ms, fut, move |result| {
            // The receiver only goes away if the waiting thread panicked.
            let _ = tx.send(result);
        });
        let recv = move || rx.recv();
        let received = match current.runtime_flavor() {
            RuntimeFlavor::MultiThread => tokio::task::block_in_place(recv),
            _ => recv(),
        };
        // `spawn` always reports; this is only a fallback.
        received.unwrap_or(Err(dnscore_code::DNSCORE_ESHUTDOWN))
    }

    /// A handle of the resolver's runtime, for spawning onto it with [`spawn`] or
    /// [`spawn_callback`] once the borrow of the resolver has ended: a callback may free it.
    pub(crate) fn handle(&self) -> Handle {
        self.runtime.handle().clone()
    }

    /// Enters the resolver's runtime on this thread while the guard lives, so that what a
    /// cache hit starts (a prefetch) runs there, never on a runtime of the caller's.
    pub(crate) fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.runtime.enter()
    }
}

/// Spawns `fut` onto `handle`'s runtime; `done` gets its output, or `Err` with
/// [`dnscore_code::DNSCORE_ESHUTDOWN`] (the task was dropped unfinished) or
/// [`dnscore_code::DNSCORE_EPANIC`] (it panicked) — exactly once in every case.
pub(crate) fn spawn<T, F, D>(handle: Handle, timeout_ms: u32, fut: F, done: D)
where
    F: Future<Output = Result<T, dnscore_code>> + Send + 'static,
    D: FnOnce(Result<T, dnscore_code>) + Send + 'static,
    T: Send + 'static,
{
    let guard = Completion(Some(done), std::marker::PhantomData);
    let fut = with_timeout(timeout_ms, fut);
    handle.spawn(async move {
        let mut guard = guard;
        let result = fut.await;
        if let Some(done) = guard.0.take() {
            done(result);
        }
    });
}

/// Spawns `fut` like [`spawn`] and hands its outcome to the caller's C callback `cb`:
/// `(user, 0, items, n)` on success, `(user, code, NULL, 0)` on failure.
pub(crate) fn spawn_callback<T, F>(
    handle: Handle,
    timeout_ms: u32,
    fut: F,
    cb: unsafe extern "C" fn(*mut std::ffi::c_void, std::ffi::c_int, *const T, usize),
    user: UserData,
) where
    F: Future<Output = Result<Vec<T>, dnscore_code>> + Send + 'static,
    T: Send + 'static,
{
    spawn(handle, timeout_ms, fut, move |result| {
        let (code, items, n) = match &result {
            Ok(items) => (0, items.as_ptr(), items.len()),
            Err(code) => (code.as_int(), std::ptr::null(), 0),
        };
        // SAFETY: `cb` is the caller's callback and `user` its pointer, passed back
        // untouched; `items` is NULL or `n` items that live until `cb` returns.
        unsafe { cb(user.get(), code, items, n) }
    });
}

/// Calls its function with an error if it is dropped before it was called: the task was
/// cancelled by the runtime's shutdown, or panicked.
struct Completion<T, D: FnOnce(Result<T, dnscore_code>)>(
    Option<D>,
    std::marker::PhantomData<fn(T)>,
);

impl<T, D: FnOnce(Result<T, dnscore_code>)> Drop for Completion<T, D> {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            let code = if std::thread::panicking() {
                dnscore_code::DNSCORE_EPANIC
            } else {
                dnscore_code::DNSCORE_ESHUTDOWN
            };
            done(Err(code));
        }
    }
}

/// `fut`, limited to `timeout_ms` milliseconds unless that is 0.
async fn with_timeout<T>(
    timeout_ms: u32,
    fut: impl Future<Output = Result<T, dnscore_code>>,
) -> Result<T, dnscore_code> {
    if timeout_ms == 0 {
        return fut.await;
    }
    tokio::time::timeout(Duration::from_millis(timeout_ms.into()), fut)
        .await
        .unwrap_or(Err(dnscore_code::DNSCORE_ETIMEOUT))
}

/// Stops `runtime`. Waits up to a second for its threads (so async queries still in flight
/// have had their callbacks called with `DNSCORE_ESHUTDOWN` when this returns) unless the
/// caller is itself inside a runtime, where waiting is not allowed: then it returns at once
/// and the threads finish in the background.
fn shut_down(runtime: Runtime) {
    if Handle::try_current().is_ok() {
        runtime.shutdown_background();
    } else {
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Creates a resolver from `cfg`. Returns NULL on failure and, if `err` is not NULL,
/// writes the reason to `*err` (`err` is written only on failure).
///
/// Failures: `DNSCORE_ENULL` (`cfg`, `cfg->upstreams` or one of its strings is NULL),
/// `DNSCORE_EUTF8` (an upstream string is not UTF-8), `DNSCORE_ECONFIG` (no upstream, an
/// upstream that is not "IP:PORT", a value out of range), `DNSCORE_ERUNTIME`,
/// `DNSCORE_EPANIC`.
///
/// May be called from any thread, also one inside a tokio runtime. The caller owns the
/// result and must pass it to `dnscore_resolver_free`.
///
/// # Safety
/// `cfg` is NULL or points to a valid `dnscore_config` whose `upstreams` holds
/// `upstreams_len` pointers to NUL-terminated strings; `err` is NULL or points to a
/// writable `dnscore_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dnscore_resolver_new(
    cfg: *const dnscore_config,
    err: *mut dnscore_error,
) -> *mut dnscore_resolver {
    ffi_call_ptr(|| {
        let result = (|| {
            // SAFETY: the caller guarantees `cfg` is NULL or valid for this call.
            let cfg = unsafe { try_ref(cfg) }.map_err(|code| NewError::new(code, "cfg is NULL"))?;
            // SAFETY: the caller guarantees `upstreams` as documented above.
            let config = unsafe { Config::from_c(cfg) }?;
            dnscore_resolver::new(config)
        })();
        match result {
            Ok(resolver) => Box::into_raw(Box::new(resolver)),
            Err(e) => {
                // SAFETY: the caller guarantees `err` is NULL or writable.
                if let Ok(out) = unsafe { try_mut(err) } {
                    *out = dnscore_error::new(e.code, &e.message);
                }
                std::ptr::null_mut()
            }
        }
    })
}

/// Frees a resolver: stops its threads and drops its cache. NULL is ignored.
///
/// Async queries still in flight are abandoned: their callbacks are called with
/// `DNSCORE_ESHUTDOWN`, before this returns when called from a plain thread (waiting up to
/// one second), possibly after it returns when called from inside a tokio runtime or from
/// a callback, or when a callback still runs after that second. Keep what a callback's
/// `user` points to until that callback has run.
///
/// # Safety
/// `resolver` is NULL or came from `dnscore_resolver_new` and was not freed yet; no other
/// thread is inside a call on it, and it is not used after this call. A callback may free
/// its resolver, even while the `_async` call that started it has not returned yet: that
/// call touches the resolver no more once the query is queued.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dnscore_resolver_free(resolver: *mut dnscore_resolver) {
    let _ = crate::boundary::ffi_call(|| {
        if resolver.is_null() {
            return Ok(());
        }
        // SAFETY: the caller guarantees the pointer came from `Box::into_raw` in
        // `dnscore_resolver_new` and gives up ownership here, exactly once.
        let boxed = unsafe { Box::from_raw(resolver) };
        let dnscore_resolver { resolver, runtime } = *boxed;
        // The core's sockets deregister from the runtime they were made in.
        {
            let _ctx = runtime.enter();
            drop(resolver);
        }
        shut_down(runtime);
        Ok(())
    });
}
