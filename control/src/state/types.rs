//! The public domain types of the control plane's state: distinct id types
//! ([`NodeId`], [`ShardId`], [`ContainerName`]), what nodes report ([`NodeInfo`],
//! [`LoadReport`], [`ShardLoad`], [`TargetLoad`]), what they apply ([`Steering`],
//! [`Container`]) and what the operators' API shows (the `*View` types).
//!
//! Plain data: no behaviour beyond formatting and defaults, so `convert.rs` can map
//! each one to and from its protobuf message field by field. The bounds on these
//! values (names of at most 128 bytes, at most 1024 shards a node, 64 containers and
//! 64 hot targets kept per report) are enforced by [`super::ClusterState`], not here.

use std::fmt;
use std::time::Duration;

use larder_lard::{PolicyConfig, PolicyKind};

/// A node's unique name in the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A shard (core) of one node, 0-based.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u32);

/// A resource container's name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerName(pub String);

impl fmt::Display for ContainerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a node says about itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: NodeId,
    /// "host:port" of its HTTP server.
    pub http_address: String,
    pub cores: u32,
    pub cache_bytes_budget: u64,
}

/// Cumulative CPU time, rejections and throttles of one container on one shard, and its shares and limits in
/// force there now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerLoad {
    pub container: ContainerName,
    /// Its polls plus its part of the shard loop's work around them.
    pub cpu_time_us: u64,
    pub rejections: u64,
    /// Its polls alone.
    pub poll_cpu_time_us: u64,
    /// Periods in which its `cpu_percent_max` budget ran out and it was held back.
    pub throttles: u64,
    /// Its CPU shares on the shard now.
    pub shares: u32,
    /// Its limits on the shard now (the scheduler's values).
    pub limits: ContainerLimits,
}

/// The load of one shard. Counters are cumulative; rates cover the last interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardLoad {
    pub shard: ShardId,
    pub active_connections: u64,
    pub queued_work: u64,
    pub requests_per_second: f64,
    pub bytes_per_second: f64,
    pub cache_bytes: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_evictions: u64,
    pub handoffs: u64,
    pub cpu_time_us: u64,
    pub containers: Vec<ContainerLoad>,
    /// Requests served since the node started.
    pub requests: u64,
    /// p99 request latency over the last report interval; `None` when the node does not measure it.
    pub latency_p99_us: Option<u64>,
}
/// A hot target as one node sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetLoad {
    pub target: String,
    pub requests_per_second: f64,
    pub shards: Vec<ShardId>,
}

/// One load report of a node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    pub node_id: NodeId,
    pub sequence: u64,
    pub shards: Vec<ShardLoad>,
    pub hot_targets: Vec<TargetLoad>,
}

/// Per-shard limits of a container; 0 means none set here (a node keeps its own configured value).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerLimits {
    pub connections_max: u64,
    pub queued_work_max: u64,
    /// Hard cap on the share of each shard's CPU, in percent, 0..=[`super::CPU_PERCENT_MAX_LIMIT`] (100).
    pub cpu_percent_max: u32,
    /// Send rate of each connection, 0..=[`super::SEND_RATE_BYTES_PER_SECOND_LIMIT`] (10 GB/s).
    pub send_rate_bytes_per_second: u64,
}

/// A resource container: a class of work with a CPU share and limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub name: ContainerName,
    /// Relative share: with shares 1 and 2 the second gets 2/3 (2 / (1 + 2)) of a busy core.
    pub shares: u32,
    pub limits: ContainerLimits,
}

impl Container {
    /// The container every cluster starts with: shares 1, no limits.
    pub fn default_container() -> Container {
        Container {
            name: ContainerName("default".to_string()),
            shares: 1,
            limits: ContainerLimits::default(),
        }
    }
}

/// A partial policy: `None` keeps the current value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyUpdate {
    pub kind: Option<PolicyKind>,
    pub t_low: Option<u32>,
    pub t_high: Option<u32>,
    pub k_ms: Option<u64>,
    pub balance_factor: Option<f64>,
    pub vnodes_per_server: Option<u32>,
    pub targets_max: Option<u64>,
    pub target_idle_ms: Option<u64>,
}

/// What the control plane tells nodes about one cluster member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSteering {
    pub node_id: NodeId,
    pub http_address: String,
    pub weight: u32,
    pub drained: bool,
    pub up: bool,
}

/// The settings nodes apply. A node applies a steering whose `(epoch, version)`
/// differs from the last one it applied (`epoch` names the control-plane instance).
#[derive(Clone, Debug, PartialEq)]
pub struct Steering {
    pub epoch: u64,
    pub version: u64,
    pub policy: PolicyConfig,
    pub nodes: Vec<NodeSteering>,
    pub containers: Vec<Container>,
}

/// Up or down, as seen by down detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Up,
    Down,
}

/// A node as the operators' API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub info: NodeInfo,
    pub state: NodeState,
    pub drained: bool,
    pub weight: u32,
    pub last_report_age: Duration,
    pub reports_received: u64,
    /// Sum over the node's shards; `shard` holds the number of shards reporting.
    pub total: ShardLoad,
}

/// The cluster as the operators' API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterLoad {
    pub nodes_up: u32,
    pub nodes_down: u32,
    /// Sum over the nodes that are up; `shard` holds the number of shards reporting.
    pub total: ShardLoad,
    pub nodes: Vec<NodeView>,
    pub reports_received: u64,
}

/// A hot target of the cluster and the shards serving it.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetView {
    pub target: String,
    pub requests_per_second: f64,
    pub servers: Vec<(NodeId, ShardId)>,
    /// Distributed mode: the nodes Assign last gave this target, first = preferred.
    pub assigned: Vec<NodeId>,
    /// Assign answers given for this target (ranks targets no node reports as hot).
    pub assignments: u64,
}
/// A container with its cluster-wide usage ([`ContainerLoad`]'s counters summed over the nodes that are up).
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerView {
    pub container: Container,
    pub cpu_time_us: u64,
    pub rejections: u64,
    pub poll_cpu_time_us: u64,
    pub throttles: u64,
}

/// The policy, the node weights and the steering version.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyView {
    pub policy: PolicyConfig,
    pub node_weights: Vec<(NodeId, u32)>,
    pub steering_version: u64,
}
