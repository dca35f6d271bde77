//! The input rules of `larder.v1.Control`, as a table: every method called with empty, maximal (at the limit:
//! accepted) and malformed or over-limit values (a NUL byte, a name one byte too long, a disallowed character,
//! 0 and MAX + 1). Each row names the status code it expects; a refused row must leave ListNodes,
//! ListContainers and GetPolicy exactly as they were (issue 17: a container named with a NUL byte and shares of
//! 5,000,000 were both accepted).

mod common;

use std::sync::Arc;

use larder_control::state::NAME_BYTES_MAX;
use larder_control::{ControlConfig, ManualClock};
use larder_proto::v1 as pb;
use larder_proto::v1::node_service_client::NodeServiceClient;
use tonic::Code;

use common::*;

/// What a row expects.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Accepted; a read, so the state is unchanged too.
    Read,
    /// Accepted; a change (the state may move).
    Changed,
    /// Refused with this code, the message naming this field (or name); the state is unchanged.
    Refused(Code, &'static str),
}

/// The longest valid node id: registered by [`setup`], so calls naming it succeed.
fn node_id_max() -> String {
    "n".repeat(NAME_BYTES_MAX)
}

/// A container name at the limit.
fn container_name_max() -> String {
    "c".repeat(NAME_BYTES_MAX)
}

/// Names the rule refuses, with what is wrong with each: (row name, name).
fn malformed_names() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("NUL byte", "node\0a".to_string()),
        ("one byte too long", "x".repeat(NAME_BYTES_MAX + 1)),
        ("space", "node a".to_string()),
        ("slash", "node/a".to_string()),
        ("non-ASCII", "n\u{e9}".to_string()),
        ("newline", "node\n".to_string()),
    ]
}

fn policy(edit: impl FnOnce(&mut pb::Policy)) -> Call {
    let mut policy = pb::Policy::default();
    edit(&mut policy);
    Call::SetPolicy(pb::SetPolicyRequest {
        policy: Some(policy),
        node_weights: vec![],
    })
}

fn lard(t_low: Option<u32>, t_high: Option<u32>, k_ms: Option<u64>) -> Call {
    policy(|policy| {
        policy.lard = Some(pb::LardParams {
            t_low,
            t_high,
            k_ms,
        })
    })
}

fn weights(node_weights: Vec<(String, u32)>) -> Call {
    Call::SetPolicy(pb::SetPolicyRequest {
        policy: None,
        node_weights: node_weights
            .into_iter()
            .map(|(node_id, weight)| pb::NodeWeight { node_id, weight })
            .collect(),
    })
}

/// SetContainer of "default" (which exists) with `edit` applied to a valid container.
fn container(create: bool, edit: impl FnOnce(&mut pb::Container)) -> Call {
    let mut container = pb::Container {
        name: "default".into(),
        shares: 1,
        limits: Some(pb::ContainerLimits::default()),
    };
    edit(&mut container);
    Call::SetContainer(pb::SetContainerRequest {
        container: Some(container),
        create,
    })
}

fn limits(edit: impl FnOnce(&mut pb::ContainerLimits)) -> Call {
    container(false, |container| {
        let mut limits = pb::ContainerLimits::default();
        edit(&mut limits);
        container.limits = Some(limits);
    })
}

fn watch(interval_ms: u64, count: u64) -> Call {
    Call::WatchClusterLoad(pb::WatchClusterLoadRequest { interval_ms, count })
}

/// Every row: (name, call, expectation). Rows run in order; an accepted change may set what a later row relies
/// on, so each policy row sets every value its check depends on.
fn table() -> Vec<(String, Call, Expect)> {
    use Expect::*;
    let invalid = |field| Refused(Code::InvalidArgument, field);
    let fixed: Vec<(&str, Call, Expect)> = vec![
        // Reads with an empty request.
        ("ListNodes empty", Call::ListNodes, Read),
        ("GetClusterLoad empty", Call::GetClusterLoad, Read),
        ("GetPolicy empty", Call::GetPolicy, Read),
        ("ListContainers empty", Call::ListContainers, Read),
        // WatchClusterLoad: interval_ms 0 (= 1000) or 50..=60000; count any (0 = until cancelled).
        ("WatchClusterLoad empty", watch(0, 0), Read),
        ("WatchClusterLoad interval 50", watch(50, 1), Read),
        ("WatchClusterLoad interval 60000", watch(60_000, 1), Read),
        ("WatchClusterLoad count max", watch(0, u64::MAX), Read),
        (
            "WatchClusterLoad interval 49",
            watch(49, 1),
            invalid("interval_ms"),
        ),
        (
            "WatchClusterLoad interval 60001",
            watch(60_001, 1),
            invalid("interval_ms"),
        ),
        (
            "WatchClusterLoad interval max",
            watch(u64::MAX, 1),
            invalid("interval_ms"),
        ),
        // ListTargets: limit 0 (= 20) ..= 1000.
        ("ListTargets empty", Call::ListTargets(0), Read),
        ("ListTargets 1000", Call::ListTargets(1000), Read),
        (
            "ListTargets 1001",
            Call::ListTargets(1001),
            invalid("limit"),
        ),
        (
            "ListTargets max",
            Call::ListTargets(u32::MAX),
            invalid("limit"),
        ),
        // Node ids: the longest is found; well-formed unknown ids (a socket address among them) are NOT_FOUND.
        ("GetNode longest id", Call::GetNode(node_id_max()), Read),
        (
            "GetNode unknown",
            Call::GetNode("ghost".into()),
            Refused(Code::NotFound, "ghost"),
        ),
        (
            "GetNode unknown socket address",
            Call::GetNode("[::1]:8080".into()),
            Refused(Code::NotFound, "[::1]:8080"),
        ),
        ("Drain longest id", Call::Drain(node_id_max()), Changed),
        ("Undrain longest id", Call::Undrain(node_id_max()), Changed),
        (
            "Drain unknown",
            Call::Drain("ghost".into()),
            Refused(Code::NotFound, "ghost"),
        ),
        (
            "Undrain unknown",
            Call::Undrain("ghost".into()),
            Refused(Code::NotFound, "ghost"),
        ),
        // ReloadNode: the registered node has no reload stream here (no agent runs): UNAVAILABLE, nothing moves.
        (
            "ReloadNode longest id, not connected",
            Call::ReloadNode(node_id_max()),
            Refused(Code::Unavailable, "is not connected"),
        ),
        (
            "ReloadNode unknown",
            Call::ReloadNode("ghost".into()),
            Refused(Code::NotFound, "ghost"),
        ),
        (
            "ReloadNode empty",
            Call::ReloadNode(String::new()),
            invalid("node_id"),
        ),
        // SetPolicy: an empty request changes nothing but is accepted.
        ("SetPolicy empty", weights(vec![]), Changed),
        (
            "SetPolicy unknown kind",
            policy(|p| p.kind = 42),
            invalid("policy.kind"),
        ),
        (
            "SetPolicy negative kind",
            policy(|p| p.kind = -1),
            invalid("policy.kind"),
        ),
        // LARD: 1 <= t_low < t_high <= 2^31 - 1; k_ms >= 1.
        (
            "SetPolicy t_low 0",
            lard(Some(0), Some(10), None),
            invalid("policy.lard.t_low"),
        ),
        (
            "SetPolicy t_low = t_high",
            lard(Some(10), Some(10), None),
            invalid("policy.lard.t_low"),
        ),
        (
            "SetPolicy t_high max",
            lard(Some(1), Some(i32::MAX as u32), None),
            Changed,
        ),
        (
            "SetPolicy t_high max + 1",
            lard(Some(1), Some(i32::MAX as u32 + 1), None),
            invalid("policy.lard.t_high"),
        ),
        (
            "SetPolicy k_ms 0",
            lard(None, None, Some(0)),
            invalid("policy.lard.k_ms"),
        ),
        (
            "SetPolicy k_ms max",
            lard(Some(5), Some(50), Some(u64::MAX)),
            Changed,
        ),
        // balance_factor: finite, >= 1.
        (
            "SetPolicy balance 0.99",
            policy(|p| p.balance_factor = Some(0.99)),
            invalid("policy.balance_factor"),
        ),
        (
            "SetPolicy balance NaN",
            policy(|p| p.balance_factor = Some(f64::NAN)),
            invalid("policy.balance_factor"),
        ),
        (
            "SetPolicy balance infinite",
            policy(|p| p.balance_factor = Some(f64::INFINITY)),
            invalid("policy.balance_factor"),
        ),
        (
            "SetPolicy balance max",
            policy(|p| p.balance_factor = Some(f64::MAX)),
            Changed,
        ),
        // vnodes_per_server 1..=1024; targets_max 1..=2^24; target_idle_ms >= 1.
        (
            "SetPolicy vnodes 0",
            policy(|p| p.vnodes_per_server = Some(0)),
            invalid("policy.vnodes_per_server"),
        ),
        (
            "SetPolicy vnodes 1024",
            policy(|p| p.vnodes_per_server = Some(1024)),
            Changed,
        ),
        (
            "SetPolicy vnodes 1025",
            policy(|p| p.vnodes_per_server = Some(1025)),
            invalid("policy.vnodes_per_server"),
        ),
        (
            "SetPolicy targets_max 0",
            policy(|p| p.targets_max = Some(0)),
            invalid("policy.targets_max"),
        ),
        (
            "SetPolicy targets_max 2^24",
            policy(|p| p.targets_max = Some(1 << 24)),
            Changed,
        ),
        (
            "SetPolicy targets_max 2^24 + 1",
            policy(|p| p.targets_max = Some((1 << 24) + 1)),
            invalid("policy.targets_max"),
        ),
        (
            "SetPolicy target_idle_ms 0",
            policy(|p| p.target_idle_ms = Some(0)),
            invalid("policy.target_idle_ms"),
        ),
        (
            "SetPolicy target_idle_ms max",
            policy(|p| p.target_idle_ms = Some(u64::MAX)),
            Changed,
        ),
        // Weights 1..=256, at most 1024 entries, for registered nodes.
        (
            "SetPolicy weight 256",
            weights(vec![(node_id_max(), 256)]),
            Changed,
        ),
        (
            "SetPolicy weight 0",
            weights(vec![(node_id_max(), 0)]),
            invalid("node_weights[0].weight"),
        ),
        (
            "SetPolicy weight 257",
            weights(vec![(node_id_max(), 257)]),
            invalid("node_weights[0].weight"),
        ),
        (
            "SetPolicy weight for an unknown node",
            weights(vec![(node_id_max(), 2), ("ghost".into(), 2)]),
            Refused(Code::NotFound, "ghost"),
        ),
        (
            "SetPolicy 1025 weights",
            weights(vec![(node_id_max(), 2); 1025]),
            invalid("node_weights"),
        ),
        // SetContainer: the message is required; shares 1..=1,000,000; limits 0 (none) up to their maximum.
        (
            "SetContainer empty",
            Call::SetContainer(pb::SetContainerRequest::default()),
            invalid("container"),
        ),
        (
            "SetContainer longest name",
            container(true, |c| c.name = container_name_max()),
            Changed,
        ),
        (
            "SetContainer unknown without create",
            container(false, |c| c.name = "batch".into()),
            Refused(Code::NotFound, "batch"),
        ),
        (
            "SetContainer shares 0",
            container(false, |c| c.shares = 0),
            invalid("container.shares"),
        ),
        (
            "SetContainer shares 1000000",
            container(false, |c| c.shares = 1_000_000),
            Changed,
        ),
        (
            "SetContainer shares 1000001",
            container(false, |c| c.shares = 1_000_001),
            invalid("container.shares"),
        ),
        (
            "SetContainer shares 5000000 (issue 17)",
            container(true, |c| {
                c.name = "big".into();
                c.shares = 5_000_000;
            }),
            invalid("container.shares"),
        ),
        (
            "SetContainer shares max",
            container(false, |c| c.shares = u32::MAX),
            invalid("container.shares"),
        ),
        (
            "SetContainer no limits",
            container(false, |c| c.limits = None),
            Changed,
        ),
        (
            "SetContainer connections_max 1048576",
            limits(|l| l.connections_max = 1 << 20),
            Changed,
        ),
        (
            "SetContainer connections_max 1048577",
            limits(|l| l.connections_max = (1 << 20) + 1),
            invalid("container.limits.connections_max"),
        ),
        (
            "SetContainer connections_max max",
            limits(|l| l.connections_max = u64::MAX),
            invalid("container.limits.connections_max"),
        ),
        (
            "SetContainer queued_work_max 1048576",
            limits(|l| l.queued_work_max = 1 << 20),
            Changed,
        ),
        (
            "SetContainer queued_work_max 1048577",
            limits(|l| l.queued_work_max = (1 << 20) + 1),
            invalid("container.limits.queued_work_max"),
        ),
        (
            "SetContainer cpu_percent_max 100",
            limits(|l| l.cpu_percent_max = 100),
            Changed,
        ),
        (
            "SetContainer cpu_percent_max 101",
            limits(|l| l.cpu_percent_max = 101),
            invalid("container.limits.cpu_percent_max"),
        ),
        (
            "SetContainer send rate 10 GB/s",
            limits(|l| l.send_rate_bytes_per_second = 10_000_000_000),
            Changed,
        ),
        (
            "SetContainer send rate 10 GB/s + 1",
            limits(|l| l.send_rate_bytes_per_second = 10_000_000_001),
            invalid("container.limits.send_rate_bytes_per_second"),
        ),
    ];
    let mut rows: Vec<(String, Call, Expect)> = fixed
        .into_iter()
        .map(|(name, call, expect)| (name.to_string(), call, expect))
        .collect();
    // Every malformed name, in every field that holds one.
    for (what, name) in malformed_names() {
        let name_rows = [
            ("GetNode", Call::GetNode(name.clone()), "node_id"),
            ("Drain", Call::Drain(name.clone()), "node_id"),
            ("Undrain", Call::Undrain(name.clone()), "node_id"),
            ("ReloadNode", Call::ReloadNode(name.clone()), "node_id"),
            (
                "SetPolicy weight",
                weights(vec![(name.clone(), 2)]),
                "node_weights[0].node_id",
            ),
            (
                "SetContainer create",
                container(true, |c| c.name = name.clone()),
                "container.name",
            ),
            (
                "SetContainer",
                container(false, |c| c.name = name.clone()),
                "container.name",
            ),
        ];
        for (method, call, field) in name_rows {
            rows.push((format!("{method} name {what}"), call, invalid(field)));
        }
    }
    rows
}

/// A control plane with a frozen clock (no node goes down mid-test) and two registered nodes: "node-a" and the
/// longest valid id.
async fn setup() -> (larder_control::ControlHandle, ControlClient) {
    let mut config = ControlConfig::new(loopback_any_port());
    config.clock = Arc::new(ManualClock::new());
    let plane = start(config);
    let mut nodes = NodeServiceClient::new(channel(plane.local_addr()).await);
    for node_id in ["node-a".to_string(), node_id_max()] {
        nodes
            .register(pb::RegisterRequest {
                node: Some(pb::NodeInfo {
                    node_id,
                    http_address: "127.0.0.1:8080".into(),
                    cores: 2,
                    cache_bytes_budget: 1,
                }),
                containers: vec![],
            })
            .await
            .expect("Register");
    }
    let control = control_client(plane.local_addr()).await;
    (plane, control)
}

type ControlClient = larder_proto::v1::control_client::ControlClient<tonic::transport::Channel>;

#[tokio::test]
async fn every_control_method_keeps_its_input_rules() {
    let (plane, mut control) = setup().await;
    let mut failures = Vec::new();
    let rows = table();
    let row_count = rows.len();
    for (name, call, expect) in rows {
        let before = snapshot(&mut control).await;
        let outcome = call.invoke(&mut control).await;
        let after = snapshot(&mut control).await;
        let failure = match (expect, outcome) {
            (Expect::Read | Expect::Changed, Err(status)) => Some(format!(
                "expected OK, got {:?}: {}",
                status.code(),
                status.message()
            )),
            (Expect::Read, Ok(())) => {
                (before != after).then(|| "a read changed the state".to_string())
            }
            (Expect::Changed, Ok(())) => None,
            (Expect::Refused(code, _), Ok(())) => Some(format!("expected {code:?}, got OK")),
            (Expect::Refused(code, field), Err(status)) => {
                if status.code() != code {
                    Some(format!(
                        "expected {code:?}, got {:?}: {}",
                        status.code(),
                        status.message()
                    ))
                } else if !status.message().contains(field) {
                    Some(format!(
                        "message {:?} does not name {field:?}",
                        status.message()
                    ))
                } else {
                    (before != after).then(|| "refused, but the state changed".to_string())
                }
            }
        };
        if let Some(failure) = failure {
            failures.push(format!("{name}: {failure}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {row_count} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    plane.shutdown().expect("clean shutdown");
}

/// The comparison the table relies on can fail: an accepted change shows in the snapshot, and what was set is
/// what is listed (the longest name and every limit at its maximum).
#[tokio::test]
async fn an_accepted_change_at_every_limit_shows_in_the_snapshot() {
    let (plane, mut control) = setup().await;
    let before = snapshot(&mut control).await;
    let most = pb::Container {
        name: container_name_max(),
        shares: 1_000_000,
        limits: Some(pb::ContainerLimits {
            connections_max: 1 << 20,
            queued_work_max: 1 << 20,
            cpu_percent_max: 100,
            send_rate_bytes_per_second: 10_000_000_000,
        }),
    };
    Call::SetContainer(pb::SetContainerRequest {
        container: Some(most.clone()),
        create: true,
    })
    .invoke(&mut control)
    .await
    .expect("every value at its limit is accepted");
    let after = snapshot(&mut control).await;
    assert_ne!(after, before);
    let listed = after
        .1
        .containers
        .iter()
        .find_map(|status| status.container.clone().filter(|c| c.name == most.name));
    assert_eq!(listed, Some(most), "ListContainers shows what was set");
    plane.shutdown().expect("clean shutdown");
}
