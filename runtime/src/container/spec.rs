//! What a container and a scheduler are described by, and the checks that keep those descriptions in range.
//!
//! # What this file owns
//! The ids ([`ContainerId`], [`TaskId`]), a container's description ([`ContainerSpec`], [`LatencyClass`]), a
//! scheduler's settings ([`SchedulerConfig`]), the limit constants, the error type ([`ContainerError`]) and the
//! range checks every setting passes before the scheduler accepts it (`check_spec`, `check_shares`,
//! `check_range`).
//!
//! # Invariants
//! - `shares` is in `1..=SHARES_MAX` at all times (zero shares would give a container infinite virtual runtime
//!   per poll).
//! - `tasks_max` and `queued_max` are in `1..=TASKS_MAX_LIMIT`; `containers_max` in `1..=CONTAINERS_MAX_LIMIT`;
//!   `polls_per_turn` and `turn_ns` at least 1.
//! - A [`ContainerId`] is an index into the scheduler's container table; containers are never removed, so an id
//!   stays valid. A [`TaskId`] carries the generation of its task slot.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | `name` | 1..=128 bytes of ASCII letters, digits and `._:-` ([`crate::name`]) | one name rule for the node, its TOML and the control plane |
//! | `containers_max` | default 64 ([`CONTAINERS_MAX_DEFAULT`]), at most 4,096 ([`CONTAINERS_MAX_LIMIT`]) | picks scan the awake containers |
//! | `shares` | 1..=1,000,000 ([`SHARES_MAX`]) | keeps `2^40 / shares` exact to 2^-20 |
//! | `tasks_max` | 1..=1,048,576 per container ([`TASKS_MAX_LIMIT`]), default 65,536 ([`TASKS_MAX_DEFAULT`]) | bounds the task table |
//! | `queued_max` | 1..=1,048,576 per container, default 65,536 | bounds a ready queue at spawn |
//! | `polls_per_turn`, `turn_ns` | 64 polls ([`POLLS_PER_TURN_DEFAULT`]), 1 ms ([`TURN_NS_DEFAULT`]) | bounds how long I/O completions wait for the scheduler |
//! | `turn_contended_ns` | 25 µs ([`TURN_CONTENDED_NS_DEFAULT`]) while two or more containers have live tasks | bounds how long one container's completions wait behind another's polls |
//! | `cpu_percent_max` | 0 (none) or 1..=100 per container, over `cap_period_ns` (10 ms, [`CAP_PERIOD_NS_DEFAULT`]) | a hard cap, enforced even on an idle shard |
//! | `send_rate_bytes_per_second` | 0 (none) or up to 10 GB/s per connection | stored for the server's pacing |

use thiserror::Error;

use crate::name::{check_container_name, NameError};

/// Largest accepted `shares` value.
pub const SHARES_MAX: u32 = 1_000_000;
/// Largest accepted `tasks_max` and `queued_max` of one container.
pub const TASKS_MAX_LIMIT: u32 = 1 << 20;
/// Default `tasks_max` and `queued_max` of [`ContainerSpec::new`].
pub const TASKS_MAX_DEFAULT: u32 = 65_536;
/// Default limit on containers per scheduler.
pub const CONTAINERS_MAX_DEFAULT: usize = 64;
/// Largest accepted `containers_max`.
pub const CONTAINERS_MAX_LIMIT: usize = 4_096;
/// Default polls per turn before [`ContainerScheduler::run`](super::ContainerScheduler::run) yields to monoio.
pub const POLLS_PER_TURN_DEFAULT: u32 = 64;
/// Default time per turn before [`ContainerScheduler::run`](super::ContainerScheduler::run) yields to monoio: 1 ms.
pub const TURN_NS_DEFAULT: u64 = 1_000_000;
/// Default work per turn (polls plus the loop work they cause) while more than one container has live tasks:
/// 25 µs, so that the I/O completions of a container waiting behind a busy one are seen (and its writes
/// submitted) within about that long.
pub const TURN_CONTENDED_NS_DEFAULT: u64 = 25_000;
/// Default period over which `cpu_percent_max` is enforced: 10 ms (a container capped at 25% runs at most 2.5 ms of
/// every 10 ms, debt carried over).
pub const CAP_PERIOD_NS_DEFAULT: u64 = 10_000_000;
/// Largest `cpu_percent_max`; 0 means no cap.
pub const CPU_PERCENT_MAX_LIMIT: u32 = 100;
/// Largest per-connection send rate a container may set: 10 GB/s (0 means no cap).
pub const SEND_RATE_BYTES_PER_SECOND_LIMIT: u64 = 10_000_000_000;
/// Virtual runtime charged per nanosecond of CPU at one share; a container with `shares` is charged
/// `VRUNTIME_SCALE / shares` per ns (rounded down: relative error below 2^-20 at [`SHARES_MAX`]).
pub const VRUNTIME_SCALE: u64 = 1 << 40;

/// Index of a container in its scheduler (containers are never removed, so ids stay valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(pub(super) u32);

impl ContainerId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "container#{}", self.0)
    }
}

/// Handle of a spawned task; generation-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskId {
    pub(super) index: u32,
    pub(super) generation: u32,
}

/// How latency-sensitive a container's work is. Interactive containers win vruntime ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LatencyClass {
    Interactive,
    Batch,
}

/// The description of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Unique within a scheduler; [`ContainerScheduler::lookup`](super::ContainerScheduler::lookup) finds it.
    /// Follows the name rule of [`crate::name`]: 1..=128 bytes of ASCII letters, digits and `._:-`.
    pub name: String,
    /// CPU shares, 1..=[`SHARES_MAX`].
    pub shares: u32,
    pub latency_class: LatencyClass,
    /// Maximum concurrent (spawned, not completed) tasks, 1..=[`TASKS_MAX_LIMIT`].
    pub tasks_max: u32,
    /// Maximum ready-but-not-yet-polled tasks at spawn time, 1..=[`TASKS_MAX_LIMIT`].
    pub queued_max: u32,
    /// Most of the shard's CPU the container may use, in percent (1..=[`CPU_PERCENT_MAX_LIMIT`]), even when the
    /// shard is otherwise idle; 0 = no cap.
    pub cpu_percent_max: u32,
    /// Per-connection send rate the server paces this container's responses to (bytes/s,
    /// 1..=[`SEND_RATE_BYTES_PER_SECOND_LIMIT`]); 0 = no cap. The scheduler only stores it for the server.
    pub send_rate_bytes_per_second: u64,
}

impl ContainerSpec {
    /// An interactive container with default limits ([`TASKS_MAX_DEFAULT`] for both).
    pub fn new(name: impl Into<String>, shares: u32) -> Self {
        ContainerSpec {
            name: name.into(),
            shares,
            latency_class: LatencyClass::Interactive,
            tasks_max: TASKS_MAX_DEFAULT,
            queued_max: TASKS_MAX_DEFAULT,
            cpu_percent_max: 0,
            send_rate_bytes_per_second: 0,
        }
    }
}

/// Which limit of a container was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerLimit {
    /// Concurrent tasks.
    TasksMax,
    /// Ready tasks waiting for a poll.
    QueuedMax,
}

impl std::fmt::Display for ContainerLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContainerLimit::TasksMax => "tasks_max",
            ContainerLimit::QueuedMax => "queued_max",
        })
    }
}

/// Settings of one scheduler; validated by [`ContainerScheduler::new`](super::ContainerScheduler::new).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Maximum containers, 1..=[`CONTAINERS_MAX_LIMIT`].
    pub containers_max: usize,
    /// Polls per turn of [`ContainerScheduler::run`](super::ContainerScheduler::run) before yielding to monoio, at least 1.
    pub polls_per_turn: u32,
    /// Time per turn of [`ContainerScheduler::run`](super::ContainerScheduler::run) before yielding to monoio, at least 1 ns.
    pub turn_ns: u64,
    /// Time per turn while more than one container has live tasks (the work budget that bounds how long a
    /// container's completions wait behind another's polls), 1..=`turn_ns`.
    pub turn_contended_ns: u64,
    /// Period of the `cpu_percent_max` budget, 100 µs..=1 s.
    pub cap_period_ns: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            containers_max: CONTAINERS_MAX_DEFAULT,
            polls_per_turn: POLLS_PER_TURN_DEFAULT,
            turn_ns: TURN_NS_DEFAULT,
            turn_contended_ns: TURN_CONTENDED_NS_DEFAULT,
            cap_period_ns: CAP_PERIOD_NS_DEFAULT,
        }
    }
}

/// Errors of the container scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContainerError {
    /// Spawning would exceed a container's limit; the server answers 503 + Retry-After.
    #[error("{container} over {limit}: {value} > {max}")]
    OverLimit {
        container: ContainerId,
        limit: ContainerLimit,
        max: u32,
        value: u32,
    },
    /// The name breaks the name rule ([`crate::name`]).
    #[error("container name {name:?}: {error}")]
    BadName { name: String, error: NameError },
    /// Shares must be 1..=`max` (zero shares would give a container infinite virtual runtime per poll).
    #[error("container {name:?}: shares {shares} outside 1..={max}")]
    SharesOutOfRange { name: String, shares: u32, max: u32 },
    /// A container limit outside 1..=`max`.
    #[error("container {name:?}: {limit} {value} outside 1..={max}")]
    LimitOutOfRange {
        name: String,
        limit: ContainerLimit,
        value: u32,
        max: u32,
    },
    /// `cpu_percent_max` or `send_rate_bytes_per_second` above its maximum (0 = none is always accepted).
    #[error("container {name:?}: {setting} {value} outside 0..={max}")]
    SettingOutOfRange {
        name: String,
        setting: &'static str,
        value: u64,
        max: u64,
    },
    /// The scheduler already has `containers_max` containers.
    #[error("too many containers: {containers_max} already defined")]
    TooManyContainers { containers_max: usize },
    /// A container with this name exists.
    #[error("container {name:?} already exists")]
    DuplicateName { name: String },
    /// No container with this id.
    #[error("unknown {container}")]
    UnknownContainer { container: ContainerId },
    /// A scheduler setting outside its range.
    #[error("scheduler setting {field} = {value} outside {min}..={max}")]
    ConfigOutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
}

pub(super) fn check_range(
    field: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), ContainerError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ContainerError::ConfigOutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

pub(super) fn check_spec(spec: &ContainerSpec) -> Result<(), ContainerError> {
    check_container_name(&spec.name).map_err(|error| ContainerError::BadName {
        name: spec.name.clone(),
        error,
    })?;
    check_shares(&spec.name, spec.shares)?;
    check_cpu_percent_max(&spec.name, spec.cpu_percent_max)?;
    check_send_rate(&spec.name, spec.send_rate_bytes_per_second)?;
    for (limit, value) in [
        (ContainerLimit::TasksMax, spec.tasks_max),
        (ContainerLimit::QueuedMax, spec.queued_max),
    ] {
        if !(1..=TASKS_MAX_LIMIT).contains(&value) {
            return Err(ContainerError::LimitOutOfRange {
                name: spec.name.clone(),
                limit,
                value,
                max: TASKS_MAX_LIMIT,
            });
        }
    }
    Ok(())
}

pub(super) fn check_shares(name: &str, shares: u32) -> Result<(), ContainerError> {
    if (1..=SHARES_MAX).contains(&shares) {
        Ok(())
    } else {
        Err(ContainerError::SharesOutOfRange {
            name: name.to_owned(),
            shares,
            max: SHARES_MAX,
        })
    }
}

pub(super) fn check_cpu_percent_max(name: &str, percent: u32) -> Result<(), ContainerError> {
    if percent <= CPU_PERCENT_MAX_LIMIT {
        Ok(())
    } else {
        Err(ContainerError::SettingOutOfRange {
            name: name.to_owned(),
            setting: "cpu_percent_max",
            value: u64::from(percent),
            max: u64::from(CPU_PERCENT_MAX_LIMIT),
        })
    }
}

pub(super) fn check_send_rate(name: &str, bytes_per_second: u64) -> Result<(), ContainerError> {
    if bytes_per_second <= SEND_RATE_BYTES_PER_SECOND_LIMIT {
        Ok(())
    } else {
        Err(ContainerError::SettingOutOfRange {
            name: name.to_owned(),
            setting: "send_rate_bytes_per_second",
            value: bytes_per_second,
            max: SEND_RATE_BYTES_PER_SECOND_LIMIT,
        })
    }
}
