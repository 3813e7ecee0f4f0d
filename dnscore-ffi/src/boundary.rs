//! The panic boundary every exported function runs inside, and the conversions of C
//! arguments that can fail without crashing.

use std::ffi::{CStr, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::code::dnscore_code;

/// Runs `f`, turning a panic into [`dnscore_code::DNSCORE_EPANIC`] so it never unwinds into
/// C. `AssertUnwindSafe` is sound here: after a panic nothing `f` touched is used again
/// except through the error code.
pub(crate) fn ffi_call(f: impl FnOnce() -> Result<(), dnscore_code>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => dnscore_code::DNSCORE_OK.as_int(),
        Ok(Err(code)) => code.as_int(),
        Err(_) => dnscore_code::DNSCORE_EPANIC.as_int(),
    }
}

/// Like [`ffi_call`] for functions that return a pointer: NULL on a panic.
pub(crate) fn ffi_call_ptr<T>(f: impl FnOnce() -> *mut T) -> *mut T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(std::ptr::null_mut())
}

/// `ptr` as a reference, or [`dnscore_code::DNSCORE_ENULL`].
///
/// # Safety
/// `ptr` is NULL or points to a valid `T` that outlives `'a` and is not mutated meanwhile.
pub(crate) unsafe fn try_ref<'a, T>(ptr: *const T) -> Result<&'a T, dnscore_code> {
    // SAFETY: the caller guarantees a non-NULL `ptr` is valid for `'a`; `as_ref` checks NULL.
    unsafe { ptr.as_ref() }.ok_or(dnscore_code::DNSCORE_ENULL)
}

/// `ptr` as a mutable reference, or [`dnscore_code::DNSCORE_ENULL`].
///
/// # Safety
/// `ptr` is NULL or points to a valid `T`, not aliased while the reference lives.
pub(crate) unsafe fn try_mut<'a, T>(ptr: *mut T) -> Result<&'a mut T, dnscore_code> {
    // SAFETY: the caller guarantees a non-NULL `ptr` is valid and unaliased for `'a`.
    unsafe { ptr.as_mut() }.ok_or(dnscore_code::DNSCORE_ENULL)
}

/// `len` bytes at `ptr` as a slice: [`dnscore_code::DNSCORE_ENULL`] for NULL (a zero `len`
/// with a NULL `ptr` is an empty slice).
///
/// # Safety
/// A non-NULL `ptr` points to `len` readable bytes that outlive `'a`.
pub(crate) unsafe fn try_slice<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8], dnscore_code> {
    if ptr.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(dnscore_code::DNSCORE_ENULL)
        };
    }
    // SAFETY: `ptr` is non-NULL and the caller guarantees `len` readable bytes for `'a`.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// A NUL-terminated C string as UTF-8: [`dnscore_code::DNSCORE_ENULL`] for NULL,
/// [`dnscore_code::DNSCORE_EUTF8`] when it is not UTF-8.
///
/// # Safety
/// A non-NULL `ptr` points to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn try_str<'a>(ptr: *const c_char) -> Result<&'a str, dnscore_code> {
    if ptr.is_null() {
        return Err(dnscore_code::DNSCORE_ENULL);
    }
    // SAFETY: non-NULL, and the caller guarantees NUL termination and lifetime.
    let cstr = unsafe { CStr::from_ptr(ptr) };
    cstr.to_str().map_err(|_| dnscore_code::DNSCORE_EUTF8)
}

/// A `void *user` handed back to a callback on a resolver thread.
#[derive(Clone, Copy)]
pub(crate) struct UserData(pub(crate) *mut std::ffi::c_void);

// SAFETY: the async functions document that `user` is passed to the callback on another
// thread; the caller promises that is sound for what it points to. We never dereference it.
unsafe impl Send for UserData {}

impl UserData {
    /// The caller's pointer (a method, so that a closure captures the `Send` wrapper).
    pub(crate) fn get(&self) -> *mut std::ffi::c_void {
        self.0
    }
}
