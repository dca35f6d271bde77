//! The edge between protobuf (`larder_proto::v1`) and the domain types of
//! [`crate::state`]: every conversion lives here, so prost types never enter the
//! state. Conversions from the wire validate what the types alone cannot express
//! (a missing required message, an unknown enum value) and name the field.

use std::time::Duration;

use larder_lard::{LardParams, PolicyConfig, PolicyKind};
use larder_proto::v1 as pb;
use tonic::{Code, Status};

use crate::state::{
    ClusterLoad, Container, ContainerLimits, ContainerLoad, ContainerName, ContainerView,
    LoadReport, NodeId, NodeInfo, NodeState, NodeSteering, NodeView, PolicyUpdate, PolicyView,
    ShardId, ShardLoad, StateError, Steering, TargetLoad, TargetView,
};

/// The gRPC status of a rejected call.
pub fn status(error: StateError) -> Status {
    let code = match &error {
        StateError::NodeNotFound(_) | StateError::ContainerNotFound(_) => Code::NotFound,
        StateError::Invalid { .. } => Code::InvalidArgument,
        StateError::Full { .. } => Code::ResourceExhausted,
    };
    Status::new(code, error.to_string())
}

fn missing(field: &str) -> Status {
    Status::invalid_argument(format!("invalid {field}: required"))
}

pub fn node_info(info: Option<pb::NodeInfo>) -> Result<NodeInfo, Status> {
    let info = info.ok_or_else(|| missing("node"))?;
    Ok(NodeInfo {
        node_id: NodeId(info.node_id),
        http_address: info.http_address,
        cores: info.cores,
        cache_bytes_budget: info.cache_bytes_budget,
    })
}

pub fn node_info_to_pb(info: &NodeInfo) -> pb::NodeInfo {
    pb::NodeInfo {
        node_id: info.node_id.0.clone(),
        http_address: info.http_address.clone(),
        cores: info.cores,
        cache_bytes_budget: info.cache_bytes_budget,
    }
}

pub fn container(field: &str, container: Option<pb::Container>) -> Result<Container, Status> {
    let container = container.ok_or_else(|| missing(field))?;
    Ok(Container {
        name: ContainerName(container.name),
        shares: container.shares,
        limits: container_limits(container.limits.unwrap_or_default()),
    })
}

pub fn container_limits(limits: pb::ContainerLimits) -> ContainerLimits {
    ContainerLimits {
        connections_max: limits.connections_max,
        queued_work_max: limits.queued_work_max,
        cpu_percent_max: limits.cpu_percent_max,
        send_rate_bytes_per_second: limits.send_rate_bytes_per_second,
    }
}

pub fn container_limits_to_pb(limits: &ContainerLimits) -> pb::ContainerLimits {
    pb::ContainerLimits {
        connections_max: limits.connections_max,
        queued_work_max: limits.queued_work_max,
        cpu_percent_max: limits.cpu_percent_max,
        send_rate_bytes_per_second: limits.send_rate_bytes_per_second,
    }
}

pub fn container_to_pb(container: &Container) -> pb::Container {
    pb::Container {
        name: container.name.0.clone(),
        shares: container.shares,
        limits: Some(container_limits_to_pb(&container.limits)),
    }
}

pub fn shard_load(load: pb::ShardLoad) -> ShardLoad {
    ShardLoad {
        shard: ShardId(load.shard),
        active_connections: load.active_connections,
        queued_work: load.queued_work,
        requests_per_second: load.requests_per_second,
        bytes_per_second: load.bytes_per_second,
        cache_bytes: load.cache_bytes,
        cache_hits: load.cache_hits,
        cache_misses: load.cache_misses,
        cache_evictions: load.cache_evictions,
        handoffs: load.handoffs,
        cpu_time_us: load.cpu_time_us,
        requests: load.requests,
        latency_p99_us: load.latency_p99_us,
        containers: load
            .containers
            .into_iter()
            .map(|container| ContainerLoad {
                container: ContainerName(container.container),
                cpu_time_us: container.cpu_time_us,
                rejections: container.rejections,
                poll_cpu_time_us: container.poll_cpu_time_us,
                throttles: container.throttles,
                shares: container.shares,
                limits: container.limits.map(container_limits).unwrap_or_default(),
            })
            .collect(),
    }
}

pub fn shard_load_to_pb(load: &ShardLoad) -> pb::ShardLoad {
    pb::ShardLoad {
        shard: load.shard.0,
        active_connections: load.active_connections,
        queued_work: load.queued_work,
        requests_per_second: load.requests_per_second,
        bytes_per_second: load.bytes_per_second,
        cache_bytes: load.cache_bytes,
        cache_hits: load.cache_hits,
        cache_misses: load.cache_misses,
        cache_evictions: load.cache_evictions,
        handoffs: load.handoffs,
        cpu_time_us: load.cpu_time_us,
        requests: load.requests,
        latency_p99_us: load.latency_p99_us,
        containers: load
            .containers
            .iter()
            .map(|container| pb::ContainerLoad {
                container: container.container.0.clone(),
                cpu_time_us: container.cpu_time_us,
                rejections: container.rejections,
                poll_cpu_time_us: container.poll_cpu_time_us,
                throttles: container.throttles,
                shares: container.shares,
                limits: Some(container_limits_to_pb(&container.limits)),
            })
            .collect(),
    }
}

pub fn load_report(report: pb::LoadReport) -> LoadReport {
    LoadReport {
        node_id: NodeId(report.node_id),
        sequence: report.sequence,
        shards: report.shards.into_iter().map(shard_load).collect(),
        hot_targets: report
            .hot_targets
            .into_iter()
            .map(|target| TargetLoad {
                target: target.target,
                requests_per_second: target.requests_per_second,
                shards: target.shards.into_iter().map(ShardId).collect(),
            })
            .collect(),
    }
}

pub fn load_report_to_pb(report: &LoadReport) -> pb::LoadReport {
    pb::LoadReport {
        node_id: report.node_id.0.clone(),
        sequence: report.sequence,
        shards: report.shards.iter().map(shard_load_to_pb).collect(),
        hot_targets: report
            .hot_targets
            .iter()
            .map(|target| pb::TargetLoad {
                target: target.target.clone(),
                requests_per_second: target.requests_per_second,
                shards: target.shards.iter().map(|shard| shard.0).collect(),
            })
            .collect(),
    }
}

fn policy_kind(kind: pb::PolicyKind) -> Option<PolicyKind> {
    match kind {
        pb::PolicyKind::Unspecified => None,
        pb::PolicyKind::Wrr => Some(PolicyKind::Wrr),
        pb::PolicyKind::LeastConnections => Some(PolicyKind::LeastConnections),
        pb::PolicyKind::ConsistentHash => Some(PolicyKind::ConsistentHash),
        pb::PolicyKind::ConsistentHashBoundedLoad => Some(PolicyKind::ConsistentHashBoundedLoad),
        pb::PolicyKind::Lard => Some(PolicyKind::Lard),
        pb::PolicyKind::LardR => Some(PolicyKind::LardR),
    }
}

fn policy_kind_to_pb(kind: PolicyKind) -> pb::PolicyKind {
    match kind {
        PolicyKind::Wrr => pb::PolicyKind::Wrr,
        PolicyKind::LeastConnections => pb::PolicyKind::LeastConnections,
        PolicyKind::ConsistentHash => pb::PolicyKind::ConsistentHash,
        PolicyKind::ConsistentHashBoundedLoad => pb::PolicyKind::ConsistentHashBoundedLoad,
        PolicyKind::Lard => pb::PolicyKind::Lard,
        PolicyKind::LardR => pb::PolicyKind::LardR,
    }
}

/// A partial policy from the wire; an absent field keeps its current value.
pub fn policy_update(policy: Option<pb::Policy>) -> Result<PolicyUpdate, Status> {
    let Some(policy) = policy else {
        return Ok(PolicyUpdate::default());
    };
    let kind = pb::PolicyKind::try_from(policy.kind).map_err(|_| {
        Status::invalid_argument(format!(
            "invalid policy.kind: unknown value {}",
            policy.kind
        ))
    })?;
    let lard = policy.lard.unwrap_or_default();
    Ok(PolicyUpdate {
        kind: policy_kind(kind),
        t_low: lard.t_low,
        t_high: lard.t_high,
        k_ms: lard.k_ms,
        balance_factor: policy.balance_factor,
        vnodes_per_server: policy.vnodes_per_server,
        targets_max: policy.targets_max,
        target_idle_ms: policy.target_idle_ms,
    })
}

pub fn policy_to_pb(policy: &PolicyConfig) -> pb::Policy {
    pb::Policy {
        kind: policy_kind_to_pb(policy.kind) as i32,
        lard: Some(pb::LardParams {
            t_low: Some(policy.lard.t_low),
            t_high: Some(policy.lard.t_high),
            k_ms: Some(policy.lard.k_ms),
        }),
        balance_factor: Some(policy.balance_factor),
        vnodes_per_server: Some(policy.vnodes_per_server),
        targets_max: Some(policy.targets_max as u64),
        target_idle_ms: Some(policy.target_idle_ms),
    }
}

/// A complete policy from a steering message (the node side). Absent fields take
/// lard's defaults.
pub fn policy_config(policy: Option<pb::Policy>) -> PolicyConfig {
    let defaults = PolicyConfig::default();
    let Some(policy) = policy else {
        return defaults;
    };
    let kind = pb::PolicyKind::try_from(policy.kind)
        .ok()
        .and_then(policy_kind)
        .unwrap_or(defaults.kind);
    let lard = policy.lard.unwrap_or_default();
    PolicyConfig {
        kind,
        lard: LardParams {
            t_low: lard.t_low.unwrap_or(defaults.lard.t_low),
            t_high: lard.t_high.unwrap_or(defaults.lard.t_high),
            k_ms: lard.k_ms.unwrap_or(defaults.lard.k_ms),
        },
        balance_factor: policy.balance_factor.unwrap_or(defaults.balance_factor),
        vnodes_per_server: policy
            .vnodes_per_server
            .unwrap_or(defaults.vnodes_per_server),
        targets_max: policy
            .targets_max
            .and_then(|max| usize::try_from(max).ok())
            .unwrap_or(defaults.targets_max),
        target_idle_ms: policy.target_idle_ms.unwrap_or(defaults.target_idle_ms),
    }
}

pub fn steering_to_pb(steering: &Steering) -> pb::Steering {
    pb::Steering {
        epoch: steering.epoch,
        version: steering.version,
        policy: Some(policy_to_pb(&steering.policy)),
        nodes: steering
            .nodes
            .iter()
            .map(|node| pb::NodeSteering {
                node_id: node.node_id.0.clone(),
                http_address: node.http_address.clone(),
                weight: node.weight,
                drained: node.drained,
                up: node.up,
            })
            .collect(),
        containers: steering.containers.iter().map(container_to_pb).collect(),
    }
}

pub fn steering(steering: pb::Steering) -> Steering {
    Steering {
        epoch: steering.epoch,
        version: steering.version,
        policy: policy_config(steering.policy),
        nodes: steering
            .nodes
            .into_iter()
            .map(|node| NodeSteering {
                node_id: NodeId(node.node_id),
                http_address: node.http_address,
                weight: node.weight,
                drained: node.drained,
                up: node.up,
            })
            .collect(),
        containers: steering
            .containers
            .into_iter()
            .filter_map(|item| container("containers", Some(item)).ok())
            .collect(),
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

pub fn node_view_to_pb(view: &NodeView) -> pb::NodeSummary {
    pb::NodeSummary {
        info: Some(node_info_to_pb(&view.info)),
        state: match view.state {
            NodeState::Up => pb::NodeState::Up,
            NodeState::Down => pb::NodeState::Down,
        } as i32,
        drained: view.drained,
        weight: view.weight,
        last_report_age_ms: duration_ms(view.last_report_age),
        reports_received: view.reports_received,
        total: Some(shard_load_to_pb(&view.total)),
    }
}

pub fn cluster_load_to_pb(load: &ClusterLoad) -> pb::ClusterLoad {
    pb::ClusterLoad {
        nodes_up: load.nodes_up,
        nodes_down: load.nodes_down,
        total: Some(shard_load_to_pb(&load.total)),
        nodes: load.nodes.iter().map(node_view_to_pb).collect(),
        reports_received: load.reports_received,
    }
}

pub fn policy_view_to_pb(view: &PolicyView) -> pb::GetPolicyResponse {
    pb::GetPolicyResponse {
        policy: Some(policy_to_pb(&view.policy)),
        node_weights: view
            .node_weights
            .iter()
            .map(|(node_id, weight)| pb::NodeWeight {
                node_id: node_id.0.clone(),
                weight: *weight,
            })
            .collect(),
        steering_version: view.steering_version,
    }
}

pub fn target_view_to_pb(view: &TargetView) -> pb::TargetInfo {
    pb::TargetInfo {
        target: view.target.clone(),
        requests_per_second: view.requests_per_second,
        servers: view
            .servers
            .iter()
            .map(|(node_id, shard)| pb::ServerRef {
                node_id: node_id.0.clone(),
                shard: shard.0,
            })
            .collect(),
        assigned_node_ids: view.assigned.iter().map(|id| id.0.clone()).collect(),
    }
}

pub fn container_view_to_pb(view: &ContainerView) -> pb::ContainerStatus {
    pb::ContainerStatus {
        container: Some(container_to_pb(&view.container)),
        cpu_time_us: view.cpu_time_us,
        rejections: view.rejections,
        poll_cpu_time_us: view.poll_cpu_time_us,
        throttles: view.throttles,
    }
}

/// A profile for the wire.
pub fn profile_to_pb(profile: &crate::profile::Profile) -> pb::ProfileData {
    pb::ProfileData {
        stacks: profile
            .stacks
            .iter()
            .map(|stack| pb::FoldedStack {
                stack: stack.stack.clone(),
                count: stack.count,
            })
            .collect(),
        samples: profile.samples,
        samples_lost: profile.samples_lost,
        frequency_hz: profile.frequency_hz,
        duration_ms: profile.duration_ms,
    }
}

/// A profile from the wire.
pub fn profile(profile: pb::ProfileData) -> crate::profile::Profile {
    crate::profile::Profile {
        stacks: profile
            .stacks
            .into_iter()
            .map(|stack| crate::profile::FoldedStack {
                stack: stack.stack,
                count: stack.count,
            })
            .collect(),
        samples: profile.samples,
        samples_lost: profile.samples_lost,
        frequency_hz: profile.frequency_hz,
        duration_ms: profile.duration_ms,
    }
}

/// A node's answer for the wire (the `outcome` of `SubmitProfileRequest`).
pub fn profile_outcome_to_pb(
    outcome: &crate::profile::ProfileOutcome,
) -> pb::submit_profile_request::Outcome {
    use crate::profile::ProfileFailureKind as K;
    use pb::submit_profile_request::Outcome;
    match outcome {
        Ok(data) => Outcome::Profile(profile_to_pb(data)),
        Err(failure) => Outcome::Failure(pb::ProfileFailure {
            kind: match failure.kind {
                K::PermissionDenied => pb::ProfileFailureKind::PermissionDenied,
                K::Unsupported => pb::ProfileFailureKind::Unsupported,
                K::Busy => pb::ProfileFailureKind::Busy,
                K::InvalidArgument => pb::ProfileFailureKind::InvalidArgument,
                K::Internal => pb::ProfileFailureKind::Internal,
            } as i32,
            message: failure.message.clone(),
        }),
    }
}

/// A node's answer from the wire; an absent outcome is the node's bug, reported as INVALID_ARGUMENT.
pub fn profile_outcome(
    outcome: Option<pb::submit_profile_request::Outcome>,
) -> Result<crate::profile::ProfileOutcome, Status> {
    use crate::profile::{ProfileFailure, ProfileFailureKind as K};
    use pb::submit_profile_request::Outcome;
    Ok(match outcome.ok_or_else(|| missing("outcome"))? {
        Outcome::Profile(data) => Ok(profile(data)),
        Outcome::Failure(failure) => {
            let kind = match pb::ProfileFailureKind::try_from(failure.kind) {
                Ok(pb::ProfileFailureKind::PermissionDenied) => K::PermissionDenied,
                Ok(pb::ProfileFailureKind::Unsupported) => K::Unsupported,
                Ok(pb::ProfileFailureKind::Busy) => K::Busy,
                Ok(pb::ProfileFailureKind::InvalidArgument) => K::InvalidArgument,
                _ => K::Internal,
            };
            Err(ProfileFailure::new(kind, failure.message))
        }
    })
}

/// A profile order for the wire.
pub fn profile_order_to_pb(order: &crate::profile::ProfileOrder) -> pb::ProfileOrder {
    pb::ProfileOrder {
        order_id: order.order_id,
        shard: order.request.shard.map(|shard| shard.0),
        seconds: order.request.seconds,
    }
}

/// A profile order from the wire.
pub fn profile_order(order: pb::ProfileOrder) -> crate::profile::ProfileOrder {
    crate::profile::ProfileOrder {
        order_id: order.order_id,
        request: crate::profile::ProfileRequest {
            shard: order.shard.map(ShardId),
            seconds: order.seconds,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_round_trips_through_the_wire() {
        let mut config = PolicyConfig::new(PolicyKind::LardR);
        config.lard.t_low = 3;
        config.balance_factor = 1.5;
        assert_eq!(policy_config(Some(policy_to_pb(&config))), config);
    }

    #[test]
    fn container_limits_round_trip_through_the_wire() {
        let container = Container {
            name: ContainerName("batch".into()),
            shares: 2,
            limits: ContainerLimits {
                connections_max: 10,
                queued_work_max: 20,
                cpu_percent_max: 25,
                send_rate_bytes_per_second: 1_000_000,
            },
        };
        let wire = container_to_pb(&container);
        assert_eq!(
            wire.limits.expect("limits").send_rate_bytes_per_second,
            1_000_000
        );
        let back = super::container("container", Some(container_to_pb(&container)))
            .expect("a complete container");
        assert_eq!(back, container);
    }

    #[test]
    fn shard_requests_and_latency_round_trip_and_an_absent_p99_stays_absent() {
        let load = ShardLoad {
            shard: ShardId(3),
            requests: 12_345,
            latency_p99_us: Some(850),
            ..ShardLoad::default()
        };
        assert_eq!(shard_load(shard_load_to_pb(&load)), load);
        let unmeasured = ShardLoad::default();
        assert_eq!(shard_load_to_pb(&unmeasured).latency_p99_us, None);
        assert_eq!(shard_load(shard_load_to_pb(&unmeasured)), unmeasured);
    }

    #[test]
    fn unknown_policy_kind_is_invalid_argument() {
        let policy = pb::Policy {
            kind: 99,
            ..pb::Policy::default()
        };
        let error = policy_update(Some(policy)).unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().contains("policy.kind"), "{error:?}");
    }
}
