//! `larder-server`: the HTTP/1.1 static-content node behind `larder serve`.
//!
//! - [`http`]: the protocol, pure (no I/O): parsing, paths, heads, ranges.
//! - [`cache`]: the per-shard object cache (GreedyDual-Size, single-copy reads).

pub mod cache;
pub mod http;
