//! Benchmarks of the TCP state tracer: a loopback load generator
//! (`loadgen`) and the harness behind `cargo xtask bench` (`tracer-bench`).

pub mod child;
pub mod harness;
pub mod loadgen;
pub mod markdown;
pub mod netns;
pub mod stats;
pub mod sys;
