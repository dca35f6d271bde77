//! The node registry and its per-shard load table: registration, load reports,
//! down detection, and the node and cluster load views.
//!
//! # Invariants
//! - A node's shard table has exactly `cores` slots (1..=1024,
//!   [`SHARDS_PER_NODE_MAX`]); a report naming a shard at or beyond `cores` is
//!   rejected whole. A re-registration with a different `cores` resets the table.
//! - Each slot keeps only the latest load of its shard, with at most 64
//!   ([`CONTAINERS_PER_SHARD_MAX`]) container entries; a node keeps at most 64
//!   ([`HOT_TARGETS_PER_NODE_MAX`]) hot targets of at most 1024 bytes
//!   ([`TARGET_BYTES_MAX`]) from its latest report.
//! - The registry holds at most 1024 nodes ([`NODES_MAX`]), counting the node ids
//!   whose restored settings wait for them (`settings.rs`); a node is never removed,
//!   only marked down (silent for more than `report_interval × down_after_intervals`)
//!   and brought back by a report or a registration.
//! - Loads summed for the cluster count only nodes that are up.

use std::time::Instant;

use crate::assign::node_load;

use super::{
    invalid, validate_container, validate_node_id, ClusterLoad, ClusterState, Container,
    LoadReport, NodeId, NodeInfo, NodeState, NodeView, ShardId, ShardLoad, StateError, Steering,
    TargetLoad, CONTAINERS_MAX, CONTAINERS_PER_SHARD_MAX, HOT_TARGETS_PER_NODE_MAX, NODES_MAX,
    SHARDS_PER_NODE_MAX, TARGET_BYTES_MAX, WEIGHT_DEFAULT,
};

/// One registered node: what it said about itself, the operators' settings for it
/// and its latest load.
#[derive(Debug)]
pub(super) struct NodeEntry {
    pub(super) info: NodeInfo,
    pub(super) weight: u32,
    pub(super) drained: bool,
    pub(super) down: bool,
    pub(super) last_seen: Instant,
    pub(super) reports_received: u64,
    /// Latest load per shard, indexed by shard id (`len == info.cores`).
    pub(super) shards: Vec<Option<ShardLoad>>,
    pub(super) hot_targets: Vec<TargetLoad>,
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
        self.requests += other.requests;
        // No latency percentile: percentiles of shards do not add up to the node's.
    }
}

impl ClusterState {
    /// Registers (or re-registers) a node and adds its unknown containers. Weight and
    /// drain flag survive a re-registration, and a node id's settings restored from a
    /// state file are its weight and drain flag at its first registration; the shard
    /// table is reset when `cores` changes.
    pub fn register(
        &mut self,
        now: Instant,
        info: NodeInfo,
        containers: Vec<Container>,
    ) -> Result<Steering, StateError> {
        validate_node_id("node.node_id", &info.node_id)?;
        if info.http_address.is_empty() {
            return Err(invalid("node.http_address", "must not be empty"));
        }
        if info.cores == 0 || info.cores > SHARDS_PER_NODE_MAX {
            return Err(invalid(
                "node.cores",
                format!("{} is outside 1..={SHARDS_PER_NODE_MAX}", info.cores),
            ));
        }
        // Saved node ids hold their slots, so the settings to save never outgrow NODES_MAX.
        let known =
            self.nodes.contains_key(&info.node_id) || self.saved_nodes.contains_key(&info.node_id);
        if !known && self.nodes.len() + self.saved_nodes.len() >= NODES_MAX {
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
        if changed {
            self.settings_revision += 1;
        }
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
                let saved = self.saved_nodes.remove(&info.node_id);
                self.nodes.insert(
                    info.node_id.clone(),
                    NodeEntry {
                        info,
                        weight: saved.as_ref().map_or(WEIGHT_DEFAULT, |saved| saved.weight),
                        drained: saved.is_some_and(|saved| saved.drained),
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
            tracing::info!(node = %entry.info.node_id, "node is up again: its load reports resumed");
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
                tracing::warn!(
                    node = %entry.info.node_id,
                    silent_ms = silent.as_millis() as u64,
                    "node marked down: no load report"
                );
            }
        }
        if changed {
            self.version += 1;
        }
        self.sync_assigner();
        changed
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{info, report, state, INTERVAL};
    use super::*;

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
        assert_eq!(containers[0].poll_cpu_time_us, 3 * 8);
        assert_eq!(containers[0].throttles, 3 * 3);
        assert_eq!(containers[0].rejections, 3);
        let targets = state.targets(0).unwrap();
        assert_eq!(targets[0].target, "/a");
        assert_eq!(
            targets[0].servers.len(),
            2,
            "latest report per node: a/1 and b/0"
        );
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
}
