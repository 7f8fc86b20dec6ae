//! Benchmarks of the TCP state tracer: a loopback load generator
//! (`loadgen`) and the harness behind `cargo xtask bench`.

pub mod loadgen;
