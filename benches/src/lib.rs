//! Benchmarks only; see benches/userspace.rs.
