//! One refresh of `larder top`: `ListNodes`, `GetNode` for each node, `ListTargets`, turned into a [`Sample`].
//!
//! Each node's report time is put on top's clock (milliseconds since the [`Fetcher`] was made) as the time its
//! `GetNode` answered minus the report's age, so [`super::model`] divides counter deltas by the time between
//! the node's own measurements. A node that leaves between `ListNodes` and its `GetNode` (`NOT_FOUND`) is left
//! out of the sample; any other failed call fails the refresh.

use std::time::Instant;

use larder_control::convert::shard_load;
use larder_control::proto::v1 as pb;
use larder_control::{CtlClient, CtlError};

use super::model::{NodeSample, Sample, TargetRow};

/// Hottest targets asked of `ListTargets` (the screen shows those that fit).
pub const TARGETS_SHOWN_MAX: u32 = 10;

/// A control-plane client and top's clock.
pub struct Fetcher {
    client: CtlClient,
    started: Instant,
}

impl Fetcher {
    pub fn connect(address: &str) -> Result<Fetcher, CtlError> {
        Ok(Fetcher {
            client: CtlClient::connect(address, None)?,
            started: Instant::now(),
        })
    }

    /// Every node with its shards, and the hottest targets; nodes by id.
    pub fn sample(&mut self) -> Result<Sample, CtlError> {
        let mut nodes = Vec::new();
        for summary in self.client.list_nodes()?.nodes {
            let node_id = summary.info.map(|info| info.node_id).unwrap_or_default();
            let answer = match self.client.get_node(&node_id) {
                Ok(answer) => answer,
                Err(CtlError::Rpc { code, .. }) if code.grpc_name() == "NOT_FOUND" => continue,
                Err(error) => return Err(error),
            };
            let answered_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let node = answer.node.unwrap_or_default();
            nodes.push(NodeSample {
                node_id,
                up: node.state == pb::NodeState::Up as i32,
                drained: node.drained,
                reports_received: node.reports_received,
                reported_at_ms: answered_ms.saturating_sub(node.last_report_age_ms),
                shards: answer.shards.into_iter().map(shard_load).collect(),
            });
        }
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let targets = self
            .client
            .list_targets(TARGETS_SHOWN_MAX)?
            .targets
            .into_iter()
            .map(|target| TargetRow {
                target: target.target,
                requests_per_second: target.requests_per_second,
                servers: target
                    .servers
                    .iter()
                    .map(|server| format!("{}/{}", server.node_id, server.shard))
                    .collect(),
            })
            .collect();
        Ok(Sample { nodes, targets })
    }
}
