//! The hot-target listing (`ListTargets`): the hot targets of every node that is up
//! (at most 64 each, [`super::HOT_TARGETS_PER_NODE_MAX`]) merged with the targets the
//! cluster dispatcher assigned in distributed mode ([`crate::assign`]).
//!
//! A target's rate is the sum of the nodes' rates and its servers the union of their
//! shards. Ordered by rate, then Assign answers, then name; at most 1000 entries
//! ([`TARGETS_LIST_MAX`]), 20 ([`TARGETS_LIST_DEFAULT`]) when the limit is 0.

use std::collections::HashMap;

use super::{
    invalid, ClusterState, StateError, TargetView, TARGETS_LIST_DEFAULT, TARGETS_LIST_MAX,
};

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

impl ClusterState {
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
}
