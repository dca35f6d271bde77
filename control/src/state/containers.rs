//! The resource-container table and its cluster-wide usage.
//!
//! # Invariants
//! - At most 256 containers ([`CONTAINERS_MAX`]): every steering message carries all
//!   of them. A container is never removed; `set_container` replaces its shares and
//!   limits, and adds a new one only when asked to (`create`).
//! - Shares are at least 1; `cpu_percent_max` must be 0 (nodes enforce no CPU cap).
//! - Usage (CPU time, rejections) is summed over the shards of the nodes that are up;
//!   entries for containers the table does not hold are ignored.

use std::collections::BTreeMap;

use super::{
    validate_container, ClusterState, Container, ContainerName, ContainerView, StateError,
    CONTAINERS_MAX,
};

impl ClusterState {
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
    use super::super::tests::state;
    use super::*;

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
}
