//! `larder-server`: the HTTP/1.1 static-content node behind `larder serve`.
//!
//! - [`http`]: the protocol, pure (no I/O): parsing, paths, heads, ranges.
//! - [`config`]: `ServeConfig`, from defaults, TOML and flags, validated at start.
//! - [`node`]: the running node: shards, connections, routing, containers, statistics.
//! - [`cache`]: the per-shard object cache (GreedyDual-Size, single-copy reads).
//! - [`cluster`]: distributed mode: the target directory and forwarding to the owning node.

pub mod cache;
pub mod cluster;
pub mod config;
pub mod exposition;
pub mod http;
pub mod node;
pub mod ops;

pub use config::ServeConfig;
pub use node::{Node, NodeError, NodeStats};
