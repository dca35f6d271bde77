//! The operator's run-time settings as one value, [`Settings`]: the policy, the containers, and the weight and
//! drain flag of every node id that has settings other than the defaults. It is what a restart of the control
//! plane must not undo; `crate::persist` writes it to the state file and reads it back. This module stays pure:
//! it takes and gives values, the file is someone else's.
//!
//! # Invariants
//! - [`ClusterState::settings_revision`] grows by one with every accepted change to [`Settings`] (SetPolicy,
//!   Drain, Undrain, SetContainer, a registration that adds containers) and by nothing else, so a caller can tell
//!   from two numbers whether the state file must be written.
//! - Node settings are kept per node id whether or not the node is registered: the ones restored at start wait
//!   in `saved_nodes` until the node registers (again), then move to its registry entry unchanged. A node id is
//!   never in both places, and the two together hold at most 1024 ([`NODES_MAX`]) ids, so a snapshot always
//!   fits the limits [`Settings::validate`] checks.
//! - Only non-default node settings (weight ≠ [`WEIGHT_DEFAULT`] or drained) are part of a snapshot: a node
//!   that merely registered changes nothing to save.
//! - [`ClusterState::rollback`] to a [`Checkpoint`] taken before a change restores the settings, the steering
//!   version and the revision exactly: the change is undone as if refused (the server uses it when the state
//!   file cannot be written). It must run before the new steering is published.

use larder_lard::PolicyConfig;

use super::{
    config_error, invalid, validate_container, validate_node_id, validate_weight, ClusterState,
    Container, NodeId, StateError, CONTAINERS_MAX, NODES_MAX, WEIGHT_DEFAULT,
};

/// The operator's settings for one node id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSettings {
    pub node_id: NodeId,
    /// 1..=256 (lard's `WEIGHT_MAX`).
    pub weight: u32,
    pub drained: bool,
}

impl NodeSettings {
    fn is_default(&self) -> bool {
        self.weight == WEIGHT_DEFAULT && !self.drained
    }
}

/// The settings that survive a restart. Containers are ordered by name and nodes by id, so equal settings
/// give equal values (and byte-equal state files).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub policy: PolicyConfig,
    pub containers: Vec<Container>,
    /// Only node ids with a weight other than 1 or a drain flag set.
    pub nodes: Vec<NodeSettings>,
}

impl Settings {
    /// Checks every value against the state's own rules; the error names the first bad field
    /// (`policy.lard.t_low`, `containers[2].shares`, `nodes[0].weight`, ...).
    pub fn validate(&self) -> Result<(), StateError> {
        self.policy.validate().map_err(config_error)?;
        if self.containers.len() > CONTAINERS_MAX {
            return Err(StateError::Full {
                table: "containers",
                max: CONTAINERS_MAX,
            });
        }
        for (index, container) in self.containers.iter().enumerate() {
            let field = format!("containers[{index}]");
            validate_container(&field, container)?;
            if self.containers[..index]
                .iter()
                .any(|earlier| earlier.name == container.name)
            {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("{:?} appears twice", container.name.0),
                ));
            }
        }
        if self.nodes.len() > NODES_MAX {
            return Err(StateError::Full {
                table: "nodes",
                max: NODES_MAX,
            });
        }
        for (index, node) in self.nodes.iter().enumerate() {
            let field = format!("nodes[{index}]");
            validate_node_id(&format!("{field}.node_id"), &node.node_id)?;
            validate_weight(&format!("{field}.weight"), node.weight)?;
            if self.nodes[..index]
                .iter()
                .any(|earlier| earlier.node_id == node.node_id)
            {
                return Err(invalid(
                    format!("{field}.node_id"),
                    format!("{:?} appears twice", node.node_id.0),
                ));
            }
        }
        Ok(())
    }
}

/// What [`ClusterState::rollback`] returns to.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    settings: Settings,
    version: u64,
    settings_revision: u64,
}

impl ClusterState {
    /// The settings in force, registered and not-yet-registered node ids alike.
    pub fn settings(&self) -> Settings {
        let registered = self.nodes.values().map(|entry| NodeSettings {
            node_id: entry.info.node_id.clone(),
            weight: entry.weight,
            drained: entry.drained,
        });
        let mut nodes: Vec<NodeSettings> = registered
            .chain(self.saved_nodes.values().cloned())
            .filter(|node| !node.is_default())
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Settings {
            policy: self.policy.clone(),
            containers: self.containers.values().cloned().collect(),
            nodes,
        }
    }

    /// Grows by one with every accepted change to [`ClusterState::settings`].
    pub fn settings_revision(&self) -> u64 {
        self.settings_revision
    }

    /// The settings, the steering version and the revision now, for [`ClusterState::rollback`].
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            settings: self.settings(),
            version: self.version,
            settings_revision: self.settings_revision,
        }
    }

    /// Undoes every change since `checkpoint` was taken (module docs). Only changes to the settings may have
    /// happened since: the registry's membership is not rolled back.
    pub fn rollback(&mut self, checkpoint: Checkpoint) {
        self.install(checkpoint.settings);
        self.version = checkpoint.version;
        self.settings_revision = checkpoint.settings_revision;
    }

    /// Puts valid `settings` in force: the policy, the whole container table, and each node id's weight and
    /// drain flag (a registered node not named gets the defaults; a named one not registered waits in
    /// `saved_nodes`).
    pub(super) fn install(&mut self, settings: Settings) {
        self.policy = settings.policy;
        self.containers = settings
            .containers
            .into_iter()
            .map(|container| (container.name.clone(), container))
            .collect();
        for entry in self.nodes.values_mut() {
            entry.weight = WEIGHT_DEFAULT;
            entry.drained = false;
        }
        self.saved_nodes.clear();
        for node in settings.nodes {
            match self.nodes.get_mut(&node.node_id) {
                Some(entry) => {
                    entry.weight = node.weight;
                    entry.drained = node.drained;
                }
                None => {
                    self.saved_nodes.insert(node.node_id.clone(), node);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use larder_lard::PolicyKind;

    use super::super::tests::info;
    use super::super::{ContainerName, PolicyUpdate, StateConfig};
    use super::*;

    fn saved() -> Settings {
        Settings {
            policy: PolicyConfig::new(PolicyKind::Wrr),
            containers: vec![
                Container {
                    name: ContainerName("default".into()),
                    shares: 5,
                    limits: Default::default(),
                },
                Container {
                    name: ContainerName("gold".into()),
                    shares: 3,
                    limits: Default::default(),
                },
            ],
            nodes: vec![
                NodeSettings {
                    node_id: NodeId("a".into()),
                    weight: 4,
                    drained: false,
                },
                NodeSettings {
                    node_id: NodeId("b".into()),
                    weight: 1,
                    drained: true,
                },
            ],
        }
    }

    fn restored(saved: Settings, containers: Vec<Container>) -> Result<ClusterState, StateError> {
        ClusterState::new(StateConfig {
            epoch: 1,
            report_interval: super::super::tests::INTERVAL,
            down_after_intervals: 5,
            policy: PolicyConfig::default(),
            containers,
            saved: Some(saved),
        })
    }

    #[test]
    fn restored_settings_win_and_wait_for_their_nodes_to_register() {
        let web = Container {
            name: ContainerName("web".into()),
            shares: 2,
            limits: Default::default(),
        };
        let mut state = restored(saved(), vec![Container::default_container(), web]).unwrap();
        let settings = state.settings();
        assert_eq!(
            settings.policy.kind,
            PolicyKind::Wrr,
            "the file's policy wins"
        );
        let shares: Vec<(&str, u32)> = settings
            .containers
            .iter()
            .map(|container| (container.name.0.as_str(), container.shares))
            .collect();
        assert_eq!(
            shares,
            [("default", 5), ("gold", 3), ("web", 2)],
            "the file wins by name; the configuration's other containers are added"
        );
        assert_eq!(settings.nodes, saved().nodes, "kept before registration");
        assert!(state.nodes(Instant::now()).is_empty());

        let now = Instant::now();
        state.register(now, info("a", 1), vec![]).unwrap();
        state.register(now, info("b", 1), vec![]).unwrap();
        state.register(now, info("c", 1), vec![]).unwrap();
        let nodes: Vec<(String, u32, bool)> = state
            .nodes(now)
            .into_iter()
            .map(|node| (node.info.node_id.0, node.weight, node.drained))
            .collect();
        assert_eq!(
            nodes,
            [
                ("a".to_string(), 4, false),
                ("b".to_string(), 1, true),
                ("c".to_string(), 1, false)
            ]
        );
        assert_eq!(
            state.settings().nodes,
            saved().nodes,
            "registering saves nothing new"
        );
    }

    #[test]
    fn invalid_saved_settings_are_refused_naming_the_field() {
        let mut bad = saved();
        bad.nodes[1].weight = 0;
        let error = restored(bad, vec![]).unwrap_err();
        assert!(
            matches!(&error, StateError::Invalid { field, .. } if field == "nodes[1].weight"),
            "{error:?}"
        );
        let mut bad = saved();
        bad.containers[1].name = ContainerName("default".into());
        let error = restored(bad, vec![]).unwrap_err();
        assert!(
            matches!(&error, StateError::Invalid { field, .. } if field == "containers[1].name"),
            "{error:?}"
        );
        let mut bad = saved();
        bad.policy.lard.t_low = 0;
        let error = restored(bad, vec![]).unwrap_err();
        assert!(
            matches!(&error, StateError::Invalid { field, .. } if field == "policy.lard.t_low"),
            "{error:?}"
        );
    }

    #[test]
    fn rollback_undoes_a_change_exactly() {
        let mut state = restored(saved(), vec![]).unwrap();
        let now = Instant::now();
        state.register(now, info("a", 1), vec![]).unwrap();
        state.register(now, info("z", 1), vec![]).unwrap();
        let before = (state.settings(), state.version(), state.settings_revision());
        let steering = state.steering();

        let checkpoint = state.checkpoint();
        state
            .set_policy(
                PolicyUpdate {
                    kind: Some(PolicyKind::Lard),
                    ..PolicyUpdate::default()
                },
                vec![(NodeId("a".into()), 9), (NodeId("z".into()), 2)],
            )
            .unwrap();
        state.set_drained(&NodeId("z".into()), true).unwrap();
        let mut gold = saved().containers[1].clone();
        gold.shares = 7;
        state.set_container(gold, false).unwrap();
        assert_ne!(state.settings(), before.0);
        assert_eq!(state.settings_revision(), before.2 + 3);

        state.rollback(checkpoint);
        assert_eq!(
            (state.settings(), state.version(), state.settings_revision()),
            before
        );
        assert_eq!(state.steering(), steering);
    }

    #[test]
    fn saved_node_ids_count_against_the_registry_limit() {
        let many = Settings {
            nodes: (0..NODES_MAX)
                .map(|index| NodeSettings {
                    node_id: NodeId(format!("n{index}")),
                    weight: 2,
                    drained: false,
                })
                .collect(),
            ..saved()
        };
        let mut state = restored(many, vec![]).unwrap();
        let now = Instant::now();
        assert_eq!(
            state.register(now, info("new", 1), vec![]).unwrap_err(),
            StateError::Full {
                table: "nodes",
                max: NODES_MAX
            },
            "a new id would make the settings outgrow the limit"
        );
        state
            .register(now, info("n5", 1), vec![])
            .expect("a saved id takes its own slot");
        assert!(state.settings().validate().is_ok());
    }
}
