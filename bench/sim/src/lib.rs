//! `larder-sim`: a trace-driven discrete-event simulator of a LARD cluster, after section 4 of Pai et al.,
//! "Locality-Aware Request Distribution in Cluster-based Network Servers" (ASPLOS '98).
//!
//! # Model
//! One front-end distributes requests over N back-ends with a policy from `larder-lard` (the same code the server
//! runs). Each back-end has a CPU and a disk, both FIFO single servers, and a memory cache with GreedyDual-Size
//! replacement ([`cache`], default 32 MiB a node). A request that hits in the cache costs CPU only; a miss costs
//! a disk read, after which the target is cached, then CPU. Costs are the paper's ([`cost`]): CPU 145 µs a
//! connection + 40 µs per 512 bytes; disk 28 ms + 410 µs per 4 KB + 14 ms per 44 KB beyond the first 44 KB. The
//! front-end keeps LARD's admission bound of requests in flight (`(n-1)·T_high + T_low - 1`, [`engine`]), so the
//! cluster runs at saturation and throughput is the cluster's capacity, as in the paper's figures.
//! Requests come from a synthetic [`larder_workload::Workload`] (e.g. the `rice` preset) or a replayed access log.
//!
//! # Simplified relative to the paper, and why
//! - The front-end and the network cost nothing: the paper's front-end was not the bottleneck at these sizes and
//!   we compare policies, not front-ends.
//! - A request's CPU work is one job after the disk read (the paper splits connection setup before and transmit
//!   after); it changes queueing order a little, not the capacity, which is what the figure plots.
//! - Concurrent misses for one target on one node each read the disk (no read coalescing), and a target is
//!   cached when its read ends; objects are not pinned while being sent.
//! - Synthetic workloads draw requests independently (Zipf), so there is no temporal locality beyond popularity;
//!   replayed logs keep their order. The presets match the traces' size and popularity statistics, not their
//!   sequences (the traces are not public).
//! - Throughput is measured after a warm-up (default 20% of the requests) until the request source runs out.
//!
//! # Limits
//! | name | value | why |
//! |---|---|---|
//! | [`engine::NODES_MAX`] | 1024 | the policy library's member limit |
//! | [`NODE_COUNTS_MAX`] | 64 node counts in one sweep | a sweep is a chart, not a search |
//! | events in flight | ≤ outstanding bound (≤ 1023·T_high + T_low) | one completion event per request |
//! | cache slots | 16 B × targets × nodes | dense per-target priority table |

pub mod cache;
pub mod chart;
pub mod cost;
pub mod engine;
pub mod report;

pub use cost::CostModel;
pub use engine::{
    draw_sequence, run, Outstanding, RequestSource, SimConfig, SimError, SimResult, NODES_MAX,
};

/// Most node counts one sweep may ask for.
pub const NODE_COUNTS_MAX: usize = 64;
