//! Assignment rate of the cluster dispatcher (`NodeService.Assign`).
//!
//! For 4 and 16 nodes and batches of 64 and 1,024 targets: simulated nodes ask for
//! targets drawn from a 10,000-file site (seeded, so every run asks the same
//! sequence), after a warm-up that places every target once, so the figure is the
//! steady state a cluster lives in (LARD: one table lookup a target). Two columns
//! side by side in one run:
//! - `state`: `ClusterState::assign` called directly (no gRPC): the cost under the
//!   state lock, i.e. what other control-plane calls wait behind;
//! - `grpc`: `CLIENTS` concurrent callers over loopback against a control plane on
//!   its one current-thread runtime, so the figure is per control-plane core.
//!
//! Run: `cargo bench -p larder-control --bench control_assign [-- ASSIGNMENTS]`
//! (ASSIGNMENTS per configuration and column, default 400,000).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use larder_control::state::LoadReport;
use larder_control::{NodeId, NodeInfo, ShardId, ShardLoad};
use larder_proto::v1 as pb;
use larder_proto::v1::node_service_client::NodeServiceClient;

mod common;

/// Files of the simulated site.
const SITE_FILES: u64 = 10_000;
/// Concurrent Assign callers in the gRPC column.
const CLIENTS: usize = 4;
const SEED: u64 = 0x00c0_ffee;

fn node_info(node: usize) -> NodeInfo {
    let address = format!("127.0.0.1:{}", 21_000 + node);
    NodeInfo {
        node_id: NodeId(address.clone()),
        http_address: address,
        cores: 2,
        cache_bytes_budget: 32 << 20,
    }
}

/// A seeded stream of site paths (a 64-bit LCG, Knuth's MMIX constants).
struct Paths(u64);

impl Paths {
    fn batch(&mut self, size: usize) -> Vec<String> {
        (0..size)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                format!("/site/file-{:05}.html", (self.0 >> 33) % SITE_FILES)
            })
            .collect()
    }
}

fn every_path() -> Vec<Vec<String>> {
    let all: Vec<String> = (0..SITE_FILES)
        .map(|file| format!("/site/file-{file:05}.html"))
        .collect();
    all.chunks(1024).map(<[String]>::to_vec).collect()
}

fn load_report(node: usize) -> LoadReport {
    LoadReport {
        node_id: node_info(node).node_id,
        sequence: 1,
        shards: vec![ShardLoad {
            shard: ShardId(0),
            active_connections: 10 + node as u64 % 5,
            ..ShardLoad::default()
        }],
        hot_targets: Vec::new(),
    }
}

fn state_assign(nodes: usize, batch: usize, assignments: usize) -> Duration {
    let now = Instant::now();
    let mut state = common::state_with_nodes(SEED, now, (0..nodes).map(node_info));
    for node in 0..nodes {
        state.report(now, load_report(node)).expect("report");
    }
    let asking = node_info(0).node_id;
    for warm_up in every_path() {
        state.assign(now, &asking, warm_up).expect("warm-up");
    }
    let mut paths = Paths(SEED);
    let batches: Vec<Vec<String>> = (0..assignments / batch)
        .map(|_| paths.batch(batch))
        .collect();
    let start = Instant::now();
    for targets in batches {
        let answers = state.assign(now, &asking, targets).expect("assign");
        assert_eq!(answers.len(), batch);
    }
    start.elapsed()
}

async fn caller(address: SocketAddr, node: usize, batches: Vec<Vec<String>>) -> usize {
    let mut client = NodeServiceClient::connect(format!("http://{address}"))
        .await
        .expect("connect");
    let node_id = node_info(node).node_id.0;
    let mut answered = 0;
    for targets in batches {
        answered += client
            .assign(pb::AssignRequest {
                node_id: node_id.clone(),
                targets,
            })
            .await
            .expect("Assign")
            .into_inner()
            .assignments
            .len();
    }
    answered
}

fn grpc_assign(nodes: usize, batch: usize, assignments: usize) -> Duration {
    let (plane, runtime) = common::control_plane(Some(SEED));
    let address = plane.local_addr();
    runtime.block_on(async {
        let mut client = NodeServiceClient::connect(format!("http://{address}"))
            .await
            .expect("connect");
        for node in 0..nodes {
            common::register(&mut client, &node_info(node)).await;
        }
        for warm_up in every_path() {
            caller(address, 0, vec![warm_up]).await;
        }
    });
    let mut paths = Paths(SEED);
    let per_client = assignments / batch / CLIENTS;
    let work: Vec<Vec<Vec<String>>> = (0..CLIENTS)
        .map(|_| (0..per_client).map(|_| paths.batch(batch)).collect())
        .collect();
    let start = Instant::now();
    let answered = common::run_clients(
        &runtime,
        work.into_iter()
            .enumerate()
            .map(|(client, batches)| caller(address, client % nodes, batches)),
    );
    let elapsed = start.elapsed();
    plane.shutdown().expect("shutdown");
    assert_eq!(
        answered,
        per_client * CLIENTS * batch,
        "every target answered"
    );
    elapsed
}

fn main() {
    let assignments: usize = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with("--"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(400_000);
    println!("control_assign: LARD, {SITE_FILES}-file site, {assignments} assignments per cell");
    println!("nodes batch  state (assignments/s)  grpc x{CLIENTS} (assignments/s)  grpc calls/s");
    for nodes in [4, 16] {
        for batch in [64, 1024] {
            let measured = (assignments / batch / CLIENTS * CLIENTS * batch) as f64;
            let state = state_assign(nodes, batch, assignments);
            let grpc = grpc_assign(nodes, batch, assignments);
            println!(
                "{nodes:5} {batch:5}  {:21.0}  {:26.0}  {:12.0}",
                (assignments / batch * batch) as f64 / state.as_secs_f64(),
                measured / grpc.as_secs_f64(),
                measured / batch as f64 / grpc.as_secs_f64(),
            );
        }
    }
}
