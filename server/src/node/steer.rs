//! Steering a running node from an ordinary thread (the control-plane agent): swap the across-cores policy and
//! change container shares and limits, without a restart. In the server's own types: this module knows nothing of gRPC.
//!
//! # What it owns
//! [`NodeSteer`], a `Clone + Send + Sync` handle from [`super::Node::steer`], and [`ShardSteer`], the message a
//! shard applies to its own container scheduler (which is `!Send`, so only the shard can touch it).
//!
//! # Policy swap ([`NodeSteer::set_policy`])
//! 1. Validate the configuration and build the new policy with `larder_lard::build`, outside the lock.
//! 2. Take the node's policy lock (the lock every request takes for `select` + `on_start`).
//! 3. Re-add every member of the old policy to the new one with its weight, draining flag and external load;
//!    any error returns with the old policy still in place (nothing half-applied).
//! 4. Replace the policy and record the configuration; release the lock. The next request's `select` uses the
//!    new policy.
//!
//! Requests in flight at the swap call `on_finish` on the new policy, whose decrement saturates at 0: its load
//! counts are low by at most the requests in flight at the swap, until they finish. Target tables (LARD) start
//! empty: the first request for each target after a swap assigns it again.
//!
//! A single-shard node runs no policy (there is nothing to distribute): `set_policy` validates and records the
//! configuration, [`NodeSteer::policy_name`] reports it, and it takes effect only in a node with more shards.
//!
//! # Container shares ([`NodeSteer::set_container_shares`])
//! The name and the shares are checked against the node's configuration first (unknown name, shares outside
//! `1..=SHARES_MAX`: an error, nothing sent). Then one [`ShardSteer::SetShares`] goes to every shard's control
//! queue; each shard applies it at its next poll of the queue (`ContainerScheduler::set_shares`).
//!
//! # Container limits ([`NodeSteer::set_container_limits`])
//! [`ContainerLimits`] are per shard, as the control plane defines them (0 = no limit set there). They map onto
//! the shard's container scheduler ([`SchedulerLimits`]), whose refusals are what the node answers with 503 +
//! Retry-After (a connection is one task of its container, from accept or handoff until it closes or moves):
//! - `connections_max` → `tasks_max`: a connection placed into a container that already holds
//!   `connections_max` connections on that shard gets 503 + Retry-After and is closed;
//! - `queued_work_max` → `queued_max`: tasks ready but not yet polled, checked when a connection is placed;
//! - `cpu_percent_max` → the scheduler's hard cap: the container gets at most that share of each shard's CPU
//!   in every 10 ms period, even when the shard is otherwise idle (25 = at most 2.5 ms of every 10 ms);
//! - `send_rate_bytes_per_second` → the rate each of the container's connections is paced to (nginx's
//!   `limit_rate`), read by the connection at its next response;
//! - 0 → the node's own configuration of that container: `tasks_max` (65,536 by default) for the first two, so
//!   every container keeps a limit, and the configured `cpu_percent_max` and `send_rate_bytes_per_second` (0 =
//!   none by default) for the last two. A node joining a control plane whose containers say 0 keeps its own
//!   configuration; a cap the node's file sets is lifted from the control plane with 100, not 0.
//!
//! 1. Validate and map: the container is configured, `connections_max` and `queued_work_max` are at most
//!    `TASKS_MAX_LIMIT` (1,048,576), `cpu_percent_max` at most `CPU_PERCENT_MAX_LIMIT` (100),
//!    `send_rate_bytes_per_second` at most `SEND_RATE_BYTES_PER_SECOND_LIMIT` (10 GB/s). Any error returns
//!    before anything is sent.
//! 2. Send one [`ShardSteer::SetLimits`] to every shard's control queue.
//! 3. Each shard, at its next poll of the queue, finds the container and checks the [`SchedulerLimits`] against
//!    the scheduler's ranges once more; out of range (a bug: step 1 maps into them) is logged and nothing is
//!    applied on that shard.
//! 4. It applies them: `ContainerScheduler::set_limits`, then `set_cpu_percent_max` only if the cap changed
//!    (setting it restarts the cap's period with a full budget, which a repeated value must not hand out),
//!    then `set_send_rate`. Connections already admitted stay; the limits apply to the next one, the send rate
//!    to each connection's next response, the cap from the shard's next turn.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | control queue per shard | `larder_runtime::mesh::CONTROL_QUEUE_CAPACITY_DEFAULT` (256) | steering is a few messages a second |
//! | [`DELIVERY_TIMEOUT`] | 100 ms per shard | a shard whose queue stays full that long is stuck; the caller hears of it |
//! | `connections_max`, `queued_work_max` | 0..=1,048,576 (`TASKS_MAX_LIMIT`) | the scheduler's task table per container |
//! | `cpu_percent_max` | 0..=100 (`CPU_PERCENT_MAX_LIMIT`) | a whole shard; 100 is as good as no cap |
//! | `send_rate_bytes_per_second` | 0..=10,000,000,000 (`SEND_RATE_BYTES_PER_SECOND_LIMIT`) | 10 GB/s, above any one NIC |

use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use larder_lard::{Policy, PolicyConfig};
use larder_runtime::container::{
    ContainerError, ContainerId, ContainerScheduler, CPU_PERCENT_MAX_LIMIT,
    SEND_RATE_BYTES_PER_SECOND_LIMIT, SHARES_MAX, TASKS_MAX_LIMIT,
};
use larder_runtime::ControlSender;

use super::{NodeShared, ShardMessage};

/// Longest wait for room in one shard's control queue.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_millis(100);

/// A change one shard applies to itself.
#[derive(Clone, Debug, PartialEq)]
pub enum ShardSteer {
    /// Give the container `container` `shares` CPU shares on this shard.
    SetShares { container: String, shares: u32 },
    /// Give the container `container` these scheduler limits on this shard.
    SetLimits {
        container: String,
        limits: SchedulerLimits,
    },
    /// Put this configuration in force on this shard (`super::reload`).
    Reload(Arc<crate::ServeConfig>),
}

/// One container's limits per shard as the control plane sets them; 0 = no limit set there, the node's
/// configuration applies (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerLimits {
    pub connections_max: u64,
    pub queued_work_max: u64,
    /// Percent of each shard's CPU, 0..=`CPU_PERCENT_MAX_LIMIT` (100).
    pub cpu_percent_max: u32,
    /// Per-connection send rate, 0..=`SEND_RATE_BYTES_PER_SECOND_LIMIT` (10 GB/s).
    pub send_rate_bytes_per_second: u64,
}

/// The container scheduler's settings that [`ContainerLimits`] map onto.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerLimits {
    /// Concurrent connection tasks of the container on one shard, 1..=`TASKS_MAX_LIMIT`.
    pub tasks_max: u32,
    /// Ready tasks of the container waiting for a poll, checked when a connection is placed,
    /// 1..=`TASKS_MAX_LIMIT`.
    pub queued_max: u32,
    /// Hard cap on the container's share of the shard's CPU, percent; 0 = no cap.
    pub cpu_percent_max: u32,
    /// Send rate each of the container's connections is paced to, bytes/s; 0 = none.
    pub send_rate_bytes_per_second: u64,
}

impl SchedulerLimits {
    /// The scheduler's ranges (module docs, step 3): every setting is checked before any is applied.
    fn check(&self, container: &str) -> Result<(), SteerError> {
        let ranges: [(&'static str, u64, u64, u64); 4] = [
            (
                "tasks_max",
                u64::from(self.tasks_max),
                1,
                u64::from(TASKS_MAX_LIMIT),
            ),
            (
                "queued_max",
                u64::from(self.queued_max),
                1,
                u64::from(TASKS_MAX_LIMIT),
            ),
            (
                "cpu_percent_max",
                u64::from(self.cpu_percent_max),
                0,
                u64::from(CPU_PERCENT_MAX_LIMIT),
            ),
            (
                "send_rate_bytes_per_second",
                self.send_rate_bytes_per_second,
                0,
                SEND_RATE_BYTES_PER_SECOND_LIMIT,
            ),
        ];
        for (limit, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(SteerError::Limit {
                    container: container.to_string(),
                    limit,
                    value,
                    min,
                    max,
                });
            }
        }
        Ok(())
    }
}

/// Why a steering call was refused. A refused call changed nothing, except [`SteerError::Delivery`], which
/// names the shard that did not get the message (the shards before it did).
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("policy: {0}")]
    Policy(String),
    #[error("container {0:?} is not configured on this node")]
    UnknownContainer(String),
    #[error("container {container:?}: shares {shares} outside 1..={SHARES_MAX}")]
    Shares { container: String, shares: u32 },
    #[error("container {container:?}: {limit} {value} outside {min}..={max}")]
    Limit {
        container: String,
        limit: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("shard {shard}: {reason}")]
    Delivery { shard: u32, reason: String },
}

impl super::Node {
    /// The shares of `container` on each shard, as of each shard's last statistics sample (every 100 ms);
    /// empty when no shard has the container.
    pub fn container_shares(&self, container: &str) -> Vec<u32> {
        self.runtime_stats()
            .iter()
            .flat_map(|shard| shard.containers.iter())
            .filter(|stats| stats.name == container)
            .map(|stats| stats.shares)
            .collect()
    }

    /// The scheduler limits of `container` on each shard, as of each shard's last statistics sample.
    pub fn container_limits(&self, container: &str) -> Vec<SchedulerLimits> {
        self.runtime_stats()
            .iter()
            .flat_map(|shard| shard.containers.iter())
            .filter(|stats| stats.name == container)
            .map(|stats| SchedulerLimits {
                tasks_max: stats.tasks_max,
                queued_max: stats.queued_max,
                cpu_percent_max: stats.cpu_percent_max,
                send_rate_bytes_per_second: stats.send_rate_bytes_per_second,
            })
            .collect()
    }
}

/// Steers a running node from any thread (module docs).
#[derive(Clone)]
pub struct NodeSteer {
    shared: Arc<NodeShared>,
    controls: Vec<ControlSender<ShardMessage>>,
}

impl std::fmt::Debug for NodeSteer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSteer")
            .field("shards", &self.controls.len())
            .finish_non_exhaustive()
    }
}

impl NodeSteer {
    pub(crate) fn new(
        shared: Arc<NodeShared>,
        controls: Vec<ControlSender<ShardMessage>>,
    ) -> NodeSteer {
        NodeSteer { shared, controls }
    }

    pub(super) fn shared(&self) -> &NodeShared {
        &self.shared
    }

    fn recorded(&self) -> MutexGuard<'_, PolicyConfig> {
        // Written only after validation: a panic elsewhere cannot leave it half-written.
        self.shared
            .policy_config
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The name of the policy in force (or recorded, with one shard): "wrr", "ch", "lard", ...
    pub fn policy_name(&self) -> &'static str {
        self.recorded().kind.as_str()
    }

    /// The configuration in force (or recorded, with one shard).
    pub fn policy_config(&self) -> PolicyConfig {
        self.recorded().clone()
    }

    /// Swaps the node's policy (module docs, steps 1-4). Returns `false` when `config` is already in force.
    pub fn set_policy(&self, config: PolicyConfig) -> Result<bool, SteerError> {
        let policy_error = |error: &dyn std::fmt::Display| SteerError::Policy(error.to_string());
        let mut built = larder_lard::build(&config).map_err(|error| policy_error(&error))?;
        let mut recorded = self.recorded();
        if *recorded == config {
            return Ok(false);
        }
        if let Some(policy) = &self.shared.policy {
            let mut policy = policy
                .lock()
                .map_err(|_| SteerError::Policy("the policy lock is poisoned".to_string()))?;
            copy_members(policy.as_ref(), built.as_mut()).map_err(|error| policy_error(&error))?;
            *policy = built;
        }
        tracing::info!(policy = config.kind.as_str(), "policy changed");
        *recorded = config;
        Ok(true)
    }

    /// The node's configuration of `container`.
    pub fn configured(
        &self,
        container: &str,
    ) -> Result<crate::config::ContainerConfig, SteerError> {
        self.shared
            .config()
            .containers
            .iter()
            .find(|configured| configured.name == container)
            .cloned()
            .ok_or_else(|| SteerError::UnknownContainer(container.to_string()))
    }

    /// Sends `steer` to every shard's control queue.
    pub(super) fn deliver(&self, steer: &ShardSteer) -> Result<(), SteerError> {
        for control in &self.controls {
            control
                .send_timeout(ShardMessage::Steer(steer.clone()), DELIVERY_TIMEOUT)
                .map_err(|refused| SteerError::Delivery {
                    shard: control.shard().0,
                    reason: refused.error.to_string(),
                })?;
        }
        Ok(())
    }

    /// The shares of `container` on every shard (module docs).
    pub fn set_container_shares(&self, container: &str, shares: u32) -> Result<(), SteerError> {
        self.configured(container)?;
        if !(1..=SHARES_MAX).contains(&shares) {
            return Err(SteerError::Shares {
                container: container.to_string(),
                shares,
            });
        }
        self.deliver(&ShardSteer::SetShares {
            container: container.to_string(),
            shares,
        })
    }

    /// Validates `limits` for `container` and maps them onto scheduler limits (module docs, step 1); sends
    /// nothing.
    pub fn scheduler_limits(
        &self,
        container: &str,
        limits: ContainerLimits,
    ) -> Result<SchedulerLimits, SteerError> {
        let configured = self.configured(container)?;
        // 0: the configured value; else `value` if at most `max`.
        let map = |limit: &'static str, value: u64, configured: u64, max: u64| match value {
            0 => Ok(configured),
            value if value <= max => Ok(value),
            value => Err(SteerError::Limit {
                container: container.to_string(),
                limit,
                value,
                min: 0,
                max,
            }),
        };
        let tasks_max = u64::from(configured.tasks_max);
        let tasks_limit = u64::from(TASKS_MAX_LIMIT);
        let mapped = SchedulerLimits {
            tasks_max: map(
                "connections_max",
                limits.connections_max,
                tasks_max,
                tasks_limit,
            )? as u32,
            queued_max: map(
                "queued_work_max",
                limits.queued_work_max,
                tasks_max,
                tasks_limit,
            )? as u32,
            cpu_percent_max: map(
                "cpu_percent_max",
                u64::from(limits.cpu_percent_max),
                u64::from(configured.cpu_percent_max),
                u64::from(CPU_PERCENT_MAX_LIMIT),
            )? as u32,
            send_rate_bytes_per_second: map(
                "send_rate_bytes_per_second",
                limits.send_rate_bytes_per_second,
                configured.send_rate_bytes_per_second,
                SEND_RATE_BYTES_PER_SECOND_LIMIT,
            )?,
        };
        // The node's configuration was validated at start; a file that passed it maps into the ranges too.
        mapped.check(container)?;
        Ok(mapped)
    }

    /// The limits of `container` on every shard (module docs, steps 1-4). Returns the scheduler limits sent.
    pub fn set_container_limits(
        &self,
        container: &str,
        limits: ContainerLimits,
    ) -> Result<SchedulerLimits, SteerError> {
        let mapped = self.scheduler_limits(container, limits)?;
        self.deliver(&ShardSteer::SetLimits {
            container: container.to_string(),
            limits: mapped,
        })?;
        Ok(mapped)
    }
}

/// Step 3: every member of `old` joins `new` with the same weight, draining flag and external load.
fn copy_members(
    old: &dyn Policy,
    new: &mut dyn Policy,
) -> Result<(), larder_lard::MembershipError> {
    for member in old.members() {
        new.add_server(member.server, member.weight)?;
        if member.draining {
            new.set_draining(member.server, true)?;
        }
        if member.external_load > 0 {
            new.set_external_load(member.server, member.external_load)?;
        }
    }
    Ok(())
}

/// Why a shard did not apply a [`ShardSteer`] (logged by [`apply_on_shard`]).
#[derive(Debug, thiserror::Error)]
pub(super) enum ApplyError {
    #[error("not on this shard")]
    NotOnShard,
    #[error(transparent)]
    Range(#[from] SteerError),
    #[error(transparent)]
    Scheduler(#[from] ContainerError),
}

/// Applies `steer` on the shard that received it (called from the shard's message loop).
pub(crate) fn apply_on_shard(shard: u32, scheduler: &ContainerScheduler, steer: ShardSteer) {
    let outcome = match &steer {
        ShardSteer::SetShares { container, shares } => scheduler
            .lookup(container)
            .ok_or(ApplyError::NotOnShard)
            .and_then(|id| Ok(scheduler.set_shares(id, *shares)?)),
        ShardSteer::SetLimits { container, limits } => scheduler
            .lookup(container)
            .ok_or(ApplyError::NotOnShard)
            .and_then(|id| apply_limits(scheduler, id, container, limits)),
        ShardSteer::Reload(_) => unreachable!("the shard applies a reload itself (super::reload)"),
    };
    match outcome {
        Ok(()) => tracing::debug!(shard, ?steer, "container changed"),
        Err(error) => tracing::warn!(shard, ?steer, %error, "container not changed"),
    }
}

/// Module docs, container limits steps 3-4: checks every setting, then applies them all.
pub(super) fn apply_limits(
    scheduler: &ContainerScheduler,
    id: ContainerId,
    container: &str,
    limits: &SchedulerLimits,
) -> Result<(), ApplyError> {
    limits.check(container)?;
    // In range, so none of these calls fails (the scheduler's checks are the ranges just checked).
    scheduler.set_limits(id, limits.tasks_max, limits.queued_max)?;
    let cap_now = scheduler
        .container_stats(id)
        .map(|stats| stats.cpu_percent_max);
    if cap_now != Some(limits.cpu_percent_max) {
        scheduler.set_cpu_percent_max(id, limits.cpu_percent_max)?;
    }
    scheduler.set_send_rate(id, limits.send_rate_bytes_per_second)?;
    Ok(())
}

/// Used by tests: runs `f` on the node's policy (`None` with one shard).
#[cfg(test)]
fn with_policy<T>(steer: &NodeSteer, f: impl FnOnce(&mut dyn Policy) -> T) -> Option<T> {
    let policy = steer.shared.policy.as_ref()?;
    let mut policy = policy.lock().expect("policy lock");
    Some(f(policy.as_mut()))
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use larder_lard::{MemberView, PolicyKind, ServerId, TargetId};
    use larder_runtime::topology::ShardSelection;

    use super::*;
    use crate::node::Node;
    use crate::ServeConfig;

    /// Attempts of a bounded wait (each followed by a 10 ms pause): 10 s at most.
    const WAIT_ATTEMPTS_MAX: u32 = 1000;

    fn start(shards: usize, policy: PolicyKind) -> (Node, tempfile::TempDir) {
        start_with(shards, policy, |_| {})
    }

    pub(in crate::node) fn start_with(
        shards: usize,
        policy: PolicyKind,
        edit: impl FnOnce(&mut ServeConfig),
    ) -> (Node, tempfile::TempDir) {
        let root = tempfile::tempdir().expect("tempdir");
        let mut config = ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cores: ShardSelection::Count(shards),
            policy,
            root: root.path().to_path_buf(),
            ..ServeConfig::default()
        };
        edit(&mut config);
        config.validate().expect("a valid configuration");
        (Node::start(config).expect("node starts"), root)
    }

    /// The servers the node's policy picks for `count` requests of `path`, each finished before the next.
    fn picks(steer: &NodeSteer, path: &str, count: usize) -> Vec<u32> {
        let target = TargetId::from_path(path);
        with_policy(steer, |policy| {
            (0..count as u64)
                .map(|request| {
                    let server = policy
                        .select(target, request, request)
                        .expect("a live shard")
                        .server;
                    policy.on_start(server, target, request);
                    policy.on_finish(server, target, request);
                    server.0
                })
                .collect()
        })
        .expect("two shards run a policy")
    }

    fn members(steer: &NodeSteer) -> Vec<MemberView> {
        with_policy(steer, |policy| policy.members()).unwrap_or_default()
    }

    pub(in crate::node) fn stop(node: Node) {
        node.shutdown();
        node.join().expect("node stops");
    }

    /// Waits (bounded) until `condition` holds; `describe` says what was seen instead.
    pub(in crate::node) fn wait_until(
        mut condition: impl FnMut() -> bool,
        describe: impl Fn() -> String,
    ) {
        let started = Instant::now();
        let mut attempts = 0;
        while !condition() {
            attempts += 1;
            assert!(
                attempts < WAIT_ATTEMPTS_MAX,
                "after {:?}: {}",
                started.elapsed(),
                describe()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn set_policy_swaps_wrr_for_hash_and_keeps_members_and_drain() {
        let (node, _root) = start(2, PolicyKind::Wrr);
        let steer = node.steer();
        assert_eq!(steer.policy_name(), "wrr");
        assert_eq!(picks(&steer, "/a", 4), [0, 1, 0, 1], "wrr alternates");
        with_policy(&steer, |policy| policy.set_draining(ServerId(1), true))
            .expect("policy")
            .expect("shard 1 is a member");
        let before = members(&steer);

        assert!(steer
            .set_policy(PolicyConfig::new(PolicyKind::ConsistentHash))
            .expect("valid policy"));
        assert_eq!(steer.policy_name(), "ch");
        assert_eq!(
            members(&steer),
            before,
            "same members, weights and drain flags"
        );
        with_policy(&steer, |policy| policy.set_draining(ServerId(1), false))
            .expect("policy")
            .expect("shard 1 is a member");
        for path in ["/a", "/b", "/c", "/d"] {
            let servers = picks(&steer, path, 4);
            assert!(
                servers.iter().all(|&server| server == servers[0]),
                "ch keeps {path} on one shard: {servers:?}"
            );
        }
        stop(node);
    }

    #[test]
    fn invalid_policy_changes_nothing() {
        let (node, _root) = start(2, PolicyKind::Wrr);
        let steer = node.steer();
        let mut bad = PolicyConfig::new(PolicyKind::Lard);
        bad.lard.t_low = bad.lard.t_high;
        let error = steer
            .set_policy(bad)
            .expect_err("t_low >= t_high is refused");
        assert!(error.to_string().contains("lard.t_low"), "{error}");
        assert_eq!(steer.policy_name(), "wrr");
        assert_eq!(picks(&steer, "/a", 2), [0, 1], "still wrr");
        assert!(!steer
            .set_policy(PolicyConfig::new(PolicyKind::Wrr))
            .expect("valid"));
        stop(node);
    }

    #[test]
    fn one_shard_records_the_policy_without_running_one() {
        let (node, _root) = start(1, PolicyKind::Lard);
        let steer = node.steer();
        assert!(steer
            .set_policy(PolicyConfig::new(PolicyKind::Wrr))
            .expect("valid"));
        assert_eq!(steer.policy_name(), "wrr");
        assert!(with_policy(&steer, |_| ()).is_none());
        stop(node);
    }

    #[test]
    fn container_shares_reach_every_shard() {
        let (node, _root) = start(2, PolicyKind::Wrr);
        let steer = node.steer();
        assert!(matches!(
            steer.set_container_shares("nope", 5),
            Err(SteerError::UnknownContainer(_))
        ));
        assert!(matches!(
            steer.set_container_shares("default", 0),
            Err(SteerError::Shares { .. })
        ));
        steer.set_container_shares("default", 7).expect("delivered");
        wait_until(
            || node.container_shares("default") == [7, 7],
            || format!("shares {:?}", node.container_shares("default")),
        );
        stop(node);
    }

    #[test]
    fn container_limits_are_validated_first_then_reach_every_shard() {
        let (node, _root) = start(2, PolicyKind::Wrr);
        let steer = node.steer();
        let configured = SchedulerLimits {
            tasks_max: 65_536,
            queued_max: 65_536,
            cpu_percent_max: 0,
            send_rate_bytes_per_second: 0,
        };
        assert!(matches!(
            steer.set_container_limits("nope", limits(1, 0, 0, 0)),
            Err(SteerError::UnknownContainer(_))
        ));
        let refused = [
            (
                limits(1, u64::from(TASKS_MAX_LIMIT) + 1, 0, 0),
                "queued_work_max",
            ),
            (
                limits(1, 0, CPU_PERCENT_MAX_LIMIT + 1, 0),
                "cpu_percent_max",
            ),
            (
                limits(1, 0, 0, SEND_RATE_BYTES_PER_SECOND_LIMIT + 1),
                "send_rate_bytes_per_second",
            ),
        ];
        for (limits, named) in refused {
            let error = steer
                .set_container_limits("default", limits)
                .expect_err("above the scheduler's range");
            assert!(
                matches!(error, SteerError::Limit { limit, .. } if limit == named),
                "{limits:?}: {error}"
            );
        }
        // A shares change travels the same FIFO queues: once it is in force, anything a refused call had sent
        // would be too.
        steer.set_container_shares("default", 2).expect("delivered");
        wait_until(
            || node.container_shares("default") == [2, 2],
            || format!("shares {:?}", node.container_shares("default")),
        );
        assert_eq!(
            node.container_limits("default"),
            [configured, configured],
            "refused calls changed nothing"
        );

        let sent = steer
            .set_container_limits("default", limits(3, 0, 25, 1_000_000))
            .expect("delivered");
        assert_eq!(
            sent,
            SchedulerLimits {
                tasks_max: 3,
                queued_max: 65_536,
                cpu_percent_max: 25,
                send_rate_bytes_per_second: 1_000_000,
            },
            "0 keeps the configured limit"
        );
        wait_until(
            || node.container_limits("default") == [sent, sent],
            || format!("limits {:?}", node.container_limits("default")),
        );
        let most = steer
            .set_container_limits(
                "default",
                limits(
                    0,
                    0,
                    CPU_PERCENT_MAX_LIMIT,
                    SEND_RATE_BYTES_PER_SECOND_LIMIT,
                ),
            )
            .expect("both at their maximum");
        wait_until(
            || node.container_limits("default") == [most, most],
            || format!("limits {:?}", node.container_limits("default")),
        );
        steer
            .set_container_limits("default", ContainerLimits::default())
            .expect("delivered");
        wait_until(
            || node.container_limits("default") == [configured, configured],
            || format!("limits {:?}", node.container_limits("default")),
        );
        stop(node);
    }

    #[test]
    fn zero_from_the_control_plane_keeps_the_configured_cap_and_send_rate() {
        let (node, _root) = start_with(1, PolicyKind::Wrr, |config| {
            config.containers[0].cpu_percent_max = 30;
            config.containers[0].send_rate_bytes_per_second = 4096;
        });
        let steer = node.steer();
        let configured = SchedulerLimits {
            tasks_max: 65_536,
            queued_max: 65_536,
            cpu_percent_max: 30,
            send_rate_bytes_per_second: 4096,
        };
        wait_until(
            || node.container_limits("default") == [configured],
            || format!("as built: limits {:?}", node.container_limits("default")),
        );
        assert_eq!(
            steer
                .scheduler_limits("default", ContainerLimits::default())
                .expect("valid"),
            configured
        );
        let lifted = steer
            .set_container_limits("default", limits(0, 0, 100, 0))
            .expect("delivered");
        assert_eq!(
            (lifted.cpu_percent_max, lifted.send_rate_bytes_per_second),
            (100, 4096)
        );
        wait_until(
            || node.container_limits("default") == [lifted],
            || format!("limits {:?}", node.container_limits("default")),
        );
        stop(node);
    }

    /// A shard's scheduler with one container "web" (tasks_max 10, no cap, no send rate).
    fn scheduler_with_web() -> (ContainerScheduler, ContainerId) {
        let scheduler = ContainerScheduler::new(
            larder_runtime::container::SchedulerConfig::default(),
            larder_runtime::container::MonotonicClock::new(),
        )
        .expect("scheduler");
        let mut spec = larder_runtime::container::ContainerSpec::new("web", 1);
        spec.tasks_max = 10;
        spec.queued_max = 10;
        let id = scheduler.add_container(spec).expect("web");
        (scheduler, id)
    }

    fn applied(scheduler: &ContainerScheduler, id: ContainerId) -> SchedulerLimits {
        let stats = scheduler.container_stats(id).expect("web");
        SchedulerLimits {
            tasks_max: stats.tasks_max,
            queued_max: stats.queued_max,
            cpu_percent_max: stats.cpu_percent_max,
            send_rate_bytes_per_second: stats.send_rate_bytes_per_second,
        }
    }

    #[test]
    fn a_shard_applies_every_limit_or_none() {
        let (scheduler, id) = scheduler_with_web();
        let before = applied(&scheduler, id);
        let wanted = SchedulerLimits {
            tasks_max: 5,
            queued_max: 6,
            cpu_percent_max: 40,
            send_rate_bytes_per_second: 8192,
        };
        let set = |limits| ShardSteer::SetLimits {
            container: "web".to_string(),
            limits,
        };
        // The last setting out of range: the first ones must not have been applied either.
        apply_on_shard(
            0,
            &scheduler,
            set(SchedulerLimits {
                send_rate_bytes_per_second: SEND_RATE_BYTES_PER_SECOND_LIMIT + 1,
                ..wanted
            }),
        );
        apply_on_shard(
            0,
            &scheduler,
            set(SchedulerLimits {
                cpu_percent_max: CPU_PERCENT_MAX_LIMIT + 1,
                ..wanted
            }),
        );
        apply_on_shard(
            0,
            &scheduler,
            set(SchedulerLimits {
                tasks_max: 0,
                ..wanted
            }),
        );
        assert_eq!(applied(&scheduler, id), before, "nothing half-applied");

        apply_on_shard(0, &scheduler, set(wanted));
        assert_eq!(applied(&scheduler, id), wanted);
        assert_eq!(scheduler.send_rate(id), 8192);
    }

    fn limits(
        connections_max: u64,
        queued_work_max: u64,
        cpu_percent_max: u32,
        send_rate_bytes_per_second: u64,
    ) -> ContainerLimits {
        ContainerLimits {
            connections_max,
            queued_work_max,
            cpu_percent_max,
            send_rate_bytes_per_second,
        }
    }
}
