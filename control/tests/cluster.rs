//! The control plane against real nodes on loopback: load aggregation, down
//! detection (injected clock), validation without side effects, the token, and
//! fail static across a control-plane restart.

mod common;

use std::sync::Arc;
use std::time::Duration;

use larder_control::{AgentConfig, ControlConfig, ManualClock, NodeAgent};
use larder_proto::v1 as pb;
use larder_proto::v1::control_client::ControlClient;
use larder_proto::v1::node_service_client::NodeServiceClient;
use tonic::transport::Channel;
use tonic::Code;

use common::*;

#[tokio::test]
async fn registered_node_and_its_reports_appear_in_cluster_load() {
    let plane = start_default();
    let hooks = RecordingHooks::new(3);
    let agent =
        NodeAgent::spawn(plane.local_addr(), node_info("node-a", 3), hooks.clone()).expect("agent");
    let mut control = control_client(plane.local_addr()).await;
    let last = wait_for("three shards of node-a reported", || {
        let mut control = control.clone();
        async move {
            let load = control
                .get_cluster_load(pb::GetClusterLoadRequest {})
                .await
                .expect("GetClusterLoad")
                .into_inner();
            let complete = load.total.as_ref().is_some_and(|total| total.shard == 3);
            complete.then_some(load)
        }
    })
    .await;
    assert_eq!(last.nodes_up, 1);
    assert_eq!(last.nodes_down, 0);
    let total = last.total.expect("total");
    assert_eq!(total.active_connections, 10 + 11 + 12);
    assert_eq!(total.cache_hits, 3 * 7);
    assert_eq!(
        last.nodes[0].info.as_ref().expect("info").http_address,
        "127.0.0.1:8080"
    );

    let node = control
        .get_node(pb::GetNodeRequest {
            node_id: "node-a".into(),
        })
        .await
        .expect("GetNode")
        .into_inner();
    let shards: Vec<u32> = node.shards.iter().map(|shard| shard.shard).collect();
    assert_eq!(shards, [0, 1, 2]);
    let container = &node.shards[2].containers[0];
    assert_eq!(
        (
            container.cpu_time_us,
            container.rejections,
            container.poll_cpu_time_us,
            container.throttles
        ),
        (500, 2, 400, 1),
        "GetNode shows each shard's container counters as reported"
    );
    assert!(
        !hooks.applied().is_empty(),
        "registration applies the first steering"
    );
    assert!(agent.stats().reports_sent >= 1);
    agent.shutdown();
    plane.shutdown().expect("clean shutdown");
}

async fn node_client(plane_address: std::net::SocketAddr) -> NodeServiceClient<Channel> {
    NodeServiceClient::new(channel(plane_address).await)
}

fn node_state(nodes: &pb::ListNodesResponse, id: &str) -> pb::NodeState {
    let node = nodes
        .nodes
        .iter()
        .find(|node| node.info.as_ref().is_some_and(|info| info.node_id == id))
        .unwrap_or_else(|| panic!("{id} is listed"));
    pb::NodeState::try_from(node.state).expect("known state")
}

#[tokio::test]
async fn silent_node_is_marked_down_after_five_intervals_of_the_injected_clock() {
    let clock = Arc::new(ManualClock::new());
    let mut config = ControlConfig::new(loopback_any_port());
    config.clock = clock.clone();
    let plane = start(config);
    let mut node = node_client(plane.local_addr()).await;
    let registered = node
        .register(pb::RegisterRequest {
            node: Some(pb::NodeInfo {
                node_id: "quiet".into(),
                http_address: "127.0.0.1:9000".into(),
                cores: 1,
                cache_bytes_budget: 1,
            }),
            containers: vec![],
        })
        .await
        .expect("Register")
        .into_inner();
    assert_eq!(registered.report_interval_ms, 100);
    let one_report = pb::LoadReport {
        node_id: "quiet".into(),
        sequence: 1,
        shards: vec![pb::ShardLoad::default()],
        hot_targets: vec![],
    };
    let accepted = node
        .report_load(tokio_stream::iter([one_report]))
        .await
        .expect("ReportLoad")
        .into_inner();
    assert_eq!(accepted.reports_accepted, 1);

    let mut control = control_client(plane.local_addr()).await;
    let lister = control.clone();
    let list = || {
        let mut control = lister.clone();
        async move {
            control
                .list_nodes(pb::ListNodesRequest {})
                .await
                .expect("ListNodes")
                .into_inner()
        }
    };
    // Silent for exactly 5 intervals: still up. One millisecond more: down.
    clock.advance(Duration::from_millis(500));
    assert_eq!(node_state(&list().await, "quiet"), pb::NodeState::Up);
    clock.advance(Duration::from_millis(1));
    let nodes = list().await;
    assert_eq!(node_state(&nodes, "quiet"), pb::NodeState::Down);
    assert_eq!(nodes.nodes[0].last_report_age_ms, 501);
    let load = control
        .get_cluster_load(pb::GetClusterLoadRequest {})
        .await
        .expect("GetClusterLoad")
        .into_inner();
    assert_eq!((load.nodes_up, load.nodes_down), (0, 1));
    // Registering again brings it back.
    node.register(pb::RegisterRequest {
        node: registered_node_info(),
        containers: vec![],
    })
    .await
    .expect("Register again");
    assert_eq!(node_state(&list().await, "quiet"), pb::NodeState::Up);
    plane.shutdown().expect("clean shutdown");
}

fn registered_node_info() -> Option<pb::NodeInfo> {
    Some(pb::NodeInfo {
        node_id: "quiet".into(),
        http_address: "127.0.0.1:9000".into(),
        cores: 1,
        cache_bytes_budget: 1,
    })
}

fn lard(t_low: Option<u32>, t_high: Option<u32>, k_ms: Option<u64>) -> Option<pb::Policy> {
    Some(pb::Policy {
        kind: pb::PolicyKind::LardR as i32,
        lard: Some(pb::LardParams {
            t_low,
            t_high,
            k_ms,
        }),
        ..pb::Policy::default()
    })
}

fn weight(node_id: &str, weight: u32) -> pb::NodeWeight {
    pb::NodeWeight {
        node_id: node_id.into(),
        weight,
    }
}

fn container(name: &str, shares: u32, cpu_percent_max: u32) -> Option<pb::Container> {
    container_sending(name, shares, cpu_percent_max, 0)
}

fn container_sending(
    name: &str,
    shares: u32,
    cpu_percent_max: u32,
    send_rate_bytes_per_second: u64,
) -> Option<pb::Container> {
    Some(pb::Container {
        name: name.into(),
        shares,
        limits: Some(pb::ContainerLimits {
            cpu_percent_max,
            send_rate_bytes_per_second,
            ..pb::ContainerLimits::default()
        }),
    })
}

/// 10 GB/s: the highest send rate nodes pace to.
const SEND_RATE_BYTES_PER_SECOND_LIMIT: u64 = 10_000_000_000;

#[tokio::test]
async fn each_invalid_request_gets_its_code_and_changes_nothing() {
    let clock = Arc::new(ManualClock::new()); // Frozen: no node goes down mid-test.
    let mut config = ControlConfig::new(loopback_any_port());
    config.clock = clock;
    let plane = start(config);
    node_client(plane.local_addr())
        .await
        .register(pb::RegisterRequest {
            node: Some(pb::NodeInfo {
                node_id: "node-a".into(),
                http_address: "127.0.0.1:8080".into(),
                cores: 2,
                cache_bytes_budget: 1,
            }),
            containers: vec![],
        })
        .await
        .expect("Register");
    let mut control = control_client(plane.local_addr()).await;
    let before = snapshot(&mut control).await;

    use Call::*;
    let set_policy = |policy, node_weights| {
        SetPolicy(pb::SetPolicyRequest {
            policy,
            node_weights,
        })
    };
    let set_container =
        |container, create| SetContainer(pb::SetContainerRequest { container, create });
    let ghost = || "ghost".to_string();
    // (what, call, expected code, text the message must contain)
    let cases = vec![
        (
            "t_low = t_high",
            set_policy(lard(Some(40), Some(40), None), vec![]),
            Code::InvalidArgument,
            "policy.lard.t_low",
        ),
        (
            "t_low above the current t_high",
            set_policy(lard(Some(1000), None, None), vec![]),
            Code::InvalidArgument,
            "policy.lard.t_low",
        ),
        (
            "K = 0",
            set_policy(lard(None, None, Some(0)), vec![]),
            Code::InvalidArgument,
            "policy.lard.k_ms",
        ),
        (
            "unknown policy kind",
            set_policy(
                Some(pb::Policy {
                    kind: 42,
                    ..pb::Policy::default()
                }),
                vec![],
            ),
            Code::InvalidArgument,
            "policy.kind",
        ),
        (
            "balance factor below 1",
            set_policy(
                Some(pb::Policy {
                    balance_factor: Some(0.5),
                    ..pb::Policy::default()
                }),
                vec![],
            ),
            Code::InvalidArgument,
            "policy.balance_factor",
        ),
        (
            "valid policy with a zero weight",
            set_policy(lard(Some(5), Some(50), None), vec![weight("node-a", 0)]),
            Code::InvalidArgument,
            "node_weights[0].weight",
        ),
        (
            "valid policy with a weight for an unknown node",
            set_policy(
                lard(Some(5), Some(50), None),
                vec![weight("node-a", 4), weight("ghost", 2)],
            ),
            Code::NotFound,
            "ghost",
        ),
        (
            "drain unknown node",
            Drain(ghost()),
            Code::NotFound,
            "ghost",
        ),
        (
            "undrain unknown node",
            Undrain(ghost()),
            Code::NotFound,
            "ghost",
        ),
        (
            "get unknown node",
            GetNode(ghost()),
            Code::NotFound,
            "ghost",
        ),
        (
            "set unknown container without create",
            set_container(container("batch", 2, 0), false),
            Code::NotFound,
            "batch",
        ),
        (
            "zero shares",
            set_container(container("default", 0, 0), false),
            Code::InvalidArgument,
            "container.shares",
        ),
        (
            "cpu cap above 100 percent",
            set_container(container("default", 1, 101), false),
            Code::InvalidArgument,
            "container.limits.cpu_percent_max",
        ),
        (
            "cpu cap above 100 percent on a new container",
            set_container(container("batch", 1, 101), true),
            Code::InvalidArgument,
            "container.limits.cpu_percent_max",
        ),
        (
            "send rate above 10 GB/s",
            set_container(
                container_sending("default", 1, 0, SEND_RATE_BYTES_PER_SECOND_LIMIT + 1),
                false,
            ),
            Code::InvalidArgument,
            "container.limits.send_rate_bytes_per_second",
        ),
        (
            "missing container",
            set_container(None, true),
            Code::InvalidArgument,
            "container",
        ),
        (
            "too many targets",
            ListTargets(1001),
            Code::InvalidArgument,
            "limit",
        ),
        (
            "watch interval too short",
            WatchClusterLoad(pb::WatchClusterLoadRequest {
                interval_ms: 1,
                count: 1,
            }),
            Code::InvalidArgument,
            "interval_ms",
        ),
    ];
    for (what, call, code, field) in cases {
        let status = call.invoke(&mut control).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(field),
            "{what}: message {:?} names {field:?}",
            status.message()
        );
    }
    let after = snapshot(&mut control).await;
    assert_eq!(before, after, "rejected calls changed nothing");

    // And a valid change does change it (the comparison above could fail): both limits at their maximum.
    let most = container_sending("default", 5, 100, SEND_RATE_BYTES_PER_SECOND_LIMIT);
    set_container(most.clone(), false)
        .invoke(&mut control)
        .await
        .expect("cpu_percent_max 100 and a 10 GB/s send rate are accepted");
    let listed = snapshot(&mut control).await.1;
    assert_ne!(listed, before.1);
    let default = listed
        .containers
        .iter()
        .find_map(|status| status.container.clone().filter(|c| c.name == "default"));
    assert_eq!(default, most, "ListContainers shows what was set");
    plane.shutdown().expect("clean shutdown");
}

/// The policy's LARD `t_low`, read without a token (reads need none).
async fn t_low(control: &mut ControlClient<Channel>) -> Option<u32> {
    control
        .get_policy(pb::GetPolicyRequest {})
        .await
        .expect("GetPolicy (reads need no token)")
        .into_inner()
        .policy
        .expect("policy")
        .lard
        .expect("lard")
        .t_low
}

#[tokio::test]
async fn with_a_token_mutations_need_the_right_bearer() {
    let mut config = ControlConfig::new(loopback_any_port());
    config.token = Some("s3cret".into());
    let plane = start(config);
    let channel = channel(plane.local_addr()).await;
    let set = |authorization: Option<&'static str>| {
        let mut control = ControlClient::new(channel.clone());
        async move {
            let mut request = tonic::Request::new(pb::SetPolicyRequest {
                policy: lard(Some(3), Some(30), None),
                node_weights: vec![],
            });
            if let Some(value) = authorization {
                request
                    .metadata_mut()
                    .insert("authorization", value.parse().expect("ascii"));
            }
            control.set_policy(request).await
        }
    };
    for (authorization, what) in [(None, "missing"), (Some("Bearer wrong"), "wrong")] {
        let status = set(authorization).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what} token");
    }
    let mut control = ControlClient::new(channel.clone());
    assert_eq!(t_low(&mut control).await, Some(25));
    set(Some("Bearer s3cret")).await.expect("right token");
    assert_eq!(t_low(&mut control).await, Some(3));

    // Node calls need the token too; an agent with it registers.
    let status = NodeServiceClient::new(channel.clone())
        .register(pb::RegisterRequest {
            node: registered_node_info(),
            containers: vec![],
        })
        .await
        .expect_err("node without token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let hooks = RecordingHooks::new(1);
    let mut agent_config = AgentConfig::new(plane.local_addr(), node_info("node-t", 1));
    agent_config.token = Some("s3cret".into());
    let agent = NodeAgent::spawn_with(agent_config, hooks.clone()).expect("agent");
    wait_until("agent with token registers", || {
        agent.stats().registrations >= 1
    });
    agent.shutdown();
    plane.shutdown().expect("clean shutdown");
}

#[test]
fn fail_static_then_re_register_with_a_new_control_plane_on_the_same_address() {
    let first = start_default();
    let address = first.local_addr();
    let hooks = RecordingHooks::new(1);
    let mut agent_config = AgentConfig::new(address, node_info("node-a", 1));
    agent_config.backoff_max = Duration::from_millis(200);
    let agent = NodeAgent::spawn_with(agent_config, hooks.clone()).expect("agent");
    wait_until("agent registers", || agent.stats().registrations == 1);

    // Steer it once so "last settings" differ from the defaults.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut control = control_client(address).await;
        control
            .set_policy(pb::SetPolicyRequest {
                policy: lard(Some(7), Some(70), None),
                node_weights: vec![],
            })
            .await
            .expect("SetPolicy");
    });
    wait_until("agent applies t_low 7", || {
        hooks
            .last_applied()
            .is_some_and(|steering| steering.policy.lard.t_low == 7)
    });
    let applied_before = hooks.applied();

    first.shutdown().expect("clean shutdown");
    wait_until("agent notices the control plane is gone", || {
        !agent.stats().connected && agent.stats().sessions_failed >= 2
    });
    assert_eq!(
        hooks.applied(),
        applied_before,
        "fail static: nothing applied while the control plane is away"
    );
    assert_eq!(hooks.connection_changes(), [true, false]);

    let second = start(ControlConfig::new(address));
    assert_eq!(second.local_addr(), address);
    wait_until("agent re-registers with the new control plane", || {
        agent.stats().registrations == 2
    });
    runtime.block_on(async {
        let mut control = control_client(address).await;
        let nodes = control
            .list_nodes(pb::ListNodesRequest {})
            .await
            .expect("ListNodes")
            .into_inner();
        assert_eq!(node_state(&nodes, "node-a"), pb::NodeState::Up);
    });
    // The new control plane is a new epoch: its steering is applied.
    let last = hooks.last_applied().expect("applied");
    assert_ne!(last.epoch, applied_before.last().expect("applied").epoch);
    agent.shutdown();
    second.shutdown().expect("clean shutdown");
}
