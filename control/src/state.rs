//! The control plane's state, in domain types: the node registry, the latest load
//! of every shard, down detection, the policy, node weights and drain flags, the
//! resource containers, and the steering version; and, through [`crate::assign`],
//! the cluster policy that answers distributed mode's Assign calls.
//!
//! This module owns the truth; `service.rs` converts protobuf messages to these
//! types at the edge and never keeps prost types. It is pure: no I/O, no clock
//! (every call that needs time takes `now: Instant`), no locking (the caller holds
//! one mutex around it).
//!
//! # Invariants
//! - Every mutation is validated completely before anything is written: a rejected
//!   call leaves the state exactly as it was (no half-applied updates).
//! - `version` grows by one with every change a node must see (policy, weights,
//!   drain, containers, membership: a node joins, goes down or comes back).
//! - A node is down when `now - last_seen > report_interval × down_after_intervals`;
//!   a report or a registration brings it back up.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`NODES_MAX`] | 1024 | lard's `SERVERS_MAX`: the cluster policy holds at most this many members |
//! | [`SHARDS_PER_NODE_MAX`] | 1024 | cores of one node; shard table per node |
//! | [`CONTAINERS_MAX`] | 256 | container table; every steering message carries all of them |
//! | [`CONTAINERS_PER_SHARD_MAX`] | 64 | per-container load entries kept per shard report |
//! | [`HOT_TARGETS_PER_NODE_MAX`] | 64 | hot targets kept per node (ListTargets merges them) |
//! | [`TARGETS_LIST_MAX`] | 1000 | largest ListTargets answer |
//! | [`NAME_BYTES_MAX`] | 128 | node ids and container names |
//! | [`TARGET_BYTES_MAX`] | 1024 | a target path |

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use larder_lard::{ConfigError, PolicyConfig, PolicyKind, WEIGHT_MAX};

use crate::assign::{node_load, AssignError, Assigner, Assignment, MemberSnapshot};

/// Most nodes in the registry.
pub const NODES_MAX: usize = 1024;
/// Most shards (cores) of one node.
pub const SHARDS_PER_NODE_MAX: u32 = 1024;
/// Most resource containers.
pub const CONTAINERS_MAX: usize = 256;
/// Most per-container entries kept in one shard's load.
pub const CONTAINERS_PER_SHARD_MAX: usize = 64;
/// Most hot targets kept per node.
pub const HOT_TARGETS_PER_NODE_MAX: usize = 64;
/// Largest `limit` of a targets listing.
pub const TARGETS_LIST_MAX: usize = 1000;
/// Default `limit` of a targets listing.
pub const TARGETS_LIST_DEFAULT: usize = 20;
/// Longest node id or container name, in bytes.
pub const NAME_BYTES_MAX: usize = 128;
/// Longest target path, in bytes.
pub const TARGET_BYTES_MAX: usize = 1024;
/// Default weight of a node that just joined.
pub const WEIGHT_DEFAULT: u32 = 1;

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

/// Cumulative CPU time and rejections of one container on one shard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerLoad {
    pub container: ContainerName,
    pub cpu_time_us: u64,
    pub rejections: u64,
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
}

impl ShardLoad {
    /// Adds `other`'s numbers (not its per-container entries) into `self`.
    fn accumulate(&mut self, other: &ShardLoad) {
        self.active_connections += other.active_connections;
        self.queued_work += other.queued_work;
        self.requests_per_second += other.requests_per_second;
        self.bytes_per_second += other.bytes_per_second;
        self.cache_bytes += other.cache_bytes;
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
        self.cache_evictions += other.cache_evictions;
        self.handoffs += other.handoffs;
        self.cpu_time_us += other.cpu_time_us;
    }
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

/// Per-shard limits of a container; 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerLimits {
    pub connections_max: u64,
    pub queued_work_max: u64,
    pub cpu_percent_max: u32,
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

impl TargetView {
    fn unseen(target: &str) -> TargetView {
        TargetView {
            target: target.to_string(),
            requests_per_second: 0.0,
            servers: Vec::new(),
            assigned: Vec::new(),
            assignments: 0,
        }
    }
}

/// A container with its cluster-wide CPU time and rejections (nodes that are up).
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerView {
    pub container: Container,
    pub cpu_time_us: u64,
    pub rejections: u64,
}

/// The policy, the node weights and the steering version.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyView {
    pub policy: PolicyConfig,
    pub node_weights: Vec<(NodeId, u32)>,
    pub steering_version: u64,
}

/// Why a call was rejected. A rejected call changed nothing.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum StateError {
    #[error("node {0:?} is not registered")]
    NodeNotFound(String),
    #[error("container {0:?} does not exist (set create to add it)")]
    ContainerNotFound(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{table} is full: at most {max} entries")]
    Full { table: &'static str, max: usize },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> StateError {
    StateError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Fixed settings of the state.
#[derive(Clone, Debug)]
pub struct StateConfig {
    /// Names this control-plane instance in every steering.
    pub epoch: u64,
    /// How often nodes report (sent to them on registration).
    pub report_interval: Duration,
    /// A node silent for this many report intervals is down.
    pub down_after_intervals: u32,
    pub policy: PolicyConfig,
    pub containers: Vec<Container>,
}

#[derive(Debug)]
struct NodeEntry {
    info: NodeInfo,
    weight: u32,
    drained: bool,
    down: bool,
    last_seen: Instant,
    reports_received: u64,
    /// Latest load per shard, indexed by shard id (`len == info.cores`).
    shards: Vec<Option<ShardLoad>>,
    hot_targets: Vec<TargetLoad>,
}

/// The control plane's state. See the module docs.
#[derive(Debug)]
pub struct ClusterState {
    epoch: u64,
    report_interval: Duration,
    down_after: Duration,
    nodes: BTreeMap<NodeId, NodeEntry>,
    policy: PolicyConfig,
    containers: BTreeMap<ContainerName, Container>,
    version: u64,
    reports_received: u64,
    /// The cluster dispatcher of distributed mode; see [`crate::assign`].
    assigner: Assigner,
}

fn validate_name(field: &str, name: &str) -> Result<(), StateError> {
    if name.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(invalid(
            field,
            format!("{} bytes, at most {NAME_BYTES_MAX}", name.len()),
        ));
    }
    Ok(())
}

fn validate_container(field: &str, container: &Container) -> Result<(), StateError> {
    validate_name(&format!("{field}.name"), &container.name.0)?;
    if container.shares == 0 {
        return Err(invalid(format!("{field}.shares"), "must be at least 1"));
    }
    // Nodes have no CPU cap yet (their scheduler shares CPU but cannot idle a container), so a non-zero cap
    // would be listed here and then refused by every node: refuse it at the edge instead.
    if container.limits.cpu_percent_max != 0 {
        return Err(invalid(
            format!("{field}.limits.cpu_percent_max"),
            format!(
                "{} is not supported: nodes do not enforce a CPU cap yet; use 0 (no cap) and shares",
                container.limits.cpu_percent_max
            ),
        ));
    }
    Ok(())
}

fn validate_weight(field: &str, weight: u32) -> Result<(), StateError> {
    if weight == 0 || weight > WEIGHT_MAX {
        return Err(invalid(
            field,
            format!("{weight} is outside 1..={WEIGHT_MAX} (drain a node to take it out)"),
        ));
    }
    Ok(())
}

fn config_error(error: ConfigError) -> StateError {
    match error {
        ConfigError::Invalid {
            field,
            value,
            reason,
        } => invalid(format!("policy.{field}"), format!("{value} {reason}")),
        other => invalid("policy.kind", other.to_string()),
    }
}

impl ClusterState {
    /// A state with no nodes. Fails when the configured policy or containers are invalid.
    pub fn new(config: StateConfig) -> Result<ClusterState, StateError> {
        config.policy.validate().map_err(config_error)?;
        if config.report_interval.is_zero() {
            return Err(invalid("report_interval", "must be above 0"));
        }
        if config.down_after_intervals == 0 {
            return Err(invalid("down_after_intervals", "must be at least 1"));
        }
        if config.containers.len() > CONTAINERS_MAX {
            return Err(StateError::Full {
                table: "containers",
                max: CONTAINERS_MAX,
            });
        }
        let mut containers = BTreeMap::new();
        for (index, container) in config.containers.iter().enumerate() {
            validate_container(&format!("containers[{index}]"), container)?;
            containers.insert(container.name.clone(), container.clone());
        }
        Ok(ClusterState {
            assigner: Assigner::new(&config.policy, config.epoch),
            epoch: config.epoch,
            report_interval: config.report_interval,
            down_after: config.report_interval * config.down_after_intervals,
            nodes: BTreeMap::new(),
            policy: config.policy,
            containers,
            version: 1,
            reports_received: 0,
        })
    }

    /// How often nodes report.
    pub fn report_interval(&self) -> Duration {
        self.report_interval
    }

    /// The current steering version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Registers (or re-registers) a node and adds its unknown containers. Weight and
    /// drain flag survive a re-registration; the shard table is reset when `cores` changes.
    pub fn register(
        &mut self,
        now: Instant,
        info: NodeInfo,
        containers: Vec<Container>,
    ) -> Result<Steering, StateError> {
        validate_name("node.node_id", &info.node_id.0)?;
        if info.http_address.is_empty() {
            return Err(invalid("node.http_address", "must not be empty"));
        }
        if info.cores == 0 || info.cores > SHARDS_PER_NODE_MAX {
            return Err(invalid(
                "node.cores",
                format!("{} is outside 1..={SHARDS_PER_NODE_MAX}", info.cores),
            ));
        }
        if !self.nodes.contains_key(&info.node_id) && self.nodes.len() >= NODES_MAX {
            return Err(StateError::Full {
                table: "nodes",
                max: NODES_MAX,
            });
        }
        let mut new_containers = Vec::new();
        for (index, container) in containers.into_iter().enumerate() {
            validate_container(&format!("containers[{index}]"), &container)?;
            let known = self.containers.contains_key(&container.name)
                || new_containers
                    .iter()
                    .any(|new: &Container| new.name == container.name);
            if !known {
                new_containers.push(container);
            }
        }
        if self.containers.len() + new_containers.len() > CONTAINERS_MAX {
            return Err(StateError::Full {
                table: "containers",
                max: CONTAINERS_MAX,
            });
        }
        // Validated: apply.
        let changed = !new_containers.is_empty();
        for container in new_containers {
            self.containers.insert(container.name.clone(), container);
        }
        let cores = info.cores as usize;
        let membership_changed = match self.nodes.get_mut(&info.node_id) {
            Some(entry) => {
                let changed = entry.down || entry.info.http_address != info.http_address;
                if entry.shards.len() != cores {
                    entry.shards = vec![None; cores];
                }
                entry.info = info;
                entry.down = false;
                entry.last_seen = now;
                changed
            }
            None => {
                self.nodes.insert(
                    info.node_id.clone(),
                    NodeEntry {
                        info,
                        weight: WEIGHT_DEFAULT,
                        drained: false,
                        down: false,
                        last_seen: now,
                        reports_received: 0,
                        shards: vec![None; cores],
                        hot_targets: Vec::new(),
                    },
                );
                true
            }
        };
        if changed || membership_changed {
            self.version += 1;
        }
        Ok(self.steering())
    }

    /// Stores a node's load report. Returns true when the node came back up (the
    /// steering version changed).
    pub fn report(&mut self, now: Instant, report: LoadReport) -> Result<bool, StateError> {
        let Some(entry) = self.nodes.get_mut(&report.node_id) else {
            return Err(StateError::NodeNotFound(report.node_id.0));
        };
        let cores = entry.info.cores;
        if let Some(shard) = report.shards.iter().find(|load| load.shard.0 >= cores) {
            return Err(invalid(
                "shards.shard",
                format!("{} is not below the node's {cores} cores", shard.shard.0),
            ));
        }
        for mut load in report.shards {
            load.containers.truncate(CONTAINERS_PER_SHARD_MAX);
            let index = load.shard.0 as usize;
            entry.shards[index] = Some(load);
        }
        let mut hot_targets = report.hot_targets;
        hot_targets.truncate(HOT_TARGETS_PER_NODE_MAX);
        hot_targets.retain(|target| target.target.len() <= TARGET_BYTES_MAX);
        entry.hot_targets = hot_targets;
        self.assigner
            .set_load(&entry.info.node_id, node_load(&entry.shards));
        entry.last_seen = now;
        entry.reports_received += 1;
        self.reports_received += 1;
        let came_back = entry.down;
        entry.down = false;
        if came_back {
            self.version += 1;
        }
        Ok(came_back)
    }

    /// Marks nodes silent for longer than the down threshold as down. Returns true
    /// when any node changed state (the steering version changed).
    pub fn refresh(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for entry in self.nodes.values_mut() {
            let silent = now.saturating_duration_since(entry.last_seen);
            if !entry.down && silent > self.down_after {
                entry.down = true;
                changed = true;
            }
        }
        if changed {
            self.version += 1;
        }
        self.sync_assigner();
        changed
    }

    /// Brings the cluster policy in line with the registry (cheap when the version has not moved).
    fn sync_assigner(&mut self) {
        let members = self.nodes.values().map(|entry| MemberSnapshot {
            node_id: &entry.info.node_id,
            weight: entry.weight,
            up: !entry.down,
            drained: entry.drained,
            load: node_load(&entry.shards),
        });
        self.assigner.sync(self.version, &self.policy, members);
    }

    /// Which nodes serve each target of `node_id`'s batch (distributed mode; see
    /// [`crate::assign`]). Validated whole first: a rejected call assigns nothing.
    pub fn assign(
        &mut self,
        now: Instant,
        node_id: &NodeId,
        targets: Vec<String>,
    ) -> Result<Vec<Assignment>, AssignError> {
        if !self.nodes.contains_key(node_id) {
            return Err(StateError::NodeNotFound(node_id.0.clone()).into());
        }
        Assigner::validate(&targets)?;
        self.sync_assigner();
        self.assigner.assign(now, targets)
    }

    /// Applies a partial policy and weight changes together, or nothing.
    pub fn set_policy(
        &mut self,
        update: PolicyUpdate,
        weights: Vec<(NodeId, u32)>,
    ) -> Result<u64, StateError> {
        let mut policy = self.policy.clone();
        if let Some(kind) = update.kind {
            policy.kind = kind;
        }
        if let Some(t_low) = update.t_low {
            policy.lard.t_low = t_low;
        }
        if let Some(t_high) = update.t_high {
            policy.lard.t_high = t_high;
        }
        if let Some(k_ms) = update.k_ms {
            policy.lard.k_ms = k_ms;
        }
        if let Some(balance_factor) = update.balance_factor {
            policy.balance_factor = balance_factor;
        }
        if let Some(vnodes) = update.vnodes_per_server {
            policy.vnodes_per_server = vnodes;
        }
        if let Some(targets_max) = update.targets_max {
            policy.targets_max = usize::try_from(targets_max)
                .map_err(|_| invalid("policy.targets_max", "does not fit this machine"))?;
        }
        if let Some(idle_ms) = update.target_idle_ms {
            policy.target_idle_ms = idle_ms;
        }
        policy.validate().map_err(config_error)?;
        for (index, (node_id, weight)) in weights.iter().enumerate() {
            validate_weight(&format!("node_weights[{index}].weight"), *weight)?;
            if !self.nodes.contains_key(node_id) {
                return Err(StateError::NodeNotFound(node_id.0.clone()));
            }
        }
        // Validated: apply.
        self.policy = policy;
        for (node_id, weight) in weights {
            if let Some(entry) = self.nodes.get_mut(&node_id) {
                entry.weight = weight;
            }
        }
        self.version += 1;
        Ok(self.version)
    }

    /// Sets a node's drain flag.
    pub fn set_drained(&mut self, node_id: &NodeId, drained: bool) -> Result<u64, StateError> {
        let entry = self
            .nodes
            .get_mut(node_id)
            .ok_or_else(|| StateError::NodeNotFound(node_id.0.clone()))?;
        entry.drained = drained;
        self.version += 1;
        Ok(self.version)
    }

    /// Replaces a container's shares and limits; adds it only with `create`.
    pub fn set_container(&mut self, container: Container, create: bool) -> Result<u64, StateError> {
        validate_container("container", &container)?;
        if !self.containers.contains_key(&container.name) {
            if !create {
                return Err(StateError::ContainerNotFound(container.name.0));
            }
            if self.containers.len() >= CONTAINERS_MAX {
                return Err(StateError::Full {
                    table: "containers",
                    max: CONTAINERS_MAX,
                });
            }
        }
        self.containers.insert(container.name.clone(), container);
        self.version += 1;
        Ok(self.version)
    }

    /// What nodes apply now.
    pub fn steering(&self) -> Steering {
        Steering {
            epoch: self.epoch,
            version: self.version,
            policy: self.policy.clone(),
            nodes: self
                .nodes
                .values()
                .map(|entry| NodeSteering {
                    node_id: entry.info.node_id.clone(),
                    http_address: entry.info.http_address.clone(),
                    weight: entry.weight,
                    drained: entry.drained,
                    up: !entry.down,
                })
                .collect(),
            containers: self.containers.values().cloned().collect(),
        }
    }

    /// Whether `node_id` is registered.
    pub fn contains_node(&self, node_id: &NodeId) -> bool {
        self.nodes.contains_key(node_id)
    }

    fn view(&self, now: Instant, entry: &NodeEntry) -> NodeView {
        let mut total = ShardLoad::default();
        let mut reporting = 0;
        for load in entry.shards.iter().flatten() {
            total.accumulate(load);
            reporting += 1;
        }
        total.shard = ShardId(reporting);
        NodeView {
            info: entry.info.clone(),
            state: if entry.down {
                NodeState::Down
            } else {
                NodeState::Up
            },
            drained: entry.drained,
            weight: entry.weight,
            last_report_age: now.saturating_duration_since(entry.last_seen),
            reports_received: entry.reports_received,
            total,
        }
    }

    /// Every node, ordered by id.
    pub fn nodes(&self, now: Instant) -> Vec<NodeView> {
        self.nodes
            .values()
            .map(|entry| self.view(now, entry))
            .collect()
    }

    /// One node and the latest load of each shard that reported.
    pub fn node(
        &self,
        now: Instant,
        node_id: &NodeId,
    ) -> Result<(NodeView, Vec<ShardLoad>), StateError> {
        let entry = self
            .nodes
            .get(node_id)
            .ok_or_else(|| StateError::NodeNotFound(node_id.0.clone()))?;
        let shards = entry.shards.iter().flatten().cloned().collect();
        Ok((self.view(now, entry), shards))
    }

    /// The whole cluster.
    pub fn cluster_load(&self, now: Instant) -> ClusterLoad {
        let nodes = self.nodes(now);
        let mut total = ShardLoad::default();
        let mut shards = 0;
        let mut nodes_up = 0;
        for node in nodes.iter().filter(|node| node.state == NodeState::Up) {
            nodes_up += 1;
            total.accumulate(&node.total);
            shards += node.total.shard.0;
        }
        total.shard = ShardId(shards);
        ClusterLoad {
            nodes_up,
            nodes_down: nodes.len() as u32 - nodes_up,
            total,
            nodes,
            reports_received: self.reports_received,
        }
    }

    /// The policy, every node's weight and the steering version.
    pub fn policy(&self) -> PolicyView {
        PolicyView {
            policy: self.policy.clone(),
            node_weights: self
                .nodes
                .values()
                .map(|entry| (entry.info.node_id.clone(), entry.weight))
                .collect(),
            steering_version: self.version,
        }
    }

    /// The `limit` hottest targets over the nodes that are up (0 = the default 20).
    pub fn targets(&self, limit: usize) -> Result<Vec<TargetView>, StateError> {
        if limit > TARGETS_LIST_MAX {
            return Err(invalid(
                "limit",
                format!("{limit} is above {TARGETS_LIST_MAX}"),
            ));
        }
        let limit = if limit == 0 {
            TARGETS_LIST_DEFAULT
        } else {
            limit
        };
        let assigned = self.assigner.targets(limit);
        let mut merged: HashMap<&str, TargetView> = HashMap::new();
        for entry in self.nodes.values().filter(|entry| !entry.down) {
            for target in &entry.hot_targets {
                let view = merged
                    .entry(target.target.as_str())
                    .or_insert_with(|| TargetView::unseen(&target.target));
                view.requests_per_second += target.requests_per_second;
                view.servers.extend(
                    target
                        .shards
                        .iter()
                        .map(|shard| (entry.info.node_id.clone(), *shard)),
                );
            }
        }
        for target in &assigned {
            let view = merged
                .entry(target.target.as_str())
                .or_insert_with(|| TargetView::unseen(&target.target));
            view.assigned.clone_from(&target.node_ids);
            view.assignments = target.assignments;
        }
        let mut targets: Vec<TargetView> = merged.into_values().collect();
        targets.sort_by(|a, b| {
            b.requests_per_second
                .total_cmp(&a.requests_per_second)
                .then_with(|| b.assignments.cmp(&a.assignments))
                .then_with(|| a.target.cmp(&b.target))
        });
        targets.truncate(limit);
        Ok(targets)
    }

    /// Every container with its CPU time and rejections summed over the nodes that are up.
    pub fn containers(&self) -> Vec<ContainerView> {
        let mut views: BTreeMap<&ContainerName, ContainerView> = self
            .containers
            .iter()
            .map(|(name, container)| {
                (
                    name,
                    ContainerView {
                        container: container.clone(),
                        cpu_time_us: 0,
                        rejections: 0,
                    },
                )
            })
            .collect();
        let loads = self
            .nodes
            .values()
            .filter(|entry| !entry.down)
            .flat_map(|entry| entry.shards.iter().flatten())
            .flat_map(|shard| shard.containers.iter());
        for load in loads {
            if let Some(view) = views.get_mut(&load.container) {
                view.cpu_time_us += load.cpu_time_us;
                view.rejections += load.rejections;
            }
        }
        views.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(100);

    fn state() -> ClusterState {
        ClusterState::new(StateConfig {
            epoch: 7,
            report_interval: INTERVAL,
            down_after_intervals: 5,
            policy: PolicyConfig::default(),
            containers: vec![Container::default_container()],
        })
        .expect("valid config")
    }

    fn info(id: &str, cores: u32) -> NodeInfo {
        NodeInfo {
            node_id: NodeId(id.to_string()),
            http_address: format!("127.0.0.1:80{cores}"),
            cores,
            cache_bytes_budget: 1 << 20,
        }
    }

    fn report(id: &str, shard: u32, connections: u64) -> LoadReport {
        LoadReport {
            node_id: NodeId(id.to_string()),
            sequence: 1,
            shards: vec![ShardLoad {
                shard: ShardId(shard),
                active_connections: connections,
                containers: vec![ContainerLoad {
                    container: ContainerName("default".into()),
                    cpu_time_us: 10,
                    rejections: 1,
                }],
                ..ShardLoad::default()
            }],
            hot_targets: vec![TargetLoad {
                target: "/a".into(),
                requests_per_second: 5.0,
                shards: vec![ShardId(shard)],
            }],
        }
    }

    #[test]
    fn node_goes_down_after_exactly_five_silent_intervals() {
        let mut state = state();
        let start = Instant::now();
        state.register(start, info("a", 2), vec![]).unwrap();
        let version = state.version();
        assert!(
            !state.refresh(start + INTERVAL * 5),
            "5 intervals is not yet down"
        );
        assert_eq!(state.nodes(start)[0].state, NodeState::Up);
        assert!(state.refresh(start + INTERVAL * 5 + Duration::from_millis(1)));
        assert_eq!(state.nodes(start)[0].state, NodeState::Down);
        assert_eq!(state.version(), version + 1);
        let back = state
            .report(start + INTERVAL * 6, report("a", 1, 3))
            .unwrap();
        assert!(back, "a report brings a down node back");
        assert_eq!(state.nodes(start)[0].state, NodeState::Up);
    }

    #[test]
    fn loads_sum_over_shards_and_up_nodes() {
        let mut state = state();
        let now = Instant::now();
        state.register(now, info("a", 2), vec![]).unwrap();
        state.register(now, info("b", 2), vec![]).unwrap();
        state.report(now, report("a", 0, 3)).unwrap();
        state.report(now, report("a", 1, 4)).unwrap();
        state.report(now, report("b", 0, 10)).unwrap();
        let load = state.cluster_load(now);
        assert_eq!(load.total.active_connections, 17);
        assert_eq!(load.total.shard, ShardId(3));
        assert_eq!(load.reports_received, 3);
        let containers = state.containers();
        assert_eq!(containers[0].cpu_time_us, 30);
        let targets = state.targets(0).unwrap();
        assert_eq!(targets[0].target, "/a");
        assert_eq!(
            targets[0].servers.len(),
            2,
            "latest report per node: a/1 and b/0"
        );
    }

    #[test]
    fn rejected_set_policy_changes_nothing() {
        let mut state = state();
        let now = Instant::now();
        state.register(now, info("a", 1), vec![]).unwrap();
        let before = state.policy();
        let bad_threshold = PolicyUpdate {
            kind: Some(PolicyKind::Wrr),
            t_low: Some(70),
            ..PolicyUpdate::default()
        };
        let error = state.set_policy(bad_threshold, vec![]).unwrap_err();
        assert!(
            matches!(&error, StateError::Invalid { field, .. } if field == "policy.lard.t_low"),
            "{error:?}"
        );
        let good_policy_bad_node = PolicyUpdate {
            kind: Some(PolicyKind::Wrr),
            ..PolicyUpdate::default()
        };
        let error = state
            .set_policy(
                good_policy_bad_node.clone(),
                vec![(NodeId("a".into()), 2), (NodeId("zz".into()), 2)],
            )
            .unwrap_err();
        assert_eq!(error, StateError::NodeNotFound("zz".into()));
        let error = state
            .set_policy(good_policy_bad_node, vec![(NodeId("a".into()), 0)])
            .unwrap_err();
        assert!(matches!(error, StateError::Invalid { .. }), "{error:?}");
        assert_eq!(state.policy(), before);
    }

    #[test]
    fn containers_need_create_and_positive_shares() {
        let mut state = state();
        let mut web = Container::default_container();
        web.name = ContainerName("web".into());
        assert_eq!(
            state.set_container(web.clone(), false),
            Err(StateError::ContainerNotFound("web".into()))
        );
        web.shares = 0;
        assert!(matches!(
            state.set_container(web.clone(), true),
            Err(StateError::Invalid { field, .. }) if field == "container.shares"
        ));
        assert_eq!(state.containers().len(), 1);
        web.shares = 3;
        state.set_container(web, true).unwrap();
        assert_eq!(state.containers().len(), 2);
    }

    #[test]
    fn report_for_shard_beyond_cores_is_rejected_whole() {
        let mut state = state();
        let now = Instant::now();
        state.register(now, info("a", 1), vec![]).unwrap();
        let mut bad = report("a", 0, 3);
        bad.shards.push(ShardLoad {
            shard: ShardId(1),
            ..ShardLoad::default()
        });
        assert!(state.report(now, bad).is_err());
        assert_eq!(state.cluster_load(now).reports_received, 0);
        assert_eq!(state.node(now, &NodeId("a".into())).unwrap().1.len(), 0);
    }

    /// One operation of the property test below.
    #[derive(Clone, Debug)]
    enum Op {
        Register {
            node: u8,
            cores: u32,
        },
        Report {
            node: u8,
            shard: u32,
        },
        SetPolicy {
            t_low: u32,
            t_high: u32,
            node: u8,
            weight: u32,
        },
        Drain {
            node: u8,
            drained: bool,
        },
        SetContainer {
            name: u8,
            shares: u32,
            create: bool,
        },
        Advance {
            ms: u64,
        },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..4, 0u32..4).prop_map(|(node, cores)| Op::Register { node, cores }),
            (0u8..4, 0u32..4).prop_map(|(node, shard)| Op::Report { node, shard }),
            (0u32..80, 0u32..80, 0u8..4, 0u32..300).prop_map(|(t_low, t_high, node, weight)| {
                Op::SetPolicy {
                    t_low,
                    t_high,
                    node,
                    weight,
                }
            }),
            (0u8..4, any::<bool>()).prop_map(|(node, drained)| Op::Drain { node, drained }),
            (0u8..3, 0u32..3, any::<bool>()).prop_map(|(name, shares, create)| Op::SetContainer {
                name,
                shares,
                create
            }),
            (0u64..400).prop_map(|ms| Op::Advance { ms }),
        ]
    }

    type Observed = (PolicyView, Vec<ContainerView>, Vec<NodeView>, u64);

    fn observe(state: &ClusterState, now: Instant) -> Observed {
        (
            state.policy(),
            state.containers(),
            state.nodes(now),
            state.version(),
        )
    }

    proptest::proptest! {
        /// A rejected call leaves everything as it was; an accepted change moves the
        /// version up by exactly one; the version never goes down.
        #[test]
        fn rejected_calls_change_nothing_and_versions_only_grow(
            ops in proptest::collection::vec(op(), 1..60)
        ) {
            let mut state = state();
            let mut now = Instant::now();
            let name = |node: u8| NodeId(format!("n{node}"));
            for op in ops {
                let before = observe(&state, now);
                let outcome: Result<bool, StateError> = match op.clone() {
                    Op::Register { node, cores } => state
                        .register(now, info(&name(node).0, cores), vec![])
                        .map(|_| false),
                    Op::Report { node, shard } => {
                        state.report(now, report(&name(node).0, shard, 1)).map(|_| false)
                    }
                    Op::SetPolicy { t_low, t_high, node, weight } => state
                        .set_policy(
                            PolicyUpdate {
                                t_low: Some(t_low),
                                t_high: Some(t_high),
                                ..PolicyUpdate::default()
                            },
                            vec![(name(node), weight)],
                        )
                        .map(|_| true),
                    Op::Drain { node, drained } => {
                        state.set_drained(&name(node), drained).map(|_| true)
                    }
                    Op::SetContainer { name, shares, create } => state
                        .set_container(
                            Container {
                                name: ContainerName(format!("c{name}")),
                                shares,
                                limits: ContainerLimits::default(),
                            },
                            create,
                        )
                        .map(|_| true),
                    Op::Advance { ms } => {
                        now += Duration::from_millis(ms);
                        state.refresh(now);
                        Ok(false)
                    }
                };
                let after = observe(&state, now);
                proptest::prop_assert!(after.3 >= before.3, "version went down: {op:?}");
                match outcome {
                    Err(error) => proptest::prop_assert_eq!(
                        &after, &before, "{:?} was rejected ({}) but changed state", op, error
                    ),
                    Ok(true) => proptest::prop_assert_eq!(after.3, before.3 + 1, "{:?}", op),
                    Ok(false) => {}
                }
            }
        }
    }
}
