//! C ABI for dnscore. The exported functions arrive with the FFI issue; for now the crate
//! only proves that the core links into a `cdylib` and a `staticlib`.
#![deny(missing_docs)]

/// The version of dnscore this library was built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
