//! Ingest rate of shard-load reports.
//!
//! Simulated nodes (each with `SHARDS` shards and two containers per shard) stream
//! `LoadReport`s over `ReportLoad` as fast as flow control lets them, from a client
//! runtime on another thread; the control plane serves on its one current-thread
//! runtime, so the figure is per control-plane core. The baseline beside it feeds
//! the same reports to `ClusterState::report` directly (no gRPC), to show where the
//! time goes.
//!
//! Run: `cargo bench -p larder-control --bench control_ingest [-- NODES REPORTS_PER_NODE]`
//! Target: >= 200,000 shard reports per second.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use larder_control::convert;
use larder_control::{ContainerLoad, ContainerName, NodeId, NodeInfo, ShardId, ShardLoad};
use larder_proto::v1 as pb;
use larder_proto::v1::node_service_client::NodeServiceClient;

mod common;

const SHARDS: u32 = 8;

fn node_info(node: usize) -> NodeInfo {
    NodeInfo {
        node_id: NodeId(format!("sim-{node}")),
        http_address: format!("127.0.0.1:{}", 20_000 + node),
        cores: SHARDS,
        cache_bytes_budget: 1 << 30,
    }
}

fn report(node: usize, sequence: u64) -> pb::LoadReport {
    let shards = (0..SHARDS)
        .map(|shard| ShardLoad {
            shard: ShardId(shard),
            active_connections: sequence % 64,
            queued_work: sequence % 7,
            requests_per_second: 12_345.0,
            bytes_per_second: 9.8e7,
            cache_bytes: 1 << 28,
            cache_hits: sequence * 100,
            cache_misses: sequence,
            cache_evictions: sequence / 10,
            handoffs: sequence * 3,
            cpu_time_us: sequence * 100_000,
            containers: ["default", "batch"]
                .into_iter()
                .map(|name| ContainerLoad {
                    container: ContainerName(name.to_string()),
                    cpu_time_us: sequence * 50_000,
                    rejections: 0,
                    poll_cpu_time_us: sequence * 40_000,
                    throttles: 0,
                    ..ContainerLoad::default()
                })
                .collect(),
            requests: sequence * 1_234,
            latency_p99_us: Some(900),
        })
        .collect();
    convert::load_report_to_pb(&larder_control::state::LoadReport {
        node_id: NodeId(format!("sim-{node}")),
        sequence,
        shards,
        hot_targets: Vec::new(),
    })
}

async fn simulate_node(address: SocketAddr, node: usize, reports: u64) -> u64 {
    let mut client = NodeServiceClient::connect(format!("http://{address}"))
        .await
        .expect("connect");
    common::register(&mut client, &node_info(node)).await;
    let stream = tokio_stream::iter((1..=reports).map(move |sequence| report(node, sequence)));
    client
        .report_load(stream)
        .await
        .expect("ReportLoad")
        .into_inner()
        .reports_accepted
}

fn grpc_ingest(nodes: usize, reports_per_node: u64) -> (u64, Duration) {
    let (plane, runtime) = common::control_plane(None);
    let address = plane.local_addr();
    let start = Instant::now();
    let accepted = common::run_clients(
        &runtime,
        (0..nodes).map(|node| simulate_node(address, node, reports_per_node)),
    );
    let elapsed = start.elapsed();
    plane.shutdown().expect("shutdown");
    assert_eq!(
        accepted,
        nodes as u64 * reports_per_node,
        "every report accepted"
    );
    (accepted * u64::from(SHARDS), elapsed)
}

fn state_ingest(nodes: usize, reports_per_node: u64) -> (u64, Duration) {
    let now = Instant::now();
    let mut state = common::state_with_nodes(1, now, (0..nodes).map(node_info));
    let reports: Vec<pb::LoadReport> = (0..nodes).map(|node| report(node, 1)).collect();
    let start = Instant::now();
    for _ in 0..reports_per_node {
        for report in &reports {
            // Same work as the server per message, minus the wire: convert, then store.
            let report = convert::load_report(report.clone());
            state.report(now, report).expect("report");
        }
    }
    let elapsed = start.elapsed();
    (nodes as u64 * reports_per_node * u64::from(SHARDS), elapsed)
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"));
    let nodes: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(16);
    let reports_per_node: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(2_000);
    let (shard_reports, elapsed) = state_ingest(nodes, reports_per_node);
    println!(
        "control_ingest state-only (baseline): {shard_reports} shard reports in {:.3} s = {:.0}/s",
        elapsed.as_secs_f64(),
        shard_reports as f64 / elapsed.as_secs_f64()
    );
    let (shard_reports, elapsed) = grpc_ingest(nodes, reports_per_node);
    println!(
        "control_ingest grpc: {nodes} nodes x {reports_per_node} reports x {SHARDS} shards = {shard_reports} shard reports in {:.3} s = {:.0}/s (target >= 200000/s)",
        elapsed.as_secs_f64(),
        shard_reports as f64 / elapsed.as_secs_f64()
    );
}
