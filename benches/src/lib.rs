//! `registry-bench`: a load generator that drives any registry over the HTTP API and reports
//! throughput, requests/s, latency percentiles and (given its PID) the server's CPU time and
//! peak RSS. Data is generated from a seed, never read from disk; big blobs are generated in
//! chunks while they are sent, so the tool's memory stays small.
#![forbid(unsafe_code)]

pub mod data;
pub mod report;
pub mod server;
pub mod workloads;
