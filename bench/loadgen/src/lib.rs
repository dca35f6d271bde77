//! `larder-bench`: a thread-per-core HTTP/1.1 load generator that is never the bottleneck and never hides a stall.
//!
//! Why its own tool: wrk and h2load cannot replay an access log, tag client classes, or measure open-loop latency
//! without coordinated omission; Larder's claims need all three, side by side with a peer, in one run.
//!
//! Shape: one pinned monoio thread per CPU of `--cores`/`--cpus` ([`cores`]), each running its share of every class's
//! connections ([`engine`]); requests are precomputed bytes chosen by a seeded source ([`source`]); responses are
//! framed by an incremental parser that never copies bodies ([`response`]); outcomes are counted per thread and
//! class without sharing ([`stats`], [`histogram`]) and merged exactly into one [`report::RunReport`].
//! [`compare`] measures two servers in alternating rounds and reports medians and ratios.
//!
//! Limits (see each module): 64 classes, 100 000 connections per class, pipeline depth 256, 10 million distinct
//! requests per class, 32 KiB response heads, latencies up to 60 s at 3 significant digits.

pub mod compare;
pub mod config;
pub mod cores;
pub mod engine;
pub mod histogram;
pub mod inputs;
pub mod report;
pub mod response;
pub mod source;
pub mod stats;

pub use config::{ClassConfig, DriverChoice, RunConfig, WorkloadSpec};
pub use engine::{run, ProgressSnapshot, RunError};
pub use report::{ClassReport, RunReport};
