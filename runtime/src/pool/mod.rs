//! The shard pool: N pinned OS threads, each running one monoio runtime, one timer wheel, one container scheduler,
//! one end of the mesh and one statistics cell — nothing shared between shards except the mesh queues.
//!
//! | file | owns |
//! |---|---|
//! | `config.rs` | [`PoolConfig`] and its defaults, [`IoDriver`], [`PoolError`] |
//! | `start.rs` | [`ShardPool`], the start-up protocol (numbered steps), the abort path, the accessors |
//! | `shard.rs` | one shard thread: pinning, building its runtime, its local tasks, its drain; panic containment |
//! | `context.rs` | [`ShardContext`], the per-shard handle given to the init closure, and tracked tasks |
//! | `shutdown.rs` | the shutdown flag, [`ShutdownHandle`], the shutdown protocol (numbered steps), [`ShardPool::join`], [`PoolReport`] |
//!
//! # Start-up, in short ([`ShardPool::start`]; the numbered steps are in `start.rs`)
//! Validate, select CPUs, build the mesh, spawn one pinned thread per shard; when every shard reports ready they all
//! go, else all abort and `start` returns [`PoolError::Startup`]. No init closure runs unless every shard started.
//!
//! # Shutdown, in short ([`ShardPool::shutdown`]; the numbered steps are in `shutdown.rs`)
//! Stop accepting, drain in-flight work up to `drain_timeout_ms`, leave the runtimes, report. `join` never hangs
//! once shutdown was requested: a shard stuck past `drain_timeout_ms + join_grace_ms` is detached and reported as
//! [`PoolError::ShardsStuck`].
//!
//! # Panics
//! A panic in a shard is caught on its thread, stops the whole pool and is returned by `join` as
//! [`PoolError::ShardPanicked`] (`shard.rs`).
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | shards | 1..=256 ([`crate::mesh::SHARDS_MAX`]) | the mesh has N² queues |
//! | [`DRAIN_TIMEOUT_MS_DEFAULT`] | 5,000 ms | long enough for in-flight responses, short enough for a restart |
//! | [`JOIN_GRACE_MS_DEFAULT`] | 1,000 ms | time for a shard to leave its runtime after the drain deadline |
//! | [`STARTUP_TIMEOUT_MS`] | 10,000 ms | building a runtime takes microseconds; anything slower is broken |
//! | [`URING_ENTRIES_DEFAULT`] | 1,024 submission entries | monoio's default; 8 MiB memlock holds several rings |
//! | [`DRAIN_CHECK_INTERVAL_MS`] | 1 ms | drain progress check, only while shutting down |

mod config;
mod context;
mod shard;
mod shutdown;
mod start;

pub use config::{
    IoDriver, IoDriverParseError, PoolConfig, PoolError, DRAIN_CHECK_INTERVAL_MS,
    DRAIN_TIMEOUT_MS_DEFAULT, JOIN_GRACE_MS_DEFAULT, SHARD_TIMER_RESOLUTION_NS, STARTUP_TIMEOUT_MS,
    URING_ENTRIES_DEFAULT,
};
pub use context::ShardContext;
pub use shard::uring_available;
pub use shutdown::{PoolReport, ShardExit, ShutdownHandle};
pub use start::ShardPool;
