//! The resource-container table and its cluster-wide usage.
//!
//! # Invariants
//! - At most 256 containers ([`CONTAINERS_MAX`]): every steering message carries all
//!   of them. A container is never removed; `set_container` replaces its shares and
//!   limits, and adds a new one only when asked to (`create`).
//! - Shares are at least 1; `cpu_percent_max` is at most [`super::CPU_PERCENT_MAX_LIMIT`] (100) and
//!   `send_rate_bytes_per_second` at most [`super::SEND_RATE_BYTES_PER_SECOND_LIMIT`] (10 GB/s), the ranges nodes
//!   enforce, so a container listed here is one every node accepts.
//! - Usage (CPU time, rejections, throttles) is summed over the shards of the nodes that are up;
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
        self.settings_revision += 1;
        Ok(self.version)
    }

    /// Every container with its usage (CPU time, rejections, throttles) summed over the nodes that are up.
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
                        poll_cpu_time_us: 0,
                        throttles: 0,
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
                view.poll_cpu_time_us += load.poll_cpu_time_us;
                view.throttles += load.throttles;
            }
        }
        views.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::state;
    use super::super::{ContainerLimits, CPU_PERCENT_MAX_LIMIT, SEND_RATE_BYTES_PER_SECOND_LIMIT};
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

    #[test]
    fn cpu_cap_and_send_rate_take_the_nodes_ranges() {
        let mut state = state();
        let mut web = Container::default_container();
        web.limits.cpu_percent_max = CPU_PERCENT_MAX_LIMIT;
        web.limits.send_rate_bytes_per_second = SEND_RATE_BYTES_PER_SECOND_LIMIT;
        let version = state
            .set_container(web.clone(), false)
            .expect("both at their maximum");
        let listed = |state: &ClusterState| state.containers()[0].container.clone();
        let before = listed(&state);
        assert_eq!(before, web);

        let mut over = web.clone();
        over.limits.cpu_percent_max = CPU_PERCENT_MAX_LIMIT + 1;
        assert!(matches!(
            state.set_container(over, false),
            Err(StateError::Invalid { field, .. }) if field == "container.limits.cpu_percent_max"
        ));
        let mut over = web.clone();
        over.limits.send_rate_bytes_per_second = SEND_RATE_BYTES_PER_SECOND_LIMIT + 1;
        assert!(matches!(
            state.set_container(over, false),
            Err(StateError::Invalid { field, .. })
                if field == "container.limits.send_rate_bytes_per_second"
        ));
        assert_eq!(listed(&state), before, "refused calls changed nothing");

        web.limits = ContainerLimits::default();
        assert_eq!(
            state.set_container(web, false),
            Ok(version + 1),
            "0 = none set"
        );
    }
}
