//! What a pool is built from: [`PoolConfig`] with its defaults, the [`IoDriver`] choice, and [`PoolError`].
//!
//! # What this file owns
//! The settings of a pool and their default values, parsing of the driver name (`auto`, `uring`/`io_uring`,
//! `epoll`), and the errors of starting or joining a pool. Validation happens in start-up step 1
//! ([`ShardPool::start`](super::ShardPool::start)): the timer, scheduler and mesh settings are checked by the types
//! that own them, `stats_interval_ms` here ([`PoolError::StatsInterval`]).
//!
//! # Invariants
//! - A `PoolConfig` that `start` accepted has `stats_interval_ms >= 1` and timer, scheduler and mesh settings their
//!   own constructors accept, so shard threads never fail on configuration after the pool started.
//! - The default takes every physical core (`ShardSelection::All`, one shard per core) and pins each shard.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`DRAIN_TIMEOUT_MS_DEFAULT`] | 5,000 ms | long enough for in-flight responses, short enough for a restart |
//! | [`JOIN_GRACE_MS_DEFAULT`] | 1,000 ms | time for a shard to leave its runtime after the drain deadline |
//! | [`STARTUP_TIMEOUT_MS`] | 10,000 ms | building a runtime takes microseconds; anything slower is broken |
//! | [`URING_ENTRIES_DEFAULT`] | 1,024 submission entries | monoio's default; 8 MiB memlock holds several rings |
//! | [`DRAIN_CHECK_INTERVAL_MS`] | 1 ms | drain progress check, only while shutting down |

use std::str::FromStr;

use crate::container::{ContainerError, SchedulerConfig};
use crate::mesh::{MeshBuildError, MeshConfig};
use crate::stats::STATS_INTERVAL_MS_DEFAULT;
use crate::timer::{TimerConfig, TimerError};
use crate::topology::{CpuId, ShardSelection, TopologyError};
use crate::ShardId;

/// Default drain deadline (shutdown step 2).
pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default extra wait after the drain deadline before `join` gives a shard up (shutdown step 3).
pub const JOIN_GRACE_MS_DEFAULT: u64 = 1_000;
/// How long `start` waits for every shard to report ready.
pub const STARTUP_TIMEOUT_MS: u64 = 10_000;
/// Default io_uring submission queue entries per shard.
pub const URING_ENTRIES_DEFAULT: u32 = 1_024;
/// Period of the drain progress check.
pub const DRAIN_CHECK_INTERVAL_MS: u64 = 1;

/// Which I/O driver shards use. Parsed from `auto`, `uring` (or `io_uring`), `epoll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoDriver {
    /// io_uring if the kernel allows it, else epoll (with a warning in the log).
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// An I/O driver name that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad I/O driver {0:?} (expected \"auto\", \"uring\" or \"epoll\")")]
pub struct IoDriverParseError(pub String);

impl FromStr for IoDriver {
    type Err = IoDriverParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(IoDriver::Auto),
            "uring" | "io_uring" | "iouring" => Ok(IoDriver::Uring),
            "epoll" | "legacy" => Ok(IoDriver::Epoll),
            _ => Err(IoDriverParseError(s.to_string())),
        }
    }
}

impl std::fmt::Display for IoDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoDriver::Auto => "auto",
            IoDriver::Uring => "uring",
            IoDriver::Epoll => "epoll",
        })
    }
}

/// Tick of each shard's timer wheel: 50 µs (pacing needs ≤ 100 µs; see `PoolConfig::default`).
pub const SHARD_TIMER_RESOLUTION_NS: u64 = 50_000;

/// Settings of a shard pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Which CPUs run shards (default: one per physical core).
    pub shards: ShardSelection,
    /// I/O driver (default: auto).
    pub driver: IoDriver,
    /// Pin each shard thread to its CPU (default: true). Tests that oversubscribe CPUs may turn it off.
    pub pin: bool,
    /// Mesh queue capacities.
    pub mesh: MeshConfig,
    /// Per-shard timer wheel.
    pub timer: TimerConfig,
    /// Per-shard container scheduler.
    pub scheduler: SchedulerConfig,
    /// Shutdown step 2 deadline.
    pub drain_timeout_ms: u64,
    /// Shutdown step 3 grace.
    pub join_grace_ms: u64,
    /// Period of the CPU-time and container statistics sample.
    pub stats_interval_ms: u64,
    /// io_uring submission queue entries.
    pub uring_entries: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            shards: ShardSelection::All,
            driver: IoDriver::Auto,
            pin: true,
            mesh: MeshConfig::default(),
            // 50 µs ticks: fine enough to pace sends (soft timers fired at every scheduler turn), and a wheel range
            // of 2^36 ticks (about 40 days) is still far beyond any connection timeout.
            timer: TimerConfig {
                resolution_ns: SHARD_TIMER_RESOLUTION_NS,
                ..TimerConfig::default()
            },
            scheduler: SchedulerConfig::default(),
            drain_timeout_ms: DRAIN_TIMEOUT_MS_DEFAULT,
            join_grace_ms: JOIN_GRACE_MS_DEFAULT,
            stats_interval_ms: STATS_INTERVAL_MS_DEFAULT,
            uring_entries: URING_ENTRIES_DEFAULT,
        }
    }
}

/// Errors of starting or joining a pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Mesh(#[from] MeshBuildError),
    #[error("timer configuration: {0}")]
    Timer(#[from] TimerError),
    #[error("container scheduler configuration: {0}")]
    Container(#[from] ContainerError),
    #[error("stats_interval_ms must be at least 1")]
    StatsInterval,
    #[error("spawning the thread of {shard}: {source}")]
    Spawn {
        shard: ShardId,
        source: std::io::Error,
    },
    #[error("{shard} on {cpu} failed to start: {reason}")]
    Startup {
        shard: ShardId,
        cpu: CpuId,
        reason: String,
    },
    #[error("{shard} panicked: {message}")]
    ShardPanicked { shard: ShardId, message: String },
    #[error("shards {shards:?} did not stop within {waited_ms} ms of the shutdown request; their threads were detached")]
    ShardsStuck {
        shards: Vec<ShardId>,
        waited_ms: u64,
    },
}
