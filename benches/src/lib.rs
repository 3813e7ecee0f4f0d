//! The benchmarks are in `benches/benches/`; this library is empty.
