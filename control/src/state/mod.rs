//! The control plane's state, in domain types: the node registry, the latest load
//! of every shard, down detection, the policy, node weights and drain flags, the
//! resource containers, and the steering version; and, through [`crate::assign`],
//! the cluster policy that answers distributed mode's Assign calls.
//!
//! This module owns the truth; `convert.rs` converts protobuf messages to these
//! types at the edge and `server.rs` never keeps prost types here. It is pure: no
//! I/O, no clock (every call that needs time takes `now: Instant`), no locking (the
//! caller holds one mutex around it).
//!
//! # Layout
//! - this file: [`ClusterState`] itself, its configuration, errors and validation,
//!   the policy, weights, drain flags, steering and the Assign entry point;
//! - `types.rs`: the public domain types (ids, loads, reports, steering, views);
//! - `nodes.rs`: the node registry and its per-shard load table (register, report,
//!   down detection, node and cluster load views);
//! - `containers.rs`: the resource-container table and its cluster-wide usage;
//! - `targets.rs`: the hot-target listing, merged over nodes and Assign answers;
//! - `settings.rs`: the operator's settings as one value ([`Settings`]) for the state file, restored at start,
//!   and the checkpoint and rollback of a change that could not be saved.
//!
//! # Invariants
//! - Every mutation is validated completely before anything is written: a rejected
//!   call leaves the state exactly as it was (no half-applied updates).
//! - `version` grows by one with every change a node must see (policy, weights,
//!   drain, containers, membership: a node joins, goes down or comes back).
//! - `settings_revision` grows by one with every change to [`Settings`] (see `settings.rs`).
//! - A node is down when `now - last_seen > report_interval × down_after_intervals`;
//!   a report or a registration brings it back up.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`NODES_MAX`] | 1024 | lard's `SERVERS_MAX`: the cluster policy holds at most this many members; node ids with saved settings not registered yet count too |
//! | [`SHARDS_PER_NODE_MAX`] | 1024 | cores of one node; shard table per node |
//! | [`CONTAINERS_MAX`] | 256 | container table; every steering message carries all of them |
//! | [`CONTAINERS_PER_SHARD_MAX`] | 64 | per-container load entries kept per shard report |
//! | [`HOT_TARGETS_PER_NODE_MAX`] | 64 | hot targets kept per node (ListTargets merges them) |
//! | [`TARGETS_LIST_MAX`] | 1000 | largest ListTargets answer |
//! | [`SHARES_MAX`] | 1,000,000 | a container's `shares` (1..=): the nodes' scheduler's range |
//! | [`TASKS_MAX_LIMIT`] | 1,048,576 | a container's `connections_max` and `queued_work_max` per shard (0 = the node's own) |
//! | [`CPU_PERCENT_MAX_LIMIT`] | 100 | a container's `cpu_percent_max`: a whole shard, as nodes enforce it |
//! | [`SEND_RATE_BYTES_PER_SECOND_LIMIT`] | 10,000,000,000 | a container's send rate (10 GB/s), as nodes pace it |
//! | [`NAME_BYTES_MAX`] | 128 | node ids and container names |
//!
//! The four container ranges and the name rule are the nodes' runtime's own (`larder_runtime::container`,
//! `larder_runtime::name`), imported rather than copied, so the control plane never lists a container a node
//! refuses.
//!
//! # Input rules
//! Every name and number that reaches the state is checked here before anything changes:
//! - node ids: 1..=128 bytes of ASCII letters, digits and `._:-[]%` (a host name or a socket address);
//!   container names: 1..=128 bytes of ASCII letters, digits and `._:-` ([`validate_node_id`],
//!   [`validate_container_name`], both by `larder_runtime::name`). A malformed name is `Invalid`
//!   (INVALID_ARGUMENT) naming the field; a well-formed one that is not there is `NodeNotFound` or
//!   `ContainerNotFound` (NOT_FOUND).
//! - a container's numbers: the four ranges in the table above; a node's `cores` 1..=1024; weights 1..=256;
//!   the policy by `larder_lard::PolicyConfig::validate`; a listing's `limit` 0..=1000.
//!
//! The ranges of every `larder.v1.Control` field are written beside it in `proto/larder/v1/*.proto`;
//! `control/tests/input_rules.rs` calls every method with empty, maximal and malformed values.
//! | [`TARGET_BYTES_MAX`] | 1024 | a target path |

mod containers;
mod nodes;
mod settings;
mod targets;
mod types;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use larder_lard::{ConfigError, PolicyConfig, WEIGHT_MAX};
use larder_runtime::name::{check_container_name, check_node_id};

use crate::assign::{node_load, AssignError, Assigner, Assignment, MemberSnapshot};

pub use types::{
    ClusterLoad, Container, ContainerLimits, ContainerLoad, ContainerName, ContainerView,
    LoadReport, NodeId, NodeInfo, NodeState, NodeSteering, NodeView, PolicyUpdate, PolicyView,
    ShardId, ShardLoad, Steering, TargetLoad, TargetView,
};

pub use settings::{Checkpoint, NodeSettings, Settings};

use nodes::NodeEntry;

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
/// The nodes' scheduler's own ranges, used here so that a container the control plane lists is one every node
/// accepts: `shares` 1..=[`SHARES_MAX`] (1,000,000); `connections_max` and `queued_work_max` 0..=
/// [`TASKS_MAX_LIMIT`] (1,048,576; 0 = the node's own value); `cpu_percent_max` 0..=[`CPU_PERCENT_MAX_LIMIT`]
/// (100, a whole shard); `send_rate_bytes_per_second` 0..=[`SEND_RATE_BYTES_PER_SECOND_LIMIT`] (10 GB/s).
pub use larder_runtime::container::{
    CPU_PERCENT_MAX_LIMIT, SEND_RATE_BYTES_PER_SECOND_LIMIT, SHARES_MAX, TASKS_MAX_LIMIT,
};
/// Longest node id or container name, in bytes; the whole name rule is [`larder_runtime::name`]'s.
pub use larder_runtime::name::NAME_BYTES_MAX;
/// Longest target path, in bytes.
pub const TARGET_BYTES_MAX: usize = 1024;
/// Default weight of a node that just joined.
pub const WEIGHT_DEFAULT: u32 = 1;

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
    /// Settings restored from a state file: its policy wins over `policy`, its containers over those of
    /// `containers` with the same name (the others are added), and its node settings wait for their nodes.
    pub saved: Option<Settings>,
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
    /// Settings of node ids restored at start and not registered since (see `settings.rs`).
    saved_nodes: BTreeMap<NodeId, NodeSettings>,
    version: u64,
    settings_revision: u64,
    reports_received: u64,
    /// The cluster dispatcher of distributed mode; see [`crate::assign`].
    assigner: Assigner,
}

/// A node id by the name rule ([`larder_runtime::name::check_node_id`]): 1..=128 bytes of ASCII letters, digits
/// and `._:-[]%`. The error names `field`.
pub fn validate_node_id(field: &str, node_id: &NodeId) -> Result<(), StateError> {
    check_node_id(&node_id.0).map_err(|error| invalid(field, error.to_string()))
}

/// A container name by the name rule ([`larder_runtime::name::check_container_name`]): 1..=128 bytes of ASCII
/// letters, digits and `._:-`. The error names `field`.
pub fn validate_container_name(field: &str, name: &ContainerName) -> Result<(), StateError> {
    check_container_name(&name.0).map_err(|error| invalid(field, error.to_string()))
}

fn validate_container(field: &str, container: &Container) -> Result<(), StateError> {
    validate_container_name(&format!("{field}.name"), &container.name)?;
    // The nodes' own ranges: a value out of them would be listed here and then refused by every node.
    if !(1..=SHARES_MAX).contains(&container.shares) {
        return Err(invalid(
            format!("{field}.shares"),
            format!("{} is outside 1..={SHARES_MAX}", container.shares),
        ));
    }
    let limits = &container.limits;
    for (name, value) in [
        ("connections_max", limits.connections_max),
        ("queued_work_max", limits.queued_work_max),
    ] {
        if value > u64::from(TASKS_MAX_LIMIT) {
            return Err(invalid(
                format!("{field}.limits.{name}"),
                format!("{value} is outside 0..={TASKS_MAX_LIMIT} (per shard; 0 = the node's own value)"),
            ));
        }
    }
    if limits.cpu_percent_max > CPU_PERCENT_MAX_LIMIT {
        return Err(invalid(
            format!("{field}.limits.cpu_percent_max"),
            format!(
                "{} is outside 0..={CPU_PERCENT_MAX_LIMIT} (percent of a shard; 0 = no cap)",
                limits.cpu_percent_max
            ),
        ));
    }
    if limits.send_rate_bytes_per_second > SEND_RATE_BYTES_PER_SECOND_LIMIT {
        return Err(invalid(
            format!("{field}.limits.send_rate_bytes_per_second"),
            format!(
                "{} is outside 0..={SEND_RATE_BYTES_PER_SECOND_LIMIT} (10 GB/s; 0 = none)",
                limits.send_rate_bytes_per_second
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
        let mut state = ClusterState {
            assigner: Assigner::new(&config.policy, config.epoch),
            epoch: config.epoch,
            report_interval: config.report_interval,
            down_after: config.report_interval * config.down_after_intervals,
            nodes: BTreeMap::new(),
            policy: config.policy,
            containers,
            saved_nodes: BTreeMap::new(),
            version: 1,
            settings_revision: 0,
            reports_received: 0,
        };
        if let Some(mut saved) = config.saved {
            saved.validate()?;
            let named: Vec<&ContainerName> = saved.containers.iter().map(|c| &c.name).collect();
            let added: Vec<Container> = state
                .containers
                .values()
                .filter(|container| !named.contains(&&container.name))
                .cloned()
                .collect();
            saved.containers.extend(added);
            if saved.containers.len() > CONTAINERS_MAX {
                return Err(StateError::Full {
                    table: "containers",
                    max: CONTAINERS_MAX,
                });
            }
            state.assigner = Assigner::new(&saved.policy, config.epoch);
            state.install(saved);
        }
        Ok(state)
    }

    /// How often nodes report.
    pub fn report_interval(&self) -> Duration {
        self.report_interval
    }

    /// The current steering version.
    pub fn version(&self) -> u64 {
        self.version
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
        self.settings_revision += 1;
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
        self.settings_revision += 1;
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
}

#[cfg(test)]
mod tests {
    use larder_lard::PolicyKind;

    use super::*;

    pub(super) const INTERVAL: Duration = Duration::from_millis(100);

    pub(super) fn state() -> ClusterState {
        ClusterState::new(StateConfig {
            epoch: 7,
            report_interval: INTERVAL,
            down_after_intervals: 5,
            policy: PolicyConfig::default(),
            containers: vec![Container::default_container()],
            saved: None,
        })
        .expect("valid config")
    }

    pub(super) fn info(id: &str, cores: u32) -> NodeInfo {
        NodeInfo {
            node_id: NodeId(id.to_string()),
            http_address: format!("127.0.0.1:80{cores}"),
            cores,
            cache_bytes_budget: 1 << 20,
        }
    }

    pub(super) fn report(id: &str, shard: u32, connections: u64) -> LoadReport {
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
                    poll_cpu_time_us: 8,
                    throttles: 3,
                    ..ContainerLoad::default()
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
