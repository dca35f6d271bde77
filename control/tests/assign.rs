//! Distributed mode's dispatcher against a real control plane on loopback:
//! `NodeService.Assign` spreads targets over the nodes and keeps each on one node,
//! follows drain, down and load, rejects bad calls without side effects, and the
//! node-side `AssignFeeder` delivers answers end to end (and calls nothing while
//! the control plane is away).
//!
//! Every control plane here has a fixed epoch, which seeds the cluster policy's
//! RNG: the tie-breaks, hence the assignments, are the same on every run.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder_control::{
    AssignFeeder, AssignFeederConfig, ControlConfig, ControlHandle, ManualClock, NodeId,
};
use larder_lard::{PolicyConfig, PolicyKind};
use larder_proto::v1 as pb;
use larder_proto::v1::control_client::ControlClient;
use larder_proto::v1::node_service_client::NodeServiceClient;
use tonic::transport::Channel;
use tonic::Code;

use common::*;

/// Epoch (and RNG seed) of every control plane in this file.
const SEED: u64 = 0x1a5d;
/// Node ids are HTTP addresses, as `larder serve` registers them.
const NODE_A: &str = "127.0.0.1:18001";
const NODE_B: &str = "127.0.0.1:18002";

fn config(policy: PolicyKind) -> ControlConfig {
    let mut config = ControlConfig::new(loopback_any_port());
    config.epoch = Some(SEED);
    config.policy = PolicyConfig::new(policy);
    // Time stands still unless a test moves it: silent test nodes never go down.
    config.clock = Arc::new(ManualClock::new());
    config
}

struct Clients {
    node: NodeServiceClient<Channel>,
    control: ControlClient<Channel>,
}

async fn clients(address: SocketAddr) -> Clients {
    let channel = channel(address).await;
    Clients {
        node: NodeServiceClient::new(channel.clone()),
        control: ControlClient::new(channel),
    }
}

async fn register(node: &mut NodeServiceClient<Channel>, id: &str) {
    node.register(pb::RegisterRequest {
        node: Some(pb::NodeInfo {
            node_id: id.to_string(),
            http_address: id.to_string(),
            cores: 1,
            cache_bytes_budget: 32 << 20,
        }),
        containers: vec![],
    })
    .await
    .expect("Register");
}

/// One ReportLoad stream with a single report: `connections` on shard 0.
async fn report_load(node: &mut NodeServiceClient<Channel>, id: &str, connections: u64) {
    let report = pb::LoadReport {
        node_id: id.to_string(),
        sequence: 1,
        shards: vec![pb::ShardLoad {
            shard: 0,
            active_connections: connections,
            ..pb::ShardLoad::default()
        }],
        hot_targets: vec![],
    };
    let accepted = node
        .report_load(tokio_stream::iter(vec![report]))
        .await
        .expect("ReportLoad")
        .into_inner()
        .reports_accepted;
    assert_eq!(accepted, 1);
}

fn paths(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("/{prefix}-{index}"))
        .collect()
}

async fn assign(
    node: &mut NodeServiceClient<Channel>,
    asking: &str,
    targets: Vec<String>,
) -> Result<pb::AssignResponse, tonic::Status> {
    node.assign(pb::AssignRequest {
        node_id: asking.to_string(),
        targets,
    })
    .await
    .map(tonic::Response::into_inner)
}

/// target -> first node id.
fn owners(response: &pb::AssignResponse) -> HashMap<String, String> {
    response
        .assignments
        .iter()
        .map(|assignment| {
            assert_eq!(
                assignment.node_ids.len(),
                1,
                "seed {SEED}: LARD answers one node: {assignment:?}"
            );
            (assignment.target.clone(), assignment.node_ids[0].clone())
        })
        .collect()
}

/// Assigns `targets` (the call must succeed: `what` says why) and returns their owners.
async fn assigned_owners(
    node: &mut NodeServiceClient<Channel>,
    asking: &str,
    targets: Vec<String>,
    what: &str,
) -> HashMap<String, String> {
    owners(&assign(node, asking, targets).await.expect(what))
}

fn count_on(owners: &HashMap<String, String>, node: &str) -> usize {
    owners.values().filter(|owner| *owner == node).count()
}

async fn list_targets(control: &mut ControlClient<Channel>) -> Vec<pb::TargetInfo> {
    control
        .list_targets(pb::ListTargetsRequest { limit: 1000 })
        .await
        .expect("ListTargets")
        .into_inner()
        .targets
}

async fn set_drained(control: &mut ControlClient<Channel>, node: &str, drained: bool) {
    let node_id = node.to_string();
    if drained {
        control
            .drain(pb::DrainRequest { node_id })
            .await
            .expect("Drain");
    } else {
        control
            .undrain(pb::UndrainRequest { node_id })
            .await
            .expect("Undrain");
    }
}

async fn steering_version(control: &mut ControlClient<Channel>) -> u64 {
    control
        .get_policy(pb::GetPolicyRequest {})
        .await
        .expect("GetPolicy")
        .into_inner()
        .steering_version
}

async fn two_node_plane(policy: PolicyKind) -> (ControlHandle, Clients) {
    let plane = start(config(policy));
    let mut clients = clients(plane.local_addr()).await;
    register(&mut clients.node, NODE_A).await;
    register(&mut clients.node, NODE_B).await;
    (plane, clients)
}

#[tokio::test]
async fn lard_spreads_distinct_targets_over_both_nodes_and_keeps_each_on_one() {
    let (plane, mut clients) = two_node_plane(PolicyKind::Lard).await;
    let first = assign(&mut clients.node, NODE_A, paths("f", 64))
        .await
        .expect("Assign");
    assert_eq!(first.ttl_ms, 1000, "the default TTL");
    let targets: Vec<&str> = first
        .assignments
        .iter()
        .map(|a| a.target.as_str())
        .collect();
    assert_eq!(targets, paths("f", 64), "one answer per target, in order");
    let owners_first = owners(&first);
    let on_a = count_on(&owners_first, NODE_A);
    assert!(
        (16..=48).contains(&on_a),
        "seed {SEED}: equal loads, ties broken at random: {on_a} of 64 on a"
    );
    // Either node asking, any number of times: the same owner (locality).
    for asking in [NODE_B, NODE_A, NODE_B] {
        let again = assign(&mut clients.node, asking, paths("f", 64))
            .await
            .expect("Assign");
        assert_eq!(owners(&again), owners_first, "asked by {asking}");
    }
    // ListTargets shows each assigned target with its node.
    let listed = list_targets(&mut clients.control).await;
    let listed: HashMap<&str, &[String]> = listed
        .iter()
        .map(|target| (target.target.as_str(), target.assigned_node_ids.as_slice()))
        .collect();
    for (target, owner) in &owners_first {
        assert_eq!(
            listed.get(target.as_str()).copied(),
            Some(&[owner.clone()][..]),
            "{target}"
        );
    }
    plane.shutdown().expect("shutdown");
}

#[tokio::test]
async fn drained_node_gets_no_new_targets_and_its_targets_move() {
    let (plane, mut clients) = two_node_plane(PolicyKind::Lard).await;
    let before = assigned_owners(&mut clients.node, NODE_A, paths("d", 64), "Assign").await;
    assert!(
        count_on(&before, NODE_B) > 0,
        "seed {SEED}: b holds targets"
    );
    set_drained(&mut clients.control, NODE_B, true).await;
    let drained = assigned_owners(&mut clients.node, NODE_A, paths("d", 64), "Assign").await;
    assert_eq!(count_on(&drained, NODE_A), 64, "b's targets moved to a");
    let new = assigned_owners(
        &mut clients.node,
        NODE_B,
        paths("new", 32),
        "a drained node may still ask",
    )
    .await;
    assert_eq!(count_on(&new, NODE_A), 32, "no new target on drained b");
    let listed = list_targets(&mut clients.control).await;
    assert!(
        listed
            .iter()
            .all(|target| !target.assigned_node_ids.contains(&NODE_B.to_string())),
        "ListTargets shows no target on drained b"
    );
    set_drained(&mut clients.control, NODE_B, false).await;
    let after = assigned_owners(&mut clients.node, NODE_A, paths("d", 64), "Assign").await;
    assert_eq!(after, drained, "targets stay where they moved (locality)");
    plane.shutdown().expect("shutdown");
}

#[tokio::test]
async fn down_node_gets_no_new_targets_and_its_targets_move() {
    let clock = Arc::new(ManualClock::new());
    let mut config = config(PolicyKind::Lard);
    config.clock = clock.clone();
    let plane = start(config);
    let mut clients = clients(plane.local_addr()).await;
    register(&mut clients.node, NODE_A).await;
    register(&mut clients.node, NODE_B).await;
    let before = assigned_owners(&mut clients.node, NODE_A, paths("x", 64), "Assign").await;
    assert!(
        count_on(&before, NODE_B) > 0,
        "seed {SEED}: b holds targets"
    );
    // Six silent intervals (down after five), but a reports at the new time: only b is down.
    clock.advance(Duration::from_millis(600));
    report_load(&mut clients.node, NODE_A, 1).await;
    let mut control = clients.control.clone();
    wait_until_async("b is down", || {
        let mut control = control.clone();
        async move {
            let nodes = control
                .list_nodes(pb::ListNodesRequest {})
                .await
                .expect("ListNodes")
                .into_inner();
            nodes.nodes.iter().any(|node| {
                node.info
                    .as_ref()
                    .is_some_and(|info| info.node_id == NODE_B)
                    && node.state == pb::NodeState::Down as i32
            })
        }
    })
    .await;
    let after = assigned_owners(&mut clients.node, NODE_A, paths("x", 64), "Assign").await;
    assert_eq!(count_on(&after, NODE_A), 64, "every target on a");
    for (target, owner) in &before {
        if owner == NODE_A {
            assert_eq!(after[target], NODE_A, "{target} stayed on a");
        }
    }
    // Both silent: nobody to assign to.
    clock.advance(Duration::from_millis(600));
    control
        .list_nodes(pb::ListNodesRequest {})
        .await
        .expect("ListNodes runs down detection");
    let error = assign(&mut clients.node, NODE_A, paths("x", 1))
        .await
        .expect_err("no live node");
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    plane.shutdown().expect("shutdown");
}

#[tokio::test]
async fn lard_r_replicates_a_target_whose_node_reports_overload() {
    let (plane, mut clients) = two_node_plane(PolicyKind::LardR).await;
    let first = assign(&mut clients.node, NODE_A, vec!["/hot".into()])
        .await
        .expect("Assign");
    let owner = first.assignments[0].node_ids.clone();
    let other = if owner[0] == NODE_A { NODE_B } else { NODE_A };
    assert_eq!(
        owner,
        [owner[0].clone(), other.to_string()],
        "a new target: its node, then the runner-up"
    );
    // 130 connections = 2 x T_high (65): overloaded whatever the other node's load.
    report_load(&mut clients.node, &owner[0], 130).await;
    let second = assign(&mut clients.node, NODE_A, vec!["/hot".into()])
        .await
        .expect("Assign");
    assert_eq!(
        second.assignments[0].node_ids,
        [other.to_string(), owner[0].clone()],
        "the set grew by the least-loaded node, which serves first"
    );
    let listed = list_targets(&mut clients.control).await;
    assert_eq!(listed[0].target, "/hot");
    assert_eq!(listed[0].assigned_node_ids, second.assignments[0].node_ids);
    plane.shutdown().expect("shutdown");
}

#[tokio::test]
async fn invalid_assign_calls_get_the_right_codes_and_assign_nothing() {
    let plane = start(config(PolicyKind::Lard));
    let mut clients = clients(plane.local_addr()).await;
    register(&mut clients.node, NODE_A).await;
    let version_before = steering_version(&mut clients.control).await;

    let too_many = paths("t", 1025);
    let error = assign(&mut clients.node, NODE_A, too_many)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("targets"), "{}", error.message());

    let too_long = vec!["/ok".to_string(), format!("/{}", "x".repeat(1024))];
    let error = assign(&mut clients.node, NODE_A, too_long)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(
        error.message().contains("targets[1]"),
        "{}",
        error.message()
    );

    let empty = vec!["/ok".to_string(), String::new()];
    let error = assign(&mut clients.node, NODE_A, empty).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");

    let error = assign(&mut clients.node, "127.0.0.1:9", vec!["/ok".into()])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");

    let error = assign(&mut clients.node, "", vec!["/ok".into()])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");

    // The only node drains: nobody to assign to.
    set_drained(&mut clients.control, NODE_A, true).await;
    let error = assign(&mut clients.node, NODE_A, vec!["/ok".into()])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");

    assert!(
        list_targets(&mut clients.control).await.is_empty(),
        "no rejected call assigned anything"
    );
    let version_after = steering_version(&mut clients.control).await;
    assert_eq!(
        version_after,
        version_before + 1,
        "only Drain moved the version"
    );
    plane.shutdown().expect("shutdown");
}

/// What a feeder's source and sink saw. Like a node's directory, the source
/// offers every wanted target that has no answer yet, so a batch lost to an error
/// (e.g. NOT_FOUND before the node registered) is asked again.
#[derive(Debug, Default)]
struct FeederLog {
    source_calls: usize,
    wanted: Vec<String>,
    received: BTreeMap<String, Vec<String>>,
    /// (number of assignments, ttl_ms) of every sink call.
    batches: Vec<(usize, u64)>,
}

fn spawn_feeder(
    control: SocketAddr,
    batch_max: usize,
    log: &Arc<Mutex<FeederLog>>,
) -> larder_control::AssignFeederHandle {
    let mut config = AssignFeederConfig::new(control, NodeId(NODE_A.into()));
    config.batch_max = batch_max;
    let source_log = Arc::clone(log);
    let sink_log = Arc::clone(log);
    AssignFeeder::spawn(
        config,
        move |max| {
            let mut log = source_log.lock().unwrap();
            log.source_calls += 1;
            let unanswered = log
                .wanted
                .iter()
                .filter(|target| !log.received.contains_key(*target))
                .take(max)
                .cloned()
                .collect();
            unanswered
        },
        move |assignments, ttl_ms| {
            let mut log = sink_log.lock().unwrap();
            log.batches.push((assignments.len(), ttl_ms));
            log.received.extend(assignments);
        },
    )
    .expect("feeder starts")
}

#[test]
fn feeder_delivers_assignments_in_batches_and_calls_nothing_while_the_plane_is_away() {
    // A free port, then nothing listening on it.
    let first = start(config(PolicyKind::Lard));
    let address = first.local_addr();
    first.shutdown().expect("shutdown");

    // Ten good targets and two the control plane would reject (the feeder drops them).
    let mut wanted = vec![String::new(), format!("/{}", "x".repeat(1024))];
    wanted.extend(paths("feed", 10));
    let log = Arc::new(Mutex::new(FeederLog {
        wanted,
        ..FeederLog::default()
    }));
    let feeder = spawn_feeder(address, 4, &log);
    wait_until("two failed connection attempts", || {
        feeder.stats().sessions_failed >= 2
    });
    assert_eq!(
        log.lock().unwrap().source_calls,
        0,
        "fail static: no source call while unreachable"
    );
    assert!(log.lock().unwrap().batches.is_empty(), "no sink call");

    let mut config = config(PolicyKind::Lard);
    config.listen = address;
    config.assign_ttl = Duration::from_millis(250);
    let plane = start(config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut node = NodeServiceClient::new(channel(address).await);
        register(&mut node, NODE_A).await;
    });
    wait_until("all ten targets assigned", || {
        log.lock().unwrap().received.len() == 10
    });
    let log = log.lock().unwrap();
    let targets: Vec<&String> = log.received.keys().collect();
    let mut expected = paths("feed", 10);
    expected.sort_unstable();
    assert_eq!(targets, expected.iter().collect::<Vec<_>>());
    assert!(log
        .received
        .values()
        .all(|nodes| nodes == &[NODE_A.to_string()]));
    assert!(
        log.batches
            .iter()
            .all(|&(size, ttl_ms)| (1..=4).contains(&size) && ttl_ms == 250),
        "batches of 1..=4 with the configured TTL: {:?}",
        log.batches
    );
    let stats = feeder.stats();
    assert!(stats.assignments_received >= 10, "{stats:?}");
    assert!(stats.targets_rejected >= 2, "{stats:?}");
    assert!(stats.connected);
    drop(log);
    feeder.shutdown();
    plane.shutdown().expect("shutdown");
}

#[test]
fn feeder_rejects_bad_settings() {
    let address: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (batch_max, interval_ms, field) in [
        (0, 5, "batch_max"),
        (1025, 5, "batch_max"),
        (8, 0, "interval_ms"),
    ] {
        let mut config = AssignFeederConfig::new(address, NodeId(NODE_A.into()));
        config.batch_max = batch_max;
        config.interval_ms = interval_ms;
        let error = AssignFeeder::spawn(config, |_| Vec::new(), |_, _| {}).unwrap_err();
        assert!(error.to_string().contains(field), "{error}");
    }
    let mut config = AssignFeederConfig::new(address, NodeId(NODE_A.into()));
    config.token = Some("bad\ntoken".into());
    let error = AssignFeeder::spawn(config, |_| Vec::new(), |_, _| {}).unwrap_err();
    assert!(error.to_string().contains("token"), "{error}");
}

/// grpcurl finds Assign: reflection serves a NodeService descriptor that has it.
#[tokio::test]
async fn reflection_describes_assign() {
    use prost::Message;
    use tonic_reflection::pb::v1 as reflection;
    let plane = start(config(PolicyKind::Lard));
    let mut client = reflection::server_reflection_client::ServerReflectionClient::new(
        channel(plane.local_addr()).await,
    );
    let response = reflect(
        &mut client,
        reflection::server_reflection_request::MessageRequest::FileContainingSymbol(
            "larder.v1.NodeService".into(),
        ),
    )
    .await;
    let reflection::server_reflection_response::MessageResponse::FileDescriptorResponse(files) =
        response
    else {
        panic!("expected file descriptors, got {response:?}");
    };
    let assign = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(&bytes[..]).expect("descriptor"))
        .flat_map(|file| file.service)
        .filter(|service| service.name() == "NodeService")
        .flat_map(|service| service.method)
        .find(|method| method.name() == "Assign")
        .expect("NodeService has Assign");
    assert_eq!(assign.input_type(), ".larder.v1.AssignRequest");
    assert_eq!(assign.output_type(), ".larder.v1.AssignResponse");
    plane.shutdown().expect("shutdown");
}
