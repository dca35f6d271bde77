//! Settings of a dispatcher, with the limits every queue, pool and timeout takes.

use std::net::SocketAddr;

use larder_lard::{PolicyConfig, PolicyKind};
use larder_runtime::{IoDriver, ShardSelection};

/// A back-end's slot in the dispatcher's table (the initial back-ends are 0.. in [`DispatchConfig::backends`]
/// order; added ones take the next free slot); also its `ServerId` in the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u32);

impl std::fmt::Display for BackendId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backend-{}", self.0)
    }
}

/// Most back-ends of one dispatcher (the policy's own limit is 1024; a front-end with more is a design error).
pub const BACKENDS_MAX: usize = 256;
/// Request head limit: a larger head gets 431.
pub const HEAD_BYTES_MAX_DEFAULT: usize = 16 * 1024;
/// Relay buffer per client connection: one read from a back-end, written on unchanged.
pub const RELAY_BUFFER_BYTES_DEFAULT: usize = 32 * 1024;
/// Idle keep-alive connections kept per back-end on each shard.
pub const IDLE_CONNECTIONS_PER_BACKEND_MAX_DEFAULT: usize = 64;
/// Requests in flight to one back-end (all shards) before overflow answers 503.
pub const PENDING_PER_BACKEND_MAX_DEFAULT: u32 = 1_024;
/// Connect timeout to a back-end.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 1_000;
/// Longest wait for a back-end's response head, and for each read or write of a body.
pub const BACKEND_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// A client connection idle this long between requests (or slow sending one) is closed.
pub const CLIENT_IDLE_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Period of the active health check of every back-end.
pub const HEALTH_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// Slow start of a back-end that comes back up: its pending cap ramps from 1 to the full cap over this time.
pub const SLOW_START_MS_DEFAULT: u64 = 5_000;
/// Default listen address: port 8000, so a dispatcher and a `larder serve` (8080) on one machine do not collide.
pub const LISTEN_DEFAULT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8000,
));
/// Seconds told to a client in `Retry-After` when a back-end's pending cap is reached.
pub const RETRY_AFTER_S: u32 = 1;

/// The retry budget: each request earns `retry_ratio_permille`/1000 of a retry, and `retries_per_second`
/// arrive with time, up to `retry_burst` saved retries (default: 20% of requests + 10/s, burst 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBudgetConfig {
    pub retry_ratio_permille: u32,
    pub retries_per_second: u32,
    pub retry_burst: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            retry_ratio_permille: 200,
            retries_per_second: 10,
            retry_burst: 100,
        }
    }
}

/// Everything `Dispatcher::start` needs.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    pub listen: SocketAddr,
    /// The initial back-ends (0..=256; more are added with `DispatchHandle::add_backend`).
    pub backends: Vec<SocketAddr>,
    pub policy: PolicyConfig,
    pub cores: ShardSelection,
    pub io_driver: IoDriver,
    /// Pin shard threads (tests on a busy 2-core machine turn it off).
    pub pin: bool,
    pub head_bytes_max: usize,
    pub relay_buffer_bytes: usize,
    pub idle_connections_per_backend_max: usize,
    pub pending_per_backend_max: u32,
    pub connect_timeout_ms: u64,
    pub backend_timeout_ms: u64,
    pub client_idle_timeout_ms: u64,
    pub health_interval_ms: u64,
    /// Path the active check requests (`GET <path>`); any status below 500 counts as alive.
    pub health_path: String,
    /// Slow start after a back-end comes back up (0: none).
    pub slow_start_ms: u64,
    pub retry_budget: RetryBudgetConfig,
    /// Shutdown drain deadline (in-flight exchanges finish within it).
    pub drain_timeout_ms: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            listen: LISTEN_DEFAULT,
            backends: Vec::new(),
            policy: PolicyConfig::new(PolicyKind::LardR),
            cores: ShardSelection::All,
            io_driver: IoDriver::Auto,
            pin: true,
            head_bytes_max: HEAD_BYTES_MAX_DEFAULT,
            relay_buffer_bytes: RELAY_BUFFER_BYTES_DEFAULT,
            idle_connections_per_backend_max: IDLE_CONNECTIONS_PER_BACKEND_MAX_DEFAULT,
            pending_per_backend_max: PENDING_PER_BACKEND_MAX_DEFAULT,
            connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
            backend_timeout_ms: BACKEND_TIMEOUT_MS_DEFAULT,
            client_idle_timeout_ms: CLIENT_IDLE_TIMEOUT_MS_DEFAULT,
            health_interval_ms: HEALTH_INTERVAL_MS_DEFAULT,
            health_path: "/".to_string(),
            slow_start_ms: SLOW_START_MS_DEFAULT,
            retry_budget: RetryBudgetConfig::default(),
            drain_timeout_ms: larder_runtime::pool::DRAIN_TIMEOUT_MS_DEFAULT,
        }
    }
}

/// A setting out of range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {field} = {value}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Policy(#[from] larder_lard::ConfigError),
}

impl DispatchConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check(
            ok: bool,
            field: &'static str,
            value: impl ToString,
            reason: &'static str,
        ) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    field,
                    value: value.to_string(),
                    reason,
                })
            }
        }
        check(
            self.backends.len() <= BACKENDS_MAX,
            "backends",
            self.backends.len(),
            "at most 256 back-ends (none: they are added at run time)",
        )?;
        check(
            (1024..=1 << 20).contains(&self.head_bytes_max),
            "head_bytes_max",
            self.head_bytes_max,
            "between 1 KiB and 1 MiB",
        )?;
        check(
            (4096..=1 << 24).contains(&self.relay_buffer_bytes),
            "relay_buffer_bytes",
            self.relay_buffer_bytes,
            "between 4 KiB and 16 MiB",
        )?;
        check(
            self.idle_connections_per_backend_max <= 4096,
            "idle_connections_per_backend_max",
            self.idle_connections_per_backend_max,
            "at most 4096",
        )?;
        check(
            self.pending_per_backend_max >= 1,
            "pending_per_backend_max",
            self.pending_per_backend_max,
            "at least 1",
        )?;
        for (field, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("backend_timeout_ms", self.backend_timeout_ms),
            ("client_idle_timeout_ms", self.client_idle_timeout_ms),
            ("health_interval_ms", self.health_interval_ms),
        ] {
            check(
                (1..=3_600_000).contains(&value),
                field,
                value,
                "between 1 ms and 1 hour",
            )?;
        }
        check(
            self.slow_start_ms <= 3_600_000,
            "slow_start_ms",
            self.slow_start_ms,
            "at most 1 hour",
        )?;
        check(
            self.health_path.starts_with('/') && !self.health_path.contains([' ', '\r', '\n']),
            "health_path",
            &self.health_path,
            "an absolute path without spaces",
        )?;
        self.policy.validate()?;
        Ok(())
    }
}
