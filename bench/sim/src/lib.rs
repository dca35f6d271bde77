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
//! - Throughput is measured after a warm-up (default 20% of the requests) until the request source runs out. The
//!   warm-up is a share of the whole stream, so each node's share of it shrinks as nodes are added: with short
//!   runs (e.g. 300k requests on `ibm`) WRR's hit ratio then drops with N from cold caches, not from the policy;
//!   use 1M requests or more, or a longer `--warmup`.
//!
//! # Result on the rice preset (bench/results/sim-rice.csv, .svg)
//! `larder-sim --preset rice --nodes 1,2,4,8,16 --policies wrr,lc,ch,ch-bl,lard,lard-r --cache-mb 32 --seed 1
//! --csv bench/results/sim-rice.csv --svg bench/results/sim-rice.svg` (1M requests a run, 30 runs, about 20 s of
//! CPU). At 8 nodes LARD and LARD/R serve 3178 req/s against WRR's 1183 (2.7×); WRR's hit ratio stays at
//! 0.81–0.80 from 1 to 16 nodes while LARD's rises from 0.81 to 0.95. The cluster is disk-bound throughout (disk
//! utilisation 0.99–1.0), so throughput follows the miss rate: LARD/R matches LARD within 0.1% up to 8 nodes
//! (its server sets rarely grow at these loads), and LARD/R pulls ahead at 16 (10987 vs 8014) by replicating hot targets instead
//! of moving them; plain consistent hashing also does well at 16 nodes (10149) because, with the CPU idle, its
//! load imbalance costs less than LARD's cold misses after a move. The paper's CPU-bound points (where pure
//! partitioning loses) need smaller files or faster disks (`--disk-access-us`).
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
